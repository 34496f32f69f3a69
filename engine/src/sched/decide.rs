//! Deciding: validates each command against the current state and turns it
//! into events. Every check runs before the first event is made, so a
//! rejection changes nothing.

use xxhash_rust::xxh3::Xxh3;

use crate::model::Outcome;
use crate::model::{
    check_name, AgentId, JobId, JobOptions, JobSpec, Pair, Priority, QueueConfig, RunId, RunSpec,
    StopReason, TagMatch, TagRule, TimeMs, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE,
    JOBS_PER_SUBMISSION_MAX, PRIORITY_TAG_KEYS, TAGS_PER_JOB_MAX, VALUE_LENGTH_MAX,
};
use crate::sched::command::{Command, Completion, Reply, Retention};
use crate::sched::event::{Event, EventKind, NewJob, RunSubmitted};
use crate::sched::rejection::Rejection;
use crate::sched::tables::JobState;
use crate::sched::{Scheduler, FORGET_JOBS_MAX, TICK_EXPIRIES_MAX};

/// Most attempts a job may ask for.
const MAX_ATTEMPTS_MAX: u32 = 1_000;
/// Most slots one agent may declare.
const AGENT_SLOTS_MAX: u32 = 100_000;
/// Longest idempotency key, in bytes.
const IDEMPOTENCY_KEY_LENGTH_MAX: usize = 256;
/// Most tag concurrency rules.
const TAG_RULES_MAX: usize = 1_024;
/// Most completions in one `Complete`: bounds the writer's time on it.
pub const COMPLETIONS_PER_COMMAND_MAX: usize = 10_000;

