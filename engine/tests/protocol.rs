//! The wire protocol against its specification and against hostile bytes.
//!
//! `samples()` holds one or more frames of every message type. Each is
//! checked to round-trip, to be a test vector in docs/PROTOCOL.md with
//! exactly the bytes the code makes (so the document cannot drift from the
//! code), and to fail cleanly when truncated, padded, oversized or mutated.
//! A counting allocator proves that declared lengths are not trusted.
//!
//! To update the vectors after a deliberate format change, run with
//! `LANES_BLESS_VECTORS=1`: every ```` ```hex vector:NAME ```` block in the
//! document is rewritten from the code, and a missing one is printed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

use lanes::model::{
    AgentId, ErrorCode, JobId, JobOptions, JobSpec, Outcome, QueueConfig, Report, RunId, RunSpec,
    StopReason, TagMatch, TagRule,
};
use lanes::protocol::{
    annotate, AgentInfo, AgentList, AppendJobs, CancelJob, CancelRun, ChangeJobPriority,
    ChangeRunPriority, Check, Complete, CompleteResults, Completion, DecodeError, Dispatch, Done,
    ErrorAnswer, ExplainJob, Frame, GetJob, GetRun, Heartbeat, Hello, HelloOk, JobInfo, JobUpdate,
    ListAgents, ListQueues, ListTagRules, MessageType, PauseQueue, PutQueue, QueueInfo, QueueList,
    Register, Registered, ResumeQueue, Role, RunInfo, SetTagRules, StopJob, SubmitRun, Submitted,
    TagRuleList, TakeWork, Watch, WatchTarget, CONNECTION_REQUEST_ID, HEADER_LENGTH,
    PROTOCOL_VERSION,
};
use lanes::sched::view::{BlockReason, Explanation, JobStatus};
use proptest::prelude::*;

/// A frame limit no sample comes near.
const FRAME_LENGTH_MAX: usize = 1 << 20;
const PROTOCOL_MD: &str = include_str!("../../docs/PROTOCOL.md");
const PROTOCOL_MD_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");

// ---- samples ----------------------------------------------------------------

