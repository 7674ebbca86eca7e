//! The fleet of simulated recipient servers: one real SMTP server (the mailbox crate's) per MX
//! host, applying its domain's behaviour (see [`crate::behaviour`]), verifying SPF, DKIM and
//! DMARC, and storing accepted mail per user. In live mode each host listens on its own
//! 127.x.y.z address; in virtual mode [`crate::virt::VirtualNet`] hands it in-memory pipes.

use crate::behaviour::{Behaviour, fill};
use crate::feedback::LaterQueue;
use crate::world::{HostPlan, chance, mix};
use mailsim_events::{Clock, Event, EventSink};
use mailsim_mailbox::auth::Verifier;
use mailsim_mailbox::smtp::{Backend, Reply, Server, ServerConfig, SessionInfo, Transaction};
use mailsim_mailbox::store::Maildir;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaterKind {
    /// An RFC 3464 DSN to the return path: the mailbox turned out to be unavailable.
    Bounce,
    /// An RFC 5965 ARF report to the sender's feedback address: the user marked it as spam.
    Complaint,
}

/// Per-host memory: attempts, greylist triplets, token buckets, open connections.
#[derive(Default)]
struct HostState {
    attempts: HashMap<String, u32>,
    greylist: HashMap<String, u64>,
    buckets: HashMap<IpAddr, (f64, u64)>,
    connections: HashMap<IpAddr, usize>,
    data_attempts: u64,
}

/// What a delivered message is handed to on a sender's own MX (the bounce processor).
pub type Inbox = Arc<dyn Fn(&SessionInfo, &Transaction, &[u8]) + Send + Sync>;

/// One simulated server's decisions.
pub struct HostBackend {
    host: String,
    ip: IpAddr,
    domain: String,
    behaviour: Behaviour,
    verifier: Arc<Verifier>,
    store: Maildir,
    events: EventSink,
    clock: Arc<dyn Clock>,
    start_ms: u64,
    state: Mutex<HostState>,
    stored: Arc<std::sync::atomic::AtomicU64>,
    /// The Maildir all accepted mail of this server goes to: `inbox@<host>`.
    inbox_address: String,
    later: Option<LaterQueue>,
    inbox: Option<Inbox>,
}

impl HostBackend {
    fn elapsed_ms(&self) -> u64 {
        self.clock.now_ms().saturating_sub(self.start_ms)
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

    /// Take a token from the client's bucket; false when it is empty.
    fn take_token(&self, ip: IpAddr, rate: f64, burst: f64) -> bool {
        let now = self.clock.now_ms();
        let mut st = self.state.lock().expect("host state");
        let (tokens, last) = st.buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + (now.saturating_sub(*last)) as f64 / 1000.0 * rate).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The n-th attempt for a key (1-based), for per-attempt random draws.
    fn attempt(&self, key: &str) -> u32 {
        let mut st = self.state.lock().expect("host state");
        let n = st.attempts.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    }
}

impl Backend for HostBackend {
    fn on_connect(&self, info: &SessionInfo) -> Option<Reply> {
        let elapsed = self.elapsed_ms();
        let open = {
            let mut st = self.state.lock().expect("host state");
            let n = st.connections.entry(info.peer.ip()).or_insert(0);
            *n += 1;
            *n
        };
        self.events.emit(Event::SessionAccepted {
            host: self.host.clone(),
            session: info.id,
            peer: info.peer.to_string(),
        });
        let limit = self
            .behaviour
            .rate_limit
            .as_ref()
            .and_then(|r| r.active(elapsed));
        if let Some(max) = limit.and_then(|r| r.connections_max)
            && open > max
        {
            let ip = info.peer.ip().to_string();
            let reply = fill(&self.behaviour.replies.too_many_connections, &[("ip", &ip)]);
            return Some(self.refuse(info, "CONNECT", "", reply));
        }
        None
    }

    fn on_disconnect(&self, info: &SessionInfo) {
        let mut st = self.state.lock().expect("host state");
        if let Some(n) = st.connections.get_mut(&info.peer.ip()) {
            *n = n.saturating_sub(1);
        }
    }

    fn greeting_delay(&self, _info: &SessionInfo) -> Duration {
        let slow = self
            .behaviour
            .slow
            .as_ref()
            .and_then(|s| s.active(self.elapsed_ms()));
        slow.map_or(Duration::ZERO, |s| {
            Duration::from_secs_f64(s.banner_s.max(0.0))
        })
    }

    fn reply_delay(&self, _info: &SessionInfo) -> Duration {
        let slow = self
            .behaviour
            .slow
            .as_ref()
            .and_then(|s| s.active(self.elapsed_ms()));
        slow.map_or(Duration::ZERO, |s| {
            Duration::from_secs_f64(s.reply_s.max(0.0))
        })
    }

    fn on_mail(&self, info: &SessionInfo, from: &str) -> Reply {
        if self.behaviour.tls_required {
            return self.refuse(
                info,
                "MAIL",
                "",
                self.behaviour.replies.tls_required.clone(),
            );
        }
        let _ = from;
        Reply::new(250, (2, 1, 0), "sender OK")
    }

