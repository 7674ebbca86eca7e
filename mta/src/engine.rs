//! The MTA engine: injection into the spool and queue, the dispatcher that opens connections per
//! destination within limits, and the delivery sessions that turn SMTP replies into outcomes.
//!
//! Everything that changes state emits an event; nothing is counted on the side.

use crate::dkim::{SignatureWitness, Signer};
use crate::dns::{MxHost, Resolver, RouteError};
use crate::queue::{Lane, Queue, QueueEntry, RetryPolicy};
use crate::shaping::{Rule, Shaping, TlsMode};
use crate::spool::{Recovered, Spool, SpoolEnvelope, SpoolError, SpoolRef};
use crate::sts::{Mode as StsMode, Policy as StsPolicy};
use crate::suppression::Suppression;
use mailsim_events::{Clock, Event, EventSink, Record, SmtpReply};
use mailsim_smtp::Reply;
use mailsim_smtp::client::{ClientError, EnvelopeHead, SmtpClient, SmtpTimeouts, StartTls};
use mailsim_smtp::tls::{ClientTls, MaybeTls};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};

/// Opens outbound connections; TCP in live mode, in-memory pipes in virtual mode.
pub trait Connector: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// A message (as spooled, signed) about to be sent from the reverse path `from`
    /// over a connection this connector made. A simulated network may start its receivers'
    /// work on it early; what they answer must not depend on it. Sockets ignore it.
    fn will_send(&self, _from: &str, _message: &[u8]) {}
    /// Whether the receiver of `rcpt` will surely refuse it at RCPT (a simulated network's
    /// foresight). Such a message is not read ahead of its turn nor handed over with
    /// [`Connector::will_send`]; what is sent never depends on it. Sockets cannot know: false.
    fn will_refuse(&self, _from: &str, _rcpt: &str) -> bool {
        false
    }
    /// How many messages ahead [`Connector::will_send`] wants too: as a message is taken, the
    /// next ones ready for the destination (they may go out on other connections).
    fn looks_ahead(&self) -> usize {
        0
    }
}

/// TCP connector, optionally binding a source address (the MTA's IP, which SPF checks).
#[derive(Debug, Clone, Default)]
pub struct TcpConnector {
    pub source_ip: Option<IpAddr>,
}

impl Connector for TcpConnector {
    type Stream = TcpStream;
    async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.source_ip {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

#[derive(Debug, Clone)]
pub struct MtaConfig {
    /// Name used in EHLO.
    pub hostname: String,
    /// TCP port of remote SMTP servers (25 on the Internet; the fleet's port in mailsim).
    pub remote_port: u16,
    pub conns_per_domain_max: usize,
    /// Connections a destination starts with (None: the maximum); raised after good sessions,
    /// lowered on refusals and failures (adaptive concurrency).
    pub conns_per_domain_initial: Option<usize>,
    pub msgs_per_conn_max: usize,
    pub retry: RetryPolicy,
    pub timeouts: SmtpTimeouts,
    /// How long a 421 or a rate-limit reply backs a whole destination off.
    pub destination_backoff_s: u64,
    /// Envelope senders `bounces+<id>-<local>=<domain>@<sender domain>` (VERP), so that every
    /// asynchronous bounce maps to its message and recipient.
    pub verp: bool,
    /// With VERP, a tag made with this key in every return path
    /// (`bounces+<id>.<tag>-<local>=<domain>@...`), so that the sender's MX can tell a report
    /// about a message this MTA sent from a forged one ([`verp_signed_rcpt`]).
    pub verp_key: Option<Arc<VerpKey>>,
    /// Per-destination limits and reply-driven actions (a shaping file).
    pub shaping: Arc<Shaping>,
    /// STARTTLS where a shaping rule does not say otherwise.
    pub tls: TlsMode,
    /// The roots server certificates are checked against (a run's own authority).
    pub tls_client: ClientTls,
    /// Look up and apply destinations' MTA-STS policies (RFC 8461).
    pub mta_sts: bool,
    /// The HTTPS port of `mta-sts.<domain>` (443 on the Internet; the fleet's in mailsim).
    pub sts_port: u16,
    /// Transactional and bulk mail in separate lanes (None: one queue, first in first out).
    pub lanes: Option<Lanes>,
}

/// Lanes: transactional mail is taken before bulk mail at every destination, and has
/// connections of its own beside the destination's window (which bulk mail cannot use).
#[derive(Debug, Clone, Copy)]
pub struct Lanes {
    /// Connections per destination for transactional mail only.
    pub transactional_conns: usize,
}

impl Default for MtaConfig {
    fn default() -> Self {
        MtaConfig {
            hostname: "mta.mailsim.test".into(),
            remote_port: 25,
            conns_per_domain_max: 8,
            conns_per_domain_initial: None,
            msgs_per_conn_max: 500,
            retry: RetryPolicy::default(),
            timeouts: SmtpTimeouts::default(),
            destination_backoff_s: 60,
            verp: false,
            verp_key: None,
            shaping: Arc::new(Shaping::default()),
            tls: TlsMode::default(),
            tls_client: ClientTls::untrusting(),
            mta_sts: true,
            sts_port: 443,
            lanes: None,
        }
    }
}

/// The lane's word in `injected` events: none for bulk mail.
fn lane_word(lane: Lane) -> Option<String> {
    (!lane.is_bulk()).then(|| "transactional".to_string())
}

/// A message handed to the MTA.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    pub from: String,
    pub rcpts: Vec<String>,
    pub message_id: String,
    pub body: Vec<u8>,
    pub lane: Lane,
    /// The platform campaign it belongs to (named in its `injected` events).
    pub campaign: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum MtaError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Dkim(#[from] crate::dkim::DkimError),
    #[error("recipient {0:?} has no domain")]
    BadRecipient(String),
}

/// How many connections a destination gets at once, and what moves the number (Postfix's
/// destination concurrency feedback, in whole sessions).
struct Window {
    limit: usize,
    /// Good sessions since the limit last moved: at `limit` of them (or `probe_after`, when
    /// more) it is raised by one.
    good: usize,
    /// Good sessions a raise waits for: doubled each time a raise is refused straight away,
    /// so a destination's cap is probed less and less often.
    probe_after: usize,
    /// The last move was a raise.
    raised: bool,
}

impl Window {
    fn new(limit: usize) -> Self {
        Window {
            limit,
            good: 0,
            probe_after: 0,
            raised: false,
        }
    }
}

/// How a session ended, for the destination's window.
enum SessionEnd {
    /// It delivered (or tried) messages and closed normally.
    Good,
    /// The connection was refused or could not be made while other sessions to the
    /// destination were up (nothing is deferred): the window is lowered to those sessions.
    Refused(String),
    /// The connection was lost or timed out mid-session: the window is lowered by one.
    Lost(String),
    /// Anything else (the messages it held are settled).
    Other,
}

struct State {
    queue: Queue,
    active: HashMap<String, usize>,
    /// Transactional-only sessions up per destination (with lanes).
    active_transactional: HashMap<String, usize>,
    windows: HashMap<String, Window>,
    /// Each destination's MX host names, once routed (for shaping rules by MX suffix).
    mx_names: HashMap<String, Vec<String>>,
    /// When each rate-shaped destination may next be sent a message (microseconds).
    next_slot_us: HashMap<String, u64>,
    /// What is known of each destination's MTA-STS policy.
    sts: HashMap<String, StsEntry>,
    next_id: u64,
    next_conn: u64,
}

struct Inner<R, C> {
    cfg: MtaConfig,
    resolver: R,
    connector: C,
    spool: Spool,
    signers: HashMap<String, Signer>,
    suppression: Arc<Suppression>,
    events: EventSink,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    wake: Notify,
    queued: watch::Sender<usize>,
    /// One MTA-STS policy lookup at a time per destination (its sessions wait for the answer;
    /// other destinations do not).
    sts_lookups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Bodies read from the spool for [`Connector::will_send`] ahead of their turn, by queue
    /// id, oldest first: the session that takes the entry sends them without reading the spool
    /// again; None for one not read (its receiver will surely refuse it, or the read failed:
    /// see [`Mta::hand_over`]). At most [`READ_AHEAD_MAX`] (an entry the queue loses otherwise
    /// is forgotten).
    read_ahead: Mutex<VecDeque<(u64, Option<Vec<u8>>)>>,
    /// Told of the Ed25519 signatures made (a virtual run's fleet verifies them ahead).
    witness: std::sync::OnceLock<Arc<dyn SignatureWitness>>,
    /// [`Mta::ready_below`]'s mark (0: nobody waits), and its waiter's wake-up.
    ready_mark: AtomicUsize,
    ready_low: Notify,
}

/// Bodies kept read ahead of their turn.
const READ_AHEAD_MAX: usize = 64;

/// A destination's MTA-STS policy as last looked up.
struct StsEntry {
    policy: Option<Arc<StsPolicy>>,
    /// Until when the policy applies (its `max_age` from the fetch).
    expires_ms: u64,
    /// When the `_mta-sts` TXT record is next asked again (a changed `id` means a new policy).
    recheck_ms: u64,
}

/// How often a destination's `_mta-sts` TXT record is asked again.
const STS_RECHECK_MS: u64 = 300_000;

/// The MTA. Cheap to clone; clones share one queue.
pub struct Mta<R, C> {
    inner: Arc<Inner<R, C>>,
}

impl<R, C> Clone for Mta<R, C> {
    fn clone(&self) -> Self {
        Mta {
            inner: self.inner.clone(),
        }
    }
}

enum Fate {
    Delivered,
    Temp {
        reason: String,
        reply: Option<SmtpReply>,
    },
    Perm {
        reason: String,
        reply: Option<SmtpReply>,
        hard: bool,
    },
}

/// Replies classified so far (see [`classify`]), by code, enhanced code, command and text.
type Classified = HashMap<Box<str>, (&'static str, bool)>;

/// The reason (Sisimai's vocabulary) and hardness of a failure reply to `command`.
pub fn classify(reply: &Reply, command: &str) -> (&'static str, bool) {
    // A pure function of the reply (its text without the addresses it names, which the
    // classifier does not read: the same refusal names each recipient in turn) and the
    // command, and a run meets the same few replies millions of times (every greylisted
    // RCPT): remembered per thread, at most CLASSIFIED_MAX of them (then forgotten all at
    // once).
    const CLASSIFIED_MAX: usize = 4096;
    thread_local! {
        static CLASSIFIED: std::cell::RefCell<(String, Classified)> = Default::default();
    }
    CLASSIFIED.with(|memo| {
        let (key, seen) = &mut *memo.borrow_mut();
        key.clear();
        // No enhanced code and an empty one are told apart ("-" / "+...").
        let (mark, enhanced) = match reply.enhanced.as_deref() {
            Some(e) => ('+', e),
            None => ('-', ""),
        };
        let text = mailsim_bounce::without_addresses(&reply.text);
        let _ = std::fmt::Write::write_fmt(
            key,
            format_args!("{}\0{mark}{enhanced}\0{command}\0{text}", reply.code),
        );
        if let Some(&known) = seen.get(key.as_str()) {
            return known;
        }
        let decided =
            mailsim_bounce::classify_reply(reply.code, reply.enhanced.as_deref(), &text, command);
        if seen.len() >= CLASSIFIED_MAX {
            seen.clear();
        }
        seen.insert(key.as_str().into(), decided);
        decided
    })
}

/// Replies that ask the client to slow down: the whole destination backs off.
pub fn is_rate_limit(reply: &Reply, reason: &str) -> bool {
    reply.code == 421 || reason == "ratelimited"
}

/// The domain of an address, lower-cased (empty when there is none).
fn domain_of(addr: &str) -> String {
    addr.rsplit_once('@')
        .map_or_else(String::new, |(_, d)| d.to_ascii_lowercase())
}

/// How often a durable spool's finished segments are reclaimed.
const RECLAIM_INTERVAL: Duration = Duration::from_millis(250);

/// What [`Mta::recover`] found in the spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Recipients queued again.
    pub requeued: u64,
    /// Recipients the log showed final (their spool space is released).
    pub final_: u64,
    /// Recipients whose injection had not reached the log before the crash.
    pub announced: u64,
}

/// The key VERP return paths are tagged with: HMAC-SHA256 over the queue id and the
/// recipient, the first 8 bytes in hex. The queue id and the recipient alone can be guessed;
/// the tag cannot without the key.
pub struct VerpKey(ring::hmac::Key);

impl std::fmt::Debug for VerpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerpKey(..)")
    }
}

