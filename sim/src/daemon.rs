//! Long-running processes: the MTA alone (`mailsim mta`), taking mail by SMTP on a submission
//! port and delivering it through a given DNS server; and the fleet with its DNS alone
//! (`mailsim fleet`). A killed MTA restarts on its spool and loses nothing it acknowledged.

use crate::assemble::{Plan, assemble, build_mta, open_log};
use crate::env::{Env, LiveEnv};
use crate::scenario::Scenario;
use mailsim_events::LogReader;
use mailsim_mta::dns::HickoryResolver;
use mailsim_mta::queue::Lane;
use mailsim_mta::queue::RetryPolicy;
use mailsim_mta::suppression::Suppression;
use mailsim_mta::{Mta, MtaConfig, OutboundMessage, TcpConnector};
use mailsim_platform::http::{ApiConfig, Spool, Spooled};
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
    /// How long a destination is held after every connection failed (`--destination-backoff-s`).
    pub destination_backoff_s: u64,
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
    /// Where to serve the HTTP injection API (`--http`), with its bearer tokens and body limit.
    pub http: Option<HttpOptions>,
    /// Transactional and bulk mail in separate lanes (`--lanes`).
    pub lanes: Option<mailsim_mta::engine::Lanes>,
    /// A second SMTP submission port whose mail is transactional (`--submission-transactional`).
    pub submission_transactional: Option<SocketAddr>,
    /// Where to serve the sender's MX (`--mx`): DSNs, complaints, mailto unsubscribes.
    pub mx: Option<SocketAddr>,
}

/// The injectors' queues: with lanes, transactional mail has an injector of its own, so that
/// it never waits behind a bulk batch being signed and written; else both are one.
#[derive(Clone)]
struct Jobs {
    bulk: mpsc::UnboundedSender<Job>,
    transactional: mpsc::UnboundedSender<Job>,
}

impl Jobs {
    fn send(&self, lane: Lane, job: Job) -> Result<(), ()> {
        let to = if lane.is_bulk() {
            &self.bulk
        } else {
            &self.transactional
        };
        to.send(job).map_err(|_| ())
    }
}

pub struct HttpOptions {
    pub listen: SocketAddr,
    pub tokens: mailsim_platform::http::Tokens,
    pub body_max: usize,
    /// The base of the tracking and unsubscribe URLs put in mail (`--http-public-url`;
    /// default `https://<the HTTPS listener>` with `--https`, else `http://<the listener>`).
    pub public_url: Option<String>,
    /// The same routes over TLS (`--https`), with the certificate and key (PEM) to present;
    /// none given: a self-signed one made at the first start (`https.pem`, `https.key` in
    /// the spool).
    pub https: Option<(SocketAddr, Option<(PathBuf, PathBuf)>)>,
}

/// The HTTPS listener's certificate: the one given, else the spool's own (made once for
/// `localhost` and the listener's address, kept across restarts, so that a client that
/// trusts it keeps trusting it).
fn https_tls(
    spool: &std::path::Path,
    given: Option<(PathBuf, PathBuf)>,
    listen: SocketAddr,
) -> anyhow::Result<mailsim_smtp::tls::Tls> {
    let (cert, key) = match given {
        Some(pair) => pair,
        None => {
            let (cert, key) = (spool.join("https.pem"), spool.join("https.key"));
            if !cert.exists() || !key.exists() {
                let names = vec!["localhost".to_string(), listen.ip().to_string()];
                let made = rcgen::generate_simple_self_signed(names)?;
                write_private(&key, made.key_pair.serialize_pem().as_bytes())?;
                std::fs::write(&cert, made.cert.pem())?;
            }
            (cert, key)
        }
    };
    Ok(mailsim_smtp::tls::Tls::from_pem(&cert, &key)?)
}

