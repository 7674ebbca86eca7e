//! Every figure of the report, computed with polars from `events.parquet`.

use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// One row of `domains.csv`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainRow {
    pub domain: String,
    pub injected: u64,
    pub delivered: u64,
    pub bounced_hard: u64,
    pub bounced_soft: u64,
    pub deferred: u64,
    pub expired: u64,
    pub suppressed: u64,
    pub delivery_rate: f64,
    pub p50_s: Option<f64>,
    pub p90_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub attempts_per_message: f64,
    /// Temporary failures (deferred events) per injected message.
    pub deferrals_per_message: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthRow {
    pub domain: String,
    pub messages: u64,
    pub spf_pass: u64,
    pub dkim_pass: u64,
    pub dmarc_pass: u64,
}

/// One group of identical DMARC results, as a receiving domain saw them.
#[derive(Debug, Clone, PartialEq)]
pub struct DmarcRow {
    pub receiver: String,
    pub header_from: String,
    /// The envelope sender's domain (what SPF checked).
    pub mail_from_domain: String,
    pub source_ip: String,
    pub spf: String,
    pub dkim: String,
    pub dmarc: String,
    /// Whether the receiver stored these messages (else it refused them after its verdict).
    pub stored: bool,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub scenario: String,
    pub seed: u64,
    pub mode: String,
    pub events: u64,
    pub first_ts_ms: u64,
    pub last_ts_ms: u64,
    pub totals: DomainRow,
    pub domains: Vec<DomainRow>,
    /// (domain, reason, count), most frequent first.
    pub reasons: Vec<(String, String, u64)>,
    /// (domain, code, enhanced, text, count), most frequent first.
    pub replies: Vec<(String, u32, String, String, u64)>,
    /// Bucket width of the time series, seconds.
    pub bucket_s: f64,
    /// (bucket start, s since the first record; delivered messages per second).
    pub throughput: Vec<(f64, f64)>,
    /// (bucket start; messages queued at its end).
    pub queue_depth: Vec<(f64, f64)>,
    /// Time-to-deliver histogram: (bin lower edge s, bin upper edge s, messages).
    pub ttd_histogram: Vec<(f64, f64, u64)>,
    pub auth: Vec<AuthRow>,
    pub dmarc: Vec<DmarcRow>,
    pub dsns_queued: u64,
    pub suppression_added: u64,
    pub reports_received: BTreeMap<String, u64>,
    /// Placement, reputation and engagement (runs with a reputation model).
    pub deliverability: crate::deliverability::Deliverability,
    /// Outbound TLS per destination (the MTA's `tls` events: what TLS-RPT reports count).
    pub tls: Vec<TlsRow>,
    /// Opens, clicks and unsubscribes per campaign and domain, clicks per link, lanes.
    pub engagement: crate::engagement::Engagement,
}

/// One destination's STARTTLS sessions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsRow {
    pub domain: String,
    /// `opportunistic`, `required`, `sts-enforce`, `sts-testing` (that of the most frequent
    /// outcome).
    pub policy: String,
    /// Sessions that went on encrypted, in clear, and MX hosts the policy kept mail from.
    pub encrypted: u64,
    pub clear: u64,
    pub skipped: u64,
    /// Failures (RFC 8460 result types) and their counts, most frequent first.
    pub failures: Vec<(String, u64)>,
}

pub(crate) fn is(kind: &str) -> Expr {
    col("type").eq(lit(kind))
}

fn u64_at(df: &DataFrame, name: &str, i: usize) -> PolarsResult<u64> {
    Ok(df
        .column(name)?
        .cast(&DataType::UInt64)?
        .u64()?
        .get(i)
        .unwrap_or(0))
}

fn f64_opt(df: &DataFrame, name: &str, i: usize) -> PolarsResult<Option<f64>> {
    Ok(df.column(name)?.cast(&DataType::Float64)?.f64()?.get(i))
}

fn str_at(df: &DataFrame, name: &str, i: usize) -> PolarsResult<String> {
    Ok(df
        .column(name)?
        .cast(&DataType::String)?
        .str()?
        .get(i)
        .unwrap_or("")
        .to_string())
}

