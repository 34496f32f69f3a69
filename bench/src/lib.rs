//! Shared setup for the Lanes benchmarks: an allocator that counts what it
//! hands out, and the scheduling-core workload of issue 2 (a scheduler full
//! of waiting jobs, agents busy, a share of the jobs blocked by a tag rule).
//!
//! Nothing here reads a clock on the scheduler's behalf: the workload passes
//! `now` in, as the driver will. Timing is the caller's business, except
//! that the pair loop times itself so it can leave the harness's own work
//! (refilling the queues) out of the measurement.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use lanes::model::{
    AgentId, JobId, JobOptions, JobSpec, QueueConfig, Report, RunSpec, TagMatch, TagRule, TimeMs,
};
use lanes::sched::{Command, Event, EventKind, Reply, Scheduler, SchedulerConfig};

// ---- allocation counting -----------------------------------------------

static BYTES_CURRENT: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS_TOTAL: AtomicU64 = AtomicU64::new(0);
/// Read on every allocation, written rarely: the line stays shared, cheap.
static COUNTING: AtomicBool = AtomicBool::new(true);

/// Wraps a global allocator and keeps the bytes currently allocated (as
/// requested, before the inner allocator rounds them up) and the number of
/// allocations made. Counters are process-wide: install one per binary.
///
/// The counters are atomics every thread writes, so with many threads
/// allocating they cost a measurable share of a multi-threaded benchmark;
/// [`count_allocations`] turns them off around such measurements.
pub struct CountingAllocator<A> {
    inner: A,
}

impl<A> CountingAllocator<A> {
    pub const fn new(inner: A) -> CountingAllocator<A> {
        CountingAllocator { inner }
    }
}

/// Counts allocations from now on (`true`, the default) or stops counting.
/// While off, the counters stand still, so a difference of two readings
/// is only meaningful when counting was on between them; it may wrap when
/// memory allocated while off is freed while on ([`usize::wrapping_sub`]
/// of the two readings is still exact).
pub fn count_allocations(on: bool) {
    COUNTING.store(on, Ordering::Relaxed);
}

fn counting() -> bool {
    COUNTING.load(Ordering::Relaxed)
}

/// Bytes allocated and not yet freed, as requested by their callers.
pub fn bytes_current() -> usize {
    BYTES_CURRENT.load(Ordering::Relaxed)
}

/// Allocations (including reallocations) made since the process started.
pub fn allocations_total() -> u64 {
    ALLOCATIONS_TOTAL.load(Ordering::Relaxed)
}

