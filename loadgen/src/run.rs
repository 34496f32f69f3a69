//! What every target shares during a run: the configuration, the clock
//! origin, the counters, the histograms and the order checker's events,
//! and the result a run hands to the report. Targets (Lanes, beanstalkd,
//! Redis) drive their own connections and record here.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::machine::own_cpu_time;
use crate::metrics::{Counters, Latencies, Metric};
use crate::order::{OrderChecker, OrderReport};
use crate::workload::{Mode, Workload};

/// Jobs preloaded before the measured run (workload c): they wait under a
/// tag limit while new work arrives.
#[derive(Clone, Debug, PartialEq)]
pub struct Preload {
    pub jobs: u64,
    pub priority: i32,
    /// Distinct `lg-preload` values, each limited to `limit` running jobs.
    pub tag_values: u32,
    pub limit: u32,
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub workload: Workload,
    pub mode: Mode,
    /// Submitter connections.
    pub connections: u32,
    /// Simulated agents (Lanes) or workers per slot (peers).
    pub agents: u32,
    pub slots_per_agent: u32,
    /// Stop after submitting this many jobs (closed loop default bound).
    pub jobs: Option<u64>,
    /// How long to send for.
    pub duration: Duration,
    /// How long to wait, after sending stops, for outstanding jobs.
    pub drain_timeout: Duration,
    pub seed: u64,
    /// A send later than this behind its intended time counts as late.
    pub late_threshold: Duration,
    /// Submissions in flight per connection in open loop; past it the pacer
    /// waits (and the sends become late, still measured from their
    /// intended times).
    pub in_flight_max: u32,
    pub preload: Option<Preload>,
    pub progress: bool,
}

/// The state every task of a run records into.
pub struct Shared {
    /// The clock's base; times count from `base + origin_ns`.
    base: Instant,
    /// Set by [`Shared::start_clock`] just before the first send, so that
    /// preloading and connecting do not put the schedule behind.
    origin_ns: AtomicU64,
    pub counters: Counters,
    pub latencies: Mutex<Latencies>,
    pub order: Mutex<OrderChecker>,
    /// When each send was acknowledged: the dispatch latency counts only
    /// jobs known to be waiting at the target when a slot freed.
    pub acks: AckTimes,
    /// Jobs that may still be submitted.
    pub budget: AtomicU64,
    pub preload_dispatched: AtomicU64,
    pub preload_completed: AtomicU64,
    /// Set when sending ends: senders stop.
    pub sending_done: AtomicBool,
}

/// The acknowledgement time of each send, by send number (the number is in
/// the job's payload header, so whoever receives the job can ask).
#[derive(Default)]
pub struct AckTimes {
    next: AtomicU64,
    /// Nanoseconds on the run's clock, plus one; 0: not acknowledged.
    acked: Mutex<Vec<u64>>,
}

impl AckTimes {
    /// A number for the next send.
    pub fn next_send(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn acked(&self, send: u64, now_ns: u64) {
        let Ok(index) = usize::try_from(send) else {
            return;
        };
        let mut acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        if acked.len() <= index {
            acked.resize(index + 1, 0);
        }
        acked[index] = now_ns + 1;
    }

    /// When send `send` was acknowledged; `None` if it was not (yet).
    pub fn acked_at(&self, send: u64) -> Option<u64> {
        let index = usize::try_from(send).ok()?;
        let acked = self.acked.lock().unwrap_or_else(|p| p.into_inner());
        acked.get(index).and_then(|&at| at.checked_sub(1))
    }

    /// Whether the job of send `send` was acknowledged by `freed_ns`: then
    /// it was waiting at the target when a slot freed at `freed_ns`, and
    /// the time to its arrival is a dispatch latency. Otherwise the slot
    /// waited for the job, which the queue-wait metric covers.
    pub fn waited_for_slot(&self, send: u64, freed_ns: u64) -> bool {
        self.acked_at(send).is_some_and(|acked| acked <= freed_ns)
    }
}

/// One submitter's open-loop schedule: when each send is due, and what to
/// do with sends the run can no longer make. The same for every target.
pub struct Schedule {
    pacer: crate::pacer::Pacer,
    duration_ns: u64,
    late_ns: u64,
    run_size: u64,
}

impl Schedule {
    /// Submitter `index`'s share of `rate_per_second`.
    pub fn new(
        config: &RunConfig,
        arrivals: crate::pacer::Arrivals,
        rate_per_second: f64,
        index: u32,
    ) -> Schedule {
        Schedule {
            pacer: crate::pacer::Pacer::new(
                arrivals,
                rate_per_second / f64::from(config.connections),
                config.seed ^ u64::from(index),
                f64::from(index) / f64::from(config.connections),
            ),
            duration_ns: config.duration.as_nanos() as u64,
            late_ns: config.late_threshold.as_nanos() as u64,
            run_size: u64::from(config.workload.run_size),
        }
    }

    /// Sleeps until the next send is due and returns its intended time;
    /// `None` once the run's duration is over.
    pub async fn wait(&self, shared: &Shared) -> Option<u64> {
        let intended = self.pacer.peek_ns();
        if intended >= self.duration_ns {
            return None;
        }
        tokio::time::sleep_until(shared.instant_at(intended).into()).await;
        Some(intended)
    }

