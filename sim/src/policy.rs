//! A simulated recipient server's decisions, in one place and without I/O.
//!
//! [`ReceiverPolicy`] holds a host's behaviour (its rules and its provider profile's reply
//! texts) and every piece of state the rules keep: open connections per client address,
//! token buckets, greylist triplets, attempt counters. It is told the facts of each step of a
//! session (the scenario time, the client's address, the envelope, the message, the
//! authentication verdicts) and answers with a [`Verdict`]; the fleet's SMTP backend
//! ([`crate::fleet::HostBackend`]) carries it out: it writes the reply, records the event,
//! stores the message, queues the later report. Nothing else decides what a simulated server
//! does.

use crate::behaviour::{Behaviour, fill};
use crate::fleet::LaterKind;
use crate::scenario::SegmentKind;
use crate::world::{chance, chance_parts};
use mailsim_smtp::Reply;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// What the server does at one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on (and answer this reply where the step has one).
    Accept(Reply),
    /// Refuse with this reply (recorded as a refusal).
    Refuse(Reply),
    /// Cut the connection without answering (recorded as a refusal).
    Drop,
}

/// The time of a step: the clock's reading and the scenario time (since the run began).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub ms: u64,
    pub elapsed_ms: u64,
}

/// A report the server will send later about a message it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaterDecision {
    pub kind: LaterKind,
    pub due_ms: u64,
}

/// What the verifier found, as far as a policy needs it.
pub struct AuthFacts<'a> {
    pub header_from: &'a str,
    pub spf: &'a str,
    pub dkim: &'a str,
    pub dmarc: &'a str,
    pub dmarc_policy: Option<&'a str>,
}

/// Where an accepted copy goes, and what its recipient will do with it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementDecision {
    pub placement: crate::reputation::Placement,
    /// Actions and their clock times.
    pub actions: Vec<(crate::engage::Act, u64)>,
}

/// The policy's tables are looked up several times for every RCPT (greylisting triplets,
/// attempt counters), millions of times in a large virtual run: hashed with foldhash rather
/// than SipHash (seeded per table all the same; nothing iterates them).
type Table<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct State {
    attempts: Table<String, u32>,
    greylist: Table<String, u64>,
    buckets: Table<IpAddr, (f64, u64)>,
    connections: Table<IpAddr, usize>,
    data_attempts: u64,
}

/// A greylisting triplet: the client's address, the reverse path, the recipient.
fn greylist_triplet(ip: &str, mail_from: &str, lower_rcpt: &str) -> String {
    let mut t = String::with_capacity(ip.len() + mail_from.len() + lower_rcpt.len() + 2);
    t.push_str(ip);
    t.push('|');
    t.extend(mail_from.chars().map(|c| c.to_ascii_lowercase()));
    t.push('|');
    t.push_str(lower_rcpt);
    t
}

/// `s` in ASCII lower case, copied only when it has an upper-case letter (addresses seldom do,
/// and every RCPT lowers its address).
pub(crate) fn lowercase(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(s.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The domain of an address (after its last `@`; empty without one).
pub(crate) fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// What the reputation model is told of a message: the authenticated domain is the From
/// domain (DKIM d= aligns with it when DMARC passes).
fn message_facts<'a>(
    ip: &'a str,
    auth: &AuthFacts<'a>,
    one_click: bool,
    content_score: u32,
    key: &'a str,
) -> crate::reputation::MessageFacts<'a> {
    crate::reputation::MessageFacts {
        ip,
        domain: auth.header_from,
        spf_pass: auth.spf == "pass",
        dkim_pass: auth.dkim == "pass",
        dmarc_pass: auth.dmarc == "pass",
        one_click,
        content_score,
        key,
    }
}

/// One host's rules and memory (a provider's reputation memory is shared by its hosts).
pub struct ReceiverPolicy {
    domain: String,
    behaviour: Behaviour,
    state: State,
}

