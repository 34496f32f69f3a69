//! What a run offers a target: the job mix (queues, priorities, tags, run
//! size, durations, payloads), the arrival mode, and how many connections
//! and agent slots carry it. Plain validated data; choices per submission
//! come from a seeded generator so any run replays from its seed.

use std::time::Duration;

use crate::pacer::{Arrivals, SplitMix64};

/// Largest payload a job carries: the server's default per-job limit.
pub const PAYLOAD_BYTES_MAX: usize = 1 << 20;
/// The header every payload starts with: the intended send time (u64),
/// flags (u32), the priority (i32) and the send's number (u64), so an agent
/// or a peer's worker can measure without asking the target.
pub const PAYLOAD_HEADER_BYTES: usize = 24;
/// The send number of jobs whose acknowledgement nobody records.
pub const SEND_UNKNOWN: u64 = u64::MAX;
/// Flag: a preloaded job, not measured.
pub const FLAG_PRELOAD: u32 = 1;
/// Flag: the job is under a tag limit (the order checker does not use it as
/// a waiting job).
pub const FLAG_LIMITED: u32 = 2;
/// Tag key the generator puts on jobs that carry a tag value.
pub const TAG_KEY: &str = "lg-tag";
/// Tag key of preloaded jobs (workload c), under its own limit.
pub const PRELOAD_TAG_KEY: &str = "lg-preload";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum JobDuration {
    Fixed(Duration),
    /// Exponential with this mean.
    Exponential(Duration),
    /// Uniform between the two.
    Uniform(Duration, Duration),
}

impl JobDuration {
    pub fn sample(&self, random: &mut SplitMix64) -> Duration {
        match *self {
            JobDuration::Fixed(d) => d,
            JobDuration::Exponential(mean) => {
                Duration::from_secs_f64(random.exponential(mean.as_secs_f64()))
            }
            JobDuration::Uniform(low, high) => low + (high - low).mul_f64(random.next_f64()),
        }
    }

