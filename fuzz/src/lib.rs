//! The fuzz targets' bodies, one function each. The cargo-fuzz binaries under fuzz_targets/ call
//! them with libFuzzer's inputs; the main workspace's test `sim/tests/fuzz_targets.rs` includes
//! this file and runs each on its seeds and their mutations, so `.ci/run` exercises them without
//! an instrumented build.

use mailsim::scenario::Scenario;
use mailsim_mailbox::folders::Mailstore;
use mailsim_mailbox::imap::{self, ImapConfig};
use mailsim_mailbox::pop3::{self, Pop3Config};
use mailsim_mailbox::shell::{LoginOutcome, Protocol, Step};
use mailsim_smtp::Reply;
use mailsim_smtp::ReplyReader;
use mailsim_smtp::server::{Backend, ServerConfig, SessionInfo, Transaction, handle_session};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Accept;

impl Backend for Accept {
    fn on_connect(&self, _: &SessionInfo) -> Option<Reply> {
        None
    }
    fn on_mail(&self, _: &SessionInfo, _: &str) -> Reply {
        Reply::new(250, (2, 1, 0), "ok")
    }
    async fn on_rcpt(&self, _: &SessionInfo, _: &Transaction, rcpt: &str) -> Reply {
        if rcpt.starts_with('x') {
            Reply::new(550, (5, 1, 1), "no")
        } else {
            Reply::new(250, (2, 1, 5), "ok")
        }
    }
    async fn on_data(&self, _: &SessionInfo, _: &Transaction, m: Vec<u8>) -> Reply {
        Reply::new(250, (2, 0, 0), format!("{} bytes", m.len()))
    }
}

/// Arbitrary client bytes into the inbound SMTP session (framer, command parser, DATA,
/// limits): it must never panic and must end when the client goes away.
pub fn smtp_server_session(data: &[u8]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(4096);
        let cfg = ServerConfig {
            command_line_bytes_max: 64,
            message_bytes_max: 512,
            rcpts_per_message_max: 3,
            idle_timeout: Duration::from_secs(5),
            ..ServerConfig::default()
        };
        let info = SessionInfo::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:25".parse().unwrap(),
        );
        let input = data.to_vec();
        // The client reads while it writes, as a pipelining client does: a client that never
        // reads is cut at the command timeout (mailbox/tests/hardening.rs), mid-reply.
        let feeder = tokio::spawn(async move {
            let (mut from_server, mut to_server) = tokio::io::split(client);
            let write = async move {
                let _ = to_server.write_all(&input).await;
                let _ = to_server.shutdown().await;
            };
            let read = async move {
                let mut out = Vec::new();
                let _ = from_server.read_to_end(&mut out).await;
                out
            };
            tokio::join!(write, read).1
        });
        handle_session(server, info, &Accept, &cfg).await;
        let out = feeder.await.unwrap();
        // Every reply line is a three-digit code and a separator.
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            assert!(
                line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit),
                "{line:?}"
            );
        }
    });
}