fn pair(key: &str, value: &str) -> (String, String) {
    (key.to_string(), value.to_string())
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

/// Every test vector, by name. A name is the message type, optionally
/// followed by `.` and what distinguishes this sample.
fn samples() -> Vec<(&'static str, Frame)> {
    let ci_queue = QueueConfig {
        name: "ci".to_string(),
        priority: 0,
        pools: strings(&["default"]),
        action_concurrency: None,
        run_concurrency: Some(2),
        depth: None,
        priority_supported: true,
        paused: false,
    };
    let gpu_queue = QueueConfig {
        name: "gpu".to_string(),
        priority: 10,
        pools: strings(&["gpu-a", "gpu-b"]),
        action_concurrency: Some(4),
        run_concurrency: None,
        depth: Some(1000),
        priority_supported: false,
        paused: true,
    };
    let rules = vec![
        TagRule {
            key: "team".to_string(),
            matches: TagMatch::AnyValue,
            limit: 1,
        },
        TagRule {
            key: "db".to_string(),
            matches: TagMatch::Value("main".to_string()),
            limit: 2,
        },
        TagRule {
            key: "tenant".to_string(),
            matches: TagMatch::EachValue,
            limit: 3,
        },
    ];
    let job_info = JobInfo {
        id: JobId(3),
        run: RunId(1),
        queue: "ci".to_string(),
        priority: 5,
        own_priority: false,
        position: 12,
        upload: 0,
        stage: 0,
        status: JobStatus::Running {
            agent: AgentId(0),
            stopping: None,
        },
        attempt: 1,
        max_attempts: 2,
        tags: vec![pair("team", "docs")],
        labels: Vec::new(),
        submitted_at: 1_700_000_000_000,
        waiting_since: 1_700_000_000_000,
        max_queued_time_ms: Some(60_000),
        deadline_at: None,
        payload: b"make test".to_vec(),
    };
    vec![
        (
            "Hello",
            Frame::new(
                1,
                Hello {
                    protocol_version: PROTOCOL_VERSION,
                    token: b"s3cret".to_vec(),
                    client_name: "agent-7".to_string(),
                },
            ),
        ),
        (
            "HelloOk",
            Frame::new(
                1,
                HelloOk {
                    protocol_version: PROTOCOL_VERSION,
                    server_version: "lanes 0.1.0".to_string(),
                    role: Role::Agent,
                },
            ),
        ),
        (
            "SubmitRun",
            Frame::new(
                2,
                SubmitRun {
                    spec: RunSpec {
                        defaults: JobOptions {
                            queue: Some("ci".to_string()),
                            priority: Some(5),
                            tags: vec![pair("team", "docs")],
                            labels: Vec::new(),
                            max_queued_time_ms: Some(60_000),
                            deadline_ms: None,
                            max_attempts: Some(2),
                        },
                        jobs: vec![
                            JobSpec {
                                options: JobOptions::default(),
                                wait_before: false,
                                payload: b"make test".to_vec(),
                            },
                            JobSpec {
                                options: JobOptions {
                                    priority: Some(-1),
                                    labels: vec![pair("os", "linux")],
                                    deadline_ms: Some(3_600_000),
                                    ..JobOptions::default()
                                },
                                wait_before: true,
                                payload: b"deploy".to_vec(),
                            },
                        ],
                        idempotency_key: Some("build-42".to_string()),
                    },
                },
            ),
        ),
        (
            "SubmitRun.minimal",
            Frame::new(
                2,
                SubmitRun {
                    spec: RunSpec {
                        defaults: JobOptions::default(),
                        jobs: vec![JobSpec::default()],
                        idempotency_key: None,
                    },
                },
            ),
        ),
        (
            "AppendJobs",
            Frame::new(
                3,
                AppendJobs {
                    run: RunId(1),
                    jobs: vec![JobSpec {
                        options: JobOptions::default(),
                        wait_before: false,
                        payload: b"lint".to_vec(),
                    }],
                },
            ),
        ),
        (
            "ChangeJobPriority",
            Frame::new(
                4,
                ChangeJobPriority {
                    job: JobId(3),
                    priority: 10,
                },
            ),
        ),
        (
            "ChangeRunPriority",
            Frame::new(
                5,
                ChangeRunPriority {
                    run: RunId(1),
                    priority: -5,
                },
            ),
        ),
        ("CancelJob", Frame::new(6, CancelJob { job: JobId(3) })),
        ("CancelRun", Frame::new(7, CancelRun { run: RunId(1) })),
        ("GetJob", Frame::new(8, GetJob { job: JobId(3) })),
        ("GetRun", Frame::new(9, GetRun { run: RunId(1) })),
        ("ExplainJob", Frame::new(10, ExplainJob { job: JobId(3) })),
        ("ListQueues", Frame::new(11, ListQueues)),
        (
            "PauseQueue",
            Frame::new(
                12,
                PauseQueue {
                    queue: "ci".to_string(),
                },
            ),
        ),
        (
            "ResumeQueue",
            Frame::new(
                13,
                ResumeQueue {
                    queue: "ci".to_string(),
                },
            ),
        ),
        (
            "PutQueue",
            Frame::new(
                14,
                PutQueue {
                    config: gpu_queue.clone(),
                },
            ),
        ),
        (
            "SetTagRules",
            Frame::new(
                15,
                SetTagRules {
                    rules: rules.clone(),
                },
            ),
        ),
        ("ListTagRules", Frame::new(16, ListTagRules)),
        ("ListAgents", Frame::new(17, ListAgents)),
        (
            "Watch.job",
            Frame::new(
                18,
                Watch {
                    target: WatchTarget::Job(JobId(3)),
                },
            ),
        ),
        (
            "Watch.run",
            Frame::new(
                19,
                Watch {
                    target: WatchTarget::Run(RunId(1)),
                },
            ),
        ),
        (
            "Register",
            Frame::new(
                2,
                Register {
                    name: "agent-7".to_string(),
                    pools: strings(&["default", "gpu-a"]),
                    labels: vec![pair("os", "linux")],
                    slots: 4,
                    running: vec![(JobId(3), 1)],
                },
            ),
        ),
        ("TakeWork", Frame::new(3, TakeWork { count: 4 })),
        ("Heartbeat", Frame::new(4, Heartbeat)),
        (
            "Complete",
            Frame::new(
                5,
                Complete {
                    completions: vec![
                        Completion {
                            job: JobId(3),
                            attempt: 1,
                            report: Report::Succeeded,
                            exit_code: 0,
                        },
                        Completion {
                            job: JobId(4),
                            attempt: 1,
                            report: Report::Failed,
                            exit_code: -9,
                        },
                    ],
                },
            ),
        ),
        (
            "Error",
            Frame::new(8, ErrorAnswer::new(ErrorCode::NotFound, "job 99 not found")),
        ),
        (
            "Error.connection",
            Frame::new(
                CONNECTION_REQUEST_ID,
                ErrorAnswer::new(
                    ErrorCode::Unauthenticated,
                    "handshake not completed within 5000 ms",
                ),
            ),
        ),
        ("Done", Frame::new(6, Done)),
        (
            "Submitted",
            Frame::new(
                2,
                Submitted {
                    run: RunId(1),
                    first_job: JobId(3),
                    count: 2,
                    replayed: false,
                },
            ),
        ),
        (
            "Registered",
            Frame::new(2, Registered { agent: AgentId(0) }),
        ),
        ("JobInfo", Frame::new(8, job_info)),
        (
            "RunInfo",
            Frame::new(
                9,
                RunInfo {
                    id: RunId(1),
                    queue: "ci".to_string(),
                    priority: 5,
                    position: 12,
                    submitted_at: 1_700_000_000_000,
                    jobs: vec![JobId(3), JobId(4)],
                    unfinished: 1,
                    active: true,
                    failed: false,
                },
            ),
        ),
        (
            "Explanation",
            Frame::new(
                10,
                Explanation {
                    job: JobId(4),
                    status: JobStatus::Waiting,
                    queue: "gpu".to_string(),
                    ahead: Some(2),
                    reasons: vec![
                        BlockReason::QueuePaused {
                            queue: "gpu".to_string(),
                        },
                        BlockReason::QueueConcurrency {
                            queue: "gpu".to_string(),
                            running: 4,
                            limit: 4,
                        },
                        BlockReason::RunConcurrency {
                            queue: "ci".to_string(),
                            active: 2,
                            limit: 2,
                        },
                        BlockReason::TagRule {
                            key: "db".to_string(),
                            value: Some("main".to_string()),
                            running: 2,
                            limit: 2,
                        },
                        BlockReason::NoAgent {
                            pools: strings(&["gpu-a"]),
                            labels: vec![pair("os", "linux")],
                        },
                    ],
                },
            ),
        ),
        (
            "Explanation.held",
            Frame::new(
                10,
                Explanation {
                    job: JobId(4),
                    status: JobStatus::Held,
                    queue: "ci".to_string(),
                    ahead: None,
                    reasons: vec![BlockReason::DependenciesPending { unfinished: 1 }],
                },
            ),
        ),
        (
            "Explanation.slot",
            Frame::new(
                10,
                Explanation {
                    job: JobId(4),
                    status: JobStatus::Waiting,
                    queue: "ci".to_string(),
                    ahead: Some(0),
                    reasons: vec![BlockReason::WaitingForSlot],
                },
            ),
        ),
        (
            "QueueList",
            Frame::new(
                11,
                QueueList {
                    queues: vec![
                        QueueInfo {
                            config: ci_queue,
                            waiting: 1,
                            running: 1,
                            held: 1,
                            active_runs: 1,
                            submitted_total: 3,
                            dispatched_total: 1,
                            finished_total: 0,
                        },
                        QueueInfo {
                            config: gpu_queue,
                            waiting: 0,
                            running: 0,
                            held: 0,
                            active_runs: 0,
                            submitted_total: 0,
                            dispatched_total: 0,
                            finished_total: 0,
                        },
                    ],
                },
            ),
        ),
        (
            "AgentList",
            Frame::new(
                17,
                AgentList {
                    agents: vec![AgentInfo {
                        id: AgentId(0),
                        name: "agent-7".to_string(),
                        pools: strings(&["default", "gpu-a"]),
                        labels: vec![pair("os", "linux")],
                        slots: 4,
                        running: vec![JobId(3)],
                        requested: 3,
                        present: true,
                        lease_until: 1_700_000_030_000,
                    }],
                },
            ),
        ),
        ("TagRuleList", Frame::new(16, TagRuleList { rules })),
        (
            "CompleteResults",
            Frame::new(
                5,
                CompleteResults {
                    results: vec![
                        Ok(()),
                        Err(ErrorAnswer::new(
                            ErrorCode::FailedPrecondition,
                            "job 4 attempt 1 is stale: the job is on attempt 2",
                        )),
                    ],
                },
            ),
        ),
        (
            "Dispatch",
            Frame::new(
                3,
                Dispatch {
                    job: JobId(3),
                    run: RunId(1),
                    attempt: 1,
                    queue: "ci".to_string(),
                    priority: 5,
                    tags: vec![pair("team", "docs")],
                    payload: b"make test".to_vec(),
                },
            ),
        ),
        (
            "StopJob",
            Frame::new(
                2,
                StopJob {
                    job: JobId(3),
                    attempt: 1,
                    reason: StopReason::Cancelled,
                },
            ),
        ),
        (
            "JobUpdate",
            Frame::new(
                18,
                JobUpdate {
                    job: JobId(3),
                    run: RunId(1),
                    attempt: 1,
                    status: JobStatus::Running {
                        agent: AgentId(0),
                        stopping: Some(StopReason::DeadlineExceeded),
                    },
                    last: false,
                },
            ),
        ),
        (
            "JobUpdate.finished",
            Frame::new(
                18,
                JobUpdate {
                    job: JobId(3),
                    run: RunId(1),
                    attempt: 1,
                    status: JobStatus::Finished {
                        outcome: Outcome::DeadlineExceeded,
                        exit_code: Some(143),
                        at: 1_700_000_100_000,
                    },
                    last: true,
                },
            ),
        ),
    ]
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut bytes = Vec::new();
    frame
        .encode(&mut bytes, FRAME_LENGTH_MAX)
        .expect("a sample encodes");
    bytes
}

/// A frame's bytes with its length field set to match `bytes.len()`.
fn with_length_fixed(mut bytes: Vec<u8>) -> Vec<u8> {
    let length = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&length.to_le_bytes());
    bytes
}

