//! The scheduler's tables: queues, runs, jobs, agents and timers, as the
//! scheduler keeps them in memory. Plain records; the rules that change them
//! live in `apply`.

use std::collections::BTreeSet;

use crate::model::{
    AgentId, JobId, JobOptions, Outcome, Pair, QueueConfig, RunId, Seq, StopReason, TimeMs,
};
use crate::sched::index::{ClassId, JobKey, LabelSetId, QueueId, TagSetId};

#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) config: QueueConfig,
    pub(crate) waiting: u64,
    pub(crate) running: u64,
    /// Jobs held back by a `wait` step.
    pub(crate) held: u64,
    pub(crate) submitted_total: u64,
    pub(crate) dispatched_total: u64,
    pub(crate) finished_total: u64,
}

impl Queue {
    pub(crate) fn new(config: QueueConfig) -> Queue {
        Queue {
            config,
            waiting: 0,
            running: 0,
            held: 0,
            submitted_total: 0,
            dispatched_total: 0,
            finished_total: 0,
        }
    }

    /// What counts against the depth limit.
    pub(crate) fn depth_count(&self) -> u64 {
        self.waiting + self.running + self.held
    }
}

#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) queue: QueueId,
    pub(crate) priority: i32,
    /// The run's defaults for jobs appended later; `None` when empty, which
    /// is common and saves memory per run.
    pub(crate) defaults: Option<Box<JobOptions>>,
    /// The sequence of its submission: every job of the run inherits it.
    pub(crate) position: Seq,
    pub(crate) submitted_at: TimeMs,
    /// Its jobs in upload order.
    pub(crate) jobs: Vec<JobId>,
    /// How many jobs the submission itself created.
    pub(crate) initial_jobs: u32,
    pub(crate) unfinished: u32,
    /// From its first dispatch until every job of it is finished.
    pub(crate) active: bool,
    /// The stage of the last job (each `wait` step starts a new stage).
    pub(crate) last_stage: u32,
    /// Jobs `jobs[..released]` have passed their `wait` steps.
    pub(crate) released: u32,
    /// Released jobs not finished yet; the next stage starts at zero.
    pub(crate) released_unfinished: u32,
    /// The last stage whose jobs were released: jobs appended to it are
    /// released at once.
    pub(crate) open_stage: Option<u32>,
    /// The earliest stage in which a job ended without success: every
    /// later stage is skipped.
    pub(crate) failed_stage: Option<u32>,
    pub(crate) idempotency_key: Option<String>,
    /// When its last job finished, while every job of it is finished.
    pub(crate) finished_at: Option<TimeMs>,
}

/// What an idempotency key remembers of the submission that first used it:
/// enough to answer a retry, even after the run itself is forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyRecord {
    pub(crate) run: RunId,
    /// A hash of the request, so a different request under the same key
    /// is refused.
    pub(crate) hash: u64,
    pub(crate) first_job: JobId,
    pub(crate) count: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobState {
    /// Waiting for earlier stages of its run.
    Held,
    Waiting {
        class: ClassId,
    },
    Running {
        agent: AgentId,
        stop: Option<StopReason>,
    },
    Finished {
        outcome: Outcome,
        exit_code: Option<i32>,
        at: TimeMs,
    },
}

impl JobState {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            JobState::Held => "held",
            JobState::Waiting { .. } => "waiting",
            JobState::Running { .. } => "running",
            JobState::Finished { .. } => "finished",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) run: crate::model::RunId,
    pub(crate) key: JobKey,
    pub(crate) queue: QueueId,
    pub(crate) tags: TagSetId,
    pub(crate) labels: LabelSetId,
    pub(crate) stage: u32,
    pub(crate) state: JobState,
    /// Dispatches so far; the current attempt while running.
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) own_priority: bool,
    pub(crate) submitted_at: TimeMs,
    pub(crate) waiting_since: TimeMs,
    pub(crate) max_queued_time_ms: Option<u64>,
    pub(crate) deadline_at: Option<TimeMs>,
    pub(crate) payload: Box<[u8]>,
}

impl Job {
    pub(crate) fn id(&self) -> JobId {
        self.key.job
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.state, JobState::Finished { .. })
    }
}

/// Records per chunk of a [`Table`]: a power of two, big enough that the
/// chunk list stays short (1,000,000 jobs: 245 chunks), small enough that
/// adding a chunk never stalls the single writer.
const CHUNK: usize = 4_096;

