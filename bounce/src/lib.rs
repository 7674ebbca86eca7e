//! Bounce and complaint processing for mailsim.
//!
//! * [`extract`] turns a raw message into per-recipient evidence: RFC 3464 delivery-status
//!   fields, RFC 5965 feedback reports, or the prose of a free-text bounce (cut before the
//!   returned original message).
//! * [`reason`] turns evidence (diagnostic text, status code, failed command) into a reason of
//!   Sisimai's vocabulary (userunknown, mailboxfull, expired, ...) and hard or soft.
//! * [`build`] writes DSNs (RFC 3464) and abuse reports (RFC 5965 ARF).
//! * [`classify_message`] and [`classify_reply`] put the two together for a message file and for
//!   a synchronous SMTP reply.

pub mod build;
pub mod extract;
pub mod message;
pub mod origin;
pub mod published;
pub mod reason;

pub use extract::without_addresses;

use serde::Serialize;

/// One classified recipient of a bounce, complaint or auto-reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Classified {
    pub recipient: String,
    /// Enhanced status code (D.S.N), empty when none was found.
    pub status: String,
    pub reason: String,
    pub hard: bool,
    /// The SMTP reply code quoted, if any.
    pub reply_code: Option<u16>,
    /// The server's words about this recipient.
    pub diagnostic: String,
    /// The DSN's Action for this recipient (RFC 3464 section 2.3.3: failed, delayed, ...),
    /// when the report has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The Message-ID of the message the report is about, as the report returns it
    /// ([`extract::Extracted::message_id`]).
    #[serde(skip)]
    pub message_id: Option<String>,
    /// Which MTA or provider wrote the report ([`origin::writer`]), when recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// Which provider's server gave the answer reported ([`origin::remote`]), when recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// What decided the reason (a phrase, "status", "action", "default").
    #[serde(skip)]
    pub why: String,
}

/// Classify every recipient a message reports on; empty when it is not a bounce, a complaint
/// or an auto-reply.
pub fn classify_message(raw: &[u8]) -> Vec<Classified> {
    let Some(x) = extract::extract(raw) else {
        return Vec::new();
    };
    // What the evidence of each recipient says, read once for a run of recipients with the
    // same evidence (the recipients of a report often share it whole: the same status, prose
    // and context).
    let same_evidence = |a: &extract::Finding, b: &extract::Finding| {
        a.status == b.status
            && a.diagnostic == b.diagnostic
            && (std::sync::Arc::ptr_eq(&a.context, &b.context) || a.context == b.context)
            && a.command == b.command
            && a.action == b.action
            && a.reply_code == b.reply_code
            && a.remote_mta == b.remote_mta
    };
    let mut decided: Vec<(Option<&'static str>, &'static str, &'static str)> =
        Vec::with_capacity(x.findings.len());
    for (i, f) in x.findings.iter().enumerate() {
        let remote = origin::remote(f.remote_mta.as_deref(), &f.diagnostic);
        let (reason, why) = match x.kind {
            extract::Kind::Feedback => ("feedback", "feedback report"),
            extract::Kind::Vacation => ("vacation", "auto-reply"),
            extract::Kind::Bounce if i > 0 && same_evidence(&x.findings[i - 1], f) => {
                (decided[i - 1].1, decided[i - 1].2)
            }
            extract::Kind::Bounce => reason::explain(&reason::Evidence {
                status: f.status.as_deref(),
                diagnostic: &f.diagnostic,
                context: &f.context,
                command: f.command.as_deref(),
                action: f.action.as_deref(),
                reply_code: f.reply_code,
                remote,
                writer: x.writer,
            }),
        };
        decided.push((remote, reason, why));
    }
    x.findings
        .into_iter()
        .zip(decided)
        .map(|(f, (remote, reason, why))| {
            let (reason, why) = match remote_host_reason(remote, &f.diagnostic) {
                Some(r) => (r, "remote host"),
                None => (reason, why),
            };
            // A Google Groups bounce refuses the poster, not the address.
            let (reason, why) = if reason != "feedback"
                && f.status.is_none()
                && f.recipient
                    .to_ascii_lowercase()
                    .ends_with("@googlegroups.com")
            {
                ("rejected", "google groups")
            } else {
                (reason, why)
            };
            Classified {
                hard: reason::is_hard(reason, f.status.as_deref()),
                reason: reason.to_string(),
                status: f.status.unwrap_or_default(),
                recipient: f.recipient,
                reply_code: f.reply_code,
                action: f.action.map(|a| a.to_ascii_lowercase()),
                message_id: x.message_id.clone(),
                writer: x.writer.map(str::to_string),
                remote: remote.map(str::to_string),
                diagnostic: extract::squeeze(&f.diagnostic),
                why: why.to_string(),
            }
        })
        .collect()
}

/// What some big receivers mean by replies that read otherwise, keyed by the provider whose
/// server answered ([`origin::remote`]; their published behaviour, as Sisimai's "rhost" rules
/// record it).
fn remote_host_reason(remote: Option<&str>, diagnostic: &str) -> Option<&'static str> {
    let text = diagnostic.to_ascii_lowercase();
    match remote? {
        // NTT docomo answers "Unknown user" to senders its user refuses.
        "nttdocomo" if text.contains("unknown user") => Some("rejected"),
        // Yahoo defers mail it refuses from this sender for now.
        "yahoo" if text.contains("[tss04]") || text.contains("[ts04]") => Some("rejected"),
        _ => None,
    }
}

