//! Scenario format v1: a TOML file describing the sender, the recipient domains with their DNS
//! and behaviour, the campaign and the MTA's limits. See the README's scenario reference.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: {message}")]
    Read { file: PathBuf, message: String },
    #[error("{file}:{line}: {field}: {message}")]
    Invalid {
        file: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Real loopback sockets and the wall clock.
    #[default]
    Live,
    /// One thread, a paused clock, in-memory connections and in-process DNS: deterministic,
    /// and days of retries pass in seconds.
    Virtual,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The file it was read from (for errors found later, such as in a DKIM key file).
    #[serde(skip)]
    pub path: PathBuf,
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub mta: MtaSection,
    #[serde(rename = "sender", default)]
    pub senders: Vec<Spanned<Sender>>,
    #[serde(rename = "domain", default)]
    pub domains: Vec<Spanned<Domain>>,
    pub campaign: Spanned<Campaign>,
    /// RFC 1035 zone files served beside the generated records, and over them where they hold
    /// the same name and type (`zones = ["customer.zone"]`, relative to the scenario file; or
    /// `{ file = "...", origin = "example.com" }` for a file without `$ORIGIN`). Faults apply
    /// to their names as to any other.
    #[serde(default)]
    pub zones: Vec<ZoneFileRef>,
    /// DNS faults on the timeline.
    #[serde(default, rename = "dns_fault")]
    pub dns_faults: Vec<Spanned<DnsFaultSpec>>,
    /// Measuring another MTA (`mailsim run --mta`).
    #[serde(default)]
    pub external: ExternalSection,
    /// What the simulated servers keep of the mail they accept.
    #[serde(default)]
    pub fleet: FleetSection,
    /// The providers keep a reputation of the sender and place accepted mail in the inbox or
    /// the spam folder (absent: no reputation model, everything accepted is in the inbox).
    pub reputation: Option<ReputationSection>,
    /// The recipients' engagement: who opens, clicks, unsubscribes, complains; spam traps.
    #[serde(default, rename = "segment")]
    pub segments: Vec<Spanned<Segment>>,
    /// Transactional mail at a steady rate beside the campaign.
    pub transactional: Option<Spanned<TransactionalSection>>,
}

/// One entry of `zones`: a zone file, with the zone's name when the file has no `$ORIGIN`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ZoneFileRef {
    Path(PathBuf),
    #[serde(rename_all = "snake_case")]
    Table {
        file: PathBuf,
        origin: Option<String>,
    },
}

impl ZoneFileRef {
    pub fn file(&self) -> &std::path::Path {
        match self {
            ZoneFileRef::Path(p) | ZoneFileRef::Table { file: p, .. } => p,
        }
    }
    pub fn origin(&self) -> Option<&str> {
        match self {
            ZoneFileRef::Path(_) => None,
            ZoneFileRef::Table { origin, .. } => origin.as_deref(),
        }
    }
}

/// `[reputation]`: switches the providers' reputation model on; each number, when set, replaces
/// the one of every provider's profile (see [`crate::reputation::Model`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationSection {
    /// The score (0-100) of a sender a provider has not seen before.
    pub initial: Option<f64>,
    /// Messages a provider takes on its first day from a sending IP it has not seen before.
    pub new_daily: Option<u64>,
    /// How much more than its best earlier day an IP may send in a day.
    pub growth: Option<f64>,
    /// Messages a day (per From domain) from which the bulk-sender rules apply.
    pub bulk_daily: Option<u64>,
    /// Recipients act within this many seconds of delivery (default 43,200: opens from 5
    /// minutes to 12 hours later); a live run that should see its opens in seconds sets a few.
    pub act_within_s: Option<u64>,
}

/// `[[segment]]`: a share of the recipients and what they do with the mail they get.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    /// `engaged`, `occasional` and `dormant` bring their own rates; any other name needs them.
    pub name: String,
    /// Share of the recipients (percent); the segments together at most 100, the rest is
    /// `occasional`.
    pub percent: f64,
    #[serde(default)]
    pub kind: SegmentKind,
    /// Percent of the messages in the inbox that get opened (a tenth of that in the spam
    /// folder).
    pub open_percent: Option<f64>,
    /// Percent of the opened messages whose link is followed.
    pub click_percent: Option<f64>,
    /// Percent of the opened messages after which the recipient unsubscribes.
    pub unsubscribe_percent: Option<f64>,
    /// Percent of the messages in the inbox reported as spam.
    pub complaint_percent: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SegmentKind {
    /// People.
    #[default]
    #[serde(rename = "recipient")]
    Recipient,
    /// An address that never belonged to anyone, kept to catch senders of unsolicited mail.
    #[serde(rename = "pristine-trap")]
    PristineTrap,
    /// An abandoned address turned into a trap by its provider.
    #[serde(rename = "recycled-trap")]
    RecycledTrap,
}

/// RFC 2369 / RFC 8058 headers on the campaign's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum ListUnsubscribe {
    /// No List-Unsubscribe header.
    #[default]
    #[serde(rename = "none")]
    None,
    /// `List-Unsubscribe: <mailto:...>` only.
    #[serde(rename = "mailto")]
    Mailto,
    /// `List-Unsubscribe: <https URL>, <mailto:...>` and `List-Unsubscribe-Post:
    /// List-Unsubscribe=One-Click` (RFC 8058).
    #[serde(rename = "one-click")]
    OneClick,
}

/// `[fleet]`: what the simulated recipient servers keep of what they accept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// `full`, `headers` or `none`; unset: full, except virtual runs of
    /// [`HEADERS_FROM_DELIVERIES`] campaign messages or more, which keep headers.
    pub store: Option<Store>,
}

/// What a receiving server writes for each accepted copy (the sender's own MX too, for each
/// report it takes). Events, verdicts and the stored copy's size are the same whatever it
/// keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Store {
    /// The whole message, as received (with Return-Path, Delivered-To, Authentication-Results
    /// and Received added).
    #[serde(rename = "full")]
    Full,
    /// Its header block only, body left out, appended to one mbox file per server (and
    /// folder), `headers.mbox` (mboxrd: RFC 4155's mbox, `From ` lines quoted): no file per
    /// copy. Written in blocks as copies accumulate: the file is whole when the run ends.
    #[serde(rename = "headers")]
    Headers,
    /// Nothing: no Maildir file.
    #[serde(rename = "none")]
    Nothing,
}

/// A virtual run of this many campaign messages (times its sends) or more keeps headers unless
/// `[fleet] store` says otherwise: a million-message run need not write a million bodies.
pub const HEADERS_FROM_DELIVERIES: u64 = 100_000;

/// `[external]`: how the campaign is handed to another MTA under test.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalSection {
    /// DKIM-sign the campaign with the sender's key before submitting it (for an MTA that
    /// does not sign; false when the MTA under test signs itself).
    pub sign: bool,
}

impl Scenario {
    /// What the fleet keeps: `[fleet] store`, else full, except for large virtual runs.
    pub fn store(&self) -> Store {
        self.fleet.store.unwrap_or_else(|| {
            let c = self.campaign();
            let deliveries = c.total();
            if self.mode == Mode::Virtual && deliveries >= HEADERS_FROM_DELIVERIES {
                Store::Headers
            } else {
                Store::Full
            }
        })
    }
}

