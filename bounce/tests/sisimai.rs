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
        let (file, expected, index) = (cols[0], cols[1], cols[5].parse::<usize>().unwrap());
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
