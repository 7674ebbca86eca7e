//! What a simulated recipient server does, compiled from a scenario domain and its profile:
//! the reply texts it uses and the rules (with their timeline windows) that pick them.

use crate::scenario::{
    ContentFilter, Domain, DropConnections, Greylist, HostBehaviour, Later, MailboxFull, Profile,
    RateLimit, Slow, TempFail, Window,
};
use mailsim_smtp::Reply;
use std::collections::BTreeSet;

/// The replies a server gives, by situation. `{ip}` and `{domain}` are filled in when used.
#[derive(Debug, Clone)]
pub struct Replies {
    pub unknown_user: Reply,
    pub mailbox_full: Reply,
    pub mailbox_full_permanent: Reply,
    pub greylisted: Reply,
    pub rate_limited: Reply,
    pub rate_limited_close: Reply,
    pub too_many_connections: Reply,
    pub tempfail: Reply,
    pub tls_required: Reply,
    pub spam: Reply,
    pub dmarc_reject: Reply,
}

fn r(code: u16, enhanced: (u8, u16, u16), text: &str) -> Reply {
    Reply::new(code, enhanced, text)
}

impl Replies {
    /// Postfix's own wording (its smtpd and anvil replies: "User unknown in virtual mailbox
    /// table", "too much mail from", "too many connections from"; postgrey's "Greylisted").
    pub fn generic() -> Self {
        Replies {
            unknown_user: r(
                550,
                (5, 1, 1),
                "<{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table",
            ),
            mailbox_full: r(452, (4, 2, 2), "<{rcpt}>: Mailbox full, try again later"),
            mailbox_full_permanent: r(552, (5, 2, 2), "<{rcpt}>: Mailbox full, quota exceeded"),
            greylisted: r(
                451,
                (4, 7, 1),
                "<{rcpt}>: Recipient address rejected: Greylisted, try again in a few minutes",
            ),
            rate_limited: r(450, (4, 7, 1), "Rate limit exceeded for {ip}, slow down"),
            rate_limited_close: r(
                421,
                (4, 7, 0),
                "Too much mail from {ip}, closing connection",
            ),
            too_many_connections: r(
                421,
                (4, 7, 0),
                "Too many connections from {ip}, try again later",
            ),
            tempfail: r(
                451,
                (4, 3, 0),
                "Temporary local problem, please try again later",
            ),
            tls_required: r(530, (5, 7, 0), "Must issue a STARTTLS command first"),
            spam: r(
                550,
                (5, 7, 1),
                "Message content rejected as spam (score {score})",
            ),
            dmarc_reject: r(
                550,
                (5, 7, 1),
                "Message rejected: DMARC policy of {domain} is reject and the message fails DMARC",
            ),
        }
    }

