//! The peer targets: the same workload against beanstalkd and Redis, as
//! close as each protocol allows. Queues become tubes (beanstalkd) or
//! sorted sets (Redis); priorities map to beanstalkd's lower-first u32 or a
//! priority-then-sequence ZSET score; each agent slot is one worker
//! connection (reserve or BZPOPMIN, then delete or INCR). Neither peer has
//! tag limits, so tags travel in the body only and limits are ignored; the
//! order checker does not run (a pulled job carries no server-assigned
//! sequence to judge by).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::beanstalk::{beanstalk_priority, Beanstalk};
use crate::metrics::Metric;
use crate::pacer::SplitMix64;
use crate::resp::{score, Redis, Reply};
use crate::run::{finish, RunConfig, RunResult, Schedule, Shared};
use crate::workload::{payload, read_payload, Header, Mode, FLAG_PRELOAD, FOREIGN, SEND_UNKNOWN};

/// Seconds a worker blocks in one reserve before it checks whether to stop.
const RESERVE_TIMEOUT_S: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    Beanstalkd,
    Redis,
}

#[derive(Clone, Debug)]
pub struct PeerTarget {
    pub kind: PeerKind,
    pub address: String,
}

impl PeerTarget {
    fn url(&self) -> String {
        match self.kind {
            PeerKind::Beanstalkd => format!("beanstalkd://{}", self.address),
            PeerKind::Redis => format!("redis://{}", self.address),
        }
    }
}

fn queue_key(queue: &str) -> String {
    format!("lg:q:{queue}")
}

/// One producer connection.
enum Producer {
    Beanstalk {
        connection: Beanstalk,
        tube: Option<u32>,
    },
    Redis {
        connection: Redis,
        sequence: Arc<AtomicU64>,
    },
}

impl Producer {
    async fn connect(target: &PeerTarget, sequence: Arc<AtomicU64>) -> anyhow::Result<Producer> {
        Ok(match target.kind {
            PeerKind::Beanstalkd => Producer::Beanstalk {
                connection: Beanstalk::connect(&target.address).await?,
                tube: None,
            },
            PeerKind::Redis => Producer::Redis {
                connection: Redis::connect(&target.address).await?,
                sequence,
            },
        })
    }

    /// Submits `jobs` jobs to queue `queue`: one put per job (beanstalkd
    /// has no batch put), one ZADD for all (Redis).
    async fn submit(
        &mut self,
        queues: &[String],
        queue: u32,
        priority: i32,
        body: &[u8],
        jobs: u64,
    ) -> anyhow::Result<()> {
        match self {
            Producer::Beanstalk { connection, tube } => {
                if *tube != Some(queue) {
                    connection.use_tube(&queues[queue as usize]).await?;
                    *tube = Some(queue);
                }
                for _ in 0..jobs {
                    connection.put(beanstalk_priority(priority), body).await?;
                }
            }
            Producer::Redis {
                connection,
                sequence,
            } => {
                let key = queue_key(&queues[queue as usize]);
                let mut arguments: Vec<Vec<u8>> = vec![b"ZADD".to_vec(), key.into_bytes()];
                for _ in 0..jobs {
                    let seq = sequence.fetch_add(1, Ordering::Relaxed);
                    arguments.push(score(priority, seq).to_string().into_bytes());
                    // Members must be distinct: the body plus its sequence.
                    let mut member = body.to_vec();
                    member.extend_from_slice(&seq.to_le_bytes());
                    arguments.push(member);
                }
                let arguments: Vec<&[u8]> = arguments.iter().map(Vec::as_slice).collect();
                connection.command(&arguments).await?;
            }
        }
        Ok(())
    }
}

