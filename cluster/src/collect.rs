//! The run's stream read back into one event log.

use crate::{ClusterError, NODE_HEADER, SEQ_HEADER, nats, stream_name};
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures_util::StreamExt;
use mailsim_events::{Clock, Durability, Event, EventLog, Record};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The node whose `run_started` and `run_finished` frame a collected run.
pub const COORDINATOR: &str = "coordinator";

/// One record as the stream holds it.
#[derive(Debug, Clone)]
pub struct NodeRecord {
    pub node: String,
    /// Its sequence number in the node's own log.
    pub node_seq: u64,
    pub record: Record,
}

/// What [`collect`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Records in the merged log.
    pub records: u64,
    /// Records read from the stream per node.
    pub per_node: BTreeMap<String, u64>,
    /// Records the stream held twice (same node and sequence number), kept once.
    pub duplicates: u64,
    /// The nodes' own `run_started` and `run_finished`, left out (the coordinator's frame the
    /// merged run).
    pub node_lifecycle: u64,
}

/// Every record of `run` the stream holds now, in stream order.
pub async fn read_stream(js: &Context, run: &str) -> Result<Vec<NodeRecord>, ClusterError> {
    crate::check_name("run id", run)?;
    let name = stream_name(run);
    let mut stream = js.get_stream(&name).await.map_err(|e| {
        use async_nats::jetstream::context::GetStreamErrorKind;
        match e.kind() {
            GetStreamErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                ClusterError::NoRun {
                    run: run.to_string(),
                    stream: name.clone(),
                }
            }
            _ => nats(e),
        }
    })?;
    let last = stream.info().await.map_err(nats)?.state.last_sequence;
    let mut out = Vec::new();
    if last == 0 {
        return Ok(out);
    }
    let consumer = stream
        // No filter: the stream holds this run's records only (and nats-server 2.9 answers a
        // consumer made with a wildcard filter with a spurious error).
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let mut messages = consumer.messages().await.map_err(nats)?;
    while let Some(m) = messages.next().await {
        let m = m.map_err(nats)?;
        let at = m.info().map_err(nats)?.stream_sequence;
        let bad = |message: String| ClusterError::BadMessage {
            seq: at,
            subject: m.subject.to_string(),
            message,
        };
        let headers = m.headers.as_ref();
        // The node is the one whose subject the record came by; its header must agree.
        let node = m.subject.rsplit('.').next().unwrap_or_default().to_string();
        let said = headers
            .and_then(|h| h.get(NODE_HEADER))
            .map(|v| v.as_str().to_string())
            .ok_or_else(|| bad(format!("no {NODE_HEADER} header")))?;
        if said != node {
            return Err(bad(format!(
                "{NODE_HEADER} {said:?} on node {node:?}'s subject"
            )));
        }
        let node_seq = headers
            .and_then(|h| h.get(SEQ_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .ok_or_else(|| bad(format!("no {SEQ_HEADER} header with a number")))?;
        let record = Record::from_payload(&m.payload).map_err(|e| bad(e.to_string()))?;
        out.push(NodeRecord {
            node,
            node_seq,
            record,
        });
        if at >= last {
            break;
        }
    }
    Ok(out)
}

/// Order records as a collected run does: timestamp, then node, then the node's sequence; a
/// record held twice is kept once; the nodes' own `run_started` and `run_finished` give way
/// to the coordinator's (without a coordinator, the first start and the last finish are kept),
/// which open and close the run.
pub fn merge(mut records: Vec<NodeRecord>) -> (Vec<NodeRecord>, Collected) {
    let mut c = Collected::default();
    for r in &records {
        *c.per_node.entry(r.node.clone()).or_default() += 1;
    }
    records.sort_by(|a, b| {
        (a.record.ts, &a.node, a.node_seq).cmp(&(b.record.ts, &b.node, b.node_seq))
    });
    let before = records.len();
    records.dedup_by(|b, a| a.node == b.node && a.node_seq == b.node_seq);
    c.duplicates = (before - records.len()) as u64;
    let coordinator = records.iter().any(|r| r.node == COORDINATOR);
    let is_start = |r: &NodeRecord| matches!(r.record.event, Event::RunStarted { .. });
    let is_finish = |r: &NodeRecord| matches!(r.record.event, Event::RunFinished { .. });
    let start = records
        .iter()
        .position(|r| is_start(r) && (!coordinator || r.node == COORDINATOR));
    let finish = records
        .iter()
        .rposition(|r| is_finish(r) && (!coordinator || r.node == COORDINATOR));
    let (mut first, mut last, mut body) = (None, None, Vec::with_capacity(records.len()));
    for (i, r) in records.into_iter().enumerate() {
        if Some(i) == start {
            first = Some(r);
        } else if Some(i) == finish {
            last = Some(r);
        } else if is_start(&r) || is_finish(&r) {
            c.node_lifecycle += 1;
        } else {
            body.push(r);
        }
    }
    let merged: Vec<NodeRecord> = first.into_iter().chain(body).chain(last).collect();
    c.records = merged.len() as u64;
    (merged, c)
}

/// A clock that reads what it was last set to: the merged log keeps each record's own time.
struct Stamp(AtomicU64);

impl Clock for Stamp {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Read `run`'s stream and write it as one run directory's `events.log` in `out` (which must
/// not hold one).
pub async fn collect(js: &Context, run: &str, out: &Path) -> Result<Collected, ClusterError> {
    let path = out.join("events.log");
    if path.exists() {
        return Err(ClusterError::Record {
            path: path.display().to_string(),
            message: "already holds a run; choose another --out or remove it".into(),
        });
    }
    let records = read_stream(js, run).await?;
    if records.is_empty() {
        return Err(ClusterError::NoRun {
            run: run.to_string(),
            stream: format!("{} holds no records", stream_name(run)),
        });
    }
    let (merged, collected) = merge(records);
    std::fs::create_dir_all(out).map_err(|e| ClusterError::Record {
        path: out.display().to_string(),
        message: e.to_string(),
    })?;
    let stamp = Arc::new(Stamp(AtomicU64::new(0)));
    let log = EventLog::create_with(&path, stamp.clone(), Durability::OnFlush)?;
    let sink = log.sink();
    for r in merged {
        stamp.0.store(r.record.ts, Ordering::Relaxed);
        sink.emit(r.record.event);
    }
    drop(sink);
    log.close()?;
    Ok(collected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(node: &str, node_seq: u64, ts: u64, event: Event) -> NodeRecord {
        NodeRecord {
            node: node.into(),
            node_seq,
            record: Record {
                seq: node_seq,
                ts,
                event,
            },
        }
    }

    fn finished(reason: &str) -> Event {
        Event::RunFinished {
            reason: reason.into(),
        }
    }

    fn started(mode: &str) -> Event {
        Event::RunStarted {
            scenario: "s".into(),
            seed: 1,
            mode: mode.into(),
            dmarc_records: Default::default(),
            spf_records: Default::default(),
            profiles: Default::default(),
        }
    }

    #[test]
    fn merged_by_time_then_node_then_sequence_once_each() {
        let suppressed = |who: &str| Event::Suppressed {
            message_id: format!("<{who}@x>"),
            rcpt: "r@x".into(),
            domain: "x".into(),
            reason: "test".into(),
        };
        let records = vec![
            rec("b", 1, 10, suppressed("b1")),
            rec("a", 2, 10, suppressed("a2")),
            rec("a", 1, 10, suppressed("a1")),
            rec("b", 0, 5, started("fleet")),
            rec(COORDINATOR, 0, 1, started("cluster")),
            rec("a", 1, 10, suppressed("a1")),
            rec("b", 2, 50, finished("stopped")),
            rec(COORDINATOR, 1, 99, finished("drained")),
        ];
        let (merged, c) = merge(records);
        let order: Vec<(String, u64)> = merged
            .iter()
            .map(|r| (r.node.clone(), r.node_seq))
            .collect();
        // Equal times: node a before b, a's sequence 1 before 2; the duplicate of a/1 kept
        // once; b's own start and finish left out; the coordinator's first and last.
        assert_eq!(
            order,
            [
                (COORDINATOR, 0),
                ("a", 1),
                ("a", 2),
                ("b", 1),
                (COORDINATOR, 1)
            ]
            .map(|(n, s)| (n.to_string(), s))
        );
        assert_eq!((c.duplicates, c.node_lifecycle, c.records), (1, 2, 5));
        assert_eq!(c.per_node["a"], 3);
    }
}
