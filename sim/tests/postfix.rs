//! Measuring another MTA for real: Debian's Postfix (its own configuration and queue in a
//! temporary directory, loopback only, routed to the fleet by transport maps) takes the campaign
//! from `mailsim run --mta`, and the run's figures are checked against Postfix's own log: every
//! delivery and every bounce accounted for, nothing double-counted, the run over by itself.
//! The test command installs Postfix ("No configuration"); Postfix's master runs as root.

use mailsim::scenario::Scenario;
use mailsim::world::World;
use mailsim_events::{Event, read_log};
use mailsim_summary::Summary;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCENARIO: &str = r#"
name = "postfix"
seed = 31
[mta]
run_time_s_max = 180
[[sender]]
domain = "news.example.test"
[[domain]]
name = "ok.test"
[[domain]]
name = "unknown.test"
unknown_users = { percent = 20 }
[[domain]]
name = "flaky.test"
tempfail = { percent = 30 }
[campaign]
messages = 300
size_bytes = 2000
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops Postfix whatever happens to the test.
struct Postfix {
    conf: std::path::PathBuf,
    child: std::process::Child,
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Postfix on 127.0.0.1:`port` with its own configuration and queue under `dir`: no DNS, every
/// domain of `routes` sent to its fleet host on `fleet_port`, retries after a second.
fn start_postfix(
    dir: &Path,
    port: u16,
    routes: &[(String, std::net::Ipv4Addr)],
    fleet_port: u16,
) -> Postfix {
    let pf = dir.join("postfix");
    let conf = pf.join("conf");
    for d in ["conf", "queue", "data"] {
        std::fs::create_dir_all(pf.join(d)).unwrap();
    }
    let ok = Command::new("chown")
        .arg("postfix:postfix")
        .arg(pf.join("data"))
        .status()
        .expect("chown");
    assert!(ok.success());
    let transport: Vec<String> = routes
        .iter()
        .map(|(domain, ip)| format!("{domain}=smtp:[{ip}]:{fleet_port}"))
        .collect();
    std::fs::write(
        conf.join("main.cf"),
        format!(
            "compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.mailsim.test
mydestination =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
transport_maps = inline:{{ {transport} }}
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maillog_file_prefixes = {dir}
maillog_file = {log}
",
            dir = dir.display(),
            queue = pf.join("queue").display(),
            data = pf.join("data").display(),
            transport = transport.join(", "),
            log = dir.join("postfix.log").display(),
        ),
    )
    .unwrap();
    // Debian's master.cf, every service out of the chroot, smtpd on our port.
    let master = std::fs::read_to_string("/etc/postfix/master.cf")
        .expect("/etc/postfix/master.cf: Debian's postfix; the README's test command installs it");
    let mut out = String::new();
    for line in master.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let service =
            !line.starts_with(|c: char| c == '#' || c.is_whitespace()) && fields.len() >= 8;
        if service && fields[0] == "smtp" && fields[1] == "inet" {
            out.push_str(&format!("127.0.0.1:{port} inet n - n - - smtpd\n"));
        } else if service {
            let mut f: Vec<&str> = fields.clone();
            f[4] = "n";
            out.push_str(&f.join(" "));
            out.push('\n');
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(conf.join("master.cf"), out).unwrap();
    let said = std::fs::File::create(dir.join("postfix.out")).unwrap();
    let child = Command::new("postfix")
        .arg("-c")
        .arg(&conf)
        .arg("start-fg")
        .stdout(Stdio::null())
        .stderr(said)
        .spawn()
        .expect("postfix (Debian's package); the README's test command installs it");
    let postfix = Postfix { conf, child };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "postfix did not start: {}{}",
            std::fs::read_to_string(dir.join("postfix.out")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("postfix.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    postfix
}

/// Postfix's own account, from its log: the last status of each recipient's delivery
/// (`status=sent`, `bounced`, `deferred`), the sender's own domain (DSNs) left out.
fn postfix_outcomes(log: &str, sender_domain: &str) -> BTreeMap<String, String> {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for line in log.lines() {
        let (Some(to), Some(status)) = (
            line.split(" to=<").nth(1).and_then(|t| t.split('>').next()),
            line.split(" status=")
                .nth(1)
                .and_then(|s| s.split(' ').next()),
        ) else {
            continue;
        };
        if to.ends_with(&format!("@{sender_domain}")) {
            continue;
        }
        last.insert(to.to_ascii_lowercase(), status.to_string());
    }
    last
}

#[test]
fn postfix_is_measured_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // Postfix's own user works in here.
    let ok = Command::new("chmod")
        .arg("755")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let scenario_path = dir.path().join("postfix.toml");
    std::fs::write(&scenario_path, SCENARIO).unwrap();
    let scenario = Scenario::load(&scenario_path).unwrap();
    let world = World::build(&scenario).unwrap();
    let (dns_port, fleet_port, pf_port) = (free_port(), free_port(), free_port());
    let _postfix = start_postfix(dir.path(), pf_port, &world.routes(), fleet_port);

    let run_dir = dir.path().join("run");
    let started = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .arg("run")
        .arg(&scenario_path)
        .args(["--mta", &format!("smtp://127.0.0.1:{pf_port}")])
        .args(["--fleet-port", &fleet_port.to_string()])
        .args(["--dns-port", &dns_port.to_string()])
        .arg("--out")
        .arg(&run_dir)
        .arg("--quiet")
        .output()
        .unwrap();
    let took = started.elapsed();
    let log = std::fs::read_to_string(dir.path().join("postfix.log")).unwrap_or_default();
    assert!(
        run.status.success(),
        "{}\n{log}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: Summary = serde_json::from_slice(&run.stdout).unwrap();

    // Postfix's log: every campaign recipient's fate.
    let outcomes = postfix_outcomes(&log, "news.example.test");
    let count = |status: &str| outcomes.values().filter(|s| *s == status).count() as u64;
    let (sent, bounced, deferred) = (count("sent"), count("bounced"), count("deferred"));
    assert_eq!(
        outcomes.len(),
        300,
        "every recipient in Postfix's log:\n{log}"
    );
    assert!(bounced > 0, "unknown.test refuses 20% of its users");
    assert_eq!(deferred, 0, "Postfix retried every deferral to the end");
    assert_eq!(
        (
            summary.injected,
            summary.delivered,
            summary.bounced,
            summary.deferred
        ),
        (300, sent, bounced, 0),
        "mailsim's figures against Postfix's log"
    );
    assert_eq!(summary.reasons.get("userunknown"), Some(&bounced));
    // The receivers stored each delivered message once.
    let (records, _) = read_log(&run_dir.join("events.log")).unwrap();
    let stored = records
        .iter()
        .filter(|r| matches!(&r.event, Event::Stored { rcpt, .. } if !rcpt.ends_with("@news.example.test")))
        .count() as u64;
    assert_eq!(stored, sent, "one stored copy per delivery");
    // Over by itself once Postfix was done, long before the time limit.
    assert!(
        matches!(&records.last().unwrap().event, Event::RunFinished { reason } if reason == "drained"),
        "{:?}",
        records.last()
    );
    assert!(took < Duration::from_secs(90), "{took:?}");
    eprintln!(
        "postfix: {sent} sent, {bounced} bounced; mailsim: {} delivered, {} bounced, {} deferred; \
         run {took:?}",
        summary.delivered, summary.bounced, summary.deferred
    );
    // Signed by the injector, verified at the receivers.
    assert_eq!(summary.auth.dkim_pass, stored, "{:?}", summary.auth);
    // The report (polars over events.parquet) states the same totals: exit 0.
    if cfg!(feature = "report") {
        let report = Command::new(env!("CARGO_BIN_EXE_mailsim"))
            .arg("report")
            .arg(&run_dir)
            .arg("--quiet")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&report.stdout);
        assert_eq!(
            report.status.code(),
            Some(0),
            "{said}{}",
            String::from_utf8_lossy(&report.stderr)
        );
        assert!(said.contains("totals equal summary.json"), "{said}");
    }
}