    async fn on_rcpt(&self, info: &SessionInfo, tx: &Transaction, rcpt: &str) -> Reply {
        let lower = rcpt.to_ascii_lowercase();
        let Some((local, domain)) = lower.rsplit_once('@') else {
            return self.refuse(
                info,
                "RCPT",
                rcpt,
                Reply::new(501, (5, 1, 3), "bad recipient address"),
            );
        };
        if domain != self.domain {
            return self.refuse(
                info,
                "RCPT",
                rcpt,
                Reply::new(550, (5, 7, 1), "relaying denied"),
            );
        }
        let b = &self.behaviour;
        let elapsed = self.elapsed_ms();
        let ip = info.peer.ip().to_string();
        let vars = [("rcpt", lower.as_str()), ("ip", ip.as_str())];
        if let Some(limit) = b.rate_limit.as_ref().and_then(|r| r.active(elapsed))
            && !self.take_token(info.peer.ip(), limit.messages_per_s, limit.burst)
        {
            let reply = if limit.close {
                &b.replies.rate_limited_close
            } else {
                &b.replies.rate_limited
            };
            return self.refuse(info, "RCPT", rcpt, fill(reply, &vars));
        }
        if b.unknown_list.contains(local) || chance(b.seed, &lower, b.unknown_percent) {
            return self.refuse(info, "RCPT", rcpt, fill(&b.replies.unknown_user, &vars));
        }
        if let Some(full) = b.mailbox_full.as_ref().and_then(|m| m.active(elapsed))
            && chance(b.seed, &format!("full:{lower}"), full.percent)
        {
            let reply = if full.permanent {
                &b.replies.mailbox_full_permanent
            } else {
                &b.replies.mailbox_full
            };
            return self.refuse(info, "RCPT", rcpt, fill(reply, &vars));
        }
        if let Some(grey) = b.greylist.as_ref().and_then(|g| g.active(elapsed)) {
            let triplet = format!("{ip}|{}|{lower}", tx.mail_from.to_ascii_lowercase());
            let now = self.clock.now_ms();
            let first = *self
                .state
                .lock()
                .expect("host state")
                .greylist
                .entry(triplet)
                .or_insert(now);
            if now < first + grey.window_s * 1000 {
                return self.refuse(info, "RCPT", rcpt, fill(&b.replies.greylisted, &vars));
            }
        }
        if let Some(t) = b.tempfail.as_ref().and_then(|t| t.active(elapsed)) {
            let n = self.attempt(&lower);
            if chance(b.seed, &format!("{lower}#{n}"), t.percent) {
                return self.refuse(info, "RCPT", rcpt, fill(&b.replies.tempfail, &vars));
            }
        }
        if let Some(d) = b.drops.as_ref().and_then(|d| d.active(elapsed)) {
            let n = self.attempt(&format!("drop:{lower}"));
            if chance(
                b.seed,
                &format!("drop-rcpt:{lower}#{n}"),
                d.before_data_percent,
            ) {
                self.refuse(info, "RCPT", rcpt, Reply::new(0, (0, 0, 0), "dropped"));
                return Reply::disconnect();
            }
        }
        Reply::new(250, (2, 1, 5), "recipient OK")
    }

