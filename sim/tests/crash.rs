//! Crash safety: 20,000 messages submitted by SMTP to the MTA daemon, which is killed with
//! SIGKILL at random points (at least five times) and restarted on the same spool. Afterwards
//! every acknowledged message was delivered or bounced (checked in the fleet's mailboxes and
//! the MTA's event log), nothing is left queued, duplicates are counted (a message in flight at
//! a kill may be delivered twice), and the bounces are exactly the recipients the receiving
//! side refused (the fleet's own log), all at the one domain the scenario gives unknown users.

mod common;

use mailsim_events::{Event, read_log};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the daemons whatever happens to the test (a failed assertion included).
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailsim"))
}

use common::{field, start_daemon as start};

fn start_mta(spool: &Path, dns: &str, port: &str, submission: &str) -> Child {
    let (child, line) = start(bin().args([
        "mta",
        "--spool",
        spool.to_str().unwrap(),
        "--dns",
        dns,
        "--remote-port",
        port,
        "--submission",
        submission,
        "--retry-interval-s-min",
        "1",
        "--retry-interval-s-max",
        "2",
    ]));
    assert!(line.starts_with("mta: ready"), "{line}");
    child
}

fn stored_message_ids(root: &Path) -> Vec<String> {
    common::maildir_files(root)
        .iter()
        .filter_map(|p| common::message_id(&std::fs::read_to_string(p).unwrap_or_default()))
        .collect()
}

#[test]
fn kill_dash_nine_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/crash.toml");
    let fleet_dir = dir.path().join("fleet");
    let (mut fleet, ready) = start(bin().args([
        "fleet",
        scenario.to_str().unwrap(),
        "--out",
        fleet_dir.to_str().unwrap(),
    ]));
    let mut reaper = Reaper(vec![fleet.id()]);
    let (dns, port) = (
        field(&ready, "dns").to_string(),
        field(&ready, "smtp_port").to_string(),
    );
    let submission = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let spool = dir.path().join("spool");
    let mut mta = start_mta(&spool, &dns, &port, &submission);
    reaper.0.push(mta.id());
    let acked_path = dir.path().join("acked.txt");
    let mut sender = bin()
        .args([
            "send",
            scenario.to_str().unwrap(),
            "--to",
            &submission,
            "--acked",
        ])
        .arg(&acked_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    // Kill at pseudo-random points while the campaign is being submitted and delivered.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    let started = Instant::now();
    while kills < 5 || sender.try_wait().unwrap().is_none() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(300 + rng % 1200));
        mta.kill().unwrap();
        mta.wait().unwrap();
        kills += 1;
        mta = start_mta(&spool, &dns, &port, &submission);
        reaper.0.push(mta.id());
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "submission never ended"
        );
    }
    let out = sender.wait_with_output().unwrap();
    assert!(out.status.success());
    let acked: BTreeSet<String> = std::fs::read_to_string(&acked_path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        acked.len(),
        20_000,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Wait until every acknowledged message is delivered or bounced.
    let log = spool.join("events.log");
    let deadline = Instant::now() + Duration::from_secs(300);
    let (delivered, bounced, duplicates) = loop {
        // The campaign's copies only (the sender's mailbox also holds DSNs).
        let ids: Vec<String> = stored_message_ids(&fleet_dir.join("mailboxes"))
            .into_iter()
            .filter(|id| acked.contains(id))
            .collect();
        let unique: BTreeSet<String> = ids.iter().cloned().collect();
        let (records, _) = read_log(&log).unwrap();
        let message_of: BTreeMap<u64, String> = records
            .iter()
            .filter_map(|r| match &r.event {
                Event::Injected {
                    msg, message_id, ..
                } => Some((*msg, message_id.clone())),
                _ => None,
            })
            .collect();
        let bounced: BTreeSet<String> = records
            .iter()
            .filter_map(|r| match &r.event {
                Event::Bounced { msg, .. } => message_of.get(msg).cloned(),
                _ => None,
            })
            .collect();
        let missing = acked
            .iter()
            .filter(|id| !unique.contains(*id) && !bounced.contains(*id))
            .count();
        if missing == 0 {
            break (unique.len(), bounced.len(), ids.len() - unique.len());
        }
        assert!(
            Instant::now() < deadline,
            "{missing} messages lost or stuck"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // Nothing is left queued.
    let replay = bin().arg("replay").arg(&spool).output().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&replay.stdout).unwrap();
    assert_eq!(summary["deferred"], 0, "{summary}");
    // A duplicate is a message in flight at a kill: at most the connections open then.
    assert!(
        duplicates <= kills * 3 * 8,
        "{duplicates} duplicates after {kills} kills"
    );
    eprintln!(
        "crash: injected={} kills={kills} delivered={delivered} bounced={bounced} lost=0 duplicates={duplicates}",
        acked.len()
    );
    assert!(bounced > 0);
    assert_eq!(delivered + bounced, acked.len());

    let _ = Command::new("kill").arg(mta.id().to_string()).status();
    mta.wait().unwrap();
    let _ = Command::new("kill").arg(fleet.id().to_string()).status();
    fleet.wait().unwrap();

    // (After the fleet's orderly exit, so that its log is complete.) The bounces, checked against the receiving side rather than the MTA's word: the
    // recipients the MTA bounced are exactly those the fleet refused for good (its own log,
    // written by another process), all at c.test, the one domain the scenario gives unknown
    // users (5% of its third of the campaign: 333 expected, a binomial spread of about 18).
    let (records, _) = read_log(&log).unwrap();
    let rcpt_of: BTreeMap<u64, String> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Injected { msg, rcpt, .. } => Some((*msg, rcpt.to_ascii_lowercase())),
            _ => None,
        })
        .collect();
    let bounced_rcpts: BTreeSet<String> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Bounced { msg, .. } => rcpt_of.get(msg).cloned(),
            _ => None,
        })
        .collect();
    let (fleet_records, _) = read_log(&fleet_dir.join("events.log")).unwrap();
    let refused: BTreeSet<String> = fleet_records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Refused {
                command,
                code,
                rcpt,
                ..
            } if command == "RCPT" && *code >= 500 => Some(rcpt.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    assert_eq!(
        bounced_rcpts.symmetric_difference(&refused).count(),
        0,
        "bounced but not refused: {:?}; refused but not bounced: {:?}",
        bounced_rcpts
            .difference(&refused)
            .take(5)
            .collect::<Vec<_>>(),
        refused
            .difference(&bounced_rcpts)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        bounced_rcpts.iter().all(|r| r.ends_with("@c.test")),
        "only c.test has unknown users"
    );
    assert!(
        (250..=420).contains(&bounced_rcpts.len()),
        "{} unknown users at c.test, the scenario implies about 333",
        bounced_rcpts.len()
    );
}
