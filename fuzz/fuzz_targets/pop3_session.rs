//! Arbitrary client bytes into the sans-IO POP3 session over a temporary Maildir store: it must
//! never panic, and every response begins +OK, -ERR, "+ " or is part of a multi-line answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailsim_mailbox::folders::Mailstore;
use mailsim_mailbox::pop3::{Pop3Config, Session};
use mailsim_mailbox::shell::{LoginOutcome, Protocol, Step};
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let dir = tempfile::tempdir_in(base).unwrap();
    let store = Arc::new(Mailstore::new(dir.path(), 0));
    let user = "bob@example.test";
    store.deliver(user, b"Subject: one\r\n\r\n.leading dot\r\nline\r\n").unwrap();
    store.deliver(user, b"Subject: two\r\n\r\nbody").unwrap();
    let mut s = Session::new(Arc::new(Pop3Config::default()), store, true, true);
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
                Step::Idle | Step::NeedInput => break,
                Step::Close => {
                    s.take_output();
                    return;
                }
            }
        }
        let out = s.take_output();
        assert!(
            out.is_empty() || out.starts_with(b"+OK") || out.starts_with(b"-ERR") || out.starts_with(b"+ "),
            "{:?}",
            String::from_utf8_lossy(&out[..out.len().min(80)])
        );
    }
});
