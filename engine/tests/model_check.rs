//! Model check: the real scheduler against a deliberately naive reference
//! scheduler, over random command sequences. The reference knows nothing of
//! the dispatch index, its classes or its lanes: it scans every waiting job,
//! filters by the dispatch rules and sorts.
//!
//! Properties, checked after every command:
//! 1. every `JobDispatched` is the reference's best job for that agent, on a
//!    shadow scheduler fed the real one's events one by one through `apply`,
//!    and no agent that started waiting for work before it may take any job
//!    (agents are served in the order they started waiting);
//! 2. no agent that wants work is left while the reference finds a job it
//!    may take;
//! 3. the shadow's digest equals the real one's, and at the end a fresh
//!    scheduler fed every event matches too (replay);
//! 4. `check_invariants` passes;
//! 5. a rejected command makes no events and leaves the digest unchanged.
//!
//! Run activity (first dispatch to last job finished) and when each agent
//! started waiting for work are tracked here from the event stream,
//! independently of the scheduler; run activity is also compared with
//! `RunView::active`.
//!
//! `LANES_PROPTEST_CASES` sets the number of cases (512 by default);
//! `PROPTEST_RNG_SEED` replays a whole run. A failure prints the seed, the
//! shrunk case and the concrete commands with their replies and events.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use lanes::model::{
    AgentId, JobId, JobOptions, JobSpec, Pair, QueueConfig, Report, RunId, RunSpec, Seq, TagMatch,
    TagRule, TimeMs,
};
use lanes::sched::view::{AgentView, JobStatus, JobView};
use lanes::sched::{
    Command, Completion, Event, EventKind, Reply, Retention, Scheduler, SchedulerConfig,
};
use proptest::collection::vec;
use proptest::option::weighted;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::RngSeed;

/// Cases per run unless `LANES_PROPTEST_CASES` says otherwise: keeps the
/// default suite well under a minute in the dev profile on 2 cores.
const CASES_DEFAULT: u32 = 512;
/// Most random commands in one case (the setup adds a few more).
const STEPS_MAX: usize = 200;

/// `paused` starts paused; `flat` does not support priorities.
const QUEUES: [&str; 5] = ["default", "fast", "slow", "paused", "flat"];
/// A queue that never exists: submissions to it are rejected.
const QUEUE_UNKNOWN: &str = "missing";
/// A queue only a `PutQueue` in the middle of a case creates.
const QUEUE_LATE: &str = "late";
const POOLS: [&str; 3] = ["default", "gpu", "arm"];
const AGENTS: [&str; 4] = ["a0", "a1", "a2", "a3"];
type Vocabulary = [(&'static str, &'static [&'static str])];
const TAGS: &Vocabulary = &[
    ("team", &["a", "b", "c"]),
    ("env", &["prod", "dev"]),
    ("kind", &["x", "y"]),
];
const LABELS: &Vocabulary = &[("os", &["linux", "mac"]), ("arch", &["x86", "arm"])];
/// Values of the priority tag, one of which does not parse.
const PRIORITY_TAG_VALUES: [&str; 3] = ["1", "-2", "high"];

// ---- generated input --------------------------------------------------

#[derive(Clone, Debug)]
struct Case {
    lease_ms: u64,
    /// Put (in order) before anything else.
    queues: Vec<QueueConfig>,
    rules: Vec<TagRule>,
    ops: Vec<Op>,
}

/// A command with its ids still abstract: `usize` picks are resolved
/// against the state at the time (modulo what exists, plus one unknown id).
#[derive(Clone, Debug)]
enum Op {
    Submit(RunSpec),
    Append {
        run: usize,
        jobs: Vec<JobSpec>,
    },
    /// Registers `AGENTS[agent]`, still running the jobs it holds whose bit
    /// (by position, modulo 8) is set in `keep`.
    Register {
        agent: usize,
        pools: Vec<String>,
        labels: Vec<Pair>,
        slots: u32,
        keep: u8,
    },
    TakeWork {
        agent: usize,
        count: u32,
    },
    Heartbeat {
        agent: usize,
    },
    Disconnect {
        agent: usize,
    },
    /// Completes running jobs (any job when none runs), one to three in
    /// one command; the first one's agent sends them all.
    Complete(Vec<(usize, Report, Mistake)>),
    CancelJob {
        pick: usize,
    },
    CancelRun {
        run: usize,
    },
    /// Mostly of a waiting or held job.
    JobPriority {
        pick: usize,
        priority: i32,
    },
    RunPriority {
        run: usize,
        priority: i32,
    },
    Pause(String),
    Resume(String),
    SetTagRules(Vec<TagRule>),
    PutQueue(QueueConfig),
    Tick {
        advance_ms: u64,
    },
    Restarted,
    /// A trigger fires for a time: mostly new times, sometimes one that
    /// already fired.
    Fire {
        trigger: usize,
        scheduled: u64,
        run: RunSpec,
    },
    Drain(bool),
    /// Forget finished runs as this retention says.
    Forget {
        finished_ms: u64,
        finished_jobs: u64,
        keys: u64,
    },
}

/// What a completion gets wrong, if anything.
#[derive(Clone, Copy, Debug)]
enum Mistake {
    None,
    AttemptAhead,
    AttemptBehind,
    OtherAgent,
}

fn strings(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    select(names).prop_map(str::to_string)
}

fn queue_name() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => strings(&QUEUES),
        1 => Just(QUEUE_LATE.to_string()),
        1 => Just(QUEUE_UNKNOWN.to_string()),
    ]
}

/// Pools picked by a bit mask from `mask_min` up: 0 gives no pool at all.
fn pools(mask_min: u8) -> impl Strategy<Value = Vec<String>> {
    (mask_min..8).prop_map(|mask| {
        POOLS
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, pool)| pool.to_string())
            .collect()
    })
}

