//! Every scheduling rule of docs/SEMANTICS.md that a user can observe over
//! the wire, through the real server and the typed client: one test per
//! rule, named after it. The rule tables themselves are tested against the
//! scheduler in engine/tests/rules.rs; these check that the server carries
//! each rule to the wire unchanged (orders, error codes, pushes, reasons).

use lanes::model::{
    ErrorCode, JobId, JobOptions, JobSpec, Outcome, QueueConfig, Report, RunSpec, StopReason,
    TagMatch, TagRule,
};
use lanes::protocol::Message;
use lanes::sched::view::{BlockReason, JobStatus};
use lanes_tests::{
    at_priority, complete, drain, in_queue, job_when, next_dispatch, next_dispatch_heartbeating,
    one_job, outcome, push_within, queue_info, run_of, Options, TestServer, SUBMITTER,
};

fn queue(name: &str, pools: &[&str]) -> QueueConfig {
    QueueConfig {
        pools: pools.iter().map(|p| p.to_string()).collect(),
        ..QueueConfig::new(name)
    }
}

fn tagged(key: &str, value: &str) -> JobOptions {
    JobOptions {
        tags: vec![(key.to_string(), value.to_string())],
        ..JobOptions::default()
    }
}

/// Waits for a `StopJob` push; panics on anything else.
async fn next_stop(agent: &lanes::client::Client) -> lanes::protocol::StopJob {
    match push_within(agent, std::time::Duration::from_secs(10))
        .await
        .map(|f| f.message)
    {
        Some(Message::StopJob(stop)) => stop,
        other => panic!("expected a stop request, got {other:?}"),
    }
}

#[tokio::test]
async fn routing_unknown_queue_is_not_found_and_records_nothing() {
    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let error = submitter
        .submit(one_job(in_queue("gpu")))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound));
    assert!(
        error.to_string().contains(r#"unknown queue "gpu""#),
        "{error}"
    );
    // No id was consumed: the next run is run 1, job 1.
    let first = submitter
        .submit(one_job(JobOptions::default()))
        .await
        .unwrap();
    assert_eq!((first.run.0, first.first_job.0), (1, 1));
    server.stop().await;
}

#[tokio::test]
async fn dispatch_queue_priority_before_job_priority_across_queues_sharing_a_pool() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    admin
        .put_queue(QueueConfig {
            priority: 10,
            ..queue("prod", &["shared"])
        })
        .await
        .unwrap();
    admin
        .put_queue(queue("batch", &["shared", "spare"]))
        .await
        .unwrap();
    let submitter = server.client(SUBMITTER).await;
    let batch_urgent = JobOptions {
        priority: Some(1000),
        ..in_queue("batch")
    };
    let b1 = submitter
        .submit(one_job(batch_urgent))
        .await
        .unwrap()
        .first_job;
    let b2 = submitter
        .submit(one_job(in_queue("batch")))
        .await
        .unwrap()
        .first_job;
    let p1 = submitter
        .submit(one_job(in_queue("prod")))
        .await
        .unwrap()
        .first_job;
    let p2 = submitter
        .submit(one_job(JobOptions {
            priority: Some(5),
            ..in_queue("prod")
        }))
        .await
        .unwrap()
        .first_job;
    let shared = server.agent("shared-1", &["shared"], &[], 1).await;
    // Every prod job before any batch job, even one at priority 1000.
    assert_eq!(drain(&shared, 4).await, vec![p2, p1, b1, b2]);
    // An agent only in `spare` never sees prod: batch comes first for it.
    let p3 = submitter
        .submit(one_job(in_queue("prod")))
        .await
        .unwrap()
        .first_job;
    let b3 = submitter
        .submit(one_job(in_queue("batch")))
        .await
        .unwrap()
        .first_job;
    let spare = server.agent("spare-1", &["spare"], &[], 1).await;
    assert_eq!(drain(&spare, 1).await, vec![b3]);
    assert_eq!(drain(&shared, 1).await, vec![p3]);
    server.stop().await;
}

