//! The durable-log benchmarks (issue 3): events appended per second at the
//! store and through the driver, against a raw append-only file with one
//! fdatasync per batch measured in the same run; sync time as the log grows;
//! replay speed; start-up from a snapshot plus a log tail; disk bytes per
//! event; the cost of the fdatasync that follows sled's own flush; and
//! command latency while snapshots are taken.
//!
//! Every figure is a median of several runs, and every rate is also given
//! as a ratio to its baseline, measured in the same run and interleaved
//! with it, so that noise from other work on the machine mostly cancels.
//!
//! Run: `cargo bench -p lanes-bench --bench log [-- --quick | --only S,...]`
//! (`--help` lists the options). Results go to docs/BENCHMARKS.md.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use hdrhistogram::Histogram;
use lanes::driver::{Driver, DriverConfig, DriverHandle, Durability, SnapshotPolicy};
use lanes::log::{format, snapshot, LogReader, LogStore, SledStore, StoreError, Syncer};
use lanes::model::{AgentId, JobId, JobSpec, Report, RunSpec, Seq, TimeMs, DEFAULT_POOL};
use lanes::replay::{recover, ReplayOptions};
use lanes::sched::{Command, Event, EventKind, Reply, Scheduler, SchedulerConfig};
use lanes_bench::{bytes_current, count_allocations, list, CountingAllocator};
use mimalloc::MiMalloc;

#[global_allocator]
static ALLOCATOR: CountingAllocator<MiMalloc> = CountingAllocator::new(MiMalloc);

/// Target of issue 3: `sync` group commit at least half the raw file's
/// rate at the same batch size.
const RAW_SLOWDOWN_MAX: f64 = 2.0;
/// Target of issue 3: acknowledged events per second, many writers.
const DRIVER_EVENTS_PER_SECOND_MIN: f64 = 1_000_000.0;
/// Target of issue 3: replay speed.
const REPLAY_EVENTS_PER_SECOND_MIN: f64 = 3_000_000.0;

/// Events per record when a log is built for replay and start-up, as a busy
/// writer's batches would be.
const BUILD_RECORD_EVENTS: usize = 1_024;
/// Distinct batches an append measurement cycles through (at least), so
/// records differ from one write to the next.
const TEMPLATE_BATCHES_MIN: usize = 16;
/// Events the append template holds at least, whatever the batch size.
const TEMPLATE_EVENTS_MIN: usize = 16_384;
/// The most slots one agent may declare (the scheduler's limit).
const AGENT_SLOTS_MAX: u32 = 100_000;
/// Jobs per run in the preloaded states (start-up, latency).
const PRELOAD_RUN_JOBS: u64 = 100;
/// Measured windows per driver run; the baselines take turns between them.
const DRIVER_WINDOWS: u32 = 6;
/// Latency histograms: 1 ns to 100 s, 3 significant digits.
const LATENCY_NS_MAX: u64 = 100_000_000_000;

const USAGE: &str = "\
usage: log [--quick] [--only SECTION,...] [--dir PATH] [--runs N] [--seconds S]
           [--batches N,N,...] [--growth-records N] [--writers N] [--writers-as K,...]
           [--workloads W,...]
           [--durabilities D,...] [--driver-seconds S] [--replay-events N,...]
           [--replay-runs N] [--run-jobs N] [--snapshot-jobs N]
           [--tail-events N] [--latency-jobs N] [--latency-seconds S]
           [--latency-runs N] [--latency-durabilities D,...]
           [--snapshot-every N]

  --quick             small sizes and short runs (a smoke test, not figures)
  --only S,..         sections: append,growth,driver,replay,startup,latency
                      (all)
  --dir PATH          where temporary logs go; must not be a tmpfs
                      (target/ of the workspace)
  --runs N            measured runs per append and driver case     (5)
  --seconds S         seconds per sink per append run, in 10 turns (2)
  --batches N,..      events per record for append                 (1,64,1024)
  --growth-records N  records synced one by one in growth, at the
                      largest batch size                           (500)
  --writers N         concurrent writers for the driver            (64)
  --writers-as K,..   driver writers as OS threads, as tokio tasks, or
                      both: threads,tasks                          (both)
  --workloads W,..    driver workloads: one-job, run16, dispatch16 (all)
  --durabilities D,.. driver durabilities: sync, none              (sync,none)
  --driver-seconds S  measured seconds per driver run, in 6 windows
                      with the baselines' turns between them       (3)
  --replay-events N,..log sizes replayed                           (1000000,10000000)
  --replay-runs N     runs per replay measurement                  (3)
  --run-jobs N        jobs per run in the generated traffic        (10)
  --snapshot-jobs N   jobs in the start-up snapshot                (1000000)
  --tail-events N     log tail replayed after the snapshot         (100000)
  --latency-jobs N    jobs waiting when the latency runs start     (1000000)
  --latency-seconds S seconds per latency run                      (30)
  --latency-runs N    latency runs with snapshots and without      (3)
  --latency-durabilities D,..  durabilities of the latency runs    (sync,none)
  --snapshot-every N  events between snapshots in latency runs     (20000)";

// ---- options -----------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Append,
    Growth,
    Driver,
    Replay,
    Startup,
    Latency,
}

impl Section {
    const ALL: [Section; 6] = [
        Section::Append,
        Section::Growth,
        Section::Driver,
        Section::Replay,
        Section::Startup,
        Section::Latency,
    ];

    fn parse(name: &str) -> anyhow::Result<Section> {
        Ok(match name {
            "append" => Section::Append,
            "growth" => Section::Growth,
            "driver" => Section::Driver,
            "replay" => Section::Replay,
            "startup" => Section::Startup,
            "latency" => Section::Latency,
            other => bail!("unknown section {other:?}\n{USAGE}"),
        })
    }
}

/// What each driver writer submits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    /// Runs of one job: one event per command.
    OneJob,
    /// Runs of 16 jobs: still one event per command (the run's jobs travel
    /// inside it), 16 jobs.
    Run16,
    /// Runs of 16 jobs, each dispatched at once to an agent with a standing
    /// request for work: 17 events per command.
    Dispatch16,
}

impl Workload {
    fn parse(name: &str) -> anyhow::Result<Workload> {
        Ok(match name {
            "one-job" => Workload::OneJob,
            "run16" => Workload::Run16,
            "dispatch16" => Workload::Dispatch16,
            other => bail!("unknown workload {other:?}\n{USAGE}"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Workload::OneJob => "one-job",
            Workload::Run16 => "run16",
            Workload::Dispatch16 => "dispatch16",
        }
    }

    fn jobs_per_command(self) -> u32 {
        match self {
            Workload::OneJob => 1,
            Workload::Run16 | Workload::Dispatch16 => 16,
        }
    }
}

/// How the driver's writers wait for their answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writers {
    /// An operating-system thread each, blocked on its answer: every
    /// answer is a thread wake-up.
    Threads,
    /// A task each on a multi-threaded tokio runtime with one worker per
    /// core, as the server runs its connections: one wake-up of a worker
    /// serves many answers.
    Tasks,
}

impl Writers {
    fn parse(name: &str) -> anyhow::Result<Writers> {
        Ok(match name {
            "threads" => Writers::Threads,
            "tasks" => Writers::Tasks,
            other => bail!("unknown kind of writer {other:?}\n{USAGE}"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Writers::Threads => "threads",
            Writers::Tasks => "tasks",
        }
    }
}

fn durability_parse(name: &str) -> anyhow::Result<Durability> {
    Ok(match name {
        "sync" => Durability::Sync,
        "none" => Durability::None,
        other => bail!("unknown durability {other:?} (sync or none)\n{USAGE}"),
    })
}

fn durability_name(durability: Durability) -> &'static str {
    match durability {
        Durability::Sync => "sync",
        Durability::Interval(_) => "interval",
        Durability::None => "none",
    }
}

struct Options {
    sections: Vec<Section>,
    dir: PathBuf,
    runs: usize,
    seconds: f64,
    batches: Vec<usize>,
    growth_records: usize,
    writers: usize,
    writers_as: Vec<Writers>,
    workloads: Vec<Workload>,
    durabilities: Vec<Durability>,
    driver_seconds: f64,
    replay_events: Vec<u64>,
    replay_runs: usize,
    run_jobs: u32,
    snapshot_jobs: u64,
    tail_events: u64,
    latency_jobs: u64,
    latency_seconds: f64,
    latency_runs: usize,
    latency_durabilities: Vec<Durability>,
    snapshot_every: u64,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        sections: Section::ALL.to_vec(),
        dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        runs: 5,
        seconds: 2.0,
        batches: vec![1, 64, 1024],
        growth_records: 500,
        writers: 64,
        writers_as: vec![Writers::Threads, Writers::Tasks],
        workloads: vec![Workload::OneJob, Workload::Run16, Workload::Dispatch16],
        durabilities: vec![Durability::Sync, Durability::None],
        driver_seconds: 3.0,
        replay_events: vec![1_000_000, 10_000_000],
        replay_runs: 3,
        run_jobs: 10,
        snapshot_jobs: 1_000_000,
        tail_events: 100_000,
        latency_jobs: 1_000_000,
        latency_seconds: 30.0,
        latency_runs: 3,
        latency_durabilities: vec![Durability::Sync, Durability::None],
        snapshot_every: 20_000,
    };
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    // `--quick` first, so later flags override what it sets.
    if arguments.iter().any(|a| a == "--quick") {
        options.runs = 2;
        options.seconds = 0.3;
        options.driver_seconds = 0.5;
        options.growth_records = 100;
        options.replay_events = vec![100_000];
        options.replay_runs = 2;
        options.snapshot_jobs = 50_000;
        options.tail_events = 10_000;
        options.latency_jobs = 50_000;
        options.latency_seconds = 1.0;
        options.latency_runs = 1;
        options.snapshot_every = 5_000;
    }
    let mut args = arguments.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            // `cargo bench` passes this to every bench target.
            "--bench" | "--quick" => {}
            "--only" => options.sections = list(&value()?, Section::parse)?,
            "--dir" => options.dir = PathBuf::from(value()?),
            "--runs" => options.runs = value()?.parse()?,
            "--seconds" => options.seconds = value()?.parse()?,
            "--batches" => options.batches = list(&value()?, |s| Ok(s.parse()?))?,
            "--growth-records" => options.growth_records = value()?.parse()?,
            "--writers" => options.writers = value()?.parse()?,
            "--writers-as" => options.writers_as = list(&value()?, Writers::parse)?,
            "--workloads" => options.workloads = list(&value()?, Workload::parse)?,
            "--durabilities" => options.durabilities = list(&value()?, durability_parse)?,
            "--driver-seconds" => options.driver_seconds = value()?.parse()?,
            "--replay-events" => options.replay_events = list(&value()?, |s| Ok(s.parse()?))?,
            "--replay-runs" => options.replay_runs = value()?.parse()?,
            "--run-jobs" => options.run_jobs = value()?.parse()?,
            "--snapshot-jobs" => options.snapshot_jobs = value()?.parse()?,
            "--tail-events" => options.tail_events = value()?.parse()?,
            "--latency-jobs" => options.latency_jobs = value()?.parse()?,
            "--latency-seconds" => options.latency_seconds = value()?.parse()?,
            "--latency-runs" => options.latency_runs = value()?.parse()?,
            "--latency-durabilities" => {
                options.latency_durabilities = list(&value()?, durability_parse)?
            }
            "--snapshot-every" => options.snapshot_every = value()?.parse()?,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    ensure!(
        options.runs > 0 && options.replay_runs > 0 && options.latency_runs > 0,
        "need at least one run\n{USAGE}"
    );
    ensure!(
        options.batches.iter().all(|&b| (1..=16_384).contains(&b)),
        "batch sizes must be 1 to 16,384 events (the driver's record limit)"
    );
    ensure!(options.writers > 0, "need at least one writer");
    ensure!(
        options.growth_records >= 10,
        "growth needs at least 10 records (it reports tenths)"
    );
    ensure!(
        (1..=1_000).contains(&options.run_jobs),
        "jobs per generated run must be 1 to 1,000 (the generator's agent slots)"
    );
    ensure!(
        options.replay_events.iter().all(|&n| n > 0) && options.tail_events > 0,
        "logs need at least one event"
    );
    Ok(options)
}

// ---- small helpers -------------------------------------------------------

fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "a median of nothing");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (sorted[(sorted.len() - 1) / 2] + sorted[sorted.len() / 2]) / 2.0
}