/// Each key of the vocabulary present with `chance`, with one of its values.
fn pairs(vocabulary: &'static Vocabulary, chance: f64) -> impl Strategy<Value = Vec<Pair>> {
    vocabulary
        .iter()
        .map(|&(key, values)| {
            weighted(chance, select(values)).prop_map(move |v| v.map(|v| (key.into(), v.into())))
        })
        .collect::<Vec<_>>()
        .prop_map(|pairs| pairs.into_iter().flatten().collect())
}

fn tags(chance: f64) -> impl Strategy<Value = Vec<Pair>> {
    (
        pairs(TAGS, chance),
        weighted(0.04, select(&PRIORITY_TAG_VALUES[..])),
    )
        .prop_map(|(mut tags, priority)| {
            if let Some(value) = priority {
                tags.push(("priority".to_string(), value.to_string()));
            }
            tags
        })
}

fn priority() -> impl Strategy<Value = i32> {
    prop_oneof![
        10 => -3i32..=3,
        1 => Just(i32::MIN),
        1 => Just(i32::MAX),
    ]
}

fn job_options(for_run: bool) -> impl Strategy<Value = JobOptions> {
    (
        weighted(if for_run { 0.7 } else { 0.2 }, queue_name()),
        weighted(0.3, priority()),
        tags(if for_run { 0.4 } else { 0.25 }),
        pairs(LABELS, 0.05),
        weighted(0.06, 50u64..3_000),
        weighted(0.05, 100u64..6_000),
        weighted(0.15, 1u32..=3),
    )
        .prop_map(
            |(queue, priority, tags, labels, max_queued_time_ms, deadline_ms, max_attempts)| {
                JobOptions {
                    queue,
                    priority,
                    tags,
                    labels,
                    max_queued_time_ms,
                    deadline_ms,
                    max_attempts,
                }
            },
        )
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (job_options(false), prop::bool::weighted(0.15)).prop_map(|(options, wait_before)| JobSpec {
        options,
        wait_before,
        payload: Vec::new(),
    })
}

fn run_spec() -> impl Strategy<Value = RunSpec> {
    (
        job_options(true),
        vec(job_spec(), 1..=5),
        weighted(0.08, strings(&["k0", "k1"])),
    )
        .prop_map(|(defaults, jobs, idempotency_key)| RunSpec {
            defaults,
            jobs,
            idempotency_key,
        })
}

fn tag_rules() -> impl Strategy<Value = Vec<TagRule>> {
    let rule = (
        0..TAGS.len(),
        0u8..3,
        0usize..3,
        prop_oneof![1 => Just(0u32), 8 => 1u32..=3],
    )
        .prop_map(|(k, m, v, limit)| {
            let (key, values) = TAGS[k];
            let matches = match m {
                0 => TagMatch::AnyValue,
                1 => TagMatch::Value(values[v % values.len()].to_string()),
                _ => TagMatch::EachValue,
            };
            TagRule {
                key: key.to_string(),
                matches,
                limit,
            }
        });
    vec(rule, 0..4)
}

