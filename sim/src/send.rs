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
    /// Submit at most this many messages per second, evenly spaced (all connections together).
    pub rate: Option<f64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendReport {
    pub acked: u64,
    pub rejected: u64,
    /// Attempts that failed temporarily (4xx, connection lost or refused) and were repeated.
    pub retried: u64,
}

/// The pause after a failed attempt, before the next.
const PAUSE: Duration = Duration::from_millis(100);

/// Messages a worker builds at a time.
const BATCH: u64 = 64;

/// The campaign's messages, as a client would submit them, dated `date_s` (seconds since the
/// Unix epoch: now, for an MTA on the wall clock), and DKIM-signed by `signer` when one is
/// given (for an MTA under test that does not sign). Built a batch at a time as the workers
/// take them, so that memory does not grow with the campaign (an independent review: 790 MB
/// for 100,000 messages built at once).
pub struct Campaign<'a> {
    scenario: &'a Scenario,
    world: &'a World,
    date_s: i64,
    signer: Option<&'a mailsim_mta::dkim::Signer>,
    tracking: Option<&'a crate::web::Tracking>,
    /// Of every `count` messages, the one at `index` (a node's share; (0, 1): all of them).
    share: (u64, u64),
    /// The campaign's messages, all shares.
    all: u64,
    /// The first message not yet taken.
    next: std::sync::atomic::AtomicU64,
}

impl<'a> Campaign<'a> {
    pub fn new(
        scenario: &'a Scenario,
        world: &'a World,
        date_s: i64,
        signer: Option<&'a mailsim_mta::dkim::Signer>,
        tracking: Option<&'a crate::web::Tracking>,
    ) -> Self {
        Campaign {
            scenario,
            world,
            date_s,
            signer,
            tracking,
            share: (0, 1),
            all: scenario.campaign().messages_in(0),
            next: Default::default(),
        }
    }

    /// Only messages `index`, `index + count`, ... (a node's share).
    pub fn share(mut self, index: u32, count: u32) -> Self {
        self.share = (u64::from(index), u64::from(count.max(1)));
        self
    }

    /// The messages of the share.
    pub fn len(&self) -> u64 {
        let (index, count) = self.share;
        self.all.saturating_sub(index).div_ceil(count)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The share's messages in `range` of the campaign, built and signed.
    fn build(&self, range: std::ops::Range<u64>) -> anyhow::Result<Vec<OutboundMessage>> {
        let (index, count) = self.share;
        let first = range.start;
        let built = build_messages(
            self.scenario,
            self.world,
            range,
            0,
            self.date_s,
            self.tracking,
        );
        let mut messages: Vec<OutboundMessage> = built
            .into_iter()
            .zip(first..)
            .filter(|(_, i)| i % count == index)
            .map(|(m, _)| m)
            .collect();
        if let Some(signer) = self.signer {
            for m in &mut messages {
                m.body = signer.sign(&m.body, self.date_s.max(0) as u64)?;
            }
        }
        Ok(messages)
    }

    /// The next batch of the share, or None once every message was taken.
    fn next_batch(&self) -> anyhow::Result<Option<Vec<OutboundMessage>>> {
        loop {
            let start = self
                .next
                .fetch_add(BATCH, std::sync::atomic::Ordering::Relaxed);
            if start >= self.all {
                return Ok(None);
            }
            let batch = self.build(start..(start + BATCH).min(self.all))?;
            if !batch.is_empty() {
                return Ok(Some(batch));
            }
        }
    }

    /// Every message of the share at once (the tests' reference).
    #[cfg(test)]
    fn all(&self) -> anyhow::Result<Vec<OutboundMessage>> {
        self.build(0..self.all)
    }
}

struct Shared {
    report: Mutex<SendReport>,
    acked: Option<Mutex<std::fs::File>>,
    on_ack: Option<OnAck>,
    /// With a rate: the interval between two messages and when the next may go.
    pacing: Option<(Duration, Mutex<tokio::time::Instant>)>,
}

impl Shared {
    fn new(opts: &SendOptions) -> anyhow::Result<Arc<Shared>> {
        let acked = match &opts.acked_path {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => None,
        };
        let pacing = opts.rate.filter(|r| *r > 0.0).map(|r| {
            (
                Duration::from_secs_f64(1.0 / r),
                Mutex::new(tokio::time::Instant::now()),
            )
        });
        Ok(Arc::new(Shared {
            report: Mutex::new(SendReport::default()),
            acked,
            on_ack: opts.on_ack.clone(),
            pacing,
        }))
    }

