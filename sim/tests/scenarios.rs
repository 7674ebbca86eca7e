//! The scenario library (scenarios/*.toml): each runs in virtual time and its event log shows
//! the outcome its header comment promises; the receivers' Maildirs hold one file per delivery
//! (counted from the files, not the log). One also runs twice to prove determinism.

mod common;

use mailsim::runner;
use mailsim::scenario::Scenario;
use mailsim_events::{Event, Record, read_log};
use mailsim_summary::Summary;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn run(name: &str, dir: &Path) -> (Summary, Vec<Record>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(format!("{name}.toml"));
    let scenario = Scenario::load(&path).unwrap();
    let summary = common::run(&scenario, dir);
    let (records, torn) = read_log(&runner::events_path(dir)).unwrap();
    assert!(!torn);
    // The summary is a projection of the log: folding the log again gives summary.json.
    assert_eq!(
        runner::summary_json(&Summary::fold(&records)).unwrap(),
        std::fs::read_to_string(runner::summary_path(dir)).unwrap()
    );
    assert!(
        matches!(records.last().map(|r| &r.event), Some(Event::RunFinished { reason }) if reason == "drained"),
        "{name} did not drain"
    );
    #[cfg(feature = "report")]
    check_report(&path, dir, &summary);
    // What the receivers stored, counted from their Maildirs rather than the log: one file
    // per delivered message (the senders' own mailboxes, which hold DSNs and complaints, apart).
    let senders: BTreeSet<String> = scenario
        .senders
        .iter()
        .map(|s| s.get_ref().domain.clone())
        .collect();
    let root = dir.join("mailboxes");
    let files = common::maildir_files(&root);
    // Every stored copy, and every DSN and complaint the senders received, has the headers
    // RFC 5321 and 5322 ask for.
    for f in &files {
        let delivered = !senders.contains(&common::host_of(&root, f));
        if let Err(e) = common::check_stored_headers(f, delivered) {
            panic!("{name}: {e}");
        }
    }
    let stored = files
        .iter()
        .filter(|f| !senders.contains(&common::host_of(&root, f)))
        .count() as u64;
    assert_eq!(
        stored, summary.delivered,
        "{name}: the receivers' Maildirs against the deliveries"
    );
    (summary, records)
}

