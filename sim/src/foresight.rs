//! Work a virtual run's receivers will need, done ahead on another core.
//!
//! A virtual run is deterministic because everything it records happens on one runtime thread,
//! in an order fixed by virtual time. Most of a receiver's work on a message is a pure function
//! of its bytes and its envelope: verifying SPF, DKIM and DMARC and, where a provider places
//! mail, reading its content (links, content score). When the MTA is about to send a message
//! through the virtual network ([`mailsim_mta::Connector::will_send`]), and as it takes the one
//! before it for the same destination ([`mailsim_mta::Connector::looks_ahead`]: without that
//! lead the thread was on exactly the message its receiver asked for, and the runtime waited
//! for it on most messages), the message is handed to a thread that does that work. The receiver takes the answers when they are there for
//! exactly the bytes it received, waits for them when the thread is on that message, and
//! otherwise does the work itself (the thread then skips it): the same answers either way, so
//! the event log does not depend on which came first, only the wall time does.
//!
//! The verdicts are the receiver's own only when everything they depend on is the same: the
//! client's address, HELO name and reverse path, the second on the run's clock (SPF's `%{t}`),
//! and the DNS answers, which is so when the zones have no fault timeline (the thread then
//! verifies with a verifier like the fleet's). With faults, the thread only checks the DKIM
//! signatures against the keys published when the message was handed over, and remembers the
//! ones that hold ([`mailsim_mailbox::auth_memo`]): the receiver's verifier takes a pass from
//! the memo for exactly the same key record, signed headers and signature. The MTA's own
//! Ed25519 signatures are in the memo already, remembered as they were made when the zones
//! publish the key that made them ([`SignaturesAhead`]).

use crate::engage::Links;
use crate::reputation::ContentFacts;
use fake_dns::{FaultyZones, InProcess, RecordType, Resolution};
use mailsim_events::Clock;
use mailsim_mailbox::auth::{Verdicts, Verifier};
use mailsim_mailbox::auth_memo::{Foreseer, SignatureMemo};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

/// Messages waiting for the thread; more are left to their receivers.
const WAITING_MAX: usize = 1024;
/// Answers done and not taken yet that are kept (the oldest go first): messages refused
/// before their DATA leave theirs.
const KEPT: usize = 4096;
/// A larger message is left to its receiver.
const MESSAGE_MAX: usize = 1 << 20;
/// What the table may hold, counted as twice each message's size (the message and what is
/// read of it): over it, messages are left to their receivers.
const BYTES_MAX: usize = 64 << 20;

/// What a receiver reads of a message's content, once per message.
pub struct ContentRead {
    pub links: Links,
    pub facts: ContentFacts,
}

impl ContentRead {
    pub fn of(message: &[u8]) -> Self {
        let parsed = mailsim_bounce::message::parse(message);
        ContentRead {
            links: Links::of_parsed(parsed.get()),
            facts: ContentFacts::of(parsed.get()),
        }
    }
}

struct Job {
    /// The entry it is for.
    id: u64,
    message: Arc<[u8]>,
    envelope: Envelope,
    /// Scenario time when it was handed over: the DNS answers are read at it.
    elapsed_ms: u64,
}

/// What a message's verdicts depend on besides its bytes and the DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub ip: IpAddr,
    pub helo: String,
    pub mail_from: String,
    /// The run's clock, in seconds.
    pub now_s: u64,
}

/// What was done ahead for a message.
pub struct Ahead {
    /// Its content as read (when receivers read content).
    pub read: Option<ContentRead>,
    /// Its verdicts for this envelope (when the zones have no fault timeline).
    verdicts: Option<(Envelope, Verdicts)>,
    /// Its Message-ID as the receiver records it ([`crate::fleet::message_id_of`]).
    pub message_id: String,
    /// What [`mailsim_bounce::classify_message`] finds in it, for a message with the null
    /// reverse path (a delivery status report on its way to the sender's MX, whose bounce
    /// processor reads it; such a message is not verified or read ahead).
    pub classified: Option<Vec<mailsim_bounce::Classified>>,
}

