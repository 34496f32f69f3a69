//! Shared helpers for the end-to-end tests: a real engine (sled log in a
//! temporary folder, the writer, the server) on a loopback port, clients
//! for it (typed, and [`Raw`] connections that speak bytes), and small
//! helpers for specifications, dispatches and reading state.

use std::time::Duration;

use lanes::client::Client;
use lanes::driver::Durability;
use lanes::protocol::{Frame, Message, Role};
use lanes::sched::SchedulerConfig;
use lanes::server::{self, EngineConfig, Limits, Running, Tokens};

pub const ADMIN: &[u8] = b"admin-token-for-tests-0001";
pub const SUBMITTER: &[u8] = b"submitter-token-for-tests-01";
pub const AGENT: &[u8] = b"agent-token-for-tests-000001";

/// A running engine on 127.0.0.1, with its data folder.
pub struct TestServer {
    pub running: Option<Running>,
    pub data: tempfile::TempDir,
}

pub struct Options {
    pub lease_ms: u64,
    pub limits: Limits,
    pub durability: Durability,
    /// Serve TLS with these files; `None`: plain TCP.
    pub tls: Option<lanes::tls::TlsFiles>,
    /// The HTTP listener (`/metrics`, `/livez`, `/readyz`); none by default.
    pub http: Option<std::net::SocketAddr>,
    /// How much finished work is kept: the engine's default unless a test
    /// says otherwise.
    pub retention: Option<lanes::sched::Retention>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            lease_ms: 30_000,
            limits: Limits::default(),
            durability: Durability::Sync,
            tls: None,
            http: None,
            retention: Some(lanes::sched::Retention::default()),
        }
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> TestServer {
        let data = tempfile::tempdir().expect("a temporary folder");
        let running = start_in(data.path(), &options).await;
        TestServer {
            running: Some(running),
            data,
        }
    }

    /// Stops the engine and starts it again on the same data folder.
    pub async fn restart(&mut self, options: Options) {
        let running = self.running.take().expect("running");
        running.stop().await.expect("a clean stop");
        self.running = Some(start_in(self.data.path(), &options).await);
    }

    pub fn address(&self) -> std::net::SocketAddr {
        self.running.as_ref().expect("running").address()
    }

    pub async fn client(&self, token: &[u8]) -> Client {
        Client::connect(self.address(), token, "test")
            .await
            .expect("connect")
    }

    pub async fn admin(&self) -> Client {
        self.client(ADMIN).await
    }

    /// An agent connection, registered.
    pub async fn agent(
        &self,
        name: &str,
        pools: &[&str],
        labels: &[(&str, &str)],
        slots: u32,
    ) -> Client {
        let client = self.client(AGENT).await;
        client
            .register(
                name,
                pools.iter().map(|p| p.to_string()).collect(),
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                slots,
                vec![],
            )
            .await
            .expect("register");
        client
    }

    pub async fn stop(mut self) -> lanes::sched::Scheduler {
        self.running
            .take()
            .expect("running")
            .stop()
            .await
            .expect("a clean stop")
    }
}

async fn start_in(data: &std::path::Path, options: &Options) -> Running {
    let tokens = Tokens::new(vec![
        (ADMIN.to_vec(), Role::Admin),
        (SUBMITTER.to_vec(), Role::Submitter),
        (AGENT.to_vec(), Role::Agent),
    ])
    .expect("valid tokens");
    server::start(EngineConfig {
        data: data.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("an address"),
        durability: options.durability,
        scheduler: SchedulerConfig {
            lease_ms: options.lease_ms,
        },
        snapshot_every_events: None,
        retention: options.retention,
        tokens,
        limits: options.limits.clone(),
        repair: false,
        tls: options.tls.clone(),
        http: options.http,
    })
    .await
    .expect("the engine starts")
}

/// The next push, waiting at most `within`.
pub async fn push_within(client: &Client, within: Duration) -> Option<Frame> {
    tokio::time::timeout(within, client.next_push())
        .await
        .ok()
        .flatten()
}

