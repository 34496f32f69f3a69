//! The operators' HTTP listener, beside the protocol port: `/metrics`
//! (Prometheus text), `/livez` and `/readyz`. It reads the engine and never
//! changes it: no request here reaches the scheduler except a read of its
//! queue views when `/metrics` is scraped.
//!
//! It listens before the log is replayed, so `/livez` answers and `/readyz`
//! says "starting" during a long replay; the engine tells it when it serves
//! ([`HttpServer::serving`]) and when it stops ([`HttpServer::stopping`]).
//! A writer that stopped by itself (the log failed) is seen at each
//! `/readyz` through its handle.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use rustc_hash::FxHashMap;
use tokio::net::TcpListener;

use crate::driver::{system_clock, DriverHandle};
use crate::metrics::{EngineMetrics, QueueGauges, RetentionGauges};
use crate::sched::view::JobStatus;
use crate::sched::Scheduler;
use crate::server::Registry;

/// How often histogram samples are folded into buckets when nobody
/// scrapes: bounds the samples held to this long's worth of dispatches.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long a scrape waits for the writer to read the queue views; past
/// it, the gauges keep their last values and the scrape still answers.
const SCRAPE_READ_TIMEOUT: Duration = Duration::from_secs(5);

const PHASE_STARTING: u8 = 0;
const PHASE_SERVING: u8 = 1;
const PHASE_STOPPING: u8 = 2;

/// What the handlers share.
struct Shared {
    phase: AtomicU8,
    engine: OnceLock<Engine>,
    metrics: Arc<EngineMetrics>,
}

struct Engine {
    driver: DriverHandle,
    registry: Arc<Registry>,
}

/// The listener's task; aborted when dropped, so a failed start or a
/// finished stop leaves nothing listening.
pub struct HttpServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
#[error("listening for HTTP on {address}: {error}")]
pub struct HttpError {
    pub address: SocketAddr,
    pub error: std::io::Error,
}

impl HttpServer {
    /// Binds `address` and serves, not ready yet.
    pub async fn start(
        address: SocketAddr,
        metrics: Arc<EngineMetrics>,
    ) -> Result<HttpServer, HttpError> {
        let failed = |error| HttpError { address, error };
        let listener = TcpListener::bind(address).await.map_err(failed)?;
        let address = listener.local_addr().map_err(failed)?;
        let shared = Arc::new(Shared {
            phase: AtomicU8::new(PHASE_STARTING),
            engine: OnceLock::new(),
            metrics,
        });
        let router = Router::new()
            .route("/metrics", get(metrics_text))
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .with_state(shared.clone());
        let upkeep = shared.metrics.clone();
        let task = tokio::spawn(async move {
            let serving = axum::serve(listener, router);
            let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
            let upkeeping = async move {
                loop {
                    interval.tick().await;
                    upkeep.run_upkeep();
                }
            };
            tokio::select! {
                result = serving => if let Err(error) = result {
                    tracing::error!(%error, "the HTTP listener failed");
                },
                _ = upkeeping => {}
            }
        });
        if !address.ip().is_loopback() {
            tracing::warn!(%address, "the HTTP endpoints have no authentication: keep them on a private network");
        }
        tracing::info!(%address, "HTTP listening (/metrics, /livez, /readyz)");
        Ok(HttpServer {
            address,
            shared,
            task,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The engine serves: `/readyz` answers 200 while its writer runs.
    pub fn serving(&self, driver: DriverHandle, registry: Arc<Registry>) {
        let _ = self.shared.engine.set(Engine { driver, registry });
        let _ = self.shared.phase.compare_exchange(
            PHASE_STARTING,
            PHASE_SERVING,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// From now on `/readyz` answers 503, for good.
    pub fn stopping(&self) {
        self.shared.phase.store(PHASE_STOPPING, Ordering::Release);
    }

    /// Stops listening; returns once the listener is closed.
    pub async fn close(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn livez() -> &'static str {
    "live\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    let unavailable = StatusCode::SERVICE_UNAVAILABLE;
    match shared.phase.load(Ordering::Acquire) {
        PHASE_STARTING => (unavailable, "starting: replaying the log\n"),
        PHASE_SERVING => match shared.engine.get() {
            Some(engine) if engine.driver.is_stopped() => {
                (unavailable, "stopped: the log failed\n")
            }
            Some(_) => (StatusCode::OK, "ready\n"),
            None => (unavailable, "starting\n"),
        },
        _ => (unavailable, "stopping\n"),
    }
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if let Some(engine) = shared.engine.get() {
        let read = engine.driver.read(|scheduler| {
            let (finished_runs, finished_jobs) = scheduler.finished_kept();
            let retention = RetentionGauges {
                finished_runs,
                finished_jobs,
                forgotten_keys: scheduler.forgotten_keys(),
            };
            (queue_gauges(scheduler), retention)
        });
        if let Ok(Ok((queues, retention))) = tokio::time::timeout(SCRAPE_READ_TIMEOUT, read).await {
            let now = system_clock()();
            let agents = engine.registry.connected_agents();
            shared.metrics.set_gauges(&queues, retention, agents, now);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

/// Runs on the writer thread, at scrape time. The oldest waiting job of
/// each queue is the first waiting one in id (submission) order: the walk
/// stops once every queue with waiting jobs has found its own.
///
/// The walk passes over every job kept before the oldest waiting one,
/// finished ones included (up to the retention's cap), so a scrape holds
/// the writer for a time proportional to the jobs kept. A per-queue index
/// of waiting jobs by submission in `sched/` would make it constant.
fn queue_gauges(scheduler: &Scheduler) -> Vec<QueueGauges> {
    let mut queues: Vec<QueueGauges> = scheduler
        .queues()
        .map(|queue| QueueGauges {
            name: queue.config.name.clone(),
            waiting: queue.waiting,
            running: queue.running,
            depth_limit: queue.config.depth,
            oldest_waiting_submitted_at: None,
        })
        .collect();
    let mut unfound = queues.iter().filter(|queue| queue.waiting > 0).count();
    if unfound == 0 {
        return queues;
    }
    let slots: FxHashMap<&str, usize> = scheduler
        .queues()
        .enumerate()
        .map(|(slot, queue)| (queue.config.name.as_str(), slot))
        .collect();
    for job in scheduler.jobs() {
        if job.status != JobStatus::Waiting {
            continue;
        }
        let Some(&slot) = slots.get(job.queue) else {
            continue;
        };
        let oldest = &mut queues[slot].oldest_waiting_submitted_at;
        if oldest.is_none() {
            *oldest = Some(job.submitted_at);
            unfound -= 1;
            if unfound == 0 {
                break;
            }
        }
    }
    queues
}
