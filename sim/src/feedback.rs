//! The feedback loop of a campaign, on both sides:
//!
//! * [`Reporter`]: recipient servers that accepted a message and report on it later send an
//!   RFC 3464 DSN (accept-then-bounce) to the return path or an RFC 5965 ARF complaint to the
//!   sender's feedback address, over SMTP through the same DNS and network as everything else.
//! * [`BounceProcessor`]: the sender's own MX hands every message it accepts (the MTA's DSNs
//!   and the receivers' reports) to the processor, which parses it (mailsim-bounce), attributes
//!   it to the campaign message by the VERP return path, records it and suppresses hard
//!   bounces and complainers.

use crate::fleet::{LaterKind, LaterReport};
use mailsim_events::{Clock, Event, EventSink};
use mailsim_mta::Connector;
use mailsim_mta::dns::Resolver;
use mailsim_mta::engine::{verp_id, verp_rcpt};
use mailsim_mta::suppression::Suppression;
use mailsim_smtp::client::{Envelope, SmtpClient, SmtpTimeouts};
use mailsim_smtp::server::{SessionInfo, Transaction};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The queue of reports waiting to be sent, with a count the runner waits on: a report is
/// counted from the moment a server decides to send it until it is delivered or given up.
#[derive(Clone)]
pub struct LaterQueue {
    tx: mpsc::UnboundedSender<LaterReport>,
    pending: Arc<watch::Sender<usize>>,
}

impl LaterQueue {
    pub fn new() -> (LaterQueue, mpsc::UnboundedReceiver<LaterReport>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            LaterQueue {
                tx,
                pending: Arc::new(watch::channel(0).0),
            },
            rx,
        )
    }

    pub fn push(&self, report: LaterReport) {
        self.pending.send_modify(|n| *n += 1);
        if self.tx.send(report).is_err() {
            self.done();
        }
    }

    fn done(&self) {
        self.pending.send_modify(|n| *n = n.saturating_sub(1));
    }

    pub fn pending(&self) -> watch::Receiver<usize> {
        self.pending.subscribe()
    }
}

/// Attempts to send one report before giving up, and the wait between them.
const REPORT_ATTEMPTS_MAX: u32 = 3;
const REPORT_RETRY: Duration = Duration::from_secs(60);

/// Sends the fleet's later reports.
pub struct Reporter<R, F> {
    pub resolver: Arc<R>,
    /// A connector whose source address is the reporting host's.
    pub connector_for: F,
    pub port: u16,
    pub events: EventSink,
    pub clock: Arc<dyn Clock>,
    /// Where complaints go, by sender domain.
    pub feedback_addresses: Vec<(String, String)>,
    /// The certificates recipients' HTTPS requests trust (the run's own web servers').
    pub trust: crate::web::Trust,
}

