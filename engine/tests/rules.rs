//! The scheduling rules, one test per rule and named after it, and the worked
//! examples of the reference docs (Valohai queue priority, Flyte queues,
//! Dagster run-queue priority, Buildkite job prioritization) as `seed_*`.
//!
//! Every test drives the scheduler through [`World`], which checks the
//! scheduler's invariants after each command, checks that a rejection
//! records nothing, and, when the test ends, replays every event into a new
//! scheduler and compares digests: each rule test also proves that replay
//! rebuilds the same state. Time is an input here as in production: the
//! world's clock moves only when a test says so.

use lanes::model::{
    AgentId, ErrorCode, JobId, JobOptions, JobSpec, Outcome, Pair, PriorityParseError, QueueConfig,
    Report, RunId, RunSpec, StopReason, TagMatch, TagRule, TimeMs, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_POOL, DEFAULT_QUEUE,
};
use lanes::sched::view::{BlockReason, JobStatus, JobView};
use lanes::sched::{
    Command, Completion, Event, EventKind, JobKey, Rejection, Reply, Retention, Scheduler,
    SchedulerConfig, FORGET_JOBS_MAX, LEASE_MS_DEFAULT,
};

// ---- harness --------------------------------------------------------------

/// The clock at the start of every test: not zero, so "at time 0" bugs show.
const START_MS: TimeMs = 1_000;

/// A scheduler with a clock and the log of every event it made.
struct World {
    scheduler: Scheduler,
    config: SchedulerConfig,
    now: TimeMs,
    /// Every event of every accepted command, in order: what replay gets.
    log: Vec<Event>,
    /// The events of the last command.
    last: Vec<Event>,
}

impl World {
    fn new() -> World {
        let config = SchedulerConfig::default();
        World {
            scheduler: Scheduler::new(config.clone()),
            config,
            now: START_MS,
            log: Vec::new(),
            last: Vec::new(),
        }
    }

    /// Runs one command at the current time. Checks the invariants after
    /// it, and that a rejection made no event and changed no state.
    fn handle(&mut self, command: Command) -> Result<Reply, Rejection> {
        let digest_before = self.scheduler.digest();
        self.last.clear();
        let result = self.scheduler.handle(command, self.now, &mut self.last);
        self.scheduler.check_invariants();
        match &result {
            Ok(_) => self.log.extend(self.last.iter().cloned()),
            Err(rejection) => {
                assert!(self.last.is_empty(), "rejection {rejection} made events");
                assert_eq!(
                    self.scheduler.digest(),
                    digest_before,
                    "rejection {rejection} changed the state"
                );
            }
        }
        result
    }

    fn ok(&mut self, command: Command) -> Reply {
        let description = format!("{command:?}");
        self.handle(command)
            .unwrap_or_else(|rejection| panic!("{description} was rejected: {rejection}"))
    }

    fn reject(&mut self, command: Command) -> Rejection {
        let description = format!("{command:?}");
        match self.handle(command) {
            Ok(reply) => panic!("{description} was accepted: {reply:?}"),
            Err(rejection) => rejection,
        }
    }

    fn submit_run(&mut self, spec: RunSpec) -> (RunId, Vec<JobId>) {
        match self.ok(Command::SubmitRun(spec)) {
            Reply::Submitted {
                run,
                first_job,
                count,
                replayed: false,
            } => (run, job_range(first_job, count)),
            reply => panic!("a submission answered {reply:?}"),
        }
    }

    fn submit(&mut self, spec: RunSpec) -> Vec<JobId> {
        self.submit_run(spec).1
    }

    /// Submits a run of exactly one job and returns that job.
    fn submit_one(&mut self, spec: RunSpec) -> JobId {
        assert_eq!(spec.jobs.len(), 1, "submit_one takes a run of one job");
        self.submit(spec)[0]
    }

    fn append(&mut self, run: RunId, jobs: Vec<JobSpec>) -> Vec<JobId> {
        match self.ok(Command::AppendJobs { run, jobs }) {
            Reply::Submitted {
                run: answered,
                first_job,
                count,
                replayed: false,
            } => {
                assert_eq!(answered, run);
                job_range(first_job, count)
            }
            reply => panic!("an append answered {reply:?}"),
        }
    }

    fn put_queue(&mut self, config: QueueConfig) {
        self.ok(Command::PutQueue(config));
    }

    fn set_tag_rules(&mut self, rules: Vec<TagRule>) {
        self.ok(Command::SetTagRules(rules));
    }

    fn register(
        &mut self,
        name: &str,
        pools: &[&str],
        labels: &[(&str, &str)],
        slots: u32,
    ) -> AgentId {
        let command = Command::RegisterAgent {
            name: name.to_string(),
            pools: pools.iter().map(|pool| pool.to_string()).collect(),
            labels: pairs(labels),
            slots,
            running: vec![],
        };
        match self.ok(command) {
            Reply::Registered { agent } => agent,
            reply => panic!("a registration answered {reply:?}"),
        }
    }

    /// An agent in the default pool without labels.
    fn worker(&mut self, name: &str, slots: u32) -> AgentId {
        self.register(name, &[DEFAULT_POOL], &[], slots)
    }

    /// The agent asks for `count` jobs; returns those dispatched at once.
    fn take(&mut self, agent: AgentId, count: u32) -> Vec<JobId> {
        self.ok(Command::TakeWork { agent, count });
        self.dispatched()
    }

    /// The agent reports the job's current attempt; returns the jobs the
    /// completion dispatched to agents waiting for work.
    fn complete(&mut self, agent: AgentId, job: JobId, report: Report) -> Vec<JobId> {
        let attempt = self.view(job).attempt;
        let exit_code = match report {
            Report::Succeeded => 0,
            Report::Failed => 1,
        };
        let results = self.complete_all(
            agent,
            vec![Completion {
                job,
                attempt,
                report,
                exit_code,
            }],
        );
        if let Err(rejection) = &results[0] {
            panic!("completing {job} was refused: {rejection}");
        }
        self.dispatched()
    }

    /// One `Complete` of many jobs; returns each one's result. Checks that
    /// exactly the accepted ones were recorded, in order.
    fn complete_all(
        &mut self,
        agent: AgentId,
        completions: Vec<Completion>,
    ) -> Vec<Result<(), Rejection>> {
        let results = match self.ok(Command::Complete {
            agent,
            completions: completions.clone(),
        }) {
            Reply::Completed { results } => results,
            reply => panic!("a Complete answered {reply:?}"),
        };
        assert_eq!(results.len(), completions.len());
        let accepted: Vec<JobId> = completions
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|(completion, _)| completion.job)
            .collect();
        let recorded: Vec<JobId> = self
            .last
            .iter()
            .filter_map(|event| match event.kind {
                EventKind::JobCompleted { job, .. } => Some(job),
                _ => None,
            })
            .collect();
        assert_eq!(recorded, accepted, "completions recorded");
        results
    }

    /// A `Complete` of one job that must be refused; it changes nothing.
    fn reject_completion(&mut self, agent: AgentId, job: JobId, attempt: u32) -> Rejection {
        let digest_before = self.scheduler.digest();
        let completion = Completion {
            job,
            attempt,
            report: Report::Succeeded,
            exit_code: 0,
        };
        let mut results = self.complete_all(agent, vec![completion]);
        assert!(self.last.is_empty(), "a refused completion made events");
        assert_eq!(self.scheduler.digest(), digest_before);
        match results.pop() {
            Some(Err(rejection)) => rejection,
            result => panic!("completing {job} answered {result:?}"),
        }
    }

    fn succeed(&mut self, agent: AgentId, job: JobId) -> Vec<JobId> {
        self.complete(agent, job, Report::Succeeded)
    }

    fn fail(&mut self, agent: AgentId, job: JobId) -> Vec<JobId> {
        self.complete(agent, job, Report::Failed)
    }

    fn cancel(&mut self, job: JobId) {
        self.ok(Command::CancelJob { job });
    }

    fn change_priority(&mut self, job: JobId, priority: i32) {
        self.ok(Command::ChangeJobPriority { job, priority });
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    /// Moves the clock on by `ms` and ticks; returns the jobs dispatched.
    fn tick(&mut self, ms: u64) -> Vec<JobId> {
        self.advance(ms);
        self.ok(Command::Tick);
        self.dispatched()
    }

    /// The jobs the last command dispatched, in order.
    fn dispatched(&self) -> Vec<JobId> {
        dispatched(&self.last)
    }

    fn last_kinds(&self) -> Vec<EventKind> {
        self.last.iter().map(|event| event.kind.clone()).collect()
    }

    fn stop_requests_ever(&self) -> Vec<(JobId, StopReason)> {
        stop_requests(&self.log)
    }

    fn view(&self, job: JobId) -> JobView<'_> {
        self.scheduler
            .job(job)
            .unwrap_or_else(|| panic!("{job} is unknown"))
    }

    fn status(&self, job: JobId) -> JobStatus {
        self.view(job).status
    }

    fn outcome(&self, job: JobId) -> Outcome {
        match self.status(job) {
            JobStatus::Finished { outcome, .. } => outcome,
            status => panic!("{job} is not finished: {status:?}"),
        }
    }

    fn priority(&self, job: JobId) -> i32 {
        self.view(job).priority
    }

    fn own_priority(&self, job: JobId) -> bool {
        self.view(job).own_priority
    }

    fn ahead(&self, job: JobId) -> Option<u64> {
        self.explain(job).ahead
    }

    fn reasons(&self, job: JobId) -> Vec<BlockReason> {
        self.explain(job).reasons
    }

    fn explain(&self, job: JobId) -> lanes::sched::view::Explanation {
        self.scheduler
            .explain(job)
            .unwrap_or_else(|rejection| panic!("explain {job}: {rejection}"))
    }

    fn digest(&self) -> u128 {
        self.scheduler.digest()
    }
}

impl Drop for World {
    /// Replays the whole log into a new scheduler: it must reach the same
    /// state, by digest.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let mut replayed = Scheduler::new(self.config.clone());
        for event in &self.log {
            replayed.apply(event);
        }
        replayed.check_invariants();
        assert_eq!(replayed.last_seq(), self.scheduler.last_seq());
        assert_eq!(
            replayed.digest(),
            self.scheduler.digest(),
            "replaying {} events gave another state",
            self.log.len()
        );
    }
}

/// The jobs dispatched by these events, in order.
fn dispatched(events: &[Event]) -> Vec<JobId> {
    events
        .iter()
        .filter_map(|event| match event.kind {
            EventKind::JobDispatched { job, .. } => Some(job),
            _ => None,
        })
        .collect()
}

/// Every dispatch with its agent and attempt.
fn dispatches(events: &[Event]) -> Vec<(JobId, AgentId, u32)> {
    events
        .iter()
        .filter_map(|event| match event.kind {
            EventKind::JobDispatched {
                job,
                agent,
                attempt,
            } => Some((job, agent, attempt)),
            _ => None,
        })
        .collect()
}

fn stop_requests(events: &[Event]) -> Vec<(JobId, StopReason)> {
    events
        .iter()
        .filter_map(|event| match event.kind {
            EventKind::StopRequested { job, reason, .. } => Some((job, reason)),
            _ => None,
        })
        .collect()
}