impl Default for ExternalSection {
    fn default() -> Self {
        ExternalSection { sign: true }
    }
}

/// A window in scenario time, in seconds since the run started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Window {
    pub from_s: Option<u64>,
    pub until_s: Option<u64>,
}

impl Window {
    pub fn contains_ms(&self, elapsed_ms: u64) -> bool {
        self.from_s.is_none_or(|f| elapsed_ms >= f * 1000)
            && self.until_s.is_none_or(|u| elapsed_ms < u * 1000)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsFaultKind {
    Servfail,
    Timeout,
    Nxdomain,
    /// RFC 7505: `MX 0 .`, the domain accepts no mail.
    NullMx,
    /// Replace the MX records with `mx`.
    ChangeMx,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFaultSpec {
    /// The name (and, except for `change_mx`, every name under it).
    pub name: String,
    pub kind: DnsFaultKind,
    pub from_s: Option<u64>,
    pub until_s: Option<u64>,
    /// New MX hosts for `change_mx` (they must be MX hosts of some domain in the scenario).
    #[serde(default)]
    pub mx: Vec<MxSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtaSection {
    pub hostname: String,
    /// The MTA's source address (SPF and PTR are published for it).
    pub ip: std::net::Ipv4Addr,
    pub conns_per_domain_max: usize,
    /// Connections a destination starts with (unset: conns_per_domain_max); the MTA raises
    /// the number after good sessions and lowers it when connections are refused or fail.
    pub conns_per_domain_initial: Option<usize>,
    pub msgs_per_conn_max: usize,
    pub retry_interval_s_min: u64,
    pub retry_interval_s_max: u64,
    pub lifetime_s: u64,
    /// The run stops after this long even if messages are still queued (they count as deferred).
    /// Virtual seconds in virtual mode.
    pub run_time_s_max: u64,
    /// How long a 421 or a rate-limit reply backs the whole destination off.
    pub destination_backoff_s: u64,
    /// Return paths `bounces+<id>-<local>=<domain>@<sender domain>` (VERP).
    pub verp: bool,
    /// A shaping file (per-destination limits and reply-driven actions), relative to the
    /// scenario file.
    pub shaping: Option<std::path::PathBuf>,
    /// The shaping file's rules, read when the scenario is.
    #[serde(skip)]
    pub shaping_rules: Option<std::sync::Arc<mailsim_mta::shaping::Shaping>>,
    /// STARTTLS to destinations whose shaping rule does not say: "opportunistic" (the
    /// default), "required" or "off".
    pub tls: mailsim_mta::shaping::TlsMode,
    /// Look up and apply destinations' MTA-STS policies (RFC 8461).
    pub mta_sts: bool,
    /// Transactional and bulk mail in separate lanes: transactional first at every
    /// destination, on connections of its own (`transactional_conns` per destination).
    pub lanes: bool,
    pub transactional_conns: usize,
}

impl Default for MtaSection {
    fn default() -> Self {
        MtaSection {
            hostname: "mta.mailsim.test".into(),
            ip: std::net::Ipv4Addr::new(127, 0, 0, 1),
            conns_per_domain_max: 8,
            conns_per_domain_initial: None,
            msgs_per_conn_max: 500,
            retry_interval_s_min: 300,
            retry_interval_s_max: 4000,
            lifetime_s: 5 * 86_400,
            run_time_s_max: 600,
            destination_backoff_s: 60,
            verp: true,
            shaping: None,
            shaping_rules: None,
            tls: mailsim_mta::shaping::TlsMode::default(),
            mta_sts: true,
            lanes: false,
            transactional_conns: 2,
        }
    }
}

/// Transactional mail (sign-in codes, receipts) sent at a steady rate beside the campaign, in
/// the MTA's transactional lane: each message to a recipient of the campaign's domains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransactionalSection {
    pub messages_per_s: f64,
    pub messages: u64,
    /// When the first one goes (scenario seconds).
    #[serde(default)]
    pub start_s: u64,
    #[serde(default = "default_transactional_subject")]
    pub subject: String,
}

fn default_transactional_subject() -> String {
    "Your sign-in code".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    #[default]
    Rsa,
    Ed25519,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sender {
    pub domain: String,
    /// Envelope and header From address; defaults to `news@<domain>`.
    pub from: Option<String>,
    /// SPF record; defaults to `v=spf1 ip4:<mta ip> -all`.
    pub spf: Option<String>,
    /// DMARC record; defaults to `v=DMARC1; p=reject`.
    pub dmarc: Option<String>,
    #[serde(default = "default_selector")]
    pub dkim_selector: String,
    #[serde(default)]
    pub dkim_algorithm: DkimAlgorithm,
    /// A PKCS#8 PEM private key; generated from the seed when absent.
    pub dkim_private_key: Option<PathBuf>,
    /// Publish the DKIM key in DNS (false simulates a missing key).
    #[serde(default = "yes")]
    pub dkim_publish: bool,
    /// Where receivers send ARF complaints (feedback loop); defaults to `fbl@<domain>`.
    pub feedback: Option<String>,
}

fn default_selector() -> String {
    "s1".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MxSpec {
    pub host: String,
    #[serde(default = "default_pref")]
    pub preference: u16,
    /// Nothing listens on this host (connections are refused).
    #[serde(default)]
    pub down: bool,
    /// This host behaves differently from its domain: each rule given here replaces the
    /// domain's.
    pub behaviour: Option<HostBehaviour>,
    /// What this host's STARTTLS is like (every host offers it, with a certificate from the
    /// run's authority, unless told otherwise).
    #[serde(default)]
    pub tls: TlsFault,
}

/// A receiving host's STARTTLS, and the faults a scenario can give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TlsFault {
    /// STARTTLS with a valid certificate for the host's name.
    #[default]
    Ok,
    /// STARTTLS is not offered.
    None,
    /// The certificate expired.
    Expired,
    /// The certificate is for another name.
    WrongName,
    /// The certificate is signed by its own key.
    SelfSigned,
    /// STARTTLS is accepted and the connection cut instead of the handshake.
    HandshakeFailure,
}

/// A domain's MTA-STS policy mode (RFC 8461).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StsMode {
    Enforce,
    Testing,
    None,
}

/// Per-MX-host overrides of a domain's behaviour (same fields and meaning as on the domain).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HostBehaviour {
    pub tempfail: Option<TempFail>,
    pub mailbox_full: Option<MailboxFull>,
    pub message_size_max: Option<usize>,
    pub greylist: Option<Greylist>,
    pub rate_limit: Option<RateLimit>,
    pub slow: Option<Slow>,
    #[serde(rename = "drop")]
    pub drops: Option<DropConnections>,
    pub tls_required: Option<bool>,
    pub content_filter: Option<ContentFilter>,
    pub dmarc_enforce: Option<bool>,
}

fn default_pref() -> u16 {
    10
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UnknownUsers {
    /// Share of recipients (0-100) that do not exist, chosen from the seed.
    #[serde(default)]
    pub percent: f64,
    /// Local parts that do not exist.
    #[serde(default)]
    pub list: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TempFail {
    /// Share of RCPT commands (0-100) answered 451 4.3.0, drawn per attempt.
    pub percent: f64,
    pub from_s: Option<u64>,
    pub until_s: Option<u64>,
}

/// Mailboxes that are full: 452 4.2.2 on every attempt (or 552 5.2.2 when `permanent`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MailboxFull {
    /// Share of recipients (0-100) whose mailbox is full, chosen from the seed.
    pub percent: f64,
    #[serde(default)]
    pub permanent: bool,
    pub from_s: Option<u64>,
    pub until_s: Option<u64>,
}

/// Greylisting: the first attempt of a (client IP, sender, recipient) triplet gets 451 4.7.1;
/// a retry at least `window_s` later is accepted, and the triplet is remembered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Greylist {
    #[serde(default = "default_grey_window")]
    pub window_s: u64,
    pub from_s: Option<u64>,
    pub until_s: Option<u64>,
}

fn default_grey_window() -> u64 {
    300
}

/// A token bucket per client IP, refilled at `messages_per_s` up to `burst`; a message without
/// a token gets the profile's rate-limit reply (450 4.7.x, or 421 4.7.x and the connection
/// closed when `close = true`). More than `connections_max` open connections per IP -> 421.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub messages_per_s: f64,
    #[serde(default = "default_burst")]
    pub burst: f64,
    #[serde(default)]
    pub close: bool,
    pub connections_max: Option<usize>,
    pub from_s: Option<u64>,
    pub until_s: Option<u64>,
}

fn default_burst() -> f64 {
    10.0
}

/// A slow server: delays before the banner and before each batch of replies.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Slow {
    #[serde(default)]
    pub banner_s: f64,
    #[serde(default)]
    pub reply_s: f64,
    pub from_s: Option<u64>,
    pub until_s: Option<u64>,
}

