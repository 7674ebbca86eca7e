//! Memory per idle connection, in a test process of its own (no sibling test shares the
//! resident set it measures), with the descriptor limit raised for 10,000 connections.

mod common;

use common::start_with_backlog;
use mailsim_smtp::server::ServerConfig;
use std::time::Duration;

/// Raise this process's open-file limit to what 10,000 connections need (the hard limit
/// allows it on Debian's defaults); say so plainly when it cannot.
fn raise_descriptor_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    assert!(
        lim.rlim_cur >= want,
        "this test needs {want} open files; the hard limit is {} (raise it with ulimit -Hn)",
        lim.rlim_max
    );
}

/// Resident memory of this process, from /proc.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// 10,000 clients (in another process: each side needs its own 10,000 descriptors) connect
/// and stay idle; the server's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_open_connections_stay_within_bounded_memory() {
    const CLIENTS: usize = 10_000;
    raise_descriptor_limit(CLIENTS as u64 + 512);
    let cfg = ServerConfig {
        connections_max: CLIENTS + 100,
        idle_timeout: Duration::from_secs(120),
        ..ServerConfig::default()
    };
    // A deep accept queue, so that 10,000 quick connects are not dropped and retried.
    let (addr, _backend, stop, task) = start_with_backlog(cfg, 8192).await;
    let before = rss_kib();
    let script = format!(
        r#"
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, {CLIENTS} + 512)), hard))
socks = []
for i in range({CLIENTS}):
    s = socket.create_connection(("127.0.0.1", {port}))
    socks.append(s)
greeted = 0
for s in socks:
    if s.recv(200).startswith(b"220"):
        greeted += 1
print(greeted, flush=True)
sys.stdin.read()
"#,
        port = addr.port()
    );
    let mut child = tokio::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
    )
    .await
    .expect("clients connected")
    .unwrap();
    assert_eq!(line.trim(), CLIENTS.to_string(), "every client was greeted");
    let during = rss_kib();
    let per_conn = (during.saturating_sub(before)) as f64 / CLIENTS as f64;
    eprintln!(
        "10,000 idle connections: RSS {before} KiB -> {during} KiB ({per_conn:.1} KiB per connection)"
    );
    assert!(per_conn < 48.0, "{per_conn:.1} KiB per connection");
    drop(child.stdin.take());
    let _ = child.wait().await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("clean shutdown")
        .unwrap();
}
