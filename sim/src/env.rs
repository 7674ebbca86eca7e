//! The environment seam: everything a run takes from the world outside its logic. Live and
//! virtual runs differ only here (and in the runtime they run on).
//!
//! | what | [`LiveEnv`] | [`VirtualEnv`] |
//! |---|---|---|
//! | clock | the wall clock | the runtime's paused clock from 2026-01-01, read as the runtime wakes from a park ([`VirtualClock`]) |
//! | DNS | fake-dns on loopback UDP/TCP, asked through hickory-resolver | the zones answered in-process |
//! | auth lookups (mail-auth) | over DNS to fake-dns | mail-auth's caches filled from the zones |
//! | the fleet's listeners | one TCP listener per MX host address | in-memory pipes |
//! | connections | TCP from a source address | a pipe to the host at that address |
//! | durability | fsync per batch | fsync at flush and close |
//! | batch building | on blocking threads | built and signed on threads of their own, up to two batches ahead (a pure function of the scenario and the send's second); each injected when fewer than 16,000 entries are on the ready lists or the runtime has nothing to run ([`Idle`]), so the sessions deliver while the next batches are signed and the paused clock does not move |
//! | the receivers' verification and content reads | when a message arrives | also started on another thread as the MTA sends it; the receiver takes the answers, waits for them, or does the work itself if the thread has not started on it (the same answers: [`crate::foresight`]) |
//!
//! The event sink is made from the clock and the durability by [`crate::assemble`].

use crate::fleet::{Fleet, FleetServers};
use crate::foresight::Foresight;
use crate::virt::VirtualNet;
use fake_dns::{DnsServer, FaultyZones, InProcess, RecordData, RecordType, Resolution};
use mailsim_events::{Clock, Durability, SystemClock};
use mailsim_mailbox::auth::Verifier;
use mailsim_mailbox::auth_dns::AuthDns;
use mailsim_mta::dns::{Answer, HickoryResolver, Lookups, Resolver};
use mailsim_mta::{Connector, TcpConnector};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The name the fleet's verifier gives itself in Authentication-Results.
pub(crate) const VERIFIER_HOST: &str = "fleet.mailsim.test";

/// The virtual clock starts at 2026-01-01T00:00:00Z, so a virtual run reads the same instants
/// every time.
pub const VIRTUAL_EPOCH_MS: u64 = 1_767_225_600_000;

/// Milliseconds since the scenario's start, on `clock`: the time the DNS fault timeline follows.
fn scenario_time(clock: Arc<dyn Clock>, start_ms: u64) -> fake_dns::Elapsed {
    Arc::new(move || clock.now_ms().saturating_sub(start_ms))
}

/// When a current-thread runtime has nothing left to run: its `on_thread_park` hook calls
/// [`Idle::parked`], which wakes the tasks waiting in [`Idle::wait`] instead of letting the
/// runtime park (and a paused clock move on); no wake-up is kept for a later waiter. The point
/// depends on the runtime's tasks alone, so a virtual run does the same thing there every time.
///
/// Its `on_thread_unpark` hook calls [`Idle::unparked`]: a paused clock moves only while the
/// runtime parks (tokio advances it there, to the next timer), so the clock read then is the
/// clock until the next park, and [`VirtualClock`] answers from that reading.
///
/// Only [`virtual_runtime`] makes one: an `Idle` whose hooks no runtime calls would leave a
/// [`VirtualClock`] at its start.
#[derive(Clone)]
pub struct Idle {
    waiters: Arc<tokio::sync::Notify>,
    woken: Arc<Woken>,
}

/// The paused clock as the runtime last woke to it.
#[derive(Default)]
struct Woken {
    /// Set by the [`VirtualClock`] made for the runtime (read inside it).
    start: std::sync::OnceLock<tokio::time::Instant>,
    elapsed_ms: std::sync::atomic::AtomicU64,
}

impl Idle {
    /// The runtime is about to park: wake the waiters, if any.
    pub fn parked(&self) {
        self.waiters.notify_waiters();
    }

