//! Answers (0x03xx): what the server sends back, exactly once per request,
//! under the request's id, and the owned records they carry (the wire's
//! copies of the scheduler's borrowed views). It owns their layout and the
//! conversion from views and rejections; it does not decide which answer a
//! request gets.

use crate::model::{AgentId, ErrorCode, JobId, Pair, QueueConfig, RunId, TagRule};
use crate::sched::rejection::Rejection;
use crate::sched::view::{AgentView, JobStatus, JobView, QueueView, RunView};

use super::error::DecodeError;
use super::reader::Reader;
use super::wire::{wire_struct, Wire};
use super::writer::Writer;

wire_struct! {
    /// The request failed and changed nothing; or, under request id 0, the
    /// connection failed and the server closes it.
    pub struct ErrorAnswer {
        pub code: ErrorCode,
        /// For people: what was wrong, naming the field or limit.
        pub message: String,
    }
}

impl ErrorAnswer {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorAnswer {
        ErrorAnswer {
            code,
            message: message.into(),
        }
    }
}

impl From<&Rejection> for ErrorAnswer {
    fn from(rejection: &Rejection) -> ErrorAnswer {
        ErrorAnswer::new(rejection.code(), rejection.to_string())
    }
}

wire_struct! {
    /// The request was carried out and has nothing else to say.
    pub struct Done;
}

wire_struct! {
    /// Answers `SubmitRun` and `AppendJobs`: the jobs created have ids
    /// `first_job` to `first_job + count - 1`.
    pub struct Submitted {
        pub run: RunId,
        pub first_job: JobId,
        pub count: u32,
        /// An idempotency key matched an earlier submission: these are its
        /// ids and nothing new was created.
        pub replayed: bool,
    }
}

wire_struct! {
    /// Answers `Register`.
    pub struct Registered {
        pub agent: AgentId,
    }
}

wire_struct! {
    /// Answers `GetJob`: a job as the scheduler sees it.
    pub struct JobInfo {
        pub id: JobId,
        pub run: RunId,
        pub queue: String,
        pub priority: i32,
        /// The priority is the job's own, not inherited from its run.
        pub own_priority: bool,
        /// Its run's submission sequence, or that of its last priority
        /// change.
        pub position: u64,
        /// Its place in its run's upload order.
        pub upload: u32,
        /// `wait` steps before it in its run.
        pub stage: u32,
        pub status: JobStatus,
        pub attempt: u32,
        pub max_attempts: u32,
        pub tags: Vec<Pair>,
        pub labels: Vec<Pair>,
        pub submitted_at: u64,
        pub waiting_since: u64,
        pub max_queued_time_ms: Option<u64>,
        pub deadline_at: Option<u64>,
        pub payload: Vec<u8>,
    }
}

impl From<&JobView<'_>> for JobInfo {
    fn from(view: &JobView<'_>) -> JobInfo {
        let JobView {
            id,
            run,
            queue,
            priority,
            own_priority,
            position,
            upload,
            stage,
            status,
            attempt,
            max_attempts,
            tags,
            labels,
            submitted_at,
            waiting_since,
            max_queued_time_ms,
            deadline_at,
            payload,
        } = view;
        JobInfo {
            id: *id,
            run: *run,
            queue: queue.to_string(),
            priority: *priority,
            own_priority: *own_priority,
            position: *position,
            upload: *upload,
            stage: *stage,
            status: *status,
            attempt: *attempt,
            max_attempts: *max_attempts,
            tags: tags.to_vec(),
            labels: labels.to_vec(),
            submitted_at: *submitted_at,
            waiting_since: *waiting_since,
            max_queued_time_ms: *max_queued_time_ms,
            deadline_at: *deadline_at,
            payload: payload.to_vec(),
        }
    }
}

wire_struct! {
    /// Answers `GetRun`.
    pub struct RunInfo {
        pub id: RunId,
        pub queue: String,
        pub priority: i32,
        pub position: u64,
        pub submitted_at: u64,
        /// Every job of the run, in upload order.
        pub jobs: Vec<JobId>,
        pub unfinished: u32,
        /// Between its first dispatch and the end of its last job.
        pub active: bool,
        /// A job of it ended without success.
        pub failed: bool,
    }
}

