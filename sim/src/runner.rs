//! Runs a scenario: its parts assembled in a live or virtual [`Env`], the campaign injected,
//! until every message is final or the time limit passes. Writes the event log and the summary
//! folded from it.

use crate::assemble::{Assembly, Plan, Reporting, assemble};
use crate::env::{Env, LiveEnv, VirtualEnv};
use crate::scenario::{ListUnsubscribe, Mode, Scenario};
use crate::web::Token;
use crate::world::{World, mix};
use anyhow::Context;
use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use mailsim_events::{Event, LogReader, RecordView};
use mailsim_mta::{Mta, OutboundMessage};
use mailsim_summary::{Drain, Summary, SummaryFold};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Messages built, signed and spooled per injection batch.
const INJECT_BATCH: usize = 1000;
/// A virtual run injects a send's next batch once fewer than this many entries are on the
/// ready lists (every destination's together): the MTA opens a session per 500 ready entries
/// of a destination (8 at most), so four destinations keep all their sessions, more keep
/// several each, while the batches after it are signed. Below it, batches go in one after the
/// other.
const READY_LOW_WATER: usize = 16 * INJECT_BATCH;

pub struct RunOptions {
    pub out_dir: PathBuf,
    pub progress: bool,
}

/// File names inside a run directory.
pub fn events_path(dir: &Path) -> PathBuf {
    dir.join("events.log")
}

pub fn summary_path(dir: &Path) -> PathBuf {
    dir.join("summary.json")
}

/// Build the campaign's messages `range` deterministically from the seed.
pub fn build_messages(
    scenario: &Scenario,
    world: &World,
    range: std::ops::Range<u64>,
    send: u32,
    date_s: i64,
    tracking: Option<&crate::web::Tracking>,
) -> Vec<OutboundMessage> {
    let campaign = scenario.campaign();
    let envelopes = Envelopes::new(scenario, world);
    let sender = &world.senders[0].sender;
    let from = sender.from_address();
    range
        .map(|i| {
            let subscriber = envelopes.subscriber(i);
            let rcpt = envelopes.rcpt(i);
            let message_id = envelopes.message_id(i, send);
            let greeting = subscriber
                .and_then(|s| s.fields.get("name"))
                .and_then(|n| n.as_str())
                .map_or_else(|| format!("user{i}"), str::to_string);
            let body = campaign_text(&greeting, campaign.size_bytes);
            let mut builder = MessageBuilder::new()
                .from(("Newsletter", from.as_str()))
                .to(rcpt.as_str())
                .subject(campaign.subject.as_str())
                .message_id(message_id.as_str())
                .date(date_s);
            let unsubscribe_mailto = format!("unsubscribe@{}", sender.domain);
            let unsubscribe_url = match &campaign.unsubscribe_url {
                Some(template) => Some(template.replace("{{rcpt}}", &rcpt)),
                None => tracking.map(|t| {
                    let token = t.tokens.sign(&Token::Unsubscribe { rcpt: rcpt.clone() });
                    format!("{}/u/{token}", t.https_base)
                }),
            };
            builder = match (campaign.list_unsubscribe, &unsubscribe_url) {
                (ListUnsubscribe::None, _) => builder,
                (ListUnsubscribe::OneClick, Some(url)) => builder
                    .header(
                        "List-Unsubscribe",
                        Raw::new(format!(
                            "<{url}>, <mailto:{unsubscribe_mailto}?subject=unsubscribe>"
                        )),
                    )
                    .header(
                        "List-Unsubscribe-Post",
                        Raw::new("List-Unsubscribe=One-Click"),
                    ),
                _ => builder.header(
                    "List-Unsubscribe",
                    Raw::new(format!("<mailto:{unsubscribe_mailto}?subject=unsubscribe>")),
                ),
            };
            builder = if campaign.html {
                // multipart/alternative with a boundary of our own: mail-builder's would come
                // from the clock, and a virtual run must build the same bytes every time.
                let html = match &campaign.html_template_text {
                    Some(template) => template.replace("{{rcpt}}", &html_escape(&rcpt)),
                    None => html_part(&rcpt, &body, tracking, unsubscribe_url.as_deref()),
                };
                let boundary = format!("=_mailsim_{:016x}", mix(scenario.seed, &message_id));
                builder.body(MimePart::new(
                    ContentType::new("multipart/alternative").attribute("boundary", boundary),
                    vec![
                        MimePart::new("text/plain", body),
                        MimePart::new("text/html", html),
                    ],
                ))
            } else {
                builder.text_body(body)
            };
            let bytes = builder.write_to_vec().unwrap_or_default();
            OutboundMessage {
                from: from.clone(),
                rcpts: vec![rcpt],
                message_id: format!("<{message_id}>"),
                body: bytes,
                lane: mailsim_mta::queue::Lane::Bulk,
                campaign: None,
            }
        })
        .collect()
}

/// A campaign message's text: a greeting to `greeting`, then filler up to about `size_bytes`
/// for the whole message (its header section takes about 600).
pub fn campaign_text(greeting: &str, size_bytes: usize) -> String {
    let filler =
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n";
    let mut text = format!("Hello {greeting},\r\n\r\n");
    while text.len() + 600 < size_bytes {
        text.push_str(filler);
    }
    text
}

/// Who campaign message `i` goes to and its Message-ID, as [`build_messages`] gives them,
/// known without building the message (the HTTP load generator's requests carry only these).
pub struct Envelopes<'a> {
    scenario: &'a Scenario,
    domains: Vec<(&'a str, f64)>,
    total: f64,
    sender_domain: &'a str,
}

