//! The MTA's per-destination limits and a slow receiver, in virtual time, checked from the
//! receiving side where it can be: messages per connection as the receivers counted them
//! (`stored` per session), connections per destination from the MTA's connection events, and
//! the time a slow server's delays (`slow.banner_s`, `slow.reply_s`) must add to each delivery.

mod common;

use mailsim::scenario::Scenario;
use mailsim_events::{Event, read_log};
use std::collections::BTreeMap;
use std::path::Path;

const SCENARIO: &str = r#"
name = "limits"
seed = 11
mode = "virtual"
[[sender]]
domain = "s.test"
[[domain]]
name = "fast.test"
[[domain]]
name = "slow.test"
slow = { banner_s = 3.0, reply_s = 2.0 }
[mta]
conns_per_domain_max = 2
msgs_per_conn_max = 3
[campaign]
messages = 60
size_bytes = 900
"#;

#[test]
fn connections_messages_per_connection_and_slow_replies() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = Scenario::parse(SCENARIO, Path::new("limits.toml")).unwrap();
    let summary = common::run(&scenario, dir.path());
    assert_eq!(summary.delivered, 60);
    let (records, _) = read_log(&dir.path().join("events.log")).unwrap();

    // The receivers' count: no session stored more than msgs_per_conn_max messages, and the
    // sessions were used (more than one message on some).
    let mut per_session: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for r in &records {
        if let Event::Stored { host, session, .. } = &r.event {
            *per_session.entry((host.clone(), *session)).or_default() += 1;
        }
    }
    let most = per_session.values().copied().max().unwrap();
    assert_eq!(most, 3, "{per_session:?}");
    assert_eq!(per_session.values().sum::<usize>(), 60);

    // At most conns_per_domain_max connections open to a destination at any time.
    let mut domain_of: BTreeMap<u64, String> = BTreeMap::new();
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    let mut peak: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        match &r.event {
            Event::ConnOpened { conn, domain, .. } => {
                domain_of.insert(*conn, domain.clone());
                let n = open.entry(domain.clone()).or_default();
                *n += 1;
                let p = peak.entry(domain.clone()).or_default();
                *p = (*p).max(*n);
            }
            Event::ConnClosed { conn, .. } => {
                if let Some(d) = domain_of.get(conn) {
                    *open.get_mut(d).unwrap() -= 1;
                }
            }
            _ => {}
        }
    }
    for (domain, p) in &peak {
        assert!(*p <= 2, "{domain}: {p} connections at once");
    }
    assert_eq!(peak.get("fast.test"), Some(&2), "{peak:?}");

    // A slow server: the banner waits 3 s and every batch of replies 2 s more (the greeting,
    // EHLO, the pipelined MAIL/RCPT/DATA, the end of the message), so no message to slow.test
    // is delivered sooner than 3 + 4 x 2 = 11 s after its injection; fast.test's are at once.
    let injected_at: BTreeMap<u64, u64> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Injected { msg, .. } => Some((*msg, r.ts)),
            _ => None,
        })
        .collect();
    let mut latency: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &records {
        if let Event::Delivered { msg, domain, .. } = &r.event {
            latency
                .entry(domain.clone())
                .or_default()
                .push(r.ts - injected_at[msg]);
        }
    }
    let slow_min = latency["slow.test"].iter().min().unwrap();
    let fast_max = latency["fast.test"].iter().max().unwrap();
    assert!(
        *slow_min >= 11_000,
        "slow.test delivered after {slow_min} ms"
    );
    assert!(*fast_max < 1_000, "fast.test took {fast_max} ms");
}

/// RFC 5321 section 5.1: MX hosts of equal preference are tried in a random order, so the load
/// is spread. Counted from the receiving side: each host's Maildir.
#[test]
fn equal_preference_mx_hosts_share_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"
name = "equal-mx"
seed = 5
mode = "virtual"
[[sender]]
domain = "s.test"
[[domain]]
name = "two.test"
mx = [
  { host = "mx1.two.test", preference = 10 },
  { host = "mx2.two.test", preference = 10 },
  { host = "backup.two.test", preference = 20 },
]
[mta]
msgs_per_conn_max = 1
[campaign]
messages = 40
size_bytes = 900
"#;
    let scenario = Scenario::parse(text, Path::new("equal-mx.toml")).unwrap();
    let summary = common::run(&scenario, dir.path());
    assert_eq!(summary.delivered, 40);
    let root = dir.path().join("mailboxes");
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for f in common::maildir_files(&root) {
        *per_host.entry(common::host_of(&root, &f)).or_default() += 1;
    }
    per_host.remove("s.test");
    let mx1 = per_host.get("mx1.two.test").copied().unwrap_or(0);
    let mx2 = per_host.get("mx2.two.test").copied().unwrap_or(0);
    assert_eq!(
        mx1 + mx2,
        40,
        "the backup MX is not used while both primaries answer: {per_host:?}"
    );
    assert!(mx1 >= 10 && mx2 >= 10, "{per_host:?}");
}
