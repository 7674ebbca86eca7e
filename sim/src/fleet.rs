//! The fleet of simulated recipient servers: one real SMTP server (the mailbox crate's) per MX
//! host, applying its domain's behaviour (see [`crate::behaviour`]), verifying SPF, DKIM and
//! DMARC, and storing accepted mail per user. In live mode each host listens on its own
//! 127.x.y.z address; in virtual mode [`crate::virt::VirtualNet`] hands it in-memory pipes.

use crate::feedback::LaterQueue;
use crate::foresight::ContentRead;
use crate::policy::{AuthFacts, Now, ReceiverPolicy, Verdict};
use crate::scenario::Store;
use crate::world::{HostPlan, mix};
use mailsim_events::{Clock, Event, EventSink};
use mailsim_mailbox::auth::Verifier;
use mailsim_mailbox::store::Maildir;
use mailsim_smtp::Reply;
use mailsim_smtp::server::{
    Backend, DATA_BUDGET_BYTES_DEFAULT, DataBudget, Server, ServerConfig, SessionInfo, Transaction,
};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A parser that reads the Message-ID (and the other identifier fields) and leaves every other
/// field raw: the message's id is all a receiver reads of the header this way.
static MESSAGE_IDS: std::sync::LazyLock<mail_parser::MessageParser> =
    std::sync::LazyLock::new(|| mail_parser::MessageParser::new().with_message_ids());

/// A message's Message-ID as a receiver records it (in angle brackets; empty without one).
pub(crate) fn message_id_of(message: &[u8]) -> String {
    MESSAGE_IDS
        .parse_headers(message)
        .and_then(|m| m.message_id().map(|id| format!("<{id}>")))
        .unwrap_or_default()
}

