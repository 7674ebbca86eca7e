//! Resident memory per queued message: queue 1,000,000 recipients and read VmRSS before and
//! after. Prints `queue-memory: messages=N rss_before_kib=A rss_after_kib=B bytes_per_message=C`.

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let before = rss_kib();
    let mut queue = mailsim_mta::queue::Queue::new();
    for id in 0..n {
        queue.insert(mailsim_benches::queue_entry(id));
    }
    let after = rss_kib();
    let per = (after.saturating_sub(before) * 1024) as f64 / n as f64;
    println!(
        "queue-memory: messages={n} rss_before_kib={before} rss_after_kib={after} bytes_per_message={per:.0} queued={}",
        queue.len()
    );
}
