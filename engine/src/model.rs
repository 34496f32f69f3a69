//! The domain vocabulary: ids, priorities, times, queue and tag-rule
//! configuration, job and run specifications, outcomes and error codes.
//!
//! Plain data only. Nothing here is serialized directly: the log and the wire
//! protocol define their own boundary types and convert at the edge.

use std::fmt;
use std::str::FromStr;

/// Milliseconds since the Unix epoch. Always an input to the scheduler,
/// never read by it.
pub type TimeMs = u64;

/// A log sequence number. Every event has its own; positions in the dispatch
/// order are sequence numbers, never wall-clock times.
pub type Seq = u64;

/// The queue every job lands in when neither it nor its run names one.
pub const DEFAULT_QUEUE: &str = "default";
/// The pool a queue is bound to when its configuration names none.
pub const DEFAULT_POOL: &str = "default";
/// Attempts a job gets before a lost lease ends it as LOST.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Tag keys whose value sets a job's priority when no explicit priority is
/// given (Dagster's `dagster/priority`, and the plain form).
pub const PRIORITY_TAG_KEYS: [&str; 2] = ["priority", "dagster/priority"];

/// Longest queue, pool, tag or label name, in bytes. Names travel in every
/// submission; a bound keeps a hostile client from bloating the state.
pub const NAME_LENGTH_MAX: usize = 128;
/// Longest tag or label value, in bytes.
pub const VALUE_LENGTH_MAX: usize = 256;
/// Most tags (or labels) on one job or run.
pub const TAGS_PER_JOB_MAX: usize = 32;
/// Most jobs in one submission or append: keeps one command's events, and the
/// time the single writer spends on it, bounded.
pub const JOBS_PER_SUBMISSION_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(pub u64);

/// An agent, numbered in order of first registration. An agent keeps its id
/// when it registers again under the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentId(pub u32);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.0)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run {}", self.0)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent {}", self.0)
    }
}

/// A job (or queue) priority: any signed 32-bit integer, higher runs first,
/// 0 by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(pub i32);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PriorityParseError {
    #[error("priority {text:?} is not an integer")]
    NotAnInteger { text: String },
    #[error("priority {text:?} is out of range: it must lie in -2147483648..=2147483647")]
    OutOfRange { text: String },
}

impl FromStr for Priority {
    type Err = PriorityParseError;

    /// Accepts an optional sign and decimal digits, nothing else: "1", "-1",
    /// "+3". Rejects "1.5", "high", "" and values outside i32.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PriorityParseError::NotAnInteger {
                text: text.to_string(),
            });
        }
        text.parse::<i32>()
            .map(Priority)
            .map_err(|_| PriorityParseError::OutOfRange {
                text: text.to_string(),
            })
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A `key=value` pair: a tag on a job or run, or a label on an agent (and a
/// label a job requires of its agent).
pub type Pair = (String, String);

/// A queue as an operator configures it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    pub name: String,
    /// Order between queues that share agents: higher first.
    pub priority: i32,
    /// The agent pools whose agents may take this queue's jobs.
    pub pools: Vec<String>,
    /// At most this many of the queue's jobs run at once.
    pub action_concurrency: Option<u32>,
    /// At most this many runs whose queue this is are active at once.
    pub run_concurrency: Option<u32>,
    /// At most this many jobs (waiting, running or held by dependencies).
    pub depth: Option<u32>,
    /// Whether jobs in this queue may carry a non-default priority.
    pub priority_supported: bool,
    pub paused: bool,
}

impl QueueConfig {
    /// A queue with no limits, bound to the default pool.
    pub fn new(name: &str) -> QueueConfig {
        QueueConfig {
            name: name.to_string(),
            priority: 0,
            pools: vec![DEFAULT_POOL.to_string()],
            action_concurrency: None,
            run_concurrency: None,
            depth: None,
            priority_supported: true,
            paused: false,
        }
    }
}

/// Which tag values a concurrency rule matches (Dagster's
/// `tag_concurrency_limits`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TagMatch {
    /// Every job with the key counts against one shared limit.
    AnyValue,
    /// Only jobs whose tag has exactly this value count.
    Value(String),
    /// Each distinct value has a limit of its own
    /// (`applyLimitPerUniqueValue`).
    EachValue,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRule {
    pub key: String,
    pub matches: TagMatch,
    pub limit: u32,
}

