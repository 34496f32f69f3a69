//! Microbenchmarks of the hot operations, on criterion: each is measured in
//! many samples, estimated with confidence intervals (the median among
//! them, in `target/criterion/.../estimates.json`), and can be compared
//! with a saved baseline, so a regression shows as a change criterion calls
//! significant rather than as one noisy figure.
//!
//! The scenario benchmarks (`core`, `log`) stay the reference for the
//! issues' targets; these track the cost of each operation between commits.
//!
//! - `sched/*`: `Scheduler::handle`, pure, no I/O: a submission, a
//!   complete + dispatch pair with jobs waiting, a priority change, the
//!   state's digest.
//! - `log/*`: the record format (encode, checksum only, full decode) and an
//!   append (encode + `LogStore::write`) to the in-memory store and to sled
//!   without a sync. fsync is the disk's cost, not ours: the `log` scenario
//!   bench measures it.
//! - `replay/*`: a pre-encoded log applied to a fresh scheduler, through
//!   `lanes::replay::replay`, and the apply alone.
//!
//! Run: `cargo bench -p lanes-bench --bench micro` (about 3.5 minutes on 2
//! cores); a filter selects benchmarks (`-- log/encode`); `-- --save-baseline
//! NAME` then `-- --baseline NAME` compares. Results go to
//! docs/BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use lanes::log::format;
use lanes::log::{LogReader, LogStore, MemoryStore, SledStore, StoreError, Syncer};
use lanes::model::{AgentId, JobId, JobSpec, Report, RunSpec, Seq, TimeMs, DEFAULT_POOL};
use lanes::replay::{replay, ReplayOptions};
use lanes::sched::{
    Command, Event, EventKind, Reply, Retention, Scheduler, SchedulerConfig, FORGET_JOBS_MAX,
};
use lanes_bench::{CoreBench, CoreConfig};
use mimalloc::MiMalloc;

/// The product's allocator, so allocation costs are the ones it pays.
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

/// Where simulated time starts; the scheduler only needs it as an input.
const START_MS: TimeMs = 1_700_000_000_000;

/// Jobs per run when a state is filled with waiting jobs.
const FILL_RUN_JOBS: u32 = 100;

/// Commands prepared (untimed) ahead of each timed stretch in the
/// `iter_custom` loops: enough that reading the clock is noise.
const CHUNK: u64 = 1_024;

/// The submission benchmark starts again from an empty scheduler once this
/// many jobs were submitted, so the state it measures stays between empty
/// and this size however many iterations criterion asks for.
const SUBMIT_RESET_JOBS: u64 = 200_000;

/// An append benchmark opens a new store once this many bytes went to the
/// old one, so memory (and sled's files) stay bounded.
const APPEND_RESET_BYTES: u64 = 256 << 20;

/// Events in the generated log: what replay applies, and the pool the
/// format and append benchmarks take their batches from.
const LOG_EVENTS: usize = 100_000;

/// Events per record in the replayed log, as the `log` bench builds it.
const LOG_RECORD_EVENTS: usize = 1_024;

/// Batch sizes (events per record) for the format and append benchmarks.
const BATCHES: [usize; 3] = [1, 64, 1_024];

fn run_spec(jobs: u32) -> RunSpec {
    RunSpec {
        jobs: vec![JobSpec::default(); jobs as usize],
        ..RunSpec::default()
    }
}

/// Handles a command that must be accepted.
fn handle(scheduler: &mut Scheduler, command: Command, events: &mut Vec<Event>) -> Reply {
    match scheduler.handle(command, START_MS, events) {
        Ok(reply) => reply,
        Err(rejection) => panic!("rejected: {rejection}"),
    }
}

/// A scheduler with `jobs` jobs waiting in the default queue, in runs of
/// [`FILL_RUN_JOBS`], and the id of the first.
fn waiting_state(jobs: u64) -> (Scheduler, JobId) {
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    let mut events = Vec::new();
    let mut first = None;
    let mut left = jobs;
    while left > 0 {
        let size = left.min(u64::from(FILL_RUN_JOBS)) as u32;
        events.clear();
        let reply = handle(
            &mut scheduler,
            Command::SubmitRun(run_spec(size)),
            &mut events,
        );
        let Reply::Submitted { first_job, .. } = reply else {
            panic!("a submission answered {reply:?}");
        };
        first.get_or_insert(first_job);
        left -= u64::from(size);
    }
    (scheduler, first.expect("at least one job"))
}