/// Per message: domain, injection time, final fate (`delivered`, `bounced`, `expired`, or
/// `queued`), hardness, reason, attempts, time of the final event.
fn messages(ev: &LazyFrame, external: bool) -> PolarsResult<LazyFrame> {
    let injected = ev.clone().filter(is("injected")).select([
        col("msg"),
        col("domain"),
        col("ts_ms").alias("ts_injected"),
        col("message_id"),
        col("rcpt").str().to_lowercase().alias("rcpt_lc"),
    ]);
    let finals = if external {
        // Measuring another MTA (as summary.json): a copy the fleet stored is the delivery; a
        // DSN of the other MTA's that says failed (or, without an Action, gives a hard reason)
        // is the bounce, or the expiry when its status is temporary. The first word counts,
        // matched by (Message-ID, recipient) whatever the order in the log.
        let stored = ev.clone().filter(is("stored")).select([
            col("message_id"),
            col("rcpt").str().to_lowercase().alias("rcpt_lc"),
            col("ts_ms"),
            col("seq"),
            lit("delivered").alias("fate"),
            lit(NULL).cast(DataType::Boolean).alias("hard"),
            lit(NULL).cast(DataType::String).alias("reason"),
        ]);
        let action = detail_str("action");
        let dsns = ev
            .clone()
            .filter(
                is("report_received")
                    .and(detail_str("kind").eq(lit("bounce")))
                    .and(col("message_id").is_not_null())
                    .and(
                        action
                            .clone()
                            .eq(lit("failed"))
                            .or(action.is_null().and(col("hard").eq(lit(true)))),
                    ),
            )
            .select([
                col("message_id"),
                col("rcpt").str().to_lowercase().alias("rcpt_lc"),
                col("ts_ms"),
                col("seq"),
                when(detail_str("status").str().starts_with(lit("4")))
                    .then(lit("expired"))
                    .otherwise(lit("bounced"))
                    .alias("fate"),
                col("hard"),
                col("reason"),
            ]);
        concat([stored, dsns], UnionArgs::default())?
            .join(
                injected
                    .clone()
                    .select([col("msg"), col("message_id"), col("rcpt_lc")]),
                [col("message_id"), col("rcpt_lc")],
                [col("message_id"), col("rcpt_lc")],
                JoinArgs::new(JoinType::Inner),
            )
            .sort(["seq"], SortMultipleOptions::default())
            .group_by_stable([col("msg")])
            .agg([
                col("fate").first(),
                col("hard").first(),
                col("reason").first(),
                col("ts_ms").first().alias("ts_final"),
            ])
            .with_columns([lit(NULL).cast(DataType::UInt32).alias("attempts")])
    } else {
        ev.clone()
            .filter(
                col("type")
                    .eq(lit("delivered"))
                    .or(col("type").eq(lit("bounced")))
                    .or(col("type").eq(lit("expired"))),
            )
            .sort(["seq"], SortMultipleOptions::default())
            .group_by_stable([col("msg")])
            .agg([
                col("type").last().alias("fate"),
                col("hard").last(),
                col("reason").last(),
                col("attempts").last(),
                col("ts_ms").last().alias("ts_final"),
            ])
    };
    let deferrals = ev
        .clone()
        .filter(is("deferred"))
        .group_by([col("msg")])
        .agg([
            col("attempts").max().alias("deferred_attempts"),
            len().alias("deferrals"),
        ]);
    Ok(injected
        .join(
            finals,
            [col("msg")],
            [col("msg")],
            JoinArgs::new(JoinType::Left),
        )
        .join(
            deferrals,
            [col("msg")],
            [col("msg")],
            JoinArgs::new(JoinType::Left),
        )
        .with_columns([
            col("fate").fill_null(lit("queued")),
            ((col("ts_final").cast(DataType::Float64)
                - col("ts_injected").cast(DataType::Float64))
                / lit(1000.0))
            .alias("latency_s"),
            col("attempts")
                .cast(DataType::UInt64)
                .fill_null(col("deferred_attempts").cast(DataType::UInt64))
                .fill_null(lit(0u64))
                .alias("attempts_n"),
            col("deferrals").cast(DataType::UInt64).fill_null(lit(0u64)),
        ]))
}

