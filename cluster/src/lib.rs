//! mailsim past one machine, on NATS JetStream.
//!
//! Every node of a multi-node run writes its event log locally first, as a single-machine run
//! does; a [`publish::Publisher`] follows that log and publishes each record to the run's
//! stream, on the node's own subject (`mailsim.<run>.events.<node>`), with a message id made of
//! the node and the record's sequence number. A publisher that restarts (the node was killed,
//! the connection broke) asks the stream for the last record it holds from that node and goes
//! on after it, and the stream drops any record it already holds by its id: nothing is lost and
//! nothing is stored twice. [`collect::collect`] reads the stream back into one `events.log`.
//!
//! Names: a run id and a node name are one NATS subject token each (letters, digits, `-`,
//! `_`), so that `mailsim.<run>.events.>` selects exactly one run's records.

pub mod collect;
pub mod kv;
pub mod nats_server;
pub mod publish;

use std::time::Duration;

/// How long the stream recognises a message id it has stored (beyond it, a publisher's resume
/// point is what keeps records from being stored twice).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// Headers every published record carries.
pub const NODE_HEADER: &str = "Mailsim-Node";
pub const SEQ_HEADER: &str = "Mailsim-Seq";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "{what} {name:?}: must be 1 to 64 letters, digits, '-' or '_' (it is a NATS subject token)"
    )]
    BadName { what: &'static str, name: String },
    #[error("NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("run {run:?}: no event stream on this NATS server (stream {stream})")]
    NoRun { run: String, stream: String },
    #[error(transparent)]
    Log(#[from] mailsim_events::LogError),
    #[error("{path}: {message}")]
    Record { path: String, message: String },
    #[error("stream message {seq} on {subject}: {message}")]
    BadMessage {
        seq: u64,
        subject: String,
        message: String,
    },
}

fn nats(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(e.to_string())
}

/// Check that `name` can be a subject token (a run id, a node name).
pub fn check_name(what: &'static str, name: &str) -> Result<(), ClusterError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ClusterError::BadName {
            what,
            name: name.to_string(),
        })
    }
}

/// The run's stream.
pub fn stream_name(run: &str) -> String {
    format!("MAILSIM_{run}")
}

/// Where `node` publishes its records.
pub fn events_subject(run: &str, node: &str) -> String {
    format!("mailsim.{run}.events.{node}")
}

/// Every node's records of `run`.
pub fn events_filter(run: &str) -> String {
    format!("mailsim.{run}.events.>")
}

/// Connect to the NATS server at `url` as `name`; the client reconnects by itself after a
/// broken connection (and buffers what is published meanwhile).
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, ClusterError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| ClusterError::Connect {
            url: url.to_string(),
            message: e.to_string(),
        })
}

/// The run's event stream, created on first use: file storage (it outlives the server's
/// restarts), one subject per node, message ids remembered for [`DUPLICATE_WINDOW`].
pub async fn events_stream(
    js: &async_nats::jetstream::Context,
    run: &str,
) -> Result<async_nats::jetstream::stream::Stream, ClusterError> {
    check_name("run id", run)?;
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: stream_name(run),
        subjects: vec![events_filter(run)],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map_err(nats)
}