#[cfg(feature = "report")]
/// The report of the run (polars over events.parquet) states the same totals as summary.json,
/// and every DMARC aggregate report it writes is read back by mail-auth's report parser.
fn check_report(scenario: &Path, dir: &Path, summary: &Summary) {
    std::fs::copy(scenario, dir.join("scenario.toml")).unwrap();
    let out = dir.join("report");
    let w = mailsim_reports::report::write_report(dir, &out, false).unwrap();
    // The DMARC records the log says were published are those the scenario's DNS serves.
    let scenario_text = std::fs::read_to_string(scenario).unwrap();
    let published = mailsim_reports::report::published_dmarc(&runner::events_path(dir)).unwrap();
    for (domain, record) in &published {
        assert!(record.starts_with("v=DMARC1"), "{domain}: {record}");
    }
    if scenario_text.contains("rua") {
        assert!(!published.is_empty(), "{}", scenario.display());
    }
    let diffs = mailsim_reports::check::differences(summary, &w.figures);
    assert!(
        diffs.is_empty(),
        "report differs from summary.json: {diffs:?}"
    );
    // The report's figures (polars' streaming engine over events.parquet) are those its
    // in-memory engine gives for the whole table read back from the file.
    let table = mailsim_reports::table::read_parquet(&out.join("events.parquet")).unwrap();
    assert_eq!(table.height() as u64, w.figures.events);
    assert_eq!(
        mailsim_reports::figures::compute(&table).unwrap(),
        w.figures
    );
    let csv = std::fs::read_to_string(out.join("domains.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + w.figures.domains.len() + 1,
        "{csv}"
    );
    let total = csv.lines().last().unwrap();
    assert!(
        total.starts_with(&format!(
            "all domains,{},{},",
            summary.injected, summary.delivered
        )),
        "{total}"
    );
    // What the receivers stored, from the files: (receiving domain, From domain) -> copies.
    let root = dir.join("mailboxes");
    let mut stored_from: BTreeMap<(String, String), u64> = BTreeMap::new();
    for f in common::maildir_files(&root) {
        let raw = std::fs::read(&f).unwrap();
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let to = msg
            .header("Delivered-To")
            .and_then(|h| h.as_text())
            .unwrap_or("");
        let from = msg
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap_or("");
        let domain = |a: &str| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
        if let (Some(receiver), Some(author)) = (domain(to), domain(from)) {
            *stored_from.entry((receiver, author)).or_default() += 1;
        }
    }
    let mut reported = 0u64;
    for r in std::fs::read_dir(out.join("dmarc"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let xml = std::fs::read(r.path()).unwrap();
        let parsed = mail_auth::report::Report::parse_xml(&xml)
            .unwrap_or_else(|e| panic!("{}: {e}", r.path().display()));
        let name = r.file_name().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("{}!{}!", parsed.org_name(), parsed.domain())),
            "{name}"
        );
        // RFC 7489 appendix C asks for these; the parser reads them back.
        let text = String::from_utf8_lossy(&xml);
        assert_eq!(parsed.version(), 1.0, "{name}");
        assert!(parsed.fo().is_some(), "{name}: policy_published/fo");
        for rec in parsed.records() {
            assert!(
                !rec.envelope_from().is_empty(),
                "{name}: identifiers/envelope_from"
            );
        }
        assert!(
            text.contains("<scope>mfrom</scope>"),
            "{name}: auth_results/spf/scope"
        );
        // The disposition is what the receiver did: delivered (none) exactly as many as its
        // mailboxes hold from that domain; the rest refused (reject).
        let delivered: u64 = parsed
            .records()
            .iter()
            .filter(|x| x.action_disposition() == mail_auth::report::ActionDisposition::None)
            .map(|x| u64::from(x.count()))
            .sum();
        assert_eq!(
            delivered,
            stored_from
                .get(&(parsed.org_name().to_string(), parsed.domain().to_string()))
                .copied()
                .unwrap_or(0),
            "{name}: disposition none against the receiver's mailboxes"
        );
        reported += parsed
            .records()
            .iter()
            .map(|x| u64::from(x.count()))
            .sum::<u64>();
    }
    // Every verdict of a receiving domain reports to a sender that asks is in some report.
    let asked: u64 = w
        .figures
        .dmarc
        .iter()
        .filter(|d| {
            published
                .get(&d.header_from.to_ascii_lowercase())
                .is_some_and(|t| t.contains("rua="))
        })
        .map(|d| d.count)
        .sum();
    assert_eq!(reported, asked);
    parsedmarc_reads(&out.join("dmarc"), &stored_from, reported);
}

/// Every aggregate report is valid against RFC 7489's XML schema (Debian's copy, unpacked by the
/// test command; lxml validates), and parsedmarc (PyPI, in the virtualenv the test command makes
/// in .test-tools/parsedmarc) reads it as that schema's version (not a "draft"), with fo, envelope_from and the
/// SPF scope, the same total count, and disposition none exactly as often as the receiver's
/// mailboxes hold messages from that domain.
#[cfg(feature = "report")]
fn parsedmarc_reads(dir: &Path, stored_from: &BTreeMap<(String, String), u64>, reported: u64) {
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    if files.is_empty() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(root.join(".test-tools/parsedmarc/bin/python"))
        .arg(root.join("sim/tests/data/parsedmarc_read.py"))
        .args(&files)
        .output()
        .expect(
            "parsedmarc's virtualenv in .test-tools/parsedmarc; the README's test command makes it",
        );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "parsedmarc: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // RFC 7489's schema (Appendix C), Debian's copy, checked by lxml.
    let out = std::process::Command::new(root.join(".test-tools/parsedmarc/bin/python"))
        .arg(root.join("sim/tests/data/dmarc_schema_check.py"))
        .arg(root.join(".test-tools/mail-dmarc/rua-schema.xsd"))
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "RFC 7489 schema: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut total = 0u64;
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["xml_schema"], "1.0", "{line}");
        assert!(r["fo"].is_string(), "{line}");
        let mut none = 0u64;
        for rec in r["records"].as_array().unwrap() {
            let n = rec["count"].as_u64().unwrap();
            total += n;
            if rec["disposition"] == "none" {
                none += n;
            }
            assert!(
                rec["envelope_from"].as_str().is_some_and(|e| !e.is_empty()),
                "{line}"
            );
            assert_eq!(rec["spf_scopes"], serde_json::json!(["mfrom"]), "{line}");
        }
        let key = (
            r["org_name"].as_str().unwrap().to_string(),
            r["domain"].as_str().unwrap().to_string(),
        );
        assert_eq!(none, stored_from.get(&key).copied().unwrap_or(0), "{line}");
    }
    assert_eq!(total, reported, "{text}");
}