/// Time to deliver (p50/p90/p99 of delivered messages), attempts and deferrals per message:
/// the same for one domain and for all.
fn delivery_aggs() -> [Expr; 5] {
    let latency = |q: f64, name: &str| {
        col("latency_s")
            .filter(col("fate").eq(lit("delivered")))
            .quantile(lit(q), QuantileMethod::Linear)
            .alias(name)
    };
    [
        latency(0.5, "p50"),
        latency(0.9, "p90"),
        latency(0.99, "p99"),
        col("attempts_n")
            .cast(DataType::Float64)
            .mean()
            .alias("attempts"),
        col("deferrals")
            .cast(DataType::Float64)
            .mean()
            .alias("deferrals"),
    ]
}

/// The first word of a reason (`"hostunknown: NXDOMAIN"` -> `hostunknown`), as summary.json.
fn reason_word(e: Expr) -> Expr {
    e.str().extract(lit(r"^([^: ]*)"), 1)
}

/// The columns the figures use.
fn used_columns() -> [Expr; 32] {
    [
        col("seq"),
        col("ts_ms"),
        col("type"),
        col("msg"),
        col("message_id"),
        col("rcpt"),
        col("domain"),
        col("conn"),
        col("host"),
        col("session"),
        col("peer"),
        col("code"),
        col("enhanced"),
        col("text"),
        col("attempts"),
        col("reason"),
        // A bounce's `hard` may be left out of its JSON (false by the schema's default).
        col("hard").fill_null(lit(false)),
        col("spf"),
        col("dkim"),
        col("dmarc"),
        col("header_from"),
        col("mail_from"),
        col("folder"),
        col("cause"),
        col("http_status"),
        col("policy"),
        col("result"),
        col("outcome"),
        col("campaign"),
        col("lane"),
        col("url"),
        col("detail"),
    ]
}

