//! Recipient extraction, bounce or not, and failed or delayed on bounces mailsim's classifier
//! was not written from: flufl.bounce's samples (tests/data/flufl, see its ORIGIN.md), labelled
//! by flufl.bounce's own tests. The classifier was not written from them; the first figures
//! measured on them are kept below as its held-out result.

use mailsim_bounce::classify_message;
use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn recipients_and_failed_or_delayed_agree_with_flufl_bounce() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/flufl");
    let labels = std::fs::read_to_string(root.join("labels.tsv")).unwrap();
    let (mut files, mut recipients_agree, mut outcome_total, mut outcome_agree) = (0, 0, 0, 0);
    let mut misses = Vec::new();
    for line in labels.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, expected, outcome) = (cols[0], cols[1], cols[2]);
        let expected: BTreeSet<String> = expected
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        let found = classify_message(&std::fs::read(root.join(file)).unwrap());
        let got: BTreeSet<String> = found
            .iter()
            .filter(|c| c.reason != "vacation" && c.reason != "feedback")
            .map(|c| c.recipient.to_ascii_lowercase())
            .collect();
        files += 1;
        if got == expected {
            recipients_agree += 1;
        } else {
            misses.push(format!("{file}: recipients {expected:?}, got {got:?}"));
        }
        if matches!(outcome, "failed" | "delayed") && !found.is_empty() {
            outcome_total += 1;
            let delayed = found.iter().all(|c| c.action.as_deref() == Some("delayed"));
            if delayed == (outcome == "delayed") {
                outcome_agree += 1;
            } else {
                misses.push(format!("{file}: {outcome}, got delayed={delayed}"));
            }
        }
    }
    let share = recipients_agree as f64 / files as f64 * 100.0;
    let outcome_share = outcome_agree as f64 / outcome_total as f64 * 100.0;
    eprintln!(
        "flufl.bounce samples: recipients {recipients_agree}/{files} ({share:.1}%), failed/delayed {outcome_agree}/{outcome_total} ({outcome_share:.1}%)"
    );
    for m in &misses {
        eprintln!("  {m}");
    }
    // First measured 2026-11-30, before anything was changed for these files: recipients 43/51
    // (84.3%), failed/delayed 47/50 (94.0%): the held-out figures. Three fixes followed, each a
    // rule for a family (RFC 3464's Original-Recipient first, an X.400 Final-Recipient skipped;
    // delay warnings written as prose; the original's header fields quoted in the report are
    // not recipients): 47/51 (92.2%) and 50/50. Since then this corpus is no longer unseen.
    // 48/51 (94.1%) once AOL's template was read (its recipients are screen names listed
    // after "the following recipients", local parts at aol.com; BounceParser's corpus has two
    // more of them).
    assert!(
        share >= 94.0,
        "recipient agreement {share:.1}% fell below 94%"
    );
    assert!(
        outcome_share >= 99.0,
        "failed/delayed agreement {outcome_share:.1}% fell below 99%"
    );
}

/// The writers of flufl.bounce's samples, as their file names say (postfix_01.txt, ...), for
/// the writers mailsim knows: held out from the writing of [`mailsim_bounce::origin`], whose
/// clues come from the MTAs' templates and were checked on the Sisimai corpus only.
#[test]
fn writers_of_flufl_samples() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/flufl");
    let mut files: Vec<String> = std::fs::read_dir(root.join("eml"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let (mut named, mut right, mut misses) = (0usize, 0usize, Vec::new());
    for file in &files {
        let expected = match file.split(['_', '.']).next().unwrap_or_default() {
            "postfix" => "postfix",
            "qmail" => "qmail",
            "smtp32" => "imail",
            "yahoo" => "yahoo",
            "microsoft" => "exchange",
            _ => continue,
        };
        let found = classify_message(&std::fs::read(root.join("eml").join(file)).unwrap());
        named += 1;
        let got = found.first().and_then(|c| c.writer.as_deref());
        if got == Some(expected) {
            right += 1;
        } else {
            misses.push(format!("{file}: {expected} -> {got:?}"));
        }
    }
    eprintln!("flufl.bounce samples: writers {right}/{named} recognised");
    // First measured 2026-12-01 before anything was changed for these files: 10/13, with
    // newmail.ru's sample counted as Mail.ru's (another provider: the sender was matched as a
    // substring, which a review found too loose; senders are now matched by whole domain
    // labels and newmailru is no writer mailsim knows): 9/12 held out. Then qmail-send's fixed
    // separator and qmail-remote's "does not like recipient." (both in qmail's source, whatever
    // the greeting says): 11/12. Microsoft CDO's "Non-Delivery Report" stays unknown.
    for m in &misses {
        eprintln!("  {m}");
    }
    assert!(
        right * 10 >= named * 9,
        "{right}/{named} writers recognised"
    );
}
