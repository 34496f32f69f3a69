//! Applying: the one path by which the state changes, for live commands and
//! for replay alike. `apply` trusts that `decide` validated the event; a
//! broken expectation here is a bug in this crate, so it panics.

use crate::model::{AgentId, JobId, Outcome, QueueConfig, Report, RunId, Seq, TimeMs};
use crate::sched::event::{Event, EventKind, NewJob, RunSubmitted};
use crate::sched::index::{JobKey, QueueId};
use crate::sched::tables::{Agent, Job, JobState, KeyRecord, Queue, Run};
use crate::sched::Scheduler;

impl Scheduler {
    /// Applies one event. Events must come in sequence order, with times
    /// that never run backwards.
    pub fn apply(&mut self, event: &Event) {
        assert_eq!(
            event.seq,
            self.last_seq + 1,
            "event sequence numbers must be gap-free"
        );
        assert!(
            event.time >= self.clock,
            "event {} runs time backwards",
            event.seq
        );
        self.last_seq = event.seq;
        self.clock = event.time;
        let now = event.time;
        match &event.kind {
            EventKind::QueuePut(config) => self.apply_queue_put(config),
            EventKind::QueuePaused { queue } => self.set_paused(queue, true),
            EventKind::QueueResumed { queue } => self.set_paused(queue, false),
            EventKind::TagRulesSet(rules) => {
                self.index.clear_matching(rules.clone());
                self.rebuild_index();
            }
            EventKind::RunSubmitted(submitted) => self.apply_submitted(event.seq, now, submitted),
            EventKind::JobsAppended {
                run,
                first_job,
                jobs,
            } => {
                self.add_jobs(*run, *first_job, jobs, now);
                self.advance_run(*run, now);
            }
            EventKind::JobPriorityChanged { job, priority } => {
                self.rekey(*job, *priority, event.seq);
                self.jobs.at_mut(*job).own_priority = true;
            }
            EventKind::RunPriorityChanged { run, priority } => {
                let found = self.runs.get_mut(*run).expect("priority of an unknown run");
                found.priority = *priority;
                // The run moved to the end of its new level: jobs appended
                // later join it there, not at its old place.
                found.position = event.seq;
                for i in 0..found.jobs.len() {
                    let job = self.runs.at(*run).jobs[i];
                    let record = self.jobs.at(job);
                    if !record.own_priority
                        && matches!(record.state, JobState::Held | JobState::Waiting { .. })
                    {
                        self.rekey(job, *priority, event.seq);
                    }
                }
            }
            EventKind::RunsForgotten { runs, keys_until } => self.forget(runs, *keys_until),
            EventKind::JobCancelled { job } => self.finish(*job, Outcome::Cancelled, None, now),
            EventKind::JobExpired { job, outcome } => self.finish(*job, *outcome, None, now),
            EventKind::StopRequested { job, agent, reason } => {
                self.note_changed(*job);
                let record = self.jobs.at_mut(*job);
                assert_eq!(
                    record.state,
                    JobState::Running {
                        agent: *agent,
                        stop: None
                    }
                );
                record.state = JobState::Running {
                    agent: *agent,
                    stop: Some(*reason),
                };
                if let Some(at) = record.deadline_at {
                    self.timers.deadlines.remove(&(at, *job));
                }
            }
            EventKind::AgentRegistered {
                agent,
                name,
                pools,
                labels,
                slots,
            } => {
                let slot = agent.0 as usize;
                if slot == self.agents.len() {
                    self.agents.push(Agent {
                        name: name.clone(),
                        pools: Vec::new(),
                        labels: Vec::new(),
                        slots: 0,
                        running: Vec::new(),
                        credit: 0,
                        present: false,
                        lease_until: 0,
                        lease_timer: None,
                        hungry_since: None,
                    });
                    self.agent_ids.insert(name.clone(), *agent);
                }
                let record = &mut self.agents[slot];
                assert_eq!(&record.name, name, "{agent} registered under another name");
                record.pools = pools.clone();
                record.labels = labels.clone();
                record.slots = *slots;
                record.present = true;
                record.credit = 0;
                self.register_in_index(*agent);
                self.renew_lease(*agent, now);
            }
            EventKind::AgentSeen { agent } => self.renew_lease(*agent, now),
            EventKind::WorkRequested { agent, count } => {
                self.agents[agent.0 as usize].credit = *count;
                self.renew_lease(*agent, now);
            }
            EventKind::AgentDisconnected { agent } => {
                self.agents[agent.0 as usize].credit = 0;
                self.refresh_agent(*agent);
            }
            EventKind::JobDispatched {
                job,
                agent,
                attempt,
            } => self.dispatch(*job, *agent, *attempt, now),
            EventKind::JobCompleted {
                job,
                attempt,
                report,
                exit_code,
            } => {
                let record = self.jobs.at(*job);
                assert_eq!(record.attempt, *attempt, "completion of a stale attempt");
                let JobState::Running { agent, stop } = record.state else {
                    panic!("completion of {job}, which is {}", record.state.name());
                };
                let outcome = match (stop, report) {
                    (Some(reason), _) => reason.into(),
                    (None, Report::Succeeded) => Outcome::Succeeded,
                    (None, Report::Failed) => Outcome::Failed,
                };
                self.finish(*job, outcome, Some(*exit_code), now);
                self.renew_lease(agent, now);
            }
            EventKind::LeaseLost { job } => self.lose_lease(*job, now),
            EventKind::AgentLost { agent } => {
                let running = self.agents[agent.0 as usize].running.clone();
                for job in running {
                    self.lose_lease(job, now);
                }
                let record = &mut self.agents[agent.0 as usize];
                record.present = false;
                record.credit = 0;
                self.index.set_agent_absent(*agent);
                self.refresh_agent(*agent);
            }
            EventKind::LeasesRestarted => {
                for agent in 0..self.agents.len() {
                    self.agents[agent].credit = 0;
                    self.renew_lease(AgentId(agent as u32), now);
                }
                // A drain belongs to the process that was told to drain.
                self.draining = false;
            }
            EventKind::TriggerFired { trigger, scheduled } => {
                self.triggers.insert(trigger.clone(), *scheduled);
            }
            EventKind::DrainingSet { draining } => {
                self.draining = *draining;
                // Agents that waited through the drain may find work now.
                self.match_needed = !draining;
            }
        }
    }