// SAFETY: every call is forwarded unchanged to `inner`, which upholds the
// `GlobalAlloc` contract; the counters only observe.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = self.inner.alloc(layout);
        if !pointer.is_null() && counting() {
            BYTES_CURRENT.fetch_add(layout.size(), Ordering::Relaxed);
            ALLOCATIONS_TOTAL.fetch_add(1, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = self.inner.alloc_zeroed(layout);
        if !pointer.is_null() && counting() {
            BYTES_CURRENT.fetch_add(layout.size(), Ordering::Relaxed);
            ALLOCATIONS_TOTAL.fetch_add(1, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        self.inner.dealloc(pointer, layout);
        if counting() {
            BYTES_CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, size_new: usize) -> *mut u8 {
        let moved = self.inner.realloc(pointer, layout, size_new);
        if !moved.is_null() && counting() {
            BYTES_CURRENT.fetch_add(size_new, Ordering::Relaxed);
            BYTES_CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            ALLOCATIONS_TOTAL.fetch_add(1, Ordering::Relaxed);
        }
        moved
    }
}

/// The process's resident set size in bytes, from /proc/self/statm (Linux
/// only; `None` elsewhere). Counts what the allocator really holds,
/// rounding and retained free pages included.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size of every Linux target this runs on; statm counts pages.
    const PAGE_BYTES: u64 = 4_096;
    Some(pages * PAGE_BYTES)
}

// ---- options ---------------------------------------------------------------

/// Parses a comma-separated option value (`--batches 1,64,1024`), each
/// item with `parse`.
pub fn list<T>(text: &str, parse: impl Fn(&str) -> anyhow::Result<T>) -> anyhow::Result<Vec<T>> {
    text.split(',').map(parse).collect()
}

// ---- the scheduling-core workload ----------------------------------------

/// The tag blocked jobs carry; a rule caps how many of them run at once.
pub const BLOCKED_TAG: (&str, &str) = ("team", "blocked");

/// Events one command of this workload makes at most: a `TakeWork` for a
/// whole agent makes one request and one dispatch per slot. The buffer is
/// sized once, so the measured loop never grows it.
const EVENTS_PER_COMMAND_MAX: usize = 4_096;

/// Time, in simulated milliseconds, advances by one every this many pairs:
/// about real time at the 1,000,000 pairs/s target, so lease timers move as
/// often as they would in production.
const PAIRS_PER_MILLISECOND: u64 = 1_000;

/// Where simulated time starts: any fixed value; the scheduler only needs
/// it to be an input.
const START_MS: TimeMs = 1_700_000_000_000;

#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Jobs waiting once the agents are busy.
    pub waiting_jobs: u64,
    pub queues: u32,
    pub agents: u32,
    pub slots_per_agent: u32,
    /// Jobs per submitted run (the last run of a kind may hold fewer).
    pub jobs_per_run: u32,
    /// Share of the waiting jobs that carry the blocked tag, in percent.
    pub blocked_percent: u32,
}

impl CoreConfig {
    /// Jobs running once the agents are busy.
    pub fn running_jobs(&self) -> u64 {
        u64::from(self.agents) * u64::from(self.slots_per_agent)
    }

    /// The blocked tag's limit: one agent's worth of slots. Those jobs run
    /// (and never finish during the measurement), so the rule stays full and
    /// every other blocked job stays blocked.
    pub fn blocked_limit(&self) -> u32 {
        self.slots_per_agent
    }

    pub fn blocked_waiting(&self) -> u64 {
        self.waiting_jobs * u64::from(self.blocked_percent) / 100
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.queues >= 1, "need at least one queue");
        ensure!(
            self.agents >= 2,
            "need at least two agents (one holds the blocked tag's jobs)"
        );
        ensure!(
            self.slots_per_agent >= 1,
            "need at least one slot per agent"
        );
        ensure!(
            (1..=10_000).contains(&self.jobs_per_run),
            "jobs per run must be 1 to 10,000 (the submission limit)"
        );
        ensure!(self.blocked_percent <= 100, "blocked share is a percentage");
        let unblocked_waiting = self.waiting_jobs - self.blocked_waiting();
        ensure!(
            unblocked_waiting >= u64::from(self.jobs_per_run),
            "at least one run's worth of waiting jobs must be unblocked, \
             or the agents would starve"
        );
        Ok(())
    }
}

/// What building the state cost.
#[derive(Clone, Debug)]
pub struct SetupReport {
    pub jobs_submitted: u64,
    pub runs_submitted: u64,
    /// Time spent inside `Scheduler::handle` for the submissions (building
    /// each `RunSpec` is the client's work and is left out).
    pub submit_time: Duration,
    /// Bytes allocated by the submissions, as requested, all jobs waiting.
    pub bytes_allocated: u64,
    /// Resident set growth over the submissions, if known.
    pub resident_bytes: Option<u64>,
}

impl SetupReport {
    pub fn jobs_per_second(&self) -> f64 {
        self.jobs_submitted as f64 / self.submit_time.as_secs_f64()
    }

    /// Bytes per waiting job: every submitted job waits when it is taken.
    pub fn bytes_per_waiting_job(&self) -> f64 {
        self.bytes_allocated as f64 / self.jobs_submitted as f64
    }

    pub fn resident_bytes_per_waiting_job(&self) -> Option<f64> {
        self.resident_bytes
            .map(|bytes| bytes as f64 / self.jobs_submitted as f64)
    }
}

