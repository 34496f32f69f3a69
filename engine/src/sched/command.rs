//! Commands: what a client asks for. A command is validated against the
//! current state and becomes events, or a rejection that changes nothing.

use crate::model::{
    AgentId, JobId, JobSpec, Pair, QueueConfig, Report, RunId, RunSpec, TagRule, TimeMs,
};
use crate::sched::rejection::Rejection;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    SubmitRun(RunSpec),
    AppendJobs {
        run: RunId,
        jobs: Vec<JobSpec>,
    },
    ChangeJobPriority {
        job: JobId,
        priority: i32,
    },
    ChangeRunPriority {
        run: RunId,
        priority: i32,
    },
    CancelJob {
        job: JobId,
    },
    CancelRun {
        run: RunId,
    },
    /// Create a queue or replace its configuration.
    PutQueue(QueueConfig),
    PauseQueue {
        queue: String,
    },
    ResumeQueue {
        queue: String,
    },
    SetTagRules(Vec<TagRule>),
    /// An agent (re)connects. `running` lists the jobs it still runs, with
    /// their attempts: those keep their lease; any other job leased to it
    /// loses its lease now.
    RegisterAgent {
        name: String,
        pools: Vec<String>,
        labels: Vec<Pair>,
        slots: u32,
        running: Vec<(JobId, u32)>,
    },
    Heartbeat {
        agent: AgentId,
    },
    /// The agent wants up to `count` more jobs (a standing request: jobs are
    /// dispatched to it as soon as they may run).
    TakeWork {
        agent: AgentId,
        count: u32,
    },
    /// The agent's connection closed: its standing request lapses. Its
    /// leases run on, so it may come back and resume.
    Disconnect {
        agent: AgentId,
    },
    /// The agent reports finished jobs. Each completion is judged on its
    /// own, in order, and answered in [`Reply::Completed`]: a refused one
    /// changes nothing, the others are applied. One command, so a batch is
    /// made durable once and nothing else is applied between its parts.
    Complete {
        agent: AgentId,
        completions: Vec<Completion>,
    },
    /// Time passed: expire leases, queue timeouts and deadlines due by now.
    Tick,
    /// The engine has just replayed its log: restart every lease from now.
    Restarted,
    /// A cron trigger's time `scheduled` came: submit its run, once. A time
    /// at or before the trigger's last firing is refused, so a restart
    /// never fires the same time twice.
    FireTrigger {
        trigger: String,
        scheduled: TimeMs,
        run: RunSpec,
    },
    /// Stop dispatching new work (drain) or start again. Running jobs run
    /// on. A restart ends a drain.
    SetDraining {
        draining: bool,
    },
    /// Forget finished runs and their jobs, oldest finish first, as
    /// `Retention` says. At most [`crate::sched::FORGET_JOBS_MAX`] jobs per
    /// command.
    Forget(Retention),
}

/// How much finished work is kept. A run is kept whole until every job of
/// it has finished; then it is forgotten once it finished more than
/// `finished_ms` ago, or earlier, oldest first, while the finished runs
/// kept hold more than `finished_jobs` jobs. The idempotency key of a
/// forgotten run is remembered until `finished_ms` has passed since the
/// run finished, but at most `keys` such keys (the oldest go first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub finished_ms: u64,
    pub finished_jobs: u64,
    pub keys: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            finished_ms: 3_600_000,
            finished_jobs: 100_000,
            keys: 1_000_000,
        }
    }
}

/// One finished job, as its agent saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub job: JobId,
    /// The attempt the agent ran: a report for an older attempt is stale.
    pub attempt: u32,
    pub report: Report,
    pub exit_code: i32,
}

impl Command {
    /// A `Complete` of one job.
    pub fn complete_one(
        agent: AgentId,
        job: JobId,
        attempt: u32,
        report: Report,
        exit_code: i32,
    ) -> Command {
        Command::Complete {
            agent,
            completions: vec![Completion {
                job,
                attempt,
                report,
                exit_code,
            }],
        }
    }
}

/// What a command answers besides its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Done,
    /// The run and the ids of the jobs just created (contiguous).
    /// `replayed` is true when an idempotency key matched an earlier
    /// submission and nothing new was created.
    Submitted {
        run: RunId,
        first_job: JobId,
        count: u32,
        replayed: bool,
    },
    Registered {
        agent: AgentId,
    },
    /// A tick handled at most its bound of expiries; `more` says whether
    /// others are already due.
    Ticked {
        more: bool,
    },
    /// A trigger fired: its run was submitted, or refused (a full queue, a
    /// paused-forever configuration) and the firing still counts.
    Fired {
        submitted: Result<(RunId, JobId, u32), Rejection>,
    },
    /// One result per completion of a `Complete`, in the same order.
    Completed {
        results: Vec<Result<(), Rejection>>,
    },
    /// `runs` finished runs were forgotten; `more` says whether others are
    /// already due.
    Forgot {
        runs: u32,
        more: bool,
    },
}
