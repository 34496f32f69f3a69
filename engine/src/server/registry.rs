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
use std::sync::RwLock;

use crate::driver::{Notice, Publisher};
use crate::model::AgentId;
use crate::protocol::{Dispatch, Frame, Message, StopJob};
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
}

#[derive(Debug, Default)]
pub struct Registry {
    agents: RwLock<HashMap<AgentId, AgentLink>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
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

impl Publisher for std::sync::Arc<Registry> {
    fn publish(&mut self, _events: &[Event], notices: &[Notice]) {
        for notice in notices {
            match notice {
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
                    self.send(*agent, |link| {
                        let dispatch = Dispatch {
                            job: *job,
                            run: *run,
                            attempt: *attempt,
                            queue: queue.clone(),
                            priority: *priority,
                            tags: tags.clone(),
                            payload: payload.clone(),
                        };
                        Frame::new(link.take_request, Message::Dispatch(dispatch))
                    });
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
