//! What IMAP needs from a message's MIME structure: ENVELOPE, BODYSTRUCTURE, section bytes and
//! header lookups. mail-parser finds the parts and their byte offsets and decodes header fields;
//! this module turns them into IMAP's forms (RFC 3501 sections 6.4.5 and 7.4.2).

use crate::imap_wire::{nstring, quoted_or_literal};
use mail_parser::{Address, HeaderValue, MessagePart, PartType};

/// A parsed message; `None` inside when mail-parser could not make sense of it (the message is
/// then served as one text/plain part). Parsed and dropped as `mailsim_bounce::message` does
/// it: a panic in mail-parser's debug assertions is "could not parse", and a message nesting
/// messages thousands deep is dropped without recursion (a message from the network must not
/// take the server down).
pub struct Mime<'a> {
    raw: &'a [u8],
    msg: mailsim_bounce::message::Parsed<'a>,
}

/// Where the header ends: the offset of the body (after the empty line).
fn split_header(raw: &[u8]) -> usize {
    let mut i = 0;
    while i < raw.len() {
        if raw[i..].starts_with(b"\r\n") && (i == 0 || raw[..i].ends_with(b"\n")) {
            return i + 2;
        }
        if raw[i] == b'\n' && (i == 0 || raw[i - 1] == b'\n') {
            return i + 1;
        }
        i += 1;
    }
    raw.len()
}

/// One addressed part: the message it belongs to (for raw offsets) and its index.
#[derive(Clone, Copy)]
struct At<'m, 'a> {
    msg: &'m mail_parser::Message<'a>,
    idx: usize,
    /// For the root of an encapsulated message: where the enclosing part ends (mail-parser
    /// ends a nested multipart at its closing boundary, leaving out the epilogue).
    root_end: Option<usize>,
    /// The bytes the part offsets count in: mail-parser gives an encapsulated message parsed in
    /// place offsets into the outermost message, one it had to decode first offsets into its own
    /// decoded bytes.
    raw: &'m [u8],
}

impl<'m, 'a> At<'m, 'a> {
    fn part(&self) -> &'m MessagePart<'a> {
        &self.msg.parts[self.idx]
    }
    fn raw(&self) -> &'m [u8] {
        self.raw
    }
    fn header_bytes(&self) -> &'m [u8] {
        let p = self.part();
        self.raw()
            .get(p.offset_header as usize..p.offset_body as usize)
            .unwrap_or_default()
    }
    fn body_bytes(&self) -> &'m [u8] {
        let p = self.part();
        let end = match self.root_end {
            Some(e) if self.idx == 0 => e.max(p.offset_body as usize),
            _ => p.offset_end as usize,
        };
        self.raw()
            .get(p.offset_body as usize..end)
            .unwrap_or_default()
    }
    /// The encapsulated message of a message/rfc822 part.
    fn nested(&self) -> Option<At<'m, 'a>> {
        match &self.part().body {
            PartType::Message(m) if !m.parts.is_empty() => {
                let inner = m.raw_message();
                let outer = self.raw.as_ptr_range();
                let in_place = outer.contains(&inner.as_ptr());
                Some(At {
                    msg: m,
                    idx: 0,
                    raw: if in_place { self.raw } else { inner },
                    root_end: in_place.then_some(self.part().offset_end as usize),
                })
            }
            _ => None,
        }
    }
}

/// What a section names, as bytes of the stored message.
pub enum SectionText {
    Header,
    Text,
    Mime,
    Fields(Vec<String>),
    FieldsNot(Vec<String>),
}

impl<'a> Mime<'a> {
    pub fn new(raw: &'a [u8]) -> Self {
        Mime {
            raw,
            msg: mailsim_bounce::message::parse(raw),
        }
    }

    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    fn root(&self) -> Option<At<'_, 'a>> {
        self.msg
            .get()
            .filter(|m| !m.parts.is_empty())
            .map(|msg| At {
                msg,
                idx: 0,
                raw: self.raw,
                root_end: None,
            })
    }

    pub fn header_bytes(&self) -> &[u8] {
        &self.raw[..split_header(self.raw)]
    }

    pub fn text_bytes(&self) -> &[u8] {
        &self.raw[split_header(self.raw)..]
    }

