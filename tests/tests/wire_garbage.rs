//! Garbage on the wire. First each kind of bad frame on its own, with the
//! answer docs/PROTOCOL.md gives it; then thousands of malformed,
//! truncated, oversized and random frames on many connections while a
//! well-behaved submitter and agent work: the server never panics, and the
//! good clients see no error and lose nothing.
//!
//! The flood is seeded: set `LANES_GARBAGE_SEED` to replay a printed seed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lanes::model::{ErrorCode, JobId, JobOptions, Outcome, QueueConfig, Report};
use lanes::protocol::{
    Frame, GetJob, Hello, Message, MessageType, HEADER_LENGTH, PROTOCOL_VERSION,
};
use lanes_tests::{
    complete, encode, in_queue, outcome, push_within, queue_info, run_of, Raw, TestServer, ADMIN,
    AGENT, SUBMITTER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A frame's bytes with any type, flags, request id and body.
fn frame_bytes(message_type: u16, flags: u16, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4 + HEADER_LENGTH + body.len());
    bytes.extend_from_slice(&((HEADER_LENGTH + body.len()) as u32).to_le_bytes());
    bytes.extend_from_slice(&message_type.to_le_bytes());
    bytes.extend_from_slice(&flags.to_le_bytes());
    bytes.extend_from_slice(&request_id.to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

async fn error_answer(raw: &mut Raw) -> (u64, lanes::protocol::ErrorAnswer) {
    match raw.frame().await {
        Frame {
            request_id,
            message: Message::Error(error),
        } => (request_id, error),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_body_is_answered_under_its_request_id_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut raw = Raw::authenticated(server.address(), ADMIN).await;
    // GetJob with a 3-byte job id: truncated.
    let truncated = frame_bytes(MessageType::GetJob as u16, 0, 5, &[1, 2, 3]);
    // GetJob with a byte too many.
    let trailing = frame_bytes(MessageType::GetJob as u16, 0, 6, &[0; 9]);
    // A flag set.
    let flagged = frame_bytes(MessageType::ListQueues as u16, 1, 7, &[]);
    // PauseQueue whose name is not UTF-8.
    let not_utf8 = frame_bytes(
        MessageType::PauseQueue as u16,
        0,
        8,
        &[2, 0, 0, 0, 0xff, 0xfe],
    );
    // A type no version defines.
    let unknown = frame_bytes(0x7777, 0, 9, &[1, 2, 3]);
    for bytes in [truncated, trailing, flagged, not_utf8, unknown] {
        raw.send_bytes(&bytes).await.unwrap();
    }
    let mut answers = Vec::new();
    for _ in 0..5 {
        let (request_id, error) = error_answer(&mut raw).await;
        assert!(
            error.message.starts_with("malformed frame"),
            "{}",
            error.message
        );
        answers.push((request_id, error.code));
    }
    answers.sort_by_key(|(id, _)| *id);
    assert_eq!(
        answers,
        vec![
            (5, ErrorCode::InvalidArgument),
            (6, ErrorCode::InvalidArgument),
            (7, ErrorCode::InvalidArgument),
            (8, ErrorCode::InvalidArgument),
            (9, ErrorCode::Unsupported),
        ]
    );
    // Framing is intact: the connection still serves, and nothing changed.
    raw.send(10, lanes::protocol::ListQueues).await.unwrap();
    match raw.frame().await {
        Frame {
            request_id: 10,
            message: Message::QueueList(list),
        } => assert!(list.queues.iter().all(|q| !q.config.paused)),
        other => panic!("expected the queue list, got {other:?}"),
    }
    server.stop().await;
}

/// docs/PROTOCOL.md, "Requests, answers and pipelining": an id still in
/// flight (a `Watch` not yet over, the standing `TakeWork`) may not be
/// reused; the reuse is refused under id 0, changes nothing, and closes the
/// connection. An answered id, or a `TakeWork` replaced by a newer one, is
/// free again.
#[tokio::test]
async fn a_request_id_still_in_flight_is_refused_and_changes_nothing() {
    let server = TestServer::start().await;
    let admin = server.admin().await;
    let job = admin
        .submit(lanes_tests::one_job(JobOptions::default()))
        .await
        .expect("submit")
        .first_job;
    let refused = |error: &lanes::protocol::ErrorAnswer, id: u64| {
        assert_eq!(error.code, ErrorCode::InvalidArgument, "{error:?}");
        assert!(
            error
                .message
                .contains(&format!("request id {id} is already in flight")),
            "{}",
            error.message
        );
    };

    // A watch not yet over: the job waits for an agent.
    let mut raw = Raw::authenticated(server.address(), ADMIN).await;
    let watch = lanes::protocol::Watch {
        target: lanes::protocol::WatchTarget::Job(job),
    };
    raw.send(5, watch).await.expect("send");
    assert!(matches!(raw.frame().await.message, Message::Done(_)));
    assert!(matches!(raw.frame().await.message, Message::JobUpdate(u) if !u.last));
    raw.send(5, lanes::protocol::CancelJob { job })
        .await
        .expect("send");
    let (request_id, error) = raw.error_then_close().await;
    assert_eq!(request_id, 0);
    refused(&error, 5);
    let status = admin.job(job).await.expect("get job").status;
    assert_eq!(outcome(&status), None, "the refused cancel changed nothing");

    // The standing TakeWork, until a newer one replaces it.
    let mut raw = Raw::authenticated(server.address(), AGENT).await;
    let register = lanes::protocol::Register {
        name: "agent-1".to_string(),
        pools: vec!["default".to_string()],
        labels: vec![],
        slots: 1,
        running: vec![],
    };
    raw.send(2, register).await.expect("send");
    assert!(matches!(raw.frame().await.message, Message::Registered(_)));
    raw.send(3, lanes::protocol::TakeWork { count: 1 })
        .await
        .expect("send");
    assert!(matches!(raw.frame().await.message, Message::Done(_)));
    assert!(matches!(raw.frame().await.message, Message::Dispatch(d) if d.job == job));
    raw.send(4, lanes::protocol::TakeWork { count: 1 })
        .await
        .expect("send");
    assert!(matches!(raw.frame().await.message, Message::Done(_)));
    // 3 is free again; so is 6 once answered.
    for id in [3, 6, 6] {
        raw.send(id, lanes::protocol::Heartbeat)
            .await
            .expect("send");
        let answer = raw.frame().await;
        assert_eq!(answer.request_id, id);
        assert!(matches!(answer.message, Message::Done(_)), "{answer:?}");
    }
    raw.send(4, lanes::protocol::Heartbeat).await.expect("send");
    let (request_id, error) = raw.error_then_close().await;
    assert_eq!(request_id, 0);
    refused(&error, 4);
    server.stop().await;
}

#[tokio::test]
async fn broken_framing_closes_the_connection_with_an_error_under_id_zero() {
    let server = TestServer::start().await;
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        (
            "a length below the header",
            5u32.to_le_bytes().to_vec(),
            ErrorCode::InvalidArgument,
        ),
        (
            "a type only servers send",
            encode(
                4,
                lanes::protocol::Submitted {
                    run: lanes::model::RunId(1),
                    first_job: JobId(1),
                    count: 1,
                    replayed: false,
                },
            ),
            ErrorCode::Unsupported,
        ),
        (
            "request id 0",
            encode(0, lanes::protocol::ListQueues),
            ErrorCode::InvalidArgument,
        ),
    ];
    for (case, bytes, code) in cases {
        let mut raw = Raw::authenticated(server.address(), ADMIN).await;
        raw.send_bytes(&bytes).await.unwrap();
        let (request_id, error) = raw.error_then_close().await;
        assert_eq!(
            (request_id, error.code),
            (0, code),
            "{case}: {}",
            error.message
        );
    }
    server.admin().await.queues().await.unwrap();
    server.stop().await;
}

/// SplitMix64: a small seeded generator, so a failure replays from its seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, length: usize) -> Vec<u8> {
        (0..length).map(|_| self.next() as u8).collect()
    }

    /// Fewer than `length_max` random bytes.
    fn bytes_below(&mut self, length_max: u64) -> Vec<u8> {
        let length = self.below(length_max) as usize;
        self.bytes(length)
    }
}

