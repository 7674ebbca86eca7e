//! Per-domain differences between two runs' summaries.

use crate::summary::{DomainSummary, Summary};
use std::fmt::Write;

/// One domain's outcomes in run A and run B.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDiff {
    pub domain: String,
    pub a: DomainSummary,
    pub b: DomainSummary,
}

impl DomainDiff {
    pub fn changed(&self) -> bool {
        self.a != self.b
    }
}

/// Every domain present in either run, in name order.
pub fn diff(a: &Summary, b: &Summary) -> Vec<DomainDiff> {
    let mut names: Vec<&String> = a.domains.keys().chain(b.domains.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|d| DomainDiff {
            domain: d.clone(),
            a: a.domains.get(d).cloned().unwrap_or_default(),
            b: b.domains.get(d).cloned().unwrap_or_default(),
        })
        .collect()
}

fn delta(a: u64, b: u64) -> String {
    match b as i128 - a as i128 {
        0 => "=".into(),
        d => format!("{d:+}"),
    }
}

/// A plain-text table: per domain, each outcome as `A -> B (delta)`; unchanged domains marked.
pub fn render(rows: &[DomainDiff]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:>22} {:>22} {:>22} {:>22} {:>22}",
        "domain", "injected", "delivered", "bounced", "deferred", "expired"
    );
    for r in rows {
        let cell = |a: u64, b: u64| format!("{a}->{b} ({})", delta(a, b));
        let _ = writeln!(
            out,
            "{:<28} {:>22} {:>22} {:>22} {:>22} {:>22}{}",
            r.domain,
            cell(r.a.injected, r.b.injected),
            cell(r.a.delivered, r.b.delivered),
            cell(r.a.bounced, r.b.bounced),
            cell(r.a.deferred, r.b.deferred),
            cell(r.a.expired, r.b.expired),
            if r.changed() { "" } else { "  (same)" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_of_either_run_with_deltas() {
        let mut a = Summary::default();
        a.domains.insert(
            "x.test".into(),
            DomainSummary {
                injected: 10,
                delivered: 10,
                ..Default::default()
            },
        );
        let mut b = Summary::default();
        b.domains.insert(
            "x.test".into(),
            DomainSummary {
                injected: 10,
                delivered: 7,
                bounced: 3,
                ..Default::default()
            },
        );
        b.domains.insert(
            "y.test".into(),
            DomainSummary {
                injected: 1,
                delivered: 1,
                ..Default::default()
            },
        );
        let rows = diff(&a, &b);
        assert_eq!(rows.len(), 2);
        assert!(rows[0].changed());
        let text = render(&rows);
        assert!(text.contains("10->7 (-3)"), "{text}");
        assert!(text.contains("0->3 (+3)"), "{text}");
        assert!(text.contains("y.test"));
    }
}