    /// Unfolded raw values of every header field named `name` in the top-level header.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        header_values(self.header_bytes(), name)
    }

    /// The bytes a BODY[...] section names; `None` when the part does not exist.
    pub fn section(&self, path: &[u32], text: Option<&SectionText>) -> Option<Vec<u8>> {
        let Some(root) = self.root() else {
            // Unparsed: the message is its only part.
            return match (path, text) {
                ([], None) => Some(self.raw.to_vec()),
                ([] | [1], Some(SectionText::Header)) => Some(self.header_bytes().to_vec()),
                ([] | [1], Some(SectionText::Text)) | ([1], None) => {
                    Some(self.text_bytes().to_vec())
                }
                _ => None,
            };
        };
        if path.is_empty() {
            return Some(match text {
                None => self.raw.to_vec(),
                Some(t) => select_text(
                    self.header_bytes(),
                    self.text_bytes(),
                    t,
                    self.header_bytes(),
                ),
            });
        }
        let mut at = root;
        for (i, &k) in path.iter().enumerate() {
            if i > 0
                && let Some(inner) = at.nested()
            {
                at = inner;
            }
            match &at.part().body {
                PartType::Multipart(children) => {
                    let child = *children.get((k as usize).checked_sub(1)?)?;
                    at = At {
                        idx: child as usize,
                        root_end: None,
                        ..at
                    };
                }
                _ if k == 1 => {}
                _ => return None,
            }
        }
        match text {
            None => Some(at.body_bytes().to_vec()),
            Some(SectionText::Mime) => Some(at.header_bytes().to_vec()),
            Some(t) => {
                // HEADER, TEXT and the field lists of part N name its encapsulated message.
                let inner = at.nested()?;
                Some(select_text(
                    inner.header_bytes(),
                    inner.body_bytes(),
                    t,
                    inner.header_bytes(),
                ))
            }
        }
    }

    /// ENVELOPE of the top-level message.
    pub fn envelope(&self) -> String {
        match self.root() {
            Some(at) => envelope_of(at.msg, at.header_bytes()),
            None => "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)".into(),
        }
    }

    /// BODY (`extended` false) or BODYSTRUCTURE (`extended` true).
    pub fn body_structure(&self, extended: bool) -> String {
        let mut out = String::new();
        match self.root() {
            Some(at) => structure(at, extended, 0, &mut out),
            None => {
                let body = self.text_bytes();
                out.push_str(&format!(
                    "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" {} {}{})",
                    body.len(),
                    count_lines(body),
                    if extended { " NIL NIL NIL NIL" } else { "" }
                ));
            }
        }
        out
    }

    /// The addresses of an address header as SEARCH sees them: each display name and each
    /// `local@domain`, comments and routes removed.
    pub fn address_texts(&self, name: &str) -> Vec<String> {
        let Some(msg) = self.msg.get() else {
            return vec![];
        };
        let addr = match name.to_ascii_lowercase().as_str() {
            "from" => msg.from(),
            "to" => msg.to(),
            "cc" => msg.cc(),
            "bcc" => msg.bcc(),
            _ => None,
        };
        let mut out = Vec::new();
        let mut push = |a: &mail_parser::Addr<'_>| {
            if let Some(n) = &a.name {
                out.push(n.to_string());
            }
            if let Some(x) = &a.address {
                out.push(x.to_string());
            }
        };
        match addr {
            Some(Address::List(l)) => l.iter().for_each(&mut push),
            Some(Address::Group(g)) => {
                for grp in g {
                    grp.addresses.iter().for_each(&mut push);
                }
            }
            None => {}
        }
        out
    }

    /// The Date header as (year, month, day), for SENTBEFORE/SENTON/SENTSINCE.
    pub fn sent_date(&self) -> Option<(u16, u8, u8)> {
        let d = self.msg.get()?.date()?;
        Some((d.year, d.month, d.day))
    }
}

fn select_text(header: &[u8], body: &[u8], t: &SectionText, mime: &[u8]) -> Vec<u8> {
    match t {
        SectionText::Header => header.to_vec(),
        SectionText::Text => body.to_vec(),
        SectionText::Mime => mime.to_vec(),
        SectionText::Fields(names) => header_fields(header, names, true),
        SectionText::FieldsNot(names) => header_fields(header, names, false),
    }
}

