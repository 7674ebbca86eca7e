//! IMAP4rev1 (RFC 3501) with IDLE (RFC 2177), LITERAL+ (RFC 7888), UNSELECT (RFC 3691) and MOVE
//! (RFC 6851).
//!
//! [`Session`] is the protocol: bytes in ([`Session::feed`]), responses out
//! ([`Session::take_output`]), and a [`Step`] telling the I/O shell what it must do next (read,
//! check a password, start TLS, wait in IDLE, close). Commands are parsed by imap-codec; the
//! mailbox state lives in [`crate::folders`]; [`crate::shell`] runs it on a socket.

use crate::folders::{self, Flags, FolderError, FolderRef, Mailstore, Message, SystemFlag};
use crate::imap_wire::{push_literal, quoted_or_literal};
use crate::mime::{Mime, SectionText};
use crate::shell::{LoginOutcome, OUTPUT_PENDING_MAX, Protocol, Step, Timeout};
use imap_codec::decode::{AuthenticateDataDecodeError, CommandDecodeError, Decoder};
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::bounded_static::IntoBoundedStatic;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{AString, LiteralMode};
use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItemName, Section,
};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::{AuthenticateDataCodec, CommandCodec};
use mailsim_smtp::sasl::{PlainRefused, sasl_plain};
use std::sync::Arc;
use std::time::Duration;

/// Limits and names of the IMAP service.
#[derive(Debug, Clone)]
pub struct ImapConfig {
    pub hostname: String,
    /// Longest command line (outside literals).
    pub line_bytes_max: usize,
    /// Largest literal (an APPENDed message).
    pub literal_bytes_max: usize,
    /// Logged in: RFC 3501 section 5.4, at least 30 minutes (before login: the shell's).
    pub idle_timeout: Duration,
    /// Failed logins before the connection is closed.
    pub auth_failures_max: u32,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            hostname: "imap.mailsim.test".into(),
            line_bytes_max: 64 * 1024,
            literal_bytes_max: 25 * 1024 * 1024,
            idle_timeout: Duration::from_secs(30 * 60),
            auth_failures_max: 3,
        }
    }
}

#[derive(Debug, Clone)]
struct View {
    uid: u32,
    flags: Flags,
    recent: bool,
}

struct Selected {
    name: String,
    folder: FolderRef,
    read_only: bool,
    view: Vec<View>,
}

enum State {
    NotAuthenticated,
    Authenticated,
    Selected(Selected),
}

enum Pending {
    None,
    /// AUTHENTICATE PLAIN waiting for the client's response line.
    AuthData(String),
    /// Credentials handed to the shell.
    AuthCheck(String),
    Idle(String),
    /// A FETCH answered a part at a time.
    Fetch(Box<FetchRest>),
    Closed,
}

/// What a FETCH still has to answer.
struct FetchRest {
    tag: String,
    /// The messages left, as indices of the session's view (which does not change while the
    /// FETCH runs: nothing else of the session does).
    indices: std::collections::VecDeque<usize>,
    items: Vec<MessageDataItemName<'static>>,
    /// Whether fetching sets \Seen.
    sets_seen: bool,
}

const FETCH_DONE: &str = "Fetch completed.";

/// One IMAP session, independent of any socket.
pub struct Session {
    cfg: Arc<ImapConfig>,
    store: Arc<Mailstore>,
    state: State,
    user: String,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    /// Input must reach this length before decoding again (a literal is being received).
    literal_until: Option<usize>,
    /// Where the last literal the server took for the command being read ends: the command
    /// goes on at least that far, whatever its bytes look like.
    command_floor: usize,
    pending: Pending,
    tls_active: bool,
    tls_available: bool,
    /// Plaintext LOGIN is allowed without TLS (loopback peers, as Dovecot does).
    plaintext_ok: bool,
    auth_failures: u32,
    /// Commands decoded so far.
    commands: u64,
}

fn ok_str(s: &AString<'_>) -> String {
    String::from_utf8_lossy(s.as_ref()).into_owned()
}

fn mailbox_name(m: &Mailbox<'_>) -> String {
    match m {
        Mailbox::Inbox => "INBOX".into(),
        Mailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).into_owned(),
    }
}

fn list_pattern(m: &ListMailbox<'_>) -> String {
    match m {
        ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
        ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
    }
}

/// LIST wildcard matching: `*` matches anything, `%` anything but the separator.
///
/// Iterative and bounded: runs of wildcards collapse to one (`*` if the run has one, else `%`),
/// a pattern with more literal bytes than the name is refused at once, and the rest is a walk
/// of the set of pattern positions over the name, O(name x pattern) with no recursion (a
/// recursive matcher took seconds, then the stack, on a long run of `%` and `*`).
fn wildcard(pattern: &[u8], name: &[u8]) -> bool {
    let mut p: Vec<u8> = Vec::with_capacity(pattern.len().min(name.len() * 2 + 2));
    let mut literals = 0usize;
    for &c in pattern {
        match (c, p.last_mut()) {
            (b'*' | b'%', Some(last @ (b'*' | b'%'))) => {
                if c == b'*' {
                    *last = b'*';
                }
            }
            _ => {
                if c != b'*' && c != b'%' {
                    literals += 1;
                    if literals > name.len() {
                        return false;
                    }
                }
                p.push(c);
            }
        }
    }
    let sep = folders::SEPARATOR as u8;
    // reach[i]: the pattern's first i bytes can match the part of the name read so far.
    let mut reach = vec![false; p.len() + 1];
    let mut next = vec![false; p.len() + 1];
    let close = |r: &mut [bool]| {
        for i in 0..p.len() {
            if r[i] && (p[i] == b'*' || p[i] == b'%') {
                r[i + 1] = true;
            }
        }
    };
    reach[0] = true;
    close(&mut reach);
    for &c in name {
        next.iter_mut().for_each(|r| *r = false);
        let mut any = false;
        for i in 0..p.len() {
            if !reach[i] {
                continue;
            }
            match p[i] {
                b'*' => next[i] = true,
                b'%' if c != sep => next[i] = true,
                b'%' => continue,
                lit if lit == c => next[i + 1] = true,
                _ => continue,
            }
            any = true;
        }
        if !any {
            return false;
        }
        close(&mut next);
        std::mem::swap(&mut reach, &mut next);
    }
    reach[p.len()]
}

fn flag_name(f: &Flag<'_>) -> Option<String> {
    Some(match f {
        Flag::Answered => "\\Answered".into(),
        Flag::Deleted => "\\Deleted".into(),
        Flag::Draft => "\\Draft".into(),
        Flag::Flagged => "\\Flagged".into(),
        Flag::Seen => "\\Seen".into(),
        Flag::Keyword(k) => k.inner().to_string(),
        Flag::Extension(_) => return None,
    })
}

fn internal_date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("\"%d-%b-%Y %H:%M:%S +0000\"")
        .to_string()
}

fn date_of(ms: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .date_naive()
}

fn section_label(s: &Section<'_>) -> (Vec<u32>, Option<SectionText>, String) {
    use imap_codec::imap_types::fetch::Part;
    let path = |p: &Part| -> Vec<u32> { p.0.as_ref().iter().map(|n| n.get()).collect() };
    let dotted =
        |v: &[u32]| -> String { v.iter().map(u32::to_string).collect::<Vec<_>>().join(".") };
    let names = |list: &imap_codec::imap_types::core::NonEmptyVec<AString<'_>>| -> Vec<String> {
        list.as_ref().iter().map(ok_str).collect()
    };
    let prefixed = |p: &Option<Part>, what: &str| -> (Vec<u32>, String) {
        match p {
            Some(p) => {
                let v = path(p);
                let l = format!("{}.{what}", dotted(&v));
                (v, l)
            }
            None => (vec![], what.to_string()),
        }
    };
    match s {
        Section::Part(p) => {
            let v = path(p);
            let l = dotted(&v);
            (v, None, l)
        }
        Section::Header(p) => {
            let (v, l) = prefixed(p, "HEADER");
            (v, Some(SectionText::Header), l)
        }
        Section::Text(p) => {
            let (v, l) = prefixed(p, "TEXT");
            (v, Some(SectionText::Text), l)
        }
        Section::Mime(p) => {
            let v = path(p);
            let l = format!("{}.MIME", dotted(&v));
            (v, Some(SectionText::Mime), l)
        }
        Section::HeaderFields(p, list) => {
            let n = names(list);
            let (v, l) = prefixed(p, &format!("HEADER.FIELDS ({})", n.join(" ")));
            (v, Some(SectionText::Fields(n)), l)
        }
        Section::HeaderFieldsNot(p, list) => {
            let n = names(list);
            let (v, l) = prefixed(p, &format!("HEADER.FIELDS.NOT ({})", n.join(" ")));
            (v, Some(SectionText::FieldsNot(n)), l)
        }
    }
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Resolve a sequence set against the session's view: indices into it, ascending.
fn resolve(set: &SequenceSet, view: &[View], uid: bool) -> Result<Vec<usize>, &'static str> {
    let mut out = Vec::new();
    if uid {
        let star = view.last().map_or(0, |v| v.uid);
        let val = |s: &SeqOrUid| match s {
            SeqOrUid::Value(n) => n.get(),
            SeqOrUid::Asterisk => star,
        };
        for seq in set.0.as_ref() {
            let (lo, hi) = match seq {
                Sequence::Single(s) => (val(s), val(s)),
                Sequence::Range(a, b) => (val(a).min(val(b)), val(a).max(val(b))),
            };
            let start = view.partition_point(|v| v.uid < lo);
            let end = view.partition_point(|v| v.uid <= hi);
            out.extend(start..end);
        }
    } else {
        let max = view.len() as u32;
        let val = |s: &SeqOrUid| -> Result<u32, &'static str> {
            let n = match s {
                SeqOrUid::Value(n) => n.get(),
                SeqOrUid::Asterisk => max,
            };
            if n == 0 || n > max {
                Err("Invalid messageset")
            } else {
                Ok(n)
            }
        };
        for seq in set.0.as_ref() {
            let (lo, hi) = match seq {
                Sequence::Single(s) => (val(s)?, val(s)?),
                Sequence::Range(a, b) => {
                    let (a, b) = (val(a)?, val(b)?);
                    (a.min(b), a.max(b))
                }
            };
            out.extend((lo - 1) as usize..hi as usize);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// A message as SEARCH sees it.
struct Candidate<'m> {
    seq: u32,
    max_seq: u32,
    view: &'m View,
    meta: &'m Message,
    max_uid: u32,
    /// The parsed message, when the search looks at content (parsed once for all its keys).
    mime: Option<&'m Mime<'m>>,
}

