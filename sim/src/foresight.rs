//! Work a virtual run's receivers will need, done ahead on another core.
//!
//! A virtual run is deterministic because everything it records happens on one runtime thread,
//! in an order fixed by virtual time. Most of a receiver's work on a message is a pure function
//! of its bytes: reading the content (links, content score) and checking its DKIM signatures.
//! When the MTA is about to send a message through the virtual network
//! ([`mailsim_mta::Connector::will_send`]), the message is handed to a thread that does that
//! work and remembers the answers under a digest of the bytes (the signatures as the memo of
//! [`mailsim_mailbox::auth_memo`]). The receiver takes an answer when one is there for exactly
//! the bytes it received and otherwise does the work itself: the same answer either way, so
//! the event log does not depend on which came first, only the wall time does.

use crate::engage::Links;
use crate::reputation::ContentFacts;
use fake_dns::{FaultyZones, RecordData, RecordType, Resolution};
use mailsim_mailbox::auth_memo::{Foreseer, SignatureMemo};
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

/// Messages waiting for the thread; more are left to their receivers.
const WAITING_MAX: usize = 1024;
/// Answers kept for messages not received yet (the oldest go first).
const KEPT: usize = 4096;

/// What a receiver reads of a message's content, once per message.
pub struct ContentRead {
    pub links: Links,
    pub facts: ContentFacts,
}

impl ContentRead {
    pub fn of(message: &[u8]) -> Self {
        let parsed = mail_parser::MessageParser::default().parse(message);
        ContentRead {
            links: Links::of_parsed(parsed.as_ref()),
            facts: ContentFacts::of(parsed.as_ref()),
        }
    }
}

struct Job {
    message: Arc<[u8]>,
    /// Scenario time when it was handed over: the DNS answers the keys are read from.
    elapsed_ms: u64,
}

/// A message handed over, and how far the thread is with it.
struct Entry {
    message: Arc<[u8]>,
    state: State,
}

enum State {
    /// Not started: a receiver that comes for it takes the work back.
    Queued,
    /// Being done: a receiver that comes for it waits.
    Running,
    /// Done: its signatures are in the memo, its content read here.
    Done(ContentRead),
}

/// The messages handed over, by [`key`] (the bytes decide: equal keys are compared whole).
#[derive(Default)]
struct Table {
    entries: HashMap<u64, Vec<Entry>>,
    /// Done entries in the order they were done, for forgetting the oldest.
    done: VecDeque<u64>,
    /// The thread ended (nothing waiting will be done).
    closed: bool,
}

impl Table {
    fn position(&self, key: u64, message: &[u8]) -> Option<usize> {
        self.entries
            .get(&key)?
            .iter()
            .position(|e| &*e.message == message)
    }

    fn remove(&mut self, key: u64, at: usize) -> Entry {
        let list = self.entries.get_mut(&key).expect("an entry at this key");
        let entry = list.swap_remove(at);
        if list.is_empty() {
            self.entries.remove(&key);
        }
        entry
    }
}

/// The table's key of a message: its CRC-32 and length (a hint, not an identity).
fn key(message: &[u8]) -> u64 {
    (u64::from(crc32fast::hash(message)) << 32) ^ message.len() as u64
}

/// Counts of what the receivers found done ahead (for the benchmark's figures).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Hits {
    /// Done when the receiver asked.
    pub ready: u64,
    /// Being done when the receiver asked: it waited for it.
    pub waited: u64,
    /// Not started when the receiver asked: it took the work back.
    pub taken_back: u64,
    /// Never handed over (or forgotten): the receiver did the work.
    pub inline: u64,
    /// Not handed over because the thread was too far behind.
    pub dropped: u64,
}

