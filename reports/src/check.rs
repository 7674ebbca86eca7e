//! The check that a report's totals are summary.json's.

use crate::figures::Figures;
use mailsim_summary::Summary;
use std::collections::BTreeMap;

/// Every figure the report and the summary both state, where they disagree.
pub fn differences(s: &Summary, f: &Figures) -> Vec<String> {
    let mut out = Vec::new();
    let t = &f.totals;
    let pairs = [
        ("injected", s.injected, t.injected),
        ("delivered", s.delivered, t.delivered),
        ("bounced", s.bounced, t.bounced_hard + t.bounced_soft),
        ("deferred", s.deferred, t.deferred),
        ("expired", s.expired, t.expired),
        ("suppressed", s.suppressed, t.suppressed),
        ("dsns_queued", s.dsns_queued, f.dsns_queued),
        (
            "suppression_added",
            s.suppression_added,
            f.suppression_added,
        ),
        (
            "auth messages",
            s.auth.spf_pass + s.auth.spf_fail,
            f.auth.iter().map(|a| a.messages).sum(),
        ),
        (
            "spf pass",
            s.auth.spf_pass,
            f.auth.iter().map(|a| a.spf_pass).sum(),
        ),
        (
            "dkim pass",
            s.auth.dkim_pass,
            f.auth.iter().map(|a| a.dkim_pass).sum(),
        ),
        (
            "dmarc pass",
            s.auth.dmarc_pass,
            f.auth.iter().map(|a| a.dmarc_pass).sum(),
        ),
    ];
    for (name, a, b) in pairs {
        if a != b {
            out.push(format!("{name} {a} vs {b}"));
        }
    }
    for (domain, d) in &s.domains {
        let row = f.domains.iter().find(|r| &r.domain == domain);
        let r = row.cloned().unwrap_or_default();
        let pairs = [
            ("injected", d.injected, r.injected),
            ("delivered", d.delivered, r.delivered),
            ("bounced", d.bounced, r.bounced_hard + r.bounced_soft),
            ("deferred", d.deferred, r.deferred),
            ("expired", d.expired, r.expired),
            ("suppressed", d.suppressed, r.suppressed),
        ];
        for (name, a, b) in pairs {
            if a != b {
                out.push(format!("{domain} {name} {a} vs {b}"));
            }
        }
    }
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for (_, reason, n) in &f.reasons {
        *reasons.entry(reason.clone()).or_default() += n;
    }
    if reasons != s.reasons {
        out.push(format!("reasons {:?} vs {:?}", s.reasons, reasons));
    }
    // The lanes: summary.json folds them record by record, the report joins the table.
    let lanes: BTreeMap<String, (u64, u64, u64, u64)> = f
        .engagement
        .lanes
        .iter()
        .map(|l| (l.lane.clone(), (l.delivered, l.p50_ms, l.p99_ms, l.max_ms)))
        .collect();
    let summary_lanes: BTreeMap<String, (u64, u64, u64, u64)> = s
        .lanes
        .iter()
        .map(|(k, l)| (k.clone(), (l.delivered, l.p50_ms, l.p99_ms, l.max_ms)))
        .collect();
    if lanes != summary_lanes {
        out.push(format!("lanes {summary_lanes:?} vs {lanes:?}"));
    }
    if s.reports_received != f.reports_received {
        out.push(format!(
            "reports received {:?} vs {:?}",
            s.reports_received, f.reports_received
        ));
    }
    out
}
