//! Authentication, roles and every limit of the server (`server::Limits`),
//! through the real server: what a client that breaks each one sees, and
//! that the server stays sound for everyone else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lanes::client::Client;
use lanes::model::{ErrorCode, JobId, JobOptions, JobSpec, RunSpec};
use lanes::protocol::{GetJob, Hello, Message, Role, PROTOCOL_VERSION};
use lanes::server::Limits;
use lanes_tests::{
    encode, one_job, queue_info, Options, Raw, Read, TestServer, ADMIN, AGENT, SUBMITTER,
};

fn with_limits(limits: Limits) -> Options {
    Options {
        limits,
        ..Options::default()
    }
}

fn payload_run(bytes: usize) -> RunSpec {
    RunSpec {
        jobs: vec![JobSpec {
            payload: vec![b'x'; bytes],
            ..JobSpec::default()
        }],
        ..RunSpec::default()
    }
}

/// The peak resident memory of this process (the server runs in it).
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::test]
async fn unknown_token_fails_the_connect_with_unauthenticated() {
    let server = TestServer::start().await;
    let error = match Client::connect(server.address(), b"not-a-token-of-this-server", "test").await
    {
        Ok(_) => panic!("an unknown token connected"),
        Err(error) => error,
    };
    assert_eq!(error.code(), Some(ErrorCode::Unauthenticated), "{error}");
    // Every configured token grants its role.
    for (token, role) in [
        (ADMIN, Role::Admin),
        (SUBMITTER, Role::Submitter),
        (AGENT, Role::Agent),
    ] {
        assert_eq!(server.client(token).await.role(), role);
    }
    server.stop().await;
}

#[tokio::test]
async fn wrong_protocol_version_is_refused_naming_the_versions_the_server_speaks() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.address()).await;
    raw.send(
        7,
        Hello {
            protocol_version: 99,
            token: ADMIN.to_vec(),
            client_name: "from-the-future".to_string(),
        },
    )
    .await
    .unwrap();
    let (request_id, error) = raw.error_then_close().await;
    assert_eq!(request_id, 7, "under the Hello's request id");
    assert_eq!(error.code, ErrorCode::Unsupported);
    assert!(
        error
            .message
            .contains("protocol version 99 is not supported")
            && error.message.contains(&format!(
                "speaks versions {PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
            )),
        "{}",
        error.message
    );
    server.stop().await;
}

#[tokio::test]
async fn a_request_before_hello_is_unauthenticated_and_closes() {
    let server = TestServer::start().await;
    let mut raw = Raw::connect(server.address()).await;
    raw.send(3, lanes::protocol::ListQueues).await.unwrap();
    let (request_id, error) = raw.error_then_close().await;
    assert_eq!((request_id, error.code), (3, ErrorCode::Unauthenticated));
    server.stop().await;
}

