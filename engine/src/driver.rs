//! The single writer: the one thread that owns the scheduler. It drains the
//! bounded request channel in batches, applies each command, writes the
//! batch's events to the log as records, and hands the batch to the syncer
//! thread, which makes it durable and only then answers the requests and
//! publishes the events (dispatches, stop requests).
//!
//! While the syncer makes one batch durable, the writer fills the next: the
//! hand-over channel holds one batch, so at most one batch syncs, one waits
//! and one fills. A failed write or sync stops the engine (fail-stop): no
//! answer of the failed batch or any later one is ever sent, and the sync is
//! never retried.
//!
//! Reads (queries) travel the same path, so an answer never shows state
//! that is not yet durable.
//!
//! *Architecture invariant:* nothing leaves the engine (answer, dispatch)
//! before the record holding its events is durable under the chosen
//! durability; records are written in the order events were applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::log::format;
use crate::log::store::{LogStore, StoreError, Syncer};
use crate::model::{AgentId, JobId, Pair, RunId, Seq, StopReason, TimeMs};
use crate::replay::take_snapshot;
use crate::sched::view::JobStatus;
use crate::sched::{
    Command, Event, EventKind, Rejection, Reply, Retention, Scheduler, SchedulerConfig,
};

/// What "acknowledged" promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged means on stable storage. The default.
    Sync,
    /// Acknowledged once written; made durable at most this often. A crash
    /// can lose the last interval of acknowledged work.
    Interval(Duration),
    /// Never synced by Lanes (benchmarks). A crash can lose anything the
    /// operating system had not written yet.
    None,
}

pub type Clock = Arc<dyn Fn() -> TimeMs + Send + Sync>;

/// The wall clock, in milliseconds since the Unix epoch.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as TimeMs)
            .unwrap_or(0)
    })
}

#[derive(Clone)]
pub struct DriverConfig {
    pub durability: Durability,
    /// Requests waiting for the writer; a full channel makes senders wait
    /// (back-pressure instead of unbounded memory).
    pub requests_max: usize,
    /// Most commands one batch takes, so a batch's answers are not held
    /// back for long by a flood.
    pub batch_commands_max: usize,
    /// Most events in one record: bounds a record's size.
    pub record_events_max: usize,
    /// How often the writer processes timers (leases, timeouts).
    pub tick_interval: Duration,
    pub clock: Clock,
    /// Snapshots, taken off the dispatch path; `None` keeps every record.
    pub snapshots: Option<SnapshotPolicy>,
    /// How much finished work is kept; `None`: all of it, forever.
    pub retention: Option<Retention>,
    /// What watchers follow; `None`: nobody ever watches.
    pub watched: Option<Arc<Watched>>,
    /// Where the writer and syncer record metrics; `None`: nowhere.
    pub metrics: Option<Arc<crate::metrics::EngineMetrics>>,
}

/// When to snapshot, and where.
#[derive(Clone, Debug)]
pub struct SnapshotPolicy {
    /// The data folder (snapshots go to its `snapshots/`).
    pub data: std::path::PathBuf,
    /// Snapshot once this many events became durable since the last one.
    pub every_events: u64,
    pub scheduler: SchedulerConfig,
}

impl Default for DriverConfig {
    fn default() -> DriverConfig {
        DriverConfig {
            durability: Durability::Sync,
            requests_max: 65_536,
            batch_commands_max: 8_192,
            record_events_max: 16_384,
            tick_interval: Duration::from_millis(100),
            clock: system_clock(),
            snapshots: None,
            retention: Some(Retention::default()),
            watched: None,
            metrics: None,
        }
    }
}

/// Runs after the batch it belongs to is durable.
pub type Delivery = Box<dyn FnOnce() + Send>;

pub enum Request {
    Command {
        command: Command,
        reply: oneshot::Sender<Result<Reply, Rejection>>,
    },
    /// A read of the state; what it returns is delivered after the batch.
    Read(Box<dyn FnOnce(&Scheduler) -> Delivery + Send>),
    /// Stop taking requests: those already queued are still handled, later
    /// ones are refused ([`Stopped`]), even while handles remain.
    Shutdown,
}

