//! Watch: a job's or a run's state changes pushed as they become durable,
//! the last one marked, without polling.

use std::time::Duration;

use lanes::model::{ErrorCode, JobId, JobSpec, Outcome, Report, RunSpec};
use lanes::protocol::{Completion, JobUpdate, Message, WatchTarget};
use lanes::sched::view::JobStatus;
use lanes_tests::{next_dispatch, push_within, TestServer, SUBMITTER};

async fn next_update(client: &lanes::client::Client) -> JobUpdate {
    match push_within(client, Duration::from_secs(10))
        .await
        .map(|f| f.message)
    {
        Some(Message::JobUpdate(update)) => update,
        other => panic!("expected a job update, got {other:?}"),
    }
}

fn run_of(jobs: usize) -> RunSpec {
    RunSpec {
        jobs: vec![JobSpec::default(); jobs],
        ..RunSpec::default()
    }
}

#[tokio::test]
async fn watching_a_job_follows_it_to_its_end() {
    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let job = submitter.submit(run_of(1)).await.unwrap().first_job;
    submitter.watch(WatchTarget::Job(job)).await.unwrap();
    let first = next_update(&submitter).await;
    assert_eq!(
        (first.job, first.status, first.last),
        (job, JobStatus::Waiting, false)
    );
    let agent = server.agent("w", &["default"], &[], 1).await;
    agent.take_work(1).await.unwrap();
    let (dispatched, attempt) = next_dispatch(&agent).await;
    assert_eq!(dispatched, job);
    let running = next_update(&submitter).await;
    assert!(
        matches!(running.status, JobStatus::Running { .. })
            && running.attempt == 1
            && !running.last
    );
    agent
        .complete(vec![Completion {
            job,
            attempt,
            report: Report::Failed,
            exit_code: 3,
        }])
        .await
        .unwrap();
    let end = next_update(&submitter).await;
    assert!(end.last, "{end:?}");
    assert!(matches!(
        end.status,
        JobStatus::Finished {
            outcome: Outcome::Failed,
            exit_code: Some(3),
            ..
        }
    ));
    server.stop().await;
}

#[tokio::test]
async fn watching_a_run_follows_every_job_and_ends_with_the_last() {
    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let submitted = submitter.submit(run_of(2)).await.unwrap();
    submitter
        .watch(WatchTarget::Run(submitted.run))
        .await
        .unwrap();
    let jobs = [submitted.first_job, JobId(submitted.first_job.0 + 1)];
    for job in jobs {
        let update = next_update(&submitter).await;
        assert_eq!(
            (update.job, update.status, update.last),
            (job, JobStatus::Waiting, false)
        );
    }
    submitter.cancel_run(submitted.run).await.unwrap();
    let mut last_seen = false;
    for _ in 0..2 {
        let update = next_update(&submitter).await;
        assert!(matches!(
            update.status,
            JobStatus::Finished {
                outcome: Outcome::Cancelled,
                ..
            }
        ));
        last_seen = update.last;
    }
    assert!(
        last_seen,
        "the final update of a finished run is marked last"
    );
    server.stop().await;
}

#[tokio::test]
async fn watching_an_unknown_job_is_not_found_and_a_finished_one_ends_at_once() {
    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let error = submitter
        .watch(WatchTarget::Job(JobId(999)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound));
    let job = submitter.submit(run_of(1)).await.unwrap().first_job;
    submitter.cancel_job(job).await.unwrap();
    submitter.watch(WatchTarget::Job(job)).await.unwrap();
    let update = next_update(&submitter).await;
    assert!(
        update.last
            && matches!(
                update.status,
                JobStatus::Finished {
                    outcome: Outcome::Cancelled,
                    ..
                }
            )
    );
    server.stop().await;
}
