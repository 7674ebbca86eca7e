//! Inbound SMTP (RFC 5321 with PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, STARTTLS, AUTH).

use crate::net::{ConnectionLimiter, Refusal, send_within};
use crate::reply::Reply;
use crate::sasl::LoginOutcome;
use smtp_proto::Request;
use smtp_proto::request::receiver::DataReceiver;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Bytes read from a client at a time.
const READ_BUF_BYTES: usize = 16 * 1024;

/// Limits and names of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub hostname: String,
    /// RFC 5321 section 4.5.3.1.4: a command line is at most 512 octets with CRLF.
    pub command_line_bytes_max: usize,
    pub message_bytes_max: usize,
    pub rcpts_per_message_max: usize,
    pub connections_max: usize,
    /// Open connections from one client address (0: no limit beyond `connections_max`).
    pub connections_per_ip_max: usize,
    /// A client silent for this long is dropped (RFC 5321 section 4.5.3.2.7: 5 minutes).
    pub idle_timeout: Duration,
    /// A command line must be complete this long after its first byte (a client dripping
    /// bytes is cut, as Postfix's `smtpd_per_record_deadline` does).
    pub command_timeout: Duration,
    /// A message must be complete this long after the 354 (RFC 5321 section 4.5.3.2.6 gives
    /// the client 10 minutes for the end of DATA).
    pub data_timeout: Duration,
    /// With `auth`: a client not authenticated this long after connecting is cut.
    pub login_timeout: Duration,
    /// RCPT commands refused with 5xx in one session before it is closed with 421 (recipient
    /// harvesting; Postfix's `smtpd_hard_error_limit`); `None`: no limit.
    pub rcpt_rejects_max: Option<u32>,
    /// Offer STARTTLS (RFC 3207) with this certificate.
    pub tls: Option<crate::tls::Tls>,
    /// Offer AUTH PLAIN and LOGIN (RFC 4954), only once the connection is encrypted.
    pub auth: bool,
    /// Failed AUTH attempts before the connection is closed.
    pub auth_failures_max: u32,
    /// The bytes of messages being received (and handed to the backend) that every session
    /// sharing this budget may hold at once. A message that would pass it is read to its end
    /// and refused with 452 4.3.1 (insufficient system storage, RFC 5321 section 4.2.3 and
    /// RFC 3463): many clients sending large messages at once cannot take the server's memory.
    /// Servers given clones of one budget share it (a fleet's hosts).
    pub data_budget: DataBudget,
}

/// The default [`ServerConfig::data_budget`]: room for about seven messages at the default size
/// limit at once (a buffer grows by doubling: a 24 MB message holds 32 MiB), and for thousands
/// of ordinary ones.
pub const DATA_BUDGET_BYTES_DEFAULT: usize = 256 * 1024 * 1024;

/// Bytes of messages in flight that the sessions sharing it may hold ([`ServerConfig::data_budget`]).
#[derive(Debug, Clone)]
pub struct DataBudget(Arc<(AtomicUsize, usize)>);

impl DataBudget {
    pub fn new(bytes_max: usize) -> Self {
        DataBudget(Arc::new((AtomicUsize::new(0), bytes_max)))
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.0.0.load(Ordering::Relaxed)
    }

    /// A session's share, empty.
    fn share(&self) -> Share<'_> {
        Share {
            budget: self,
            bytes: 0,
        }
    }
}

/// The answer to a message the server has no room for (RFC 3463 4.3.1: mail system full).
fn no_room_reply() -> Reply {
    Reply::new(
        452,
        (4, 3, 1),
        "insufficient system storage for the message now, try again later",
    )
}

/// What one session holds of a [`DataBudget`]; given back when dropped.
struct Share<'b> {
    budget: &'b DataBudget,
    bytes: usize,
}

impl Share<'_> {
    /// Hold `bytes` in all; false (holding what it held) when the budget has no room for more.
    fn hold(&mut self, bytes: usize) -> bool {
        let (used, max) = &*self.budget.0;
        if bytes <= self.bytes {
            used.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        } else {
            let more = bytes - self.bytes;
            let taken = used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(more).filter(|n| n <= max)
            });
            if taken.is_err() {
                return false;
            }
        }
        self.bytes = bytes;
        true
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        self.hold(0);
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "mx.mailsim.test".into(),
            command_line_bytes_max: 512,
            message_bytes_max: 25 * 1024 * 1024,
            rcpts_per_message_max: 100,
            connections_max: 1024,
            connections_per_ip_max: 0,
            idle_timeout: Duration::from_secs(300),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            login_timeout: Duration::from_secs(180),
            rcpt_rejects_max: None,
            tls: None,
            auth: false,
            auth_failures_max: 3,
            data_budget: DataBudget::new(DATA_BUDGET_BYTES_DEFAULT),
        }
    }
}

/// What the session knows of its client.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub helo: String,
    /// The session runs inside TLS (after STARTTLS).
    pub tls: bool,
    /// The protocol and cipher of that TLS.
    pub tls_params: Option<crate::tls::TlsParams>,
    /// The authenticated user (after AUTH).
    pub user: Option<String>,
}

impl SessionInfo {
    /// A new session, before EHLO, TLS or AUTH.
    pub fn new(id: u64, peer: SocketAddr, local: SocketAddr) -> Self {
        SessionInfo {
            id,
            peer,
            local,
            helo: String::new(),
            tls: false,
            tls_params: None,
            user: None,
        }
    }
}

/// The envelope of the transaction in progress.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    pub mail_from: String,
    pub rcpts: Vec<String>,
}

/// The decisions of a server: who is accepted, what happens to a message.
pub trait Backend: Send + Sync + 'static {
    /// `Some(reply)` refuses the connection with that reply (then closes).
    fn on_connect(&self, info: &SessionInfo) -> Option<Reply>;
    fn on_mail(&self, info: &SessionInfo, from: &str) -> Reply;
    fn on_rcpt(
        &self,
        info: &SessionInfo,
        tx: &Transaction,
        rcpt: &str,
    ) -> impl Future<Output = Reply> + Send;
    fn on_data(
        &self,
        info: &SessionInfo,
        tx: &Transaction,
        message: Vec<u8>,
    ) -> impl Future<Output = Reply> + Send;
    /// The session ended (whatever the reason).
    fn on_disconnect(&self, _info: &SessionInfo) {}
    /// How long to wait before the greeting (a slow server).
    fn greeting_delay(&self, _info: &SessionInfo) -> Duration {
        Duration::ZERO
    }
    /// How long to wait before each batch of replies (a slow server).
    fn reply_delay(&self, _info: &SessionInfo) -> Duration {
        Duration::ZERO
    }
    /// Check AUTH credentials (and delay or refuse a client that keeps failing).
    fn authenticate(
        &self,
        _info: &SessionInfo,
        _login: &str,
        _password: &[u8],
    ) -> impl Future<Output = LoginOutcome> + Send {
        std::future::ready(LoginOutcome::Rejected)
    }
}

/// One unit of client input.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// A command line without its CRLF.
    Line(Vec<u8>),
    /// A command line longer than the limit (already discarded up to its end).
    LineTooLong,
    /// A complete DATA body, dot-unstuffed, without the final `.`.
    Data(Vec<u8>),
    /// A DATA body over the size limit (discarded).
    DataTooBig,
    /// A DATA body the server had no room for ([`Framer::no_room`]; discarded).
    DataNoRoom,
}

/// What becomes of the DATA body being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Kept,
    TooBig,
    NoRoom,
}

