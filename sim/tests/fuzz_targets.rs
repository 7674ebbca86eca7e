//! The cargo-fuzz targets (fuzz/src/lib.rs, included here) run in the ordinary suite: every seed,
//! then a few seconds of mutations of the seeds (bit flips, interesting bytes, protocol tokens,
//! deleted, repeated and spliced ranges). Not coverage-guided: that is scripts/fuzz.sh, which
//! needs an instrumented build; this runs the same bodies and assertions on every `.ci/run`.
//!
//! The mutations come from a fixed seed, so a run is reproducible up to how many inputs fit in the
//! time (MAILSIM_FUZZ_SECONDS, default 3 per target). An input that panics, or takes over 10 s,
//! is written to the test's temporary directory and named in the failure.

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const INPUT_BYTES_MAX: usize = 64 * 1024;
const SLOW: Duration = Duration::from_secs(10);

/// xorshift64*: small, fixed, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = b"\0\r\n \t.:<>{}[]()\"\\=-+*%~\x7f\x80\xc3\xff0129";

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>], tokens: &[&[u8]]) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if !tokens.is_empty() => {
                let t = tokens[rng.below(tokens.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, t.iter().copied());
            }
            3 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(32)).min(len);
                input.drain(from..to);
            }
            // A range repeated: long lines, deep nesting, many recipients, slow paths.
            4 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(64)).min(len);
                let piece = input[from..to].to_vec();
                let at = rng.below(len + 1);
                let most = if rng.below(8) == 0 { 2000 } else { 8 };
                let times = 1 + rng.below(most);
                let repeated: Vec<u8> = piece
                    .iter()
                    .copied()
                    .cycle()
                    .take(piece.len() * times)
                    .collect();
                input.splice(at..at, repeated);
            }
            5 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let at = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => input.truncate(rng.below(len)),
            _ => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
        }
    }
    input.truncate(INPUT_BYTES_MAX);
}

fn read_seeds(dirs: &[&str], extension: Option<&str>) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut seeds = Vec::new();
    for dir in dirs {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
            .filter(|p| extension.is_none_or(|x| p.extension().is_some_and(|e| e == x)))
            .collect();
        paths.sort();
        seeds.extend(paths.iter().map(|p| std::fs::read(p).unwrap()));
    }
    assert!(!seeds.is_empty(), "no seeds in {dirs:?}");
    seeds
}

