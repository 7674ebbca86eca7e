//! The event log as a table: one row per record, one column per field of any event kind
//! (nulls where a kind has no such field), written to `events.parquet`.
//!
//! The log is read whole, its frames checked (length and CRC, a torn tail ends it as for every
//! reader), then decoded on every core into borrowed rows and turned into polars columns.

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
}

macro_rules! columns {
    ($($name:ident : $ty:ty),* $(,)?) => {
        #[derive(Default)]
        struct Cols<'a> {
            $($name: Vec<Option<$ty>>,)*
            _life: std::marker::PhantomData<&'a ()>,
        }
        impl<'a> Cols<'a> {
            fn with_capacity(n: usize) -> Self {
                Cols { $($name: Vec::with_capacity(n),)* _life: std::marker::PhantomData }
            }
            fn into_columns(self) -> Vec<Column> {
                vec![$(Series::new(stringify!($name).trim_start_matches("r#").into(), self.$name).into_column(),)*]
            }
        }
    };
}

columns! {
    seq: u64, ts_ms: u64, r#type: Cow<'a, str>, msg: u64, message_id: Cow<'a, str>,
    from: Cow<'a, str>, rcpt: Cow<'a, str>, domain: Cow<'a, str>, size: u64, mx: Cow<'a, str>,
    addr: Cow<'a, str>, conn: u64, host: Cow<'a, str>, session: u64, peer: Cow<'a, str>,
    command: Cow<'a, str>, code: u32, enhanced: Cow<'a, str>, text: Cow<'a, str>,
    attempts: u32, retry_at_ms: u64, until_ms: u64, reason: Cow<'a, str>, hard: bool,
    error: Cow<'a, str>, qtype: Cow<'a, str>, answer: Cow<'a, str>, spf: Cow<'a, str>,
    dkim: Cow<'a, str>, dmarc: Cow<'a, str>, header_from: Cow<'a, str>,
    mail_from: Cow<'a, str>, report_kind: Cow<'a, str>, to: Cow<'a, str>,
    status: Cow<'a, str>, about: u64, scenario: Cow<'a, str>, seed: u64, mode: Cow<'a, str>,
    messages: u64,
}

impl<'a> Cols<'a> {
    fn push(&mut self, r: Row<'a>) {
        let reply = r.reply.unwrap_or_default();
        self.seq.push(Some(r.seq));
        self.ts_ms.push(Some(r.ts));
        self.r#type.push(Some(r.kind));
        self.msg.push(r.msg);
        self.message_id.push(r.message_id);
        self.from.push(r.from);
        self.rcpt.push(r.rcpt);
        self.domain.push(r.domain);
        self.size.push(r.size);
        self.mx.push(r.mx);
        self.addr.push(r.addr);
        self.conn.push(r.conn);
        self.host.push(r.host);
        self.session.push(r.session);
        self.peer.push(r.peer);
        self.command.push(r.command.or(reply.command));
        self.code.push(r.code.or(reply.code));
        self.enhanced.push(r.enhanced.or(reply.enhanced));
        self.text.push(r.text.or(reply.text));
        self.attempts.push(r.attempts);
        self.retry_at_ms.push(r.retry_at_ms);
        self.until_ms.push(r.until_ms);
        self.reason.push(r.reason);
        self.hard.push(r.hard);
        self.error.push(r.error);
        self.qtype.push(r.qtype);
        self.answer.push(r.answer.map(|a| Cow::Owned(a.join(" "))));
        self.spf.push(r.spf);
        self.dkim.push(r.dkim);
        self.dmarc.push(r.dmarc);
        self.header_from.push(r.header_from);
        self.mail_from.push(r.mail_from);
        self.report_kind.push(r.report_kind);
        self.to.push(r.to);
        self.status.push(r.status);
        self.about.push(r.about);
        self.scenario.push(r.scenario);
        self.seed.push(r.seed);
        self.mode.push(r.mode);
        self.messages.push(r.messages);
    }
}

/// Decode `ranges` of `bytes` into a DataFrame.
fn decode_chunk(
    path: &str,
    bytes: &[u8],
    ranges: &[std::ops::Range<usize>],
) -> Result<DataFrame, TableError> {
    let mut cols = Cols::with_capacity(ranges.len());
    for r in ranges {
        let row: Row<'_> = serde_json::from_slice(&bytes[r.clone()]).map_err(|err| {
            TableError::BadRecord {
                path: path.to_string(),
                offset: r.start,
                message: err.to_string(),
            }
        })?;
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
    // Chunks of at most a million records keep the per-chunk row buffers small.
    let chunk = ranges.len().div_ceil(threads).clamp(1, 1_000_000);
    let parts: Vec<&[std::ops::Range<usize>]> = ranges.chunks(chunk).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut frames_out: Vec<Option<Result<DataFrame, TableError>>> =
        (0..parts.len()).map(|_| None).collect();
    let slots: Vec<std::sync::Mutex<Option<Result<DataFrame, TableError>>>> =
        (0..parts.len()).map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(parts.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(part) = parts.get(i) else { break };
                    let df = decode_chunk(&p, &bytes, part);
                    progress(part.len() as u64);
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(df);
                }
            });
        }
    });
    for (i, slot) in slots.into_iter().enumerate() {
        frames_out[i] = slot.into_inner().unwrap_or_else(|e| e.into_inner());
    }
    let mut df: Option<DataFrame> = None;
    for part in frames_out.into_iter().flatten() {
        let part = part?;
        match df.as_mut() {
            None => df = Some(part),
            Some(d) => {
                d.vstack_mut(&part)?;
            }
        }
    }
    let df = match df {
        Some(mut d) => {
            d.rechunk_mut();
            d
        }
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
    ParquetWriter::new(file)
        .with_compression(ParquetCompression::Zstd(None))
        .finish(df)?;
    Ok(())
}