/// Sans-IO framer: feed it bytes, take complete command lines or DATA bodies.
pub struct Framer {
    buf: Vec<u8>,
    pos: usize,
    line_bytes_max: usize,
    data_bytes_max: usize,
    /// In DATA mode: the receiver, the body kept, what becomes of it, and every byte of it
    /// received (kept or not: a body over the size limit is that, whatever else it is).
    data: Option<(DataReceiver, Vec<u8>, Body, usize)>,
    discarding_line: bool,
    /// Inputs handed out so far (to tell a command in progress from the next one).
    taken: u64,
}

impl Framer {
    pub fn new(line_bytes_max: usize, data_bytes_max: usize) -> Self {
        Framer {
            buf: Vec::new(),
            pos: 0,
            line_bytes_max,
            data_bytes_max,
            data: None,
            discarding_line: false,
            taken: 0,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Switch to DATA mode (after replying 354).
    pub fn start_data(&mut self) {
        // The message starts after the CRLF that ended the DATA command: a first line that
        // starts with a dot is stuffed (RFC 5321 section 4.5.2), and a lone "." right away is
        // the end of an empty message. smtp-proto's receiver starts without that CRLF, so it
        // is shown one, and what it passes on is dropped.
        let mut receiver = DataReceiver::new();
        let mut primed = Vec::new();
        receiver.ingest(&mut b"\r\n".iter(), &mut primed);
        self.data = Some((receiver, Vec::new(), Body::Kept, 0));
    }

    /// Bytes of memory the DATA body received so far holds (its buffer's capacity).
    pub fn data_bytes(&self) -> usize {
        self.data
            .as_ref()
            .map_or(0, |(_, body, ..)| body.capacity())
    }

    /// The server has no room for the DATA body being received: it is dropped, the rest read
    /// to its end and discarded, and the body is [`Input::DataNoRoom`].
    pub fn no_room(&mut self) {
        if let Some((_, body, state, _)) = self.data.as_mut() {
            *body = Vec::new();
            if *state == Body::Kept {
                *state = Body::NoRoom;
            }
        }
    }

    pub fn has_buffered(&self) -> bool {
        self.pos < self.buf.len()
    }

    /// Part of a command line has arrived.
    pub fn has_partial_line(&self) -> bool {
        self.data.is_none() && (self.pos < self.buf.len() || self.discarding_line)
    }

    /// How many inputs (lines, messages) have been taken.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// In DATA mode (after the 354, before the final dot).
    pub fn in_data(&self) -> bool {
        self.data.is_some()
    }

    pub fn next_input(&mut self) -> Option<Input> {
        let input = self.take_input();
        if input.is_some() {
            self.taken += 1;
        }
        input
    }

    fn take_input(&mut self) -> Option<Input> {
        let rest = &self.buf[self.pos..];
        if let Some((receiver, body, state, seen)) = self.data.as_mut() {
            let mut it = rest.iter();
            let before = body.len();
            let done = receiver.ingest(&mut it, body);
            self.pos = self.buf.len() - it.len();
            *seen = seen.saturating_add(body.len() - before);
            // Over the size limit, whether kept or not (a message the server had no room for
            // is still too big: 552, not 452, or it would be retried until it expires).
            if *seen > self.data_bytes_max {
                *state = Body::TooBig;
            }
            if *state != Body::Kept {
                // Discarding: the buffer's memory goes back too (it counts against the budget).
                if body.capacity() > READ_BUF_BYTES {
                    *body = Vec::new();
                } else {
                    body.clear();
                }
            }
            if !done {
                self.compact();
                return None;
            }
            let (_, body, state, _) = self.data.take().expect("data mode");
            return Some(match state {
                Body::Kept => Input::Data(body),
                Body::TooBig => Input::DataTooBig,
                Body::NoRoom => Input::DataNoRoom,
            });
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                let line_end = self.pos + nl + 1;
                let line = &self.buf[self.pos..line_end];
                self.pos = line_end;
                if self.discarding_line {
                    self.discarding_line = false;
                    return Some(Input::LineTooLong);
                }
                if line.len() > self.line_bytes_max {
                    return Some(Input::LineTooLong);
                }
                let trimmed = line.strip_suffix(b"\n").unwrap_or(line);
                let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
                Some(Input::Line(trimmed.to_vec()))
            }
            None => {
                if rest.len() > self.line_bytes_max {
                    self.discarding_line = true;
                    self.pos = self.buf.len();
                }
                self.compact();
                None
            }
        }
    }

    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// What the driver does next for a [`Session`].
#[derive(Debug)]
pub enum Action {
    /// Ask the backend, then give the answer to [`Session::answer`] (or, for
    /// [`Question::Credentials`], to [`Session::authenticated`]).
    Ask(Question),
    /// Send [`Session::output`] (after the backend's reply delay), then [`Session::flushed`].
    Flush,
    /// Read more input, until `deadline` (time since the session started); then
    /// [`Session::feed`], or [`Session::timed_out`] when nothing came.
    Read { deadline: Duration },
    /// Send the output, then the TLS handshake; then [`Session::tls_started`].
    StartTls,
    /// Send the output and close the connection (QUIT, a 421).
    Close,
    /// Send the output and drop the connection (the backend cut the client off).
    Drop,
}

/// What the session asks its backend.
#[derive(Debug)]
pub enum Question {
    /// MAIL FROM (`""` for the null sender).
    Mail { from: String },
    /// RCPT TO, within [`Session::transaction`].
    Rcpt { rcpt: String },
    /// A complete message for the envelope `tx`.
    Data { tx: Transaction, message: Vec<u8> },
    /// AUTH credentials to check.
    Credentials { login: String, password: Vec<u8> },
}

/// An AUTH exchange in progress (RFC 4954): what the next client line is.
enum AuthStep {
    PlainResponse,
    LoginUser,
    LoginPassword(String),
}

/// Which timer ends a session if no input comes.
#[derive(Clone, Copy)]
enum Timer {
    Idle,
    Command,
    Data,
    Login,
}

/// What the session waits to be told.
enum Waiting {
    /// The reply to MAIL from this address.
    Mail(String),
    /// The reply to RCPT for this address; the output length before the command.
    Rcpt(String, usize),
    Data,
    Credentials,
}

/// How a command leaves the session.
enum Flow {
    Continue,
    /// QUIT, a 421: answer, then close.
    Close,
    /// The backend drops the connection without answering.
    Drop,
    /// STARTTLS accepted: send the 220, then the TLS handshake.
    StartTls,
    /// The backend has to be asked first.
    Ask(Question, Waiting),
}

/// One SMTP server session, sans-IO: bytes and backend answers in, replies and questions out.
/// [`handle_session`] drives it over a stream; tests and fuzzers drive it by hand.
pub struct Session<'c> {
    cfg: &'c ServerConfig,
    pub info: SessionInfo,
    framer: Framer,
    tx: Option<Transaction>,
    auth_step: Option<AuthStep>,
    auth_failures: u32,
    rcpt_rejects: u32,
    /// The input under way (mode and count of inputs taken) and since when.
    partial: Option<((bool, u64), Duration)>,
    timer: Timer,
    out: Vec<u8>,
    waiting: Option<Waiting>,
    /// How the last input ended the session, once its replies are out.
    end: Option<Action>,
}

impl<'c> Session<'c> {
    /// A session whose greeting is already in the output.
    pub fn new(info: SessionInfo, cfg: &'c ServerConfig) -> Self {
        let mut out = Vec::with_capacity(1024);
        Reply::plain(220, format!("{} ESMTP mailsim", cfg.hostname)).write_to(&mut out);
        Session {
            cfg,
            info,
            framer: Framer::new(cfg.command_line_bytes_max, cfg.message_bytes_max),
            tx: None,
            auth_step: None,
            auth_failures: 0,
            rcpt_rejects: 0,
            partial: None,
            timer: Timer::Idle,
            out,
            waiting: None,
            end: None,
        }
    }

