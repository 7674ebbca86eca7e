//! The mailbox server checked by clients nobody here wrote: Python's smtplib, imaplib and
//! poplib (tests/clients.py), curl (smtp://, imap://, pop3://) and swaks, over loopback.
//! `.ci/run` installs curl and swaks; a missing tool fails the test, it is not skipped.

use fake_dns::{DnsServer, RecordData, ZoneSet};
use mailsim_mailbox::server::{self, MailboxConfig, Running};
use mailsim_mailbox::users::Users;
use mailsim_smtp::tls::Tls;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

fn loopback() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

async fn start(data: &std::path::Path, dns: SocketAddr) -> Running {
    let mut users = Users::new(&["example.test".into()]);
    users.add_spec("bob:secret", "test").unwrap();
    users.add_spec("alice:secret2", "test").unwrap();
    let mut cfg = MailboxConfig::new(data.to_path_buf(), users);
    cfg.hostname = "mx.example.test".into();
    cfg.smtp = loopback();
    cfg.submission = loopback();
    cfg.imap = loopback();
    cfg.pop3 = loopback();
    cfg.tls = Some(Tls::self_signed(&["mx.example.test".into()]).unwrap());
    cfg.dns = Some(fake_dns::resolver_for(dns));
    cfg.login.failure_delay = Duration::from_millis(50);
    server::start(cfg).await.unwrap()
}