/// An id handed out densely, in order (jobs, runs).
pub(crate) trait DenseId: Copy + std::fmt::Display {
    fn from_u64(id: u64) -> Self;
    fn to_u64(self) -> u64;
}

impl DenseId for JobId {
    fn from_u64(id: u64) -> JobId {
        JobId(id)
    }
    fn to_u64(self) -> u64 {
        self.0
    }
}

impl DenseId for RunId {
    fn from_u64(id: u64) -> RunId {
        RunId(id)
    }
    fn to_u64(self) -> u64 {
        self.0
    }
}

/// Records by id. Ids are handed out densely and in order, so fixed-size
/// chunks indexed by `id - first` beat a hash map in memory and speed;
/// unlike one growing buffer (or a hash map's rehash), a new chunk never
/// copies the records already there, so the writer never stalls on growth.
///
/// A record can be removed (a finished run forgotten): its id stays taken,
/// and a chunk whose every record is gone is freed, so memory follows the
/// records kept, not every id ever handed out.
#[derive(Debug)]
pub(crate) struct Table<Id, T> {
    /// The id of the first slot of `chunks[0]`.
    first: u64,
    /// The id the next record will have.
    next: u64,
    chunks: std::collections::VecDeque<Chunk<T>>,
    /// Records present.
    len: usize,
    id: std::marker::PhantomData<Id>,
}

#[derive(Debug)]
struct Chunk<T> {
    /// Up to [`CHUNK`] slots; a removed record leaves `None`.
    slots: Vec<Option<T>>,
    /// Slots holding a record.
    live: usize,
}

pub(crate) type JobTable = Table<JobId, Job>;
pub(crate) type RunTable = Table<RunId, Run>;

impl<Id: DenseId, T> Table<Id, T> {
    pub(crate) fn new() -> Table<Id, T> {
        Table::starting_at(Id::from_u64(1))
    }

    /// A table whose first record will have id `first` (after a snapshot).
    pub(crate) fn starting_at(first: Id) -> Table<Id, T> {
        Table {
            first: first.to_u64(),
            next: first.to_u64(),
            chunks: std::collections::VecDeque::new(),
            len: 0,
            id: std::marker::PhantomData,
        }
    }

    pub(crate) fn next_id(&self) -> Id {
        Id::from_u64(self.next)
    }

    /// Adds the record of `id`, which must be the next id.
    pub(crate) fn push(&mut self, id: Id, record: T) {
        assert_eq!(id.to_u64(), self.next, "records are added in id order");
        let slot = (self.next - self.first) as usize;
        if slot / CHUNK == self.chunks.len() {
            self.chunks.push_back(Chunk {
                slots: Vec::with_capacity(CHUNK),
                live: 0,
            });
        }
        let chunk = self.chunks.back_mut().expect("a chunk with room");
        // A chunk `skip_to` made has no room yet: take it whole, so it is
        // never regrown (and copied) record by record.
        chunk.slots.reserve_exact(CHUNK - chunk.slots.len());
        // Ids skipped by `skip_to` in this chunk hold no record.
        chunk.slots.resize_with(slot % CHUNK, || None);
        chunk.slots.push(Some(record));
        chunk.live += 1;
        self.next += 1;
        self.len += 1;
    }

    /// Hands out every id before `next` without a record (restoring a
    /// table whose records there were removed).
    pub(crate) fn skip_to(&mut self, next: Id) {
        assert!(next.to_u64() >= self.next, "ids are never handed out twice");
        let chunks_needed = (next.to_u64() - self.first).div_ceil(CHUNK as u64) as usize;
        while self.chunks.len() < chunks_needed {
            self.chunks.push_back(Chunk {
                slots: Vec::new(),
                live: 0,
            });
        }
        let last = self.chunks.len().saturating_sub(1);
        let first_touched = ((self.next - self.first) as usize / CHUNK).min(last);
        self.next = next.to_u64();
        for chunk in first_touched..self.chunks.len() {
            self.release(chunk);
        }
        self.pop_released();
    }