fn job_range(first: JobId, count: u32) -> Vec<JobId> {
    (0..u64::from(count)).map(|i| JobId(first.0 + i)).collect()
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<Pair> {
    pairs
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

// ---- specs ----------------------------------------------------------------

fn job() -> JobSpec {
    JobSpec::default()
}

fn jobs(count: usize) -> Vec<JobSpec> {
    vec![job(); count]
}

fn run_of(jobs: Vec<JobSpec>) -> RunSpec {
    RunSpec {
        jobs,
        ..RunSpec::default()
    }
}

fn one_job() -> RunSpec {
    run_of(vec![job()])
}

/// Options set on a job, or on a run as the defaults of its jobs.
trait Options: Sized {
    fn options_mut(&mut self) -> &mut JobOptions;

    fn queue(mut self, queue: &str) -> Self {
        self.options_mut().queue = Some(queue.to_string());
        self
    }

    fn priority(mut self, priority: i32) -> Self {
        self.options_mut().priority = Some(priority);
        self
    }

    fn tag(mut self, key: &str, value: &str) -> Self {
        let tag = (key.to_string(), value.to_string());
        self.options_mut().tags.push(tag);
        self
    }

    fn label(mut self, key: &str, value: &str) -> Self {
        let label = (key.to_string(), value.to_string());
        self.options_mut().labels.push(label);
        self
    }

    fn max_queued_time_ms(mut self, ms: u64) -> Self {
        self.options_mut().max_queued_time_ms = Some(ms);
        self
    }

    fn deadline_ms(mut self, ms: u64) -> Self {
        self.options_mut().deadline_ms = Some(ms);
        self
    }

    fn max_attempts(mut self, attempts: u32) -> Self {
        self.options_mut().max_attempts = Some(attempts);
        self
    }
}

impl Options for JobSpec {
    fn options_mut(&mut self) -> &mut JobOptions {
        &mut self.options
    }
}

impl Options for RunSpec {
    fn options_mut(&mut self) -> &mut JobOptions {
        &mut self.defaults
    }
}

trait Step {
    /// A Buildkite `wait` step stands before this job.
    fn after_wait(self) -> Self;
}

impl Step for JobSpec {
    fn after_wait(mut self) -> Self {
        self.wait_before = true;
        self
    }
}

fn tag_rule(key: &str, matches: TagMatch, limit: u32) -> TagRule {
    TagRule {
        key: key.to_string(),
        matches,
        limit,
    }
}

// ---- routing --------------------------------------------------------------

#[test]
fn routing_job_queue_then_run_queue_then_default() {
    let mut world = World::new();
    world.put_queue(QueueConfig::new("run-queue"));
    world.put_queue(QueueConfig::new("job-queue"));

    let (run, ids) =
        world.submit_run(run_of(vec![job().queue("job-queue"), job()]).queue("run-queue"));
    assert_eq!(world.view(ids[0]).queue, "job-queue");
    assert_eq!(world.view(ids[1]).queue, "run-queue");
    assert_eq!(world.scheduler.run(run).unwrap().queue, "run-queue");

    let appended = world.append(run, vec![job(), job().queue("job-queue")]);
    assert_eq!(world.view(appended[0]).queue, "run-queue");
    assert_eq!(world.view(appended[1]).queue, "job-queue");

    let plain = world.submit_one(one_job());
    assert_eq!(world.view(plain).queue, DEFAULT_QUEUE);
}

#[test]
fn routing_default_queue_always_exists() {
    let world = World::new();
    let default = world
        .scheduler
        .queue(DEFAULT_QUEUE)
        .expect("a new scheduler has the default queue");
    assert_eq!(default.config, &QueueConfig::new(DEFAULT_QUEUE));
    assert_eq!(world.scheduler.queues().count(), 1);
}

#[test]
fn routing_unknown_queue_is_rejected_and_records_nothing() {
    let mut world = World::new();
    let digest = world.digest();
    let unknown = Rejection::UnknownQueue {
        queue: "nowhere".to_string(),
    };
    for spec in [
        one_job().queue("nowhere"),
        run_of(vec![job(), job().queue("nowhere")]),
    ] {
        let rejection = world.reject(Command::SubmitRun(spec));
        assert_eq!(rejection, unknown);
        assert_eq!(rejection.code(), ErrorCode::NotFound);
        assert_eq!(rejection.to_string(), "unknown queue \"nowhere\"");
    }
    assert!(world.log.is_empty());
    assert_eq!(world.digest(), digest);
    assert_eq!(world.scheduler.jobs().count(), 0);

    // Nothing was numbered either: the first accepted run gets the first ids.
    let (run, ids) = world.submit_run(one_job());
    assert_eq!((run, ids), (RunId(1), vec![JobId(1)]));

    let digest = world.digest();
    let rejection = world.reject(Command::AppendJobs {
        run,
        jobs: vec![job(), job().queue("nowhere")],
    });
    assert_eq!(rejection, unknown);
    assert_eq!(world.digest(), digest);
    assert_eq!(world.scheduler.run(run).unwrap().jobs.to_vec(), [JobId(1)]);

    for command in [
        Command::PauseQueue {
            queue: "nowhere".to_string(),
        },
        Command::ResumeQueue {
            queue: "nowhere".to_string(),
        },
    ] {
        assert_eq!(world.reject(command), unknown);
    }
}

#[test]
fn routing_priority_job_then_run_then_zero() {
    let mut world = World::new();
    let ids = world.submit(run_of(vec![job().priority(7), job()]).priority(5));
    assert_eq!(
        (world.priority(ids[0]), world.own_priority(ids[0])),
        (7, true)
    );
    assert_eq!(
        (world.priority(ids[1]), world.own_priority(ids[1])),
        (5, false)
    );

    let plain = world.submit_one(one_job());
    assert_eq!(
        (world.priority(plain), world.own_priority(plain)),
        (0, false)
    );
}

// ---- priority values --------------------------------------------------------

#[test]
fn priority_values_are_i32_default_zero_negative_allowed_higher_first() {
    let mut world = World::new();
    let zero = world.submit_one(one_job());
    let minus_five = world.submit_one(run_of(vec![job().priority(-5)]));
    let three = world.submit_one(run_of(vec![job().priority(3)]));
    let max = world.submit_one(run_of(vec![job().priority(i32::MAX)]));
    let min = world.submit_one(run_of(vec![job().priority(i32::MIN)]));
    let minus_one = world.submit_one(one_job().priority(-1));

    let agent = world.worker("worker", 10);
    assert_eq!(
        world.take(agent, 10),
        [max, three, zero, minus_one, minus_five, min]
    );
}

#[test]
fn priority_tag_sets_priority_when_it_parses_as_an_integer() {
    let mut world = World::new();
    let plain = world.submit_one(one_job());
    let (run, run_tagged) = world.submit_run(one_job().tag("dagster/priority", "3"));
    let run_tagged = run_tagged[0];
    let job_tagged = world.submit_one(run_of(vec![job().tag("priority", "-2")]));
    let signed = world.submit_one(run_of(vec![job().tag("priority", "+1")]));

    assert_eq!(world.scheduler.run(run).unwrap().priority, 3);
    assert_eq!(
        (world.priority(run_tagged), world.own_priority(run_tagged)),
        (3, false)
    );
    assert_eq!(
        (world.priority(job_tagged), world.own_priority(job_tagged)),
        (-2, true)
    );
    assert_eq!(world.priority(signed), 1);

    let agent = world.worker("worker", 10);
    assert_eq!(
        world.take(agent, 10),
        [run_tagged, signed, plain, job_tagged]
    );
}

#[test]
fn priority_tag_that_is_not_an_integer_is_rejected_and_records_nothing() {
    let mut world = World::new();
    let digest = world.digest();
    for (key, text) in [("priority", "high"), ("dagster/priority", "1.5")] {
        for spec in [one_job().tag(key, text), run_of(vec![job().tag(key, text)])] {
            let rejection = world.reject(Command::SubmitRun(spec));
            assert_eq!(
                rejection,
                Rejection::BadPriority(PriorityParseError::NotAnInteger {
                    text: text.to_string()
                })
            );
            assert_eq!(rejection.code(), ErrorCode::InvalidArgument);
            assert_eq!(
                rejection.to_string(),
                format!("priority {text:?} is not an integer")
            );
        }
    }
    assert!(world.log.is_empty());
    assert_eq!(world.digest(), digest);
    assert_eq!(world.scheduler.jobs().count(), 0);
}

// ---- dispatch precedence ----------------------------------------------------

#[test]
fn dispatch_queue_priority_before_job_priority() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        priority: 10,
        ..QueueConfig::new("urgent")
    });
    world.put_queue(QueueConfig::new("bulk"));
    let bulk = world.submit_one(run_of(vec![job().priority(1_000)]).queue("bulk"));
    let plain = world.submit_one(one_job());
    let urgent = world.submit_one(run_of(vec![job().priority(-1_000)]).queue("urgent"));

    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [urgent, bulk, plain]);
}

#[test]
fn dispatch_job_priority_before_run_position() {
    let mut world = World::new();
    let older = world.submit_one(one_job());
    let newer = world.submit_one(one_job().priority(1));

    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [newer, older]);
}

#[test]
fn dispatch_run_position_before_upload_order() {
    let mut world = World::new();
    let (older_run, older) = world.submit_run(run_of(jobs(2)));
    let newer = world.submit(run_of(jobs(2)));
    // Appended later, but to the older run: its jobs inherit its position.
    let appended = world.append(older_run, jobs(2));
    assert_eq!(
        world.view(appended[0]).position,
        world.view(older[0]).position
    );

    let agent = world.worker("worker", 10);
    assert_eq!(
        world.take(agent, 10),
        [
            older[0],
            older[1],
            appended[0],
            appended[1],
            newer[0],
            newer[1]
        ]
    );
}

#[test]
fn dispatch_upload_order_within_a_run() {
    let mut world = World::new();
    let (run, ids) = world.submit_run(run_of(jobs(3)));
    let appended = world.append(run, jobs(2));
    let uploads: Vec<u32> = ids
        .iter()
        .chain(&appended)
        .map(|&job| world.view(job).upload)
        .collect();
    assert_eq!(uploads, [0, 1, 2, 3, 4]);

    let agent = world.worker("worker", 10);
    assert_eq!(
        world.take(agent, 10),
        [ids[0], ids[1], ids[2], appended[0], appended[1]]
    );
}

/// Two jobs never tie on position and upload through the commands (each
/// run has its own position, each job its own upload number), so the last
/// tie-breaker is checked on the key itself.
#[test]
fn dispatch_key_orders_priority_then_position_then_upload_then_job_id() {
    let key = |priority, position, upload, job| JobKey::new(priority, position, upload, JobId(job));
    // Each field decides only when every field before it ties.
    assert!(key(1, 9, 9, 9) < key(0, 1, 1, 1));
    assert!(key(-1, 9, 9, 9) < key(-2, 1, 1, 1));
    assert!(key(i32::MAX, 9, 9, 9) < key(i32::MIN, 1, 1, 1));
    assert!(key(0, 1, 9, 9) < key(0, 2, 1, 1));
    assert!(key(0, 1, 1, 9) < key(0, 1, 2, 1));
    assert!(key(0, 1, 1, 1) < key(0, 1, 1, 2));
    assert_eq!(key(-7, 1, 1, 1).priority(), -7);
}

// ---- priority changes -------------------------------------------------------

