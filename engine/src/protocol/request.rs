//! Requests: what submitters, operators (0x01xx) and agents (0x02xx) ask of
//! the server, one body per message. Each is answered once, under its
//! request id. It owns their layout; it does not turn them into scheduler
//! commands (the server does, adding the agent id of the connection where a
//! command needs one).

use crate::model::{JobId, JobSpec, Pair, QueueConfig, Report, RunId, RunSpec, TagRule};

use super::error::DecodeError;
use super::reader::Reader;
use super::wire::{wire_struct, Wire};
use super::writer::Writer;

wire_struct! {
    /// Submit a run of jobs. Answer: `Submitted`.
    pub struct SubmitRun {
        pub spec: RunSpec,
    }
}

wire_struct! {
    /// Add jobs to a run. Answer: `Submitted` (the run, its new jobs).
    pub struct AppendJobs {
        pub run: RunId,
        pub jobs: Vec<JobSpec>,
    }
}

wire_struct! {
    /// Answer: `Done`.
    pub struct ChangeJobPriority {
        pub job: JobId,
        pub priority: i32,
    }
}

wire_struct! {
    /// Answer: `Done`.
    pub struct ChangeRunPriority {
        pub run: RunId,
        pub priority: i32,
    }
}

wire_struct! {
    /// Answer: `Done`.
    pub struct CancelJob {
        pub job: JobId,
    }
}

wire_struct! {
    /// Answer: `Done`.
    pub struct CancelRun {
        pub run: RunId,
    }
}

wire_struct! {
    /// Answer: `JobInfo`.
    pub struct GetJob {
        pub job: JobId,
    }
}

wire_struct! {
    /// Answer: `RunInfo`.
    pub struct GetRun {
        pub run: RunId,
    }
}

wire_struct! {
    /// Answer: `Explanation`.
    pub struct ExplainJob {
        pub job: JobId,
    }
}

wire_struct! {
    /// Answer: `QueueList`.
    pub struct ListQueues;
}

wire_struct! {
    /// Answer: `Done`.
    pub struct PauseQueue {
        pub queue: String,
    }
}

wire_struct! {
    /// Answer: `Done`.
    pub struct ResumeQueue {
        pub queue: String,
    }
}

wire_struct! {
    /// Create a queue or replace its whole configuration. Answer: `Done`.
    pub struct PutQueue {
        pub config: QueueConfig,
    }
}

wire_struct! {
    /// Replace every tag rule. Answer: `Done`.
    pub struct SetTagRules {
        pub rules: Vec<TagRule>,
    }
}

wire_struct! {
    /// Answer: `TagRuleList`.
    pub struct ListTagRules;
}

wire_struct! {
    /// Answer: `AgentList`.
    pub struct ListAgents;
}

wire_struct! {
    /// Follow a job, or every job of a run, until it is finished. Answer:
    /// `Done`, then `JobUpdate` pushes under this request's id.
    pub struct Watch {
        pub target: WatchTarget,
    }
}

/// What a `Watch` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WatchTarget {
    Job(JobId),
    Run(RunId),
}

impl Wire for WatchTarget {
    const ENCODED_LENGTH_MIN: usize = 1 + 8;

    fn encode(&self, writer: &mut Writer<'_>) {
        match self {
            WatchTarget::Job(job) => {
                writer.u8(1);
                writer.write(job);
            }
            WatchTarget::Run(run) => {
                writer.u8(2);
                writer.write(run);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        const FIELD: &str = "WatchTarget";
        match reader.tag(FIELD, &["Job", "Run"])? {
            1 => Ok(WatchTarget::Job(reader.read("WatchTarget.job")?)),
            2 => Ok(WatchTarget::Run(reader.read("WatchTarget.run")?)),
            tag => Err(DecodeError::BadTag { field: FIELD, tag }),
        }
    }
}

wire_struct! {
    /// An agent (re)connects: the first request of an agent connection.
    /// Answer: `Registered`.
    pub struct Register {
        /// Identifies the agent across connections.
        pub name: String,
        pub pools: Vec<String>,
        pub labels: Vec<Pair>,
        pub slots: u32,
        /// The jobs it still runs, with their attempts: these keep their
        /// lease; any other job leased to it loses its lease.
        pub running: Vec<(JobId, u32)>,
    }
}

wire_struct! {
    /// A standing request for up to `count` more jobs, replacing any
    /// earlier one (0 withdraws it). Answer: `Done`, then `Dispatch` pushes
    /// under this request's id.
    pub struct TakeWork {
        pub count: u32,
    }
}

wire_struct! {
    /// Renews the agent's lease. Answer: `Done`.
    pub struct Heartbeat;
}

wire_struct! {
    /// Reports finished jobs. Answer: `CompleteResults`, one result per
    /// completion, in order.
    pub struct Complete {
        pub completions: Vec<Completion>,
    }
}

wire_struct! {
    /// One finished job, as its agent saw it.
    pub struct Completion {
        pub job: JobId,
        pub attempt: u32,
        pub report: Report,
        pub exit_code: i32,
    }
}

impl From<Completion> for crate::sched::Completion {
    fn from(c: Completion) -> crate::sched::Completion {
        crate::sched::Completion {
            job: c.job,
            attempt: c.attempt,
            report: c.report,
            exit_code: c.exit_code,
        }
    }
}
