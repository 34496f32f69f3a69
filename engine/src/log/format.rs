//! The on-disk record format: the only place events become bytes.
//!
//! A record carries one group-commit batch of events. Its bytes:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `LNSR` |
//! | 4 | 2 | format version (u16 LE), [`FORMAT_VERSION`] |
//! | 6 | 2 | flags (u16 LE): bit 0 [`FLAG_LZ4`]; other bits 0 (reserved, 0 before format 3) |
//! | 8 | 8 | sequence of the first event (u64 LE); event `i` has `first + i` |
//! | 16 | 4 | number of events (u32 LE), at least 1 |
//! | 20 | 4 | payload length in bytes (u32 LE) |
//! | 24 | 4 | CRC32C of bytes 0..24 followed by the payload |
//! | 28 | 4 | reserved, 0 |
//! | 32 | n | payload: an rkyv archive (unaligned, little-endian) of `Vec<EventRecord>`, or, with [`FLAG_LZ4`], that archive's length (u32 LE) then the archive as one LZ4 block |
//!
//! The checksum covers the payload as stored (compressed or not), so damage
//! is found before anything is decompressed. The writer compresses an
//! archive of [`COMPRESS_BYTES_MIN`] bytes or more when that saves at least
//! an eighth of it: a batch's events repeat queue names, tags and rkyv's
//! padding, so big records shrink several times, which is fewer bytes for
//! sled to copy and for the disk to sync. Small records stay as they are
//! and are read in place.
//!
//! The record is stored in sled under the first sequence as 8 big-endian
//! bytes, so sled iterates records in log order.
//!
//! Changing the format: bump [`FORMAT_VERSION`], keep a reader for every
//! older version, add a fixture written by the old version to the tests,
//! and update docs/ARCHITECTURE.md in the same commit.

use rkyv::rancor;

use crate::model::{self, AgentId, JobId, RunId, Seq};
use crate::sched::{Event, EventKind, NewJob, RunSubmitted};

pub const MAGIC: [u8; 4] = *b"LNSR";
/// The record format this build writes and the newest it reads.
///
/// 2: adds the `RunsForgotten` event. The archive of every older event is
/// unchanged (new variants go last and are no larger than the largest), so
/// format 1 records are read by the same code; a format 1 build refuses a
/// format 2 log instead of mistaking the new event for damage.
///
/// 3: adds the flags field and LZ4-compressed payloads ([`FLAG_LZ4`]).
/// Records of formats 1 and 2 have flags 0 and are read as before.
pub const FORMAT_VERSION: u16 = 3;
pub const HEADER_LEN: usize = 32;
/// Flag: the payload is the archive's length, then the archive as one LZ4
/// block.
pub const FLAG_LZ4: u16 = 1;
/// Smallest archive the writer tries to compress.
pub const COMPRESS_BYTES_MIN: usize = 1 << 10;
/// Largest archive a compressed payload may declare: bounds what a reader
/// allocates for it. A writer never makes one this large (it splits records
/// at 64 MiB, `driver::RECORD_BYTES_MAX`, unless a single event is larger).
const ARCHIVE_BYTES_MAX: usize = 1 << 30;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    ShortHeader { len: usize },
    #[error("record does not start with the Lanes magic bytes")]
    BadMagic,
    #[error("record was written by format version {found}; this build reads versions up to {FORMAT_VERSION}")]
    NewerVersion { found: u16 },
    #[error("record payload is {actual} bytes, its header says {declared}")]
    Truncated { declared: u32, actual: usize },
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("record payload is malformed: {0}")]
    Payload(String),
    #[error("record header says {declared} events, its payload holds {actual}")]
    EventCount { declared: u32, actual: usize },
    #[error("record has unknown flags {flags:#06x} (format version {version})")]
    UnknownFlags { version: u16, flags: u16 },
    #[error("record's compressed payload does not decompress: {0}")]
    Decompress(String),
}

/// A record's header fields, after its checksum has been verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub version: u16,
    pub flags: u16,
    pub first_seq: Seq,
    pub count: u32,
}