#[test]
fn priority_change_moves_a_waiting_job_to_the_end_of_its_new_level() {
    let mut world = World::new();
    let high_first = world.submit_one(one_job().priority(1));
    let normal_first = world.submit_one(one_job());
    let normal_second = world.submit_one(one_job());
    let high_second = world.submit_one(one_job().priority(1));

    world.change_priority(normal_second, 1);
    assert_eq!(
        world.last_kinds(),
        [EventKind::JobPriorityChanged {
            job: normal_second,
            priority: 1
        }]
    );
    assert_eq!(
        (
            world.priority(normal_second),
            world.own_priority(normal_second)
        ),
        (1, true)
    );
    world.change_priority(high_first, 0);

    // Each moved job is behind every job already at its new level, even
    // those submitted after it.
    let agent = world.worker("worker", 10);
    assert_eq!(
        world.take(agent, 10),
        [high_second, normal_second, normal_first, high_first]
    );
}

#[test]
fn priority_change_to_the_same_value_changes_nothing() {
    let mut world = World::new();
    let first = world.submit_one(one_job().priority(1));
    let inherited = world.submit_one(run_of(vec![job()]).priority(1));
    let digest = world.digest();

    world.change_priority(first, 1);
    assert!(world.last.is_empty());
    world.change_priority(inherited, 1);
    assert!(world.last.is_empty());
    assert_eq!(world.digest(), digest);
    assert!(!world.own_priority(inherited));

    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [first, inherited]);
}

#[test]
fn priority_change_of_a_started_job_is_rejected() {
    let mut world = World::new();
    let running = world.submit_one(one_job());
    let finished = world.submit_one(one_job());
    let agent = world.worker("worker", 2);
    assert_eq!(world.take(agent, 2), [running, finished]);
    world.succeed(agent, finished);

    for (job, state) in [(running, "running"), (finished, "finished")] {
        for priority in [5, 0] {
            let rejection = world.reject(Command::ChangeJobPriority { job, priority });
            assert_eq!(rejection, Rejection::PriorityOfStartedJob { job, state });
            assert_eq!(rejection.code(), ErrorCode::FailedPrecondition);
        }
    }
    let unknown = JobId(99);
    let rejection = world.reject(Command::ChangeJobPriority {
        job: unknown,
        priority: 1,
    });
    assert_eq!(rejection, Rejection::UnknownJob(unknown));
    assert_eq!(rejection.code(), ErrorCode::NotFound);
}

#[test]
fn priority_change_of_a_held_job_applies_when_it_is_released() {
    let mut world = World::new();
    let (_, ids) = world.submit_run(run_of(vec![job(), job().after_wait()]));
    let (first, held) = (ids[0], ids[1]);
    let other = world.submit_one(one_job());
    world.change_priority(held, 3);
    assert_eq!(world.status(held), JobStatus::Held);
    assert_eq!(world.priority(held), 3);

    let agent = world.worker("worker", 1);
    assert_eq!(world.take(agent, 1), [first]);
    world.succeed(agent, first);
    assert_eq!(world.take(agent, 1), [held]);
    world.succeed(agent, held);
    assert_eq!(world.take(agent, 1), [other]);
}

#[test]
fn run_priority_change_moves_waiting_jobs_without_their_own_priority() {
    let mut world = World::new();
    let older = world.submit_one(one_job());
    let (run, ids) = world.submit_run(run_of(vec![job(), job().priority(0), job().after_wait()]));
    let (inherits, own, held) = (ids[0], ids[1], ids[2]);

    world.ok(Command::ChangeRunPriority { run, priority: 5 });
    assert_eq!(
        world.last_kinds(),
        [EventKind::RunPriorityChanged { run, priority: 5 }]
    );
    assert_eq!(world.scheduler.run(run).unwrap().priority, 5);
    assert_eq!(world.priority(inherits), 5);
    assert_eq!(world.priority(own), 0);
    assert_eq!(world.priority(held), 5);
    assert!(!world.own_priority(inherits));

    // The job with a priority of its own keeps its place at 0, behind the
    // older run.
    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [inherits, older, own]);

    // A running job keeps the priority it was dispatched with.
    world.ok(Command::ChangeRunPriority { run, priority: 7 });
    assert_eq!(world.priority(inherits), 5);
    assert_eq!(world.priority(held), 7);
    // A job appended later inherits the run's new priority.
    let appended = world.append(run, vec![job()]);
    assert_eq!(
        (world.priority(appended[0]), world.own_priority(appended[0])),
        (7, false)
    );

    // The same value again changes nothing.
    let digest = world.digest();
    world.ok(Command::ChangeRunPriority { run, priority: 7 });
    assert!(world.last.is_empty());
    assert_eq!(world.digest(), digest);
}

#[test]
fn priority_unsupported_queue_rejects_nonzero_priority_and_changes_nothing() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        priority_supported: false,
        ..QueueConfig::new("fifo")
    });
    let unsupported = |priority| Rejection::PriorityUnsupported {
        queue: "fifo".to_string(),
        priority,
    };

    for (spec, priority) in [
        (one_job().queue("fifo").priority(1), 1),
        (run_of(vec![job().priority(-1)]).queue("fifo"), -1),
        (run_of(vec![job().tag("priority", "2")]).queue("fifo"), 2),
        // Routed to the queue, inheriting its run's priority.
        (run_of(vec![job(), job().queue("fifo")]).priority(5), 5),
    ] {
        let rejection = world.reject(Command::SubmitRun(spec));
        assert_eq!(rejection, unsupported(priority));
        assert_eq!(rejection.code(), ErrorCode::Unsupported);
    }
    assert_eq!(world.scheduler.jobs().count(), 0);

    let fifo = world.submit_one(run_of(vec![job().priority(0)]).queue("fifo"));
    let rejection = world.reject(Command::ChangeJobPriority {
        job: fifo,
        priority: 3,
    });
    assert_eq!(rejection, unsupported(3));
    assert_eq!(world.priority(fifo), 0);
    world.change_priority(fifo, 0);
    assert!(world.last.is_empty());

    // A run in a queue with priority whose job went to `fifo`.
    let (run, ids) = world.submit_run(run_of(vec![job(), job().queue("fifo")]));
    let rejection = world.reject(Command::ChangeRunPriority { run, priority: 2 });
    assert_eq!(rejection, unsupported(2));
    assert_eq!(world.scheduler.run(run).unwrap().priority, 0);
    assert_eq!((world.priority(ids[0]), world.priority(ids[1])), (0, 0));
}

// ---- no preemption ----------------------------------------------------------

#[test]
fn no_preemption_a_higher_priority_job_waits_for_the_next_free_slot() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        priority: 10,
        ..QueueConfig::new("urgent")
    });
    let low = world.submit(run_of(jobs(2)).priority(-1));
    let agent = world.worker("worker", 2);
    assert_eq!(world.take(agent, 2), low);

    let high = world.submit_one(one_job().priority(100));
    assert!(world.last_kinds().iter().all(|kind| !matches!(
        kind,
        EventKind::StopRequested { .. } | EventKind::JobDispatched { .. }
    )));
    let urgent = world.submit_one(one_job().queue("urgent"));
    assert_eq!(world.status(high), JobStatus::Waiting);
    for job in &low {
        assert_eq!(
            world.status(*job),
            JobStatus::Running {
                agent,
                stopping: None
            }
        );
    }

    // The agent keeps asking; each free slot goes to the best waiting job.
    assert_eq!(world.take(agent, 2), []);
    assert_eq!(world.succeed(agent, low[0]), [urgent]);
    assert_eq!(world.succeed(agent, low[1]), [high]);
    assert!(world.stop_requests_ever().is_empty());
}

// ---- queue limits -----------------------------------------------------------

#[test]
fn action_concurrency_caps_the_running_jobs_of_a_queue() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        action_concurrency: Some(2),
        ..QueueConfig::new("capped")
    });
    let capped = world.submit(run_of(jobs(4)).queue("capped"));
    let other = world.submit_one(one_job());

    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [capped[0], capped[1], other]);
    let queue = world.scheduler.queue("capped").unwrap();
    assert_eq!((queue.running, queue.waiting), (2, 2));

    assert_eq!(world.succeed(agent, capped[0]), [capped[2]]);
    assert_eq!(world.succeed(agent, other), []);
    assert_eq!(world.succeed(agent, capped[1]), [capped[3]]);
}

#[test]
fn run_concurrency_holds_new_runs_but_not_jobs_of_an_active_run() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        run_concurrency: Some(1),
        ..QueueConfig::new("serial")
    });
    let (first_run, first) = world.submit_run(run_of(jobs(2)).queue("serial"));
    let (second_run, second) = world.submit_run(run_of(jobs(2)).queue("serial"));

    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), first);
    assert!(world.scheduler.run(first_run).unwrap().active);
    assert!(!world.scheduler.run(second_run).unwrap().active);
    assert_eq!(world.scheduler.queue("serial").unwrap().active_runs, 1);

    // A job added to the active run is not held back.
    let appended = world.append(first_run, vec![job()]);
    assert_eq!(world.dispatched(), appended);

    assert_eq!(world.succeed(agent, first[0]), []);
    assert_eq!(world.succeed(agent, first[1]), []);
    assert!(world.scheduler.run(first_run).unwrap().active);
    // The run's last job ends: the run is no longer active, the next starts.
    assert_eq!(world.succeed(agent, appended[0]), second);
    assert!(!world.scheduler.run(first_run).unwrap().active);
    assert!(world.scheduler.run(second_run).unwrap().active);
}

#[test]
fn run_concurrency_counts_a_run_active_until_its_last_job_finishes() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        run_concurrency: Some(1),
        ..QueueConfig::new("serial")
    });
    let (first_run, first) =
        world.submit_run(run_of(vec![job(), job().after_wait()]).queue("serial"));
    let second = world.submit_one(one_job().queue("serial"));

    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [first[0]]);
    // Between stages the run has no job running, yet it is still active.
    assert_eq!(world.succeed(agent, first[0]), [first[1]]);
    assert!(world.scheduler.run(first_run).unwrap().active);
    assert_eq!(world.succeed(agent, first[1]), [second]);
}

#[test]
fn depth_rejects_the_whole_submission_when_the_queue_is_full() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        depth: Some(3),
        ..QueueConfig::new("shallow")
    });
    // One waiting job that will run, one held behind a wait step.
    let (run, first) = world.submit_run(run_of(vec![job(), job().after_wait()]).queue("shallow"));
    let agent = world.worker("worker", 1);
    assert_eq!(world.take(agent, 1), [first[0]]);
    let waiting = world.submit_one(one_job().queue("shallow"));
    let queue = world.scheduler.queue("shallow").unwrap();
    assert_eq!((queue.waiting, queue.running, queue.held), (1, 1, 1));

    let full = Rejection::QueueFull {
        queue: "shallow".to_string(),
        depth: 3,
        count: 3,
        adding: 1,
    };
    let rejection = world.reject(Command::SubmitRun(one_job().queue("shallow")));
    assert_eq!(rejection, full);
    assert_eq!(rejection.code(), ErrorCode::ResourceExhausted);
    assert_eq!(
        rejection.to_string(),
        "queue \"shallow\" is full: its depth limit is 3, it holds 3 jobs and the submission adds 1"
    );
    assert_eq!(
        world.reject(Command::AppendJobs {
            run,
            jobs: vec![job()]
        }),
        full
    );
    // A submission with a job for another queue is rejected whole.
    let jobs_before = world.scheduler.jobs().count();
    let rejection = world.reject(Command::SubmitRun(run_of(vec![
        job(),
        job().queue("shallow"),
    ])));
    assert_eq!(rejection, full);
    assert_eq!(world.scheduler.jobs().count(), jobs_before);

    // A finished job frees its place.
    world.succeed(agent, first[0]);
    assert_eq!(world.status(first[1]), JobStatus::Waiting);
    let last = world.submit_one(one_job().queue("shallow"));
    assert_eq!(world.status(waiting), JobStatus::Waiting);
    assert_eq!(world.status(last), JobStatus::Waiting);

    // A submission larger than the whole depth is rejected even when empty.
    world.put_queue(QueueConfig {
        depth: Some(3),
        ..QueueConfig::new("empty")
    });
    let rejection = world.reject(Command::SubmitRun(run_of(jobs(4)).queue("empty")));
    assert_eq!(
        rejection,
        Rejection::QueueFull {
            queue: "empty".to_string(),
            depth: 3,
            count: 0,
            adding: 4
        }
    );
}