#[tokio::test]
async fn dispatch_job_priority_then_run_position_then_upload_order() {
    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let r1 = submitter
        .submit(run_of(
            JobOptions::default(),
            vec![JobOptions::default(), JobOptions::default()],
        ))
        .await
        .unwrap();
    let r2 = submitter
        .submit(run_of(
            JobOptions::default(),
            vec![JobOptions::default(), at_priority(5)],
        ))
        .await
        .unwrap();
    // Appended later, it keeps its run's position: before every job of r2.
    let appended = submitter
        .append(
            r1.run,
            vec![JobSpec {
                payload: b"late".to_vec(),
                ..JobSpec::default()
            }],
        )
        .await
        .unwrap();
    assert!(!appended.replayed);
    let (j1, j2) = (r1.first_job, JobId(r1.first_job.0 + 1));
    let (j3, j4) = (r2.first_job, JobId(r2.first_job.0 + 1));
    let agent = server.agent("worker", &["default"], &[], 1).await;
    assert_eq!(
        drain(&agent, 5).await,
        vec![j4, j1, j2, appended.first_job, j3]
    );
    server.stop().await;
}

#[tokio::test]
async fn priority_change_moves_a_waiting_job_to_the_end_of_its_new_level() {
    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let mut jobs = Vec::new();
    for _ in 0..4 {
        jobs.push(
            submitter
                .submit(one_job(JobOptions::default()))
                .await
                .unwrap()
                .first_job,
        );
    }
    let [a, b, c, d] = jobs[..] else {
        unreachable!()
    };
    // Raised: c, then a, at the end of level 1 (a behind c though older).
    submitter.change_job_priority(c, 1).await.unwrap();
    submitter.change_job_priority(a, 1).await.unwrap();
    // Raised and lowered back: b is now behind d.
    submitter.change_job_priority(b, 1).await.unwrap();
    submitter.change_job_priority(b, 0).await.unwrap();
    let agent = server.agent("worker", &["default"], &[], 1).await;
    agent.take_work(1).await.unwrap();
    let (running, attempt) = next_dispatch(&agent).await;
    assert_eq!(running, c);
    // Only a waiting or held job's priority can change.
    let error = submitter.change_job_priority(c, 7).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::FailedPrecondition), "{error}");
    complete(&agent, c, attempt, Report::Succeeded).await;
    assert_eq!(drain(&agent, 3).await, vec![a, d, b]);
    server.stop().await;
}

#[tokio::test]
async fn priority_unsupported_queue_rejects_nonzero_priority_with_unsupported() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    admin
        .put_queue(QueueConfig {
            priority_supported: false,
            ..queue("cloud", &["default"])
        })
        .await
        .unwrap();
    let submitter = server.client(SUBMITTER).await;
    let error = submitter
        .submit(one_job(JobOptions {
            priority: Some(5),
            ..in_queue("cloud")
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unsupported), "{error}");
    // Priority 0 is accepted; changing it to non-zero is not.
    let job = submitter
        .submit(one_job(JobOptions {
            priority: Some(0),
            ..in_queue("cloud")
        }))
        .await
        .unwrap()
        .first_job;
    let error = submitter.change_job_priority(job, 3).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unsupported), "{error}");
    assert_eq!(queue_info(&submitter, "cloud").await.submitted_total, 1);
    server.stop().await;
}

#[tokio::test]
async fn depth_rejects_the_whole_submission_with_resource_exhausted() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    admin
        .put_queue(QueueConfig {
            depth: Some(3),
            ..queue("batch", &["default"])
        })
        .await
        .unwrap();
    let submitter = server.client(SUBMITTER).await;
    let two = || run_of(in_queue("batch"), vec![JobOptions::default(); 2]);
    let first = submitter.submit(two()).await.unwrap();
    let error = submitter.submit(two()).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted));
    assert!(
        error.to_string().contains(
            r#"queue "batch" is full: its depth limit is 3, it holds 2 jobs and the submission adds 2"#
        ),
        "{error}"
    );
    // Nothing recorded: the queue holds 2, and no id was consumed.
    let info = queue_info(&submitter, "batch").await;
    assert_eq!((info.waiting, info.submitted_total), (2, 2));
    let next = submitter
        .submit(run_of(in_queue("batch"), vec![JobOptions::default()]))
        .await
        .unwrap();
    assert_eq!(next.run.0, first.run.0 + 1);
    assert_eq!(next.first_job.0, first.first_job.0 + 2);
    server.stop().await;
}