    /// Bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.framer.feed(bytes);
    }

    /// Bytes of memory the message being received holds so far.
    pub fn data_bytes(&self) -> usize {
        self.framer.data_bytes()
    }

    /// The server has no room for the message being received: it is read to its end,
    /// discarded, and refused with 452 4.3.1.
    pub fn no_room(&mut self) {
        self.framer.no_room();
    }

    /// The replies to send.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The output was sent.
    pub fn flushed(&mut self) {
        self.out.clear();
    }

    /// The transaction in progress (for a RCPT question).
    pub fn transaction(&self) -> Option<&Transaction> {
        self.tx.as_ref()
    }

    /// What to do next; `now` is the time since the session started.
    pub fn next(&mut self, now: Duration) -> Action {
        loop {
            if let Some(end) = self.end.take() {
                return end;
            }
            // Reply to everything pipelined so far before reading more (RFC 2920).
            if !self.framer.has_buffered() && !self.out.is_empty() {
                return Action::Flush;
            }
            let Some(input) = self.framer.next_input() else {
                if !self.out.is_empty() {
                    return Action::Flush;
                }
                let (deadline, timer) = self.read_deadline(now);
                self.timer = timer;
                return Action::Read { deadline };
            };
            if let Some(action) = self.input(input) {
                return action;
            }
        }
    }

    /// No input came before the deadline: a 421 naming the timer, then close.
    pub fn timed_out(&mut self) {
        let what = match self.timer {
            Timer::Idle => "idle too long",
            Timer::Command => "command not completed in time",
            Timer::Data => "message not completed in time",
            Timer::Login => "not authenticated in time",
        };
        Reply::new(
            421,
            (4, 4, 2),
            format!("{} {what}, closing", self.cfg.hostname),
        )
        .write_to(&mut self.out);
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 section
    /// 4.2: the client must say EHLO again; nothing sent in clear is acted on).
    pub fn tls_started(&mut self) {
        self.info.tls = true;
        self.info.helo.clear();
        self.framer = Framer::new(self.cfg.command_line_bytes_max, self.cfg.message_bytes_max);
        self.tx = None;
        self.auth_step = None;
        self.auth_failures = 0;
        self.rcpt_rejects = 0;
        self.partial = None;
        self.out.clear();
        self.waiting = None;
        self.end = None;
    }

    /// The backend's reply to a MAIL, RCPT or message question.
    pub fn answer(&mut self, reply: Reply) {
        let flow = match self.waiting.take() {
            Some(Waiting::Mail(from)) => {
                if reply.is_positive() {
                    self.tx = Some(Transaction {
                        mail_from: from,
                        rcpts: Vec::new(),
                    });
                }
                let flow = answer(reply, &mut self.out);
                self.after_command(flow, None)
            }
            Some(Waiting::Rcpt(rcpt, before)) => {
                if reply.is_positive()
                    && let Some(t) = self.tx.as_mut()
                {
                    t.rcpts.push(rcpt);
                }
                let flow = answer(reply, &mut self.out);
                self.after_command(flow, Some(before))
            }
            Some(Waiting::Data) => answer(reply, &mut self.out),
            Some(Waiting::Credentials) | None => Flow::Continue,
        };
        self.end = self.finish(flow);
    }

    /// The backend's verdict on AUTH credentials (RFC 4954 replies): remember the user, or
    /// count failures. The backend has already slowed a failing client down.
    pub fn authenticated(&mut self, outcome: LoginOutcome) {
        self.waiting = None;
        let out = &mut self.out;
        let flow = match outcome {
            LoginOutcome::Accepted(u) => {
                self.info.user = Some(u);
                Reply::new(235, (2, 7, 0), "Authentication successful").write_to(out);
                Flow::Continue
            }
            LoginOutcome::Rejected => {
                self.auth_failures += 1;
                Reply::new(535, (5, 7, 8), "Authentication credentials invalid").write_to(out);
                if self.auth_failures >= self.cfg.auth_failures_max {
                    Reply::new(421, (4, 7, 0), "too many failed authentications, closing")
                        .write_to(out);
                    Flow::Close
                } else {
                    Flow::Continue
                }
            }
            LoginOutcome::Throttled => {
                Reply::new(
                    421,
                    (4, 7, 0),
                    "too many failed authentications from your address, try again later",
                )
                .write_to(out);
                Flow::Close
            }
        };
        self.end = self.finish(flow);
    }

    /// The action a flow ends in, if it ends the session's run of inputs.
    fn finish(&mut self, flow: Flow) -> Option<Action> {
        match flow {
            Flow::Continue => None,
            Flow::Close => Some(Action::Close),
            Flow::Drop => Some(Action::Drop),
            Flow::StartTls => Some(Action::StartTls),
            Flow::Ask(question, waiting) => {
                self.waiting = Some(waiting);
                Some(Action::Ask(question))
            }
        }
    }

    /// One input: its replies go to the output; a question or the end of the session is
    /// returned.
    fn input(&mut self, input: Input) -> Option<Action> {
        let flow = match input {
            // A response too long ends an AUTH exchange (an independent review: the next line
            // was still read as the response, and a command got 501).
            Input::LineTooLong if self.auth_step.take().is_some() => {
                self.auth_failed(500, (5, 5, 6), "line too long: authentication cancelled")
            }
            Input::LineTooLong => {
                Reply::new(500, (5, 5, 6), "line too long").write_to(&mut self.out);
                Flow::Continue
            }
            Input::DataTooBig => {
                self.tx = None;
                Reply::new(552, (5, 3, 4), "message exceeds the size limit")
                    .write_to(&mut self.out);
                Flow::Continue
            }
            Input::DataNoRoom => {
                self.tx = None;
                no_room_reply().write_to(&mut self.out);
                Flow::Continue
            }
            Input::Data(message) => {
                let tx = self.tx.take().unwrap_or_default();
                Flow::Ask(Question::Data { tx, message }, Waiting::Data)
            }
            // A line is the next step of an AUTH exchange, or a command (which may start one).
            Input::Line(line) => match self.auth_step.take() {
                Some(step) => self.auth_line(&line, step),
                None => {
                    let before = self.out.len();
                    let rcpt = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"RCPT");
                    let flow = self.command(&line, before);
                    match flow {
                        Flow::Ask(..) | Flow::StartTls => flow,
                        _ => self.after_command(flow, rcpt.then_some(before)),
                    }
                }
            },
        };
        self.finish(flow)
    }

    /// After a command's reply: count a refused RCPT (`rcpt_at`: where its reply starts) and
    /// close a session that has had too many.
    fn after_command(&mut self, flow: Flow, rcpt_at: Option<usize>) -> Flow {
        if rcpt_at.is_some_and(|at| self.out.get(at) == Some(&b'5')) {
            self.rcpt_rejects += 1;
        }
        match flow {
            Flow::Continue
                if self
                    .cfg
                    .rcpt_rejects_max
                    .is_some_and(|m| self.rcpt_rejects >= m) =>
            {
                Reply::new(
                    421,
                    (4, 7, 0),
                    format!(
                        "{} too many rejected recipients, closing",
                        self.cfg.hostname
                    ),
                )
                .write_to(&mut self.out);
                Flow::Close
            }
            other => other,
        }
    }

