//! Runs spread over nodes on one machine, on a real nats-server with JetStream: two fleet
//! shards and the MTA as separate `mailsim` processes publishing their logs to one stream, one
//! fleet shard killed with SIGKILL mid-run and restarted. Once with the daemons (`mailsim fleet
//! --shard`, `mailsim mta`, `mailsim send`, `mailsim collect`), once with `mailsim node` and
//! the coordinator (`mailsim run --nats`), NATS also killed for two seconds mid-run. Checked from outside the nodes' own counters: what
//! the shards' mailboxes hold, what the stream holds against each node's local log, and the
//! collected run's per-domain outcomes against the same scenario run by `mailsim run` on one
//! node.

mod common;

use common::{field, start_daemon};
use mailsim_cluster::nats_server::NatsServer;
use mailsim_events::read_log;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const SCENARIO: &str = r#"
name = "cluster"
seed = 21
[[sender]]
domain = "news.example.test"
[[domain]]
name = "a.test"
[[domain]]
name = "b.test"
unknown_users = { percent = 10 }
[[domain]]
name = "c.test"
[[domain]]
name = "d.test"
unknown_users = { percent = 5 }
[[domain]]
name = "e.test"
[campaign]
messages = 1500
size_bytes = 1200
"#;

/// The MTA node's settings for a short outage: retry after 1 to 2 s, hold a destination whose
/// every connection failed for 2 s (the daemon test gives the same on the command line).
const MTA_QUICK: &str =
    "[mta]\nretry_interval_s_min = 1\nretry_interval_s_max = 2\ndestination_backoff_s = 2\n";

struct Reaper(Vec<u32>);
impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(pid.to_string())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailsim"))
}

fn fleet_shard(scenario: &Path, out: &Path, shard: u32, port: u16, nats: &str) -> (Child, String) {
    start_daemon(
        bin()
            .arg("fleet")
            .arg(scenario)
            .arg("--out")
            .arg(out)
            .args(["--port", &port.to_string()])
            .args(["--shard", &format!("{shard}/2")])
            .args([
                "--nats",
                nats,
                "--run",
                "r1",
                "--node",
                &format!("fleet-{shard}"),
            ]),
    )
}

/// Stop a daemon as an operator does (SIGTERM) and wait for it.
fn stop(child: &mut Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

/// (domain -> (delivered, bounced)) of a summary.json.
fn outcomes(summary: &serde_json::Value) -> BTreeMap<String, (u64, u64)> {
    summary["domains"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(d, s)| {
            let n = |k: &str| s[k].as_u64().unwrap();
            (d.clone(), (n("delivered"), n("bounced")))
        })
        .collect()
}

/// The sequence numbers of the records the run's stream holds per node, in stream order.
fn stream_seqs(url: &str, run: &str) -> BTreeMap<String, Vec<u64>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(mailsim_cluster::connect(url, "test").await.unwrap());
        let mut n = BTreeMap::new();
        for r in mailsim_cluster::collect::read_stream(&js, run)
            .await
            .unwrap()
        {
            n.entry(r.node).or_insert_with(Vec::new).push(r.node_seq);
        }
        n
    })
}

/// Where the stream's records differ from the nodes' logs: per node, the records missing, the
/// ones held twice and the first out of order (empty when they agree). With `ordered` false
/// their order in the stream is not compared: across a NATS outage a record lost with the
/// broken connection is published again after later ones that the client held back and sent
/// on reconnecting were stored (the collected log is ordered by time, node and sequence).
fn stream_differs(
    stream: &BTreeMap<String, Vec<u64>>,
    logs: &BTreeMap<String, Vec<u64>>,
    ordered: bool,
) -> String {
    let mut said = Vec::new();
    for node in stream
        .keys()
        .chain(logs.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (s, l) = (
            stream.get(node).map_or(&[][..], Vec::as_slice),
            logs.get(node).map_or(&[][..], Vec::as_slice),
        );
        let mut sorted = s.to_vec();
        if !ordered {
            sorted.sort_unstable();
        }
        if sorted == l {
            continue;
        }
        let held: std::collections::BTreeSet<u64> = s.iter().copied().collect();
        let missing: Vec<u64> = l.iter().filter(|q| !held.contains(q)).copied().collect();
        let twice = s.len() - held.len();
        let disorder = s.windows(2).position(|w| w[1] <= w[0]);
        said.push(format!(
            "{node}: stream {} records, log {}; missing {} (first {:?}); {twice} held twice; \
             first out of order at stream index {disorder:?}{}",
            s.len(),
            l.len(),
            missing.len(),
            &missing[..missing.len().min(20)],
            disorder.map_or(String::new(), |i| format!(
                " ({:?})",
                &s[i.saturating_sub(3)..(i + 4).min(s.len())]
            )),
        ));
    }
    said.join("\n")
}

