//! Issue 19, item 3: `mailsim auth check` finds the mistake planted in each bad zone (exactly
//! that one: a finding more is a false alarm) and passes the correct zone without a finding.
//! The zones are sim/tests/data/authcheck (clean.zone; bad/RULE.zone, written by plant.py).
//! Where a mistake breaks SPF for receivers, a receiver's evaluation (`auth verify`, the path
//! checked against the RFC 7208 suite) agrees: mail from an unlisted host gets permerror.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEFAULT_ARGS: &[&str] = &[
    "--selector",
    "sel2026",
    "--selector",
    "ed2026",
    "--ip",
    "192.0.2.10",
];

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/authcheck")
}

fn check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(["auth", "check", "shop.example"])
        .args(args)
        .output()
        .unwrap()
}

/// The findings of a `--json` run, as (level, rule).
fn findings(out: &Output) -> Vec<(String, String)> {
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["level"].as_str().unwrap().to_string(),
                f["rule"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_correct_domain_has_nothing_to_fix() {
    let zone = data().join("clean.zone");
    let mut args = vec!["--zone", zone.to_str().unwrap(), "--json"];
    args.extend_from_slice(DEFAULT_ARGS);
    let out = check(&args);
    assert_eq!(findings(&out), vec![]);
    assert_eq!(out.status.code(), Some(0));
    // The text form says what was looked at and the verdict.
    let out = check(
        &args[..2]
            .iter()
            .chain(DEFAULT_ARGS)
            .copied()
            .collect::<Vec<_>>(),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for part in [
        "SPF (1 DNS-querying terms, 0 void lookups)",
        "DKIM sel2026",
        "DKIM ed2026",
        "DMARC",
        "MX",
        "PTR 192.0.2.10",
        "MTA-STS",
        "TLS-RPT",
        "result: pass (0 failures, 0 warnings)",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
}

#[test]
fn each_planted_mistake_is_found_and_nothing_else() {
    let mut bad: Vec<PathBuf> = std::fs::read_dir(data().join("bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    bad.sort();
    assert!(bad.len() >= 45, "{} bad zones", bad.len());
    let mut wrong = Vec::new();
    for zone in &bad {
        let stem = zone.file_stem().unwrap().to_str().unwrap();
        let rule = stem.split('~').next().unwrap();
        let text = std::fs::read_to_string(zone).unwrap();
        let args: Vec<&str> = match text.lines().next().and_then(|l| l.strip_prefix("; args: ")) {
            Some(a) => a.split_whitespace().collect(),
            None => DEFAULT_ARGS.to_vec(),
        };
        let out = check(
            &["--zone", zone.to_str().unwrap(), "--json"]
                .into_iter()
                .chain(args)
                .collect::<Vec<_>>(),
        );
        let found = findings(&out);
        let rules: BTreeSet<&str> = found.iter().map(|(_, r)| r.as_str()).collect();
        // The exit status is the worst level: 1 fail, 3 warnings only, 0 information only.
        let expected_code = if found.iter().any(|(l, _)| l == "fail") {
            1
        } else if found.iter().any(|(l, _)| l == "warn") {
            3
        } else {
            0
        };
        if rules != BTreeSet::from([rule]) || out.status.code() != Some(expected_code) {
            wrong.push(format!(
                "{stem}: found {found:?}, exit {:?}",
                out.status.code()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn receivers_agree_where_a_planted_mistake_breaks_spf() {
    // Mail from a host the record does not list: a receiver evaluates every term, as the
    // lint's counts assume, and answers permerror for each of these mistakes.
    let message = "From: news@shop.example\r\nTo: a@b.example\r\nSubject: t\r\n\
                   Message-ID: <1@shop.example>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\nhi\r\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.eml");
    std::fs::write(&file, message).unwrap();
    for rule in [
        "spf.multiple",
        "spf.syntax",
        "spf.lookups",
        "spf.void-lookups",
        "spf.include-none",
        "spf.loop",
        "spf.mx-names",
    ] {
        let zone = data().join(format!("bad/{rule}.zone"));
        let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
            .args(["auth", "verify"])
            .arg(&file)
            .args(["--ip", "203.0.113.9", "--helo", "mta.shop.example"])
            .args(["--mail-from", "bounce@shop.example", "--zone"])
            .arg(&zone)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("spf=permerror"),
            "{rule}: a receiver says\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And the clean record simply fails the unlisted host.
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(["auth", "verify"])
        .arg(&file)
        .args(["--ip", "203.0.113.9", "--helo", "mta.shop.example"])
        .args(["--mail-from", "bounce@shop.example", "--zone"])
        .arg(data().join("clean.zone"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("spf=fail"));
}

#[test]
fn a_running_dns_server_can_be_checked_too() {
    let zone = data().join("bad/dmarc.policy-none.zone");
    let (mut child, port) = common::serve_dns(&["--zone", zone.to_str().unwrap()]);
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--dns", addr.as_str()];
    args.extend_from_slice(DEFAULT_ARGS);
    let out = check(&args);
    child.kill().unwrap();
    child.wait().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(
        text.contains("WARN dmarc.policy-none") && text.contains("(RFC 7489 section 6.3)"),
        "{text}"
    );
    assert!(
        text.contains("result: warn (0 failures, 1 warning)"),
        "{text}"
    );
}

#[test]
fn bad_arguments_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.zone");
    std::fs::write(
        &broken,
        "$ORIGIN shop.example.\n@ MX 10 mx1\n@ TXT \"v=spf1 -all\n",
    )
    .unwrap();
    let out = check(&["--zone", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.zone:3"), "{err}");
    // Neither zones nor a server: nothing to ask.
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--zone"));
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(["auth", "check", "localhost", "--zone"])
        .arg(data().join("clean.zone"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DOMAIN \"localhost\""));
}

#[test]
fn correct_setups_written_other_ways_have_nothing_to_fix() {
    // sim/tests/data/authcheck/good: a DKIM key over lines in parentheses (opendkim-genkey's
    // form), tag values in upper case with decimal escapes, reports to another name of the same
    // organization, a selector that is a CNAME to the key.
    let mut good: Vec<std::path::PathBuf> = std::fs::read_dir(data().join("good"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    good.sort();
    assert_eq!(good.len(), 4);
    for zone in &good {
        let mut args = vec!["--zone", zone.to_str().unwrap(), "--json"];
        args.extend_from_slice(DEFAULT_ARGS);
        let out = check(&args);
        assert_eq!(findings(&out), vec![], "{}", zone.display());
        assert_eq!(out.status.code(), Some(0), "{}", zone.display());
    }
}

#[test]
fn branching_includes_stop_at_the_limit_as_receivers_do() {
    // Each level includes the next twice: 2^40 evaluations if followed blindly.
    let dir = tempfile::tempdir().unwrap();
    let mut zone = String::from(
        "$ORIGIN d.example.\n@ TXT \"v=spf1 include:m1.d.example include:m1.d.example -all\"\n@ MX 10 mx\nmx A 192.0.2.25\n",
    );
    for i in 1..40 {
        zone.push_str(&format!(
            "m{i} TXT \"v=spf1 include:m{n}.d.example include:m{n}.d.example -all\"\n",
            n = i + 1
        ));
    }
    zone.push_str("m40 TXT \"v=spf1 -all\"\n");
    let path = dir.path().join("diamond.zone");
    std::fs::write(&path, zone).unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(["auth", "check", "d.example", "--json", "--zone"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let rules: BTreeSet<String> = findings(&out).into_iter().map(|(_, r)| r).collect();
    assert!(rules.contains("spf.lookups"), "{rules:?}");
}

#[test]
fn a_dns_server_that_does_not_answer_is_an_error_not_a_domain_full_of_faults() {
    let port = common::free_port();
    let started = std::time::Instant::now();
    let out = check(&["--dns", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not answer"));
    assert!(out.stdout.is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn names_are_checked_and_unicode_names_asked_in_their_xn_form() {
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("idn.zone");
    std::fs::write(
        &zone,
        std::fs::read_to_string(data().join("clean.zone"))
            .unwrap()
            .replace("shop.example", "xn--bcher-kva.example"),
    )
    .unwrap();
    let run = |domain: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mailsim"))
            .args(["auth", "check", domain, "--json", "--zone"])
            .arg(&zone)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run("bücher.example", DEFAULT_ARGS);
    assert_eq!(findings(&out), vec![]);
    assert_eq!(out.status.code(), Some(0));
    for (domain, extra) in [
        ("shop..example", &[][..]),
        ("192.0.2.10", &[]),
        ("shop.example/evil", &[]),
        ("xn--bcher-kva.example", &["--selector", ""][..]),
    ] {
        let out = run(domain, extra);
        assert_eq!(out.status.code(), Some(2), "{domain} {extra:?}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).is_empty(),
            "{domain}: no reason given"
        );
    }
}

#[test]
fn an_internal_sending_address_is_said_and_does_not_change_the_verdict_by_itself() {
    let zone = data().join("clean.zone");
    let out = check(&[
        "--zone",
        zone.to_str().unwrap(),
        "--json",
        "--selector",
        "sel2026",
        "--ip",
        "192.0.2.10",
        "--ip",
        "10.1.2.3",
    ]);
    let found = findings(&out);
    assert!(
        found.contains(&("info".to_string(), "ip.internal".to_string())),
        "{found:?}"
    );
    // 10.1.2.3 is not in the record and has no PTR: those are the failures, not the note.
    let fails: BTreeSet<&str> = found
        .iter()
        .filter(|(l, _)| l == "fail")
        .map(|(_, r)| r.as_str())
        .collect();
    assert_eq!(fails, BTreeSet::from(["spf.ip-not-authorised", "ptr.none"]));
}