fn elapsed_s(records: &[Record], r: &Record) -> u64 {
    (r.ts - records[0].ts) / 1000
}

/// Recipients of each campaign message id (queue id).
fn injected_rcpts(records: &[Record]) -> BTreeMap<u64, String> {
    records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Injected { msg, rcpt, .. } => Some((*msg, rcpt.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn greylist_storm_every_message_passes_on_the_retry_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (s, records) = run("greylist-storm", dir.path());
    assert_eq!((s.delivered, s.bounced, s.expired), (s.injected, 0, 0));
    let mut deferrals = 0;
    for r in &records {
        match &r.event {
            Event::Deferred { reason, .. } => {
                assert_eq!(reason, "greylisted");
                deferrals += 1;
            }
            Event::Delivered {
                domain, attempts, ..
            } if domain != "news.example.test" => {
                let expected = if domain == "slowgrey.test" { 3 } else { 2 };
                assert_eq!(*attempts, expected, "{domain}");
            }
            Event::Backoff { domain, .. } => panic!("greylisting backed {domain} off"),
            _ => {}
        }
    }
    assert!(deferrals >= s.injected);
}

#[test]
fn isp_throttling_backs_each_destination_off_and_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (s, records) = run("isp-throttling", dir.path());
    assert_eq!((s.delivered, s.bounced, s.expired), (s.injected, 0, 0));
    let mut deferred: BTreeMap<String, u64> = BTreeMap::new();
    let mut backoffs: Vec<(String, u64, u64)> = Vec::new();
    for r in &records {
        match &r.event {
            Event::Deferred { domain, reason, .. } => {
                // Yahoo's throttling reply is its published [TSS04] ("unexpected volume or
                // user complaints"): what it says of the sender, Sisimai's badreputation.
                let expected = if domain == "yahoo.test" {
                    "badreputation"
                } else {
                    "ratelimited"
                };
                assert_eq!(reason, expected, "{domain}");
                *deferred.entry(domain.clone()).or_default() += 1;
            }
            Event::Backoff {
                domain, until_ms, ..
            } => backoffs.push((domain.clone(), r.ts, *until_ms)),
            _ => {}
        }
    }
    for d in ["gmail.test", "yahoo.test", "outlook.test"] {
        assert!(
            deferred.get(d).copied().unwrap_or(0) > 0,
            "{d} never throttled"
        );
        assert!(backoffs.iter().any(|b| b.0 == d), "{d} never backed off");
    }
    assert_eq!(deferred.get("plain.test"), None);
    // The published replies: gmail-like 421 4.7.28, yahoo-like [TSS04], microsoft-like 4.7.500.
    let texts: Vec<&str> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Deferred {
                reply: Some(reply), ..
            } => Some(reply.reply.text.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("unusual rate of unsolicited mail"))
    );
    assert!(texts.iter().any(|t| t.contains("[TSS04]")));
    assert!(texts.iter().any(|t| t.contains("(S77714)")));
    // No connection to a destination opens while it is backed off.
    for r in &records {
        if let Event::ConnOpened { domain, .. } = &r.event {
            for (d, from, until) in &backoffs {
                assert!(
                    !(d == domain && r.ts > *from && r.ts < *until),
                    "{domain}: connection at {} during a backoff until {until}",
                    r.ts
                );
            }
        }
    }
}