/// Classify a synchronous SMTP reply (code, enhanced status, text, the command it answered).
pub fn classify_reply(
    code: u16,
    enhanced: Option<&str>,
    text: &str,
    command: &str,
) -> (&'static str, bool) {
    let status = enhanced.map(str::to_string).or_else(|| {
        // No enhanced code: the class of the reply code, detail unknown.
        Some(format!("{}.0.0", code / 100))
    });
    let action = (code < 500).then_some("delayed");
    let r = if code < 500 {
        // A temporary failure is not "expired" yet: classify its words and code.
        reason::reason(&reason::Evidence {
            status: status.as_deref(),
            diagnostic: text,
            context: "",
            command: Some(command),
            action: None,
            reply_code: Some(code),
            remote: None,
            writer: None,
        })
    } else {
        reason::reason(&reason::Evidence {
            status: status.as_deref(),
            diagnostic: text,
            context: "",
            command: Some(command),
            action,
            reply_code: Some(code),
            remote: None,
            writer: None,
        })
    };
    (r, code >= 500 && reason::is_hard(r, status.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronous_replies_get_reasons_and_hardness() {
        let cases = [
            (
                550,
                Some("5.1.1"),
                "The email account that you tried to reach does not exist",
                "RCPT",
                "userunknown",
                true,
            ),
            // Before any envelope the words are about the client's own name, not a recipient
            // (Sisimai's definition of "blocked": the client's address, host name or HELO).
            (501, None, "Invalid domain name", "EHLO", "blocked", false),
            (554, None, "No such user here", "CONNECT", "blocked", false),
            // An "access denied" at connection time refuses the client itself.
            (
                554,
                Some("5.7.1"),
                "Access denied",
                "CONNECT",
                "blocked",
                false,
            ),
            (
                452,
                Some("4.2.2"),
                "The recipient's inbox is out of storage space",
                "RCPT",
                "mailboxfull",
                false,
            ),
            (
                451,
                Some("4.7.1"),
                "Greylisted, try again in a few minutes",
                "RCPT",
                "greylisted",
                false,
            ),
            (
                421,
                Some("4.7.28"),
                "Our system has detected an unusual rate of unsolicited mail originating from your IP address",
                "RCPT",
                "ratelimited",
                false,
            ),
            (
                550,
                Some("5.7.26"),
                "Unauthenticated email from news.example is not accepted due to domain's DMARC policy",
                "DATA",
                "authfailure",
                false,
            ),
            (
                552,
                Some("5.3.4"),
                "message size exceeds fixed maximum message size",
                "MAIL",
                "emailtoolarge",
                false,
            ),
            (
                530,
                Some("5.7.0"),
                "Must issue a STARTTLS command first",
                "MAIL",
                "failedstarttls",
                false,
            ),
            // RFC 5248's reply and status for "Encryption Needed", in words that name no TLS.
            (
                523,
                None,
                "Encryption needed before this command",
                "MAIL",
                "failedstarttls",
                false,
            ),
            (
                550,
                Some("5.7.10"),
                "Encryption needed",
                "MAIL",
                "failedstarttls",
                false,
            ),
            // The registry's codes for a priority's size limit (RFC 6710), ARC (RFC 8617) and
            // REQUIRETLS (RFC 8689), in words that say nothing.
            (
                552,
                Some("5.7.16"),
                "Requested action not taken",
                "MAIL",
                "emailtoolarge",
                false,
            ),
            (
                550,
                Some("5.7.29"),
                "Requested action not taken",
                "DATA",
                "authfailure",
                false,
            ),
            (
                550,
                Some("5.7.30"),
                "Requested action not taken",
                "MAIL",
                "failedstarttls",
                false,
            ),
            // RFC 7504: the domain does not accept mail, in words that do not say so.
            (556, None, "No thanks", "RCPT", "notaccept", true),
            // The command a transcript names is not what failed.
            (
                421,
                Some("4.4.2"),
                "conversation with mx.example.org timed out while sending STARTTLS",
                "STARTTLS",
                "networkerror",
                false,
            ),
            (
                451,
                Some("4.7.5"),
                "Server certificate not trusted",
                "STARTTLS",
                "failedstarttls",
                false,
            ),
            // A limit the reply puts down to the sender's reputation; not a reputation service
            // or policy named beside another cause.
            (
                450,
                Some("4.7.650"),
                "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.",
                "RCPT",
                "badreputation",
                false,
            ),
            (
                451,
                Some("4.7.1"),
                "reputation service unavailable due to DNS error",
                "RCPT",
                "networkerror",
                false,
            ),
            (
                554,
                Some("5.7.1"),
                "rejected due to SPF fail. Reputation: neutral",
                "RCPT",
                "authfailure",
                false,
            ),
            (
                550,
                Some("5.7.25"),
                "rejected due to reputation policy: no PTR record",
                "RCPT",
                "requireptr",
                false,
            ),
            // Exchange Online's edge: the recipient is not in the tenant's directory.
            (
                550,
                Some("5.4.1"),
                "Recipient address rejected: Access denied. AS(201806281)",
                "RCPT",
                "userunknown",
                true,
            ),
            (
                550,
                Some("5.7.1"),
                "Message content rejected as spam (score 3)",
                "DATA",
                "spamdetected",
                false,
            ),
            // A verdict of spam is read before the name of the filter that gave it.
            (
                550,
                Some("5.7.1"),
                "Message rejected as spam by Content Filtering",
                "DATA",
                "spamdetected",
                false,
            ),
            // A content filter's refusal that names no verdict stays "filtered".
            (
                550,
                Some("5.7.1"),
                "Message refused by content filter",
                "DATA",
                "filtered",
                false,
            ),
            // A limit of messages per connection is a rate, not a full mailbox ("too many
            // messages in" a mailbox).
            (
                421,
                Some("4.7.0"),
                "Too many messages in this connection, try again later",
                "MAIL",
                "ratelimited",
                false,
            ),
            (
                421,
                None,
                "Too many messages on this connection, try again later",
                "MAIL",
                "ratelimited",
                false,
            ),
            // A listing of the client that calls it a spam source is no verdict on the message.
            (
                554,
                Some("5.7.1"),
                "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; identified as spam source",
                "RCPT",
                "blocked",
                false,
            ),
            (
                452,
                Some("4.2.2"),
                "Too many messages in mailbox",
                "RCPT",
                "mailboxfull",
                false,
            ),
        ];
        // An address is no evidence: a local part that reads like a reason changes nothing.
        for (local, text) in [
            ("spam", "<{}@example.org>: Recipient address rejected"),
            ("blocked", "452 <{}@example.org>: try again later"),
            ("mailbox-full", "Delivery to {}@example.org failed"),
        ] {
            assert_eq!(
                classify_reply(550, None, &text.replace("{}", local), "RCPT"),
                classify_reply(550, None, &text.replace("{}", "bob"), "RCPT"),
                "{local}"
            );
        }
        for (code, enhanced, text, command, reason, hard) in cases {
            assert_eq!(
                classify_reply(code, enhanced, text, command),
                (reason, hard),
                "{text}"
            );
        }
    }

    /// The families of wordings added on 2026-12-03, each read where it stands against the
    /// families it meets: repeated header fields (RFC 5322 section 3.6) before the name of
    /// the field ("DKIM-Signature" is no authentication verdict), a size limit (RFC 1870)
    /// after a full mailbox's and after the status code, a suspended account (RFC 3463
    /// X.2.1); the words about the client's address still yield when the refusal names a
    /// cause of its own (a PTR, too many connections).
    ///
    /// An unknown recipient in words no table holds (RFC 3463 X.1.1 "bad destination mailbox
    /// address"): the family reads them; a refused sender is still the sender's.
    #[test]
    fn header_size_account_and_ptr_families() {
        let cases = [
            (
                550,
                Some("5.7.1"),
                "There are multiple Subject headers",
                "DATA",
                "notcompliantrfc",
            ),
            (
                554,
                None,
                "Transaction failed: Duplicate header 'DKIM-Signature'.",
                "DATA",
                "notcompliantrfc",
            ),
            (
                553,
                None,
                "Exceeded maximum inbound message size",
                "DATA",
                "emailtoolarge",
            ),
            (
                552,
                None,
                "Mailbox size limit exceeded",
                "RCPT",
                "mailboxfull",
            ),
            (
                550,
                None,
                "Recipient suspend the service",
                "RCPT",
                "suspend",
            ),
            (
                452,
                Some("4.2.2"),
                "Mail folder size limit exceeded",
                "RCPT",
                "mailboxfull",
            ),
            (
                552,
                Some("5.2.2"),
                "This message would put the user over the maximum size of their mailbox",
                "DATA",
                "mailboxfull",
            ),
            (
                450,
                Some("4.7.25"),
                "Client host rejected: cannot find your hostname, [192.0.2.1]",
                "RCPT",
                "requireptr",
            ),
            (
                421,
                None,
                "Client host rejected: too many connections, try again later",
                "RCPT",
                "ratelimited",
            ),
            (
                554,
                Some("5.7.1"),
                "Client host rejected: Access denied",
                "RCPT",
                "blocked",
            ),
            (550, None, "Addressee unknown", "RCPT", "userunknown"),
            (550, None, "Mailbox is unknown here", "RCPT", "userunknown"),
            (550, None, "Recipient not recognized", "RCPT", "userunknown"),
            (
                550,
                None,
                "The user account is nonexistent",
                "RCPT",
                "userunknown",
            ),
            (
                553,
                None,
                "Your envelope sender address is not valid",
                "MAIL",
                "rejected",
            ),
            (
                550,
                Some("5.1.0"),
                "sender rejected. Please see https://www.spectrum.net/support/internet/understanding-email-error-codes for more information. AUP#In-1310",
                "MAIL",
                "ratelimited",
            ),
        ];
        for (code, enhanced, text, command, reason) in cases {
            assert_eq!(
                classify_reply(code, enhanced, text, command).0,
                reason,
                "{text}"
            );
        }
    }

    /// RFC 3464's Action delivered (a success report) is Sisimai's "delivered", whatever the
    /// words; a relay's suppression list is "suppressed".
    #[test]
    fn success_reports_and_suppressed_addresses() {
        let raw = b"From: MAILER-DAEMON@mta.test\r\nTo: a@news.test\r\nSubject: Delivery Status Notification (Success)\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nYour message was delivered.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mta.test\r\n\r\nFinal-Recipient: rfc822; bob@x.test\r\nAction: delivered\r\nStatus: 2.0.0\r\nDiagnostic-Code: smtp; 250 2.0.0 OK: queued as 1234 (header checked)\r\n--b--\r\n";
        let found = classify_message(raw);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].reason.as_str(), found[0].hard),
            ("delivered", false)
        );
        assert_eq!(
            classify_reply(
                550,
                Some("5.1.1"),
                "Amazon SES did not send the message to this address because it is on the suppression list for your account",
                "RCPT"
            )
            .0,
            "suppressed"
        );
    }

    /// Sendmail's "Remote protocol error" (EX_PROTOCOL) gives way to the remote's own reply,
    /// which its transcript gives on the lines before; without words of its own the remote
    /// refused the client. A recipient's own exchange (`>>> RCPT To:<...>`) stays its own.
    #[test]
    fn sendmail_protocol_errors_read_the_remote_reply() {
        let bounce = |transcript: &str| {
            let raw = format!(
                "From: Mail Delivery Subsystem <MAILER-DAEMON@relay.test>\r\nTo: news@news.test\r\nSubject: Returned mail: Remote protocol error\r\n\r\n   ----- Transcript of session follows -----\r\n{transcript}\r\n   ----- Unsent message follows -----\r\nFrom: news@news.test\r\nTo: bob@x.test\r\nSubject: hi\r\n\r\nhi\r\n"
            );
            classify_message(raw.as_bytes())
                .into_iter()
                .map(|c| (c.recipient, c.reason))
                .collect::<Vec<_>>()
        };
        let of = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(r, why)| (r.to_string(), why.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            bounce(
                "While talking to mx.x.test:\r\n>>> MAIL From:<news@news.test>\r\n<<< 550 5.7.1 Relaying denied\r\n554 <bob@x.test>... Remote protocol error"
            ),
            of(&[("bob@x.test", "norelaying")])
        );
        assert_eq!(
            bounce(
                "While talking to mx.x.test:\r\n>>> DATA\r\n<<< 550 We do not take your mail today\r\n554 <bob@x.test>... Remote protocol error"
            ),
            of(&[("bob@x.test", "blocked")])
        );
        assert_eq!(
            bounce(
                "While talking to mx.x.test:\r\n>>> MAIL From:<news@news.test>\r\n<<< 550 Mailbox full for this sender\r\n554 <bob@x.test>... Remote protocol error\r\nWhile talking to mx.y.test:\r\n>>> RCPT To:<carol@y.test>\r\n<<< 550 5.1.1 No such user here\r\n550 <carol@y.test>... User unknown"
            ),
            of(&[
                ("bob@x.test", "mailboxfull"),
                ("carol@y.test", "userunknown")
            ])
        );
        // Sendmail 8 names the host as "... while talking to HOST.:".
        assert_eq!(
            bounce(
                "... while talking to mx.x.test.:\r\n>>> MAIL From:<news@news.test>\r\n<<< 554 5.7.1 Relay access denied\r\n554 5.0.0 <bob@x.test>... Remote protocol error"
            ),
            of(&[("bob@x.test", "norelaying")])
        );
        // Another recipient's exchange just before is not this one's: bob keeps his own line.
        assert_eq!(
            bounce(
                "While talking to mx.x.test:\r\n>>> RCPT To:<carol@x.test>\r\n554 <bob@x.test>... Remote protocol error\r\n550 <carol@x.test>... User unknown"
            ),
            of(&[("carol@x.test", "userunknown"), ("bob@x.test", "blocked")])
        );
    }

    /// Tens of thousands of transcript lines naming two recipients in turn are read in time
    /// proportional to their length: no recipient's line walks back over lines another's did.
    /// (Quadratic, this took minutes; its speed is measured by `examples/speed.rs`, not timed
    /// here.)
    #[test]
    fn long_transcripts_are_read_once() {
        let m = 40_000;
        let mut t = String::new();
        for who in ["carol@x.test", "bob@x.test"] {
            for _ in 0..m {
                t.push_str(&format!(">>> RCPT To:<{who}>\r\n"));
            }
        }
        t.push_str("550 <carol@x.test>... User unknown\r\n550 <bob@x.test>... User unknown\r\n");
        let raw = format!(
            "From: Mail Delivery Subsystem <MAILER-DAEMON@relay.test>\r\nTo: news@news.test\r\nSubject: Returned mail: User unknown\r\n\r\n   ----- Transcript of session follows -----\r\n{t}"
        );
        let found = classify_message(raw.as_bytes());
        assert!(found.len() >= 2, "{}", found.len());
    }

    #[test]
    fn an_rfc3464_report_names_each_recipient() {
        let raw = b"From: MAILER-DAEMON@mta.test\r\nTo: bounces+7-bob=x.test@news.test\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mta.test\r\n\r\nFinal-Recipient: rfc822; bob@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\nFinal-Recipient: rfc822; carol@x.test\r\nAction: failed\r\nStatus: 5.2.2\r\nDiagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n--b--\r\n";
        let found = classify_message(raw);
        let got: Vec<(&str, &str, bool)> = found
            .iter()
            .map(|c| (c.recipient.as_str(), c.reason.as_str(), c.hard))
            .collect();
        assert_eq!(
            got,
            vec![
                ("bob@x.test", "userunknown", true),
                ("carol@x.test", "mailboxfull", false)
            ]
        );
    }

    /// Postfix's "refused to talk to me" says only that the greeting was refused: a quoted
    /// status of RFC 3463's network class (X.4.x) names the cause; without one the client was
    /// turned away.
    #[test]
    fn a_refused_greeting_with_a_network_status() {
        let report = |reply: &str| {
            format!(
                "From: MAILER-DAEMON@mta.test (Mail Delivery System)\r\nTo: a@news.test\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nThis is the mail system at host mta.test.\r\n\r\n<bob@x.test>: host mx.x.test[192.0.2.1] refused to talk to me: {reply}\r\n"
            )
        };
        let reason = |reply: &str| {
            let found = classify_message(report(reply).as_bytes());
            assert_eq!(found.len(), 1, "{reply}");
            found[0].reason.clone()
        };
        assert_eq!(
            reason("421 4.4.2 mx.x.test Error: timeout exceeded"),
            "networkerror"
        );
        assert_eq!(
            reason("554 mx.x.test ESMTP not accepting messages"),
            "blocked"
        );
        assert_eq!(reason("421 4.4.0 mx.x.test closing"), "blocked");
    }
}