/// A count with thousands separators, as the tables show them.
fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The filesystem type of `path`, as `df` names it.
fn filesystem(path: &Path) -> String {
    std::process::Command::new("df")
        .args(["--output=source,fstype,target"])
        .arg(path)
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// Bytes of every file under `path`: (apparent length, allocated blocks).
fn disk_usage(path: &Path) -> anyhow::Result<(u64, u64)> {
    let metadata = fs::symlink_metadata(path)?;
    if metadata.is_file() {
        return Ok((metadata.len(), metadata.blocks() * 512));
    }
    let mut total = (0, 0);
    if metadata.is_dir() {
        for entry in fs::read_dir(path)? {
            let (apparent, allocated) = disk_usage(&entry?.path())?;
            total.0 += apparent;
            total.1 += allocated;
        }
    }
    Ok(total)
}

/// Regular files under `path`: (all of them, those under a `blobs` folder).
fn file_count(path: &Path) -> anyhow::Result<(u64, u64)> {
    let mut total = (0, 0);
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            let (files, blobs) = file_count(&entry.path())?;
            total.0 += files;
            total.1 += if entry.file_name() == "blobs" {
                files
            } else {
                blobs
            };
        } else {
            total.0 += 1;
        }
    }
    Ok(total)
}

/// Drops every file under `path` from the page cache, so the next read
/// goes to the disk. The files must be clean (synced), or the kernel keeps
/// their pages.
fn evict(path: &Path) -> anyhow::Result<()> {
    let metadata = fs::symlink_metadata(path)?;
    if metadata.is_dir() {
        for entry in fs::read_dir(path)? {
            evict(&entry?.path())?;
        }
    } else if metadata.is_file() {
        let file = File::open(path)?;
        file.sync_data()?;
        // SAFETY: `file` is open for the whole call; fadvise only advises.
        let result = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        ensure!(result == 0, "posix_fadvise on {}: {result}", path.display());
    }
    Ok(())
}

/// A fresh, empty folder for one measurement, removed when dropped.
fn scratch(root: &Path, what: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("lanes-log-bench-{what}-"))
        .tempdir_in(root)
        .with_context(|| format!("creating a folder in {}", root.display()))
}

fn run_spec(jobs: u32) -> RunSpec {
    RunSpec {
        jobs: vec![JobSpec::default(); jobs as usize],
        ..RunSpec::default()
    }
}

fn submitted(answer: Result<Result<Reply, lanes::sched::Rejection>, impl std::fmt::Debug>) -> bool {
    matches!(answer, Ok(Ok(Reply::Submitted { .. })))
}

// ---- generated traffic ---------------------------------------------------

/// Drives a scheduler the way a busy cluster would: a run is submitted, an
/// agent with a standing request takes its jobs at once, then completes
/// them; the agent asks again when its request runs low. Every event goes
/// to the caller, so the log built from it replays to the same state.
struct Traffic {
    scheduler: Scheduler,
    agent: AgentId,
    slots: u32,
    /// The agent's standing request, as the scheduler counts it.
    credit: u32,
    spec: RunSpec,
    jobs_per_run: u32,
    running: Vec<(JobId, u32)>,
    now: TimeMs,
    jobs_submitted: u64,
}

impl Traffic {
    fn new(
        scheduler: Scheduler,
        jobs_per_run: u32,
        slots: u32,
        events: &mut Vec<Event>,
    ) -> anyhow::Result<Traffic> {
        let now = scheduler.clock() + 1;
        let mut traffic = Traffic {
            scheduler,
            agent: AgentId(0),
            slots,
            credit: 0,
            spec: run_spec(jobs_per_run),
            jobs_per_run,
            running: Vec::new(),
            now,
            jobs_submitted: 0,
        };
        let reply = traffic.handle(
            Command::RegisterAgent {
                name: "bench-agent".to_string(),
                pools: vec![DEFAULT_POOL.to_string()],
                labels: Vec::new(),
                slots,
                running: Vec::new(),
            },
            events,
        )?;
        let Reply::Registered { agent } = reply else {
            bail!("registering the agent answered {reply:?}");
        };
        traffic.agent = agent;
        traffic.request_work(events)?;
        Ok(traffic)
    }

    fn handle(&mut self, command: Command, events: &mut Vec<Event>) -> anyhow::Result<Reply> {
        let before = events.len();
        let reply = self
            .scheduler
            .handle(command, self.now, events)
            .map_err(|rejection| anyhow!("rejected: {rejection}"))?;
        for event in &events[before..] {
            if let EventKind::JobDispatched {
                job,
                agent,
                attempt,
            } = event.kind
            {
                ensure!(agent == self.agent, "{job} went to an unknown {agent}");
                ensure!(self.credit > 0, "a dispatch beyond the standing request");
                self.credit -= 1;
                self.running.push((job, attempt));
            }
        }
        Ok(reply)
    }

    fn request_work(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        self.credit = self.slots;
        self.handle(
            Command::TakeWork {
                agent: self.agent,
                count: self.slots,
            },
            events,
        )?;
        Ok(())
    }

    /// One run submitted, and every job running before it completed.
    fn round(&mut self, events: &mut Vec<Event>) -> anyhow::Result<()> {
        self.now += 1;
        self.handle(Command::SubmitRun(self.spec.clone()), events)?;
        self.jobs_submitted += u64::from(self.jobs_per_run);
        for (job, attempt) in std::mem::take(&mut self.running) {
            self.handle(
                Command::complete_one(self.agent, job, attempt, Report::Succeeded, 0),
                events,
            )?;
        }
        if self.credit < self.jobs_per_run {
            self.request_work(events)?;
        }
        Ok(())
    }

    /// Rounds until `events` holds at least `count` events.
    fn fill(&mut self, events: &mut Vec<Event>, count: usize) -> anyhow::Result<()> {
        while events.len() < count {
            self.round(events)?;
        }
        Ok(())
    }
}

/// A scheduler with `jobs` jobs waiting in runs of [`PRELOAD_RUN_JOBS`].
fn waiting_state(jobs: u64) -> anyhow::Result<Scheduler> {
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    let mut events = Vec::new();
    let mut left = jobs;
    while left > 0 {
        let size = left.min(PRELOAD_RUN_JOBS);
        events.clear();
        let reply = scheduler
            .handle(Command::SubmitRun(run_spec(size as u32)), 1, &mut events)
            .map_err(|rejection| anyhow!("rejected: {rejection}"))?;
        ensure!(matches!(reply, Reply::Submitted { .. }), "{reply:?}");
        left -= size;
    }
    Ok(scheduler)
}

fn renumber(events: &mut [Event], first: Seq) {
    for (i, event) in events.iter_mut().enumerate() {
        event.seq = first + i as u64;
    }
}

// ---- counting store: what the driver wrote and synced --------------------

#[derive(Default)]
struct StoreStats {
    records: AtomicU64,
    bytes: AtomicU64,
    events: AtomicU64,
    syncs: AtomicU64,
    sync_ns: AtomicU64,
    /// Log trims, one per snapshot the snapshotter finished.
    trims: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default)]
struct StatsReading {
    records: u64,
    bytes: u64,
    events: u64,
    syncs: u64,
    sync_ns: u64,
    trims: u64,
}

impl StoreStats {
    fn read(&self) -> StatsReading {
        StatsReading {
            records: self.records.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            sync_ns: self.sync_ns.load(Ordering::Relaxed),
            trims: self.trims.load(Ordering::Relaxed),
        }
    }
}

impl std::ops::Add for StatsReading {
    type Output = StatsReading;

    fn add(self, other: StatsReading) -> StatsReading {
        StatsReading {
            records: self.records + other.records,
            bytes: self.bytes + other.bytes,
            events: self.events + other.events,
            syncs: self.syncs + other.syncs,
            sync_ns: self.sync_ns + other.sync_ns,
            trims: self.trims + other.trims,
        }
    }
}

impl std::ops::Sub for StatsReading {
    type Output = StatsReading;

    fn sub(self, earlier: StatsReading) -> StatsReading {
        StatsReading {
            records: self.records - earlier.records,
            bytes: self.bytes - earlier.bytes,
            events: self.events - earlier.events,
            syncs: self.syncs - earlier.syncs,
            sync_ns: self.sync_ns - earlier.sync_ns,
            trims: self.trims - earlier.trims,
        }
    }
}

/// A [`SledStore`] that counts records, bytes, syncs and trims, so the
/// driver's batches can be seen from outside the engine.
struct CountingStore {
    inner: SledStore,
    stats: Arc<StoreStats>,
}

