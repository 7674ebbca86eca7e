//! `POST /api/inject/v1`: the request, its checks, and the messages it makes.
//!
//! The request's shape is KumoMTA's injection API (the one bulk senders' systems already speak):
//! an envelope sender, the content (a whole RFC 5322 message, or the parts to build one from),
//! and recipients, each with its own substitution data. Templates are Jinja (minijinja), with
//! undefined names an error and `{{ ... }}` HTML-escaped in the HTML part only.
//!
//! Everything is checked and every message made before anything is queued: a request is taken
//! whole or not at all. An error names the field (`recipients[3].email`) the way the JSON
//! path reads.

use email_address::{EmailAddress, Options};
use mail_builder::MessageBuilder;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mailsim_mta::OutboundMessage;
use mailsim_mta::queue::Lane;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The most recipients one request may name.
pub const RECIPIENTS_MAX: usize = 10_000;
/// The most bytes of mail one request may make (all its messages together).
pub const RENDERED_BYTES_MAX: usize = 256 * 1024 * 1024;
/// The template work one field of one message may take (minijinja's fuel: about one unit per
/// instruction).
pub const TEMPLATE_FUEL: u64 = 50_000;
/// The longest one request may spend building its messages.
pub const RENDER_SECONDS_MAX: u64 = 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    /// The envelope sender (MAIL FROM), where bounces go.
    pub envelope_sender: String,
    pub content: Content,
    pub recipients: Vec<Recipient>,
    /// Substitution data for every recipient (a recipient's own wins).
    #[serde(default, deserialize_with = "unique_keys")]
    pub substitutions: Map<String, Value>,
    /// `transactional` or `bulk` (the default, any case): the MTA's lane for these messages.
    #[serde(default, deserialize_with = "lane")]
    pub lane: Lane,
    /// Track opens and clicks: the HTML part's links go through the MTA's click tracker and
    /// an open pixel is added (built content with an `html_body` only).
    #[serde(default)]
    pub tracking: bool,
    /// The campaign the messages belong to (set by `POST /api/campaigns`, not by a client).
    #[serde(skip)]
    pub campaign: Option<u64>,
}

/// The message: a whole RFC 5322 message (a JSON string), or the parts to build it from (a
/// JSON object).
#[derive(Debug, Clone)]
pub enum Content {
    Raw(String),
    Built(Built),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Built {
    pub from: Mailbox,
    pub subject: String,
    #[serde(default)]
    pub reply_to: Option<Mailbox>,
    /// More header fields, by name (values are templates).
    #[serde(default, deserialize_with = "unique_keys")]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub text_body: Option<String>,
    #[serde(default)]
    pub html_body: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "unique_keys")]
    pub substitutions: Map<String, Value>,
}

/// A JSON object whose keys are all different: serde_json keeps the last of a repeated key
/// silently, which would let a request say two things and mean one.
fn unique_keys<'de, D, T, M>(d: D) -> Result<M, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
    M: Default + Extend<(String, T)>,
{
    struct V<T, M>(std::marker::PhantomData<(T, M)>);
    impl<'de, T: Deserialize<'de>, M: Default + Extend<(String, T)>> Visitor<'de> for V<T, M> {
        type Value = M;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<M, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut out = M::default();
            while let Some((k, v)) = map.next_entry::<String, T>()? {
                if !seen.insert(k.clone()) {
                    return Err(de::Error::custom(format!("the key {k:?} is given twice")));
                }
                out.extend([(k, v)]);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V(std::marker::PhantomData))
}

fn lane<'de, D: Deserializer<'de>>(d: D) -> Result<Lane, D::Error> {
    let word = String::deserialize(d)?;
    Lane::parse(&word)
        .ok_or_else(|| de::Error::custom(format!("{word:?} is not a lane: bulk or transactional")))
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole message (a string) or an object with from, subject and a body")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Content, E> {
                Ok(Content::Raw(s.to_string()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Content, E> {
                Ok(Content::Raw(s))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Content, A::Error> {
                Built::deserialize(de::value::MapAccessDeserializer::new(map)).map(Content::Built)
            }
        }
        d.deserialize_any(V)
    }
}

/// `POST /api/campaigns`: the injection request's fields, with a list (`lists`) instead of
/// recipients; each active subscriber is a recipient, its CSV fields its substitution data
/// (`name` also names it in To:).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignRequest {
    pub list: String,
    pub envelope_sender: String,
    pub content: Content,
    #[serde(default, deserialize_with = "unique_keys")]
    pub substitutions: Map<String, Value>,
    #[serde(default, deserialize_with = "lane")]
    pub lane: Lane,
    #[serde(default)]
    pub tracking: bool,
    /// A name to know the campaign by (at most 200 characters).
    #[serde(default)]
    pub name: String,
    /// When to start (RFC 3339); default: now.
    pub send_at: Option<String>,
    /// The most messages an hour, after the warm-up steps (default: no limit).
    pub rate_per_hour: Option<u64>,
    /// Warm-up steps from the send time: `[{"hours": 24, "per_hour": 1000}, ...]`.
    pub warmup: Option<Vec<crate::campaigns::Step>>,
}

impl CampaignRequest {
    /// The injection request for these subscribers.
    pub fn for_subscribers(&self, subscribers: &[crate::lists::Subscriber]) -> InjectRequest {
        InjectRequest {
            envelope_sender: self.envelope_sender.clone(),
            content: self.content.clone(),
            recipients: subscribers
                .iter()
                .map(|s| Recipient {
                    email: s.email.clone(),
                    name: s
                        .fields
                        .get("name")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    substitutions: s.fields.clone(),
                })
                .collect(),
            substitutions: self.substitutions.clone(),
            lane: self.lane,
            tracking: self.tracking,
            campaign: None,
        }
    }
}

/// Read a campaign request (as [`parse`] reads an injection).
pub fn parse_campaign(body: &[u8]) -> Result<CampaignRequest, FieldError> {
    let request: CampaignRequest = read_json(body)?;
    crate::lists::check_list_name(&request.list).map_err(|m| FieldError::at("list", m))?;
    if request.name.chars().count() > 200 || request.name.chars().any(char::is_control) {
        return Err(FieldError::at(
            "name",
            "at most 200 characters, no control character",
        ));
    }
    Ok(request)
}

/// A JSON object of type `T`; an error names the field being read (its JSON path).
fn read_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    // A struct would also be read from an array, by position: only an object is a request.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(FieldError::whole("the body must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // A missing or repeated field is reported on the object that lacks or repeats it:
        // name the field itself.
        let named = ["missing field `", "duplicate field `"]
            .iter()
            .find_map(|p| message.strip_prefix(p))
            .and_then(|rest| rest.split('`').next());
        // serde_path_to_error names the root "."; otherwise the field being read.
        let field = match (path.as_str(), named) {
            (".", None) => None,
            (".", Some(name)) => Some(name.to_string()),
            (_, Some(name)) => Some(format!("{path}.{name}")),
            (_, None) => Some(path),
        };
        FieldError {
            field,
            message,
            status: 400,
        }
    })?;
    de.end().map_err(|e| FieldError::whole(e.to_string()))?;
    Ok(value)
}

/// What was wrong with a request, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The JSON path of the field (`recipients[3].email`); none when the body as a whole is bad.
    pub field: Option<String>,
    pub message: String,
    /// The HTTP status it calls for: 400, or 413 when the request would make too much mail.
    #[serde(skip)]
    pub status: u16,
}

