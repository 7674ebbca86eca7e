//! A mailbox provider's memory of a sender: reputation per sending IP and per sending domain,
//! day by day, and the placement of each accepted message in the inbox or the spam folder.
//!
//! Sans-IO like the rest of [`crate::policy`]: the receiver policy tells it what happened (a
//! recipient accepted, an unknown user, a trap hit, a placement, what the recipient will do)
//! with the scenario time, and asks it whether to throttle and where to put a message. All
//! hosts of one recipient domain share one [`Provider`].
//!
//! The model (the README's "Deliverability model" explains it with every number):
//! - a subject (`ip:<addr>` or `domain:<d>`) starts at [`Model::initial`] and changes once a
//!   day, from that day's signals: complaints per message in the inbox (the providers' spam
//!   rate), unknown users per recipient tried, spam-trap hits, messages over the day's volume
//!   allowance, authentication failures, opens per delivered message; a clean day adds a
//!   little history;
//! - the volume allowance of an IP is [`Model::new_daily`] until it has a history, then
//!   [`Model::growth`] times its best earlier day (a warm-up: Gmail's guidelines say to
//!   increase volume slowly);
//! - placement: the spam-folder probability is a logistic function of the combined score
//!   (domain and IP weighted by [`Model::domain_weight`]), combined with the content score, a
//!   DMARC failure, and bulk mail without RFC 8058 one-click unsubscribe where the provider
//!   requires it; the largest part names the cause;
//! - a subject with a very low score is throttled (4xx) on a share of its messages, and below
//!   that refused (5xx).

use crate::world::chance;
use mailsim_smtp::Reply;
use std::collections::{BTreeMap, HashMap};

/// A provider's numbers. Where a provider publishes one, the profile's value is that one and
/// says where it is published; the rest are mailsim's assumptions, named as such.
#[derive(Debug, Clone)]
pub struct Model {
    pub initial: f64,
    pub new_daily: u64,
    pub growth: f64,
    /// Messages a day from one From domain that make it a bulk sender (5,000 at Gmail, Yahoo
    /// and Outlook.com, as each publishes).
    pub bulk_daily: u64,
    /// The spam rate to stay under (0.1 % at Gmail) and the one never to reach (0.3 % at Gmail
    /// and Yahoo).
    pub complaint_target: f64,
    pub complaint_max: f64,
    /// Unknown users per recipient tried above which a list counts as unkept (assumed: 2 %).
    pub unknown_max: f64,
    /// Bulk mail needs RFC 8058 one-click unsubscribe (Gmail, Yahoo).
    pub one_click_required: bool,
    /// The refusal of bulk mail that does not pass SPF, DKIM and DMARC (Gmail 550 5.7.26,
    /// Outlook.com 550 5.7.515, Yahoo 550 5.7.9); `None`: such mail is only junked.
    pub unauthenticated: Option<Reply>,
    /// The throttling reply (Gmail 421 4.7.28, Yahoo TSS04, Outlook.com S77714).
    pub throttle: Reply,
    /// The refusal of a sender whose reputation is gone.
    pub block: Reply,
    /// Weight of the domain's score against the IP's in placement (Gmail is known to weigh
    /// the domain more; assumed 0.6 there, 0.4 elsewhere).
    pub domain_weight: f64,
}

impl Model {
    /// A provider without a profile: mailsim's assumptions only, generic replies.
    pub fn generic(block: Reply) -> Model {
        Model {
            initial: 50.0,
            new_daily: 2_000,
            growth: 2.0,
            bulk_daily: 5_000,
            complaint_target: 0.001,
            complaint_max: 0.003,
            unknown_max: 0.02,
            one_click_required: false,
            unauthenticated: None,
            throttle: Reply::new(
                421,
                (4, 7, 0),
                "Too much mail from {ip} for its reputation, try again later",
            ),
            block,
            domain_weight: 0.4,
        }
    }
}

