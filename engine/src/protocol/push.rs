//! Server pushes (0x04xx): frames the server sends unasked, under the
//! request id of the standing request they serve (`TakeWork` for
//! `Dispatch`, `Register` for `StopJob`, `Watch` for `JobUpdate`). It owns
//! their layout; it does not decide when they are sent.

use crate::model::{JobId, Pair, RunId, StopReason};
use crate::sched::view::JobStatus;

use super::wire::wire_struct;

wire_struct! {
    /// A job leased to the agent: run it and report with `Complete`.
    pub struct Dispatch {
        pub job: JobId,
        pub run: RunId,
        /// Report this attempt number in `Complete`.
        pub attempt: u32,
        pub queue: String,
        pub priority: i32,
        /// The job's merged tags (its run's and its own).
        pub tags: Vec<Pair>,
        pub payload: Vec<u8>,
    }
}

wire_struct! {
    /// Stop running this attempt of the job, then report with `Complete`
    /// (whatever is reported, the job ends with the stop's outcome).
    pub struct StopJob {
        pub job: JobId,
        pub attempt: u32,
        pub reason: StopReason,
    }
}

wire_struct! {
    /// A watched job's state, sent once when the watch starts and again on
    /// every change.
    pub struct JobUpdate {
        pub job: JobId,
        pub run: RunId,
        pub attempt: u32,
        pub status: JobStatus,
        /// The watch is over: this is the last frame under its request id.
        pub last: bool,
    }
}