impl FieldError {
    pub(crate) fn at(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: Some(field.into()),
            message: message.into(),
            status: 400,
        }
    }

    fn whole(message: impl Into<String>) -> FieldError {
        FieldError {
            field: None,
            message: message.into(),
            status: 400,
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Read a request body. Bad JSON, a wrong type, a missing or unknown field: the error names it.
pub fn parse(body: &[u8]) -> Result<InjectRequest, FieldError> {
    read_json(body)
}

/// An address a mail server can route: RFC 5321's form, no display name, a dotted domain.
pub fn check_address(field: &str, address: &str) -> Result<(), FieldError> {
    let options = Options::default().without_display_text();
    let a = EmailAddress::parse_with_options(address, options)
        .map_err(|e| FieldError::at(field, format!("{address:?}: {e}")))?;
    let domain = a.domain();
    let why = if !a.local_part().is_ascii() {
        // Its MAIL FROM and RCPT TO would need SMTPUTF8 (RFC 6531), which this MTA's client
        // does not speak (found by an independent review).
        Some("a local part not in ASCII: the MTA does not send SMTPUTF8 (RFC 6531)")
    } else if domain.starts_with('[') {
        Some("an address literal: give a domain name")
    } else if !domain.is_ascii() {
        Some("a domain not in ASCII: give its xn-- form (IDNA)")
    } else if !domain.contains('.') {
        Some("the domain must be a fully qualified name")
    } else if domain
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        Some("an address, not a domain name (RFC 1123 2.1: a top-level label is not all digits)")
    } else if !domain.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }) {
        Some("the domain is not a host name (RFC 1123: letters, digits and inner hyphens)")
    } else {
        None
    };
    match why {
        Some(why) => Err(FieldError::at(field, format!("{address:?}: {why}"))),
        None => Ok(()),
    }
}

/// A header field's name as RFC 5322 section 3.6.8 allows it: printable ASCII but the colon.
fn check_field_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(FieldError::at(
            field,
            format!(
                "{name:?} is not a header field name (RFC 5322 3.6.8: printable ASCII, no colon)"
            ),
        ));
    }
    Ok(())
}

/// Why a header value cannot be written as given: a line break (header injection) or another
/// control character (RFC 5322 allows none but the tab).
fn header_value_fault(value: &str) -> Option<&'static str> {
    if value.contains(['\r', '\n']) {
        Some("a header value may not contain a line break")
    } else if value.chars().any(is_header_control) {
        Some(HEADER_CONTROL)
    } else {
        None
    }
}

/// A control character no header field value may hold (line breaks are told apart first).
fn is_header_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\r' | '\n')
}

const HEADER_CONTROL: &str = "a header value may not contain control characters";

fn check_one_line(field: &str, value: &str) -> Result<(), FieldError> {
    match header_value_fault(value) {
        Some(why) => Err(FieldError::at(field, why)),
        None => Ok(()),
    }
}

/// RFC 5322 3.6.4's msg-id without its angle brackets: `left@right`, printable ASCII, no
/// white space or angle brackets.
fn valid_message_id(id: &str) -> bool {
    id.split_once('@').is_some_and(|(l, r)| {
        !l.is_empty()
            && !r.is_empty()
            && !r.contains('@')
            && id
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
    })
}

/// Fields the builder writes itself (from `from`, `subject`, `reply_to`, `recipients`, the
/// bodies and `lane`), or that would mislead about who got the message.
const BUILT_FIELDS: [&str; 15] = [
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "reply-to",
    "date",
    "mime-version",
    "x-mailsim-lane",
    // Trace and authentication fields are the receivers' to write (RFC 5321 4.4, RFC 8601).
    "received",
    "return-path",
    "delivered-to",
    "authentication-results",
    "dkim-signature",
    "sender",
];

/// Check what can be checked before any template is rendered.
pub fn check(request: &InjectRequest) -> Result<(), FieldError> {
    check_address("envelope_sender", &request.envelope_sender)?;
    if request.recipients.is_empty() {
        return Err(FieldError::at(
            "recipients",
            "at least one recipient is needed",
        ));
    }
    if request.recipients.len() > RECIPIENTS_MAX {
        return Err(FieldError::at(
            "recipients",
            format!(
                "{} recipients: at most {RECIPIENTS_MAX} per request",
                request.recipients.len()
            ),
        ));
    }
    for (k, v) in &request.substitutions {
        check_values(&format!("substitutions.{k}"), v)?;
    }
    for (i, r) in request.recipients.iter().enumerate() {
        check_address(&format!("recipients[{i}].email"), &r.email)?;
        for (k, v) in &r.substitutions {
            check_values(&format!("recipients[{i}].substitutions.{k}"), v)?;
        }
        if let Some(name) = &r.name {
            check_one_line(&format!("recipients[{i}].name"), name)?;
        }
    }
    match &request.content {
        Content::Raw(text) => {
            if text.trim().is_empty() {
                return Err(FieldError::at("content", "the message is empty"));
            }
            if request.tracking {
                return Err(FieldError::at(
                    "tracking",
                    "tracking rewrites an html_body: give content as an object",
                ));
            }
        }
        Content::Built(b) => {
            check_address("content.from.email", &b.from.email)?;
            if let Some(name) = &b.from.name {
                check_one_line("content.from.name", name)?;
            }
            if let Some(r) = &b.reply_to {
                check_address("content.reply_to.email", &r.email)?;
                if let Some(name) = &r.name {
                    check_one_line("content.reply_to.name", name)?;
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for name in b.headers.keys() {
                let field = format!("content.headers.{name}");
                check_field_name(&field, name)?;
                let lower = name.to_ascii_lowercase();
                if BUILT_FIELDS.contains(&lower.as_str())
                    || lower.starts_with("content-")
                    || lower.starts_with("arc-")
                    || lower.starts_with("resent-")
                {
                    return Err(FieldError::at(
                        field,
                        "this field is written from the request's own fields (from, subject, reply_to, recipients, the bodies, lane)",
                    ));
                }
                if !seen.insert(lower) {
                    return Err(FieldError::at(
                        field,
                        "the field is named twice (names are case-insensitive)",
                    ));
                }
            }
            if seen.contains("list-unsubscribe-post") && !seen.contains("list-unsubscribe") {
                return Err(FieldError::at(
                    "content.headers.List-Unsubscribe-Post",
                    "List-Unsubscribe-Post needs a List-Unsubscribe field (RFC 8058)",
                ));
            }
            if b.text_body.is_none() && b.html_body.is_none() {
                return Err(FieldError::at(
                    "content",
                    "a text_body, an html_body or both are needed",
                ));
            }
        }
    }
    Ok(())
}

/// Where a request's messages come from: the time (for Date) and Message-IDs unique to this
/// MTA (`<prefix>.<n>@<sender's domain>`).
pub struct Stamp<'a> {
    /// The clock the render deadline is read from (the MTA's, through the seam).
    pub clock: &'a dyn mailsim_events::Clock,
    pub date_s: i64,
    pub id_prefix: &'a str,
    pub next_id: &'a std::sync::atomic::AtomicU64,
    /// The MTA's tracking (links, pixel, one-click unsubscribe), when it serves it.
    pub tracker: Option<&'a crate::track::Tracker>,
}

impl Stamp<'_> {
    fn message_id(&self, domain: &str) -> String {
        let n = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}.{n}@{domain}", self.id_prefix)
    }
}