impl<R, F, C> Reporter<R, F>
where
    R: Resolver,
    C: Connector,
    F: Fn(IpAddr) -> C + Send + Sync + 'static,
{
    /// Send reports as they come due, until `shutdown` resolves; then wait for those started.
    pub async fn run(
        self,
        queue: LaterQueue,
        mut rx: mpsc::UnboundedReceiver<LaterReport>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let me = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                report = rx.recv() => {
                    let Some(report) = report else { break };
                    let (me, queue) = (me.clone(), queue.clone());
                    tasks.spawn(async move {
                        me.deliver(report).await;
                        queue.done();
                    });
                }
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn deliver(&self, report: LaterReport) {
        let now = self.clock.now_ms();
        tokio::time::sleep(Duration::from_millis(report.due_ms.saturating_sub(now))).await;
        match report.kind {
            LaterKind::Bounce | LaterKind::Complaint => self.report(report).await,
            LaterKind::UnsubscribeMailto => self.unsubscribe_by_mail(report).await,
            LaterKind::Open
            | LaterKind::Click
            | LaterKind::UnsubscribeOneClick
            | LaterKind::UnsubscribeWeb => self.act_on_web(report).await,
        }
    }

    /// A recipient's request to a URL of the message, recorded with its outcome.
    async fn act_on_web(&self, report: LaterReport) {
        let post =
            (report.kind == LaterKind::UnsubscribeOneClick).then_some("List-Unsubscribe=One-Click");
        let result = if report.url.is_empty() {
            Err("nothing to load: the message has no image".to_string())
        } else {
            let connector = (self.connector_for)(report.host_ip);
            crate::web::fetch(&connector, &self.trust, post, &report.url).await
        };
        let (status, error) = match result {
            Ok(status) => (status, String::new()),
            Err(e) => (0, e),
        };
        let (rcpt, message_id, url) = (report.rcpt, report.message_id, report.url);
        self.events.emit(match report.kind {
            LaterKind::Open => Event::Opened {
                rcpt,
                message_id,
                url,
                http_status: status,
                error,
            },
            LaterKind::Click => Event::Clicked {
                rcpt,
                message_id,
                url,
                http_status: status,
                error,
            },
            _ => Event::Unsubscribed {
                rcpt,
                message_id,
                method: if post.is_some() { "one-click" } else { "web" }.into(),
                url,
                http_status: status,
                error,
            },
        });
    }

    /// RFC 2369 mailto unsubscribe: a mail from the recipient to the list's address.
    async fn unsubscribe_by_mail(&self, report: LaterReport) {
        let (to, query) = report
            .url
            .split_once('?')
            .unwrap_or((report.url.as_str(), ""));
        let subject = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("subject="))
            .unwrap_or("unsubscribe");
        let date = mail_builder::headers::date::Date::new((self.clock.now_ms() / 1000) as i64);
        let body = format!(
            "From: <{}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: {}\r\nMessage-ID: <unsubscribe.{}@{}>\r\n\r\nunsubscribe\r\n",
            report.rcpt,
            date.to_rfc822(),
            report.message_id.trim_matches(['<', '>']).replace('@', "."),
            report.host,
        );
        let domain = to.rsplit_once('@').map_or("", |(_, d)| d).to_string();
        // A recipient acting on a URL of the message asks only 127.0.0.0/8, as its web
        // requests do (a mailto address may be a literal: unsub@[192.0.2.1]).
        let result = self
            .send(&report, &report.rcpt, &domain, to, body.as_bytes(), true)
            .await;
        let (status, error) = match result {
            Ok(()) => (250, String::new()),
            Err(e) => (0, e),
        };
        self.events.emit(Event::Unsubscribed {
            rcpt: report.rcpt.clone(),
            message_id: report.message_id.clone(),
            method: "mailto".into(),
            url: format!("mailto:{}", report.url),
            http_status: status,
            error,
        });
    }

    /// A bounce or a complaint report, sent by SMTP.
    async fn report(&self, report: LaterReport) {
        let sender_domain = report
            .mail_from
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_ascii_lowercase();
        let (kind, to) = match report.kind {
            LaterKind::Bounce => ("bounce", report.mail_from.clone()),
            _ => (
                "complaint",
                self.feedback_addresses
                    .iter()
                    .find(|(d, _)| *d == sender_domain)
                    .map_or_else(|| format!("fbl@{sender_domain}"), |(_, a)| a.clone()),
            ),
        };
        let date_s = (self.clock.now_ms() / 1000) as i64;
        // RFC 5322 section 3.6.4: one `@` in a msg-id; the original's id becomes a dot-atom.
        let message_id = format!(
            "report.{}.{}@{}",
            kind,
            report.message_id.trim_matches(['<', '>']).replace('@', "."),
            report.host
        );
        // The original's header block, with the return path it came with.
        let mut headers = format!("Return-Path: <{}>\r\n", report.mail_from).into_bytes();
        headers.extend_from_slice(&report.headers);
        let body = match report.kind {
            LaterKind::Bounce => mailsim_bounce::build::dsn(&mailsim_bounce::build::Dsn {
                reporting_mta: &report.host,
                to: &to,
                recipient: &report.rcpt,
                action: "failed",
                // An accept-then-bounce as Exchange Online writes it when the address is
                // found missing after the message was accepted (its NDR reference lists
                // "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP
                // address lookup"); the DSN's Status keeps RFC 3463's 5.1.1.
                status: "5.1.1",
                diagnostic: Some(
                    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
                ),
                remote_mta: None,
                explanation: "The message was accepted, but the mailbox turned out to be unavailable.",
                original_headers: &headers,
                message_id: &message_id,
                date_s,
            }),
            _ => mailsim_bounce::build::arf(&mailsim_bounce::build::Arf {
                reporter: report
                    .host
                    .split_once('.')
                    .map_or(report.host.as_str(), |(_, d)| d),
                to: &to,
                recipient: &report.rcpt,
                mail_from: &report.mail_from,
                source_ip: "127.0.0.1",
                original_headers: &headers,
                message_id: &message_id,
                date_s,
            }),
        };
        let domain = to.rsplit_once('@').map_or("", |(_, d)| d).to_string();
        for attempt in 1..=REPORT_ATTEMPTS_MAX {
            match self.send(&report, "", &domain, &to, &body, false).await {
                Ok(()) => {
                    self.events.emit(Event::ReportSent {
                        host: report.host.clone(),
                        kind: kind.into(),
                        to: to.clone(),
                        rcpt: report.rcpt.clone(),
                        message_id: report.message_id.clone(),
                    });
                    return;
                }
                Err(e) => {
                    tracing::debug!(host = %report.host, attempt, "sending a {kind} report: {e}");
                    if attempt < REPORT_ATTEMPTS_MAX {
                        tokio::time::sleep(REPORT_RETRY).await;
                    }
                }
            }
        }
        tracing::warn!(host = %report.host, "gave up sending a {kind} report to {to}");
    }

    async fn send(
        &self,
        report: &LaterReport,
        from: &str,
        domain: &str,
        to: &str,
        body: &[u8],
        loopback_only: bool,
    ) -> Result<(), String> {
        let hosts = self
            .resolver
            .route(domain)
            .await
            .map_err(|e| e.to_string())?;
        let connector = (self.connector_for)(report.host_ip);
        let addr = hosts
            .iter()
            .flat_map(|h| h.addrs.iter())
            .next()
            .ok_or_else(|| format!("{domain}: no MX address"))?;
        if loopback_only && !crate::web::allowed(*addr) {
            tracing::warn!("refused to send to {domain} at {addr}: outside 127.0.0.0/8");
            return Err(format!("refused: {addr} ({domain}) is outside 127.0.0.0/8"));
        }
        let stream = connector
            .connect(SocketAddr::new(*addr, self.port))
            .await
            .map_err(|e| e.to_string())?;
        let mut client = SmtpClient::new(stream, SmtpTimeouts::default());
        client
            .handshake(&report.host)
            .await
            .map_err(|e| e.to_string())?;
        let outcome = client
            .transaction(&Envelope {
                from,
                rcpt: to,
                body,
            })
            .await
            .map_err(|e| e.to_string())?;
        client.quit().await;
        if outcome.decisive.code / 100 == 2 {
            Ok(())
        } else {
            Err(format!(
                "{} {}",
                outcome.decisive.code, outcome.decisive.text
            ))
        }
    }
}

