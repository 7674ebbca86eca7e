//! Reason agreement with Sisimai's own expectations on real bounce mails
//! (tests/data/sisimai, see its ORIGIN.md). Classification uses message content only.

mod common;

use mailsim_bounce::classify_message;
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn reason_agreement_on_the_sisimai_corpus_is_at_least_95_percent() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sisimai");
    let labels = std::fs::read_to_string(root.join("labels.tsv")).unwrap();
    let mut cache: BTreeMap<String, Vec<mailsim_bounce::Classified>> = BTreeMap::new();
    let (mut total, mut agree) = (0usize, 0usize);
    let mut misses = Vec::new();
    for line in labels.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, index) = (cols[0], cols[5].parse::<usize>().unwrap());
        // Labelled with Sisimai's vocabulary of 2025; read in the current one.
        let expected = mailsim_bounce::reason::current_name(cols[1]);
        let found = cache
            .entry(file.to_string())
            .or_insert_with(|| classify_message(&std::fs::read(root.join(file)).unwrap()));
        total += 1;
        let got = found.get(index - 1);
        if got.is_some_and(|c| c.reason == expected) {
            agree += 1;
        } else {
            misses.push(format!(
                "{file}#{index}: expected {expected}, got {:?}",
                got.map(|c| (
                    &c.reason,
                    &c.status,
                    &c.recipient,
                    &c.why,
                    c.diagnostic.chars().take(200).collect::<String>()
                ))
            ));
        }
    }
    let mut false_positives = 0;
    for entry in std::fs::read_dir(root.join("not")).unwrap() {
        let path = entry.unwrap().path();
        if !classify_message(&std::fs::read(&path).unwrap()).is_empty() {
            false_positives += 1;
            misses.push(format!(
                "{}: not a bounce, but something was found",
                path.display()
            ));
        }
    }
    let share = agree as f64 / total as f64 * 100.0;
    eprintln!(
        "sisimai corpus: {agree}/{total} rows agree ({share:.1}%), {false_positives} false positives"
    );
    for m in &misses {
        eprintln!("  {m}");
    }
    assert!(share >= 95.0, "agreement {share:.1}% is below 95%");
    // not/rb-issue-368-bug.eml names a target address and "reject reason: Mailbox full"; read
    // by its content it is a bounce, and we report it as one (Sisimai does not).
    assert!(
        false_positives <= 1,
        "{false_positives} messages that are not bounces were classified"
    );
}

/// One labelled row of the corpus: file, Sisimai's reason, hard/soft, recipient index.
struct Row {
    file: String,
    reason: String,
    hard_or_soft: String,
    index: usize,
}

fn rows(root: &Path) -> Vec<Row> {
    std::fs::read_to_string(root.join("labels.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            Row {
                file: cols[0].to_string(),
                reason: mailsim_bounce::reason::current_name(cols[1]).to_string(),
                hard_or_soft: cols[3].to_string(),
                index: cols[5].parse().unwrap(),
            }
        })
        .collect()
}

/// The fold of a file: FNV-1a of its name, so the split is fixed and does not follow the
/// corpus's alphabetical grouping by MTA.
fn fold_of(file: &str, k: u64) -> u64 {
    file.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) % k
}

/// Figures of one k-fold evaluation.
struct Folds {
    mean: f64,
    worst: f64,
    hard_share: f64,
}

