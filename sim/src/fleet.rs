//! The fleet of simulated recipient servers: one real SMTP server (the mailbox crate's) per MX
//! host, each on its own 127.x.y.z address, applying its domain's behaviour, verifying SPF, DKIM
//! and DMARC against fake-dns, and storing accepted mail per user.

use crate::world::{Behaviour, HostPlan, chance};
use mailsim_events::{Event, EventSink};
use mailsim_mailbox::auth::Verifier;
use mailsim_mailbox::smtp::{self, Backend, Reply, ServerConfig, SessionInfo, Transaction};
use mailsim_mailbox::store::Maildir;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// One simulated server's decisions.
pub struct HostBackend {
    host: String,
    domain: String,
    behaviour: Behaviour,
    verifier: Arc<Verifier>,
    store: Maildir,
    events: EventSink,
    attempts: Mutex<HashMap<String, u32>>,
}

impl HostBackend {
    fn refuse(&self, info: &SessionInfo, command: &str, rcpt: &str, reply: Reply) -> Reply {
        self.events.emit(Event::Refused {
            host: self.host.clone(),
            session: info.id,
            command: command.into(),
            code: reply.code,
            enhanced: reply.enhanced_str(),
            rcpt: rcpt.into(),
        });
        reply
    }
}

impl Backend for HostBackend {
    fn on_connect(&self, info: &SessionInfo) -> Option<Reply> {
        self.events.emit(Event::SessionAccepted {
            host: self.host.clone(),
            session: info.id,
            peer: info.peer.to_string(),
        });
        None
    }

    fn on_mail(&self, _info: &SessionInfo, _from: &str) -> Reply {
        Reply::new(250, (2, 1, 0), "sender OK")
    }

    async fn on_rcpt(&self, info: &SessionInfo, _tx: &Transaction, rcpt: &str) -> Reply {
        let lower = rcpt.to_ascii_lowercase();
        let Some((local, domain)) = lower.rsplit_once('@') else {
            return self.refuse(
                info,
                "RCPT",
                rcpt,
                Reply::new(501, (5, 1, 3), "bad recipient address"),
            );
        };
        if domain != self.domain {
            return self.refuse(
                info,
                "RCPT",
                rcpt,
                Reply::new(550, (5, 7, 1), "relaying denied"),
            );
        }
        let b = &self.behaviour;
        if b.unknown_list.contains(local) || chance(b.seed, &lower, b.unknown_percent) {
            return self.refuse(
                info,
                "RCPT",
                rcpt,
                Reply::new(
                    550,
                    (5, 1, 1),
                    "The email account that you tried to reach does not exist",
                ),
            );
        }
        if b.tempfail_percent > 0.0 {
            let n = {
                let mut attempts = self.attempts.lock().expect("attempts");
                let n = attempts.entry(lower.clone()).or_insert(0);
                *n += 1;
                *n
            };
            if chance(b.seed, &format!("{lower}#{n}"), b.tempfail_percent) {
                return self.refuse(
                    info,
                    "RCPT",
                    rcpt,
                    Reply::new(
                        451,
                        (4, 3, 0),
                        "Temporary local problem, please try again later",
                    ),
                );
            }
        }
        Reply::new(250, (2, 1, 5), "recipient OK")
    }

    async fn on_data(&self, info: &SessionInfo, tx: &Transaction, message: Vec<u8>) -> Reply {
        let verdicts = self
            .verifier
            .verify(info.peer.ip(), &info.helo, &tx.mail_from, &message)
            .await;
        let message_id = mail_parser::MessageParser::default()
            .parse_headers(&message)
            .and_then(|m| m.message_id().map(|id| format!("<{id}>")))
            .unwrap_or_default();
        self.events.emit(Event::AuthVerdict {
            host: self.host.clone(),
            session: info.id,
            message_id: message_id.clone(),
            mail_from: tx.mail_from.clone(),
            header_from: verdicts.header_from.clone(),
            spf: verdicts.spf.clone(),
            dkim: verdicts.dkim.clone(),
            dmarc: verdicts.dmarc.clone(),
        });
        let received = format!(
            "Received: from {} ({}) by {} with ESMTP id {}; session {}\r\n",
            info.helo,
            info.peer.ip(),
            self.host,
            info.id,
            info.id
        );
        let mut stored = Vec::with_capacity(verdicts.header.len() + received.len() + message.len());
        stored.extend_from_slice(verdicts.header.as_bytes());
        stored.extend_from_slice(received.as_bytes());
        stored.extend_from_slice(&message);
        for rcpt in &tx.rcpts {
            if let Err(e) = self.store.deliver(rcpt, &stored) {
                tracing::warn!(host = %self.host, "{e}");
                return Reply::new(451, (4, 3, 0), "local storage failure, try again later");
            }
            self.events.emit(Event::Stored {
                host: self.host.clone(),
                session: info.id,
                message_id: message_id.clone(),
                rcpt: rcpt.clone(),
                size: stored.len() as u64,
            });
        }
        Reply::new(250, (2, 0, 0), format!("OK queued as {}", info.id))
    }
}

/// The running fleet.
pub struct Fleet {
    pub port: u16,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Bind every live host on one shared port (the first bind picks it) and start serving.
    pub async fn start(
        hosts: &[HostPlan],
        dns: SocketAddr,
        store_root: &Path,
        events: EventSink,
    ) -> Result<Fleet, String> {
        let live: Vec<&HostPlan> = hosts.iter().filter(|h| !h.down).collect();
        let verifier =
            Arc::new(Verifier::new(dns, "fleet.mailsim.test").map_err(|e| e.to_string())?);
        let mut last_err = String::from("no live MX host");
        'attempt: for _ in 0..16 {
            let mut listeners = Vec::with_capacity(live.len());
            let mut port = 0u16;
            for h in &live {
                match TcpListener::bind(SocketAddr::new(h.ip.into(), port)).await {
                    Ok(l) => {
                        port = l.local_addr().map_err(|e| e.to_string())?.port();
                        listeners.push(l);
                    }
                    Err(e) => {
                        last_err = format!("binding {}:{port} for {}: {e}", h.ip, h.name);
                        continue 'attempt;
                    }
                }
            }
            let (stop, stop_rx) = watch::channel(false);
            let mut tasks = JoinSet::new();
            for (h, listener) in live.iter().zip(listeners) {
                let backend = Arc::new(HostBackend {
                    host: h.name.clone(),
                    domain: h.domain.clone(),
                    behaviour: h.behaviour.clone(),
                    verifier: verifier.clone(),
                    store: Maildir::new(store_root, false, &h.name),
                    events: events.clone(),
                    attempts: Mutex::new(HashMap::new()),
                });
                let cfg = Arc::new(ServerConfig {
                    hostname: h.name.clone(),
                    ..ServerConfig::default()
                });
                let mut rx = stop_rx.clone();
                tasks.spawn(async move {
                    smtp::serve(listener, backend, cfg, async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
                });
            }
            return Ok(Fleet { port, stop, tasks });
        }
        Err(last_err)
    }

    /// Stop accepting, let open sessions finish, and wait for every server.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}
