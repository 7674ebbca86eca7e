//! Issue 13: what a hostile client did to `mailsim mailbox`, each kept as a regression test over
//! real loopback sockets: STARTTLS command injection in SMTP, IMAP and POP3; wrong-login floods
//! (memory, per-address limits, a legitimate login still served); slow clients cut at the
//! timeouts; recipient harvesting; postmaster; replies without Rust debug text; long folder
//! names.

use mailsim_mailbox::server::{self, MailboxConfig, Running};
use mailsim_mailbox::shell::Timeouts;
use mailsim_mailbox::users::Users;
use mailsim_smtp::tls::Tls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

fn loopback() -> Option<SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

fn config(data: &std::path::Path) -> MailboxConfig {
    let mut users = Users::new(&["example.test".into()]);
    users.add_spec("bob:secret", "test").unwrap();
    let mut cfg = MailboxConfig::new(data.to_path_buf(), users);
    cfg.hostname = "mx.example.test".into();
    cfg.smtp = loopback();
    cfg.submission = loopback();
    cfg.imap = loopback();
    cfg.pop3 = loopback();
    cfg.tls = Some(Tls::self_signed(&["mx.example.test".into()]).unwrap());
    cfg.login.failure_delay = Duration::from_millis(20);
    cfg
}

/// Read until `done` says the text so far is complete, or the peer closes; at most 10 s.
async fn read_until<S: AsyncRead + Unpin>(s: &mut S, done: impl Fn(&str) -> bool) -> String {
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if done(&String::from_utf8_lossy(&text)) {
            break;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => text.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn line_ends(tail: &'static str) -> impl Fn(&str) -> bool {
    move |t: &str| t.lines().any(|l| l.starts_with(tail))
}

/// A rustls client that trusts exactly the server's self-signed certificate.
async fn tls_client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    cert_der: &[u8],
) -> tokio_rustls::client::TlsStream<S> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(cert_der.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("mx.example.test").unwrap();
    connector.connect(name, stream).await.unwrap()
}

async fn started(cfg: MailboxConfig) -> (Running, Vec<u8>) {
    let cert = cfg.tls.as_ref().unwrap().cert_der.clone();
    (server::start(cfg).await.unwrap(), cert)
}

/// Item 2: commands pipelined after STARTTLS in the same packet, before the handshake, are
/// never run, in any of the three protocols (the class of CVE-2011-0411).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_pipelining_is_discarded_by_smtp_imap_and_pop3() {
    let dir = tempfile::tempdir().unwrap();
    let (running, cert) = started(config(dir.path())).await;

    // SMTP (submission): MAIL pipelined after STARTTLS must not open a transaction.
    let mut s = TcpStream::connect(running.submission.unwrap())
        .await
        .unwrap();
    read_until(&mut s, line_ends("220 ")).await;
    s.write_all(b"EHLO c\r\n").await.unwrap();
    read_until(&mut s, line_ends("250 ")).await;
    s.write_all(b"STARTTLS\r\nRSET\r\nMAIL FROM:<bob@example.test>\r\n")
        .await
        .unwrap();
    let r = read_until(&mut s, line_ends("220 ")).await;
    assert_eq!(r, "220 2.0.0 ready to start TLS\r\n");
    let mut smtp_tls = tls_client(s, &cert).await;
    let t = &mut smtp_tls;
    t.write_all(b"NOOP\r\n").await.unwrap();
    let r = read_until(t, line_ends("250 ")).await;
    assert_eq!(
        r, "250 2.0.0 OK\r\n",
        "nothing of the injected commands was answered"
    );
    t.write_all(b"EHLO c\r\nRCPT TO:<bob@example.test>\r\n")
        .await
        .unwrap();
    let r = read_until(t, line_ends("503 ")).await;
    assert!(r.contains("503 5.5.1 need MAIL before RCPT"), "{r}");
    drop(smtp_tls);

    // IMAP: a LOGIN pipelined after STARTTLS must not log in.
    let mut s = TcpStream::connect(running.imap.unwrap()).await.unwrap();
    read_until(&mut s, line_ends("* OK")).await;
    s.write_all(b"a STARTTLS\r\nb LOGIN bob secret\r\n")
        .await
        .unwrap();
    let r = read_until(&mut s, line_ends("a OK")).await;
    assert_eq!(r, "a OK Begin TLS negotiation now.\r\n");
    let mut imap_tls = tls_client(s, &cert).await;
    imap_tls.write_all(b"c SELECT INBOX\r\n").await.unwrap();
    let r = read_until(&mut imap_tls, line_ends("c ")).await;
    drop(imap_tls);
    assert!(
        r.starts_with("c ") && !r.contains("c OK") && !r.contains("b OK"),
        "SELECT must fail: not logged in: {r}"
    );

    // POP3: USER/PASS pipelined after STLS must not log in.
    let mut s = TcpStream::connect(running.pop3.unwrap()).await.unwrap();
    read_until(&mut s, line_ends("+OK")).await;
    s.write_all(b"STLS\r\nUSER bob\r\nPASS secret\r\n")
        .await
        .unwrap();
    let r = read_until(&mut s, line_ends("+OK")).await;
    assert_eq!(r, "+OK Begin TLS negotiation.\r\n");
    let mut t = tls_client(s, &cert).await;
    t.write_all(b"STAT\r\n").await.unwrap();
    let r = read_until(&mut t, line_ends("-ERR")).await;
    assert!(r.starts_with("-ERR"), "STAT must fail: not logged in: {r}");
    drop(t);
    running.shutdown().await;
}

