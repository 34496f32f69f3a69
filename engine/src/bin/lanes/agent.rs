//! `lanes agent`: wires an [`AgentSession`] to the job runner
//! ([`lanes::runner::work`]) and the process's signals. The running of jobs
//! lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use lanes::agent_session::{AgentConfig, AgentSession};
use lanes::client::{Client, ClientError};
use lanes::model::{Pair, DEFAULT_POOL};
use lanes::protocol::Role;
use lanes::runner::{self, Output, RunnerConfig, Shutdown, WorkConfig};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::common::{connect_options, parse_duration, parse_pair, EXIT_REFUSED};

/// The first wait after a failed connection; it doubles up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The engine's protocol address, HOST:PORT.
    #[arg(long, env = "LANES_SERVER", default_value = "127.0.0.1:7070")]
    server: String,
    /// The token to present (role agent or admin); empty for an engine
    /// without tokens.
    #[arg(
        long,
        env = "LANES_TOKEN",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    token: String,
    /// Speak TLS, trusting the CA certificates of this PEM file (and no
    /// others). Without it: plain TCP.
    #[arg(long, env = "LANES_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The name the engine's certificate must carry. Default: the host of
    /// --server.
    #[arg(long, env = "LANES_TLS_SERVER_NAME", value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Identifies the agent across connections and restarts: give each agent
    /// its own. Default: HOSTNAME-PID.
    #[arg(long, env = "LANES_AGENT_NAME")]
    name: Option<String>,
    /// A pool the agent serves; repeatable.
    #[arg(long = "pool", default_value = DEFAULT_POOL)]
    pools: Vec<String>,
    /// A label KEY=VALUE the agent has; repeatable.
    #[arg(long = "label", value_parser = parse_pair)]
    labels: Vec<Pair>,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// The longest silence towards the engine: keep it under a third of the
    /// engine's --lease-ms (30 s by default).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    heartbeat: Duration,
    /// Between SIGTERM and SIGKILL when a job is stopped.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    stop_grace: Duration,
    /// Write each job's stdout and stderr to FOLDER/job-<job>-<attempt>.log
    /// instead of the agent's own.
    #[arg(long, value_name = "FOLDER")]
    output: Option<PathBuf>,
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if args.slots == 0 {
        bail!("--slots: an agent runs at least one job at once");
    }
    if args.heartbeat.is_zero() {
        bail!("--heartbeat: must be above zero");
    }
    if let Some(folder) = &args.output {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("creating the output folder {}", folder.display()))?;
    }
    let name = match &args.name {
        Some(name) => name.clone(),
        None => format!("{}-{}", hostname(), std::process::id()),
    };
    // One look before the session, which retries for ever: a token the
    // engine refuses, a role that may not run jobs, or a registration it
    // refuses (a bad name, pool or label) is an error now, not a warning
    // repeated every few seconds. Registering here is what the session does
    // next anyway (with no running jobs).
    let connect_options = connect_options(
        &args.server,
        args.tls_ca.as_deref(),
        args.tls_server_name.as_deref(),
    )?;
    match Client::connect_with(
        args.server.as_str(),
        &connect_options,
        args.token.as_bytes(),
        &name,
    )
    .await
    {
        Ok(client) if !matches!(client.role(), Role::Agent | Role::Admin) => {
            eprintln!(
                "error: the token grants the {:?} role; an agent needs the agent or admin role",
                client.role()
            );
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
        Ok(client) => {
            let registered = client
                .register(
                    &name,
                    args.pools.clone(),
                    args.labels.clone(),
                    args.slots,
                    Vec::new(),
                )
                .await;
            if let Err(error @ ClientError::Server(_)) = registered {
                return Err(error).context("registering");
            }
        }
        Err(error @ ClientError::Server(_)) => {
            return Err(error).context(format!("connecting to {}", args.server))
        }
        // Not reachable now: the session waits for the engine.
        Err(_) => {}
    }
    // From here SIGINT and SIGTERM are the agent's: the first drains, the
    // second terminates (docs/OPERATIONS.md, "Running jobs").
    let (orders, shutdown) = watch::channel(None);
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::spawn(async move {
        for order in [Shutdown::Drain, Shutdown::Terminate] {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            if order == Shutdown::Drain {
                eprintln!("lanes agent: finishing the running jobs; signal again to stop them");
            }
            orders.send_replace(Some(order));
        }
        // Keeps the orders' sender, so `work` never takes its loss for one.
        std::future::pending::<()>().await;
    });
    eprintln!(
        "lanes agent: {name} connecting to {} (pools {}, {} slots)",
        args.server,
        args.pools.join(","),
        args.slots
    );
    let connect = AgentSession::connect(AgentConfig {
        address: args.server.clone(),
        token: args.token.into_bytes(),
        name,
        pools: args.pools,
        labels: args.labels,
        slots: args.slots,
        backoff_min: BACKOFF_MIN,
        backoff_max: BACKOFF_MAX,
        connect: connect_options,
    });
    let mut stop = shutdown.clone();
    let session = tokio::select! {
        session = connect => session,
        // Nothing runs yet: any signal stops the wait for the engine.
        _ = stop.changed() => {
            eprintln!("lanes agent: stopped before connecting");
            return Ok(ExitCode::SUCCESS);
        }
    };
    runner::work(
        session,
        WorkConfig {
            slots: args.slots,
            heartbeat: args.heartbeat,
            runner: RunnerConfig {
                stop_grace: args.stop_grace,
                output: args.output.map_or(Output::Inherit, Output::Folder),
            },
        },
        shutdown,
    )
    .await;
    eprintln!("lanes agent: stopped");
    Ok(ExitCode::SUCCESS)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "agent".into())
}