/// Split a header block into whole fields (with their folded lines and line ends).
fn fields(header: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = None;
    let mut i = 0;
    while i < header.len() {
        let end = header[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |p| i + p + 1);
        let line = &header[i..end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !continuation {
            if let Some(s) = start {
                out.push(&header[s..i]);
            }
            start = Some(i);
        }
        i = end;
    }
    if let Some(s) = start {
        out.push(&header[s..i]);
    }
    out
}

fn field_name(field: &[u8]) -> &[u8] {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    let name = &field[..colon];
    let trimmed = name
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &name[..trimmed]
}

fn header_fields(header: &[u8], names: &[String], keep: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields(header) {
        let n = field_name(f);
        let listed = names.iter().any(|x| x.as_bytes().eq_ignore_ascii_case(n));
        if listed == keep {
            out.extend_from_slice(f);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Unfolded, trimmed values of the fields named `name`.
pub fn header_values(header: &[u8], name: &str) -> Vec<String> {
    fields(header)
        .into_iter()
        .filter(|f| field_name(f).eq_ignore_ascii_case(name.as_bytes()))
        .map(|f| {
            let colon = f.iter().position(|&b| b == b':').map_or(f.len(), |p| p + 1);
            let v = String::from_utf8_lossy(&f[colon..]);
            v.replace("\r\n", "").replace('\n', "").trim().to_string()
        })
        .collect()
}

fn count_lines(body: &[u8]) -> usize {
    let n = body.iter().filter(|&&b| b == b'\n').count();
    if body.last().is_some_and(|&b| b != b'\n') {
        n + 1
    } else {
        n
    }
}

fn first_value(header: &[u8], name: &str) -> Option<String> {
    header_values(header, name).into_iter().next()
}

fn envelope_of(msg: &mail_parser::Message<'_>, header: &[u8]) -> String {
    let raw = |name: &str| nstring(first_value(header, name).as_deref().map(str::as_bytes));
    let from = addresses(msg.from());
    let sender = msg
        .sender()
        .map_or_else(|| from.clone(), |a| addresses(Some(a)));
    let reply_to = msg
        .reply_to()
        .map_or_else(|| from.clone(), |a| addresses(Some(a)));
    format!(
        "({} {} {} {} {} {} {} {} {} {})",
        raw("date"),
        raw("subject"),
        from,
        sender,
        reply_to,
        addresses(msg.to()),
        addresses(msg.cc()),
        addresses(msg.bcc()),
        raw("in-reply-to"),
        raw("message-id"),
    )
}

fn one_address(name: Option<&str>, addr: Option<&str>) -> String {
    let (mailbox, host) = match addr {
        Some(a) => match a.rsplit_once('@') {
            Some((l, h)) => (Some(l), Some(h)),
            None => (Some(a), None),
        },
        None => (None, None),
    };
    // An obsolete source route (`@relay:user@host`) goes in the adl field.
    let (adl, mailbox) = match mailbox {
        Some(m) if m.starts_with('@') && m.contains(':') => {
            let (route, local) = m.rsplit_once(':').unwrap_or(("", m));
            (Some(route), Some(local))
        }
        other => (None, other),
    };
    format!(
        "({} {} {} {})",
        nstring(name.map(str::as_bytes)),
        nstring(adl.map(str::as_bytes)),
        nstring(mailbox.map(str::as_bytes)),
        nstring(host.map(str::as_bytes)),
    )
}

fn addresses(a: Option<&Address<'_>>) -> String {
    let mut out = String::new();
    match a {
        None => return "NIL".into(),
        Some(Address::List(list)) => {
            for x in list {
                out.push_str(&one_address(x.name.as_deref(), x.address.as_deref()));
            }
        }
        Some(Address::Group(groups)) => {
            for g in groups {
                if let Some(name) = g.name.as_deref() {
                    // RFC 3501: a group is framed by (NIL NIL "name" NIL) ... (NIL NIL NIL NIL).
                    out.push_str(&format!("(NIL NIL {} NIL)", nstring(Some(name.as_bytes()))));
                    // A comment alone in a group is not a member.
                    for x in g.addresses.iter().filter(|x| x.address.is_some()) {
                        out.push_str(&one_address(x.name.as_deref(), x.address.as_deref()));
                    }
                    out.push_str("(NIL NIL NIL NIL)");
                } else {
                    for x in &g.addresses {
                        out.push_str(&one_address(x.name.as_deref(), x.address.as_deref()));
                    }
                }
            }
        }
    }
    if out.is_empty() {
        "NIL".into()
    } else {
        format!("({out})")
    }
}

fn params(attrs: Option<&[mail_parser::Attribute<'_>]>) -> String {
    match attrs {
        Some(a) if !a.is_empty() => {
            let inner: Vec<String> = a
                .iter()
                .map(|a| {
                    format!(
                        "{} {}",
                        quoted_or_literal(a.name.as_bytes()),
                        quoted_or_literal(a.value.as_bytes())
                    )
                })
                .collect();
            format!("({})", inner.join(" "))
        }
        _ => "NIL".into(),
    }
}

fn part_header<'p>(part: &'p MessagePart<'_>, name: &str) -> Option<&'p HeaderValue<'p>> {
    part.headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))
        .map(|h| &h.value)
}

fn text_value(v: Option<&HeaderValue<'_>>) -> Option<String> {
    match v? {
        HeaderValue::Text(t) => Some(t.to_string()),
        HeaderValue::TextList(l) => Some(l.join(" ")),
        _ => None,
    }
}

/// Disposition, language and location: the extension data both single and multipart bodies end
/// with.
fn extension_tail(at: At<'_, '_>) -> String {
    let part = at.part();
    let disposition = match part_header(part, "Content-Disposition") {
        Some(HeaderValue::ContentType(ct)) => format!(
            "({} {})",
            quoted_or_literal(ct.c_type.as_bytes()),
            params(ct.attributes.as_deref())
        ),
        _ => "NIL".into(),
    };
    let language = match text_value(part_header(part, "Content-Language")) {
        Some(l) => {
            let langs: Vec<String> = l
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(|s| quoted_or_literal(s.as_bytes()))
                .collect();
            if langs.len() == 1 {
                langs[0].clone()
            } else {
                format!("({})", langs.join(" "))
            }
        }
        None => "NIL".into(),
    };
    let location = nstring(
        first_value(at.header_bytes(), "Content-Location")
            .as_deref()
            .map(str::as_bytes),
    );
    format!("{disposition} {language} {location}")
}

/// How deep BODYSTRUCTURE describes nested parts (multiparts and encapsulated messages): below
/// this depth a part is described as one part of its declared type, its content opaque.
/// Dovecot's message parser stops at the same depth (`MESSAGE_PARSER_DEFAULT_MAX_NESTED_MIME_PARTS`,
/// 100); real mail seldom nests past ten, and the description recurses once per level (a message
/// nesting thousands of multiparts overflowed the stack and took the whole server down).
const NESTING_MAX: usize = 100;

fn structure(at: At<'_, '_>, extended: bool, depth: usize, out: &mut String) {
    let part = at.part();
    let ct = match part_header(part, "Content-Type") {
        Some(HeaderValue::ContentType(ct)) => Some(ct),
        _ => None,
    };
    let deep = depth >= NESTING_MAX;
    if let PartType::Multipart(children) = &part.body
        && !deep
    {
        out.push('(');
        for &c in children {
            structure(
                At {
                    idx: c as usize,
                    root_end: None,
                    ..at
                },
                extended,
                depth + 1,
                out,
            );
        }
        let sub = ct
            .and_then(|c| c.c_subtype.as_deref())
            .unwrap_or("mixed")
            .to_ascii_lowercase();
        out.push(' ');
        out.push_str(&quoted_or_literal(sub.as_bytes()));
        if extended {
            out.push(' ');
            out.push_str(&params(ct.and_then(|c| c.attributes.as_deref())));
            out.push(' ');
            out.push_str(&extension_tail(at));
        }
        out.push(')');
        return;
    }
    let (ty, sub) = match ct {
        Some(c) => (
            c.c_type.to_ascii_lowercase(),
            c.c_subtype
                .as_deref()
                .map(str::to_ascii_lowercase)
                .unwrap_or_else(|| "plain".into()),
        ),
        None => ("text".into(), "plain".into()),
    };
    let param_list = match ct {
        Some(c) => params(c.attributes.as_deref()),
        None => "(\"charset\" \"us-ascii\")".into(),
    };
    let header = at.header_bytes();
    let id = nstring(
        first_value(header, "Content-ID")
            .as_deref()
            .map(str::as_bytes),
    );
    let description = nstring(
        first_value(header, "Content-Description")
            .as_deref()
            .map(str::as_bytes),
    );
    let encoding = first_value(header, "Content-Transfer-Encoding")
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_else(|| "7bit".into());
    let body = at.body_bytes();
    out.push_str(&format!(
        "({} {} {} {} {} {} {}",
        quoted_or_literal(ty.as_bytes()),
        quoted_or_literal(sub.as_bytes()),
        param_list,
        id,
        description,
        quoted_or_literal(encoding.as_bytes()),
        body.len()
    ));
    if ty == "message" && sub == "rfc822" {
        match at.nested().filter(|_| !deep) {
            Some(inner) => {
                out.push(' ');
                out.push_str(&envelope_of(inner.msg, inner.header_bytes()));
                out.push(' ');
                structure(inner, extended, depth + 1, out);
            }
            None => out.push_str(
                " (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) (\"text\" \"plain\" NIL NIL NIL \"7bit\" 0 0)",
            ),
        }
        out.push_str(&format!(" {}", count_lines(body)));
    } else if ty == "text" {
        out.push_str(&format!(" {}", count_lines(body)));
    }
    if extended {
        let md5 = nstring(
            first_value(header, "Content-MD5")
                .as_deref()
                .map(str::as_bytes),
        );
        out.push_str(&format!(" {md5} {}", extension_tail(at)));
    }
    out.push(')');
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &[u8] = b"From: Bob <bob@example.test>\r\nTo: alice@example.test, \"C D\" <cd@x.test>\r\nSubject: hello\r\n there\r\nMessage-ID: <1@x>\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst part\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: inner@x.test\r\nSubject: inner\r\n\r\ninner body\r\n--b1--\r\n";

    #[test]
    fn sections_of_a_multipart_message() {
        let m = Mime::new(MULTI);
        assert_eq!(m.section(&[1], None).unwrap(), b"first part");
        assert_eq!(
            m.section(&[1], Some(&SectionText::Mime)).unwrap(),
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        );
        assert_eq!(
            m.section(&[2], Some(&SectionText::Header)).unwrap(),
            b"From: inner@x.test\r\nSubject: inner\r\n\r\n"
        );
        assert_eq!(m.section(&[2, 1], None).unwrap(), b"inner body");
        assert_eq!(
            m.section(&[], Some(&SectionText::Fields(vec!["subject".into()])))
                .unwrap(),
            b"Subject: hello\r\n there\r\n\r\n"
        );
        assert!(m.section(&[3], None).is_none());
        assert_eq!(m.header_values("subject"), ["hello there"]);
    }

    /// A message nesting thousands of multiparts, or of encapsulated messages: BODYSTRUCTURE
    /// describes the first `NESTING_MAX` levels and the rest as one opaque part (it recursed
    /// once per level and overflowed the stack of the server's thread), and the parsed message
    /// is dropped without recursion.
    #[test]
    fn deep_nesting_is_described_to_a_limit() {
        let depth = 8000;
        let mut multi = String::from("From: a@x.test\r\n");
        for i in 0..depth {
            multi.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
            ));
        }
        multi.push_str("Content-Type: text/plain\r\n\r\nhi\r\n");
        for i in (0..depth).rev() {
            multi.push_str(&format!("--b{i}--\r\n"));
        }
        // Encapsulated messages 60,000 deep: mail-parser's tree of them, dropped as it is,
        // recursed once per level and overflowed the stack too (an independent review).
        let mut encapsulated = String::new();
        for _ in 0..60_000 {
            encapsulated.push_str("From: a@x.test\r\nContent-Type: message/rfc822\r\n\r\n");
        }
        encapsulated.push_str("From: a@x.test\r\n\r\nhi\r\n");
        for (raw, kind) in [(multi, "\"multipart\""), (encapsulated, "\"message\"")] {
            // On a thread with the stack of a tokio worker (2 MiB).
            let bs = std::thread::Builder::new()
                .stack_size(2 * 1024 * 1024)
                .spawn(move || {
                    let m = Mime::new(raw.as_bytes());
                    (m.body_structure(true), m.body_structure(false))
                })
                .unwrap()
                .join()
                .unwrap();
            for s in [bs.0, bs.1] {
                let mut open = 0usize;
                let mut deepest = 0;
                for c in s.bytes() {
                    match c {
                        b'(' => open += 1,
                        b')' => open -= 1,
                        _ => {}
                    }
                    deepest = deepest.max(open);
                }
                assert_eq!(open, 0, "balanced");
                assert!(deepest > 50 && deepest < 2 * NESTING_MAX + 20, "{deepest}");
                assert!(s.contains(kind), "{}", &s[..200]);
            }
        }
    }

    #[test]
    fn envelope_and_bodystructure() {
        let m = Mime::new(MULTI);
        let env = m.envelope();
        assert!(
            env.starts_with("(NIL \"hello there\" ((\"Bob\" NIL \"bob\" \"example.test\"))"),
            "{env}"
        );
        assert!(
            env.contains("((NIL NIL \"alice\" \"example.test\")(\"C D\" NIL \"cd\" \"x.test\"))"),
            "{env}"
        );
        let bs = m.body_structure(false);
        assert!(bs.starts_with("((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 10 1)(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" "), "{bs}");
        assert!(bs.ends_with(" \"mixed\")"), "{bs}");
        let simple = Mime::new(b"Subject: x\r\n\r\nline1\r\nline2\r\n");
        assert_eq!(
            simple.body_structure(false),
            "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 14 2)"
        );
        assert_eq!(simple.section(&[1], None).unwrap(), b"line1\r\nline2\r\n");
    }
}
