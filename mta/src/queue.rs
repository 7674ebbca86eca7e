//! The queue and retry scheduler, free of I/O and clocks: callers pass `now_ms` in and get
//! deadlines back ("next due at T"); the shell decides how to wait.

use crate::spool::SpoolRef;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

/// Retry schedule; defaults like Postfix (300 s minimum, doubling, 4000 s maximum, 5 days).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retry_interval_s_min: u64,
    pub retry_interval_s_max: u64,
    pub lifetime_s: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_interval_s_min: 300,
            retry_interval_s_max: 4000,
            lifetime_s: 5 * 86_400,
        }
    }
}

impl RetryPolicy {
    /// When to try again after `attempts` failed attempts, or `None` when the message has
    /// reached its lifetime (expire it now). Like Postfix, a message younger than its lifetime
    /// is always tried again: it expires at the first failure at or after the lifetime.
    pub fn next_retry_ms(&self, attempts: u32, injected_ms: u64, now_ms: u64) -> Option<u64> {
        let shift = attempts.saturating_sub(1).min(32);
        let delay_s = self
            .retry_interval_s_min
            .saturating_mul(1u64 << shift)
            .min(self.retry_interval_s_max.max(self.retry_interval_s_min));
        let due = now_ms.saturating_add(delay_s.saturating_mul(1000));
        let end = injected_ms.saturating_add(self.lifetime_s.saturating_mul(1000));
        (now_ms < end).then_some(due)
    }
}

/// Which traffic a message belongs to: transactional mail (password resets, receipts) is
/// taken before bulk mail and has connections of its own, when the MTA runs with lanes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    #[default]
    Bulk,
    Transactional,
}

impl Lane {
    pub fn is_bulk(&self) -> bool {
        *self == Lane::Bulk
    }

    /// `bulk` or `transactional` (any case).
    pub fn parse(word: &str) -> Option<Lane> {
        match word.trim().to_ascii_lowercase().as_str() {
            "bulk" => Some(Lane::Bulk),
            "transactional" => Some(Lane::Transactional),
            _ => None,
        }
    }
}

/// One queued (message, recipient).
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub id: u64,
    pub message_id: String,
    pub from: String,
    pub rcpt: String,
    pub domain: String,
    pub spool: SpoolRef,
    pub injected_ms: u64,
    pub attempts: u32,
    pub lane: Lane,
}

#[derive(Default)]
pub struct Queue {
    /// Boxed: a million queued entries then cost the map 16 bytes a slot, not the entry's
    /// size a slot (a hash table keeps about twice as many slots as entries, all touched).
    /// foldhash: every take and look-ahead hashes an id, and SipHash costs more than the probe.
    entries: HashMap<u64, Box<QueueEntry>, foldhash::fast::RandomState>,
    ready: BTreeMap<String, Ready>,
    /// How many places `ready` holds, every domain's.
    ready_places: usize,
    waiting: BinaryHeap<Reverse<(u64, u64)>>,
    holds: HashMap<String, u64, foldhash::fast::RandomState>,
    /// Keep transactional entries apart and take them first (else one FIFO per domain).
    lanes: bool,
}

/// A destination's ready entries: transactional ones (with lanes) and the rest.
#[derive(Default)]
struct Ready {
    transactional: VecDeque<u64>,
    bulk: VecDeque<u64>,
}

impl Ready {
    fn len(&self) -> usize {
        self.transactional.len() + self.bulk.len()
    }

    /// The list an entry in `lane` goes on (its lane's, with lanes).
    fn list(&mut self, lanes: bool, lane: Lane) -> &mut VecDeque<u64> {
        if lanes && lane == Lane::Transactional {
            &mut self.transactional
        } else {
            &mut self.bulk
        }
    }
}

impl Queue {
    pub fn new() -> Self {
        Self::default()
    }

    /// A queue that takes transactional entries before bulk ones.
    pub fn with_lanes() -> Self {
        Queue {
            lanes: true,
            ..Self::default()
        }
    }

    /// Put `id` on its domain's ready list (its lane's, with lanes).
    fn make_ready(&mut self, domain: &str, id: u64, lane: Lane) {
        make_ready_in(&mut self.ready, self.lanes, domain, id, lane);
        self.ready_places += 1;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: u64) -> Option<&QueueEntry> {
        self.entries.get(&id).map(|e| &**e)
    }

