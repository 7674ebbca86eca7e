//! One assembly of a run's parts: from a scenario's world and an [`Env`], the event log, DNS,
//! the fleet with its feedback loop (later reports, the sender's bounce processor, the
//! suppression list), and on demand the MTA and the report sender. `mailsim run` (live and
//! virtual), the external run (`--mta`) and the fleet daemon are short callers of
//! [`assemble`]; the MTA daemon, which has no world, builds its MTA with [`build_mta`].

use crate::env::{Env, SourceConnector};
use crate::feedback::{LaterQueue, Reporter};
use crate::fleet::{FleetContext, FleetServers, LaterReport};
use crate::scenario::{ListUnsubscribe, Scenario};
use crate::tlsrpt::TlsReports;
use crate::web::{SenderWeb, Tracking, Trust, http_service};
use crate::world::World;
use anyhow::Context;
use fake_dns::FaultyZones;
use mailsim_events::{Clock, Durability, Event, EventLog, EventSink};
use mailsim_mta::dkim::Signer;
use mailsim_mta::queue::RetryPolicy;
use mailsim_mta::spool::Spool;
use mailsim_mta::suppression::Suppression;
use mailsim_mta::{Mta, MtaConfig};
use mailsim_summary::{Drain, Summary, SummaryFold};
use std::net::IpAddr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedReceiver;

/// What to assemble, and where.
pub struct Plan {
    /// The run directory (event log, mailboxes).
    pub out_dir: PathBuf,
    /// Where the spool and the suppression list live.
    pub state_dir: PathBuf,
    /// `mode` of the `run_started` event: live, virtual, external, fleet.
    pub mode: &'static str,
    /// A run refuses a directory that holds a log; a daemon carries on with it.
    pub reopen_log: bool,
    pub dns_port: u16,
    pub fleet_port: u16,
    /// Serve the senders' own MX hosts (false: an MTA's `--mx` takes their address).
    pub sender_mx: bool,
    /// Certificates (DER) the recipients trust besides the run's own servers'.
    pub trusted: Vec<Vec<u8>>,
    /// Serve only this shard's domains (`mailsim fleet --shard`); none: every domain.
    pub shard: Option<crate::cluster::Shard>,
    /// Where each domain's MX hosts listen (a multi-node run's fleet networks); none: the
    /// scenario's own addresses.
    pub placement: Option<crate::cluster::FleetNets>,
}

/// The assembled parts of a run.
pub struct Assembly<E: Env> {
    pub env: E,
    pub world: Arc<World>,
    pub log: EventLog,
    pub events: EventSink,
    pub clock: Arc<dyn Clock>,
    /// The clock's reading at scenario time zero.
    pub start_ms: u64,
    pub fleet: FleetContext,
    /// Servers in the fleet (hosts that are up).
    pub fleet_servers: usize,
    /// The port the fleet's servers answer on.
    pub fleet_port: u16,
    pub suppression: Arc<Suppression>,
    pub later: LaterQueue,
    later_rx: Option<UnboundedReceiver<LaterReport>>,
    state_dir: PathBuf,
    /// The sender's tracking and unsubscribe server, when the campaign has HTML or
    /// List-Unsubscribe, and where its URLs point.
    pub web: Option<Arc<SenderWeb>>,
    pub tracking: Option<Tracking>,
    trust: Trust,
    /// What the MTA trusts: the run's authority.
    tls_roots: Vec<Vec<u8>>,
    /// Where `mta-sts.<domain>` answers HTTPS.
    sts_port: u16,
    /// The summary and TLS reports of a new log, folded on the log's writer thread as it
    /// writes each record (ready when the log is closed).
    folded: Option<std::sync::mpsc::Receiver<Folded>>,
}

/// A run's summary, how it drained and its TLS reports, folded from its records.
pub type Folded = (Summary, Drain, TlsReports);

/// The fold of a log as it is written: the same projection as reading the log back after the
/// run (every record the writer writes, in log order), done beside the run on the writer's
/// thread. Sent when the writer drops its observers (the log closed).
struct WriterFold {
    fold: Option<(SummaryFold, TlsReports)>,
    tx: std::sync::mpsc::Sender<Folded>,
}