#[test]
fn dns_outage_defers_while_faults_last_and_bounces_dead_domains() {
    let dir = tempfile::tempdir().unwrap();
    let (s, records) = run("dns-outage", dir.path());
    let d = &s.domains;
    for (domain, fault_end_s) in [
        ("servfail.test", 1800),
        ("timeout.test", 600),
        ("moved.test", 900),
    ] {
        assert_eq!(d[domain].delivered, d[domain].injected, "{domain}");
        for r in &records {
            match &r.event {
                Event::Delivered { domain: dd, mx, .. } if dd == domain => {
                    assert!(
                        elapsed_s(&records, r) >= fault_end_s,
                        "{domain} before its fault ended"
                    );
                    if domain == "moved.test" {
                        assert_eq!(mx, "mx2.moved.test");
                    }
                }
                Event::Deferred {
                    domain: dd, reason, ..
                } if dd == domain => {
                    assert!(reason.starts_with("networkerror"), "{reason}");
                }
                _ => {}
            }
        }
    }
    for (domain, reason) in [("gone.test", "hostunknown"), ("nullmx.test", "notaccept")] {
        assert_eq!(d[domain].bounced, d[domain].injected, "{domain}");
        for r in &records {
            if let Event::Bounced {
                domain: dd,
                reason: why,
                hard,
                attempts,
                ..
            } = &r.event
                && dd == domain
            {
                assert!(why.starts_with(reason), "{why}");
                assert!(*hard);
                assert_eq!(*attempts, 1);
            }
        }
    }
    assert_eq!(d["steady.test"].delivered, d["steady.test"].injected);
    assert!(records.iter().all(|r| !matches!(&r.event,
        Event::Delivered { domain, attempts, .. } if domain == "steady.test" && *attempts != 1)));
    assert_eq!(s.dsns_queued, s.bounced);
    assert_eq!(s.suppression_added, s.bounced);
    assert_eq!(s.reports_received.get("bounce").copied(), Some(s.bounced));
}

#[test]
fn dmarc_misconfig_is_rejected_by_enforcing_receivers_only() {
    let dir = tempfile::tempdir().unwrap();
    let (s, records) = run("dmarc-misconfig", dir.path());
    let d = &s.domains;
    assert_eq!(d["gmail.test"].bounced, d["gmail.test"].injected);
    assert_eq!(d["outlook.test"].bounced, d["outlook.test"].injected);
    assert_eq!(d["lenient.test"].delivered, d["lenient.test"].injected);
    for r in &records {
        if let Event::Bounced {
            domain,
            reason,
            hard,
            reply: Some(reply),
            ..
        } = &r.event
        {
            assert_eq!(reason, "authfailure");
            assert!(!hard, "authentication failures are not the address's fault");
            let expected = if domain == "gmail.test" {
                "5.7.26"
            } else {
                "5.7.509"
            };
            assert_eq!(reply.reply.enhanced.as_deref(), Some(expected));
            assert_eq!(reply.command, "DATA");
        }
    }
    let verdicts = records
        .iter()
        .filter(|r| matches!(r.event, Event::AuthVerdict { .. }))
        .count() as u64;
    assert_eq!(verdicts, s.injected);
    let a = &s.auth;
    assert_eq!((a.spf_pass, a.dkim_pass, a.dmarc_pass), (0, 0, 0));
    assert_eq!(
        (a.spf_fail, a.dkim_fail, a.dmarc_fail),
        (verdicts, verdicts, verdicts)
    );
    assert_eq!(s.suppression_added, 0);
}