/// The sequence numbers of a node's local log, in order.
fn local(dir: &Path) -> Vec<u64> {
    read_log(&dir.join("events.log"))
        .unwrap()
        .0
        .iter()
        .map(|r| r.seq)
        .collect()
}

/// The distinct campaign Message-IDs stored in the mailboxes under `dirs` (the sender's MX
/// also holds DSNs, which are left out by `campaign`).
fn stored_ids(dirs: &[&Path], campaign: &std::collections::BTreeSet<String>) -> usize {
    let mut stored = std::collections::BTreeSet::new();
    for d in dirs {
        for f in common::maildir_files(&d.join("mailboxes")) {
            if let Some(id) = common::message_id(&std::fs::read_to_string(&f).unwrap_or_default())
                && campaign.contains(&id)
            {
                stored.insert(id);
            }
        }
    }
    stored.len()
}

/// The same scenario run by `mailsim run` on one node: its summary.
fn single_node(scenario: &Path, out: &Path) -> serde_json::Value {
    let run = bin()
        .arg("run")
        .arg(scenario)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&run.stdout).unwrap()
}

/// Stored events in a fleet node's log so far (a torn tail read up to).
fn stored_so_far(dir: &Path) -> usize {
    read_log(&dir.join("events.log"))
        .map(|(r, _)| {
            r.iter()
                .filter(|r| matches!(r.event, mailsim_events::Event::Stored { .. }))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn two_fleet_shards_and_an_mta_publish_one_run_through_a_killed_shard() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("cluster.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 0)
        .expect("nats-server (apt-get install nats-server)");
    let url = nats.url();
    // The first shard picks the port (binding it on all its hosts), the second takes the same
    // on its own hosts: no port chosen ahead that something else may take meanwhile.
    let (f0_dir, f1_dir) = (dir.path().join("fleet-0"), dir.path().join("fleet-1"));
    let (f0, ready0) = fleet_shard(&scenario, &f0_dir, 0, 0, &url);
    let port: u16 = field(&ready0, "smtp_port").parse().unwrap();
    let mut reaper = Reaper(vec![f0.id()]);
    let (mut f1, _) = fleet_shard(&scenario, &f1_dir, 1, port, &url);
    reaper.0.push(f1.id());
    let mut f0 = f0;
    // The shards split the domains: each serves some, none serves one twice (the second would
    // not have bound the addresses), and the MTA resolves through the first shard's DNS.
    let dns = field(&ready0, "dns").to_string();
    let spool = dir.path().join("mta");
    let (mut mta, mta_ready) = start_daemon(
        bin()
            .arg("mta")
            .arg("--spool")
            .arg(&spool)
            .args(["--dns", &dns, "--remote-port", &port.to_string()])
            .args(["--submission", "127.0.0.1:0"])
            .args(["--retry-interval-s-min", "1", "--retry-interval-s-max", "2"])
            .args(["--destination-backoff-s", "2"])
            .args(["--nats", &url, "--run", "r1", "--node", "mta"]),
    );
    reaper.0.push(mta.id());
    let submission = field(&mta_ready, "submission").to_string();
    let acked = dir.path().join("acked.txt");
    let mut send = bin()
        .arg("send")
        .arg(&scenario)
        .args(["--to", &submission, "--acked"])
        .arg(&acked)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    reaper.0.push(send.id());
    let acked_now = || {
        std::fs::read_to_string(&acked)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };

    // Kill shard 1 mid-run, while the campaign is being submitted and delivered: its hosts are
    // down (the MTA defers), then it comes back on its own directory and log, and publishes on
    // from where the stream stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked_now() < 300 {
        assert!(Instant::now() < deadline, "submission stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    f1.kill().unwrap();
    f1.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (again, _) = fleet_shard(&scenario, &f1_dir, 1, port, &url);
    f1 = again;
    reaper.0.push(f1.id());
    assert!(send.wait().unwrap().success());
    let acked_n = acked_now() as u64;
    assert_eq!(acked_n, 1500);

    // Every acknowledged message final in the MTA's log.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let replay = bin().arg("replay").arg(&spool).output().unwrap();
        let s: serde_json::Value = serde_json::from_slice(&replay.stdout).unwrap_or_default();
        let (d, b) = (s["delivered"].as_u64(), s["bounced"].as_u64());
        if d.zip(b).is_some_and(|(d, b)| d + b == acked_n) {
            break;
        }
        assert!(Instant::now() < deadline, "not final: {s}");
        std::thread::sleep(Duration::from_millis(500));
    }
    for child in [&mut mta, &mut f0, &mut f1] {
        stop(child);
    }
    // The outage was felt: the MTA found shard 1's hosts down and deferred.
    let mta_log = read_log(&spool.join("events.log")).unwrap().0;
    let failed = mta_log
        .iter()
        .filter(|r| matches!(r.event, mailsim_events::Event::ConnFailed { .. }))
        .count();
    assert!(failed > 0, "no connection failed while shard 1 was down");

    // The stream holds each node's local log exactly: every sequence number once, in order.
    let expected: BTreeMap<String, Vec<u64>> = [
        ("fleet-0".to_string(), local(&f0_dir)),
        ("fleet-1".to_string(), local(&f1_dir)),
        ("mta".to_string(), local(&spool)),
    ]
    .into();
    let differs = stream_differs(&stream_seqs(&url, "r1"), &expected, true);
    assert!(differs.is_empty(), "{differs}");

    // The collected run against the receiving side: the shards' mailboxes hold one copy of
    // each delivered message.
    let collected = dir.path().join("collected");
    let out = bin()
        .args(["collect", "r1", "--nats", &url, "--out"])
        .arg(&collected)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(collected.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary, on_disk);
    let acked_ids: std::collections::BTreeSet<String> = std::fs::read_to_string(&acked)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let stored = stored_ids(&[&f0_dir, &f1_dir], &acked_ids);
    assert_eq!(
        summary["delivered"].as_u64(),
        Some(stored as u64),
        "{summary}"
    );
    assert_eq!(summary["injected"].as_u64(), Some(acked_n));

    // The same scenario on one node: the same outcome at every domain.
    let one = single_node(&scenario, &dir.path().join("single"));
    assert_eq!(outcomes(&summary), outcomes(&one));
    assert!(outcomes(&one).values().any(|(_, b)| *b > 0));
    drop(nats);
}

/// A node started with `mailsim node`, its stderr kept in `<dir>.err`.
fn node(url: &str, run: &str, args: &[&str], dir: &Path) -> Child {
    let err = std::fs::File::create(dir.with_extension("err")).unwrap();
    bin()
        .args(["node", "--nats", url, "--run", run, "--out"])
        .arg(dir)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap()
}

#[test]
fn the_coordinator_runs_two_fleet_nodes_and_an_mta_node_through_a_killed_node_and_a_nats_outage() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("cluster.toml");
    std::fs::write(&scenario, format!("{SCENARIO}{MTA_QUICK}")).unwrap();
    let mut nats = NatsServer::start(&dir.path().join("nats"), 0)
        .expect("nats-server (apt-get install nats-server)");
    let url = nats.url();
    let (f0_dir, f1_dir, mta_dir) = (
        dir.path().join("fleet-0"),
        dir.path().join("fleet-1"),
        dir.path().join("mta"),
    );
    // Nodes first: they wait for the coordinator's scenario.
    let mut f0 = node(&url, "r2", &["--role", "fleet", "--shard", "0"], &f0_dir);
    let mut reaper = Reaper(vec![f0.id()]);
    let mut f1 = node(&url, "r2", &["--role", "fleet", "--shard", "1"], &f1_dir);
    reaper.0.push(f1.id());
    let mut mta = node(&url, "r2", &["--role", "mta"], &mta_dir);
    reaper.0.push(mta.id());
    // Two injectors, each submitting half of the campaign once the coordinator says start.
    let mut injectors: Vec<Child> = (0..2)
        .map(|i| {
            let i = i.to_string();
            let at = dir.path().join(format!("injector-{i}"));
            node(&url, "r2", &["--role", "injector", "--shard", &i], &at)
        })
        .collect();
    reaper.0.extend(injectors.iter().map(Child::id));
    let run_dir = dir.path().join("run");
    let coordinator = bin()
        .arg("run")
        .arg(&scenario)
        .args([
            "--nats",
            &url,
            "--run-id",
            "r2",
            "--fleet-nodes",
            "2",
            "--fleet-nets",
            "127.11.0.0/16,127.12.0.0/16",
            "--injectors",
            "2",
            "--out",
        ])
        .arg(&run_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    reaper.0.push(coordinator.id());

    // Fleet node 1 killed once it has stored some mail, and started again on its directory.
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored_so_far(&f1_dir) < 50 {
        assert!(Instant::now() < deadline, "fleet-1 stored nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    f1.kill().unwrap();
    f1.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    f1 = node(&url, "r2", &["--role", "fleet", "--shard", "1"], &f1_dir);
    reaper.0.push(f1.id());
    // Then NATS itself goes away for two seconds (SIGKILL) and comes back on its store: the
    // nodes publish on, the coordinator follows on.
    std::thread::sleep(Duration::from_millis(500));
    nats.kill();
    std::thread::sleep(Duration::from_secs(2));
    nats.restart().unwrap();

    let out = coordinator.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    // Every node stopped by itself when the coordinator said so.
    for child in [&mut f0, &mut f1, &mut mta]
        .into_iter()
        .chain(injectors.iter_mut())
    {
        let status = child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
    // Each injector submitted its half.
    for i in 0..2 {
        let err = std::fs::read_to_string(dir.path().join(format!("injector-{i}.err"))).unwrap();
        assert!(
            err.contains("750 messages acknowledged"),
            "injector-{i}: {err}"
        );
    }
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["injected"].as_u64(), Some(1500), "{said}");

    // No event lost: each node's local log (fleet-1's across its kill) is in the stream, every
    // record once (in order but for what NATS's outage broke off).
    let expected: BTreeMap<String, Vec<u64>> = [
        (
            "coordinator".to_string(),
            local(&run_dir.join("coordinator")),
        ),
        ("fleet-0".to_string(), local(&f0_dir)),
        ("fleet-1".to_string(), local(&f1_dir)),
        ("mta".to_string(), local(&mta_dir)),
    ]
    .into();
    let differs = stream_differs(&stream_seqs(&url, "r2"), &expected, false);
    assert!(differs.is_empty(), "{differs}\ncoordinator said:\n{said}");
    // The outage was felt: the MTA node's connections to fleet-1 failed meanwhile.
    let mta_log = read_log(&mta_dir.join("events.log")).unwrap().0;
    assert!(
        mta_log
            .iter()
            .any(|r| matches!(r.event, mailsim_events::Event::ConnFailed { .. })),
        "no connection failed while fleet-1 was down"
    );

    // Each fleet node served its domains in its own network: the MTA node connected to
    // 127.11.x.y and 127.12.x.y only (as every node's DNS answered), to both.
    let nets: std::collections::BTreeSet<String> = mta_log
        .iter()
        .filter_map(|r| match &r.event {
            mailsim_events::Event::ConnOpened { addr, .. } => {
                Some(addr.split('.').take(2).collect::<Vec<_>>().join("."))
            }
            _ => None,
        })
        .collect();
    assert_eq!(nets, ["127.11", "127.12"].map(String::from).into());

    // The receiving side's copies, and the single-node run's outcomes per domain.
    let campaign: std::collections::BTreeSet<String> = mta_log
        .iter()
        .filter_map(|r| match &r.event {
            mailsim_events::Event::Injected { message_id, .. } => Some(message_id.clone()),
            _ => None,
        })
        .collect();
    let stored = stored_ids(&[&f0_dir, &f1_dir], &campaign);
    assert_eq!(
        summary["delivered"].as_u64(),
        Some(stored as u64),
        "{summary}"
    );
    let one = single_node(&scenario, &dir.path().join("single"));
    assert_eq!(outcomes(&summary), outcomes(&one));
    // The collected run reads as any run: replay gives its summary.json.
    let replay = bin().arg("replay").arg(&run_dir).output().unwrap();
    assert_eq!(
        replay.stdout,
        std::fs::read(run_dir.join("summary.json")).unwrap()
    );
    drop(nats);
}
