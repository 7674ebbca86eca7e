//! The event log as a table: one row per record, one column per field of any event kind
//! (nulls where a kind has no such field), written to `events.parquet`.
//!
//! The log is read in parts of [`ROWS_PER_PART`] records, its frames checked (length and CRC, a
//! torn tail ends it as for every reader); each part is decoded on one of the cores into
//! borrowed rows whose fields go straight into polars column builders, written as one Parquet
//! row group and dropped, so that memory holds a few parts whatever the log's size.
//!
//! The columns come from the event schema ([`Event::SCHEMA`]), so a new kind or field reaches
//! `events.parquet` without an edit here: `seq`, `ts_ms`, `type`; one column per scalar field
//! of the common kinds (`msg`, `message_id`, `from`, `rcpt`, `domain`, ...; a reply, also the
//! one inside `deferred` and `bounced`, as `command`, `code`, `enhanced`, `text`); and `detail`,
//! the other fields of a record (those only the rare kinds carry: `run_started`, `dns_answer`,
//! `backoff`, `report_received`, ...; lists and maps) as one JSON object, so that every field of
//! every event is in the table without forty mostly empty columns.

use mailsim_events::{Event, LogError, Shape};
use polars::prelude::*;
use polars_arrow::array::{MutableBinaryViewArray, MutableBooleanArray, MutablePrimitiveArray};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

mod from_record;

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
        offset: u64,
        message: String,
    },
    #[error(transparent)]
    Polars(#[from] PolarsError),
    #[error("writing {path}: {source}")]
    Write { path: String, source: PolarsError },
    #[error("{0}: a worker thread panicked")]
    Panicked(&'static str),
}

/// Records decoded per part, and rows per Parquet row group.
pub const ROWS_PER_PART: usize = 1 << 18;

/// A string from the log, borrowed when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The reply inside `deferred` and `bounced` (shape [`Shape::Reply`]).
#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow, default)]
    command: Option<Text<'a>>,
    #[serde(default)]
    code: Option<u32>,
    #[serde(borrow, default)]
    enhanced: Option<Text<'a>>,
    #[serde(borrow, default)]
    text: Option<Text<'a>>,
}

/// Where a field of the log goes in the table.
#[derive(Clone, Copy)]
enum Slot {
    Column(usize),
    /// An [`SmtpReply`](mailsim_events::SmtpReply) object: into `command`, `code`,
    /// `enhanced` and `text`.
    Reply,
}

