//! The state digest: a stable 128-bit hash of everything the scheduler
//! holds, written in a canonical order. Two schedulers with equal digests
//! hold the same state; replay proves itself with it.
//!
//! Derived structures (the dispatch index, the timers) are left out: they
//! are functions of what is hashed, and `check_invariants` verifies them.

use xxhash_rust::xxh3::Xxh3;

use crate::model::{Outcome, Pair, QueueConfig, StopReason, TagMatch};
use crate::sched::tables::JobState;
use crate::sched::Scheduler;

struct Canonical(Xxh3);

impl Canonical {
    fn u64(&mut self, value: u64) {
        self.0.update(&value.to_le_bytes());
    }

    fn i64(&mut self, value: i64) {
        self.0.update(&value.to_le_bytes());
    }

    fn bool(&mut self, value: bool) {
        self.0.update(&[u8::from(value)]);
    }

    fn bytes(&mut self, value: &[u8]) {
        self.u64(value.len() as u64);
        self.0.update(value);
    }

    fn str(&mut self, value: &str) {
        self.bytes(value.as_bytes());
    }

    fn option(&mut self, value: Option<u64>) {
        match value {
            Some(v) => {
                self.bool(true);
                self.u64(v);
            }
            None => self.bool(false),
        }
    }

    fn pairs(&mut self, pairs: &[Pair]) {
        self.u64(pairs.len() as u64);
        for (key, value) in pairs {
            self.str(key);
            self.str(value);
        }
    }

    fn queue_config(&mut self, config: &QueueConfig) {
        self.str(&config.name);
        self.i64(config.priority.into());
        self.u64(config.pools.len() as u64);
        for pool in &config.pools {
            self.str(pool);
        }
        for limit in [
            config.action_concurrency,
            config.run_concurrency,
            config.depth,
        ] {
            self.option(limit.map(u64::from));
        }
        self.bool(config.priority_supported);
        self.bool(config.paused);
    }
}

fn outcome_code(outcome: Outcome) -> u64 {
    match outcome {
        Outcome::Succeeded => 1,
        Outcome::Failed => 2,
        Outcome::Cancelled => 3,
        Outcome::Skipped => 4,
        Outcome::QueueTimeout => 5,
        Outcome::DeadlineExceeded => 6,
        Outcome::Lost => 7,
    }
}

fn stop_code(stop: Option<StopReason>) -> u64 {
    match stop {
        None => 0,
        Some(StopReason::Cancelled) => 1,
        Some(StopReason::DeadlineExceeded) => 2,
    }
}

impl Scheduler {
    /// A stable hash of the whole state.
    pub fn digest(&self) -> u128 {
        let mut h = Canonical(Xxh3::new());
        h.u64(self.last_seq);
        h.u64(self.clock);
        h.u64(self.queues.len() as u64);
        for queue in &self.queues {
            h.queue_config(&queue.config);
            for count in [
                queue.waiting,
                queue.running,
                queue.held,
                queue.submitted_total,
                queue.dispatched_total,
                queue.finished_total,
            ] {
                h.u64(count);
            }
        }
        h.u64(self.index.rules().len() as u64);
        for rule in self.index.rules() {
            h.str(&rule.key);
            match &rule.matches {
                TagMatch::AnyValue => h.u64(0),
                TagMatch::Value(value) => {
                    h.u64(1);
                    h.str(value);
                }
                TagMatch::EachValue => h.u64(2),
            }
            h.u64(rule.limit.into());
        }
        h.u64(self.next_run);
        h.u64(self.runs.len() as u64);
        for (id, run) in self.runs.iter_ids() {
            h.u64(id.0);
            h.str(&self.queues[run.queue as usize].config.name);
            h.i64(run.priority.into());
            h.u64(
                run.defaults
                    .as_deref()
                    .map_or(0, crate::sched::decide::options_fingerprint),
            );
            h.u64(run.position);
            h.u64(run.submitted_at);
            h.u64(run.jobs.len() as u64);
            for job in &run.jobs {
                h.u64(job.0);
            }
            for value in [
                run.initial_jobs,
                run.unfinished,
                run.last_stage,
                run.released,
                run.released_unfinished,
            ] {
                h.u64(value.into());
            }
            h.option(run.open_stage.map(u64::from));
            h.bool(run.active);
            h.option(run.failed_stage.map(u64::from));
            h.str(run.idempotency_key.as_deref().unwrap_or(""));
            h.option(run.finished_at);
        }
        h.u64(self.jobs.next_id().0);
        h.u64(self.jobs.len() as u64);
        for job in self.jobs.iter() {
            h.u64(job.id().0);
            h.u64(job.run.0);
            h.i64(job.key.priority().into());
            h.u64(job.key.position);
            h.u64(job.key.upload.into());
            h.str(&self.queues[job.queue as usize].config.name);
            h.pairs(self.index.tag_sets.get(job.tags));
            h.pairs(self.index.label_sets.get(job.labels));
            h.u64(job.stage.into());
            match job.state {
                JobState::Held => h.u64(0),
                JobState::Waiting { .. } => h.u64(1),
                JobState::Running { agent, stop } => {
                    h.u64(2);
                    h.u64(agent.0.into());
                    h.u64(stop_code(stop));
                }
                JobState::Finished {
                    outcome,
                    exit_code,
                    at,
                } => {
                    h.u64(3);
                    h.u64(outcome_code(outcome));
                    h.option(exit_code.map(|c| c as u32 as u64));
                    h.u64(at);
                }
            }
            h.u64(job.attempt.into());
            h.u64(job.max_attempts.into());
            h.bool(job.own_priority);
            h.u64(job.submitted_at);
            h.u64(job.waiting_since);
            h.option(job.max_queued_time_ms);
            h.option(job.deadline_at);
            h.bytes(&job.payload);
        }
        h.u64(self.agents.len() as u64);
        for agent in &self.agents {
            h.str(&agent.name);
            h.u64(agent.pools.len() as u64);
            for pool in &agent.pools {
                h.str(pool);
            }
            h.pairs(&agent.labels);
            h.u64(agent.slots.into());
            h.u64(agent.running.len() as u64);
            for job in &agent.running {
                h.u64(job.0);
            }
            h.u64(agent.credit.into());
            h.bool(agent.present);
            h.u64(agent.lease_until);
            h.option(agent.hungry_since);
        }
        let mut keys: Vec<_> = self.idempotency.iter().collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
        h.u64(keys.len() as u64);
        for (key, first) in keys {
            h.str(key);
            h.u64(first.run.0);
            h.u64(first.hash);
            h.u64(first.first_job.0);
            h.u64(first.count.into());
        }
        h.u64(self.forgotten_keys.len() as u64);
        for (finished_at, key) in &self.forgotten_keys {
            h.u64(*finished_at);
            h.str(key);
        }
        h.u64(self.triggers.len() as u64);
        for (trigger, scheduled) in &self.triggers {
            h.str(trigger);
            h.u64(*scheduled);
        }
        h.bool(self.draining);
        h.0.digest128()
    }
}
