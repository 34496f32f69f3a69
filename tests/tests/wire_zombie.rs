//! A zombie agent: it takes a job, then stalls (no heartbeat, no reading:
//! SIGSTOP, in-process) past its lease. The job runs again elsewhere; when
//! the zombie wakes and reports its stale attempt, the report is refused
//! and exactly one completion is recorded.

use lanes::model::{ErrorCode, JobOptions, Report};
use lanes::protocol::{
    Complete, CompleteResults, Completion, ErrorAnswer, Frame, Message, Register, TakeWork,
};
use lanes::sched::view::JobStatus;
use lanes_tests::{
    complete, next_dispatch_heartbeating, one_job, outcome, queue_info, Options, Raw, TestServer,
    AGENT, SUBMITTER,
};

fn register(name: &str, running: Vec<(lanes::model::JobId, u32)>) -> Register {
    Register {
        name: name.to_string(),
        pools: vec!["default".to_string()],
        labels: vec![],
        slots: 1,
        running,
    }
}

/// The zombie's report of attempt 1, and the server's answer to it.
async fn report_attempt_one(
    zombie: &mut Raw,
    request_id: u64,
    job: lanes::model::JobId,
) -> Vec<Result<(), ErrorAnswer>> {
    zombie
        .send(
            request_id,
            Complete {
                completions: vec![Completion {
                    job,
                    attempt: 1,
                    report: Report::Failed,
                    exit_code: 1,
                }],
            },
        )
        .await
        .unwrap();
    match zombie.frame().await {
        Frame {
            request_id: answered,
            message: Message::CompleteResults(CompleteResults { results }),
        } if answered == request_id => results,
        other => panic!("expected the CompleteResults of request {request_id}, got {other:?}"),
    }
}

#[tokio::test]
async fn zombie_agent_report_of_a_stale_attempt_is_refused_and_recorded_once() {
    let server = TestServer::start_with(Options {
        lease_ms: 500,
        ..Options::default()
    })
    .await;
    let submitter = server.client(SUBMITTER).await;
    let job = submitter
        .submit(one_job(JobOptions::default()))
        .await
        .unwrap()
        .first_job;

    // The zombie, on a raw connection so that it can stop reading.
    let mut zombie = Raw::authenticated(server.address(), AGENT).await;
    zombie.send(2, register("zombie", vec![])).await.unwrap();
    let zombie_id = match zombie.frame().await.message {
        Message::Registered(registered) => registered.agent,
        other => panic!("expected Registered, got {other:?}"),
    };
    zombie.send(3, TakeWork { count: 1 }).await.unwrap();
    // `Done` first, then the dispatch under the same request id.
    assert!(matches!(
        zombie.frame().await,
        Frame {
            request_id: 3,
            message: Message::Done(_)
        }
    ));
    match zombie.frame().await {
        Frame {
            request_id: 3,
            message: Message::Dispatch(dispatch),
        } => assert_eq!((dispatch.job, dispatch.attempt), (job, 1)),
        other => panic!("expected a Dispatch under request 3, got {other:?}"),
    }

    // It stalls: no heartbeat, no read. Its lease runs out and the job
    // goes to the healthy agent, as attempt 2.
    let healthy = server.agent("healthy", &["default"], &[], 1).await;
    healthy.take_work(1).await.unwrap();
    let dispatch = next_dispatch_heartbeating(&healthy).await;
    assert_eq!((dispatch.job, dispatch.attempt), (job, 2));
    let healthy_id = submitter
        .agents()
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.name == "healthy")
        .unwrap()
        .id;

    // It wakes, on the same connection, and reports attempt 1: refused,
    // since its lease expired (the server does not close its connection).
    let results = report_attempt_one(&mut zombie, 4, job).await;
    assert_eq!(
        results,
        vec![Err(ErrorAnswer::new(
            ErrorCode::FailedPrecondition,
            format!("{zombie_id} has not registered, or its lease has expired: register again")
        ))]
    );
    // Registered again, still claiming the job: the stale attempt is named.
    zombie
        .send(5, register("zombie", vec![(job, 1)]))
        .await
        .unwrap();
    match zombie.frame().await.message {
        Message::Registered(registered) => assert_eq!(registered.agent, zombie_id),
        other => panic!("expected Registered, got {other:?}"),
    }
    let results = report_attempt_one(&mut zombie, 6, job).await;
    assert_eq!(
        results,
        vec![Err(ErrorAnswer::new(
            ErrorCode::FailedPrecondition,
            format!("{job} attempt 1 is stale: the job is on attempt 2")
        ))]
    );
    // Neither report touched the job: it still runs on the healthy agent.
    assert_eq!(
        submitter.job(job).await.unwrap().status,
        JobStatus::Running {
            agent: healthy_id,
            stopping: None
        }
    );

    complete(&healthy, job, 2, Report::Succeeded).await;
    let info = submitter.job(job).await.unwrap();
    assert_eq!(
        outcome(&info.status),
        Some(lanes::model::Outcome::Succeeded)
    );
    assert_eq!(info.attempt, 2);
    let default = queue_info(&submitter, "default").await;
    assert_eq!(default.dispatched_total, 2);
    assert_eq!(default.finished_total, 1);
    assert_eq!((default.waiting, default.running), (0, 0));
    server.stop().await;
}