// ---- pools and labels -------------------------------------------------------

#[test]
fn pools_agent_takes_only_jobs_of_queues_bound_to_its_pools() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        pools: vec!["gpu".to_string()],
        ..QueueConfig::new("training")
    });
    let training = world.submit_one(one_job().queue("training"));
    let plain = world.submit_one(one_job());

    let cpu = world.register("cpu", &[DEFAULT_POOL], &[], 10);
    assert_eq!(world.take(cpu, 10), [plain]);
    let gpu = world.register("gpu", &["gpu"], &[], 10);
    assert_eq!(world.take(gpu, 10), [training]);
}

#[test]
fn labels_agent_takes_only_jobs_whose_labels_it_has() {
    let mut world = World::new();
    let linux = world.submit_one(run_of(vec![job().label("os", "linux")]));
    let from_run = world.submit_one(one_job().label("os", "linux").label("arch", "x86"));
    let any = world.submit_one(one_job());

    // The job no agent here can take holds back nothing behind it.
    let mac = world.register("mac", &[DEFAULT_POOL], &[("os", "mac")], 10);
    assert_eq!(world.take(mac, 10), [any]);
    let arm = world.register(
        "arm",
        &[DEFAULT_POOL],
        &[("arch", "arm"), ("os", "linux")],
        10,
    );
    assert_eq!(world.take(arm, 10), [linux]);
    let x86 = world.register(
        "x86",
        &[DEFAULT_POOL],
        &[("arch", "x86"), ("os", "linux")],
        10,
    );
    assert_eq!(world.take(x86, 10), [from_run]);
}

#[test]
fn queue_priority_orders_queues_sharing_a_pool() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        priority: 5,
        ..QueueConfig::new("production")
    });
    world.put_queue(QueueConfig {
        priority: -5,
        ..QueueConfig::new("backfill")
    });
    world.put_queue(QueueConfig {
        priority: 1,
        pools: vec!["gpu".to_string()],
        ..QueueConfig::new("training")
    });
    let backfill = world.submit(run_of(jobs(2)).queue("backfill"));
    let plain = world.submit_one(one_job());
    let production = world.submit(run_of(jobs(2)).queue("production"));
    let training = world.submit_one(one_job().queue("training"));

    // An agent in one pool sees only that pool's queues.
    let cpu = world.worker("cpu", 10);
    assert_eq!(
        world.take(cpu, 10),
        [
            production[0],
            production[1],
            plain,
            backfill[0],
            backfill[1]
        ]
    );
    world.ok(Command::Disconnect { agent: cpu });
    let plain_again = world.submit_one(one_job());
    // An agent in two pools orders the queues of both.
    let both = world.register("both", &[DEFAULT_POOL, "gpu"], &[], 10);
    assert_eq!(world.take(both, 2), [training, plain_again]);
}

// ---- tag concurrency rules --------------------------------------------------

#[test]
fn tag_rule_any_value_shares_one_limit_across_values() {
    let mut world = World::new();
    world.set_tag_rules(vec![tag_rule("team", TagMatch::AnyValue, 1)]);
    let docs = world.submit_one(one_job().tag("team", "docs"));
    let eng = world.submit_one(one_job().tag("team", "eng"));
    let untagged = world.submit_one(one_job());

    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [docs, untagged]);
    assert_eq!(world.succeed(agent, docs), [eng]);
}

#[test]
fn tag_rule_value_limits_only_jobs_with_that_value() {
    let mut world = World::new();
    world.set_tag_rules(vec![tag_rule(
        "team",
        TagMatch::Value("docs".to_string()),
        1,
    )]);
    let docs = world.submit(run_of(jobs(2)).tag("team", "docs"));
    let docs_second = world.submit_one(one_job().tag("team", "docs"));
    let eng = world.submit(run_of(jobs(2)).tag("team", "eng"));
    let untagged = world.submit_one(one_job());

    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [docs[0], eng[0], eng[1], untagged]);
    assert_eq!(world.succeed(agent, docs[0]), [docs[1]]);
    assert_eq!(world.succeed(agent, docs[1]), [docs_second]);
}

#[test]
fn tag_rule_each_value_limits_each_value_on_its_own() {
    let mut world = World::new();
    world.set_tag_rules(vec![tag_rule("team", TagMatch::EachValue, 1)]);
    let docs = world.submit(run_of(jobs(2)).tag("team", "docs"));
    let eng = world.submit(run_of(jobs(2)).tag("team", "eng"));
    let untagged = world.submit_one(one_job());

    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [docs[0], eng[0], untagged]);
    assert_eq!(
        world.reasons(eng[1]),
        [BlockReason::TagRule {
            key: "team".to_string(),
            value: Some("eng".to_string()),
            running: 1,
            limit: 1
        }]
    );
    assert_eq!(world.succeed(agent, eng[0]), [eng[1]]);
    assert_eq!(world.succeed(agent, docs[0]), [docs[1]]);
}

#[test]
fn tag_rule_blocked_job_never_blocks_jobs_behind_it() {
    let mut world = World::new();
    world.set_tag_rules(vec![tag_rule("team", TagMatch::AnyValue, 1)]);
    let blocked = world.submit(run_of(jobs(3)).tag("team", "docs").priority(5));
    let behind = world.submit(run_of(jobs(3)).priority(-1));

    let agent = world.worker("worker", 10);
    assert_eq!(
        world.take(agent, 10),
        [blocked[0], behind[0], behind[1], behind[2]]
    );
    assert_eq!(world.ahead(blocked[1]), Some(0));
}

#[test]
fn tag_rules_set_while_jobs_run_count_the_running_jobs() {
    let mut world = World::new();
    let running = world.submit_one(one_job().tag("team", "docs"));
    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [running]);

    world.set_tag_rules(vec![tag_rule("team", TagMatch::AnyValue, 1)]);
    let later = world.submit_one(one_job().tag("team", "docs"));
    assert_eq!(world.dispatched(), []);
    assert_eq!(world.status(later), JobStatus::Waiting);
    assert_eq!(world.succeed(agent, running), [later]);
}

// ---- dependencies -----------------------------------------------------------

#[test]
fn wait_step_holds_later_jobs_until_every_earlier_job_succeeds() {
    let mut world = World::new();
    let ids = world.submit(run_of(vec![job(), job(), job().after_wait(), job()]));
    assert_eq!(world.status(ids[2]), JobStatus::Held);
    assert_eq!(world.status(ids[3]), JobStatus::Held);
    assert_eq!(world.view(ids[3]).stage, 1);

    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [ids[0], ids[1]]);
    assert_eq!(world.succeed(agent, ids[0]), []);
    assert_eq!(world.status(ids[2]), JobStatus::Held);
    assert_eq!(world.succeed(agent, ids[1]), [ids[2], ids[3]]);
}

#[test]
fn wait_step_failure_before_it_skips_later_jobs() {
    let mut world = World::new();
    let (run, ids) = world.submit_run(run_of(vec![
        job(),
        job(),
        job().after_wait(),
        job(),
        job().after_wait(),
    ]));
    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [ids[0], ids[1]]);

    // Skipped at once, while the other job of the stage still runs.
    assert_eq!(world.fail(agent, ids[0]), []);
    assert_eq!(world.outcome(ids[0]), Outcome::Failed);
    for &later in &ids[2..] {
        assert_eq!(world.outcome(later), Outcome::Skipped);
    }
    assert_eq!(world.succeed(agent, ids[1]), []);
    let run = world.scheduler.run(run).unwrap();
    assert!(run.failed);
    assert_eq!(run.unfinished, 0);
    assert!(!run.active);
}

#[test]
fn wait_step_cancel_before_it_skips_later_jobs() {
    let mut world = World::new();
    let waiting = world.submit(run_of(vec![job(), job().after_wait()]));
    world.cancel(waiting[0]);
    assert_eq!(world.outcome(waiting[0]), Outcome::Cancelled);
    assert_eq!(world.outcome(waiting[1]), Outcome::Skipped);

    let running = world.submit(run_of(vec![job(), job().after_wait()]));
    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [running[0]]);
    world.cancel(running[0]);
    assert_eq!(world.status(running[1]), JobStatus::Held);
    world.succeed(agent, running[0]);
    assert_eq!(world.outcome(running[0]), Outcome::Cancelled);
    assert_eq!(world.outcome(running[1]), Outcome::Skipped);
}

// ---- timeouts ---------------------------------------------------------------

#[test]
fn queue_timeout_ends_a_job_still_waiting_after_max_queued_time() {
    let mut world = World::new();
    let quick = world.submit_one(one_job().max_queued_time_ms(100));
    let agent = world.worker("worker", 1);
    assert_eq!(world.take(agent, 1), [quick]);
    let limited = world.submit_one(one_job().max_queued_time_ms(100));
    let unlimited = world.submit_one(one_job());

    world.tick(99);
    assert!(world.last.is_empty());
    assert_eq!(world.status(limited), JobStatus::Waiting);
    world.tick(1);
    assert_eq!(
        world.last_kinds(),
        [EventKind::JobExpired {
            job: limited,
            outcome: Outcome::QueueTimeout
        }]
    );
    assert_eq!(
        world.status(limited),
        JobStatus::Finished {
            outcome: Outcome::QueueTimeout,
            exit_code: None,
            at: START_MS + 100
        }
    );
    assert!(matches!(world.status(quick), JobStatus::Running { .. }));
    assert_eq!(world.status(unlimited), JobStatus::Waiting);
}

#[test]
fn queue_timeout_counts_from_when_a_held_job_starts_waiting() {
    let mut world = World::new();
    let ids = world.submit(run_of(vec![
        job(),
        job().after_wait().max_queued_time_ms(100),
    ]));
    let agent = world.worker("worker", 1);
    assert_eq!(world.take(agent, 1), [ids[0]]);

    world.tick(500);
    assert_eq!(world.status(ids[1]), JobStatus::Held);
    world.succeed(agent, ids[0]);
    assert_eq!(world.status(ids[1]), JobStatus::Waiting);
    world.tick(99);
    assert_eq!(world.status(ids[1]), JobStatus::Waiting);
    world.tick(1);
    assert_eq!(world.outcome(ids[1]), Outcome::QueueTimeout);
}

