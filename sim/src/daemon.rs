//! Long-running processes: the MTA alone (`mailsim mta`), taking mail by SMTP on a submission
//! port and delivering it through a given DNS server; and the fleet with its DNS alone
//! (`mailsim fleet`). A killed MTA restarts on its spool and loses nothing it acknowledged.

use crate::assemble::{Plan, assemble, build_mta, open_log};
use crate::env::{Env, LiveEnv};
use crate::scenario::Scenario;
use mailsim_events::LogReader;
use mailsim_mta::dns::HickoryResolver;
use mailsim_mta::queue::RetryPolicy;
use mailsim_mta::suppression::Suppression;
use mailsim_mta::{Mta, MtaConfig, OutboundMessage, TcpConnector};
use mailsim_smtp::Reply;
use mailsim_smtp::server::{Backend, Server, ServerConfig, SessionInfo, Transaction};
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
    pub source_ip: IpAddr,
    pub retry: RetryPolicy,
    pub conns_per_domain_max: usize,
    /// Per-destination limits and reply-driven actions (`--shaping`).
    pub shaping: std::sync::Arc<mailsim_mta::shaping::Shaping>,
    /// STARTTLS where no shaping rule says otherwise (`--tls`).
    pub tls: mailsim_mta::shaping::TlsMode,
    /// Certificates (DER) server certificates are checked against (`--tls-ca`).
    pub tls_roots: Vec<Vec<u8>>,
    /// DKIM signers (`--dkim`).
    pub signers: Vec<mailsim_mta::dkim::Signer>,
    /// The HTTPS port of `mta-sts.<domain>` (`--sts-port`; a fleet prints its own).
    pub sts_port: u16,
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
async fn injector(mta: DaemonMta, mut jobs: mpsc::UnboundedReceiver<Job>) {
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

/// Run the MTA until `shutdown` resolves. Prints `mta: ready submission=ADDR` once it listens.
pub async fn run_mta(
    mut opts: MtaDaemonOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let env = LiveEnv::with_dns(opts.dns);
    let log = open_log(&opts.spool, env.clock(), env.durability(), true)?;
    let events = log.sink();
    let suppression = Arc::new(Suppression::open(&opts.spool.join("suppression.log"))?);
    let segments = opts.spool.join("segments");
    let (cfg, ip) = (opts.mta_config()?, opts.source_ip);
    let mta = build_mta(
        &env,
        cfg,
        ip,
        &segments,
        std::mem::take(&mut opts.signers),
        suppression.clone(),
        events.clone(),
    )?;
    recover(&mta, &opts.spool.join("events.log"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let dispatcher = tokio::spawn({
        let (mta, stop) = (mta.clone(), stopped(&stop_rx));
        async move { mta.run(stop).await }
    });
    let (addr, serving, injecting) = submission(&mta, &opts, stopped(&stop_rx)).await?;
    println!("mta: ready submission={addr}");
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

impl MtaDaemonOptions {
    fn mta_config(&self) -> anyhow::Result<MtaConfig> {
        Ok(MtaConfig {
            hostname: self.hostname.clone(),
            remote_port: self.remote_port,
            conns_per_domain_max: self.conns_per_domain_max,
            shaping: self.shaping.clone(),
            retry: self.retry,
            verp: false,
            tls: self.tls,
            tls_client: mailsim_smtp::tls::ClientTls::new(&self.tls_roots)?,
            sts_port: self.sts_port,
            ..MtaConfig::default()
        })
    }
}

type DaemonMta = Mta<HickoryResolver, TcpConnector>;

/// Queue again everything the log does not show final (after a crash or a stop).
fn recover(mta: &DaemonMta, log: &std::path::Path) -> anyhow::Result<()> {
    let mut reader = LogReader::open(log)?;
    let report = mta.recover(reader.by_ref().map_while(Result::ok))?;
    eprintln!(
        "mta: recovered {} queued, {} already final, {} announced",
        report.requeued, report.final_, report.announced
    );
    Ok(())
}

/// Resolves once the stop flag is set.
fn stopped(rx: &watch::Receiver<bool>) -> impl std::future::Future<Output = ()> + use<> {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// The submission port: an SMTP server whose DATA is acknowledged once spooled, and the
/// injector that spools in batches. Its address and the two tasks.
async fn submission(
    mta: &DaemonMta,
    opts: &MtaDaemonOptions,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(
    SocketAddr,
    tokio::task::JoinHandle<()>,
    tokio::task::JoinHandle<()>,
)> {
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let injecting = tokio::spawn(injector(mta.clone(), jobs_rx));
    let listener = TcpListener::bind(opts.submission).await?;
    let addr = listener.local_addr()?;
    let server_cfg = ServerConfig {
        hostname: opts.hostname.clone(),
        ..ServerConfig::default()
    };
    let server = Arc::new(Server::new(Arc::new(Ingress { jobs: jobs_tx }), server_cfg));
    let serving = tokio::spawn(server.serve(listener, stop));
    Ok((addr, serving, injecting))
}

/// Run a scenario's DNS and fleet alone until `shutdown` resolves. Prints one
/// `fleet: route DOMAIN IP` line per domain, then
/// `fleet: dns=ADDR smtp_port=P sts_port=Q hosts=N ready`.
pub async fn run_fleet(
    scenario: &Scenario,
    out: PathBuf,
    smtp_port: u16,
    dns_port: u16,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let plan = Plan {
        out_dir: out.clone(),
        state_dir: out.clone(),
        mode: "fleet",
        reopen_log: true,
        dns_port,
        fleet_port: smtp_port,
    };
    let mut a = assemble(scenario, LiveEnv::default(), &plan).await?;
    let progress = stored_count(a.fleet.stored.clone(), out.join("stored.count"));
    let (reporter, later_rx) = a.reporter()?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let reporting = tokio::spawn(reporter.run(a.later.clone(), later_rx, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    for (domain, ip) in a.world.routes() {
        println!("fleet: route {domain} {ip}");
    }
    let dns = a.env.dns_addr().map_or_else(String::new, |d| d.to_string());
    let (port, hosts) = (a.fleet_port, a.fleet_servers);
    // Where the recipient domains' MTA-STS policies are served (`mailsim mta --sts-port`).
    let sts = a.sts_port();
    println!("fleet: dns={dns} smtp_port={port} sts_port={sts} hosts={hosts} ready");
    shutdown.await;
    progress.abort();
    let _ = stop_tx.send(true);
    reporting.await?;
    a.finish("stopped").await
}

/// How many copies the fleet has stored, rewritten to `path` twice a second: a cheap progress
/// reading for a harness waiting on another MTA (the figures themselves come from the log).
fn stored_count(
    stored: Arc<std::sync::atomic::AtomicU64>,
    path: PathBuf,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let n = stored.load(std::sync::atomic::Ordering::Relaxed);
            let _ = tokio::fs::write(&path, format!("{n}\n")).await;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
}