impl ReceiverPolicy {
    pub fn new(domain: &str, behaviour: Behaviour) -> Self {
        ReceiverPolicy {
            domain: domain.to_string(),
            behaviour,
            state: State::default(),
        }
    }

    /// Does the host's provider keep a reputation (and place mail)?
    pub fn has_reputation(&self) -> bool {
        self.behaviour.deliverability.is_some()
    }

    /// The largest message the host takes (its SIZE), when it has a limit of its own.
    pub fn message_size_max(&self) -> Option<usize> {
        self.behaviour.message_size_max
    }

    /// A client connected: a refusal when it has too many connections open.
    pub fn connect(&mut self, now: Now, peer: IpAddr) -> Option<Reply> {
        let open = {
            let n = self.state.connections.entry(peer).or_insert(0);
            *n += 1;
            *n
        };
        let b = &self.behaviour;
        let limit = b.rate_limit.as_ref().and_then(|r| r.active(now.elapsed_ms));
        if let Some(max) = limit.and_then(|r| r.connections_max)
            && open > max
        {
            let ip = peer.to_string();
            return Some(fill(&b.replies.too_many_connections, &[("ip", &ip)]));
        }
        None
    }

    /// A session ended.
    pub fn disconnect(&mut self, peer: IpAddr) {
        if let Some(n) = self.state.connections.get_mut(&peer) {
            *n = n.saturating_sub(1);
        }
    }

    /// How long the banner takes (a slow server).
    pub fn greeting_delay(&self, now: Now) -> Duration {
        self.slow(now, |s| s.banner_s)
    }

    /// How long each batch of replies takes (a slow server).
    pub fn reply_delay(&self, now: Now) -> Duration {
        self.slow(now, |s| s.reply_s)
    }

    fn slow(&self, now: Now, seconds: impl Fn(&crate::scenario::Slow) -> f64) -> Duration {
        let b = &self.behaviour;
        let slow = b.slow.as_ref().and_then(|s| s.active(now.elapsed_ms));
        slow.map_or(Duration::ZERO, |s| {
            Duration::from_secs_f64(seconds(s).max(0.0))
        })
    }

    /// MAIL FROM, in a session encrypted (`tls`) or not.
    pub fn mail(&self, _from: &str, tls: bool) -> Verdict {
        if self.behaviour.tls_required && !tls {
            return Verdict::Refuse(self.behaviour.replies.tls_required.clone());
        }
        Verdict::Accept(Reply::new(250, (2, 1, 0), "sender OK"))
    }

