//! Lanes (`mailsim mta --lanes`): transactional mail does not wait behind a bulk campaign.
//! A slow destination (each SMTP reply 10 ms late) and one connection for bulk mail; 120 bulk
//! messages go in through the HTTP API, then three transactional ones, each chosen its own way
//! (the API's `lane` field, the transactional submission port, the `X-Mailsim-Lane` header on
//! the ordinary port). Judged at the receiving side, from the fleet's own log: with lanes,
//! each transactional message is stored while most of the bulk mail is still queued; without,
//! behind all of it.

mod common;

use common::{Reaper, field};
use mailsim_events::{Event, read_log};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "lanes-token-0123456789abcdef";
const BULK: usize = 120;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailsim"))
}

fn post(api: &str, body: &serde_json::Value) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sS", "-X", "POST", "-H", "Content-Type: application/json"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--data-binary", &body.to_string()])
        .arg(format!("http://{api}/api/inject/v1"))
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Submit one message by SMTP (Python's smtplib: another client than mailsim's).
fn smtp(addr: &str, message_id: &str, lane_header: bool) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let header = if lane_header {
        "X-Mailsim-Lane: transactional\\r\\n"
    } else {
        ""
    };
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('{host}', {port})\n\
         s.sendmail('bounces@news.example.test', ['reset@slow.test'], \
         'From: app@news.example.test\\r\\nTo: reset@slow.test\\r\\nSubject: reset\\r\\n\
         Message-ID: {message_id}\\r\\n{header}\\r\\nYour code: 1234\\r\\n')\n\
         s.quit()\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// For each transactional Message-ID: how many bulk messages the fleet had stored before it.
