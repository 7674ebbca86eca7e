//! The virtual network: in-memory connections to the fleet's servers, following the runtime's
//! (paused) clock. Used on a current-thread runtime, so one seed replays a run exactly.

use crate::fleet::{FleetServers, HostBackend};
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
        }
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

    async fn connect(&self, addr: SocketAddr) -> io::Result<DuplexStream> {
        let Some(server) = self.servers.get(&addr.ip()).cloned() else {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("connection refused by {addr}"),
            ));
        };
        let (client, server_end) = tokio::io::duplex(PIPE_BYTES);
        let port = self.next_port.fetch_add(1, Ordering::Relaxed).max(1024);
        let peer = SocketAddr::new(self.client_ip, port);
        self.sessions
            .lock()
            .expect("sessions")
            .spawn(async move { server.accept(server_end, peer, addr).await });
        Ok(client)
    }
}
