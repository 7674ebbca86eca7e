//! End to end over real loopback sockets: fake-dns, the fleet and the MTA run a campaign; the
//! assertions read the event log.

mod common;

use mailsim::scenario::Scenario;
use mailsim::world::World;
use mailsim_events::{Event, Record, read_log};
use mailsim_summary::Summary;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCENARIO: &str = r#"
name = "e2e"
seed = 7

[mta]
retry_interval_s_min = 1
retry_interval_s_max = 1
lifetime_s = 120
run_time_s_max = 120

[[sender]]
domain = "news.sender.test"
from = "news@news.sender.test"
dkim_selector = "sel1"

[[domain]]
name = "accept.test"
weight = 2

[[domain]]
name = "unknown.test"
unknown_users = { percent = 30 }

[[domain]]
name = "deadmx.test"
mx = [
  { host = "mx1.deadmx.test", preference = 10, down = true },
  { host = "mx2.deadmx.test", preference = 20 },
]

[[domain]]
name = "flaky.test"
tempfail = { percent = 40 }

[campaign]
messages = 400
size_bytes = 2000
"#;

fn run_scenario(text: &str, dir: &Path) -> (Scenario, Summary) {
    let scenario = Scenario::parse(text, Path::new("e2e.toml")).unwrap();
    let summary = common::run(&scenario, dir);
    (scenario, summary)
}

fn per_domain<'a>(records: &'a [Record], kind: &str) -> BTreeMap<String, Vec<&'a Event>> {
    let mut out: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.event.kind() == kind) {
        let domain = match &r.event {
            Event::Injected { domain, .. }
            | Event::Delivered { domain, .. }
            | Event::Bounced { domain, .. }
            | Event::Deferred { domain, .. }
            | Event::Expired { domain, .. }
            | Event::ConnFailed { domain, .. } => domain.clone(),
            _ => continue,
        };
        out.entry(domain).or_default().push(&r.event);
    }
    out
}