pub struct Foresight {
    jobs: Mutex<Option<SyncSender<Job>>>,
    signatures: Arc<SignatureMemo>,
    table: Arc<(Mutex<Table>, Condvar)>,
    hits: Mutex<Hits>,
    elapsed: fake_dns::Elapsed,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Foresight {
    /// Start the thread; keys are read from `zones` at the scenario time `elapsed` gives when
    /// a message is handed over.
    pub fn start(zones: Arc<FaultyZones>, elapsed: fake_dns::Elapsed) -> anyhow::Result<Self> {
        let signatures = Arc::new(SignatureMemo::new());
        let table = Arc::new((Mutex::new(Table::default()), Condvar::new()));
        let (tx, rx) = std::sync::mpsc::sync_channel(WAITING_MAX);
        let foreseer = Foreseer::new(signatures.clone())?;
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        let thread = {
            let table = table.clone();
            std::thread::Builder::new()
                .name("foresight".into())
                .spawn(move || {
                    let _closed = Closed(&table);
                    work(rx, &runtime, &foreseer, &zones, &table)
                })?
        };
        Ok(Foresight {
            jobs: Mutex::new(Some(tx)),
            signatures,
            table,
            hits: Mutex::default(),
            elapsed,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The memo of signatures verified ahead (for the receivers' verifier).
    pub fn signatures(&self) -> Arc<SignatureMemo> {
        self.signatures.clone()
    }

    /// Hand over a message about to be sent; left to its receiver when the thread is behind.
    pub fn submit(&self, message: &[u8]) {
        let jobs = lock(&self.jobs);
        let Some(tx) = jobs.as_ref() else { return };
        let message: Arc<[u8]> = Arc::from(message);
        let k = key(&message);
        let mut table = lock(&self.table.0);
        if table.position(k, &message).is_some() {
            return;
        }
        let job = Job {
            message: message.clone(),
            elapsed_ms: (self.elapsed)(),
        };
        match tx.try_send(job) {
            Ok(()) => table.entries.entry(k).or_default().push(Entry {
                message,
                state: State::Queued,
            }),
            Err(_) => lock(&self.hits).dropped += 1,
        }
    }

    /// What was done ahead for `message`: its content as read there (its signatures are
    /// then in the memo). None: the receiver does the work, because the message was not
    /// handed over or the thread had not started on it (it will not now). When the thread is
    /// on it, this waits for it.
    pub fn settle(&self, message: &[u8]) -> Option<ContentRead> {
        let k = key(message);
        let (table, done) = &*self.table;
        let mut t = lock(table);
        let mut waited = false;
        let (read, outcome) = loop {
            let Some(at) = t.position(k, message) else {
                break (None, Outcome::Inline);
            };
            match &t.entries[&k][at].state {
                State::Running if !t.closed => {
                    waited = true;
                    t = done.wait(t).unwrap_or_else(|p| p.into_inner());
                }
                State::Done(_) => {
                    let State::Done(read) = t.remove(k, at).state else {
                        unreachable!("matched as done")
                    };
                    break (Some(read), Outcome::Ahead);
                }
                State::Queued | State::Running => {
                    t.remove(k, at);
                    break (None, Outcome::TakenBack);
                }
            }
        };
        drop(t);
        let mut hits = lock(&self.hits);
        match outcome {
            Outcome::Inline => hits.inline += 1,
            Outcome::TakenBack => hits.taken_back += 1,
            Outcome::Ahead if waited => hits.waited += 1,
            Outcome::Ahead => hits.ready += 1,
        }
        read
    }

    pub fn hits(&self) -> Hits {
        *lock(&self.hits)
    }

    /// Stop the thread (what it holds is dropped).
    pub fn stop(&self) {
        lock(&self.jobs).take();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Foresight {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Outcome {
    Ahead,
    TakenBack,
    Inline,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the table closed when the thread ends, however it ends, so no receiver waits on it.
struct Closed<'a>(&'a (Mutex<Table>, Condvar));

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        lock(&self.0.0).closed = true;
        self.0.1.notify_all();
    }
}

fn work(
    rx: Receiver<Job>,
    runtime: &tokio::runtime::Runtime,
    foreseer: &Foreseer,
    zones: &FaultyZones,
    table: &(Mutex<Table>, Condvar),
) {
    for job in rx {
        let k = key(&job.message);
        {
            // Start on it unless its receiver took it back.
            let mut t = lock(&table.0);
            let Some(at) = t.position(k, &job.message) else {
                continue;
            };
            t.entries.get_mut(&k).expect("the entry found")[at].state = State::Running;
        }
        let txt = |name: &str| match zones.resolve(name, RecordType::TXT, job.elapsed_ms) {
            Resolution::Answer(records) => records
                .into_iter()
                .filter_map(|r| match r {
                    RecordData::Txt(t) => Some(t),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        runtime.block_on(foreseer.verify(&job.message, txt));
        let read = ContentRead::of(&job.message);
        let mut t = lock(&table.0);
        if let Some(at) = t.position(k, &job.message) {
            t.entries.get_mut(&k).expect("the entry found")[at].state = State::Done(read);
            t.done.push_back(k);
        }
        // Forget the oldest answers nobody took (messages refused before their DATA).
        while t.done.len() > KEPT {
            let Some(old) = t.done.pop_front() else { break };
            if let Some(at) = t
                .entries
                .get(&old)
                .and_then(|l| l.iter().position(|e| matches!(e.state, State::Done(_))))
            {
                t.remove(old, at);
            }
        }
        drop(t);
        table.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Zones;
    use fake_dns::{InProcess, ZoneSet};
    use mailsim_mailbox::auth::Verifier;
    use mailsim_mta::dkim::Signer;

    impl Foresight {
        /// Whether the thread is done with `message` (a test waits for it).
        fn is_done(&self, message: &[u8]) -> bool {
            let t = lock(&self.table.0);
            t.position(key(message), message)
                .is_some_and(|at| matches!(t.entries[&key(message)][at].state, State::Done(_)))
        }
    }

    const MESSAGE: &[u8] = b"From: news@s.test\r\nTo: bob@r.test\r\nSubject: hi\r\n\
        Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <1@s.test>\r\n\
        List-Unsubscribe: <https://s.test/u/1>\r\nMIME-Version: 1.0\r\n\
        Content-Type: text/html; charset=utf-8\r\n\r\n\
        <html><body><p>Act now!</p><img src=\"https://s.test/o/1.png\">\
        <a href=\"https://s.test/c/1\">more</a></body></html>\r\n";

    /// Answers done ahead are the answers a receiver gets doing the work itself: for a good
    /// signature (taken from the memo), a changed header, a signature by a key the zones do
    /// not publish and a key that is changed in DNS after the message was handed over.
    #[tokio::test]
    async fn answers_done_ahead_are_the_answers_done_at_receipt() {
        let key = crate::keys::ed25519_from_seed(3).unwrap();
        let other = crate::keys::ed25519_from_seed(4).unwrap();
        let mut set = ZoneSet::new();
        set.add(
            "sel._domainkey.s.test",
            RecordData::Txt(key.dns_txt.clone()),
        );
        set.add(
            "s.test",
            RecordData::Txt("v=spf1 ip4:192.0.2.1 -all".into()),
        );
        // The same selector's key replaced by another one 60 s into the run.
        let faults = vec![fake_dns::Fault {
            name: "new._domainkey.s.test".into(),
            from_ms: 60_000,
            until_ms: None,
            kind: fake_dns::FaultKind::Records(
                RecordType::TXT,
                vec![RecordData::Txt(other.dns_txt.clone())],
            ),
        }];
        set.add(
            "new._domainkey.s.test",
            RecordData::Txt(key.dns_txt.clone()),
        );
        let zones = Arc::new(FaultyZones::new(set, faults));
        let now = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let elapsed: fake_dns::Elapsed = {
            let now = now.clone();
            Arc::new(move || now.load(std::sync::atomic::Ordering::Relaxed))
        };
        let dns = || {
            Arc::new(Zones(Arc::new(InProcess::new(
                zones.clone(),
                elapsed.clone(),
            ))))
        };
        let foresight = Foresight::start(zones.clone(), elapsed.clone()).unwrap();
        let plain = Verifier::in_process(dns(), "r.test").unwrap();
        let with = Verifier::in_process(dns(), "r.test")
            .unwrap()
            .with_memo(foresight.signatures());

        let sign = |pkcs8: &[u8], selector: &str, message: &[u8]| {
            Signer::from_pkcs8("s.test", selector, pkcs8, true)
                .unwrap()
                .sign(message, 1_767_225_600)
                .unwrap()
        };
        let good = sign(&key.pkcs8_der, "sel", MESSAGE);
        let changed = String::from_utf8(good.clone())
            .unwrap()
            .replace("Subject: hi", "Subject: ho")
            .into_bytes();
        let wrong_key = sign(&other.pkcs8_der, "sel", MESSAGE);
        let rekeyed = sign(&key.pkcs8_der, "new", MESSAGE);
        let cases: [(&str, &[u8], &str, bool); 4] = [
            ("good", &good, "pass", true),
            ("changed", &changed, "fail", false),
            ("wrong key", &wrong_key, "fail", false),
            ("key changed after hand-over", &rekeyed, "fail", false),
        ];
        for (name, message, dkim, memo_holds) in cases {
            now.store(0, std::sync::atomic::Ordering::Relaxed);
            foresight.submit(message);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !foresight.is_done(message) {
                assert!(std::time::Instant::now() < deadline, "{name}: never done");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            // The receiver asks later: after the key's change for the last case.
            now.store(120_000, std::sync::atomic::Ordering::Relaxed);
            let (asked, taken) = foresight.signatures().asked_and_taken();
            let read = foresight.settle(message).expect("done ahead");
            let ip = "192.0.2.1".parse().unwrap();
            let ahead = with.verify(ip, "s.test", "news@s.test", message).await;
            let inline = plain.verify(ip, "s.test", "news@s.test", message).await;
            assert_eq!(ahead, inline, "{name}");
            assert_eq!(ahead.dkim, dkim, "{name}");
            let after = foresight.signatures().asked_and_taken();
            assert_eq!(after, (asked + 1, taken + u64::from(memo_holds)), "{name}");
            let here = ContentRead::of(message);
            assert_eq!((read.links, read.facts), (here.links, here.facts), "{name}");
        }
        assert_eq!(foresight.hits().ready, 4);
        // A message nobody handed over is the receiver's own work.
        assert!(foresight.settle(b"Subject: x\r\n\r\nx\r\n").is_none());
        foresight.stop();
    }
}