    /// The runtime woke from a park (the clock may have moved): read it.
    pub fn unparked(&self) {
        if let Some(start) = self.woken.start.get() {
            let ms = start.elapsed().as_millis() as u64;
            self.woken
                .elapsed_ms
                .store(ms, std::sync::atomic::Ordering::Release);
        }
    }

    /// Return when the runtime next runs out of work.
    pub fn wait(&self) -> tokio::sync::futures::Notified<'_> {
        self.waiters.notified()
    }
}

/// Virtual time from `epoch_ms`: the paused clock of the runtime [`virtual_runtime`] made, as
/// it was when the runtime last woke from a park. The same instants as
/// [`mailsim_events::RuntimeClock`] (which reads the clock, a lock and the runtime's context, at every call:
/// a twenty-fifth of a million-message run's critical thread), and the same from any thread.
pub struct VirtualClock {
    epoch_ms: u64,
    woken: Arc<Woken>,
}

impl VirtualClock {
    /// The clock of `idle`'s runtime, counted from now; inside that runtime. An error when
    /// one was made for it already (its count started then).
    pub fn start(idle: &Idle, epoch_ms: u64) -> anyhow::Result<VirtualClock> {
        idle.woken
            .start
            .set(tokio::time::Instant::now())
            .map_err(|_| anyhow::anyhow!("a virtual clock was made for this runtime already"))?;
        // elapsed_ms is still 0: `unparked` reads nothing before the start is set.
        Ok(VirtualClock {
            epoch_ms,
            woken: idle.woken.clone(),
        })
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> u64 {
        self.epoch_ms
            + self
                .woken
                .elapsed_ms
                .load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A connector that can speak from another source address (a fleet host sending reports).
/// A byte stream a server is handed (a TCP connection or an in-memory pipe).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

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
    /// Build and sign campaign batches on blocking threads (else built and signed ahead on a
    /// thread of their own, and injected by the run's own task).
    fn blocking_threads(&self) -> bool;
    /// Where the runtime tells when it runs out of work (virtual runs).
    fn idle(&self) -> Option<&Idle> {
        None
    }
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
    /// Where the receivers' work on a message may be done ahead (virtual runs).
    fn foresight(&self) -> Option<Arc<Foresight>> {
        None
    }
    /// Serve the fleet (on `port`, 0: any); the port clients must connect to.
    fn start_fleet(
        &mut self,
        servers: &FleetServers,
        port: u16,
    ) -> impl Future<Output = anyhow::Result<u16>> + Send;
    /// Outbound connections from `source_ip`.
    fn connector(&self, source_ip: IpAddr) -> Self::Connector;
    /// Stop serving and wait for every session.
    /// Serve another server (the sender's web) at `addr` (port 0: any); the address it
    /// answers on.
    fn serve(
        &mut self,
        addr: SocketAddr,
        service: crate::web::StreamService,
    ) -> impl Future<Output = anyhow::Result<SocketAddr>> + Send;
    /// A secret of 32 bytes for `label`: random in live mode, derived from the label in
    /// virtual mode (a run replays exactly).
    fn secret(&self, label: &str) -> [u8; 32];
    fn shutdown(self) -> impl Future<Output = ()> + Send;
}

/// Loopback sockets and the wall clock.
#[derive(Default)]
pub struct LiveEnv {
    dns: Option<DnsServer>,
    dns_addr: Option<SocketAddr>,
    fleet: Option<Fleet>,
    services: tokio::task::JoinSet<()>,
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
        let dns = DnsServer::start_with_faults(
            zones,
            SocketAddr::new([127, 0, 0, 1].into(), port),
            scenario_time(self.clock(), start_ms),
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
        Ok(HickoryResolver::new(fake_dns::resolver_for(self.dns()?))?)
    }

    fn verifier(&self) -> anyhow::Result<Verifier> {
        Ok(
            Verifier::new(fake_dns::resolver_for(self.dns()?), VERIFIER_HOST)
                .map_err(anyhow::Error::msg)?
                .with_clock(self.clock()),
        )
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

    async fn serve(
        &mut self,
        addr: SocketAddr,
        service: crate::web::StreamService,
    ) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
        let bound = listener.local_addr()?;
        self.services.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            connections.spawn(service(Box::new(stream), peer));
                        }
                        Err(e) => tracing::debug!("accepting on {bound}: {e}"),
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(bound)
    }

    fn secret(&self, _label: &str) -> [u8; 32] {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .expect("the system's random source");
        key
    }

    async fn shutdown(mut self) {
        self.services.shutdown().await;
        if let Some(fleet) = self.fleet {
            fleet.shutdown().await;
        }
        if let Some(dns) = self.dns {
            dns.shutdown().await;
        }
    }
}

/// The runtime a virtual run runs on: one thread, the clock paused (it moves only when no task
/// can run), and its `on_thread_park` and `on_thread_unpark` hooks calling the [`Idle`]
/// returned, for the [`VirtualEnv`] made inside it.
pub fn virtual_runtime() -> std::io::Result<(tokio::runtime::Runtime, Idle)> {
    let idle = Idle {
        waiters: Arc::default(),
        woken: Arc::default(),
    };
    let (park, unpark) = (idle.clone(), idle.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .on_thread_park(move || park.parked())
        .on_thread_unpark(move || unpark.unparked())
        .build()?;
    Ok((runtime, idle))
}

/// A paused clock, in-memory connections and DNS answered in-process. Create it inside the
/// runtime [`virtual_runtime`] made.
pub struct VirtualEnv {
    clock: Arc<dyn Clock>,
    zones: Option<Zones>,
    net: Option<VirtualNet>,
    foresight: Option<Arc<Foresight>>,
    /// Start [`Foresight`] with the DNS (`MAILSIM_FORESIGHT=0` turns it off: the peer a
    /// benchmark measures it against, and the test that it changes nothing recorded).
    foresee: bool,
    /// Called by the runtime's park and unpark hooks; also the clock's reading.
    idle: Idle,
}

impl VirtualEnv {
    /// `idle` is the one [`virtual_runtime`] returned with the runtime (a run would otherwise
    /// let the clock move while a send goes in). One per runtime: its clock counts from here
    /// (an error for a second one).
    pub fn new(idle: Idle) -> anyhow::Result<Self> {
        let clock = Arc::new(VirtualClock::start(&idle, VIRTUAL_EPOCH_MS)?);
        Ok(VirtualEnv {
            clock,
            zones: None,
            net: None,
            foresight: None,
            foresee: std::env::var("MAILSIM_FORESIGHT").map_or(true, |v| v != "0"),
            idle,
        })
    }

    fn zones(&self) -> anyhow::Result<Zones> {
        self.zones
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no zones to answer from"))
    }
}

impl Env for VirtualEnv {
    type Resolver = Zones;
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

    fn idle(&self) -> Option<&Idle> {
        Some(&self.idle)
    }

    async fn start_dns(
        &mut self,
        zones: Arc<FaultyZones>,
        start_ms: u64,
        _port: u16,
    ) -> anyhow::Result<()> {
        let elapsed = scenario_time(self.clock.clone(), start_ms);
        if self.foresee {
            // Without it a run does the same work on one thread.
            match Foresight::start(zones.clone(), elapsed.clone(), self.clock.clone()) {
                Ok(f) => self.foresight = Some(Arc::new(f)),
                Err(e) => tracing::warn!("receivers' work is not done ahead: {e:#}"),
            }
        }
        self.zones = Some(Zones(Arc::new(InProcess::new(zones, elapsed))));
        Ok(())
    }

    fn dns_addr(&self) -> Option<SocketAddr> {
        None
    }

    fn resolver(&self) -> anyhow::Result<Zones> {
        self.zones()
    }

    fn verifier(&self) -> anyhow::Result<Verifier> {
        let verifier = Verifier::in_process(Arc::new(self.zones()?), VERIFIER_HOST)
            .map_err(anyhow::Error::msg)?
            .with_clock(self.clock());
        Ok(match &self.foresight {
            Some(f) => verifier.with_memo(f.signatures()),
            None => verifier,
        })
    }

    fn foresight(&self) -> Option<Arc<Foresight>> {
        self.foresight.clone()
    }

    async fn start_fleet(&mut self, servers: &FleetServers, _port: u16) -> anyhow::Result<u16> {
        let net = VirtualNet::new(servers, IpAddr::from([0, 0, 0, 0]));
        self.net = Some(match &self.foresight {
            Some(f) => net.with_foresight(f.clone()),
            None => net,
        });
        Ok(25)
    }

    fn connector(&self, source_ip: IpAddr) -> VirtualNet {
        match &self.net {
            Some(net) => net.from_ip(source_ip),
            // No fleet: a network where every connection is refused.
            None => VirtualNet::new(&FleetServers::default(), source_ip),
        }
    }

    async fn serve(
        &mut self,
        addr: SocketAddr,
        service: crate::web::StreamService,
    ) -> anyhow::Result<SocketAddr> {
        let net = self
            .net
            .get_or_insert_with(|| VirtualNet::new(&FleetServers::default(), addr.ip()));
        Ok(net.serve(addr, service))
    }

    fn secret(&self, label: &str) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, label.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    async fn shutdown(self) {
        if let Some(net) = self.net {
            net.shutdown().await;
        }
        if let Some(f) = self.foresight {
            let hits = f.hits();
            let (asked, taken) = f.signatures().asked_and_taken();
            tracing::debug!(
                ready = hits.ready,
                waited = hits.waited,
                taken_back = hits.taken_back,
                inline = hits.inline,
                dropped = hits.dropped,
                refused = hits.refused,
                signatures_asked = asked,
                signatures_ahead = taken,
                "receivers' work done ahead"
            );
            f.stop();
        }
    }
}

/// fake-dns's in-process zones, injected as the MTA's routing and the verifier's DNS.
#[derive(Clone)]
pub struct Zones(pub(crate) Arc<InProcess>);

impl Zones {
    async fn query(&self, name: &str, rtype: RecordType) -> Result<Vec<RecordData>, Answer<()>> {
        match self.0.query(name, rtype).await {
            Resolution::Answer(r) => Ok(r),
            Resolution::NoData => Err(Answer::NoRecords),
            Resolution::NxDomain => Err(Answer::NxDomain),
            Resolution::ServFail => Err(Answer::Failed("SERVFAIL".into())),
            Resolution::Refused => Err(Answer::Failed("REFUSED".into())),
            Resolution::Timeout => Err(Answer::Failed("query timed out".into())),
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

impl Lookups for Zones {
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

    async fn txt(&self, name: &str) -> Answer<String> {
        match self.query(name, RecordType::TXT).await {
            Ok(records) => Answer::Records(fake_dns::txt_texts(records)),
            Err(a) => no_records(a),
        }
    }
}

impl AuthDns for Zones {
    fn names(&self) -> &std::collections::HashSet<Box<str>> {
        self.0.names()
    }
    fn reverse(&self) -> &std::collections::HashMap<IpAddr, String> {
        self.0.reverse()
    }
    fn txt(&self, name: Option<&str>) -> mail_auth::Txt {
        self.0.txt(name)
    }
    fn mx(&self, name: Option<&str>) -> mail_auth::RecordSet<mail_auth::MX> {
        self.0.mx(name)
    }
    fn ipv4(&self, name: Option<&str>) -> mail_auth::RecordSet<std::net::Ipv4Addr> {
        self.0.ipv4(name)
    }
    fn ipv6(&self, name: Option<&str>) -> mail_auth::RecordSet<std::net::Ipv6Addr> {
        self.0.ipv6(name)
    }
    fn spf_query(&self, name: &str, rr: mailsim_mailbox::spf::Rr) -> mailsim_mailbox::spf::Answer {
        use fake_dns::{RecordData, Resolution};
        use mailsim_mailbox::spf::Answer;
        let rtype = rr.record_type();
        match self.0.resolve(name, rtype) {
            Resolution::Answer(records) => {
                let mut mx: Vec<(u16, String)> = Vec::new();
                let mut out: Vec<String> = Vec::new();
                for r in records {
                    match r {
                        RecordData::A(a) => out.push(a.to_string()),
                        RecordData::Aaaa(a) => out.push(a.to_string()),
                        RecordData::Mx {
                            preference,
                            exchange,
                        } => mx.push((preference, fake_dns::normalize(&exchange))),
                        RecordData::Txt(t) => out.push(t),
                        RecordData::Ptr(p) => out.push(fake_dns::normalize(&p)),
                        _ => {}
                    }
                }
                mx.sort();
                out.extend(mx.into_iter().map(|(_, n)| n));
                Answer::Records(out)
            }
            Resolution::NoData | Resolution::NxDomain | Resolution::Refused => Answer::Void,
            Resolution::ServFail => Answer::Temp("SERVFAIL".into()),
            Resolution::Timeout => Answer::Temp("query timed out".into()),
        }
    }
    fn ptr(&self, name: Option<&str>) -> mail_auth::RecordSet<Box<str>> {
        self.0.ptr(name)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// [`Idle::wait`] returns once every other task has run as far as it can at this instant:
    /// the busy task has finished its steps, the sleeping one still sleeps, and the paused
    /// clock has not moved. Without a waiter, the clock moves on as usual.
    #[test]
    fn idle_is_when_nothing_else_can_run_and_before_the_clock_moves() {
        let (rt, idle) = super::virtual_runtime().unwrap();
        rt.block_on(async {
            let start = tokio::time::Instant::now();
            let steps = Arc::new(AtomicU32::new(0));
            let woke = Arc::new(AtomicU32::new(0));
            let busy = {
                let steps = steps.clone();
                tokio::spawn(async move {
                    for _ in 0..1000 {
                        steps.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                })
            };
            let sleeper = {
                let woke = woke.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    woke.fetch_add(1, Ordering::Relaxed);
                })
            };
            idle.wait().await;
            assert_eq!(steps.load(Ordering::Relaxed), 1000);
            assert!(busy.is_finished());
            assert_eq!(woke.load(Ordering::Relaxed), 0);
            assert_eq!(start.elapsed(), Duration::ZERO);
            // Nobody waits now: the runtime parks and the paused clock moves to the sleeper.
            sleeper.await.unwrap();
            assert_eq!(woke.load(Ordering::Relaxed), 1);
            assert_eq!(start.elapsed(), Duration::from_secs(10));
        });
    }

    /// [`super::VirtualClock`] answers what the runtime's clock reads, after sleeps, timeouts,
    /// yields and wake-ups from other tasks, and answers the same on another thread; a second
    /// one for the same runtime is refused.
    #[test]
    fn the_clock_read_at_wake_up_is_the_runtimes_clock() {
        use mailsim_events::{Clock, RuntimeClock};
        let (rt, idle) = super::virtual_runtime().unwrap();
        rt.block_on(async {
            let epoch = super::VIRTUAL_EPOCH_MS;
            let cached = Arc::new(super::VirtualClock::start(&idle, epoch).unwrap());
            assert!(super::VirtualClock::start(&idle, epoch).is_err());
            let read = RuntimeClock::new(epoch);
            assert_eq!(cached.now_ms(), read.now_ms());
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..20u64 {
                let (cached, read) = (cached.clone(), read);
                tasks.spawn(async move {
                    for j in 0..5u64 {
                        tokio::time::sleep(Duration::from_millis(137 * i + 1009 * j)).await;
                        assert_eq!(cached.now_ms(), read.now_ms());
                        tokio::task::yield_now().await;
                        assert_eq!(cached.now_ms(), read.now_ms());
                        let never = std::future::pending::<()>();
                        let _ = tokio::time::timeout(Duration::from_millis(j + 1), never).await;
                        assert_eq!(cached.now_ms(), read.now_ms());
                    }
                });
            }
            while tasks.join_next().await.is_some() {
                assert_eq!(cached.now_ms(), read.now_ms());
            }
            let there = cached.clone();
            let elsewhere = std::thread::spawn(move || there.now_ms()).join().unwrap();
            assert_eq!(elsewhere, read.now_ms());
            assert!(read.now_ms() > epoch + 19 * 137 + 4 * 1009);
        });
    }
}
