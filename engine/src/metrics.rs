//! The engine's metrics: every name in one place, one Prometheus recorder
//! per engine, and the per-batch aggregation the writer does. It owns no
//! state the engine decides with; `sched/` never sees it.
//!
//! Each engine builds its own recorder (`PrometheusBuilder::build_recorder`)
//! and holds the handles it records through, instead of installing a global
//! recorder: several engines in one process (the tests start many) each see
//! their own numbers, nothing depends on which engine started first, and no
//! `metrics::counter!` macro looks a key up on a hot path. The HTTP listener
//! (`http.rs`) renders the recorder at scrape time.
//!
//! What is recorded where: the writer counts submissions, dispatches and
//! completions per queue (summed per batch, then one atomic add per queue),
//! queue waits, events per batch and bytes appended; the syncer times syncs
//! and the way from a batch's start to its dispatches leaving; the listener
//! counts connections. Queue gauges are read from the scheduler's views
//! when scraped, so the dispatch path does no work for them.

use std::sync::Arc;
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use rustc_hash::FxHashMap;

use crate::model::TimeMs;
use crate::sched::{Event, EventKind, Scheduler};

/// Gauge, label `queue`: jobs of the queue waiting for an agent (not held
/// by dependencies).
pub const QUEUE_WAITING: &str = "lanes_queue_waiting_jobs";
/// Gauge, label `queue`: jobs of the queue running on agents.
pub const QUEUE_RUNNING: &str = "lanes_queue_running_jobs";
/// Gauge, label `queue`: the queue's depth limit (jobs waiting, running or
/// held); absent for a queue without one.
pub const QUEUE_DEPTH_LIMIT: &str = "lanes_queue_depth_limit_jobs";
/// Gauge, label `queue`: seconds since the earliest-submitted job still
/// waiting in the queue was submitted; 0 when none waits.
pub const QUEUE_OLDEST_WAITING_AGE: &str = "lanes_queue_oldest_waiting_age_seconds";
/// Counter, label `queue`: jobs submitted to the queue (in runs and
/// appended to runs) since the engine started.
pub const JOBS_SUBMITTED: &str = "lanes_jobs_submitted_total";
/// Counter, label `queue`: dispatches (attempts handed to agents) since the
/// engine started.
pub const JOBS_DISPATCHED: &str = "lanes_jobs_dispatched_total";
/// Counter, label `queue`: completions reported by agents since the engine
/// started (any outcome they report; expiries and cancellations of waiting
/// jobs are not completions).
pub const JOBS_COMPLETED: &str = "lanes_jobs_completed_total";
/// Histogram, label `queue`: seconds a job waited before its dispatch, from
/// its submission (or from its return to the queue, for a later attempt),
/// in the scheduler's time.
pub const QUEUE_WAIT: &str = "lanes_queue_wait_seconds";
/// Histogram: seconds from the writer taking a batch to its dispatches
/// being handed to the agents' connections (apply, write, sync under
/// `--durability sync`, publish). One sample per dispatch.
pub const DISPATCH_LATENCY: &str = "lanes_dispatch_latency_seconds";
/// Histogram: events in one group-commit batch (batches without events are
/// not counted).
pub const LOG_BATCH_EVENTS: &str = "lanes_log_batch_events";
/// Histogram: seconds one sync of the log took.
pub const LOG_SYNC: &str = "lanes_log_sync_seconds";
/// Counter: bytes of records appended to the log since the engine started.
pub const LOG_APPENDED_BYTES: &str = "lanes_log_appended_bytes_total";
/// Gauge: protocol connections open now.
pub const CONNECTIONS: &str = "lanes_connections";
/// Gauge: agents with a connection bound to them now.
pub const AGENTS_CONNECTED: &str = "lanes_agents_connected";
/// Gauge: finished runs kept (not yet forgotten under the retention).
pub const FINISHED_RUNS_KEPT: &str = "lanes_finished_runs_kept";
/// Gauge: jobs of the finished runs kept: what `--retain-finished-jobs`
/// caps.
pub const FINISHED_JOBS_KEPT: &str = "lanes_finished_jobs_kept";
/// Gauge: idempotency keys remembered of forgotten runs: what
/// `--retain-keys` caps.
pub const FORGOTTEN_KEYS: &str = "lanes_forgotten_run_keys";

