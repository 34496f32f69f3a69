//! The agent's side of a job: the payload format a command travels in
//! ([`Payload`]), the child processes that run jobs ([`Runner`]), and the
//! agent's loop ([`work`]) that joins an [`AgentSession`] to a runner: it
//! asks for work as slots free, runs what is dispatched, stops what the
//! engine asks to stop, reports how each job ended, and keeps its lease.
//!
//! It owns no scheduling knowledge and no connection (the session owns
//! those), and it never decides an outcome: it reports the process's exit
//! code and the engine decides (docs/SEMANTICS.md, "Completions").

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};

use crate::agent_session::{AgentSession, Order};
use crate::model::{JobId, Report};
use crate::protocol::Dispatch;

/// The exit code reported for a job whose command could not be started
/// (the shell's "command not found").
pub const EXIT_CODE_CANNOT_START: i32 = 127;

/// How long a job's processes have after SIGTERM before SIGKILL, unless
/// the agent is configured otherwise.
pub const STOP_GRACE_DEFAULT: Duration = Duration::from_secs(10);

// ---- the payload --------------------------------------------------------

/// What a job runs: the command line, extra environment, and a name for
/// people. Encoded as one JSON object (docs/OPERATIONS.md, "The job
/// payload"):
///
/// ```json
/// {"argv": ["sh", "-c", "make test"], "env": {"CI": "1"}, "label": "tests"}
/// ```
///
/// `argv` is required and not empty; `env` and `label` are optional;
/// other keys are ignored, so later versions may add some. A payload
/// that is not a JSON object but UTF-8 text is a shell command line: it
/// runs as `sh -c <text>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Payload {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub label: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("the payload is empty: there is no command to run")]
    Empty,
    #[error("the payload is neither a JSON object nor UTF-8 text")]
    NotUtf8,
    #[error("the payload is not valid JSON: {0}")]
    Json(String),
    #[error("the payload's {field}: {problem}")]
    Shape {
        field: &'static str,
        problem: &'static str,
    },
}

impl Payload {
    /// A payload that runs `argv` with no extra environment.
    pub fn command(argv: Vec<String>) -> Payload {
        Payload {
            argv,
            ..Payload::default()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(!self.argv.is_empty(), "a payload runs a command");
        let mut object = serde_json::Map::new();
        object.insert("argv".into(), self.argv.clone().into());
        if !self.env.is_empty() {
            let env = self
                .env
                .iter()
                .map(|(key, value)| (key.clone(), value.clone().into()))
                .collect();
            object.insert("env".into(), serde_json::Value::Object(env));
        }
        if let Some(label) = &self.label {
            object.insert("label".into(), label.clone().into());
        }
        serde_json::Value::Object(object).to_string().into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Payload, PayloadError> {
        let text = std::str::from_utf8(bytes).map_err(|_| PayloadError::NotUtf8)?;
        if text.trim().is_empty() {
            return Err(PayloadError::Empty);
        }
        if !text.trim_start().starts_with('{') {
            return Ok(Payload::command(vec![
                "sh".into(),
                "-c".into(),
                text.to_string(),
            ]));
        }
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|error| PayloadError::Json(error.to_string()))?;
        let shape = |field, problem| PayloadError::Shape { field, problem };
        let argv = value
            .get("argv")
            .ok_or(shape("argv", "missing"))?
            .as_array()
            .ok_or(shape("argv", "expected a list of strings"))?
            .iter()
            .map(|word| word.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .ok_or(shape("argv", "expected a list of strings"))?;
        if argv.is_empty() {
            return Err(shape("argv", "empty: there is no command to run"));
        }
        let env = match value.get("env") {
            None | Some(serde_json::Value::Null) => BTreeMap::new(),
            Some(env) => env
                .as_object()
                .ok_or(shape("env", "expected an object of strings"))?
                .iter()
                .map(|(key, value)| value.as_str().map(|value| (key.clone(), value.to_string())))
                .collect::<Option<_>>()
                .ok_or(shape("env", "expected an object of strings"))?,
        };
        let label = match value.get("label") {
            None | Some(serde_json::Value::Null) => None,
            Some(label) => Some(
                label
                    .as_str()
                    .ok_or(shape("label", "expected a string"))?
                    .to_string(),
            ),
        };
        Ok(Payload { argv, env, label })
    }
}

// ---- the runner -----------------------------------------------------------

/// Where a job's standard output and error go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// The agent's own standard output and error.
    Inherit,
    /// One file per attempt in this folder, `job-<job>-<attempt>.log`, both
    /// streams together, replaced if it exists.
    Folder(PathBuf),
}

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Between SIGTERM and SIGKILL when a job is stopped.
    pub stop_grace: Duration,
    pub output: Output,
}