impl<'a> Envelopes<'a> {
    pub fn new(scenario: &'a Scenario, world: &'a World) -> Self {
        let domains = weighted_domains(scenario);
        Envelopes {
            scenario,
            total: domains.iter().map(|d| d.1).sum(),
            domains,
            sender_domain: &world.senders[0].sender.domain,
        }
    }

    /// The list subscriber message `i` goes to, when the campaign is sent to a list.
    fn subscriber(&self, i: u64) -> Option<&'a mailsim_platform::lists::Subscriber> {
        let list = self.scenario.campaign().list_subscribers.as_ref()?;
        list.get((i % list.len() as u64) as usize)
    }

    /// The recipient of message `i`.
    pub fn rcpt(&self, i: u64) -> String {
        match self.subscriber(i) {
            Some(s) => s.email.clone(),
            None => recipient_in(self.scenario.seed, &self.domains, self.total, i),
        }
    }

    /// The Message-ID of message `i` of send `send` (0: the campaign's first), without its
    /// angle brackets.
    pub fn message_id(&self, i: u64, send: u32) -> String {
        let (seed, domain) = (self.scenario.seed, self.sender_domain);
        if send == 0 {
            format!("{i}.{seed}@{domain}")
        } else {
            format!("{i}.{seed}.{send}@{domain}")
        }
    }
}

/// Transactional message `i` of the scenario's `[transactional]` stream: a sign-in code to a
/// member of one of the campaign's domains (drawn from the seed), in the transactional lane.
pub fn build_transactional(
    scenario: &Scenario,
    world: &World,
    t: &crate::scenario::TransactionalSection,
    i: u64,
    date_s: i64,
) -> OutboundMessage {
    let domains = weighted_domains(scenario);
    let total: f64 = domains.iter().map(|d| d.1).sum();
    let drawn = recipient_in(mix(scenario.seed, "transactional"), &domains, total, i);
    let rcpt = format!(
        "member{i}@{}",
        drawn.rsplit_once('@').map_or("", |(_, d)| d)
    );
    let sender = &world.senders[0].sender;
    let from = sender.from_address();
    let message_id = format!("t{i}.{}@{}", scenario.seed, sender.domain);
    let code = mix(scenario.seed, &message_id) % 1_000_000;
    let body = MessageBuilder::new()
        .from(("Accounts", from.as_str()))
        .to(rcpt.as_str())
        .subject(t.subject.as_str())
        .message_id(message_id.as_str())
        .date(date_s)
        .text_body(format!("Your sign-in code is {code:06}.\r\n"))
        .write_to_vec()
        .unwrap_or_default();
    OutboundMessage {
        from,
        rcpts: vec![rcpt],
        message_id: format!("<{message_id}>"),
        body,
        lane: mailsim_mta::queue::Lane::Transactional,
        campaign: None,
    }
}

/// The scenario's transactional stream: one message every 1/rate seconds from `start_s`, on
/// the runtime's clock (virtual time in a virtual run), until all are sent or `stop`.
async fn transactional_stream<E: Env>(
    scenario: Arc<Scenario>,
    world: Arc<World>,
    mta: Mta<E::Resolver, E::Connector>,
    clock: Arc<dyn mailsim_events::Clock>,
    (start_ms, blocking_threads): (u64, bool),
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Some(t) = scenario.transactional.as_ref().map(|t| t.get_ref().clone()) else {
        return Ok(());
    };
    let interval_us = (1e6 / t.messages_per_s).max(1.0);
    for i in 0..t.messages {
        let at_ms = start_ms + t.start_s * 1000 + (i as f64 * interval_us / 1000.0) as u64;
        let wait = Duration::from_millis(at_ms.saturating_sub(clock.now_ms()));
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(wait) => {}
        }
        let date_s = (clock.now_ms() / 1000) as i64;
        let message = build_transactional(&scenario, &world, &t, i, date_s);
        if blocking_threads {
            let mta = mta.clone();
            tokio::task::spawn_blocking(move || mta.inject(vec![message])).await??;
        } else {
            mta.inject(vec![message])?;
        }
    }
    Ok(())
}

/// The recipient domains and their weights, in the scenario's order.
fn weighted_domains(scenario: &Scenario) -> Vec<(&str, f64)> {
    scenario
        .domains()
        .map(|d| (d.name.as_str(), d.weight))
        .collect()
}

/// The campaign's recipient number `i`: `user<i>@<domain>`, the domain drawn by weight.
fn recipient_in(seed: u64, domains: &[(&str, f64)], total: f64, i: u64) -> String {
    let mut rng = ChaCha20Rng::seed_from_u64(mix(seed, &format!("rcpt:{i}")));
    let mut pick = rng.gen_range(0.0..total);
    let mut domain = domains[0].0;
    for (d, w) in domains {
        if pick < *w {
            domain = d;
            break;
        }
        pick -= w;
    }
    format!("user{i}@{domain}")
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML part of a campaign message: the text as paragraphs, the open pixel, a link to
/// read more and the unsubscribe link, through the sender's tracking server when there is one.
fn html_part(
    rcpt: &str,
    text: &str,
    tracking: Option<&crate::web::Tracking>,
    unsubscribe_url: Option<&str>,
) -> String {
    let mut html = String::from("<!doctype html><html><body>");
    for para in text.split("\r\n\r\n").filter(|p| !p.trim().is_empty()) {
        html.push_str("<p>");
        html.push_str(
            &para
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace("\r\n", " "),
        );
        html.push_str("</p>");
    }
    if let Some(t) = tracking {
        let article = "https://www.example.org/newsletter/november";
        let click = t.tokens.sign(&Token::Click {
            rcpt: rcpt.to_string(),
            url: article.into(),
        });
        let open = t.tokens.sign(&Token::Open {
            rcpt: rcpt.to_string(),
        });
        html.push_str(&format!(
            "<p><a href=\"{}/t/c/{click}\">Read the whole story</a></p>\
             <img src=\"{}/t/o/{open}\" width=\"1\" height=\"1\" alt=\"\">",
            t.http_base, t.http_base
        ));
    }
    if let Some(u) = unsubscribe_url {
        html.push_str(&format!("<p><a href=\"{u}\">Unsubscribe</a></p>"));
    }
    html.push_str("</body></html>");
    html
}

pub use crate::env::VIRTUAL_EPOCH_MS;

/// Run a scenario on the runtime its mode needs: a multi-thread runtime on the wall clock for
/// live mode, a current-thread runtime with a paused clock for virtual mode.
pub fn run_scenario(scenario: &Scenario, opts: &RunOptions) -> anyhow::Result<Summary> {
    run_scenario_drained(scenario, opts).map(|(summary, _)| summary)
}

/// [`run_scenario`], with how the run drained (folded with the summary).
pub fn run_scenario_drained(
    scenario: &Scenario,
    opts: &RunOptions,
) -> anyhow::Result<(Summary, Drain)> {
    match scenario.mode {
        Mode::Live => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(scenario, opts, LiveEnv::default(), "live")),
        Mode::Virtual => {
            let (runtime, idle) = crate::env::virtual_runtime()?;
            runtime.block_on(async { run(scenario, opts, VirtualEnv::new(idle)?, "virtual").await })
        }
    }
}