    /// Replies in the wording the provider publishes or is seen to send:
    /// - Google: "Gmail SMTP errors and codes", https://support.google.com/a/answer/3726730
    ///   (each reply's text, code and enhanced code as listed there);
    /// - Yahoo: https://postmaster.yahooinc.com/error-codes ([TSS04], 5.7.9 policy reasons,
    ///   "This user doesn't have a ... account", [#4.16.1] resources temporarily unavailable);
    /// - Microsoft: Exchange Online's NDR reference, https://learn.microsoft.com/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online
    ///   (5.7.509 DMARC), Exchange's connection limit (421 4.3.2, as quoted in
    ///   https://learn.microsoft.com/en-us/answers/questions/407670), and Outlook.com's replies with their
    ///   S-numbers as senders report them (S3150 block list, S77714 server busy,
    ///   https://techcommunity.microsoft.com/t5/exchange/office365-throttling-inbound-messages-s77719/td-p/2352675).
    ///
    /// The bounce classifier is tested on these texts as text it was not written from
    /// (sim/tests/provider_replies.rs).
    pub fn for_profile(profile: Option<Profile>) -> Self {
        let mut p = Replies::generic();
        match profile {
            None => {}
            Some(Profile::GmailLike) => {
                p.unknown_user = r(
                    550,
                    (5, 1, 1),
                    "The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. For more information, go to https://support.google.com/mail/?p=NoSuchUser - gsmtp",
                );
                p.mailbox_full = r(
                    452,
                    (4, 2, 2),
                    "The recipient's inbox is out of storage space. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp",
                );
                p.mailbox_full_permanent = r(
                    552,
                    (5, 2, 2),
                    "The recipient's inbox is out of storage space and inbound mail has been disabled. https://support.google.com/mail/?p=OverQuotaPerm - gsmtp",
                );
                // Google's temporary refusal of a message (it does not say "greylisted").
                p.greylisted = r(
                    451,
                    (4, 3, 0),
                    "Mail server temporarily rejected message. - gsmtp",
                );
                p.rate_limited = r(
                    450,
                    (4, 2, 1),
                    "The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. Please resend your message at a later time. - gsmtp",
                );
                p.rate_limited_close = r(
                    421,
                    (4, 7, 28),
                    "[{ip}] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. Please visit https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email Senders Guidelines. - gsmtp",
                );
                p.too_many_connections = r(
                    421,
                    (4, 7, 0),
                    "Try again later, closing connection. - gsmtp",
                );
                p.tls_required = r(
                    530,
                    (5, 7, 0),
                    "Must issue a STARTTLS command first. - gsmtp",
                );
                p.spam = r(
                    550,
                    (5, 7, 1),
                    "[{ip}] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked. - gsmtp",
                );
                p.dmarc_reject = r(
                    550,
                    (5, 7, 26),
                    "Unauthenticated email from {domain} is not accepted due to domain's DMARC policy. Please contact the administrator of {domain} domain if this was a legitimate mail. - gsmtp",
                );
            }
            Some(Profile::YahooLike) => {
                p.unknown_user = r(
                    554,
                    (5, 1, 1),
                    "delivery error: dd This user doesn't have a yahoo.com account ({rcpt}) [0] - mta.yahoo.test",
                );
                p.mailbox_full = r(452, (4, 2, 2), "Mailbox over quota, try again later");
                p.mailbox_full_permanent = r(
                    552,
                    (5, 2, 2),
                    "Requested mail action aborted, mailbox full",
                );
                p.greylisted = r(
                    451,
                    (4, 7, 1),
                    "Resources temporarily unavailable. Please try again later [#4.16.1].",
                );
                p.rate_limited = r(
                    421,
                    (4, 7, 0),
                    "[TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
                );
                p.rate_limited_close = p.rate_limited.clone();
                p.too_many_connections = r(
                    421,
                    (4, 7, 0),
                    "[TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
                );
                p.spam = r(
                    554,
                    (5, 7, 9),
                    "Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes",
                );
                p.dmarc_reject = r(
                    550,
                    (5, 7, 9),
                    "Message not accepted for policy reasons. See https://postmaster.yahooinc.com/error-codes",
                );
            }
            Some(Profile::MicrosoftLike) => {
                p.unknown_user = r(
                    550,
                    (5, 5, 0),
                    "Requested action not taken: mailbox unavailable (S2017) [mx.outlook.test]",
                );
                p.mailbox_full = r(
                    452,
                    (4, 2, 2),
                    "Mailbox full, try again later [mx.outlook.test]",
                );
                p.mailbox_full_permanent = r(
                    552,
                    (5, 2, 2),
                    "Requested mail action aborted: exceeded storage allocation [mx.outlook.test]",
                );
                p.greylisted = r(
                    451,
                    (4, 7, 500),
                    "Server busy. Please try again later from [{ip}]. (S77714) [mx.outlook.test]",
                );
                p.rate_limited = r(
                    451,
                    (4, 7, 500),
                    "Server busy. Please try again later from [{ip}]. (S77714) [mx.outlook.test]",
                );
                p.rate_limited_close = r(
                    421,
                    (4, 7, 500),
                    "Server busy. Please try again later from [{ip}]. (S77714) [mx.outlook.test]",
                );
                p.too_many_connections = r(
                    421,
                    (4, 3, 2),
                    "The maximum number of concurrent connections has exceeded a limit, closing transmission channel [mx.outlook.test]",
                );
                p.spam = r(
                    550,
                    (5, 7, 1),
                    "Unfortunately, messages from [{ip}] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). [mx.outlook.test]",
                );
                p.dmarc_reject = r(
                    550,
                    (5, 7, 509),
                    "Access denied, sending domain {domain} does not pass DMARC verification and has a DMARC policy of reject. [mx.outlook.test]",
                );
            }
        }
        p
    }
}