#[tokio::test]
async fn action_concurrency_caps_the_running_jobs_of_a_queue() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    admin
        .put_queue(QueueConfig {
            action_concurrency: Some(2),
            ..queue("capped", &["default"])
        })
        .await
        .unwrap();
    let submitter = server.client(SUBMITTER).await;
    let run = submitter
        .submit(run_of(in_queue("capped"), vec![JobOptions::default(); 3]))
        .await
        .unwrap();
    let agent = server.agent("wide", &["default"], &[], 4).await;
    agent.take_work(3).await.unwrap();
    let (first, attempt) = next_dispatch(&agent).await;
    let _second = next_dispatch(&agent).await;
    let third = JobId(run.first_job.0 + 2);
    let explanation = submitter.explain(third).await.unwrap();
    assert_eq!(explanation.status, JobStatus::Waiting);
    assert_eq!(
        explanation.reasons,
        vec![BlockReason::QueueConcurrency {
            queue: "capped".to_string(),
            running: 2,
            limit: 2
        }]
    );
    // A slot of the queue frees: the third job goes under the standing request.
    complete(&agent, first, attempt, Report::Succeeded).await;
    assert_eq!(next_dispatch(&agent).await, (third, 1));
    server.stop().await;
}

#[tokio::test]
async fn run_concurrency_holds_new_runs_but_not_jobs_of_an_active_run() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    admin
        .put_queue(QueueConfig {
            run_concurrency: Some(1),
            ..queue("nightly", &["default"])
        })
        .await
        .unwrap();
    let submitter = server.client(SUBMITTER).await;
    let first = submitter
        .submit(run_of(in_queue("nightly"), vec![JobOptions::default(); 2]))
        .await
        .unwrap();
    let second = submitter
        .submit(run_of(in_queue("nightly"), vec![JobOptions::default()]))
        .await
        .unwrap();
    let agent = server.agent("wide", &["default"], &[], 4).await;
    agent.take_work(3).await.unwrap();
    // Both children of the active run fan out.
    let mut running = vec![next_dispatch(&agent).await, next_dispatch(&agent).await];
    running.sort();
    assert_eq!(
        running,
        vec![(first.first_job, 1), (JobId(first.first_job.0 + 1), 1)]
    );
    let held_back = vec![BlockReason::RunConcurrency {
        queue: "nightly".to_string(),
        active: 1,
        limit: 1,
    }];
    assert_eq!(
        submitter.explain(second.first_job).await.unwrap().reasons,
        held_back
    );
    // The first run stays active until its last job finishes.
    complete(&agent, running[0].0, 1, Report::Succeeded).await;
    let explanation = submitter.explain(second.first_job).await.unwrap();
    assert_eq!(explanation.status, JobStatus::Waiting);
    assert_eq!(explanation.reasons, held_back);
    complete(&agent, running[1].0, 1, Report::Succeeded).await;
    assert_eq!(next_dispatch(&agent).await, (second.first_job, 1));
    server.stop().await;
}