    pub(super) fn apply_queue_put(&mut self, config: &QueueConfig) {
        let pools: Vec<u32> = config
            .pools
            .iter()
            .map(|pool| self.index.pools.intern(pool))
            .collect();
        let Some(&queue) = self.queue_ids.get(&config.name) else {
            let id = self.index.add_queue(
                config.priority,
                pools,
                config.action_concurrency,
                config.run_concurrency,
                config.paused,
            );
            assert_eq!(id as usize, self.queues.len());
            self.queues.push(Queue::new(config.clone()));
            self.queue_ids.insert(config.name.clone(), id);
            return;
        };
        let old = std::mem::replace(&mut self.queues[queue as usize].config, config.clone());
        if old.run_concurrency.is_some() != config.run_concurrency.is_some() {
            // Whether jobs of new runs pass a run gate changes their class:
            // rebuild rather than move every such job by hand.
            self.index.clear_matching(self.index.rules().to_vec());
            self.rebuild_index();
            return;
        }
        self.index.set_queue_priority(queue, config.priority);
        self.index.set_queue_pools(queue, pools);
        self.index.set_limit(
            self.index.queue_action_capacity(queue),
            config.action_concurrency,
        );
        self.index.set_limit(
            self.index.queue_runs_capacity(queue),
            config.run_concurrency,
        );
        self.index.set_queue_paused(queue, config.paused);
    }

    fn set_paused(&mut self, queue: &str, paused: bool) {
        let queue = self.queue_ids[queue];
        self.queues[queue as usize].config.paused = paused;
        self.index.set_queue_paused(queue, paused);
    }