    /// RCPT TO, in a transaction from `mail_from`.
    pub fn rcpt(&mut self, now: Now, peer: IpAddr, mail_from: &str, rcpt: &str) -> Verdict {
        let lower = lowercase(rcpt);
        let Some((local, domain)) = lower.rsplit_once('@') else {
            return Verdict::Refuse(Reply::new(501, (5, 1, 3), "bad recipient address"));
        };
        if domain != self.domain {
            return Verdict::Refuse(Reply::new(550, (5, 7, 1), "relaying denied"));
        }
        let elapsed = now.elapsed_ms;
        let ip = peer.to_string();
        let vars = [("rcpt", &*lower), ("ip", ip.as_str())];
        if let Some(limit) = self
            .behaviour
            .rate_limit
            .as_ref()
            .and_then(|r| r.active(elapsed))
        {
            let (rate, burst, close) = (limit.messages_per_s, limit.burst, limit.close);
            if !self.take_token(now.ms, peer, rate, burst) {
                let b = &self.behaviour;
                let reply = if close {
                    &b.replies.rate_limited_close
                } else {
                    &b.replies.rate_limited
                };
                return Verdict::Refuse(fill(reply, &vars));
            }
        }
        let b = &self.behaviour;
        if self.unknown(local, &lower) {
            if let Some(d) = &b.deliverability {
                let mut provider = d.provider.lock().unwrap_or_else(|p| p.into_inner());
                provider.unknown_user(elapsed, &ip, domain_of(mail_from));
            }
            return Verdict::Refuse(fill(&b.replies.unknown_user, &vars));
        }
        if let Some(permanent) = self.full(elapsed, &lower) {
            let reply = if permanent {
                &b.replies.mailbox_full_permanent
            } else {
                &b.replies.mailbox_full
            };
            return Verdict::Refuse(fill(reply, &vars));
        }
        if let Some(window_ms) = self.greylist_window_ms(elapsed) {
            let triplet = greylist_triplet(&ip, mail_from, &lower);
            let first = *self.state.greylist.entry(triplet).or_insert(now.ms);
            if now.ms < first + window_ms {
                return Verdict::Refuse(fill(&self.behaviour.replies.greylisted, &vars));
            }
        }
        if let Some(percent) = self.tempfail_percent(elapsed) {
            let n = self.attempt(&lower);
            if self.tempfail_draw(&lower, n, percent) {
                return Verdict::Refuse(fill(&self.behaviour.replies.tempfail, &vars));
            }
        }
        let b = &self.behaviour;
        if let Some(d) = b.drops.as_ref().and_then(|d| d.active(elapsed)) {
            let (seed, percent) = (b.seed, d.before_data_percent);
            let n = self.attempt(&format!("drop:{lower}"));
            if chance(seed, &format!("drop-rcpt:{lower}#{n}"), percent) {
                return Verdict::Drop;
            }
        }
        if self.behaviour.deliverability.is_some() {
            let n = self.attempt(&format!("rep:{lower}"));
            if let Some(d) = &self.behaviour.deliverability {
                let mut provider = d.provider.lock().unwrap_or_else(|p| p.into_inner());
                let sender_domain = domain_of(mail_from);
                let key = format!("{lower}#{n}");
                if let Some(reply) = provider.admit(elapsed, &ip, sender_domain, &lower, &key) {
                    let vars = [("ip", ip.as_str()), ("domain", sender_domain)];
                    return Verdict::Refuse(fill(&reply, &vars));
                }
                let kind = d.recipients.of(&lower).kind;
                if kind != SegmentKind::Recipient {
                    let pristine = kind == SegmentKind::PristineTrap;
                    provider.trap_hit(elapsed, &ip, sender_domain, pristine);
                }
            }
        }
        Verdict::Accept(Reply::new(250, (2, 1, 5), "recipient OK"))
    }

    /// Whether RCPT TO `rcpt` in a transaction from `mail_from` would be refused now, judged
    /// from the rules that draw nothing on the way and without changing any state: the address,
    /// unknown users, full mailboxes, greylisting, temporary failures (the next attempt's draw).
    /// False where it is not sure (a rate limit, drops or a provider's admission may still
    /// refuse). A guess for work done ahead ([`crate::foresight`]), never a verdict: the
    /// recipient's own RCPT is judged by [`ReceiverPolicy::rcpt`].
    pub fn rcpt_refused_surely(&self, now: Now, peer: IpAddr, mail_from: &str, rcpt: &str) -> bool {
        let lower = lowercase(rcpt);
        let Some((local, domain)) = lower.rsplit_once('@') else {
            return true;
        };
        let elapsed = now.elapsed_ms;
        if domain != self.domain
            || self.unknown(local, &lower)
            || self.full(elapsed, &lower).is_some()
        {
            return true;
        }
        if let Some(window_ms) = self.greylist_window_ms(elapsed) {
            let triplet = greylist_triplet(&peer.to_string(), mail_from, &lower);
            // As `rcpt` would: a new triplet is first seen now.
            let first = self.state.greylist.get(&triplet).copied().unwrap_or(now.ms);
            if now.ms < first + window_ms {
                return true;
            }
        }
        self.tempfail_percent(elapsed).is_some_and(|percent| {
            let n = self.state.attempts.get(&*lower).copied().unwrap_or(0) + 1;
            self.tempfail_draw(&lower, n, percent)
        })
    }