/// One recipient's message, ready for the MTA.
pub struct Made {
    pub message: OutboundMessage,
    /// The request's recipient indices this message goes to.
    pub recipients: Vec<usize>,
}

/// Make the messages of a checked request: one per recipient, or one for all when the content
/// is a whole message without template markup. An error names the field and recipient.
pub fn make(request: &InjectRequest, stamp: &Stamp) -> Result<Vec<Made>, FieldError> {
    let templates = Templates::of(&request.content)?;
    let sender = request.envelope_sender.clone();
    if let Content::Raw(text) = &request.content
        && !templates.any
    {
        let message = raw_message(text, stamp, &sender, "content")?;
        let rcpts = request.recipients.iter().map(|r| r.email.clone()).collect();
        return Ok(vec![Made {
            message: OutboundMessage {
                rcpts,
                lane: request.lane,
                campaign: request.campaign,
                ..message
            },
            recipients: (0..request.recipients.len()).collect(),
        }]);
    }
    let mut made = Vec::with_capacity(request.recipients.len());
    let mut bytes = 0usize;
    let deadline_ms = stamp.clock.now_ms() + RENDER_SECONDS_MAX * 1000;
    for (i, r) in request.recipients.iter().enumerate() {
        if stamp.clock.now_ms() >= deadline_ms {
            return Err(FieldError::at(
                "recipients",
                format!(
                    "building the messages took over {RENDER_SECONDS_MAX} s (stopped at recipient {i}): send fewer recipients per request or a simpler template"
                ),
            ));
        }
        let ctx = context(request, r);
        let left = std::cell::Cell::new(RENDERED_BYTES_MAX.saturating_sub(bytes));
        let render = |name: &str| {
            let out = templates
                .render(name, &ctx, left.get())
                .map_err(|e| FieldError {
                    field: Some(format!("recipients[{i}]")),
                    ..e
                })?;
            left.set(left.get().saturating_sub(out.len()));
            Ok(out)
        };
        let mut message = match &request.content {
            Content::Raw(_) => {
                let text = format!("{}\n\n{}", render("content.head")?, render("content.body")?);
                raw_message(&text, stamp, &sender, &format!("recipients[{i}]: content"))?
            }
            Content::Built(b) => {
                let how = Building {
                    stamp,
                    sender: &sender,
                    tracking: request.tracking,
                    bulk: request.lane.is_bulk(),
                };
                built_message(b, r, &how, &render).map_err(|e| match &e.field {
                    Some(f) if f.starts_with("recipients[") => e,
                    _ => FieldError {
                        field: Some(format!("recipients[{i}]")),
                        message: e.to_string(),
                        ..e
                    },
                })?
            }
        };
        message.rcpts = vec![r.email.clone()];
        message.lane = request.lane;
        message.campaign = request.campaign;
        bytes += message.body.len();
        if bytes > RENDERED_BYTES_MAX {
            return Err(FieldError {
                status: 413,
                ..FieldError::at(
                    "recipients",
                    format!(
                        "the request makes more than {RENDERED_BYTES_MAX} bytes of mail (at recipient {i}); send fewer recipients per request"
                    ),
                )
            });
        }
        made.push(Made {
            message,
            recipients: vec![i],
        });
    }
    Ok(made)
}

/// A recipient's substitution data: `email` and `name`, then the request's, then its own
/// (later wins).
fn context(request: &InjectRequest, r: &Recipient) -> Value {
    let mut ctx = Map::new();
    ctx.insert("email".into(), Value::String(r.email.clone()));
    if let Some(name) = &r.name {
        ctx.insert("name".into(), Value::String(name.clone()));
    }
    ctx.extend(request.substitutions.clone());
    ctx.extend(r.substitutions.clone());
    Value::Object(ctx)
}

/// The request's templates, compiled once, named by their field. A whole message is two: its
/// header section (`content.head`) and its body (`content.body`).
struct Templates {
    env: minijinja::Environment<'static>,
    /// Does any template use markup (`{{`, `{%`, `{#`)?
    any: bool,
}

/// The longest template of one field.
pub const TEMPLATE_BYTES_MAX: usize = 256 * 1024;
/// The most `~` and `+` operators one template's tags may hold (each can join two values).
pub const TEMPLATE_JOINS_MAX: usize = 32;
/// The longest string in substitution data.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// The statements a mail template may use: conditions and loops. Not `set` or `with` (a chain
/// of them doubles a string at every step), not `macro` or `call` (a macro that calls itself
/// with a joined argument doubles it at every level), nor the others (`filter`, `block`,
/// `extends`, `include`, `import`, `autoescape`, ...), which mail has no use for.
const TEMPLATE_STATEMENTS: &[&str] = &["if", "elif", "else", "endif", "for", "endfor"];

/// What a template may hold, so that no template makes a value of unbounded size, or spends
/// unbounded time, from a small request: only the statements of [`TEMPLATE_STATEMENTS`], no
/// `*` (minijinja repeats a string up to 100 MB with it), at most `TEMPLATE_JOINS_MAX` joining
/// operators and none inside a `{% for %}` (a join of megabyte values evaluated at every step
/// of a loop copies gigabytes without writing a byte: `{{ (a ~ a)|length }}`), at most
/// `TEMPLATE_BYTES_MAX` bytes. Read from minijinja's own tokens, so that what is checked is
/// what runs: a scan of the text, found by an independent review, could be led astray by an
/// escaped quote or a `}}` inside a string.
fn check_template_source(field: &str, source: &str) -> Result<(), FieldError> {
    use minijinja::machinery::{Token, WhitespaceConfig, tokenize};
    if source.len() > TEMPLATE_BYTES_MAX {
        return Err(FieldError::at(
            field,
            format!("the template is over {TEMPLATE_BYTES_MAX} bytes"),
        ));
    }
    let mut joins = 0;
    // How many `{% for %}` blocks the token being read is inside.
    let mut loops = 0usize;
    // The token before: a statement's keyword follows `{%`.
    let mut after_block_start = false;
    let tokens = tokenize(
        source,
        false,
        Default::default(),
        WhitespaceConfig::default(),
    );
    for token in tokens {
        let (token, span) =
            token.map_err(|e| FieldError::at(field, format!("the template does not read: {e}")))?;
        if after_block_start {
            let word = match &token {
                Token::Ident(w) => *w,
                _ => "",
            };
            if !TEMPLATE_STATEMENTS.contains(&word) {
                return Err(FieldError::at(
                    field,
                    format!(
                        "`{{% {word} %}}` (line {}) is not supported in mail templates: only if, elif, else, for and their ends",
                        span.start_line
                    ),
                ));
            }
            match word {
                "for" => loops += 1,
                "endfor" => loops = loops.saturating_sub(1),
                _ => {}
            }
        }
        after_block_start = matches!(token, Token::BlockStart);
        match token {
            Token::Mul => {
                return Err(FieldError::at(
                    field,
                    "`*` is not supported in mail templates (it repeats strings)",
                ));
            }
            Token::Tilde | Token::Plus if loops > 0 => {
                let c = if matches!(token, Token::Tilde) {
                    '~'
                } else {
                    '+'
                };
                return Err(FieldError::at(
                    field,
                    format!(
                        "`{c}` is not supported inside `{{% for %}}` in mail templates: write the parts one after the other (`{{{{ a }}}}{{{{ b }}}}`)"
                    ),
                ));
            }
            Token::Tilde | Token::Plus => joins += 1,
            _ => {}
        }
    }
    if joins > TEMPLATE_JOINS_MAX {
        return Err(FieldError::at(
            field,
            format!("more than {TEMPLATE_JOINS_MAX} `~`/`+` operators in one template"),
        ));
    }
    Ok(())
}

