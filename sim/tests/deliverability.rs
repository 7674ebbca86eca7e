//! The deliverability scenarios (scenarios/*.toml with `[reputation]`), each run in virtual time
//! and held to the direction its description promises. Placement is read from what the
//! receiving servers stored (inbox or Junk folder, dated by their Received header), not from
//! the run's own counts; the events are checked against those files.

mod common;

use mailsim::runner::VIRTUAL_EPOCH_MS;
use mailsim::scenario::Scenario;
use mailsim_events::{Event, LogReader, Record};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

const DAY_MS: u64 = 86_400_000;

/// (provider, subject) -> (day, score, cause) of each `reputation` event.
type Scores = BTreeMap<(String, String), Vec<(u32, u32, String)>>;

struct Run {
    dir: tempfile::TempDir,
    records: Vec<Record>,
}

impl Run {
    fn of(scenario: &Scenario) -> Run {
        let dir = tempfile::tempdir().unwrap();
        common::run(scenario, dir.path());
        let records = LogReader::open(&dir.path().join("events.log"))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        Run { dir, records }
    }

    fn named(name: &str) -> Run {
        Run::of(&load(name))
    }

    fn mailboxes(&self) -> PathBuf {
        self.dir.path().join("mailboxes")
    }

    fn events(&self) -> impl Iterator<Item = (u32, &Event)> {
        self.records
            .iter()
            .map(|r| (((r.ts - VIRTUAL_EPOCH_MS) / DAY_MS) as u32, &r.event))
    }

    /// (provider, subject) -> scores by day, from the `reputation` events.
    fn reputation(&self) -> Scores {
        let mut out: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for (_, e) in self.events() {
            if let Event::Reputation {
                provider,
                subject,
                day,
                score,
                cause,
            } = e
            {
                out.entry((provider.clone(), subject.clone()))
                    .or_default()
                    .push((*day, *score, cause.clone()));
            }
        }
        out
    }
}

fn load(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).unwrap()
}

/// One stored copy as the receiving server wrote it.
struct Copy {
    day: u32,
    spam: bool,
    rcpt: String,
    message_id: String,
}

/// Every campaign copy the recipient servers stored: its folder (INBOX or `folders/Junk`),
/// its recipient (Delivered-To) and its day (the date of the receiver's Received header).
fn stored(root: &Path) -> Vec<Copy> {
    common::maildir_files(root)
        .into_iter()
        // The recipient servers keep every copy under `<host>/inbox`; the sender's own
        // mailboxes (bounces, complaints) are `<domain>/<user>`.
        .filter(|f| {
            f.strip_prefix(root).is_ok_and(|rel| {
                rel.components()
                    .nth(1)
                    .is_some_and(|c| c.as_os_str() == "inbox")
            })
        })
        .map(|f| {
            let raw = std::fs::read(&f).unwrap();
            let text = String::from_utf8_lossy(&raw);
            let header = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_else(|| panic!("{}: no {name}", f.display()))
                    .trim()
                    .to_string()
            };
            let received = header("Received:");
            let date = received.rsplit_once(';').unwrap().1.trim().to_string();
            let ts = mail_parser::DateTime::parse_rfc822(&date)
                .unwrap_or_else(|| panic!("{date:?}"))
                .to_timestamp() as u64
                * 1000;
            Copy {
                day: ((ts - VIRTUAL_EPOCH_MS) / DAY_MS) as u32,
                spam: f.components().any(|c| c.as_os_str() == "Junk"),
                rcpt: header("Delivered-To:"),
                message_id: common::message_id(&text).unwrap(),
            }
        })
        .collect()
}

/// Inbox share (percent) of the copies stored on the days in `days`.
fn inbox_share(copies: &[Copy], days: std::ops::RangeInclusive<u32>) -> f64 {
    let on: Vec<&Copy> = copies.iter().filter(|c| days.contains(&c.day)).collect();
    assert!(!on.is_empty(), "nothing stored on days {days:?}");
    100.0 * on.iter().filter(|c| !c.spam).count() as f64 / on.len() as f64
}

/// The `placed` events agree with the files: the same copies, in the same folders.
fn placed_matches_files(run: &Run, copies: &[Copy]) {
    let files: BTreeSet<(String, String, bool)> = copies
        .iter()
        .map(|c| (c.rcpt.clone(), c.message_id.clone(), c.spam))
        .collect();
    let events: BTreeSet<(String, String, bool)> = run
        .events()
        .filter_map(|(_, e)| match e {
            Event::Placed {
                rcpt,
                message_id,
                folder,
                ..
            } => Some((rcpt.clone(), message_id.clone(), folder == "spam")),
            _ => None,
        })
        .collect();
    assert_eq!(files.len(), copies.len(), "a copy stored twice");
    assert_eq!(files, events);
}

