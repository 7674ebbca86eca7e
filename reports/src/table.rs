//! The event log as a table: one row per record, one column per field of any event kind
//! (nulls where a kind has no such field), written to `events.parquet`.
//!
//! The log is read whole, its frames checked (length and CRC, a torn tail ends it as for every
//! reader), then decoded on every core into borrowed rows whose fields go straight into polars
//! column builders.
//!
//! Columns: `seq`, `ts_ms`, `type`, then the fields most events carry (`msg`, `message_id`,
//! `rcpt`, `domain`, `size`, `mx`, `host`, `addr`, `peer`, `conn`, `session`, `command`, `code`,
//! `enhanced`, `text` (an SMTP reply, also the reply inside `deferred` and `bounced`),
//! `attempts`, `retry_at_ms`, `reason`, `hard`, `spf`, `dkim`, `dmarc`, `header_from`,
//! `mail_from` (the envelope sender: `from` of `injected`, `mail_from` of `auth_verdict`)),
//! and `detail`: the fields of the rare kinds (`run_started`, `dns_answer`, `backoff`,
//! `conn_closed`, `dsn_queued`, `report_sent`, `report_received`, `suppression_added`) as a
//! JSON object, so that every field of every event is in the table without forty mostly
//! empty columns.

use mailsim_events::LogError;
use polars::prelude::*;
use serde::Deserialize;
use std::borrow::Cow;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{path}: record at byte {offset}: {message}")]
    BadRecord {
        path: String,
        offset: usize,
        message: String,
    },
    #[error(transparent)]
    Polars(#[from] PolarsError),
    #[error("{0}: a worker thread panicked")]
    Panicked(&'static str),
}

#[derive(Deserialize, Default)]
struct Reply<'a> {
    #[serde(borrow, default)]
    command: Option<Cow<'a, str>>,
    #[serde(default)]
    code: Option<u32>,
    #[serde(borrow, default)]
    enhanced: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// Every field any event kind has, flat (serde ignores what a kind does not carry).
#[derive(Deserialize)]
struct Row<'a> {
    seq: u64,
    ts: u64,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    msg: Option<u64>,
    #[serde(borrow, default)]
    message_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    rcpt: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    domain: Option<Cow<'a, str>>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(borrow, default)]
    mx: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    addr: Option<Cow<'a, str>>,
    #[serde(default)]
    conn: Option<u64>,
    #[serde(borrow, default)]
    host: Option<Cow<'a, str>>,
    #[serde(default)]
    session: Option<u64>,
    #[serde(borrow, default)]
    peer: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    command: Option<Cow<'a, str>>,
    #[serde(default)]
    code: Option<u32>,
    #[serde(borrow, default)]
    enhanced: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reply: Option<Reply<'a>>,
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    retry_at_ms: Option<u64>,
    #[serde(default)]
    until_ms: Option<u64>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(default)]
    hard: Option<bool>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    qtype: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    answer: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    spf: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    dkim: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    dmarc: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    header_from: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    mail_from: Option<Cow<'a, str>>,
    #[serde(rename = "kind", borrow, default)]
    report_kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(default)]
    about: Option<u64>,
    #[serde(borrow, default)]
    scenario: Option<Cow<'a, str>>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(borrow, default)]
    mode: Option<Cow<'a, str>>,
    #[serde(default)]
    messages: Option<u64>,
    #[serde(default)]
    dmarc_records: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    spf_records: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    profiles: Option<std::collections::BTreeMap<String, String>>,
}

/// Records decoded per part, and rows per Parquet row group.
const ROWS_PER_CHUNK: usize = 1 << 20;

/// Column builders, one per field: nulls cost a bit, strings go straight into Arrow buffers.
macro_rules! columns {
    ($($name:ident : $kind:ident),* $(,)?) => {
        struct Cols {
            $($name: columns!(@builder $kind),)*
        }
        impl Cols {
            fn with_capacity(n: usize) -> Self {
                Cols { $($name: columns!(@new $kind, stringify!($name).trim_start_matches("r#"), n),)* }
            }
            fn into_columns(self) -> Vec<Column> {
                vec![$(self.$name.finish().into_series().into_column(),)*]
            }
        }
    };
    (@builder str) => { StringChunkedBuilder };
    (@builder u64) => { PrimitiveChunkedBuilder<UInt64Type> };
    (@builder u32) => { PrimitiveChunkedBuilder<UInt32Type> };
    (@builder bool) => { BooleanChunkedBuilder };
    (@new str, $n:expr, $cap:expr) => { StringChunkedBuilder::new($n.into(), $cap) };
    (@new u64, $n:expr, $cap:expr) => { PrimitiveChunkedBuilder::<UInt64Type>::new($n.into(), $cap) };
    (@new u32, $n:expr, $cap:expr) => { PrimitiveChunkedBuilder::<UInt32Type>::new($n.into(), $cap) };
    (@new bool, $n:expr, $cap:expr) => { BooleanChunkedBuilder::new($n.into(), $cap) };
}

columns! {
    seq: u64, ts_ms: u64, r#type: str, msg: u64, message_id: str, rcpt: str, domain: str,
    size: u64, mx: str, host: str, addr: str, peer: str, conn: u64, session: u64,
    command: str, code: u32, enhanced: str, text: str, attempts: u32, retry_at_ms: u64,
    reason: str, hard: bool, spf: str, dkim: str, dmarc: str, header_from: str,
    mail_from: str, detail: str,
}

