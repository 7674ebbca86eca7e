//! The event schema: one variant per kind of record, serialised as JSON objects with a `type`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the record schema; written into every log header.
pub const SCHEMA_VERSION: u32 = 1;

/// One SMTP reply as the client saw it: the command that got it, the code, enhanced code, text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpReply {
    pub command: String,
    pub code: u16,
    /// Enhanced status code (RFC 3463) such as `5.1.1`, when the server sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    pub text: String,
}

/// A state change. `msg` is the MTA's queue id for one (message, recipient) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A run began: which scenario, which seed, and what the scenario published that a
    /// report needs (so that the log alone is enough to report a run).
    RunStarted {
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
    },
    /// A run ended (all messages final, or its time limit was reached).
    RunFinished { reason: String },
    /// A message for one recipient entered the queue.
    Injected {
        msg: u64,
        message_id: String,
        from: String,
        rcpt: String,
        domain: String,
        size: u64,
    },
    /// A DNS answer the MTA used for routing (MX or A lookup).
    DnsAnswer {
        domain: String,
        qtype: String,
        answer: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// An outbound connection was established.
    ConnOpened {
        conn: u64,
        domain: String,
        mx: String,
        addr: String,
    },
    /// An outbound connection attempt failed before a session.
    ConnFailed {
        domain: String,
        mx: String,
        addr: String,
        error: String,
    },
    /// An outbound connection ended.
    ConnClosed { conn: u64, messages: u64 },
    /// The MTA received an SMTP reply.
    SmtpReply {
        conn: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg: Option<u64>,
        #[serde(flatten)]
        reply: SmtpReply,
    },
    /// The receiving server accepted the message for the recipient.
    Delivered {
        msg: u64,
        rcpt: String,
        domain: String,
        mx: String,
        attempts: u32,
    },
    /// A temporary failure; the message stays queued until `retry_at_ms`.
    Deferred {
        msg: u64,
        rcpt: String,
        domain: String,
        attempts: u32,
        retry_at_ms: u64,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply: Option<SmtpReply>,
    },
    /// A permanent failure.
    Bounced {
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
    },
    /// The message outlived the queue lifetime.
    Expired {
        msg: u64,
        rcpt: String,
        domain: String,
        attempts: u32,
        reason: String,
    },
    /// Receiving side: a server accepted a connection.
    SessionAccepted {
        host: String,
        session: u64,
        peer: String,
    },
    /// Receiving side: the verdicts for one received message.
    AuthVerdict {
        host: String,
        session: u64,
        message_id: String,
        mail_from: String,
        header_from: String,
        spf: String,
        dkim: String,
        dmarc: String,
    },
    /// Receiving side: a message was stored for a user.
    Stored {
        host: String,
        session: u64,
        message_id: String,
        rcpt: String,
        size: u64,
    },
    /// Receiving side: the server refused a recipient or message.
    Refused {
        host: String,
        session: u64,
        command: String,
        code: u16,
        enhanced: String,
        rcpt: String,
    },
    /// The MTA backs a whole destination off (after a 421 or a rate-limit reply): no new
    /// connection to it before `until_ms`.
    Backoff {
        domain: String,
        until_ms: u64,
        reason: String,
    },
    /// A recipient on the suppression list was not queued.
    Suppressed {
        message_id: String,
        rcpt: String,
        domain: String,
        reason: String,
    },
    /// An address joined the suppression list (a hard bounce or a complaint).
    SuppressionAdded { rcpt: String, reason: String },
    /// The MTA queued an RFC 3464 delivery status notification about message `about` to its
    /// return path.
    DsnQueued {
        msg: u64,
        about: u64,
        to: String,
        reason: String,
    },
    /// A recipient server sent a report later about a message it had accepted: an RFC 3464
    /// bounce (`kind` "bounce") or an RFC 5965 complaint ("complaint").
    ReportSent {
        host: String,
        kind: String,
        to: String,
        rcpt: String,
        message_id: String,
    },
    /// The sender's bounce processor read a report from its mailbox and attributed it (by the
    /// VERP return path) to the message `msg`.
    ReportReceived {
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        msg: Option<u64>,
        rcpt: String,
        reason: String,
        status: String,
        hard: bool,
    },
}

impl Event {
    /// Every `type` tag, in declaration order (a test holds it to serde's own list).
    pub const KINDS: &'static [&'static str] = &[
        "run_started",
        "run_finished",
        "injected",
        "dns_answer",
        "conn_opened",
        "conn_failed",
        "conn_closed",
        "smtp_reply",
        "delivered",
        "deferred",
        "bounced",
        "expired",
        "session_accepted",
        "auth_verdict",
        "stored",
        "refused",
        "backoff",
        "suppressed",
        "suppression_added",
        "dsn_queued",
        "report_sent",
        "report_received",
    ];

    /// Is `kind` the `type` tag of an event of this schema?
    pub fn is_kind(kind: &str) -> bool {
        Self::KINDS.contains(&kind)
    }

    /// The `type` tag of this event, as it appears in JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "run_started",
            Event::RunFinished { .. } => "run_finished",
            Event::Injected { .. } => "injected",
            Event::DnsAnswer { .. } => "dns_answer",
            Event::ConnOpened { .. } => "conn_opened",
            Event::ConnFailed { .. } => "conn_failed",
            Event::ConnClosed { .. } => "conn_closed",
            Event::SmtpReply { .. } => "smtp_reply",
            Event::Delivered { .. } => "delivered",
            Event::Deferred { .. } => "deferred",
            Event::Bounced { .. } => "bounced",
            Event::Expired { .. } => "expired",
            Event::SessionAccepted { .. } => "session_accepted",
            Event::AuthVerdict { .. } => "auth_verdict",
            Event::Stored { .. } => "stored",
            Event::Refused { .. } => "refused",
            Event::Backoff { .. } => "backoff",
            Event::Suppressed { .. } => "suppressed",
            Event::SuppressionAdded { .. } => "suppression_added",
            Event::DsnQueued { .. } => "dsn_queued",
            Event::ReportSent { .. } => "report_sent",
            Event::ReportReceived { .. } => "report_received",
        }
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
                reply: SmtpReply {
                    command: "RCPT".into(),
                    code: 550,
                    enhanced: Some("5.1.1".into()),
                    text: "no such user".into(),
                },
            },
        };
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains(r#""type":"smtp_reply""#), "{json}");
        assert!(json.contains(r#""code":550"#), "{json}");
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.event.kind(), "smtp_reply");
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
}