// ---- round trips --------------------------------------------------------------

#[test]
fn every_message_type_has_a_sample() {
    let covered: Vec<MessageType> = samples()
        .iter()
        .map(|(_, frame)| frame.message.message_type())
        .collect();
    for message_type in MessageType::ALL {
        assert!(
            covered.contains(message_type),
            "no sample of {}",
            message_type.name()
        );
    }
}

#[test]
fn every_sample_round_trips() {
    for (name, frame) in samples() {
        let bytes = encode(&frame);
        assert_eq!(
            Frame::check(&bytes, FRAME_LENGTH_MAX),
            Ok(Check::Complete {
                frame_length: bytes.len()
            }),
            "{name}"
        );
        assert_eq!(Frame::decode(&bytes).as_ref(), Ok(&frame), "{name}");
        let name_type = name.split('.').next().unwrap_or(name);
        assert_eq!(frame.message.message_type().name(), name_type);
    }
}

#[test]
fn frames_back_to_back_are_checked_one_at_a_time() {
    let mut stream = Vec::new();
    let frames: Vec<Frame> = samples().into_iter().map(|(_, frame)| frame).collect();
    for frame in &frames {
        stream.extend(encode(frame));
    }
    let mut decoded = Vec::new();
    let mut rest = &stream[..];
    while let Ok(Check::Complete { frame_length }) = Frame::check(rest, FRAME_LENGTH_MAX) {
        decoded.push(Frame::decode(&rest[..frame_length]).expect("a sample decodes"));
        rest = &rest[frame_length..];
    }
    assert!(rest.is_empty());
    assert_eq!(decoded, frames);
}