/// Connections dropped without a reply: at RCPT (before DATA) or after the message was sent
/// (during DATA, nothing stored), each with a share (0-100) drawn per attempt.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DropConnections {
    #[serde(default)]
    pub before_data_percent: f64,
    #[serde(default)]
    pub during_data_percent: f64,
    pub from_s: Option<u64>,
    pub until_s: Option<u64>,
}

/// A simple spam score: one point per listed word found in the message (case-insensitive);
/// `score_max` points or more -> 550 5.7.1.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentFilter {
    pub words: Vec<String>,
    #[serde(default = "one_u32")]
    pub score_max: u32,
}

fn one_u32() -> u32 {
    1
}

/// Accept now, report later: a DSN (async bounce) or an ARF complaint for a share of the
/// accepted messages, `delay_s` after acceptance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Later {
    pub percent: f64,
    #[serde(default = "default_later_delay")]
    pub delay_s: u64,
}

fn default_later_delay() -> u64 {
    600
}

/// Ready-made behaviours with the replies big providers publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Profile {
    #[serde(rename = "gmail-like")]
    GmailLike,
    #[serde(rename = "yahoo-like")]
    YahooLike,
    #[serde(rename = "microsoft-like")]
    MicrosoftLike,
}

impl Profile {
    /// The name a scenario gives it.
    pub fn name(self) -> &'static str {
        match self {
            Profile::GmailLike => "gmail-like",
            Profile::YahooLike => "yahoo-like",
            Profile::MicrosoftLike => "microsoft-like",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub name: String,
    /// MX hosts; default one host `mx1.<name>`.
    #[serde(default)]
    pub mx: Vec<MxSpec>,
    pub spf: Option<String>,
    pub dmarc: Option<String>,
    /// Relative share of the campaign's recipients.
    #[serde(default = "one")]
    pub weight: f64,
    #[serde(default)]
    pub unknown_users: UnknownUsers,
    pub tempfail: Option<TempFail>,
    /// Reply texts and default limits of a big provider.
    pub profile: Option<Profile>,
    pub mailbox_full: Option<MailboxFull>,
    /// The SIZE the servers advertise; bigger messages get 552 5.3.4.
    pub message_size_max: Option<usize>,
    pub greylist: Option<Greylist>,
    pub rate_limit: Option<RateLimit>,
    pub slow: Option<Slow>,
    #[serde(rename = "drop")]
    pub drops: Option<DropConnections>,
    /// Refuse mail that does not come over TLS (530 5.7.0 to MAIL outside STARTTLS).
    #[serde(default)]
    pub tls_required: bool,
    /// Publish an MTA-STS policy (RFC 8461) in this mode: the `_mta-sts` TXT record, the
    /// policy at `https://mta-sts.<domain>/.well-known/mta-sts.txt` naming the domain's MX
    /// hosts, and a TLS-RPT record (RFC 8460) `_smtp._tls`.
    pub mta_sts: Option<StsMode>,
    pub content_filter: Option<ContentFilter>,
    /// Apply the sender's DMARC policy: p=reject and fail -> 550 5.7.26.
    #[serde(default)]
    pub dmarc_enforce: bool,
    pub async_bounce: Option<Later>,
    pub complaints: Option<Later>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    /// Recipients per send (from `schedule` when that is given).
    #[serde(default)]
    pub messages: u64,
    /// How many times the campaign is sent to the same recipients (a later send meets the
    /// suppression list built from the earlier ones).
    #[serde(default = "one_u32")]
    pub sends: u32,
    /// Time between the starts of two sends.
    #[serde(default = "default_send_interval")]
    pub send_interval_s: u64,
    #[serde(default = "default_size")]
    pub size_bytes: usize,
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Messages per send, one entry per send (a warm-up plan): send k goes to the first
    /// `schedule[k]` recipients. Replaces `messages` and `sends`.
    #[serde(default)]
    pub schedule: Vec<u64>,
    /// An HTML part beside the text: an image (the open pixel) and links, through the
    /// sender's tracking web server.
    #[serde(default)]
    pub html: bool,
    #[serde(default)]
    pub list_unsubscribe: ListUnsubscribe,
    /// The HTML part from a file (relative to the scenario) instead of mailsim's own, with
    /// `{{rcpt}}` replaced by the recipient's address: another sender's own tracking URLs.
    pub html_template: Option<PathBuf>,
    /// The List-Unsubscribe URI (`{{rcpt}}` replaced) instead of mailsim's tracking server's:
    /// another sender's own.
    pub unsubscribe_url: Option<String>,
    /// The template's text (read at load).
    #[serde(skip)]
    pub html_template_text: Option<String>,
    /// The recipients from a subscriber list (CSV with an `email` column, relative to the
    /// scenario) instead of generated ones; `messages` becomes the list's length, and a
    /// subscriber's `name` field greets it.
    pub list: Option<PathBuf>,
    /// The list's subscribers (read at load).
    #[serde(skip)]
    pub list_subscribers: Option<std::sync::Arc<Vec<mailsim_platform::lists::Subscriber>>>,
    /// Before each send, leave out (suppress, reason `unengaged`) every recipient mailed this
    /// many times with no open or click since.
    pub sunset_after_sends: Option<u32>,
}

impl Campaign {
    /// Recipients of send `send` (0-based).
    pub fn messages_in(&self, send: u32) -> u64 {
        self.schedule
            .get(send as usize)
            .copied()
            .unwrap_or(self.messages)
    }

