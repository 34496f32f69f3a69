//! How answers are shown: aligned tables and `field  value` lines for
//! people, one JSON document for programs. Data goes to stdout; logs and
//! progress go to stderr.

use std::time::{Duration, UNIX_EPOCH};

use lanes::model::Pair;
use lanes::protocol::{AgentInfo, JobInfo, QueueInfo, RunInfo};
use lanes::runner::Payload;
use lanes::sched::view::{BlockReason, Explanation, JobStatus};
use serde_json::{json, Value};

/// Prints rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        assert_eq!(row.len(), header.len(), "every row has every column");
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        out!("{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Prints `field  value` lines, fields aligned.
pub fn fields(lines: &[(&str, String)]) {
    let width = lines
        .iter()
        .map(|(field, _)| field.len())
        .max()
        .unwrap_or(0);
    for (field, value) in lines {
        out!("{field:<width$}  {value}");
    }
}

pub fn print_json(value: &Value) {
    out!("{value}");
}

pub fn pairs(pairs: &[Pair]) -> String {
    if pairs.is_empty() {
        return "-".into();
    }
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn pairs_json(pairs: &[Pair]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(key, value)| (key.clone(), Value::String(value.clone())))
            .collect(),
    )
}

pub fn limit(limit: Option<u32>) -> String {
    limit.map_or("-".into(), |limit| limit.to_string())
}

/// The engine's times are milliseconds since the Unix epoch.
pub fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub fn status(status: &JobStatus) -> String {
    match status {
        JobStatus::Held => "HELD".into(),
        JobStatus::Waiting => "WAITING".into(),
        JobStatus::Running {
            agent,
            stopping: None,
        } => format!("RUNNING on {agent}"),
        JobStatus::Running {
            agent,
            stopping: Some(reason),
        } => format!(
            "RUNNING on {agent}, stopping ({})",
            lanes::model::Outcome::from(*reason)
        ),
        JobStatus::Finished {
            outcome,
            exit_code: Some(code),
            ..
        } => format!("{outcome} (exit code {code})"),
        JobStatus::Finished { outcome, .. } => outcome.to_string(),
    }
}

pub fn status_json(status: &JobStatus) -> Value {
    match status {
        JobStatus::Held => json!({"state": "HELD"}),
        JobStatus::Waiting => json!({"state": "WAITING"}),
        JobStatus::Running { agent, stopping } => json!({
            "state": "RUNNING",
            "agent": agent.0,
            "stopping": stopping.map(|reason| lanes::model::Outcome::from(reason).name()),
        }),
        JobStatus::Finished {
            outcome,
            exit_code,
            at,
        } => json!({
            "state": "FINISHED",
            "outcome": outcome.name(),
            "exit_code": exit_code,
            "at": at,
        }),
    }
}

/// The command a payload runs, for people: its words, quoted where needed.
pub fn command(payload: &[u8]) -> String {
    match Payload::decode(payload) {
        Ok(payload) => payload
            .argv
            .iter()
            .map(|word| shell_quote(word))
            .collect::<Vec<_>>()
            .join(" "),
        Err(error) => format!("({error})"),
    }
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn payload_json(payload: &[u8]) -> Value {
    match Payload::decode(payload) {
        Ok(payload) => json!({
            "argv": payload.argv,
            "env": payload.env,
            "label": payload.label,
        }),
        Err(error) => json!({"error": error.to_string(), "bytes": payload.len()}),
    }
}

pub fn job_fields(job: &JobInfo) {
    let label = Payload::decode(&job.payload)
        .ok()
        .and_then(|payload| payload.label)
        .unwrap_or_else(|| "-".into());
    fields(&[
        ("job", job.id.0.to_string()),
        ("run", job.run.0.to_string()),
        ("label", label),
        ("queue", job.queue.clone()),
        ("status", status(&job.status)),
        (
            "priority",
            format!(
                "{} ({})",
                job.priority,
                if job.own_priority {
                    "its own"
                } else {
                    "its run's"
                }
            ),
        ),
        (
            "attempt",
            format!("{} of {}", job.attempt, job.max_attempts),
        ),
        ("stage", job.stage.to_string()),
        ("tags", pairs(&job.tags)),
        ("labels", pairs(&job.labels)),
        ("submitted", time(job.submitted_at)),
        (
            "max queued",
            job.max_queued_time_ms.map_or("-".into(), |ms| {
                humantime::format_duration(Duration::from_millis(ms)).to_string()
            }),
        ),
        ("deadline", job.deadline_at.map_or("-".into(), time)),
        ("command", command(&job.payload)),
    ]);
}

pub fn job_json(job: &JobInfo) -> Value {
    json!({
        "id": job.id.0,
        "run": job.run.0,
        "queue": job.queue,
        "status": status_json(&job.status),
        "priority": job.priority,
        "own_priority": job.own_priority,
        "position": job.position,
        "upload": job.upload,
        "stage": job.stage,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "tags": pairs_json(&job.tags),
        "labels": pairs_json(&job.labels),
        "submitted_at": job.submitted_at,
        "waiting_since": job.waiting_since,
        "max_queued_time_ms": job.max_queued_time_ms,
        "deadline_at": job.deadline_at,
        "payload": payload_json(&job.payload),
    })
}

pub fn run_fields(run: &RunInfo) {
    fields(&[
        ("run", run.id.0.to_string()),
        ("queue", run.queue.clone()),
        ("priority", run.priority.to_string()),
        ("submitted", time(run.submitted_at)),
        ("jobs", run.jobs.len().to_string()),
        ("unfinished", run.unfinished.to_string()),
        ("active", run.active.to_string()),
        ("failed", run.failed.to_string()),
    ]);
}

pub fn run_json(run: &RunInfo, jobs: &[JobInfo]) -> Value {
    json!({
        "id": run.id.0,
        "queue": run.queue,
        "priority": run.priority,
        "position": run.position,
        "submitted_at": run.submitted_at,
        "unfinished": run.unfinished,
        "active": run.active,
        "failed": run.failed,
        "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
    })
}

pub fn jobs_table(jobs: &[JobInfo]) {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            vec![
                job.id.0.to_string(),
                job.queue.clone(),
                job.priority.to_string(),
                status(&job.status),
                command(&job.payload),
            ]
        })
        .collect();
    table(&["JOB", "QUEUE", "PRIORITY", "STATUS", "COMMAND"], &rows);
}