/// Stateful limits a profile brings when the scenario does not set its own.
fn profile_rate_limit(profile: Option<Profile>) -> Option<RateLimit> {
    let (messages_per_s, burst, close, connections_max) = match profile? {
        Profile::GmailLike => (50.0, 200.0, true, 20),
        Profile::YahooLike => (20.0, 100.0, true, 10),
        Profile::MicrosoftLike => (30.0, 100.0, false, 10),
    };
    Some(RateLimit {
        messages_per_s,
        burst,
        close,
        connections_max: Some(connections_max),
        from_s: None,
        until_s: None,
    })
}

/// Rules that can be switched on and off on the timeline.
pub trait Windowed {
    fn window(&self) -> Window;
}

macro_rules! windowed {
    ($($t:ty),*) => {$(
        impl Windowed for $t {
            fn window(&self) -> Window {
                Window { from_s: self.from_s, until_s: self.until_s }
            }
        }
    )*};
}

windowed!(
    TempFail,
    MailboxFull,
    Greylist,
    RateLimit,
    Slow,
    DropConnections
);

fn timed<T: Windowed>(rule: T) -> Timed<T> {
    Timed {
        window: rule.window(),
        rule,
    }
}

/// A rule switched on for a window of scenario time.
#[derive(Debug, Clone)]
pub struct Timed<T> {
    pub rule: T,
    pub window: Window,
}

impl<T> Timed<T> {
    pub fn active(&self, elapsed_ms: u64) -> Option<&T> {
        self.window.contains_ms(elapsed_ms).then_some(&self.rule)
    }
}

/// Everything a simulated server of one domain does.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub seed: u64,
    pub replies: Replies,
    pub unknown_percent: f64,
    pub unknown_list: BTreeSet<String>,
    pub tempfail: Option<Timed<TempFail>>,
    pub mailbox_full: Option<Timed<MailboxFull>>,
    pub message_size_max: Option<usize>,
    pub greylist: Option<Timed<Greylist>>,
    pub rate_limit: Option<Timed<RateLimit>>,
    pub slow: Option<Timed<Slow>>,
    pub drops: Option<Timed<DropConnections>>,
    pub tls_required: bool,
    pub content_filter: Option<ContentFilter>,
    pub dmarc_enforce: bool,
    pub async_bounce: Option<Later>,
    pub complaints: Option<Later>,
    /// The provider's reputation model and the recipients' engagement, when the scenario has
    /// `[reputation]`; shared by every host of the domain.
    pub deliverability: Option<Deliverability>,
}

/// A provider's memory of its senders and its users' habits.
#[derive(Debug, Clone)]
pub struct Deliverability {
    pub provider: std::sync::Arc<std::sync::Mutex<crate::reputation::Provider>>,
    pub recipients: std::sync::Arc<crate::engage::Recipients>,
    /// The provider's name in events (the recipient domain).
    pub name: String,
}

impl Deliverability {
    pub fn new(
        d: &Domain,
        section: &crate::scenario::ReputationSection,
        recipients: std::sync::Arc<crate::engage::Recipients>,
        seed: u64,
    ) -> Self {
        let mut model = reputation_model(d.profile, &Replies::for_profile(d.profile));
        if let Some(v) = section.initial {
            model.initial = v;
        }
        if let Some(v) = section.new_daily {
            model.new_daily = v;
        }
        if let Some(v) = section.growth {
            model.growth = v;
        }
        if let Some(v) = section.bulk_daily {
            model.bulk_daily = v;
        }
        Deliverability {
            provider: std::sync::Arc::new(std::sync::Mutex::new(crate::reputation::Provider::new(
                model, seed,
            ))),
            recipients,
            name: d.name.to_ascii_lowercase(),
        }
    }
}

