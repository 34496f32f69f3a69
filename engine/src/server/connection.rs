//! One connection: the handshake, then requests read and answered in
//! parallel (pipelined, matched by request id), with every limit enforced.
//!
//! A task reads frames and starts one small task per request; answers and
//! pushes go through one bounded output queue to a writer task. The queue's
//! bytes are counted: a client that stops reading is disconnected at
//! [`Limits::output_bytes_max`] instead of growing the server's memory.
//! Nothing is allocated in proportion to a length the peer declared: a frame
//! is only read into memory once its length passed the current limit.
//!
//! Plain TCP and TLS share this code: the reading and writing halves are
//! generic streams. The TLS handshake runs here, in the connection's own
//! task and under the handshake deadline, never in the accept loop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustc_hash::FxHashSet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::{timeout, Instant};

use super::auth::{allowed, role_name};
use super::registry::AgentLink;
use super::Shared;
use crate::model::{AgentId, ErrorCode, JobSpec};
use crate::protocol::message::Sender;
use crate::protocol::{
    AgentList, Check, CompleteResults, DecodeError, Done, ErrorAnswer, Frame, Header, Hello,
    HelloOk, JobInfo, JobUpdate, Message, MessageType, QueueList, Registered, Role, RunInfo,
    Submitted, TagRuleList, WatchTarget, CONNECTION_REQUEST_ID, PROTOCOL_VERSION,
};
use crate::sched::{Command, Reply};

/// Frames waiting for the writer task; the byte count bounds them first.
const OUTPUT_FRAMES_MAX: usize = 65_536;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 << 10;
/// Time a closing connection's last frames (the error that says why) get
/// to reach the peer; a peer that does not read them is cut off, so a
/// connection always ends and frees its place.
const CLOSE_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a connection ends.
#[derive(Debug)]
enum Close {
    /// The peer closed it.
    Peer,
    /// Shutdown.
    Server,
    /// The output was refused: the peer does not read what it is sent.
    NotReading,
    /// A protocol violation or a limit: said to the peer under this request
    /// id (the frame's, or 0 for the connection), then closed.
    Error(u64, ErrorAnswer),
}

/// A frame read from the peer: whole, or with a sound header but a body
/// that does not decode (framing is intact, so only that request fails).
enum Incoming {
    Frame(Frame),
    Malformed {
        request_id: u64,
        answer: ErrorAnswer,
    },
}

/// The queue of frames to write, with its byte count. Answers and pushes
/// alike go through it, so the cap counts everything.
#[derive(Clone, Debug)]
pub(crate) struct Output {
    frames: mpsc::Sender<Vec<u8>>,
    /// Told when a frame is refused: the connection must close.
    refused: Arc<Notify>,
    queued: Arc<AtomicUsize>,
    bytes_max: usize,
    frame_length_max: usize,
}

impl Output {
    /// Queues a frame; false if the client is not reading (over the cap) or
    /// the connection is closing.
    pub(crate) fn send(&self, request_id: u64, message: impl Into<Message>) -> bool {
        self.send_frame(Frame::new(request_id, message))
    }

    pub(crate) fn send_frame(&self, frame: Frame) -> bool {
        let request_id = frame.request_id;
        let mut bytes = Vec::new();
        if let Err(error) = frame.encode(&mut bytes, self.frame_length_max) {
            let answer = ErrorAnswer::new(
                ErrorCode::ResourceExhausted,
                format!("the answer does not fit in a frame: {error}"),
            );
            bytes.clear();
            if Frame::new(request_id, answer)
                .encode(&mut bytes, self.frame_length_max)
                .is_err()
            {
                return false;
            }
        }
        let length = bytes.len();
        if self.queued.fetch_add(length, Ordering::AcqRel) + length > self.bytes_max
            || self.frames.try_send(bytes).is_err()
        {
            self.queued.fetch_sub(length, Ordering::AcqRel);
            self.refused.notify_one();
            return false;
        }
        true
    }
}