/// A report a server sends later about a message it accepted.
#[derive(Debug, Clone)]
pub struct LaterReport {
    pub due_ms: u64,
    pub kind: LaterKind,
    /// The reporting host and its address.
    pub host: String,
    pub host_ip: IpAddr,
    /// The accepted message's envelope sender (return path) and recipient.
    pub mail_from: String,
    pub rcpt: String,
    pub message_id: String,
    /// The original message's header block.
    pub headers: Vec<u8>,
    /// What a recipient's action uses: the image, link or unsubscribe URL, or the mailto
    /// address (empty for reports).
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaterKind {
    /// An RFC 3464 DSN to the return path: the mailbox turned out to be unavailable.
    Bounce,
    /// An RFC 5965 ARF report to the sender's feedback address: the user marked it as spam.
    Complaint,
    /// The recipient opens the message: its images are fetched.
    Open,
    /// The recipient follows a link.
    Click,
    /// RFC 8058 one-click unsubscribe: a POST to the URL.
    UnsubscribeOneClick,
    /// An unsubscribe web page (a GET).
    UnsubscribeWeb,
    /// A mail to the List-Unsubscribe mailto address.
    UnsubscribeMailto,
}

/// What a delivered message is handed to on a sender's own MX (the bounce processor).
pub type Inbox = Arc<
    dyn Fn(&SessionInfo, &Transaction, &[u8], Option<Vec<mailsim_bounce::Classified>>)
        + Send
        + Sync,
>;

/// One simulated server: its [`ReceiverPolicy`] decides, this carries the decisions out
/// (replies, events, storage, verification, later reports).
pub struct HostBackend {
    host: String,
    ip: IpAddr,
    policy: Mutex<ReceiverPolicy>,
    verifier: Arc<Verifier>,
    store: Maildir,
    events: EventSink,
    clock: Arc<dyn Clock>,
    start_ms: u64,
    stored: Arc<std::sync::atomic::AtomicU64>,
    /// The Maildir all accepted mail of this server goes to: `inbox@<host>`.
    inbox_address: String,
    later: Option<LaterQueue>,
    inbox: Option<Inbox>,
    /// What an accepted copy (a report, at a sender's own MX) leaves in the Maildir.
    keep: Store,
    /// Content read ahead (virtual runs).
    foresight: Option<Arc<crate::foresight::Foresight>>,
}

impl HostBackend {
    fn now(&self) -> Now {
        let ms = self.clock.now_ms();
        Now {
            ms,
            elapsed_ms: ms.saturating_sub(self.start_ms),
        }
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, ReceiverPolicy> {
        self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record the provider's reputation changes, if any.
    fn reputation_events(&self, policy: &ReceiverPolicy) {
        if let Some((provider, changes)) = policy.reputation_changes() {
            for c in changes {
                self.events.emit(Event::Reputation {
                    provider: provider.clone(),
                    subject: c.subject,
                    day: c.day,
                    score: c.score,
                    cause: c.cause,
                });
            }
        }
    }

    fn refuse(&self, info: &SessionInfo, command: &str, rcpt: &str, reply: Reply) -> Reply {
        self.events.emit(Event::Refused {
            host: self.host.clone(),
            session: info.id,
            command: command.into(),
            code: reply.code,
            enhanced: reply.enhanced_str(),
            rcpt: rcpt.into(),
        });
        reply
    }

    /// Keep an accepted copy for `address` (in `folder`; None: INBOX) as `[fleet] store` says:
    /// a Maildir file, its header block appended to the folder's mbox, or nothing (None).
    fn keep(
        &self,
        address: &str,
        folder: Option<&str>,
        sender: &str,
        copy: &[u8],
    ) -> Option<Result<std::path::PathBuf, mailsim_mailbox::store::StoreError>> {
        match self.keep {
            Store::Full => Some(self.store.deliver_into(address, folder, copy)),
            Store::Headers => {
                // The header block with its last line end; the empty line after it makes a
                // message with an empty body.
                let mut block = copy[..find_header_end(copy)].to_vec();
                block.extend_from_slice(b"\r\n");
                let unix_s = (self.now().ms / 1000) as i64;
                Some(
                    self.store
                        .append_mbox(address, folder, sender, unix_s, &block),
                )
            }
            Store::Nothing => None,
        }
    }

    /// Carry out a verdict: the reply to send (a refusal recorded, a drop recorded and cut).
    fn carry_out(&self, info: &SessionInfo, command: &str, rcpt: &str, v: Verdict) -> Reply {
        match v {
            Verdict::Accept(reply) => reply,
            Verdict::Refuse(reply) => self.refuse(info, command, rcpt, reply),
            Verdict::Drop => {
                self.refuse(info, command, rcpt, Reply::new(0, (0, 0, 0), "dropped"));
                Reply::disconnect()
            }
        }
    }
}

impl Backend for HostBackend {
    fn on_connect(&self, info: &SessionInfo) -> Option<Reply> {
        let refusal = self.policy().connect(self.now(), info.peer.ip());
        self.events.emit(Event::SessionAccepted {
            host: self.host.clone(),
            session: info.id,
            peer: info.peer.to_string(),
        });
        refusal.map(|reply| self.refuse(info, "CONNECT", "", reply))
    }

    fn on_disconnect(&self, info: &SessionInfo) {
        self.policy().disconnect(info.peer.ip());
    }

    fn greeting_delay(&self, _info: &SessionInfo) -> Duration {
        self.policy().greeting_delay(self.now())
    }

    fn reply_delay(&self, _info: &SessionInfo) -> Duration {
        self.policy().reply_delay(self.now())
    }

    fn on_mail(&self, info: &SessionInfo, from: &str) -> Reply {
        let verdict = self.policy().mail(from, info.tls);
        self.carry_out(info, "MAIL", "", verdict)
    }

    async fn on_rcpt(&self, info: &SessionInfo, tx: &Transaction, rcpt: &str) -> Reply {
        let verdict = {
            let mut policy = self.policy();
            let v = policy.rcpt(self.now(), info.peer.ip(), &tx.mail_from, rcpt);
            self.reputation_events(&policy);
            v
        };
        self.carry_out(info, "RCPT", rcpt, verdict)
    }

    async fn on_data(&self, info: &SessionInfo, tx: &Transaction, message: Vec<u8>) -> Reply {
        let rcpt = tx.rcpts.first().cloned().unwrap_or_default();
        let before = self
            .policy()
            .data(self.now(), info.peer.ip(), &rcpt, &message);
        if let Some(verdict) = before {
            return self.carry_out(info, "DATA", &rcpt, verdict);
        }
        if let Some(inbox) = &self.inbox {
            // The sender's own mailbox: stored and handed to the bounce processor. Plus-addresses
            // (VERP) share their base mailbox: bounces+7-bob=x.test@ -> bounces@.
            // What it keeps is what every server keeps (`[fleet] store`): a large virtual
            // run's tens of thousands of reports cost no file each.
            for rcpt in &tx.rcpts {
                let mailbox = match rcpt.rsplit_once('@') {
                    Some((local, domain)) => {
                        format!("{}@{domain}", local.split('+').next().unwrap_or(local))
                    }
                    None => rcpt.clone(),
                };
                if let Some(Err(e)) = self.keep(&mailbox, None, &tx.mail_from, &message) {
                    tracing::warn!(host = %self.host, "{e}");
                    return Reply::new(451, (4, 3, 0), "local storage failure, try again later");
                }
            }
            // A report handed over ahead was classified on the foresight thread.
            let classified = self
                .foresight
                .as_ref()
                .and_then(|f| f.settle(&message))
                .and_then(|a| a.classified);
            inbox(info, tx, &message, classified);
            return Reply::new(250, (2, 0, 0), format!("OK queued as {}", info.id));
        }
        // What was done ahead for this message (its verdicts or signatures, its content).
        let mut ahead = self.foresight.as_ref().and_then(|f| f.settle(&message));
        let envelope = crate::foresight::Envelope {
            ip: info.peer.ip(),
            helo: info.helo.clone(),
            mail_from: tx.mail_from.clone(),
            now_s: self.now().ms / 1000,
        };
        let verdicts = match ahead.as_mut().and_then(|a| a.verdicts_for(&envelope)) {
            Some(v) => v,
            None => {
                self.verifier
                    .verify(info.peer.ip(), &info.helo, &tx.mail_from, &message)
                    .await
            }
        };
        let (read_ahead, message_id) = match ahead {
            Some(a) => (a.read, a.message_id),
            None => (None, message_id_of(&message)),
        };
        let headers_end = find_header_end(&message);
        self.events.emit(Event::AuthVerdict {
            host: self.host.clone(),
            session: info.id,
            message_id: message_id.clone(),
            mail_from: tx.mail_from.clone(),
            header_from: verdicts.header_from.clone(),
            spf: verdicts.spf.clone(),
            dkim: verdicts.dkim.clone(),
            dmarc: verdicts.dmarc.clone(),
        });
        let auth = AuthFacts {
            header_from: &verdicts.header_from,
            spf: &verdicts.spf,
            dkim: &verdicts.dkim,
            dmarc: &verdicts.dmarc,
            dmarc_policy: verdicts.dmarc_policy.as_deref(),
        };
        if let Some(verdict) = self.policy().authenticated(info.peer.ip(), &auth) {
            return self.carry_out(info, "DATA", &rcpt, verdict);
        }
        if let Some(verdict) = self.policy().bulk_rules(self.now(), info.peer.ip(), &auth) {
            return self.carry_out(info, "DATA", &rcpt, verdict);
        }
        // With a reputation model: the message's links and content score, read once.
        let judged = {
            let policy = self.policy();
            policy.has_reputation().then(|| {
                let read = read_ahead.unwrap_or_else(|| ContentRead::of(&message));
                policy.judge(read)
            })
        };
        // RFC 5321 section 4.4: the trace header ends in the time of receipt; final delivery
        // adds the reverse path as Return-Path.
        let date = mail_builder::headers::date::Date::new((self.now().ms / 1000) as i64);
        // With TLS, the protocol ESMTPS (RFC 3848) and the TLS parameters in a comment where
        // Postfix writes them (the cipher suite in rustls's name).
        let (with, tls_comment) = match &info.tls_params {
            Some(p) => (
                "ESMTPS",
                format!(" (using {} with cipher {})", p.version, p.cipher),
            ),
            None => ("ESMTP", String::new()),
        };
        let received = format!(
            "Received: from {} ([{}]){tls_comment} by {} with {with} id {}; {}\r\n",
            info.helo,
            info.peer.ip(),
            self.host,
            info.id,
            date.to_rfc822()
        );
        let mut stored = Vec::with_capacity(verdicts.header.len() + received.len() + message.len());
        stored.extend_from_slice(verdicts.header.as_bytes());
        stored.extend_from_slice(received.as_bytes());
        stored.extend_from_slice(&message);
        let mut actions = Vec::new();
        for rcpt in &tx.rcpts {
            let placed = judged.as_ref().and_then(|judged| {
                let policy = self.policy();
                let d = policy.place(self.now(), info.peer.ip(), rcpt, &message_id, &auth, judged);
                self.reputation_events(&policy);
                d
            });
            let folder = placed
                .as_ref()
                .and_then(|d| d.placement.spam.then_some("Junk"));
            // One Maildir per simulated server (a folder per user would cost four directories
            // per recipient, and every campaign recipient is new); Delivered-To names the user.
            let mut copy = format!(
                "Return-Path: <{}>\r\nDelivered-To: {rcpt}\r\n",
                tx.mail_from
            )
            .into_bytes();
            copy.extend_from_slice(&stored);
            if let Some(Err(e)) = self.keep(&self.inbox_address, folder, &tx.mail_from, &copy) {
                tracing::warn!(host = %self.host, "{e}");
                return Reply::new(451, (4, 3, 0), "local storage failure, try again later");
            }
            self.events.emit(Event::Stored {
                host: self.host.clone(),
                session: info.id,
                message_id: message_id.clone(),
                rcpt: rcpt.clone(),
                size: stored.len() as u64,
                tls: info.tls_params.as_ref().map(|p| p.to_string()),
            });
            self.stored
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(d) = placed {
                self.events.emit(Event::Placed {
                    host: self.host.clone(),
                    message_id: message_id.clone(),
                    rcpt: rcpt.clone(),
                    folder: if d.placement.spam { "spam" } else { "inbox" }.into(),
                    cause: d.placement.cause.into(),
                    spam_percent: d.placement.spam_percent,
                });
                actions.push((rcpt.clone(), d.actions));
            }
        }
        if let Some(later) = &self.later {
            let now = self.now();
            let report = |rcpt: &str, due_ms: u64, kind: LaterKind, url: String| LaterReport {
                due_ms,
                kind,
                host: self.host.clone(),
                host_ip: self.ip,
                mail_from: tx.mail_from.clone(),
                rcpt: rcpt.to_string(),
                message_id: message_id.clone(),
                headers: message[..headers_end].to_vec(),
                url,
            };
            for rcpt in &tx.rcpts {
                let Some(decision) = self.policy().later(now, rcpt) else {
                    continue;
                };
                later.push(report(rcpt, decision.due_ms, decision.kind, String::new()));
            }
            if let Some((links, _)) = &judged {
                for (rcpt, acts) in actions {
                    for (act, due_ms) in acts {
                        for (kind, url) in recipient_action(act, links) {
                            later.push(report(&rcpt, due_ms, kind, url));
                        }
                    }
                }
            }
        }
        Reply::new(250, (2, 0, 0), format!("OK queued as {}", info.id))
    }
}

/// The requests (or report) a recipient's act makes with a message's links: an open loads
/// every image (or nothing can be seen of it: an open without URL), a click follows the link,
/// an unsubscribe uses what List-Unsubscribe offers, and a recipient who wants out of a list
/// that offers no way out reports the message as spam.
fn recipient_action(
    act: crate::engage::Act,
    links: &crate::engage::Links,
) -> Vec<(LaterKind, String)> {
    use crate::engage::{Act, Unsubscribe};
    match act {
        Act::Open if links.images.is_empty() => vec![(LaterKind::Open, String::new())],
        Act::Open => links
            .images
            .iter()
            .map(|u| (LaterKind::Open, u.clone()))
            .collect(),
        Act::Click => links
            .link
            .iter()
            .map(|u| (LaterKind::Click, u.clone()))
            .collect(),
        Act::Unsubscribe => match &links.unsubscribe {
            Some(Unsubscribe::OneClick(u)) => vec![(LaterKind::UnsubscribeOneClick, u.clone())],
            Some(Unsubscribe::Web(u)) => vec![(LaterKind::UnsubscribeWeb, u.clone())],
            Some(Unsubscribe::Mailto(a)) => vec![(LaterKind::UnsubscribeMailto, a.clone())],
            None => vec![(LaterKind::Complaint, String::new())],
        },
        Act::Complaint => vec![(LaterKind::Complaint, String::new())],
    }
}

fn find_header_end(message: &[u8]) -> usize {
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |p| p + 2)
}

/// The servers of the fleet, by address.
#[derive(Default)]
pub struct FleetServers {
    pub servers: Vec<(HostPlan, Arc<Server<HostBackend>>)>,
}

/// Everything the fleet's servers share.
pub struct FleetContext {
    pub verifier: Arc<Verifier>,
    pub store_root: std::path::PathBuf,
    pub events: EventSink,
    pub clock: Arc<dyn Clock>,
    pub start_ms: u64,
    pub later: Option<LaterQueue>,
    /// The bounce processor, called for every message a sender's own MX accepts.
    pub inbox: Option<Inbox>,
    /// Copies stored (campaign recipients), for a runner waiting on another MTA's deliveries;
    /// figures come from the `stored` events, not from this.
    pub stored: Arc<std::sync::atomic::AtomicU64>,
    /// What the servers keep of each copy (the senders' own MXs of each report alike).
    pub keep: Store,
    /// The authority that issues the servers' certificates (None: no STARTTLS).
    pub tls_ca: Option<Arc<mailsim_smtp::tls::Ca>>,
    /// Where the content of messages about to arrive is read ahead (virtual runs).
    pub foresight: Option<Arc<crate::foresight::Foresight>>,
}

impl FleetContext {
    /// A fleet whose servers report later through `later` and whose sender MXs hand what
    /// they receive to a bounce processor recording into `events` and `suppression`.
    pub fn with_feedback(
        verifier: Verifier,
        store_root: std::path::PathBuf,
        events: EventSink,
        clock: Arc<dyn Clock>,
        start_ms: u64,
        later: LaterQueue,
        suppression: Arc<mailsim_mta::suppression::Suppression>,
    ) -> FleetContext {
        let processor = crate::feedback::BounceProcessor {
            events: events.clone(),
            suppression,
            verp_key: None,
        };
        FleetContext {
            verifier: Arc::new(verifier),
            store_root,
            events,
            clock,
            start_ms,
            later: Some(later),
            inbox: Some(Arc::new(move |info, tx, message, classified| {
                processor.process_classified(info, tx, message, classified);
            })),
            stored: Arc::default(),
            keep: Store::Full,
            tls_ca: None,
            foresight: None,
        }
    }
}

impl FleetServers {
    /// One server per live host, each offering STARTTLS as its plan says.
    pub fn build(hosts: &[HostPlan], ctx: &FleetContext) -> Result<FleetServers, String> {
        // One budget for the messages every host is receiving: the fleet is one process.
        let budget = DataBudget::new(DATA_BUDGET_BYTES_DEFAULT);
        let servers = hosts
            .iter()
            .filter(|h| !h.down)
            .map(|h| {
                let policy = ReceiverPolicy::new(&h.domain, h.behaviour.clone());
                let size_max = policy.message_size_max();
                let backend = Arc::new(HostBackend {
                    host: h.name.clone(),
                    ip: IpAddr::V4(h.ip),
                    policy: Mutex::new(policy),
                    verifier: ctx.verifier.clone(),
                    store: Maildir::new(&ctx.store_root, false, &h.name),
                    events: ctx.events.clone(),
                    clock: ctx.clock.clone(),
                    start_ms: ctx.start_ms,
                    stored: ctx.stored.clone(),
                    inbox_address: format!("inbox@{}", h.name),
                    later: if h.sender_mx { None } else { ctx.later.clone() },
                    inbox: if h.sender_mx { ctx.inbox.clone() } else { None },
                    keep: ctx.keep,
                    foresight: ctx.foresight.clone(),
                });
                let mut cfg = ServerConfig {
                    hostname: h.name.clone(),
                    data_budget: budget.clone(),
                    ..ServerConfig::default()
                };
                if let Some(max) = size_max {
                    cfg.message_bytes_max = max;
                }
                if let Some(ca) = &ctx.tls_ca {
                    cfg.tls = host_tls(ca, h).map_err(|e| format!("{}: {e}", h.name))?;
                }
                Ok((h.clone(), Arc::new(Server::new(backend, cfg))))
            })
            .collect::<Result<_, String>>()?;
        Ok(FleetServers { servers })
    }