// ---- hostile bytes ------------------------------------------------------------

#[test]
fn every_prefix_of_every_sample_is_incomplete_and_never_decodes() {
    for (name, frame) in samples() {
        let bytes = encode(&frame);
        for end in 0..bytes.len() {
            let prefix = &bytes[..end];
            assert_eq!(
                Frame::check(prefix, FRAME_LENGTH_MAX),
                Ok(Check::Incomplete),
                "{name} cut at {end}"
            );
            assert!(Frame::decode(prefix).is_err(), "{name} cut at {end}");
        }
    }
}

#[test]
fn every_truncated_body_is_an_error_even_when_the_length_agrees() {
    // The body is self-delimiting: no proper prefix of a valid body is a
    // valid body, so each of these must fail in the body decoder.
    for (name, frame) in samples() {
        let bytes = encode(&frame);
        for end in 4 + HEADER_LENGTH..bytes.len() {
            let truncated = with_length_fixed(bytes[..end].to_vec());
            match Frame::decode(&truncated) {
                Err(
                    DecodeError::Truncated { .. }
                    | DecodeError::LengthBeyondFrame { .. }
                    | DecodeError::CountBeyondFrame { .. },
                ) => {}
                other => panic!("{name} cut at {end}: {other:?}"),
            }
        }
    }
}