    /// Add a new entry, ready now.
    pub fn insert(&mut self, entry: QueueEntry) {
        self.make_ready(&entry.domain, entry.id, entry.lane);
        self.entries.insert(entry.id, Box::new(entry));
    }

    /// Add an entry that waits until `due_ms` (a deferred message recovered after a restart).
    pub fn insert_waiting(&mut self, entry: QueueEntry, due_ms: u64) {
        self.waiting.push(Reverse((due_ms, entry.id)));
        self.entries.insert(entry.id, Box::new(entry));
    }

    /// Move every entry due by `now_ms` to its domain's ready list.
    pub fn promote_due(&mut self, now_ms: u64) {
        while let Some(&Reverse((due, id))) = self.waiting.peek() {
            if due > now_ms {
                break;
            }
            self.waiting.pop();
            if let Some(e) = self.entries.get(&id) {
                make_ready_in(&mut self.ready, self.lanes, &e.domain, id, e.lane);
                self.ready_places += 1;
            }
        }
        self.holds.retain(|_, until| *until > now_ms);
    }

    /// The earliest time anything waiting becomes due (or a hold lifts).
    pub fn next_due_ms(&self) -> Option<u64> {
        let waiting = self.waiting.peek().map(|Reverse((due, _))| *due);
        let hold = self.holds.values().min().copied();
        match (waiting, hold) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Domains with ready entries that are not on hold, with how many are ready.
    pub fn ready_domains(&self) -> impl Iterator<Item = (&str, usize)> {
        self.ready
            .iter()
            .filter(|(d, q)| q.len() > 0 && !self.holds.contains_key(d.as_str()))
            .map(|(d, q)| (d.as_str(), q.len()))
    }

    /// How many places the ready lists hold, every domain's, a held one's too (an entry
    /// removed while ready keeps its place until a take skips it).
    pub fn ready_places(&self) -> usize {
        self.ready_places
    }

    /// How many transactional entries of `domain` are ready (0 without lanes or on hold).
    pub fn ready_transactional(&self, domain: &str) -> usize {
        if self.holds.contains_key(domain) {
            return 0;
        }
        self.ready.get(domain).map_or(0, |r| r.transactional.len())
    }

    /// Take the next ready entry of `domain` (unless the domain is on hold): a transactional
    /// one first; with `only_transactional`, no other.
    pub fn take_ready(&mut self, domain: &str, only_transactional: bool) -> Option<QueueEntry> {
        if self.holds.contains_key(domain) {
            return None;
        }
        let r = self.ready.get_mut(domain)?;
        while let Some(id) = r.transactional.pop_front() {
            self.ready_places -= 1;
            if let Some(e) = self.entries.get(&id) {
                return Some(QueueEntry::clone(e));
            }
        }
        if only_transactional {
            return None;
        }
        while let Some(id) = r.bulk.pop_front() {
            self.ready_places -= 1;
            if let Some(e) = self.entries.get(&id) {
                return Some(QueueEntry::clone(e));
            }
        }
        None
    }

    /// The entries [`Queue::take_ready`] would give next (at most `n`), left where they are.
    pub fn peek_ready(
        &self,
        domain: &str,
        only_transactional: bool,
        n: usize,
    ) -> impl Iterator<Item = &QueueEntry> {
        let r = self
            .ready
            .get(domain)
            .filter(|_| !self.holds.contains_key(domain));
        let transactional = r.into_iter().flat_map(|r| r.transactional.iter());
        let bulk = r
            .into_iter()
            .flat_map(|r| r.bulk.iter())
            .take(if only_transactional { 0 } else { usize::MAX });
        transactional
            .chain(bulk)
            .filter_map(|id| self.entries.get(id).map(|e| &**e))
            .take(n)
    }

    /// Give back an entry [`Queue::take_ready`] gave that was not tried (its connection
    /// failed before its transaction began): first on its ready list again.
    pub fn put_back(&mut self, entry: &QueueEntry) {
        if !self.entries.contains_key(&entry.id) {
            return;
        }
        self.ready
            .entry(entry.domain.clone())
            .or_default()
            .list(self.lanes, entry.lane)
            .push_front(entry.id);
        self.ready_places += 1;
    }

    /// Schedule another attempt at `due_ms`, recording the attempt count.
    pub fn defer(&mut self, id: u64, attempts: u32, due_ms: u64) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.attempts = attempts;
            self.waiting.push(Reverse((due_ms, id)));
        }
    }

    /// Hold a whole destination until `until_ms` (after a 421 or a rate-limit reply).
    pub fn hold_domain(&mut self, domain: &str, until_ms: u64) {
        let h = self.holds.entry(domain.to_string()).or_insert(until_ms);
        *h = (*h).max(until_ms);
    }

    /// Remove a final entry.
    pub fn complete(&mut self, id: u64) -> Option<QueueEntry> {
        self.entries.remove(&id).map(|e| *e)
    }
}

