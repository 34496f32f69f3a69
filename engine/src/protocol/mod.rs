//! The wire protocol of Lanes as a pure codec: frames, message types, and
//! their encoding and decoding. It owns the byte layout that agents,
//! submitters and operators speak to `lanes serve`; it does no I/O, holds no
//! sockets, runs no tokio, and enforces no policy (authentication, roles,
//! per-server limits belong to the server).
//!
//! Component map:
//! - [`frame`]: the frame header, [`Frame::check`] (is a whole frame
//!   buffered? without allocating) and the encoding and decoding of a whole
//!   frame.
//! - [`message`]: [`MessageType`] numbers and the [`Message`] enum over every
//!   body.
//! - [`handshake`], [`request`], [`answer`], [`push`]: the message bodies, by
//!   who sends them and when.
//! - `wire`: the `Wire` trait, the encoding of every shared data type (ids,
//!   pairs, options, lists, the model's specifications and the views' status
//!   and block reasons).
//! - `reader` and `writer`: the bounded cursor that decodes primitives and
//!   the sink that encodes them.
//! - [`annotate`](annotate()): a decoded frame as hex annotated field by
//!   field, for the test vectors of docs/PROTOCOL.md and for debugging.
//! - [`error`]: [`DecodeError`] and [`EncodeError`].
//!
//! docs/PROTOCOL.md is the specification; its hex test vectors are checked
//! against this code by `engine/tests/protocol.rs`.
//!
//! *Architecture invariant:* decoding never trusts a length or count the
//! peer declared: each is checked against the bytes actually present before
//! anything is allocated, so memory use is bounded by the frame, and the
//! frame by the caller's limit. No input panics.
//!
//! *Architecture invariant:* every encoder and decoder here destructures the
//! model and view types it carries exhaustively, so a field or variant added
//! to `model` or `sched::view` is a compile error in this module, never a
//! silent change of the wire format. The encoding is canonical: a frame that
//! decodes re-encodes to the same bytes.

pub mod answer;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod push;
pub mod request;

mod annotate;
mod reader;
mod wire;
mod writer;

pub use annotate::annotate;
pub use answer::{
    AgentInfo, AgentList, CompleteResults, Done, ErrorAnswer, JobInfo, QueueInfo, QueueList,
    Registered, RunInfo, Submitted, TagRuleList,
};
pub use error::{DecodeError, EncodeError};
pub use frame::{Check, Frame, Header, HEADER_LENGTH, LENGTH_FIELD_LENGTH};
pub use handshake::{Hello, HelloOk, Role};
pub use message::{Message, MessageType};
pub use push::{Dispatch, JobUpdate, StopJob};
pub use request::{
    AppendJobs, CancelJob, CancelRun, ChangeJobPriority, ChangeRunPriority, Complete, Completion,
    ExplainJob, GetJob, GetRun, Heartbeat, ListAgents, ListQueues, ListTagRules, PauseQueue,
    PutQueue, Register, ResumeQueue, SetTagRules, SubmitRun, TakeWork, Watch, WatchTarget,
};

/// The protocol version this code speaks. Any change to the layout of a
/// message, a new message type, a new enum tag or error code bumps it (see
/// docs/PROTOCOL.md, "Versioning").
pub const PROTOCOL_VERSION: u16 = 1;

/// The request id the server uses for frames that answer no request: an
/// error about the connection itself (a frame too large, the handshake
/// deadline passed). Clients never send it.
pub const CONNECTION_REQUEST_ID: u64 = 0;
