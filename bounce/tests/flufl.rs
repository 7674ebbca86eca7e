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
    assert!(
        share >= 92.0,
        "recipient agreement {share:.1}% fell below 92%"
    );
    assert!(
        outcome_share >= 99.0,
        "failed/delayed agreement {outcome_share:.1}% fell below 99%"
    );
}