/// One measured stretch of pairs.
#[derive(Clone, Debug)]
pub struct PairsReport {
    pub pairs: u64,
    /// Time inside the pairs only (refills left out).
    pub time: Duration,
    /// Allocations made during the pairs (refills left out).
    pub allocations: u64,
}

impl PairsReport {
    pub fn pairs_per_second(&self) -> f64 {
        self.pairs as f64 / self.time.as_secs_f64()
    }
}

/// A job leased to an agent, as the agent knows it.
#[derive(Clone, Copy, Debug)]
struct Lease {
    agent: AgentId,
    job: JobId,
    attempt: u32,
}

/// The scheduler under test, and what the harness knows of it.
pub struct CoreBench {
    config: CoreConfig,
    scheduler: Scheduler,
    events: Vec<Event>,
    /// Every running job, by agent then slot.
    leases: Vec<Lease>,
    /// The leases the pair loop cycles through: all but those of the
    /// blocked tag, which run throughout. Ordered so that consecutive pairs
    /// go to different agents.
    rotation: Vec<usize>,
    next_in_rotation: usize,
    /// The queue the next refill run goes to.
    next_queue: u32,
    pairs_done: u64,
}

fn queue_name(queue: u32) -> String {
    format!("q-{queue:03}")
}

impl CoreBench {
    /// Builds the state: queues, the tag rule, the jobs, and busy agents.
    pub fn build(config: CoreConfig) -> anyhow::Result<(CoreBench, SetupReport)> {
        config.check()?;
        let mut bench = CoreBench {
            scheduler: Scheduler::new(SchedulerConfig::default()),
            events: Vec::with_capacity(EVENTS_PER_COMMAND_MAX),
            leases: Vec::with_capacity(config.running_jobs() as usize),
            rotation: Vec::new(),
            next_in_rotation: 0,
            next_queue: 0,
            pairs_done: 0,
            config,
        };
        for queue in 0..bench.config.queues {
            bench.handle(Command::PutQueue(QueueConfig::new(&queue_name(queue))))?;
        }
        bench.handle(Command::SetTagRules(vec![TagRule {
            key: BLOCKED_TAG.0.to_string(),
            matches: TagMatch::Value(BLOCKED_TAG.1.to_string()),
            limit: bench.config.blocked_limit(),
        }]))?;

        // Blocked jobs go first, so in every queue they stand ahead of the
        // unblocked ones in dispatch order: the worst case for a scheduler
        // that would skip blocked jobs one by one. The first of them fill
        // the rule; the agent that takes them keeps them.
        let blocked_waiting = bench.config.blocked_waiting();
        let blocked_jobs = if blocked_waiting > 0 {
            blocked_waiting + u64::from(bench.config.blocked_limit())
        } else {
            0
        };
        let total_jobs = bench.config.waiting_jobs + bench.config.running_jobs();
        let unblocked_jobs = total_jobs - blocked_jobs;

        let bytes_before = bytes_current();
        let resident_before = resident_bytes();
        let mut setup = SetupReport {
            jobs_submitted: 0,
            runs_submitted: 0,
            submit_time: Duration::ZERO,
            bytes_allocated: 0,
            resident_bytes: None,
        };
        let mut last_blocked = JobId(0);
        for (count, blocked) in [(blocked_jobs, true), (unblocked_jobs, false)] {
            let mut left = count;
            while left > 0 {
                let size = left.min(u64::from(bench.config.jobs_per_run)) as u32;
                let spec = bench.next_run_spec(size, blocked);
                let started = Instant::now();
                let (first_job, submitted) = bench.submit(spec)?;
                setup.submit_time += started.elapsed();
                setup.jobs_submitted += u64::from(submitted);
                setup.runs_submitted += 1;
                if blocked {
                    last_blocked = JobId(first_job.0 + u64::from(submitted) - 1);
                }
                left -= u64::from(size);
            }
        }
        // The last submission's event still holds its resolved jobs: it is
        // the log's, not the state's.
        bench.events.clear();
        setup.bytes_allocated = (bytes_current() as u64).saturating_sub(bytes_before as u64);
        setup.resident_bytes = resident_before
            .zip(resident_bytes())
            .map(|(before, after)| after.saturating_sub(before));
        ensure!(setup.jobs_submitted == total_jobs);
        bench.check_counts(total_jobs, 0)?;

        for agent in 0..bench.config.agents {
            let reply = bench.handle(Command::RegisterAgent {
                name: format!("agent-{agent:03}"),
                pools: vec![lanes::model::DEFAULT_POOL.to_string()],
                labels: Vec::new(),
                slots: bench.config.slots_per_agent,
                running: Vec::new(),
            })?;
            let Reply::Registered { agent: id } = reply else {
                bail!("registering an agent answered {reply:?}");
            };
            bench.handle(Command::TakeWork {
                agent: id,
                count: bench.config.slots_per_agent,
            })?;
            let before = bench.leases.len();
            for event in &bench.events {
                if let EventKind::JobDispatched {
                    job,
                    agent,
                    attempt,
                } = event.kind
                {
                    ensure!(agent == id, "{job} went to {agent}, not {id}");
                    bench.leases.push(Lease {
                        agent,
                        job,
                        attempt,
                    });
                }
            }
            ensure!(
                bench.leases.len() - before == bench.config.slots_per_agent as usize,
                "agent {id} got {} jobs for {} slots",
                bench.leases.len() - before,
                bench.config.slots_per_agent
            );
        }
        bench.check_counts(bench.config.waiting_jobs, bench.config.running_jobs())?;

        let slots = bench.config.slots_per_agent as usize;
        let pinned = bench
            .leases
            .iter()
            .filter(|lease| lease.job <= last_blocked)
            .count();
        let pinned_expected = if blocked_jobs > 0 {
            bench.config.blocked_limit() as usize
        } else {
            0
        };
        ensure!(
            pinned == pinned_expected,
            "{pinned} blocked-tag jobs run, expected {pinned_expected}"
        );
        for slot in 0..slots {
            for agent in 0..bench.config.agents as usize {
                let index = agent * slots + slot;
                if bench.leases[index].job > last_blocked {
                    bench.rotation.push(index);
                }
            }
        }
        Ok((bench, setup))
    }

