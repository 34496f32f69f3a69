//! The crash test: `lanes serve` runs as a separate process and is killed
//! with SIGKILL at random moments while clients submit and an agent runs
//! jobs. After every restart, every acknowledged submission is there; at
//! the end no submission is duplicated, no job finished twice, and the
//! state the engine held equals a fresh replay of its log.
//!
//! The engine snapshots every 300 events, so kills land during snapshot
//! writes and log trims too, and restarts load snapshots.
//!
//! 20 kills by default; `LANES_CRASH_KILLS=200` for a soak. The seed is
//! printed; `LANES_CRASH_SEED=<seed>` replays the same schedule of kills.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanes::client::Client;
use lanes::log::{verify, SledStore};
use lanes::model::{JobId, JobSpec, Report, RunId, RunSpec};
use lanes::protocol::{Completion, Message};
use lanes::replay::{recover, ReplayOptions};
use lanes::sched::{EventKind, SchedulerConfig};

/// The `lanes` binary next to this test's, built first so it is current
/// (`cargo test -p lanes-tests` alone does not build other packages' bins).
fn lanes_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "lanes-engine", "--bin", "lanes"]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    assert!(
        build.status().expect("cargo runs").success(),
        "building lanes"
    );
    profile_dir.join("lanes")
}

struct Engine {
    child: Child,
    address: String,
    stderr: BufReader<std::process::ChildStderr>,
}

fn start(binary: &Path, data: &Path) -> Engine {
    let mut child = Command::new(binary)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--snapshot-every",
            "300",
            "--lease-ms",
            "2000",
            "--data",
        ])
        .arg(data)
        .env_remove("LANES_TOKENS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lanes serve starts");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut engine = Engine {
        child,
        address: String::new(),
        stderr,
    };
    let mut line = String::new();
    loop {
        line.clear();
        if engine.stderr.read_line(&mut line).expect("stderr") == 0 {
            let status = engine.child.wait().expect("reaped");
            panic!("lanes serve exited before listening: {status}");
        }
        if let Some(rest) = line.trim().strip_prefix("lanes: serving on ") {
            engine.address = rest.split(' ').next().expect("an address").to_string();
            return engine;
        }
    }
}

