//! TLS-RPT (RFC 8460) reports, a projection of the event log: one JSON report per destination
//! the MTA tried, from its `tls` events (one per session attempt) and `sts_policy` events (the
//! MTA-STS policies fetched, or the fetches that failed), written as
//! `<run directory>/tlsrpt/<domain>.json`: what the sending MTA would send to the address the
//! domain's `_smtp._tls` record names.

use mailsim_events::{Event, Record};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

/// One destination's sessions, as a report counts them.
#[derive(Default)]
struct Destination {
    /// The last policy fetched: its lines and MX patterns.
    policy: Option<(Vec<String>, Vec<String>)>,
    sts: bool,
    success: u64,
    /// Failures by result type, MX host and address.
    failures: BTreeMap<(String, String, String, String), u64>,
}

/// The reports of one run, folded record by record.
#[derive(Default)]
pub struct TlsReports {
    destinations: BTreeMap<String, Destination>,
    first_ms: Option<u64>,
    last_ms: u64,
}

impl TlsReports {
    /// Take one record into account.
    pub fn add(&mut self, r: &Record) {
        self.first_ms.get_or_insert(r.ts);
        self.last_ms = self.last_ms.max(r.ts);
        match &r.event {
            Event::StsPolicy {
                domain,
                mx_patterns: mx,
                text,
                error,
                ..
            } => {
                let d = self.destinations.entry(domain.clone()).or_default();
                match error {
                    None => {
                        d.sts = true;
                        d.policy = Some((text.lines().map(str::to_string).collect(), mx.clone()));
                    }
                    Some(e) => {
                        // The domain announced a policy (its TXT record) that could not be had.
                        d.sts = true;
                        let kind = e.split(':').next().unwrap_or("sts-policy-fetch-error");
                        *d.failures
                            .entry((kind.to_string(), String::new(), String::new(), e.clone()))
                            .or_default() += 1;
                    }
                }
            }
            Event::Tls {
                domain,
                mx,
                addr,
                policy,
                result,
                why,
                ..
            } => {
                let d = self.destinations.entry(domain.clone()).or_default();
                d.sts |= policy.starts_with("sts-");
                if result == "success" {
                    d.success += 1;
                } else {
                    let ip = addr
                        .parse::<std::net::SocketAddr>()
                        .map(|a| a.ip().to_string())
                        .unwrap_or_default();
                    *d.failures
                        .entry((
                            result.clone(),
                            mx.clone(),
                            ip,
                            why.clone().unwrap_or_default(),
                        ))
                        .or_default() += 1;
                }
            }
            _ => {}
        }
    }

    /// The report of each destination: RFC 8460 section 4.4's JSON.
    pub fn reports(&self, sending_ip: IpAddr, contact: &str) -> Vec<(String, Value)> {
        let date = |ms: u64| {
            mail_parser::DateTime::from_timestamp((ms / 1000) as i64)
                .to_rfc3339()
                .replace("+00:00", "Z")
        };
        let start = self.first_ms.unwrap_or(0);
        self.destinations
            .iter()
            .map(|(domain, d)| {
                let mut policy = json!({
                    "policy-type": if d.sts { "sts" } else { "no-policy-found" },
                    "policy-domain": domain,
                });
                if let Some((lines, mx)) = &d.policy {
                    policy["policy-string"] = json!(lines);
                    policy["mx-host"] = json!(mx);
                }
                let failed: u64 = d.failures.values().sum();
                let details: Vec<Value> = d
                    .failures
                    .iter()
                    .map(|((result, mx, ip, detail), n)| {
                        let mut f = json!({
                            "result-type": result,
                            "sending-mta-ip": sending_ip.to_string(),
                            "failed-session-count": n,
                        });
                        if !mx.is_empty() {
                            f["receiving-mx-hostname"] = json!(mx);
                        }
                        if !ip.is_empty() {
                            f["receiving-ip"] = json!(ip);
                        }
                        if !detail.is_empty() {
                            f["failure-reason-code"] = json!(detail);
                        }
                        f
                    })
                    .collect();
                let report = json!({
                    "organization-name": "mailsim",
                    "date-range": {
                        "start-datetime": date(start),
                        "end-datetime": date(self.last_ms),
                    },
                    "contact-info": contact,
                    "report-id": format!("{}_{domain}", date(start)),
                    "policies": [{
                        "policy": policy,
                        "summary": {
                            "total-successful-session-count": d.success,
                            "total-failure-session-count": failed,
                        },
                        "failure-details": details,
                    }],
                });
                (domain.clone(), report)
            })
            .collect()
    }

    /// Write each report to `dir/tlsrpt/<domain>.json` (nothing when no destination was tried
    /// with TLS in mind).
    pub fn write(&self, dir: &Path, sending_ip: IpAddr, contact: &str) -> std::io::Result<()> {
        let reports = self.reports(sending_ip, contact);
        if reports.is_empty() {
            return Ok(());
        }
        let dir = dir.join("tlsrpt");
        std::fs::create_dir_all(&dir)?;
        for (domain, report) in reports {
            // A file name from a recipient's domain: only what a host name holds.
            if domain.is_empty()
                || domain.starts_with('.')
                || !domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                continue;
            }
            let text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
            std::fs::write(dir.join(format!("{domain}.json")), text + "\n")?;
        }
        Ok(())
    }
}