impl Drop for WriterFold {
    fn drop(&mut self) {
        if let Some((summary, tls)) = self.fold.take() {
            let (summary, drain) = summary.finish_with_drain();
            let _ = self.tx.send((summary, drain, tls));
        }
    }
}

/// Fold everything `events` writes from now on (call it before the first record).
fn fold_as_written(events: &EventSink) -> std::sync::mpsc::Receiver<Folded> {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut state = WriterFold {
        fold: Some((SummaryFold::default(), TlsReports::default())),
        tx,
    };
    events.observe(Box::new(move |r| {
        if let Some((summary, tls)) = &mut state.fold {
            summary.push(r);
            tls.add(r);
        }
    }));
    rx
}

/// Assemble log, world, DNS and fleet for `scenario` in `env`.
pub async fn assemble<E: Env>(
    scenario: &Scenario,
    mut env: E,
    plan: &Plan,
) -> anyhow::Result<Assembly<E>> {
    let log_path = plan.out_dir.join("events.log");
    // A run directory holds one run: its spool and suppression list are state, not output.
    if !plan.reopen_log && log_path.exists() {
        anyhow::bail!(
            "{}: already holds a run (events.log); choose another --out or remove it",
            plan.out_dir.display()
        );
    }
    // Built first: a scenario that cannot be built leaves no directory behind.
    let world = match &plan.placement {
        Some(nets) => World::build_placed(scenario, &|d| nets.place(d)),
        None => World::build(scenario),
    }
    .map_err(anyhow::Error::msg)?;
    let clock = env.clock();
    let log = open_log(
        &plan.out_dir,
        clock.clone(),
        env.durability(),
        plan.reopen_log,
    )?;
    let events = log.sink();
    // A new log is folded as it is written; a log carried on with holds records from before.
    let folded = (!plan.reopen_log).then(|| fold_as_written(&events));
    let published = world.published(scenario);
    events.emit(Event::RunStarted {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        mode: plan.mode.into(),
        dmarc_records: published.dmarc,
        spf_records: published.spf,
        profiles: published.profiles,
    });
    let start_ms = clock.now_ms();
    let zones = Arc::new(FaultyZones::new(world.zones.clone(), world.faults.clone()));
    env.start_dns(zones, start_ms, plan.dns_port).await?;
    let verifier = env.verifier()?;
    std::fs::create_dir_all(&plan.state_dir)
        .with_context(|| format!("creating {}", plan.state_dir.display()))?;
    let suppression = Arc::new(Suppression::open(&plan.state_dir.join("suppression.log"))?);
    let (later, later_rx) = LaterQueue::new();
    let mut fleet = FleetContext::with_feedback(
        verifier,
        plan.out_dir.join("mailboxes"),
        events.clone(),
        clock.clone(),
        start_ms,
        later.clone(),
        suppression.clone(),
    );
    fleet.keep = scenario.store();
    // The run's own certificate authority: every fleet host's certificate and the MTA-STS
    // web servers' come from it, and the MTA trusts it (written out for other MTAs, --mta).
    let ca = Arc::new(mailsim_smtp::tls::Ca::new("mailsim run authority")?);
    std::fs::write(plan.out_dir.join("ca.pem"), ca.cert_pem())
        .with_context(|| format!("writing {}", plan.out_dir.join("ca.pem").display()))?;
    fleet.tls_ca = Some(ca.clone());
    fleet.foresight = env.foresight();
    if let Some(f) = &fleet.foresight {
        f.expect_helo(&scenario.mta.hostname);
    }
    if let Some(f) = &fleet.foresight
        && world
            .hosts
            .iter()
            .any(|h| h.behaviour.deliverability.is_some())
    {
        f.read_content();
    }
    let hosts: Vec<_> = world
        .hosts
        .iter()
        .filter(|h| plan.sender_mx || !h.sender_mx)
        .filter(|h| plan.shard.is_none_or(|s| s.owns(&h.domain)))
        .cloned()
        .collect();
    let servers = FleetServers::build(&hosts, &fleet).map_err(anyhow::Error::msg)?;
    if let Some(f) = &fleet.foresight {
        f.expect_refusals(servers.refusals());
    }
    let fleet_port = env.start_fleet(&servers, plan.fleet_port).await?;
    let mut sts_port = 443;
    if !world.sts.is_empty() {
        let names: Vec<String> = world
            .sts
            .iter()
            .map(|s| format!("mta-sts.{}", s.domain))
            .collect();
        let tls = ca.issue(&names, mailsim_smtp::tls::CertFault::None)?;
        let at = SocketAddr::from((crate::world::STS_IP, 0));
        let router = crate::web::sts_router(&world.sts);
        sts_port = env
            .serve(at, http_service(router, Some(tls.acceptor.clone())))
            .await?
            .port();
    }
    let c = scenario.campaign();
    let (mut web, mut tracking) = (None, None);
    let mut trusted = plan.trusted.clone();
    if c.html || c.list_unsubscribe != ListUnsubscribe::None {
        let secret = env.secret(&format!("sender-web:{}", scenario.seed));
        let w = SenderWeb::new(&secret, suppression.clone(), events.clone());
        let at = SocketAddr::from(([127, 0, 0, 1], 0));
        let http = env.serve(at, http_service(w.router(), None)).await?;
        let tls = mailsim_smtp::tls::Tls::self_signed(&["127.0.0.1".to_string()])?;
        let https = env
            .serve(at, http_service(w.router(), Some(tls.acceptor.clone())))
            .await?;
        trusted.push(tls.cert_der);
        tracking = Some(Tracking {
            tokens: w.tokens.clone(),
            http_base: format!("http://{http}"),
            https_base: format!("https://{https}"),
        });
        web = Some(w);
    }
    let trust = if trusted.is_empty() {
        Trust::default()
    } else {
        Trust::of(&trusted).map_err(anyhow::Error::msg)?
    };
    Ok(Assembly {
        env,
        world: Arc::new(world),
        log,
        events,
        clock,
        start_ms,
        fleet,
        fleet_servers: servers.servers.len(),
        fleet_port,
        suppression,
        later,
        later_rx: Some(later_rx),
        folded,
        state_dir: plan.state_dir.clone(),
        web,
        tracking,
        trust,
        tls_roots: vec![ca.cert_der()],
        sts_port,
    })
}

