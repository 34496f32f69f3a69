//! The scheduler's image: every piece of state a snapshot must hold, as
//! plain data, and the way back. Derived structures (the dispatch index, the
//! timers) are not in it: restoring rebuilds them, through the same code the
//! live scheduler uses.

use crate::model::{
    AgentId, JobId, JobOptions, Outcome, Pair, QueueConfig, RunId, Seq, StopReason, TagRule, TimeMs,
};
use crate::sched::index::{DispatchIndex, JobKey};
use crate::sched::tables::{Agent, Job, JobState, JobTable, KeyRecord, Queue, Run, RunTable};
use crate::sched::{Scheduler, SchedulerConfig};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub last_seq: Seq,
    pub clock: TimeMs,
    pub next_run: u64,
    pub queues: Vec<QueueImage>,
    pub rules: Vec<TagRule>,
    /// Interned values, in id order.
    pub pools: Vec<String>,
    pub tag_sets: Vec<Vec<Pair>>,
    pub label_sets: Vec<Vec<Pair>>,
    /// The runs kept, in id order; ids before `next_run` not among them
    /// are forgotten.
    pub runs: Vec<RunImage>,
    /// The id the next job will have.
    pub next_job: u64,
    /// The jobs kept, in id order; ids before `next_job` not among them are
    /// forgotten.
    pub jobs: Vec<JobImage>,
    pub agents: Vec<AgentImage>,
    /// The idempotency keys of runs kept: key, run, request hash.
    pub idempotency: Vec<(String, RunId, u64)>,
    /// The keys still remembered of runs forgotten, oldest finish first.
    pub forgotten_keys: Vec<ForgottenKeyImage>,
    /// Each trigger's last fired time, by name.
    pub triggers: Vec<(String, TimeMs)>,
    pub draining: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueImage {
    pub config: QueueConfig,
    pub waiting: u64,
    pub running: u64,
    pub held: u64,
    pub submitted_total: u64,
    pub dispatched_total: u64,
    pub finished_total: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunImage {
    pub id: RunId,
    pub queue: u32,
    pub priority: i32,
    pub defaults: Option<JobOptions>,
    pub position: Seq,
    pub submitted_at: TimeMs,
    pub jobs: Vec<JobId>,
    pub initial_jobs: u32,
    pub unfinished: u32,
    pub active: bool,
    pub last_stage: u32,
    pub released: u32,
    pub released_unfinished: u32,
    pub open_stage: Option<u32>,
    pub failed_stage: Option<u32>,
    pub idempotency_key: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStateImage {
    Held,
    Waiting,
    Running {
        agent: AgentId,
        stop: Option<StopReason>,
    },
    Finished {
        outcome: Outcome,
        exit_code: Option<i32>,
        at: TimeMs,
    },
}

/// An idempotency key whose run is forgotten, remembered until the
/// retention time since `finished_at` passes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForgottenKeyImage {
    pub finished_at: TimeMs,
    pub key: String,
    pub run: RunId,
    pub hash: u64,
    pub first_job: JobId,
    pub count: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobImage {
    pub id: JobId,
    pub run: RunId,
    pub priority: i32,
    pub position: Seq,
    pub upload: u32,
    pub queue: u32,
    pub tags: u32,
    pub labels: u32,
    pub stage: u32,
    pub state: JobStateImage,
    pub attempt: u32,
    pub max_attempts: u32,
    pub own_priority: bool,
    pub submitted_at: TimeMs,
    pub waiting_since: TimeMs,
    pub max_queued_time_ms: Option<u64>,
    pub deadline_at: Option<TimeMs>,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentImage {
    pub name: String,
    pub pools: Vec<String>,
    pub labels: Vec<Pair>,
    pub slots: u32,
    pub running: Vec<JobId>,
    pub credit: u32,
    pub present: bool,
    pub lease_until: TimeMs,
    pub hungry_since: Option<Seq>,
}

/// Why an image cannot be restored: it contradicts itself. Only a damaged
/// or hand-made snapshot does this; checksums catch disk damage first.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the snapshot image is inconsistent: {0}")]
pub struct ImageError(pub String);

impl Scheduler {
    /// Captures the state. Costs a copy of it: the engine captures images
    /// off the dispatch path (see `log::snapshot`).
    pub fn image(&self) -> Image {
        let mut runs: Vec<RunImage> = self
            .runs
            .iter_ids()
            .map(|(id, run)| RunImage {
                id,
                queue: run.queue,
                priority: run.priority,
                defaults: run.defaults.as_deref().cloned(),
                position: run.position,
                submitted_at: run.submitted_at,
                jobs: run.jobs.clone(),
                initial_jobs: run.initial_jobs,
                unfinished: run.unfinished,
                active: run.active,
                last_stage: run.last_stage,
                released: run.released,
                released_unfinished: run.released_unfinished,
                open_stage: run.open_stage,
                failed_stage: run.failed_stage,
                idempotency_key: run.idempotency_key.clone(),
            })
            .collect();
        runs.sort_unstable_by_key(|run| run.id);
        let mut idempotency: Vec<(String, RunId, u64)> = self
            .idempotency
            .iter()
            .filter(|(_, first)| self.runs.contains(first.run))
            .map(|(key, first)| (key.clone(), first.run, first.hash))
            .collect();
        idempotency.sort_unstable();
        let forgotten_keys = self
            .forgotten_keys
            .iter()
            .map(|(finished_at, key)| {
                let first = self.idempotency[key];
                ForgottenKeyImage {
                    finished_at: *finished_at,
                    key: key.clone(),
                    run: first.run,
                    hash: first.hash,
                    first_job: first.first_job,
                    count: first.count,
                }
            })
            .collect();
        Image {
            last_seq: self.last_seq,
            clock: self.clock,
            next_run: self.next_run,
            queues: self
                .queues
                .iter()
                .map(|q| QueueImage {
                    config: q.config.clone(),
                    waiting: q.waiting,
                    running: q.running,
                    held: q.held,
                    submitted_total: q.submitted_total,
                    dispatched_total: q.dispatched_total,
                    finished_total: q.finished_total,
                })
                .collect(),
            rules: self.index.rules().to_vec(),
            pools: (0..self.index.pools.len() as u32)
                .map(|i| self.index.pools.get(i).clone())
                .collect(),
            tag_sets: (0..self.index.tag_sets.len() as u32)
                .map(|i| self.index.tag_sets.get(i).to_vec())
                .collect(),
            label_sets: (0..self.index.label_sets.len() as u32)
                .map(|i| self.index.label_sets.get(i).to_vec())
                .collect(),
            runs,
            next_job: self.jobs.next_id().0,
            jobs: self
                .jobs
                .iter_ids()
                .map(|(id, job)| job_image(id, job))
                .collect(),
            agents: self
                .agents
                .iter()
                .map(|a| AgentImage {
                    name: a.name.clone(),
                    pools: a.pools.clone(),
                    labels: a.labels.clone(),
                    slots: a.slots,
                    running: a.running.clone(),
                    credit: a.credit,
                    present: a.present,
                    lease_until: a.lease_until,
                    hungry_since: a.hungry_since,
                })
                .collect(),
            idempotency,
            forgotten_keys,
            triggers: self
                .triggers
                .iter()
                .map(|(name, &time)| (name.clone(), time))
                .collect(),
            draining: self.draining,
        }
    }

    /// Rebuilds a scheduler from an image: the tables as they were, the
    /// index and timers derived again. Its digest equals the original's.
    pub fn from_image(config: SchedulerConfig, image: Image) -> Result<Scheduler, ImageError> {
        let bad = |what: String| Err(ImageError(what));
        let mut scheduler = Scheduler::new(config);
        if image.queues.first().map(|q| q.config.name.as_str()) != Some(crate::model::DEFAULT_QUEUE)
        {
            return bad("the first queue is not `default`".into());
        }
        scheduler.last_seq = image.last_seq;
        scheduler.clock = image.clock;
        scheduler.next_run = image.next_run;
        scheduler.queues.clear();
        scheduler.queue_ids.clear();
        scheduler.index = DispatchIndex::new();
        let index = &mut scheduler.index;
        if let Err(i) = index.pools.restore(image.pools.iter().cloned()) {
            return bad(format!("pool {:?} appears twice", image.pools[i]));
        }
        let boxed = |sets: &[Vec<crate::model::Pair>]| {
            sets.iter()
                .map(|set| set.clone().into_boxed_slice())
                .collect::<Vec<_>>()
        };
        if let Err(i) = index.tag_sets.restore(boxed(&image.tag_sets)) {
            return bad(format!("tag set {i} appears twice"));
        }
        if let Err(i) = index.label_sets.restore(boxed(&image.label_sets)) {
            return bad(format!("label set {i} appears twice"));
        }
        for (i, queue) in image.queues.into_iter().enumerate() {
            if scheduler
                .queue_ids
                .insert(queue.config.name.clone(), i as u32)
                .is_some()
            {
                return bad(format!("queue {:?} appears twice", queue.config.name));
            }
            let mut record = Queue::new(queue.config);
            record.waiting = queue.waiting;
            record.running = queue.running;
            record.held = queue.held;
            record.submitted_total = queue.submitted_total;
            record.dispatched_total = queue.dispatched_total;
            record.finished_total = queue.finished_total;
            scheduler.queues.push(record);
        }
        let queue_count = scheduler.queues.len() as u32;
        let first_run = image
            .runs
            .first()
            .map_or(RunId(image.next_run), |run| run.id);
        scheduler.runs = RunTable::starting_at(first_run);
        for run in image.runs {
            if run.queue >= queue_count {
                return bad(format!("{} names queue {}", run.id, run.queue));
            }
            if run.id < scheduler.runs.next_id() || run.id.0 >= image.next_run {
                return bad(format!("{} is out of order", run.id));
            }
            scheduler.runs.skip_to(run.id);
            scheduler.runs.push(
                run.id,
                Run {
                    queue: run.queue,
                    priority: run.priority,
                    defaults: run.defaults.map(Box::new),
                    position: run.position,
                    submitted_at: run.submitted_at,
                    jobs: run.jobs,
                    initial_jobs: run.initial_jobs,
                    unfinished: run.unfinished,
                    active: run.active,
                    last_stage: run.last_stage,
                    released: run.released,
                    released_unfinished: run.released_unfinished,
                    open_stage: run.open_stage,
                    failed_stage: run.failed_stage,
                    idempotency_key: run.idempotency_key,
                    finished_at: None,
                },
            );
        }
        scheduler.runs.skip_to(RunId(image.next_run));
        let first_job = image.jobs.first().map_or(image.next_job, |job| job.id.0);
        scheduler.jobs = JobTable::starting_at(JobId(first_job));
        for job in image.jobs {
            let id = job.id;
            if id < scheduler.jobs.next_id() || id.0 >= image.next_job {
                return bad(format!("{id} is out of order"));
            }
            scheduler.jobs.skip_to(id);
            if !scheduler.runs.contains(job.run)
                || job.queue >= queue_count
                || job.tags as usize >= image.tag_sets.len()
                || job.labels as usize >= image.label_sets.len()
            {
                return bad(format!("{id} refers to something that does not exist"));
            }
            let state = match job.state {
                JobStateImage::Held => JobState::Held,
                // The class is assigned when the index is rebuilt.
                JobStateImage::Waiting => JobState::Waiting { class: 0 },
                JobStateImage::Running { agent, stop } => {
                    if agent.0 as usize >= image.agents.len() {
                        return bad(format!("{id} runs on unknown {agent}"));
                    }
                    JobState::Running { agent, stop }
                }
                JobStateImage::Finished {
                    outcome,
                    exit_code,
                    at,
                } => JobState::Finished {
                    outcome,
                    exit_code,
                    at,
                },
            };
            scheduler.jobs.push(
                id,
                Job {
                    run: job.run,
                    key: JobKey::new(job.priority, job.position, job.upload, id),
                    queue: job.queue,
                    tags: job.tags,
                    labels: job.labels,
                    stage: job.stage,
                    state,
                    attempt: job.attempt,
                    max_attempts: job.max_attempts,
                    own_priority: job.own_priority,
                    submitted_at: job.submitted_at,
                    waiting_since: job.waiting_since,
                    max_queued_time_ms: job.max_queued_time_ms,
                    deadline_at: job.deadline_at,
                    payload: job.payload.into_boxed_slice(),
                },
            );
        }
        scheduler.jobs.skip_to(JobId(image.next_job));
        let mut finished = Vec::new();
        for (id, run) in scheduler.runs.iter_ids() {
            // A finished run finished when its last job did.
            let (mut last_finish, mut all_finished) = (0, true);
            for &job in &run.jobs {
                match scheduler.jobs.get(job).map(|job| job.state) {
                    None => return bad("a run lists a job that does not exist".into()),
                    Some(JobState::Finished { at, .. }) => last_finish = last_finish.max(at),
                    Some(_) => all_finished = false,
                }
            }
            if run.unfinished == 0 {
                if !all_finished {
                    return bad(format!("{id} is finished with a job unfinished"));
                }
                finished.push((last_finish, id));
            }
        }
        for &(at, run) in &finished {
            let record = scheduler.runs.at_mut(run);
            record.finished_at = Some(at);
            scheduler.finished_jobs += record.jobs.len() as u64;
            scheduler.finished.insert((at, run));
        }
        for (i, agent) in image.agents.into_iter().enumerate() {
            if scheduler
                .agent_ids
                .insert(agent.name.clone(), AgentId(i as u32))
                .is_some()
            {
                return bad(format!("agent {:?} appears twice", agent.name));
            }
            scheduler.agents.push(Agent {
                name: agent.name,
                pools: agent.pools,
                labels: agent.labels,
                slots: agent.slots,
                running: agent.running,
                credit: agent.credit,
                present: agent.present,
                lease_until: agent.lease_until,
                lease_timer: None,
                hungry_since: None,
            });
            if let Some(since) = agent.hungry_since {
                scheduler.agents[i].hungry_since = Some(since);
                scheduler.hungry.insert((since, AgentId(i as u32)));
            }
        }
        scheduler.triggers = image.triggers.into_iter().collect();
        scheduler.draining = image.draining;
        for (key, run, hash) in image.idempotency {
            let Some(found) = scheduler.runs.get(run) else {
                return bad(format!(
                    "idempotency key {key:?} names {run}, which is not kept"
                ));
            };
            let first = KeyRecord {
                run,
                hash,
                first_job: found.jobs[0],
                count: found.initial_jobs,
            };
            scheduler.idempotency.insert(key, first);
        }
        for forgotten in image.forgotten_keys {
            let in_order = scheduler
                .forgotten_keys
                .back()
                .is_none_or(|&(last, _)| last <= forgotten.finished_at);
            if !in_order || !scheduler.runs.was_removed(forgotten.run) {
                return bad(format!("forgotten key {:?} is out of place", forgotten.key));
            }
            let first = KeyRecord {
                run: forgotten.run,
                hash: forgotten.hash,
                first_job: forgotten.first_job,
                count: forgotten.count,
            };
            if scheduler
                .idempotency
                .insert(forgotten.key.clone(), first)
                .is_some()
            {
                return bad(format!("idempotency key {:?} appears twice", forgotten.key));
            }
            scheduler
                .forgotten_keys
                .push_back((forgotten.finished_at, forgotten.key));
        }
        scheduler.index.clear_matching(image.rules);
        scheduler.rebuild_index();
        scheduler.rebuild_timers();
        scheduler.match_needed = true;
        Ok(scheduler)
    }

    /// Derives every timer from the tables.
    fn rebuild_timers(&mut self) {
        for job in self.jobs.iter() {
            let id = job.id();
            match job.state {
                JobState::Waiting { .. } => {
                    if let Some(max) = job.max_queued_time_ms {
                        self.timers
                            .queued
                            .insert((job.waiting_since.saturating_add(max), id));
                    }
                }
                JobState::Finished { .. } | JobState::Running { stop: Some(_), .. } => continue,
                JobState::Held | JobState::Running { .. } => {}
            }
            if let Some(at) = job.deadline_at {
                self.timers.deadlines.insert((at, id));
            }
        }
        for agent in 0..self.agents.len() {
            self.refresh_agent(AgentId(agent as u32));
        }
    }
}

fn job_image(id: JobId, job: &Job) -> JobImage {
    JobImage {
        id,
        run: job.run,
        priority: job.key.priority(),
        position: job.key.position,
        upload: job.key.upload,
        queue: job.queue,
        tags: job.tags,
        labels: job.labels,
        stage: job.stage,
        state: match job.state {
            JobState::Held => JobStateImage::Held,
            JobState::Waiting { .. } => JobStateImage::Waiting,
            JobState::Running { agent, stop } => JobStateImage::Running { agent, stop },
            JobState::Finished {
                outcome,
                exit_code,
                at,
            } => JobStateImage::Finished {
                outcome,
                exit_code,
                at,
            },
        },
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        own_priority: job.own_priority,
        submitted_at: job.submitted_at,
        waiting_since: job.waiting_since,
        max_queued_time_ms: job.max_queued_time_ms,
        deadline_at: job.deadline_at,
        payload: job.payload.to_vec(),
    }
}