/// A profile's reputation model: the numbers and replies the provider publishes (cited), and
/// mailsim's assumptions for what it does not publish (see [`crate::reputation::Model`]).
///
/// - Gmail, "Email sender guidelines", https://support.google.com/a/answer/81126: senders of
///   more than 5,000 messages a day to Gmail accounts need SPF, DKIM and DMARC with alignment,
///   one-click unsubscribe (RFC 8058) for marketing mail, and a spam rate under 0.3 % (best
///   under 0.1 %); increase volume slowly. Replies from "Gmail SMTP errors and codes",
///   https://support.google.com/a/answer/3726730 (421 4.7.28, 550 5.7.26).
/// - Yahoo, "Sender Best Practices", https://senders.yahooinc.com/best-practices/: the same
///   bulk rules (authentication, one-click unsubscribe, complaint rate under 0.3 %); replies
///   from https://postmaster.yahooinc.com/error-codes (TSS04 deferrals, 5.7.9 policy refusals).
/// - Outlook.com, "Fix NDR error 550 5.7.515",
///   https://support.microsoft.com/topic/34cfe8f8-6fbf-457e-9e8b-9e4dbaf4e0ef: domains sending
///   5,000 or more messages to its consumer services must pass SPF, DKIM and DMARC or are
///   refused with 550 5.7.515; one-click unsubscribe is recommended, not required.
pub fn reputation_model(profile: Option<Profile>, replies: &Replies) -> crate::reputation::Model {
    let mut m = crate::reputation::Model::generic(replies.spam.clone());
    match profile {
        None => {}
        Some(Profile::GmailLike) => {
            m.one_click_required = true;
            m.unauthenticated = Some(r(
                550,
                (5, 7, 26),
                "This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to authenticate with either SPF or DKIM. Authentication results: DKIM = did not pass; SPF = did not pass. For instructions on setting up authentication, go to https://support.google.com/mail/answer/81126#authentication - gsmtp",
            ));
            m.throttle = replies.rate_limited_close.clone();
            m.domain_weight = 0.6;
            m.new_daily = 1_000;
        }
        Some(Profile::YahooLike) => {
            m.one_click_required = true;
            m.unauthenticated = Some(replies.dmarc_reject.clone());
            m.throttle = replies.rate_limited.clone();
            m.new_daily = 1_000;
        }
        Some(Profile::MicrosoftLike) => {
            m.unauthenticated = Some(r(
                550,
                (5, 7, 515),
                "Access denied, sending domain {domain} does not meet the required authentication level. [mx.outlook.test]",
            ));
            m.throttle = replies.rate_limited.clone();
            m.new_daily = 1_000;
        }
    }
    m
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            seed: 0,
            replies: Replies::generic(),
            unknown_percent: 0.0,
            unknown_list: BTreeSet::new(),
            tempfail: None,
            mailbox_full: None,
            message_size_max: None,
            greylist: None,
            rate_limit: None,
            slow: None,
            drops: None,
            tls_required: false,
            content_filter: None,
            dmarc_enforce: false,
            async_bounce: None,
            complaints: None,
            deliverability: None,
        }
    }
}

impl Behaviour {
    pub fn from_domain(d: &Domain, seed: u64) -> Self {
        Behaviour {
            seed,
            replies: Replies::for_profile(d.profile),
            unknown_percent: d.unknown_users.percent,
            unknown_list: d
                .unknown_users
                .list
                .iter()
                .map(|u| u.to_ascii_lowercase())
                .collect(),
            tempfail: d.tempfail.clone().map(timed),
            mailbox_full: d.mailbox_full.clone().map(timed),
            message_size_max: d.message_size_max,
            greylist: d.greylist.clone().map(timed),
            rate_limit: d
                .rate_limit
                .clone()
                .or_else(|| profile_rate_limit(d.profile))
                .map(timed),
            slow: d.slow.clone().map(timed),
            drops: d.drops.clone().map(timed),
            tls_required: d.tls_required,
            content_filter: d.content_filter.clone(),
            // The big providers enforce p=reject.
            dmarc_enforce: d.dmarc_enforce || d.profile.is_some(),
            async_bounce: d.async_bounce.clone(),
            complaints: d.complaints.clone(),
            deliverability: None,
        }
    }
}

