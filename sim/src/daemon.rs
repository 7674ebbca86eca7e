//! Long-running processes: the MTA alone (`mailsim mta`), taking mail by SMTP on a submission
//! port and delivering it through a given DNS server; and the fleet with its DNS alone
//! (`mailsim fleet`). A killed MTA restarts on its spool and loses nothing it acknowledged.

use crate::feedback::{LaterQueue, Reporter};
use crate::fleet::{Fleet, FleetContext, FleetServers};
use crate::scenario::Scenario;
use crate::world::World;
use fake_dns::{DnsServer, FaultyZones};
use mailsim_events::{Clock, Event, EventLog, EventSink, LogReader, SystemClock};
use mailsim_mailbox::auth::Verifier;
use mailsim_mailbox::smtp::{Backend, Reply, Server, ServerConfig, SessionInfo, Transaction};
use mailsim_mta::dns::HickoryResolver;
use mailsim_mta::queue::RetryPolicy;
use mailsim_mta::spool::Spool;
use mailsim_mta::suppression::Suppression;
use mailsim_mta::{Mta, MtaConfig, OutboundMessage, TcpConnector};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

/// Most messages spooled with one fsync by the submission port's injector.
const INJECT_BATCH_MAX: usize = 512;

pub struct MtaDaemonOptions {
    pub spool: PathBuf,
    pub dns: SocketAddr,
    pub submission: SocketAddr,
    /// The port remote SMTP servers listen on (the fleet's port).
    pub remote_port: u16,
    pub hostname: String,
    pub source_ip: Option<IpAddr>,
    pub retry: RetryPolicy,
    pub conns_per_domain_max: usize,
}

type Job = (OutboundMessage, oneshot::Sender<Result<Vec<u64>, String>>);

/// The submission port's decisions: take any envelope, acknowledge DATA only once the message
/// is in the spool (on disk).
struct Ingress {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Backend for Ingress {
    fn on_connect(&self, _info: &SessionInfo) -> Option<Reply> {
        None
    }

    fn on_mail(&self, _info: &SessionInfo, _from: &str) -> Reply {
        Reply::new(250, (2, 1, 0), "sender OK")
    }

    async fn on_rcpt(&self, _info: &SessionInfo, _tx: &Transaction, rcpt: &str) -> Reply {
        if rcpt
            .rsplit_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        {
            Reply::new(250, (2, 1, 5), "recipient OK")
        } else {
            Reply::new(501, (5, 1, 3), "bad recipient address")
        }
    }

