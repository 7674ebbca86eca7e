//! Maildir storage: `ROOT/<domain>/<local-part>/{tmp,new,cur}`, written to tmp and renamed into
//! new (optionally fsynced first, as a durable mail server must).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The file [`Maildir::append_mbox`] appends to.
pub const MBOX_FILE: &str = "headers.mbox";

pub struct Maildir {
    root: PathBuf,
    fsync: bool,
    counter: AtomicU64,
    tag: String,
    /// The mbox files [`Maildir::append_mbox`] has open (at most [`MBOXES_OPEN_MAX`]): this
    /// store is the only writer of its mbox files (each fleet host's store has a root of its
    /// own), so what it wrote since opening one is all that was written to it.
    mboxes: Mutex<HashMap<PathBuf, Mbox>>,
    /// The thread writing the blocks of a store that does not sync (started with its first
    /// block).
    writer: Mutex<Option<BlockWriter>>,
    /// The last From line's date, by the second it was made for (copies come many a second).
    from_date: Mutex<(i64, String)>,
}

/// Most mbox files kept open at once (then all are flushed, closed and opened again as needed).
const MBOXES_OPEN_MAX: usize = 256;

/// Copies kept in memory for an mbox file before they are written, when the store does not
/// sync each copy: written in whole file blocks ([`MBOX_BLOCK`]) rather than a `write` per copy
/// of about a kilobyte. A million-copy virtual run spent about a tenth of its critical thread
/// in those writes, mostly in the kernel zeroing the rest of each block a short write begins.
const MBOX_BUFFER: usize = 64 * 1024;

/// The file system's block: buffered copies are written up to a multiple of it in the file.
const MBOX_BLOCK: u64 = 4096;

/// An mbox file open for appending.
struct Mbox {
    file: Arc<File>,
    /// Its length on disk once the blocks handed to the writer are written (what was written
    /// since it was opened, and what it held then).
    end: u64,
    /// Copies appended but not yet written (whole copies: never a part of one).
    pending: Vec<u8>,
    /// What the writer thread met writing this file's blocks.
    slot: Arc<Mutex<Slot>>,
    /// A write failed and none has succeeded since: every copy is written here, at once, and
    /// refused while the writes fail (as a store that syncs does).
    failing: bool,
}

/// A write the writer thread could not do: the file was cut back to `cut` (its length before
/// the block), and that block and every later one of the file are kept in `unwritten`.
#[derive(Default)]
struct Slot {
    failed: Option<(io::Error, u64)>,
    unwritten: Vec<u8>,
}

impl Mbox {
    /// The pending copies up to the last whole block (all of them when `all`), taken out; what
    /// stays pending is moved to `spare` (a buffer the writer is done with) when given.
    fn take_blocks(&mut self, all: bool, spare: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let upto = if all {
            self.pending.len()
        } else {
            let blocks_end = (self.end + self.pending.len() as u64) / MBOX_BLOCK * MBOX_BLOCK;
            blocks_end.saturating_sub(self.end) as usize
        };
        if upto == 0 {
            return None;
        }
        let rest = match spare {
            Some(mut rest) => {
                rest.clear();
                rest.extend_from_slice(&self.pending[upto..]);
                self.pending.truncate(upto);
                rest
            }
            None => self.pending.split_off(upto),
        };
        Some(std::mem::replace(&mut self.pending, rest))
    }

    /// Write the pending copies up to the last whole block (all of them when `all`) here. On
    /// an error the file is cut back to its length before, and the copies stay pending.
    fn write_pending(&mut self, all: bool) -> io::Result<()> {
        let Some(block) = self.take_blocks(all, None) else {
            return Ok(());
        };
        if let Err(e) = (&*self.file).write_all(&block) {
            // No torn copy left for the next one to run into.
            let _ = self.file.set_len(self.end);
            let mut back = block;
            back.append(&mut self.pending);
            self.pending = back;
            return Err(e);
        }
        self.end += block.len() as u64;
        Ok(())
    }

    /// After [`BlockWriter::settle`]: a failed write's blocks pending again (ahead of the
    /// copies appended since), the file's length where the writer cut it, and the error.
    fn take_failure(&mut self) -> Option<io::Error> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        let (e, cut) = slot.failed.take()?;
        let mut back = std::mem::take(&mut slot.unwritten);
        back.append(&mut self.pending);
        self.pending = back;
        self.end = cut;
        Some(e)
    }
}

