//! `lanes serve` and `lanes log`: the engine itself, and the inspection of
//! a stopped engine's data folder.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use lanes::driver::{system_clock, DriverHandle, Durability};
use lanes::log::{verify, SledStore};
use lanes::protocol::Role;
use lanes::sched::{Command, Retention, SchedulerConfig};
use lanes::server::{self, EngineConfig, Tokens};
use lanes::tls::TlsFiles;
use lanes::triggers::{self, Triggers};

use crate::common::{milliseconds, parse_duration};
use crate::config::{self, Config, Rules};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// A configuration file (TOML; docs/OPERATIONS.md, "Configuration
    /// reference"). Flags and environment variables override its settings;
    /// its queues, tag limits and triggers are applied at start and again on
    /// SIGHUP.
    #[arg(long, env = "LANES_CONFIG")]
    config: Option<PathBuf>,
    /// Where the log and snapshots live (created if missing). Default: lanes-data.
    #[arg(long, env = "LANES_DATA")]
    data: Option<PathBuf>,
    /// The protocol port. Without tokens only loopback addresses are
    /// allowed. Default: 127.0.0.1:7070.
    #[arg(long, env = "LANES_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// What an acknowledgement promises: `sync` (on stable storage, the
    /// default), `interval=<ms>` (synced at most this often: a crash can lose
    /// that much acknowledged work), `none` (never synced by Lanes: for
    /// benchmarks).
    #[arg(long, env = "LANES_DURABILITY", value_parser = parse_durability)]
    durability: Option<Durability>,
    /// A token and the role it grants, as `ROLE=TOKEN` with ROLE one of agent,
    /// submitter, admin; repeatable. Tokens are at least 16 bytes. Given
    /// here, they replace the configuration file's.
    #[arg(long = "token", env = "LANES_TOKENS", value_delimiter = ',', value_parser = parse_token, hide_env_values = true)]
    tokens: Vec<(Role, String)>,
    /// How long an agent's lease lasts without news from it, in
    /// milliseconds. Default: 30000.
    #[arg(long, env = "LANES_LEASE_MS")]
    lease_ms: Option<u64>,
    /// Take a snapshot (and trim the log) every this many durable events;
    /// 0: never. Default: 1000000.
    #[arg(long, env = "LANES_SNAPSHOT_EVERY")]
    snapshot_every: Option<u64>,
    /// How long a finished run (and its jobs) is kept before it is
    /// forgotten, e.g. `1h`, `30m`; its idempotency key is remembered this
    /// long too. Default: 1h.
    #[arg(long, env = "LANES_RETAIN_FINISHED", value_parser = parse_duration)]
    retain_finished: Option<std::time::Duration>,
    /// Most jobs of finished runs kept: past it the oldest finished runs are
    /// forgotten early. Bounds memory and snapshot size. Default: 100000.
    #[arg(long, env = "LANES_RETAIN_FINISHED_JOBS")]
    retain_finished_jobs: Option<u64>,
    /// Most idempotency keys remembered of forgotten runs (the oldest go
    /// first). Default: 1000000.
    #[arg(long, env = "LANES_RETAIN_KEYS")]
    retain_keys: Option<u64>,
    /// Cut a damaged log at the first damaged record, or pass over a damaged
    /// snapshot, instead of refusing to start. Says exactly what it drops.
    #[arg(long)]
    repair: bool,
    /// Serve TLS with this certificate chain (PEM, leaf first); needs
    /// --tls-key. Without both: plain TCP.
    #[arg(
        long,
        env = "LANES_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "LANES_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// The HTTP listener for /metrics, /livez and /readyz (no authentication:
    /// keep it on loopback or a private network); `off`: none. Default:
    /// 127.0.0.1:9090.
    #[arg(long, env = "LANES_HTTP", value_parser = parse_http)]
    http: Option<HttpAddress>,
}

/// `--http`: an address, or `off`.
#[derive(Clone, Copy, Debug)]
pub struct HttpAddress(pub Option<std::net::SocketAddr>);