pub async fn run(config: &RunConfig, target: &PeerTarget) -> anyhow::Result<RunResult> {
    if config.workload.tag_limit.is_some() || config.preload.is_some() {
        eprintln!(
            "note: {} has no tag limits: --tag-limit and --preload limits are ignored",
            target.url()
        );
    }
    let shared = Shared::new(config);
    let sequence = Arc::new(AtomicU64::new(0));
    if let PeerKind::Redis = target.kind {
        let mut redis = Redis::connect(&target.address).await?;
        for queue in &config.workload.queues {
            redis
                .command(&[b"DEL", queue_key(queue).as_bytes()])
                .await?;
        }
    }
    if let Some(preload) = &config.preload {
        let mut producer = Producer::connect(target, sequence.clone()).await?;
        let started = Instant::now();
        let body = payload(
            Header {
                intended_ns: 0,
                flags: FLAG_PRELOAD,
                priority: preload.priority,
                send: SEND_UNKNOWN,
            },
            config.workload.payload_bytes,
        );
        let mut left = preload.jobs;
        let mut index = 0u32;
        while left > 0 {
            let count = left.min(u64::from(config.workload.run_size.max(100)));
            left -= count;
            let queue = index % config.workload.queues.len() as u32;
            producer
                .submit(
                    &config.workload.queues,
                    queue,
                    preload.priority,
                    &body,
                    count,
                )
                .await?;
            index += 1;
        }
        eprintln!(
            "preloaded {} jobs in {:.1} s",
            preload.jobs,
            started.elapsed().as_secs_f64()
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    let slots = config.agents * config.slots_per_agent;
    // Every worker connects before the first send, as Lanes agents register
    // first: a connection storm would otherwise land in the first latencies.
    let (ready, mut readies) = tokio::sync::mpsc::channel::<Result<(), String>>(slots as usize);
    for index in 0..slots {
        workers.push(tokio::spawn(worker(
            target.clone(),
            config.clone(),
            shared.clone(),
            stop.clone(),
            config.seed ^ (0x3e7 << 32) ^ u64::from(index),
            ready.clone(),
        )));
    }
    drop(ready);
    for _ in 0..slots {
        match readies.recv().await {
            Some(Ok(())) => {}
            Some(Err(error)) => bail!("a worker could not start: {error}"),
            None => bail!("the workers ended before they were ready"),
        }
    }
    let mut clients = Vec::new();
    for _ in 0..config.connections {
        let producer = Producer::connect(target, sequence.clone())
            .await
            .with_context(|| format!("connecting to {}", target.url()))?;
        clients.push(producer);
    }
    // Everything is connected: the schedule starts now.
    shared.start_clock();
    let mut submitters = Vec::new();
    for (index, producer) in clients.into_iter().enumerate() {
        submitters.push(tokio::spawn(submitter(
            producer,
            config.clone(),
            shared.clone(),
            index as u32,
        )));
    }
    finish(
        config,
        shared,
        submitters,
        workers,
        &stop,
        target.url(),
        false,
    )
    .await
}

async fn submit_one(
    producer: &mut Producer,
    config: &RunConfig,
    shared: &Shared,
    random: &mut SplitMix64,
    intended: u64,
    jobs: u64,
) -> anyhow::Result<()> {
    let choice = config.workload.choose(random);
    let send = shared.acks.next_send();
    let body = payload(
        Header {
            intended_ns: intended,
            flags: 0,
            priority: choice.priority,
            send,
        },
        config.workload.payload_bytes,
    );
    shared.counters.sent.fetch_add(jobs, Ordering::Relaxed);
    producer
        .submit(
            &config.workload.queues,
            choice.queue,
            choice.priority,
            &body,
            jobs,
        )
        .await?;
    let now = shared.now_ns();
    shared.record(
        Metric::SubmitAck,
        choice.priority,
        now.saturating_sub(intended),
    );
    shared.counters.add_acked(now, jobs);
    shared.acks.acked(send, now);
    Ok(())
}

/// One producer connection: one request at a time (these clients do not
/// pipeline), paced (open loop) or back to back (closed loop, where
/// `--outstanding` above 1 opens that many connections instead).
async fn submitter(
    mut producer: Producer,
    config: RunConfig,
    shared: Arc<Shared>,
    index: u32,
) -> anyhow::Result<()> {
    let mut random = SplitMix64::new(config.seed ^ (0x5b17 << 32) ^ u64::from(index));
    let run_size = u64::from(config.workload.run_size);
    let duration_ns = config.duration.as_nanos() as u64;
    match config.mode {
        Mode::Open {
            rate_per_second,
            arrivals,
        } => {
            let mut schedule = Schedule::new(&config, arrivals, rate_per_second, index);
            while let Some(intended) = schedule.wait(&shared).await {
                let now = shared.now_ns();
                let Some(jobs) = schedule.take(&shared, intended, now) else {
                    break;
                };
                submit_one(&mut producer, &config, &shared, &mut random, intended, jobs).await?;
            }
        }
        Mode::Closed { .. } => {
            while shared.now_ns() < duration_ns {
                let jobs = shared.take_budget(run_size);
                if jobs == 0 {
                    break;
                }
                let sent = shared.now_ns();
                submit_one(&mut producer, &config, &shared, &mut random, sent, jobs).await?;
            }
        }
    }
    Ok(())
}

/// One worker connection: one slot.
async fn worker(
    target: PeerTarget,
    config: RunConfig,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    seed: u64,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
) -> anyhow::Result<()> {
    let connected = connect_worker(&target, &config.workload.queues).await;
    let _ = ready
        .send(connected.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")))
        .await;
    drop(ready);
    let (beanstalk, redis, pop_arguments) = connected?;
    work(beanstalk, redis, pop_arguments, config, shared, stop, seed).await
}

type WorkerConnection = (Option<Beanstalk>, Option<Redis>, Vec<Vec<u8>>);

async fn connect_worker(
    target: &PeerTarget,
    queues: &[String],
) -> anyhow::Result<WorkerConnection> {
    let mut beanstalk = None;
    let mut redis = None;
    let mut pop_arguments: Vec<Vec<u8>> = Vec::new();
    match target.kind {
        PeerKind::Beanstalkd => {
            let mut connection = Beanstalk::connect(&target.address).await?;
            connection.watch_only(queues).await?;
            beanstalk = Some(connection);
        }
        PeerKind::Redis => {
            redis = Some(Redis::connect(&target.address).await?);
            pop_arguments.push(b"BZPOPMIN".to_vec());
            pop_arguments.extend(queues.iter().map(|q| queue_key(q).into_bytes()));
            pop_arguments.push(RESERVE_TIMEOUT_S.to_string().into_bytes());
        }
    }
    Ok((beanstalk, redis, pop_arguments))
}

async fn work(
    mut beanstalk: Option<Beanstalk>,
    mut redis: Option<Redis>,
    pop_arguments: Vec<Vec<u8>>,
    config: RunConfig,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> anyhow::Result<()> {
    let mut random = SplitMix64::new(seed);
    // When this worker's slot last freed: the next job measures the
    // dispatch latency if it was acknowledged by then.
    let mut freed: Option<u64> = None;
    while !stop.load(Ordering::Relaxed) {
        let (id, body) = if let Some(connection) = beanstalk.as_mut() {
            match connection.reserve(RESERVE_TIMEOUT_S).await? {
                Some((id, body)) => (id, body),
                None => continue,
            }
        } else if let Some(connection) = redis.as_mut() {
            let arguments: Vec<&[u8]> = pop_arguments.iter().map(Vec::as_slice).collect();
            match connection.command(&arguments).await? {
                Reply::Array(Some(items)) => match items.get(1) {
                    Some(Reply::Bulk(Some(member))) => (0, member.clone()),
                    _ => bail!("BZPOPMIN answered {items:?}"),
                },
                Reply::Array(None) | Reply::Bulk(None) => continue,
                other => bail!("BZPOPMIN answered {other:?}"),
            }
        } else {
            unreachable!("a worker has one connection");
        };
        let received = shared.now_ns();
        let header = read_payload(&body).unwrap_or(FOREIGN);
        let (intended, flags, priority) = (header.intended_ns, header.flags, header.priority);
        let preload = flags & FLAG_PRELOAD != 0;
        if preload {
            shared.preload_dispatched.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.counters.dispatched.fetch_add(1, Ordering::Relaxed);
            shared.record(
                Metric::QueueWait,
                priority,
                received.saturating_sub(intended),
            );
        }
        if let Some(freed_at) = freed.take() {
            if shared.acks.waited_for_slot(header.send, freed_at) {
                shared.record(
                    Metric::Dispatch,
                    priority,
                    received.saturating_sub(freed_at),
                );
            }
        }
        let duration = config.workload.job_duration.sample(&mut random);
        if !duration.is_zero() {
            tokio::time::sleep(duration).await;
        }
        let sent = shared.now_ns();
        freed = Some(sent);
        if let Some(connection) = beanstalk.as_mut() {
            connection.delete(id).await?;
        } else if let Some(connection) = redis.as_mut() {
            connection.command(&[b"INCR", b"lg:completed"]).await?;
        }
        let at = shared.now_ns();
        shared.record(Metric::CompleteAck, priority, at.saturating_sub(sent));
        if preload {
            shared.preload_completed.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.record(Metric::EndToEnd, priority, at.saturating_sub(intended));
            shared.counters.add_completed(at, 1);
        }
    }
    Ok(())
}
