//! The order checker: counts dispatches that broke precedence within a
//! queue, from what the generator can observe. A pure module fed with
//! events (a submission acknowledged, a job dispatched); it reads no clock
//! and talks to no server.
//!
//! # The rule it checks
//!
//! Within one queue, a job J *precedes* a job D when J's priority is
//! higher, or the priorities are equal and J's id is lower (ids grow in
//! submission order, so for the generator's workloads, which never append
//! to old runs nor change priorities, a lower id is an earlier position;
//! SEMANTICS.md, "Dispatch order"). Dispatching D while such a J was waiting
//! on the server, and J could have run on D's agent, breaks precedence.
//!
//! # What the generator can observe, and the conservative rule
//!
//! The generator never sees the server's decisions, only messages arriving
//! later. Three facts bound the times of those decisions:
//!
//! 1. An acknowledgement is sent after the submission is applied: J
//!    existed on the server before `acked(J)`.
//! 2. D's dispatch was decided before it arrived: `decided(D) <
//!    received(D)`.
//! 3. D's dispatch was decided after a *lower bound* `lower_bound(D)` the
//!    agent records: the later of the time D's submission was sent and the
//!    last time the agent sent a completion while all its slots were busy
//!    (the server counts a slot busy from its decision to its processing of
//!    the completion, so it saw the agent full at least as long as the
//!    agent did, and could decide nothing for it meanwhile).
//!
//! A dispatch D is counted as a **violation** when some job J of the same
//! queue precedes D and
//!
//! - `acked(J) < lower_bound(D)`: J existed before D was decided, and
//! - `lower_bound(J) > received(D)` (or J was never dispatched): J was
//!   decided after D, so it was still waiting when D was decided, and
//! - J is *judged*: the workload gave it no tag limit, no queue limit and no
//!   labels, and every agent serves its queue, so it could have run on D's
//!   agent.
//!
//! Each condition only uses bounds that hold whatever the network and
//! scheduling delays, so a correct server never produces a violation (no
//! false positives). The price is blindness: a job whose acknowledgement
//! arrived after the dispatch's lower bound, or whose own dispatch may have
//! been in flight when D arrived, cannot be judged, and a misordering
//! shorter than the round trips around it goes unseen. Jobs subject to
//! limits are never used as J (a limit may legitimately hold them back), but
//! their dispatches are still judged as D. Only first attempts are recorded:
//! a job put back after a lost lease keeps its old place, which the
//! generator does not model.
//!
//! # Cost
//!
//! [`OrderChecker::check`] sweeps each queue once: dispatches in order of
//! their lower bounds, candidate jobs entering a segment tree indexed by
//! precedence as their acknowledgements fall behind that bound; each
//! dispatch asks for the latest lower bound among the candidates that
//! precede it. O(n log n): a million jobs check in about a second.

use std::cmp::Reverse;
use std::collections::HashMap;

/// A submission the server acknowledged: jobs `first_job` to `first_job +
/// count - 1`, all in one queue at one priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub first_job: u64,
    pub count: u32,
    pub queue: u32,
    pub priority: i32,
    /// Whether these jobs may serve as J (no limits, no labels).
    pub judged: bool,
    pub acked_ns: u64,
}

/// A job's first attempt reaching an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dispatched {
    pub job: u64,
    pub queue: u32,
    pub priority: i32,
    /// No earlier than the server could have decided it (see the module
    /// documentation); at most `received_ns`.
    pub lower_bound_ns: u64,
    pub received_ns: u64,
}

/// One violation, for the report: `dispatched` went out while `waiting`
/// should have gone first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    pub queue: u32,
    pub dispatched_job: u64,
    pub dispatched_priority: i32,
    pub waiting_job: u64,
    pub waiting_priority: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderReport {
    /// Dispatches examined.
    pub dispatches: u64,
    /// Jobs that could serve as J.
    pub judged_jobs: u64,
    /// Dispatches that broke precedence.
    pub violations: u64,
    /// The first few, by dispatch.
    pub examples: Vec<Violation>,
}

