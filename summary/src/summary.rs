//! The run summary, folded from the event log.

use mailsim_events::{EventView, Record, RecordView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSummary {
    pub injected: u64,
    pub delivered: u64,
    pub bounced: u64,
    /// Still queued at the end of the run.
    pub deferred: u64,
    pub expired: u64,
    /// Not queued: the address was on the suppression list.
    #[serde(default)]
    pub suppressed: u64,
}

/// Receiver-side verdict counts; "fail" counts every result other than pass, but for DKIM,
/// where a message with no signature at all is `dkim_none` (RFC 8601: none), not a failure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSummary {
    pub spf_pass: u64,
    pub spf_fail: u64,
    pub dkim_pass: u64,
    pub dkim_fail: u64,
    #[serde(default)]
    pub dkim_none: u64,
    pub dmarc_pass: u64,
    pub dmarc_fail: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub injected: u64,
    pub delivered: u64,
    pub bounced: u64,
    pub deferred: u64,
    pub expired: u64,
    /// From the first record to the last, in seconds of the run's clock.
    pub elapsed_s: f64,
    pub domains: BTreeMap<String, DomainSummary>,
    pub auth: AuthSummary,
    /// Suppressed at injection.
    #[serde(default)]
    pub suppressed: u64,
    /// Final failures by reason (bounced and expired).
    #[serde(default)]
    pub reasons: BTreeMap<String, u64>,
    /// Delivery status notifications the MTA queued to return paths.
    #[serde(default)]
    pub dsns_queued: u64,
    /// Reports read by the sender's bounce processor, by kind ("bounce", "complaint").
    #[serde(default)]
    pub reports_received: BTreeMap<String, u64>,
    /// Addresses that joined the suppression list.
    #[serde(default)]
    pub suppression_added: u64,
    /// Per lane (`bulk`, `transactional`), when the log has transactional mail (an MTA with
    /// lanes): messages delivered and the time from injection to delivery.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lanes: BTreeMap<String, LaneSummary>,
}

/// One lane's deliveries and their time from injection to delivery (milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneSummary {
    pub delivered: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl LaneSummary {
    /// Deliveries and nearest-rank percentiles of these times (milliseconds).
    pub fn of(mut ms: Vec<u64>) -> LaneSummary {
        ms.sort_unstable();
        let at = |q: f64| {
            // Nearest rank: the smallest value with at least q of the values at or below it.
            let rank = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len().max(1));
            ms.get(rank - 1).copied().unwrap_or(0)
        };
        LaneSummary {
            delivered: ms.len() as u64,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: ms.last().copied().unwrap_or(0),
        }
    }
}

/// Each message's domain (its number in [`Domains`]), fate, injection time and whether it went
/// in the transactional lane: a million messages hold no string each.
type Fates = HashMap<u64, (u32, Fate, u64, bool)>;

/// The recipient domains met, each numbered once.
#[derive(Default)]
struct Domains {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Domains {
    fn id(&mut self, domain: &str) -> u32 {
        if let Some(&id) = self.ids.get(domain) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(domain.to_string());
        self.ids.insert(domain.to_string(), id);
        id
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Queued,
    Delivered,
    Bounced,
    Expired,
}

impl Summary {
    /// Fold records (in log order) into a summary.
    pub fn fold<R: std::borrow::Borrow<Record>>(records: impl IntoIterator<Item = R>) -> Summary {
        Self::fold_with_drain(records).0
    }

    /// Fold records into a summary and the drain figures of [`Drain`].
    pub fn fold_with_drain<R: std::borrow::Borrow<Record>>(
        records: impl IntoIterator<Item = R>,
    ) -> (Summary, Drain) {
        let mut fold = SummaryFold::default();
        for r in records {
            fold.push(r.borrow());
        }
        fold.finish_with_drain()
    }
}

/// The summary fold one record at a time: what [`Summary::fold`] does over a whole log, for a
/// writer that sees the records as it writes them (a run folds its log while it runs).
#[derive(Default)]
pub struct SummaryFold {
    s: Summary,
    fates: Fates,
    domains: Domains,
    // Injection to delivery, per lane: [bulk, transactional].
    lane_ms: [Vec<u64>; 2],
    // Measuring another MTA (mode "external") there are no `delivered` or `bounced`
    // events: a copy stored by a receiving server is the delivery, and a DSN of the other
    // MTA's, read by the bounce processor, the bounce or the expiry. Both are matched to
    // the campaign's messages by (Message-ID, recipient), in whichever order they come:
    // another MTA may deliver before the injector has logged its acknowledgement.
    external: bool,
    by_message: HashMap<(String, String), u64>,
    early: HashMap<(String, String), (u64, Outcome)>,
    first_ts: Option<u64>,
    last_ts: u64,
    // For the [`Drain`]: the first injection, and each message's delivery.
    first_injected_ms: Option<u64>,
    delivered_ms: Vec<u64>,
}

impl SummaryFold {
    /// Take the next record (in log order) into account.
    pub fn push(&mut self, r: &Record) {
        self.push_view(&r.view())
    }