/// Does the search look at headers or text (so that each message must be read and parsed)?
fn needs_content(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().any(needs_content),
        SearchKey::Or(a, b) => needs_content(a) || needs_content(b),
        SearchKey::Not(k) => needs_content(k),
        SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_)
        | SearchKey::Bcc(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::To(_)
        | SearchKey::Subject(_)
        | SearchKey::Header(..)
        | SearchKey::Body(_)
        | SearchKey::Text(_) => true,
        _ => false,
    }
}

impl Candidate<'_> {
    fn in_set(set: &SequenceSet, n: u32, max: u32) -> bool {
        let val = |s: &SeqOrUid| match s {
            SeqOrUid::Value(v) => v.get(),
            SeqOrUid::Asterisk => max,
        };
        set.0.as_ref().iter().any(|seq| match seq {
            Sequence::Single(s) => val(s) == n,
            Sequence::Range(a, b) => {
                let (a, b) = (val(a), val(b));
                a.min(b) <= n && n <= a.max(b)
            }
        })
    }

    /// An address header contains `value`: in its raw text or in a parsed address (so that
    /// comments and display-name quoting do not hide a match).
    fn header_has(&self, name: &str, value: &[u8]) -> bool {
        let Some(mime) = self.mime else { return false };
        mime.header_values(name)
            .iter()
            .chain(mime.address_texts(name).iter())
            .any(|v| contains_ci(v.as_bytes(), value))
    }

    fn matches(&self, key: &SearchKey<'_>) -> bool {
        let f = &self.view.flags;
        match key {
            SearchKey::And(keys) => keys.as_ref().iter().all(|k| self.matches(k)),
            SearchKey::Or(a, b) => self.matches(a) || self.matches(b),
            SearchKey::Not(k) => !self.matches(k),
            SearchKey::All => true,
            SearchKey::SequenceSet(set) => Self::in_set(set, self.seq, self.max_seq),
            SearchKey::Uid(set) => Self::in_set(set, self.view.uid, self.max_uid),
            SearchKey::Answered => f.has(SystemFlag::Answered),
            SearchKey::Unanswered => !f.has(SystemFlag::Answered),
            SearchKey::Deleted => f.has(SystemFlag::Deleted),
            SearchKey::Undeleted => !f.has(SystemFlag::Deleted),
            SearchKey::Draft => f.has(SystemFlag::Draft),
            SearchKey::Undraft => !f.has(SystemFlag::Draft),
            SearchKey::Flagged => f.has(SystemFlag::Flagged),
            SearchKey::Unflagged => !f.has(SystemFlag::Flagged),
            SearchKey::Seen => f.has(SystemFlag::Seen),
            SearchKey::Unseen => !f.has(SystemFlag::Seen),
            SearchKey::Keyword(k) => f.has_keyword(k.inner()),
            SearchKey::Unkeyword(k) => !f.has_keyword(k.inner()),
            SearchKey::Recent => self.view.recent,
            SearchKey::Old => !self.view.recent,
            SearchKey::New => self.view.recent && !f.has(SystemFlag::Seen),
            SearchKey::Larger(n) => self.meta.size > u64::from(*n),
            SearchKey::Smaller(n) => self.meta.size < u64::from(*n),
            SearchKey::Before(d) => date_of(self.meta.internal_ms) < *d.as_ref(),
            SearchKey::On(d) => date_of(self.meta.internal_ms) == *d.as_ref(),
            SearchKey::Since(d) => date_of(self.meta.internal_ms) >= *d.as_ref(),
            SearchKey::SentBefore(d) | SearchKey::SentOn(d) | SearchKey::SentSince(d) => {
                let sent = self.mime.and_then(Mime::sent_date).and_then(|(y, m, dd)| {
                    chrono::NaiveDate::from_ymd_opt(i32::from(y), u32::from(m), u32::from(dd))
                });
                let Some(sent) = sent else { return false };
                match key {
                    SearchKey::SentBefore(_) => sent < *d.as_ref(),
                    SearchKey::SentOn(_) => sent == *d.as_ref(),
                    _ => sent >= *d.as_ref(),
                }
            }
            SearchKey::Bcc(v) => self.header_has("bcc", v.as_ref()),
            SearchKey::Cc(v) => self.header_has("cc", v.as_ref()),
            SearchKey::From(v) => self.header_has("from", v.as_ref()),
            SearchKey::To(v) => self.header_has("to", v.as_ref()),
            SearchKey::Subject(v) => {
                let Some(mime) = self.mime else { return false };
                mime.header_values("subject")
                    .iter()
                    .any(|x| contains_ci(x.as_bytes(), v.as_ref()))
            }
            SearchKey::Header(name, v) => {
                let name = ok_str(name);
                let Some(mime) = self.mime else { return false };
                let values = mime.header_values(&name);
                !values.is_empty() && values.iter().any(|x| contains_ci(x.as_bytes(), v.as_ref()))
            }
            SearchKey::Body(v) => self
                .mime
                .is_some_and(|m| contains_ci(m.text_bytes(), v.as_ref())),
            SearchKey::Text(v) => self.mime.is_some_and(|m| contains_ci(m.raw(), v.as_ref())),
        }
    }
}

impl Session {
    pub fn new(
        cfg: Arc<ImapConfig>,
        store: Arc<Mailstore>,
        tls_available: bool,
        plaintext_ok: bool,
    ) -> Self {
        let mut s = Session {
            cfg,
            store,
            state: State::NotAuthenticated,
            user: String::new(),
            inbuf: Vec::new(),
            out: Vec::new(),
            literal_until: None,
            command_floor: 0,
            pending: Pending::None,
            tls_active: false,
            tls_available,
            plaintext_ok,
            auth_failures: 0,
            commands: 0,
        };
        let caps = s.capabilities();
        s.line(&format!(
            "* OK [CAPABILITY {caps}] {} mailsim IMAP ready.",
            s.cfg.hostname
        ));
        s
    }

    fn capabilities(&self) -> String {
        let mut caps = vec!["IMAP4rev1", "LITERAL+", "IDLE", "UNSELECT", "MOVE"];
        if self.tls_available && !self.tls_active {
            caps.push("STARTTLS");
        }
        if self.login_allowed() {
            caps.push("AUTH=PLAIN");
        } else {
            caps.push("LOGINDISABLED");
        }
        caps.join(" ")
    }

    fn login_allowed(&self) -> bool {
        self.tls_active || self.plaintext_ok
    }

    fn line(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }
}

impl Protocol for Session {
    fn feed(&mut self, bytes: &[u8]) {
        self.inbuf.extend_from_slice(bytes);
    }

    fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    fn tls_started(&mut self) {
        self.tls_active = true;
    }

    fn idle_timeout(&self) -> Duration {
        self.cfg.idle_timeout
    }

