//! The durable spool: messages on disk, each with its envelope.
//!
//! Messages are appended to segment files, one segment per injected batch, fsynced once per
//! batch (with the directory) when durability is asked, so it costs one fsync per batch rather
//! than per message.
//! Each entry is `meta_len: u32 LE | body_len: u32 LE | crc32(meta + body): u32 LE | meta | body`,
//! where `meta` is the envelope (JSON: queue ids, sender, recipients); after a crash
//! [`Spool::recover`] reads every entry back (a torn last entry was never acknowledged and is
//! dropped). A [`SpoolRef`] (segment, offset, length) names a body; a segment is deleted once
//! every body in it is released (delivered, bounced or expired). Without durability (a virtual
//! run's spool) a thread of the spool's writes each segment behind the caller, and bodies are
//! read from memory until their segment is on disk.

use mailsim_events::Durability;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpoolRef {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

impl std::fmt::Display for SpoolRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.segment, self.offset, self.len)
    }
}

/// The envelope stored with a body: enough to queue it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpoolEnvelope {
    /// Queue id of the first recipient; the others follow in order.
    pub first_id: u64,
    /// The sender as injected (before VERP); empty for a DSN.
    pub from: String,
    pub rcpts: Vec<String>,
    pub message_id: String,
    pub injected_ms: u64,
    /// The queue id a DSN reports on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<u64>,
    /// Transactional or bulk (absent: bulk).
    #[serde(default, skip_serializing_if = "crate::queue::Lane::is_bulk")]
    pub lane: crate::queue::Lane,
    /// The platform campaign (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<u64>,
}

/// One entry found by [`Spool::recover`].
#[derive(Debug, Clone)]
pub struct Recovered {
    pub spool: SpoolRef,
    pub envelope: SpoolEnvelope,
}

const ENTRY_HEADER_BYTES: usize = 12;

#[derive(Debug, thiserror::Error)]
#[error("spool {path}: {source}")]
pub struct SpoolError {
    pub path: PathBuf,
    pub source: io::Error,
}

struct Segment {
    data: Data,
    live: usize,
}

/// Where a segment's bytes are read from.
#[derive(Clone)]
enum Data {
    File(Arc<File>),
    /// Written by the spool's writer thread, not yet on disk (no durability asked).
    Writing(Arc<Vec<u8>>),
}

/// Files of released segments the writer thread keeps aside to write again, at most.
const SPARE_MAX: usize = 64;
/// A set-aside file's name: its segment's number with this extension (never `.seg`).
const SPARE_EXTENSION: &str = "spare";

/// Segments waiting in the writer thread's queue at most (then `write_batch` waits for it; one
/// more is being written).
const WRITING_MAX: usize = 8;

pub struct Spool {
    dir: PathBuf,
    state: Arc<Mutex<SpoolState>>,
    /// `EveryBatch`: each batch is on disk before `write_batch` returns (a message accepted is
    /// never lost). `OnFlush`: no fsync (virtual runs, replayed from the seed), and each batch
    /// is written to its file by a thread of the spool's while the caller goes on (read back
    /// from memory until then).
    durability: Durability,
    writer: Option<Writer>,
}

/// Work for the writer thread, done in the order given.
enum WriteJob {
    /// A segment to write: its number, its file, its bytes.
    Write(u64, PathBuf, Arc<Vec<u8>>),
    /// A written segment whose last body was released: its file to set aside for a new
    /// segment, or to delete (deleting a file of some megabytes frees its blocks and cached
    /// pages, work kept off the caller's thread); with the segment's open file.
    Remove(PathBuf, Arc<File>),
}

