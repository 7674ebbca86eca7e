//! `mailsim report` end to end: the CLI on a library scenario's run, the page loaded in
//! headless Chromium (no console errors, every chart drawn and visible), `--compare`, and the
//! tables (domains, reasons, replies, time-to-deliver percentiles, compare deltas) checked
//! against what the scenario implies and what the receivers stored. `.ci/run` installs
//! Chromium; a missing browser fails the test.

mod common;

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

/// `page` (a file) loaded in headless Chromium: its DOM on stdout, the browser's log on stderr.
fn chromium_dom(dir: &Path, page: &Path) -> std::process::Output {
    common::chromium_dom(dir, &format!("file://{}", page.display()))
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
    let o = chromium_dom(dir.path(), &report.join("report.html"));
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

/// Run a scenario given as text; returns the run directory.
fn run_text(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let scenario = dir.join(format!("{name}.toml"));
    std::fs::write(&scenario, text).unwrap();
    let out = dir.join(name);
    let o = mailsim()
        .args(["run", "--quiet", "--out"])
        .arg(&out)
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Files in the `new` folders of the MX host directories whose name ends with `domain`.
fn stored_at(run: &Path, domain: &str) -> u64 {
    let root = run.join("mailboxes");
    common::maildir_files(&root)
        .iter()
        .filter(|f| common::host_of(&root, f).ends_with(domain))
        .count() as u64
}

/// One CSV file as rows of named fields (the files hold no quoted commas in the columns read).
fn csv_rows(path: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_string))
                .collect()
        })
        .collect()
}

/// The report's tables against what the scenario implies and what the receivers stored: the
/// per-domain counts, the bounce reasons and replies, the time-to-deliver percentiles of a
/// server that delays every reply, and `--compare`'s deltas between two campaigns of known
/// sizes.
#[test]
fn report_tables_match_the_scenario_and_the_mailboxes() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = |messages: u32| {
        format!(
            r#"
name = "tables"
seed = 8
mode = "virtual"
[[sender]]
domain = "s.test"
[[domain]]
name = "accept.test"
[[domain]]
name = "unknown.test"
unknown_users = {{ percent = 30 }}
[[domain]]
name = "slow.test"
slow = {{ banner_s = 3.0, reply_s = 2.0 }}
[campaign]
messages = {messages}
size_bytes = 900
"#
        )
    };
    let a = run_text(dir.path(), "a", &scenario(90));
    let b = run_text(dir.path(), "b", &scenario(120));
    for run in [&a, &b] {
        let o = mailsim()
            .args(["report", "--quiet"])
            .arg(run)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let report = a.join("report");
    let domains = csv_rows(&report.join("domains.csv"));
    let row = |d: &str| domains.iter().find(|r| r["domain"] == d).unwrap().clone();
    let num = |r: &std::collections::BTreeMap<String, String>, k: &str| -> f64 {
        r[k].parse().unwrap_or_else(|_| panic!("{k} = {:?}", r[k]))
    };

    assert_eq!(num(&row("all domains"), "injected"), 90.0);
    let accept = row("accept.test");
    assert_eq!(num(&accept, "delivered"), num(&accept, "injected"));
    assert_eq!(
        num(&accept, "delivered"),
        stored_at(&a, "accept.test") as f64
    );
    assert!(num(&accept, "p99_s") < 1.0, "{accept:?}");

    let unknown = row("unknown.test");
    let refused = num(&unknown, "injected") - stored_at(&a, "unknown.test") as f64;
    assert!(refused > 0.0);
    assert_eq!(num(&unknown, "bounced_hard"), refused, "{unknown:?}");
    let reasons = csv_rows(&report.join("reasons.csv"));
    assert!(
        reasons.iter().any(|r| r["domain"] == "unknown.test"
            && r["reason"] == "userunknown"
            && r["messages"].parse::<f64>().ok() == Some(refused)),
        "{reasons:?}"
    );
    let replies = csv_rows(&report.join("replies.csv"));
    assert!(
        replies.iter().any(|r| r["domain"] == "unknown.test"
            && r["code"] == "550"
            && r["enhanced"] == "5.1.1"
            && r["count"].parse::<f64>().ok() == Some(refused)),
        "{replies:?}"
    );

    // Banner 3 s, then 2 s before each of four batches of replies: no delivery sooner than 11 s.
    let slow = row("slow.test");
    let (p50, p90, p99) = (
        num(&slow, "p50_s"),
        num(&slow, "p90_s"),
        num(&slow, "p99_s"),
    );
    assert!(p50 >= 11.0 && p50 <= p90 && p90 <= p99, "{slow:?}");

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
    let compare = csv_rows(&cmp.join("compare.csv"));
    let injected = compare
        .iter()
        .find(|r| r["domain"] == "all domains" && r["measure"] == "injected")
        .unwrap();
    assert_eq!(
        (
            num(injected, "a"),
            num(injected, "b"),
            num(injected, "delta")
        ),
        (90.0, 120.0, 30.0),
        "{injected:?}"
    );
}