impl Scheduler {
    pub(super) fn decide(
        &mut self,
        command: Command,
        now: TimeMs,
        events: &mut Vec<Event>,
    ) -> Result<Reply, Rejection> {
        match command {
            Command::SubmitRun(spec) => self.decide_submit(spec, now, events),
            Command::AppendJobs { run, jobs } => self.decide_append(run, jobs, now, events),
            Command::ChangeJobPriority { job, priority } => {
                let found = self.find_job(job)?;
                match found.state {
                    JobState::Held | JobState::Waiting { .. } => {}
                    state => {
                        return Err(Rejection::PriorityOfStartedJob {
                            job,
                            state: state.name(),
                        })
                    }
                }
                self.check_priority_supported(found.queue, priority)?;
                if found.key.priority() != priority {
                    self.emit(now, EventKind::JobPriorityChanged { job, priority }, events);
                }
                Ok(Reply::Done)
            }
            Command::ChangeRunPriority { run, priority } => {
                let found = self.find_run(run)?;
                if found.priority == priority {
                    return Ok(Reply::Done);
                }
                self.check_priority_supported(found.queue, priority)?;
                for &job in &found.jobs {
                    let job = self.jobs.at(job);
                    if !job.own_priority
                        && matches!(job.state, JobState::Held | JobState::Waiting { .. })
                    {
                        self.check_priority_supported(job.queue, priority)?;
                    }
                }
                self.emit(now, EventKind::RunPriorityChanged { run, priority }, events);
                Ok(Reply::Done)
            }
            Command::CancelJob { job } => {
                let found = self.find_job(job)?;
                if let JobState::Finished { outcome, .. } = found.state {
                    return Err(Rejection::AlreadyFinished {
                        job,
                        state: outcome.name(),
                    });
                }
                self.cancel(job, now, events);
                Ok(Reply::Done)
            }
            Command::CancelRun { run } => {
                let found = self.find_run(run)?;
                // Last job first: a job cancelled before the jobs behind its
                // `wait` would make them SKIPPED; all of them are CANCELLED.
                let jobs = found.jobs.clone();
                for job in jobs.into_iter().rev() {
                    self.cancel(job, now, events);
                }
                Ok(Reply::Done)
            }
            Command::PutQueue(config) => {
                check_queue_config(&config)?;
                let unchanged = self
                    .queue_ids
                    .get(&config.name)
                    .is_some_and(|&q| self.queues[q as usize].config == config);
                if !unchanged {
                    self.emit(now, EventKind::QueuePut(config), events);
                }
                Ok(Reply::Done)
            }
            Command::PauseQueue { queue } => {
                let id = self.queue_id(&queue)?;
                if !self.queues[id as usize].config.paused {
                    self.emit(now, EventKind::QueuePaused { queue }, events);
                }
                Ok(Reply::Done)
            }
            Command::ResumeQueue { queue } => {
                let id = self.queue_id(&queue)?;
                if self.queues[id as usize].config.paused {
                    self.emit(now, EventKind::QueueResumed { queue }, events);
                }
                Ok(Reply::Done)
            }
            Command::SetTagRules(rules) => {
                check_tag_rules(&rules)?;
                if self.index.rules() != rules.as_slice() {
                    self.emit(now, EventKind::TagRulesSet(rules), events);
                }
                Ok(Reply::Done)
            }
            Command::RegisterAgent {
                name,
                pools,
                labels,
                slots,
                running,
            } => {
                check_name("agent name", &name).map_err(|r| Rejection::invalid("agent", r))?;
                if pools.is_empty() {
                    return Err(Rejection::invalid(
                        "pools",
                        "an agent must belong to at least one pool",
                    ));
                }
                let mut pools_sorted = pools;
                for pool in &pools_sorted {
                    check_name("pool", pool).map_err(|r| Rejection::invalid("pools", r))?;
                }
                pools_sorted.sort();
                pools_sorted.dedup();
                let labels = sorted_pairs("labels", &labels)?;
                if slots == 0 || slots > AGENT_SLOTS_MAX {
                    return Err(Rejection::invalid(
                        "slots",
                        format!("an agent needs 1 to {AGENT_SLOTS_MAX} slots, not {slots}"),
                    ));
                }
                let agent = match self.agent_ids.get(&name) {
                    Some(&agent) => agent,
                    None => AgentId(u32::try_from(self.agents.len()).expect("2^32 agents")),
                };
                // Jobs leased to this agent that it no longer runs lose their lease.
                let lost: Vec<JobId> = self
                    .agents
                    .get(agent.0 as usize)
                    .map(|a| {
                        a.running
                            .iter()
                            .copied()
                            .filter(|&job| {
                                let attempt = self.jobs.at(job).attempt;
                                !running.contains(&(job, attempt))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.emit(
                    now,
                    EventKind::AgentRegistered {
                        agent,
                        name,
                        pools: pools_sorted,
                        labels,
                        slots,
                    },
                    events,
                );
                for job in lost {
                    self.emit(now, EventKind::LeaseLost { job }, events);
                }
                Ok(Reply::Registered { agent })
            }
            Command::Heartbeat { agent } => {
                self.check_agent(agent)?;
                self.emit(now, EventKind::AgentSeen { agent }, events);
                Ok(Reply::Done)
            }
            Command::TakeWork { agent, count } => {
                self.check_agent(agent)?;
                let count = count.min(self.agents[agent.0 as usize].slots);
                self.emit(now, EventKind::WorkRequested { agent, count }, events);
                self.dispatch_to(agent, now, events);
                Ok(Reply::Done)
            }
            Command::Disconnect { agent } => {
                let found = self
                    .agents
                    .get(agent.0 as usize)
                    .ok_or(Rejection::UnknownAgent(agent))?;
                if found.credit > 0 {
                    self.emit(now, EventKind::AgentDisconnected { agent }, events);
                }
                Ok(Reply::Done)
            }
            Command::Complete { agent, completions } => {
                self.check_agent(agent)?;
                if completions.len() > COMPLETIONS_PER_COMMAND_MAX {
                    return Err(Rejection::invalid(
                        "completions",
                        format!(
                            "{} in one command, over the limit of {COMPLETIONS_PER_COMMAND_MAX}",
                            completions.len()
                        ),
                    ));
                }
                let results = completions
                    .into_iter()
                    .map(|completion| self.decide_completion(agent, completion, now, events))
                    .collect();
                Ok(Reply::Completed { results })
            }
            Command::Tick => {
                let more = self.expire_due(now, events);
                Ok(Reply::Ticked { more })
            }
            Command::Restarted => {
                self.emit(now, EventKind::LeasesRestarted, events);
                Ok(Reply::Done)
            }
            Command::FireTrigger {
                trigger,
                scheduled,
                mut run,
            } => {
                check_name("trigger", &trigger).map_err(|e| Rejection::invalid("trigger", e))?;
                if let Some(&last) = self.triggers.get(&trigger) {
                    if scheduled <= last {
                        return Err(Rejection::AlreadyFired {
                            trigger,
                            scheduled,
                            last,
                        });
                    }
                }
                // The firing is the trigger's record, not a client's retry.
                run.idempotency_key = None;
                // A refused submission made no events; the firing still
                // counts, so the same time is never tried again.
                let submitted = match self.decide_submit(run, now, events) {
                    Ok(Reply::Submitted {
                        run,
                        first_job,
                        count,
                        ..
                    }) => Ok((run, first_job, count)),
                    Ok(other) => unreachable!("a submission answered {other:?}"),
                    Err(rejection) => Err(rejection),
                };
                self.emit(now, EventKind::TriggerFired { trigger, scheduled }, events);
                Ok(Reply::Fired { submitted })
            }
            Command::SetDraining { draining } => {
                if self.draining != draining {
                    self.emit(now, EventKind::DrainingSet { draining }, events);
                }
                Ok(Reply::Done)
            }
            Command::Forget(retention) => Ok(self.decide_forget(retention, now, events)),
        }
    }

    fn decide_forget(
        &mut self,
        retention: Retention,
        now: TimeMs,
        events: &mut Vec<Event>,
    ) -> Reply {
        let cutoff = now.saturating_sub(retention.finished_ms);
        let mut runs = Vec::new();
        let mut kept_jobs = self.finished_jobs;
        let mut forgotten_jobs = 0;
        let mut more = false;
        // Finish times of keys that will be remembered, in finish order.
        let mut new_keys = Vec::new();
        for &(finished_at, run) in &self.finished {
            if finished_at >= cutoff && kept_jobs <= retention.finished_jobs {
                break;
            }
            if forgotten_jobs >= FORGET_JOBS_MAX {
                more = true;
                break;
            }
            let record = self.runs.at(run);
            let jobs = record.jobs.len();
            forgotten_jobs += jobs;
            kept_jobs -= jobs as u64;
            runs.push(run);
            if record.idempotency_key.is_some() && finished_at >= cutoff {
                new_keys.push(finished_at);
            }
        }
        // Past the cap on remembered keys, the oldest go: every key that
        // finished before the first one kept.
        let mut keys_until = cutoff;
        let remembered = self.forgotten_keys.len() + new_keys.len();
        let excess =
            remembered.saturating_sub(usize::try_from(retention.keys).unwrap_or(usize::MAX));
        if excess > 0 {
            let last_dropped = match self.forgotten_keys.get(excess - 1) {
                Some(&(at, _)) => at,
                None => new_keys[excess - 1 - self.forgotten_keys.len()],
            };
            keys_until = keys_until.max(last_dropped.saturating_add(1));
        }
        let keys_due = self
            .forgotten_keys
            .front()
            .is_some_and(|&(finished_at, _)| finished_at < keys_until);
        let count = runs.len() as u32;
        if !runs.is_empty() || keys_due {
            self.emit(now, EventKind::RunsForgotten { runs, keys_until }, events);
        }
        Reply::Forgot { runs: count, more }
    }

    fn decide_submit(
        &mut self,
        spec: RunSpec,
        now: TimeMs,
        events: &mut Vec<Event>,
    ) -> Result<Reply, Rejection> {
        let fingerprint = spec
            .idempotency_key
            .as_ref()
            .map(|key| (key.clone(), fingerprint(&spec)));
        if let Some((key, hash)) = &fingerprint {
            if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LENGTH_MAX {
                return Err(Rejection::invalid(
                    "idempotency_key",
                    format!("must be 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} bytes"),
                ));
            }
            if let Some(first) = self.idempotency.get(key) {
                if first.hash != *hash {
                    return Err(Rejection::IdempotencyMismatch { key: key.clone() });
                }
                // The run may be forgotten by now; the key remembers.
                return Ok(Reply::Submitted {
                    run: first.run,
                    first_job: first.first_job,
                    count: first.count,
                    replayed: true,
                });
            }
        }
        check_job_count(spec.jobs.len())?;
        let defaults = &spec.defaults;
        let queue = defaults
            .queue
            .clone()
            .unwrap_or_else(|| DEFAULT_QUEUE.to_string());
        let queue_id = self.queue_id(&queue)?;
        let priority = own_priority(defaults)?.unwrap_or(0);
        self.check_priority_supported(queue_id, priority)?;
        let run_tags = sorted_pairs("tags", &defaults.tags)?;
        let jobs = self.resolve_jobs(defaults, &queue, priority, &spec.jobs)?;
        self.check_depth(&jobs)?;
        let run = RunId(self.next_run);
        let first_job = self.jobs.next_id();
        let count = jobs.len() as u32;
        let submitted = RunSubmitted {
            run,
            first_job,
            queue,
            priority,
            tags: run_tags,
            defaults: spec.defaults,
            idempotency: fingerprint,
            jobs,
        };
        self.emit(now, EventKind::RunSubmitted(Box::new(submitted)), events);
        Ok(Reply::Submitted {
            run,
            first_job,
            count,
            replayed: false,
        })
    }

    fn decide_append(
        &mut self,
        run: RunId,
        specs: Vec<JobSpec>,
        now: TimeMs,
        events: &mut Vec<Event>,
    ) -> Result<Reply, Rejection> {
        let found = self.find_run(run)?;
        check_job_count(specs.len())?;
        let defaults = found.defaults.as_deref().cloned().unwrap_or_default();
        let queue = self.queues[found.queue as usize].config.name.clone();
        let jobs = self.resolve_jobs(&defaults, &queue, found.priority, &specs)?;
        self.check_depth(&jobs)?;
        let first_job = self.jobs.next_id();
        let count = jobs.len() as u32;
        self.emit(
            now,
            EventKind::JobsAppended {
                run,
                first_job,
                jobs,
            },
            events,
        );
        Ok(Reply::Submitted {
            run,
            first_job,
            count,
            replayed: false,
        })
    }

    /// Resolves each job's options against its run's: routing, priority,
    /// merged tags and labels, timeouts, attempts.
    fn resolve_jobs(
        &self,
        defaults: &JobOptions,
        run_queue: &str,
        run_priority: i32,
        specs: &[JobSpec],
    ) -> Result<Vec<NewJob>, Rejection> {
        let run_tags = sorted_pairs("tags", &defaults.tags)?;
        let run_labels = sorted_pairs("labels", &defaults.labels)?;
        let mut jobs = Vec::with_capacity(specs.len());
        for spec in specs {
            let options = &spec.options;
            let queue = options.queue.as_deref().unwrap_or(run_queue);
            let queue_id = self.queue_id(queue)?;
            let own = own_priority(options)?;
            let priority = own.unwrap_or(run_priority);
            self.check_priority_supported(queue_id, priority)?;
            let max_attempts = options
                .max_attempts
                .or(defaults.max_attempts)
                .unwrap_or(DEFAULT_MAX_ATTEMPTS);
            if max_attempts == 0 || max_attempts > MAX_ATTEMPTS_MAX {
                return Err(Rejection::invalid(
                    "max_attempts",
                    format!("must be 1 to {MAX_ATTEMPTS_MAX}, not {max_attempts}"),
                ));
            }
            jobs.push(NewJob {
                queue: queue.to_string(),
                priority,
                own_priority: own.is_some(),
                tags: merge_pairs(&run_tags, &sorted_pairs("tags", &options.tags)?),
                labels: merge_pairs(&run_labels, &sorted_pairs("labels", &options.labels)?),
                wait_before: spec.wait_before,
                max_queued_time_ms: options.max_queued_time_ms.or(defaults.max_queued_time_ms),
                deadline_ms: options.deadline_ms.or(defaults.deadline_ms),
                max_attempts,
                payload: spec.payload.clone(),
            });
        }
        Ok(jobs)
    }

    /// Rejects the whole submission if any queue would exceed its depth.
    fn check_depth(&self, jobs: &[NewJob]) -> Result<(), Rejection> {
        let mut adding: Vec<(&str, u64)> = Vec::new();
        for job in jobs {
            match adding.iter_mut().find(|(queue, _)| *queue == job.queue) {
                Some((_, count)) => *count += 1,
                None => adding.push((&job.queue, 1)),
            }
        }
        for (queue, adding) in adding {
            let queue = &self.queues[self.queue_ids[queue] as usize];
            if let Some(depth) = queue.config.depth {
                let count = queue.depth_count();
                if count + adding > u64::from(depth) {
                    return Err(Rejection::QueueFull {
                        queue: queue.config.name.clone(),
                        depth,
                        count,
                        adding,
                    });
                }
            }
        }
        Ok(())
    }

    fn check_priority_supported(&self, queue: u32, priority: i32) -> Result<(), Rejection> {
        let config = &self.queues[queue as usize].config;
        if priority != 0 && !config.priority_supported {
            return Err(Rejection::PriorityUnsupported {
                queue: config.name.clone(),
                priority,
            });
        }
        Ok(())
    }

    /// One completion of a `Complete`: every check before its one event,
    /// so a refused completion changes nothing.
    fn decide_completion(
        &mut self,
        agent: AgentId,
        completion: Completion,
        now: TimeMs,
        events: &mut Vec<Event>,
    ) -> Result<(), Rejection> {
        let Completion {
            job,
            attempt,
            report,
            exit_code,
        } = completion;
        let found = self.find_job(job)?;
        if attempt != found.attempt {
            return Err(Rejection::StaleAttempt {
                job,
                reported: attempt,
                current: found.attempt,
            });
        }
        match found.state {
            JobState::Running { agent: holder, .. } if holder == agent => {}
            JobState::Finished { outcome, .. } => {
                return Err(Rejection::AlreadyFinished {
                    job,
                    state: outcome.name(),
                })
            }
            _ => return Err(Rejection::NotRunningOn { job, agent }),
        }
        self.emit(
            now,
            EventKind::JobCompleted {
                job,
                attempt,
                report,
                exit_code,
            },
            events,
        );
        Ok(())
    }

    fn check_agent(&self, agent: AgentId) -> Result<(), Rejection> {
        let found = self
            .agents
            .get(agent.0 as usize)
            .ok_or(Rejection::UnknownAgent(agent))?;
        if !found.present {
            return Err(Rejection::AgentAbsent { agent });
        }
        Ok(())
    }

    /// Cancels a job that is not finished: at once if it is not running,
    /// else by telling its agent to stop it.
    fn cancel(&mut self, job: JobId, now: TimeMs, events: &mut Vec<Event>) {
        match self.jobs.at(job).state {
            JobState::Held | JobState::Waiting { .. } => {
                self.emit(now, EventKind::JobCancelled { job }, events);
            }
            JobState::Running { agent, stop: None } => {
                let reason = StopReason::Cancelled;
                self.emit(now, EventKind::StopRequested { job, agent, reason }, events);
            }
            JobState::Running { stop: Some(_), .. } | JobState::Finished { .. } => {}
        }
    }

    /// Emits the expiries due by `now`, earliest first, at most
    /// [`TICK_EXPIRIES_MAX`]. Returns whether more are due.
    fn expire_due(&mut self, now: TimeMs, events: &mut Vec<Event>) -> bool {
        for _ in 0..TICK_EXPIRIES_MAX {
            let queued = self
                .timers
                .queued
                .first()
                .copied()
                .filter(|&(at, _)| at <= now);
            let deadline = self
                .timers
                .deadlines
                .first()
                .copied()
                .filter(|&(at, _)| at <= now);
            let lease = self
                .timers
                .leases
                .first()
                .copied()
                .filter(|&(at, _)| at <= now);
            let earliest = [
                queued.map(|t| t.0),
                deadline.map(|t| t.0),
                lease.map(|t| t.0),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(at) = earliest else {
                return false;
            };
            if let Some((_, job)) = deadline.filter(|&(t, _)| t == at) {
                match self.jobs.at(job).state {
                    JobState::Running { agent, stop: None } => {
                        let reason = StopReason::DeadlineExceeded;
                        self.emit(now, EventKind::StopRequested { job, agent, reason }, events);
                    }
                    JobState::Held | JobState::Waiting { .. } => {
                        let outcome = Outcome::DeadlineExceeded;
                        self.emit(now, EventKind::JobExpired { job, outcome }, events);
                    }
                    state => unreachable!("{job} in deadline timers while {}", state.name()),
                }
            } else if let Some((_, job)) = queued.filter(|&(t, _)| t == at) {
                let outcome = Outcome::QueueTimeout;
                self.emit(now, EventKind::JobExpired { job, outcome }, events);
            } else if let Some((_, agent)) = lease {
                self.emit(now, EventKind::AgentLost { agent }, events);
            }
        }
        [
            self.timers.queued.first().map(|t| t.0),
            self.timers.deadlines.first().map(|t| t.0),
            self.timers.leases.first().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .any(|at| at <= now)
    }

    /// Creates a queue or replaces its configuration; used for `default`
    /// at construction, where no event is needed (every scheduler starts
    /// with it).
    pub(super) fn put_queue(&mut self, config: QueueConfig) {
        self.apply_queue_put(&config);
    }
}

fn check_job_count(count: usize) -> Result<(), Rejection> {
    if count == 0 || count > JOBS_PER_SUBMISSION_MAX {
        return Err(Rejection::invalid(
            "jobs",
            format!("a submission carries 1 to {JOBS_PER_SUBMISSION_MAX} jobs, not {count}"),
        ));
    }
    Ok(())
}

/// The priority a spec gives itself: its `priority` field, else a priority
/// tag (which must parse as an integer). Both at once must agree.
fn own_priority(options: &JobOptions) -> Result<Option<i32>, Rejection> {
    let mut from_tag = None;
    for (key, value) in &options.tags {
        if PRIORITY_TAG_KEYS.contains(&key.as_str()) {
            let parsed = value.parse::<Priority>()?.0;
            if from_tag.is_some_and(|p| p != parsed) {
                return Err(Rejection::invalid("tags", "two priority tags disagree"));
            }
            from_tag = Some(parsed);
        }
    }
    match (options.priority, from_tag) {
        (Some(field), Some(tag)) if field != tag => Err(Rejection::invalid(
            "priority",
            format!("priority {field} disagrees with the priority tag {tag}"),
        )),
        (field, tag) => Ok(field.or(tag)),
    }
}

/// Validates pairs and sorts them by key. Keys must be unique.
fn sorted_pairs(field: &'static str, pairs: &[Pair]) -> Result<Vec<Pair>, Rejection> {
    if pairs.len() > TAGS_PER_JOB_MAX {
        return Err(Rejection::invalid(
            field,
            format!("at most {TAGS_PER_JOB_MAX} are allowed"),
        ));
    }
    let mut sorted = pairs.to_vec();
    sorted.sort();
    for (key, value) in &sorted {
        check_name("key", key).map_err(|reason| Rejection::invalid(field, reason))?;
        if value.len() > VALUE_LENGTH_MAX {
            return Err(Rejection::invalid(
                field,
                format!("the value of {key:?} is longer than {VALUE_LENGTH_MAX} bytes"),
            ));
        }
    }
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(Rejection::invalid(
            field,
            format!("key {:?} appears twice", pair[0].0),
        ));
    }
    Ok(sorted)
}

/// The run's pairs overridden by the job's, both sorted by key.
fn merge_pairs(run: &[Pair], job: &[Pair]) -> Vec<Pair> {
    let mut merged: Vec<Pair> = run
        .iter()
        .filter(|(key, _)| !job.iter().any(|(k, _)| k == key))
        .cloned()
        .collect();
    merged.extend(job.iter().cloned());
    merged.sort();
    merged
}

/// Checks a queue's configuration as `PutQueue` would: a configuration
/// file is checked with this before the engine starts.
pub fn check_queue_config(config: &QueueConfig) -> Result<(), Rejection> {
    check_name("queue name", &config.name).map_err(|r| Rejection::invalid("name", r))?;
    if config.pools.is_empty() {
        return Err(Rejection::invalid(
            "pools",
            "a queue must be bound to at least one pool",
        ));
    }
    for pool in &config.pools {
        check_name("pool", pool).map_err(|r| Rejection::invalid("pools", r))?;
    }
    for (field, limit) in [
        ("action_concurrency", config.action_concurrency),
        ("run_concurrency", config.run_concurrency),
        ("depth", config.depth),
    ] {
        if limit == Some(0) {
            return Err(Rejection::invalid(
                field,
                "must be at least 1 (pause the queue to stop it dispatching)",
            ));
        }
    }
    Ok(())
}

/// Checks tag concurrency rules as `SetTagRules` would.
pub fn check_tag_rules(rules: &[TagRule]) -> Result<(), Rejection> {
    if rules.len() > TAG_RULES_MAX {
        return Err(Rejection::invalid(
            "rules",
            format!("at most {TAG_RULES_MAX} tag rules"),
        ));
    }
    for (i, rule) in rules.iter().enumerate() {
        check_name("tag key", &rule.key).map_err(|r| Rejection::invalid("rules", r))?;
        if let TagMatch::Value(value) = &rule.matches {
            if value.len() > VALUE_LENGTH_MAX {
                return Err(Rejection::invalid("rules", "tag value too long"));
            }
        }
        if rules[..i]
            .iter()
            .any(|other| other.key == rule.key && other.matches == rule.matches)
        {
            return Err(Rejection::invalid(
                "rules",
                format!("two rules for tag {:?} match the same values", rule.key),
            ));
        }
    }
    Ok(())
}

/// A hash of everything a submission asks for, to tell a retry from a
/// different request that reuses an idempotency key. Tags and labels count
/// as sets: their order does not matter.
fn fingerprint(spec: &RunSpec) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&options_fingerprint(&spec.defaults).to_le_bytes());
    for job in &spec.jobs {
        hasher.update(&options_fingerprint(&job.options).to_le_bytes());
        hasher.update(&[u8::from(job.wait_before)]);
        hasher.update(&(job.payload.len() as u64).to_le_bytes());
        hasher.update(&job.payload);
    }
    hasher.digest()
}

/// A stable hash of a job's (or run's) options.
pub(super) fn options_fingerprint(options: &JobOptions) -> u64 {
    let mut hasher = Xxh3::new();
    let mut write = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    write(options.queue.as_deref().map_or(&[0xff][..], str::as_bytes));
    write(&options.priority.map_or([0; 5], |p| {
        let b = p.to_le_bytes();
        [1, b[0], b[1], b[2], b[3]]
    }));
    for pairs in [&options.tags, &options.labels] {
        let mut sorted: Vec<&Pair> = pairs.iter().collect();
        sorted.sort();
        write(&(sorted.len() as u64).to_le_bytes());
        for (key, value) in sorted {
            write(key.as_bytes());
            write(value.as_bytes());
        }
    }
    for value in [
        options.max_queued_time_ms,
        options.deadline_ms,
        options.max_attempts.map(u64::from),
    ] {
        write(&value.map_or(u64::MAX, |v| v).to_le_bytes());
    }
    hasher.digest()
}
