//! The [`Wire`] trait and the encoding of every data type messages share:
//! integers, strings, ids, pairs, the model's specifications and
//! configurations, and the views' job status and block reasons. It owns
//! their byte layout (documented in docs/PROTOCOL.md, "Shared types"); it
//! does not validate values (names, limits): the scheduler does, after
//! decoding.

use crate::model::{
    AgentId, ErrorCode, JobId, JobOptions, JobSpec, Outcome, QueueConfig, Report, RunId, RunSpec,
    StopReason, TagMatch, TagRule,
};
use crate::sched::view::{BlockReason, Explanation, JobStatus};

use super::error::DecodeError;
use super::reader::Reader;
use super::writer::Writer;

/// A type with one canonical encoding.
pub(crate) trait Wire: Sized {
    /// The fewest bytes any value takes. A list's count is checked against
    /// it before a single element is decoded.
    const ENCODED_LENGTH_MIN: usize;

    fn encode(&self, writer: &mut Writer<'_>);

    /// Decodes one value. `field` names it in errors; a struct names its own
    /// fields instead.
    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError>;
}

/// Declares a message body or record whose fields are all [`Wire`] types,
/// with its encoding: the fields in declaration order, each named
/// `Struct.field` in errors and notes. A unit struct has an empty body.
macro_rules! wire_struct {
    ($(#[$meta:meta])* pub struct $name:ident;) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name;

        impl $crate::protocol::wire::Wire for $name {
            const ENCODED_LENGTH_MIN: usize = 0;

            fn encode(&self, _writer: &mut $crate::protocol::writer::Writer<'_>) {}

            fn decode(
                _reader: &mut $crate::protocol::reader::Reader<'_>,
                _field: &'static str,
            ) -> Result<Self, $crate::protocol::error::DecodeError> {
                Ok($name)
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident: $type:ty,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $type,)+
        }

        impl $crate::protocol::wire::Wire for $name {
            const ENCODED_LENGTH_MIN: usize =
                0 $(+ <$type as $crate::protocol::wire::Wire>::ENCODED_LENGTH_MIN)+;

            fn encode(&self, writer: &mut $crate::protocol::writer::Writer<'_>) {
                let $name { $($field,)+ } = self;
                $(writer.write($field);)+
            }

            fn decode(
                reader: &mut $crate::protocol::reader::Reader<'_>,
                _field: &'static str,
            ) -> Result<Self, $crate::protocol::error::DecodeError> {
                Ok($name {
                    $($field: reader.read(concat!(stringify!($name), ".", stringify!($field)))?,)+
                })
            }
        }
    };
}
pub(crate) use wire_struct;

impl Wire for bool {
    const ENCODED_LENGTH_MIN: usize = 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.bool(*self);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        reader.bool(field)
    }
}

impl Wire for u16 {
    const ENCODED_LENGTH_MIN: usize = 2;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.u16(*self);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        reader.u16(field)
    }
}

/// An option: a u8 presence tag (0 or 1), then the value if present.
impl<T: Wire> Wire for Option<T> {
    const ENCODED_LENGTH_MIN: usize = 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.option(self);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        reader.option(field)
    }
}

/// A list: a u32 count, then the elements.
impl<T: Wire> Wire for Vec<T> {
    const ENCODED_LENGTH_MIN: usize = 4;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.list(self);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        reader.list(field)
    }
}

/// A byte string: a u32 length, then the bytes. Not a list of u8 (u8 is not
/// a [`Wire`] type), so no element-by-element decoding.
impl Wire for Vec<u8> {
    const ENCODED_LENGTH_MIN: usize = 4;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.bytes(self);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        reader.bytes(field)
    }
}

impl Wire for u32 {
    const ENCODED_LENGTH_MIN: usize = 4;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.u32(*self);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        reader.u32(field)
    }
}

impl Wire for u64 {
    const ENCODED_LENGTH_MIN: usize = 8;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.u64(*self);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        reader.u64(field)
    }
}

impl Wire for i32 {
    const ENCODED_LENGTH_MIN: usize = 4;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.i32(*self);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        reader.i32(field)
    }
}