    /// Adds every queue, agent, active run, waiting and running job to an
    /// index emptied by `clear_matching`, in id order.
    pub(super) fn rebuild_index(&mut self) {
        assert_eq!(self.index.queue_count(), 0);
        for queue in &self.queues {
            let config = &queue.config;
            let pools = config
                .pools
                .iter()
                .map(|pool| self.index.pools.intern(pool))
                .collect();
            self.index.add_queue(
                config.priority,
                pools,
                config.action_concurrency,
                config.run_concurrency,
                config.paused,
            );
        }
        for agent in 0..self.agents.len() {
            if self.agents[agent].present {
                self.register_in_index(AgentId(agent as u32));
            }
        }
        let mut active: Vec<(RunId, QueueId)> = self
            .runs
            .iter_ids()
            .filter(|(_, run)| run.active)
            .map(|(id, run)| (id, run.queue))
            .collect();
        active.sort_unstable();
        for (_, queue) in active {
            self.index.acquire(self.index.queue_runs_capacity(queue));
        }
        let jobs: Vec<JobId> = self.jobs.iter().map(Job::id).collect();
        for job in jobs {
            match self.jobs.at(job).state {
                JobState::Waiting { .. } => {
                    let class = self.class_of(job);
                    let record = self.jobs.at_mut(job);
                    record.state = JobState::Waiting { class };
                    let key = record.key;
                    self.index.insert_waiting(class, key);
                }
                JobState::Running { .. } => {
                    let record = self.jobs.at(job);
                    let (queue, tags) = (record.queue, record.tags);
                    self.index.acquire(self.index.queue_action_capacity(queue));
                    self.index.acquire_tags(tags);
                }
                JobState::Held | JobState::Finished { .. } => {}
            }
        }
    }

    fn register_in_index(&mut self, agent: AgentId) {
        let record = &self.agents[agent.0 as usize];
        let pools = record
            .pools
            .iter()
            .map(|pool| self.index.pools.intern(pool))
            .collect();
        let labels = self
            .index
            .label_sets
            .intern(&record.labels.clone().into_boxed_slice());
        self.index.set_agent(agent, pools, labels);
    }

    fn apply_submitted(&mut self, seq: Seq, now: TimeMs, submitted: &RunSubmitted) {
        let run = submitted.run;
        assert_eq!(run.0, self.next_run, "runs are numbered in order");
        self.next_run += 1;
        let defaults = (submitted.defaults != Default::default())
            .then(|| Box::new(submitted.defaults.clone()));
        self.runs.push(
            run,
            Run {
                queue: self.queue_ids[&submitted.queue],
                priority: submitted.priority,
                defaults,
                position: seq,
                submitted_at: now,
                jobs: Vec::with_capacity(submitted.jobs.len()),
                initial_jobs: submitted.jobs.len() as u32,
                unfinished: 0,
                active: false,
                last_stage: 0,
                released: 0,
                released_unfinished: 0,
                open_stage: None,
                failed_stage: None,
                idempotency_key: submitted.idempotency.as_ref().map(|(key, _)| key.clone()),
                finished_at: None,
            },
        );
        if let Some((key, hash)) = &submitted.idempotency {
            let first = KeyRecord {
                run,
                hash: *hash,
                first_job: submitted.first_job,
                count: submitted.jobs.len() as u32,
            };
            self.idempotency.insert(key.clone(), first);
        }
        self.add_jobs(run, submitted.first_job, &submitted.jobs, now);
        self.advance_run(run, now);
    }

    /// Adds new jobs to a run, held until `advance_run` releases them.
    fn add_jobs(&mut self, run: RunId, first_job: JobId, jobs: &[NewJob], now: TimeMs) {
        assert_eq!(first_job, self.jobs.next_id());
        // A finished run that gets more jobs is unfinished again.
        if let Some(at) = self.runs.at_mut(run).finished_at.take() {
            assert!(self.finished.remove(&(at, run)), "{run} was not kept");
            self.finished_jobs -= self.runs.at(run).jobs.len() as u64;
        }
        for new in jobs {
            let id = self.jobs.next_id();
            self.note_changed(id);
            let queue = self.queue_ids[&new.queue];
            let record = self.runs.get_mut(run).expect("jobs for an unknown run");
            if new.wait_before {
                record.last_stage += 1;
            }
            let upload = record.jobs.len() as u32;
            record.jobs.push(id);
            record.unfinished += 1;
            let position = record.position;
            let stage = record.last_stage;
            let deadline_at = new.deadline_ms.map(|ms| now.saturating_add(ms));
            if let Some(at) = deadline_at {
                self.timers.deadlines.insert((at, id));
            }
            let tags = self
                .index
                .tag_sets
                .intern(&new.tags.clone().into_boxed_slice());
            let labels = self
                .index
                .label_sets
                .intern(&new.labels.clone().into_boxed_slice());
            self.jobs.push(
                id,
                Job {
                    run,
                    key: JobKey::new(new.priority, position, upload, id),
                    queue,
                    tags,
                    labels,
                    stage,
                    state: JobState::Held,
                    attempt: 0,
                    max_attempts: new.max_attempts,
                    own_priority: new.own_priority,
                    submitted_at: now,
                    waiting_since: now,
                    max_queued_time_ms: new.max_queued_time_ms,
                    deadline_at,
                    payload: new.payload.clone().into_boxed_slice(),
                },
            );
            let queue = &mut self.queues[queue as usize];
            queue.held += 1;
            queue.submitted_total += 1;
        }
    }