/// A block for the writer thread: the file, its length before the block, the bytes, and where
/// to say it failed.
struct Block {
    file: Arc<File>,
    start: u64,
    bytes: Vec<u8>,
    slot: Arc<Mutex<Slot>>,
}

enum Job {
    Write(Block),
    /// Answered once every job before it is done.
    Settle(std::sync::mpsc::SyncSender<()>),
}

/// The thread that writes a buffering store's blocks, in the order handed over, while the
/// caller goes on (a million-copy virtual run spent a twentieth of its critical thread in
/// these writes, the kernel copying into its page cache).
struct BlockWriter {
    /// Buffers written, for the next blocks (fresh ones cost the kernel's zeroing of new pages).
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Blocks waiting for the writer at most (then the caller waits for it).
const BLOCKS_QUEUED_MAX: usize = 64;

impl BlockWriter {
    fn start() -> io::Result<BlockWriter> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(BLOCKS_QUEUED_MAX);
        let spare: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let done = spare.clone();
        let thread = std::thread::Builder::new()
            .name("mbox-writer".into())
            .spawn(move || {
                for job in rx {
                    let b = match job {
                        Job::Write(b) => b,
                        Job::Settle(done) => {
                            let _ = done.send(());
                            continue;
                        }
                    };
                    let mut slot = b.slot.lock().unwrap_or_else(|p| p.into_inner());
                    // After a failure every later block of the file waits with the failed one.
                    if slot.failed.is_some() {
                        slot.unwritten.extend_from_slice(&b.bytes);
                        continue;
                    }
                    drop(slot);
                    if let Err(e) = (&*b.file).write_all(&b.bytes) {
                        let _ = b.file.set_len(b.start);
                        let mut slot = b.slot.lock().unwrap_or_else(|p| p.into_inner());
                        slot.failed = Some((e, b.start));
                        slot.unwritten = b.bytes;
                    } else {
                        let mut spare = done.lock().unwrap_or_else(|p| p.into_inner());
                        if spare.len() < BLOCKS_QUEUED_MAX {
                            spare.push(b.bytes);
                        }
                    }
                }
            })?;
        Ok(BlockWriter {
            spare,
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hand a block over; the block back if the thread is gone.
    fn write(&self, block: Block) -> Result<(), Block> {
        let Some(jobs) = self.jobs.as_ref() else {
            return Err(block);
        };
        match jobs.send(Job::Write(block)) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::SendError(Job::Write(block))) => Err(block),
            Err(_) => Ok(()),
        }
    }

    /// Wait until every block handed over before is written or failed.
    fn settle(&self) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self
            .jobs
            .as_ref()
            .is_some_and(|j| j.send(Job::Settle(tx)).is_ok())
        {
            let _ = rx.recv();
        }
    }
}

impl Drop for BlockWriter {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("storing into {path}: {source}")]
pub struct StoreError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// A recipient address turned into a safe (domain, local part) pair of path components.
pub(crate) fn path_parts(rcpt: &str) -> Option<(String, String)> {
    let (local, domain) = rcpt.rsplit_once('@')?;
    let clean = |s: &str| -> Option<String> {
        let s = s.to_ascii_lowercase();
        let ok = !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-=".contains(c));
        ok.then_some(s)
    };
    Some((clean(domain)?, clean(local)?))
}

impl Maildir {
    /// `tag` makes file names unique between stores sharing a root (e.g. the MX host name).
    pub fn new(root: &Path, fsync: bool, tag: &str) -> Self {
        Maildir {
            root: root.to_path_buf(),
            fsync,
            counter: AtomicU64::new(0),
            tag: tag.replace(['/', '.'], "_"),
            mboxes: Mutex::default(),
            from_date: Mutex::default(),
            writer: Mutex::default(),
        }
    }

    pub fn user_dir(&self, rcpt: &str) -> Option<PathBuf> {
        let (domain, local) = path_parts(rcpt)?;
        Some(self.root.join(domain).join(local))
    }

