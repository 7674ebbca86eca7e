//! `mailsim report` end to end: the CLI on a library scenario's run, the page loaded in
//! headless Chromium (no console errors, every chart drawn and visible), and `--compare`.
//! `.ci/run` installs Chromium; a missing browser fails the test.

use std::path::Path;
use std::process::Command;

fn mailsim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailsim"))
}

fn run_scenario(name: &str, out: &Path) {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../scenarios/{name}.toml"));
    let o = mailsim()
        .args(["run", "--quiet", "--out"])
        .arg(out)
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn report_page_renders_in_chromium_and_compare_shows_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_scenario("dmarc-misconfig", &a);
    run_scenario("greylist-storm", &b);
    let o = mailsim()
        .args(["report", "--quiet"])
        .arg(&a)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("totals equal summary.json"), "{text}");
    let report = a.join("report");
    for f in [
        "report.html",
        "domains.csv",
        "reasons.csv",
        "replies.csv",
        "events.parquet",
        "throughput.svg",
        "queue_depth.svg",
        "outcomes_by_domain.svg",
        "bounce_reasons.svg",
        "time_to_deliver.svg",
        "auth_by_domain.svg",
    ] {
        assert!(report.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    // Self-contained: nothing fetched (SVG namespace names are not fetches).
    for fetch in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(
            !html.contains(fetch),
            "the page must not load anything: {fetch}"
        );
    }
    assert!(
        html.contains("What to fix") && html.contains("DMARC failed"),
        "advice for the DMARC failures"
    );
    let profile = dir.path().join("chromium-profile");
    let url = format!("file://{}", report.join("report.html").display());
    let o = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&url)
        .output()
        .expect("chromium (installed by .ci/run)");
    let dom = String::from_utf8_lossy(&o.stdout);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        dom.contains("data-charts-visible=\"6\""),
        "six charts drawn and visible; got {}",
        dom.split("data-charts-visible")
            .nth(1)
            .map_or("no marker", |s| &s[..s.len().min(8)])
    );
    let console_errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(console_errors.is_empty(), "console: {console_errors:?}");

    let cmp = dir.path().join("cmp");
    let o = mailsim()
        .args(["report", "--quiet", "--compare"])
        .arg(&a)
        .arg(&b)
        .arg("--out")
        .arg(&cmp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(cmp.join("compare.csv")).unwrap();
    assert!(csv.starts_with("domain,measure,a,b,delta"), "{csv}");
    assert!(
        csv.lines().any(|l| l.starts_with("all domains,injected,")),
        "{csv}"
    );
    assert!(cmp.join("compare.html").is_file());
}
