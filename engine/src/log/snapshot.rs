//! Snapshots: the scheduler's image at a sequence, in a checksummed file, so
//! start-up replays only the records after it and the log can drop the
//! records before it.
//!
//! A snapshot file `snapshot-<seq, 20 digits>.lsnap` in the data folder's
//! `snapshots/`:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `LNSS` |
//! | 4 | 2 | format version (u16 LE), [`SNAPSHOT_VERSION`] |
//! | 6 | 2 | flags (u16 LE): bit 0 [`FLAG_LZ4`] (format 4); other bits 0 |
//! | 8 | 8 | the sequence of the last event it includes (u64 LE) |
//! | 16 | 8 | payload length as stored (u64 LE) |
//! | 24 | 4 | CRC32C of bytes 0..24 followed by the payload as stored |
//! | 28 | 4 | reserved, 0 |
//! | 32 | n | payload: an rkyv archive of `SnapshotRecordV3` (formats 3 and 4), `SnapshotRecordV2` (format 2, still read) or `SnapshotRecord` (format 1, still read); with [`FLAG_LZ4`], the archive's length (u64 LE) then the archive as an LZ4 frame |
//!
//! Format 4 compresses every snapshot: a state of a million jobs archives
//! to ~110 MB and compresses about 7x, so the file written and fsynced
//! while the engine runs (sharing the disk with the log's syncs) is a
//! seventh of the size, and start-up reads a seventh of the bytes.
//!
//! Files are written to a temporary name, fsynced, renamed and the folder
//! fsynced, so a crash leaves either the old set of snapshots or the new.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rkyv::rancor;

use crate::log::format::{OptionsRecord, QueueRecord, TagRuleRecord};
use crate::model::{self, AgentId, JobId, Outcome, RunId, Seq, StopReason};
use crate::sched::{
    AgentImage, ForgottenKeyImage, Image, JobImage, JobStateImage, QueueImage, RunImage,
};

pub const SNAPSHOT_MAGIC: [u8; 4] = *b"LNSS";
/// 2: adds the triggers' last firings and the drain flag around format 1's
/// record. Format 1 files are still read (no trigger had fired).
/// 3: adds forgotten runs and jobs (ids with no record) and the keys
/// remembered of forgotten runs around format 2's record. Formats 1 and 2
/// are still read (nothing was forgotten: ids are dense).
/// 4: the flags field and compressed payloads ([`FLAG_LZ4`]); the archive
/// is format 3's. Format 3 and older files have flags 0.
pub const SNAPSHOT_VERSION: u16 = 4;
const HEADER_LEN: usize = 32;
/// Flag: the payload is the archive's length, then the archive as one LZ4
/// frame (independent blocks of 4 MiB, content size set).
pub const FLAG_LZ4: u16 = 1;
/// LZ4 expands nothing by more than 255 times: a longer declared archive
/// is damage, refused before a buffer is allocated for it.
const LZ4_RATIO_MAX: u64 = 255;
/// Snapshots kept, the newest included: an older one remains in case the
/// newest is damaged and the operator asks for repair.
pub const SNAPSHOTS_KEPT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("snapshot {path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
    #[error("snapshot {path} was written by snapshot format {found}; this build reads up to {SNAPSHOT_VERSION}: upgrade Lanes")]
    NewerVersion { path: String, found: u16 },
}

