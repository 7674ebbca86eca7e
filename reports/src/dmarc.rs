//! RFC 7489 aggregate reports (appendix C's XML), one per receiving domain and sending policy
//! domain that asks for them (`rua` in its DMARC record), built from the receivers' verdicts.

use crate::figures::{DmarcRow, Figures};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::dmarc::{Alignment, Dmarc, Policy, Report};
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use std::collections::BTreeMap;
use std::io::Cursor;

/// One aggregate report: its RFC 7489 file name and XML.
pub struct AggregateReport {
    pub file_name: String,
    pub receiver: String,
    pub policy_domain: String,
    pub rua: Vec<String>,
    pub xml: String,
}

fn policy_word(p: &Policy) -> &'static str {
    match p {
        Policy::Quarantine => "quarantine",
        Policy::Reject => "reject",
        Policy::None | Policy::Unspecified => "none",
    }
}

/// `fo` as published (RFC 7489 section 6.3), default 0.
fn failure_options(fo: &Report) -> &'static str {
    match fo {
        Report::All => "0",
        Report::Any => "1",
        Report::Dkim => "d",
        Report::Spf => "s",
        Report::DkimSpf => "d:s",
    }
}

fn alignment(a: &Alignment) -> &'static str {
    match a {
        Alignment::Strict => "s",
        Alignment::Relaxed => "r",
    }
}

/// The XSD's result words: anything else a verifier said becomes the nearest one.
fn dkim_result(word: &str) -> &'static str {
    match word {
        "pass" => "pass",
        "fail" => "fail",
        "neutral" => "neutral",
        "temperror" => "temperror",
        "permerror" => "permerror",
        "policy" => "policy",
        _ => "none",
    }
}

fn spf_result(word: &str) -> &'static str {
    match word {
        "pass" => "pass",
        "fail" => "fail",
        "softfail" => "softfail",
        "neutral" => "neutral",
        "temperror" => "temperror",
        "permerror" => "permerror",
        _ => "none",
    }
}

type W = Writer<Cursor<Vec<u8>>>;

fn elem(w: &mut W, name: &str, text: &str) -> std::io::Result<()> {
    w.write_event(Event::Start(BytesStart::new(name)))?;
    w.write_event(Event::Text(BytesText::new(text)))?;
    w.write_event(Event::End(BytesEnd::new(name)))?;
    Ok(())
}

fn open(w: &mut W, name: &str) -> std::io::Result<()> {
    w.write_event(Event::Start(BytesStart::new(name)))
}

fn close(w: &mut W, name: &str) -> std::io::Result<()> {
    w.write_event(Event::End(BytesEnd::new(name)))
}

