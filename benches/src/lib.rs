//! Fixtures shared by mailsim's criterion benchmarks (`benches/micro.rs`).

/// A plausible newsletter message of about `size_bytes`, CRLF line endings.
pub fn sample_message(size_bytes: usize) -> Vec<u8> {
    let mut m = String::from(
        "From: Newsletter <news@news.example.test>\r\nTo: user1@accept.test\r\nSubject: Our November newsletter\r\n\
         Date: Fri, 27 Nov 2026 20:00:00 +0000\r\nMessage-ID: <1.42@news.example.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    while m.len() < size_bytes {
        m.push_str(
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n",
        );
    }
    m.into_bytes()
}

/// A pipelined server reply stream: EHLO, then `n` transactions of MAIL/RCPT/DATA/end-of-data.
pub fn reply_stream(n: usize) -> Vec<u8> {
    let mut out = b"250-mx1.accept.test hello\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n250 ENHANCEDSTATUSCODES\r\n".to_vec();
    for i in 0..n {
        out.extend_from_slice(b"250 2.1.0 sender OK\r\n250 2.1.5 recipient OK\r\n354 end data with <CR><LF>.<CR><LF>\r\n");
        out.extend_from_slice(format!("250 2.0.0 OK queued as {i}\r\n").as_bytes());
    }
    out
}

/// A queue entry like the campaign's (one recipient of a 5 KB message).
pub fn queue_entry(id: u64) -> mailsim_mta::queue::QueueEntry {
    mailsim_mta::queue::QueueEntry {
        id,
        message_id: format!("<{id}.42@news.example.test>"),
        from: format!("bounces+{id}-user{id}=accept.test@news.example.test"),
        rcpt: format!("user{id}@accept.test"),
        domain: ["accept.test", "big.test", "flaky.test", "unknown.test"][(id % 4) as usize].into(),
        spool: mailsim_mta::spool::SpoolRef {
            segment: id / 1000,
            offset: (id % 1000) * 5200,
            len: 5200,
        },
        injected_ms: 1_767_225_600_000,
        attempts: 0,
        lane: mailsim_mta::queue::Lane::Bulk,
    }
}
