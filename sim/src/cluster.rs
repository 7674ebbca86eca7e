//! mailsim past one machine: the fleet split into shards (`mailsim fleet --shard i/n`), every
//! daemon's event log published to a NATS JetStream stream (`--nats URL --run ID --node NAME`),
//! and `mailsim collect` merging the stream into one run directory.

use crate::scenario::Scenario;
use mailsim_cluster::publish::{Published, Publisher};
use mailsim_events::Clock;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// One of `count` fleet shards: the recipient and sender domains split by a stable hash of
/// the domain name, so that every node computes the same split from the scenario alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("{s:?}: give the shard as i/n with 0 <= i < n (such as 0/2)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// True when this shard serves `domain`'s MX hosts.
    pub fn owns(&self, domain: &str) -> bool {
        shard_of(domain, self.count) == self.index
    }
}

/// The shard of `count` that serves `domain` (FNV-1a of the lowercased name).
pub fn shard_of(domain: &str, count: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in domain.bytes().map(|b| b.to_ascii_lowercase()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(count.max(1))) as u32
}

/// Each fleet node's own /16 (`--fleet-nets 10.11.0.0/16,10.12.0.0/16`): the MX hosts of a
/// shard's domains listen there, and every node's DNS says so. Routed to the node's machine,
/// that is how fleet nodes on several machines are reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FleetNets(pub Vec<[u8; 2]>);

impl std::str::FromStr for FleetNets {
    type Err = String;
    fn from_str(s: &str) -> Result<FleetNets, String> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim) {
            let bad = || format!("{part:?}: give each fleet node's network as A.B.0.0/16");
            let (addr, len) = part.split_once('/').ok_or_else(bad)?;
            let ip: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
            let o = ip.octets();
            if len != "16" || o[2] != 0 || o[3] != 0 {
                return Err(bad());
            }
            if nets.contains(&[o[0], o[1]]) {
                return Err(format!("{part:?}: given twice"));
            }
            nets.push([o[0], o[1]]);
        }
        Ok(FleetNets(nets))
    }
}

impl FleetNets {
    /// Where `domain`'s MX hosts listen (`None`: no networks given, the scenario's own).
    pub fn place(&self, domain: &str) -> Option<[u8; 2]> {
        let n = self.0.len() as u32;
        (n > 0).then(|| self.0[shard_of(domain, n) as usize])
    }
}

/// Where and as what a daemon publishes its event log.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// Publish the event log to this NATS server's JetStream (nats://HOST:PORT).
    #[arg(long, requires_all = ["run", "node"])]
    pub nats: Option<String>,
    /// The run id (one NATS subject token: letters, digits, '-', '_').
    #[arg(long, requires = "nats")]
    pub run: Option<String>,
    /// This node's name in the run (one subject token).
    #[arg(long, requires = "nats")]
    pub node: Option<String>,
}

/// A publisher following a daemon's log.
pub struct Publishing {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<Published, mailsim_cluster::ClusterError>>,
    node: String,
}

/// How long a stopping daemon waits for the stream to take the rest of its log.
pub const DRAIN_MAX: Duration = Duration::from_secs(60);

impl PublishArgs {
    /// Start publishing `log` (created by the daemon, now or soon), when `--nats` was given.
    pub async fn start(&self, log: PathBuf) -> anyhow::Result<Option<Publishing>> {
        let (Some(url), Some(run), Some(node)) = (&self.nats, &self.run, &self.node) else {
            return Ok(None);
        };
        mailsim_cluster::check_name("--run", run)?;
        mailsim_cluster::check_name("--node", node)?;
        let client = mailsim_cluster::connect(url, &format!("mailsim-{node}")).await?;
        let js = async_nats::jetstream::new(client);
        let stream = mailsim_cluster::events_stream(&js, run).await?;
        let (stop, stop_rx) = watch::channel(false);
        let publisher = Publisher {
            js,
            stream,
            run: run.clone(),
            node: node.clone(),
            log,
        };
        let who = node.clone();
        let task = tokio::spawn(async move {
            let ran = publisher.run(stop_rx).await;
            if let Err(e) = &ran {
                // Said at once, not only when the daemon stops: the local log keeps every
                // record, and a restart publishes on from where the stream stopped.
                eprintln!("{who}: publishing stopped: {e}");
            }
            ran
        });
        Ok(Some(Publishing {
            stop,
            task,
            node: node.clone(),
        }))
    }
}

