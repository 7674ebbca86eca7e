//! From a raw message to per-recipient evidence: RFC 3464 delivery-status fields when the
//! message has them, the human-readable prose otherwise (cut before the returned original).

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use regex::Regex;
use std::sync::OnceLock;

/// One recipient a bounce talks about, with what it says about it.
#[derive(Debug, Clone, Default)]
pub struct Finding {
    pub recipient: String,
    pub status: Option<String>,
    pub action: Option<String>,
    pub diagnostic: String,
    /// The rest of the prose, consulted after the diagnostic (one text shared by the
    /// recipients of a report).
    pub context: std::sync::Arc<str>,
    pub command: Option<String>,
    pub reply_code: Option<u16>,
    /// RFC 3464 Remote-MTA: the server that answered.
    pub remote_mta: Option<String>,
}

/// What kind of report a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A delivery status notification (RFC 3464 or free text).
    Bounce,
    /// An abuse report (RFC 5965 ARF or a provider's own format).
    Feedback,
    /// An automatic reply (RFC 3834).
    Vacation,
}

#[derive(Debug, Clone)]
pub struct Extracted {
    pub kind: Kind,
    pub findings: Vec<Finding>,
    /// ARF Feedback-Type.
    pub feedback_type: Option<String>,
    /// The Message-ID (as `<id>`) of the message the report is about, from the message it
    /// returns (`message/rfc822`: RFC 3464 section 2, RFC 5965's third part) or the headers it
    /// returns (`text/rfc822-headers`, RFC 6522), whichever comes first.
    pub message_id: Option<String>,
    /// Which MTA or provider wrote the report ([`crate::origin::writer`]), when recognised.
    pub writer: Option<&'static str>,
}

fn address_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"[A-Za-z0-9][A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
            .expect("address regex")
    })
}

/// `<final> (expanded from <original>)` (Postfix) or `final (generated from original)` (Exim,
/// the parenthesis on the next line): the two addresses.
fn alias_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let address = address_re().as_str();
        Regex::new(&format!(
            r"<?({address})>?\s*\((?:expanded|generated) from\s+<?({address})>?\)"
        ))
        .expect("alias regex")
    })
}

/// A remote server's reply as Postfix quotes it: from "said:" (or "refused to talk to me:", a
/// refused greeting) to "(in reply to ... command)", or to the end of its paragraph.
fn quoted_reply_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"(?s)\b(?:said|refused\s+to\s+talk\s+to\s+me):.*?(?:\(in\s+reply\s+to\s+[^)]*\)|\n\s*\n|\z)",
        )
            .expect("quoted reply regex")
    })
}

fn dsn_fields_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?im)^(?:reporting-mta|final-recipient|original-recipient):")
            .expect("dsn fields regex")
    })
}

/// Words of a delivery failure, for messages whose sender and subject do not say so.
/// A warning that delivery is still being tried (RFC 3464's Action "delayed", written as
/// prose): Sendmail's "Will keep trying", Exim's "Delivery attempts will continue", Postfix's
/// "Delayed Mail (still being retried)", and the plain "will continue to try".
const DELAY_PHRASES: &[&str] = &[
    "attempts will continue",
    "will continue to try",
    "will continue trying",
    "will keep trying",
    "will keep on trying",
    "still being retried",
    "still trying",
    "will be retried",
    "will retry",
    "warning: message delayed",
    "message has been delayed",
    "delivery has been delayed",
    "delivery is delayed",
    "this is only a warning",
    "this is a warning",
];

const FAILURE_PHRASES: &[&str] = &[
    "could not be delivered",
    "couldn't be delivered",
    "was not delivered",
    "wasn't delivered",
    "undeliverable",
    "delivery failed",
    "delivery has failed",
    "delivery to the following recipient",
    "unable to deliver",
    "failed to deliver",
    "permanent error",
    "permanent fatal error",
    "did not reach",
    "mailbox is full",
    "mailbox full",
    "user unknown",
    "invalid user address",
    "requested action not taken",
];

fn status_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b").expect("status regex"))
}

fn code_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // A code at a line's end only when the next line goes on with an enhanced status code, or
    // right after Postfix's "said:" (Postfix wraps its report: "said: 550\n    5.1.1 <...>",
    // "said: 550\n    invalid mailbox"), not any number ending a line. A code may follow an
    // opening quote: Exchange's reports quote the reply whole ("Remote Server returned '550
    // 5.1.10 RESOLVER.ADR.RecipientNotFound; ...'").
    RE.get_or_init(|| {
        Regex::new(
            r"(?m)(?:^|[\s:;(\['])([45][0-9][0-9])(?:[ -]|\r?\n[ \t]*[245]\.[0-9])|\bsaid:\s+([45][0-9][0-9])\s",
        )
        .expect("code regex")
    })
}

/// A reporting MTA's gloss on a status code ahead of the remote server's reply it quotes:
/// `5.1.0 - Unknown address error 550-'5.2.2 <x>... Mailbox Full' (delivery attempts: 0)`
/// (Amazon SES's delivery-status reports). The gloss names the class of a code of its own,
/// the same whatever the server said (here 5.1.0 for a full mailbox): it says no more than a
/// status code, and is not read as the server's words; the quoted reply says what happened.
fn glossed_reply_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"\b[245]\.\d{1,3}\.\d{1,3} - [^'0-9\n]+? ([245]\d\d[ -]')")
            .expect("glossed reply regex")
    })
}

/// A text without the reporting MTA's glosses ([`glossed_reply_re`]).
fn without_gloss(text: String) -> String {
    match glossed_reply_re().replace_all(&text, "$1") {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(t) => t,
    }
}

/// Where the returned original message starts in a bounce's prose.
const ORIGINAL_MARKERS: &[&str] = &[
    "----- original message -----",
    "------ original message follows",
    "----- original message follows",
    "--- below this line is a copy of the message",
    "------ this is a copy of the message",
    "----- message header follows",
    "----- the following is a copy of the",
    "--- original message follows",
    "original message follows",
    "message headers follow",
    "original message headers",
    "------ unsent message below",
    "----- unsent message below",
    "content-type: message/rfc822",
    "--- the header of the original message is following",
    "----- original message header",
    "received: from",
    "\nreturn-path:",
    "\nreturn-path: ",
];