fn plan(opts: &RunOptions, mode: &'static str, dns_port: u16, fleet_port: u16) -> Plan {
    Plan {
        out_dir: opts.out_dir.clone(),
        state_dir: opts.out_dir.join("spool"),
        mode,
        reopen_log: false,
        dns_port,
        fleet_port,
        sender_mx: true,
        trusted: Vec::new(),
        shard: None,
        placement: None,
    }
}

/// A run of mailsim's own MTA in `env`.
async fn run<E: Env>(
    scenario: &Scenario,
    opts: &RunOptions,
    env: E,
    mode: &'static str,
) -> anyhow::Result<(Summary, Drain)> {
    let mut a = assemble(scenario, env, &plan(opts, mode, 0, 0)).await?;
    let mta = a.mta(scenario)?;
    let reporter = a.reporter()?;
    let reason = drive(scenario, &a, &mta, opts, reporter).await?;
    finish(a, scenario, reason, opts).await
}

/// Another MTA under test: mailsim submits the campaign to it by SMTP and its deliveries are
/// measured on the fleet's side.
pub struct ExternalMta {
    pub submission: SocketAddr,
    /// The fleet's SMTP port (0: any); the other MTA must route every scenario domain there.
    pub fleet_port: u16,
    /// The DNS server's port (0: any).
    pub dns_port: u16,
    pub connections: usize,
}

/// Run a scenario live against another MTA: fake-dns and the fleet as usual, the campaign
/// submitted by SMTP to `mta`, until every acknowledged message is final by the receiving
/// side's account (stored by the fleet, or failed per the other MTA's DSN) and
/// [`EXTERNAL_QUIET`] has passed with nothing more heard, or the time limit passes. The log
/// holds `injected` at each acknowledgement and the receiving side's events (sessions,
/// verdicts, `stored`, `report_received`); the run is marked `mode: "external"`, and its
/// summary counts a stored copy as delivered and a failed DSN as bounced or expired.
pub fn run_external(
    scenario: &Scenario,
    opts: &RunOptions,
    mta: &ExternalMta,
) -> anyhow::Result<(Summary, Drain)> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_external_async(scenario, opts, mta))
}

async fn run_external_async(
    scenario: &Scenario,
    opts: &RunOptions,
    mta: &ExternalMta,
) -> anyhow::Result<(Summary, Drain)> {
    let plan = plan(opts, "external", mta.dns_port, mta.fleet_port);
    let mut a = assemble(scenario, LiveEnv::default(), &plan).await?;
    // The fleet's later reports and its recipients' actions (opens, clicks, unsubscribes
    // through the URLs in the other MTA's deliveries).
    let (reporter, later_rx) = a.reporter()?;
    let (stop_reports, stop_rx) = tokio::sync::watch::channel(false);
    let reporting = {
        let (later, mut stop_rx) = (a.later.clone(), stop_rx);
        tokio::spawn(reporter.run(later, later_rx, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }))
    };
    let mut pending = a.later.pending();
    let hosts: Vec<String> = (a.world.hosts.iter().filter(|h| !h.down))
        .map(|h| format!("{}={}", h.name, h.ip))
        .collect();
    eprintln!(
        "mailsim: fleet on port {} (hosts: {}), dns on {}",
        a.fleet_port,
        hosts.join(" "),
        a.env.dns_addr().map_or_else(String::new, |d| d.to_string())
    );
    // Follow, from the events as they are written, how many acknowledged messages are final
    // by the receiving side's account.
    let (final_tx, mut finals) = tokio::sync::watch::channel((0u64, 0u64));
    let mut finality = Finality::default();
    a.events.observe(Box::new(move |r| {
        if finality.push(&r.event) {
            let _ = final_tx.send((finality.injected, finality.done));
        }
    }));
    let time_limit = tokio::time::sleep(Duration::from_secs(scenario.mta.run_time_s_max));
    tokio::pin!(time_limit);
    // The submission is within the time limit too; one that fails still ends the run with its
    // log closed and its summary written (what was acknowledged before is in both), and then
    // the error is the command's.
    let submitted = tokio::select! {
        biased;
        _ = &mut time_limit => None,
        r = submit(scenario, &a, mta) => Some(r),
    };
    let (acked, expected, reason) = match submitted {
        Some(Ok((acked, expected))) => (acked, expected, None),
        Some(Err(e)) => {
            let _ = stop_reports.send(true);
            reporting.await?;
            finish(a, scenario, "submission failed", opts).await?;
            return Err(e.context(format!(
                "submitting to {} (the run's log and summary are written)",
                mta.submission
            )));
        }
        None => {
            let acked = finals.borrow().0;
            (
                acked,
                scenario.campaign.get_ref().messages,
                Some("time limit"),
            )
        }
    };
    // Every acknowledged message final (stored by the fleet, or failed per the other MTA's
    // DSN), then a quiet period with nothing more heard: the run is over.
    let reason = match reason {
        Some(reason) => reason,
        None => loop {
            let (injected, done) = *finals.borrow_and_update();
            let all_final =
                injected >= acked && done >= injected && *pending.borrow_and_update() == 0;
            tokio::select! {
                biased;
                _ = &mut time_limit => break "time limit",
                changed = finals.changed() => if changed.is_err() { break "drained" },
                _ = pending.changed() => {}
                _ = tokio::time::sleep(EXTERNAL_QUIET), if all_final => break "drained",
            }
        },
    };
    let _ = stop_reports.send(true);
    reporting.await?;
    eprintln!(
        "mailsim: {acked} of {expected} messages acknowledged by {}",
        mta.submission
    );
    finish(a, scenario, reason, opts).await
}