impl Wire for String {
    const ENCODED_LENGTH_MIN: usize = 4;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.string(self);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        reader.string(field)
    }
}

/// A pair: a tag or label `(key, value)`, or a running job `(job, attempt)`.
impl<A: Wire, B: Wire> Wire for (A, B) {
    const ENCODED_LENGTH_MIN: usize = A::ENCODED_LENGTH_MIN + B::ENCODED_LENGTH_MIN;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.write(&self.0);
        writer.write(&self.1);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        Ok((reader.read(field)?, reader.read(field)?))
    }
}

impl Wire for JobId {
    const ENCODED_LENGTH_MIN: usize = 8;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.u64(self.0);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        reader.u64(field).map(JobId)
    }
}

impl Wire for RunId {
    const ENCODED_LENGTH_MIN: usize = 8;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.u64(self.0);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        reader.u64(field).map(RunId)
    }
}

impl Wire for AgentId {
    const ENCODED_LENGTH_MIN: usize = 4;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.u32(self.0);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        reader.u32(field).map(AgentId)
    }
}

impl Wire for JobOptions {
    // Three absent options, two empty lists, two absent options.
    const ENCODED_LENGTH_MIN: usize = 1 + 1 + 4 + 4 + 1 + 1 + 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        let JobOptions {
            queue,
            priority,
            tags,
            labels,
            max_queued_time_ms,
            deadline_ms,
            max_attempts,
        } = self;
        writer.option(queue);
        writer.option(priority);
        writer.list(tags);
        writer.list(labels);
        writer.option(max_queued_time_ms);
        writer.option(deadline_ms);
        writer.option(max_attempts);
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        Ok(JobOptions {
            queue: reader.option("JobOptions.queue")?,
            priority: reader.option("JobOptions.priority")?,
            tags: reader.list("JobOptions.tags")?,
            labels: reader.list("JobOptions.labels")?,
            max_queued_time_ms: reader.option("JobOptions.max_queued_time_ms")?,
            deadline_ms: reader.option("JobOptions.deadline_ms")?,
            max_attempts: reader.option("JobOptions.max_attempts")?,
        })
    }
}

impl Wire for JobSpec {
    const ENCODED_LENGTH_MIN: usize = JobOptions::ENCODED_LENGTH_MIN + 1 + 4;

    fn encode(&self, writer: &mut Writer<'_>) {
        let JobSpec {
            options,
            wait_before,
            payload,
        } = self;
        writer.write(options);
        writer.bool(*wait_before);
        writer.bytes(payload);
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        Ok(JobSpec {
            options: reader.read("JobSpec.options")?,
            wait_before: reader.bool("JobSpec.wait_before")?,
            payload: reader.bytes("JobSpec.payload")?,
        })
    }
}

impl Wire for RunSpec {
    const ENCODED_LENGTH_MIN: usize = JobOptions::ENCODED_LENGTH_MIN + 4 + 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        let RunSpec {
            defaults,
            jobs,
            idempotency_key,
        } = self;
        writer.write(defaults);
        writer.list(jobs);
        writer.option(idempotency_key);
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        Ok(RunSpec {
            defaults: reader.read("RunSpec.defaults")?,
            jobs: reader.list("RunSpec.jobs")?,
            idempotency_key: reader.option("RunSpec.idempotency_key")?,
        })
    }
}

impl Wire for QueueConfig {
    const ENCODED_LENGTH_MIN: usize = 4 + 4 + 4 + 1 + 1 + 1 + 1 + 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        let QueueConfig {
            name,
            priority,
            pools,
            action_concurrency,
            run_concurrency,
            depth,
            priority_supported,
            paused,
        } = self;
        writer.string(name);
        writer.i32(*priority);
        writer.list(pools);
        writer.option(action_concurrency);
        writer.option(run_concurrency);
        writer.option(depth);
        writer.bool(*priority_supported);
        writer.bool(*paused);
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        Ok(QueueConfig {
            name: reader.string("QueueConfig.name")?,
            priority: reader.i32("QueueConfig.priority")?,
            pools: reader.list("QueueConfig.pools")?,
            action_concurrency: reader.option("QueueConfig.action_concurrency")?,
            run_concurrency: reader.option("QueueConfig.run_concurrency")?,
            depth: reader.option("QueueConfig.depth")?,
            priority_supported: reader.bool("QueueConfig.priority_supported")?,
            paused: reader.bool("QueueConfig.paused")?,
        })
    }
}

