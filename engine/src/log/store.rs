//! The storage seam: where records live. The engine writes records through
//! a [`LogStore`] and makes them durable through its [`Syncer`], which runs
//! on another thread so the next batch fills while this one syncs.
//!
//! Two implementations: [`crate::log::SledStore`] (the product) and
//! [`crate::log::MemoryStore`] (tests: drops unsynced writes on a simulated
//! crash, tears or corrupts records, fails a write or a sync on request).

use crate::model::Seq;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening the log at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("writing the record at sequence {seq}: {reason}")]
    Write { seq: Seq, reason: String },
    #[error("making the log durable: {reason}")]
    Sync { reason: String },
    #[error("reading the log: {reason}")]
    Read { reason: String },
    #[error("removing records before sequence {seq}: {reason}")]
    Truncate { seq: Seq, reason: String },
    #[error("removing the record at sequence {seq}: {reason}")]
    Remove { seq: Seq, reason: String },
}

/// Makes everything written before the call durable. Lives on the syncing
/// thread; exactly one exists per store.
pub trait Syncer: Send {
    fn sync(&mut self) -> Result<(), StoreError>;
}

/// Reads and trims the log; may run on its own thread (the snapshotter)
/// while the writer writes.
pub trait LogReader: Send {
    /// Visits every record whose first sequence is at least `from`, in
    /// order, until `visit` returns `false`.
    fn scan(&self, from: Seq, visit: &mut dyn FnMut(Seq, &[u8]) -> bool) -> Result<(), StoreError>;

    /// Removes every record whose first sequence is below `seq`. Durable at
    /// the next sync.
    fn remove_before(&mut self, seq: Seq) -> Result<(), StoreError>;
}

pub trait LogStore: LogReader {
    /// Stores a record under its first sequence. Not durable until a later
    /// [`Syncer::sync`] returns.
    fn write(&mut self, first_seq: Seq, record: &[u8]) -> Result<(), StoreError>;

    /// Removes the record stored under `seq` (a torn tail being cut off).
    fn remove(&mut self, seq: Seq) -> Result<(), StoreError>;

    /// The syncer for this store. Called once, by the engine.
    fn syncer(&mut self) -> Box<dyn Syncer>;

    /// Another handle for reading and trimming, for another thread.
    fn reader(&self) -> Box<dyn LogReader>;
}
