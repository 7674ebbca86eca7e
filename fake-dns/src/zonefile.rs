//! RFC 1035 zone files (section 5), read with hickory's zone-file parser into the zone model:
//! a customer's zone or a test suite's zone served as written, beside the generated records.

use crate::{DnsError, RecordData, Soa, ZoneRecord, normalize};
use hickory_proto::rr::{Name, RData};
use hickory_proto::serialize::txt::Parser;
use std::path::Path;
use std::str::FromStr;

/// A zone file's records and its origin (`$ORIGIN`, else `origin`, else the owner of its SOA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneFile {
    pub origin: String,
    pub records: Vec<ZoneRecord>,
}

/// Read the zone file at `path`. `origin` is the zone's name when the file does not set one
/// with `$ORIGIN` (as BIND's `zone "example.com" { file ...; }` gives it).
pub fn load(path: &Path, origin: Option<&str>) -> Result<ZoneFile, DnsError> {
    let text = std::fs::read_to_string(path).map_err(|e| DnsError::ZoneFile {
        place: path.display().to_string(),
        message: e.to_string(),
    })?;
    parse(&text, path, origin)
}

/// Parse zone-file `text` (named `path` in errors; `$INCLUDE` is relative to it).
pub fn parse(text: &str, path: &Path, origin: Option<&str>) -> Result<ZoneFile, DnsError> {
    let written = text;
    let origin_name = match origin {
        Some(o) => Some(Name::from_str(o).map_err(|e| DnsError::ZoneFile {
            place: format!("{}: origin {o:?}", path.display()),
            message: e.to_string(),
        })?),
        None => None,
    };
    // Records without a TTL before any $TTL get fake-dns's default (hickory refuses them; BIND
    // takes the SOA's). One line is added in front: line numbers are counted back.
    let mended = mend_quoted(text).map_err(|line| DnsError::ZoneFile {
        place: format!("{}:{line}", path.display()),
        message: "this '(' is never closed: every later line would be part of its record".into(),
    })?;
    let text = format!("$TTL {}\n{}", crate::TTL_S_DEFAULT, mended);
    let parsed = Parser::new(text.as_str(), Some(path.to_path_buf()), origin_name.clone()).parse();
    let (origin, sets) = match parsed {
        Ok(ok) => ok,
        Err(e) => {
            let message = e.to_string();
            let line = failing_line(&text, path, &origin_name, &message)
                .map(|n| n.saturating_sub(1).max(1));
            return Err(DnsError::ZoneFile {
                place: match line {
                    Some(n) => format!("{}:{n}", path.display()),
                    None => path.display().to_string(),
                },
                message: explain(&message, origin_name.is_some()),
            });
        }
    };
    let mut records = Vec::new();
    for set in sets.values() {
        for record in set.records_without_rrsigs() {
            let owner = record.name.to_ascii();
            let data = data_of(&record.data).ok_or_else(|| DnsError::ZoneFile {
                place: format!("{}: {owner} {}", path.display(), record.record_type()),
                message: "fake-dns serves A, AAAA, MX, TXT, CNAME, PTR, NS and SOA records".into(),
            })?;
            records.push(ZoneRecord {
                name: normalize(&owner),
                ttl_s: record.ttl,
                data,
            });
        }
    }
    // What BIND refuses and hickory lets through: a string over 255 bytes, and a CNAME beside
    // other records at its name.
    let origin_text = normalize(&origin.to_ascii());
    let place = |owner: &str, rtype: &str| match line_of_record(written, owner, &origin_text, rtype)
    {
        Some(n) => format!("{}:{n}", path.display()),
        None => path.display().to_string(),
    };
    for set in sets.values() {
        for record in set.records_without_rrsigs() {
            if let RData::TXT(txt) = &record.data
                && let Some(long) = txt.txt_data.iter().find(|s| s.len() > 255)
            {
                let owner = normalize(&record.name.to_ascii());
                return Err(DnsError::ZoneFile {
                    place: place(&owner, "TXT"),
                    message: format!(
                        "{owner} TXT: a quoted string of {} bytes; each holds at most 255 (RFC 1035 section 3.3): split it into several",
                        long.len()
                    ),
                });
            }
        }
    }
    for r in records
        .iter()
        .filter(|r| matches!(r.data, RecordData::Cname(_)))
    {
        if records
            .iter()
            .any(|o| o.name == r.name && !matches!(o.data, RecordData::Cname(_)))
        {
            return Err(DnsError::ZoneFile {
                place: place(&r.name, "CNAME"),
                message: format!(
                    "{} has a CNAME and other records; a CNAME must be its name's only record (RFC 1034 section 3.6.2, RFC 2181 section 10.1)",
                    r.name
                ),
            });
        }
    }
    // The parser's map is keyed by name and type; the file's order is not kept, so order
    // the records as a reader expects them: by name, then type.
    records.sort_by(|a, b| {
        (a.name.as_str(), u16::from(a.data.record_type()))
            .cmp(&(b.name.as_str(), u16::from(b.data.record_type())))
    });
    Ok(ZoneFile {
        origin: normalize(&origin.to_ascii()),
        records,
    })
}