impl VerpKey {
    pub fn new(secret: &[u8; 32]) -> Self {
        VerpKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    fn tag(&self, id: u64, rcpt: &str) -> String {
        let mac = ring::hmac::sign(
            &self.0,
            format!("{id}:{}", rcpt.to_ascii_lowercase()).as_bytes(),
        );
        mac.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The VERP return path for queue entry `id` to `rcpt`, from sender `from`, tagged when a key
/// is given.
pub fn verp_address(from: &str, id: u64, rcpt: &str, key: Option<&VerpKey>) -> String {
    let domain = from.rsplit_once('@').map_or(from, |(_, d)| d);
    let encoded = rcpt.replacen('@', "=", 1);
    match key {
        Some(key) => format!("bounces+{id}.{}-{encoded}@{domain}", key.tag(id, rcpt)),
        None => format!("bounces+{id}-{encoded}@{domain}"),
    }
}

/// A VERP return path's parts: the queue id, the tag (if any) and the recipient.
fn verp_parts(addr: &str) -> Option<(u64, Option<&str>, String)> {
    let local = addr.rsplit_once('@')?.0;
    let (head, encoded) = local.strip_prefix("bounces+")?.split_once('-')?;
    let (id, tag) = match head.split_once('.') {
        Some((id, tag)) => (id, Some(tag)),
        None => (head, None),
    };
    let (l, d) = encoded.rsplit_once('=')?;
    if l.is_empty() || d.is_empty() {
        return None;
    }
    Some((id.parse().ok()?, tag, format!("{l}@{d}")))
}

/// The recipient a VERP return path was made for ([`verp_address`]), if it is one: the
/// domain holds no `=`, so the last one stands for the `@`.
pub fn verp_rcpt(addr: &str) -> Option<String> {
    verp_parts(addr).map(|(_, _, rcpt)| rcpt)
}

/// The recipient of a VERP return path tagged with `key` ([`verp_address`]); None for any
/// other address, an untagged return path or a tag the key did not make.
pub fn verp_signed_rcpt(addr: &str, key: &VerpKey) -> Option<String> {
    let (id, tag, rcpt) = verp_parts(addr)?;
    let expected = key.tag(id, &rcpt);
    let tag = tag?.as_bytes();
    // Compared in constant time: how much of a guessed tag is right is not told.
    let same = tag.len() == expected.len()
        && tag
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    same.then_some(rcpt)
}

/// The queue id in a VERP return path, if it is one.
pub fn verp_id(addr: &str) -> Option<u64> {
    let local = addr.rsplit_once('@')?.0;
    let rest = local.strip_prefix("bounces+")?;
    let head = rest.split('-').next()?;
    head.split('.').next()?.parse().ok()
}

impl<R: Resolver, C: Connector> Mta<R, C> {
    pub fn new(
        cfg: MtaConfig,
        resolver: R,
        connector: C,
        spool: Spool,
        signers: Vec<Signer>,
        suppression: Arc<Suppression>,
        events: EventSink,
    ) -> Self {
        let clock = events.clock().clone();
        let signers = signers
            .into_iter()
            .map(|s| (s.domain().to_ascii_lowercase(), s))
            .collect();
        let queue = if cfg.lanes.is_some() {
            Queue::with_lanes()
        } else {
            Queue::new()
        };
        Mta {
            inner: Arc::new(Inner {
                cfg,
                resolver,
                connector,
                spool,
                signers,
                suppression,
                events,
                clock,
                state: Mutex::new(State {
                    queue,
                    active: HashMap::new(),
                    active_transactional: HashMap::new(),
                    windows: HashMap::new(),
                    mx_names: HashMap::new(),
                    next_slot_us: HashMap::new(),
                    sts: HashMap::new(),
                    next_id: 1,
                    next_conn: 1,
                }),
                wake: Notify::new(),
                queued: watch::channel(0).0,
                sts_lookups: Mutex::new(HashMap::new()),
                read_ahead: Mutex::default(),
                witness: std::sync::OnceLock::new(),
                ready_mark: AtomicUsize::new(0),
                ready_low: Notify::new(),
            }),
        }
    }

    /// Tell `witness` of every Ed25519 signature made from now on (set once: a second is
    /// ignored).
    pub fn set_signature_witness(&self, witness: Arc<dyn SignatureWitness>) {
        let _ = self.inner.witness.set(witness);
    }

    /// Messages (per recipient) still queued.
    pub fn queued(&self) -> usize {
        self.inner.state.lock().expect("mta state").queue.len()
    }

    /// A watch on the queue length.
    pub fn queued_watch(&self) -> watch::Receiver<usize> {
        self.inner.queued.subscribe()
    }

    /// DKIM-sign (when a key for the From domain is configured), spool durably and queue a
    /// batch. Signing runs on every core. Returns the queue ids. Blocking: call it from a
    /// blocking thread.
    pub fn inject(&self, batch: Vec<OutboundMessage>) -> Result<Vec<u64>, MtaError> {
        self.inject_each(batch).map(queue_ids)
    }

    /// [`Mta::inject`], answering for each message and each of its recipients, in order: the
    /// queue id, or why the recipient was not queued (the suppression list's reason). The batch
    /// is refused whole, before anything is written, when a recipient has no domain.
    pub fn inject_each(
        &self,
        batch: Vec<OutboundMessage>,
    ) -> Result<Vec<Vec<Result<u64, String>>>, MtaError> {
        let signed = self.sign_ahead(batch, self.inner.clock.now_ms() / 1000)?;
        self.queue_signed(signed.messages)
    }

    /// DKIM-sign a batch for injection in the second `at_s` (on every core; callable from any
    /// thread): a virtual run signs its next batch while the sessions deliver the last one. A
    /// batch with a recipient without a domain is refused whole, unsigned.
    pub fn sign_ahead(
        &self,
        mut batch: Vec<OutboundMessage>,
        at_s: u64,
    ) -> Result<SignedBatch, MtaError> {
        refuse_domainless(&batch)?;
        let unsigned_at: Vec<usize> = batch.iter().map(|m| m.body.len()).collect();
        batch = sign_all(
            &self.inner.signers,
            batch,
            at_s,
            self.inner.witness.get().map(|w| &**w),
        )?;
        let unsigned_at = batch
            .iter()
            .zip(unsigned_at)
            .map(|(m, len)| m.body.len() - len)
            .collect();
        Ok(SignedBatch {
            messages: batch,
            at_s,
            unsigned_at,
        })
    }

    /// [`Mta::inject`] for a batch [`Mta::sign_ahead`] signed. One signed for another second
    /// than the clock's is signed again (its signatures' `t=` must be the injection's).
    pub fn inject_signed(&self, batch: SignedBatch) -> Result<Vec<u64>, MtaError> {
        // Only sign_ahead makes a SignedBatch: its recipients all have a domain.
        let now_s = self.inner.clock.now_ms() / 1000;
        let signed = if batch.at_s == now_s {
            batch.messages
        } else {
            tracing::debug!(
                signed_for = batch.at_s,
                now_s,
                "a batch signed ahead for another second is signed again"
            );
            let mut unsigned = batch.messages;
            for (m, at) in unsigned.iter_mut().zip(&batch.unsigned_at) {
                m.body.drain(..*at);
            }
            self.sign_ahead(unsigned, now_s)?.messages
        };
        self.queue_signed(signed).map(queue_ids)
    }

    /// Spool and queue signed messages (recipients on the suppression list are not queued):
    /// per message and recipient, the queue id or the suppression list's reason.
    fn queue_signed(
        &self,
        signed: Vec<OutboundMessage>,
    ) -> Result<Vec<Vec<Result<u64, String>>>, MtaError> {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        // Recipients on the suppression list are not queued (and get no queue id).
        let mut suppressed = Vec::new();
        let mut kept: Vec<Vec<String>> = Vec::with_capacity(signed.len());
        // Per message and recipient: the queue id (filled in below) or the suppression reason.
        let mut answers: Vec<Vec<Result<u64, String>>> = Vec::with_capacity(signed.len());
        for m in &signed {
            let mut k = Vec::with_capacity(m.rcpts.len());
            let mut a = Vec::with_capacity(m.rcpts.len());
            for rcpt in &m.rcpts {
                // An unsubscribe is from marketing: transactional mail (a password reset) still
                // goes; bounces and complaints stop every lane.
                let reason = inner
                    .suppression
                    .reason(rcpt)
                    .filter(|r| m.lane.is_bulk() || !crate::suppression::is_unsubscribe(r));
                match reason {
                    Some(reason) => {
                        a.push(Err(reason.clone()));
                        suppressed.push((m.message_id.clone(), rcpt.clone(), reason));
                    }
                    None => {
                        a.push(Ok(0));
                        k.push(rcpt.clone());
                    }
                }
            }
            kept.push(k);
            answers.push(a);
        }
        // Queue ids are reserved before the spool write: they are part of each envelope.
        let envelopes: Vec<SpoolEnvelope> = {
            let mut st = inner.state.lock().expect("mta state");
            signed
                .iter()
                .zip(&kept)
                .filter(|(_, k)| !k.is_empty())
                .map(|(m, k)| {
                    let first_id = st.next_id;
                    st.next_id += k.len() as u64;
                    SpoolEnvelope {
                        first_id,
                        from: m.from.clone(),
                        rcpts: k.clone(),
                        message_id: m.message_id.clone(),
                        injected_ms: now,
                        about: None,
                        lane: m.lane,
                        campaign: m.campaign,
                    }
                })
                .collect()
        };
        let entries: Vec<(&SpoolEnvelope, &[u8])> = envelopes
            .iter()
            .zip(
                signed
                    .iter()
                    .zip(&kept)
                    .filter(|(_, k)| !k.is_empty())
                    .map(|(m, _)| m.body.as_slice()),
            )
            .collect();
        let refs = inner.spool.write_batch(&entries)?;
        // The queued recipients' ids, in message and recipient order.
        let mut ids = Vec::new();
        let mut st = inner.state.lock().expect("mta state");
        for (message_id, rcpt, reason) in suppressed {
            inner.events.emit(Event::Suppressed {
                message_id,
                rcpt: rcpt.clone(),
                domain: domain_of(&rcpt),
                reason,
            });
        }
        for ((envelope, body), spool) in entries.iter().zip(refs) {
            inner.spool.retain(&spool, envelope.rcpts.len() - 1);
            for (i, rcpt) in envelope.rcpts.iter().enumerate() {
                let entry = self.entry_for(envelope, i, spool);
                inner.events.emit(Event::Injected {
                    msg: entry.id,
                    message_id: envelope.message_id.clone(),
                    from: envelope.from.clone(),
                    rcpt: rcpt.clone(),
                    domain: entry.domain.clone(),
                    size: body.len() as u64,
                    lane: lane_word(envelope.lane),
                    campaign: envelope.campaign,
                });
                ids.push(entry.id);
                st.queue.insert(entry);
            }
        }
        inner.queued.send_replace(st.queue.len());
        drop(st);
        inner.wake.notify_one();
        let mut ids = ids.into_iter();
        for id in answers.iter_mut().flatten().flatten() {
            *id = ids.next().unwrap_or_default();
        }
        Ok(answers)
    }

    /// The queue entry for recipient `i` of a spooled envelope.
    fn entry_for(&self, envelope: &SpoolEnvelope, i: usize, spool: SpoolRef) -> QueueEntry {
        let id = envelope.first_id + i as u64;
        let rcpt = envelope.rcpts[i].clone();
        let from = if self.inner.cfg.verp && !envelope.from.is_empty() {
            verp_address(
                &envelope.from,
                id,
                &rcpt,
                self.inner.cfg.verp_key.as_deref(),
            )
        } else {
            envelope.from.clone()
        };
        QueueEntry {
            id,
            message_id: envelope.message_id.clone(),
            from,
            domain: domain_of(&rcpt),
            rcpt,
            spool,
            injected_ms: envelope.injected_ms,
            attempts: 0,
            lane: envelope.lane,
        }
    }

    /// After a restart: queue again every spooled recipient that the event log (`records`, this
    /// MTA's log) does not show as final, with its attempts and next retry. A recipient whose
    /// injection never reached the log is announced now. Call before [`Mta::run`].
    pub fn recover(
        &self,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<RecoveryReport, MtaError> {
        let inner = &self.inner;
        let mut finals = HashSet::new();
        let mut announced = HashSet::new();
        let mut retry: HashMap<u64, (u32, u64)> = HashMap::new();
        let mut max_id = 0u64;
        for r in records {
            match r.event {
                Event::Injected { msg, .. } | Event::DsnQueued { msg, .. } => {
                    announced.insert(msg);
                    max_id = max_id.max(msg);
                }
                Event::Delivered { msg, .. }
                | Event::Bounced { msg, .. }
                | Event::Expired { msg, .. } => {
                    finals.insert(msg);
                }
                Event::Deferred {
                    msg,
                    attempts,
                    retry_at_ms,
                    ..
                } => {
                    retry.insert(msg, (attempts, retry_at_ms));
                }
                _ => {}
            }
        }
        let recovered = inner.spool.recover()?;
        let mut report = RecoveryReport::default();
        let mut st = inner.state.lock().expect("mta state");
        for Recovered { spool, envelope } in recovered {
            let n = envelope.rcpts.len();
            max_id = max_id.max(envelope.first_id + n as u64 - 1);
            inner.spool.retain(&spool, n.saturating_sub(1));
            for i in 0..n {
                let mut entry = self.entry_for(&envelope, i, spool);
                if finals.contains(&entry.id) {
                    report.final_ += 1;
                    inner.spool.release(&spool);
                    continue;
                }
                if !announced.contains(&entry.id) {
                    report.announced += 1;
                    match envelope.about {
                        Some(about) => inner.events.emit(Event::DsnQueued {
                            msg: entry.id,
                            about,
                            to: entry.rcpt.clone(),
                            reason: "recovered".into(),
                        }),
                        None => inner.events.emit(Event::Injected {
                            msg: entry.id,
                            message_id: entry.message_id.clone(),
                            from: envelope.from.clone(),
                            rcpt: entry.rcpt.clone(),
                            domain: entry.domain.clone(),
                            size: u64::from(spool.len),
                            lane: lane_word(envelope.lane),
                            campaign: envelope.campaign,
                        }),
                    }
                }
                report.requeued += 1;
                match retry.get(&entry.id) {
                    Some(&(attempts, due)) => {
                        entry.attempts = attempts;
                        st.queue.insert_waiting(entry, due);
                    }
                    None => st.queue.insert(entry),
                }
            }
        }
        st.next_id = st.next_id.max(max_id + 1);
        inner.queued.send_replace(st.queue.len());
        drop(st);
        inner.wake.notify_one();
        Ok(report)
    }

    /// Run the dispatcher until `shutdown` resolves; then wait for open sessions to end.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let mut sessions = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        // A durable spool deletes finished segments after the log has the events on disk.
        let reclaiming = self.inner.spool.durability() == mailsim_events::Durability::EveryBatch;
        let mut reclaim = tokio::time::interval(RECLAIM_INTERVAL);
        reclaim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = self.inner.clock.now_ms();
            let next_due = {
                let mut st = self.inner.state.lock().expect("mta state");
                st.queue.promote_due(now);
                let wanted: Vec<(String, usize)> = st
                    .queue
                    .ready_domains()
                    .map(|(d, n)| (d.to_string(), n))
                    .collect();
                for (domain, ready) in wanted {
                    let active = st.active.get(&domain).copied().unwrap_or(0);
                    let per_conn = self
                        .rule(&st, &domain)
                        .and_then(|r| r.messages_per_connection)
                        .unwrap_or(self.inner.cfg.msgs_per_conn_max);
                    let per_conn = per_conn.max(1);
                    let window = self.window_limit(&st, &domain);
                    let (want, want_transactional) = match self.inner.cfg.lanes {
                        None => (ready.div_ceil(per_conn).max(1).min(window), 0),
                        // Transactional mail has its own sessions; the window serves the
                        // rest (and takes transactional mail first when it finds some).
                        Some(lanes) => {
                            let t = st.queue.ready_transactional(&domain);
                            (
                                (ready - t).div_ceil(per_conn).min(window),
                                t.div_ceil(per_conn).min(lanes.transactional_conns.max(1)),
                            )
                        }
                    };
                    for _ in active..want {
                        *st.active.entry(domain.clone()).or_insert(0) += 1;
                        let conn = st.next_conn;
                        st.next_conn += 1;
                        let mta = self.clone();
                        let domain = domain.clone();
                        sessions.spawn(async move { mta.session(domain, conn, false).await });
                    }
                    let up = st.active_transactional.get(&domain).copied().unwrap_or(0);
                    for _ in up..want_transactional {
                        *st.active_transactional.entry(domain.clone()).or_insert(0) += 1;
                        let conn = st.next_conn;
                        st.next_conn += 1;
                        let mta = self.clone();
                        let domain = domain.clone();
                        sessions.spawn(async move { mta.session(domain, conn, true).await });
                    }
                }
                st.queue.next_due_ms()
            };
            let sleep = match next_due {
                Some(due) => Duration::from_millis(due.saturating_sub(now).max(1)),
                None => Duration::from_secs(3600),
            };
            // `biased`: branches are polled in order, never at random, so a virtual run
            // replays exactly.
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = reclaim.tick(), if reclaiming => self.reclaim().await,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        while sessions.join_next().await.is_some() {}
        if reclaiming {
            self.reclaim().await;
        }
    }

    /// Make the log durable, then delete the spool segments its events made final.
    async fn reclaim(&self) {
        if !self.inner.spool.has_dead() {
            return;
        }
        let mta = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if mta.inner.events.flush().is_ok() {
                mta.inner.spool.collect();
            }
        })
        .await;
    }

    /// The next ready entry of `domain` (transactional first; with `transactional`, no other).
    fn take(&self, domain: &str, transactional: bool) -> Option<QueueEntry> {
        let mut st = self.inner.state.lock().expect("mta state");
        let entry = st.queue.take_ready(domain, transactional);
        let mark = self.inner.ready_mark.load(Ordering::Relaxed);
        if mark > 0 && st.queue.ready_places() < mark {
            self.inner.ready_mark.store(0, Ordering::Relaxed);
            self.inner.ready_low.notify_one();
        }
        entry
    }

    /// Return when fewer than `n` places are left on the ready lists (every destination's,
    /// a held one's too), woken by the sessions taking entries. A virtual run injects its next
    /// batch then: the sessions never run dry while a campaign is injected, and the wake-up
    /// comes from the runtime's own tasks, so it falls at the same point in every run. One
    /// waiter at a time (a second one's mark replaces the first's).
    pub async fn ready_below(&self, n: usize) {
        /// Nobody waits once the wait ends, returned or dropped.
        struct Unmark<'a>(&'a AtomicUsize);
        impl Drop for Unmark<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Relaxed);
            }
        }
        let _unmark = Unmark(&self.inner.ready_mark);
        loop {
            let low = self.inner.ready_low.notified();
            {
                let st = self.inner.state.lock().expect("mta state");
                if st.queue.ready_places() < n {
                    return;
                }
                self.inner.ready_mark.store(n, Ordering::Relaxed);
            }
            low.await;
        }
    }

    /// Hand over to the connector the bodies of the entries [`Mta::take`] would give next (as
    /// many as it looks ahead), left in the queue and kept read for the session that takes
    /// them.
    fn read_next(&self, domain: &str, transactional: bool) {
        let n = self.inner.connector.looks_ahead();
        if n == 0 {
            return;
        }
        let next: Vec<(u64, String, String, crate::spool::SpoolRef)> = {
            let st = self.inner.state.lock().expect("mta state");
            st.queue
                .peek_ready(domain, transactional, n)
                .map(|e| (e.id, e.from.clone(), e.rcpt.clone(), e.spool))
                .collect()
        };
        for (id, from, rcpt, spool) in next {
            if self
                .inner
                .read_ahead
                .lock()
                .expect("bodies read ahead")
                .iter()
                .any(|(at, _)| *at == id)
            {
                continue;
            }
            let body = self.hand_over(&from, &rcpt, &spool);
            let mut kept = self.inner.read_ahead.lock().expect("bodies read ahead");
            if kept.len() >= READ_AHEAD_MAX {
                kept.pop_front();
            }
            kept.push_back((id, body));
        }
    }

    /// The message of an entry about to be sent, read and handed over to the connector
    /// ([`Connector::will_send`]) when it looks ahead and the receiver will not surely refuse
    /// it; None otherwise, and when the read fails: the transaction reads it again if the
    /// server asks for it, so a spool failure shows the same way in every run (at the 354).
    fn hand_over(&self, from: &str, rcpt: &str, spool: &SpoolRef) -> Option<Vec<u8>> {
        let connector = &self.inner.connector;
        if connector.looks_ahead() == 0 || connector.will_refuse(from, rcpt) {
            return None;
        }
        let body = self.inner.spool.read(spool).ok()?;
        connector.will_send(from, &body);
        Some(body)
    }

    /// The body of queue entry `id` if it was read ahead of its turn (forgotten as taken);
    /// Some(None) if it was left unread.
    fn taken_ahead(&self, id: u64) -> Option<Option<Vec<u8>>> {
        let mut kept = self.inner.read_ahead.lock().expect("bodies read ahead");
        let at = kept.iter().position(|(at, _)| *at == id)?;
        kept.remove(at).map(|(_, body)| body)
    }

    /// The shaping rule for `domain`, if one matches (by name, or by its MX hosts once known).
    fn rule<'s>(&'s self, st: &State, domain: &str) -> Option<&'s Rule> {
        let mx = st.mx_names.get(domain).map_or(&[][..], |v| v.as_slice());
        self.inner.cfg.shaping.rule_for(domain, mx)
    }

    /// The most connections `domain` may ever have: the MTA's limit, or its shaping rule's.
    fn window_max(&self, st: &State, domain: &str) -> usize {
        let max = self.inner.cfg.conns_per_domain_max.max(1);
        self.rule(st, domain)
            .and_then(|r| r.connection_limit)
            .map_or(max, |n| n.clamp(1, max))
    }

    /// The connections `domain` may have at once now. Where rules match by MX host names,
    /// one until the destination's MX hosts are known.
    fn window_limit(&self, st: &State, domain: &str) -> usize {
        if self.inner.cfg.shaping.by_mx() && !st.mx_names.contains_key(domain) {
            return 1;
        }
        let max = self.window_max(st, domain);
        st.windows
            .get(domain)
            .map_or_else(|| self.initial_window(max), |w| w.limit.min(max))
    }

    fn initial_window(&self, max: usize) -> usize {
        self.inner
            .cfg
            .conns_per_domain_initial
            .map_or(max, |n| n.clamp(1, max))
    }

    /// Other sessions to `domain` still up (connecting or sending) besides this one.
    fn others_up(&self, domain: &str) -> usize {
        let st = self.inner.state.lock().expect("mta state");
        let up = |m: &HashMap<String, usize>| m.get(domain).copied().unwrap_or(0);
        (up(&st.active) + up(&st.active_transactional)).saturating_sub(1)
    }

    /// One outbound connection for `domain`: route, connect (MX in preference order), then
    /// deliver ready messages one transaction after another until none are left. A
    /// `transactional` session (lanes) takes transactional mail only and is outside the
    /// destination's window: it neither counts in it nor moves it.
    async fn session(&self, domain: String, conn: u64, transactional: bool) {
        let end = self.session_inner(&domain, conn, transactional).await;
        let mut st = self.inner.state.lock().expect("mta state");
        if transactional {
            if let Some(n) = st.active_transactional.get_mut(&domain) {
                *n = n.saturating_sub(1);
            }
            drop(st);
            self.inner.wake.notify_one();
            return;
        }
        let others = st
            .active
            .get(&domain)
            .copied()
            .unwrap_or(0)
            .saturating_sub(1);
        if let Some(n) = st.active.get_mut(&domain) {
            *n = n.saturating_sub(1);
        }
        let max = self.window_max(&st, &domain);
        let initial = self.initial_window(max);
        let ready = st.queue.ready_domains().any(|(d, n)| d == domain && n > 0);
        let window = st
            .windows
            .entry(domain.clone())
            .or_insert_with(|| Window::new(initial));
        let old = window.limit;
        let refused = matches!(end, SessionEnd::Refused(_));
        let cause = match end {
            // Positive feedback: a window's worth of good sessions, and mail still waiting.
            SessionEnd::Good => {
                window.good += 1;
                let needed = window.limit.max(window.probe_after);
                if window.good >= needed && window.limit < max && ready {
                    window.limit += 1;
                    window.good = 0;
                    window.raised = true;
                    Some(format!("{needed} good sessions"))
                } else {
                    None
                }
            }
            // Negative feedback: one less, and for a refusal no more than the sessions still up.
            SessionEnd::Refused(why) | SessionEnd::Lost(why) => {
                if window.raised {
                    window.probe_after = (window.probe_after.max(window.limit) * 2).min(1 << 12);
                }
                window.raised = false;
                window.good = 0;
                window.limit = if refused {
                    (old - 1).min(others)
                } else {
                    old - 1
                }
                .max(1);
                Some(why)
            }
            SessionEnd::Other => None,
        };
        let new = window.limit;
        drop(st);
        if let Some(cause) = cause
            && new != old
        {
            self.inner.events.emit(Event::Concurrency {
                domain: domain.clone(),
                old: old as u64,
                new: new as u64,
                cause,
            });
        }
        self.inner.wake.notify_one();
    }

    async fn session_inner(&self, domain: &str, conn: u64, transactional: bool) -> SessionEnd {
        let inner = &self.inner;
        let hosts = match inner.resolver.route(domain).await {
            Ok(hosts) => {
                inner.state.lock().expect("mta state").mx_names.insert(
                    domain.to_string(),
                    hosts.iter().map(|h| h.name.clone()).collect(),
                );
                inner.events.emit(Event::DnsAnswer {
                    domain: domain.to_string(),
                    qtype: "MX".into(),
                    answer: hosts
                        .iter()
                        .map(|h| {
                            let addrs: Vec<String> =
                                h.addrs.iter().map(|a| a.to_string()).collect();
                            format!("{} {} {}", h.preference, h.name, addrs.join(","))
                        })
                        .collect(),
                    error: None,
                });
                hosts
            }
            Err(e) => {
                inner.events.emit(Event::DnsAnswer {
                    domain: domain.to_string(),
                    qtype: "MX".into(),
                    answer: vec![],
                    error: Some(e.to_string()),
                });
                // Fail what is ready now for this domain, in one sweep.
                while let Some(entry) = self.take(domain, transactional) {
                    let fate = match &e {
                        RouteError::Perm(m) => Fate::Perm {
                            reason: if m.contains("null MX") {
                                format!("notaccept: {m}")
                            } else {
                                format!("hostunknown: {m}")
                            },
                            reply: None,
                            hard: true,
                        },
                        RouteError::Temp(m) => Fate::Temp {
                            reason: format!("networkerror: {m}"),
                            reply: None,
                        },
                    };
                    self.settle(entry, fate, "");
                }
                return SessionEnd::Other;
            }
        };
        let sts = self.sts_policy(domain).await;
        let opened = self
            .open_session(conn, domain, &hosts, sts.as_deref())
            .await;
        let suspended = match &opened {
            Opened::Refused(r) => self.shape_reply(domain, r),
            _ => false,
        };
        let (mut client, mx) = match opened {
            Opened::Ready(client, mx) => (client, mx),
            // A shaping rule held the destination on this refusal: its mail waits, and the
            // window comes down to the sessions up, so the hold does not repeat itself.
            Opened::Refused(r) if suspended => {
                return SessionEnd::Refused(format!("greeting {} {}", r.code, r.text));
            }
            // A refusal of one connection while others are up lowers the window and leaves
            // the mail to them; only when every connection fails is the destination held.
            Opened::Refused(r) if r.code < 500 && self.others_up(domain) > 0 => {
                return SessionEnd::Refused(format!("greeting {} {}", r.code, r.text));
            }
            Opened::Failed(why) if self.others_up(domain) > 0 => {
                return SessionEnd::Refused(why.unwrap_or_else(|| NO_MX.into()));
            }
            Opened::Refused(r) => {
                self.fail_session(domain, &r, transactional);
                return SessionEnd::Other;
            }
            Opened::Failed(why) => {
                let reason = match why {
                    Some(why) => why,
                    None => format!("networkerror: {NO_MX}"),
                };
                while let Some(entry) = self.take(domain, transactional) {
                    self.settle(
                        entry,
                        Fate::Temp {
                            reason: reason.clone(),
                            reply: None,
                        },
                        "",
                    );
                }
                return SessionEnd::Other;
            }
        };
        let mut sent = 0u64;
        // A session that ends on a throttle or a server's close says nothing good of the
        // destination's capacity.
        let mut throttled = false;
        let (per_conn, rate) = {
            let st = inner.state.lock().expect("mta state");
            let rule = self.rule(&st, domain);
            (
                rule.and_then(|r| r.messages_per_connection)
                    .unwrap_or(inner.cfg.msgs_per_conn_max),
                rule.and_then(|r| r.messages_per_s),
            )
        };
        while (sent as usize) < per_conn {
            if let Some(rate) = rate
                && !self.pace(domain, rate).await
            {
                throttled = true;
                break;
            }
            let Some(entry) = self.take(domain, transactional) else {
                break;
            };
            // A message read ahead was handed over then; any other is handed over now if the
            // connector wants it. It is read for the transaction only if the server asks.
            let body = match self.taken_ahead(entry.id) {
                Some(ahead) => ahead,
                None => self.hand_over(&entry.from, &entry.rcpt, &entry.spool),
            };
            self.read_next(domain, transactional);
            let env = EnvelopeHead {
                from: &entry.from,
                rcpt: &entry.rcpt,
                size: entry.spool.len as usize,
            };
            let spool = &inner.spool;
            let spooled = entry.spool;
            let message = move || match body {
                Some(b) => Ok(b),
                None => spool
                    .read(&spooled)
                    .map_err(|e| io::Error::new(e.source.kind(), e.to_string())),
            };
            match client.transaction_reading(&env, message).await {
                Ok(outcome) => {
                    // The reply that decided the attempt (the intermediate 250s and 354 add
                    // nothing the outcome does not say).
                    self.emit_reply(
                        conn,
                        Some(entry.id),
                        outcome.decisive_command,
                        &outcome.decisive,
                    );
                    let r = &outcome.decisive;
                    let (reason, hard) = classify(r, outcome.decisive_command);
                    let backoff = r.code >= 400 && is_rate_limit(r, reason);
                    let fate = match r.code {
                        200..=299 => Fate::Delivered,
                        400..=499 => Fate::Temp {
                            reason: reason.to_string(),
                            reply: Some(SmtpReply::new(outcome.decisive_command, r)),
                        },
                        _ => Fate::Perm {
                            reason: reason.to_string(),
                            reply: Some(SmtpReply::new(outcome.decisive_command, r)),
                            hard,
                        },
                    };
                    sent += 1;
                    self.settle(entry, fate, &mx);
                    if r.code >= 400 && self.shape_reply(domain, r) {
                        throttled = true;
                        break;
                    }
                    throttled |= backoff || outcome.connection_closed;
                    if backoff {
                        self.back_off(domain, reason);
                    }
                    // A 421 after the deciding reply (to DATA after a refused recipient, to
                    // an empty message's end) closes the connection, and says of the
                    // destination what a 421 says wherever it comes.
                    if let Some((command, closing)) = outcome
                        .replies
                        .last()
                        .filter(|(_, c)| c.code == 421 && outcome.decisive.code != 421)
                    {
                        self.emit_reply(conn, None, command, closing);
                        let (reason, _) = classify(closing, command);
                        if !self.shape_reply(domain, closing)
                            && !backoff
                            && is_rate_limit(closing, reason)
                        {
                            self.back_off(domain, reason);
                        }
                    }
                    if outcome.connection_closed || backoff {
                        break;
                    }
                }
                Err(ClientError::Reset { reply, cause }) => {
                    // The server refused the RSET that went ahead of this transaction, or the
                    // connection failed before its reply: the server never began it, so the
                    // entry is not tried. The connection's other replies are unread: it is
                    // dropped, without QUIT.
                    inner
                        .state
                        .lock()
                        .expect("mta state")
                        .queue
                        .put_back(&entry);
                    let end = match reply {
                        Some(r) => {
                            self.emit_reply(conn, None, "RSET", &r);
                            SessionEnd::Other
                        }
                        None => SessionEnd::Lost(format!("connection lost: {cause}")),
                    };
                    inner.events.emit(Event::ConnClosed {
                        conn,
                        messages: sent,
                    });
                    return end;
                }
                Err(e) => {
                    // A spool failing in the middle of DATA ends the connection too, but says
                    // nothing of the destination.
                    let (reason, end) = match &e {
                        ClientError::Message(source) => {
                            (format!("spool: {source}"), SessionEnd::Other)
                        }
                        _ => (
                            format!("connection: {e}"),
                            SessionEnd::Lost(format!("connection lost: {e}")),
                        ),
                    };
                    self.settle(
                        entry,
                        Fate::Temp {
                            reason,
                            reply: None,
                        },
                        &mx,
                    );
                    inner.events.emit(Event::ConnClosed {
                        conn,
                        messages: sent,
                    });
                    return end;
                }
            }
        }
        inner.events.emit(Event::ConnClosed {
            conn,
            messages: sent,
        });
        client.quit().await;
        if sent > 0 && !throttled {
            SessionEnd::Good
        } else {
            SessionEnd::Other
        }
    }

    /// Wait for the destination's next slot under its shaping rule's message rate.
    /// A wait longer than this is not spent holding a connection open: the destination is
    /// held until its slot and the session ends.
    const PACE_IN_SESSION_US: u64 = 2_000_000;

    /// Wait for the destination's next slot under its shaping rule's message rate; false when
    /// the slot is too far off to wait in the session (the destination is held until then).
    async fn pace(&self, domain: &str, per_s: f64) -> bool {
        let interval_us = (1e6 / per_s).clamp(0.0, 1e15) as u64;
        let now_us = self.inner.clock.now_ms().saturating_mul(1000);
        let wait = {
            let mut st = self.inner.state.lock().expect("mta state");
            let next = st.next_slot_us.get(domain).copied().unwrap_or(now_us);
            let slot = next.max(now_us);
            let wait = slot - now_us;
            if wait > Self::PACE_IN_SESSION_US {
                st.queue.hold_domain(domain, slot.div_ceil(1000));
                return false;
            }
            st.next_slot_us
                .insert(domain.to_string(), slot.saturating_add(interval_us));
            wait
        };
        if wait > 0 {
            tokio::time::sleep(Duration::from_micros(wait)).await;
        }
        true
    }

    /// A reply from `domain` that its shaping rule acts on: lower its connection window and
    /// or hold it (said with `concurrency` and `backoff` events). True when it is held.
    fn shape_reply(&self, domain: &str, r: &Reply) -> bool {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let mut st = inner.state.lock().expect("mta state");
        let Some(rule) = self.rule(&st, domain) else {
            return false;
        };
        let Some(action) = rule.action_for(r.code, r.enhanced.as_deref(), &r.text) else {
            return false;
        };
        let cause = format!("shaping: the reply matched {:?}", action.pattern);
        let mut moved = None;
        if let Some(n) = action.connection_limit {
            let max = self.window_max(&st, domain);
            let initial = self.initial_window(max);
            let w = st
                .windows
                .entry(domain.to_string())
                .or_insert_with(|| Window::new(initial));
            if w.limit > n {
                moved = Some((w.limit, n.max(1)));
                w.limit = n.max(1);
                w.good = 0;
                w.raised = false;
            }
        }
        let until = action.suspend_s.map(|secs| {
            let until = now.saturating_add(secs.saturating_mul(1000));
            st.queue.hold_domain(domain, until);
            until
        });
        drop(st);
        if let Some((old, new)) = moved {
            inner.events.emit(Event::Concurrency {
                domain: domain.to_string(),
                old: old as u64,
                new: new as u64,
                cause: cause.clone(),
            });
        }
        if let Some(until_ms) = until {
            inner.events.emit(Event::Backoff {
                domain: domain.to_string(),
                until_ms,
                reason: cause,
            });
        }
        until.is_some()
    }

    /// Hold a whole destination for `destination_backoff_s` and say so.
    fn back_off(&self, domain: &str, reason: &str) {
        let inner = &self.inner;
        let until = inner.clock.now_ms() + inner.cfg.destination_backoff_s * 1000;
        inner
            .state
            .lock()
            .expect("mta state")
            .queue
            .hold_domain(domain, until);
        inner.events.emit(Event::Backoff {
            domain: domain.to_string(),
            until_ms: until,
            reason: reason.to_string(),
        });
    }

    /// A server refused the whole session (bad greeting): defer or bounce what is ready.
    fn fail_session(&self, domain: &str, r: &Reply, transactional: bool) {
        let mut batch = Vec::new();
        while let Some(e) = self.take(domain, transactional) {
            batch.push(e);
        }
        let (reason, hard) = classify(r, "CONNECT");
        for entry in batch {
            let reply = Some(SmtpReply::new("CONNECT", r));
            let fate = if r.code >= 500 {
                Fate::Perm {
                    reason: reason.into(),
                    reply,
                    hard,
                }
            } else {
                Fate::Temp {
                    reason: reason.into(),
                    reply,
                }
            };
            self.settle(entry, fate, "");
        }
        if r.code < 500 {
            self.back_off(domain, reason);
        }
    }

    /// Connect and greet, MX host by host in preference order (hosts of equal preference in
    /// an order drawn for this connection): a host that cannot be reached, does not greet in
    /// time, refuses the session or fails the destination's TLS policy is skipped for the next
    /// one.
    async fn open_session(
        &self,
        conn: u64,
        domain: &str,
        hosts: &[MxHost],
        sts: Option<&StsPolicy>,
    ) -> Opened<C::Stream> {
        let inner = &self.inner;
        let mode = {
            let st = inner.state.lock().expect("mta state");
            self.rule(&st, domain)
                .and_then(|r| r.tls)
                .unwrap_or(inner.cfg.tls)
        };
        let sts = sts.filter(|p| p.mode != StsMode::None);
        let mut refusal = None;
        let mut tls_failure = None;
        for host in crate::dns::connection_order(hosts, conn) {
            let tls = TlsPlan {
                conn,
                domain,
                mx: &host.name,
                mode,
                sts,
            };
            // Under enforce, a host the policy does not name gets no connection (RFC 8461
            // section 4.1); under testing, the session's event says so (`secure`).
            if let Some(p) = sts
                && p.mode == StsMode::Enforce
                && !p.allows(&host.name)
            {
                let why = format!("{} is not an mx of the domain's MTA-STS policy", host.name);
                self.tls_event(
                    &tls,
                    "",
                    TlsFacts::failed("validation-failure", &why),
                    "skipped",
                );
                tls_failure = Some(format!("failedstarttls: sts-enforce: {why}"));
                continue;
            }
            for ip in &host.addrs {
                let addr = SocketAddr::new(*ip, inner.cfg.remote_port);
                // After a failed handshake, opportunistic TLS tries the host again in clear.
                let mut clear = false;
                loop {
                    let attempt = tokio::time::timeout(
                        inner.cfg.timeouts.connect,
                        inner.connector.connect(addr),
                    )
                    .await;
                    let stream = match attempt {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            self.conn_failed(domain, &host.name, addr, e.to_string());
                            break;
                        }
                        Err(_) => {
                            self.conn_failed(domain, &host.name, addr, "connect timed out".into());
                            break;
                        }
                    };
                    inner.events.emit(Event::ConnOpened {
                        conn,
                        domain: domain.to_string(),
                        mx: host.name.clone(),
                        addr: addr.to_string(),
                    });
                    let mut client = SmtpClient::new(MaybeTls::Plain(stream), inner.cfg.timeouts);
                    let replies = match client.handshake(&inner.cfg.hostname).await {
                        Ok(replies) => replies,
                        Err(e) => {
                            tracing::debug!(
                                domain,
                                conn,
                                "handshake with {} failed: {e}",
                                host.name
                            );
                            inner.events.emit(Event::ConnClosed { conn, messages: 0 });
                            self.conn_failed(domain, &host.name, addr, format!("handshake: {e}"));
                            break;
                        }
                    };
                    let mut refused = self.refusal(conn, &replies);
                    let secured = match refused {
                        Some(_) => Secured::Clear,
                        None if clear => Secured::Clear,
                        None => self.secure(&mut client, &tls, addr).await,
                    };
                    match secured {
                        Secured::Clear => {}
                        Secured::Refused(r) => refused = Some(r),
                        Secured::Skip(why) => {
                            inner.events.emit(Event::ConnClosed { conn, messages: 0 });
                            client.quit().await;
                            tls_failure = Some(why);
                            break;
                        }
                        Secured::RetryClear => {
                            inner.events.emit(Event::ConnClosed { conn, messages: 0 });
                            clear = true;
                            continue;
                        }
                        Secured::Lost(e) => {
                            inner.events.emit(Event::ConnClosed { conn, messages: 0 });
                            self.conn_failed(domain, &host.name, addr, e);
                            break;
                        }
                    }
                    match refused {
                        None => return Opened::Ready(client, host.name.clone()),
                        Some(r) => {
                            inner.events.emit(Event::ConnClosed { conn, messages: 0 });
                            client.quit().await;
                            refusal = Some(r);
                            break;
                        }
                    }
                }
            }
        }
        match refusal {
            Some(r) => Opened::Refused(r),
            None => Opened::Failed(tls_failure),
        }
    }

    /// The greeting, EHLO and HELO replies that refuse the session, recorded (a 220/250 on
    /// every connection is noise).
    fn refusal(&self, conn: u64, replies: &[(&'static str, Reply)]) -> Option<Reply> {
        let mut refused = None;
        for (cmd, r) in replies {
            if r.code / 100 != 2 {
                self.emit_reply(conn, None, cmd, r);
                if *cmd == "CONNECT" || *cmd == "HELO" {
                    refused = Some(r.clone());
                }
            }
        }
        refused
    }

    /// STARTTLS on a greeted session as the destination's policy asks, and the `tls` event.
    async fn secure(
        &self,
        client: &mut SmtpClient<MaybeTls<C::Stream>>,
        tls: &TlsPlan<'_>,
        addr: SocketAddr,
    ) -> Secured {
        let inner = &self.inner;
        let enforce = tls.sts.is_some_and(|p| p.mode == StsMode::Enforce);
        // Mail goes only over TLS: a required destination, or an enforced MTA-STS policy.
        let must = enforce || tls.mode == TlsMode::Required;
        if tls.mode == TlsMode::Off && tls.sts.is_none() {
            return Secured::Clear;
        }
        let failed = |this: &Self, facts: TlsFacts, retry: bool| {
            let why = format!(
                "failedstarttls: {}: {} ({})",
                tls.policy(),
                facts.result,
                facts.detail.as_deref().unwrap_or("")
            );
            let outcome = if must {
                "skipped"
            } else if retry {
                "retry-clear"
            } else {
                "clear"
            };
            this.tls_event(tls, &addr.to_string(), facts, outcome);
            if must {
                Secured::Skip(why)
            } else if retry {
                Secured::RetryClear
            } else {
                Secured::Clear
            }
        };
        if !client.caps.starttls {
            let detail = format!("{} does not offer STARTTLS", tls.mx);
            return failed(
                self,
                TlsFacts::failed("starttls-not-supported", &detail),
                false,
            );
        }
        match client
            .starttls(&inner.cfg.tls_client, tls.mx, &inner.cfg.hostname)
            .await
        {
            Ok(StartTls::Done {
                params,
                certificate,
                replies,
            }) => {
                let cert = match &certificate {
                    Ok(()) => "ok".to_string(),
                    Err(p) => p.result_type().to_string(),
                };
                let mut facts = TlsFacts {
                    result: "success".into(),
                    params: params.to_string(),
                    certificate: cert,
                    detail: None,
                };
                // MTA-STS wants a certificate valid for the MX name under trusted roots, and
                // (testing mode gets here with any MX) an MX the policy names.
                if tls.sts.is_some()
                    && let Err(p) = &certificate
                {
                    facts.result = p.result_type().into();
                    facts.detail = Some(format!("{}'s certificate: {p}", tls.mx));
                    if enforce {
                        return failed(self, facts, false);
                    }
                } else if tls.sts.is_some_and(|p| !p.allows(tls.mx)) {
                    facts.result = "validation-failure".into();
                    facts.detail = Some(format!(
                        "{} is not an mx of the domain's MTA-STS policy",
                        tls.mx
                    ));
                }
                self.tls_event(tls, &addr.to_string(), facts, "encrypted");
                match self.refusal(tls.conn, &replies) {
                    Some(r) => Secured::Refused(r),
                    None => Secured::Clear,
                }
            }
            Ok(StartTls::Refused(r)) => {
                self.emit_reply(tls.conn, None, "STARTTLS", &r);
                let detail = format!("STARTTLS answered {} {}", r.code, r.text);
                failed(
                    self,
                    TlsFacts::failed("starttls-not-supported", &detail),
                    false,
                )
            }
            // The handshake itself failed: the connection is gone, TLS did not happen.
            Err(e @ mailsim_smtp::client::ClientError::Tls(_)) => failed(
                self,
                TlsFacts::failed("validation-failure", &e.to_string()),
                true,
            ),
            // Lost or timed out around the handshake (waiting for the 220, or the EHLO inside
            // TLS): a connection failure, not a TLS one.
            Err(e) => Secured::Lost(format!("STARTTLS: {e}")),
        }
    }

    fn tls_event(&self, tls: &TlsPlan<'_>, addr: &str, facts: TlsFacts, outcome: &str) {
        self.inner.events.emit(Event::Tls {
            conn: tls.conn,
            domain: tls.domain.to_string(),
            mx: tls.mx.to_string(),
            addr: addr.to_string(),
            policy: tls.policy().to_string(),
            result: facts.result,
            params: facts.params,
            certificate: facts.certificate,
            outcome: outcome.to_string(),
            why: facts.detail,
        });
    }

    /// The MTA-STS policy of `domain` (RFC 8461 section 5): from the cache while its TXT
    /// record was asked recently; else the TXT record, and the policy fetched when its `id` is
    /// new. A policy that cannot be fetched leaves the cached one in force until it expires,
    /// and none means delivery as without MTA-STS.
    async fn sts_policy(&self, domain: &str) -> Option<Arc<StsPolicy>> {
        let inner = &self.inner;
        // An address literal names no domain to publish a policy (RFC 8461 section 4.1 reads
        // the recipient's domain).
        if !inner.cfg.mta_sts || mailsim_smtp::server::address_literal(domain).is_some() {
            return None;
        }
        // (the policy while it applies, whether the entry is fresh, its expiry): an entry is
        // fresh while its TXT record was asked recently and the policy it had, if any, has
        // not expired (an expired policy is looked up again at once, never dropped silently).
        let cached = |now: u64| {
            let st = inner.state.lock().expect("mta state");
            st.sts.get(domain).map(|e| {
                let live = now < e.expires_ms;
                (
                    e.policy.clone().filter(|_| live),
                    now < e.recheck_ms && (e.policy.is_none() || live),
                    e.expires_ms,
                )
            })
        };
        if let Some((policy, true, _)) = cached(inner.clock.now_ms()) {
            return policy;
        }
        let lock = inner
            .sts_lookups
            .lock()
            .expect("mta state")
            .entry(domain.to_string())
            .or_default()
            .clone();
        let _one = lock.lock().await;
        let now = inner.clock.now_ms();
        let (policy, expires_ms) = match cached(now) {
            Some((policy, true, _)) => return policy,
            Some((policy, false, expires)) => (policy, expires),
            None => (None, 0),
        };
        let id = match inner.resolver.txt(&format!("_mta-sts.{domain}")).await {
            // RFC 8461 section 3.1: of the records that start with "v=STSv1", exactly one.
            crate::dns::Answer::Records(records) => {
                let ours: Vec<&String> = records
                    .iter()
                    .filter(|r| r.starts_with("v=STSv1;"))
                    .collect();
                match ours.as_slice() {
                    [one] => crate::sts::record_id(one),
                    _ => None,
                }
            }
            _ => None,
        };
        let (policy, expires_ms) = match id {
            Some(id) if policy.as_ref().is_none_or(|p| p.id != id) => {
                match self.fetch_sts(domain, &id).await {
                    Ok(p) => {
                        let expires = now.saturating_add(p.max_age_s.saturating_mul(1000));
                        (Some(Arc::new(p)), expires)
                    }
                    Err(_) => (policy, expires_ms),
                }
            }
            _ => (policy, expires_ms),
        };
        inner.state.lock().expect("mta state").sts.insert(
            domain.to_string(),
            StsEntry {
                policy: policy.clone(),
                expires_ms,
                recheck_ms: now + STS_RECHECK_MS,
            },
        );
        policy
    }

    /// Fetch a policy from `mta-sts.<domain>` and record the attempt.
    async fn fetch_sts(&self, domain: &str, id: &str) -> Result<StsPolicy, String> {
        let inner = &self.inner;
        let host = format!("mta-sts.{domain}");
        let fetched = match inner.resolver.a(&host).await {
            crate::dns::Answer::Records(addrs) if !addrs.is_empty() => {
                // Each address in turn until one answers with a policy.
                let mut last = Err(String::new());
                for ip in addrs {
                    let addr = SocketAddr::new(ip, inner.cfg.sts_port);
                    last = crate::sts::fetch(
                        &inner.connector,
                        &inner.cfg.tls_client,
                        addr,
                        domain,
                        id,
                    )
                    .await;
                    if last.is_ok() {
                        break;
                    }
                }
                last
            }
            other => Err(format!(
                "sts-policy-fetch-error: {host} has no address ({other:?})"
            )),
        };
        inner.events.emit(match &fetched {
            Ok(p) => Event::StsPolicy {
                domain: domain.to_string(),
                id: id.to_string(),
                mode: p.mode.as_str().into(),
                mx_patterns: p.mx.clone(),
                max_age_s: p.max_age_s,
                text: p.text.clone(),
                error: None,
            },
            Err(e) => Event::StsPolicy {
                domain: domain.to_string(),
                id: id.to_string(),
                mode: String::new(),
                mx_patterns: vec![],
                max_age_s: 0,
                text: String::new(),
                error: Some(e.clone()),
            },
        });
        fetched
    }

    fn conn_failed(&self, domain: &str, mx: &str, addr: SocketAddr, error: String) {
        self.inner.events.emit(Event::ConnFailed {
            domain: domain.to_string(),
            mx: mx.to_string(),
            addr: addr.to_string(),
            error,
        });
    }

    fn emit_reply(&self, conn: u64, msg: Option<u64>, command: &str, r: &Reply) {
        self.inner.events.emit(Event::SmtpReply {
            conn,
            msg,
            reply: SmtpReply::new(command, r),
        });
    }

    /// Record the outcome of one attempt and update the queue.
    fn settle(&self, entry: QueueEntry, fate: Fate, mx: &str) {
        let inner = &self.inner;
        let attempts = entry.attempts + 1;
        let mut st = inner.state.lock().expect("mta state");
        let final_ = match fate {
            Fate::Delivered => {
                inner.events.emit(Event::Delivered {
                    msg: entry.id,
                    rcpt: entry.rcpt.clone(),
                    domain: entry.domain.clone(),
                    mx: mx.to_string(),
                    attempts,
                });
                true
            }
            Fate::Perm {
                reason,
                reply,
                hard,
            } => {
                let dsn = DsnFacts {
                    status: reply
                        .as_ref()
                        .and_then(|r| r.reply.enhanced.clone())
                        .unwrap_or_else(|| "5.0.0".into()),
                    diagnostic: reply
                        .as_ref()
                        .map(|r| format!("{} {}", r.reply.code, r.reply.text)),
                    remote_mta: (!mx.is_empty()).then(|| mx.to_string()),
                    explanation: "The remote server refused it permanently.",
                    reason: reason.clone(),
                };
                inner.events.emit(Event::Bounced {
                    msg: entry.id,
                    rcpt: entry.rcpt.clone(),
                    domain: entry.domain.clone(),
                    attempts,
                    reason: reason.clone(),
                    reply,
                    hard,
                });
                if hard && !entry.from.is_empty() && inner.suppression.add(&entry.rcpt, &reason) {
                    inner.events.emit(Event::SuppressionAdded {
                        rcpt: entry.rcpt.clone(),
                        reason,
                    });
                }
                self.queue_dsn(&mut st, &entry, dsn);
                true
            }
            Fate::Temp { reason, reply } => {
                let now = inner.clock.now_ms();
                match inner
                    .cfg
                    .retry
                    .next_retry_ms(attempts, entry.injected_ms, now)
                {
                    Some(due) => {
                        inner.events.emit(Event::Deferred {
                            msg: entry.id,
                            rcpt: entry.rcpt.clone(),
                            domain: entry.domain.clone(),
                            attempts,
                            retry_at_ms: due,
                            reason,
                            reply,
                        });
                        st.queue.defer(entry.id, attempts, due);
                        false
                    }
                    None => {
                        let dsn = DsnFacts {
                            status: reply
                                .as_ref()
                                .and_then(|r| r.reply.enhanced.clone())
                                .filter(|e| e.starts_with('4'))
                                .unwrap_or_else(|| "4.4.7".into()),
                            diagnostic: reply
                                .as_ref()
                                .map(|r| format!("{} {}", r.reply.code, r.reply.text)),
                            remote_mta: (!mx.is_empty()).then(|| mx.to_string()),
                            explanation: "Delivery time expired: the message could not be delivered within its lifetime.",
                            reason: "expired".into(),
                        };
                        inner.events.emit(Event::Expired {
                            msg: entry.id,
                            rcpt: entry.rcpt.clone(),
                            domain: entry.domain.clone(),
                            attempts,
                            reason,
                        });
                        self.queue_dsn(&mut st, &entry, dsn);
                        true
                    }
                }
            }
        };
        if final_ {
            st.queue.complete(entry.id);
            inner.spool.release(&entry.spool);
        }
        inner.queued.send_replace(st.queue.len());
    }
}

/// How opening a session to a destination went.
enum Opened<S> {
    Ready(SmtpClient<MaybeTls<S>>, String),
    /// Every host that answered refused the session (the last refusal).
    Refused(Reply),
    /// No host could be reached or greeted, or none met the TLS policy (why, then).
    Failed(Option<String>),
}

const NO_MX: &str = "no MX host could be reached";

/// What one MX host's session must do about TLS.
struct TlsPlan<'a> {
    conn: u64,
    domain: &'a str,
    mx: &'a str,
    mode: TlsMode,
    sts: Option<&'a StsPolicy>,
}