    fn idle_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match &self.state {
            State::Selected(sel) => Some(folders::lock(&sel.folder).changes.subscribe()),
            _ => None,
        }
    }

    fn auth_done(&mut self, outcome: LoginOutcome) {
        let Pending::AuthCheck(tag) = std::mem::replace(&mut self.pending, Pending::None) else {
            return;
        };
        match outcome {
            LoginOutcome::Accepted(u) => {
                self.user = u;
                self.state = State::Authenticated;
                let caps = self.capabilities();
                self.line(&format!("{tag} OK [CAPABILITY {caps}] Logged in"));
            }
            LoginOutcome::Rejected => {
                self.auth_failures += 1;
                self.line(&format!(
                    "{tag} NO [AUTHENTICATIONFAILED] Authentication failed."
                ));
                if self.auth_failures >= self.cfg.auth_failures_max {
                    self.line("* BYE Too many failed logins.");
                    self.pending = Pending::Closed;
                }
            }
            LoginOutcome::Throttled => {
                self.line(&format!(
                    "{tag} NO [UNAVAILABLE] Too many failed logins from your address, try again later."
                ));
                self.line("* BYE Too many failed logins.");
                self.pending = Pending::Closed;
            }
        }
    }

    fn authenticated(&self) -> bool {
        !matches!(self.state, State::NotAuthenticated)
    }

    fn partial_command(&self) -> Option<u64> {
        let waiting_for_sasl = matches!(self.pending, Pending::AuthData(_));
        (!self.inbuf.is_empty() || waiting_for_sasl).then_some(self.commands)
    }

    fn timed_out(&mut self, why: Timeout) {
        self.line(match why {
            Timeout::Idle => "* BYE Autologout; idle for too long.",
            Timeout::Command => "* BYE Autologout; command not completed in time.",
            Timeout::Login => "* BYE Autologout; not logged in in time.",
        });
        self.pending = Pending::Closed;
    }

    fn idle_poll(&mut self) {
        if matches!(self.pending, Pending::Idle(_)) {
            self.sync(true);
        }
    }

    fn step(&mut self) -> Step {
        loop {
            match &self.pending {
                Pending::Closed => return Step::Close,
                Pending::AuthCheck(_) => return Step::NeedInput,
                Pending::Fetch(_) if self.out.len() >= OUTPUT_PENDING_MAX => return Step::Flush,
                Pending::Fetch(_) => {
                    let Pending::Fetch(mut rest) =
                        std::mem::replace(&mut self.pending, Pending::None)
                    else {
                        unreachable!("matched as a FETCH")
                    };
                    match self.fetch_more(&mut rest) {
                        Ok(false) => self.pending = Pending::Fetch(rest),
                        done => {
                            if matches!(self.state, State::Selected(_)) {
                                self.sync(false);
                            }
                            match done {
                                Err(text) => self.line(&format!("{} {text}", rest.tag)),
                                _ => self.line(&format!("{} OK {FETCH_DONE}", rest.tag)),
                            }
                        }
                    }
                    continue;
                }
                _ => {}
            }
            if let Some(until) = self.literal_until {
                if self.inbuf.len() < until {
                    return Step::NeedInput;
                }
                self.literal_until = None;
            }
            if let Pending::Idle(tag) = &self.pending {
                let Some(end) = self.inbuf.iter().position(|&b| b == b'\n') else {
                    return self.need_line().unwrap_or(Step::Idle);
                };
                let line: Vec<u8> = self.inbuf.drain(..=end).collect();
                let tag = tag.clone();
                self.pending = Pending::None;
                if line.trim_ascii().eq_ignore_ascii_case(b"DONE") {
                    self.sync(true);
                    self.line(&format!("{tag} OK Idle completed."));
                } else {
                    self.line(&format!("{tag} BAD Expected DONE."));
                }
                continue;
            }
            if let Pending::AuthData(tag) = &self.pending {
                let tag = tag.clone();
                let buf = std::mem::take(&mut self.inbuf);
                match AuthenticateDataCodec::default().decode(&buf) {
                    Ok((rest, data)) => {
                        self.inbuf = rest.to_vec();
                        self.pending = Pending::None;
                        let decoded = data.0.declassify().clone();
                        if let Some(step) = self.begin_plain(&tag, &decoded) {
                            return step;
                        }
                        continue;
                    }
                    Err(AuthenticateDataDecodeError::Incomplete) => {
                        self.inbuf = buf;
                        return self.need_line().unwrap_or(Step::NeedInput);
                    }
                    Err(AuthenticateDataDecodeError::Failed) => {
                        let end = buf
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(buf.len(), |p| p + 1);
                        self.inbuf = buf[end..].to_vec();
                        self.pending = Pending::None;
                        let cancelled = buf[..end].trim_ascii() == b"*";
                        self.line(&format!(
                            "{tag} BAD {}",
                            if cancelled {
                                "Authentication aborted by client."
                            } else {
                                "Invalid base64 data."
                            }
                        ));
                        continue;
                    }
                }
            }
            if self.inbuf.is_empty() {
                return Step::NeedInput;
            }
            if self.out.len() >= OUTPUT_PENDING_MAX {
                return Step::Flush;
            }
            let buf = std::mem::take(&mut self.inbuf);
            let result = CommandCodec::default().decode(&buf);
            match result {
                Ok((rest, cmd)) => {
                    let consumed = buf.len() - rest.len();
                    self.command_floor = 0;
                    self.commands += 1;
                    let step = self.command(cmd);
                    // Anything pipelined after STARTTLS came in clear, before the handshake:
                    // dropped, never run as if it had come over TLS (RFC 3501 section 6.2.1;
                    // the class of CVE-2011-0411).
                    if step != Some(Step::StartTls) {
                        self.inbuf = buf[consumed..].to_vec();
                    }
                    if let Some(step) = step {
                        return step;
                    }
                }
                Err(CommandDecodeError::Incomplete) => {
                    // Non-synchronising literals (RFC 7888) the client sent on without waiting
                    // (the decoder finds a literal only when the buffer ends right after its
                    // announcement): taken within the literal limits, not counted as the line.
                    match self.nonsync_literals_end(&buf) {
                        Some(end) => {
                            if end > buf.len() {
                                self.literal_until = Some(end);
                            }
                            self.command_floor = end;
                        }
                        None => {
                            self.line("* BYE Literal too big.");
                            return Step::Close;
                        }
                    }
                    self.inbuf = buf;
                    return self.need_line().unwrap_or(Step::NeedInput);
                }
                Err(CommandDecodeError::LiteralFound { tag, length, mode }) => {
                    let length = length as usize;
                    if length > self.cfg.literal_bytes_max
                        || buf.len().saturating_add(length) > self.command_bytes_max()
                    {
                        if mode == LiteralMode::NonSync {
                            // The client sends the data anyway: nothing to do but close.
                            self.line("* BYE Literal too big.");
                            return Step::Close;
                        }
                        self.line(&format!("{} NO [TOOBIG] Literal too big.", tag.inner()));
                        // The client does not send the data of a refused literal; the command
                        // ends here, with the literals taken for it.
                        self.command_floor = 0;
                        continue;
                    }
                    if mode == LiteralMode::Sync {
                        self.line("+ Ready for literal data");
                    }
                    self.literal_until = Some(buf.len() + length);
                    self.command_floor = buf.len() + length;
                    self.inbuf = buf;
                    return Step::NeedInput;
                }
                Err(CommandDecodeError::Failed) => {
                    // Answer a bad command once it is complete, not before: its literals
                    // (the ones taken, and a non-synchronising one the client sends anyway)
                    // are part of it, never read as commands of their own.
                    let Some(end) = bad_command_end(&buf, self.command_floor) else {
                        self.inbuf = buf;
                        return self.need_line().unwrap_or(Step::NeedInput);
                    };
                    self.command_floor = 0;
                    let (tag, why) = refused_command(&buf[..end]);
                    self.inbuf = buf[end..].to_vec();
                    self.line(&format!("{tag} BAD {why}"));
                }
            }
        }
    }
}

/// The commands this server reads (RFC 3501 and the extensions it announces), by keyword.
const KEYWORDS: &[&str] = &[
    "APPEND",
    "AUTHENTICATE",
    "CAPABILITY",
    "CHECK",
    "CLOSE",
    "COPY",
    "CREATE",
    "DELETE",
    "EXAMINE",
    "EXPUNGE",
    "FETCH",
    "IDLE",
    "LIST",
    "LOGIN",
    "LOGOUT",
    "LSUB",
    "MOVE",
    "NOOP",
    "RENAME",
    "SEARCH",
    "SELECT",
    "STARTTLS",
    "STATUS",
    "STORE",
    "SUBSCRIBE",
    "UID",
    "UNSELECT",
    "UNSUBSCRIBE",
];

/// The tag to answer a command the decoder refused with, and what to say: which part did not
/// read (the tag, the command name, or the named command's arguments), never a bare "error".
fn refused_command(command: &[u8]) -> (String, String) {
    let line = command.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.trim_ascii().split(|&b| b == b' ');
    let printable = |w: &[u8]| !w.is_empty() && w.iter().all(|b| b.is_ascii_graphic());
    // RFC 3501 section 9: a tag is ASTRING-CHARs except "+".
    let tag = words
        .next()
        .filter(|t| printable(t) && !t.iter().any(|b| b"(){%*\"\\+".contains(b)) && t.len() <= 64);
    let Some(tag) = tag else {
        return ("*".into(), "Missing or invalid tag.".into());
    };
    let tag = String::from_utf8_lossy(tag).into_owned();
    let why = match words.next().filter(|w| printable(w)) {
        None => "Missing command name after the tag.".into(),
        Some(word) => {
            let mut name = String::from_utf8_lossy(&word[..word.len().min(32)]).into_owned();
            name.make_ascii_uppercase();
            // UID's arguments start with the command it applies to.
            let applied = (name == "UID")
                .then(|| words.next().filter(|w| printable(w)))
                .flatten()
                .map(|w| String::from_utf8_lossy(&w[..w.len().min(32)]).to_ascii_uppercase());
            if !KEYWORDS.contains(&name.as_str()) {
                format!("Unknown command {name}.")
            } else if let Some(applied) = applied {
                format!("Invalid arguments to UID {applied}.")
            } else {
                format!("Invalid arguments to {name}.")
            }
        }
    };
    (tag, why)
}

/// The length of the non-synchronising literal (`{N+}`, RFC 7888) a line announces at its end.
fn nonsync_literal(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.strip_suffix(b"+}")
        .and_then(|l| l.iter().rposition(|&b| b == b'{').map(|i| &l[i + 1..]))
        .filter(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit))
        .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
}