#[test]
fn a_byte_after_the_last_field_is_trailing() {
    for (name, frame) in samples() {
        let mut bytes = encode(&frame);
        bytes.push(0);
        let bytes = with_length_fixed(bytes);
        assert_eq!(
            Frame::decode(&bytes),
            Err(DecodeError::TrailingBytes {
                message: frame.message.message_type().name(),
                count: 1
            }),
            "{name}"
        );
    }
}

#[test]
fn a_frame_one_byte_over_the_limit_is_too_large_and_is_not_encoded() {
    for (name, frame) in samples() {
        let bytes = encode(&frame);
        let limit = bytes.len() - 1;
        assert_eq!(
            Frame::check(&bytes[..4], limit),
            Err(DecodeError::FrameTooLarge {
                frame_length: bytes.len() as u64,
                frame_length_max: limit
            }),
            "{name}"
        );
        let mut out = Vec::new();
        assert!(frame.encode(&mut out, limit).is_err(), "{name}");
        assert!(out.is_empty(), "{name}");
    }
}

/// The frame of a sample, with the header rewritten and the body replaced.
fn frame_with_body(message_type: MessageType, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend(((HEADER_LENGTH + body.len()) as u32).to_le_bytes());
    bytes.extend((message_type as u16).to_le_bytes());
    bytes.extend(0u16.to_le_bytes());
    bytes.extend(9u64.to_le_bytes());
    bytes.extend(body);
    bytes
}

