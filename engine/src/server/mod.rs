//! The server: accepts connections, speaks the protocol, and turns requests
//! into commands for the single writer. One task reads each connection and
//! one writes it; commands reach the writer over its bounded channel, so a
//! flooding client meets back-pressure, never unbounded memory.
//!
//! - [`Limits`]: every bound a client can meet, with the error it sees.
//! - `auth`: tokens and the roles they grant (constant-time comparison).
//! - `connection`: one connection's handshake, reading, pipelining, output.
//! - [`Registry`]: which connection serves which agent; as the driver's
//!   publisher it sends dispatches and stop requests once they are durable.
//!
//! *Architecture invariant:* the server decides nothing about scheduling; it
//! translates frames to commands and answers to frames. Nothing it sends
//! reports an event that is not yet durable: answers and pushes come from the
//! driver's syncer side.

mod auth;
mod connection;
mod registry;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub use auth::{Tokens, TokensError};
pub use registry::Registry;

use crate::driver::DriverHandle;

/// Every bound a client can meet. Each has a default that suits a fleet of
/// agents on a LAN, and each is a setting.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest frame after the handshake.
    pub frame_length_max: usize,
    /// Largest frame before authentication: a peer that has not proven
    /// anything gets a few KiB, never more.
    pub frame_length_max_unauthenticated: usize,
    /// Largest payload of one job.
    pub payload_bytes_max: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub connections_max: usize,
    /// Requests of one connection being handled at once; the server stops
    /// reading the connection until one finishes.
    pub requests_in_flight_max: usize,
    /// Time to complete the handshake.
    pub handshake_timeout: Duration,
    /// Time a connection may hold a partial frame without progress.
    pub idle_frame_timeout: Duration,
    /// Bytes waiting to be written to one connection; a client that does
    /// not read its answers is disconnected at this bound.
    pub output_bytes_max: usize,
    /// Completions in one `Complete`, which the writer applies as one
    /// command: bounds its time on one request. At most
    /// [`crate::sched::COMPLETIONS_PER_COMMAND_MAX`].
    pub completions_per_request_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            frame_length_max: 16 << 20,
            frame_length_max_unauthenticated: 4 << 10,
            payload_bytes_max: 1 << 20,
            connections_max: 10_000,
            requests_in_flight_max: 1_024,
            handshake_timeout: Duration::from_secs(5),
            idle_frame_timeout: Duration::from_secs(60),
            output_bytes_max: 32 << 20,
            completions_per_request_max: 1_024,
        }
    }
}

pub struct ServerConfig {
    pub tokens: Tokens,
    pub limits: Limits,
    /// TLS on every connection; `None`: plain TCP.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Counts open connections; `None`: not counted.
    pub metrics: Option<Arc<crate::metrics::EngineMetrics>>,
}

/// What every connection shares.
struct Shared {
    driver: DriverHandle,
    registry: Arc<Registry>,
    tokens: Tokens,
    limits: Limits,
    /// Wraps each accepted stream in TLS, inside its connection's task.
    tls: Option<tokio_rustls::TlsAcceptor>,
    next_connection: AtomicU64,
}

/// Serves connections from `listener` until `shutdown` turns true, then
/// stops accepting and closes every connection. The driver is the caller's
/// to stop afterwards.
pub async fn serve(
    listener: TcpListener,
    driver: DriverHandle,
    registry: Arc<Registry>,
    config: ServerConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(Semaphore::new(config.limits.connections_max));
    let connections_open = config.metrics.as_ref().map(|m| m.connections.clone());
    let shared = Arc::new(Shared {
        driver,
        registry,
        tokens: config.tokens,
        limits: config.limits,
        tls: config.tls.map(tokio_rustls::TlsAcceptor::from),
        next_connection: AtomicU64::new(1),
    });
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
        let counted = connections_open.clone().map(Counted::new);
        tasks.spawn(async move {
            connection::run(id, stream, peer, shared, shutdown).await;
            drop(counted);
            drop(permit);
        });
        // Reap finished connection tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    tracing::info!("no longer accepting connections");
    while tasks.join_next().await.is_some() {}
}

/// One open connection on the connections gauge, taken off when dropped
/// (also when its task panics).
struct Counted(::metrics::Gauge);

