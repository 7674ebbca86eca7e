//! Deliverability figures (runs with a reputation model): inbox placement per provider and
//! day, the providers' reputation of the sender over time, the engagement funnel, the causes
//! of spam-folder placement, and what to fix, all from the event table.

use crate::figures::Run;
use crate::figures::{detail_str, is};
use polars::prelude::*;

/// The funnel of a campaign, with rates as the providers compute them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Funnel {
    pub sent: u64,
    pub delivered: u64,
    pub inbox: u64,
    pub spam: u64,
    /// Copies opened (once each however many images) and clicked, by the recipients' account;
    /// unsubscriptions the sender's endpoint took (a 2xx answer, or a mailto mail accepted).
    pub opened: u64,
    pub clicked: u64,
    pub unsubscribed: u64,
    /// Unsubscribe requests that failed (no answer, or an error status): the recipient asked and
    /// is still on the list.
    pub unsubscribe_failed: u64,
    /// Opens whose images reached no tracking server (refused, unanswered or an error status):
    /// the sender did not see them.
    pub opens_unseen: u64,
    /// Complaints (ARF reports the sender received).
    pub complaints: u64,
}

impl Funnel {
    pub fn inbox_rate(&self) -> f64 {
        ratio(self.inbox, self.inbox + self.spam)
    }
    /// Opens per message placed (inbox or spam folder: people open a little in the spam
    /// folder too).
    pub fn open_rate(&self) -> f64 {
        ratio(self.opened, self.inbox + self.spam)
    }
    /// Clicks per opened message.
    pub fn click_rate(&self) -> f64 {
        ratio(self.clicked, self.opened)
    }
    /// Gmail's spam rate: complaints per message delivered to the inbox.
    pub fn complaint_rate(&self) -> f64 {
        ratio(self.complaints, self.inbox)
    }
    pub fn unsubscribe_rate(&self) -> f64 {
        ratio(self.unsubscribed, self.delivered)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deliverability {
    /// (provider, day, inbox, spam), by provider and day.
    pub placement: Vec<(String, u32, u64, u64)>,
    /// (provider, subject, day, score, cause) of each `reputation` event.
    pub reputation: Vec<(String, String, u32, u32, String)>,
    /// (cause, copies placed in the spam folder for it), most first.
    pub spam_causes: Vec<(String, u64)>,
    pub funnel: Funnel,
}

impl Deliverability {
    /// Did the run have a reputation model (any placement)?
    pub fn present(&self) -> bool {
        !self.placement.is_empty()
    }

    /// Inbox share per provider over the whole run.
    pub fn by_provider(&self) -> Vec<(String, u64, u64)> {
        let mut out: Vec<(String, u64, u64)> = Vec::new();
        for (p, _, inbox, spam) in &self.placement {
            match out.last_mut() {
                Some(last) if last.0 == *p => {
                    last.1 += inbox;
                    last.2 += spam;
                }
                _ => out.push((p.clone(), *inbox, *spam)),
            }
        }
        out
    }

    /// What to fix, from the causes of spam placement and of reputation losses.
    pub fn advice(&self) -> Vec<String> {
        let mut out = Vec::new();
        let losses = |cause: &str| {
            self.reputation
                .iter()
                .filter(|r| r.4 == cause)
                .map(|r| format!("{} {} day {}", r.0, r.1, r.2))
                .collect::<Vec<_>>()
        };
        let spam = |cause: &str| {
            self.spam_causes
                .iter()
                .find(|c| c.0 == cause)
                .map_or(0, |c| c.1)
        };
        let first = |v: Vec<String>| {
            let n = v.len();
            let shown: Vec<String> = v.into_iter().take(3).collect();
            format!(
                "{}{}",
                shown.join(", "),
                if n > 3 {
                    format!(" and {} more", n - 3)
                } else {
                    String::new()
                }
            )
        };
        let volume = losses("volume");
        if !volume.is_empty() {
            out.push(format!(
                "Slow the warm-up: providers throttled mail over a new IP's daily allowance and lowered its reputation ({}). Start with a few hundred a day per provider and at most double each day.",
                first(volume)
            ));
        }
        let list = [losses("unknown-users"), losses("spam-traps")].concat();
        if !list.is_empty() {
            out.push(format!(
                "Clean the list: unknown users and spam traps cost reputation ({}). Suppress hard bounces and remove addresses that never engage.",
                first(list)
            ));
        }
        // Days on which low engagement lowered a score.
        let engagement: Vec<String> = self
            .reputation
            .windows(2)
            .filter(|w| {
                let (a, b) = (&w[0], &w[1]);
                a.0 == b.0 && a.1 == b.1 && b.4 == "engagement" && b.3 < a.3
            })
            .map(|w| format!("{} {} day {}", w[1].0, w[1].1, w[1].2))
            .collect();
        if !engagement.is_empty() {
            out.push(format!(
                "Remove the unengaged: few recipients open what reaches their inbox, and providers lower the sender's reputation for it ({}). Sunset addresses with no open or click in the last sends.",
                first(engagement)
            ));
        }
        let no_one_click = spam("no-one-click-unsubscribe");
        if no_one_click > 0 {
            out.push(format!(
                "Add one-click unsubscribe: {no_one_click} bulk messages went to the spam folder for lacking RFC 8058 List-Unsubscribe-Post with an HTTPS List-Unsubscribe URI, which Gmail and Yahoo require of senders of more than 5,000 messages a day."
            ));
        }
        let auth = spam("authentication") + losses("authentication").len() as u64;
        if auth > 0 {
            out.push(format!(
                "Fix alignment: {} messages failed DMARC (SPF or DKIM must pass for the From domain).",
                spam("authentication")
            ));
        }
        let complaints = losses("complaints");
        if !complaints.is_empty() {
            out.push(format!(
                "Lower complaints: the spam rate crossed the providers' 0.1 % / 0.3 % lines ({}). Mail only those who asked, make unsubscribing easy.",
                first(complaints)
            ));
        }
        let content = spam("content");
        // A handful is the filter's noise on any mail; advice from 1 % of the placed copies.
        if content > 0 && content * 100 >= self.funnel.inbox + self.funnel.spam {
            out.push(format!(
                "Review the content: {content} messages went to the spam folder for their content (spam phrases, HTML without a text part, images without text, no List-Unsubscribe)."
            ));
        }
        if self.funnel.unsubscribe_failed > 0 {
            out.push(format!(
                "Fix the unsubscribe endpoint: {} unsubscribe requests failed, and those recipients are still on the list (they will complain next).",
                self.funnel.unsubscribe_failed
            ));
        }
        if self.funnel.opens_unseen > 0 {
            out.push(format!(
                "Check the tracking: {} of {} opens reached no tracking server (their image requests were refused, unanswered or failed), so the sender's open figures miss them.",
                self.funnel.opens_unseen, self.funnel.opened
            ));
        }
        out
    }
}

fn detail_u32(key: &str) -> Expr {
    col("detail")
        .str()
        .extract(lit(format!(r#""{key}":(\d+)"#)), 1)
        .cast(DataType::UInt32)
}

fn provider() -> Expr {
    col("rcpt")
        .str()
        .to_lowercase()
        .str()
        .extract(lit(r"@([^@]+)$"), 1)
        .alias("provider")
}

/// A 2xx answer to a recipient's request.
fn answered_2xx() -> Expr {
    col("http_status")
        .gt_eq(lit(200))
        .and(col("http_status").lt(lit(300)))
}

/// An unsubscribe the sender took: a 2xx answer, or (the mailto kind records the SMTP reply
/// code as its status) a 250.
pub(crate) fn taken() -> Expr {
    answered_2xx().or(col("http_status").eq(lit(250)))
}

pub(crate) fn strs(df: &DataFrame, name: &str) -> PolarsResult<Vec<String>> {
    let c = df.column(name)?.cast(&DataType::String)?;
    let ca = c.str()?;
    Ok((0..ca.len())
        .map(|i| ca.get(i).unwrap_or("").to_string())
        .collect())
}

pub(crate) fn nums(df: &DataFrame, name: &str) -> PolarsResult<Vec<u64>> {
    let c = df.column(name)?.cast(&DataType::UInt64)?;
    let ca = c.u64()?;
    Ok((0..ca.len()).map(|i| ca.get(i).unwrap_or(0)).collect())
}

/// The deliverability figures of the event table; `first_ts_ms` is day 0's start.
pub fn compute(
    ev: &LazyFrame,
    engine: Engine,
    first_ts_ms: u64,
    delivered: u64,
) -> PolarsResult<Deliverability> {
    let mut d = Deliverability::default();
    let day = ((col("ts_ms").cast(DataType::Int64) - lit(first_ts_ms as i64)) / lit(86_400_000i64))
        .cast(DataType::UInt32)
        .alias("day");
    let placed = ev
        .clone()
        .filter(is("placed"))
        .select([provider(), day.clone(), col("folder"), col("cause")])
        .run(engine)?
        .lazy();
    let per_day = placed
        .clone()
        .group_by([col("provider"), col("day")])
        .agg([
            col("folder")
                .eq(lit("inbox"))
                .cast(DataType::UInt64)
                .sum()
                .alias("inbox"),
            col("folder")
                .eq(lit("spam"))
                .cast(DataType::UInt64)
                .sum()
                .alias("spam"),
        ])
        .sort(["provider", "day"], SortMultipleOptions::default())
        .run(engine)?;
    let (p, days, inbox, spam) = (
        strs(&per_day, "provider")?,
        nums(&per_day, "day")?,
        nums(&per_day, "inbox")?,
        nums(&per_day, "spam")?,
    );
    for i in 0..per_day.height() {
        d.placement
            .push((p[i].clone(), days[i] as u32, inbox[i], spam[i]));
        d.funnel.inbox += inbox[i];
        d.funnel.spam += spam[i];
    }
    let causes = placed
        .filter(col("folder").eq(lit("spam")))
        .group_by([col("cause")])
        .agg([len().alias("n")])
        .sort(
            ["n", "cause"],
            SortMultipleOptions::default().with_order_descending_multi([true, false]),
        )
        .run(engine)?;
    for (c, n) in strs(&causes, "cause")?.into_iter().zip(nums(&causes, "n")?) {
        d.spam_causes.push((c, n));
    }
    let rep = ev
        .clone()
        .filter(is("reputation"))
        .select([
            detail_str("provider").alias("provider"),
            detail_str("subject").alias("subject"),
            detail_u32("day").alias("day"),
            detail_u32("score").alias("score"),
            col("cause"),
        ])
        .sort(
            ["provider", "subject", "day"],
            SortMultipleOptions::default(),
        )
        .run(engine)?;
    let (rp, rs, rd, rsc, rc) = (
        strs(&rep, "provider")?,
        strs(&rep, "subject")?,
        nums(&rep, "day")?,
        nums(&rep, "score")?,
        strs(&rep, "cause")?,
    );
    for i in 0..rep.height() {
        d.reputation.push((
            rp[i].clone(),
            rs[i].clone(),
            rd[i] as u32,
            rsc[i] as u32,
            rc[i].clone(),
        ));
    }
    // Copies acted on (distinct recipient and message) among the rows `filter` keeps.
    let copies = |filter: Expr| -> PolarsResult<u64> {
        let df = ev
            .clone()
            .filter(filter)
            .select([col("rcpt"), col("message_id")])
            .unique(None, UniqueKeepStrategy::First)
            .select([len().alias("n")])
            .run(engine)?;
        Ok(nums(&df, "n")?.first().copied().unwrap_or(0))
    };
    d.funnel.opened = copies(is("opened"))?;
    d.funnel.clicked = copies(is("clicked"))?;
    let ok = answered_2xx();
    let taken = taken();
    d.funnel.unsubscribed = copies(is("unsubscribed").and(taken.clone()))?;
    d.funnel.unsubscribe_failed = copies(is("unsubscribed").and(taken.not()))?;
    // An open the sender saw: any of its image requests answered 2xx.
    let seen = copies(is("opened").and(ok))?;
    d.funnel.opens_unseen = d.funnel.opened.saturating_sub(seen);
    let counts = ev
        .clone()
        .select([
            is("injected").cast(DataType::UInt64).sum().alias("sent"),
            (is("report_received").and(detail_str("kind").eq(lit("complaint"))))
                .cast(DataType::UInt64)
                .sum()
                .alias("complaints"),
        ])
        .run(engine)?;
    d.funnel.sent = nums(&counts, "sent")?.first().copied().unwrap_or(0);
    d.funnel.complaints = nums(&counts, "complaints")?.first().copied().unwrap_or(0);
    d.funnel.delivered = delivered;
    Ok(d)
}
