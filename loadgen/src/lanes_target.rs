//! Drives a Lanes server over its wire protocol: submitter connections
//! (open or closed loop), simulated agents with slots, and the optional
//! preload of waiting jobs. Records into [`Shared`]; knows nothing of
//! reports.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use lanes::client::Client;
use lanes::model::{JobOptions, JobSpec, QueueConfig, Report, RunSpec, TagMatch, TagRule};
use lanes::protocol::{Completion, Message, Role, SubmitRun, TakeWork};
use tokio::sync::Semaphore;

use crate::metrics::Metric;
use crate::order::{Dispatched, Submitted};
use crate::pacer::SplitMix64;
use crate::run::{finish, RunConfig, RunResult, Schedule, Shared};
use crate::workload::{
    payload, read_payload, Choice, Header, Mode, FLAG_LIMITED, FLAG_PRELOAD, FOREIGN,
    PRELOAD_TAG_KEY, SEND_UNKNOWN, TAG_KEY,
};

/// Completions in one `Complete`: the server's default per-request limit.
const COMPLETIONS_PER_REQUEST_MAX: usize = 1_024;
/// Pushes an agent takes in one go before it reports what has ended.
const PUSHES_PER_TURN_MAX: usize = 1_024;
/// How often an agent says it is alive when it has nothing else to say
/// (the default lease is 30 s).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Preload submissions in flight at once.
const PRELOAD_IN_FLIGHT_MAX: usize = 16;

#[derive(Clone, Debug)]
pub struct LanesTarget {
    pub address: String,
    pub submitter_token: Vec<u8>,
    pub agent_token: Vec<u8>,
    /// Needed to create queues and tag rules; not needed for a workload on
    /// the default queue without limits.
    pub admin_token: Option<Vec<u8>>,
}

pub async fn run(config: &RunConfig, target: &LanesTarget) -> anyhow::Result<RunResult> {
    setup(config, target).await?;
    let shared = Shared::new(config);
    if let Some(preload) = &config.preload {
        preload_jobs(config, target, preload, &shared).await?;
    }
    let stop_agents = Arc::new(AtomicBool::new(false));
    let mut agents = Vec::new();
    for index in 0..config.agents {
        let client = Client::connect(&target.address, &target.agent_token, "lanes-loadgen agent")
            .await
            .with_context(|| format!("agent {index} connecting to {}", target.address))?;
        client
            .register(
                &format!("loadgen-{index}"),
                vec![lanes::model::DEFAULT_POOL.to_string()],
                vec![],
                config.slots_per_agent,
                vec![],
            )
            .await
            .with_context(|| format!("agent {index} registering"))?;
        agents.push(tokio::spawn(agent(
            client,
            config.clone(),
            shared.clone(),
            stop_agents.clone(),
            config.seed ^ (0xa6e7 << 32) ^ u64::from(index),
        )));
    }
    let mut clients = Vec::new();
    for index in 0..config.connections {
        let client = Arc::new(
            Client::connect(&target.address, &target.submitter_token, "lanes-loadgen")
                .await
                .with_context(|| format!("submitter {index} connecting to {}", target.address))?,
        );
        clients.push(client);
    }
    // Everything is connected: the schedule starts now.
    shared.start_clock();
    let mut submitters = Vec::new();
    for (index, client) in clients.into_iter().enumerate() {
        submitters.push(tokio::spawn(submitter(
            client,
            config.clone(),
            shared.clone(),
            index as u32,
        )));
    }
    finish(
        config,
        shared,
        submitters,
        agents,
        &stop_agents,
        format!("lanes://{}", target.address),
        true,
    )
    .await
}

/// Creates the workload's queues and tag rules (admin), or checks that none
/// are needed.
async fn setup(config: &RunConfig, target: &LanesTarget) -> anyhow::Result<()> {
    let workload = &config.workload;
    let needs_admin = workload
        .queues
        .iter()
        .any(|q| q != lanes::model::DEFAULT_QUEUE)
        || workload.tag_limit.is_some()
        || config.preload.is_some();
    if !needs_admin {
        return Ok(());
    }
    let Some(token) = &target.admin_token else {
        bail!("this workload creates queues or tag rules: give an admin token (--admin-token or LANES_ADMIN_TOKEN)");
    };
    let admin = Client::connect(&target.address, token, "lanes-loadgen setup").await?;
    if admin.role() != Role::Admin {
        bail!("the admin token grants the {:?} role", admin.role());
    }
    for queue in &workload.queues {
        admin
            .put_queue(QueueConfig::new(queue))
            .await
            .with_context(|| format!("creating queue {queue}"))?;
    }
    let mut rules = Vec::new();
    if let Some(limit) = workload.tag_limit {
        rules.push(TagRule {
            key: TAG_KEY.to_string(),
            matches: TagMatch::EachValue,
            limit,
        });
    }
    if let Some(preload) = &config.preload {
        rules.push(TagRule {
            key: PRELOAD_TAG_KEY.to_string(),
            matches: TagMatch::EachValue,
            limit: preload.limit,
        });
    }
    admin
        .set_tag_rules(rules)
        .await
        .context("setting tag rules")?;
    Ok(())
}

