//! The event schema: one variant per kind of record, serialised as JSON objects with a `type`.

use crate::binary::{self, Bin, DecodeError, Input};
pub use mailsim_smtp::Reply;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the record schema (its JSON). A log's header carries the version of its format
/// ([`crate::log::Format`]): 1 is this schema in JSON, 2 this schema in the binary encoding.
pub const SCHEMA_VERSION: u32 = 1;

/// One SMTP reply as the client saw it, with the command that got it (in JSON: `command`,
/// then the reply's `code`, `enhanced`, `text`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub command: String,
    pub reply: Reply,
}

/// The JSON of an [`SmtpReply`]: one flat object. (Written out rather than `#[serde(flatten)]`,
/// which would buffer every reply of a log once more when it is read.)
#[derive(Serialize, Deserialize)]
struct SmtpReplyJson<C, T> {
    command: C,
    code: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enhanced: Option<T>,
    text: T,
}

impl Serialize for SmtpReply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SmtpReplyJson {
            command: self.command.as_str(),
            code: self.reply.code,
            enhanced: self.reply.enhanced.as_deref(),
            text: self.reply.text.as_str(),
        }
        .serialize(s)
    }
}

impl Serialize for crate::binary::SmtpReplyView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SmtpReplyJson {
            command: self.command,
            code: self.code,
            enhanced: self.enhanced,
            text: self.text,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SmtpReply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = SmtpReplyJson::<String, String>::deserialize(d)?;
        Ok(SmtpReply {
            command: j.command,
            reply: Reply {
                code: j.code,
                enhanced: j.enhanced,
                text: j.text,
            },
        })
    }
}

impl SmtpReply {
    pub fn new(command: &str, reply: &Reply) -> Self {
        SmtpReply {
            command: command.to_string(),
            reply: reply.clone(),
        }
    }
}

/// What a field's value is, as the report's table stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Str,
    U64,
    /// An integer of at most 32 bits.
    U32,
    Bool,
    /// An [`SmtpReply`]: its fields become the `command`, `code`, `enhanced` and `text` columns.
    Reply,
    /// Anything else (lists, maps): kept as JSON.
    Json,
}

/// The [`Shape`] of a field's Rust type (an `Option` has the shape of what it holds).
pub trait HasShape {
    const SHAPE: Shape;
}

macro_rules! shapes {
    ($($t:ty => $s:ident),* $(,)?) => {
        $(impl HasShape for $t { const SHAPE: Shape = Shape::$s; })*
    };
}
shapes!(String => Str, u64 => U64, u32 => U32, u16 => U32, bool => Bool, SmtpReply => Reply,
    Vec<String> => Json, BTreeMap<String, String> => Json);

impl<T: HasShape> HasShape for Option<T> {
    const SHAPE: Shape = T::SHAPE;
}

/// One kind of event as the schema defines it.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// The `type` tag.
    pub tag: &'static str,
    /// A handful per run (the run's start, DNS answers, reports): the table keeps the fields
    /// only such kinds carry together in one JSON column rather than a column each.
    pub rare: bool,
    /// Field names (as in JSON) and shapes, in declaration order.
    pub fields: &'static [(&'static str, Shape)],
}