impl Behaviour {
    /// The domain's behaviour with one host's overrides applied.
    pub fn for_host(&self, o: &HostBehaviour) -> Behaviour {
        let mut b = self.clone();
        if let Some(t) = &o.tempfail {
            b.tempfail = Some(timed(t.clone()));
        }
        if let Some(t) = &o.mailbox_full {
            b.mailbox_full = Some(timed(t.clone()));
        }
        if let Some(m) = o.message_size_max {
            b.message_size_max = Some(m);
        }
        if let Some(t) = &o.greylist {
            b.greylist = Some(timed(t.clone()));
        }
        if let Some(t) = &o.rate_limit {
            b.rate_limit = Some(timed(t.clone()));
        }
        if let Some(t) = &o.slow {
            b.slow = Some(timed(t.clone()));
        }
        if let Some(t) = &o.drops {
            b.drops = Some(timed(t.clone()));
        }
        if let Some(v) = o.tls_required {
            b.tls_required = v;
        }
        if let Some(f) = &o.content_filter {
            b.content_filter = Some(f.clone());
        }
        if let Some(v) = o.dmarc_enforce {
            b.dmarc_enforce = v;
        }
        b
    }
}

/// Fill `{rcpt}`, `{ip}`, `{domain}`, `{score}` in a reply text.
/// Each variable in turn, as `text.replace("{name}", value)` would, without the pattern's
/// allocation (a refusal is filled on every refused RCPT).
pub fn fill(reply: &Reply, vars: &[(&str, &str)]) -> Reply {
    let mut text = reply.text.clone();
    for (k, v) in vars {
        if let Some(filled) = replace_var(&text, k, v) {
            text = filled;
        }
    }
    Reply {
        code: reply.code,
        enhanced: reply.enhanced.clone(),
        text,
    }
}

/// `text` with every `{name}` replaced by `value` (left to right, not overlapping); None
/// when there is none.
fn replace_var(text: &str, name: &str, value: &str) -> Option<String> {
    let mut out: Option<String> = None;
    let (mut copied, mut from) = (0, 0);
    while let Some(off) = text[from..].find('{') {
        let at = from + off;
        let after = &text[at + 1..];
        if after.starts_with(name) && after[name.len()..].starts_with('}') {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len() + value.len()));
            o.push_str(&text[copied..at]);
            o.push_str(value);
            copied = at + name.len() + 2;
            from = copied;
        } else {
            from = at + 1;
        }
    }
    out.map(|mut o| {
        o.push_str(&text[copied..]);
        o
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fill` is `str::replace` of each `{name}` in turn, on texts made to trip a scanner.
    #[test]
    fn fill_replaces_as_str_replace_does() {
        let texts = [
            "<{rcpt}>: Recipient address rejected",
            "{rcpt}{rcpt}{ip}",
            "{{rcpt}} {rcpt {ip}} {ipx} {} {",
            "no variables",
            "{ip}: {rcpt} from {ip}",
            "",
        ];
        let vars = [("rcpt", "a{ip}@b.test"), ("ip", "192.0.2.1")];
        for text in texts {
            let mut expected = text.to_string();
            for (k, v) in vars {
                expected = expected.replace(&format!("{{{k}}}"), v);
            }
            let r = Reply::new(450, (4, 2, 0), text);
            let filled = fill(&r, &vars);
            assert_eq!(filled.text, expected, "{text:?}");
            assert_eq!((filled.code, filled.enhanced), (r.code, r.enhanced));
        }
    }
}
