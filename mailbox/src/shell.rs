//! The tokio shell shared by the sans-IO IMAP and POP3 sessions: read, write, check passwords on
//! a blocking thread (argon2 is slow on purpose), delay failed logins, STARTTLS, IDLE, limits
//! and a clean shutdown.

use crate::tls::Tls;
use crate::users::Users;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// Send the output and close.
    Close,
}

/// A line-based mail access protocol driven by bytes.
pub trait Protocol: Send {
    fn feed(&mut self, bytes: &[u8]);
    fn step(&mut self) -> Step;
    fn take_output(&mut self) -> Vec<u8>;
    fn auth_done(&mut self, user: Option<String>);
    /// How long to wait before answering the next failed login.
    fn auth_failure_delay(&self) -> Duration;
    fn tls_started(&mut self);
    /// A client silent this long is disconnected.
    fn idle_timeout(&self) -> Duration;
    /// Changes of the selected mailbox, for IDLE.
    fn idle_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    fn idle_poll(&mut self) {}
}

/// At most `total` connections, and at most `per_ip` from one address (0: no such limit).
pub struct ConnectionLimiter {
    total: Arc<Semaphore>,
    per_ip_max: usize,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Held while a connection is open.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Option<Arc<Mutex<HashMap<IpAddr, usize>>>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(map) = &self.per_ip {
            let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooManyFromAddress,
}

impl ConnectionLimiter {
    pub fn new(total: usize, per_ip_max: usize) -> Self {
        ConnectionLimiter {
            total: Arc::new(Semaphore::new(total)),
            per_ip_max,
            per_ip: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn admit(&self, ip: IpAddr) -> Result<Admission, Refusal> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::TooManyConnections)?;
        if self.per_ip_max == 0 {
            return Ok(Admission {
                _permit: permit,
                ip,
                per_ip: None,
            });
        }
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.per_ip_max {
            return Err(Refusal::TooManyFromAddress);
        }
        *n += 1;
        Ok(Admission {
            _permit: permit,
            ip,
            per_ip: Some(self.per_ip.clone()),
        })
    }
}

enum End<S> {
    Closed,
    StartTls(S),
}

/// Run one session over a stream to its end (through one STARTTLS).
pub async fn run_connection<S, P>(stream: S, mut session: P, users: Arc<Users>, tls: Option<Tls>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    P: Protocol,
{
    if let End::StartTls(stream) = drive(stream, &mut session, &users).await {
        let Some(tls) = tls else { return };
        let Ok(secured) = tls.acceptor.accept(stream).await else {
            return;
        };
        session.tls_started();
        // The session refuses a second STARTTLS, so this cannot ask again.
        let _ = drive(secured, &mut session, &users).await;
    }
}

async fn drive<S, P>(mut stream: S, session: &mut P, users: &Arc<Users>) -> End<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    P: Protocol,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let step = session.step();
        let out = session.take_output();
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return End::Closed;
        }
        match step {
            Step::NeedInput => {
                match tokio::time::timeout(session.idle_timeout(), stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => session.feed(&buf[..n]),
                    _ => return End::Closed,
                }
            }
            Step::Authenticate { login, password } => {
                let users = users.clone();
                let user = tokio::task::spawn_blocking(move || users.verify(&login, &password))
                    .await
                    .ok()
                    .flatten();
                if user.is_none() {
                    tokio::time::sleep(session.auth_failure_delay()).await;
                }
                session.auth_done(user);
            }
            Step::StartTls => return End::StartTls(stream),
            Step::Idle => {
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
                    read = tokio::time::timeout(session.idle_timeout(), stream.read(&mut buf)) => {
                        match read {
                            Ok(Ok(n)) if n > 0 => session.feed(&buf[..n]),
                            _ => return End::Closed,
                        }
                    }
                    _ = changed => session.idle_poll(),
                    // Mail delivered straight into the Maildir by another process.
                    _ = tokio::time::sleep(Duration::from_secs(2)) => session.idle_poll(),
                }
            }
            Step::Close => {
                let _ = stream.shutdown().await;
                return End::Closed;
            }
        }
    }
}

/// Accept connections on `listener` until `shutdown`, spawning `on_conn(stream, peer)` for each;
/// then wait for the open sessions: all of them (`grace` None), or that long before the rest
/// are aborted.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Option<Duration>,
    mut on_conn: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut sessions = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                sessions.spawn(on_conn(stream, peer));
            }
        }
    }
    drop(listener);
    let drain = async { while sessions.join_next().await.is_some() {} };
    match grace {
        None => drain.await,
        Some(grace) => {
            if tokio::time::timeout(grace, drain).await.is_err() {
                sessions.abort_all();
                while sessions.join_next().await.is_some() {}
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
    users: Arc<Users>,
    tls: Option<Tls>,
    make: F,
    refuse: &'static str,
    shutdown: impl Future<Output = ()>,
) where
    P: Protocol + 'static,
    F: Fn(SocketAddr) -> P,
{
    let on_conn = |mut stream: TcpStream, peer: SocketAddr| {
        let admitted = limiter.admit(peer.ip()).map(|a| (a, make(peer)));
        let (users, tls) = (users.clone(), tls.clone());
        async move {
            match admitted {
                Ok((admission, session)) => {
                    run_connection(stream, session, users, tls).await;
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