/// Examples kept in a report.
pub const EXAMPLES_MAX: usize = 10;

#[derive(Default)]
pub struct OrderChecker {
    submitted: Vec<Submitted>,
    dispatched: Vec<Dispatched>,
}

/// Precedence: smaller goes first.
type Key = (Reverse<i32>, u64);

fn key(priority: i32, job: u64) -> Key {
    (Reverse(priority), job)
}

struct Candidate {
    key: Key,
    acked_ns: u64,
    /// `u64::MAX` when never dispatched.
    lower_bound_ns: u64,
}

impl OrderChecker {
    pub fn new() -> OrderChecker {
        OrderChecker::default()
    }

    pub fn submitted(&mut self, event: Submitted) {
        self.submitted.push(event);
    }

    pub fn dispatched(&mut self, event: Dispatched) {
        assert!(
            event.lower_bound_ns <= event.received_ns,
            "a dispatch's lower bound is at most its arrival"
        );
        self.dispatched.push(event);
    }

    pub fn extend(&mut self, other: OrderChecker) {
        self.submitted.extend(other.submitted);
        self.dispatched.extend(other.dispatched);
    }

    pub fn check(&self) -> OrderReport {
        let mut first_lower_bound: HashMap<u64, u64> =
            HashMap::with_capacity(self.dispatched.len());
        for d in &self.dispatched {
            first_lower_bound
                .entry(d.job)
                .and_modify(|lb| *lb = (*lb).min(d.lower_bound_ns))
                .or_insert(d.lower_bound_ns);
        }
        let mut candidates: HashMap<u32, Vec<Candidate>> = HashMap::new();
        let mut judged_jobs = 0;
        for s in self.submitted.iter().filter(|s| s.judged) {
            let list = candidates.entry(s.queue).or_default();
            for job in s.first_job..s.first_job + u64::from(s.count) {
                judged_jobs += 1;
                list.push(Candidate {
                    key: key(s.priority, job),
                    acked_ns: s.acked_ns,
                    lower_bound_ns: first_lower_bound.get(&job).copied().unwrap_or(u64::MAX),
                });
            }
        }
        let mut by_queue: HashMap<u32, Vec<&Dispatched>> = HashMap::new();
        for d in &self.dispatched {
            by_queue.entry(d.queue).or_default().push(d);
        }
        let mut report = OrderReport {
            dispatches: self.dispatched.len() as u64,
            judged_jobs,
            ..OrderReport::default()
        };
        let mut queues: Vec<u32> = by_queue.keys().copied().collect();
        queues.sort_unstable();
        for queue in queues {
            let mut dispatches = by_queue.remove(&queue).unwrap_or_default();
            let mut jobs = candidates.remove(&queue).unwrap_or_default();
            dispatches.sort_by_key(|d| (d.lower_bound_ns, d.received_ns, d.job));
            // Candidates by precedence: their ranks index the tree.
            jobs.sort_by_key(|c| c.key);
            let keys: Vec<Key> = jobs.iter().map(|c| c.key).collect();
            let mut by_ack: Vec<usize> = (0..jobs.len()).collect();
            by_ack.sort_by_key(|&rank| jobs[rank].acked_ns);
            let mut next = 0;
            let mut tree = MaxTree::new(jobs.len());
            for d in dispatches {
                while next < by_ack.len() && jobs[by_ack[next]].acked_ns < d.lower_bound_ns {
                    let rank = by_ack[next];
                    tree.set(rank, jobs[rank].lower_bound_ns);
                    next += 1;
                }
                // Every candidate that precedes D ranks below this position;
                // one of them was still waiting when D was decided if the
                // latest of their lower bounds is after D arrived.
                let end = keys.partition_point(|k| *k < key(d.priority, d.job));
                if let Some((lower_bound, rank)) = tree.max_before(end) {
                    if lower_bound > d.received_ns {
                        report.violations += 1;
                        if report.examples.len() < EXAMPLES_MAX {
                            report.examples.push(Violation {
                                queue,
                                dispatched_job: d.job,
                                dispatched_priority: d.priority,
                                waiting_job: keys[rank].1,
                                waiting_priority: keys[rank].0 .0,
                            });
                        }
                    }
                }
            }
        }
        report
    }
}

