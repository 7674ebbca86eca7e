//! What the fleet keeps (`[fleet] store`): the whole message, its headers, or nothing. The
//! event log is byte for byte the same whatever is kept (verdicts and figures do not depend on
//! it), and the receivers hold exactly what was asked, read from their files (Maildir files
//! for full copies, one mbox per server for header blocks).

mod common;

use mailsim::scenario::{Scenario, Store};
use std::path::Path;

fn scenario(store: &str) -> String {
    format!(
        r#"
name = "store"
seed = 5
mode = "virtual"
[[sender]]
domain = "s.test"
[[domain]]
name = "accept.test"
[[domain]]
name = "some-unknown.test"
unknown_users = {{ percent = 20 }}
[campaign]
messages = 120
size_bytes = 4000
{store}
"#
    )
}

/// Run the scenario; the log's records as `mailsim events` prints them, the recipient
/// servers' Maildir files (the sender's own MX left out), and the number delivered.
fn run(store: &str, dir: &Path) -> (String, Vec<std::path::PathBuf>, u64) {
    let scenario = Scenario::parse(&scenario(store), Path::new("store.toml")).unwrap();
    let summary = common::run(&scenario, dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("events")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let mailboxes = dir.join("mailboxes");
    let files = common::maildir_files(&mailboxes)
        .into_iter()
        .filter(|f| !common::host_of(&mailboxes, f).ends_with("s.test"))
        .collect();
    (
        String::from_utf8(out.stdout).unwrap(),
        files,
        summary.delivered,
    )
}

#[test]
fn full_headers_and_nothing_keep_what_they_say_and_log_the_same() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (full_log, full, delivered) = run("", dirs[0].path());
    let (headers_log, headers, _) = run("[fleet]\nstore = \"headers\"", dirs[1].path());
    let (none_log, none, _) = run("[fleet]\nstore = \"none\"", dirs[2].path());
    assert!(delivered > 80 && delivered < 120, "{delivered}");

    // The log does not depend on what is kept (the run directory's name is not in it).
    assert_eq!(full_log, headers_log);
    assert_eq!(full_log, none_log);

    // Full: every delivery is a file with its body.
    assert_eq!(full.len() as u64, delivered);
    for f in &full {
        let text = std::fs::read_to_string(f).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            body.len() > 3000,
            "{}: body of {} bytes",
            f.display(),
            body.len()
        );
    }
    // Headers: no Maildir file; every delivery is a message in the server's mbox, read with
    // mail-parser's mbox reader: the same header block, an empty body, the envelope sender
    // and the time of receipt on its From line.
    assert!(headers.is_empty(), "{headers:?}");
    let full_ids: std::collections::BTreeSet<String> = full
        .iter()
        .map(|f| common::message_id(&std::fs::read_to_string(f).unwrap()).unwrap())
        .collect();
    let mut header_ids = std::collections::BTreeSet::new();
    let mailboxes = dirs[1].path().join("mailboxes");
    let mut mboxes = 0;
    for host in std::fs::read_dir(&mailboxes).unwrap() {
        let host = host.unwrap().path();
        if host.ends_with("s.test") || host.to_string_lossy().ends_with(".s.test") {
            continue;
        }
        let mbox = common::files_named(&host, "headers.mbox");
        assert_eq!(mbox.len(), 1, "{}: {mbox:?}", host.display());
        mboxes += 1;
        let reader = std::io::BufReader::new(std::fs::File::open(&mbox[0]).unwrap());
        for m in mail_parser::mailbox::mbox::MessageIterator::new(reader) {
            let m = m.unwrap();
            let text = String::from_utf8(m.contents().to_vec()).unwrap();
            // The header block, the empty line of an empty body, the line ending the message.
            assert!(text.ends_with("\n\n\n"), "{text}");
            assert_eq!(text.trim_end().matches("\n\n").count(), 0, "{text}");
            common::check_stored_bytes(&mbox[0], m.contents(), true).unwrap();
            let parsed = mail_parser::MessageParser::default()
                .parse(m.contents())
                .unwrap();
            let received = parsed.received().unwrap().date.unwrap().to_timestamp();
            assert!(
                (received - m.internal_date() as i64).abs() <= 1,
                "From line {} vs Received {received}",
                m.internal_date()
            );
            assert_eq!(
                format!("<{}>", m.from()),
                parsed.return_address().map(|a| format!("<{a}>")).unwrap()
            );
            assert!(header_ids.insert(common::message_id(&text).unwrap()));
        }
    }
    assert_eq!(mboxes, 2);
    assert_eq!(header_ids.len() as u64, delivered);
    assert_eq!(full_ids, header_ids);
    // Nothing: no file at the receivers.
    assert!(none.is_empty(), "{none:?}");

    // The sender's own MX (its bounce mailbox) keeps the reports it takes as every server
    // keeps copies: a Maildir file each, their header blocks in its mbox, or nothing.
    let sender_files = |dir: &Path| -> Vec<std::path::PathBuf> {
        let mailboxes = dir.join("mailboxes");
        let mut all = Vec::new();
        let Ok(hosts) = std::fs::read_dir(&mailboxes) else {
            return all;
        };
        for host in hosts {
            let host = host.unwrap().path();
            if host.to_string_lossy().ends_with("s.test")
                && !host.to_string_lossy().ends_with("-unknown.test")
            {
                all.extend(common::files_named(&host, "headers.mbox"));
                all.extend(common::maildir_files(&host));
            }
        }
        all
    };
    let reports: Vec<String> = sender_files(dirs[0].path())
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(
        !reports.is_empty(),
        "no report reached the sender's mailbox"
    );
    for r in &reports {
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase().contains("multipart/report"),
            "{head}"
        );
        assert!(body.contains("Status: 5.1.1"), "{body}");
    }
    let kept = sender_files(dirs[1].path());
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].ends_with("headers.mbox"), "{kept:?}");
    let reader = std::io::BufReader::new(std::fs::File::open(&kept[0]).unwrap());
    let mut heads = 0;
    for m in mail_parser::mailbox::mbox::MessageIterator::new(reader) {
        let m = m.unwrap();
        let text = String::from_utf8(m.contents().to_vec()).unwrap();
        assert!(text.ends_with("\n\n\n"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("multipart/report"),
            "{text}"
        );
        assert!(!text.contains("Status: 5.1.1"), "a body was kept: {text}");
        // The null reverse path of a report.
        assert_eq!(m.from(), "MAILER-DAEMON");
        heads += 1;
    }
    assert_eq!(heads, reports.len());
    let kept = sender_files(dirs[2].path());
    assert!(kept.is_empty(), "{kept:?}");
}

#[test]
fn large_virtual_runs_keep_headers_unless_told() {
    let parse = |text: &str| Scenario::parse(text, Path::new("s.toml")).unwrap().store();
    let big = scenario("").replace("messages = 120", "messages = 100000");
    assert_eq!(parse(&scenario("")), Store::Full);
    assert_eq!(parse(&big), Store::Headers);
    assert_eq!(
        parse(&big.replace("mode = \"virtual\"", "mode = \"live\"")),
        Store::Full
    );
    assert_eq!(
        parse(&format!("{big}[fleet]\nstore = \"full\"\n")),
        Store::Full
    );
    // A wrong value names the file, the line and what the field takes.
    let e = Scenario::parse(
        &scenario("[fleet]\nstore = \"bodies\""),
        Path::new("s.toml"),
    )
    .unwrap_err()
    .to_string();
    let line = scenario("[fleet]\nstore = \"bodies\"")
        .lines()
        .position(|l| l.starts_with("store"))
        .unwrap()
        + 1;
    assert!(
        e.contains(&format!("s.toml:{line}:")) && e.contains("`full`, `headers`, `none`"),
        "{e}"
    );
}
