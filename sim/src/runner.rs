//! Runs a scenario in live mode: fake-dns, the fleet and the MTA on loopback sockets, the
//! campaign injected, until every message is final or the time limit passes. Writes the event
//! log and the summary folded from it.

use crate::feedback::{LaterQueue, Reporter};
use crate::fleet::{Fleet, FleetContext, FleetServers, LaterReport};
use crate::scenario::{Mode, Scenario};
use crate::virt::{VirtualNet, ZoneLookups};
use crate::world::{World, mix};
use anyhow::Context;
use fake_dns::{DnsServer, FaultyZones};
use mail_builder::MessageBuilder;
use mailsim_events::{
    Clock, Durability, Event, EventLog, EventSink, LogReader, RuntimeClock, SystemClock,
};
use mailsim_mailbox::auth::Verifier;
use mailsim_mailbox::zone_answers::ZoneAnswers;
use mailsim_mta::dkim::Signer;
use mailsim_mta::dns::{HickoryResolver, Resolver};
use mailsim_mta::queue::RetryPolicy;
use mailsim_mta::spool::Spool;
use mailsim_mta::suppression::Suppression;
use mailsim_mta::{Connector, Mta, MtaConfig, OutboundMessage, TcpConnector};
use mailsim_reports::{Drain, Summary};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Messages built, signed and spooled per injection batch.
const INJECT_BATCH: usize = 1000;

pub struct RunOptions {
    pub out_dir: PathBuf,
    pub progress: bool,
}

/// File names inside a run directory.
pub fn events_path(dir: &Path) -> PathBuf {
    dir.join("events.log")
}

pub fn summary_path(dir: &Path) -> PathBuf {
    dir.join("summary.json")
}

/// Build the campaign's messages `range` deterministically from the seed.
pub fn build_messages(
    scenario: &Scenario,
    world: &World,
    range: std::ops::Range<u64>,
    send: u32,
    date_s: i64,
) -> Vec<OutboundMessage> {
    let campaign = scenario.campaign();
    let domains: Vec<(&str, f64)> = scenario
        .domains()
        .map(|d| (d.name.as_str(), d.weight))
        .collect();
    let total: f64 = domains.iter().map(|d| d.1).sum();
    let sender = &world.senders[0].sender;
    let from = sender.from_address();
    let filler =
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n";
    range
        .map(|i| {
            let mut rng = ChaCha20Rng::seed_from_u64(mix(scenario.seed, &format!("rcpt:{i}")));
            let mut pick = rng.gen_range(0.0..total);
            let mut domain = domains[0].0;
            for (d, w) in &domains {
                if pick < *w {
                    domain = d;
                    break;
                }
                pick -= w;
            }
            let rcpt = format!("user{i}@{domain}");
            let message_id = if send == 0 {
                format!("{i}.{}@{}", scenario.seed, sender.domain)
            } else {
                format!("{i}.{}.{send}@{}", scenario.seed, sender.domain)
            };
            let mut body = format!("Hello user{i},\r\n\r\n");
            while body.len() + 600 < campaign.size_bytes {
                body.push_str(filler);
            }
            let bytes = MessageBuilder::new()
                .from(("Newsletter", from.as_str()))
                .to(rcpt.as_str())
                .subject(campaign.subject.as_str())
                .message_id(message_id.as_str())
                .date(date_s)
                .text_body(body)
                .write_to_vec()
                .unwrap_or_default();
            OutboundMessage {
                from: from.clone(),
                rcpts: vec![rcpt],
                message_id: format!("<{message_id}>"),
                body: bytes,
            }
        })
        .collect()
}

/// The virtual clock starts at 2026-01-01T00:00:00Z, so a virtual run reads the same instants
/// every time.
pub const VIRTUAL_EPOCH_MS: u64 = 1_767_225_600_000;

/// Run a scenario on the runtime its mode needs: a multi-thread runtime on the wall clock for
/// live mode, a current-thread runtime with a paused clock for virtual mode.
pub fn run_scenario(scenario: &Scenario, opts: &RunOptions) -> anyhow::Result<Summary> {
    match scenario.mode {
        Mode::Live => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run_live(scenario, opts)),
        Mode::Virtual => tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()?
            .block_on(run_virtual(scenario, opts)),
    }
}