impl LogReader for CountingStore {
    fn scan(&self, from: Seq, visit: &mut dyn FnMut(Seq, &[u8]) -> bool) -> Result<(), StoreError> {
        self.inner.scan(from, visit)
    }

    fn remove_before(&mut self, seq: Seq) -> Result<(), StoreError> {
        self.inner.remove_before(seq)
    }
}

impl LogStore for CountingStore {
    fn write(&mut self, first_seq: Seq, record: &[u8]) -> Result<(), StoreError> {
        let stats = &self.stats;
        stats.records.fetch_add(1, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(record.len() as u64, Ordering::Relaxed);
        // The event count (format.rs: u32 LE at offset 16).
        if let Some(count) = record.get(16..20) {
            let count = u32::from_le_bytes(count.try_into().expect("4 bytes"));
            stats.events.fetch_add(u64::from(count), Ordering::Relaxed);
        }
        self.inner.write(first_seq, record)
    }

    fn remove(&mut self, seq: Seq) -> Result<(), StoreError> {
        self.inner.remove(seq)
    }

    fn syncer(&mut self) -> Box<dyn Syncer> {
        Box::new(CountingSyncer {
            inner: self.inner.syncer(),
            stats: self.stats.clone(),
        })
    }

    fn reader(&self) -> Box<dyn LogReader> {
        Box::new(CountingReader {
            inner: self.inner.reader(),
            stats: self.stats.clone(),
        })
    }
}

/// Syncs that failed because a file of sled's vanished while the syncer
/// walked the folder (sled replaces its `snap.*` files from a background
/// thread), and were retried. The engine stops on such a failure; the
/// benchmarks retry, count, and report it.
static SYNCS_RETRIED: AtomicU64 = AtomicU64::new(0);
/// Retries of one sync before giving up.
const SYNC_RETRIES_MAX: u32 = 3;

/// A sync, retried if it failed only because a file vanished mid-walk.
fn sync_retrying(syncer: &mut dyn Syncer) -> Result<(), StoreError> {
    let mut retries = 0;
    loop {
        match syncer.sync() {
            Err(StoreError::Sync { reason })
                if reason.contains("No such file or directory") && retries < SYNC_RETRIES_MAX =>
            {
                retries += 1;
                SYNCS_RETRIED.fetch_add(1, Ordering::Relaxed);
            }
            result => return result,
        }
    }
}

struct CountingSyncer {
    inner: Box<dyn Syncer>,
    stats: Arc<StoreStats>,
}

impl Syncer for CountingSyncer {
    fn sync(&mut self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = sync_retrying(self.inner.as_mut());
        self.stats
            .sync_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        result
    }
}

struct CountingReader {
    inner: Box<dyn LogReader>,
    stats: Arc<StoreStats>,
}

impl LogReader for CountingReader {
    fn scan(&self, from: Seq, visit: &mut dyn FnMut(Seq, &[u8]) -> bool) -> Result<(), StoreError> {
        self.inner.scan(from, visit)
    }

    fn remove_before(&mut self, seq: Seq) -> Result<(), StoreError> {
        let result = self.inner.remove_before(seq);
        self.stats.trims.fetch_add(1, Ordering::Relaxed);
        result
    }
}

// ---- append: the store against the raw file ------------------------------

/// Where an append measurement writes each batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    /// `format::encode` only: the CPU part of every other sink.
    Encode,
    /// The physical reference: the pre-encoded record bytes appended to a
    /// file with `write_all`, then `sync_data`.
    RawSync,
    /// As `RawSync`, with the records as they would be uncompressed
    /// (`format::encode_plain`): what the bytes compression saves are worth
    /// to the raw file.
    RawSyncPlain,
    /// As `RawSync` without the sync.
    RawNone,
    /// sled opened directly, as `SledStore` opens it: encode, insert, then
    /// sled's own `flush` only (no fdatasync after it).
    SledFlush,
    /// Lanes: encode, `SledStore::write`, `Syncer::sync` (sled's flush and
    /// an fdatasync of every file).
    LanesSync,
    /// Lanes without a sync: encode and `SledStore::write`.
    LanesNone,
}

impl Sink {
    const ALL: [Sink; 7] = [
        Sink::Encode,
        Sink::RawSync,
        Sink::RawSyncPlain,
        Sink::RawNone,
        Sink::SledFlush,
        Sink::LanesSync,
        Sink::LanesNone,
    ];

    fn name(self) -> &'static str {
        match self {
            Sink::Encode => "encode only",
            Sink::RawSync => "raw file, sync",
            Sink::RawSyncPlain => "raw file, sync, uncompressed",
            Sink::RawNone => "raw file, none",
            Sink::SledFlush => "sled flush only",
            Sink::LanesSync => "Lanes, sync",
            Sink::LanesNone => "Lanes, none",
        }
    }
}

enum Target {
    Encode,
    Raw {
        file: File,
        sync: bool,
    },
    Sled {
        db: sled::Db,
        records: sled::Tree,
    },
    Lanes {
        store: SledStore,
        syncer: Box<dyn Syncer>,
        sync: bool,
    },
}

impl Target {
    fn open(sink: Sink, folder: &Path) -> anyhow::Result<Target> {
        let raw = |sync| -> anyhow::Result<Target> {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(folder.join("raw.log"))?;
            Ok(Target::Raw { file, sync })
        };
        let lanes = |sync| -> anyhow::Result<Target> {
            let mut store = SledStore::open(folder)?;
            let syncer = store.syncer();
            Ok(Target::Lanes {
                store,
                syncer,
                sync,
            })
        };
        Ok(match sink {
            Sink::Encode => Target::Encode,
            Sink::RawSync | Sink::RawSyncPlain => raw(true)?,
            Sink::RawNone => raw(false)?,
            Sink::LanesSync => lanes(true)?,
            Sink::LanesNone => lanes(false)?,
            Sink::SledFlush => {
                // The layout SledStore uses (sled_store.rs): the database in
                // `log/`, background flushing off, records in one tree.
                let db = sled::Config::new()
                    .path(folder.join("log"))
                    .flush_every_ms(None)
                    .open()?;
                let records = db.open_tree("records")?;
                Target::Sled { db, records }
            }
        })
    }

    /// Appends one batch: `events` renumbered from `first_seq` for the sinks
    /// that encode, `encoded` (the same batch, encoded once beforehand) for
    /// the raw file.
    fn append(
        &mut self,
        events: &mut [Event],
        encoded: &[u8],
        first_seq: Seq,
    ) -> anyhow::Result<()> {
        match self {
            Target::Encode => {
                renumber(events, first_seq);
                std::hint::black_box(format::encode(events));
            }
            Target::Raw { file, sync } => {
                file.write_all(encoded)?;
                if *sync {
                    file.sync_data()?;
                }
            }
            Target::Sled { db, records } => {
                renumber(events, first_seq);
                let record = format::encode(events);
                records.insert(first_seq.to_be_bytes(), &record[..])?;
                db.flush()?;
            }
            Target::Lanes {
                store,
                syncer,
                sync,
            } => {
                renumber(events, first_seq);
                store.write(first_seq, &format::encode(events))?;
                if *sync {
                    sync_retrying(syncer.as_mut())?;
                }
            }
        }
        Ok(())
    }

    /// Makes everything durable (outside the timing) so the size on disk is
    /// the size after a sync.
    fn finish(&mut self) -> anyhow::Result<()> {
        match self {
            Target::Encode => {}
            Target::Raw { file, .. } => file.sync_data()?,
            Target::Sled { db, .. } => {
                db.flush()?;
            }
            Target::Lanes { syncer, .. } => sync_retrying(syncer.as_mut())?,
        }
        Ok(())
    }
}

/// The batches an append measurement cycles through.
#[derive(Clone)]
struct Template {
    batches: Vec<Vec<Event>>,
    encoded: Vec<Vec<u8>>,
    /// Events one batch stands for (for the raw file fed plain bytes, the
    /// driver's mean, which need not be whole).
    events_per_batch: f64,
}

impl Template {
    fn new(events: &[Event], batch: usize) -> Template {
        let count = (batch * TEMPLATE_BATCHES_MIN)
            .max(TEMPLATE_EVENTS_MIN)
            .min(events.len());
        let mut batches: Vec<Vec<Event>> = events[..count]
            .chunks_exact(batch)
            .map(|chunk| chunk.to_vec())
            .collect();
        let encoded = batches
            .iter_mut()
            .map(|batch| {
                renumber(batch, 1);
                format::encode(batch)
            })
            .collect();
        Template {
            batches,
            encoded,
            events_per_batch: batch as f64,
        }
    }

    /// For the raw file only: `bytes` bytes per batch, standing for
    /// `events_per_batch` events.
    fn bytes(bytes: usize, events_per_batch: f64) -> Template {
        Template {
            batches: vec![Vec::new()],
            encoded: vec![(0..bytes.max(1)).map(|i| (i * 131 % 251) as u8).collect()],
            events_per_batch,
        }
    }

    /// The same batches, the raw file fed them uncompressed.
    fn plain(&self) -> Template {
        Template {
            encoded: self
                .batches
                .iter()
                .map(|b| format::encode_plain(b))
                .collect(),
            ..self.clone()
        }
    }

    fn bytes_per_event(&self) -> f64 {
        let bytes: usize = self.encoded.iter().map(Vec::len).sum();
        bytes as f64 / (self.batches.len() as f64 * self.events_per_batch)
    }
}

struct AppendReading {
    events_per_second: f64,
    /// Events written in all, warm-up included (what the disk holds).
    events_total: u64,
    /// Apparent bytes (sled's `size_on_disk`, or the file's length).
    bytes_apparent: u64,
    /// Allocated blocks of every file (as `du` counts).
    bytes_allocated: u64,
}

/// One sink open for a run, in its own fresh folder. Runs of several lanes
/// take turns in short slices, so that each sees the same disk: the
/// machine's fsync latency swings by 10x from one second to the next when
/// other work syncs.
struct Lane {
    sink: Sink,
    folder: tempfile::TempDir,
    target: Target,
    template: Template,
    seq: Seq,
    next: usize,
    batches_total: u64,
    batches_counted: u64,
    seconds_counted: f64,
}

impl Lane {
    fn open(sink: Sink, template: Template, root: &Path) -> anyhow::Result<Lane> {
        let folder = scratch(root, "append")?;
        let target = Target::open(sink, folder.path())?;
        Ok(Lane {
            sink,
            folder,
            target,
            template,
            seq: 1,
            next: 0,
            batches_total: 0,
            batches_counted: 0,
            seconds_counted: 0.0,
        })
    }

