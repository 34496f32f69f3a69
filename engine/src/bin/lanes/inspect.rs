//! `lanes job`, `lanes run`, `lanes queue`, `lanes agents`: what operators
//! and submitters ask of the engine about work already there.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use lanes::client::{Client, ClientError};
use lanes::model::{ErrorCode, JobId, QueueConfig, RunId, DEFAULT_POOL};
use lanes::protocol::{ErrorAnswer, GetJob, JobInfo, Message};
use serde_json::json;

use crate::common::{parse_priority, ClientOptions};
use crate::output;

/// Requests in flight at once when fetching a run's jobs: well under the
/// server's per-connection limit (1 024), so it never stops reading us.
const JOB_REQUESTS_IN_FLIGHT_MAX: usize = 256;

#[derive(clap::Args, Debug)]
pub struct JobArgs {
    #[command(flatten)]
    options: ClientOptions,
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Subcommand, Debug)]
enum JobCommand {
    /// A job's state, options and command.
    Show { job: u64 },
    /// Set a waiting or held job's priority; it goes to the end of its new
    /// level.
    Priority {
        job: u64,
        #[arg(allow_negative_numbers = true, value_parser = parse_priority)]
        priority: i32,
    },
    /// Cancel a job: at once if it waits; a running job is asked to stop.
    Cancel { job: u64 },
    /// Where a job stands and every reason it is not running.
    Explain { job: u64 },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    options: ClientOptions,
    #[command(subcommand)]
    command: RunCommand,
}

#[derive(Subcommand, Debug)]
enum RunCommand {
    /// A run and its jobs.
    Show { run: u64 },
    /// Set a run's priority: its waiting and held jobs without a priority of
    /// their own go to the end of the new level.
    Priority {
        run: u64,
        #[arg(allow_negative_numbers = true, value_parser = parse_priority)]
        priority: i32,
    },
    /// Cancel every unfinished job of a run.
    Cancel { run: u64 },
}

#[derive(clap::Args, Debug)]
pub struct QueueArgs {
    #[command(flatten)]
    options: ClientOptions,
    #[command(subcommand)]
    command: QueueCommand,
}

#[derive(Subcommand, Debug)]
enum QueueCommand {
    /// Every queue with its counts and limits.
    List,
    /// One queue's configuration and counts.
    Show { name: String },
    /// Dispatch nothing from the queue (it still accepts submissions).
    Pause { name: String },
    /// Dispatch from the queue again.
    Resume { name: String },
    /// Create a queue, or replace its whole configuration (admin role).
    Put(PutQueueArgs),
}

#[derive(clap::Args, Debug)]
struct PutQueueArgs {
    name: String,
    /// Order between queues sharing agents: higher first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = parse_priority)]
    priority: i32,
    /// An agent pool whose agents take the queue's jobs; repeatable.
    #[arg(long = "pool", default_value = DEFAULT_POOL)]
    pools: Vec<String>,
    /// At most this many of its jobs run at once.
    #[arg(long)]
    action_concurrency: Option<u32>,
    /// At most this many of its runs are active at once.
    #[arg(long)]
    run_concurrency: Option<u32>,
    /// At most this many jobs held, waiting or running in it.
    #[arg(long)]
    depth: Option<u32>,
    /// Accept only priority 0 in this queue.
    #[arg(long)]
    no_priority: bool,
    /// Create or leave it paused.
    #[arg(long)]
    paused: bool,
}

#[derive(clap::Args, Debug)]
pub struct AgentsArgs {
    #[command(flatten)]
    options: ClientOptions,
}

