//! The inbound SMTP server over a real loopback socket: pipelining, limits, sequence errors,
//! connection cap and clean shutdown.

use mailsim_mailbox::smtp::{Backend, Reply, ServerConfig, SessionInfo, Transaction, serve};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Recorder {
    messages: Mutex<Vec<(Transaction, Vec<u8>)>>,
}

impl Backend for Recorder {
    fn on_connect(&self, _: &SessionInfo) -> Option<Reply> {
        None
    }
    fn on_mail(&self, _: &SessionInfo, _: &str) -> Reply {
        Reply::new(250, (2, 1, 0), "sender OK")
    }
    async fn on_rcpt(&self, _: &SessionInfo, _: &Transaction, rcpt: &str) -> Reply {
        if rcpt.starts_with("nobody@") {
            Reply::new(550, (5, 1, 1), "no such user")
        } else {
            Reply::new(250, (2, 1, 5), "recipient OK")
        }
    }
    async fn on_data(&self, _: &SessionInfo, tx: &Transaction, message: Vec<u8>) -> Reply {
        self.messages.lock().unwrap().push((tx.clone(), message));
        Reply::new(250, (2, 0, 0), "OK")
    }
}

struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
        }
    }
    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }
    /// One complete reply (all its lines), joined.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "connection closed; got so far: {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                return all;
            }
        }
    }
}

async fn start(
    cfg: ServerConfig,
) -> (
    std::net::SocketAddr,
    Arc<Recorder>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = Arc::new(Recorder::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        backend.clone(),
        Arc::new(cfg),
        async move {
            let _ = stopped.await;
        },
    ));
    (addr, backend, stop, task)
}

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
        idle_timeout: Duration::from_millis(300),
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
