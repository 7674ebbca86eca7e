//! Mail folders with IMAP state on top of Maildir: UIDs, UIDVALIDITY, flags, internal dates.
//!
//! Each folder is a Maildir (`tmp/`, `new/`, `cur/`) plus `mailsim-index`, a small text index of
//! `uid internal-date size flags file` lines written atomically (temporary file, fsync, rename).
//! Mail delivered by SMTP lands in `new/` without touching the index; a folder picks such files
//! up when it is opened or refreshed, gives them the next UIDs and moves them to `cur/`.
//!
//! Crash safety: a message file is durable before any index names it; a file the index does not
//! name (a crash between the move to `cur/` and the index write) is found again by the full scan
//! at open; an expunged file is unlinked before the index forgets it, and index entries whose
//! file is gone are dropped, so an expunged message never comes back.
//!
//! A user's folders live under `ROOT/<domain>/<local>/`: INBOX is that Maildir itself, every
//! other folder is `folders/<encoded name>/` (hierarchy separator `/`).

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mailsim_events::{Clock, SystemClock};

pub const INDEX_FILE: &str = "mailsim-index";
pub const SEPARATOR: char = '/';

/// The five system flags a message can carry permanently, plus keywords.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub system: BTreeSet<SystemFlag>,
    pub keywords: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SystemFlag {
    Answered,
    Flagged,
    Deleted,
    Seen,
    Draft,
}

impl SystemFlag {
    pub const ALL: [SystemFlag; 5] = [
        SystemFlag::Answered,
        SystemFlag::Flagged,
        SystemFlag::Deleted,
        SystemFlag::Seen,
        SystemFlag::Draft,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SystemFlag::Answered => "\\Answered",
            SystemFlag::Flagged => "\\Flagged",
            SystemFlag::Deleted => "\\Deleted",
            SystemFlag::Seen => "\\Seen",
            SystemFlag::Draft => "\\Draft",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        SystemFlag::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
    }
}

impl Flags {
    pub fn has(&self, f: SystemFlag) -> bool {
        self.system.contains(&f)
    }

    pub fn has_keyword(&self, k: &str) -> bool {
        self.keywords.iter().any(|x| x.eq_ignore_ascii_case(k))
    }

    /// Names in IMAP form, system flags first.
    pub fn names(&self) -> Vec<String> {
        self.system
            .iter()
            .map(|f| f.name().to_string())
            .chain(self.keywords.iter().cloned())
            .collect()
    }

    /// Parse one flag name (`\Seen`, a keyword); other backslash names are ignored.
    pub fn insert_name(&mut self, name: &str) {
        if let Some(f) = SystemFlag::from_name(name) {
            self.system.insert(f);
        } else if !name.starts_with('\\') && !name.is_empty() {
            self.keywords.insert(name.to_string());
        }
    }

    pub fn remove_name(&mut self, name: &str) {
        if let Some(f) = SystemFlag::from_name(name) {
            self.system.remove(&f);
        } else {
            self.keywords.retain(|k| !k.eq_ignore_ascii_case(name));
        }
    }

    /// The index's form: names joined by `,`, `-` for none. A keyword is an IMAP atom, which
    /// may hold `,` and be `-` but never `%` (RFC 3501 section 9: list-wildcards are
    /// atom-specials): a `,` in a name is written `%2C`, a keyword `-` is `%2D`. Indexes
    /// written before hold no `%` and read the same.
    fn encode(&self) -> String {
        let names = self.names();
        if names.is_empty() {
            return "-".into();
        }
        let escaped: Vec<String> = names
            .iter()
            .map(|n| match n.as_str() {
                "-" => "%2D".to_string(),
                n => n.replace('%', "%25").replace(',', "%2C"),
            })
            .collect();
        escaped.join(",")
    }

    fn decode(s: &str) -> Flags {
        let mut f = Flags::default();
        if s != "-" {
            for n in s.split(',') {
                f.insert_name(&unescape(n));
            }
        }
        f
    }
}

/// A flag name as [`Flags::encode`] wrote it: `%` and two hex digits stand for that byte.
fn unescape(n: &str) -> std::borrow::Cow<'_, str> {
    if !n.contains('%') {
        return n.into();
    }
    let mut out = Vec::with_capacity(n.len());
    let b = n.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

