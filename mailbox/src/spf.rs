//! SPF (RFC 7208): the record's syntax and `check_host()`, over any DNS ([`SpfDns`]).
//!
//! Written here rather than taken from a crate: mail-auth 0.13's SPF (the chosen base) gives the
//! RFC 7208 test suite's expected result in 149 of 203 cases (it accepts records the RFC's
//! grammar refuses, picks one of several records, does not count void lookups, treats an
//! IPv4-mapped client address as IPv6), and viaspf, which follows the RFC, is GPL-3.0. The
//! suite runs in sim/tests/spf_suite.rs; section numbers below are RFC 7208's.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;

/// The record types SPF asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rr {
    A,
    Aaaa,
    Mx,
    Txt,
    Ptr,
}

impl Rr {
    pub fn record_type(self) -> hickory_resolver::proto::rr::RecordType {
        use hickory_resolver::proto::rr::RecordType;
        match self {
            Rr::A => RecordType::A,
            Rr::Aaaa => RecordType::AAAA,
            Rr::Mx => RecordType::MX,
            Rr::Txt => RecordType::TXT,
            Rr::Ptr => RecordType::PTR,
        }
    }
}

/// One query's answer, records in text form (addresses, names without the trailing dot, TXT
/// strings joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Records(Vec<String>),
    /// NXDOMAIN, or the name has no records of the type: a "void lookup" (section 4.6.4).
    Void,
    /// SERVFAIL, timeout, or any other failure (section 2.6.6's temperror).
    Temp(String),
}

/// Where `check_host()` looks things up.
pub trait SpfDns: Sync {
    fn query(&self, name: &str, rr: Rr) -> impl Future<Output = Answer> + Send;
}

/// The result of `check_host()` (section 2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    None,
    Neutral,
    Pass,
    Fail,
    SoftFail,
    TempError,
    PermError,
}

impl SpfResult {
    pub fn word(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

/// A result, the domain it is about, why, and the domain's explanation of a fail (`exp=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: SpfResult,
    pub domain: String,
    pub reason: String,
    pub explanation: Option<String>,
}

/// DNS-querying terms allowed in one evaluation (section 4.6.4).
pub const DNS_TERMS_MAX: usize = 10;
/// Lookups that may come back empty before the evaluation is a permerror (section 4.6.4).
pub const VOID_LOOKUPS_MAX: usize = 2;
/// MX names (mx) and PTR names (ptr, %{p}) looked at (section 4.6.4).
const NAMES_MAX: usize = 10;

// ---------------------------------------------------------------------------------------------
// Syntax (section 12's ABNF)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(String),
    A(Option<String>, Option<u8>, Option<u8>),
    Mx(Option<String>, Option<u8>, Option<u8>),
    Ptr(Option<String>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(String),
}

impl Mechanism {
    /// Terms that cost a DNS query (section 4.6.4).
    pub fn queries_dns(&self) -> bool {
        matches!(
            self,
            Mechanism::Include(_)
                | Mechanism::A(..)
                | Mechanism::Mx(..)
                | Mechanism::Ptr(_)
                | Mechanism::Exists(_)
        )
    }
}

/// A parsed record: its mechanisms in order and its modifiers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub terms: Vec<(Qualifier, Mechanism)>,
    pub redirect: Option<String>,
    pub exp: Option<String>,
}

/// True when `text` is an SPF version 1 record (section 4.5): "v=spf1" alone or followed by a
/// space.
pub fn is_spf1(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"v=spf1") && (b.len() == 6 || b[6] == b' ')
}

