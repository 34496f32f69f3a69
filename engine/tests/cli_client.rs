//! The `lanes` client commands and `lanes agent`, run as the real binary
//! against an engine started in this process on loopback: submissions from
//! flags and from a pipeline file, `--wait` exit codes, `explain`, refusals,
//! and a real agent that runs commands and kills a cancelled one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lanes::client::Client;
use lanes::driver::Durability;
use lanes::model::JobId;
use lanes::protocol::{Message, WatchTarget};
use lanes::sched::view::JobStatus;
use lanes::sched::SchedulerConfig;
use lanes::server::{self, EngineConfig, Limits, Running, Tokens};
use serde_json::Value;
use tokio::process::{Child, Command};

/// Bound on every wait for something another process does.
const PATIENCE: Duration = Duration::from_secs(20);

struct Engine {
    _running: Running,
    address: String,
    folder: tempfile::TempDir,
}

async fn engine() -> Engine {
    engine_with(None).await
}

async fn engine_with(tls: Option<lanes::tls::TlsFiles>) -> Engine {
    let folder = tempfile::tempdir().unwrap();
    let running = server::start(EngineConfig {
        data: folder.path().join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        durability: Durability::Sync,
        scheduler: SchedulerConfig { lease_ms: 60_000 },
        snapshot_every_events: None,
        retention: Some(Default::default()),
        tokens: Tokens::open(),
        limits: Limits::default(),
        repair: false,
        tls,
        http: None,
    })
    .await
    .expect("the engine starts");
    Engine {
        address: running.address().to_string(),
        _running: running,
        folder,
    }
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("{error}: not JSON: {}", self.stdout))
    }
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn command(engine: &Engine, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lanes"));
    command
        .args(args)
        .env("LANES_SERVER", &engine.address)
        .env_remove("LANES_TOKEN")
        .env_remove("LANES_TLS_CA")
        .env_remove("LANES_TLS_SERVER_NAME")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn lanes(engine: &Engine, args: &[&str]) -> Outcome {
    let output = tokio::time::timeout(PATIENCE, command(engine, args).output())
        .await
        .unwrap_or_else(|_| panic!("lanes {args:?} did not finish"))
        .unwrap();
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into(),
        stderr: String::from_utf8_lossy(&output.stderr).into(),
    }
}