/// Defines [`Event`], its tags and its field shapes from one list of kinds.
macro_rules! schema {
    ($(#[doc = $edoc:literal])* pub enum Event; $(
        $(#[doc = $vdoc:literal])*
        $variant:ident = $tag:literal $($rare:ident)? {
            $(
                $(#[$fmeta:meta])*
                $field:ident : $ty:ty
            ),* $(,)?
        }
    )*) => {
        $(#[doc = $edoc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum Event {
            $(
                $(#[doc = $vdoc])*
                $variant { $( $(#[$fmeta])* $field: $ty, )* },
            )*
        }

        impl Event {
            /// Every `type` tag, in declaration order (a test holds it to serde's own list).
            pub const KINDS: &'static [&'static str] = &[$($tag),*];

            /// Every kind with its fields.
            pub const SCHEMA: &'static [Kind] = &[$(
                Kind {
                    tag: $tag,
                    rare: schema!(@rare $($rare)?),
                    fields: &[$((stringify!($field), <$ty as HasShape>::SHAPE)),*],
                },
            )*];

            /// The `type` tag of this event, as it appears in JSON.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Event::$variant { .. } => $tag,)*
                }
            }

            /// Is `kind` the `type` tag of an event of this schema?
            pub fn is_kind(kind: &str) -> bool {
                Self::KINDS.contains(&kind)
            }

            /// The event of kind `tag` from the rest of its record's fields (what follows
            /// `type`), without serde's buffering of an internally tagged enum.
            fn from_fields<'de, D: serde::Deserializer<'de>>(
                tag: &str,
                fields: D,
            ) -> Result<Event, D::Error> {
                match tag {
                    $($tag => {
                        let v = variant_fields::$variant::Fields::deserialize(fields)?;
                        if v.again_seq.is_some() || v.again_ts.is_some() || v.again_type.is_some() {
                            return Err(serde::de::Error::custom("seq, ts or type repeated"));
                        }
                        Ok(Event::$variant { $($field: v.$field,)* })
                    })*
                    _ => Err(serde::de::Error::unknown_variant(tag, Self::KINDS)),
                }
            }
        }

        /// Each kind's position in [`Event::KINDS`]: its byte in the binary encoding.
        #[allow(clippy::enum_variant_names)]
        #[repr(u8)]
        enum KindId { $($variant,)* }

        impl Event {
            /// The event's kind and fields in the binary encoding ([`crate::binary`]).
            fn put_binary(&self, out: &mut Vec<u8>) {
                match self {
                    $(Event::$variant { $($field,)* } => {
                        out.push(KindId::$variant as u8);
                        $( Bin::put($field, out); )*
                    })*
                }
            }

            /// The event as a view: its strings borrowed.
            pub fn view(&self) -> EventView<'_> {
                match self {
                    $(Event::$variant { $($field,)* } => EventView::$variant {
                        $($field: Bin::view($field),)*
                    },)*
                }
            }
        }

        /// An [`Event`] as it lies in a record's bytes: its strings borrowed from them (what a
        /// reader that only looks at each record, a replay's fold, decodes without allocating).
        /// Its variants and fields are the event's, each field its type's [`Bin::View`], and
        /// its JSON is the event's.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum EventView<'a> {
            $(
                $variant { $( $(#[$fmeta])* $field: <$ty as Bin>::View<'a>, )* },
            )*
        }

        impl<'a> EventView<'a> {
            /// The `type` tag of the event.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(EventView::$variant { .. } => $tag,)*
                }
            }

            /// The owned event.
            pub fn to_owned(self) -> Event {
                match self {
                    $(EventView::$variant { $($field,)* } => Event::$variant {
                        $($field: <$ty as Bin>::from_view($field),)*
                    },)*
                }
            }

            /// The view of the event whose kind byte and fields `input` holds.
            fn get_binary(input: &mut Input<'a>) -> Result<EventView<'a>, DecodeError> {
                let kind = input.byte().map_err(|what| DecodeError {
                    context: "kind".into(),
                    what: what.into(),
                })?;
                $(
                    if kind == KindId::$variant as u8 {
                        return Ok(EventView::$variant {
                            $($field: <$ty as Bin>::get_view(input).map_err(|what| DecodeError {
                                context: concat!($tag, ".", stringify!($field)).into(),
                                what: what.into(),
                            })?,)*
                        });
                    }
                )*
                Err(DecodeError {
                    context: "kind".into(),
                    what: format!("no kind has the number {kind}"),
                })
            }
        }

        /// Each kind's fields as a struct of their own (for [`Event::from_fields`]), in a
        /// module named after the kind.
        #[allow(non_snake_case)]
        mod variant_fields {
            $(
                pub(super) mod $variant {
                    use super::super::*;
                    #[derive(Deserialize)]
                    pub(in super::super) struct Fields {
                        $( $(#[$fmeta])* pub(in super::super) $field: $ty, )*
                        // A record's own keys again after its kind's fields: refused here (the
                        // derived reading then names the duplicate).
                        #[serde(rename = "seq", default)]
                        pub(in super::super) again_seq: Option<serde::de::IgnoredAny>,
                        #[serde(rename = "ts", default)]
                        pub(in super::super) again_ts: Option<serde::de::IgnoredAny>,
                        #[serde(rename = "type", default)]
                        pub(in super::super) again_type: Option<serde::de::IgnoredAny>,
                    }
                }
            )*
        }
    };
    (@rare rare) => { true };
    (@rare) => { false };
}

schema! {
    /// A state change. `msg` is the MTA's queue id for one (message, recipient) pair.
    ///
    /// This is the one definition of the schema: the enum, its `type` tags ([`Event::KINDS`]) and
    /// the shape of every field ([`Event::SCHEMA`], which the report's table is built from) all
    /// come from the list below.
    pub enum Event;

    /// A run began: which scenario, which seed, and what the scenario published that a
    /// report needs (so that the log alone is enough to report a run).
    RunStarted = "run_started" rare {
        scenario: String,
        seed: u64,
        mode: String,
        /// Domain -> its DMARC record (TXT at `_dmarc.<domain>`), senders and recipients.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        dmarc_records: BTreeMap<String, String>,
        /// Domain -> its SPF record.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        spf_records: BTreeMap<String, String>,
        /// Recipient domain -> the provider profile its servers follow.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        profiles: BTreeMap<String, String>,
    }
    /// A run ended (all messages final, or its time limit was reached).
    RunFinished = "run_finished" { reason: String }
    /// A message for one recipient entered the queue.
    Injected = "injected" {
        msg: u64,
        message_id: String,
        from: String,
        rcpt: String,
        domain: String,
        size: u64,
        /// `transactional` for mail in the MTA's transactional lane (absent: bulk).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lane: Option<String>,
        /// The platform campaign the message belongs to (`POST /api/campaigns`; absent: none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        campaign: Option<u64>,
    }
    /// A DNS answer the MTA used for routing (MX or A lookup).
    DnsAnswer = "dns_answer" rare {
        domain: String,
        qtype: String,
        answer: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }
    /// An outbound connection was established.
    ConnOpened = "conn_opened" {
        conn: u64,
        domain: String,
        mx: String,
        addr: String,
    }
    /// An outbound connection attempt failed before a session.
    ConnFailed = "conn_failed" {
        domain: String,
        mx: String,
        addr: String,
        error: String,
    }
    /// An outbound connection ended.
    ConnClosed = "conn_closed" rare { conn: u64, messages: u64 }
    /// An outbound connection's STARTTLS (RFC 3207), or why the session had none: what
    /// TLS-RPT (RFC 8460) reports are made from.
    Tls = "tls" {
        conn: u64,
        domain: String,
        mx: String,
        addr: String,
        /// What the destination's policy asked for: `opportunistic`, `required`,
        /// `sts-enforce` or `sts-testing` (MTA-STS, RFC 8461).
        policy: String,
        /// `success`, or the RFC 8460 result type of the failure (`starttls-not-supported`,
        /// `certificate-host-mismatch`, `certificate-expired`, `certificate-not-trusted`,
        /// `validation-failure`).
        result: String,
        /// The protocol and cipher (`TLSv1.3 TLS13_AES_256_GCM_SHA384`); empty without TLS.
        params: String,
        /// The certificate's check against the trusted roots and the MX name: `ok` or an
        /// RFC 8460 result type (opportunistic TLS encrypts with any certificate).
        certificate: String,
        /// What happened next: `encrypted`, `clear` (sent without TLS), `skipped` (this MX
        /// was not used).
        outcome: String,
        /// What failed, in words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        why: Option<String>,
    }
    /// An MTA-STS policy (RFC 8461) was fetched for a destination, or could not be.
    StsPolicy = "sts_policy" rare {
        domain: String,
        /// The `id` of the `_mta-sts` TXT record.
        id: String,
        /// `enforce`, `testing` or `none`; empty when the fetch failed.
        mode: String,
        /// The policy's `mx` lines: host names and `*.` patterns.
        mx_patterns: Vec<String>,
        max_age_s: u64,
        /// The policy as served (for TLS-RPT's `policy-string`).
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    }
    /// The MTA received an SMTP reply.
    SmtpReply = "smtp_reply" {
        conn: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg: Option<u64>,
        #[serde(flatten)]
        reply: SmtpReply,
    }
    /// The receiving server accepted the message for the recipient.
    Delivered = "delivered" {
        msg: u64,
        rcpt: String,
        domain: String,
        mx: String,
        attempts: u32,
    }
    /// A temporary failure; the message stays queued until `retry_at_ms`.
    Deferred = "deferred" {
        msg: u64,
        rcpt: String,
        domain: String,
        attempts: u32,
        retry_at_ms: u64,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply: Option<SmtpReply>,
    }
    /// A permanent failure.
    Bounced = "bounced" {
        msg: u64,
        rcpt: String,
        domain: String,
        attempts: u32,
        reason: String,
        /// A hard bounce: the address will never work (it is suppressed).
        #[serde(default)]
        hard: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply: Option<SmtpReply>,
    }
    /// The message outlived the queue lifetime.
    Expired = "expired" {
        msg: u64,
        rcpt: String,
        domain: String,
        attempts: u32,
        reason: String,
    }
    /// Receiving side: a server accepted a connection.
    SessionAccepted = "session_accepted" {
        host: String,
        session: u64,
        peer: String,
    }
    /// Receiving side: the verdicts for one received message.
    AuthVerdict = "auth_verdict" {
        host: String,
        session: u64,
        message_id: String,
        mail_from: String,
        header_from: String,
        spf: String,
        dkim: String,
        dmarc: String,
    }
    /// Receiving side: a message was stored for a user.
    Stored = "stored" {
        host: String,
        session: u64,
        message_id: String,
        rcpt: String,
        size: u64,
        /// The session's TLS protocol and cipher (`TLSv1.3 TLS13_AES_256_GCM_SHA384`), when
        /// it was encrypted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<String>,
    }
    /// Receiving side: the server refused a recipient or message.
    Refused = "refused" {
        host: String,
        session: u64,
        command: String,
        code: u16,
        enhanced: String,
        rcpt: String,
    }
    /// The MTA backs a whole destination off (after a 421 or a rate-limit reply): no new
    /// connection to it before `until_ms`.
    Backoff = "backoff" rare {
        domain: String,
        until_ms: u64,
        reason: String,
    }
    /// The MTA changed how many connections it opens to a destination at once (adaptive
    /// concurrency): lowered when a connection is refused, fails or times out while others
    /// work, raised after as many good sessions as the window holds.
    Concurrency = "concurrency" rare {
        domain: String,
        old: u64,
        new: u64,
        cause: String,
    }
    /// A recipient on the suppression list was not queued.
    Suppressed = "suppressed" {
        message_id: String,
        rcpt: String,
        domain: String,
        reason: String,
    }
    /// An address joined the suppression list (a hard bounce or a complaint).
    SuppressionAdded = "suppression_added" rare { rcpt: String, reason: String }
    /// The MTA queued an RFC 3464 delivery status notification about message `about` to its
    /// return path.
    DsnQueued = "dsn_queued" rare {
        msg: u64,
        about: u64,
        to: String,
        reason: String,
    }
    /// A recipient server sent a report later about a message it had accepted: an RFC 3464
    /// bounce (`kind` "bounce") or an RFC 5965 complaint ("complaint").
    ReportSent = "report_sent" rare {
        host: String,
        kind: String,
        to: String,
        rcpt: String,
        message_id: String,
    }
    /// The sender's bounce processor read a report from its mailbox and attributed it (by the
    /// VERP return path) to the message `msg`. `message_id` is the Message-ID the report
    /// quotes (a DSN's returned message or headers, a complaint's original), by which a report
    /// from another MTA, whose return path is not VERP, is attributed; `action` the DSN's
    /// Action for the recipient (RFC 3464: failed, delayed, ...). Both are left out when the
    /// report has none.
    ReportReceived = "report_received" rare {
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg: Option<u64>,
        rcpt: String,
        reason: String,
        status: String,
        hard: bool,
        #[serde(default, skip_serializing_if = "str::is_empty")]
        message_id: String,
        #[serde(default, skip_serializing_if = "str::is_empty")]
        action: String,
    }
    /// Receiving side (a provider with a reputation model): where an accepted copy landed,
    /// `inbox` or `spam`; for `spam` the main cause (`reputation`, `content`,
    /// `authentication`, `no-one-click-unsubscribe`), empty for `inbox`; and the probability of
    /// the spam folder it was drawn with (percent).
    Placed = "placed" {
        host: String,
        message_id: String,
        rcpt: String,
        folder: String,
        cause: String,
        spam_percent: u32,
    }
    /// A provider's reputation of a sender after one day of its mail: `subject` is `ip:<addr>`
    /// or `domain:<d>`; `score` 0-100; `cause` the day's largest change.
    Reputation = "reputation" rare {
        provider: String,
        subject: String,
        day: u32,
        score: u32,
        cause: String,
    }
    /// A simulated recipient opened a message: fetched the images of its HTML part.
    /// `http_status` is the HTTP status (0: no answer; `error` says why, such as a host outside loopback).
    Opened = "opened" {
        rcpt: String,
        message_id: String,
        url: String,
        http_status: u16,
        #[serde(default, skip_serializing_if = "str::is_empty")]
        error: String,
    }
    /// A simulated recipient followed a link of a message.
    Clicked = "clicked" {
        rcpt: String,
        message_id: String,
        url: String,
        http_status: u16,
        #[serde(default, skip_serializing_if = "str::is_empty")]
        error: String,
    }
    /// A simulated recipient unsubscribed: `method` `one-click` (RFC 8058 POST) or `mailto`.
    Unsubscribed = "unsubscribed" {
        rcpt: String,
        message_id: String,
        method: String,
        url: String,
        http_status: u16,
        #[serde(default, skip_serializing_if = "str::is_empty")]
        error: String,
    }
}

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Milliseconds since the Unix epoch, from the run's clock.
    pub ts: u64,
    #[serde(flatten)]
    pub event: Event,
}

/// A [`Record`] as it lies in its binary encoding: the event's strings borrowed from it. Its
/// JSON is the record's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordView<'a> {
    pub seq: u64,
    pub ts: u64,
    #[serde(flatten)]
    pub event: EventView<'a>,
}

impl<'a> RecordView<'a> {
    /// The view of the record whose binary encoding (beginning with [`binary::MARKER`]) is
    /// `bytes`: every check of [`Record::from_binary`] made, nothing allocated for the event's
    /// strings.
    pub fn from_binary(bytes: &'a [u8]) -> Result<RecordView<'a>, DecodeError> {
        let mut input = Input::new(bytes);
        let head = |context: &str, what: &str| DecodeError {
            context: context.into(),
            what: what.into(),
        };
        if input.byte().ok() != Some(binary::MARKER) {
            return Err(head("marker", "not a binary record"));
        }
        let seq = input.varint().map_err(|w| head("seq", w))?;
        let ts = input.varint().map_err(|w| head("ts", w))?;
        let event = EventView::get_binary(&mut input)?;
        if !input.at_end() {
            return Err(DecodeError {
                context: event.kind().into(),
                what: "bytes after the last field".into(),
            });
        }
        Ok(RecordView { seq, ts, event })
    }

    /// The owned record.
    pub fn to_owned(self) -> Record {
        Record {
            seq: self.seq,
            ts: self.ts,
            event: self.event.to_owned(),
        }
    }
}

/// A record read from a log frame's payload, in either encoding: a binary record as a view of
/// the payload, a JSON one decoded.
pub enum PayloadRecord<'a> {
    View(RecordView<'a>),
    Owned(Record),
}

impl<'a> PayloadRecord<'a> {
    /// The record `payload` holds, told apart by its first byte as [`Record::from_payload`]
    /// does.
    pub fn read(payload: &'a [u8]) -> Result<Self, PayloadError> {
        if payload.first() == Some(&binary::MARKER) {
            Ok(PayloadRecord::View(RecordView::from_binary(payload)?))
        } else {
            Ok(PayloadRecord::Owned(Record::from_json(payload)?))
        }
    }

    pub fn seq(&self) -> u64 {
        match self {
            PayloadRecord::View(v) => v.seq,
            PayloadRecord::Owned(r) => r.seq,
        }
    }

    /// `f` of the record as a view.
    pub fn with_view<T>(&self, f: impl FnOnce(&RecordView<'_>) -> T) -> T {
        match self {
            PayloadRecord::View(v) => f(v),
            PayloadRecord::Owned(r) => f(&r.view()),
        }
    }

    pub fn into_owned(self) -> Record {
        match self {
            PayloadRecord::View(v) => v.to_owned(),
            PayloadRecord::Owned(r) => r,
        }
    }
}

/// Why a frame's payload is not a record.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Binary(#[from] DecodeError),
}

impl Record {
    /// The record in the binary encoding ([`crate::binary`]), appended to `out`.
    pub fn put_binary(&self, out: &mut Vec<u8>) {
        out.push(binary::MARKER);
        binary::put_varint(self.seq, out);
        binary::put_varint(self.ts, out);
        self.event.put_binary(out);
    }

    /// A record from its binary encoding (beginning with [`binary::MARKER`]).
    pub fn from_binary(bytes: &[u8]) -> Result<Record, DecodeError> {
        RecordView::from_binary(bytes).map(RecordView::to_owned)
    }

    /// The record as a view: its strings borrowed.
    pub fn view(&self) -> RecordView<'_> {
        RecordView {
            seq: self.seq,
            ts: self.ts,
            event: self.event.view(),
        }
    }

    /// A record from a log frame's payload, in either encoding: JSON (log format 1, and what
    /// `mailsim events` prints) or binary (format 2), told apart by the first byte.
    pub fn from_payload(payload: &[u8]) -> Result<Record, PayloadError> {
        if payload.first() == Some(&binary::MARKER) {
            Ok(Record::from_binary(payload)?)
        } else {
            Ok(Record::from_json(payload)?)
        }
    }

    /// A record from its JSON. The log writes `seq`, `ts` and `type` first, and such a record
    /// is read in one pass (serde's derived reading of a flattened, internally tagged enum
    /// buffers every field twice first); any other order, or a bad record, is read (and its
    /// error told) the derived way.
    pub fn from_json(json: &[u8]) -> Result<Record, serde_json::Error> {
        match serde_json::from_slice::<InOrder>(json) {
            Ok(InOrder(record)) => Ok(record),
            Err(_) => serde_json::from_slice::<Record>(json),
        }
    }
}

/// A [`Record`] whose JSON begins with `seq`, `ts` and `type`, in that order.
struct InOrder(Record);

impl<'de> Deserialize<'de> for InOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(InOrderVisitor)
    }
}

