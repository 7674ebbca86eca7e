//! What the server tests share: a recording backend, a line client, a server on loopback.
#![allow(dead_code)]

use mailsim_smtp::Reply;
use mailsim_smtp::server::{Backend, ServerConfig, SessionInfo, Transaction, serve};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub struct Recorder {
    pub messages: Mutex<Vec<(Transaction, Vec<u8>)>>,
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

pub struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: std::net::SocketAddr) -> Client {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
        }
    }
    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }
    /// One complete reply (all its lines), joined.
    pub async fn reply(&mut self) -> String {
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

pub async fn start(
    cfg: ServerConfig,
) -> (
    std::net::SocketAddr,
    Arc<Recorder>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    start_with_backlog(cfg, 1024).await
}

pub async fn start_with_backlog(
    cfg: ServerConfig,
    backlog: u32,
) -> (
    std::net::SocketAddr,
    Arc<Recorder>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener: TcpListener = socket.listen(backlog).unwrap();
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
