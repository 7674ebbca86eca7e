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

/// POST `body` to the injection API with curl; the status and the JSON answer.
fn curl(api: &str, headers: &[&str], body: &[u8], dir: &Path) -> (u16, Value) {
    curl_at(api, "/api/inject/v1", headers, body, dir)
}

/// POST `body` to `path` with curl and `headers`; the status and the JSON answer.
fn curl_at(api: &str, path: &str, headers: &[&str], body: &[u8], dir: &Path) -> (u16, Value) {
    let file = dir.join("body.json");
    std::fs::write(&file, body).unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{api}{path}"));
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

/// A fleet (scenarios/crash.toml's domains) and `mailsim mta --http` delivering to it, with
/// the test's token and `extra` flags.
struct Platform {
    _fleet: Reaper,
    mta: Reaper,
    api: String,
    fleet_dir: std::path::PathBuf,
    spool: std::path::PathBuf,
}

impl Platform {
    fn start(dir: &Path, extra: &[&str]) -> Platform {
        let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/crash.toml");
        let fleet_dir = dir.join("fleet");
        let (fleet, ready) = start(bin().args([
            "fleet",
            scenario.to_str().unwrap(),
            "--out",
            fleet_dir.to_str().unwrap(),
        ]));
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, format!("# the test's token\n\n{TOKEN}\n")).unwrap();
        let spool = dir.join("spool");
        let (mta, mta_ready) = start(
            bin()
                .args(["mta", "--spool"])
                .arg(&spool)
                .args(["--dns", field(&ready, "dns")])
                .args(["--remote-port", field(&ready, "smtp_port")])
                .args(["--submission", "127.0.0.1:0", "--http", "127.0.0.1:0"])
                .arg("--http-tokens")
                .arg(&tokens)
                .args(extra),
        );
        Platform {
            _fleet: fleet,
            mta,
            api: field(&mta_ready, "http").to_string(),
            fleet_dir,
            spool,
        }
    }
}

#[test]
fn the_injection_api_answers_each_case_and_queues_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path(), &["--http-body-max", "1000000"]);
    let (api, fleet_dir) = (p.api.clone(), p.fleet_dir.clone());
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
    assert_eq!(
        answer["error"]["field"], "envelope_sender",
        "being read: {answer}"
    );
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
    // A client that sends half a request header is let go (10 s), not kept for ever.
    {
        use std::io::{Read, Write};
        let mut idle = std::net::TcpStream::connect(&api).unwrap();
        idle.write_all(b"POST /api/inject/v1 HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = idle.read_to_end(&mut rest);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(8) && waited < Duration::from_secs(20),
            "closed after {waited:?}"
        );
    }
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

/// A tiny web server standing for the shop a newsletter links to: answers every request with
/// a page naming the path it was asked for, and keeps the paths.
fn shop() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let paths = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            paths.lock().unwrap().push(path.clone());
            let body = format!("<html><title>Shop</title><p id=landed>landed on {path}</p></html>");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