#[test]
fn mailbox_full_expires_after_five_days_of_retries() {
    let dir = tempfile::tempdir().unwrap();
    let (s, records) = run("mailbox-full-expiry", dir.path());
    let d = &s.domains;
    assert!(d["full.test"].expired > 0);
    assert_eq!(
        d["full.test"].delivered + d["full.test"].expired,
        d["full.test"].injected
    );
    assert!(d["quota.test"].bounced > 0);
    assert_eq!(
        d["quota.test"].delivered + d["quota.test"].bounced,
        d["quota.test"].injected
    );
    assert_eq!(d["ok.test"].delivered, d["ok.test"].injected);
    let lifetime_ms = 432_000_000;
    for r in &records {
        match &r.event {
            Event::Expired {
                domain, attempts, ..
            } => {
                assert_eq!(domain, "full.test");
                assert_eq!(*attempts, 112);
                assert!(r.ts - records[0].ts >= lifetime_ms);
            }
            Event::Bounced {
                domain,
                reason,
                hard,
                ..
            } => {
                assert_eq!(domain, "quota.test");
                assert_eq!(reason, "mailboxfull");
                assert!(!hard);
            }
            Event::ReportReceived { reason, msg, .. } => {
                assert_eq!(reason, "mailboxfull");
                assert!(msg.is_some());
            }
            _ => {}
        }
    }
    assert_eq!(s.dsns_queued, s.expired + s.bounced);
    assert_eq!(
        s.reports_received.get("bounce").copied(),
        Some(s.expired + s.bounced)
    );
    assert_eq!(s.suppression_added, 0);
}

#[test]
fn async_reports_are_attributed_and_suppress_the_second_send() {
    let dir = tempfile::tempdir().unwrap();
    let (s, records) = run("async-bounces-and-complaints", dir.path());
    let rcpt_of = injected_rcpts(&records);
    let mut sent: Vec<(String, String)> = Vec::new();
    let mut received: Vec<(String, String)> = Vec::new();
    let mut should_suppress: BTreeSet<String> = BTreeSet::new();
    for r in &records {
        match &r.event {
            Event::ReportSent { kind, rcpt, .. } => sent.push((kind.clone(), rcpt.clone())),
            Event::ReportReceived {
                kind,
                msg,
                rcpt,
                hard,
                ..
            } => {
                let msg = msg.expect("every report is attributed by its VERP address");
                assert_eq!(&rcpt_of[&msg], rcpt, "attributed to the right message");
                if kind == "complaint" || *hard {
                    should_suppress.insert(rcpt.clone());
                }
                if kind == "complaint" || rcpt.ends_with("@late.test") {
                    received.push((kind.clone(), rcpt.clone()));
                }
            }
            Event::Bounced {
                rcpt, hard: true, ..
            } => {
                should_suppress.insert(rcpt.clone());
            }
            _ => {}
        }
    }
    sent.sort();
    received.sort();
    assert!(sent.iter().any(|k| k.0 == "bounce") && sent.iter().any(|k| k.0 == "complaint"));
    assert_eq!(
        sent, received,
        "every report the fleet sent was received and attributed"
    );
    let added: BTreeSet<String> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::SuppressionAdded { rcpt, .. } => Some(rcpt.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(added, should_suppress);
    let suppressed: BTreeSet<String> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Suppressed { rcpt, .. } => Some(rcpt.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        suppressed, should_suppress,
        "the second send skips exactly the suppressed"
    );
    // Second send: message ids end in ".59.1@..."; nobody suppressed is delivered again, every
    // one else is.
    let second: BTreeSet<u64> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Injected {
                msg, message_id, ..
            } if message_id.contains(".59.1@") => Some(*msg),
            _ => None,
        })
        .collect();
    assert_eq!(second.len() as u64 + s.suppressed, 3000);
    for r in &records {
        if let Event::Delivered { msg, rcpt, .. } = &r.event
            && second.contains(msg)
        {
            assert!(!should_suppress.contains(rcpt));
        }
    }
    let delivered_second = records
        .iter()
        .filter(|r| matches!(&r.event, Event::Delivered { msg, .. } if second.contains(msg)))
        .count();
    assert_eq!(delivered_second, second.len());
}

#[test]
fn same_scenario_and_seed_give_a_byte_identical_event_log() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_, ra) = run("async-bounces-and-complaints", a.path());
    let (_, rb) = run("async-bounces-and-complaints", b.path());
    let bytes = |records: &[Record]| -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            serde_json::to_writer(&mut out, r).unwrap();
            out.push(b'\n');
        }
        out
    };
    let (ba, bb) = (bytes(&ra), bytes(&rb));
    let hash = |b: &[u8]| {
        b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
            (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
        })
    };
    eprintln!(
        "event log: {} records, {} bytes, FNV-1a {:016x} / {:016x}",
        ra.len(),
        ba.len(),
        hash(&ba),
        hash(&bb)
    );
    assert_eq!(hash(&ba), hash(&bb));
    assert!(ba == bb, "the two runs' event logs differ");
}

