//! The event log as a table: one row per record, one column per field of any event kind
//! (nulls where a kind has no such field), written to `events.parquet`.
//!
//! The log is read in parts of at most [`ROWS_PER_PART`] records (fewer once they hold
//! [`PART_BYTES`]), its frames checked (length and CRC, a
//! torn tail ends it as for every reader); each part is decoded on one of the cores, its
//! records read as `mailsim events` reads them (so the report refuses what it refuses, at the
//! same record) and their fields put straight into Arrow column builders (a string column of
//! the common kinds' fields as a dictionary of its distinct values and each row's number in it,
//! as Parquet stores it), written by polars' Parquet writer as one row group and dropped, so
//! that memory holds a few parts whatever the log's size.
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
use polars_arrow::array::{
    ArrayRef, DictionaryArray, MutableArray, MutableBinaryViewArray, MutableBooleanArray,
    MutablePrimitiveArray,
};
use polars_arrow::datatypes::{ArrowDataType, ArrowSchema, Field as ArrowField, IntegerType};
use polars_parquet::write as pq;
use serde::de;
use std::collections::HashMap;
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
    #[error("{path}: record {record} (at byte {offset}): {message}")]
    BadRecord {
        path: String,
        /// The frame's number in the log, from 1 (as `mailsim events` counts).
        record: u64,
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

/// Records decoded per part at most, and rows per Parquet row group.
pub const ROWS_PER_PART: usize = 1 << 18;
/// Payload bytes after which a part is decoded with fewer records: a log of large records (up
/// to 16 MiB each) is exported in parts of about this size, not of 262,144 such records. (A
/// part of scale-million's JSON log is about 60 MB: normal logs never reach it, so their row
/// groups do not depend on it.) With at most [`DECODERS_MAX`] + 2 parts in hand, the parts'
/// bytes stay under about 6 x 144 MiB whatever the log (decoded records of large lists take
/// more: a list's items are decoded one by one).
const PART_BYTES: usize = 128 << 20;

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
/// lists and maps).
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
    /// `detail`: JSON objects, nearly all different.
    Str(MutableBinaryViewArray<str>),
    /// The other string columns: few distinct values each (kinds, domains, hosts, replies,
    /// addresses repeated over a message's events).
    Dict(DictBuilder),
    U64(MutablePrimitiveArray<u64>),
    U32(MutablePrimitiveArray<u32>),
    Bool(MutableBooleanArray),
}

/// A string column as a dictionary: each distinct value once, and per row its number in it.
/// Parquet stores a column of few distinct values as a dictionary page and the rows' numbers;
/// built here, as the records are decoded, the writer need not find the distinct values again
/// (polars estimates a string column's cardinality and hashes every value into its own map: a
/// quarter of the report's time on a real 10 M-event log). Keys fit in 32 bits: a part holds
/// at most [`ROWS_PER_PART`] rows, and a column one value per row (`Cols::fill`).
struct DictBuilder {
    keys: MutablePrimitiveArray<u32>,
    values: MutableBinaryViewArray<str>,
    /// The distinct values' numbers, found by the values themselves (kept once, in `values`).
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl DictBuilder {
    fn push(&mut self, v: &str) {
        use std::hash::BuildHasher;
        let DictBuilder {
            keys,
            values,
            index,
            hasher,
        } = self;
        let hash = hasher.hash_one(v);
        let key = match index.find(hash, |&k| values.value(k as usize) == v) {
            Some(&k) => k,
            None => {
                let k = values.len() as u32;
                values.push_value(v);
                index.insert_unique(hash, k, |&k| hasher.hash_one(values.value(k as usize)));
                k
            }
        };
        keys.push(Some(key));
    }

    /// The column: a dictionary, or, when nearly every value is distinct (more than three in
    /// four of a part's values, as polars' own writer decides), the strings themselves, which
    /// the writer stores as plain pages as it did before (a dictionary would only add keys).
    fn finish(self) -> Result<ArrayRef, TableError> {
        let present = self.keys.len() - self.keys.validity().map_or(0, |v| v.unset_bits());
        let distinct = self.values.len();
        if present > 128 && distinct * 4 > present * 3 {
            let mut strings = MutableBinaryViewArray::<str>::with_capacity(self.keys.len());
            for k in self.keys.iter() {
                strings.push(k.map(|&k| self.values.value(k as usize)));
            }
            return Ok(strings.freeze().boxed());
        }
        Ok(DictionaryArray::try_new(
            dictionary_type(),
            self.keys.freeze(),
            self.values.freeze().boxed(),
        )?
        .boxed())
    }
}

/// The Arrow type of a dictionary column: keys into string values.
fn dictionary_type() -> ArrowDataType {
    ArrowDataType::Dictionary(
        IntegerType::UInt32,
        Box::new(ArrowDataType::Utf8View),
        false,
    )
}

impl Builder {
    fn new(shape: Shape, n: usize) -> Builder {
        match shape {
            Shape::U64 => Builder::U64(MutablePrimitiveArray::with_capacity(n)),
            Shape::U32 => Builder::U32(MutablePrimitiveArray::with_capacity(n)),
            Shape::Bool => Builder::Bool(MutableBooleanArray::with_capacity(n)),
            Shape::Str | Shape::Reply => Builder::Dict(DictBuilder {
                keys: MutablePrimitiveArray::with_capacity(n),
                values: MutableBinaryViewArray::new(),
                index: Default::default(),
                hasher: Default::default(),
            }),
            Shape::Json => Builder::Str(MutableBinaryViewArray::with_capacity(n)),
        }
    }