    /// The earliest deadline for the next input: idle, the command or message under way, login.
    fn read_deadline(&mut self, now: Duration) -> (Duration, Timer) {
        let cfg = self.cfg;
        // A message counts from the 354, a command line from its first byte; the same input is
        // the same mode and the same count of inputs taken (a busy pipelining client whose
        // reads end mid-line is on a new command each time).
        let key = (self.framer.in_data(), self.framer.taken());
        let pending = key.0 || self.framer.has_partial_line();
        self.partial = match self.partial {
            Some((k, since)) if pending && k == key => Some((k, since)),
            _ if pending => Some((key, now)),
            _ => None,
        };
        let mut deadline = (now + cfg.idle_timeout, Timer::Idle);
        if let Some(((data, _), since)) = self.partial {
            let (limit, timer) = if data {
                (cfg.data_timeout, Timer::Data)
            } else {
                (cfg.command_timeout, Timer::Command)
            };
            if since + limit < deadline.0 {
                deadline = (since + limit, timer);
            }
        }
        if cfg.auth && self.info.user.is_none() && cfg.login_timeout < deadline.0 {
            deadline = (cfg.login_timeout, Timer::Login);
        }
        deadline
    }

    /// A client line during an AUTH exchange.
    fn auth_line(&mut self, line: &[u8], step: AuthStep) -> Flow {
        let text = String::from_utf8_lossy(line);
        if text.trim() == "*" {
            return self.auth_failed(501, (5, 0, 0), "authentication cancelled");
        }
        match step {
            AuthStep::PlainResponse => self.plain_response(&text),
            AuthStep::LoginUser => {
                match crate::sasl::decode_sasl_b64(&text).and_then(|d| String::from_utf8(d).ok()) {
                    Some(user) => self.challenge(AuthStep::LoginPassword(user), "UGFzc3dvcmQ6"),
                    None => self.auth_failed(501, (5, 5, 2), "cannot decode the user name"),
                }
            }
            AuthStep::LoginPassword(login) => match crate::sasl::decode_sasl_b64(&text) {
                Some(password) => credentials(login, password),
                None => self.auth_failed(501, (5, 5, 2), "cannot decode the password"),
            },
        }
    }

    fn plain_response(&mut self, text: &str) -> Flow {
        use crate::sasl::PlainRefused;
        match crate::sasl::sasl_plain_b64(text) {
            Ok((login, password)) => credentials(login, password),
            Err(PlainRefused::Malformed) => {
                self.auth_failed(501, (5, 5, 2), "cannot decode the AUTH PLAIN response")
            }
            // RFC 4954 section 6: the credentials are not valid for what was asked.
            Err(PlainRefused::ActingAsAnother) => self.auth_failed(
                535,
                (5, 7, 8),
                "authentication credentials invalid: acting as another user (authorization identity) is not permitted",
            ),
        }
    }

    /// Send a 334 challenge; the next line answers it.
    fn challenge(&mut self, next: AuthStep, challenge: &str) -> Flow {
        self.auth_step = Some(next);
        Reply::plain(334, challenge).write_to(&mut self.out);
        Flow::Continue
    }

    /// An AUTH exchange ended without a check (malformed or cancelled).
    fn auth_failed(&mut self, code: u16, enhanced: (u8, u16, u16), text: &str) -> Flow {
        Reply::new(code, enhanced, text).write_to(&mut self.out);
        Flow::Continue
    }

    fn command(&mut self, line: &[u8], before: usize) -> Flow {
        let cfg = self.cfg;
        let out = &mut self.out;
        let mut with_crlf = Vec::with_capacity(line.len() + 2);
        // smtp-proto reads no address literal (RFC 5321 section 4.1.3): a valid one is read in
        // a placeholder's stead and put back after.
        let literal = match literal_hidden(line) {
            Some((hidden, literal)) => {
                with_crlf.extend_from_slice(&hidden);
                Some(literal)
            }
            None => {
                with_crlf.extend_from_slice(line);
                None
            }
        };
        with_crlf.extend_from_slice(b"\r\n");
        let request = match Request::parse(&mut with_crlf.iter()) {
            Ok(r) => with_literal(r.into_owned(), literal),
            Err(smtp_proto::Error::UnknownCommand) => {
                Reply::new(500, (5, 5, 2), "command not recognized").write_to(out);
                return Flow::Continue;
            }
            Err(smtp_proto::Error::InvalidSenderAddress) => {
                Reply::new(501, (5, 1, 7), "bad sender address syntax").write_to(out);
                return Flow::Continue;
            }
            Err(smtp_proto::Error::InvalidRecipientAddress) => {
                Reply::new(501, (5, 1, 3), "bad recipient address syntax").write_to(out);
                return Flow::Continue;
            }
            Err(e) => {
                syntax_error(e).write_to(out);
                return Flow::Continue;
            }
        };
        let info = &mut self.info;
        let tx = &mut self.tx;
        match request {
            Request::Ehlo { host } | Request::Lhlo { host } => {
                info.helo = host;
                *tx = None;
                let mut text = format!(
                    "{} hello {}\nPIPELINING\nSIZE {}\n8BITMIME\nENHANCEDSTATUSCODES",
                    cfg.hostname, info.helo, cfg.message_bytes_max
                );
                if cfg.tls.is_some() && !info.tls {
                    text.push_str("\nSTARTTLS");
                }
                // Credentials only travel encrypted: AUTH is offered after STARTTLS.
                if cfg.auth && info.tls {
                    text.push_str("\nAUTH PLAIN LOGIN");
                }
                Reply::plain(250, text).write_to(out);
            }
            Request::Helo { host } => {
                info.helo = host;
                *tx = None;
                Reply::plain(250, cfg.hostname.clone()).write_to(out);
            }
            Request::Mail { from } => {
                if info.helo.is_empty() {
                    Reply::new(503, (5, 5, 1), "say EHLO first").write_to(out);
                } else if tx.is_some() {
                    Reply::new(503, (5, 5, 1), "nested MAIL command").write_to(out);
                } else if !from.address.is_empty() && !is_mailbox(&from.address) {
                    Reply::new(501, (5, 1, 7), "bad sender address syntax").write_to(out);
                } else if let Some(param) = unoffered_mail_parameter(&from) {
                    // RFC 5321 section 4.1.1.11: a parameter of an extension not offered.
                    Reply::new(
                        555,
                        (5, 5, 4),
                        format!("MAIL FROM parameter {param} not offered here"),
                    )
                    .write_to(out);
                } else if from.size > cfg.message_bytes_max || size_overflows(line) {
                    Reply::new(
                        552,
                        (5, 3, 4),
                        "message size exceeds fixed maximum message size",
                    )
                    .write_to(out);
                } else {
                    return Flow::Ask(
                        Question::Mail {
                            from: from.address.clone(),
                        },
                        Waiting::Mail(from.address),
                    );
                }
            }
            Request::Rcpt { mut to } if to.address.is_empty() => {
                // smtp-proto reads both <> and <postmaster> as "": only the second is a
                // recipient (RFC 5321 section 4.5.1: postmaster without a domain must be
                // accepted).
                let raw = String::from_utf8_lossy(line).to_ascii_lowercase();
                if raw.contains("<postmaster>") {
                    to.address = "postmaster".into();
                    return self.rcpt(to.address, before);
                }
                Reply::new(501, (5, 1, 3), "bad recipient address syntax").write_to(out)
            }
            Request::Rcpt { to } if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 => {
                // NOTIFY and ORCPT (DSN, RFC 3461), RRVS (RFC 7293): not offered.
                Reply::new(
                    555,
                    (5, 5, 4),
                    "RCPT TO parameters NOTIFY, ORCPT and RRVS are not offered here",
                )
                .write_to(out)
            }
            Request::Rcpt { to } => return self.rcpt(to.address, before),
            Request::Data => match tx.as_ref() {
                Some(t) if !t.rcpts.is_empty() => {
                    Reply::plain(354, "end data with <CR><LF>.<CR><LF>").write_to(out);
                    self.framer.start_data();
                }
                Some(_) => {
                    *tx = None;
                    Reply::new(554, (5, 5, 1), "no valid recipients").write_to(out);
                }
                None => Reply::new(503, (5, 5, 1), "need MAIL and RCPT before DATA").write_to(out),
            },
            Request::Rset => {
                *tx = None;
                Reply::new(250, (2, 0, 0), "reset").write_to(out);
            }
            Request::Noop { .. } => Reply::new(250, (2, 0, 0), "OK").write_to(out),
            Request::Vrfy { .. } => {
                Reply::new(252, (2, 1, 5), "cannot verify, will attempt delivery").write_to(out)
            }
            Request::StartTls => {
                if cfg.tls.is_none() {
                    Reply::new(502, (5, 5, 1), "STARTTLS not offered").write_to(out);
                } else if info.tls {
                    Reply::new(503, (5, 5, 1), "TLS already active").write_to(out);
                } else {
                    *tx = None;
                    Reply::new(220, (2, 0, 0), "ready to start TLS").write_to(out);
                    return Flow::StartTls;
                }
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                if !cfg.auth {
                    Reply::new(502, (5, 5, 1), "AUTH not offered").write_to(out);
                } else if !info.tls {
                    Reply::new(
                        538,
                        (5, 7, 11),
                        "encryption required for requested authentication mechanism",
                    )
                    .write_to(out);
                } else if info.user.is_some() {
                    Reply::new(503, (5, 5, 1), "already authenticated").write_to(out);
                } else if tx.is_some() {
                    Reply::new(
                        503,
                        (5, 5, 1),
                        "AUTH not permitted during a mail transaction",
                    )
                    .write_to(out);
                } else if mechanism == smtp_proto::AUTH_PLAIN {
                    return if initial_response.is_empty() {
                        self.challenge(AuthStep::PlainResponse, "")
                    } else {
                        self.plain_response(&initial_response)
                    };
                } else if mechanism == smtp_proto::AUTH_LOGIN {
                    return if initial_response.is_empty() {
                        self.challenge(AuthStep::LoginUser, "VXNlcm5hbWU6")
                    } else {
                        self.auth_line(initial_response.as_bytes(), AuthStep::LoginUser)
                    };
                } else {
                    Reply::new(504, (5, 5, 4), "unrecognized authentication type").write_to(out);
                }
            }
            Request::Quit => {
                Reply::new(221, (2, 0, 0), format!("{} closing", cfg.hostname)).write_to(out);
                return Flow::Close;
            }
            other => Reply::new(502, (5, 5, 1), format!("{} not implemented", other.name()))
                .write_to(out),
        }
        Flow::Continue
    }