    /// Messages over every send.
    pub fn total(&self) -> u64 {
        (0..self.sends).map(|s| self.messages_in(s)).sum()
    }
}

fn default_send_interval() -> u64 {
    3600
}

fn default_size() -> usize {
    5 * 1024
}

fn default_subject() -> String {
    "Our November newsletter".into()
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let bytes = std::fs::read(path).map_err(|e| ScenarioError::Read {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        // TOML is UTF-8: say where it stops being so.
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            // Everything before `at` is UTF-8.
            let valid = std::str::from_utf8(&e.as_bytes()[..at]).unwrap_or_default();
            ScenarioError::Invalid {
                file: path.to_path_buf(),
                line: line_of(valid, at),
                field: "(text)".into(),
                message: format!("byte {at} is not UTF-8 (a TOML file is UTF-8 text)"),
            }
        })?;
        Scenario::parse(&text, path)
    }

    /// Parse and validate; errors name the file, line and field.
    pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
        let mut scenario: Scenario = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            ScenarioError::Invalid {
                file: path.to_path_buf(),
                line,
                field: "toml".into(),
                message: e.message().trim().to_string(),
            }
        })?;
        {
            let c = scenario.campaign.get_mut();
            if !c.schedule.is_empty() {
                if c.sends != 1 || c.messages != 0 {
                    let line = line_of(text, scenario.campaign.span().start);
                    return Err(ScenarioError::Invalid {
                        file: path.to_path_buf(),
                        line,
                        field: "campaign.schedule".into(),
                        message: "replaces messages and sends: give one or the others".into(),
                    });
                }
                c.sends = c.schedule.len() as u32;
                c.messages = c.schedule.iter().copied().max().unwrap_or(0);
            }
        }
        scenario.validate(text, path)?;
        scenario.path = path.to_path_buf();
        if let Some(file) = scenario.mta.shaping.clone() {
            let resolved = relative_to(path, &file);
            let invalid = |message: String| ScenarioError::Invalid {
                file: path.to_path_buf(),
                line: text
                    .lines()
                    .position(|l| l.trim_start().starts_with("shaping"))
                    .map_or(0, |n| n + 1),
                field: "mta.shaping".into(),
                message,
            };
            let rules = std::fs::read_to_string(&resolved)
                .map_err(|e| invalid(format!("{}: {e}", resolved.display())))
                .and_then(|t| {
                    mailsim_mta::shaping::Shaping::parse(&t, &resolved.display().to_string())
                        .map_err(invalid)
                })?;
            scenario.mta.shaping_rules = Some(std::sync::Arc::new(rules));
        }
        if let Some(t) = scenario.campaign.get_ref().html_template.clone() {
            let resolved = relative_to(path, &t);
            let text_of =
                std::fs::read_to_string(&resolved).map_err(|e| ScenarioError::Invalid {
                    file: path.to_path_buf(),
                    line: line_of(text, scenario.campaign.span().start),
                    field: "campaign.html_template".into(),
                    message: format!("{}: {e}", resolved.display()),
                })?;
            scenario.campaign.get_mut().html_template_text = Some(text_of);
        }
        if let Some(list) = scenario.campaign.get_ref().list.clone() {
            let resolved = relative_to(path, &list);
            let line = line_of(text, scenario.campaign.span().start);
            let invalid = |message: String| ScenarioError::Invalid {
                file: path.to_path_buf(),
                line,
                field: "campaign.list".into(),
                message,
            };
            let file = std::fs::File::open(&resolved)
                .map_err(|e| invalid(format!("{}: {e}", resolved.display())))?;
            let subscribers = mailsim_platform::lists::read_csv(
                std::io::BufReader::new(file),
                &resolved.display().to_string(),
            )
            .map_err(invalid)?;
            let domains: Vec<String> = scenario
                .domains
                .iter()
                .map(|d| d.get_ref().name.to_ascii_lowercase())
                .collect();
            if let Some(s) = subscribers.iter().find(|s| {
                !domains
                    .iter()
                    .any(|d| s.email.rsplit_once('@').is_some_and(|(_, sd)| sd == d))
            }) {
                return Err(invalid(format!(
                    "{}: {}'s domain is not a [[domain]] of the scenario",
                    resolved.display(),
                    s.email
                )));
            }
            if subscribers.is_empty() {
                return Err(invalid(format!("{}: no subscriber", resolved.display())));
            }
            let c = scenario.campaign.get_mut();
            if c.schedule.iter().any(|n| *n > subscribers.len() as u64) {
                return Err(invalid(format!(
                    "the schedule mails more recipients than the list's {}",
                    subscribers.len()
                )));
            }
            c.messages = subscribers.len() as u64;
            c.list_subscribers = Some(std::sync::Arc::new(subscribers));
        }
        Ok(scenario)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), ScenarioError> {
        let invalid = |offset: usize, field: String, message: String| ScenarioError::Invalid {
            file: path.to_path_buf(),
            line: line_of(text, offset),
            field,
            message,
        };
        // The name is the default run directory's (runs/<name>-<time>): one path component.
        if self.name.is_empty()
            || self.name.starts_with('.')
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                0,
                "name".into(),
                format!(
                    "{:?} is not a run name: letters, digits, '-', '_' and '.' (not first)",
                    self.name
                ),
            ));
        }
        if self.senders.is_empty() {
            return Err(invalid(
                0,
                "sender".into(),
                "at least one [[sender]] table is required (the domain the campaign is sent from)"
                    .into(),
            ));
        }
        if self.domains.is_empty() {
            return Err(invalid(
                0,
                "domain".into(),
                "at least one [[domain]] table is required (a recipient domain)".into(),
            ));
        }
        for (i, s) in self.senders.iter().enumerate() {
            let at = s.span().start;
            if !valid_domain(&s.get_ref().domain) {
                return Err(invalid(
                    at,
                    format!("sender[{i}].domain"),
                    format!("{:?} is not a domain name", s.get_ref().domain),
                ));
            }
            // The From header's address: no line breaks or other controls (a header of its own).
            if let Some(from) = &s.get_ref().from
                && (!from.ends_with(&format!("@{}", s.get_ref().domain))
                    || from.chars().any(|c| c.is_control()))
            {
                return Err(invalid(
                    at,
                    format!("sender[{i}].from"),
                    format!("{from:?} is not an address at {}", s.get_ref().domain),
                ));
            }
            // A key file that cannot be read is named with its line here; what it holds is
            // read with the world (an independent review found the line missing).
            if let Some(key) = &s.get_ref().dkim_private_key
                && let Err(e) = std::fs::metadata(relative_to(path, key))
            {
                let field_at = field_in_table(text, at, "dkim_private_key").unwrap_or(at);
                return Err(invalid(
                    field_at,
                    format!("sender[{i}].dkim_private_key"),
                    format!("{}: {e}", key.display()),
                ));
            }
        }
        for (i, z) in self.zones.iter().enumerate() {
            if let Err(e) = std::fs::metadata(relative_to(path, z.file())) {
                let shown = z.file().display().to_string();
                let field_at = text
                    .find(&shown)
                    .or_else(|| text.find("zones"))
                    .unwrap_or(0);
                return Err(invalid(
                    field_at,
                    format!("zones[{i}]"),
                    format!("{shown}: {e}"),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, d) in self.domains.iter().enumerate() {
            let at = d.span().start;
            let dom = d.get_ref();
            if !valid_domain(&dom.name) {
                return Err(invalid(
                    at,
                    format!("domain[{i}].name"),
                    format!("{:?} is not a domain name", dom.name),
                ));
            }
            if !seen.insert(dom.name.to_ascii_lowercase()) {
                return Err(invalid(
                    at,
                    format!("domain[{i}].name"),
                    format!("{} is declared twice", dom.name),
                ));
            }
            if !(dom.weight.is_finite() && dom.weight >= 0.0) {
                return Err(invalid(
                    at,
                    format!("domain[{i}].weight"),
                    "must be a number >= 0".into(),
                ));
            }
            if !(0.0..=100.0).contains(&dom.unknown_users.percent) {
                return Err(invalid(
                    at,
                    format!("domain[{i}].unknown_users.percent"),
                    "must be between 0 and 100".into(),
                ));
            }
            let percents = [
                (
                    "async_bounce.percent",
                    dom.async_bounce.as_ref().map(|l| l.percent),
                ),
                (
                    "complaints.percent",
                    dom.complaints.as_ref().map(|l| l.percent),
                ),
            ];
            for (field, value) in percents {
                if let Some(p) = value
                    && !(0.0..=100.0).contains(&p)
                {
                    return Err(invalid(
                        at,
                        format!("domain[{i}].{field}"),
                        "must be between 0 and 100".into(),
                    ));
                }
            }
            let rules = Rules {
                tempfail: dom.tempfail.as_ref(),
                mailbox_full: dom.mailbox_full.as_ref(),
                drops: dom.drops.as_ref(),
                rate_limit: dom.rate_limit.as_ref(),
                slow: dom.slow.as_ref(),
            };
            check_rules(&format!("domain[{i}]"), &rules)
                .map_err(|(field, message)| invalid(at, field, message))?;
            for (j, mx) in dom.mx.iter().enumerate() {
                if !valid_domain(&mx.host) {
                    return Err(invalid(
                        at,
                        format!("domain[{i}].mx[{j}].host"),
                        format!("{:?} is not a host name", mx.host),
                    ));
                }
                if let Some(b) = &mx.behaviour {
                    let rules = Rules {
                        tempfail: b.tempfail.as_ref(),
                        mailbox_full: b.mailbox_full.as_ref(),
                        drops: b.drops.as_ref(),
                        rate_limit: b.rate_limit.as_ref(),
                        slow: b.slow.as_ref(),
                    };
                    check_rules(&format!("domain[{i}].mx[{j}].behaviour"), &rules)
                        .map_err(|(field, message)| invalid(at, field, message))?;
                }
            }
        }
        let weights = self.domains.iter().map(|d| d.get_ref().weight).sum::<f64>();
        if weights <= 0.0 || !weights.is_finite() {
            return Err(invalid(
                self.domains[0].span().start,
                "domain[*].weight".into(),
                format!(
                    "the weights add up to {weights}: give shares whose sum is over 0 and finite"
                ),
            ));
        }
        for (i, f) in self.dns_faults.iter().enumerate() {
            let at = f.span().start;
            let fault = f.get_ref();
            if !valid_domain(&fault.name) {
                return Err(invalid(
                    at,
                    format!("dns_fault[{i}].name"),
                    format!("{:?} is not a domain name", fault.name),
                ));
            }
            if let (Some(from), Some(until)) = (fault.from_s, fault.until_s)
                && until <= from
            {
                return Err(invalid(
                    at,
                    format!("dns_fault[{i}].until_s"),
                    "must be after from_s".into(),
                ));
            }
            if (fault.kind == DnsFaultKind::ChangeMx) == fault.mx.is_empty() {
                return Err(invalid(
                    at,
                    format!("dns_fault[{i}].mx"),
                    "is required for kind = \"change_mx\" and only there".into(),
                ));
            }
        }
        let c = self.campaign.get_ref();
        if c.messages == 0 && c.schedule.is_empty() && c.list.is_none() {
            return Err(invalid(
                self.campaign.span().start,
                "campaign.messages".into(),
                "required: recipients per send (or a campaign.schedule of them, or a campaign.list)".into(),
            ));
        }
        if (c.messages == 0 && c.list.is_none()) || c.messages > 100_000_000 {
            return Err(invalid(
                self.campaign.span().start,
                if c.schedule.is_empty() {
                    "campaign.messages"
                } else {
                    "campaign.schedule"
                }
                .into(),
                "must be between 1 and 100000000".into(),
            ));
        }
        if let Some(i) = c.schedule.iter().position(|&n| n == 0) {
            return Err(invalid(
                self.campaign.span().start,
                format!("campaign.schedule[{i}]"),
                "must be at least 1".into(),
            ));
        }
        if (c.html_template.is_some() || c.unsubscribe_url.is_some()) && !c.html {
            return Err(invalid(
                self.campaign.span().start,
                "campaign.html_template".into(),
                "html_template and unsubscribe_url need html = true".into(),
            ));
        }
        if c.sunset_after_sends.is_some() && !c.html {
            return Err(invalid(
                self.campaign.span().start,
                "campaign.sunset_after_sends".into(),
                "needs html = true (opens and clicks are what the sender's tracking server sees)"
                    .into(),
            ));
        }
        if let Some(s) = self.segments.first()
            && self.reputation.is_none()
        {
            return Err(invalid(
                s.span().start,
                "segment[0]".into(),
                "recipients act only where providers place mail: add a [reputation] section".into(),
            ));
        }
        if c.sunset_after_sends == Some(0) {
            return Err(invalid(
                self.campaign.span().start,
                "campaign.sunset_after_sends".into(),
                "must be at least 1".into(),
            ));
        }
        self.validate_segments(text, path)?;
        self.validate_deliverability(text, path)?;
        if let Some(t) = &self.transactional {
            let at = t.span().start;
            let t = t.get_ref();
            if !(t.messages_per_s.is_finite()
                && t.messages_per_s >= 1e-3
                && t.messages_per_s <= 1e6)
            {
                return Err(invalid(
                    at,
                    "transactional.messages_per_s".into(),
                    format!(
                        "{} is not a rate: give a number from 0.001 to 1000000",
                        t.messages_per_s
                    ),
                ));
            }
            if t.messages == 0 || t.messages > 100_000_000 {
                return Err(invalid(
                    at,
                    "transactional.messages".into(),
                    "must be between 1 and 100000000".into(),
                ));
            }
            if t.start_s > MAX_SCENARIO_S {
                return Err(invalid(
                    at,
                    "transactional.start_s".into(),
                    format!("must be at most {MAX_SCENARIO_S} (ten years)"),
                ));
            }
        }
        if self.mta.lanes && self.mta.transactional_conns == 0 {
            return Err(invalid(
                0,
                "mta.transactional_conns".into(),
                "must be at least 1 with lanes".into(),
            ));
        }
        if c.sends == 0 || c.sends > 100 {
            return Err(invalid(
                self.campaign.span().start,
                "campaign.sends".into(),
                "must be between 1 and 100".into(),
            ));
        }
        if c.size_bytes < 200 || c.size_bytes > 50 * 1024 * 1024 {
            return Err(invalid(
                self.campaign.span().start,
                "campaign.size_bytes".into(),
                "must be between 200 and 52428800".into(),
            ));
        }
        let m = &self.mta;
        // The [mta] table's line (it has no span of its own: it is optional).
        let mta_at = text
            .lines()
            .scan(0usize, |offset, l| {
                let at = *offset;
                *offset += l.len() + 1;
                Some((at, l))
            })
            .find(|(_, l)| l.trim() == "[mta]")
            .map_or(0, |(at, _)| at);
        let positive = [
            ("conns_per_domain_max", m.conns_per_domain_max as u64),
            (
                "conns_per_domain_initial",
                m.conns_per_domain_initial.unwrap_or(1) as u64,
            ),
            ("msgs_per_conn_max", m.msgs_per_conn_max as u64),
            ("retry_interval_s_min", m.retry_interval_s_min),
            ("retry_interval_s_max", m.retry_interval_s_max),
            ("lifetime_s", m.lifetime_s),
            ("run_time_s_max", m.run_time_s_max),
        ];
        if m.conns_per_domain_initial
            .is_some_and(|n| n > m.conns_per_domain_max)
        {
            return Err(invalid(
                mta_at,
                "mta.conns_per_domain_initial".into(),
                format!("at most conns_per_domain_max ({})", m.conns_per_domain_max),
            ));
        }
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(
                    mta_at,
                    format!("mta.{field}"),
                    "must be positive".into(),
                ));
            }
        }
        if m.retry_interval_s_min > m.retry_interval_s_max {
            return Err(invalid(
                mta_at,
                "mta.retry_interval_s_min".into(),
                format!(
                    "{} is above retry_interval_s_max ({})",
                    m.retry_interval_s_min, m.retry_interval_s_max
                ),
            ));
        }
        // The name the MTA gives in EHLO (RFC 5321 4.1.1.1: a Domain): an independent review
        // found "" and a name with CRLF (which put a command of its own on the wire) accepted.
        if let Err(why) = host_name(&m.hostname) {
            let at = field_in_table(text, mta_at, "hostname").unwrap_or(mta_at);
            return Err(invalid(at, "mta.hostname".into(), why));
        }
        Ok(())
    }

    fn validate_deliverability(&self, text: &str, path: &Path) -> Result<(), ScenarioError> {
        let at = |offset: usize, field: &str, message: String| ScenarioError::Invalid {
            file: path.to_path_buf(),
            line: line_of(text, offset),
            field: field.into(),
            message,
        };
        let c = self.campaign.get_ref();
        let campaign_at = self.campaign.span().start;
        if let Some(url) = &c.unsubscribe_url {
            let lower = url.to_ascii_lowercase();
            if !(lower.starts_with("https://") || lower.starts_with("http://"))
                || url.contains(|ch: char| ch == '>' || ch == '<' || ch.is_whitespace())
            {
                return Err(at(
                    campaign_at,
                    "campaign.unsubscribe_url",
                    format!("{url:?} is not an http(s) URI (RFC 8058 needs an HTTPS one)"),
                ));
            }
        }
        if !c.schedule.is_empty() && c.schedule.len() > 100 {
            return Err(at(
                campaign_at,
                "campaign.schedule",
                "at most 100 sends".into(),
            ));
        }
        // Every send must start before the run's time limit.
        let last_send_s = c
            .send_interval_s
            .saturating_mul(u64::from(c.sends.saturating_sub(1)));
        // (A run_time_s_max of 0 is refused with its own field below.)
        if self.mta.run_time_s_max > 0 && last_send_s >= self.mta.run_time_s_max {
            return Err(at(
                campaign_at,
                if c.schedule.is_empty() {
                    "campaign.sends"
                } else {
                    "campaign.schedule"
                },
                format!(
                    "the last send starts at {last_send_s} s, after mta.run_time_s_max ({} s): raise run_time_s_max or send fewer times",
                    self.mta.run_time_s_max
                ),
            ));
        }
        let Some(r) = &self.reputation else {
            return Ok(());
        };
        // The [reputation] table's line.
        let rep_at = text.find("[reputation]").unwrap_or(0);
        let checks: [(&str, bool); 5] = [
            (
                "reputation.initial",
                r.initial.is_none_or(|v| (0.0..=100.0).contains(&v)),
            ),
            ("reputation.new_daily", r.new_daily.is_none_or(|v| v >= 1)),
            (
                "reputation.growth",
                r.growth.is_none_or(|v| v.is_finite() && v >= 1.0),
            ),
            ("reputation.bulk_daily", r.bulk_daily.is_none_or(|v| v >= 1)),
            (
                "reputation.act_within_s",
                r.act_within_s
                    .is_none_or(|v| (1..=30 * 86_400).contains(&v)),
            ),
        ];
        let why = |field: &str| match field {
            "reputation.initial" => "must be a score between 0 and 100",
            "reputation.growth" => "must be a number >= 1",
            "reputation.act_within_s" => "must be between 1 and 2592000 (30 days)",
            _ => "must be at least 1",
        };
        for (field, ok) in checks {
            if !ok {
                return Err(at(rep_at, field, why(field).into()));
            }
        }
        Ok(())
    }

    fn validate_segments(&self, text: &str, path: &Path) -> Result<(), ScenarioError> {
        let invalid = |offset: usize, field: String, message: String| ScenarioError::Invalid {
            file: path.to_path_buf(),
            line: line_of(text, offset),
            field,
            message,
        };
        let mut total = 0.0;
        for (i, s) in self.segments.iter().enumerate() {
            let (at, seg) = (s.span().start, s.get_ref());
            let rates = [
                ("percent", Some(seg.percent)),
                ("open_percent", seg.open_percent),
                ("click_percent", seg.click_percent),
                ("unsubscribe_percent", seg.unsubscribe_percent),
                ("complaint_percent", seg.complaint_percent),
            ];
            for (field, value) in rates {
                if let Some(p) = value
                    && !(0.0..=100.0).contains(&p)
                {
                    return Err(invalid(
                        at,
                        format!("segment[{i}].{field}"),
                        "must be between 0 and 100".into(),
                    ));
                }
            }
            if seg.kind == SegmentKind::Recipient
                && crate::engage::preset(&seg.name).is_none()
                && seg.open_percent.is_none()
            {
                return Err(invalid(
                    at,
                    format!("segment[{i}].open_percent"),
                    format!(
                        "segment {:?} has no preset (engaged, occasional, dormant): give its rates",
                        seg.name
                    ),
                ));
            }
            total += seg.percent;
        }
        if total > 100.0 + 1e-9 {
            return Err(invalid(
                self.segments[0].span().start,
                "segment[*].percent".into(),
                format!("the segments add up to {total}%, more than 100"),
            ));
        }
        Ok(())
    }

    pub fn campaign(&self) -> &Campaign {
        self.campaign.get_ref()
    }

    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.domains.iter().map(|d| d.get_ref())
    }

    pub fn senders(&self) -> impl Iterator<Item = &Sender> {
        self.senders.iter().map(|s| s.get_ref())
    }
}