/// The events of a busy cluster, from an empty scheduler: one agent; a run
/// of 10 jobs is submitted and dispatched at once, each job completes, the
/// agent asks for 10 more. About a twentieth of the events are submissions
/// (carrying 10 jobs each), the rest dispatches, completions and requests.
/// Returns the events (sequences 1..=count) and the scheduler they made.
fn traffic(count: usize) -> (Vec<Event>, Scheduler) {
    const RUN_JOBS: u32 = 10;
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    let mut events = Vec::with_capacity(count + 64);
    let reply = handle(
        &mut scheduler,
        Command::RegisterAgent {
            name: "bench-agent".to_string(),
            pools: vec![DEFAULT_POOL.to_string()],
            labels: Vec::new(),
            slots: RUN_JOBS,
            running: Vec::new(),
        },
        &mut events,
    );
    let Reply::Registered { agent } = reply else {
        panic!("registering answered {reply:?}");
    };
    let spec = run_spec(RUN_JOBS);
    let mut now = START_MS;
    while events.len() < count {
        now += 1;
        let take = Command::TakeWork {
            agent,
            count: RUN_JOBS,
        };
        scheduler
            .handle(take, now, &mut events)
            .expect("taking work");
        let before = events.len();
        scheduler
            .handle(Command::SubmitRun(spec.clone()), now, &mut events)
            .expect("submitting");
        let leases: Vec<(AgentId, JobId, u32)> = events[before..]
            .iter()
            .filter_map(|event| match event.kind {
                EventKind::JobDispatched {
                    job,
                    agent,
                    attempt,
                } => Some((agent, job, attempt)),
                _ => None,
            })
            .collect();
        assert_eq!(leases.len(), RUN_JOBS as usize, "the run was dispatched");
        for (agent, job, attempt) in leases {
            let completed = scheduler.handle(
                Command::complete_one(agent, job, attempt, Report::Succeeded, 0),
                now,
                &mut events,
            );
            assert_eq!(
                completed,
                Ok(Reply::Completed {
                    results: vec![Ok(())]
                })
            );
        }
    }
    // Whole commands only (a few events past `count`), so the state
    // returned is the one a replay of exactly these events gives.
    (events, scheduler)
}

// ---- the scheduler ---------------------------------------------------------
//
// Criterion calls a benchmark's closure once per sample: state that must
// outlive a sample lives outside it, and a state that is costly to build is
// built on first use, so a filter that skips the benchmark skips the build.

fn sched_submit(c: &mut Criterion) {
    let mut group = c.benchmark_group("sched/submit");
    for jobs in [1u32, 100] {
        let spec = run_spec(jobs);
        let mut scheduler = Scheduler::new(SchedulerConfig::default());
        let mut submitted = 0u64;
        let mut events = Vec::new();
        let mut commands = Vec::with_capacity(CHUNK as usize);
        group.throughput(Throughput::Elements(u64::from(jobs)));
        group.bench_function(BenchmarkId::new("jobs", jobs), |b| {
            b.iter_custom(|iters| {
                let mut time = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let count = CHUNK.min(iters - done);
                    if submitted + count * u64::from(jobs) > SUBMIT_RESET_JOBS {
                        scheduler = Scheduler::new(SchedulerConfig::default());
                        submitted = 0;
                    }
                    // Building the spec is the client's work: untimed.
                    commands.extend((0..count).map(|_| Command::SubmitRun(spec.clone())));
                    let started = Instant::now();
                    for command in commands.drain(..) {
                        events.clear();
                        let reply = scheduler.handle(command, START_MS, &mut events);
                        // A refused submission would measure nothing.
                        assert!(matches!(reply, Ok(Reply::Submitted { .. })));
                    }
                    time += started.elapsed();
                    submitted += count * u64::from(jobs);
                    done += count;
                }
                time
            });
        });
    }
    group.finish();
}