    /// Is `lower` (`local` at this host's domain) an address the host does not know?
    fn unknown(&self, local: &str, lower: &str) -> bool {
        let b = &self.behaviour;
        b.unknown_list.contains(local) || chance(b.seed, lower, b.unknown_percent)
    }

    /// Is `lower`'s mailbox full at scenario time `elapsed` (and for good: `Some(true)`)?
    fn full(&self, elapsed: u64, lower: &str) -> Option<bool> {
        let b = &self.behaviour;
        let full = b.mailbox_full.as_ref().and_then(|m| m.active(elapsed))?;
        chance_parts(b.seed, &[b"full:", lower.as_bytes()], full.percent).then_some(full.permanent)
    }

    /// The greylisting window, when the host greylists at scenario time `elapsed`.
    fn greylist_window_ms(&self, elapsed: u64) -> Option<u64> {
        let grey = self.behaviour.greylist.as_ref()?.active(elapsed)?;
        Some(grey.window_s * 1000)
    }

    /// The share of RCPT attempts answered with a temporary failure at scenario time `elapsed`.
    fn tempfail_percent(&self, elapsed: u64) -> Option<f64> {
        let t = self.behaviour.tempfail.as_ref()?.active(elapsed)?;
        Some(t.percent)
    }

    /// Whether the `n`-th attempt (1-based) for `lower` draws a temporary failure.
    fn tempfail_draw(&self, lower: &str, n: u32, percent: f64) -> bool {
        let mut digits = itoa::Buffer::new();
        let n = digits.format(n).as_bytes();
        chance_parts(self.behaviour.seed, &[lower.as_bytes(), b"#", n], percent)
    }

    /// The message, before it is verified: a drop during DATA, or the content filter.
    pub fn data(&mut self, now: Now, peer: IpAddr, rcpt: &str, message: &[u8]) -> Option<Verdict> {
        let b = &self.behaviour;
        if let Some(d) = b.drops.as_ref().and_then(|d| d.active(now.elapsed_ms)) {
            let (seed, percent) = (b.seed, d.during_data_percent);
            self.state.data_attempts += 1;
            let n = self.state.data_attempts;
            if chance(seed, &format!("drop-data:{rcpt}#{n}"), percent) {
                return Some(Verdict::Drop);
            }
        }
        let b = &self.behaviour;
        if let Some(filter) = &b.content_filter {
            let text = String::from_utf8_lossy(message).to_ascii_lowercase();
            let score = filter
                .words
                .iter()
                .filter(|w| text.contains(&w.to_ascii_lowercase()))
                .count() as u32;
            if score >= filter.score_max {
                let (ip, s) = (peer.to_string(), score.to_string());
                let reply = fill(&b.replies.spam, &[("ip", &ip), ("score", &s)]);
                return Some(Verdict::Refuse(reply));
            }
        }
        None
    }

    /// The message, once verified: refused when the host enforces a DMARC reject policy that
    /// failed.
    pub fn authenticated(&self, peer: IpAddr, auth: &AuthFacts<'_>) -> Option<Verdict> {
        let b = &self.behaviour;
        if b.dmarc_enforce && auth.dmarc == "fail" && auth.dmarc_policy == Some("reject") {
            let ip = peer.to_string();
            let reply = fill(
                &b.replies.dmarc_reject,
                &[("domain", auth.header_from), ("ip", &ip)],
            );
            return Some(Verdict::Refuse(reply));
        }
        None
    }