/// A queue configuration, mostly bound to the default pool; a pool mask of
/// 0 (no pools) is invalid.
fn queue_config(
    name: impl Strategy<Value = String>,
    pool_mask_min: u8,
    paused_chance: f64,
    priority_chance: f64,
) -> impl Strategy<Value = QueueConfig> {
    (
        name,
        -2i32..=2,
        prop_oneof![1 => Just(vec![POOLS[0].to_string()]), 1 => pools(pool_mask_min)],
        weighted(0.5, 1u32..=3),
        weighted(0.4, 1u32..=2),
        weighted(0.1, 3u32..=15),
        prop::bool::weighted(priority_chance),
        prop::bool::weighted(paused_chance),
    )
        .prop_map(
            |(name, priority, pools, action, runs, depth, priority_supported, paused)| {
                QueueConfig {
                    name,
                    priority,
                    pools,
                    action_concurrency: action,
                    run_concurrency: runs,
                    depth,
                    priority_supported,
                    paused,
                }
            },
        )
}

fn setup_queues() -> impl Strategy<Value = Vec<QueueConfig>> {
    QUEUES
        .iter()
        .map(|&name| {
            queue_config(Just(name.to_string()), 1, 0.0, 1.0).prop_map(|mut config| {
                config.paused = config.name == "paused";
                config.priority_supported = config.name != "flat";
                config
            })
        })
        .collect::<Vec<_>>()
}

/// Registers one of the agents: mostly in the default pool, so that most
/// jobs have somewhere to go.
fn register() -> impl Strategy<Value = Op> {
    (
        0..AGENTS.len(),
        prop_oneof![1 => Just(vec![POOLS[0].to_string()]), 2 => pools(1)],
        pairs(LABELS, 0.5),
        1u32..=3,
        prop_oneof![3 => Just(u8::MAX), 1 => any::<u8>()],
    )
        .prop_map(|(agent, pools, labels, slots, keep)| Op::Register {
            agent,
            pools,
            labels,
            slots,
            keep,
        })
}

fn op() -> impl Strategy<Value = Op> {
    // One index past the agents that can exist: an unknown agent.
    let agent = 0..=AGENTS.len();
    let mistake = prop_oneof![
        8 => Just(Mistake::None),
        1 => Just(Mistake::AttemptAhead),
        1 => Just(Mistake::AttemptBehind),
        1 => Just(Mistake::OtherAgent),
    ];
    let report = prop_oneof![3 => Just(Report::Succeeded), 1 => Just(Report::Failed)];
    prop_oneof![
        12 => run_spec().prop_map(Op::Submit),
        2 => (any::<usize>(), vec(job_spec(), 1..=3))
            .prop_map(|(run, jobs)| Op::Append { run, jobs }),
        5 => register(),
        16 => (agent.clone(), prop_oneof![1 => Just(0u32), 6 => 1u32..=4])
            .prop_map(|(agent, count)| Op::TakeWork { agent, count }),
        2 => agent.clone().prop_map(|agent| Op::Heartbeat { agent }),
        1 => agent.prop_map(|agent| Op::Disconnect { agent }),
        14 => vec((any::<usize>(), report, mistake), 1..=3).prop_map(Op::Complete),
        2 => any::<usize>().prop_map(|pick| Op::CancelJob { pick }),
        1 => any::<usize>().prop_map(|run| Op::CancelRun { run }),
        3 => (any::<usize>(), priority())
            .prop_map(|(pick, priority)| Op::JobPriority { pick, priority }),
        2 => (any::<usize>(), priority())
            .prop_map(|(run, priority)| Op::RunPriority { run, priority }),
        1 => queue_name().prop_map(Op::Pause),
        2 => queue_name().prop_map(Op::Resume),
        2 => tag_rules().prop_map(Op::SetTagRules),
        2 => queue_config(
            prop_oneof![5 => strings(&QUEUES), 1 => Just(QUEUE_LATE.to_string())],
            0,
            0.2,
            0.85
        )
        .prop_map(Op::PutQueue),
        5 => prop_oneof![3 => 0u64..200, 2 => 200u64..2_000, 1 => 2_000u64..12_000]
            .prop_map(|advance_ms| Op::Tick { advance_ms }),
        1 => Just(Op::Restarted),
        1 => (0usize..2, 0u64..6, run_spec())
            .prop_map(|(trigger, scheduled, run)| Op::Fire { trigger, scheduled, run }),
        1 => prop_oneof![1 => Just(true), 2 => Just(false)].prop_map(Op::Drain),
        2 => (0u64..3_000, 0u64..8, 0u64..3).prop_map(|(finished_ms, finished_jobs, keys)| {
            Op::Forget { finished_ms, finished_jobs, keys }
        }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        1_000u64..10_000,
        setup_queues(),
        tag_rules(),
        vec(register(), 1..=4),
        vec(op(), 1..=STEPS_MAX),
    )
        .prop_map(|(lease_ms, queues, rules, mut ops, more)| {
            ops.extend(more);
            Case {
                lease_ms,
                queues,
                rules,
                ops,
            }
        })
}

// ---- the naive reference ------------------------------------------------

fn tag<'a>(tags: &'a [Pair], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(k, _)| k == key)
        .map(|(_, value)| value.as_str())
}

