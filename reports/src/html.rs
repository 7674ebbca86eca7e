//! The self-contained HTML page: inline SVG charts, tables, and advice, no network.

use crate::charts::Chart;
use crate::dmarc::AggregateReport;
use crate::figures::{DomainRow, Figures};
use std::fmt::Write;

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn secs(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.1}"))
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:1em 0;font-size:.9em}\
td,th{border:1px solid #ddd;padding:.3em .6em;text-align:right}\
td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}\
.chart svg{max-width:100%;height:auto}.kpi{display:inline-block;margin:0 2em 1em 0}\
.kpi b{display:block;font-size:1.5em}.advice li{margin:.4em 0}.muted{color:#777}";

fn domain_row(d: &DomainRow) -> String {
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td></tr>",
        esc(&d.domain),
        d.injected,
        d.delivered,
        d.bounced_hard,
        d.bounced_soft,
        d.deferred,
        d.expired,
        d.suppressed,
        pct(d.delivery_rate),
        secs(d.p50_s),
        secs(d.p90_s),
        secs(d.p99_s),
        d.attempts_per_message
    )
}

/// What to fix, read off the figures. Each item names the domain and the evidence.
pub fn advice(f: &Figures) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_reason: std::collections::BTreeMap<&str, Vec<(&str, u64)>> = Default::default();
    for (domain, reason, n) in &f.reasons {
        by_reason
            .entry(reason.as_str())
            .or_default()
            .push((domain.as_str(), *n));
    }
    let list = |v: &Vec<(&str, u64)>| {
        v.iter()
            .map(|(d, n)| format!("{n} at {d}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(v) = by_reason.get("userunknown") {
        out.push(format!(
            "Clean the list: recipients that do not exist ({}). Keep them suppressed; a high unknown-user rate is what providers read as a purchased or stale list.",
            list(v)
        ));
    }
    if let Some(v) = by_reason.get("mailboxfull") {
        out.push(format!(
            "Full mailboxes ({}): these recipients are inactive; stop mailing them after repeated failures.",
            list(v)
        ));
    }
    if let Some(v) = by_reason.get("expired") {
        out.push(format!(
            "Messages expired in the queue after days of temporary failures ({}): look at the replies below for the cause (full mailboxes, rate limits, unreachable servers).",
            list(v)
        ));
    }
    for key in [
        "blocked",
        "spamdetected",
        "policyviolation",
        "authfailure",
        "filtered",
    ] {
        if let Some(v) = by_reason.get(key) {
            out.push(format!(
                "Rejected by policy ({key}: {}): check authentication, content and sending IP reputation.",
                list(v)
            ));
        }
    }
    let throttled: Vec<&(String, u32, String, String, u64)> = f
        .replies
        .iter()
        .filter(|r| {
            r.1 == 421 || r.2.starts_with("4.7.") || r.3.to_ascii_lowercase().contains("rate")
        })
        .collect();
    if !throttled.is_empty() {
        let domains: std::collections::BTreeSet<&str> =
            throttled.iter().map(|r| r.0.as_str()).collect();
        out.push(format!(
            "Rate limited by {}: {} throttling replies. Lower the connections and messages per connection for these destinations and spread the campaign over more time.",
            domains.into_iter().collect::<Vec<_>>().join(", "),
            throttled.iter().map(|r| r.4).sum::<u64>()
        ));
    }
    for d in &f.domains {
        if d.deferrals_per_message >= 0.5 && d.delivered > 0 {
            out.push(format!(
                "{}: {:.2} temporary failures per message before delivery (greylisting or throttling); p90 time to deliver {} s.",
                d.domain,
                d.deferrals_per_message,
                secs(d.p90_s)
            ));
        }
    }
    for a in &f.auth {
        if a.messages == 0 {
            continue;
        }
        let fail = a.messages - a.dmarc_pass;
        if fail > 0 {
            out.push(format!(
                "DMARC failed for {fail} of {} messages received at {} (SPF pass {}, DKIM pass {}): align the From domain with the DKIM signing domain or the envelope sender, and publish SPF for the sending IPs.",
                a.messages, a.domain, a.spf_pass, a.dkim_pass
            ));
        }
    }
    if out.is_empty() {
        out.push("Nothing to fix: every message was delivered and authenticated.".into());
    }
    out
}

/// Placement per provider, the funnel and the causes of spam placement (runs with a
/// reputation model).
fn deliverability_section(h: &mut String, d: &crate::deliverability::Deliverability) {
    if !d.present() {
        return;
    }
    let f = &d.funnel;
    h.push_str("<h2 id=\"deliverability\">Deliverability</h2><table id=\"placement\"><tr><th>provider</th><th>inbox</th><th>spam folder</th><th>inbox placement</th></tr>");
    for (p, inbox, spam) in d.by_provider() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{inbox}</td><td>{spam}</td><td>{}</td></tr>",
            esc(&p),
            pct(inbox as f64 / (inbox + spam).max(1) as f64)
        );
    }
    let _ = write!(
        h,
        "</table><h3>Engagement funnel</h3><table id=\"funnel\"><tr><th>step</th><th>messages</th><th>rate</th><th>rate of</th></tr>\
         <tr><td>sent</td><td>{}</td><td></td><td></td></tr>\
         <tr><td>delivered</td><td>{}</td><td>{}</td><td>sent</td></tr>\
         <tr><td>inbox</td><td>{}</td><td>{}</td><td>delivered and placed</td></tr>\
         <tr><td>opened</td><td>{}</td><td>{}</td><td>placed (inbox and spam folder)</td></tr>\
         <tr><td>clicked</td><td>{}</td><td>{}</td><td>opened</td></tr>\
         <tr><td>unsubscribed (taken by the sender)</td><td>{}</td><td>{}</td><td>delivered</td></tr>\
         <tr><td>complaints</td><td>{}</td><td>{:.3}%</td><td>inbox (the providers' spam rate)</td></tr></table>",
        f.sent,
        f.delivered,
        pct(if f.sent > 0 {
            f.delivered as f64 / f.sent as f64
        } else {
            0.0
        }),
        f.inbox,
        pct(f.inbox_rate()),
        f.opened,
        pct(f.open_rate()),
        f.clicked,
        pct(f.click_rate()),
        f.unsubscribed,
        pct(f.unsubscribe_rate()),
        f.complaints,
        100.0 * f.complaint_rate()
    );
    h.push_str("<h3>Why mail went to the spam folder</h3><table id=\"spam-causes\"><tr><th>cause</th><th>messages</th></tr>");
    for (c, n) in &d.spam_causes {
        let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", esc(c));
    }
    h.push_str("</table>");
}