/// Write a secret file readable by its owner only (written aside, then renamed into place).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A key of the spool: `<name>.key` (made on the first start, kept across restarts, so that
/// what was made with it before keeps working: `tracking.key` signs the tracking links in mail
/// already sent, `verp.key` tags the return paths of mail not yet bounced).
fn spool_key(spool: &std::path::Path, name: &str, env: &LiveEnv) -> anyhow::Result<[u8; 32]> {
    let path = spool.join(format!("{name}.key"));
    match std::fs::read(&path) {
        Ok(bytes) => bytes.try_into().map_err(|b: Vec<u8>| {
            anyhow::anyhow!("{}: {} bytes, a key is 32", path.display(), b.len())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = env.secret(name);
            write_private(&path, &key)?;
            Ok(key)
        }
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// The API's spool: the submission port's injector (one fsync for whatever arrived meanwhile).
struct Injector {
    jobs: Jobs,
}

impl Spool for Injector {
    fn spool(
        &self,
        batch: Vec<OutboundMessage>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Spooled, String>> + Send>> {
        let (done, result) = oneshot::channel();
        let lane = batch.first().map_or(Lane::Bulk, |m| m.lane);
        let sent = self.jobs.send(lane, (batch, done));
        Box::pin(async move {
            sent.map_err(|_| "shutting down".to_string())?;
            result.await.map_err(|_| "shutting down".to_string())?
        })
    }
}

/// Messages to spool together, and who waits for the answer (per message and recipient: the
/// queue id or why it was not queued).
type Job = (
    Vec<OutboundMessage>,
    oneshot::Sender<Result<Spooled, String>>,
);

/// The submission port's decisions: take any envelope, acknowledge DATA only once the message
/// is in the spool (on disk).
struct Ingress {
    jobs: Jobs,
    /// The port's lane, unless the message's `X-Mailsim-Lane` header names one.
    lane: Lane,
}

/// Is this the address RFC 2369 mailto unsubscribes go to (`unsubscribe@<any domain>`)?
fn is_unsubscribe_address(rcpt: &str) -> bool {
    rcpt.rsplit_once('@')
        .is_some_and(|(local, _)| local.eq_ignore_ascii_case(mailsim_platform::track::MAILTO_LOCAL))
}

/// Any address with a local part and a dotted domain is taken (the daemons relay or read it).
fn rcpt_reply(rcpt: &str) -> Reply {
    if rcpt.rsplit_once('@').is_some_and(|(l, d)| {
        !l.is_empty() && (d.contains('.') || mailsim_smtp::server::address_literal(d).is_some())
    }) {
        Reply::new(250, (2, 1, 5), "recipient OK")
    } else {
        Reply::new(501, (5, 1, 3), "bad recipient address")
    }
}

/// The sender's MX (`mailsim mta --mx`): what comes back to the senders' domains. Every mail it
/// accepts is first stored (Maildir under `SPOOL/mx/<domain>/<user>`, synced: a 250 loses
/// nothing, whatever the processing makes of it). A mail to `unsubscribe@...` is an RFC 2369
/// unsubscribe: the token its subject carries (from the List-Unsubscribe header the MTA put in
/// the mail, with the API) names the recipient; a mail without one, or to an MTA without the
/// API, which puts no token in mail, is refused (550) rather than taken on its sender, which
/// anyone can write. Everything else (DSNs, ARF complaints) goes to the bounce processor: hard
/// bounces and complaints join the suppression list, which the lists' statuses follow.
struct SenderMx {
    platform: Option<mailsim_platform::http::Platform>,
    processor: crate::feedback::BounceProcessor,
    store: mailsim_mailbox::store::Maildir,
}

impl Backend for SenderMx {
    fn on_connect(&self, _info: &SessionInfo) -> Option<Reply> {
        None
    }

    fn on_mail(&self, _info: &SessionInfo, _from: &str) -> Reply {
        Reply::new(250, (2, 1, 0), "sender OK")
    }

    async fn on_rcpt(&self, _info: &SessionInfo, tx: &Transaction, rcpt: &str) -> Reply {
        let unsubscribe = is_unsubscribe_address(rcpt);
        if unsubscribe && self.platform.is_none() {
            return Reply::new(
                550,
                (5, 7, 1),
                "this sender takes mailto unsubscribes with the token from its List-Unsubscribe header only (mailsim mta --http)",
            );
        }
        if self.store.user_dir(rcpt).is_none() {
            return Reply::new(550, (5, 1, 3), "no such mailbox here (bad address)");
        }
        // One answer per transaction: an unsubscribe and a report are not taken together.
        if tx
            .rcpts
            .first()
            .is_some_and(|first| is_unsubscribe_address(first) != unsubscribe)
        {
            return Reply::new(
                452,
                (4, 5, 3),
                "unsubscribe@ and other recipients go in separate transactions; send this one again",
            );
        }
        rcpt_reply(rcpt)
    }

    async fn on_data(&self, info: &SessionInfo, tx: &Transaction, message: Vec<u8>) -> Reply {
        let to_unsubscribe = tx.rcpts.iter().any(|r| is_unsubscribe_address(r));
        for rcpt in &tx.rcpts {
            if let Err(e) = self.store.deliver(rcpt, &message) {
                tracing::warn!("sender's MX: storing for {rcpt}: {e}");
                return Reply::new(451, (4, 3, 0), "could not store the message; try again");
            }
        }
        match (&self.platform, to_unsubscribe) {
            (Some(platform), true) => {
                let subject = mail_parser::MessageParser::default()
                    .parse_headers(&message)
                    .and_then(|m| m.subject().map(str::to_string))
                    .unwrap_or_default();
                match platform.unsubscribe_by_mail(&subject).await {
                    Ok(rcpt) => Reply::new(250, (2, 0, 0), format!("{rcpt} unsubscribed")),
                    Err(why) => Reply::new(550, (5, 7, 1), &why),
                }
            }
            _ => {
                // The lists follow: a hard bounce marks the subscriber bounced, a complaint
                // complained, on every list.
                for (rcpt, reason) in self.processor.process(info, tx, &message) {
                    if let Some(platform) = &self.platform {
                        platform.subscriber_suppressed(&rcpt, &reason).await;
                    }
                }
                Reply::new(250, (2, 0, 0), "received")
            }
        }
    }
}

/// The subscriber lists' database in the spool (`mailsim list import`, `POST /api/campaigns`).
pub const LISTS_FILE: &str = "lists.sqlite";

/// The header a submitted message names its lane in (`transactional` or `bulk`).
pub const LANE_HEADER: &str = "X-Mailsim-Lane";

impl Backend for Ingress {
    fn on_connect(&self, _info: &SessionInfo) -> Option<Reply> {
        None
    }

    fn on_mail(&self, _info: &SessionInfo, _from: &str) -> Reply {
        Reply::new(250, (2, 1, 0), "sender OK")
    }

    async fn on_rcpt(&self, _info: &SessionInfo, _tx: &Transaction, rcpt: &str) -> Reply {
        rcpt_reply(rcpt)
    }

    async fn on_data(&self, _info: &SessionInfo, tx: &Transaction, message: Vec<u8>) -> Reply {
        let headers = mail_parser::MessageParser::default().parse_headers(&message);
        let message_id = headers
            .as_ref()
            .and_then(|m| m.message_id().map(|id| format!("<{id}>")))
            .unwrap_or_default();
        let named: Vec<&str> = headers
            .as_ref()
            .map(|m| {
                m.headers()
                    .iter()
                    .filter(|h| h.name().eq_ignore_ascii_case(LANE_HEADER))
                    .filter_map(|h| {
                        let (start, end) = (h.offset_start() as usize, h.offset_end() as usize);
                        std::str::from_utf8(message.get(start..end)?).ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let lane = match named.as_slice() {
            [] => self.lane,
            [one] => match Lane::parse(one) {
                Some(lane) => lane,
                None => {
                    let word: String = one.trim().chars().take(64).collect();
                    return Reply::new(
                        554,
                        (5, 6, 0),
                        format!("{LANE_HEADER}: {word:?} is not a lane (transactional or bulk)"),
                    );
                }
            },
            _ => {
                return Reply::new(
                    554,
                    (5, 6, 0),
                    format!("{LANE_HEADER} appears more than once"),
                );
            }
        };
        let (done, result) = oneshot::channel();
        let job = OutboundMessage {
            from: tx.mail_from.clone(),
            rcpts: tx.rcpts.clone(),
            message_id,
            body: message,
            lane,
            campaign: None,
        };
        if self.jobs.send(lane, (vec![job], done)).is_err() {
            return Reply::new(421, (4, 3, 2), "shutting down");
        }
        match result.await {
            Ok(Ok(spooled)) => {
                let first = spooled.iter().flatten().find_map(|r| r.as_ref().ok());
                match first {
                    Some(id) => Reply::new(250, (2, 0, 0), format!("queued as {id}")),
                    None => Reply::new(250, (2, 0, 0), "accepted; every recipient is suppressed"),
                }
            }
            Ok(Err(e)) => Reply::new(451, (4, 3, 0), format!("not queued: {e}")),
            Err(_) => Reply::new(421, (4, 3, 2), "shutting down"),
        }
    }
}

/// Spool what the submission port receives in batches: one fsync for every message that
/// arrived while the previous batch was being written.
async fn injector(mta: DaemonMta, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut messages = first.0;
        let mut waiters = vec![(first.1, messages.len())];
        while messages.len() < INJECT_BATCH_MAX {
            match jobs.try_recv() {
                Ok((more, waiter)) => {
                    waiters.push((waiter, more.len()));
                    messages.extend(more);
                }
                Err(_) => break,
            }
        }
        let mta2 = mta.clone();
        let result = tokio::task::spawn_blocking(move || mta2.inject_each(messages)).await;
        match result {
            Ok(Ok(answers)) => {
                let mut answers = answers.into_iter();
                for (waiter, n) in waiters {
                    let _ = waiter.send(Ok(answers.by_ref().take(n).collect()));
                }
            }
            Ok(Err(e)) => {
                for (w, _) in waiters {
                    let _ = w.send(Err(e.to_string()));
                }
            }
            Err(e) => {
                for (w, _) in waiters {
                    let _ = w.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// Run the MTA until `shutdown` resolves. Prints `mta: ready submission=ADDR` (and
/// ` http=ADDR` with the API) once it listens.
pub async fn run_mta(
    mut opts: MtaDaemonOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let env = LiveEnv::with_dns(opts.dns);
    let log = open_log(&opts.spool, env.clock(), env.durability(), true)?;
    let events = log.sink();
    let suppression = Arc::new(Suppression::open(&opts.spool.join("suppression.log"))?);
    let segments = opts.spool.join("segments");
    let (mut cfg, ip) = (opts.mta_config()?, opts.source_ip);
    // With the sender's MX here, the return paths are VERP tagged with the spool's key: a
    // report suppresses only the recipient whose tagged return path it came to or quotes (a
    // forged DSN or complaint naming anyone else is recorded, not acted on).
    let verp_key = match opts.mx {
        Some(_) => Some(Arc::new(mailsim_mta::engine::VerpKey::new(&spool_key(
            &opts.spool,
            "verp",
            &env,
        )?))),
        None => None,
    };
    cfg.verp = verp_key.is_some();
    cfg.verp_key = verp_key.clone();
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
    let (bulk_tx, bulk_rx) = mpsc::unbounded_channel();
    let mut injecting = vec![tokio::spawn(injector(mta.clone(), bulk_rx))];
    let jobs_tx = Jobs {
        transactional: if opts.lanes.is_some() {
            let (tx, rx) = mpsc::unbounded_channel();
            injecting.push(tokio::spawn(injector(mta.clone(), rx)));
            tx
        } else {
            bulk_tx.clone()
        },
        bulk: bulk_tx,
    };
    let (addr, serving) = submission(
        opts.submission,
        "--submission",
        &opts.hostname,
        Ingress {
            jobs: jobs_tx.clone(),
            lane: Lane::Bulk,
        },
        stopped(&stop_rx),
    )
    .await?;
    let mut servings = vec![serving];
    let mut ready = format!("mta: ready submission={addr}");
    if let Some(listen) = opts.submission_transactional {
        let ingress = Ingress {
            jobs: jobs_tx.clone(),
            lane: Lane::Transactional,
        };
        let (addr, serving) = submission(
            listen,
            "--submission-transactional",
            &opts.hostname,
            ingress,
            stopped(&stop_rx),
        )
        .await?;
        servings.push(serving);
        ready.push_str(&format!(" submission_transactional={addr}"));
    }
    let api = match opts.http.take() {
        Some(http) => {
            let listener = bind(http.listen, "--http").await?;
            let local = listener.local_addr()?;
            ready.push_str(&format!(" http={local}"));
            let https = match http.https {
                Some((listen, given)) => {
                    let tls = https_tls(&opts.spool, given, listen)?;
                    let listener = bind(listen, "--https").await?;
                    let at = listener.local_addr()?;
                    ready.push_str(&format!(" https={at}"));
                    Some((listener, tls.acceptor, at))
                }
                None => None,
            };
            let base = http.public_url.unwrap_or_else(|| match &https {
                Some((_, _, at)) => format!("https://{at}"),
                None => format!("http://{local}"),
            });
            let mut tracker = mailsim_platform::track::Tracker::new(
                &spool_key(&opts.spool, "tracking", &env)?,
                &base,
            );
            if opts.mx.is_some() {
                tracker = tracker.with_mailto();
            }
            let tracking = mailsim_platform::http::Tracking {
                tracker,
                events: events.clone(),
                suppression: suppression.clone(),
            };
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&env.secret("message-id")[..8]);
            let cfg = ApiConfig {
                tokens: http.tokens,
                body_max: http.body_max,
                id_prefix: format!("{:016x}", u64::from_be_bytes(prefix)),
            };
            let platform = mailsim_platform::http::Platform::new(
                cfg,
                Arc::new(Injector {
                    jobs: jobs_tx.clone(),
                }),
                env.clock(),
                Some(tracking),
                Some(Arc::new(
                    mailsim_platform::lists::Lists::open(&opts.spool.join(LISTS_FILE))
                        .map_err(anyhow::Error::msg)?,
                )),
            );
            let scheduling = tokio::spawn({
                let (platform, stop) = (platform.clone(), stopped(&stop_rx));
                async move { platform.run_campaigns(stop).await }
            });
            let mut serving = vec![tokio::spawn(mailsim_platform::http::serve(
                listener,
                platform.router(),
                None,
                stopped(&stop_rx),
            ))];
            if let Some((listener, acceptor, _)) = https {
                serving.push(tokio::spawn(mailsim_platform::http::serve(
                    listener,
                    platform.router(),
                    Some(acceptor),
                    stopped(&stop_rx),
                )));
            }
            Some((platform, serving, scheduling))
        }
        None => None,
    };
    if let Some(listen) = opts.mx {
        let backend = SenderMx {
            platform: api.as_ref().map(|(p, _, _)| p.clone()),
            processor: crate::feedback::BounceProcessor {
                events: events.clone(),
                suppression: suppression.clone(),
                verp_key,
            },
            store: mailsim_mailbox::store::Maildir::new(&opts.spool.join("mx"), true, "mx"),
        };
        let listener = bind(listen, "--mx").await?;
        ready.push_str(&format!(" mx={}", listener.local_addr()?));
        let server_cfg = ServerConfig {
            hostname: opts.hostname.clone(),
            ..ServerConfig::default()
        };
        let server = Arc::new(Server::new(Arc::new(backend), server_cfg));
        servings.push(tokio::spawn(server.serve(listener, stopped(&stop_rx))));
    }
    drop(jobs_tx);
    println!("{ready}");
    shutdown.await;
    let _ = stop_tx.send(true);
    for serving in servings {
        serving.await?;
    }
    if let Some((platform, serving, scheduling)) = api {
        for serving in serving {
            serving.await??;
        }
        scheduling.await?;
        // The platform's spool is an injector queue: the injectors end once it is gone.
        drop(platform);
    }
    for injecting in injecting {
        injecting.await?;
    }
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
            destination_backoff_s: self.destination_backoff_s,
            shaping: self.shaping.clone(),
            retry: self.retry,
            verp: false,
            tls: self.tls,
            tls_client: mailsim_smtp::tls::ClientTls::new(&self.tls_roots)?,
            sts_port: self.sts_port,
            lanes: self.lanes,
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

/// A listening socket on `listen`, given by `option`: an error names both ("--http
/// 127.0.0.1:8025: Address already in use"), not the OS's words alone.
async fn bind(listen: SocketAddr, option: &str) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("{option} {listen}"))
}

/// The submission port: an SMTP server whose DATA is acknowledged once spooled (by the
/// injectors behind `ingress`). Its address and task.
async fn submission(
    listen: SocketAddr,
    option: &str,
    hostname: &str,
    ingress: Ingress,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = bind(listen, option).await?;
    let addr = listener.local_addr()?;
    let server_cfg = ServerConfig {
        hostname: hostname.to_string(),
        ..ServerConfig::default()
    };
    let server = Arc::new(Server::new(Arc::new(ingress), server_cfg));
    let serving = tokio::spawn(server.serve(listener, stop));
    Ok((addr, serving))
}

/// What `mailsim fleet` serves, and where.
pub struct FleetOptions {
    /// The fleet's directory: event log, mailboxes, `ca.pem`.
    pub out: PathBuf,
    /// The port every MX host listens on (0: any).
    pub smtp_port: u16,
    pub dns_port: u16,
    /// Serve the senders' own MX hosts (false: `mailsim mta --mx` takes them).
    pub sender_mx: bool,
    /// Certificates (DER) the recipients also trust.
    pub trusted: Vec<Vec<u8>>,
    /// Serve only this shard's domains.
    pub shard: Option<crate::cluster::Shard>,
    /// Told the ready line once the fleet serves (a node says so to its coordinator).
    pub ready: Option<oneshot::Sender<String>>,
    /// Each fleet node's /16 (a multi-node run's `--fleet-nets`).
    pub placement: Option<crate::cluster::FleetNets>,
}

/// Run a scenario's DNS and fleet alone until `shutdown` resolves. Prints one
/// `fleet: route DOMAIN IP` line per (served) domain, then
/// `fleet: dns=ADDR smtp_port=P sts_port=Q hosts=N ready`.
pub async fn run_fleet(
    scenario: &Scenario,
    opts: FleetOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let FleetOptions {
        out,
        smtp_port,
        dns_port,
        sender_mx,
        trusted,
        shard,
        ready,
        placement,
    } = opts;
    let plan = Plan {
        out_dir: out.clone(),
        state_dir: out.clone(),
        mode: "fleet",
        reopen_log: true,
        dns_port,
        fleet_port: smtp_port,
        sender_mx,
        trusted,
        shard,
        placement,
    };
    let mut a = assemble(scenario, LiveEnv::default(), &plan).await?;
    let progress = stored_count(a.fleet.stored.clone(), out.join("stored.count"));
    let (reporter, later_rx) = a.reporter()?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let reporting = tokio::spawn(reporter.run(a.later.clone(), later_rx, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    for (domain, ip) in a.world.routes() {
        if shard.is_some_and(|s| !s.owns(&domain)) {
            continue;
        }
        println!("fleet: route {domain} {ip}");
    }
    let dns = a.env.dns_addr().map_or_else(String::new, |d| d.to_string());
    let (port, hosts) = (a.fleet_port, a.fleet_servers);
    // Where the recipient domains' MTA-STS policies are served (`mailsim mta --sts-port`).
    let sts = a.sts_port();
    let line = format!("fleet: dns={dns} smtp_port={port} sts_port={sts} hosts={hosts} ready");
    println!("{line}");
    if let Some(tx) = ready {
        let _ = tx.send(line);
    }
    shutdown.await;
    progress.abort();
    let _ = stop_tx.send(true);
    reporting.await?;
    a.finish("stopped").await?;
    Ok(())
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

impl MtaDaemonOptions {
    /// The MTA a scenario describes (its address, name, retry schedule, connection limits,
    /// shaping, TLS and the senders' DKIM keys), as a daemon taking mail on `submission` and
    /// delivering through `dns` to servers on `remote_port`: the MTA node of a multi-node run.
    pub fn for_scenario(
        scenario: &Scenario,
        world: &crate::world::World,
        spool: PathBuf,
        dns: SocketAddr,
        submission: SocketAddr,
        remote_port: u16,
    ) -> anyhow::Result<MtaDaemonOptions> {
        let m = &scenario.mta;
        Ok(MtaDaemonOptions {
            spool,
            dns,
            submission,
            remote_port,
            hostname: m.hostname.clone(),
            source_ip: m.ip.into(),
            retry: RetryPolicy {
                retry_interval_s_min: m.retry_interval_s_min,
                retry_interval_s_max: m.retry_interval_s_max,
                lifetime_s: m.lifetime_s,
            },
            conns_per_domain_max: m.conns_per_domain_max,
            destination_backoff_s: m.destination_backoff_s,
            shaping: m.shaping_rules.clone().unwrap_or_default(),
            tls: m.tls,
            tls_roots: Vec::new(),
            signers: crate::assemble::signers(world)?,
            sts_port: 443,
            http: None,
            lanes: m.lanes.then_some(mailsim_mta::engine::Lanes {
                transactional_conns: m.transactional_conns,
            }),
            submission_transactional: None,
            mx: None,
        })
    }
}
