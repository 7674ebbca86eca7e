//! The tokio shell shared by the sans-IO IMAP and POP3 sessions: read, write, check passwords
//! through the [`LoginGuard`] (bounded, delayed, counted per address), STARTTLS, IDLE, timeouts
//! (idle, per command, login deadline), limits and a clean shutdown.

use crate::login::LoginGuard;
use mailsim_smtp::net::{ConnectionLimiter, accept_loop, send_within};
pub use mailsim_smtp::sasl::LoginOutcome;
use mailsim_smtp::tls::Tls;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// What the shell must do next for a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send the output, read more input.
    NeedInput,
    /// Check these credentials, then call [`Protocol::auth_done`].
    Authenticate { login: String, password: Vec<u8> },
    /// Send the output, then run the TLS handshake and call [`Protocol::tls_started`].
    StartTls,
    /// IMAP IDLE: send the output, then wait for input or a mailbox change
    /// ([`Protocol::idle_poll`]).
    Idle,
    /// Send the output, then step again: more commands are waiting in the input, but their
    /// answers are not built while this much output is unsent (a client that pipelines
    /// commands and does not read would otherwise make the server hold every answer).
    Flush,
    /// Send the output and close.
    Close,
}

/// How much unsent output a session builds before it lets the shell send it
/// ([`Step::Flush`]) and runs the next of the commands waiting.
pub const OUTPUT_PENDING_MAX: usize = 256 * 1024;

/// Why the shell ended a session on a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// The client said nothing for too long.
    Idle,
    /// A command begun was not complete in time (a client dripping bytes).
    Command,
    /// The client did not log in in time.
    Login,
}

/// The shell's time limits (the protocol's own idle timeout applies once logged in).
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// Before login: a client silent this long is dropped.
    pub login_idle: Duration,
    /// Before login: the whole session, however busy the client keeps it (Dovecot's 3 minutes).
    pub login_total: Duration,
    /// Before login: a command must be complete this long after its first byte.
    pub command: Duration,
    /// Logged in: a command (with its literals) must be complete this long after its first byte.
    pub command_authenticated: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            login_idle: Duration::from_secs(60),
            login_total: Duration::from_secs(180),
            command: Duration::from_secs(60),
            command_authenticated: Duration::from_secs(10 * 60),
        }
    }
}

/// A line-based mail access protocol driven by bytes.
pub trait Protocol: Send {
    fn feed(&mut self, bytes: &[u8]);
    fn step(&mut self) -> Step;
    fn take_output(&mut self) -> Vec<u8>;
    /// The answer to [`Step::Authenticate`].
    fn auth_done(&mut self, outcome: LoginOutcome);
    fn tls_started(&mut self);
    /// Once logged in, a client silent this long is disconnected.
    fn idle_timeout(&self) -> Duration;
    fn authenticated(&self) -> bool;
    /// When part of a command has been received: the number of commands before it (so that the
    /// shell can tell a command in progress from the next one).
    fn partial_command(&self) -> Option<u64>;
    /// Say goodbye for a timeout (the shell then closes).
    fn timed_out(&mut self, why: Timeout);
    /// Changes of the selected mailbox, for IDLE.
    fn idle_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    fn idle_poll(&mut self) {}
}

enum End<S> {
    Closed,
    StartTls(S),
}

/// What a session needs from the server around it.
#[derive(Clone)]
pub struct Context {
    pub guard: Arc<LoginGuard>,
    pub tls: Option<Tls>,
    pub timeouts: Arc<Timeouts>,
}

