//! `lanes submit`: one job from flags, or a run from a pipeline file; with
//! `--wait`, follow it to its end and exit with its code.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use lanes::client::Client;
use lanes::model::{JobId, Outcome, Pair, RunSpec};
use lanes::protocol::{Message, WatchTarget};
use lanes::sched::view::JobStatus;
use serde_json::json;

use crate::common::{milliseconds, parse_duration, parse_pair, parse_priority, ClientOptions};
use crate::output;
use crate::pipeline;

/// Exit codes of `submit --wait` for outcomes that carry no exit code of
/// the job's own (docs/OPERATIONS.md, "Exit codes").
pub const EXIT_SKIPPED: u8 = 122;
pub const EXIT_QUEUE_TIMEOUT: u8 = 123;
pub const EXIT_DEADLINE_EXCEEDED: u8 = 124;
pub const EXIT_LOST: u8 = 125;
pub const EXIT_CANCELLED: u8 = 130;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  lanes submit --priority 10 --tag team=docs -- make test\n  lanes submit --file pipeline.yml --wait"
)]
pub struct SubmitArgs {
    #[command(flatten)]
    options: ClientOptions,
    /// The queue (default: `default`, or the file's `queue`).
    #[arg(long)]
    queue: Option<String>,
    /// The run's priority: an integer, higher runs first, negative allowed.
    #[arg(long, allow_negative_numbers = true, value_parser = parse_priority)]
    priority: Option<i32>,
    /// A tag KEY=VALUE on the run; repeatable.
    #[arg(long = "tag", value_parser = parse_pair)]
    tags: Vec<Pair>,
    /// A label KEY=VALUE the agent must have; repeatable.
    #[arg(long = "label", value_parser = parse_pair)]
    labels: Vec<Pair>,
    /// An environment variable KEY=VALUE for the command; repeatable.
    #[arg(long = "env", value_parser = parse_pair)]
    env: Vec<Pair>,
    /// End a job still waiting this long after it became waiting
    /// (QUEUE_TIMEOUT), e.g. 30s, 5m.
    #[arg(long, value_parser = parse_duration)]
    max_queued_time: Option<Duration>,
    /// End a job not finished this long after submission
    /// (DEADLINE_EXCEEDED), e.g. 1h.
    #[arg(long, value_parser = parse_duration)]
    deadline: Option<Duration>,
    /// Attempts a job gets when its agent's lease is lost (default 3).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Submitting again with the same key returns the first submission's ids.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// A pipeline file (.yml, .yaml, .toml) shaped like a Buildkite
    /// pipeline; the flags above override its top-level keys.
    #[arg(long, conflicts_with = "command")]
    file: Option<PathBuf>,
    /// Follow the run to its end; exit with the job's exit code (a run: 0
    /// if every job succeeded, else the first failed job's code).
    #[arg(long)]
    wait: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required_unless_present = "file", value_name = "COMMAND")]
    command: Vec<String>,
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let spec = spec(&args)?;
    let client = args.options.connect().await?;
    let submitted = client.submit(spec).await.context("submitting")?;
    let jobs: Vec<JobId> = (0..u64::from(submitted.count))
        .map(|offset| JobId(submitted.first_job.0 + offset))
        .collect();
    if !args.options.json {
        let ids = match jobs.as_slice() {
            [job] => job.to_string(),
            [first, .., last] => format!("jobs {} to {}", first.0, last.0),
            [] => "no job".into(),
        };
        out!(
            "submitted {}: {ids}{}",
            submitted.run,
            if submitted.replayed {
                " (an earlier submission with this idempotency key)"
            } else {
                ""
            }
        );
    }
    let mut document = json!({
        "run": submitted.run.0,
        "jobs": jobs.iter().map(|job| job.0).collect::<Vec<_>>(),
        "replayed": submitted.replayed,
    });
    if !args.wait {
        if args.options.json {
            output::print_json(&document);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let ended = follow(&client, submitted.run).await?;
    let code = exit_code(&jobs, &ended);
    if args.options.json {
        document["outcomes"] = jobs
            .iter()
            .map(|job| {
                let (outcome, exit_code) = ended[job];
                json!({"job": job.0, "outcome": outcome.name(), "exit_code": exit_code})
            })
            .collect();
        document["exit_code"] = code.into();
        output::print_json(&document);
    }
    Ok(ExitCode::from(code))
}

/// The run to submit: from the file, or one job from the command line.
fn spec(args: &SubmitArgs) -> anyhow::Result<RunSpec> {
    let mut run = match &args.file {
        Some(path) => pipeline::read(path)?,
        None => pipeline::Pipeline {
            steps: vec![pipeline::Step {
                argv: args.command.clone(),
                ..pipeline::Step::default()
            }],
            ..pipeline::Pipeline::default()
        },
    };
    // The flags override the file's top level, key by key.
    let defaults = &mut run.defaults;
    if args.queue.is_some() {
        defaults.queue = args.queue.clone();
    }
    if args.priority.is_some() {
        defaults.priority = args.priority;
    }
    merge(&mut defaults.tags, &args.tags);
    merge(&mut defaults.labels, &args.labels);
    if let Some(duration) = args.max_queued_time {
        defaults.max_queued_time_ms = Some(milliseconds(duration));
    }
    if let Some(duration) = args.deadline {
        defaults.deadline_ms = Some(milliseconds(duration));
    }
    if args.max_attempts.is_some() {
        defaults.max_attempts = args.max_attempts;
    }
    run.env.extend(args.env.iter().cloned());
    if run.steps.iter().any(|step| step.argv.is_empty()) {
        bail!("no command: give one after `--`, or --file");
    }
    Ok(run.into_run(args.idempotency_key.clone()))
}

/// Sets each pair in `pairs`, replacing a value for the same key.
fn merge(pairs: &mut Vec<Pair>, overrides: &[Pair]) {
    for (key, value) in overrides {
        match pairs.iter_mut().find(|(existing, _)| existing == key) {
            Some(pair) => pair.1 = value.clone(),
            None => pairs.push((key.clone(), value.clone())),
        }
    }
}

/// Watches the run until its last job finishes; reports each change on
/// stderr. Returns every job's outcome and exit code.
async fn follow(
    client: &Client,
    run: lanes::model::RunId,
) -> anyhow::Result<BTreeMap<JobId, (Outcome, Option<i32>)>> {
    let watch = client
        .watch(WatchTarget::Run(run))
        .await
        .context("watching the run")?;
    let mut ended = BTreeMap::new();
    let mut last_seen: BTreeMap<JobId, JobStatus> = BTreeMap::new();
    loop {
        let Some(frame) = client.next_push().await else {
            bail!("the connection closed while waiting; the run goes on: `lanes run show {}` tells how it ends", run.0);
        };
        let Message::JobUpdate(update) = frame.message else {
            continue;
        };
        if frame.request_id != watch {
            continue;
        }
        if last_seen.get(&update.job) != Some(&update.status) {
            eprintln!("{}: {}", update.job, output::status(&update.status));
            last_seen.insert(update.job, update.status);
        }
        if let JobStatus::Finished {
            outcome, exit_code, ..
        } = update.status
        {
            ended.insert(update.job, (outcome, exit_code));
        }
        if update.last {
            return Ok(ended);
        }
    }
}

/// 0 if every job succeeded; else the first job (in upload order) that did
/// not, preferring one that was not SKIPPED (a skip follows a failure).
fn exit_code(jobs: &[JobId], ended: &BTreeMap<JobId, (Outcome, Option<i32>)>) -> u8 {
    let unsuccessful: Vec<(Outcome, Option<i32>)> = jobs
        .iter()
        .filter_map(|job| ended.get(job).copied())
        .filter(|(outcome, _)| !outcome.is_success())
        .collect();
    let first = unsuccessful
        .iter()
        .find(|(outcome, _)| *outcome != Outcome::Skipped)
        .or(unsuccessful.first());
    match first {
        None => 0,
        Some((outcome, exit_code)) => outcome_exit_code(*outcome, *exit_code),
    }
}

fn outcome_exit_code(outcome: Outcome, exit_code: Option<i32>) -> u8 {
    match outcome {
        Outcome::Succeeded => 0,
        // A failure is never 0, even when its code is 0 modulo 256.
        Outcome::Failed => match exit_code.map(|code| code.rem_euclid(256) as u8) {
            Some(0) | None => 1,
            Some(code) => code,
        },
        Outcome::Cancelled => EXIT_CANCELLED,
        Outcome::Skipped => EXIT_SKIPPED,
        Outcome::QueueTimeout => EXIT_QUEUE_TIMEOUT,
        Outcome::DeadlineExceeded => EXIT_DEADLINE_EXCEEDED,
        Outcome::Lost => EXIT_LOST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_is_the_first_unsuccessful_jobs_and_never_zero_for_a_failure() {
        let jobs = [JobId(1), JobId(2), JobId(3)];
        let ended = |outcomes: [(Outcome, Option<i32>); 3]| {
            jobs.iter()
                .copied()
                .zip(outcomes)
                .collect::<BTreeMap<_, _>>()
        };
        let ok = (Outcome::Succeeded, Some(0));
        assert_eq!(exit_code(&jobs, &ended([ok, ok, ok])), 0);
        assert_eq!(
            exit_code(
                &jobs,
                &ended([ok, (Outcome::Failed, Some(4)), (Outcome::Skipped, None)])
            ),
            4
        );
        assert_eq!(
            exit_code(
                &jobs,
                &ended([
                    (Outcome::Skipped, None),
                    (Outcome::Cancelled, Some(143)),
                    ok
                ])
            ),
            EXIT_CANCELLED
        );
        assert_eq!(outcome_exit_code(Outcome::Failed, Some(256)), 1);
        assert_eq!(outcome_exit_code(Outcome::Failed, Some(-9)), 247);
        assert_eq!(outcome_exit_code(Outcome::Lost, None), EXIT_LOST);
    }
}
