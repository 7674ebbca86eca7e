//! Runs a scenario in live mode: fake-dns, the fleet and the MTA on loopback sockets, the
//! campaign injected, until every message is final or the time limit passes. Writes the event
//! log and the summary folded from it.

use crate::fleet::Fleet;
use crate::scenario::Scenario;
use crate::world::{World, mix};
use fake_dns::DnsServer;
use mail_builder::MessageBuilder;
use mailsim_events::{Clock, Event, EventLog, SystemClock, read_log};
use mailsim_mta::dkim::Signer;
use mailsim_mta::dns::HickoryResolver;
use mailsim_mta::queue::RetryPolicy;
use mailsim_mta::spool::Spool;
use mailsim_mta::{Mta, MtaConfig, OutboundMessage, TcpConnector};
use mailsim_reports::Summary;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Messages built, signed and spooled per injection batch.
const INJECT_BATCH: usize = 1000;

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
    date_s: i64,
) -> Vec<OutboundMessage> {
    let campaign = scenario.campaign();
    let domains: Vec<(&str, f64)> = scenario
        .domains()
        .map(|d| (d.name.as_str(), d.weight))
        .collect();
    let total: f64 = domains.iter().map(|d| d.1).sum();
    let sender = &world.senders[0].sender;
    let from = sender.from_address();
    let filler =
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n";
    range
        .map(|i| {
            let mut rng = ChaCha20Rng::seed_from_u64(mix(scenario.seed, &format!("rcpt:{i}")));
            let mut pick = rng.gen_range(0.0..total);
            let mut domain = domains[0].0;
            for (d, w) in &domains {
                if pick < *w {
                    domain = d;
                    break;
                }
                pick -= w;
            }
            let rcpt = format!("user{i}@{domain}");
            let message_id = format!("{i}.{}@{}", scenario.seed, sender.domain);
            let mut body = format!("Hello user{i},\r\n\r\n");
            while body.len() + 600 < campaign.size_bytes {
                body.push_str(filler);
            }
            let bytes = MessageBuilder::new()
                .from(("Newsletter", from.as_str()))
                .to(rcpt.as_str())
                .subject(campaign.subject.as_str())
                .message_id(message_id.as_str())
                .date(date_s)
                .text_body(body)
                .write_to_vec()
                .unwrap_or_default();
            OutboundMessage {
                from: from.clone(),
                rcpts: vec![rcpt],
                message_id: format!("<{message_id}>"),
                body: bytes,
            }
        })
        .collect()
}

/// Run a scenario; returns the summary (also written to `summary.json`).
pub async fn run(scenario: &Scenario, opts: &RunOptions) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&opts.out_dir)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let world = {
        let scenario = scenario.clone();
        tokio::task::spawn_blocking(move || World::build(&scenario))
            .await?
            .map_err(anyhow::Error::msg)?
    };
    let dns = DnsServer::start(&world.zones, "127.0.0.1:0".parse::<SocketAddr>()?).await?;
    let log = EventLog::create(&events_path(&opts.out_dir), clock.clone())?;
    let events = log.sink();
    events.emit(Event::RunStarted {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        mode: "live".into(),
    });

    let fleet = Fleet::start(
        &world.hosts,
        dns.addr(),
        &opts.out_dir.join("mailboxes"),
        events.clone(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let m = &scenario.mta;
    let cfg = MtaConfig {
        hostname: m.hostname.clone(),
        remote_port: fleet.port,
        conns_per_domain_max: m.conns_per_domain_max,
        msgs_per_conn_max: m.msgs_per_conn_max,
        retry: RetryPolicy {
            retry_interval_s_min: m.retry_interval_s_min,
            retry_interval_s_max: m.retry_interval_s_max,
            lifetime_s: m.lifetime_s,
        },
        ..MtaConfig::default()
    };
    let signers = world
        .senders
        .iter()
        .map(|s| {
            Signer::from_pkcs8(
                &s.sender.domain,
                &s.sender.dkim_selector,
                &s.key.pkcs8_der,
                s.key.ed25519,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mta = Mta::new(
        cfg,
        HickoryResolver::new(dns.addr())?,
        TcpConnector {
            source_ip: Some(m.ip.into()),
        },
        Spool::open(&opts.out_dir.join("spool"))?,
        signers,
        events.clone(),
    );
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let dispatcher = {
        let mta = mta.clone();
        tokio::spawn(async move {
            mta.run(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
        })
    };

    let total = scenario.campaign().messages;
    let bar = progress_bar(opts.progress, total);
    // The run's time limit, on the runtime's timer (no wall-clock read here).
    let time_limit = tokio::time::sleep(Duration::from_secs(m.run_time_s_max));
    tokio::pin!(time_limit);
    let scenario_arc = Arc::new(scenario.clone());
    let world = Arc::new(world);
    let date_s = (clock.now_ms() / 1000) as i64;
    let mut start = 0u64;
    while start < total {
        let end = (start + INJECT_BATCH as u64).min(total);
        let (mta2, sc, w) = (mta.clone(), scenario_arc.clone(), world.clone());
        tokio::task::spawn_blocking(move || {
            let batch = build_messages(&sc, &w, start..end, date_s);
            mta2.inject(batch)
        })
        .await??;
        start = end;
        if let Some(bar) = &bar {
            bar.set_position(total - mta.queued() as u64);
        }
    }
    let mut queued = mta.queued_watch();
    let finish_reason = loop {
        let now_queued = *queued.borrow_and_update();
        if let Some(bar) = &bar {
            bar.set_position(total - now_queued as u64);
        }
        if now_queued == 0 {
            break "drained";
        }
        tokio::select! {
            _ = &mut time_limit => break "time limit",
            changed = queued.changed() => if changed.is_err() { break "mta stopped" },
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let _ = stop_tx.send(true);
    dispatcher.await?;
    fleet.shutdown().await;
    dns.shutdown().await;
    events.emit(Event::RunFinished {
        reason: finish_reason.into(),
    });
    drop(events);
    log.close()?;

    let (records, _) = read_log(&events_path(&opts.out_dir))?;
    let summary = Summary::fold(&records);
    std::fs::write(
        summary_path(&opts.out_dir),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    Ok(summary)
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