/// Receives every event, in order, once it is durable: the server turns
/// dispatches and stop requests into messages to agents.
pub trait Publisher: Send + 'static {
    fn publish(&mut self, events: &[Event], notices: &[Notice]);
}

impl Publisher for () {
    fn publish(&mut self, _events: &[Event], _notices: &[Notice]) {}
}

/// What agents must hear of a batch. Built by the writer, which holds the
/// state (the events name only ids), and delivered by the syncer once the
/// batch is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A job for an agent, with everything it needs to run it.
    Dispatch {
        agent: AgentId,
        job: JobId,
        run: RunId,
        attempt: u32,
        queue: String,
        priority: i32,
        tags: Vec<Pair>,
        payload: Vec<u8>,
    },
    /// An agent must stop a job (cancelled, or past its deadline).
    Stop {
        agent: AgentId,
        job: JobId,
        attempt: u32,
        reason: StopReason,
    },
    /// A watched job (or a job of a watched run) changed.
    JobChanged {
        job: JobId,
        run: RunId,
        attempt: u32,
        status: JobStatus,
        run_finished: bool,
    },
}

/// The jobs and runs someone watches, counted per watcher. The writer reads
/// it only when jobs changed and the count says someone watches.
#[derive(Debug, Default)]
pub struct Watched {
    count: AtomicUsize,
    targets: RwLock<WatchedTargets>,
}

#[derive(Debug, Default)]
struct WatchedTargets {
    jobs: HashMap<JobId, u32>,
    runs: HashMap<RunId, u32>,
}

fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: K) {
    if let Some(count) = map.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            map.remove(&key);
        }
    }
}