/// Another MTA under test: mailsim submits the campaign to it by SMTP and its deliveries are
/// measured on the fleet's side.
pub struct ExternalMta {
    pub submission: SocketAddr,
    /// The fleet's SMTP port (0: any); the other MTA must route every scenario domain there.
    pub fleet_port: u16,
    /// The DNS server's port (0: any).
    pub dns_port: u16,
    pub connections: usize,
}

/// Run a scenario live against another MTA: fake-dns and the fleet as usual, the campaign
/// submitted by SMTP to `mta`, until every acknowledged message is stored by the fleet (or the
/// time limit passes). The log holds `injected` at each acknowledgement and the fleet's side
/// (sessions, verdicts, `stored`); the run is marked `mode: "external"`, and its summary counts
/// a stored copy as delivered.
pub fn run_external(
    scenario: &Scenario,
    opts: &RunOptions,
    mta: &ExternalMta,
) -> anyhow::Result<Summary> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_external_async(scenario, opts, mta))
}

async fn run_external_async(
    scenario: &Scenario,
    opts: &RunOptions,
    mta: &ExternalMta,
) -> anyhow::Result<Summary> {
    let setup = setup(scenario, opts, Arc::new(SystemClock), true).await?;
    let zones = Arc::new(FaultyZones::new(
        setup.world.zones.clone(),
        setup.world.faults.clone(),
    ));
    let (clock, start_ms) = (setup.clock.clone(), setup.start_ms);
    let dns = DnsServer::start_with_faults(
        zones,
        SocketAddr::new([127, 0, 0, 1].into(), mta.dns_port),
        Arc::new(move || clock.now_ms().saturating_sub(start_ms)),
    )
    .await?;
    let verifier = Verifier::new(dns.addr(), "fleet.mailsim.test").map_err(anyhow::Error::msg)?;
    let fb = feedback(opts)?;
    let ctx = fleet_context(&setup, opts, verifier, &fb);
    let servers = FleetServers::build(&setup.world.hosts, &ctx);
    let fleet = Fleet::start_on(&servers, mta.fleet_port)
        .await
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "mailsim: fleet on port {} (hosts: {}), dns on {}",
        fleet.port,
        setup
            .world
            .hosts
            .iter()
            .filter(|h| !h.down)
            .map(|h| format!("{}={}", h.name, h.ip))
            .collect::<Vec<_>>()
            .join(" "),
        dns.addr()
    );
    let messages = crate::send::campaign(scenario, &setup.world);
    let expected = messages.len() as u64;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let sink = setup.events.clone();
    let on_ack: crate::send::OnAck = Arc::new(move |m: &OutboundMessage| {
        for rcpt in &m.rcpts {
            sink.emit(Event::Injected {
                msg: next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                message_id: m.message_id.clone(),
                from: m.from.clone(),
                rcpt: rcpt.clone(),
                domain: rcpt
                    .rsplit_once('@')
                    .map_or_else(String::new, |(_, d)| d.to_ascii_lowercase()),
                size: m.body.len() as u64,
            });
        }
    });
    let send_opts = crate::send::SendOptions {
        to: mta.submission,
        connections: mta.connections,
        acked_path: None,
        stall_max: Duration::from_secs(60),
        on_ack: Some(on_ack),
    };
    let report = crate::send::send(messages, &send_opts).await?;
    // Wait for the fleet to have stored every acknowledged message.
    let time_limit = tokio::time::sleep(Duration::from_secs(scenario.mta.run_time_s_max));
    tokio::pin!(time_limit);
    let reason = loop {
        if ctx.stored.load(std::sync::atomic::Ordering::Relaxed) >= report.acked {
            break "drained";
        }
        tokio::select! {
            biased;
            _ = &mut time_limit => break "time limit",
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    };
    eprintln!(
        "mailsim: {} of {expected} messages acknowledged by {}",
        report.acked, mta.submission
    );
    fleet.shutdown().await;
    dns.shutdown().await;
    finish(setup, reason, opts)
}