impl Publishing {
    /// Once the daemon has closed its log: publish the rest and say how it went.
    pub async fn finish(self) -> anyhow::Result<Published> {
        let _ = self.stop.send(true);
        let done = tokio::time::timeout(DRAIN_MAX, self.task)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{}: the stream did not take the rest of the log within {DRAIN_MAX:?} \
                     (it is in the local log; a restart publishes it)",
                    self.node
                )
            })??;
        let p = done?;
        eprintln!(
            "{}: published records {}..{} ({} acknowledged, {} of them already in the stream, \
             {} retries)",
            self.node, p.found, p.next_seq, p.acknowledged, p.duplicates, p.retries
        );
        Ok(p)
    }
}

/// `mailsim collect`: the run's stream as one run directory (`events.log`, `summary.json`).
pub async fn collect(url: &str, run: &str, out: &Path) -> anyhow::Result<()> {
    mailsim_cluster::check_name("RUN_ID", run)?;
    let client = mailsim_cluster::connect(url, "mailsim-collect").await?;
    let js = async_nats::jetstream::new(client);
    let c = mailsim_cluster::collect::collect(&js, run, out).await?;
    let nodes: Vec<String> = c.per_node.iter().map(|(n, k)| format!("{n}={k}")).collect();
    eprintln!(
        "collect: {} records from {} nodes ({}); {} held twice, {} node start/finish records left out",
        c.records,
        c.per_node.len(),
        nodes.join(" "),
        c.duplicates,
        c.node_lifecycle
    );
    Ok(())
}

/// What the coordinator hands the nodes besides the scenario (key `plan`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunPlan {
    /// Fleet nodes: shards `0/n` .. `n-1/n`.
    pub fleet_nodes: u32,
    /// The port every fleet node's MX hosts listen on.
    pub fleet_port: u16,
    /// Each fleet node's /16, in shard order (empty: the scenario's own addresses).
    #[serde(default)]
    pub fleet_nets: FleetNets,
    /// Injector nodes, each submitting its share of the campaign (0: the coordinator submits).
    #[serde(default)]
    pub injectors: u32,
}

/// What an injector node submitted (key `injected.<node>`).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Injected {
    pub acked: u64,
    pub rejected: u64,
}

/// Submit the campaign's messages `index`, `index + count`, ... to `to` (all of them with one
/// part): an injector node's share, or the coordinator's whole campaign.
async fn submit_share(
    scenario: &Scenario,
    to: std::net::SocketAddr,
    index: u32,
    count: u32,
    connections: usize,
) -> anyhow::Result<crate::send::SendReport> {
    let world = crate::world::World::build(scenario).map_err(anyhow::Error::msg)?;
    let now_s = (mailsim_events::SystemClock.now_ms() / 1000) as i64;
    let campaign =
        crate::send::Campaign::new(scenario, &world, now_s, None, None).share(index, count);
    let send = crate::send::SendOptions {
        to,
        connections,
        acked_path: None,
        stall_max: Duration::from_secs(120),
        on_ack: None,
        rate: None,
    };
    crate::send::send(&campaign, &send).await
}

/// What a node says once it serves (key `ready.<node>`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeReady {
    pub role: String,
    /// The MTA node's submission address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission: Option<std::net::SocketAddr>,
    /// The daemon's own ready line.
    pub line: String,
}

/// A node's part in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// One shard of the fleet (with its own DNS).
    Fleet,
    /// The scenario's MTA (with its own DNS), taking the coordinator's submissions.
    Mta,
    /// Submits its share of the campaign to the MTA node (`--shard i` of the run's
    /// injectors) once the coordinator says start.
    Injector,
}

/// `mailsim node`.
pub struct NodeOptions {
    pub nats: String,
    pub run: String,
    pub role: Role,
    /// The fleet node's shard index (of the plan's `fleet_nodes`).
    pub shard: Option<u32>,
    pub out: PathBuf,
    /// The node's name (default `fleet-<i>` or `mta`).
    pub name: Option<String>,
    /// How long to wait for the coordinator's scenario.
    pub wait: Duration,
    /// The MTA node's submission address (`--listen`; port 0: a free one).
    pub listen: std::net::SocketAddr,
}