/// Where a command the decoder refused ends: the end of the line that holds its last byte
/// read, reading on from `floor` (the end of the last literal the server took for it) and
/// past every non-synchronising literal (`{N+}`, RFC 7888) a line ends with, whose bytes the
/// client sends without waiting. None while the command is not all there yet. (A
/// synchronising literal the refused line announces is not sent: the client waits for a
/// continuation it never gets, RFC 3501 section 7.5.)
fn bad_command_end(buf: &[u8], floor: usize) -> Option<usize> {
    let mut from = floor;
    loop {
        let nl = from + buf.get(from..)?.iter().position(|&b| b == b'\n')?;
        match nonsync_literal(&buf[from..nl]) {
            Some(n) => from = (nl + 1).checked_add(n)?,
            None => return Some(nl + 1),
        }
    }
}

impl Session {
    /// How many bytes one command may hold with its literals: before login, a line's worth
    /// (LOGIN's and AUTHENTICATE's arguments are short; nothing else is run), after it, the
    /// biggest literal (an APPEND) and a line. Each literal is held until its command ends.
    fn command_bytes_max(&self) -> usize {
        if self.authenticated() {
            self.cfg
                .literal_bytes_max
                .saturating_add(self.cfg.line_bytes_max)
        } else {
            self.cfg.line_bytes_max
        }
    }

    /// Where the command being read stands once the non-synchronising literals announced at
    /// the ends of its lines (from the last literal taken) are taken: the end of the last one
    /// (past the buffer while its bytes are still coming). None when one is bigger than a
    /// literal may be, or the command with them bigger than a command may be.
    fn nonsync_literals_end(&self, buf: &[u8]) -> Option<usize> {
        let mut from = self.command_floor;
        while let Some(p) = buf
            .get(from..)
            .and_then(|b| b.iter().position(|&c| c == b'\n'))
        {
            let nl = from + p;
            let Some(n) = nonsync_literal(&buf[from..nl]) else {
                break;
            };
            from = (nl + 1).saturating_add(n);
            if n > self.cfg.literal_bytes_max || from > self.command_bytes_max() {
                return None;
            }
        }
        Some(from)
    }

    /// A line longer than the limit ends the session.
    fn need_line(&mut self) -> Option<Step> {
        // The literals taken for the command being read count against their own limit.
        if self.inbuf.len().saturating_sub(self.command_floor) > self.cfg.line_bytes_max {
            self.command_floor = 0;
            self.inbuf.clear();
            self.line("* BYE Line too long.");
            return Some(Step::Close);
        }
        None
    }

    fn begin_plain(&mut self, tag: &str, decoded: &[u8]) -> Option<Step> {
        let refused = match sasl_plain(decoded) {
            Ok((login, password)) => {
                self.pending = Pending::AuthCheck(tag.to_string());
                return Some(Step::Authenticate { login, password });
            }
            Err(PlainRefused::Malformed) => "Invalid PLAIN response.",
            Err(PlainRefused::ActingAsAnother) => "Acting as another user is not permitted.",
        };
        self.line(&format!("{tag} NO [AUTHENTICATIONFAILED] {refused}"));
        None
    }