    /// Removes the record of `id`, which must be present. Its id is not
    /// handed out again.
    pub(crate) fn remove(&mut self, id: Id) -> T {
        let slot = self
            .slot(id)
            .unwrap_or_else(|| panic!("{id} is not in its table"));
        let chunk = &mut self.chunks[slot / CHUNK];
        let record = chunk.slots[slot % CHUNK]
            .take()
            .unwrap_or_else(|| panic!("{id} is not in its table"));
        chunk.live -= 1;
        self.len -= 1;
        self.release(slot / CHUNK);
        self.pop_released();
        record
    }

    /// Frees chunk `c`'s memory if it holds no record and never will again
    /// (every id in it is handed out).
    fn release(&mut self, c: usize) {
        let handed_out = self.next - self.first;
        let chunk = &mut self.chunks[c];
        if chunk.live == 0 && ((c + 1) * CHUNK) as u64 <= handed_out {
            chunk.slots = Vec::new();
        }
    }

    /// Drops freed chunks from the front, so the chunk list follows the
    /// oldest record kept.
    fn pop_released(&mut self) {
        while self.chunks.front().is_some_and(|chunk| chunk.live == 0)
            && self.next - self.first >= CHUNK as u64
        {
            self.chunks.pop_front();
            self.first += CHUNK as u64;
        }
    }

    fn slot(&self, id: Id) -> Option<usize> {
        let slot = usize::try_from(id.to_u64().checked_sub(self.first)?).ok()?;
        (id.to_u64() < self.next).then_some(slot)
    }

    pub(crate) fn get(&self, id: Id) -> Option<&T> {
        let slot = self.slot(id)?;
        self.chunks[slot / CHUNK].slots.get(slot % CHUNK)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: Id) -> Option<&mut T> {
        let slot = self.slot(id)?;
        self.chunks[slot / CHUNK]
            .slots
            .get_mut(slot % CHUNK)?
            .as_mut()
    }

    pub(crate) fn contains(&self, id: Id) -> bool {
        self.get(id).is_some()
    }

    /// The record of `id`, or the error for an id never handed out
    /// (`unknown`) or one whose record was removed (`removed`).
    pub(crate) fn find<E>(
        &self,
        id: Id,
        unknown: impl FnOnce(Id) -> E,
        removed: impl FnOnce(Id) -> E,
    ) -> Result<&T, E> {
        match self.get(id) {
            Some(record) => Ok(record),
            None if self.was_removed(id) => Err(removed(id)),
            None => Err(unknown(id)),
        }
    }

    /// Whether `id` was handed out and its record removed since.
    pub(crate) fn was_removed(&self, id: Id) -> bool {
        id.to_u64() >= 1 && id.to_u64() < self.next && !self.contains(id)
    }

    /// The record, which must exist: for ids the scheduler itself validated.
    pub(crate) fn at(&self, id: Id) -> &T {
        self.get(id)
            .unwrap_or_else(|| panic!("{id} is not in its table"))
    }

    pub(crate) fn at_mut(&mut self, id: Id) -> &mut T {
        self.get_mut(id)
            .unwrap_or_else(|| panic!("{id} is not in its table"))
    }

    /// The records in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.slots.iter().flatten())
    }

    /// The records with their ids, in id order.
    pub(crate) fn iter_ids(&self) -> impl Iterator<Item = (Id, &T)> {
        let first = self.first;
        self.chunks.iter().enumerate().flat_map(move |(c, chunk)| {
            chunk
                .slots
                .iter()
                .enumerate()
                .filter_map(move |(i, record)| {
                    let id = first + (c * CHUNK + i) as u64;
                    record.as_ref().map(|record| (Id::from_u64(id), record))
                })
        })
    }

    /// Records present.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[derive(Debug)]
pub(crate) struct Agent {
    pub(crate) name: String,
    pub(crate) pools: Vec<String>,
    pub(crate) labels: Vec<Pair>,
    pub(crate) slots: u32,
    /// Jobs leased to it, in dispatch order.
    pub(crate) running: Vec<JobId>,
    /// Jobs it still wants (its standing request).
    pub(crate) credit: u32,
    /// Registered and its lease not expired.
    pub(crate) present: bool,
    pub(crate) lease_until: TimeMs,
    /// Its entry in the lease timers, while it holds jobs or a request.
    pub(crate) lease_timer: Option<TimeMs>,
    /// Its place among agents waiting for work, while it waits.
    pub(crate) hungry_since: Option<Seq>,
}

impl Agent {
    pub(crate) fn wants_work(&self) -> bool {
        self.present && self.credit > 0 && (self.running.len() as u64) < u64::from(self.slots)
    }
}

