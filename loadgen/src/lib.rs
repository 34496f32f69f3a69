//! lanes-loadgen: drives a job server with many submitter connections and
//! many simulated agents, and measures what it sees.
//!
//! Component map:
//!
//! - [`pacer`]: intended send times (fixed or seeded Poisson); no clock.
//! - [`workload`]: the job mix and arrival mode, validated; payload header.
//! - [`metrics`]: histograms per metric and priority, counters, series.
//! - [`order`]: the order checker, a pure function of observed events.
//! - [`run`]: what every target shares while running; the result.
//! - [`lanes_target`]: the Lanes wire protocol target (through
//!   `lanes::client`).
//! - [`peers`]: beanstalkd and Redis targets, each over a small hand-written
//!   protocol module ([`beanstalk`], [`resp`]).
//! - [`report`]: terminal table, JSON, HDR log, SVG plot, thresholds.
//! - [`machine`]: host facts and the generator's own CPU time.
//!
//! *Architecture invariant:* only `lanes_target`, `peers` and the binary
//! do I/O on sockets; `order`, `pacer`, `metrics` and `report`'s verdicts
//! are pure and unit-tested.

pub mod beanstalk;
pub mod lanes_target;
pub mod machine;
pub mod metrics;
pub mod order;
pub mod pacer;
pub mod peers;
pub mod report;
pub mod resp;
pub mod run;
pub mod workload;