#[test]
fn a_tracked_message_opened_and_clicked_in_chromium_and_a_one_click_unsubscribe() {
    let dir = tempfile::tempdir().unwrap();
    let Platform {
        _fleet: _fleet_up,
        mut mta,
        api,
        fleet_dir,
        spool,
    } = Platform::start(dir.path(), &[]);
    let (shop_port, shop_paths) = shop();
    let link = format!("http://127.0.0.1:{shop_port}/winter?from=mail&amp;id=7");
    let request = serde_json::json!({
        "envelope_sender": "bounces@news.example.test",
        "tracking": true,
        "content": {
            "from": {"email": "news@news.example.test"},
            "subject": "Winter sale",
            "text_body": "See the shop.",
            "html_body": format!("<html><body><p>Hello {{{{ name }}}}</p><a id=go href=\"{link}\">Shop now</a></body></html>")
        },
        "recipients": [{"email": "reader@a.test", "name": "Reader"}]
    });
    let (status, answer) = curl(
        &api,
        &[AUTH, JSON],
        &serde_json::to_vec(&request).unwrap(),
        dir.path(),
    );
    assert_eq!(status, 200, "{answer}");
    let message_id = answer["queued"][0]["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = wait_stored(&fleet_dir.join("mailboxes"), 1);
    let parsed = mail_parser::MessageParser::default()
        .parse(stored[&message_id].as_bytes())
        .unwrap();
    // What the reader's browser gets: the HTML part as delivered.
    let page = dir.path().join("message.html");
    std::fs::write(&page, parsed.body_html(0).unwrap().as_bytes()).unwrap();
    let tracked = {
        let html = parsed.body_html(0).unwrap().to_string();
        let href = html
            .split("href=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_string();
        href.replace("&amp;", "&")
    };
    assert!(
        tracked.starts_with(&format!("http://{api}/t/c/")),
        "the link goes through the tracker: {tracked}"
    );
    // Opening the message loads the pixel; following the link lands on the shop.
    let opened = common::chromium_dom(dir.path(), &format!("file://{}", page.display()));
    assert!(String::from_utf8_lossy(&opened.stdout).contains("Shop now"));
    let clicked = common::chromium_dom(dir.path(), &tracked);
    let dom = String::from_utf8_lossy(&clicked.stdout);
    assert!(
        dom.contains("landed on /winter?from=mail&amp;id=7"),
        "Chromium ended on the shop's page: {dom}"
    );
    let asked: Vec<String> = shop_paths
        .lock()
        .unwrap()
        .iter()
        .filter(|p| *p != "/favicon.ico")
        .cloned()
        .collect();
    assert_eq!(
        asked,
        ["/winter?from=mail&id=7"],
        "the shop saw the original link's path once"
    );
    // A token that is not the MTA's: 404, nothing logged.
    assert_eq!(
        http_code(&[&format!("http://{api}/t/c/b3RoZXI.AAAA")]),
        "404"
    );
    // RFC 8058 one-click: the POST unsubscribes; the next injection to the reader is refused.
    let unsubscribe = parsed
        .header_raw("List-Unsubscribe")
        .unwrap()
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string();
    assert_eq!(
        parsed.header_raw("List-Unsubscribe-Post").map(str::trim),
        Some("List-Unsubscribe=One-Click")
    );
    assert_eq!(
        http_code(&[
            "-X",
            "POST",
            "-d",
            "List-Unsubscribe=One-Click",
            &unsubscribe
        ]),
        "200"
    );
    let (status, answer) = curl(
        &api,
        &[AUTH, JSON],
        &serde_json::to_vec(&request).unwrap(),
        dir.path(),
    );
    assert_eq!(status, 200);
    assert_eq!(answer["success_count"], 0, "{answer}");
    assert_eq!(answer["failed_recipients"][0], "reader@a.test");
    // An unsubscribe is from marketing: a password reset still goes.
    let reset = serde_json::json!({
        "envelope_sender": "bounces@news.example.test",
        "lane": "Transactional",
        "content": "From: accounts@news.example.test\nSubject: reset\n\nYour code: 1234",
        "recipients": [{"email": "reader@a.test"}]
    });
    let (status, answer) = curl(
        &api,
        &[AUTH, JSON],
        &serde_json::to_vec(&reset).unwrap(),
        dir.path(),
    );
    assert_eq!(status, 200);
    assert_eq!(answer["success_count"], 1, "{answer}");
    // The MTA's log, after an orderly stop: one open, one click with the original link, one
    // unsubscribe, for this message and reader.
    let _ = Command::new("kill")
        .args(["-INT", &mta.0.id().to_string()])
        .status();
    mta.0.wait().unwrap();
    let (records, _) = mailsim_events::read_log(&spool.join("events.log")).unwrap();
    let mut seen = Vec::new();
    for r in &records {
        match &r.event {
            mailsim_events::Event::Opened {
                rcpt,
                message_id: m,
                ..
            } => seen.push(format!("opened {rcpt} {m}")),
            mailsim_events::Event::Clicked {
                rcpt,
                message_id: m,
                url,
                ..
            } => seen.push(format!("clicked {rcpt} {m} {url}")),
            mailsim_events::Event::Unsubscribed {
                rcpt,
                message_id: m,
                ..
            } => seen.push(format!("unsubscribed {rcpt} {m}")),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        [
            format!("opened reader@a.test {message_id}"),
            format!(
                "clicked reader@a.test {message_id} http://127.0.0.1:{shop_port}/winter?from=mail&id=7"
            ),
            format!("unsubscribed reader@a.test {message_id}"),
        ]
    );
}

#[test]
fn a_campaign_mails_the_active_subscribers_of_a_list_imported_from_csv() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path(), &[]);
    let import = |file: &str, text: &str| {
        let csv = dir.path().join(file);
        std::fs::write(&csv, text).unwrap();
        bin()
            .args(["list", "import", "--list", "news", "--spool"])
            .arg(&p.spool)
            .arg(&csv)
            .output()
            .unwrap()
    };
    let out = import(
        "subs.csv",
        "email,name,plan\nann@a.test,Ann,gold\nbob@b.test,Bob,silver\n\"cy@a.test\",\"Cy, Jr.\",bronze\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "list: news added=3 updated=0"
    );
    let out = import("bad.csv", "email,name\ndee@b.test,Dee\nnot-an-address,X\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv: line 3: column email"), "{err}");
    let campaign = serde_json::to_vec(&serde_json::json!({
        "list": "news",
        "envelope_sender": "bounces@news.example.test",
        "content": {
            "from": {"email": "news@news.example.test"},
            "subject": "Your {{ plan }} plan",
            "text_body": "Hello {{ name }}, your plan: {{ plan }}."
        }
    }))
    .unwrap();
    let (status, answer) = curl_at(
        &p.api,
        "/api/campaigns",
        &[AUTH, JSON],
        &campaign,
        dir.path(),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["recipients"], 3,
        "dee's row was not imported: {answer}"
    );
    assert_eq!(answer["success_count"], 3);
    let stored = wait_stored(&p.fleet_dir.join("mailboxes"), 3);
    let texts: Vec<&String> = stored.values().collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Hello Cy, Jr., your plan: bronze.")),
        "substitution from the CSV fields"
    );
    // Bob unsubscribes with the one-click URL of the mail he got: the next campaign skips him.
    let bob = stored
        .values()
        .find(|t| t.contains("Delivered-To: bob@b.test"))
        .unwrap();
    let parsed = mail_parser::MessageParser::default()
        .parse(bob.as_bytes())
        .unwrap();
    let url = parsed
        .header_raw("List-Unsubscribe")
        .unwrap()
        .trim()
        .trim_matches(['<', '>'])
        .to_string();
    assert_eq!(
        http_code(&["-F", "List-Unsubscribe=One-Click", &url]),
        "200",
        "multipart one-click"
    );
    let (status, answer) = curl_at(
        &p.api,
        "/api/campaigns",
        &[AUTH, JSON],
        &campaign,
        dir.path(),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["recipients"], 2, "{answer}");
    assert_eq!(answer["statuses"]["unsubscribed"], 1, "{answer}");
    let stored = wait_stored(&p.fleet_dir.join("mailboxes"), 5);
    let to_bob = stored
        .values()
        .filter(|t| t.contains("Delivered-To: bob@b.test"))
        .count();
    assert_eq!(to_bob, 1, "bob got the first campaign only");
    let out = bin()
        .args(["list", "show", "--list", "news", "--spool"])
        .arg(&p.spool)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"active":2,"unsubscribed":1}"#
    );
}

/// The HTTP status curl gets with `args`.
fn http_code(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