/// One message of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub uid: u32,
    /// Milliseconds since the Unix epoch.
    pub internal_ms: i64,
    pub size: u64,
    pub flags: Flags,
    /// File name in `cur/`.
    pub file: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} line {line}: {what}")]
    BadIndex {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error("no such mailbox")]
    NoSuchFolder,
    #[error("mailbox already exists")]
    Exists,
    #[error("invalid mailbox name")]
    BadName,
    #[error("mailbox name too long")]
    NameTooLong,
    #[error("over quota")]
    OverQuota,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FolderError + '_ {
    move |source| FolderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);
static LAST_UIDVALIDITY: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A UIDVALIDITY for a new folder: the time in seconds, but never the same twice in a process,
/// so that a mailbox deleted and created again within a second still gets a new one
/// (RFC 3501 section 2.3.1.1).
fn next_uidvalidity(now_ms: u64) -> u32 {
    let now = (now_ms / 1000) as u32;
    let mut prev = LAST_UIDVALIDITY.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST_UIDVALIDITY.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// A Maildir file name unique on this host.
fn unique_name(now_ms: u64) -> String {
    format!(
        "{}.M{}P{}.mailsim",
        now_ms / 1000,
        UNIQUE.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    )
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file's modification time in ms since the epoch: the internal date of mail found on disk.
fn mtime_ms(meta: Option<&fs::Metadata>) -> i64 {
    meta.and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

/// Write `bytes` into a new durable file in `dir/tmp` and rename it to `dir/<sub>/<name>`.
pub fn write_durable(
    dir: &Path,
    sub: &str,
    bytes: &[u8],
    now_ms: u64,
) -> Result<(String, PathBuf), FolderError> {
    let name = unique_name(now_ms);
    let tmp = dir.join("tmp").join(&name);
    let dst = dir.join(sub).join(&name);
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    fsync_dir(&dir.join(sub)).map_err(io_err(&dst))?;
    Ok((name, dst))
}

/// The state of one open folder, shared by every session that has it selected.
pub struct Folder {
    dir: PathBuf,
    pub uidvalidity: u32,
    pub uidnext: u32,
    pub messages: Vec<Message>,
    /// Messages with a UID at or above this are \Recent to the next session that claims them.
    recent_floor: u32,
    /// Bumped on every change; sessions and IDLE watch it.
    pub changes: tokio::sync::watch::Sender<u64>,
    /// Where UIDVALIDITY and file names take the time from.
    clock: Arc<dyn Clock>,
}

impl Folder {
    pub fn create_dirs(dir: &Path) -> Result<(), FolderError> {
        for sub in ["tmp", "new", "cur"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(())
    }

    /// Open (creating the Maildir if `create`), read the index and pick up unindexed files.
    pub fn open(dir: &Path, create: bool, clock: Arc<dyn Clock>) -> Result<Folder, FolderError> {
        if !dir.join("cur").is_dir() {
            if !create {
                return Err(FolderError::NoSuchFolder);
            }
            Folder::create_dirs(dir)?;
        }
        let mut folder = Folder {
            dir: dir.to_path_buf(),
            uidvalidity: 0,
            uidnext: 1,
            messages: Vec::new(),
            recent_floor: 1,
            changes: tokio::sync::watch::channel(0).0,
            clock,
        };
        let index = dir.join(INDEX_FILE);
        let mut dirty = false;
        match fs::read_to_string(&index) {
            Ok(text) => folder.read_index(&index, &text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                folder.uidvalidity = next_uidvalidity(folder.clock.now_ms());
                dirty = true;
            }
            Err(e) => return Err(io_err(&index)(e)),
        }
        // Entries whose file is gone (expunged before a crash) are dropped.
        let before = folder.messages.len();
        let cur = dir.join("cur");
        folder.messages.retain(|m| cur.join(&m.file).exists());
        dirty |= folder.messages.len() != before;
        let known: std::collections::HashSet<String> =
            folder.messages.iter().map(|m| m.file.clone()).collect();
        let mut orphans: Vec<(i64, String)> = Vec::new();
        for entry in fs::read_dir(&cur).map_err(io_err(&cur))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                let mtime = mtime_ms(entry.metadata().ok().as_ref());
                orphans.push((mtime, name));
            }
        }
        orphans.sort();
        for (mtime, name) in orphans {
            let size = fs::metadata(cur.join(&name)).map_or(0, |m| m.len());
            folder.push(name, mtime, size, Flags::default());
            dirty = true;
        }
        folder.recent_floor = folder.uidnext;
        dirty |= folder.scan_new()?;
        if dirty {
            folder.write_index()?;
        }
        Ok(folder)
    }

    fn read_index(&mut self, path: &Path, text: &str) -> Result<(), FolderError> {
        let bad = |line: usize, what: &str| FolderError::BadIndex {
            path: path.to_path_buf(),
            line,
            what: what.to_string(),
        };
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let mut f = line.splitn(5, ' ');
            match f.next() {
                Some("mailsim-index") => {}
                Some("uidvalidity") => {
                    self.uidvalidity = f
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| bad(n, "uidvalidity"))?
                }
                Some("uidnext") => {
                    self.uidnext = f
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| bad(n, "uidnext"))?
                }
                Some(uid) => {
                    let uid: u32 = uid.parse().map_err(|_| bad(n, "uid"))?;
                    let internal_ms = f
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| bad(n, "internal date"))?;
                    let size = f
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| bad(n, "size"))?;
                    let flags = Flags::decode(f.next().ok_or_else(|| bad(n, "flags"))?);
                    let file = f.next().ok_or_else(|| bad(n, "file"))?.to_string();
                    if file.contains('/') {
                        return Err(bad(n, "file name with a slash"));
                    }
                    self.uidnext = self.uidnext.max(uid + 1);
                    self.messages.push(Message {
                        uid,
                        internal_ms,
                        size,
                        flags,
                        file,
                    });
                }
                None => {}
            }
        }
        self.messages.sort_by_key(|m| m.uid);
        Ok(())
    }

    pub fn write_index(&self) -> Result<(), FolderError> {
        let mut text = format!(
            "mailsim-index 1\nuidvalidity {}\nuidnext {}\n",
            self.uidvalidity, self.uidnext
        );
        for m in &self.messages {
            text.push_str(&format!(
                "{} {} {} {} {}\n",
                m.uid,
                m.internal_ms,
                m.size,
                m.flags.encode(),
                m.file
            ));
        }
        let tmp = self.dir.join(format!("{INDEX_FILE}.tmp"));
        let dst = self.dir.join(INDEX_FILE);
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        fsync_dir(&self.dir).map_err(io_err(&self.dir))?;
        Ok(())
    }

    fn push(&mut self, file: String, internal_ms: i64, size: u64, flags: Flags) -> u32 {
        let uid = self.uidnext;
        self.uidnext += 1;
        self.messages.push(Message {
            uid,
            internal_ms,
            size,
            flags,
            file,
        });
        uid
    }

    /// Index the files SMTP delivered into `new/` (moving them to `cur/`); true when any.
    fn scan_new(&mut self) -> Result<bool, FolderError> {
        let new = self.dir.join("new");
        let mut found: Vec<(i64, String, u64)> = Vec::new();
        let Ok(rd) = fs::read_dir(&new) else {
            return Ok(false);
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata().ok();
            let mtime = mtime_ms(meta.as_ref());
            found.push((mtime, name, meta.map_or(0, |m| m.len())));
        }
        if found.is_empty() {
            return Ok(false);
        }
        found.sort();
        for (mtime, name, size) in found {
            let from = new.join(&name);
            let to = self.dir.join("cur").join(&name);
            fs::rename(&from, &to).map_err(io_err(&to))?;
            self.push(name, mtime, size, Flags::default());
        }
        Ok(true)
    }

    /// Pick up new deliveries; persist and announce them.
    pub fn refresh(&mut self) -> Result<(), FolderError> {
        if self.scan_new()? {
            self.write_index()?;
            self.changed();
        }
        Ok(())
    }

    pub fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Claim the \Recent messages (those no session has seen yet).
    pub fn claim_recent(&mut self) -> u32 {
        let floor = self.recent_floor;
        self.recent_floor = self.uidnext;
        floor
    }

    /// Messages at or above this UID are still unclaimed.
    pub fn recent_floor(&self) -> u32 {
        self.recent_floor
    }

    pub fn path_of(&self, m: &Message) -> PathBuf {
        self.dir.join("cur").join(&m.file)
    }

    pub fn read(&self, m: &Message) -> Result<Vec<u8>, FolderError> {
        let p = self.path_of(m);
        fs::read(&p).map_err(io_err(&p))
    }

    pub fn find(&self, uid: u32) -> Option<&Message> {
        self.messages
            .binary_search_by_key(&uid, |m| m.uid)
            .ok()
            .map(|i| &self.messages[i])
    }

    pub fn find_mut(&mut self, uid: u32) -> Option<&mut Message> {
        self.messages
            .binary_search_by_key(&uid, |m| m.uid)
            .ok()
            .map(|i| &mut self.messages[i])
    }

    /// Store a new message (APPEND, COPY, local delivery); returns its UID.
    pub fn append(
        &mut self,
        bytes: &[u8],
        flags: Flags,
        internal_ms: i64,
    ) -> Result<u32, FolderError> {
        let (name, _) = write_durable(&self.dir, "cur", bytes, self.clock.now_ms())?;
        let uid = self.push(name, internal_ms, bytes.len() as u64, flags);
        self.write_index()?;
        self.changed();
        Ok(uid)
    }

    /// Remove the messages `pick` selects (file first, then the index); returns their UIDs.
    pub fn expunge_where(
        &mut self,
        mut pick: impl FnMut(&Message) -> bool,
    ) -> Result<Vec<u32>, FolderError> {
        let mut gone = Vec::new();
        let mut err = None;
        let dir = self.dir.join("cur");
        self.messages.retain(|m| {
            if !pick(m) {
                return true;
            }
            match fs::remove_file(dir.join(&m.file)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    err.get_or_insert(io_err(&dir)(e));
                    return true;
                }
            }
            gone.push(m.uid);
            false
        });
        if !gone.is_empty() {
            self.write_index()?;
            self.changed();
        }
        match err {
            Some(e) => Err(e),
            None => Ok(gone),
        }
    }

    pub fn bytes_used(&self) -> u64 {
        self.messages.iter().map(|m| m.size).sum()
    }
}

