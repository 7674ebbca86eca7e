//! The README's first command, `mailsim run scenarios/quickstart.toml`, checked against what
//! the scenario's header promises, read from the receivers' Maildirs where it can be (not from
//! mailsim's log or counters).

mod common;

use mailsim_events::{Event, read_log};
use mailsim_summary::Summary;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Stored files per MX host directory (`mailboxes/<host>/.../new/*`).
fn stored_per_host(root: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for file in common::maildir_files(root) {
        out.entry(common::host_of(root, &file))
            .or_default()
            .push(file);
    }
    out
}

#[test]
fn the_quickstart_does_what_its_header_says() {
    let dir = tempfile::tempdir().unwrap();
    // The quickstart as shipped, but for its wall-clock cap: 120 s is ample for a release build
    // on an idle machine (about 20 s), not for this debug build beside the rest of the suite on
    // two cores (once 135 s, 25 s alone). The messages' lifetime (300 s) stays, so a slow run
    // still ends in the same verdicts or fails here.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/quickstart.toml");
    let text = std::fs::read_to_string(&shipped).unwrap();
    assert!(text.contains("\nrun_time_s_max = 120\n"));
    let scenario = dir.path().join("quickstart.toml");
    std::fs::write(
        &scenario,
        text.replace("\nrun_time_s_max = 120\n", "\nrun_time_s_max = 600\n"),
    )
    .unwrap();
    let run = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("run")
        .arg(&scenario)
        .arg("--out")
        .arg(&run)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Summary = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s.injected, 10_000);
    let stored = stored_per_host(&run.join("mailboxes"));
    let files = |host: &str| stored.get(host).map_or(0, Vec::len) as u64;
    let injected = |d: &str| s.domains[d].injected;

    // accept.test, flaky.test: every message is in the receiver's mailbox.
    for d in ["accept.test", "flaky.test"] {
        assert_eq!(files(&format!("mx1.{d}")), injected(d), "{d}");
    }
    // big.test: every message too, over its two MX of equal preference (RFC 5321 5.1: each
    // connection draws the order; with up to 500 messages a connection, a live run of a few
    // connections may well put most on one host, so the spread itself is checked where the
    // draw is deterministic: mta_limits.rs).
    let (mx1, mx2) = (files("mx1.big.test"), files("mx2.big.test"));
    assert_eq!(mx1 + mx2, injected("big.test"), "{mx1} + {mx2}");
    // flaky.test's 451s were retried: deferrals happened, none is left, all were stored above.
    let (records, _) = read_log(&run.join("events.log")).unwrap();
    let retried = records
        .iter()
        .filter(|r| matches!(&r.event, Event::Deferred { domain, .. } if domain == "flaky.test"))
        .count();
    assert!(retried > 0);
    assert_eq!(s.domains["flaky.test"].deferred, 0);
    // deadmx.test: nothing through the refusing mx1, everything through mx2.
    assert_eq!(files("mx1.deadmx.test"), 0);
    assert_eq!(files("mx2.deadmx.test"), injected("deadmx.test"));
    // unknown.test: about 20% do not exist (a binomial spread of about 1% on ~2,000).
    let unknown = injected("unknown.test");
    let kept = files("mx1.unknown.test");
    let refused = unknown - kept;
    assert_eq!(s.domains["unknown.test"].bounced, refused);
    let share = refused as f64 / unknown as f64;
    assert!(
        (0.16..=0.24).contains(&share),
        "{refused} of {unknown} refused"
    );
    // Every delivered message passed SPF, DKIM and DMARC at the receiver, as its stored
    // Authentication-Results header says.
    let mut checked = 0;
    for (host, paths) in &stored {
        if host.contains("news.example.test") {
            continue; // the sender's own mailboxes: DSNs
        }
        for p in paths {
            let text = std::fs::read_to_string(p).unwrap();
            let head: String = text.lines().take(6).collect::<Vec<_>>().join("\n");
            assert!(
                head.contains("spf=pass")
                    && head.contains("dkim=pass")
                    && head.contains("dmarc=pass"),
                "{}: {head}",
                p.display()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, s.delivered);
    assert_eq!(s.delivered + s.bounced, 10_000);
}