    /// The refusal a provider with a reputation model gives a bulk sender's message that is
    /// not authenticated (its published bulk-sender rule).
    pub fn bulk_rules(&self, now: Now, peer: IpAddr, auth: &AuthFacts<'_>) -> Option<Verdict> {
        let d = self.behaviour.deliverability.as_ref()?;
        let ip = peer.to_string();
        let facts = message_facts(&ip, auth, false, 0, "");
        let mut provider = d.provider.lock().unwrap_or_else(|p| p.into_inner());
        let reply = provider.refuse_unauthenticated(now.elapsed_ms, &facts)?;
        Some(Verdict::Refuse(fill(
            &reply,
            &[("domain", auth.header_from), ("ip", &ip)],
        )))
    }

    /// Inbox or spam folder for an accepted copy, and what its recipient will do with it
    /// (None: the provider has no reputation model, everything goes to the inbox).
    pub fn place(
        &self,
        now: Now,
        peer: IpAddr,
        rcpt: &str,
        message_id: &str,
        auth: &AuthFacts<'_>,
        (links, content_score): &(crate::engage::Links, u32),
    ) -> Option<PlacementDecision> {
        let d = self.behaviour.deliverability.as_ref()?;
        let ip = peer.to_string();
        let key = format!("{}|{message_id}", rcpt.to_ascii_lowercase());
        let facts = message_facts(&ip, auth, links.one_click(), *content_score, &key);
        let mut provider = d.provider.lock().unwrap_or_else(|p| p.into_inner());
        let placement = provider.place(now.elapsed_ms, &facts);
        let actions = d.recipients.actions(rcpt, &key, placement.spam, now.ms);
        let start = now.ms - now.elapsed_ms;
        for (act, at) in &actions {
            let at = at.saturating_sub(start);
            match act {
                crate::engage::Act::Open => provider.open_at(at, &ip, facts.domain, placement.spam),
                crate::engage::Act::Complaint => provider.complaint_at(at, &ip, facts.domain),
                _ => {}
            }
        }
        Some(PlacementDecision { placement, actions })
    }

    /// The provider's reputation changes since the last call (for the event log), with the
    /// provider's name.
    pub fn reputation_changes(&self) -> Option<(String, Vec<crate::reputation::Change>)> {
        let d = self.behaviour.deliverability.as_ref()?;
        let changes = d
            .provider
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_changes();
        (!changes.is_empty()).then(|| (d.name.clone(), changes))
    }

    /// The message's links and its content score for this provider (its content filter's
    /// words count), from what was read of it.
    pub fn judge(&self, read: crate::foresight::ContentRead) -> (crate::engage::Links, u32) {
        let words = self
            .behaviour
            .content_filter
            .as_ref()
            .map_or(&[][..], |f| &f.words[..]);
        (read.links, read.facts.score(words))
    }

    /// A report to send later about an accepted message for `rcpt`: a bounce or a complaint
    /// (not both), or nothing.
    pub fn later(&self, now: Now, rcpt: &str) -> Option<LaterDecision> {
        let b = &self.behaviour;
        let lower = rcpt.to_ascii_lowercase();
        let picks = [
            (LaterKind::Bounce, b.async_bounce.as_ref(), "async-bounce"),
            (LaterKind::Complaint, b.complaints.as_ref(), "complaint"),
        ];
        for (kind, rule, tag) in picks {
            let Some(rule) = rule else { continue };
            if chance(b.seed, &format!("{tag}:{lower}"), rule.percent) {
                return Some(LaterDecision {
                    kind,
                    due_ms: now.ms + rule.delay_s * 1000,
                });
            }
        }
        None
    }