    /// RCPT for `address`: limits and sequence here, the decision the backend's.
    fn rcpt(&mut self, address: String, before: usize) -> Flow {
        let out = &mut self.out;
        match self.tx.as_ref() {
            None => Reply::new(503, (5, 5, 1), "need MAIL before RCPT").write_to(out),
            Some(_) if address != "postmaster" && !is_mailbox(&address) => {
                Reply::new(501, (5, 1, 3), "bad recipient address syntax").write_to(out)
            }
            Some(t) if t.rcpts.len() >= self.cfg.rcpts_per_message_max => {
                Reply::new(452, (4, 5, 3), "too many recipients").write_to(out)
            }
            Some(_) => {
                return Flow::Ask(
                    Question::Rcpt {
                        rcpt: address.clone(),
                    },
                    Waiting::Rcpt(address, before),
                );
            }
        }
        Flow::Continue
    }
}

/// Ask the backend to check credentials.
fn credentials(login: String, password: Vec<u8>) -> Flow {
    Flow::Ask(
        Question::Credentials { login, password },
        Waiting::Credentials,
    )
}

/// Queue a backend's reply, or drop the connection when it says so.
/// A 421 closes the session after it is sent (RFC 5321 section 3.8).
fn answer(reply: Reply, out: &mut Vec<u8>) -> Flow {
    if reply.is_disconnect() {
        return Flow::Drop;
    }
    reply.write_to(out);
    if reply.code == 421 {
        Flow::Close
    } else {
        Flow::Continue
    }
}

/// Run one SMTP session over any stream: the tokio driver of [`Session`].
pub async fn handle_session<S, B>(stream: S, info: SessionInfo, backend: &B, cfg: &ServerConfig)
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Backend,
{
    let probe = info.clone();
    let started = Instant::now();
    let delay = backend.greeting_delay(&info);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(refusal) = backend.on_connect(&info) {
        let mut out = Vec::new();
        refusal.write_to(&mut out);
        let mut stream = stream;
        let _ = send_within(&mut stream, &out, cfg.command_timeout).await;
        let _ = stream.shutdown().await;
        backend.on_disconnect(&probe);
        return;
    }
    let mut session = Session::new(info, cfg);
    if let SessionEnd::StartTls(plain) = drive(stream, &mut session, backend, started).await
        && let Some(tls) = &cfg.tls
        // A server whose TLS is broken: the connection is cut where the handshake would be.
        && !tls.handshake_fails
        && let Ok(Ok(secured)) =
            tokio::time::timeout(cfg.command_timeout, tls.acceptor.accept(plain)).await
    {
        let params = crate::tls::TlsParams::of(secured.get_ref().1);
        session.tls_started();
        session.info.tls_params = Some(params);
        drive(secured, &mut session, backend, started).await;
    }
    backend.on_disconnect(&probe);
}

enum SessionEnd<S> {
    Done,
    StartTls(S),
}

/// Carry out a session's actions on one stream (plain, then again inside TLS).
async fn drive<S, B>(
    mut stream: S,
    session: &mut Session<'_>,
    backend: &B,
    started: Instant,
) -> SessionEnd<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Backend,
{
    // Per-connection memory is what bounds a server holding thousands of idle clients.
    let mut readbuf = vec![0u8; READ_BUF_BYTES];
    let limit = session.cfg.command_timeout;
    // The message being received, held against the server's budget from its first byte
    // until the backend has answered for it.
    let budget = session.cfg.data_budget.clone();
    let mut share = budget.share();
    loop {
        let action = session.next(started.elapsed());
        if !matches!(action, Action::Ask(Question::Data { .. }))
            && !share.hold(session.data_bytes())
        {
            session.no_room();
            share.hold(0);
        }
        match action {
            Action::Flush => {
                let delay = backend.reply_delay(&session.info);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let ok = send_within(&mut stream, session.output(), limit).await;
                session.flushed();
                if !ok {
                    return SessionEnd::Done;
                }
            }
            Action::Read { deadline } => {
                match tokio::time::timeout_at(started + deadline, stream.read(&mut readbuf)).await {
                    Err(_) => {
                        session.timed_out();
                        let _ = send_within(&mut stream, session.output(), limit).await;
                        let _ = stream.shutdown().await;
                        return SessionEnd::Done;
                    }
                    Ok(Err(_)) | Ok(Ok(0)) => return SessionEnd::Done,
                    Ok(Ok(n)) => session.feed(&readbuf[..n]),
                }
            }
            Action::Ask(question) => match question {
                Question::Mail { from } => {
                    let reply = backend.on_mail(&session.info, &from);
                    session.answer(reply);
                }
                Question::Rcpt { rcpt } => {
                    let reply = match session.transaction() {
                        Some(tx) => backend.on_rcpt(&session.info, tx, &rcpt).await,
                        None => Reply::new(503, (5, 5, 1), "need MAIL before RCPT"),
                    };
                    session.answer(reply);
                }
                Question::Data { tx, message } => {
                    let reply = if share.hold(message.capacity()) {
                        backend.on_data(&session.info, &tx, message).await
                    } else {
                        drop(message);
                        no_room_reply()
                    };
                    share.hold(0);
                    session.answer(reply);
                }
                Question::Credentials { login, password } => {
                    let outcome = backend.authenticate(&session.info, &login, &password).await;
                    session.authenticated(outcome);
                }
            },
            Action::Close => {
                let _ = send_within(&mut stream, session.output(), limit).await;
                let _ = stream.shutdown().await;
                return SessionEnd::Done;
            }
            Action::Drop => {
                // Send what was answered before the drop, then cut the connection.
                let _ = send_within(&mut stream, session.output(), limit).await;
                return SessionEnd::Done;
            }
            Action::StartTls => {
                if !send_within(&mut stream, session.output(), limit).await {
                    return SessionEnd::Done;
                }
                session.flushed();
                // Nothing sent in clear after STARTTLS may be acted on (RFC 3207 section 6).
                return SessionEnd::StartTls(stream);
            }
        }
    }
}