/// SPF for the sending domain, so that inbound mail gets a real verdict.
async fn dns() -> DnsServer {
    let mut zones = ZoneSet::new();
    zones.add_zone("other.test");
    zones.add(
        "other.test",
        RecordData::Txt("v=spf1 ip4:127.0.0.1 -all".into()),
    );
    zones.add(
        "_dmarc.other.test",
        RecordData::Txt("v=DMARC1; p=none".into()),
    );
    DnsServer::start(&zones, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run ({e}); .ci/run installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// The messages of a Maildir (new and cur), as text.
fn maildir_texts(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("new"))
        .into_iter()
        .chain(std::fs::read_dir(dir.join("cur")))
        .flatten()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect()
}

async fn blocking(mut cmd: Command, what: &'static str) -> String {
    tokio::task::spawn_blocking(move || run(&mut cmd, what))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_read_what_smtp_delivered_and_relaying_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns().await;
    let srv = start(dir.path(), dns.addr()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    for a in [srv.smtp, srv.submission, srv.imap, srv.pop3] {
        cmd.arg(a.unwrap().port().to_string());
    }
    let text = blocking(cmd, "python3 tests/clients.py").await;
    assert!(text.contains("all client checks passed"), "{text}");
    // The SPF verdict for the inbound message is a real one from the DNS above.
    let bob = srv.store.user_dir("bob@example.test");
    let mut found = false;
    for e in std::fs::read_dir(bob.join("cur")).unwrap().flatten() {
        let body = std::fs::read_to_string(e.path()).unwrap();
        if body.contains("hello bob") {
            assert!(body.contains("spf=pass"), "{body}");
            // Unsigned: the DKIM clause says none (RFC 8601 section 2.7.1), not nothing.
            let ar = body
                .split("\r\n")
                .skip_while(|l| !l.starts_with("Authentication-Results:"))
                .take_while(|l| l.starts_with("Authentication-Results:") || l.starts_with('\t'))
                .flat_map(str::split_whitespace)
                .collect::<Vec<_>>()
                .join(" ");
            assert!(ar.contains("; dkim=none; dmarc="), "{ar}");
            found = true;
        }
    }
    assert!(found, "bob's message is stored");
    srv.shutdown().await;
    dns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_swaks() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns().await;
    let srv = start(dir.path(), dns.addr()).await;
    let (smtp, sub, imap, pop3) = (
        srv.smtp.unwrap(),
        srv.submission.unwrap(),
        srv.imap.unwrap(),
        srv.pop3.unwrap(),
    );
    // swaks: submission with STARTTLS and AUTH PLAIN.
    let mut swaks = Command::new("swaks");
    swaks.args([
        "--server",
        &sub.to_string(),
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "bob",
        "--auth-password",
        "secret",
        "--from",
        "bob@example.test",
        "--to",
        "alice@example.test",
        "--header",
        "Subject: by swaks",
        "--body",
        "swaks body",
    ]);
    let text = blocking(swaks, "swaks (submission)").await;
    assert!(text.contains("235 2.7.0"), "{text}");
    // swaks trying to relay through the MX port is refused.
    let mut relay = Command::new("swaks");
    relay.args([
        "--server",
        &smtp.to_string(),
        "--from",
        "x@other.test",
        "--to",
        "victim@elsewhere.test",
        "--quit-after",
        "RCPT",
    ]);
    let out = tokio::task::spawn_blocking(move || relay.output().expect("swaks installed"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("554 5.7.1"), "{text}");
    // curl: SMTP in through the MX port, then read over IMAP (STARTTLS required) and POP3.
    let msg = dir.path().join("msg.eml");
    std::fs::write(
        &msg,
        "From: carol@other.test\r\nSubject: by curl\r\n\r\ncurl body\r\n",
    )
    .unwrap();
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        &format!("smtp://{smtp}"),
        "--mail-from",
        "carol@other.test",
        "--mail-rcpt",
        "alice@example.test",
        "-T",
    ])
    .arg(&msg);
    blocking(c, "curl smtp://").await;
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--ssl-reqd",
        "-k",
        "--user",
        "alice:secret2",
        &format!("imap://{imap}/INBOX"),
        "-X",
        "SEARCH SUBJECT curl",
    ]);
    let text = blocking(c, "curl imap:// SEARCH").await;
    assert!(text.contains("* SEARCH 2"), "{text}");
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--ssl-reqd",
        "-k",
        "--user",
        "alice:secret2",
        &format!("imap://{imap}/INBOX;UID=2"),
    ]);
    let text = blocking(c, "curl imap:// fetch").await;
    assert!(text.contains("curl body"), "{text}");
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--user",
        "alice:secret2",
        &format!("pop3://{pop3}/1"),
    ]);
    let text = blocking(c, "curl pop3:// RETR").await;
    assert!(text.contains("swaks body"), "{text}");
    // A wrong password is refused by curl's IMAP login too.
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--user",
        "alice:wrong",
        &format!("imap://{imap}/INBOX"),
    ]);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success());
    srv.shutdown().await;
    dns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_survives_a_restart_with_uids_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns().await;
    let srv = start(dir.path(), dns.addr()).await;
    srv.store
        .deliver("bob@example.test", b"Subject: keep\r\n\r\nme\r\n")
        .unwrap();
    let inbox = srv.store.folder("bob@example.test", "INBOX").unwrap();
    let (validity, uid) = {
        let mut f = mailsim_mailbox::folders::lock(&inbox);
        let m = f.messages.last_mut().unwrap();
        m.flags.insert_name("\\Flagged");
        let uid = m.uid;
        f.write_index().unwrap();
        (f.uidvalidity, uid)
    };
    srv.shutdown().await;
    let srv = start(dir.path(), dns.addr()).await;
    let inbox = srv.store.folder("bob@example.test", "INBOX").unwrap();
    {
        let f = mailsim_mailbox::folders::lock(&inbox);
        assert_eq!(f.uidvalidity, validity);
        let m = f.find(uid).expect("same UID after restart");
        assert!(m.flags.has(mailsim_mailbox::folders::SystemFlag::Flagged));
    }
    srv.shutdown().await;
    dns.shutdown().await;
}

/// Our server (bob at example.test, submission with STARTTLS) relaying through the MX of
/// another (carol, dave and erin at other.test, 5,000 bytes of quota each), the receiving
/// side of that domain, where the relayed copies can be checked.
async fn relaying_pair(
    dir: &std::path::Path,
    dns: &DnsServer,
) -> (server::Running, server::Running) {
    let mut users = Users::new(&["other.test".into()]);
    for spec in ["carol:pw", "dave:pw", "erin:pw"] {
        users.add_spec(spec, "test").unwrap();
    }
    let mut cfg = MailboxConfig::new(dir.join("other"), users);
    cfg.smtp = loopback();
    cfg.dns = Some(fake_dns::resolver_for(dns.addr()));
    cfg.quota_bytes = 5000;
    let other = server::start(cfg).await.unwrap();
    let mut users = Users::new(&["example.test".into()]);
    users.add_spec("bob:secret", "test").unwrap();
    let mut cfg = MailboxConfig::new(dir.join("ours"), users);
    cfg.submission = loopback();
    cfg.tls = Some(Tls::self_signed(&["mx.example.test".into()]).unwrap());
    cfg.dns = Some(fake_dns::resolver_for(dns.addr()));
    cfg.relay = other.smtp;
    (server::start(cfg).await.unwrap(), other)
}