/// Everything due at a time: queue timeouts, deadlines, leases.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    pub(crate) queued: BTreeSet<(TimeMs, JobId)>,
    pub(crate) deadlines: BTreeSet<(TimeMs, JobId)>,
    pub(crate) leases: BTreeSet<(TimeMs, AgentId)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    type Ids = Table<RunId, u64>;

    fn filled(count: u64) -> Ids {
        let mut table = Ids::new();
        for id in 1..=count {
            table.push(RunId(id), id);
        }
        table
    }

    /// A removed record leaves its id taken; a chunk whose every record is
    /// gone is freed, and freed chunks at the front are dropped.
    #[test]
    fn removing_records_frees_whole_chunks_and_keeps_ids() {
        let chunk = CHUNK as u64;
        let mut table = filled(3 * chunk + 5);
        for id in 1..=chunk {
            assert_eq!(table.remove(RunId(id)), id);
        }
        assert_eq!(table.chunks.len(), 3, "the emptied first chunk is dropped");
        assert_eq!(table.first, 1 + chunk);
        // Empty the third chunk: freed in place, kept for the indexing.
        for id in 2 * chunk + 1..=3 * chunk {
            table.remove(RunId(id));
        }
        assert_eq!(table.chunks[1].slots.capacity(), 0);
        assert_eq!(table.len(), chunk as usize + 5);
        assert!(table.was_removed(RunId(1)) && table.was_removed(RunId(2 * chunk + 1)));
        assert!(!table.was_removed(RunId(chunk + 1)));
        assert!(!table.was_removed(RunId(3 * chunk + 6)), "never handed out");
        assert!(table.get(RunId(2 * chunk + 7)).is_none());
        assert_eq!(table.get(RunId(3 * chunk + 2)), Some(&(3 * chunk + 2)));
        let ids: Vec<u64> = table.iter_ids().map(|(id, _)| id.0).collect();
        let expected: Vec<u64> = (chunk + 1..=2 * chunk)
            .chain(3 * chunk + 1..=3 * chunk + 5)
            .collect();
        assert_eq!(ids, expected);
        assert_eq!(table.iter().copied().collect::<Vec<_>>(), expected);
        // The last chunk, still filling, is never freed.
        for id in 3 * chunk + 1..=3 * chunk + 5 {
            table.remove(RunId(id));
        }
        table.push(RunId(3 * chunk + 6), 7);
        assert_eq!(table.get(RunId(3 * chunk + 6)), Some(&7));
        assert_eq!(table.next_id(), RunId(3 * chunk + 7));
    }

    /// A removed record costs no more than a kept one: `None` fits in the
    /// record's own niche.
    #[test]
    fn an_empty_slot_is_no_bigger_than_a_record() {
        assert_eq!(size_of::<Option<Job>>(), size_of::<Job>());
        assert_eq!(size_of::<Option<Run>>(), size_of::<Run>());
    }

    /// Restoring skips the ids of records that were removed, within a chunk
    /// and across whole chunks, without memory for the skipped ones.
    #[test]
    fn skipping_ids_leaves_them_removed() {
        let chunk = CHUNK as u64;
        let mut table = Ids::starting_at(RunId(10));
        table.push(RunId(10), 10);
        table.skip_to(RunId(20));
        table.push(RunId(20), 20);
        table.skip_to(RunId(10 + 5 * chunk));
        table.push(RunId(10 + 5 * chunk), 1);
        table.skip_to(RunId(12 + 5 * chunk));
        assert_eq!(table.next_id(), RunId(12 + 5 * chunk));
        assert_eq!(table.len(), 3);
        let ids: Vec<u64> = table.iter_ids().map(|(id, _)| id.0).collect();
        assert_eq!(ids, [10, 20, 10 + 5 * chunk]);
        assert!(table.was_removed(RunId(15)) && table.was_removed(RunId(11 + 5 * chunk)));
        let allocated: usize = table.chunks.iter().map(|c| c.slots.capacity()).sum();
        assert!(allocated <= 2 * CHUNK, "skipped chunks hold no memory");
        table.remove(RunId(10));
        table.remove(RunId(20));
        assert_eq!(
            table.first,
            10 + 5 * chunk,
            "the empty chunks before are dropped"
        );
    }
}
