//! Issue 13, items 6 to 9, through the `mailsim` binary: a log damaged in the middle is refused
//! with the place (events, replay, report alike) and `repair` keeps every valid record; exit
//! codes that tell the truth; errors that name the place and leave no empty directory; the
//! closing line's bulk and tail; replies grouped by kind; compare.html's numbers and colours.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mailsim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A small virtual run with unknown users (bounces) and greylisting (a tail of retries).
const SCENARIO: &str = r#"
name = "hardening"
seed = 13
mode = "virtual"

[[sender]]
domain = "news.example.test"
dkim_algorithm = "ed25519"

[[domain]]
name = "plain.test"
weight = 39
unknown_users = { percent = 10 }

[[domain]]
name = "grey.test"
weight = 1
greylist = { window_s = 300 }

[campaign]
messages = 400
size_bytes = 1000
"#;

fn run(dir: &Path, name: &str, scenario: &str) -> (PathBuf, Output) {
    let sc = dir.join(format!("{name}.toml"));
    std::fs::write(&sc, scenario).unwrap();
    let out_dir = dir.join(name);
    let out = mailsim(&[
        "run",
        sc.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--quiet",
    ]);
    (out_dir, out)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The commands that read a run's whole log: `events`, `replay`, and `report` when built.
fn log_readers(run_dir: &Path) -> Vec<Vec<&str>> {
    let mut cmds = vec![vec!["events", s(run_dir)], vec!["replay", s(run_dir)]];
    if cfg!(feature = "report") {
        cmds.push(vec!["report", s(run_dir), "--quiet"]);
    }
    cmds
}

/// Item 6: 64 bytes overwritten in the middle of events.log.
#[test]
fn damage_in_the_middle_is_refused_with_the_place_and_repair_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, out) = run(dir.path(), "a", SCENARIO);
    assert!(out.status.success(), "{:?}", text(&out));
    let log = run_dir.join("events.log");
    let good = text(&mailsim(&["events", s(&run_dir)])).0;
    let total = good.lines().count();
    let mut bytes = std::fs::read(&log).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b = b'#';
    }
    std::fs::write(&log, &bytes).unwrap();

    for cmd in log_readers(&run_dir) {
        let o = mailsim(&cmd);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(
            err.contains("damaged at byte") && err.contains("mailsim repair"),
            "{cmd:?}: {err}"
        );
        assert!(
            !err.contains("torn"),
            "{cmd:?}: damage is not a torn tail: {err}"
        );
    }
    assert!(
        !run_dir.join("report").exists(),
        "a report refused leaves no directory"
    );

    let o = mailsim(&["events", s(&run_dir), "--salvage"]);
    let (salvaged, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("skipped") && err.contains("damaged bytes"),
        "{err}"
    );
    let kept = salvaged.lines().count();
    assert!(kept < total && kept >= total - 3, "{kept} of {total}");
    // Every salvaged record is one of the original records, in order.
    let originals: Vec<&str> = good.lines().collect();
    let mut at = 0;
    for line in salvaged.lines() {
        at += originals[at..].iter().position(|l| *l == line).unwrap() + 1;
    }

    let o = mailsim(&["repair", s(&run_dir)]);
    let (said, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        said.contains(&format!("kept {kept} valid records")),
        "{said}"
    );
    assert!(run_dir.join("events.log.damaged").exists());
    let o = mailsim(&["events", s(&run_dir)]);
    assert!(o.status.success());
    assert_eq!(text(&o).0, salvaged);
}

/// A frame copied twice (its checksum right, its record met again) is damage, not a second
/// event: `replay` counted a bounce twice in its reasons (an independent review). `events`,
/// `replay` and `report` refuse it with the record's place.
#[test]
fn a_record_met_twice_is_refused_with_its_place_not_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, out) = run(dir.path(), "a", SCENARIO);
    assert!(out.status.success(), "{:?}", text(&out));
    let log = run_dir.join("events.log");
    let bytes = std::fs::read(&log).unwrap();
    // The frames (12-byte header; each frame a 4-byte length, a 4-byte CRC, the payload).
    let mut frames = Vec::new();
    let mut at = 12;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        frames.push(at..at + 8 + len);
        at += 8 + len;
    }
    // The middle frame written again right after itself, and (a second log) at the end.
    let middle = frames[frames.len() / 2].clone();
    let mut twice = bytes[..middle.end].to_vec();
    twice.extend_from_slice(&bytes[middle.clone()]);
    twice.extend_from_slice(&bytes[middle.end..]);
    let record = frames.len() / 2 + 2;
    for (name, damaged, record) in [
        ("middle", twice, record),
        (
            "end",
            [&bytes[..], &bytes[middle]].concat(),
            frames.len() + 1,
        ),
    ] {
        std::fs::write(&log, &damaged).unwrap();
        for cmd in log_readers(&run_dir) {
            let o = mailsim(&cmd);
            let (_, err) = text(&o);
            assert!(!o.status.success(), "{name} {cmd:?}: accepted");
            assert!(
                err.contains(&format!("record {record} "))
                    && err.contains("repeated or out of order"),
                "{name} {cmd:?}: {err}"
            );
        }
    }
    std::fs::write(&log, &bytes).unwrap();
    assert!(mailsim(&["replay", s(&run_dir)]).status.success());
}

