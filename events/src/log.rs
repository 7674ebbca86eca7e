//! The durable event log.
//!
//! File layout: a 12-byte header (`MSIMLOG\0` + schema version, u32 LE), then frames of
//! `len: u32 LE | crc32(payload): u32 LE | payload` where the payload is one [`Record`] as JSON.
//! A frame whose length runs past the end of the file or whose checksum does not match marks a
//! torn tail: readers stop there and [`EventLog::open`] cuts the file back to the last good frame.
//!
//! Writes go through a writer thread that drains everything queued, writes it in one go and
//! fsyncs once per batch (group commit).

use crate::clock::Clock;
use crate::schema::{Event, Record, SCHEMA_VERSION};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

const MAGIC: &[u8; 8] = b"MSIMLOG\0";
const HEADER_BYTES: u64 = 12;
const FRAME_HEADER_BYTES: usize = 8;
/// No single record may be larger than this; a bigger length field means a corrupt frame.
pub const RECORD_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most records written per group commit.
const BATCH_RECORDS_MAX: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("event log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("event log {path}: not a mailsim event log (bad magic)")]
    BadMagic { path: PathBuf },
    #[error("event log {path}: schema version {found}, this build reads {expected}")]
    SchemaVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("event log {path}: record {seq} at byte {offset}: {message}")]
    BadRecord {
        path: PathBuf,
        seq: u64,
        offset: u64,
        message: String,
    },
    #[error("event log writer stopped: {0}")]
    WriterGone(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

enum Cmd {
    Append(u64, Event),
    Flush(SyncSender<()>),
    Close,
}

/// A cheap, cloneable handle that stamps events with the clock and queues them for the writer.
#[derive(Clone)]
pub struct EventSink {
    tx: Sender<Cmd>,
    clock: Arc<dyn Clock>,
}

impl EventSink {
    /// Queue an event. If the writer has stopped (I/O error, closed log) the event is dropped and
    /// the error surfaces from [`EventLog::close`].
    pub fn emit(&self, event: Event) {
        let ts = self.clock.now_ms();
        let _ = self.tx.send(Cmd::Append(ts, event));
    }

    /// Block until everything emitted so far is on disk.
    pub fn flush(&self) -> Result<(), LogError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Cmd::Flush(tx))
            .map_err(|_| LogError::WriterGone("log closed".into()))?;
        rx.recv()
            .map_err(|_| LogError::WriterGone("writer failed before the flush".into()))
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

/// What reopening a log found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// Good records kept.
    pub records: u64,
    /// Bytes of torn tail that were cut off.
    pub cut_bytes: u64,
}

/// When the writer forces records to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync after every group of records (each time the queue runs dry): a crash loses
    /// nothing that was acknowledged by the clock's "now". Live runs and daemons.
    EveryBatch,
    /// fsync on [`EventSink::flush`] and at close only. Virtual runs, whose whole world is
    /// replayed from the seed anyway.
    OnFlush,
}

/// The writer side of a log file.
pub struct EventLog {
    path: PathBuf,
    sink: EventSink,
    writer: Option<JoinHandle<Result<u64, LogError>>>,
}

impl EventLog {
    /// Create a new, empty log (replacing any file at `path`).
    pub fn create(path: &Path, clock: Arc<dyn Clock>) -> Result<Self, LogError> {
        Self::create_with(path, clock, Durability::EveryBatch)
    }

    /// Create a new, empty log with the given durability.
    pub fn create_with(
        path: &Path,
        clock: Arc<dyn Clock>,
        durability: Durability,
    ) -> Result<Self, LogError> {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .read(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut header = Vec::with_capacity(HEADER_BYTES as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&SCHEMA_VERSION.to_le_bytes());
        file.write_all(&header).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
        Ok(Self::start(path, file, 0, clock, durability))
    }

    /// Reopen an existing log for appending: validate every frame, cut a torn tail, and carry
    /// on numbering after the last good record.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<(Self, OpenReport), LogError> {
        let mut reader = LogReader::open(path)?;
        let mut records = 0u64;
        let mut next_seq = 0u64;
        for rec in reader.by_ref() {
            let rec = rec?;
            records += 1;
            next_seq = rec.seq + 1;
        }
        let good_end = reader.good_end;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let cut_bytes = len.saturating_sub(good_end);
        if cut_bytes > 0 {
            file.set_len(good_end).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
        }
        let mut file = file;
        file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
        Ok((
            Self::start(path, file, next_seq, clock, Durability::EveryBatch),
            OpenReport { records, cut_bytes },
        ))
    }