    /// Take the next record (in log order) into account, as a view of its bytes (a replay
    /// decodes none of a record's strings into an allocation of its own).
    pub fn push_view(&mut self, r: &RecordView<'_>) {
        let SummaryFold {
            s,
            fates,
            domains,
            lane_ms,
            external,
            by_message,
            early,
            first_ts,
            last_ts,
            first_injected_ms,
            delivered_ms,
        } = self;
        let mut on_injected = |ts| {
            first_injected_ms.get_or_insert(ts);
        };
        let mut on_delivered = |ts| delivered_ms.push(ts);
        first_ts.get_or_insert(r.ts);
        *last_ts = (*last_ts).max(r.ts);
        match &r.event {
            EventView::RunStarted {
                scenario,
                seed,
                mode,
                ..
            } => {
                s.scenario = scenario.to_string();
                s.seed = *seed;
                *external = *mode == "external";
            }
            EventView::Injected {
                msg,
                domain,
                message_id,
                rcpt,
                lane,
                ..
            } => {
                on_injected(r.ts);
                let transactional = *lane == Some("transactional");
                let domain = domains.id(domain);
                fates.insert(*msg, (domain, Fate::Queued, r.ts, transactional));
                if *external {
                    let key = (message_id.to_string(), rcpt.to_ascii_lowercase());
                    if let Some((ts, outcome)) = early.remove(&key) {
                        outcome.apply(*msg, ts, fates, s, &mut on_delivered);
                    }
                    by_message.insert(key, *msg);
                }
            }
            EventView::Stored { .. } | EventView::ReportReceived { .. } if *external => {
                if let EventView::ReportReceived { kind, .. } = &r.event {
                    *s.reports_received.entry(kind.to_string()).or_default() += 1;
                }
                if let Some((key, outcome)) = external_outcome(&r.event) {
                    match by_message.get(&key) {
                        Some(msg) => outcome.apply(*msg, r.ts, fates, s, &mut on_delivered),
                        None => {
                            early.entry(key).or_insert((r.ts, outcome));
                        }
                    }
                }
            }
            EventView::Delivered { msg, .. } => {
                let first = fates
                    .get(msg)
                    .filter(|f| f.1 != Fate::Delivered)
                    .map(|f| (f.2, f.3));
                if let Some((injected, transactional)) = first {
                    lane_ms[usize::from(transactional)].push(r.ts.saturating_sub(injected));
                }
                if set_fate(fates, *msg, Fate::Delivered) && first.is_some() {
                    on_delivered(r.ts);
                }
            }
            EventView::Bounced { msg, reason, .. } if set_fate(fates, *msg, Fate::Bounced) => {
                *s.reasons.entry(reason_word(reason)).or_default() += 1;
            }
            EventView::Expired { msg, .. } if set_fate(fates, *msg, Fate::Expired) => {
                *s.reasons.entry("expired".into()).or_default() += 1;
            }
            EventView::Suppressed { domain, .. } => {
                s.domains.entry(domain.to_string()).or_default().suppressed += 1;
                s.suppressed += 1;
            }
            EventView::SuppressionAdded { .. } => s.suppression_added += 1,
            EventView::DsnQueued { .. } => s.dsns_queued += 1,
            EventView::ReportReceived { kind, .. } => {
                *s.reports_received.entry(kind.to_string()).or_default() += 1
            }
            EventView::AuthVerdict {
                spf, dkim, dmarc, ..
            } => {
                let a = &mut s.auth;
                if *spf == "pass" {
                    a.spf_pass += 1
                } else {
                    a.spf_fail += 1
                }
                match *dkim {
                    "pass" => a.dkim_pass += 1,
                    "none" => a.dkim_none += 1,
                    _ => a.dkim_fail += 1,
                }
                if *dmarc == "pass" {
                    a.dmarc_pass += 1
                } else {
                    a.dmarc_fail += 1
                }
            }
            _ => {}
        }
    }