/// Submission for another domain goes out through the relay MTA; here the relay is a second
/// mailbox server's MX (the receiving side of that domain), so the copy can be checked there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_relays_other_domains_and_quota_fills_with_452() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns().await;
    let (ours, other) = relaying_pair(dir.path(), &dns).await;
    let script = r#"
import smtplib, ssl, sys
tls = ssl.create_default_context(); tls.check_hostname = False; tls.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1])); s.starttls(context=tls); s.login("bob", "secret")
body = b"From: bob@example.test\r\nTo: carol@other.test\r\nSubject: relayed\r\n\r\n" + b"x" * 1200 + b"\r\n"
print(s.sendmail("bob@example.test", ["carol@other.test"], body))
print(s.sendmail("bob@example.test", ["carol@other.test"], body))
try:
    s.sendmail("bob@example.test", ["carol@other.test"], body)
    print("third accepted")
except smtplib.SMTPException as e:
    print("third refused", e)
# Two recipients in one message: each copy's Received field names neither (Bcc).
print(s.sendmail("bob@example.test", ["dave@other.test", "erin@other.test"],
                 b"From: bob@example.test\r\nTo: dave@other.test\r\nSubject: two\r\n\r\nhi\r\n"))
# Bob writing Carol's address as the author is refused.
try:
    s.sendmail("bob@example.test", ["dave@other.test"],
               b"From: Carol <carol@other.test>\r\nSubject: spoof\r\n\r\nhi\r\n")
    print("spoof accepted")
except smtplib.SMTPException as e:
    print("spoof refused", e)
s.quit()
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script, &ours.submission.unwrap().port().to_string()]);
    let text = blocking(cmd, "python3 relay").await;
    // Two copies (about 1.8 KB each with the headers added) fit in carol's 5,000 bytes; the
    // third is over quota: the relay passes the receiving server's 452 4.2.2 back.
    assert!(
        text.contains("third refused") && text.contains("452") && text.contains("4.2.2"),
        "{text}"
    );
    let read = |user: &str| maildir_texts(&other.store.user_dir(user));
    let stored = read("carol@other.test");
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert!(stored[0].contains("with ESMTPSA") && stored[0].contains("Subject: relayed"));
    assert!(
        text.contains("spoof refused") && text.contains("553") && text.contains("carol@other.test"),
        "{text}"
    );
    // Erin was a blind copy (To names Dave only): Dave's copy does not name her. Our Received
    // field names no recipient; the receiving server's own names the one it delivered to.
    let (dave, erin) = (read("dave@other.test"), read("erin@other.test"));
    assert_eq!((dave.len(), erin.len()), (1, 1), "{dave:?} {erin:?}");
    assert!(!dave[0].contains("erin@other.test"), "{}", dave[0]);
    assert!(
        erin[0].contains("with ESMTPSA;") && erin[0].contains("for <erin@other.test>"),
        "{}",
        erin[0]
    );
    ours.shutdown().await;
    other.shutdown().await;
    dns.shutdown().await;
}

/// IMAP IDLE: a message delivered while a client idles is announced as EXISTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_announces_new_mail() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let dns = dns().await;
    let srv = start(dir.path(), dns.addr()).await;
    let stream = tokio::net::TcpStream::connect(srv.imap.unwrap())
        .await
        .unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut read_until = async |r: &mut BufReader<_>, needle: &str| -> String {
        let mut seen = String::new();
        loop {
            line.clear();
            let n = tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
                .await
                .expect("server answers")
                .unwrap();
            assert!(n > 0, "closed; saw {seen}");
            seen.push_str(&line);
            if line.contains(needle) {
                return seen;
            }
        }
    };
    read_until(&mut r, "OK").await;
    w.write_all(b"a LOGIN bob secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
        .await
        .unwrap();
    let seen = read_until(&mut r, "+ idling").await;
    assert!(seen.contains("* 0 EXISTS"), "{seen}");
    srv.store
        .deliver("bob@example.test", b"Subject: ping\r\n\r\nhi\r\n")
        .unwrap();
    let seen = read_until(&mut r, "EXISTS").await;
    assert!(seen.contains("* 1 EXISTS"), "{seen}");
    w.write_all(b"DONE\r\nd LOGOUT\r\n").await.unwrap();
    let seen = read_until(&mut r, "d OK").await;
    assert!(seen.contains("c OK"), "{seen}");
    srv.shutdown().await;
    dns.shutdown().await;
}