/// The next `Dispatch` push's job and attempt.
pub async fn next_dispatch(client: &Client) -> (lanes::model::JobId, u32) {
    match push_within(client, Duration::from_secs(10))
        .await
        .map(|f| f.message)
    {
        Some(Message::Dispatch(dispatch)) => (dispatch.job, dispatch.attempt),
        other => panic!("expected a dispatch, got {other:?}"),
    }
}

// ---- specifications ------------------------------------------------------

/// A run of one job with `options`, payload `echo`.
pub fn one_job(options: lanes::model::JobOptions) -> lanes::model::RunSpec {
    run_of(lanes::model::JobOptions::default(), vec![options])
}

/// A run with `defaults` and one job per entry of `jobs`, with those options.
pub fn run_of(
    defaults: lanes::model::JobOptions,
    jobs: Vec<lanes::model::JobOptions>,
) -> lanes::model::RunSpec {
    lanes::model::RunSpec {
        defaults,
        jobs: jobs
            .into_iter()
            .map(|options| lanes::model::JobSpec {
                options,
                wait_before: false,
                payload: b"echo".to_vec(),
            })
            .collect(),
        idempotency_key: None,
    }
}

/// Job options in `queue`, the rest absent.
pub fn in_queue(queue: &str) -> lanes::model::JobOptions {
    lanes::model::JobOptions {
        queue: Some(queue.to_string()),
        ..lanes::model::JobOptions::default()
    }
}

/// Job options with a priority, the rest absent.
pub fn at_priority(priority: i32) -> lanes::model::JobOptions {
    lanes::model::JobOptions {
        priority: Some(priority),
        ..lanes::model::JobOptions::default()
    }
}

// ---- typed-client helpers -------------------------------------------------

/// Reports one job done with `report`; the server must accept it.
pub async fn complete(
    agent: &Client,
    job: lanes::model::JobId,
    attempt: u32,
    report: lanes::model::Report,
) {
    let results = agent
        .complete(vec![lanes::protocol::Completion {
            job,
            attempt,
            report,
            exit_code: 0,
        }])
        .await
        .expect("complete");
    assert_eq!(
        results,
        vec![Ok(())],
        "completion of {job} attempt {attempt}"
    );
}

/// One job at a time: ask for one, take its dispatch, report success;
/// `count` times. The jobs in the order they were dispatched.
pub async fn drain(agent: &Client, count: usize) -> Vec<lanes::model::JobId> {
    let mut order = Vec::with_capacity(count);
    for _ in 0..count {
        agent.take_work(1).await.expect("take work");
        let (job, attempt) = next_dispatch(agent).await;
        complete(agent, job, attempt, lanes::model::Report::Succeeded).await;
        order.push(job);
    }
    order
}

/// The next `Dispatch` push, while heartbeating so the agent keeps its
/// lease (for tests with a short lease). Gives up after 10 s.
pub async fn next_dispatch_heartbeating(agent: &Client) -> lanes::protocol::Dispatch {
    // 200 rounds of at most 50 ms: 10 s.
    for _ in 0..200 {
        agent.heartbeat().await.expect("heartbeat");
        match push_within(agent, Duration::from_millis(50))
            .await
            .map(|f| f.message)
        {
            None => continue,
            Some(Message::Dispatch(dispatch)) => return dispatch,
            Some(other) => panic!("expected a dispatch, got {other:?}"),
        }
    }
    panic!("no dispatch within 10 s");
}

/// A queue's counters and configuration.
pub async fn queue_info(client: &Client, name: &str) -> lanes::protocol::QueueInfo {
    client
        .queues()
        .await
        .expect("list queues")
        .into_iter()
        .find(|queue| queue.config.name == name)
        .unwrap_or_else(|| panic!("queue {name:?} is listed"))
}