    /// Releases the run's held jobs whose `wait` steps are passed, and skips
    /// those that can never pass because an earlier job did not succeed.
    /// Iterative, not recursive: a large run cannot exhaust the stack.
    fn advance_run(&mut self, run: RunId, now: TimeMs) {
        loop {
            let record = &self.runs.at(run);
            let released = record.released as usize;
            if released == record.jobs.len() {
                break;
            }
            let next = record.jobs[released];
            let next_job = self.jobs.at(next);
            let stage = next_job.stage;
            let skipped = record.failed_stage.is_some_and(|failed| failed < stage);
            let releasable = record.open_stage == Some(stage) || record.released_unfinished == 0;
            let finished = next_job.is_finished();
            let record = self.runs.get_mut(run).expect("run vanished");
            if finished {
                // Cancelled, timed out or skipped while held.
                record.released += 1;
            } else if skipped {
                record.released += 1;
                self.finish_job(next, Outcome::Skipped, None, now);
            } else if releasable {
                record.released += 1;
                record.released_unfinished += 1;
                record.open_stage = Some(stage);
                self.leave(next);
                self.enter_waiting(next, now);
            } else {
                break;
            }
        }
        // Held jobs behind a stage that is not done yet, but which can never
        // run because an earlier stage failed, end now.
        if let Some(failed) = self.runs.at(run).failed_stage {
            for i in (self.runs.at(run).released as usize..self.runs.at(run).jobs.len()).rev() {
                let job = self.jobs.at(self.runs.at(run).jobs[i]);
                if job.stage <= failed {
                    break;
                }
                if !job.is_finished() {
                    self.finish_job(job.id(), Outcome::Skipped, None, now);
                }
            }
        }
        let record = self.runs.get_mut(run).expect("run vanished");
        if record.active && record.unfinished == 0 {
            record.active = false;
            let queue = record.queue;
            self.index.release(self.index.queue_runs_capacity(queue));
        }
        let record = self.runs.at_mut(run);
        if record.unfinished == 0 && record.finished_at.is_none() {
            record.finished_at = Some(now);
            self.finished_jobs += record.jobs.len() as u64;
            self.finished.insert((now, run));
        }
    }

    /// Forgets finished runs with their jobs; remembers their idempotency
    /// keys until `keys_until` passes their finish.
    fn forget(&mut self, runs: &[RunId], keys_until: TimeMs) {
        for &run in runs {
            let record = self.runs.remove(run);
            let at = record
                .finished_at
                .unwrap_or_else(|| panic!("{run} is forgotten unfinished"));
            assert!(self.finished.remove(&(at, run)), "{run} was not kept");
            self.finished_jobs -= record.jobs.len() as u64;
            for job in record.jobs {
                let removed = self.jobs.remove(job);
                assert!(removed.is_finished(), "{job} is forgotten unfinished");
            }
            if let Some(key) = record.idempotency_key {
                if at < keys_until {
                    self.idempotency.remove(&key);
                } else {
                    // Forgotten in finish order, so the queue stays sorted.
                    assert!(self
                        .forgotten_keys
                        .back()
                        .is_none_or(|&(last, _)| last <= at));
                    self.forgotten_keys.push_back((at, key));
                }
            }
        }
        while let Some((at, _)) = self.forgotten_keys.front() {
            if *at >= keys_until {
                break;
            }
            let (_, key) = self.forgotten_keys.pop_front().expect("a front");
            self.idempotency.remove(&key);
        }
    }

