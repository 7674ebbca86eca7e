//! The environment seam: everything a run takes from the world outside its logic. Live and
//! virtual runs differ only here (and in the runtime they run on).
//!
//! | what | [`LiveEnv`] | [`VirtualEnv`] |
//! |---|---|---|
//! | clock | the wall clock | the runtime's paused clock from 2026-01-01 |
//! | DNS | fake-dns on loopback UDP/TCP, asked through hickory-resolver | the zones answered in-process |
//! | auth lookups (mail-auth) | over DNS to fake-dns | mail-auth's caches filled from the zones |
//! | the fleet's listeners | one TCP listener per MX host address | in-memory pipes |
//! | connections | TCP from a source address | a pipe to the host at that address |
//! | durability | fsync per batch | fsync at flush and close |
//! | batch building | on blocking threads | inline (the paused clock must not move) |
//!
//! The event sink is made from the clock and the durability by [`crate::assemble`].

use crate::fleet::{Fleet, FleetServers};
use crate::virt::{VirtualNet, ZoneLookups};
use fake_dns::{DnsServer, FaultyZones};
use mailsim_events::{Clock, Durability, RuntimeClock, SystemClock};
use mailsim_mailbox::auth::Verifier;
use mailsim_mailbox::zone_answers::ZoneAnswers;
use mailsim_mta::dns::{HickoryResolver, Resolver};
use mailsim_mta::{Connector, TcpConnector};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The name the fleet's verifier gives itself in Authentication-Results.
const VERIFIER_HOST: &str = "fleet.mailsim.test";

/// The virtual clock starts at 2026-01-01T00:00:00Z, so a virtual run reads the same instants
/// every time.
pub const VIRTUAL_EPOCH_MS: u64 = 1_767_225_600_000;

/// A connector that can speak from another source address (a fleet host sending reports).
pub trait SourceConnector: Connector + Clone {
    fn speaking_from(&self, ip: IpAddr) -> Self;
}

impl SourceConnector for TcpConnector {
    fn speaking_from(&self, ip: IpAddr) -> Self {
        TcpConnector {
            source_ip: Some(ip),
        }
    }
}

impl SourceConnector for VirtualNet {
    fn speaking_from(&self, ip: IpAddr) -> Self {
        VirtualNet::from_ip(self, ip)
    }
}

/// What a run needs from its environment.
pub trait Env: Send + Sync + 'static {
    type Resolver: Resolver;
    type Connector: SourceConnector;
    fn clock(&self) -> Arc<dyn Clock>;
    /// How the event log and the spool force writes to disk.
    fn durability(&self) -> Durability;
    /// Build and sign campaign batches on blocking threads (else inline).
    fn blocking_threads(&self) -> bool;
    /// Answer the zones from now on, scenario time counting from `start_ms`; `port` is the
    /// DNS port where there is one (0: any).
    fn start_dns(
        &mut self,
        zones: Arc<FaultyZones>,
        start_ms: u64,
        port: u16,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The DNS server's address, where there is one.
    fn dns_addr(&self) -> Option<SocketAddr>;
    /// The MTA's (and the report sender's) route lookups.
    fn resolver(&self) -> anyhow::Result<Self::Resolver>;
    /// SPF, DKIM and DMARC verification for the fleet.
    fn verifier(&self) -> anyhow::Result<Verifier>;
    /// Serve the fleet (on `port`, 0: any); the port clients must connect to.
    fn start_fleet(
        &mut self,
        servers: &FleetServers,
        port: u16,
    ) -> impl Future<Output = anyhow::Result<u16>> + Send;
    /// Outbound connections from `source_ip`.
    fn connector(&self, source_ip: IpAddr) -> Self::Connector;
    /// Stop serving and wait for every session.
    fn shutdown(self) -> impl Future<Output = ()> + Send;
}

/// Loopback sockets and the wall clock.
#[derive(Default)]
pub struct LiveEnv {
    dns: Option<DnsServer>,
    dns_addr: Option<SocketAddr>,
    fleet: Option<Fleet>,
}

impl LiveEnv {
    /// An environment whose DNS is already served elsewhere (the MTA daemon).
    pub fn with_dns(addr: SocketAddr) -> Self {
        LiveEnv {
            dns_addr: Some(addr),
            ..LiveEnv::default()
        }
    }

    fn dns(&self) -> anyhow::Result<SocketAddr> {
        self.dns_addr
            .ok_or_else(|| anyhow::anyhow!("no DNS server started"))
    }
}

