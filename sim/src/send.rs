//! `mailsim send`: submit a scenario's campaign to an MTA by SMTP (mailsim's own daemon, or any
//! other MTA), over several connections, retrying whatever was not acknowledged. With
//! `acked_path`, every acknowledged Message-ID is appended to a file as soon as it is.

use crate::runner::build_messages;
use crate::scenario::Scenario;
use crate::world::World;
use mailsim_mta::OutboundMessage;
use mailsim_smtp::client::{Envelope, SmtpClient, SmtpTimeouts};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

/// Called for every acknowledged message.
pub type OnAck = Arc<dyn Fn(&OutboundMessage) + Send + Sync>;

pub struct SendOptions {
    pub to: SocketAddr,
    pub connections: usize,
    pub acked_path: Option<PathBuf>,
    /// Give up when no message was acknowledged for this long.
    pub stall_max: Duration,
    pub on_ack: Option<OnAck>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub acked: u64,
    pub rejected: u64,
    /// Attempts that failed temporarily (4xx, connection lost or refused) and were repeated.
    pub retried: u64,
}

/// The campaign's messages, as a client would submit them, dated `date_s` (seconds since the
/// Unix epoch: now, for an MTA on the wall clock), and DKIM-signed by `signer` when one is
/// given (for an MTA under test that does not sign).
pub fn campaign(
    scenario: &Scenario,
    world: &World,
    date_s: i64,
    signer: Option<&mailsim_mta::dkim::Signer>,
    tracking: Option<&crate::web::Tracking>,
) -> anyhow::Result<Vec<OutboundMessage>> {
    let total = scenario.campaign().messages_in(0);
    let mut messages = build_messages(scenario, world, 0..total, 0, date_s, tracking);
    if let Some(signer) = signer {
        for m in &mut messages {
            m.body = signer.sign(&m.body, date_s.max(0) as u64)?;
        }
    }
    Ok(messages)
}

struct Shared {
    report: Mutex<SendReport>,
    acked: Option<Mutex<std::fs::File>>,
    on_ack: Option<OnAck>,
}

pub async fn send(
    messages: Vec<OutboundMessage>,
    opts: &SendOptions,
) -> anyhow::Result<SendReport> {
    let acked = match &opts.acked_path {
        Some(p) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        )),
        None => None,
    };
    let shared = Arc::new(Shared {
        report: Mutex::new(SendReport::default()),
        acked,
        on_ack: opts.on_ack.clone(),
    });
    let n = opts.connections.max(1);
    let mut parts: Vec<Vec<OutboundMessage>> = (0..n).map(|_| Vec::new()).collect();
    for (i, m) in messages.into_iter().enumerate() {
        parts[i % n].push(m);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for part in parts {
        let (shared, to, stall) = (shared.clone(), opts.to, opts.stall_max);
        tasks.spawn(async move { worker(part, to, stall, &shared).await });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let report = *shared.report.lock().expect("report");
    Ok(report)
}

async fn connect(to: SocketAddr) -> anyhow::Result<SmtpClient<TcpStream>> {
    let stream = TcpStream::connect(to).await?;
    stream.set_nodelay(true)?;
    let mut client = SmtpClient::new(stream, SmtpTimeouts::default());
    let replies = client.handshake("sender.mailsim.test").await?;
    if let Some((_, r)) = replies.iter().find(|(_, r)| r.code / 100 != 2) {
        anyhow::bail!("refused: {} {}", r.code, r.text);
    }
    Ok(client)
}

async fn worker(
    messages: Vec<OutboundMessage>,
    to: SocketAddr,
    stall_max: Duration,
    shared: &Shared,
) -> anyhow::Result<()> {
    let mut client: Option<SmtpClient<TcpStream>> = None;
    let mut stalled = Duration::ZERO;
    let pause = Duration::from_millis(100);
    for m in &messages {
        loop {
            if stalled > stall_max {
                anyhow::bail!("{to}: nothing acknowledged for {stall_max:?}");
            }
            let c = match client.as_mut() {
                Some(c) => c,
                None => match connect(to).await {
                    Ok(c) => client.insert(c),
                    Err(_) => {
                        shared.report.lock().expect("report").retried += 1;
                        tokio::time::sleep(pause).await;
                        stalled += pause;
                        continue;
                    }
                },
            };
            let env = Envelope {
                from: &m.from,
                rcpt: &m.rcpts[0],
                body: &m.body,
            };
            match c.transaction(&env).await {
                Ok(outcome) if outcome.decisive.code / 100 == 2 => {
                    if let Some(f) = &shared.acked {
                        let mut f = f.lock().expect("acked file");
                        writeln!(f, "{}", m.message_id)?;
                        f.flush()?;
                    }
                    if let Some(f) = &shared.on_ack {
                        f(m);
                    }
                    shared.report.lock().expect("report").acked += 1;
                    stalled = Duration::ZERO;
                    if outcome.connection_closed {
                        client = None;
                    }
                    break;
                }
                Ok(outcome) if outcome.decisive.code >= 500 => {
                    shared.report.lock().expect("report").rejected += 1;
                    if outcome.connection_closed {
                        client = None;
                    }
                    break;
                }
                Ok(outcome) => {
                    shared.report.lock().expect("report").retried += 1;
                    if outcome.connection_closed {
                        client = None;
                    }
                    tokio::time::sleep(pause).await;
                    stalled += pause;
                }
                Err(_) => {
                    shared.report.lock().expect("report").retried += 1;
                    client = None;
                    tokio::time::sleep(pause).await;
                    stalled += pause;
                }
            }
        }
    }
    if let Some(c) = client {
        c.quit().await;
    }
    Ok(())
}