impl Ahead {
    /// The verdicts done ahead, if they were done for `envelope`.
    pub fn verdicts_for(&mut self, envelope: &Envelope) -> Option<Verdicts> {
        match self.verdicts.take() {
            Some((e, v)) if &e == envelope => Some(v),
            _ => None,
        }
    }
}

/// A message handed over, and how far the thread is with it.
struct Entry {
    id: u64,
    message: Arc<[u8]>,
    state: State,
}

enum State {
    /// Not started: a receiver that comes for it takes the work back.
    Queued,
    /// Being done: a receiver that comes for it waits.
    Running,
    /// Done: what was done (its signatures that hold are in the memo).
    Done(Box<Ahead>),
}

/// The messages handed over, by [`key`] (the bytes decide: equal keys are compared whole).
#[derive(Default)]
struct Table {
    entries: HashMap<u64, Vec<Entry>>,
    /// Entries (key, id) in the order they were done, for forgetting the oldest answers not
    /// taken (an entry taken since is skipped).
    done: VecDeque<(u64, u64)>,
    /// Done entries not taken yet.
    untaken: usize,
    /// Twice the bytes of the messages held.
    bytes: usize,
    next_id: u64,
    /// The thread ended (nothing waiting will be done).
    closed: bool,
    /// Receivers waiting on the condition variable (the thread wakes them only then: a wake-up
    /// is a system call).
    waiters: usize,
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
        self.bytes -= 2 * entry.message.len();
        if matches!(entry.state, State::Done(_)) {
            self.untaken -= 1;
        }
        entry
    }

    /// The entry `id` under `key`.
    fn entry(&mut self, key: u64, id: u64) -> Option<&mut Entry> {
        self.entries.get_mut(&key)?.iter_mut().find(|e| e.id == id)
    }

    /// Forget the oldest answers not taken, down to [`KEPT`].
    fn forget(&mut self) {
        while self.untaken > KEPT {
            let Some((key, id)) = self.done.pop_front() else {
                break;
            };
            let at = self.entries.get(&key).and_then(|l| {
                l.iter()
                    .position(|e| e.id == id && matches!(e.state, State::Done(_)))
            });
            if let Some(at) = at {
                self.remove(key, at);
            }
        }
        // Entries taken since they were done need no place in the queue.
        while self.done.len() > 2 * KEPT {
            self.done.pop_front();
        }
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
    /// Not handed over: the thread was too far behind or had ended, the message was too
    /// large, or the table held enough.
    pub dropped: u64,
    /// Not handed over: its receiver will refuse the recipient ([`Refusals`]).
    pub refused: u64,
}

/// Whether a receiver will surely refuse a recipient at RCPT, given the client's address, the
/// reverse path and the recipient: the work on such a message is not done ahead (most of a run
/// with greylisting and retries). A guess read from the receivers' state as the message is
/// handed over; wrong, it costs a receiver the work done inline or the thread work never
/// used, never an answer.
pub type Refusals = Arc<dyn Fn(IpAddr, &str, &str) -> bool + Send + Sync>;

pub struct Foresight {
    jobs: Mutex<Option<SyncSender<Job>>>,
    clock: Arc<dyn Clock>,
    /// The HELO name the MTA gives (the thread verifies as from it).
    helo: Mutex<String>,
    /// Tells the thread to stop without doing what waits.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Whether receivers read content (a provider places mail): else only signatures.
    read_content: Arc<std::sync::atomic::AtomicBool>,
    signatures: Arc<SignatureMemo>,
    table: Arc<(Mutex<Table>, Condvar)>,
    hits: Mutex<Hits>,
    elapsed: fake_dns::Elapsed,
    zones: Arc<FaultyZones>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    refusals: std::sync::OnceLock<Refusals>,
}

