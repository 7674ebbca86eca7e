//! The HTTP injection API (`mailsim mta --http`), driven with curl as a user's system would:
//! one message, 1,000 recipients with their own substitutions in one request, bad JSON, a bad
//! address, no or a wrong token, a body over the limit, the wrong media type. What was
//! accepted is checked where it arrived (the fleet's mailboxes), and what was refused is
//! checked never to arrive.

mod common;

use common::{Reaper, field};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token-0123456789abcdef";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailsim"))
}

/// Start a daemon, reaped at the end of the test; its ready line.
fn start(cmd: &mut Command) -> (Reaper, String) {
    let (child, line) = common::start_daemon(cmd);
    (Reaper(child), line)
}

/// POST `body` to the API with curl; the status and the JSON answer.
fn curl(api: &str, headers: &[&str], body: &[u8], dir: &Path) -> (u16, Value) {
    let file = dir.join("body.json");
    std::fs::write(&file, body).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{api}/api/inject/v1"));
    let out = cmd.output().expect("curl (scripts/test.sh installs it)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (json, status) = text.rsplit_once('\n').unwrap();
    let status: u16 = status.trim().parse().unwrap();
    let value = serde_json::from_str(json).unwrap_or(Value::Null);
    (status, value)
}

const AUTH: &str = "Authorization: Bearer test-token-0123456789abcdef";
const JSON: &str = "Content-Type: application/json";

/// The stored messages' text, by Message-ID, once `n` are there (or a panic after 60 s).
fn wait_stored(mailboxes: &Path, n: usize) -> std::collections::BTreeMap<String, String> {
    let started = Instant::now();
    loop {
        let files = common::maildir_files(mailboxes);
        if files.len() >= n {
            return files
                .iter()
                .filter_map(|p| {
                    let text = std::fs::read_to_string(p).ok()?;
                    Some((common::message_id(&text)?, text))
                })
                .collect();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} of {n} messages stored after 60 s",
            files.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_injection_api_answers_each_case_and_queues_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/crash.toml");
    let fleet_dir = dir.path().join("fleet");
    let (_fleet, ready) = start(bin().args([
        "fleet",
        scenario.to_str().unwrap(),
        "--out",
        fleet_dir.to_str().unwrap(),
    ]));
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("# the test's token\n\n{TOKEN}\n")).unwrap();
    let (_mta, mta_ready) = start(
        bin()
            .args(["mta", "--spool"])
            .arg(dir.path().join("spool"))
            .args(["--dns", field(&ready, "dns")])
            .args(["--remote-port", field(&ready, "smtp_port")])
            .args(["--submission", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .arg("--http-tokens")
            .arg(&tokens)
            .args(["--http-body-max", "1000000"]),
    );
    let api = field(&mta_ready, "http").to_string();
    let mailboxes = fleet_dir.join("mailboxes");

    // One message, given whole.
    let one = br#"{"envelope_sender": "bounces@news.example.test",
        "content": "From: News <news@news.example.test>\nSubject: hello\n\nHello there",
        "recipients": [{"email": "first@a.test"}]}"#;
    let (status, answer) = curl(&api, &[AUTH, JSON], one, dir.path());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success_count"], 1, "{answer}");
    assert_eq!(answer["fail_count"], 0);
    assert_eq!(answer["queued"][0]["email"], "first@a.test");
    assert!(
        answer["queued"][0]["queue_id"].as_u64().is_some(),
        "{answer}"
    );
    let first_id = answer["queued"][0]["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = wait_stored(&mailboxes, 1);
    let text = &stored[&first_id];
    assert!(text.contains("Subject: hello\r\n"), "{text}");
    assert!(text.contains("\r\n\r\nHello there\r\n"), "{text}");
    assert!(text.contains("Date: "), "a Date was added: {text}");

    // Refused requests queue nothing: each names what was wrong.
    let many: Vec<Value> = (0..1000)
        .map(|i| {
            serde_json::json!({
                "email": format!("user{i}@{}.test", if i % 2 == 0 { "a" } else { "b" }),
                "name": format!("User <{i}>"),
                "substitutions": {"code": format!("C{i:04}")}
            })
        })
        .collect();
    let campaign = |recipients: &[Value]| {
        serde_json::to_vec(&serde_json::json!({
            "envelope_sender": "bounces@news.example.test",
            "content": {
                "from": {"email": "news@news.example.test", "name": "News"},
                "subject": "Your code, {{ name }}",
                "headers": {"Message-ID": "<{{ code }}@news.example.test>", "X-Campaign": "spring"},
                "text_body": "Dear {{ name }}, your code is {{ code }}.",
                "html_body": "<p>Dear {{ name }}, your code is <b>{{ code }}</b>.</p>"
            },
            "recipients": recipients
        }))
        .unwrap()
    };
    let mut bad = many.clone();
    bad[500]["email"] = Value::from("user500@");
    let (status, answer) = curl(&api, &[AUTH, JSON], &campaign(&bad), dir.path());
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["status"], 400);
    assert_eq!(
        answer["error"]["field"], "recipients[500].email",
        "{answer}"
    );
    let (status, answer) = curl(&api, &[AUTH, JSON], b"{\"envelope_sender\": ", dir.path());
    assert_eq!(status, 400);
    assert!(answer["error"]["field"].is_null(), "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 1"),
        "{answer}"
    );
    let (status, answer) = curl(&api, &[JSON], one, dir.path());
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );
    let wrong = "Authorization: Bearer test-token-0123456789abcdeX";
    let (status, _) = curl(&api, &[wrong, JSON], one, dir.path());
    assert_eq!(status, 401);
    let (status, answer) = curl(&api, &[AUTH, "Content-Type: text/plain"], one, dir.path());
    assert_eq!(status, 415, "{answer}");
    let mut big = campaign(&many[..10]);
    big.extend(std::iter::repeat_n(b' ', 1_000_001));
    let (status, answer) = curl(&api, &[AUTH, JSON], &big, dir.path());
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000000")
    );

    // 1,000 recipients in one request, each with its own substitutions.
    let started = Instant::now();
    let (status, answer) = curl(&api, &[AUTH, JSON], &campaign(&many), dir.path());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success_count"], 1000, "{answer}");
    assert_eq!(answer["queued"].as_array().unwrap().len(), 1000);
    assert_eq!(
        answer["queued"][7]["message_id"],
        "<C0007@news.example.test>"
    );
    eprintln!("1,000 recipients queued in {:?}", started.elapsed());
    let stored = wait_stored(&mailboxes, 1001);
    // Exactly the accepted mail arrived: the one message and the 1,000, no copy of a refused
    // request (the one with the bad address named every other recipient too).
    assert_eq!(
        stored.len(),
        1001,
        "{:?}",
        stored.keys().take(5).collect::<Vec<_>>()
    );
    for i in 0..1000 {
        let id = format!("<C{i:04}@news.example.test>");
        let text = stored.get(&id).unwrap_or_else(|| panic!("{id} not stored"));
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .unwrap();
        let to = parsed.to().and_then(|a| a.first()).unwrap();
        assert_eq!(
            to.address().unwrap(),
            format!("user{i}@{}.test", if i % 2 == 0 { "a" } else { "b" })
        );
        assert_eq!(parsed.subject().unwrap(), format!("Your code, User <{i}>"));
        assert_eq!(
            parsed.body_text(0).unwrap().trim_end(),
            format!("Dear User <{i}>, your code is C{i:04}.")
        );
        assert_eq!(
            parsed.body_html(0).unwrap().trim_end(),
            format!("<p>Dear User &lt;{i}&gt;, your code is <b>C{i:04}</b>.</p>")
        );
        assert_eq!(
            parsed.header_raw("X-Campaign").map(str::trim),
            Some("spring")
        );
    }
}
