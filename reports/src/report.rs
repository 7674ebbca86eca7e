//! `mailsim report`: event log -> events.parquet -> figures (polars) -> charts (plotters) ->
//! report.html, CSV files and DMARC aggregate reports; and the side-by-side comparison of two
//! runs.

use crate::figures::{DomainRow, Figures};
use crate::{charts, dmarc, figures, html, table};
use indicatif::{ProgressBar, ProgressStyle};
use polars::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Table(#[from] table::TableError),
    #[error("computing the figures: {0}")]
    Polars(#[from] PolarsError),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Write {
        path: path.display().to_string(),
        source,
    }
}

/// What a report run produced.
pub struct Written {
    pub figures: Figures,
    pub files: Vec<PathBuf>,
    pub dmarc_reports: usize,
    pub torn: bool,
}

fn progress(show: bool, len: u64, what: &str) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

fn write_csv(df: &mut DataFrame, path: &Path) -> Result<(), ReportError> {
    let file = std::fs::File::create(path).map_err(write_err(path))?;
    CsvWriter::new(file).include_header(true).finish(df)?;
    Ok(())
}

fn opt_col(name: &str, v: Vec<Option<f64>>) -> Column {
    Series::new(name.into(), v).into_column()
}

fn domains_frame(rows: &[DomainRow]) -> PolarsResult<DataFrame> {
    let s = |name: &str, v: Vec<String>| Series::new(name.into(), v).into_column();
    let u = |name: &str, v: Vec<u64>| Series::new(name.into(), v).into_column();
    let f = |name: &str, v: Vec<f64>| Series::new(name.into(), v).into_column();
    DataFrame::new_infer_height(vec![
        s("domain", rows.iter().map(|d| d.domain.clone()).collect()),
        u("injected", rows.iter().map(|d| d.injected).collect()),
        u("delivered", rows.iter().map(|d| d.delivered).collect()),
        u(
            "bounced_hard",
            rows.iter().map(|d| d.bounced_hard).collect(),
        ),
        u(
            "bounced_soft",
            rows.iter().map(|d| d.bounced_soft).collect(),
        ),
        u("deferred", rows.iter().map(|d| d.deferred).collect()),
        u("expired", rows.iter().map(|d| d.expired).collect()),
        u("suppressed", rows.iter().map(|d| d.suppressed).collect()),
        f(
            "delivery_rate",
            rows.iter().map(|d| d.delivery_rate).collect(),
        ),
        opt_col("p50_s", rows.iter().map(|d| d.p50_s).collect()),
        opt_col("p90_s", rows.iter().map(|d| d.p90_s).collect()),
        opt_col("p99_s", rows.iter().map(|d| d.p99_s).collect()),
        f(
            "attempts_per_message",
            rows.iter().map(|d| d.attempts_per_message).collect(),
        ),
        f(
            "deferrals_per_message",
            rows.iter().map(|d| d.deferrals_per_message).collect(),
        ),
    ])
}

/// The DMARC records the run's scenario published, domain -> record, as its `run_started`
/// event recorded them (empty for a log that does not say).
pub fn published_dmarc(log: &Path) -> Result<BTreeMap<String, String>, ReportError> {
    let first = mailsim_events::LogReader::open(log)
        .map_err(table::TableError::from)?
        .next()
        .transpose()
        .map_err(table::TableError::from)?;
    Ok(match first.map(|r| r.event) {
        Some(mailsim_events::Event::RunStarted { dmarc_records, .. }) => dmarc_records,
        _ => BTreeMap::new(),
    })
}