    /// Appends batches for `duration` (at least one); counted or warm-up.
    fn run_for(&mut self, duration: Duration, counted: bool) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut batches = 0;
        loop {
            let next = self.next;
            let events = &mut self.template.batches[next];
            self.target
                .append(events, &self.template.encoded[next], self.seq)?;
            self.seq += events.len() as u64;
            self.next = (next + 1) % self.template.batches.len();
            batches += 1;
            if started.elapsed() >= duration {
                break;
            }
        }
        self.batches_total += batches;
        if counted {
            self.batches_counted += batches;
            self.seconds_counted += started.elapsed().as_secs_f64();
        }
        Ok(())
    }

    fn events_per_second(&self) -> f64 {
        self.batches_counted as f64 * self.template.events_per_batch / self.seconds_counted
    }

    /// Syncs what is left (outside the timing) and measures the disk.
    fn finish(mut self) -> anyhow::Result<AppendReading> {
        self.target.finish()?;
        let (apparent, allocated) = disk_usage(self.folder.path())?;
        let bytes_apparent = match &self.target {
            Target::Lanes { store, .. } => store.size_on_disk(),
            Target::Sled { db, .. } => db.size_on_disk()?,
            _ => apparent,
        };
        let events_per_second = self.events_per_second();
        let events_total = (self.batches_total as f64 * self.template.events_per_batch) as u64;
        drop(self.target);
        Ok(AppendReading {
            events_per_second,
            events_total,
            bytes_apparent,
            bytes_allocated: allocated,
        })
    }
}

/// Slices each measured run is cut into, per lane.
const SLICES_PER_RUN: u32 = 10;

/// One run of several lanes: a warm-up of a tenth of `duration` each, then
/// `duration` each, in [`SLICES_PER_RUN`] turns.
fn run_lanes(lanes: &mut [Lane], duration: Duration, rotation: usize) -> anyhow::Result<()> {
    for lane in lanes.iter_mut() {
        lane.run_for(duration / 10, false)?;
    }
    let slice = duration / SLICES_PER_RUN;
    for turn in 0..SLICES_PER_RUN as usize {
        for k in 0..lanes.len() {
            let index = (k + turn + rotation) % lanes.len();
            lanes[index].run_for(slice, true)?;
        }
    }
    Ok(())
}

fn section_append(options: &Options) -> anyhow::Result<()> {
    println!("\n== append: events per second at the store, against the raw file ==");
    let largest = options.batches.iter().copied().max().unwrap_or(1);
    let mut events = Vec::new();
    let mut traffic = Traffic::new(
        Scheduler::new(SchedulerConfig::default()),
        options.run_jobs,
        1_000,
        &mut events,
    )?;
    traffic.fill(
        &mut events,
        (largest * TEMPLATE_BATCHES_MIN).max(TEMPLATE_EVENTS_MIN),
    )?;
    drop(traffic);
    let duration = Duration::from_secs_f64(options.seconds);
    let mut rows = Vec::new();
    for &batch in &options.batches {
        let template = Template::new(&events, batch);
        let plain = template.plain();
        println!(
            "\n-- {batch} events per record ({:.1} record bytes per event, {:.1} uncompressed; load {}) --",
            template.bytes_per_event(),
            plain.bytes_per_event(),
            load_average()
        );
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); Sink::ALL.len()];
        let mut last: Vec<Option<AppendReading>> = Sink::ALL.iter().map(|_| None).collect();
        for run in 0..options.runs {
            let mut lanes = Sink::ALL
                .iter()
                .map(|&sink| {
                    let template = match sink {
                        Sink::RawSyncPlain => plain.clone(),
                        _ => template.clone(),
                    };
                    Lane::open(sink, template, &options.dir)
                })
                .collect::<anyhow::Result<Vec<Lane>>>()?;
            // Rotate the order so no sink always runs first or last.
            run_lanes(&mut lanes, duration, run)?;
            let mut line = format!("run {}:", run + 1);
            for (index, lane) in lanes.into_iter().enumerate() {
                let sink = lane.sink;
                let reading = lane.finish()?;
                line += &format!(" {} {}", sink.name(), grouped(reading.events_per_second));
                line += if index + 1 < Sink::ALL.len() {
                    ";"
                } else {
                    " events/s"
                };
                rates[index].push(reading.events_per_second);
                last[index] = Some(reading);
            }
            println!("{line}");
        }
        rows.push((batch, rates, last, template.bytes_per_event()));
    }

    let index = |sink: Sink| Sink::ALL.iter().position(|&s| s == sink).expect("a sink");
    let ratio_median = |rates: &[Vec<f64>], over: Sink, under: Sink| -> f64 {
        let ratios: Vec<f64> = rates[index(over)]
            .iter()
            .zip(&rates[index(under)])
            .map(|(a, b)| a / b)
            .collect();
        median(&ratios)
    };
    println!(
        "\n| events/record | raw, sync | Lanes, sync | Lanes/raw (sync) | raw, sync, uncompressed \
         | Lanes/raw uncompressed | sled flush only \
         | Lanes/sled flush | raw, none | Lanes, none | Lanes/raw (none) | encode only |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut sync_ratio_worst = f64::INFINITY;
    for (batch, rates, _, _) in &rows {
        let rate = |sink| grouped(median(&rates[index(sink)]));
        let sync_ratio = ratio_median(rates, Sink::LanesSync, Sink::RawSync);
        sync_ratio_worst = sync_ratio_worst.min(sync_ratio);
        println!(
            "| {batch} | {} | {} | {sync_ratio:.2} | {} | {:.2} | {} | {:.2} | {} | {} | {:.2} | {} |",
            rate(Sink::RawSync),
            rate(Sink::LanesSync),
            rate(Sink::RawSyncPlain),
            ratio_median(rates, Sink::LanesSync, Sink::RawSyncPlain),
            rate(Sink::SledFlush),
            ratio_median(rates, Sink::LanesSync, Sink::SledFlush),
            rate(Sink::RawNone),
            rate(Sink::LanesNone),
            ratio_median(rates, Sink::LanesNone, Sink::RawNone),
            rate(Sink::Encode),
        );
    }
    println!(
        "\n(rates: median events/s of {} runs of {} s per sink, each run in {SLICES_PER_RUN} \
         turns; ratios: median of the per-run ratios)",
        options.runs, options.seconds
    );

    println!("\nDisk bytes per event after a sync (the last run of each sink; sled's size_on_disk / allocated blocks):");
    println!("\n| events/record | encoded bytes/event | sink | events on disk | apparent bytes/event | allocated bytes/event |");
    println!("|---:|---:|---|---:|---:|---:|");
    for (batch, _, last, encoded) in &rows {
        for sink in [
            Sink::RawSync,
            Sink::RawSyncPlain,
            Sink::LanesSync,
            Sink::RawNone,
            Sink::LanesNone,
        ] {
            if let Some(reading) = &last[index(sink)] {
                println!(
                    "| {batch} | {encoded:.1} | {} | {} | {:.1} | {:.1} |",
                    sink.name(),
                    grouped(reading.events_total as f64),
                    reading.bytes_apparent as f64 / reading.events_total as f64,
                    reading.bytes_allocated as f64 / reading.events_total as f64
                );
            }
        }
    }
    println!(
        "\ntarget Lanes sync within {RAW_SLOWDOWN_MAX}x of the raw file at every batch size: \
         worst Lanes/raw {sync_ratio_worst:.2} (needs >= {:.2}): {}",
        1.0 / RAW_SLOWDOWN_MAX,
        verdict(sync_ratio_worst * RAW_SLOWDOWN_MAX >= 1.0)
    );
    Ok(())
}

/// Sync cost as the log grows: records of the largest batch size, each
/// synced, into the raw file and into Lanes, reported by tenths.
fn section_growth(options: &Options) -> anyhow::Result<()> {
    let batch = options.batches.iter().copied().max().unwrap_or(1);
    let records = options.growth_records;
    println!(
        "\n== growth: {records} records of {batch} events, one sync each: time per sync as \
         the log grows (load {}) ==",
        load_average()
    );
    let mut events = Vec::new();
    let mut traffic = Traffic::new(
        Scheduler::new(SchedulerConfig::default()),
        options.run_jobs,
        1_000,
        &mut events,
    )?;
    traffic.fill(
        &mut events,
        (batch * TEMPLATE_BATCHES_MIN).max(TEMPLATE_EVENTS_MIN),
    )?;
    drop(traffic);
    let mut template = Template::new(&events, batch);
    let tenth = records / 10;
    // Per sink, per tenth: milliseconds per sync, and the files sled holds.
    let mut tenths: Vec<Vec<(f64, u64, u64)>> = Vec::new();
    for sink in [Sink::RawSync, Sink::LanesSync] {
        let folder = scratch(&options.dir, "growth")?;
        let mut target = Target::open(sink, folder.path())?;
        let mut readings = Vec::new();
        let mut seq = 1;
        for tenth_index in 0..10 {
            let started = Instant::now();
            for i in 0..tenth {
                let next = (tenth_index * tenth + i) % template.batches.len();
                target.append(&mut template.batches[next], &template.encoded[next], seq)?;
                seq += batch as u64;
            }
            let ms = started.elapsed().as_secs_f64() * 1e3 / tenth as f64;
            let (files, blobs) = match sink {
                Sink::LanesSync => file_count(&folder.path().join("log"))?,
                _ => (1, 0),
            };
            readings.push((ms, files, blobs));
        }
        drop(target);
        tenths.push(readings);
    }
    println!("\n| records written | raw ms/sync | Lanes ms/sync | Lanes/raw (time) | files in sled's folder | of which blobs |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (i, (&(raw, _, _), &(lanes, files, blobs))) in tenths[0].iter().zip(&tenths[1]).enumerate()
    {
        println!(
            "| {} | {raw:.2} | {lanes:.2} | {:.1} | {files} | {blobs} |",
            (i + 1) * tenth,
            lanes / raw
        );
    }
    println!("\n(one run; each row is the mean over the tenth of the records ending there)");
    Ok(())
}

// ---- driver: end to end --------------------------------------------------

struct DriverReading {
    commands_per_second: f64,
    events_per_command: f64,
    /// What the store saw during the measured windows.
    window: StatsReading,
    seconds: f64,
    latency: Histogram<u64>,
    /// The store and the raw file at the driver's batch, in turns with it.
    baselines: Option<Baselines>,
    /// Commands slower than [`SLOW_COMMAND`], measured or not: when each
    /// began (seconds from the writers' start) and how long it took.
    slow: Vec<(f64, f64)>,
}

struct Baselines {
    /// Events per record in the store baseline: the driver's batch, rounded.
    batch: usize,
    store_events_per_second: f64,
    raw_events_per_second: f64,
}

impl DriverReading {
    fn events_per_second(&self) -> f64 {
        self.commands_per_second * self.events_per_command
    }

    /// Events and bytes one batch held: what one sync covered under
    /// `sync`, one record otherwise.
    fn batch(&self, durability: Durability) -> (f64, f64) {
        batch_of(&self.window, durability)
    }

    /// Share of the windows the syncer thread spent inside `sync`.
    fn sync_busy(&self) -> f64 {
        self.window.sync_ns as f64 / 1e9 / self.seconds
    }
}

fn batch_of(window: &StatsReading, durability: Durability) -> (f64, f64) {
    let batches = if durability == Durability::Sync {
        window.syncs
    } else {
        window.records
    };
    let batches = batches.max(1) as f64;
    (
        window.events as f64 / batches,
        window.bytes as f64 / batches,
    )
}

struct DriverCase<'a> {
    workload: Workload,
    durability: Durability,
    writers: usize,
    writers_as: Writers,
    /// Measured windows, each followed by the baselines' turns.
    windows: u32,
    window: Duration,
    /// Each baseline's turn after a window; `None`: no baselines.
    baseline_turn: Option<Duration>,
    /// The workload's events, for the store baseline.
    baseline_events: &'a [Event],
    /// Snapshot every this many events.
    snapshot_every: Option<u64>,
    /// A folder holding a snapshot to start from.
    preload: Option<&'a Path>,
}

