//! Replay: the log's records back into a scheduler, through the same
//! `apply` live traffic uses.
//!
//! Recovery rules:
//! - A record that fails its checks at the very end of the log is a write
//!   torn by a crash: replay stops before it, removes it, and warns with its
//!   sequence. It was never acknowledged (acknowledgement follows sync).
//! - A record that fails its checks with good records after it, or a gap in
//!   the sequence, is corruption: replay refuses, naming the sequence, unless
//!   the operator asks for repair, which cuts the log at the damage and says
//!   exactly which sequences it dropped.
//! - A record written by a newer format version, or with flags this build
//!   does not know under a good checksum, is always refused.

use crate::log::format::{self, DecodeError};
use crate::log::store::{LogStore, StoreError};
use crate::model::Seq;
use crate::sched::Scheduler;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the log is corrupt at sequence {seq}: {error}; {after} good records follow it. Start with --repair to cut the log at sequence {seq} (losing every event from it on)")]
    Corrupt {
        seq: Seq,
        error: DecodeError,
        after: u64,
    },
    #[error("the log has a gap: expected sequence {expected}, found {found}. Start with --repair to cut the log at sequence {expected}")]
    Gap { expected: Seq, found: Seq },
    #[error("the log holds a record (sequence {seq}) written by format version {found}, newer than this build reads ({supported}): upgrade Lanes")]
    NewerVersion {
        seq: Seq,
        found: u16,
        supported: u16,
    },
    #[error("the log holds a record (sequence {seq}, format version {version}) with flags {flags:#06x} this build does not know, under a good checksum: it was written by another build of Lanes; start it with that build")]
    UnknownFlags { seq: Seq, version: u16, flags: u16 },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Cut the log at the first damaged record instead of refusing to start.
    pub repair: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub records: u64,
    pub events: u64,
    /// A torn record removed from the end of the log: its sequence and why.
    pub torn_tail: Option<(Seq, String)>,
    /// With repair: the first sequence dropped and how many records went.
    pub repaired: Option<(Seq, u64)>,
}

/// Applies every record after the scheduler's last sequence.
pub fn replay(
    scheduler: &mut Scheduler,
    store: &mut dyn LogStore,
    options: ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    let mut report = ReplayReport::default();
    let mut damage: Option<(Seq, DecodeError)> = None;
    let mut after_damage = 0u64;
    let mut gap: Option<(Seq, Seq)> = None;
    // A record this build must not read (newer version, unknown flags):
    // replay stops there and refuses, whatever the repair option says.
    let mut refused: Option<ReplayError> = None;
    store.scan(0, &mut |key, bytes| {
        if damage.is_some() || gap.is_some() {
            after_damage += 1;
            return true;
        }
        let (header, events) = match format::decode(bytes) {
            Ok(decoded) => decoded,
            Err(DecodeError::NewerVersion { found }) => {
                refused = Some(ReplayError::NewerVersion {
                    seq: key,
                    found,
                    supported: format::FORMAT_VERSION,
                });
                return false;
            }
            Err(DecodeError::UnknownFlags { version, flags }) => {
                refused = Some(ReplayError::UnknownFlags {
                    seq: key,
                    version,
                    flags,
                });
                return false;
            }
            Err(error) => {
                damage = Some((key, error));
                return true;
            }
        };
        if header.first_seq != key {
            damage = Some((
                key,
                DecodeError::Payload(format!(
                    "stored under {key}, starts at {}",
                    header.first_seq
                )),
            ));
            return true;
        }
        let expected = scheduler.last_seq() + 1;
        if header.last_seq() < expected {
            return true; // before the snapshot
        }
        if header.first_seq > expected {
            gap = Some((expected, header.first_seq));
            return true;
        }
        for event in &events[(expected - header.first_seq) as usize..] {
            scheduler.apply(event);
        }
        report.records += 1;
        report.events += events.len() as u64;
        true
    })?;
    if let Some(error) = refused {
        return Err(error);
    }
    if let Some((expected, found)) = gap {
        if !options.repair {
            return Err(ReplayError::Gap { expected, found });
        }
        damage = Some((
            found,
            DecodeError::Payload(format!("gap: expected sequence {expected}")),
        ));
        after_damage += 1;
    }
    if let Some((seq, error)) = damage {
        if after_damage > 0 && !options.repair {
            return Err(ReplayError::Corrupt {
                seq,
                error,
                after: after_damage,
            });
        }
        let mut dropped = Vec::new();
        store.scan(seq, &mut |key, _| {
            dropped.push(key);
            true
        })?;
        for key in &dropped {
            store.remove(*key)?;
        }
        if after_damage == 0 {
            tracing::warn!(seq, %error, "the last record of the log is torn (a crash during a write); replay stopped before it and removed it");
            report.torn_tail = Some((seq, error.to_string()));
        } else {
            tracing::warn!(seq, records = dropped.len(), %error, "repair: cut the log at a damaged record");
            report.repaired = Some((seq, dropped.len() as u64));
        }
    }
    Ok(report)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] crate::log::snapshot::SnapshotError),
    #[error("snapshot {path}: {error}")]
    Image {
        path: String,
        error: crate::sched::ImageError,
    },
    #[error("the newest snapshot is at sequence {snapshot}, but the log starts at {log_start}: the records between are gone")]
    LogBehindSnapshot { snapshot: Seq, log_start: Seq },
}