#[test]
fn a_warm_up_by_schedule_builds_reputation_and_reaches_the_inbox() {
    let run = Run::named("ip-warmup-by-schedule");
    let copies = stored(&run.mailboxes());
    placed_matches_files(&run, &copies);
    let (first, last_week) = (inbox_share(&copies, 0..=0), inbox_share(&copies, 23..=29));
    assert!(last_week >= 90.0, "last week {last_week:.1}% inbox");
    assert!(first < last_week, "{first:.1}% -> {last_week:.1}%");
    for ((provider, subject), scores) in run.reputation() {
        let (start, end) = (scores[0].1, scores[scores.len() - 1].1);
        assert!(end > start, "{provider} {subject}: {start} -> {end}");
        assert!(
            scores.iter().all(|(_, _, cause)| cause != "volume"),
            "{provider} {subject} throttled for volume: {scores:?}"
        );
    }
    // The Junk folder is what an IMAP client of the receiving mailbox sees.
    let store = mailsim_mailbox::folders::Mailstore::new(&run.mailboxes(), 0);
    let user = "inbox@mx1.gmail.test";
    assert_eq!(store.list(user), ["INBOX", "Junk"]);
    let junk = store.folder(user, "Junk").unwrap();
    let in_junk = mailsim_mailbox::folders::lock(&junk).messages.len();
    let gmail_spam = copies
        .iter()
        .filter(|c| c.spam && c.rcpt.ends_with("@gmail.test"))
        .count();
    assert_eq!(in_junk, gmail_spam);
    // The recipients' requests reached the sender's tracking server: every open got the
    // pixel, every click its redirect.
    let (mut opens, mut clicks) = (0, 0);
    for (_, e) in run.events() {
        match e {
            Event::Opened {
                http_status: status,
                url,
                ..
            } => {
                assert_eq!(*status, 200, "{url}");
                opens += 1;
            }
            Event::Clicked {
                http_status: status,
                url,
                ..
            } => {
                assert_eq!(*status, 302, "{url}");
                clicks += 1;
            }
            _ => {}
        }
    }
    let delivered = copies.len() as f64;
    assert!(
        opens as f64 > 0.15 * delivered && clicks > 0,
        "{opens} opens, {clicks} clicks of {delivered}"
    );
}

#[test]
fn full_volume_from_the_first_day_is_throttled_and_junked() {
    let run = Run::named("ip-warmup-too-fast");
    let copies = stored(&run.mailboxes());
    placed_matches_files(&run, &copies);
    // Three providers, each taking 300 from a new IP on its first day (the scenario's
    // `new_daily`): 900 of the 3,000.
    let day0 = copies.iter().filter(|c| c.day == 0).count();
    assert_eq!(day0, 900, "stored on the first day");
    let early = inbox_share(&copies, 1..=3);
    assert!(early < 75.0, "days 1-3: {early:.1}% inbox");
    for ((provider, subject), scores) in run.reputation() {
        if subject.starts_with("ip:") {
            // From the start of 50, down for the volume.
            let low = scores.iter().take(3).map(|s| s.1).min().unwrap();
            assert!(low < 45, "{provider} {subject}: {scores:?}");
            assert_eq!(scores[0].2, "volume", "{provider}");
        }
    }
}

#[test]
fn a_dirty_list_costs_reputation_until_it_is_cleaned() {
    let run = Run::named("dirty-list");
    let copies = stored(&run.mailboxes());
    placed_matches_files(&run, &copies);
    // Addresses that bounced hard on the first send are never mailed again.
    let bounced: BTreeSet<String> = run
        .events()
        .filter_map(|(day, e)| match e {
            Event::Bounced {
                rcpt, hard: true, ..
            } if day == 0 => Some(rcpt.clone()),
            _ => None,
        })
        .collect();
    assert!(bounced.len() > 80, "{} hard bounces", bounced.len());
    let refused_later = run.events().any(|(day, e)| {
        matches!(e, Event::Refused { rcpt, command, .. } if day > 0 && command == "RCPT" && bounced.contains(rcpt))
    });
    assert!(!refused_later, "a hard-bounced address was tried again");
    let (first, worst, last) = (
        inbox_share(&copies, 0..=0),
        (1..=4)
            .map(|d| inbox_share(&copies, d..=d))
            .fold(100.0, f64::min),
        inbox_share(&copies, 9..=11),
    );
    assert!(worst + 20.0 < first, "{first:.1}% -> {worst:.1}%");
    assert!(last > worst + 20.0, "{worst:.1}% -> {last:.1}%");
    for ((provider, subject), scores) in run.reputation() {
        let min = scores.iter().map(|s| s.1).min().unwrap();
        let end = scores[scores.len() - 1].1;
        // From the scenario's starting 70, down by at least 10, and back up by 10.
        assert!(
            min <= 60 && end > min + 10,
            "{provider} {subject}: {scores:?}"
        );
        assert!(
            scores
                .iter()
                .any(|s| s.2 == "spam-traps" || s.2 == "unknown-users"),
            "{provider} {subject}: {scores:?}"
        );
    }
}