/// A string field of `detail` (`"key":"value"`), as polars extracts it.
pub(crate) fn detail_str(key: &str) -> Expr {
    col("detail")
        .str()
        .extract(lit(format!(r#""{key}":"((?:[^"\\]|\\.)*)""#)), 1)
}

/// Runs a query with the engine the figures are computed with.
pub(crate) trait Run {
    fn run(self, engine: Engine) -> PolarsResult<DataFrame>;
}

impl Run for LazyFrame {
    fn run(self, engine: Engine) -> PolarsResult<DataFrame> {
        let opts = self.get_current_optimizations();
        LazyFrame::collect_all_with_engine(vec![self.logical_plan], engine, opts)?
            .pop()
            .ok_or_else(|| PolarsError::ComputeError("a query gave no result".into()))
    }
}

/// The figures of `events.parquet`, computed by polars' streaming engine: the file is read in
/// row groups by each query, in memory bounded by what the queries keep (one row per message
/// at most), not by the log's size.
pub fn compute_from_parquet(parquet: &Path) -> PolarsResult<Figures> {
    let table = LazyFrame::scan_parquet(
        PlRefPath::new(parquet.to_string_lossy().as_ref()),
        ScanArgsParquet::default(),
    )?;
    compute_with(table.select(used_columns()), Engine::Streaming)
}

/// The figures of an event table held in memory (the rows `events.parquet` holds), computed by
/// polars' in-memory engine: the same figures as [`compute_from_parquet`] gives for its file.
pub fn compute(table: &DataFrame) -> PolarsResult<Figures> {
    compute_with(
        table.clone().lazy().select(used_columns()),
        Engine::InMemory,
    )
}

fn compute_with(ev: LazyFrame, engine: Engine) -> PolarsResult<Figures> {
    let mut f = Figures::default();
    let meta = ev
        .clone()
        .select([
            len().alias("events"),
            col("ts_ms").min().alias("first"),
            col("ts_ms").max().alias("last"),
            detail_str("scenario")
                .filter(is("run_started"))
                .first()
                .alias("scenario"),
            col("detail")
                .filter(is("run_started"))
                .first()
                .str()
                .extract(lit(r#""seed":(\d+)"#), 1)
                .cast(DataType::UInt64)
                .alias("seed"),
            detail_str("mode")
                .filter(is("run_started"))
                .first()
                .alias("mode"),
            is("dsn_queued").sum().alias("dsns"),
            is("opened")
                .or(is("clicked"))
                .or(is("unsubscribed"))
                .sum()
                .alias("acts"),
            is("suppression_added").sum().alias("supp_added"),
        ])
        .run(engine)?;
    f.events = u64_at(&meta, "events", 0)?;
    f.first_ts_ms = u64_at(&meta, "first", 0)?;
    f.last_ts_ms = u64_at(&meta, "last", 0)?;
    f.scenario = str_at(&meta, "scenario", 0)?;
    f.seed = u64_at(&meta, "seed", 0)?;
    f.mode = str_at(&meta, "mode", 0)?;
    f.dsns_queued = u64_at(&meta, "dsns", 0)?;
    f.suppression_added = u64_at(&meta, "supp_added", 0)?;
    let acts = u64_at(&meta, "acts", 0)? > 0;
    let external = f.mode == "external";

    let received = ev
        .clone()
        .filter(is("report_received"))
        .group_by([detail_str("kind").alias("report_kind")])
        .agg([len().alias("n")])
        .run(engine)?;
    for i in 0..received.height() {
        f.reports_received.insert(
            str_at(&received, "report_kind", i)?,
            u64_at(&received, "n", i)?,
        );
    }

    f.tls = tls_rows(&ev, engine)?;

    // Materialised once: every figure below starts from these rows.
    let msgs = messages(&ev, external)?.run(engine)?.lazy();
    let suppressed = ev
        .clone()
        .filter(is("suppressed"))
        .group_by([col("domain")])
        .agg([len().alias("suppressed")]);
    let fate = |name: &str| col("fate").eq(lit(name)).cast(DataType::UInt64).sum();
    let per_domain = msgs
        .clone()
        .group_by([col("domain")])
        .agg(
            [
                len().alias("injected"),
                fate("delivered").alias("delivered"),
                (col("fate")
                    .eq(lit("bounced"))
                    .and(col("hard").eq(lit(true))))
                .cast(DataType::UInt64)
                .sum()
                .alias("bounced_hard"),
                (col("fate")
                    .eq(lit("bounced"))
                    .and(col("hard").eq(lit(true)).not()))
                .cast(DataType::UInt64)
                .sum()
                .alias("bounced_soft"),
                fate("queued").alias("deferred"),
                fate("expired").alias("expired"),
            ]
            .into_iter()
            .chain(delivery_aggs())
            .collect::<Vec<_>>(),
        )
        .join(
            suppressed,
            [col("domain")],
            [col("domain")],
            JoinArgs::new(JoinType::Full).with_coalesce(JoinCoalesce::CoalesceColumns),
        )
        .sort(["domain"], SortMultipleOptions::default())
        .run(engine)?;
    for i in 0..per_domain.height() {
        let injected = u64_at(&per_domain, "injected", i)?;
        let delivered = u64_at(&per_domain, "delivered", i)?;
        f.domains.push(DomainRow {
            domain: str_at(&per_domain, "domain", i)?,
            injected,
            delivered,
            bounced_hard: u64_at(&per_domain, "bounced_hard", i)?,
            bounced_soft: u64_at(&per_domain, "bounced_soft", i)?,
            deferred: u64_at(&per_domain, "deferred", i)?,
            expired: u64_at(&per_domain, "expired", i)?,
            suppressed: u64_at(&per_domain, "suppressed", i)?,
            delivery_rate: if injected > 0 {
                delivered as f64 / injected as f64
            } else {
                0.0
            },
            p50_s: f64_opt(&per_domain, "p50", i)?,
            p90_s: f64_opt(&per_domain, "p90", i)?,
            p99_s: f64_opt(&per_domain, "p99", i)?,
            attempts_per_message: f64_opt(&per_domain, "attempts", i)?.unwrap_or(0.0),
            deferrals_per_message: f64_opt(&per_domain, "deferrals", i)?.unwrap_or(0.0),
        });
    }
    let all = msgs.clone().select(delivery_aggs()).run(engine)?;
    let t = &mut f.totals;
    t.domain = "all domains".into();
    for d in &f.domains {
        t.injected += d.injected;
        t.delivered += d.delivered;
        t.bounced_hard += d.bounced_hard;
        t.bounced_soft += d.bounced_soft;
        t.deferred += d.deferred;
        t.expired += d.expired;
        t.suppressed += d.suppressed;
    }
    t.delivery_rate = if t.injected > 0 {
        t.delivered as f64 / t.injected as f64
    } else {
        0.0
    };
    t.p50_s = f64_opt(&all, "p50", 0)?;
    t.p90_s = f64_opt(&all, "p90", 0)?;
    t.p99_s = f64_opt(&all, "p99", 0)?;
    t.attempts_per_message = f64_opt(&all, "attempts", 0)?.unwrap_or(0.0);
    t.deferrals_per_message = f64_opt(&all, "deferrals", 0)?.unwrap_or(0.0);

    // Reasons: every bounced or expired event of a campaign message (as summary.json counts);
    // measuring another MTA, the fate each message took from its DSN.
    let campaign = msgs.clone().select([col("msg"), col("domain")]);
    let reasons = if external {
        msgs.clone()
            .filter(
                col("fate")
                    .eq(lit("bounced"))
                    .or(col("fate").eq(lit("expired"))),
            )
            .select([
                col("domain"),
                when(col("fate").eq(lit("expired")))
                    .then(lit("expired"))
                    .otherwise(reason_word(col("reason")))
                    .alias("reason_word"),
            ])
    } else {
        ev.clone()
            .filter(
                col("type")
                    .eq(lit("bounced"))
                    .or(col("type").eq(lit("expired"))),
            )
            .select([
                col("msg"),
                when(is("expired"))
                    .then(lit("expired"))
                    .otherwise(reason_word(col("reason")))
                    .alias("reason_word"),
            ])
            .join(
                campaign,
                [col("msg")],
                [col("msg")],
                JoinArgs::new(JoinType::Inner),
            )
            .select([col("domain"), col("reason_word")])
    };
    let reasons = reasons
        .group_by([col("domain"), col("reason_word")])
        .agg([len().alias("n")])
        .sort(
            ["n", "domain", "reason_word"],
            SortMultipleOptions::default().with_order_descending_multi([true, false, false]),
        )
        .run(engine)?;
    for i in 0..reasons.height() {
        f.reasons.push((
            str_at(&reasons, "domain", i)?,
            str_at(&reasons, "reason_word", i)?,
            u64_at(&reasons, "n", i)?,
        ));
    }

    // SMTP replies by destination domain (the connection's), grouped by code, enhanced code
    // and the text with its variable parts taken out.
    let conns = ev
        .clone()
        .filter(is("conn_opened"))
        .select([col("conn"), col("domain")]);
    let replies = ev
        .clone()
        .filter(is("smtp_reply"))
        .select([col("conn"), col("code"), col("enhanced"), col("text")])
        .join(
            conns,
            [col("conn")],
            [col("conn")],
            JoinArgs::new(JoinType::Left),
        )
        .group_by([
            col("domain").fill_null(lit("(none)")),
            col("code"),
            col("enhanced").fill_null(lit("")),
            normalised_reply_text(col("text").fill_null(lit(""))),
        ])
        .agg([len().alias("n")])
        .sort(
            ["n", "domain", "code", "enhanced", "text"],
            SortMultipleOptions::default()
                .with_order_descending_multi([true, false, false, false, false]),
        )
        .limit(200)
        .run(engine)?;
    for i in 0..replies.height() {
        f.replies.push((
            str_at(&replies, "domain", i)?,
            u64_at(&replies, "code", i)? as u32,
            str_at(&replies, "enhanced", i)?,
            str_at(&replies, "text", i)?,
            u64_at(&replies, "n", i)?,
        ));
    }

    // Time series: buckets of about 1/200 of the run, at least a second.
    let span_s = (f.last_ts_ms.saturating_sub(f.first_ts_ms)) as f64 / 1000.0;
    let bucket_s = (span_s / 200.0).max(1.0).ceil();
    f.bucket_s = bucket_s;
    let bucket_of = |ts: Expr| {
        ((ts.cast(DataType::Float64) - lit(f.first_ts_ms as f64)) / lit(bucket_s * 1000.0))
            .floor()
            .cast(DataType::Int64)
    };
    let buckets = (span_s / bucket_s).floor() as i64 + 1;
    let delivered = msgs
        .clone()
        .filter(col("fate").eq(lit("delivered")))
        .group_by([bucket_of(col("ts_final")).alias("b")])
        .agg([len().alias("n")])
        .run(engine)?;
    let mut per_bucket = vec![0u64; buckets.max(1) as usize];
    for i in 0..delivered.height() {
        let b = delivered.column("b")?.i64()?.get(i).unwrap_or(0);
        if let Some(slot) = per_bucket.get_mut(b.max(0) as usize) {
            *slot += u64_at(&delivered, "n", i)?;
        }
    }
    f.throughput = per_bucket
        .iter()
        .enumerate()
        .map(|(i, &n)| (i as f64 * bucket_s, n as f64 / bucket_s))
        .collect();
    let ins = msgs.clone().select([
        bucket_of(col("ts_injected")).alias("b"),
        lit(1i64).alias("d"),
    ]);
    let outs = msgs
        .clone()
        .filter(col("fate").neq(lit("queued")))
        .select([bucket_of(col("ts_final")).alias("b"), lit(-1i64).alias("d")]);
    let depth = concat([ins, outs], UnionArgs::default())?
        .group_by([col("b")])
        .agg([col("d").sum()])
        .sort(["b"], SortMultipleOptions::default())
        .with_column(col("d").cum_sum(false).cast(DataType::Int64).alias("depth"))
        .run(engine)?;
    let mut level = 0i64;
    let mut j = 0;
    for b in 0..buckets.max(1) {
        while j < depth.height() && depth.column("b")?.i64()?.get(j).unwrap_or(0) <= b {
            level = depth.column("depth")?.i64()?.get(j).unwrap_or(level);
            j += 1;
        }
        f.queue_depth.push((b as f64 * bucket_s, level as f64));
    }

    // Time to deliver: powers-of-two bins from 1 s (sub-second deliveries in the first).
    let ttd = msgs
        .clone()
        .filter(col("fate").eq(lit("delivered")))
        .select([when(col("latency_s").lt(lit(1.0)))
            .then(lit(0.0))
            .otherwise(col("latency_s").log(lit(2.0)).floor() + lit(1.0))
            .cast(DataType::Int64)
            .alias("bin")])
        .group_by([col("bin")])
        .agg([len().alias("n")])
        .sort(["bin"], SortMultipleOptions::default())
        .run(engine)?;
    for i in 0..ttd.height() {
        let bin = ttd.column("bin")?.i64()?.get(i).unwrap_or(0);
        let (lo, hi) = if bin == 0 {
            (0.0, 1.0)
        } else {
            (2f64.powi(bin as i32 - 1), 2f64.powi(bin as i32))
        };
        f.ttd_histogram.push((lo, hi, u64_at(&ttd, "n", i)?));
    }

    // Receivers' verdicts, by the recipient's domain of the stored copy.
    // The receiving domain of an MX host: the recipients' domain of what it stored or refused
    // (a host serves one domain in a fleet; one that refused everything, as a DMARC-enforcing
    // receiver may, stored nothing); one row per host, so the join below is cheap.
    let host_domain = ev
        .clone()
        .filter(is("stored").or(is("refused").and(col("rcpt").str().contains(lit("@"), true))))
        .group_by([col("host")])
        .agg([col("rcpt")
            .first()
            .str()
            .to_lowercase()
            .str()
            .extract(lit(r"@(.*)$"), 1)
            .alias("rcpt_domain")]);
    let sessions = ev.clone().filter(is("session_accepted")).select([
        col("host"),
        col("session"),
        col("peer")
            .str()
            .extract(lit(r"^\[?([^\]]*?)\]?:\d+$"), 1)
            .alias("source_ip"),
    ]);
    // What the receiver did with each message it gave a verdict: stored it, or not.
    let stored_messages = ev
        .clone()
        .filter(is("stored"))
        .group_by([col("host"), col("session"), col("message_id")])
        .agg([len().gt(lit(0)).alias("was_stored")]);
    let verdicts = ev
        .clone()
        .filter(is("auth_verdict"))
        .select([
            col("host"),
            col("session"),
            col("message_id"),
            col("spf"),
            col("dkim"),
            col("dmarc"),
            col("header_from"),
            col("mail_from")
                .str()
                .extract(lit(r"@([^@]*)$"), 1)
                .str()
                .to_lowercase()
                .alias("mail_from_domain"),
        ])
        .join(
            host_domain,
            [col("host")],
            [col("host")],
            JoinArgs::new(JoinType::Left),
        )
        .join(
            sessions,
            [col("host"), col("session")],
            [col("host"), col("session")],
            JoinArgs::new(JoinType::Left),
        )
        .join(
            stored_messages,
            [col("host"), col("session"), col("message_id")],
            [col("host"), col("session"), col("message_id")],
            JoinArgs::new(JoinType::Left),
        )
        .with_columns([
            col("rcpt_domain").fill_null(lit("(unknown)")),
            col("source_ip").fill_null(lit("0.0.0.0")),
            col("was_stored").fill_null(lit(false)),
        ])
        .run(engine)?
        .lazy();
    let auth = verdicts
        .clone()
        .group_by([col("rcpt_domain")])
        .agg([
            len().alias("n"),
            col("spf")
                .eq(lit("pass"))
                .cast(DataType::UInt64)
                .sum()
                .alias("spf"),
            col("dkim")
                .eq(lit("pass"))
                .cast(DataType::UInt64)
                .sum()
                .alias("dkim"),
            col("dmarc")
                .eq(lit("pass"))
                .cast(DataType::UInt64)
                .sum()
                .alias("dmarc"),
        ])
        .sort(["rcpt_domain"], SortMultipleOptions::default())
        .run(engine)?;
    for i in 0..auth.height() {
        f.auth.push(AuthRow {
            domain: str_at(&auth, "rcpt_domain", i)?,
            messages: u64_at(&auth, "n", i)?,
            spf_pass: u64_at(&auth, "spf", i)?,
            dkim_pass: u64_at(&auth, "dkim", i)?,
            dmarc_pass: u64_at(&auth, "dmarc", i)?,
        });
    }
    let dmarc = verdicts
        .group_by([
            col("rcpt_domain"),
            col("header_from"),
            col("mail_from_domain").fill_null(lit("")),
            col("source_ip"),
            col("spf"),
            col("dkim"),
            col("dmarc"),
            col("was_stored"),
        ])
        .agg([len().alias("n")])
        .sort(
            [
                "rcpt_domain",
                "header_from",
                "mail_from_domain",
                "source_ip",
                "spf",
                "dkim",
                "dmarc",
                "was_stored",
            ],
            SortMultipleOptions::default(),
        )
        .run(engine)?;
    for i in 0..dmarc.height() {
        f.dmarc.push(DmarcRow {
            receiver: str_at(&dmarc, "rcpt_domain", i)?,
            header_from: str_at(&dmarc, "header_from", i)?,
            mail_from_domain: str_at(&dmarc, "mail_from_domain", i)?,
            source_ip: str_at(&dmarc, "source_ip", i)?,
            spf: str_at(&dmarc, "spf", i)?,
            dkim: str_at(&dmarc, "dkim", i)?,
            dmarc: str_at(&dmarc, "dmarc", i)?,
            stored: dmarc.column("was_stored")?.bool()?.get(i).unwrap_or(false),
            count: u64_at(&dmarc, "n", i)?,
        });
    }
    f.deliverability =
        crate::deliverability::compute(&ev, engine, f.first_ts_ms, f.totals.delivered)?;
    f.engagement = crate::engagement::compute(&ev, engine, acts)?;
    Ok(f)
}

/// A reply text with what varies from one reply to the next taken out, so that replies of one
/// kind group together: an address in angle brackets becomes `<...>`, and a word with a digit
/// in it (a queue id, a count, a time, an IP address) becomes `N`. `250 2.0.0 OK queued as
/// 8F2A1` and `... as 77C03` are one row; `550 5.1.1 <a@x>: user unknown` and `<b@x>` are one.
fn normalised_reply_text(text: Expr) -> Expr {
    text.str()
        .replace_all(lit(r"<[^>]*>"), lit("<...>"), false)
        .str()
        .replace_all(lit(r"[^\s<>]*[0-9][^\s<>]*"), lit("N"), false)
        .alias("text")
}

/// Outbound TLS per destination, from the `tls` events.
fn tls_rows(ev: &LazyFrame, engine: Engine) -> PolarsResult<Vec<TlsRow>> {
    let t = ev
        .clone()
        .filter(is("tls"))
        .group_by([col("domain"), col("outcome"), col("result")])
        .agg([len().alias("n"), col("policy").last().alias("policy")])
        .sort(
            ["domain", "n", "outcome", "result"],
            SortMultipleOptions::default().with_order_descending_multi([false, true, false, false]),
        )
        .run(engine)?;
    let mut rows: Vec<TlsRow> = Vec::new();
    for i in 0..t.height() {
        let domain = str_at(&t, "domain", i)?;
        if rows.last().is_none_or(|r| r.domain != domain) {
            rows.push(TlsRow {
                domain,
                ..TlsRow::default()
            });
        }
        let Some(row) = rows.last_mut() else {
            continue;
        };
        let n = u64_at(&t, "n", i)?;
        if row.policy.is_empty() {
            row.policy = str_at(&t, "policy", i)?;
        }
        match str_at(&t, "outcome", i)?.as_str() {
            "encrypted" => row.encrypted += n,
            "skipped" => row.skipped += n,
            _ => row.clear += n,
        }
        let result = str_at(&t, "result", i)?;
        if result != "success" {
            match row.failures.iter_mut().find(|(r, _)| *r == result) {
                Some((_, m)) => *m += n,
                None => row.failures.push((result, n)),
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    /// A bounce whose JSON leaves `hard` out (the schema's default: false) is a soft bounce
    /// in the report, as in the summary (an independent review: it was neither).
    #[test]
    fn a_bounce_without_hard_is_soft() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.log");
        let mut bytes = b"MSIMLOG\0\x01\0\0\0".to_vec();
        for payload in [
            r#"{"seq":0,"ts":1000,"type":"run_started","scenario":"s","seed":1,"mode":"virtual"}"#,
            r#"{"seq":1,"ts":1000,"type":"injected","msg":1,"message_id":"<1@s>","from":"a@s.test","rcpt":"u@d.test","domain":"d.test","size":10}"#,
            r#"{"seq":2,"ts":2000,"type":"bounced","msg":1,"rcpt":"u@d.test","domain":"d.test","attempts":1,"reason":"userunknown"}"#,
            r#"{"seq":3,"ts":3000,"type":"run_finished","reason":"drained"}"#,
        ] {
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(payload.as_bytes()).to_le_bytes());
            bytes.extend_from_slice(payload.as_bytes());
        }
        std::fs::write(&log, bytes).unwrap();
        let parquet = dir.path().join("events.parquet");
        crate::table::export(&log, &parquet, &|_| {}).unwrap();
        let f = super::compute_from_parquet(&parquet).unwrap();
        assert_eq!((f.totals.bounced_hard, f.totals.bounced_soft), (0, 1));
    }
}
