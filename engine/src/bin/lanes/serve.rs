//! `lanes serve` and `lanes log`: the engine itself, and the inspection of
//! a stopped engine's data folder.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use lanes::driver::Durability;
use lanes::log::{verify, SledStore};
use lanes::protocol::Role;
use lanes::sched::SchedulerConfig;
use lanes::server::{self, EngineConfig, Limits, Tokens};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Where the log and snapshots live (created if missing).
    #[arg(long, env = "LANES_DATA", default_value = "lanes-data")]
    data: PathBuf,
    /// The protocol port. Without tokens only loopback addresses are allowed.
    #[arg(long, env = "LANES_LISTEN", default_value = "127.0.0.1:7070")]
    listen: std::net::SocketAddr,
    /// What an acknowledgement promises: `sync` (on stable storage), `interval=<ms>`
    /// (synced at most this often: a crash can lose that much acknowledged work),
    /// `none` (never synced by Lanes: for benchmarks).
    #[arg(long, env = "LANES_DURABILITY", default_value = "sync", value_parser = parse_durability)]
    durability: Durability,
    /// A token and the role it grants, as `ROLE=TOKEN` with ROLE one of agent,
    /// submitter, admin; repeatable. Tokens are at least 16 bytes.
    #[arg(long = "token", env = "LANES_TOKENS", value_delimiter = ',', value_parser = parse_token)]
    tokens: Vec<(Role, String)>,
    /// How long an agent's lease lasts without news from it, in milliseconds.
    #[arg(long, default_value_t = lanes::sched::LEASE_MS_DEFAULT)]
    lease_ms: u64,
    /// Take a snapshot (and trim the log) every this many durable events; 0: never.
    #[arg(long, default_value_t = 1_000_000)]
    snapshot_every: u64,
    /// Cut a damaged log at the first damaged record, or pass over a damaged
    /// snapshot, instead of refusing to start. Says exactly what it drops.
    #[arg(long)]
    repair: bool,
    /// The HTTP listener for /metrics, /livez and /readyz (no authentication:
    /// keep it on loopback or a private network); `off`: none.
    #[arg(long, env = "LANES_HTTP", default_value = "127.0.0.1:9090", value_parser = parse_http)]
    http: HttpAddress,
}

/// `--http`: an address, or `off`.
#[derive(Clone, Copy, Debug)]
struct HttpAddress(Option<std::net::SocketAddr>);

fn parse_http(text: &str) -> Result<HttpAddress, String> {
    if text == "off" {
        return Ok(HttpAddress(None));
    }
    text.parse()
        .map(|address| HttpAddress(Some(address)))
        .map_err(|_| format!("{text:?}: expected an address such as 127.0.0.1:9090, or off"))
}

fn parse_durability(text: &str) -> Result<Durability, String> {
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
    let role = match role {
        "agent" => Role::Agent,
        "submitter" => Role::Submitter,
        "admin" => Role::Admin,
        _ => return Err(format!("{role:?} is not a role: agent, submitter or admin")),
    };
    Ok((role, token.to_string()))
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
    let tokens = if args.tokens.is_empty() {
        Tokens::open()
    } else {
        Tokens::new(
            args.tokens
                .into_iter()
                .map(|(role, token)| (token.into_bytes(), role))
                .collect(),
        )?
    };
    let config = EngineConfig {
        data: args.data.clone(),
        listen: args.listen,
        durability: args.durability,
        scheduler: SchedulerConfig {
            lease_ms: args.lease_ms,
        },
        snapshot_every_events: (args.snapshot_every > 0).then_some(args.snapshot_every),
        tokens,
        limits: Limits::default(),
        repair: args.repair,
        http: args.http.0,
    };
    let running = server::start(config)
        .await
        .with_context(|| format!("starting on {}", args.data.display()))?;
    let report = &running.report;
    // The target the log line had before the binary had modules
    // (docs/OPERATIONS.md quotes it).
    tracing::info!(
        target: "lanes",
        data = %args.data.display(),
        snapshot = ?report.snapshot.as_ref().map(|s| s.0),
        records = report.replay.records,
        events = report.replay.events,
        "recovered"
    );
    eprintln!(
        "lanes: serving on {} (data in {})",
        running.address(),
        args.data.display()
    );
    systemd_notify(sd_notify::NotifyState::Ready);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let driver = running.driver();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        // Fail-stop: the log failed and the writer stopped. Stopping
        // reports why, and the process exits non-zero so a supervisor
        // restarts it (recovery replays what was durable).
        _ = driver.stopped() => eprintln!("lanes: the engine stopped by itself"),
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
