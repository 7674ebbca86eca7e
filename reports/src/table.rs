//! The event log as a table: one row per record, one column per field of any event kind
//! (nulls where a kind has no such field), written to `events.parquet`.
//!
//! The log is read whole, its frames checked (length and CRC, a torn tail ends it as for every
//! reader), then decoded on every core into borrowed rows whose fields go straight into polars
//! column builders.
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
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
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

/// Records decoded per part, and rows per Parquet row group.
const ROWS_PER_CHUNK: usize = 1 << 20;

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

/// One column's builder: nulls cost a bit, strings go straight into Arrow buffers.
enum Builder {
    Str(StringChunkedBuilder),
    U64(PrimitiveChunkedBuilder<UInt64Type>),
    U32(PrimitiveChunkedBuilder<UInt32Type>),
    Bool(BooleanChunkedBuilder),
}

impl Builder {
    fn new(name: &str, shape: Shape, n: usize) -> Builder {
        match shape {
            Shape::U64 => Builder::U64(PrimitiveChunkedBuilder::new(name.into(), n)),
            Shape::U32 => Builder::U32(PrimitiveChunkedBuilder::new(name.into(), n)),
            Shape::Bool => Builder::Bool(BooleanChunkedBuilder::new(name.into(), n)),
            Shape::Str | Shape::Reply | Shape::Json => {
                Builder::Str(StringChunkedBuilder::new(name.into(), n))
            }
        }
    }

    fn null(&mut self) {
        match self {
            Builder::Str(b) => b.append_null(),
            Builder::U64(b) => b.append_null(),
            Builder::U32(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
        }
    }

    fn finish(self) -> Column {
        match self {
            Builder::Str(b) => b.finish().into_series().into_column(),
            Builder::U64(b) => b.finish().into_series().into_column(),
            Builder::U32(b) => b.finish().into_series().into_column(),
            Builder::Bool(b) => b.finish().into_series().into_column(),
        }
    }
}

/// The builders of one part of the table, and which columns the current row has filled.
struct Cols<'l> {
    layout: &'l Layout,
    builders: Vec<Builder>,
    /// Per column, the row (counted from 1) it was last filled in.
    filled: Vec<u64>,
    row: u64,
}

impl<'l> Cols<'l> {
    fn with_capacity(layout: &'l Layout, n: usize) -> Self {
        Cols {
            layout,
            builders: layout
                .columns
                .iter()
                .map(|&(name, shape)| Builder::new(name, shape, n))
                .collect(),
            filled: vec![0; layout.columns.len()],
            row: 0,
        }
    }

    fn into_columns(self) -> Vec<Column> {
        self.builders.into_iter().map(Builder::finish).collect()
    }

    /// Mark column `i` filled in this row (a field given twice is an error).
    fn fill<E: de::Error>(&mut self, i: usize) -> Result<&mut Builder, E> {
        if self.filled[i] == self.row {
            return Err(E::custom(format_args!(
                "field `{}` given twice",
                self.layout.columns[i].0
            )));
        }
        self.filled[i] = self.row;
        Ok(&mut self.builders[i])
    }