fn run(dir: &Path, lanes: bool) -> Vec<usize> {
    let scenario = dir.join("lanes.toml");
    std::fs::write(
        &scenario,
        "name = \"lanes\"\nseed = 3\n[[sender]]\ndomain = \"news.example.test\"\n\
         [[domain]]\nname = \"slow.test\"\nslow = { reply_s = 0.01 }\n\
         [campaign]\nmessages = 1\n",
    )
    .unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let fleet_dir = dir.join("fleet");
    let (fleet, ready) = common::start_daemon(bin().args([
        "fleet",
        scenario.to_str().unwrap(),
        "--out",
        fleet_dir.to_str().unwrap(),
    ]));
    let mut fleet = Reaper(fleet);
    let mut mta = bin();
    mta.args(["mta", "--spool"])
        .arg(dir.join("spool"))
        .args(["--dns", field(&ready, "dns")])
        .args(["--remote-port", field(&ready, "smtp_port")])
        .args(["--tls", "off", "--conns-per-domain-max", "1"])
        .args(["--submission", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--http-tokens")
        .arg(&tokens);
    if lanes {
        mta.args(["--lanes", "--transactional-conns", "1"])
            .args(["--submission-transactional", "127.0.0.1:0"]);
    }
    let (mta, mta_ready) = common::start_daemon(&mut mta);
    let _mta = Reaper(mta);
    let api = field(&mta_ready, "http").to_string();
    let recipients: Vec<serde_json::Value> = (0..BULK)
        .map(|i| serde_json::json!({"email": format!("user{i}@slow.test")}))
        .collect();
    let answer = post(
        &api,
        &serde_json::json!({
            "envelope_sender": "bounces@news.example.test",
            "content": {"from": {"email": "news@news.example.test"}, "subject": "News",
                        "headers": {"Message-ID": "<bulk.{{ email }}>"},
                        "text_body": "The news, {{ email }}."},
            "recipients": recipients
        }),
    );
    assert_eq!(answer["success_count"], BULK, "{answer}");
    let answer = post(
        &api,
        &serde_json::json!({
            "envelope_sender": "bounces@news.example.test",
            "lane": "transactional",
            "content": "From: app@news.example.test\nMessage-ID: <t1@news.example.test>\nSubject: reset\n\nYour code: 1234",
            "recipients": [{"email": "reset@slow.test"}]
        }),
    );
    assert_eq!(answer["success_count"], 1, "{answer}");
    if lanes {
        smtp(
            field(&mta_ready, "submission_transactional"),
            "<t2@news.example.test>",
            false,
        );
    }
    smtp(
        field(&mta_ready, "submission"),
        "<t3@news.example.test>",
        true,
    );
    // Wait for everything to be stored, then stop the fleet so that its log is complete.
    let started = Instant::now();
    let expected = BULK + if lanes { 3 } else { 2 };
    while common::maildir_files(&fleet_dir.join("mailboxes")).len() < expected {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not all stored after 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-INT", &fleet.0.id().to_string()])
        .status();
    fleet.0.wait().unwrap();
    let (records, _) = read_log(&fleet_dir.join("events.log")).unwrap();
    let mut bulk_before = 0;
    let mut positions = Vec::new();
    for r in &records {
        if let Event::Stored { message_id, .. } = &r.event {
            if message_id.starts_with("<bulk.") {
                bulk_before += 1;
            } else {
                positions.push(bulk_before);
            }
        }
    }
    assert_eq!(bulk_before, BULK, "every bulk message stored once");
    positions
}

#[test]
fn transactional_mail_overtakes_a_bulk_campaign_with_lanes_only() {
    let with = tempfile::tempdir().unwrap();
    let positions = run(with.path(), true);
    eprintln!("with lanes: bulk messages stored before each transactional one: {positions:?}");
    assert_eq!(positions.len(), 3);
    for p in &positions {
        assert!(*p < BULK / 2, "with lanes, stored after {p} of {BULK} bulk");
    }
    let without = tempfile::tempdir().unwrap();
    let positions = run(without.path(), false);
    eprintln!("without lanes: {positions:?}");
    assert_eq!(positions.len(), 2);
    for p in &positions {
        assert!(
            *p >= BULK * 9 / 10,
            "without lanes, stored after only {p} of {BULK}"
        );
    }
}

/// Seconds from each stored transactional message's Date (its injection, the MTA's clock) to
/// the receiving server's Received stamp (the fleet's clock), read from the stored files.
fn transactional_delays(run: &Path) -> Vec<i64> {
    common::maildir_files(&run.join("mailboxes"))
        .iter()
        .filter_map(|p| {
            let bytes = std::fs::read(p).unwrap();
            let m = mail_parser::MessageParser::default().parse(&bytes)?;
            let to = m.to()?.first()?.address()?.to_string();
            if !to.starts_with("member") {
                return None;
            }
            let received = m.header_raw("Received")?;
            let stamp = received.rsplit_once(';')?.1.trim();
            let at = mail_parser::DateTime::parse_rfc822(stamp)?.to_timestamp();
            Some(at - m.date()?.to_timestamp())
        })
        .collect()
}

/// scenarios/lanes-under-bulk.toml scaled down (4,000 bulk, 100 transactional), with or
/// without lanes, in virtual time.
fn virtual_run(dir: &Path, lanes: bool) -> (mailsim_summary::Summary, Vec<i64>) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/lanes-under-bulk.toml"),
    )
    .unwrap()
    .replace("messages = 200000", "messages = 4000")
    .replace("messages = 1500", "messages = 100")
    .replace("lanes = true", &format!("lanes = {lanes}"));
    let path = dir.join("lanes.toml");
    std::fs::write(&path, text).unwrap();
    let scenario = mailsim::scenario::Scenario::load(&path).unwrap();
    let run = dir.join("run");
    let summary = common::run(&scenario, &run);
    (summary, transactional_delays(&run))
}

#[test]
fn the_lanes_scenario_delivers_sign_in_codes_in_a_second_while_the_campaign_drains() {
    let on = tempfile::tempdir().unwrap();
    let (with, delays_with) = virtual_run(on.path(), true);
    let off = tempfile::tempdir().unwrap();
    let (without, delays_without) = virtual_run(off.path(), false);
    for s in [&with, &without] {
        assert_eq!(s.delivered, 4100, "everything delivered");
    }
    // From the stored files: with lanes every code arrived within a second (whole seconds:
    // Date and Received have no fractions); without, codes waited behind the campaign.
    assert_eq!(delays_with.len(), 100);
    assert_eq!(delays_without.len(), 100);
    let worst_with = delays_with.iter().max().copied().unwrap();
    let worst_without = delays_without.iter().max().copied().unwrap();
    eprintln!("worst delay: {worst_with} s with lanes, {worst_without} s without");
    assert!(worst_with <= 1, "with lanes a code took {worst_with} s");
    assert!(
        worst_without >= 10,
        "without lanes the worst was {worst_without} s"
    );
    // The MTA's own figures agree, and the campaign drained as fast with the stream beside it.
    assert!(
        with.lanes["transactional"].p99_ms < 1000,
        "{:?}",
        with.lanes
    );
    assert!(
        without.lanes["transactional"].p99_ms > 10_000,
        "{:?}",
        without.lanes
    );
    assert!(
        with.elapsed_s <= without.elapsed_s * 1.05,
        "{} s with lanes, {} s without",
        with.elapsed_s,
        without.elapsed_s
    );
    // The report's lanes table (a polars join of the log, checked against summary.json's
    // fold by the report itself) counts the codes the mailboxes hold, as fast as they came.
    for (dir, worst) in [(on.path(), worst_with), (off.path(), worst_without)] {
        let o = bin()
            .args(["report", "--quiet"])
            .arg(dir.join("run"))
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && said.contains("totals equal summary.json"),
            "{said}"
        );
        let html = std::fs::read_to_string(dir.join("run/report/report.html")).unwrap();
        let cells: Vec<u64> = html
            .split("<tr><td>transactional</td>")
            .nth(1)
            .unwrap()
            .split("</tr>")
            .next()
            .unwrap()
            .split("<td>")
            .filter_map(|c| c.split('<').next()?.parse().ok())
            .collect();
        let [delivered, _p50, _p99, max_ms] = cells[..] else {
            panic!("{cells:?}")
        };
        assert_eq!(delivered, 100);
        // Whole seconds in the files: the longest wait is within a second of theirs.
        assert!(
            (max_ms as i64 / 1000 - worst).abs() <= 1,
            "max {max_ms} ms, the files' worst {worst} s"
        );
    }
}
