//! The inbound SMTP server over a real loopback socket: pipelining, limits, sequence errors,
//! connection cap and clean shutdown.

mod common;

use common::{Client, Recorder, start};
use mailsim_smtp::server::{ServerConfig, SessionInfo};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn pipelined_transaction_limits_and_sequence_errors() {
    let cfg = ServerConfig {
        message_bytes_max: 10_000,
        rcpts_per_message_max: 2,
        ..ServerConfig::default()
    };
    let (addr, backend, stop, task) = start(cfg).await;
    let mut c = Client::connect(addr).await;
    assert!(c.reply().await.starts_with("220 "));

    c.send(b"MAIL FROM:<a@s.test>\r\n").await;
    assert!(c.reply().await.starts_with("503 5.5.1"), "MAIL before EHLO");
    c.send(b"EHLO client.test\r\n").await;
    let ehlo = c.reply().await;
    for cap in [
        "PIPELINING",
        "SIZE 10000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(ehlo.contains(cap), "{ehlo}");
    }

    // Pipelined: MAIL, three RCPTs (one unknown, one over the limit), DATA in one write.
    c.send(b"MAIL FROM:<a@s.test>\r\nRCPT TO:<x@r.test>\r\nRCPT TO:<nobody@r.test>\r\nRCPT TO:<y@r.test>\r\nRCPT TO:<z@r.test>\r\nDATA\r\n").await;
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(c.reply().await.starts_with("550 5.1.1"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    assert!(
        c.reply().await.starts_with("452 4.5.3"),
        "too many recipients"
    );
    assert!(c.reply().await.starts_with("354 "));
    c.send(b"Subject: hi\r\n\r\n..leading dot\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    {
        let got = backend.messages.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.rcpts, vec!["x@r.test", "y@r.test"]);
        assert_eq!(got[0].1, b"Subject: hi\r\n\r\n.leading dot\r\n");
    }

    // Declared size over the limit; DATA without recipients; a command line over 512 octets.
    c.send(b"MAIL FROM:<a@s.test> SIZE=20000\r\n").await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    // A size past any 64-bit count (the parser's number wraps) is over the limit too.
    c.send(b"MAIL FROM:<a@s.test> SIZE=99999999999999999999999\r\n")
        .await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    c.send(b"MAIL FROM:<a@s.test>\r\nRCPT TO:<nobody@r.test>\r\nDATA\r\n")
        .await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("550 5.1.1"));
    assert!(c.reply().await.starts_with("554 5.5.1"));
    let long = format!("NOOP {}\r\n", "x".repeat(600));
    c.send(long.as_bytes()).await;
    assert!(c.reply().await.starts_with("500 5.5.6"));

    // A body over the limit is refused after DATA, and the session goes on.
    c.send(b"MAIL FROM:<a@s.test>\r\nRCPT TO:<x@r.test>\r\nDATA\r\n")
        .await;
    for _ in 0..2 {
        assert!(c.reply().await.starts_with("250"));
    }
    assert!(c.reply().await.starts_with("354"));
    let mut big = vec![b'a'; 12_000];
    big.extend_from_slice(b"\r\n.\r\n");
    c.send(&big).await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    c.send(b"FOO\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("500 5.5.2"));
    assert!(c.reply().await.starts_with("221 2.0.0"));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("clean shutdown")
        .unwrap();
    assert_eq!(backend.messages.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn connection_cap_and_idle_timeout() {
    let cfg = ServerConfig {
        connections_max: 1,
        // Long enough that the second connection is surely refused before the first is
        // dropped, however slow the machine.
        idle_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let (addr, _backend, stop, task) = start(cfg).await;
    let mut first = Client::connect(addr).await;
    assert!(first.reply().await.starts_with("220"));
    let mut second = Client::connect(addr).await;
    assert!(
        second.reply().await.starts_with("421 4.7.0"),
        "over the connection cap"
    );
    // The silent first client is dropped after the idle timeout.
    assert!(first.reply().await.starts_with("421 4.4.2"));
    // The slot frees once the session has ended; allow the server a moment to notice.
    let mut third = None;
    for _ in 0..50 {
        let mut c = Client::connect(addr).await;
        if c.reply().await.starts_with("220") {
            third = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = third.expect("the slot is free again");
    third.send(b"QUIT\r\n").await;
    assert!(third.reply().await.starts_with("221"));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("clean shutdown")
        .unwrap();
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let cfg = ServerConfig {
        connections_per_ip_max: 2,
        ..ServerConfig::default()
    };
    let (addr, _backend, stop, task) = start(cfg).await;
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    assert!(a.reply().await.starts_with("220"));
    assert!(b.reply().await.starts_with("220"));
    let mut c = Client::connect(addr).await;
    assert!(
        c.reply().await.starts_with("421 4.7.0"),
        "third from one address"
    );
    a.send(b"QUIT\r\n").await;
    assert!(a.reply().await.starts_with("221"));
    // Once one leaves, the address may connect again.
    let mut again = None;
    for _ in 0..50 {
        let mut d = Client::connect(addr).await;
        if d.reply().await.starts_with("220") {
            again = Some(d);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some());
    drop((b, again));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("clean shutdown")
        .unwrap();
}

/// Issue 13, item 4: the per-command deadline runs from a command's first byte, not from the
/// first partial read of a busy session: a client that keeps pipelining commands whose reads
/// end mid-line is never cut; one that stops mid-line is cut at the deadline. Paused clock,
/// in-memory pipe.
#[tokio::test(start_paused = true)]
async fn the_command_deadline_follows_each_command_not_the_session() {
    use tokio::io::AsyncReadExt;
    let cfg = ServerConfig {
        command_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let info = SessionInfo::new(
        1,
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:25".parse().unwrap(),
    );
    let (mut client, server) = tokio::io::duplex(4096);
    let session = tokio::spawn(async move {
        mailsim_smtp::server::handle_session(server, info, &Recorder::default(), &cfg).await
    });
    let start = tokio::time::Instant::now();
    client.write_all(b"NO").await.unwrap();
    // Every 1.5 s the end of one NOOP and the start of the next: 15 s in all.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        client.write_all(b"OP\r\nNO").await.unwrap();
    }
    // Then silence in the middle of a command: cut 2 s later.
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    session.await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("250 2.0.0 OK").count(), 10, "{text}");
    assert!(
        text.contains("421 4.4.2 mx.mailsim.test command not completed in time"),
        "{text}"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(17) && took < Duration::from_secs(18),
        "{took:?}"
    );
}

/// Messages being received share the server's data budget (the memory their buffers hold):
/// while one client holds most of it with a message not yet ended, another's message that would pass it is read to its end and
/// refused with 452 4.3.1 (temporary), and the same message goes through once the first is in.
#[tokio::test]
async fn a_message_the_data_budget_has_no_room_for_is_refused_for_now() {
    use mailsim_smtp::server::DataBudget;
    let budget = DataBudget::new(200_000);
    let cfg = ServerConfig {
        message_bytes_max: 1_000_000,
        data_budget: budget.clone(),
        ..ServerConfig::default()
    };
    let (addr, backend, stop, task) = start(cfg).await;
    let line = |c: char| format!("{}\r\n", c.to_string().repeat(98));
    let body = |c: char, lines: usize| line(c).repeat(lines).into_bytes();
    async fn open(addr: std::net::SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        assert!(c.reply().await.starts_with("220 "));
        c.send(b"EHLO client.test\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<x@r.test>\r\nDATA\r\n")
            .await;
        for code in ["250", "250 2.1.0", "250 2.1.5", "354"] {
            let r = c.reply().await;
            assert!(r.starts_with(code), "{r}");
        }
        c
    }
    let wait_held = |at_least: usize, at_most: usize| {
        let budget = budget.clone();
        async move {
            for _ in 0..500 {
                let held = budget.held();
                if (at_least..=at_most).contains(&held) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("held {} not in {at_least}..={at_most}", budget.held());
        }
    };

    // A: 80,000 bytes of a message, not ended (held in a buffer of 131,072).
    let mut a = open(addr).await;
    a.send(&body('a', 800)).await;
    wait_held(80_000, 200_000).await;
    // B: a whole message of as much: no room.
    let mut b = open(addr).await;
    b.send(&body('b', 800)).await;
    b.send(b".\r\n").await;
    let refused = b.reply().await;
    assert!(refused.starts_with("452 4.3.1"), "{refused}");
    // B's session goes on; A ends its message and gives its share back.
    a.send(b".\r\n").await;
    assert!(a.reply().await.starts_with("250 "));
    wait_held(0, 0).await;
    b.send(b"MAIL FROM:<a@s.test>\r\nRCPT TO:<x@r.test>\r\nDATA\r\n")
        .await;
    for code in ["250 2.1.0", "250 2.1.5", "354"] {
        assert!(b.reply().await.starts_with(code));
    }
    b.send(&body('b', 800)).await;
    b.send(b".\r\n").await;
    assert!(b.reply().await.starts_with("250 "));
    wait_held(0, 0).await;
    // What the server stored: A's message, then B's second, whole; nothing of B's first.
    let got = backend.messages.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, body('a', 800));
    assert_eq!(got[1].1, body('b', 800));
    drop(got);
    let _ = stop.send(());
    task.await.unwrap();
}