/// Serves an accepted TCP stream: TLS first if configured, then the
/// protocol. One deadline covers the TLS handshake and the `Hello`
/// together, so a peer that stalls either one holds nothing for longer.
pub(super) async fn run(
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let deadline = Instant::now() + shared.limits.handshake_timeout;
    let Some(acceptor) = shared.tls.clone() else {
        let (reader, writer) = stream.into_split();
        return serve_stream(id, reader, writer, peer, shared, shutdown, deadline).await;
    };
    let accepted = tokio::select! {
        accepted = timeout_at(deadline, acceptor.accept(stream)) => accepted,
        _ = super::stopped(&mut shutdown) => return,
    };
    match accepted {
        Ok(Ok(stream)) => {
            let (reader, writer) = tokio::io::split(stream);
            serve_stream(id, reader, writer, peer, shared, shutdown, deadline).await
        }
        // No frame can tell the peer why: there is no channel to send it on.
        Ok(Err(error)) => {
            tracing::debug!(connection = id, %peer, %error, "TLS handshake failed: closing");
        }
        Err(()) => tracing::debug!(
            connection = id,
            %peer,
            "no TLS handshake within {} ms: closing",
            shared.limits.handshake_timeout.as_millis()
        ),
    }
}

async fn serve_stream<R, W>(
    id: u64,
    mut reader: R,
    writer: W,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    deadline: Instant,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (frames, queue) = mpsc::channel(OUTPUT_FRAMES_MAX);
    let queued = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(Notify::new());
    let output = Output {
        frames,
        refused: refused.clone(),
        queued: queued.clone(),
        bytes_max: shared.limits.output_bytes_max,
        frame_length_max: shared.limits.frame_length_max,
    };
    let writing = tokio::spawn(write_frames(writer, queue, queued));
    let mut session = Session {
        id,
        shared: shared.clone(),
        output: output.clone(),
        role: None,
        agent: None,
        answering: InFlight::default(),
        take_request: None,
        watched: false,
    };
    let close = tokio::select! {
        close = session.serve(&mut reader, deadline) => close,
        _ = super::stopped(&mut shutdown) => Close::Server,
        _ = refused.notified() => {
            tracing::warn!(connection = id, %peer, "the client does not read its answers: disconnecting");
            Close::NotReading
        }
    };
    match &close {
        Close::Error(request_id, answer) => {
            tracing::debug!(connection = id, %peer, code = %answer.code, message = %answer.message, "closing connection");
            output.send(*request_id, answer.clone());
        }
        Close::Peer | Close::Server | Close::NotReading => {
            tracing::debug!(connection = id, %peer, "connection closed")
        }
    }
    if let Some(agent) = session.agent {
        shared.registry.unbind(agent, id);
        // Its request for work lapses; its leases run on, so it can resume.
        let _ = shared.driver.command(Command::Disconnect { agent }).await;
    }
    shared.registry.unwatch_connection(id);
    drop(session);
    drop(output);
    // The writer may be stuck on a peer that does not read: never wait on
    // it without a bound, or the connection (and its place among
    // `connections_max`) would never be freed.
    let mut writing = writing;
    if matches!(close, Close::NotReading)
        || timeout(CLOSE_FLUSH_TIMEOUT, &mut writing).await.is_err()
    {
        writing.abort();
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(bytes) = queue.recv().await {
        let length = bytes.len();
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
        queued.fetch_sub(length, Ordering::AcqRel);
        // A stream that buffers (TLS) sends what it holds once the queue
        // is drained; a batch of frames still goes out together.
        if queue.is_empty() && writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

struct Session {
    id: u64,
    shared: Arc<Shared>,
    output: Output,
    role: Option<Role>,
    agent: Option<AgentId>,
    /// Requests handed to a task of their own and not yet answered.
    answering: InFlight,
    /// The standing `TakeWork` whose dispatches may still come.
    take_request: Option<u64>,
    /// Whether the connection ever sent a `Watch`: only then can an id be
    /// a watch's, so other connections (agents) never take the registry's
    /// watch lock to check their ids.
    watched: bool,
}

/// Request ids of one connection whose answer is still to come. At most
/// [`super::Limits::requests_in_flight_max`]: an id enters with a permit
/// and leaves, before its answer is queued, with it.
#[derive(Clone, Debug, Default)]
struct InFlight(Arc<std::sync::Mutex<FxHashSet<u64>>>);

impl InFlight {
    fn ids(&self) -> std::sync::MutexGuard<'_, FxHashSet<u64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn contains(&self, request_id: u64) -> bool {
        self.ids().contains(&request_id)
    }

    fn insert(&self, request_id: u64) {
        let inserted = self.ids().insert(request_id);
        assert!(
            inserted,
            "request id {request_id} was checked not in flight"
        );
    }

    /// Before the answer is queued: once the client has it, the id is free.
    fn remove(&self, request_id: u64) {
        let removed = self.ids().remove(&request_id);
        assert!(removed, "request id {request_id} was in flight");
    }
}

impl Session {
    async fn serve<R: AsyncRead + Unpin>(&mut self, reader: &mut R, deadline: Instant) -> Close {
        let limits = self.shared.limits.clone();
        let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        // The handshake: one Hello, within the deadline (which the TLS
        // handshake, if any, shares), in a small frame.
        let hello = match timeout_at(
            deadline,
            next_frame(
                reader,
                &mut buffer,
                limits.frame_length_max_unauthenticated,
                None,
            ),
        )
        .await
        {
            Err(_) => {
                return Close::Error(
                    CONNECTION_REQUEST_ID,
                    ErrorAnswer::new(
                        ErrorCode::Unauthenticated,
                        format!(
                            "no handshake within {} ms",
                            limits.handshake_timeout.as_millis()
                        ),
                    ),
                )
            }
            Ok(Err(close)) => return close,
            // Before the handshake, a bad frame ends the connection.
            Ok(Ok(Incoming::Malformed { request_id, answer })) => {
                return Close::Error(request_id, answer)
            }
            Ok(Ok(Incoming::Frame(frame))) => frame,
        };
        let hello_request = hello.request_id;
        let Message::Hello(hello) = hello.message else {
            return Close::Error(
                hello_request,
                ErrorAnswer::new(
                    ErrorCode::Unauthenticated,
                    format!(
                        "the first frame must be Hello, not {}",
                        hello.message.message_type().name()
                    ),
                ),
            );
        };
        if let Err(answer) = self.handshake(hello_request, hello) {
            return Close::Error(hello_request, answer);
        }
        let in_flight = Arc::new(Semaphore::new(limits.requests_in_flight_max));
        loop {
            // Back-pressure: no more reading while the connection's
            // requests in flight are at their bound.
            let permit = match in_flight.clone().acquire_owned().await {
                Ok(permit) => permit,
                Err(_) => return Close::Server,
            };
            let frame = match next_frame(
                reader,
                &mut buffer,
                limits.frame_length_max,
                Some(limits.idle_frame_timeout),
            )
            .await
            {
                Ok(Incoming::Frame(frame)) => frame,
                Ok(Incoming::Malformed { request_id, answer }) => {
                    self.answer(request_id, answer);
                    continue;
                }
                Err(close) => return close,
            };
            let request_id = frame.request_id;
            if let Some(standing) = self.in_flight(request_id) {
                // Its answers could no longer be told apart: the connection
                // ends, and this request changes nothing.
                return connection_error(
                    ErrorCode::InvalidArgument,
                    format!(
                        "request id {request_id} is already in flight on this connection \
                         ({standing}): ids must be unique among requests in flight"
                    ),
                );
            }
            let message_type = frame.message.message_type();
            let role = self.role.expect("authenticated");
            if message_type == MessageType::Hello {
                self.answer(
                    request_id,
                    ErrorAnswer::new(
                        ErrorCode::FailedPrecondition,
                        "the handshake is done already",
                    ),
                );
                continue;
            }
            if !allowed(role, message_type) {
                self.answer(
                    request_id,
                    ErrorAnswer::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "a {} token may not send {}",
                            role_name(role),
                            message_type.name()
                        ),
                    ),
                );
                continue;
            }
            if let Err(answer) = self.check_payloads(&frame.message) {
                self.answer(request_id, answer);
                continue;
            }
            // Register binds the connection to an agent: handled in order,
            // so the agent's later requests know who it is.
            if let Message::Register(register) = frame.message {
                self.register(request_id, register).await;
                drop(permit);
                continue;
            }
            let job = match self.request(request_id, frame.message) {
                Ok(job) => job,
                Err(answer) => {
                    self.answer(request_id, answer);
                    continue;
                }
            };
            let output = self.output.clone();
            self.answering.insert(request_id);
            let mut answering = Box::pin(async move {
                let (request_id, message) = job.await;
                if let Some(message) = message {
                    output.send(request_id, message);
                }
                drop(permit);
            });
            // The first poll, here on the reading task, puts the request in
            // the driver's queue: a connection's requests are applied in
            // the order it sent them, however the runtime then schedules
            // the tasks that wait for their answers.
            if poll_once(answering.as_mut()).await.is_pending() {
                tokio::spawn(answering);
            }
        }
    }

    /// Checks the `Hello`; the answer, either way, goes under its request
    /// id (docs/PROTOCOL.md, "Connections and the handshake").
    fn handshake(&mut self, request_id: u64, hello: Hello) -> Result<(), ErrorAnswer> {
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(ErrorAnswer::new(
                ErrorCode::Unsupported,
                format!(
                    "protocol version {} is not supported: this server speaks versions \
                     {PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
                    hello.protocol_version
                ),
            ));
        }
        let Some(role) = self.shared.tokens.role_of(&hello.token) else {
            return Err(ErrorAnswer::new(
                ErrorCode::Unauthenticated,
                "unknown token",
            ));
        };
        self.role = Some(role);
        self.output.send(
            request_id,
            HelloOk {
                protocol_version: PROTOCOL_VERSION,
                server_version: env!("CARGO_PKG_VERSION").to_string(),
                role,
            },
        );
        tracing::debug!(connection = self.id, client = %hello.client_name, role = role_name(role), "handshake done");
        Ok(())
    }

    /// Whether `request_id` is in flight, and as what: a request not yet
    /// answered, the standing `TakeWork`, or a `Watch` not yet over
    /// (docs/PROTOCOL.md, "Requests, answers and pipelining").
    fn in_flight(&self, request_id: u64) -> Option<&'static str> {
        if self.answering.contains(request_id) {
            Some("not yet answered")
        } else if self.take_request == Some(request_id) {
            Some("the standing TakeWork")
        } else if self.watched && self.shared.registry.watching(self.id, request_id) {
            Some("a Watch not yet over")
        } else {
            None
        }
    }

    fn answer(&self, request_id: u64, message: impl Into<Message>) {
        self.output.send(request_id, message);
    }

    fn check_payloads(&self, message: &Message) -> Result<(), ErrorAnswer> {
        let jobs: &[JobSpec] = match message {
            Message::SubmitRun(submit) => &submit.spec.jobs,
            Message::AppendJobs(append) => &append.jobs,
            Message::Complete(complete) => {
                let max = self.shared.limits.completions_per_request_max;
                if complete.completions.len() > max {
                    return Err(ErrorAnswer::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "{} completions in one Complete, over the limit of {max}: none applied",
                            complete.completions.len()
                        ),
                    ));
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        let max = self.shared.limits.payload_bytes_max;
        match jobs.iter().position(|job| job.payload.len() > max) {
            Some(i) => Err(ErrorAnswer::new(
                ErrorCode::ResourceExhausted,
                format!(
                    "the payload of job {i} is {} bytes, over the limit of {max}",
                    jobs[i].payload.len()
                ),
            )),
            None => Ok(()),
        }
    }

    async fn register(&mut self, request_id: u64, register: crate::protocol::Register) {
        let command = Command::RegisterAgent {
            name: register.name,
            pools: register.pools,
            labels: register.labels,
            slots: register.slots,
            running: register.running,
        };
        match self.shared.driver.command(command).await {
            Ok(Ok(Reply::Registered { agent })) => {
                if let Some(previous) = self.agent.replace(agent) {
                    self.shared.registry.unbind(previous, self.id);
                }
                // A new registration starts without a request for work.
                self.take_request = None;
                self.shared.registry.bind(
                    agent,
                    AgentLink {
                        connection: self.id,
                        output: self.output.clone(),
                        register_request: request_id,
                        take_request: request_id,
                        held: None,
                    },
                );
                self.answer(request_id, Registered { agent });
            }
            Ok(Ok(other)) => unreachable!("register answered {other:?}"),
            Ok(Err(rejection)) => self.answer(request_id, ErrorAnswer::from(&rejection)),
            Err(_) => self.answer(request_id, unavailable()),
        }
    }

    /// Turns a request into the work that answers it.
    fn request(
        &mut self,
        request_id: u64,
        message: Message,
    ) -> Result<
        impl std::future::Future<Output = (u64, Option<Message>)> + Send + 'static,
        ErrorAnswer,
    > {
        let driver = self.shared.driver.clone();
        let agent = self.agent;
        let needs_agent = || {
            agent.ok_or_else(|| {
                ErrorAnswer::new(
                    ErrorCode::FailedPrecondition,
                    "register first: this connection has no agent",
                )
            })
        };
        enum Work {
            Command(Command),
            /// Always answered with one result per completion: a refusal
            /// of the whole list (the agent's lease ran out) is each one's.
            Complete {
                agent: AgentId,
                completions: Vec<crate::sched::Completion>,
            },
            Read(Box<dyn FnOnce(&crate::sched::Scheduler) -> Message + Send>),
            Watch(WatchTarget),
            /// Answered here, then the dispatches held for it follow.
            Take(AgentId, Command),
        }
        let registry = self.shared.registry.clone();
        let output = self.output.clone();
        let connection = self.id;
        let answering = self.answering.clone();
        let work = match message {
            Message::SubmitRun(m) => Work::Command(Command::SubmitRun(m.spec)),
            Message::AppendJobs(m) => Work::Command(Command::AppendJobs {
                run: m.run,
                jobs: m.jobs,
            }),
            Message::ChangeJobPriority(m) => Work::Command(Command::ChangeJobPriority {
                job: m.job,
                priority: m.priority,
            }),
            Message::ChangeRunPriority(m) => Work::Command(Command::ChangeRunPriority {
                run: m.run,
                priority: m.priority,
            }),
            Message::CancelJob(m) => Work::Command(Command::CancelJob { job: m.job }),
            Message::CancelRun(m) => Work::Command(Command::CancelRun { run: m.run }),
            Message::PauseQueue(m) => Work::Command(Command::PauseQueue { queue: m.queue }),
            Message::ResumeQueue(m) => Work::Command(Command::ResumeQueue { queue: m.queue }),
            Message::PutQueue(m) => Work::Command(Command::PutQueue(m.config)),
            Message::SetTagRules(m) => Work::Command(Command::SetTagRules(m.rules)),
            Message::TakeWork(m) => {
                let agent = needs_agent()?;
                self.shared
                    .registry
                    .set_take_request(agent, self.id, request_id);
                // `count = 0` withdraws: no dispatch comes under its id.
                self.take_request = (m.count > 0).then_some(request_id);
                Work::Take(
                    agent,
                    Command::TakeWork {
                        agent,
                        count: m.count,
                    },
                )
            }
            Message::Heartbeat(_) => Work::Command(Command::Heartbeat {
                agent: needs_agent()?,
            }),
            // One command for the whole list: made durable once, and no
            // later request of this connection is applied between its parts.
            Message::Complete(m) => Work::Complete {
                agent: needs_agent()?,
                completions: m.completions.into_iter().map(Into::into).collect(),
            },
            Message::GetJob(m) => Work::Read(Box::new(move |s| match s.job_checked(m.job) {
                Ok(view) => Message::JobInfo(JobInfo::from(&view)),
                Err(rejection) => Message::Error(ErrorAnswer::from(&rejection)),
            })),
            Message::GetRun(m) => Work::Read(Box::new(move |s| match s.run_checked(m.run) {
                Ok(view) => Message::RunInfo(RunInfo::from(&view)),
                Err(rejection) => Message::Error(ErrorAnswer::from(&rejection)),
            })),
            Message::ExplainJob(m) => Work::Read(Box::new(move |s| match s.explain(m.job) {
                Ok(explanation) => Message::Explanation(explanation),
                Err(rejection) => Message::Error(ErrorAnswer::from(&rejection)),
            })),
            Message::ListQueues(_) => Work::Read(Box::new(|s| {
                Message::QueueList(QueueList {
                    queues: s.queues().map(|q| (&q).into()).collect(),
                })
            })),
            Message::ListAgents(_) => Work::Read(Box::new(|s| {
                Message::AgentList(AgentList {
                    agents: s.agents().map(|a| (&a).into()).collect(),
                })
            })),
            Message::ListTagRules(_) => Work::Read(Box::new(|s| {
                Message::TagRuleList(TagRuleList {
                    rules: s.tag_rules().to_vec(),
                })
            })),
            Message::Watch(m) => {
                self.watched = true;
                Work::Watch(m.target)
            }
            other => {
                return Err(ErrorAnswer::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "{} is sent by servers, not clients",
                        other.message_type().name()
                    ),
                ))
            }
        };
        Ok(async move {
            let message = match work {
                Work::Watch(target) => {
                    let watch_request = WatchRequest {
                        connection,
                        request_id,
                        answering,
                    };
                    watch(&driver, &registry, &output, watch_request, target).await;
                    return (request_id, None);
                }
                Work::Command(command) => command_answer(&driver, command).await,
                Work::Complete { agent, completions } => {
                    let count = completions.len();
                    let command = Command::Complete { agent, completions };
                    match command_answer(&driver, command).await {
                        Message::Error(error) => Message::CompleteResults(CompleteResults {
                            results: vec![Err(error); count],
                        }),
                        answer => answer,
                    }
                }
                Work::Take(agent, command) => {
                    let answer = command_answer(&driver, command).await;
                    answering.remove(request_id);
                    output.send(request_id, answer);
                    registry.take_answered(agent, connection, request_id);
                    return (request_id, None);
                }
                Work::Read(read) => match driver.read(read).await {
                    Ok(message) => message,
                    Err(_) => Message::Error(unavailable()),
                },
            };
            answering.remove(request_id);
            (request_id, Some(message))
        })
    }
}