/// What both modes set up the same way.
struct Setup {
    world: Arc<World>,
    log: EventLog,
    events: EventSink,
    clock: Arc<dyn Clock>,
    start_ms: u64,
}

async fn setup(
    scenario: &Scenario,
    opts: &RunOptions,
    clock: Arc<dyn Clock>,
    external: bool,
) -> anyhow::Result<Setup> {
    // A run directory holds one run: its spool and suppression list are state, not output.
    if events_path(&opts.out_dir).exists() {
        anyhow::bail!(
            "{}: already holds a run (events.log); choose another --out or remove it",
            opts.out_dir.display()
        );
    }
    // Built first: a scenario that cannot be built leaves no directory behind.
    let world = World::build(scenario).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating the run directory {}", opts.out_dir.display()))?;
    // A virtual run is replayed from its seed: its log is forced to disk once, at the end.
    let durability = match scenario.mode {
        Mode::Live => Durability::EveryBatch,
        Mode::Virtual => Durability::OnFlush,
    };
    let log = EventLog::create_with(&events_path(&opts.out_dir), clock.clone(), durability)?;
    let events = log.sink();
    events.emit(Event::RunStarted {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        mode: match (external, scenario.mode) {
            (true, _) => "external".into(),
            (false, Mode::Live) => "live".into(),
            (false, Mode::Virtual) => "virtual".into(),
        },
    });
    let start_ms = clock.now_ms();
    Ok(Setup {
        world: Arc::new(world),
        log,
        events,
        clock,
        start_ms,
    })
}

fn signers(world: &World) -> anyhow::Result<Vec<Signer>> {
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
        msgs_per_conn_max: m.msgs_per_conn_max,
        retry: RetryPolicy {
            retry_interval_s_min: m.retry_interval_s_min,
            retry_interval_s_max: m.retry_interval_s_max,
            lifetime_s: m.lifetime_s,
        },
        destination_backoff_s: m.destination_backoff_s,
        verp: m.verp,
        ..MtaConfig::default()
    }
}

/// The campaign's feedback loop: the suppression list, the queue of the receivers' later
/// reports and the sender's bounce processor.
struct Feedback {
    suppression: Arc<Suppression>,
    later: LaterQueue,
    later_rx: tokio::sync::mpsc::UnboundedReceiver<LaterReport>,
}

fn feedback(opts: &RunOptions) -> anyhow::Result<Feedback> {
    let dir = opts.out_dir.join("spool");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (later, later_rx) = LaterQueue::new();
    Ok(Feedback {
        suppression: Arc::new(Suppression::open(&dir.join("suppression.log"))?),
        later,
        later_rx,
    })
}

fn fleet_context(
    setup: &Setup,
    opts: &RunOptions,
    verifier: Verifier,
    fb: &Feedback,
) -> FleetContext {
    FleetContext::with_feedback(
        verifier,
        opts.out_dir.join("mailboxes"),
        setup.events.clone(),
        setup.clock.clone(),
        setup.start_ms,
        fb.later.clone(),
        fb.suppression.clone(),
    )
}

async fn run_live(scenario: &Scenario, opts: &RunOptions) -> anyhow::Result<Summary> {
    let setup = setup(scenario, opts, Arc::new(SystemClock), false).await?;
    let zones = Arc::new(FaultyZones::new(
        setup.world.zones.clone(),
        setup.world.faults.clone(),
    ));
    let (clock, start_ms) = (setup.clock.clone(), setup.start_ms);
    let dns = DnsServer::start_with_faults(
        zones,
        "127.0.0.1:0".parse::<SocketAddr>()?,
        Arc::new(move || clock.now_ms().saturating_sub(start_ms)),
    )
    .await?;
    let verifier = Verifier::new(dns.addr(), "fleet.mailsim.test").map_err(anyhow::Error::msg)?;
    let fb = feedback(opts)?;
    let servers = FleetServers::build(
        &setup.world.hosts,
        &fleet_context(&setup, opts, verifier, &fb),
    );
    let fleet = Fleet::start(&servers).await.map_err(anyhow::Error::msg)?;
    let mta = Mta::new(
        mta_config(scenario, fleet.port),
        HickoryResolver::new(dns.addr())?,
        TcpConnector {
            source_ip: Some(scenario.mta.ip.into()),
        },
        Spool::open(&opts.out_dir.join("spool"))?,
        signers(&setup.world)?,
        fb.suppression.clone(),
        setup.events.clone(),
    );
    let reporter = Reporter {
        resolver: Arc::new(HickoryResolver::new(dns.addr())?),
        connector_for: |ip| TcpConnector {
            source_ip: Some(ip),
        },
        port: fleet.port,
        events: setup.events.clone(),
        clock: setup.clock.clone(),
        feedback_addresses: setup.world.feedback_addresses(),
    };
    let reason = drive(scenario, &setup, &mta, opts, true, reporter, fb).await?;
    fleet.shutdown().await;
    dns.shutdown().await;
    finish(setup, reason, opts)
}