/// The longest encoded folder name (one path component, `NAME_MAX` on Linux).
pub const FOLDER_NAME_ENCODED_BYTES_MAX: usize = 255;

/// Encode a folder name as one path component (anything outside `[A-Za-z0-9_-]` as `%XX`).
fn encode_name(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_name(s: &str) -> Option<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Is `name` INBOX (case-insensitively, RFC 3501 section 5.1)?
pub fn is_inbox(name: &str) -> bool {
    name.eq_ignore_ascii_case("INBOX")
}

/// Every user's folders, with one shared [`Folder`] per open Maildir.
pub struct Mailstore {
    root: PathBuf,
    open: Mutex<HashMap<PathBuf, Arc<Mutex<Folder>>>>,
    /// Per-user byte limit (0: none).
    pub quota_bytes: u64,
    /// Internal dates, UIDVALIDITY, retention: the time comes from here.
    clock: Arc<dyn Clock>,
}

pub type FolderRef = Arc<Mutex<Folder>>;

pub fn lock(f: &FolderRef) -> MutexGuard<'_, Folder> {
    f.lock().unwrap_or_else(|p| p.into_inner())
}

impl Mailstore {
    /// A store on the wall clock.
    pub fn new(root: &Path, quota_bytes: u64) -> Self {
        Self::with_clock(root, quota_bytes, Arc::new(SystemClock))
    }