fn run_driver(root: &Path, case: &DriverCase) -> anyhow::Result<DriverReading> {
    let folder = scratch(root, "driver")?;
    let data = folder.path();
    let mut store = SledStore::open(data)?;
    let scheduler = match case.preload {
        Some(from) => {
            let (_, path) = snapshot::list(from)?
                .into_iter()
                .next()
                .context("the preload folder has no snapshot")?;
            let into = data.join("snapshots");
            fs::create_dir_all(&into)?;
            fs::copy(
                &path,
                into.join(path.file_name().context("a snapshot file name")?),
            )?;
            recover(
                data,
                &mut store,
                SchedulerConfig::default(),
                ReplayOptions::default(),
            )?
            .0
        }
        None => Scheduler::new(SchedulerConfig::default()),
    };
    let stats = Arc::new(StoreStats::default());
    let config = DriverConfig {
        durability: case.durability,
        snapshots: case.snapshot_every.map(|every_events| SnapshotPolicy {
            data: data.to_path_buf(),
            every_events,
            scheduler: SchedulerConfig::default(),
        }),
        // The cost of metrics on the writer and syncer: compare a run with
        // LANES_BENCH_METRICS=1 against one without.
        metrics: std::env::var_os("LANES_BENCH_METRICS")
            .map(|_| lanes::metrics::EngineMetrics::new()),
        ..DriverConfig::default()
    };
    let driver = Driver::start(
        scheduler,
        Box::new(CountingStore {
            inner: store,
            stats: stats.clone(),
        }),
        config,
        Box::new(()),
    );
    let handle = driver.handle();
    let outcome = drive(&handle, case, &stats, root);
    let stopped = driver.stop();
    let reading = outcome?;
    stopped.map_err(|error| anyhow!("stopping the driver: {error}"))?;
    Ok(reading)
}

/// Holds the writers between windows, so the baselines run on a quiet
/// machine. Open is the fast path: one atomic load per command.
#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    stopping: AtomicBool,
    lock: Mutex<()>,
    opened: Condvar,
    /// Wakes the writers that are tasks (a task must not block its worker).
    opened_tasks: tokio::sync::Notify,
}

impl Gate {
    /// Waits while the gate is closed; false once the run is over.
    fn pass(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            let mut guard = self.lock.lock().expect("the gate's lock");
            while self.closed.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire) {
                guard = self.opened.wait(guard).expect("the gate's lock");
            }
        }
        !self.stopping.load(Ordering::Acquire)
    }

    /// As [`Gate::pass`], for a task.
    async fn pass_task(&self) -> bool {
        loop {
            // Registered before the check, so an opening in between is not
            // missed.
            let opened = self.opened_tasks.notified();
            if !self.closed.load(Ordering::Acquire) || self.stopping.load(Ordering::Acquire) {
                return !self.stopping.load(Ordering::Acquire);
            }
            opened.await;
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn open(&self) {
        let _guard = self.lock.lock().expect("the gate's lock");
        self.closed.store(false, Ordering::Release);
        self.opened.notify_all();
        self.opened_tasks.notify_waiters();
    }

    fn stop(&self) {
        let _guard = self.lock.lock().expect("the gate's lock");
        self.stopping.store(true, Ordering::Release);
        self.opened.notify_all();
        self.opened_tasks.notify_waiters();
    }
}

/// A command this slow is listed, to tell a stall of the whole engine from
/// one unlucky command.
const SLOW_COMMAND: Duration = Duration::from_millis(100);
/// Slow commands listed per writer at most.
const SLOW_LISTED_MAX: usize = 1_000;

/// Longest wait for the commands in flight when the gate closes.
const DRAIN_WAIT_MAX: Duration = Duration::from_secs(30);

/// Registers one agent per writer with a standing request as large as its
/// slots, so every submitted job is dispatched at once.
fn register_agents(handle: &DriverHandle, agents: usize) -> anyhow::Result<()> {
    for i in 0..agents {
        let reply = handle
            .blocking_command(Command::RegisterAgent {
                name: format!("agent-{i:03}"),
                pools: vec![DEFAULT_POOL.to_string()],
                labels: Vec::new(),
                slots: AGENT_SLOTS_MAX,
                running: Vec::new(),
            })
            .map_err(|stopped| anyhow!("{stopped}"))?
            .map_err(|rejection| anyhow!("registering: {rejection}"))?;
        let Reply::Registered { agent } = reply else {
            bail!("registering answered {reply:?}");
        };
        handle
            .blocking_command(Command::TakeWork {
                agent,
                count: AGENT_SLOTS_MAX,
            })
            .map_err(|stopped| anyhow!("{stopped}"))?
            .map_err(|rejection| anyhow!("taking work: {rejection}"))?;
    }
    Ok(())
}

fn drive(
    handle: &DriverHandle,
    case: &DriverCase,
    stats: &StoreStats,
    root: &Path,
) -> anyhow::Result<DriverReading> {
    if case.workload == Workload::Dispatch16 {
        register_agents(handle, case.writers)?;
    }
    let last_seq = || {
        handle
            .blocking_read(|scheduler| scheduler.last_seq())
            .map_err(|stopped| anyhow!("{stopped}"))
    };
    let seq_before = last_seq()?;
    let gate = Arc::new(Gate::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicU64::new(0));
    let spec = run_spec(case.workload.jobs_per_command());
    let epoch = Instant::now();
    // Both kinds of writer count the same way; only the wait differs.
    let count = {
        let (in_flight, measuring) = (in_flight.clone(), measuring.clone());
        move |tally: &mut Tally, started: Instant, answer: Answer| -> anyhow::Result<()> {
            let elapsed = started.elapsed();
            in_flight.fetch_sub(1, Ordering::AcqRel);
            ensure!(submitted(answer), "a submission failed");
            tally.count(started - epoch, elapsed, measuring.load(Ordering::Relaxed));
            Ok(())
        }
    };
    let runtime = match case.writers_as {
        Writers::Threads => None,
        Writers::Tasks => Some(tokio::runtime::Runtime::new()?),
    };
    let writers: Vec<Box<dyn FnOnce() -> anyhow::Result<Tally>>> = (0..case.writers)
        .map(
            |_| -> anyhow::Result<Box<dyn FnOnce() -> anyhow::Result<Tally>>> {
                let (handle, gate, in_flight) = (handle.clone(), gate.clone(), in_flight.clone());
                let (spec, count) = (spec.clone(), count.clone());
                let mut tally = Tally::new()?;
                Ok(match &runtime {
                    None => {
                        let thread = std::thread::spawn(move || -> anyhow::Result<Tally> {
                            while gate.pass() {
                                in_flight.fetch_add(1, Ordering::AcqRel);
                                let started = Instant::now();
                                let answer =
                                    handle.blocking_command(Command::SubmitRun(spec.clone()));
                                count(&mut tally, started, answer)?;
                            }
                            Ok(tally)
                        });
                        Box::new(move || thread.join().map_err(|_| anyhow!("a writer panicked"))?)
                    }
                    Some(runtime) => {
                        let task = runtime.spawn(async move {
                            while gate.pass_task().await {
                                in_flight.fetch_add(1, Ordering::AcqRel);
                                let started = Instant::now();
                                let answer = handle.command(Command::SubmitRun(spec.clone())).await;
                                count(&mut tally, started, answer)?;
                            }
                            Ok::<_, anyhow::Error>(tally)
                        });
                        let runtime = runtime.handle().clone();
                        Box::new(move || runtime.block_on(task)?)
                    }
                })
            },
        )
        .collect::<anyhow::Result<_>>()?;
    let outcome = windows(case, stats, root, &gate, &measuring, &in_flight);
    gate.stop();
    let mut all = Tally::new()?;
    for writer in writers {
        all.add(writer()?)?;
    }
    let Tally {
        all,
        measured,
        latency,
        mut slow,
    } = all;
    slow.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (window, seconds, baselines) = outcome?;
    let seq_after = last_seq()?;
    let events_per_command = (seq_after - seq_before) as f64 / all.max(1) as f64;
    // Once the agents' slots are all taken, submissions stop dispatching
    // and the workload is another one: refuse the reading.
    ensure!(
        case.workload != Workload::Dispatch16 || events_per_command > 16.99,
        "dispatch16 made {events_per_command:.2} events per command, not 17: the agents' \
         {} slots ran out; shorten --driver-seconds",
        grouped((AGENT_SLOTS_MAX as usize * case.writers) as f64)
    );
    Ok(DriverReading {
        commands_per_second: measured as f64 / seconds,
        events_per_command,
        window,
        seconds,
        latency,
        baselines,
        slow,
    })
}

/// What a driver command comes back as.
type Answer = Result<Result<Reply, lanes::sched::Rejection>, lanes::driver::Stopped>;

/// What a writer counted.
struct Tally {
    /// Commands answered.
    all: u64,
    /// Commands answered while measuring, and their latency.
    measured: u64,
    latency: Histogram<u64>,
    /// Commands of at least [`SLOW_COMMAND`]: when each began (seconds
    /// from the start) and how long it took (ms).
    slow: Vec<(f64, f64)>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            all: 0,
            measured: 0,
            latency: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)?,
            slow: Vec::new(),
        })
    }

    fn count(&mut self, began: Duration, elapsed: Duration, measuring: bool) {
        self.all += 1;
        if elapsed >= SLOW_COMMAND && self.slow.len() < SLOW_LISTED_MAX {
            self.slow
                .push((began.as_secs_f64(), elapsed.as_secs_f64() * 1e3));
        }
        if measuring {
            self.measured += 1;
            self.latency.saturating_record(elapsed.as_nanos() as u64);
        }
    }

    fn add(&mut self, other: Tally) -> anyhow::Result<()> {
        self.all += other.all;
        self.measured += other.measured;
        self.latency.add(other.latency)?;
        self.slow.extend(other.slow);
        Ok(())
    }
}