fn write_report(
    receiver: &str,
    policy_domain: &str,
    record: &Dmarc,
    rows: &[&DmarcRow],
    begin_s: u64,
    end_s: u64,
) -> std::io::Result<String> {
    let mut w = Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    open(&mut w, "feedback")?;
    elem(&mut w, "version", "1.0")?;
    open(&mut w, "report_metadata")?;
    elem(&mut w, "org_name", receiver)?;
    elem(
        &mut w,
        "email",
        &format!("noreply-dmarc-support@{receiver}"),
    )?;
    elem(
        &mut w,
        "report_id",
        &format!("{receiver}!{policy_domain}!{begin_s}!{end_s}"),
    )?;
    open(&mut w, "date_range")?;
    elem(&mut w, "begin", &begin_s.to_string())?;
    elem(&mut w, "end", &end_s.to_string())?;
    close(&mut w, "date_range")?;
    close(&mut w, "report_metadata")?;
    open(&mut w, "policy_published")?;
    elem(&mut w, "domain", policy_domain)?;
    elem(&mut w, "adkim", alignment(&record.adkim))?;
    elem(&mut w, "aspf", alignment(&record.aspf))?;
    elem(&mut w, "p", policy_word(&record.p))?;
    let sp = match record.sp {
        Policy::Unspecified => &record.p,
        ref other => other,
    };
    elem(&mut w, "sp", policy_word(sp))?;
    elem(&mut w, "pct", "100")?;
    elem(&mut w, "fo", failure_options(&record.fo))?;
    close(&mut w, "policy_published")?;
    for r in rows {
        let pass = r.dmarc == "pass";
        // What the receiver did: delivered (none), or refused after its verdict (reject); the
        // fleet has no spam folder, so nothing is quarantined.
        let disposition = if r.stored { "none" } else { "reject" };
        open(&mut w, "record")?;
        open(&mut w, "row")?;
        elem(&mut w, "source_ip", &r.source_ip)?;
        elem(&mut w, "count", &r.count.to_string())?;
        open(&mut w, "policy_evaluated")?;
        elem(&mut w, "disposition", disposition)?;
        // Aligned results: a DMARC pass means the passing mechanism was aligned.
        let aligned = |word: &str| {
            if pass && word == "pass" {
                "pass"
            } else {
                "fail"
            }
        };
        elem(&mut w, "dkim", aligned(&r.dkim))?;
        elem(&mut w, "spf", aligned(&r.spf))?;
        close(&mut w, "policy_evaluated")?;
        close(&mut w, "row")?;
        // The SPF identity: the envelope sender's domain (mfrom), or for a null sender the
        // HELO identity (RFC 7208 section 2.4); the verdict does not keep the HELO name, so the
        // header's domain stands for it.
        let (spf_domain, scope) = if r.mail_from_domain.is_empty() {
            (&r.header_from, "helo")
        } else {
            (&r.mail_from_domain, "mfrom")
        };
        open(&mut w, "identifiers")?;
        elem(&mut w, "envelope_from", &r.mail_from_domain)?;
        elem(&mut w, "header_from", &r.header_from)?;
        close(&mut w, "identifiers")?;
        open(&mut w, "auth_results")?;
        if r.dkim != "none" {
            open(&mut w, "dkim")?;
            elem(&mut w, "domain", &r.header_from)?;
            elem(&mut w, "result", dkim_result(&r.dkim))?;
            close(&mut w, "dkim")?;
        }
        open(&mut w, "spf")?;
        elem(&mut w, "domain", spf_domain)?;
        elem(&mut w, "scope", scope)?;
        elem(&mut w, "result", spf_result(&r.spf))?;
        close(&mut w, "spf")?;
        close(&mut w, "auth_results")?;
        close(&mut w, "record")?;
    }
    close(&mut w, "feedback")?;
    String::from_utf8(w.into_inner().into_inner())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Reports for every (receiving domain, policy domain) pair where the policy domain's DMARC
/// record (`published`: domain -> TXT text) has `rua`.
pub fn aggregate_reports(
    f: &Figures,
    published: &BTreeMap<String, String>,
) -> std::io::Result<Vec<AggregateReport>> {
    let mut groups: BTreeMap<(String, String), Vec<&DmarcRow>> = BTreeMap::new();
    for r in &f.dmarc {
        groups
            .entry((r.receiver.clone(), r.header_from.to_ascii_lowercase()))
            .or_default()
            .push(r);
    }
    let begin_s = f.first_ts_ms / 1000;
    let end_s = f.last_ts_ms.div_ceil(1000);
    let mut out = Vec::new();
    for ((receiver, domain), rows) in groups {
        let Some(txt) = published.get(&domain) else {
            continue;
        };
        let Ok(record) = Dmarc::parse(txt.as_bytes()) else {
            continue;
        };
        if record.rua.is_empty() {
            continue;
        }
        let xml = write_report(&receiver, &domain, &record, &rows, begin_s, end_s)?;
        out.push(AggregateReport {
            file_name: format!("{receiver}!{domain}!{begin_s}!{end_s}.xml"),
            receiver,
            policy_domain: domain,
            rua: record.rua.iter().map(|u| u.uri.clone()).collect(),
            xml,
        });
    }
    Ok(out)
}