async fn run_virtual(scenario: &Scenario, opts: &RunOptions) -> anyhow::Result<Summary> {
    let clock: Arc<dyn Clock> = Arc::new(RuntimeClock::new(VIRTUAL_EPOCH_MS));
    let setup = setup(scenario, opts, clock, false).await?;
    let zones = Arc::new(FaultyZones::new(
        setup.world.zones.clone(),
        setup.world.faults.clone(),
    ));
    let answers = Arc::new(ZoneAnswers::new(
        zones.clone(),
        setup.clock.clone(),
        setup.start_ms,
    ));
    let verifier =
        Verifier::in_process(answers, "fleet.mailsim.test").map_err(anyhow::Error::msg)?;
    let fb = feedback(opts)?;
    let servers = FleetServers::build(
        &setup.world.hosts,
        &fleet_context(&setup, opts, verifier, &fb),
    );
    let net = VirtualNet::new(&servers, scenario.mta.ip.into());
    let mta = Mta::new(
        mta_config(scenario, 25),
        ZoneLookups::new(zones.clone(), setup.clock.clone(), setup.start_ms),
        net.clone(),
        Spool::open_with(&opts.out_dir.join("spool"), Durability::OnFlush)?,
        signers(&setup.world)?,
        fb.suppression.clone(),
        setup.events.clone(),
    );
    let reporter_net = net.clone();
    let reporter = Reporter {
        resolver: Arc::new(ZoneLookups::new(zones, setup.clock.clone(), setup.start_ms)),
        connector_for: move |ip| reporter_net.from_ip(ip),
        port: 25,
        events: setup.events.clone(),
        clock: setup.clock.clone(),
        feedback_addresses: setup.world.feedback_addresses(),
    };
    let reason = drive(scenario, &setup, &mta, opts, false, reporter, fb).await?;
    net.shutdown().await;
    finish(setup, reason, opts)
}