impl Sender {
    pub fn from_address(&self) -> String {
        self.from
            .clone()
            .unwrap_or_else(|| format!("news@{}", self.domain))
    }

    pub fn feedback_address(&self) -> String {
        self.feedback
            .clone()
            .unwrap_or_else(|| format!("fbl@{}", self.domain))
    }
}

impl Domain {
    /// MX hosts with defaults applied.
    pub fn mx_hosts(&self) -> Vec<MxSpec> {
        if self.mx.is_empty() {
            vec![MxSpec {
                host: format!("mx1.{}", self.name),
                preference: 10,
                down: false,
                behaviour: None,
                tls: TlsFault::Ok,
            }]
        } else {
            self.mx.clone()
        }
    }
}

/// Ten years in seconds: the latest a scenario's timed event may start.
const MAX_SCENARIO_S: u64 = 10 * 365 * 86_400;

/// The rules a domain and a host's overrides of them share.
struct Rules<'a> {
    tempfail: Option<&'a TempFail>,
    mailbox_full: Option<&'a MailboxFull>,
    drops: Option<&'a DropConnections>,
    rate_limit: Option<&'a RateLimit>,
    slow: Option<&'a Slow>,
}

/// The checks of [`Rules`]: the field and the message of the first that fails. Shares are
/// 0-100; delays are at most a day (an SMTP client's timeouts are minutes); rates are finite
/// and at least one message in about eleven days.
fn check_rules(prefix: &str, rules: &Rules) -> Result<(), (String, String)> {
    // 100% for ever would never deliver anything: allowed only for a window.
    if rules.tempfail.is_some_and(|t| {
        !(0.0..=100.0).contains(&t.percent) || (t.percent >= 100.0 && t.until_s.is_none())
    }) {
        return Err((
            format!("{prefix}.tempfail.percent"),
            "must be at least 0 and below 100 (100 only with until_s)".into(),
        ));
    }
    let percents = [
        (
            "mailbox_full.percent",
            rules.mailbox_full.map(|m| m.percent),
        ),
        (
            "drop.before_data_percent",
            rules.drops.map(|d| d.before_data_percent),
        ),
        (
            "drop.during_data_percent",
            rules.drops.map(|d| d.during_data_percent),
        ),
    ];
    for (field, value) in percents {
        if value.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
            return Err((
                format!("{prefix}.{field}"),
                "must be between 0 and 100".into(),
            ));
        }
    }
    if let Some(r) = rules.rate_limit
        && !(r.messages_per_s.is_finite()
            && r.messages_per_s >= 1e-6
            && r.burst.is_finite()
            && r.burst >= 1.0)
    {
        return Err((
            format!("{prefix}.rate_limit"),
            "messages_per_s must be a number of at least 0.000001 and burst at least 1".into(),
        ));
    }
    if let Some(slow) = rules.slow {
        for (field, value) in [("banner_s", slow.banner_s), ("reply_s", slow.reply_s)] {
            if !(0.0..=86_400.0).contains(&value) {
                return Err((
                    format!("{prefix}.slow.{field}"),
                    format!("{value} is not a delay: give seconds from 0 to 86400"),
                ));
            }
        }
    }
    Ok(())
}

