//! A node's log, followed and published to the run's stream.

use crate::{ClusterError, NODE_HEADER, SEQ_HEADER, check_name, events_subject, nats};
use async_nats::jetstream::{Context, context::PublishAckFuture, stream::Stream};
use mailsim_events::LogTail;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// Records published and not yet acknowledged, at most.
pub const IN_FLIGHT_MAX: usize = 1024;
/// How often the log is looked at again once everything in it is published.
const POLL: Duration = Duration::from_millis(50);
/// First wait after a failed publish (doubled up to [`RETRY_MAX`]).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Publishes one node's event log to the run's stream.
pub struct Publisher {
    pub js: Context,
    pub stream: Stream,
    pub run: String,
    pub node: String,
    /// The node's `events.log`.
    pub log: PathBuf,
}

/// What a publisher did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    /// The records the stream held from this node when the publisher started (the sequence
    /// number after the last one).
    pub found: u64,
    /// The sequence number publishing started from: [`IN_FLIGHT_MAX`] before `found`, since
    /// records sent before a break may have been stored out of order (a record lost with a
    /// broken connection while later ones were stored); the stream drops those it holds.
    pub resumed_at: u64,
    /// Records the stream acknowledged (those it already held by their id included).
    pub acknowledged: u64,
    /// Of those, the ones the stream said it held already (published before a break).
    pub duplicates: u64,
    /// The next sequence number to publish: every record before it is in the stream.
    pub next_seq: u64,
    /// Failed publishes that were retried.
    pub retries: u64,
}

/// A record sent and waiting for its acknowledgement, with where it starts in the log.
struct InFlight {
    seq: u64,
    offset: u64,
    records_before: u64,
    ack: PublishAckFuture,
}

/// The `seq` of a record (a log frame's payload, binary or JSON).
fn seq_of(payload: &[u8]) -> Result<u64, String> {
    mailsim_events::Record::from_payload(payload)
        .map(|r| r.seq)
        .map_err(|e| e.to_string())
}

/// The sequence number after the last record the stream holds on `subject` (0 when none).
pub async fn resume_point(stream: &Stream, subject: &str) -> Result<u64, ClusterError> {
    Ok(last_published(stream, subject)
        .await?
        .map_or(0, |(seq, _)| seq + 1))
}

/// The last record the stream holds on `subject`: its seq and its payload.
async fn last_published(
    stream: &Stream,
    subject: &str,
) -> Result<Option<(u64, bytes::Bytes)>, ClusterError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => {
            let seq = m
                .headers
                .get(SEQ_HEADER)
                .and_then(|v| v.as_str().parse::<u64>().ok())
                .ok_or_else(|| ClusterError::BadMessage {
                    seq: m.sequence,
                    subject: subject.to_string(),
                    message: format!("no {SEQ_HEADER} header with a number"),
                })?;
            Ok(Some((seq, m.payload)))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(nats(e)),
    }
}

/// Check that the record the stream holds last from this node, `seq`, is this log's (the same
/// bytes). A node started again with a new directory under the same run and node name numbers
/// its records from 0 again: they were taken for records already sent and dropped by their
/// message ids (an independent review: 100 delivered messages missing from the collected run).
fn check_same_log(
    tail: &mut mailsim_events::LogTail,
    publisher: &Publisher,
    seq: u64,
    published: &[u8],
) -> Result<(), ClusterError> {
    let (start, records) = (tail.offset(), tail.records());
    let mut same = None;
    while let Some(payload) = tail.next_payload()? {
        let s = seq_of(payload).map_err(|message| ClusterError::Record {
            path: publisher.log.display().to_string(),
            message,
        })?;
        if s >= seq {
            same = Some(s == seq && payload == published);
            break;
        }
    }
    tail.seek(start, records);
    match same {
        Some(true) => Ok(()),
        other => Err(ClusterError::Record {
            path: publisher.log.display().to_string(),
            message: format!(
                "run {:?} already holds records 0 to {seq} of node {:?} {}: they are another log's (a node started again with a new directory?); give this one another --node name, or start another run",
                publisher.run,
                publisher.node,
                if other.is_none() {
                    "and this log has fewer".to_string()
                } else {
                    format!("and this log's record {seq} is not the one published")
                }
            ),
        }),
    }
}