impl Counted {
    fn new(gauge: ::metrics::Gauge) -> Counted {
        gauge.increment(1.0);
        Counted(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Whether an address is on this machine only.
pub fn is_loopback(address: &SocketAddr) -> bool {
    address.ip().is_loopback()
}

/// Everything `lanes serve` needs.
#[derive(Clone)]
pub struct EngineConfig {
    pub data: std::path::PathBuf,
    pub listen: SocketAddr,
    pub durability: crate::driver::Durability,
    pub scheduler: crate::sched::SchedulerConfig,
    /// Snapshot every this many durable events; `None`: never.
    pub snapshot_every_events: Option<u64>,
    /// How much finished work is kept; `None`: all of it, forever.
    pub retention: Option<crate::sched::Retention>,
    pub tokens: Tokens,
    pub limits: Limits,
    /// Cut a damaged log or pass over a damaged snapshot instead of
    /// refusing to start.
    pub repair: bool,
    /// Serve TLS with this certificate and key; `None`: plain TCP.
    pub tls: Option<crate::tls::TlsFiles>,
    /// The HTTP listener for `/metrics`, `/livez` and `/readyz`; `None`:
    /// none, and no metrics are recorded.
    pub http: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] crate::log::StoreError),
    #[error(transparent)]
    Start(#[from] crate::replay::StartError),
    #[error(transparent)]
    Driver(#[from] crate::driver::DriverError),
    #[error("listening on {address}: {error}")]
    Listen {
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error(
        "refusing to listen on {0} without tokens: configure tokens, or listen on loopback only"
    )]
    OpenToNetwork(SocketAddr),
    /// Not `#[from]`: the message holds the whole cause once.
    #[error("TLS: {0}")]
    Tls(crate::tls::TlsError),
    #[error("the engine stopped while starting")]
    Stopped,
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
}

/// A running engine: its log, its writer and its listener.
pub struct Running {
    address: SocketAddr,
    shutdown: watch::Sender<bool>,
    serving: tokio::task::JoinHandle<()>,
    driver: crate::driver::Driver,
    http: Option<crate::http::HttpServer>,
    pub report: crate::replay::StartReport,
}

/// Opens the data folder, recovers the state (snapshot + log), starts the
/// writer, records the restart (every lease restarts now), and listens.
pub async fn start(config: EngineConfig) -> Result<Running, EngineError> {
    use crate::driver::{Driver, DriverConfig, SnapshotPolicy};
    if config.tokens.is_open() && !is_loopback(&config.listen) {
        return Err(EngineError::OpenToNetwork(config.listen));
    }
    // Before anything is opened: a bad certificate or key is a start error.
    let tls = config
        .tls
        .as_ref()
        .map(crate::tls::server_config)
        .transpose()
        .map_err(EngineError::Tls)?;
    // Listening first: `/livez` and `/readyz` answer during the replay.
    let mut http = None;
    let mut metrics = None;
    if let Some(address) = config.http {
        let engine_metrics = crate::metrics::EngineMetrics::new();
        http = Some(crate::http::HttpServer::start(address, engine_metrics.clone()).await?);
        metrics = Some(engine_metrics);
    }
    let data = config.data.clone();
    let scheduler_config = config.scheduler.clone();
    let repair = config.repair;
    let (store, scheduler, report) = tokio::task::spawn_blocking(move || {
        let mut store = crate::log::SledStore::open(&data)?;
        let options = crate::replay::ReplayOptions { repair };
        let (scheduler, report) =
            crate::replay::recover(&data, &mut store, scheduler_config, options)?;
        Ok::<_, EngineError>((store, scheduler, report))
    })
    .await
    .map_err(|_| EngineError::Stopped)??;
    let registry = Arc::new(Registry::new());
    let driver_config = DriverConfig {
        durability: config.durability,
        snapshots: config
            .snapshot_every_events
            .map(|every_events| SnapshotPolicy {
                data: config.data.clone(),
                every_events,
                scheduler: config.scheduler.clone(),
            }),
        retention: config.retention,
        watched: Some(registry.watched()),
        metrics: metrics.clone(),
        ..DriverConfig::default()
    };
    let driver = Driver::start(
        scheduler,
        Box::new(store),
        driver_config,
        Box::new(registry.clone()),
    );
    driver
        .handle()
        .command(crate::sched::Command::Restarted)
        .await
        .map_err(|_| EngineError::Stopped)?
        .ok();
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|error| EngineError::Listen {
            address: config.listen,
            error,
        })?;
    let address = listener.local_addr().map_err(|error| EngineError::Listen {
        address: config.listen,
        error,
    })?;
    if config.tokens.is_open() {
        tracing::warn!(%address, "no tokens configured: every client is an admin; listening on loopback only");
    }
    let (shutdown, stop) = watch::channel(false);
    let server = ServerConfig {
        tokens: config.tokens,
        limits: config.limits,
        tls,
        metrics,
    };
    if let Some(http) = &http {
        http.serving(driver.handle(), registry.clone());
    }
    let serving = tokio::spawn(serve(listener, driver.handle(), registry, server, stop));
    tracing::info!(%address, "listening");
    Ok(Running {
        address,
        shutdown,
        serving,
        driver,
        http,
        report,
    })
}

impl Running {
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn driver(&self) -> crate::driver::DriverHandle {
        self.driver.handle()
    }

    /// The HTTP listener's address, if it has one.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|http| http.address())
    }

    /// From now on `/readyz` answers 503 (for good), while the engine goes
    /// on serving: load balancers stop sending before the engine stops.
    /// [`Running::stop`] does it first.
    pub fn withdraw_readiness(&self) {
        if let Some(http) = &self.http {
            http.stopping();
        }
    }

    /// Fails readiness, stops accepting, closes every connection, finishes
    /// the batch in hand, makes it durable and closes the log; the HTTP
    /// listener goes last.
    pub async fn stop(self) -> Result<crate::sched::Scheduler, EngineError> {
        self.withdraw_readiness();
        let _ = self.shutdown.send(true);
        let _ = self.serving.await;
        let driver = self.driver;
        let stopped = tokio::task::spawn_blocking(move || driver.stop()).await;
        if let Some(http) = self.http {
            http.close().await;
        }
        let scheduler = stopped.map_err(|_| EngineError::Stopped)??;
        Ok(scheduler)
    }
}