/// Parse an SPF record; the error says which term breaks the grammar.
pub fn parse(text: &str) -> Result<Record, String> {
    if !is_spf1(text) {
        return Err("not an SPF version 1 record".into());
    }
    let mut record = Record::default();
    // Terms are separated by spaces only (section 12: 1*SP); other white space is an error.
    for term in text[6..].split(' ').filter(|t| !t.is_empty()) {
        if let Some(c) = term.chars().find(|c| !c.is_ascii() || c.is_ascii_control()) {
            return Err(format!("term {term:?}: character {c:?} is not allowed"));
        }
        // A modifier: name "=" macro-string, the name starting with a letter.
        if let Some((name, value)) = term.split_once('=')
            && !name.is_empty()
            && !name.contains(':')
            && !name.contains('/')
        {
            if !name.starts_with(|c: char| c.is_ascii_alphabetic())
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!("modifier {term:?}: invalid name"));
            }
            match name.to_ascii_lowercase().as_str() {
                "redirect" => {
                    check_domain_spec(value).map_err(|e| format!("{term:?}: {e}"))?;
                    if record.redirect.replace(value.to_string()).is_some() {
                        return Err("more than one redirect= modifier".into());
                    }
                }
                "exp" => {
                    check_domain_spec(value).map_err(|e| format!("{term:?}: {e}"))?;
                    if record.exp.replace(value.to_string()).is_some() {
                        return Err("more than one exp= modifier".into());
                    }
                }
                // Unknown modifiers are ignored (section 6), once their value is a valid
                // macro-string.
                _ => check_macro_string(value).map_err(|e| format!("{term:?}: {e}"))?,
            }
            continue;
        }
        if term.starts_with('=') {
            return Err(format!("modifier {term:?}: empty name"));
        }
        let (qualifier, rest) = match term.as_bytes()[0] {
            b'+' => (Qualifier::Pass, &term[1..]),
            b'-' => (Qualifier::Fail, &term[1..]),
            b'~' => (Qualifier::SoftFail, &term[1..]),
            b'?' => (Qualifier::Neutral, &term[1..]),
            _ => (Qualifier::Pass, term),
        };
        let mechanism = parse_mechanism(rest).map_err(|e| format!("term {term:?}: {e}"))?;
        record.terms.push((qualifier, mechanism));
    }
    Ok(record)
}

fn parse_mechanism(text: &str) -> Result<Mechanism, String> {
    let cut = text.find([':', '/']).unwrap_or(text.len());
    let (name, rest) = text.split_at(cut);
    let name = name.to_ascii_lowercase();
    let arg = |rest: &str| -> Result<String, String> {
        let spec = rest
            .strip_prefix(':')
            .ok_or_else(|| format!("{name} needs :domain"))?;
        check_domain_spec(spec)?;
        Ok(spec.to_string())
    };
    match name.as_str() {
        "all" if rest.is_empty() => Ok(Mechanism::All),
        "include" => Ok(Mechanism::Include(arg(rest)?)),
        "exists" => Ok(Mechanism::Exists(arg(rest)?)),
        "ptr" => Ok(Mechanism::Ptr(if rest.is_empty() {
            None
        } else {
            Some(arg(rest)?)
        })),
        "a" | "mx" => {
            let (domain, cidr) = match rest.strip_prefix(':') {
                Some(r) => {
                    // The prefix lengths end the term; a domain may hold ':' and '/'.
                    let at = r.len() - cidr_suffix(r).len();
                    check_domain_spec(&r[..at])?;
                    (Some(r[..at].to_string()), &r[at..])
                }
                None => (None, rest),
            };
            let (v4, v6) = dual_cidr(cidr)?;
            Ok(if name == "a" {
                Mechanism::A(domain, v4, v6)
            } else {
                Mechanism::Mx(domain, v4, v6)
            })
        }
        "ip4" => {
            let (addr, len) = network(rest, "ip4", 32)?;
            Ok(Mechanism::Ip4(addr, len))
        }
        "ip6" => {
            let (addr, len) = network(rest, "ip6", 128)?;
            Ok(Mechanism::Ip6(addr, len))
        }
        _ => Err(format!("unknown mechanism {name:?}")),
    }
}

/// `ip4:` / `ip6:` network: `:address[/length]` (length at most `max`, `max` by default).
fn network<T: std::str::FromStr>(rest: &str, name: &str, max: u8) -> Result<(T, u8), String> {
    let r = rest
        .strip_prefix(':')
        .ok_or_else(|| format!("{name} needs :address"))?;
    let (addr, len) = r.split_once('/').map_or((r, None), |(a, l)| (a, Some(l)));
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an {name} address"))?;
    let len = match len {
        Some(l) => cidr_length(l, max)?,
        None => max,
    };
    Ok((addr, len))
}

