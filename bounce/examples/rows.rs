//! Print, for each labelled row of the Sisimai corpus, the label and what the classifier saw.
fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sisimai");
    let labels = std::fs::read_to_string(root.join("labels.tsv")).unwrap();
    let want = std::env::args().nth(1).unwrap_or_default();
    // How much of each diagnostic to print (MAILSIM_ROWS_WIDTH, default 150 characters).
    let width: usize = std::env::var("MAILSIM_ROWS_WIDTH")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(150);
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
        // The fold the 10-fold test scores this file in (FNV-1a of the name).
        let fold = file.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }) % 10;
        println!(
            "{}{fold} {file:36} {expected:12} {:12} st={:7} w={:?} why={:?} | {}",
            if expected == c.reason { "  " } else { "XX" },
            c.reason,
            c.status,
            c.writer,
            c.why,
            c.diagnostic.chars().take(width).collect::<String>()
        );
    }
}