    /// Take a token from the client's bucket; false when it is empty.
    fn take_token(&mut self, now_ms: u64, ip: IpAddr, rate: f64, burst: f64) -> bool {
        let (tokens, last) = self.state.buckets.entry(ip).or_insert((burst, now_ms));
        *tokens = (*tokens + (now_ms.saturating_sub(*last)) as f64 / 1000.0 * rate).min(burst);
        *last = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The n-th attempt for a key (1-based), for per-attempt random draws.
    fn attempt(&mut self, key: &str) -> u32 {
        let n = self.state.attempts.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;
    use crate::world::World;

    /// The policy of `domain`'s first host in a scenario whose domains are given as TOML.
    fn policy(domains: &str, domain: &str) -> ReceiverPolicy {
        let text = format!(
            "name = \"p\"\nseed = 1\n[[sender]]\ndomain = \"s.test\"\ndkim_algorithm = \"ed25519\"\n{domains}\n[campaign]\nmessages = 1\n"
        );
        let sc = Scenario::parse(&text, std::path::Path::new("p.toml")).unwrap();
        let world = World::build(&sc).unwrap();
        let host = world.hosts.iter().find(|h| h.domain == domain).unwrap();
        ReceiverPolicy::new(&host.domain, host.behaviour.clone())
    }

    fn at(s: u64) -> Now {
        Now {
            ms: 1_000_000 + s * 1000,
            elapsed_ms: s * 1000,
        }
    }

    fn code(v: &Verdict) -> u16 {
        match v {
            Verdict::Accept(r) | Verdict::Refuse(r) => r.code,
            Verdict::Drop => 0,
        }
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn greylisting_refuses_a_new_triplet_until_its_window_has_passed() {
        let mut p = policy(
            "[[domain]]\nname = \"g.test\"\ngreylist = { window_s = 300 }",
            "g.test",
        );
        let first = p.rcpt(at(0), PEER, "a@s.test", "u@g.test");
        assert!(
            matches!(first, Verdict::Refuse(ref r) if r.code == 451),
            "{first:?}"
        );
        assert_eq!(code(&p.rcpt(at(299), PEER, "a@s.test", "u@g.test")), 451);
        assert_eq!(code(&p.rcpt(at(300), PEER, "a@s.test", "u@g.test")), 250);
        // Another sender is another triplet.
        assert_eq!(code(&p.rcpt(at(300), PEER, "b@s.test", "u@g.test")), 451);
    }

    /// The guess made for work done ahead is the verdict the rules then give, attempt after
    /// attempt, for every rule it reads (each drawing for its own share of recipients), and it
    /// changes nothing: a policy asked before every RCPT answers as one never asked.
    #[test]
    fn a_sure_refusal_is_the_refusal_that_follows() {
        let domain = "[[domain]]\nname = \"m.test\"\ngreylist = { window_s = 300 }\nmailbox_full = { percent = 5 }\nunknown_users = { percent = 5, list = [\"gone\"] }\ntempfail = { percent = 20 }";
        let (mut asked, mut alone) = (policy(domain, "m.test"), policy(domain, "m.test"));
        let rcpts: Vec<String> = (0..400)
            .map(|i| match i % 3 {
                0 => format!("U{i}@M.test"),
                _ => format!("u{i}@m.test"),
            })
            .chain([
                "gone@m.test".into(),
                "x@elsewhere.test".into(),
                "nodomain".into(),
            ])
            .collect();
        let (mut refused, mut accepted) = (0, 0);
        let mut kinds = std::collections::BTreeSet::new();
        for t in [0, 100, 299, 300, 301, 900, 4000, 4001] {
            for (i, rcpt) in rcpts.iter().enumerate() {
                // Triplets that differ by sender or by client address alone, now and then.
                let k = i + t as usize;
                let from = if k.is_multiple_of(7) {
                    "b@s.test"
                } else {
                    "a@s.test"
                };
                let peer = if k.is_multiple_of(11) { OTHER } else { PEER };
                let guess = asked.rcpt_refused_surely(at(t), peer, from, rcpt);
                let verdict = asked.rcpt(at(t), peer, from, rcpt);
                assert_eq!(
                    verdict,
                    alone.rcpt(at(t), peer, from, rcpt),
                    "{rcpt} at {t} s"
                );
                let is_refused = matches!(verdict, Verdict::Refuse(_));
                assert_eq!(guess, is_refused, "{rcpt} at {t} s: {verdict:?}");
                if let Verdict::Refuse(r) = &verdict {
                    kinds.insert((r.code, r.enhanced.clone()));
                }
                refused += usize::from(is_refused);
                accepted += usize::from(!is_refused);
            }
        }
        // Every rule had its turn: the address, unknown and full mailboxes, greylisting and
        // temporary failures, each its own reply.
        assert_eq!(kinds.len(), 6, "{kinds:?}");
        assert!(
            accepted > 1000 && refused > 1000,
            "{accepted} accepted, {refused} refused"
        );
        // A window of nothing lets a new triplet through at once; a rate limit is never guessed.
        let mut open = policy(
            "[[domain]]\nname = \"z.test\"\ngreylist = { window_s = 0 }",
            "z.test",
        );
        assert!(!open.rcpt_refused_surely(at(0), PEER, "a@s.test", "u@z.test"));
        assert_eq!(code(&open.rcpt(at(0), PEER, "a@s.test", "u@z.test")), 250);
        let mut limited = policy(
            "[[domain]]\nname = \"r.test\"\nrate_limit = { messages_per_s = 1.0, burst = 1.0 }",
            "r.test",
        );
        assert_eq!(
            code(&limited.rcpt(at(0), PEER, "a@s.test", "u1@r.test")),
            250
        );
        assert!(!limited.rcpt_refused_surely(at(0), PEER, "a@s.test", "u2@r.test"));
        assert!(code(&limited.rcpt(at(0), PEER, "a@s.test", "u2@r.test")) >= 400);
    }

    #[test]
    fn rate_limits_and_connection_caps_keep_state_per_client() {
        let mut p = policy(
            "[[domain]]\nname = \"r.test\"\nrate_limit = { messages_per_s = 1.0, burst = 2.0, connections_max = 2 }",
            "r.test",
        );
        let codes: Vec<u16> = (0..3)
            .map(|i| code(&p.rcpt(at(0), PEER, "a@s.test", &format!("u{i}@r.test"))))
            .collect();
        assert_eq!(codes[..2], [250, 250]);
        assert!(codes[2] >= 400, "{codes:?}");
        // A second later the bucket has one token again.
        assert_eq!(code(&p.rcpt(at(1), PEER, "a@s.test", "u9@r.test")), 250);
        assert!(p.connect(at(0), PEER).is_none());
        assert!(p.connect(at(0), PEER).is_none());
        assert!(
            p.connect(at(0), PEER).is_some(),
            "a third connection is over the cap"
        );
        p.disconnect(PEER);
        p.disconnect(PEER);
        assert!(p.connect(at(0), PEER).is_none());
    }

    #[test]
    fn unknown_users_relaying_dmarc_and_later_reports() {
        let mut p = policy(
            "[[domain]]\nname = \"u.test\"\nunknown_users = { list = [\"gone\"] }\ndmarc_enforce = true\ncomplaints = { percent = 100, delay_s = 60 }",
            "u.test",
        );
        assert_eq!(code(&p.rcpt(at(0), PEER, "a@s.test", "gone@u.test")), 550);
        assert_eq!(code(&p.rcpt(at(0), PEER, "a@s.test", "x@other.test")), 550);
        assert_eq!(code(&p.rcpt(at(0), PEER, "a@s.test", "here@u.test")), 250);
        let fail = AuthFacts {
            header_from: "s.test",
            spf: "pass",
            dkim: "pass",
            dmarc: "fail",
            dmarc_policy: Some("reject"),
        };
        assert!(matches!(
            p.authenticated(PEER, &fail),
            Some(Verdict::Refuse(_))
        ));
        let pass = AuthFacts {
            dmarc: "pass",
            ..fail
        };
        assert!(p.authenticated(PEER, &pass).is_none());
        assert_eq!(
            p.later(at(10), "here@u.test"),
            Some(LaterDecision {
                kind: LaterKind::Complaint,
                due_ms: at(10).ms + 60_000
            })
        );
    }
}