    pub fn with_clock(root: &Path, quota_bytes: u64, clock: Arc<dyn Clock>) -> Self {
        Mailstore {
            root: root.to_path_buf(),
            open: Mutex::new(HashMap::new()),
            quota_bytes,
            clock,
        }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/<domain>/<local>` for a full address (already validated as a user).
    pub fn user_dir(&self, user: &str) -> PathBuf {
        let (local, domain) = user.rsplit_once('@').unwrap_or((user, ""));
        self.root
            .join(domain.to_ascii_lowercase())
            .join(local.to_ascii_lowercase())
    }

    fn folder_dir(&self, user: &str, name: &str) -> Result<PathBuf, FolderError> {
        if is_inbox(name) {
            return Ok(self.user_dir(user));
        }
        let name = name.trim_end_matches(SEPARATOR);
        if name.is_empty()
            || name.split(SEPARATOR).any(|p| p.is_empty())
            || name.chars().any(|c| c.is_control())
        {
            return Err(FolderError::BadName);
        }
        // The encoded name is one path component: most file systems stop at 255 bytes.
        if encode_name(name).len() > FOLDER_NAME_ENCODED_BYTES_MAX {
            return Err(FolderError::NameTooLong);
        }
        Ok(self.user_dir(user).join("folders").join(encode_name(name)))
    }

    /// The shared state of a folder (opened from disk on first use).
    pub fn folder(&self, user: &str, name: &str) -> Result<FolderRef, FolderError> {
        let dir = self.folder_dir(user, name)?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(&dir) {
            return Ok(f.clone());
        }
        let f = Arc::new(Mutex::new(Folder::open(
            &dir,
            is_inbox(name),
            self.clock.clone(),
        )?));
        open.insert(dir, f.clone());
        Ok(f)
    }

    /// Folder names of a user, INBOX first.
    pub fn list(&self, user: &str) -> Vec<String> {
        let mut names = vec!["INBOX".to_string()];
        let dir = self.user_dir(user).join("folders");
        let mut others: Vec<String> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| decode_name(&e.file_name().to_string_lossy()))
            .collect();
        others.sort();
        names.extend(others);
        names
    }

    pub fn create(&self, user: &str, name: &str) -> Result<(), FolderError> {
        if is_inbox(name) {
            return Err(FolderError::Exists);
        }
        let dir = self.folder_dir(user, name)?;
        if dir.join("cur").is_dir() {
            return Err(FolderError::Exists);
        }
        // Superior names are created too (RFC 3501 section 6.3.3).
        let trimmed = name.trim_end_matches(SEPARATOR);
        let mut prefix = String::new();
        for part in trimmed.split(SEPARATOR) {
            if !prefix.is_empty() {
                prefix.push(SEPARATOR);
            }
            prefix.push_str(part);
            let d = self.folder_dir(user, &prefix)?;
            if !d.join("cur").is_dir() {
                Folder::create_dirs(&d)?;
                Folder::open(&d, true, self.clock.clone())?;
            }
        }
        Ok(())
    }

    pub fn delete(&self, user: &str, name: &str) -> Result<(), FolderError> {
        if is_inbox(name) {
            return Err(FolderError::BadName);
        }
        let dir = self.folder_dir(user, name)?;
        if !dir.join("cur").is_dir() {
            return Err(FolderError::NoSuchFolder);
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.remove(&dir) {
            // Sessions that have it selected see every message expunged.
            let mut f = lock(&f);
            f.messages.clear();
            f.changed();
        }
        fs::remove_dir_all(&dir).map_err(io_err(&dir))
    }

    pub fn rename(&self, user: &str, from: &str, to: &str) -> Result<(), FolderError> {
        if is_inbox(from) || is_inbox(to) {
            return Err(FolderError::BadName);
        }
        let a = self.folder_dir(user, from)?;
        let b = self.folder_dir(user, to)?;
        if !a.join("cur").is_dir() {
            return Err(FolderError::NoSuchFolder);
        }
        if b.exists() {
            return Err(FolderError::Exists);
        }
        // Inferior names move with it.
        let mut moves = vec![(a.clone(), b.clone())];
        let from_prefix = format!("{}{SEPARATOR}", from.trim_end_matches(SEPARATOR));
        for other in self.list(user) {
            if let Some(rest) = other.strip_prefix(&from_prefix) {
                let target = format!("{}{SEPARATOR}{rest}", to.trim_end_matches(SEPARATOR));
                moves.push((
                    self.folder_dir(user, &other)?,
                    self.folder_dir(user, &target)?,
                ));
            }
        }
        // A folder open in sessions moves with its name: they go on with it under the new one
        // (as Dovecot's do), and never write its index where the old name is (an independent
        // review: a session holding the old handle failed every FETCH, and wrote its index, old
        // UIDVALIDITY and all, into a folder created again under the old name).
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for (x, y) in moves {
            let handle = open.remove(&x);
            let moved = {
                // Held while it moves: no index is written meanwhile.
                let mut held = handle.as_ref().map(|h| lock(h));
                let moved = fs::rename(&x, &y);
                if moved.is_ok()
                    && let Some(f) = held.as_mut()
                {
                    f.dir = y.clone();
                }
                moved
            };
            if let Some(h) = handle {
                open.insert(if moved.is_ok() { y.clone() } else { x }, h);
            }
            moved.map_err(io_err(&y))?;
        }
        Ok(())
    }

    /// Bytes stored for a user (every folder).
    pub fn usage(&self, user: &str) -> u64 {
        let mut total = 0;
        for name in self.list(user) {
            if let Ok(dir) = self.folder_dir(user, &name) {
                for sub in ["new", "cur"] {
                    if let Ok(rd) = fs::read_dir(dir.join(sub)) {
                        total += rd
                            .flatten()
                            .filter_map(|e| e.metadata().ok())
                            .map(|m| m.len())
                            .sum::<u64>();
                    }
                }
            }
        }
        total
    }

    pub fn over_quota(&self, user: &str, extra: u64) -> bool {
        self.quota_bytes > 0 && self.usage(user) + extra > self.quota_bytes
    }

    /// Deliver into a user's INBOX (durable before return) and tell open sessions.
    pub fn deliver(&self, user: &str, bytes: &[u8]) -> Result<u32, FolderError> {
        if self.over_quota(user, bytes.len() as u64) {
            return Err(FolderError::OverQuota);
        }
        let inbox = self.folder(user, "INBOX")?;
        let mut f = lock(&inbox);
        f.append(bytes, Flags::default(), self.clock.now_ms() as i64)
    }

    pub fn subscriptions(&self, user: &str) -> BTreeSet<String> {
        fs::read_to_string(self.user_dir(user).join("subscriptions"))
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    pub fn set_subscribed(&self, user: &str, name: &str, on: bool) -> Result<(), FolderError> {
        let mut subs = self.subscriptions(user);
        if on {
            subs.insert(name.to_string());
        } else {
            subs.remove(name);
        }
        let dir = self.user_dir(user);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let text: String = subs.iter().map(|s| format!("{s}\n")).collect();
        let p = dir.join("subscriptions");
        fs::write(&p, text).map_err(io_err(&p))
    }

    /// Remove messages older than `max_age_ms` from every folder of every user under the root;
    /// returns (user, folder, uid) of each removed message.
    pub fn apply_retention(&self, users: &[String], max_age_ms: i64) -> Vec<(String, String, u32)> {
        let cutoff = self.clock.now_ms() as i64 - max_age_ms;
        let mut removed = Vec::new();
        for user in users {
            for name in self.list(user) {
                let Ok(f) = self.folder(user, &name) else {
                    continue;
                };
                let mut f = lock(&f);
                let _ = f.refresh();
                match f.expunge_where(|m| m.internal_ms < cutoff) {
                    Ok(uids) => {
                        removed.extend(uids.into_iter().map(|u| (user.clone(), name.clone(), u)))
                    }
                    Err(e) => tracing::warn!("retention in {name} of {user}: {e}"),
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_survives_reopen_and_picks_up_deliveries_and_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let store = Mailstore::new(dir.path(), 0);
        let u = "bob@example.test";
        let uid1 = store.deliver(u, b"Subject: one\r\n\r\nx\r\n").unwrap();
        let inbox = store.folder(u, "INBOX").unwrap();
        {
            let mut f = lock(&inbox);
            f.find_mut(uid1).unwrap().flags.insert_name("\\Seen");
            f.write_index().unwrap();
        }
        // An SMTP delivery straight into new/ and an orphan in cur/ (crash before the index).
        let md = crate::store::Maildir::new(dir.path(), true, "t");
        md.deliver(u, b"Subject: two\r\n\r\ny\r\n").unwrap();
        fs::write(
            store.user_dir(u).join("cur").join("orphan"),
            b"Subject: 3\r\n\r\n",
        )
        .unwrap();
        let reopened = Folder::open(&store.user_dir(u), false, store.clock().clone()).unwrap();
        assert_eq!(reopened.messages.len(), 3);
        assert_eq!(reopened.uidvalidity, lock(&inbox).uidvalidity);
        assert!(reopened.find(uid1).unwrap().flags.has(SystemFlag::Seen));
        assert_eq!(reopened.uidnext, 4);
        // An expunged file never comes back, even if the index still names it.
        fs::remove_file(reopened.path_of(reopened.find(uid1).unwrap())).unwrap();
        let again = Folder::open(&store.user_dir(u), false, store.clock().clone()).unwrap();
        assert_eq!(again.messages.len(), 2);
        assert!(again.find(uid1).is_none());
    }

    /// Keywords are IMAP atoms: `,` may be in one and `-` may be one (an independent review:
    /// `foo,bar` came back as two keywords and `-` as no flags after a restart).
    #[test]
    fn keywords_with_the_index_separators_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Mailstore::new(dir.path(), 0);
        let u = "bob@example.test";
        let uid1 = store.deliver(u, b"Subject: one\r\n\r\nx\r\n").unwrap();
        let uid2 = store.deliver(u, b"Subject: two\r\n\r\ny\r\n").unwrap();
        let inbox = store.folder(u, "INBOX").unwrap();
        {
            let mut f = lock(&inbox);
            let m = f.find_mut(uid1).unwrap();
            m.flags.insert_name("\\Seen");
            m.flags.insert_name("foo,bar");
            m.flags.insert_name("50%2C");
            f.find_mut(uid2).unwrap().flags.insert_name("-");
            f.write_index().unwrap();
        }
        let reopened = Folder::open(&store.user_dir(u), false, store.clock().clone()).unwrap();
        let names = |uid| {
            let mut n = reopened.find(uid).unwrap().flags.names();
            n.sort();
            n
        };
        assert_eq!(names(uid1), ["50%2C", "\\Seen", "foo,bar"]);
        assert_eq!(names(uid2), ["-"]);
        // An index written before (no `%`) reads as it did.
        assert_eq!(Flags::decode("\\Seen,a").names(), ["\\Seen", "a"]);
        assert!(Flags::decode("-").names().is_empty());
    }

    /// A folder open in a session when another renames it moves with its name: the session
    /// reads its messages and writes its index under the new name, and a folder created again
    /// under the old name is a new one.
    #[test]
    fn an_open_folder_moves_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Mailstore::new(dir.path(), 0);
        let u = "bob@example.test";
        store.create(u, "a").unwrap();
        let held = store.folder(u, "a").unwrap();
        let uid = lock(&held)
            .append(b"Subject: kept\r\n\r\nx\r\n", Flags::default(), 0)
            .unwrap();
        let validity = lock(&held).uidvalidity;
        store.rename(u, "a", "z").unwrap();
        {
            let mut f = lock(&held);
            let m = f.find(uid).unwrap().clone();
            assert!(
                fs::read(f.path_of(&m))
                    .unwrap()
                    .starts_with(b"Subject: kept")
            );
            f.find_mut(uid).unwrap().flags.insert_name("\\Flagged");
            f.write_index().unwrap();
        }
        store.create(u, "a").unwrap();
        let again = store.folder(u, "a").unwrap();
        assert!(lock(&again).messages.is_empty());
        assert_ne!(lock(&again).uidvalidity, validity);
        let z = store.folder(u, "z").unwrap();
        assert!(Arc::ptr_eq(&z, &held));
        let reopened = Folder::open(
            &store.folder_dir(u, "z").unwrap(),
            false,
            store.clock().clone(),
        )
        .unwrap();
        assert_eq!(reopened.uidvalidity, validity);
        assert!(reopened.find(uid).unwrap().flags.has(SystemFlag::Flagged));
    }

    #[test]
    fn folders_create_rename_delete_and_names_are_safe() {
        let dir = tempfile::tempdir().unwrap();
        let store = Mailstore::new(dir.path(), 0);
        let u = "bob@example.test";
        store.create(u, "a/b/c").unwrap();
        assert_eq!(store.list(u), ["INBOX", "a", "a/b", "a/b/c"]);
        store.rename(u, "a", "z").unwrap();
        assert_eq!(store.list(u), ["INBOX", "z", "z/b", "z/b/c"]);
        store.delete(u, "z/b/c").unwrap();
        assert!(store.create(u, "../../etc").is_ok());
        // ".." is a folder name like any other, kept inside the user's directory.
        assert!(store.user_dir(u).join("folders").join("%2E%2E").is_dir());
        assert!(matches!(store.create(u, "x//y"), Err(FolderError::BadName)));
        assert!(matches!(
            store.folder(u, "nope"),
            Err(FolderError::NoSuchFolder)
        ));
    }

    #[test]
    fn quota_refuses_and_retention_removes_old_mail() {
        let dir = tempfile::tempdir().unwrap();
        let store = Mailstore::new(dir.path(), 100);
        let u = "bob@example.test";
        store.deliver(u, &[b'x'; 60]).unwrap();
        assert!(matches!(
            store.deliver(u, &[b'y'; 60]),
            Err(FolderError::OverQuota)
        ));
        let inbox = store.folder(u, "INBOX").unwrap();
        lock(&inbox).append(b"old", Flags::default(), 0).unwrap();
        let removed = store.apply_retention(&[u.to_string()], 86_400_000);
        assert_eq!(removed.len(), 1);
        assert_eq!(lock(&inbox).messages.len(), 1);
    }
}