/// How one attempt of a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub job: JobId,
    pub attempt: u32,
    /// `Succeeded` for exit code 0, else `Failed`.
    pub report: Report,
    /// The process's exit code; 128 + the signal's number if a signal ended
    /// it (the shell's convention); 127 if it could not start.
    pub exit_code: i32,
}

/// The jobs running as child processes. Each runs in its own process
/// group, so stopping it reaches everything it started.
pub struct Runner {
    config: RunnerConfig,
    /// The attempt running for each job, and the way to ask it to stop.
    running: HashMap<JobId, Attempt>,
    ended_sender: mpsc::Sender<Ended>,
    ended: mpsc::Receiver<Ended>,
}

struct Attempt {
    attempt: u32,
    /// Taken when the stop is asked; dropping it stops the job too.
    stop: Option<oneshot::Sender<()>>,
}

impl Runner {
    /// A runner for at most `slots` jobs at once: the channel of endings
    /// holds one per slot, and a job that ends while it is full waits.
    pub fn new(config: RunnerConfig, slots: u32) -> Runner {
        assert!(slots > 0, "an agent has at least one slot");
        let (ended_sender, ended) = mpsc::channel(slots as usize);
        Runner {
            config,
            running: HashMap::new(),
            ended_sender,
            ended,
        }
    }

    /// Jobs started and not yet returned by [`Runner::next_ended`].
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Starts a dispatched job. A payload that does not decode, or a command
    /// that cannot start, ends at once with exit code 127.
    pub fn start(&mut self, dispatch: &Dispatch) {
        let (stop, stop_asked) = oneshot::channel();
        let replaced = self.running.insert(
            dispatch.job,
            Attempt {
                attempt: dispatch.attempt,
                stop: Some(stop),
            },
        );
        // The engine gave this job another attempt while an older one still
        // runs here (its lease was lost): the older one is stale, so stop it;
        // its ending is dropped by `next_ended`.
        if let Some(replaced) = replaced {
            tracing::warn!(
                job = dispatch.job.0,
                attempt = replaced.attempt,
                "a newer attempt replaces one still running: stopping it"
            );
        }
        tokio::spawn(run_attempt(
            dispatch.clone(),
            self.config.clone(),
            stop_asked,
            self.ended_sender.clone(),
        ));
    }

    /// Asks a running attempt to stop: SIGTERM to its process group, then
    /// SIGKILL after the grace period. Returns whether it was running here.
    pub fn stop(&mut self, job: JobId, attempt: u32) -> bool {
        match self.running.get_mut(&job) {
            Some(running) if running.attempt == attempt => {
                if let Some(stop) = running.stop.take() {
                    let _ = stop.send(());
                }
                true
            }
            _ => false,
        }
    }

    /// Asks every running job to stop.
    pub fn stop_all(&mut self) {
        for running in self.running.values_mut() {
            if let Some(stop) = running.stop.take() {
                let _ = stop.send(());
            }
        }
    }

    /// The next attempt that ended. Waits forever while nothing runs.
    /// Cancel-safe: an ending is only taken when it is returned.
    pub async fn next_ended(&mut self) -> Ended {
        loop {
            let ended = self
                .ended
                .recv()
                .await
                .expect("the runner holds a sender: the channel never closes");
            match self.running.get(&ended.job) {
                Some(running) if running.attempt == ended.attempt => {
                    self.running.remove(&ended.job);
                    return ended;
                }
                // A replaced attempt: the engine no longer waits for it.
                _ => tracing::info!(
                    job = ended.job.0,
                    attempt = ended.attempt,
                    "a replaced attempt ended; not reported"
                ),
            }
        }
    }
}

