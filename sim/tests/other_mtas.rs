//! Measuring real MTAs of other makes: Debian's Postfix 3.7 and Exim 4.96, each with its own
//! configuration and queue in a temporary directory, loopback only, routed to the fleet by the
//! fleet's route lines, retrying after a second, take the campaign from `mailsim run --mta`; the
//! run's figures are checked against each MTA's own log: every delivery and every bounce
//! accounted for, nothing double-counted, the run over by itself. The test command installs
//! Postfix ("No configuration") and unpacks Exim's package (Debian's MTA packages conflict with
//! each other); both daemons start as root. Both also receive from mailsim's own SMTP client,
//! to hold it to how a real server keeps a transaction.

mod common;

use mailsim::scenario::Scenario;
use mailsim::world::World;
use mailsim_events::{Event, read_log};
use mailsim_summary::Summary;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// 300 messages: one domain refusing 20% of its users (550 5.1.1), one answering 30% of RCPTs
/// with 451, one accepting everything.
const SCENARIO: &str = r#"
name = "other-mta"
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
const SENDER_DOMAIN: &str = "news.example.test";
const MESSAGES: u64 = 300;

/// The ports of a run and where its fleet hosts listen, before anything starts: the other MTA
/// is configured with these routes (`mailsim fleet` prints the same lines).
struct Setup {
    scenario: PathBuf,
    routes: Vec<(String, Ipv4Addr)>,
    dns_port: u16,
    fleet_port: u16,
    mta_port: u16,
}

fn setup(dir: &Path) -> Setup {
    // The other MTA's own user works in here.
    let ok = Command::new("chmod").arg("755").arg(dir).status().unwrap();
    assert!(ok.success());
    let scenario = dir.join("other-mta.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let world = World::build(&Scenario::load(&scenario).unwrap()).unwrap();
    Setup {
        scenario,
        routes: world.routes(),
        dns_port: common::free_port(),
        fleet_port: common::free_port(),
        mta_port: common::free_port(),
    }
}

/// Wait until something accepts connections on 127.0.0.1:`port`; `why` says what to show if
/// nothing does within 20 s.
fn wait_for_port(port: u16, why: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run the scenario against the other MTA, then check mailsim's figures against `outcomes`
/// (read from the other MTA's log once the run is over: recipient -> its last status,
/// "sent", "bounced" or "deferred"). `queue_run` is called every [`QUEUE_RUN_EVERY`] while the
/// run goes (what an operator's cron job would do: see [`postfix_queue_run`]). Returns a line
/// of what was measured.
fn measure(
    s: &Setup,
    run_dir: &Path,
    outcomes: impl Fn() -> BTreeMap<String, String>,
    log: impl Fn() -> String,
    queue_run: impl Fn() + Sync,
) -> String {
    let started = Instant::now();
    let (done, ended) = std::sync::mpsc::channel::<()>();
    let queue_run = &queue_run;
    let run = std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                ended.recv_timeout(QUEUE_RUN_EVERY)
            {
                queue_run();
            }
        });
        let run = Command::new(env!("CARGO_BIN_EXE_mailsim"))
            .arg("run")
            .arg(&s.scenario)
            .args(["--mta", &format!("smtp://127.0.0.1:{}", s.mta_port)])
            .args(["--fleet-port", &s.fleet_port.to_string()])
            .args(["--dns-port", &s.dns_port.to_string()])
            .arg("--out")
            .arg(run_dir)
            .arg("--quiet")
            .output()
            .unwrap();
        drop(done);
        run
    });
    let took = started.elapsed();
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        log()
    );
    let summary: Summary = serde_json::from_slice(&run.stdout).unwrap();

    // The other MTA's log: every campaign recipient's fate.
    let outcomes = outcomes();
    let count = |status: &str| outcomes.values().filter(|s| *s == status).count() as u64;
    let (sent, bounced, deferred) = (count("sent"), count("bounced"), count("deferred"));
    assert_eq!(
        outcomes.len() as u64,
        MESSAGES,
        "every recipient in the other MTA's log:\n{}",
        log()
    );
    assert!(bounced > 0, "unknown.test refuses 20% of its users");
    // (When it fails: what the other MTA logged about the recipients it left deferred, and
    // how long the run took: a run at its time limit is the other MTA still retrying.)
    let still: Vec<&String> = outcomes
        .iter()
        .filter(|(_, s)| *s == "deferred")
        .map(|(r, _)| r)
        .collect();
    assert_eq!(
        deferred,
        0,
        "the other MTA retried every deferral to the end (run took {took:?}):\n{}",
        log()
            .lines()
            .filter(|l| still.iter().any(|r| l.contains(r.as_str())))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        (
            summary.injected,
            summary.delivered,
            summary.bounced,
            summary.deferred
        ),
        (MESSAGES, sent, bounced, 0),
        "mailsim's figures against the other MTA's log"
    );
    assert_eq!(summary.reasons.get("userunknown"), Some(&bounced));
    // The receivers stored each delivered message once.
    let (records, _) = read_log(&run_dir.join("events.log")).unwrap();
    let stored = records
        .iter()
        .filter(|r| {
            matches!(&r.event, Event::Stored { rcpt, .. }
                if !rcpt.ends_with(&format!("@{SENDER_DOMAIN}")))
        })
        .count() as u64;
    assert_eq!(stored, sent, "one stored copy per delivery");
    // Over by itself once the other MTA was done, long before the time limit.
    assert!(
        matches!(&records.last().unwrap().event, Event::RunFinished { reason } if reason == "drained"),
        "{:?}",
        records.last()
    );
    assert!(took < Duration::from_secs(90), "{took:?}");
    // Signed by the injector, verified at the receivers.
    assert_eq!(summary.auth.dkim_pass, stored, "{:?}", summary.auth);
    // The report (polars over events.parquet) states the same totals: exit 0.
    if cfg!(feature = "report") {
        let report = Command::new(env!("CARGO_BIN_EXE_mailsim"))
            .arg("report")
            .arg(run_dir)
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
    format!(
        "{sent} sent, {bounced} bounced by its log; mailsim: {} delivered, {} bounced, {} deferred; \
         run {took:?}",
        summary.delivered, summary.bounced, summary.deferred
    )
}