impl Foresight {
    /// Start the thread; keys are read from `zones` at the scenario time `elapsed` gives when
    /// a message is handed over.
    pub fn start(
        zones: Arc<FaultyZones>,
        elapsed: fake_dns::Elapsed,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let signatures = Arc::new(SignatureMemo::new());
        let table = Arc::new((Mutex::new(Table::default()), Condvar::new()));
        let (tx, rx) = std::sync::mpsc::sync_channel(WAITING_MAX);
        let foreseer = Foreseer::new(signatures.clone())?;
        let runtime = tokio::runtime::Builder::new_current_thread().build()?;
        // With no fault timeline the DNS answers the same at any time: whole verdicts.
        let verifier = match zones.has_faults() {
            true => None,
            false => Some(AheadVerifier::new(zones.clone(), signatures.clone())?),
        };
        let read_content = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let zones_kept = zones.clone();
        let thread = {
            let table = table.clone();
            let read_content = read_content.clone();
            let stopping = stopping.clone();
            std::thread::Builder::new()
                .name("foresight".into())
                .spawn(move || {
                    let _closed = Closed(&table);
                    let flags = Flags {
                        read_content: &read_content,
                        stopping: &stopping,
                    };
                    let doers = Doers {
                        runtime: &runtime,
                        foreseer: &foreseer,
                        verifier: verifier.as_ref(),
                        zones: &zones,
                    };
                    work(rx, doers, &table, flags)
                })?
        };
        Ok(Foresight {
            jobs: Mutex::new(Some(tx)),
            clock,
            helo: Mutex::default(),
            stopping,
            read_content,
            signatures,
            table,
            hits: Mutex::default(),
            elapsed,
            zones: zones_kept,
            thread: Mutex::new(Some(thread)),
            refusals: std::sync::OnceLock::new(),
        })
    }

    /// The HELO name the MTA gives.
    pub fn expect_helo(&self, helo: &str) {
        *lock(&self.helo) = helo.to_string();
    }

    /// Leave out the messages `refusals` says their receivers will refuse at RCPT (set once;
    /// later calls are ignored).
    pub fn expect_refusals(&self, refusals: Refusals) {
        let _ = self.refusals.set(refusals);
    }