pub async fn job(args: JobArgs) -> anyhow::Result<ExitCode> {
    let client = args.options.connect().await?;
    let json = args.options.json;
    match args.command {
        JobCommand::Show { job } => {
            let info = client.job(JobId(job)).await?;
            if json {
                output::print_json(&output::job_json(&info));
            } else {
                output::job_fields(&info);
            }
        }
        JobCommand::Priority { job, priority } => {
            client.change_job_priority(JobId(job), priority).await?;
            done(
                json,
                json!({"job": job, "priority": priority}),
                format!("{}: priority {priority}", JobId(job)),
            );
        }
        JobCommand::Cancel { job } => {
            client.cancel_job(JobId(job)).await?;
            let info = client.job(JobId(job)).await?;
            done(
                json,
                json!({"job": job, "status": output::status_json(&info.status)}),
                format!("{}: {}", JobId(job), output::status(&info.status)),
            );
        }
        JobCommand::Explain { job } => {
            let explanation = client.explain(JobId(job)).await?;
            if json {
                output::print_json(&output::explanation_json(&explanation));
            } else {
                output::explanation(&explanation);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let client = args.options.connect().await?;
    let json = args.options.json;
    match args.command {
        RunCommand::Show { run } => {
            let info = client.run(RunId(run)).await?;
            let jobs = jobs(&client, &info.jobs).await?;
            if json {
                output::print_json(&output::run_json(&info, &jobs));
            } else {
                output::run_fields(&info);
                out!("");
                output::jobs_table(&jobs);
            }
        }
        RunCommand::Priority { run, priority } => {
            client.change_run_priority(RunId(run), priority).await?;
            done(
                json,
                json!({"run": run, "priority": priority}),
                format!("{}: priority {priority}", RunId(run)),
            );
        }
        RunCommand::Cancel { run } => {
            client.cancel_run(RunId(run)).await?;
            let info = client.run(RunId(run)).await?;
            done(
                json,
                json!({"run": run, "unfinished": info.unfinished}),
                format!(
                    "{}: cancelled ({} jobs still stopping)",
                    RunId(run),
                    info.unfinished
                ),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Fetches jobs with requests pipelined, a bounded number at a time.
async fn jobs(client: &Client, ids: &[JobId]) -> anyhow::Result<Vec<JobInfo>> {
    let mut jobs = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(JOB_REQUESTS_IN_FLIGHT_MAX) {
        let mut answers = Vec::with_capacity(chunk.len());
        for &job in chunk {
            answers.push(client.send(GetJob { job }.into()).await?.1);
        }
        for answer in answers {
            match answer.await.map_err(|_| ClientError::Closed)? {
                Message::JobInfo(info) => jobs.push(info),
                Message::Error(error) => return Err(ClientError::Server(error).into()),
                other => anyhow::bail!(
                    "the engine answered {} to GetJob",
                    other.message_type().name()
                ),
            }
        }
    }
    Ok(jobs)
}

pub async fn queue(args: QueueArgs) -> anyhow::Result<ExitCode> {
    let client = args.options.connect().await?;
    let json = args.options.json;
    match args.command {
        QueueCommand::List => {
            let queues = client.queues().await?;
            if json {
                output::print_json(&json!({
                    "queues": queues.iter().map(output::queue_json).collect::<Vec<_>>()
                }));
            } else {
                output::queues_table(&queues);
            }
        }
        QueueCommand::Show { name } => {
            let queues = client.queues().await?;
            let Some(queue) = queues.iter().find(|queue| queue.config.name == name) else {
                // The engine has no request for one queue: this is the
                // answer it gives to every other request naming it.
                return Err(ClientError::Server(ErrorAnswer::new(
                    ErrorCode::NotFound,
                    format!("unknown queue {name:?}"),
                ))
                .into());
            };
            if json {
                output::print_json(&output::queue_json(queue));
            } else {
                output::queue_fields(queue);
            }
        }
        QueueCommand::Pause { name } => {
            client.pause_queue(&name).await?;
            done(
                json,
                json!({"queue": name, "paused": true}),
                format!("queue {name:?} paused"),
            );
        }
        QueueCommand::Resume { name } => {
            client.resume_queue(&name).await?;
            done(
                json,
                json!({"queue": name, "paused": false}),
                format!("queue {name:?} resumed"),
            );
        }
        QueueCommand::Put(put) => {
            let config = QueueConfig {
                name: put.name.clone(),
                priority: put.priority,
                pools: put.pools,
                action_concurrency: put.action_concurrency,
                run_concurrency: put.run_concurrency,
                depth: put.depth,
                priority_supported: !put.no_priority,
                paused: put.paused,
            };
            client
                .put_queue(config)
                .await
                .with_context(|| format!("configuring queue {:?}", put.name))?;
            done(
                json,
                json!({"queue": put.name}),
                format!("queue {:?} configured", put.name),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn agents(args: AgentsArgs) -> anyhow::Result<ExitCode> {
    let client = args.options.connect().await?;
    let agents = client.agents().await?;
    if args.options.json {
        output::print_json(&json!({
            "agents": agents.iter().map(output::agent_json).collect::<Vec<_>>()
        }));
    } else {
        output::agents_table(&agents);
    }
    Ok(ExitCode::SUCCESS)
}

/// A change was made: says so, for people or as JSON.
fn done(json: bool, document: serde_json::Value, text: String) {
    if json {
        output::print_json(&document);
    } else {
        out!("{text}");
    }
}