/// Reads the job until `done` holds for its status (time-driven changes:
/// timeouts, leases). Gives up after 10 s.
pub async fn job_when(
    client: &Client,
    job: lanes::model::JobId,
    done: impl Fn(&lanes::sched::view::JobStatus) -> bool,
) -> lanes::protocol::JobInfo {
    // 500 reads 20 ms apart: 10 s. Nothing pushes job changes yet (Watch
    // is not served), so reading is the only way to see them.
    let mut last = None;
    for _ in 0..500 {
        let info = client.job(job).await.expect("get job");
        if done(&info.status) {
            return info;
        }
        last = Some(info.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{job} did not reach the expected status within 10 s; last {last:?}");
}

/// The finished outcome of a job, or `None` while it is not finished.
pub fn outcome(status: &lanes::sched::view::JobStatus) -> Option<lanes::model::Outcome> {
    match status {
        lanes::sched::view::JobStatus::Finished { outcome, .. } => Some(*outcome),
        _ => None,
    }
}

// ---- raw connections --------------------------------------------------------

/// Largest frame a raw connection accepts from the server.
const RAW_FRAME_LENGTH_MAX: usize = 64 << 20;

/// A frame's bytes, for a raw connection (no limit but the codec's).
pub fn encode(request_id: u64, message: impl Into<Message>) -> Vec<u8> {
    let mut bytes = Vec::new();
    Frame::new(request_id, message)
        .encode(&mut bytes, RAW_FRAME_LENGTH_MAX)
        .expect("the frame encodes");
    bytes
}

/// What a raw read saw.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one at a time, in tests
pub enum Read {
    Frame(Frame),
    /// The server closed the connection (end of stream or reset).
    Closed,
    /// Nothing arrived in time.
    Quiet,
}

/// A connection that speaks bytes: for tests of what the typed client
/// never sends (bad versions, garbage, oversized frames) and of peers that
/// stall.
pub struct Raw {
    pub stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl Raw {
    pub async fn connect(address: std::net::SocketAddr) -> Raw {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Connects and completes the handshake with `token`.
    pub async fn authenticated(address: std::net::SocketAddr, token: &[u8]) -> Raw {
        let mut raw = Raw::connect(address).await;
        raw.send(
            1,
            lanes::protocol::Hello {
                protocol_version: lanes::protocol::PROTOCOL_VERSION,
                token: token.to_vec(),
                client_name: "raw".to_string(),
            },
        )
        .await
        .expect("send hello");
        match raw.frame().await.message {
            Message::HelloOk(_) => raw,
            other => panic!("expected HelloOk, got {other:?}"),
        }
    }

    pub async fn send(
        &mut self,
        request_id: u64,
        message: impl Into<Message>,
    ) -> std::io::Result<()> {
        self.send_bytes(&encode(request_id, message)).await
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await
    }

    /// The next frame, end of stream, or nothing within `within`.
    pub async fn read(&mut self, within: Duration) -> Read {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let lanes::protocol::Check::Complete { frame_length } =
                Frame::check(&self.buffer, RAW_FRAME_LENGTH_MAX).expect("the server frames")
            {
                let frame = Frame::decode(&self.buffer[..frame_length]).expect("a valid frame");
                self.buffer.drain(..frame_length);
                return Read::Frame(frame);
            }
            let mut chunk = [0u8; 64 << 10];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Read::Quiet,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame; panics if the connection closes or stays quiet 10 s.
    pub async fn frame(&mut self) -> Frame {
        match self.read(Duration::from_secs(10)).await {
            Read::Frame(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The one error frame a closing server sends, then the close itself:
    /// its request id and the error.
    pub async fn error_then_close(&mut self) -> (u64, lanes::protocol::ErrorAnswer) {
        let frames = self.until_closed().await;
        match &frames[..] {
            [Frame {
                request_id,
                message: Message::Error(error),
            }] => (*request_id, error.clone()),
            other => panic!("expected one error frame and the close, got {other:?}"),
        }
    }

    /// Every frame until the server closes the connection (at most 10 s).
    pub async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            match self.read(Duration::from_secs(10)).await {
                Read::Frame(frame) => frames.push(frame),
                Read::Closed => return frames,
                Read::Quiet => panic!("the server did not close the connection; got {frames:?}"),
            }
        }
    }
}
