//! A typed async client for submitters, operators and agents: one
//! connection, many requests in flight (pipelined, matched by request id),
//! and the server's pushes (dispatches, stop requests) on their own queue.
//!
//! It owns no scheduling knowledge: it encodes requests and decodes answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};

use crate::model::{
    AgentId, ErrorCode, JobId, JobSpec, Pair, QueueConfig, RunId, RunSpec, TagRule,
};
use crate::protocol::{
    AgentInfo, CancelJob, CancelRun, ChangeJobPriority, ChangeRunPriority, Check, Complete,
    Completion, DecodeError, ErrorAnswer, ExplainJob, Frame, GetJob, GetRun, Heartbeat, Hello,
    JobInfo, ListAgents, ListQueues, Message, PauseQueue, PutQueue, QueueInfo, Register,
    ResumeQueue, Role, RunInfo, SetTagRules, SubmitRun, Submitted, TakeWork, PROTOCOL_VERSION,
};
use crate::sched::view::Explanation;

/// Largest frame the client accepts from the server.
const FRAME_LENGTH_MAX: usize = 64 << 20;
/// Pushes waiting for the application; past this the client stops reading
/// the connection (back-pressure), it never drops one.
const PUSHES_MAX: usize = 4_096;
/// Frames waiting to be written.
const OUTGOING_MAX: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed: the server's certificate is not trusted or
    /// does not name the server, the server does not speak TLS, and so on.
    #[error("TLS handshake with {server_name}: {error}")]
    Tls {
        server_name: String,
        error: std::io::Error,
    },
    #[error("the server sent a malformed frame: {0}")]
    Protocol(#[from] DecodeError),
    #[error("{}: {}", .0.code, .0.message)]
    Server(ErrorAnswer),
    #[error("the connection is closed; the outcome of requests in flight is unknown")]
    Closed,
    /// The server answered the `Hello` with a TLS record: it wants TLS.
    #[error("the server speaks TLS: connect with TLS and a CA to trust (--tls-ca)")]
    ServerWantsTls,
    #[error("the server answered {got} where {expected} was expected")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
}

impl ClientError {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(answer) => Some(answer.code),
            _ => None,
        }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Message>>>>;

pub struct Client {
    outgoing: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    /// Set by the reader when the connection ends: no answer can come.
    closed: Arc<AtomicBool>,
    next_request: AtomicU64,
    pushes: tokio::sync::Mutex<mpsc::Receiver<Frame>>,
    role: Role,
}

/// How to reach the engine: plain TCP, or TLS.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// The CAs to trust and the server's name; `None`: plain TCP.
    pub tls: Option<crate::tls::ClientTls>,
}

impl Client {
    /// Connects over plain TCP and authenticates with `token`.
    pub async fn connect(
        address: impl ToSocketAddrs,
        token: &[u8],
        name: &str,
    ) -> Result<Client, ClientError> {
        Client::connect_with(address, &ConnectOptions::default(), token, name).await
    }

    /// Connects over TLS, trusting `tls`'s CAs for its server name, and
    /// authenticates with `token`.
    pub async fn connect_tls(
        address: impl ToSocketAddrs,
        tls: &crate::tls::ClientTls,
        token: &[u8],
        name: &str,
    ) -> Result<Client, ClientError> {
        let options = ConnectOptions {
            tls: Some(tls.clone()),
        };
        Client::connect_with(address, &options, token, name).await
    }

    /// Connects as `options` say and authenticates with `token`.
    pub async fn connect_with(
        address: impl ToSocketAddrs,
        options: &ConnectOptions,
        token: &[u8],
        name: &str,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let Some(tls) = &options.tls else {
            let (reader, writer) = stream.into_split();
            return Client::start(reader, writer, token, name).await;
        };
        let stream = tls
            .connector()
            .connect(tls.server_name().clone(), stream)
            .await
            .map_err(|error| ClientError::Tls {
                server_name: tls.server_name().to_str().into_owned(),
                error,
            })?;
        let (reader, writer) = tokio::io::split(stream);
        Client::start(reader, writer, token, name).await
    }