#[tokio::test]
async fn tag_rule_any_value_launches_a_c_then_b() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let rules = vec![TagRule {
        key: "team".to_string(),
        matches: TagMatch::AnyValue,
        limit: 1,
    }];
    admin.set_tag_rules(rules.clone()).await.unwrap();
    let listed = admin.call(lanes::protocol::ListTagRules).await.unwrap();
    assert_eq!(
        listed,
        Message::TagRuleList(lanes::protocol::TagRuleList { rules })
    );
    let submitter = server.client(SUBMITTER).await;
    let a = submitter
        .submit(one_job(tagged("team", "docs")))
        .await
        .unwrap();
    let b = submitter
        .submit(one_job(tagged("team", "docs")))
        .await
        .unwrap();
    let c = submitter
        .submit(one_job(JobOptions::default()))
        .await
        .unwrap();
    let agent = server.agent("wide", &["default"], &[], 4).await;
    agent.take_work(3).await.unwrap();
    assert_eq!(next_dispatch(&agent).await, (a.first_job, 1));
    assert_eq!(next_dispatch(&agent).await, (c.first_job, 1));
    let explanation = submitter.explain(b.first_job).await.unwrap();
    assert_eq!(
        explanation.reasons,
        vec![BlockReason::TagRule {
            key: "team".to_string(),
            value: None,
            running: 1,
            limit: 1
        }]
    );
    assert_eq!(explanation.reasons[0].to_string(), "tag rule team at 1/1");
    complete(&agent, a.first_job, 1, Report::Succeeded).await;
    assert_eq!(next_dispatch(&agent).await, (b.first_job, 1));
    server.stop().await;
}

#[tokio::test]
async fn pools_and_labels_agent_takes_only_jobs_it_fits() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    admin.put_queue(queue("gpu", &["gpu"])).await.unwrap();
    let submitter = server.client(SUBMITTER).await;
    let linux_only = JobOptions {
        labels: vec![("os".to_string(), "linux".to_string())],
        ..in_queue("gpu")
    };
    let gpu_job = submitter
        .submit(one_job(linux_only))
        .await
        .unwrap()
        .first_job;
    let cpu_job = submitter
        .submit(one_job(JobOptions::default()))
        .await
        .unwrap()
        .first_job;
    // Not in the gpu pool: it gets the default job only.
    let cpu = server.agent("cpu", &["default"], &[], 2).await;
    cpu.take_work(2).await.unwrap();
    assert_eq!(next_dispatch(&cpu).await, (cpu_job, 1));
    // In the pool, but without the label.
    let mac = server.agent("mac", &["gpu"], &[("os", "mac")], 1).await;
    mac.take_work(1).await.unwrap();
    let no_agent = BlockReason::NoAgent {
        pools: vec!["gpu".to_string()],
        labels: vec![("os".to_string(), "linux".to_string())],
    };
    let explanation = submitter.explain(gpu_job).await.unwrap();
    assert_eq!(explanation.reasons, vec![no_agent.clone()]);
    assert_eq!(
        no_agent.to_string(),
        "no agent in pools [gpu] with labels [os=linux]"
    );
    // Every required label, extra labels do not matter.
    let linux = server
        .agent("linux", &["gpu"], &[("os", "linux"), ("arch", "x86")], 1)
        .await;
    linux.take_work(1).await.unwrap();
    assert_eq!(next_dispatch(&linux).await, (gpu_job, 1));
    let agents = submitter.agents().await.unwrap();
    let running_of = |name: &str| {
        agents
            .iter()
            .find(|a| a.name == name)
            .map(|a| a.running.clone())
            .unwrap()
    };
    assert_eq!(running_of("cpu"), vec![cpu_job]);
    assert_eq!(running_of("mac"), vec![]);
    assert_eq!(running_of("linux"), vec![gpu_job]);
    server.stop().await;
}