/// A `Watch` request: whose, and the connection's requests not yet answered.
struct WatchRequest {
    connection: u64,
    request_id: u64,
    answering: InFlight,
}

/// Starts a watch: `Done`, the current state of each watched job, then
/// every change (sent by the registry as the driver publishes them).
async fn watch(
    driver: &crate::driver::DriverHandle,
    registry: &super::Registry,
    output: &Output,
    request: WatchRequest,
    target: WatchTarget,
) {
    let WatchRequest {
        connection,
        request_id,
        answering,
    } = request;
    let registered = registry.watch(target, connection, request_id, output.clone());
    // From here the registry's record of the watch keeps its id in flight,
    // until its last update.
    answering.remove(request_id);
    if !registered {
        let max = super::registry::WATCHES_MAX;
        output.send(
            request_id,
            ErrorAnswer::new(
                ErrorCode::ResourceExhausted,
                format!("at most {max} watches per connection"),
            ),
        );
        return;
    }
    let current = driver
        .read(move |s| match target {
            WatchTarget::Job(job) => s.job_checked(job).map(|view| {
                let last = matches!(view.status, crate::sched::view::JobStatus::Finished { .. });
                vec![JobUpdate {
                    job,
                    run: view.run,
                    attempt: view.attempt,
                    status: view.status,
                    last,
                }]
            }),
            WatchTarget::Run(run) => s.run_checked(run).map(|view| {
                let mut updates: Vec<JobUpdate> = view
                    .jobs
                    .iter()
                    .filter_map(|&job| s.job(job))
                    .map(|job| JobUpdate {
                        job: job.id,
                        run,
                        attempt: job.attempt,
                        status: job.status,
                        last: false,
                    })
                    .collect();
                if view.unfinished == 0 {
                    if let Some(last) = updates.last_mut() {
                        last.last = true;
                    }
                }
                updates
            }),
        })
        .await;
    let updates = match current {
        Ok(Ok(updates)) => updates,
        Ok(Err(rejection)) => {
            registry.unwatch(target, connection, request_id);
            output.send(request_id, ErrorAnswer::from(&rejection));
            return;
        }
        Err(_) => {
            registry.unwatch(target, connection, request_id);
            output.send(request_id, unavailable());
            return;
        }
    };
    let over = updates.iter().any(|update| update.last);
    if over {
        // Ended before its last update is queued: once the client has it,
        // the id is free.
        registry.unwatch(target, connection, request_id);
    }
    output.send(request_id, Done);
    for update in updates {
        output.send(request_id, update);
    }
    if !over {
        registry.activate(target, connection, request_id);
    }
}