/// Every string in substitution data is at most `VALUE_BYTES_MAX` bytes.
fn check_values(field: &str, value: &Value) -> Result<(), FieldError> {
    match value {
        Value::String(s) if s.len() > VALUE_BYTES_MAX => Err(FieldError::at(
            field,
            format!("a value of {} bytes: at most {VALUE_BYTES_MAX}", s.len()),
        )),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_values(&format!("{field}[{i}]"), v)),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| check_values(&format!("{field}.{k}"), v)),
        _ => Ok(()),
    }
}

/// Templates whose output goes into header fields: a value put in them must stay on one line
/// (no header injection) and hold no control characters.
fn is_header_template(name: &str) -> bool {
    name == "content.subject" || name == "content.head" || name.starts_with("content.headers.")
}

/// A whole message's template split at its first empty line (line ends made LF).
fn split_message(text: &str) -> (String, String) {
    let text = text.replace("\r\n", "\n");
    match text.split_once("\n\n") {
        Some((head, body)) => (head.to_string(), body.to_string()),
        None => (text, String::new()),
    }
}

/// A writer that fails past `left` bytes: a template cannot make more mail than the request
/// may (checked while it is written, not after).
struct Capped {
    out: Vec<u8>,
    left: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.left {
            return Err(std::io::Error::other("too large"));
        }
        self.left -= buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Templates {
    fn of(content: &Content) -> Result<Templates, FieldError> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_auto_escape_callback(|name| {
            if name == "content.html_body" {
                minijinja::AutoEscape::Html
            } else {
                minijinja::AutoEscape::None
            }
        });
        env.set_formatter(|out, state, value| {
            if is_header_template(state.name())
                && let Some(why) = value.as_str().and_then(header_value_fault)
            {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("a substitution in a header field: {why}"),
                ));
            }
            minijinja::escape_formatter(out, state, value)
        });
        // minijinja without its builtins (join, replace, center, range, namespace, ... could
        // each make a string of any size from a small request); these few only shrink or keep
        // a value's size.
        env.add_filter("lower", |v: &str| v.to_lowercase());
        env.add_filter("upper", |v: &str| v.to_uppercase());
        env.add_filter("trim", |v: &str| v.trim().to_string());
        env.add_filter("capitalize", |v: &str| {
            let mut c = v.chars();
            c.next().map_or_else(String::new, |f| {
                f.to_uppercase()
                    .chain(c.flat_map(char::to_lowercase))
                    .collect()
            })
        });
        env.add_filter("title", |v: &str| {
            v.split(' ')
                .map(|w| {
                    let mut c = w.chars();
                    c.next().map_or_else(String::new, |f| {
                        f.to_uppercase()
                            .chain(c.flat_map(char::to_lowercase))
                            .collect()
                    })
                })
                .collect::<Vec<_>>()
                .join(" ")
        });
        env.add_filter("length", |v: minijinja::Value| v.len().unwrap_or(0));
        env.add_filter(
            "default",
            |v: minijinja::Value, other: Option<minijinja::Value>| {
                if v.is_undefined() || v.is_none() || (v.as_str() == Some("")) {
                    other.unwrap_or_else(|| minijinja::Value::from(""))
                } else {
                    v
                }
            },
        );
        let mut sources: Vec<(String, String)> = Vec::new();
        match content {
            Content::Raw(text) => {
                let (head, body) = split_message(text);
                sources.push(("content.head".into(), head));
                sources.push(("content.body".into(), body));
            }
            Content::Built(b) => {
                sources.push(("content.subject".into(), b.subject.clone()));
                for (name, value) in &b.headers {
                    sources.push((format!("content.headers.{name}"), value.clone()));
                }
                if let Some(t) = &b.text_body {
                    sources.push(("content.text_body".into(), t.clone()));
                }
                if let Some(h) = &b.html_body {
                    sources.push(("content.html_body".into(), h.clone()));
                }
            }
        }
        let any = sources
            .iter()
            .any(|(_, s)| s.contains("{{") || s.contains("{%") || s.contains("{#"));
        for (name, source) in sources {
            let field = match name.as_str() {
                "content.head" | "content.body" => "content".to_string(),
                other => other.to_string(),
            };
            check_template_source(&field, &source)?;
            // A control character written into a header field's template is the template's
            // fault, whoever it is rendered for: named at its field, not at the first recipient
            // (an independent review).
            if is_header_template(&name) && source.chars().any(is_header_control) {
                return Err(FieldError::at(field, HEADER_CONTROL));
            }
            env.add_template_owned(name, source)
                .map_err(|e| FieldError::at(field, template_error(&e)))?;
        }
        Ok(Templates { env, any })
    }

    /// Render template `name` for one recipient, writing at most `left` bytes.
    fn render(&self, name: &str, ctx: &Value, left: usize) -> Result<String, FieldError> {
        let field = match name {
            "content.head" | "content.body" => "content",
            other => other,
        };
        let t = self
            .env
            .get_template(name)
            .map_err(|e| FieldError::whole(template_error(&e)))?;
        let mut out = Capped {
            out: Vec::new(),
            left,
        };
        match t.render_captured_to(ctx, &mut out) {
            Ok(_) => Ok(String::from_utf8_lossy(&out.out).into_owned()),
            Err(e) if e.kind() == minijinja::ErrorKind::WriteFailure => Err(FieldError {
                field: Some(field.into()),
                message: format!(
                    "the request would make more than {RENDERED_BYTES_MAX} bytes of mail; send fewer recipients per request"
                ),
                status: 413,
            }),
            Err(e) => {
                let mut message = format!("{field}: {}", template_error(&e));
                if e.kind() == minijinja::ErrorKind::UndefinedError {
                    let known: Vec<&str> = ctx
                        .as_object()
                        .map(|o| o.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let mut missing: Vec<String> = t
                        .undeclared_variables(false)
                        .into_iter()
                        .filter(|v| !known.contains(&v.as_str()))
                        .collect();
                    missing.sort();
                    if !missing.is_empty() {
                        message.push_str(&format!(
                            " ({} not in this recipient's data)",
                            missing.join(", ")
                        ));
                    }
                }
                Err(FieldError::whole(message))
            }
        }
    }
}

/// minijinja's error with its line, without the template name (the field says it).
fn template_error(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!(
            "{} (line {line})",
            e.detail()
                .map_or_else(|| e.kind().to_string(), str::to_string)
        ),
        None => e.detail().map_or_else(|| e.to_string(), str::to_string),
    }
}

/// How a request's messages are built.
struct Building<'a> {
    stamp: &'a Stamp<'a>,
    sender: &'a str,
    /// Rewrite the HTML part's links and add the open pixel.
    tracking: bool,
    /// Bulk mail gets RFC 8058's List-Unsubscribe (one-click) from the MTA's tracker.
    bulk: bool,
}

