//! The durable event log: records (one group-commit batch of events each),
//! their byte format, and where they are stored.
//!
//! - [`format`]: the record bytes, checksums and the rkyv boundary types
//!   (the only serialization of events).
//! - [`store`]: the storage seam ([`LogStore`], [`Syncer`]).
//! - [`SledStore`]: the log in sled; [`MemoryStore`]: in memory, with
//!   fault injection, for tests.
//!
//! *Architecture invariant:* the log knows events only as bytes with a
//! sequence; it makes no scheduling decision and never reads the state.

pub mod format;
mod memory;
mod sled_store;
pub mod snapshot;
pub mod store;
pub mod verify;

pub use memory::MemoryStore;
pub use sled_store::SledStore;
pub use store::{LogReader, LogStore, StoreError, Syncer};