/// The table's columns, derived from the event schema ([`Event::SCHEMA`]): `seq`, `ts_ms`,
/// `type`; then every scalar field of the common kinds, in schema order (a reply as its four
/// parts); then `detail`, a JSON object holding every other field (those only rare kinds carry,
/// lists and maps, and any field the schema does not know).
struct Layout {
    columns: Vec<(&'static str, Shape)>,
    /// Where each field name goes, by the name's first byte: a record's keys are looked up
    /// without hashing (a few short comparisons each).
    by_first: Vec<Vec<(&'static str, Slot)>>,
}

/// The first three columns, in this order; `detail` is the last.
const SEQ: usize = 0;
const TS: usize = 1;
const KIND: usize = 2;

/// The parts of a reply, as columns.
const REPLY: [(&str, Shape); 4] = [
    ("command", Shape::Str),
    ("code", Shape::U32),
    ("enhanced", Shape::Str),
    ("text", Shape::Str),
];

impl Layout {
    fn detail(&self) -> usize {
        self.columns.len() - 1
    }

    fn slot(&self, key: &str) -> Option<Slot> {
        let first = usize::from(*key.as_bytes().first()?);
        self.by_first[first]
            .iter()
            .find(|(name, _)| *name == key)
            .map(|&(_, slot)| slot)
    }

    fn new() -> Layout {
        let mut columns: Vec<(&'static str, Shape)> = vec![
            ("seq", Shape::U64),
            ("ts_ms", Shape::U64),
            ("type", Shape::Str),
        ];
        let add = |columns: &mut Vec<(&'static str, Shape)>, name, shape| {
            if !columns.iter().any(|(n, _)| *n == name) {
                columns.push((name, shape));
            }
        };
        for kind in Event::SCHEMA.iter().filter(|k| !k.rare) {
            for &(name, shape) in kind.fields {
                match shape {
                    Shape::Reply => REPLY.iter().for_each(|&(n, s)| add(&mut columns, n, s)),
                    Shape::Json => {}
                    _ => add(&mut columns, name, shape),
                }
            }
        }
        columns.push(("detail", Shape::Json));
        let mut slots: HashMap<&'static str, Slot> = columns
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| !matches!(*n, "ts_ms" | "detail"))
            .map(|(i, (n, _))| (*n, Slot::Column(i)))
            .collect();
        slots.insert("ts", Slot::Column(TS));
        for kind in Event::SCHEMA {
            for &(name, shape) in kind.fields {
                if shape == Shape::Reply {
                    slots.insert(name, Slot::Reply);
                }
            }
        }
        let mut by_first = vec![Vec::new(); 256];
        for (&name, &slot) in &slots {
            by_first[usize::from(name.as_bytes()[0])].push((name, slot));
        }
        Layout { by_first, columns }
    }
}

/// One column's builder: strings go straight into Arrow buffers; the nulls a column has between
/// two values (most columns are empty in most rows) are added as one run when the next value
/// comes, or when the part ends.
enum Builder {
    Str(MutableBinaryViewArray<str>),
    U64(MutablePrimitiveArray<u64>),
    U32(MutablePrimitiveArray<u32>),
    Bool(MutableBooleanArray),
}

impl Builder {
    fn new(shape: Shape, n: usize) -> Builder {
        match shape {
            Shape::U64 => Builder::U64(MutablePrimitiveArray::with_capacity(n)),
            Shape::U32 => Builder::U32(MutablePrimitiveArray::with_capacity(n)),
            Shape::Bool => Builder::Bool(MutableBooleanArray::with_capacity(n)),
            Shape::Str | Shape::Reply | Shape::Json => {
                Builder::Str(MutableBinaryViewArray::with_capacity(n))
            }
        }
    }

    fn nulls(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        match self {
            Builder::Str(b) => b.extend_null(n),
            Builder::U64(b) => b.extend_null(n),
            Builder::U32(b) => b.extend_null(n),
            Builder::Bool(b) => b.extend_null(n),
        }
    }

    fn finish(self, name: &str) -> Column {
        let name = PlSmallStr::from(name);
        match self {
            Builder::Str(b) => StringChunked::with_chunk(name, b.freeze()).into_column(),
            Builder::U64(b) => UInt64Chunked::with_chunk(name, b.freeze()).into_column(),
            Builder::U32(b) => UInt32Chunked::with_chunk(name, b.freeze()).into_column(),
            Builder::Bool(b) => BooleanChunked::with_chunk(name, b.freeze()).into_column(),
        }
    }
}

/// The builders of one part of the table, and how many rows each column holds so far.
struct Cols<'l> {
    layout: &'l Layout,
    builders: Vec<Builder>,
    /// Per column, the rows it holds (values and nulls): the current row is filled in column
    /// `i` when `len[i] == row + 1`.
    len: Vec<usize>,
    /// The current row (from 0).
    row: usize,
}

impl<'l> Cols<'l> {
    fn with_capacity(layout: &'l Layout, n: usize) -> Self {
        Cols {
            layout,
            builders: layout
                .columns
                .iter()
                .map(|&(_, shape)| Builder::new(shape, n))
                .collect(),
            len: vec![0; layout.columns.len()],
            row: 0,
        }
    }

    fn filled(&self, i: usize) -> bool {
        self.len[i] == self.row + 1
    }

