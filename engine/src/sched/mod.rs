//! The scheduler: a deterministic state machine that owns every queue, run,
//! job and agent, and decides what runs where.
//!
//! A command is validated against the current state and becomes events, or
//! a [`Rejection`] that changes nothing (`decide`). Each event is applied as
//! it is made, through the one [`Scheduler::apply`] that replay also uses.
//! Time is an input: every command comes with `now`, and every event carries
//! the time it happened.
//!
//! *Architecture invariant:* the scheduler does no I/O, reads no clock, draws
//! no random numbers and iterates no hash map where order matters. The same
//! events applied to a new scheduler give the same state, which
//! [`Scheduler::digest`] proves.

mod apply;
mod check;
pub mod command;
mod decide;
mod digest;
pub mod event;
mod image;
mod index;
mod intern;
pub mod rejection;
mod tables;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rustc_hash::FxHashMap;

use crate::model::{AgentId, JobId, QueueConfig, RunId, Seq, TimeMs, DEFAULT_QUEUE};
pub use command::{Command, Completion, Reply, Retention};
pub use decide::{check_queue_config, check_tag_rules, COMPLETIONS_PER_COMMAND_MAX};
pub use event::{Event, EventKind, NewJob, RunSubmitted};
pub use image::{
    AgentImage, ForgottenKeyImage, Image, ImageError, JobImage, JobStateImage, QueueImage, RunImage,
};
pub use index::JobKey;
use index::{DispatchIndex, QueueId};
pub use rejection::Rejection;
use tables::{Agent, JobTable, KeyRecord, Queue, RunTable, Timers};

/// How long an agent's lease lasts without news from it, by default.
pub const LEASE_MS_DEFAULT: u64 = 30_000;

/// Most expiries (timeouts, deadlines, leases) one tick handles: bounds the
/// time the single writer spends on a tick. The rest wait for the next.
pub const TICK_EXPIRIES_MAX: usize = 4_096;

/// Most jobs one `Forget` removes (it takes whole runs, so one big run may
/// go past it): bounds the writer's time on it. The rest wait for the next.
pub const FORGET_JOBS_MAX: usize = 16_384;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// How long a dispatched job's lease lasts without a heartbeat.
    pub lease_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            lease_ms: LEASE_MS_DEFAULT,
        }
    }
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    last_seq: Seq,
    /// The time of the last event: time never runs backwards in the log.
    clock: TimeMs,
    queues: Vec<Queue>,
    queue_ids: FxHashMap<String, QueueId>,
    runs: RunTable,
    next_run: u64,
    jobs: JobTable,
    agents: Vec<Agent>,
    agent_ids: FxHashMap<String, AgentId>,
    idempotency: FxHashMap<String, KeyRecord>,
    /// Finished runs still kept, oldest finish first: the order in which
    /// they are forgotten.
    finished: BTreeSet<(TimeMs, RunId)>,
    /// Jobs of the finished runs kept.
    finished_jobs: u64,
    /// Keys of runs forgotten before their retention time passed, with the
    /// time their run finished: a key is remembered for the whole retention
    /// time even when its run went early (the cap on finished runs).
    forgotten_keys: VecDeque<(TimeMs, String)>,
    index: DispatchIndex,
    timers: Timers,
    /// Agents with a standing request and a free slot, longest waiting first.
    hungry: BTreeSet<(Seq, AgentId)>,
    /// Each cron trigger's last fired time (the time it was due, not the
    /// time it ran): a time at or before it never fires again.
    triggers: BTreeMap<String, TimeMs>,
    /// Dispatching is stopped (an operator's drain) until restart or resume.
    draining: bool,
    /// Set when an agent starts waiting for work: it may find some at once.
    match_needed: bool,
    /// Reused by matching, so it allocates nothing per command.
    scratch_agents: Vec<AgentId>,
    /// Jobs whose state changed since the last `take_changed`, while the
    /// owner asked to track them (the driver does, for watchers). Not
    /// state: replay and the digest ignore it.
    changed: Option<Vec<JobId>>,
}

impl Scheduler {
    /// An empty scheduler: no runs, no agents, and the `default` queue.
    pub fn new(config: SchedulerConfig) -> Scheduler {
        let mut scheduler = Scheduler {
            config,
            last_seq: 0,
            clock: 0,
            queues: Vec::new(),
            queue_ids: FxHashMap::default(),
            runs: RunTable::new(),
            next_run: 1,
            jobs: JobTable::new(),
            agents: Vec::new(),
            agent_ids: FxHashMap::default(),
            idempotency: FxHashMap::default(),
            finished: BTreeSet::new(),
            finished_jobs: 0,
            forgotten_keys: VecDeque::new(),
            index: DispatchIndex::new(),
            timers: Timers::default(),
            hungry: BTreeSet::new(),
            triggers: BTreeMap::new(),
            draining: false,
            match_needed: false,
            scratch_agents: Vec::new(),
            changed: None,
        };
        scheduler.put_queue(QueueConfig::new(DEFAULT_QUEUE));
        scheduler
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The sequence number of the last event applied.
    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }

