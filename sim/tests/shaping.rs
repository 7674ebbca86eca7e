//! Issue 15, item 2: shaping rules (a file like KumoMTA's). Checked from the receiving side: the
//! receivers' own records of what they stored (when, in which session) show the rule's message
//! rate, connection limit and messages per connection held; a reply the rule acts on holds the
//! destination, and the receivers store nothing from it until the hold ends.

mod common;

use mailsim::scenario::Scenario;
use mailsim_events::{Event, read_log};
use std::collections::BTreeMap;
use std::path::Path;

fn run(dir: &Path, scenario: &str, shaping: &str) -> Vec<mailsim_events::Record> {
    std::fs::write(dir.join("shaping.toml"), shaping).unwrap();
    let path = dir.join("scenario.toml");
    std::fs::write(&path, scenario).unwrap();
    let scenario = Scenario::load(&path).unwrap();
    let out = dir.join("run");
    common::run(&scenario, &out);
    read_log(&out.join("events.log")).unwrap().0
}

#[test]
fn a_rules_rate_connections_and_messages_per_connection_hold_at_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let records = run(
        dir.path(),
        r#"
name = "shaped"
seed = 3
mode = "virtual"
[[sender]]
domain = "s.test"
[[domain]]
name = "gmail.test"
profile = "gmail-like"
[mta]
shaping = "shaping.toml"
conns_per_domain_max = 8
[campaign]
messages = 600
size_bytes = 900
"#,
        r#"
[[destination]]
domains = ["gmail.test"]
connection_limit = 2
messages_per_connection = 25
messages_per_s = 40.0
"#,
    );
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    let mut per_session: BTreeMap<(String, u64), usize> = BTreeMap::new();
    let mut open: usize = 0;
    let mut peak = 0;
    let mut host_of: BTreeMap<u64, ()> = BTreeMap::new();
    let mut refused = 0;
    for r in &records {
        match &r.event {
            Event::Stored { host, session, .. } => {
                *per_second.entry(r.ts / 1000).or_default() += 1;
                *per_session.entry((host.clone(), *session)).or_default() += 1;
            }
            Event::ConnOpened { conn, .. } => {
                host_of.insert(*conn, ());
                open += 1;
                peak = peak.max(open);
            }
            Event::ConnClosed { conn, .. } if host_of.contains_key(conn) => open -= 1,
            Event::Refused { .. } => refused += 1,
            _ => {}
        }
    }
    assert_eq!(per_session.values().sum::<usize>(), 600, "all stored");
    // 40 a second, never the 50 a second the profile throttles at (so never refused).
    assert!(per_second.values().all(|n| *n <= 41), "{per_second:?}");
    assert_eq!(refused, 0);
    assert!(
        per_second.len() >= 14,
        "600 messages at 40/s take 15 s: {per_second:?}"
    );
    assert!(per_session.values().all(|n| *n <= 25), "{per_session:?}");
    assert!(peak <= 2, "{peak} connections at once");
}

#[test]
fn a_reply_the_rule_names_holds_the_destination() {
    let dir = tempfile::tempdir().unwrap();
    let records = run(
        dir.path(),
        r#"
name = "suspended"
seed = 4
mode = "virtual"
[[sender]]
domain = "s.test"
[[domain]]
name = "busy.test"
rate_limit = { messages_per_s = 5, burst = 20, close = true }
[mta]
shaping = "shaping.toml"
retry_interval_s_min = 30
[campaign]
messages = 100
size_bytes = 900
"#,
        r#"
[[destination]]
domains = ["busy.test"]
[[destination.on_reply]]
match = "too much mail"
suspend_s = 120
"#,
    );
    let holds: Vec<(u64, u64, String)> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Backoff {
                until_ms, reason, ..
            } => Some((r.ts, *until_ms, reason.clone())),
            _ => None,
        })
        .collect();
    assert!(!holds.is_empty(), "the rule never acted");
    for (at, until, reason) in &holds {
        assert!(
            reason.contains("shaping") && reason.contains("too much mail"),
            "{reason}"
        );
        assert_eq!(until - at, 120_000);
        // The receiver stored nothing from the MTA while the hold lasted.
        let during = records
            .iter()
            .filter(|r| matches!(r.event, Event::Stored { .. }) && r.ts > *at && r.ts < *until);
        assert_eq!(
            during.count(),
            0,
            "stored during the hold from {at} to {until}"
        );
    }
    let stored = records
        .iter()
        .filter(|r| matches!(r.event, Event::Stored { .. }))
        .count();
    assert_eq!(stored, 100, "everything arrives in the end");
}