/// Reads the sender's mailbox: every message its MX accepts.
pub struct BounceProcessor {
    pub events: EventSink,
    pub suppression: Arc<Suppression>,
    /// The key the MTA tags its VERP return paths with (the daemon's `--mx`): a report then
    /// suppresses only the recipient of a tagged return path it came to or quotes (None: a
    /// scenario's sender MX, whose reports come from the run's own fleet).
    pub verp_key: Option<Arc<mailsim_mta::engine::VerpKey>>,
}

impl BounceProcessor {
    /// Read one message; the (address, reason) pairs it put on the suppression list.
    pub fn process(
        &self,
        info: &SessionInfo,
        tx: &Transaction,
        message: &[u8],
    ) -> Vec<(String, String)> {
        self.process_classified(info, tx, message, None)
    }

    /// [`BounceProcessor::process`], given what [`mailsim_bounce::classify_message`] finds in
    /// `message` when that was done ahead (None: done here).
    pub fn process_classified(
        &self,
        _info: &SessionInfo,
        tx: &Transaction,
        message: &[u8],
        classified: Option<Vec<mailsim_bounce::Classified>>,
    ) -> Vec<(String, String)> {
        let mut added = Vec::new();
        // RFC 2369 mailto unsubscribe: a mail to the list's unsubscribe address takes its
        // sender off the list.
        let to_unsubscribe = tx.rcpts.iter().any(|r| {
            r.rsplit_once('@')
                .is_some_and(|(local, _)| local.eq_ignore_ascii_case("unsubscribe"))
        });
        if to_unsubscribe {
            if !tx.mail_from.is_empty() && self.suppression.add(&tx.mail_from, "unsubscribed") {
                let rcpt = tx.mail_from.to_ascii_lowercase();
                self.events.emit(Event::SuppressionAdded {
                    rcpt: rcpt.clone(),
                    reason: "unsubscribed".into(),
                });
                added.push((rcpt, "unsubscribed".to_string()));
            }
            return added;
        }
        let found = classified.unwrap_or_else(|| mailsim_bounce::classify_message(message));
        let text = String::from_utf8_lossy(message);
        // A report that came to a VERP return path speaks for the one recipient that path was
        // made for: another address it names is recorded, not suppressed (an independent
        // review: a forged DSN to the sender's MX suppressed whatever it named).
        // With a key, only a tagged return path counts, the one the report came to or the one
        // it quotes (a complaint's Original-Mail-From, a DSN's returned Return-Path): the
        // queue id and recipient in an untagged one can be guessed.
        let tokens = || text.split(|c: char| c == '<' || c == '>' || c.is_whitespace());
        let verp_for = match &self.verp_key {
            None => tx.rcpts.iter().find_map(|r| verp_rcpt(r)),
            Some(key) => tx
                .rcpts
                .iter()
                .map(String::as_str)
                .chain(tokens())
                .find_map(|a| mailsim_mta::engine::verp_signed_rcpt(a, key)),
        };
        // DSNs come to the VERP return path; complaints name it in Original-Mail-From.
        let msg = tx
            .rcpts
            .iter()
            .find_map(|r| verp_id(r))
            .or_else(|| tokens().find_map(verp_id));
        for c in found {
            let kind = if c.reason == "feedback" {
                "complaint"
            } else {
                "bounce"
            };
            self.events.emit(Event::ReportReceived {
                kind: kind.into(),
                msg,
                rcpt: c.recipient.clone(),
                reason: c.reason.clone(),
                status: c.status.clone(),
                hard: c.hard,
                message_id: c.message_id.clone().unwrap_or_default(),
                action: c.action.clone().unwrap_or_default(),
            });
            let mine = |v: &String| v.eq_ignore_ascii_case(&c.recipient);
            let tied = match &self.verp_key {
                None => verp_for.as_ref().is_none_or(mine),
                Some(_) => verp_for.as_ref().is_some_and(mine),
            };
            if !tied {
                tracing::warn!(
                    "a report names {} without a return path made for it ({}): recorded, not suppressed",
                    c.recipient,
                    verp_for.as_deref().unwrap_or("none")
                );
            }
            if (kind == "complaint" || c.hard)
                && tied
                && self.suppression.add(&c.recipient, &c.reason)
            {
                added.push((c.recipient.clone(), c.reason.clone()));
                self.events.emit(Event::SuppressionAdded {
                    rcpt: c.recipient,
                    reason: c.reason,
                });
            }
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailsim_events::{EventLog, SystemClock};

    /// A DNS that answers nothing: an address literal needs none.
    struct NoDns;

    impl mailsim_mta::dns::Lookups for NoDns {
        async fn mx(&self, _: &str) -> mailsim_mta::dns::Answer<(u16, String)> {
            mailsim_mta::dns::Answer::Failed("no DNS here".into())
        }
        async fn a(&self, _: &str) -> mailsim_mta::dns::Answer<IpAddr> {
            mailsim_mta::dns::Answer::Failed("no DNS here".into())
        }
        async fn txt(&self, _: &str) -> mailsim_mta::dns::Answer<String> {
            mailsim_mta::dns::Answer::Failed("no DNS here".into())
        }
    }

    /// A network that records every connection asked of it and makes none.
    struct Refusing(Arc<std::sync::Mutex<Vec<SocketAddr>>>);

    impl Connector for Refusing {
        type Stream = tokio::io::DuplexStream;
        async fn connect(&self, addr: SocketAddr) -> std::io::Result<Self::Stream> {
            self.0.lock().unwrap().push(addr);
            Err(std::io::ErrorKind::ConnectionRefused.into())
        }
    }

    /// A bounce processor without a VERP key, logging to `dir`.
    fn processor_in(dir: &std::path::Path) -> (EventLog, BounceProcessor) {
        let log = EventLog::create(&dir.join("events.log"), Arc::new(SystemClock)).unwrap();
        let processor = BounceProcessor {
            events: log.sink(),
            suppression: Arc::new(Suppression::in_memory()),
            verp_key: None,
        };
        (log, processor)
    }

    /// One mail nesting 50,000 messages (3 MB) to the sender's MX, on a thread with a tokio
    /// worker's stack: read and recorded, not a stack overflow that took the MX down at every
    /// retry (an independent review); the receivers' content reading likewise.
    #[test]
    fn a_message_nesting_50000_messages_does_not_take_the_mx_down() {
        let unit = "From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n";
        let raw = format!("{}x", unit.repeat(50_000));
        let dir = tempfile::tempdir().unwrap();
        let (log, processor) = processor_in(dir.path());
        let added = std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn_scoped(s, || {
                    let info = SessionInfo::new(
                        1,
                        "127.0.0.1:1".parse().unwrap(),
                        "127.0.0.1:25".parse().unwrap(),
                    );
                    let tx = Transaction {
                        mail_from: String::new(),
                        rcpts: vec!["bounces@s.test".into()],
                    };
                    let _ = crate::engage::Links::of(raw.as_bytes());
                    let _ = crate::reputation::content_score(raw.as_bytes(), &[]);
                    processor.process(&info, &tx, raw.as_bytes())
                })
                .unwrap()
                .join()
                .unwrap()
        });
        assert!(added.is_empty());
        log.close().unwrap();
    }

