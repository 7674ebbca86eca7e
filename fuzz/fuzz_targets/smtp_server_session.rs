//! Arbitrary client bytes into the inbound SMTP session (framer, command parser, DATA,
//! limits): it must never panic and must end when the client goes away.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailsim_smtp::Reply;
use mailsim_smtp::server::{Backend, ServerConfig, SessionInfo, Transaction, handle_session};
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

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(4096);
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
        let feeder = tokio::spawn(async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            out
        });
        handle_session(server, info, &Accept, &cfg).await;
        let out = feeder.await.unwrap();
        // Every reply line is a three-digit code and a separator.
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            assert!(line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit), "{line:?}");
        }
    });
});