/// One `Forget` of the most a command removes (`FORGET_JOBS_MAX` jobs, in
/// finished one-job runs): the longest the writer spends on forgetting at
/// once. The state is built untimed for every sample.
fn sched_forget(c: &mut Criterion) {
    let mut group = c.benchmark_group("sched/forget");
    let runs = FORGET_JOBS_MAX as u64;
    group.throughput(Throughput::Elements(runs));
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("jobs", runs), |b| {
        b.iter_batched(
            || {
                let (mut scheduler, first) = {
                    let mut scheduler = Scheduler::new(SchedulerConfig::default());
                    let mut events = Vec::new();
                    let mut first = None;
                    for _ in 0..runs {
                        let reply =
                            handle(&mut scheduler, Command::SubmitRun(run_spec(1)), &mut events);
                        if let Reply::Submitted { first_job, .. } = reply {
                            first.get_or_insert(first_job);
                        }
                    }
                    (scheduler, first.expect("a job"))
                };
                let mut events = Vec::new();
                for job in first.0..first.0 + runs {
                    handle(
                        &mut scheduler,
                        Command::CancelJob { job: JobId(job) },
                        &mut events,
                    );
                }
                (scheduler, events)
            },
            |(mut scheduler, mut events)| {
                let retention = Retention {
                    finished_ms: 0,
                    finished_jobs: 0,
                    keys: 0,
                };
                let reply = handle(&mut scheduler, Command::Forget(retention), &mut events);
                assert!(matches!(reply, Reply::Forgot { more: false, .. }));
                scheduler
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn sched_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("sched/pair");
    group.throughput(Throughput::Elements(1));
    for waiting in [10_000u64, 1_000_000] {
        // The `core` bench's state without blocked jobs: 100 queues, 100
        // agents x 10 slots busy, `waiting` jobs behind them. `run_pairs`
        // refills what the pairs take, outside its own timing.
        let mut state: Option<CoreBench> = None;
        group.bench_function(BenchmarkId::new("waiting", waiting), |b| {
            let bench = state.get_or_insert_with(|| {
                CoreBench::build(CoreConfig {
                    waiting_jobs: waiting,
                    queues: 100,
                    agents: 100,
                    slots_per_agent: 10,
                    jobs_per_run: 100,
                    blocked_percent: 0,
                })
                .expect("building the state")
                .0
            });
            b.iter_custom(|iters| bench.run_pairs(iters).expect("pairs").time);
        });
        if let Some(bench) = state {
            bench.check_steady().expect("steady after the pairs");
        }
    }
    group.finish();
}

/// A scheduler full of waiting jobs, and the jobs a priority change moves.
struct Waiting {
    scheduler: Scheduler,
    /// 1,024 jobs spread over the queue, moved in turn: one job alone
    /// would measure a cache-hot path.
    jobs: Vec<JobId>,
    next: usize,
    /// Each lap over `jobs` alternates their priority between 1 and 2, so
    /// every change makes an event.
    lap: i32,
    events: Vec<Event>,
}

impl Waiting {
    fn new(waiting: u64) -> Waiting {
        let (mut scheduler, first) = waiting_state(waiting);
        let stride = waiting / 1_024;
        let jobs: Vec<JobId> = (0..1_024).map(|i| JobId(first.0 + i * stride)).collect();
        // Once, untimed: a change of a waiting job is one event.
        let mut events = Vec::new();
        let command = Command::ChangeJobPriority {
            job: JobId(first.0 + 1),
            priority: 3,
        };
        assert_eq!(handle(&mut scheduler, command, &mut events), Reply::Done);
        assert_eq!(events.len(), 1, "a priority change made {events:?}");
        Waiting {
            scheduler,
            jobs,
            next: 0,
            lap: 0,
            events,
        }
    }

    fn change_priority(&mut self) {
        let job = self.jobs[self.next];
        self.next += 1;
        if self.next == self.jobs.len() {
            self.next = 0;
            self.lap += 1;
        }
        self.events.clear();
        let command = Command::ChangeJobPriority {
            job,
            priority: 1 + self.lap % 2,
        };
        let reply = self.scheduler.handle(command, START_MS, &mut self.events);
        // A refused change would measure nothing.
        assert_eq!(reply, Ok(Reply::Done));
    }
}

fn sched_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("sched");
    for waiting in [10_000u64, 1_000_000] {
        let mut state: Option<Waiting> = None;
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("priority/waiting", waiting), |b| {
            let state = state.get_or_insert_with(|| Waiting::new(waiting));
            b.iter(|| state.change_priority());
        });
        group.throughput(Throughput::Elements(waiting));
        if waiting > 100_000 {
            group.sample_size(10);
        }
        group.bench_function(BenchmarkId::new("digest/jobs", waiting), |b| {
            let state = state.get_or_insert_with(|| Waiting::new(waiting));
            b.iter(|| black_box(&state.scheduler).digest());
        });
        group.sample_size(100);
    }
    group.finish();
}

// ---- the log ---------------------------------------------------------------

fn log_format(c: &mut Criterion, events: &[Event]) {
    let mut group = c.benchmark_group("log");
    for batch in BATCHES {
        // Consecutive slices of the traffic, used in turn.
        let batches: Vec<&[Event]> = events.chunks_exact(batch).take(1_024).collect();
        let records: Vec<Vec<u8>> = batches.iter().map(|batch| format::encode(batch)).collect();
        group.throughput(Throughput::Elements(batch as u64));
        let mut next = 0usize;
        group.bench_function(BenchmarkId::new("encode/events", batch), |b| {
            b.iter(|| {
                let record = format::encode(black_box(batches[next]));
                next = (next + 1) % batches.len();
                record
            });
        });
        group.bench_function(BenchmarkId::new("check/events", batch), |b| {
            b.iter(|| {
                let header = format::check(black_box(&records[next])).expect("a good record");
                next = (next + 1) % records.len();
                header
            });
        });
        group.bench_function(BenchmarkId::new("decode/events", batch), |b| {
            b.iter(|| {
                let decoded = format::decode(black_box(&records[next])).expect("a good record");
                next = (next + 1) % records.len();
                decoded
            });
        });
    }
    group.finish();
}

/// Times `encode` + `write` of batches in turn; calls `fresh` (untimed) for
/// a new store whenever the current one has taken [`APPEND_RESET_BYTES`].
/// Records go under increasing keys, as the log appends them.
fn append<S: LogStore>(
    c: &mut Criterion,
    name: &str,
    events: &[Event],
    mut fresh: impl FnMut() -> S,
) {
    let mut group = c.benchmark_group(name);
    for batch in BATCHES {
        let batches: Vec<&[Event]> = events.chunks_exact(batch).take(1_024).collect();
        group.throughput(Throughput::Elements(batch as u64));
        let mut store: Option<S> = None;
        let mut written = 0u64;
        let mut key: Seq = 1;
        let mut next = 0usize;
        group.bench_function(BenchmarkId::new("events", batch), |b| {
            b.iter_custom(|iters| {
                let mut time = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    if store.is_none() || written >= APPEND_RESET_BYTES {
                        // The old store is dropped (and its folder removed)
                        // before the new one opens, untimed.
                        drop(store.take());
                        store = Some(fresh());
                        written = 0;
                        key = 1;
                    }
                    let store = store.as_mut().expect("a store");
                    let count = CHUNK.min(iters - done);
                    let started = Instant::now();
                    for _ in 0..count {
                        let record = format::encode(batches[next]);
                        store.write(key, &record).expect("a write");
                        written += record.len() as u64;
                        key += batch as u64;
                        next = (next + 1) % batches.len();
                    }
                    time += started.elapsed();
                    done += count;
                }
                time
            });
        });
    }
    group.finish();
}