impl Publisher {
    /// Publish every record of the log, following it as it grows, until `stop` is true and
    /// everything the log holds then is acknowledged. Resumes after the last record the stream
    /// holds from this node. A failed publish (NATS down, a timeout) is retried from the first
    /// unacknowledged record after a pause, for as long as it takes; the stream drops what it
    /// already holds by message id.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<Published, ClusterError> {
        check_name("node name", &self.node)?;
        let subject = events_subject(&self.run, &self.node);
        let mut tail = open_when_there(&self.log, &mut stop).await?;
        let mut out = Published::default();
        let mut next_seq = loop {
            match last_published(&self.stream, &subject).await {
                Ok(None) => break 0,
                Ok(Some((seq, payload))) => {
                    check_same_log(&mut tail, &self, seq, &payload)?;
                    break seq + 1;
                }
                Err(e) => {
                    tracing::warn!("{}: finding where to resume: {e}; retrying", self.node);
                    out.retries += 1;
                    tokio::time::sleep(RETRY_MAX).await;
                }
            }
        };
        out.found = next_seq;
        next_seq = next_seq.saturating_sub(IN_FLIGHT_MAX as u64);
        out.resumed_at = next_seq;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut pause = RETRY_MIN;
        loop {
            // Read before the log is: stop is set once the log is closed, so a pass that
            // began after it reads the log to its true end.
            let stopping = *stop.borrow();
            let mut failed = None;
            // Send what the log holds, up to the window.
            while in_flight.len() < IN_FLIGHT_MAX {
                let (offset, records_before) = (tail.offset(), tail.records());
                let Some(payload) = tail.next_payload()? else {
                    break;
                };
                let seq = seq_of(payload).map_err(|message| ClusterError::Record {
                    path: format!("{} (record at byte {offset})", self.log.display()),
                    message,
                })?;
                if seq < next_seq {
                    continue;
                }
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("{}.{seq}", self.node).as_str(),
                );
                headers.insert(NODE_HEADER, self.node.as_str());
                headers.insert(SEQ_HEADER, seq.to_string().as_str());
                let body = bytes::Bytes::copy_from_slice(payload);
                match self
                    .js
                    .publish_with_headers(subject.clone(), headers, body)
                    .await
                {
                    Ok(ack) => in_flight.push_back(InFlight {
                        seq,
                        offset,
                        records_before,
                        ack,
                    }),
                    Err(e) => {
                        // Start again from the oldest record not acknowledged.
                        let (offset, records_before) = in_flight
                            .front()
                            .map_or((offset, records_before), |f| (f.offset, f.records_before));
                        failed = Some((e.to_string(), offset, records_before));
                        break;
                    }
                }
            }
            if failed.is_none() {
                match in_flight.pop_front() {
                    Some(f) => match f.ack.await {
                        Ok(ack) => {
                            out.acknowledged += 1;
                            out.duplicates += u64::from(ack.duplicate);
                            next_seq = f.seq + 1;
                            pause = RETRY_MIN;
                            continue;
                        }
                        // The oldest record not acknowledged: start again from it.
                        Err(e) => failed = Some((e.to_string(), f.offset, f.records_before)),
                    },
                    None => {
                        // Everything in the log is in the stream.
                        if stopping {
                            break;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(POLL) => {}
                            _ = stop.changed() => {}
                        }
                        continue;
                    }
                }
            }
            if let Some((why, offset, records_before)) = failed {
                in_flight.clear();
                tail.seek(offset, records_before);
                out.retries += 1;
                tracing::warn!(
                    "{}: publishing from record {next_seq}: {why}; retrying in {pause:?}",
                    self.node
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
        out.next_seq = next_seq;
        Ok(out)
    }
}

/// The log, once the node has created it (a node publishes from its start).
async fn open_when_there(
    log: &Path,
    stop: &mut watch::Receiver<bool>,
) -> Result<LogTail, ClusterError> {
    loop {
        match LogTail::open(log) {
            Ok(t) => return Ok(t),
            Err(e) if *stop.borrow() => return Err(e.into()),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