/// Dispatch order: the minimum goes first.
type Order = (Reverse<i32>, Reverse<i32>, u64, u32, JobId);

/// A snapshot of a scheduler, read only through its public views.
struct Reference<'a> {
    scheduler: &'a Scheduler,
    /// Runs between their first dispatch and the end of their last job.
    active: &'a BTreeSet<RunId>,
    jobs: Vec<JobView<'a>>,
    queues: Vec<&'a QueueConfig>,
}

impl<'a> Reference<'a> {
    fn new(scheduler: &'a Scheduler, active: &'a BTreeSet<RunId>) -> Reference<'a> {
        Reference {
            scheduler,
            active,
            jobs: scheduler.jobs().collect(),
            queues: scheduler.queues().map(|queue| queue.config).collect(),
        }
    }

    fn queue(&self, name: &str) -> &'a QueueConfig {
        self.queues
            .iter()
            .find(|queue| queue.name == name)
            .unwrap_or_else(|| panic!("no queue {name:?}"))
    }

    fn running(&self) -> impl Iterator<Item = &JobView<'a>> {
        self.jobs
            .iter()
            .filter(|job| matches!(job.status, JobStatus::Running { .. }))
    }

    fn agent(&self, agent: AgentId) -> Option<AgentView<'a>> {
        self.scheduler.agents().find(|view| view.id == agent)
    }

    fn order(&self, job: &JobView) -> Order {
        (
            Reverse(self.queue(job.queue).priority),
            Reverse(job.priority),
            job.position,
            job.upload,
            job.id,
        )
    }

    /// Why the agent may not take the job now, or `None` if it may.
    fn blocker(&self, agent: &AgentView, job: &JobView) -> Option<String> {
        if !agent.present {
            return Some("the agent is absent".into());
        }
        if job.status != JobStatus::Waiting {
            return Some(format!("the job is {:?}", job.status));
        }
        let queue = self.queue(job.queue);
        if !queue.pools.iter().any(|pool| agent.pools.contains(pool)) {
            return Some(format!("no pool of queue {:?} is the agent's", queue.name));
        }
        if !job.labels.iter().all(|label| agent.labels.contains(label)) {
            return Some(format!("labels {:?} not all offered", job.labels));
        }
        if queue.paused {
            return Some(format!("queue {:?} is paused", queue.name));
        }
        if let Some(limit) = queue.action_concurrency {
            let running = self.running().filter(|r| r.queue == job.queue).count();
            if running >= limit as usize {
                return Some(format!("queue {:?} runs {running}/{limit}", queue.name));
            }
        }
        for rule in self.scheduler.tag_rules() {
            let Some(value) = tag(job.tags, &rule.key) else {
                continue;
            };
            let counted = match &rule.matches {
                TagMatch::AnyValue => None,
                TagMatch::Value(wanted) if wanted == value => Some(value),
                TagMatch::Value(_) => continue,
                TagMatch::EachValue => Some(value),
            };
            let running = self
                .running()
                .filter(|r| match (tag(r.tags, &rule.key), counted) {
                    (Some(_), None) => true,
                    (Some(v), Some(wanted)) => v == wanted,
                    (None, _) => false,
                })
                .count();
            if running >= rule.limit as usize {
                return Some(format!("tag rule {rule:?} counts {running} running"));
            }
        }
        if !self.active.contains(&job.run) {
            let run_queue = self.scheduler.run(job.run).expect("job of no run").queue;
            if let Some(limit) = self.queue(run_queue).run_concurrency {
                let active = self
                    .active
                    .iter()
                    .filter(|&&run| self.scheduler.run(run).expect("active run").queue == run_queue)
                    .count();
                if active >= limit as usize {
                    return Some(format!(
                        "{} is inactive and queue {run_queue:?} has {active}/{limit} runs active",
                        job.run
                    ));
                }
            }
        }
        None
    }

    /// The best job the agent may take now.
    fn best_for(&self, agent: AgentId) -> Option<&JobView<'a>> {
        let agent = self.agent(agent)?;
        self.jobs
            .iter()
            .filter(|job| self.blocker(&agent, job).is_none())
            .min_by_key(|job| self.order(job))
    }
}