/// Opens, clicks and unsubscribes per campaign and domain, clicks per link, and the time from
/// injection to delivery per lane.
fn engagement_section(h: &mut String, e: &crate::engagement::Engagement) {
    if e.present() {
        h.push_str("<h2 id=\"engagement\">Engagement by campaign</h2><p>Recipients who opened, clicked and unsubscribed (each copy once; a click counts as an open too, since its images may have been blocked; unsubscribes the sender took), per campaign (<code>-</code>: mail of no platform campaign) and recipient domain:</p><table id=\"engagement-table\"><tr><th>campaign</th><th>domain</th><th>sent</th><th>delivered</th><th>opened</th><th>clicked</th><th>unsubscribed</th><th>open rate</th><th>click rate</th></tr>");
        for r in &e.campaigns {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.campaign),
                esc(&r.domain),
                r.sent,
                r.delivered,
                r.opened,
                r.clicked,
                r.unsubscribed,
                pct(r.opened as f64 / r.delivered.max(1) as f64),
                pct(r.clicked as f64 / r.opened.max(1) as f64),
            );
        }
        h.push_str("</table>");
        if !e.links.is_empty() {
            h.push_str("<h3>Clicks per link</h3><table id=\"links-table\"><tr><th>campaign</th><th>link</th><th>clicks</th><th>recipients</th></tr>");
            for l in &e.links {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&l.campaign),
                    esc(&l.url),
                    l.clicks,
                    l.recipients
                );
            }
            h.push_str("</table>");
        }
    }
    if !e.lanes.is_empty() {
        h.push_str("<h2 id=\"lanes\">Lanes</h2><p>Time from injection to delivery per lane (the log has transactional mail; without <code>--lanes</code> it waits in the same queue as bulk mail):</p><table id=\"lanes-table\"><tr><th>lane</th><th>delivered</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th></tr>");
        for l in &e.lanes {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&l.lane),
                l.delivered,
                l.p50_ms,
                l.p99_ms,
                l.max_ms
            );
        }
        h.push_str("</table>");
    }
}