    /// The columns of the `rows` rows read.
    fn into_columns(self, rows: usize) -> Vec<Column> {
        self.builders
            .into_iter()
            .zip(self.len)
            .zip(&self.layout.columns)
            .map(|((mut b, len), (name, _))| {
                b.nulls(rows - len);
                b.finish(name)
            })
            .collect()
    }

    /// The builder of column `i`, its nulls up to this row added, for this row's value (a
    /// field given twice is an error).
    fn fill<E: de::Error>(&mut self, i: usize) -> Result<&mut Builder, E> {
        if self.filled(i) {
            return Err(E::custom(format_args!(
                "field `{}` given twice",
                self.layout.columns[i].0
            )));
        }
        let b = &mut self.builders[i];
        b.nulls(self.row - self.len[i]);
        self.len[i] = self.row + 1;
        Ok(b)
    }

    /// One value of column `i`, read as the column's shape.
    fn value<'de, A: MapAccess<'de>>(&mut self, i: usize, map: &mut A) -> Result<(), A::Error> {
        match self.fill(i)? {
            Builder::Str(b) => b.push(map.next_value::<Option<Text<'de>>>()?.map(|t| t.0)),
            Builder::U64(b) => b.push(map.next_value::<Option<u64>>()?),
            Builder::U32(b) => b.push(map.next_value::<Option<u32>>()?),
            Builder::Bool(b) => b.push(map.next_value::<Option<bool>>()?),
        }
        Ok(())
    }

    /// The row's last step: the fields no column holds as its `detail`; every row has `seq`,
    /// `ts` and `type`.
    fn end_row<E: de::Error>(
        &mut self,
        detail: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), E> {
        for (required, name) in [(SEQ, "seq"), (TS, "ts"), (KIND, "type")] {
            if !self.filled(required) {
                return Err(E::missing_field(name));
            }
        }
        if !detail.is_empty() {
            let Builder::Str(b) = self.fill(self.layout.detail())? else {
                unreachable!("`detail` is a string column")
            };
            b.push_value(serde_json::Value::Object(detail).to_string());
        }
        self.row += 1;
        Ok(())
    }

    fn reply_part<E: de::Error>(&mut self, name: &str, t: Option<Text<'_>>) -> Result<(), E> {
        if let Some(Slot::Column(i)) = self.layout.slot(name)
            && let Builder::Str(b) = self.fill(i)?
        {
            b.push(t.map(|t| t.0));
        }
        Ok(())
    }
}

/// Reads one record straight into the builders; returns its `type`.
struct RowSeed<'c, 'l>(&'c mut Cols<'l>);

impl<'de> DeserializeSeed<'de> for RowSeed<'_, '_> {
    type Value = Text<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Text<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_, '_> {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
        let cols = self.0;
        let layout = cols.layout;
        let mut kind: Option<Text<'de>> = None;
        let mut detail = serde_json::Map::new();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match layout.slot(&key.0) {
                Some(Slot::Column(i)) if i == KIND => {
                    let t: Text<'de> = map.next_value()?;
                    let Builder::Str(b) = cols.fill(i)? else {
                        unreachable!("`type` is a string column")
                    };
                    b.push_value(&*t.0);
                    kind = Some(t);
                }
                Some(Slot::Column(i)) => cols.value(i, &mut map)?,
                Some(Slot::Reply) => {
                    if let Some(r) = map.next_value::<Option<Reply<'de>>>()? {
                        cols.reply_part("command", r.command)?;
                        if let Some(Slot::Column(i)) = layout.slot("code")
                            && let Builder::U32(b) = cols.fill(i)?
                        {
                            b.push(r.code);
                        }
                        cols.reply_part("enhanced", r.enhanced)?;
                        cols.reply_part("text", r.text)?;
                    }
                }
                None => {
                    let v: serde_json::Value = map.next_value()?;
                    detail.insert(key.0.into_owned(), v);
                }
            }
        }
        cols.end_row(detail)?;
        kind.ok_or_else(|| de::Error::missing_field("type"))
    }
}

