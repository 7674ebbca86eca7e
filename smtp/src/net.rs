//! Server plumbing every protocol shares: connection caps and the accept loop.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Write `bytes` to a client within `limit`; false when the write failed or timed out. A client
/// that sends commands and never reads the replies must not hold its session, and the buffers
/// behind it, forever: a server's timeouts cover its writes as well as its reads (Postfix's
/// `smtpd_timeout` is "the time limit for sending a server response and for receiving a client
/// request").
pub async fn send_within<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> bool {
    use tokio::io::AsyncWriteExt;
    matches!(
        tokio::time::timeout(limit, stream.write_all(bytes)).await,
        Ok(Ok(()))
    )
}