pub fn page(f: &Figures, charts: &[Chart], dmarc: &[AggregateReport], files: &[String]) -> String {
    let mut h = String::new();
    let t = &f.totals;
    let span_s = (f.last_ts_ms.saturating_sub(f.first_ts_ms)) as f64 / 1000.0;
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Deliverability report: {}</title><style>{STYLE}</style></head><body>",
        esc(&f.scenario)
    );
    let _ = write!(
        h,
        "<h1>Deliverability report: {}</h1><p class=\"muted\">Scenario <b>{}</b>, seed {}, mode {}; {} events over {:.1} s of run time. Every figure comes from the run's event log.</p>",
        esc(&f.scenario),
        esc(&f.scenario),
        f.seed,
        esc(&f.mode),
        f.events,
        span_s
    );
    h.push_str("<h2>What was sent</h2>");
    let _ = write!(
        h,
        "<div class=\"kpi\"><b>{}</b>messages queued</div><div class=\"kpi\"><b>{}</b>recipient domains</div><div class=\"kpi\"><b>{}</b>suppressed before sending</div>",
        t.injected,
        f.domains.iter().filter(|d| d.injected > 0).count(),
        t.suppressed
    );
    h.push_str("<h2>What happened</h2>");
    let _ = write!(
        h,
        "<div class=\"kpi\"><b>{}</b>delivered ({})</div><div class=\"kpi\"><b>{}</b>bounced (hard {}, soft {})</div><div class=\"kpi\"><b>{}</b>still deferred</div><div class=\"kpi\"><b>{}</b>expired</div><div class=\"kpi\"><b>{}</b>median time to deliver (s)</div>",
        t.delivered,
        pct(t.delivery_rate),
        t.bounced_hard + t.bounced_soft,
        t.bounced_hard,
        t.bounced_soft,
        t.deferred,
        t.expired,
        secs(t.p50_s)
    );
    h.push_str("<h2>What to fix</h2><ul class=\"advice\">");
    for a in advice(f).into_iter().chain(f.deliverability.advice()) {
        let _ = write!(h, "<li>{}</li>", esc(&a));
    }
    h.push_str("</ul>");
    deliverability_section(&mut h, &f.deliverability);
    engagement_section(&mut h, &f.engagement);
    h.push_str("<h2>Per domain</h2><table><tr><th>domain</th><th>injected</th><th>delivered</th><th>bounced hard</th><th>bounced soft</th><th>deferred</th><th>expired</th><th>suppressed</th><th>delivery rate</th><th>p50 s</th><th>p90 s</th><th>p99 s</th><th>attempts/msg</th></tr>");
    for d in &f.domains {
        h.push_str(&domain_row(d));
    }
    h.push_str(
        &domain_row(t)
            .replace("<td>", "<td><b>")
            .replace("</td>", "</b></td>"),
    );
    h.push_str("</table><p class=\"muted\">deferred: still queued when the log ends; p50/p90/p99: time from injection to delivery.</p>");
    for c in charts {
        let _ = write!(
            h,
            "<h2>{}</h2><div class=\"chart\" id=\"chart-{}\">{}</div>",
            esc(c.title),
            c.name,
            // The SVG's XML declaration is not allowed inside HTML.
            c.svg.trim_start_matches(|ch| ch != '<').replacen(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
                "",
                1
            )
        );
    }
    h.push_str(
        "<h2>Bounce reasons</h2><table><tr><th>domain</th><th>reason</th><th>messages</th></tr>",
    );
    for (d, r, n) in f.reasons.iter().take(50) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{n}</td></tr>",
            esc(d),
            esc(r)
        );
    }
    h.push_str("</table><h2>Top SMTP replies</h2><table><tr><th>domain</th><th>code</th><th>enhanced</th><th>text</th><th>count</th></tr>");
    for (d, code, enh, text, n) in f.replies.iter().take(30) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{code}</td><td>{}</td><td style=\"text-align:left\">{}</td><td>{n}</td></tr>",
            esc(d),
            esc(enh),
            esc(text)
        );
    }
    h.push_str("</table><h2>Authentication</h2><table><tr><th>recipient domain</th><th>messages</th><th>SPF pass</th><th>DKIM pass</th><th>DMARC pass</th></tr>");
    for a in &f.auth {
        let n = a.messages.max(1) as f64;
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&a.domain),
            a.messages,
            pct(a.spf_pass as f64 / n),
            pct(a.dkim_pass as f64 / n),
            pct(a.dmarc_pass as f64 / n)
        );
    }
    h.push_str("</table>");
    if !f.tls.is_empty() {
        h.push_str("<h2 id=\"tls\">TLS</h2><p>Outbound STARTTLS per destination (the sessions TLS-RPT reports count; the run's <code>tlsrpt/</code> holds the RFC 8460 reports):</p><table id=\"tls-table\"><tr><th>domain</th><th>policy</th><th>encrypted</th><th>in clear</th><th>held by policy</th><th>failures</th></tr>");
        for t in &f.tls {
            let failures: Vec<String> = t
                .failures
                .iter()
                .map(|(r, n)| format!("{r} ({n})"))
                .collect();
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
                esc(&t.domain),
                esc(&t.policy),
                t.encrypted,
                t.clear,
                t.skipped,
                esc(&failures.join(", "))
            );
        }
        h.push_str("</table>");
    }
    if !dmarc.is_empty() {
        h.push_str("<h2>DMARC aggregate reports</h2><p>As each receiving domain would send them to the addresses the sending domain publishes (<code>rua</code>):</p><ul>");
        for r in dmarc {
            let _ = write!(
                h,
                "<li><a href=\"dmarc/{}\">{}</a>: from {} about {}, to {}</li>",
                esc(&r.file_name),
                esc(&r.file_name),
                esc(&r.receiver),
                esc(&r.policy_domain),
                esc(&r.rua.join(", "))
            );
        }
        h.push_str("</ul>");
    }
    h.push_str("<h2>Files</h2><ul>");
    for f in files {
        let _ = write!(h, "<li><a href=\"{}\">{}</a></li>", esc(f), esc(f));
    }
    h.push_str("</ul>");
    // A self-check for browsers and tests: how many charts have a drawn, visible area.
    h.push_str("<script>document.addEventListener('DOMContentLoaded',function(){var n=0;document.querySelectorAll('.chart svg').forEach(function(s){var r=s.getBoundingClientRect();if(r.width>0&&r.height>0&&s.querySelectorAll('rect,path,polyline,line').length>0)n++;});document.body.setAttribute('data-charts-visible',String(n));});</script>");
    h.push_str("</body></html>");
    h
}
