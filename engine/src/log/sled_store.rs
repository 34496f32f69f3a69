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
        self.records
            .insert(first_seq.to_be_bytes(), record)
            .map(|_| ())
            .map_err(|e| StoreError::Write {
                seq: first_seq,
                reason: e.to_string(),
            })
    }

    fn remove(&mut self, seq: Seq) -> Result<(), StoreError> {
        self.records
            .remove(seq.to_be_bytes())
            .map(|_| ())
            .map_err(|e| StoreError::Remove {
                seq,
                reason: e.to_string(),
            })
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
    for entry in records.range(from.to_be_bytes()..) {
        let (key, value) = entry.map_err(|e| StoreError::Read {
            reason: e.to_string(),
        })?;
        let key: [u8; 8] = key.as_ref().try_into().map_err(|_| StoreError::Read {
            reason: format!("a record key is {} bytes, not 8", key.len()),
        })?;
        if !visit(u64::from_be_bytes(key), &value) {
            break;
        }
    }
    Ok(())
}

fn remove_before_in(records: &sled::Tree, seq: Seq) -> Result<(), StoreError> {
    let truncate_error = |e: sled::Error| StoreError::Truncate {
        seq,
        reason: e.to_string(),
    };
    let mut batch = sled::Batch::default();
    for key in records.range(..seq.to_be_bytes()).keys() {
        batch.remove(key.map_err(truncate_error)?);
    }
    records.apply_batch(batch).map_err(truncate_error)
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