/// A message for a local and a remote recipient while the relay is down: refused whole (451)
/// and nothing kept, so that the client's retries leave the local recipient no copies (an
/// independent review: one per attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_relay_leaves_no_local_copy_behind() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut users = Users::new(&["example.test".into()]);
    for spec in ["bob:secret", "alice:pw"] {
        users.add_spec(spec, "test").unwrap();
    }
    let mut cfg = MailboxConfig::new(dir.path().join("ours"), users);
    cfg.submission = loopback();
    cfg.tls = Some(Tls::self_signed(&["mx.example.test".into()]).unwrap());
    cfg.dns = Some(fake_dns::resolver_for(dns.addr()));
    cfg.relay = Some(closed);
    let ours = server::start(cfg).await.unwrap();
    let script = r#"
import smtplib, ssl, sys
tls = ssl.create_default_context(); tls.check_hostname = False; tls.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1])); s.starttls(context=tls); s.login("bob", "secret")
for attempt in range(3):
    try:
        s.sendmail("bob@example.test", ["alice@example.test", "carol@other.test"],
                   b"From: bob@example.test\r\nSubject: both\r\n\r\nhi\r\n")
        print("accepted")
    except smtplib.SMTPException as e:
        print("refused", e)
s.quit()
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script, &ours.submission.unwrap().port().to_string()]);
    let text = blocking(cmd, "python3 relay down").await;
    assert_eq!(text.matches("refused").count(), 3, "{text}");
    assert!(text.contains("451"), "{text}");
    let kept = maildir_texts(&ours.store.user_dir("alice@example.test")).len();
    assert_eq!(kept, 0, "copies left for alice by refused attempts");
    ours.shutdown().await;
    dns.shutdown().await;
}

/// A message the relay takes for one recipient and refuses for another: accepted (sent again,
/// it would reach the first twice), and the refusal reported to the sender by a DSN in their
/// own mailbox, which Python's email package reads as an RFC 3464 report. A message it
/// refuses for everyone is refused, with nothing reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_the_relay_refuses_after_another_is_reported_not_sent_twice() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns().await;
    let (ours, other) = relaying_pair(dir.path(), &dns).await;
    let script = r#"
import smtplib, ssl, sys
tls = ssl.create_default_context(); tls.check_hostname = False; tls.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1])); s.starttls(context=tls); s.login("bob", "secret")
msg = b"From: bob@example.test\r\nSubject: partly\r\nMessage-ID: <p1@example.test>\r\n\r\nhi\r\n"
print("first", s.sendmail("bob@example.test", ["dave@other.test", "nobody@other.test"], msg))
try:
    s.sendmail("bob@example.test", ["nobody@other.test"], msg)
    print("second accepted")
except smtplib.SMTPException as e:
    print("second refused", e)
s.quit()
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script, &ours.submission.unwrap().port().to_string()]);
    let text = blocking(cmd, "python3 partial relay").await;
    assert!(text.contains("first {}"), "{text}");
    assert!(
        text.contains("second refused") && text.contains("550"),
        "{text}"
    );
    assert_eq!(
        maildir_texts(&other.store.user_dir("dave@other.test")).len(),
        1
    );
    let reports = maildir_texts(&ours.store.user_dir("bob@example.test"));
    assert_eq!(reports.len(), 1, "{reports:?}");
    let read = r#"
import email, sys
m = email.message_from_string(sys.stdin.read())
print(m.get_content_type(), m.get_param("report-type"), m["To"])
for part in m.walk():
    if part.get_content_type() == "message/delivery-status":
        for block in part.get_payload():
            for k in ("Final-Recipient", "Action", "Status", "Diagnostic-Code"):
                if block[k]:
                    print(k, block[k])
    if part.get_content_type() == "text/rfc822-headers":
        print("original", "p1@example.test" in part.get_payload())
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", read]).stdin(std::process::Stdio::piped());
    let report = reports[0].clone();
    let parsed = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(report.as_bytes())
            .unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    })
    .await
    .unwrap();
    for want in [
        "multipart/report delivery-status <bob@example.test>",
        "Final-Recipient rfc822; nobody@other.test",
        "Action failed",
        "Status 5.1.1",
        "original True",
    ] {
        assert!(parsed.contains(want), "{want} in {parsed}");
    }
    assert!(parsed.contains("Diagnostic-Code smtp; 550"), "{parsed}");
    ours.shutdown().await;
    other.shutdown().await;
    dns.shutdown().await;
}