/// Item 4: clients that drip bytes are cut at the per-command and per-message deadlines, and
/// silent clients before login at the login deadlines, in every protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_cut_at_the_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.timeouts = Timeouts {
        login_idle: Duration::from_secs(1),
        login_total: Duration::from_secs(3),
        command: Duration::from_millis(1500),
        command_authenticated: Duration::from_millis(1500),
    };
    cfg.smtp_command_timeout = Duration::from_millis(1500);
    cfg.smtp_data_timeout = Duration::from_millis(2000);
    cfg.smtp_login_timeout = Duration::from_secs(3);
    let (running, _) = started(cfg).await;

    /// Send `lead`, then one byte of `drip` every 100 ms until the server hangs up; the
    /// server's last words and how long the drip lasted.
    async fn drip(addr: SocketAddr, greeting: &'static str, lead: &[u8]) -> (String, Duration) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        read_until(&mut s, line_ends(greeting)).await;
        s.write_all(lead).await.unwrap();
        let t0 = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            if s.write_all(b"x").await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "never cut");
        }
        (String::from_utf8_lossy(&got).into_owned(), t0.elapsed())
    }

    let smtp = running.smtp.unwrap();
    let (r, took) = drip(smtp, "220 ", b"EHLO c\r\nMAIL FROM:<a@b.test> ").await;
    assert!(
        r.contains("421 4.4.2 mx.example.test command not completed in time"),
        "{r}"
    );
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_secs(5),
        "{took:?}"
    );

    let lead = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n";
    let (r, took) = drip(smtp, "220 ", lead).await;
    assert!(
        r.contains("421 4.4.2 mx.example.test message not completed in time"),
        "{r}"
    );
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(6),
        "{took:?}"
    );

    let (r, _) = drip(running.imap.unwrap(), "* OK", b"a LOGIN bob ").await;
    assert!(
        r.contains("* BYE Autologout; command not completed in time."),
        "{r}"
    );
    let (r, _) = drip(running.pop3.unwrap(), "+OK", b"USER bob").await;
    assert!(
        r.contains("-ERR Disconnected: command not completed in time."),
        "{r}"
    );

    // Silent before login: IMAP and POP3 at the login idle timeout.
    for (addr, greeting, bye) in [
        (
            running.imap.unwrap(),
            "* OK",
            "* BYE Autologout; idle for too long.",
        ),
        (
            running.pop3.unwrap(),
            "+OK",
            "-ERR Disconnected for inactivity.",
        ),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        read_until(&mut s, line_ends(greeting)).await;
        let t0 = Instant::now();
        let r = read_until(&mut s, |_| false).await;
        assert!(r.contains(bye), "{r}");
        assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    }

    // Busy but never logging in: cut at the login deadline.
    let mut s = TcpStream::connect(running.imap.unwrap()).await.unwrap();
    read_until(&mut s, line_ends("* OK")).await;
    let t0 = Instant::now();
    let mut r = String::new();
    for i in 0..60 {
        if s.write_all(format!("n{i} NOOP\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        r.push_str(&read_until(&mut s, line_ends(&*format!("n{i} ").leak())).await);
        if r.contains("* BYE") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        r.contains("* BYE Autologout; not logged in in time."),
        "{r}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    running.shutdown().await;

    // In IDLE, silent: logged out at the idle timeout, which the server's own polls of the
    // mailbox (every 2 s) do not move (an independent review: they re-armed it, so an IDLE
    // held its connection for good).
    let mut cfg = config(dir.path());
    cfg.imap_idle_timeout = Duration::from_secs(3);
    let (running, _) = started(cfg).await;
    let mut s = TcpStream::connect(running.imap.unwrap()).await.unwrap();
    read_until(&mut s, line_ends("* OK")).await;
    s.write_all(b"a LOGIN bob secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
        .await
        .unwrap();
    read_until(&mut s, line_ends("+ idling")).await;
    let t0 = Instant::now();
    let r = read_until(&mut s, |_| false).await;
    assert!(r.contains("* BYE Autologout; idle for too long."), "{r}");
    assert!(
        t0.elapsed() >= Duration::from_millis(2500) && t0.elapsed() < Duration::from_secs(6),
        "{:?}",
        t0.elapsed()
    );
    running.shutdown().await;
}

/// Found by the fuzz targets run in the suite (sim/tests/fuzz_targets.rs): a client that sends
/// commands and never reads the replies blocked the server's write, with no timeout on it, so the
/// session and its buffers were held for good. Each protocol now gives up on a reply it cannot
/// send within the command timeout (1.5 s here) and closes, which the client sees as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_cut_at_the_command_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.timeouts = Timeouts {
        login_idle: Duration::from_secs(60),
        login_total: Duration::from_secs(60),
        command: Duration::from_millis(1500),
        command_authenticated: Duration::from_secs(60),
    };
    cfg.smtp_command_timeout = Duration::from_millis(1500);
    cfg.smtp_login_timeout = Duration::from_secs(60);
    let (running, _) = started(cfg).await;
    for (addr, login, command) in [
        (
            running.smtp.unwrap(),
            &b""[..],
            &b"EHLO client.example.test\r\n"[..],
        ),
        (
            running.imap.unwrap(),
            &b"a LOGIN bob secret\r\n"[..],
            &b"b CAPABILITY\r\n"[..],
        ),
        (
            running.pop3.unwrap(),
            &b"USER bob\r\nPASS secret\r\n"[..],
            &b"CAPA\r\n"[..],
        ),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(login).await.unwrap();
        let chunk = command.repeat(4096);
        let t0 = Instant::now();
        let mut sent = 0usize;
        // Megabytes of replies fill both sockets' buffers; then the server's write waits.
        let cut = tokio::time::timeout(Duration::from_secs(30), async {
            while s.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
        })
        .await;
        assert!(
            cut.is_ok(),
            "{addr}: still connected after 30 s ({sent} bytes sent, no reply read)"
        );
        assert!(sent > 0, "{addr}: cut before anything was sent");
        assert!(
            t0.elapsed() >= Duration::from_millis(1500),
            "{addr}: {:?}",
            t0.elapsed()
        );
    }
    running.shutdown().await;
}

async fn smtp_session(addr: SocketAddr, lines: &[&str]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    read_until(&mut s, line_ends("220 ")).await;
    let mut all = String::new();
    for l in lines {
        s.write_all(format!("{l}\r\n").as_bytes()).await.unwrap();
        all.push_str(
            &read_until(&mut s, |t: &str| {
                t.lines()
                    .last()
                    .is_some_and(|l| l.as_bytes().get(3) == Some(&b' '))
            })
            .await,
        );
    }
    all
}

/// Item 4: a session that keeps naming unknown recipients is closed (recipient harvesting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harvesting_unknown_recipients_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = started(config(dir.path())).await;
    let mut lines = vec!["EHLO c".to_string(), "MAIL FROM:<a@b.test>".to_string()];
    for i in 0..25 {
        lines.push(format!("RCPT TO:<guess{i}@example.test>"));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let r = smtp_session(running.smtp.unwrap(), &refs[..22]).await;
    assert_eq!(r.matches("550 5.1.1").count(), 20, "{r}");
    assert!(
        r.trim_end()
            .ends_with("421 4.7.0 mx.example.test too many rejected recipients, closing"),
        "{r}"
    );
    running.shutdown().await;
}

/// Item 5: postmaster is accepted with and without a domain (RFC 5321 section 4.5.1) and
/// stored; syntax errors are answered without Rust debug text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmaster_is_accepted_and_syntax_errors_read_as_smtp() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = started(config(dir.path())).await;
    let r = smtp_session(
        running.smtp.unwrap(),
        &[
            "EHLO c",
            "MAIL FROM:<a@b.test>",
            "RCPT TO:<postmaster>",
            "RCPT TO:<PostMaster@example.test>",
            "DATA",
            "Subject: hello postmaster\r\n\r\nhi\r\n.",
            "MAIL FROM:<a@b.test> FOO=bar{:?}",
            "MAIL FROM:<a@b.test> SIZE=abc",
            "EHLO",
        ],
    )
    .await;
    assert_eq!(r.matches("250 2.1.5 Ok").count(), 2, "{r}");
    assert!(r.contains("250 2.0.0 Ok: delivered"), "{r}");
    assert!(
        r.contains("555 5.5.4 unsupported parameter FOO=BAR{:?}"),
        "{r}"
    );
    assert!(
        r.contains("501 5.5.4 invalid value for parameter SIZE"),
        "{r}"
    );
    for debug in [
        "UnsupportedParameter",
        "InvalidParameter",
        "SyntaxError",
        "{ ",
    ] {
        assert!(!r.contains(debug), "debug text {debug:?} in {r}");
    }
    let inbox = dir.path().join("example.test/postmaster/cur");
    let stored: Vec<_> = std::fs::read_dir(&inbox).unwrap().collect();
    assert_eq!(
        stored.len(),
        2,
        "one copy per recipient in {}",
        inbox.display()
    );
    running.shutdown().await;
}

/// Item 5: an over-long folder name is a clean NO, not a server bug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_folder_names_get_a_clean_no() {
    let dir = tempfile::tempdir().unwrap();
    let (running, _) = started(config(dir.path())).await;
    let mut s = TcpStream::connect(running.imap.unwrap()).await.unwrap();
    read_until(&mut s, line_ends("* OK")).await;
    s.write_all(b"a LOGIN bob secret\r\n").await.unwrap();
    read_until(&mut s, line_ends("a ")).await;
    for (tag, len) in [("b", 300), ("c", 5000)] {
        let name = "n".repeat(len);
        s.write_all(format!("{tag} CREATE {name}\r\n").as_bytes())
            .await
            .unwrap();
        let r = read_until(&mut s, line_ends(tag)).await;
        assert_eq!(r, format!("{tag} NO [LIMIT] Mailbox name too long.\r\n"));
    }
    s.write_all(b"d CREATE ok-name\r\n").await.unwrap();
    assert!(
        read_until(&mut s, line_ends("d "))
            .await
            .starts_with("d OK")
    );
    running.shutdown().await;
}