fn mbox_from_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?m)^From \S+@\S+ ").expect("mbox regex"))
}

/// Split a bounce's prose into the report and the returned original (empty when there is no
/// marked original; an mbox `From ` line ends the report but marks no original).
fn split_original(text: &str) -> (&str, &str) {
    let lower = text.to_ascii_lowercase();
    let marked = ORIGINAL_MARKERS
        .iter()
        .filter_map(|m| lower.find(m))
        .min()
        .unwrap_or(text.len());
    let mbox = mbox_from_re().find(text).map_or(text.len(), |m| m.start());
    if mbox < marked {
        (&text[..mbox], "")
    } else {
        text.split_at(marked)
    }
}

/// Recipients of the returned original: its To: header lines.
fn original_to(original: &str) -> Vec<String> {
    original
        .lines()
        .filter(|l| l.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("to:")))
        .flat_map(|l| address_re().find_iter(l).map(|m| m.as_str().to_string()))
        .collect()
}

/// RFC 3464 fields: blocks separated by blank lines, each `Name: value` with folded lines.
fn field_blocks(text: &str) -> Vec<Vec<(String, String)>> {
    let mut blocks = Vec::new();
    let mut block: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = block.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            block.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `rfc822; user@example.org` -> `user@example.org`. An address of type `utf-8` (RFC 6533's
/// global DSN) may hold any Unicode: taken whole, its `\x{HEX}` escapes decoded (an
/// independent review found such reports not read at all).
fn typed_address(value: &str) -> Option<String> {
    let (kind, v) = value.split_once(';').unwrap_or(("", value));
    if let Some(m) = address_re().find(v) {
        return Some(m.as_str().to_string());
    }
    if !kind.trim().eq_ignore_ascii_case("utf-8") {
        return None;
    }
    let decoded = unescape_utf8_addr(v.trim().trim_start_matches('<').trim_end_matches('>'));
    let (local, domain) = decoded.rsplit_once('@')?;
    let clean = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    (clean(local) && clean(domain) && domain.contains('.')).then_some(decoded)
}

/// RFC 6533 section 3: `\x{HEX}` in a utf-8-addr-xtext stands for that code point.
fn unescape_utf8_addr(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\\x{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        let decoded = after.split_once('}').and_then(|(hex, tail)| {
            let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
            Some((c, tail))
        });
        match decoded {
            Some((c, tail)) => {
                out.push(c);
                rest = tail;
            }
            None => {
                out.push_str("\\x{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The SMTP command a failure answered: the one named last before the first reply code, or
/// else the first one named after it.
fn command_in(text: &str) -> Option<String> {
    let t = squeeze(&text.to_ascii_lowercase());
    let reply_at = code_re().find(&t).map_or(t.len(), |m| m.start());
    let rules: &[(&str, &str)] = &[
        ("end of data", "DATA"),
        ("final data", "DATA"),
        ("after data", "DATA"),
        ("data command", "DATA"),
        (">>> data", "DATA"),
        ("rcpt to", "RCPT"),
        // A reply that quotes the RCPT argument it refuses ("554 Rcpt <x> does not exist").
        ("rcpt <", "RCPT"),
        ("rcpt command", "RCPT"),
        ("[rcpt_to]", "RCPT"),
        ("after ehlo", "EHLO"),
        ("after helo", "EHLO"),
        ("initial connection", "CONNECT"),
        ("after connect", "CONNECT"),
        ("mail from", "MAIL"),
        ("[mail_from]", "MAIL"),
        // qmail-remote names the step that failed in words: "Connected to X but greeting
        // failed", "... but my name was rejected", "... but sender was rejected", "X does not
        // like recipient", "X failed after I sent the message".
        ("but greeting failed", "CONNECT"),
        ("but my name was rejected", "EHLO"),
        ("sender was rejected", "MAIL"),
        ("does not like recipient", "RCPT"),
        ("failed after i sent the message", "DATA"),
    ];
    let mentions: Vec<(usize, &str)> = rules
        .iter()
        .flat_map(|(p, c)| t.match_indices(p).map(move |(i, _)| (i, *c)))
        .collect();
    mentions
        .iter()
        .filter(|(i, _)| *i < reply_at)
        .max()
        .or_else(|| mentions.iter().filter(|(i, _)| *i >= reply_at).min())
        .map(|(_, c)| c.to_string())
}

/// The first enhanced status code (RFC 3463: class.subject.detail) in `text`. A dotted quad is
/// an IP address, not a code: "[4.79.181.168]" holds none.
fn status_in(text: &str) -> Option<String> {
    let in_address = |m: regex::Match| {
        let before = text[..m.start()].chars().next_back();
        let mut after = text[m.end()..].chars();
        before.is_some_and(|c| c == '.' || c.is_ascii_digit())
            || (after.next() == Some('.') && after.next().is_some_and(|c| c.is_ascii_digit()))
    };
    let found = status_re()
        .captures_iter(text)
        .find(|c| c.get(0).is_some_and(|m| !in_address(m)));
    found.map(|c| {
        format!(
            "{}.{}.{}",
            &c[1],
            c[2].trim_start_matches('0').parse::<u32>().unwrap_or(0),
            c[3].trim_start_matches('0').parse::<u32>().unwrap_or(0)
        )
    })
}

fn code_in(text: &str) -> Option<u16> {
    code_re()
        .captures(text)
        .and_then(|c| c.get(1).or(c.get(2)))
        .and_then(|m| m.as_str().parse().ok())
}

/// Texts of the message's own parts (not of the returned original), in order.
fn own_texts(m: &Message) -> (String, Option<String>, Option<String>, Vec<String>) {
    let mut prose = String::new();
    let mut dsn = None;
    let mut feedback = None;
    let mut original_rcpts = Vec::new();
    for part in &m.parts {
        let ct = part.content_type();
        let (t, sub) = ct
            .map(|c| {
                (
                    c.ctype().to_ascii_lowercase(),
                    c.subtype().unwrap_or_default().to_ascii_lowercase(),
                )
            })
            .unwrap_or_else(|| ("text".into(), "plain".into()));
        let raw = || -> String {
            let bytes = m
                .raw_message
                .get(part.offset_body as usize..part.offset_end as usize)
                .unwrap_or_default();
            String::from_utf8_lossy(bytes).into_owned()
        };
        match (&part.body, t.as_str(), sub.as_str()) {
            (_, _, "delivery-status") | (_, _, "global-delivery-status") => {
                let text = match &part.body {
                    PartType::Text(t) => t.to_string(),
                    PartType::Binary(b) | PartType::InlineBinary(b) => {
                        String::from_utf8_lossy(b).into_owned()
                    }
                    _ => raw(),
                };
                dsn.get_or_insert_with(String::new).push_str(&text);
            }
            (_, _, "feedback-report") => {
                let text = match &part.body {
                    PartType::Text(t) => t.to_string(),
                    PartType::Binary(b) | PartType::InlineBinary(b) => {
                        String::from_utf8_lossy(b).into_owned()
                    }
                    _ => raw(),
                };
                feedback = Some(text);
            }
            (PartType::Message(inner), _, _) => {
                if let Some(r) = inner.header_raw("X-HmXmrOriginalRecipient") {
                    feedback.get_or_insert_with(String::new);
                    original_rcpts.push(r.trim().to_string());
                }
                for to in inner.to().map(|a| a.iter()).into_iter().flatten() {
                    if let Some(a) = to.address() {
                        original_rcpts.push(a.to_string());
                    }
                }
            }
            (_, _, "rfc822-headers") => {
                let text = raw();
                for line in text.lines() {
                    let l = line.to_ascii_lowercase();
                    if (l.starts_with("to:") || l.starts_with("x-hmxmroriginalrecipient:"))
                        && let Some(a) = address_re().find(line)
                    {
                        original_rcpts.push(a.as_str().to_string());
                    }
                }
            }
            (PartType::Text(text), "text" | "multipart", _) if sub != "html" => {
                prose.push_str(text);
                prose.push('\n');
            }
            // A multipart whose boundary is missing is text to us.
            (PartType::Binary(b) | PartType::InlineBinary(b), "multipart" | "text", _) => {
                prose.push_str(&String::from_utf8_lossy(b));
                prose.push('\n');
            }
            (PartType::Html(html), _, _) if prose.trim().is_empty() => {
                prose.push_str(&strip_html(html));
                prose.push('\n');
            }
            _ => {}
        }
    }
    (prose, dsn, feedback, original_rcpts)
}

/// The text of an HTML fragment: tags become spaces, `&nbsp;` a space.
pub fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    // The text between two angle brackets is kept or dropped whole (both are ASCII, so every
    // cut is at a character's boundary).
    let mut from = 0;
    for at in memchr::memchr2_iter(b'<', b'>', html.as_bytes()) {
        if !in_tag {
            out.push_str(&html[from..at]);
        }
        in_tag = html.as_bytes()[at] == b'<';
        if !in_tag {
            out.push(' ');
        }
        from = at + 1;
    }
    if !in_tag {
        out.push_str(&html[from..]);
    }
    if !out.contains('&') {
        return out;
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

fn is_daemon(addr: &str) -> bool {
    let local = addr
        .split('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    matches!(
        local.as_str(),
        "mailer-daemon"
            | "postmaster"
            | "post_master"
            | "mail-daemon"
            | "maildaemon"
            | "root"
            | "nobody"
    ) && !addr.is_empty()
}

/// Parse one message. `None` when it is neither a bounce, a complaint nor an auto-reply.
/// Blank lines before the header section (a message saved with a line of spaces first) are
/// not an empty header section: they are passed over.
pub fn extract(raw: &[u8]) -> Option<Extracted> {
    let mut start = 0;
    while let Some(end) = raw[start..].iter().position(|&b| b == b'\n') {
        let line = &raw[start..start + end];
        if !line.iter().all(u8::is_ascii_whitespace) {
            break;
        }
        start += end + 1;
    }
    extract_depth(&raw[start..], 0)
}

/// A bounce forwarded inside another message: the inner one has the delivery status.
fn nested_bounce(m: &Message, prose: &str, depth: usize) -> Option<Extracted> {
    if depth >= 2 {
        return None;
    }
    let reports = |x: Extracted| {
        (x.kind == Kind::Bounce && x.findings.iter().any(|f| f.status.is_some())).then_some(x)
    };
    m.parts
        .iter()
        .find_map(|p| match &p.body {
            PartType::Message(inner) => reports(extract_depth(inner.raw_message(), depth + 1)?),
            _ => None,
        })
        .or_else(|| {
            // A bounce forwarded as text (a provider's notice wrapping the MTA's report): an
            // mbox "From " line in the notice's own prose, before anything that marks a
            // returned original (a "From " line inside a returned original is that message's),
            // then the report's own header and body.
            let from_line = mbox_envelope_re().find(prose.as_bytes())?;
            let lower = prose[..from_line.start()].to_ascii_lowercase();
            if ORIGINAL_MARKERS.iter().any(|m| lower.contains(m)) {
                return None;
            }
            let rest = &prose[from_line.end()..];
            let start = rest.find('\n').map_or(rest.len(), |i| i + 1);
            reports(extract_depth(&rest.as_bytes()[start..], depth + 1)?)
        })
}

/// AOL's delivery failure template names its members by screen name, not address: "Your mail
/// to the following recipients could not be delivered because ...:" and then one indented
/// name per line. A screen name is the local part of an address at aol.com.
fn aol_screen_names(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let Some(at) = lower.find("the following recipients") else {
        return Vec::new();
    };
    // The list starts after the sentence (its colon, in the same paragraph) and ends at the
    // first line that is not an indented name.
    let paragraph = ["\n\n", "\n\r\n"]
        .iter()
        .filter_map(|blank| lower[at..].find(blank))
        .min()
        .unwrap_or(lower.len() - at);
    let Some(colon) = lower[at..at + paragraph].find(':') else {
        return Vec::new();
    };
    let list = &text[at + colon + 1..];
    list.lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| {
            let name = l.trim();
            l.starts_with([' ', '\t'])
                && !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
        .map(|l| format!("{}@aol.com", l.trim().to_ascii_lowercase()))
        .collect()
}

/// `text` without its RFC 3464 delivery-status field lines (and their folded continuations):
/// the fields of section 2.2 and 2.3 and extension fields (`X-...`).
fn without_dsn_fields(text: &str) -> String {
    const FIELDS: &[&str] = &[
        "original-envelope-id",
        "reporting-mta",
        "dsn-gateway",
        "received-from-mta",
        "arrival-date",
        "original-recipient",
        "final-recipient",
        "action",
        "status",
        "remote-mta",
        "diagnostic-code",
        "last-attempt-date",
        "final-log-id",
        "will-retry-until",
    ];
    let mut out = String::with_capacity(text.len());
    let mut in_field = false;
    for line in text.split_inclusive('\n') {
        if in_field && line.starts_with([' ', '\t']) {
            continue;
        }
        let name = line
            .split_once(':')
            .map(|(n, _)| n.trim().to_ascii_lowercase());
        in_field = name.is_some_and(|n| {
            !n.contains(' ') && (FIELDS.contains(&n.as_str()) || n.starts_with("x-"))
        });
        if !in_field {
            out.push_str(line);
        }
    }
    out
}

/// An mbox envelope line: "From sender  Thu Apr 29 23:34:45 2015" (the sender need not be an
/// address: "MAILER-DAEMON").
fn mbox_envelope_re() -> &'static regex::bytes::Regex {
    static RE: OnceLock<regex::bytes::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::bytes::Regex::new(r"(?m)^From \S+ +[A-Z][a-z]{2} [A-Z][a-z]{2} +\d")
            .expect("mbox envelope regex")
    })
}

fn extract_depth(raw: &[u8], depth: usize) -> Option<Extracted> {
    let parsed = crate::message::parse(raw);
    let m = parsed.get()?;
    let mut x = extract_from(m, depth)?;
    if x.message_id.is_none() {
        x.message_id = returned_message_id(m, raw);
    }
    Some(x)
}

/// See [`Extracted::message_id`].
fn returned_message_id(m: &Message, raw: &[u8]) -> Option<String> {
    m.parts.iter().find_map(|part| {
        let id = match &part.body {
            PartType::Message(inner) => inner.message_id().map(str::to_string),
            _ if part.content_type().is_some_and(|ct| {
                ct.ctype().eq_ignore_ascii_case("text")
                    && ct
                        .subtype()
                        .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
            }) =>
            {
                let headers = raw.get(part.offset_body as usize..part.offset_end as usize)?;
                std::panic::catch_unwind(|| MessageParser::default().parse_headers(headers))
                    .ok()
                    .flatten()
                    .and_then(|h| h.message_id().map(str::to_string))
            }
            _ => None,
        }?;
        Some(format!("<{id}>"))
    })
}

fn extract_from(m: &Message, depth: usize) -> Option<Extracted> {
    let (prose, dsn, feedback, original_rcpts) = own_texts(m);
    let from = m
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let to: Vec<String> = m
        .to()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.address())
                .map(|x| x.to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    let subject = m.subject().unwrap_or_default().to_ascii_lowercase();

    if let Some(report) = feedback {
        let blocks = field_blocks(&report);
        let fields: Vec<(String, String)> = blocks.into_iter().flatten().collect();
        let feedback_type = field(&fields, "feedback-type").map(|s| s.to_ascii_lowercase());
        let mut rcpts: Vec<String> = fields
            .iter()
            .filter(|(k, _)| k == "original-rcpt-to" || k == "removal-recipient")
            .filter_map(|(_, v)| typed_address(v))
            .collect();
        if rcpts.is_empty() {
            rcpts = original_rcpts;
        }
        if rcpts.is_empty() {
            rcpts = to.clone();
        }
        rcpts.dedup();
        return Some(Extracted {
            message_id: None,
            writer: None,
            kind: Kind::Feedback,
            findings: rcpts
                .into_iter()
                .map(|r| Finding {
                    recipient: r,
                    ..Finding::default()
                })
                .collect(),
            feedback_type: Some(feedback_type.unwrap_or_else(|| "abuse".into())),
        });
    }

    let (report, original) = split_original(&prose);
    let report_text = report.to_string();
    // Delivery-status fields written into the prose (broken MIME, or a plain-text DSN).
    let fields_in_prose = dsn
        .is_none()
        .then(|| dsn_fields_re().find(&report_text).map(|m| m.start()))
        .flatten();
    let dsn = dsn.or_else(|| fields_in_prose.map(|start| report_text[start..].to_string()));
    // The human-readable report: the prose without such fields (their names and values, as
    // "Reporting-MTA: dns; ...", are not a server's words about a recipient).
    let human = match fields_in_prose {
        Some(_) => without_dsn_fields(&report_text),
        None => report_text.clone(),
    };
    let mut original_rcpts = original_rcpts;
    original_rcpts.extend(original_to(original));
    let mut findings = Vec::new();
    if let Some(dsn) = &dsn {
        let blocks = field_blocks(dsn);
        let recipient_blocks = blocks
            .iter()
            .filter(|b| field(b, "final-recipient").is_some())
            .count();
        for block in blocks {
            // The address the sender gave (RFC 3464 section 2.3.1, Original-Recipient) is the
            // one a sender's list holds; else the Final-Recipient (section 2.3.2), when either
            // is an Internet address (an X.400 Final-Recipient is not).
            let rcpt = field(&block, "original-recipient")
                .and_then(typed_address)
                .or_else(|| field(&block, "final-recipient").and_then(typed_address));
            let rcpt = match rcpt {
                Some(rcpt) => rcpt,
                // A recipient block without an Internet address (an X.400 Final-Recipient
                // alone): when the returned message names exactly one recipient and this is
                // the report's only recipient block, it is that one's.
                None if field(&block, "final-recipient").is_some() && recipient_blocks == 1 => {
                    let mut rcpts: Vec<String> = original_rcpts
                        .iter()
                        .map(|r| r.to_ascii_lowercase())
                        .collect();
                    rcpts.sort();
                    rcpts.dedup();
                    match rcpts.as_slice() {
                        [only] => only.clone(),
                        _ => continue,
                    }
                }
                None => continue,
            };
            // Keep a non-SMTP diagnostic type: `X-Unix; 71` is a local delivery program's exit.
            let diagnostic = field(&block, "diagnostic-code")
                .map(|d| match d.split_once(';') {
                    Some((kind, text)) if kind.trim().eq_ignore_ascii_case("smtp") => {
                        text.trim().to_string()
                    }
                    Some((kind, text)) => format!("{}; {}", kind.trim(), text.trim()),
                    None => d.trim().to_string(),
                })
                .unwrap_or_default();
            let status_field = field(&block, "status").unwrap_or_default();
            let status = status_in(status_field);
            // A comment after the code says why: `4.0.0 (host name lookup failure)`.
            let diagnostic = match status_field.split_once('(') {
                Some((_, comment)) => format!("{diagnostic} ({comment}"),
                None => diagnostic,
            };
            let diagnostic = without_gloss(diagnostic);
            let action = field(&block, "action").map(|a| a.to_ascii_lowercase());
            findings.push(Finding {
                recipient: rcpt,
                status,
                action,
                reply_code: code_in(&diagnostic),
                command: command_in(&diagnostic),
                remote_mta: field(&block, "remote-mta").map(|v| {
                    v.split_once(';')
                        .map_or(v, |(_, h)| h)
                        .trim()
                        .to_ascii_lowercase()
                }),
                diagnostic,
                context: Default::default(),
            });
        }
    }

    let auto_replied = m
        .header_raw("Auto-Submitted")
        .is_some_and(|v| v.to_ascii_lowercase().contains("auto-replied"))
        || [
            "automatic reply",
            "auto reply",
            "auto-reply",
            "autoreply",
            "out of office",
            "out of the office",
            "away from",
        ]
        .iter()
        .any(|p| subject.starts_with(p));
    let bouncy_subject = [
        "undeliver",
        "deliver",
        "failure",
        "failed",
        "returned",
        "bounce",
        "error",
        "rejected",
        "non remis",
        "unzustellbar",
        "notification",
        "warning",
        "problem",
        "not delivered",
    ]
    .iter()
    .any(|w| subject.contains(w));
    if findings.is_empty() && dsn.is_none() && auto_replied && !is_daemon(&from) && !bouncy_subject
    {
        return Some(Extracted {
            message_id: None,
            writer: None,
            kind: Kind::Vacation,
            findings: vec![Finding {
                recipient: from,
                ..Finding::default()
            }],
            feedback_type: None,
        });
    }
    if findings.is_empty() {
        let lower = report_text.to_ascii_lowercase();
        let bouncy_text = FAILURE_PHRASES.iter().any(|p| lower.contains(p));
        if dsn.is_none() && !is_daemon(&from) && !bouncy_subject && !bouncy_text {
            return None;
        }
        let mut not_recipients: Vec<String> = to.clone();
        not_recipients.push(from.clone());
        not_recipients.extend(original_senders(original));
        let (named, skipped) = prose_findings(&report_text, &not_recipients);
        findings = named;
        // AOL's template: the screen names listed are the recipients (an address in its
        // sentence is the sender it refuses).
        let aol = if is_daemon(&from) && from.ends_with("@aol.com") {
            aol_screen_names(&report_text)
        } else {
            Vec::new()
        };
        if !aol.is_empty() {
            findings = aol
                .into_iter()
                .map(|r| Finding {
                    recipient: r,
                    ..Finding::default()
                })
                .collect();
        }
        if findings.is_empty() {
            // The prose names nobody (Exim lists a file or pipe delivery by its command: "save
            // to ..."): Exim's X-Failed-Recipients header names the failed addresses, and only
            // those; without it the returned original's recipients are the ones.
            let failed: Vec<String> = m
                .header_raw("X-Failed-Recipients")
                .map(|v| {
                    address_re()
                        .find_iter(v)
                        .map(|a| a.as_str().to_string())
                        .collect()
                })
                .unwrap_or_default();
            let named = if failed.is_empty() {
                original_rcpts
            } else {
                failed
            };
            let mut seen: Vec<String> = Vec::new();
            for r in named {
                if !seen.iter().any(|s| s.eq_ignore_ascii_case(&r)) {
                    seen.push(r);
                }
            }
            findings = seen
                .into_iter()
                .map(|r| Finding {
                    recipient: r,
                    ..Finding::default()
                })
                .collect();
        }
        if findings.is_empty() {
            findings = skipped;
        }
    }
    // A report without delivery-status fields that says delivery goes on is a delay warning.
    let still_trying = dsn.is_none() && {
        let lower = squeeze(&report_text.to_ascii_lowercase());
        DELAY_PHRASES.iter().any(|p| lower.contains(p))
    };
    // Fill what the delivery-status part left out from the prose.
    if !findings.is_empty() {
        let n = findings.len();
        // Every recipient without a diagnostic takes the prose about it (the whole prose when
        // it is not named there) and has the whole prose as context; one with a diagnostic has
        // the prose about it as context. The text read for one report is bounded
        // (PROSE_BYTES_MAX over its recipients, at least 1 KB each) and a whole text is shared,
        // so that a report naming thousands of recipients next to a long text costs what a
        // real one does (an independent review: 3,000 recipients beside 1 MB of text took 3 GB).
        let budget = (PROSE_BYTES_MAX / n).max(1024);
        let human = &human[..human.floor_char_boundary(budget)];
        let shared: std::sync::Arc<str> = human.into();
        let glossless = std::cell::OnceCell::<std::sync::Arc<str>>::new();
        let mentions = Mentions::new(human, &findings);
        for (i, f) in findings.iter_mut().enumerate() {
            let segment = mentions.segment(human, i);
            match (f.diagnostic.trim().is_empty(), segment) {
                (true, segment) => {
                    f.diagnostic = segment.unwrap_or_else(|| human.to_string());
                    f.context = shared.clone();
                }
                (false, Some(segment)) => f.context = without_gloss(segment).into(),
                (false, None) => {
                    f.context = glossless
                        .get_or_init(|| without_gloss(human.to_string()).into())
                        .clone();
                }
            }
            if f.command.is_none() {
                f.command = command_in(&f.diagnostic).or_else(|| command_in(&f.context));
            }
            if f.status.is_none() {
                f.status = status_in(&f.diagnostic);
            }
            if f.reply_code.is_none() {
                f.reply_code = code_in(&f.diagnostic);
            }
            if still_trying && f.action.is_none() {
                f.action = Some("delayed".into());
            }
        }
    }
    if (findings.is_empty() || (dsn.is_none() && findings.iter().all(|f| f.status.is_none())))
        && let Some(inner) = nested_bounce(m, &prose, depth)
    {
        return Some(inner);
    }
    if findings.is_empty() {
        return None;
    }
    // The report, the line that marks the returned original (a writer's fixed separator, as
    // qmail-send's "--- Below this line is a copy of the message.") and the status fields.
    let marker = original.lines().next().unwrap_or_default();
    let own_text = format!(
        "{report_text}\n{marker}\n{}",
        dsn.as_deref().unwrap_or_default()
    );
    Some(Extracted {
        message_id: None,
        writer: crate::origin::writer(m, &from, &subject, &squeeze(&own_text.to_ascii_lowercase())),
        kind: Kind::Bounce,
        findings,
        feedback_type: None,
    })
}

/// How much prose a report's recipients read in all (see the use).
const PROSE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Where each recipient of a report is named in its prose (case-insensitive), found once for
/// all: per recipient a search of the text, not one per pair of recipients (the pairs made a
/// report of 2,000 recipients take minutes).
struct Mentions {
    /// Each finding's recipient, as a number shared by the findings that name the same address.
    id: Vec<usize>,
    /// Every mention of every recipient: (offset, recipient number), by offset.
    all: Vec<(usize, usize)>,
    /// Each recipient number's mentions, by offset.
    of: Vec<Vec<usize>>,
}

impl Mentions {
    fn new(text: &str, findings: &[Finding]) -> Self {
        let lower = text.to_ascii_lowercase();
        let mut ids: std::collections::HashMap<String, usize> = Default::default();
        let id: Vec<usize> = findings
            .iter()
            .map(|f| {
                let n = ids.len();
                *ids.entry(f.recipient.to_ascii_lowercase()).or_insert(n)
            })
            .collect();
        let mut all: Vec<(usize, usize)> = ids
            .iter()
            .filter(|(r, _)| !r.is_empty())
            .flat_map(|(r, &n)| lower.match_indices(r.as_str()).map(move |(p, _)| (p, n)))
            .collect();
        all.sort_unstable();
        let mut of = vec![Vec::new(); ids.len()];
        for &(p, n) in &all {
            of[n].push(p);
        }
        Mentions { id, all, of }
    }

    /// The prose about recipient `i`: every stretch from a mention of it to the next mention of
    /// another recipient (a bounce often lists the addresses first and explains them later);
    /// None when it is not named.
    fn segment(&self, text: &str, i: usize) -> Option<String> {
        let me = self.id[i];
        let mine = &self.of[me];
        if mine.is_empty() {
            return None;
        }
        let mut out = String::new();
        let mut covered = 0;
        for &at in mine {
            if at < covered {
                continue;
            }
            // From the start of the mentioning line (a transcript names the command there),
            // but not before what is already taken: searched only back to there, so a long line
            // with many mentions costs its length once, not once per mention.
            let line = text.as_bytes()[covered..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(covered, |p| covered + p + 1);
            // Not before the line after the last mention of anyone before this line: the
            // exchange is this recipient's alone, and no two walks go over the same lines.
            let before = self.all.partition_point(|&(p, _)| p < line);
            let floor = match before.checked_sub(1).map(|k| self.all[k].0) {
                Some(p) => text[p..].find('\n').map_or(line, |n| (p + n + 1).min(line)),
                None => 0,
            };
            let start = exchange_before(text, floor.max(covered), line);
            // The next mention of another recipient after the start.
            let from = self.all.partition_point(|&(p, _)| p <= start);
            let end = self.all[from..]
                .iter()
                .find(|(_, n)| *n != me)
                .map_or(text.len(), |(p, _)| *p);
            out.push_str(&text[start..end]);
            out.push('\n');
            covered = end;
        }
        Some(out)
    }
}

/// Where the SMTP exchange written just before the line at `line` starts (not before
/// `floor`, a line's start): Sendmail's transcript gives the remote's words (`<<< 550 ...`) on
/// the lines before its own line about the recipient (`554 <rcpt>... Remote protocol error`),
/// after the host (`While talking to HOST:` in V5, `... while talking to HOST.:` in 8) and the
/// command (`>>> MAIL From:<...>`), which may name no recipient. `line` itself when no such
/// lines come before it.
fn exchange_before(text: &str, floor: usize, line: usize) -> usize {
    let mut start = line;
    while start > floor {
        let before = &text[floor..start - 1];
        let from = before.rfind('\n').map_or(floor, |p| floor + p + 1);
        let previous = text[from..start - 1].trim_start();
        let host = previous.trim_start_matches("... ");
        let transcript = previous.starts_with("<<<")
            || previous.starts_with(">>>")
            || host
                .get(..16)
                .is_some_and(|w| w.eq_ignore_ascii_case("while talking to"));
        if !transcript {
            break;
        }
        start = from;
    }
    start
}

/// Collapse runs of white space (folded lines) into one space.
pub fn squeeze(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The text with every mail address in it (`local@domain`, bracketed or bare) replaced by a
/// lone `@`. An address names a mailbox; it is no evidence of why mail to it failed (a local
/// part may read "spam", "blocked" or "filtered"), and with the addresses gone the same reply
/// to different recipients is one text. Idempotent: a lone `@` is no address. Broader than
/// [`address_re`], which finds recipients to report (a dotted domain, ASCII): this takes out
/// any token around an `@`, whatever it names, and leaves links (`://`) whole, since a
/// provider's mark may be in one.
pub fn without_addresses(text: &str) -> std::borrow::Cow<'_, str> {
    // What ends an address: white space, the brackets and quotes around it, the separators
    // of a list or a field ("to:a@b", "a@b,c@d", "a@b; ...").
    fn ends(c: char) -> bool {
        c.is_whitespace()
            || matches!(
                c,
                '<' | '>' | '(' | ')' | '[' | ']' | ',' | ';' | ':' | '"' | '\''
            )
    }
    if !text.contains('@') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (at, _) in text.match_indices('@') {
        if at < copied {
            // Inside an address already replaced ("a@b@c").
            continue;
        }
        let start = text[..at]
            .char_indices()
            .rev()
            .find(|&(_, c)| ends(c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = text[at + 1..]
            .char_indices()
            .find(|&(_, c)| ends(c))
            .map_or(text.len(), |(i, _)| at + 1 + i);
        // The word around it, to the white space: a link ("http://host/?r=a@b") is left whole.
        let word = text[..at]
            .char_indices()
            .rev()
            .find(|&(_, c)| c.is_whitespace())
            .map_or(0, |(i, c)| i + c.len_utf8());
        if start == at || end == at + 1 || text[word..end].contains("://") {
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push('@');
        copied = end;
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

/// Senders of the returned original (From, Return-Path, Sender): never its recipients.
fn original_senders(original: &str) -> Vec<String> {
    original
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("from:") || l.starts_with("return-path:") || l.starts_with("sender:")
        })
        .flat_map(|l| {
            address_re()
                .find_iter(l)
                .map(|m| m.as_str().to_ascii_lowercase())
        })
        .collect()
}

/// Recipients named in a free-text bounce, in order of first mention; and apart, the addresses
/// of the bounce's own sender and recipient (and the original's senders), the last resort.
fn prose_findings(text: &str, not_recipients: &[String]) -> (Vec<Finding>, Vec<Finding>) {
    let mut seen: Vec<String> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut listed = std::collections::HashSet::new();
    // An address delivered to because another was aliased or forwarded to it: Postfix's
    // "<final> (expanded from <original>): ..." (bounce(8)'s per-recipient line), Exim's
    // "final\n    (generated from original)". The original is the address the sender gave, as a
    // delivery-status part's Original-Recipient is: it stands for both, once.
    let mut aliases: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for c in alias_re().captures_iter(text) {
        aliases
            .entry(c[1].to_ascii_lowercase())
            .or_insert_with(|| c[2].to_string());
    }
    // A remote server's reply as Postfix's smtp(8) quotes it ("host X said: 550 5.1.1
    // <other@...>: unauthorized sender (in reply to RCPT TO command)", "host X refused to talk
    // to me: 554 ... contact postmaster@..."): an address in it is the server's words about
    // the recipient named before it, not another recipient.
    // A span ends where a line starts without indentation too: Postfix indents the lines it
    // wraps, and a line at the margin is the next recipient's.
    let quoted: Vec<std::ops::Range<usize>> = quoted_reply_re()
        .find_iter(text)
        .map(|m| {
            let span = m.as_str().as_bytes();
            let end = span
                .windows(2)
                .position(|w| w[0] == b'\n' && !w[1].is_ascii_whitespace())
                .map_or(m.end(), |at| m.start() + at + 1);
            m.start()..end
        })
        .collect();
    // The spans are in order and apart, as the addresses are read: one pass over both.
    let mut next_quoted = 0;
    // Where the line of the current address starts, found by scanning only the text since
    // the previous address: one long line with many addresses is read once, not once per
    // address.
    let (mut line_start, mut scanned) = (0, 0);
    for m in address_re().find_iter(text) {
        if let Some(p) = text[scanned..m.start()].rfind('\n') {
            line_start = scanned + p + 1;
        }
        scanned = m.start();
        let a = m.as_str().trim_end_matches('.').to_string();
        let lower = a.to_ascii_lowercase();
        if is_daemon(&lower) {
            continue;
        }
        while quoted.get(next_quoted).is_some_and(|q| q.end <= m.start()) {
            next_quoted += 1;
        }
        if !seen.is_empty()
            && quoted
                .get(next_quoted)
                .is_some_and(|q| q.contains(&m.start()))
        {
            continue;
        }
        // An aliased address stands for its original; the original, once listed, is not
        // listed again.
        let (a, lower) = match aliases.get(&lower) {
            Some(original) => (original.clone(), original.to_ascii_lowercase()),
            None => (a, lower),
        };
        // Message-IDs and similar tokens: the words just before it on its line.
        let mut near = line_start.max(m.start().saturating_sub(200));
        while !text.is_char_boundary(near) {
            near += 1;
        }
        let before = text[near..m.start()].to_ascii_lowercase();
        if before.contains("message-id") || before.contains("message id") {
            continue;
        }
        // The report quoting the original's header fields ("Your message To: list@... Subject:
        // ... did not reach the following recipient(s)"): the original's addressees and
        // senders, not the failed recipient, unless nobody else is named.
        let head = text[line_start..m.start()].trim_start();
        // Office 365's non-delivery reports end with the original's "Sender Address:" and
        // "Recipient Address:" (under "Original Message Details").
        let quoted_field = [
            "to:",
            "cc:",
            "from:",
            "sender:",
            "reply-to:",
            "sender address:",
        ]
        .iter()
        .any(|f| {
            head.get(..f.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(f))
        });
        let list = if quoted_field || not_recipients.contains(&lower) {
            &mut skipped
        } else {
            &mut seen
        };
        if listed.insert((quoted_field || not_recipients.contains(&lower), lower)) {
            list.push(a);
        }
    }
    let as_findings = |list: Vec<String>| -> Vec<Finding> {
        list.into_iter()
            .map(|r| Finding {
                recipient: r,
                ..Finding::default()
            })
            .collect()
    };
    (as_findings(seen), as_findings(skipped))
}

#[cfg(test)]
mod tests {
    use super::{code_in, status_in, strip_html, without_addresses, without_gloss};

    #[test]
    fn addresses_are_taken_out_of_a_text() {
        let cases = [
            (
                "550 5.1.1 <spam@example.org>: Recipient address rejected: User unknown",
                "550 5.1.1 <@>: Recipient address rejected: User unknown",
            ),
            ("blocked@example.org said: 550 no", "@ said: 550 no"),
            ("to:a@b,c.d@e.example; (x+y=z@v.example)", "to:@,@; (@)"),
            ("a@b@c is odd", "@ is odd"),
            ("Kontakt: jürgen@exämple.de.", "Kontakt: @"),
            // A link is left whole (a provider's mark may be in it).
            (
                "see http://postmaster.example.net/x?r=a@b and c@d",
                "see http://postmaster.example.net/x?r=a@b and @",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(without_addresses(text), want, "{text}");
            // Idempotent: a lone @ is no address.
            assert_eq!(without_addresses(want), want, "{want}");
        }
        // No address: the text itself, not a copy.
        for text in ["550 user unknown", "@ alone", "trailing @", "@", ""] {
            assert!(matches!(
                without_addresses(text),
                std::borrow::Cow::Borrowed(t) if t == text
            ));
        }
    }

    #[test]
    fn a_gloss_on_a_status_code_is_not_read_as_the_servers_words() {
        // The reporting MTA's gloss goes, the quoted reply and what follows stay.
        assert_eq!(
            without_gloss(
                "5.1.0 - Unknown address error 550-'5.2.2 <a@example.org>... Mailbox Full' (delivery attempts: 0)".into()
            ),
            "550-'5.2.2 <a@example.org>... Mailbox Full' (delivery attempts: 0)"
        );
        // On a line of prose too.
        assert_eq!(
            without_gloss(
                "The reason for the problem:\n5.3.0 - Other mail system problem 550 'No such user'"
                    .into()
            ),
            "The reason for the problem:\n550 'No such user'"
        );
        // A status code that is the server's own, before its words, stays.
        for kept in [
            "550 5.1.1 - User unknown",
            "5.1.1 - Bad destination mailbox address",
            "4.4.7 - Delivery expired 421 timed out",
        ] {
            assert_eq!(without_gloss(kept.into()), kept);
        }
    }

    /// The text of an HTML fragment read a character at a time (what `strip_html` did before it
    /// copied whole runs between angle brackets): the oracle for its answers.
    fn strip_html_by_char(html: &str) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in html.chars() {
            match c {
                '<' => in_tag = true,
                '>' => {
                    in_tag = false;
                    out.push(' ');
                }
                _ if !in_tag => out.push(c),
                _ => {}
            }
        }
        out.replace("&nbsp;", " ")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
    }

    #[test]
    fn html_is_stripped_as_a_character_at_a_time() {
        for html in [
            "",
            "plain",
            "<p>Hello</p>",
            "a > b < c",
            "<<a>>x<",
            ">>",
            "<b>caf\u{e9}</b>&nbsp;&lt;3&gt;\u{1f600}<img src=\"x\">",
            "&amp;lt; &nbsp &n&nbsp;bsp;",
            "<a href=\"https://t.example/c?x=1&y=2\">Read \u{fc}ber</a> tail",
            "text <unclosed tag with caf\u{e9}",
        ] {
            assert_eq!(strip_html(html), strip_html_by_char(html), "{html:?}");
        }
    }

    #[test]
    fn an_ip_address_is_no_status_code() {
        assert_eq!(
            status_in("host mx2.mail.yahoo.com [4.79.181.168]: 554 delivery error"),
            None
        );
        assert_eq!(
            status_in("host mx [5.1.1.9]: 550 5.1.1 no such user").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(status_in("(#5.1.1)").as_deref(), Some("5.1.1"));
        assert_eq!(status_in("Status: 4.4.7").as_deref(), Some("4.4.7"));
        assert_eq!(status_in("version 1.4.2.0"), None);
    }

    /// Exchange quotes the remote server's reply whole, in single quotes.
    #[test]
    fn a_reply_code_after_an_opening_quote() {
        assert_eq!(
            code_in(
                "Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found'"
            ),
            Some(550)
        );
        assert_eq!(
            code_in("Remote server returned '554 5.2.2 mailbox full'"),
            Some(554)
        );
        assert_eq!(code_in("the number '5500' is no code"), None);
    }

    /// A reply Postfix quotes is the server's words: an address in it is not another
    /// recipient, but a line at the margin after it starts the next recipient even when the
    /// reply has no "(in reply to ...)"; an alias names the address the sender gave; a number
    /// ending a line is a reply code only where a wrapped reply goes on.
    #[test]
    fn quoted_replies_aliases_and_wrapped_codes_in_prose() {
        let bounce = |body: &str| {
            let raw = format!(
                "From: MAILER-DAEMON@mx.test\r\nTo: s@s.test\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\n{body}"
            );
            crate::classify_message(raw.as_bytes())
                .into_iter()
                .map(|c| (c.recipient, c.reply_code))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            bounce(
                "<a@x.test>: host mx.x.test[192.0.2.1] said: 550\r\n    5.1.1 <b@s.test>: unauthorized sender (in reply to RCPT TO command)\r\n"
            ),
            [("a@x.test".to_string(), Some(550))]
        );
        assert_eq!(
            bounce(
                "a@x.test: Remote host said: 550 unknown user\r\nb@x.test: Remote host said: 550 unknown user\r\n"
            ),
            [
                ("a@x.test".to_string(), Some(550)),
                ("b@x.test".to_string(), Some(550))
            ]
        );
        assert_eq!(
            bounce(
                "<c@y.test> (expanded from <list@s.test>): host mx.y.test said: 550\r\n    invalid mailbox (in reply to RCPT TO command)\r\n"
            ),
            [("list@s.test".to_string(), Some(550))]
        );
        assert_eq!(
            bounce(
                "<d@z.test>: connect to mx.z.test port 465\r\n    421 4.4.1 Connection timed out\r\n"
            ),
            [("d@z.test".to_string(), Some(421))]
        );
    }
}