/// What start-up found: the snapshot it began from and what replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StartReport {
    pub snapshot: Option<(Seq, String)>,
    /// Damaged snapshots passed over (with repair only).
    pub skipped_snapshots: Vec<(String, String)>,
    pub replay: ReplayReport,
}

/// Start-up: the newest valid snapshot in `data`, then the log after it.
/// A damaged newest snapshot is refused unless `options.repair`, which falls
/// back to an older one (if the log still reaches back to it).
pub fn recover(
    data: &std::path::Path,
    store: &mut dyn LogStore,
    config: crate::sched::SchedulerConfig,
    options: ReplayOptions,
) -> Result<(Scheduler, StartReport), StartError> {
    use crate::log::snapshot::{self, SnapshotError};
    let _hold = crate::allocator::HoldFreedPages::start();
    let mut report = StartReport::default();
    let mut scheduler = Scheduler::new(config.clone());
    for (seq, path) in snapshot::list(data)? {
        let name = path.display().to_string();
        match snapshot::read(&path) {
            Ok(image) => {
                scheduler = Scheduler::from_image(config.clone(), image).map_err(|error| {
                    StartError::Image {
                        path: name.clone(),
                        error,
                    }
                })?;
                report.snapshot = Some((seq, name));
                break;
            }
            Err(error @ SnapshotError::NewerVersion { .. }) => return Err(error.into()),
            Err(error) if options.repair => {
                tracing::warn!(%error, "repair: passing over a damaged snapshot");
                report.skipped_snapshots.push((name, error.to_string()));
            }
            Err(error) => return Err(error.into()),
        }
    }
    let mut log_start = None;
    store.scan(0, &mut |key, _| {
        log_start = Some(key);
        false
    })?;
    if let Some(start) = log_start {
        if start > scheduler.last_seq() + 1 {
            return Err(StartError::LogBehindSnapshot {
                snapshot: scheduler.last_seq(),
                log_start: start,
            });
        }
    }
    report.replay = replay(&mut scheduler, store, options)?;
    Ok((scheduler, report))
}

/// What a snapshot covered and where its time went, for the log line.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotTaken {
    pub seq: Seq,
    /// Events replayed on top of the previous snapshot.
    pub events: u64,
    pub load_ms: u64,
    pub replay_ms: u64,
    pub write_ms: u64,
    pub trim_ms: u64,
    /// The snapshot file's size.
    pub bytes: u64,
}

/// Builds a snapshot at `upto` (a durable sequence) off the dispatch path:
/// the newest snapshot, plus the log's records up to `upto`, through the
/// same apply. Writes it, then trims the records it covers.
pub fn take_snapshot(
    data: &std::path::Path,
    reader: &mut dyn crate::log::LogReader,
    upto: Seq,
    config: crate::sched::SchedulerConfig,
) -> Result<SnapshotTaken, StartError> {
    use crate::log::snapshot;
    let ms = |since: std::time::Instant| since.elapsed().as_millis() as u64;
    let started = std::time::Instant::now();
    let mut scheduler = match snapshot::list(data)?.first() {
        Some((_, path)) => {
            Scheduler::from_image(config, snapshot::read(path)?).map_err(|error| {
                StartError::Image {
                    path: path.display().to_string(),
                    error,
                }
            })?
        }
        None => Scheduler::new(config),
    };
    let load_ms = ms(started);
    let replay_started = std::time::Instant::now();
    let first = scheduler.last_seq();
    let mut failure = None;
    reader.scan(0, &mut |key, bytes| {
        let (header, events) = match format::decode(bytes) {
            Ok(decoded) => decoded,
            Err(error) => {
                failure = Some(ReplayError::Corrupt {
                    seq: key,
                    error,
                    after: 0,
                });
                return false;
            }
        };
        if header.first_seq > upto {
            return false;
        }
        let expected = scheduler.last_seq() + 1;
        if header.last_seq() < expected {
            return true;
        }
        if header.first_seq > expected {
            failure = Some(ReplayError::Gap {
                expected,
                found: header.first_seq,
            });
            return false;
        }
        for event in &events[(expected - header.first_seq) as usize..] {
            scheduler.apply(event);
        }
        true
    })?;
    if let Some(error) = failure {
        return Err(error.into());
    }
    let seq = scheduler.last_seq();
    let replay_ms = ms(replay_started);
    let write_started = std::time::Instant::now();
    let path = snapshot::write(data, scheduler.image())?;
    let bytes = path.metadata().map_or(0, |metadata| metadata.len());
    let write_ms = ms(write_started);
    let trim_started = std::time::Instant::now();
    reader.remove_before(seq + 1)?;
    Ok(SnapshotTaken {
        seq,
        events: seq - first,
        load_ms,
        replay_ms,
        write_ms,
        trim_ms: ms(trim_started),
        bytes,
    })
}