/// What happened on one day for one subject.
#[derive(Debug, Clone, Default)]
struct Day {
    accepted: u64,
    /// Recipients refused for being over the day's volume (each once, however often retried).
    over_volume: std::collections::HashSet<String>,
    unknown: u64,
    pristine: u64,
    recycled: u64,
    inbox: u64,
    spam: u64,
    auth_fail: u64,
    opens: u64,
    complaints: u64,
}

impl Day {
    fn is_empty(&self) -> bool {
        self.accepted + self.unknown + self.inbox + self.spam + self.opens + self.complaints == 0
            && self.over_volume.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Subject {
    score: f64,
    day: u32,
    today: Day,
    /// Signals already decided for later days (opens and complaints at their due time).
    later: BTreeMap<u32, Day>,
    /// The most messages accepted on an earlier day (0: no history).
    best_day: u64,
}

/// A reputation change for the event log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub subject: String,
    pub day: u32,
    pub score: u32,
    pub cause: String,
}

/// Where a message goes, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub spam: bool,
    pub cause: &'static str,
    pub spam_percent: u32,
}

/// What the provider knows of one message at placement.
pub struct MessageFacts<'a> {
    pub ip: &'a str,
    /// The authenticated domain (DKIM d= when it passes, else the From domain).
    pub domain: &'a str,
    pub spf_pass: bool,
    pub dkim_pass: bool,
    pub dmarc_pass: bool,
    /// The message has RFC 8058 one-click unsubscribe (an https or http URL in
    /// List-Unsubscribe and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`).
    pub one_click: bool,
    /// [`content_score`] of the message.
    pub content_score: u32,
    /// A stable key for the draw (recipient and Message-ID).
    pub key: &'a str,
}

const DAY_MS: u64 = 86_400_000;

pub fn day_of(elapsed_ms: u64) -> u32 {
    (elapsed_ms / DAY_MS) as u32
}

/// One provider's memory of every sender it has seen.
#[derive(Debug)]
pub struct Provider {
    pub model: Model,
    seed: u64,
    subjects: HashMap<String, Subject>,
    /// Bulk volume per From domain, per day.
    bulk: HashMap<String, (u32, u64)>,
    changes: Vec<Change>,
}

impl Provider {
    pub fn new(model: Model, seed: u64) -> Provider {
        Provider {
            model,
            seed,
            subjects: HashMap::new(),
            bulk: HashMap::new(),
            changes: Vec::new(),
        }
    }

    /// The reputation changes since the last call, for the event log.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The score of a subject now (its starting score when it is new).
    pub fn score(&mut self, subject: &str, day: u32) -> f64 {
        self.subject(subject, day).score
    }

    fn subject(&mut self, key: &str, day: u32) -> &mut Subject {
        let model = &self.model;
        let changes = &mut self.changes;
        let s = self
            .subjects
            .entry(key.to_string())
            .or_insert_with(|| Subject {
                score: model.initial,
                day,
                today: Day::default(),
                later: BTreeMap::new(),
                best_day: 0,
            });
        while s.day < day {
            let mut d = std::mem::take(&mut s.today);
            if let Some(l) = s.later.remove(&s.day) {
                d.opens += l.opens;
                d.complaints += l.complaints;
            }
            if !d.is_empty() {
                let allowance = allowance(model, s.best_day);
                let (delta, cause) = day_change(model, &d, allowance);
                s.score = (s.score + delta).clamp(0.0, 100.0);
                s.best_day = s.best_day.max(d.accepted);
                changes.push(Change {
                    subject: key.to_string(),
                    day: s.day,
                    score: s.score.round() as u32,
                    cause: cause.into(),
                });
            }
            s.day += 1;
        }
        s
    }