/// A run of records read from the log: their payloads one after another, and for each its
/// range there and the offset its frame starts at in the log (for errors).
#[derive(Default)]
struct Part {
    bytes: Vec<u8>,
    records: Vec<(std::ops::Range<usize>, u64)>,
}

impl Part {
    fn push(&mut self, at: u64, payload: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.records.push((start..self.bytes.len(), at));
    }
}

/// Decode the records of `part` (from the log `path`) into columns.
fn decode_part(path: &str, part: &Part) -> Result<DataFrame, TableError> {
    let layout = Layout::new();
    let mut cols = Cols::with_capacity(&layout, part.records.len());
    for (r, at) in &part.records {
        let bad = |message: String| TableError::BadRecord {
            path: path.to_string(),
            offset: *at,
            message,
        };
        let payload = &part.bytes[r.clone()];
        if payload.first() == Some(&mailsim_events::binary::MARKER) {
            // Log format 2: the record read as a view of its bytes, its fields as its JSON
            // would give them.
            let record =
                mailsim_events::RecordView::from_binary(payload).map_err(|e| bad(e.to_string()))?;
            from_record::push(&mut cols, &record).map_err(|e| bad(e.to_string()))?;
            continue;
        }
        let mut de = serde_json::Deserializer::from_slice(payload);
        let kind = RowSeed(&mut cols)
            .deserialize(&mut de)
            .and_then(|k| de.end().map(|()| k))
            .map_err(|err| bad(err.to_string()))?;
        // What `mailsim events` refuses, the report refuses too.
        if !Event::is_kind(&kind.0) {
            return Err(bad(format!("unknown event type {:?}", kind.0)));
        }
    }
    let rows = cols.row;
    Ok(DataFrame::new_infer_height(cols.into_columns(rows))?)
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// Records (rows) written.
    pub rows: u64,
    /// True when a torn tail ended the log (the records before it are written).
    pub torn: bool,
}

/// The most threads decoding parts. Parts sent to be decoded and not yet written are at most
/// one more than the decoders: what bounds the export's memory, whatever the number of cores.
const DECODERS_MAX: usize = 4;