    /// With a rate, wait for this message's slot.
    async fn pace(&self) {
        if let Some((interval, next)) = &self.pacing {
            let slot = {
                let mut next = next.lock().expect("pacing");
                let slot = (*next).max(tokio::time::Instant::now());
                *next = slot + *interval;
                slot
            };
            tokio::time::sleep_until(slot).await;
        }
    }
}

/// Submit `campaign` over `opts.connections` sessions at once, each taking the next batch of
/// messages as it needs one.
pub async fn send(campaign: &Campaign<'_>, opts: &SendOptions) -> anyhow::Result<SendReport> {
    let shared = Shared::new(opts)?;
    let workers =
        (0..opts.connections.max(1)).map(|_| worker(campaign, opts.to, opts.stall_max, &shared));
    futures_util::future::try_join_all(workers).await?;
    let report = *shared.report.lock().expect("report");
    Ok(report)
}

/// How long a worker has gone without an answer that moves the campaign on, measured on the
/// clock (the time spent waiting for a server counts, not only the pauses between tries), and
/// what went wrong last, for the error that ends it.
struct Stall {
    since: tokio::time::Instant,
    max: Duration,
    last: String,
}

impl Stall {
    fn new(max: Duration) -> Self {
        Stall {
            since: tokio::time::Instant::now(),
            max,
            last: "no answer yet".into(),
        }
    }

    /// An answer that moves the campaign on (a message accepted or refused for good).
    fn progress(&mut self) {
        self.since = tokio::time::Instant::now();
    }

    fn failed(&mut self, what: impl std::fmt::Display) {
        self.last = what.to_string();
    }

    /// What is left of the time without progress (a wait for a server is bounded by it).
    fn remaining(&self) -> Duration {
        self.max.saturating_sub(self.since.elapsed())
    }

    fn check(&self, to: SocketAddr) -> anyhow::Result<()> {
        if self.remaining().is_zero() {
            anyhow::bail!(
                "{to}: nothing acknowledged for {:?}; last: {}",
                self.max,
                self.last
            );
        }
        Ok(())
    }

    /// A connection made by `work`, or None after a failure (counted as a retry, named, and
    /// followed by a pause).
    async fn connect<T>(
        &mut self,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
        shared: &Shared,
    ) -> Option<T> {
        match self.bounded("connecting", work).await {
            Some(Ok(c)) => return Some(c),
            Some(Err(e)) => self.failed(format!("connecting: {e:#}")),
            None => {}
        }
        shared.report.lock().expect("report").retried += 1;
        tokio::time::sleep(PAUSE).await;
        None
    }

