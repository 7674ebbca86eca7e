//! Campaigns (`POST /api/campaigns`): a list, the message to make for each subscriber, a send
//! time and a rate or warm-up plan, kept in the lists database (`lists.sqlite`) with one row
//! per subscriber to mail, so that a scheduled campaign survives a restart of the MTA and what
//! became of each subscriber (queued, skipped, failed; opened, clicked, unsubscribed) can be
//! asked for (`GET /api/campaigns/<id>`).
//!
//! The plan is sans-IO: [`Plan::allowance`] says how many messages may have gone by a given
//! time; the MTA's scheduler ([`crate::http::Platform::run_campaigns`]) sends up to it.

use crate::inject::{CampaignRequest, FieldError};
use crate::lists::{Lists, Subscriber};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One step of a warm-up plan: `per_hour` messages an hour for `hours` hours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub hours: u32,
    pub per_hour: u64,
}

/// When a campaign's messages may go: from `send_at_ms`, the warm-up steps one after the
/// other, then `rate_per_hour` (none: as fast as the MTA takes them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub send_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_hour: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warmup: Vec<Step>,
}

const HOUR_MS: u128 = 3_600_000;
/// Warm-up steps a plan may have (a year of daily steps).
pub const STEPS_MAX: usize = 366;

impl Plan {
    /// The plan a request asks for, at `now_ms` (a send time in the past means now).
    pub fn of(request: &CampaignRequest, now_ms: u64) -> Result<Plan, FieldError> {
        let send_at_ms = match &request.send_at {
            None => now_ms,
            Some(text) => {
                let t = time::OffsetDateTime::parse(
                    text,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|e| {
                    FieldError::at(
                        "send_at",
                        format!("{text:?} is not an RFC 3339 time (2026-12-01T09:00:00Z): {e}"),
                    )
                })?;
                let ms = t.unix_timestamp_nanos() / 1_000_000;
                u64::try_from(ms).unwrap_or(0).max(now_ms)
            }
        };
        if request.rate_per_hour == Some(0) {
            return Err(FieldError::at(
                "rate_per_hour",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        let warmup = request.warmup.clone().unwrap_or_default();
        if warmup.len() > STEPS_MAX {
            return Err(FieldError::at(
                "warmup",
                format!("at most {STEPS_MAX} steps"),
            ));
        }
        for (i, s) in warmup.iter().enumerate() {
            if s.hours == 0 || s.per_hour == 0 {
                return Err(FieldError::at(
                    format!("warmup[{i}]"),
                    "hours and per_hour must be at least 1",
                ));
            }
        }
        Ok(Plan {
            send_at_ms,
            rate_per_hour: request.rate_per_hour,
            warmup,
        })
    }

    /// Does the plan let every message go at once, now?
    pub fn immediate(&self, now_ms: u64) -> bool {
        self.send_at_ms <= now_ms && self.rate_per_hour.is_none() && self.warmup.is_empty()
    }

    /// The rate (messages an hour) the plan sets at `now_ms`: the warm-up step's, then
    /// `rate_per_hour`; None for no limit.
    pub fn rate_at(&self, now_ms: u64) -> Option<u64> {
        let mut left = u128::from(now_ms.saturating_sub(self.send_at_ms));
        for s in &self.warmup {
            let len = u128::from(s.hours) * HOUR_MS;
            if left < len {
                return Some(s.per_hour);
            }
            left -= len;
        }
        self.rate_per_hour
    }

    /// How many messages the plan lets go by `now_ms`, in all (`u64::MAX`: no limit left).
    pub fn allowance(&self, now_ms: u64) -> u64 {
        if now_ms < self.send_at_ms {
            return 0;
        }
        let mut left = u128::from(now_ms - self.send_at_ms);
        // Message-milliseconds per hour, divided once at the end (no rounding per step).
        let mut sum: u128 = 0;
        for s in &self.warmup {
            let take = left.min(u128::from(s.hours) * HOUR_MS);
            sum += u128::from(s.per_hour) * take;
            left -= take;
            if left == 0 {
                return u64::try_from(sum / HOUR_MS).unwrap_or(u64::MAX);
            }
        }
        match self.rate_per_hour {
            None => u64::MAX,
            Some(r) => u64::try_from((sum + u128::from(r) * left) / HOUR_MS).unwrap_or(u64::MAX),
        }
    }
}

/// What a rate-limited campaign may still send: its rate's share of the time since the
/// scheduler last looked at it, fractions carried over (so that 720 an hour is one message
/// every 5 s), at most a second's worth or one message (so that nothing piles up while the
/// plan's allowance, a stop or a restart held it back).
#[derive(Debug, Clone, PartialEq)]
pub struct Credit {
    at_ms: u64,
    /// Message-milliseconds an hour: one message is `HOUR_MS` of them (exact, no rounding).
    units: u128,
}

impl Credit {
    /// A credit that starts a second before `now_ms` (the first look earns a second's share).
    pub fn new(now_ms: u64) -> Credit {
        Credit {
            at_ms: now_ms.saturating_sub(1000),
            units: 0,
        }
    }

    /// Earn up to `now_ms` at `per_hour`; the whole messages that may go now.
    pub fn refill(&mut self, per_hour: u64, now_ms: u64) -> u64 {
        let earned = u128::from(per_hour) * u128::from(now_ms.saturating_sub(self.at_ms));
        let cap = (u128::from(per_hour) * 1000).max(HOUR_MS);
        self.units = (self.units + earned).min(cap);
        self.at_ms = now_ms;
        u64::try_from(self.units / HOUR_MS).unwrap_or(u64::MAX)
    }

    pub fn spend(&mut self, messages: u64) {
        self.units = self.units.saturating_sub(u128::from(messages) * HOUR_MS);
    }
}

/// A campaign as the database keeps it.
#[derive(Debug, Clone)]
pub struct Campaign {
    pub id: u64,
    pub name: String,
    pub list: String,
    /// The request's JSON, as it came.
    pub request: String,
    pub plan: Plan,
    /// `scheduled` (nothing sent yet), `sending`, `sent`, `stopped` (the spool failed while a
    /// request sent it at once).
    pub state: String,
    /// Subscribers to mail, and how many of them were dealt with (in order).
    pub members: u64,
    pub next: u64,
}

/// A campaign's next subscriber as the list has it now: to mail, or (address, why not).
pub type Member = Result<Subscriber, (String, String)>;

/// What became of one subscriber of a campaign.
pub enum Outcome {
    Queued {
        message_id: String,
    },
    /// Not mailed: unsubscribed, bounced or complained since the campaign was made, or on the
    /// suppression list.
    Skipped(String),
    /// Not mailed: the message could not be made (a field changed since), or the MTA refused.
    Failed(String),
}

/// A campaign's progress and engagement (`GET /api/campaigns/<id>`).
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Report {
    pub campaign: u64,
    pub name: String,
    pub list: String,
    pub state: String,
    pub send_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_hour: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warmup: Vec<Step>,
    pub recipients: u64,
    pub pending: u64,
    pub queued: u64,
    pub skipped: u64,
    pub failed: u64,
    /// Recipients who opened, clicked (any link), unsubscribed with this campaign's mail.
    pub opened: u64,
    pub clicked: u64,
    pub unsubscribed: u64,
    /// The same per recipient domain.
    pub domains: BTreeMap<String, DomainReport>,
    /// Clicks per original link (every click, not recipients).
    pub links: BTreeMap<String, u64>,
    /// Why subscribers were skipped or failed, and how many.
    pub reasons: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct DomainReport {
    pub recipients: u64,
    pub queued: u64,
    pub opened: u64,
    pub clicked: u64,
    pub unsubscribed: u64,
}

/// What a tracking request did, for the campaign's counters.
pub enum Engagement {
    Open,
    /// The original link.
    Click(String),
    Unsubscribe,
}

fn sql(e: rusqlite::Error) -> String {
    e.to_string()
}

impl Lists {
    pub(crate) fn create_campaign_tables(db: &rusqlite::Connection) -> rusqlite::Result<()> {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS campaigns (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL,
                 list TEXT NOT NULL,
                 request TEXT NOT NULL,
                 plan TEXT NOT NULL,
                 state TEXT NOT NULL,
                 created_ms INTEGER NOT NULL,
                 members INTEGER NOT NULL,
                 next INTEGER NOT NULL DEFAULT 0
             );
             CREATE TABLE IF NOT EXISTS campaign_members (
                 campaign INTEGER NOT NULL,
                 seq INTEGER NOT NULL,
                 email TEXT NOT NULL,
                 outcome TEXT NOT NULL DEFAULT 'pending',
                 reason TEXT NOT NULL DEFAULT '',
                 message_id TEXT,
                 opened INTEGER NOT NULL DEFAULT 0,
                 clicks INTEGER NOT NULL DEFAULT 0,
                 unsubscribed INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (campaign, seq)
             );
             CREATE INDEX IF NOT EXISTS campaign_members_by_message
                 ON campaign_members (message_id, email);
             CREATE TABLE IF NOT EXISTS campaign_links (
                 campaign INTEGER NOT NULL,
                 url TEXT NOT NULL,
                 clicks INTEGER NOT NULL,
                 PRIMARY KEY (campaign, url)
             );",
        )
    }

    /// Record a campaign with its subscribers to mail (in this order); its id.
    pub fn create_campaign(
        &self,
        name: &str,
        list: &str,
        request: &str,
        plan: &Plan,
        members: &[Subscriber],
        now_ms: u64,
    ) -> Result<u64, String> {
        let plan = serde_json::to_string(plan).map_err(|e| e.to_string())?;
        let mut db = self.db();
        let tx = db.transaction().map_err(sql)?;
        tx.execute(
            "INSERT INTO campaigns (name, list, request, plan, state, created_ms, members)
             VALUES (?1, ?2, ?3, ?4, 'scheduled', ?5, ?6)",
            params![
                name,
                list,
                request,
                plan,
                now_ms as i64,
                members.len() as i64
            ],
        )
        .map_err(sql)?;
        let id = tx.last_insert_rowid();
        {
            let mut insert = tx
                .prepare("INSERT INTO campaign_members (campaign, seq, email) VALUES (?1, ?2, ?3)")
                .map_err(sql)?;
            for (seq, s) in members.iter().enumerate() {
                insert
                    .execute(params![id, seq as i64, s.email])
                    .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        Ok(id as u64)
    }

    pub fn campaign(&self, id: u64) -> Result<Option<Campaign>, String> {
        let db = self.db();
        let row = db
            .query_row(
                "SELECT name, list, request, plan, state, members, next FROM campaigns WHERE id = ?1",
                params![id as i64],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                },
            )
            .optional()
            .map_err(sql)?;
        let Some((name, list, request, plan, state, members, next)) = row else {
            return Ok(None);
        };
        let plan = serde_json::from_str(&plan).map_err(|e| format!("campaign {id}: plan: {e}"))?;
        Ok(Some(Campaign {
            id,
            name,
            list,
            request,
            plan,
            state,
            members: members.max(0) as u64,
            next: next.max(0) as u64,
        }))
    }

    /// The campaigns not yet sent whole, oldest first.
    pub fn unfinished_campaigns(&self) -> Result<Vec<u64>, String> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT id FROM campaigns WHERE state IN ('scheduled', 'sending') ORDER BY id")
            .map_err(sql)?;
        stmt.query_map([], |r| r.get::<_, i64>(0))
            .and_then(|rows| rows.collect::<Result<Vec<i64>, _>>())
            .map(|ids| ids.into_iter().map(|i| i as u64).collect())
            .map_err(sql)
    }

    /// The next `n` subscribers of a campaign still to deal with (from `next`), each as the
    /// list has it now: its fields, or why it may not be mailed any more.
    pub fn campaign_batch(
        &self,
        c: &Campaign,
        n: u64,
        suppressed: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<Member>, String> {
        let db = self.db();
        let mut stmt = db
            .prepare(
                "SELECT m.email, s.fields, s.status FROM campaign_members m
                 LEFT JOIN subscribers s ON s.list = ?1 AND s.email = m.email
                 WHERE m.campaign = ?2 AND m.seq >= ?3 ORDER BY m.seq LIMIT ?4",
            )
            .map_err(sql)?;
        let rows: Vec<(String, Option<String>, Option<String>)> = stmt
            .query_map(params![c.list, c.id as i64, c.next as i64, n as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(sql)?;
        Ok(rows
            .into_iter()
            .map(|(email, fields, status)| {
                let status = status.unwrap_or_else(|| "removed from the list".into());
                if status != "active" {
                    return Err((email, status));
                }
                if let Some(reason) = suppressed(&email) {
                    return Err((email, format!("suppressed ({reason})")));
                }
                let fields = match fields.as_deref().map(serde_json::from_str) {
                    Some(Ok(Value::Object(m))) => m,
                    _ => Map::new(),
                };
                Ok(Subscriber { email, fields })
            })
            .collect())
    }

    /// Record what became of the subscribers from `c.next` on, in order, and move on past them.
    pub fn record_outcomes(&self, c: &Campaign, outcomes: &[Outcome]) -> Result<(), String> {
        let mut db = self.db();
        let tx = db.transaction().map_err(sql)?;
        {
            let mut update = tx
                .prepare(
                    "UPDATE campaign_members SET outcome = ?1, reason = ?2, message_id = ?3
                     WHERE campaign = ?4 AND seq = ?5",
                )
                .map_err(sql)?;
            for (k, o) in outcomes.iter().enumerate() {
                let (outcome, reason, message_id) = match o {
                    Outcome::Queued { message_id } => ("queued", "", Some(message_id.as_str())),
                    Outcome::Skipped(r) => ("skipped", r.as_str(), None),
                    Outcome::Failed(r) => ("failed", r.as_str(), None),
                };
                update
                    .execute(params![
                        outcome,
                        reason,
                        message_id,
                        c.id as i64,
                        (c.next + k as u64) as i64
                    ])
                    .map_err(sql)?;
            }
        }
        let next = c.next + outcomes.len() as u64;
        let state = if next >= c.members { "sent" } else { "sending" };
        tx.execute(
            "UPDATE campaigns SET next = ?1, state = ?2 WHERE id = ?3",
            params![next as i64, state, c.id as i64],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// Stop a campaign where it is (state `stopped`: the scheduler leaves it).
    pub fn stop_campaign(&self, id: u64) -> Result<(), String> {
        self.db()
            .execute(
                "UPDATE campaigns SET state = 'stopped' WHERE id = ?1",
                params![id as i64],
            )
            .map(|_| ())
            .map_err(sql)
    }

    /// Count an open, a click or an unsubscribe of a campaign's message (nothing when the
    /// message is not a campaign's).
    pub fn note_engagement(
        &self,
        message_id: &str,
        rcpt: &str,
        what: Engagement,
    ) -> Result<(), String> {
        let db = self.db();
        let rcpt = rcpt.to_ascii_lowercase();
        let column = match &what {
            Engagement::Open => "opened = 1",
            Engagement::Click(_) => "clicks = clicks + 1, opened = 1",
            Engagement::Unsubscribe => "unsubscribed = 1",
        };
        let campaign: Option<i64> = db
            .query_row(
                &format!(
                    "UPDATE campaign_members SET {column} WHERE message_id = ?1 AND email = ?2
                     RETURNING campaign"
                ),
                params![message_id, rcpt],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)?;
        if let (Some(campaign), Engagement::Click(url)) = (campaign, what) {
            db.execute(
                "INSERT INTO campaign_links (campaign, url, clicks) VALUES (?1, ?2, 1)
                 ON CONFLICT (campaign, url) DO UPDATE SET clicks = clicks + 1",
                params![campaign, url],
            )
            .map_err(sql)?;
        }
        Ok(())
    }

    /// A campaign's progress and engagement; None when there is no such campaign.
    pub fn campaign_report(&self, id: u64) -> Result<Option<Report>, String> {
        let Some(c) = self.campaign(id)? else {
            return Ok(None);
        };
        let db = self.db();
        let mut r = Report {
            campaign: id,
            name: c.name,
            list: c.list,
            state: c.state,
            send_at_ms: c.plan.send_at_ms,
            rate_per_hour: c.plan.rate_per_hour,
            warmup: c.plan.warmup,
            recipients: c.members,
            ..Report::default()
        };
        let mut stmt = db
            .prepare(
                "SELECT email, outcome, reason, opened, clicks > 0, unsubscribed
                 FROM campaign_members WHERE campaign = ?1",
            )
            .map_err(sql)?;
        let mut rows = stmt.query(params![id as i64]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let email: String = row.get(0).map_err(sql)?;
            let outcome: String = row.get(1).map_err(sql)?;
            let reason: String = row.get(2).map_err(sql)?;
            let (opened, clicked, unsubscribed): (bool, bool, bool) = (
                row.get(3).map_err(sql)?,
                row.get(4).map_err(sql)?,
                row.get(5).map_err(sql)?,
            );
            let domain = email.rsplit_once('@').map_or("", |(_, d)| d).to_string();
            let d = r.domains.entry(domain).or_default();
            d.recipients += 1;
            match outcome.as_str() {
                "queued" => {
                    r.queued += 1;
                    d.queued += 1;
                }
                "skipped" => r.skipped += 1,
                "failed" => r.failed += 1,
                _ => r.pending += 1,
            }
            if !reason.is_empty() {
                *r.reasons.entry(reason).or_default() += 1;
            }
            for (flag, total, per_domain) in [
                (opened, &mut r.opened, &mut d.opened),
                (clicked, &mut r.clicked, &mut d.clicked),
                (unsubscribed, &mut r.unsubscribed, &mut d.unsubscribed),
            ] {
                if flag {
                    *total += 1;
                    *per_domain += 1;
                }
            }
        }
        drop(rows);
        let mut links = db
            .prepare("SELECT url, clicks FROM campaign_links WHERE campaign = ?1")
            .map_err(sql)?;
        r.links = links
            .query_map(params![id as i64], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?.max(0) as u64,
                ))
            })
            .and_then(|rows| rows.collect())
            .map_err(sql)?;
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rate: Option<u64>, warmup: &[(u32, u64)]) -> Plan {
        Plan {
            send_at_ms: 1_000,
            rate_per_hour: rate,
            warmup: warmup
                .iter()
                .map(|&(hours, per_hour)| Step { hours, per_hour })
                .collect(),
        }
    }

    #[test]
    fn the_allowance_follows_the_send_time_the_warm_up_steps_and_the_rate() {
        let h = 3_600_000u64;
        let p = plan(None, &[]);
        assert_eq!(p.allowance(999), 0, "nothing before the send time");
        assert_eq!(p.allowance(1_000), u64::MAX);
        let p = plan(Some(3_600), &[]);
        assert_eq!(p.allowance(1_000), 0);
        assert_eq!(p.allowance(1_000 + 1_000), 1, "one a second");
        assert_eq!(p.allowance(1_000 + h), 3_600);
        // 100 an hour for 2 hours, 1,000 an hour for 1 hour, then no limit.
        let p = plan(None, &[(2, 100), (1, 1_000)]);
        assert_eq!(p.allowance(1_000 + h), 100);
        assert_eq!(p.allowance(1_000 + 2 * h), 200);
        assert_eq!(p.allowance(1_000 + 2 * h + h / 2), 700);
        assert_eq!(p.allowance(1_000 + 3 * h), 1_200);
        assert_eq!(p.allowance(1_000 + 3 * h + 1), u64::MAX);
        // Then a rate: 1,200 + 36 a second.
        let p = plan(Some(36 * 3_600), &[(2, 100), (1, 1_000)]);
        assert_eq!(p.allowance(1_000 + 3 * h + 10_000), 1_200 + 360);
        assert!(!p.immediate(5_000) && plan(None, &[]).immediate(1_000));
        assert_eq!(p.rate_at(1_000), Some(100));
        assert_eq!(p.rate_at(1_000 + 2 * h), Some(1_000));
        assert_eq!(p.rate_at(1_000 + 3 * h), Some(36 * 3_600));
        assert_eq!(plan(None, &[(1, 5)]).rate_at(1_000 + h), None);
    }

    #[test]
    fn the_credit_keeps_slow_rates_and_lets_nothing_pile_up() {
        // 720 an hour, looked at every second: one message every 5 s.
        let mut c = Credit::new(0);
        let sent: Vec<u64> = (0..15u64)
            .map(|s| {
                let n = c.refill(720, s * 1000);
                c.spend(n);
                n
            })
            .collect();
        assert_eq!(sent, [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        // After 30 s unseen (a stop), one message, not six; then the rate again.
        assert_eq!(c.refill(720, 44_000), 1);
        c.spend(1);
        assert_eq!(c.refill(720, 45_000), 0);
        // 14,400 an hour: 4 a second, never 8 after a pause.
        let mut c = Credit::new(5_000);
        assert_eq!(
            c.refill(14_400, 5_000),
            4,
            "a second's share at the first look"
        );
        c.spend(4);
        assert_eq!(c.refill(14_400, 15_000), 4);
    }

    #[test]
    fn a_request_s_plan_is_checked_field_by_field() {
        let request = |json: &str| crate::inject::parse_campaign(json.as_bytes()).unwrap();
        let base = r#""list":"l","envelope_sender":"b@s.test","content":{"from":{"email":"n@s.test"},"subject":"s","text_body":"t"}"#;
        let p = Plan::of(
            &request(&format!(
                r#"{{{base},"send_at":"2026-12-01T10:00:00+01:00","rate_per_hour":500,"warmup":[{{"hours":24,"per_hour":100}}]}}"#
            )),
            0,
        )
        .unwrap();
        assert_eq!(p.send_at_ms, 1_796_115_600_000);
        assert_eq!(p.rate_per_hour, Some(500));
        assert_eq!(
            p.warmup,
            vec![Step {
                hours: 24,
                per_hour: 100
            }]
        );
        let past = Plan::of(
            &request(&format!(r#"{{{base},"send_at":"2020-01-01T00:00:00Z"}}"#)),
            1_800_000_000_000,
        )
        .unwrap();
        assert!(
            past.immediate(1_800_000_000_000),
            "a send time in the past is now"
        );
        for (json, field) in [
            (r#""send_at":"tomorrow""#, "send_at"),
            (r#""rate_per_hour":0"#, "rate_per_hour"),
            (r#""warmup":[{"hours":0,"per_hour":5}]"#, "warmup[0]"),
        ] {
            let e = Plan::of(&request(&format!("{{{base},{json}}}")), 0).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{json}: {e}");
        }
        let e = crate::inject::parse_campaign(
            format!(r#"{{{base},"warmup":[{{"hours":1,"perhour":5}}]}}"#).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("warmup[0].perhour"), "{e}");
    }

    #[test]
    fn a_campaign_keeps_its_members_outcomes_and_engagement() {
        let dir = tempfile::tempdir().unwrap();
        let lists = Lists::open(&dir.path().join("lists.sqlite")).unwrap();
        lists
            .import_csv(
                "l",
                "email,name\nann@a.test,Ann\nbob@b.test,Bob\ncy@a.test,Cy\n".as_bytes(),
                "l.csv",
            )
            .unwrap();
        let members = lists.active("l", |_| None).unwrap();
        let id = lists
            .create_campaign("spring", "l", "{}", &plan(Some(10), &[]), &members, 5)
            .unwrap();
        let c = lists.campaign(id).unwrap().unwrap();
        assert_eq!((c.members, c.next, c.state.as_str()), (3, 0, "scheduled"));
        // Bob unsubscribes before his turn; Cy is on the suppression list.
        lists.set_status("bob@b.test", "unsubscribed").unwrap();
        let batch = lists
            .campaign_batch(&c, 10, |e| {
                (e == "cy@a.test").then(|| "user unknown".to_string())
            })
            .unwrap();
        assert_eq!(batch[0].as_ref().unwrap().fields["name"], "Ann");
        assert_eq!(
            batch[1].as_ref().unwrap_err(),
            &("bob@b.test".to_string(), "unsubscribed".to_string())
        );
        assert!(batch[2].is_err());
        lists
            .record_outcomes(
                &c,
                &[
                    Outcome::Queued {
                        message_id: "<1@s.test>".into(),
                    },
                    Outcome::Skipped("unsubscribed".into()),
                    Outcome::Skipped("suppressed (user unknown)".into()),
                ],
            )
            .unwrap();
        lists
            .note_engagement("<1@s.test>", "ANN@a.test", Engagement::Open)
            .unwrap();
        for _ in 0..2 {
            lists
                .note_engagement(
                    "<1@s.test>",
                    "ann@a.test",
                    Engagement::Click("https://x/".into()),
                )
                .unwrap();
        }
        // Another message's engagement is not this campaign's.
        lists
            .note_engagement("<2@s.test>", "ann@a.test", Engagement::Unsubscribe)
            .unwrap();
        let r = lists.campaign_report(id).unwrap().unwrap();
        assert_eq!(r.state, "sent");
        assert_eq!((r.queued, r.skipped, r.pending), (1, 2, 0));
        assert_eq!((r.opened, r.clicked, r.unsubscribed), (1, 1, 0));
        assert_eq!(r.links["https://x/"], 2);
        assert_eq!(r.domains["a.test"].recipients, 2);
        assert_eq!(r.domains["a.test"].clicked, 1);
        assert_eq!(r.reasons["unsubscribed"], 1);
        assert!(lists.unfinished_campaigns().unwrap().is_empty());
        assert!(lists.campaign_report(id + 1).unwrap().is_none());
    }
}