/// Write the report of the run in `run_dir` into `out`, from its event log alone.
pub fn write_report(
    run_dir: &Path,
    out: &Path,
    show_progress: bool,
) -> Result<Written, ReportError> {
    let log = run_dir.join("events.log");
    let log_bytes = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    // A rough record count for the bar: about 110 bytes a record in the binary format, 230 in
    // JSON (format 1).
    let per_record = match mailsim_events::LogReader::open(&log).map(|r| r.format) {
        Ok(mailsim_events::Format::Json) => 230,
        _ => 110,
    };
    let bar = progress(show_progress, (log_bytes / per_record).max(1), "reading");
    // The log is checked as it is written to events.parquet, part by part; if it is damaged,
    // no file is left (nor `out`, when this made it).
    let made = !out.exists();
    std::fs::create_dir_all(out).map_err(write_err(out))?;
    let parquet = out.join("events.parquet");
    let exported = table::export(&log, &parquet, &|n| bar.inc(n));
    let exported = match exported {
        Ok(e) => e,
        Err(e) => {
            if made {
                let _ = std::fs::remove_dir(out);
            }
            return Err(e.into());
        }
    };
    let torn = exported.torn;
    bar.set_length(exported.rows);
    bar.finish_and_clear();
    let steps = progress(show_progress, 5, "report");
    let mut files = Vec::new();
    steps.set_message("figures");
    // The figures are read from events.parquet with polars' streaming engine.
    let f = figures::compute_from_parquet(&parquet)?;
    files.push(parquet.clone());
    steps.inc(2);
    steps.set_message("csv");
    let mut rows = f.domains.clone();
    rows.push(f.totals.clone());
    let path = out.join("domains.csv");
    write_csv(&mut domains_frame(&rows)?, &path)?;
    files.push(path);
    let path = out.join("reasons.csv");
    let mut reasons = DataFrame::new_infer_height(vec![
        Series::new(
            "domain".into(),
            f.reasons.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        )
        .into_column(),
        Series::new(
            "reason".into(),
            f.reasons.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        )
        .into_column(),
        Series::new(
            "messages".into(),
            f.reasons.iter().map(|r| r.2).collect::<Vec<_>>(),
        )
        .into_column(),
    ])?;
    write_csv(&mut reasons, &path)?;
    files.push(path);
    let path = out.join("replies.csv");
    let mut replies = DataFrame::new_infer_height(vec![
        Series::new(
            "domain".into(),
            f.replies.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        )
        .into_column(),
        Series::new(
            "code".into(),
            f.replies.iter().map(|r| r.1).collect::<Vec<_>>(),
        )
        .into_column(),
        Series::new(
            "enhanced".into(),
            f.replies.iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
        )
        .into_column(),
        Series::new(
            "text".into(),
            f.replies.iter().map(|r| r.3.clone()).collect::<Vec<_>>(),
        )
        .into_column(),
        Series::new(
            "count".into(),
            f.replies.iter().map(|r| r.4).collect::<Vec<_>>(),
        )
        .into_column(),
    ])?;
    write_csv(&mut replies, &path)?;
    files.push(path);
    let e = &f.engagement;
    if e.present() {
        let path = out.join("engagement.csv");
        let col_s = |name: &str, v: Vec<String>| Series::new(name.into(), v).into_column();
        let col_n = |name: &str, v: Vec<u64>| Series::new(name.into(), v).into_column();
        let c = &e.campaigns;
        let mut frame = DataFrame::new_infer_height(vec![
            col_s("campaign", c.iter().map(|r| r.campaign.clone()).collect()),
            col_s("domain", c.iter().map(|r| r.domain.clone()).collect()),
            col_n("sent", c.iter().map(|r| r.sent).collect()),
            col_n("delivered", c.iter().map(|r| r.delivered).collect()),
            col_n("opened", c.iter().map(|r| r.opened).collect()),
            col_n("clicked", c.iter().map(|r| r.clicked).collect()),
            col_n("unsubscribed", c.iter().map(|r| r.unsubscribed).collect()),
        ])?;
        write_csv(&mut frame, &path)?;
        files.push(path);
        let path = out.join("links.csv");
        let l = &e.links;
        let mut frame = DataFrame::new_infer_height(vec![
            col_s("campaign", l.iter().map(|r| r.campaign.clone()).collect()),
            col_s("link", l.iter().map(|r| r.url.clone()).collect()),
            col_n("clicks", l.iter().map(|r| r.clicks).collect()),
            col_n("recipients", l.iter().map(|r| r.recipients).collect()),
        ])?;
        write_csv(&mut frame, &path)?;
        files.push(path);
    }
    steps.inc(1);
    steps.set_message("charts");
    let charts = charts::all(&f);
    for c in &charts {
        let path = out.join(format!("{}.svg", c.name));
        std::fs::write(&path, &c.svg).map_err(write_err(&path))?;
        files.push(path);
    }
    steps.inc(1);
    steps.set_message("dmarc");
    let published_dmarc = published_dmarc(&log)?;
    let reports = dmarc::aggregate_reports(&f, &published_dmarc).map_err(write_err(out))?;
    if !reports.is_empty() {
        let dir = out.join("dmarc");
        std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
        for r in &reports {
            let path = dir.join(&r.file_name);
            std::fs::write(&path, &r.xml).map_err(write_err(&path))?;
            files.push(path);
        }
    }
    steps.inc(1);
    let names: Vec<String> = files
        .iter()
        .filter_map(|p| p.strip_prefix(out).ok())
        .map(|p| p.display().to_string())
        .collect();
    let page = html::page(&f, &charts, &reports, &names);
    let path = out.join("report.html");
    std::fs::write(&path, page).map_err(write_err(&path))?;
    files.push(path);
    steps.finish_and_clear();
    Ok(Written {
        dmarc_reports: reports.len(),
        figures: f,
        files,
        torn,
    })
}