impl TlsPlan<'_> {
    /// The policy's name in events.
    fn policy(&self) -> &'static str {
        match self.sts.map(|p| p.mode) {
            Some(StsMode::Enforce) => "sts-enforce",
            Some(StsMode::Testing) => "sts-testing",
            _ => self.mode.as_str(),
        }
    }
}

/// What a `tls` event says of one attempt.
struct TlsFacts {
    result: String,
    params: String,
    certificate: String,
    detail: Option<String>,
}

impl TlsFacts {
    fn failed(result: &str, detail: &str) -> TlsFacts {
        TlsFacts {
            result: result.into(),
            params: String::new(),
            certificate: String::new(),
            detail: Some(detail.into()),
        }
    }
}

/// What STARTTLS left a session with.
enum Secured {
    /// Go on (encrypted or in clear, as the policy allows).
    Clear,
    /// The EHLO inside TLS refused the session.
    Refused(Reply),
    /// This host gets no mail (why).
    Skip(String),
    /// The handshake failed and the connection is lost: again in clear.
    RetryClear,
    /// The connection was lost (why): the next host.
    Lost(String),
}

/// What a DSN says about a failed queue entry.
struct DsnFacts {
    status: String,
    diagnostic: Option<String>,
    remote_mta: Option<String>,
    explanation: &'static str,
    reason: String,
}