#[tokio::test]
async fn role_without_permission_is_permission_denied_and_changes_nothing() {
    let server = TestServer::start().await;
    let agent = server.client(AGENT).await;
    let error = agent
        .submit(one_job(JobOptions::default()))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::PermissionDenied), "{error}");
    let submitter = server.client(SUBMITTER).await;
    let error = submitter.pause_queue("default").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::PermissionDenied), "{error}");
    let error = submitter.take_work(1).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::PermissionDenied), "{error}");
    // Nothing changed, and both connections stay open.
    let default = queue_info(&submitter, "default").await;
    assert!(!default.config.paused);
    assert_eq!(default.submitted_total, 0);
    agent
        .register("worker", vec!["default".to_string()], vec![], 1, vec![])
        .await
        .unwrap();
    submitter
        .submit(one_job(JobOptions::default()))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn frame_before_the_handshake_over_4_kib_is_refused_from_its_length_alone() {
    let server = TestServer::start().await;
    let before = peak_resident_bytes();
    for declared in [4 << 10, u32::MAX - 4] {
        let mut raw = Raw::connect(server.address()).await;
        // Only the length field: the server must refuse without waiting
        // for (or making room for) the bytes it declares.
        raw.send_bytes(&declared.to_le_bytes()).await.unwrap();
        let (request_id, error) = raw.error_then_close().await;
        assert_eq!(request_id, 0);
        assert_eq!(error.code, ErrorCode::ResourceExhausted);
        assert!(
            error
                .message
                .contains(&format!("exceeds the limit of {} bytes", 4 << 10)),
            "{}",
            error.message
        );
    }
    if let (Some(before), Some(after)) = (before, peak_resident_bytes()) {
        assert!(
            after - before < 1 << 30,
            "the peak memory grew by {} bytes",
            after - before
        );
    }
    // The engine still serves.
    server.admin().await.queues().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn handshake_deadline_closes_a_connection_without_hello() {
    let server = TestServer::start_with(with_limits(Limits {
        handshake_timeout: Duration::from_millis(200),
        ..Limits::default()
    }))
    .await;
    // Silent, and a Hello trickled too slowly: both are cut at the deadline.
    let mut silent = Raw::connect(server.address()).await;
    let mut partial = Raw::connect(server.address()).await;
    let hello = encode(
        1,
        Hello {
            protocol_version: PROTOCOL_VERSION,
            token: ADMIN.to_vec(),
            client_name: "slow".to_string(),
        },
    );
    partial.send_bytes(&hello[..10]).await.unwrap();
    for raw in [&mut silent, &mut partial] {
        let (request_id, error) = raw.error_then_close().await;
        assert_eq!((request_id, error.code), (0, ErrorCode::Unauthenticated));
        assert!(error.message.contains("200 ms"), "{}", error.message);
    }
    server.stop().await;
}

#[tokio::test]
async fn partial_frame_idle_past_the_timeout_closes_the_connection() {
    let server = TestServer::start_with(with_limits(Limits {
        idle_frame_timeout: Duration::from_millis(200),
        ..Limits::default()
    }))
    .await;
    let mut raw = Raw::authenticated(server.address(), ADMIN).await;
    let frame = encode(2, lanes::protocol::ListQueues);
    raw.send_bytes(&frame[..10]).await.unwrap();
    let (request_id, error) = raw.error_then_close().await;
    assert_eq!(request_id, 0);
    assert!(
        error.message.contains("stayed incomplete for 200 ms"),
        "{}",
        error.message
    );
    // A connection idle between frames is not cut.
    let client = server.admin().await;
    let mut idle = Raw::authenticated(server.address(), ADMIN).await;
    // Wait for the failed one's own timeout again: the idle one is quiet.
    assert!(matches!(
        idle.read(Duration::from_millis(400)).await,
        Read::Quiet
    ));
    idle.send(3, lanes::protocol::ListQueues).await.unwrap();
    assert!(matches!(idle.frame().await.message, Message::QueueList(_)));
    client.queues().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn payload_over_the_limit_is_resource_exhausted_and_records_nothing() {
    let server = TestServer::start_with(with_limits(Limits {
        payload_bytes_max: 1024,
        ..Limits::default()
    }))
    .await;
    let submitter = server.client(SUBMITTER).await;
    let error = submitter.submit(payload_run(1025)).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::ResourceExhausted), "{error}");
    assert!(
        error.to_string().contains("over the limit of 1024"),
        "{error}"
    );
    assert_eq!(queue_info(&submitter, "default").await.submitted_total, 0);
    // At the limit it is accepted, as the first run.
    let submitted = submitter.submit(payload_run(1024)).await.unwrap();
    assert_eq!((submitted.run.0, submitted.first_job.0), (1, 1));
    server.stop().await;
}

#[tokio::test]
async fn frame_over_the_limit_after_the_handshake_closes_the_connection() {
    let server = TestServer::start_with(with_limits(Limits {
        frame_length_max: 64 << 10,
        ..Limits::default()
    }))
    .await;
    let mut raw = Raw::authenticated(server.address(), SUBMITTER).await;
    let big = encode(
        2,
        lanes::protocol::SubmitRun {
            spec: payload_run(100 << 10),
        },
    );
    // The body need not arrive: the length field is enough.
    raw.send_bytes(&big[..16]).await.unwrap();
    let (request_id, error) = raw.error_then_close().await;
    assert_eq!((request_id, error.code), (0, ErrorCode::ResourceExhausted));
    assert!(
        error.message.contains("exceeds the limit of 65536 bytes"),
        "{}",
        error.message
    );
    let submitter = server.client(SUBMITTER).await;
    assert_eq!(queue_info(&submitter, "default").await.submitted_total, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_bound_wait_and_are_all_answered_in_order() {
    let server = TestServer::start_with(with_limits(Limits {
        requests_in_flight_max: 4,
        ..Limits::default()
    }))
    .await;
    let submitter = server.client(SUBMITTER).await;
    // 200 submissions pipelined on one connection, none awaited yet.
    let mut answers = Vec::new();
    for _ in 0..200 {
        let message = Message::SubmitRun(lanes::protocol::SubmitRun {
            spec: one_job(JobOptions::default()),
        });
        answers.push(submitter.send(message).await.unwrap().1);
    }
    let mut jobs = Vec::new();
    for answer in answers {
        match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok(Message::Submitted(submitted))) => jobs.push(submitted.first_job),
            other => panic!("expected Submitted, got {other:?}"),
        }
    }
    // Applied in the order they were sent: ids count up.
    let expected: Vec<JobId> = (1..=200).map(JobId).collect();
    assert_eq!(jobs, expected);
    assert_eq!(queue_info(&submitter, "default").await.submitted_total, 200);
    server.stop().await;
}