/// A host name to give in EHLO and greetings (RFC 5321 section 4.1.1.1's Domain: dotted
/// labels of letters, digits and inner hyphens), or why not.
pub fn host_name(name: &str) -> Result<(), String> {
    if valid_domain(name) && !name.ends_with('.') {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a host name (labels of ASCII letters, digits and inner hyphens, joined by dots: RFC 5321's Domain)"
        ))
    }
}

/// Where the line of `key` is in the table whose header is at `table_at` (before the next
/// table's header).
fn field_in_table(text: &str, table_at: usize, key: &str) -> Option<usize> {
    let mut offset = table_at;
    for (n, line) in text.get(table_at..)?.split_inclusive('\n').enumerate() {
        let t = line.trim_start();
        if n > 0 && t.starts_with('[') {
            return None;
        }
        if t.starts_with(key) {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

/// A path the scenario names: relative to the scenario file, as a user writes it.
pub(crate) fn relative_to(scenario: &Path, named: &Path) -> PathBuf {
    match scenario.parent() {
        Some(dir) if named.is_relative() => dir.join(named),
        _ => named.to_path_buf(),
    }
}

fn valid_domain(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "t"
seed = 1
[[sender]]
domain = "s.test"
[[domain]]
name = "a.test"
[campaign]
messages = 10
"#;

    fn err(text: &str) -> String {
        Scenario::parse(text, Path::new("x.toml"))
            .unwrap_err()
            .to_string()
    }

    /// Values that once panicked a run, wrote outside `runs/` or broke the From header (an
    /// independent review's findings) are refused with their field.
    #[test]
    fn hostile_values_are_refused_with_their_field() {
        let cases = [
            ("name = \"t\"", "name = \"../../escaped\"", "name"),
            ("name = \"t\"", "name = \"\"", "name"),
            (
                "name = \"a.test\"",
                "name = \"a.test\"\nslow = { reply_s = inf }",
                "domain[0].slow.reply_s",
            ),
            (
                "name = \"a.test\"",
                "name = \"a.test\"\nslow = { banner_s = 1e30 }",
                "domain[0].slow.banner_s",
            ),
            (
                "name = \"a.test\"",
                "name = \"a.test\"\nslow = { reply_s = nan }",
                "domain[0].slow.reply_s",
            ),
            (
                "name = \"a.test\"",
                "name = \"a.test\"\nweight = 1e308\n[[domain]]\nname = \"b.test\"\nweight = 1e308",
                "domain[*].weight",
            ),
            (
                "domain = \"s.test\"",
                "domain = \"s.test\"\nfrom = \"x\\r\\nBcc: evil@s.test\"",
                "sender[0].from",
            ),
            (
                "name = \"a.test\"",
                "name = \"a.test\"\nmx = [{ host = \"mx1.a.test\", behaviour = { tempfail = { percent = 500 } } }]",
                "domain[0].mx[0].behaviour.tempfail.percent",
            ),
            (
                "name = \"a.test\"",
                "name = \"a.test\"\nmx = [{ host = \"mx1.a.test\", behaviour = { rate_limit = { messages_per_s = 0, burst = 0 } } }]",
                "domain[0].mx[0].behaviour.rate_limit",
            ),
            (
                "name = \"a.test\"",
                "name = \"a.test\"\nrate_limit = { messages_per_s = 1e-300 }",
                "domain[0].rate_limit",
            ),
            (
                "messages = 10",
                "messages = 10\n[transactional]\nmessages_per_s = 1\nmessages = 5\nstart_s = 18446744073709551615",
                "transactional.start_s",
            ),
            (
                "messages = 10",
                "messages = 10\n[transactional]\nmessages_per_s = 1e-300\nmessages = 5",
                "transactional.messages_per_s",
            ),
            (
                "messages = 10",
                "messages = 10\n[transactional]\nmessages_per_s = 1\nmessages = 18446744073709551615",
                "transactional.messages",
            ),
        ];
        for (from, to, field) in cases {
            assert_eq!(GOOD.matches(from).count(), 1, "{from}");
            let e = err(&GOOD.replace(from, to));
            assert!(e.contains(field) && e.contains("x.toml:"), "{to}: {e}");
        }
        // Files that cannot be read, and a zero time limit, name their line and field (an
        // independent review: the first two named no line, the third blamed campaign.sends).
        let e = err(&GOOD.replace(
            "domain = \"s.test\"",
            "domain = \"s.test\"\ndkim_private_key = \"nonexistent.pem\"",
        ));
        assert!(
            e.starts_with("x.toml:6: sender[0].dkim_private_key: nonexistent.pem"),
            "{e}"
        );
        let e = err(&GOOD.replace("seed = 1", "seed = 1\nzones = [\"nonexistent.zone\"]"));
        assert!(e.starts_with("x.toml:4: zones[0]: nonexistent.zone"), "{e}");
        let e = err(&format!("{GOOD}[mta]\nrun_time_s_max = 0\n"));
        assert!(e.contains("mta.run_time_s_max: must be positive"), "{e}");
        // The MTA's EHLO name: a CRLF in it put a command of its own on the wire, and "" made
        // every message bounce (an independent review).
        for hostname in ["a b\r\nX: y", "", "mta..test", "-mta.test"] {
            let text = format!("{GOOD}[mta]\nretry_interval_s_min = 60\nhostname = {hostname:?}\n");
            let e = err(&text);
            assert!(
                e.starts_with("x.toml:12:") && e.contains("mta.hostname"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_file_that_is_not_utf8_is_refused_with_its_line_and_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.toml");
        std::fs::write(&path, b"name = \"t\"\nseed = 1\n\xff\xfe").unwrap();
        let e = Scenario::load(&path).unwrap_err().to_string();
        assert!(
            e.ends_with("junk.toml:3: (text): byte 20 is not UTF-8 (a TOML file is UTF-8 text)"),
            "{e}"
        );
    }

    #[test]
    fn minimal_scenario_parses_with_defaults() {
        let s = Scenario::parse(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(s.campaign().size_bytes, 5120);
        assert_eq!(s.domains().next().unwrap().mx_hosts()[0].host, "mx1.a.test");
        assert_eq!(s.senders().next().unwrap().from_address(), "news@s.test");
    }

    #[test]
    fn deliverability_fields_are_checked_and_name_their_field() {
        let base = "name = \"t\"\n[[sender]]\ndomain = \"s.test\"\n[[domain]]\nname = \"a.test\"\n";
        let ok = format!(
            "{base}[mta]\nrun_time_s_max = 86400\n[reputation]\nnew_daily = 10\n[[segment]]\nname = \"dormant\"\npercent = 40\n[campaign]\nhtml = true\nschedule = [5, 10, 20]\nsunset_after_sends = 2\n"
        );
        let s = Scenario::parse(&ok, Path::new("x.toml")).unwrap();
        let c = s.campaign();
        assert_eq!(
            (c.sends, c.messages, c.messages_in(1), c.total()),
            (3, 20, 10, 35)
        );
        let cases = [
            (
                "[campaign]\nmessages = 5\nschedule = [1, 2]\n",
                "x.toml:6: campaign.schedule: replaces messages and sends",
            ),
            (
                "[campaign]\nschedule = [1, 0]\n",
                "campaign.schedule[1]: must be at least 1",
            ),
            (
                "[campaign]\nmessages = 5\nsunset_after_sends = 2\n",
                "campaign.sunset_after_sends: needs html = true",
            ),
            (
                "[[segment]]\nname = \"engaged\"\npercent = 10\n[campaign]\nmessages = 5\n",
                "segment[0]: recipients act only where providers place mail",
            ),
            (
                "[reputation]\n[[segment]]\nname = \"fans\"\npercent = 10\n[campaign]\nmessages = 5\n",
                "segment[0].open_percent: segment \"fans\" has no preset",
            ),
            (
                "[reputation]\n[[segment]]\nname = \"engaged\"\npercent = 70\n[[segment]]\nname = \"dormant\"\npercent = 40\n[campaign]\nmessages = 5\n",
                "segment[*].percent: the segments add up to 110%",
            ),
            (
                "[reputation]\n[[segment]]\nname = \"engaged\"\npercent = 10\nclick_percent = 101\n[campaign]\nmessages = 5\n",
                "segment[0].click_percent: must be between 0 and 100",
            ),
            ("[campaign]\nschedule = []\n", "campaign.messages: required"),
            (
                "[campaign]\nschedule = [1, 2, 3]\n",
                "campaign.schedule: the last send starts at 7200 s, after mta.run_time_s_max (600 s)",
            ),
            (
                "[reputation]\ninitial = nan\n[campaign]\nmessages = 5\n",
                "reputation.initial: must be a score",
            ),
            (
                "[reputation]\ngrowth = -3\n[campaign]\nmessages = 5\n",
                "reputation.growth",
            ),
            (
                "[reputation]\nnew_daily = 0\n[campaign]\nmessages = 5\n",
                "reputation.new_daily",
            ),
            (
                "[reputation]\nact_within_s = 9223372036854775807\n[campaign]\nmessages = 5\n",
                "reputation.act_within_s",
            ),
            (
                "[campaign]\nmessages = 5\nhtml = true\nunsubscribe_url = \"javascript:alert(1)\"\n",
                "campaign.unsubscribe_url",
            ),
            (
                "[campaign]\nmessages = 5\nhtml = true\nhtml_template = \"/nonexistent/t.html\"\n",
                "campaign.html_template: /nonexistent/t.html",
            ),
        ];
        for (tail, want) in cases {
            let e = err(&format!("{base}{tail}"));
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = GOOD.replace("[campaign]", "[campaign]\nmesages = 3");
        let e = err(&text);
        assert!(e.starts_with("x.toml:9:"), "{e}");
        assert!(e.contains("mesages"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_line() {
        let e = err(&GOOD.replace("messages = 10", "messages = \"ten\""));
        assert!(e.starts_with("x.toml:9:"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_field_and_its_table() {
        let text = GOOD.replace("name = \"a.test\"", "name = \"a.test\"\nweight = -1");
        let e = err(&text);
        assert!(e.contains("domain[0].weight"), "{e}");
        assert!(
            e.starts_with("x.toml:6:") || e.starts_with("x.toml:7:"),
            "{e}"
        );
        let e = err(&GOOD.replace("name = \"a.test\"", "name = \"bad domain\""));
        assert!(e.contains("domain[0].name"), "{e}");
        let e = err(&GOOD.replace("messages = 10", "messages = 0"));
        assert!(e.contains("campaign.messages"), "{e}");
        let e = err("name = \"t\"");
        assert!(e.contains("x.toml") && e.contains("missing field"), "{e}");
    }
}
