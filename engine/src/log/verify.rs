//! Read-only inspection of a log: every record's checksum, the sequence's
//! continuity, and the snapshots beside it. Changes nothing (unlike
//! start-up, which cuts a torn tail).

use crate::log::format::{self, DecodeError};
use crate::log::snapshot;
use crate::log::store::{LogReader, StoreError};
use crate::model::Seq;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A record fails its checks.
    Damaged { seq: Seq, error: String },
    /// Records are missing between two sequences.
    Gap { expected: Seq, found: Seq },
    /// A record is stored under another sequence than its header says.
    Misplaced { key: Seq, first_seq: Seq },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Damaged { seq, error } => {
                write!(f, "record at sequence {seq} is damaged: {error}")
            }
            Finding::Gap { expected, found } => {
                write!(f, "gap: expected sequence {expected}, found {found}")
            }
            Finding::Misplaced { key, first_seq } => {
                write!(
                    f,
                    "record stored under {key} starts at sequence {first_seq}"
                )
            }
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogSummary {
    pub records: u64,
    pub events: u64,
    pub bytes: u64,
    pub first_seq: Option<Seq>,
    pub last_seq: Option<Seq>,
    pub findings: Vec<Finding>,
}

/// Checks every record of the log.
pub fn verify(reader: &dyn LogReader) -> Result<LogSummary, StoreError> {
    let mut summary = LogSummary::default();
    let mut expected: Option<Seq> = None;
    reader.scan(0, &mut |key, bytes| {
        summary.records += 1;
        summary.bytes += bytes.len() as u64;
        match format::check(bytes) {
            Ok(header) => {
                if header.first_seq != key {
                    summary.findings.push(Finding::Misplaced {
                        key,
                        first_seq: header.first_seq,
                    });
                }
                if let Some(expected) = expected {
                    if header.first_seq != expected {
                        summary.findings.push(Finding::Gap {
                            expected,
                            found: header.first_seq,
                        });
                    }
                }
                if let Err(error) = format::decode(bytes) {
                    summary.findings.push(Finding::Damaged {
                        seq: key,
                        error: error.to_string(),
                    });
                }
                summary.first_seq.get_or_insert(header.first_seq);
                summary.last_seq = Some(header.last_seq());
                summary.events += u64::from(header.count);
                expected = Some(header.last_seq() + 1);
            }
            Err(error) => {
                summary.findings.push(Finding::Damaged {
                    seq: key,
                    error: error.to_string(),
                });
                expected = None;
            }
        }
        true
    })?;
    Ok(summary)
}

/// One record, decoded, for printing.
pub fn records(
    reader: &dyn LogReader,
    from: Seq,
    to: Seq,
    visit: &mut dyn FnMut(Result<Vec<crate::sched::Event>, (Seq, DecodeError)>) -> bool,
) -> Result<(), StoreError> {
    // A record holding `from` may start before it.
    let mut start = 0;
    reader.scan(0, &mut |key, _| {
        if key <= from {
            start = key;
            true
        } else {
            false
        }
    })?;
    reader.scan(start, &mut |key, bytes| {
        if key > to {
            return false;
        }
        match format::decode(bytes) {
            Ok((_, events)) => {
                let events: Vec<_> = events
                    .into_iter()
                    .filter(|e| e.seq >= from && e.seq <= to)
                    .collect();
                events.is_empty() || visit(Ok(events))
            }
            Err(error) => visit(Err((key, error))),
        }
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    pub seq: Seq,
    pub path: String,
    pub bytes: u64,
    /// Jobs, runs, queues and agents it holds, or why it cannot be read.
    pub contents: Result<(usize, usize, usize, usize), String>,
}

/// The snapshots in a data folder, newest first, each checked.
pub fn snapshots(data: &std::path::Path) -> Result<Vec<SnapshotSummary>, snapshot::SnapshotError> {
    let mut found = Vec::new();
    for (seq, path) in snapshot::list(data)? {
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let contents = snapshot::read(&path)
            .map(|image| {
                (
                    image.jobs.len(),
                    image.runs.len(),
                    image.queues.len(),
                    image.agents.len(),
                )
            })
            .map_err(|e| e.to_string());
        found.push(SnapshotSummary {
            seq,
            path: path.display().to_string(),
            bytes,
            contents,
        });
    }
    Ok(found)
}