    /// Whether every live host of a recipient's domain will surely refuse it at RCPT now
    /// ([`ReceiverPolicy::rcpt_refused_surely`]), for the work done ahead. Holds the hosts
    /// weakly (they hold the thread doing that work).
    pub fn refusals(&self) -> crate::foresight::Refusals {
        let mut by_domain: HashMap<String, Vec<std::sync::Weak<HostBackend>>> = HashMap::new();
        for (plan, server) in &self.servers {
            by_domain
                .entry(plan.domain.to_ascii_lowercase())
                .or_default()
                .push(Arc::downgrade(server.backend()));
        }
        Arc::new(move |ip, mail_from, rcpt| {
            by_domain
                .get(&*crate::policy::lowercase(crate::policy::domain_of(rcpt)))
                .is_some_and(|hosts| {
                    hosts.iter().all(|h| {
                        h.upgrade().is_some_and(|h| {
                            let now = h.now();
                            h.policy().rcpt_refused_surely(now, ip, mail_from, rcpt)
                        })
                    })
                })
        })
    }
}

/// A host's STARTTLS: a certificate from the run's authority, or the fault its plan names.
fn host_tls(
    ca: &mailsim_smtp::tls::Ca,
    h: &HostPlan,
) -> Result<Option<mailsim_smtp::tls::Tls>, mailsim_smtp::tls::TlsError> {
    use crate::scenario::TlsFault;
    use mailsim_smtp::tls::CertFault;
    let fault = match h.tls {
        TlsFault::None => return Ok(None),
        TlsFault::Ok | TlsFault::HandshakeFailure => CertFault::None,
        TlsFault::Expired => CertFault::Expired,
        TlsFault::WrongName => CertFault::WrongName,
        TlsFault::SelfSigned => CertFault::SelfSigned,
    };
    let mut tls = ca.issue(std::slice::from_ref(&h.name), fault)?;
    tls.handshake_fails = h.tls == TlsFault::HandshakeFailure;
    Ok(Some(tls))
}

/// The fleet serving on loopback TCP (live mode).
pub struct Fleet {
    pub port: u16,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Bind every live host on one shared port (the first bind picks it) and start serving.
    pub async fn start(servers: &FleetServers) -> Result<Fleet, String> {
        Self::start_on(servers, 0).await
    }

