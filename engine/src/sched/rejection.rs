//! Rejections: a client's mistake, answered with a code and a readable
//! message. A rejected command changes nothing.

use crate::model::{AgentId, ErrorCode, JobId, PriorityParseError, RunId};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("queue {queue:?} is full: its depth limit is {depth}, it holds {count} jobs and the submission adds {adding}")]
    QueueFull {
        queue: String,
        depth: u32,
        count: u64,
        adding: u64,
    },
    #[error("unknown queue {queue:?}")]
    UnknownQueue { queue: String },
    #[error("queue {queue:?} does not support job priority (asked for priority {priority})")]
    PriorityUnsupported { queue: String, priority: i32 },
    #[error(transparent)]
    BadPriority(#[from] PriorityParseError),
    #[error("{0} not found")]
    UnknownJob(JobId),
    #[error("{0} not found")]
    UnknownRun(RunId),
    #[error("{0} not found")]
    UnknownAgent(AgentId),
    #[error("{0} is forgotten: its run finished longer ago than the retention (--retain-finished, --retain-finished-jobs) keeps")]
    ForgottenJob(JobId),
    #[error("{0} is forgotten: it finished longer ago than the retention (--retain-finished, --retain-finished-jobs) keeps")]
    ForgottenRun(RunId),
    #[error("{job} is {state}: only a waiting or held job's priority can change")]
    PriorityOfStartedJob { job: JobId, state: &'static str },
    #[error("{job} is already {state}")]
    AlreadyFinished { job: JobId, state: &'static str },
    #[error("{job} is not running on {agent}")]
    NotRunningOn { job: JobId, agent: AgentId },
    #[error("{job} attempt {reported} is stale: the job is on attempt {current}")]
    StaleAttempt {
        job: JobId,
        reported: u32,
        current: u32,
    },
    #[error("{agent} has not registered, or its lease has expired: register again")]
    AgentAbsent { agent: AgentId },
    #[error("idempotency key {key:?} was first used for a different submission")]
    IdempotencyMismatch { key: String },
    #[error(
        "trigger {trigger:?} already fired for time {scheduled} (its last firing was for {last})"
    )]
    AlreadyFired {
        trigger: String,
        scheduled: u64,
        last: u64,
    },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Rejection {
    pub fn code(&self) -> ErrorCode {
        match self {
            Rejection::QueueFull { .. } => ErrorCode::ResourceExhausted,
            Rejection::UnknownQueue { .. }
            | Rejection::UnknownJob(_)
            | Rejection::UnknownRun(_)
            | Rejection::UnknownAgent(_)
            | Rejection::ForgottenJob(_)
            | Rejection::ForgottenRun(_) => ErrorCode::NotFound,
            Rejection::PriorityUnsupported { .. } => ErrorCode::Unsupported,
            Rejection::BadPriority(_) | Rejection::Invalid { .. } => ErrorCode::InvalidArgument,
            Rejection::PriorityOfStartedJob { .. }
            | Rejection::AlreadyFinished { .. }
            | Rejection::NotRunningOn { .. }
            | Rejection::StaleAttempt { .. }
            | Rejection::AgentAbsent { .. }
            | Rejection::AlreadyFired { .. } => ErrorCode::FailedPrecondition,
            Rejection::IdempotencyMismatch { .. } => ErrorCode::AlreadyExists,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Rejection {
        Rejection::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