struct InOrderVisitor;

impl<'de> serde::de::Visitor<'de> for InOrderVisitor {
    type Value = InOrder;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a record beginning with seq, ts and type")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<InOrder, A::Error> {
        fn key<'de, A: serde::de::MapAccess<'de>>(
            map: &mut A,
            name: &'static str,
        ) -> Result<(), A::Error> {
            match map.next_key_seed(Named(name))? {
                Some(true) => Ok(()),
                _ => Err(serde::de::Error::custom(format!(
                    "`{name}` not where expected"
                ))),
            }
        }
        key(&mut map, "seq")?;
        let seq = map.next_value()?;
        key(&mut map, "ts")?;
        let ts = map.next_value()?;
        key(&mut map, "type")?;
        let tag: std::borrow::Cow<'de, str> = map.next_value()?;
        let fields = serde::de::value::MapAccessDeserializer::new(map);
        let event = Event::from_fields(&tag, fields)?;
        Ok(InOrder(Record { seq, ts, event }))
    }
}

/// A map key that is (true) or is not (false) `.0`, read without a copy.
struct Named(&'static str);

impl<'de> serde::de::DeserializeSeed<'de> for Named {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Named {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_through_json_with_type_tag() {
        let rec = Record {
            seq: 7,
            ts: 1_000,
            event: Event::SmtpReply {
                conn: 3,
                msg: Some(9),
                reply: SmtpReply::new("RCPT", &Reply::new(550, (5, 1, 1), "no such user")),
            },
        };
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains(r#""type":"smtp_reply""#), "{json}");
        assert!(
            json.ends_with(
                r#""command":"RCPT","code":550,"enhanced":"5.1.1","text":"no such user"}"#
            ),
            "{json}"
        );
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.event.kind(), "smtp_reply");
        assert_eq!(Record::from_json(json.as_bytes()).unwrap(), rec);
    }

    #[test]
    fn a_record_in_another_order_or_with_escapes_reads_the_same() {
        let rec = Record {
            seq: 3,
            ts: 9,
            event: Event::Deferred {
                msg: 1,
                rcpt: "a\"b@x.test".into(),
                domain: "x.test".into(),
                attempts: 2,
                retry_at_ms: 10,
                reason: "greylisted".into(),
                reply: None,
            },
        };
        let reordered = r#"{"type":"deferred","ts":9,"msg":1,"rcpt":"a\"b@x.test","seq":3,
            "domain":"x.test","attempts":2,"retry_at_ms":10,"reason":"greylisted"}"#;
        assert_eq!(Record::from_json(reordered.as_bytes()).unwrap(), rec);
        // An escaped tag and a field the schema does not know (ignored, as serde's derive does).
        let escaped = r#"{"seq":3,"ts":9,"type":"defer\u0072ed","msg":1,"rcpt":"a\"b@x.test",
            "domain":"x.test","attempts":2,"retry_at_ms":10,"reason":"greylisted","extra":[1]}"#;
        assert_eq!(Record::from_json(escaped.as_bytes()).unwrap(), rec);
        // A bad record gets the derived reading's error (which names the field).
        let bad = r#"{"seq":3,"ts":9,"type":"deferred","msg":"one"}"#;
        let e = Record::from_json(bad.as_bytes()).unwrap_err().to_string();
        let derived = serde_json::from_str::<Record>(bad).unwrap_err().to_string();
        assert_eq!(e, derived);
        // A repeated key is an error both ways.
        for repeated in [
            r#"{"seq":3,"ts":9,"type":"run_finished","reason":"x","seq":4}"#,
            r#"{"seq":3,"ts":9,"type":"run_finished","reason":"x","type":"expired"}"#,
            r#"{"seq":3,"ts":9,"type":"run_finished","reason":"x","reason":"y"}"#,
            r#"{"seq":3,"ts":9,"type":"smtp_reply","conn":1,"command":"RCPT","code":250,"text":"ok","ts":1}"#,
        ] {
            assert!(
                serde_json::from_str::<Record>(repeated).is_err(),
                "{repeated}"
            );
            assert!(
                Record::from_json(repeated.as_bytes()).is_err(),
                "{repeated}"
            );
        }
        let unknown = r#"{"seq":3,"ts":9,"type":"no_such_kind"}"#;
        assert!(Record::from_json(unknown.as_bytes()).is_err());
    }

    /// A record of every kind, each field given a value of its shape (a reply flattened into
    /// `smtp_reply`), then again with each field its kind may leave out left out.
    pub(crate) fn every_kind() -> Vec<Record> {
        let mut out = Vec::new();
        for (i, kind) in Event::SCHEMA.iter().enumerate() {
            let mut m = serde_json::Map::new();
            m.insert("seq".into(), (i as u64 * 1_000_003).into());
            m.insert("ts".into(), 1_767_225_600_123u64.into());
            m.insert("type".into(), kind.tag.into());
            for &(name, shape) in kind.fields {
                let v = match shape {
                    Shape::Str => format!("{name} é\u{1F600} {i}").into(),
                    Shape::U64 => (u64::MAX - i as u64).into(),
                    Shape::U32 => (i as u64 + 300).into(),
                    Shape::Bool => true.into(),
                    Shape::Reply => serde_json::json!({
                        "command": "RCPT", "code": 451, "enhanced": "4.7.28", "text": "slow down"
                    }),
                    Shape::Json => serde_json::Value::Null,
                };
                m.insert(name.into(), v);
            }
            let valid = |m: &serde_json::Map<String, serde_json::Value>| {
                serde_json::from_value::<Record>(serde_json::Value::Object(m.clone())).ok()
            };
            for &(name, shape) in kind.fields {
                if shape == Shape::Json {
                    for v in [
                        serde_json::json!(["a", "b"]),
                        serde_json::json!({ "k": "v", "l": "w" }),
                    ] {
                        m.insert(name.into(), v);
                        if valid(&m).is_some() {
                            break;
                        }
                    }
                }
                if shape == Shape::Reply
                    && valid(&m).is_none()
                    && let Some(serde_json::Value::Object(parts)) = m.remove(name)
                {
                    m.extend(parts);
                }
            }
            let full = valid(&m).unwrap_or_else(|| panic!("example of {}", kind.tag));
            out.push(full);
            for name in m.keys() {
                let mut fewer = m.clone();
                fewer.remove(name);
                out.extend(valid(&fewer));
            }
        }
        out
    }

    #[test]
    fn every_kind_round_trips_through_the_binary_encoding() {
        let records = every_kind();
        assert!(
            records.len() > Event::SCHEMA.len() + 15,
            "{}",
            records.len()
        );
        for r in &records {
            let mut b = Vec::new();
            r.put_binary(&mut b);
            assert_eq!(&Record::from_binary(&b).unwrap(), r);
            assert_eq!(&Record::from_payload(&b).unwrap(), r);
            // The view read from the bytes is the record's own view, field for field, and
            // its JSON the record's.
            assert_eq!(RecordView::from_binary(&b).unwrap(), r.view());
            assert_eq!(&r.view().to_owned(), r);
            let json = serde_json::to_string(r).unwrap();
            assert_eq!(serde_json::to_string(&r.view()).unwrap(), json);
            let json = serde_json::to_vec(r).unwrap();
            assert_eq!(&Record::from_payload(&json).unwrap(), r);
            assert!(b.len() < json.len(), "{} vs {}", b.len(), json.len());
        }
    }

    /// The binary encoding follows the schema's order of kinds and fields: a change to the
    /// schema that changes the bytes of these records makes every log written before it read
    /// wrongly. When this fails, add a log format version (`log::Format`) that reads the old
    /// bytes, then update the checksum (a kind added at the end, or a change to the examples,
    /// changes it too and needs no new version).
    #[test]
    fn the_binary_bytes_of_every_kind_are_those_of_format_2() {
        let mut all = Vec::new();
        for r in every_kind() {
            r.put_binary(&mut all);
        }
        assert_eq!(
            (all.len(), crc32fast::hash(&all)),
            (4161, 2_540_484_948),
            "the binary encoding of the schema changed"
        );
    }

    /// Any cut and any changed byte of a binary record is an error or another record, never a
    /// panic; a cut or a byte too many is always an error, which names the field.
    #[test]
    fn a_damaged_binary_record_is_an_error_not_a_panic() {
        for r in every_kind() {
            let mut b = Vec::new();
            r.put_binary(&mut b);
            for cut in 0..b.len() {
                assert!(
                    Record::from_binary(&b[..cut]).is_err(),
                    "{} cut at {cut}",
                    r.event.kind()
                );
            }
            let mut longer = b.clone();
            longer.push(0);
            let e = Record::from_binary(&longer).unwrap_err();
            assert_eq!(e.context, r.event.kind(), "{e}");
            for i in 0..b.len() {
                for flip in [0x01u8, 0x80, 0xFF] {
                    let mut bad = b.clone();
                    bad[i] ^= flip;
                    let _ = Record::from_binary(&bad);
                }
            }
        }
        let mut b = Vec::new();
        every_kind()[0].put_binary(&mut b);
        b.truncate(b.len() - 1);
        let e = Record::from_binary(&b).unwrap_err().to_string();
        assert!(e.starts_with("binary record, run_started."), "{e}");
    }

    /// serde names every variant it knows when it meets an unknown one: that list is KINDS.
    #[test]
    fn kinds_are_serdes_variants() {
        let err = serde_json::from_str::<Event>(r#"{"type":"no_such_kind"}"#)
            .unwrap_err()
            .to_string();
        let expected = err
            .split("expected one of ")
            .nth(1)
            .expect("serde lists the variants");
        let listed: Vec<&str> = expected
            .split(", ")
            .map(|v| v.trim_matches(|c: char| c == '`' || !c.is_ascii() || c.is_whitespace()))
            .map(|v| v.split('`').next().unwrap_or(v))
            .collect();
        assert_eq!(listed, Event::KINDS, "{err}");
    }

    /// A field name means one thing: wherever it appears it has one shape (so the report's
    /// table has one type per column).
    #[test]
    fn a_field_name_has_one_shape_in_every_kind() {
        let tags: Vec<&str> = Event::SCHEMA.iter().map(|k| k.tag).collect();
        assert_eq!(tags, Event::KINDS);
        let mut seen: BTreeMap<&str, (Shape, &str)> = BTreeMap::new();
        for kind in Event::SCHEMA {
            for &(name, shape) in kind.fields {
                let (first, at) = *seen.entry(name).or_insert((shape, kind.tag));
                assert_eq!(
                    first, shape,
                    "`{name}` is {first:?} in {at} but {shape:?} in {}",
                    kind.tag
                );
            }
        }
    }
}