impl RecordHeader {
    pub fn last_seq(&self) -> Seq {
        self.first_seq + u64::from(self.count) - 1
    }
}

/// Encodes a batch of consecutive events as one record, compressed when
/// that pays (see the module's notes).
pub fn encode(events: &[Event]) -> Vec<u8> {
    encode_with(events, true)
}

/// As [`encode`], never compressed: the record as format 2 wrote it but
/// for its version. Benchmarks measure the bytes compression saves with it.
pub fn encode_plain(events: &[Event]) -> Vec<u8> {
    encode_with(events, false)
}

fn encode_with(events: &[Event], compress: bool) -> Vec<u8> {
    assert!(!events.is_empty(), "a record holds at least one event");
    let first_seq = events[0].seq;
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.seq,
            first_seq + i as u64,
            "a record's events are consecutive"
        );
    }
    let records: Vec<EventRecord> = events.iter().map(EventRecord::from).collect();
    encode_records(first_seq, records, compress)
}

/// Encodes archived-to-be records as one record under `first_seq`.
fn encode_records(first_seq: Seq, records: Vec<EventRecord>, compress: bool) -> Vec<u8> {
    let archive = rkyv::to_bytes::<rancor::Error>(&records).expect("archiving events cannot fail");
    // The payload goes straight after the header: compressed into the
    // record's own buffer, or copied once.
    let mut bytes = vec![0u8; HEADER_LEN];
    let mut flags = 0;
    if compress && archive.len() >= COMPRESS_BYTES_MIN && archive.len() <= ARCHIVE_BYTES_MAX {
        let bound = lz4_flex::block::get_maximum_output_size(archive.len());
        bytes.resize(HEADER_LEN + 4 + bound, 0);
        let length = u32::try_from(archive.len()).expect("an archive under 1 GiB");
        bytes[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&length.to_le_bytes());
        let compressed = lz4_flex::block::compress_into(&archive, &mut bytes[HEADER_LEN + 4..])
            .expect("the output has the maximum compressed size");
        bytes.truncate(HEADER_LEN + 4 + compressed);
        if 4 + compressed <= archive.len() - archive.len() / 8 {
            flags = FLAG_LZ4;
        } else {
            bytes.truncate(HEADER_LEN);
        }
    }
    if flags & FLAG_LZ4 == 0 {
        bytes.extend_from_slice(&archive);
    }
    // Never truncated: a record that does not fit its 32-bit fields would
    // be a damaged log. The writer keeps records far below (64 MiB).
    let count = u32::try_from(records.len()).expect("a record holds under 2^32 events");
    let length =
        u32::try_from(bytes.len() - HEADER_LEN).expect("a record's payload is under 4 GiB");
    bytes[0..4].copy_from_slice(&MAGIC);
    bytes[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes[6..8].copy_from_slice(&flags.to_le_bytes());
    bytes[8..16].copy_from_slice(&first_seq.to_le_bytes());
    bytes[16..20].copy_from_slice(&count.to_le_bytes());
    bytes[20..24].copy_from_slice(&length.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..24]), &bytes[HEADER_LEN..]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Checks a record's header and checksum without decoding its events.
pub fn check(bytes: &[u8]) -> Result<RecordHeader, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::ShortHeader { len: bytes.len() });
    }
    if bytes[0..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u16_at(4);
    if version > FORMAT_VERSION {
        return Err(DecodeError::NewerVersion { found: version });
    }
    let flags = u16_at(6);
    let first_seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let count = u32_at(16);
    let declared = u32_at(20);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != declared as usize {
        return Err(DecodeError::Truncated {
            declared,
            actual: payload.len(),
        });
    }
    let stored = u32_at(24);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&bytes[..24]), payload);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    if count == 0 {
        return Err(DecodeError::EventCount {
            declared: 0,
            actual: 0,
        });
    }
    // Checked after the checksum: a flipped flag bit is damage, reported
    // as such; a flag this build does not know, in a record whose checksum
    // holds, was written on purpose by something else.
    let known = if version >= 3 { FLAG_LZ4 } else { 0 };
    if flags & !known != 0 {
        return Err(DecodeError::UnknownFlags { version, flags });
    }
    Ok(RecordHeader {
        version,
        flags,
        first_seq,
        count,
    })
}