impl<R: Resolver, C: Connector> Mta<R, C> {
    /// Queue an RFC 3464 report about `entry` to its return path (never about a report: those
    /// have the null sender). Runs under the state lock so the queue never looks empty between
    /// the failure and its report.
    fn queue_dsn(&self, st: &mut State, entry: &QueueEntry, facts: DsnFacts) {
        let inner = &self.inner;
        if entry.from.is_empty() {
            return;
        }
        let original = inner.spool.read(&entry.spool).unwrap_or_default();
        let headers_end = original
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(original.len(), |p| p + 2);
        let id = st.next_id;
        st.next_id += 1;
        let message_id = format!("dsn.{id}.{}@{}", entry.id, inner.cfg.hostname);
        let body = mailsim_bounce::build::dsn(&mailsim_bounce::build::Dsn {
            reporting_mta: &inner.cfg.hostname,
            to: &entry.from,
            recipient: &entry.rcpt,
            action: "failed",
            status: &facts.status,
            diagnostic: facts.diagnostic.as_deref(),
            remote_mta: facts.remote_mta.as_deref(),
            explanation: facts.explanation,
            original_headers: &original[..headers_end],
            message_id: &message_id,
            date_s: (inner.clock.now_ms() / 1000) as i64,
        });
        let envelope = SpoolEnvelope {
            first_id: id,
            from: String::new(),
            rcpts: vec![entry.from.clone()],
            message_id: format!("<{message_id}>"),
            injected_ms: inner.clock.now_ms(),
            about: Some(entry.id),
            lane: Lane::Bulk,
            campaign: None,
        };
        let spool = match inner.spool.write_batch(&[(&envelope, &body)]) {
            Ok(mut refs) if !refs.is_empty() => refs.remove(0),
            Ok(_) => return,
            Err(e) => {
                tracing::warn!("spooling a DSN for message {}: {e}", entry.id);
                return;
            }
        };
        let domain = domain_of(&entry.from);
        inner.events.emit(Event::DsnQueued {
            msg: id,
            about: entry.id,
            to: entry.from.clone(),
            reason: facts.reason,
        });
        st.queue.insert(QueueEntry {
            id,
            message_id: format!("<{message_id}>"),
            from: String::new(),
            rcpt: entry.from.clone(),
            domain,
            spool,
            injected_ms: inner.clock.now_ms(),
            attempts: 0,
            lane: Lane::Bulk,
        });
        inner.wake.notify_one();
    }
}