    /// `0`, `5ms`, `fixed:5ms`, `exp:5ms`, `uniform:1ms..10ms`.
    pub fn parse(text: &str) -> Result<JobDuration, String> {
        let duration = |t: &str| {
            if t == "0" {
                return Ok(Duration::ZERO);
            }
            humantime::parse_duration(t).map_err(|e| format!("{t:?}: {e}"))
        };
        if let Some(rest) = text.strip_prefix("exp:") {
            return Ok(JobDuration::Exponential(duration(rest)?));
        }
        if let Some(rest) = text.strip_prefix("uniform:") {
            let (low, high) = rest
                .split_once("..")
                .ok_or(format!("{text:?}: expected uniform:LOW..HIGH"))?;
            let (low, high) = (duration(low)?, duration(high)?);
            if low > high {
                return Err(format!("{text:?}: the low bound is above the high bound"));
            }
            return Ok(JobDuration::Uniform(low, high));
        }
        Ok(JobDuration::Fixed(duration(
            text.strip_prefix("fixed:").unwrap_or(text),
        )?))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Arrivals on a schedule; latency from the intended send time.
    Open {
        rate_per_second: f64,
        arrivals: Arrivals,
    },
    /// Each connection keeps this many submissions outstanding; latency from
    /// the actual send (subject to coordinated omission, by design).
    Closed { outstanding: u32 },
}

impl Mode {
    pub fn label(&self) -> String {
        match self {
            Mode::Open {
                rate_per_second,
                arrivals,
            } => format!(
                "open loop, {} arrivals at {rate_per_second}/s",
                match arrivals {
                    Arrivals::Fixed => "fixed-interval",
                    Arrivals::Poisson => "Poisson",
                }
            ),
            Mode::Closed { outstanding } => format!(
                "CLOSED LOOP, {outstanding} outstanding per connection (latency from the actual send: coordinated omission not corrected)"
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// Queue names; one submission goes to one of them, uniformly.
    pub queues: Vec<String>,
    /// Priorities drawn uniformly per submission.
    pub priorities: Vec<i32>,
    /// Distinct values of the `lg-tag` tag (0: no tag).
    pub tag_values: u32,
    /// A per-value limit on running jobs of `lg-tag` (EachValue rule).
    pub tag_limit: Option<u32>,
    /// Jobs per submission (1: one job per request).
    pub run_size: u32,
    pub job_duration: JobDuration,
    /// Bytes of each job's payload (at least the 16-byte header).
    pub payload_bytes: usize,
}

/// The choices for one submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub queue: u32,
    pub priority: i32,
    /// A tag value index, when the workload tags jobs.
    pub tag_value: Option<u32>,
}

impl Workload {
    pub fn choose(&self, random: &mut SplitMix64) -> Choice {
        let queue = random.below(self.queues.len() as u64) as u32;
        let priority = self.priorities[random.below(self.priorities.len() as u64) as usize];
        let tag_value =
            (self.tag_values > 0).then(|| random.below(u64::from(self.tag_values)) as u32);
        Choice {
            queue,
            priority,
            tag_value,
        }
    }

    /// Whether jobs of this choice sit under a limit.
    pub fn limited(&self, choice: &Choice) -> bool {
        choice.tag_value.is_some() && self.tag_limit.is_some()
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.queues.is_empty() {
            return Err("at least one queue".into());
        }
        if self.priorities.is_empty() {
            return Err("at least one priority".into());
        }
        if self.run_size == 0 || self.run_size > 10_000 {
            return Err(
                "--run-size must lie in 1..=10000 (the server's limit per submission)".into(),
            );
        }
        if self.payload_bytes < PAYLOAD_HEADER_BYTES || self.payload_bytes > PAYLOAD_BYTES_MAX {
            return Err(format!(
                "--payload-bytes must lie in {PAYLOAD_HEADER_BYTES}..={PAYLOAD_BYTES_MAX}"
            ));
        }
        Ok(())
    }
}

/// What a payload's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub intended_ns: u64,
    pub flags: u32,
    pub priority: i32,
    /// Which send carried it ([`crate::run::AckTimes`]).
    pub send: u64,
}

/// A payload: the header, then filler up to `bytes`.
pub fn payload(header: Header, bytes: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(bytes.max(PAYLOAD_HEADER_BYTES));
    payload.extend_from_slice(&header.intended_ns.to_le_bytes());
    payload.extend_from_slice(&header.flags.to_le_bytes());
    payload.extend_from_slice(&header.priority.to_le_bytes());
    payload.extend_from_slice(&header.send.to_le_bytes());
    payload.resize(bytes.max(PAYLOAD_HEADER_BYTES), b'x');
    payload
}

/// Reads a payload's header; `None` for a payload the generator did not
/// write (a job left over from someone else).
pub fn read_payload(payload: &[u8]) -> Option<Header> {
    let intended = payload.get(0..8)?.try_into().ok()?;
    let flags = payload.get(8..12)?.try_into().ok()?;
    let priority = payload.get(12..16)?.try_into().ok()?;
    let send = payload.get(16..24)?.try_into().ok()?;
    Some(Header {
        intended_ns: u64::from_le_bytes(intended),
        flags: u32::from_le_bytes(flags),
        priority: i32::from_le_bytes(priority),
        send: u64::from_le_bytes(send),
    })
}

/// The header assumed for a payload the generator did not write.
pub const FOREIGN: Header = Header {
    intended_ns: 0,
    flags: FLAG_PRELOAD | FLAG_LIMITED,
    priority: 0,
    send: SEND_UNKNOWN,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(
            JobDuration::parse("0"),
            Ok(JobDuration::Fixed(Duration::ZERO))
        );
        assert_eq!(
            JobDuration::parse("fixed:5ms"),
            Ok(JobDuration::Fixed(Duration::from_millis(5)))
        );
        assert_eq!(
            JobDuration::parse("exp:2ms"),
            Ok(JobDuration::Exponential(Duration::from_millis(2)))
        );
        assert_eq!(
            JobDuration::parse("uniform:1ms..3ms"),
            Ok(JobDuration::Uniform(
                Duration::from_millis(1),
                Duration::from_millis(3)
            ))
        );
        assert!(JobDuration::parse("uniform:3ms..1ms").is_err());
        assert!(JobDuration::parse("soon").is_err());
    }

    #[test]
    fn payload_round_trips_and_foreign_payloads_are_recognised() {
        let header = Header {
            intended_ns: 123,
            flags: FLAG_LIMITED,
            priority: -7,
            send: 42,
        };
        let bytes = payload(header, 64);
        assert_eq!(bytes.len(), 64);
        assert_eq!(read_payload(&bytes), Some(header));
        assert_eq!(payload(header, 0).len(), PAYLOAD_HEADER_BYTES);
        assert_eq!(read_payload(b"make test"), None);
    }
}