#[test]
fn deadline_ends_a_waiting_or_held_job_at_once() {
    let mut world = World::new();
    let waiting = world.submit_one(one_job().deadline_ms(100));
    let ids = world.submit(run_of(vec![job(), job().after_wait().deadline_ms(50)]));
    let held = ids[1];

    world.tick(49);
    assert!(world.last.is_empty());
    world.tick(1);
    assert_eq!(
        world.last_kinds(),
        [EventKind::JobExpired {
            job: held,
            outcome: Outcome::DeadlineExceeded
        }]
    );
    world.tick(50);
    assert_eq!(
        world.last_kinds(),
        [EventKind::JobExpired {
            job: waiting,
            outcome: Outcome::DeadlineExceeded
        }]
    );
    assert_eq!(world.status(ids[0]), JobStatus::Waiting);
}

#[test]
fn deadline_of_a_running_job_asks_to_stop_and_ends_it_when_the_agent_reports() {
    let mut world = World::new();
    let job = world.submit_one(one_job().deadline_ms(100));
    let agent = world.worker("worker", 1);
    assert_eq!(world.take(agent, 1), [job]);

    world.tick(100);
    assert_eq!(
        world.last_kinds(),
        [EventKind::StopRequested {
            job,
            agent,
            reason: StopReason::DeadlineExceeded
        }]
    );
    assert_eq!(
        world.status(job),
        JobStatus::Running {
            agent,
            stopping: Some(StopReason::DeadlineExceeded)
        }
    );
    // Whatever the agent reports, the deadline decided the outcome.
    world.succeed(agent, job);
    assert_eq!(world.outcome(job), Outcome::DeadlineExceeded);
}

#[test]
fn deadline_of_a_running_job_ends_it_when_its_lease_is_lost() {
    let mut world = World::new();
    let job = world.submit_one(one_job().deadline_ms(100));
    let agent = world.worker("worker", 1);
    assert_eq!(world.take(agent, 1), [job]);
    world.tick(100);
    assert_eq!(
        world.stop_requests_ever(),
        [(job, StopReason::DeadlineExceeded)]
    );

    world.tick(LEASE_MS_DEFAULT - 100);
    assert_eq!(world.outcome(job), Outcome::DeadlineExceeded);
    let other = world.worker("other", 1);
    assert_eq!(world.take(other, 1), []);
}

// ---- leases -----------------------------------------------------------------

#[test]
fn lease_lost_job_waits_again_in_its_original_place() {
    let mut world = World::new();
    let first_job = world.submit_one(one_job());
    let first = world.worker("first", 1);
    assert_eq!(world.take(first, 1), [first_job]);
    world.advance(10);
    let later_job = world.submit_one(one_job());

    world.tick(LEASE_MS_DEFAULT - 11);
    assert!(world.last.is_empty());
    world.tick(1);
    assert!(world
        .last_kinds()
        .contains(&EventKind::AgentLost { agent: first }));
    assert_eq!(world.status(first_job), JobStatus::Waiting);
    assert_eq!(world.view(first_job).attempt, 1);
    assert!(!world.scheduler.agents().next().unwrap().present);
    assert_eq!(world.ahead(first_job), Some(0));
    assert_eq!(world.ahead(later_job), Some(1));

    let second = world.worker("second", 1);
    world.take(second, 1);
    assert_eq!(dispatches(&world.last), [(first_job, second, 2)]);

    let rejection = world.reject(Command::TakeWork {
        agent: first,
        count: 1,
    });
    assert_eq!(rejection, Rejection::AgentAbsent { agent: first });
    assert_eq!(rejection.code(), ErrorCode::FailedPrecondition);
}

#[test]
fn lease_lost_on_the_last_attempt_ends_the_job_as_lost() {
    let mut world = World::new();
    let default = world.submit_one(one_job());
    assert_eq!(world.view(default).max_attempts, DEFAULT_MAX_ATTEMPTS);
    world.cancel(default);

    let job = world.submit_one(one_job().max_attempts(2));
    let agent = world.worker("worker", 1);
    assert_eq!(world.take(agent, 1), [job]);
    world.tick(LEASE_MS_DEFAULT);
    assert_eq!(world.status(job), JobStatus::Waiting);

    // The agent comes back under its name and keeps its id.
    assert_eq!(world.worker("worker", 1), agent);
    world.take(agent, 1);
    assert_eq!(dispatches(&world.last), [(job, agent, 2)]);
    world.tick(LEASE_MS_DEFAULT);
    assert_eq!(world.outcome(job), Outcome::Lost);
    assert_eq!(world.view(job).attempt, 2);
}

#[test]
fn lease_completion_with_a_stale_attempt_is_rejected_and_recorded_once() {
    let mut world = World::new();
    let job = world.submit_one(one_job());
    let first = world.worker("first", 1);
    assert_eq!(world.take(first, 1), [job]);
    world.tick(LEASE_MS_DEFAULT);
    let second = world.worker("second", 1);
    assert_eq!(world.take(second, 1), [job]);

    // The first agent comes back, still running attempt 1.
    world.ok(Command::RegisterAgent {
        name: "first".to_string(),
        pools: vec![DEFAULT_POOL.to_string()],
        labels: vec![],
        slots: 1,
        running: vec![(job, 1)],
    });
    let rejection = world.reject_completion(first, job, 1);
    assert_eq!(
        rejection,
        Rejection::StaleAttempt {
            job,
            reported: 1,
            current: 2
        }
    );
    assert_eq!(rejection.code(), ErrorCode::FailedPrecondition);

    world.fail(second, job);
    assert_eq!(
        world.status(job),
        JobStatus::Finished {
            outcome: Outcome::Failed,
            exit_code: Some(1),
            at: world.now
        }
    );
    let rejection = world.reject_completion(second, job, 2);
    assert_eq!(
        rejection,
        Rejection::AlreadyFinished {
            job,
            state: "FAILED"
        }
    );
    let completions = world
        .log
        .iter()
        .filter(|event| matches!(event.kind, EventKind::JobCompleted { job: j, .. } if j == job))
        .count();
    assert_eq!(completions, 1);
}

#[test]
fn completion_batch_judges_each_in_order_and_dispatches_after_all() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        action_concurrency: Some(3),
        ..QueueConfig::new("capped")
    });
    let ids = world.submit(run_of(jobs(5)).queue("capped"));
    let agent = world.worker("worker", 5);
    assert_eq!(world.take(agent, 5), ids[..3]);
    let completion = |job: JobId, attempt: u32| Completion {
        job,
        attempt,
        report: Report::Succeeded,
        exit_code: 0,
    };

    let results = world.complete_all(
        agent,
        vec![
            completion(ids[0], 1),
            completion(ids[1], 2),
            completion(ids[0], 1),
            completion(ids[2], 1),
            completion(ids[4], 0),
        ],
    );
    assert_eq!(
        results,
        [
            Ok(()),
            Err(Rejection::StaleAttempt {
                job: ids[1],
                reported: 2,
                current: 1
            }),
            Err(Rejection::AlreadyFinished {
                job: ids[0],
                state: "SUCCEEDED"
            }),
            Ok(()),
            Err(Rejection::NotRunningOn { job: ids[4], agent }),
        ]
    );
    // The queue's two freed places are filled after the whole batch.
    let kinds: Vec<&str> = world
        .last
        .iter()
        .map(|event| match event.kind {
            EventKind::JobCompleted { .. } => "completed",
            EventKind::JobDispatched { .. } => "dispatched",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        ["completed", "completed", "dispatched", "dispatched"]
    );
    assert_eq!(world.dispatched(), ids[3..]);
    assert!(matches!(world.status(ids[1]), JobStatus::Running { .. }));
}

#[test]
fn completion_batch_from_an_unknown_agent_or_over_the_limit_changes_nothing() {
    let mut world = World::new();
    let job = world.submit_one(one_job());
    let agent = world.worker("worker", 1);
    assert_eq!(world.take(agent, 1), [job]);
    let completion = Completion {
        job,
        attempt: 1,
        report: Report::Succeeded,
        exit_code: 0,
    };
    let rejection = world.reject(Command::Complete {
        agent: AgentId(7),
        completions: vec![completion],
    });
    assert_eq!(rejection, Rejection::UnknownAgent(AgentId(7)));
    let rejection = world.reject(Command::Complete {
        agent,
        completions: vec![completion; lanes::sched::COMPLETIONS_PER_COMMAND_MAX + 1],
    });
    assert_eq!(rejection.code(), ErrorCode::InvalidArgument);
    assert!(matches!(world.status(job), JobStatus::Running { .. }));
}

#[test]
fn lease_agent_registering_again_loses_the_jobs_it_no_longer_runs() {
    let mut world = World::new();
    let ids = world.submit(run_of(jobs(2)));
    let agent = world.worker("worker", 2);
    assert_eq!(world.take(agent, 2), ids);

    world.ok(Command::RegisterAgent {
        name: "worker".to_string(),
        pools: vec![DEFAULT_POOL.to_string()],
        labels: vec![],
        slots: 2,
        running: vec![(ids[0], 1)],
    });
    assert!(world
        .last_kinds()
        .contains(&EventKind::LeaseLost { job: ids[1] }));
    assert!(!world
        .last_kinds()
        .contains(&EventKind::LeaseLost { job: ids[0] }));
    assert!(matches!(world.status(ids[0]), JobStatus::Running { .. }));
    assert_eq!(world.status(ids[1]), JobStatus::Waiting);
    world.take(agent, 1);
    assert_eq!(dispatches(&world.last), [(ids[1], agent, 2)]);
}

// ---- cancel -----------------------------------------------------------------

#[test]
fn cancel_of_a_waiting_job_ends_it_cancelled_at_once() {
    let mut world = World::new();
    let job = world.submit_one(one_job());
    world.cancel(job);
    assert_eq!(world.last_kinds(), [EventKind::JobCancelled { job }]);
    assert_eq!(world.outcome(job), Outcome::Cancelled);

    let rejection = world.reject(Command::CancelJob { job });
    assert_eq!(
        rejection,
        Rejection::AlreadyFinished {
            job,
            state: "CANCELLED"
        }
    );
    assert_eq!(rejection.code(), ErrorCode::FailedPrecondition);
}

#[test]
fn cancel_of_a_running_job_ends_it_cancelled_when_the_agent_confirms() {
    let mut world = World::new();
    let job = world.submit_one(one_job());
    let agent = world.worker("worker", 1);
    assert_eq!(world.take(agent, 1), [job]);

    world.cancel(job);
    assert_eq!(
        world.last_kinds(),
        [EventKind::StopRequested {
            job,
            agent,
            reason: StopReason::Cancelled
        }]
    );
    assert_eq!(
        world.status(job),
        JobStatus::Running {
            agent,
            stopping: Some(StopReason::Cancelled)
        }
    );
    // Asking again changes nothing.
    world.cancel(job);
    assert!(world.last.is_empty());
    // Even a reported success ends it cancelled.
    world.succeed(agent, job);
    assert_eq!(world.outcome(job), Outcome::Cancelled);
}

#[test]
fn cancel_of_a_running_job_ends_it_cancelled_when_its_lease_ends() {
    let mut world = World::new();
    let job = world.submit_one(one_job());
    let agent = world.worker("worker", 1);
    assert_eq!(world.take(agent, 1), [job]);
    world.cancel(job);

    world.tick(LEASE_MS_DEFAULT);
    assert_eq!(world.outcome(job), Outcome::Cancelled);
    let other = world.worker("other", 1);
    assert_eq!(world.take(other, 1), []);
}