    /// Runs `pairs` complete + dispatch pairs, round-robin over the agents.
    /// Every `jobs_per_run` pairs a run of as many unblocked jobs is
    /// submitted, outside the timing, so the waiting count and the blocked
    /// share stay as configured however long the measurement.
    pub fn run_pairs(&mut self, pairs: u64) -> anyhow::Result<PairsReport> {
        let mut report = PairsReport {
            pairs: 0,
            time: Duration::ZERO,
            allocations: 0,
        };
        let chunk = u64::from(self.config.jobs_per_run);
        while report.pairs < pairs {
            let count = chunk.min(pairs - report.pairs);
            let allocations_before = allocations_total();
            let started = Instant::now();
            self.pairs(count);
            report.time += started.elapsed();
            report.allocations += allocations_total() - allocations_before;
            report.pairs += count;
            let spec = self.next_run_spec(count as u32, false);
            self.submit(spec)?;
            ensure!(
                self.events
                    .iter()
                    .all(|event| !matches!(event.kind, EventKind::JobDispatched { .. })),
                "a refill dispatched: some agent had a free slot"
            );
        }
        Ok(report)
    }

    /// The measured loop. Panics if the scheduler refuses a command or does
    /// not dispatch exactly one job per request: a benchmark that stopped
    /// dispatching would otherwise report nonsense speeds.
    #[inline(never)]
    fn pairs(&mut self, count: u64) {
        for _ in 0..count {
            let index = self.rotation[self.next_in_rotation];
            self.next_in_rotation += 1;
            if self.next_in_rotation == self.rotation.len() {
                self.next_in_rotation = 0;
            }
            let now = START_MS + self.pairs_done / PAIRS_PER_MILLISECOND;
            self.pairs_done += 1;
            let lease = self.leases[index];
            self.events.clear();
            let completed = self.scheduler.handle(
                Command::complete_one(lease.agent, lease.job, lease.attempt, Report::Succeeded, 0),
                now,
                &mut self.events,
            );
            assert_eq!(
                completed,
                Ok(Reply::Completed {
                    results: vec![Ok(())]
                }),
                "completing {}",
                lease.job
            );
            self.events.clear();
            let taken = self.scheduler.handle(
                Command::TakeWork {
                    agent: lease.agent,
                    count: 1,
                },
                now,
                &mut self.events,
            );
            assert_eq!(taken, Ok(Reply::Done), "{} taking work", lease.agent);
            let mut dispatched = None;
            for event in &self.events {
                if let EventKind::JobDispatched {
                    job,
                    agent,
                    attempt,
                } = event.kind
                {
                    assert!(
                        dispatched.is_none() && agent == lease.agent,
                        "one request made more than one dispatch"
                    );
                    dispatched = Some(Lease {
                        agent,
                        job,
                        attempt,
                    });
                }
            }
            self.leases[index] = dispatched.unwrap_or_else(|| panic!("{} got no job", lease.agent));
        }
    }

