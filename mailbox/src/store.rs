//! Maildir storage: `ROOT/<domain>/<local-part>/{tmp,new,cur}`, written to tmp and renamed into
//! new (optionally fsynced first, as a durable mail server must).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
    file: File,
    /// Its length on disk (what was written since it was opened, and what it held then).
    end: u64,
    /// Copies appended but not yet written (whole copies: never a part of one).
    pending: Vec<u8>,
}

impl Mbox {
    /// Write the pending copies up to the last whole block (all of them when `all`). On an
    /// error the file is cut back to its length before, and the copies stay pending.
    fn write_pending(&mut self, all: bool) -> io::Result<()> {
        let upto = if all {
            self.pending.len()
        } else {
            let blocks_end = (self.end + self.pending.len() as u64) / MBOX_BLOCK * MBOX_BLOCK;
            blocks_end.saturating_sub(self.end) as usize
        };
        if upto == 0 {
            return Ok(());
        }
        if let Err(e) = self.file.write_all(&self.pending[..upto]) {
            // No torn copy left for the next one to run into.
            let _ = self.file.set_len(self.end);
            return Err(e);
        }
        self.end += upto as u64;
        self.pending.drain(..upto);
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("storing into {path}: {source}")]
pub struct StoreError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// A recipient address turned into a safe (domain, local part) pair of path components.
fn path_parts(rcpt: &str) -> Option<(String, String)> {
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
    /// in memory and writes them in whole blocks ([`Maildir::flush`] and dropping the store
    /// write the rest). A write that fails is cut off again: the copy that met it is refused,
    /// the copies accepted before it are kept for the next write.
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
        let when = chrono::DateTime::from_timestamp(unix_s, 0).unwrap_or_default();
        // The From line's address: the envelope sender, or MAILER-DAEMON for the null one.
        // (A quoted local part may hold spaces, which the From line cannot.)
        let sender = match sender.trim() {
            "" => "MAILER-DAEMON".to_string(),
            s => s.replace(char::is_whitespace, "_"),
        };
        let mut out = Vec::with_capacity(message.len() + 64);
        out.extend_from_slice(
            format!("From {sender} {}\n", when.format("%a %b %e %H:%M:%S %Y")).as_bytes(),
        );
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
                Self::close_all(&mut open)?;
            }
            let mbox = Mbox {
                file: f,
                end: len,
                pending: Vec::new(),
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
        if mbox.pending.len() >= MBOX_BUFFER
            && let Err(e) = mbox.write_pending(false)
        {
            // This copy is refused (the server answers 451); the ones before it, already
            // accepted, stay pending for the next write.
            mbox.pending.truncate(before);
            return Err(err(&path)(e));
        }
        Ok(path)
    }

    /// Write every copy [`Maildir::append_mbox`] holds in memory to its mbox file. Done when
    /// the store is dropped too; call it to read the files while the store is in use.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut open = self.mboxes.lock().unwrap_or_else(|e| e.into_inner());
        Self::write_all_pending(&mut open)
    }

    /// Write what every open mbox holds and close them all; on an error the files stay open
    /// with what they hold.
    fn close_all(open: &mut HashMap<PathBuf, Mbox>) -> Result<(), StoreError> {
        Self::write_all_pending(open)?;
        open.clear();
        Ok(())
    }

    /// Write every copy the open mboxes hold.
    fn write_all_pending(open: &mut HashMap<PathBuf, Mbox>) -> Result<(), StoreError> {
        for (path, mbox) in open.iter_mut() {
            mbox.write_pending(true).map_err(|source| StoreError {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
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
}
