//! Reason agreement with Sisimai's own expectations on real bounce mails
//! (tests/data/sisimai, see its ORIGIN.md). Classification uses message content only.

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

/// Issue 16's honest evaluation: 10-fold cross-validation by file. The rules are hand-written,
/// so what is "fit" is the set of phrases; a fold is scored with every phrase left out that
/// nothing outside that fold supports (a phrase only that fold's files support could not have
/// been written from the other nine). A row supports a phrase that decided it rightly, and
/// every phrase of its reason that occurs in its diagnostic. The mean and worst fold agreement, and hard/soft
/// agreement, are printed; the bounds are today's figures, so a change that overfits fails.
#[test]
fn ten_fold_agreement_without_the_phrases_only_the_scored_fold_supports() {
    const K: u64 = 10;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sisimai");
    let rows = rows(&root);
    let classify = |file: &str| classify_message(&std::fs::read(root.join(file)).unwrap());
    // With every phrase: what decided each row, and whether it agreed.
    let mut full: BTreeMap<String, Vec<mailsim_bounce::Classified>> = BTreeMap::new();
    for r in &rows {
        full.entry(r.file.clone())
            .or_insert_with(|| classify(&r.file));
    }
    let all: std::collections::HashSet<&'static str> =
        mailsim_bounce::reason::phrases().map(|(_, p)| p).collect();
    let (mut worst, mut sum) = (100.0f64, 0.0f64);
    let (mut total, mut hard_total, mut hard_agree) = (0usize, 0usize, 0usize);
    let mut lines = Vec::new();
    let mut misses = Vec::new();
    for fold in 0..K {
        let mut supported = std::collections::HashSet::new();
        for r in rows.iter().filter(|r| fold_of(&r.file, K) != fold) {
            let Some(c) = full[&r.file].get(r.index - 1) else {
                continue;
            };
            if c.reason == r.reason
                && let Some(p) = all.get(c.why.as_str())
            {
                supported.insert(*p);
            }
            // A phrase of this row's reason that occurs in its text could have been written
            // from it, whether or not it decided.
            for (reason, p) in mailsim_bounce::reason::phrases() {
                if reason == r.reason && mailsim_bounce::reason::fires(p, &c.diagnostic) {
                    supported.insert(p);
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
        mailsim_bounce::reason::without_phrases(left_out, || {
            let mut cache: BTreeMap<&str, Vec<mailsim_bounce::Classified>> = BTreeMap::new();
            for r in &scored {
                let found = cache.entry(&r.file).or_insert_with(|| classify(&r.file));
                let got = found.get(r.index - 1);
                n += 1;
                if got.is_some_and(|c| c.reason == r.reason) {
                    agree += 1;
                } else {
                    misses.push(format!(
                        "{}#{}: {} -> {:?}",
                        r.file,
                        r.index,
                        r.reason,
                        got.map(|c| (
                            &c.reason,
                            &c.status,
                            &c.why,
                            c.diagnostic.chars().take(160).collect::<String>()
                        ))
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
        "10-fold over {total} rows: mean {mean:.1}%, worst fold {worst:.1}%; hard/soft {hard_agree}/{hard_total} ({hard_share:.1}%)"
    );
    for l in lines.iter().chain(&misses) {
        eprintln!("  {l}");
    }
    // Measured 2026-11-30: mean 81.7%, worst fold 63.6%, hard/soft 95.4%, in Sisimai's current
    // vocabulary (the same evaluation of the classifier before the phrase families, in the
    // older one: 77.0%, 63.6%, 94.7%). Hard/soft was 95.7% until the status codes were read by
    // their RFC 3463 meaning (permanent X.4.4 is hostunknown, hard: one row labelled
    // networkerror lost).
    assert!(
        mean >= 81.6,
        "mean fold agreement {mean:.1}% fell below 81.6%"
    );
    assert!(
        worst >= 63.0,
        "worst fold agreement {worst:.1}% fell below 63%"
    );
    assert!(
        hard_share >= 95.0,
        "hard/soft agreement {hard_share:.1}% fell below 95%"
    );
}
