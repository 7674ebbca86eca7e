//! Engagement per campaign and recipient domain (opens, clicks, unsubscribes), clicks per link,
//! and the time from injection to delivery per lane, from the event table.
//!
//! A copy is a (recipient, Message-ID) pair; it belongs to the campaign its `injected` event
//! names (`campaign`, from the platform's `POST /api/campaigns`; `-` for mail without one,
//! such as a scenario's own campaign). Opens and clicks are counted once per copy however
//! often they happened (the recipient opened it; a click counts as an open), from whichever
//! side logged them: the MTA's tracking endpoints or the simulated recipients.

use crate::deliverability::{nums, strs, taken};
use crate::figures::Run;
use crate::figures::is;
use polars::prelude::*;

/// One campaign's copies to one recipient domain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CampaignRow {
    pub campaign: String,
    pub domain: String,
    pub sent: u64,
    pub delivered: u64,
    pub opened: u64,
    pub clicked: u64,
    /// Unsubscribes the sender took (a 2xx answer, or a mailto mail accepted).
    pub unsubscribed: u64,
}

/// One link of a campaign: every click, and the recipients who clicked it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkRow {
    pub campaign: String,
    /// The original link (the MTA's `clicked` events name it); a recipient's own record of a
    /// click names the tracking URL it fetched, which is shown as `(tracked link)` and its
    /// host, since the link behind a token is the sender's to know.
    pub url: String,
    pub clicks: u64,
    pub recipients: u64,
}

/// One lane's deliveries and their time from injection to delivery (nearest-rank
/// percentiles, as summary.json's `lanes`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LaneRow {
    pub lane: String,
    pub delivered: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Engagement {
    pub campaigns: Vec<CampaignRow>,
    pub links: Vec<LinkRow>,
    /// Present when the log has transactional mail (an MTA with lanes).
    pub lanes: Vec<LaneRow>,
}

impl Engagement {
    /// Anything to show: a campaign, an open, a click or an unsubscribe.
    pub fn present(&self) -> bool {
        self.campaigns
            .iter()
            .any(|c| c.campaign != "-" || c.opened > 0 || c.clicked > 0 || c.unsubscribed > 0)
    }
}

