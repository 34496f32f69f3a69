//! An in-memory log for tests, with fault injection: it keeps what was
//! synced apart from what was only written, so a simulated crash loses
//! exactly the unsynced writes; it can tear the last record, flip a byte,
//! and fail a chosen write or sync.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::log::store::{LogReader, LogStore, StoreError, Syncer};
use crate::model::Seq;

#[derive(Clone, Debug)]
enum Change {
    Write(Seq, Vec<u8>),
    RemoveBefore(Seq),
    Remove(Seq),
}

#[derive(Debug, Default)]
struct State {
    /// What survives a crash.
    durable: BTreeMap<Seq, Vec<u8>>,
    /// Changes since the last sync, in order.
    unsynced: Vec<Change>,
    writes: u64,
    syncs: u64,
    fail_write_at: Option<u64>,
    fail_sync_at: Option<u64>,
}

impl State {
    /// What a reader sees: the durable records with the unsynced changes.
    fn visible(&self) -> BTreeMap<Seq, Vec<u8>> {
        let mut view = self.durable.clone();
        for change in &self.unsynced {
            apply(&mut view, change);
        }
        view
    }
}

fn apply(records: &mut BTreeMap<Seq, Vec<u8>>, change: &Change) {
    match change {
        Change::Write(seq, bytes) => {
            records.insert(*seq, bytes.clone());
        }
        Change::RemoveBefore(seq) => {
            let kept = records.split_off(seq);
            *records = kept;
        }
        Change::Remove(seq) => {
            records.remove(seq);
        }
    }
}

/// A handle on an in-memory log; clones share it.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A crash: a new store holding only what was synced.
    pub fn crash(&self) -> MemoryStore {
        let durable = self.lock().durable.clone();
        MemoryStore {
            state: Arc::new(Mutex::new(State {
                durable,
                ..State::default()
            })),
        }
    }

    /// A crash in the middle of writing: what was synced, plus the first
    /// unsynced record cut to `keep` bytes.
    pub fn crash_tearing(&self, keep: usize) -> MemoryStore {
        let state = self.lock();
        let mut durable = state.durable.clone();
        if let Some(Change::Write(seq, bytes)) = state
            .unsynced
            .iter()
            .find(|c| matches!(c, Change::Write(..)))
        {
            durable.insert(*seq, bytes[..keep.min(bytes.len())].to_vec());
        }
        MemoryStore {
            state: Arc::new(Mutex::new(State {
                durable,
                ..State::default()
            })),
        }
    }

    /// Flips one bit of the (durable) record stored under `seq`.
    pub fn flip_bit(&self, seq: Seq, byte: usize, bit: u8) {
        let mut state = self.lock();
        let record = state
            .durable
            .get_mut(&seq)
            .expect("no record at that sequence");
        record[byte] ^= 1 << bit;
    }

    /// Replaces the durable record under `seq`.
    pub fn put_durable(&self, seq: Seq, bytes: Vec<u8>) {
        self.lock().durable.insert(seq, bytes);
    }

    /// The `n`th write from now (0: the next one) fails.
    pub fn fail_write_in(&self, n: u64) {
        let mut state = self.lock();
        state.fail_write_at = Some(state.writes + n);
    }

    /// The `n`th sync from now (0: the next one) fails.
    pub fn fail_sync_in(&self, n: u64) {
        let mut state = self.lock();
        state.fail_sync_at = Some(state.syncs + n);
    }

    /// The durable records' first sequences.
    pub fn durable_keys(&self) -> Vec<Seq> {
        self.lock().durable.keys().copied().collect()
    }

    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }
}

impl LogReader for MemoryStore {
    fn scan(&self, from: Seq, visit: &mut dyn FnMut(Seq, &[u8]) -> bool) -> Result<(), StoreError> {
        let view = self.lock().visible();
        for (&seq, bytes) in view.range(from..) {
            if !visit(seq, bytes) {
                break;
            }
        }
        Ok(())
    }

    fn remove_before(&mut self, seq: Seq) -> Result<(), StoreError> {
        self.lock().unsynced.push(Change::RemoveBefore(seq));
        Ok(())
    }
}

impl LogStore for MemoryStore {
    fn write(&mut self, first_seq: Seq, record: &[u8]) -> Result<(), StoreError> {
        let mut state = self.lock();
        let n = state.writes;
        state.writes += 1;
        if state.fail_write_at == Some(n) {
            return Err(StoreError::Write {
                seq: first_seq,
                reason: "injected write failure".into(),
            });
        }
        state
            .unsynced
            .push(Change::Write(first_seq, record.to_vec()));
        Ok(())
    }

    fn remove(&mut self, seq: Seq) -> Result<(), StoreError> {
        self.lock().unsynced.push(Change::Remove(seq));
        Ok(())
    }

    fn syncer(&mut self) -> Box<dyn Syncer> {
        Box::new(self.clone())
    }

    fn reader(&self) -> Box<dyn LogReader> {
        Box::new(self.clone())
    }
}

impl Syncer for MemoryStore {
    fn sync(&mut self) -> Result<(), StoreError> {
        let mut state = self.lock();
        let n = state.syncs;
        state.syncs += 1;
        if state.fail_sync_at == Some(n) {
            return Err(StoreError::Sync {
                reason: "injected sync failure".into(),
            });
        }
        let changes = std::mem::take(&mut state.unsynced);
        for change in &changes {
            apply(&mut state.durable, change);
        }
        Ok(())
    }
}