pub fn parse_http(text: &str) -> Result<HttpAddress, String> {
    if text == "off" {
        return Ok(HttpAddress(None));
    }
    text.parse()
        .map(|address| HttpAddress(Some(address)))
        .map_err(|_| format!("{text:?}: expected an address such as 127.0.0.1:9090, or off"))
}

pub fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "sync" => Ok(Durability::Sync),
        "none" => Ok(Durability::None),
        _ => match text.strip_prefix("interval=").map(str::parse::<u64>) {
            Some(Ok(ms)) if ms > 0 => {
                Ok(Durability::Interval(std::time::Duration::from_millis(ms)))
            }
            _ => Err(format!(
                "{text:?}: expected sync, none or interval=<milliseconds>"
            )),
        },
    }
}

fn parse_token(text: &str) -> Result<(Role, String), String> {
    let (role, token) = text
        .split_once('=')
        .ok_or(format!("{text:?}: expected ROLE=TOKEN"))?;
    Ok((parse_role(role)?, token.to_string()))
}

pub fn parse_role(role: &str) -> Result<Role, String> {
    match role {
        "agent" => Ok(Role::Agent),
        "submitter" => Ok(Role::Submitter),
        "admin" => Ok(Role::Admin),
        _ => Err(format!("{role:?} is not a role: agent, submitter or admin")),
    }
}

#[derive(Subcommand, Debug)]
pub enum LogCommand {
    /// Check every record's checksum and the sequence's continuity, and read
    /// every snapshot. Changes nothing. Exit code 0: clean; 1: damage found.
    Verify {
        /// The data folder.
        #[arg(long, env = "LANES_DATA", default_value = "lanes-data")]
        data: PathBuf,
    },
    /// Print the events with sequences in a range, one per line.
    Print {
        #[arg(long, env = "LANES_DATA", default_value = "lanes-data")]
        data: PathBuf,
        /// The first sequence to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// The last sequence to print.
        #[arg(long, default_value_t = u64::MAX)]
        to: u64,
    },
    /// List the snapshots: the sequence each covers, its size and contents.
    Snapshots {
        #[arg(long, env = "LANES_DATA", default_value = "lanes-data")]
        data: PathBuf,
    },
}