/// Spam share of each day's copies after the 5,000th (the bulk threshold), and before it.
fn after_bulk_threshold(copies: &[Copy], run: &Run) -> (f64, f64) {
    // The order of placement is the order of the events.
    let order: HashMap<(String, String), usize> = run
        .events()
        .filter_map(|(_, e)| match e {
            Event::Placed {
                rcpt, message_id, ..
            } => Some((rcpt.clone(), message_id.clone())),
            _ => None,
        })
        .enumerate()
        .map(|(i, k)| (k, i))
        .collect();
    let mut by_day: BTreeMap<u32, Vec<&Copy>> = BTreeMap::new();
    for c in copies {
        by_day.entry(c.day).or_default().push(c);
    }
    let (mut before, mut after) = ((0, 0), (0, 0));
    for (_, mut day) in by_day {
        day.sort_by_key(|c| order[&(c.rcpt.clone(), c.message_id.clone())]);
        for (i, c) in day.iter().enumerate() {
            let side = if i < 5_000 { &mut before } else { &mut after };
            side.0 += c.spam as u32;
            side.1 += 1;
        }
    }
    let share = |(spam, n): (u32, u32)| 100.0 * spam as f64 / n.max(1) as f64;
    (share(before), share(after))
}

#[test]
fn bulk_mail_without_one_click_unsubscribe_goes_to_spam_at_gmail() {
    let run = Run::named("no-one-click-unsubscribe");
    let copies = stored(&run.mailboxes());
    placed_matches_files(&run, &copies);
    let (before, after) = after_bulk_threshold(&copies, &run);
    assert!(before < 10.0, "{before:.1}% spam under the threshold");
    assert!(after > 60.0, "{after:.1}% spam over the threshold");
    assert!(run.events().any(
        |(_, e)| matches!(e, Event::Placed { cause, .. } if cause == "no-one-click-unsubscribe")
    ));
    // The same campaign with RFC 8058 one-click unsubscribe.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/no-one-click-unsubscribe.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "list_unsubscribe = \"mailto\"",
        "list_unsubscribe = \"one-click\"",
    );
    let fixed = Run::of(&Scenario::parse(&text, &path).unwrap());
    let copies = stored(&fixed.mailboxes());
    let (_, after) = after_bulk_threshold(&copies, &fixed);
    assert!(
        after < 10.0,
        "with one-click: {after:.1}% spam over the threshold"
    );
    // Its messages carry what RFC 8058 asks for.
    let file = common::maildir_files(&fixed.mailboxes().join("mx1.gmail.test"))
        .into_iter()
        .next()
        .unwrap();
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    assert!(text.contains("List-Unsubscribe: <https://127.0.0.1:"));
}

#[test]
fn sunsetting_the_unengaged_raises_placement_for_the_rest() {
    let run = Run::named("sunset-unengaged");
    let copies = stored(&run.mailboxes());
    placed_matches_files(&run, &copies);
    let (before, after) = (inbox_share(&copies, 2..=4), inbox_share(&copies, 10..=13));
    assert!(after > before + 20.0, "{before:.1}% -> {after:.1}%");
    // Who was sunset had been mailed 5 times since their last open (by the recipients' own
    // requests to the tracking server).
    let mut last_open: HashMap<String, u64> = HashMap::new();
    let mut mailed: HashMap<String, Vec<u64>> = HashMap::new();
    let mut sunset = 0;
    for r in &run.records {
        match &r.event {
            Event::Opened {
                rcpt,
                http_status: 200,
                ..
            } => {
                last_open.insert(rcpt.to_ascii_lowercase(), r.ts);
            }
            Event::Injected { rcpt, .. } => {
                mailed
                    .entry(rcpt.to_ascii_lowercase())
                    .or_default()
                    .push(r.ts);
            }
            Event::SuppressionAdded { rcpt, reason } if reason == "unengaged" => {
                let since = last_open.get(rcpt).copied().unwrap_or(0);
                let after = mailed[rcpt].iter().filter(|t| **t >= since).count();
                assert!(after >= 5, "{rcpt}: sunset {after} mailings after an open");
                sunset += 1;
            }
            _ => {}
        }
    }
    assert!(sunset > 500, "{sunset} sunset");
    // Opens per copy stored, before and after.
    let rate = |days: std::ops::RangeInclusive<u32>| {
        let stored = copies.iter().filter(|c| days.contains(&c.day)).count() as f64;
        let opens = run
            .events()
            .filter(|(d, e)| days.contains(d) && matches!(e, Event::Opened { .. }))
            .count() as f64;
        opens / stored
    };
    assert!(
        rate(9..=13) > 2.0 * rate(1..=4),
        "{} -> {}",
        rate(1..=4),
        rate(9..=13)
    );
}

#[test]
fn the_deliverability_scenarios_replay_exactly() {
    // Determinism: the same seed gives the same log, byte for byte.
    let sc = load("sunset-unengaged");
    let (a, b) = (Run::of(&sc), Run::of(&sc));
    let bytes = |r: &Run| std::fs::read(r.dir.path().join("events.log")).unwrap();
    assert!(bytes(&a) == bytes(&b), "two runs of one seed differ");
}