/// Garbage connections at once.
const GARBAGE_CONNECTIONS: u64 = 20;
/// Frames each of them sends, over as many connections as it takes.
const FRAMES_PER_CONNECTION: usize = 200;
/// Runs the good submitter submits meanwhile.
const GOOD_RUNS: usize = 150;

/// One garbage frame, and whether to close the connection after it.
fn garbage(random: &mut Random) -> (Vec<u8>, bool) {
    let client_types: Vec<u16> = MessageType::ALL
        .iter()
        .filter(|t| t.sender() == lanes::protocol::message::Sender::Client)
        .map(|t| *t as u16)
        .collect();
    let server_types: Vec<u16> = MessageType::ALL
        .iter()
        .filter(|t| t.sender() == lanes::protocol::message::Sender::Server)
        .map(|t| *t as u16)
        .collect();
    let request_id = 1 + random.below(1 << 20);
    match random.below(9) {
        // Random bytes.
        0 => {
            let length = 1 + random.below(64) as usize;
            (random.bytes(length), false)
        }
        // A sound header of a client type, a random body.
        1 | 2 => {
            let message_type = client_types[random.below(client_types.len() as u64) as usize];
            let body = random.bytes_below(48);
            (frame_bytes(message_type, 0, request_id, &body), false)
        }
        // A sound header of an unknown type.
        3 => {
            let body = random.bytes_below(16);
            (
                frame_bytes(0x0500 + random.below(0xff) as u16, 0, request_id, &body),
                false,
            )
        }
        // A server's type.
        4 => {
            let message_type = server_types[random.below(server_types.len() as u64) as usize];
            let body = random.bytes_below(32);
            (frame_bytes(message_type, 0, request_id, &body), false)
        }
        // A length below the header, or far over any limit.
        5 => {
            let length = if random.below(2) == 0 {
                random.below(HEADER_LENGTH as u64) as u32
            } else {
                (16 << 20) + random.below(u64::from(u32::MAX - (16 << 20))) as u32
            };
            (length.to_le_bytes().to_vec(), false)
        }
        // A valid read of a job no one has, one byte flipped (never the
        // length field). Job ids have high bits set, so no flip of one bit
        // names a real job, whatever the type becomes.
        6 => {
            let job = JobId(random.next() | (0xffff << 40));
            let mut bytes = encode(request_id, GetJob { job });
            let at = 4 + random.below((bytes.len() - 4) as u64) as usize;
            bytes[at] ^= 1 << random.below(8);
            (bytes, false)
        }
        // A valid frame cut short, then the connection closed.
        7 => {
            let job = JobId(random.next() | (0xffff << 40));
            let bytes = encode(request_id, GetJob { job });
            let cut = random.below(bytes.len() as u64) as usize;
            (bytes[..cut].to_vec(), true)
        }
        // A Hello again, or with a wrong version or token.
        _ => {
            let hello = Hello {
                protocol_version: if random.below(2) == 0 {
                    PROTOCOL_VERSION
                } else {
                    random.next() as u16
                },
                token: if random.below(2) == 0 {
                    AGENT.to_vec()
                } else {
                    random.bytes(20)
                },
                client_name: "garbage".to_string(),
            };
            (encode(request_id, hello), false)
        }
    }
}