/// The name a node publishes under.
pub fn node_name(role: Role, shard: Option<u32>, name: Option<&str>) -> String {
    match (name, role) {
        (Some(n), _) => n.to_string(),
        (None, Role::Fleet) => format!("fleet-{}", shard.unwrap_or(0)),
        (None, Role::Mta) => "mta".to_string(),
        (None, Role::Injector) => format!("injector-{}", shard.unwrap_or(0)),
    }
}

/// The nodes a plan expects.
pub fn expected_nodes(plan: &RunPlan) -> Vec<String> {
    let mut out: Vec<String> = (0..plan.fleet_nodes)
        .map(|i| node_name(Role::Fleet, Some(i), None))
        .collect();
    out.push(node_name(Role::Mta, None, None));
    out.extend((0..plan.injectors).map(|i| node_name(Role::Injector, Some(i), None)));
    out
}

/// Resolves when the coordinator says stop (key `stop`) or `signal` does.
async fn stop_when(kv: async_nats::jetstream::kv::Store, signal: impl Future<Output = ()>) {
    let said = async move {
        loop {
            if let Ok(Some(_)) = mailsim_cluster::kv::get(&kv, "stop").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = said => {}
        _ = signal => {}
    }
}

/// `mailsim node`: wait for the coordinator's scenario and plan, serve this node's part of
/// it (publishing the log), say ready, and stop when the coordinator (or a signal) says so;
/// then publish the rest and say done (key `done.<node>`: the records published).
pub async fn run_node(opts: NodeOptions, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
    use mailsim_cluster::kv;
    mailsim_cluster::check_name("--run", &opts.run)?;
    match (opts.role, opts.shard) {
        (Role::Fleet, None) => anyhow::bail!("--role fleet needs --shard i"),
        (Role::Injector, None) => anyhow::bail!("--role injector needs --shard i"),
        (Role::Mta, Some(i)) => anyhow::bail!("--shard {i}: an MTA node has no shard"),
        _ => {}
    }
    let name = node_name(opts.role, opts.shard, opts.name.as_deref());
    mailsim_cluster::check_name("--name", &name)?;
    let client = mailsim_cluster::connect(&opts.nats, &format!("mailsim-{name}")).await?;
    let js = async_nats::jetstream::new(client);
    let bucket = kv::bucket(&js, &opts.run).await?;
    eprintln!("{name}: waiting for run {}'s scenario", opts.run);
    let text = kv::wait_for(&bucket, "scenario", opts.wait).await?;
    let plan: RunPlan = serde_json::from_slice(&kv::wait_for(&bucket, "plan", opts.wait).await?)
        .map_err(|e| anyhow::anyhow!("run {}: the coordinator's plan: {e}", opts.run))?;
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| anyhow::anyhow!("--out {}: {e}", opts.out.display()))?;
    let scenario_path = opts.out.join("scenario.toml");
    std::fs::write(&scenario_path, &text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", scenario_path.display()))?;
    let scenario = Scenario::load(&scenario_path)?;
    let publish = PublishArgs {
        nats: Some(opts.nats.clone()),
        run: Some(opts.run.clone()),
        node: Some(name.clone()),
    };
    // An injector has nothing of its own to log (the MTA logs what it takes).
    let publishing = match opts.role {
        Role::Injector => None,
        _ => publish.start(opts.out.join("events.log")).await?,
    };
    let stop = stop_when(bucket.clone(), signal);
    let announce = |ready: NodeReady| {
        let (bucket, key) = (bucket.clone(), format!("ready.{name}"));
        async move {
            let json = serde_json::to_vec(&ready).unwrap_or_default();
            kv::put(&bucket, &key, json).await
        }
    };
    let ran = match opts.role {
        Role::Fleet => {
            let index = opts
                .shard
                .ok_or_else(|| anyhow::anyhow!("--role fleet needs --shard i"))?;
            if index >= plan.fleet_nodes {
                anyhow::bail!(
                    "--shard {index}: the run has {} fleet nodes (0 to {})",
                    plan.fleet_nodes,
                    plan.fleet_nodes.saturating_sub(1)
                );
            }
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let fleet = crate::daemon::FleetOptions {
                out: opts.out.clone(),
                smtp_port: plan.fleet_port,
                dns_port: 0,
                sender_mx: true,
                trusted: Vec::new(),
                shard: Some(Shard {
                    index,
                    count: plan.fleet_nodes,
                }),
                ready: Some(ready_tx),
                placement: Some(plan.fleet_nets.clone()),
            };
            let said = async {
                match ready_rx.await {
                    Ok(line) => {
                        announce(NodeReady {
                            role: "fleet".into(),
                            submission: None,
                            line,
                        })
                        .await
                    }
                    Err(_) => Ok(()),
                }
            };
            let (ran, said) = tokio::join!(crate::daemon::run_fleet(&scenario, fleet, stop), said);
            said?;
            ran
        }
        Role::Injector => {
            let index = opts
                .shard
                .ok_or_else(|| anyhow::anyhow!("--role injector needs --shard i"))?;
            if index >= plan.injectors {
                anyhow::bail!(
                    "--shard {index}: the run has {} injector nodes",
                    plan.injectors
                );
            }
            // Nothing of its own to log: the MTA logs what it takes.
            announce(NodeReady {
                role: "injector".into(),
                submission: None,
                line: format!("{name}: ready"),
            })
            .await?;
            let mta: NodeReady =
                serde_json::from_slice(&kv::wait_for(&bucket, "ready.mta", opts.wait).await?)
                    .map_err(|e| anyhow::anyhow!("ready.mta in the run's bucket: {e}"))?;
            let to = mta
                .submission
                .ok_or_else(|| anyhow::anyhow!("the MTA node gave no submission address"))?;
            let started = async {
                kv::wait_for(&bucket, "start", Duration::from_secs(365 * 24 * 3600)).await
            };
            tokio::pin!(stop);
            tokio::select! {
                _ = &mut stop => {}
                started = started => {
                    started?;
                    let r = submit_share(&scenario, to, index, plan.injectors, 8).await?;
                    eprintln!("{name}: {} messages acknowledged ({} refused)", r.acked, r.rejected);
                    let said = Injected { acked: r.acked, rejected: r.rejected };
                    kv::put(&bucket, &format!("injected.{name}"), serde_json::to_vec(&said)?)
                        .await?;
                    stop.await;
                }
            }
            Ok(())
        }
        Role::Mta => {
            let nets = plan.fleet_nets.clone();
            let world = crate::world::World::build_placed(&scenario, &|d| nets.place(d))
                .map_err(anyhow::Error::msg)?;
            let zones = std::sync::Arc::new(fake_dns::FaultyZones::new(
                world.zones.clone(),
                world.faults.clone(),
            ));
            let start_ms = mailsim_events::SystemClock.now_ms();
            let dns = fake_dns::DnsServer::start_with_faults(
                zones,
                std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                std::sync::Arc::new(move || {
                    mailsim_events::SystemClock
                        .now_ms()
                        .saturating_sub(start_ms)
                }),
            )
            .await?;
            let submission = match opts.listen.port() {
                0 => {
                    let l = std::net::TcpListener::bind(opts.listen)
                        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", opts.listen))?;
                    l.local_addr()?
                }
                _ => opts.listen,
            };
            let mta = crate::daemon::MtaDaemonOptions::for_scenario(
                &scenario,
                &world,
                opts.out.clone(),
                dns.addr(),
                submission,
                plan.fleet_port,
            )?;
            let said = async {
                // Ready once the submission port takes connections.
                loop {
                    if tokio::net::TcpStream::connect(submission).await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                announce(NodeReady {
                    role: "mta".into(),
                    submission: Some(submission),
                    line: format!("mta: ready submission={submission}"),
                })
                .await
            };
            let run = crate::daemon::run_mta(mta, stop);
            tokio::pin!(run);
            let ran = tokio::select! {
                // Ended before it was ready: its error.
                ran = &mut run => ran,
                said = said => {
                    said?;
                    run.await
                }
            };
            dns.shutdown().await;
            ran
        }
    };
    ran?;
    let published = match publishing {
        Some(p) => p.finish().await?.next_seq,
        None => 0,
    };
    kv::put(&bucket, &format!("done.{name}"), published.to_string()).await?;
    Ok(())
}

/// `mailsim run SCENARIO --nats`: the coordinator of a multi-node run.
pub struct CoordinatorOptions {
    pub nats: String,
    pub run: String,
    pub fleet_nodes: u32,
    /// The fleet nodes' SMTP port (0: a free one here, which suits nodes on this machine).
    pub fleet_port: u16,
    /// Each fleet node's /16 (empty: the scenario's own addresses).
    pub fleet_nets: FleetNets,
    /// Injector nodes (0: the coordinator submits the campaign itself).
    pub injectors: u32,
    /// The run directory the collected run is written to.
    pub out: PathBuf,
    /// How long to wait for every node to say ready.
    pub wait: Duration,
    /// Submission connections to the MTA node.
    pub connections: usize,
}

/// Counts, from the MTA node's records as the stream has them, of what was injected and
/// what is final.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Progress {
    injected: u64,
    suppressed: u64,
    /// Messages with a final outcome (delivered, bounced or expired), each once.
    done: u64,
}

/// What [`follow`] has read so far.
#[derive(Default)]
struct Following {
    progress: Progress,
    /// The campaign's messages (the MTA's own DSNs are final too, and are not among them).
    campaign: std::collections::HashSet<u64>,
    /// Every message with a final outcome read so far, the campaign's or not yet known to be.
    finals: std::collections::HashSet<u64>,
    /// The stream sequence to read from next.
    next: u64,
}

impl Following {
    /// Count one of the MTA node's records; whether the progress changed. The stream may hold
    /// a node's records out of their order (a record lost with a broken connection is
    /// published again after later ones were stored), so a final outcome read before its
    /// message's injection counts once the injection is read.
    fn read(&mut self, event: &mailsim_events::Event) -> bool {
        use mailsim_events::Event;
        let p = &mut self.progress;
        match *event {
            Event::Injected { msg, .. } => {
                if !self.campaign.insert(msg) {
                    return false;
                }
                p.injected += 1;
                if self.finals.contains(&msg) {
                    p.done += 1;
                }
            }
            Event::Suppressed { .. } => p.suppressed += 1,
            Event::Delivered { msg, .. }
            | Event::Bounced { msg, .. }
            | Event::Expired { msg, .. } => {
                if !self.finals.insert(msg) || !self.campaign.contains(&msg) {
                    return false;
                }
                p.done += 1;
            }
            _ => return false,
        }
        true
    }
}

/// How long [`follow`] keeps trying to read the stream again after it failed (NATS restarting
/// loses the consumer), counted from the last record it read.
const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(60);

/// Follow node `node`'s records in the stream from the start, keeping `tx` up to date; after a
/// failure (NATS restarted, the consumer lost) it reads on from where it was.
async fn follow(
    js: async_nats::jetstream::Context,
    run: String,
    node: String,
    tx: watch::Sender<Progress>,
) -> anyhow::Result<()> {
    let mut f = Following {
        next: 1,
        ..Following::default()
    };
    let mut since = std::time::Instant::now();
    loop {
        let before = f.next;
        let why = match follow_from(&js, &run, &node, &mut f, &tx).await {
            Ok(()) => "the consumer ended".to_string(),
            Err(e) => e.to_string(),
        };
        if f.next > before {
            since = std::time::Instant::now();
        }
        if since.elapsed() > FOLLOW_RETRY_MAX {
            anyhow::bail!("{why} (nothing read for {FOLLOW_RETRY_MAX:?})");
        }
        tracing::warn!("following {node}'s records from {}: {why}; again", f.next);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn follow_from(
    js: &async_nats::jetstream::Context,
    run: &str,
    node: &str,
    f: &mut Following,
    tx: &watch::Sender<Progress>,
) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    use futures_util::StreamExt;
    use mailsim_events::Record;
    let stream = js
        .get_stream(mailsim_cluster::stream_name(run))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: mailsim_cluster::events_subject(run, node),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: f.next,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        let at = m
            .info()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .stream_sequence;
        f.next = at + 1;
        let r = Record::from_payload(&m.payload)
            .map_err(|e| anyhow::anyhow!("{}: a record that does not read: {e}", m.subject))?;
        if f.read(&r.event) {
            let _ = tx.send(f.progress);
        }
    }
    Ok(())
}

/// Coordinate a multi-node run of `scenario` (read from `scenario_path`): hand the nodes the
/// scenario and the plan, wait for every node, submit the campaign to the MTA node, follow its
/// records until every acknowledged message is final, stop the nodes, and collect the stream
/// into `opts.out` (events.log, summary.json). The coordinator's own log (in
/// `out/coordinator/`) frames the run with `run_started` (mode `cluster`) and `run_finished`.
pub async fn coordinate(
    scenario_path: &Path,
    scenario: &Scenario,
    opts: CoordinatorOptions,
    signal: impl Future<Output = ()>,
) -> anyhow::Result<mailsim_summary::Summary> {
    let (nats, run) = (opts.nats.clone(), opts.run.clone());
    // Interrupted (SIGINT, SIGTERM): the nodes are told to stop as on any failure.
    let ran = tokio::select! {
        ran = coordinate_inner(scenario_path, scenario, opts) => ran,
        _ = signal => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = &ran {
        // Whatever went wrong, the nodes are told to stop (they publish the rest of their
        // logs first), unless the run's bucket cannot be reached or this run never began.
        if e.downcast_ref::<NotBegun>().is_none() {
            let told = async {
                let client = mailsim_cluster::connect(&nats, "mailsim-coordinator").await?;
                let js = async_nats::jetstream::new(client);
                let bucket = mailsim_cluster::kv::bucket(&js, &run).await?;
                mailsim_cluster::kv::put(&bucket, "stop", "coordinator failed").await
            };
            if let Err(e2) = told.await {
                eprintln!("coordinator: could not tell the nodes to stop: {e2}");
            }
        }
    }
    ran
}

/// An error before this coordinator began a run (a run of that id is another's).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotBegun(String);

async fn coordinate_inner(
    scenario_path: &Path,
    scenario: &Scenario,
    opts: CoordinatorOptions,
) -> anyhow::Result<mailsim_summary::Summary> {
    use mailsim_cluster::{collect::COORDINATOR, kv};
    mailsim_cluster::check_name("--run", &opts.run)?;
    if opts.fleet_nodes == 0 {
        anyhow::bail!("--fleet-nodes 0: give at least one fleet node");
    }
    let nets = opts.fleet_nets.0.len();
    if nets > 0 && nets != opts.fleet_nodes as usize {
        anyhow::bail!(
            "--fleet-nets: {nets} networks for {} fleet nodes; give one per node",
            opts.fleet_nodes
        );
    }
    let text = std::fs::read(scenario_path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", scenario_path.display()))?;
    let world = crate::world::World::build(scenario).map_err(anyhow::Error::msg)?;
    let client = mailsim_cluster::connect(&opts.nats, "mailsim-coordinator").await?;
    let js = async_nats::jetstream::new(client);
    let bucket = kv::bucket(&js, &opts.run).await?;
    if kv::get(&bucket, "scenario").await?.is_some() {
        return Err(NotBegun(format!(
            "--run-id {}: this NATS server already holds a run of that id; choose another",
            opts.run
        ))
        .into());
    }
    let mut stream = mailsim_cluster::events_stream(&js, &opts.run).await?;
    // Records published under this id before (daemons with --nats, say) would be taken for
    // this run's and its nodes' records dropped as duplicates.
    let held = stream
        .info()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .state
        .messages;
    if held > 0 {
        return Err(NotBegun(format!(
            "--run-id {}: this NATS server's stream {} already holds {held} records of that \
             id; choose another",
            opts.run,
            mailsim_cluster::stream_name(&opts.run)
        ))
        .into());
    }
    // The coordinator's own log, published like a node's.
    let own = opts.out.join(COORDINATOR);
    let log = crate::assemble::open_log(
        &own,
        std::sync::Arc::new(mailsim_events::SystemClock),
        mailsim_events::Durability::EveryBatch,
        false,
    )?;
    let events = log.sink();
    let published = world.published(scenario);
    events.emit(mailsim_events::Event::RunStarted {
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        mode: "cluster".into(),
        dmarc_records: published.dmarc,
        spf_records: published.spf,
        profiles: published.profiles,
    });
    let publishing = PublishArgs {
        nats: Some(opts.nats.clone()),
        run: Some(opts.run.clone()),
        node: Some(COORDINATOR.to_string()),
    }
    .start(own.join("events.log"))
    .await?
    .ok_or_else(|| anyhow::anyhow!("no publisher"))?;
    let fleet_port = match opts.fleet_port {
        0 => mailsim_cluster::nats_server::free_port()?,
        p => p,
    };
    let plan = RunPlan {
        fleet_nodes: opts.fleet_nodes,
        fleet_port,
        fleet_nets: opts.fleet_nets.clone(),
        injectors: opts.injectors,
    };
    kv::put(&bucket, "plan", serde_json::to_vec(&plan)?).await?;
    kv::put(&bucket, "scenario", text).await?;
    let nodes = expected_nodes(&plan);
    eprintln!(
        "coordinator: run {} waiting for {} (fleet port {fleet_port})",
        opts.run,
        nodes.join(", ")
    );
    let mut submission = None;
    for node in &nodes {
        let ready = kv::wait_for(&bucket, &format!("ready.{node}"), opts.wait)
            .await
            .map_err(|e| anyhow::anyhow!("node {node} never said ready: {e}"))?;
        let ready: NodeReady = serde_json::from_slice(&ready)
            .map_err(|e| anyhow::anyhow!("ready.{node} in the run's bucket: {e}"))?;
        submission = submission.or(ready.submission);
    }
    let submission =
        submission.ok_or_else(|| anyhow::anyhow!("the MTA node gave no submission address"))?;
    let (tx, mut progress) = watch::channel(Progress::default());
    let following = tokio::spawn(follow(js.clone(), opts.run.clone(), "mta".into(), tx));
    let acked = if plan.injectors == 0 {
        let r = submit_share(scenario, submission, 0, 1, opts.connections).await?;
        r.acked
    } else {
        kv::put(&bucket, "start", "start").await?;
        let mut acked = 0;
        for i in 0..plan.injectors {
            let node = node_name(Role::Injector, Some(i), None);
            let said = kv::wait_for(
                &bucket,
                &format!("injected.{node}"),
                Duration::from_secs(scenario.mta.run_time_s_max),
            )
            .await
            .map_err(|e| anyhow::anyhow!("injector {node} never said what it submitted: {e}"))?;
            let said: Injected = serde_json::from_slice(&said)
                .map_err(|e| anyhow::anyhow!("injected.{node}: {e}"))?;
            acked += said.acked;
        }
        acked
    };
    eprintln!("coordinator: {acked} messages acknowledged by the MTA node");
    let limit = tokio::time::sleep(Duration::from_secs(scenario.mta.run_time_s_max));
    tokio::pin!(limit);
    let reason = loop {
        let p = *progress.borrow_and_update();
        if p.injected + p.suppressed >= acked && p.done >= p.injected {
            break "drained";
        }
        tokio::select! {
            _ = &mut limit => break "time limit",
            changed = progress.changed() => if changed.is_err() {
                let why = match following.await {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(())) => "it ended".to_string(),
                    Err(e) => e.to_string(),
                };
                anyhow::bail!("following the MTA node's records in the stream: {why}");
            },
        }
    };
    following.abort();
    kv::put(&bucket, "stop", reason).await?;
    for node in &nodes {
        kv::wait_for(
            &bucket,
            &format!("done.{node}"),
            DRAIN_MAX.saturating_add(opts.wait),
        )
        .await
        .map_err(|e| anyhow::anyhow!("node {node} never said done: {e}"))?;
    }
    events.emit(mailsim_events::Event::RunFinished {
        reason: reason.into(),
    });
    drop(events);
    log.close()?;
    publishing.finish().await?;
    let c = mailsim_cluster::collect::collect(&js, &opts.run, &opts.out).await?;
    eprintln!(
        "coordinator: collected {} records from {} nodes into {}",
        c.records,
        c.per_node.len(),
        opts.out.display()
    );
    let (summary, _) = crate::runner::fold_log(&crate::runner::events_path(&opts.out))?;
    std::fs::write(
        crate::runner::summary_path(&opts.out),
        crate::runner::summary_json(&summary)?,
    )?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coordinator's count of the MTA node's records does not depend on their order in
    /// the stream: after a broken connection a node's record can be stored after later ones
    /// (a delivery before its injection), and a record can be read twice.
    #[test]
    fn following_counts_the_same_in_any_order() {
        use mailsim_events::Event;
        let injected = |msg: u64| Event::Injected {
            msg,
            message_id: format!("<{msg}@test>"),
            from: "a@b.test".into(),
            rcpt: format!("u{msg}@c.test"),
            domain: "c.test".into(),
            size: 100,
            lane: None,
            campaign: None,
        };
        let delivered = |msg: u64| Event::Delivered {
            msg,
            rcpt: format!("u{msg}@c.test"),
            domain: "c.test".into(),
            mx: "mx.c.test".into(),
            attempts: 1,
        };
        let bounced = |msg: u64| Event::Bounced {
            msg,
            rcpt: format!("u{msg}@c.test"),
            domain: "c.test".into(),
            attempts: 2,
            reason: "550 5.1.1 no such user".into(),
            hard: true,
            reply: None,
        };
        let suppressed = Event::Suppressed {
            message_id: "<s@test>".into(),
            rcpt: "s@c.test".into(),
            domain: "c.test".into(),
            reason: "unsubscribed".into(),
        };
        // Messages 1-3 of the campaign and the MTA's own DSN (message 9, final, never injected).
        let mut events = vec![
            injected(1),
            delivered(1),
            injected(2),
            bounced(2),
            injected(3),
            delivered(3),
            delivered(9),
            suppressed,
        ];
        let want = Progress {
            injected: 3,
            suppressed: 1,
            done: 3,
        };
        let count = |events: &[Event]| {
            let mut f = Following::default();
            for e in events {
                f.read(e);
            }
            f.progress
        };
        assert_eq!(count(&events), want);
        // Every rotation and the reverse: finals before their injections.
        for _ in 0..events.len() {
            events.rotate_left(1);
            assert_eq!(count(&events), want);
        }
        events.reverse();
        assert_eq!(count(&events), want);
        // A record read twice (published again after a break) counts once.
        let twice: Vec<Event> = events.iter().chain(&events[..6]).cloned().collect();
        assert_eq!(count(&twice).done, 3);
        assert_eq!(count(&twice).injected, 3);
        // A final without its injection yet: not done.
        assert_eq!(count(&[delivered(1)]), Progress::default());
    }

    #[test]
    fn shards_split_every_domain_once() {
        let shards: Vec<Shard> = (0..3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        let domains: Vec<String> = (0..300).map(|i| format!("d{i}.example")).collect();
        for d in &domains {
            assert_eq!(shards.iter().filter(|s| s.owns(d)).count(), 1, "{d}");
            assert_eq!(shards[0].owns(d), shards[0].owns(&d.to_ascii_uppercase()));
        }
        let per: Vec<usize> = shards
            .iter()
            .map(|s| domains.iter().filter(|d| s.owns(d)).count())
            .collect();
        assert!(per.iter().all(|&n| n > 60), "{per:?}");
        let nets: FleetNets = "10.11.0.0/16, 127.12.0.0/16".parse().unwrap();
        assert_eq!(nets.0, vec![[10, 11], [127, 12]]);
        for d in &domains {
            let at = nets.place(d).unwrap();
            assert_eq!(at, nets.0[shard_of(d, 2) as usize]);
        }
        assert_eq!(FleetNets::default().place("a.test"), None);
        for bad in [
            "10.11.0.0/24",
            "10.11.1.0/16",
            "10.11.0.0",
            "x/16",
            "10.1.0.0/16,10.1.0.0/16",
        ] {
            let e = bad.parse::<FleetNets>().unwrap_err();
            assert!(e.contains("10.") || e.contains("x/16"), "{e}");
        }
        for bad in ["2/2", "1", "a/2", "0/0", "-1/2"] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains(bad) && e.contains("i/n"), "{e}");
        }
    }
}
