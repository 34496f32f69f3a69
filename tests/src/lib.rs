//! Shared helpers for the end-to-end tests: a real engine (sled log in a
//! temporary folder, the writer, the server) on a loopback port, and
//! clients for it.

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
}

impl Default for Options {
    fn default() -> Options {
        Options {
            lease_ms: 30_000,
            limits: Limits::default(),
            durability: Durability::Sync,
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
        tokens,
        limits: options.limits.clone(),
        repair: false,
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