/// The run of one send: `jobs` jobs whose payloads carry the intended time
/// and the send's number.
fn spec(
    config: &RunConfig,
    choice: &Choice,
    (intended_ns, send): (u64, u64),
    jobs: u64,
) -> (RunSpec, bool) {
    let workload = &config.workload;
    let limited = workload.limited(choice);
    let flags = if limited { FLAG_LIMITED } else { 0 };
    let tags = choice
        .tag_value
        .map(|v| vec![(TAG_KEY.to_string(), format!("v{v}"))])
        .unwrap_or_default();
    let job = JobSpec {
        options: JobOptions::default(),
        wait_before: false,
        payload: payload(
            Header {
                intended_ns,
                flags,
                priority: choice.priority,
                send,
            },
            workload.payload_bytes,
        ),
    };
    let spec = RunSpec {
        defaults: JobOptions {
            queue: Some(workload.queues[choice.queue as usize].clone()),
            priority: Some(choice.priority),
            tags,
            ..JobOptions::default()
        },
        jobs: vec![job; jobs as usize],
        idempotency_key: None,
    };
    (spec, limited)
}

/// Records an acknowledged submission.
fn acked(
    shared: &Shared,
    choice: &Choice,
    (send, limited): (u64, bool),
    sent_ns: u64,
    answer: Option<Message>,
) {
    let now = shared.now_ns();
    match answer {
        Some(Message::Submitted(submitted)) => {
            shared.record(
                Metric::SubmitAck,
                choice.priority,
                now.saturating_sub(sent_ns),
            );
            shared.counters.add_acked(now, u64::from(submitted.count));
            shared.acks.acked(send, now);
            shared
                .order
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .submitted(Submitted {
                    first_job: submitted.first_job.0,
                    count: submitted.count,
                    queue: choice.queue,
                    priority: choice.priority,
                    judged: !limited,
                    acked_ns: now,
                });
        }
        Some(Message::Error(error)) => {
            // The first refusal says why; the count says how often.
            if shared.counters.rejected.fetch_add(1, Ordering::Relaxed) == 0 {
                eprintln!(
                    "lanes-loadgen: submission refused: {}: {}",
                    error.code, error.message
                );
            }
        }
        _ => {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn submitter(
    client: Arc<Client>,
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
            let in_flight = Arc::new(Semaphore::new(config.in_flight_max as usize));
            while let Some(intended) = schedule.wait(&shared).await {
                let permit = in_flight.clone().acquire_owned().await?;
                let now = shared.now_ns();
                let Some(jobs) = schedule.take(&shared, intended, now) else {
                    break;
                };
                let choice = config.workload.choose(&mut random);
                let send = shared.acks.next_send();
                let (spec, limited) = spec(&config, &choice, (intended, send), jobs);
                shared.counters.sent.fetch_add(jobs, Ordering::Relaxed);
                let (_, answer) = client.send(SubmitRun { spec }.into()).await?;
                let shared = shared.clone();
                tokio::spawn(async move {
                    let answer = answer.await.ok();
                    acked(&shared, &choice, (send, limited), intended, answer);
                    drop(permit);
                });
            }
            // Wait for the answers still in flight.
            let _ = in_flight.acquire_many(config.in_flight_max).await?;
        }
        Mode::Closed { outstanding } => {
            let mut loops = Vec::new();
            for lane in 0..outstanding {
                let client = client.clone();
                let shared = shared.clone();
                let config = config.clone();
                let mut random = SplitMix64::new(random.next_u64() ^ u64::from(lane));
                loops.push(tokio::spawn(async move {
                    while shared.now_ns() < duration_ns {
                        let jobs = shared.take_budget(run_size);
                        if jobs == 0 {
                            break;
                        }
                        let choice = config.workload.choose(&mut random);
                        let sent = shared.now_ns();
                        let send = shared.acks.next_send();
                        let (spec, limited) = spec(&config, &choice, (sent, send), jobs);
                        shared.counters.sent.fetch_add(jobs, Ordering::Relaxed);
                        let answer = match client.send(SubmitRun { spec }.into()).await {
                            Ok((_, answer)) => answer.await.ok(),
                            Err(_) => None,
                        };
                        let failed = answer.is_none();
                        acked(&shared, &choice, (send, limited), sent, answer);
                        if failed {
                            anyhow::bail!("the submitter connection closed");
                        }
                    }
                    Ok(())
                }));
            }
            for handle in loops {
                handle.await??;
            }
        }
    }
    Ok(())
}

/// Submits the preload in large runs, a few in flight.
async fn preload_jobs(
    config: &RunConfig,
    target: &LanesTarget,
    preload: &crate::run::Preload,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    let client = Arc::new(
        Client::connect(
            &target.address,
            &target.submitter_token,
            "lanes-loadgen preload",
        )
        .await?,
    );
    let in_flight = Arc::new(Semaphore::new(PRELOAD_IN_FLIGHT_MAX));
    let mut left = preload.jobs;
    let mut index = 0u64;
    let started = Instant::now();
    while left > 0 {
        let count = left.min(1_000);
        left -= count;
        let queue = &config.workload.queues[(index % config.workload.queues.len() as u64) as usize];
        let jobs = (0..count)
            .map(|j| JobSpec {
                options: JobOptions {
                    tags: vec![(
                        PRELOAD_TAG_KEY.to_string(),
                        format!(
                            "v{}",
                            (index * 1_000 + j) % u64::from(preload.tag_values.max(1))
                        ),
                    )],
                    ..JobOptions::default()
                },
                wait_before: false,
                payload: payload(
                    Header {
                        intended_ns: shared.now_ns(),
                        flags: FLAG_PRELOAD | FLAG_LIMITED,
                        priority: preload.priority,
                        send: SEND_UNKNOWN,
                    },
                    config.workload.payload_bytes,
                ),
            })
            .collect();
        let spec = RunSpec {
            defaults: JobOptions {
                queue: Some(queue.clone()),
                priority: Some(preload.priority),
                ..JobOptions::default()
            },
            jobs,
            idempotency_key: None,
        };
        index += 1;
        let permit = in_flight.clone().acquire_owned().await?;
        let (_, answer) = client.send(SubmitRun { spec }.into()).await?;
        tokio::spawn(async move {
            match answer.await {
                Ok(Message::Submitted(_)) => {}
                Ok(Message::Error(error)) => eprintln!("preload refused: {}", error.message),
                _ => eprintln!("preload: the connection closed"),
            }
            drop(permit);
        });
    }
    let _ = in_flight.acquire_many(PRELOAD_IN_FLIGHT_MAX as u32).await?;
    eprintln!(
        "preloaded {} jobs in {:.1} s",
        preload.jobs,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A job running on a simulated agent.
struct Running {
    job: u64,
    attempt: u32,
    priority: i32,
    intended_ns: u64,
    flags: u32,
}

/// Polls a future once; its result if it is ready at once.
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// One simulated agent: takes dispatches, "runs" each for its sampled
/// duration on a timer, and reports completions in batches, asking for as
/// many jobs as it has free slots after each report.
async fn agent(
    client: Client,
    config: RunConfig,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> anyhow::Result<()> {
    let client = Arc::new(client);
    let slots = config.slots_per_agent;
    client.take_work(slots).await?;
    let queue_index: HashMap<&str, u32> = config
        .workload
        .queues
        .iter()
        .enumerate()
        .map(|(i, q)| (q.as_str(), i as u32))
        .collect();
    let mut random = SplitMix64::new(seed);
    let mut timers: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut running: HashMap<u64, Running> = HashMap::new();
    let mut due: Vec<u64> = Vec::new();
    // One entry per free slot (the generator's view), oldest first: when
    // it freed, if the agent had been full then. Such entries are only
    // pushed onto an empty queue (a full agent has no free slot), so the
    // next dispatches fill exactly those slots; each measures the dispatch
    // latency if its job was acknowledged before the slot freed (it was
    // waiting at the server). Slots freed while others stood idle are not
    // measured, since the next job may go to any of them.
    let mut freed: VecDeque<Option<u64>> = (0..slots).map(|_| None).collect();
    let mut last_full_ns = 0u64;
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut check_stop = tokio::time::interval(Duration::from_millis(20));
    loop {
        let next_timer = timers.peek().map(|Reverse((at, _))| *at);
        let mut pushes = Vec::new();
        tokio::select! {
            push = client.next_push() => match push {
                Some(frame) => pushes.push(frame),
                None => {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    bail!("the agent connection closed");
                }
            },
            _ = tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now).into()), if next_timer.is_some() => {}
            _ = heartbeat.tick() => {
                let _ = client.send(lanes::protocol::Heartbeat.into()).await;
            }
            _ = check_stop.tick() => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
        }
        while pushes.len() < PUSHES_PER_TURN_MAX {
            match now_or_never(client.next_push()) {
                Some(Some(frame)) => pushes.push(frame),
                _ => break,
            }
        }
        for frame in pushes {
            let Message::Dispatch(dispatch) = frame.message else {
                continue;
            };
            let received = shared.now_ns();
            let header = read_payload(&dispatch.payload).unwrap_or(FOREIGN);
            let (intended, flags, send) = (header.intended_ns, header.flags, header.send);
            let preload = flags & FLAG_PRELOAD != 0;
            if preload {
                shared.preload_dispatched.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.counters.dispatched.fetch_add(1, Ordering::Relaxed);
                shared.record(
                    Metric::QueueWait,
                    dispatch.priority,
                    received.saturating_sub(intended),
                );
            }
            if let Some(Some(freed_at)) = freed.pop_front() {
                if flags & FLAG_LIMITED == 0 && shared.acks.waited_for_slot(send, freed_at) {
                    shared.record(
                        Metric::Dispatch,
                        dispatch.priority,
                        received.saturating_sub(freed_at),
                    );
                }
            }
            if dispatch.attempt == 1 {
                if let Some(queue) = queue_index.get(dispatch.queue.as_str()) {
                    shared
                        .order
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .dispatched(Dispatched {
                            job: dispatch.job.0,
                            queue: *queue,
                            priority: dispatch.priority,
                            lower_bound_ns: intended.max(last_full_ns).min(received),
                            received_ns: received,
                        });
                }
            }
            let job = dispatch.job.0;
            running.insert(
                job,
                Running {
                    job,
                    attempt: dispatch.attempt,
                    priority: dispatch.priority,
                    intended_ns: intended,
                    flags,
                },
            );
            let duration = config.workload.job_duration.sample(&mut random);
            if duration.is_zero() {
                due.push(job);
            } else {
                timers.push(Reverse((Instant::now() + duration, job)));
            }
        }
        let now = Instant::now();
        while let Some(Reverse((at, job))) = timers.peek().copied() {
            if at > now || due.len() >= COMPLETIONS_PER_REQUEST_MAX {
                break;
            }
            timers.pop();
            due.push(job);
        }
        while !due.is_empty() {
            let batch: Vec<Running> = due
                .drain(..due.len().min(COMPLETIONS_PER_REQUEST_MAX))
                .filter_map(|job| running.remove(&job))
                .collect();
            let sent_ns = shared.now_ns();
            if running.len() + batch.len() >= slots as usize {
                last_full_ns = sent_ns;
            }
            let was_full = running.len() + batch.len() >= slots as usize;
            for _ in &batch {
                freed.push_back(was_full.then_some(sent_ns));
            }
            let completions = batch
                .iter()
                .map(|r| Completion {
                    job: lanes::model::JobId(r.job),
                    attempt: r.attempt,
                    report: Report::Succeeded,
                    exit_code: 0,
                })
                .collect();
            let (_, answer) = client
                .send(lanes::protocol::Complete { completions }.into())
                .await?;
            let free = slots.saturating_sub(running.len() as u32);
            let _ = client.send(TakeWork { count: free }.into()).await?;
            let shared = shared.clone();
            tokio::spawn(async move {
                let answer = answer.await;
                let at = shared.now_ns();
                if let Some(first) = batch.first() {
                    shared.record(
                        Metric::CompleteAck,
                        first.priority,
                        at.saturating_sub(sent_ns),
                    );
                }
                match answer {
                    Ok(Message::CompleteResults(results)) => {
                        let mut completed = 0;
                        for (result, job) in results.results.iter().zip(&batch) {
                            if result.is_err() {
                                shared
                                    .counters
                                    .completion_errors
                                    .fetch_add(1, Ordering::Relaxed);
                            } else if job.flags & FLAG_PRELOAD != 0 {
                                shared.preload_completed.fetch_add(1, Ordering::Relaxed);
                            } else {
                                completed += 1;
                                shared.record(
                                    Metric::EndToEnd,
                                    job.priority,
                                    at.saturating_sub(job.intended_ns),
                                );
                            }
                        }
                        shared.counters.add_completed(at, completed);
                    }
                    _ => {
                        shared
                            .counters
                            .completion_errors
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                }
            });
        }
    }
}
