//! The log in sled 0.34 (pinned to 0.34.7).
//!
//! sled's own flush ends in `sync_file_range`, which does not flush the
//! drive's write cache; its issues also report databases that would not open
//! after an unclean stop and deadlocks with concurrent `flush_async`. So:
//! - one record per group-commit batch, so sled's per-insert cost is paid per
//!   batch, not per event;
//! - sled's background flusher is off; the engine's single syncer thread is
//!   the only caller of `flush`, and after it fdatasyncs sled's main file,
//!   every file it has not synced before and every folder whose entries
//!   changed, so `sync` reaches stable storage;
//! - a panic inside sled's open becomes a clear error;
//! - records carry our own checksums and gap-free sequences (see `format`),
//!   so replay proves it saw everything.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::log::store::{LogReader, LogStore, StoreError, Syncer};
use crate::model::Seq;

const RECORDS_TREE: &str = "records";
/// Largest value stored in one piece. sled keeps up to 17 values in a
/// leaf and writes a leaf larger than a quarter of its 512 KiB segment as
/// a blob: a file of its own, created and fsynced each time. A larger
/// record is stored in parts under (sequence, part) keys, so no leaf ever
/// becomes a blob.
const PART_BYTES_MAX: usize = 6 << 10;
/// sled 0.34's one file of log segments, in its folder.
const MAIN_FILE: &str = "db";
/// How long an open waits for sled's lock on the folder.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    syncer_taken: bool,
}

