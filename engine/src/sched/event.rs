//! Events: what happened, as data. The scheduler's state is exactly what
//! applying its events in order to an empty state gives.
//!
//! Events carry resolved values (queue names, effective priorities, merged
//! tags), not the raw request, so replay never re-runs the rules that
//! validated them.

use crate::model::{
    AgentId, JobId, Outcome, Pair, QueueConfig, Report, RunId, Seq, StopReason, TagRule, TimeMs,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// This event's own log sequence number: gap-free from 1.
    pub seq: Seq,
    /// When it happened. Never earlier than the event before it.
    pub time: TimeMs,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A queue was created, or its configuration replaced.
    QueuePut(QueueConfig),
    QueuePaused {
        queue: String,
    },
    QueueResumed {
        queue: String,
    },
    /// The tag concurrency rules were replaced.
    TagRulesSet(Vec<TagRule>),
    RunSubmitted(Box<RunSubmitted>),
    JobsAppended {
        run: RunId,
        first_job: JobId,
        jobs: Vec<NewJob>,
    },
    /// A waiting or held job goes to the end of its new priority level.
    JobPriorityChanged {
        job: JobId,
        priority: i32,
    },
    /// Every waiting or held job of the run without a priority of its own
    /// goes to the end of the new level; later jobs inherit it.
    RunPriorityChanged {
        run: RunId,
        priority: i32,
    },
    /// A waiting or held job was cancelled: it ends at once.
    JobCancelled {
        job: JobId,
    },
    /// A running job's agent is told to stop it; its outcome is decided.
    StopRequested {
        job: JobId,
        agent: AgentId,
        reason: StopReason,
    },
    AgentRegistered {
        agent: AgentId,
        name: String,
        pools: Vec<String>,
        labels: Vec<Pair>,
        slots: u32,
    },
    /// The agent was heard from: its lease is renewed.
    AgentSeen {
        agent: AgentId,
    },
    /// The agent's standing request for work is now `count` jobs (0 when it
    /// disconnected). Renews its lease.
    WorkRequested {
        agent: AgentId,
        count: u32,
    },
    /// The agent's connection closed: its request lapses, its leases run on.
    AgentDisconnected {
        agent: AgentId,
    },
    JobDispatched {
        job: JobId,
        agent: AgentId,
        attempt: u32,
    },
    JobCompleted {
        job: JobId,
        attempt: u32,
        report: Report,
        exit_code: i32,
    },
    /// The job's lease is gone (agent silent or it said it no longer runs
    /// the job): back to its place, or LOST after its last attempt.
    LeaseLost {
        job: JobId,
    },
    /// The agent's lease expired: every job it held loses its lease and its
    /// request for work lapses.
    AgentLost {
        agent: AgentId,
    },
    /// A waiting or held job timed out (QUEUE_TIMEOUT or DEADLINE_EXCEEDED).
    JobExpired {
        job: JobId,
        outcome: Outcome,
    },
    /// The engine started again after replay: every lease restarts from
    /// now, and every standing request for work lapses (connections are new).
    LeasesRestarted,
    /// A cron trigger fired for its time `scheduled` (the run it submitted,
    /// if any, follows as its own events).
    TriggerFired {
        trigger: String,
        scheduled: TimeMs,
    },
    /// Dispatching stopped (drain) or started again.
    DrainingSet {
        draining: bool,
    },
    /// Finished runs and their jobs are forgotten, in this order. The keys
    /// of those that finished at or after `keys_until` are remembered until
    /// a later forgetting's `keys_until` passes their finish; remembered
    /// keys of runs finished before it are dropped now.
    RunsForgotten {
        runs: Vec<RunId>,
        keys_until: TimeMs,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSubmitted {
    pub run: RunId,
    pub first_job: JobId,
    pub queue: String,
    pub priority: i32,
    pub tags: Vec<Pair>,
    /// The run's defaults, kept for jobs appended later.
    pub defaults: crate::model::JobOptions,
    /// The idempotency key and a hash of the request it came with.
    pub idempotency: Option<(String, u64)>,
    pub jobs: Vec<NewJob>,
}

/// One job as it enters the state: every option resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    pub queue: String,
    pub priority: i32,
    /// Whether the priority is the job's own (else its run's).
    pub own_priority: bool,
    /// The run's tags merged with the job's, sorted by key.
    pub tags: Vec<Pair>,
    /// Labels it requires of its agent, sorted by key.
    pub labels: Vec<Pair>,
    pub wait_before: bool,
    pub max_queued_time_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub max_attempts: u32,
    pub payload: Vec<u8>,
}