    /// `work`, or the stall's end if it comes first (then None, and the reason is kept).
    async fn bounded<T>(
        &mut self,
        what: &str,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        match tokio::time::timeout(self.remaining(), work).await {
            Ok(t) => Some(t),
            Err(_) => {
                self.failed(format!("{what}: no answer"));
                None
            }
        }
    }
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
    campaign: &Campaign<'_>,
    to: SocketAddr,
    stall_max: Duration,
    shared: &Shared,
) -> anyhow::Result<()> {
    let mut client: Option<SmtpClient<TcpStream>> = None;
    let mut stall = Stall::new(stall_max);
    while let Some(batch) = campaign.next_batch()? {
        for m in &batch {
            shared.pace().await;
            loop {
                stall.check(to)?;
                let c = match client.as_mut() {
                    Some(c) => c,
                    None => match stall.connect(connect(to), shared).await {
                        Some(c) => client.insert(c),
                        None => continue,
                    },
                };
                let env = Envelope {
                    from: &m.from,
                    rcpt: &m.rcpts[0],
                    body: &m.body,
                };
                let Some(answer) = stall.bounded("the transaction", c.transaction(&env)).await
                else {
                    client = None;
                    continue;
                };
                match answer {
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
                        stall.progress();
                        if outcome.connection_closed {
                            client = None;
                        }
                        break;
                    }
                    Ok(outcome) if outcome.decisive.code >= 500 => {
                        shared.report.lock().expect("report").rejected += 1;
                        stall.progress();
                        if outcome.connection_closed {
                            client = None;
                        }
                        break;
                    }
                    Ok(outcome) => {
                        let r = &outcome.decisive;
                        stall.failed(format!("{} {}", r.code, r.text));
                        shared.report.lock().expect("report").retried += 1;
                        if outcome.connection_closed {
                            client = None;
                        }
                        tokio::time::sleep(PAUSE).await;
                    }
                    Err(e) => {
                        stall.failed(e);
                        shared.report.lock().expect("report").retried += 1;
                        client = None;
                        tokio::time::sleep(PAUSE).await;
                    }
                }
            }
        }
    }
    if let Some(c) = client {
        c.quit().await;
    }
    Ok(())
}

/// The campaign as HTTP injection requests (`POST /api/inject/v1`), `per_request` recipients
/// each: one template (the campaign's subject, its From, a text body of its size) with each
/// recipient's name and Message-ID as substitution data, so the MTA builds what the campaign
/// would have sent by SMTP (same recipients, Message-IDs, subject and size). Made one at a time
/// as the connections take them, from the recipients and Message-IDs alone (no message built):
/// memory does not grow with the campaign.
pub struct HttpRequests<'a> {
    campaign: &'a Campaign<'a>,
    envelopes: crate::runner::Envelopes<'a>,
    envelope_sender: String,
    content: serde_json::Value,
    per_request: u64,
    /// The next request to take.
    next: std::sync::atomic::AtomicU64,
}

impl<'a> HttpRequests<'a> {
    pub fn new(campaign: &'a Campaign<'a>, per_request: usize) -> Self {
        let scenario = campaign.scenario;
        let c = scenario.campaign();
        let sender = &campaign.world.senders[0].sender;
        // The campaign's text, its greeting a substitution the MTA fills in.
        let text = crate::runner::campaign_text("{{ name }}", c.size_bytes);
        HttpRequests {
            campaign,
            envelopes: crate::runner::Envelopes::new(scenario, campaign.world),
            envelope_sender: sender.from_address(),
            content: serde_json::json!({
                "from": {"email": sender.from_address(), "name": "Newsletter"},
                "subject": c.subject,
                "headers": {"Message-ID": "{{ id }}"},
                "text_body": text,
            }),
            per_request: per_request.max(1) as u64,
            next: Default::default(),
        }
    }

    /// Request `k`: its JSON body and how many recipients it names; None past the last.
    fn request(&self, k: u64) -> Option<(Vec<u8>, usize)> {
        let (index, count) = self.campaign.share;
        let first = k.checked_mul(self.per_request)?;
        let end = first
            .saturating_add(self.per_request)
            .min(self.campaign.len());
        if first >= end {
            return None;
        }
        // The share's `j`-th message is the campaign's `index + j * count`.
        let recipients: Vec<serde_json::Value> = (first..end)
            .map(|j| {
                let i = index + j * count;
                serde_json::json!({
                    "email": self.envelopes.rcpt(i),
                    "substitutions": {
                        "name": format!("user{j}"),
                        "id": format!("<{}>", self.envelopes.message_id(i, 0)),
                    }
                })
            })
            .collect();
        let body = serde_json::json!({
            "envelope_sender": self.envelope_sender,
            "content": self.content,
            "recipients": recipients,
        });
        Some((
            serde_json::to_vec(&body).unwrap_or_default(),
            (end - first) as usize,
        ))
    }