#[test]
fn cancel_run_ends_waiting_jobs_and_stops_running_ones() {
    let mut world = World::new();
    let (run, ids) = world.submit_run(run_of(vec![job(), job(), job().after_wait()]));
    let agent = world.worker("worker", 1);
    assert_eq!(world.take(agent, 1), [ids[0]]);

    world.ok(Command::CancelRun { run });
    assert_eq!(
        stop_requests(&world.last),
        [(ids[0], StopReason::Cancelled)]
    );
    assert_eq!(world.outcome(ids[1]), Outcome::Cancelled);
    assert!(matches!(
        world.outcome(ids[2]),
        Outcome::Skipped | Outcome::Cancelled
    ));
    world.succeed(agent, ids[0]);
    assert_eq!(world.outcome(ids[0]), Outcome::Cancelled);
    assert_eq!(world.scheduler.run(run).unwrap().unfinished, 0);
}

// ---- pause and resume -------------------------------------------------------

#[test]
fn pause_queue_accepts_submissions_and_dispatches_nothing_until_resumed() {
    let mut world = World::new();
    world.put_queue(QueueConfig::new("nightly"));
    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), []);

    world.ok(Command::PauseQueue {
        queue: "nightly".to_string(),
    });
    assert_eq!(
        world.last_kinds(),
        [EventKind::QueuePaused {
            queue: "nightly".to_string()
        }]
    );
    world.ok(Command::PauseQueue {
        queue: "nightly".to_string(),
    });
    assert!(world.last.is_empty());

    let paused = world.submit(run_of(jobs(2)).queue("nightly"));
    assert_eq!(world.dispatched(), []);
    assert!(world.scheduler.queue("nightly").unwrap().config.paused);
    // Other queues go on.
    let other = world.submit_one(one_job());
    assert_eq!(world.dispatched(), [other]);

    world.ok(Command::ResumeQueue {
        queue: "nightly".to_string(),
    });
    assert_eq!(world.dispatched(), paused);
    assert!(!world.scheduler.queue("nightly").unwrap().config.paused);
}

// ---- explain ----------------------------------------------------------------

#[test]
fn explain_ranks_a_waiting_job_by_the_waiting_jobs_ahead_of_it() {
    let mut world = World::new();
    let ids = world.submit(run_of(jobs(3)));
    let high = world.submit_one(one_job().priority(1));
    world.put_queue(QueueConfig::new("other"));
    world.submit_one(one_job().queue("other").priority(9));

    assert_eq!(world.ahead(high), Some(0));
    assert_eq!(world.ahead(ids[0]), Some(1));
    assert_eq!(world.ahead(ids[2]), Some(3));
    let explanation = world.explain(ids[0]);
    assert_eq!(explanation.job, ids[0]);
    assert_eq!(explanation.queue, DEFAULT_QUEUE);
    assert_eq!(explanation.status, JobStatus::Waiting);

    // The job of `other` was never counted: it runs first, nothing moves.
    let agent = world.worker("worker", 1);
    let running = world.take(agent, 1)[0];
    assert_eq!(world.view(running).queue, "other");
    assert_eq!(world.ahead(ids[0]), Some(1));
    let explanation = world.explain(running);
    assert_eq!((explanation.ahead, explanation.reasons), (None, vec![]));

    let rejection = world.scheduler.explain(JobId(99)).unwrap_err();
    assert_eq!(rejection, Rejection::UnknownJob(JobId(99)));
}

#[test]
fn explain_paused_queue() {
    let mut world = World::new();
    world.put_queue(QueueConfig::new("nightly"));
    world.ok(Command::PauseQueue {
        queue: "nightly".to_string(),
    });
    let job = world.submit_one(one_job().queue("nightly"));
    world.worker("worker", 1);
    let reasons = world.reasons(job);
    assert_eq!(
        reasons,
        [BlockReason::QueuePaused {
            queue: "nightly".to_string()
        }]
    );
    assert_eq!(reasons[0].to_string(), "queue \"nightly\" is paused");
}

#[test]
fn explain_queue_concurrency() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        action_concurrency: Some(2),
        ..QueueConfig::new("capped")
    });
    let ids = world.submit(run_of(jobs(3)).queue("capped"));
    let agent = world.worker("worker", 10);
    world.take(agent, 10);
    let reasons = world.reasons(ids[2]);
    assert_eq!(
        reasons,
        [BlockReason::QueueConcurrency {
            queue: "capped".to_string(),
            running: 2,
            limit: 2
        }]
    );
    assert_eq!(
        reasons[0].to_string(),
        "queue concurrency of \"capped\" at 2/2"
    );
}

#[test]
fn explain_run_concurrency() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        run_concurrency: Some(1),
        ..QueueConfig::new("serial")
    });
    world.submit(one_job().queue("serial"));
    let waiting = world.submit_one(one_job().queue("serial"));
    let agent = world.worker("worker", 10);
    world.take(agent, 10);
    let reasons = world.reasons(waiting);
    assert_eq!(
        reasons,
        [BlockReason::RunConcurrency {
            queue: "serial".to_string(),
            active: 1,
            limit: 1
        }]
    );
    assert_eq!(
        reasons[0].to_string(),
        "run concurrency of \"serial\" at 1/1"
    );
}

#[test]
fn explain_tag_rule() {
    let mut world = World::new();
    world.set_tag_rules(vec![
        tag_rule("team", TagMatch::Value("docs".to_string()), 1),
        tag_rule("owner", TagMatch::AnyValue, 1),
    ]);
    let docs = world.submit(run_of(jobs(2)).tag("team", "docs"));
    let owned = world.submit(run_of(jobs(2)).tag("owner", "ana"));
    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [docs[0], owned[0]]);

    let reasons = world.reasons(docs[1]);
    assert_eq!(
        reasons,
        [BlockReason::TagRule {
            key: "team".to_string(),
            value: Some("docs".to_string()),
            running: 1,
            limit: 1
        }]
    );
    assert_eq!(reasons[0].to_string(), "tag rule team=docs at 1/1");
    let reasons = world.reasons(owned[1]);
    assert_eq!(
        reasons,
        [BlockReason::TagRule {
            key: "owner".to_string(),
            value: None,
            running: 1,
            limit: 1
        }]
    );
    assert_eq!(reasons[0].to_string(), "tag rule owner at 1/1");
}

#[test]
fn explain_no_agent_in_pools_with_labels() {
    let mut world = World::new();
    let plain = world.submit_one(one_job());
    let reasons = world.reasons(plain);
    assert_eq!(
        reasons,
        [BlockReason::NoAgent {
            pools: vec![DEFAULT_POOL.to_string()],
            labels: vec![]
        }]
    );
    assert_eq!(reasons[0].to_string(), "no agent in pools [default]");

    world.put_queue(QueueConfig {
        pools: vec!["gpu".to_string(), "spare".to_string()],
        ..QueueConfig::new("training")
    });
    let linux = world.submit_one(run_of(vec![job().label("os", "linux")]).queue("training"));
    // An agent in the pool without the label does not count.
    world.register("mac", &["gpu"], &[("os", "mac")], 1);
    let reasons = world.reasons(linux);
    assert_eq!(
        reasons,
        [BlockReason::NoAgent {
            pools: vec!["gpu".to_string(), "spare".to_string()],
            labels: pairs(&[("os", "linux")])
        }]
    );
    assert_eq!(
        reasons[0].to_string(),
        "no agent in pools [gpu, spare] with labels [os=linux]"
    );
}

#[test]
fn explain_dependencies_pending() {
    let mut world = World::new();
    let ids = world.submit(run_of(vec![job(), job(), job().after_wait()]));
    let explanation = world.explain(ids[2]);
    assert_eq!(explanation.status, JobStatus::Held);
    assert_eq!(explanation.ahead, None);
    assert_eq!(
        explanation.reasons,
        [BlockReason::DependenciesPending { unfinished: 2 }]
    );
    assert_eq!(
        explanation.reasons[0].to_string(),
        "dependencies pending: 2 earlier jobs of its run unfinished"
    );

    let agent = world.worker("worker", 10);
    world.take(agent, 10);
    world.succeed(agent, ids[0]);
    assert_eq!(
        world.reasons(ids[2]),
        [BlockReason::DependenciesPending { unfinished: 1 }]
    );
}

#[test]
fn explain_waiting_for_slot() {
    let mut world = World::new();
    let ids = world.submit(run_of(jobs(2)));
    let agent = world.worker("worker", 1);
    assert_eq!(world.take(agent, 1), [ids[0]]);
    let explanation = world.explain(ids[1]);
    assert_eq!(explanation.ahead, Some(0));
    assert_eq!(explanation.reasons, [BlockReason::WaitingForSlot]);
    assert_eq!(
        explanation.reasons[0].to_string(),
        "waiting for a free slot on an agent that may take it"
    );
}

// ---- seed examples ----------------------------------------------------------

/// Dagster: runs A, B, C submitted in order launch A, B, C.
#[test]
fn seed_dagster_runs_launch_in_submission_order_without_limits() {
    let mut world = World::new();
    let a = world.submit_one(one_job().tag("team", "docs"));
    let b = world.submit_one(one_job().tag("team", "docs"));
    let c = world.submit_one(one_job());
    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [a, b, c]);
}

/// Dagster: A(team: docs), B(team: docs), C untagged, then the limit
/// `team: 1` is added "before any more runs are launched": A launches, B is
/// skipped, C launches, B launches after A finishes.
#[test]
fn seed_dagster_tag_limit_launches_a_c_then_b() {
    let mut world = World::new();
    let a = world.submit_one(one_job().tag("team", "docs"));
    let b = world.submit_one(one_job().tag("team", "docs"));
    let c = world.submit_one(one_job());
    world.set_tag_rules(vec![tag_rule("team", TagMatch::AnyValue, 1)]);

    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [a, c]);
    assert_eq!(
        world.reasons(b),
        [BlockReason::TagRule {
            key: "team".to_string(),
            value: None,
            running: 1,
            limit: 1
        }]
    );
    assert_eq!(world.succeed(agent, c), []);
    assert_eq!(world.succeed(agent, a), [b]);
}

/// Dagster: `important_job` tagged `dagster/priority: "3"`, a schedule
/// tagged "-1", and an untagged run: higher first, 0 by default.
#[test]
fn seed_dagster_priority_tag_orders_runs() {
    let mut world = World::new();
    let scheduled = world.submit_one(one_job().tag("dagster/priority", "-1"));
    let plain = world.submit_one(one_job());
    let important = world.submit_one(one_job().tag("dagster/priority", "3"));
    let agent = world.worker("worker", 10);
    assert_eq!(world.take(agent, 10), [important, plain, scheduled]);
}

/// Buildkite: steps `will-run-last.sh` (priority -1) and
/// `will-run-first.sh` (priority 1).
#[test]
fn seed_buildkite_step_priorities_run_first_and_last() {
    let mut world = World::new();
    let steps = world.submit(run_of(vec![job().priority(-1), job().priority(1)]));
    let (will_run_last, will_run_first) = (steps[0], steps[1]);
    let agent = world.worker("agent", 1);
    assert_eq!(world.take(agent, 1), [will_run_first]);
    world.succeed(agent, will_run_first);
    assert_eq!(world.take(agent, 1), [will_run_last]);
}