    /// The handshake on a connected stream, then the reader and writer
    /// tasks.
    async fn start<R, W>(
        mut reader: R,
        mut writer: W,
        token: &[u8],
        name: &str,
    ) -> Result<Client, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            token: token.to_vec(),
            client_name: name.to_string(),
        };
        let mut bytes = Vec::new();
        Frame::new(1, hello)
            .encode(&mut bytes, FRAME_LENGTH_MAX)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        writer.write_all(&bytes).await?;
        writer.flush().await?;
        let mut buffer = Vec::new();
        let answer = read_frame(&mut reader, &mut buffer).await;
        // A TLS server answers a plain Hello with an alert record (type 21,
        // version 3.x), which reads as an incomplete frame.
        if answer.is_err() && buffer.starts_with(&[0x15, 0x03]) {
            return Err(ClientError::ServerWantsTls);
        }
        let role = match answer?.map(|frame| frame.message) {
            Some(Message::HelloOk(ok)) => ok.role,
            Some(Message::Error(error)) => return Err(ClientError::Server(error)),
            Some(other) => {
                return Err(ClientError::Unexpected {
                    expected: "HelloOk",
                    got: other.message_type().name(),
                })
            }
            None => return Err(ClientError::Closed),
        };
        let (outgoing, mut queue) = mpsc::channel::<Vec<u8>>(OUTGOING_MAX);
        tokio::spawn(async move {
            while let Some(bytes) = queue.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
                // A stream that buffers (TLS) sends once the queue drains.
                if queue.is_empty() && writer.flush().await.is_err() {
                    return;
                }
            }
        });
        let pending: Pending = Arc::default();
        let (push_sender, pushes) = mpsc::channel(PUSHES_MAX);
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_answers(
            reader,
            buffer,
            pending.clone(),
            push_sender,
            closed.clone(),
        ));
        Ok(Client {
            outgoing,
            pending,
            closed,
            next_request: AtomicU64::new(2),
            pushes: tokio::sync::Mutex::new(pushes),
            role,
        })
    }

    /// What the token allows.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Sends a request and waits for its answer; an `Error` answer becomes
    /// [`ClientError::Server`].
    pub async fn call(&self, message: impl Into<Message>) -> Result<Message, ClientError> {
        let (request_id, answer) = self.send(message.into()).await?;
        let _ = request_id;
        match answer.await.map_err(|_| ClientError::Closed)? {
            Message::Error(error) => Err(ClientError::Server(error)),
            message => Ok(message),
        }
    }

    /// Sends a request; returns its id (pushes that serve it carry the id)
    /// and the answer to come.
    pub async fn send(
        &self,
        message: Message,
    ) -> Result<(u64, oneshot::Receiver<Message>), ClientError> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Vec::new();
        Frame::new(request_id, message)
            .encode(&mut bytes, FRAME_LENGTH_MAX)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let (sender, answer) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id, sender);
        // Checked after the insert: either the reader's final clear drops
        // this entry, or the flag is seen here. No request waits forever.
        if self.closed.load(Ordering::SeqCst) {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&request_id);
            return Err(ClientError::Closed);
        }
        if self.outgoing.send(bytes).await.is_err() {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&request_id);
            return Err(ClientError::Closed);
        }
        Ok((request_id, answer))
    }

    /// The next push from the server (a dispatch, a stop request, a job
    /// update), or `None` once the connection is closed.
    pub async fn next_push(&self) -> Option<Frame> {
        self.pushes.lock().await.recv().await
    }

    // ---- submitters and operators ------------------------------------

    pub async fn submit(&self, spec: RunSpec) -> Result<Submitted, ClientError> {
        match self.call(SubmitRun { spec }).await? {
            Message::Submitted(submitted) => Ok(submitted),
            other => Err(unexpected("Submitted", &other)),
        }
    }

    pub async fn append(&self, run: RunId, jobs: Vec<JobSpec>) -> Result<Submitted, ClientError> {
        match self.call(crate::protocol::AppendJobs { run, jobs }).await? {
            Message::Submitted(submitted) => Ok(submitted),
            other => Err(unexpected("Submitted", &other)),
        }
    }

    pub async fn job(&self, job: JobId) -> Result<JobInfo, ClientError> {
        match self.call(GetJob { job }).await? {
            Message::JobInfo(info) => Ok(info),
            other => Err(unexpected("JobInfo", &other)),
        }
    }

    pub async fn run(&self, run: RunId) -> Result<RunInfo, ClientError> {
        match self.call(GetRun { run }).await? {
            Message::RunInfo(info) => Ok(info),
            other => Err(unexpected("RunInfo", &other)),
        }
    }

    pub async fn explain(&self, job: JobId) -> Result<Explanation, ClientError> {
        match self.call(ExplainJob { job }).await? {
            Message::Explanation(explanation) => Ok(explanation),
            other => Err(unexpected("Explanation", &other)),
        }
    }

    pub async fn queues(&self) -> Result<Vec<QueueInfo>, ClientError> {
        match self.call(ListQueues).await? {
            Message::QueueList(list) => Ok(list.queues),
            other => Err(unexpected("QueueList", &other)),
        }
    }

    pub async fn agents(&self) -> Result<Vec<AgentInfo>, ClientError> {
        match self.call(ListAgents).await? {
            Message::AgentList(list) => Ok(list.agents),
            other => Err(unexpected("AgentList", &other)),
        }
    }

    pub async fn change_job_priority(&self, job: JobId, priority: i32) -> Result<(), ClientError> {
        self.done(ChangeJobPriority { job, priority }).await
    }

    pub async fn change_run_priority(&self, run: RunId, priority: i32) -> Result<(), ClientError> {
        self.done(ChangeRunPriority { run, priority }).await
    }

    pub async fn cancel_job(&self, job: JobId) -> Result<(), ClientError> {
        self.done(CancelJob { job }).await
    }

    pub async fn cancel_run(&self, run: RunId) -> Result<(), ClientError> {
        self.done(CancelRun { run }).await
    }

    pub async fn put_queue(&self, config: QueueConfig) -> Result<(), ClientError> {
        self.done(PutQueue { config }).await
    }

    pub async fn pause_queue(&self, queue: &str) -> Result<(), ClientError> {
        self.done(PauseQueue {
            queue: queue.to_string(),
        })
        .await
    }

    pub async fn resume_queue(&self, queue: &str) -> Result<(), ClientError> {
        self.done(ResumeQueue {
            queue: queue.to_string(),
        })
        .await
    }

    pub async fn set_tag_rules(&self, rules: Vec<TagRule>) -> Result<(), ClientError> {
        self.done(SetTagRules { rules }).await
    }

    /// Follows a job or every job of a run: `JobUpdate` pushes under the
    /// returned request id, the last with `last` set.
    pub async fn watch(&self, target: crate::protocol::WatchTarget) -> Result<u64, ClientError> {
        let (request_id, answer) = self.send(crate::protocol::Watch { target }.into()).await?;
        match answer.await.map_err(|_| ClientError::Closed)? {
            Message::Done(_) => Ok(request_id),
            Message::Error(error) => Err(ClientError::Server(error)),
            other => Err(unexpected("Done", &other)),
        }
    }

    // ---- agents ------------------------------------------------------

    pub async fn register(
        &self,
        name: &str,
        pools: Vec<String>,
        labels: Vec<Pair>,
        slots: u32,
        running: Vec<(JobId, u32)>,
    ) -> Result<AgentId, ClientError> {
        match self
            .call(Register {
                name: name.to_string(),
                pools,
                labels,
                slots,
                running,
            })
            .await?
        {
            Message::Registered(registered) => Ok(registered.agent),
            other => Err(unexpected("Registered", &other)),
        }
    }

    /// Asks for up to `count` jobs; they arrive as `Dispatch` pushes.
    pub async fn take_work(&self, count: u32) -> Result<(), ClientError> {
        self.done(TakeWork { count }).await
    }

    pub async fn heartbeat(&self) -> Result<(), ClientError> {
        self.done(Heartbeat).await
    }

    /// Reports completions; each succeeds or fails on its own.
    pub async fn complete(
        &self,
        completions: Vec<Completion>,
    ) -> Result<Vec<Result<(), ErrorAnswer>>, ClientError> {
        match self.call(Complete { completions }).await? {
            Message::CompleteResults(results) => Ok(results.results),
            other => Err(unexpected("CompleteResults", &other)),
        }
    }

    async fn done(&self, message: impl Into<Message>) -> Result<(), ClientError> {
        match self.call(message).await? {
            Message::Done(_) => Ok(()),
            other => Err(unexpected("Done", &other)),
        }
    }
}

