//! Which connection serves which agent, and the standing requests pushes
//! answer. As the driver's publisher (on the syncer thread, once a batch is
//! durable) it turns dispatch and stop notices into frames for the agents'
//! connections.
//!
//! A push that cannot be queued (the agent is not connected, or its
//! connection's output is full) is dropped: the job stays leased to the
//! agent, which either lists it when it registers again or loses its lease,
//! and the lease rules put the job back in its place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rustc_hash::FxHashSet;

use crate::driver::{Notice, Publisher, Watched};
use crate::model::{AgentId, JobId, RunId};
use crate::protocol::{Dispatch, Frame, JobUpdate, Message, StopJob, WatchTarget};
use crate::sched::view::JobStatus;
use crate::sched::Event;

/// Where an agent's pushes go.
#[derive(Clone, Debug)]
pub(crate) struct AgentLink {
    pub(crate) connection: u64,
    pub(crate) output: super::connection::Output,
    /// The request id of the agent's `Register` (for `StopJob`) and of its
    /// latest `TakeWork` (for `Dispatch`).
    pub(crate) register_request: u64,
    pub(crate) take_request: u64,
    /// Dispatches that came before the latest `TakeWork`'s answer went out
    /// (the driver publishes a batch before it answers it); sent right
    /// after that answer, so `Done` always comes first. At most the
    /// agent's slots.
    pub(crate) held: Option<Vec<Frame>>,
}

/// One `Watch` of one connection.
#[derive(Debug)]
struct Watcher {
    connection: u64,
    request: u64,
    output: super::connection::Output,
    /// Updates that arrived before the watch's first answer went out; sent
    /// right after it, so `Done` always comes first.
    pending: Option<Vec<JobUpdate>>,
}

/// Watches a connection may hold at once.
pub(crate) const WATCHES_MAX: usize = 64;

/// The watches of every connection: by target, for the pushes, and by
/// connection and request id, so a connection asks "is this id a watch
/// in flight" without a scan. The two always hold the same watches.
#[derive(Debug, Default)]
struct Watchers {
    by_target: HashMap<WatchTarget, Vec<Watcher>>,
    requests: FxHashSet<(u64, u64)>,
}