#[test]
fn campaign_outcomes_per_domain_from_the_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let (scenario, summary) = run_scenario(SCENARIO, dir.path());
    let (records, torn) = read_log(&dir.path().join("events.log")).unwrap();
    assert!(!torn);

    let injected = per_domain(&records, "injected");
    let delivered = per_domain(&records, "delivered");
    let bounced = per_domain(&records, "bounced");
    let count = |m: &BTreeMap<String, Vec<&Event>>, d: &str| m.get(d).map_or(0, |v| v.len());
    assert_eq!(injected.values().map(Vec::len).sum::<usize>(), 400);

    // Accepting domains got every message.
    assert!(count(&injected, "accept.test") > 100);
    assert_eq!(
        count(&delivered, "accept.test"),
        count(&injected, "accept.test")
    );
    assert_eq!(count(&bounced, "accept.test"), 0);

    // Unknown users bounced with 5.1.1; everyone else there was delivered.
    let unknown_bounces = bounced.get("unknown.test").cloned().unwrap_or_default();
    assert!(
        !unknown_bounces.is_empty(),
        "30% unknown users must produce bounces"
    );
    for b in &unknown_bounces {
        let Event::Bounced {
            reply: Some(reply),
            reason,
            ..
        } = b
        else {
            panic!("bounce without reply: {b:?}")
        };
        assert_eq!(
            (
                reply.reply.code,
                reply.reply.enhanced.as_deref(),
                reply.command.as_str()
            ),
            (550, Some("5.1.1"), "RCPT")
        );
        assert_eq!(reason, "userunknown");
    }
    assert_eq!(
        count(&delivered, "unknown.test") + unknown_bounces.len(),
        count(&injected, "unknown.test")
    );

    // The dead first MX was tried and refused; everything went through the second.
    assert!(count(&per_domain(&records, "conn_failed"), "deadmx.test") >= 1);
    for d in &delivered["deadmx.test"] {
        let Event::Delivered { mx, .. } = d else {
            unreachable!()
        };
        assert_eq!(mx, "mx2.deadmx.test");
    }
    assert_eq!(
        count(&delivered, "deadmx.test"),
        count(&injected, "deadmx.test")
    );

    // Temporary failures were retried until delivered.
    assert!(
        count(&per_domain(&records, "deferred"), "flaky.test") > 0,
        "40% tempfail must defer some"
    );
    assert_eq!(
        count(&delivered, "flaky.test"),
        count(&injected, "flaky.test")
    );

    // The receivers saw SPF, DKIM and DMARC pass for every delivered message of the aligned sender.
    // (The sender's own domain receives the MTA's DSNs; those are not campaign deliveries.)
    let delivered_total = delivered
        .iter()
        .filter(|(d, _)| injected.contains_key(*d))
        .map(|(_, v)| v.len())
        .sum::<usize>() as u64;
    // Every bounce was reported back by a DSN to its VERP return path, read by the bounce
    // processor and attributed to its message; the hard bounces were suppressed.
    assert_eq!(summary.dsns_queued, summary.bounced);
    assert_eq!(
        summary.reports_received.get("bounce").copied(),
        Some(summary.bounced)
    );
    assert_eq!(summary.suppression_added, summary.bounced);
    let bounced_ids: std::collections::BTreeSet<u64> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Bounced { msg, .. } => Some(*msg),
            _ => None,
        })
        .collect();
    let attributed: std::collections::BTreeSet<u64> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::ReportReceived { msg, .. } => *msg,
            _ => None,
        })
        .collect();
    assert_eq!(attributed, bounced_ids);
    assert_eq!(summary.delivered, delivered_total);
    assert_eq!(summary.auth.spf_pass, delivered_total);
    assert_eq!(summary.auth.dkim_pass, delivered_total);
    assert_eq!(summary.auth.dmarc_pass, delivered_total);
    assert_eq!(
        summary.auth.spf_fail + summary.auth.dkim_fail + summary.auth.dmarc_fail,
        0
    );
    assert_eq!(summary.deferred, 0);
    assert_eq!(summary.delivered + summary.bounced, 400);

    // summary.json is the fold of the log, and `mailsim events` prints that same log.
    let on_disk: Summary =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk, summary);
    let out = mailsim(&["events".as_ref(), dir.path().as_os_str()]);
    let printed: Vec<Record> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed, records);
    assert_eq!(Summary::fold(&printed), summary);
    for kind in ["injected", "delivered", "bounced", "deferred"] {
        assert!(
            printed.iter().any(|r| r.event.kind() == kind),
            "no {kind} event"
        );
    }

    // `mailsim replay` rebuilds the same summary.json from the log alone; nothing is left queued.
    let out = mailsim(&[
        "replay".as_ref(),
        "--queue".as_ref(),
        dir.path().as_os_str(),
    ]);
    assert_eq!(
        out.stdout,
        std::fs::read(dir.path().join("summary.json")).unwrap()
    );
    let out = mailsim(&[
        "diff".as_ref(),
        dir.path().as_os_str(),
        dir.path().as_os_str(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 of 4 domains differ"), "{text}");

    // Every stored message names its recipient (Delivered-To) and carries the receiver's
    // Authentication-Results header (the sender's own mailbox, news.sender.test/bounces, holds
    // the DSNs instead).
    let stored: Vec<PathBuf> = common::maildir_files(&dir.path().join("mailboxes"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("news.sender.test"))
        .collect();
    assert_eq!(stored.len() as u64, delivered_total);
    // What the receivers stored, domain by domain, against what the scenario implies: every
    // message injected for an accepting, a flaky or a dead-first-MX domain is in that domain's
    // mailboxes, and at unknown.test exactly those that did not bounce.
    let stored_at = |domain: &str| {
        stored
            .iter()
            .filter(|p| p.to_string_lossy().contains(&format!(".{domain}/")))
            .count()
    };
    for domain in ["accept.test", "deadmx.test", "flaky.test"] {
        assert_eq!(stored_at(domain), count(&injected, domain), "{domain}");
    }
    assert_eq!(
        stored_at("unknown.test"),
        count(&injected, "unknown.test") - unknown_bounces.len()
    );
    for path in &stored {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines = text.lines();
        let head = &text[..200.min(text.len())];
        assert!(
            lines
                .next()
                .is_some_and(|l| l.starts_with("Return-Path: <")),
            "{}: {head}",
            path.display()
        );
        assert!(
            lines
                .next()
                .is_some_and(|l| l.starts_with("Delivered-To: user")),
            "{}: {head}",
            path.display()
        );
        assert!(
            lines
                .next()
                .is_some_and(|l| l.starts_with("Authentication-Results: ")),
            "{}: {head}",
            path.display()
        );
        assert!(
            text.contains("dkim=pass") && text.contains("spf=pass") && text.contains("dmarc=pass"),
            "{}: {head}",
            path.display()
        );
    }

    // An independent implementation (dkimpy) verifies every signature the receivers stored.
    let world = World::build(&scenario).unwrap();
    dkimpy_verifies(&world.senders[0].key.dns_txt, &stored);
    // An independent RFC 8601 parser (authres) reads every Authentication-Results header: SPF,
    // DKIM and DMARC each pass, and smtp.mailfrom is the envelope sender, a VERP address with
    // its `=`, as the Return-Path the receiver wrote from the SMTP envelope says.
    for line in authres_read(&stored) {
        let fields: Vec<&str> = line.split('\t').collect();
        let return_path = fields
            .last()
            .and_then(|f| f.strip_prefix("return-path="))
            .unwrap();
        assert!(return_path.contains('='), "a VERP return path: {line}");
        assert_eq!(fields.len(), 5, "spf, dkim and dmarc: {line}");
        assert_eq!(
            fields[1],
            format!("spf=pass,smtp.mailfrom={return_path}"),
            "{line}"
        );
        assert!(fields[2].starts_with("dkim=pass,header.d="), "{line}");
        assert!(fields[3].starts_with("dmarc=pass,header.from="), "{line}");
        // The comment names the whole address too.
        let text = std::fs::read_to_string(fields[0]).unwrap();
        assert!(
            text.contains(&format!("domain of {return_path} designates")),
            "{line}"
        );
    }
}

/// authres (Debian's python3-authres) reads the Authentication-Results header of each file:
/// one line per file (tests/data/authres_check.py says what is on it).
fn authres_read(files: &[PathBuf]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/authres_check.py");
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .args(files)
        .output()
        .expect(
            "python3 with authres (Debian python3-authres); the README's test command installs it",
        );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "authres: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), files.len(), "{stdout}");
    stdout.lines().map(str::to_string).collect()
}

/// dkimpy (Debian's python3-dkim, with python3-nacl for Ed25519), an implementation nobody here
/// wrote, verifies every file with `record` standing in for the DKIM key's DNS record.
fn dkimpy_verifies(record: &str, files: &[PathBuf]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dkim_verify.py");
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(record)
        .args(files)
        .output()
        .expect("python3 with dkimpy (Debian python3-dkim); the README's test command installs it");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dkimpy: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("PASS ")).count(),
        files.len(),
        "{stdout}"
    );
}

#[test]
fn ed25519_signatures_verify_at_the_receivers() {
    let text = r#"
name = "ed25519"
seed = 3
[[sender]]
domain = "ed.sender.test"
dkim_algorithm = "ed25519"
[[domain]]
name = "accept.test"
[campaign]
messages = 40
size_bytes = 1000
"#;
    let dir = tempfile::tempdir().unwrap();
    let (scenario, summary) = run_scenario(text, dir.path());
    assert_eq!(summary.delivered, 40);
    assert_eq!(
        (
            summary.auth.dkim_pass,
            summary.auth.dmarc_pass,
            summary.auth.spf_pass
        ),
        (40, 40, 40)
    );
    let stored: Vec<PathBuf> = common::maildir_files(&dir.path().join("mailboxes"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("accept.test"))
        .collect();
    assert_eq!(stored.len(), 40);
    for path in &stored {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.contains("a=ed25519-sha256"),
            "{}",
            &text[..600.min(text.len())]
        );
    }
    // Not only the library that signs: dkimpy verifies the Ed25519 signatures (RFC 8463).
    let world = World::build(&scenario).unwrap();
    dkimpy_verifies(&world.senders[0].key.dns_txt, &stored);
}

/// A sender's own DKIM key (`dkim_private_key`, a PKCS#8 PEM made here by openssl): the MTA
/// signs with it, and dkimpy verifies every stored message against the public key openssl
/// derives from the same file (not the record mailsim publishes).
#[test]
fn a_senders_own_dkim_key_signs_and_verifies_independently() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dkim.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .expect("openssl (Debian openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let der = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(der.status.success());
    let b64 = Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&der.stdout)?;
            c.wait_with_output()
        })
        .unwrap();
    let record = format!(
        "v=DKIM1; k=rsa; p={}",
        String::from_utf8(b64.stdout).unwrap().trim()
    );
    let text = r#"
name = "own-key"
seed = 5
mode = "virtual"
[[sender]]
domain = "own.sender.test"
dkim_private_key = "dkim.pem"
[[domain]]
name = "accept.test"
[campaign]
messages = 12
size_bytes = 1000
"#;
    // The key's path is relative to the scenario file, wherever mailsim is run from.
    let scenario = dir.path().join("own.toml");
    std::fs::write(&scenario, text).unwrap();
    let out = dir.path().join("run");
    let json = mailsim(&[
        "run".as_ref(),
        scenario.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--quiet".as_ref(),
    ]);
    let summary: Summary = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!((summary.delivered, summary.auth.dkim_pass), (12, 12));
    let stored: Vec<PathBuf> = common::maildir_files(&out.join("mailboxes"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("accept.test"))
        .collect();
    assert_eq!(stored.len(), 12);
    dkimpy_verifies(&record, &stored);
}

/// Run the `mailsim` binary; it must succeed.
fn mailsim(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mailsim {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
