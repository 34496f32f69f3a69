//! Invariant checks: recounts everything the scheduler keeps incrementally
//! and compares. A full scan: run by tests after every command, and by
//! replay verification, never on the dispatch path.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{AgentId, JobId};
use crate::sched::index::CapacityKind;
use crate::sched::tables::JobState;
use crate::sched::Scheduler;

impl Scheduler {
    /// Panics, naming the invariant, if any incremental count, index or
    /// timer disagrees with the tables.
    pub fn check_invariants(&self) {
        self.index.check();
        let mut waiting = vec![0u64; self.queues.len()];
        let mut running = vec![0u64; self.queues.len()];
        let mut held = vec![0u64; self.queues.len()];
        let mut tag_used: BTreeMap<u32, u32> = BTreeMap::new();
        let mut agent_jobs: BTreeMap<AgentId, BTreeSet<JobId>> = BTreeMap::new();
        let mut queued_timers = BTreeSet::new();
        let mut deadline_timers = BTreeSet::new();
        for job in self.jobs.iter() {
            let id = job.id();
            let q = job.queue as usize;
            let run = &self.runs.at(job.run);
            match job.state {
                JobState::Held => held[q] += 1,
                JobState::Waiting { class } => {
                    waiting[q] += 1;
                    assert!(
                        self.index.class_contains(class, job.key),
                        "{id} missing from its class"
                    );
                    assert_eq!(
                        self.index.class_run_gate(class).is_some(),
                        !run.active
                            && self.queues[run.queue as usize]
                                .config
                                .run_concurrency
                                .is_some(),
                        "{id} is behind the run gate exactly while its run is inactive"
                    );
                    if let Some(max) = job.max_queued_time_ms {
                        queued_timers.insert((job.waiting_since.saturating_add(max), id));
                    }
                }
                JobState::Running { agent, .. } => {
                    running[q] += 1;
                    agent_jobs.entry(agent).or_default().insert(id);
                    assert!(run.active, "{id} runs in an inactive run");
                    for &capacity in self.index.cached_tag_capacities(job.tags) {
                        *tag_used.entry(capacity).or_default() += 1;
                    }
                }
                JobState::Finished { .. } => {}
            }
            let stopping = matches!(job.state, JobState::Running { stop: Some(_), .. });
            if let (Some(at), false, false) = (job.deadline_at, job.is_finished(), stopping) {
                deadline_timers.insert((at, id));
            }
            assert!(
                job.attempt <= job.max_attempts,
                "{id} exceeded its attempts"
            );
        }
        assert_eq!(
            self.index.waiting_count() as u64,
            waiting.iter().sum::<u64>(),
            "index holds other jobs than the waiting ones"
        );
        for (q, queue) in self.queues.iter().enumerate() {
            let name = &queue.config.name;
            assert_eq!(queue.waiting, waiting[q], "waiting count of {name}");
            assert_eq!(queue.running, running[q], "running count of {name}");
            assert_eq!(queue.held, held[q], "held count of {name}");
            let action = self
                .index
                .capacity(self.index.queue_action_capacity(q as u32));
            assert_eq!(
                u64::from(action.used),
                running[q],
                "action capacity of {name}"
            );
            let active = self
                .runs
                .iter()
                .filter(|run| run.active && run.queue as usize == q)
                .count();
            let runs = self
                .index
                .capacity(self.index.queue_runs_capacity(q as u32));
            assert_eq!(runs.used as usize, active, "run capacity of {name}");
        }
        for (id, capacity) in self.index.capacities().iter().enumerate() {
            if let CapacityKind::Tag { .. } = capacity.kind {
                let used = tag_used.get(&(id as u32)).copied().unwrap_or(0);
                assert_eq!(
                    capacity.used, used,
                    "tag capacity {id} ({:?})",
                    capacity.kind
                );
            }
        }
        let mut finished = BTreeSet::new();
        for (id, run) in self.runs.iter_ids() {
            let jobs: Vec<_> = run.jobs.iter().map(|&j| self.jobs.at(j)).collect();
            let unfinished = jobs.iter().filter(|j| !j.is_finished()).count() as u32;
            assert_eq!(run.unfinished, unfinished, "{id} unfinished count");
            let last_finish = jobs
                .iter()
                .filter_map(|j| match j.state {
                    JobState::Finished { at, .. } => Some(at),
                    _ => None,
                })
                .max();
            let expected = if unfinished == 0 { last_finish } else { None };
            assert_eq!(run.finished_at, expected, "{id} finish time");
            if let Some(at) = run.finished_at {
                finished.insert((at, id));
            }
            if let Some(key) = &run.idempotency_key {
                assert_eq!(self.idempotency[key].run, id, "{id} idempotency key");
            }
            assert!(
                !run.active || unfinished > 0,
                "{id} is active with every job finished"
            );
            let released_unfinished = jobs[..run.released as usize]
                .iter()
                .filter(|j| !j.is_finished() && j.state != JobState::Held)
                .count() as u32;
            assert_eq!(
                run.released_unfinished, released_unfinished,
                "{id} released count"
            );
            assert!(jobs[run.released as usize..]
                .iter()
                .all(|j| j.is_finished() || j.state == JobState::Held));
            assert!(jobs[..run.released as usize]
                .iter()
                .all(|j| j.state != JobState::Held));
        }
        assert_eq!(finished, self.finished, "finished runs kept");
        let finished_jobs: usize = finished
            .iter()
            .map(|&(_, run)| self.runs.at(run).jobs.len())
            .sum();
        assert_eq!(
            finished_jobs as u64, self.finished_jobs,
            "jobs of finished runs kept"
        );
        for job in self.jobs.iter() {
            assert!(self.runs.contains(job.run), "{} outlived its run", job.id());
        }
        let mut remembered = BTreeSet::new();
        let mut last = 0;
        for (at, key) in &self.forgotten_keys {
            assert!(*at >= last, "forgotten keys in finish order");
            last = *at;
            let first = self.idempotency[key];
            assert!(
                self.runs.was_removed(first.run),
                "{key:?} remembered, its run kept"
            );
            remembered.insert(key.clone());
        }
        for (key, first) in &self.idempotency {
            assert!(
                self.runs.contains(first.run) || remembered.contains(key),
                "{key:?} names a forgotten run but is not among the forgotten keys"
            );
        }
        for (id, agent) in self.agents.iter().enumerate() {
            let agent_id = AgentId(id as u32);
            let listed: BTreeSet<JobId> = agent.running.iter().copied().collect();
            assert_eq!(
                listed.len(),
                agent.running.len(),
                "{agent_id} lists a job twice"
            );
            assert_eq!(
                listed,
                agent_jobs.remove(&agent_id).unwrap_or_default(),
                "{agent_id} running list"
            );
            assert!(
                agent.credit <= agent.slots,
                "{agent_id} asks for more than its slots"
            );
            assert_eq!(
                agent
                    .hungry_since
                    .is_some_and(|since| self.hungry.contains(&(since, agent_id))),
                agent.wants_work(),
                "{agent_id} waits for work exactly while it wants some"
            );
            assert_eq!(
                agent.lease_timer,
                agent.present.then_some(agent.lease_until),
                "{agent_id} lease timer"
            );
        }
        assert!(agent_jobs.is_empty(), "jobs run on unknown agents");
        assert_eq!(
            self.hungry.len(),
            self.agents.iter().filter(|a| a.wants_work()).count()
        );
        assert_eq!(self.timers.queued, queued_timers, "queue timeout timers");
        assert_eq!(self.timers.deadlines, deadline_timers, "deadline timers");
        let lease_timers: BTreeSet<_> = self
            .agents
            .iter()
            .enumerate()
            .filter_map(|(id, agent)| agent.lease_timer.map(|at| (at, AgentId(id as u32))))
            .collect();
        assert_eq!(self.timers.leases, lease_timers, "lease timers");
    }
}