/// Run one session over a stream to its end (through one STARTTLS).
pub async fn run_connection<S, P>(stream: S, mut session: P, ctx: &Context, peer: IpAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    P: Protocol,
{
    let started = Instant::now();
    if let End::StartTls(stream) = drive(stream, &mut session, ctx, peer, started).await {
        let Some(tls) = &ctx.tls else { return };
        let handshake = tls.acceptor.accept(stream);
        let Ok(Ok(secured)) = tokio::time::timeout(ctx.timeouts.command, handshake).await else {
            return;
        };
        session.tls_started();
        // The session refuses a second STARTTLS, so this cannot ask again.
        let _ = drive(secured, &mut session, ctx, peer, started).await;
    }
}

/// When the next read must have arrived, and what it is if it has not.
fn read_deadline<P: Protocol>(
    session: &P,
    t: &Timeouts,
    started: Instant,
    partial: &mut Option<(u64, Instant)>,
) -> (Instant, Timeout) {
    let now = Instant::now();
    let authed = session.authenticated();
    *partial = match (session.partial_command(), *partial) {
        (Some(n), Some((m, since))) if n == m => Some((m, since)),
        (Some(n), _) => Some((n, now)),
        (None, _) => None,
    };
    let idle = if authed {
        session.idle_timeout()
    } else {
        t.login_idle
    };
    let mut deadline = (now + idle, Timeout::Idle);
    if !authed && started + t.login_total < deadline.0 {
        deadline = (started + t.login_total, Timeout::Login);
    }
    if let Some((_, since)) = *partial {
        let limit = if authed {
            t.command_authenticated
        } else {
            t.command
        };
        if since + limit < deadline.0 {
            deadline = (since + limit, Timeout::Command);
        }
    }
    deadline
}

/// End a session on a timer: its goodbye for `why`, sent within the command timeout.
async fn timed_out<S, P>(mut stream: S, session: &mut P, ctx: &Context, why: Timeout) -> End<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    P: Protocol,
{
    session.timed_out(why);
    let _ = send_within(&mut stream, &session.take_output(), ctx.timeouts.command).await;
    let _ = stream.shutdown().await;
    End::Closed
}

async fn drive<S, P>(
    mut stream: S,
    session: &mut P,
    ctx: &Context,
    peer: IpAddr,
    started: Instant,
) -> End<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    P: Protocol,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut partial = None;
    // When an IDLE with no word from the client ends the session (RFC 2177: the server may log
    // off a client idle past its inactivity timeout; clients restart IDLE every 29 minutes).
    // Fixed when the IDLE starts, not moved by the session's own polls of the mailbox.
    let mut idle_deadline: Option<Instant> = None;
    loop {
        let step = session.step();
        if step != Step::Idle {
            idle_deadline = None;
        }
        let out = session.take_output();
        if !out.is_empty() && !send_within(&mut stream, &out, ctx.timeouts.command).await {
            return End::Closed;
        }
        match step {
            Step::NeedInput => {
                let (deadline, why) = read_deadline(session, &ctx.timeouts, started, &mut partial);
                match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => session.feed(&buf[..n]),
                    Ok(_) => return End::Closed,
                    Err(_) => return timed_out(stream, session, ctx, why).await,
                }
            }
            Step::Authenticate { login, password } => {
                let outcome = ctx.guard.check(peer, &login, &password).await;
                session.auth_done(outcome);
            }
            Step::StartTls => return End::StartTls(stream),
            Step::Idle => {
                let deadline =
                    *idle_deadline.get_or_insert_with(|| Instant::now() + session.idle_timeout());
                let mut watch = session.idle_watch();
                let changed = async {
                    match watch.as_mut() {
                        Some(w) => {
                            if w.changed().await.is_err() {
                                std::future::pending::<()>().await
                            }
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    read = tokio::time::timeout_at(deadline, stream.read(&mut buf)) => {
                        match read {
                            Ok(Ok(n)) if n > 0 => {
                                idle_deadline = None;
                                session.feed(&buf[..n]);
                            }
                            Ok(_) => return End::Closed,
                            Err(_) => return timed_out(stream, session, ctx, Timeout::Idle).await,
                        }
                    }
                    _ = changed => session.idle_poll(),
                    // Mail delivered straight into the Maildir by another process.
                    _ = tokio::time::sleep(Duration::from_secs(2)) => session.idle_poll(),
                }
            }
            // The output is sent above (or the client did not read it in time: closed).
            Step::Flush => {}
            Step::Close => {
                let _ = stream.shutdown().await;
                return End::Closed;
            }
        }
    }
}

/// Accept connections until `shutdown`, one session each from `make(peer)`; then give the open
/// sessions a moment before closing them (an IMAP client in IDLE would otherwise hold the
/// server for half an hour). `refuse` is the line sent to a connection over a limit.
pub async fn serve<P, F>(
    listener: TcpListener,
    limiter: Arc<ConnectionLimiter>,
    ctx: Context,
    make: F,
    refuse: &'static str,
    shutdown: impl Future<Output = ()>,
) where
    P: Protocol + 'static,
    F: Fn(SocketAddr) -> P,
{
    let on_conn = |mut stream: TcpStream, peer: SocketAddr| {
        let admitted = limiter.admit(peer.ip()).map(|a| (a, make(peer)));
        let ctx = ctx.clone();
        async move {
            match admitted {
                Ok((admission, session)) => {
                    run_connection(stream, session, &ctx, peer.ip()).await;
                    drop(admission);
                }
                Err(_) => {
                    let _ = stream.write_all(refuse.as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            }
        }
    };
    accept_loop(listener, shutdown, Some(Duration::from_secs(2)), on_conn).await;
}