/// How a compared measure is shown, and which way is better.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// A count of messages: integers.
    Count,
    /// A share, 0 to 1: a percentage.
    Share,
    /// Seconds.
    Seconds,
}

/// A compared measure: its name, how to read it off a domain's row, how to show it, and
/// whether a rise is good (Some(true)), bad (Some(false)) or neither.
type Measure = (&'static str, fn(&DomainRow) -> f64, Kind, Option<bool>);

fn show(kind: Kind, x: f64, signed: bool) -> String {
    if x.is_nan() {
        return "-".into();
    }
    match (kind, signed) {
        (Kind::Count, false) => format!("{x:.0}"),
        (Kind::Count, true) => format!("{x:+.0}"),
        (Kind::Share, false) => format!("{:.1}%", x * 100.0),
        (Kind::Share, true) => format!("{:+.1} pt", x * 100.0),
        (Kind::Seconds, false) => format!("{x:.1} s"),
        (Kind::Seconds, true) => format!("{x:+.1} s"),
    }
}

/// Two runs side by side: `compare.html` and `compare.csv` (per domain, A, B and B - A).
pub fn write_compare(
    a_dir: &Path,
    b_dir: &Path,
    out: &Path,
    show_progress: bool,
) -> Result<(Figures, Figures), ReportError> {
    // Each run's table is written in `out` for its figures, then removed; if a log is
    // damaged, nothing is left (nor `out`, when this made it).
    let made = !out.exists();
    std::fs::create_dir_all(out).map_err(write_err(out))?;
    let mut figs = Vec::new();
    for (i, dir) in [a_dir, b_dir].into_iter().enumerate() {
        let bar = progress(show_progress, 1, if i == 0 { "run A" } else { "run B" });
        let parquet = out.join(format!(".run-{}.parquet", ["a", "b"][i]));
        let figures = table::export(&dir.join("events.log"), &parquet, &|_| {})
            .map_err(ReportError::from)
            .and_then(|_| Ok(figures::compute_from_parquet(&parquet)?));
        let _ = std::fs::remove_file(&parquet);
        match figures {
            Ok(f) => figs.push(f),
            Err(e) => {
                if made {
                    let _ = std::fs::remove_dir(out);
                }
                return Err(e);
            }
        }
        bar.finish_and_clear();
    }
    let b = figs.pop().unwrap_or_default();
    let a = figs.pop().unwrap_or_default();
    let mut names: Vec<String> = a
        .domains
        .iter()
        .chain(b.domains.iter())
        .map(|d| d.domain.clone())
        .collect();
    names.sort();
    names.dedup();
    let find = |f: &Figures, n: &str| {
        f.domains
            .iter()
            .find(|d| d.domain == n)
            .cloned()
            .unwrap_or_default()
    };
    let mut rows: Vec<(String, DomainRow, DomainRow)> = names
        .iter()
        .map(|n| (n.clone(), find(&a, n), find(&b, n)))
        .collect();
    rows.push(("all domains".into(), a.totals.clone(), b.totals.clone()));
    // CSV: one row per domain and measure.
    let (mut dom, mut measure, mut va, mut vb) = (vec![], vec![], vec![], vec![]);
    let measures: [Measure; 8] = [
        ("injected", |d| d.injected as f64, Kind::Count, None),
        ("delivered", |d| d.delivered as f64, Kind::Count, Some(true)),
        (
            "bounced",
            |d| (d.bounced_hard + d.bounced_soft) as f64,
            Kind::Count,
            Some(false),
        ),
        ("deferred", |d| d.deferred as f64, Kind::Count, Some(false)),
        ("expired", |d| d.expired as f64, Kind::Count, Some(false)),
        (
            "delivery_rate",
            |d| d.delivery_rate,
            Kind::Share,
            Some(true),
        ),
        (
            "p50_s",
            |d| d.p50_s.unwrap_or(f64::NAN),
            Kind::Seconds,
            Some(false),
        ),
        (
            "p90_s",
            |d| d.p90_s.unwrap_or(f64::NAN),
            Kind::Seconds,
            Some(false),
        ),
    ];
    for (n, ra, rb) in &rows {
        for (m, get, _, _) in &measures {
            dom.push(n.clone());
            measure.push(m.to_string());
            va.push(get(ra));
            vb.push(get(rb));
        }
    }
    let delta: Vec<f64> = va.iter().zip(&vb).map(|(x, y)| y - x).collect();
    let mut df = DataFrame::new_infer_height(vec![
        Series::new("domain".into(), dom).into_column(),
        Series::new("measure".into(), measure).into_column(),
        Series::new("a".into(), va).into_column(),
        Series::new("b".into(), vb).into_column(),
        Series::new("delta".into(), delta).into_column(),
    ])?;
    let path = out.join("compare.csv");
    write_csv(&mut df, &path)?;
    let mut h = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Run comparison</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:.3em .6em;text-align:right}}td:first-child{{text-align:left}}.better{{color:#2e8b57}}.worse{{color:#c83737}}</style></head><body><h1>Run comparison</h1><p>A: {} ({}), B: {} ({})</p><table><tr><th>domain</th><th>measure</th><th>A</th><th>B</th><th>B - A</th></tr>",
        html::esc(&a.scenario),
        html::esc(&a_dir.display().to_string()),
        html::esc(&b.scenario),
        html::esc(&b_dir.display().to_string())
    );
    for (n, ra, rb) in &rows {
        for (m, get, kind, rise_is_good) in &measures {
            let (x, y) = (get(ra), get(rb));
            let d = y - x;
            // Green for a change for the better, red for the worse (more bounces is worse).
            let class = match (rise_is_good, d.partial_cmp(&0.0)) {
                (Some(good), Some(std::cmp::Ordering::Greater)) => {
                    if *good {
                        "better"
                    } else {
                        "worse"
                    }
                }
                (Some(good), Some(std::cmp::Ordering::Less)) => {
                    if *good {
                        "worse"
                    } else {
                        "better"
                    }
                }
                _ => "",
            };
            h.push_str(&format!(
                "<tr><td>{}</td><td>{m}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td></tr>",
                html::esc(n),
                show(*kind, x, false),
                show(*kind, y, false),
                show(*kind, d, true)
            ));
        }
    }
    h.push_str("</table>");
    h.push_str(&placement_compare(&a, &b));
    h.push_str("</body></html>");
    let path = out.join("compare.html");
    std::fs::write(&path, h).map_err(write_err(&path))?;
    Ok((a, b))
}

