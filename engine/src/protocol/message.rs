//! Message types: the number of every message, and [`Message`], the one
//! enum over every body, which encodes and decodes a body by its type. It
//! owns the type numbers (docs/PROTOCOL.md, "Message types"); the bodies
//! live in `handshake`, `request`, `answer` and `push`, and framing in
//! `frame`.

use crate::sched::view::Explanation;

use super::answer::{
    AgentList, CompleteResults, Done, ErrorAnswer, JobInfo, QueueList, Registered, RunInfo,
    Submitted, TagRuleList,
};
use super::error::DecodeError;
use super::handshake::{Hello, HelloOk};
use super::push::{Dispatch, JobUpdate, StopJob};
use super::reader::Reader;
use super::request::{
    AppendJobs, CancelJob, CancelRun, ChangeJobPriority, ChangeRunPriority, Complete, ExplainJob,
    GetJob, GetRun, Heartbeat, ListAgents, ListQueues, ListTagRules, PauseQueue, PutQueue,
    Register, ResumeQueue, SetTagRules, SubmitRun, TakeWork, Watch,
};
use super::wire::Wire;
use super::writer::Writer;

/// Who sends a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// Declares every message once: its variant, its body type and its number.
/// The type enum, the message enum, and the dispatch of encoding and
/// decoding by type all come from this one list, so they cannot disagree.
macro_rules! messages {
    ($($variant:ident($body:ty) = $number:literal,)*) => {
        /// A message type number, as the frame header carries it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum MessageType {
            $($variant = $number,)*
        }

        impl MessageType {
            /// Every message type, in number order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$variant,)*];

            pub fn from_u16(number: u16) -> Option<MessageType> {
                match number {
                    $($number => Some(MessageType::$variant),)*
                    _ => None,
                }
            }

            /// The name docs/PROTOCOL.md uses.
            pub fn name(self) -> &'static str {
                match self {
                    $(MessageType::$variant => stringify!($variant),)*
                }
            }
        }

        /// Any message of the protocol.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Message {
            $($variant($body),)*
        }

        impl Message {
            pub fn message_type(&self) -> MessageType {
                match self {
                    $(Message::$variant(_) => MessageType::$variant,)*
                }
            }

            pub(crate) fn encode_body(&self, writer: &mut Writer<'_>) {
                match self {
                    $(Message::$variant(body) => body.encode(writer),)*
                }
            }

            pub(crate) fn decode_body(
                message_type: MessageType,
                reader: &mut Reader<'_>,
            ) -> Result<Message, DecodeError> {
                match message_type {
                    $(MessageType::$variant => {
                        <$body as Wire>::decode(reader, stringify!($variant)).map(Message::$variant)
                    })*
                }
            }
        }

        $(
            impl From<$body> for Message {
                fn from(body: $body) -> Message {
                    Message::$variant(body)
                }
            }
        )*
    };
}

messages! {
    // Handshake.
    Hello(Hello) = 0x0001,
    HelloOk(HelloOk) = 0x0002,
    // Submitter and operator requests.
    SubmitRun(SubmitRun) = 0x0101,
    AppendJobs(AppendJobs) = 0x0102,
    ChangeJobPriority(ChangeJobPriority) = 0x0103,
    ChangeRunPriority(ChangeRunPriority) = 0x0104,
    CancelJob(CancelJob) = 0x0105,
    CancelRun(CancelRun) = 0x0106,
    GetJob(GetJob) = 0x0107,
    GetRun(GetRun) = 0x0108,
    ExplainJob(ExplainJob) = 0x0109,
    ListQueues(ListQueues) = 0x010a,
    PauseQueue(PauseQueue) = 0x010b,
    ResumeQueue(ResumeQueue) = 0x010c,
    PutQueue(PutQueue) = 0x010d,
    SetTagRules(SetTagRules) = 0x010e,
    ListTagRules(ListTagRules) = 0x010f,
    ListAgents(ListAgents) = 0x0110,
    Watch(Watch) = 0x0111,
    // Agent requests.
    Register(Register) = 0x0201,
    TakeWork(TakeWork) = 0x0202,
    Heartbeat(Heartbeat) = 0x0203,
    Complete(Complete) = 0x0204,
    // Answers.
    Error(ErrorAnswer) = 0x0300,
    Done(Done) = 0x0301,
    Submitted(Submitted) = 0x0302,
    Registered(Registered) = 0x0303,
    JobInfo(JobInfo) = 0x0304,
    RunInfo(RunInfo) = 0x0305,
    Explanation(Explanation) = 0x0306,
    QueueList(QueueList) = 0x0307,
    AgentList(AgentList) = 0x0308,
    TagRuleList(TagRuleList) = 0x0309,
    CompleteResults(CompleteResults) = 0x030a,
    // Server pushes.
    Dispatch(Dispatch) = 0x0401,
    StopJob(StopJob) = 0x0402,
    JobUpdate(JobUpdate) = 0x0403,
}

impl MessageType {
    /// Clients send `Hello` and requests (0x01xx, 0x02xx); servers send
    /// `HelloOk`, answers (0x03xx) and pushes (0x04xx).
    pub fn sender(self) -> Sender {
        match self {
            MessageType::Hello => Sender::Client,
            MessageType::HelloOk => Sender::Server,
            other if (other as u16) < 0x0300 => Sender::Client,
            _ => Sender::Server,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_numbers_round_trip_and_unknown_numbers_are_none() {
        for &message_type in MessageType::ALL {
            assert_eq!(
                MessageType::from_u16(message_type as u16),
                Some(message_type)
            );
        }
        for number in [0u16, 0x0003, 0x0100, 0x0112, 0x0205, 0x030b, 0x0404, 0xffff] {
            assert_eq!(MessageType::from_u16(number), None, "{number:#06x}");
        }
        assert!(MessageType::ALL.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn senders_follow_the_number_ranges() {
        assert_eq!(MessageType::Hello.sender(), Sender::Client);
        assert_eq!(MessageType::HelloOk.sender(), Sender::Server);
        assert_eq!(MessageType::Watch.sender(), Sender::Client);
        assert_eq!(MessageType::Complete.sender(), Sender::Client);
        assert_eq!(MessageType::Error.sender(), Sender::Server);
        assert_eq!(MessageType::JobUpdate.sender(), Sender::Server);
    }
}