/// Runs `target` on one input; a panic or a slow input is saved and reported.
fn run_one(name: &str, target: fn(&[u8]), input: &[u8]) {
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| target(input)));
    let took = started.elapsed();
    if outcome.is_ok() && took < SLOW {
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-findings")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{:016x}", fnv(input)));
    std::fs::write(&path, input).unwrap();
    let what = match outcome {
        Err(_) => "panicked (message above)".to_string(),
        Ok(()) => format!("took {took:?}"),
    };
    panic!(
        "fuzz target {name} {what} on {} bytes, saved as {}",
        input.len(),
        path.display()
    );
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn fuzz(name: &str, target: fn(&[u8]), seeds: Vec<Vec<u8>>, tokens: &[&[u8]]) {
    let budget = Duration::from_secs_f64(
        std::env::var("MAILSIM_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );
    for seed in &seeds {
        run_one(name, target, seed);
    }
    let started = Instant::now();
    let mut rng = Rng(fnv(name.as_bytes()) | 1);
    let mut runs = 0u64;
    let mut input = Vec::new();
    while started.elapsed() < budget {
        // Most mutations build on the previous input; now and then start again from a seed.
        if runs.is_multiple_of(16) {
            input = seeds[rng.below(seeds.len())].clone();
        }
        mutate(&mut rng, &mut input, &seeds, tokens);
        run_one(name, target, &input);
        runs += 1;
    }
    eprintln!(
        "fuzz: target={name} seeds={} mutations={runs} in {:?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(runs > 0, "{name}: no mutation ran in {budget:?}");
}

#[test]
fn smtp_server_session() {
    fuzz(
        "smtp_server_session",
        targets::smtp_server_session,
        read_seeds(&["fuzz/seeds/smtp_server_session"], None),
        &[
            b"EHLO x\r\n",
            b"HELO x\r\n",
            b"MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME\r\n",
            b"RCPT TO:<c@d.test>\r\n",
            b"RCPT TO:<x@d.test>\r\n",
            b"DATA\r\n",
            b"\r\n.\r\n",
            b"BDAT 10 LAST\r\n",
            b"BDAT 4\r\n",
            b"RSET\r\n",
            b"NOOP\r\n",
            b"QUIT\r\n",
            b"STARTTLS\r\n",
            b"AUTH PLAIN AGJvYgBwdw==\r\n",
            b"VRFY a\r\n",
        ],
    );
}

#[test]
fn smtp_reply_parser() {
    fuzz(
        "smtp_reply_parser",
        targets::smtp_reply_parser,
        read_seeds(&["fuzz/seeds/smtp_reply_parser"], None),
        &[
            b"250-",
            b"250 ",
            b"354 ",
            b"421 4.7.0 ",
            b"550 5.1.1 ",
            b"\r\n",
            b"\n",
            b"999 ",
            b"2.0.0 ",
        ],
    );
}

#[test]
fn bounce_classify() {
    fuzz(
        "bounce_classify",
        targets::bounce_classify,
        read_seeds(
            &["bounce/tests/data/sisimai/eml", "bounce/tests/data/fuzz"],
            None,
        ),
        &[
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n",
            b"\r\n--b\r\n",
            b"--b--\r\n",
            b"Content-Type: message/delivery-status\r\n\r\n",
            b"Content-Type: message/feedback-report\r\n\r\n",
            b"Content-Type: message/rfc822\r\n\r\n",
            b"Final-Recipient: rfc822; a@b.test\r\n",
            b"Original-Recipient: rfc822;x@y\r\n",
            b"Action: failed\r\n",
            b"Status: 5.1.1\r\n",
            b"Diagnostic-Code: smtp; 550 5.1.1 <a@b.test>: user unknown\r\n",
            b"Content-Transfer-Encoding: base64\r\n",
            b"Content-Transfer-Encoding: quoted-printable\r\n",
            b"=?utf-8?b?w6k=?=",
            b"=\r\n",
            b"<a@b.test>",
        ],
    );
}

#[test]
fn scenario_loader() {
    fuzz(
        "scenario_loader",
        targets::scenario_loader,
        read_seeds(&["scenarios"], Some("toml")),
        &[
            b"\n[campaign]\n",
            b"\n[[domain]]\n",
            b"\n[reputation]\n",
            b"\n[[segment]]\n",
            b"\n[[fault]]\n",
            b"messages = 99999999999999999999\n",
            b"rate = -1.5\n",
            b"= \"\"\n",
            b"schedule = [0, -1]\n",
            b"mode = \"virtual\"\n",
            b"at_s = 1e308\n",
            b"\"\\u0000\"",
            b"[",
            b"]",
        ],
    );
}

#[test]
fn imap_session() {
    fuzz(
        "imap_session",
        targets::imap_session,
        read_seeds(&["fuzz/seeds/imap_session"], None),
        &[
            b"a LOGIN bob pw\r\n",
            b"a SELECT INBOX\r\n",
            b"a EXAMINE a/b\r\n",
            b"a FETCH 1:* (FLAGS BODY[] ENVELOPE BODYSTRUCTURE)\r\n",
            b"a UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.10>)\r\n",
            b"a STORE 1 +FLAGS (\\Seen)\r\n",
            b"a SEARCH OR FROM a SUBJECT one\r\n",
            b"a LIST \"\" %\r\n",
            b"a APPEND INBOX {10}\r\n",
            b"{4}\r\n",
            b"a IDLE\r\nDONE\r\n",
            b"a COPY 1 a/b/c\r\n",
            b"a EXPUNGE\r\n",
            b"a STARTTLS\r\n",
            b"a AUTHENTICATE PLAIN\r\n",
            b"\xff",
        ],
    );
}

#[test]
fn pop3_session() {
    fuzz(
        "pop3_session",
        targets::pop3_session,
        read_seeds(&["fuzz/seeds/pop3_session"], None),
        &[
            b"USER bob\r\n",
            b"PASS pw\r\n",
            b"STAT\r\n",
            b"LIST\r\n",
            b"RETR 1\r\n",
            b"TOP 2 0\r\n",
            b"UIDL 1\r\n",
            b"DELE 1\r\n",
            b"RSET\r\n",
            b"STLS\r\n",
            b"AUTH PLAIN\r\n",
            b"CAPA\r\n",
            b"QUIT\r\n",
            b"\xff",
        ],
    );
}

/// Small logs in both formats, with lists, maps, options and replies.
fn log_seeds() -> Vec<Vec<u8>> {
    use mailsim_events::{Durability, Event, EventLog, Format, Reply, SmtpReply};
    struct At(u64);
    impl mailsim_events::Clock for At {
        fn now_ms(&self) -> u64 {
            self.0
        }
    }
    let events = || {
        vec![
            Event::RunStarted {
                scenario: "s".into(),
                seed: 7,
                mode: "virtual".into(),
                dmarc_records: [("a.test".to_string(), "v=DMARC1; p=none".to_string())].into(),
                spf_records: Default::default(),
                profiles: [("b.test".to_string(), "gmail-like".to_string())].into(),
            },
            Event::SmtpReply {
                conn: 1,
                msg: Some(2),
                reply: SmtpReply::new("RCPT", &Reply::new(550, (5, 1, 1), "no such user")),
            },
            Event::Deferred {
                msg: 2,
                rcpt: "u@b.test".into(),
                domain: "b.test".into(),
                attempts: 1,
                retry_at_ms: 1_000,
                reason: "greylisted".into(),
                reply: Some(SmtpReply::new("RCPT", &Reply::new(451, (4, 7, 1), "later"))),
            },
            Event::DnsAnswer {
                domain: "b.test".into(),
                qtype: "MX".into(),
                answer: vec!["10 mx.b.test".into()],
                error: None,
            },
            Event::RunFinished {
                reason: "drained".into(),
            },
        ]
    };
    let dir = tempfile::tempdir().unwrap();
    [Format::Binary, Format::Json]
        .into_iter()
        .map(|format| {
            let path = dir.path().join(format!("{format:?}.log"));
            let log = EventLog::create_in(
                &path,
                std::sync::Arc::new(At(1_767_225_600_000)),
                Durability::OnFlush,
                format,
            )
            .unwrap();
            for e in events() {
                log.sink().emit(e);
            }
            log.close().unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect()
}

#[test]
fn log_file() {
    fuzz(
        "log_file",
        targets::log_file,
        [read_seeds(&["fuzz/seeds/log_file"], None), log_seeds()].concat(),
        &[
            b"MSIMLOG\0\x02\0\0\0",
            b"MSIMLOG\0\x01\0\0\0",
            b"\xb2",
            b"{\"seq\":",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            b"\0\0\0\0\0\0\0\0",
        ],
    );
}
