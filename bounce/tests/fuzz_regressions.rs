//! Inputs the fuzzer found (tests/data/fuzz): each must be classified without a panic.

#[test]
fn fuzzer_findings_no_longer_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let _ = mailsim_bounce::classify_message(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0);
}

/// Found by an independent review: a plain bounce whose one line names the same address
/// 40,000 times (640 KB) took over a minute (every mention rescanned its line from the
/// start, twice). Now linear: about a second in a debug build; the bound only catches a
/// return of the quadratic path.
#[test]
fn one_long_line_of_many_mentions_is_read_once() {
    let mut raw = b"From: MAILER-DAEMON@x.test\r\nSubject: Undelivered\r\n\r\n".to_vec();
    for _ in 0..40_000 {
        raw.extend_from_slice(b"a@b.c 550 5.1.1 ");
    }
    raw.extend_from_slice(b"\r\n");
    let started = std::time::Instant::now();
    let found = mailsim_bounce::classify_message(&raw);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].recipient.as_str(), found[0].reason.as_str()),
        ("a@b.c", "userunknown")
    );
}

/// A DSN whose only recipient block names an X.400 address (no Original-Recipient) keeps its
/// status when the returned message names one recipient (it was dropped, and the reason with
/// it: onhold instead of emailtoolarge).
#[test]
fn an_x400_recipient_block_keeps_its_status() {
    let raw = b"From: MAILER-DAEMON@gw.test\r\nTo: s@s.test\r\nSubject: Undeliverable\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nYour message was not delivered.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: x400; gw.test\r\n\r\nFinal-Recipient: x400; /C=US/S=Smith/\r\nAction: failed\r\nStatus: 5.3.4\r\nDiagnostic-Code: smtp; 552 5.3.4 message too big\r\n--b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: s@s.test\r\nTo: user1@example.net\r\nSubject: hi\r\nMessage-ID: <1@s.test>\r\n--b--\r\n";
    let found = mailsim_bounce::classify_message(raw);
    assert_eq!(found.len(), 1);
    assert_eq!(
        (
            found[0].recipient.as_str(),
            found[0].status.as_str(),
            found[0].reason.as_str()
        ),
        ("user1@example.net", "5.3.4", "emailtoolarge")
    );
}

/// Found by an independent review: the prose about each recipient was found by searching the
/// text once per pair of recipients (a bounce listing 2,000 addresses, 95 KB, ran for minutes,
/// and froze `mailsim mta --mx`, which classifies on its runtime), and each recipient without
/// a diagnostic took a copy of the whole text (3,000 of them beside 1 MB of text: 3 GB).
/// Mentions are now found once, the context is shared, and the prose read for one report is
/// bounded. The time bound only catches a return of the quadratic path.
#[test]
fn reports_naming_thousands_of_recipients_cost_what_their_size_does() {
    let mut prose =
        b"From: MAILER-DAEMON@x.test\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\n"
            .to_vec();
    for i in 0..2_000 {
        prose.extend_from_slice(
            format!("<user{i}@example.com>: 550 5.1.1 user unknown\r\n").as_bytes(),
        );
    }
    let started = std::time::Instant::now();
    let found = mailsim_bounce::classify_message(&prose);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(found.len(), 2_000);
    assert!(
        found.iter().all(|c| c.reason == "userunknown"),
        "{:?}",
        found[0]
    );
    assert_eq!(found[1_999].recipient, "user1999@example.com");

    let mut dsn = b"From: MAILER-DAEMON@x.test\r\nSubject: Delivery Status Notification (Failure)\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    for _ in 0..20_000 {
        dsn.extend_from_slice(b"The message could not be delivered to some recipients.\r\n");
    }
    dsn.extend_from_slice(
        b"\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x.test\r\n",
    );
    for i in 0..3_000 {
        dsn.extend_from_slice(
            format!("\r\nFinal-Recipient: rfc822; user{i}@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n").as_bytes(),
        );
    }
    dsn.extend_from_slice(b"\r\n--b--\r\n");
    assert!(dsn.len() > 1_000_000);
    let started = std::time::Instant::now();
    let found = mailsim_bounce::classify_message(&dsn);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(found.len(), 3_000);
    assert!(
        found.iter().all(|c| c.reason == "userunknown" && c.hard),
        "{:?}",
        found[0]
    );
}

/// Found by an independent review: an RFC 6533 global DSN, whose recipients are of type
/// `utf-8` and may hold any Unicode (or `\x{HEX}` escapes), was not read at all.
#[test]
fn a_global_dsn_names_its_utf8_recipients() {
    let raw = "From: MAILER-DAEMON@x.test\r\nTo: a@s.test\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=global-delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYour message could not be delivered.\r\n\r\n--b\r\nContent-Type: message/global-delivery-status\r\n\r\nReporting-MTA: dns; x.test\r\n\r\nFinal-Recipient: utf-8; jörg@müller.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\nFinal-Recipient: utf-8; ren\\x{E9}@caf\\x{E9}.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n";
    let found = mailsim_bounce::classify_message(raw.as_bytes());
    let got: Vec<(&str, &str)> = found
        .iter()
        .map(|c| (c.recipient.as_str(), c.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("jörg@müller.example", "userunknown"),
            ("rené@café.example", "userunknown")
        ]
    );
}

/// A message saved with a line of spaces (or blank lines) before its header section, as one of
/// the bounce_email gem's samples is: the lines are passed over, not read as an empty header
/// section followed by a body.
#[test]
fn blank_lines_before_the_header_section_are_passed_over() {
    let dsn = "Delivered-To: a@s.test\r\nFrom: Mail Delivery Subsystem <mailer-daemon@googlemail.com>\r\nTo: a@s.test\r\nX-Failed-Recipients: ann@x.test\r\nSubject: Delivery Status Notification (Failure)\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\nDelivery to the following recipient failed permanently:\r\n\r\n     ann@x.test\r\n\r\nTechnical details of permanent failure:\r\nGoogle tried to deliver your message, but it was rejected by the server for the recipient domain x.test by mx.x.test. [192.0.2.1].\r\n\r\nThe error that the other server returned was:\r\n550 5.1.1 <ann@x.test>: Recipient address rejected: User unknown\r\n";
    let spaces = format!("{}\n", " ".repeat(255));
    for lead in ["", "   \r\n", "\r\n\r\n", "\t \n", &spaces] {
        let found = mailsim_bounce::classify_message(format!("{lead}{dsn}").as_bytes());
        let got: Vec<(&str, &str)> = found
            .iter()
            .map(|c| (c.recipient.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(got, [("ann@x.test", "userunknown")], "{lead:?}");
    }
}