/// The first MAIL FROM parameter of an extension this server does not offer: it offers SIZE and
/// 8BITMIME (BODY=7BIT or 8BITMIME), and takes AUTH= and ignores it (RFC 4954 section 5, as
/// OpenSMTPD's regression suite expects). An independent review found BODY=BINARYMIME, SMTPUTF8
/// and DSN's RET and ENVID accepted.
fn unoffered_mail_parameter(from: &smtp_proto::MailFrom<String>) -> Option<&'static str> {
    use smtp_proto::{MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_SMTPUTF8};
    let flags = from.flags & !(MAIL_BODY_7BIT | MAIL_BODY_8BITMIME);
    if flags & MAIL_BODY_BINARYMIME != 0 {
        Some("BODY=BINARYMIME")
    } else if flags & MAIL_SMTPUTF8 != 0 {
        Some("SMTPUTF8")
    } else if flags != 0 || from.env_id.is_some() {
        Some("of DSN, REQUIRETLS, CONPERM or DELIVERBY")
    } else if from.trans_id.is_some()
        || from.solicit.is_some()
        || from.mtrk.is_some()
        || from.by != 0
        || from.hold_for != 0
        || from.hold_until != 0
        || from.mt_priority != 0
    {
        Some("of an extension")
    } else {
        None
    }
}

/// The domain smtp-proto reads in an address literal's stead (`.invalid`: RFC 2606, no real
/// domain).
const LITERAL_PLACEHOLDER: &str = "address-literal.invalid";

/// The address a literal domain names (RFC 5321 section 4.1.3): `[192.0.2.1]` or
/// `[IPv6:2001:db8::1]` (the tag in any case). None for anything else, the general form with
/// another tag included: no other tag is registered.
pub fn address_literal(domain: &str) -> Option<std::net::IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..]
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(std::net::IpAddr::V6),
        _ => inner
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .map(std::net::IpAddr::V4),
    }
}

/// A MAIL or RCPT line whose path ends in a valid address literal, with the literal replaced by
/// [`LITERAL_PLACEHOLDER`]; and the literal. None for any other line (an invalid literal is
/// left for smtp-proto to refuse).
fn literal_hidden(line: &[u8]) -> Option<(Vec<u8>, String)> {
    let verb = line.get(..4)?;
    if !verb.eq_ignore_ascii_case(b"MAIL") && !verb.eq_ignore_ascii_case(b"RCPT") {
        return None;
    }
    let open = line.iter().position(|&b| b == b'<')?;
    let close = open + line[open..].iter().position(|&b| b == b'>')?;
    let path = &line[open + 1..close];
    let at = path.iter().rposition(|&b| b == b'@')?;
    let domain = std::str::from_utf8(&path[at + 1..]).ok()?;
    address_literal(domain)?;
    let mut hidden = Vec::with_capacity(line.len() + LITERAL_PLACEHOLDER.len());
    hidden.extend_from_slice(&line[..open + 1 + at + 1]);
    hidden.extend_from_slice(LITERAL_PLACEHOLDER.as_bytes());
    hidden.extend_from_slice(&line[close..]);
    Some((hidden, domain.to_string()))
}

/// `request` as the backend is asked it: the address literal [`literal_hidden`] took out put
/// back, and a local part that is no dot-string quoted again (smtp-proto takes the quotes off
/// `"a b"@x.test`, which written as it reads, `a b@x.test`, is no address).
fn with_literal(request: Request<String>, literal: Option<String>) -> Request<String> {
    let restore = |address: &mut String| {
        if let Some(literal) = &literal
            && let Some(local) = address.strip_suffix(LITERAL_PLACEHOLDER)
        {
            *address = format!("{local}{literal}");
        }
        if let Some((local, domain)) = address.rsplit_once('@')
            && !is_dot_string(local)
        {
            let mut quoted = String::with_capacity(address.len() + 4);
            quoted.push('"');
            for c in local.chars() {
                if c == '"' || c == '\\' {
                    quoted.push('\\');
                }
                quoted.push(c);
            }
            quoted.push_str("\"@");
            quoted.push_str(domain);
            *address = quoted;
        }
    };
    match request {
        Request::Mail { mut from } => {
            restore(&mut from.address);
            Request::Mail { from }
        }
        Request::Rcpt { mut to } => {
            restore(&mut to.address);
            Request::Rcpt { to }
        }
        other => other,
    }
}

/// RFC 5321 section 4.1.2's Dot-string: atoms of atext (RFC 5322 section 3.2.3; any non-ASCII
/// character too, as RFC 6531 allows) joined by single dots.
fn is_dot_string(local: &str) -> bool {
    local.split('.').all(|atom| {
        !atom.is_empty()
            && atom.chars().all(|c| {
                !c.is_ascii() || c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
            })
    })
}

/// RFC 5321 section 4.1.2: `Local-part "@" ( Domain / address-literal )`, both parts present
/// (smtp-proto lets `a@` through).
fn is_mailbox(address: &str) -> bool {
    address
        .rsplit_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
}

/// The reply to a command smtp-proto could not parse, without Rust's debug text: what was
/// wrong, and only printable ASCII of what the client sent (at most 64 characters).
fn syntax_error(e: smtp_proto::Error) -> Reply {
    use smtp_proto::Error as E;
    match e {
        E::SyntaxError { syntax } => Reply::new(501, (5, 5, 4), format!("syntax: {syntax}")),
        E::InvalidParameter { param } => Reply::new(
            501,
            (5, 5, 4),
            format!("invalid value for parameter {param}"),
        ),
        E::UnsupportedParameter { param } => {
            let shown: String = param
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect();
            Reply::new(555, (5, 5, 4), format!("unsupported parameter {shown}"))
        }
        _ => Reply::new(500, (5, 5, 2), "command not recognized"),
    }
}

/// One SMTP server: a backend, its limits, a connection cap and its own session numbering.
/// Sessions come from a TCP listener ([`Server::serve`]) or from any stream handed to
/// [`Server::accept`] (the in-memory pipes of virtual mode).
pub struct Server<B> {
    backend: Arc<B>,
    cfg: Arc<ServerConfig>,
    limiter: ConnectionLimiter,
    next_session: AtomicU64,
}