/// A `lanes agent` process; killed when dropped. Its log goes to a file in
/// the engine's folder, shown by [`Agent::log`] when a test fails.
struct Agent {
    process: Child,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn interrupt(&self) {
        let pid = rustix::process::Pid::from_raw(self.process.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    }
}

fn agent(engine: &Engine, name: &str) -> Agent {
    let log = engine.folder.path().join(format!("{name}.log"));
    let process = command(
        engine,
        &[
            "agent",
            "--name",
            name,
            "--slots",
            "2",
            "--stop-grace",
            "5s",
        ],
    )
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    Agent { process, log }
}

/// Polls `check` until it gives a value, at most [`PATIENCE`].
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: still not so after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Gone, or a zombie nobody needs (reaped by whoever adopted it).
fn process_gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Watches a job until it finishes; its final status.
async fn finished_status(engine: &Engine, job: u64) -> JobStatus {
    let client = Client::connect(engine.address.as_str(), b"", "test")
        .await
        .unwrap();
    let watch = client.watch(WatchTarget::Job(JobId(job))).await.unwrap();
    loop {
        let frame = tokio::time::timeout(PATIENCE, client.next_push())
            .await
            .expect("the job finishes")
            .expect("the connection stays open");
        match frame.message {
            Message::JobUpdate(update) if frame.request_id == watch && update.last => {
                return update.status
            }
            _ => {}
        }
    }
}

async fn job_json(engine: &Engine, job: u64) -> Value {
    let shown = lanes(engine, &["job", "show", &job.to_string(), "--json"]).await;
    assert_eq!(shown.code, 0, "{shown:?}");
    shown.json()
}

#[tokio::test]
async fn submit_wait_exits_with_the_jobs_exit_code() {
    let engine = engine().await;
    let agent = agent(&engine, "exit-codes");

    let failed = lanes(&engine, &["submit", "--wait", "--", "sh", "-c", "exit 3"]).await;
    assert_eq!(failed.code, 3, "{failed:?}\n{}", agent.log());
    assert!(
        failed.stdout.starts_with("submitted run 1: job 1"),
        "{failed:?}"
    );
    assert!(
        failed.stderr.contains("job 1: FAILED (exit code 3)"),
        "{failed:?}"
    );

    let succeeded = lanes(&engine, &["submit", "--wait", "--json", "--", "true"]).await;
    assert_eq!(succeeded.code, 0, "{succeeded:?}");
    let document = succeeded.json();
    assert_eq!(document["outcomes"][0]["outcome"], "SUCCEEDED");
    assert_eq!(document["exit_code"], 0);

    let cannot_start = lanes(
        &engine,
        &["submit", "--wait", "--", "/nonexistent/lanes-test-command"],
    )
    .await;
    assert_eq!(cannot_start.code, 127, "{cannot_start:?}");
    assert!(
        agent
            .log()
            .contains("cannot start \"/nonexistent/lanes-test-command\""),
        "{}",
        agent.log()
    );

    // A run: the first job that did not succeed gives the code; the job
    // after the next wait is skipped.
    let file = engine.folder.path().join("fails.yml");
    std::fs::write(
        &file,
        "steps:\n  - command: \"true\"\n  - wait\n  - command: exit 4\n  - wait: ~\n  - command: \"true\"\n",
    )
    .unwrap();
    let run = lanes(
        &engine,
        &[
            "submit",
            "--file",
            file.to_str().unwrap(),
            "--wait",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 4, "{run:?}");
    let outcomes: Vec<Value> = run.json()["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|outcome| outcome["outcome"].clone())
        .collect();
    assert_eq!(outcomes, ["SUCCEEDED", "FAILED", "SKIPPED"]);

    let agents = lanes(&engine, &["agents"]).await;
    assert_eq!(agents.code, 0, "{agents:?}");
    let row = agents
        .stdout
        .lines()
        .find(|line| line.contains("exit-codes"))
        .unwrap_or_else(|| panic!("{agents:?}"));
    assert_eq!(
        row.split_whitespace().take(7).collect::<Vec<_>>(),
        ["0", "exit-codes", "default", "-", "2", "-", "yes"]
    );
}

#[tokio::test]
async fn submit_flags_become_the_runs_options() {
    let engine = engine().await;
    let args = [
        "submit",
        "--priority",
        "-5",
        "--tag",
        "team=docs",
        "--label",
        "os=linux",
        "--env",
        "GREETING=hello world",
        "--max-queued-time",
        "5m",
        "--deadline",
        "1h",
        "--max-attempts",
        "2",
        "--idempotency-key",
        "deploy-42",
        "--json",
        "--",
        "echo",
        "it's $HOME",
    ];
    let submitted = lanes(&engine, &args).await;
    assert_eq!(submitted.code, 0, "{submitted:?}");
    let document = submitted.json();
    assert_eq!(document["run"], 1);
    assert_eq!(document["jobs"], serde_json::json!([1]));
    assert_eq!(document["replayed"], false);

    let job = job_json(&engine, 1).await;
    assert_eq!(job["priority"], -5);
    assert_eq!(
        job["own_priority"], false,
        "the flags set the run's options"
    );
    assert_eq!(job["tags"], serde_json::json!({"team": "docs"}));
    assert_eq!(job["labels"], serde_json::json!({"os": "linux"}));
    assert_eq!(job["max_queued_time_ms"], 300_000);
    assert_eq!(job["max_attempts"], 2);
    assert_eq!(
        job["deadline_at"].as_u64().unwrap() - job["submitted_at"].as_u64().unwrap(),
        3_600_000
    );
    assert_eq!(
        job["payload"]["argv"],
        serde_json::json!(["echo", "it's $HOME"])
    );
    assert_eq!(
        job["payload"]["env"],
        serde_json::json!({"GREETING": "hello world"})
    );

    let shown = lanes(&engine, &["job", "show", "1"]).await;
    assert!(
        shown.stdout.contains("command     echo 'it'\\''s $HOME'"),
        "{shown:?}"
    );

    let again = lanes(&engine, &args).await;
    assert_eq!(again.json()["replayed"], true, "{again:?}");
    assert_eq!(again.json()["run"], 1);
}

#[tokio::test]
async fn submit_priority_that_is_not_an_integer_is_rejected() {
    let engine = engine().await;
    for bad in ["high", "1.5", "99999999999"] {
        let refused = lanes(&engine, &["submit", "--priority", bad, "--", "true"]).await;
        assert_eq!(refused.code, 2, "{refused:?}");
        assert!(
            refused.stderr.contains(&format!(
                "invalid value '{bad}' for '--priority <PRIORITY>': priority \"{bad}\""
            )),
            "{refused:?}"
        );
    }
    let refused = lanes(&engine, &["job", "priority", "1", "high"]).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("priority \"high\" is not an integer"),
        "{refused:?}"
    );

    let file = engine.folder.path().join("bad.yml");
    std::fs::write(&file, "steps:\n  - command: x\n    priority: urgent\n").unwrap();
    let refused = lanes(&engine, &["submit", "--file", file.to_str().unwrap()]).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("steps[0].priority: priority \"urgent\" is not an integer"),
        "{refused:?}"
    );

    let queues = lanes(&engine, &["queue", "list", "--json"]).await;
    assert_eq!(
        queues.json()["queues"][0]["waiting"],
        0,
        "nothing was submitted"
    );
}

#[tokio::test]
async fn submit_file_buildkite_pipeline_with_a_wait_step_and_top_level_priority() {
    let engine = engine().await;
    let file = engine.folder.path().join("pipeline.yml");
    std::fs::write(
        &file,
        r#"
priority: 100
env:
  STAGE: fix
steps:
  - label: "emergency fix"
    command: "echo $STAGE"
  - wait: ~
  - label: "this can wait"
    command:
      - make
      - make test
    priority: 1
    agents:
      os: linux
"#,
    )
    .unwrap();
    let submitted = lanes(&engine, &["submit", "--file", file.to_str().unwrap()]).await;
    assert_eq!(submitted.code, 0, "{submitted:?}");
    assert_eq!(submitted.stdout, "submitted run 1: jobs 1 to 2\n");

    let fix = job_json(&engine, 1).await;
    assert_eq!(fix["priority"], 100);
    assert_eq!(fix["status"]["state"], "WAITING");
    assert_eq!(fix["payload"]["label"], "emergency fix");
    assert_eq!(
        fix["payload"]["argv"],
        serde_json::json!(["sh", "-e", "-c", "echo $STAGE"])
    );
    assert_eq!(fix["payload"]["env"], serde_json::json!({"STAGE": "fix"}));
    let later = job_json(&engine, 2).await;
    assert_eq!(later["priority"], 1);
    assert_eq!(later["own_priority"], true);
    assert_eq!(later["status"]["state"], "HELD");
    assert_eq!(later["stage"], 1);
    assert_eq!(later["labels"], serde_json::json!({"os": "linux"}));

    let explained = lanes(&engine, &["job", "explain", "2"]).await;
    assert_eq!(explained.code, 0, "{explained:?}");
    assert_eq!(
        explained.stdout,
        "job 2 in queue \"default\": HELD\n  - dependencies pending: 1 earlier jobs of its run unfinished\n"
    );

    let run = lanes(&engine, &["run", "show", "1"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("priority    100"), "{run:?}");
    assert!(
        run.stdout
            .contains("2    default  1         HELD     sh -e -c 'make\nmake test'"),
        "{run:?}"
    );
}

#[tokio::test]
async fn explain_queue_and_refusals() {
    let engine = engine().await;
    let paused = lanes(&engine, &["queue", "pause", "default"]).await;
    assert_eq!(paused.code, 0, "{paused:?}");
    assert_eq!(paused.stdout, "queue \"default\" paused\n");
    lanes(&engine, &["submit", "--", "true"]).await;
    lanes(&engine, &["submit", "--", "true"]).await;

    let explained = lanes(&engine, &["job", "explain", "2"]).await;
    assert_eq!(
        explained.stdout,
        "job 2 in queue \"default\": WAITING, 1 waiting ahead of it in its queue\n  \
         - queue \"default\" is paused\n  - no agent in pools [default]\n",
        "{explained:?}"
    );
    let explained = lanes(&engine, &["job", "explain", "2", "--json"])
        .await
        .json();
    assert_eq!(explained["ahead"], 1);
    assert_eq!(explained["reasons"][0]["reason"], "QueuePaused");
    assert_eq!(explained["reasons"][1]["reason"], "NoAgent");

    let listed = lanes(&engine, &["queue", "list"]).await;
    assert_eq!(
        listed.stdout,
        "QUEUE    PRIORITY  WAITING  RUNNING  HELD  DEPTH  ACTION  RUNS  ACTIVE RUNS  PAUSED\n\
         default  0         2        0        0     -      -       -     0            yes\n",
        "{listed:?}"
    );

    // The engine refuses: exit 1 with its code and message.
    let unknown = lanes(&engine, &["job", "show", "99"]).await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(
        unknown.stderr.starts_with("error: NOT_FOUND: "),
        "{unknown:?}"
    );
    let unknown = lanes(&engine, &["queue", "resume", "gpu"]).await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("NOT_FOUND"), "{unknown:?}");
    let cancelled = lanes(&engine, &["job", "cancel", "1"]).await;
    assert_eq!(cancelled.stdout, "job 1: CANCELLED\n", "{cancelled:?}");
    let again = lanes(&engine, &["job", "cancel", "1"]).await;
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("FAILED_PRECONDITION"), "{again:?}");

