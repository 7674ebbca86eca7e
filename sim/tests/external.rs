//! External mode (`mailsim run --mta`): mailsim measures another MTA. Here the other MTA is
//! mailsim's own daemon in a separate process, so the run's figures can be checked against two
//! observers the run does not control: the MTA's own event log and the files the fleet stored.

mod common;

use mailsim_events::{Event, read_log};
use mailsim_summary::Summary;
use std::process::Command;

#[test]
fn another_mta_is_measured_from_outside() {
    let dir = tempfile::tempdir().unwrap();
    let (dns_port, fleet_port, submission) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let scenario = dir.path().join("external.toml");
    std::fs::write(
        &scenario,
        r#"
name = "external"
seed = 21
[[sender]]
domain = "ext.sender.test"
[[domain]]
name = "a.test"
[[domain]]
name = "b.test"
[[domain]]
name = "c.test"
unknown_users = { percent = 30 }
[campaign]
messages = 60
size_bytes = 1200
"#,
    )
    .unwrap();
    let spool = dir.path().join("spool");
    let mut mta = common::start_mta_daemon(&spool, dns_port, submission, fleet_port);

    let run_dir = dir.path().join("run");
    let stdout = common::run_against(&scenario, submission, fleet_port, dns_port, &run_dir);
    let summary: Summary = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(summary.injected, 60);

    // Observer 1: the other MTA's own log says what it delivered and bounced.
    let _ = Command::new("kill").arg(mta.0.id().to_string()).status();
    let _ = mta.0.wait();
    let (records, _) = read_log(&spool.join("events.log")).unwrap();
    let count = |kind: &str| records.iter().filter(|r| r.event.kind() == kind).count() as u64;
    let (mta_delivered, mta_bounced) = (count("delivered"), count("bounced"));
    // Observer 2: the files the fleet stored for the campaign's domains.
    let domains = ["a.test", "b.test", "c.test"];
    let files: Vec<std::path::PathBuf> = domains
        .iter()
        .flat_map(|d| common::maildir_files(&run_dir.join("mailboxes").join(format!("mx1.{d}"))))
        .collect();
    let stored = files.len() as u64;
    // Every campaign message, by all three accounts: the other MTA's DSNs (to the sender's
    // plain return path, not VERP) are attributed by the Message-ID they return.
    let campaign = |kind: &str| {
        records
            .iter()
            .filter(|r| {
                r.event.kind() == kind
                    && match &r.event {
                        Event::Delivered { domain, .. } | Event::Bounced { domain, .. } => {
                            domains.contains(&domain.as_str())
                        }
                        _ => false,
                    }
            })
            .count() as u64
    };
    let (campaign_delivered, campaign_bounced) = (campaign("delivered"), campaign("bounced"));
    assert_eq!(
        campaign_delivered + campaign_bounced,
        60,
        "{mta_delivered} delivered, {mta_bounced} bounced"
    );
    assert!(campaign_bounced > 0, "c.test refuses 30% of its users");
    assert_eq!(stored, campaign_delivered);
    assert_eq!(
        (summary.delivered, summary.bounced, summary.deferred),
        (stored, campaign_bounced, 0),
        "the run's figures against the files and the other MTA's log"
    );
    assert_eq!(summary.reasons.get("userunknown"), Some(&campaign_bounced));
    // The run ended by itself once everything was final, well before its time limit.
    let (run_records, _) = read_log(&run_dir.join("events.log")).unwrap();
    assert!(
        matches!(&run_records.last().unwrap().event, Event::RunFinished { reason } if reason == "drained"),
        "{:?}",
        run_records.last()
    );
    // What the receivers saw: signed by the injector (sign = true, the default), dated now.
    assert_eq!(summary.auth.dkim_pass, stored, "{:?}", summary.auth);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for f in &files {
        let raw = std::fs::read(f).unwrap();
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let date = msg.date().unwrap().to_timestamp();
        assert!(
            (now - date).abs() < 600,
            "{}: Date {date}, now {now}",
            f.display()
        );
    }
}