/// Issue 16's honest evaluation: 10-fold cross-validation by file. The rules are hand-written,
/// so what is "fit" is the set of rules; a fold is scored with every unit left out that nothing
/// outside that fold supports (a rule only that fold's files support could not have been
/// written from the other nine). A unit is a family of wordings (one meaning, several
/// wordings, each family documented with its source) or, stricter, every single wording. A row
/// supports the unit that decided it rightly, and every unit of its reason that occurs in its
/// diagnostic. Prints mean and worst fold agreement, hard/soft agreement, and the misses.
fn ten_fold(unit: mailsim_bounce::reason::Unit, other_corpora: bool) -> Folds {
    const K: u64 = 10;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sisimai");
    let rows = rows(&root);
    let classify = |file: &str| classify_message(&std::fs::read(root.join(file)).unwrap());
    // With every rule: what decided each row, and whether it agreed.
    let mut full: BTreeMap<String, Vec<mailsim_bounce::Classified>> = BTreeMap::new();
    for r in &rows {
        full.entry(r.file.clone())
            .or_insert_with(|| classify(&r.file));
    }
    let units = mailsim_bounce::reason::units(unit);
    let all: std::collections::HashSet<&'static str> = units.iter().map(|(_, u)| *u).collect();
    let (mut worst, mut sum) = (100.0f64, 0.0f64);
    let (mut total, mut hard_total, mut hard_agree) = (0usize, 0usize, 0usize);
    let mut lines = Vec::new();
    let mut misses = Vec::new();
    // Units another labelled corpus supports (in every fold: none of its files is scored).
    let always: std::collections::HashSet<&'static str> = if other_corpora {
        bounceparser_support(unit, &units)
    } else {
        Default::default()
    };
    for fold in 0..K {
        let mut supported = always.clone();
        for r in rows.iter().filter(|r| fold_of(&r.file, K) != fold) {
            let Some(c) = full[&r.file].get(r.index - 1) else {
                continue;
            };
            if c.reason == r.reason
                && let Some(u) = mailsim_bounce::reason::unit_of(unit, &c.why)
            {
                supported.insert(u);
            }
            // A unit of this row's reason that occurs in its text could have been written
            // from it, whether or not it decided.
            for (reason, u) in &units {
                if *reason == r.reason
                    && mailsim_bounce::reason::fires(unit, reason, u, &c.diagnostic)
                {
                    supported.insert(*u);
                }
            }
        }
        let left_out: std::collections::HashSet<&'static str> =
            all.difference(&supported).copied().collect();
        let scored: Vec<&Row> = rows
            .iter()
            .filter(|r| fold_of(&r.file, K) == fold)
            .collect();
        let (mut n, mut agree) = (0usize, 0usize);
        mailsim_bounce::reason::without_phrases(unit, left_out, || {
            let mut cache: BTreeMap<&str, Vec<mailsim_bounce::Classified>> = BTreeMap::new();
            for r in &scored {
                let found = cache.entry(&r.file).or_insert_with(|| classify(&r.file));
                let got = found.get(r.index - 1);
                n += 1;
                if got.is_some_and(|c| c.reason == r.reason) {
                    agree += 1;
                } else {
                    // What decided the row with every rule, to tell a row lost to a left-out
                    // unit from one the full classifier gets wrong too.
                    let with_all = full[&r.file]
                        .get(r.index - 1)
                        .map(|c| format!("{} by {:?}", c.reason, c.why));
                    misses.push(format!(
                        "{}#{}: {} -> {:?} (with every rule: {})",
                        r.file,
                        r.index,
                        r.reason,
                        got.map(|c| (
                            &c.reason,
                            &c.status,
                            &c.why,
                            c.diagnostic.chars().take(160).collect::<String>()
                        )),
                        with_all.unwrap_or_default()
                    ));
                }
                if matches!(r.hard_or_soft.as_str(), "hard" | "soft") {
                    hard_total += 1;
                    let hard = got.is_some_and(|c| c.hard);
                    if hard == (r.hard_or_soft == "hard") {
                        hard_agree += 1;
                    }
                }
            }
        });
        let share = agree as f64 / n as f64 * 100.0;
        lines.push(format!("fold {fold}: {agree}/{n} ({share:.1}%)"));
        worst = worst.min(share);
        sum += share;
        total += n;
    }
    let mean = sum / K as f64;
    let hard_share = hard_agree as f64 / hard_total as f64 * 100.0;
    eprintln!(
        "10-fold over {total} rows, leaving out by {unit:?}{}: mean {mean:.1}%, worst fold {worst:.1}%; hard/soft {hard_agree}/{hard_total} ({hard_share:.1}%)",
        if other_corpora {
            ", trained on the other folds and BounceParser's corpus"
        } else {
            ""
        }
    );
    for l in lines.iter().chain(&misses) {
        eprintln!("  {l}");
    }
    Folds {
        mean,
        worst,
        hard_share,
    }
}