pub fn queues_table(queues: &[QueueInfo]) {
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|queue| {
            vec![
                queue.config.name.clone(),
                queue.config.priority.to_string(),
                queue.waiting.to_string(),
                queue.running.to_string(),
                queue.held.to_string(),
                limit(queue.config.depth),
                limit(queue.config.action_concurrency),
                limit(queue.config.run_concurrency),
                queue.active_runs.to_string(),
                if queue.config.paused { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    table(
        &[
            "QUEUE",
            "PRIORITY",
            "WAITING",
            "RUNNING",
            "HELD",
            "DEPTH",
            "ACTION",
            "RUNS",
            "ACTIVE RUNS",
            "PAUSED",
        ],
        &rows,
    );
}

pub fn queue_fields(queue: &QueueInfo) {
    let config = &queue.config;
    fields(&[
        ("queue", config.name.clone()),
        ("priority", config.priority.to_string()),
        ("pools", config.pools.join(",")),
        ("paused", config.paused.to_string()),
        ("priority supported", config.priority_supported.to_string()),
        ("depth limit", limit(config.depth)),
        ("action concurrency", limit(config.action_concurrency)),
        ("run concurrency", limit(config.run_concurrency)),
        ("waiting", queue.waiting.to_string()),
        ("running", queue.running.to_string()),
        ("held", queue.held.to_string()),
        ("active runs", queue.active_runs.to_string()),
        ("submitted (total)", queue.submitted_total.to_string()),
        ("dispatched (total)", queue.dispatched_total.to_string()),
        ("finished (total)", queue.finished_total.to_string()),
    ]);
}

pub fn queue_json(queue: &QueueInfo) -> Value {
    let config = &queue.config;
    json!({
        "name": config.name,
        "priority": config.priority,
        "pools": config.pools,
        "paused": config.paused,
        "priority_supported": config.priority_supported,
        "depth": config.depth,
        "action_concurrency": config.action_concurrency,
        "run_concurrency": config.run_concurrency,
        "waiting": queue.waiting,
        "running": queue.running,
        "held": queue.held,
        "active_runs": queue.active_runs,
        "submitted_total": queue.submitted_total,
        "dispatched_total": queue.dispatched_total,
        "finished_total": queue.finished_total,
    })
}

pub fn agents_table(agents: &[AgentInfo]) {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|agent| {
            vec![
                agent.id.0.to_string(),
                agent.name.clone(),
                agent.pools.join(","),
                pairs(&agent.labels),
                agent.slots.to_string(),
                if agent.running.is_empty() {
                    "-".into()
                } else {
                    agent
                        .running
                        .iter()
                        .map(|job| job.0.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                if agent.present { "yes" } else { "no" }.into(),
                agent.requested.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "AGENT",
            "NAME",
            "POOLS",
            "LABELS",
            "SLOTS",
            "RUNNING",
            "PRESENT",
            "REQUESTED",
        ],
        &rows,
    );
}

pub fn agent_json(agent: &AgentInfo) -> Value {
    json!({
        "id": agent.id.0,
        "name": agent.name,
        "pools": agent.pools,
        "labels": pairs_json(&agent.labels),
        "slots": agent.slots,
        "running": agent.running.iter().map(|job| job.0).collect::<Vec<_>>(),
        "requested": agent.requested,
        "present": agent.present,
        "lease_until": agent.lease_until,
    })
}

pub fn explanation(explanation: &Explanation) {
    let ahead = match explanation.ahead {
        Some(ahead) => format!(", {ahead} waiting ahead of it in its queue"),
        None => String::new(),
    };
    out!(
        "{} in queue {:?}: {}{ahead}",
        explanation.job,
        explanation.queue,
        status(&explanation.status)
    );
    for reason in &explanation.reasons {
        out!("  - {reason}");
    }
}

fn reason_kind(reason: &BlockReason) -> &'static str {
    match reason {
        BlockReason::QueuePaused { .. } => "QueuePaused",
        BlockReason::QueueConcurrency { .. } => "QueueConcurrency",
        BlockReason::RunConcurrency { .. } => "RunConcurrency",
        BlockReason::TagRule { .. } => "TagRule",
        BlockReason::NoAgent { .. } => "NoAgent",
        BlockReason::DependenciesPending { .. } => "DependenciesPending",
        BlockReason::WaitingForSlot => "WaitingForSlot",
    }
}

pub fn explanation_json(explanation: &Explanation) -> Value {
    json!({
        "job": explanation.job.0,
        "queue": explanation.queue,
        "status": status_json(&explanation.status),
        "ahead": explanation.ahead,
        "reasons": explanation
            .reasons
            .iter()
            .map(|reason| json!({"reason": reason_kind(reason), "text": reason.to_string()}))
            .collect::<Vec<_>>(),
    })
}