/// Sends [`FRAMES_PER_CONNECTION`] garbage frames, reconnecting whenever
/// the server closes the connection (or the frame says to). Returns the
/// number of connections used.
async fn flood(address: std::net::SocketAddr, seed: u64) -> usize {
    let mut random = Random(seed);
    let mut sent = 0;
    let mut connections = 0;
    // Every connection sends at least one frame: bounded by the frames.
    while sent < FRAMES_PER_CONNECTION {
        connections += 1;
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let closed = Arc::new(AtomicBool::new(false));
        // Reads and drops every answer, so the output cap never applies.
        let draining = {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut chunk = vec![0u8; 64 << 10];
                while let Ok(n) = reader.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
                closed.store(true, Ordering::Release);
            })
        };
        // Half the connections authenticate first (as an agent or a
        // submitter: roles that cannot touch the good clients' queue).
        if random.below(2) == 0 {
            let token = if random.below(2) == 0 {
                AGENT
            } else {
                SUBMITTER
            };
            let hello = encode(
                1,
                Hello {
                    protocol_version: PROTOCOL_VERSION,
                    token: token.to_vec(),
                    client_name: "garbage".to_string(),
                },
            );
            let _ = writer.write_all(&hello).await;
        }
        let frames = 1 + random.below(40);
        for _ in 0..frames {
            if sent == FRAMES_PER_CONNECTION || closed.load(Ordering::Acquire) {
                break;
            }
            let (bytes, close_after) = garbage(&mut random);
            sent += 1;
            if writer.write_all(&bytes).await.is_err() || close_after {
                break;
            }
        }
        drop(writer);
        // The server closes its side once it sees ours closed.
        if tokio::time::timeout(Duration::from_secs(10), draining)
            .await
            .is_err()
        {
            panic!("the server kept a closed connection open (seed {seed})");
        }
    }
    connections
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_many_connections_never_hurts_the_good_clients() {
    let seed: u64 = std::env::var("LANES_GARBAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1a2e5);
    println!("garbage seed: {seed} (replay with LANES_GARBAGE_SEED={seed})");
    // Any panic anywhere in the process (server tasks included) is counted.
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let server = TestServer::start().await;
    let admin = server.admin().await;
    admin
        .put_queue(QueueConfig {
            pools: vec!["good-pool".to_string()],
            ..QueueConfig::new("good")
        })
        .await
        .unwrap();
    let submitter = server.client(SUBMITTER).await;
    let agent = server.agent("good-agent", &["good-pool"], &[], 4).await;

    let floods: Vec<_> = (0..GARBAGE_CONNECTIONS)
        .map(|i| tokio::spawn(flood(server.address(), seed.wrapping_add(i))))
        .collect();

    // The good submitter: runs of 1 to 3 jobs, all acknowledged.
    let submitting = tokio::spawn(async move {
        let mut random = Random(seed ^ 0x5eed);
        let mut submitted = Vec::new();
        for _ in 0..GOOD_RUNS {
            let jobs = 1 + random.below(3) as usize;
            let spec = run_of(in_queue("good"), vec![JobOptions::default(); jobs]);
            let answer = submitter.submit(spec).await.expect("a good submission");
            assert_eq!(answer.count as usize, jobs);
            submitted.extend((0..answer.count).map(|i| JobId(answer.first_job.0 + u64::from(i))));
        }
        (submitter, submitted)
    });

    // The good agent completes whatever it is given, until the floods and
    // the submitter are done and nothing is left.
    let mut completed = Vec::new();
    agent.take_work(4).await.unwrap();
    let mut connections = 0;
    let mut floods = floods;
    let mut submitting = Some(submitting);
    let mut submitted = None;
    // Bounded: at most 60 s of rounds of at most 50 ms.
    for _ in 0..1_200 {
        match push_within(&agent, Duration::from_millis(50))
            .await
            .map(|f| f.message)
        {
            Some(Message::Dispatch(dispatch)) => {
                assert_eq!(dispatch.attempt, 1);
                complete(&agent, dispatch.job, 1, Report::Succeeded).await;
                completed.push(dispatch.job);
                agent.take_work(4).await.unwrap();
                continue;
            }
            Some(other) => panic!("the good agent got {other:?}"),
            None => {}
        }
        if submitting.as_ref().is_some_and(|s| s.is_finished()) {
            submitted = Some(submitting.take().unwrap().await.unwrap());
        }
        let mut still = Vec::new();
        for task in floods {
            if task.is_finished() {
                connections += task.await.unwrap();
            } else {
                still.push(task);
            }
        }
        floods = still;
        if floods.is_empty()
            && submitted
                .as_ref()
                .is_some_and(|(_, jobs)| jobs.len() == completed.len())
        {
            break;
        }
    }
    assert!(floods.is_empty(), "the floods did not end (seed {seed})");
    let (submitter, submitted) = submitted.expect("the submitter finished");
    println!(
        "{} garbage frames on {connections} connections; {} good jobs",
        GARBAGE_CONNECTIONS as usize * FRAMES_PER_CONNECTION,
        submitted.len()
    );

    // Nothing lost, nothing twice.
    let submitted_set: BTreeSet<JobId> = submitted.iter().copied().collect();
    let completed_set: BTreeSet<JobId> = completed.iter().copied().collect();
    assert_eq!(submitted_set.len(), submitted.len());
    assert_eq!(
        completed_set.len(),
        completed.len(),
        "a job completed twice"
    );
    assert_eq!(completed_set, submitted_set, "seed {seed}");
    for &job in &submitted {
        let info = submitter.job(job).await.unwrap();
        assert_eq!(outcome(&info.status), Some(Outcome::Succeeded), "{job}");
    }
    let good = queue_info(&submitter, "good").await;
    let total = submitted.len() as u64;
    assert_eq!(
        (
            good.submitted_total,
            good.dispatched_total,
            good.finished_total
        ),
        (total, total, total)
    );
    // The engine still answers new connections, and nothing panicked.
    server.admin().await.queues().await.unwrap();
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "seed {seed}");
    drop((admin, agent, submitter));
    server.stop().await;
}