/// `dir/events.log`: carried on with (a torn tail cut) when `reopen` and it exists, else
/// created.
pub fn open_log(
    dir: &Path,
    clock: Arc<dyn Clock>,
    durability: Durability,
    reopen: bool,
) -> anyhow::Result<EventLog> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the run directory {}", dir.display()))?;
    let path = dir.join("events.log");
    if reopen && path.exists() {
        let (log, report) = EventLog::open(&path, clock)?;
        if report.cut_bytes > 0 {
            tracing::warn!(
                "{}: cut a torn tail of {} bytes",
                path.display(),
                report.cut_bytes
            );
        }
        return Ok(log);
    }
    Ok(EventLog::create_with(&path, clock, durability)?)
}

/// The report sender's connector factory: the environment's connections from a host's address.
pub type ConnectorFor<C> = Box<dyn Fn(IpAddr) -> C + Send + Sync>;

/// The fleet's report sender in an environment, and the queue it takes reports from.
pub type Reporting<E> = (
    Reporter<<E as Env>::Resolver, ConnectorFor<<E as Env>::Connector>>,
    UnboundedReceiver<LaterReport>,
);

impl<E: Env> Assembly<E> {
    /// The port the recipient domains' MTA-STS web servers answer HTTPS on (443 when none
    /// publishes a policy).
    pub fn sts_port(&self) -> u16 {
        self.sts_port
    }