impl From<&RunView<'_>> for RunInfo {
    fn from(view: &RunView<'_>) -> RunInfo {
        let RunView {
            id,
            queue,
            priority,
            position,
            submitted_at,
            jobs,
            unfinished,
            active,
            failed,
        } = view;
        RunInfo {
            id: *id,
            queue: queue.to_string(),
            priority: *priority,
            position: *position,
            submitted_at: *submitted_at,
            jobs: jobs.to_vec(),
            unfinished: *unfinished,
            active: *active,
            failed: *failed,
        }
    }
}

wire_struct! {
    /// Answers `ListQueues`: every queue, in order of creation.
    pub struct QueueList {
        pub queues: Vec<QueueInfo>,
    }
}

wire_struct! {
    /// A queue's configuration and counts.
    pub struct QueueInfo {
        pub config: QueueConfig,
        pub waiting: u64,
        pub running: u64,
        pub held: u64,
        pub active_runs: u32,
        pub submitted_total: u64,
        pub dispatched_total: u64,
        pub finished_total: u64,
    }
}

impl From<&QueueView<'_>> for QueueInfo {
    fn from(view: &QueueView<'_>) -> QueueInfo {
        let QueueView {
            config,
            waiting,
            running,
            held,
            active_runs,
            submitted_total,
            dispatched_total,
            finished_total,
        } = view;
        QueueInfo {
            config: (*config).clone(),
            waiting: *waiting,
            running: *running,
            held: *held,
            active_runs: *active_runs,
            submitted_total: *submitted_total,
            dispatched_total: *dispatched_total,
            finished_total: *finished_total,
        }
    }
}

wire_struct! {
    /// Answers `ListAgents`: every agent ever registered, by id.
    pub struct AgentList {
        pub agents: Vec<AgentInfo>,
    }
}

wire_struct! {
    pub struct AgentInfo {
        pub id: AgentId,
        pub name: String,
        pub pools: Vec<String>,
        pub labels: Vec<Pair>,
        pub slots: u32,
        pub running: Vec<JobId>,
        /// Jobs it still asks for.
        pub requested: u32,
        /// Registered and its lease not expired.
        pub present: bool,
        pub lease_until: u64,
    }
}

impl From<&AgentView<'_>> for AgentInfo {
    fn from(view: &AgentView<'_>) -> AgentInfo {
        let AgentView {
            id,
            name,
            pools,
            labels,
            slots,
            running,
            requested,
            present,
            lease_until,
        } = view;
        AgentInfo {
            id: *id,
            name: name.to_string(),
            pools: pools.to_vec(),
            labels: labels.to_vec(),
            slots: *slots,
            running: running.to_vec(),
            requested: *requested,
            present: *present,
            lease_until: *lease_until,
        }
    }
}

wire_struct! {
    /// Answers `ListTagRules`.
    pub struct TagRuleList {
        pub rules: Vec<TagRule>,
    }
}

wire_struct! {
    /// Answers `Complete`: one result per completion, in the same order.
    /// Each completion succeeds or fails on its own.
    pub struct CompleteResults {
        pub results: Vec<Result<(), ErrorAnswer>>,
    }
}

/// One completion's result: tag 1 accepted, tag 2 rejected with an error.
impl Wire for Result<(), ErrorAnswer> {
    const ENCODED_LENGTH_MIN: usize = 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        match self {
            Ok(()) => writer.u8(1),
            Err(error) => {
                writer.u8(2);
                writer.write(error);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        const FIELD: &str = "CompleteResult";
        match reader.tag(FIELD, &["Ok", "Error"])? {
            1 => Ok(Ok(())),
            2 => Ok(Err(reader.read("CompleteResult.error")?)),
            tag => Err(DecodeError::BadTag { field: FIELD, tag }),
        }
    }
}
