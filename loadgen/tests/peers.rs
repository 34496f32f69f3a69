//! Short runs against private beanstalkd and Redis instances, when their
//! binaries are installed (bench/compare.sh installs them); on a machine
//! without them each test says so and passes, since the default suite must
//! not need them. Every job submitted must be taken and completed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lanes_loadgen::metrics::Counters;
use lanes_loadgen::pacer::Arrivals;
use lanes_loadgen::peers::{self, PeerKind, PeerTarget};
use lanes_loadgen::run::RunConfig;
use lanes_loadgen::workload::{JobDuration, Mode, Workload};

/// A server process with its own folder (its output goes to `output.log`
/// there), killed when dropped.
struct Server {
    child: Child,
    folder: tempfile::TempDir,
}

impl Server {
    fn log_path(&self) -> PathBuf {
        self.folder.path().join("output.log")
    }

    /// What a failed test prints: is the server still up, and what it said.
    fn describe(&mut self) -> String {
        let state = match self.child.try_wait() {
            Ok(None) => "still running".to_string(),
            Ok(Some(status)) => format!("exited: {status}"),
            Err(error) => format!("state unknown: {error}"),
        };
        let output = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        format!("server {state}; its output:\n{output}")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The process id of the server listening on `port`, asked over its own
/// protocol (Redis `INFO server`, beanstalkd `stats`), or None if what
/// answers does not say.
fn listener_pid(kind: PeerKind, port: u16) -> Option<u32> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let (request, field): (&[u8], &str) = match kind {
        PeerKind::Redis => (b"INFO server\r\n", "process_id:"),
        PeerKind::Beanstalkd => (b"stats\r\n", "pid: "),
    };
    stream.write_all(request).ok()?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while answer.len() < 64 << 10 {
        let read = stream.read(&mut buffer).ok()?;
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(at) = text.find(field) {
            let rest = &text[at + field.len()..];
            if let Some(end) = rest.find(['\r', '\n']) {
                return rest[..end].trim().parse().ok();
            }
        }
    }
    None
}

/// Starts `program` with the arguments for a free port and folder and
/// returns it with that port once it listens there. A port is free only
/// until someone binds it (another test, or any process on the machine,
/// may take it first), so the server answering must report our child's
/// process id; otherwise ours is stopped and started again on another port.
fn start(
    program: &str,
    kind: PeerKind,
    arguments: impl Fn(u16, &str) -> Vec<String>,
) -> Option<(Server, u16)> {
    for _ in 0..5 {
        let port = free_port();
        let folder = tempfile::tempdir().expect("a temporary folder");
        let log = std::fs::File::create(folder.path().join("output.log")).expect("a log file");
        let dir = folder.path().to_str().expect("a UTF-8 path").to_string();
        let child = Command::new(program)
            .args(arguments(port, &dir))
            .stdout(Stdio::from(log.try_clone().expect("a log file")))
            .stderr(Stdio::from(log))
            .spawn();
        let Ok(child) = child else {
            eprintln!("{program} is not installed: skipped (bench/compare.sh installs it)");
            return None;
        };
        let mut server = Server { child, folder };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(_)) = server.child.try_wait() {
                eprintln!("{program} exited on port {port}: {}", server.describe());
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let pid = listener_pid(kind, port);
                if pid == Some(server.child.id()) {
                    return Some((server, port));
                }
                eprintln!(
                    "port {port} answered for process {pid:?}, not our {program} ({}): another port",
                    server.child.id()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{program} did not listen on {port}: {}",
                server.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("{program} did not start on any of five ports");
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

async fn check(kind: PeerKind, server: &mut Server, port: u16) {
    let target = PeerTarget {
        kind,
        address: format!("127.0.0.1:{port}"),
    };
    let result = match peers::run(&config(), &target).await {
        Ok(result) => result,
        Err(error) => panic!("the run: {error:#}\n{}", server.describe()),
    };
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
    let Some((mut server, port)) = start("beanstalkd", PeerKind::Beanstalkd, |port, _| {
        ["-l", "127.0.0.1", "-p", &port.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }) else {
        return;
    };
    check(PeerKind::Beanstalkd, &mut server, port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_takes_and_completes_every_job() {
    let Some((mut server, port)) = start("redis-server", PeerKind::Redis, |port, dir| {
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
            dir,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }) else {
        return;
    };
    check(PeerKind::Redis, &mut server, port).await;
}