impl Watched {
    pub fn add(&self, job: Option<JobId>, run: Option<RunId>) {
        let mut targets = self.targets.write().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = job {
            *targets.jobs.entry(job).or_default() += 1;
        }
        if let Some(run) = run {
            *targets.runs.entry(run).or_default() += 1;
        }
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    pub fn remove(&self, job: Option<JobId>, run: Option<RunId>) {
        let mut targets = self.targets.write().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = job {
            release(&mut targets.jobs, job);
        }
        if let Some(run) = run {
            release(&mut targets.runs, run);
        }
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The notices of the events `events` (already applied to `scheduler`).
fn notices_of(scheduler: &Scheduler, events: &[Event], notices: &mut Vec<Notice>) {
    for event in events {
        match event.kind {
            EventKind::JobDispatched {
                job,
                agent,
                attempt,
            } => {
                let view = scheduler.job(job).expect("a dispatched job exists");
                notices.push(Notice::Dispatch {
                    agent,
                    job,
                    run: view.run,
                    attempt,
                    queue: view.queue.to_string(),
                    priority: view.priority,
                    tags: view.tags.to_vec(),
                    payload: view.payload.to_vec(),
                });
            }
            EventKind::StopRequested { job, agent, reason } => {
                let attempt = scheduler.job(job).map_or(0, |view| view.attempt);
                notices.push(Notice::Stop {
                    agent,
                    job,
                    attempt,
                    reason,
                });
            }
            _ => {}
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(
        "the log failed; the engine stopped without acknowledging anything after the failure: {0}"
    )]
    Store(#[from] StoreError),
    #[error("a driver thread panicked")]
    Panicked,
}

/// The engine is not running (stopped, or failed): the request's outcome is
/// unknown if it was sent, and nothing if it was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the engine is not running")]
pub struct Stopped;

/// One group-commit batch: its events and what to send once durable.
pub struct Batch {
    pub events: Vec<Event>,
    pub notices: Vec<Notice>,
    deliveries: Vec<Delivery>,
    /// When the writer took the batch, and its dispatches (counted only
    /// when metrics are recorded): for the dispatch latency.
    started: Instant,
    dispatches: u64,
    /// Bytes of records this batch appended to the log.
    appended_bytes: u64,
}

pub struct Driver {
    handle: DriverHandle,
    writer: JoinHandle<Result<Scheduler, DriverError>>,
    syncer: JoinHandle<Result<(), DriverError>>,
    ticker_stop: SyncSender<()>,
    ticker: JoinHandle<()>,
    snapshotter: Option<JoinHandle<()>>,
}

#[derive(Clone)]
pub struct DriverHandle {
    requests: mpsc::Sender<Request>,
}

impl Driver {
    pub fn start(
        scheduler: Scheduler,
        mut store: Box<dyn LogStore>,
        config: DriverConfig,
        publisher: Box<dyn Publisher>,
    ) -> Driver {
        let (requests, receiver) = mpsc::channel(config.requests_max);
        let (to_syncer, from_writer) = sync_channel::<Batch>(1);
        let syncer_store = store.syncer();
        let durability = config.durability;
        let mut stage = BatchSyncer::new(syncer_store, durability, publisher);
        if let Some(metrics) = config.metrics.clone() {
            stage = stage.with_metrics(metrics);
        }
        let mut snapshotter = None;
        if let Some(policy) = config.snapshots.clone() {
            // At most one request waits; a trigger refused meanwhile is
            // tried again after the next durable batch.
            let (trigger, triggered) = sync_channel::<Seq>(1);
            let newest = crate::log::snapshot::list(&policy.data)
                .ok()
                .and_then(|list| list.first().and_then(|(_, path)| path.metadata().ok()))
                .map_or(0, |metadata| metadata.len());
            let snapshot_bytes = Arc::new(AtomicU64::new(newest));
            stage.snapshot_every(
                trigger,
                policy.every_events,
                snapshot_bytes.clone(),
                scheduler.last_seq(),
            );
            let reader = store.reader();
            snapshotter = Some(
                std::thread::Builder::new()
                    .name("lanes-snapshotter".into())
                    .spawn(move || run_snapshotter(policy, reader, triggered, snapshot_bytes))
                    .expect("spawning the snapshotter thread"),
            );
        }
        let syncer = std::thread::Builder::new()
            .name("lanes-syncer".into())
            .spawn(move || run_syncer(from_writer, stage))
            .expect("spawning the syncer thread");
        let writer_config = config.clone();
        let writer = std::thread::Builder::new()
            .name("lanes-writer".into())
            .spawn(move || run_writer(scheduler, store, receiver, to_syncer, writer_config))
            .expect("spawning the writer thread");
        let handle = DriverHandle { requests };
        let (ticker_stop, ticker_stopped) = sync_channel::<()>(1);
        let ticks = handle.clone();
        let interval = config.tick_interval;
        let retention = config.retention;
        let ticker = std::thread::Builder::new()
            .name("lanes-ticker".into())
            .spawn(move || loop {
                match ticker_stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {
                        let (reply, _) = oneshot::channel();
                        let tick = Request::Command {
                            command: Command::Tick,
                            reply,
                        };
                        if ticks.requests.blocking_send(tick).is_err() {
                            return;
                        }
                        if let Some(retention) = retention {
                            if forget_due(&ticks, retention).is_err() {
                                return;
                            }
                        }
                    }
                    _ => return,
                }
            })
            .expect("spawning the ticker thread");
        Driver {
            handle,
            writer,
            syncer,
            ticker_stop,
            ticker,
            snapshotter,
        }
    }

    pub fn handle(&self) -> DriverHandle {
        self.handle.clone()
    }

    /// Stops taking requests, finishes the batch in hand, makes it durable,
    /// and returns the scheduler. Requests still queued are answered first.
    pub fn stop(self) -> Result<Scheduler, DriverError> {
        let _ = self.ticker_stop.send(());
        let _ = self.ticker.join();
        let _ = self.handle.requests.blocking_send(Request::Shutdown);
        drop(self.handle);
        let scheduler = self.writer.join().map_err(|_| DriverError::Panicked)?;
        let synced = self.syncer.join().map_err(|_| DriverError::Panicked)?;
        if let Some(snapshotter) = self.snapshotter {
            snapshotter.join().map_err(|_| DriverError::Panicked)?;
        }
        let scheduler = scheduler?;
        synced?;
        Ok(scheduler)
    }
}

/// The snapshotter thread: takes a snapshot for each sequence it is
/// offered, and publishes each file's size for the next trigger.
fn run_snapshotter(
    policy: SnapshotPolicy,
    mut reader: Box<dyn crate::log::LogReader>,
    triggered: Receiver<Seq>,
    snapshot_bytes: Arc<AtomicU64>,
) {
    while let Ok(upto) = triggered.recv() {
        let started = Instant::now();
        match take_snapshot(
            &policy.data,
            reader.as_mut(),
            upto,
            policy.scheduler.clone(),
        ) {
            Ok(taken) => {
                snapshot_bytes.store(taken.bytes, Ordering::Relaxed);
                tracing::info!(
                    seq = taken.seq,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    events = taken.events,
                    load_ms = taken.load_ms,
                    replay_ms = taken.replay_ms,
                    write_ms = taken.write_ms,
                    trim_ms = taken.trim_ms,
                    bytes = taken.bytes,
                    "snapshot written, earlier records trimmed"
                )
            }
            Err(error) => tracing::warn!(%error, "snapshot failed; the log keeps its records"),
        }
    }
}

/// Forgets what `retention` says is due, a bounded command at a time, up
/// to [`FORGET_ROUNDS_MAX`] commands per tick so a backlog cannot crowd out
/// other work.
fn forget_due(handle: &DriverHandle, retention: Retention) -> Result<(), Stopped> {
    for _ in 0..FORGET_ROUNDS_MAX {
        let (reply, answer) = oneshot::channel();
        let forget = Request::Command {
            command: Command::Forget(retention),
            reply,
        };
        handle.requests.blocking_send(forget).map_err(|_| Stopped)?;
        match answer.blocking_recv().map_err(|_| Stopped)? {
            Ok(Reply::Forgot { more: true, .. }) => continue,
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// Most `Forget` commands per tick: with [`crate::sched::FORGET_JOBS_MAX`]
/// jobs each and a tick every 100 ms, up to 2.6 million jobs a second.
const FORGET_ROUNDS_MAX: usize = 16;

impl DriverHandle {
    /// Sends a command and waits for its answer, which comes once its
    /// events are durable.
    pub async fn command(&self, command: Command) -> Result<Result<Reply, Rejection>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Command { command, reply })
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Resolves once the writer has stopped, whether asked to or because
    /// the log failed (fail-stop).
    pub async fn stopped(&self) {
        self.requests.closed().await;
    }

    /// Whether the writer has stopped (asked to, or fail-stop).
    pub fn is_stopped(&self) -> bool {
        self.requests.is_closed()
    }

    /// As [`DriverHandle::command`], from a thread outside any async runtime.
    pub fn blocking_command(&self, command: Command) -> Result<Result<Reply, Rejection>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .blocking_send(Request::Command { command, reply })
            .map_err(|_| Stopped)?;
        answer.blocking_recv().map_err(|_| Stopped)
    }

    /// Reads the state; the answer comes after every earlier request's
    /// events are durable.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Scheduler) -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (request, answer) = read_request(read);
        self.requests.send(request).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    pub fn blocking_read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Scheduler) -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (request, answer) = read_request(read);
        self.requests.blocking_send(request).map_err(|_| Stopped)?;
        answer.blocking_recv().map_err(|_| Stopped)
    }
}

/// A read request and the receiver of its result.
fn read_request<T: Send + 'static>(
    read: impl FnOnce(&Scheduler) -> T + Send + 'static,
) -> (Request, oneshot::Receiver<T>) {
    let (reply, answer) = oneshot::channel();
    let request = Request::Read(Box::new(move |scheduler| {
        let value = read(scheduler);
        Box::new(move || {
            let _ = reply.send(value);
        })
    }));
    (request, answer)
}

fn run_writer(
    scheduler: Scheduler,
    store: Box<dyn LogStore>,
    mut requests: mpsc::Receiver<Request>,
    to_syncer: SyncSender<Batch>,
    config: DriverConfig,
) -> Result<Scheduler, DriverError> {
    let mut writer = BatchWriter::new(scheduler, store, config.record_events_max);
    if let Some(watched) = config.watched.clone() {
        writer = writer.with_watched(watched);
    }
    if let Some(metrics) = config.metrics.clone() {
        writer = writer.with_metrics(metrics);
    }
    while let Some(first) = requests.blocking_recv() {
        let now = (config.clock)();
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next {
            if let Request::Shutdown = request {
                // Refuse what comes later; finish what is queued.
                requests.close();
            } else {
                batch.push(request);
            }
            next = if batch.len() < config.batch_commands_max {
                requests.try_recv().ok()
            } else {
                None
            };
        }
        let batch = writer.write_batch(batch.into_iter(), now)?;
        if to_syncer.send(batch).is_err() {
            // The syncer stopped on a failed sync; it reports why.
            break;
        }
    }
    Ok(writer.into_scheduler())
}

fn run_syncer(batches: Receiver<Batch>, mut stage: BatchSyncer) -> Result<(), DriverError> {
    loop {
        let wait = stage.next_sync_due().unwrap_or(Duration::from_secs(3600));
        let mut ready = match batches.recv_timeout(wait) {
            Ok(batch) => vec![batch],
            Err(RecvTimeoutError::Timeout) => Vec::new(),
            Err(RecvTimeoutError::Disconnected) => break,
        };
        while let Ok(batch) = batches.try_recv() {
            ready.push(batch);
        }
        stage.complete(ready)?;
    }
    stage.close()?;
    Ok(())
}

/// The writer's half of group commit: applies a batch of requests and
/// writes its events as records. Not durable yet.
pub struct BatchWriter {
    scheduler: Scheduler,
    watched: Option<Arc<Watched>>,
    /// Reused: the jobs changed by one command.
    changed: Vec<JobId>,
    store: Box<dyn LogStore>,
    record_events_max: usize,
    record_bytes_max: usize,
    metrics: Option<crate::metrics::WriterMetrics>,
}

/// Largest record the writer makes, in bytes, unless one event alone is
/// larger. Counts of events bound a record's length only loosely (one
/// submission can carry megabytes of payloads), and a record's length
/// field has 32 bits; replay also holds a whole record at a time.
pub const RECORD_BYTES_MAX: usize = 64 << 20;

impl BatchWriter {
    pub fn new(
        scheduler: Scheduler,
        store: Box<dyn LogStore>,
        record_events_max: usize,
    ) -> BatchWriter {
        BatchWriter {
            scheduler,
            watched: None,
            changed: Vec::new(),
            store,
            record_events_max,
            record_bytes_max: RECORD_BYTES_MAX,
            metrics: None,
        }
    }

    /// Records per-queue counters, queue waits, batch sizes and bytes
    /// appended in `metrics`, once per batch.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::EngineMetrics>) -> BatchWriter {
        self.metrics = Some(crate::metrics::WriterMetrics::new(metrics));
        self
    }

    /// Reports changes of the jobs and runs in `watched` as notices.
    pub fn with_watched(mut self, watched: Arc<Watched>) -> BatchWriter {
        self.scheduler.track_changes();
        self.watched = Some(watched);
        self
    }

    /// Notices for the watched jobs the last command changed.
    fn watch_notices(&mut self, notices: &mut Vec<Notice>) {
        let Some(watched) = &self.watched else {
            return;
        };
        self.changed.clear();
        self.scheduler.take_changed(&mut self.changed);
        if self.changed.is_empty() || watched.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let targets = watched.targets.read().unwrap_or_else(|p| p.into_inner());
        for &job in &self.changed {
            let Some(view) = self.scheduler.job(job) else {
                continue;
            };
            if targets.jobs.contains_key(&job) || targets.runs.contains_key(&view.run) {
                let run_finished = self
                    .scheduler
                    .run(view.run)
                    .is_some_and(|run| run.unfinished == 0);
                notices.push(Notice::JobChanged {
                    job,
                    run: view.run,
                    attempt: view.attempt,
                    status: view.status,
                    run_finished,
                });
            }
        }
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn into_scheduler(self) -> Scheduler {
        self.scheduler
    }

    /// Handles every request at time `now` and writes the events they made.
    /// A failed write loses the batch: nothing of it may be answered.
    pub fn write_batch(
        &mut self,
        requests: impl Iterator<Item = Request>,
        now: TimeMs,
    ) -> Result<Batch, DriverError> {
        let mut batch = Batch {
            events: Vec::new(),
            notices: Vec::new(),
            deliveries: Vec::new(),
            started: Instant::now(),
            dispatches: 0,
            appended_bytes: 0,
        };
        for request in requests {
            match request {
                Request::Command { command, reply } => {
                    let first = batch.events.len();
                    let answer = self.scheduler.handle(command, now, &mut batch.events);
                    // Built now: a later command of the batch may change the job.
                    notices_of(&self.scheduler, &batch.events[first..], &mut batch.notices);
                    self.watch_notices(&mut batch.notices);
                    batch.deliveries.push(Box::new(move || {
                        let _ = reply.send(answer);
                    }));
                }
                Request::Read(read) => batch.deliveries.push(read(&self.scheduler)),
                Request::Shutdown => {}
            }
        }
        let mut appended_bytes = 0;
        for chunk in batch.events.chunks(self.record_events_max) {
            match self.write_records(chunk) {
                Ok(bytes) => appended_bytes += bytes,
                Err(error) => {
                    tracing::error!(%error, "log write failed: stopping");
                    return Err(error.into());
                }
            }
        }
        if let Some(metrics) = &mut self.metrics {
            batch.dispatches = metrics.record_batch(&self.scheduler, &batch.events, appended_bytes);
        }
        batch.appended_bytes = appended_bytes;
        Ok(batch)
    }

    /// Sets the largest record in bytes (tests set a small one).
    pub fn with_record_bytes_max(mut self, bytes: usize) -> BatchWriter {
        self.record_bytes_max = bytes;
        self
    }

    /// Writes `events` as one record, or, when that record would be larger
    /// than the byte bound, as two halves, each split again as needed. A
    /// single event is written alone whatever its size. Returns the bytes
    /// written.
    fn write_records(&mut self, events: &[Event]) -> Result<u64, StoreError> {
        let record = format::encode(events);
        if record.len() > self.record_bytes_max && events.len() > 1 {
            let (first, second) = events.split_at(events.len() / 2);
            return Ok(self.write_records(first)? + self.write_records(second)?);
        }
        self.store.write(events[0].seq, &record)?;
        Ok(record.len() as u64)
    }
}

/// The syncer's half of group commit: makes written batches durable as the
/// durability setting says, then answers and publishes them, in order.
pub struct BatchSyncer {
    syncer: Box<dyn Syncer>,
    durability: Durability,
    publisher: Box<dyn Publisher>,
    last_sync: Instant,
    unsynced: bool,
    failed: bool,
    /// The last sequence written, and the last known durable.
    written_seq: Seq,
    durable_seq: Seq,
    snapshots: Option<SnapshotTrigger>,
    metrics: Option<Arc<crate::metrics::EngineMetrics>>,
}

struct SnapshotTrigger {
    trigger: SyncSender<Seq>,
    every_events: u64,
    last: Seq,
    /// Log bytes made durable since the last trigger.
    bytes_since: u64,
    /// The size of the newest snapshot file, kept by the snapshotter.
    snapshot_bytes: Arc<AtomicU64>,
}

/// A snapshot also waits until the log has grown by this many times the
/// newest snapshot's size since it: a snapshot costs in proportion to the
/// state (writing it, and loading it for the next), so a big state (a
/// backlog of millions of waiting jobs) is snapshotted less often and the
/// snapshotter's share of the CPU stays bounded, while start-up still
/// replays at most about one snapshot's worth of log (Redis rewrites its
/// append-only file on the same kind of rule).
pub const SNAPSHOT_LOG_GROWTH: u64 = 1;

impl BatchSyncer {
    pub fn new(
        syncer: Box<dyn Syncer>,
        durability: Durability,
        publisher: Box<dyn Publisher>,
    ) -> BatchSyncer {
        BatchSyncer {
            syncer,
            durability,
            publisher,
            last_sync: Instant::now(),
            unsynced: false,
            failed: false,
            written_seq: 0,
            durable_seq: 0,
            snapshots: None,
            metrics: None,
        }
    }

    /// Records sync times and dispatch latencies in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::EngineMetrics>) -> BatchSyncer {
        self.metrics = Some(metrics);
        self
    }

    /// Asks for a snapshot (through `trigger`) each time `every_events`
    /// more events are durable and the log has grown by
    /// [`SNAPSHOT_LOG_GROWTH`] times `snapshot_bytes` (the newest
    /// snapshot's size, which the snapshotter updates); `from` is the
    /// sequence the engine started at.
    pub fn snapshot_every(
        &mut self,
        trigger: SyncSender<Seq>,
        every_events: u64,
        snapshot_bytes: Arc<AtomicU64>,
        from: Seq,
    ) {
        self.written_seq = from;
        self.durable_seq = from;
        self.snapshots = Some(SnapshotTrigger {
            trigger,
            every_events: every_events.max(1),
            last: from,
            bytes_since: 0,
            snapshot_bytes,
        });
    }

    fn on_durable(&mut self) {
        self.durable_seq = self.written_seq;
        if let Some(snapshots) = &mut self.snapshots {
            let grown = snapshots
                .snapshot_bytes
                .load(Ordering::Relaxed)
                .saturating_mul(SNAPSHOT_LOG_GROWTH);
            if self.durable_seq >= snapshots.last + snapshots.every_events
                && snapshots.bytes_since >= grown
                && snapshots.trigger.try_send(self.durable_seq).is_ok()
            {
                snapshots.last = self.durable_seq;
                snapshots.bytes_since = 0;
            }
        }
    }

    /// How long until written but unsynced events must be synced.
    pub fn next_sync_due(&self) -> Option<Duration> {
        match self.durability {
            Durability::Interval(every) if self.unsynced => {
                Some(every.saturating_sub(self.last_sync.elapsed()))
            }
            _ => None,
        }
    }

    /// Completes batches written before this call: under `Sync`, one sync
    /// for all of them, then their answers; under `Interval` and `None`,
    /// answers first, and a sync when one is due.
    pub fn complete(&mut self, mut batches: Vec<Batch>) -> Result<(), DriverError> {
        assert!(!self.failed, "a failed sync is never retried");
        self.unsynced |= batches.iter().any(|batch| !batch.events.is_empty());
        if let Some(last) = batches.iter().rev().find_map(|batch| batch.events.last()) {
            self.written_seq = last.seq;
        }
        if let Some(snapshots) = &mut self.snapshots {
            snapshots.bytes_since += batches.iter().map(|b| b.appended_bytes).sum::<u64>();
        }
        let sync_now = match self.durability {
            Durability::Sync => self.unsynced,
            Durability::Interval(every) => self.unsynced && self.last_sync.elapsed() >= every,
            Durability::None => false,
        };
        if self.durability != Durability::Sync {
            self.deliver(batches.drain(..));
        }
        if sync_now {
            let started = Instant::now();
            if let Err(error) = self.syncer.sync() {
                self.failed = true;
                tracing::error!(%error, "log sync failed: stopping without acknowledging");
                return Err(error.into());
            }
            if let Some(metrics) = &self.metrics {
                metrics.sync_seconds.record(started.elapsed().as_secs_f64());
            }
            self.last_sync = Instant::now();
            self.unsynced = false;
            self.on_durable();
        } else if self.durability == Durability::None {
            self.on_durable();
        }
        self.deliver(batches.drain(..));
        Ok(())
    }

    /// A final sync of whatever was written.
    pub fn close(mut self) -> Result<(), DriverError> {
        if !self.failed && self.unsynced {
            self.syncer.sync()?;
        }
        Ok(())
    }

    fn deliver(&mut self, batches: impl Iterator<Item = Batch>) {
        for batch in batches {
            if !batch.events.is_empty() {
                self.publisher.publish(&batch.events, &batch.notices);
            }
            if let Some(metrics) = &self.metrics {
                let elapsed = batch.started.elapsed();
                crate::metrics::record_dispatch_latency(metrics, elapsed, batch.dispatches);
            }
            for delivery in batch.deliveries {
                delivery();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogReader, MemoryStore};
    use crate::model::{JobSpec, QueueConfig, RunSpec};

    /// A batch whose events would make a record over the byte bound is
    /// written as several records, each within it (or of one event), in
    /// order and without a gap.
    #[test]
    fn records_stay_within_the_byte_bound() {
        let store = MemoryStore::new();
        let scheduler = Scheduler::new(SchedulerConfig::default());
        let mut writer = BatchWriter::new(scheduler, Box::new(store.clone()), 16_384)
            .with_record_bytes_max(2_048);
        let mut answers = Vec::new();
        let requests: Vec<Request> = (0..10)
            .map(|i| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                // Payloads that do not compress, so records keep their size.
                let length = if i == 3 { 5_000 } else { 700 };
                let payload = format::incompressible(length, i + 1);
                let spec = RunSpec {
                    jobs: vec![JobSpec {
                        payload,
                        ..JobSpec::default()
                    }],
                    ..RunSpec::default()
                };
                Request::Command {
                    command: Command::SubmitRun(spec),
                    reply,
                }
            })
            .collect();
        let batch = writer.write_batch(requests.into_iter(), 1_000).unwrap();
        assert_eq!(batch.events.len(), 10);

        let mut seqs = Vec::new();
        let mut records = 0;
        store
            .scan(0, &mut |seq, bytes| {
                let (_, events) = format::decode(bytes).expect("a whole record");
                assert_eq!(events[0].seq, seq);
                assert!(
                    bytes.len() <= 2_048 || events.len() == 1,
                    "a record of {} events is {} bytes",
                    events.len(),
                    bytes.len()
                );
                seqs.extend(events.iter().map(|event| event.seq));
                records += 1;
                true
            })
            .unwrap();
        assert_eq!(seqs, (1..=10).collect::<Vec<Seq>>());
        assert!(records >= 5, "{records} records");
    }

    /// A snapshot is asked for once `every_events` events are durable and
    /// the log has grown by the newest snapshot's size since the last one.
    #[test]
    fn snapshots_wait_for_the_log_to_outgrow_the_last_snapshot() {
        let mut store = MemoryStore::new();
        let mut writer = BatchWriter::new(
            Scheduler::new(SchedulerConfig::default()),
            Box::new(store.clone()),
            16_384,
        );
        let mut syncer = BatchSyncer::new(store.syncer(), Durability::Sync, Box::new(()));
        let (trigger, triggered) = sync_channel::<Seq>(8);
        let snapshot_bytes = Arc::new(AtomicU64::new(0));
        syncer.snapshot_every(trigger, 10, snapshot_bytes.clone(), 0);
        let mut queues = 0;
        // One event each, all of the same size.
        let mut new_queue = || {
            queues += 1;
            let (reply, _answer) = oneshot::channel();
            let command = Command::PutQueue(QueueConfig::new(&format!("queue-{queues:04}")));
            let request = Request::Command { command, reply };
            let batch = writer.write_batch(std::iter::once(request), 1_000).unwrap();
            let bytes = batch.appended_bytes;
            syncer.complete(vec![batch]).unwrap();
            bytes
        };
        for _ in 0..9 {
            new_queue();
        }
        assert_eq!(triggered.try_recv().ok(), None);
        let one = new_queue();
        assert_eq!(triggered.try_recv().ok(), Some(10));
        // The snapshot was 20 events' worth of log: 10 events are no longer
        // enough.
        snapshot_bytes.store(20 * one, Ordering::Relaxed);
        for _ in 0..19 {
            new_queue();
        }
        assert_eq!(triggered.try_recv().ok(), None);
        for _ in 0..3 {
            new_queue();
        }
        assert_eq!(triggered.try_recv().ok().map(|seq| seq >= 30), Some(true));
    }
}