    // No engine there: exit 2.
    let unreachable = lanes(&engine, &["queue", "list", "--server", "127.0.0.1:1"]).await;
    assert_eq!(unreachable.code, 2, "{unreachable:?}");
    assert!(
        unreachable.stderr.contains("connecting to 127.0.0.1:1"),
        "{unreachable:?}"
    );
}

#[tokio::test]
async fn agent_kills_a_cancelled_jobs_processes() {
    let engine = engine().await;
    let agent = agent(&engine, "killer");
    let folder = engine.folder.path();
    let job_file = folder.join("job");
    let pid_file = folder.join("pid");
    // The shell waits for a background sleep: only a signal to the whole
    // process group ends both.
    let script = format!(
        "sleep 30 & echo $! > {pid}.tmp && mv {pid}.tmp {pid}; echo $LANES_JOB > {job}.tmp && mv {job}.tmp {job}; wait",
        pid = pid_file.display(),
        job = job_file.display()
    );
    let waiting = command(&engine, &["submit", "--wait", "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job = eventually("the job runs", || read_number(&job_file)).await;
    let sleep = eventually("the job started its sleep", || read_number(&pid_file)).await;
    assert!(!process_gone(sleep), "the sleep runs");

    let cancelled = lanes(&engine, &["job", "cancel", &job.to_string()]).await;
    assert_eq!(cancelled.code, 0, "{cancelled:?}");
    let waited = tokio::time::timeout(PATIENCE, waiting.wait_with_output())
        .await
        .expect("submit --wait returns once the job is cancelled")
        .unwrap();
    assert_eq!(
        waited.status.code(),
        Some(130),
        "CANCELLED; {}\n{}",
        String::from_utf8_lossy(&waited.stderr),
        agent.log()
    );
    let shown = job_json(&engine, job).await;
    assert_eq!(shown["status"]["outcome"], "CANCELLED");
    assert_eq!(shown["status"]["exit_code"], 128 + 15, "ended by SIGTERM");
    eventually("the sleep is gone", || process_gone(sleep).then_some(())).await;
}

#[tokio::test]
async fn agent_drains_on_the_first_signal_and_terminates_on_the_second() {
    let engine = engine().await;
    let mut agent = agent(&engine, "drainer");
    let folder = engine.folder.path();
    let (go, started, pid_file) = (
        folder.join("go"),
        folder.join("started"),
        folder.join("pid"),
    );
    // Job 1 ends when the test says so; job 2 only when it is stopped.
    let finishes = format!(
        "touch {started}; while [ ! -e {go} ]; do sleep 0.01; done",
        started = started.display(),
        go = go.display()
    );
    let hangs = format!(
        "sleep 30 & echo $! > {pid}.tmp && mv {pid}.tmp {pid}; wait",
        pid = pid_file.display()
    );
    for script in [&finishes, &hangs] {
        let submitted = lanes(&engine, &["submit", "--", "sh", "-c", script]).await;
        assert_eq!(submitted.code, 0, "{submitted:?}");
    }
    eventually("job 1 runs", || started.exists().then_some(())).await;
    let sleep = eventually("job 2 runs", || read_number(&pid_file)).await;

    agent.interrupt();
    eventually("the agent drains", || {
        agent.log().contains("draining").then_some(())
    })
    .await;
    std::fs::write(&go, "").unwrap();
    let finished = finished_status(&engine, 1).await;
    assert!(
        matches!(
            finished,
            JobStatus::Finished {
                outcome: lanes::model::Outcome::Succeeded,
                ..
            }
        ),
        "{finished:?}\n{}",
        agent.log()
    );
    assert!(
        agent.process.try_wait().unwrap().is_none(),
        "still draining: job 2 runs"
    );

    agent.interrupt();
    let status = tokio::time::timeout(PATIENCE, agent.process.wait())
        .await
        .expect("the agent stops on the second signal")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    eventually("job 2's sleep is gone", || {
        process_gone(sleep).then_some(())
    })
    .await;
    let hung = job_json(&engine, 2).await;
    assert_eq!(
        hung["status"]["state"], "RUNNING",
        "not reported: its lease lapses and it gets another attempt"
    );
}

/// A CA and a certificate for `localhost` it signed, as PEM files in
/// `folder`: (the CA file, the server's files).
fn tls_files(folder: &Path) -> (PathBuf, lanes::tls::TlsFiles) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let files = lanes::tls::TlsFiles {
        cert: folder.join("server.pem"),
        key: folder.join("server.key"),
    };
    std::fs::write(folder.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(&files.cert, server.pem()).unwrap();
    std::fs::write(&files.key, server_key.serialize_pem()).unwrap();
    (folder.join("ca.pem"), files)
}

#[tokio::test]
async fn over_tls_the_commands_and_the_agent_work_with_the_ca() {
    let certificates = tempfile::tempdir().unwrap();
    let (ca, files) = tls_files(certificates.path());
    let engine = engine_with(Some(files)).await;
    let ca = ca.to_str().unwrap();
    let tls = ["--tls-ca", ca, "--tls-server-name", "localhost"];

    let listed = lanes(&engine, &[&["queue", "list"][..], &tls].concat()).await;
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(listed.stdout.starts_with("QUEUE"), "{listed:?}");

    // Without the CA: a connection error, exit 2, that says what to do.
    let plain = lanes(&engine, &["queue", "list"]).await;
    assert_eq!(plain.code, 2, "{plain:?}");
    assert!(plain.stderr.contains("connecting to"), "{plain:?}");

    // An agent over TLS runs a job submitted over TLS.
    let log = engine.folder.path().join("tls-agent.log");
    let _agent = command(
        &engine,
        &[&["agent", "--name", "tls-agent"][..], &tls].concat(),
    )
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let submitted = lanes(
        &engine,
        &[
            &["submit", "--wait"][..],
            &tls,
            &["--", "sh", "-c", "exit 0"],
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        submitted.code,
        0,
        "{submitted:?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