/// A batch DKIM-signed by [`Mta::sign_ahead`], for [`Mta::inject_signed`].
pub struct SignedBatch {
    messages: Vec<OutboundMessage>,
    /// The second its signatures were made for.
    at_s: u64,
    /// Where each message's own bytes start (after the signature header added).
    unsigned_at: Vec<usize>,
}

impl SignedBatch {
    pub fn messages(&self) -> &[OutboundMessage] {
        &self.messages
    }
}

/// The queue ids among [`Mta::inject_each`]'s answers, in order.
fn queue_ids(answers: Vec<Vec<Result<u64, String>>>) -> Vec<u64> {
    answers
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .collect()
}

/// A batch is refused whole, before anything is written, when a recipient has no domain.
fn refuse_domainless(batch: &[OutboundMessage]) -> Result<(), MtaError> {
    match batch.iter().flat_map(|m| &m.rcpts).find(|r| {
        !r.rsplit_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
    }) {
        Some(bad) => Err(MtaError::BadRecipient(bad.clone())),
        None => Ok(()),
    }
}

/// DKIM-sign a batch on all cores; each core tells `witness` of the Ed25519 signatures it
/// made, once per signer.
fn sign_all(
    signers: &HashMap<String, Signer>,
    batch: Vec<OutboundMessage>,
    now_s: u64,
    witness: Option<&dyn SignatureWitness>,
) -> Result<Vec<OutboundMessage>, MtaError> {
    if signers.is_empty() {
        return Ok(batch);
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(batch.len().max(1));
    let chunk = batch.len().div_ceil(threads).max(1);
    let mut batch = batch;
    let results: Vec<Result<(), MtaError>> = std::thread::scope(|s| {
        let handles: Vec<_> = batch
            .chunks_mut(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut made: HashMap<&str, (&Signer, Vec<crate::dkim::Made>)> = HashMap::new();
                    for m in part {
                        let domain = m
                            .from
                            .rsplit_once('@')
                            .map(|(_, d)| d.to_ascii_lowercase())
                            .unwrap_or_default();
                        if let Some((d, signer)) = signers.get_key_value(&domain) {
                            let (body, signature) =
                                signer.sign_witnessed(&m.body, now_s, witness.is_some())?;
                            m.body = body;
                            if let Some(signature) = signature {
                                made.entry(d)
                                    .or_insert((signer, Vec::new()))
                                    .1
                                    .push(signature);
                            }
                        }
                    }
                    if let Some(w) = witness {
                        for (signer, signatures) in made.values() {
                            if let Some(public) = signer.ed25519_public() {
                                w.signed(
                                    signer.domain(),
                                    signer.selector(),
                                    &public,
                                    signatures,
                                    now_s,
                                );
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("signing thread"))
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(batch)
}

#[cfg(test)]
mod verp_tests {
    use super::*;

    /// A tagged VERP return path names its recipient only with the key that made it; an
    /// untagged or altered one, or another key's, names nobody. The queue id and recipient
    /// still read from both forms.
    #[test]
    fn a_tagged_return_path_is_checked_with_its_key() {
        let key = VerpKey::new(&[7; 32]);
        let other = VerpKey::new(&[8; 32]);
        let rcpt = "ann-marie.o@x-y.test";
        let tagged = verp_address("news@s.test", 42, rcpt, Some(&key));
        assert!(
            tagged.starts_with("bounces+42.") && tagged.ends_with("@s.test"),
            "{tagged}"
        );
        assert_eq!(verp_signed_rcpt(&tagged, &key).as_deref(), Some(rcpt));
        assert_eq!(verp_signed_rcpt(&tagged, &other), None);
        assert_eq!(verp_rcpt(&tagged).as_deref(), Some(rcpt));
        assert_eq!(verp_id(&tagged), Some(42));
        let plain = verp_address("news@s.test", 42, rcpt, None);
        assert_eq!(plain, "bounces+42-ann-marie.o=x-y.test@s.test");
        assert_eq!(verp_signed_rcpt(&plain, &key), None);
        assert_eq!(
            (verp_rcpt(&plain).as_deref(), verp_id(&plain)),
            (Some(rcpt), Some(42))
        );
        // The tag of one recipient does not vouch for another, nor for another queue id.
        let moved = tagged.replace("ann-marie.o=x-y.test", "vip=gmail.test");
        assert_eq!(verp_signed_rcpt(&moved, &key), None);
        let renumbered = tagged.replacen("bounces+42.", "bounces+43.", 1);
        assert_eq!(verp_signed_rcpt(&renumbered, &key), None);
    }
}

#[cfg(test)]
mod sign_ahead_tests {
    use super::*;
    use crate::dns::Answer;
    use mail_auth::common::crypto::Ed25519Key;
    use mailsim_events::{EventLog, RuntimeClock};

    /// No DNS: injecting looks nothing up.
    struct NoDns;

    impl crate::dns::Lookups for NoDns {
        async fn mx(&self, _: &str) -> Answer<(u16, String)> {
            Answer::NoRecords
        }
        async fn a(&self, _: &str) -> Answer<IpAddr> {
            Answer::NoRecords
        }
        async fn txt(&self, _: &str) -> Answer<String> {
            Answer::NoRecords
        }
    }

    fn message(i: u32) -> OutboundMessage {
        OutboundMessage {
            from: "news@s.test".into(),
            rcpts: vec![format!("user{i}@r.test")],
            message_id: format!("<{i}@s.test>"),
            body: format!(
                "From: news@s.test\r\nTo: user{i}@r.test\r\nSubject: {i}\r\n\
                 Message-ID: <{i}@s.test>\r\n\r\nHello {i}\r\n"
            )
            .into_bytes(),
            lane: Lane::Bulk,
            campaign: None,
        }
    }

    /// The spooled bytes of every queued entry, in queue-id order.
    fn spooled(mta: &Mta<NoDns, TcpConnector>, ids: &[u64]) -> Vec<String> {
        let st = mta.inner.state.lock().unwrap();
        ids.iter()
            .map(|id| {
                let entry = st.queue.get(*id).expect("queued");
                String::from_utf8(mta.inner.spool.read(&entry.spool).unwrap()).unwrap()
            })
            .collect()
    }

    /// A batch signed ahead for the second it is injected in goes in as signed; one signed for
    /// another second is signed again for the injection's (one signature, its `t=` the
    /// injection's), with the message's own bytes unchanged.
    #[tokio::test(start_paused = true)]
    async fn a_batch_signed_for_another_second_is_signed_again() {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(RuntimeClock::new(1_767_225_600_000));
        let log = EventLog::create(&dir.path().join("events.log"), clock.clone()).unwrap();
        let der = Ed25519Key::generate_pkcs8().unwrap();
        let signer = Signer::from_pkcs8("s.test", "k1", &der, true).unwrap();
        let mta = Mta::new(
            MtaConfig::default(),
            NoDns,
            TcpConnector { source_ip: None },
            Spool::open(&dir.path().join("spool")).unwrap(),
            vec![signer],
            Arc::new(Suppression::open(&dir.path().join("suppressed")).unwrap()),
            log.sink(),
        );
        let now_s = clock.now_ms() / 1000;
        let batch = || (0..3).map(message).collect::<Vec<_>>();
        let on_time = mta.sign_ahead(batch(), now_s).unwrap();
        let late = mta.sign_ahead(batch(), now_s - 5).unwrap();
        let ids = mta.inject_signed(on_time).unwrap();
        let late_ids = mta.inject_signed(late).unwrap();
        let (on_time, late) = (spooled(&mta, &ids), spooled(&mta, &late_ids));
        for (i, (a, b)) in on_time.iter().zip(&late).enumerate() {
            assert_eq!(a, b, "message {i}: the same bytes either way");
            assert_eq!(a.matches("DKIM-Signature:").count(), 1, "{a}");
            assert!(a.contains(&format!("t={now_s};")), "{a}");
            assert!(a.ends_with(&format!("Hello {i}\r\n")), "{a}");
        }
    }
}

#[cfg(test)]
mod reset_tests {
    use super::*;
    use crate::dns::Answer;
    use mailsim_events::{EventLog, RuntimeClock};
    use std::net::Ipv4Addr;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// Every domain's MX is 127.0.0.1.
    struct Loopback;

    impl crate::dns::Lookups for Loopback {
        async fn mx(&self, domain: &str) -> Answer<(u16, String)> {
            Answer::Records(vec![(10, format!("mx.{domain}"))])
        }
        async fn a(&self, _: &str) -> Answer<IpAddr> {
            Answer::Records(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
        }
        async fn txt(&self, _: &str) -> Answer<String> {
            Answer::NoRecords
        }
    }

    /// A pipelining server that refuses `gone@r.test` at RCPT and keeps the sender after
    /// DATA's 554, as Postfix does. On its first connection it answers the RSET after that
    /// refusal with `first_rset` (and closes after a 421), or with `first_rset`'s "DATA:" form
    /// answers that refusal's DATA with what follows and closes. It tells what it took:
    /// (connection, recipient).
    async fn serve(
        listener: tokio::net::TcpListener,
        first_rset: &'static str,
        took: tokio::sync::mpsc::UnboundedSender<(u32, String)>,
    ) {
        for n in 1.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let took = took.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 script ESMTP\r\n").await;
                let (mut rcpt, mut in_mail, mut in_data) = (None::<String>, false, false);
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = if in_data {
                        if line != "." {
                            continue;
                        }
                        in_data = false;
                        in_mail = false;
                        let _ = took.send((n, rcpt.take().unwrap_or_default()));
                        b"250 2.0.0 queued\r\n"
                    } else if line.starts_with("EHLO") {
                        b"250-script\r\n250 PIPELINING\r\n"
                    } else if line == "RSET" && n == 1 {
                        if w.write_all(first_rset.as_bytes()).await.is_err()
                            || first_rset.starts_with("421")
                        {
                            return;
                        }
                        continue;
                    } else if line == "RSET" {
                        in_mail = false;
                        b"250 2.0.0 ok\r\n"
                    } else if line.starts_with("MAIL") && in_mail {
                        b"503 5.5.1 Error: nested MAIL command\r\n"
                    } else if line.starts_with("MAIL") {
                        in_mail = true;
                        b"250 2.1.0 ok\r\n"
                    } else if let Some(to) = line.strip_prefix("RCPT TO:<") {
                        let to = to.trim_end_matches('>');
                        if to == "gone@r.test" {
                            b"550 5.1.1 no such user\r\n"
                        } else {
                            rcpt = Some(to.to_string());
                            b"250 2.1.5 ok\r\n"
                        }
                    } else if line == "DATA" && rcpt.is_some() {
                        in_data = true;
                        b"354 go ahead\r\n"
                    } else if let (Some(said), "DATA", 1) =
                        (first_rset.strip_prefix("DATA:"), line.as_str(), n)
                    {
                        let _ = w.write_all(said.as_bytes()).await;
                        return;
                    } else if line == "DATA" {
                        b"554 5.5.1 Error: no valid recipients\r\n"
                    } else if line == "QUIT" {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"500 5.5.2 what\r\n"
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    /// Deliver "gone@r.test" then "here@r.test" to [`serve`] with `first_rset`: what the
    /// server took (on a connection after the first?, recipient), and the MTA's deliveries
    /// (recipient, attempts) and deferrals: r.test's only (the bounce report goes to
    /// news@s.test's MX, the same server).
    async fn deliver(
        first_rset: &'static str,
    ) -> (
        Vec<(bool, String)>,
        Vec<(String, u32)>,
        usize,
        Vec<(String, u16)>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (took_tx, mut took) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(serve(listener, first_rset, took_tx));
        let clock: Arc<dyn Clock> = Arc::new(RuntimeClock::new(1_767_225_600_000));
        let path = dir.path().join("events.log");
        let log = EventLog::create(&path, clock.clone()).unwrap();
        let cfg = MtaConfig {
            remote_port: port,
            conns_per_domain_max: 1,
            retry: RetryPolicy {
                retry_interval_s_min: 1,
                retry_interval_s_max: 1,
                lifetime_s: 60,
            },
            destination_backoff_s: 1,
            ..MtaConfig::default()
        };
        let mta = Mta::new(
            cfg,
            Loopback,
            TcpConnector { source_ip: None },
            Spool::open(&dir.path().join("spool")).unwrap(),
            Vec::new(),
            Arc::new(Suppression::open(&dir.path().join("suppressed")).unwrap()),
            log.sink(),
        );
        let message = |rcpt: &str| OutboundMessage {
            from: "news@s.test".into(),
            rcpts: vec![rcpt.to_string()],
            message_id: format!("<{rcpt}>"),
            body: format!("From: news@s.test\r\nTo: {rcpt}\r\nSubject: t\r\n\r\nhello\r\n")
                .into_bytes(),
            lane: Lane::Bulk,
            campaign: None,
        };
        let batch = vec![message("gone@r.test"), message("here@r.test")];
        let ids = mta.inject(batch).unwrap();
        assert_eq!(ids.len(), 2);
        let mut queued = mta.queued_watch();
        let drained = async move {
            let _ = queued.wait_for(|n| *n == 0).await;
        };
        tokio::time::timeout(Duration::from_secs(20), mta.run(drained))
            .await
            .expect("the queue drains");
        drop(mta);
        log.close().unwrap();
        let mut taken = Vec::new();
        while let Ok((conn, rcpt)) = took.try_recv() {
            if rcpt.ends_with("@r.test") {
                taken.push((conn > 1, rcpt));
            }
        }
        let (records, _) = mailsim_events::read_log(&path).unwrap();
        let delivered = records
            .iter()
            .filter_map(|r| match &r.event {
                Event::Delivered { rcpt, attempts, .. } if rcpt.ends_with("@r.test") => {
                    Some((rcpt.clone(), *attempts))
                }
                _ => None,
            })
            .collect();
        let deferred = records
            .iter()
            .filter(|r| matches!(&r.event, Event::Deferred { .. }))
            .count();
        // Replies recorded for no message: the connection's.
        let unattached = records
            .iter()
            .filter_map(|r| match &r.event {
                Event::SmtpReply {
                    msg: None, reply, ..
                } => Some((reply.command.clone(), reply.reply.code)),
                _ => None,
            })
            .collect();
        (taken, delivered, deferred, unattached)
    }

    /// After a refused recipient, the next one's transaction starts with RSET. A server that
    /// refuses that RSET never began the transaction: its recipient is not counted as tried,
    /// and is delivered on the next connection at its first attempt.
    #[tokio::test]
    async fn a_recipient_behind_a_refused_reset_is_tried_on_the_next_connection() {
        let (taken, delivered, deferred, unattached) = deliver("502 5.5.1 no RSET here\r\n").await;
        assert_eq!(taken, [(true, "here@r.test".to_string())]);
        assert_eq!(delivered, [("here@r.test".to_string(), 1)]);
        assert_eq!(deferred, 0);
        assert_eq!(unattached, [("RSET".to_string(), 502)]);
    }

    /// A 421 to that RSET decides as a 421 to MAIL would: the recipient is deferred (its
    /// attempt counted) and delivered at its second.
    #[tokio::test]
    async fn a_reset_answered_421_defers_the_recipient_behind_it() {
        let (taken, delivered, deferred, _) = deliver("421 4.7.0 too many errors\r\n").await;
        assert_eq!(taken, [(true, "here@r.test".to_string())]);
        assert_eq!(delivered, [("here@r.test".to_string(), 2)]);
        assert_eq!(deferred, 1);
    }

    /// A 421 to DATA after the refused recipient (a server at its error limit) closes the
    /// connection and is recorded; the next recipient goes on another connection, first
    /// time.
    #[tokio::test]
    async fn a_421_after_a_refusal_ends_the_connection() {
        let (taken, delivered, deferred, unattached) =
            deliver("DATA:421 4.7.0 too many errors\r\n").await;
        assert_eq!(taken, [(true, "here@r.test".to_string())]);
        assert_eq!(delivered, [("here@r.test".to_string(), 1)]);
        assert_eq!(deferred, 0);
        assert_eq!(unattached, [("DATA".to_string(), 421)]);
    }
}