    /// How many requests the campaign makes.
    pub fn len(&self) -> u64 {
        self.campaign.len().div_ceil(self.per_request)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next request not yet taken.
    fn take(&self) -> Option<(Vec<u8>, usize)> {
        let k = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.request(k)
    }
}

/// POST each request to the injection API at `to` with `token`, over `connections` kept-alive
/// connections, each taking the next request as it needs one; a request answered 5xx or lost
/// is sent again, one answered 4xx counts its recipients as rejected (and its error is printed
/// once).
pub async fn send_http(
    requests: &HttpRequests<'_>,
    to: SocketAddr,
    token: &str,
    opts: &SendOptions,
) -> anyhow::Result<SendReport> {
    let shared = Shared::new(opts)?;
    let token = format!("Bearer {token}");
    // No more connections than requests.
    let connections = (opts.connections.max(1) as u64).min(requests.len().max(1));
    let workers =
        (0..connections).map(|_| http_worker(requests, to, &token, opts.stall_max, &shared));
    futures_util::future::try_join_all(workers).await?;
    let report = *shared.report.lock().expect("report");
    Ok(report)
}

/// The most an injection API's answer may hold (it names each recipient of a request once).
const ANSWER_BYTES_MAX: usize = 16 << 20;

type HttpSender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

async fn http_connect(to: SocketAddr) -> anyhow::Result<HttpSender> {
    let stream = TcpStream::connect(to).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn http_worker(
    requests: &HttpRequests<'_>,
    to: SocketAddr,
    token: &str,
    stall_max: Duration,
    shared: &Shared,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let mut conn: Option<HttpSender> = None;
    let mut stall = Stall::new(stall_max);
    while let Some((body, recipients)) = requests.take() {
        let body = bytes::Bytes::from(body);
        loop {
            stall.check(to)?;
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match stall.connect(http_connect(to), shared).await {
                    Some(c) => conn.insert(c),
                    None => continue,
                },
            };
            let request = hyper::Request::post("/api/inject/v1")
                .header(hyper::header::HOST, to.to_string())
                .header(hyper::header::AUTHORIZATION, token)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(body.clone()))?;
            let exchange = async {
                // The connection takes the next request once it has read the last answer
                // whole: before that, hyper refuses it (not ready), which is no failure.
                c.ready()
                    .await
                    .map_err(|e| format!("the connection: {e}"))?;
                match c.send_request(request).await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let retry_after = response
                            .headers()
                            .get(hyper::header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
                        // An answer lists each recipient once: its size is bounded (a server
                        // sending without end took `send` to 5.8 GB: an independent review).
                        let body =
                            http_body_util::Limited::new(response.into_body(), ANSWER_BYTES_MAX);
                        match body.collect().await {
                            Ok(b) => Ok((status, retry_after, b.to_bytes())),
                            Err(e) => Err(format!("reading the answer: {e}")),
                        }
                    }
                    Err(e) => Err(format!("the request: {e}")),
                }
            };
            let answer = match stall.bounded("the request", exchange).await {
                Some(Ok(answer)) => Some(answer),
                Some(Err(e)) => {
                    stall.failed(e);
                    None
                }
                None => None,
            };
            match answer {
                Some((200, _, bytes)) => {
                    // The answer accounts for every recipient of the request, or the server is
                    // not the injection API this speaks to: nothing can be counted.
                    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                        anyhow::anyhow!("{to}: 200 to POST /api/inject/v1, not JSON: {e}")
                    })?;
                    let queued = v["queued"].as_array().map_or(&[][..], |q| q.as_slice());
                    let failed = v["fail_count"].as_u64().unwrap_or(0);
                    if queued.len() as u64 + failed != recipients as u64 {
                        anyhow::bail!(
                            "{to}: 200 to POST /api/inject/v1 names {} queued and {failed} failed \
                             of the request's {recipients} recipients",
                            queued.len()
                        );
                    }
                    if let Some(f) = &shared.acked {
                        let mut f = f.lock().expect("acked file");
                        for q in queued {
                            writeln!(f, "{}", q["message_id"].as_str().unwrap_or(""))?;
                        }
                        f.flush()?;
                    }
                    let mut report = shared.report.lock().expect("report");
                    report.acked += queued.len() as u64;
                    report.rejected += failed;
                    stall.progress();
                    break;
                }
                Some((status @ (401 | 403), _, bytes)) => {
                    anyhow::bail!(
                        "{to}: {status} {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
                    );
                }
                // Too many requests (RFC 6585) is for later, not a refusal.
                Some((status, _, bytes)) if (400..500).contains(&status) && status != 429 => {
                    let mut report = shared.report.lock().expect("report");
                    if report.rejected == 0 {
                        eprintln!(
                            "send: {status} {}",
                            String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
                        );
                    }
                    report.rejected += recipients as u64;
                    stall.progress();
                    break;
                }
                other => {
                    // As long as the server asks (Retry-After, in seconds), within the stall
                    // limit.
                    let mut pause = PAUSE;
                    if let Some((status, retry_after, bytes)) = other {
                        stall.failed(format!(
                            "{status} {}",
                            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                        ));
                        if let Some(s) = retry_after {
                            pause = Duration::from_secs(s).min(stall.remaining()).max(PAUSE);
                        }
                    }
                    shared.report.lock().expect("report").retried += 1;
                    conn = None;
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built a batch at a time, the campaign is the one built at once, in the same order; a
    /// share is every `count`-th message from its index.
    #[test]
    fn batches_and_shares_are_the_whole_campaign() {
        let text = "name = \"b\"\nseed = 4\n[[sender]]\ndomain = \"news.example.test\"\n\
                    [[domain]]\nname = \"a.test\"\n[[domain]]\nname = \"b.test\"\n\
                    [campaign]\nmessages = 150\n";
        let sc = Scenario::parse(text, std::path::Path::new("b.toml")).unwrap();
        let world = World::build(&sc).unwrap();
        let ids = |ms: &[OutboundMessage]| -> Vec<String> {
            ms.iter().map(|m| m.message_id.clone()).collect()
        };
        let whole = Campaign::new(&sc, &world, 1_700_000_000, None, None);
        let all = whole.all().unwrap();
        assert_eq!((all.len(), whole.len()), (150, 150));
        let mut batched = Vec::new();
        while let Some(batch) = whole.next_batch().unwrap() {
            assert!(batch.len() as u64 <= BATCH);
            batched.extend(batch);
        }
        assert_eq!(ids(&batched), ids(&all));
        assert_eq!(batched[7].body, all[7].body);
        let share = Campaign::new(&sc, &world, 1_700_000_000, None, None).share(1, 4);
        assert_eq!(share.len(), 38);
        let mut taken = Vec::new();
        while let Some(batch) = share.next_batch().unwrap() {
            taken.extend(batch);
        }
        let every_fourth: Vec<String> = all
            .iter()
            .skip(1)
            .step_by(4)
            .map(|m| m.message_id.clone())
            .collect();
        assert_eq!(ids(&taken), every_fourth);

        // The HTTP requests of a share name its messages' recipients and Message-IDs, in
        // order, `per_request` at a time, the names numbered through the share.
        let requests = HttpRequests::new(&share, 5);
        let mut named = Vec::new();
        while let Some((body, n)) = requests.take() {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let rcpts = v["recipients"].as_array().unwrap();
            assert_eq!(rcpts.len(), n);
            assert!(n <= 5);
            assert_eq!(v["envelope_sender"], taken[0].from.as_str());
            for r in rcpts {
                named.push((
                    r["email"].as_str().unwrap().to_string(),
                    r["substitutions"]["id"].as_str().unwrap().to_string(),
                    r["substitutions"]["name"].as_str().unwrap().to_string(),
                ));
            }
        }
        let expected: Vec<(String, String, String)> = taken
            .iter()
            .enumerate()
            .map(|(j, m)| (m.rcpts[0].clone(), m.message_id.clone(), format!("user{j}")))
            .collect();
        assert_eq!(named, expected);
    }
}
