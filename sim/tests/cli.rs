//! The command line: `mailsim dns` answers `dig` (MX, TXT, PTR, SOA, NS), bad scenarios are refused
//! with the place, `run` refuses a directory that already holds a run, `replay --queue` lists
//! what a run left queued, and `report` hands its arguments to the report tool.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

fn scenario_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/quickstart.toml")
}

/// dig's whole output for a query to the server on `port` (2 s per try, 2 tries).
fn dig_full(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=2"])
        .args(args)
        .output()
        .expect("dig (Debian dnsutils); the README's test command installs it");
    assert!(
        out.status.success(),
        "dig {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `mailsim run SCENARIO --out RUN_DIR --quiet`, which must succeed.
fn run_quietly(scenario: &Path, run_dir: &Path) {
    let run = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("run")
        .arg(scenario)
        .arg("--out")
        .arg(run_dir)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// The answer's data only (`+short`).
fn dig(port: u16, args: &[&str]) -> String {
    dig_full(port, &[&["+short"], args].concat())
}

#[test]
fn dig_answers_mx_and_txt_from_mailsim_dns() {
    let (mut child, port) = common::serve_dns(&[scenario_path().to_str().unwrap()]);

    let mx = dig(port, &["MX", "deadmx.test"]);
    assert!(
        mx.contains("10 mx1.deadmx.test.") && mx.contains("20 mx2.deadmx.test."),
        "{mx}"
    );
    let spf = dig(port, &["TXT", "news.example.test"]);
    assert!(spf.contains("v=spf1 ip4:127.0.0.1 -all"), "{spf}");
    let dmarc = dig(port, &["TXT", "_dmarc.news.example.test"]);
    assert!(dmarc.contains("v=DMARC1; p=reject"), "{dmarc}");
    let dkim = dig(port, &["TXT", "s2026._domainkey.news.example.test"]);
    assert!(dkim.contains("v=DKIM1; k=rsa; p=MII"), "{dkim}");
    let tcp = dig(port, &["+tcp", "MX", "accept.test"]);
    assert!(tcp.contains("mx1.accept.test."), "{tcp}");
    let ptr = dig(port, &["-x", "127.0.0.1"]);
    assert!(ptr.contains("mta.mailsim.test."), "{ptr}");
    // Every zone is authoritative: its SOA (RFC 1035 3.3.13: MNAME, RNAME, serial, refresh,
    // retry, expire, minimum) and its NS.
    let soa = dig(port, &["SOA", "accept.test"]);
    assert_eq!(
        soa.trim(),
        "ns.accept.test. hostmaster.accept.test. 1 3600 600 86400 60",
        "{soa}"
    );
    let ns = dig(port, &["NS", "accept.test"]);
    assert_eq!(ns.trim(), "ns.accept.test.", "{ns}");
    // The NS name resolves, to the server itself.
    let ns_a = dig(port, &["A", "ns.accept.test"]);
    assert_eq!(ns_a.trim(), "127.0.0.1", "{ns_a}");
    // A negative answer's SOA has the TTL min(SOA TTL, MINIMUM) = 60 (RFC 2308 section 3).
    let authority = dig_full(port, &["+noall", "+authority", "A", "nobody.accept.test"]);
    let soa_ttl: Vec<&str> = authority
        .lines()
        .filter(|l| l.contains("SOA"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(soa_ttl, ["60"], "{authority}");
    // The DO bit of a query is copied into the answer (RFC 3225 section 3).
    let answer = dig_full(port, &["+dnssec", "MX", "accept.test"]);
    assert!(
        answer
            .lines()
            .any(|l| l.starts_with("; EDNS:") && l.contains("flags: do;")),
        "{answer}"
    );
    // An MX answer's additional section has the address of every exchange (RFC 1035 section
    // 3.3.9), not only the first's; the answer is authoritative and keeps EDNS.
    let mx = dig_full(
        port,
        &[
            "+dnssec",
            "+noall",
            "+comments",
            "+answer",
            "+additional",
            "MX",
            "deadmx.test",
        ],
    );
    let additional: Vec<String> = mx
        .split(";; ADDITIONAL SECTION:")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\tA\t"))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(additional, ["mx1.deadmx.test.", "mx2.deadmx.test."], "{mx}");
    assert!(
        mx.contains("flags: qr aa") && mx.contains("flags: do;"),
        "{mx}"
    );
    // ANY gets one RRset (RFC 8482 section 4.1: a minimal answer), the MX set here.
    let any = dig(port, &["ANY", "news.example.test"]);
    assert_eq!(any.trim(), "10 mx.news.example.test.", "{any}");
    // A name under no zone of the scenario is refused (the server is authoritative only).
    let text = dig_full(port, &["+tries=1", "A", "example.org"]);
    assert!(text.contains("status: REFUSED"), "{text}");

    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "mailsim dns did not shut down cleanly: {status}"
    );
}

#[test]
fn bad_scenario_is_refused_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(scenario_path())
        .unwrap()
        .replace("messages = 10000", "messages = -5");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("run")
        .arg(&path)
        .arg("--out")
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .position(|l| l.contains("messages = -5"))
        .unwrap()
        + 1;
    assert!(err.contains(&format!("bad.toml:{line}:")), "{err}");
    assert!(
        !dir.path().join("run").exists(),
        "nothing is run for a bad scenario"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("run")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn bounce_classify_prints_one_line_per_recipient() {
    let data =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bounce/tests/data/sisimai/eml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("bounce")
        .arg("classify")
        .arg(data.join("lhost-exim-02.eml"))
        .arg(data.join("arf-01.eml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(u64, &str, &str, bool)> = lines
        .iter()
        .map(|l| {
            (
                l["index"].as_u64().unwrap(),
                l["recipient"].as_str().unwrap(),
                l["reason"].as_str().unwrap(),
                l["hard"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(got[0], (1, "kijitora@example.jp", "userunknown", true));
    assert_eq!(got[1], (2, "sabatora@example.jp", "userunknown", true));
    assert_eq!(got[2].2, "feedback");
    assert!(
        lines[0]["file"]
            .as_str()
            .unwrap()
            .ends_with("lhost-exim-02.eml")
    );
    assert_eq!(lines[0]["status"], "5.1.1");
    // Exim wrote it (X-Failed-Recipients, its template); an ARF report names no writer.
    assert_eq!(lines[0]["writer"], "exim");
    assert!(lines[2].get("writer").is_none());

    // A missing file is named, the others are still classified, and the exit code says so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(["bounce", "classify", "/nonexistent/x.eml"])
        .arg(data.join("lhost-exim-02.eml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.eml"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
}

/// `run` into a directory that already holds a run is refused (exit 2, the path named), and
/// the earlier run is left as it was, byte for byte.
#[test]
fn run_refuses_a_directory_that_holds_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("tiny.toml");
    std::fs::write(
        &scenario,
        r#"
name = "tiny"
seed = 1
mode = "virtual"
[[sender]]
domain = "s.test"
[[domain]]
name = "r.test"
[campaign]
messages = 5
size_bytes = 800
"#,
    )
    .unwrap();
    let out_dir = dir.path().join("run");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_mailsim"))
            .arg("run")
            .arg(&scenario)
            .arg("--out")
            .arg(&out_dir)
            .arg("--quiet")
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let log = std::fs::read(out_dir.join("events.log")).unwrap();
    let second = run();
    assert_eq!(second.status.code(), Some(2));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&out_dir.display().to_string()) && err.contains("already holds a run"),
        "{err}"
    );
    assert_eq!(std::fs::read(out_dir.join("events.log")).unwrap(), log);
}

/// `replay --queue` on a run stopped by its time limit: after the summary, one line per message
/// still queued, and they are exactly what the scenario implies (every message to the domain
/// that always answers 451; none to the one that accepts, whose mailbox holds the rest).
#[test]
fn replay_queue_lists_what_the_time_limit_left_queued() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("queued.toml");
    std::fs::write(
        &scenario,
        r#"
name = "queued"
seed = 4
mode = "virtual"
[[sender]]
domain = "s.test"
[[domain]]
name = "r.test"
tempfail = { percent = 100, until_s = 100000 }
[[domain]]
name = "ok.test"
[mta]
run_time_s_max = 900
retry_interval_s_min = 60
retry_interval_s_max = 120
[campaign]
messages = 10
size_bytes = 800
"#,
    )
    .unwrap();
    let run_dir = dir.path().join("run");
    run_quietly(&scenario, &run_dir);
    let replay = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(["replay", "--queue"])
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(replay.status.success());
    let text = String::from_utf8(replay.stdout).unwrap();
    let queued: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with("{\"msg\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The receiving side: ok.test's mailbox holds the messages that were not queued.
    let stored = common::maildir_files(&run_dir.join("mailboxes")).len();
    assert_eq!(queued.len() + stored, 10, "{text}");
    assert!(!queued.is_empty() && stored > 0, "{text}");
    for q in &queued {
        assert!(q["rcpt"].as_str().unwrap().ends_with("@r.test"), "{q}");
        // Fifteen minutes of retries 60-120 s apart.
        let attempts = q["attempts"].as_u64().unwrap();
        assert!((7..=16).contains(&attempts), "{q}");
    }

    // A missing run directory is named once, with the system's reason once.
    let missing = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("replay")
        .arg(dir.path().join("nothing"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// `mailsim report` hands its arguments to the report tool (`$MAILSIM_REPORT` here, a script
/// that records what it was given) and its exit code is the command's; a tool that is not there
/// is named with the variable that named it.
#[test]
fn report_hands_its_arguments_to_the_report_tool() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("args");
    let tool = dir.path().join("tool.sh");
    std::fs::write(
        &tool,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > '{}'\necho from-the-tool\nexit 7\n",
            got.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .env("MAILSIM_REPORT", &tool)
        .args(["report", "--quiet", "--out", "o u t", "--", "--run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-the-tool\n");
    assert_eq!(
        std::fs::read_to_string(&got).unwrap(),
        "--out\no u t\n--quiet\n--\n--run\n"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .env("MAILSIM_REPORT", &tool)
        .args(["report", "--compare", "a", "b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(std::fs::read_to_string(&got).unwrap(), "--compare\na\nb\n");

    let missing = dir.path().join("no-such-tool");
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .env("MAILSIM_REPORT", &missing)
        .args(["report", "run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("MAILSIM_REPORT=") && err.contains(&missing.display().to_string()),
        "{err}"
    );
}

/// `mailsim events RUN | head`: a reader that has seen enough closes the pipe; mailsim stops
/// quietly with exit 0, no "Broken pipe" on stderr.
#[test]
fn events_into_a_closed_pipe_end_quietly() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("pipe.toml");
    std::fs::write(
        &scenario,
        "name = \"pipe\"\nseed = 3\nmode = \"virtual\"\n[[sender]]\ndomain = \"s.test\"\n\
         [[domain]]\nname = \"a.test\"\n[campaign]\nmessages = 2000\nsize_bytes = 800\n",
    )
    .unwrap();
    let run_dir = dir.path().join("run");
    run_quietly(&scenario, &run_dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("events")
        .arg(&run_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line's worth, then close the pipe with megabytes still to come.
    let mut first = [0u8; 256];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.is_empty(), "{err}");
    // Half a megabyte of binary log: over a megabyte of JSON lines, more than a pipe holds.
    assert!(std::fs::metadata(run_dir.join("events.log")).unwrap().len() > 1 << 19);
}