    fn start(
        path: &Path,
        file: File,
        first_seq: u64,
        clock: Arc<dyn Clock>,
        durability: Durability,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let writer_path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || write_loop(&writer_path, file, first_seq, rx, durability))
            .expect("spawning the event-log thread");
        EventLog {
            path: path.to_path_buf(),
            sink: EventSink { tx, clock },
            writer: Some(writer),
        }
    }

    pub fn sink(&self) -> EventSink {
        self.sink.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write and fsync everything queued before this call, stop the writer and return the
    /// number of records written by this handle.
    pub fn close(mut self) -> Result<u64, LogError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<u64, LogError> {
        let Some(writer) = self.writer.take() else {
            return Ok(0);
        };
        let _ = self.sink.tx.send(Cmd::Close);
        writer
            .join()
            .map_err(|_| LogError::WriterGone("event-log thread panicked".into()))?
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn write_loop(
    path: &Path,
    file: File,
    mut seq: u64,
    rx: Receiver<Cmd>,
    durability: Durability,
) -> Result<u64, LogError> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut written = 0u64;
    let mut payload = Vec::with_capacity(512);
    let mut waiters: Vec<SyncSender<()>> = Vec::new();
    loop {
        let Ok(first) = rx.recv() else { break };
        let mut closing = false;
        let mut batch = 0usize;
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Append(ts, event) => {
                    payload.clear();
                    let record = Record { seq, ts, event };
                    serde_json::to_writer(&mut payload, &record).map_err(|e| {
                        LogError::BadRecord {
                            path: path.to_path_buf(),
                            seq,
                            offset: 0,
                            message: e.to_string(),
                        }
                    })?;
                    let crc = crc32fast::hash(&payload);
                    out.write_all(&(payload.len() as u32).to_le_bytes())
                        .map_err(io_err(path))?;
                    out.write_all(&crc.to_le_bytes()).map_err(io_err(path))?;
                    out.write_all(&payload).map_err(io_err(path))?;
                    seq += 1;
                    written += 1;
                    batch += 1;
                }
                Cmd::Flush(done) => waiters.push(done),
                Cmd::Close => closing = true,
            }
            if closing || batch >= BATCH_RECORDS_MAX {
                break;
            }
            next = rx.try_recv().ok();
        }
        if durability == Durability::EveryBatch || closing || !waiters.is_empty() {
            out.flush().map_err(io_err(path))?;
            out.get_ref().sync_data().map_err(io_err(path))?;
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
        if closing {
            break;
        }
        if durability == Durability::OnFlush {
            // Let records accumulate: a sender does not wake a writer that is not waiting,
            // so this saves a wake-up per record when the producer is fast.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    Ok(written)
}

/// Streams records from a log file, stopping quietly at a torn tail.
pub struct LogReader {
    path: PathBuf,
    input: BufReader<File>,
    offset: u64,
    /// End of the last good frame.
    pub good_end: u64,
    /// True once a torn or corrupt tail was met.
    pub torn: bool,
    buf: Vec<u8>,
    done: bool,
}

impl LogReader {
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut header = [0u8; HEADER_BYTES as usize];
        input.read_exact(&mut header).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => LogError::BadMagic {
                path: path.to_path_buf(),
            },
            _ => LogError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        check_header(path, &header)?;
        Ok(LogReader {
            path: path.to_path_buf(),
            input,
            offset: HEADER_BYTES,
            good_end: HEADER_BYTES,
            torn: false,
            buf: Vec::new(),
            done: false,
        })
    }

    /// Read the next frame's payload; `Ok(None)` at the end or at a torn tail.
    fn next_frame(&mut self) -> Result<Option<&[u8]>, LogError> {
        let mut head = [0u8; FRAME_HEADER_BYTES];
        match read_full(&mut self.input, &mut head).map_err(io_err(&self.path))? {
            0 => return Ok(None),
            n if n < FRAME_HEADER_BYTES => {
                self.torn = true;
                return Ok(None);
            }
            _ => {}
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > RECORD_BYTES_MAX {
            self.torn = true;
            return Ok(None);
        }
        self.buf.resize(len, 0);
        let got = read_full(&mut self.input, &mut self.buf).map_err(io_err(&self.path))?;
        if got < len || crc32fast::hash(&self.buf) != crc {
            self.torn = true;
            return Ok(None);
        }
        self.offset += (FRAME_HEADER_BYTES + len) as u64;
        self.good_end = self.offset;
        Ok(Some(&self.buf))
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Iterator for LogReader {
    type Item = Result<Record, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let start = self.offset;
        let frame = match self.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        Some(serde_json::from_slice::<Record>(frame).map_err(|e| {
            // The checksum matched, so this is a schema mismatch, not a torn write.
            LogError::BadRecord {
                path: self.path.clone(),
                seq: 0,
                offset: start,
                message: e.to_string(),
            }
        }))
    }
}

/// The magic and schema version at the start of a log.
fn check_header(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    if bytes.len() < HEADER_BYTES as usize || &bytes[..8] != MAGIC {
        return Err(LogError::BadMagic {
            path: path.to_path_buf(),
        });
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != SCHEMA_VERSION {
        return Err(LogError::SchemaVersion {
            path: path.to_path_buf(),
            found: version,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// The payloads of a whole log held in memory, as byte ranges (for readers that decode in
/// parallel); true when a torn or corrupt tail ended it. Checks the header like [`LogReader`].
pub fn frame_ranges(
    path: &Path,
    bytes: &[u8],
) -> Result<(Vec<std::ops::Range<usize>>, bool), LogError> {
    check_header(path, bytes)?;
    let mut pos = HEADER_BYTES as usize;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let Some(head) = bytes.get(pos..pos + FRAME_HEADER_BYTES) else {
            return Ok((out, true));
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let start = pos + FRAME_HEADER_BYTES;
        let payload = bytes
            .get(start..start.saturating_add(len))
            .filter(|_| len <= RECORD_BYTES_MAX);
        match payload {
            Some(p) if crc32fast::hash(p) == crc => out.push(start..start + len),
            _ => return Ok((out, true)),
        }
        pos = start + len;
    }
    Ok((out, false))
}

/// Read every good record of a log. A torn tail is not an error for readers; it is reported in
/// the second value (true when the file ended in a torn frame).
pub fn read_log(path: &Path) -> Result<(Vec<Record>, bool), LogError> {
    let mut reader = LogReader::open(path)?;
    let mut records = Vec::new();
    for rec in reader.by_ref() {
        records.push(rec?);
    }
    Ok((records, reader.torn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;

    fn injected(msg: u64) -> Event {
        Event::Injected {
            msg,
            message_id: format!("<{msg}@test>"),
            from: "a@b.test".into(),
            rcpt: format!("u{msg}@c.test"),
            domain: "c.test".into(),
            size: 100,
        }
    }

    #[test]
    fn append_close_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let log = EventLog::create(&path, Arc::new(FixedClock(42))).unwrap();
        let sink = log.sink();
        for i in 0..1000 {
            sink.emit(injected(i));
        }
        sink.flush().unwrap();
        assert_eq!(log.close().unwrap(), 1000);
        let (records, torn) = read_log(&path).unwrap();
        assert!(!torn);
        assert_eq!(records.len(), 1000);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.seq, i as u64);
            assert_eq!(r.ts, 42);
            assert_eq!(r.event, injected(i as u64));
        }
    }

    #[test]
    fn torn_tail_is_cut_on_reopen_at_every_offset_of_the_last_frame() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let log = EventLog::create(&path, Arc::new(FixedClock(1))).unwrap();
        let sink = log.sink();
        for i in 0..20 {
            sink.emit(injected(i));
        }
        log.close().unwrap();
        let full = std::fs::read(&path).unwrap();
        let (records, _) = read_log(&path).unwrap();
        assert_eq!(records.len(), 20);
        // Find where the last frame starts: rewrite 19 records and measure.
        let path19 = dir.path().join("19.log");
        let log19 = EventLog::create(&path19, Arc::new(FixedClock(1))).unwrap();
        let s19 = log19.sink();
        for i in 0..19 {
            s19.emit(injected(i));
        }
        log19.close().unwrap();
        let last_start = std::fs::metadata(&path19).unwrap().len() as usize;
        for cut in last_start..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (reopened, report) = EventLog::open(&path, Arc::new(FixedClock(2))).unwrap();
            assert_eq!(report.records, 19, "cut at {cut}");
            assert_eq!(report.cut_bytes as usize, cut - last_start, "cut at {cut}");
            reopened.sink().emit(injected(99));
            reopened.close().unwrap();
            let (records, torn) = read_log(&path).unwrap();
            assert!(!torn);
            assert_eq!(records.len(), 20);
            assert_eq!(records[19].seq, 19, "numbering carries on after the cut");
            assert_eq!(records[19].event, injected(99));
        }
    }

    #[test]
    fn flipped_byte_in_a_frame_is_detected_by_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let log = EventLog::create(&path, Arc::new(FixedClock(1))).unwrap();
        let sink = log.sink();
        for i in 0..5 {
            sink.emit(injected(i));
        }
        log.close().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let (records, torn) = read_log(&path).unwrap();
        assert!(torn);
        assert_eq!(records.len(), 4);
    }

    #[test]
    fn garbage_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-log");
        std::fs::write(&path, b"hello world, not a log").unwrap();
        let err = read_log(&path).unwrap_err().to_string();
        assert!(err.contains("not-a-log") && err.contains("magic"), "{err}");
    }
}
