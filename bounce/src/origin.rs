//! Where a bounce comes from: which MTA or provider wrote it (its *writer*), and which
//! provider's server gave the answer it reports (the *remote* host).
//!
//! A writer is recognised by what its bounce template always says (Postfix's "This is the mail
//! system at host", qmail-send's "Hi. This is the qmail-send program at", Sendmail's
//! "Transcript of session follows", Exim's "This message was created automatically by mail
//! delivery software", ...), by header fields only it writes (Exim's and Gmail's
//! X-Failed-Recipients, Exchange Online's X-MS-Exchange-Message-Is-Ndr, IMail's X-Mailer) and
//! by the address it writes from (a provider's own mailer-daemon). Providers come before the
//! MTAs they run (Gmail writes X-Failed-Recipients as Exim does; Yahoo's old bounces are
//! qmail-send's). Each entry names the template or field it reads.
//!
//! A remote provider is recognised by the host that answered (RFC 3464 Remote-MTA, or the
//! "host ... said" of the prose): the names of the receivers' published inbound MX hosts.

use mail_parser::Message;

/// One thing a writer's bounces carry.
#[derive(Debug, Clone, Copy)]
enum Clue {
    /// Words of its template, in the lower-cased prose of the bounce's own parts.
    Text(&'static str),
    /// The bounce's From address is at this domain or below it (whole labels).
    From(&'static str),
    /// A header field of the bounce (top level) by name.
    Header(&'static str),
    /// A header field (top level) whose value contains this (lower-cased).
    HeaderHas(&'static str, &'static str),
    /// The Subject starts with this (lower-cased).
    Subject(&'static str),
}

use Clue::*;

/// Writers in the order they are tried: providers and products built on an MTA before the MTA.
static WRITERS: &[(&str, &[Clue])] = &[
    // Amazon WorkMail names itself in X-Mailer; Amazon SES writes from amazonses.com and
    // marks its mail with X-SES-Outgoing.
    (
        "amazon workmail",
        &[HeaderHas("x-mailer", "amazon workmail")],
    ),
    (
        "amazon ses",
        &[
            From("amazonses.com"),
            Header("x-ses-outgoing"),
            Text("an error occurred while trying to deliver the mail to the following recipients"),
        ],
    ),
    // Gmail's bounces come from mailer-daemon@googlemail.com (or google.com) and say "Google
    // tried to deliver your message" or "Delivery to the following recipient failed".
    (
        "gmail",
        &[
            From("googlemail.com"),
            From("google.com"),
            Text("google tried to deliver your message"),
            Text("delivery to the following recipient failed"),
        ],
    ),
    // Yahoo: its mailer-daemon, and its template "Sorry, we were unable to deliver your
    // message to the following address".
    (
        "yahoo",
        &[
            From("yahoo.com"),
            From("yahoo.co.jp"),
            Text("sorry, we were unable to deliver your message to the following address"),
        ],
    ),
    // Exchange, on premises and online (Office 365, Outlook.com), shares its non-delivery
    // report templates: "Delivery has failed to these recipients or groups" (2007 and later),
    // "Diagnostic information for administrators", "Your message did not reach some or all of
    // the intended recipients" (2003), Windows' SMTP service's "This is an automatically
    // generated Delivery Status Notification"; X-MS-Exchange-Message-Is-Ndr (2013 and later),
    // "Internet Mail Service" (5.5) in X-Mailer or Received; Outlook.com's own senders.
    (
        "exchange",
        &[
            Header("x-ms-exchange-message-is-ndr"),
            Text("diagnostic information for administrators"),
            Text("delivery has failed to these recipients or groups"),
            Text("did not reach some or all of the intended recipients"),
            Text("this is an automatically generated delivery status notification"),
            HeaderHas("x-mailer", "internet mail service"),
            HeaderHas("received", "internet mail service"),
            From("outlook.com"),
            From("hotmail.com"),
        ],
    ),
    // Providers running Exim under their own name.
    ("gmx", &[From("gmx.com"), From("gmx.net"), From("gmx.de")]),
    ("mail.ru", &[From("mail.ru")]),
    ("yandex", &[From("yandex.ru"), From("yandex.com")]),
    ("zoho", &[From("zoho.com"), From("zohomail.com")]),
    // Content filters and gateways that write their own bounces.
    (
        "amavis",
        &[
            Text("content-filter at"),
            Subject("undeliverable mail, mta-blocked"),
        ],
    ),
    ("surfcontrol", &[HeaderHas("x-mailer", "surfcontrol")]),
    ("m-filter", &[HeaderHas("x-mailer", "m-filter")]),
    // Gateways are named by their own template only: their names also occur in the replies
    // of the servers they protect, quoted in other MTAs' bounces.
    (
        "mimecast",
        &[Subject("[postmaster] email delivery failure")],
    ),
    (
        "trend micro",
        &[Text(
            "****** message from interscan messaging security suite ******",
        )],
    ),
    // IMail writes X-Mailer "<SMTP32 vN>" and "Body of message generated response".
    (
        "imail",
        &[
            HeaderHas("x-mailer", "smtp32"),
            Text("body of message generated response"),
        ],
    ),
    // The DragonFly Mail Agent: "This is the DragonFly Mail Agent at ...", "There was an error
    // delivering your mail to <...>".
    (
        "dragonfly",
        &[
            Text("this is the dragonfly mail agent"),
            Text("there was an error delivering your mail to"),
        ],
    ),
    // OpenSMTPD: "This is the MAILER-DAEMON, please DO NOT REPLY to this e-mail", subject
    // "Delivery status notification: error".
    (
        "opensmtpd",
        &[
            Text("please do not reply to this e-mail"),
            Text("an error has occurred while attempting to deliver a message"),
            Subject("delivery status notification: error"),
            Subject("delivery status notification: delay"),
        ],
    ),
    // Sun/Oracle Messaging Server (iPlanet): "This report relates to a message you sent with
    // the following header fields".
    (
        "messaging server",
        &[Text(
            "this report relates to a message you sent with the following header fields",
        )],
    ),
    // Courier: subject "NOTICE: mail delivery status.", "Courier mail server at".
    (
        "courier",
        &[
            Subject("notice: mail delivery status"),
            Text("courier mail server at"),
        ],
    ),
    // HCL (Lotus) Domino and Notes: "Your message ... was not delivered to: <address>
    // because: ...", "------- Failure Reasons".
    (
        "domino",
        &[
            Text("was not delivered to:"),
            Text("------- failure reasons"),
        ],
    ),
    // Apache James: "Error message below:", "Message details:".
    (
        "james",
        &[Text("error message below:"), Text("message details:")],
    ),
    // qmail-send's template ("Hi. This is the qmail-send program at ..."; its greeting can be
    // changed, its separator "--- Below this line is a copy of the message." cannot) and
    // qmail-remote's "does not like recipient.".
    (
        "qmail",
        &[
            Text("this is the qmail-send program"),
            Text("--- below this line is a copy of the message"),
            Text("does not like recipient."),
        ],
    ),
    // Postfix's bounce(8) template and its DSN fields.
    (
        "postfix",
        &[
            Text("this is the mail system at host"),
            // Before Postfix 2.1: "This is the Postfix program at host", "the message
            // returned below could not be delivered".
            Text("this is the postfix program at host"),
            Text("to inform you that the message returned below could not be delivered"),
            Text("x-postfix-queue-id"),
            Text("x-postfix;"),
        ],
    ),
    // Exim: X-Failed-Recipients and its template.
    (
        "exim",
        &[
            Header("x-failed-recipients"),
            Text("this message was created automatically by mail delivery software"),
            Text("a message that you sent could not be delivered to one or more of its"),
            Text("this is a copy of your message, including all the headers"),
        ],
    ),
    // Sendmail 5 wrote "----- Unsent message follows -----"; later versions "Transcript of
    // session follows" and "The following addresses had permanent fatal errors".
    ("sendmail v5", &[Text("----- unsent message follows -----")]),
    (
        "sendmail",
        &[
            Text("----- transcript of session follows -----"),
            Text("the following addresses had permanent fatal errors"),
            Subject("returned mail: see transcript for details"),
        ],
    ),
];

/// The writer of a bounce: the first in [`WRITERS`] with a clue in the message. `from` and
/// `subject` are the bounce's sender address and Subject, `prose` the text of its own parts
/// (delivery-status fields included), all lower-cased.
pub fn writer(m: &Message, from: &str, subject: &str, prose: &str) -> Option<&'static str> {
    // Every template wording of every writer in one pass over the prose.
    static TEXTS: std::sync::OnceLock<(aho_corasick::AhoCorasick, Vec<usize>)> =
        std::sync::OnceLock::new();
    let (automaton, writer_of) = TEXTS.get_or_init(|| {
        let (mut patterns, mut writer_of) = (Vec::new(), Vec::new());
        for (i, (_, clues)) in WRITERS.iter().enumerate() {
            for clue in clues.iter() {
                if let Text(t) = clue {
                    patterns.push(*t);
                    writer_of.push(i);
                }
            }
        }
        let automaton = aho_corasick::AhoCorasick::new(patterns).expect("writer clues");
        (automaton, writer_of)
    });
    let mut by_text = vec![false; WRITERS.len()];
    for hit in automaton.find_overlapping_iter(prose) {
        by_text[writer_of[hit.pattern().as_usize()]] = true;
    }
    let header = |name: &str| m.header_raw(name).map(str::to_ascii_lowercase);
    WRITERS
        .iter()
        .enumerate()
        .find(|(i, (_, clues))| {
            by_text[*i]
                || clues.iter().any(|clue| match *clue {
                    Text(_) => false,
                    From(domain) => in_domain(from.rsplit_once('@').map_or("", |(_, d)| d), domain),
                    Header(name) => header(name).is_some(),
                    HeaderHas(name, v) => header(name).is_some_and(|h| h.contains(v)),
                    Subject(s) => subject.starts_with(s),
                })
        })
        .map(|(_, (name, _))| *name)
}

/// True when `host` is `domain` or a name below it (whole labels: "mx.gmx.net" is in "gmx.net",
/// "notgmx.net" is not).
fn in_domain(host: &str, domain: &str) -> bool {
    host == domain
        || host
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// Receivers by the names of their inbound mail hosts (their published MX records).
static PROVIDERS: &[(&str, &[&str])] = &[
    ("google", &["google.com", "googlemail.com"]),
    ("yahoo", &["yahoodns.net", "yahoo.com", "yahoo.co.jp"]),
    ("aol", &["aol.com"]),
    (
        "microsoft",
        &[
            "protection.outlook.com",
            "outlook.com",
            "hotmail.com",
            "live.com",
        ],
    ),
    ("apple", &["icloud.com", "me.com", "apple.com"]),
    ("orange", &["orange.fr", "wanadoo.fr"]),
    ("laposte", &["laposte.net"]),
    ("cox", &["cox.net"]),
    ("comcast", &["comcast.net"]),
    // AT&T's inbound hosts for att.net, sbcglobal.net and bellsouth.net are *.prodigy.net.
    (
        "att",
        &["att.net", "bellsouth.net", "sbcglobal.net", "prodigy.net"],
    ),
    ("spectrum", &["charter.net", "rr.com", "spectrum.net"]),
    ("godaddy", &["secureserver.net"]),
    ("zoho", &["zoho.com", "zohomail.com", "zoho.eu"]),
    ("tencent", &["qq.com"]),
    ("mimecast", &["mimecast.com"]),
    ("kddi", &["ezweb.ne.jp", "au.com"]),
    ("nttdocomo", &["docomo.ne.jp"]),
    (
        "gmx",
        &["gmx.net", "gmx.com", "gmx.de", "web.de", "mail.com"],
    ),
    ("mail.ru", &["mail.ru"]),
    ("yandex", &["yandex.ru", "yandex.net"]),
];

/// The provider whose server answered: from the host name (Remote-MTA), else from the host
/// the prose says answered ("host mx.example said:", "host mx.example [192.0.2.1]"). A
/// Remote-MTA that is no known provider's is the answer: the prose is not read then.
pub fn remote(remote_mta: Option<&str>, diagnostic: &str) -> Option<&'static str> {
    let by_name = |host: &str| {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        PROVIDERS
            .iter()
            .find(|(_, suffixes)| suffixes.iter().any(|s| in_domain(&host, s)))
            .map(|(name, _)| *name)
    };
    // The report names the server that answered: that one, known or not.
    if let Some(host) = remote_mta {
        return by_name(host);
    }
    let text = diagnostic.to_ascii_lowercase();
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '<' | '>' | ','))
        .collect();
    // "host X said", "host X [address]" (Postfix, Exim, qmail): the word after "host".
    words
        .windows(2)
        .filter(|w| w[0] == "host")
        .find_map(|w| by_name(w[1].trim_end_matches(':')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_provider_by_host_name() {
        assert_eq!(remote(Some("mta7.am0.yahoodns.net"), ""), Some("yahoo"));
        assert_eq!(
            remote(
                None,
                "host gmail-smtp-in.l.google.com[142.250.1.26] said: 550 5.1.1"
            ),
            Some("google")
        );
        assert_eq!(remote(Some("ff-ip4-mx-vip1.prodigy.net"), ""), Some("att"));
        assert_eq!(remote(Some("mx.mail.com"), ""), Some("gmx"));
        assert_eq!(remote(Some("gmail.com"), ""), None);
        // A name that only ends like a provider's is not the provider's.
        assert_eq!(remote(Some("notgoogle.com"), ""), None);
        assert_eq!(remote(None, "550 5.1.1 user unknown"), None);
    }
}