#[test]
fn bad_utf8_is_rejected_with_the_field_named() {
    // Hello: version 1, empty token, client_name of two bytes that are not
    // UTF-8.
    let body = [1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0xc3, 0x28];
    assert_eq!(
        Frame::decode(&frame_with_body(MessageType::Hello, &body)),
        Err(DecodeError::BadUtf8 {
            field: "Hello.client_name"
        })
    );
    let body = [1, 0, 0, 0, 0xff];
    assert_eq!(
        Frame::decode(&frame_with_body(MessageType::PauseQueue, &body)),
        Err(DecodeError::BadUtf8 {
            field: "PauseQueue.queue"
        })
    );
}

#[test]
fn bad_tags_are_rejected_with_the_field_named() {
    let cases: [(MessageType, Vec<u8>, DecodeError); 6] = [
        (
            MessageType::HelloOk,
            vec![1, 0, 0, 0, 0, 0, 4],
            DecodeError::BadTag {
                field: "HelloOk.role",
                tag: 4,
            },
        ),
        (
            MessageType::Watch,
            vec![0, 0, 0, 0, 0, 0, 0, 0, 0],
            DecodeError::BadTag {
                field: "WatchTarget",
                tag: 0,
            },
        ),
        (
            // Completion with report 3.
            MessageType::Complete,
            [
                vec![1, 0, 0, 0],
                vec![3; 8],
                vec![1, 0, 0, 0, 3, 0, 0, 0, 0],
            ]
            .concat(),
            DecodeError::BadTag {
                field: "Completion.report",
                tag: 3,
            },
        ),
        (
            // Submitted with replayed = 2.
            MessageType::Submitted,
            [vec![1; 8], vec![1; 8], vec![1, 0, 0, 0, 2]].concat(),
            DecodeError::BadTag {
                field: "Submitted.replayed",
                tag: 2,
            },
        ),
        (
            // JobOptions.queue with presence tag 2.
            MessageType::SubmitRun,
            vec![2],
            DecodeError::BadTag {
                field: "JobOptions.queue",
                tag: 2,
            },
        ),
        (
            MessageType::Error,
            vec![99, 0, 0, 0, 0, 0],
            DecodeError::BadErrorCode {
                field: "ErrorAnswer.code",
                code: 99,
            },
        ),
    ];
    for (message_type, body, expected) in cases {
        assert_eq!(
            Frame::decode(&frame_with_body(message_type, &body)),
            Err(expected)
        );
    }
}

#[test]
fn errors_read_as_sentences_naming_the_field() {
    let error = Frame::decode(&frame_with_body(
        MessageType::Hello,
        &[1, 0, 0xff, 0xff, 0xff, 0xff],
    ))
    .expect_err("the token is longer than the frame");
    assert_eq!(
        error.to_string(),
        "Hello.token: declares a length of 4294967295 bytes but only 0 remain in the frame"
    );
}

// ---- allocation ---------------------------------------------------------------

/// The system allocator, noting the largest single allocation made on a
/// thread while that thread measures.
struct Counting;

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

fn note_allocation(size: usize) {
    // try_with: the thread may be tearing down its locals.
    let _ = MEASURING.try_with(|measuring| {
        if measuring.get() {
            let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
        }
    });
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest single allocation `f` made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|largest| largest.set(0));
    MEASURING.with(|measuring| measuring.set(true));
    let result = f();
    MEASURING.with(|measuring| measuring.set(false));
    (result, LARGEST.with(Cell::get))
}

