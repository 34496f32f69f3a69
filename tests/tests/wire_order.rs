//! Dispatch order and priority over the wire, through the real server.

use lanes::model::{JobOptions, JobSpec, Report, RunSpec};
use lanes::protocol::Completion;
use lanes_tests::{next_dispatch, TestServer, SUBMITTER};

fn one_job(priority: Option<i32>) -> RunSpec {
    RunSpec {
        defaults: JobOptions {
            priority,
            ..JobOptions::default()
        },
        jobs: vec![JobSpec {
            payload: b"echo hi".to_vec(),
            ..JobSpec::default()
        }],
        idempotency_key: None,
    }
}

#[tokio::test]
async fn high_priority_job_is_dispatched_before_earlier_low_priority_jobs() {
    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let low = submitter.submit(one_job(Some(-1))).await.unwrap();
    let normal = submitter.submit(one_job(None)).await.unwrap();
    let high = submitter.submit(one_job(Some(10))).await.unwrap();
    let agent = server.agent("worker-1", &["default"], &[], 1).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        agent.take_work(1).await.unwrap();
        let (job, attempt) = next_dispatch(&agent).await;
        order.push(job);
        let results = agent
            .complete(vec![Completion {
                job,
                attempt,
                report: Report::Succeeded,
                exit_code: 0,
            }])
            .await
            .unwrap();
        assert_eq!(results, vec![Ok(())]);
    }
    assert_eq!(order, vec![high.first_job, normal.first_job, low.first_job]);
    let info = submitter.job(high.first_job).await.unwrap();
    assert!(matches!(
        info.status,
        lanes::sched::view::JobStatus::Finished {
            outcome: lanes::model::Outcome::Succeeded,
            ..
        }
    ));
    server.stop().await;
}

#[tokio::test]
async fn acknowledged_submissions_survive_a_restart() {
    let mut server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(submitter.submit(one_job(Some(i))).await.unwrap().first_job);
    }
    drop(submitter);
    server.restart(Default::default()).await;
    let submitter = server.client(SUBMITTER).await;
    for id in ids {
        assert_eq!(submitter.job(id).await.unwrap().id, id);
    }
    server.stop().await;
}