impl Watchers {
    /// Keeps the watches of `target` for which `keep` holds; the number
    /// ended.
    fn retain(&mut self, target: WatchTarget, mut keep: impl FnMut(&Watcher) -> bool) -> usize {
        let Some(list) = self.by_target.get_mut(&target) else {
            return 0;
        };
        let before = list.len();
        let requests = &mut self.requests;
        list.retain(|w| {
            let kept = keep(w);
            if !kept {
                let removed = requests.remove(&(w.connection, w.request));
                assert!(removed, "a watch is indexed by its request");
            }
            kept
        });
        let ended = before - list.len();
        if list.is_empty() {
            self.by_target.remove(&target);
        }
        ended
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    agents: RwLock<HashMap<AgentId, AgentLink>>,
    watchers: Mutex<Watchers>,
    watched: Arc<Watched>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// What the writer must report changes of.
    pub fn watched(&self) -> Arc<Watched> {
        self.watched.clone()
    }

    fn watchers(&self) -> MutexGuard<'_, Watchers> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a watch, pending until [`Registry::activate`]. Refused past
    /// [`WATCHES_MAX`] for the connection.
    pub(crate) fn watch(
        &self,
        target: WatchTarget,
        connection: u64,
        request: u64,
        output: super::connection::Output,
    ) -> bool {
        let mut watchers = self.watchers();
        let held = watchers
            .requests
            .iter()
            .filter(|(c, _)| *c == connection)
            .count();
        if held >= WATCHES_MAX {
            return false;
        }
        let added = watchers.requests.insert((connection, request));
        assert!(
            added,
            "the connection checked the request id is not in flight"
        );
        watchers.by_target.entry(target).or_default().push(Watcher {
            connection,
            request,
            output,
            pending: Some(Vec::new()),
        });
        drop(watchers);
        let (job, run) = split(target);
        self.watched.add(job, run);
        true
    }

    /// The watch's first answer is out: send what waited, then go live.
    pub(crate) fn activate(&self, target: WatchTarget, connection: u64, request: u64) {
        let mut watchers = self.watchers();
        let Some(list) = watchers.by_target.get_mut(&target) else {
            return;
        };
        let mut over = false;
        if let Some(watcher) = list
            .iter_mut()
            .find(|w| w.connection == connection && w.request == request)
        {
            for update in watcher.pending.take().unwrap_or_default() {
                over |= update.last;
                watcher.output.send(request, update);
            }
        }
        if over {
            watchers.retain(target, |w| {
                !(w.connection == connection && w.request == request)
            });
            drop(watchers);
            let (job, run) = split(target);
            self.watched.remove(job, run);
        }
    }

    /// Whether the connection has a watch under `request` not yet over.
    pub(crate) fn watching(&self, connection: u64, request: u64) -> bool {
        self.watchers().requests.contains(&(connection, request))
    }

    /// Ends a watch (it is over, or its connection closed).
    pub(crate) fn unwatch(&self, target: WatchTarget, connection: u64, request: u64) {
        let mut watchers = self.watchers();
        if watchers.retain(target, |w| {
            !(w.connection == connection && w.request == request)
        }) > 0
        {
            let (job, run) = split(target);
            self.watched.remove(job, run);
        }
    }

    /// Ends every watch of a closed connection.
    pub(crate) fn unwatch_connection(&self, connection: u64) {
        let mut watchers = self.watchers();
        let targets: Vec<WatchTarget> = watchers.by_target.keys().copied().collect();
        for target in targets {
            let ended = watchers.retain(target, |w| w.connection != connection);
            let (job, run) = split(target);
            for _ in 0..ended {
                self.watched.remove(job, run);
            }
        }
    }

    fn notify(&self, target: WatchTarget, update: &JobUpdate) {
        let mut watchers = self.watchers();
        let Some(list) = watchers.by_target.get_mut(&target) else {
            return;
        };
        for watcher in list.iter_mut() {
            match &mut watcher.pending {
                Some(pending) => pending.push(update.clone()),
                None => {
                    watcher.output.send(watcher.request, update.clone());
                }
            }
        }
        if update.last {
            let ended = watchers.retain(target, |w| w.pending.is_some());
            drop(watchers);
            let (job, run) = split(target);
            for _ in 0..ended {
                self.watched.remove(job, run);
            }
        }
    }

    /// Agents with a connection bound to them now.
    pub fn connected_agents(&self) -> usize {
        self.agents
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub(crate) fn bind(&self, agent: AgentId, link: AgentLink) {
        self.write().insert(agent, link);
    }

    pub(crate) fn set_take_request(&self, agent: AgentId, connection: u64, request: u64) {
        if let Some(link) = self
            .write()
            .get_mut(&agent)
            .filter(|l| l.connection == connection)
        {
            link.take_request = request;
            link.held.get_or_insert_with(Vec::new);
        }
    }

    /// The answer to the agent's `TakeWork` `request` is out: send the
    /// dispatches held for it, if it is still the latest.
    pub(crate) fn take_answered(&self, agent: AgentId, connection: u64, request: u64) {
        let mut agents = self.write();
        let Some(link) = agents
            .get_mut(&agent)
            .filter(|l| l.connection == connection && l.take_request == request)
        else {
            return;
        };
        for frame in link.held.take().unwrap_or_default() {
            if !link.output.send_frame(frame) {
                tracing::warn!(%agent, "agent connection output full or closed; its lease decides");
            }
        }
    }

    /// Forgets the agent's link if it still belongs to `connection` (the
    /// agent may have connected again meanwhile).
    pub(crate) fn unbind(&self, agent: AgentId, connection: u64) {
        let mut agents = self.write();
        if agents
            .get(&agent)
            .is_some_and(|link| link.connection == connection)
        {
            agents.remove(&agent);
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<AgentId, AgentLink>> {
        self.agents
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, agent: AgentId, frame: impl FnOnce(&AgentLink) -> Frame) {
        let agents = self
            .agents
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(link) = agents.get(&agent) else {
            tracing::debug!(%agent, "push for an agent that is not connected; its lease decides");
            return;
        };
        if !link.output.send_frame(frame(link)) {
            tracing::warn!(%agent, "agent connection output full or closed; its lease decides");
        }
    }
}

fn split(target: WatchTarget) -> (Option<JobId>, Option<RunId>) {
    match target {
        WatchTarget::Job(job) => (Some(job), None),
        WatchTarget::Run(run) => (None, Some(run)),
    }
}

impl Publisher for std::sync::Arc<Registry> {
    fn publish(&mut self, _events: &[Event], notices: &[Notice]) {
        for (i, notice) in notices.iter().enumerate() {
            match notice {
                Notice::JobChanged {
                    job,
                    run,
                    attempt,
                    status,
                    run_finished,
                } => {
                    let finished = matches!(status, JobStatus::Finished { .. });
                    let mut update = JobUpdate {
                        job: *job,
                        run: *run,
                        attempt: *attempt,
                        status: *status,
                        last: finished,
                    };
                    self.notify(WatchTarget::Job(*job), &update);
                    // A run's watch ends with the last change of its last job.
                    let later = notices[i + 1..].iter().any(
                        |n| matches!(n, Notice::JobChanged { run: other, .. } if other == run),
                    );
                    update.last = *run_finished && !later;
                    self.notify(WatchTarget::Run(*run), &update);
                }
                Notice::Dispatch {
                    agent,
                    job,
                    run,
                    attempt,
                    queue,
                    priority,
                    tags,
                    payload,
                } => {
                    let mut agents = self.write();
                    let Some(link) = agents.get_mut(agent) else {
                        tracing::debug!(%agent, "push for an agent that is not connected; its lease decides");
                        continue;
                    };
                    let dispatch = Dispatch {
                        job: *job,
                        run: *run,
                        attempt: *attempt,
                        queue: queue.clone(),
                        priority: *priority,
                        tags: tags.clone(),
                        payload: payload.clone(),
                    };
                    let frame = Frame::new(link.take_request, Message::Dispatch(dispatch));
                    match &mut link.held {
                        Some(held) => held.push(frame),
                        None => {
                            if !link.output.send_frame(frame) {
                                tracing::warn!(%agent, "agent connection output full or closed; its lease decides");
                            }
                        }
                    }
                }
                Notice::Stop {
                    agent,
                    job,
                    attempt,
                    reason,
                } => {
                    self.send(*agent, |link| {
                        let stop = StopJob {
                            job: *job,
                            attempt: *attempt,
                            reason: *reason,
                        };
                        Frame::new(link.register_request, Message::StopJob(stop))
                    });
                }
            }
        }
    }
}