/// The thread writing an `OnFlush` spool's segments behind its caller.
struct Writer {
    jobs: Option<std::sync::mpsc::SyncSender<WriteJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(state: Arc<Mutex<SpoolState>>) -> io::Result<Writer> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<WriteJob>(WRITING_MAX);
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                // Files of released segments, renamed aside to be written again: a run that
                // spools a million messages creates (and deletes) tens of thousands of
                // segments, and on ext4 creating a file where many were just deleted costs
                // about a millisecond (the inode allocator skips recently deleted inodes);
                // renaming one costs no inode. Each is kept with its open file: it is written
                // again only when no reader holds that file any more (a read in flight of a
                // released body reads the old bytes, as from a deleted file), and emptied
                // before it takes a segment's name (a spool recovered after a kill finds no
                // released entries under a live segment's name).
                let mut spare: Vec<(PathBuf, Arc<File>)> = Vec::new();
                for job in rx {
                    let (segment, path, data) = match job {
                        WriteJob::Write(segment, path, data) => (segment, path, data),
                        WriteJob::Remove(path, file) => {
                            // Not `.seg`: a spool opened again does not take it for a segment.
                            let aside = path.with_extension(SPARE_EXTENSION);
                            if spare.len() < SPARE_MAX && fs::rename(&path, &aside).is_ok() {
                                spare.push((aside, file));
                            } else {
                                let _ = fs::remove_file(&path);
                            }
                            continue;
                        }
                    };
                    let unread = spare.iter().position(|(_, f)| Arc::strong_count(f) == 1);
                    let reused = unread
                        .map(|i| spare.swap_remove(i))
                        .and_then(|(aside, file)| {
                            match file.set_len(0).and_then(|()| fs::rename(&aside, &path)) {
                                Ok(()) => Some(file),
                                Err(_) => {
                                    let _ = fs::remove_file(&aside);
                                    None
                                }
                            }
                        });
                    let written = match reused {
                        Some(file) => file.write_all_at(&data, 0).map(|()| file),
                        None => OpenOptions::new()
                            .create_new(true)
                            .read(true)
                            .write(true)
                            .open(&path)
                            .and_then(|mut f| f.write_all(&data).map(|()| Arc::new(f))),
                    }
                    .inspect_err(|e| {
                        // No partial file is left behind (one the open refused is not this
                        // spool's to delete).
                        if e.kind() != io::ErrorKind::AlreadyExists {
                            let _ = fs::remove_file(&path);
                        }
                    });
                    let mut st = state.lock().expect("spool lock");
                    match (written, st.segments.get_mut(&segment)) {
                        (Ok(file), Some(seg)) => seg.data = Data::File(file),
                        // Released while being written: nothing reads it any more.
                        (Ok(_), None) => {
                            let _ = fs::remove_file(&path);
                        }
                        // Kept in memory (read from there): the run goes on without the file.
                        (Err(e), _) => {
                            tracing::warn!(
                                "spool {}: {e} (the segment is kept in memory)",
                                path.display()
                            );
                        }
                    }
                }
                for (aside, _) in spare {
                    let _ = fs::remove_file(aside);
                }
            })?;
        Ok(Writer {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct SpoolState {
    next_segment: u64,
    segments: HashMap<u64, Segment>,
    /// Segments whose every message is final, not yet deleted: a durable spool deletes them
    /// only after the events saying so are on disk ([`Spool::collect`]).
    dead: Vec<u64>,
}

impl Spool {
    /// Open (creating) a durable spool directory. Segment numbering continues after existing
    /// files.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Self::open_with(dir, Durability::EveryBatch)
    }

    /// Open (creating) a spool directory with the given durability.
    pub fn open_with(dir: &Path, durability: Durability) -> Result<Spool, SpoolError> {
        let err = |source| SpoolError {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let mut next_segment = 0;
        for entry in fs::read_dir(dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let name = entry.file_name();
            let name = name.to_str().unwrap_or_default();
            if let Some(n) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                next_segment = next_segment.max(n + 1);
            } else if name
                .strip_suffix(SPARE_EXTENSION)
                .and_then(|n| n.strip_suffix('.'))
                .is_some_and(|n| n.parse::<u64>().is_ok())
            {
                // Set aside by a spool that did not close (killed): nothing to keep.
                let _ = fs::remove_file(entry.path());
            }
        }
        let state = Arc::new(Mutex::new(SpoolState {
            next_segment,
            segments: HashMap::new(),
            dead: Vec::new(),
        }));
        let writer = match durability {
            Durability::EveryBatch => None,
            Durability::OnFlush => Some(Writer::start(state.clone()).map_err(err)?),
        };
        Ok(Spool {
            dir: dir.to_path_buf(),
            state,
            durability,
            writer,
        })
    }

    fn segment_path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:010}.seg"))
    }

    /// Write a batch of messages durably (per the spool's durability); returns one reference
    /// per body, in order.
    pub fn write_batch(
        &self,
        batch: &[(&SpoolEnvelope, &[u8])],
    ) -> Result<Vec<SpoolRef>, SpoolError> {
        let segment = {
            let mut st = self.state.lock().expect("spool lock");
            st.next_segment += 1;
            st.next_segment - 1
        };
        let path = self.segment_path(segment);
        let err = |source| SpoolError {
            path: path.clone(),
            source,
        };
        let total: usize = batch.iter().map(|(_, b)| b.len() + 256).sum();
        let mut buf = Vec::with_capacity(total);
        let mut refs = Vec::with_capacity(batch.len());
        for (envelope, body) in batch {
            let meta = serde_json::to_vec(envelope)
                .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&meta);
            crc.update(body);
            buf.extend_from_slice(&(meta.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc.finalize().to_le_bytes());
            buf.extend_from_slice(&meta);
            refs.push(SpoolRef {
                segment,
                offset: buf.len() as u64,
                len: body.len() as u32,
            });
            buf.extend_from_slice(body);
        }
        let (data, behind) = match self.writer.as_ref().and_then(|w| w.jobs.as_ref()) {
            Some(jobs) => {
                let bytes = Arc::new(buf);
                (Data::Writing(bytes.clone()), Some((jobs, bytes)))
            }
            None => {
                let mut file = OpenOptions::new()
                    .create_new(true)
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(err)?;
                file.write_all(&buf).map_err(err)?;
                if self.durability == Durability::EveryBatch {
                    file.sync_data().map_err(err)?;
                    File::open(&self.dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|source| SpoolError {
                            path: self.dir.clone(),
                            source,
                        })?;
                }
                (Data::File(Arc::new(file)), None)
            }
        };
        // In the table before the writer can look for it.
        self.state.lock().expect("spool lock").segments.insert(
            segment,
            Segment {
                data,
                live: batch.len(),
            },
        );
        if let Some((jobs, bytes)) = behind
            && jobs
                .send(WriteJob::Write(segment, path.clone(), bytes))
                .is_err()
        {
            self.state
                .lock()
                .expect("spool lock")
                .segments
                .remove(&segment);
            return Err(err(io::Error::other("the spool's writer thread ended")));
        }
        Ok(refs)
    }

    /// Read back every entry of every segment left in the directory (after a restart), in
    /// segment order. Each recovered body holds one reference (as after `write_batch`); a torn
    /// or corrupt tail of a segment is dropped, and a segment with no good entry is deleted.
    pub fn recover(&self) -> Result<Vec<Recovered>, SpoolError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SpoolError { path, source }
        };
        let mut numbers: Vec<u64> = fs::read_dir(&self.dir)
            .map_err(err(&self.dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".seg"))
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .collect();
        numbers.sort_unstable();
        let mut out = Vec::new();
        for n in numbers {
            let path = self.segment_path(n);
            let bytes = fs::read(&path).map_err(err(&path))?;
            let mut pos = 0usize;
            let mut found = 0usize;
            while pos + ENTRY_HEADER_BYTES <= bytes.len() {
                let word = |at: usize| {
                    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
                };
                let (meta_len, body_len, crc) =
                    (word(pos) as usize, word(pos + 4) as usize, word(pos + 8));
                let start = pos + ENTRY_HEADER_BYTES;
                let Some(end) = start
                    .checked_add(meta_len)
                    .and_then(|m| m.checked_add(body_len))
                    .filter(|&e| e <= bytes.len())
                else {
                    break;
                };
                if crc32fast::hash(&bytes[start..end]) != crc {
                    break;
                }
                let Ok(envelope) =
                    serde_json::from_slice::<SpoolEnvelope>(&bytes[start..start + meta_len])
                else {
                    break;
                };
                out.push(Recovered {
                    spool: SpoolRef {
                        segment: n,
                        offset: (start + meta_len) as u64,
                        len: body_len as u32,
                    },
                    envelope,
                });
                found += 1;
                pos = end;
            }
            if found == 0 {
                let _ = fs::remove_file(&path);
                continue;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(err(&path))?;
            self.state.lock().expect("spool lock").segments.insert(
                n,
                Segment {
                    data: Data::File(Arc::new(file)),
                    live: found,
                },
            );
        }
        Ok(out)
    }

    /// Add `extra` holders to a body (a message queued for several recipients is released once
    /// per recipient).
    pub fn retain(&self, r: &SpoolRef, extra: usize) {
        if let Some(seg) = self
            .state
            .lock()
            .expect("spool lock")
            .segments
            .get_mut(&r.segment)
        {
            seg.live += extra;
        }
    }

    /// Read one body. The lock is held only to find the segment, not for the read.
    pub fn read(&self, r: &SpoolRef) -> Result<Vec<u8>, SpoolError> {
        // The path is named only in an error (making it costs an allocation per read).
        let path = || self.segment_path(r.segment);
        let data = self
            .state
            .lock()
            .expect("spool lock")
            .segments
            .get(&r.segment)
            .map(|seg| seg.data.clone());
        match data {
            None => Err(SpoolError {
                path: path(),
                source: io::Error::new(io::ErrorKind::NotFound, "segment released"),
            }),
            Some(Data::Writing(bytes)) => usize::try_from(r.offset)
                .ok()
                .and_then(|at| bytes.get(at..at.checked_add(r.len as usize)?))
                .map(<[u8]>::to_vec)
                .ok_or_else(|| SpoolError {
                    path: path(),
                    source: io::Error::new(io::ErrorKind::UnexpectedEof, "past the segment's end"),
                }),
            Some(Data::File(file)) => {
                let mut buf = vec![0u8; r.len as usize];
                file.read_exact_at(&mut buf, r.offset)
                    .map_err(|source| SpoolError {
                        path: path(),
                        source,
                    })?;
                Ok(buf)
            }
        }
    }

    /// Release one body; the segment file goes when its last body does (for a durable spool,
    /// at the next [`Spool::collect`]).
    pub fn release(&self, r: &SpoolRef) {
        let file = {
            let mut st = self.state.lock().expect("spool lock");
            let gone = match st.segments.get_mut(&r.segment) {
                Some(seg) => {
                    seg.live = seg.live.saturating_sub(1);
                    seg.live == 0
                }
                None => false,
            };
            if !gone {
                return;
            }
            let seg = st.segments.remove(&r.segment);
            match self.durability {
                Durability::EveryBatch => {
                    st.dead.push(r.segment);
                    return;
                }
                // A segment still being written is deleted by the writer when it is done.
                Durability::OnFlush => match seg.map(|s| s.data) {
                    Some(Data::File(file)) => file,
                    _ => return,
                },
            }
        };
        // A written segment is set aside or deleted by the writer too, after the writes queued
        // before it (and with the lock released: the writer takes it after each write).
        let path = self.segment_path(r.segment);
        let left = match self.writer.as_ref().and_then(|w| w.jobs.as_ref()) {
            Some(jobs) => match jobs.send(WriteJob::Remove(path, file)) {
                Ok(()) => None,
                Err(std::sync::mpsc::SendError(WriteJob::Remove(path, _))) => Some(path),
                Err(_) => None,
            },
            None => Some(path),
        };
        if let Some(path) = left {
            let _ = fs::remove_file(path);
        }
    }

    /// True when released segments wait for [`Spool::collect`].
    pub fn has_dead(&self) -> bool {
        !self.state.lock().expect("spool lock").dead.is_empty()
    }

    /// Delete the released segments. Call once the events that made them final are durable:
    /// a crash before that finds the segments and the log agreeing that they are not final.
    pub fn collect(&self) -> usize {
        let dead = std::mem::take(&mut self.state.lock().expect("spool lock").dead);
        for n in &dead {
            let _ = fs::remove_file(self.segment_path(*n));
        }
        dead.len()
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Number of segment files still held.
    pub fn segments(&self) -> usize {
        self.state.lock().expect("spool lock").segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(first_id: u64) -> SpoolEnvelope {
        SpoolEnvelope {
            first_id,
            from: "a@b.test".into(),
            rcpts: vec!["c@d.test".into()],
            message_id: format!("<{first_id}@b.test>"),
            injected_ms: 7,
            about: None,
            lane: crate::queue::Lane::Bulk,
            campaign: None,
        }
    }

    #[test]
    fn batch_round_trip_and_release_deletes_segment() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (e1, e2, e3) = (env(1), env(2), env(3));
        let refs = spool
            .write_batch(&[(&e1, b"one"), (&e2, b"second body"), (&e3, b"")])
            .unwrap();
        assert_eq!(spool.read(&refs[1]).unwrap(), b"second body");
        assert_eq!(spool.read(&refs[2]).unwrap(), b"");
        for r in &refs {
            spool.release(r);
        }
        assert_eq!(spool.segments(), 0);
        assert!(spool.has_dead());
        assert_eq!(spool.collect(), 1);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let again = Spool::open(dir.path()).unwrap();
        assert!(again.read(&refs[0]).is_err());
    }

    /// A spool opened again on `dir` recovers exactly the `kept` bodies, in order.
    fn recovers_exactly(dir: &Path, kept: &[(SpoolRef, Vec<u8>)]) {
        let again = Spool::open(dir).unwrap();
        let rec = again.recover().unwrap();
        assert_eq!(rec.len(), kept.len());
        for (r, (k, b)) in rec.iter().zip(kept) {
            assert_eq!(r.spool, *k);
            assert_eq!(again.read(&r.spool).unwrap(), *b);
        }
    }

    /// The file of `r`'s segment once the spool's writer has written it (waiting up to 2 s).
    fn written(spool: &Spool, r: &SpoolRef) -> Arc<File> {
        for _ in 0..2000 {
            let data = spool
                .state
                .lock()
                .unwrap()
                .segments
                .get(&r.segment)
                .map(|s| s.data.clone());
            if let Some(Data::File(f)) = data {
                return f;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("segment {} never written", r.segment);
    }

    /// The inode of `r`'s segment file in `dir`.
    fn inode(dir: &Path, r: &SpoolRef) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(dir.join(format!("{:010}.seg", r.segment)))
            .unwrap()
            .ino()
    }

    #[test]
    fn a_spool_without_durability_writes_behind_and_reads_back_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with(dir.path(), Durability::OnFlush).unwrap();
        let envs: Vec<SpoolEnvelope> = (0..40).map(env).collect();
        let bodies: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("body {i}").repeat(i + 1).into_bytes())
            .collect();
        let mut kept = Vec::new();
        for (n, (e, b)) in envs.iter().zip(&bodies).enumerate() {
            let refs = spool.write_batch(&[(e, b.as_slice())]).unwrap();
            // Read at once (from memory or from the file, whichever the writer has reached).
            assert_eq!(spool.read(&refs[0]).unwrap(), *b);
            // Every other segment is released at once, perhaps before it is written.
            if n % 2 == 0 {
                spool.release(&refs[0]);
                assert!(spool.read(&refs[0]).is_err());
            } else {
                kept.push((refs[0], b.clone()));
            }
        }
        for (r, b) in &kept {
            assert_eq!(spool.read(r).unwrap(), *b);
        }
        drop(spool);
        // The writer is done when the spool is dropped: the kept segments are on disk, the
        // released ones are not (deleted whether they were written before or after).
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, kept.len());
        recovers_exactly(dir.path(), &kept);
    }

    /// A spool without durability writes new segments into the files of released ones (no
    /// new inode each): what is read back, from memory or from a reused file, is the new
    /// batch's bytes only (a longer old segment cut to them), and the files left are the
    /// live segments, which a spool opened again recovers, and nothing else.
    #[test]
    fn released_segment_files_are_written_again_and_hold_only_the_new_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with(dir.path(), Durability::OnFlush).unwrap();
        // Long segments written and released: their files are kept aside.
        let long = vec![b'x'; 20_000];
        let mut old = Vec::new();
        for i in 0..10 {
            let e = env(i);
            let r = spool.write_batch(&[(&e, long.as_slice())]).unwrap();
            written(&spool, &r[0]);
            old.push(r[0]);
        }
        let old_inodes: std::collections::HashSet<u64> =
            old.iter().map(|r| inode(dir.path(), r)).collect();
        assert_eq!(old_inodes.len(), 10);
        for r in &old {
            spool.release(r);
        }
        // Short ones now go into those files: read back exactly, after the file is reused.
        let mut kept = Vec::new();
        for i in 10..20u64 {
            let e = env(i);
            let body = format!("short body {i}").into_bytes();
            let r = spool.write_batch(&[(&e, body.as_slice())]).unwrap();
            written(&spool, &r[0]);
            assert_eq!(spool.read(&r[0]).unwrap(), body);
            // The file of a released segment, not a new one.
            assert!(
                old_inodes.contains(&inode(dir.path(), &r[0])),
                "segment {}",
                r[0].segment
            );
            kept.push((r[0], body));
        }
        drop(spool);
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), kept.len(), "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".seg")), "{names:?}");
        for (r, body) in &kept {
            let file = dir.path().join(format!("{:010}.seg", r.segment));
            // Header, envelope and body: far below the 20,000 bytes the file held before.
            let len = fs::metadata(&file).unwrap().len();
            assert!(len < 1000, "{}: {len} bytes", file.display());
            assert!(len as usize > body.len());
        }
        recovers_exactly(dir.path(), &kept);
    }

    /// A released segment's file that a reader still holds (a read in flight) is not written
    /// again until the reader lets it go; a set-aside file left by a spool that did not close
    /// is deleted when the directory is opened again, and is never taken for a segment.
    #[test]
    fn a_file_still_read_is_not_written_again_and_leftovers_go_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with(dir.path(), Durability::OnFlush).unwrap();
        let (e1, e2, e3) = (env(1), env(2), env(3));
        let a = spool.write_batch(&[(&e1, b"first".as_slice())]).unwrap()[0];
        let held = written(&spool, &a);
        let a_inode = inode(dir.path(), &a);
        spool.release(&a);
        let b = spool.write_batch(&[(&e2, b"second".as_slice())]).unwrap()[0];
        written(&spool, &b);
        assert_ne!(inode(dir.path(), &b), a_inode);
        // The reader still reads the released body's bytes.
        let mut buf = vec![0u8; a.len as usize];
        held.read_exact_at(&mut buf, a.offset).unwrap();
        assert_eq!(buf, b"first");
        drop(held);
        let c = spool.write_batch(&[(&e3, b"third".as_slice())]).unwrap()[0];
        written(&spool, &c);
        assert_eq!(inode(dir.path(), &c), a_inode);
        assert_eq!(spool.read(&c).unwrap(), b"third");
        drop(spool);
        // A spool killed with a file set aside: the file is not a segment and goes at open.
        fs::write(dir.path().join("0000000042.spare"), b"old entries").unwrap();
        fs::write(dir.path().join("notes.txt"), b"not the spool's").unwrap();
        let again = Spool::open_with(dir.path(), Durability::OnFlush).unwrap();
        assert!(!dir.path().join("0000000042.spare").exists());
        assert!(dir.path().join("notes.txt").exists());
        let rec = again.recover().unwrap();
        let bodies: Vec<Vec<u8>> = rec.iter().map(|r| again.read(&r.spool).unwrap()).collect();
        assert_eq!(bodies, [b"second".to_vec(), b"third".to_vec()]);
    }

    #[test]
    fn recovery_reads_envelopes_back_and_drops_a_torn_tail_at_every_offset() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (e1, e2) = (env(1), env(2));
        spool
            .write_batch(&[(&e1, b"first body"), (&e2, b"second body")])
            .unwrap();
        let seg = dir.path().join("0000000000.seg");
        let full = fs::read(&seg).unwrap();
        drop(spool);
        let again = Spool::open(dir.path()).unwrap();
        let rec = again.recover().unwrap();
        assert_eq!(rec.len(), 2);
        assert_eq!(rec[1].envelope, e2);
        assert_eq!(again.read(&rec[1].spool).unwrap(), b"second body");
        drop(again);
        // Cut the file anywhere inside the second entry: the first survives, the second is gone.
        let first_end = ENTRY_HEADER_BYTES + serde_json::to_vec(&e1).unwrap().len() + 10;
        for cut in first_end..full.len() {
            fs::write(&seg, &full[..cut]).unwrap();
            let s = Spool::open(dir.path()).unwrap();
            let rec = s.recover().unwrap();
            assert_eq!(rec.len(), 1, "cut at {cut}");
            assert_eq!(s.read(&rec[0].spool).unwrap(), b"first body");
        }
        // A segment cut inside its first entry holds nothing and is removed.
        fs::write(&seg, &full[..5]).unwrap();
        let s = Spool::open(dir.path()).unwrap();
        assert!(s.recover().unwrap().is_empty());
        assert!(!seg.exists());
    }
}