pub fn serve_command(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Err(error) = lanes::allocator::tune_for_latency() {
        tracing::warn!(%error, "transparent huge pages stay on: expect latency spikes");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

pub fn log_command(command: LogCommand) -> anyhow::Result<ExitCode> {
    match command {
        LogCommand::Verify { data } => {
            let store = open_existing(&data)?;
            let summary = verify::verify(&store)?;
            println!(
                "log: {} records, {} events, {} bytes, sequences {}",
                summary.records,
                summary.events,
                summary.bytes,
                match (summary.first_seq, summary.last_seq) {
                    (Some(first), Some(last)) => format!("{first}..={last}"),
                    _ => "none".to_string(),
                }
            );
            let snapshots = verify::snapshots(&data)?;
            let mut damaged = !summary.findings.is_empty();
            for finding in &summary.findings {
                println!("DAMAGE: {finding}");
            }
            for snapshot in &snapshots {
                match &snapshot.contents {
                    Ok(_) => println!("snapshot {} (sequence {}): ok", snapshot.path, snapshot.seq),
                    Err(error) => {
                        damaged = true;
                        println!("DAMAGE: {error}");
                    }
                }
            }
            if let (Some(first), Some(newest)) = (summary.first_seq, snapshots.first()) {
                if first > newest.seq + 1 {
                    damaged = true;
                    println!(
                        "DAMAGE: the log starts at {first}, after the newest snapshot ({})",
                        newest.seq
                    );
                }
            }
            println!(
                "{}",
                if damaged {
                    "result: DAMAGED"
                } else {
                    "result: clean"
                }
            );
            Ok(if damaged {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        LogCommand::Print { data, from, to } => {
            let store = open_existing(&data)?;
            let mut damaged = false;
            verify::records(&store, from, to, &mut |record| {
                match record {
                    Ok(events) => {
                        for event in events {
                            println!("{:>10}  {:>13}  {:?}", event.seq, event.time, event.kind);
                        }
                    }
                    Err((seq, error)) => {
                        damaged = true;
                        println!("{seq:>10}  DAMAGED: {error}");
                    }
                }
                true
            })?;
            Ok(if damaged {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        LogCommand::Snapshots { data } => {
            for snapshot in verify::snapshots(&data)? {
                match snapshot.contents {
                    Ok((jobs, runs, queues, agents)) => println!(
                        "{}  sequence {}  {} bytes  {jobs} jobs, {runs} runs, {queues} queues, {agents} agents",
                        snapshot.path, snapshot.seq, snapshot.bytes
                    ),
                    Err(error) => println!("{}  sequence {}  DAMAGED: {error}", snapshot.path, snapshot.seq),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => config::read(path)?,
        None => Config::default(),
    };
    // A flag (or its environment variable) wins over the file, the file
    // over the built-in default.
    let retention = retention(&args, &file);
    let data = args
        .data
        .or(file.data)
        .unwrap_or_else(|| PathBuf::from("lanes-data"));
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:7070".parse().expect("an address"));
    let tokens = if args.tokens.is_empty() {
        file.tokens
    } else {
        args.tokens
    };
    let tokens = if tokens.is_empty() {
        Tokens::open()
    } else {
        Tokens::new(
            tokens
                .into_iter()
                .map(|(role, token)| (token.into_bytes(), role))
                .collect(),
        )?
    };
    let snapshot_every = args
        .snapshot_every
        .or(file.snapshot_every)
        .unwrap_or(1_000_000);
    let config = EngineConfig {
        data: data.clone(),
        listen,
        durability: args
            .durability
            .or(file.durability)
            .unwrap_or(Durability::Sync),
        scheduler: SchedulerConfig {
            lease_ms: args
                .lease_ms
                .or(file.lease_ms)
                .unwrap_or(lanes::sched::LEASE_MS_DEFAULT),
        },
        snapshot_every_events: (snapshot_every > 0).then_some(snapshot_every),
        retention: Some(retention),
        tokens,
        limits: file.limits,
        repair: args.repair,
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .or(file.tls)
            .map(|(cert, key)| TlsFiles { cert, key }),
        http: match args.http {
            Some(HttpAddress(address)) => address,
            None => match file.http.as_deref() {
                Some(text) => parse_http(text).map_err(anyhow::Error::msg)?.0,
                None => Some("127.0.0.1:9090".parse().expect("an address")),
            },
        },
    };
    let running = server::start(config)
        .await
        .with_context(|| format!("starting on {}", data.display()))?;
    let report = &running.report;
    // The target the log line had before the binary had modules
    // (docs/OPERATIONS.md quotes it).
    tracing::info!(
        target: "lanes",
        data = %data.display(),
        snapshot = ?report.snapshot.as_ref().map(|s| s.0),
        records = report.replay.records,
        events = report.replay.events,
        "recovered"
    );
    let driver = running.driver();
    let rules = file.rules;
    if args.config.is_some() {
        apply_rules(&driver, &rules).await?;
    }
    let triggers = triggers::spawn(driver.clone(), system_clock(), rules.triggers);
    // Handlers first: a supervisor may signal as soon as it hears READY,
    // and a SIGTERM before its handler would kill the process uncleanly.
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut drain = signal(SignalKind::user_defined1())?;
    let mut undrain = signal(SignalKind::user_defined2())?;
    eprintln!(
        "lanes: serving on {} (data in {})",
        running.address(),
        data.display()
    );
    systemd_notify(sd_notify::NotifyState::Ready);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            // Fail-stop: the log failed and the writer stopped. Stopping
            // reports why, and the process exits non-zero so a supervisor
            // restarts it (recovery replays what was durable).
            _ = driver.stopped() => {
                eprintln!("lanes: the engine stopped by itself");
                break;
            }
            _ = hangup.recv() => reload(args.config.as_deref(), &driver, &triggers).await,
            _ = drain.recv() => set_draining(&driver, true).await,
            _ = undrain.recv() => set_draining(&driver, false).await,
        }
    }
    eprintln!("lanes: stopping");
    systemd_notify(sd_notify::NotifyState::Stopping);
    let state = running.stop().await.context("stopping")?;
    eprintln!(
        "lanes: stopped cleanly at sequence {} (state digest {:032x})",
        state.last_seq(),
        state.digest()
    );
    Ok(())
}

/// The retention: flags, then the file, then the defaults.
fn retention(args: &ServeArgs, file: &Config) -> Retention {
    let defaults = Retention::default();
    Retention {
        finished_ms: args
            .retain_finished
            .map(milliseconds)
            .or(file.retain_finished_ms)
            .unwrap_or(defaults.finished_ms),
        finished_jobs: args
            .retain_finished_jobs
            .or(file.retain_finished_jobs)
            .unwrap_or(defaults.finished_jobs),
        keys: args
            .retain_keys
            .or(file.retain_keys)
            .unwrap_or(defaults.keys),
    }
}

/// Applies the file's queues and tag limits, each as the command an admin
/// would send, so each change is in the log. Unchanged ones record nothing.
async fn apply_rules(driver: &DriverHandle, rules: &Rules) -> anyhow::Result<()> {
    let mut commands: Vec<Command> = rules
        .queues
        .iter()
        .cloned()
        .map(Command::PutQueue)
        .collect();
    if let Some(tag_rules) = &rules.tag_rules {
        commands.push(Command::SetTagRules(tag_rules.clone()));
    }
    for command in commands {
        let description = format!("{command:?}");
        driver
            .command(command)
            .await
            .map_err(|_| anyhow::anyhow!("the engine stopped"))?
            .with_context(|| description)?;
    }
    Ok(())
}

/// SIGHUP: reads the file again and applies its queues, tag limits and
/// triggers. A bad file changes nothing and the engine runs on.
async fn reload(path: Option<&Path>, driver: &DriverHandle, triggers: &Triggers) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: there is no configuration file to reload (start with --config)");
        return;
    };
    let rules = match config::read(path) {
        Ok(file) => file.rules,
        Err(error) => {
            tracing::error!(%error, "SIGHUP: the configuration file was not reloaded");
            return;
        }
    };
    if let Err(error) = apply_rules(driver, &rules).await {
        tracing::error!(
            error = format!("{error:#}"),
            "SIGHUP: the reload stopped part way"
        );
        return;
    }
    let names: Vec<&str> = rules.triggers.iter().map(|t| t.name.as_str()).collect();
    tracing::info!(
        queues = rules.queues.len(),
        tag_limits = rules.tag_rules.as_ref().map(Vec::len),
        triggers = ?names,
        "SIGHUP: configuration reloaded (settings other than queues, tag limits and triggers take effect at restart)"
    );
    triggers.replace(rules.triggers);
}

/// SIGUSR1 drains (no new dispatch; running jobs finish), SIGUSR2 resumes.
async fn set_draining(driver: &DriverHandle, draining: bool) {
    match driver.command(Command::SetDraining { draining }).await {
        Ok(_) if draining => {
            tracing::warn!("SIGUSR1: draining: no new job is dispatched until SIGUSR2 or a restart")
        }
        Ok(_) => tracing::info!("SIGUSR2: dispatching again"),
        Err(_) => tracing::error!("the engine stopped"),
    }
}

/// Tells systemd (`Type=notify`) how the engine is; nothing without
/// `NOTIFY_SOCKET`. A failure to tell is logged, never fatal: the engine
/// serves either way, and systemd's own timeout reports a missing READY.
fn systemd_notify(state: sd_notify::NotifyState<'_>) {
    if let Err(error) = sd_notify::notify(false, &[state]) {
        tracing::warn!(%error, "telling systemd the engine's state failed");
    }
}

/// Opens the log of an existing data folder; never creates one.
fn open_existing(data: &Path) -> anyhow::Result<SledStore> {
    if !data.join("log").is_dir() {
        bail!(
            "{} is not a Lanes data folder (it has no log/)",
            data.display()
        );
    }
    SledStore::open(data).with_context(|| format!("opening the log in {}", data.display()))
}