    /// A simulated recipient's mailto unsubscribe goes only to 127.0.0.0/8, as its web
    /// requests do: an address literal elsewhere is refused before any connection, and the
    /// refusal is in the event log; one on loopback is tried.
    #[tokio::test]
    async fn a_mailto_unsubscribe_outside_loopback_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let log = EventLog::create(&path, Arc::new(SystemClock)).unwrap();
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = asked.clone();
        let reporter = Reporter {
            resolver: Arc::new(NoDns),
            connector_for: move |_| Refusing(seen.clone()),
            port: 25,
            events: log.sink(),
            clock: Arc::new(SystemClock),
            feedback_addresses: Vec::new(),
            trust: crate::web::Trust::default(),
        };
        for url in ["unsub@[192.0.2.1]?subject=stop", "unsub@[127.0.0.9]"] {
            reporter
                .unsubscribe_by_mail(LaterReport {
                    due_ms: 0,
                    kind: LaterKind::UnsubscribeMailto,
                    host: "mx.r.test".into(),
                    host_ip: "127.0.0.2".parse().unwrap(),
                    mail_from: "bounces@s.test".into(),
                    rcpt: "ann@r.test".into(),
                    message_id: "<1@s.test>".into(),
                    headers: Vec::new(),
                    url: url.into(),
                })
                .await;
        }
        assert_eq!(
            *asked.lock().unwrap(),
            ["127.0.0.9:25".parse::<SocketAddr>().unwrap()]
        );
        drop(reporter);
        log.close().unwrap();
        let (records, _) = mailsim_events::read_log(&path).unwrap();
        let errors: Vec<String> = records
            .into_iter()
            .filter_map(|r| match r.event {
                Event::Unsubscribed { error, .. } => Some(error),
                _ => None,
            })
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("192.0.2.1") && errors[0].contains("outside 127.0.0.0/8"),
            "{errors:?}"
        );
        assert!(!errors[1].contains("outside"), "{errors:?}");
    }

    /// A report that came to a VERP return path suppresses the recipient that path was made
    /// for, and only that one (an independent review: a forged DSN to the sender's MX put
    /// whatever addresses it named on the suppression list).
    #[test]
    fn a_report_to_a_verp_path_suppresses_its_own_recipient_only() {
        let dir = tempfile::tempdir().unwrap();
        let (log, processor) = processor_in(dir.path());
        let verp = mailsim_mta::engine::verp_address("news@s.test", 7, "ann@x.test", None);
        assert_eq!(verp_rcpt(&verp).as_deref(), Some("ann@x.test"));
        let dsn = "From: MAILER-DAEMON@x.test\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nUndeliverable.\r\n\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x.test\r\n\r\nFinal-Recipient: rfc822; ann@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\nFinal-Recipient: rfc822; vip@gmail.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n";
        let info = SessionInfo::new(
            1,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:25".parse().unwrap(),
        );
        let tx = Transaction {
            mail_from: String::new(),
            rcpts: vec![verp],
        };
        let added = processor.process(&info, &tx, dsn.as_bytes());
        assert_eq!(
            added,
            [("ann@x.test".to_string(), "userunknown".to_string())]
        );
        assert!(processor.suppression.reason("vip@gmail.test").is_none());
        // Without VERP (the daemon's MX) a report is taken as it comes, as the README says.
        let plain = Transaction {
            mail_from: String::new(),
            rcpts: vec!["bounces@s.test".into()],
        };
        let added = processor.process(&info, &plain, dsn.as_bytes());
        assert_eq!(
            added,
            [("vip@gmail.test".to_string(), "userunknown".to_string())]
        );
        log.close().unwrap();
    }
}
