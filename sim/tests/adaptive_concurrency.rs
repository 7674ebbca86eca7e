//! Issue 15, item 1: adaptive per-destination concurrency. A destination that takes two
//! connections per client address and answers a third with "421 4.7.0 Too many connections",
//! an MTA allowed four: the refused connections lower the window to the two that work, those
//! two keep sending (nothing is deferred, the destination is never held), and everything is
//! delivered at once. Checked from the receiving side: the receivers' Maildirs, and the
//! greetings the receivers refused against the MTA's window changes.

mod common;

use mailsim::scenario::Scenario;
use mailsim_events::{Event, read_log};
use std::path::Path;

fn scenario(mode: &str, messages: u64) -> Scenario {
    let text = format!(
        r#"
name = "capped"
seed = 5
mode = "{mode}"
[[sender]]
domain = "s.test"
[[domain]]
name = "capped.test"
rate_limit = {{ messages_per_s = 1000, burst = 100000, connections_max = 2 }}
[mta]
conns_per_domain_max = 4
msgs_per_conn_max = 50
lifetime_s = 600
destination_backoff_s = 60
[campaign]
messages = {messages}
size_bytes = 900
"#
    );
    Scenario::parse(&text, Path::new("capped.toml")).unwrap()
}

/// The window's moves (old, new, cause) and the greetings the receivers refused.
fn moves_and_refusals(dir: &Path) -> (Vec<(u64, u64, String)>, usize, Vec<Event>) {
    let (records, _) = read_log(&dir.join("events.log")).unwrap();
    let mut moves = Vec::new();
    let mut refused = 0;
    let mut backoffs = Vec::new();
    for r in records {
        match r.event {
            Event::Concurrency {
                old, new, cause, ..
            } => moves.push((old, new, cause)),
            Event::Refused {
                ref command, code, ..
            } if command == "CONNECT" => {
                assert_eq!(code, 421);
                refused += 1;
            }
            e @ Event::Backoff { .. } => backoffs.push(e),
            _ => {}
        }
    }
    (moves, refused, backoffs)
}

#[test]
fn a_two_connection_cap_settles_the_window_at_two_and_everything_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let summary = common::run(&scenario("virtual", 1000), dir.path());
    // The receiving side stored every message, once.
    let stored = common::maildir_files(&dir.path().join("mailboxes"));
    assert_eq!(stored.len(), 1000);
    assert_eq!((summary.delivered, summary.deferred), (1000, 0));
    let (moves, refused, backoffs) = moves_and_refusals(dir.path());
    assert!(
        backoffs.is_empty(),
        "the destination was held: {backoffs:?}"
    );
    // The two extra connections of the start were refused and lowered the window 4 -> 3 -> 2.
    assert_eq!(
        moves[..2]
            .iter()
            .map(|(o, n, _)| (*o, *n))
            .collect::<Vec<_>>(),
        [(4, 3), (3, 2)],
        "{moves:?}"
    );
    assert!(moves[0].2.contains("421"), "{moves:?}");
    // Settling: every probe to 3 is refused and brings it back to 2, the probes further and
    // further apart; the window never goes above 3 nor below 2.
    assert_eq!(moves.last().unwrap().1, 2, "{moves:?}");
    assert!(
        moves
            .iter()
            .all(|(o, n, _)| (2..=4).contains(o) && (2..=3).contains(n))
    );
    let probes = moves.iter().filter(|(o, n, _)| n > o).count();
    assert!(probes <= 4, "{probes} probes for 1000 messages: {moves:?}");
    // Each lowering is a greeting the receiver refused, as the receiver counted them.
    let lowered = moves.iter().filter(|(o, n, _)| n < o).count();
    assert_eq!(lowered, refused, "{moves:?}");
}

#[test]
fn the_same_over_loopback_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let summary = common::run(&scenario("live", 600), dir.path());
    let stored = common::maildir_files(&dir.path().join("mailboxes"));
    assert_eq!(stored.len(), 600);
    assert_eq!(summary.delivered, 600);
    let (moves, refused, backoffs) = moves_and_refusals(dir.path());
    assert!(
        backoffs.is_empty(),
        "the destination was held: {backoffs:?}"
    );
    assert!(refused >= 2, "the cap was never met: {moves:?}");
    assert!(
        moves.iter().all(|(_, n, _)| *n <= 3),
        "the window rose past the cap's probe: {moves:?}"
    );
    // Over sockets the receiver counts a connection until its session task has ended, so a
    // connection the MTA opens just after closing one can be refused at two; the window then
    // lowers to the one session up (as against a real server's connection counter). It ends
    // within what the cap allows, never at zero.
    assert!(matches!(moves.last(), Some((_, 1..=3, _))), "{moves:?}");
}

#[test]
fn an_initial_window_above_the_limit_is_named() {
    let text = "name = \"x\"\n[[sender]]\ndomain = \"s.test\"\n[[domain]]\nname = \"a.test\"\n[mta]\nconns_per_domain_max = 2\nconns_per_domain_initial = 5\n[campaign]\nmessages = 1\n";
    let e = Scenario::parse(text, Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.toml:6") && e.contains("mta.conns_per_domain_initial"),
        "{e}"
    );
}