    /// One value of column `i`, read as the column's shape.
    fn value<'de, A: MapAccess<'de>>(&mut self, i: usize, map: &mut A) -> Result<(), A::Error> {
        match self.fill(i)? {
            Builder::Str(b) => b.append_option(map.next_value::<Option<Text<'de>>>()?.map(|t| t.0)),
            Builder::U64(b) => b.append_option(map.next_value::<Option<u64>>()?),
            Builder::U32(b) => b.append_option(map.next_value::<Option<u32>>()?),
            Builder::Bool(b) => b.append_option(map.next_value::<Option<bool>>()?),
        }
        Ok(())
    }

    fn reply_part<E: de::Error>(&mut self, name: &str, t: Option<Text<'_>>) -> Result<(), E> {
        if let Some(Slot::Column(i)) = self.layout.slot(name)
            && let Builder::Str(b) = self.fill(i)?
        {
            b.append_option(t.map(|t| t.0));
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
        cols.row += 1;
        let mut kind: Option<Text<'de>> = None;
        let mut detail = serde_json::Map::new();
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match layout.slot(&key.0) {
                Some(Slot::Column(i)) if i == KIND => {
                    let t: Text<'de> = map.next_value()?;
                    let Builder::Str(b) = cols.fill(i)? else {
                        unreachable!("`type` is a string column")
                    };
                    b.append_value(&t.0);
                    kind = Some(t);
                }
                Some(Slot::Column(i)) => cols.value(i, &mut map)?,
                Some(Slot::Reply) => {
                    if let Some(r) = map.next_value::<Option<Reply<'de>>>()? {
                        cols.reply_part("command", r.command)?;
                        if let Some(Slot::Column(i)) = layout.slot("code")
                            && let Builder::U32(b) = cols.fill(i)?
                        {
                            b.append_option(r.code);
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
        for (required, name) in [(SEQ, "seq"), (TS, "ts"), (KIND, "type")] {
            if cols.filled[required] != cols.row {
                return Err(de::Error::missing_field(name));
            }
        }
        if !detail.is_empty() {
            let Builder::Str(b) = cols.fill(layout.detail())? else {
                unreachable!("`detail` is a string column")
            };
            b.append_value(serde_json::Value::Object(detail).to_string());
        }
        for (i, b) in cols.builders.iter_mut().enumerate() {
            if cols.filled[i] != cols.row {
                b.null();
            }
        }
        kind.ok_or_else(|| de::Error::missing_field("type"))
    }
}

/// Decode the frames `ranges` of the log `bytes`.
fn decode_part(
    path: &str,
    bytes: &[u8],
    ranges: &[std::ops::Range<usize>],
) -> Result<DataFrame, TableError> {
    let layout = Layout::new();
    let mut cols = Cols::with_capacity(&layout, ranges.len());
    for r in ranges {
        let bad = |message: String| TableError::BadRecord {
            path: path.to_string(),
            offset: r.start,
            message,
        };
        let mut de = serde_json::Deserializer::from_slice(&bytes[r.clone()]);
        let kind = RowSeed(&mut cols)
            .deserialize(&mut de)
            .and_then(|k| de.end().map(|()| k))
            .map_err(|err| bad(err.to_string()))?;
        // What `mailsim events` refuses, the report refuses too.
        if !Event::is_kind(&kind.0) {
            return Err(bad(format!("unknown event type {:?}", kind.0)));
        }
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
        None => DataFrame::new_infer_height(Cols::with_capacity(&Layout::new(), 0).into_columns())?,
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
        let mut bytes = Vec::new();
        let mut ranges = Vec::new();
        for r in &records {
            // Each example is a valid record of the schema.
            serde_json::from_value::<mailsim_events::Record>(r.clone()).expect("valid record");
            let start = bytes.len();
            serde_json::to_writer(&mut bytes, r).unwrap();
            ranges.push(start..bytes.len());
        }
        let df = decode_part("test", &bytes, &ranges).unwrap();
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

    #[test]
    fn a_field_given_twice_or_a_missing_type_is_refused() {
        for bad in [
            r#"{"seq":1,"ts":2,"type":"run_finished","reason":"a","reason":"b"}"#,
            r#"{"seq":1,"ts":2,"reason":"a"}"#,
            r#"{"seq":1,"ts":2,"type":"no_such_kind"}"#,
        ] {
            let whole: Vec<std::ops::Range<usize>> = std::iter::once(0..bad.len()).collect();
            let err = decode_part("log", bad.as_bytes(), &whole).unwrap_err();
            assert!(
                err.to_string().starts_with("log: record at byte 0"),
                "{err}"
            );
        }
    }
}
