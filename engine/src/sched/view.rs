//! Read-only views of the scheduler's state for clients and operators:
//! jobs, runs, queues, agents, and why a job is not running.

use std::fmt;

use crate::model::{
    AgentId, JobId, Outcome, Pair, QueueConfig, RunId, Seq, StopReason, TagRule, TimeMs,
};
use crate::sched::index::CapacityKind;
use crate::sched::rejection::Rejection;
use crate::sched::tables::{Job, JobState, Run};
use crate::sched::Scheduler;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting for earlier jobs of its run (a `wait` step).
    Held,
    Waiting,
    Running {
        agent: AgentId,
        stopping: Option<StopReason>,
    },
    Finished {
        outcome: Outcome,
        exit_code: Option<i32>,
        at: TimeMs,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView<'a> {
    pub id: JobId,
    pub run: RunId,
    pub queue: &'a str,
    pub priority: i32,
    /// Whether the priority is the job's own (else inherited from its run).
    pub own_priority: bool,
    /// Its run's submission sequence, or that of its last priority change.
    pub position: Seq,
    /// Its place in its run's upload order.
    pub upload: u32,
    /// How many `wait` steps stand before it in its run.
    pub stage: u32,
    pub status: JobStatus,
    pub attempt: u32,
    pub max_attempts: u32,
    pub tags: &'a [Pair],
    pub labels: &'a [Pair],
    pub submitted_at: TimeMs,
    pub waiting_since: TimeMs,
    pub max_queued_time_ms: Option<u64>,
    pub deadline_at: Option<TimeMs>,
    pub payload: &'a [u8],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunView<'a> {
    pub id: RunId,
    pub queue: &'a str,
    pub priority: i32,
    pub position: Seq,
    pub submitted_at: TimeMs,
    pub jobs: &'a [JobId],
    pub unfinished: u32,
    /// Between its first dispatch and the end of its last job.
    pub active: bool,
    /// A job of it ended without success.
    pub failed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueView<'a> {
    pub config: &'a QueueConfig,
    pub waiting: u64,
    pub running: u64,
    pub held: u64,
    pub active_runs: u32,
    pub submitted_total: u64,
    pub dispatched_total: u64,
    pub finished_total: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentView<'a> {
    pub id: AgentId,
    pub name: &'a str,
    pub pools: &'a [String],
    pub labels: &'a [Pair],
    pub slots: u32,
    pub running: &'a [JobId],
    /// Jobs it still asks for.
    pub requested: u32,
    /// Registered and its lease not expired.
    pub present: bool,
    pub lease_until: TimeMs,
}

/// Why a job is not running now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockReason {
    QueuePaused {
        queue: String,
    },
    QueueConcurrency {
        queue: String,
        running: u32,
        limit: u32,
    },
    RunConcurrency {
        queue: String,
        active: u32,
        limit: u32,
    },
    TagRule {
        key: String,
        value: Option<String>,
        running: u32,
        limit: u32,
    },
    NoAgent {
        pools: Vec<String>,
        labels: Vec<Pair>,
    },
    DependenciesPending {
        unfinished: u32,
    },
    /// Nothing holds it back but its place in line: it goes to the next free
    /// slot of an agent that may take it, after the jobs ahead of it.
    WaitingForSlot,
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockReason::QueuePaused { queue } => write!(f, "queue {queue:?} is paused"),
            BlockReason::QueueConcurrency {
                queue,
                running,
                limit,
            } => {
                write!(f, "queue concurrency of {queue:?} at {running}/{limit}")
            }
            BlockReason::RunConcurrency {
                queue,
                active,
                limit,
            } => {
                write!(f, "run concurrency of {queue:?} at {active}/{limit}")
            }
            BlockReason::TagRule {
                key,
                value,
                running,
                limit,
            } => match value {
                Some(value) => write!(f, "tag rule {key}={value} at {running}/{limit}"),
                None => write!(f, "tag rule {key} at {running}/{limit}"),
            },
            BlockReason::NoAgent { pools, labels } => {
                write!(f, "no agent in pools [{}]", pools.join(", "))?;
                if !labels.is_empty() {
                    let labels: Vec<String> =
                        labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    write!(f, " with labels [{}]", labels.join(", "))?;
                }
                Ok(())
            }
            BlockReason::DependenciesPending { unfinished } => {
                write!(
                    f,
                    "dependencies pending: {unfinished} earlier jobs of its run unfinished"
                )
            }
            BlockReason::WaitingForSlot => {
                write!(f, "waiting for a free slot on an agent that may take it")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub job: JobId,
    pub status: JobStatus,
    pub queue: String,
    /// For a waiting job: how many waiting jobs of its queue are ahead.
    pub ahead: Option<u64>,
    pub reasons: Vec<BlockReason>,
}

impl Scheduler {
    pub fn job(&self, id: JobId) -> Option<JobView<'_>> {
        self.jobs.get(id).map(|job| self.job_view(job))
    }

    /// The job, or why there is none (never submitted, or forgotten).
    pub fn job_checked(&self, id: JobId) -> Result<JobView<'_>, Rejection> {
        self.find_job(id).map(|job| self.job_view(job))
    }

    /// The run, or why there is none (never submitted, or forgotten).
    pub fn run_checked(&self, id: RunId) -> Result<RunView<'_>, Rejection> {
        self.find_run(id).map(|run| self.run_view(id, run))
    }

    /// Every job the scheduler holds, in id order.
    pub fn jobs(&self) -> impl Iterator<Item = JobView<'_>> {
        self.jobs.iter().map(|job| self.job_view(job))
    }

    fn job_view<'a>(&'a self, job: &'a Job) -> JobView<'a> {
        JobView {
            id: job.id(),
            run: job.run,
            queue: &self.queues[job.queue as usize].config.name,
            priority: job.key.priority(),
            own_priority: job.own_priority,
            position: job.key.position,
            upload: job.key.upload,
            stage: job.stage,
            status: status(job.state),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            tags: self.index.tag_sets.get(job.tags),
            labels: self.index.label_sets.get(job.labels),
            submitted_at: job.submitted_at,
            waiting_since: job.waiting_since,
            max_queued_time_ms: job.max_queued_time_ms,
            deadline_at: job.deadline_at,
            payload: &job.payload,
        }
    }

    pub fn run(&self, id: RunId) -> Option<RunView<'_>> {
        self.runs.get(id).map(|run| self.run_view(id, run))
    }

    fn run_view<'a>(&'a self, id: RunId, run: &'a Run) -> RunView<'a> {
        RunView {
            id,
            queue: &self.queues[run.queue as usize].config.name,
            priority: run.priority,
            position: run.position,
            submitted_at: run.submitted_at,
            jobs: &run.jobs,
            unfinished: run.unfinished,
            active: run.active,
            failed: run.failed_stage.is_some(),
        }
    }

    /// Every queue, in order of creation (`default` first).
    pub fn queues(&self) -> impl Iterator<Item = QueueView<'_>> {
        self.queues.iter().enumerate().map(|(id, queue)| QueueView {
            config: &queue.config,
            waiting: queue.waiting,
            running: queue.running,
            held: queue.held,
            active_runs: self
                .index
                .capacity(self.index.queue_runs_capacity(id as u32))
                .used,
            submitted_total: queue.submitted_total,
            dispatched_total: queue.dispatched_total,
            finished_total: queue.finished_total,
        })
    }

    pub fn queue(&self, name: &str) -> Option<QueueView<'_>> {
        let id = *self.queue_ids.get(name)?;
        self.queues().nth(id as usize)
    }

    pub fn agents(&self) -> impl Iterator<Item = AgentView<'_>> {
        self.agents.iter().enumerate().map(|(id, agent)| AgentView {
            id: AgentId(id as u32),
            name: &agent.name,
            pools: &agent.pools,
            labels: &agent.labels,
            slots: agent.slots,
            running: &agent.running,
            requested: agent.credit,
            present: agent.present,
            lease_until: agent.lease_until,
        })
    }

    pub fn agent_id(&self, name: &str) -> Option<AgentId> {
        self.agent_ids.get(name).copied()
    }

    pub fn tag_rules(&self) -> &[TagRule] {
        self.index.rules()
    }

    /// The job's place in line and every reason it is not running now.
    pub fn explain(&self, id: JobId) -> Result<Explanation, Rejection> {
        let job = self.find_job(id)?;
        let queue = &self.queues[job.queue as usize].config;
        let mut reasons = Vec::new();
        let mut ahead = None;
        match job.state {
            JobState::Held => {
                let run = &self.runs.at(job.run);
                let unfinished = run
                    .jobs
                    .iter()
                    .map(|&j| self.jobs.at(j))
                    .filter(|j| j.stage < job.stage && !j.is_finished())
                    .count() as u32;
                reasons.push(BlockReason::DependenciesPending { unfinished });
            }
            JobState::Waiting { class } => {
                ahead = Some(self.index.rank_in_queue(job.queue, job.key));
                if queue.paused {
                    reasons.push(BlockReason::QueuePaused {
                        queue: queue.name.clone(),
                    });
                }
                let action = self
                    .index
                    .capacity(self.index.queue_action_capacity(job.queue));
                if let (true, Some(limit)) = (action.is_full(), action.limit) {
                    let running = action.used;
                    reasons.push(BlockReason::QueueConcurrency {
                        queue: queue.name.clone(),
                        running,
                        limit,
                    });
                }
                for capacity in self.index.class_blockers(class) {
                    let limit = capacity.limit.expect("a full capacity has a limit");
                    reasons.push(match &capacity.kind {
                        CapacityKind::Runs(q) => BlockReason::RunConcurrency {
                            queue: self.queues[*q as usize].config.name.clone(),
                            active: capacity.used,
                            limit,
                        },
                        CapacityKind::Tag { rule, value } => {
                            let rule = &self.index.rules()[*rule as usize];
                            let value = value.clone().or_else(|| match &rule.matches {
                                crate::model::TagMatch::Value(v) => Some(v.clone()),
                                _ => None,
                            });
                            BlockReason::TagRule {
                                key: rule.key.clone(),
                                value,
                                running: capacity.used,
                                limit,
                            }
                        }
                        CapacityKind::Action(_) => unreachable!("action capacities gate queues"),
                    });
                }
                if !self.index.has_agent_for(job.queue, job.labels) {
                    reasons.push(BlockReason::NoAgent {
                        pools: queue.pools.clone(),
                        labels: self.index.label_sets.get(job.labels).to_vec(),
                    });
                }
                if reasons.is_empty() {
                    reasons.push(BlockReason::WaitingForSlot);
                }
            }
            JobState::Running { .. } | JobState::Finished { .. } => {}
        }
        Ok(Explanation {
            job: id,
            status: status(job.state),
            queue: queue.name.clone(),
            ahead,
            reasons,
        })
    }
}

fn status(state: JobState) -> JobStatus {
    match state {
        JobState::Held => JobStatus::Held,
        JobState::Waiting { .. } => JobStatus::Waiting,
        JobState::Running { agent, stop } => JobStatus::Running {
            agent,
            stopping: stop,
        },
        JobState::Finished {
            outcome,
            exit_code,
            at,
        } => JobStatus::Finished {
            outcome,
            exit_code,
            at,
        },
    }
}