    async fn on_data(&self, info: &SessionInfo, tx: &Transaction, message: Vec<u8>) -> Reply {
        let b = &self.behaviour;
        let elapsed = self.elapsed_ms();
        let rcpt = tx.rcpts.first().cloned().unwrap_or_default();
        if let Some(d) = b.drops.as_ref().and_then(|d| d.active(elapsed)) {
            let n = {
                let mut st = self.state.lock().expect("host state");
                st.data_attempts += 1;
                st.data_attempts
            };
            if chance(
                b.seed,
                &format!("drop-data:{rcpt}#{n}"),
                d.during_data_percent,
            ) {
                self.refuse(info, "DATA", &rcpt, Reply::new(0, (0, 0, 0), "dropped"));
                return Reply::disconnect();
            }
        }
        let ip = info.peer.ip().to_string();
        if let Some(filter) = &b.content_filter {
            let text = String::from_utf8_lossy(&message).to_ascii_lowercase();
            let score = filter
                .words
                .iter()
                .filter(|w| text.contains(&w.to_ascii_lowercase()))
                .count() as u32;
            if score >= filter.score_max {
                let s = score.to_string();
                let reply = fill(&b.replies.spam, &[("ip", &ip), ("score", &s)]);
                return self.refuse(info, "DATA", &rcpt, reply);
            }
        }
        if let Some(inbox) = &self.inbox {
            // The sender's own mailbox: stored and handed to the bounce processor. Plus-addresses
            // (VERP) share their base mailbox: bounces+7-bob=x.test@ -> bounces@.
            for rcpt in &tx.rcpts {
                let mailbox = match rcpt.rsplit_once('@') {
                    Some((local, domain)) => {
                        format!("{}@{domain}", local.split('+').next().unwrap_or(local))
                    }
                    None => rcpt.clone(),
                };
                if let Err(e) = self.store.deliver(&mailbox, &message) {
                    tracing::warn!(host = %self.host, "{e}");
                    return Reply::new(451, (4, 3, 0), "local storage failure, try again later");
                }
            }
            inbox(info, tx, &message);
            return Reply::new(250, (2, 0, 0), format!("OK queued as {}", info.id));
        }
        let verdicts = self
            .verifier
            .verify(info.peer.ip(), &info.helo, &tx.mail_from, &message)
            .await;
        let headers_end = find_header_end(&message);
        let message_id = mail_parser::MessageParser::default()
            .parse_headers(&message)
            .and_then(|m| m.message_id().map(|id| format!("<{id}>")))
            .unwrap_or_default();
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
        if b.dmarc_enforce
            && verdicts.dmarc == "fail"
            && verdicts.dmarc_policy.as_deref() == Some("reject")
        {
            let reply = fill(
                &b.replies.dmarc_reject,
                &[("domain", &verdicts.header_from), ("ip", &ip)],
            );
            return self.refuse(info, "DATA", &rcpt, reply);
        }
        let received = format!(
            "Received: from {} ({}) by {} with ESMTP id {}; session {}\r\n",
            info.helo,
            info.peer.ip(),
            self.host,
            info.id,
            info.id
        );
        let mut stored = Vec::with_capacity(verdicts.header.len() + received.len() + message.len());
        stored.extend_from_slice(verdicts.header.as_bytes());
        stored.extend_from_slice(received.as_bytes());
        stored.extend_from_slice(&message);
        for rcpt in &tx.rcpts {
            // One Maildir per simulated server (a folder per user would cost four directories
            // per recipient, and every campaign recipient is new); Delivered-To names the user.
            let mut copy = format!("Delivered-To: {rcpt}\r\n").into_bytes();
            copy.extend_from_slice(&stored);
            if let Err(e) = self.store.deliver(&self.inbox_address, &copy) {
                tracing::warn!(host = %self.host, "{e}");
                return Reply::new(451, (4, 3, 0), "local storage failure, try again later");
            }
            self.events.emit(Event::Stored {
                host: self.host.clone(),
                session: info.id,
                message_id: message_id.clone(),
                rcpt: rcpt.clone(),
                size: stored.len() as u64,
            });
            self.stored
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(later) = &self.later {
            let now = self.clock.now_ms();
            for rcpt in &tx.rcpts {
                let lower = rcpt.to_ascii_lowercase();
                let picks = [
                    (LaterKind::Bounce, b.async_bounce.as_ref(), "async-bounce"),
                    (LaterKind::Complaint, b.complaints.as_ref(), "complaint"),
                ];
                for (kind, rule, tag) in picks {
                    let Some(rule) = rule else { continue };
                    if chance(b.seed, &format!("{tag}:{lower}"), rule.percent) {
                        later.push(LaterReport {
                            due_ms: now + rule.delay_s * 1000,
                            kind,
                            host: self.host.clone(),
                            host_ip: self.ip,
                            mail_from: tx.mail_from.clone(),
                            rcpt: rcpt.clone(),
                            message_id: message_id.clone(),
                            headers: message[..headers_end].to_vec(),
                        });
                        // A message is bounced or complained about, not both.
                        break;
                    }
                }
            }
        }
        Reply::new(250, (2, 0, 0), format!("OK queued as {}", info.id))
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
        };
        FleetContext {
            verifier: Arc::new(verifier),
            store_root,
            events,
            clock,
            start_ms,
            later: Some(later),
            inbox: Some(Arc::new(move |info, tx, message| {
                processor.process(info, tx, message)
            })),
            stored: Arc::default(),
        }
    }
}

impl FleetServers {
    /// One server per live host.
    pub fn build(hosts: &[HostPlan], ctx: &FleetContext) -> FleetServers {
        let servers = hosts
            .iter()
            .filter(|h| !h.down)
            .map(|h| {
                let backend = Arc::new(HostBackend {
                    host: h.name.clone(),
                    ip: IpAddr::V4(h.ip),
                    domain: h.domain.clone(),
                    behaviour: h.behaviour.clone(),
                    verifier: ctx.verifier.clone(),
                    store: Maildir::new(&ctx.store_root, false, &h.name),
                    events: ctx.events.clone(),
                    clock: ctx.clock.clone(),
                    start_ms: ctx.start_ms,
                    state: Mutex::new(HostState::default()),
                    stored: ctx.stored.clone(),
                    inbox_address: format!("inbox@{}", h.name),
                    later: if h.sender_mx { None } else { ctx.later.clone() },
                    inbox: if h.sender_mx { ctx.inbox.clone() } else { None },
                });
                let mut cfg = ServerConfig {
                    hostname: h.name.clone(),
                    ..ServerConfig::default()
                };
                if let Some(max) = h.behaviour.message_size_max {
                    cfg.message_bytes_max = max;
                }
                (h.clone(), Arc::new(Server::new(backend, cfg)))
            })
            .collect();
        FleetServers { servers }
    }
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
