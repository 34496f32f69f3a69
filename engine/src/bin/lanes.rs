//! The `lanes` command line. Wiring only: every rule lives in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use lanes::log::{verify, SledStore};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lanes: an event-sourced job dispatch engine.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect the durable log of a data folder (the engine must be stopped:
    /// sled allows one process at a time).
    #[command(subcommand)]
    Log(LogCommand),
}

#[derive(Subcommand, Debug)]
enum LogCommand {
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Log(LogCommand::Verify { data }) => {
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
        Command::Log(LogCommand::Print { data, from, to }) => {
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
        Command::Log(LogCommand::Snapshots { data }) => {
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