/// What the retention keeps, read from the state at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RetentionGauges {
    pub(crate) finished_runs: usize,
    pub(crate) finished_jobs: u64,
    pub(crate) forgotten_keys: usize,
}

/// Seconds: from a millisecond (a loopback dispatch without sync) to a
/// minute (a job that waited for a busy fleet), roughly ×2.5 apart.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Queue waits run longer than the engine's own latencies: up to hours.
const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
    21600.0,
];
/// Sync times: fdatasync on an SSD is ~0.1–2 ms, on a disk ~10 ms.
const SYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Events per batch: powers of 4 up to a full record (16,384 events).
const BATCH_EVENTS_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

/// One engine's recorder and the handles that need no label.
pub struct EngineMetrics {
    recorder: PrometheusRecorder,
    pub(crate) dispatch_latency: Histogram,
    pub(crate) batch_events: Histogram,
    pub(crate) sync_seconds: Histogram,
    pub(crate) appended_bytes: Counter,
    pub(crate) connections: Gauge,
}

impl std::fmt::Debug for EngineMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineMetrics")
    }
}

/// The handles of one queue's counters and histogram.
#[derive(Clone)]
pub(crate) struct QueueHandles {
    submitted: Counter,
    dispatched: Counter,
    completed: Counter,
    wait: Histogram,
}

/// What the scrape reads of one queue.
#[derive(Clone, Debug)]
pub(crate) struct QueueGauges {
    pub(crate) name: String,
    pub(crate) waiting: u64,
    pub(crate) running: u64,
    pub(crate) depth_limit: Option<u32>,
    /// The submission time of the earliest-submitted waiting job.
    pub(crate) oldest_waiting_submitted_at: Option<TimeMs>,
}

const METADATA: Metadata<'static> =
    Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

impl EngineMetrics {
    pub fn new() -> Arc<EngineMetrics> {
        let buckets = [
            (QUEUE_WAIT, QUEUE_WAIT_BUCKETS),
            (DISPATCH_LATENCY, SECONDS_BUCKETS),
            (LOG_SYNC, SYNC_BUCKETS),
            (LOG_BATCH_EVENTS, BATCH_EVENTS_BUCKETS),
        ];
        let mut builder = PrometheusBuilder::new();
        for (name, values) in buckets {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.to_string()), values)
                .expect("bucket lists are not empty");
        }
        let recorder = builder.build_recorder();
        describe(&recorder);
        let no_labels = |name: &'static str| Key::from_static_name(name);
        Arc::new(EngineMetrics {
            dispatch_latency: recorder.register_histogram(&no_labels(DISPATCH_LATENCY), &METADATA),
            batch_events: recorder.register_histogram(&no_labels(LOG_BATCH_EVENTS), &METADATA),
            sync_seconds: recorder.register_histogram(&no_labels(LOG_SYNC), &METADATA),
            appended_bytes: recorder.register_counter(&no_labels(LOG_APPENDED_BYTES), &METADATA),
            connections: recorder.register_gauge(&no_labels(CONNECTIONS), &METADATA),
            recorder,
        })
    }

    pub(crate) fn queue(&self, queue: &str) -> QueueHandles {
        let key = |name: &'static str| {
            Key::from_parts(name, vec![Label::new("queue", queue.to_string())])
        };
        QueueHandles {
            submitted: self
                .recorder
                .register_counter(&key(JOBS_SUBMITTED), &METADATA),
            dispatched: self
                .recorder
                .register_counter(&key(JOBS_DISPATCHED), &METADATA),
            completed: self
                .recorder
                .register_counter(&key(JOBS_COMPLETED), &METADATA),
            wait: self
                .recorder
                .register_histogram(&key(QUEUE_WAIT), &METADATA),
        }
    }

    /// Sets the gauges read at scrape time.
    pub(crate) fn set_gauges(
        &self,
        queues: &[QueueGauges],
        retention: RetentionGauges,
        agents_connected: usize,
        now: TimeMs,
    ) {
        for queue in queues {
            let gauge = |name: &'static str| {
                let key = Key::from_parts(name, vec![Label::new("queue", queue.name.clone())]);
                self.recorder.register_gauge(&key, &METADATA)
            };
            gauge(QUEUE_WAITING).set(queue.waiting as f64);
            gauge(QUEUE_RUNNING).set(queue.running as f64);
            if let Some(limit) = queue.depth_limit {
                gauge(QUEUE_DEPTH_LIMIT).set(f64::from(limit));
            }
            let age_ms = queue
                .oldest_waiting_submitted_at
                .map_or(0, |at| now.saturating_sub(at));
            gauge(QUEUE_OLDEST_WAITING_AGE).set(age_ms as f64 / 1000.0);
        }
        let gauge = |name: &'static str, value: f64| {
            self.recorder
                .register_gauge(&Key::from_static_name(name), &METADATA)
                .set(value)
        };
        gauge(AGENTS_CONNECTED, agents_connected as f64);
        gauge(FINISHED_RUNS_KEPT, retention.finished_runs as f64);
        gauge(FINISHED_JOBS_KEPT, retention.finished_jobs as f64);
        gauge(FORGOTTEN_KEYS, retention.forgotten_keys as f64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.recorder.handle().render()
    }

    /// Folds recorded histogram samples into their buckets, so memory stays
    /// bounded between scrapes; run every few seconds.
    pub fn run_upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }
}