/// Checks a record and decodes its events. An uncompressed payload is
/// validated and read in place (zero-copy); a compressed one is
/// decompressed into one buffer first. Only the events themselves are
/// built.
pub fn decode(bytes: &[u8]) -> Result<(RecordHeader, Vec<Event>), DecodeError> {
    let header = check(bytes)?;
    let payload = &bytes[HEADER_LEN..];
    let decompressed;
    let archive = if header.flags & FLAG_LZ4 != 0 {
        decompressed = decompress(payload)?;
        &decompressed[..]
    } else {
        payload
    };
    let archived = rkyv::access::<rkyv::Archived<Vec<EventRecord>>, rancor::Error>(archive)
        .map_err(|e| DecodeError::Payload(e.to_string()))?;
    if archived.len() != header.count as usize {
        return Err(DecodeError::EventCount {
            declared: header.count,
            actual: archived.len(),
        });
    }
    let mut events = Vec::with_capacity(archived.len());
    for (i, record) in archived.iter().enumerate() {
        let record: EventRecord = rkyv::deserialize::<EventRecord, rancor::Error>(record)
            .map_err(|e| DecodeError::Payload(e.to_string()))?;
        events.push(record.into_event(header.first_seq + i as u64)?);
    }
    Ok((header, events))
}

/// A compressed payload's archive: its declared length, then one LZ4 block
/// that must decompress to exactly that many bytes.
fn decompress(payload: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let Some((length, block)) = payload.split_first_chunk::<4>() else {
        return Err(DecodeError::Decompress(format!(
            "{} bytes, shorter than the 4-byte length",
            payload.len()
        )));
    };
    let length = u32::from_le_bytes(*length) as usize;
    if length > ARCHIVE_BYTES_MAX {
        return Err(DecodeError::Decompress(format!(
            "declares {length} bytes, over the {ARCHIVE_BYTES_MAX}-byte bound"
        )));
    }
    let mut archive = vec![0u8; length];
    let written = lz4_flex::block::decompress_into(block, &mut archive)
        .map_err(|e| DecodeError::Decompress(e.to_string()))?;
    if written != length {
        return Err(DecodeError::Decompress(format!(
            "declares {length} bytes, holds {written}"
        )));
    }
    Ok(archive)
}

// ---- boundary types ------------------------------------------------------
//
// Mirrors of the scheduler's events for rkyv. The scheduler's own types do
// not derive serialization: this boundary owns the byte layout, and a change
// here is a format change.

