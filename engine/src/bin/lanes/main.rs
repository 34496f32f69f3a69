//! The `lanes` command line. Wiring only: every rule lives in the library.
//!
//! One file per command group: `serve` (the engine and `lanes log`),
//! `submit` (with `pipeline`, the run file format), `inspect` (`job`, `run`,
//! `queue`, `agents`), `agent`; `common` holds the options and exit codes
//! every client command shares, `output` the tables and JSON.

/// `println!` that ignores a closed stdout (`lanes queue list | head`):
/// the reader has what it wanted, and a panic would only add noise.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod agent;
mod common;
mod config;
mod inspect;
mod output;
mod pipeline;
mod serve;
mod submit;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lanes: an event-sourced job dispatch engine.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// How log lines on stderr look: `text` for people, `json` (one object
    /// a line) for collectors. Which lines: RUST_LOG (default `info`).
    #[arg(long, global = true, env = "LANES_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the engine: recover the data folder (snapshot + log), then serve
    /// agents, submitters and operators on the protocol port until SIGINT
    /// or SIGTERM, which stop it cleanly.
    Serve(serve::ServeArgs),
    /// Inspect the durable log of a data folder (the engine must be stopped:
    /// sled allows one process at a time).
    #[command(subcommand)]
    Log(serve::LogCommand),
    /// Submit one job (`-- command args…`) or a whole run from a pipeline
    /// file (`--file`); prints the run and job ids.
    Submit(submit::SubmitArgs),
    /// Show, re-prioritise, cancel or explain a job.
    Job(inspect::JobArgs),
    /// Show, re-prioritise or cancel a run.
    Run(inspect::RunArgs),
    /// List, show, pause, resume or configure queues.
    Queue(inspect::QueueArgs),
    /// List the agents the engine knows.
    Agents(inspect::AgentsArgs),
    /// Run jobs: register as an agent, take work as slots free, run each
    /// job's command as a child process and report how it ended.
    Agent(agent::AgentArgs),
    /// Print a completion script for a shell on stdout, e.g.
    /// `lanes completions bash > /etc/bash_completion.d/lanes`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        // Warnings (a torn tail cut, a repair, a failed snapshot) must be
        // seen without asking: `info` unless RUST_LOG says otherwise.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Logs to stderr; stdout is for data (`--json`, completions).
        .with_writer(std::io::stderr)
        // Colours for a terminal only: not into the journal or a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Command::Serve(args) => serve::serve_command(args),
        Command::Log(command) => serve::log_command(command),
        Command::Submit(args) => common::block_on(submit::submit(args)),
        Command::Job(args) => common::block_on(inspect::job(args)),
        Command::Run(args) => common::block_on(inspect::run(args)),
        Command::Queue(args) => common::block_on(inspect::queue(args)),
        Command::Agents(args) => common::block_on(inspect::agents(args)),
        Command::Agent(args) => common::block_on(agent::agent(args)),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "lanes", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            common::exit_code_of(&error)
        }
    }
}