/// A sled log in a fresh temporary folder (under `TMPDIR`); the folder is
/// removed when the store is dropped.
struct TempSled {
    store: SledStore,
    _folder: tempfile::TempDir,
}

impl TempSled {
    fn new() -> TempSled {
        let folder = tempfile::Builder::new()
            .prefix("lanes-micro-")
            .tempdir()
            .expect("a temporary folder");
        let store = SledStore::open(folder.path()).expect("opening sled");
        TempSled {
            store,
            _folder: folder,
        }
    }
}

impl LogReader for TempSled {
    fn scan(&self, from: Seq, visit: &mut dyn FnMut(Seq, &[u8]) -> bool) -> Result<(), StoreError> {
        self.store.scan(from, visit)
    }

    fn remove_before(&mut self, seq: Seq) -> Result<(), StoreError> {
        self.store.remove_before(seq)
    }
}

impl LogStore for TempSled {
    fn write(&mut self, first_seq: Seq, record: &[u8]) -> Result<(), StoreError> {
        self.store.write(first_seq, record)
    }

    fn remove(&mut self, seq: Seq) -> Result<(), StoreError> {
        self.store.remove(seq)
    }

    fn syncer(&mut self) -> Box<dyn Syncer> {
        self.store.syncer()
    }

    fn reader(&self) -> Box<dyn LogReader> {
        self.store.reader()
    }
}