    /// The send due at `intended`, made at `now`: the jobs to send (counting
    /// its lag), or `None` when sending is over: the budget is spent, or the
    /// run ended more than the lateness threshold ago, and what was never
    /// sent is counted as dropped. (A send due just before the end whose
    /// timer fired just after is only late.)
    pub fn take(&mut self, shared: &Shared, intended: u64, now: u64) -> Option<u64> {
        if now >= self.duration_ns + self.late_ns {
            let mut dropped = 0;
            while self.pacer.peek_ns() < self.duration_ns {
                self.pacer.next_intended_ns();
                dropped += 1;
            }
            shared
                .counters
                .dropped
                .fetch_add(dropped, Ordering::Relaxed);
            return None;
        }
        self.pacer.next_intended_ns();
        let jobs = shared.take_budget(self.run_size);
        if jobs == 0 {
            return None;
        }
        shared.counters.add_send_lag(now - intended, self.late_ns);
        Some(jobs)
    }
}

impl Shared {
    pub fn new(config: &RunConfig) -> Arc<Shared> {
        Arc::new(Shared {
            base: Instant::now(),
            origin_ns: AtomicU64::new(0),
            counters: Counters::default(),
            latencies: Mutex::new(Latencies::default()),
            order: Mutex::new(OrderChecker::new()),
            acks: AckTimes::default(),
            budget: AtomicU64::new(config.jobs.unwrap_or(u64::MAX)),
            preload_dispatched: AtomicU64::new(0),
            preload_completed: AtomicU64::new(0),
            sending_done: AtomicBool::new(false),
        })
    }

    /// Nanoseconds since the clock started (0 before).
    pub fn now_ns(&self) -> u64 {
        (self.base.elapsed().as_nanos() as u64)
            .saturating_sub(self.origin_ns.load(Ordering::Relaxed))
    }

    pub fn instant_at(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(self.origin_ns.load(Ordering::Relaxed) + ns)
    }

    /// Starts the run's clock: intended send times count from now. Called
    /// once, before any submitter starts.
    pub fn start_clock(&self) {
        self.origin_ns
            .store(self.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn record(&self, metric: Metric, priority: i32, latency_ns: u64) {
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(metric, i64::from(priority), latency_ns);
    }

    /// Takes up to `wanted` jobs from the budget; 0 when it is spent.
    pub fn take_budget(&self, wanted: u64) -> u64 {
        let mut current = self.budget.load(Ordering::Relaxed);
        loop {
            let taken = current.min(wanted);
            if taken == 0 {
                return 0;
            }
            match self.budget.compare_exchange_weak(
                current,
                current - taken,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return taken,
                Err(actual) => current = actual,
            }
        }
    }

    pub fn sending(&self) -> bool {
        !self.sending_done.load(Ordering::Relaxed)
    }

    /// Jobs acknowledged but not yet completed.
    pub fn outstanding(&self) -> u64 {
        let acked = Counters::get(&self.counters.acked);
        let completed = Counters::get(&self.counters.completed);
        acked.saturating_sub(completed)
    }
}

/// What a run measured, for the report.
pub struct RunResult {
    pub target: String,
    pub latencies: Latencies,
    pub shared: Arc<Shared>,
    pub order: Option<OrderReport>,
    /// From the first send to the end of sending.
    pub send_elapsed: Duration,
    /// From the first send to the last completion (or the drain timeout).
    pub total_elapsed: Duration,
    /// The generator's own CPU time during the run.
    pub cpu: Duration,
    /// Whether every acknowledged job completed before the drain timeout.
    pub drained: bool,
    pub warnings: Vec<String>,
}

/// Prints a progress line every second until `done` is set.
fn spawn_progress(shared: Arc<Shared>, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let terminal = std::io::stderr().is_terminal();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut last_completed = 0;
        let mut seconds = 0u64;
        while !done.load(Ordering::Relaxed) {
            tick.tick().await;
            seconds += 1;
            let c = &shared.counters;
            let completed = Counters::get(&c.completed);
            let line = format!(
                "[{seconds:>4}s] sent {} acked {} dispatched {} completed {} ({}/s) outstanding {} late {} lag max {:.1} ms cpu {:.1}s{}",
                Counters::get(&c.sent),
                Counters::get(&c.acked),
                Counters::get(&c.dispatched),
                completed,
                completed - last_completed,
                shared.outstanding(),
                Counters::get(&c.late),
                Counters::get(&c.send_lag_ns_max) as f64 / 1e6,
                own_cpu_time().as_secs_f64(),
                if shared.sending() { "" } else { " (draining)" },
            );
            last_completed = completed;
            if terminal {
                eprint!("\r\x1b[2K{line}");
            } else if seconds.checked_rem(5) == Some(0) {
                eprintln!("{line}");
            }
        }
        if terminal {
            eprintln!();
        }
    })
}

/// A target's task: a submitter connection, an agent or a worker.
pub type Task = tokio::task::JoinHandle<anyhow::Result<()>>;

/// What every target does once its submitters are sending: show progress,
/// wait for the submitters, drain, stop the `workers` (agents or peer
/// workers) through `stop`, and gather errors and warnings into the result.
/// `judge_order`: the target's dispatches fed the order checker.
pub async fn finish(
    config: &RunConfig,
    shared: Arc<Shared>,
    submitters: Vec<Task>,
    workers: Vec<Task>,
    stop: &AtomicBool,
    target: String,
    judge_order: bool,
) -> anyhow::Result<RunResult> {
    let progress_done = Arc::new(AtomicBool::new(false));
    let progress = config
        .progress
        .then(|| spawn_progress(shared.clone(), progress_done.clone()));
    let cpu_before = own_cpu_time();
    let send_start = Instant::now();
    let mut errors = Vec::new();
    for handle in submitters {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => errors.push(format!("{error:#}")),
            Err(error) => errors.push(format!("a submitter panicked: {error}")),
        }
    }
    shared.sending_done.store(true, Ordering::Relaxed);
    let send_elapsed = send_start.elapsed();
    let drained = drain(&shared, config.drain_timeout).await;
    let total_elapsed = send_start.elapsed();
    let cpu = own_cpu_time().saturating_sub(cpu_before);
    stop.store(true, Ordering::Relaxed);
    for handle in workers {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => errors.push(format!("{error:#}")),
            Err(error) => errors.push(format!("a worker panicked: {error}")),
        }
    }
    progress_done.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    if !errors.is_empty() && Counters::get(&shared.counters.acked) == 0 {
        anyhow::bail!("the run failed: {}", errors.join("; "));
    }
    let mut warnings = self_checks(config, &shared, cpu, total_elapsed);
    warnings.extend(errors.into_iter().map(|e| format!("error: {e}")));
    if !drained {
        warnings.push(format!(
            "{} acknowledged jobs had not completed {} s after sending stopped",
            shared.outstanding(),
            config.drain_timeout.as_secs()
        ));
    }
    let order = judge_order.then(|| {
        shared
            .order
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check()
    });
    let latencies = shared
        .latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(RunResult {
        target,
        latencies,
        shared,
        order,
        send_elapsed,
        total_elapsed,
        cpu,
        drained,
        warnings,
    })
}