/// Build a message from its parts; `render` renders a template by field name.
fn built_message(
    b: &Built,
    r: &Recipient,
    how: &Building,
    render: &dyn Fn(&str) -> Result<String, FieldError>,
) -> Result<OutboundMessage, FieldError> {
    let (stamp, sender) = (how.stamp, how.sender);
    let subject = render("content.subject")?;
    check_one_line("content.subject", &subject)?;
    let from_domain = b.from.email.rsplit_once('@').map_or("", |(_, d)| d);
    let mut builder = MessageBuilder::new()
        .from(mailbox(&b.from.email, b.from.name.as_deref()))
        .to(mailbox(&r.email, r.name.as_deref()))
        .subject(subject)
        .date(stamp.date_s);
    if let Some(reply) = &b.reply_to {
        builder = builder.reply_to(mailbox(&reply.email, reply.name.as_deref()));
    }
    let mut message_id = None;
    for name in b.headers.keys() {
        let field = format!("content.headers.{name}");
        let value = render(&field)?;
        check_one_line(&field, &value)?;
        if name.eq_ignore_ascii_case("message-id") {
            let v = value.trim();
            let id = v.strip_prefix('<').unwrap_or(v);
            let id = id.strip_suffix('>').unwrap_or(id);
            if !valid_message_id(id) {
                return Err(FieldError::at(
                    field,
                    format!("{value:?} is not a Message-ID (RFC 5322 3.6.4: <left@right>)"),
                ));
            }
            message_id = Some(id.to_string());
        } else {
            builder = builder.header(name.clone(), Text::new(value));
        }
    }
    let id = message_id.unwrap_or_else(|| stamp.message_id(from_domain));
    builder = builder.message_id(id.clone());
    let bracketed = format!("<{id}>");
    if let Some(tracker) = stamp.tracker
        && how.bulk
        && !b
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("list-unsubscribe"))
    {
        let sender_domain = how.sender.rsplit_once('@').map_or("", |(_, d)| d);
        let value = tracker.list_unsubscribe(&bracketed, &r.email, sender_domain);
        builder = builder.header("List-Unsubscribe", Raw::new(value)).header(
            "List-Unsubscribe-Post",
            Raw::new("List-Unsubscribe=One-Click"),
        );
    }
    if b.text_body.is_some() {
        builder = builder.text_body(render("content.text_body")?);
    }
    if b.html_body.is_some() {
        let mut html = render("content.html_body")?;
        if let Some(tracker) = stamp.tracker.filter(|_| how.tracking) {
            html = tracker.rewrite_html(&html, &bracketed, &r.email);
        }
        builder = builder.html_body(html);
    }
    let body = builder
        .write_to_vec()
        .map_err(|e| FieldError::whole(format!("the message could not be written: {e}")))?;
    Ok(OutboundMessage {
        from: sender.to_string(),
        rcpts: Vec::new(),
        message_id: bracketed,
        body,
        lane: Lane::Bulk,
        campaign: None,
    })
}

fn mailbox<'x>(
    email: &'x str,
    name: Option<&'x str>,
) -> mail_builder::headers::address::Address<'x> {
    match name {
        Some(n) => (n, email).into(),
        None => email.into(),
    }
}

/// A whole message as given: lines end in CRLF; the header section must be one (RFC 5322
/// 2.2: `name: value` lines, folded lines starting with white space, then an empty line) with a
/// From field (3.6); Date and Message-ID are added when missing, as a submission server does
/// (RFC 6409 8.2, 8.3).
/// The longest line of a message, without its CRLF (RFC 5322 section 2.1.1).
const LINE_OCTETS_MAX: usize = 998;