#[tokio::test]
async fn wait_step_holds_later_jobs_until_earlier_jobs_succeed_and_a_failure_skips_them() {
    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let staged = |payload: &[u8]| RunSpec {
        defaults: JobOptions::default(),
        jobs: vec![
            JobSpec {
                payload: payload.to_vec(),
                ..JobSpec::default()
            },
            JobSpec {
                wait_before: true,
                payload: payload.to_vec(),
                ..JobSpec::default()
            },
        ],
        idempotency_key: None,
    };
    let good = submitter.submit(staged(b"good")).await.unwrap();
    let bad = submitter.submit(staged(b"bad")).await.unwrap();
    let (good_after, bad_after) = (JobId(good.first_job.0 + 1), JobId(bad.first_job.0 + 1));
    assert_eq!(
        submitter.explain(good_after).await.unwrap().reasons,
        vec![BlockReason::DependenciesPending { unfinished: 1 }]
    );
    let agent = server.agent("worker", &["default"], &[], 1).await;
    agent.take_work(1).await.unwrap();
    assert_eq!(next_dispatch(&agent).await, (good.first_job, 1));
    complete(&agent, good.first_job, 1, Report::Succeeded).await;
    // Released, with its run's (older) position: ahead of the bad run.
    assert_eq!(
        submitter.job(good_after).await.unwrap().status,
        JobStatus::Waiting
    );
    assert_eq!(drain(&agent, 1).await, vec![good_after]);
    agent.take_work(1).await.unwrap();
    assert_eq!(next_dispatch(&agent).await, (bad.first_job, 1));
    complete(&agent, bad.first_job, 1, Report::Failed).await;
    let skipped = submitter.job(bad_after).await.unwrap();
    assert_eq!(outcome(&skipped.status), Some(Outcome::Skipped));
    server.stop().await;
}

#[tokio::test]
async fn timeout_max_queued_time_ends_a_waiting_job_as_queue_timeout() {
    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    // No agent: it can only wait.
    let job = submitter
        .submit(one_job(JobOptions {
            max_queued_time_ms: Some(200),
            ..JobOptions::default()
        }))
        .await
        .unwrap()
        .first_job;
    let info = job_when(&submitter, job, |s| outcome(s).is_some()).await;
    assert_eq!(outcome(&info.status), Some(Outcome::QueueTimeout));
    assert_eq!(info.attempt, 0);
    server.stop().await;
}

#[tokio::test]
async fn timeout_deadline_ends_a_waiting_job_and_stops_a_running_one() {
    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let deadline = |ms| JobOptions {
        deadline_ms: Some(ms),
        ..JobOptions::default()
    };
    // The agent waits for work first, so the job is dispatched as it is
    // submitted, well before its deadline; the second one then waits.
    let agent = server.agent("worker", &["default"], &[], 1).await;
    agent.take_work(1).await.unwrap();
    let running = submitter
        .submit(one_job(deadline(300)))
        .await
        .unwrap()
        .first_job;
    assert_eq!(next_dispatch(&agent).await, (running, 1));
    let waiting = submitter
        .submit(one_job(deadline(300)))
        .await
        .unwrap()
        .first_job;
    let stop = next_stop(&agent).await;
    assert_eq!(
        (stop.job, stop.attempt, stop.reason),
        (running, 1, StopReason::DeadlineExceeded)
    );
    let waiting_info = job_when(&submitter, waiting, |s| outcome(s).is_some()).await;
    assert_eq!(
        outcome(&waiting_info.status),
        Some(Outcome::DeadlineExceeded)
    );
    assert_eq!(
        submitter.job(running).await.unwrap().status,
        JobStatus::Running {
            agent: lanes::model::AgentId(0),
            stopping: Some(StopReason::DeadlineExceeded)
        }
    );
    // Whatever the agent reports, the job ends with the stop's outcome.
    complete(&agent, running, 1, Report::Succeeded).await;
    let info = submitter.job(running).await.unwrap();
    assert_eq!(outcome(&info.status), Some(Outcome::DeadlineExceeded));
    server.stop().await;
}

#[tokio::test]
async fn lease_lost_when_an_agent_disconnects_the_job_runs_again_elsewhere() {
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
    let first = server.agent("first", &["default"], &[], 1).await;
    first.take_work(1).await.unwrap();
    assert_eq!(next_dispatch(&first).await, (job, 1));
    // The connection closes: the server records the disconnect, the lease
    // runs out, and the job waits again in its place.
    drop(first);
    let second = server.agent("second", &["default"], &[], 1).await;
    second.take_work(1).await.unwrap();
    let dispatch = next_dispatch_heartbeating(&second).await;
    assert_eq!((dispatch.job, dispatch.attempt), (job, 2));
    let agents = submitter.agents().await.unwrap();
    let first_info = agents.iter().find(|a| a.name == "first").unwrap();
    assert!(!first_info.present);
    assert!(first_info.running.is_empty());
    complete(&second, job, 2, Report::Succeeded).await;
    let info = submitter.job(job).await.unwrap();
    assert_eq!(outcome(&info.status), Some(Outcome::Succeeded));
    assert_eq!(info.attempt, 2);
    server.stop().await;
}