#[test]
fn the_shipped_rules_load_and_a_broken_file_is_named() {
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/shaping/fleet-profiles.toml");
    let text = std::fs::read_to_string(&shipped).unwrap();
    let rules = mailsim_mta::shaping::Shaping::parse(&text, "fleet-profiles.toml").unwrap();
    for domain in ["gmail.test", "yahoo.test", "outlook.test"] {
        assert!(rules.rule_for(domain, &[]).is_some(), "{domain}");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shaping.toml"),
        "[[destination]]\ndomains = [\"a.test\"]\nmessages_per_s = \"fast\"\n",
    )
    .unwrap();
    let path = dir.path().join("scenario.toml");
    std::fs::write(
        &path,
        "name = \"x\"\n[[sender]]\ndomain = \"s.test\"\n[[domain]]\nname = \"a.test\"\n[mta]\nshaping = \"shaping.toml\"\n[campaign]\nmessages = 1\n",
    )
    .unwrap();
    let e = Scenario::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("mta.shaping") && e.contains("shaping.toml:3"),
        "{e}"
    );
}

/// Scenario text for `capped.test`: two connections per client, the third refused with 421.
fn capped(mode: &str, messages: u64, mta: &str) -> String {
    format!(
        r#"
name = "capped"
seed = 6
mode = "{mode}"
[[sender]]
domain = "s.test"
[[domain]]
name = "capped.test"
rate_limit = {{ messages_per_s = 100000, burst = 100000, connections_max = 2 }}
[mta]
shaping = "shaping.toml"
{mta}
[campaign]
messages = {messages}
size_bytes = 900
"#
    )
}

fn stored(records: &[mailsim_events::Record]) -> Vec<u64> {
    records
        .iter()
        .filter(|r| matches!(r.event, Event::Stored { .. }))
        .map(|r| r.ts)
        .collect()
}

/// The most MTA connections to any destination open at once.
fn peak_connections(records: &[mailsim_events::Record]) -> usize {
    let (mut open, mut peak) = (0usize, 0usize);
    for r in records {
        match r.event {
            Event::ConnOpened { .. } => {
                open += 1;
                peak = peak.max(open);
            }
            Event::ConnClosed { .. } => open = open.saturating_sub(1),
            _ => {}
        }
    }
    peak
}

#[test]
fn rules_and_the_adaptive_window_work_together() {
    // A rule that suspends on every 421: the refused greetings also lower the window to the
    // two connections the destination takes, so the hold does not repeat for ever.
    let dir = tempfile::tempdir().unwrap();
    let records = run(
        dir.path(),
        &capped(
            "virtual",
            100,
            "conns_per_domain_max = 4\nmsgs_per_conn_max = 5\nrun_time_s_max = 3000",
        ),
        "[[destination]]\ndomains = [\"capped.test\"]\n[[destination.on_reply]]\nmatch = \"421\"\nsuspend_s = 100\n",
    );
    assert_eq!(stored(&records).len(), 100, "all delivered in the end");

    // A rule by MX name holds from the first connection (before the MX hosts were known).
    let dir = tempfile::tempdir().unwrap();
    let records = run(
        dir.path(),
        &capped(
            "virtual",
            200,
            "conns_per_domain_max = 8\nmsgs_per_conn_max = 10",
        ),
        "[[destination]]\nmx_suffixes = [\"capped.test\"]\nconnection_limit = 1\n",
    );
    assert_eq!(stored(&records).len(), 200);
    assert_eq!(peak_connections(&records), 1);

    // A rule's messages per connection sizes the connections opened.
    let dir = tempfile::tempdir().unwrap();
    let records = run(
        dir.path(),
        &capped("virtual", 60, "conns_per_domain_max = 2"),
        "[[destination]]\ndomains = [\"capped.test\"]\nmessages_per_connection = 1\n",
    );
    assert_eq!(stored(&records).len(), 60);
    assert_eq!(peak_connections(&records), 2);

    // 600 a second is paced to the microsecond, not rounded to 1 ms slots (1,000 a second).
    let dir = tempfile::tempdir().unwrap();
    let records = run(
        dir.path(),
        &capped("virtual", 1000, "conns_per_domain_max = 2"),
        "[[destination]]\ndomains = [\"capped.test\"]\nmessages_per_s = 600.0\n",
    );
    let ts = stored(&records);
    assert_eq!(ts.len(), 1000);
    let spread_ms = ts.iter().max().unwrap() - ts.iter().min().unwrap();
    assert!((1600..=1750).contains(&spread_ms), "{spread_ms} ms");
}

#[test]
fn a_slow_rule_does_not_outlast_the_run_over_real_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let records = run(
        dir.path(),
        &capped("live", 5, "run_time_s_max = 4"),
        "[[destination]]\ndomains = [\"capped.test\"]\nmessages_per_s = 0.01\n",
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // One message, then the destination waits 100 s for its next slot: the run ends first.
    assert_eq!(stored(&records).len(), 1);
    assert!(matches!(
        &records.last().unwrap().event,
        Event::RunFinished { reason } if reason == "time limit"
    ));
}
