//! The suppression list: addresses that hard-bounced or complained are not mailed again.
//!
//! Durable: every addition is appended to a file (`address<TAB>reason` per line) that is read
//! back when the list is opened, so a restarted MTA keeps refusing the same addresses.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
#[error("suppression list {path}: {source}")]
pub struct SuppressionError {
    path: String,
    source: std::io::Error,
}

pub struct Suppression {
    inner: Mutex<Inner>,
}

struct Inner {
    reasons: HashMap<String, String>,
    file: Option<File>,
}

impl Suppression {
    /// An in-memory list (nothing is kept across runs).
    pub fn in_memory() -> Self {
        Suppression {
            inner: Mutex::new(Inner {
                reasons: HashMap::new(),
                file: None,
            }),
        }
    }

    /// Open (or create) the list kept in `path`.
    pub fn open(path: &Path) -> Result<Self, SuppressionError> {
        let err = |source| SuppressionError {
            path: path.display().to_string(),
            source,
        };
        let mut reasons = HashMap::new();
        let mut torn = false;
        if path.exists() {
            let bytes = std::fs::read(path).map_err(err)?;
            torn = !bytes.is_empty() && !bytes.ends_with(b"\n");
            for line in BufReader::new(File::open(path).map_err(err)?).lines() {
                let line = line.map_err(err)?;
                // A torn last line (a crash mid-append) has no tab: skip it.
                if let Some((addr, reason)) = line.split_once('\t') {
                    reasons.insert(addr.to_ascii_lowercase(), reason.to_string());
                }
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        if torn {
            // End the torn line so the next addition starts on its own.
            file.write_all(b"\n").map_err(err)?;
        }
        Ok(Suppression {
            inner: Mutex::new(Inner {
                reasons,
                file: Some(file),
            }),
        })
    }

    /// Why `addr` is suppressed, if it is.
    pub fn reason(&self, addr: &str) -> Option<String> {
        let inner = self.inner.lock().expect("suppression");
        inner.reasons.get(&addr.to_ascii_lowercase()).cloned()
    }

    /// Add `addr`; false when it was already listed. The line is written before this returns.
    /// An unsubscribe (`unsubscribed`, `unengaged`) is the weakest reason: it only stops bulk
    /// mail, so a later hard bounce or complaint replaces it (a new line, true) and then stops
    /// every lane; any other reason stays as it was first listed.
    pub fn add(&self, addr: &str, reason: &str) -> bool {
        let key = addr.to_ascii_lowercase();
        let mut inner = self.inner.lock().expect("suppression");
        if let Some(old) = inner.reasons.get(&key)
            && (!is_unsubscribe(old) || is_unsubscribe(reason))
        {
            return false;
        }
        let clean: String = reason.chars().filter(|c| !c.is_control()).collect();
        if let Some(f) = inner.file.as_mut()
            && let Err(e) = writeln!(f, "{key}\t{clean}")
        {
            tracing::warn!("suppression list: {e}");
        }
        inner.reasons.insert(key, clean);
        true
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("suppression").reasons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flush the file to disk.
    pub fn sync(&self) -> std::io::Result<()> {
        let inner = self.inner.lock().expect("suppression");
        match &inner.file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }
}

/// Reasons that are the recipient's choice, not a failure: they stop bulk mail only.
pub fn is_unsubscribe(reason: &str) -> bool {
    matches!(reason, "unsubscribed" | "unengaged")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounce_or_complaint_replaces_an_unsubscribe_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suppression.log");
        let s = Suppression::open(&path).unwrap();
        assert!(s.add("a@x.test", "unsubscribed"));
        assert!(!s.add("a@x.test", "unengaged"));
        assert!(
            s.add("a@x.test", "feedback"),
            "a complaint after an unsubscribe"
        );
        assert!(!s.add("a@x.test", "userunknown"));
        assert!(!s.add("a@x.test", "unsubscribed"));
        assert!(s.add("b@x.test", "userunknown"));
        assert!(!s.add("b@x.test", "unsubscribed"));
        drop(s);
        let s = Suppression::open(&path).unwrap();
        assert_eq!(
            s.reason("a@x.test").as_deref(),
            Some("feedback"),
            "the last line wins"
        );
        assert_eq!(s.reason("b@x.test").as_deref(), Some("userunknown"));
    }

    #[test]
    fn additions_survive_reopening_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suppression.log");
        let s = Suppression::open(&path).unwrap();
        assert!(s.add("Bob@Example.test", "userunknown"));
        assert!(!s.add("bob@example.test", "userunknown"));
        assert!(s.add("carol@example.test", "complaint"));
        s.sync().unwrap();
        drop(s);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"dave@exa")
            .unwrap();
        let s = Suppression::open(&path).unwrap();
        assert_eq!(s.reason("BOB@example.test").as_deref(), Some("userunknown"));
        assert_eq!(s.reason("carol@example.test").as_deref(), Some("complaint"));
        assert_eq!(s.len(), 2);
    }
}