/// A segment tree of lower bounds by rank: set one, ask for the largest
/// (and where) among ranks below a position, both in O(log n).
struct MaxTree {
    size: usize,
    /// (lower bound, rank); `(0, 0)` for a rank not yet set. Leaves at
    /// `size..2 * size`.
    nodes: Vec<(u64, usize)>,
}

impl MaxTree {
    fn new(length: usize) -> MaxTree {
        let size = length.next_power_of_two().max(1);
        MaxTree {
            size,
            nodes: vec![(0, 0); 2 * size],
        }
    }

    fn set(&mut self, rank: usize, value: u64) {
        let mut i = rank + self.size;
        self.nodes[i] = (value, rank);
        while i > 1 {
            i /= 2;
            self.nodes[i] = self.nodes[2 * i].max(self.nodes[2 * i + 1]);
        }
    }

    /// The largest value among ranks `0..end`, with its rank.
    fn max_before(&self, end: usize) -> Option<(u64, usize)> {
        let (mut low, mut high) = (self.size, end + self.size);
        let mut best: Option<(u64, usize)> = None;
        while low < high {
            if low % 2 == 1 {
                best = best.max(Some(self.nodes[low]));
                low += 1;
            }
            if high % 2 == 1 {
                high -= 1;
                best = best.max(Some(self.nodes[high]));
            }
            low /= 2;
            high /= 2;
        }
        best.filter(|(value, _)| *value > 0)
    }
}