// ---- the harness ----------------------------------------------------------

macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(format!($($message)+));
        }
    };
}

struct Harness {
    config: SchedulerConfig,
    real: Scheduler,
    /// Fed the real scheduler's events one by one.
    shadow: Scheduler,
    /// Active runs, from the event stream.
    active: BTreeSet<RunId>,
    /// Agents that want work (present, asking, a slot free), with the
    /// sequence of the event since which they do.
    waiting_since: BTreeMap<AgentId, Seq>,
    runs: u64,
    log: Vec<Event>,
    now: TimeMs,
    /// Every command with its reply and events, for the failure message.
    trace: Vec<String>,
    /// Restored from a snapshot image of the real scheduler halfway through
    /// the case, then given the same commands: it must decide the same.
    restored: Option<Scheduler>,
    /// The runs the current `Forget` must forget, by the reference rule.
    expect_forgotten: Option<Vec<RunId>>,
}

impl Harness {
    fn new(lease_ms: u64) -> Harness {
        let config = SchedulerConfig { lease_ms };
        Harness {
            real: Scheduler::new(config.clone()),
            shadow: Scheduler::new(config.clone()),
            config,
            active: BTreeSet::new(),
            waiting_since: BTreeMap::new(),
            runs: 0,
            log: Vec::new(),
            now: 0,
            trace: Vec::new(),
            restored: None,
            expect_forgotten: None,
        }
    }

    fn run(&mut self, case: &Case) -> Result<(), String> {
        for config in &case.queues {
            self.step(Command::PutQueue(config.clone()))?;
        }
        self.step(Command::SetTagRules(case.rules.clone()))?;
        for (i, op) in case.ops.iter().enumerate() {
            if i == case.ops.len() / 2 {
                let restored = Scheduler::from_image(self.config.clone(), self.real.image())
                    .map_err(|e| format!("restoring a snapshot image: {e}"))?;
                restored.check_invariants();
                ensure!(
                    restored.digest() == self.real.digest(),
                    "a restored snapshot image differs"
                );
                self.restored = Some(restored);
            }
            let command = self.command(op);
            self.step(command)?;
        }
        let mut fresh = Scheduler::new(self.config.clone());
        for event in &self.log {
            fresh.apply(event);
        }
        fresh.check_invariants();
        self.shadow.check_invariants();
        ensure!(
            fresh.digest() == self.real.digest(),
            "a fresh scheduler fed all {} events differs from the real one",
            self.log.len()
        );
        Ok(())
    }

    /// A job id: one handed out (kept or forgotten), or the next, unknown
    /// one.
    fn pick_job(&self, pick: usize) -> JobId {
        JobId(1 + pick as u64 % self.real.next_job_id().0)
    }

    /// The runs a `Forget` must forget, by the rule itself: every finished
    /// run (its last job's finish time) that finished more than
    /// `finished_ms` ago, and then, earliest finish first (ties by id), as
    /// many more as it takes to keep at most `finished_jobs` finished jobs.
    fn expected_forgotten(&self, finished_ms: u64, finished_jobs: u64) -> Vec<RunId> {
        let mut finished = Vec::new();
        for run in 1..=self.runs {
            let Some(view) = self.real.run(RunId(run)) else {
                continue;
            };
            let mut last = Some(0);
            for &job in view.jobs {
                match self.real.job(job).expect("job of a kept run").status {
                    JobStatus::Finished { at, .. } => last = last.map(|last: u64| last.max(at)),
                    _ => last = None,
                }
            }
            if let Some(at) = last {
                finished.push((at, RunId(run), view.jobs.len() as u64));
            }
        }
        finished.sort();
        let cutoff = self.now.saturating_sub(finished_ms);
        let mut kept: u64 = finished.iter().map(|&(_, _, jobs)| jobs).sum();
        let mut forgotten = Vec::new();
        for (at, run, jobs) in finished {
            if at >= cutoff && kept <= finished_jobs {
                break;
            }
            kept -= jobs;
            forgotten.push(run);
        }
        forgotten
    }

    fn pick_run(&self, pick: usize) -> RunId {
        RunId(1 + pick as u64 % (self.runs + 1))
    }