impl Wire for TagMatch {
    const ENCODED_LENGTH_MIN: usize = 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        match self {
            TagMatch::AnyValue => writer.u8(1),
            TagMatch::Value(value) => {
                writer.u8(2);
                writer.string(value);
            }
            TagMatch::EachValue => writer.u8(3),
        }
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        const FIELD: &str = "TagMatch";
        match reader.tag(FIELD, &["AnyValue", "Value", "EachValue"])? {
            1 => Ok(TagMatch::AnyValue),
            2 => Ok(TagMatch::Value(reader.string("TagMatch.value")?)),
            3 => Ok(TagMatch::EachValue),
            tag => Err(DecodeError::BadTag { field: FIELD, tag }),
        }
    }
}

impl Wire for TagRule {
    const ENCODED_LENGTH_MIN: usize = 4 + TagMatch::ENCODED_LENGTH_MIN + 4;

    fn encode(&self, writer: &mut Writer<'_>) {
        let TagRule {
            key,
            matches,
            limit,
        } = self;
        writer.string(key);
        writer.write(matches);
        writer.u32(*limit);
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        Ok(TagRule {
            key: reader.string("TagRule.key")?,
            matches: reader.read("TagRule.matches")?,
            limit: reader.u32("TagRule.limit")?,
        })
    }
}

impl Wire for Report {
    const ENCODED_LENGTH_MIN: usize = 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.u8(match self {
            Report::Succeeded => 1,
            Report::Failed => 2,
        });
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        match reader.tag(field, &["Succeeded", "Failed"])? {
            1 => Ok(Report::Succeeded),
            2 => Ok(Report::Failed),
            tag => Err(DecodeError::BadTag { field, tag }),
        }
    }
}

impl Wire for StopReason {
    const ENCODED_LENGTH_MIN: usize = 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        writer.u8(match self {
            StopReason::Cancelled => 1,
            StopReason::DeadlineExceeded => 2,
        });
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        match reader.tag(field, &["Cancelled", "DeadlineExceeded"])? {
            1 => Ok(StopReason::Cancelled),
            2 => Ok(StopReason::DeadlineExceeded),
            tag => Err(DecodeError::BadTag { field, tag }),
        }
    }
}

/// Outcomes in tag order: the tag of `OUTCOMES[i]` is `i + 1`.
const OUTCOMES: [Outcome; 7] = [
    Outcome::Succeeded,
    Outcome::Failed,
    Outcome::Cancelled,
    Outcome::Skipped,
    Outcome::QueueTimeout,
    Outcome::DeadlineExceeded,
    Outcome::Lost,
];

impl Wire for Outcome {
    const ENCODED_LENGTH_MIN: usize = 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        // An exhaustive match, not a search of OUTCOMES: a new outcome must
        // be given a tag here before this compiles.
        writer.u8(match self {
            Outcome::Succeeded => 1,
            Outcome::Failed => 2,
            Outcome::Cancelled => 3,
            Outcome::Skipped => 4,
            Outcome::QueueTimeout => 5,
            Outcome::DeadlineExceeded => 6,
            Outcome::Lost => 7,
        });
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let names = OUTCOMES.map(Outcome::name);
        let tag = reader.tag(field, &names)?;
        OUTCOMES
            .get(usize::from(tag).wrapping_sub(1))
            .copied()
            .ok_or(DecodeError::BadTag { field, tag })
    }
}

/// Error codes in number order: the number of `ERROR_CODES[i]` is `i + 1`.
const ERROR_CODES: [ErrorCode; 10] = [
    ErrorCode::InvalidArgument,
    ErrorCode::NotFound,
    ErrorCode::AlreadyExists,
    ErrorCode::FailedPrecondition,
    ErrorCode::ResourceExhausted,
    ErrorCode::Unsupported,
    ErrorCode::Unauthenticated,
    ErrorCode::PermissionDenied,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
];