/// Arbitrary server bytes, in arbitrary chunks, into the client's reply reader.
pub fn smtp_reply_parser(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = if rest.is_empty() {
        0
    } else {
        split as usize % rest.len()
    };
    let mut reader = ReplyReader::default();
    for chunk in [&rest[..cut], &rest[cut..]] {
        let mut it = chunk.iter();
        loop {
            match reader.parse(&mut it) {
                Ok(Some(reply)) => {
                    assert!((200..=599).contains(&reply.code));
                    if let Some(e) = &reply.enhanced {
                        assert_eq!(e.split('.').count(), 3, "{e}");
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    reader = ReplyReader::default();
                    break;
                }
            }
        }
    }
}

/// Arbitrary messages into the bounce/complaint parser and classifier (DSN, ARF, free text).
pub fn bounce_classify(data: &[u8]) {
    for c in mailsim_bounce::classify_message(data) {
        assert!(!c.reason.is_empty());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mailsim_bounce::classify_reply(550, Some("5.1.1"), text, "RCPT");
        let _ = mailsim_bounce::classify_reply(451, None, text, "DATA");
    }
}

/// Arbitrary text into the scenario loader: an error names a place, never a panic.
pub fn scenario_loader(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Scenario::parse(text, Path::new("fuzz.toml")) {
        assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
    }
}

/// Arbitrary client bytes into the sans-IO IMAP session over a real (temporary) Maildir store:
/// it must never panic, and every response line must be tagged, untagged or a continuation.
pub fn imap_session(data: &[u8]) {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let dir = tempfile::tempdir_in(base).unwrap();
    let store = Arc::new(Mailstore::new(dir.path(), 64 * 1024));
    let user = "bob@example.test";
    store
        .deliver(user, b"From: a@b.test\r\nSubject: one\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhello\r\n--x--\r\n")
        .unwrap();
    store
        .deliver(user, b"Subject: two\r\n\r\nbody\r\n")
        .unwrap();
    // Nested folders, so that LIST wildcards have levels to match (issue 13, item 1).
    store.create(user, "a/b/c").unwrap();
    let cfg = ImapConfig {
        line_bytes_max: 1024,
        literal_bytes_max: 4096,
        ..ImapConfig::default()
    };
    let mut s = imap::Session::new(Arc::new(cfg), store, true, true);
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
                // The shell sends the output and steps again.
                Step::Flush => out.extend(s.take_output()),
                Step::Idle => {
                    s.idle_poll();
                    break;
                }
                Step::NeedInput => break,
                Step::Close => {
                    out.extend(s.take_output());
                    return check_imap_output(&out);
                }
            }
            out.extend(s.take_output());
        }
        out.extend(s.take_output());
    }
    check_imap_output(&out);
}

fn check_imap_output(out: &[u8]) {
    let mut rest = out;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |p| p + 1);
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

/// Arbitrary client bytes into the sans-IO POP3 session over a temporary Maildir store: it must
/// never panic, and every response begins +OK, -ERR, "+ " or is part of a multi-line answer.
pub fn pop3_session(data: &[u8]) {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let dir = tempfile::tempdir_in(base).unwrap();
    let store = Arc::new(Mailstore::new(dir.path(), 0));
    let user = "bob@example.test";
    store
        .deliver(user, b"Subject: one\r\n\r\n.leading dot\r\nline\r\n")
        .unwrap();
    store.deliver(user, b"Subject: two\r\n\r\nbody").unwrap();
    let mut s = pop3::Session::new(Arc::new(Pop3Config::default()), store, true, true);
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
                Step::Flush => {
                    s.take_output();
                }
                Step::Idle | Step::NeedInput => break,
                Step::Close => {
                    s.take_output();
                    return;
                }
            }
        }
        let out = s.take_output();
        assert!(
            out.is_empty()
                || out.starts_with(b"+OK")
                || out.starts_with(b"-ERR")
                || out.starts_with(b"+ "),
            "{:?}",
            String::from_utf8_lossy(&out[..out.len().min(80)])
        );
    }
}

/// Arbitrary bytes as an event log file (header, frames, payloads in either format): every
/// reader (strict, salvaging, repair) ends with records or an error, never a panic; a record
/// that reads is the same record again through the binary encoding.
pub fn log_file(data: &[u8]) {
    use mailsim_events::{LogReader, Record, read_log, repair};
    let same_again = |r: &Record| {
        let mut b = Vec::new();
        r.put_binary(&mut b);
        assert_eq!(
            &Record::from_binary(&b).expect("a record re-encoded reads"),
            r
        );
    };
    if let Ok(r) = Record::from_payload(data) {
        same_again(&r);
    }
    // Each frame's payload decoded whatever its checksum says (a mutation seldom keeps one
    // right): the decoders see damaged payloads.
    let mut at = 12usize;
    while let Some(head) = data.get(at..at + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let Some(payload) = data.get(at + 8..(at + 8).saturating_add(len)) else {
            break;
        };
        if let Ok(r) = Record::from_payload(payload) {
            same_again(&r);
        }
        at += 8 + len;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.log");
    std::fs::write(&path, data).unwrap();
    if let Ok((records, _)) = read_log(&path) {
        records.iter().for_each(same_again);
    }
    if let Ok(reader) = LogReader::open(&path) {
        for r in reader.salvaging().flatten() {
            same_again(&r);
        }
    }
    let _ = repair(&path);
}