    fn nulls(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        match self {
            Builder::Str(b) => b.extend_null(n),
            Builder::Dict(b) => b.keys.extend_null(n),
            Builder::U64(b) => b.extend_null(n),
            Builder::U32(b) => b.extend_null(n),
            Builder::Bool(b) => b.extend_null(n),
        }
    }

    fn finish(self) -> Result<ArrayRef, TableError> {
        Ok(match self {
            Builder::Str(b) => b.freeze().boxed(),
            Builder::Dict(b) => b.finish()?,
            Builder::U64(b) => b.freeze().boxed(),
            Builder::U32(b) => b.freeze().boxed(),
            Builder::Bool(b) => b.freeze().boxed(),
        })
    }
}

/// The table's Arrow schema: a string column is declared a string whether its part holds it
/// as a dictionary or not (Parquet's dictionary encoding is how it is stored, not its type).
fn arrow_schema(layout: &Layout) -> ArrowSchema {
    layout
        .columns
        .iter()
        .map(|&(name, shape)| {
            let dtype = match shape {
                Shape::U64 => ArrowDataType::UInt64,
                Shape::U32 => ArrowDataType::UInt32,
                Shape::Bool => ArrowDataType::Boolean,
                Shape::Str | Shape::Reply | Shape::Json => ArrowDataType::Utf8View,
            };
            let name = PlSmallStr::from(name);
            (name.clone(), ArrowField::new(name, dtype, true))
        })
        .collect()
}

/// One part of the table, decoded: its columns (in [`Layout`] order) and its rows.
#[derive(Debug)]
struct PartColumns {
    arrays: Vec<ArrayRef>,
    rows: usize,
}

impl PartColumns {
    /// The part as a DataFrame of the table's types (dictionaries as their strings).
    #[cfg(test)]
    fn frame(&self) -> DataFrame {
        let layout = Layout::new();
        let columns = self
            .arrays
            .iter()
            .zip(&layout.columns)
            .map(|(a, (name, _))| {
                let name = PlSmallStr::from(*name);
                match a.as_any().downcast_ref::<DictionaryArray<u32>>() {
                    Some(d) => {
                        let values = d
                            .values()
                            .as_any()
                            .downcast_ref::<polars_arrow::array::Utf8ViewArray>()
                            .unwrap();
                        let strings: Vec<Option<&str>> =
                            d.keys_iter().map(|k| k.map(|k| values.value(k))).collect();
                        StringChunked::from_iter_options(name, strings.into_iter()).into_column()
                    }
                    None => Series::from_arrow(name, a.clone()).unwrap().into_column(),
                }
            })
            .collect();
        DataFrame::new_infer_height(columns).unwrap()
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
    fn into_columns(self, rows: usize) -> Result<PartColumns, TableError> {
        let arrays = self
            .builders
            .into_iter()
            .zip(self.len)
            .map(|(mut b, len)| {
                b.nulls(rows - len);
                b.finish()
            })
            .collect::<Result<_, _>>()?;
        Ok(PartColumns { arrays, rows })
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
}

/// A run of records read from the log, not decoded yet.
type Part = mailsim_events::FrameBatch;

/// A part decoded: where its first record is and its `seq` (known even when a later record of
/// the part fails: the writer checks first that the part follows the one before, which comes
/// first in the log), and its columns with the `seq` of its last record, or its first error.
struct DecodedPart {
    /// `seq`, offset and number of the part's first record, when it could be read.
    first: Option<(u64, u64, u64)>,
    rows: Result<(PartColumns, u64), TableError>,
}

/// Decode the records of `part` (from the log `path`) into columns. Each record is read as
/// `mailsim events` and `replay` read it ([`mailsim_events::PayloadRecord`]: the binary
/// encoding as a view of its bytes, JSON by the schema's own decoding, so a record they refuse
/// is refused here too), and its `seq` must follow the one before it in the part. The first
/// error in the part is the one given.
fn decode_part(path: &str, part: &Part) -> DecodedPart {
    let mut first = None;
    let rows = decode_rows(path, part, &mut first);
    DecodedPart { first, rows }
}

fn decode_rows(
    path: &str,
    part: &Part,
    first: &mut Option<(u64, u64, u64)>,
) -> Result<(PartColumns, u64), TableError> {
    let layout = Layout::new();
    let mut cols = Cols::with_capacity(&layout, part.len());
    let mut last_seq = None;
    for (payload, number, at) in part.payloads() {
        let bad = |message: String| TableError::BadRecord {
            path: path.to_string(),
            record: number,
            offset: at,
            message,
        };
        let record =
            mailsim_events::PayloadRecord::read(payload).map_err(|e| bad(e.to_string()))?;
        let seq = record.seq();
        first.get_or_insert((seq, at, number));
        mailsim_events::check_sequence(Path::new(path), last_seq, seq, number, at)?;
        last_seq = Some(seq);
        record
            .with_view(|view| from_record::push(&mut cols, view))
            .map_err(|e| bad(e.to_string()))?;
    }
    let rows = cols.row;
    Ok((cols.into_columns(rows)?, last_seq.unwrap_or_default()))
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
/// at most [`ROWS_PER_PART`] records (or [`PART_BYTES`]) are read (frames checked: length and CRC, a torn tail ends the
/// log as for every reader), decoded on other cores into columns, and written as one row
/// group, so that memory holds a few parts whatever the log's size (and however many cores). `progress` is told how
/// many records are written as it goes. On any error (a damaged or invalid record, I/O) nothing
/// is left at `parquet` (an earlier file there is kept).
pub fn export(
    log: &Path,
    parquet: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Exported, TableError> {
    export_in_parts(log, parquet, (ROWS_PER_PART, PART_BYTES), progress)
}

/// [`export`] in parts of at most `rows` records, or of fewer once they hold `bytes`.
fn export_in_parts(
    log: &Path,
    parquet: &Path,
    (rows, bytes): (usize, usize),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Exported, TableError> {
    debug_assert!(rows > 0 && bytes > 0, "a part holds at least one record");
    let partial = parquet.with_extension("parquet.partial");
    let written = export_to(log, &partial, (rows, bytes), progress).and_then(|e| {
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
type Decoded = std::sync::mpsc::Receiver<DecodedPart>;

fn export_to(
    log: &Path,
    out: &Path,
    (rows_per_part, bytes_per_part): (usize, usize),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Exported, TableError> {
    let p = log.display().to_string();
    let mut reader = mailsim_events::LogReader::open(log)?;
    let written = |source: PolarsError| TableError::Write {
        path: out.display().to_string(),
        source,
    };
    let file = std::fs::File::create(out).map_err(|e| written(e.into()))?;
    let schema = std::sync::Arc::new(arrow_schema(&Layout::new()));
    // LZ4: most of the cost of writing is compression, and the file is read locally. Statistics
    // as polars' own writer keeps them.
    let options = pq::WriteOptions {
        statistics: pq::StatisticsOptions::default(),
        version: pq::Version::V1,
        compression: pq::CompressionOptions::Lz4Raw,
        data_page_size: None,
    };
    let mut writer =
        pq::FileWriter::try_new(std::io::BufWriter::new(file), (*schema).clone(), options)
            .map_err(written)?;
    let fields = writer.parquet_schema().fields().to_vec();
    let decoders = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(DECODERS_MAX);
    std::thread::scope(|scope| {
        // Each part goes to a decoder with a channel for its answer; the writer takes the
        // answers in log order. Both queues are bounded: a slow writer holds up the decoders,
        // and they the reader. A decoder that ends without answering (a panic) is an error for
        // the writer at that part.
        type Job = (Part, std::sync::mpsc::SyncSender<DecodedPart>);
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
                        let decoded = decode_part(p, &part);
                        drop(part);
                        // A writer gone (it stopped at an error) needs no answer.
                        let _ = answer.send(decoded);
                    }
                })
            })
            .collect();
        drop(queue);
        // The writer: rows and parts written, or the error and the part it was met at.
        let write = scope.spawn(move || -> Result<u64, (TableError, usize)> {
            let mut rows = 0u64;
            let mut last_seq = None;
            for (i, answer) in answers.into_iter().enumerate() {
                let part = answer
                    .recv()
                    .map_err(|_| (TableError::Panicked("decoding the event log"), i))?;
                // The part follows the one before it (each decoder checked its own part); that
                // is checked before any error the decoder met later in the part.
                if let Some((seq, at, number)) = part.first {
                    mailsim_events::check_sequence(log, last_seq, seq, number, at)
                        .map_err(|e| (e.into(), i))?;
                }
                let (part, last) = part.rows.map_err(|e| (e, i))?;
                last_seq = Some(last);
                if part.rows > 0 {
                    // Each column as polars' writer encodes it (a dictionary as a dictionary
                    // page and its keys), compressed as the file writer takes it.
                    let encodings: Vec<Vec<pq::Encoding>> = part
                        .arrays
                        .iter()
                        .map(|a| pq::get_dtype_encoding(a.dtype()))
                        .collect();
                    let batch = polars_arrow::record_batch::RecordBatchT::try_new(
                        part.rows,
                        schema.clone(),
                        part.arrays,
                    )
                    .map_err(|e| (written(e), i))?;
                    let group =
                        pq::row_group_iter(batch, encodings.into(), fields.clone(), options);
                    writer
                        .write(part.rows as u64, group)
                        .map_err(|e| (written(e), i))?;
                }
                rows += part.rows as u64;
                progress(part.rows as u64);
            }
            writer.end(None).map_err(|e| (written(e), usize::MAX))?;
            writer
                .into_inner()
                .into_inner()
                .map_err(|e| (written(e.into_error().into()), usize::MAX))?;
            Ok(rows)
        });
        // The reader (this thread): the torn flag, or the error and the part it was met in.
        // A damaged frame ends the reading; the records before it, in its part, are sent to be
        // decoded first, so that an error among them is the one given (as a reader going record
        // by record would meet it first).
        let mut sent = 0;
        let read = (|| -> Result<bool, (TableError, usize)> {
            loop {
                let mut part = Part::default();
                let (failed, last) =
                    match reader.read_batch(&mut part, (rows_per_part, bytes_per_part)) {
                        Ok(ended) => (None, ended),
                        Err(e) => (Some(e), true),
                    };
                if !part.is_empty() {
                    let (answer, decoded) = std::sync::mpsc::sync_channel(1);
                    // A refused send: the writer or the decoders stopped, which they report.
                    if in_order.send(decoded).is_err() || to_decode.send((part, answer)).is_err() {
                        break;
                    }
                    sent += 1;
                }
                if let Some(e) = failed {
                    return Err((e.into(), sent));
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

    /// A string column of few distinct values is a dictionary; one of nearly all distinct
    /// values stays strings (as polars' writer would store it plainly); both keep their nulls.
    #[test]
    fn a_dictionary_only_for_repeated_values() {
        use polars_arrow::array::Array;
        let column = |values: &dyn Fn(usize) -> Option<String>| {
            let mut b = Builder::new(Shape::Str, 0);
            for i in 0..400 {
                match (values(i), &mut b) {
                    (Some(v), Builder::Dict(d)) => d.push(&v),
                    (None, b) => b.nulls(1),
                    _ => unreachable!("a string column is built as a dictionary"),
                }
            }
            b.finish().unwrap()
        };
        let few = column(&|i| (i % 5 != 0).then(|| format!("v{}", i % 3)));
        assert_eq!(few.dtype(), &dictionary_type());
        let d = few.as_any().downcast_ref::<DictionaryArray<u32>>().unwrap();
        assert_eq!((d.values().len(), d.null_count()), (3, 80));
        let unique = column(&|i| (i % 5 != 0).then(|| format!("address-{i}@x.test")));
        assert_eq!(unique.dtype(), &ArrowDataType::Utf8View);
        let s = unique
            .as_any()
            .downcast_ref::<polars_arrow::array::Utf8ViewArray>()
            .unwrap();
        assert_eq!((s.null_count(), s.value(1)), (80, "address-1@x.test"));
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
        let mut records: Vec<serde_json::Value> =
            Event::SCHEMA.iter().map(|k| example(k, &mut n)).collect();
        let mut part = Part::default();
        for (i, r) in records.iter_mut().enumerate() {
            r["seq"] = (i as u64 + 1).into();
            // Each example is a valid record of the schema.
            serde_json::from_value::<mailsim_events::Record>(r.clone()).expect("valid record");
            part.push(i as u64 + 1, 0, &serde_json::to_vec(r).unwrap());
        }
        let df = decode_part("test", &part).rows.unwrap().0.frame();
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
        for (i, r) in records.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
            json.push(r.seq, 0, &serde_json::to_vec(r).unwrap());
            let mut b = Vec::new();
            r.put_binary(&mut b);
            binary.push(r.seq, 0, &b);
        }
        let (a, b) = (
            decode_part("json", &json).rows.unwrap().0.frame(),
            decode_part("binary", &binary).rows.unwrap().0.frame(),
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
        // Parts written (the progress is told once a part).
        let counted = |rows_bytes, path: &Path| {
            let written = std::sync::atomic::AtomicU64::new(0);
            let e = export_in_parts(&log, path, rows_bytes, &|_| {
                written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .unwrap();
            (e, written.into_inner())
        };
        let (whole, one_part) = counted((1 << 20, PART_BYTES), &one);
        let (parts, sevens) = counted((7, PART_BYTES), &many);
        assert_eq!(whole, parts);
        assert_eq!(whole.rows, 5 * Event::SCHEMA.len() as u64);
        assert_eq!((one_part, sevens), (1, whole.rows.div_ceil(7)));
        // Parts cut by their bytes (a few records each here) make the same table too.
        let by_bytes = dir.path().join("by_bytes.parquet");
        let (cut, cuts) = counted((1 << 20, 300), &by_bytes);
        assert_eq!(cut, whole);
        assert!(cuts > whole.rows / 10, "{cuts} parts");
        let (a, b) = (read_parquet(&one).unwrap(), read_parquet(&many).unwrap());
        assert!(a.equals_missing(&b), "{a}\n{b}");
        // What the file holds is what the records decoded to: the same columns, types and
        // values (the dictionaries read back as strings).
        let mut all = Part::default();
        mailsim_events::LogReader::open(&log)
            .unwrap()
            .read_batch(&mut all, (1 << 20, PART_BYTES))
            .unwrap();
        let decoded = decode_part("log", &all).rows.unwrap().0.frame();
        assert_eq!(a.schema(), decoded.schema());
        assert!(a.equals_missing(&decoded), "{a}\n{decoded}");
        assert!(a.equals_missing(&read_parquet(&by_bytes).unwrap()));
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

    /// A log in format 1 (JSON records) holding `payloads`, framed as the log writer frames
    /// them; returns each frame's offset.
    fn json_log(path: &Path, payloads: &[String]) -> Vec<u64> {
        let mut bytes = b"MSIMLOG\0".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        let mut offsets = Vec::new();
        for p in payloads {
            offsets.push(bytes.len() as u64);
            bytes.extend_from_slice(&(p.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(p.as_bytes()).to_le_bytes());
            bytes.extend_from_slice(p.as_bytes());
        }
        std::fs::write(path, bytes).unwrap();
        offsets
    }

    /// The report refuses a JSON log where `mailsim events` and `replay` refuse it (their
    /// reader, [`mailsim_events::LogReader`]), at the same record: a record without a field its
    /// kind requires, a `seq` of null, a reply code out of range, a repeated `seq` whose keys
    /// come in another order; and of two bad records, the first (also when the first is a part's
    /// first record going back and the second is later in that part). Exported in one part and
    /// in parts of two records (the check across parts).
    #[test]
    fn a_json_log_is_refused_where_the_other_readers_refuse_it() {
        let fine =
            |seq: u64| format!(r#"{{"seq":{seq},"ts":2,"type":"run_finished","reason":"a"}}"#);
        let mut n = 0;
        let deferred = Event::SCHEMA.iter().find(|k| k.tag == "deferred").unwrap();
        let mut far_code = example(deferred, &mut n);
        far_code["seq"] = 3.into();
        far_code["reply"]["code"] = 70_000.into();
        let cases: Vec<(Vec<String>, usize)> = vec![
            (
                vec![fine(1), r#"{"seq":2,"ts":2,"type":"run_finished"}"#.into()],
                1,
            ),
            (
                vec![
                    fine(1),
                    fine(2),
                    r#"{"seq":null,"ts":2,"type":"run_finished","reason":"a"}"#.into(),
                ],
                2,
            ),
            (vec![fine(1), fine(2), far_code.to_string()], 2),
            (
                vec![
                    fine(1),
                    fine(2),
                    r#"{"ts":2,"type":"run_finished","seq":2,"reason":"b"}"#.into(),
                ],
                2,
            ),
            (
                vec![
                    fine(1),
                    fine(2),
                    fine(3),
                    r#"{"seq":4,"ts":2}"#.into(),
                    fine(3),
                    r#"{"seq":6}"#.into(),
                ],
                3,
            ),
            // A part's first record going back, before a bad record later in that part.
            (vec![fine(1), fine(2), fine(1), r#"{"seq":5}"#.into()], 2),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (i, (payloads, bad)) in cases.iter().enumerate() {
            let log = dir.path().join(format!("{i}.log"));
            let offsets = json_log(&log, payloads);
            let at = format!("at byte {}", offsets[*bad]);
            let reader = mailsim_events::LogReader::open(&log)
                .unwrap()
                .find_map(Result::err)
                .unwrap_or_else(|| panic!("case {i}: the log reader takes it"));
            assert!(reader.to_string().contains(&at), "case {i}: {reader}");
            for rows in [1 << 20, 2] {
                let out = dir.path().join(format!("{i}-{rows}.parquet"));
                let err = export_in_parts(&log, &out, (rows, PART_BYTES), &|_| {})
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains(&at),
                    "case {i}, parts of {rows}: {err} (not {at})"
                );
                assert!(!out.exists());
            }
        }
    }

    #[test]
    fn a_field_given_twice_or_a_missing_type_is_refused() {
        for bad in [
            r#"{"seq":1,"ts":2,"type":"run_finished","reason":"a","reason":"b"}"#,
            r#"{"seq":1,"ts":2,"reason":"a"}"#,
            r#"{"seq":1,"ts":2,"type":"no_such_kind"}"#,
        ] {
            let mut part = Part::default();
            part.push(1, 77, bad.as_bytes());
            let err = decode_part("log", &part).rows.unwrap_err();
            assert!(
                err.to_string().starts_with("log: record 1 (at byte 77)"),
                "{err}"
            );
        }
    }
}