#[tokio::test]
async fn cancel_ends_a_waiting_job_at_once_and_stops_a_running_one() {
    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let running = submitter
        .submit(one_job(at_priority(1)))
        .await
        .unwrap()
        .first_job;
    let waiting = submitter
        .submit(one_job(JobOptions::default()))
        .await
        .unwrap()
        .first_job;
    let agent = server.agent("worker", &["default"], &[], 1).await;
    agent.take_work(1).await.unwrap();
    assert_eq!(next_dispatch(&agent).await, (running, 1));
    submitter.cancel_job(waiting).await.unwrap();
    let info = submitter.job(waiting).await.unwrap();
    assert_eq!(outcome(&info.status), Some(Outcome::Cancelled));
    submitter.cancel_job(running).await.unwrap();
    let stop = next_stop(&agent).await;
    assert_eq!(
        (stop.job, stop.attempt, stop.reason),
        (running, 1, StopReason::Cancelled)
    );
    // Still running (stopping) until the agent reports.
    assert!(matches!(
        submitter.job(running).await.unwrap().status,
        JobStatus::Running {
            stopping: Some(StopReason::Cancelled),
            ..
        }
    ));
    complete(&agent, running, 1, Report::Succeeded).await;
    let info = submitter.job(running).await.unwrap();
    assert_eq!(outcome(&info.status), Some(Outcome::Cancelled));
    // A finished job cannot be cancelled.
    let error = submitter.cancel_job(running).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::FailedPrecondition), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn pause_queue_accepts_submissions_and_dispatches_nothing_until_resumed() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    admin.pause_queue("default").await.unwrap();
    let submitter = server.client(SUBMITTER).await;
    let job = submitter
        .submit(one_job(JobOptions::default()))
        .await
        .unwrap()
        .first_job;
    let agent = server.agent("worker", &["default"], &[], 1).await;
    agent.take_work(1).await.unwrap();
    let explanation = submitter.explain(job).await.unwrap();
    assert_eq!(explanation.status, JobStatus::Waiting);
    assert_eq!(
        explanation.reasons,
        vec![BlockReason::QueuePaused {
            queue: "default".to_string()
        }]
    );
    admin.resume_queue("default").await.unwrap();
    assert_eq!(next_dispatch(&agent).await, (job, 1));
    server.stop().await;
}

#[tokio::test]
async fn explain_gives_every_reason_over_the_wire() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    admin
        .put_queue(QueueConfig {
            paused: true,
            ..queue("gpu", &["gpu"])
        })
        .await
        .unwrap();
    let submitter = server.client(SUBMITTER).await;
    let gpu_job = submitter
        .submit(one_job(JobOptions {
            labels: vec![("os".to_string(), "linux".to_string())],
            ..in_queue("gpu")
        }))
        .await
        .unwrap()
        .first_job;
    let explanation = submitter.explain(gpu_job).await.unwrap();
    assert_eq!(explanation.job, gpu_job);
    assert_eq!(explanation.queue, "gpu");
    assert_eq!(explanation.status, JobStatus::Waiting);
    assert_eq!(explanation.ahead, Some(0));
    let texts: Vec<String> = explanation.reasons.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        texts,
        vec![
            r#"queue "gpu" is paused"#,
            "no agent in pools [gpu] with labels [os=linux]"
        ]
    );
    // A busy agent: the jobs behind wait for its slot, counted in line.
    let agent = server.agent("worker", &["default"], &[], 1).await;
    let busy = submitter
        .submit(one_job(JobOptions::default()))
        .await
        .unwrap()
        .first_job;
    agent.take_work(1).await.unwrap();
    assert_eq!(next_dispatch(&agent).await, (busy, 1));
    let mut behind = Vec::new();
    for _ in 0..3 {
        behind.push(
            submitter
                .submit(one_job(JobOptions::default()))
                .await
                .unwrap()
                .first_job,
        );
    }
    let explanation = submitter.explain(behind[2]).await.unwrap();
    assert_eq!(explanation.ahead, Some(2));
    assert_eq!(explanation.reasons, vec![BlockReason::WaitingForSlot]);
    let running = submitter.explain(busy).await.unwrap();
    assert!(matches!(running.status, JobStatus::Running { .. }));
    assert!(running.reasons.is_empty());
    let error = submitter.explain(JobId(999)).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::NotFound));
    server.stop().await;
}

