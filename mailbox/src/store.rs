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
    /// The mbox files [`Maildir::append_mbox`] has open (at most [`MBOXES_OPEN_MAX`]), each with
    /// its length: this store is the only writer of its mbox files (each fleet host's store has
    /// a root of its own), so what it wrote since opening one is all that was written to it.
    mboxes: Mutex<HashMap<PathBuf, (File, u64)>>,
}

/// Most mbox files kept open at once (then all are closed and opened again as needed).
const MBOXES_OPEN_MAX: usize = 256;

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
    /// mail tools read it; `sender` and `unix_s` make the `From ` line. Each copy is written
    /// under the store's lock (copies appended at once by several sessions stay whole), and a
    /// copy that fails half-written is cut off again.
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
                open.clear();
            }
            open.insert(path.clone(), (f, len));
        }
        let (f, end) = open.get_mut(&path).expect("opened above");
        if let Err(e) = f.write_all(&out) {
            // No torn copy left for the next one to run into: cut it off, and open the file
            // afresh next time.
            let _ = f.set_len(*end);
            open.remove(&path);
            return Err(err(&path)(e));
        }
        *end += out.len() as u64;
        if self.fsync {
            f.sync_data().map_err(err(&path))?;
        }
        Ok(path)
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
}
