//! Classify the message files given (after the pass count) PASSES times; print messages/s.
fn main() {
    let mut args = std::env::args().skip(1);
    let passes: usize = args.next().and_then(|p| p.parse().ok()).unwrap_or(1);
    let files: Vec<Vec<u8>> = args.map(|p| std::fs::read(p).unwrap_or_default()).collect();
    let start = std::time::Instant::now();
    let mut found = 0usize;
    for _ in 0..passes {
        for raw in &files {
            found += mailsim_bounce::classify_message(raw).len();
        }
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "{} messages, {found} recipients, {:.0} messages/s",
        files.len() * passes,
        (files.len() * passes) as f64 / s
    );
}