/// Write the event log `log` as the table `parquet` (rows in log order, LZ4), part by part:
/// [`ROWS_PER_PART`] records are read (frames checked: length and CRC, a torn tail ends the
/// log as for every reader), decoded on other cores into columns, and written as one row
/// group, so that memory holds a few parts whatever the log's size (and however many cores). `progress` is told how
/// many records are written as it goes. On any error (a damaged or invalid record, I/O) nothing
/// is left at `parquet` (an earlier file there is kept).
pub fn export(
    log: &Path,
    parquet: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Exported, TableError> {
    export_in_parts(log, parquet, ROWS_PER_PART, progress)
}

fn export_in_parts(
    log: &Path,
    parquet: &Path,
    rows_per_part: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Exported, TableError> {
    let partial = parquet.with_extension("parquet.partial");
    let written = export_to(log, &partial, rows_per_part, progress).and_then(|e| {
        std::fs::rename(&partial, parquet).map_err(|source| TableError::Write {
            path: parquet.display().to_string(),
            source: source.into(),
        })?;
        Ok(e)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// One part's columns, or why not, from the thread that decoded it (an error when it ended
/// without answering).
type Decoded = std::sync::mpsc::Receiver<Result<DataFrame, TableError>>;

fn export_to(
    log: &Path,
    out: &Path,
    rows_per_part: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Exported, TableError> {
    let p = log.display().to_string();
    let mut reader = mailsim_events::LogReader::open(log)?;
    let written = |source: PolarsError| TableError::Write {
        path: out.display().to_string(),
        source,
    };
    let file = std::fs::File::create(out).map_err(|e| written(e.into()))?;
    let empty =
        DataFrame::new_infer_height(Cols::with_capacity(&Layout::new(), 0).into_columns(0))?;
    // LZ4: most of the cost of writing is compression, and the file is read locally.
    let mut writer = ParquetWriter::new(file)
        .with_compression(ParquetCompression::Lz4Raw)
        .batched(empty.schema())
        .map_err(written)?;
    let decoders = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(DECODERS_MAX);
    std::thread::scope(|scope| {
        // Each part goes to a decoder with a channel for its answer; the writer takes the
        // answers in log order. Both queues are bounded: a slow writer holds up the decoders,
        // and they the reader. A decoder that ends without answering (a panic) is an error for
        // the writer at that part.
        type Job = (
            Part,
            std::sync::mpsc::SyncSender<Result<DataFrame, TableError>>,
        );
        let (to_decode, queue) = std::sync::mpsc::sync_channel::<Job>(decoders);
        let (in_order, answers) = std::sync::mpsc::sync_channel::<Decoded>(decoders);
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        let workers: Vec<_> = (0..decoders)
            .map(|_| {
                let queue = queue.clone();
                let p = &p;
                scope.spawn(move || {
                    loop {
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((part, answer)) = job else { break };
                        let df = decode_part(p, &part);
                        drop(part);
                        // A writer gone (it stopped at an error) needs no answer.
                        let _ = answer.send(df);
                    }
                })
            })
            .collect();
        drop(queue);
        // The writer: rows and parts written, or the error and the part it was met at.
        let write = scope.spawn(move || -> Result<u64, (TableError, usize)> {
            let mut rows = 0u64;
            for (i, answer) in answers.into_iter().enumerate() {
                let df = answer
                    .recv()
                    .unwrap_or(Err(TableError::Panicked("decoding the event log")))
                    .map_err(|e| (e, i))?;
                writer.write_batch(&df).map_err(|e| (written(e), i))?;
                rows += df.height() as u64;
                progress(df.height() as u64);
            }
            writer.finish().map_err(|e| (written(e), usize::MAX))?;
            Ok(rows)
        });
        // The reader (this thread): the torn flag, or the error and the part it was met in.
        let mut sent = 0;
        let mut last_seq = None;
        let read = (|| -> Result<bool, (TableError, usize)> {
            loop {
                let mut part = Part::default();
                while part.records.len() < rows_per_part {
                    // The number of the frame read next (counted from 1).
                    let record = reader.records + 1;
                    match reader.next_payload().map_err(|e| (e.into(), sent))? {
                        Some((at, payload)) => {
                            // A record met again or out of order is refused, as by `events`
                            // and `replay` (a payload that is no record is the decoder's).
                            if let Some(seq) = mailsim_events::binary::seq_of_payload(payload) {
                                mailsim_events::check_sequence(log, last_seq, seq, record, at)
                                    .map_err(|e| (e.into(), sent))?;
                                last_seq = Some(seq);
                            }
                            part.push(at, payload)
                        }
                        None => break,
                    }
                }
                let last = part.records.len() < rows_per_part;
                if !part.records.is_empty() {
                    let (answer, decoded) = std::sync::mpsc::sync_channel(1);
                    // A refused send: the writer or the decoders stopped, which they report.
                    if in_order.send(decoded).is_err() || to_decode.send((part, answer)).is_err() {
                        break;
                    }
                    sent += 1;
                }
                if last {
                    break;
                }
            }
            Ok(reader.torn)
        })();
        drop((to_decode, in_order));
        let rows = write.join().unwrap_or(Err((
            TableError::Panicked("writing events.parquet"),
            usize::MAX,
        )));
        // Joined here, a decoder's panic is the writer's error, not the scope's panic.
        for w in workers {
            let _ = w.join();
        }
        // Of two errors, the one met first in the log.
        match (read, rows) {
            (Ok(torn), Ok(rows)) => Ok(Exported { rows, torn }),
            (Err((r, at_r)), Err((w, at_w))) => Err(if at_w < at_r { w } else { r }),
            (Err((e, _)), Ok(_)) | (Ok(_), Err((e, _))) => Err(e),
        }
    })
}

/// The whole of a table written by [`export`], in memory.
pub fn read_parquet(parquet: &Path) -> Result<DataFrame, TableError> {
    let file = std::fs::File::open(parquet).map_err(|source| TableError::Io {
        path: parquet.display().to_string(),
        source,
    })?;
    Ok(ParquetReader::new(file).finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(m: &serde_json::Map<String, serde_json::Value>) -> bool {
        serde_json::from_value::<mailsim_events::Record>(serde_json::Value::Object(m.clone()))
            .is_ok()
    }

    /// A record of `kind` with every field the schema gives it, each a distinct value.
    fn example(kind: &mailsim_events::Kind, n: &mut u64) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("seq".into(), 1.into());
        m.insert("ts".into(), 2.into());
        m.insert("type".into(), kind.tag.into());
        for &(name, shape) in kind.fields {
            *n += 1;
            let v = match shape {
                Shape::Str => format!("{name}-{n}").into(),
                Shape::U64 | Shape::U32 => (*n).into(),
                Shape::Bool => true.into(),
                Shape::Reply => serde_json::json!({
                    "command": "RCPT", "code": 450, "enhanced": "4.2.0", "text": format!("t{n}")
                }),
                // A list or a map: whichever the kind accepts.
                Shape::Json => serde_json::Value::Null,
            };
            m.insert(name.into(), v);
        }
        for &(name, shape) in kind.fields {
            if shape == Shape::Json {
                for v in [
                    serde_json::json!([format!("{name}-item")]),
                    serde_json::json!({ "k": format!("{name}-value") }),
                ] {
                    m.insert(name.into(), v);
                    if valid(&m) {
                        break;
                    }
                }
            }
        }
        // A reply the kind flattens (`smtp_reply`) has its parts at the top.
        for &(name, shape) in kind.fields {
            if shape == Shape::Reply
                && !valid(&m)
                && let Some(serde_json::Value::Object(parts)) = m.remove(name)
            {
                m.extend(parts);
            }
        }
        serde_json::Value::Object(m)
    }

    /// Every field of every kind the schema defines reaches the table, as a column or inside
    /// `detail`: a new kind or field needs no edit here.
    #[test]
    fn every_field_of_every_kind_reaches_the_table() {
        let mut n = 0;
        let records: Vec<serde_json::Value> =
            Event::SCHEMA.iter().map(|k| example(k, &mut n)).collect();
        let mut part = Part::default();
        for r in &records {
            // Each example is a valid record of the schema.
            serde_json::from_value::<mailsim_events::Record>(r.clone()).expect("valid record");
            part.push(0, &serde_json::to_vec(r).unwrap());
        }
        let df = decode_part("test", &part).unwrap();
        assert_eq!(df.height(), records.len());
        for (row, r) in records.iter().enumerate() {
            let detail = df.column("detail").unwrap().str().unwrap().get(row);
            let detail: serde_json::Value =
                detail.map_or(serde_json::json!({}), |d| serde_json::from_str(d).unwrap());
            for (name, v) in r.as_object().unwrap() {
                let found = if let Some(d) = detail.get(name) {
                    d == v
                } else if name == "reply" {
                    let text = df.column("text").unwrap().str().unwrap().get(row);
                    text == v["text"].as_str()
                } else {
                    let column = if name == "ts" { "ts_ms" } else { name.as_str() };
                    let cell = df
                        .column(column)
                        .unwrap_or_else(|_| panic!("no column `{column}` nor detail for it"))
                        .get(row)
                        .unwrap();
                    match v {
                        serde_json::Value::String(s) => cell.get_str() == Some(s.as_str()),
                        serde_json::Value::Number(x) => cell.extract::<u64>() == x.as_u64(),
                        serde_json::Value::Bool(b) => cell == AnyValue::Boolean(*b),
                        _ => false,
                    }
                };
                assert!(
                    found,
                    "{}: field `{name}` = {v} is not in the table",
                    r["type"]
                );
            }
        }
    }

    /// A log in the binary format makes the table its JSON makes: every kind with every field,
    /// and with each field its kind may leave out left out (absent options, empty strings).
    #[test]
    fn both_formats_make_the_same_table() {
        let mut n = 0;
        let mut records = Vec::new();
        for kind in Event::SCHEMA {
            let full = example(kind, &mut n);
            records.push(serde_json::from_value::<mailsim_events::Record>(full.clone()).unwrap());
            for name in full.as_object().unwrap().keys() {
                let mut fewer = full.clone();
                fewer.as_object_mut().unwrap().remove(name);
                if let Ok(r) = serde_json::from_value::<mailsim_events::Record>(fewer) {
                    records.push(r);
                }
            }
        }
        assert!(
            records.len() > Event::SCHEMA.len() + 15,
            "{}",
            records.len()
        );
        let (mut json, mut binary) = (Part::default(), Part::default());
        for r in &records {
            json.push(0, &serde_json::to_vec(r).unwrap());
            let mut b = Vec::new();
            r.put_binary(&mut b);
            binary.push(0, &b);
        }
        let (a, b) = (
            decode_part("json", &json).unwrap(),
            decode_part("binary", &binary).unwrap(),
        );
        assert_eq!(a.height(), records.len());
        assert!(a.equals_missing(&b), "{a}\n{b}");
    }

    /// A log exported in parts of a few records is the table it is in one part: the same rows
    /// in the same order, and the same figures by the streaming engine as by the in-memory
    /// one (the rows of every kind, five times over, with every field).
    #[test]
    fn a_log_in_many_parts_is_the_same_table_as_in_one() {
        struct At(u64);
        impl mailsim_events::Clock for At {
            fn now_ms(&self) -> u64 {
                self.0
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.log");
        let events =
            mailsim_events::EventLog::create(&log, std::sync::Arc::new(At(1_767_225_600_000)))
                .unwrap();
        let sink = events.sink();
        let mut n = 0;
        for _ in 0..5 {
            for kind in Event::SCHEMA {
                let r: mailsim_events::Record =
                    serde_json::from_value(example(kind, &mut n)).unwrap();
                sink.emit(r.event);
            }
        }
        sink.flush().unwrap();
        events.close().unwrap();
        let (one, many) = (
            dir.path().join("one.parquet"),
            dir.path().join("many.parquet"),
        );
        let whole = export_in_parts(&log, &one, 1 << 20, &|_| {}).unwrap();
        let parts = export_in_parts(&log, &many, 7, &|_| {}).unwrap();
        assert_eq!(whole, parts);
        assert_eq!(whole.rows, 5 * Event::SCHEMA.len() as u64);
        let (a, b) = (read_parquet(&one).unwrap(), read_parquet(&many).unwrap());
        assert!(a.equals_missing(&b), "{a}\n{b}");
        let seq: Vec<u64> = b
            .column("seq")
            .unwrap()
            .u64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "rows in log order");
        let streamed = crate::figures::compute_from_parquet(&many).unwrap();
        assert_eq!(streamed, crate::figures::compute(&a).unwrap());
        assert_eq!(streamed.events, whole.rows);
        assert!(!dir.path().join("many.parquet.partial").exists());
    }

    #[test]
    fn a_field_given_twice_or_a_missing_type_is_refused() {
        for bad in [
            r#"{"seq":1,"ts":2,"type":"run_finished","reason":"a","reason":"b"}"#,
            r#"{"seq":1,"ts":2,"reason":"a"}"#,
            r#"{"seq":1,"ts":2,"type":"no_such_kind"}"#,
        ] {
            let mut part = Part::default();
            part.push(77, bad.as_bytes());
            let err = decode_part("log", &part).unwrap_err();
            assert!(
                err.to_string().starts_with("log: record at byte 77"),
                "{err}"
            );
        }
    }
}