impl<B: Backend> Server<B> {
    pub fn new(backend: Arc<B>, cfg: ServerConfig) -> Self {
        Server {
            limiter: ConnectionLimiter::new(cfg.connections_max, cfg.connections_per_ip_max),
            backend,
            cfg: Arc::new(cfg),
            next_session: AtomicU64::new(1),
        }
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Serve one connection to its end (or refuse it with 421 when a cap is reached).
    pub async fn accept<S>(&self, mut stream: S, peer: SocketAddr, local: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let _admission = match self.limiter.admit(peer.ip()) {
            Ok(a) => a,
            Err(Refusal::TooManyConnections) => {
                refuse(&mut stream, "too many connections, try later").await;
                return;
            }
            Err(Refusal::TooManyFromAddress) => {
                refuse(&mut stream, "too many connections from your address").await;
                return;
            }
        };
        let info = SessionInfo::new(
            self.next_session.fetch_add(1, Ordering::Relaxed),
            peer,
            local,
        );
        handle_session(stream, info, self.backend.as_ref(), &self.cfg).await;
    }

    /// Accept connections on `listener` until `shutdown` resolves; then wait for every open
    /// session to finish.
    /// Serve until `shutdown`; then open sessions get [`SHUTDOWN_GRACE`] to finish (a client
    /// idling in a session must not hold a stop for the whole idle timeout).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        crate::net::accept_loop(
            listener,
            shutdown,
            Some(SHUTDOWN_GRACE),
            move |stream, peer| {
                let local = stream.local_addr().unwrap_or(peer);
                let server = self.clone();
                async move { server.accept(stream, peer, local).await }
            },
        )
        .await
    }
}

