//! Print, for each labelled row of the Sisimai corpus, the label and what the classifier saw.
fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sisimai");
    let labels = std::fs::read_to_string(root.join("labels.tsv")).unwrap();
    let want = std::env::args().nth(1).unwrap_or_default();
    for line in labels.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, index) = (cols[0], cols[5].parse::<usize>().unwrap());
        let expected = mailsim_bounce::reason::current_name(cols[1]);
        let found = mailsim_bounce::classify_message(&std::fs::read(root.join(file)).unwrap());
        let Some(c) = found.get(index - 1) else {
            continue;
        };
        if !want.is_empty() && expected != want && c.reason != want {
            continue;
        }
        println!(
            "{}{file:36} {expected:12} {:12} st={:7} w={:?} why={:?} | {}",
            if expected == c.reason { "  " } else { "XX" },
            c.reason,
            c.status,
            c.writer,
            c.why,
            c.diagnostic.chars().take(150).collect::<String>()
        );
    }
}
