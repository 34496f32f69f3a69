//! `lanes serve` as the real binary, in a child process: the configuration
//! file (its mistakes, its queues, SIGHUP reload), cron triggers (a fast
//! cron into a queue with run concurrency 1 never overlaps itself, and a
//! restart never fires a time twice), and SIGUSR1/SIGUSR2 drain.
//!
//! Tests assert behaviour, not timing: where a test shows that something
//! does *not* happen (a second run while the first runs), it watches for a
//! window long enough for the cron to have fired several times.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lanes::client::Client;
use lanes::model::{JobId, Report};
use lanes::protocol::{Completion, Message};
use rustix::process::Signal;
use tokio::process::{Child, Command};

/// Bound on every wait for something another process does.
const PATIENCE: Duration = Duration::from_secs(30);

fn lanes() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lanes"));
    command
        .env_remove("LANES_TOKEN")
        .env_remove("LANES_TOKENS")
        .env_remove("LANES_LISTEN")
        .env_remove("LANES_DATA")
        .env_remove("LANES_CONFIG")
        // Tests run side by side: no HTTP listener on the fixed default port.
        .env("LANES_HTTP", "off")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

/// A free loopback port (free when asked; the engine binds it right after).
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

struct Serve {
    process: Child,
    address: String,
    log: PathBuf,
}