impl Env for LiveEnv {
    type Resolver = HickoryResolver;
    type Connector = TcpConnector;

    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(SystemClock)
    }

    fn durability(&self) -> Durability {
        Durability::EveryBatch
    }

    fn blocking_threads(&self) -> bool {
        true
    }

    async fn start_dns(
        &mut self,
        zones: Arc<FaultyZones>,
        start_ms: u64,
        port: u16,
    ) -> anyhow::Result<()> {
        let clock = self.clock();
        let dns = DnsServer::start_with_faults(
            zones,
            SocketAddr::new([127, 0, 0, 1].into(), port),
            Arc::new(move || clock.now_ms().saturating_sub(start_ms)),
        )
        .await?;
        self.dns_addr = Some(dns.addr());
        self.dns = Some(dns);
        Ok(())
    }

    fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }

    fn resolver(&self) -> anyhow::Result<HickoryResolver> {
        Ok(HickoryResolver::new(self.dns()?)?)
    }

    fn verifier(&self) -> anyhow::Result<Verifier> {
        Verifier::new(self.dns()?, VERIFIER_HOST).map_err(anyhow::Error::msg)
    }

    async fn start_fleet(&mut self, servers: &FleetServers, port: u16) -> anyhow::Result<u16> {
        let fleet = Fleet::start_on(servers, port)
            .await
            .map_err(anyhow::Error::msg)?;
        let port = fleet.port;
        self.fleet = Some(fleet);
        Ok(port)
    }

    fn connector(&self, source_ip: IpAddr) -> TcpConnector {
        TcpConnector {
            source_ip: Some(source_ip),
        }
    }

    async fn shutdown(self) {
        if let Some(fleet) = self.fleet {
            fleet.shutdown().await;
        }
        if let Some(dns) = self.dns {
            dns.shutdown().await;
        }
    }
}

/// A paused clock, in-memory connections and DNS answered in-process. Create it inside the
/// current-thread runtime with a paused clock that the run uses.
pub struct VirtualEnv {
    clock: Arc<dyn Clock>,
    zones: Option<(Arc<FaultyZones>, u64)>,
    net: Option<VirtualNet>,
}

impl VirtualEnv {
    pub fn new() -> Self {
        VirtualEnv {
            clock: Arc::new(RuntimeClock::new(VIRTUAL_EPOCH_MS)),
            zones: None,
            net: None,
        }
    }

    fn zones(&self) -> anyhow::Result<(Arc<FaultyZones>, u64)> {
        self.zones
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no zones to answer from"))
    }
}

impl Default for VirtualEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Env for VirtualEnv {
    type Resolver = ZoneLookups;
    type Connector = VirtualNet;

    fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    fn durability(&self) -> Durability {
        // A virtual run is replayed from its seed: its log is forced to disk once, at the end.
        Durability::OnFlush
    }

    fn blocking_threads(&self) -> bool {
        false
    }

    async fn start_dns(
        &mut self,
        zones: Arc<FaultyZones>,
        start_ms: u64,
        _port: u16,
    ) -> anyhow::Result<()> {
        self.zones = Some((zones, start_ms));
        Ok(())
    }

    fn dns_addr(&self) -> Option<SocketAddr> {
        None
    }

    fn resolver(&self) -> anyhow::Result<ZoneLookups> {
        let (zones, start_ms) = self.zones()?;
        Ok(ZoneLookups::new(zones, self.clock.clone(), start_ms))
    }

    fn verifier(&self) -> anyhow::Result<Verifier> {
        let (zones, start_ms) = self.zones()?;
        let answers = Arc::new(ZoneAnswers::new(zones, self.clock.clone(), start_ms));
        Verifier::in_process(answers, VERIFIER_HOST).map_err(anyhow::Error::msg)
    }

    async fn start_fleet(&mut self, servers: &FleetServers, _port: u16) -> anyhow::Result<u16> {
        self.net = Some(VirtualNet::new(servers, IpAddr::from([0, 0, 0, 0])));
        Ok(25)
    }

    fn connector(&self, source_ip: IpAddr) -> VirtualNet {
        match &self.net {
            Some(net) => net.from_ip(source_ip),
            // No fleet: a network where every connection is refused.
            None => VirtualNet::new(&FleetServers::default(), source_ip),
        }
    }

    async fn shutdown(self) {
        if let Some(net) = self.net {
            net.shutdown().await;
        }
    }
}
