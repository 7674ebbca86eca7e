//! Writing reports: RFC 3464 delivery status notifications and RFC 5965 abuse reports (ARF),
//! with mail-builder. The MTA sends DSNs for messages it gives up on; the fleet's servers send
//! both later about messages they accepted.

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;

/// What a DSN reports about one recipient.
#[derive(Debug, Clone)]
pub struct Dsn<'a> {
    /// The host writing the report (Reporting-MTA, and the From domain: MAILER-DAEMON@host).
    pub reporting_mta: &'a str,
    /// The return path the report goes to.
    pub to: &'a str,
    pub recipient: &'a str,
    /// RFC 3464 Action: `failed` or `delayed`.
    pub action: &'a str,
    pub status: &'a str,
    /// The remote server's reply, `smtp; 550 5.1.1 ...`, if one was received.
    pub diagnostic: Option<&'a str>,
    pub remote_mta: Option<&'a str>,
    /// A sentence for people.
    pub explanation: &'a str,
    /// The header block of the original message.
    pub original_headers: &'a [u8],
    pub message_id: &'a str,
    /// Seconds since the Unix epoch, for the Date header.
    pub date_s: i64,
}

/// An RFC 3464 report: multipart/report with a human part, message/delivery-status and the
/// original's headers (text/rfc822-headers).
pub fn dsn(d: &Dsn) -> Vec<u8> {
    let mut fields = format!("Reporting-MTA: dns; {}\r\n\r\n", d.reporting_mta);
    fields.push_str(&format!(
        "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n",
        d.recipient, d.action, d.status
    ));
    if let Some(remote) = d.remote_mta {
        fields.push_str(&format!("Remote-MTA: dns; {remote}\r\n"));
    }
    if let Some(diag) = d.diagnostic {
        fields.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", one_line(diag)));
    }
    let human = format!(
        "This is the mail system at host {}.\r\n\r\nYour message could not be delivered to {}.\r\n{}\r\n",
        d.reporting_mta, d.recipient, d.explanation
    );
    let report = MimePart::new(
        ContentType::new("multipart/report")
            .attribute("report-type", "delivery-status")
            .attribute("boundary", boundary(d.message_id, d.date_s)),
        vec![
            MimePart::new("text/plain", human),
            MimePart::new(
                ContentType::new("message/delivery-status"),
                fields.into_bytes(),
            )
            .transfer_encoding("7bit"),
            MimePart::new(
                ContentType::new("text/rfc822-headers"),
                d.original_headers.to_vec(),
            )
            .transfer_encoding("7bit"),
        ],
    );
    let from = format!("MAILER-DAEMON@{}", d.reporting_mta);
    MessageBuilder::new()
        .from(("Mail Delivery System", from.as_str()))
        .to(d.to)
        .subject(format!(
            "Undelivered Mail Returned to Sender: {}",
            d.recipient
        ))
        .message_id(d.message_id)
        .date(d.date_s)
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(report)
        .write_to_vec()
        .unwrap_or_default()
}

/// What an abuse report says.
#[derive(Debug, Clone)]
pub struct Arf<'a> {
    /// The reporting domain (From: abuse@...).
    pub reporter: &'a str,
    pub to: &'a str,
    /// The complaining user (Original-Rcpt-To).
    pub recipient: &'a str,
    /// The original's envelope sender.
    pub mail_from: &'a str,
    pub source_ip: &'a str,
    /// The header block of the original message.
    pub original_headers: &'a [u8],
    pub message_id: &'a str,
    pub date_s: i64,
}

/// An RFC 5965 report (Feedback-Type: abuse) with the original's headers.
pub fn arf(a: &Arf) -> Vec<u8> {
    let fields = format!(
        "Feedback-Type: abuse\r\nUser-Agent: mailsim-fleet/1.0\r\nVersion: 1\r\nOriginal-Mail-From: <{}>\r\nOriginal-Rcpt-To: <{}>\r\nSource-IP: {}\r\nReported-Domain: {}\r\n",
        a.mail_from,
        a.recipient,
        a.source_ip,
        a.mail_from.rsplit_once('@').map_or("", |(_, d)| d)
    );
    let human = format!(
        "This is an email abuse report for a message received from IP {}: the recipient marked it as spam.\r\n",
        a.source_ip
    );
    let report = MimePart::new(
        ContentType::new("multipart/report")
            .attribute("report-type", "feedback-report")
            .attribute("boundary", boundary(a.message_id, a.date_s)),
        vec![
            MimePart::new("text/plain", human),
            MimePart::new(
                ContentType::new("message/feedback-report"),
                fields.into_bytes(),
            )
            .transfer_encoding("7bit"),
            MimePart::new(
                ContentType::new("text/rfc822-headers"),
                a.original_headers.to_vec(),
            )
            .transfer_encoding("7bit"),
        ],
    );
    let from = format!("abuse@{}", a.reporter);
    MessageBuilder::new()
        .from(("Feedback Loop", from.as_str()))
        .to(a.to)
        .subject("Abuse report")
        .message_id(a.message_id)
        .date(a.date_s)
        .body(report)
        .write_to_vec()
        .unwrap_or_default()
}

/// The report's MIME boundary, from its Message-ID and date: mail-builder's own comes from the
/// clock and a counter, and a virtual run must write the same bytes every time.
fn boundary(message_id: &str, date_s: i64) -> String {
    // FNV-1a (64 bits).
    let hash = message_id
        .bytes()
        .chain(date_s.to_be_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("=_mailsim_report_{hash:016x}")
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify_message;

    #[test]
    fn a_written_dsn_and_arf_are_read_back() {
        let report = Dsn {
            reporting_mta: "mta.mailsim.test",
            to: "bounces+7-bob=x.test@news.test",
            recipient: "bob@x.test",
            action: "failed",
            status: "5.2.2",
            diagnostic: Some("552 5.2.2 Mailbox full, quota exceeded"),
            remote_mta: Some("mx1.x.test"),
            explanation: "The remote server refused it permanently.",
            original_headers: b"From: news@news.test\r\nTo: bob@x.test\r\nSubject: hi\r\n",
            message_id: "dsn.7@mta.mailsim.test",
            date_s: 1_767_225_600,
        };
        let raw = dsn(&report);
        // The same report is the same bytes (a virtual run replays them).
        assert_eq!(raw, dsn(&report));
        assert!(String::from_utf8_lossy(&raw).contains("boundary=\"=_mailsim_report_"));
        let found = classify_message(&raw);
        assert_eq!(found.len(), 1, "{}", String::from_utf8_lossy(&raw));
        assert_eq!(found[0].recipient, "bob@x.test");
        assert_eq!(found[0].reason, "mailboxfull");
        assert_eq!(found[0].status, "5.2.2");

        let complaint = Arf {
            reporter: "x.test",
            to: "fbl@news.test",
            recipient: "carol@x.test",
            mail_from: "bounces+8-carol=x.test@news.test",
            source_ip: "127.0.0.1",
            original_headers: b"From: news@news.test\r\nTo: carol@x.test\r\n",
            message_id: "arf.8@x.test",
            date_s: 1_767_225_600,
        };
        let raw = arf(&complaint);
        assert_eq!(raw, arf(&complaint));
        let found = classify_message(&raw);
        assert_eq!(found.len(), 1, "{}", String::from_utf8_lossy(&raw));
        assert_eq!(found[0].recipient, "carol@x.test");
        assert_eq!(found[0].reason, "feedback");
    }
}