/// Item 6: a frame whose checksum is right but whose event type this build does not know is
/// refused by `report` as by `events`.
#[test]
#[cfg_attr(
    not(feature = "report"),
    ignore = "needs the report tool: --features report"
)]
fn report_refuses_an_unknown_event_type_as_events_does() {
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, out) = run(dir.path(), "a", SCENARIO);
    assert!(out.status.success());
    let log = run_dir.join("events.log");
    let mut bytes = std::fs::read(&log).unwrap();
    let payload = br#"{"seq":999999,"ts":1,"type":"made_up"}"#;
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    std::fs::write(&log, &bytes).unwrap();
    for cmd in [
        vec!["events", s(&run_dir)],
        vec!["report", s(&run_dir), "--quiet"],
    ] {
        let o = mailsim(&cmd);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(err.contains("made_up"), "{cmd:?}: {err}");
    }
}

/// Items 7 and 9: exit codes; the closing line; replies grouped by kind; compare.html.
#[test]
fn exit_codes_closing_line_reply_groups_and_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let (a, out) = run(dir.path(), "a", SCENARIO);
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    // The scenario implies the tail: grey.test's 2.5% of the mail waits out a 300 s greylist,
    // so the last deliveries come at least 300 virtual seconds after the bulk.
    let tail = err
        .split("tail: the rest ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(err.contains("bulk: 95% of deliveries by "), "{err}");
    assert!(err.contains("virtual s later"), "{err}");
    assert!(tail >= 300.0, "{err}");
    // Virtual time has no latency: no rate is made up for it.
    assert!(!err.contains("delivered/s"), "{err}");

    let (b, out) = run(
        dir.path(),
        "b",
        &SCENARIO.replace("percent = 10", "percent = 30"),
    );
    assert!(out.status.success());
    let same = mailsim(&["diff", s(&a), s(&a)]);
    assert_eq!(same.status.code(), Some(0));
    let differ = mailsim(&["diff", s(&a), s(&b)]);
    assert_eq!(differ.status.code(), Some(1), "{:?}", text(&differ));

    if cfg!(feature = "report") {
        report_checks(dir.path(), &a, &b);
    }

    // Nothing found: said, and exit 1.
    let o = mailsim(&["bounce", "classify", "/dev/null"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(out.is_empty() && err.contains("no bounce, complaint or auto-reply found"));
}

/// The report part of [`exit_codes_closing_line_reply_groups_and_comparison`]: the report agrees
/// with summary.json (0), and says so when it does not (1); replies grouped by kind;
/// compare.html.
fn report_checks(dir: &Path, a: &Path, b: &Path) {
    let o = mailsim(&["report", s(a), "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let replies = std::fs::read_to_string(a.join("report/replies.csv")).unwrap();
    // One row per kind of reply: no queue id, address or count splits them.
    let rows: Vec<&str> = replies.lines().skip(1).collect();
    let unknown: Vec<&&str> = rows.iter().filter(|r| r.contains("5.1.1")).collect();
    assert_eq!(unknown.len(), 1, "{replies}");
    assert!(rows.len() < 20, "{replies}");
    let summary_path = a.join("summary.json");
    let summary = std::fs::read_to_string(&summary_path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let delivered = v["delivered"].as_u64().unwrap();
    std::fs::write(
        &summary_path,
        summary.replace(
            &format!("\"delivered\": {delivered}"),
            &format!("\"delivered\": {}", delivered + 1),
        ),
    )
    .unwrap();
    let o = mailsim(&["report", s(a), "--quiet"]);
    let (said, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{said} {err}");
    assert!(
        said.contains("DIFFERENT from summary.json: delivered"),
        "{said}"
    );

    let cmp = dir.join("cmp");
    let o = mailsim(&[
        "report",
        "--compare",
        s(a),
        s(b),
        "--out",
        s(&cmp),
        "--quiet",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    let mut left: Vec<String> = std::fs::read_dir(&cmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["compare.csv", "compare.html"],
        "the runs' tables are not left"
    );
    let html = std::fs::read_to_string(cmp.join("compare.html")).unwrap();
    assert!(!html.contains(".000<"), "counts are integers");
    let bounced_all = html
        .split("<tr>")
        .find(|r| r.contains("<td>all domains</td><td>bounced</td>"))
        .unwrap();
    assert!(
        bounced_all.contains("class=\"worse\""),
        "more bounces is worse: {bounced_all}"
    );
}

/// Item 8: errors that name the place.
#[test]
fn scenario_and_key_errors_name_the_file_and_field_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, String, &str); 5] = [
        (
            "nosender",
            SCENARIO.replace(
                "[[sender]]\ndomain = \"news.example.test\"\ndkim_algorithm = \"ed25519\"\n",
                "",
            ),
            "nosender.toml:1: sender: at least one [[sender]]",
        ),
        (
            "zero",
            format!("{SCENARIO}\n[mta]\nconns_per_domain_max = 0\n"),
            "mta.conns_per_domain_max: must be positive",
        ),
        (
            "retry",
            format!("{SCENARIO}\n[mta]\nretry_interval_s_min = 900\nretry_interval_s_max = 60\n"),
            "mta.retry_interval_s_min: 900 is above retry_interval_s_max (60)",
        ),
        (
            "textkey",
            SCENARIO.replace(
                "dkim_algorithm = \"ed25519\"",
                &format!(
                    "dkim_private_key = \"{}\"",
                    dir.path().join("notes.txt").display()
                ),
            ),
            "textkey.toml: sender[0].dkim_private_key = ",
        ),
        (
            "eckey",
            SCENARIO.replace(
                "dkim_algorithm = \"ed25519\"",
                &format!(
                    "dkim_private_key = \"{}\"",
                    dir.path().join("ec.pem").display()
                ),
            ),
            "elliptic-curve",
        ),
    ];
    std::fs::write(dir.path().join("notes.txt"), "my notes\nabout keys\n").unwrap();
    let rng = ring::rand::SystemRandom::new();
    let ec = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ec.pem"),
        mailsim::keys::pkcs8_pem(ec.as_ref()),
    )
    .unwrap();
    for (name, scenario, expected) in &cases {
        let (out_dir, o) = run(dir.path(), name, scenario);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
        assert!(!err.contains("NUL byte"), "{name}: {err}");
        assert!(
            !out_dir.exists(),
            "{name}: a failed run leaves no directory"
        );
    }
    // --out that is a file: the path is named.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let sc = dir.path().join("ok.toml");
    std::fs::write(&sc, SCENARIO).unwrap();
    let o = mailsim(&["run", s(&sc), "--out", s(&file.join("run")), "--quiet"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(s(&file)), "{err}");
}

/// Issue 12, item 5: the log alone is enough to report a run, DMARC aggregate reports included
/// (the DMARC records are in `run_started`; the report no longer reads scenario.toml).
#[test]
#[cfg_attr(
    not(feature = "report"),
    ignore = "needs the report tool: --features report"
)]
fn the_report_needs_only_the_event_log() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/dmarc-misconfig.toml");
    let out_dir = dir.path().join("run");
    let o = mailsim(&["run", s(&scenario), "--out", s(&out_dir), "--quiet"]);
    assert!(o.status.success(), "{:?}", text(&o));
    std::fs::remove_file(out_dir.join("scenario.toml")).unwrap();
    let first = text(&mailsim(&["events", s(&out_dir)])).0;
    let started: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(started["type"], "run_started");
    let record = started["dmarc_records"]["news.example.test"]
        .as_str()
        .unwrap();
    // The scenario file says what the sender published.
    let toml = std::fs::read_to_string(&scenario).unwrap();
    assert!(
        record.contains("p=reject") && toml.contains("p=reject"),
        "{record}"
    );
    assert!(record.contains("rua=mailto:"), "{record}");
    let o = mailsim(&["report", s(&out_dir), "--quiet"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let xml: Vec<_> = std::fs::read_dir(out_dir.join("report/dmarc"))
        .unwrap()
        .collect();
    assert!(
        !xml.is_empty(),
        "DMARC aggregate reports from the log alone"
    );
    // Every receiving domain is named, including those that refused everything
    // (gmail.test and outlook.test enforce the sender's p=reject).
    let names: Vec<String> = xml
        .iter()
        .map(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(!names.iter().any(|n| n.contains("(unknown)")), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("gmail.test!")),
        "{names:?}"
    );
}
