//! Latency histograms (overall and per priority level), counters and the
//! per-second throughput series of one run. It owns the numbers, not the
//! clock: callers pass durations and times in nanoseconds since the start.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

/// Largest latency a histogram holds, in microseconds (one hour): anything
/// slower is clamped there and still counted.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Seconds the throughput series covers; later completions count in the
/// last bucket. An hour at one bucket per second is 28 KiB per series.
pub const SERIES_SECONDS_MAX: usize = 3_600;

/// The latencies measured, one histogram each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Intended send time → the server's acknowledgement of the submission.
    SubmitAck,
    /// Intended send time → the job reaching an agent.
    QueueWait,
    /// An agent's slot freeing (its completion sent) → the next job reaching
    /// that agent, counted only when work was waiting.
    Dispatch,
    /// Intended send time → the agent's completion acknowledged.
    EndToEnd,
    /// The agent sending a completion → the server's answer to it.
    CompleteAck,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::SubmitAck,
        Metric::QueueWait,
        Metric::Dispatch,
        Metric::EndToEnd,
        Metric::CompleteAck,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::SubmitAck => "submit_ack",
            Metric::QueueWait => "queue_wait",
            Metric::Dispatch => "dispatch",
            Metric::EndToEnd => "end_to_end",
            Metric::CompleteAck => "complete_ack",
        }
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// One histogram per metric.
#[derive(Clone)]
pub struct Set {
    histograms: [Histogram<u64>; 5],
}

impl Default for Set {
    fn default() -> Set {
        Set {
            histograms: [
                new_histogram(),
                new_histogram(),
                new_histogram(),
                new_histogram(),
                new_histogram(),
            ],
        }
    }
}

impl Set {
    pub fn get(&self, metric: Metric) -> &Histogram<u64> {
        &self.histograms[metric as usize]
    }

    fn record(&mut self, metric: Metric, latency_ns: u64) {
        let us = (latency_ns / 1_000).clamp(1, LATENCY_US_MAX);
        self.histograms[metric as usize].saturating_record(us);
    }

    fn add(&mut self, other: &Set) {
        for (mine, theirs) in self.histograms.iter_mut().zip(other.histograms.iter()) {
            mine.add(theirs).expect("histograms of the same bounds add");
        }
    }
}

/// Every histogram of a run: overall and per priority level.
#[derive(Clone, Default)]
pub struct Latencies {
    pub overall: Set,
    pub by_priority: BTreeMap<i64, Set>,
}

impl Latencies {
    pub fn record(&mut self, metric: Metric, priority: i64, latency_ns: u64) {
        self.overall.record(metric, latency_ns);
        self.by_priority
            .entry(priority)
            .or_default()
            .record(metric, latency_ns);
    }

    /// Merges another recorder's histograms (each task records on its own,
    /// and the run merges them at the end).
    pub fn add(&mut self, other: &Latencies) {
        self.overall.add(&other.overall);
        for (priority, set) in &other.by_priority {
            self.by_priority.entry(*priority).or_default().add(set);
        }
    }
}

/// The percentiles a report prints, in microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        let at = |q: f64| {
            if histogram.is_empty() {
                0
            } else {
                histogram.value_at_quantile(q)
            }
        };
        Percentiles {
            count: histogram.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: if histogram.is_empty() {
                0
            } else {
                histogram.max()
            },
            mean: if histogram.is_empty() {
                0.0
            } else {
                histogram.mean()
            },
        }
    }
}

/// Counters shared by every task of a run, read by the progress line.
#[derive(Debug)]
pub struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub rejected: AtomicU64,
    pub dispatched: AtomicU64,
    pub completed: AtomicU64,
    pub completion_errors: AtomicU64,
    /// Sends issued later than their intended time by more than the
    /// lateness threshold.
    pub late: AtomicU64,
    /// Intended sends never issued before the run's end.
    pub dropped: AtomicU64,
    /// Largest lag of a send behind its intended time, in nanoseconds.
    pub send_lag_ns_max: AtomicU64,
    /// Sum of lags, for the mean.
    pub send_lag_ns_sum: AtomicU64,
    /// Completions per second since the start.
    pub completed_per_second: Vec<AtomicU64>,
    /// Submissions acknowledged (in jobs) per second since the start.
    pub acked_per_second: Vec<AtomicU64>,
}

impl Default for Counters {
    fn default() -> Counters {
        let series = || (0..SERIES_SECONDS_MAX).map(|_| AtomicU64::new(0)).collect();
        Counters {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dispatched: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            completion_errors: AtomicU64::new(0),
            late: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            send_lag_ns_max: AtomicU64::new(0),
            send_lag_ns_sum: AtomicU64::new(0),
            completed_per_second: series(),
            acked_per_second: series(),
        }
    }
}

