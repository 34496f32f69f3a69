//! An agent session survives the engine going away: it reconnects with
//! backoff, registers again listing the job it still runs (which keeps its
//! lease and its attempt), and its completion is accepted.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use lanes::agent_session::{AgentConfig, AgentSession, Order};
use lanes::client::Client;
use lanes::driver::Durability;
use lanes::model::{JobSpec, Outcome, Report, RunSpec};
use lanes::sched::view::JobStatus;
use lanes::sched::SchedulerConfig;
use lanes::server::{self, EngineConfig, Limits, Running, Tokens};

async fn start(data: &Path, listen: SocketAddr) -> Running {
    server::start(EngineConfig {
        data: data.to_path_buf(),
        listen,
        durability: Durability::Sync,
        scheduler: SchedulerConfig { lease_ms: 60_000 },
        snapshot_every_events: None,
        retention: Some(Default::default()),
        tokens: Tokens::open(),
        limits: Limits::default(),
        repair: false,
        tls: None,
        http: None,
    })
    .await
    .expect("the engine starts")
}

#[tokio::test]
async fn agent_reconnects_after_a_restart_and_its_job_keeps_its_lease() {
    let data = tempfile::tempdir().unwrap();
    let running = start(data.path(), "127.0.0.1:0".parse().unwrap()).await;
    let address = running.address();
    let submitter = Client::connect(address, b"", "submitter").await.unwrap();
    let job = submitter
        .submit(RunSpec {
            jobs: vec![JobSpec::default()],
            ..RunSpec::default()
        })
        .await
        .unwrap()
        .first_job;
    let mut agent = AgentSession::connect(AgentConfig {
        address: address.to_string(),
        token: Vec::new(),
        name: "resilient".into(),
        pools: vec!["default".into()],
        labels: vec![],
        slots: 1,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect: Default::default(),
    })
    .await;
    agent.take_work(1).await;
    let Order::Run(dispatch) = agent.next_order().await else {
        panic!("expected a job")
    };
    assert_eq!((dispatch.job, dispatch.attempt), (job, 1));
    drop(submitter);

    // The engine goes away and comes back on the same address.
    running.stop().await.unwrap();
    let running = start(data.path(), address).await;
    // The session notices on its next use, reconnects and re-registers
    // listing the job: the job keeps its lease and its attempt.
    assert_eq!(agent.complete(job, Report::Succeeded, 0).await, Ok(()));
    assert!(agent.connections() >= 2, "the session reconnected");
    let submitter = Client::connect(address, b"", "submitter").await.unwrap();
    let info = submitter.job(job).await.unwrap();
    assert_eq!(
        info.attempt, 1,
        "no second attempt: the lease survived the restart"
    );
    assert!(matches!(
        info.status,
        JobStatus::Finished {
            outcome: Outcome::Succeeded,
            ..
        }
    ));
    running.stop().await.unwrap();
}
