//! `mailsim send` and `mailsim run --mta` against another MTA that misbehaves (found by an
//! independent review): a server that never answers held `send` past 590 s with a stall limit
//! of 3 s, a run's time limit did not cover its submission, and every failure read the same
//! ("nothing acknowledged"). Now the stall is measured on the clock, the last reply or error
//! is named, and a failed run still writes its summary.

use std::process::Command;
use std::time::{Duration, Instant};

/// A TCP server on 127.0.0.1 (port returned) that answers each connection with `script`:
/// "silent" accepts and says nothing; "451" greets and answers 451 4.3.0 to MAIL.
fn server(script: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                if script == "silent" {
                    std::thread::sleep(Duration::from_secs(600));
                    return;
                }
                let _ = stream.write_all(b"220 other.test ESMTP\r\n");
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                    let answer: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 other.test\r\n",
                        "MAIL" => b"451 4.3.0 queue full, try later\r\n",
                        "QUIT" => b"221 bye\r\n",
                        _ => b"503 5.5.1 bad sequence\r\n",
                    };
                    if stream.write_all(answer).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    port
}

fn scenario(dir: &std::path::Path, run_time_s_max: u64) -> std::path::PathBuf {
    let path = dir.join("small.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"small\"\nseed = 1\n[[sender]]\ndomain = \"news.example.test\"\n\
             [[domain]]\nname = \"plain.test\"\n[campaign]\nmessages = 5\n\
             [mta]\nrun_time_s_max = {run_time_s_max}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn send_gives_up_on_time_and_names_what_went_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let sc = scenario(dir.path(), 60);
    for (script, says) in [("silent", "no answer"), ("451", "451 queue full")] {
        let port = server(script);
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
            .arg("send")
            .arg(&sc)
            .args(["--to", &format!("127.0.0.1:{port}"), "--stall-s-max", "3"])
            .output()
            .unwrap();
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{script}: {err}");
        assert!(
            took < Duration::from_secs(20),
            "{script}: gave up after {took:?}"
        );
        assert!(
            err.contains("nothing acknowledged") && err.contains(says),
            "{script}: {err}"
        );
    }
}

#[test]
fn a_run_against_an_mta_that_never_accepts_ends_at_its_time_limit_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let sc = scenario(dir.path(), 8);
    let port = server("451");
    let run = dir.path().join("run");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("run")
        .arg(&sc)
        .args(["--mta", &format!("smtp://127.0.0.1:{port}")])
        .arg("--out")
        .arg(&run)
        .arg("--quiet")
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the 8 s limit took {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The run is whole: its log closed and its summary written, nothing acknowledged.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["injected"], 0, "{summary}");
    let events = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("events")
        .arg(&run)
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(
        events.contains(r#""type":"run_finished""#) && events.contains("time limit"),
        "{}",
        events.lines().last().unwrap_or_default()
    );
}

/// An injection API on 127.0.0.1 (port returned) answering each request by `mode`: "429-once"
/// refuses the first request with 429 and Retry-After: 1, then queues every recipient; "empty"
/// answers 200 `{}`; "endless" answers 200 with a body that never ends.
fn http_api(mode: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let first = first.clone();
            std::thread::spawn(move || {
                use std::io::{BufRead, Read, Write};
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let n = request["recipients"].as_array().map_or(0, Vec::len);
                    let answer = match mode {
                        "429-once" if first.swap(false, std::sync::atomic::Ordering::SeqCst) => {
                            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 4\r\n\r\nslow"
                                .to_string()
                        }
                        "429-once" => {
                            let queued: Vec<_> = (0..n)
                                .map(|i| serde_json::json!({"message_id": format!("<{i}@x>")}))
                                .collect();
                            let json = serde_json::json!({"queued": queued, "fail_count": 0})
                                .to_string();
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                                json.len()
                            )
                        }
                        "empty" => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_string(),
                        _ => {
                            let _ = out.write_all(
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                            );
                            let chunk = format!("100000\r\n{}\r\n", "x".repeat(0x100000));
                            while out.write_all(chunk.as_bytes()).is_ok() {}
                            return;
                        }
                    };
                    if out.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// `mailsim send --http` against an API that misbehaves: a 429 is waited out (Retry-After) and
/// sent again, not counted as refused; an answer that does not account for the request's
/// recipients is an error naming the counts; an answer without end is cut at its bound, not
/// read into memory until the process dies.
#[test]
fn send_over_http_waits_out_429_and_refuses_answers_it_cannot_count() {
    let dir = tempfile::tempdir().unwrap();
    let sc = scenario(dir.path(), 3600);
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let send = |port: u16| {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
            .arg("send")
            .arg(&sc)
            .args(["--http", &format!("127.0.0.1:{port}"), "--per-request", "2"])
            .args(["--stall-s-max", "10"])
            .arg("--token-file")
            .arg(&token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            started.elapsed(),
        )
    };
    let (ok, stdout, stderr, took) = send(http_api("429-once"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("acked=5 rejected=0 retried=1"), "{stdout}");
    assert!(
        took >= Duration::from_millis(900),
        "Retry-After waited: {took:?}"
    );
    let (ok, _, stderr, _) = send(http_api("empty"));
    assert!(!ok);
    assert!(
        // (Of 2 or 1 recipients: whichever request the connections sent first.)
        stderr.contains("names 0 queued and 0 failed of the request's "),
        "{stderr}"
    );
    let (ok, _, stderr, took) = send(http_api("endless"));
    assert!(!ok);
    assert!(stderr.contains("length limit"), "{stderr}");
    assert!(took < Duration::from_secs(30), "{took:?}");
}