/// How long an external run waits, once every acknowledged message is final, for anything
/// more from the other MTA (a late copy, a DSN) before it ends.
pub const EXTERNAL_QUIET: Duration = Duration::from_secs(2);

/// Which of the campaign's acknowledged messages are final by the receiving side's account
/// ([`mailsim_summary::external_outcome`]: stored, or failed per a DSN), whatever the order of
/// acknowledgement and outcome in the log.
#[derive(Debug, Default)]
struct Finality {
    /// Acknowledged (message, recipient) pairs.
    injected: u64,
    /// Of those, the ones with a final outcome.
    done: u64,
    acked: std::collections::HashSet<(String, String)>,
    outcome: std::collections::HashSet<(String, String)>,
}

impl Finality {
    /// Take one event into account; true when the counts changed or the event is one of the
    /// receiving side's (which restarts the quiet period).
    fn push(&mut self, event: &Event) -> bool {
        if let Event::Injected {
            message_id, rcpt, ..
        } = event
        {
            let key = (message_id.clone(), rcpt.to_ascii_lowercase());
            self.injected += 1;
            if self.outcome.contains(&key) {
                self.done += 1;
            }
            self.acked.insert(key);
            return true;
        }
        let Some((key, _)) = mailsim_summary::external_outcome(&event.view()) else {
            return matches!(event, Event::ReportReceived { .. });
        };
        if self.acked.contains(&key) && !self.outcome.contains(&key) {
            self.done += 1;
        }
        self.outcome.insert(key);
        true
    }
}

/// Submit the campaign to another MTA, recording `injected` at each acknowledgement; the
/// messages acknowledged and the messages in the campaign.
async fn submit<E: Env>(
    scenario: &Scenario,
    a: &Assembly<E>,
    mta: &ExternalMta,
) -> anyhow::Result<(u64, u64)> {
    // Dated by the run's clock (live: now); signed with the sender's key unless the scenario
    // says the MTA under test signs.
    let signer = if scenario.external.sign {
        let sender = &a.world.senders[0].sender;
        crate::assemble::signers(&a.world)?
            .into_iter()
            .find(|s| s.domain().eq_ignore_ascii_case(&sender.domain))
    } else {
        None
    };
    let date_s = (a.env.clock().now_ms() / 1000) as i64;
    let campaign = crate::send::Campaign::new(
        scenario,
        &a.world,
        date_s,
        signer.as_ref(),
        a.tracking.as_ref(),
    );
    let expected = campaign.len();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let sink = a.events.clone();
    let on_ack: crate::send::OnAck = Arc::new(move |m: &OutboundMessage| {
        for rcpt in &m.rcpts {
            sink.emit(Event::Injected {
                msg: next.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                message_id: m.message_id.clone(),
                from: m.from.clone(),
                rcpt: rcpt.clone(),
                domain: rcpt
                    .rsplit_once('@')
                    .map_or_else(String::new, |(_, d)| d.to_ascii_lowercase()),
                size: m.body.len() as u64,
                lane: None,
                campaign: None,
            });
        }
    });
    let send_opts = crate::send::SendOptions {
        to: mta.submission,
        connections: mta.connections,
        acked_path: None,
        stall_max: Duration::from_secs(60),
        on_ack: Some(on_ack),
        rate: None,
    };
    let report = crate::send::send(&campaign, &send_opts).await?;
    Ok((report.acked, expected))
}

