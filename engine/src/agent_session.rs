//! An agent's session with the engine that survives losing the connection:
//! it remembers the jobs it runs and its request for work, and when the
//! connection breaks it reconnects with exponential backoff and jitter (so a
//! fleet does not return in the same second), registers again listing its
//! running jobs (they keep their lease), and asks for work again.
//!
//! It owns no scheduling knowledge; running the jobs is the caller's.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::client::{Client, ClientError, ConnectOptions};
use crate::model::{AgentId, JobId, Pair, Report};
use crate::protocol::{Completion, Dispatch, ErrorAnswer, Message, StopJob};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub address: String,
    pub token: Vec<u8>,
    pub name: String,
    pub pools: Vec<String>,
    pub labels: Vec<Pair>,
    pub slots: u32,
    /// The first wait after a failed connection; it doubles up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Plain TCP or TLS.
    pub connect: ConnectOptions,
}

/// What the engine asks of the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    Run(Dispatch),
    Stop(StopJob),
}

pub struct AgentSession {
    config: AgentConfig,
    client: Client,
    agent: AgentId,
    /// Jobs dispatched and not yet reported, with their attempts.
    running: BTreeMap<JobId, u32>,
    /// The standing request for work, renewed on every reconnection.
    requested: u32,
    /// Drives the jitter: a different sequence per agent name.
    jitter: u64,
    /// Connections made, for observing reconnections.
    connections: u64,
}

impl AgentSession {
    /// Connects (retrying with backoff until it succeeds) and registers.
    pub async fn connect(config: AgentConfig) -> AgentSession {
        let jitter = config.name.bytes().fold(0x9E37_79B9_7F4A_7C15_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        });
        let (client, agent, jitter) = establish(&config, &BTreeMap::new(), jitter).await;
        AgentSession {
            config,
            client,
            agent,
            running: BTreeMap::new(),
            requested: 0,
            jitter,
            connections: 1,
        }
    }

    pub fn agent(&self) -> AgentId {
        self.agent
    }

    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// The jobs the session runs, with their attempts.
    pub fn running(&self) -> &BTreeMap<JobId, u32> {
        &self.running
    }

    /// Asks for up to `count` jobs (a standing request).
    pub async fn take_work(&mut self, count: u32) {
        self.requested = count;
        while self.client.take_work(count).await.is_err() {
            self.reconnect().await;
        }
    }

    /// The next order from the engine, reconnecting as often as needed.
    pub async fn next_order(&mut self) -> Order {
        loop {
            match self.client.next_push().await.map(|frame| frame.message) {
                Some(Message::Dispatch(dispatch)) => {
                    self.running.insert(dispatch.job, dispatch.attempt);
                    return Order::Run(dispatch);
                }
                Some(Message::StopJob(stop)) => return Order::Stop(stop),
                Some(_) => {}
                None => self.reconnect().await,
            }
        }
    }

    /// Reports a job's end. Retried across reconnections until the engine
    /// answers; the engine's own verdict (say, a stale attempt) is returned.
    pub async fn complete(
        &mut self,
        job: JobId,
        report: Report,
        exit_code: i32,
    ) -> Result<(), ErrorAnswer> {
        let Some(&attempt) = self.running.get(&job) else {
            return Err(ErrorAnswer::new(
                crate::model::ErrorCode::FailedPrecondition,
                format!("{job} is not running here"),
            ));
        };
        let completion = Completion {
            job,
            attempt,
            report,
            exit_code,
        };
        loop {
            match self.client.complete(vec![completion.clone()]).await {
                Ok(mut results) => {
                    self.running.remove(&job);
                    return results.pop().unwrap_or(Ok(()));
                }
                Err(ClientError::Server(answer)) => {
                    self.running.remove(&job);
                    return Err(answer);
                }
                Err(_) => self.reconnect().await,
            }
        }
    }

    /// Connects again, registers with the jobs it still runs (any other
    /// job leased to it loses its lease), and renews its request for work.
    async fn reconnect(&mut self) {
        loop {
            let (client, agent, jitter) = establish(&self.config, &self.running, self.jitter).await;
            self.client = client;
            self.agent = agent;
            self.jitter = jitter;
            self.connections += 1;
            if self.requested == 0 || self.client.take_work(self.requested).await.is_ok() {
                tracing::info!(agent = %self.agent, running = self.running.len(), "reconnected");
                return;
            }
        }
    }
}

/// Connects and registers, waiting between attempts: exponential backoff
/// with jitter (each wait drawn between half and all of the current bound).
async fn establish(
    config: &AgentConfig,
    running: &BTreeMap<JobId, u32>,
    mut jitter: u64,
) -> (Client, AgentId, u64) {
    let mut bound = config.backoff_min;
    loop {
        let attempt = async {
            let client = Client::connect_with(
                config.address.as_str(),
                &config.connect,
                &config.token,
                &config.name,
            )
            .await?;
            let running = running
                .iter()
                .map(|(&job, &attempt)| (job, attempt))
                .collect();
            let agent = client
                .register(
                    &config.name,
                    config.pools.clone(),
                    config.labels.clone(),
                    config.slots,
                    running,
                )
                .await?;
            Ok::<_, ClientError>((client, agent))
        };
        match attempt.await {
            Ok((client, agent)) => return (client, agent, jitter),
            Err(error) => {
                jitter = splitmix(jitter);
                let fraction = 0.5 + (jitter >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
                let wait = bound.mul_f64(fraction);
                tracing::warn!(%error, wait_ms = wait.as_millis() as u64, "agent connection failed; retrying");
                tokio::time::sleep(wait).await;
                bound = (bound * 2).min(config.backoff_max);
            }
        }
    }
}

fn splitmix(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