    async fn on_data(&self, _info: &SessionInfo, tx: &Transaction, message: Vec<u8>) -> Reply {
        let message_id = mail_parser::MessageParser::default()
            .parse_headers(&message)
            .and_then(|m| m.message_id().map(|id| format!("<{id}>")))
            .unwrap_or_default();
        let (done, result) = oneshot::channel();
        let job = OutboundMessage {
            from: tx.mail_from.clone(),
            rcpts: tx.rcpts.clone(),
            message_id,
            body: message,
        };
        if self.jobs.send((job, done)).is_err() {
            return Reply::new(421, (4, 3, 2), "shutting down");
        }
        match result.await {
            Ok(Ok(ids)) => Reply::new(
                250,
                (2, 0, 0),
                format!("queued as {}", ids.first().copied().unwrap_or_default()),
            ),
            Ok(Err(e)) => Reply::new(451, (4, 3, 0), format!("not queued: {e}")),
            Err(_) => Reply::new(421, (4, 3, 2), "shutting down"),
        }
    }
}

/// Spool what the submission port receives in batches: one fsync for every message that
/// arrived while the previous batch was being written.
async fn injector(mta: Mta<HickoryResolver, TcpConnector>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < INJECT_BATCH_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (messages, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let counts: Vec<usize> = messages.iter().map(|m| m.rcpts.len()).collect();
        let mta2 = mta.clone();
        let result = tokio::task::spawn_blocking(move || mta2.inject(messages)).await;
        match result {
            Ok(Ok(ids)) => {
                // Ids come back in message order, one per queued recipient; a suppressed
                // recipient has none, so split by what each message could have had.
                let mut rest = ids.as_slice();
                for (waiter, n) in waiters.into_iter().zip(counts) {
                    let take = n.min(rest.len());
                    let _ = waiter.send(Ok(rest[..take].to_vec()));
                    rest = &rest[take..];
                }
            }
            Ok(Err(e)) => {
                for w in waiters {
                    let _ = w.send(Err(e.to_string()));
                }
            }
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// Open (or create) a daemon's event log; the second value is every good record before this
/// start (a torn tail is cut).
fn open_log(path: &std::path::Path, clock: Arc<dyn Clock>) -> anyhow::Result<EventLog> {
    if path.exists() {
        let (log, report) = EventLog::open(path, clock)?;
        if report.cut_bytes > 0 {
            tracing::warn!(
                "{}: cut a torn tail of {} bytes",
                path.display(),
                report.cut_bytes
            );
        }
        Ok(log)
    } else {
        Ok(EventLog::create(path, clock)?)
    }
}

/// Run the MTA until `shutdown` resolves. Prints `mta: ready submission=ADDR` once it listens.
pub async fn run_mta(
    opts: MtaDaemonOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.spool)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let log_path = opts.spool.join("events.log");
    let log = open_log(&log_path, clock.clone())?;
    let events = log.sink();
    let suppression = Arc::new(Suppression::open(&opts.spool.join("suppression.log"))?);
    let mta = Mta::new(
        MtaConfig {
            hostname: opts.hostname.clone(),
            remote_port: opts.remote_port,
            conns_per_domain_max: opts.conns_per_domain_max,
            retry: opts.retry,
            verp: false,
            ..MtaConfig::default()
        },
        HickoryResolver::new(opts.dns)?,
        TcpConnector {
            source_ip: opts.source_ip,
        },
        Spool::open(&opts.spool.join("segments"))?,
        Vec::new(),
        suppression.clone(),
        events.clone(),
    );
    let mut reader = LogReader::open(&log_path)?;
    let report = mta.recover(reader.by_ref().map_while(Result::ok))?;
    eprintln!(
        "mta: recovered {} queued, {} already final, {} announced",
        report.requeued, report.final_, report.announced
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatcher = {
        let (mta, mut rx) = (mta.clone(), stop_rx.clone());
        tokio::spawn(async move {
            mta.run(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let injecting = tokio::spawn(injector(mta.clone(), jobs_rx));
    let listener = TcpListener::bind(opts.submission).await?;
    let addr = listener.local_addr()?;
    let server = Arc::new(Server::new(
        Arc::new(Ingress { jobs: jobs_tx }),
        ServerConfig {
            hostname: opts.hostname.clone(),
            ..ServerConfig::default()
        },
    ));
    println!("mta: ready submission={addr}");
    let serving = {
        let mut rx = stop_rx.clone();
        tokio::spawn(server.serve(listener, async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    };
    shutdown.await;
    let _ = stop_tx.send(true);
    serving.await?;
    injecting.await?;
    dispatcher.await?;
    suppression.sync()?;
    drop(events);
    log.close()?;
    Ok(())
}

/// Run a scenario's DNS and fleet alone until `shutdown` resolves. Prints
/// `fleet: dns=ADDR smtp_port=P hosts=N ready`.
pub async fn run_fleet(
    scenario: &Scenario,
    out: PathBuf,
    smtp_port: u16,
    dns_port: u16,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&out)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let log = open_log(&out.join("events.log"), clock.clone())?;
    let events: EventSink = log.sink();
    let world = World::build(scenario).map_err(anyhow::Error::msg)?;
    events.emit(Event::RunStarted {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        mode: "fleet".into(),
    });
    let start_ms = clock.now_ms();
    let zones = Arc::new(FaultyZones::new(world.zones.clone(), world.faults.clone()));
    let dns_clock = clock.clone();
    let dns = DnsServer::start_with_faults(
        zones,
        SocketAddr::new([127, 0, 0, 1].into(), dns_port),
        Arc::new(move || dns_clock.now_ms().saturating_sub(start_ms)),
    )
    .await?;
    let suppression = Arc::new(Suppression::open(&out.join("suppression.log"))?);
    let (later, later_rx) = LaterQueue::new();
    let ctx = FleetContext::with_feedback(
        Verifier::new(dns.addr(), "fleet.mailsim.test").map_err(anyhow::Error::msg)?,
        out.join("mailboxes"),
        events.clone(),
        clock.clone(),
        start_ms,
        later.clone(),
        suppression,
    );
    let servers = FleetServers::build(&world.hosts, &ctx);
    // How many copies the fleet has stored, rewritten twice a second: a cheap progress reading
    // for a harness waiting on another MTA (the figures themselves come from the log).
    let progress = {
        let (stored, path) = (ctx.stored.clone(), out.join("stored.count"));
        tokio::spawn(async move {
            loop {
                let n = stored.load(std::sync::atomic::Ordering::Relaxed);
                let _ = tokio::fs::write(&path, format!("{n}\n")).await;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        })
    };
    let fleet = Fleet::start_on(&servers, smtp_port)
        .await
        .map_err(anyhow::Error::msg)?;
    let reporter = Reporter {
        resolver: Arc::new(HickoryResolver::new(dns.addr())?),
        connector_for: |ip| TcpConnector {
            source_ip: Some(ip),
        },
        port: fleet.port,
        events: events.clone(),
        clock: clock.clone(),
        feedback_addresses: world.feedback_addresses(),
    };
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let reporting = tokio::spawn(reporter.run(later, later_rx, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    // Where each domain's first live MX listens, for an MTA routed without DNS (transport maps).
    for d in scenario.domains() {
        let name = d.name.to_ascii_lowercase();
        if let Some(h) = world.hosts.iter().find(|h| h.domain == name && !h.down) {
            println!("fleet: route {name} {}", h.ip);
        }
    }
    println!(
        "fleet: dns={} smtp_port={} hosts={} ready",
        dns.addr(),
        fleet.port,
        servers.servers.len()
    );
    shutdown.await;
    progress.abort();
    let _ = stop_tx.send(true);
    reporting.await?;
    fleet.shutdown().await;
    dns.shutdown().await;
    events.emit(Event::RunFinished {
        reason: "stopped".into(),
    });
    drop(events);
    log.close()?;
    Ok(())
}