impl SledStore {
    /// Opens (or creates) the log in the folder `path`.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(path).map_err(|e| open_error(e.to_string()))?;
        let config = sled::Config::new()
            .path(path.join("log"))
            .flush_every_ms(None);
        // sled releases its file lock when the last of its threads lets go
        // of a closed database, a moment after the close: a reopen in the
        // same process (a restart, a repair) waits for it, briefly.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            // sled 0.34 can panic on a damaged database instead of failing.
            let opened = catch_unwind(AssertUnwindSafe(|| config.open())).map_err(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".to_string());
                open_error(format!("sled panicked while opening the database: {what}"))
            })?;
            match opened {
                Ok(db) => break db,
                Err(e) if lock_held(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) if lock_held(&e) => {
                    return Err(open_error(format!(
                        "another process has the log open (its lock was held for {} s): {e}",
                        LOCK_WAIT.as_secs()
                    )))
                }
                Err(e) => return Err(open_error(e.to_string())),
            }
        };
        let records = db
            .open_tree(RECORDS_TREE)
            .map_err(|e| open_error(e.to_string()))?;
        Ok(SledStore {
            path: path.to_path_buf(),
            db,
            records,
            syncer_taken: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes sled occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

impl LogReader for SledStore {
    fn scan(&self, from: Seq, visit: &mut dyn FnMut(Seq, &[u8]) -> bool) -> Result<(), StoreError> {
        scan_tree(&self.records, from, visit)
    }

    fn remove_before(&mut self, seq: Seq) -> Result<(), StoreError> {
        remove_before_in(&self.records, seq)
    }
}

impl LogStore for SledStore {
    fn write(&mut self, first_seq: Seq, record: &[u8]) -> Result<(), StoreError> {
        let write_error = |e: sled::Error| StoreError::Write {
            seq: first_seq,
            reason: e.to_string(),
        };
        if record.len() <= PART_BYTES_MAX {
            return self
                .records
                .insert(first_seq.to_be_bytes(), record)
                .map(|_| ())
                .map_err(write_error);
        }
        // sled applies a batch whole or not at all, after a crash too.
        let mut batch = sled::Batch::default();
        for (part, bytes) in record.chunks(PART_BYTES_MAX).enumerate() {
            let part = u32::try_from(part).map_err(|_| StoreError::Write {
                seq: first_seq,
                reason: format!("a record of {} bytes has too many parts", record.len()),
            })?;
            batch.insert(&part_key(first_seq, part)[..], bytes);
        }
        self.records.apply_batch(batch).map_err(write_error)
    }

    fn remove(&mut self, seq: Seq) -> Result<(), StoreError> {
        let remove_error = |e: sled::Error| StoreError::Remove {
            seq,
            reason: e.to_string(),
        };
        // The record's key and every part key that starts with it.
        let mut batch = sled::Batch::default();
        let (first, last) = (seq.to_be_bytes(), part_key(seq, u32::MAX));
        for key in self.records.range(&first[..]..=&last[..]).keys() {
            batch.remove(key.map_err(remove_error)?);
        }
        self.records.apply_batch(batch).map_err(remove_error)
    }

    fn syncer(&mut self) -> Box<dyn Syncer> {
        assert!(!self.syncer_taken, "a store has exactly one syncer");
        self.syncer_taken = true;
        Box::new(SledSyncer {
            db: self.db.clone(),
            folder: self.path.join("log"),
            main_file: None,
            synced_files: HashMap::new(),
            synced_listings: HashMap::new(),
        })
    }

    fn reader(&self) -> Box<dyn LogReader> {
        Box::new(SledReader {
            records: self.records.clone(),
        })
    }
}

/// sled says a folder is locked only in its message (kind `Other`).
fn lock_held(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(e) if e.to_string().starts_with("could not acquire lock"))
}

struct SledReader {
    records: sled::Tree,
}

impl LogReader for SledReader {
    fn scan(&self, from: Seq, visit: &mut dyn FnMut(Seq, &[u8]) -> bool) -> Result<(), StoreError> {
        scan_tree(&self.records, from, visit)
    }

    fn remove_before(&mut self, seq: Seq) -> Result<(), StoreError> {
        remove_before_in(&self.records, seq)
    }
}

fn scan_tree(
    records: &sled::Tree,
    from: Seq,
    visit: &mut dyn FnMut(Seq, &[u8]) -> bool,
) -> Result<(), StoreError> {
    let read_error = |e: sled::Error| StoreError::Read {
        reason: e.to_string(),
    };
    // A record stored in parts, being put together: its sequence and bytes.
    // Its checksum, checked by the caller, proves no part is missing.
    let mut parts: Option<(Seq, Vec<u8>)> = None;
    for entry in records.range(from.to_be_bytes()..) {
        let (key, value) = entry.map_err(read_error)?;
        let (seq, is_part) = match key.len() {
            8 => (key_seq(&key), false),
            12 => (key_seq(&key), true),
            length => {
                return Err(StoreError::Read {
                    reason: format!("a record key is {length} bytes, not 8 or 12"),
                })
            }
        };
        if let Some((pending, _)) = &parts {
            if !is_part || *pending != seq {
                let (pending, bytes) = parts.take().expect("checked just above");
                if !visit(pending, &bytes) {
                    return Ok(());
                }
            }
        }
        if is_part {
            parts
                .get_or_insert_with(|| (seq, Vec::new()))
                .1
                .extend_from_slice(&value);
        } else if !visit(seq, &value) {
            return Ok(());
        }
    }
    if let Some((seq, bytes)) = parts {
        visit(seq, &bytes);
    }
    Ok(())
}

/// The sequence a key starts with (the key is 8 or 12 bytes).
fn key_seq(key: &[u8]) -> Seq {
    let mut seq = [0; 8];
    seq.copy_from_slice(&key[..8]);
    Seq::from_be_bytes(seq)
}

/// The key of part `part` of the record at `seq`: after the record's own
/// key and before the next record's, in sled's byte order.
fn part_key(seq: Seq, part: u32) -> [u8; 12] {
    let mut key = [0; 12];
    key[..8].copy_from_slice(&seq.to_be_bytes());
    key[8..].copy_from_slice(&part.to_be_bytes());
    key
}

fn remove_before_in(records: &sled::Tree, seq: Seq) -> Result<(), StoreError> {
    let truncate_error = |e: sled::Error| StoreError::Truncate {
        seq,
        reason: e.to_string(),
    };
    // One key at a time, oldest first, not in batches: sled 0.34 applies
    // every batch under one process-wide write lock that stops all other
    // writes, the writer's included (a trim after a 300,000-event snapshot
    // took 64 to 110 ms in batches of 1,024 keys, each batch holding that
    // lock). A single `remove` takes the lock shared, as the writer's
    // inserts do, and the whole trim took no longer (39 to 123 ms). Any
    // prefix of a trim is a valid log (replay starts after the snapshot),
    // so nothing needs the keys removed together.
    for key in records.range(..seq.to_be_bytes()).keys() {
        records
            .remove(key.map_err(truncate_error)?)
            .map_err(truncate_error)?;
    }
    Ok(())
}

struct SledSyncer {
    db: sled::Db,
    folder: PathBuf,
    /// sled's main file, which it writes in place: synced every time.
    main_file: Option<File>,
    /// Every other file already made durable, with its inode. sled writes
    /// each of those once (`conf` at creation; its snapshots and blobs as
    /// new files, renamed into place), so each is synced once: the cost of
    /// a sync does not grow with the number of files.
    synced_files: HashMap<PathBuf, u64>,
    /// Each folder's entries (name, inode) as of its last fsync: a folder
    /// is synced again only when they change.
    synced_listings: HashMap<PathBuf, Vec<(OsString, u64)>>,
}

impl Syncer for SledSyncer {
    fn sync(&mut self) -> Result<(), StoreError> {
        let sync_error = |what: &str, e: std::io::Error| StoreError::Sync {
            reason: format!("{what}: {e}"),
        };
        self.db.flush().map_err(|e| StoreError::Sync {
            reason: e.to_string(),
        })?;
        // sled's flush stops at sync_file_range: make it reach the disk.
        if self.main_file.is_none() {
            let main = File::open(self.folder.join(MAIN_FILE))
                .map_err(|e| sync_error("opening sled's main file", e))?;
            self.main_file = Some(main);
        }
        if let Some(main) = &self.main_file {
            main.sync_data()
                .map_err(|e| sync_error("fdatasync of sled's main file", e))?;
        }
        let mut present = HashMap::new();
        let folder = self.folder.clone();
        self.sync_folder(&folder, &mut present)
            .map_err(|e| sync_error("fdatasync of the log files", e))?;
        // Forget files sled deleted.
        self.synced_files = present;
        Ok(())
    }
}

impl SledSyncer {
    /// Syncs the files under `folder` not synced before (by path and
    /// inode), then the folder itself if its entries changed, so new files
    /// are reachable after a crash. A file that vanishes between listing
    /// and opening was deleted by sled (a replaced blob or snapshot): it
    /// holds nothing to make durable.
    fn sync_folder(
        &mut self,
        folder: &Path,
        present: &mut HashMap<PathBuf, u64>,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::DirEntryExt;
        let mut listing = Vec::new();
        for entry in std::fs::read_dir(folder)? {
            let entry = entry?;
            let path = entry.path();
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            listing.push((entry.file_name(), entry.ino()));
            if kind.is_dir() {
                self.sync_folder(&path, present)?;
            } else if kind.is_file() && path != self.folder.join(MAIN_FILE) {
                if self.synced_files.get(&path) != Some(&entry.ino()) {
                    match File::open(&path) {
                        Ok(file) => file.sync_data()?,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                }
                present.insert(path, entry.ino());
            }
        }
        listing.sort_unstable();
        if self.synced_listings.get(folder) != Some(&listing) {
            File::open(folder)?.sync_all()?;
            self.synced_listings.insert(folder.to_path_buf(), listing);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each record as (sequence, length, checksum): short when it fails.
    fn records(store: &SledStore, from: Seq) -> Vec<(Seq, usize, u32)> {
        let mut seen = Vec::new();
        store
            .scan(from, &mut |seq, bytes| {
                seen.push((seq, bytes.len(), crc32c::crc32c(bytes)));
                true
            })
            .unwrap();
        seen
    }

    /// Bytes that differ at every position, so a part out of place shows.
    fn record(length: usize, salt: u8) -> Vec<u8> {
        (0..length).map(|i| (i % 251) as u8 ^ salt).collect()
    }

    #[test]
    fn large_records_are_stored_in_parts_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledStore::open(dir.path()).unwrap();
        let mut syncer = store.syncer();
        let sizes = [10, PART_BYTES_MAX, PART_BYTES_MAX + 1, 100_000, 3, 1 << 20];
        let mut expected = Vec::new();
        let mut seq = 1;
        for (i, &size) in sizes.iter().enumerate() {
            let bytes = record(size, i as u8);
            store.write(seq, &bytes).unwrap();
            expected.push((seq, bytes.len(), crc32c::crc32c(&bytes)));
            seq += 1_000;
        }
        syncer.sync().unwrap();
        assert_eq!(records(&store, 0), expected);
        // From the start of a record in parts, and past it.
        assert_eq!(records(&store, 3_001), expected[3..]);
        assert_eq!(records(&store, 3_002), expected[4..]);
        // A visit that stops at a record in parts.
        let mut visited = 0;
        store
            .scan(0, &mut |seq, _| {
                visited += 1;
                seq < 2_001
            })
            .unwrap();
        assert_eq!(visited, 3);
        // Nothing became a blob file.
        let blobs = std::fs::read_dir(dir.path().join("log/blobs")).unwrap();
        assert_eq!(blobs.count(), 0);

        // Removing a record removes all its parts, and only them.
        store.remove(3_001).unwrap();
        let mut left = expected.clone();
        left.remove(3);
        assert_eq!(records(&store, 0), left);
        store.remove_before(5_001).unwrap();
        assert_eq!(records(&store, 0), left[4..]);
        drop(syncer);
        drop(store);

        let reopened = SledStore::open(dir.path()).unwrap();
        assert_eq!(records(&reopened, 0), left[4..]);
    }

    #[test]
    fn a_trim_of_many_records_removes_everything_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledStore::open(dir.path()).unwrap();
        let count = 3_079;
        for seq in 1..=count {
            store.write(seq, &seq.to_le_bytes()).unwrap();
        }
        store.write(count + 1, &record(20_000, 1)).unwrap();
        store.remove_before(count).unwrap();
        let left: Vec<Seq> = records(&store, 0).iter().map(|r| r.0).collect();
        assert_eq!(left, [count, count + 1]);
    }
}
