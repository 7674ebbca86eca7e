//! What the sim tests share: reading what the receivers stored, from the files themselves.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Run `scenario` in this process into `dir`, without a progress bar; its summary.
///
/// Two checks on every run: the summary the run folded as it wrote its log equals a fold of
/// the log read back afterwards (`mailsim replay`'s), and every record's JSON as written reads
/// the same through the log's one-pass reading and serde's derived one.
pub fn run(scenario: &mailsim::scenario::Scenario, dir: &Path) -> mailsim_summary::Summary {
    let summary = mailsim::runner::run_scenario(
        scenario,
        &mailsim::runner::RunOptions {
            out_dir: dir.to_path_buf(),
            progress: false,
        },
    )
    .unwrap();
    let log = mailsim::runner::events_path(dir);
    let (replayed, torn) = mailsim::runner::fold_log(&log).unwrap();
    assert!(!torn);
    assert_eq!(replayed, summary, "the run's summary and its log's");
    // The frames as written (the log's layout: a 12-byte header, then length, checksum and
    // the binary record per record), each decoded, its JSON read both ways, and as the log's
    // reader gives them.
    let raw = std::fs::read(&log).unwrap();
    assert_eq!(raw[8..12], 2u32.to_le_bytes(), "log format 2");
    let mut at = 12;
    let mut records = mailsim_events::LogReader::open(&log).unwrap();
    while at < raw.len() {
        let len = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap()) as usize;
        let binary = &raw[at + 8..at + 8 + len];
        at += 8 + len;
        let record = mailsim_events::Record::from_binary(binary).unwrap();
        let json = serde_json::to_vec(&record).unwrap();
        let derived: mailsim_events::Record = serde_json::from_slice(&json).unwrap();
        let one_pass = mailsim_events::Record::from_json(&json).unwrap();
        assert_eq!(one_pass, derived, "{}", String::from_utf8_lossy(&json));
        assert_eq!(derived, record);
        assert_eq!(records.next().unwrap().unwrap(), derived);
    }
    assert!(records.next().is_none());
    summary
}

/// A port free on 127.0.0.1 now (for a server a test starts in another process).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every message file in a Maildir `new` folder below `root` (a run's `mailboxes`), sorted. A
/// missing folder holds nothing (a run still in progress may not have made it yet).
pub fn maildir_files(root: &Path) -> Vec<PathBuf> {
    files_where(root, |path| {
        path.parent().is_some_and(|p| p.ends_with("new"))
    })
}

/// Every file called `name` under `root`, sorted.
pub fn files_named(root: &Path, name: &str) -> Vec<PathBuf> {
    files_where(root, |path| path.file_name().is_some_and(|n| n == name))
}