/// The fleet's remaining behaviours, each on its own domain, in one virtual run.
const BEHAVIOURS: &str = r#"
name = "behaviours"
seed = 5
mode = "virtual"

[mta]
retry_interval_s_min = 60
retry_interval_s_max = 600
lifetime_s = 7200
run_time_s_max = 86400

[[sender]]
domain = "news.example.test"
dkim_algorithm = "ed25519"

[[domain]]
name = "tls.test"
tls_required = true
# Its host offers no STARTTLS, so the MTA's opportunistic TLS cannot help (tls-everywhere.toml
# has the hosts that offer it).
mx = [{ host = "mx1.tls.test", tls = "none" }]

[[domain]]
name = "spam.test"
content_filter = { words = ["newsletter", "unsubscribe"], score_max = 1 }

[[domain]]
name = "small.test"
message_size_max = 1000

[[domain]]
name = "dropper.test"
drop = { before_data_percent = 30, during_data_percent = 30 }

[[domain]]
name = "slow.test"
mx = [
  { host = "mx1.slow.test", preference = 10, behaviour = { slow = { banner_s = 400 } } },
  { host = "mx2.slow.test", preference = 20 },
]

[[domain]]
name = "later.test"
tempfail = { percent = 100, until_s = 600 }

[campaign]
messages = 600
size_bytes = 2000
"#;

#[test]
fn behaviours_refuse_drop_delay_and_switch_off_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = Scenario::parse(BEHAVIOURS, Path::new("behaviours.toml")).unwrap();
    let s = common::run(&scenario, dir.path());
    let (records, _) = read_log(&runner::events_path(dir.path())).unwrap();
    let d = &s.domains;
    let bounce_of = |domain: &str| -> BTreeSet<(String, String, String)> {
        records
            .iter()
            .filter_map(|r| match &r.event {
                Event::Bounced {
                    domain: dd,
                    reason,
                    reply: Some(reply),
                    ..
                } if dd == domain => Some((
                    reason.clone(),
                    reply.command.clone(),
                    format!(
                        "{} {}",
                        reply.reply.code,
                        reply.reply.enhanced.clone().unwrap_or_default()
                    ),
                )),
                _ => None,
            })
            .collect()
    };
    // TLS required and not offered: 530 5.7.0 to MAIL in clear; the content filter: 550 5.7.1 at the end of DATA; the
    // advertised SIZE: 552 5.3.4 to MAIL (the client declares SIZE=).
    assert_eq!(d["tls.test"].bounced, d["tls.test"].injected);
    assert_eq!(
        bounce_of("tls.test"),
        BTreeSet::from([("failedstarttls".into(), "MAIL".into(), "530 5.7.0".into())])
    );
    assert_eq!(d["spam.test"].bounced, d["spam.test"].injected);
    assert_eq!(
        bounce_of("spam.test"),
        BTreeSet::from([("spamdetected".into(), "DATA".into(), "550 5.7.1".into())])
    );
    assert_eq!(d["small.test"].bounced, d["small.test"].injected);
    assert_eq!(
        bounce_of("small.test"),
        BTreeSet::from([("emailtoolarge".into(), "MAIL".into(), "552 5.3.4".into())])
    );
    // Dropped connections are retried until delivered, and nothing is stored twice (a message
    // cut during DATA was not stored).
    assert_eq!(d["dropper.test"].delivered, d["dropper.test"].injected);
    let drops = records
        .iter()
        .filter(|r| {
            matches!(&r.event, Event::Deferred { domain, reason, .. }
            if domain == "dropper.test" && reason.starts_with("connection"))
        })
        .count();
    assert!(drops > 0);
    let stored: BTreeMap<String, usize> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        if let Event::Stored { rcpt, host, .. } = &r.event
            && host == "mx1.dropper.test"
        {
            *m.entry(rcpt.clone()).or_default() += 1;
        }
        m
    });
    assert_eq!(stored.len() as u64, d["dropper.test"].delivered);
    assert!(stored.values().all(|&n| n == 1));
    // A greeting slower than the client waits (60 s) sends the MTA to the next MX.
    assert_eq!(d["slow.test"].delivered, d["slow.test"].injected);
    assert!(records.iter().all(|r| !matches!(&r.event,
        Event::Delivered { domain, mx, .. } if domain == "slow.test" && mx != "mx2.slow.test")));
    assert!(records.iter().any(|r| matches!(&r.event,
        Event::ConnFailed { mx, error, .. } if mx == "mx1.slow.test" && error.contains("handshake"))));
    // A rule switched off at 600 s: everything deferred before, delivered after.
    assert_eq!(d["later.test"].delivered, d["later.test"].injected);
    for r in &records {
        if let Event::Delivered { domain, .. } = &r.event
            && domain == "later.test"
        {
            assert!(elapsed_s(&records, r) >= 600);
        }
    }
}