/// Inject the campaign, run the MTA until every message is final or the time limit passes.
/// Live mode builds and signs batches on blocking threads; virtual mode does it inline, so that
/// the paused clock cannot move while a batch is being prepared.
async fn drive<R, C, RR, F, RC>(
    scenario: &Scenario,
    setup: &Setup,
    mta: &Mta<R, C>,
    opts: &RunOptions,
    blocking_threads: bool,
    reporter: Reporter<RR, F>,
    fb: Feedback,
) -> anyhow::Result<&'static str>
where
    R: Resolver,
    C: Connector,
    RR: Resolver,
    RC: Connector,
    F: Fn(std::net::IpAddr) -> RC + Send + Sync + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let dispatcher = {
        let mta = mta.clone();
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            mta.run(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let mut pending = fb.later.pending();
    let reporting = {
        let mut stop_rx = stop_rx.clone();
        let later = fb.later.clone();
        tokio::spawn(reporter.run(later, fb.later_rx, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }))
    };
    let campaign = scenario.campaign();
    let total = campaign.messages * u64::from(campaign.sends);
    let bar = progress_bar(opts.progress, total);
    // The run's time limit, on the runtime's timer (no wall-clock read here).
    let time_limit = tokio::time::sleep(Duration::from_secs(scenario.mta.run_time_s_max));
    tokio::pin!(time_limit);
    let scenario_arc = Arc::new(scenario.clone());
    let mut injected = 0u64;
    for send in 0..campaign.sends {
        if send > 0 {
            let at_ms = setup.start_ms + campaign.send_interval_s * 1000 * u64::from(send);
            let wait = Duration::from_millis(at_ms.saturating_sub(setup.clock.now_ms()));
            tokio::select! {
                biased;
                _ = &mut time_limit => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let date_s = (setup.clock.now_ms() / 1000) as i64;
        let mut start = 0u64;
        while start < campaign.messages {
            let end = (start + INJECT_BATCH as u64).min(campaign.messages);
            if blocking_threads {
                let (mta2, sc) = (mta.clone(), scenario_arc.clone());
                let world = setup.world.clone();
                tokio::task::spawn_blocking(move || {
                    let batch = build_messages(&sc, &world, start..end, send, date_s);
                    mta2.inject(batch)
                })
                .await??;
            } else {
                let batch = build_messages(scenario, &setup.world, start..end, send, date_s);
                mta.inject(batch)?;
                // Let the dispatcher start on this batch before the next one is prepared.
                tokio::task::yield_now().await;
            }
            injected += end - start;
            start = end;
            if let Some(bar) = &bar {
                bar.set_position(injected.saturating_sub(mta.queued() as u64));
            }
        }
    }
    let mut queued = mta.queued_watch();
    let finish_reason = loop {
        let now_queued = *queued.borrow_and_update();
        let now_pending = *pending.borrow_and_update();
        if let Some(bar) = &bar {
            bar.set_position(injected.saturating_sub(now_queued as u64));
        }
        // Drained: nothing queued in the MTA and no report still to be sent by the fleet.
        if now_queued == 0 && now_pending == 0 {
            break "drained";
        }
        tokio::select! {
            biased;
            changed = queued.changed() => if changed.is_err() { break "mta stopped" },
            _ = pending.changed() => {}
            _ = &mut time_limit => break "time limit",
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let _ = stop_tx.send(true);
    dispatcher.await?;
    reporting.await?;
    if let Err(e) = fb.suppression.sync() {
        tracing::warn!("suppression list: {e}");
    }
    Ok(finish_reason)
}

fn finish(setup: Setup, reason: &str, opts: &RunOptions) -> anyhow::Result<Summary> {
    setup.events.emit(Event::RunFinished {
        reason: reason.into(),
    });
    drop(setup.events);
    setup.log.close()?;
    let (summary, _) = fold_log(&events_path(&opts.out_dir))?;
    std::fs::write(summary_path(&opts.out_dir), summary_json(&summary)?)?;
    Ok(summary)
}

/// Fold a log into its summary, streaming (a log may hold millions of records). The second
/// value is true when the log ends in a torn record (left out).
pub fn fold_log(path: &Path) -> anyhow::Result<(Summary, bool)> {
    fold_log_with(path, |records| Summary::fold(records))
}

/// [`fold_log`] with the run's [`Drain`] (bulk and tail of its deliveries).
pub fn fold_log_with_drain(path: &Path) -> anyhow::Result<((Summary, Drain), bool)> {
    fold_log_with(path, |records| Summary::fold_with_drain(records))
}

fn fold_log_with<T>(
    path: &Path,
    fold: impl FnOnce(&mut dyn Iterator<Item = mailsim_events::Record>) -> T,
) -> anyhow::Result<(T, bool)> {
    let mut reader = LogReader::open(path)?;
    let mut error = None;
    let folded = fold(&mut reader.by_ref().map_while(|r| match r {
        Ok(r) => Some(r),
        Err(e) => {
            error = Some(e);
            None
        }
    }));
    match error {
        Some(e) => Err(e.into()),
        None => Ok((folded, reader.torn)),
    }
}

/// The one serialisation of a summary, shared by `summary.json` and `mailsim replay`.
pub fn summary_json(summary: &Summary) -> serde_json::Result<String> {
    Ok(serde_json::to_string_pretty(summary)? + "\n")
}

fn progress_bar(enabled: bool, total: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} final ({per_sec})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}
