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
/// The template work one message may take (minijinja's fuel: about one unit per instruction).
pub const TEMPLATE_FUEL: u64 = 200_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    /// The envelope sender (MAIL FROM), where bounces go.
    pub envelope_sender: String,
    pub content: Content,
    pub recipients: Vec<Recipient>,
    /// Substitution data for every recipient (a recipient's own wins).
    #[serde(default)]
    pub substitutions: Map<String, Value>,
    /// `transactional` or `bulk` (the default): the MTA's lane for these messages.
    #[serde(default)]
    pub lane: Lane,
    /// Track opens and clicks: the HTML part's links go through the MTA's click tracker and
    /// an open pixel is added (built content with an `html_body` only).
    #[serde(default)]
    pub tracking: bool,
}

/// The message: a whole RFC 5322 message (a JSON string), or the parts to build it from (a
/// JSON object).
#[derive(Debug)]
pub enum Content {
    Raw(String),
    Built(Built),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Built {
    pub from: Mailbox,
    pub subject: String,
    #[serde(default)]
    pub reply_to: Option<Mailbox>,
    /// More header fields, by name (values are templates).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub text_body: Option<String>,
    #[serde(default)]
    pub html_body: Option<String>,
}

#[derive(Debug, Deserialize)]
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
    #[serde(default)]
    pub substitutions: Map<String, Value>,
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

/// What was wrong with a request, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The JSON path of the field (`recipients[3].email`); none when the body as a whole is bad.
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    fn at(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: Some(field.into()),
            message: message.into(),
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
    let mut de = serde_json::Deserializer::from_slice(body);
    let request: InjectRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        FieldError {
            // serde_path_to_error names the root ".", and a field it could not finish reading
            // by the name of the last key it read.
            field: (path != "." && !inner.is_syntax() && !inner.is_eof()).then_some(path),
            message: inner.to_string(),
        }
    })?;
    de.end().map_err(|e| FieldError {
        field: None,
        message: e.to_string(),
    })?;
    Ok(request)
}

/// An address a mail server can route: RFC 5321's form, no display name, a dotted domain.
pub fn check_address(field: &str, address: &str) -> Result<(), FieldError> {
    let options = Options::default().without_display_text();
    match EmailAddress::parse_with_options(address, options) {
        Ok(a) if a.domain().contains('.') => Ok(()),
        Ok(_) => Err(FieldError::at(
            field,
            format!("{address:?}: the domain must be a fully qualified name"),
        )),
        Err(e) => Err(FieldError::at(field, format!("{address:?}: {e}"))),
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

/// A header value must stay one field: no line breaks (header injection).
fn check_one_line(field: &str, value: &str) -> Result<(), FieldError> {
    if value.contains(['\r', '\n']) {
        return Err(FieldError::at(
            field,
            "a header value may not contain a line break",
        ));
    }
    Ok(())
}

/// Fields the builder writes itself: set through `from`, `subject`, `reply_to` and the bodies.
const BUILT_FIELDS: [&str; 8] = [
    "from",
    "to",
    "subject",
    "reply-to",
    "date",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
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
    for (i, r) in request.recipients.iter().enumerate() {
        check_address(&format!("recipients[{i}].email"), &r.email)?;
        if let Some(name) = &r.name {
            check_one_line(&format!("recipients[{i}].name"), name)?;
        }
    }
    match &request.content {
        Content::Raw(text) => {
            if text.trim().is_empty() {
                return Err(FieldError::at("content", "the message is empty"));
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
            for name in b.headers.keys() {
                let field = format!("content.headers.{name}");
                check_field_name(&field, name)?;
                if BUILT_FIELDS.contains(&name.to_ascii_lowercase().as_str()) {
                    return Err(FieldError::at(
                        field,
                        "this field is written from content's own fields (from, subject, reply_to, the bodies)",
                    ));
                }
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
                ..message
            },
            recipients: (0..request.recipients.len()).collect(),
        }]);
    }
    let mut made = Vec::with_capacity(request.recipients.len());
    let mut bytes = 0usize;
    for (i, r) in request.recipients.iter().enumerate() {
        let ctx = context(request, r);
        let render = |name: &str| {
            templates
                .render(name, &ctx)
                .map_err(|e| FieldError::at(format!("recipients[{i}]"), format!("{name}: {e}")))
        };
        let mut message = match &request.content {
            Content::Raw(_) => {
                let text = render("content")?;
                raw_message(&text, stamp, &sender, &format!("recipients[{i}]: content"))?
            }
            Content::Built(b) => {
                let how = Building {
                    stamp,
                    sender: &sender,
                    tracking: request.tracking,
                    bulk: request.lane.is_bulk(),
                };
                built_message(b, r, &how, &render)
                    .map_err(|e| FieldError::at(format!("recipients[{i}]"), e.to_string()))?
            }
        };
        message.rcpts = vec![r.email.clone()];
        message.lane = request.lane;
        bytes += message.body.len();
        if bytes > RENDERED_BYTES_MAX {
            return Err(FieldError::at(
                "recipients",
                format!(
                    "the request makes more than {RENDERED_BYTES_MAX} bytes of mail (at recipient {i}); send fewer recipients per request"
                ),
            ));
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

/// The request's templates, compiled once, named by their field.
struct Templates {
    env: minijinja::Environment<'static>,
    /// Does any template use markup (`{{`, `{%`, `{#`)?
    any: bool,
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
        let mut sources: Vec<(String, String)> = Vec::new();
        match content {
            Content::Raw(text) => sources.push(("content".into(), text.clone())),
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
            env.add_template_owned(name.clone(), source)
                .map_err(|e| FieldError::at(name, template_error(&e)))?;
        }
        Ok(Templates { env, any })
    }

    fn render(&self, name: &str, ctx: &Value) -> Result<String, String> {
        let t = self
            .env
            .get_template(name)
            .map_err(|e| template_error(&e))?;
        t.render(ctx).map_err(|e| template_error(&e))
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
            let id = value.trim().trim_start_matches('<').trim_end_matches('>');
            if !id.contains('@') || id.contains(char::is_whitespace) {
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
        let url = tracker.unsubscribe_url(&bracketed, &r.email);
        builder = builder
            .header("List-Unsubscribe", Raw::new(format!("<{url}>")))
            .header(
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
    let body = builder.write_to_vec().map_err(|e| FieldError {
        field: None,
        message: format!("the message could not be written: {e}"),
    })?;
    Ok(OutboundMessage {
        from: sender.to_string(),
        rcpts: Vec::new(),
        message_id: bracketed,
        body,
        lane: Lane::Bulk,
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
    let head_end = crlf.find("\r\n\r\n").map_or(crlf.len(), |i| i + 2);
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
        mail_parser::MessageParser::default()
            .parse_headers(crlf.as_bytes())
            .and_then(|m| m.message_id().map(|id| format!("<{id}>")))
            .unwrap_or_default()
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
        assert_eq!(f, None, "{m}");
        assert!(m.contains("missing field `content`"), "{m}");
        let (f, m) = field_of(r#"{"envelope_sender":"b@s.test", "content": "#);
        assert_eq!(f, None);
        assert!(m.contains("EOF"), "{m}");
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
        let (f, m) = field_of(
            r#"{"envelope_sender":"b@s.test","content":{"from":{"email":"a@s.test"},"subject":"s",
                "text_body":"{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"},
                "recipients":[{"email":"a@x.test"}]}"#,
        );
        assert_eq!(f.as_deref(), Some("recipients[0]"), "{m}");
        assert!(m.contains("fuel"), "{m}");
    }
}
