//! Sisimai's documented example of each reason (tests/data/sisimai-docs, see its ORIGIN.md),
//! classified as a reply: a check from outside the corpus the rules were written from.

use mailsim_bounce::reason::{Evidence, current_name, explain};
use std::path::Path;

#[test]
fn sisimai_documented_examples_get_their_reason() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sisimai-docs");
    let tsv = std::fs::read_to_string(root.join("examples.tsv")).expect("examples.tsv");
    let (mut n, mut agree) = (0usize, 0usize);
    let mut misses = Vec::new();
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 6, "{line}");
        let expected = current_name(cols[0]);
        let text = cols[2];
        // What a report carries beside the words: the status and command the example names,
        // the reply code it quotes, the RFC 3464 Action it shows.
        let reply_code = text
            .split(|c: char| !c.is_ascii_digit())
            .find(|w| w.len() == 3 && (w.starts_with('4') || w.starts_with('5')))
            .and_then(|w| w.parse().ok());
        let action = ["failed", "delivered", "delayed"]
            .into_iter()
            .find(|a| text.contains(&format!("Action: {a}")));
        let (got, why) = explain(&Evidence {
            status: (!cols[3].is_empty()).then_some(cols[3]),
            diagnostic: text,
            context: "",
            command: (!cols[4].is_empty()).then_some(cols[4]),
            action,
            reply_code,
            remote: None,
            writer: None,
        });
        n += 1;
        if got == expected {
            agree += 1;
        } else {
            misses.push(format!("{expected} -> {got} (by {why:?}): {text}"));
        }
    }
    eprintln!("Sisimai's documented examples: {agree}/{n} get their reason");
    for m in &misses {
        eprintln!("  {m}");
    }
    // Measured 2026-12-02 when the examples were gathered: 44 of 62 (the rules were written
    // before; one since, after reading Blocked's example, which still misses here: the
    // example names no command). 47 on 2026-12-03, after two families of RFC wordings were
    // added having read the misses (a size limit exceeded, RFC 1870; a suspended account,
    // RFC 3463 X.2.1): no longer an unseen figure. 48 after STARTTLS's refusals got a family
    // of their own; 49 on 2026-12-04 after the family of a limit said to be due to the
    // sender's reputation (written from Microsoft's 4.7.650, having read this miss too).
    // Among the misses are rows that contradict their own page (ORIGIN.md).
    assert!(agree >= 49, "{agree}/{n} documented examples agree");
}
