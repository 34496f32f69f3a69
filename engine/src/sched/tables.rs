//! The scheduler's tables: queues, runs, jobs, agents and timers, as the
//! scheduler keeps them in memory. Plain records; the rules that change them
//! live in `apply`.

use std::collections::BTreeSet;

use crate::model::{
    AgentId, JobId, JobOptions, Outcome, Pair, QueueConfig, Seq, StopReason, TimeMs,
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

/// Jobs per chunk of the job table: a power of two, big enough that the
/// chunk list stays short (1,000,000 jobs: 245 chunks), small enough that
/// adding a chunk never stalls the single writer.
const JOB_CHUNK: usize = 4_096;

/// Jobs by id. Ids are dense and handed out in order, so fixed-size chunks
/// indexed by `id - first` beat a hash map in memory and speed; unlike one
/// growing buffer, a new chunk never copies the jobs already there.
#[derive(Debug, Default)]
pub(crate) struct JobTable {
    first: u64,
    len: usize,
    chunks: Vec<Vec<Job>>,
}

impl JobTable {
    pub(crate) fn new() -> JobTable {
        JobTable::starting_at(JobId(1))
    }

    /// A table whose first job will have id `first` (after a snapshot).
    pub(crate) fn starting_at(first: JobId) -> JobTable {
        JobTable {
            first: first.0,
            len: 0,
            chunks: Vec::new(),
        }
    }

    pub(crate) fn first_id(&self) -> JobId {
        JobId(self.first)
    }

    pub(crate) fn next_id(&self) -> JobId {
        JobId(self.first + self.len as u64)
    }

    pub(crate) fn push(&mut self, job: Job) {
        assert_eq!(job.id(), self.next_id(), "jobs are added in id order");
        if self.len.is_multiple_of(JOB_CHUNK) {
            self.chunks.push(Vec::with_capacity(JOB_CHUNK));
        }
        self.chunks.last_mut().expect("a chunk with room").push(job);
        self.len += 1;
    }

    fn slot(&self, id: JobId) -> Option<usize> {
        let slot = usize::try_from(id.0.checked_sub(self.first)?).ok()?;
        (slot < self.len).then_some(slot)
    }

    pub(crate) fn get(&self, id: JobId) -> Option<&Job> {
        let slot = self.slot(id)?;
        Some(&self.chunks[slot / JOB_CHUNK][slot % JOB_CHUNK])
    }

    pub(crate) fn get_mut(&mut self, id: JobId) -> Option<&mut Job> {
        let slot = self.slot(id)?;
        Some(&mut self.chunks[slot / JOB_CHUNK][slot % JOB_CHUNK])
    }

    /// The job, which must exist: for ids the scheduler itself validated.
    pub(crate) fn at(&self, id: JobId) -> &Job {
        self.get(id)
            .unwrap_or_else(|| panic!("{id} is not in the job table"))
    }

    pub(crate) fn at_mut(&mut self, id: JobId) -> &mut Job {
        self.get_mut(id)
            .unwrap_or_else(|| panic!("{id} is not in the job table"))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Job> {
        self.chunks.iter().flatten()
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