    /// Bind every live host on `port` (0: the first bind picks one) and start serving.
    pub async fn start_on(servers: &FleetServers, port: u16) -> Result<Fleet, String> {
        let wanted = port;
        let mut last_err = String::from("no live MX host");
        'attempt: for _ in 0..16 {
            let mut listeners = Vec::with_capacity(servers.servers.len());
            let mut port = wanted;
            for (h, _) in &servers.servers {
                match TcpListener::bind(SocketAddr::new(h.ip.into(), port)).await {
                    Ok(l) => {
                        port = l.local_addr().map_err(|e| e.to_string())?.port();
                        listeners.push(l);
                    }
                    Err(e) => {
                        last_err = format!("binding {}:{port} for {}: {e}", h.ip, h.name);
                        continue 'attempt;
                    }
                }
            }
            let (stop, stop_rx) = watch::channel(false);
            let mut tasks = JoinSet::new();
            for ((_, server), listener) in servers.servers.iter().zip(listeners) {
                let mut rx = stop_rx.clone();
                let server = server.clone();
                tasks.spawn(async move {
                    server
                        .serve(listener, async move {
                            let _ = rx.wait_for(|s| *s).await;
                        })
                        .await;
                });
            }
            return Ok(Fleet { port, stop, tasks });
        }
        Err(last_err)
    }

    /// Stop accepting, let open sessions finish, and wait for every server.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A stable per-report seed (used by the reporter for ids).
pub fn report_seed(seed: u64, report: &LaterReport) -> u64 {
    mix(
        seed,
        &format!("{}|{}|{}", report.host, report.rcpt, report.message_id),
    )
}