/// The figures; `any_acts` says whether the log holds an open, a click or an unsubscribe at all
/// (known from an earlier pass over it): without any, the queries that count them are not run
/// (nothing counted, no link clicked).
pub(crate) fn compute(ev: &LazyFrame, engine: Engine, any_acts: bool) -> PolarsResult<Engagement> {
    let mut out = Engagement::default();
    let campaign = col("campaign")
        .cast(DataType::String)
        .fill_null(lit("-"))
        .alias("campaign");
    let rcpt = col("rcpt").str().to_lowercase().alias("rcpt");
    let sent = ev.clone().filter(is("injected")).select([
        col("msg"),
        col("ts_ms").alias("injected_ms"),
        col("message_id"),
        rcpt.clone(),
        col("domain"),
        campaign,
        col("lane").fill_null(lit("bulk")).alias("lane"),
    ]);
    let delivered = ev
        .clone()
        .filter(is("delivered"))
        .group_by([col("msg")])
        .agg([col("ts_ms").min().alias("delivered_ms")]);
    let fates = sent.clone().join(
        delivered,
        [col("msg")],
        [col("msg")],
        JoinArgs::new(JoinType::Left),
    );
    let per_domain = fates
        .clone()
        .group_by([col("campaign"), col("domain")])
        .agg([
            len().alias("sent"),
            col("delivered_ms").count().alias("delivered"),
            col("lane")
                .eq(lit("transactional"))
                .sum()
                .alias("transactional"),
        ]);
    // Each copy's campaign and domain (a whole message for many recipients is a copy each).
    let copies = sent
        .clone()
        .select([
            col("message_id"),
            col("rcpt"),
            col("campaign"),
            col("domain"),
        ])
        .unique(None, UniqueKeepStrategy::First);
    let acts = ev
        .clone()
        .filter(is("opened").or(is("clicked")).or(is("unsubscribed")))
        .select([
            col("type"),
            rcpt,
            col("message_id"),
            col("url"),
            col("http_status"),
        ])
        .join(
            copies,
            [col("message_id"), col("rcpt")],
            [col("message_id"), col("rcpt")],
            JoinArgs::new(JoinType::Inner),
        );
    let counted = |kind: &str, keep: Expr| {
        acts.clone()
            .filter(keep)
            .select([
                col("campaign"),
                col("domain"),
                col("rcpt"),
                col("message_id"),
            ])
            .unique(None, UniqueKeepStrategy::First)
            .group_by([col("campaign"), col("domain")])
            .agg([len().alias(kind)])
    };
    let mut table = per_domain;
    for (kind, keep) in [
        // A click is an open too (the images may have been blocked), as senders count it.
        ("opened", is("opened").or(is("clicked"))),
        ("clicked", is("clicked")),
        ("unsubscribed", is("unsubscribed").and(taken())),
    ] {
        table = if any_acts {
            table.join(
                counted(kind, keep),
                [col("campaign"), col("domain")],
                [col("campaign"), col("domain")],
                JoinArgs::new(JoinType::Left),
            )
        } else {
            // No copy was acted on: none counted (null, as the join leaves a copy without).
            table.with_column(lit(NULL).cast(IDX_DTYPE).alias(kind))
        };
    }
    let table = table
        .sort(["campaign", "domain"], SortMultipleOptions::default())
        .run(engine)?;
    let (c, d, s, dl, o, k, u) = (
        strs(&table, "campaign")?,
        strs(&table, "domain")?,
        nums(&table, "sent")?,
        nums(&table, "delivered")?,
        nums(&table, "opened")?,
        nums(&table, "clicked")?,
        nums(&table, "unsubscribed")?,
    );
    // A copy injected in the transactional lane (delivered or not): the lanes' times are worth
    // a query (which keeps them only if one was delivered).
    let transactional = nums(&table, "transactional")?.iter().any(|&n| n > 0);
    for i in 0..table.height() {
        out.campaigns.push(CampaignRow {
            campaign: c[i].clone(),
            domain: d[i].clone(),
            sent: s[i],
            delivered: dl[i],
            opened: o[i],
            clicked: k[i],
            unsubscribed: u[i],
        });
    }
    let tracked = col("url").str().contains(lit("/t/c/"), true);
    let link = when(tracked)
        .then(lit("(tracked link) ") + col("url").str().extract(lit(r"^(\w+://[^/]+)"), 1))
        .otherwise(col("url"))
        .alias("link");
    if !any_acts {
        // No click: no link to show.
        return lanes(fates, engine, transactional, out);
    }
    let links = acts
        .filter(is("clicked"))
        .select([col("campaign"), link, col("rcpt")])
        .group_by([col("campaign"), col("link")])
        .agg([
            len().alias("clicks"),
            col("rcpt").n_unique().alias("recipients"),
        ])
        .sort(
            ["campaign", "clicks", "link"],
            SortMultipleOptions::default().with_order_descending_multi([false, true, false]),
        )
        .run(engine)?;
    let (c, l, n, r) = (
        strs(&links, "campaign")?,
        strs(&links, "link")?,
        nums(&links, "clicks")?,
        nums(&links, "recipients")?,
    );
    for i in 0..links.height() {
        out.links.push(LinkRow {
            campaign: c[i].clone(),
            url: l[i].clone(),
            clicks: n[i],
            recipients: r[i],
        });
    }
    lanes(fates, engine, transactional, out)
}

/// The lanes' times from injection to delivery, when the log has transactional mail.
fn lanes(
    fates: LazyFrame,
    engine: Engine,
    transactional: bool,
    mut out: Engagement,
) -> PolarsResult<Engagement> {
    if !transactional {
        return Ok(out);
    }
    let times = fates
        .filter(col("delivered_ms").is_not_null())
        .select([
            col("lane"),
            (col("delivered_ms").cast(DataType::Int64) - col("injected_ms").cast(DataType::Int64))
                .alias("ms"),
        ])
        .run(engine)?;
    let (lanes, ms) = (strs(&times, "lane")?, nums(&times, "ms")?);
    if lanes.iter().any(|l| l == "transactional") {
        let mut by: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        for (l, m) in lanes.into_iter().zip(ms) {
            by.entry(l).or_default().push(m);
        }
        for (lane, ms) in by {
            let s = mailsim_summary::LaneSummary::of(ms);
            out.lanes.push(LaneRow {
                lane,
                delivered: s.delivered,
                p50_ms: s.p50_ms,
                p99_ms: s.p99_ms,
                max_ms: s.max_ms,
            });
        }
    }
    Ok(out)
}