/// Slow commands grouped into episodes (those that overlap in time): how
/// many, and for each its start, its longest command and its commands.
fn stalls(slow: &[(f64, f64)]) -> Vec<(f64, f64, usize)> {
    let mut episodes: Vec<(f64, f64, usize)> = Vec::new();
    let mut end = f64::NEG_INFINITY;
    for &(start, ms) in slow {
        match episodes.last_mut() {
            Some(episode) if start <= end => {
                episode.1 = episode.1.max(ms);
                episode.2 += 1;
            }
            _ => episodes.push((start, ms, 1)),
        }
        end = end.max(start + ms / 1e3);
    }
    episodes
}

/// The measured windows, and the baselines' turns between them.
fn windows(
    case: &DriverCase,
    stats: &StoreStats,
    root: &Path,
    gate: &Gate,
    measuring: &AtomicBool,
    in_flight: &AtomicU64,
) -> anyhow::Result<(StatsReading, f64, Option<Baselines>)> {
    // A warm-up window; its second half gives the batch the baselines use.
    std::thread::sleep(case.window / 2);
    let calibration = stats.read();
    std::thread::sleep(case.window / 2);
    let (events_per_batch, bytes_per_batch) =
        batch_of(&(stats.read() - calibration), case.durability);
    let mut lanes = Vec::new();
    if case.baseline_turn.is_some() {
        let sync = case.durability == Durability::Sync;
        let batch = (events_per_batch.round() as usize).clamp(1, 16_384);
        let (store, raw) = if sync {
            (Sink::LanesSync, Sink::RawSync)
        } else {
            (Sink::LanesNone, Sink::RawNone)
        };
        lanes.push(Lane::open(
            store,
            Template::new(case.baseline_events, batch),
            root,
        )?);
        lanes.push(Lane::open(
            raw,
            Template::bytes(bytes_per_batch.round() as usize, events_per_batch),
            root,
        )?);
    }
    let mut total = StatsReading::default();
    let mut seconds = 0.0;
    for window in 0..case.windows as usize {
        gate.open();
        let before = stats.read();
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        std::thread::sleep(case.window);
        measuring.store(false, Ordering::Relaxed);
        seconds += started.elapsed().as_secs_f64();
        total = total + (stats.read() - before);
        let Some(turn) = case.baseline_turn else {
            continue;
        };
        gate.close();
        let draining = Instant::now();
        while in_flight.load(Ordering::Acquire) > 0 {
            ensure!(
                draining.elapsed() < DRAIN_WAIT_MAX,
                "commands still in flight after {DRAIN_WAIT_MAX:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        for k in 0..lanes.len() {
            let index = (k + window) % lanes.len();
            lanes[index].run_for(turn, true)?;
        }
    }
    let baselines = if lanes.is_empty() {
        None
    } else {
        let raw = lanes.pop().expect("the raw lane");
        let store = lanes.pop().expect("the store lane");
        let batch = store.template.batches[0].len();
        let store_events_per_second = store.events_per_second();
        let raw_events_per_second = raw.events_per_second();
        store.finish()?;
        raw.finish()?;
        Some(Baselines {
            batch,
            store_events_per_second,
            raw_events_per_second,
        })
    };
    Ok((total, seconds, baselines))
}

/// The workload's events, as a scheduler makes them, for the store-level
/// baseline at the driver's batch size.
fn workload_events(workload: Workload, agents: usize, count: usize) -> anyhow::Result<Vec<Event>> {
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    let mut events = Vec::new();
    let mut handle = |command: Command, events: &mut Vec<Event>| {
        scheduler
            .handle(command, 1, events)
            .map_err(|rejection| anyhow!("rejected: {rejection}"))
    };
    if workload == Workload::Dispatch16 {
        for i in 0..agents {
            let reply = handle(
                Command::RegisterAgent {
                    name: format!("agent-{i:03}"),
                    pools: vec![DEFAULT_POOL.to_string()],
                    labels: Vec::new(),
                    slots: AGENT_SLOTS_MAX,
                    running: Vec::new(),
                },
                &mut events,
            )?;
            let Reply::Registered { agent } = reply else {
                bail!("registering answered {reply:?}");
            };
            handle(
                Command::TakeWork {
                    agent,
                    count: AGENT_SLOTS_MAX,
                },
                &mut events,
            )?;
        }
        events.clear();
    }
    let spec = run_spec(workload.jobs_per_command());
    while events.len() < count {
        handle(Command::SubmitRun(spec.clone()), &mut events)?;
    }
    events.truncate(count);
    Ok(events)
}

fn section_driver(options: &Options) -> anyhow::Result<()> {
    println!(
        "\n== driver: {} writers ({}), each submitting (SubmitRun) in a loop ==",
        options.writers,
        options
            .writers_as
            .iter()
            .map(|kind| kind.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let windows = DRIVER_WINDOWS;
    let window = Duration::from_secs_f64(options.driver_seconds) / windows;
    struct Row {
        workload: Workload,
        durability: Durability,
        writers_as: Writers,
        commands: Vec<f64>,
        events: Vec<f64>,
        events_per_command: f64,
        events_per_batch: Vec<f64>,
        bytes_per_batch: Vec<f64>,
        sync_busy: Vec<f64>,
        store_ratio: Vec<f64>,
        raw_ratio: Vec<f64>,
        p50_ms: Vec<f64>,
        p99_ms: Vec<f64>,
    }
    let mut rows = Vec::new();
    for &workload in &options.workloads {
        let events = workload_events(workload, options.writers, 16_384 * 4)?;
        for (&durability, &writers_as) in options
            .durabilities
            .iter()
            .flat_map(|d| options.writers_as.iter().map(move |w| (d, w)))
        {
            println!(
                "\n-- {} ({} jobs, {} per command), {}, writers as {} (load {}) --",
                workload.name(),
                workload.jobs_per_command(),
                if workload == Workload::Dispatch16 {
                    "17 events"
                } else {
                    "1 event"
                },
                durability_name(durability),
                writers_as.name(),
                load_average()
            );
            let mut row = Row {
                workload,
                durability,
                writers_as,
                commands: Vec::new(),
                events: Vec::new(),
                events_per_command: 0.0,
                events_per_batch: Vec::new(),
                bytes_per_batch: Vec::new(),
                sync_busy: Vec::new(),
                store_ratio: Vec::new(),
                raw_ratio: Vec::new(),
                p50_ms: Vec::new(),
                p99_ms: Vec::new(),
            };
            for run in 1..=options.runs {
                let case = DriverCase {
                    workload,
                    durability,
                    writers: options.writers,
                    writers_as,
                    windows,
                    window,
                    baseline_turn: Some(window / 2),
                    baseline_events: &events,
                    snapshot_every: None,
                    preload: None,
                };
                let reading = run_driver(&options.dir, &case)?;
                let baselines = reading.baselines.as_ref().context("baselines")?;
                let (events_per_batch, bytes_per_batch) = reading.batch(durability);
                let ms = |q: f64| reading.latency.value_at_quantile(q) as f64 / 1e6;
                println!(
                    "run {run}: {:>10} commands/s {:>12} events/s ({:.2} events/command); \
                     {:.1} events and {} bytes per {}; syncer busy {:.0} %; \
                     p50 {:.2} ms p99 {:.2} ms; store at {}/record {} events/s; \
                     raw file {} events/s",
                    grouped(reading.commands_per_second),
                    grouped(reading.events_per_second()),
                    reading.events_per_command,
                    events_per_batch,
                    grouped(bytes_per_batch),
                    if durability == Durability::Sync {
                        "sync"
                    } else {
                        "record"
                    },
                    reading.sync_busy() * 100.0,
                    ms(0.5),
                    ms(0.99),
                    baselines.batch,
                    grouped(baselines.store_events_per_second),
                    grouped(baselines.raw_events_per_second)
                );
                row.commands.push(reading.commands_per_second);
                row.events.push(reading.events_per_second());
                row.events_per_command = reading.events_per_command;
                row.events_per_batch.push(events_per_batch);
                row.bytes_per_batch.push(bytes_per_batch);
                row.sync_busy.push(reading.sync_busy());
                row.store_ratio
                    .push(reading.events_per_second() / baselines.store_events_per_second);
                row.raw_ratio
                    .push(reading.events_per_second() / baselines.raw_events_per_second);
                row.p50_ms.push(ms(0.5));
                row.p99_ms.push(ms(0.99));
            }
            rows.push(row);
        }
    }
    println!(
        "\n| workload | durability | writers | commands/s | events/s | events/command | events/batch \
         | bytes/batch | syncer busy | driver/store | driver/raw | p50 ms | p99 ms |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.1} | {} | {:.0} % | {:.2} | {:.2} | {:.2} | {:.2} |",
            row.workload.name(),
            durability_name(row.durability),
            row.writers_as.name(),
            grouped(median(&row.commands)),
            grouped(median(&row.events)),
            row.events_per_command,
            median(&row.events_per_batch),
            grouped(median(&row.bytes_per_batch)),
            median(&row.sync_busy) * 100.0,
            median(&row.store_ratio),
            median(&row.raw_ratio),
            median(&row.p50_ms),
            median(&row.p99_ms),
        );
    }
    println!(
        "\n(median of {} runs of {} s; a batch is what one sync covered (sync) or one record \
         (none); driver/store and driver/raw compare with the store and the raw file at that \
         batch, measured right after each run)",
        options.runs, options.driver_seconds
    );
    for row in rows.iter().filter(|row| row.durability == Durability::Sync) {
        let events = median(&row.events);
        println!(
            "target >= {} events/s with {} writers ({}, {}, sync): {}: {} ({:.2}x the target)",
            grouped(DRIVER_EVENTS_PER_SECOND_MIN),
            options.writers,
            row.writers_as.name(),
            row.workload.name(),
            grouped(events),
            verdict(events >= DRIVER_EVENTS_PER_SECOND_MIN),
            events / DRIVER_EVENTS_PER_SECOND_MIN
        );
        let ratio = median(&row.raw_ratio);
        println!(
            "target within {RAW_SLOWDOWN_MAX}x of the raw file at the same batch ({}, {}, sync): \
             {ratio:.2}: {}",
            row.writers_as.name(),
            row.workload.name(),
            verdict(ratio * RAW_SLOWDOWN_MAX >= 1.0)
        );
    }
    Ok(())
}

// ---- replay ----------------------------------------------------------------

struct BuiltLog {
    events: u64,
    records: u64,
    record_bytes: u64,
    build_seconds: f64,
    jobs: u64,
}

/// Writes `count` events of generated traffic as records of
/// [`BUILD_RECORD_EVENTS`] into a SledStore in `data` (and the same bytes
/// into `raw.log`), without syncing until the end, then one sync.
fn build_log(
    data: &Path,
    start: Scheduler,
    count: u64,
    run_jobs: u32,
    slots: u32,
) -> anyhow::Result<BuiltLog> {
    let started = Instant::now();
    let first_seq = start.last_seq() + 1;
    let mut store = SledStore::open(data)?;
    let mut syncer = store.syncer();
    let mut raw = File::create(data.join("raw.log"))?;
    let mut pending = Vec::new();
    let mut traffic = Traffic::new(start, run_jobs, slots, &mut pending)?;
    let mut written = 0u64;
    let mut records = 0u64;
    let mut record_bytes = 0u64;
    while written < count {
        let want = BUILD_RECORD_EVENTS.min((count - written) as usize);
        traffic.fill(&mut pending, want)?;
        let record = format::encode(&pending[..want]);
        ensure!(pending[0].seq == first_seq + written, "the log is gap-free");
        store.write(pending[0].seq, &record)?;
        raw.write_all(&record)?;
        pending.drain(..want);
        written += want as u64;
        records += 1;
        record_bytes += record.len() as u64;
    }
    sync_retrying(syncer.as_mut())?;
    raw.sync_data()?;
    let jobs = traffic.jobs_submitted;
    drop(traffic);
    Ok(BuiltLog {
        events: written,
        records,
        record_bytes,
        build_seconds: started.elapsed().as_secs_f64(),
        jobs,
    })
}

/// One pass over a built log: seconds, and the events it saw.
fn replay_pass(data: &Path, pass: Pass, expected: u64) -> anyhow::Result<(f64, f64)> {
    if pass == Pass::RecoverCold {
        evict(data)?;
    }
    let opening = Instant::now();
    if pass == Pass::RawDecode {
        let started = Instant::now();
        let mut file =
            std::io::BufReader::with_capacity(1 << 20, File::open(data.join("raw.log"))?);
        let mut record = Vec::new();
        let mut header = [0u8; format::HEADER_LEN];
        let mut events = 0u64;
        loop {
            match file.read_exact(&mut header) {
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
                result => result?,
            }
            let payload = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes")) as usize;
            record.clear();
            record.extend_from_slice(&header);
            record.resize(format::HEADER_LEN + payload, 0);
            file.read_exact(&mut record[format::HEADER_LEN..])?;
            let (header, decoded) = format::decode(&record)
                .map_err(|error| anyhow!("decoding the raw file: {error}"))?;
            ensure!(decoded.len() == header.count as usize);
            events += decoded.len() as u64;
        }
        ensure!(events == expected, "the raw file held {events} events");
        return Ok((0.0, started.elapsed().as_secs_f64()));
    }
    let mut store = SledStore::open(data)?;
    let open_seconds = opening.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut events = 0u64;
    match pass {
        Pass::Scan => {
            let mut bytes = 0u64;
            store.scan(0, &mut |_, record| {
                bytes += record.len() as u64;
                events += u64::from(u32::from_le_bytes(
                    record[16..20].try_into().expect("4 bytes"),
                ));
                true
            })?;
            std::hint::black_box(bytes);
        }
        Pass::ScanDecode => {
            let mut failure = None;
            store.scan(0, &mut |_, record| match format::decode(record) {
                Ok((_, decoded)) => {
                    events += decoded.len() as u64;
                    true
                }
                Err(error) => {
                    failure = Some(error);
                    false
                }
            })?;
            if let Some(error) = failure {
                bail!("decoding: {error}");
            }
        }
        Pass::Recover | Pass::RecoverCold => {
            count_allocations(true);
            let bytes_before = bytes_current();
            let (scheduler, report) = recover(
                data,
                &mut store,
                SchedulerConfig::default(),
                ReplayOptions::default(),
            )?;
            let seconds = started.elapsed().as_secs_f64();
            ensure!(report.replay.torn_tail.is_none() && report.replay.repaired.is_none());
            ensure!(
                scheduler.last_seq() == expected,
                "replayed to {}",
                scheduler.last_seq()
            );
            let state_bytes = bytes_current().wrapping_sub(bytes_before);
            count_allocations(false);
            drop(scheduler);
            if pass == Pass::Recover {
                println!(
                    "    recovered state: {:.1} MB allocated, {:.1} bytes per event replayed",
                    state_bytes as f64 / 1e6,
                    state_bytes as f64 / expected as f64
                );
            }
            return Ok((open_seconds, seconds));
        }
        Pass::RawDecode => unreachable!("handled above"),
    }
    ensure!(
        events == expected,
        "the pass saw {events} events, not {expected}"
    );
    Ok((open_seconds, started.elapsed().as_secs_f64()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// The raw file read whole, every record decoded: the physical
    /// reference for reading.
    RawDecode,
    /// sled's iteration alone.
    Scan,
    /// sled's iteration and `format::decode` of every record.
    ScanDecode,
    /// `recover` into a fresh scheduler: scan, decode, apply.
    Recover,
    /// As `Recover`, after dropping the log's files from the page cache.
    RecoverCold,
}

impl Pass {
    const ALL: [Pass; 5] = [
        Pass::RawDecode,
        Pass::Scan,
        Pass::ScanDecode,
        Pass::Recover,
        Pass::RecoverCold,
    ];

    fn name(self) -> &'static str {
        match self {
            Pass::RawDecode => "raw file read + decode",
            Pass::Scan => "sled scan",
            Pass::ScanDecode => "sled scan + decode",
            Pass::Recover => "recover (warm cache)",
            Pass::RecoverCold => "recover (cold cache)",
        }
    }
}

fn section_replay(options: &Options) -> anyhow::Result<()> {
    println!(
        "\n== replay: recover from a log of generated traffic (runs of {} jobs: submit, \
         dispatch, complete), records of {BUILD_RECORD_EVENTS} events ==",
        options.run_jobs
    );
    let mut rows = Vec::new();
    for &count in &options.replay_events {
        let folder = scratch(&options.dir, "replay")?;
        let data = folder.path();
        let built = build_log(
            data,
            Scheduler::new(SchedulerConfig::default()),
            count,
            options.run_jobs,
            1_000,
        )?;
        let raw_bytes = fs::metadata(data.join("raw.log"))?.len();
        let (apparent, allocated) = disk_usage(&data.join("log"))?;
        let sled_size = {
            let store = SledStore::open(data)?;
            store.size_on_disk()
        };
        println!(
            "\n-- {} events ({} records, {} jobs) built in {:.1} s; record bytes {:.1}/event; \
             raw file {:.1} bytes/event; sled size_on_disk {:.1} bytes/event, files {:.1} \
             apparent, {:.1} allocated (load {}) --",
            grouped(built.events as f64),
            grouped(built.records as f64),
            grouped(built.jobs as f64),
            built.build_seconds,
            built.record_bytes as f64 / built.events as f64,
            raw_bytes as f64 / built.events as f64,
            sled_size as f64 / built.events as f64,
            apparent as f64 / built.events as f64,
            allocated as f64 / built.events as f64,
            load_average()
        );
        let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); Pass::ALL.len()];
        let mut opens: Vec<f64> = Vec::new();
        for run in 1..=options.replay_runs {
            for (index, &pass) in Pass::ALL.iter().enumerate() {
                let (open, took) = replay_pass(data, pass, built.events)?;
                println!(
                    "run {run}: {:<24} {:>8.3} s {:>12} events/s{}",
                    pass.name(),
                    took,
                    grouped(built.events as f64 / took),
                    if pass == Pass::RawDecode {
                        String::new()
                    } else {
                        format!(" (open {open:.3} s)")
                    }
                );
                seconds[index].push(took);
                if pass == Pass::Recover {
                    opens.push(open);
                }
            }
        }
        rows.push((
            built,
            raw_bytes,
            sled_size,
            allocated,
            seconds,
            median(&opens),
        ));
    }
    println!(
        "\n| events | raw read+decode ev/s | sled scan ev/s | scan+decode ev/s | recover ev/s (warm) \
         | recover/raw | recover ev/s (cold) | sled open s | raw bytes/event | sled bytes/event (size_on_disk) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut slowest = f64::INFINITY;
    for (built, raw_bytes, sled_size, _, seconds, open) in &rows {
        let rate = |pass: Pass| {
            let index = Pass::ALL.iter().position(|&p| p == pass).expect("a pass");
            built.events as f64 / median(&seconds[index])
        };
        slowest = slowest.min(rate(Pass::Recover));
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {} | {open:.3} | {:.1} | {:.1} |",
            grouped(built.events as f64),
            grouped(rate(Pass::RawDecode)),
            grouped(rate(Pass::Scan)),
            grouped(rate(Pass::ScanDecode)),
            grouped(rate(Pass::Recover)),
            rate(Pass::Recover) / rate(Pass::RawDecode),
            grouped(rate(Pass::RecoverCold)),
            *raw_bytes as f64 / built.events as f64,
            *sled_size as f64 / built.events as f64,
        );
    }
    println!(
        "\n(median of {} runs; recover/raw is recover (warm) over raw read + decode)",
        options.replay_runs
    );
    println!(
        "target >= {} events/s replayed: slowest median {}: {}",
        grouped(REPLAY_EVENTS_PER_SECOND_MIN),
        grouped(slowest),
        verdict(slowest >= REPLAY_EVENTS_PER_SECOND_MIN)
    );
    Ok(())
}

// ---- start-up from a snapshot ----------------------------------------------

fn section_startup(options: &Options) -> anyhow::Result<()> {
    println!(
        "\n== start-up: a snapshot of {} waiting jobs plus a log tail of {} events ==",
        grouped(options.snapshot_jobs as f64),
        grouped(options.tail_events as f64)
    );
    let folder = scratch(&options.dir, "startup")?;
    let data = folder.path();
    let scheduler = waiting_state(options.snapshot_jobs)?;
    // The image and its write, several times (the same sequence each time:
    // each write replaces the last).
    let (mut images, mut writes, mut path) = (Vec::new(), Vec::new(), PathBuf::new());
    for _ in 0..options.replay_runs {
        let started = Instant::now();
        let image = scheduler.image();
        images.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        path = snapshot::write(data, image)?;
        writes.push(started.elapsed().as_secs_f64());
    }
    let (image_seconds, write_seconds) = (median(&images), median(&writes));
    let snapshot_bytes = fs::metadata(&path)?.len();
    println!(
        "snapshot at sequence {}: image {:.3} s, write (encode + write + fsync) {:.3} s, \
         {:.1} MB ({:.1} bytes per job)",
        scheduler.last_seq(),
        image_seconds,
        write_seconds,
        snapshot_bytes as f64 / 1e6,
        snapshot_bytes as f64 / options.snapshot_jobs as f64
    );
    // The tail: an agent with 10 slots works through the waiting jobs while
    // new runs arrive behind them.
    let built = build_log(data, scheduler, options.tail_events, options.run_jobs, 10)?;
    fs::remove_file(data.join("raw.log"))?;
    let (mut warm, mut cold, mut opens, mut steps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=options.replay_runs {
        for is_cold in [false, true] {
            if is_cold {
                evict(data)?;
            }
            let started = Instant::now();
            let mut store = SledStore::open(data)?;
            let open = started.elapsed().as_secs_f64();
            let (scheduler, report) = recover(
                data,
                &mut store,
                SchedulerConfig::default(),
                ReplayOptions::default(),
            )?;
            let total = started.elapsed().as_secs_f64();
            ensure!(
                report.snapshot.is_some(),
                "recover did not use the snapshot"
            );
            ensure!(
                report.replay.events == built.events,
                "replayed {:?}",
                report.replay
            );
            drop(scheduler);
            drop(store);
            println!(
                "run {run}: {} cache: open + recover {total:.3} s (sled open {open:.3} s)",
                if is_cold { "cold" } else { "warm" }
            );
            if is_cold {
                cold.push(total);
            } else {
                warm.push(total);
                opens.push(open);
            }
        }
        // The same steps one by one: the snapshot read, the state built
        // from it, the log opened, the tail replayed.
        let started = Instant::now();
        let image = snapshot::read(&path)?;
        let read = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut scheduler = Scheduler::from_image(SchedulerConfig::default(), image)
            .map_err(|error| anyhow!("{error}"))?;
        let build = started.elapsed().as_secs_f64();
        let mut store = SledStore::open(data)?;
        let started = Instant::now();
        let report = lanes::replay::replay(&mut scheduler, &mut store, ReplayOptions::default())?;
        let tail = started.elapsed().as_secs_f64();
        ensure!(report.events == built.events, "replayed {report:?}");
        steps.push((read, build, tail));
        drop(scheduler);
    }
    let step =
        |pick: fn(&(f64, f64, f64)) -> f64| median(&steps.iter().map(pick).collect::<Vec<_>>());
    let (read, build, tail) = (step(|s| s.0), step(|s| s.1), step(|s| s.2));
    println!(
        "\n| jobs in snapshot | snapshot MB | image s | snapshot write s | tail events \
         | start-up s (warm) | start-up s (cold) | snapshot read s | from_image s | sled open s \
         | tail replay s | tail events/s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.1} | {image_seconds:.3} | {write_seconds:.3} | {} | {:.3} | {:.3} | {read:.3} \
         | {build:.3} | {:.3} | {tail:.3} | {} |",
        grouped(options.snapshot_jobs as f64),
        snapshot_bytes as f64 / 1e6,
        grouped(built.events as f64),
        median(&warm),
        median(&cold),
        median(&opens),
        grouped(built.events as f64 / tail)
    );
    println!(
        "\n(median of {} runs; start-up = SledStore::open + recover; the steps after it \
         measured one by one, warm cache)",
        options.replay_runs
    );
    Ok(())
}

// ---- latency while snapshots are taken --------------------------------------

fn section_latency(options: &Options) -> anyhow::Result<()> {
    println!(
        "\n== latency: {} writers, one-job runs, from {} waiting jobs; snapshots every {} \
         events (once the log has outgrown the last snapshot, as lanes serve takes them) \
         vs none ==",
        options.writers,
        grouped(options.latency_jobs as f64),
        grouped(options.snapshot_every as f64)
    );
    let preload = scratch(&options.dir, "preload")?;
    let scheduler = waiting_state(options.latency_jobs)?;
    snapshot::write(preload.path(), scheduler.image())?;
    drop(scheduler);
    let mut rows: Vec<(Durability, bool, Vec<DriverReading>)> = Vec::new();
    for &durability in &options.latency_durabilities {
        for with_snapshots in [false, true] {
            rows.push((durability, with_snapshots, Vec::new()));
        }
    }
    for run in 1..=options.latency_runs {
        for (durability, with_snapshots, readings) in rows.iter_mut() {
            let case = DriverCase {
                workload: Workload::OneJob,
                durability: *durability,
                writers: options.writers,
                writers_as: Writers::Threads,
                windows: 1,
                window: Duration::from_secs_f64(options.latency_seconds),
                baseline_turn: None,
                baseline_events: &[],
                snapshot_every: with_snapshots.then_some(options.snapshot_every),
                preload: Some(preload.path()),
            };
            let reading = run_driver(&options.dir, &case)?;
            let ms = |q: f64| reading.latency.value_at_quantile(q) as f64 / 1e6;
            let syncs = reading.window.syncs.max(1) as f64;
            println!(
                "run {run}: {}, snapshots {:<3} {:>9} commands/s p50 {:.2} ms p99 {:.2} ms \
                 p99.9 {:.2} ms max {:.2} ms; {} snapshots finished; {:.0} syncs/s of {:.2} ms \
                 (load {})",
                durability_name(*durability),
                if *with_snapshots { "on" } else { "off" },
                grouped(reading.commands_per_second),
                ms(0.5),
                ms(0.99),
                ms(0.999),
                reading.latency.max() as f64 / 1e6,
                reading.window.trims,
                reading.window.syncs as f64 / reading.seconds,
                reading.window.sync_ns as f64 / 1e6 / syncs,
                load_average()
            );
            let episodes = stalls(&reading.slow);
            if !episodes.is_empty() {
                let listed: Vec<String> = episodes
                    .iter()
                    .map(|(start, ms, count)| format!("{count} at {start:.1} s up to {ms:.0} ms"))
                    .collect();
                println!(
                    "    commands over {} ms (warm-up included), by episode: {}",
                    SLOW_COMMAND.as_millis(),
                    listed.join("; ")
                );
            }
            readings.push(reading);
        }
    }
    println!(
        "\n| durability | snapshots | commands/s | p50 ms | p99 ms | p99.9 ms | max ms (median run) \
         | max ms (worst run) | snapshots finished per run |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (durability, with_snapshots, readings) in &rows {
        let of_runs = |value: &dyn Fn(&DriverReading) -> f64| {
            median(&readings.iter().map(value).collect::<Vec<_>>())
        };
        let quantile = |q: f64| of_runs(&|r| r.latency.value_at_quantile(q) as f64 / 1e6);
        let worst = readings
            .iter()
            .map(|r| r.latency.max() as f64 / 1e6)
            .fold(0.0, f64::max);
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {worst:.2} | {} |",
            durability_name(*durability),
            if *with_snapshots {
                format!("every {} events", grouped(options.snapshot_every as f64))
            } else {
                "off".to_string()
            },
            grouped(of_runs(&|r| r.commands_per_second)),
            quantile(0.5),
            quantile(0.99),
            quantile(0.999),
            of_runs(&|r| r.latency.max() as f64 / 1e6),
            of_runs(&|r| r.window.trims as f64),
        );
    }
    println!(
        "\n(median over {} runs of {} s each, the four cases in turn; quantiles in ms)",
        options.latency_runs, options.latency_seconds
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    // The memory settings of `lanes serve`, so replay and start-up are
    // measured as the engine runs them.
    lanes::allocator::tune_for_latency()?;
    // Counted only where a figure needs it (the recovered state's size):
    // elsewhere the counters' shared atomics would slow every thread.
    count_allocations(false);
    fs::create_dir_all(&options.dir)?;
    let dir = options.dir.canonicalize()?;
    let options = Options { dir, ..options };
    println!(
        "durable log benchmarks: data under {} ({}); {} CPUs; load average {}",
        options.dir.display(),
        filesystem(&options.dir),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    if filesystem(&options.dir).contains("tmpfs") {
        println!("WARNING: a tmpfs: fsync costs nothing there, the sync figures mean nothing");
    }
    let started = Instant::now();
    for section in Section::ALL {
        if !options.sections.contains(&section) {
            continue;
        }
        let retried_before = SYNCS_RETRIED.load(Ordering::Relaxed);
        match section {
            Section::Append => section_append(&options)?,
            Section::Growth => section_growth(&options)?,
            Section::Driver => section_driver(&options)?,
            Section::Replay => section_replay(&options)?,
            Section::Startup => section_startup(&options)?,
            Section::Latency => section_latency(&options)?,
        }
        let retried = SYNCS_RETRIED.load(Ordering::Relaxed) - retried_before;
        if retried > 0 {
            println!(
                "\nNOTE: {retried} syncs in this section failed because a file of sled's \
                 vanished while the syncer walked the folder; the benchmark retried them \
                 (the engine would have stopped)"
            );
        }
    }
    println!(
        "\ndone in {:.0} s; load average {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    println!(
        "syncs that failed because a sled file vanished during the fdatasync walk, and were \
         retried: {}",
        SYNCS_RETRIED.load(Ordering::Relaxed)
    );
    Ok(())
}