    /// The time of the last event applied.
    pub fn clock(&self) -> TimeMs {
        self.clock
    }

    /// The last time each trigger fired for, by trigger name.
    pub fn triggers_fired(&self) -> &BTreeMap<String, TimeMs> {
        &self.triggers
    }

    /// Whether dispatching is stopped by a drain.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// Validates `command` at time `now` and, if it is accepted, applies the
    /// events it makes, appending them to `events`. A rejection changes
    /// nothing and appends nothing.
    ///
    /// After the command, agents waiting for work get whatever may now run:
    /// those dispatches are events of this command too.
    pub fn handle(
        &mut self,
        command: Command,
        now: TimeMs,
        events: &mut Vec<Event>,
    ) -> Result<Reply, Rejection> {
        let now = now.max(self.clock);
        let events_before = events.len();
        let seq_before = self.last_seq;
        let reply = self.decide(command, now, events);
        if reply.is_err() {
            assert_eq!(
                events.len(),
                events_before,
                "a rejected command made events"
            );
            assert_eq!(
                self.last_seq, seq_before,
                "a rejected command changed the state"
            );
        }
        let reply = reply?;
        self.match_waiting_agents(now, events);
        Ok(reply)
    }

    /// Makes an event at `now`, applies it and records it.
    fn emit(&mut self, now: TimeMs, kind: EventKind, events: &mut Vec<Event>) {
        let event = Event {
            seq: self.last_seq + 1,
            time: now,
            kind,
        };
        self.apply(&event);
        events.push(event);
    }

    /// Gives every agent waiting for work the best jobs it may take, in the
    /// order the agents started waiting.
    fn match_waiting_agents(&mut self, now: TimeMs, events: &mut Vec<Event>) {
        if !(self.match_needed || self.index.work_appeared) || self.draining {
            return;
        }
        self.match_needed = false;
        self.index.work_appeared = false;
        if self.hungry.is_empty() || !self.index.anything_published() {
            return;
        }
        let mut agents = std::mem::take(&mut self.scratch_agents);
        agents.clear();
        agents.extend(self.hungry.iter().map(|&(_, agent)| agent));
        for &agent in &agents {
            self.dispatch_to(agent, now, events);
            if !self.index.anything_published() {
                break;
            }
        }
        self.scratch_agents = agents;
        // What this round dispatched published new heads; none of them is
        // news to an agent that was just served.
        self.index.work_appeared = false;
    }

    /// Dispatches the best jobs to one agent until it has what it asked for,
    /// its slots are full, or nothing it may take is left.
    fn dispatch_to(&mut self, agent: AgentId, now: TimeMs, events: &mut Vec<Event>) {
        if self.draining {
            return;
        }
        while self.agents[agent.0 as usize].wants_work() {
            let Some(key) = self.index.best_for(agent) else {
                break;
            };
            let attempt = self.jobs.at(key.job).attempt + 1;
            self.emit(
                now,
                EventKind::JobDispatched {
                    job: key.job,
                    agent,
                    attempt,
                },
                events,
            );
        }
    }

    /// Starts recording which jobs change; the caller must then drain them
    /// with [`Scheduler::take_changed`] after every command.
    pub fn track_changes(&mut self) {
        self.changed.get_or_insert_with(Vec::new);
    }

    /// Moves the jobs changed since the last call into `out`, each once.
    pub fn take_changed(&mut self, out: &mut Vec<JobId>) {
        if let Some(changed) = &mut self.changed {
            out.append(changed);
            out.sort_unstable();
            out.dedup();
        }
    }

    fn note_changed(&mut self, job: JobId) {
        if let Some(changed) = &mut self.changed {
            changed.push(job);
        }
    }

    /// The job, or why there is none: never handed out, or forgotten.
    fn find_job(&self, id: JobId) -> Result<&tables::Job, Rejection> {
        self.jobs
            .find(id, Rejection::UnknownJob, Rejection::ForgottenJob)
    }

    fn find_run(&self, id: RunId) -> Result<&tables::Run, Rejection> {
        self.runs
            .find(id, Rejection::UnknownRun, Rejection::ForgottenRun)
    }

    /// The id the next job will have: every id before it was handed out
    /// (some may be forgotten since).
    pub fn next_job_id(&self) -> JobId {
        self.jobs.next_id()
    }

    /// Finished runs kept (not yet forgotten), and their jobs.
    pub fn finished_kept(&self) -> (usize, u64) {
        (self.finished.len(), self.finished_jobs)
    }

    /// Idempotency keys remembered of forgotten runs.
    pub fn forgotten_keys(&self) -> usize {
        self.forgotten_keys.len()
    }

    fn queue_id(&self, name: &str) -> Result<QueueId, Rejection> {
        self.queue_ids
            .get(name)
            .copied()
            .ok_or_else(|| Rejection::UnknownQueue {
                queue: name.to_string(),
            })
    }
}