/// Runs one attempt to its end and sends how it ended.
async fn run_attempt(
    dispatch: Dispatch,
    config: RunnerConfig,
    stop_asked: oneshot::Receiver<()>,
    ended: mpsc::Sender<Ended>,
) {
    let Dispatch {
        job, attempt, run, ..
    } = dispatch;
    let exit_code = match prepare(&dispatch, &config.output) {
        Err(problem) => {
            tracing::warn!(job = job.0, attempt, "cannot start: {problem}");
            EXIT_CODE_CANNOT_START
        }
        Ok((mut command, argv)) => match command.spawn() {
            Err(error) => {
                tracing::warn!(job = job.0, attempt, "cannot start {:?}: {error}", argv[0]);
                EXIT_CODE_CANNOT_START
            }
            Ok(child) => {
                tracing::info!(
                    job = job.0,
                    run = run.0,
                    attempt,
                    pid = child.id(),
                    ?argv,
                    "started"
                );
                match supervise(child, stop_asked, config.stop_grace).await {
                    Ok(status) => exit_code(status),
                    Err(error) => {
                        // Waiting on our own child failed: nothing is known
                        // of how it ended, so it is reported as a failure.
                        tracing::error!(
                            job = job.0,
                            attempt,
                            "waiting for the process failed: {error}"
                        );
                        EXIT_CODE_CANNOT_START
                    }
                }
            }
        },
    };
    let report = if exit_code == 0 {
        Report::Succeeded
    } else {
        Report::Failed
    };
    tracing::info!(job = job.0, attempt, exit_code, "ended");
    let _ = ended
        .send(Ended {
            job,
            attempt,
            report,
            exit_code,
        })
        .await;
}

/// The command for a dispatch, or why it cannot start.
fn prepare(dispatch: &Dispatch, output: &Output) -> Result<(Command, Vec<String>), String> {
    let payload = Payload::decode(&dispatch.payload).map_err(|error| error.to_string())?;
    let mut command = Command::new(&payload.argv[0]);
    command
        .args(&payload.argv[1..])
        .envs(&payload.env)
        .env("LANES_JOB", dispatch.job.0.to_string())
        .env("LANES_RUN", dispatch.run.0.to_string())
        .env("LANES_ATTEMPT", dispatch.attempt.to_string())
        .env("LANES_QUEUE", &dispatch.queue)
        .stdin(Stdio::null())
        // Its own process group: a stop reaches everything the job started,
        // and the terminal's Ctrl-C reaches the agent, not the jobs.
        .process_group(0)
        .kill_on_drop(true);
    if let Output::Folder(folder) = output {
        let path = folder.join(format!("job-{}-{}.log", dispatch.job.0, dispatch.attempt));
        let file = std::fs::File::create(&path)
            .map_err(|error| format!("creating {}: {error}", path.display()))?;
        let copy = file
            .try_clone()
            .map_err(|error| format!("opening {}: {error}", path.display()))?;
        command.stdout(file).stderr(copy);
    }
    Ok((command, payload.argv))
}

/// Waits for the process; when a stop is asked (or the runner is gone),
/// sends SIGTERM to its group, and SIGKILL after `grace`.
async fn supervise(
    mut child: tokio::process::Child,
    stop_asked: oneshot::Receiver<()>,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    let group = child.id();
    tokio::select! {
        status = child.wait() => return status,
        _ = stop_asked => {}
    }
    signal_group(group, rustix::process::Signal::TERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!(
                pid = group,
                grace_ms = grace.as_millis() as u64,
                "still running after SIGTERM: SIGKILL"
            );
            signal_group(group, rustix::process::Signal::KILL);
            child.wait().await
        }
    }
}