#[test]
fn ten_fold_agreement_without_the_rules_only_the_scored_fold_supports() {
    use mailsim_bounce::reason::Unit;
    let by_family = ten_fold(Unit::Family, false);
    let by_wording = ten_fold(Unit::Wording, false);
    let by_wording_lists = ten_fold(Unit::WordingWholeLists, false);
    let by_wording_more = ten_fold(Unit::Wording, true);
    // Measured 2026-12-03 (bounds are these figures less rounding, so a change that overfits
    // fails):
    // - by wording (every hand-chosen wording its own unit, every fragment of the providers'
    //   published replies and of the MTAs' messages, every name of the vocabulary: the
    //   strict, honest figure): mean 84.9%, worst fold 72.7%, hard/soft 96.0% (81.7 / 63.6 /
    //   95.4 before the pairs for lost connections, failed name service, null MX, refused
    //   clients and missing reverse DNS, the providers' and MTAs' lists, and the extraction
    //   fixes of 2026-12-01; 84.2 / 69.7 / 96.0 before the pair for repeated header fields);
    // - the same with a list no wording of which was picked as one unit (the vocabulary's
    //   names; OpenSMTPD's mta.c failures and Sendmail's sysexits replies, each every message
    //   of its source): mean 87.1%, worst 75.8%, hard/soft 97.2%. It keeps in wordings only
    //   one fold's files hold (the Dragonfly samples name their reason), so it flatters;
    // - by wording, trained on the other nine folds and on BounceParser's labelled corpus (a
    //   unit it supports is kept in every fold; none of its files is scored): mean 85.7%,
    //   worst fold 72.7%, hard/soft 96.6%;
    // - by family: mean 94.2%, worst fold 90.9%, hard/soft 98.1% (93.9% and 87.9% before
    //   Sendmail's "Remote protocol error" gave way to the remote's reply in its transcript,
    //   2026-12-05; 93.5% before STARTTLS's
    //   refusals had a family of their own, failedstarttls; 93.2% before the reporting
    //   MTA's gloss was set apart from the reply it quotes). This flatters more: a
    //   wording only the scored file holds stays in when another wording of its family is
    //   supported.
    // Never left out: the status-code tables, the command read from the prose, the provider
    // rules keyed on the answering host, the writer clues, and the two purpose clauses taken
    // out before reading (from Google's published replies). Each pair family is one unit
    // either way (a subject and a predicate within a few words: a family by construction).
    for (name, f, mean, worst, hard) in [
        ("family", &by_family, 94.1, 90.8, 98.0),
        ("wording", &by_wording, 84.8, 72.6, 95.9),
        ("wording, whole lists", &by_wording_lists, 87.0, 75.7, 97.1),
        (
            "wording and BounceParser",
            &by_wording_more,
            85.6,
            72.6,
            96.5,
        ),
    ] {
        assert!(
            f.mean >= mean,
            "by {name}: mean fold agreement {:.1}% fell below {mean}%",
            f.mean
        );
        assert!(
            f.worst >= worst,
            "by {name}: worst fold agreement {:.1}% fell below {worst}%",
            f.worst
        );
        assert!(
            f.hard_share >= hard,
            "by {name}: hard/soft agreement {:.1}% fell below {hard}%",
            f.hard_share
        );
    }
}