// ---- replay ----------------------------------------------------------------

/// Pre-encoded records in memory, read in place: replay's own cost without
/// a store's (`MemoryStore::scan` copies the whole log first).
#[derive(Clone)]
struct Records(Arc<Vec<(Seq, Vec<u8>)>>);

impl LogReader for Records {
    fn scan(&self, from: Seq, visit: &mut dyn FnMut(Seq, &[u8]) -> bool) -> Result<(), StoreError> {
        for (seq, bytes) in self.0.iter().filter(|(seq, _)| *seq >= from) {
            if !visit(*seq, bytes) {
                break;
            }
        }
        Ok(())
    }

    fn remove_before(&mut self, _seq: Seq) -> Result<(), StoreError> {
        unreachable!("replay of a sound log removes nothing")
    }
}

impl LogStore for Records {
    fn write(&mut self, _first_seq: Seq, _record: &[u8]) -> Result<(), StoreError> {
        unreachable!("replay writes nothing")
    }

    fn remove(&mut self, _seq: Seq) -> Result<(), StoreError> {
        unreachable!("replay of a sound log removes nothing")
    }

    fn syncer(&mut self) -> Box<dyn Syncer> {
        unreachable!("replay syncs nothing")
    }

    fn reader(&self) -> Box<dyn LogReader> {
        Box::new(self.clone())
    }
}

fn replay_log(c: &mut Criterion, events: &[Event], expected: &Scheduler) {
    let mut store = Records(Arc::new(
        events
            .chunks(LOG_RECORD_EVENTS)
            .map(|batch| (batch[0].seq, format::encode(batch)))
            .collect(),
    ));
    let fresh = || Scheduler::new(SchedulerConfig::default());
    // Once, untimed: replay gives the state that made the events.
    let mut check = fresh();
    let report = replay(&mut check, &mut store, ReplayOptions::default()).expect("replay");
    assert_eq!(report.events, events.len() as u64);
    assert_eq!(
        check.digest(),
        expected.digest(),
        "replay gave another state"
    );
    drop(check);

    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(20);
    group.bench_function(BenchmarkId::new("events", LOG_EVENTS), |b| {
        // The new scheduler is built, and the replayed one dropped, untimed.
        b.iter_batched(
            fresh,
            |mut scheduler| {
                replay(&mut scheduler, &mut store, ReplayOptions::default()).expect("replay");
                scheduler
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function(BenchmarkId::new("apply/events", LOG_EVENTS), |b| {
        b.iter_batched(
            fresh,
            |mut scheduler| {
                for event in events {
                    scheduler.apply(event);
                }
                scheduler
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

// ---- groups ------------------------------------------------------------------

fn log_benches(c: &mut Criterion) {
    let (events, scheduler) = traffic(LOG_EVENTS);
    // What the records weigh, for reading the throughputs as bytes.
    let weights: Vec<String> = BATCHES
        .iter()
        .map(|&batch| {
            let bytes: usize = events
                .chunks_exact(batch)
                .map(|batch| format::encode(batch).len())
                .sum();
            let counted = events.len() / batch * batch;
            format!("{:.1} at {batch}", bytes as f64 / counted as f64)
        })
        .collect();
    eprintln!(
        "log: {} events of generated traffic; record bytes per event: {}",
        events.len(),
        weights.join(", ")
    );
    log_format(c, &events);
    append(c, "log/append-memory", &events, MemoryStore::new);
    append(c, "log/append-sled-nosync", &events, TempSled::new);
    replay_log(c, &events, &scheduler);
}

/// Short runs: the whole suite in about 3.5 minutes on 2 cores. Raise
/// `--measurement-time` on the command line for a quieter figure.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = sched;
    config = config();
    targets = sched_submit, sched_pair, sched_state, sched_forget
}
criterion_group! {
    name = log;
    config = config();
    targets = log_benches
}
criterion_main!(sched, log);