#[tokio::test]
async fn idempotency_key_replays_the_first_submission_and_creates_nothing() {
    let server = TestServer::start().await;
    let submitter = server.client(SUBMITTER).await;
    let keyed = |payload: &[u8]| RunSpec {
        idempotency_key: Some("deploy-42".to_string()),
        jobs: vec![
            JobSpec {
                payload: payload.to_vec(),
                ..JobSpec::default()
            };
            3
        ],
        ..RunSpec::default()
    };
    let first = submitter.submit(keyed(b"deploy")).await.unwrap();
    assert!(!first.replayed);
    let again = submitter.submit(keyed(b"deploy")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(
        (again.run, again.first_job, again.count),
        (first.run, first.first_job, first.count)
    );
    let info = queue_info(&submitter, "default").await;
    assert_eq!((info.submitted_total, info.waiting), (3, 3));
    // The same key for another request is refused, and claims nothing.
    let error = submitter.submit(keyed(b"other")).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::AlreadyExists), "{error}");
    let next = submitter
        .submit(one_job(JobOptions::default()))
        .await
        .unwrap();
    assert_eq!(next.run.0, first.run.0 + 1);
    assert_eq!(next.first_job.0, first.first_job.0 + 3);
    server.stop().await;
}

/// Retention: a finished run is forgotten with its jobs once the engine's
/// retention says so (here at once); asking for it is NOT_FOUND and says
/// "forgotten", its idempotency key still answers with the first ids, and
/// both hold after a restart (replay of the log).
#[tokio::test]
async fn retention_forgets_finished_runs_and_remembers_their_keys() {
    let options = || Options {
        retention: Some(lanes::sched::Retention {
            finished_ms: 60_000,
            finished_jobs: 0,
            keys: 100,
        }),
        ..Options::default()
    };
    let mut server = TestServer::start_with(options()).await;
    let submitter = server.client(SUBMITTER).await;
    let keyed = RunSpec {
        idempotency_key: Some("nightly-7".to_string()),
        ..one_job(JobOptions::default())
    };
    let first = submitter.submit(keyed.clone()).await.unwrap();
    let agent = server.agent("worker", &["default"], &[], 1).await;
    agent.take_work(1).await.unwrap();
    assert_eq!(next_dispatch(&agent).await, (first.first_job, 1));
    complete(&agent, first.first_job, 1, Report::Succeeded).await;
    // The engine's ticker forgets it within a tick or two.
    let mut error = None;
    for _ in 0..100 {
        match submitter.job(first.first_job).await {
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let error = error.expect("the finished job is forgotten within 2 s");
    assert_eq!(error.code(), Some(ErrorCode::NotFound), "{error}");
    assert!(error.to_string().contains("forgotten"), "{error}");
    drop((submitter, agent));
    for round in 0..2 {
        if round == 1 {
            server.restart(options()).await;
        }
        let submitter = server.client(SUBMITTER).await;
        let again = submitter.submit(keyed.clone()).await.unwrap();
        assert!(again.replayed);
        assert_eq!((again.run, again.first_job), (first.run, first.first_job));
        let error = submitter.run(first.run).await.unwrap_err();
        assert!(error.to_string().contains("forgotten"), "{error}");
        let never = submitter
            .job(JobId(first.first_job.0 + 1000))
            .await
            .unwrap_err();
        assert!(error.to_string() != never.to_string());
        assert!(never.to_string().contains("not found"), "{never}");
    }
    server.stop().await;
}