/// How often the other MTA is asked for a queue run while a run goes.
const QUEUE_RUN_EVERY: Duration = Duration::from_secs(5);

/// Ask Postfix (configuration `conf`) to try every queued message now (`postqueue -f`).
///
/// Postfix needs it with retries a second apart. When its queue manager takes a deferred
/// message up again while the delivery agent that deferred it still holds the queue file's
/// lock, it logs "skipped, still being delivered" and puts the message back in the incoming
/// queue, 60 s in the future; the incoming queue is scanned when new mail comes in (and when
/// the master wakes the queue manager, every 300 s in Debian's master.cf), and at the end of a
/// campaign none does: the message would wait for the run's time limit (seen
/// in CI twice, and here once in 7 runs of this test). With Postfix's default
/// retry times (300 s apart and more) this does not happen.
fn postfix_queue_run(conf: &Path) {
    let _ = Command::new("postqueue")
        .arg("-c")
        .arg(conf)
        .arg("-f")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
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
/// domain of `routes` sent to its fleet host on `fleet_port`, retries after a second; `extra`
/// lines go at the end of its main.cf.
fn start_postfix(
    dir: &Path,
    port: u16,
    routes: &[(String, std::net::Ipv4Addr)],
    fleet_port: u16,
    extra: &str,
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
smtp_tls_security_level = may
smtp_tls_CAfile = {dir}/run/ca.pem
smtp_tls_loglevel = 1
smtpd_tls_security_level = none
transport_maps = inline:{{ {transport} }}
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maillog_file_prefixes = {dir}
maillog_file = {log}
{extra}
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
    wait_for_port(port, || {
        format!(
            "postfix did not start: {}{}",
            std::fs::read_to_string(dir.join("postfix.out")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("postfix.log")).unwrap_or_default()
        )
    });
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
    let s = setup(dir.path());
    let _postfix = start_postfix(dir.path(), s.mta_port, &s.routes, s.fleet_port, "");
    let log = || std::fs::read_to_string(dir.path().join("postfix.log")).unwrap_or_default();
    let said = measure(
        &s,
        &dir.path().join("run"),
        || postfix_outcomes(&log(), SENDER_DOMAIN),
        log,
        || postfix_queue_run(&dir.path().join("postfix/conf")),
    );
    // Postfix's own TLS (OpenSSL) found every fleet certificate issued for its host by the
    // run's authority (ca.pem): "Trusted" is its word for a chain that verifies; and each
    // receiver wrote the session's TLS into its Received header.
    let log = log();
    let trusted = log.matches("Trusted TLS connection established to").count();
    assert!(trusted > 0, "{log}");
    assert!(!log.contains("Untrusted TLS connection"), "{log}");
    let root = dir.path().join("run/mailboxes");
    for f in common::maildir_files(&root) {
        // The sender's own mailboxes hold the receivers' reports, not Postfix's mail.
        if common::host_of(&root, &f) == SENDER_DOMAIN {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains("(using TLSv1."), "{}", f.display());
    }
    eprintln!("postfix: {said}; {trusted} trusted TLS connections");
}

/// mailsim's SMTP client to the server on 127.0.0.1:`port`, one connection: four transactions
/// for `gone@r.test` (which the server refuses with `refused`), `here@r.test`, `gone@r.test`
/// and `also@r.test`. The refused ones are refused at RCPT and the others taken. Returns the
/// server's log (`log`) once `taken` is in it twice, or after 10 s.
async fn refused_then_next(port: u16, refused: u16, log: &Path, taken: &str) -> String {
    use mailsim_smtp::client::{Envelope, SmtpClient, SmtpTimeouts};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut client = SmtpClient::new(stream, SmtpTimeouts::default());
    let said = client.handshake("client.test").await.unwrap();
    assert_eq!(said.last().map(|(_, r)| r.code), Some(250), "{said:?}");
    assert!(client.caps.pipelining, "the server offers PIPELINING");
    let body = b"From: a@client.test\r\nTo: x@r.test\r\nSubject: t\r\n\
                 Message-ID: <m@client.test>\r\n\r\nhello\r\n";
    let mut outcomes = Vec::new();
    for rcpt in ["gone@r.test", "here@r.test", "gone@r.test", "also@r.test"] {
        let env = Envelope {
            from: "a@client.test",
            rcpt,
            body,
        };
        let o = client.transaction(&env).await.unwrap();
        outcomes.push((rcpt, o.decisive.code, o.decisive_command));
    }
    client.quit().await;
    assert_eq!(
        outcomes,
        [
            ("gone@r.test", refused, "RCPT"),
            ("here@r.test", 250, "DATA"),
            ("gone@r.test", refused, "RCPT"),
            ("also@r.test", 250, "DATA"),
        ],
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    // The server logs what it took after answering.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(taken).count() >= 2 || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// mailsim's SMTP client against Postfix's smtpd. With PIPELINING, Postfix answers DATA "554
/// 5.5.1 Error: no valid recipients" when every recipient was refused, but keeps the sender:
/// a MAIL after it without RSET gets "503 5.5.1 Error: nested MAIL command" (which an MTA reads
/// as a permanent refusal of the next recipient). The client resets first, and Postfix takes
/// the next recipient: its own log says so.
#[tokio::test]
async fn after_a_refused_pipelined_transaction_postfix_takes_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    // Mail for r.test goes nowhere: it waits in Postfix's queue.
    let _postfix = start_postfix(
        dir.path(),
        port,
        &[("r.test".into(), std::net::Ipv4Addr::LOCALHOST)],
        common::free_port(),
        "smtpd_recipient_restrictions = check_recipient_access inline:{ gone@r.test=REJECT }, \
         permit_mynetworks, reject\ndefer_transports = smtp",
    );
    // Postfix's own account: two recipients refused at RCPT, two messages queued, no command
    // out of order.
    let text = refused_then_next(
        port,
        554,
        &dir.path().join("postfix.log"),
        "message-id=<m@client.test>",
    )
    .await;
    assert_eq!(
        text.matches("NOQUEUE: reject: RCPT from").count(),
        2,
        "{text}"
    );
    assert_eq!(
        text.matches("message-id=<m@client.test>").count(),
        2,
        "{text}"
    );
    assert!(!text.contains("nested MAIL"), "{text}");
    // RSET first in a group is pipelining RFC 2920 allows, which Postfix checks for.
    assert!(!text.contains("improper command pipelining"), "{text}");
}

/// Where the test command unpacks Debian's exim4-daemon-light (the package itself would remove
/// Postfix: both provide mail-transport-agent).
fn exim_binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.test-tools/exim4/usr/sbin/exim4")
}

/// Stops Exim whatever happens to the test.
struct Exim(std::process::Child);

impl Drop for Exim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Exim on 127.0.0.1:`port` in the foreground, its configuration, spool and logs under `dir`:
/// no DNS, every domain of `routes` sent to its fleet host on `fleet_port`, a queue run every
/// second and a retry after a second; `rcpt_acl` lines go first in its RCPT ACL.
fn start_exim(
    dir: &Path,
    port: u16,
    routes: &[(String, Ipv4Addr)],
    fleet_port: u16,
    rcpt_acl: &str,
) -> Exim {
    let ex = dir.join("exim");
    for d in ["spool", "log"] {
        std::fs::create_dir_all(ex.join(d)).unwrap();
        let ok = Command::new("chown")
            .arg("Debian-exim:")
            .arg(ex.join(d))
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "the user Debian-exim (the test command adds it)"
        );
    }
    let route_list: Vec<String> = routes
        .iter()
        .map(|(domain, ip)| format!("{domain} {ip}"))
        .collect();
    let conf = ex.join("exim.conf");
    std::fs::write(
        &conf,
        format!(
            "primary_hostname = exim.mailsim.test
exim_path = {exim}
tls_advertise_hosts =
spool_directory = {spool}
log_file_path = {log}/%slog
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
keep_environment =
host_lookup =
rfc1413_hosts =
acl_smtp_rcpt = acl_check_rcpt

begin acl
acl_check_rcpt:
{rcpt_acl}
  accept hosts = 127.0.0.0/8
  deny

begin routers
fleet:
  driver = manualroute
  transport = remote_smtp
  route_list = {routes}

begin transports
remote_smtp:
  driver = smtp
  port = {fleet_port}
  hosts_avoid_tls = *

begin retry
* * F,1h,1s
",
            exim = exim_binary().display(),
            spool = ex.join("spool").display(),
            log = ex.join("log").display(),
            routes = route_list.join(" ; "),
        ),
    )
    .unwrap();
    let said = std::fs::File::create(ex.join("exim.out")).unwrap();
    let child = Command::new(exim_binary())
        .arg("-C")
        .arg(&conf)
        .args(["-bdf", "-q1s"])
        .stdout(Stdio::null())
        .stderr(said)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (Debian's exim4-daemon-light, unpacked by the README's test command)",
                exim_binary().display()
            )
        });
    let exim = Exim(child);
    wait_for_port(port, || {
        format!(
            "exim did not start: {}{}",
            std::fs::read_to_string(ex.join("exim.out")).unwrap_or_default(),
            std::fs::read_to_string(ex.join("log/paniclog")).unwrap_or_default()
        )
    });
    exim
}