fn describe(recorder: &PrometheusRecorder) {
    enum Kind {
        Counter,
        Gauge,
        Histogram,
    }
    let all: [(&'static str, Kind, Option<Unit>, &'static str); 17] = [
        (
            QUEUE_WAITING,
            Kind::Gauge,
            None,
            "Jobs waiting for an agent, per queue.",
        ),
        (
            QUEUE_RUNNING,
            Kind::Gauge,
            None,
            "Jobs running on agents, per queue.",
        ),
        (
            QUEUE_DEPTH_LIMIT,
            Kind::Gauge,
            None,
            "The queue's depth limit, if it has one.",
        ),
        (
            QUEUE_OLDEST_WAITING_AGE,
            Kind::Gauge,
            Some(Unit::Seconds),
            "Age of the earliest-submitted waiting job, per queue.",
        ),
        (
            JOBS_SUBMITTED,
            Kind::Counter,
            None,
            "Jobs submitted since the engine started, per queue.",
        ),
        (
            JOBS_DISPATCHED,
            Kind::Counter,
            None,
            "Dispatches since the engine started, per queue.",
        ),
        (
            JOBS_COMPLETED,
            Kind::Counter,
            None,
            "Completions reported by agents since the engine started, per queue.",
        ),
        (
            QUEUE_WAIT,
            Kind::Histogram,
            Some(Unit::Seconds),
            "Time from submission (or return to the queue) to dispatch, per queue.",
        ),
        (
            DISPATCH_LATENCY,
            Kind::Histogram,
            Some(Unit::Seconds),
            "Time from the writer taking a batch to its dispatches being sent.",
        ),
        (
            LOG_BATCH_EVENTS,
            Kind::Histogram,
            None,
            "Events per group-commit batch.",
        ),
        (
            LOG_SYNC,
            Kind::Histogram,
            Some(Unit::Seconds),
            "Duration of one log sync.",
        ),
        (
            LOG_APPENDED_BYTES,
            Kind::Counter,
            Some(Unit::Bytes),
            "Bytes of records appended to the log.",
        ),
        (CONNECTIONS, Kind::Gauge, None, "Protocol connections open."),
        (
            AGENTS_CONNECTED,
            Kind::Gauge,
            None,
            "Agents with a live connection.",
        ),
        (
            FINISHED_RUNS_KEPT,
            Kind::Gauge,
            None,
            "Finished runs kept, not yet forgotten.",
        ),
        (
            FINISHED_JOBS_KEPT,
            Kind::Gauge,
            None,
            "Jobs of the finished runs kept (capped by --retain-finished-jobs).",
        ),
        (
            FORGOTTEN_KEYS,
            Kind::Gauge,
            None,
            "Idempotency keys remembered of forgotten runs (capped by --retain-keys).",
        ),
    ];
    for (name, kind, unit, help) in all {
        let name = KeyName::from_const_str(name);
        match kind {
            Kind::Counter => recorder.describe_counter(name, unit, help.into()),
            Kind::Gauge => recorder.describe_gauge(name, unit, help.into()),
            Kind::Histogram => recorder.describe_histogram(name, unit, help.into()),
        }
    }
}