/// Signals a job's process group (its id is the leader's pid, which is not
/// reaped yet, so it cannot have been reused).
fn signal_group(leader: Option<u32>, signal: rustix::process::Signal) {
    let Some(pid) = leader
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    // Group 1 would be "every process we may signal".
    assert!(pid.as_raw_nonzero().get() > 1, "a job is never process 1");
    if let Err(error) = rustix::process::kill_process_group(pid, signal) {
        // ESRCH: the group is gone already, which is what was wanted.
        if error != rustix::io::Errno::SRCH {
            tracing::warn!(
                pid = pid.as_raw_nonzero().get(),
                "signalling the job: {error}"
            );
        }
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => unreachable!("a process ends by exit or by signal"),
    }
}

// ---- the agent's loop -------------------------------------------------------

#[derive(Clone, Debug)]
pub struct WorkConfig {
    /// Jobs run at once; the same as the session registered.
    pub slots: u32,
    /// The longest silence towards the engine: a third of its lease.
    pub heartbeat: Duration,
    pub runner: RunnerConfig,
}

/// What the agent's owner asks of [`work`], in increasing order: a later
/// order may follow an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Take no more work; finish and report the running jobs, then return.
    Drain,
    /// Stop the running jobs (SIGTERM, then SIGKILL after the grace), and
    /// return without reporting them: their leases lapse and the engine gives
    /// them another attempt (at once if an agent of the same name registers).
    /// Works while the engine cannot be reached.
    Terminate,
}

/// The agent's loop: runs dispatched jobs as child processes until told to
/// shut down (`shutdown` holds the latest order; a closed channel gives no
/// more orders). Heartbeats are requests for work, sent again after
/// `heartbeat` of silence: a request for work renews the lease, and
/// repeating it also restores a request lost to a reconnection.
pub async fn work(
    mut session: AgentSession,
    config: WorkConfig,
    shutdown: watch::Receiver<Option<Shutdown>>,
) {
    let mut runner = Runner::new(config.runner.clone(), config.slots);
    let mut terminate = shutdown.clone();
    // Terminating cancels `serve` wherever it waits, even on an engine that
    // cannot be reached; the runner's state is changed only between waits.
    tokio::select! {
        () = serve(&mut session, &mut runner, &config, shutdown) => return,
        Ok(()) = wait_for(&mut terminate, |order| *order == Some(Shutdown::Terminate)) => {}
    }
    tracing::info!(
        running = runner.len(),
        "terminating the running jobs; they are not reported"
    );
    runner.stop_all();
    while !runner.is_empty() {
        runner.next_ended().await;
    }
}

/// Waits for an order that passes `check`; `Err` once the sender is gone.
/// It keeps no borrow of the value (which would block the sender).
async fn wait_for(
    shutdown: &mut watch::Receiver<Option<Shutdown>>,
    check: impl FnMut(&Option<Shutdown>) -> bool,
) -> Result<(), watch::error::RecvError> {
    shutdown.wait_for(check).await.map(drop)
}