    /// Read the content of messages too (some provider places mail by it).
    pub fn read_content(&self) {
        self.read_content
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The memo of signatures verified ahead (for the receivers' verifier).
    pub fn signatures(&self) -> Arc<SignatureMemo> {
        self.signatures.clone()
    }

    /// A witness of the MTA's Ed25519 signatures that remembers them in the memo as they are
    /// made; the key records are read at the signatures' second, scenario time counting from
    /// `start_ms`.
    pub fn signatures_ahead(&self, start_ms: u64) -> SignaturesAhead {
        SignaturesAhead {
            memo: self.signatures.clone(),
            zones: self.zones.clone(),
            start_ms,
        }
    }

    /// Whether the receiver of `rcpt` will surely refuse it from `ip` with the reverse path
    /// `mail_from` ([`Foresight::expect_refusals`]): its message is then not handed over.
    pub fn refuses(&self, ip: IpAddr, mail_from: &str, rcpt: &str) -> bool {
        let refused = self.refusals.get().is_some_and(|r| r(ip, mail_from, rcpt));
        if refused {
            lock(&self.hits).refused += 1;
        }
        refused
    }

    /// Hand over a message about to be sent from `ip` with the reverse path `mail_from`
    /// (one [`Foresight::refuses`] did not leave out); left to its receiver when the thread
    /// is behind.
    pub fn submit(&self, ip: IpAddr, mail_from: &str, message: &[u8]) {
        let jobs = lock(&self.jobs);
        let Some(tx) = jobs.as_ref() else { return };
        let mut table = lock(&self.table.0);
        let k = key(message);
        if table.position(k, message).is_some() {
            return;
        }
        if message.len() > MESSAGE_MAX || table.bytes + 2 * message.len() > BYTES_MAX {
            lock(&self.hits).dropped += 1;
            return;
        }
        let message: Arc<[u8]> = Arc::from(message);
        let id = table.next_id;
        let job = Job {
            id,
            message: message.clone(),
            envelope: Envelope {
                ip,
                helo: lock(&self.helo).clone(),
                mail_from: mail_from.to_string(),
                now_s: self.clock.now_ms() / 1000,
            },
            elapsed_ms: (self.elapsed)(),
        };
        match tx.try_send(job) {
            Ok(()) => {
                table.next_id += 1;
                table.bytes += 2 * message.len();
                table.entries.entry(k).or_default().push(Entry {
                    id,
                    message,
                    state: State::Queued,
                });
            }
            Err(_) => lock(&self.hits).dropped += 1,
        }
    }

    /// What was done ahead for `message` (its signatures that hold are then in the memo).
    /// None: the receiver does the work, because the message was not handed over or the
    /// thread had not started on it (it will not now). When the thread is on it, this waits
    /// for it.
    pub fn settle(&self, message: &[u8]) -> Option<Ahead> {
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
                    t.waiters += 1;
                    t = done.wait(t).unwrap_or_else(|p| p.into_inner());
                    t.waiters -= 1;
                }
                State::Done(_) => {
                    let State::Done(ahead) = t.remove(k, at).state else {
                        unreachable!("matched as done")
                    };
                    break (Some(*ahead), Outcome::Ahead);
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

    /// Stop the thread (what waits for it is dropped undone).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        lock(&self.jobs).take();
        if let Some(t) = lock(&self.thread).take()
            && t.join().is_err()
        {
            tracing::warn!("the thread doing receivers' work ahead panicked (receivers did it)");
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

/// What the thread is told while it runs.
struct Flags<'a> {
    read_content: &'a std::sync::atomic::AtomicBool,
    stopping: &'a std::sync::atomic::AtomicBool,
}

/// What the thread works with.
struct Doers<'a> {
    runtime: &'a tokio::runtime::Runtime,
    foreseer: &'a Foreseer,
    /// With no fault timeline: a verifier like the fleet's.
    verifier: Option<&'a AheadVerifier>,
    zones: &'a FaultyZones,
}

/// A verifier answered from the zones at the time and on the clock a job says.
struct AheadVerifier {
    verifier: Verifier,
    elapsed_ms: Arc<AtomicU64>,
    now_ms: Arc<AtomicU64>,
}

/// A clock that reads what it is set to.
struct SetClock(Arc<AtomicU64>);

impl Clock for SetClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl AheadVerifier {
    fn new(zones: Arc<FaultyZones>, memo: Arc<SignatureMemo>) -> anyhow::Result<Self> {
        let elapsed_ms = Arc::new(AtomicU64::new(0));
        let now_ms = Arc::new(AtomicU64::new(0));
        let elapsed: fake_dns::Elapsed = {
            let e = elapsed_ms.clone();
            Arc::new(move || e.load(Ordering::Relaxed))
        };
        let dns = crate::env::Zones(Arc::new(InProcess::new(zones, elapsed)));
        let verifier = Verifier::in_process(Arc::new(dns), crate::env::VERIFIER_HOST)
            .map_err(anyhow::Error::msg)?
            .with_clock(Arc::new(SetClock(now_ms.clone())))
            .with_memo(memo);
        Ok(AheadVerifier {
            verifier,
            elapsed_ms,
            now_ms,
        })
    }

    async fn verify(&self, job: &Job) -> Verdicts {
        let e = &job.envelope;
        self.elapsed_ms.store(job.elapsed_ms, Ordering::Relaxed);
        self.now_ms.store(e.now_s * 1000, Ordering::Relaxed);
        self.verifier
            .verify(e.ip, &e.helo, &e.mail_from, &job.message)
            .await
    }
}

/// The MTA's Ed25519 signatures remembered as they are made (on the MTA's signing threads),
/// so that neither the thread ahead nor a receiver verifies them one at a time: a signature
/// made with the private half of the key the zones publish verifies under it
/// ([`SignatureMemo::vouch_ed25519`], which compares the keys and verifies the first signature
/// of each batch). What is remembered is exactly what a receiver would verify (the key record
/// the zones answer, the signed headers' hash, the signature), so verdicts are the same either
/// way; a signature made with another key, or whose key record the zones answer differently at
/// receipt, or a message altered on its way, is verified by its receiver as before. (Until
/// 2026-12-04 each was verified, in batches: 12 % of the million-message run's CPU.)
pub struct SignaturesAhead {
    memo: Arc<SignatureMemo>,
    zones: Arc<FaultyZones>,
    /// The scenario's start on the run's clock.
    start_ms: u64,
}

impl mailsim_mta::dkim::SignatureWitness for SignaturesAhead {
    fn signed(
        &self,
        domain: &str,
        selector: &str,
        public: &[u8; 32],
        made: &[mailsim_mta::dkim::Made],
        at_s: u64,
    ) {
        // The name as mail-auth asks it, and the key record the zones answer at the second
        // signed for (a receiver whose zones answer otherwise when the message arrives misses
        // the memo and verifies).
        let name = format!("{selector}._domainkey.{domain}.");
        let elapsed_ms = at_s.saturating_mul(1000).saturating_sub(self.start_ms);
        let answered = txt_texts(&self.zones, &name, elapsed_ms);
        let made: Vec<([u8; 32], &[u8])> = made
            .iter()
            .map(|m| (*m.header_hash(), m.signature()))
            .collect();
        self.memo.vouch_ed25519(&answered, public, &made);
    }
}

/// The TXT texts the zones answer for `name` at `elapsed_ms` (none for any other answer).
fn txt_texts(zones: &FaultyZones, name: &str, elapsed_ms: u64) -> Vec<String> {
    match zones.resolve(name, RecordType::TXT, elapsed_ms) {
        Resolution::Answer(records) => fake_dns::txt_texts(records),
        _ => Vec::new(),
    }
}

fn work(rx: Receiver<Job>, doers: Doers<'_>, table: &(Mutex<Table>, Condvar), flags: Flags<'_>) {
    for job in rx {
        if flags.stopping.load(Ordering::Relaxed) {
            break;
        }
        let k = key(&job.message);
        {
            // Start on it unless its receiver took it back.
            let mut t = lock(&table.0);
            match t.entry(k, job.id) {
                Some(e) if matches!(e.state, State::Queued) => e.state = State::Running,
                _ => continue,
            }
        }
        // A report for the sender's MX: its bounce processor's reading, nothing else.
        if job.envelope.mail_from.is_empty() {
            let classified = Some(mailsim_bounce::classify_message(&job.message));
            let message_id = crate::fleet::message_id_of(&job.message);
            finish(
                table,
                k,
                job.id,
                Ahead {
                    read: None,
                    verdicts: None,
                    message_id,
                    classified,
                },
            );
            continue;
        }
        let verdicts = match doers.verifier {
            Some(v) => {
                let verdicts = doers.runtime.block_on(v.verify(&job));
                Some((job.envelope.clone(), verdicts))
            }
            None => {
                let txt = |name: &str| txt_texts(doers.zones, name, job.elapsed_ms);
                doers
                    .runtime
                    .block_on(doers.foreseer.verify(&job.message, txt));
                None
            }
        };
        let read = flags
            .read_content
            .load(Ordering::Relaxed)
            .then(|| ContentRead::of(&job.message));
        let message_id = crate::fleet::message_id_of(&job.message);
        finish(
            table,
            k,
            job.id,
            Ahead {
                read,
                verdicts,
                message_id,
                classified: None,
            },
        );
    }
}

/// Record what was done ahead for job `id` (key `k`) and wake the receivers waiting.
fn finish(table: &(Mutex<Table>, Condvar), k: u64, id: u64, ahead: Ahead) {
    let mut t = lock(&table.0);
    if let Some(e) = t.entry(k, id) {
        e.state = State::Done(Box::new(ahead));
        t.untaken += 1;
        t.done.push_back((k, id));
        t.forget();
    }
    // A receiver counts itself in before it waits, under the lock: none is missed.
    let wake = t.waiters > 0;
    drop(t);
    if wake {
        table.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Zones;
    use fake_dns::{RecordData, ZoneSet};
    use mailsim_mta::dkim::Signer;

    impl Foresight {
        /// Whether the thread is done with `message` (a test waits for it).
        fn is_done(&self, message: &[u8]) -> bool {
            let t = lock(&self.table.0);
            t.position(key(message), message)
                .is_some_and(|at| matches!(t.entries[&key(message)][at].state, State::Done(_)))
        }
    }

    /// s.test's zone: its DKIM key at sel._domainkey and SPF for 192.0.2.1.
    fn signer_zone(key: &crate::keys::DkimKeyPair) -> ZoneSet {
        let mut set = ZoneSet::new();
        set.add(
            "sel._domainkey.s.test",
            RecordData::Txt(key.dns_txt.clone()),
        );
        set.add(
            "s.test",
            RecordData::Txt("v=spf1 ip4:192.0.2.1 -all".into()),
        );
        set
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
        let mut set = signer_zone(&key);
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
        let clock: Arc<dyn Clock> = Arc::new(SetClock(Arc::new(AtomicU64::new(0))));
        let foresight = Foresight::start(zones.clone(), elapsed.clone(), clock).unwrap();
        foresight.read_content();
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
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for (name, message, dkim, memo_holds) in cases {
            now.store(0, std::sync::atomic::Ordering::Relaxed);
            foresight.submit(ip, "news@s.test", message);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !foresight.is_done(message) {
                assert!(std::time::Instant::now() < deadline, "{name}: never done");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            // The receiver asks later: after the key's change for the last case.
            now.store(120_000, std::sync::atomic::Ordering::Relaxed);
            let (asked, taken) = foresight.signatures().asked_and_taken();
            let mut ahead = foresight.settle(message).expect("done ahead");
            // With a fault timeline, no verdicts are done ahead: the signatures are.
            assert!(ahead.verdicts.take().is_none(), "{name}");
            assert_eq!(
                ahead.message_id,
                crate::fleet::message_id_of(message),
                "{name}"
            );
            let read = ahead.read.expect("content read");
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

    /// Signatures remembered as the MTA makes them are taken from the memo by the receivers,
    /// with the verdicts a receiver gets verifying each itself; a message whose signature was
    /// altered on its way misses the memo and fails at receipt, and nothing is remembered for a
    /// key the zones do not publish first.
    #[tokio::test]
    async fn signatures_remembered_as_made_are_the_receivers_answers() {
        use mailsim_mta::dkim::SignatureWitness;
        let key = crate::keys::ed25519_from_seed(3).unwrap();
        let other = crate::keys::ed25519_from_seed(4).unwrap();
        let zones = Arc::new(FaultyZones::new(signer_zone(&key), Vec::new()));
        let elapsed: fake_dns::Elapsed = Arc::new(|| 0);
        let clock: Arc<dyn Clock> = Arc::new(SetClock(Arc::new(AtomicU64::new(0))));
        let foresight = Foresight::start(zones.clone(), elapsed.clone(), clock).unwrap();
        let dns = Arc::new(Zones(Arc::new(InProcess::new(zones.clone(), elapsed))));
        let plain = Verifier::in_process(dns.clone(), "r.test").unwrap();
        let with = Verifier::in_process(dns, "r.test")
            .unwrap()
            .with_memo(foresight.signatures());
        let witness = foresight.signatures_ahead(0);
        let witness = |signer: &Signer, selector: &str, made: &[mailsim_mta::dkim::Made]| {
            let public = signer.ed25519_public().expect("an Ed25519 signer");
            witness.signed(signer.domain(), selector, &public, made, 0)
        };
        let signer = Signer::from_pkcs8("s.test", "sel", &key.pkcs8_der, true).unwrap();
        let message = |i: usize| {
            String::from_utf8(MESSAGE.to_vec())
                .unwrap()
                .replace("<1@s.test>", &format!("<{i}@s.test>"))
                .into_bytes()
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        // Verify `signed` at receipt with and without the memo: the same verdicts, and how
        // many the memo answered.
        let receive = async |signed: &[Vec<u8>]| {
            let (_, before) = foresight.signatures().asked_and_taken();
            let mut dkim = Vec::new();
            for m in signed {
                let ahead = with.verify(ip, "s.test", "news@s.test", m).await;
                assert_eq!(ahead, plain.verify(ip, "s.test", "news@s.test", m).await);
                dkim.push(ahead.dkim);
            }
            (dkim, foresight.signatures().asked_and_taken().1 - before)
        };
        let sign = |range: std::ops::Range<usize>| {
            let (mut signed, mut made) = (Vec::new(), Vec::new());
            for i in range {
                let (m, w) = signer
                    .sign_witnessed(&message(i), 1_767_225_600, true)
                    .unwrap();
                signed.push(m);
                made.push(w.expect("an Ed25519 signature as made"));
            }
            (signed, made)
        };
        // 300 good signatures: all taken from the memo.
        let (signed, made) = sign(0..300);
        witness(&signer, "sel", &made);
        let (dkim, taken) = receive(&signed).await;
        assert!(dkim.iter().all(|d| d == "pass"), "{dkim:?}");
        assert_eq!(taken, 300);

        // One signature of a batch of 20 altered on its way: the other 19 taken from the memo,
        // the altered one verified at receipt, and it fails.
        let (mut signed, made) = sign(300..320);
        let mut altered = made[7].signature().to_vec();
        altered[3] ^= 1;
        let b = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &altered);
        // The b= value, folded over lines, ends at the field's last ";".
        let text = String::from_utf8(signed[7].clone()).unwrap();
        let (head, rest) = text.split_once("; b=").unwrap();
        let end = rest.find(';').unwrap();
        let unfolded: String = rest[..end].split_whitespace().collect();
        assert_eq!(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, unfolded)
                .unwrap()
                .len(),
            64
        );
        signed[7] = format!("{head}; b={b}{}", &rest[end..]).into_bytes();
        assert!(signed[7].ends_with(&message(307)));
        witness(&signer, "sel", &made);
        let (dkim, taken) = receive(&signed).await;
        assert_eq!(taken, 19);
        assert_eq!(dkim.iter().filter(|d| *d == "pass").count(), 19, "{dkim:?}");
        assert_eq!(dkim[7], "fail");

        // Signed with a key the zones do not publish: nothing is remembered, and receivers
        // fail them.
        let wrong = Signer::from_pkcs8("s.test", "sel", &other.pkcs8_der, true).unwrap();
        let (signed, made): (Vec<_>, Vec<_>) = (400..410)
            .map(|i| {
                let (m, w) = wrong
                    .sign_witnessed(&message(i), 1_767_225_600, true)
                    .unwrap();
                (m, w.unwrap())
            })
            .unzip();
        witness(&wrong, "sel", &made);
        let (dkim, taken) = receive(&signed).await;
        assert_eq!(taken, 0);
        assert!(dkim.iter().all(|d| d == "fail"), "{dkim:?}");

        // Signed under a selector the zones publish no key for: nothing is remembered.
        let (signed, made) = sign(500..510);
        witness(&signer, "none", &made);
        assert_eq!(receive(&signed).await.1, 0);
        // An RSA signer makes none to tell.
        let rsa = crate::keys::rsa_from_seed(5).unwrap();
        let rsa = Signer::from_pkcs8("s.test", "sel", &rsa.pkcs8_der, false).unwrap();
        assert!(rsa.sign_witnessed(MESSAGE, 1, true).unwrap().1.is_none());
        foresight.stop();
    }

    /// Without a fault timeline the verdicts are done ahead, and are the receiver's own only
    /// for the envelope they were done for.
    #[tokio::test]
    async fn verdicts_done_ahead_are_the_receivers_for_the_same_envelope() {
        let key = crate::keys::ed25519_from_seed(3).unwrap();
        let mut set = signer_zone(&key);
        set.add(
            "_dmarc.s.test",
            RecordData::Txt("v=DMARC1; p=reject".into()),
        );
        let zones = Arc::new(FaultyZones::new(set, Vec::new()));
        let elapsed: fake_dns::Elapsed = Arc::new(|| 0);
        let now = Arc::new(AtomicU64::new(1_767_225_600_000));
        let clock: Arc<dyn Clock> = Arc::new(SetClock(now.clone()));
        let foresight = Foresight::start(zones.clone(), elapsed.clone(), clock.clone()).unwrap();
        foresight.expect_helo("mta.s.test");
        let dns = Arc::new(Zones(Arc::new(InProcess::new(zones.clone(), elapsed))));
        let plain = Verifier::in_process(dns, "fleet.mailsim.test")
            .unwrap()
            .with_clock(clock);
        let good = Signer::from_pkcs8("s.test", "sel", &key.pkcs8_der, true)
            .unwrap()
            .sign(MESSAGE, 1_767_225_600)
            .unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let envelope = |ip: IpAddr, from: &str| Envelope {
            ip,
            helo: "mta.s.test".into(),
            mail_from: from.into(),
            now_s: 1_767_225_600,
        };
        for (name, at, from) in [
            ("the same envelope", ip, "news@s.test"),
            (
                "another address",
                "192.0.2.9".parse().unwrap(),
                "news@s.test",
            ),
            ("another reverse path", ip, "other@x.test"),
        ] {
            foresight.submit(ip, "news@s.test", &good);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !foresight.is_done(&good) {
                assert!(std::time::Instant::now() < deadline, "never done");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let mut ahead = foresight.settle(&good).expect("done ahead");
            assert!(ahead.read.is_none(), "content read though no one asked");
            let inline = plain.verify(at, "mta.s.test", from, &good).await;
            match ahead.verdicts_for(&envelope(at, from)) {
                Some(v) => {
                    assert_eq!(name, "the same envelope");
                    assert_eq!(v, inline);
                    assert_eq!((v.spf.as_str(), v.dkim.as_str()), ("pass", "pass"));
                }
                None => assert_ne!(name, "the same envelope"),
            }
        }
        // A second later the clock (SPF's %{t}) may differ: not the receiver's own.
        foresight.submit(ip, "news@s.test", &good);
        while !foresight.is_done(&good) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut later = envelope(ip, "news@s.test");
        later.now_s += 1;
        assert!(
            foresight
                .settle(&good)
                .unwrap()
                .verdicts_for(&later)
                .is_none()
        );
        foresight.stop();
    }

    /// A message with the null reverse path (a delivery status report for the sender's MX) is
    /// classified ahead, as its bounce processor would classify it, and not verified or read.
    #[test]
    fn a_report_is_classified_ahead_as_its_reader_would() {
        let zones = Arc::new(FaultyZones::new(ZoneSet::new(), Vec::new()));
        let elapsed: fake_dns::Elapsed = Arc::new(|| 0);
        let clock: Arc<dyn Clock> = Arc::new(SetClock(Arc::new(AtomicU64::new(0))));
        let foresight = Foresight::start(zones, elapsed, clock).unwrap();
        foresight.read_content();
        let dsn = b"From: MAILER-DAEMON@mta.s.test\r\nTo: bounces+7-bob=x.test@s.test\r\n\
Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mta.s.test\r\n\r\n\
Final-Recipient: rfc822; bob@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <bob@x.test>: user unknown\r\n\r\n--b--\r\n";
        foresight.submit("192.0.2.1".parse().unwrap(), "", dsn);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !foresight.is_done(dsn) {
            assert!(std::time::Instant::now() < deadline, "never done");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let ahead = foresight.settle(dsn).expect("done ahead");
        let classified = ahead.classified.expect("classified ahead");
        assert_eq!(classified, mailsim_bounce::classify_message(dsn));
        assert_eq!(classified[0].recipient, "bob@x.test");
        assert_eq!(classified[0].reason, "userunknown");
        assert!(ahead.read.is_none() && ahead.verdicts.is_none());
        foresight.stop();
    }
}