/// The fields of the rare event kinds, as one JSON object (None when there are none).
fn detail(r: &Row<'_>) -> Option<String> {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        m.insert(k.to_string(), v);
    };
    if let Some(v) = &r.scenario {
        put("scenario", v.as_ref().into());
    }
    if let Some(v) = r.seed {
        put("seed", v.into());
    }
    if let Some(v) = &r.mode {
        put("mode", v.as_ref().into());
    }
    for (k, v) in [
        ("dmarc_records", &r.dmarc_records),
        ("spf_records", &r.spf_records),
        ("profiles", &r.profiles),
    ] {
        if let Some(v) = v {
            put(k, serde_json::to_value(v).unwrap_or_default());
        }
    }
    if let Some(v) = &r.error {
        put("error", v.as_ref().into());
    }
    if let Some(v) = &r.qtype {
        put("qtype", v.as_ref().into());
    }
    if let Some(v) = &r.answer {
        put(
            "answer",
            v.iter().map(|a| a.as_ref()).collect::<Vec<_>>().into(),
        );
    }
    if let Some(v) = r.until_ms {
        put("until_ms", v.into());
    }
    if let Some(v) = &r.report_kind {
        put("kind", v.as_ref().into());
    }
    if let Some(v) = &r.to {
        put("to", v.as_ref().into());
    }
    if let Some(v) = &r.status {
        put("status", v.as_ref().into());
    }
    if let Some(v) = r.about {
        put("about", v.into());
    }
    if let Some(v) = r.messages {
        put("messages", v.into());
    }
    (!m.is_empty()).then(|| serde_json::Value::Object(m).to_string())
}

impl Cols {
    fn push(&mut self, r: Row<'_>) {
        let detail = detail(&r);
        let reply = r.reply.unwrap_or_default();
        self.seq.append_value(r.seq);
        self.ts_ms.append_value(r.ts);
        self.r#type.append_value(&r.kind);
        self.msg.append_option(r.msg);
        self.message_id.append_option(r.message_id);
        self.rcpt.append_option(r.rcpt);
        self.domain.append_option(r.domain);
        self.size.append_option(r.size);
        self.mx.append_option(r.mx);
        self.host.append_option(r.host);
        self.addr.append_option(r.addr);
        self.peer.append_option(r.peer);
        self.conn.append_option(r.conn);
        self.session.append_option(r.session);
        self.command.append_option(r.command.or(reply.command));
        self.code.append_option(r.code.or(reply.code));
        self.enhanced.append_option(r.enhanced.or(reply.enhanced));
        self.text.append_option(r.text.or(reply.text));
        self.attempts.append_option(r.attempts);
        self.retry_at_ms.append_option(r.retry_at_ms);
        self.reason.append_option(r.reason);
        self.hard.append_option(r.hard);
        self.spf.append_option(r.spf);
        self.dkim.append_option(r.dkim);
        self.dmarc.append_option(r.dmarc);
        self.header_from.append_option(r.header_from);
        self.mail_from.append_option(r.mail_from.or(r.from));
        self.detail.append_option(detail);
    }
}

/// Decode the frames `ranges` of the log `bytes`.
fn decode_part(
    path: &str,
    bytes: &[u8],
    ranges: &[std::ops::Range<usize>],
) -> Result<DataFrame, TableError> {
    let mut cols = Cols::with_capacity(ranges.len());
    for r in ranges {
        let bad = |message: String| TableError::BadRecord {
            path: path.to_string(),
            offset: r.start,
            message,
        };
        let row: Row<'_> =
            serde_json::from_slice(&bytes[r.clone()]).map_err(|err| bad(err.to_string()))?;
        // What `mailsim events` refuses, the report refuses too.
        if !mailsim_events::Event::is_kind(&row.kind) {
            return Err(bad(format!("unknown event type {:?}", row.kind)));
        }
        cols.push(row);
    }
    Ok(DataFrame::new_infer_height(cols.into_columns())?)
}

/// The whole log as a DataFrame (rows in log order) and whether a torn tail was cut.
/// `progress` is told how many records are decoded as it goes.
pub fn load(path: &Path, progress: &(dyn Fn(u64) + Sync)) -> Result<(DataFrame, bool), TableError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TableError::Io {
        path: p.clone(),
        source,
    })?;
    let (ranges, torn) = mailsim_events::frame_ranges(path, &bytes)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Parts of at most ROWS_PER_CHUNK records keep the builders small; each becomes one
    // Parquet row group.
    let chunk = ranges.len().div_ceil(threads).clamp(1, ROWS_PER_CHUNK);
    let parts: Vec<&[std::ops::Range<usize>]> = ranges.chunks(chunk).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<DataFrame, TableError>>>> = (0..parts.len())
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(parts.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(part) = parts.get(i) else { break };
                    let df = decode_part(&p, &bytes, part);
                    progress(part.len() as u64);
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(df);
                }
            });
        }
    });
    let mut df: Option<DataFrame> = None;
    for slot in slots {
        let Some(part) = slot.into_inner().unwrap_or_else(|e| e.into_inner()) else {
            return Err(TableError::Panicked("decoding the event log"));
        };
        let part = part?;
        match df.as_mut() {
            None => df = Some(part),
            Some(d) => {
                d.vstack_mut(&part)?;
            }
        }
    }
    // Left in chunks (one per decoded part): Parquet writes row groups from them and polars
    // reads them as they are; gluing them together would copy every column once more.
    let df = match df {
        Some(d) => d,
        None => DataFrame::new_infer_height(Cols::with_capacity(0).into_columns())?,
    };
    Ok((df, torn))
}

/// Write the table as Parquet (zstd).
pub fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<(), TableError> {
    let file = std::fs::File::create(path).map_err(|source| TableError::Io {
        path: path.display().to_string(),
        source,
    })?;
    // LZ4: most of the cost of writing is compression, and the file is read once, locally.
    ParquetWriter::new(file)
        .with_compression(ParquetCompression::Lz4Raw)
        .with_row_group_size(Some(ROWS_PER_CHUNK))
        .finish(df)?;
    Ok(())
}