/// Buildkite's dispatch precedence: priority descending, then scheduled_at
/// inherited from the build's upload (jobs uploaded later by an older build
/// go before newer builds), then upload order, then id.
#[test]
fn seed_buildkite_dispatch_precedence() {
    let mut world = World::new();
    let (older_build, older) = world.submit_run(run_of(jobs(2)));
    let newer = world.submit(run_of(jobs(2)));
    let urgent = world.submit_one(run_of(vec![job().priority(1)]));
    let uploaded = world.append(older_build, jobs(2));

    let agent = world.worker("agent", 10);
    assert_eq!(
        world.take(agent, 10),
        [
            urgent,
            older[0],
            older[1],
            uploaded[0],
            uploaded[1],
            newer[0],
            newer[1]
        ]
    );
}

/// Buildkite: a pipeline with top-level `priority: 100`, steps
/// "emergency fix", `wait`, "this can wait" (priority 1). The emergency fix
/// runs before any step of other pipelines unless one has a priority above
/// 100; with every agent busy it runs only after the current job completes;
/// "this can wait" runs only after the emergency fix succeeds.
#[test]
fn seed_buildkite_whole_build_priority_100() {
    let mut world = World::new();
    let agent = world.worker("agent", 1);
    let busy = world.submit_one(one_job());
    assert_eq!(world.take(agent, 1), [busy]);
    let above = world.submit_one(run_of(vec![job().priority(101)]));
    let below = world.submit_one(one_job().priority(99));
    let plain = world.submit_one(one_job());

    let steps = world.submit(run_of(vec![job(), job().after_wait().priority(1)]).priority(100));
    let (emergency_fix, this_can_wait) = (steps[0], steps[1]);
    assert_eq!(
        (
            world.priority(emergency_fix),
            world.own_priority(emergency_fix)
        ),
        (100, false)
    );
    assert_eq!(
        (
            world.priority(this_can_wait),
            world.own_priority(this_can_wait)
        ),
        (1, true)
    );
    assert_eq!(world.status(this_can_wait), JobStatus::Held);
    assert_eq!(
        world.status(busy),
        JobStatus::Running {
            agent,
            stopping: None
        }
    );

    world.succeed(agent, busy);
    assert_eq!(world.take(agent, 1), [above]);
    world.succeed(agent, above);
    assert_eq!(world.take(agent, 1), [emergency_fix]);
    assert_eq!(world.status(this_can_wait), JobStatus::Held);
    world.succeed(agent, emergency_fix);
    assert_eq!(world.status(this_can_wait), JobStatus::Waiting);
    assert_eq!(world.take(agent, 1), [below]);
    world.succeed(agent, below);
    assert_eq!(world.take(agent, 1), [this_can_wait]);
    world.succeed(agent, this_can_wait);
    assert_eq!(world.take(agent, 1), [plain]);
    assert!(world.stop_requests_ever().is_empty());
}

/// The same pipeline when the emergency fix fails: "this can wait" never
/// runs.
#[test]
fn seed_buildkite_whole_build_priority_100_failed_fix_skips_the_rest() {
    let mut world = World::new();
    let steps = world.submit(run_of(vec![job(), job().after_wait().priority(1)]).priority(100));
    let agent = world.worker("agent", 1);
    assert_eq!(world.take(agent, 1), [steps[0]]);
    world.fail(agent, steps[0]);
    assert_eq!(world.outcome(steps[1]), Outcome::Skipped);
}

/// Buildkite: an upload step on the `uploaders` queue uploads a step with
/// priority 1 on the default branch and 0 on pull requests; default-branch
/// jobs go first even when their build is newer.
#[test]
fn seed_buildkite_default_branch_jobs_before_pull_request_jobs() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        pools: vec!["uploaders".to_string()],
        ..QueueConfig::new("uploaders")
    });
    let (pull_request, pull_request_upload) =
        world.submit_run(run_of(vec![job().queue("uploaders")]));
    let (main_branch, main_branch_upload) =
        world.submit_run(run_of(vec![job().queue("uploaders")]));
    let uploader = world.register("uploader", &["uploaders"], &[], 2);
    assert_eq!(
        world.take(uploader, 2),
        [pull_request_upload[0], main_branch_upload[0]]
    );
    let pull_request_step = world.append(pull_request, vec![job().priority(0)])[0];
    let main_branch_step = world.append(main_branch, vec![job().priority(1)])[0];
    world.succeed(uploader, pull_request_upload[0]);
    world.succeed(uploader, main_branch_upload[0]);

    let builder = world.worker("builder", 1);
    assert_eq!(world.take(builder, 1), [main_branch_step]);
    world.succeed(builder, main_branch_step);
    assert_eq!(world.take(builder, 1), [pull_request_step]);
}

/// Valohai: changing a queued execution's priority removes it from its
/// place and reschedules it at the end of the new priority's queue; within
/// a level executions stay FIFO.
#[test]
fn seed_valohai_priority_change_goes_to_the_end_of_the_high_level() {
    let mut world = World::new();
    let normal_first = world.submit_one(one_job());
    let high_first = world.submit_one(one_job().priority(1));
    let flagged = world.submit_one(one_job());
    let high_second = world.submit_one(one_job().priority(1));
    let normal_last = world.submit_one(one_job());

    // A stakeholder flags an experiment as urgent after it was queued.
    world.change_priority(flagged, 1);

    let agent = world.worker("worker", 10);
    assert_eq!(
        world.take(agent, 10),
        [high_first, high_second, flagged, normal_first, normal_last]
    );
}

/// Valohai: running executions are never interrupted; a high-priority
/// execution queued while normal ones run waits for them.
#[test]
fn seed_valohai_running_executions_are_never_interrupted() {
    let mut world = World::new();
    let normal = world.submit(run_of(jobs(2)));
    let agent = world.worker("gpu-box", 2);
    assert_eq!(world.take(agent, 2), normal);
    let urgent = world.submit_one(one_job().priority(1));
    assert_eq!(world.dispatched(), []);
    assert!(world.stop_requests_ever().is_empty());
    assert_eq!(world.succeed(agent, normal[1]), []);
    assert_eq!(world.take(agent, 1), [urgent]);
}

/// Valohai: setting priority where it is not supported is an error.
#[test]
fn seed_valohai_priority_on_an_unsupported_environment_is_an_error() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        priority_supported: false,
        ..QueueConfig::new("kubernetes")
    });
    let rejection = world.reject(Command::SubmitRun(
        one_job().queue("kubernetes").priority(1),
    ));
    assert_eq!(rejection.code(), ErrorCode::Unsupported);
    assert_eq!(
        rejection.to_string(),
        "queue \"kubernetes\" does not support job priority (asked for priority 1)"
    );
    world.submit_one(one_job().queue("kubernetes"));
}

/// Flyte: a nightly job on a queue with run concurrency 1 never overlaps
/// itself, while the children of each run fan out freely.
#[test]
fn seed_flyte_nightly_run_concurrency_one_never_overlaps_runs() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        run_concurrency: Some(1),
        ..QueueConfig::new("runs-1")
    });
    let agent = world.worker("cluster", 20);
    world.take(agent, 20);
    let tonight = world.submit(run_of(jobs(5)).queue("runs-1"));
    assert_eq!(world.dispatched(), tonight);
    // The schedule fires again before tonight's run finished.
    let tomorrow = world.submit(run_of(jobs(5)).queue("runs-1"));
    assert_eq!(world.dispatched(), []);
    for &child in &tonight[..4] {
        assert_eq!(world.succeed(agent, child), []);
    }
    assert_eq!(world.succeed(agent, tonight[4]), tomorrow);
}

/// Flyte: a backfill on a queue with bounded action concurrency and depth
/// drains at a controlled rate, leaves headroom for production, and turns a
/// flood into RESOURCE_EXHAUSTED back-pressure.
#[test]
fn seed_flyte_backfill_drains_at_a_bounded_rate() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        action_concurrency: Some(2),
        depth: Some(6),
        ..QueueConfig::new("backfill")
    });
    let backfill = world.submit(run_of(jobs(6)).queue("backfill"));
    let rejection = world.reject(Command::SubmitRun(one_job().queue("backfill")));
    assert_eq!(rejection.code(), ErrorCode::ResourceExhausted);

    let agent = world.worker("cluster", 5);
    assert_eq!(world.take(agent, 5), [backfill[0], backfill[1]]);
    let production = world.submit(run_of(jobs(2)));
    assert_eq!(world.dispatched(), production);
    assert_eq!(world.succeed(agent, backfill[0]), [backfill[2]]);
}

// ---- cron triggers and drain ----------------------------------------------

fn fire(world: &mut World, trigger: &str, scheduled: TimeMs, run: RunSpec) -> Reply {
    world.ok(Command::FireTrigger {
        trigger: trigger.to_string(),
        scheduled,
        run,
    })
}

/// Flyte's triggers: each firing is recorded with the time it was due, and a
/// time at or before the last firing never fires again, so a restart (which
/// replays the firings) cannot fire the same time twice.
#[test]
fn trigger_fires_each_scheduled_time_once() {
    let mut world = World::new();
    let Reply::Fired {
        submitted: Ok((run, first_job, 1)),
    } = fire(&mut world, "nightly", 60_000, one_job())
    else {
        panic!("the first firing submitted nothing")
    };
    assert_eq!(world.view(first_job).run, run);
    for again in [60_000, 59_000] {
        let rejection = world.reject(Command::FireTrigger {
            trigger: "nightly".into(),
            scheduled: again,
            run: one_job(),
        });
        assert_eq!(rejection.code(), ErrorCode::FailedPrecondition);
        assert!(matches!(
            rejection,
            Rejection::AlreadyFired { last: 60_000, .. }
        ));
    }
    assert!(matches!(
        fire(&mut world, "nightly", 120_000, one_job()),
        Reply::Fired { submitted: Ok(_) }
    ));
    // Triggers count apart from each other.
    assert!(matches!(
        fire(&mut world, "hourly", 60_000, one_job()),
        Reply::Fired { submitted: Ok(_) }
    ));
    assert_eq!(
        world.scheduler.triggers_fired().get("nightly"),
        Some(&120_000)
    );
}

/// A firing whose run is refused (here: a full queue) still counts: the
/// refusal is the answer, and the time is not tried again.
#[test]
fn trigger_firing_refused_by_a_full_queue_still_counts() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        depth: Some(1),
        ..QueueConfig::new("small")
    });
    world.submit(one_job().queue("small"));
    let Reply::Fired {
        submitted: Err(rejection),
    } = fire(&mut world, "t", 1_000, one_job().queue("small"))
    else {
        panic!("a firing into a full queue submitted a run")
    };
    assert_eq!(rejection.code(), ErrorCode::ResourceExhausted);
    assert_eq!(
        world.last_kinds(),
        [EventKind::TriggerFired {
            trigger: "t".into(),
            scheduled: 1_000
        }]
    );
    assert_eq!(world.scheduler.triggers_fired().get("t"), Some(&1_000));
}