    /// The directory of `rcpt`'s messages, or of its folder `folder`.
    fn folder_dir(&self, rcpt: &str, folder: Option<&str>) -> Result<PathBuf, StoreError> {
        let invalid = |what: String| StoreError {
            path: self.root.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, what),
        };
        if let Some(f) = folder
            && (f.is_empty()
                || !f
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            return Err(invalid(format!("unsupported folder name {f:?}")));
        }
        let user = self.user_dir(rcpt).ok_or_else(|| StoreError {
            path: self.root.clone(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unsafe recipient {rcpt:?}"),
            ),
        })?;
        let dir = match folder {
            Some(f) => user.join("folders").join(f),
            None => user,
        };
        Ok(dir)
    }

    /// Store `message` for `rcpt`; returns the path in `new/`.
    pub fn deliver(&self, rcpt: &str, message: &[u8]) -> Result<PathBuf, StoreError> {
        self.deliver_into(rcpt, None, message)
    }

    /// Store `message` in `rcpt`'s folder `folder` (None: INBOX), where the IMAP server finds
    /// it ([`crate::folders`]: `folders/<name>` under the user's Maildir). The name is one
    /// level of letters, digits, `_` and `-` (such as `Junk`), which the folder encoding keeps
    /// as it is.
    pub fn deliver_into(
        &self,
        rcpt: &str,
        folder: Option<&str>,
        message: &[u8],
    ) -> Result<PathBuf, StoreError> {
        let dir = self.folder_dir(rcpt, folder)?;
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError { path, source }
        };
        for sub in ["tmp", "new", "cur"] {
            let d = dir.join(sub);
            if !d.exists() {
                fs::create_dir_all(&d).map_err(err(&d))?;
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}.{}.{}", std::process::id(), n, self.tag);
        let tmp = dir.join("tmp").join(&name);
        let new = dir.join("new").join(&name);
        let mut f = File::create(&tmp).map_err(err(&tmp))?;
        f.write_all(message).map_err(err(&tmp))?;
        if self.fsync {
            f.sync_all().map_err(err(&tmp))?;
        }
        fs::rename(&tmp, &new).map_err(err(&new))?;
        Ok(new)
    }

    /// Append `message` for `rcpt` to one mbox file (`headers.mbox` in the user's directory, or
    /// in `folders/<name>` for a folder) instead of a Maildir file: what a server keeping only
    /// header blocks writes, one file for every copy rather than a file (and its inode) each.
    /// The format is mboxrd (the mbox of RFC 4155, `From ` lines quoted with `>`), lines in LF, as
    /// mail tools read it; `sender` and `unix_s` make the `From ` line. Copies are appended
    /// under the store's lock (copies appended at once by several sessions stay whole). A store
    /// that syncs writes and syncs each copy before returning; one that does not keeps copies
    /// in memory and hands them in whole blocks to a thread of its own that writes them, in
    /// order, while the caller goes on ([`Maildir::flush`] and dropping the store write the
    /// rest and wait for it). A write that fails is cut off again: the copies accepted before
    /// it are pending again, and the copy appended next is refused, as is every copy after it
    /// until a write (then on the caller's thread) succeeds. Which copy first sees a failure
    /// of the writer thread depends on when the thread met it.
    pub fn append_mbox(
        &self,
        rcpt: &str,
        folder: Option<&str>,
        sender: &str,
        unix_s: i64,
        message: &[u8],
    ) -> Result<PathBuf, StoreError> {
        let dir = self.folder_dir(rcpt, folder)?;
        let path = dir.join(MBOX_FILE);
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError { path, source }
        };
        // The From line's address: the envelope sender, or MAILER-DAEMON for the null one.
        // (A quoted local part may hold spaces, which the From line cannot.)
        let sender: std::borrow::Cow<'_, str> = match sender.trim() {
            "" => "MAILER-DAEMON".into(),
            s if s.contains(char::is_whitespace) => s.replace(char::is_whitespace, "_").into(),
            s => s.into(),
        };
        let mut out = Vec::with_capacity(message.len() + 64);
        out.extend_from_slice(b"From ");
        out.extend_from_slice(sender.as_bytes());
        out.push(b' ');
        {
            let mut date = self.from_date.lock().unwrap_or_else(|e| e.into_inner());
            if date.1.is_empty() || date.0 != unix_s {
                let when = chrono::DateTime::from_timestamp(unix_s, 0).unwrap_or_default();
                *date = (unix_s, when.format("%a %b %e %H:%M:%S %Y").to_string());
            }
            out.extend_from_slice(date.1.as_bytes());
        }
        out.push(b'\n');
        for line in message.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line
                .iter()
                .position(|&b| b != b'>')
                .is_some_and(|i| line[i..].starts_with(b"From "))
            {
                out.push(b'>');
            }
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        // The empty line that ends each message.
        out.push(b'\n');
        let mut open = self.mboxes.lock().unwrap_or_else(|e| e.into_inner());
        if !open.contains_key(&path) {
            let create = || OpenOptions::new().append(true).create(true).open(&path);
            let f = match create() {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(&dir).map_err(err(&dir))?;
                    create()
                }
                other => other,
            }
            .map_err(err(&path))?;
            let len = f.metadata().map_err(err(&path))?.len();
            if open.len() >= MBOXES_OPEN_MAX {
                self.close_all(&mut open)?;
            }
            let mbox = Mbox {
                file: Arc::new(f),
                end: len,
                pending: Vec::new(),
                slot: Arc::default(),
                failing: false,
            };
            open.insert(path.clone(), mbox);
        }
        let mbox = open.get_mut(&path).expect("opened above");
        if self.fsync {
            // Each copy on disk, synced, before the server answers for it.
            mbox.pending.extend_from_slice(&out);
            let written = mbox
                .write_pending(true)
                .and_then(|()| mbox.file.sync_data());
            if let Err(e) = written {
                mbox.pending.clear();
                open.remove(&path);
                return Err(err(&path)(e));
            }
            return Ok(path);
        }
        let before = mbox.pending.len();
        mbox.pending.extend_from_slice(&out);
        let failed = mbox
            .slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed
            .is_some();
        if failed {
            // A block the writer could not write: this copy is refused (the server answers
            // 451); the ones before it, already accepted, are pending again, and the file is
            // written here until a write succeeds.
            mbox.pending.truncate(before);
            self.settle();
            if let Some(e) = mbox.take_failure() {
                mbox.failing = true;
                return Err(err(&path)(e));
            }
            mbox.pending.extend_from_slice(&out);
        }
        if mbox.failing {
            return match mbox.write_pending(true) {
                Ok(()) => {
                    mbox.failing = false;
                    Ok(path)
                }
                Err(e) => {
                    // Refused; the copies accepted before it stay pending.
                    mbox.pending.truncate(before);
                    Err(err(&path)(e))
                }
            };
        }
        if mbox.pending.len() >= MBOX_BUFFER
            && let Err(e) = self.write_blocks(mbox, false)
        {
            // Written here (no writer thread) and failed: as above.
            mbox.pending.truncate(before);
            mbox.failing = true;
            return Err(err(&path)(e));
        }
        Ok(path)
    }

    /// Hand `mbox`'s pending copies up to the last whole block (all when `all`) to the writer
    /// thread, or write them here if it cannot be started.
    fn write_blocks(&self, mbox: &mut Mbox, all: bool) -> io::Result<()> {
        if mbox.pending.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if writer.is_none() {
            match BlockWriter::start() {
                Ok(w) => *writer = Some(w),
                Err(e) => tracing::warn!("mbox writer thread: {e} (writing on the caller's)"),
            }
        }
        let spare = writer
            .as_ref()
            .and_then(|w| w.spare.lock().unwrap_or_else(|p| p.into_inner()).pop());
        let Some(bytes) = mbox.take_blocks(all, spare) else {
            return Ok(());
        };
        let block = Block {
            file: mbox.file.clone(),
            start: mbox.end,
            bytes,
            slot: mbox.slot.clone(),
        };
        mbox.end += block.bytes.len() as u64;
        let handed = match writer.as_ref() {
            Some(w) => w.write(block),
            None => Err(block),
        };
        if let Err(mut block) = handed {
            // No writer thread: these copies are written here.
            mbox.end = block.start;
            block.bytes.append(&mut mbox.pending);
            mbox.pending = block.bytes;
            return mbox.write_pending(all);
        }
        Ok(())
    }

    /// Wait for the writer thread, if any, to write what it was handed.
    fn settle(&self) {
        if let Some(w) = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            w.settle();
        }
    }

    /// Write every copy [`Maildir::append_mbox`] holds in memory to its mbox file. Done when
    /// the store is dropped too; call it to read the files while the store is in use.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut open = self.mboxes.lock().unwrap_or_else(|e| e.into_inner());
        self.write_all_pending(&mut open)
    }

    /// Write what every open mbox holds and close them all; on an error the files stay open
    /// with what they hold.
    fn close_all(&self, open: &mut HashMap<PathBuf, Mbox>) -> Result<(), StoreError> {
        self.write_all_pending(open)?;
        open.clear();
        Ok(())
    }

    /// Write every copy the open mboxes hold, and wait until it is written; on an error the
    /// copies not written stay pending.
    fn write_all_pending(&self, open: &mut HashMap<PathBuf, Mbox>) -> Result<(), StoreError> {
        let failed = |path: &PathBuf| {
            let path = path.clone();
            move |source| StoreError { path, source }
        };
        // Every failure is taken (its copies pending again); the first is reported.
        let mut first = None;
        for (path, mbox) in open.iter_mut() {
            if mbox.failing {
                match mbox.write_pending(true) {
                    Ok(()) => mbox.failing = false,
                    Err(e) => {
                        first.get_or_insert_with(|| failed(path)(e));
                    }
                }
            } else {
                self.write_blocks(mbox, true).map_err(failed(path))?;
            }
        }
        self.settle();
        for (path, mbox) in open.iter_mut() {
            if let Some(e) = mbox.take_failure() {
                mbox.failing = true;
                first.get_or_insert_with(|| failed(path)(e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Every message stored for `rcpt`, in `new/` and `cur/`.
    pub fn messages(&self, rcpt: &str) -> Vec<PathBuf> {
        let Some(dir) = self.user_dir(rcpt) else {
            return vec![];
        };
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = fs::read_dir(dir.join(sub)) {
                out.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        }
        out.sort();
        out
    }
}

impl Drop for Maildir {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            let pending: usize = self
                .mboxes
                .get_mut()
                .map_or(0, |m| m.values().map(|b| b.pending.len()).sum());
            tracing::error!("{e}: {pending} bytes of stored copies not written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_and_list_and_refuse_path_tricks() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path(), true, "mx1.example.test");
        let p = md
            .deliver("Bob@Example.Test", b"Subject: hi\r\n\r\nbody\r\n")
            .unwrap();
        assert!(p.starts_with(dir.path().join("example.test/bob/new")));
        assert_eq!(md.messages("bob@example.test").len(), 1);
        assert!(md.deliver("../../etc@example.test", b"x").is_err());
        assert!(md.deliver("a@..", b"x").is_err());
        let junk = md
            .deliver_into("bob@example.test", Some("Junk"), b"Subject: x\r\n\r\n")
            .unwrap();
        assert!(junk.starts_with(dir.path().join("example.test/bob/folders/Junk/new")));
        assert!(
            md.deliver_into("bob@example.test", Some("../x"), b"x")
                .is_err()
        );
    }

    /// A store that does not sync writes its mbox copies in blocks; what it holds once flushed
    /// or dropped is byte for byte what a syncing store wrote copy by copy.
    #[test]
    fn buffered_mbox_is_the_synced_one_once_flushed() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let synced = Maildir::new(a.path(), true, "mx");
        let buffered = Maildir::new(b.path(), false, "mx");
        let copy = |i: usize| {
            format!(
                "Subject: copy {i}\r\nX-Pad: {}\r\n\r\nFrom the start\r\n>From quoted\r\n",
                "x".repeat(i % 1500)
            )
        };
        let n = 400;
        for i in 0..n {
            for md in [&synced, &buffered] {
                let folder = (i % 7 == 0).then_some("Junk");
                md.append_mbox(
                    "inbox@mx.test",
                    folder,
                    "s@a.test",
                    1_700_000_000,
                    copy(i).as_bytes(),
                )
                .unwrap();
            }
        }
        let inbox = |root: &Path| root.join("mx.test/inbox").join(MBOX_FILE);
        // The blocks handed to the writer thread are written.
        buffered.settle();
        let on_disk = std::fs::metadata(inbox(b.path())).unwrap().len();
        let whole = std::fs::metadata(inbox(a.path())).unwrap().len();
        assert!(
            on_disk < whole,
            "{on_disk} of {whole} bytes written before the flush"
        );
        assert_eq!(on_disk % MBOX_BLOCK, 0, "written in whole blocks");
        buffered.flush().unwrap();
        assert_eq!(
            std::fs::read(inbox(a.path())).unwrap(),
            std::fs::read(inbox(b.path())).unwrap()
        );
        // More copies after the flush; dropping the store writes them.
        for md in [&synced, &buffered] {
            md.append_mbox("inbox@mx.test", None, "", 1_700_000_001, copy(7).as_bytes())
                .unwrap();
        }
        drop(buffered);
        for f in [
            PathBuf::from("mx.test/inbox").join(MBOX_FILE),
            PathBuf::from("mx.test/inbox/folders/Junk").join(MBOX_FILE),
        ] {
            let (x, y) = (
                std::fs::read(a.path().join(&f)).unwrap(),
                std::fs::read(b.path().join(&f)).unwrap(),
            );
            assert!(x.len() > 10_000 && x == y, "{}", f.display());
        }
    }

    /// A block the writer thread cannot write (here the file is /dev/full) refuses the copy
    /// appended next and every copy after it while the writes (now on the caller's thread)
    /// fail; none of the copies accepted before is lost: they are pending again, in order, and
    /// written once the file takes writes again.
    #[test]
    fn a_failed_block_write_refuses_copies_until_a_write_succeeds() {
        if !Path::new("/dev/full").exists() {
            return;
        }
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let full = Maildir::new(a.path(), false, "mx");
        let reference = Maildir::new(b.path(), false, "mx");
        let inbox = a.path().join("mx.test/inbox");
        std::fs::create_dir_all(&inbox).unwrap();
        std::os::unix::fs::symlink("/dev/full", inbox.join(MBOX_FILE)).unwrap();
        let copy = |i: usize| {
            format!(
                "Subject: copy {i}\r\nX-Pad: {}\r\n\r\nbody\r\n",
                "y".repeat(900)
            )
        };
        let append = |md: &Maildir, i: usize| {
            md.append_mbox(
                "inbox@mx.test",
                None,
                "s@a.test",
                1_700_000_000,
                copy(i).as_bytes(),
            )
        };
        let mut accepted = Vec::new();
        let mut outcomes = Vec::new();
        for i in 0..150 {
            let ok = append(&full, i).is_ok();
            // The writer is done with what it was handed: the outcomes do not depend on when
            // it runs.
            full.settle();
            outcomes.push(ok);
            if ok {
                accepted.push(i);
                append(&reference, i).unwrap();
            }
        }
        // The first block (64 KB: the 68th copy) fails; every copy after it is refused.
        let first_refused = outcomes.iter().position(|ok| !ok).expect("a copy refused");
        assert!(first_refused > 60, "{first_refused}");
        assert!(outcomes[first_refused..].iter().all(|ok| !ok));
        assert!(full.flush().is_err());
        reference.flush().unwrap();
        let reference_file = b.path().join("mx.test/inbox").join(MBOX_FILE);
        let pending = |md: &Maildir| -> Vec<u8> {
            md.mboxes
                .lock()
                .unwrap()
                .values()
                .flat_map(|m| m.pending.clone())
                .collect()
        };
        assert_eq!(pending(&full), std::fs::read(&reference_file).unwrap());
        // The disk takes writes again (here: the mbox is pointed at a real file).
        let real = a.path().join("recovered.mbox");
        for m in full.mboxes.lock().unwrap().values_mut() {
            m.file = Arc::new(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&real)
                    .unwrap(),
            );
            m.end = 0;
        }
        for i in 150..300 {
            append(&full, i).unwrap();
            append(&reference, i).unwrap();
        }
        full.flush().unwrap();
        reference.flush().unwrap();
        assert_eq!(
            std::fs::read(&real).unwrap(),
            std::fs::read(&reference_file).unwrap()
        );
    }
}