/// How long open sessions may go on after a server is told to stop.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Answer 421 and close (a connection over a cap).
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, text: &str) {
    let mut out = Vec::new();
    Reply::new(421, (4, 7, 0), text).write_to(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// Accept connections on `listener` until `shutdown` resolves, at most `connections_max` at
/// once; then wait for every open session to finish.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    backend: Arc<B>,
    cfg: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()>,
) {
    Arc::new(Server::new(backend, (*cfg).clone()))
        .serve(listener, shutdown)
        .await
}

/// True when a MAIL command's SIZE parameter (RFC 1870) holds more than a 64-bit count: the
/// parser's number wraps, but the declared size is over any limit.
fn size_overflows(line: &[u8]) -> bool {
    line.windows(5)
        .position(|w| w.eq_ignore_ascii_case(b"SIZE="))
        .is_some_and(|i| {
            let digits: &[u8] = &line[i + 5..];
            let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            n > 0
                && std::str::from_utf8(&digits[..n])
                    .ok()
                    .and_then(|d| d.parse::<u64>().ok())
                    .is_none()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_splits_pipelined_commands_and_data() {
        let mut f = Framer::new(512, 1000);
        f.feed(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDA");
        assert_eq!(
            f.next_input(),
            Some(Input::Line(b"MAIL FROM:<a@b>".to_vec()))
        );
        assert_eq!(f.next_input(), Some(Input::Line(b"RCPT TO:<c@d>".to_vec())));
        assert_eq!(f.next_input(), None);
        f.feed(b"TA\r\n");
        assert_eq!(f.next_input(), Some(Input::Line(b"DATA".to_vec())));
        f.start_data();
        f.feed(b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
        assert_eq!(
            f.next_input(),
            Some(Input::Data(b"Subject: x\r\n\r\n.dot\r\n".to_vec()))
        );
        assert_eq!(f.next_input(), Some(Input::Line(b"QUIT".to_vec())));
    }

    /// RFC 5321 section 4.5.2 from the first byte of the message: a stuffed first line loses
    /// its dot, and "." right after the 354 is an empty message.
    #[test]
    fn framer_unstuffs_the_first_line_and_ends_an_empty_message() {
        let mut f = Framer::new(512, 1000);
        f.start_data();
        f.feed(b"..first\r\nsecond\r\n.\r\n");
        assert_eq!(
            f.next_input(),
            Some(Input::Data(b".first\r\nsecond\r\n".to_vec()))
        );
        f.start_data();
        f.feed(b".\r\nQUIT\r\n");
        assert_eq!(f.next_input(), Some(Input::Data(Vec::new())));
        assert_eq!(f.next_input(), Some(Input::Line(b"QUIT".to_vec())));
    }

    fn session_info() -> SessionInfo {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:25".parse().unwrap();
        SessionInfo::new(1, peer, local)
    }

    /// Feed `input` and run the session until it waits for more, answering MAIL with 250; the
    /// replies it wrote.
    fn drive(s: &mut Session, input: &[u8]) -> String {
        s.feed(input);
        let mut out = Vec::new();
        loop {
            match s.next(Duration::ZERO) {
                Action::Flush => {
                    out.extend_from_slice(s.output());
                    s.flushed();
                }
                Action::Read { .. } => return String::from_utf8(out).unwrap(),
                Action::Ask(Question::Mail { .. }) => s.answer(Reply::new(250, (2, 1, 0), "ok")),
                other => panic!("{other:?}"),
            }
        }
    }

    /// Parameters of extensions the server does not offer are refused with 555 (RFC 5321
    /// section 4.1.1.11); those of the ones it offers are taken.
    #[test]
    fn parameters_of_extensions_not_offered_are_refused() {
        let cfg = ServerConfig::default();
        let mut s = Session::new(session_info(), &cfg);
        drive(&mut s, b"EHLO c.test\r\n");
        for (command, says) in [
            (
                "MAIL FROM:<a@b.test> BODY=BINARYMIME",
                "555 5.5.4 MAIL FROM parameter BODY=BINARYMIME",
            ),
            (
                "MAIL FROM:<a@b.test> SMTPUTF8",
                "555 5.5.4 MAIL FROM parameter SMTPUTF8",
            ),
            ("MAIL FROM:<a@b.test> RET=HDRS", "555 5.5.4"),
        ] {
            let r = drive(&mut s, format!("{command}\r\n").as_bytes());
            assert!(r.starts_with(says), "{command}: {r}");
        }
        let r = drive(&mut s, b"MAIL FROM:<a@b.test> BODY=8BITMIME SIZE=100\r\n");
        assert!(r.starts_with("250"), "{r}");
        let r = drive(&mut s, b"RCPT TO:<c@d.test> NOTIFY=NEVER\r\n");
        assert!(r.starts_with("555 5.5.4 RCPT TO parameters"), "{r}");
    }

    /// A response line too long ends an AUTH exchange: the next line is a command again.
    #[test]
    fn a_response_too_long_cancels_auth() {
        let cfg = ServerConfig {
            hostname: "mx.test".into(),
            auth: true,
            ..ServerConfig::default()
        };
        let mut info = session_info();
        info.tls = true;
        let mut s = Session::new(info, &cfg);
        drive(&mut s, b"");
        assert!(drive(&mut s, b"EHLO c.test\r\n").contains("AUTH PLAIN LOGIN"));
        assert_eq!(drive(&mut s, b"AUTH PLAIN\r\n"), "334 \r\n");
        let long = format!("{}\r\n", "QUFB".repeat(150));
        let r = drive(&mut s, long.as_bytes());
        assert!(
            r.starts_with("500 5.5.6 line too long: authentication cancelled"),
            "{r}"
        );
        assert!(
            drive(&mut s, b"NOOP\r\n").starts_with("250"),
            "a command again"
        );
    }

    /// The session is a state machine: bytes and answers in, replies and questions out, time
    /// as an argument; no runtime needed.
    #[test]
    fn a_session_is_driven_by_hand() {
        let cfg = ServerConfig {
            hostname: "mx.test".into(),
            ..ServerConfig::default()
        };
        let mut s = Session::new(session_info(), &cfg);
        let t0 = Duration::ZERO;
        assert!(matches!(s.next(t0), Action::Flush));
        assert_eq!(s.output(), b"220 mx.test ESMTP mailsim\r\n");
        s.flushed();
        match s.next(t0) {
            Action::Read { deadline } => assert_eq!(deadline, cfg.idle_timeout),
            other => panic!("{other:?}"),
        }
        // A pipelined envelope: EHLO answered at once, then one question per command.
        s.feed(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<x@mx.test>\r\nDATA\r\n");
        match s.next(t0) {
            Action::Ask(Question::Mail { from }) => assert_eq!(from, "a@c.test"),
            other => panic!("{other:?}"),
        }
        s.answer(Reply::new(250, (2, 1, 0), "sender ok"));
        match s.next(t0) {
            Action::Ask(Question::Rcpt { rcpt }) => {
                assert_eq!(rcpt, "x@mx.test");
                assert_eq!(
                    s.transaction().map(|t| t.mail_from.as_str()),
                    Some("a@c.test")
                );
            }
            other => panic!("{other:?}"),
        }
        s.answer(Reply::new(550, (5, 1, 1), "no such user"));
        // DATA without an accepted recipient; the replies go out together (RFC 2920).
        assert!(matches!(s.next(t0), Action::Flush));
        let text = String::from_utf8(s.output().to_vec()).unwrap();
        assert!(text.starts_with("250-mx.test hello c.test\r\n"), "{text}");
        assert!(
            text.ends_with(
                "250 2.1.0 sender ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n"
            ),
            "{text}"
        );
        s.flushed();
        // Half a command at 10 s: the command deadline runs from its first byte.
        let t10 = Duration::from_secs(10);
        s.feed(b"NO");
        match s.next(t10) {
            Action::Read { deadline } => assert_eq!(deadline, t10 + cfg.command_timeout),
            other => panic!("{other:?}"),
        }
        match s.next(t10 + Duration::from_secs(5)) {
            Action::Read { deadline } => assert_eq!(deadline, t10 + cfg.command_timeout),
            other => panic!("{other:?}"),
        }
        s.timed_out();
        assert_eq!(
            s.output(),
            b"421 4.4.2 mx.test command not completed in time, closing\r\n"
        );
        // The rest of the command and a pipelined QUIT: both answered, then the close.
        s.flushed();
        s.feed(b"OP\r\nQUIT\r\n");
        assert!(matches!(s.next(t10), Action::Close));
        assert_eq!(s.output(), b"250 2.0.0 OK\r\n221 2.0.0 mx.test closing\r\n");
    }

    /// RFC 5321 section 4.1.3: a path may end in an address literal, IPv4 or IPv6; the
    /// backend is asked with the literal as the client wrote it. A literal that is not one is
    /// bad syntax.
    #[test]
    fn address_literals_are_read() {
        let cfg = ServerConfig::default();
        let mut s = Session::new(session_info(), &cfg);
        drive(&mut s, b"EHLO c.test\r\n");
        s.feed(b"MAIL FROM:<a@[192.0.2.1]> SIZE=10\r\n");
        match s.next(Duration::ZERO) {
            Action::Ask(Question::Mail { from }) => assert_eq!(from, "a@[192.0.2.1]"),
            other => panic!("{other:?}"),
        }
        s.answer(Reply::new(250, (2, 1, 0), "ok"));
        drive(&mut s, b"");
        for (rcpt, want) in [
            ("<b@[127.0.0.1]>", "b@[127.0.0.1]"),
            ("<\"c d\"@[ipv6:2001:db8::1]>", "\"c d\"@[ipv6:2001:db8::1]"),
            ("<\"e\\\\\\\"f\"@x.test>", "\"e\\\\\\\"f\"@x.test"),
            ("<g.h@x.test>", "g.h@x.test"),
        ] {
            s.feed(format!("RCPT TO:{rcpt}\r\n").as_bytes());
            match s.next(Duration::ZERO) {
                Action::Ask(Question::Rcpt { rcpt: to }) => assert_eq!(to, want),
                other => panic!("{rcpt}: {other:?}"),
            }
            s.answer(Reply::new(250, (2, 1, 5), "ok"));
            drive(&mut s, b"");
        }
        for bad in ["<e@[300.1.1.1]>", "<e@[IPv6:zz]>", "<e@[Tag:x]>", "<e@[]>"] {
            let r = drive(&mut s, format!("RCPT TO:{bad}\r\n").as_bytes());
            assert!(r.starts_with("501 5.1.3"), "{bad}: {r}");
        }
        assert_eq!(
            address_literal("[IPv6:::1]"),
            Some(std::net::Ipv6Addr::LOCALHOST.into())
        );
        assert_eq!(address_literal("192.0.2.1"), None);
    }

    #[test]
    fn a_mailbox_has_a_local_part_and_a_domain() {
        for ok in ["a@b.test", "\"a b\"@b.test", "a@[192.0.2.1]", "a@b@c.test"] {
            assert!(is_mailbox(ok), "{ok}");
        }
        for bad in ["a@", "@b.test", "a", ""] {
            assert!(!is_mailbox(bad), "{bad}");
        }
    }

    #[test]
    fn framer_flags_long_lines_and_big_messages() {
        let mut f = Framer::new(16, 10);
        f.feed(&[b'A'; 40]);
        assert_eq!(f.next_input(), None);
        f.feed(b"AAAA\r\nNOOP\r\n");
        assert_eq!(f.next_input(), Some(Input::LineTooLong));
        assert_eq!(f.next_input(), Some(Input::Line(b"NOOP".to_vec())));
        f.start_data();
        f.feed(b"0123456789abcdef\r\n.\r\n");
        assert_eq!(f.next_input(), Some(Input::DataTooBig));
        // No room for a message: refused for now (452), unless it is too big anyway (552).
        f.start_data();
        f.feed(b"0123");
        assert_eq!(f.next_input(), None);
        f.no_room();
        f.feed(b"45\r\n.\r\n");
        assert_eq!(f.next_input(), Some(Input::DataNoRoom));
        f.start_data();
        f.feed(b"0123");
        assert_eq!(f.next_input(), None);
        f.no_room();
        f.feed(b"456789abcdef\r\n.\r\n");
        assert_eq!(f.next_input(), Some(Input::DataTooBig));
    }

    #[test]
    fn framer_survives_random_input_in_random_chunks() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let alphabet = b"MAIL FROM:<a@b>\r\n.DATA\x00\xff";
        for _ in 0..2000 {
            let mut f = Framer::new(64, 256);
            let len = rng.gen_range(0..600);
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let mut fed = 0;
            while fed < input.len() {
                let n = rng.gen_range(1..=(input.len() - fed).min(50));
                f.feed(&input[fed..fed + n]);
                fed += n;
                // The driver may find no room for a message at any point of it.
                if f.in_data() && rng.gen_bool(0.05) {
                    f.no_room();
                    assert_eq!(f.data_bytes(), 0);
                }
                while let Some(item) = f.next_input() {
                    match item {
                        Input::Line(l) => {
                            assert!(l.len() <= 64);
                            if rng.gen_bool(0.2) {
                                f.start_data();
                            }
                        }
                        Input::Data(d) => assert!(d.len() <= 256),
                        Input::LineTooLong | Input::DataTooBig | Input::DataNoRoom => {}
                    }
                    assert!(f.data_bytes() <= 1024);
                }
            }
        }
    }
}