type Pair = (String, String);

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub last_seq: u64,
    pub clock: u64,
    pub next_run: u64,
    pub queues: Vec<(QueueRecord, [u64; 6])>,
    pub rules: Vec<TagRuleRecord>,
    pub pools: Vec<String>,
    pub tag_sets: Vec<Vec<Pair>>,
    pub label_sets: Vec<Vec<Pair>>,
    pub runs: Vec<RunSnapshot>,
    pub first_job: u64,
    pub jobs: Vec<JobSnapshot>,
    pub agents: Vec<AgentSnapshot>,
    pub idempotency: Vec<(String, u64, u64)>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct SnapshotRecordV2 {
    pub base: SnapshotRecord,
    pub triggers: Vec<(String, u64)>,
    pub draining: bool,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct SnapshotRecordV3 {
    /// `base.base.first_job` is the first kept job's id (or `next_job`).
    pub base: SnapshotRecordV2,
    pub next_job: u64,
    /// The ids of `base.base.jobs`, as (first id, count) stretches in order.
    pub job_spans: Vec<(u64, u64)>,
    pub forgotten_keys: Vec<ForgottenKeySnapshot>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct ForgottenKeySnapshot {
    pub finished_at: u64,
    pub key: String,
    pub run: u64,
    pub hash: u64,
    pub first_job: u64,
    pub count: u32,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct RunSnapshot {
    pub id: u64,
    pub queue: u32,
    pub priority: i32,
    pub defaults: Option<OptionsRecord>,
    pub position: u64,
    pub submitted_at: u64,
    pub jobs: Vec<u64>,
    /// initial_jobs, unfinished, last_stage, released, released_unfinished.
    pub counts: [u32; 5],
    pub active: bool,
    pub open_stage: Option<u32>,
    pub failed_stage: Option<u32>,
    pub idempotency_key: Option<String>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct JobSnapshot {
    pub run: u64,
    pub priority: i32,
    pub position: u64,
    pub upload: u32,
    pub queue: u32,
    pub tags: u32,
    pub labels: u32,
    pub stage: u32,
    /// 0 held, 1 waiting, 2 running, 3 finished.
    pub state: u8,
    pub agent: u32,
    /// Stop reason (0 none, 1 cancelled, 2 deadline) or outcome code.
    pub reason: u8,
    pub exit_code: Option<i32>,
    pub finished_at: u64,
    pub attempt: u32,
    pub max_attempts: u32,
    pub own_priority: bool,
    pub submitted_at: u64,
    pub waiting_since: u64,
    pub max_queued_time_ms: Option<u64>,
    pub deadline_at: Option<u64>,
    pub payload: Vec<u8>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, PartialEq)]
pub struct AgentSnapshot {
    pub name: String,
    pub pools: Vec<String>,
    pub labels: Vec<Pair>,
    pub slots: u32,
    pub running: Vec<u64>,
    pub credit: u32,
    pub present: bool,
    pub lease_until: u64,
    pub hungry_since: Option<u64>,
}

const OUTCOMES: [Outcome; 7] = [
    Outcome::Succeeded,
    Outcome::Failed,
    Outcome::Cancelled,
    Outcome::Skipped,
    Outcome::QueueTimeout,
    Outcome::DeadlineExceeded,
    Outcome::Lost,
];

impl From<Image> for SnapshotRecord {
    /// Moves the image's contents (payloads, names) rather than copying
    /// them: a snapshot of millions of jobs is built once.
    fn from(image: Image) -> SnapshotRecord {
        let first_job = image.jobs.first().map_or(image.next_job, |job| job.id.0);
        SnapshotRecord {
            last_seq: image.last_seq,
            clock: image.clock,
            next_run: image.next_run,
            queues: image
                .queues
                .into_iter()
                .map(|q| {
                    let counts = [
                        q.waiting,
                        q.running,
                        q.held,
                        q.submitted_total,
                        q.dispatched_total,
                        q.finished_total,
                    ];
                    ((&q.config).into(), counts)
                })
                .collect(),
            rules: image.rules.iter().map(Into::into).collect(),
            pools: image.pools,
            tag_sets: image.tag_sets,
            label_sets: image.label_sets,
            runs: image
                .runs
                .into_iter()
                .map(|r| RunSnapshot {
                    id: r.id.0,
                    queue: r.queue,
                    priority: r.priority,
                    defaults: r.defaults.as_ref().map(Into::into),
                    position: r.position,
                    submitted_at: r.submitted_at,
                    jobs: r.jobs.iter().map(|j| j.0).collect(),
                    counts: [
                        r.initial_jobs,
                        r.unfinished,
                        r.last_stage,
                        r.released,
                        r.released_unfinished,
                    ],
                    active: r.active,
                    open_stage: r.open_stage,
                    failed_stage: r.failed_stage,
                    idempotency_key: r.idempotency_key,
                })
                .collect(),
            first_job,
            jobs: image.jobs.into_iter().map(job_snapshot).collect(),
            agents: image
                .agents
                .into_iter()
                .map(|a| AgentSnapshot {
                    name: a.name,
                    pools: a.pools,
                    labels: a.labels,
                    slots: a.slots,
                    running: a.running.iter().map(|j| j.0).collect(),
                    credit: a.credit,
                    present: a.present,
                    lease_until: a.lease_until,
                    hungry_since: a.hungry_since,
                })
                .collect(),
            idempotency: image
                .idempotency
                .into_iter()
                .map(|(k, run, hash)| (k, run.0, hash))
                .collect(),
        }
    }
}

fn job_snapshot(job: JobImage) -> JobSnapshot {
    let (state, agent, reason, exit_code, finished_at) = match job.state {
        JobStateImage::Held => (0, 0, 0, None, 0),
        JobStateImage::Waiting => (1, 0, 0, None, 0),
        JobStateImage::Running { agent, stop } => {
            let reason = match stop {
                None => 0,
                Some(StopReason::Cancelled) => 1,
                Some(StopReason::DeadlineExceeded) => 2,
            };
            (2, agent.0, reason, None, 0)
        }
        JobStateImage::Finished {
            outcome,
            exit_code,
            at,
        } => {
            let code = OUTCOMES
                .iter()
                .position(|&o| o == outcome)
                .expect("every outcome is listed") as u8;
            (3, 0, code, exit_code, at)
        }
    };
    JobSnapshot {
        run: job.run.0,
        priority: job.priority,
        position: job.position,
        upload: job.upload,
        queue: job.queue,
        tags: job.tags,
        labels: job.labels,
        stage: job.stage,
        state,
        agent,
        reason,
        exit_code,
        finished_at,
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        own_priority: job.own_priority,
        submitted_at: job.submitted_at,
        waiting_since: job.waiting_since,
        max_queued_time_ms: job.max_queued_time_ms,
        deadline_at: job.deadline_at,
        payload: job.payload,
    }
}

/// The ids of `jobs` as (first id, count) stretches.
fn job_spans(jobs: &[JobImage]) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for job in jobs {
        match spans.last_mut() {
            Some((first, count)) if *first + *count == job.id.0 => *count += 1,
            _ => spans.push((job.id.0, 1)),
        }
    }
    spans
}

impl SnapshotRecord {
    /// The image; `job_spans` gives the jobs' ids (formats 1 and 2: one
    /// stretch from `first_job`).
    fn into_image(self, next_job: u64, job_spans: &[(u64, u64)]) -> Result<Image, String> {
        let spanned: u64 = job_spans.iter().map(|&(_, count)| count).sum();
        if spanned != self.jobs.len() as u64 {
            return Err(format!(
                "its job ids cover {spanned} jobs, it holds {}",
                self.jobs.len()
            ));
        }
        let mut ids = job_spans
            .iter()
            .flat_map(|&(first, count)| (0..count).map(move |i| JobId(first.saturating_add(i))));
        let mut jobs = Vec::with_capacity(self.jobs.len());
        for job in self.jobs {
            let state = match (job.state, job.reason) {
                (0, _) => JobStateImage::Held,
                (1, _) => JobStateImage::Waiting,
                (2, 0) => JobStateImage::Running {
                    agent: AgentId(job.agent),
                    stop: None,
                },
                (2, 1) => JobStateImage::Running {
                    agent: AgentId(job.agent),
                    stop: Some(StopReason::Cancelled),
                },
                (2, 2) => JobStateImage::Running {
                    agent: AgentId(job.agent),
                    stop: Some(StopReason::DeadlineExceeded),
                },
                (3, code) if (code as usize) < OUTCOMES.len() => JobStateImage::Finished {
                    outcome: OUTCOMES[code as usize],
                    exit_code: job.exit_code,
                    at: job.finished_at,
                },
                (state, reason) => return Err(format!("job state {state}/{reason} is unknown")),
            };
            jobs.push(JobImage {
                id: ids.next().expect("one id per job"),
                run: RunId(job.run),
                priority: job.priority,
                position: job.position,
                upload: job.upload,
                queue: job.queue,
                tags: job.tags,
                labels: job.labels,
                stage: job.stage,
                state,
                attempt: job.attempt,
                max_attempts: job.max_attempts,
                own_priority: job.own_priority,
                submitted_at: job.submitted_at,
                waiting_since: job.waiting_since,
                max_queued_time_ms: job.max_queued_time_ms,
                deadline_at: job.deadline_at,
                payload: job.payload,
            });
        }
        Ok(Image {
            last_seq: self.last_seq,
            clock: self.clock,
            next_run: self.next_run,
            queues: self
                .queues
                .into_iter()
                .map(|(config, c)| QueueImage {
                    config: config.into(),
                    waiting: c[0],
                    running: c[1],
                    held: c[2],
                    submitted_total: c[3],
                    dispatched_total: c[4],
                    finished_total: c[5],
                })
                .collect(),
            rules: self
                .rules
                .into_iter()
                .map(|rule| model::TagRule::try_from(rule).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?,
            pools: self.pools,
            tag_sets: self.tag_sets,
            label_sets: self.label_sets,
            runs: self
                .runs
                .into_iter()
                .map(|r| RunImage {
                    id: RunId(r.id),
                    queue: r.queue,
                    priority: r.priority,
                    defaults: r.defaults.map(Into::into),
                    position: r.position,
                    submitted_at: r.submitted_at,
                    jobs: r.jobs.into_iter().map(JobId).collect(),
                    initial_jobs: r.counts[0],
                    unfinished: r.counts[1],
                    last_stage: r.counts[2],
                    released: r.counts[3],
                    released_unfinished: r.counts[4],
                    active: r.active,
                    open_stage: r.open_stage,
                    failed_stage: r.failed_stage,
                    idempotency_key: r.idempotency_key,
                })
                .collect(),
            next_job,
            jobs,
            agents: self
                .agents
                .into_iter()
                .map(|a| AgentImage {
                    name: a.name,
                    pools: a.pools,
                    labels: a.labels,
                    slots: a.slots,
                    running: a.running.into_iter().map(JobId).collect(),
                    credit: a.credit,
                    present: a.present,
                    lease_until: a.lease_until,
                    hungry_since: a.hungry_since,
                })
                .collect(),
            idempotency: self
                .idempotency
                .into_iter()
                .map(|(k, run, hash)| (k, RunId(run), hash))
                .collect(),
            forgotten_keys: Vec::new(),
            triggers: Vec::new(),
            draining: false,
        })
    }
}

/// Encodes an image as snapshot file bytes.
pub fn encode(image: &Image) -> Vec<u8> {
    let (header, payload) = encode_parts(image.clone());
    [&header[..], &payload[..]].concat()
}

/// The header and the compressed payload of an image, apart, so the file
/// takes the two without joining them.
fn encode_parts(image: Image) -> ([u8; HEADER_LEN], Vec<u8>) {
    let last_seq = image.last_seq;
    let archive = archive(image);
    let mut payload = Vec::with_capacity(8 + archive.len() / 4);
    payload.extend_from_slice(&(archive.len() as u64).to_le_bytes());
    let frame = lz4_flex::frame::FrameInfo::new()
        .block_size(lz4_flex::frame::BlockSize::Max4MB)
        .content_size(Some(archive.len() as u64));
    let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(frame, payload);
    encoder
        .write_all(&archive)
        .expect("compressing into memory cannot fail");
    let payload = encoder
        .finish()
        .expect("compressing into memory cannot fail");
    (
        header(SNAPSHOT_VERSION, FLAG_LZ4, last_seq, &payload),
        payload,
    )
}

/// The rkyv archive of an image (format 3's record).
fn archive(mut image: Image) -> rkyv::util::AlignedVec {
    let next_job = image.next_job;
    let job_spans = job_spans(&image.jobs);
    let triggers = std::mem::take(&mut image.triggers);
    let draining = image.draining;
    let forgotten_keys = std::mem::take(&mut image.forgotten_keys)
        .into_iter()
        .map(|k| ForgottenKeySnapshot {
            finished_at: k.finished_at,
            key: k.key,
            run: k.run.0,
            hash: k.hash,
            first_job: k.first_job.0,
            count: k.count,
        })
        .collect();
    let record = SnapshotRecordV3 {
        base: SnapshotRecordV2 {
            base: SnapshotRecord::from(image),
            triggers,
            draining,
        },
        next_job,
        job_spans,
        forgotten_keys,
    };
    rkyv::to_bytes::<rancor::Error>(&record).expect("archiving a snapshot cannot fail")
}

/// The header of a file holding `payload`, with its checksum.
fn header(version: u16, flags: u16, last_seq: Seq, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut bytes = [0u8; HEADER_LEN];
    bytes[0..4].copy_from_slice(&SNAPSHOT_MAGIC);
    bytes[4..6].copy_from_slice(&version.to_le_bytes());
    bytes[6..8].copy_from_slice(&flags.to_le_bytes());
    bytes[8..16].copy_from_slice(&last_seq.to_le_bytes());
    bytes[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..24]), payload);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Checks and decodes snapshot file bytes; `path` names it in errors.
pub fn decode(path: &str, bytes: &[u8]) -> Result<Image, SnapshotError> {
    let damaged = |reason: String| SnapshotError::Damaged {
        path: path.to_string(),
        reason,
    };
    if bytes.len() < HEADER_LEN || bytes[0..4] != SNAPSHOT_MAGIC {
        return Err(damaged("it does not start with a snapshot header".into()));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version > SNAPSHOT_VERSION {
        return Err(SnapshotError::NewerVersion {
            path: path.to_string(),
            found: version,
        });
    }
    let seq = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let length = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != length {
        return Err(damaged(format!(
            "its payload is {} bytes, its header says {length}",
            payload.len()
        )));
    }
    let stored = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c_append(crc32c::crc32c(&bytes[..24]), payload);
    if stored != computed {
        return Err(damaged(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
    let known = if version >= 4 { FLAG_LZ4 } else { 0 };
    if flags & !known != 0 {
        return Err(damaged(format!(
            "its header has flags {flags:#06x}, unknown to snapshot format {version}"
        )));
    }
    let aligned = if flags & FLAG_LZ4 != 0 {
        decompress(payload).map_err(damaged)?
    } else {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
        aligned.extend_from_slice(payload);
        aligned
    };
    let (v2, forgotten) = if version >= 3 {
        let record = rkyv::from_bytes::<SnapshotRecordV3, rancor::Error>(&aligned)
            .map_err(|e| damaged(e.to_string()))?;
        let forgotten = (record.next_job, record.job_spans, record.forgotten_keys);
        (record.base, Some(forgotten))
    } else if version == 2 {
        let record = rkyv::from_bytes::<SnapshotRecordV2, rancor::Error>(&aligned)
            .map_err(|e| damaged(e.to_string()))?;
        (record, None)
    } else {
        let record = rkyv::from_bytes::<SnapshotRecord, rancor::Error>(&aligned)
            .map_err(|e| damaged(e.to_string()))?;
        let v2 = SnapshotRecordV2 {
            base: record,
            triggers: Vec::new(),
            draining: false,
        };
        (v2, None)
    };
    let SnapshotRecordV2 {
        base: record,
        triggers,
        draining,
    } = v2;
    // Before format 3 nothing was forgotten: job ids are one stretch.
    let (next_job, job_spans, forgotten_keys) = forgotten.unwrap_or_else(|| {
        let count = record.jobs.len() as u64;
        let first = record.first_job;
        (
            first.saturating_add(count),
            vec![(first, count)],
            Vec::new(),
        )
    });
    if record.last_seq != seq {
        return Err(damaged(format!(
            "its header says sequence {seq}, its contents {}",
            record.last_seq
        )));
    }
    let mut image = record.into_image(next_job, &job_spans).map_err(damaged)?;
    image.triggers = triggers;
    image.draining = draining;
    image.forgotten_keys = forgotten_keys
        .into_iter()
        .map(|k| ForgottenKeyImage {
            finished_at: k.finished_at,
            key: k.key,
            run: RunId(k.run),
            hash: k.hash,
            first_job: JobId(k.first_job),
            count: k.count,
        })
        .collect();
    Ok(image)
}

/// A compressed payload's archive, in an aligned buffer: its declared
/// length, then an LZ4 frame that must hold exactly that many bytes.
fn decompress(payload: &[u8]) -> Result<rkyv::util::AlignedVec<16>, String> {
    let Some((length, frame)) = payload.split_first_chunk::<8>() else {
        return Err("its compressed payload is shorter than its length".into());
    };
    let length = u64::from_le_bytes(*length);
    if length > (frame.len() as u64).saturating_mul(LZ4_RATIO_MAX) {
        return Err(format!(
            "its compressed payload of {} bytes declares {length}, more than LZ4 can expand to",
            frame.len()
        ));
    }
    let length = usize::try_from(length)
        .map_err(|_| format!("its archive of {length} bytes does not fit in memory"))?;
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(length);
    aligned.resize(length, 0);
    let mut decoder = lz4_flex::frame::FrameDecoder::new(frame);
    let broken = |e: std::io::Error| format!("its compressed payload does not decompress: {e}");
    decoder.read_exact(&mut aligned).map_err(broken)?;
    let mut rest = [0u8; 1];
    if decoder.read(&mut rest).map_err(broken)? != 0 {
        return Err(format!(
            "its compressed payload holds more than the {length} bytes it declares"
        ));
    }
    Ok(aligned)
}

fn folder(data: &Path) -> PathBuf {
    data.join("snapshots")
}

fn file_name(seq: Seq) -> String {
    format!("snapshot-{seq:020}.lsnap")
}

/// The snapshots in the data folder, newest first.
pub fn list(data: &Path) -> Result<Vec<(Seq, PathBuf)>, SnapshotError> {
    let dir = folder(data);
    let io = |e: std::io::Error| SnapshotError::Io {
        path: dir.display().to_string(),
        reason: e.to_string(),
    };
    let mut found = Vec::new();
    match fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(io)?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let seq = name
                    .strip_prefix("snapshot-")
                    .and_then(|rest| rest.strip_suffix(".lsnap"));
                if let Some(seq) = seq.and_then(|s| s.parse::<Seq>().ok()) {
                    found.push((seq, entry.path()));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    found.sort_unstable_by_key(|&(seq, _)| std::cmp::Reverse(seq));
    Ok(found)
}

pub fn read(path: &Path) -> Result<Image, SnapshotError> {
    let bytes = fs::read(path).map_err(|e| SnapshotError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    decode(&path.display().to_string(), &bytes)
}

/// Writes a snapshot durably and removes all but the newest
/// [`SNAPSHOTS_KEPT`].
pub fn write(data: &Path, image: Image) -> Result<PathBuf, SnapshotError> {
    let last_seq = image.last_seq;
    let dir = folder(data);
    let path = dir.join(file_name(last_seq));
    let io = |what: &str, e: std::io::Error| SnapshotError::Io {
        path: path.display().to_string(),
        reason: format!("{what}: {e}"),
    };
    fs::create_dir_all(&dir).map_err(|e| io("creating the folder", e))?;
    let temporary = dir.join(format!("{}.tmp", file_name(last_seq)));
    let mut file = File::create(&temporary).map_err(|e| io("creating", e))?;
    let (header, payload) = encode_parts(image);
    file.write_all(&header)
        .and_then(|()| file.write_all(&payload))
        .map_err(|e| io("writing", e))?;
    file.sync_all().map_err(|e| io("fsync", e))?;
    drop(file);
    fs::rename(&temporary, &path).map_err(|e| io("renaming", e))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync of the folder", e))?;
    for (_, old) in list(data)?.into_iter().skip(SNAPSHOTS_KEPT) {
        let _ = fs::remove_file(old);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::{Command, Scheduler, SchedulerConfig};

    /// Format 1 (before triggers and drain) is still read: its image is the
    /// same state with no trigger fired and no drain.
    #[test]
    fn format_1_is_still_read() {
        let mut scheduler = Scheduler::new(SchedulerConfig::default());
        let mut events = Vec::new();
        scheduler
            .handle(
                Command::SubmitRun(model::RunSpec {
                    jobs: vec![model::JobSpec::default()],
                    ..Default::default()
                }),
                5,
                &mut events,
            )
            .expect("a submission");
        let image = scheduler.image();
        let v1 = rkyv::to_bytes::<rancor::Error>(&SnapshotRecord::from(image.clone())).unwrap();
        let file = [&header(1, 0, image.last_seq, &v1)[..], &v1[..]].concat();
        let decoded = decode("v1", &file).expect("format 1 reads");
        assert_eq!(decoded, image);
        let restored = Scheduler::from_image(SchedulerConfig::default(), decoded).unwrap();
        assert_eq!(restored.digest(), scheduler.digest());
    }

    #[test]
    fn format_2_keeps_triggers_and_drain() {
        let mut scheduler = Scheduler::new(SchedulerConfig::default());
        let mut events = Vec::new();
        for command in [
            Command::FireTrigger {
                trigger: "nightly".into(),
                scheduled: 60_000,
                run: model::RunSpec {
                    jobs: vec![model::JobSpec::default()],
                    ..Default::default()
                },
            },
            Command::SetDraining { draining: true },
        ] {
            scheduler.handle(command, 5, &mut events).expect("accepted");
        }
        let image = scheduler.image();
        let decoded = decode("v2", &encode(&image)).expect("format 2 reads");
        assert_eq!(decoded.triggers, [("nightly".to_string(), 60_000)]);
        assert!(decoded.draining);
        let restored = Scheduler::from_image(SchedulerConfig::default(), decoded).unwrap();
        assert_eq!(restored.digest(), scheduler.digest());
    }

    /// Format 3 keeps forgotten runs and jobs as ids without records (in the
    /// middle and at both ends of the tables) and the keys remembered of
    /// forgotten runs; the restored scheduler is the same state and goes on
    /// handing out new ids.
    #[test]
    fn format_3_keeps_forgotten_ids_and_remembered_keys() {
        let mut scheduler = Scheduler::new(SchedulerConfig::default());
        let mut events = Vec::new();
        let mut now = 10;
        let mut handle = |scheduler: &mut Scheduler, command: Command, now: u64| {
            scheduler
                .handle(command, now, &mut events)
                .expect("accepted")
        };
        let keyed = |key: &str, jobs: usize| model::RunSpec {
            jobs: vec![model::JobSpec::default(); jobs],
            idempotency_key: Some(key.to_string()),
            ..Default::default()
        };
        // Runs 1..=4 of 3 jobs; 1, 3 and 4 cancelled (finished), 2 waits.
        for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
            handle(&mut scheduler, Command::SubmitRun(keyed(key, 3)), now);
            if i != 1 {
                let run = model::RunId(i as u64 + 1);
                handle(&mut scheduler, Command::CancelRun { run }, now);
            }
            now += 10;
        }
        // Forget runs 1, 3 and 4 (the cap on finished jobs, before their
        // time) and keep only the 2 newest keys: those of 3 and 4.
        let retention = crate::sched::Retention {
            finished_ms: 1_000,
            finished_jobs: 0,
            keys: 2,
        };
        handle(&mut scheduler, Command::Forget(retention), now);
        assert_eq!(scheduler.finished_kept(), (0, 0));
        assert_eq!(scheduler.forgotten_keys(), 2);
        let image = scheduler.image();
        assert_eq!(image.runs.len(), 1);
        assert_eq!(image.jobs.len(), 3);
        assert_eq!(image.next_job, 13);
        let decoded = decode("v3", &encode(&image)).expect("format 3 reads");
        assert_eq!(decoded, image);
        let mut restored = Scheduler::from_image(SchedulerConfig::default(), decoded).unwrap();
        restored.check_invariants();
        assert_eq!(restored.digest(), scheduler.digest());
        for twin in [&mut scheduler, &mut restored] {
            let mut events = Vec::new();
            let reply = twin.handle(Command::SubmitRun(keyed("e", 1)), now, &mut events);
            assert!(matches!(
                reply,
                Ok(crate::sched::Reply::Submitted {
                    run: model::RunId(5),
                    first_job: model::JobId(13),
                    ..
                })
            ));
            let reply = twin.handle(Command::SubmitRun(keyed("d", 3)), now, &mut events);
            assert!(matches!(
                reply,
                Ok(crate::sched::Reply::Submitted {
                    run: model::RunId(4),
                    replayed: true,
                    ..
                })
            ));
            assert!(twin.job(model::JobId(1)).is_none());
        }
        assert_eq!(restored.digest(), scheduler.digest());
    }

    /// A state of `jobs` waiting jobs in runs of 10.
    fn waiting(jobs: usize) -> Scheduler {
        let mut scheduler = Scheduler::new(SchedulerConfig::default());
        let mut events = Vec::new();
        for _ in 0..jobs / 10 {
            let run = model::RunSpec {
                jobs: vec![model::JobSpec::default(); 10],
                ..Default::default()
            };
            scheduler
                .handle(Command::SubmitRun(run), 5, &mut events)
                .expect("accepted");
        }
        scheduler
    }

    /// Rewrites a file's header fields and makes its checksum match again,
    /// as a file written that way would be (not damage in transit).
    fn rewritten(mut file: Vec<u8>, flags: u16, payload: Option<Vec<u8>>) -> Vec<u8> {
        if let Some(payload) = payload {
            file.truncate(HEADER_LEN);
            file.extend_from_slice(&payload);
        }
        let version = u16::from_le_bytes([file[4], file[5]]);
        let seq = u64::from_le_bytes(file[8..16].try_into().unwrap());
        let fresh = header(version, flags, seq, &file[HEADER_LEN..]);
        file[..HEADER_LEN].copy_from_slice(&fresh);
        file
    }

    #[test]
    fn format_4_is_compressed_and_format_3_is_still_read() {
        let scheduler = waiting(2_000);
        let image = scheduler.image();
        let file = encode(&image);
        assert_eq!(u16::from_le_bytes([file[6], file[7]]), FLAG_LZ4);
        let archived = archive(image.clone());
        assert!(
            file.len() * 4 < archived.len(),
            "{} bytes compressed from {}",
            file.len(),
            archived.len()
        );
        assert_eq!(decode("v4", &file).expect("format 4 reads"), image);
        let v3 = [&header(3, 0, image.last_seq, &archived)[..], &archived[..]].concat();
        assert_eq!(decode("v3", &v3).expect("format 3 reads"), image);
    }

    #[test]
    fn a_compressed_payload_that_does_not_decompress_is_damage() {
        let image = waiting(200).image();
        let file = encode(&image);
        let damaged = |bytes: &[u8]| match decode("s", bytes) {
            Err(SnapshotError::Damaged { reason, .. }) => reason,
            other => panic!("not damage: {other:?}"),
        };
        // The frame cut short, under a good checksum.
        let mut short = file[HEADER_LEN..].to_vec();
        short.truncate(short.len() - 10);
        let reason = damaged(&rewritten(file.clone(), FLAG_LZ4, Some(short)));
        assert!(
            reason.starts_with("its compressed payload does not decompress"),
            "{reason}"
        );
        // A declared length LZ4 could never expand to.
        let mut huge = file[HEADER_LEN..].to_vec();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let reason = damaged(&rewritten(file.clone(), FLAG_LZ4, Some(huge)));
        assert!(reason.ends_with("more than LZ4 can expand to"), "{reason}");
        // A declared length shorter than the frame holds.
        let mut shorter = file[HEADER_LEN..].to_vec();
        let length = u64::from_le_bytes(shorter[..8].try_into().unwrap());
        shorter[..8].copy_from_slice(&(length - 1).to_le_bytes());
        let reason = damaged(&rewritten(file.clone(), FLAG_LZ4, Some(shorter)));
        assert!(reason.starts_with("its compressed payload"), "{reason}");
        // Unknown flags, and a compressed flag on a format 3 file.
        let reason = damaged(&rewritten(file.clone(), 0x0100, None));
        assert_eq!(
            reason,
            "its header has flags 0x0100, unknown to snapshot format 4"
        );
        let mut v3 = file.clone();
        v3[4..6].copy_from_slice(&3u16.to_le_bytes());
        let reason = damaged(&rewritten(v3, FLAG_LZ4, None));
        assert_eq!(
            reason,
            "its header has flags 0x0001, unknown to snapshot format 3"
        );
    }
}
