//! The client's PIPELINING seen from the server's side of a real socket (RFC 2920): offered, the
//! envelope arrives before any of it is answered; not offered, no command arrives before the
//! previous one is answered. The server here is a script that reads bytes, not mailsim's.

use mailsim_smtp::client::{Envelope, SmtpClient, SmtpTimeouts};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Read until `buf` holds `lines` complete lines (or the client stops sending).
async fn read_lines(s: &mut TcpStream, buf: &mut Vec<u8>, lines: usize) {
    while buf.iter().filter(|&&b| b == b'\n').count() < lines {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the client sent nothing more")
            .unwrap();
        assert!(n > 0, "the client closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Nothing more arrives within a moment.
async fn quiet(s: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 512];
    tokio::time::timeout(Duration::from_millis(300), s.read(&mut chunk))
        .await
        .is_err()
}

async fn serve(listener: TcpListener, pipelining: bool) -> Vec<String> {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut seen = Vec::new();
    s.write_all(b"220 script ESMTP\r\n").await.unwrap();
    let mut buf = Vec::new();
    read_lines(&mut s, &mut buf, 1).await;
    let ehlo = if pipelining {
        "250-script\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    } else {
        "250-script\r\n250 8BITMIME\r\n"
    };
    s.write_all(ehlo.as_bytes()).await.unwrap();
    buf.clear();
    if pipelining {
        // MAIL, RCPT and DATA must all come before a single reply is sent.
        read_lines(&mut s, &mut buf, 3).await;
        seen.push(String::from_utf8_lossy(&buf).to_string());
        s.write_all(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
            .await
            .unwrap();
    } else {
        for reply in ["250 2.1.0 ok\r\n", "250 2.1.5 ok\r\n"] {
            read_lines(&mut s, &mut buf, 1).await;
            seen.push(String::from_utf8_lossy(&buf).to_string());
            buf.clear();
            // The next command must wait for this reply.
            assert!(quiet(&mut s).await, "a command came before the reply");
            s.write_all(reply.as_bytes()).await.unwrap();
        }
        read_lines(&mut s, &mut buf, 1).await;
        seen.push(String::from_utf8_lossy(&buf).to_string());
        buf.clear();
        s.write_all(b"354 go\r\n").await.unwrap();
    }
    // The message, then its reply.
    buf.clear();
    while !buf.ends_with(b"\r\n.\r\n") {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
    s.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
    seen
}

async fn transaction(pipelining: bool) -> Vec<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, pipelining));
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut client = SmtpClient::new(stream, SmtpTimeouts::default());
    client.handshake("client.test").await.unwrap();
    assert_eq!(client.caps.pipelining, pipelining);
    let outcome = client
        .transaction(&Envelope {
            from: "a@client.test",
            rcpt: "b@server.test",
            body: b"Subject: t\r\n\r\nhello\r\n",
        })
        .await
        .unwrap();
    assert_eq!(
        (outcome.decisive.code, outcome.decisive_command),
        (250, "DATA")
    );
    server.await.unwrap()
}

#[tokio::test]
async fn the_envelope_is_pipelined_when_offered_and_only_then() {
    let seen = transaction(true).await;
    assert_eq!(
        seen,
        ["MAIL FROM:<a@client.test>\r\nRCPT TO:<b@server.test>\r\nDATA\r\n"]
    );
    let seen = transaction(false).await;
    assert_eq!(
        seen,
        [
            "MAIL FROM:<a@client.test>\r\n",
            "RCPT TO:<b@server.test>\r\n",
            "DATA\r\n"
        ]
    );
}