    /// A recipient is about to be accepted from `ip` for the envelope domain `domain`: the
    /// throttling or refusal its reputation or volume earns, or None (and it is counted).
    pub fn admit(
        &mut self,
        elapsed_ms: u64,
        ip: &str,
        domain: &str,
        rcpt: &str,
        attempt: &str,
    ) -> Option<Reply> {
        let day = day_of(elapsed_ms);
        let (seed, model) = (self.seed, self.model.clone());
        let ip_key = format!("ip:{ip}");
        let s = self.subject(&ip_key, day);
        let allowance = allowance(&model, s.best_day);
        if s.today.accepted >= allowance {
            s.today.over_volume.insert(rcpt.to_string());
            return Some(model.throttle.clone());
        }
        let score = s.score;
        if score < BLOCK_BELOW {
            return Some(model.block.clone());
        }
        if score < THROTTLE_BELOW {
            let percent = (THROTTLE_BELOW - score) / THROTTLE_BELOW * 100.0;
            if chance(seed, &format!("throttle:{attempt}"), percent) {
                return Some(model.throttle.clone());
            }
        }
        s.today.accepted += 1;
        self.subject(&format!("domain:{domain}"), day)
            .today
            .accepted += 1;
        None
    }

    /// The recipient was unknown.
    pub fn unknown_user(&mut self, elapsed_ms: u64, ip: &str, domain: &str) {
        self.each(elapsed_ms, ip, domain, |d| d.unknown += 1);
    }

    /// The recipient is a spam trap (pristine or recycled).
    pub fn trap_hit(&mut self, elapsed_ms: u64, ip: &str, domain: &str, pristine: bool) {
        self.each(elapsed_ms, ip, domain, |d| {
            if pristine {
                d.pristine += 1
            } else {
                d.recycled += 1
            }
        });
    }

    /// The recipient will open it at `at_ms` (scenario time); only opens in the inbox count
    /// (what people do with the mail they see).
    pub fn open_at(&mut self, at_ms: u64, ip: &str, domain: &str, in_spam: bool) {
        if !in_spam {
            self.later(at_ms, ip, domain, |d| d.opens += 1);
        }
    }

    /// The recipient will report it as spam at `at_ms`.
    pub fn complaint_at(&mut self, at_ms: u64, ip: &str, domain: &str) {
        self.later(at_ms, ip, domain, |d| d.complaints += 1);
    }

    fn each(&mut self, elapsed_ms: u64, ip: &str, domain: &str, f: impl Fn(&mut Day)) {
        let day = day_of(elapsed_ms);
        f(&mut self.subject(&format!("ip:{ip}"), day).today);
        f(&mut self.subject(&format!("domain:{domain}"), day).today);
    }

    fn later(&mut self, at_ms: u64, ip: &str, domain: &str, f: impl Fn(&mut Day)) {
        let day = day_of(at_ms);
        for key in [format!("ip:{ip}"), format!("domain:{domain}")] {
            let s = self.subject(&key, 0);
            if day <= s.day {
                f(&mut s.today);
            } else {
                f(s.later.entry(day).or_default());
            }
        }
    }

    /// Is mail from `from_domain` bulk today (counting this message)?
    fn bulk(&mut self, day: u32, from_domain: &str) -> bool {
        let e = self.bulk.entry(from_domain.to_string()).or_insert((day, 0));
        if e.0 != day {
            *e = (day, 0);
        }
        e.1 += 1;
        e.1 > self.model.bulk_daily
    }

    /// The refusal of an unauthenticated message from a bulk sender, when the provider
    /// refuses such mail (counted as a bulk message either way).
    pub fn refuse_unauthenticated(
        &mut self,
        elapsed_ms: u64,
        m: &MessageFacts<'_>,
    ) -> Option<Reply> {
        let day = day_of(elapsed_ms);
        let bulk = self.bulk(day, m.domain);
        let authenticated = m.spf_pass && m.dkim_pass && m.dmarc_pass;
        if bulk && !authenticated {
            return self.model.unauthenticated.clone();
        }
        None
    }

