//! Recipients who act on another sender's mail (issue 17): a live run measuring another MTA
//! (mailsim's daemon in its own process), whose campaign carries the tracking URLs of a sender
//! that is not mailsim: a small HTTP server of this test's own. The simulated recipients open,
//! click and unsubscribe through those URLs over real loopback sockets; what that server saw is
//! checked against the run's events and against the copies the receiving servers stored.

mod common;

use mailsim_events::{Event, read_log};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use std::sync::{Arc, Mutex};

/// What the other sender's web server was asked: (method, path, body).
type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A minimal HTTP/1.1 server: a GIF for /o/, a redirect for /c/, 200 for a POST to /u/.
fn tracking_server() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                );
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let answer = if path.starts_with("/c/") {
                    "HTTP/1.1 302 Found\r\nLocation: https://www.example.org/\r\nContent-Length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                };
                stream.write_all(answer.as_bytes()).unwrap();
                log.lock().unwrap().push((
                    method,
                    path,
                    String::from_utf8_lossy(&body).to_string(),
                ));
            });
        }
    });
    (port, seen)
}

#[test]
fn recipients_open_click_and_unsubscribe_through_another_senders_urls() {
    let dir = tempfile::tempdir().unwrap();
    let (web_port, seen) = tracking_server();
    let (dns_port, fleet_port, submission) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    // The other sender's HTML: its own pixel and link, and an image on a host outside
    // loopback, which the recipients must refuse to fetch.
    std::fs::write(
        dir.path().join("mail.html"),
        format!(
            "<html><body><p>Hello {{{{rcpt}}}}, this is the news of the month from the other sender, with enough words to read.</p>\
             <p><a href=\"http://127.0.0.1:{web_port}/c/{{{{rcpt}}}}\">Read more</a></p>\
             <img src=\"http://127.0.0.1:{web_port}/o/{{{{rcpt}}}}\" width=1 height=1>\
             <img src=\"http://198.51.100.7/pixel.gif\" width=1 height=1></body></html>"
        ),
    )
    .unwrap();
    let scenario = dir.path().join("engage.toml");
    std::fs::write(
        &scenario,
        format!(
            r#"
name = "engage-live"
seed = 17
[mta]
run_time_s_max = 120
[[sender]]
domain = "other.sender.test"
[[domain]]
name = "a.test"
[[domain]]
name = "b.test"
[reputation]
initial = 90
act_within_s = 2
[[segment]]
name = "keen"
percent = 100
open_percent = 100
click_percent = 100
unsubscribe_percent = 50
complaint_percent = 0
[campaign]
messages = 30
size_bytes = 1200
html = true
html_template = "mail.html"
list_unsubscribe = "one-click"
unsubscribe_url = "http://127.0.0.1:{web_port}/u/{{{{rcpt}}}}"
"#
        ),
    )
    .unwrap();
    let spool = dir.path().join("spool");
    let _mta = common::start_mta_daemon(&spool, dns_port, submission, fleet_port);

    let run_dir = dir.path().join("run");
    common::run_against(&scenario, submission, fleet_port, dns_port, &run_dir);

    // What the receiving servers stored: which recipients got the message in their inbox.
    let root = run_dir.join("mailboxes");
    let mut inbox = Vec::new();
    for f in common::maildir_files(&root) {
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().to_string();
        if !rel.contains("/inbox/") || rel.contains("/Junk/") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let rcpt = text
            .lines()
            .find_map(|l| l.strip_prefix("Delivered-To: "))
            .unwrap()
            .trim()
            .to_string();
        inbox.push(rcpt);
    }
    inbox.sort();
    assert!(inbox.len() >= 25, "{} of 30 in the inbox", inbox.len());

    // What the other sender's server saw.
    let seen = seen.lock().unwrap().clone();
    let paths = |method: &str, prefix: &str| {
        let mut v: Vec<String> = seen
            .iter()
            .filter(|(m, p, _)| m == method && p.starts_with(prefix))
            .map(|(_, p, _)| p[prefix.len()..].to_string())
            .collect();
        v.sort();
        v
    };
    // Everyone whose copy was in the inbox opens it (open_percent = 100) and clicks.
    let opened = paths("GET", "/o/");
    for rcpt in &inbox {
        assert!(
            opened.contains(rcpt),
            "{rcpt} got it in the inbox and did not open it"
        );
        assert!(paths("GET", "/c/").contains(rcpt), "{rcpt} did not click");
    }
    let unsubscribed = paths("POST", "/u/");
    assert!(!unsubscribed.is_empty());
    for (m, p, body) in &seen {
        if m == "POST" {
            assert_eq!(body, "List-Unsubscribe=One-Click", "{p}: RFC 8058 body");
        }
    }

    // The run's events agree with that server, request for request.
    let (records, _) = read_log(&run_dir.join("events.log")).unwrap();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        match &r.event {
            Event::Opened {
                url,
                http_status: status,
                error,
                ..
            } if url.contains("198.51.100.7") => {
                assert_eq!(*status, 0);
                assert!(error.contains("outside 127.0.0.0/8"), "{error}");
                *counts.entry("refused").or_default() += 1;
            }
            Event::Opened {
                http_status: status,
                ..
            } => {
                assert_eq!(*status, 200);
                *counts.entry("opened").or_default() += 1;
            }
            Event::Clicked {
                http_status: status,
                ..
            } => {
                assert_eq!(*status, 302);
                *counts.entry("clicked").or_default() += 1;
            }
            Event::Unsubscribed {
                http_status: status,
                method,
                ..
            } => {
                assert_eq!((*status, method.as_str()), (200, "one-click"));
                *counts.entry("unsubscribed").or_default() += 1;
            }
            _ => {}
        }
    }
    assert_eq!(counts.get("opened"), Some(&opened.len()));
    assert_eq!(
        counts.get("refused"),
        Some(&opened.len()),
        "one refusal per open"
    );
    assert_eq!(counts.get("clicked"), Some(&paths("GET", "/c/").len()));
    assert_eq!(counts.get("unsubscribed"), Some(&unsubscribed.len()));
}
