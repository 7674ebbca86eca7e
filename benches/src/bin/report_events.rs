//! The report benchmark: synthesise a campaign's event log of N events (default 10,000,000;
//! eight kinds of record per message, the mix of a live run with 10% deferred once and 3%
//! bounced), then run the whole `mailsim report` pipeline on it and time each stage.
//! Prints `report-bench: events=N log_mb=M seconds=S ...`.
//!
//! Usage: report-events [EVENTS] [DIR]   write the log and summary.json, then time the report
//!        report-events --report-only DIR  time the report of an existing log (a fresh
//!                                          process: the generator's heap does not weigh on it)
//! REPORT_STAGES=1 also times each stage alone.

use mailsim_events::{Clock, Durability, Event, EventLog, SmtpReply, SystemClock};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A clock stepping 2 ms per reading from a fixed instant: a run of about six hours.
struct Stepping(std::sync::atomic::AtomicU64);

impl Clock for Stepping {
    fn now_ms(&self) -> u64 {
        1_767_225_600_000 + self.0.fetch_add(2, std::sync::atomic::Ordering::Relaxed) / 1000
    }
}

fn reply(code: u16, enhanced: &str, text: &str) -> SmtpReply {
    SmtpReply {
        command: "DATA".into(),
        reply: mailsim_events::Reply {
            code,
            enhanced: Some(enhanced.into()),
            text: text.into(),
        },
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--report-only") {
        let dir = PathBuf::from(args.get(1).ok_or("--report-only DIR")?);
        return time_report(&dir);
    }
    let mut args = args.into_iter();
    let target: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let dir = match args.next() {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join("mailsim-report-bench"),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let wall = SystemClock;
    let t0 = wall.now_ms();
    let log = EventLog::create_with(
        &dir.join("events.log"),
        Arc::new(Stepping(Default::default())),
        Durability::OnFlush,
    )?;
    let sink = log.sink();
    let domains = [
        "gmail.test",
        "yahoo.test",
        "outlook.test",
        "corp.test",
        "small.test",
    ];
    sink.emit(Event::RunStarted {
        scenario: "report-bench".into(),
        seed: 1,
        mode: "live".into(),
        dmarc_records: BTreeMap::from([(
            "news.example.test".to_string(),
            "v=DMARC1; p=reject; rua=mailto:dmarc@news.example.test".to_string(),
        )]),
        spf_records: BTreeMap::new(),
        profiles: BTreeMap::new(),
    });
    let mut events = 1u64;
    let mut msg = 0u64;
    let mut conn = 0u64;
    while events < target {
        let domain = domains[(msg % 5) as usize];
        let rcpt = format!("user{msg}@{domain}");
        let message_id = format!("<{msg}.bench@news.example.test>");
        sink.emit(Event::Injected {
            msg,
            message_id: message_id.clone(),
            from: "news@news.example.test".into(),
            rcpt: rcpt.clone(),
            domain: domain.into(),
            size: 5120,
            lane: None,
            campaign: None,
        });
        if msg.is_multiple_of(50) {
            conn += 1;
            sink.emit(Event::ConnOpened {
                conn,
                domain: domain.into(),
                mx: format!("mx.{domain}"),
                addr: "127.1.0.1:25".into(),
            });
            events += 1;
        }
        let host = format!("mx.{domain}");
        if msg % 10 == 3 {
            sink.emit(Event::Deferred {
                msg,
                rcpt: rcpt.clone(),
                domain: domain.into(),
                attempts: 1,
                retry_at_ms: 0,
                reason: "greylisted: 451 4.7.1".into(),
                reply: Some(reply(451, "4.7.1", "Greylisted, try again later")),
            });
            events += 1;
        }
        if msg % 33 == 7 {
            sink.emit(Event::SmtpReply {
                conn,
                msg: Some(msg),
                reply: reply(550, "5.1.1", "No such user"),
            });
            sink.emit(Event::Bounced {
                msg,
                rcpt,
                domain: domain.into(),
                attempts: 1,
                reason: "userunknown: 550 5.1.1".into(),
                hard: true,
                reply: Some(reply(550, "5.1.1", "No such user")),
            });
            events += 3;
        } else {
            sink.emit(Event::SmtpReply {
                conn,
                msg: Some(msg),
                reply: reply(250, "2.0.0", "Ok: queued"),
            });
            sink.emit(Event::SessionAccepted {
                host: host.clone(),
                session: msg,
                peer: "127.0.0.1:40000".into(),
            });
            sink.emit(Event::AuthVerdict {
                host: host.clone(),
                session: msg,
                message_id: message_id.clone(),
                mail_from: "bounce@news.example.test".into(),
                header_from: "news.example.test".into(),
                spf: "pass".into(),
                dkim: "pass".into(),
                dmarc: "pass".into(),
            });
            sink.emit(Event::Stored {
                host: host.clone(),
                session: msg,
                message_id,
                rcpt: rcpt.clone(),
                size: 5120,
                tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
            });
            sink.emit(Event::Delivered {
                msg,
                rcpt,
                domain: domain.into(),
                mx: host,
                attempts: if msg % 10 == 3 { 2 } else { 1 },
            });
            events += 6;
        }
        msg += 1;
    }
    sink.emit(Event::RunFinished {
        reason: "drained".into(),
    });
    drop(sink);
    let written = log.close()?;
    let log_mb = std::fs::metadata(dir.join("events.log"))?.len() as f64 / 1e6;
    // summary.json, as a run leaves it (`mailsim report` compares its totals with it).
    let summary = mailsim_summary::Summary::fold(
        mailsim_events::LogReader::open(&dir.join("events.log"))?.map_while(Result::ok),
    );
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    eprintln!(
        "report-bench: wrote {written} records ({log_mb:.0} MB) and summary.json in {:.1} s",
        (wall.now_ms() - t0) as f64 / 1000.0
    );
    time_report(&dir)
}

fn time_report(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let wall = SystemClock;
    let log_mb = std::fs::metadata(dir.join("events.log"))?.len() as f64 / 1e6;
    let out = dir.join("report");
    if std::env::var_os("REPORT_STAGES").is_some() {
        // Each stage alone, for finding where the time goes.
        let s0 = wall.now_ms();
        std::fs::create_dir_all(&out)?;
        let pq = out.join("events.parquet");
        mailsim_reports::table::export(&dir.join("events.log"), &pq, &|_| {})?;
        let s2 = wall.now_ms();
        let f = mailsim_reports::figures::compute_from_parquet(&pq)?;
        let s3 = wall.now_ms();
        let charts = mailsim_reports::charts::all(&f);
        let s4 = wall.now_ms();
        eprintln!(
            "report-bench stages: log to parquet={:.2}s figures={:.2}s charts={:.2}s ({} charts)",
            (s2 - s0) as f64 / 1000.0,
            (s3 - s2) as f64 / 1000.0,
            (s4 - s3) as f64 / 1000.0,
            charts.len()
        );
    }
    let t1 = wall.now_ms();
    let w = mailsim_reports::report::write_report(dir, &out, false)?;
    let t2 = wall.now_ms();
    println!(
        "report-bench: events={} messages={} log_mb={log_mb:.0} seconds={:.2} delivered={} bounced={} files={}",
        w.figures.events,
        w.figures.totals.injected,
        (t2 - t1) as f64 / 1000.0,
        w.figures.totals.delivered,
        w.figures.totals.bounced_hard,
        w.files.len()
    );
    Ok(())
}