    /// Inbox or spam folder for an accepted message (counted).
    pub fn place(&mut self, elapsed_ms: u64, m: &MessageFacts<'_>) -> Placement {
        let day = day_of(elapsed_ms);
        let w = self.model.domain_weight;
        let ip_score = self.score(&format!("ip:{}", m.ip), day);
        let domain_score = self.score(&format!("domain:{}", m.domain), day);
        let combined = w * domain_score + (1.0 - w) * ip_score;
        let bulk = self
            .bulk
            .get(m.domain)
            .is_some_and(|(d, n)| *d == day && *n > self.model.bulk_daily);
        let parts = [
            ("reputation", spam_probability(combined)),
            ("content", content_probability(m.content_score)),
            ("authentication", if m.dmarc_pass { 0.0 } else { 0.5 }),
            (
                "no-one-click-unsubscribe",
                if bulk && self.model.one_click_required && !m.one_click {
                    0.8
                } else {
                    0.0
                },
            ),
        ];
        let ham: f64 = parts.iter().map(|(_, p)| 1.0 - p).product();
        let p = 1.0 - ham;
        let cause = parts
            .iter()
            .fold(("reputation", -1.0), |best, (c, q)| {
                if *q > best.1 { (c, *q) } else { best }
            })
            .0;
        let percent = p * 100.0;
        let spam = chance(self.seed, &format!("place:{}", m.key), percent);
        let auth_fail = !m.dmarc_pass;
        self.each(elapsed_ms, m.ip, m.domain, |d| {
            if spam {
                d.spam += 1
            } else {
                d.inbox += 1
            }
            if auth_fail {
                d.auth_fail += 1
            }
        });
        Placement {
            spam,
            // What sent it to the spam folder; an inbox copy has none.
            cause: if spam { cause } else { "" },
            spam_percent: percent.round() as u32,
        }
    }
}

/// Fewest messages a day a rate is computed on (assumed).
const RATE_VOLUME_MIN: u64 = 1_000;

/// The open rate that neither helps nor hurts (assumed: 18 %, below the 20-30 % industry
/// averages of opted-in lists).
const OPEN_RATE_NEUTRAL: f64 = 0.18;

/// Below this score part of the mail is throttled; below [`BLOCK_BELOW`] all of it refused.
const THROTTLE_BELOW: f64 = 25.0;
const BLOCK_BELOW: f64 = 8.0;

fn allowance(model: &Model, best_day: u64) -> u64 {
    if best_day == 0 {
        model.new_daily
    } else {
        model
            .new_daily
            .max((best_day as f64 * model.growth).round() as u64)
    }
}

/// The spam-folder probability of a combined score: 22 % at 50, 2 % at 70, 78 % at 30.
pub fn spam_probability(score: f64) -> f64 {
    1.0 / (1.0 + ((score - 40.0) / 8.0).exp())
}

/// The spam-folder probability of a content score: 0.25 % at 0, 2 % at 2, 50 % at 6.
pub fn content_probability(score: u32) -> f64 {
    1.0 / (1.0 + (6.0 - score as f64).exp())
}

/// One day's change of a subject's score, and its largest part.
fn day_change(model: &Model, d: &Day, allowance: u64) -> (f64, &'static str) {
    let delivered = (d.inbox + d.spam) as f64;
    // Rates are judged on enough mail: under RATE_VOLUME_MIN messages a day, a single
    // complaint or unknown user is not a rate (assumed; Postmaster Tools shows no rate for
    // low volumes either).
    let complaint_rate = d.complaints as f64 / d.inbox.max(RATE_VOLUME_MIN) as f64;
    let complaints = if complaint_rate >= model.complaint_max {
        30.0
    } else if complaint_rate > model.complaint_target {
        15.0 * (complaint_rate - model.complaint_target)
            / (model.complaint_max - model.complaint_target)
    } else {
        0.0
    };
    let tried = (d.accepted + d.unknown).max(RATE_VOLUME_MIN) as f64;
    let unknown_rate = d.unknown as f64 / tried;
    let unknown = if unknown_rate > model.unknown_max {
        (10.0 * unknown_rate / model.unknown_max).min(20.0)
    } else {
        0.0
    };
    // A pristine trap weighs more than a recycled one (the address never belonged to anyone).
    let trap_rate =
        (d.pristine as f64 + 0.4 * d.recycled as f64) / d.accepted.max(RATE_VOLUME_MIN) as f64;
    let traps = (500.0 * trap_rate).min(25.0);
    let volume = (10.0 * d.over_volume.len() as f64 / allowance.max(1) as f64).min(20.0);
    let auth = if delivered > 0.0 {
        20.0 * d.auth_fail as f64 / delivered
    } else {
        0.0
    };
    // Opens per message in the inbox, once there are enough of them to judge.
    let engagement = if d.inbox >= 50 {
        ((d.opens as f64 / d.inbox as f64 - OPEN_RATE_NEUTRAL) * 60.0).clamp(-8.0, 6.0)
    } else {
        0.0
    };
    let penalties = [
        ("complaints", complaints),
        ("unknown-users", unknown),
        ("spam-traps", traps),
        ("volume", volume),
        ("authentication", auth),
    ];
    let penalty: f64 = penalties.iter().map(|(_, p)| p).sum();
    let history = if penalty == 0.0 && engagement >= 0.0 && delivered > 0.0 {
        3.0
    } else {
        0.0
    };
    let delta = history + engagement - penalty;
    let mut cause = ("history", history);
    for (name, p) in penalties {
        if p > cause.1.abs() {
            cause = (name, p);
        }
    }
    if engagement.abs() > cause.1.abs() {
        cause = ("engagement", engagement);
    }
    (delta, cause.0)
}