    /// Takes a job out of its current state: out of the index, the timers
    /// and the counts that state keeps.
    fn leave(&mut self, job: JobId) {
        self.note_changed(job);
        let record = self.jobs.at(job);
        let (queue, key, tags) = (record.queue, record.key, record.tags);
        match record.state {
            JobState::Held => self.queues[queue as usize].held -= 1,
            JobState::Waiting { class } => {
                if let Some(max) = record.max_queued_time_ms {
                    let removed = self
                        .timers
                        .queued
                        .remove(&(record.waiting_since.saturating_add(max), job));
                    assert!(removed, "{job} missing from the queue timers");
                }
                self.index.remove_waiting(class, key);
                self.queues[queue as usize].waiting -= 1;
            }
            JobState::Running { agent, .. } => {
                self.queues[queue as usize].running -= 1;
                self.index.release(self.index.queue_action_capacity(queue));
                self.index.release_tags(tags);
                let running = &mut self.agents[agent.0 as usize].running;
                let at = running
                    .iter()
                    .position(|&j| j == job)
                    .expect("job missing from its agent");
                running.remove(at);
                self.refresh_agent(agent);
            }
            JobState::Finished { .. } => panic!("{job} is finished already"),
        }
    }

    fn enter_waiting(&mut self, job: JobId, now: TimeMs) {
        let class = self.class_of(job);
        let record = self.jobs.at_mut(job);
        record.state = JobState::Waiting { class };
        record.waiting_since = now;
        let (queue, key) = (record.queue, record.key);
        if let Some(max) = record.max_queued_time_ms {
            self.timers.queued.insert((now.saturating_add(max), job));
        }
        self.index.insert_waiting(class, key);
        self.queues[queue as usize].waiting += 1;
    }

    /// The class a waiting job belongs in now.
    fn class_of(&mut self, job: JobId) -> u32 {
        let record = self.jobs.at(job);
        let run = &self.runs.at(record.run);
        let gated = !run.active
            && self.queues[run.queue as usize]
                .config
                .run_concurrency
                .is_some();
        let gate = gated.then(|| self.index.queue_runs_capacity(run.queue));
        self.index
            .class_for(record.queue, record.labels, record.tags, gate)
    }

    fn dispatch(&mut self, job: JobId, agent: AgentId, attempt: u32, now: TimeMs) {
        let record = self.jobs.at(job);
        assert!(
            matches!(record.state, JobState::Waiting { .. }),
            "dispatch of a job not waiting"
        );
        assert_eq!(attempt, record.attempt + 1, "attempts count up by one");
        let (run, queue, tags) = (record.run, record.queue, record.tags);
        self.leave(job);
        let record = self.jobs.at_mut(job);
        record.state = JobState::Running { agent, stop: None };
        record.attempt = attempt;
        if !self.runs.at(run).active {
            self.activate(run);
        }
        let queue_record = &mut self.queues[queue as usize];
        queue_record.running += 1;
        queue_record.dispatched_total += 1;
        self.index.acquire(self.index.queue_action_capacity(queue));
        self.index.acquire_tags(tags);
        let agent_record = &mut self.agents[agent.0 as usize];
        assert!(
            agent_record.wants_work(),
            "dispatch to {agent}, which wants no work"
        );
        agent_record.running.push(job);
        agent_record.credit -= 1;
        self.renew_lease(agent, now);
    }

    /// A run's first dispatch: it takes a place under its queue's run
    /// concurrency, and its other waiting jobs no longer pass the run gate.
    fn activate(&mut self, run: RunId) {
        let record = self
            .runs
            .get_mut(run)
            .expect("activation of an unknown run");
        record.active = true;
        let queue = record.queue;
        self.index.acquire(self.index.queue_runs_capacity(queue));
        if self.queues[queue as usize].config.run_concurrency.is_none() {
            return; // No job of the run passes a run gate.
        }
        for i in 0..self.runs.at(run).released as usize {
            let job = self.runs.at(run).jobs[i];
            if let JobState::Waiting { class } = self.jobs.at(job).state {
                if self.index.class_run_gate(class).is_some() {
                    let key = self.jobs.at(job).key;
                    self.index.remove_waiting(class, key);
                    let class = self.class_of(job);
                    self.jobs.at_mut(job).state = JobState::Waiting { class };
                    self.index.insert_waiting(class, key);
                }
            }
        }
    }