/// The `/N`, `//N` or `/N//M` that ends `text`, if any (digits only; checked by dual_cidr).
fn cidr_suffix(text: &str) -> &str {
    let digits_before = |t: &str, sep: &str| -> Option<usize> {
        let at = t.rfind(sep)?;
        let tail = &t[at + sep.len()..];
        (!tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit())).then_some(at)
    };
    let mut start = text.len();
    if let Some(at) = digits_before(text, "//") {
        start = at;
    }
    if let Some(at) = digits_before(&text[..start], "/")
        && !text[..at].ends_with('/')
    {
        start = at;
    }
    &text[start..]
}

/// A prefix length: "0", or a number without a leading zero, at most `max`.
fn cidr_length(text: &str, max: u8) -> Result<u8, String> {
    let ok = !text.is_empty()
        && text.len() <= 3
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    match text.parse::<u8>() {
        Ok(n) if ok && n <= max => Ok(n),
        _ => Err(format!(
            "prefix length /{text} (0 to {max}, no leading zero)"
        )),
    }
}

/// `[ "/" ip4-cidr-length ] [ "//" ip6-cidr-length ]`.
fn dual_cidr(text: &str) -> Result<(Option<u8>, Option<u8>), String> {
    if text.is_empty() {
        return Ok((None, None));
    }
    let (v4, v6) = match text.find("//") {
        Some(at) => (&text[..at], Some(&text[at + 2..])),
        None => (text, None),
    };
    let v4 = match v4 {
        "" => None,
        t => Some(cidr_length(
            t.strip_prefix('/').ok_or_else(|| format!("{t:?}"))?,
            32,
        )?),
    };
    let v6 = v6.map(|t| cidr_length(t, 128)).transpose()?;
    Ok((v4, v6))
}