impl Serve {
    /// Starts `lanes serve --config config` on `data` and waits until it
    /// answers.
    async fn start(config: &Path, data: &Path, log: PathBuf) -> Serve {
        let address = free_address();
        let process = lanes()
            .args(["serve", "--config"])
            .arg(config)
            .arg("--data")
            .arg(data)
            .args(["--listen", &address])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let serve = Serve {
            process,
            address,
            log,
        };
        let start = tokio::time::Instant::now();
        while Client::connect(serve.address.as_str(), b"", "probe")
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < PATIENCE,
                "the engine did not start:\n{}",
                serve.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        serve
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the engine's log says `text`.
    async fn wait_for_log(&self, text: &str) {
        let start = tokio::time::Instant::now();
        while !self.log().contains(text) {
            assert!(
                start.elapsed() < PATIENCE,
                "no {text:?} in:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: Signal) {
        let pid = rustix::process::Pid::from_raw(self.process.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    async fn client(&self) -> Client {
        Client::connect(self.address.as_str(), b"", "test")
            .await
            .expect("connect")
    }

    /// SIGTERM, and the clean stop it promises.
    async fn stop(mut self) {
        self.signal(Signal::TERM);
        let status = tokio::time::timeout(PATIENCE, self.process.wait())
            .await
            .expect("the engine stops")
            .unwrap();
        assert!(status.success(), "{status}\n{}", self.log());
    }
}

/// An agent in the default pool with `slots`, asking for work.
async fn agent(serve: &Serve, slots: u32) -> Client {
    let client = serve.client().await;
    client
        .register("worker", vec!["default".into()], vec![], slots, vec![])
        .await
        .expect("register");
    client.take_work(slots).await.expect("take work");
    client
}

/// The next dispatch within `wait`, if any.
async fn dispatch_within(agent: &Client, wait: Duration) -> Option<(JobId, u32)> {
    match tokio::time::timeout(wait, agent.next_push()).await {
        Ok(Some(frame)) => match frame.message {
            Message::Dispatch(dispatch) => Some((dispatch.job, dispatch.attempt)),
            other => panic!("expected a dispatch, got {other:?}"),
        },
        Ok(None) => panic!("the connection closed"),
        Err(_) => None,
    }
}

async fn succeed(agent: &Client, (job, attempt): (JobId, u32)) {
    let results = agent
        .complete(vec![Completion {
            job,
            attempt,
            report: Report::Succeeded,
            exit_code: 0,
        }])
        .await
        .expect("complete");
    assert!(results[0].is_ok(), "{results:?}");
}

/// Replaces a file whole, as an editor that saves by renaming does: a
/// reload never reads half a file.
fn replace(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// `lanes log print` of a stopped engine's data folder.
async fn log_print(data: &Path) -> String {
    let output = lanes()
        .args(["log", "print", "--data"])
        .arg(data)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The scheduled times of every `TriggerFired` event in printed log lines.
fn fired_times(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains("TriggerFired"))
        .map(|line| {
            let at = line.find("scheduled: ").expect("a scheduled time") + "scheduled: ".len();
            line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_bad_config_file_is_refused_with_its_line_and_reason() {
    let folder = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[server]\nlisten = \"127.0.0.1:0\"\nlistne = 3\n",
            "unknown field `listne`",
        ),
        (
            "[[queue]]\nname = \"builds\"\npriority = \"high\"\n",
            "invalid type: string \"high\", expected i32",
        ),
        (
            "\n\n[[queue]]\nname = \"builds\"\ndepth = 0\n",
            "line 3: queue \"builds\": depth: must be at least 1",
        ),
        (
            "[[trigger]]\nname = \"t\"\ncron = \"* * * *\"\nsteps = [{ command = \"true\" }]\n",
            "line 1: trigger \"t\": cron expression \"* * * *\"",
        ),
    ];
    for (i, (text, reason)) in cases.into_iter().enumerate() {
        let config = folder.path().join(format!("bad-{i}.toml"));
        std::fs::write(&config, text).unwrap();
        let output = lanes()
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data")
            .arg(folder.path().join("data"))
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&format!("bad-{i}.toml")), "{stderr}");
        assert!(stderr.contains(reason), "{reason:?} not in:\n{stderr}");
        if !reason.starts_with("line ") {
            // toml's own message places it.
            assert!(stderr.contains("line 3"), "{stderr}");
        }
    }
    assert!(
        !folder.path().join("data").exists(),
        "a refused configuration created a data folder"
    );
}

#[tokio::test]
async fn config_queues_are_applied_at_start_and_again_on_sighup() {
    let folder = tempfile::tempdir().unwrap();
    let config = folder.path().join("lanes.toml");
    std::fs::write(
        &config,
        "[[queue]]\nname = \"builds\"\ndepth = 2\npriority = 3\n",
    )
    .unwrap();
    let data = folder.path().join("data");
    let serve = Serve::start(&config, &data, folder.path().join("serve.log")).await;
    let client = serve.client().await;
    let depth = |queues: Vec<lanes::protocol::QueueInfo>| {
        queues
            .into_iter()
            .find(|queue| queue.config.name == "builds")
            .map(|queue| (queue.config.depth, queue.config.priority))
    };
    assert_eq!(depth(client.queues().await.unwrap()), Some((Some(2), 3)));

    // A bad file changes nothing.
    replace(&config, "[[queue]]\nname = \"builds\"\ndepth = 0\n");
    serve.signal(Signal::HUP);
    serve.wait_for_log("was not reloaded").await;
    replace(&config, "[[queue]]\nname = \"builds\"\ndepth = 5\n");
    serve.signal(Signal::HUP);
    let start = tokio::time::Instant::now();
    while depth(client.queues().await.unwrap()) != Some((Some(5), 0)) {
        assert!(start.elapsed() < PATIENCE, "no reload:\n{}", serve.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(client);
    let log = serve.log();
    serve.stop().await;
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("was not reloaded"), "{log}");
    // Each change is in the log like any other.
    let printed = log_print(&data).await;
    let puts = printed
        .lines()
        .filter(|line| line.contains("QueuePut") && line.contains("\"builds\""))
        .count();
    assert_eq!(puts, 2, "{printed}");
}

#[tokio::test]
async fn a_fast_trigger_on_run_concurrency_one_never_overlaps_and_never_fires_twice() {
    let folder = tempfile::tempdir().unwrap();
    let config = folder.path().join("lanes.toml");
    std::fs::write(
        &config,
        r#"
[[queue]]
name = "nightly"
run_concurrency = 1

[[trigger]]
name = "every-second"
cron = "* * * * * *"
queue = "nightly"
steps = [{ command = "true" }]
"#,
    )
    .unwrap();
    let data = folder.path().join("data");
    let serve = Serve::start(&config, &data, folder.path().join("serve-1.log")).await;
    let worker = agent(&serve, 4).await;
    let first = dispatch_within(&worker, PATIENCE)
        .await
        .expect("the trigger fired and its job was dispatched");
    // The cron fires every second, but the next run waits for this one:
    // nothing else is dispatched while it runs, with three slots free.
    assert_eq!(
        dispatch_within(&worker, Duration::from_millis(2_500)).await,
        None,
        "a second run overlapped the first"
    );
    let queue = serve
        .client()
        .await
        .queues()
        .await
        .unwrap()
        .into_iter()
        .find(|queue| queue.config.name == "nightly")
        .unwrap();
    assert_eq!(queue.running, 1);
    assert!(queue.held + queue.waiting >= 1, "{queue:?}");
    succeed(&worker, first).await;
    let second = dispatch_within(&worker, PATIENCE)
        .await
        .expect("the next run starts once the first ended");
    assert_ne!(second.0, first.0);
    drop(worker);
    serve.stop().await;

    // Again on the same log: firings continue after the last one, never
    // repeating a time.
    let serve = Serve::start(&config, &data, folder.path().join("serve-2.log")).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    serve.stop().await;
    let times = fired_times(&log_print(&data).await);
    assert!(times.len() >= 3, "{times:?}");
    assert!(
        times.windows(2).all(|pair| pair[0] < pair[1]),
        "a time fired twice or out of order: {times:?}"
    );
    assert!(times.iter().all(|time| time % 1_000 == 0), "{times:?}");
}

#[tokio::test]
async fn sigusr1_drains_and_sigusr2_dispatches_again() {
    let folder = tempfile::tempdir().unwrap();
    let config = folder.path().join("lanes.toml");
    std::fs::write(&config, "").unwrap();
    let data = folder.path().join("data");
    let serve = Serve::start(&config, &data, folder.path().join("serve.log")).await;
    let worker = agent(&serve, 2).await;
    let submitter = serve.client().await;
    let run = |label: &str| lanes::model::RunSpec {
        jobs: vec![lanes::model::JobSpec {
            payload: label.as_bytes().to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    };
    submitter.submit(run("before")).await.unwrap();
    let running = dispatch_within(&worker, PATIENCE)
        .await
        .expect("dispatched");

    serve.signal(Signal::USR1);
    serve.wait_for_log("draining").await;
    let waiting = submitter.submit(run("during")).await.unwrap();
    assert_eq!(
        dispatch_within(&worker, Duration::from_millis(1_000)).await,
        None,
        "a job was dispatched while draining"
    );
    // The running job finishes normally.
    succeed(&worker, running).await;
    assert_eq!(
        dispatch_within(&worker, Duration::from_millis(500)).await,
        None
    );

    serve.signal(Signal::USR2);
    let (job, _) = dispatch_within(&worker, PATIENCE)
        .await
        .expect("dispatching again after SIGUSR2");
    assert_eq!(job, waiting.first_job);
    drop((worker, submitter));
    serve.stop().await;
}
