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