    /// Checks the scheduler's own counts: this many jobs waiting and
    /// running, none held.
    pub fn check_counts(&self, waiting: u64, running: u64) -> anyhow::Result<()> {
        let (mut waiting_seen, mut running_seen, mut held_seen) = (0, 0, 0);
        for queue in self.scheduler.queues() {
            waiting_seen += queue.waiting;
            running_seen += queue.running;
            held_seen += queue.held;
        }
        ensure!(
            (waiting_seen, running_seen, held_seen) == (waiting, running, 0),
            "expected {waiting} waiting and {running} running, found \
             {waiting_seen} waiting, {running_seen} running, {held_seen} held"
        );
        Ok(())
    }

    /// Checks the counts after pairs: refills replaced every job finished.
    pub fn check_steady(&self) -> anyhow::Result<()> {
        self.check_counts(self.config.waiting_jobs, self.config.running_jobs())
            .context("after the measured pairs")
    }

    /// The scheduler's full invariant check (a scan of everything).
    pub fn check_invariants(&self) {
        self.scheduler.check_invariants();
    }

    fn next_run_spec(&mut self, jobs: u32, blocked: bool) -> RunSpec {
        let queue = queue_name(self.next_queue);
        self.next_queue = (self.next_queue + 1) % self.config.queues;
        let tags = if blocked {
            vec![(BLOCKED_TAG.0.to_string(), BLOCKED_TAG.1.to_string())]
        } else {
            Vec::new()
        };
        RunSpec {
            defaults: JobOptions {
                queue: Some(queue),
                tags,
                ..JobOptions::default()
            },
            jobs: vec![JobSpec::default(); jobs as usize],
            idempotency_key: None,
        }
    }

    fn submit(&mut self, spec: RunSpec) -> anyhow::Result<(JobId, u32)> {
        match self.handle(Command::SubmitRun(spec))? {
            Reply::Submitted {
                first_job, count, ..
            } => Ok((first_job, count)),
            reply => bail!("a submission answered {reply:?}"),
        }
    }

    /// Handles one command at the current simulated time. Leaves its events
    /// in `self.events`.
    fn handle(&mut self, command: Command) -> anyhow::Result<Reply> {
        let now = START_MS + self.pairs_done / PAIRS_PER_MILLISECOND;
        self.events.clear();
        let reply = self
            .scheduler
            .handle(command, now, &mut self.events)
            .map_err(|rejection| anyhow::anyhow!("rejected: {rejection}"))?;
        Ok(reply)
    }
}
