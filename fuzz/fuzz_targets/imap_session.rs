//! Arbitrary client bytes into the sans-IO IMAP session over a real (temporary) Maildir store:
//! it must never panic, and every response line must be tagged, untagged or a continuation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailsim_mailbox::folders::Mailstore;
use mailsim_mailbox::imap::{ImapConfig, Session};
use mailsim_mailbox::shell::{LoginOutcome, Protocol, Step};
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::tempdir_in(base).unwrap();
    let store = Arc::new(Mailstore::new(dir.path(), 64 * 1024));
    let user = "bob@example.test";
    store
        .deliver(user, b"From: a@b.test\r\nSubject: one\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n--x--\r\n")
        .unwrap();
    store.deliver(user, b"Subject: two\r\n\r\nbody\r\n").unwrap();
    // Nested folders, so that LIST wildcards have levels to match (issue 13, item 1).
    store.create(user, "a/b/c").unwrap();
    let cfg = ImapConfig {
        line_bytes_max: 1024,
        literal_bytes_max: 4096,
        ..ImapConfig::default()
    };
    let mut s = Session::new(Arc::new(cfg), store, true, true);
    let mut out = s.take_output();
    // Feed in chunks cut where the input says, to exercise partial lines and literals.
    for chunk in data.split_inclusive(|&b| b == 0xff) {
        s.feed(chunk);
        loop {
            match s.step() {
                Step::Authenticate { login, password } => {
                    let ok = login.eq_ignore_ascii_case("bob") && password == b"pw";
                    s.auth_done(if ok {
                        LoginOutcome::Accepted(user.to_string())
                    } else {
                        LoginOutcome::Rejected
                    });
                }
                Step::StartTls => s.tls_started(),
                Step::Idle => {
                    s.idle_poll();
                    break;
                }
                Step::NeedInput => break,
                Step::Close => {
                    out.extend(s.take_output());
                    return check(&out);
                }
            }
            out.extend(s.take_output());
        }
        out.extend(s.take_output());
    }
    check(&out);
});

fn check(out: &[u8]) {
    let mut rest = out;
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |p| p + 1);
        let line = &rest[..end];
        rest = &rest[end..];
        assert!(!line.is_empty());
        // A literal's data follows its announcing line; skip it.
        let trimmed = line.strip_suffix(b"\r\n").unwrap_or(line);
        if let Some(open) = trimmed.iter().rposition(|&b| b == b'{')
            && trimmed.ends_with(b"}")
            && let Ok(n) = std::str::from_utf8(&trimmed[open + 1..trimmed.len() - 1])
                .unwrap_or("")
                .parse::<usize>()
        {
            rest = &rest[n.min(rest.len())..];
        }
    }
}