    fn command(&mut self, cmd: Command<'_>) -> Option<Step> {
        let tag = cmd.tag.inner().to_string();
        let selected = matches!(self.state, State::Selected(_));
        let authed = !matches!(self.state, State::NotAuthenticated);
        // EXPUNGE responses are not allowed while answering FETCH, STORE, SEARCH or COPY
        // (RFC 3501 section 7.4.1): their sequence numbers would shift under the client.
        let mut expunge_ok = true;
        let result: Result<String, String> = match cmd.body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.line(&format!("* CAPABILITY {caps}"));
                Ok("Capability completed.".into())
            }
            CommandBody::Noop => Ok("NOOP completed.".into()),
            CommandBody::Logout => {
                self.line("* BYE Logging out.");
                self.line(&format!("{tag} OK Logout completed."));
                self.pending = Pending::Closed;
                return Some(Step::Close);
            }
            CommandBody::StartTLS => {
                if !self.tls_available || self.tls_active {
                    Err("BAD STARTTLS not available.".into())
                } else if authed {
                    Err("BAD STARTTLS only before login.".into())
                } else {
                    self.line(&format!("{tag} OK Begin TLS negotiation now."));
                    return Some(Step::StartTls);
                }
            }
            CommandBody::Login { username, password } if !authed => {
                if !self.login_allowed() {
                    Err("NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections.".into())
                } else {
                    self.pending = Pending::AuthCheck(tag);
                    return Some(Step::Authenticate {
                        login: ok_str(&username),
                        password: password.declassify().as_ref().to_vec(),
                    });
                }
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } if !authed => {
                if !self.login_allowed() {
                    Err("NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections.".into())
                } else if mechanism != AuthMechanism::Plain {
                    Err("NO Unsupported authentication mechanism.".into())
                } else if let Some(ir) = initial_response {
                    let decoded = ir.declassify().to_vec();
                    return self.begin_plain(&tag, &decoded);
                } else {
                    self.line("+ ");
                    self.pending = Pending::AuthData(tag);
                    return None;
                }
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } => {
                Err("BAD Already logged in.".into())
            }
            _ if !authed => Err("BAD Please log in first.".into()),
            CommandBody::Select { mailbox } => self.select(&mailbox_name(&mailbox), false),
            CommandBody::Examine { mailbox } => self.select(&mailbox_name(&mailbox), true),
            CommandBody::Create { mailbox } => self
                .store
                .create(&self.user, &mailbox_name(&mailbox))
                .map(|()| "Create completed.".into())
                .map_err(no),
            CommandBody::Delete { mailbox } => {
                let name = mailbox_name(&mailbox);
                if let State::Selected(s) = &self.state
                    && s.name == name
                {
                    self.state = State::Authenticated;
                }
                self.store
                    .delete(&self.user, &name)
                    .map(|()| "Delete completed.".into())
                    .map_err(no)
            }
            CommandBody::Rename { from, to } => self
                .store
                .rename(&self.user, &mailbox_name(&from), &mailbox_name(&to))
                .map(|()| "Rename completed.".into())
                .map_err(no),
            CommandBody::Subscribe { mailbox } => self
                .store
                .set_subscribed(&self.user, &mailbox_name(&mailbox), true)
                .map(|()| "Subscribe completed.".into())
                .map_err(no),
            CommandBody::Unsubscribe { mailbox } => self
                .store
                .set_subscribed(&self.user, &mailbox_name(&mailbox), false)
                .map(|()| "Unsubscribe completed.".into())
                .map_err(no),
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => {
                self.list(
                    &mailbox_name(&reference),
                    &list_pattern(&mailbox_wildcard),
                    false,
                );
                Ok("List completed.".into())
            }
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => {
                self.list(
                    &mailbox_name(&reference),
                    &list_pattern(&mailbox_wildcard),
                    true,
                );
                Ok("Lsub completed.".into())
            }
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(&mailbox_name(&mailbox), &item_names),
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let mut f = Flags::default();
                for fl in &flags {
                    if let Some(n) = flag_name(fl) {
                        f.insert_name(&n);
                    }
                }
                let ms = date.map_or_else(
                    || self.store.clock().now_ms() as i64,
                    |d| d.as_ref().timestamp_millis(),
                );
                self.append(&mailbox_name(&mailbox), message.data(), f, ms)
            }
            CommandBody::Idle => {
                self.line("+ idling");
                self.pending = Pending::Idle(tag);
                if selected {
                    self.sync(true);
                }
                return Some(Step::Idle);
            }
            _ if !selected => Err("BAD No mailbox selected.".into()),
            CommandBody::Check => Ok("Check completed.".into()),
            CommandBody::Close | CommandBody::Unselect => {
                let close = matches!(cmd.body, CommandBody::Close);
                if let State::Selected(s) = std::mem::replace(&mut self.state, State::Authenticated)
                    && close
                    && !s.read_only
                {
                    let mut f = folders::lock(&s.folder);
                    let _ = f.expunge_where(|m| m.flags.has(SystemFlag::Deleted));
                }
                self.line(&format!(
                    "{tag} OK {} completed.",
                    if close { "Close" } else { "Unselect" }
                ));
                return None;
            }
            CommandBody::Expunge => self.expunge(),
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                expunge_ok = false;
                let cs = charset.map(|c| c.as_ref().to_ascii_uppercase());
                if cs
                    .as_deref()
                    .is_some_and(|c| c != "UTF-8" && c != "US-ASCII")
                {
                    Err("NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset.".into())
                } else {
                    self.search(&criteria, uid)
                }
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
            } => {
                expunge_ok = false;
                match self.fetch(&tag, &sequence_set, macro_or_item_names, uid) {
                    Ok(Some(rest)) => {
                        // Answered on as the output is sent; the tagged answer comes last.
                        self.pending = Pending::Fetch(rest);
                        return Some(Step::Flush);
                    }
                    Ok(None) => Ok(FETCH_DONE.into()),
                    Err(e) => Err(e),
                }
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
            } => {
                expunge_ok = false;
                self.store_flags(&sequence_set, kind, response, &flags, uid)
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => {
                expunge_ok = false;
                self.copy(&sequence_set, &mailbox_name(&mailbox), uid, false)
            }
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&sequence_set, &mailbox_name(&mailbox), uid, true),
            _ => Err("BAD Command not supported.".into()),
        };
        if matches!(self.state, State::Selected(_)) {
            self.sync(expunge_ok);
        }
        match result {
            Ok(text) => self.line(&format!("{tag} OK {text}")),
            Err(text) if text.starts_with("BAD ") || text.starts_with("NO ") => {
                self.line(&format!("{tag} {text}"))
            }
            Err(text) => self.line(&format!("{tag} NO {text}")),
        }
        None
    }

    fn select(&mut self, name: &str, read_only: bool) -> Result<String, String> {
        // A failed SELECT leaves no mailbox selected (RFC 3501 section 6.3.1).
        self.state = State::Authenticated;
        let folder = self.store.folder(&self.user, name).map_err(no)?;
        let (view, uidvalidity, uidnext, keywords) = {
            let mut f = folders::lock(&folder);
            f.refresh().map_err(no)?;
            let floor = if read_only {
                f.recent_floor()
            } else {
                f.claim_recent()
            };
            let view: Vec<View> = f
                .messages
                .iter()
                .map(|m| View {
                    uid: m.uid,
                    flags: m.flags.clone(),
                    recent: m.uid >= floor,
                })
                .collect();
            let mut keywords = std::collections::BTreeSet::new();
            for m in &f.messages {
                keywords.extend(m.flags.keywords.iter().cloned());
            }
            (view, f.uidvalidity, f.uidnext, keywords)
        };
        let kw: String = keywords.iter().map(|k| format!(" {k}")).collect();
        self.line(&format!(
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft{kw})"
        ));
        if read_only {
            self.line("* OK [PERMANENTFLAGS ()] Read-only mailbox.");
        } else {
            self.line(&format!(
                "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft{kw} \\*)] Flags permitted."
            ));
        }
        self.line(&format!("* {} EXISTS", view.len()));
        self.line(&format!(
            "* {} RECENT",
            view.iter().filter(|v| v.recent).count()
        ));
        if let Some(i) = view.iter().position(|v| !v.flags.has(SystemFlag::Seen)) {
            self.line(&format!("* OK [UNSEEN {}] First unseen.", i + 1));
        }
        self.line(&format!("* OK [UIDVALIDITY {uidvalidity}] UIDs valid"));
        self.line(&format!("* OK [UIDNEXT {uidnext}] Predicted next UID"));
        self.state = State::Selected(Selected {
            name: name.to_string(),
            folder,
            read_only,
            view,
        });
        Ok(if read_only {
            "[READ-ONLY] Examine completed.".into()
        } else {
            "[READ-WRITE] Select completed.".into()
        })
    }

    fn list(&mut self, reference: &str, pattern: &str, subscribed_only: bool) {
        let kind = if subscribed_only { "LSUB" } else { "LIST" };
        if pattern.is_empty() && !subscribed_only {
            self.line(&format!(
                "* LIST (\\Noselect) \"{}\" \"\"",
                folders::SEPARATOR
            ));
            return;
        }
        let full = format!("{reference}{pattern}");
        let names: Vec<String> = if subscribed_only {
            self.store.subscriptions(&self.user).into_iter().collect()
        } else {
            self.store.list(&self.user)
        };
        if subscribed_only && full.ends_with('%') {
            // A subscribed name below the level `%` reaches shows its unsubscribed parent as
            // \Noselect (RFC 3501 section 6.3.9).
            let mut parents = std::collections::BTreeSet::new();
            for name in &names {
                let parts: Vec<&str> = name.split(folders::SEPARATOR).collect();
                for depth in 1..parts.len() {
                    let parent = parts[..depth].join(&folders::SEPARATOR.to_string());
                    if !names.contains(&parent) && wildcard(full.as_bytes(), parent.as_bytes()) {
                        parents.insert(parent);
                    }
                }
            }
            for p in parents {
                let shown = quoted_or_literal(p.as_bytes());
                self.line(&format!(
                    "* LSUB (\\Noselect) \"{}\" {shown}",
                    folders::SEPARATOR
                ));
            }
        }
        for name in names {
            let matched = if folders::is_inbox(&name) {
                wildcard(full.to_ascii_uppercase().as_bytes(), b"INBOX")
            } else {
                wildcard(full.as_bytes(), name.as_bytes())
            };
            if matched {
                let shown = quoted_or_literal(name.as_bytes());
                self.line(&format!("* {kind} () \"{}\" {shown}", folders::SEPARATOR));
            }
        }
    }

    fn status(&mut self, name: &str, items: &[StatusDataItemName]) -> Result<String, String> {
        let folder = self.store.folder(&self.user, name).map_err(no)?;
        let mut parts = Vec::new();
        {
            let mut f = folders::lock(&folder);
            f.refresh().map_err(no)?;
            for item in items {
                parts.push(match item {
                    StatusDataItemName::Messages => format!("MESSAGES {}", f.messages.len()),
                    StatusDataItemName::Recent => format!(
                        "RECENT {}",
                        f.messages
                            .iter()
                            .filter(|m| m.uid >= f.recent_floor())
                            .count()
                    ),
                    StatusDataItemName::UidNext => format!("UIDNEXT {}", f.uidnext),
                    StatusDataItemName::UidValidity => format!("UIDVALIDITY {}", f.uidvalidity),
                    StatusDataItemName::Unseen => format!(
                        "UNSEEN {}",
                        f.messages
                            .iter()
                            .filter(|m| !m.flags.has(SystemFlag::Seen))
                            .count()
                    ),
                    _ => continue,
                });
            }
        }
        let shown = quoted_or_literal(name.as_bytes());
        self.line(&format!("* STATUS {shown} ({})", parts.join(" ")));
        Ok("Status completed.".into())
    }

    fn append(&mut self, name: &str, data: &[u8], flags: Flags, ms: i64) -> Result<String, String> {
        let folder = match self.store.folder(&self.user, name) {
            Ok(f) => f,
            Err(FolderError::NoSuchFolder) => {
                return Err("NO [TRYCREATE] Mailbox doesn't exist.".into());
            }
            Err(e) => return Err(no(e)),
        };
        if self.store.over_quota(&self.user, data.len() as u64) {
            return Err("NO [OVERQUOTA] Quota exceeded.".into());
        }
        let mut f = folders::lock(&folder);
        f.append(data, flags, ms).map_err(no)?;
        Ok("Append completed.".into())
    }

    /// Report what changed in the selected folder since the session last looked.
    fn sync(&mut self, expunge_ok: bool) {
        let State::Selected(sel) = &mut self.state else {
            return;
        };
        let mut lines = Vec::new();
        {
            let mut f = folders::lock(&sel.folder);
            let _ = f.refresh();
            if expunge_ok {
                let mut i = 0;
                while i < sel.view.len() {
                    if f.find(sel.view[i].uid).is_none() {
                        lines.push(format!("* {} EXPUNGE", i + 1));
                        sel.view.remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
            let last = sel.view.last().map_or(0, |v| v.uid);
            let fresh: Vec<&Message> = f.messages.iter().filter(|m| m.uid > last).collect();
            if !fresh.is_empty() {
                let fresh: Vec<(u32, Flags)> = fresh
                    .into_iter()
                    .map(|m| (m.uid, m.flags.clone()))
                    .collect();
                let floor = if sel.read_only {
                    f.recent_floor()
                } else {
                    f.claim_recent()
                };
                for (uid, flags) in fresh {
                    sel.view.push(View {
                        uid,
                        flags,
                        recent: uid >= floor,
                    });
                }
                lines.push(format!("* {} EXISTS", sel.view.len()));
                lines.push(format!(
                    "* {} RECENT",
                    sel.view.iter().filter(|v| v.recent).count()
                ));
            }
            for (i, v) in sel.view.iter_mut().enumerate() {
                if let Some(m) = f.find(v.uid)
                    && m.flags != v.flags
                {
                    v.flags = m.flags.clone();
                    lines.push(format!("* {} FETCH (FLAGS ({}))", i + 1, flag_list(v)));
                }
            }
        }
        for l in lines {
            self.line(&l);
        }
    }

    fn expunge(&mut self) -> Result<String, String> {
        let State::Selected(sel) = &self.state else {
            return Err("BAD No mailbox selected.".into());
        };
        if sel.read_only {
            return Err("NO Mailbox is read-only.".into());
        }
        let mut f = folders::lock(&sel.folder);
        f.expunge_where(|m| m.flags.has(SystemFlag::Deleted))
            .map_err(no)?;
        Ok("Expunge completed.".into())
    }

    fn search(&mut self, key: &SearchKey<'_>, uid: bool) -> Result<String, String> {
        let State::Selected(sel) = &self.state else {
            return Err("BAD No mailbox selected.".into());
        };
        let f = folders::lock(&sel.folder);
        let max_seq = sel.view.len() as u32;
        let max_uid = sel.view.last().map_or(0, |v| v.uid);
        let mut hits = Vec::new();
        let read = needs_content(key);
        for (i, v) in sel.view.iter().enumerate() {
            let Some(meta) = f.find(v.uid) else { continue };
            let content = if read {
                f.read(meta).unwrap_or_default()
            } else {
                Vec::new()
            };
            let mime = read.then(|| Mime::new(&content));
            let c = Candidate {
                seq: i as u32 + 1,
                max_seq,
                view: v,
                meta,
                max_uid,
                mime: mime.as_ref(),
            };
            if c.matches(key) {
                hits.push(if uid { v.uid } else { i as u32 + 1 });
            }
        }
        drop(f);
        let list: String = hits.iter().map(|n| format!(" {n}")).collect();
        self.line(&format!("* SEARCH{list}"));
        Ok("Search completed.".into())
    }

    /// FETCH: the answers for the first messages, and what is left when they fill the output
    /// ([`OUTPUT_PENDING_MAX`]): the rest is answered a part at a time as the shell sends the
    /// output ([`Pending::Fetch`], [`Step::Flush`]), so that a FETCH of a whole big mailbox is
    /// never held in memory at once.
    fn fetch(
        &mut self,
        tag: &str,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
    ) -> Result<Option<Box<FetchRest>>, String> {
        let State::Selected(sel) = &mut self.state else {
            return Err("BAD No mailbox selected.".into());
        };
        let mut items: Vec<MessageDataItemName<'_>> = match items {
            MacroOrMessageDataItemNames::Macro(m) => match m {
                Macro::All => Macro::All.expand(),
                Macro::Fast => Macro::Fast.expand(),
                Macro::Full => Macro::Full.expand(),
                _ => vec![MessageDataItemName::Flags],
            },
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
        };
        if uid && !items.contains(&MessageDataItemName::Uid) {
            items.insert(0, MessageDataItemName::Uid);
        }
        let indices = resolve(set, &sel.view, uid).map_err(|e| format!("BAD {e}"))?;
        let sets_seen = !sel.read_only
            && items.iter().any(|i| {
                matches!(
                    i,
                    MessageDataItemName::BodyExt { peek: false, .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Text
                )
            });
        let mut rest = Box::new(FetchRest {
            tag: tag.to_string(),
            indices: indices.into(),
            items: items
                .into_iter()
                .map(IntoBoundedStatic::into_static)
                .collect(),
            sets_seen,
        });
        Ok((!self.fetch_more(&mut rest)?).then_some(rest))
    }

    /// Answer FETCH for the messages `rest` has left until the output is full; true when none
    /// is left.
    fn fetch_more(&mut self, rest: &mut FetchRest) -> Result<bool, String> {
        let State::Selected(sel) = &mut self.state else {
            return Err("BAD No mailbox selected.".into());
        };
        let (items, sets_seen) = (&rest.items, rest.sets_seen);
        let mut f = folders::lock(&sel.folder);
        let mut dirty = false;
        let mut out = Vec::new();
        while self.out.len() + out.len() < OUTPUT_PENDING_MAX
            && let Some(idx) = rest.indices.pop_front()
        {
            let uid_of = sel.view[idx].uid;
            let Some(meta) = f.find(uid_of).cloned() else {
                continue;
            };
            let mut flags_changed = false;
            if sets_seen && !meta.flags.has(SystemFlag::Seen) {
                if let Some(m) = f.find_mut(uid_of) {
                    m.flags.system.insert(SystemFlag::Seen);
                    sel.view[idx].flags = m.flags.clone();
                }
                dirty = true;
                flags_changed = true;
            }
            let needs_content = items.iter().any(|i| {
                !matches!(
                    i,
                    MessageDataItemName::Flags
                        | MessageDataItemName::Uid
                        | MessageDataItemName::Rfc822Size
                        | MessageDataItemName::InternalDate
                )
            });
            let content = if needs_content {
                f.read(&meta).unwrap_or_default()
            } else {
                Vec::new()
            };
            let mime = Mime::new(&content);
            out.extend_from_slice(format!("* {} FETCH (", idx + 1).as_bytes());
            let mut first = true;
            let mut sep = |out: &mut Vec<u8>| {
                if !first {
                    out.push(b' ');
                }
                first = false;
            };
            let mut flags_sent = false;
            for item in items {
                sep(&mut out);
                match item {
                    MessageDataItemName::Flags => {
                        flags_sent = true;
                        out.extend_from_slice(
                            format!("FLAGS ({})", flag_list(&sel.view[idx])).as_bytes(),
                        );
                    }
                    MessageDataItemName::Uid => {
                        out.extend_from_slice(format!("UID {uid_of}").as_bytes())
                    }
                    MessageDataItemName::Rfc822Size => {
                        out.extend_from_slice(format!("RFC822.SIZE {}", meta.size).as_bytes())
                    }
                    MessageDataItemName::InternalDate => out.extend_from_slice(
                        format!("INTERNALDATE {}", internal_date(meta.internal_ms)).as_bytes(),
                    ),
                    MessageDataItemName::Envelope => {
                        out.extend_from_slice(format!("ENVELOPE {}", mime.envelope()).as_bytes())
                    }
                    MessageDataItemName::Body => out.extend_from_slice(
                        format!("BODY {}", mime.body_structure(false)).as_bytes(),
                    ),
                    MessageDataItemName::BodyStructure => out.extend_from_slice(
                        format!("BODYSTRUCTURE {}", mime.body_structure(true)).as_bytes(),
                    ),
                    MessageDataItemName::Rfc822 => {
                        out.extend_from_slice(b"RFC822 ");
                        push_literal(&mut out, &content);
                    }
                    MessageDataItemName::Rfc822Header => {
                        out.extend_from_slice(b"RFC822.HEADER ");
                        push_literal(&mut out, mime.header_bytes());
                    }
                    MessageDataItemName::Rfc822Text => {
                        out.extend_from_slice(b"RFC822.TEXT ");
                        push_literal(&mut out, mime.text_bytes());
                    }
                    MessageDataItemName::BodyExt {
                        section, partial, ..
                    } => {
                        let (path, text, label) = match section {
                            Some(s) => section_label(s),
                            None => (vec![], None, String::new()),
                        };
                        let bytes = mime.section(&path, text.as_ref());
                        match (bytes, partial) {
                            (None, _) => {
                                out.extend_from_slice(format!("BODY[{label}] NIL").as_bytes())
                            }
                            (Some(b), None) => {
                                out.extend_from_slice(format!("BODY[{label}] ").as_bytes());
                                push_literal(&mut out, &b);
                            }
                            (Some(b), Some((start, len))) => {
                                let s = (*start as usize).min(b.len());
                                let e = s.saturating_add(len.get() as usize).min(b.len());
                                out.extend_from_slice(
                                    format!("BODY[{label}]<{start}> ").as_bytes(),
                                );
                                push_literal(&mut out, &b[s..e]);
                            }
                        }
                    }
                }
            }
            if flags_changed && !flags_sent {
                sep(&mut out);
                out.extend_from_slice(format!("FLAGS ({})", flag_list(&sel.view[idx])).as_bytes());
            }
            out.extend_from_slice(b")\r\n");
        }
        if dirty {
            f.write_index().map_err(no)?;
            f.changed();
        }
        drop(f);
        self.out.extend_from_slice(&out);
        Ok(rest.indices.is_empty())
    }

    fn store_flags(
        &mut self,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
    ) -> Result<String, String> {
        let State::Selected(sel) = &mut self.state else {
            return Err("BAD No mailbox selected.".into());
        };
        if sel.read_only {
            return Err("NO Mailbox is read-only.".into());
        }
        let indices = resolve(set, &sel.view, uid).map_err(|e| format!("BAD {e}"))?;
        let names: Vec<String> = flags.iter().filter_map(flag_name).collect();
        let mut f = folders::lock(&sel.folder);
        let mut lines = Vec::new();
        for idx in indices {
            let u = sel.view[idx].uid;
            let Some(m) = f.find_mut(u) else { continue };
            match kind {
                StoreType::Replace => {
                    m.flags = Flags::default();
                    for n in &names {
                        m.flags.insert_name(n);
                    }
                }
                StoreType::Add => names.iter().for_each(|n| m.flags.insert_name(n)),
                StoreType::Remove => names.iter().for_each(|n| m.flags.remove_name(n)),
            }
            sel.view[idx].flags = m.flags.clone();
            if response == StoreResponse::Answer {
                let uid_part = if uid {
                    format!("UID {u} ")
                } else {
                    String::new()
                };
                lines.push(format!(
                    "* {} FETCH ({uid_part}FLAGS ({}))",
                    idx + 1,
                    flag_list(&sel.view[idx])
                ));
            }
        }
        f.write_index().map_err(no)?;
        f.changed();
        drop(f);
        for l in lines {
            self.line(&l);
        }
        Ok("Store completed.".into())
    }

    fn copy(
        &mut self,
        set: &SequenceSet,
        dest: &str,
        uid: bool,
        remove: bool,
    ) -> Result<String, String> {
        let user = self.user.clone();
        let store = self.store.clone();
        let State::Selected(sel) = &mut self.state else {
            return Err("BAD No mailbox selected.".into());
        };
        if remove && sel.read_only {
            return Err("NO Mailbox is read-only.".into());
        }
        let target = match store.folder(&user, dest) {
            Ok(t) => t,
            Err(FolderError::NoSuchFolder) => {
                return Err("NO [TRYCREATE] Mailbox doesn't exist.".into());
            }
            Err(e) => return Err(no(e)),
        };
        let indices = resolve(set, &sel.view, uid).map_err(|e| format!("BAD {e}"))?;
        let same = Arc::ptr_eq(&target, &sel.folder);
        let mut moved = Vec::new();
        {
            let mut src = folders::lock(&sel.folder);
            let picked: Vec<Message> = indices
                .iter()
                .filter_map(|&i| src.find(sel.view[i].uid).cloned())
                .collect();
            let bytes: u64 = picked.iter().map(|m| m.size).sum();
            if store.over_quota(&user, bytes) {
                return Err("NO [OVERQUOTA] Quota exceeded.".into());
            }
            let mut copies = Vec::new();
            for m in &picked {
                copies.push((src.read(m).map_err(no)?, m.flags.clone(), m.internal_ms));
                moved.push(m.uid);
            }
            if same {
                for (data, flags, ms) in copies {
                    src.append(&data, flags, ms).map_err(no)?;
                }
            } else {
                let mut dst = folders::lock(&target);
                for (data, flags, ms) in copies {
                    dst.append(&data, flags, ms).map_err(no)?;
                }
            }
            if remove {
                src.expunge_where(|m| moved.contains(&m.uid)).map_err(no)?;
            }
        }
        Ok(if remove {
            "Move completed."
        } else {
            "Copy completed."
        }
        .into())
    }
}

fn flag_list(v: &View) -> String {
    let mut names = v.flags.names();
    if v.recent {
        names.push("\\Recent".into());
    }
    names.join(" ")
}

fn no(e: FolderError) -> String {
    match e {
        FolderError::NoSuchFolder => "NO Mailbox doesn't exist.".into(),
        FolderError::Exists => "NO Mailbox already exists.".into(),
        FolderError::BadName => "NO Invalid mailbox name.".into(),
        FolderError::NameTooLong => "NO [LIMIT] Mailbox name too long.".into(),
        FolderError::OverQuota => "NO [OVERQUOTA] Quota exceeded.".into(),
        other => {
            // The error may carry a path built from a client's name: log a bounded form.
            let text = other.to_string();
            let shown: String = text.chars().take(300).collect();
            tracing::error!("imap storage: {shown}");
            "NO [SERVERBUG] Internal error.".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(dir: &std::path::Path) -> Session {
        let store = Arc::new(Mailstore::new(dir, 0));
        Session::new(Arc::new(ImapConfig::default()), store, false, true)
    }

    fn run(s: &mut Session, input: &str) -> String {
        s.feed(input.as_bytes());
        loop {
            match s.step() {
                Step::Authenticate { login, password } => {
                    let ok = login == "bob" && password == b"pw";
                    s.auth_done(if ok {
                        LoginOutcome::Accepted("bob@example.test".into())
                    } else {
                        LoginOutcome::Rejected
                    });
                }
                Step::Flush => {}
                _ => break,
            }
        }
        String::from_utf8(s.take_output()).unwrap()
    }

    #[test]
    fn login_append_select_fetch_store_search_expunge() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        let greeting = String::from_utf8(s.take_output()).unwrap();
        assert!(
            greeting.starts_with("* OK [CAPABILITY IMAP4rev1"),
            "{greeting}"
        );
        assert!(run(&mut s, "a LOGIN bob wrong\r\n").contains("a NO [AUTHENTICATIONFAILED]"));
        assert!(run(&mut s, "b LOGIN bob pw\r\n").contains("b OK"));
        let r = run(&mut s, "c APPEND INBOX (\\Seen) {22}\r\n");
        assert_eq!(r, "+ Ready for literal data\r\n");
        let r = run(&mut s, "Subject: hi\r\n\r\nhello\r\n\r\n");
        assert!(r.contains("c OK"), "{r}");
        let r = run(
            &mut s,
            "d APPEND INBOX {22+}\r\nSubject: yo\r\n\r\nworld\r\n\r\n",
        );
        assert!(r.contains("d OK"), "{r}");
        let r = run(&mut s, "e SELECT INBOX\r\n");
        assert!(
            r.contains("* 2 EXISTS") && r.contains("* 2 RECENT") && r.contains("[UNSEEN 2]"),
            "{r}"
        );
        let r = run(
            &mut s,
            "f FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n",
        );
        assert!(r.contains("* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) BODY[HEADER.FIELDS (SUBJECT)] {15}\r\nSubject: hi\r\n\r\n)"), "{r}");
        let r = run(&mut s, "g FETCH 2 BODY[TEXT]\r\n");
        assert!(
            r.contains("BODY[TEXT] {7}\r\nworld\r\n FLAGS (\\Seen \\Recent))"),
            "{r}"
        );
        let r = run(&mut s, "h SEARCH SUBJECT yo\r\n");
        assert!(r.contains("* SEARCH 2\r\n"), "{r}");
        let r = run(&mut s, "i STORE 1 +FLAGS (\\Deleted)\r\nj EXPUNGE\r\n");
        assert!(r.contains("* 1 EXPUNGE") && r.contains("j OK"), "{r}");
        let r = run(&mut s, "k UID FETCH 2 (FLAGS)\r\n");
        assert!(r.contains("* 1 FETCH (UID 2 FLAGS"), "{r}");
        let r = run(&mut s, "l BOGUS\r\nm LOGOUT\r\n");
        assert!(
            r.contains("l BAD") && r.contains("* BYE") && r.contains("m OK"),
            "{r}"
        );
    }

    /// Step the session as its shell does until it needs input, each output taken as it would
    /// be sent and checked to be under `bound`; all the output, and how many flushes.
    fn drain_bounded(s: &mut Session, bound: usize) -> (String, usize) {
        let (mut all, mut flushes) = (String::new(), 0);
        loop {
            let step = s.step();
            let out = String::from_utf8(s.take_output()).unwrap();
            assert!(out.len() < bound, "{}", out.len());
            all.push_str(&out);
            match step {
                Step::Flush => flushes += 1,
                other => {
                    assert_eq!(other, Step::NeedInput);
                    return (all, flushes);
                }
            }
        }
    }

    /// Commands pipelined by a client that does not read are answered a bounded amount at a
    /// time ([`Step::Flush`] once the unsent output passes [`OUTPUT_PENDING_MAX`]): 800 FETCHes
    /// of a 1 MB message held 1.2 GB before.
    #[test]
    fn pipelined_answers_wait_for_the_output_to_be_sent() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        s.take_output();
        run(&mut s, "a LOGIN bob pw\r\n");
        let body = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(100_000));
        let r = run(
            &mut s,
            &format!(
                "b APPEND INBOX {{{}+}}\r\n{body}\r\nc SELECT INBOX\r\n",
                body.len()
            ),
        );
        assert!(r.contains("c OK"), "{r}");
        let mut pipelined = String::new();
        for i in 0..40 {
            pipelined.push_str(&format!("f{i} FETCH 1 BODY.PEEK[]\r\n"));
        }
        s.feed(pipelined.as_bytes());
        let (all, flushes) = drain_bounded(&mut s, OUTPUT_PENDING_MAX + body.len() + 200);
        assert_eq!(all.matches(" OK Fetch completed").count(), 40);
        assert!(flushes >= 10, "{flushes}");

        // One FETCH of many messages is answered a part at a time too, its tagged answer last.
        for i in 0..39 {
            let r = run(
                &mut s,
                &format!("a{i} APPEND INBOX {{{}+}}\r\n{body}\r\n", body.len()),
            );
            assert!(r.contains(&format!("a{i} OK")), "{r}");
        }
        s.feed(b"g FETCH 1:* (UID BODY.PEEK[])\r\nh NOOP\r\n");
        let (all, flushes) = drain_bounded(&mut s, OUTPUT_PENDING_MAX + body.len() + 200);
        assert_eq!(all.matches(" FETCH (UID ").count(), 40);
        assert!(flushes >= 10, "{flushes}");
        let done = all.find("g OK Fetch completed.").expect("tagged");
        assert!(
            all.rfind(" FETCH (UID ").unwrap() < done,
            "the tagged answer comes last"
        );
        assert!(
            all[done..].contains("h OK"),
            "the next command runs after it"
        );
    }

    /// A non-synchronising literal bigger than a line (an APPEND with LITERAL+, RFC 7888),
    /// sent at once or in pieces, is taken as a literal: it was counted against the line's
    /// limit and ended the session past 64 KB.
    #[test]
    fn a_big_nonsync_literal_is_taken_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        s.take_output();
        run(&mut s, "a LOGIN bob pw\r\n");
        let body = format!("Subject: big\r\n\r\n{}", "x".repeat(200_000));
        let command = format!("b APPEND INBOX {{{}+}}\r\n{body}\r\n", body.len());
        let r = run(&mut s, &command);
        assert!(r.contains("b OK"), "{r}");
        let command = format!("c APPEND INBOX {{{}+}}\r\n{body}\r\nd NOOP\r\n", body.len());
        let mut r = String::new();
        for piece in command.as_bytes().chunks(4096) {
            r.push_str(&run(&mut s, std::str::from_utf8(piece).unwrap()));
        }
        assert!(r.contains("c OK") && r.contains("d OK"), "{r}");
        assert!(!r.contains("BYE"), "{r}");
        let r = run(&mut s, "e SELECT INBOX\r\n");
        assert!(r.contains("* 2 EXISTS"), "{r}");
    }

    /// What a command's literals may add up to: before login a line's worth, after it the
    /// biggest literal and a line. Each literal alone was checked, not their sum, so a client
    /// that had not logged in could make the server hold any amount in one command.
    #[test]
    fn a_commands_literals_are_bounded_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        s.take_output();
        let r = run(&mut s, "a SEARCH TEXT {70000}\r\n");
        assert_eq!(r, "a NO [TOOBIG] Literal too big.\r\n");
        let r = run(&mut s, "b NOOP\r\n");
        assert!(r.starts_with("b OK"), "{r}");
        let r = run(
            &mut s,
            &format!("c SEARCH TEXT {{70000+}}\r\n{}", "y".repeat(10_000)),
        );
        assert_eq!(r, "* BYE Literal too big.\r\n");

        let mut s = session(dir.path());
        s.take_output();
        run(&mut s, "a LOGIN bob pw\r\n");
        let big = ImapConfig::default().literal_bytes_max - 1000;
        let r = run(&mut s, &format!("d SEARCH TEXT {{{big}}}\r\n"));
        assert_eq!(r, "+ Ready for literal data\r\n");
        let mut r = run(&mut s, &"z".repeat(big));
        r.push_str(&run(&mut s, &format!(" TEXT {{{big}}}\r\n")));
        assert_eq!(r, "d NO [TOOBIG] Literal too big.\r\n");
        let r = run(&mut s, "e NOOP\r\n");
        assert!(r.starts_with("e OK"), "{r}");
    }

    /// A command refused after one of its literals is dropped whole: the literal's bytes (a
    /// message being appended, a search string) are never run as commands.
    #[test]
    fn a_refused_command_keeps_its_literals() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        s.take_output();
        run(&mut s, "a LOGIN bob pw\r\n");
        assert_eq!(
            run(&mut s, "x1 SEARCH SUBJECT {21}\r\n"),
            "+ Ready for literal data\r\n"
        );
        let r = run(&mut s, "x2 CREATE smuggled\r\n ((( \r\nx3 NOOP\r\n");
        assert!(r.starts_with("x1 BAD"), "{r}");
        assert!(!r.contains("x2 "), "{r}");
        assert!(r.contains("x3 OK"), "{r}");
        let r = run(&mut s, "b APPEND INBOX {20}\r\n");
        assert_eq!(r, "+ Ready for literal data\r\n");
        let r = run(&mut s, "y2 CREATE smuggled\r\n junk\r\n");
        assert!(r.starts_with("b BAD") && !r.contains("y2 "), "{r}");
        // A non-synchronising literal on a refused line is sent anyway: skipped too.
        let r = run(&mut s, "c BOGUS {19+}\r\nz2 CREATE smuggled\r\nd NOOP\r\n");
        assert!(
            r.contains("c BAD") && !r.contains("z2 ") && r.contains("d OK"),
            "{r}"
        );
        let r = run(&mut s, "e LIST \"\" *\r\n");
        assert!(!r.contains("smuggled"), "{r}");
        // A command ended by a literal too big forgets the literals it took before.
        assert_eq!(
            run(&mut s, "f SEARCH SUBJECT {3}\r\n"),
            "+ Ready for literal data\r\n"
        );
        let r = run(&mut s, "abc BODY {999999999}\r\n");
        assert!(r.contains("f NO [TOOBIG]"), "{r}");
        let r = run(&mut s, "g BOGUS\r\nh NOOP\r\n");
        assert!(r.contains("g BAD") && r.contains("h OK"), "{r}");
        assert_eq!(bad_command_end(b"a {3+}\r\nab", 0), None);
        assert_eq!(bad_command_end(b"a {3+}\r\nabc x\r\n", 0), Some(15));
        assert_eq!(
            bad_command_end(b"a {99999999999999999999999+}\r\n", 0),
            Some(30)
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard(b"a/%", b"a/b"));
        assert!(!wildcard(b"a/%", b"a/b/c"));
        assert!(wildcard(b"a/*", b"a/b/c"));
        assert!(wildcard(b"%t*4", b"test3/test4"));
        assert!(!wildcard(b"%", b"a/b"));
        assert!(wildcard(b"*%*", b""));
        assert!(!wildcard(b"a%", b"b"));
    }

    /// The definition, as a recursion: only for short inputs.
    fn wildcard_reference(pattern: &[u8], name: &[u8]) -> bool {
        match pattern.split_first() {
            None => name.is_empty(),
            Some((b'*', rest)) => (0..=name.len()).any(|i| wildcard_reference(rest, &name[i..])),
            Some((b'%', rest)) => (0..=name.len())
                .take_while(|&i| i == 0 || name[i - 1] != b'/')
                .any(|i| wildcard_reference(rest, &name[i..])),
            Some((&c, rest)) => name
                .split_first()
                .is_some_and(|(&n, nrest)| n == c && wildcard_reference(rest, nrest)),
        }
    }

    #[test]
    fn wildcards_agree_with_the_definition_on_random_short_inputs() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3501);
        for _ in 0..20_000 {
            let p: Vec<u8> = (0..rng.gen_range(0..8))
                .map(|_| b"ab/*%"[rng.gen_range(0..5)])
                .collect();
            let n: Vec<u8> = (0..rng.gen_range(0..8))
                .map(|_| b"ab/"[rng.gen_range(0..3)])
                .collect();
            assert_eq!(
                wildcard(&p, &n),
                wildcard_reference(&p, &n),
                "{:?} {:?}",
                String::from_utf8_lossy(&p),
                String::from_utf8_lossy(&n)
            );
        }
    }

    /// Issue 13, item 1: `LIST "" "%*%*...%*x"` overflowed a worker's stack (and 90 `%` took
    /// seconds). The session answers a 60,000-byte wildcard pattern over nested folders.
    #[test]
    fn list_with_a_long_run_of_wildcards_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        s.take_output();
        run(&mut s, "a LOGIN bob pw\r\n");
        for name in ["a", "a/b", "a/b/c", "a/b/c/d/e/f/g/h"] {
            assert!(run(&mut s, &format!("c CREATE {name}\r\n")).contains("c OK"));
        }
        let pattern = "%*".repeat(30_000);
        let r = run(&mut s, &format!("l LIST \"\" \"{pattern}q\"\r\n"));
        assert!(
            r.ends_with("l OK List completed.\r\n") && !r.contains("* LIST"),
            "{r}"
        );
        let r = run(&mut s, &format!("m LIST \"\" \"{pattern}\"\r\n"));
        // CREATE made the parents of a/b/c/d/e/f/g/h too (RFC 3501 section 6.3.3).
        assert_eq!(r.matches("* LIST").count(), 9, "{r}");
        let r = run(&mut s, &format!("n LIST \"\" \"{}\"\r\n", "%".repeat(90)));
        assert!(
            r.contains("* LIST () \"/\" \"a\"\r\n") && !r.contains("a/b"),
            "{r}"
        );
    }

    /// Issue 13, item 2: commands pipelined after STARTTLS, before the handshake, are dropped.
    #[test]
    fn commands_pipelined_after_starttls_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Mailstore::new(dir.path(), 0));
        let mut s = Session::new(Arc::new(ImapConfig::default()), store, true, false);
        s.take_output();
        s.feed(b"a STARTTLS\r\nb LOGIN bob pw\r\nc LIST \"\" *\r\n");
        assert_eq!(s.step(), Step::StartTls);
        let r = String::from_utf8(s.take_output()).unwrap();
        assert_eq!(r, "a OK Begin TLS negotiation now.\r\n");
        s.tls_started();
        assert_eq!(s.step(), Step::NeedInput);
        assert!(s.take_output().is_empty());
    }

    /// AUTHENTICATE PLAIN (RFC 4616) asking to act as another user is refused as such, not as
    /// a response that does not decode (found by an independent review); SASL-IR and the
    /// continuation form alike.
    #[test]
    fn authenticate_plain_refuses_acting_as_another_user() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        s.take_output();
        // "eve NUL bob NUL pw" as an initial response, then as a continuation.
        let r = run(&mut s, "a AUTHENTICATE PLAIN ZXZlAGJvYgBwdw==\r\n");
        assert_eq!(
            r,
            "a NO [AUTHENTICATIONFAILED] Acting as another user is not permitted.\r\n"
        );
        let r = run(&mut s, "b AUTHENTICATE PLAIN\r\nZXZlAGJvYgBwdw==\r\n");
        assert!(
            r.ends_with("b NO [AUTHENTICATIONFAILED] Acting as another user is not permitted.\r\n"),
            "{r}"
        );
        let r = run(&mut s, "c AUTHENTICATE PLAIN AGJvYgBwdw==\r\n");
        assert!(r.starts_with("c OK"), "{r}");
    }

    #[test]
    fn hostile_input_gets_answers_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        s.take_output();
        let r = run(&mut s, "\r\n* \r\na FETCH\r\nb SELECT\r\n");
        assert!(r.contains("a BAD") && r.contains("b BAD"), "{r}");
        // Each refusal says which part did not read (an independent review found one generic
        // "Error in IMAP command" for all).
        let r = run(
            &mut s,
            "c FROB x\r\nd\r\ne uid fetch 1:* (BODY[\r\n+x NOOP\r\nf STORE 1 +FLAGS (\r\n",
        );
        assert_eq!(
            r,
            "c BAD Unknown command FROB.\r\n\
             d BAD Missing command name after the tag.\r\n\
             e BAD Invalid arguments to UID FETCH.\r\n\
             * BAD Missing or invalid tag.\r\n\
             f BAD Invalid arguments to STORE.\r\n"
        );
        let r = run(&mut s, "c APPEND INBOX {999999999999}\r\n");
        assert!(r.contains("BAD") || r.contains("NO"), "{r}");
        let long = format!("d {}", "x".repeat(70_000));
        let mut s2 = session(dir.path());
        s2.take_output();
        s2.feed(long.as_bytes());
        assert_eq!(s2.step(), Step::Close);
    }
}