/// Takes, runs and reports jobs until drained.
async fn serve(
    session: &mut AgentSession,
    runner: &mut Runner,
    config: &WorkConfig,
    mut shutdown: watch::Receiver<Option<Shutdown>>,
) {
    let mut draining = false;
    let wanted = |runner: &Runner, draining: bool| {
        if draining {
            0
        } else {
            config.slots.saturating_sub(runner.len() as u32)
        }
    };
    session.take_work(config.slots).await;
    tracing::info!(agent = %session.agent(), slots = config.slots, "taking work");
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + config.heartbeat,
        config.heartbeat,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if draining && runner.is_empty() {
            // Closing the connection withdraws any request for work.
            tracing::info!("drained: every job reported");
            return;
        }
        tokio::select! {
            ended = runner.next_ended() => {
                match session.complete(ended.job, ended.report, ended.exit_code).await {
                    Ok(()) => tracing::info!(job = ended.job.0, attempt = ended.attempt, exit_code = ended.exit_code, "reported"),
                    Err(refused) => tracing::warn!(job = ended.job.0, attempt = ended.attempt, code = %refused.code, "the engine refused the report: {}", refused.message),
                }
                session.take_work(wanted(runner, draining)).await;
                heartbeat.reset();
            }
            // Not cancel-safe while it reconnects: a request for work lost
            // that way is renewed by the next heartbeat.
            order = session.next_order() => match order {
                Order::Run(dispatch) => runner.start(&dispatch),
                Order::Stop(stop) => {
                    let found = runner.stop(stop.job, stop.attempt);
                    tracing::info!(job = stop.job.0, attempt = stop.attempt, reason = ?stop.reason, found, "asked to stop");
                }
            },
            _ = heartbeat.tick() => session.take_work(wanted(runner, draining)).await,
            Ok(()) = wait_for(&mut shutdown, Option::is_some), if !draining => {
                tracing::info!(running = runner.len(), "draining: no more work; waiting for the running jobs");
                draining = true;
                if !runner.is_empty() {
                    session.take_work(0).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RunId;

    #[test]
    fn payload_round_trips_and_takes_plain_text_as_a_shell_line() {
        let payload = Payload {
            argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
            env: [("A".to_string(), "b c".to_string())].into(),
            label: Some("tests".into()),
        };
        assert_eq!(Payload::decode(&payload.encode()), Ok(payload));
        assert_eq!(
            Payload::decode(b"make test").unwrap().argv,
            ["sh", "-c", "make test"]
        );
        assert_eq!(Payload::decode(b" "), Err(PayloadError::Empty));
        assert_eq!(Payload::decode(&[0xff]), Err(PayloadError::NotUtf8));
        assert!(matches!(
            Payload::decode(br#"{"argv": []}"#),
            Err(PayloadError::Shape { field: "argv", .. })
        ));
        assert!(matches!(
            Payload::decode(br#"{"argv": ["x"], "env": {"A": 1}}"#),
            Err(PayloadError::Shape { field: "env", .. })
        ));
        assert!(matches!(
            Payload::decode(b"{not json"),
            Err(PayloadError::Json(_))
        ));
    }

    fn dispatch(job: u64, argv: &[&str]) -> Dispatch {
        Dispatch {
            job: JobId(job),
            run: RunId(1),
            attempt: 1,
            queue: "default".into(),
            priority: 0,
            tags: vec![],
            payload: Payload::command(argv.iter().map(|s| s.to_string()).collect()).encode(),
        }
    }

    fn runner() -> Runner {
        Runner::new(
            RunnerConfig {
                stop_grace: Duration::from_secs(5),
                output: Output::Inherit,
            },
            4,
        )
    }

    #[tokio::test]
    async fn runner_reports_exit_codes_and_commands_that_cannot_start() {
        let mut runner = runner();
        runner.start(&dispatch(1, &["sh", "-c", "exit 3"]));
        runner.start(&dispatch(2, &["/nonexistent/lanes-test-command"]));
        runner.start(&dispatch(3, &["sh", "-c", "test \"$LANES_JOB\" = 3"]));
        let mut ended = [
            runner.next_ended().await,
            runner.next_ended().await,
            runner.next_ended().await,
        ];
        ended.sort_by_key(|ended| ended.job);
        assert_eq!(
            ended.map(|ended| (ended.report, ended.exit_code)),
            [
                (Report::Failed, 3),
                (Report::Failed, EXIT_CODE_CANNOT_START),
                (Report::Succeeded, 0)
            ]
        );
        assert!(runner.is_empty());
    }

    #[tokio::test]
    async fn runner_stop_terminates_the_whole_process_group() {
        let mut runner = runner();
        // The shell does not exec the last command (`; true`), so SIGTERM
        // must reach its child through the group for the job to end.
        runner.start(&dispatch(1, &["sh", "-c", "sleep 30; true"]));
        assert!(!runner.stop(JobId(1), 2), "another attempt is not stopped");
        assert!(runner.stop(JobId(1), 1));
        let ended = tokio::time::timeout(Duration::from_secs(5), runner.next_ended())
            .await
            .expect("the job ends well before its sleep");
        assert_eq!((ended.report, ended.exit_code), (Report::Failed, 128 + 15));
    }
}
