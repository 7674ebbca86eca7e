//! A virtual run with the receivers' work done ahead on another thread (sim/src/foresight.rs)
//! records exactly what a run without it records: the same log, byte for byte, and the same
//! mail in the receivers' mailboxes. Run as two processes of the binary, one with
//! `MAILSIM_FORESIGHT=0`.

use std::path::Path;
use std::process::Command;

/// dirty-list in small: unknown users (refused at RCPT: work handed over and never taken),
/// spam traps, DKIM Ed25519, content read for placement, two providers, greylisting retries.
const SCENARIO: &str = r#"
name = "foresight"
seed = 7
mode = "virtual"

[[sender]]
domain = "news.example.test"
feedback = "fbl@news.example.test"
dkim_algorithm = "ed25519"

[mta]
retry_interval_s_min = 600
retry_interval_s_max = 3600
lifetime_s = 172800
run_time_s_max = 345600

[reputation]
initial = 70
new_daily = 500

[[domain]]
name = "gmail.test"
profile = "gmail-like"
weight = 5
unknown_users = { percent = 8 }
greylist = { window_s = 300 }

[[domain]]
name = "outlook.test"
profile = "microsoft-like"
weight = 3
unknown_users = { percent = 8 }

[[segment]]
name = "recycled"
kind = "recycled-trap"
percent = 3

[[segment]]
name = "engaged"
percent = 30

[campaign]
html = true
list_unsubscribe = "one-click"
size_bytes = 3000
send_interval_s = 86400
messages = 400
sends = 3
"#;

/// Run the scenario; the foresight's figures it logged (name -> count).
fn run(dir: &Path, text: &str, foresight: &str) -> std::collections::BTreeMap<String, u64> {
    let scenario = dir.join("scenario.toml");
    std::fs::write(&scenario, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(["run", "--quiet", "--out"])
        .arg(dir.join("out"))
        .arg(&scenario)
        .env("MAILSIM_FORESIGHT", foresight)
        .env("MAILSIM_LOG", "mailsim::env=debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // "receivers' work done ahead ready=N waited=N ..." (with the terminal's colour codes).
    let mut plain = String::new();
    let mut chars = stderr.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .filter(|l| l.contains("receivers' work done ahead"))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// Every file under `root`: its folder (relative) -> the files' bytes, sorted (Maildir file
/// names hold the process id).
fn files(root: &Path) -> std::collections::BTreeMap<String, Vec<Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let folder = dir.strip_prefix(root).unwrap().display().to_string();
                out.entry(folder)
                    .or_insert_with(Vec::new)
                    .push(std::fs::read(&path).unwrap());
            }
        }
    }
    for copies in out.values_mut() {
        copies.sort();
    }
    out
}

/// A DNS fault: the thread checks only signatures then (the DNS changes over the run).
const FAULT: &str = r#"
[[dns_fault]]
name = "outlook.test"
kind = "servfail"
until_s = 600
"#;

#[test]
fn work_done_ahead_changes_nothing_a_run_records() {
    same_with_and_without(SCENARIO, |figures| {
        // Whole verdicts and contents were done ahead and taken.
        assert!(figures["ready"] + figures["waited"] > 100, "{figures:?}");
    });
}

#[test]
fn signatures_checked_ahead_under_a_dns_fault_change_nothing_a_run_records() {
    same_with_and_without(&format!("{SCENARIO}{FAULT}"), |figures| {
        assert!(figures["signatures_ahead"] > 100, "{figures:?}");
    });
}

fn same_with_and_without(text: &str, check: impl Fn(&std::collections::BTreeMap<String, u64>)) {
    let (with, without) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let figures = run(with.path(), text, "1");
    assert!(
        run(without.path(), text, "0").is_empty(),
        "work done ahead when turned off"
    );
    check(&figures);
    let log = |d: &Path| std::fs::read(d.join("out/events.log")).unwrap();
    assert!(
        log(with.path()) == log(without.path()),
        "the event logs differ"
    );
    let (a, b) = (
        files(&with.path().join("out/mailboxes")),
        files(&without.path().join("out/mailboxes")),
    );
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the mailboxes hold other folders"
    );
    for (folder, copies) in &a {
        assert!(copies == &b[folder], "{folder} holds other mail");
    }
    assert!(a.values().map(Vec::len).sum::<usize>() > 1000);
    // The run did what the test is about: DKIM signatures, placement in both folders,
    // refusals (work handed over and never taken).
    // The records as `mailsim events` prints them (the log itself is binary).
    let (records, _) = mailsim_events::read_log(&with.path().join("out/events.log")).unwrap();
    let text: String = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    for needed in [
        "\"dkim\":\"pass\"",
        "\"folder\":\"spam\"",
        "\"folder\":\"inbox\"",
        "\"code\":550",
    ] {
        assert!(text.contains(needed), "no {needed} in the log");
    }
}