impl Counters {
    pub fn add_completed(&self, at_ns: u64, jobs: u64) {
        self.completed.fetch_add(jobs, Ordering::Relaxed);
        bucket(&self.completed_per_second, at_ns).fetch_add(jobs, Ordering::Relaxed);
    }

    pub fn add_acked(&self, at_ns: u64, jobs: u64) {
        self.acked.fetch_add(jobs, Ordering::Relaxed);
        bucket(&self.acked_per_second, at_ns).fetch_add(jobs, Ordering::Relaxed);
    }

    /// Records a send's lag behind its intended time.
    pub fn add_send_lag(&self, lag_ns: u64, late_threshold_ns: u64) {
        self.send_lag_ns_max.fetch_max(lag_ns, Ordering::Relaxed);
        self.send_lag_ns_sum.fetch_add(lag_ns, Ordering::Relaxed);
        if lag_ns > late_threshold_ns {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

fn bucket(series: &[AtomicU64], at_ns: u64) -> &AtomicU64 {
    let second = (at_ns / 1_000_000_000) as usize;
    &series[second.min(series.len() - 1)]
}

/// The series up to its last non-zero second.
pub fn series_values(series: &[AtomicU64]) -> Vec<u64> {
    let values: Vec<u64> = series.iter().map(|v| v.load(Ordering::Relaxed)).collect();
    let end = values.iter().rposition(|v| *v > 0).map_or(0, |i| i + 1);
    values[..end].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut latencies = Latencies::default();
        // 1..=1000 microseconds, once each, at priority 0; 5 ms at priority 9.
        for us in 1..=1000u64 {
            latencies.record(Metric::Dispatch, 0, us * 1_000);
        }
        latencies.record(Metric::Dispatch, 9, 5_000_000);
        let all = Percentiles::of(latencies.overall.get(Metric::Dispatch));
        assert_eq!(all.count, 1001);
        assert_eq!(all.p50, 501);
        assert_eq!(all.p90, 901);
        assert_eq!(all.p99, 991);
        assert_eq!(all.p999, 1000);
        assert!((4_995..=5_005).contains(&all.max), "{}", all.max);
        let low = Percentiles::of(latencies.by_priority[&0].get(Metric::Dispatch));
        assert_eq!(low.count, 1000);
        assert_eq!(low.p50, 500);
        assert_eq!(low.max, 1000);
        let high = Percentiles::of(latencies.by_priority[&9].get(Metric::Dispatch));
        assert_eq!(high.count, 1);
        let empty = Percentiles::of(latencies.overall.get(Metric::SubmitAck));
        assert_eq!((empty.count, empty.p99, empty.max), (0, 0, 0));
    }

    #[test]
    fn sub_microsecond_and_huge_latencies_are_clamped_not_lost() {
        let mut latencies = Latencies::default();
        latencies.record(Metric::SubmitAck, 0, 10);
        latencies.record(Metric::SubmitAck, 0, u64::MAX);
        let all = Percentiles::of(latencies.overall.get(Metric::SubmitAck));
        assert_eq!(all.count, 2);
        assert_eq!(all.p50, 1);
    }

    #[test]
    fn merging_adds_counts_per_priority() {
        let mut first = Latencies::default();
        let mut second = Latencies::default();
        first.record(Metric::EndToEnd, 1, 1_000_000);
        second.record(Metric::EndToEnd, 1, 3_000_000);
        second.record(Metric::EndToEnd, 2, 3_000_000);
        first.add(&second);
        assert_eq!(first.overall.get(Metric::EndToEnd).len(), 3);
        assert_eq!(first.by_priority[&1].get(Metric::EndToEnd).len(), 2);
        assert_eq!(first.by_priority[&2].get(Metric::EndToEnd).len(), 1);
    }

    #[test]
    fn series_buckets_by_second_and_trims_the_tail() {
        let counters = Counters::default();
        counters.add_completed(100, 2);
        counters.add_completed(1_500_000_000, 3);
        counters.add_completed(u64::MAX, 1);
        let values = series_values(&counters.completed_per_second);
        assert_eq!(values.len(), SERIES_SECONDS_MAX);
        assert_eq!(values[..2], [2, 3]);
        assert_eq!(*values.last().expect("a last bucket"), 1);
        assert_eq!(
            series_values(&Counters::default().acked_per_second),
            Vec::<u64>::new()
        );
    }
}
