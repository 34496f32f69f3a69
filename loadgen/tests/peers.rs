//! Short runs against private beanstalkd and Redis instances, when their
//! binaries are installed (bench/compare.sh installs them); on a machine
//! without them each test says so and passes, since the default suite must
//! not need them. Every job submitted must be taken and completed.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lanes_loadgen::metrics::Counters;
use lanes_loadgen::pacer::Arrivals;
use lanes_loadgen::peers::{self, PeerKind, PeerTarget};
use lanes_loadgen::run::RunConfig;
use lanes_loadgen::workload::{JobDuration, Mode, Workload};

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts `program` with the arguments for a free port and returns it with
/// that port once it listens. A port is free only until someone binds it
/// (the other test may pick the same one at the same moment), so a server
/// that exits instead of listening is started again on another port.
fn start(program: &str, arguments: impl Fn(u16) -> Vec<String>) -> Option<(Server, u16)> {
    for _ in 0..5 {
        let port = free_port();
        let child = Command::new(program)
            .args(arguments(port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("{program} is not installed: skipped (bench/compare.sh installs it)");
            return None;
        };
        let mut server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(_)) = server.0.try_wait() {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Ours, not another process that took the port first.
                if let Ok(None) = server.0.try_wait() {
                    return Some((server, port));
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{program} did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("{program} exited five times instead of listening");
}

fn config() -> RunConfig {
    RunConfig {
        workload: Workload {
            queues: vec!["lg-0".into(), "lg-1".into()],
            priorities: vec![0, 5],
            tag_values: 0,
            tag_limit: None,
            run_size: 2,
            job_duration: JobDuration::Fixed(Duration::from_millis(1)),
            payload_bytes: 32,
        },
        mode: Mode::Open {
            rate_per_second: 500.0,
            arrivals: Arrivals::Poisson,
        },
        connections: 2,
        agents: 2,
        slots_per_agent: 4,
        jobs: Some(300),
        duration: Duration::from_millis(500),
        drain_timeout: Duration::from_secs(10),
        seed: 11,
        late_threshold: Duration::from_millis(2),
        in_flight_max: 64,
        preload: None,
        progress: false,
    }
}

async fn check(kind: PeerKind, port: u16) {
    let target = PeerTarget {
        kind,
        address: format!("127.0.0.1:{port}"),
    };
    let result = peers::run(&config(), &target).await.expect("the run");
    let c = &result.shared.counters;
    let sent = Counters::get(&c.sent);
    assert!(sent > 0);
    assert_eq!(Counters::get(&c.acked), sent);
    assert_eq!(Counters::get(&c.dispatched), sent);
    assert_eq!(Counters::get(&c.completed), sent);
    assert!(result.drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beanstalkd_takes_and_completes_every_job() {
    let Some((_server, port)) = start("beanstalkd", |port| {
        vec![
            "-l".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ]
    }) else {
        return;
    };
    check(PeerKind::Beanstalkd, port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_takes_and_completes_every_job() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let dir = folder.path().to_str().expect("a UTF-8 path").to_string();
    let Some((_server, port)) = start("redis-server", |port| {
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }) else {
        return;
    };
    check(PeerKind::Redis, port).await;
}