/// The answer to a command, once its events are durable.
async fn command_answer(driver: &crate::driver::DriverHandle, command: Command) -> Message {
    match driver.command(command).await {
        Ok(Ok(reply)) => reply_message(reply),
        Ok(Err(rejection)) => Message::Error(ErrorAnswer::from(&rejection)),
        Err(_) => Message::Error(unavailable()),
    }
}

fn reply_message(reply: Reply) -> Message {
    match reply {
        Reply::Submitted {
            run,
            first_job,
            count,
            replayed,
        } => Message::Submitted(Submitted {
            run,
            first_job,
            count,
            replayed,
        }),
        Reply::Registered { agent } => Message::Registered(Registered { agent }),
        Reply::Completed { results } => Message::CompleteResults(CompleteResults {
            results: results
                .iter()
                .map(|result| result.as_ref().copied().map_err(ErrorAnswer::from))
                .collect(),
        }),
        Reply::Done | Reply::Ticked { .. } | Reply::Fired { .. } | Reply::Forgot { .. } => {
            Message::Done(Done)
        }
    }
}

fn unavailable() -> ErrorAnswer {
    ErrorAnswer::new(
        ErrorCode::Unavailable,
        "the engine is stopping or stopped; the outcome is unknown",
    )
}

/// Polls a future once, outside tokio's cooperative budget: with the
/// budget spent, a first poll would do nothing and the order be lost.
async fn poll_once<F: std::future::Future>(
    mut future: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    tokio::task::unconstrained(std::future::poll_fn(|context| {
        std::task::Poll::Ready(future.as_mut().poll(context))
    }))
    .await
}