/// [`Queue::make_ready`] on the queue's ready map (the caller may hold an entry meanwhile).
fn make_ready_in(
    ready: &mut BTreeMap<String, Ready>,
    lanes: bool,
    domain: &str,
    id: u64,
    lane: Lane,
) {
    let ready = match ready.get_mut(domain) {
        Some(r) => r,
        None => ready.entry(domain.to_string()).or_default(),
    };
    ready.list(lanes, lane).push_back(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, domain: &str) -> QueueEntry {
        QueueEntry {
            id,
            message_id: format!("<{id}@t>"),
            from: "a@s.test".into(),
            rcpt: format!("u{id}@{domain}"),
            domain: domain.into(),
            spool: SpoolRef {
                segment: 0,
                offset: 0,
                len: 1,
            },
            injected_ms: 0,
            attempts: 0,
            lane: Lane::Bulk,
        }
    }

    #[test]
    fn retry_policy_doubles_caps_and_expires() {
        let p = RetryPolicy::default();
        assert_eq!(p.next_retry_ms(1, 0, 0), Some(300_000));
        assert_eq!(p.next_retry_ms(2, 0, 0), Some(600_000));
        assert_eq!(
            p.next_retry_ms(5, 0, 0),
            Some(4_000_000),
            "capped at the maximum"
        );
        let near_end = 5 * 86_400_000 - 1000;
        assert_eq!(
            p.next_retry_ms(9, 0, near_end),
            Some(near_end + 4_000_000),
            "still young: one more try, past the lifetime"
        );
        assert_eq!(
            p.next_retry_ms(10, 0, 5 * 86_400_000),
            None,
            "at the lifetime: expire"
        );
    }

    /// The running count of ready places is what the lists hold, whatever adds or takes
    /// them: new entries, entries due again, takes (a lane's, with lanes), places whose entry
    /// completed while ready (skipped by a take), a held domain's.
    #[test]
    fn the_ready_places_counted_are_the_places_listed() {
        let listed = |q: &Queue| q.ready.values().map(Ready::len).sum::<usize>();
        let mut q = Queue::with_lanes();
        for id in 1..=6 {
            let mut e = entry(id, if id % 2 == 0 { "a.test" } else { "b.test" });
            if id == 5 {
                e.lane = Lane::Transactional;
            }
            q.insert(e);
        }
        assert_eq!((q.ready_places(), listed(&q)), (6, 6));
        assert_eq!(q.take_ready("b.test", true).unwrap().id, 5);
        q.complete(1);
        q.defer(5, 1, 100);
        assert_eq!(q.take_ready("b.test", false).unwrap().id, 3, "1 skipped");
        assert_eq!((q.ready_places(), listed(&q)), (3, 3));
        q.hold_domain("a.test", 200);
        q.promote_due(100);
        assert_eq!((q.ready_places(), listed(&q)), (4, 4));
        assert!(
            q.take_ready("a.test", false).is_none(),
            "held, still counted"
        );
        assert_eq!(q.ready_places(), 4);
        q.promote_due(200);
        while q.take_ready("a.test", false).is_some() {}
        while q.take_ready("b.test", false).is_some() {}
        assert_eq!((q.ready_places(), listed(&q)), (0, 0));
    }

    /// An entry given back untried is the next taken, in its lane, and counted ready again;
    /// one completed meanwhile is not given back.
    #[test]
    fn an_entry_put_back_is_taken_next() {
        let mut q = Queue::with_lanes();
        for id in 1..=3 {
            q.insert(entry(id, "a.test"));
        }
        let mut t = entry(4, "a.test");
        t.lane = Lane::Transactional;
        q.insert(t);
        let first = q.take_ready("a.test", false).unwrap();
        let second = q.take_ready("a.test", false).unwrap();
        assert_eq!((first.id, second.id, q.ready_places()), (4, 1, 2));
        q.put_back(&second);
        q.put_back(&first);
        assert_eq!(q.ready_places(), 4);
        assert_eq!(q.take_ready("a.test", true).unwrap().id, 4);
        assert_eq!(q.take_ready("a.test", false).unwrap().id, 1);
        let again = q.take_ready("a.test", false).unwrap();
        q.complete(again.id);
        q.put_back(&again);
        assert_eq!(q.ready_places(), 1);
        assert_eq!(q.take_ready("a.test", false).unwrap().id, 3);
    }

    #[test]
    fn deferred_entries_come_back_when_due_and_holds_block_a_domain() {
        let mut q = Queue::new();
        q.insert(entry(1, "a.test"));
        q.insert(entry(2, "a.test"));
        let e = q.take_ready("a.test", false).unwrap();
        assert_eq!(e.id, 1);
        q.defer(1, 1, 1000);
        assert_eq!(q.next_due_ms(), Some(1000));
        q.promote_due(999);
        assert_eq!(q.take_ready("a.test", false).unwrap().id, 2);
        assert!(q.take_ready("a.test", false).is_none());
        q.hold_domain("a.test", 5000);
        q.promote_due(1000);
        assert!(q.take_ready("a.test", false).is_none(), "on hold");
        assert_eq!(q.ready_domains().count(), 0);
        q.promote_due(5000);
        assert_eq!(q.take_ready("a.test", false).unwrap().id, 1);
        q.complete(1);
        q.complete(2);
        assert!(q.is_empty());
    }

    /// What a peek shows is what the takes then give, in order; a peek takes nothing, and
    /// shows nothing that a take would not give (a held domain, bulk for a transactional
    /// session, an entry completed meanwhile).
    #[test]
    fn a_peek_shows_the_next_takes_and_leaves_them() {
        let mut q = Queue::with_lanes();
        for id in 1..=4 {
            q.insert(entry(id, "a.test"));
        }
        let mut t = entry(5, "a.test");
        t.lane = Lane::Transactional;
        q.insert(t);
        let ids = |q: &Queue, only_t, n| -> Vec<u64> {
            q.peek_ready("a.test", only_t, n).map(|e| e.id).collect()
        };
        assert_eq!(ids(&q, false, 3), [5, 1, 2]);
        assert_eq!(ids(&q, false, 3), [5, 1, 2], "nothing taken");
        assert_eq!(ids(&q, true, 3), [5]);
        q.complete(1);
        assert_eq!(ids(&q, false, 2), [5, 2], "a completed entry is skipped");
        assert_eq!(q.take_ready("a.test", false).unwrap().id, 5);
        assert_eq!(q.take_ready("a.test", false).unwrap().id, 2);
        assert_eq!(ids(&q, false, 9), [3, 4]);
        assert!(ids(&q, true, 9).is_empty());
        assert!(q.peek_ready("b.test", false, 9).next().is_none());
        q.hold_domain("a.test", 5000);
        assert!(ids(&q, false, 9).is_empty(), "on hold");
    }

    #[test]
    fn with_lanes_transactional_entries_go_first_and_alone_when_asked() {
        let mut q = Queue::with_lanes();
        for id in 1..=3 {
            q.insert(entry(id, "a.test"));
        }
        let mut t = entry(4, "a.test");
        t.lane = Lane::Transactional;
        q.insert(t.clone());
        assert_eq!(q.ready_transactional("a.test"), 1);
        assert_eq!(q.take_ready("a.test", true).unwrap().id, 4);
        assert!(
            q.take_ready("a.test", true).is_none(),
            "no bulk for a transactional session"
        );
        assert_eq!(q.take_ready("a.test", false).unwrap().id, 1);
        // Without lanes, one FIFO whatever the lane.
        let mut plain = Queue::new();
        plain.insert(entry(1, "a.test"));
        plain.insert(t);
        assert_eq!(plain.ready_transactional("a.test"), 0);
        assert_eq!(plain.take_ready("a.test", false).unwrap().id, 1);
    }
}