    fn command(&mut self, op: &Op) -> Command {
        match op {
            Op::Submit(spec) => Command::SubmitRun(spec.clone()),
            Op::Append { run, jobs } => Command::AppendJobs {
                run: self.pick_run(*run),
                jobs: jobs.clone(),
            },
            Op::Register {
                agent,
                pools,
                labels,
                slots,
                keep,
            } => {
                let name = AGENTS[*agent];
                let running = match self.real.agent_id(name) {
                    Some(id) => {
                        let view = self.real.agents().find(|a| a.id == id).expect("agent");
                        view.running
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| keep & (1 << (i % 8)) != 0)
                            .map(|(_, &job)| (job, self.real.job(job).expect("job").attempt))
                            .collect()
                    }
                    None => Vec::new(),
                };
                Command::RegisterAgent {
                    name: name.to_string(),
                    pools: pools.clone(),
                    labels: labels.clone(),
                    slots: *slots,
                    running,
                }
            }
            &Op::TakeWork { agent, count } => Command::TakeWork {
                agent: AgentId(agent as u32),
                count,
            },
            &Op::Heartbeat { agent } => Command::Heartbeat {
                agent: AgentId(agent as u32),
            },
            &Op::Disconnect { agent } => Command::Disconnect {
                agent: AgentId(agent as u32),
            },
            Op::Complete(items) => {
                let running: Vec<(JobId, AgentId, u32)> = self
                    .real
                    .jobs()
                    .filter_map(|job| match job.status {
                        JobStatus::Running { agent, .. } => Some((job.id, agent, job.attempt)),
                        _ => None,
                    })
                    .collect();
                let mut sender = None;
                let mut completions = Vec::new();
                for &(pick, report, mistake) in items {
                    let (job, agent, attempt) = if running.is_empty() {
                        (self.pick_job(pick), AgentId(0), 1)
                    } else {
                        running[pick % running.len()]
                    };
                    let (agent, attempt) = match mistake {
                        Mistake::None => (agent, attempt),
                        Mistake::AttemptAhead => (agent, attempt + 1),
                        Mistake::AttemptBehind => (agent, attempt - 1),
                        Mistake::OtherAgent => (AgentId(agent.0 + 1), attempt),
                    };
                    sender.get_or_insert(agent);
                    completions.push(Completion {
                        job,
                        attempt,
                        report,
                        exit_code: i32::from(report == Report::Failed),
                    });
                }
                Command::Complete {
                    agent: sender.unwrap_or(AgentId(0)),
                    completions,
                }
            }
            &Op::CancelJob { pick } => Command::CancelJob {
                job: self.pick_job(pick),
            },
            &Op::CancelRun { run } => Command::CancelRun {
                run: self.pick_run(run),
            },
            &Op::JobPriority { pick, priority } => {
                let live: Vec<JobId> = self
                    .real
                    .jobs()
                    .filter(|job| matches!(job.status, JobStatus::Waiting | JobStatus::Held))
                    .map(|job| job.id)
                    .collect();
                let job = if pick % 6 == 0 || live.is_empty() {
                    self.pick_job(pick)
                } else {
                    live[pick % live.len()]
                };
                Command::ChangeJobPriority { job, priority }
            }
            &Op::RunPriority { run, priority } => Command::ChangeRunPriority {
                run: self.pick_run(run),
                priority,
            },
            Op::Pause(queue) => Command::PauseQueue {
                queue: queue.clone(),
            },
            Op::Resume(queue) => Command::ResumeQueue {
                queue: queue.clone(),
            },
            Op::SetTagRules(rules) => Command::SetTagRules(rules.clone()),
            Op::PutQueue(config) => Command::PutQueue(config.clone()),
            &Op::Tick { advance_ms } => {
                self.now += advance_ms;
                Command::Tick
            }
            Op::Restarted => Command::Restarted,
            Op::Fire {
                trigger,
                scheduled,
                run,
            } => Command::FireTrigger {
                trigger: ["nightly", "hourly"][*trigger].to_string(),
                scheduled: *scheduled,
                run: run.clone(),
            },
            &Op::Drain(draining) => Command::SetDraining { draining },
            &Op::Forget {
                finished_ms,
                finished_jobs,
                keys,
            } => {
                self.expect_forgotten = Some(self.expected_forgotten(finished_ms, finished_jobs));
                Command::Forget(Retention {
                    finished_ms,
                    finished_jobs,
                    keys,
                })
            }
        }
    }

    /// Runs one command through the real scheduler and checks every
    /// property.
    fn step(&mut self, command: Command) -> Result<(), String> {
        let now = self.now;
        let digest_before = self.real.digest();
        let seq_before = self.real.last_seq();
        let mut events = Vec::new();
        self.trace.push(format!("t={now} {command:?}"));
        let twin = self.restored.as_ref().map(|_| command.clone());
        let reply = self.real.handle(command, now, &mut events);
        if let (Some(restored), Some(command)) = (self.restored.as_mut(), twin) {
            let mut twin_events = Vec::new();
            let twin_reply = restored.handle(command, now, &mut twin_events);
            ensure!(
                twin_reply == reply && twin_events == events,
                "the scheduler restored from a snapshot decided differently"
            );
        }
        self.trace.push(format!("    -> {reply:?}"));
        self.trace.extend(events.iter().map(describe));
        if let Ok(Reply::Completed { results }) = &reply {
            let accepted = results.iter().filter(|result| result.is_ok()).count();
            let completed = events
                .iter()
                .filter(|event| matches!(event.kind, EventKind::JobCompleted { .. }))
                .count();
            ensure!(
                accepted == completed,
                "{accepted} completions accepted, {completed} JobCompleted events"
            );
        }
        if let Err(rejection) = &reply {
            ensure!(events.is_empty(), "the rejection {rejection} made events");
            ensure!(
                self.real.last_seq() == seq_before && self.real.digest() == digest_before,
                "the rejection {rejection} changed the state"
            );
        }
        self.real.check_invariants();
        for (i, event) in events.iter().enumerate() {
            ensure!(
                event.seq == seq_before + 1 + i as u64 && event.time == now,
                "event {event:?} out of sequence (expected seq {}, time {now})",
                seq_before + 1 + i as u64
            );
            if let EventKind::JobDispatched { job, agent, .. } = event.kind {
                self.check_dispatch(job, agent)?;
            }
            self.shadow.apply(event);
            self.track(event);
            self.log.push(event.clone());
        }
        ensure!(
            self.shadow.digest() == self.real.digest(),
            "the shadow fed the same events differs from the real scheduler"
        );
        if let Some(expected) = self.expect_forgotten.take() {
            let forgotten: Vec<RunId> = events
                .iter()
                .flat_map(|event| match &event.kind {
                    EventKind::RunsForgotten { runs, .. } => runs.clone(),
                    _ => Vec::new(),
                })
                .collect();
            ensure!(
                forgotten == expected,
                "forgot {forgotten:?}, the reference rule forgets {expected:?}"
            );
        }
        for run in 1..=self.runs {
            let run = RunId(run);
            let Some(view) = self.real.run(run) else {
                ensure!(!self.active.contains(&run), "{run} is forgotten but active");
                continue;
            };
            ensure!(
                view.active == self.active.contains(&run),
                "{run} is active: scheduler says {}, the event stream says {}",
                view.active,
                !view.active
            );
        }
        if self.real.draining() {
            // A drain dispatches nothing, by design.
            return Ok(());
        }
        let reference = Reference::new(&self.real, &self.active);
        for agent in self.real.agents() {
            if !(agent.present && agent.requested > 0 && agent.running.len() < agent.slots as usize)
            {
                continue;
            }
            if let Some(job) = reference.best_for(agent.id) {
                return Err(format!(
                    "{} wants {} more jobs with {}/{} slots busy, but {} ({:?}) is left \
                     waiting, which it may take",
                    agent.id,
                    agent.requested,
                    agent.running.len(),
                    agent.slots,
                    job.id,
                    reference.order(job)
                ));
            }
        }
        Ok(())
    }

    /// Property 1: about to apply `JobDispatched { job, agent }` to the
    /// shadow, the reference must pick the same job, and every agent that
    /// started waiting before this one must have nothing it may take.
    fn check_dispatch(&self, job: JobId, agent: AgentId) -> Result<(), String> {
        let reference = Reference::new(&self.shadow, &self.active);
        let Some(&since) = self.waiting_since.get(&agent) else {
            return Err(format!("{job} dispatched to {agent}, which wants no work"));
        };
        for (&other, &other_since) in &self.waiting_since {
            if (other_since, other) < (since, agent) {
                if let Some(skipped) = reference.best_for(other) {
                    return Err(format!(
                        "{job} dispatched to {agent} (waiting since #{since}), but {other} \
                         (waiting since #{other_since}) may take {}",
                        skipped.id
                    ));
                }
            }
        }
        let expected = reference.best_for(agent).map(|view| view.id);
        if expected == Some(job) {
            return Ok(());
        }
        let agent_view = reference.agent(agent);
        let chosen = reference.jobs.iter().find(|view| view.id == job);
        let why = match (&agent_view, chosen) {
            (Some(agent_view), Some(chosen)) => format!(
                "the reference says of {job}: {}; its order {:?}",
                reference
                    .blocker(agent_view, chosen)
                    .unwrap_or_else(|| "takeable".into()),
                reference.order(chosen)
            ),
            _ => "unknown agent or job".into(),
        };
        let expected_order = expected
            .and_then(|id| reference.jobs.iter().find(|view| view.id == id))
            .map(|view| reference.order(view));
        Err(format!(
            "{job} dispatched to {agent}, but the reference picks {expected:?} \
             (order {expected_order:?}); {why}"
        ))
    }

    /// Run activity from the event stream: a dispatch activates its run;
    /// a run whose jobs are all finished is inactive. And which agents want
    /// work, since when.
    fn track(&mut self, event: &Event) {
        for agent in self.shadow.agents() {
            let wants =
                agent.present && agent.requested > 0 && agent.running.len() < agent.slots as usize;
            if wants {
                self.waiting_since.entry(agent.id).or_insert(event.seq);
            } else {
                self.waiting_since.remove(&agent.id);
            }
        }
        match &event.kind {
            EventKind::RunSubmitted(submitted) => self.runs = self.runs.max(submitted.run.0),
            EventKind::JobDispatched { job, .. } => {
                let run = self.shadow.job(*job).expect("dispatched job").run;
                self.active.insert(run);
            }
            _ => {}
        }
        let shadow = &self.shadow;
        self.active.retain(|&run| {
            // A forgotten run was finished.
            let Some(view) = shadow.run(run) else {
                return false;
            };
            !view.jobs.iter().all(|&job| {
                matches!(
                    shadow.job(job).expect("job of a run").status,
                    JobStatus::Finished { .. }
                )
            })
        });
    }
}