fn unexpected(expected: &'static str, got: &Message) -> ClientError {
    ClientError::Unexpected {
        expected,
        got: got.message_type().name(),
    }
}

async fn read_answers<R: AsyncRead + Unpin>(
    mut reader: R,
    mut buffer: Vec<u8>,
    pending: Pending,
    pushes: mpsc::Sender<Frame>,
    closed: Arc<AtomicBool>,
) {
    loop {
        let frame = match read_frame(&mut reader, &mut buffer).await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => break,
        };
        // Pushes come under the id of the request they serve, which may
        // still wait for its own answer: they never complete it.
        if matches!(
            frame.message,
            Message::Dispatch(_) | Message::StopJob(_) | Message::JobUpdate(_)
        ) {
            if pushes.send(frame).await.is_err() {
                break;
            }
            continue;
        }
        let waiting = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&frame.request_id);
        match (waiting, &frame.message) {
            (Some(waiting), _) => {
                let _ = waiting.send(frame.message);
            }
            (None, Message::Error(error)) => {
                tracing::warn!(code = %error.code, message = %error.message, "the server closed the connection");
                break;
            }
            (None, other) => tracing::warn!(
                message = other.message_type().name(),
                "an answer to no request"
            ),
        }
    }
    // Dropping the senders of every request in flight tells their callers;
    // the flag tells those still to come.
    closed.store(true, Ordering::SeqCst);
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// Reads one frame; `None` when the connection closed between frames.
async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    buffer: &mut Vec<u8>,
) -> Result<Option<Frame>, ClientError> {
    loop {
        if let Check::Complete { frame_length } = Frame::check(buffer, FRAME_LENGTH_MAX)? {
            let frame = Frame::decode(&buffer[..frame_length])?;
            buffer.drain(..frame_length);
            return Ok(Some(frame));
        }
        // Into the spare capacity, without zeroing it first.
        let start = buffer.len();
        buffer.reserve(64 * 1024);
        match reader.read_buf(buffer).await {
            Ok(0) => {
                return if start == 0 {
                    Ok(None)
                } else {
                    Err(ClientError::Closed)
                };
            }
            Ok(_) => {}
            Err(error) => return Err(error.into()),
        }
    }
}