/// `macro-string domain-end` (section 7.1): the literal end must be a valid top label, unless
/// the spec ends in a macro.
fn check_domain_spec(spec: &str) -> Result<(), String> {
    check_macro_string(spec)?;
    if spec.is_empty() {
        return Err("empty domain".into());
    }
    if spec.ends_with('}') {
        return Ok(());
    }
    let trimmed = spec.strip_suffix('.').unwrap_or(spec);
    let top = trimmed.rsplit('.').next().unwrap_or("");
    if !trimmed.contains('.') || !is_toplabel(top) {
        return Err(format!("{spec:?} does not end in a valid top-level label"));
    }
    Ok(())
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`.
fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && (b.iter().any(u8::is_ascii_alphabetic) || b.contains(&b'-'))
}

/// A macro-string's escapes are well formed (section 7.1); %{c}, %{r} and %{t} belong to
/// explanation strings only.
fn check_macro_string(text: &str) -> Result<(), String> {
    check_macros(text, false)
}

fn check_macros(text: &str, explanation: bool) -> Result<(), String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match b.get(i + 1) {
                Some(b'%' | b'_' | b'-') => i += 2,
                Some(b'{') => {
                    let close = text[i..]
                        .find('}')
                        .ok_or_else(|| format!("unclosed macro in {text:?}"))?;
                    let m = parse_macro(&text[i + 2..i + close])?;
                    if !explanation && b"crt".contains(&m.letter) {
                        return Err(format!(
                            "%{{{}}} is only for explanations",
                            m.letter as char
                        ));
                    }
                    i += close + 1;
                }
                _ => return Err(format!("bad % escape in {text:?}")),
            },
            0x21..=0x7e => i += 1,
            // explanation-string = *( macro-string / SP )
            b' ' if explanation => i += 1,
            c => return Err(format!("character {:?} in {text:?}", c as char)),
        }
    }
    Ok(())
}

struct Macro {
    letter: u8,
    upper: bool,
    keep: Option<usize>,
    reverse: bool,
    delimiters: Vec<u8>,
}

/// `macro-letter transformers *delimiter`.
fn parse_macro(body: &str) -> Result<Macro, String> {
    let b = body.as_bytes();
    let letter = *b.first().ok_or("empty macro")?;
    if !b"slodiphcrtvSLODIPHCRTV".contains(&letter) {
        return Err(format!("unknown macro letter {:?}", letter as char));
    }
    let mut i = 1;
    let digits_end = b[i..].iter().take_while(|c| c.is_ascii_digit()).count() + i;
    let keep = if digits_end > i {
        let n: usize = body[i..digits_end].parse().map_err(|_| "bad digit count")?;
        if n == 0 {
            return Err("a macro keeps at least one part".into());
        }
        Some(n)
    } else {
        None
    };
    i = digits_end;
    let reverse = b.get(i).is_some_and(|c| c.eq_ignore_ascii_case(&b'r'));
    if reverse {
        i += 1;
    }
    let delimiters: Vec<u8> = b[i..].to_vec();
    if let Some(bad) = delimiters.iter().find(|c| !b".-+,/_=".contains(c)) {
        return Err(format!("bad delimiter {:?}", *bad as char));
    }
    Ok(Macro {
        letter: letter.to_ascii_lowercase(),
        upper: letter.is_ascii_uppercase(),
        keep,
        reverse,
        delimiters,
    })
}

// ---------------------------------------------------------------------------------------------
// Evaluation (section 4)

/// What one `check_host()` evaluation is about.
pub struct Request<'a> {
    pub ip: IpAddr,
    /// The envelope sender; empty: the null sender (checked as postmaster@HELO).
    pub mail_from: &'a str,
    pub helo: &'a str,
    /// The receiving host (for `%{r}` in explanations).
    pub receiver: &'a str,
    /// Seconds since the Unix epoch by the receiver's clock (for `%{t}` in explanations).
    pub now_s: u64,
}

struct Eval<'a, D: SpfDns> {
    dns: &'a D,
    ip: IpAddr,
    sender: String,
    helo: &'a str,
    receiver: &'a str,
    now_s: u64,
    dns_terms: usize,
    void: usize,
}

/// `check_host()` for the MAIL FROM identity (or HELO, for the null sender; section 2.4).
pub async fn check_host<D: SpfDns>(dns: &D, r: &Request<'_>) -> Outcome {
    // An IPv4-mapped IPv6 address is an IPv4 client (section 5).
    let ip = match r.ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(r.ip, IpAddr::V4),
        v4 => v4,
    };
    let sender = if r.mail_from.is_empty() {
        format!("postmaster@{}", r.helo)
    } else if r.mail_from.starts_with('@') {
        format!("postmaster{}", r.mail_from)
    } else {
        r.mail_from.to_string()
    };
    let domain = sender.rsplit_once('@').map_or("", |(_, d)| d).to_string();
    let mut e = Eval {
        dns,
        ip,
        sender,
        helo: r.helo,
        receiver: r.receiver,
        now_s: r.now_s,
        dns_terms: 0,
        void: 0,
    };
    let (result, reason, explanation) = e.check(&domain).await;
    Outcome {
        result,
        domain,
        reason,
        explanation,
    }
}

/// Section 4.3: a name that can be a host's (labels of 1 to 63 octets, at least two labels);
/// an address literal (`MAIL FROM:<a@[192.0.2.1]>`, RFC 5321 section 4.1.3) is none.
fn valid_domain(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    d.len() <= 253
        && d.contains('.')
        && !d.starts_with('[')
        && d.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

type Step = (SpfResult, String, Option<String>);

impl<'a, D: SpfDns> Eval<'a, D> {
    fn check<'s>(&'s mut self, domain: &'s str) -> Pin<Box<dyn Future<Output = Step> + Send + 's>>
    where
        'a: 's,
    {
        Box::pin(async move {
            if !valid_domain(domain) {
                return (
                    SpfResult::None,
                    format!("{domain:?} is not a valid domain (section 4.3)"),
                    None,
                );
            }
            let texts = match self.dns.query(domain, Rr::Txt).await {
                Answer::Records(t) => t,
                Answer::Void => {
                    return (SpfResult::None, format!("{domain} has no SPF record"), None);
                }
                Answer::Temp(e) => {
                    return (
                        SpfResult::TempError,
                        format!("looking up {domain}'s SPF record: {e}"),
                        None,
                    );
                }
            };
            let spf: Vec<&String> = texts.iter().filter(|t| is_spf1(t)).collect();
            let text = match spf.as_slice() {
                [] => return (SpfResult::None, format!("{domain} has no SPF record"), None),
                [one] => one.as_str(),
                _ => {
                    return (
                        SpfResult::PermError,
                        format!("{domain} publishes {} SPF records (section 4.5)", spf.len()),
                        None,
                    );
                }
            };
            let record = match parse(text) {
                Ok(r) => r,
                Err(e) => {
                    return (
                        SpfResult::PermError,
                        format!("{domain}'s SPF record: {e}"),
                        None,
                    );
                }
            };
            for (qualifier, mechanism) in &record.terms {
                if mechanism.queries_dns() {
                    self.dns_terms += 1;
                    if self.dns_terms > DNS_TERMS_MAX {
                        return (
                            SpfResult::PermError,
                            format!("more than {DNS_TERMS_MAX} DNS-querying terms (section 4.6.4)"),
                            None,
                        );
                    }
                }
                match self.matches(domain, mechanism).await {
                    Ok(false) => {}
                    Ok(true) => {
                        let result = match qualifier {
                            Qualifier::Pass => SpfResult::Pass,
                            Qualifier::Fail => SpfResult::Fail,
                            Qualifier::SoftFail => SpfResult::SoftFail,
                            Qualifier::Neutral => SpfResult::Neutral,
                        };
                        let explanation = match (&record.exp, result) {
                            (Some(exp), SpfResult::Fail) => self.explain(domain, exp).await,
                            _ => None,
                        };
                        return (
                            result,
                            format!("{domain}: {} matched", term_text(*qualifier, mechanism)),
                            explanation,
                        );
                    }
                    Err((result, why)) => return (result, why, None),
                }
            }
            // A redirect applies when nothing matched and the record has no "all" (section 6.1).
            let has_all = record.terms.iter().any(|(_, m)| *m == Mechanism::All);
            if let (Some(target), false) = (&record.redirect, has_all) {
                self.dns_terms += 1;
                if self.dns_terms > DNS_TERMS_MAX {
                    return (
                        SpfResult::PermError,
                        format!("more than {DNS_TERMS_MAX} DNS-querying terms (section 4.6.4)"),
                        None,
                    );
                }
                let target = match self.expand(target, domain, false).await {
                    Ok(t) => t,
                    Err(e) => return (SpfResult::PermError, e, None),
                };
                let (result, why, exp) = self.check(&target).await;
                if result == SpfResult::None {
                    return (
                        SpfResult::PermError,
                        format!("redirect={target}: {why}"),
                        None,
                    );
                }
                return (result, why, exp);
            }
            (
                SpfResult::Neutral,
                format!("nothing in {domain}'s SPF record matched"),
                None,
            )
        })
    }

    /// One mechanism against the client; Err ends the evaluation with that result.
    async fn matches(&mut self, domain: &str, m: &Mechanism) -> Result<bool, (SpfResult, String)> {
        match m {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net, len) => Ok(match self.ip {
                IpAddr::V4(ip) => in_v4(ip, *net, *len),
                IpAddr::V6(_) => false,
            }),
            Mechanism::Ip6(net, len) => Ok(match self.ip {
                IpAddr::V6(ip) => in_v6(ip, *net, *len),
                IpAddr::V4(_) => false,
            }),
            Mechanism::Include(spec) => {
                let Some(target) = self.target(spec, domain).await? else {
                    return Ok(false);
                };
                let (result, why, _) = self.check(&target).await;
                match result {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::TempError => Err((SpfResult::TempError, why)),
                    SpfResult::PermError | SpfResult::None => {
                        Err((SpfResult::PermError, format!("include:{target}: {why}")))
                    }
                }
            }
            Mechanism::A(spec, v4, v6) => {
                let Some(target) = self.target_or(spec.as_deref(), domain).await? else {
                    return Ok(false);
                };
                let addrs = self.addresses(&target).await?;
                Ok(addrs.iter().any(|a| self.in_cidr(*a, *v4, *v6)))
            }
            Mechanism::Mx(spec, v4, v6) => {
                let Some(target) = self.target_or(spec.as_deref(), domain).await? else {
                    return Ok(false);
                };
                let names = self.lookup(&target, Rr::Mx).await?;
                if names.len() > NAMES_MAX {
                    return Err((
                        SpfResult::PermError,
                        format!("{target} has more than {NAMES_MAX} MX records (section 4.6.4)"),
                    ));
                }
                for name in names {
                    let addrs = self.addresses(&name).await?;
                    if addrs.iter().any(|a| self.in_cidr(*a, *v4, *v6)) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                let Some(target) = self.target_or(spec.as_deref(), domain).await? else {
                    return Ok(false);
                };
                let target = target.trim_end_matches('.').to_ascii_lowercase();
                Ok(self
                    .validated_names()
                    .await
                    .iter()
                    .any(|n| *n == target || n.ends_with(&format!(".{target}"))))
            }
            Mechanism::Exists(spec) => {
                let Some(target) = self.target(spec, domain).await? else {
                    return Ok(false);
                };
                // Always an A query, whatever the client's address family (section 5.7).
                Ok(!self.lookup(&target, Rr::A).await?.is_empty())
            }
        }
    }

    /// A mechanism's target name after macro expansion; None when that is no valid domain
    /// name: it does not exist, so the mechanism does not match (as section 4.3 treats an
    /// invalid <domain>, and the suite's invalid-hello-macro asks).
    async fn target(
        &mut self,
        spec: &str,
        domain: &str,
    ) -> Result<Option<String>, (SpfResult, String)> {
        let t = self
            .expand(spec, domain, false)
            .await
            .map_err(|e| (SpfResult::PermError, e))?;
        Ok(valid_domain(&t).then_some(t))
    }

    /// The target of a mechanism whose domain-spec is optional (a, mx, ptr): the current
    /// domain when there is none.
    async fn target_or(
        &mut self,
        spec: Option<&str>,
        domain: &str,
    ) -> Result<Option<String>, (SpfResult, String)> {
        match spec {
            Some(s) => self.target(s, domain).await,
            None => Ok(Some(domain.to_string())),
        }
    }

    /// A query whose empty answer counts as a void lookup.
    async fn lookup(&mut self, name: &str, rr: Rr) -> Result<Vec<String>, (SpfResult, String)> {
        match self.dns.query(name, rr).await {
            Answer::Records(r) if !r.is_empty() => Ok(r),
            Answer::Records(_) | Answer::Void => {
                self.void += 1;
                if self.void > VOID_LOOKUPS_MAX {
                    return Err((
                        SpfResult::PermError,
                        format!(
                            "more than {VOID_LOOKUPS_MAX} lookups found nothing (section 4.6.4)"
                        ),
                    ));
                }
                Ok(Vec::new())
            }
            Answer::Temp(e) => Err((SpfResult::TempError, format!("looking up {name}: {e}"))),
        }
    }

    /// The addresses of `name` in the client's family.
    async fn addresses(&mut self, name: &str) -> Result<Vec<IpAddr>, (SpfResult, String)> {
        let rr = if self.ip.is_ipv4() { Rr::A } else { Rr::Aaaa };
        Ok(self
            .lookup(name, rr)
            .await?
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect())
    }

    fn in_cidr(&self, addr: IpAddr, v4: Option<u8>, v6: Option<u8>) -> bool {
        match (self.ip, addr) {
            (IpAddr::V4(ip), IpAddr::V4(net)) => in_v4(ip, net, v4.unwrap_or(32)),
            (IpAddr::V6(ip), IpAddr::V6(net)) => in_v6(ip, net, v6.unwrap_or(128)),
            _ => false,
        }
    }

    /// The client's names that resolve back to it (section 5.5), at most ten looked at.
    async fn validated_names(&mut self) -> Vec<String> {
        let names = match self.dns.query(&reverse_name(self.ip), Rr::Ptr).await {
            Answer::Records(n) => n,
            _ => return Vec::new(),
        };
        let rr = if self.ip.is_ipv4() { Rr::A } else { Rr::Aaaa };
        let mut valid = Vec::new();
        for name in names.into_iter().take(NAMES_MAX) {
            if let Answer::Records(addrs) = self.dns.query(&name, rr).await
                && addrs
                    .iter()
                    .any(|a| a.parse::<IpAddr>().ok() == Some(self.ip))
            {
                valid.push(name.trim_end_matches('.').to_ascii_lowercase());
            }
        }
        valid
    }

    /// The explanation a failing domain gives (section 6.2); any problem: none.
    async fn explain(&mut self, domain: &str, exp: &str) -> Option<String> {
        let target = self.expand(exp, domain, false).await.ok()?;
        let texts = match self.dns.query(&target, Rr::Txt).await {
            Answer::Records(t) if t.len() == 1 => t,
            _ => return None,
        };
        self.expand(&texts[0], domain, true).await.ok()
    }

    /// Macro expansion (section 7); `exp` allows %{c}, %{r} and %{t}.
    async fn expand(&mut self, text: &str, domain: &str, exp: bool) -> Result<String, String> {
        check_macros(text, exp)?;
        let mut out = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            match after.as_bytes()[0] {
                b'%' => out.push('%'),
                b'_' => out.push(' '),
                b'-' => out.push_str("%20"),
                _ => {
                    let close = after.find('}').unwrap_or(after.len());
                    let m = parse_macro(&after[1..close])?;
                    let value = self.macro_value(&m, domain, exp).await?;
                    out.push_str(&transform(&value, &m));
                    rest = &after[close + 1..];
                    continue;
                }
            }
            rest = &after[1..];
        }
        out.push_str(rest);
        if exp {
            return Ok(out);
        }
        // A name over 253 octets loses labels on the left (section 7.3).
        let mut name = out.as_str();
        while name.trim_end_matches('.').len() > 253 {
            match name.split_once('.') {
                Some((_, r)) => name = r,
                None => break,
            }
        }
        Ok(name.to_string())
    }

    async fn macro_value(&mut self, m: &Macro, domain: &str, exp: bool) -> Result<String, String> {
        let (local, sender_domain) = self.sender.rsplit_once('@').unwrap_or(("postmaster", ""));
        Ok(match m.letter {
            b's' => self.sender.clone(),
            b'l' => local.to_string(),
            b'o' => sender_domain.to_string(),
            b'd' => domain.to_string(),
            b'h' => self.helo.to_string(),
            b'i' => match self.ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => v6
                    .octets()
                    .iter()
                    .flat_map(|o| [o >> 4, o & 0xf])
                    .map(|n| format!("{n:x}"))
                    .collect::<Vec<_>>()
                    .join("."),
            },
            b'v' => if self.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
            b'p' => {
                let names = self.validated_names().await;
                let d = domain.trim_end_matches('.').to_ascii_lowercase();
                names
                    .iter()
                    .find(|n| **n == d)
                    .or_else(|| names.iter().find(|n| n.ends_with(&format!(".{d}"))))
                    .or(names.first())
                    .cloned()
                    .unwrap_or_else(|| "unknown".into())
            }
            b'c' if exp => self.ip.to_string(),
            b'r' if exp => self.receiver.to_string(),
            b't' if exp => self.now_s.to_string(),
            other => return Err(format!("%{{{}}} is only for explanations", other as char)),
        })
    }
}

/// Split on the delimiters, reverse, keep the rightmost parts, join with dots (section 7.3);
/// an upper-case letter URL-escapes the result.
fn transform(value: &str, m: &Macro) -> String {
    let delimiters: &[u8] = if m.delimiters.is_empty() {
        b"."
    } else {
        &m.delimiters
    };
    let mut parts: Vec<&str> = value
        .split(|c: char| c.is_ascii() && delimiters.contains(&(c as u8)))
        .collect();
    if m.reverse {
        parts.reverse();
    }
    if let Some(n) = m.keep
        && parts.len() > n
    {
        parts.drain(..parts.len() - n);
    }
    let joined = parts.join(".");
    if !m.upper {
        return joined;
    }
    let mut escaped = String::new();
    for b in joined.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            escaped.push(b as char);
        } else {
            escaped.push_str(&format!("%{b:02X}"));
        }
    }
    escaped
}

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The PTR owner name of an address.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|o| [o >> 4, o & 0xf])
                .map(|n| format!("{n:x}"))
                .collect();
            s.reverse();
            format!("{}.ip6.arpa", s.join("."))
        }
    }
}

fn term_text(q: Qualifier, m: &Mechanism) -> String {
    let q = match q {
        Qualifier::Pass => "+",
        Qualifier::Fail => "-",
        Qualifier::SoftFail => "~",
        Qualifier::Neutral => "?",
    };
    let m = match m {
        Mechanism::All => "all".to_string(),
        Mechanism::Include(d) => format!("include:{d}"),
        Mechanism::A(d, ..) => d.as_ref().map_or("a".into(), |d| format!("a:{d}")),
        Mechanism::Mx(d, ..) => d.as_ref().map_or("mx".into(), |d| format!("mx:{d}")),
        Mechanism::Ptr(d) => d.as_ref().map_or("ptr".into(), |d| format!("ptr:{d}")),
        Mechanism::Ip4(a, l) => format!("ip4:{a}/{l}"),
        Mechanism::Ip6(a, l) => format!("ip6:{a}/{l}"),
        Mechanism::Exists(d) => format!("exists:{d}"),
    };
    format!("{q}{m}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_is_held() {
        assert!(parse("v=spf1 ip4:192.0.2.0/24 a mx:mail.example.com/24//64 ~all").is_ok());
        for bad in [
            "v=spf1 ip4:1.2.3.4/33",
            "v=spf1 ip4:1.2.3.4/032",
            "v=spf1 a:foo.example.123",
            "v=spf1 a:example",
            "v=spf1 foo",
            "v=spf1 =bar",
            "v=spf1 redirect=a.example.com redirect=b.example.com",
            "v=spf1 exp=%{z}.example.com",
            "v=spf1 -all\u{1}",
            "v=spf1 ip4:192.0.2.5\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(!is_spf1("v=spf10"));
        assert!(is_spf1("V=SPF1"));
        // Section 4.3: an address literal is no domain to ask (the result is none).
        assert!(valid_domain("mail.example.com"));
        for bad in ["[192.0.2.1]", "[IPv6:2001:db8::1]", "example", "a..example"] {
            assert!(!valid_domain(bad), "{bad}");
        }
    }

    #[test]
    fn macros_expand_as_section_7_4_shows() {
        // Section 7.4's examples: sender strong-bad@email.example.com, client 192.0.2.3.
        let m = |body: &str| parse_macro(body).unwrap();
        assert_eq!(
            transform("email.example.com", &m("d4")),
            "email.example.com"
        );
        assert_eq!(
            transform("email.example.com", &m("d3")),
            "email.example.com"
        );
        assert_eq!(transform("email.example.com", &m("d2")), "example.com");
        assert_eq!(transform("email.example.com", &m("d1")), "com");
        assert_eq!(
            transform("email.example.com", &m("dr")),
            "com.example.email"
        );
        assert_eq!(transform("email.example.com", &m("d2r")), "example.email");
        assert_eq!(transform("strong-bad", &m("l-")), "strong.bad");
        assert_eq!(transform("strong-bad", &m("lr-")), "bad.strong");
        assert_eq!(transform("strong-bad", &m("l1r-")), "strong");
        assert_eq!(
            transform("strong-bad@email.example.com", &m("S")),
            "strong-bad%40email.example.com"
        );
    }
}
