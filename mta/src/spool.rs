//! The durable spool: message bodies on disk.
//!
//! Bodies are appended to segment files, one segment per injected batch, fsynced once per batch
//! (with the directory), so durability costs one fsync per batch rather than per message. A
//! [`SpoolRef`] (segment, offset, length) names a body; a segment is deleted once every body in
//! it is released (delivered, bounced or expired).

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

#[derive(Debug, thiserror::Error)]
#[error("spool {path}: {source}")]
pub struct SpoolError {
    pub path: PathBuf,
    pub source: io::Error,
}

struct Segment {
    file: Arc<File>,
    live: usize,
}

pub struct Spool {
    dir: PathBuf,
    state: Mutex<SpoolState>,
    /// `EveryBatch`: each batch is on disk before `write_batch` returns (a message accepted is
    /// never lost). `OnFlush`: no fsync (virtual runs, replayed from the seed).
    durability: Durability,
}

struct SpoolState {
    next_segment: u64,
    segments: HashMap<u64, Segment>,
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
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                next_segment = next_segment.max(n + 1);
            }
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            state: Mutex::new(SpoolState {
                next_segment,
                segments: HashMap::new(),
            }),
            durability,
        })
    }

    fn segment_path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:010}.seg"))
    }

    /// Write a batch of bodies durably; returns one reference per body, in order.
    pub fn write_batch(&self, bodies: &[&[u8]]) -> Result<Vec<SpoolRef>, SpoolError> {
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
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(err)?;
        let total: usize = bodies.iter().map(|b| b.len()).sum();
        let mut buf = Vec::with_capacity(total);
        let mut refs = Vec::with_capacity(bodies.len());
        for body in bodies {
            refs.push(SpoolRef {
                segment,
                offset: buf.len() as u64,
                len: body.len() as u32,
            });
            buf.extend_from_slice(body);
        }
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
        let mut st = self.state.lock().expect("spool lock");
        st.segments.insert(
            segment,
            Segment {
                file: Arc::new(file),
                live: bodies.len(),
            },
        );
        Ok(refs)
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
        let path = self.segment_path(r.segment);
        let file = self
            .state
            .lock()
            .expect("spool lock")
            .segments
            .get(&r.segment)
            .map(|seg| seg.file.clone());
        let Some(file) = file else {
            return Err(SpoolError {
                path,
                source: io::Error::new(io::ErrorKind::NotFound, "segment released"),
            });
        };
        let mut buf = vec![0u8; r.len as usize];
        file.read_exact_at(&mut buf, r.offset)
            .map_err(|source| SpoolError { path, source })?;
        Ok(buf)
    }

    /// Release one body; the segment file goes when its last body does.
    pub fn release(&self, r: &SpoolRef) {
        let mut st = self.state.lock().expect("spool lock");
        let gone = match st.segments.get_mut(&r.segment) {
            Some(seg) => {
                seg.live = seg.live.saturating_sub(1);
                seg.live == 0
            }
            None => false,
        };
        if gone {
            st.segments.remove(&r.segment);
            let _ = fs::remove_file(self.segment_path(r.segment));
        }
    }

    /// Number of segment files still held.
    pub fn segments(&self) -> usize {
        self.state.lock().expect("spool lock").segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_and_release_deletes_segment() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let refs = spool.write_batch(&[b"one", b"second body", b""]).unwrap();
        assert_eq!(spool.read(&refs[1]).unwrap(), b"second body");
        assert_eq!(spool.read(&refs[2]).unwrap(), b"");
        for r in &refs {
            spool.release(r);
        }
        assert_eq!(spool.segments(), 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let again = Spool::open(dir.path()).unwrap();
        assert!(again.read(&refs[0]).is_err());
    }
}
