//! Lanes: a single-node, event-sourced job dispatch engine.
//!
//! Component map:
//! - [`model`]: the domain vocabulary (ids, priorities, queue and tag-rule
//!   configuration, job and run specifications, outcomes, error codes).
//! - [`sched`]: the deterministic state machine. Commands are validated into
//!   events; events are applied; the dispatch index answers "the best job for
//!   this agent" without scanning blocked jobs. No I/O, no clock.
//!
//! The durable log, the wire protocol, the server and the client build on
//! these (see docs/ARCHITECTURE.md).

pub mod model;
pub mod sched;