fn data_of(rdata: &RData) -> Option<RecordData> {
    let name = |n: &Name| normalize(&n.to_ascii());
    Some(match rdata {
        RData::A(a) => RecordData::A(a.0),
        RData::AAAA(a) => RecordData::Aaaa(a.0),
        RData::MX(mx) => RecordData::Mx {
            preference: mx.preference,
            exchange: name(&mx.exchange),
        },
        RData::TXT(txt) => RecordData::Txt(
            txt.txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s))
                .collect(),
        ),
        RData::CNAME(c) => RecordData::Cname(name(&c.0)),
        RData::PTR(p) => RecordData::Ptr(name(&p.0)),
        RData::NS(ns) => RecordData::Ns(name(&ns.0)),
        RData::SOA(soa) => RecordData::Soa(Soa {
            mname: name(&soa.mname),
            rname: name(&soa.rname),
            serial: soa.serial,
            refresh: soa.refresh,
            retry: soa.retry,
            expire: soa.expire,
            minimum: soa.minimum,
        }),
        _ => return None,
    })
}

/// hickory's parser names what it met, not where: find the first line whose prefix of the file
/// fails with the same message (earlier prefixes parse, or fail differently when they cut a
/// parenthesised record).
fn failing_line(text: &str, path: &Path, origin: &Option<Name>, message: &str) -> Option<usize> {
    let ends: Vec<usize> = text
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .chain(std::iter::once(text.len()))
        .collect();
    let fails_same = |lines: usize| {
        Parser::new(
            &text[..ends[lines - 1]],
            Some(path.to_path_buf()),
            origin.clone(),
        )
        .parse()
        .err()
        .is_some_and(|e| e.to_string() == message)
    };
    // The first prefix that fails as the whole file does: a binary search over line counts.
    let (mut lo, mut hi) = (1, ends.len());
    if !fails_same(hi) {
        return None;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails_same(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

/// hickory's words, with the fix for the common case said plainly.
fn explain(message: &str, origin_given: bool) -> String {
    let about_names = ["origin", "Origin", "name not specified"];
    if !origin_given && about_names.iter().any(|w| message.contains(w)) {
        format!("{message} (set $ORIGIN in the file, or give the zone's name)")
    } else {
        message.to_string()
    }
}

/// The line of the first record of type `rtype` whose owner (written absolute, relative to
/// `origin`, or `@`) is `owner`.
fn line_of_record(text: &str, owner: &str, origin: &str, rtype: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let mut tokens = line.split_whitespace();
            let Some(first) = tokens.next().filter(|_| !line.starts_with([' ', '\t'])) else {
                return false;
            };
            let first = first.to_ascii_lowercase();
            let named = match first.strip_suffix('.') {
                Some(absolute) => absolute == owner,
                None if first == "@" => owner == origin,
                None => format!("{first}.{origin}") == owner,
            };
            named
                && line
                    .split_whitespace()
                    .any(|t| t.eq_ignore_ascii_case(rtype))
        })
        .map(|n| n + 1)
}

/// Records as BIND reads them, rewritten for hickory 0.26's parser, which mangles a quoted
/// string inside parentheses (the form BIND and opendkim-genkey write DKIM keys in: the quotes
/// stay in the data and a ';' inside them starts a comment) and decodes `\DDD` wrongly
/// (`\059` is not ';'). So a record in parentheses is joined onto its first line (its comments
/// dropped, the line breaks it held put back after it, so later line numbers hold), a ';'
/// inside quotes becomes `\;`, and a `\DDD` of a printable character becomes that character
/// (escaped where it must be). Err: the line of a '(' never closed (an independent review:
/// the rest of the file was silently taken into its record).
fn mend_quoted(text: &str) -> Result<String, usize> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    let (mut quoted, mut comment, mut depth, mut held) = (false, false, 0usize, 0usize);
    let (mut line, mut opened_at) = (1usize, 0usize);
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        if comment {
            if c == '\n' {
                comment = false;
            } else {
                if depth == 0 {
                    out.push(c);
                }
                continue;
            }
        }
        match c {
            '\\' => {
                let digits: String = chars.clone().take(3).collect();
                let value =
                    (quoted && digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| digits.parse::<u32>().ok())
                        .flatten()
                        .and_then(char::from_u32)
                        .filter(|c| (' '..='~').contains(c));
                match value {
                    Some(v) => {
                        for _ in 0..3 {
                            chars.next();
                        }
                        if matches!(v, '"' | '\\' | ';') {
                            out.push('\\');
                        }
                        out.push(v);
                    }
                    None => {
                        out.push(c);
                        if let Some(next) = chars.next() {
                            out.push(next);
                        }
                    }
                }
            }
            '"' => {
                quoted = !quoted;
                out.push(c);
            }
            ';' if quoted => out.push_str("\\;"),
            ';' => {
                comment = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '(' if !quoted => {
                if depth == 0 {
                    opened_at = line;
                }
                depth += 1;
                out.push(' ');
            }
            ')' if !quoted && depth > 0 => {
                depth -= 1;
                out.push(' ');
            }
            '\n' if depth > 0 => {
                held += 1;
                out.push(' ');
            }
            '\n' => {
                out.push('\n');
                for _ in 0..std::mem::take(&mut held) {
                    out.push('\n');
                }
            }
            _ => out.push(c),
        }
    }
    if depth > 0 {
        return Err(opened_at);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lookup, ZoneSet};
    use hickory_proto::rr::RecordType;

    const ZONE: &str = "$ORIGIN customer.test.\n$TTL 600\n\
        @ IN SOA ns1 hostmaster 2026113001 3600 600 86400 300\n\
        @ IN NS ns1\n\
        ns1 IN A 192.0.2.53\n\
        @ IN MX 10 mail\n\
        mail IN A 192.0.2.25\n\
        mail IN AAAA 2001:db8::25\n\
        @ IN TXT \"v=spf1 ip4:192.0.2.0/24 \" \"ip6:2001:db8::/32 -all\"\n\
        www IN CNAME mail\n\
        25.2.0.192.in-addr.arpa. IN PTR mail.customer.test.\n";

    #[test]
    fn keys_written_over_lines_in_parentheses_and_decimal_escapes_are_read_as_bind_reads_them() {
        let zone = "$ORIGIN k.test.\n\
            a._domainkey IN TXT ( \"v=DKIM1; k=rsa; \"\n\
            \t\"p=AAAA\" ) ; opendkim-genkey's form\n\
            b._domainkey IN TXT \"v=DKIM1\\059 k=rsa\\059 p=\\065B\"\n\
            c IN TXT \"quote \\\" and \\\\ and \\; stay\"\n";
        let file = parse(zone, Path::new("k.zone"), None).unwrap();
        let txt = |name: &str| {
            file.records
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.data.clone())
        };
        assert_eq!(
            txt("a._domainkey.k.test"),
            Some(RecordData::Txt("v=DKIM1; k=rsa; p=AAAA".into()))
        );
        assert_eq!(
            txt("b._domainkey.k.test"),
            Some(RecordData::Txt("v=DKIM1; k=rsa; p=AB".into()))
        );
        assert_eq!(
            txt("c.k.test"),
            Some(RecordData::Txt("quote \" and \\ and ; stay".into()))
        );
        assert_eq!(file.records.len(), 3, "{:?}", file.records);
    }

    #[test]
    fn what_bind_refuses_is_refused_with_the_line() {
        let long = "x".repeat(300);
        let zone = format!("$ORIGIN k.test.\n@ IN MX 10 mx\nkey IN TXT \"{long}\"\n");
        let e = parse(&zone, Path::new("k.zone"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k.zone:3") && e.contains("300 bytes"), "{e}");
        let zone = "$ORIGIN k.test.\n@ IN MX 10 mx\nwww IN A 192.0.2.1\nwww IN CNAME mx\n";
        let e = parse(zone, Path::new("k.zone"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k.zone:4") && e.contains("CNAME"), "{e}");
    }

    #[test]
    fn a_zone_file_becomes_the_model_with_aliases_followed() {
        let file = parse(ZONE, Path::new("customer.zone"), None).unwrap();
        assert_eq!(file.origin, "customer.test");
        let mut zones = ZoneSet::new();
        zones.add("customer.test", RecordData::Txt("v=spf1 -all".into()));
        zones.overlay(&file.origin, file.records);
        // The file's TXT replaced the generated one; its strings are joined.
        assert_eq!(
            zones.lookup("customer.test", RecordType::TXT),
            Lookup::Answer(vec![RecordData::Txt(
                "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all".into()
            )])
        );
        assert_eq!(
            zones.lookup("www.customer.test", RecordType::AAAA),
            Lookup::Answer(vec![RecordData::Aaaa("2001:db8::25".parse().unwrap())])
        );
        assert_eq!(
            zones.lookup("25.2.0.192.in-addr.arpa", RecordType::PTR),
            Lookup::Answer(vec![RecordData::Ptr("mail.customer.test".into())])
        );
        assert_eq!(zones.records_at("mail.customer.test")[0].ttl_s, 600);
        // The file's SOA and NS are served in place of fake-dns's own.
        let catalog = zones.to_catalog("127.0.0.1".parse().unwrap());
        assert!(catalog.is_ok(), "{:?}", catalog.err());
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let bad = "$ORIGIN x.test.\n@ IN A 192.0.2.1\nmail IN A 300.1.2.3\n";
        let e = parse(bad, Path::new("bad.zone"), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bad.zone:3: "), "{e}");
        let e = parse("@ IN A 192.0.2.1\n", Path::new("o.zone"), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("o.zone:1: ") && e.contains("$ORIGIN"), "{e}");
        let e = parse(
            "$ORIGIN x.test.\n@ IN HINFO \"a\" \"b\"\n",
            Path::new("t.zone"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("t.zone: x.test. HINFO"), "{e}");
        let e = load(Path::new("/nonexistent/z.zone"), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/z.zone: "), "{e}");
        // An independent review: a '(' never closed took every later record into its own.
        let e = parse(
            "$ORIGIN x.test.\n; a comment (\nfoo IN A ( 127.0.0.1\nbar IN A 127.0.0.2\nbaz IN MX 10 mx.x.test.\n",
            Path::new("p.zone"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("p.zone:3: ") && e.contains("never closed"),
            "{e}"
        );
    }

    #[test]
    fn the_origin_can_be_given() {
        let file = parse("@ IN A 192.0.2.1\n", Path::new("z"), Some("given.test.")).unwrap();
        assert_eq!(file.origin, "given.test");
        assert_eq!(file.records[0].name, "given.test");
    }
}