/// Spam phrases of the kind content filters score (SpamAssassin's body rules and their
/// like); a scenario's `content_filter.words` are added to them.
pub const SPAM_PHRASES: &[&str] = &[
    "100% free",
    "act now",
    "buy now",
    "cash bonus",
    "click here",
    "congratulations, you",
    "earn money",
    "free money",
    "guaranteed",
    "limited time offer",
    "no credit check",
    "risk-free",
    "urgent response",
    "winner",
    "you have been selected",
];

/// A message's content score: spam phrases found, an HTML part without a text alternative
/// (SpamAssassin's MIME_HTML_ONLY), an HTML part of images with little text (HTML_IMAGE_RATIO),
/// very many links, and no List-Unsubscribe header at all.
pub fn content_score(message: &[u8], extra_words: &[String]) -> u32 {
    content_score_of(mailsim_bounce::message::parse(message).get(), extra_words)
}

/// [`content_score`] of a message already parsed (None: it could not be parsed, which scores
/// as spam does).
pub fn content_score_of(m: Option<&mail_parser::Message<'_>>, extra_words: &[String]) -> u32 {
    ContentFacts::of(m).score(extra_words)
}

/// What the content score reads of a message, whatever a provider's own words: read once per
/// message, scored per provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentFacts {
    /// The text a filter's phrases are looked for in (lower case): the plain part, else the
    /// HTML part's text. None: the message could not be parsed.
    body: Option<String>,
    /// The points that do not depend on a provider's own words (the spam phrases found are
    /// counted in).
    points: u32,
}

impl ContentFacts {
    pub fn of(m: Option<&mail_parser::Message<'_>>) -> Self {
        let Some(m) = m else {
            return ContentFacts {
                body: None,
                points: 10,
            };
        };
        let (mut text, mut html) = (String::new(), String::new());
        for part in &m.parts {
            match &part.body {
                mail_parser::PartType::Text(t) => text.push_str(&t.to_lowercase()),
                mail_parser::PartType::Html(h) => html.push_str(&h.to_lowercase()),
                _ => {}
            }
        }
        let (has_html, has_text) = (!html.is_empty(), !text.is_empty());
        let mut points = 0u32;
        // The HTML part's text, stripped once (the body read without a plain part, and the
        // words counted against the images).
        let stripped = if has_html {
            mailsim_bounce::extract::strip_html(&html)
        } else {
            String::new()
        };
        if has_html && !has_text {
            points += 2;
        }
        if has_html {
            let images = memchr::memmem::find_iter(html.as_bytes(), "<img").count();
            let links = memchr::memmem::find_iter(html.as_bytes(), "<a ").count();
            // Fewer than 30 visible words an image (counted no further than that).
            let few_words = 30 * images;
            if images > 0 && stripped.split_whitespace().take(few_words).count() < few_words {
                points += 2;
            }
            if links > 20 {
                points += 1;
            }
        }
        if m.header("List-Unsubscribe").is_none() {
            points += 2;
        }
        let body = if has_text { text } else { stripped };
        // The spam phrases every filter looks for, counted once here (where the message is
        // read) rather than for each provider that scores it.
        points += SPAM_PHRASES.iter().filter(|p| contains(&body, p)).count() as u32;
        ContentFacts {
            body: Some(body),
            points,
        }
    }