/// The units BounceParser's labelled corpus (tests/data/bounceparser) supports: a unit that
/// decided one of the reasons its label allows, or a unit of an allowed reason that occurs in
/// the text. Its `std_reason` is coarser than Sisimai's: each stands for a set of reasons.
fn bounceparser_support(
    unit: mailsim_bounce::reason::Unit,
    units: &[(&'static str, &'static str)],
) -> std::collections::HashSet<&'static str> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bounceparser");
    let labels = std::fs::read_to_string(root.join("labels.tsv")).unwrap();
    let mut supported = std::collections::HashSet::new();
    for line in labels.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let col = |i: usize| cols.get(i).copied().unwrap_or_default().trim();
        // One std_reason for the whole message (the labels with several are skipped).
        let Some(allowed) = common::reasons_of(col(3)) else {
            continue;
        };
        let found = classify_message(&std::fs::read(root.join("corpus").join(col(0))).unwrap());
        for c in &found {
            if allowed.contains(&c.reason.as_str())
                && let Some(u) = mailsim_bounce::reason::unit_of(unit, &c.why)
            {
                supported.insert(u);
            }
            for (reason, u) in units {
                if allowed.contains(reason)
                    && mailsim_bounce::reason::fires(unit, reason, u, &c.diagnostic)
                {
                    supported.insert(*u);
                }
            }
        }
    }
    supported
}

/// The writer a bounce's file is named after: Sisimai names each sample by the module that
/// parses it (`lhost-postfix-12.eml`), a label we did not write. Some of its modules are one
/// writer here (Exchange 2003 and 2007; Gmail, Google Groups and Google Workspace bounces are
/// Gmail's; Outlook.com and Office 365 are Exchange Online, whose templates are Exchange's), `x1`..`x6` are unnamed MTAs.
fn writer_named(file: &str) -> Option<&'static str> {
    let name = file.strip_prefix("eml/lhost-")?.rsplit_once('-')?.0;
    Some(match name {
        "exchange2003" | "exchange2007" | "office365" | "outlook" => "exchange",
        "gmail" | "googlegroups" | "googleworkspace" => "gmail",
        "amazonses" => "amazon ses",
        "amazonworkmail" => "amazon workmail",
        "mailru" => "mail.ru",
        "mfilter" => "m-filter",
        "messagingserver" => "messaging server",
        "trendmicro" => "trend micro",
        "v5sendmail" => "sendmail v5",
        "imailserver" => "imail",
        "notes" => "domino",
        "apachejames" => "james",
        "postfix" => "postfix",
        "sendmail" => "sendmail",
        "exim" => "exim",
        "qmail" => "qmail",
        "courier" => "courier",
        "opensmtpd" => "opensmtpd",
        "dragonfly" => "dragonfly",
        "yahoo" => "yahoo",
        "gmx" => "gmx",
        "yandex" => "yandex",
        "zoho" => "zoho",
        "amavis" => "amavis",
        "surfcontrol" => "surfcontrol",
        "mimecast" => "mimecast",
        _ => return None,
    })
}

/// Issue 16, item 1: the writer of a bounce is recognised from its template, header fields and
/// sender. Scored against the module Sisimai names each sample after (for the writers mailsim
/// knows); printed: how many were recognised, how many wrongly.
#[test]
fn writers_are_recognised_as_sisimai_names_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sisimai");
    let (mut named, mut right, mut wrong) = (0usize, 0usize, Vec::new());
    let mut files: Vec<String> = std::fs::read_dir(root.join("eml"))
        .unwrap()
        .map(|e| format!("eml/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    files.sort();
    for file in &files {
        let Some(expected) = writer_named(file) else {
            continue;
        };
        let raw = std::fs::read(root.join(file)).unwrap();
        let found = classify_message(&raw);
        let Some(first) = found.first() else {
            continue;
        };
        named += 1;
        match first.writer.as_deref() {
            Some(w) if w == expected => right += 1,
            other => wrong.push(format!("{file}: {expected} -> {other:?}")),
        }
    }
    let share = right as f64 / named as f64 * 100.0;
    eprintln!("writers: {right}/{named} recognised as Sisimai names them ({share:.1}%)");
    for w in &wrong {
        eprintln!("  {w}");
    }
    assert!(share >= 90.0, "writers recognised {share:.1}% < 90%");
}