/// Options a job takes from its own spec, else from its run's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobOptions {
    pub queue: Option<String>,
    pub priority: Option<i32>,
    /// Tags; a job's tags are its run's merged with its own (its own win).
    pub tags: Vec<Pair>,
    /// Labels an agent must have to take the job; merged like tags.
    pub labels: Vec<Pair>,
    /// A job still waiting this long after it became waiting ends as
    /// QUEUE_TIMEOUT.
    pub max_queued_time_ms: Option<u64>,
    /// A job not finished this long after submission ends as
    /// DEADLINE_EXCEEDED.
    pub deadline_ms: Option<u64>,
    pub max_attempts: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobSpec {
    pub options: JobOptions,
    /// A Buildkite `wait` step stands before this job: it and every later job
    /// of the run wait until every earlier job has succeeded.
    pub wait_before: bool,
    /// Opaque bytes handed to the agent (the command to run).
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSpec {
    /// Defaults for every job of the run (Buildkite's top-level keys).
    pub defaults: JobOptions,
    pub jobs: Vec<JobSpec>,
    /// A client-chosen key: submitting again with the same key returns the
    /// first submission's ids and creates nothing.
    pub idempotency_key: Option<String>,
}

/// What an agent reports of a job it ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Report {
    Succeeded,
    Failed,
}

/// Why a running job was asked to stop. Its final outcome is decided by
/// this, whatever the agent reports afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    Cancelled,
    DeadlineExceeded,
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    /// An earlier job of its run (before a `wait`) did not succeed.
    Skipped,
    QueueTimeout,
    DeadlineExceeded,
    /// Its lease was lost on its last allowed attempt.
    Lost,
}

impl Outcome {
    pub fn is_success(self) -> bool {
        self == Outcome::Succeeded
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "SUCCEEDED",
            Outcome::Failed => "FAILED",
            Outcome::Cancelled => "CANCELLED",
            Outcome::Skipped => "SKIPPED",
            Outcome::QueueTimeout => "QUEUE_TIMEOUT",
            Outcome::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Outcome::Lost => "LOST",
        }
    }
}

impl From<StopReason> for Outcome {
    fn from(reason: StopReason) -> Outcome {
        match reason {
            StopReason::Cancelled => Outcome::Cancelled,
            StopReason::DeadlineExceeded => Outcome::DeadlineExceeded,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The one list of error codes every answer shares (the wire protocol
/// carries these numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    InvalidArgument = 1,
    NotFound = 2,
    AlreadyExists = 3,
    FailedPrecondition = 4,
    ResourceExhausted = 5,
    Unsupported = 6,
    Unauthenticated = 7,
    PermissionDenied = 8,
    Unavailable = 9,
    Internal = 10,
}

impl ErrorCode {
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks a queue, pool, tag or label name.
pub fn check_name(what: &'static str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if name.len() > NAME_LENGTH_MAX {
        return Err(format!(
            "{what} {name:?} is longer than {NAME_LENGTH_MAX} bytes"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b))
    {
        return Err(format!(
            "{what} {name:?} may hold only letters, digits and - _ . : / @"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_values_parse_as_integers_only() {
        assert_eq!("0".parse::<Priority>(), Ok(Priority(0)));
        assert_eq!("-1".parse::<Priority>(), Ok(Priority(-1)));
        assert_eq!("+3".parse::<Priority>(), Ok(Priority(3)));
        assert_eq!("2147483647".parse::<Priority>(), Ok(Priority(i32::MAX)));
        assert_eq!("-2147483648".parse::<Priority>(), Ok(Priority(i32::MIN)));
        for bad in ["", "-", "1.5", "high", " 1", "1e3", "0x10"] {
            assert_eq!(
                bad.parse::<Priority>(),
                Err(PriorityParseError::NotAnInteger {
                    text: bad.to_string()
                }),
                "{bad:?}"
            );
        }
        assert_eq!(
            "2147483648".parse::<Priority>(),
            Err(PriorityParseError::OutOfRange {
                text: "2147483648".to_string()
            })
        );
        assert_eq!(
            "high".parse::<Priority>().unwrap_err().to_string(),
            "priority \"high\" is not an integer"
        );
    }
}
