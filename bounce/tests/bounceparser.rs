//! Recipient extraction, bounce or not, and hard/soft on a third corpus of real bounces that the
//! classifier was not written from: Mail::DeliveryStatus::BounceParser's test messages
//! (tests/data/bounceparser, see its ORIGIN.md), labelled by that module's own tests. Its
//! `std_reason` vocabulary is coarser than Sisimai's; where a reason maps onto Sisimai's words
//! it is scored too.

mod common;

use common::reasons_of;
use mailsim_bounce::classify_message;
use std::collections::BTreeSet;
use std::path::Path;

/// BounceParser's `std_reason` read as hard or soft (None: it says neither).
fn hard_of(std_reason: &str) -> Option<bool> {
    match std_reason {
        "user_unknown" | "domain_error" => Some(true),
        "over_quota" | "spam" | "message_too_large" => Some(false),
        _ => None,
    }
}

#[test]
fn recipients_bounce_or_not_and_hard_or_soft_agree_with_bounceparser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bounceparser");
    let labels = std::fs::read_to_string(root.join("labels.tsv")).unwrap();
    let (mut bounce_total, mut bounce_agree) = (0usize, 0usize);
    let (mut rcpt_total, mut rcpt_agree) = (0usize, 0usize);
    let (mut hard_total, mut hard_agree) = (0usize, 0usize);
    let (mut reason_total, mut reason_agree) = (0usize, 0usize);
    let mut misses = Vec::new();
    for line in labels.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let col = |i: usize| cols.get(i).copied().unwrap_or_default().trim();
        let (file, is_bounce, rcpts, reasons) = (col(0), col(1), col(2), col(3));
        let found = classify_message(&std::fs::read(root.join("corpus").join(file)).unwrap());
        // An auto-reply or a complaint is not a bounce in BounceParser's sense either.
        let bounces: Vec<&mailsim_bounce::Classified> = found
            .iter()
            .filter(|c| !matches!(c.reason.as_str(), "vacation" | "feedback"))
            .collect();
        if matches!(is_bounce, "yes" | "no") {
            bounce_total += 1;
            let found_bounce = !bounces.is_empty();
            if (is_bounce == "yes") == found_bounce {
                bounce_agree += 1;
            } else {
                misses.push(format!(
                    "{file}: is_bounce {is_bounce}, found {}",
                    bounces.len()
                ));
            }
        }
        if rcpts.is_empty() {
            continue;
        }
        let expected: Vec<String> = rcpts
            .split(',')
            .map(|a| a.trim().to_ascii_lowercase())
            .collect();
        let got: BTreeSet<String> = bounces
            .iter()
            .map(|c| c.recipient.to_ascii_lowercase())
            .collect();
        rcpt_total += 1;
        if expected.iter().cloned().collect::<BTreeSet<_>>() == got {
            rcpt_agree += 1;
        } else {
            misses.push(format!("{file}: recipients {expected:?}, got {got:?}"));
        }
        let reasons: Vec<&str> = reasons
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .collect();
        for (i, addr) in expected.iter().enumerate() {
            // One reason for all, or one per recipient.
            let Some(std_reason) = reasons.get(i).or(reasons.first()).copied() else {
                continue;
            };
            let Some(c) = bounces
                .iter()
                .find(|c| c.recipient.eq_ignore_ascii_case(addr))
            else {
                continue;
            };
            if let Some(hard) = hard_of(std_reason) {
                hard_total += 1;
                if c.hard == hard {
                    hard_agree += 1;
                } else {
                    misses.push(format!(
                        "{file} {addr}: {std_reason} (hard {hard}), got {} hard {} ({:?})",
                        c.reason,
                        c.hard,
                        c.diagnostic.chars().take(120).collect::<String>()
                    ));
                }
            }
            if let Some(allowed) = reasons_of(std_reason) {
                reason_total += 1;
                if allowed.contains(&c.reason.as_str()) {
                    reason_agree += 1;
                } else {
                    misses.push(format!(
                        "{file} {addr}: {std_reason}, got {} ({:?})",
                        c.reason,
                        c.diagnostic.chars().take(120).collect::<String>()
                    ));
                }
            }
        }
    }
    let pct = |a: usize, n: usize| a as f64 / n.max(1) as f64 * 100.0;
    eprintln!(
        "BounceParser corpus: bounce or not {bounce_agree}/{bounce_total} ({:.1}%), recipients {rcpt_agree}/{rcpt_total} ({:.1}%), hard/soft {hard_agree}/{hard_total} ({:.1}%), reason {reason_agree}/{reason_total} ({:.1}%)",
        pct(bounce_agree, bounce_total),
        pct(rcpt_agree, rcpt_total),
        pct(hard_agree, hard_total),
        pct(reason_agree, reason_total)
    );
    for m in &misses {
        eprintln!("  {m}");
    }
    // First measured 2026-12-01, before anything was changed for these files (the held-out
    // figures): bounce or not 113/122, recipients 35/38, hard/soft 21/31, reason 20/31 with
    // user_unknown read as userunknown or filtered only. BounceParser's user_unknown also
    // labels closed and moved mailboxes ("Mailbox currently suspended", "recipient no longer
    // on server"): read as suspend and hasmoved too, reason 25/31. Then five wordings of an
    // unknown recipient added to their family ("not a known user", "no mail box", "not an
    // active address", "bad recipient", "bad_recipient") and a reply quoting "Rcpt <address>" read as the RCPT reply:
    // hard/soft 26/31, reason 30/31 (the Sisimai corpus unchanged). Since then this corpus is
    // no longer unseen. The hard/soft misses left are words the two vocabularies weigh
    // differently (a suspended account, an unknown user refused after DATA: soft for Sisimai).
    assert!(
        pct(bounce_agree, bounce_total) >= 92.0,
        "bounce or not below 92%"
    );
    // 35/38 until AOL's screen-name template was read (2026-12-02): 37/38.
    assert!(pct(rcpt_agree, rcpt_total) >= 97.0, "recipients below 97%");
    assert!(pct(hard_agree, hard_total) >= 83.0, "hard/soft below 83%");
    assert!(pct(reason_agree, reason_total) >= 96.0, "reason below 96%");
}