/// The two runs' inbox placement per provider side by side (runs with a reputation model).
fn placement_compare(a: &Figures, b: &Figures) -> String {
    let (pa, pb) = (
        a.deliverability.by_provider(),
        b.deliverability.by_provider(),
    );
    if pa.is_empty() && pb.is_empty() {
        return String::new();
    }
    let mut names: Vec<&String> = pa.iter().chain(pb.iter()).map(|p| &p.0).collect();
    names.sort();
    names.dedup();
    let share = |v: &[(String, u64, u64)], n: &str| {
        v.iter()
            .find(|p| p.0 == n)
            .map(|p| p.1 as f64 / (p.1 + p.2).max(1) as f64)
    };
    let show = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
    let mut h = String::from(
        "<h2>Inbox placement</h2><table id=\"placement-compare\"><tr><th>provider</th><th>A</th><th>B</th><th>B - A</th></tr>",
    );
    let rows = names
        .iter()
        .map(|n| (n.to_string(), share(&pa, n), share(&pb, n)))
        .chain(std::iter::once((
            "all providers".to_string(),
            Some(a.deliverability.funnel.inbox_rate()),
            Some(b.deliverability.funnel.inbox_rate()),
        )));
    for (n, x, y) in rows {
        let delta = match (x, y) {
            (Some(x), Some(y)) => {
                let d = 100.0 * (y - x);
                let class = if d > 0.0 {
                    "better"
                } else if d < 0.0 {
                    "worse"
                } else {
                    ""
                };
                format!("<td class=\"{class}\">{d:+.1} points</td>")
            }
            _ => "<td>-</td>".into(),
        };
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td>{delta}</tr>",
            html::esc(&n),
            show(x),
            show(y)
        ));
    }
    h.push_str("</table>");
    h
}