type Pair = (String, String);

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub time: u64,
    pub kind: KindRecord,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub enum KindRecord {
    QueuePut(QueueRecord),
    QueuePaused {
        queue: String,
    },
    QueueResumed {
        queue: String,
    },
    TagRulesSet(Vec<TagRuleRecord>),
    RunSubmitted(Box<RunRecord>),
    JobsAppended {
        run: u64,
        first_job: u64,
        jobs: Vec<JobRecord>,
    },
    JobPriorityChanged {
        job: u64,
        priority: i32,
    },
    RunPriorityChanged {
        run: u64,
        priority: i32,
    },
    JobCancelled {
        job: u64,
    },
    StopRequested {
        job: u64,
        agent: u32,
        reason: u8,
    },
    AgentRegistered {
        agent: u32,
        name: String,
        pools: Vec<String>,
        labels: Vec<Pair>,
        slots: u32,
    },
    AgentSeen {
        agent: u32,
    },
    WorkRequested {
        agent: u32,
        count: u32,
    },
    AgentDisconnected {
        agent: u32,
    },
    JobDispatched {
        job: u64,
        agent: u32,
        attempt: u32,
    },
    JobCompleted {
        job: u64,
        attempt: u32,
        succeeded: bool,
        exit_code: i32,
    },
    LeaseLost {
        job: u64,
    },
    AgentLost {
        agent: u32,
    },
    JobExpired {
        job: u64,
        outcome: u8,
    },
    LeasesRestarted,
    // Added after format 1's first release: new variants go last, so every
    // older record keeps its archived discriminant.
    TriggerFired {
        trigger: String,
        scheduled: u64,
    },
    DrainingSet {
        draining: bool,
    },
    // Format 2.
    RunsForgotten {
        runs: Vec<u64>,
        keys_until: u64,
    },
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct QueueRecord {
    pub name: String,
    pub priority: i32,
    pub pools: Vec<String>,
    pub action_concurrency: Option<u32>,
    pub run_concurrency: Option<u32>,
    pub depth: Option<u32>,
    pub priority_supported: bool,
    pub paused: bool,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct TagRuleRecord {
    pub key: String,
    /// 0: any value; 1: `value`; 2: each value.
    pub matches: u8,
    pub value: String,
    pub limit: u32,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq, Default)]
pub struct OptionsRecord {
    pub queue: Option<String>,
    pub priority: Option<i32>,
    pub tags: Vec<Pair>,
    pub labels: Vec<Pair>,
    pub max_queued_time_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub max_attempts: Option<u32>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub run: u64,
    pub first_job: u64,
    pub queue: String,
    pub priority: i32,
    pub tags: Vec<Pair>,
    pub defaults: OptionsRecord,
    pub idempotency: Option<(String, u64)>,
    pub jobs: Vec<JobRecord>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub queue: String,
    pub priority: i32,
    pub own_priority: bool,
    pub tags: Vec<Pair>,
    pub labels: Vec<Pair>,
    pub wait_before: bool,
    pub max_queued_time_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub max_attempts: u32,
    pub payload: Vec<u8>,
}

impl From<&model::QueueConfig> for QueueRecord {
    fn from(c: &model::QueueConfig) -> QueueRecord {
        QueueRecord {
            name: c.name.clone(),
            priority: c.priority,
            pools: c.pools.clone(),
            action_concurrency: c.action_concurrency,
            run_concurrency: c.run_concurrency,
            depth: c.depth,
            priority_supported: c.priority_supported,
            paused: c.paused,
        }
    }
}

impl From<QueueRecord> for model::QueueConfig {
    fn from(c: QueueRecord) -> model::QueueConfig {
        model::QueueConfig {
            name: c.name,
            priority: c.priority,
            pools: c.pools,
            action_concurrency: c.action_concurrency,
            run_concurrency: c.run_concurrency,
            depth: c.depth,
            priority_supported: c.priority_supported,
            paused: c.paused,
        }
    }
}

impl From<&model::TagRule> for TagRuleRecord {
    fn from(rule: &model::TagRule) -> TagRuleRecord {
        let (matches, value) = match &rule.matches {
            model::TagMatch::AnyValue => (0, String::new()),
            model::TagMatch::Value(value) => (1, value.clone()),
            model::TagMatch::EachValue => (2, String::new()),
        };
        TagRuleRecord {
            key: rule.key.clone(),
            matches,
            value,
            limit: rule.limit,
        }
    }
}

impl TryFrom<TagRuleRecord> for model::TagRule {
    type Error = DecodeError;

    fn try_from(rule: TagRuleRecord) -> Result<model::TagRule, DecodeError> {
        let matches = match rule.matches {
            0 => model::TagMatch::AnyValue,
            1 => model::TagMatch::Value(rule.value),
            2 => model::TagMatch::EachValue,
            other => {
                return Err(DecodeError::Payload(format!(
                    "unknown tag match code {other}"
                )))
            }
        };
        Ok(model::TagRule {
            key: rule.key,
            matches,
            limit: rule.limit,
        })
    }
}

impl From<&model::JobOptions> for OptionsRecord {
    fn from(o: &model::JobOptions) -> OptionsRecord {
        OptionsRecord {
            queue: o.queue.clone(),
            priority: o.priority,
            tags: o.tags.clone(),
            labels: o.labels.clone(),
            max_queued_time_ms: o.max_queued_time_ms,
            deadline_ms: o.deadline_ms,
            max_attempts: o.max_attempts,
        }
    }
}

impl From<OptionsRecord> for model::JobOptions {
    fn from(o: OptionsRecord) -> model::JobOptions {
        model::JobOptions {
            queue: o.queue,
            priority: o.priority,
            tags: o.tags,
            labels: o.labels,
            max_queued_time_ms: o.max_queued_time_ms,
            deadline_ms: o.deadline_ms,
            max_attempts: o.max_attempts,
        }
    }
}

impl From<&NewJob> for JobRecord {
    fn from(j: &NewJob) -> JobRecord {
        JobRecord {
            queue: j.queue.clone(),
            priority: j.priority,
            own_priority: j.own_priority,
            tags: j.tags.clone(),
            labels: j.labels.clone(),
            wait_before: j.wait_before,
            max_queued_time_ms: j.max_queued_time_ms,
            deadline_ms: j.deadline_ms,
            max_attempts: j.max_attempts,
            payload: j.payload.clone(),
        }
    }
}

impl From<JobRecord> for NewJob {
    fn from(j: JobRecord) -> NewJob {
        NewJob {
            queue: j.queue,
            priority: j.priority,
            own_priority: j.own_priority,
            tags: j.tags,
            labels: j.labels,
            wait_before: j.wait_before,
            max_queued_time_ms: j.max_queued_time_ms,
            deadline_ms: j.deadline_ms,
            max_attempts: j.max_attempts,
            payload: j.payload,
        }
    }
}

fn outcome_code(outcome: model::Outcome) -> u8 {
    match outcome {
        model::Outcome::Succeeded => 1,
        model::Outcome::Failed => 2,
        model::Outcome::Cancelled => 3,
        model::Outcome::Skipped => 4,
        model::Outcome::QueueTimeout => 5,
        model::Outcome::DeadlineExceeded => 6,
        model::Outcome::Lost => 7,
    }
}

fn outcome_from(code: u8) -> Result<model::Outcome, DecodeError> {
    Ok(match code {
        1 => model::Outcome::Succeeded,
        2 => model::Outcome::Failed,
        3 => model::Outcome::Cancelled,
        4 => model::Outcome::Skipped,
        5 => model::Outcome::QueueTimeout,
        6 => model::Outcome::DeadlineExceeded,
        7 => model::Outcome::Lost,
        _ => return Err(DecodeError::Payload(format!("unknown outcome code {code}"))),
    })
}

fn stop_code(reason: model::StopReason) -> u8 {
    match reason {
        model::StopReason::Cancelled => 1,
        model::StopReason::DeadlineExceeded => 2,
    }
}

fn stop_from(code: u8) -> Result<model::StopReason, DecodeError> {
    match code {
        1 => Ok(model::StopReason::Cancelled),
        2 => Ok(model::StopReason::DeadlineExceeded),
        _ => Err(DecodeError::Payload(format!(
            "unknown stop reason code {code}"
        ))),
    }
}

impl From<&Event> for EventRecord {
    fn from(event: &Event) -> EventRecord {
        use KindRecord as K;
        let kind = match &event.kind {
            EventKind::QueuePut(config) => K::QueuePut(config.into()),
            EventKind::RunsForgotten { runs, keys_until } => K::RunsForgotten {
                runs: runs.iter().map(|run| run.0).collect(),
                keys_until: *keys_until,
            },
            EventKind::QueuePaused { queue } => K::QueuePaused {
                queue: queue.clone(),
            },
            EventKind::QueueResumed { queue } => K::QueueResumed {
                queue: queue.clone(),
            },
            EventKind::TagRulesSet(rules) => K::TagRulesSet(rules.iter().map(Into::into).collect()),
            EventKind::RunSubmitted(s) => K::RunSubmitted(Box::new(RunRecord {
                run: s.run.0,
                first_job: s.first_job.0,
                queue: s.queue.clone(),
                priority: s.priority,
                tags: s.tags.clone(),
                defaults: (&s.defaults).into(),
                idempotency: s.idempotency.clone(),
                jobs: s.jobs.iter().map(Into::into).collect(),
            })),
            EventKind::JobsAppended {
                run,
                first_job,
                jobs,
            } => K::JobsAppended {
                run: run.0,
                first_job: first_job.0,
                jobs: jobs.iter().map(Into::into).collect(),
            },
            EventKind::JobPriorityChanged { job, priority } => K::JobPriorityChanged {
                job: job.0,
                priority: *priority,
            },
            EventKind::RunPriorityChanged { run, priority } => K::RunPriorityChanged {
                run: run.0,
                priority: *priority,
            },
            EventKind::JobCancelled { job } => K::JobCancelled { job: job.0 },
            EventKind::StopRequested { job, agent, reason } => K::StopRequested {
                job: job.0,
                agent: agent.0,
                reason: stop_code(*reason),
            },
            EventKind::AgentRegistered {
                agent,
                name,
                pools,
                labels,
                slots,
            } => K::AgentRegistered {
                agent: agent.0,
                name: name.clone(),
                pools: pools.clone(),
                labels: labels.clone(),
                slots: *slots,
            },
            EventKind::AgentSeen { agent } => K::AgentSeen { agent: agent.0 },
            EventKind::WorkRequested { agent, count } => K::WorkRequested {
                agent: agent.0,
                count: *count,
            },
            EventKind::AgentDisconnected { agent } => K::AgentDisconnected { agent: agent.0 },
            EventKind::JobDispatched {
                job,
                agent,
                attempt,
            } => K::JobDispatched {
                job: job.0,
                agent: agent.0,
                attempt: *attempt,
            },
            EventKind::JobCompleted {
                job,
                attempt,
                report,
                exit_code,
            } => K::JobCompleted {
                job: job.0,
                attempt: *attempt,
                succeeded: *report == model::Report::Succeeded,
                exit_code: *exit_code,
            },
            EventKind::LeaseLost { job } => K::LeaseLost { job: job.0 },
            EventKind::AgentLost { agent } => K::AgentLost { agent: agent.0 },
            EventKind::JobExpired { job, outcome } => K::JobExpired {
                job: job.0,
                outcome: outcome_code(*outcome),
            },
            EventKind::LeasesRestarted => K::LeasesRestarted,
            EventKind::TriggerFired { trigger, scheduled } => K::TriggerFired {
                trigger: trigger.clone(),
                scheduled: *scheduled,
            },
            EventKind::DrainingSet { draining } => K::DrainingSet {
                draining: *draining,
            },
        };
        EventRecord {
            time: event.time,
            kind,
        }
    }
}

impl EventRecord {
    /// The event this record holds; an unknown code is an error, never a
    /// default.
    pub fn into_event(self, seq: Seq) -> Result<Event, DecodeError> {
        use KindRecord as K;
        let kind = match self.kind {
            K::QueuePut(config) => EventKind::QueuePut(config.into()),
            K::QueuePaused { queue } => EventKind::QueuePaused { queue },
            K::QueueResumed { queue } => EventKind::QueueResumed { queue },
            K::TagRulesSet(rules) => EventKind::TagRulesSet(
                rules
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<Result<_, _>>()?,
            ),
            K::RunSubmitted(s) => EventKind::RunSubmitted(Box::new(RunSubmitted {
                run: RunId(s.run),
                first_job: JobId(s.first_job),
                queue: s.queue,
                priority: s.priority,
                tags: s.tags,
                defaults: s.defaults.into(),
                idempotency: s.idempotency,
                jobs: s.jobs.into_iter().map(Into::into).collect(),
            })),
            K::JobsAppended {
                run,
                first_job,
                jobs,
            } => EventKind::JobsAppended {
                run: RunId(run),
                first_job: JobId(first_job),
                jobs: jobs.into_iter().map(Into::into).collect(),
            },
            K::JobPriorityChanged { job, priority } => EventKind::JobPriorityChanged {
                job: JobId(job),
                priority,
            },
            K::RunPriorityChanged { run, priority } => EventKind::RunPriorityChanged {
                run: RunId(run),
                priority,
            },
            K::JobCancelled { job } => EventKind::JobCancelled { job: JobId(job) },
            K::StopRequested { job, agent, reason } => EventKind::StopRequested {
                job: JobId(job),
                agent: AgentId(agent),
                reason: stop_from(reason)?,
            },
            K::AgentRegistered {
                agent,
                name,
                pools,
                labels,
                slots,
            } => EventKind::AgentRegistered {
                agent: AgentId(agent),
                name,
                pools,
                labels,
                slots,
            },
            K::AgentSeen { agent } => EventKind::AgentSeen {
                agent: AgentId(agent),
            },
            K::WorkRequested { agent, count } => EventKind::WorkRequested {
                agent: AgentId(agent),
                count,
            },
            K::AgentDisconnected { agent } => EventKind::AgentDisconnected {
                agent: AgentId(agent),
            },
            K::JobDispatched {
                job,
                agent,
                attempt,
            } => EventKind::JobDispatched {
                job: JobId(job),
                agent: AgentId(agent),
                attempt,
            },
            K::JobCompleted {
                job,
                attempt,
                succeeded,
                exit_code,
            } => EventKind::JobCompleted {
                job: JobId(job),
                attempt,
                report: if succeeded {
                    model::Report::Succeeded
                } else {
                    model::Report::Failed
                },
                exit_code,
            },
            K::LeaseLost { job } => EventKind::LeaseLost { job: JobId(job) },
            K::AgentLost { agent } => EventKind::AgentLost {
                agent: AgentId(agent),
            },
            K::JobExpired { job, outcome } => EventKind::JobExpired {
                job: JobId(job),
                outcome: outcome_from(outcome)?,
            },
            K::LeasesRestarted => EventKind::LeasesRestarted,
            K::TriggerFired { trigger, scheduled } => {
                EventKind::TriggerFired { trigger, scheduled }
            }
            K::DrainingSet { draining } => EventKind::DrainingSet { draining },
            K::RunsForgotten { runs, keys_until } => EventKind::RunsForgotten {
                runs: runs.into_iter().map(RunId).collect(),
                keys_until,
            },
        };
        Ok(Event {
            seq,
            time: self.time,
            kind,
        })
    }
}

/// `length` bytes from a xorshift generator: LZ4 cannot shrink them an
/// eighth, so a record of them stays uncompressed and keeps its size.
#[cfg(test)]
pub(crate) fn incompressible(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_code_is_a_decode_error_not_a_default() {
        let record = EventRecord {
            time: 5,
            kind: KindRecord::JobExpired {
                job: 1,
                outcome: 99,
            },
        };
        let bytes = encode_records(1, vec![record], true);
        assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::Payload("unknown outcome code 99".to_string())
        );
        let rule = TagRuleRecord {
            key: "team".into(),
            matches: 7,
            value: String::new(),
            limit: 1,
        };
        let bytes = encode_records(
            1,
            vec![EventRecord {
                time: 5,
                kind: KindRecord::TagRulesSet(vec![rule]),
            }],
            true,
        );
        assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::Payload("unknown tag match code 7".to_string())
        );
    }

    /// `count` completions, each with its own job: a batch as the writer
    /// makes them, repetitive enough to compress.
    fn completions(count: u64) -> Vec<Event> {
        (0..count)
            .map(|i| Event {
                seq: 10 + i,
                time: 1_000 + i,
                kind: EventKind::JobCompleted {
                    job: JobId(i),
                    attempt: 1,
                    report: model::Report::Succeeded,
                    exit_code: 0,
                },
            })
            .collect()
    }

    fn flags(bytes: &[u8]) -> u16 {
        u16::from_le_bytes([bytes[6], bytes[7]])
    }

    /// Sets the flags and makes the checksum match again: what another
    /// writer would have made, not damage.
    fn with_flags(mut bytes: Vec<u8>, flags: u16) -> Vec<u8> {
        bytes[6..8].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..24]), &bytes[HEADER_LEN..]);
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn a_big_batch_is_compressed_and_reads_back_to_the_same_events() {
        let events = completions(1_000);
        let bytes = encode(&events);
        assert_eq!(flags(&bytes), FLAG_LZ4);
        let archive = rkyv::to_bytes::<rancor::Error>(
            &events.iter().map(EventRecord::from).collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(
            bytes.len() * 3 < archive.len(),
            "{} bytes compressed from {}",
            bytes.len(),
            archive.len()
        );
        let (header, decoded) = decode(&bytes).unwrap();
        assert_eq!(header.flags, FLAG_LZ4);
        assert_eq!(header.count, 1_000);
        assert_eq!(decoded, events);
        let plain = encode_plain(&events);
        assert_eq!(flags(&plain), 0);
        assert_eq!(plain.len(), HEADER_LEN + archive.len());
        assert_eq!(decode(&plain).unwrap().1, events);
    }

    #[test]
    fn a_small_batch_or_an_incompressible_one_is_stored_as_it_is() {
        let small = completions(2);
        let bytes = encode(&small);
        assert_eq!(flags(&bytes), 0);
        assert_eq!(decode(&bytes).unwrap().1, small);
        let payload = incompressible(4_096, 0x9e37_79b9_7f4a_7c15);
        let noise = vec![Event {
            seq: 1,
            time: 1,
            kind: EventKind::JobsAppended {
                run: RunId(1),
                first_job: JobId(1),
                jobs: vec![NewJob {
                    queue: "q".into(),
                    priority: 0,
                    own_priority: false,
                    tags: vec![],
                    labels: vec![],
                    wait_before: false,
                    max_queued_time_ms: None,
                    deadline_ms: None,
                    max_attempts: 1,
                    payload,
                }],
            },
        }];
        let bytes = encode(&noise);
        assert_eq!(flags(&bytes), 0);
        assert_eq!(decode(&bytes).unwrap().1, noise);
    }

    #[test]
    fn a_compressed_payload_that_does_not_decompress_is_a_decode_error() {
        let bytes = encode(&completions(1_000));
        // The declared length, too large by one, under a good checksum.
        let mut longer = bytes.clone();
        let declared = u32::from_le_bytes(longer[32..36].try_into().unwrap());
        longer[32..36].copy_from_slice(&(declared + 1).to_le_bytes());
        let longer = with_flags(longer, FLAG_LZ4);
        assert_eq!(
            decode(&longer).unwrap_err(),
            DecodeError::Decompress(format!("declares {} bytes, holds {declared}", declared + 1))
        );
        // A length over the bound is refused before anything is allocated.
        let mut huge = bytes.clone();
        huge[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        let huge = with_flags(huge, FLAG_LZ4);
        assert_eq!(
            decode(&huge).unwrap_err(),
            DecodeError::Decompress(format!(
                "declares {} bytes, over the {ARCHIVE_BYTES_MAX}-byte bound",
                u32::MAX
            ))
        );
        // An uncompressed record flagged as compressed.
        let plain = encode(&completions(2));
        assert!(matches!(
            decode(&with_flags(plain, FLAG_LZ4)).unwrap_err(),
            DecodeError::Decompress(_)
        ));
    }

    #[test]
    fn unknown_flags_are_refused_and_older_formats_have_none() {
        let bytes = with_flags(encode(&completions(2)), 0x8000);
        assert_eq!(
            check(&bytes).unwrap_err(),
            DecodeError::UnknownFlags {
                version: FORMAT_VERSION,
                flags: 0x8000
            }
        );
        let mut older = encode(&completions(1_000));
        older[4..6].copy_from_slice(&2u16.to_le_bytes());
        let older = with_flags(older, FLAG_LZ4);
        assert_eq!(
            check(&older).unwrap_err(),
            DecodeError::UnknownFlags {
                version: 2,
                flags: FLAG_LZ4
            }
        );
        // A flipped flag bit without a new checksum is damage.
        let mut flipped = encode(&completions(2));
        flipped[7] ^= 0x01;
        assert!(matches!(
            check(&flipped).unwrap_err(),
            DecodeError::Checksum { .. }
        ));
    }
}
