//! What the sim tests share: reading what the receivers stored, from the files themselves.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Every message file in a Maildir `new` folder below `root` (a run's `mailboxes`), sorted. A
/// missing folder holds nothing (a run still in progress may not have made it yet).
pub fn maildir_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.parent().is_some_and(|p| p.ends_with("new")) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The directory right below `root` that holds `file`: the MX host (or the sender's domain).
pub fn host_of(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .ok()
        .and_then(|rel| rel.components().next())
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The Message-ID header's value, if the message has one.
pub fn message_id(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("Message-ID: ")
                .or_else(|| l.strip_prefix("Message-Id: "))
        })
        .map(|id| id.trim().to_string())
}