    /// The summary of every record pushed.
    pub fn finish(self) -> Summary {
        self.finish_with_drain().0
    }

    /// The summary of every record pushed, and how the run drained.
    pub fn finish_with_drain(self) -> (Summary, Drain) {
        let SummaryFold {
            mut s,
            fates,
            domains,
            lane_ms,
            first_ts,
            last_ts,
            first_injected_ms,
            delivered_ms,
            ..
        } = self;
        if fates.values().any(|f| f.3) {
            let [bulk, transactional] = lane_ms;
            s.lanes.insert("bulk".into(), LaneSummary::of(bulk));
            s.lanes
                .insert("transactional".into(), LaneSummary::of(transactional));
        }
        let mut per_domain = vec![DomainSummary::default(); domains.names.len()];
        for &(domain, fate, _, _) in fates.values() {
            let d = &mut per_domain[domain as usize];
            d.injected += 1;
            match fate {
                Fate::Queued => d.deferred += 1,
                Fate::Delivered => d.delivered += 1,
                Fate::Bounced => d.bounced += 1,
                Fate::Expired => d.expired += 1,
            }
        }
        for (name, counts) in domains.names.into_iter().zip(per_domain) {
            // (A message injected again under the same number counts once, for its last domain.)
            if counts.injected == 0 {
                continue;
            }
            let d = s.domains.entry(name).or_default();
            d.injected += counts.injected;
            d.delivered += counts.delivered;
            d.bounced += counts.bounced;
            d.deferred += counts.deferred;
            d.expired += counts.expired;
        }
        for d in s.domains.values() {
            s.injected += d.injected;
            s.delivered += d.delivered;
            s.bounced += d.bounced;
            s.deferred += d.deferred;
            s.expired += d.expired;
        }
        s.elapsed_s = first_ts.map_or(0.0, |f| (last_ts - f) as f64 / 1000.0);
        (s, Drain::new(first_injected_ms, delivered_ms))
    }
}

/// Record a message's fate; false for messages that are not the campaign's (DSNs).
/// How a run drained: the bulk of its deliveries and the tail of retries after it, in the
/// run's clock (virtual seconds in a virtual run). A rate over the whole run mixes the two
/// (a run whose bulk went at 1,050/s read 337/s over its greylisting tail).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drain {
    pub delivered: u64,
    /// From the first injection to the delivery that completed [`Drain::BULK_SHARE`].
    pub bulk_s: f64,
    /// Deliveries per second over the bulk.
    pub bulk_per_s: f64,
    /// From there to the last delivery.
    pub tail_s: f64,
}

impl Drain {
    /// The share of deliveries counted as the bulk.
    pub const BULK_SHARE: f64 = 0.95;

    fn new(first_injected_ms: Option<u64>, mut delivered_ms: Vec<u64>) -> Drain {
        delivered_ms.sort_unstable();
        let n = delivered_ms.len();
        let (Some(start), Some(&last)) = (first_injected_ms, delivered_ms.last()) else {
            return Drain {
                delivered: n as u64,
                bulk_s: 0.0,
                bulk_per_s: 0.0,
                tail_s: 0.0,
            };
        };
        let bulk_n = ((n as f64 * Self::BULK_SHARE).ceil() as usize).clamp(1, n);
        let bulk_end = delivered_ms[bulk_n - 1];
        let bulk_s = bulk_end.saturating_sub(start) as f64 / 1000.0;
        Drain {
            delivered: n as u64,
            bulk_s,
            // Everything in the same millisecond: at least one millisecond.
            bulk_per_s: bulk_n as f64 / bulk_s.max(0.001),
            tail_s: last.saturating_sub(bulk_end) as f64 / 1000.0,
        }
    }
}

fn set_fate(fates: &mut Fates, msg: u64, fate: Fate) -> bool {
    match fates.get_mut(&msg) {
        Some(entry) => {
            entry.1 = fate;
            true
        }
        None => false,
    }
}

/// What the receiving side says became of a message another MTA handled (external mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A receiving server stored a copy.
    Delivered,
    /// The other MTA's DSN says it failed: the reason word.
    Bounced(String),
    /// The other MTA's DSN says it gave up after temporary failures.
    Expired,
}

