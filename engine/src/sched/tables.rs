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

/// Records by id. Ids are dense and handed out in order, so fixed-size
/// chunks indexed by `id - first` beat a hash map in memory and speed;
/// unlike one growing buffer (or a hash map's rehash), a new chunk never
/// copies the records already there, so the writer never stalls on growth.
#[derive(Debug)]
pub(crate) struct Table<Id, T> {
    first: u64,
    len: usize,
    chunks: Vec<Vec<T>>,
    id: std::marker::PhantomData<Id>,
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
            len: 0,
            chunks: Vec::new(),
            id: std::marker::PhantomData,
        }
    }

    pub(crate) fn first_id(&self) -> Id {
        Id::from_u64(self.first)
    }

    pub(crate) fn next_id(&self) -> Id {
        Id::from_u64(self.first + self.len as u64)
    }

    /// Adds the record of `id`, which must be the next id.
    pub(crate) fn push(&mut self, id: Id, record: T) {
        assert_eq!(
            id.to_u64(),
            self.next_id().to_u64(),
            "records are added in id order"
        );
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        self.chunks
            .last_mut()
            .expect("a chunk with room")
            .push(record);
        self.len += 1;
    }

    fn slot(&self, id: Id) -> Option<usize> {
        let slot = usize::try_from(id.to_u64().checked_sub(self.first)?).ok()?;
        (slot < self.len).then_some(slot)
    }

    pub(crate) fn get(&self, id: Id) -> Option<&T> {
        let slot = self.slot(id)?;
        Some(&self.chunks[slot / CHUNK][slot % CHUNK])
    }

    pub(crate) fn get_mut(&mut self, id: Id) -> Option<&mut T> {
        let slot = self.slot(id)?;
        Some(&mut self.chunks[slot / CHUNK][slot % CHUNK])
    }

    pub(crate) fn contains(&self, id: Id) -> bool {
        self.slot(id).is_some()
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
        self.chunks.iter().flatten()
    }

    /// The records with their ids, in id order.
    pub(crate) fn iter_ids(&self) -> impl Iterator<Item = (Id, &T)> {
        let first = self.first;
        self.iter()
            .enumerate()
            .map(move |(i, record)| (Id::from_u64(first + i as u64), record))
    }

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