/// Exim's own account, from its main log: the last of `=>` (delivered), `**` (failed) and `==`
/// (deferred) for each recipient, the sender's own domain (bounce messages) left out.
fn exim_outcomes(log: &str, sender_domain: &str) -> BTreeMap<String, String> {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for line in log.lines() {
        // "2026-11-30 14:40:18 1tGx-000A-Bc => user1@ok.test R=fleet T=remote_smtp ..."
        let mut words = line.split_whitespace().skip(3);
        let status = match words.next() {
            Some("=>") | Some("->") => "sent",
            Some("**") => "bounced",
            Some("==") => "deferred",
            _ => continue,
        };
        let Some(to) = words.next() else { continue };
        let to = to.trim_matches(['<', '>', ':']).to_ascii_lowercase();
        if to.ends_with(&format!("@{sender_domain}")) {
            continue;
        }
        last.insert(to, status.to_string());
    }
    last
}

#[test]
fn exim_is_measured_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path());
    let _exim = start_exim(dir.path(), s.mta_port, &s.routes, s.fleet_port, "");
    let log = || std::fs::read_to_string(dir.path().join("exim/log/mainlog")).unwrap_or_default();
    let said = measure(
        &s,
        &dir.path().join("run"),
        || exim_outcomes(&log(), SENDER_DOMAIN),
        log,
        // Exim's own queue runner starts every second (`-q1s`) and scans the whole queue.
        || {},
    );
    eprintln!("exim: {said}");
}

/// The same client against Exim's daemon, which refuses `gone@r.test` at RCPT: the recipients
/// after each refusal are taken, by Exim's own log, and Exim saw no synchronization error
/// (RFC 2920 pipelining it did not allow).
#[tokio::test]
async fn after_a_refused_pipelined_transaction_exim_takes_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("chmod")
        .arg("755")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(ok.success());
    let port = common::free_port();
    // Mail for r.test stays in Exim's queue: its route is Exim's own address.
    let _exim = start_exim(
        dir.path(),
        port,
        &[("r.test".into(), Ipv4Addr::LOCALHOST)],
        common::free_port(),
        "  deny recipients = gone@r.test",
    );
    let text = refused_then_next(
        port,
        550,
        &dir.path().join("exim/log/mainlog"),
        " <= a@client.test ",
    )
    .await;
    assert_eq!(
        text.matches("rejected RCPT <gone@r.test>").count(),
        2,
        "{text}"
    );
    assert_eq!(text.matches(" <= a@client.test ").count(), 2, "{text}");
    assert!(!text.contains("synchronization error"), "{text}");
}
