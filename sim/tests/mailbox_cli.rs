//! `mailsim mailbox` as a user runs it: accounts from `--users-file` with a password hashed by
//! `mailsim hash-password`, mail in by SMTP and read over IMAP by Python's smtplib and imaplib
//! (clients nobody here wrote), and failed logins answered after a delay that grows with each
//! failure (`--auth-delay-s`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in {line:?}"))
}

#[test]
fn mailbox_cli_with_a_users_file_and_growing_login_delays() {
    let dir = tempfile::tempdir().unwrap();
    let hashed = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(["hash-password", "s3cret"])
        .output()
        .unwrap();
    assert!(hashed.status.success());
    let hash = String::from_utf8(hashed.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("s3cret"));
    let users = dir.path().join("users.txt");
    std::fs::write(
        &users,
        format!("# accounts\nbob@example.test:{hash}\nalice:plain-pw\n"),
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("mailbox")
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["--domain", "example.test", "--users-file"])
        .arg(&users)
        .args([
            "--smtp",
            "127.0.0.1:0",
            "--imap",
            "127.0.0.1:0",
            "--auth-delay-s",
            "0.4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    while !ready.contains("ready") {
        ready.clear();
        assert!(
            out.read_line(&mut ready).unwrap() > 0,
            "exited before ready"
        );
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let port = |key: &str| field(&ready, key).rsplit(':').next().unwrap().to_string();
    let script = r#"
import imaplib, smtplib, sys, time
smtp_port, imap_port = int(sys.argv[1]), int(sys.argv[2])
s = smtplib.SMTP("127.0.0.1", smtp_port)
s.sendmail("someone@elsewhere.test", ["bob@example.test"],
           b"From: someone@elsewhere.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n")
s.quit()
delays = []
for _ in range(2):
    t = time.monotonic()
    try:
        imaplib.IMAP4("127.0.0.1", imap_port).login("bob", "wrong")
        print("wrong password accepted"); sys.exit(1)
    except imaplib.IMAP4.error:
        delays.append(time.monotonic() - t)
m = imaplib.IMAP4("127.0.0.1", imap_port)
m.login("bob", "s3cret")
typ, data = m.select("INBOX")
print("messages", int(data[0]))
typ, data = m.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
print("subject", data[0][1].decode().strip())
m.logout()
m = imaplib.IMAP4("127.0.0.1", imap_port)
m.login("alice", "plain-pw")
typ, data = m.select("INBOX")
print("alice", int(data[0]))
m.logout()
print("delays %.2f %.2f" % (delays[0], delays[1]))
"#;
    let py = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(port("smtp"))
        .arg(port("imap"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&py.stdout).to_string();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(
        py.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert!(text.contains("messages 1\n"), "{text}");
    assert!(text.contains("subject Subject: hi"), "{text}");
    assert!(text.contains("alice 0\n"), "{text}");
    let delays: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("delays "))
        .unwrap()
        .split(' ')
        .map(|d| d.parse().unwrap())
        .collect();
    // The first failure waits 0.4 s, the second 0.8 s (the delay times the failures so far).
    assert!(delays[0] >= 0.4 && delays[1] >= 0.8, "{delays:?}");
    assert!(delays[1] > delays[0], "{delays:?}");
    assert!(
        status.success(),
        "mailsim mailbox did not shut down cleanly: {status}"
    );
}