/// The writer's side: per-queue counts summed over a batch, then added to
/// the counters once per queue. Handles are registered the first time a
/// queue is seen, so the steady state neither allocates nor locks.
pub(crate) struct WriterMetrics {
    engine: Arc<EngineMetrics>,
    slots: FxHashMap<Box<str>, usize>,
    queues: Vec<(QueueHandles, Counts)>,
    /// Slots counted in the current batch, each once.
    touched: Vec<usize>,
}

#[derive(Clone, Copy, Default)]
struct Counts {
    submitted: u64,
    dispatched: u64,
    completed: u64,
}

impl WriterMetrics {
    pub(crate) fn new(engine: Arc<EngineMetrics>) -> WriterMetrics {
        WriterMetrics {
            engine,
            slots: FxHashMap::default(),
            queues: Vec::new(),
            touched: Vec::new(),
        }
    }

    /// The queue's slot, marked as counted in this batch.
    fn slot(&mut self, queue: &str) -> usize {
        let slot = match self.slots.get(queue) {
            Some(&slot) => slot,
            None => {
                let slot = self.queues.len();
                self.queues
                    .push((self.engine.queue(queue), Counts::default()));
                self.slots.insert(queue.into(), slot);
                slot
            }
        };
        let counts = &self.queues[slot].1;
        if counts.submitted == 0 && counts.dispatched == 0 && counts.completed == 0 {
            self.touched.push(slot);
        }
        slot
    }

    /// Records a batch whose events `scheduler` has applied; returns how
    /// many of them are dispatches.
    pub(crate) fn record_batch(
        &mut self,
        scheduler: &Scheduler,
        events: &[Event],
        appended_bytes: u64,
    ) -> u64 {
        let mut dispatches = 0;
        for event in events {
            match &event.kind {
                EventKind::RunSubmitted(run) => {
                    for job in &run.jobs {
                        let slot = self.slot(&job.queue);
                        self.queues[slot].1.submitted += 1;
                    }
                }
                EventKind::JobsAppended { jobs, .. } => {
                    for job in jobs {
                        let slot = self.slot(&job.queue);
                        self.queues[slot].1.submitted += 1;
                    }
                }
                EventKind::JobDispatched { job, .. } => {
                    let Some(view) = scheduler.job(*job) else {
                        continue;
                    };
                    let waited_ms = event.time.saturating_sub(view.waiting_since);
                    let slot = self.slot(view.queue);
                    let (handles, counts) = &mut self.queues[slot];
                    counts.dispatched += 1;
                    handles.wait.record(waited_ms as f64 / 1000.0);
                    dispatches += 1;
                }
                EventKind::JobCompleted { job, .. } => {
                    let Some(view) = scheduler.job(*job) else {
                        continue;
                    };
                    let slot = self.slot(view.queue);
                    self.queues[slot].1.completed += 1;
                }
                _ => {}
            }
        }
        for slot in self.touched.drain(..) {
            let (handles, counts) = &mut self.queues[slot];
            if counts.submitted > 0 {
                handles.submitted.increment(counts.submitted);
            }
            if counts.dispatched > 0 {
                handles.dispatched.increment(counts.dispatched);
            }
            if counts.completed > 0 {
                handles.completed.increment(counts.completed);
            }
            *counts = Counts::default();
        }
        if !events.is_empty() {
            self.engine.batch_events.record(events.len() as f64);
        }
        self.engine.appended_bytes.increment(appended_bytes);
        dispatches
    }
}

/// Records `elapsed` once per dispatch.
pub(crate) fn record_dispatch_latency(engine: &EngineMetrics, elapsed: Duration, dispatches: u64) {
    if dispatches > 0 {
        engine
            .dispatch_latency
            .record_many(elapsed.as_secs_f64(), dispatches as usize);
    }
}