/// Every file under `root` that `keep` accepts, sorted.
fn files_where(root: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if keep(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The directory right below `root` that holds `file`: the MX host (or the sender's domain).
pub fn host_of(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .ok()
        .and_then(|rel| rel.components().next())
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The Message-ID header's value, if the message has one.
pub fn message_id(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("Message-ID: ")
                .or_else(|| l.strip_prefix("Message-Id: "))
        })
        .map(|id| id.trim().to_string())
}

/// What RFC 5322 and RFC 5321 ask of a stored copy, read with mail-parser: a Message-ID of one
/// `@` (section 3.6.4); for a receiver's copy (`delivered`), a Return-Path (RFC 5321 section
/// 4.4) and a first Received header that ends in its date (RFC 5322 section 3.6.7).
pub fn check_stored_headers(file: &Path, delivered: bool) -> Result<(), String> {
    let raw = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    check_stored_bytes(file, &raw, delivered)
}

/// [`check_stored_headers`] of one stored copy's bytes (`file` names it in errors).
pub fn check_stored_bytes(file: &Path, raw: &[u8], delivered: bool) -> Result<(), String> {
    let text = String::from_utf8_lossy(raw);
    let id = message_id(&text).ok_or_else(|| format!("{}: no Message-ID", file.display()))?;
    if id.matches('@').count() != 1 || !id.starts_with('<') || !id.ends_with('>') {
        return Err(format!("{}: Message-ID {id}", file.display()));
    }
    if !delivered {
        return Ok(());
    }
    let msg = mail_parser::MessageParser::default()
        .parse(raw)
        .ok_or_else(|| format!("{}: not a message", file.display()))?;
    if msg
        .return_address()
        .is_none_or(|a| a.is_empty() && !text.starts_with("Return-Path: <>"))
    {
        return Err(format!("{}: no Return-Path", file.display()));
    }
    let received = msg
        .received()
        .ok_or_else(|| format!("{}: no Received", file.display()))?;
    let Some(received_at) = received.date.as_ref().map(|d| d.to_timestamp()) else {
        return Err(format!("{}: Received without a date", file.display()));
    };
    // A DKIM signature is made after the message is dated and before it is received, on the
    // run's clock (RFC 6376 section 3.5, t=): in a virtual run that is the virtual clock.
    if let Some(sig) = msg.header_raw("DKIM-Signature") {
        let t = sig
            .split(';')
            .filter_map(|tag| tag.trim().strip_prefix("t="))
            .find_map(|v| v.trim().parse::<i64>().ok())
            .ok_or_else(|| format!("{}: DKIM-Signature without t=", file.display()))?;
        let dated = msg.date().map(|d| d.to_timestamp()).unwrap_or(i64::MIN);
        if t < dated - 1 || t > received_at + 1 {
            return Err(format!(
                "{}: DKIM t={t} outside Date {dated} .. Received {received_at}",
                file.display()
            ));
        }
    }
    Ok(())
}

/// A child process killed and reaped whatever happens to the test.
pub struct Reaper(pub std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// mailsim's MTA daemon in its own process, as "another MTA": spooling in `spool`, asking DNS
/// at 127.0.0.1:`dns_port`, taking submissions on `submission`, delivering to `fleet_port`;
/// returned once it says it is ready.
pub fn start_mta_daemon(spool: &Path, dns_port: u16, submission: u16, fleet_port: u16) -> Reaper {
    use std::io::BufRead;
    let mut mta = std::process::Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("mta")
        .arg("--spool")
        .arg(spool)
        .args(["--dns", &format!("127.0.0.1:{dns_port}")])
        .args(["--submission", &format!("127.0.0.1:{submission}")])
        .args(["--remote-port", &fleet_port.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(mta.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the MTA exited");
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Reaper(mta)
}

/// `mailsim run SCENARIO --mta smtp://127.0.0.1:<submission>` into `run_dir`, which must
/// succeed; its standard output (the summary).
pub fn run_against(
    scenario: &Path,
    submission: u16,
    fleet_port: u16,
    dns_port: u16,
    run_dir: &Path,
) -> Vec<u8> {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("run")
        .arg(scenario)
        .args(["--mta", &format!("smtp://127.0.0.1:{submission}")])
        .args(["--fleet-port", &fleet_port.to_string()])
        .args(["--dns-port", &dns_port.to_string()])
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
    run.stdout
}

/// `mailsim dns ARGS --listen 127.0.0.1:0` running, with the port its ready line names.
pub fn serve_dns(args: &[&str]) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("dns")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("ready line: {line}"));
    (child, port)
}

/// Start a daemon and return it with its ready line (the first line saying "ready"). The rest
/// of its output is drained on a thread, so that the daemon never blocks on a full pipe. A
/// daemon that exits before it is ready fails the test with what it said on stderr.
pub fn start_daemon(cmd: &mut std::process::Command) -> (std::process::Child, String) {
    use std::io::{BufRead, Read};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut err = child.stderr.take().unwrap();
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            let mut said = String::new();
            let _ = err.read_to_string(&mut said);
            panic!("exited before ready ({}): {said}", child.wait().unwrap());
        }
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    (child, line)
}

/// The value of `key=VALUE` in a ready line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in {line:?}"))
}

/// `url` loaded in headless Chromium (a profile under `dir`): its DOM once scripts ran (and
/// redirects were followed) on stdout, the browser's log (console messages) on stderr.
pub fn chromium_dom(dir: &Path, url: &str) -> std::process::Output {
    let profile = dir.join("chromium-profile");
    std::process::Command::new("chromium")
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
        .arg(url)
        .output()
        .expect("chromium (installed by .ci/run)")
}
