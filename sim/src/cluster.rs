//! mailsim past one machine: the fleet split into shards (`mailsim fleet --shard i/n`), every
//! daemon's event log published to a NATS JetStream stream (`--nats URL --run ID --node NAME`),
//! and `mailsim collect` merging the stream into one run directory.

use mailsim_cluster::publish::{Published, Publisher};
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
    /// True when this shard serves `domain`'s MX hosts (FNV-1a of the lowercased name).
    pub fn owns(&self, domain: &str) -> bool {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in domain.bytes().map(|b| b.to_ascii_lowercase()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h % u64::from(self.count) == u64::from(self.index)
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
        let task = tokio::spawn(publisher.run(stop_rx));
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
            "{}: published records {}..{} ({} acknowledged, {} already in the stream, {} retries)",
            self.node, p.resumed_at, p.next_seq, p.acknowledged, p.duplicates, p.retries
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

#[cfg(test)]
mod tests {
    use super::*;

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
        for bad in ["2/2", "1", "a/2", "0/0", "-1/2"] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains(bad) && e.contains("i/n"), "{e}");
        }
    }
}