impl Drop for Engine {
    /// A test that fails midway leaves no engine running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A submission the engine acknowledged: its run, first job, and the
/// marker its payload carries.
type Acked = Arc<Mutex<BTreeMap<u64, (RunId, JobId)>>>;

/// Submits until the connection dies; records every acknowledgement.
async fn submit_until_killed(address: String, next_marker: Arc<Mutex<u64>>, acked: Acked) {
    let Ok(client) = Client::connect(address.as_str(), b"", "crash-submitter").await else {
        return;
    };
    loop {
        let marker = {
            let mut next = next_marker.lock().unwrap();
            *next += 1;
            *next
        };
        let spec = RunSpec {
            jobs: vec![JobSpec {
                payload: marker.to_le_bytes().to_vec(),
                ..JobSpec::default()
            }],
            ..RunSpec::default()
        };
        match client.submit(spec).await {
            Ok(submitted) => {
                acked
                    .lock()
                    .unwrap()
                    .insert(marker, (submitted.run, submitted.first_job));
            }
            Err(_) => return, // killed: this one's outcome is unknown
        }
    }
}

/// Takes and completes jobs until the connection dies.
async fn work_until_killed(address: String) {
    let Ok(agent) = Client::connect(address.as_str(), b"", "crash-agent").await else {
        return;
    };
    if agent
        .register("crash-agent", vec!["default".into()], vec![], 8, vec![])
        .await
        .is_err()
    {
        return;
    }
    if agent.take_work(8).await.is_err() {
        return;
    }
    while let Some(frame) = agent.next_push().await {
        if let Message::Dispatch(dispatch) = frame.message {
            let completion = Completion {
                job: dispatch.job,
                attempt: dispatch.attempt,
                report: Report::Succeeded,
                exit_code: 0,
            };
            if agent.complete(vec![completion]).await.is_err() || agent.take_work(8).await.is_err()
            {
                return;
            }
        }
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_submissions_survive_sigkill() {
    let kills: u32 = std::env::var("LANES_CRASH_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("LANES_CRASH_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} ({kills} kills): LANES_CRASH_SEED={seed} replays it");
    let mut rng = Rng(seed);
    let binary = lanes_binary();
    let data = tempfile::tempdir().expect("a data folder");
    let acked: Acked = Arc::default();
    let next_marker = Arc::new(Mutex::new(0u64));
    for round in 0..kills {
        let mut engine = start(&binary, data.path());
        // Every submission acknowledged before any kill must be there.
        {
            let client = Client::connect(engine.address.as_str(), b"", "checker")
                .await
                .expect("connect");
            let expected: Vec<(u64, (RunId, JobId))> = acked
                .lock()
                .unwrap()
                .iter()
                .map(|(m, ids)| (*m, *ids))
                .collect();
            for (marker, (run, job)) in expected {
                let info = client
                    .job(job)
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: acknowledged {job} lost: {e}"));
                assert_eq!(info.run, run, "round {round}: {job} belongs to another run");
                assert_eq!(
                    info.payload,
                    marker.to_le_bytes().to_vec(),
                    "round {round}: {job} holds another payload"
                );
            }
        }
        let mut tasks = Vec::new();
        for _ in 0..4 {
            tasks.push(tokio::spawn(submit_until_killed(
                engine.address.clone(),
                next_marker.clone(),
                acked.clone(),
            )));
        }
        tasks.push(tokio::spawn(work_until_killed(engine.address.clone())));
        tokio::time::sleep(Duration::from_millis(20 + rng.below(200))).await;
        engine.child.kill().expect("SIGKILL");
        engine.child.wait().expect("reaped");
        for task in tasks {
            let _ = task.await;
        }
    }
    // A last clean start and stop: the engine reports the digest it held.
    let mut engine = start(&binary, data.path());
    let pid = engine.child.id();
    // SIGTERM: a clean stop.
    Command::new("kill")
        .arg(pid.to_string())
        .status()
        .expect("kill -TERM");
    let mut digest = None;
    let mut line = String::new();
    while engine.stderr.read_line(&mut line).expect("stderr") > 0 {
        if let Some(rest) = line
            .trim()
            .strip_prefix("lanes: stopped cleanly at sequence ")
        {
            digest = rest
                .split("state digest ")
                .nth(1)
                .map(|d| d.trim_end_matches(')').to_string());
        }
        line.clear();
    }
    assert!(
        engine.child.wait().expect("exit").success(),
        "a clean stop exits 0"
    );
    let digest = digest.expect("the engine reported its digest");
    assert!(
        !verify::snapshots(data.path())
            .expect("the snapshots list")
            .is_empty(),
        "the run took snapshots"
    );
    // A fresh replay of the same log gives the same state.
    let mut store = SledStore::open(data.path()).expect("the log opens");
    let (replayed, _) = recover(
        data.path(),
        &mut store,
        SchedulerConfig { lease_ms: 2000 },
        ReplayOptions::default(),
    )
    .expect("the log replays");
    assert_eq!(
        format!("{:032x}", replayed.digest()),
        digest,
        "live state and fresh replay differ"
    );
    replayed.check_invariants();
    // No submission twice; every acknowledged one once.
    let mut seen: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    for job in replayed.jobs() {
        *seen.entry(job.payload.to_vec()).or_default() += 1;
    }
    assert!(
        seen.values().all(|&n| n == 1),
        "a submission was recorded twice"
    );
    for marker in acked.lock().unwrap().keys() {
        assert_eq!(
            seen.get(marker.to_le_bytes().as_slice()),
            Some(&1),
            "acknowledged submission {marker} missing"
        );
    }
    // No job finished twice.
    let mut completions: BTreeMap<JobId, u32> = BTreeMap::new();
    verify::records(&store, 0, u64::MAX, &mut |record| {
        for event in record.expect("every record is sound") {
            if let EventKind::JobCompleted { job, .. } = event.kind {
                *completions.entry(job).or_default() += 1;
            }
        }
        true
    })
    .expect("the log reads");
    assert!(
        completions.values().all(|&n| n == 1),
        "a job completed twice"
    );
    let acknowledged = acked.lock().unwrap().len();
    eprintln!(
        "{kills} kills, {acknowledged} acknowledged submissions, {} completions",
        completions.len()
    );
    assert!(
        acknowledged > 0 && !completions.is_empty(),
        "the test did no work"
    );
}