/// Waits until every acknowledged job completed, or the timeout; true when
/// drained.
async fn drain(shared: &Shared, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if shared.outstanding() == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Warnings when the generator itself may have been the bottleneck.
fn self_checks(
    config: &RunConfig,
    shared: &Shared,
    cpu: Duration,
    elapsed: Duration,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let c = &shared.counters;
    let sent = Counters::get(&c.sent).max(1);
    let late = Counters::get(&c.late);
    let dropped = Counters::get(&c.dropped);
    let lag_max_ms = Counters::get(&c.send_lag_ns_max) as f64 / 1e6;
    if let Mode::Open { .. } = config.mode {
        // Sends fall behind when the generator lacks CPU, or when its
        // connections wait on the server (at --in-flight for Lanes; peers'
        // connections send one request at a time): the CPU check below
        // tells the two apart.
        if late * 100 > sent {
            warnings.push(format!(
                "SENDS FELL BEHIND: {late} sends ({:.1} %) left more than {} µs after their intended time (max lag {lag_max_ms:.1} ms): the generator was short of CPU or its connections were waiting on the server; latencies still count from the intended times",
                late as f64 * 100.0 / sent as f64,
                config.late_threshold.as_micros()
            ));
        }
        if dropped > 0 {
            warnings.push(format!(
                "SENDS DROPPED: {dropped} intended sends were never issued before the end of the run: the offered rate was not achieved"
            ));
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu_share = cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9);
    if cpu_share > 0.8 * cores {
        warnings.push(format!(
            "GENERATOR BOTTLENECK? the generator used {cpu_share:.2} cores of CPU on average ({:.1} s over {:.1} s) on a {cores}-core machine",
            cpu.as_secs_f64(),
            elapsed.as_secs_f64()
        ));
    } else if cpu_share > 0.5 * cores {
        warnings.push(format!(
            "the generator used {cpu_share:.2} of {cores} cores: it competes with the server for CPU on this machine"
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dispatch measures a freed slot only if its job was acknowledged
    /// by the time the slot freed: then it was waiting at the target.
    #[test]
    fn a_job_acknowledged_before_the_slot_freed_waited_for_it() {
        let acks = AckTimes::default();
        let (early, late, never) = (acks.next_send(), acks.next_send(), acks.next_send());
        assert_eq!((early, late, never), (0, 1, 2));
        acks.acked(early, 0);
        acks.acked(late, 5_000);
        assert_eq!(acks.acked_at(early), Some(0));
        assert_eq!(acks.acked_at(never), None);
        assert!(acks.waited_for_slot(early, 1_000));
        assert!(acks.waited_for_slot(late, 5_000));
        assert!(!acks.waited_for_slot(late, 4_999));
        assert!(!acks.waited_for_slot(never, u64::MAX));
        assert!(!acks.waited_for_slot(crate::workload::SEND_UNKNOWN, u64::MAX));
    }
}