/// The rule applied pair by pair, for tests of the sweep.
#[cfg(test)]
fn naive_violations(checker: &OrderChecker) -> u64 {
    let mut first_lower_bound: HashMap<u64, u64> = HashMap::new();
    for d in &checker.dispatched {
        let lb = first_lower_bound.entry(d.job).or_insert(u64::MAX);
        *lb = (*lb).min(d.lower_bound_ns);
    }
    let mut count = 0;
    for d in &checker.dispatched {
        let broken = checker
            .submitted
            .iter()
            .filter(|s| s.judged && s.queue == d.queue)
            .any(|s| {
                (s.first_job..s.first_job + u64::from(s.count)).any(|job| {
                    key(s.priority, job) < key(d.priority, d.job)
                        && s.acked_ns < d.lower_bound_ns
                        && first_lower_bound.get(&job).copied().unwrap_or(u64::MAX) > d.received_ns
                })
            });
        count += u64::from(broken);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn submitted(first_job: u64, priority: i32, acked_ns: u64) -> Submitted {
        Submitted {
            first_job,
            count: 1,
            queue: 0,
            priority,
            judged: true,
            acked_ns,
        }
    }

    fn dispatched(job: u64, priority: i32, lower_bound_ns: u64, received_ns: u64) -> Dispatched {
        Dispatched {
            job,
            queue: 0,
            priority,
            lower_bound_ns,
            received_ns,
        }
    }

    fn check(submissions: &[Submitted], dispatches: &[Dispatched]) -> OrderReport {
        let mut checker = OrderChecker::new();
        submissions.iter().for_each(|s| checker.submitted(*s));
        dispatches.iter().for_each(|d| checker.dispatched(*d));
        let report = checker.check();
        assert_eq!(report.violations, naive_violations(&checker));
        report
    }

    #[test]
    fn a_lower_priority_dispatch_while_a_higher_one_clearly_waits_is_a_violation() {
        let report = check(
            &[submitted(1, 0, 10), submitted(2, 5, 20)],
            &[dispatched(1, 0, 100, 110), dispatched(2, 5, 200, 210)],
        );
        assert_eq!(report.violations, 1);
        assert_eq!(
            report.examples,
            vec![Violation {
                queue: 0,
                dispatched_job: 1,
                dispatched_priority: 0,
                waiting_job: 2,
                waiting_priority: 5,
            }]
        );
    }

    #[test]
    fn fifo_within_a_level_is_checked_by_job_id() {
        let report = check(
            &[submitted(1, 3, 10), submitted(2, 3, 20)],
            &[dispatched(2, 3, 100, 110), dispatched(1, 3, 200, 210)],
        );
        assert_eq!(report.violations, 1);
        let report = check(
            &[submitted(1, 3, 10), submitted(2, 3, 20)],
            &[dispatched(1, 3, 100, 110), dispatched(2, 3, 200, 210)],
        );
        assert_eq!(report.violations, 0);
    }

    #[test]
    fn an_acknowledgement_after_the_lower_bound_cannot_be_judged() {
        // Job 2's acknowledgement arrived after job 1's dispatch could have
        // been decided: the server may have decided before job 2 existed.
        let report = check(
            &[submitted(1, 0, 10), submitted(2, 5, 150)],
            &[dispatched(1, 0, 100, 160), dispatched(2, 5, 200, 210)],
        );
        assert_eq!(report.violations, 0);
    }

    #[test]
    fn a_dispatch_possibly_in_flight_cannot_be_judged() {
        // Job 2 may have been decided (for another agent) before job 1,
        // its push arriving later: its lower bound is before job 1 arrived.
        let report = check(
            &[submitted(1, 0, 10), submitted(2, 5, 20)],
            &[dispatched(1, 0, 100, 130), dispatched(2, 5, 120, 140)],
        );
        assert_eq!(report.violations, 0);
    }

    #[test]
    fn a_job_under_a_limit_is_never_the_waiting_job() {
        let mut limited = submitted(2, 5, 20);
        limited.judged = false;
        let report = check(
            &[submitted(1, 0, 10), limited],
            &[dispatched(1, 0, 100, 110), dispatched(2, 5, 200, 210)],
        );
        assert_eq!(report.violations, 0);
        assert_eq!(report.judged_jobs, 1);
    }

    #[test]
    fn other_queues_do_not_count() {
        let mut other = submitted(2, 5, 20);
        other.queue = 1;
        let mut other_dispatch = dispatched(2, 5, 200, 210);
        other_dispatch.queue = 1;
        let report = check(
            &[submitted(1, 0, 10), other],
            &[dispatched(1, 0, 100, 110), other_dispatch],
        );
        assert_eq!(report.violations, 0);
    }

    #[test]
    fn a_job_never_dispatched_was_waiting_throughout() {
        let report = check(
            &[submitted(1, 0, 10), submitted(2, 5, 20)],
            &[dispatched(1, 0, 100, 110)],
        );
        assert_eq!(report.violations, 1);
    }

    #[test]
    fn a_batch_counts_each_of_its_jobs() {
        let batch = Submitted {
            first_job: 1,
            count: 3,
            queue: 0,
            priority: 0,
            judged: true,
            acked_ns: 10,
        };
        let report = check(
            &[batch],
            &[
                dispatched(1, 0, 100, 110),
                dispatched(3, 0, 120, 130),
                dispatched(2, 0, 140, 150),
            ],
        );
        assert_eq!(report.violations, 1);
        assert_eq!(report.judged_jobs, 3);
    }

    /// A correct single-queue server with one-slot agents, observed through
    /// random delays: acknowledgements and pushes arrive late, completions
    /// reach the server late. The checker must find nothing.
    fn simulate(
        jobs: &[(i32, u64, u64)], // priority, submit gap, ack delay
        agents: usize,
        delays: &[u64],
        misorder_at: Option<usize>,
    ) -> OrderChecker {
        let mut delay_index = 0;
        let mut delay = || {
            delay_index += 1;
            delays[delay_index % delays.len()]
        };
        let mut checker = OrderChecker::new();
        // Server arrival time of each job (ids in arrival order).
        let mut arrivals = Vec::new();
        let mut t = 0;
        for (i, (priority, gap, ack_delay)) in jobs.iter().enumerate() {
            t += gap;
            let job = i as u64 + 1;
            arrivals.push((t, job, *priority));
            checker.submitted(Submitted {
                first_job: job,
                count: 1,
                queue: 0,
                priority: *priority,
                judged: true,
                acked_ns: t + ack_delay,
            });
        }
        // Each agent: the server time at which its slot is free again, and
        // the generator time of its last completion sent while full.
        let mut free_at = vec![0u64; agents];
        let mut last_full_ns = vec![0u64; agents];
        let mut waiting: Vec<(u64, u64, i32)> = Vec::new();
        let mut next_arrival = 0;
        let mut dispatches = 0;
        loop {
            let agent = (0..agents).min_by_key(|a| free_at[*a]).expect("an agent");
            let mut now = free_at[agent];
            if waiting.is_empty() {
                if next_arrival == arrivals.len() {
                    break;
                }
                now = now.max(arrivals[next_arrival].0);
            }
            while next_arrival < arrivals.len() && arrivals[next_arrival].0 <= now {
                waiting.push(arrivals[next_arrival]);
                next_arrival += 1;
            }
            waiting.sort_by_key(|(_, job, priority)| key(*priority, *job));
            let index = if misorder_at == Some(dispatches) && waiting.len() > 1 {
                waiting.len() - 1
            } else {
                0
            };
            let (arrived, job, priority) = waiting.remove(index);
            dispatches += 1;
            let received = now + 1 + delay();
            let submit_sent = arrived.saturating_sub(1);
            checker.dispatched(Dispatched {
                job,
                queue: 0,
                priority,
                lower_bound_ns: submit_sent.max(last_full_ns[agent]).min(received),
                received_ns: received,
            });
            // The job runs, then its completion is sent (the agent was full)
            // and reaches the server a little later.
            let completion_sent = received + delay();
            last_full_ns[agent] = completion_sent;
            free_at[agent] = completion_sent + 1 + delay();
        }
        checker
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn the_sweep_agrees_with_the_pairwise_rule(
            submissions in proptest::collection::vec((0i32..3, 0u64..50, any::<bool>(), 0u32..3), 0..30),
            dispatches in proptest::collection::vec((0usize..40, 0u64..50, 0u64..20), 0..30),
        ) {
            let mut checker = OrderChecker::new();
            let mut job = 1;
            for (priority, acked, judged, count) in &submissions {
                checker.submitted(Submitted {
                    first_job: job,
                    count: *count + 1,
                    queue: (*priority as u32) % 2,
                    priority: *priority,
                    judged: *judged,
                    acked_ns: *acked,
                });
                job += u64::from(*count) + 1;
            }
            for (which, lower_bound, lag) in &dispatches {
                checker.dispatched(Dispatched {
                    job: (*which as u64) % job.max(1),
                    queue: (*which as u32) % 2,
                    priority: (*which as i32) % 3,
                    lower_bound_ns: *lower_bound,
                    received_ns: lower_bound + lag,
                });
            }
            prop_assert_eq!(checker.check().violations, naive_violations(&checker));
        }

        #[test]
        fn a_correct_server_seen_through_delays_has_no_violations(
            jobs in proptest::collection::vec((0i32..3, 0u64..20, 0u64..100), 1..60),
            agents in 1usize..4,
            delays in proptest::collection::vec(0u64..50, 1..10),
        ) {
            let checker = simulate(&jobs, agents, &delays, None);
            prop_assert_eq!(checker.check().violations, 0);
        }
    }

    #[test]
    fn a_misordering_seen_through_short_delays_is_found() {
        // Everything submitted at once and acknowledged at once, one agent,
        // small delays: dispatching the last job first is plain to see.
        let jobs: Vec<(i32, u64, u64)> = (0..20).map(|i| (i % 3, 0, 1)).collect();
        let checker = simulate(&jobs, 1, &[2, 3, 1], Some(3));
        assert!(checker.check().violations >= 1);
    }
}
