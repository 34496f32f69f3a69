//! Lanes: a single-node, event-sourced job dispatch engine.
//!
//! Component map:
//! - [`model`]: the domain vocabulary (ids, priorities, queue and tag-rule
//!   configuration, job and run specifications, outcomes, error codes).
//! - [`sched`]: the deterministic state machine. Commands are validated into
//!   events; events are applied; the dispatch index answers "the best job for
//!   this agent" without scanning blocked jobs. No I/O, no clock.
//! - [`protocol`]: the wire protocol as a pure codec: frames, message types,
//!   their encoding and decoding (docs/PROTOCOL.md). No sockets.
//! - [`log`]: the durable log: record format, the storage seam, sled and
//!   in-memory stores.
//! - [`replay`]: log records back into a scheduler through the same apply.
//! - [`driver`]: the single writer and the syncer: batches commands, writes
//!   records, syncs once per batch, then answers and publishes.
//! - [`server`]: connections, handshake, roles, limits; requests become
//!   commands, dispatches become pushes.
//! - [`tls`]: optional TLS (rustls): PEM files into server and client
//!   configurations. No sockets.
//! - [`http`]: the operators' HTTP listener: `/metrics`, `/livez`,
//!   `/readyz`; [`metrics`]: every metric name and the engine's recorder.
//!
//! - [`client`]: the typed async client for submitters, operators, agents;
//!   [`agent_session`]: an agent's session that reconnects with backoff and
//!   resumes its leased jobs.
//! - [`runner`]: the agent's jobs as child processes, and the agent's loop.
//!
//! See docs/ARCHITECTURE.md.

pub mod agent_session;
pub mod allocator;
pub mod client;
pub mod driver;
pub mod http;
pub mod log;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod replay;
pub mod runner;
pub mod sched;
pub mod server;
pub mod tls;
pub mod triggers;
