//! The virtual network: in-memory connections to the fleet's servers and DNS answered
//! in-process from the scenario's zones and fault timeline, both following the runtime's
//! (paused) clock. Used on a current-thread runtime, so one seed replays a run exactly.

use crate::fleet::{FleetServers, HostBackend};
use fake_dns::{FaultyZones, RecordData, RecordType, Resolution};
use mailsim_events::Clock;
use mailsim_mailbox::smtp::Server;
use mailsim_mta::Connector;
use mailsim_mta::dns::{Answer, Lookups};
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::DuplexStream;
use tokio::task::JoinSet;

/// Bytes buffered in each direction of an in-memory connection.
const PIPE_BYTES: usize = 256 * 1024;
/// How long a query to a server that never answers takes to fail (virtual seconds).
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Routing answered from the zones at scenario time.
pub struct ZoneLookups {
    zones: Arc<FaultyZones>,
    clock: Arc<dyn Clock>,
    start_ms: u64,
}

impl ZoneLookups {
    pub fn new(zones: Arc<FaultyZones>, clock: Arc<dyn Clock>, start_ms: u64) -> Self {
        ZoneLookups {
            zones,
            clock,
            start_ms,
        }
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Result<Vec<RecordData>, Answer<()>> {
        let elapsed = self.clock.now_ms().saturating_sub(self.start_ms);
        match self.zones.resolve(name, rtype, elapsed) {
            Resolution::Answer(r) => Ok(r),
            Resolution::NoData => Err(Answer::NoRecords),
            Resolution::NxDomain => Err(Answer::NxDomain),
            Resolution::ServFail => Err(Answer::Failed("SERVFAIL".into())),
            Resolution::Refused => Err(Answer::Failed("REFUSED".into())),
            Resolution::Timeout => {
                tokio::time::sleep(DNS_TIMEOUT).await;
                Err(Answer::Failed("query timed out".into()))
            }
        }
    }
}

fn no_records<T>(a: Answer<()>) -> Answer<T> {
    match a {
        Answer::Records(_) | Answer::NoRecords => Answer::NoRecords,
        Answer::NxDomain => Answer::NxDomain,
        Answer::Failed(e) => Answer::Failed(e),
    }
}

impl Lookups for ZoneLookups {
    async fn mx(&self, name: &str) -> Answer<(u16, String)> {
        match self.query(name, RecordType::MX).await {
            Ok(records) => Answer::Records(
                records
                    .into_iter()
                    .filter_map(|r| match r {
                        RecordData::Mx {
                            preference,
                            exchange,
                        } => Some((
                            preference,
                            exchange.trim_end_matches('.').to_ascii_lowercase(),
                        )),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(a) => no_records(a),
        }
    }

    async fn a(&self, name: &str) -> Answer<IpAddr> {
        match self.query(name, RecordType::A).await {
            Ok(records) => Answer::Records(
                records
                    .into_iter()
                    .filter_map(|r| match r {
                        RecordData::A(a) => Some(IpAddr::V4(a)),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(a) => no_records(a),
        }
    }
}