/// Inject the campaign, run the MTA until every message is final or the time limit passes.
/// Live mode builds and signs batches on blocking threads; virtual mode builds and signs them
/// ahead on a thread of their own and injects each when fewer than [`READY_LOW_WATER`] entries
/// are ready or the runtime is idle, so that the sessions deliver meanwhile and the paused
/// clock cannot move while a send is injected.
async fn drive<E: Env>(
    scenario: &Scenario,
    setup: &Assembly<E>,
    mta: &Mta<E::Resolver, E::Connector>,
    opts: &RunOptions,
    (reporter, later_rx): Reporting<E>,
) -> anyhow::Result<&'static str> {
    let blocking_threads = setup.env.blocking_threads();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let dispatcher = {
        let mta = mta.clone();
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            mta.run(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let mut pending = setup.later.pending();
    let reporting = {
        let mut stop_rx = stop_rx.clone();
        let later = setup.later.clone();
        tokio::spawn(reporter.run(later, later_rx, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }))
    };
    let campaign = scenario.campaign();
    let total = campaign.total();
    let bar = progress_bar(opts.progress, total);
    // The run's time limit, on the runtime's timer (no wall-clock read here).
    let time_limit = tokio::time::sleep(Duration::from_secs(scenario.mta.run_time_s_max));
    tokio::pin!(time_limit);
    let scenario_arc = Arc::new(scenario.clone());
    let tracking = setup.tracking.clone().map(Arc::new);
    // Only a scenario with a transactional stream gets the task (the others' runs stay
    // exactly as they were).
    let mut stream = scenario.transactional.is_some().then(|| {
        tokio::spawn(transactional_stream::<E>(
            scenario_arc.clone(),
            setup.world.clone(),
            mta.clone(),
            setup.clock.clone(),
            (setup.start_ms, blocking_threads),
            stop_rx.clone(),
        ))
    });
    let mut streaming = stream.is_some();
    let mut injected = 0u64;
    for send in 0..campaign.sends {
        if send > 0 {
            let at_ms = setup.start_ms + campaign.send_interval_s * 1000 * u64::from(send);
            let wait = Duration::from_millis(at_ms.saturating_sub(setup.clock.now_ms()));
            tokio::select! {
                biased;
                _ = &mut time_limit => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let date_s = (setup.clock.now_ms() / 1000) as i64;
        let count = campaign.messages_in(send);
        if let (Some(after), Some(web)) = (campaign.sunset_after_sends, &setup.web) {
            sunset(scenario, setup, web, count, after);
        }
        // Virtual: the batches are built and signed on threads of their own, ahead of the one
        // being injected (building is a pure function of the scenario, the send and its date,
        // and signing of the message and the second, so the bytes are the same either way);
        // live: built and injected on a blocking thread.
        let ahead = (!blocking_threads).then(|| {
            let mta = mta.clone();
            let at_s = u64::try_from(date_s).unwrap_or(0);
            built_ahead(
                scenario_arc.clone(),
                setup.world.clone(),
                tracking.clone(),
                move |batch| mta.sign_ahead(batch, at_s),
                (count, send, date_s),
            )
        });
        let mut start = 0u64;
        while start < count {
            let end = (start + INJECT_BATCH as u64).min(count);
            // Build, note who is mailed (the sender's tracking server counts mailings for the
            // sunset), inject.
            let (web, suppression, mta2) =
                (setup.web.clone(), setup.suppression.clone(), mta.clone());
            let mailed = move |batch: &[OutboundMessage]| {
                if let Some(web) = &web {
                    let rcpts = batch.iter().flat_map(|m| &m.rcpts);
                    for rcpt in rcpts.filter(|r| suppression.reason(r).is_none()) {
                        web.mailed(rcpt);
                    }
                }
            };
            match &ahead {
                None => {
                    let (sc, world, tracking) =
                        (scenario_arc.clone(), setup.world.clone(), tracking.clone());
                    tokio::task::spawn_blocking(move || {
                        let batch = build_messages(
                            &sc,
                            &world,
                            start..end,
                            send,
                            date_s,
                            tracking.as_deref(),
                        );
                        mailed(&batch);
                        mta2.inject(batch)
                    })
                    .await??;
                }
                Some(built) => {
                    if start > 0 {
                        // The next batch goes in when fewer than READY_LOW_WATER entries are
                        // ready, or the sessions have nothing left to do at this instant:
                        // points the runtime's own tasks decide, whenever the signing is done.
                        let low = mta.ready_below(READY_LOW_WATER);
                        match setup.env.idle() {
                            Some(idle) => tokio::select! {
                                biased;
                                () = low => {}
                                () = idle.wait() => {}
                            },
                            None => low.await,
                        }
                    }
                    let signed = built
                        .recv()
                        .map_err(|_| anyhow::anyhow!("the thread building the messages ended"))??;
                    mailed(signed.messages());
                    mta.inject_signed(signed)?;
                    // Let the dispatcher start on this batch before the next one is injected.
                    tokio::task::yield_now().await;
                }
            }
            injected += end - start;
            start = end;
            if let Some(bar) = &bar {
                bar.set_position(injected.saturating_sub(mta.queued() as u64));
            }
        }
    }
    let mut queued = mta.queued_watch();
    let finish_reason = loop {
        let now_queued = *queued.borrow_and_update();
        let now_pending = *pending.borrow_and_update();
        if let Some(bar) = &bar {
            bar.set_position(injected.saturating_sub(now_queued as u64));
        }
        // Drained: nothing queued in the MTA, no report still to be sent by the fleet, and
        // the transactional stream (if any) over.
        if now_queued == 0 && now_pending == 0 && !streaming {
            break "drained";
        }
        tokio::select! {
            biased;
            done = async { stream.as_mut().expect("streaming").await }, if streaming => {
                streaming = false;
                done??;
            }
            changed = queued.changed() => if changed.is_err() { break "mta stopped" },
            _ = pending.changed() => {}
            _ = &mut time_limit => break "time limit",
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let _ = stop_tx.send(true);
    if let Some(stream) = stream.filter(|_| streaming) {
        stream.await??;
    }
    dispatcher.await?;
    reporting.await?;
    if let Err(e) = setup.suppression.sync() {
        tracing::warn!("suppression list: {e}");
    }
    Ok(finish_reason)
}

/// The batches of a send's `count` messages (of [`INJECT_BATCH`]), built and passed to `sign`
/// in order on a thread of their own, at most two ahead of the one taken (one waiting, one
/// being built). The thread ends when they are all built, after a batch `sign` refused, or
/// when the receiver is dropped.
fn built_ahead<T: Send + 'static, E: Send + 'static>(
    scenario: Arc<Scenario>,
    world: Arc<World>,
    tracking: Option<Arc<crate::web::Tracking>>,
    sign: impl Fn(Vec<OutboundMessage>) -> Result<T, E> + Send + 'static,
    (count, send, date_s): (u64, u32, i64),
) -> std::sync::mpsc::Receiver<Result<T, E>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("builder".into())
        .spawn(move || {
            let mut start = 0u64;
            while start < count {
                let end = (start + INJECT_BATCH as u64).min(count);
                let batch = build_messages(
                    &scenario,
                    &world,
                    start..end,
                    send,
                    date_s,
                    tracking.as_deref(),
                );
                let signed = sign(batch);
                let failed = signed.is_err();
                if tx.send(signed).is_err() || failed {
                    return;
                }
                start = end;
            }
        });
    if let Err(e) = spawned {
        // The receiver then reports the thread ended.
        tracing::warn!("cannot start the thread building messages: {e}");
    }
    rx
}

/// Before a send: suppress (reason `unengaged`) every recipient of the send mailed `after`
/// times or more with no open or click since, as the sender's tracking server knows it.
fn sunset<E: Env>(
    scenario: &Scenario,
    setup: &Assembly<E>,
    web: &crate::web::SenderWeb,
    count: u64,
    after: u32,
) {
    let domains = weighted_domains(scenario);
    let total: f64 = domains.iter().map(|d| d.1).sum();
    for i in 0..count {
        let rcpt = recipient_in(scenario.seed, &domains, total, i);
        if web.engagement(&rcpt).mailed_since >= after && setup.suppression.add(&rcpt, "unengaged")
        {
            setup.events.emit(Event::SuppressionAdded {
                rcpt,
                reason: "unengaged".into(),
            });
        }
    }
}

async fn finish<E: Env>(
    a: Assembly<E>,
    scenario: &Scenario,
    reason: &str,
    opts: &RunOptions,
) -> anyhow::Result<(Summary, Drain)> {
    let (ip, contact) = (
        IpAddr::V4(scenario.mta.ip),
        format!("postmaster@{}", scenario.mta.hostname),
    );
    // The summary and the TLS-RPT reports beside it, folded as the log was written (a run's
    // log is always new).
    let (summary, drain, tls) = a
        .finish(reason)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the run's log was not folded as it was written"))?;
    tls.write(&opts.out_dir, ip, &contact)
        .with_context(|| format!("writing TLS reports in {}", opts.out_dir.display()))?;
    std::fs::write(summary_path(&opts.out_dir), summary_json(&summary)?)?;
    Ok((summary, drain))
}

/// Fold a log into its summary, streaming (a log may hold millions of records). The second
/// value is true when the log ends in a torn record (left out).
pub fn fold_log(path: &Path) -> anyhow::Result<(Summary, bool)> {
    let mut fold = SummaryFold::default();
    let torn = fold_log_with(path, (FOLD_BATCH, FOLD_BATCH_BYTES), |r| fold.push_view(r))?;
    Ok((fold.finish(), torn))
}

/// Records per batch (at most) handed from the reading thread to the decoders and on to the
/// fold.
const FOLD_BATCH: usize = 4096;
/// Payload bytes after which a batch is handed on with fewer records: a log of large records
/// (up to 16 MiB each) is folded in batches of about this size, not of 4,096 such records.
const FOLD_BATCH_BYTES: usize = 8 << 20;

/// Threads decoding batches of JSON records at most.
const FOLD_DECODERS_MAX: usize = 4;

/// The batch's records, owned (a JSON log's, on a decoding thread), up to the first that does
/// not read, and that one's error: the fold checks the records before it first (a record among
/// them out of sequence is the earlier error).
fn decode_batch(batch: mailsim_events::FrameBatch, path: &Path) -> Decoded {
    let mut records = Vec::with_capacity(batch.len());
    for (payload, record, offset) in batch.payloads() {
        match mailsim_events::Record::from_payload(payload) {
            Ok(r) => records.push(r),
            Err(e) => return (records, Some(bad_record(path, record, offset, e))),
        }
    }
    (records, None)
}

fn bad_record(
    path: &Path,
    record: u64,
    offset: u64,
    e: impl std::fmt::Display,
) -> mailsim_events::LogError {
    mailsim_events::LogError::BadRecord {
        path: path.to_path_buf(),
        record,
        offset,
        message: e.to_string(),
    }
}

/// A JSON batch decoded: its records up to the first that does not read, and that one's error.
type Decoded = (
    Vec<mailsim_events::Record>,
    Option<mailsim_events::LogError>,
);

/// A batch on its way to the fold: a binary log's frames, which the fold reads as views where
/// they lie, or a JSON log's, being decoded on another thread.
enum Pending {
    Frames(mailsim_events::FrameBatch),
    Decoding(
        mailsim_events::FrameBatch,
        std::sync::mpsc::Receiver<Decoded>,
    ),
}

/// Call `fold` on each record of the log at `path`, in log order, each checked to follow the
/// one before it; true when the log ends in a torn record (left out).
///
/// One thread reads the frames (checksums checked) in batches and this one folds them; every
/// queue is bounded, so memory holds a few batches whatever the log's size. A binary log's
/// records are read here as views of the batch's bytes ([`RecordView`]): nothing is allocated
/// for them, which costs less than owned records decoded on other threads and handed over
/// (14.9 M records of scale-million: see BENCHMARKS.md). A JSON log's records are decoded on
/// the other cores. An error reading or decoding the log is the result, whatever was folded
/// before it.
///
/// Batches hold at most `records` records, fewer once their payloads reach `bytes`.
fn fold_log_with(
    path: &Path,
    (records, bytes): (usize, usize),
    mut fold: impl FnMut(&RecordView<'_>),
) -> anyhow::Result<bool> {
    debug_assert!(
        records > 0 && bytes > 0,
        "a batch holds at least one record"
    );
    use std::sync::mpsc::{SyncSender, sync_channel};
    use std::sync::{Arc as SharedArc, Mutex};
    type Answer = SyncSender<Decoded>;
    let mut reader = LogReader::open(path)?;
    let decoders = match reader.format {
        mailsim_events::Format::Binary => 0,
        mailsim_events::Format::Json => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(FOLD_DECODERS_MAX),
    };
    let (to_decode, jobs) = sync_channel::<(mailsim_events::FrameBatch, Answer)>(decoders.max(1));
    let (to_fold, pending) = sync_channel::<Pending>(decoders + 2);
    // Folded batches go back to the reader to be filled again: their memory is reused, not
    // allocated (and faulted in) anew for every batch.
    let (recycle, recycled) = sync_channel::<mailsim_events::FrameBatch>(decoders + 3);
    let jobs = SharedArc::new(Mutex::new(jobs));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..decoders)
            .map(|_| {
                let jobs = jobs.clone();
                scope.spawn(move || {
                    loop {
                        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((batch, answer)) = job else { break };
                        // A fold gone (it stopped) needs no answer.
                        let _ = answer.send(decode_batch(batch, path));
                    }
                })
            })
            .collect();
        drop(jobs);
        let read = std::thread::Builder::new()
            .name("log-reader".into())
            .spawn_scoped(scope, move || -> Result<bool, mailsim_events::LogError> {
                // An error reading ends the log there; the frames read before it are still
                // folded (a record among them that does not read is the earlier error).
                let mut met = None;
                loop {
                    let mut batch = recycled.try_recv().unwrap_or_default();
                    let last = match reader.read_batch(&mut batch, (records, bytes)) {
                        Ok(ended) => ended,
                        Err(e) => {
                            met = Some(e);
                            true
                        }
                    };
                    if !batch.is_empty() {
                        // A refused send: the fold or the decoders stopped.
                        let sent = if decoders == 0 {
                            to_fold.send(Pending::Frames(batch)).is_ok()
                        } else {
                            // The decoders get the frames, the fold what it needs to name a
                            // record that does not follow the one before it.
                            let (answer, decoded) = sync_channel(1);
                            let places = batch.without_payloads();
                            to_fold.send(Pending::Decoding(places, decoded)).is_ok()
                                && to_decode.send((batch, answer)).is_ok()
                        };
                        if !sent {
                            break;
                        }
                    }
                    if last {
                        break;
                    }
                }
                match met {
                    Some(e) => Err(e),
                    None => Ok(reader.torn),
                }
            })?;
        // The first record that does not read or does not follow ends the fold; it is the
        // result.
        let mut last_seq = None;
        let mut follows = |seq: u64, record: u64, offset: u64| {
            mailsim_events::check_sequence(path, last_seq, seq, record, offset)?;
            last_seq = Some(seq);
            Ok::<(), mailsim_events::LogError>(())
        };
        let folded = pending.iter().try_for_each(|batch| -> anyhow::Result<()> {
            match batch {
                Pending::Frames(batch) => {
                    for (payload, record, offset) in batch.payloads() {
                        // (A JSON record in a binary log is read the owned way.)
                        let r = mailsim_events::PayloadRecord::read(payload)
                            .map_err(|e| bad_record(path, record, offset, e))?;
                        follows(r.seq(), record, offset)?;
                        r.with_view(&mut fold);
                    }
                    // A reader gone or with enough batches in hand: this one is dropped.
                    let _ = recycle.try_send(batch);
                }
                Pending::Decoding(places, decoded) => {
                    let (records, failed) = decoded.recv().map_err(|_| {
                        anyhow::anyhow!(
                            "reading {}: a thread decoding the log panicked",
                            path.display()
                        )
                    })?;
                    for (r, (record, offset)) in records.iter().zip(places.places()) {
                        follows(r.seq, record, offset)?;
                        fold(&r.view());
                    }
                    if let Some(e) = failed {
                        return Err(e.into());
                    }
                }
            }
            Ok(())
        });
        drop(pending);
        let read = read.join();
        for w in workers {
            let _ = w.join();
        }
        // A batch that did not decode comes before anything the reader met after it.
        folded?;
        match read {
            Ok(Ok(torn)) => Ok(torn),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => anyhow::bail!("reading {}: the reader thread panicked", path.display()),
        }
    })
}

/// The one serialisation of a summary, shared by `summary.json` and `mailsim replay`.
pub fn summary_json(summary: &Summary) -> serde_json::Result<String> {
    Ok(serde_json::to_string_pretty(summary)? + "\n")
}

fn progress_bar(enabled: bool, total: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} final ({per_sec})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailsim_events::{Durability, EventLog, Record};

    struct At(u64);
    impl mailsim_events::Clock for At {
        fn now_ms(&self) -> u64 {
            self.0
        }
    }

    fn injected(msg: u64) -> Event {
        Event::Injected {
            msg,
            message_id: format!("<{msg}@t>"),
            from: "a@s.test".into(),
            rcpt: format!("u{msg}@d{}.test", msg % 7),
            domain: format!("d{}.test", msg % 7),
            size: 10,
            lane: None,
            campaign: None,
        }
    }

    /// The batches built ahead on their own thread are, in order, the messages built in one
    /// call (the same bytes, so a virtual run's log does not depend on where they were built).
    #[test]
    fn batches_built_ahead_are_the_messages_built_in_one_call() {
        let text = "name = \"t\"\nseed = 5\nmode = \"virtual\"\n[[sender]]\ndomain = \"s.test\"\n\
                    [[domain]]\nname = \"a.test\"\n[[domain]]\nname = \"b.test\"\n\
                    [campaign]\nmessages = 2500\nhtml = true\n";
        let scenario = Scenario::parse(text, std::path::Path::new("t.toml")).unwrap();
        let world = Arc::new(World::build(&scenario).unwrap());
        let count = 2 * INJECT_BATCH as u64 + 500;
        let whole = build_messages(&scenario, &world, 0..count, 3, 1_767_225_600, None);
        let built = built_ahead(
            Arc::new(scenario),
            world,
            None,
            Ok::<_, std::convert::Infallible>,
            (count, 3, 1_767_225_600),
        );
        let batches: Vec<Vec<OutboundMessage>> = built.iter().map(Result::unwrap).collect();
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [INJECT_BATCH, INJECT_BATCH, 500]
        );
        let ahead: Vec<&OutboundMessage> = batches.iter().flatten().collect();
        assert_eq!(ahead.len(), whole.len());
        for (a, w) in ahead.iter().zip(&whole) {
            assert_eq!(
                (&a.rcpts, &a.message_id, &a.body),
                (&w.rcpts, &w.message_id, &w.body)
            );
        }
    }

    /// Many batches decoded on several threads fold to what one pass over the records folds;
    /// a frame whose checksum is right but whose record does not read is the error, with its
    /// number and offset, though a later one is damaged too.
    #[test]
    fn a_log_folded_in_batches_is_the_log_folded_in_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let log = EventLog::create_with(&path, Arc::new(At(5)), Durability::OnFlush).unwrap();
        let n = 3 * FOLD_BATCH as u64 + 17;
        for msg in 0..n {
            log.sink().emit(injected(msg));
            if msg % 3 == 0 {
                log.sink().emit(Event::Delivered {
                    msg,
                    rcpt: format!("u{msg}@d.test"),
                    domain: format!("d{}.test", msg % 7),
                    mx: "mx".into(),
                    attempts: 1,
                });
            }
        }
        log.close().unwrap();
        let (records, _) = mailsim_events::read_log(&path).unwrap();
        let (folded, torn) = fold_log(&path).unwrap();
        assert!(!torn);
        assert_eq!(folded, Summary::fold(&records));
        assert_eq!(folded.injected, n);
        // The same log in JSON (format 1), decoded on the other threads, folds the same.
        let json = dir.path().join("json.log");
        mailsim_events::convert(&path, &json, mailsim_events::Format::Json).unwrap();
        assert_eq!(fold_log(&json).unwrap(), (folded.clone(), false));
        // Batches cut by their bytes (a few records each; one record each), in either format,
        // fold the same.
        for log in [&path, &json] {
            for bytes in [1000, 1] {
                let mut fold = SummaryFold::default();
                let torn = fold_log_with(log, (FOLD_BATCH, bytes), |r| fold.push_view(r));
                assert!(!torn.unwrap());
                assert_eq!(
                    fold.finish(),
                    folded,
                    "{} in batches of {bytes} bytes",
                    log.display()
                );
            }
        }
        // In a JSON log, a record out of sequence is the error though a later record of its
        // batch does not read (that one was decoded first, on another thread).
        let mut bytes = b"MSIMLOG\0\x01\0\0\0".to_vec();
        for n in 1..=200u64 {
            let payload = match n {
                11 => r#"{"seq":3,"ts":1,"type":"run_finished","reason":"x"}"#.to_string(),
                101 => r#"{"seq":100,"ts":1,"type":"delivered"}"#.to_string(),
                _ => format!(
                    r#"{{"seq":{},"ts":1,"type":"run_finished","reason":"x"}}"#,
                    n - 1
                ),
            };
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(payload.as_bytes()).to_le_bytes());
            bytes.extend_from_slice(payload.as_bytes());
        }
        std::fs::write(&json, &bytes).unwrap();
        let e = fold_log(&json).unwrap_err().to_string();
        assert!(e.contains("record 11 ") && e.contains("seq 3"), "{e}");

        // Record 5000's payload replaced by bytes of its length that do not read (its checksum
        // made right), damage ten frames later (in the same batch, valid frames after it), and
        // the last frame cut (a torn tail).
        let mut bytes = std::fs::read(&path).unwrap();
        let mut at = 12;
        let mut number = 0;
        let mut target = None;
        let mut damaged = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            number += 1;
            if number == 5000 {
                target = Some((at, len));
            }
            if number == 5010 {
                damaged = at + 8;
            }
            at += 8 + len;
        }
        let (at, len) = target.unwrap();
        let garbage = vec![b'x'; len];
        bytes[at + 4..at + 8].copy_from_slice(&crc32fast::hash(&garbage).to_le_bytes());
        bytes[at + 8..at + 8 + len].copy_from_slice(&garbage);
        bytes[damaged] ^= 0x40;
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();
        let e = fold_log(&path).unwrap_err().to_string();
        assert!(
            e.contains("record 5000") && e.contains(&format!("byte {at}")),
            "{e}"
        );
        let _ = Record::from_payload(&garbage).unwrap_err();
        // The damage alone (record 5000 whole again) is the error.
        let mut good = Vec::new();
        records[4999].put_binary(&mut good);
        assert_eq!(good.len(), len);
        bytes[at + 4..at + 8].copy_from_slice(&crc32fast::hash(&good).to_le_bytes());
        bytes[at + 8..at + 8 + len].copy_from_slice(&good);
        std::fs::write(&path, &bytes).unwrap();
        let e = fold_log(&path).unwrap_err().to_string();
        assert!(e.contains("damaged") && e.contains("record 5010"), "{e}");
    }
}