impl Wire for ErrorCode {
    const ENCODED_LENGTH_MIN: usize = 2;

    fn encode(&self, writer: &mut Writer<'_>) {
        // The wire carries model::ErrorCode's own numbers.
        writer.u16(*self as u16);
    }

    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        let code = reader.u16(field)?;
        let found = ERROR_CODES
            .iter()
            .copied()
            .find(|known| *known as u16 == code)
            .ok_or(DecodeError::BadErrorCode { field, code })?;
        reader.note_name(found.name());
        Ok(found)
    }
}

impl Wire for JobStatus {
    const ENCODED_LENGTH_MIN: usize = 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        match self {
            JobStatus::Held => writer.u8(1),
            JobStatus::Waiting => writer.u8(2),
            JobStatus::Running { agent, stopping } => {
                writer.u8(3);
                writer.write(agent);
                writer.option(stopping);
            }
            JobStatus::Finished {
                outcome,
                exit_code,
                at,
            } => {
                writer.u8(4);
                writer.write(outcome);
                writer.option(exit_code);
                writer.u64(*at);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        const FIELD: &str = "JobStatus";
        match reader.tag(FIELD, &["Held", "Waiting", "Running", "Finished"])? {
            1 => Ok(JobStatus::Held),
            2 => Ok(JobStatus::Waiting),
            3 => Ok(JobStatus::Running {
                agent: reader.read("JobStatus.agent")?,
                stopping: reader.option("JobStatus.stopping")?,
            }),
            4 => Ok(JobStatus::Finished {
                outcome: reader.read("JobStatus.outcome")?,
                exit_code: reader.option("JobStatus.exit_code")?,
                at: reader.u64("JobStatus.at")?,
            }),
            tag => Err(DecodeError::BadTag { field: FIELD, tag }),
        }
    }
}

impl Wire for BlockReason {
    const ENCODED_LENGTH_MIN: usize = 1;

    fn encode(&self, writer: &mut Writer<'_>) {
        match self {
            BlockReason::QueuePaused { queue } => {
                writer.u8(1);
                writer.string(queue);
            }
            BlockReason::QueueConcurrency {
                queue,
                running,
                limit,
            } => {
                writer.u8(2);
                writer.string(queue);
                writer.u32(*running);
                writer.u32(*limit);
            }
            BlockReason::RunConcurrency {
                queue,
                active,
                limit,
            } => {
                writer.u8(3);
                writer.string(queue);
                writer.u32(*active);
                writer.u32(*limit);
            }
            BlockReason::TagRule {
                key,
                value,
                running,
                limit,
            } => {
                writer.u8(4);
                writer.string(key);
                writer.option(value);
                writer.u32(*running);
                writer.u32(*limit);
            }
            BlockReason::NoAgent { pools, labels } => {
                writer.u8(5);
                writer.list(pools);
                writer.list(labels);
            }
            BlockReason::DependenciesPending { unfinished } => {
                writer.u8(6);
                writer.u32(*unfinished);
            }
            BlockReason::WaitingForSlot => writer.u8(7),
        }
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        const FIELD: &str = "BlockReason";
        let names = [
            "QueuePaused",
            "QueueConcurrency",
            "RunConcurrency",
            "TagRule",
            "NoAgent",
            "DependenciesPending",
            "WaitingForSlot",
        ];
        match reader.tag(FIELD, &names)? {
            1 => Ok(BlockReason::QueuePaused {
                queue: reader.string("BlockReason.queue")?,
            }),
            2 => Ok(BlockReason::QueueConcurrency {
                queue: reader.string("BlockReason.queue")?,
                running: reader.u32("BlockReason.running")?,
                limit: reader.u32("BlockReason.limit")?,
            }),
            3 => Ok(BlockReason::RunConcurrency {
                queue: reader.string("BlockReason.queue")?,
                active: reader.u32("BlockReason.active")?,
                limit: reader.u32("BlockReason.limit")?,
            }),
            4 => Ok(BlockReason::TagRule {
                key: reader.string("BlockReason.key")?,
                value: reader.option("BlockReason.value")?,
                running: reader.u32("BlockReason.running")?,
                limit: reader.u32("BlockReason.limit")?,
            }),
            5 => Ok(BlockReason::NoAgent {
                pools: reader.list("BlockReason.pools")?,
                labels: reader.list("BlockReason.labels")?,
            }),
            6 => Ok(BlockReason::DependenciesPending {
                unfinished: reader.u32("BlockReason.unfinished")?,
            }),
            7 => Ok(BlockReason::WaitingForSlot),
            tag => Err(DecodeError::BadTag { field: FIELD, tag }),
        }
    }
}

/// The body of an `Explanation` answer: the scheduler's own type, carried
/// field by field.
impl Wire for Explanation {
    const ENCODED_LENGTH_MIN: usize = 8 + JobStatus::ENCODED_LENGTH_MIN + 4 + 1 + 4;

