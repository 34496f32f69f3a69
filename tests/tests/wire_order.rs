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

/// A `Complete` of many jobs is one step for the engine: a request sent
/// after it on the same connection sees every part of it applied.
#[tokio::test]
async fn a_multi_job_complete_is_applied_whole_before_the_next_request() {
    use lanes::protocol::{Complete, GetJob, Message, Register, TakeWork};
    use lanes_tests::{Raw, ADMIN};

    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let mut raw = Raw::authenticated(server.address(), ADMIN).await;
    raw.send(
        2,
        Register {
            name: "batcher".to_string(),
            pools: vec!["default".to_string()],
            labels: vec![],
            slots: 4,
            running: vec![],
        },
    )
    .await
    .unwrap();
    assert!(matches!(raw.frame().await.message, Message::Registered(_)));
    let mut request_id = 10;
    for round in 0..20 {
        let submitted = submitter
            .submit(RunSpec {
                jobs: vec![JobSpec::default(); 4],
                ..RunSpec::default()
            })
            .await
            .unwrap();
        request_id += 1;
        raw.send(request_id, TakeWork { count: 4 }).await.unwrap();
        let mut running = Vec::new();
        while running.len() < 4 {
            match raw.frame().await.message {
                Message::Dispatch(dispatch) => running.push((dispatch.job, dispatch.attempt)),
                Message::Done(_) => {}
                other => panic!("round {round}: expected dispatches, got {other:?}"),
            }
        }
        // The Complete and the reads go out in one write: pipelined.
        let complete_id = request_id + 1;
        let mut bytes = lanes_tests::encode(
            complete_id,
            Complete {
                completions: running
                    .iter()
                    .map(|&(job, attempt)| Completion {
                        job,
                        attempt,
                        report: Report::Succeeded,
                        exit_code: 0,
                    })
                    .collect(),
            },
        );
        for (i, &(job, _)) in running.iter().enumerate() {
            bytes.extend(lanes_tests::encode(
                complete_id + 1 + i as u64,
                GetJob { job },
            ));
        }
        request_id = complete_id + running.len() as u64;
        raw.send_bytes(&bytes).await.unwrap();
        for _ in 0..=running.len() {
            let frame = raw.frame().await;
            match frame.message {
                Message::CompleteResults(answer) => {
                    assert_eq!(answer.results, vec![Ok(()); 4], "round {round}")
                }
                Message::JobInfo(info) => assert!(
                    matches!(
                        info.status,
                        lanes::sched::view::JobStatus::Finished {
                            outcome: lanes::model::Outcome::Succeeded,
                            ..
                        }
                    ),
                    "round {round}: {} read after the Complete is {:?}",
                    info.id,
                    info.status
                ),
                other => panic!("round {round}: unexpected {other:?}"),
            }
        }
        assert!(submitted.count == 4);
    }
    server.stop().await;
}