async fn timeout_at<F: std::future::Future>(deadline: Instant, future: F) -> Result<F::Output, ()> {
    timeout(deadline.saturating_duration_since(Instant::now()), future)
        .await
        .map_err(|_| ())
}

/// Reads until `buffer` starts with a whole frame no longer than
/// `frame_length_max`, then decodes it and removes it from the buffer.
/// Broken framing (a length out of bounds), a frame only servers send and
/// request id 0 close the connection, with an error under id 0 saying what:
/// answers could no longer be matched. A sound header with a body that
/// does not decode is [`Incoming::Malformed`]: only that request fails.
async fn next_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buffer: &mut Vec<u8>,
    frame_length_max: usize,
    idle: Option<std::time::Duration>,
) -> Result<Incoming, Close> {
    loop {
        match Frame::check(buffer, frame_length_max) {
            Ok(Check::Complete { frame_length }) => {
                let bytes = &buffer[..frame_length];
                let header = Header::parse(bytes).map_err(|error| {
                    connection_error(ErrorCode::InvalidArgument, error.to_string())
                })?;
                let incoming = incoming(header, Frame::decode(bytes));
                buffer.drain(..frame_length);
                return incoming;
            }
            Ok(Check::Incomplete) => {}
            Err(error @ DecodeError::FrameTooLarge { .. }) => {
                return Err(connection_error(
                    ErrorCode::ResourceExhausted,
                    error.to_string(),
                ))
            }
            Err(error) => {
                return Err(connection_error(
                    ErrorCode::InvalidArgument,
                    error.to_string(),
                ))
            }
        }
        // Read more: at most what the frame can still need, so memory is
        // bounded by the limit, not by what the peer declared; into spare
        // capacity, so nothing is zeroed first, however small the read.
        let start = buffer.len();
        let room = READ_CHUNK.min(frame_length_max.saturating_sub(start).max(1));
        buffer.reserve(room);
        let mut spare = bytes::BufMut::limit(&mut *buffer, room);
        let read = reader.read_buf(&mut spare);
        let read = match (idle, start > 0) {
            (Some(idle), true) => match timeout(idle, read).await {
                Ok(read) => read,
                Err(_) => {
                    return Err(connection_error(
                        ErrorCode::InvalidArgument,
                        format!("a frame stayed incomplete for {} ms", idle.as_millis()),
                    ));
                }
            },
            _ => read.await,
        };
        match read {
            Ok(0) | Err(_) => return Err(Close::Peer),
            Ok(_) => {}
        }
    }
}