/// Measuring another MTA: what `event` says became of one of the campaign's messages, keyed by
/// (Message-ID, lower-cased recipient). A copy stored is a delivery; a DSN the bounce processor
/// read is final when it says failed (or, without an Action, gives a hard reason): an expiry
/// when its status is temporary (4.x.x), else a bounce. Anything else says nothing final.
pub fn external_outcome(event: &EventView<'_>) -> Option<((String, String), Outcome)> {
    match event {
        EventView::Stored {
            message_id, rcpt, ..
        } => Some((
            (message_id.to_string(), rcpt.to_ascii_lowercase()),
            Outcome::Delivered,
        )),
        EventView::ReportReceived {
            kind,
            rcpt,
            reason,
            status,
            hard,
            message_id,
            action,
            ..
        } if *kind == "bounce" && !message_id.is_empty() => {
            let failed = *action == "failed" || (action.is_empty() && *hard);
            failed.then(|| {
                let outcome = if status.starts_with('4') {
                    Outcome::Expired
                } else {
                    Outcome::Bounced(reason_word(reason))
                };
                ((message_id.to_string(), rcpt.to_ascii_lowercase()), outcome)
            })
        }
        _ => None,
    }
}

impl Outcome {
    /// Give the campaign's message `msg` this outcome, seen at `ts`: a message still queued
    /// takes it (the first final word counts; a copy stored twice is one delivery).
    fn apply(
        self,
        msg: u64,
        ts: u64,
        fates: &mut Fates,
        s: &mut Summary,
        on_delivered: &mut impl FnMut(u64),
    ) {
        if !fates.get(&msg).is_some_and(|f| f.1 == Fate::Queued) {
            return;
        }
        match self {
            Outcome::Delivered => {
                set_fate(fates, msg, Fate::Delivered);
                on_delivered(ts);
            }
            Outcome::Bounced(reason) => {
                set_fate(fates, msg, Fate::Bounced);
                *s.reasons.entry(reason).or_default() += 1;
            }
            Outcome::Expired => {
                set_fate(fates, msg, Fate::Expired);
                *s.reasons.entry("expired".into()).or_default() += 1;
            }
        }
    }
}