/// Inbox and Junk copies per provider, counted in the receivers' Maildirs.
fn placement_in_mailboxes(run: &Path) -> std::collections::BTreeMap<String, (u64, u64)> {
    let root = run.join("mailboxes");
    let mut out = std::collections::BTreeMap::new();
    for f in common::maildir_files(&root) {
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().to_string();
        if !rel.contains("/inbox/") {
            continue;
        }
        let host = common::host_of(&root, &f);
        let provider = host.trim_start_matches("mx1.").to_string();
        let e = out.entry(provider).or_insert((0, 0));
        if rel.contains("/Junk/") {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
    }
    out
}

#[test]
fn the_report_shows_placement_reputation_and_engagement() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run_scenario("sunset-unengaged", &a);
    // The same list without the sunset.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/sunset-unengaged.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("sunset_after_sends = 5\n", "");
    let b_scenario = dir.path().join("no-sunset.toml");
    std::fs::write(&b_scenario, text).unwrap();
    let o = mailsim()
        .args(["run", "--quiet", "--out"])
        .arg(&b)
        .arg(&b_scenario)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = mailsim()
        .args(["report", "--quiet"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report = a.join("report");
    for f in ["inbox_placement.svg", "reputation.svg"] {
        assert!(report.join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    // The placement table against the receivers' own folders.
    let stored = placement_in_mailboxes(&a);
    assert_eq!(stored.len(), 3, "{stored:?}");
    for (provider, (inbox, spam)) in &stored {
        let row = format!(
            "<tr><td>{provider}</td><td>{inbox}</td><td>{spam}</td><td>{:.1}%</td></tr>",
            100.0 * *inbox as f64 / (inbox + spam) as f64
        );
        assert!(html.contains(&row), "{row} not in the placement table");
    }
    let inbox: u64 = stored.values().map(|v| v.0).sum();
    assert!(
        html.contains(&format!("<tr><td>inbox</td><td>{inbox}</td>")),
        "funnel inbox {inbox}"
    );
    assert!(
        html.contains("Remove the unengaged"),
        "advice for the dormant"
    );
    assert!(html.contains(
        "<table id=\"spam-causes\"><tr><th>cause</th><th>messages</th></tr><tr><td>reputation</td>"
    ));

    let o = chromium_dom(dir.path(), &report.join("report.html"));
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        dom.contains("data-charts-visible=\"8\""),
        "eight charts drawn and visible (placement and reputation too)"
    );
    assert!(dom.contains("id=\"funnel\""));

    // --compare: the run without the sunset places less in the inbox.
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
    let page = std::fs::read_to_string(cmp.join("compare.html")).unwrap();
    let table = page
        .split("id=\"placement-compare\"")
        .nth(1)
        .expect("placement table");
    let all = table.split("all providers").nth(1).unwrap();
    assert!(all.contains("class=\"worse\""), "{all}");
    let share = |run: &Path| {
        let s = placement_in_mailboxes(run);
        let (i, n) = s
            .values()
            .fold((0, 0), |acc, v| (acc.0 + v.0, acc.1 + v.0 + v.1));
        100.0 * i as f64 / n as f64
    };
    let (sa, sb) = (share(&a), share(&b));
    assert!(sb < sa, "{sb} >= {sa}");
    assert!(
        all.contains(&format!("{:.1}%", sa)) && all.contains(&format!("{:.1}%", sb)),
        "{all}"
    );
}

/// The report's TLS table against the receivers' mailboxes: the domain whose MTA-STS policy
/// kept every session from its MX has nothing stored and only held sessions; the others'
/// encrypted sessions delivered what their mailboxes hold.
#[test]
fn the_report_shows_tls_per_destination() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    run_scenario("mta-sts-enforce", &a);
    let o = mailsim()
        .args(["report", "--quiet"])
        .arg(&a)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(a.join("report/report.html")).unwrap();
    let table = html
        .split("<table id=\"tls-table\">")
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .expect("a TLS table");
    let row = |domain: &str| -> Vec<String> {
        let start = table
            .find(&format!("<tr><td>{domain}</td>"))
            .unwrap_or_else(|| panic!("{domain}: {table}"));
        table[start..]
            .split("</tr>")
            .next()
            .unwrap()
            .split("<td")
            .skip(1)
            .map(|c| {
                let c = c.split_once('>').unwrap().1;
                c.trim_end_matches("</td>").to_string()
            })
            .collect()
    };
    let stored = |host: &str| {
        std::fs::read_dir(a.join(format!("mailboxes/{host}/inbox/new")))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(stored("mx1.strict.test"), 0);
    let strict = row("strict.test");
    assert_eq!(strict[1], "sts-enforce");
    assert_eq!((strict[2].as_str(), strict[3].as_str()), ("0", "0"));
    assert!(strict[4].parse::<u64>().unwrap() > 0);
    assert!(
        strict[5].starts_with("certificate-host-mismatch ("),
        "{strict:?}"
    );
    let plain = row("plain.test");
    assert_eq!(plain[1], "opportunistic");
    assert!(plain[5].starts_with("starttls-not-supported"), "{plain:?}");
    assert!(stored("mx1.plain.test") > 0 && stored("mx1.good.test") > 0);
    assert_eq!(row("good.test")[5], "");
}