/// What a whole frame is to the server, given its header and its decoding.
fn incoming(header: Header, decoded: Result<Frame, DecodeError>) -> Result<Incoming, Close> {
    let known = MessageType::from_u16(header.message_type);
    if let Some(known) = known.filter(|t| t.sender() == Sender::Server) {
        return Err(connection_error(
            ErrorCode::Unsupported,
            format!("{} is sent by servers, not clients", known.name()),
        ));
    }
    if header.request_id == CONNECTION_REQUEST_ID {
        return Err(connection_error(
            ErrorCode::InvalidArgument,
            "request id 0 is the server's: a client never sends it",
        ));
    }
    match decoded {
        Ok(frame) => Ok(Incoming::Frame(frame)),
        Err(error) => {
            let code = match error {
                DecodeError::UnknownMessageType { .. } => ErrorCode::Unsupported,
                _ => ErrorCode::InvalidArgument,
            };
            Ok(Incoming::Malformed {
                request_id: header.request_id,
                answer: ErrorAnswer::new(code, format!("malformed frame: {error}")),
            })
        }
    }
}

/// An error about the connection itself: under request id 0, then closed.
fn connection_error(code: ErrorCode, message: impl Into<String>) -> Close {
    Close::Error(CONNECTION_REQUEST_ID, ErrorAnswer::new(code, message))
}