#[tokio::test]
async fn output_cap_disconnects_a_client_that_does_not_read_and_others_carry_on() {
    let server = TestServer::start_with(with_limits(Limits {
        // 32 answers: met only once the socket buffers are full too, with
        // the server blocked writing to the peer (answers go one at a time,
        // so the writer never lags that far behind on its own).
        output_bytes_max: 8 << 20,
        requests_in_flight_max: 1,
        ..Limits::default()
    }))
    .await;
    let submitter = server.client(SUBMITTER).await;
    // Each answer about this job carries its 256 KiB payload.
    let job = submitter
        .submit(payload_run(256 << 10))
        .await
        .unwrap()
        .first_job;
    // Another client works all along.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let other = {
        let client = server.client(SUBMITTER).await;
        let (stop, calls) = (stop.clone(), calls.clone());
        tokio::spawn(async move {
            // Bounded: at most 100 000 calls.
            for _ in 0..100_000 {
                client.job(job).await.expect("the other client is served");
                calls.fetch_add(1, Ordering::Relaxed);
                if stop.load(Ordering::Acquire) {
                    break;
                }
            }
        })
    };
    let mut raw = Raw::authenticated(server.address(), SUBMITTER).await;
    let batch: Vec<u8> = (0..64u64)
        .flat_map(|i| encode(2 + i, GetJob { job }))
        .collect();
    // 64 requests a write, never reading, until the server cuts the
    // connection: writes fail only then (until then they wait for the
    // server to read). At most 100 000 writes (1.6 TiB of answers).
    let disconnected = tokio::time::timeout(Duration::from_secs(20), async {
        for _ in 0..100_000 {
            if raw.send_bytes(&batch).await.is_err() {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        disconnected,
        Ok(true),
        "the server must disconnect a client that does not read"
    );
    stop.store(true, Ordering::Release);
    other.await.unwrap();
    println!(
        "the other client made {} calls meanwhile",
        calls.load(Ordering::Relaxed)
    );
    // The engine still serves new and old connections.
    submitter.job(job).await.unwrap();
    server.client(SUBMITTER).await.job(job).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_maximum_wait_until_one_closes() {
    let server = TestServer::start_with(with_limits(Limits {
        connections_max: 2,
        ..Limits::default()
    }))
    .await;
    let first = server.admin().await;
    let second = server.admin().await;
    let mut third = Raw::connect(server.address()).await;
    third
        .send(
            1,
            Hello {
                protocol_version: PROTOCOL_VERSION,
                token: ADMIN.to_vec(),
                client_name: "third".to_string(),
            },
        )
        .await
        .unwrap();
    // Not served while two are open (a negative can only be shown by
    // waiting; the two served connections still answer meanwhile).
    assert!(matches!(
        third.read(Duration::from_millis(300)).await,
        Read::Quiet
    ));
    first.queues().await.unwrap();
    second.queues().await.unwrap();
    drop(first);
    assert!(matches!(third.frame().await.message, Message::HelloOk(_)));
    third.send(2, lanes::protocol::ListQueues).await.unwrap();
    assert!(matches!(third.frame().await.message, Message::QueueList(_)));
    second.queues().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn completions_over_the_limit_are_refused_whole() {
    let server = TestServer::start_with(with_limits(Limits {
        completions_per_request_max: 2,
        ..Limits::default()
    }))
    .await;
    let submitter = server.client(SUBMITTER).await;
    let first = submitter
        .submit(RunSpec {
            jobs: vec![JobSpec::default(); 3],
            ..RunSpec::default()
        })
        .await
        .unwrap();
    let agent = server.agent("limited", &["default"], &[], 3).await;
    agent.take_work(3).await.unwrap();
    let mut completions = Vec::new();
    for _ in 0..3 {
        let (job, attempt) = lanes_tests::next_dispatch(&agent).await;
        completions.push(lanes::protocol::Completion {
            job,
            attempt,
            report: lanes::model::Report::Succeeded,
            exit_code: 0,
        });
    }
    let error = agent.complete(completions.clone()).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::InvalidArgument), "{error}");
    assert!(
        error
            .to_string()
            .contains("3 completions in one Complete, over the limit of 2: none applied"),
        "{error}"
    );
    // None was applied: every job still runs; within the limit they are.
    for job in 0..3 {
        let info = submitter.job(JobId(first.first_job.0 + job)).await.unwrap();
        assert!(matches!(
            info.status,
            lanes::sched::view::JobStatus::Running { .. }
        ));
    }
    assert_eq!(
        agent.complete(completions[..2].to_vec()).await.unwrap(),
        vec![Ok(()), Ok(())]
    );
    server.stop().await;
}