/// The soak scenario at a third of its rate (the suite runs unoptimised): an hour of virtual
/// time with faults switching on and off; nothing lost, the queue drained, memory flat.
#[test]
fn soak_hour_loses_nothing_and_memory_stays_flat() {
    let dir = tempfile::tempdir().unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/soak.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("messages = 2000", "messages = 400");
    let scenario_path = dir.path().join("soak.toml");
    std::fs::write(&scenario_path, text).unwrap();
    let out = dir.path().join("run");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("run")
        .arg(&scenario_path)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut rss = Vec::new();
    while child.try_wait().unwrap().is_none() {
        if let Some(kib) = std::fs::read_to_string(&status_path).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            rss.push(kib);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(child.wait().unwrap().success());
    let s: Summary =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s.injected, 400 * 60);
    assert_eq!(s.delivered, s.injected, "{s:?}");
    assert_eq!((s.bounced, s.expired, s.deferred), (0, 0, 0));
    let (records, _) = read_log(&runner::events_path(&out)).unwrap();
    assert!(
        matches!(&records.last().unwrap().event, Event::RunFinished { reason } if reason == "drained")
    );
    // Each fault showed up while it was on.
    let deferred_in = |domain: &str| {
        records
            .iter()
            .any(|r| matches!(&r.event, Event::Deferred { domain: d, .. } if d == domain))
    };
    for d in ["flaky.test", "dnsfail.test", "grey.test"] {
        assert!(deferred_in(d), "{d} never deferred");
    }
    // Nothing lost, seen from the receiving side: the receivers' Maildirs hold each message the
    // campaign injected exactly once (read from the files, not from the log's counters).
    let injected_ids: BTreeSet<String> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Injected { message_id, .. } => Some(message_id.clone()),
            _ => None,
        })
        .collect();
    let stored_ids: Vec<String> = common::maildir_files(&out.join("mailboxes"))
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            common::message_id(&text)
                .unwrap_or_else(|| panic!("{} has no Message-ID", path.display()))
        })
        .collect();
    assert_eq!(stored_ids.len(), 400 * 60, "stored files");
    let unique: BTreeSet<String> = stored_ids.into_iter().collect();
    assert_eq!(unique.len(), 400 * 60, "a message stored twice");
    assert_eq!(unique, injected_ids);
    // The memory check never skips itself: a run too short to sample is a failure to look at.
    assert!(
        rss.len() >= 9,
        "only {} RSS samples: the run ended before its memory could be watched",
        rss.len()
    );
    let third = rss.len() / 3;
    let early = *rss[..third].iter().max().unwrap();
    let late = *rss[rss.len() - third..].iter().max().unwrap();
    eprintln!(
        "soak RSS: early max {early} KiB, late max {late} KiB ({} samples)",
        rss.len()
    );
    assert!(
        late <= early * 5 / 4 + 16 * 1024,
        "memory grew: {early} -> {late} KiB"
    );
}