#[test]
fn huge_declared_lengths_and_counts_allocate_nothing_large() {
    let max = u32::MAX.to_le_bytes();
    type Expected = fn(&DecodeError) -> bool;
    let cases: Vec<(MessageType, Vec<u8>, Expected)> = vec![
        // Hello.token of 4 GiB, 3 bytes present.
        (
            MessageType::Hello,
            [&[1, 0][..], &max, b"abc"].concat(),
            |error| matches!(error, DecodeError::LengthBeyondFrame { .. }),
        ),
        // RunSpec.jobs: 4 billion jobs after empty defaults, one byte
        // present.
        (
            MessageType::SubmitRun,
            [&[0; 13][..], &max, &[0]].concat(),
            |error| matches!(error, DecodeError::CountBeyondFrame { .. }),
        ),
        // RunInfo.jobs: 4 billion ids, two present.
        (
            MessageType::RunInfo,
            [
                &[1; 8][..],
                &[0; 4],
                &[0; 4],
                &[0; 8],
                &[0; 8],
                &max,
                &[0; 16],
            ]
            .concat(),
            |error| matches!(error, DecodeError::CountBeyondFrame { .. }),
        ),
        // 2 000 tag rules: the count fits the bytes present (9 each at
        // least) but the first rule is bad (tag 0). A vector pre-allocated
        // for the count would take 2 000 in-memory rules, several times the
        // frame; it must be capped at the bytes present.
        (
            MessageType::SetTagRules,
            [&2_000u32.to_le_bytes()[..], &[0; 9 * 2_000]].concat(),
            |error| matches!(error, DecodeError::BadTag { .. }),
        ),
    ];
    for (message_type, body, expected) in cases {
        let bytes = frame_with_body(message_type, &body);
        let (result, largest) = largest_allocation(|| Frame::decode(&bytes));
        match &result {
            Err(error) if expected(error) => {}
            other => panic!("{message_type:?}: unexpected {other:?}"),
        }
        assert!(
            largest <= bytes.len(),
            "{message_type:?}: {result:?} allocated {largest} bytes at once from a {}-byte frame",
            bytes.len()
        );
    }
}

// ---- mutations ------------------------------------------------------------------

proptest! {
    /// Any bytes at any place in any sample: decoding never panics, and
    /// whatever decodes re-encodes to the same bytes (the encoding is
    /// canonical). The fuzz target `frame_decode` does the same at length.
    #[test]
    fn mutated_samples_decode_canonically_or_fail(
        sample in 0usize..64,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let samples = samples();
        let (_, frame) = &samples[sample % samples.len()];
        let mut bytes = encode(frame);
        for (at, byte) in edits {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        // Sometimes drop the tail and fix the length, to hit the body
        // decoder's bounds rather than the frame's.
        if cut % 3 == 0 {
            let end = (4 + HEADER_LENGTH).max(cut % (bytes.len() + 1));
            bytes = with_length_fixed(bytes[..end].to_vec());
        }
        if let Ok(Check::Complete { frame_length }) = Frame::check(&bytes, FRAME_LENGTH_MAX) {
            if let Ok(decoded) = Frame::decode(&bytes[..frame_length]) {
                prop_assert_eq!(&encode(&decoded)[..], &bytes[..frame_length]);
            }
        }
    }
}

// ---- the document's test vectors ----------------------------------------------

/// Every ```` ```hex vector:NAME ```` block of PROTOCOL.md: its name and
/// the line range of its content.
fn vector_blocks(document: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let lines: Vec<&str> = document.lines().collect();
    let mut blocks = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        if let Some(name) = lines[index].trim().strip_prefix("```hex vector:") {
            let start = index + 1;
            let mut end = start;
            while end < lines.len() && lines[end].trim() != "```" {
                end += 1;
            }
            blocks.push((name.trim().to_string(), start..end));
            index = end;
        }
        index += 1;
    }
    blocks
}

/// The bytes of a vector: hex digits, with whitespace and `#` comments
/// ignored.
fn parse_hex(lines: &[&str]) -> Result<Vec<u8>, String> {
    let digits: String = lines
        .iter()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.chars().filter(|c| !c.is_whitespace()))
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits: {}", digits.len()));
    }
    (0..digits.len())
        .step_by(2)
        .map(|at| {
            u8::from_str_radix(&digits[at..at + 2], 16)
                .map_err(|error| format!("{:?}: {error}", &digits[at..at + 2]))
        })
        .collect()
}