/// The reason word of an event's reason (`"hostunknown: NXDOMAIN"` -> `hostunknown`).
fn reason_word(reason: &str) -> String {
    reason
        .split([':', ' '])
        .next()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailsim_events::Event;

    fn rec(seq: u64, event: Event) -> Record {
        Record {
            seq,
            ts: 1000 + seq * 500,
            event,
        }
    }

    #[test]
    fn lanes_get_their_injection_to_delivery_times_when_the_log_has_transactional_mail() {
        let inj = |msg, lane: Option<&str>| Event::Injected {
            msg,
            message_id: String::new(),
            from: "a@s.test".into(),
            rcpt: format!("u{msg}@a.test"),
            domain: "a.test".into(),
            size: 1,
            lane: lane.map(str::to_string),
            campaign: None,
        };
        let del = |msg| Event::Delivered {
            msg,
            rcpt: format!("u{msg}@a.test"),
            domain: "a.test".into(),
            mx: "mx".into(),
            attempts: 1,
        };
        // rec(seq): ts = 1000 + 500 * seq.
        let records = vec![
            rec(0, inj(1, None)),
            rec(1, inj(2, None)),
            rec(2, inj(3, Some("transactional"))),
            rec(3, del(3)),
            rec(4, del(3)),
            rec(8, del(1)),
            rec(9, del(2)),
        ];
        let s = Summary::fold(&records);
        assert_eq!(
            s.lanes["transactional"],
            LaneSummary {
                delivered: 1,
                p50_ms: 500,
                p99_ms: 500,
                max_ms: 500
            }
        );
        assert_eq!(
            s.lanes["bulk"],
            LaneSummary {
                delivered: 2,
                p50_ms: 4000,
                p99_ms: 4000,
                max_ms: 4000
            }
        );
        // Without transactional mail there is no lanes section (skipped in summary.json).
        let plain = Summary::fold(&records[..2]);
        assert!(plain.lanes.is_empty());
    }

    #[test]
    fn folds_outcomes_per_domain_and_auth() {
        let inj = |msg, domain: &str| Event::Injected {
            msg,
            message_id: String::new(),
            from: "a@s.test".into(),
            rcpt: format!("u@{domain}"),
            domain: domain.into(),
            size: 1,
            lane: None,
            campaign: None,
        };
        let records = vec![
            rec(
                0,
                Event::RunStarted {
                    scenario: "t".into(),
                    seed: 9,
                    mode: "live".into(),
                    dmarc_records: Default::default(),
                    spf_records: Default::default(),
                    profiles: Default::default(),
                },
            ),
            rec(1, inj(1, "a.test")),
            rec(2, inj(2, "a.test")),
            rec(3, inj(3, "b.test")),
            rec(
                4,
                Event::Delivered {
                    msg: 1,
                    rcpt: "u@a.test".into(),
                    domain: "a.test".into(),
                    mx: "mx".into(),
                    attempts: 1,
                },
            ),
            rec(
                5,
                Event::Bounced {
                    msg: 3,
                    rcpt: "u@b.test".into(),
                    domain: "b.test".into(),
                    attempts: 1,
                    reason: "userunknown".into(),
                    reply: None,
                    hard: true,
                },
            ),
            rec(
                6,
                Event::AuthVerdict {
                    host: "mx".into(),
                    session: 1,
                    message_id: String::new(),
                    mail_from: String::new(),
                    header_from: String::new(),
                    spf: "pass".into(),
                    dkim: "fail".into(),
                    dmarc: "pass".into(),
                },
            ),
        ];
        let s = Summary::fold(&records);
        assert_eq!(
            (s.injected, s.delivered, s.bounced, s.deferred, s.expired),
            (3, 1, 1, 1, 0)
        );
        assert_eq!(s.domains["a.test"].deferred, 1);
        assert_eq!(s.domains["b.test"].bounced, 1);
        assert_eq!(s.auth.spf_pass, 1);
        assert_eq!(s.auth.dkim_fail, 1);
        assert_eq!(s.seed, 9);
        assert_eq!(s.elapsed_s, 3.0);
    }

    #[test]
    fn another_mtas_run_counts_stored_copies_as_deliveries() {
        let injected = |msg: u64, rcpt: &str| Event::Injected {
            msg,
            message_id: format!("<{msg}@s.test>"),
            from: "n@s.test".into(),
            rcpt: rcpt.into(),
            domain: "a.test".into(),
            size: 10,
            lane: None,
            campaign: None,
        };
        let stored = |msg: u64, rcpt: &str| Event::Stored {
            host: "mx1.a.test".into(),
            session: 1,
            message_id: format!("<{msg}@s.test>"),
            rcpt: rcpt.into(),
            size: 10,
            tls: None,
        };
        for (mode, delivered) in [("external", 1), ("live", 0)] {
            let records = vec![
                rec(
                    0,
                    Event::RunStarted {
                        scenario: "x".into(),
                        seed: 1,
                        mode: mode.into(),
                        dmarc_records: Default::default(),
                        spf_records: Default::default(),
                        profiles: Default::default(),
                    },
                ),
                rec(1, injected(1, "u1@a.test")),
                rec(2, injected(2, "u2@a.test")),
                rec(3, stored(1, "U1@a.test")),
                rec(4, stored(9, "u9@a.test")),
            ];
            let s = Summary::fold(&records);
            assert_eq!(
                (s.injected, s.delivered, s.deferred),
                (2, delivered, 2 - delivered),
                "{mode}"
            );
        }
    }

    /// Issue 13, item 9: 1,000 deliveries over 1 s, then 50 stragglers 300 s later: the bulk
    /// rate is about 1,000/s, not the 3.5/s of 1,050 over 301 s.
    #[test]
    fn drain_separates_the_bulk_from_the_tail() {
        let mut delivered: Vec<u64> = (0..1000).map(|i| 10_000 + i).collect();
        delivered.extend((0..50).map(|i| 310_000 + i));
        let d = Drain::new(Some(10_000), delivered);
        assert_eq!(d.delivered, 1050);
        assert!((d.bulk_s - 0.997).abs() < 1e-9, "{d:?}");
        assert!((d.bulk_per_s - 998.0 / 0.997).abs() < 1.0, "{d:?}");
        assert!((d.tail_s - 299.052).abs() < 1e-9, "{d:?}");
        let none = Drain::new(None, vec![]);
        assert_eq!((none.delivered, none.bulk_per_s), (0, 0.0));
    }
}
