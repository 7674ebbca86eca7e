//! The virtual network: in-memory connections to the fleet's servers, following the runtime's
//! (paused) clock. Used on a current-thread runtime, so one seed replays a run exactly.

use crate::fleet::{FleetServers, HostBackend};
use crate::foresight::Foresight;
use crate::web::StreamService;
use mailsim_mta::Connector;
use mailsim_smtp::server::Server;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::DuplexStream;
use tokio::task::JoinSet;

/// Bytes buffered in each direction of an in-memory connection.
const PIPE_BYTES: usize = 256 * 1024;

/// Connects the MTA to the fleet's servers through in-memory pipes.
#[derive(Clone)]
pub struct VirtualNet {
    servers: Arc<BTreeMap<IpAddr, Arc<Server<HostBackend>>>>,
    client_ip: IpAddr,
    next_port: Arc<AtomicU16>,
    sessions: Arc<Mutex<JoinSet<()>>>,
    /// Other servers (the sender's web), by address and port.
    services: Arc<Mutex<BTreeMap<SocketAddr, StreamService>>>,
    /// Where messages about to be sent are handed ahead (see [`crate::foresight`]).
    foresight: Option<Arc<Foresight>>,
}

impl VirtualNet {
    pub fn new(fleet: &FleetServers, client_ip: IpAddr) -> Self {
        VirtualNet {
            servers: Arc::new(
                fleet
                    .servers
                    .iter()
                    .map(|(h, s)| (IpAddr::V4(h.ip), s.clone()))
                    .collect(),
            ),
            client_ip,
            next_port: Arc::new(AtomicU16::new(40_000)),
            sessions: Arc::new(Mutex::new(JoinSet::new())),
            services: Arc::default(),
            foresight: None,
        }
    }

    /// The same network handing messages about to be sent to `foresight`.
    pub fn with_foresight(mut self, foresight: Arc<Foresight>) -> Self {
        self.foresight = Some(foresight);
        self
    }

    /// Serve `service` at `addr` (port 0: the next free port from 8000); the address used.
    pub fn serve(&self, addr: SocketAddr, service: StreamService) -> SocketAddr {
        let mut services = self.services.lock().expect("services");
        let mut addr = addr;
        if addr.port() == 0 {
            let port = (8000..)
                .find(|p| !services.contains_key(&SocketAddr::new(addr.ip(), *p)))
                .unwrap_or(8000);
            addr.set_port(port);
        }
        services.insert(addr, service);
        addr
    }

    /// The same network seen from another client address (a fleet host sending reports).
    pub fn from_ip(&self, client_ip: IpAddr) -> Self {
        VirtualNet {
            client_ip,
            ..self.clone()
        }
    }

    /// Wait for every server session to end.
    pub async fn shutdown(&self) {
        let mut sessions = std::mem::take(&mut *self.sessions.lock().expect("sessions"));
        while sessions.join_next().await.is_some() {}
    }
}

impl Connector for VirtualNet {
    type Stream = DuplexStream;

    fn will_send(&self, from: &str, message: &[u8]) {
        if let Some(f) = &self.foresight {
            f.submit(self.client_ip, from, message);
        }
    }

    fn will_refuse(&self, from: &str, rcpt: &str) -> bool {
        self.foresight
            .as_ref()
            .is_some_and(|f| f.refuses(self.client_ip, from, rcpt))
    }

    /// One: the foresight thread gets each message as the one before it for the same
    /// destination is taken, a message's worth of the runtime's work before its receiver asks
    /// (more gained nothing measurable).
    fn looks_ahead(&self) -> usize {
        usize::from(self.foresight.is_some())
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<DuplexStream> {
        let service = self.services.lock().expect("services").get(&addr).cloned();
        if let Some(service) = service {
            return Ok(self.pipe(|server_end, peer| service(Box::new(server_end), peer)));
        }
        let Some(server) = self.servers.get(&addr.ip()).cloned() else {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("connection refused by {addr}"),
            ));
        };
        Ok(
            self.pipe(
                |server_end, peer| async move { server.accept(server_end, peer, addr).await },
            ),
        )
    }
}

impl VirtualNet {
    /// A new in-memory connection from the next client port: the server's end is handed to
    /// `serve`, which runs as a session of this network; the client's end is returned.
    fn pipe<F>(&self, serve: impl FnOnce(DuplexStream, SocketAddr) -> F) -> DuplexStream
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (client, server_end) = tokio::io::duplex(PIPE_BYTES);
        let port = self.next_port.fetch_add(1, Ordering::Relaxed).max(1024);
        let peer = SocketAddr::new(self.client_ip, port);
        self.sessions
            .lock()
            .expect("sessions")
            .spawn(serve(server_end, peer));
        client
    }
}