fn raw_message(
    text: &str,
    stamp: &Stamp,
    sender: &str,
    field: &str,
) -> Result<OutboundMessage, FieldError> {
    let mut crlf = String::with_capacity(text.len() + text.len() / 32);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' | '\n' => crlf.push_str("\r\n"),
            c => crlf.push(c),
        }
    }
    if crlf.starts_with("\r\n") {
        return Err(FieldError::at(
            field,
            "the message starts with an empty line: it has no header section",
        ));
    }
    let head_end = crlf.find("\r\n\r\n").map_or(crlf.len(), |i| i + 2);
    // RFC 5322 section 2.1.1: a line is at most 998 characters (octets) before its CRLF. A
    // receiver may refuse a longer one or break it where it likes; it is the sender's to fix.
    if let Some((n, line)) = crlf
        .split("\r\n")
        .enumerate()
        .find(|(_, l)| l.len() > LINE_OCTETS_MAX)
    {
        return Err(FieldError::at(
            field,
            format!(
                "line {}: {} octets, over RFC 5322's {LINE_OCTETS_MAX} (section 2.1.1); fold header fields, wrap or encode the body (quoted-printable, base64)",
                n + 1,
                line.len()
            ),
        ));
    }
    let (mut has_from, mut has_date, mut has_id) = (false, false, false);
    for (n, line) in crlf[..head_end].split("\r\n").enumerate() {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if n == 0 {
                return Err(FieldError::at(
                    field,
                    "line 1 starts with white space: a message starts with a header field",
                ));
            }
            continue;
        }
        let Some((name, _)) = line.split_once(':') else {
            return Err(FieldError::at(
                field,
                format!(
                    "line {}: not a header field (`name: value`) and no empty line before it",
                    n + 1
                ),
            ));
        };
        check_field_name(&format!("{field} (line {})", n + 1), name)?;
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(FieldError::at(
                field,
                format!(
                    "line {}: a header field may not contain control characters",
                    n + 1
                ),
            ));
        }
        // RFC 5322 section 2.2: header fields are ASCII; UTF-8 in them needs SMTPUTF8 (RFC
        // 6532), which this MTA does not send (as for addresses).
        if !line.is_ascii() {
            return Err(FieldError::at(
                field,
                format!(
                    "line {}: a header field holds a character that is not ASCII: encode it (RFC 2047 encoded-words, e.g. `=?UTF-8?Q?caf=C3=A9?=`) or give the content as an object, which does; the MTA does not send SMTPUTF8 (RFC 6532)",
                    n + 1
                ),
            ));
        }
        if name.eq_ignore_ascii_case("bcc") || name.eq_ignore_ascii_case("x-mailsim-lane") {
            return Err(FieldError::at(
                field,
                format!(
                    "line {}: {name} is not sent (Bcc recipients go in `recipients`, the lane in `lane`)",
                    n + 1
                ),
            ));
        }
        has_from |= name.eq_ignore_ascii_case("from");
        has_date |= name.eq_ignore_ascii_case("date");
        has_id |= name.eq_ignore_ascii_case("message-id");
    }
    if !has_from {
        return Err(FieldError::at(
            field,
            "the message has no From field (RFC 5322 3.6)",
        ));
    }
    let mut added = String::new();
    if !has_date {
        added.push_str("Date: ");
        added.push_str(&mail_builder::headers::date::Date::new(stamp.date_s).to_rfc822());
        added.push_str("\r\n");
    }
    let message_id = if has_id {
        let id = mail_parser::MessageParser::default()
            .parse_headers(crlf.as_bytes())
            .and_then(|m| m.message_id().map(str::to_string))
            .unwrap_or_default();
        if !valid_message_id(&id) {
            return Err(FieldError::at(
                field,
                "the Message-ID field is not a msg-id (RFC 5322 3.6.4: <left@right>)",
            ));
        }
        format!("<{id}>")
    } else {
        let domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
        let id = format!("<{}>", stamp.message_id(domain));
        added.push_str("Message-ID: ");
        added.push_str(&id);
        added.push_str("\r\n");
        id
    };
    let mut body = added.into_bytes();
    body.extend_from_slice(crlf.as_bytes());
    if !body.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    Ok(OutboundMessage {
        from: sender.to_string(),
        rcpts: Vec::new(),
        message_id,
        body,
        lane: Lane::Bulk,
        campaign: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn made(json: &str) -> Result<Vec<Made>, FieldError> {
        let request = parse(json.as_bytes())?;
        check(&request)?;
        let next = AtomicU64::new(1);
        let stamp = Stamp {
            clock: &mailsim_events::SystemClock,
            date_s: 1_700_000_000,
            id_prefix: "p",
            next_id: &next,
            tracker: None,
        };
        make(&request, &stamp)
    }

    fn field_of(json: &str) -> (Option<String>, String) {
        let e = made(json).err().expect("an error");
        (e.field, e.message)
    }

    #[test]
    fn errors_name_the_field() {
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":"From: a@s.test\n\nhi","recipients":[{"email":"a@x.test"},{"email":7}]}"#,
        );
        assert_eq!(f.as_deref(), Some("recipients[1].email"), "{m}");
        assert!(m.contains("expected a string"), "{m}");
        let (f, _) = field_of(
            r#"{"envelope_sender":"b@s.test","content":"From: a@s.test\n\nhi","recipients":[{"email":"a@x.test"},{"email":"no-at-sign"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("recipients[1].email"));
        let (f, m) =
            field_of(r#"{"envelope_sender":"b@s.test","content":"x","recipients":[],"extra":1}"#);
        assert_eq!(f.as_deref(), Some("extra"), "{m}");
        assert!(m.contains("unknown field"), "{m}");
        let (f, m) =
            field_of(r#"{"envelope_sender":"b@s.test","recipients":[{"email":"a@x.test"}]}"#);
        assert_eq!(f.as_deref(), Some("content"), "{m}");
        assert!(m.contains("missing field `content`"), "{m}");
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"text_body":"x"},"recipients":[{"email":"a@x.test"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("content.subject"), "{m}");
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","envelope_sender":"c@s.test","content":"x","recipients":[]}"#,
        );
        assert_eq!(f.as_deref(), Some("envelope_sender"), "{m}");
        // A repeated key of an object the request names freely is no more taken than a
        // repeated field (serde_json would keep the last one).
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"s","text_body":"x","headers":{"X-A":"1","X-A":"2"}},"recipients":[{"email":"a@x.test"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("content.headers"), "{m}");
        assert!(m.contains("\"X-A\" is given twice"), "{m}");
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":"x","recipients":[{"email":"a@x.test","substitutions":{"a":1,"a":2}}]}"#,
        );
        assert_eq!(f.as_deref(), Some("recipients[0].substitutions"), "{m}");
        let (f, m) = field_of(r#"{"envelope_sender":"b@s.test", "content": "#);
        assert_eq!(f.as_deref(), Some("content"), "the field being read");
        assert!(m.contains("EOF"), "{m}");
        let (f, m) = field_of(r#"["b@s.test", "From: a@s.test\n\nhi", [["a@x.test", null, {}]]]"#);
        assert_eq!(f, None);
        assert!(m.contains("JSON object"), "{m}");
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":"From: a@s.test\n\nhi","recipients":[{"email":"a@x.test"}],"lane":1}"#,
        );
        assert_eq!(f.as_deref(), Some("lane"), "{m}");
        for bad in ["a@[127.0.0.1]", "a@a_b.test", "j@bü.test", "a@-x.test"] {
            let (f, m) = field_of(&format!(
                r#"{{"envelope_sender":"b@s.test","content":"From: a@s.test\n\nhi","recipients":[{{"email":"{bad}"}}]}}"#
            ));
            assert_eq!(f.as_deref(), Some("recipients[0].email"), "{bad}: {m}");
        }
        for (header, why) in [
            ("Content-ID", "written from"),
            ("Bcc", "written from"),
            ("X-Mailsim-Lane", "written from"),
            ("List-Unsubscribe-Post", "needs a List-Unsubscribe"),
        ] {
            let (f, m) = field_of(&format!(
                r#"{{"envelope_sender":"b@s.test","content":{{"from":{{"email":"a@s.test"}},"subject":"s","text_body":"t","headers":{{"{header}":"x"}}}},"recipients":[{{"email":"a@x.test"}}]}}"#
            ));
            assert!(f.unwrap().starts_with("content.headers."), "{header}");
            assert!(m.contains(why), "{header}: {m}");
        }
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"s","text_body":"t","headers":{"X-A":"1","x-a":"2"}},"recipients":[{"email":"a@x.test"}]}"#,
        );
        assert!(f.unwrap().starts_with("content.headers."));
        assert!(m.contains("twice"), "{m}");
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"s","text_body":"t","headers":{"Subject":"x"}},"recipients":[{"email":"a@x.test"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("content.headers.Subject"), "{m}");
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"s","text_body":"t","bcc":"x"},"recipients":[{"email":"a@x.test"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("content.bcc"), "{m}");
        let (f, _) = field_of(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"s"},"recipients":[{"email":"a@x.test"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("content"));
        let (f, m) = field_of(
            r#"{"envelope_sender":"Bob <b@s.test>","content":"From: a@s.test\n\nhi","recipients":[{"email":"a@x.test"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("envelope_sender"), "{m}");
    }

    #[test]
    fn substitutions_are_escaped_in_html_only_and_undefined_names_are_errors() {
        let m = made(
            r#"{"envelope_sender":"b@s.test",
                "content":{"from":{"email":"news@s.test","name":"News"},"subject":"Hi {{ name }}",
                           "text_body":"Dear {{ name }} <{{ email }}>, {{ offer }}",
                           "html_body":"<p>Dear {{ name }}, {{ offer }}</p>"},
                "substitutions":{"offer":"50% off & more"},
                "recipients":[{"email":"a@x.test","name":"Ann <b>"},
                              {"email":"c@x.test","substitutions":{"name":"Cy","offer":"none"}}]}"#,
        )
        .expect("made");
        assert_eq!(m.len(), 2);
        let parsed = mail_parser::MessageParser::default()
            .parse(&m[0].message.body)
            .expect("parses");
        assert_eq!(parsed.subject(), Some("Hi Ann <b>"));
        assert_eq!(
            parsed.body_text(0).as_deref(),
            Some("Dear Ann <b> <a@x.test>, 50% off & more")
        );
        assert_eq!(
            parsed.body_html(0).as_deref(),
            Some("<p>Dear Ann &lt;b&gt;, 50% off &amp; more</p>")
        );
        assert_eq!(m[0].message.rcpts, ["a@x.test"]);
        assert_eq!(m[0].message.from, "b@s.test");
        assert_eq!(m[0].message.message_id, "<p.1@s.test>");
        let second = mail_parser::MessageParser::default()
            .parse(&m[1].message.body)
            .expect("parses");
        assert_eq!(
            second.body_text(0).as_deref(),
            Some("Dear Cy <c@x.test>, none")
        );
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"s","text_body":"{{ name }}"},
                "recipients":[{"email":"a@x.test","name":"A"},{"email":"b@x.test"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("recipients[1]"), "{m}");
        assert!(
            m.contains("content.text_body") && m.contains("undefined"),
            "{m}"
        );
    }

    #[test]
    fn substitutions_cannot_add_header_fields_to_a_whole_message_either() {
        for value in [
            "RAWINJ\\nBcc: evil@b.test",
            "x\\n\\n<html>body replaced",
            "x\\u0000y",
        ] {
            let (f, m) = field_of(&format!(
                r#"{{"envelope_sender":"b@s.test","content":"From: a@s.test\nSubject: {{{{ s }}}}\n\nhi {{{{ s }}}}","recipients":[{{"email":"a@x.test","substitutions":{{"s":"{value}"}}}}]}}"#
            ));
            assert_eq!(f.as_deref(), Some("recipients[0]"), "{value}: {m}");
            assert!(m.contains("header field"), "{value}: {m}");
        }
        // In the body a line break is just text.
        let m = made(
            r#"{"envelope_sender":"b@s.test","content":"From: a@s.test\nSubject: hi\n\n{{ s }}","recipients":[{"email":"a@x.test","substitutions":{"s":"line 1\nline 2"}}]}"#,
        )
        .expect("made");
        assert!(m[0].message.body.ends_with(b"line 1\r\nline 2\r\n"));
    }

    /// A control character in a header field's own template is named at that field.
    #[test]
    fn a_control_character_in_a_header_template_names_its_field() {
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"a\u0000b","text_body":"t"},"recipients":[{"email":"a@x.test"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("content.subject"), "{m}");
        assert!(m.contains("control characters"), "{m}");
    }

    /// An independent review: a local part not in ASCII was taken, and would have gone out
    /// in RCPT TO without SMTPUTF8.
    #[test]
    fn addresses_the_mta_cannot_send_to_are_refused_with_why() {
        for (address, says) in [
            ("jöhn@x.example", "SMTPUTF8"),
            ("john@bücher.example", "xn--"),
            ("john@[192.0.2.1]", "address literal"),
            ("john@localhost", "fully qualified"),
        ] {
            let e = check_address("recipients[0].email", address).expect_err(address);
            assert_eq!(e.field.as_deref(), Some("recipients[0].email"));
            assert!(e.message.contains(says), "{address}: {}", e.message);
        }
        assert!(check_address("f", "john.o'hara+tag@x.example").is_ok());
    }

    #[test]
    fn a_template_cannot_make_more_mail_than_a_request_may() {
        let big = "y".repeat(200_000);
        let items = vec!["1"; 2000].join(",");
        let e = made(&format!(
            r#"{{"envelope_sender":"b@s.test","content":{{"from":{{"email":"a@s.test"}},"subject":"s","text_body":"{{% for i in items %}}{{{{ s }}}}{{% endfor %}}"}},"substitutions":{{"s":"{big}","items":[{items}]}},"recipients":[{{"email":"a@x.test"}}]}}"#
        ))
        .err()
        .expect("refused");
        assert_eq!(e.status, 413, "{e}");
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"s","text_body":"{% set ns = s ~ s %}{{ ns }}"},"recipients":[{"email":"a@x.test"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("content.text_body"));
        assert!(m.contains("set"), "{m}");
        for body in [
            "{{ (s|list)|join(s) }}",
            "{{ s|replace('A', s) }}",
            "{{ range(9)|length }}",
        ] {
            let (f, m) = field_of(&format!(
                r#"{{"envelope_sender":"b@s.test","content":{{"from":{{"email":"a@s.test"}},"subject":"s","text_body":"{body}"}},"substitutions":{{"s":"AAAA"}},"recipients":[{{"email":"a@x.test"}}]}}"#
            ));
            assert!(f.is_some(), "{body}: {m}");
            assert!(m.contains("unknown"), "{body}: {m}");
        }
        // An independent review: `*` repeated a string to 100 MB per use (8.9 GB of memory
        // from a 552-byte template); a join in a loop copies its values at every step.
        for (body, says) in [
            ("{{ (s * 100000000)|length }}", "`*` is not supported"),
            ("{{ 2 * 3 }}", "`*` is not supported"),
            (
                "{% for i in items %}{{ (s ~ s)|length }}{% endfor %}",
                "`~` is not supported inside",
            ),
            (
                "{% for i in items %}{% if i %}{{ i + 1 }}{% endif %}{% endfor %}",
                "`+` is not supported inside",
            ),
        ] {
            let (f, m) = field_of(&format!(
                r#"{{"envelope_sender":"b@s.test","content":{{"from":{{"email":"a@s.test"}},"subject":"s","text_body":"{body}"}},"substitutions":{{"s":"AAAA","items":[1,2]}},"recipients":[{{"email":"a@x.test"}}]}}"#
            ));
            assert_eq!(f.as_deref(), Some("content.text_body"), "{body}: {m}");
            assert!(m.contains(says), "{body}: {m}");
        }
        // A second review: the text scan ignored escaped quotes and `}}` inside strings, so
        // `*` and joins in loops got through (1.9 GB from one request); and a macro calling
        // itself doubles a joined argument at every level. Now minijinja's tokens are read.
        for (body, says) in [
            (
                r#"{{ ("\"" * 100 ~ '\'' * 100)|length }}"#,
                "`*` is not supported",
            ),
            (r#"{{ "}}" ~ ("x" * 3)|length }}"#, "`*` is not supported"),
            (
                r#"{% for i in items %}{{ ("\"" ~ "x") }}{% endfor %}"#,
                "`~` is not supported inside",
            ),
            (
                "{% macro m(a) %}{{ m(a ~ a) }}{% endmacro %}{{ m(s) }}",
                "`{% macro %}` (line 1) is not supported",
            ),
            ("{% filter upper %}x{% endfilter %}", "`{% filter %}`"),
            ("{{ s ", "unexpected end of input"),
        ] {
            let request = serde_json::json!({
                "envelope_sender": "b@s.test",
                "content": {"from": {"email": "a@s.test"}, "subject": "s", "text_body": body},
                "substitutions": {"s": "AAAA", "items": [1, 2]},
                "recipients": [{"email": "a@x.test"}],
            });
            let (f, m) = field_of(&request.to_string());
            assert_eq!(f.as_deref(), Some("content.text_body"), "{body}: {m}");
            assert!(m.contains(says), "{body}: {m}");
        }
        let m = made(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"s","text_body":"{%- for i in items -%}{{ i }}{%+ endfor %} {{ s ~ '*' ~ s }}"},"substitutions":{"s":"A","items":[1,2]},"recipients":[{"email":"a@x.test"}]}"#,
        )
        .expect("whitespace control, joins after the loop and `*` in a string are kept");
        assert!(
            String::from_utf8_lossy(&m[0].message.body).contains("12 A*A"),
            "{}",
            String::from_utf8_lossy(&m[0].message.body)
        );
        let joins = "{{ s".to_string() + &" ~ s".repeat(40) + " }}";
        let (f, m) = field_of(&format!(
            r#"{{"envelope_sender":"b@s.test","content":{{"from":{{"email":"a@s.test"}},"subject":"s","text_body":"{joins}"}},"recipients":[{{"email":"a@x.test"}}]}}"#
        ));
        assert_eq!(f.as_deref(), Some("content.text_body"), "{m}");
        let m = made(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"{{ name|default('friend')|title }}","text_body":"{{ 'a~b+c' }} {{ name|upper }}"},"recipients":[{"email":"a@x.test","name":"ann lee"}]}"#,
        )
        .expect("the filters kept work; operators inside strings are not counted");
        let parsed = mail_parser::MessageParser::default()
            .parse(&m[0].message.body)
            .unwrap();
        assert_eq!(parsed.subject(), Some("Ann Lee"));
        let (_, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"Hi {{ name }}","text_body":"t"},"recipients":[{"email":"a@x.test"}]}"#,
        );
        assert!(m.contains("name not in this recipient's data"), "{m}");
        assert!(
            !m.contains("recipients[0]"),
            "the field is not repeated: {m}"
        );
    }

    #[test]
    fn substitutions_cannot_add_header_fields() {
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"{{ s }}","text_body":"t"},
                "recipients":[{"email":"a@x.test","substitutions":{"s":"x\r\nBcc: all@x.test"}}]}"#,
        );
        assert_eq!(f.as_deref(), Some("recipients[0]"), "{m}");
        assert!(m.contains("line break"), "{m}");
    }

    #[test]
    fn a_whole_message_without_markup_is_one_message_for_every_recipient() {
        let m = made(
            r#"{"envelope_sender":"b@s.test","content":"From: a@s.test\nSubject: hello\n\nHello there",
                "recipients":[{"email":"a@x.test"},{"email":"b@y.test"}]}"#,
        )
        .expect("made");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].message.rcpts, ["a@x.test", "b@y.test"]);
        assert_eq!(m[0].recipients, [0, 1]);
        let text = String::from_utf8(m[0].message.body.clone()).expect("utf-8");
        assert!(text.starts_with("Date: "), "{text}");
        assert!(text.contains("\r\nMessage-ID: <p.1@s.test>\r\nFrom: a@s.test\r\nSubject: hello\r\n\r\nHello there\r\n"), "{text}");
        assert_eq!(m[0].message.message_id, "<p.1@s.test>");
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":"Subject: hello\n\nHello there","recipients":[{"email":"a@x.test"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("content"));
        assert!(m.contains("no From field"), "{m}");
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":"Hello there\nFrom: a@s.test","recipients":[{"email":"a@x.test"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("content"));
        assert!(m.contains("line 1"), "{m}");
    }

    #[test]
    fn a_whole_message_must_start_with_clean_header_fields_and_not_disclose_bcc() {
        let long_body = format!("From: a@s.test\\n\\n{}", "L".repeat(999));
        let long_subject = format!("From: a@s.test\\nSubject: {}\\n\\nbody", "s".repeat(1000));
        for (content, want) in [
            ("\\nFrom: a@s.test\\n\\nbody", "starts with an empty line"),
            (
                "From: a@s.test\\nSubject: a\\u0001b\\n\\nbody",
                "control characters",
            ),
            ("From: a@s.test\\nBcc: secret@b.test\\n\\nbody", "Bcc"),
            (
                "From: a@s.test\\nX-Mailsim-Lane: bogus\\n\\nbody",
                "X-Mailsim-Lane",
            ),
            ("From: a@s.test\\nMessage-ID: garbage\\n\\nbody", "msg-id"),
            // An independent review: these two were sent on as given.
            (
                "From: a@s.test\\nSubject: café\\n\\nbody",
                "line 2: a header field holds a character that is not ASCII",
            ),
            (&long_body, "line 3: 999 octets, over RFC 5322's 998"),
            (&long_subject, "line 2: 1009 octets"),
        ] {
            let (f, m) = field_of(&format!(
                r#"{{"envelope_sender":"b@s.test","content":"{content}","recipients":[{{"email":"a@x.test"}}]}}"#
            ));
            assert_eq!(f.as_deref(), Some("content"), "{content}: {m}");
            assert!(m.contains(want), "{content}: {m}");
        }
        for (header, address) in [
            ("Received", "a@x.test"),
            ("Authentication-Results", "a@x.test"),
            ("ARC-Seal", "a@x.test"),
            ("X-Ok", "u@127.1.0.2"),
        ] {
            let (f, _) = field_of(&format!(
                r#"{{"envelope_sender":"b@s.test","content":{{"from":{{"email":"a@s.test"}},"subject":"s","text_body":"t","headers":{{"{header}":"x"}}}},"recipients":[{{"email":"{address}"}}]}}"#
            ));
            assert!(f.is_some(), "{header} / {address}");
        }
    }

    #[test]
    fn a_templated_whole_message_keeps_its_message_id() {
        let m = made(
            r#"{"envelope_sender":"b@s.test","content":"From: a@s.test\nMessage-ID: <{{ id }}@s.test>\n\nHi {{ email }}",
                "recipients":[{"email":"a@x.test","substitutions":{"id":"m1"}},{"email":"b@x.test","substitutions":{"id":"m2"}}]}"#,
        )
        .expect("made");
        let ids: Vec<&str> = m.iter().map(|m| m.message.message_id.as_str()).collect();
        assert_eq!(ids, ["<m1@s.test>", "<m2@s.test>"]);
        assert!(m[1].message.body.ends_with(b"Hi b@x.test\r\n"));
    }

    #[test]
    fn tracked_bulk_mail_gets_its_links_rewritten_a_pixel_and_one_click_unsubscribe() {
        let request = parse(
            br#"{"envelope_sender":"b@s.test","tracking":true,
                "content":{"from":{"email":"n@s.test"},"subject":"s","text_body":"t",
                           "html_body":"<a href='https://shop.test/{{ email }}'>go</a>"},
                "recipients":[{"email":"a@x.test"}]}"#,
        )
        .unwrap();
        let tracker = crate::track::Tracker::new(&[1; 32], "http://127.0.0.1:9");
        let next = AtomicU64::new(1);
        let stamp = Stamp {
            clock: &mailsim_events::SystemClock,
            date_s: 1_700_000_000,
            id_prefix: "p",
            next_id: &next,
            tracker: Some(&tracker),
        };
        let m = make(&request, &stamp).unwrap();
        let parsed = mail_parser::MessageParser::default()
            .parse(&m[0].message.body)
            .unwrap();
        let html = parsed.body_html(0).unwrap();
        let href = html
            .split("href='")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        let token = href.strip_prefix("http://127.0.0.1:9/t/c/").unwrap();
        assert_eq!(
            tracker.check(token),
            Some(crate::track::Mark::Click {
                message_id: "<p.1@s.test>".into(),
                rcpt: "a@x.test".into(),
                url: "https://shop.test/a@x.test".into()
            })
        );
        assert!(html.contains("http://127.0.0.1:9/t/o/"), "{html}");
        let unsubscribe = parsed.header_raw("List-Unsubscribe").unwrap().trim();
        assert!(
            unsubscribe.starts_with("<http://127.0.0.1:9/u/"),
            "{unsubscribe}"
        );
        // Transactional mail: no List-Unsubscribe.
        let request = parse(
            br#"{"envelope_sender":"b@s.test","lane":"transactional",
                "content":{"from":{"email":"n@s.test"},"subject":"s","text_body":"t"},
                "recipients":[{"email":"a@x.test"}]}"#,
        )
        .unwrap();
        let m = make(&request, &stamp).unwrap();
        assert!(!String::from_utf8_lossy(&m[0].message.body).contains("List-Unsubscribe"));
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let items = vec!["1"; 1000].join(",");
        let (f, m) = field_of(&format!(
            r#"{{"envelope_sender":"b@s.test","content":{{"from":{{"email":"a@s.test"}},"subject":"s",
                "text_body":"{{% for i in items %}}{{% for j in items %}}x{{% endfor %}}{{% endfor %}}"}},
                "substitutions":{{"items":[{items}]}},"recipients":[{{"email":"a@x.test"}}]}}"#
        ));
        assert_eq!(f.as_deref(), Some("recipients[0]"), "{m}");
        assert!(m.contains("fuel"), "{m}");
    }
}