fn vector_block(name: &str, bytes: &[u8]) -> String {
    let annotated = annotate(bytes).expect("a sample annotates");
    format!("```hex vector:{name}\n{annotated}```")
}

#[test]
fn the_documents_test_vectors_are_the_codes_bytes() {
    let samples: BTreeMap<&str, Frame> = samples().into_iter().collect();
    let lines: Vec<&str> = PROTOCOL_MD.lines().collect();
    let blocks = vector_blocks(PROTOCOL_MD);
    let bless = std::env::var_os("LANES_BLESS_VECTORS").is_some();
    let mut failures = Vec::new();
    let mut blessed: Vec<String> = lines.iter().map(|line| line.to_string()).collect();
    let mut seen = Vec::new();

    // Every vector in the document decodes, re-encodes to its own bytes,
    // and is the sample of its name.
    for (name, range) in blocks.iter().rev() {
        seen.push(name.as_str());
        let Some(frame) = samples.get(name.as_str()) else {
            failures.push(format!("vector {name}: no sample of that name in the test"));
            continue;
        };
        let expected = encode(frame);
        if bless {
            let block = vector_block(name, &expected);
            let block_lines: Vec<String> = block.lines().skip(1).map(str::to_string).collect();
            let block_lines = &block_lines[..block_lines.len() - 1];
            blessed.splice(range.clone(), block_lines.iter().cloned());
            continue;
        }
        let bytes = match parse_hex(&lines[range.clone()]) {
            Ok(bytes) => bytes,
            Err(error) => {
                failures.push(format!("vector {name}: {error}"));
                continue;
            }
        };
        match Frame::decode(&bytes) {
            Ok(decoded) => {
                let mut again = Vec::new();
                decoded
                    .encode(&mut again, FRAME_LENGTH_MAX)
                    .expect("a vector re-encodes");
                if again != bytes {
                    failures.push(format!("vector {name}: re-encodes to other bytes"));
                }
            }
            Err(error) => failures.push(format!("vector {name}: does not decode: {error}")),
        }
        if bytes != expected {
            failures.push(format!(
                "vector {name}: differs from the code; it should read\n{}",
                vector_block(name, &expected)
            ));
        }
    }
    // Every sample is in the document, so every message type is.
    for (name, frame) in &samples {
        if !seen.contains(name) {
            failures.push(format!(
                "no vector {name} in docs/PROTOCOL.md; add\n{}",
                vector_block(name, &encode(frame))
            ));
        }
    }
    if bless {
        let mut text = blessed.join("\n");
        text.push('\n');
        std::fs::write(PROTOCOL_MD_PATH, text).expect("PROTOCOL.md is writable");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn message_types_in_the_document_match_the_code() {
    // The table of message types lists each as `| 0x0101 | SubmitRun | ...`.
    let mut documented = BTreeMap::new();
    for line in PROTOCOL_MD.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [_, number, name, ..] = cells[..] {
            if let Some(hex) = number.strip_prefix("`0x").and_then(|n| n.strip_suffix('`')) {
                if let Ok(number) = u16::from_str_radix(hex, 16) {
                    documented.insert(name.trim_matches('`').to_string(), number);
                }
            }
        }
    }
    for message_type in MessageType::ALL {
        assert_eq!(
            documented.get(message_type.name()),
            Some(&(*message_type as u16)),
            "{} in the message type table",
            message_type.name()
        );
    }
    assert_eq!(documented.len(), MessageType::ALL.len());
}

#[test]
fn the_error_code_table_matches_the_model() {
    let codes = [
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::FailedPrecondition,
        ErrorCode::ResourceExhausted,
        ErrorCode::Unsupported,
        ErrorCode::Unauthenticated,
        ErrorCode::PermissionDenied,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];
    for code in codes {
        let row = format!("| {} | `{}` |", code as u16, code.name());
        assert!(PROTOCOL_MD.contains(&row), "no row {row:?}");
    }
}