    /// The scenario's MTA: its DKIM signers, its spool in the state directory, delivering to
    /// the fleet.
    pub fn mta(&self, scenario: &Scenario) -> anyhow::Result<Mta<E::Resolver, E::Connector>> {
        let mut cfg = mta_config(scenario, self.fleet_port);
        cfg.tls_client = mailsim_smtp::tls::ClientTls::new(&self.tls_roots)?;
        cfg.sts_port = self.sts_port;
        let mta = build_mta(
            &self.env,
            cfg,
            scenario.mta.ip.into(),
            &self.state_dir,
            signers(&self.world)?,
            self.suppression.clone(),
            self.events.clone(),
        )?;
        // A virtual run remembers the MTA's Ed25519 signatures as they are made.
        if let Some(f) = self.env.foresight() {
            mta.set_signature_witness(Arc::new(f.signatures_ahead(self.start_ms)));
        }
        Ok(mta)
    }

    /// The fleet's sender of later reports (DSNs and complaints), each from its host's address,
    /// and the queue it takes them from (once).
    pub fn reporter(&mut self) -> anyhow::Result<Reporting<E>> {
        let base = self.env.connector(IpAddr::from([0, 0, 0, 0]));
        let reporter = Reporter {
            resolver: Arc::new(self.env.resolver()?),
            connector_for: Box::new(move |ip| base.speaking_from(ip)) as ConnectorFor<E::Connector>,
            port: self.fleet_port,
            events: self.events.clone(),
            clock: self.clock.clone(),
            feedback_addresses: self.world.feedback_addresses(),
            trust: self.trust.clone(),
        };
        let rx = self
            .later_rx
            .take()
            .ok_or_else(|| anyhow::anyhow!("the report queue was taken already"))?;
        Ok((reporter, rx))
    }

    /// Stop the environment, write `run_finished` and close the log; the summary and TLS
    /// reports folded as the log was written (none for a log carried on with).
    pub async fn finish(self, reason: &str) -> anyhow::Result<Option<Folded>> {
        self.env.shutdown().await;
        self.events.emit(Event::RunFinished {
            reason: reason.into(),
        });
        drop(self.events);
        drop(self.fleet);
        self.log.close()?;
        Ok(self.folded.and_then(|rx| rx.try_recv().ok()))
    }
}

/// An MTA in `env`: routes through the environment's resolver, connects from `source_ip`,
/// spools under `state_dir` with the environment's durability.
pub fn build_mta<E: Env>(
    env: &E,
    cfg: MtaConfig,
    source_ip: IpAddr,
    state_dir: &Path,
    signers: Vec<Signer>,
    suppression: Arc<Suppression>,
    events: EventSink,
) -> anyhow::Result<Mta<E::Resolver, E::Connector>> {
    Ok(Mta::new(
        cfg,
        env.resolver()?,
        env.connector(source_ip),
        Spool::open_with(state_dir, env.durability())?,
        signers,
        suppression,
        events,
    ))
}

/// The DKIM signers of the scenario's senders, one per sender.
pub fn signers(world: &World) -> anyhow::Result<Vec<Signer>> {
    Ok(world
        .senders
        .iter()
        .map(|s| {
            Signer::from_pkcs8(
                &s.sender.domain,
                &s.sender.dkim_selector,
                &s.key.pkcs8_der,
                s.key.ed25519,
            )
        })
        .collect::<Result<Vec<_>, _>>()?)
}

fn mta_config(scenario: &Scenario, remote_port: u16) -> MtaConfig {
    let m = &scenario.mta;
    MtaConfig {
        hostname: m.hostname.clone(),
        remote_port,
        conns_per_domain_max: m.conns_per_domain_max,
        conns_per_domain_initial: m.conns_per_domain_initial,
        msgs_per_conn_max: m.msgs_per_conn_max,
        retry: RetryPolicy {
            retry_interval_s_min: m.retry_interval_s_min,
            retry_interval_s_max: m.retry_interval_s_max,
            lifetime_s: m.lifetime_s,
        },
        destination_backoff_s: m.destination_backoff_s,
        verp: m.verp,
        shaping: m.shaping_rules.clone().unwrap_or_default(),
        tls: m.tls,
        mta_sts: m.mta_sts,
        lanes: m.lanes.then_some(mailsim_mta::engine::Lanes {
            transactional_conns: m.transactional_conns,
        }),
        ..MtaConfig::default()
    }
}