/// One event on one line, without the bulk of submissions.
fn describe(event: &Event) -> String {
    let what = match &event.kind {
        EventKind::RunSubmitted(submitted) => format!(
            "RunSubmitted {} queue {:?} priority {} jobs {}..={}: {:?}",
            submitted.run,
            submitted.queue,
            submitted.priority,
            submitted.first_job.0,
            submitted.first_job.0 + submitted.jobs.len() as u64 - 1,
            submitted
                .jobs
                .iter()
                .map(|job| (&job.queue, job.priority, &job.tags, &job.labels))
                .collect::<Vec<_>>()
        ),
        EventKind::JobsAppended {
            run,
            first_job,
            jobs,
        } => format!(
            "JobsAppended {run} jobs {}..={}: {:?}",
            first_job.0,
            first_job.0 + jobs.len() as u64 - 1,
            jobs.iter()
                .map(|job| (&job.queue, job.priority, &job.tags, &job.labels))
                .collect::<Vec<_>>()
        ),
        kind => format!("{kind:?}"),
    };
    format!("    #{} {what}", event.seq)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        format!("panic: {message}")
    } else if let Some(message) = payload.downcast_ref::<String>() {
        format!("panic: {message}")
    } else {
        "panic".to_string()
    }
}

/// The seed of this whole run: `PROPTEST_RNG_SEED` if set, else fresh.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        std::env::var("PROPTEST_RNG_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                use std::hash::{BuildHasher, RandomState};
                RandomState::new().hash_one(std::time::SystemTime::now())
            })
    })
}

fn check_case(case: &Case) -> Result<(), String> {
    let mut harness = Harness::new(case.lease_ms);
    let failure = match catch_unwind(AssertUnwindSafe(|| harness.run(case))) {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(failure)) => failure,
        Err(payload) => panic_message(payload),
    };
    Err(format!(
        "{failure}\n\ncommands (time, command, reply, events):\n{}\n\n\
         replay this run with PROPTEST_RNG_SEED={}",
        harness.trace.join("\n"),
        seed()
    ))
}

fn proptest_config() -> ProptestConfig {
    let cases = std::env::var("LANES_PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(CASES_DEFAULT);
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed()),
        // Failures print their seed and shrunk case; no regression files.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn dispatch_matches_the_naive_reference(case in case()) {
        check_case(&case).map_err(TestCaseError::fail)?;
    }
}