/// Flyte: a trigger routed to a queue with run concurrency 1 never overlaps
/// itself: the next firing's run waits until the previous one finished.
#[test]
fn trigger_into_run_concurrency_one_never_overlaps_itself() {
    let mut world = World::new();
    world.put_queue(QueueConfig {
        run_concurrency: Some(1),
        ..QueueConfig::new("nightly")
    });
    let agent = world.worker("w", 10);
    world.take(agent, 10);
    fire(&mut world, "n", 1_000, one_job().queue("nightly"));
    let first = world.dispatched();
    assert_eq!(first.len(), 1);
    fire(&mut world, "n", 2_000, one_job().queue("nightly"));
    assert_eq!(world.dispatched(), []);
    let second = world.succeed(agent, first[0]);
    assert_eq!(second.len(), 1);
}

/// Drain: no new dispatch while draining, running jobs run on and complete,
/// and resuming hands waiting work to agents that waited through it.
#[test]
fn drain_stops_new_dispatches_and_lets_running_jobs_finish() {
    let mut world = World::new();
    let agent = world.worker("w", 2);
    world.take(agent, 2);
    let running = world.submit_one(one_job());
    assert_eq!(world.dispatched(), [running]);
    world.ok(Command::SetDraining { draining: true });
    let waiting = world.submit_one(one_job());
    assert_eq!(world.dispatched(), []);
    assert_eq!(world.succeed(agent, running), []);
    assert_eq!(world.take(agent, 2), []);
    assert!(world.scheduler.draining());
    // Draining twice records nothing more.
    world.ok(Command::SetDraining { draining: true });
    assert!(world.last.is_empty());
    world.ok(Command::SetDraining { draining: false });
    assert_eq!(world.dispatched(), [waiting]);
}

/// A drain belongs to the process told to drain: a restart ends it.
#[test]
fn restart_ends_a_drain() {
    let mut world = World::new();
    world.ok(Command::SetDraining { draining: true });
    world.ok(Command::Restarted);
    assert!(!world.scheduler.draining());
    let agent = world.worker("w", 1);
    let job = world.submit_one(one_job());
    assert_eq!(world.take(agent, 1), [job]);
}

// ---- retention: finished runs are forgotten ------------------------------

fn forget(world: &mut World, finished_ms: u64, finished_jobs: u64, keys: u64) -> (u32, bool) {
    let retention = Retention {
        finished_ms,
        finished_jobs,
        keys,
    };
    match world.ok(Command::Forget(retention)) {
        Reply::Forgot { runs, more } => (runs, more),
        reply => panic!("a forget answered {reply:?}"),
    }
}

fn forgotten_runs(world: &World) -> Vec<RunId> {
    world
        .last
        .iter()
        .flat_map(|event| match &event.kind {
            EventKind::RunsForgotten { runs, .. } => runs.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn keyed(key: &str) -> RunSpec {
    RunSpec {
        idempotency_key: Some(key.to_string()),
        ..one_job()
    }
}

/// A finished run is kept for the retention time, then forgotten with its
/// jobs; asking for it afterwards says so (NOT_FOUND, "forgotten"), which
/// is not the answer for an id never handed out.
#[test]
fn retention_forgets_a_run_finished_longer_ago_than_the_retention_time() {
    let mut world = World::new();
    let agent = world.worker("w", 2);
    world.take(agent, 2);
    let (old_run, old) = world.submit_run(one_job());
    world.succeed(agent, old[0]);
    world.advance(60);
    let (new_run, new) = world.submit_run(one_job());
    world.take(agent, 1);
    world.succeed(agent, new[0]);
    world.advance(50);
    // The old run finished 110 ms ago, the new one 50 ms ago.
    assert_eq!(forget(&mut world, 100, u64::MAX, u64::MAX), (1, false));
    assert_eq!(forgotten_runs(&world), [old_run]);
    assert!(world.scheduler.job(old[0]).is_none());
    assert!(world.scheduler.run(old_run).is_none());
    assert_eq!(world.view(new[0]).run, new_run);
    let rejection = world.reject(Command::CancelJob { job: old[0] });
    assert_eq!(rejection, Rejection::ForgottenJob(old[0]));
    assert_eq!(rejection.code(), ErrorCode::NotFound);
    assert_eq!(
        world.reject(Command::ChangeRunPriority {
            run: old_run,
            priority: 3
        }),
        Rejection::ForgottenRun(old_run)
    );
    assert_eq!(
        world.reject(Command::AppendJobs {
            run: old_run,
            jobs: jobs(1)
        }),
        Rejection::ForgottenRun(old_run)
    );
    let never = world.scheduler.next_job_id();
    assert_eq!(
        world.reject(Command::CancelJob { job: never }),
        Rejection::UnknownJob(never)
    );
    assert!(world
        .scheduler
        .explain(old[0])
        .is_err_and(|r| r == Rejection::ForgottenJob(old[0])));
    // Nothing more is due: a forget that finds nothing records nothing.
    assert_eq!(forget(&mut world, 100, u64::MAX, u64::MAX), (0, false));
    assert!(world.last.is_empty());
    // Ids are never handed out again.
    let next = world.submit_one(one_job());
    assert!(next > new[0]);
}

/// Only whole finished runs are forgotten: a run with a job still waiting,
/// held or running is kept, however old its finished jobs are.
#[test]
fn retention_never_forgets_a_run_with_an_unfinished_job() {
    let mut world = World::new();
    let agent = world.worker("w", 1);
    world.take(agent, 1);
    let (run, ids) = world.submit_run(run_of(jobs(2)));
    world.succeed(agent, ids[0]);
    world.take(agent, 1);
    assert!(matches!(world.status(ids[1]), JobStatus::Running { .. }));
    world.advance(10_000);
    assert_eq!(forget(&mut world, 0, 0, 0), (0, false));
    assert_eq!(world.view(ids[0]).run, run);
    world.succeed(agent, ids[1]);
    assert_eq!(forget(&mut world, 0, 0, 0), (1, false));
    assert_eq!(forgotten_runs(&world), [run]);
}

/// Over the cap on finished jobs kept, the runs that finished first go
/// first (not the lowest ids), until the rest fit.
#[test]
fn retention_cap_forgets_the_earliest_finished_runs_first() {
    let mut world = World::new();
    let agent = world.worker("w", 3);
    world.take(agent, 3);
    let (first_run, first) = world.submit_run(run_of(jobs(2)));
    let (second_run, second) = world.submit_run(one_job());
    world.advance(1);
    world.succeed(agent, second[0]);
    world.advance(1);
    world.succeed(agent, first[0]);
    world.take(agent, 1);
    world.succeed(agent, first[1]);
    world.advance(1);
    let (third_run, third) = world.submit_run(one_job());
    world.take(agent, 1);
    world.succeed(agent, third[0]);
    assert_eq!(world.scheduler.finished_kept(), (3, 4));
    // Keep at most 2 finished jobs: the second run (finished first, 1 job)
    // and the first (3 kept is still over) go; the third stays.
    assert_eq!(forget(&mut world, u64::MAX, 2, u64::MAX), (2, false));
    assert_eq!(forgotten_runs(&world), [second_run, first_run]);
    assert_eq!(world.scheduler.finished_kept(), (1, 1));
    assert_eq!(world.view(third[0]).run, third_run);
}

/// A run that gets more jobs after it finished is unfinished again, and
/// kept; when it finishes again its retention starts over.
#[test]
fn retention_of_a_run_starts_over_when_jobs_are_appended() {
    let mut world = World::new();
    let agent = world.worker("w", 1);
    world.take(agent, 1);
    let (run, ids) = world.submit_run(one_job());
    world.succeed(agent, ids[0]);
    world.advance(100);
    let appended = world.append(run, jobs(1));
    assert_eq!(forget(&mut world, 50, u64::MAX, u64::MAX), (0, false));
    world.take(agent, 1);
    world.succeed(agent, appended[0]);
    world.advance(40);
    assert_eq!(forget(&mut world, 50, u64::MAX, u64::MAX), (0, false));
    world.advance(20);
    assert_eq!(forget(&mut world, 50, u64::MAX, u64::MAX), (1, false));
}

/// An idempotency key outlives its run when the cap forgets the run early:
/// a retry within the retention time gets the first submission's ids and
/// creates nothing; after it, the key is free again.
#[test]
fn retention_remembers_an_idempotency_key_for_the_retention_time() {
    let mut world = World::new();
    let agent = world.worker("w", 1);
    world.take(agent, 1);
    let (run, ids) = world.submit_run(keyed("deploy-42"));
    world.succeed(agent, ids[0]);
    assert_eq!(forget(&mut world, 1_000, 0, u64::MAX), (1, false));
    assert!(world.scheduler.run(run).is_none());
    assert_eq!(world.scheduler.forgotten_keys(), 1);
    world.advance(999);
    assert_eq!(
        world.ok(Command::SubmitRun(keyed("deploy-42"))),
        Reply::Submitted {
            run,
            first_job: ids[0],
            count: 1,
            replayed: true
        }
    );
    assert!(world.last.is_empty());
    let mut different = keyed("deploy-42");
    different.jobs = jobs(2);
    assert_eq!(
        world.reject(Command::SubmitRun(different)),
        Rejection::IdempotencyMismatch {
            key: "deploy-42".into()
        }
    );
    // Remembered for the retention time, to the millisecond.
    world.advance(1);
    assert_eq!(forget(&mut world, 1_000, 0, u64::MAX), (0, false));
    assert!(world.last.is_empty());
    world.advance(1);
    assert_eq!(forget(&mut world, 1_000, 0, u64::MAX), (0, false));
    assert!(matches!(
        world.last_kinds()[..],
        [EventKind::RunsForgotten { ref runs, .. }] if runs.is_empty()
    ));
    assert_eq!(world.scheduler.forgotten_keys(), 0);
    let (again, _) = world.submit_run(keyed("deploy-42"));
    assert!(again > run);
}

/// Past the cap on remembered keys, the keys of the runs that finished
/// first are dropped first.
#[test]
fn retention_cap_on_keys_drops_the_oldest_first() {
    let mut world = World::new();
    let agent = world.worker("w", 1);
    world.take(agent, 1);
    let mut runs = Vec::new();
    for key in ["a", "b", "c"] {
        let (run, ids) = world.submit_run(keyed(key));
        world.succeed(agent, ids[0]);
        world.take(agent, 1);
        world.advance(1);
        runs.push(run);
    }
    assert_eq!(forget(&mut world, 1_000_000, 0, 2), (3, false));
    assert_eq!(world.scheduler.forgotten_keys(), 2);
    let (fresh, _) = world.submit_run(keyed("a"));
    assert!(fresh > runs[2]);
    for (key, run) in [("b", runs[1]), ("c", runs[2])] {
        assert!(matches!(
            world.ok(Command::SubmitRun(keyed(key))),
            Reply::Submitted { run: r, replayed: true, .. } if r == run
        ));
    }
}

/// One forget removes at most FORGET_JOBS_MAX jobs (whole runs), and says
/// when more is due.
#[test]
fn retention_forgets_a_bounded_number_of_jobs_per_command() {
    let mut world = World::new();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let (run, _) = world.submit_run(run_of(jobs(10_000)));
        world.ok(Command::CancelRun { run });
        runs.push(run);
    }
    const { assert!(FORGET_JOBS_MAX < 30_000 && FORGET_JOBS_MAX > 10_000) };
    assert_eq!(forget(&mut world, 0, 0, 0), (2, true));
    assert_eq!(forget(&mut world, 0, 0, 0), (1, false));
    assert_eq!(world.scheduler.finished_kept(), (0, 0));
    assert!(world.scheduler.jobs().next().is_none());
}
