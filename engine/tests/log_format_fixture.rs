//! Older record formats stay readable: `fixtures/format1-record.bin` was
//! written by the format 1 build (commit aff1afa) from `every_kind()`, one
//! event of every kind that format had; `fixtures/format2-record.bin` by
//! the format 2 build (commit a9eec13) from `every_kind_2()`, the same plus
//! the event format 2 added. This build must read both back to the same
//! events.
//!
//! `LANES_WRITE_FIXTURE=<path>` writes the record this build makes instead
//! (how the format 1 fixture was made, with the older build; the format 2
//! one was written the same way from `every_kind_2()`).

use lanes::log::format;
use lanes::model::{
    AgentId, JobId, JobOptions, Outcome, QueueConfig, Report, RunId, StopReason, TagMatch, TagRule,
};
use lanes::sched::{Event, EventKind, NewJob, RunSubmitted};

fn job(payload: &[u8]) -> NewJob {
    NewJob {
        queue: "default".into(),
        priority: -3,
        own_priority: true,
        tags: vec![("team".into(), "a".into())],
        labels: vec![("os".into(), "linux".into())],
        wait_before: true,
        max_queued_time_ms: Some(5_000),
        deadline_ms: None,
        max_attempts: 3,
        payload: payload.to_vec(),
    }
}

/// One event of every kind format 1 had, with every field set.
fn every_kind() -> Vec<Event> {
    let kinds = vec![
        EventKind::QueuePut(QueueConfig {
            name: "fast".into(),
            priority: 2,
            pools: vec!["gpu".into()],
            action_concurrency: Some(4),
            run_concurrency: None,
            depth: Some(100),
            priority_supported: true,
            paused: false,
        }),
        EventKind::QueuePaused {
            queue: "fast".into(),
        },
        EventKind::QueueResumed {
            queue: "fast".into(),
        },
        EventKind::TagRulesSet(vec![
            TagRule {
                key: "team".into(),
                matches: TagMatch::EachValue,
                limit: 2,
            },
            TagRule {
                key: "env".into(),
                matches: TagMatch::Value("prod".into()),
                limit: 1,
            },
        ]),
        EventKind::RunSubmitted(Box::new(RunSubmitted {
            run: RunId(1),
            first_job: JobId(1),
            queue: "default".into(),
            priority: 5,
            tags: vec![("team".into(), "a".into())],
            defaults: JobOptions {
                queue: Some("default".into()),
                priority: Some(5),
                tags: vec![("team".into(), "a".into())],
                labels: vec![],
                max_queued_time_ms: None,
                deadline_ms: Some(60_000),
                max_attempts: Some(2),
            },
            idempotency: Some(("key-1".into(), 0xfeed)),
            jobs: vec![job(b"one"), job(b"two")],
        })),
        EventKind::JobsAppended {
            run: RunId(1),
            first_job: JobId(3),
            jobs: vec![job(b"three")],
        },
        EventKind::JobPriorityChanged {
            job: JobId(1),
            priority: -7,
        },
        EventKind::RunPriorityChanged {
            run: RunId(1),
            priority: 9,
        },
        EventKind::JobCancelled { job: JobId(3) },
        EventKind::AgentRegistered {
            agent: AgentId(0),
            name: "agent-0".into(),
            pools: vec!["default".into()],
            labels: vec![("os".into(), "linux".into())],
            slots: 8,
        },
        EventKind::AgentSeen { agent: AgentId(0) },
        EventKind::WorkRequested {
            agent: AgentId(0),
            count: 4,
        },
        EventKind::JobDispatched {
            job: JobId(1),
            agent: AgentId(0),
            attempt: 1,
        },
        EventKind::StopRequested {
            job: JobId(1),
            agent: AgentId(0),
            reason: StopReason::DeadlineExceeded,
        },
        EventKind::JobCompleted {
            job: JobId(1),
            attempt: 1,
            report: Report::Failed,
            exit_code: -9,
        },
        EventKind::LeaseLost { job: JobId(2) },
        EventKind::AgentLost { agent: AgentId(0) },
        EventKind::AgentDisconnected { agent: AgentId(0) },
        EventKind::JobExpired {
            job: JobId(2),
            outcome: Outcome::QueueTimeout,
        },
        EventKind::LeasesRestarted,
        EventKind::TriggerFired {
            trigger: "nightly".into(),
            scheduled: 86_400_000,
        },
        EventKind::DrainingSet { draining: true },
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| Event {
            seq: 41 + i as u64,
            time: 1_000 + i as u64,
            kind,
        })
        .collect()
}

#[test]
fn a_format_1_record_reads_back_to_the_same_events() {
    let events = every_kind();
    if let Ok(path) = std::env::var("LANES_WRITE_FIXTURE") {
        std::fs::write(path, format::encode(&events)).unwrap();
        return;
    }
    let bytes = include_bytes!("fixtures/format1-record.bin");
    let (header, decoded) = format::decode(bytes).unwrap();
    assert_eq!(header.version, 1);
    assert_eq!(header.first_seq, 41);
    assert_eq!(decoded, events);
}

/// Format 2's events: format 1's and `RunsForgotten`.
fn every_kind_2() -> Vec<Event> {
    let mut events = every_kind();
    let next = events.len() as u64;
    events.push(Event {
        seq: 41 + next,
        time: 2_000,
        kind: EventKind::RunsForgotten {
            runs: vec![RunId(1), RunId(4)],
            keys_until: 1_500,
        },
    });
    events
}

#[test]
fn a_format_2_record_reads_back_to_the_same_events() {
    let bytes = include_bytes!("fixtures/format2-record.bin");
    let (header, decoded) = format::decode(bytes).unwrap();
    assert_eq!(header.version, 2);
    assert_eq!(header.flags, 0);
    assert_eq!(header.first_seq, 41);
    assert_eq!(decoded, every_kind_2());
}

#[test]
fn this_build_writes_the_current_format_and_reads_it_back() {
    let events = every_kind_2();
    let bytes = format::encode(&events);
    let (header, decoded) = format::decode(&bytes).unwrap();
    assert_eq!(header.version, format::FORMAT_VERSION);
    // Over a kilobyte of archive, with names repeated: compressed.
    assert_eq!(header.flags, format::FLAG_LZ4);
    assert_eq!(decoded, events);
}