    /// Ends a job that is not finished, and moves its run on.
    fn finish(&mut self, job: JobId, outcome: Outcome, exit_code: Option<i32>, now: TimeMs) {
        let run = self.jobs.at(job).run;
        self.finish_job(job, outcome, exit_code, now);
        self.advance_run(run, now);
    }

    /// Ends a job that is not finished; its run's counts follow, but the
    /// run is not moved on (`advance_run` does that).
    fn finish_job(&mut self, job: JobId, outcome: Outcome, exit_code: Option<i32>, now: TimeMs) {
        let record = self.jobs.at(job);
        let stage = record.stage;
        let (run, queue, was_held) = (record.run, record.queue, record.state == JobState::Held);
        let deadline = record.deadline_at;
        self.leave(job);
        if let Some(at) = deadline {
            self.timers.deadlines.remove(&(at, job));
        }
        self.jobs.at_mut(job).state = JobState::Finished {
            outcome,
            exit_code,
            at: now,
        };
        self.queues[queue as usize].finished_total += 1;
        let record = self.runs.get_mut(run).expect("job of an unknown run");
        record.unfinished -= 1;
        if !was_held {
            record.released_unfinished -= 1;
        }
        if !outcome.is_success() {
            record.failed_stage = Some(
                record
                    .failed_stage
                    .map_or(stage, |failed| failed.min(stage)),
            );
        }
    }

    /// The job's lease is gone: back to its place for another attempt, or
    /// ended (LOST after its last attempt, or as its stop request decided).
    fn lose_lease(&mut self, job: JobId, now: TimeMs) {
        let record = self.jobs.at(job);
        let JobState::Running { stop, .. } = record.state else {
            panic!("lease lost of {job}, which is {}", record.state.name());
        };
        match stop {
            Some(reason) => self.finish(job, reason.into(), None, now),
            None if record.attempt >= record.max_attempts => {
                self.finish(job, Outcome::Lost, None, now)
            }
            None => {
                self.leave(job);
                self.enter_waiting(job, now);
            }
        }
    }

    /// Moves a waiting or held job to the end of a priority level.
    fn rekey(&mut self, job: JobId, priority: i32, seq: Seq) {
        self.note_changed(job);
        let record = self.jobs.at_mut(job);
        let old = record.key;
        record.key = JobKey::new(priority, seq, old.upload, job);
        if let JobState::Waiting { class } = record.state {
            let new = record.key;
            self.index.remove_waiting(class, old);
            self.index.insert_waiting(class, new);
        }
    }

    fn renew_lease(&mut self, agent: AgentId, now: TimeMs) {
        let record = &mut self.agents[agent.0 as usize];
        record.lease_until = now.saturating_add(self.config.lease_ms);
        self.refresh_agent(agent);
    }

    /// Keeps an agent's lease timer and its place among agents waiting for
    /// work in step with what it holds and wants.
    pub(super) fn refresh_agent(&mut self, agent: AgentId) {
        let record = &mut self.agents[agent.0 as usize];
        // Every present agent has a lease, idle or not: an agent that goes
        // silent is noticed, and stops counting as able to take work.
        let timer = record.present.then_some(record.lease_until);
        if record.lease_timer != timer {
            if let Some(at) = record.lease_timer {
                self.timers.leases.remove(&(at, agent));
            }
            if let Some(at) = timer {
                self.timers.leases.insert((at, agent));
            }
            record.lease_timer = timer;
        }
        let wants = record.wants_work();
        match (wants, record.hungry_since) {
            (true, None) => {
                record.hungry_since = Some(self.last_seq);
                self.hungry.insert((self.last_seq, agent));
                self.match_needed = true;
            }
            (false, Some(since)) => {
                record.hungry_since = None;
                self.hungry.remove(&(since, agent));
            }
            _ => {}
        }
    }
}