    fn encode(&self, writer: &mut Writer<'_>) {
        let Explanation {
            job,
            status,
            queue,
            ahead,
            reasons,
        } = self;
        writer.write(job);
        writer.write(status);
        writer.string(queue);
        writer.option(ahead);
        writer.list(reasons);
    }

    fn decode(reader: &mut Reader<'_>, _field: &'static str) -> Result<Self, DecodeError> {
        Ok(Explanation {
            job: reader.read("Explanation.job")?,
            status: reader.read("Explanation.status")?,
            queue: reader.string("Explanation.queue")?,
            ahead: reader.option("Explanation.ahead")?,
            reasons: reader.list("Explanation.reasons")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Wire + PartialEq + std::fmt::Debug>(value: T) -> Vec<u8> {
        let mut bytes = Vec::new();
        Writer::new(&mut bytes).write(&value);
        assert!(bytes.len() >= T::ENCODED_LENGTH_MIN, "{value:?}");
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.read::<T>("value").as_ref(), Ok(&value));
        assert_eq!(reader.finish("value"), Ok(()));
        bytes
    }

    #[test]
    fn every_outcome_and_error_code_round_trips_with_its_documented_number() {
        for (index, outcome) in OUTCOMES.into_iter().enumerate() {
            assert_eq!(round_trip(outcome), [index as u8 + 1]);
        }
        for (index, code) in ERROR_CODES.into_iter().enumerate() {
            assert_eq!(round_trip(code), (index as u16 + 1).to_le_bytes());
        }
    }

    #[test]
    fn unknown_error_codes_are_rejected() {
        for code in [0u16, 11, u16::MAX] {
            assert_eq!(
                Reader::new(&code.to_le_bytes()).read::<ErrorCode>("Error.code"),
                Err(DecodeError::BadErrorCode {
                    field: "Error.code",
                    code
                })
            );
        }
    }

    #[test]
    fn minimum_lengths_are_the_lengths_of_the_smallest_values() {
        let mut bytes = Vec::new();
        Writer::new(&mut bytes).write(&JobOptions::default());
        assert_eq!(bytes.len(), JobOptions::ENCODED_LENGTH_MIN);
        assert_eq!(
            round_trip(JobSpec::default()).len(),
            JobSpec::ENCODED_LENGTH_MIN
        );
        assert_eq!(
            round_trip(RunSpec::default()).len(),
            RunSpec::ENCODED_LENGTH_MIN
        );
        let mut queue = QueueConfig::new("");
        queue.pools.clear();
        assert_eq!(round_trip(queue).len(), QueueConfig::ENCODED_LENGTH_MIN);
        let rule = TagRule {
            key: String::new(),
            matches: TagMatch::AnyValue,
            limit: 0,
        };
        assert_eq!(round_trip(rule).len(), TagRule::ENCODED_LENGTH_MIN);
        let explanation = Explanation {
            job: JobId(0),
            status: JobStatus::Held,
            queue: String::new(),
            ahead: None,
            reasons: Vec::new(),
        };
        assert_eq!(
            round_trip(explanation).len(),
            Explanation::ENCODED_LENGTH_MIN
        );
    }
}