    /// The score with `extra_words` (a provider's content filter) beside the spam phrases.
    pub fn score(&self, extra_words: &[String]) -> u32 {
        let Some(body) = &self.body else {
            return self.points;
        };
        let words = extra_words
            .iter()
            .filter(|w| contains(body, &w.to_lowercase()))
            .count();
        words as u32 + self.points
    }
}

/// True when `phrase` occurs in `text`.
fn contains(text: &str, phrase: &str) -> bool {
    memchr::memmem::find(text.as_bytes(), phrase.as_bytes()).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let mut m = Model::generic(Reply::new(550, (5, 7, 1), "blocked"));
        m.new_daily = 100;
        m
    }

    fn facts<'a>(key: &'a str) -> MessageFacts<'a> {
        MessageFacts {
            ip: "127.0.0.1",
            domain: "s.test",
            spf_pass: true,
            dkim_pass: true,
            dmarc_pass: true,
            one_click: true,
            content_score: 0,
            key,
        }
    }

    const DAY: u64 = DAY_MS;

    #[test]
    fn a_new_ip_over_its_allowance_is_throttled_and_loses_reputation() {
        let mut p = Provider::new(model(), 1);
        let refused = (0..150)
            .filter(|i| {
                let k = i.to_string();
                p.admit(10, "127.0.0.1", "s.test", &k, &k).is_some()
            })
            .count();
        assert_eq!(refused, 50, "the first day's allowance is 100");
        let before = p.score("ip:127.0.0.1", 0);
        let after = p.score("ip:127.0.0.1", 1);
        assert!(after < before, "{before} -> {after}");
        let change = &p.take_changes()[0];
        assert_eq!((change.day, change.cause.as_str()), (0, "volume"));
    }

    #[test]
    fn clean_engaged_days_raise_reputation_and_the_allowance_grows() {
        let mut p = Provider::new(model(), 1);
        let mut sent = 0;
        for day in 0..10u64 {
            for i in 0..80 {
                let key = format!("{day}-{i}");
                assert!(
                    p.admit(day * DAY, "127.0.0.1", "s.test", &key, &key)
                        .is_none()
                );
                p.place(day * DAY, &facts(&key));
                if i % 3 == 0 {
                    p.open_at(day * DAY + 3_600_000, "127.0.0.1", "s.test", false);
                }
                sent += 1;
            }
        }
        assert_eq!(sent, 800);
        let score = p.score("domain:s.test", 10);
        assert!(score > 90.0, "{score}");
        // 2 x 80 after a day of 80.
        let admitted = (0..200)
            .filter(|i| {
                let k = format!("x{i}");
                p.admit(10 * DAY, "127.0.0.1", "s.test", &k, &k).is_none()
            })
            .count();
        assert_eq!(admitted, 160);
    }

    #[test]
    fn complaints_traps_and_unknown_users_lower_it() {
        for (name, hurt) in [
            ("complaints", 0usize),
            ("spam-traps", 1),
            ("unknown-users", 2),
        ] {
            let mut m = model();
            m.new_daily = 2_000;
            let mut p = Provider::new(m, 1);
            for i in 0..1_000 {
                let k = i.to_string();
                p.admit(0, "127.0.0.1", "s.test", &k, &k);
                p.place(0, &facts(&k));
                if i % 3 == 0 {
                    p.open_at(3_600_000, "127.0.0.1", "s.test", false);
                }
            }
            match hurt {
                0 => (0..4).for_each(|_| p.complaint_at(3_600_000, "127.0.0.1", "s.test")),
                1 => (0..60).for_each(|_| p.trap_hit(0, "127.0.0.1", "s.test", true)),
                _ => (0..50).for_each(|_| p.unknown_user(0, "127.0.0.1", "s.test")),
            }
            let score = p.score("domain:s.test", 1);
            assert!(score < 50.0, "{name}: {score}");
            let changes = p.take_changes();
            assert_eq!(changes.last().map(|c| c.cause.as_str()), Some(name));
        }
    }

    #[test]
    fn placement_follows_reputation_and_names_its_cause() {
        let mut p = Provider::new(model(), 1);
        let spam = (0..1000)
            .filter(|i| p.place(0, &facts(&i.to_string())).spam)
            .count();
        // A score of 50: 22 % (and a clean content score).
        assert!((170..=270).contains(&spam), "{spam}");
        // The cause of a copy sent to the spam folder is its largest part; an inbox copy has
        // none.
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        for (content_score, dmarc_pass, want) in
            [(8, true, "content"), (0, false, "authentication")]
        {
            let spam = keys
                .iter()
                .map(|k| {
                    p.place(
                        0,
                        &MessageFacts {
                            content_score,
                            dmarc_pass,
                            ..facts(k)
                        },
                    )
                })
                .find(|pl| pl.spam)
                .unwrap();
            assert_eq!(spam.cause, want);
        }
        let inbox = (0..100)
            .map(|i| p.place(0, &facts(&format!("i{i}"))))
            .find(|pl| !pl.spam)
            .unwrap();
        assert_eq!(inbox.cause, "");
    }

    #[test]
    fn bulk_mail_without_one_click_is_junked_where_it_is_required() {
        let mut m = model();
        m.bulk_daily = 10;
        m.one_click_required = true;
        m.unauthenticated = Some(Reply::new(550, (5, 7, 26), "unauthenticated"));
        let mut p = Provider::new(m, 1);
        fn no_one_click(k: &str) -> MessageFacts<'_> {
            MessageFacts {
                one_click: false,
                ..facts(k)
            }
        }
        for i in 0..10 {
            let k = i.to_string();
            let f = no_one_click(&k);
            assert!(p.refuse_unauthenticated(0, &f).is_none());
        }
        let f = MessageFacts {
            key: "bulk",
            ..no_one_click("")
        };
        assert!(p.refuse_unauthenticated(0, &f).is_none());
        assert_eq!(p.place(0, &f).cause, "no-one-click-unsubscribe");
        let unauth = MessageFacts {
            dkim_pass: false,
            ..facts("z")
        };
        assert_eq!(p.refuse_unauthenticated(0, &unauth).unwrap().code, 550);
    }

    #[test]
    fn content_score_counts_what_filters_count() {
        let plain = b"From: a@s.test\r\nList-Unsubscribe: <mailto:u@s.test>\r\nSubject: hi\r\n\r\nHello there, our news.\r\n";
        assert_eq!(content_score(plain, &[]), 0);
        let no_header = b"From: a@s.test\r\nSubject: hi\r\n\r\nHello there, our news.\r\n";
        assert_eq!(content_score(no_header, &[]), 2);
        let html_only = b"From: a@s.test\r\nSubject: hi\r\nContent-Type: text/html\r\n\r\n<p>Act now! <img src=\"http://x/a.png\"> winner</p>\r\n";
        // Two phrases, HTML only, an image with little text, no List-Unsubscribe.
        assert_eq!(content_score(html_only, &[]), 8);
        // A provider's own words, matched in lower case; one point each, found or not.
        let words = ["Our NEWS".to_string(), "absent".to_string()];
        assert_eq!(content_score(plain, &words), 1);
        // Over 20 links: one point (the text is long enough for its one image).
        let links = "<a href=\"http://x/\">a b c d e f g h i j</a> ".repeat(21);
        let many = format!(
            "From: a@s.test\r\nList-Unsubscribe: <mailto:u@s.test>\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nHello.\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>{links}<img src=\"http://x/i.png\"></p>\r\n--b--\r\n"
        );
        assert_eq!(content_score(many.as_bytes(), &[]), 1);
    }
}
