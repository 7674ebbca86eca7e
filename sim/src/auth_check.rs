//! `mailsim auth check DOMAIN`: a sending domain's DNS setup read as receivers read it, each
//! mistake named with the rule it breaks and what to fix. SPF (RFC 7208), DKIM keys (RFC 6376,
//! RFC 8301, RFC 8463), DMARC (RFC 7489), MX (RFC 5321, RFC 7505), forward-confirmed reverse DNS
//! of the sending addresses, MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) where published.
//!
//! The lookups go to the DNS the caller names (zone files served by fake-dns, or a server);
//! nothing here asks the Internet's DNS or fetches a URL.

use mailsim_mailbox::auth::WireDns;
use mailsim_mailbox::spf::{self, Answer, Mechanism, Qualifier, Rr, SpfResult};
use mailsim_mailbox::tags::tag_list;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

/// How much a finding matters: a failure loses mail (receivers reject it, or it fails
/// authentication); a warning weakens the setup; information is said for the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warn,
    Fail,
}

impl Level {
    /// The check's verdict when this is the most serious finding.
    fn verdict(self) -> &'static str {
        match self {
            Level::Fail => "fail",
            Level::Warn => "warn",
            Level::Info => "pass",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One thing found: the rule (e.g. `spf.lookups`), the DNS name it is about, what is wrong and
/// what to do, and where the rule is written.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub level: Level,
    pub rule: &'static str,
    pub name: String,
    pub message: String,
    pub reference: &'static str,
}

/// The whole check: every finding, and what was looked at.
#[derive(Debug, Serialize)]
pub struct Report {
    pub domain: String,
    /// pass, warn or fail: the most serious finding's level.
    pub result: &'static str,
    pub findings: Vec<Finding>,
    pub checked: Vec<String>,
}

impl Report {
    /// The most serious level found (Info when nothing is wrong).
    pub fn worst(&self) -> Level {
        self.findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Info)
    }

    /// The report as a reader wants it: one line per finding, then the verdict.
    pub fn text(&self) -> String {
        let mut out = format!("auth check {}\n", self.domain);
        for f in &self.findings {
            out.push_str(&format!(
                "{} {:<22} {}: {} ({})\n",
                f.level.word(),
                f.rule,
                f.name,
                f.message,
                f.reference
            ));
        }
        out.push_str(&format!("checked: {}\n", self.checked.join(", ")));
        let count = |l: Level| self.findings.iter().filter(|f| f.level == l).count();
        let verdict = self.result;
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        out.push_str(&format!(
            "result: {verdict} ({}, {})\n",
            plural(count(Level::Fail), "failure"),
            plural(count(Level::Warn), "warning")
        ));
        out
    }
}

/// What to check: the domain, its DKIM selectors (none: a list of common ones is tried) and
/// the addresses it sends from (their reverse DNS and SPF authorisation).
pub struct Request<'a> {
    pub domain: &'a str,
    pub selectors: &'a [String],
    pub ips: &'a [IpAddr],
}

/// Selectors tried when none is named: those of common mail services and MTAs' defaults.
const COMMON_SELECTORS: &[&str] = &[
    "default",
    "dkim",
    "mail",
    "selector1",
    "selector2",
    "google",
    "k1",
    "s1",
    "s2",
    "mailsim",
];

/// The organizational domain (RFC 7489 section 3.2): the registered domain, one label below
/// its public suffix. mailsim bundles no Public Suffix List: the suffix is the last label,
/// or the last two where the second-level label is one of the usual registry ones under a
/// two-letter country code (co.uk, com.au, ne.jp, ...). Names under other multi-label
/// suffixes are taken one level too high.
pub fn organizational_domain(domain: &str) -> String {
    let labels: Vec<&str> = domain.trim_end_matches('.').split('.').collect();
    const SECOND_LEVEL: &[&str] = &[
        "co", "com", "net", "org", "gov", "ac", "edu", "ne", "or", "go", "gob", "mil", "nic",
    ];
    let n = labels.len();
    let suffix = if n >= 3
        && labels[n - 1].len() == 2
        && SECOND_LEVEL.contains(&labels[n - 2].to_ascii_lowercase().as_str())
    {
        2
    } else {
        1
    };
    labels[n.saturating_sub(suffix + 1)..]
        .join(".")
        .to_ascii_lowercase()
}

/// A host name as DNS carries it: a domain (or a selector, `dots` allowing sub-labels) in
/// A-labels, each label 1 to 63 letters, digits, '-' or '_', at most 253 characters in all.
fn dns_name(what: &str, given: &str, need_dot: bool) -> anyhow::Result<String> {
    let trimmed = given.strip_suffix('.').unwrap_or(given);
    // Unicode names (IDNA) are asked for in their xn-- form.
    let ascii = idna::domain_to_ascii(trimmed)
        .map_err(|_| anyhow::anyhow!("{what} {given:?}: not a valid international domain name"))?;
    let bad = |why: &str| anyhow::anyhow!("{what} {given:?}: {why}");
    if ascii.is_empty() {
        return Err(bad("empty"));
    }
    if ascii.len() > 253 {
        return Err(bad("longer than 253 characters (RFC 1035 section 2.3.4)"));
    }
    if ascii.parse::<IpAddr>().is_ok() || ascii.starts_with('[') {
        return Err(bad("an address, not a domain name"));
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(bad("has an empty label"));
        }
        if label.len() > 63 {
            return Err(bad(
                "has a label longer than 63 characters (RFC 1035 section 2.3.4)",
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(bad(&format!("{c:?} is not allowed in a host name")));
        }
    }
    if need_dot && !ascii.contains('.') {
        return Err(bad("expected a domain name such as example.com"));
    }
    Ok(ascii)
}

/// Check `request.domain` against the DNS server at `server`. An error (not a finding) when
/// the request is not a name or the server does not answer at all.
pub async fn check(server: SocketAddr, request: &Request<'_>) -> anyhow::Result<Report> {
    let dns = WireDns::new(fake_dns::resolver_for(server))?;
    let domain = dns_name("DOMAIN", request.domain, true)?;
    let selectors = request
        .selectors
        .iter()
        .map(|s| dns_name("--selector", s, false))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // An IPv4 address written in IPv6 (::ffff:a.b.c.d) is that IPv4 sender (RFC 7208 section 5).
    let ips: Vec<IpAddr> = request
        .ips
        .iter()
        .map(|ip| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*ip, IpAddr::V4),
            v4 => *v4,
        })
        .collect();
    // A server that answers nothing is not a domain with every record broken.
    if let Answer::Temp(e) = spf::SpfDns::query(&dns, &domain, Rr::Txt).await {
        anyhow::bail!("the DNS server at {server} does not answer for {domain}: {e}");
    }
    let mut c = Checker {
        dns,
        domain: domain.clone(),
        findings: Vec::new(),
        checked: Vec::new(),
        spf_cache: std::collections::HashMap::new(),
    };
    c.spf(&ips).await;
    c.dkim(&selectors).await;
    c.dmarc().await;
    c.mx().await;
    c.ptr(&ips).await;
    c.mta_sts().await;
    c.tls_rpt().await;
    // Most serious first; within a level, in the order checked.
    c.findings.sort_by_key(|f| std::cmp::Reverse(f.level));
    let mut report = Report {
        domain,
        result: "",
        findings: c.findings,
        checked: c.checked,
    };
    report.result = report.worst().verdict();
    Ok(report)
}

struct Checker {
    dns: WireDns,
    domain: String,
    findings: Vec<Finding>,
    checked: Vec<String>,
    /// SPF records already read, by domain (an include reached twice is read once).
    spf_cache: std::collections::HashMap<String, Option<Option<spf::Record>>>,
}

const SPF_SYNTAX: &str = "RFC 7208 section 4.6 and section 12";
const SPF_LIMITS: &str = "RFC 7208 section 4.6.4";

impl Checker {
    fn add(
        &mut self,
        level: Level,
        rule: &'static str,
        name: &str,
        message: String,
        reference: &'static str,
    ) {
        self.findings.push(Finding {
            level,
            rule,
            name: name.to_string(),
            message,
            reference,
        });
    }

    /// A lookup's records; None (and a finding) when the DNS failed to answer, since every
    /// receiver then defers or errs.
    async fn lookup(&mut self, name: &str, rr: Rr) -> Option<Vec<String>> {
        match spf::SpfDns::query(&self.dns, name, rr).await {
            Answer::Records(r) => Some(r),
            Answer::Void => Some(Vec::new()),
            Answer::Temp(e) => {
                self.add(
                    Level::Fail,
                    "dns.error",
                    name,
                    format!(
                        "the {} lookup failed ({e}): receivers that cannot read it defer the mail or act as if the record were missing; make the name answer",
                        rr.record_type()
                    ),
                    "RFC 1035 section 4.1.1 (server failure), RFC 2308",
                );
                None
            }
        }
    }

    /// The TXT records at `name` that start with `prefix` (compared as `matches` says).
    async fn txt_records(
        &mut self,
        name: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Option<Vec<String>> {
        let all = self.lookup(name, Rr::Txt).await?;
        Some(all.into_iter().filter(|t| matches(t)).collect())
    }

    /// The one TXT record at `name` that starts with `prefix`; None when there is none, or
    /// several (a finding: senders then use none of them).
    async fn the_record(
        &mut self,
        name: &str,
        prefix: &str,
        rule: &'static str,
        what: &str,
        reference: &'static str,
    ) -> Option<String> {
        let records = self.txt_records(name, |t| t.starts_with(prefix)).await?;
        match records.as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            several => {
                self.add(
                    Level::Fail,
                    rule,
                    name,
                    format!(
                        "{} {what} records: senders treat the domain as publishing none; keep one",
                        several.len()
                    ),
                    reference,
                );
                None
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // SPF

    async fn spf(&mut self, ips: &[IpAddr]) {
        self.checked.push("SPF".into());
        let domain = self.domain.clone();
        let Some(record) = self.spf_record(&domain, None).await else {
            return;
        };
        let Some(record) = record else {
            self.add(
                Level::Fail,
                "spf.none",
                &domain,
                "no SPF record: receivers get SPF none and cannot tell your servers from a forger's; publish \"v=spf1 ip4:... -all\" (Google and Yahoo require SPF or DKIM of every sender, both of bulk senders)".into(),
                "RFC 7208 section 3",
            );
            return;
        };
        self.spf_all(&domain, &record);
        self.spf_limits(&domain, record).await;
        for &ip in ips {
            let request = spf::Request {
                ip,
                mail_from: &format!("postmaster@{domain}"),
                helo: &domain,
                receiver: "auth-check.mailsim.test",
                now_s: 0,
            };
            let outcome = spf::check_host(&self.dns, &request).await;
            if outcome.result != SpfResult::Pass {
                self.add(
                    Level::Fail,
                    "spf.ip-not-authorised",
                    &domain,
                    format!(
                        "mail from {ip} gets SPF {} ({}); add the address (ip4:/ip6:) or the include of the service that sends from it",
                        outcome.result.word(),
                        outcome.reason
                    ),
                    "RFC 7208 section 2.6",
                );
            }
        }
    }

    /// The one SPF record at `name`: Some(None) when there is none, None when it cannot be used
    /// (the DNS failed, several records, a syntax error: each said). `via` names the include or
    /// redirect that led here.
    async fn spf_record(&mut self, name: &str, via: Option<&str>) -> Option<Option<spf::Record>> {
        if let Some(known) = self.spf_cache.get(name) {
            return known.clone();
        }
        let record = self.read_spf_record(name, via).await;
        self.spf_cache.insert(name.to_string(), record.clone());
        record
    }

    async fn read_spf_record(
        &mut self,
        name: &str,
        via: Option<&str>,
    ) -> Option<Option<spf::Record>> {
        let records = self.txt_records(name, spf::is_spf1).await?;
        if let [one] = records.as_slice()
            && one.len() > 450
        {
            self.add(
                Level::Warn,
                "spf.size",
                name,
                format!("the SPF record is {} bytes: answers over 512 bytes need TCP, which some receivers do not try; keep it under 450 (use includes or fewer terms)", one.len()),
                "RFC 7208 section 3.4",
            );
        }
        let from = via
            .map(|v| format!(" (reached by {v})"))
            .unwrap_or_default();
        match records.as_slice() {
            [] => Some(None),
            [one] => match spf::parse(one) {
                Ok(r) => Some(Some(r)),
                Err(e) => {
                    self.add(
                        Level::Fail,
                        "spf.syntax",
                        name,
                        format!("the SPF record{from} breaks the grammar: {e}; receivers answer permerror for every message"),
                        SPF_SYNTAX,
                    );
                    None
                }
            },
            several => {
                self.add(
                    Level::Fail,
                    "spf.multiple",
                    name,
                    format!(
                        "{} SPF records{from}: receivers answer permerror; merge them into one",
                        several.len()
                    ),
                    "RFC 7208 section 4.5",
                );
                None
            }
        }
    }

    /// The top record's catch-all: what happens to mail from hosts it does not list.
    fn spf_all(&mut self, domain: &str, record: &spf::Record) {
        let all = record
            .terms
            .iter()
            .find(|(_, m)| *m == Mechanism::All)
            .map(|(q, _)| *q);
        if let Some(at) = record.terms.iter().position(|(_, m)| *m == Mechanism::All)
            && at + 1 < record.terms.len()
        {
            self.add(
                Level::Warn,
                "spf.after-all",
                domain,
                format!(
                    "{} term(s) after \"all\" are never evaluated; move them before it",
                    record.terms.len() - at - 1
                ),
                "RFC 7208 section 5.1",
            );
        }
        for (_, m) in &record.terms {
            if let Mechanism::Ptr(_) = m {
                self.add(
                    Level::Warn,
                    "spf.ptr",
                    domain,
                    "the ptr mechanism is slow and unreliable and receivers may skip it; list the addresses (ip4:/ip6:) instead".into(),
                    "RFC 7208 section 5.5",
                );
            }
        }
        match all {
            Some(Qualifier::Pass) => self.add(
                Level::Fail,
                "spf.all-pass",
                domain,
                "\"+all\" authorises every host on the Internet to send as this domain; end with \"-all\" or \"~all\"".into(),
                "RFC 7208 section 5.1",
            ),
            Some(Qualifier::Neutral) => self.add(
                Level::Warn,
                "spf.all-neutral",
                domain,
                "\"?all\" makes mail from any other host neutral, which receivers treat as no SPF at all; end with \"-all\" or \"~all\"".into(),
                "RFC 7208 section 8.2",
            ),
            Some(_) => {
                if let Some(r) = &record.redirect {
                    self.add(
                        Level::Warn,
                        "spf.redirect-ignored",
                        domain,
                        format!("\"redirect={r}\" is ignored because the record has an \"all\" mechanism; remove one of the two"),
                        "RFC 7208 section 6.1",
                    );
                }
            }
            None if record.redirect.is_none() => self.add(
                Level::Warn,
                "spf.no-all",
                domain,
                "the record ends without \"all\" or \"redirect=\": mail from unlisted hosts is neutral; end with \"-all\" or \"~all\"".into(),
                "RFC 7208 section 4.7",
            ),
            None => {}
        }
    }

    /// Count, over every include and redirect, the terms that cost a DNS query and the lookups
    /// that come back empty, as a receiver evaluating mail from an unlisted host does.
    async fn spf_limits(&mut self, domain: &str, record: spf::Record) {
        let mut terms = 0usize;
        // Void lookups as a receiver counts them for an IPv4 client (A queries) and for an
        // IPv6 one (AAAA): the worse of the two.
        let (mut voids4, mut voids6) = (0usize, 0usize);
        let mut queue: VecDeque<(String, spf::Record, Vec<String>)> = VecDeque::new();
        queue.push_back((domain.to_string(), record, vec![domain.to_string()]));
        // Past 10 terms a receiver stops; so does the walk (however the includes branch).
        'walk: while let Some((at, record, chain)) = queue.pop_front() {
            let mut targets: Vec<(&'static str, String)> = Vec::new();
            for (q, m) in &record.terms {
                if m.queries_dns() {
                    terms += 1;
                    if terms > spf::DNS_TERMS_MAX {
                        break 'walk;
                    }
                }
                let open = match m {
                    Mechanism::Ip4(_, len) if *q == Qualifier::Pass => Some((*len, 32u32, 16u8)),
                    Mechanism::Ip6(_, len) if *q == Qualifier::Pass => Some((*len, 128, 32)),
                    _ => None,
                };
                if let Some((len, bits, wide)) = open
                    && len < wide
                {
                    let every = len == 0;
                    self.add(
                        if every { Level::Fail } else { Level::Warn },
                        "spf.open-range",
                        &at,
                        if every {
                            "an ip4:/0 or ip6:/0 range authorises every address on the Internet, as +all does; list your own".to_string()
                        } else {
                            format!("a /{len} range authorises 2^{} addresses; list the ones you send from", bits - len as u32)
                        },
                        "RFC 7208 section 5.6",
                    );
                }
                match m {
                    Mechanism::Include(t) => targets.push(("include", t.clone())),
                    Mechanism::A(t, ..) => {
                        let name = t.clone().unwrap_or_else(|| at.clone());
                        if !name.contains('%') {
                            let v4 = self.lookup(&name, Rr::A).await.unwrap_or_default();
                            let v6 = self.lookup(&name, Rr::Aaaa).await.unwrap_or_default();
                            voids4 += usize::from(v4.is_empty());
                            voids6 += usize::from(v6.is_empty());
                        }
                    }
                    Mechanism::Mx(t, ..) => {
                        let name = t.clone().unwrap_or_else(|| at.clone());
                        if !name.contains('%') {
                            let mx = self.lookup(&name, Rr::Mx).await.unwrap_or_default();
                            if mx.is_empty() {
                                voids4 += 1;
                                voids6 += 1;
                            } else if mx.len() > 10 {
                                self.add(
                                    Level::Fail,
                                    "spf.mx-names",
                                    &at,
                                    format!("\"mx\" at {name} names {} MX hosts; receivers stop at 10 and answer permerror", mx.len()),
                                    SPF_LIMITS,
                                );
                            }
                        }
                    }
                    Mechanism::Exists(t)
                        if !t.contains('%')
                            && self.lookup(t, Rr::A).await.unwrap_or_default().is_empty() =>
                    {
                        voids4 += 1;
                        voids6 += 1;
                    }
                    _ => {}
                }
            }
            if let Some(r) = &record.redirect
                && !record.terms.iter().any(|(_, m)| *m == Mechanism::All)
            {
                terms += 1;
                targets.push(("redirect", r.clone()));
            }
            for (kind, target) in targets {
                // A target built from macros depends on the message; it is not followed.
                if target.contains('%') {
                    continue;
                }
                let target = target.trim_end_matches('.').to_ascii_lowercase();
                if chain.contains(&target) {
                    self.add(
                        Level::Fail,
                        "spf.loop",
                        &at,
                        format!("\"{kind}:{target}\" leads back to a record already being evaluated ({}); receivers answer permerror", chain.join(" -> ")),
                        SPF_LIMITS,
                    );
                    continue;
                }
                let via = format!("{kind}:{target} from {at}");
                match self.spf_record(&target, Some(&via)).await {
                    None => {}
                    Some(None) => {
                        voids4 += 1;
                        voids6 += 1;
                        self.add(
                            Level::Fail,
                            "spf.include-none",
                            &at,
                            format!("\"{kind}:{target}\" names a domain without an SPF record; receivers answer permerror"),
                            if kind == "include" { "RFC 7208 section 5.2" } else { "RFC 7208 section 6.1" },
                        );
                    }
                    Some(Some(r)) => {
                        let mut chain = chain.clone();
                        chain.push(target.clone());
                        queue.push_back((target, r, chain));
                    }
                }
            }
        }
        let voids = voids4.max(voids6);
        let counted = if terms > spf::DNS_TERMS_MAX {
            format!("more than {}", spf::DNS_TERMS_MAX)
        } else {
            terms.to_string()
        };
        if let Some(entry) = self.checked.iter_mut().find(|c| *c == "SPF") {
            *entry = format!("SPF ({counted} DNS-querying terms, {voids} void lookups)");
        }
        if terms > spf::DNS_TERMS_MAX {
            self.add(
                Level::Fail,
                "spf.lookups",
                domain,
                format!("evaluating the record takes {counted} DNS-querying terms (include, a, mx, ptr, exists, redirect, counted through every include); receivers stop at 10 and answer permerror; flatten includes into ip4:/ip6: or drop unused ones"),
                SPF_LIMITS,
            );
        }
        if voids4.max(voids6) > spf::VOID_LOOKUPS_MAX {
            let (level, who) = if voids4 > spf::VOID_LOOKUPS_MAX {
                (Level::Fail, "")
            } else {
                (
                    Level::Warn,
                    " (for IPv6 clients: the names have no AAAA records)",
                )
            };
            self.add(
                level,
                "spf.void-lookups",
                domain,
                format!("{voids} lookups return nothing{who} (names that do not exist or have no records); receivers stop at 2 and answer permerror; remove the dead terms"),
                SPF_LIMITS,
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // DKIM

    async fn dkim(&mut self, selectors: &[String]) {
        let named = !selectors.is_empty();
        let tried: Vec<String> = if named {
            selectors.to_vec()
        } else {
            COMMON_SELECTORS.iter().map(|s| s.to_string()).collect()
        };
        let mut found = 0;
        for selector in &tried {
            let name = format!("{selector}._domainkey.{}", self.domain);
            let Some(records) = self.lookup(&name, Rr::Txt).await else {
                continue;
            };
            // Records that say another version are not keys; the rest are (v= is optional).
            let keys: Vec<String> = records
                .into_iter()
                .filter(|t| {
                    let t = t.trim_start();
                    !t.starts_with("v=") || t.starts_with("v=DKIM1")
                })
                .collect();
            match keys.as_slice() {
                [] if named => self.add(
                    Level::Fail,
                    "dkim.missing",
                    &name,
                    format!("no DKIM key for selector {selector}: every signature with s={selector} fails (permerror, no key)"),
                    "RFC 6376 section 6.1.2",
                ),
                [] => {}
                [one] => {
                    found += 1;
                    self.checked.push(format!("DKIM {selector}"));
                    self.dkim_key(&name, one);
                }
                several => {
                    found += 1;
                    self.checked.push(format!("DKIM {selector}"));
                    self.add(
                        Level::Fail,
                        "dkim.multiple",
                        &name,
                        format!("{} key records for one selector: which one a verifier uses is undefined; keep one", several.len()),
                        "RFC 6376 section 3.6.2.2",
                    );
                }
            }
        }
        if !named && found == 0 {
            self.add(
                Level::Warn,
                "dkim.none",
                &self.domain.clone(),
                format!(
                    "no DKIM key at the common selectors ({}); name yours with --selector",
                    COMMON_SELECTORS.join(", ")
                ),
                "RFC 6376 section 3.6.2.1",
            );
        }
    }

    fn dkim_key(&mut self, name: &str, record: &str) {
        const KEY: &str = "RFC 6376 section 3.6.1";
        let tags = match tag_list(record) {
            Ok(t) => t,
            Err(e) => {
                self.add(
                    Level::Fail,
                    "dkim.syntax",
                    name,
                    format!("the key record is not a tag list: {e}"),
                    KEY,
                );
                return;
            }
        };
        let get = |n: &str| tags.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        if let Some(pos) = tags.iter().position(|(k, _)| k == "v")
            && (pos != 0 || get("v") != Some("DKIM1"))
        {
            self.add(
                Level::Fail,
                "dkim.syntax",
                name,
                "v= must come first and be DKIM1".into(),
                KEY,
            );
            return;
        }
        let Some(p) = get("p") else {
            self.add(
                Level::Fail,
                "dkim.syntax",
                name,
                "the record has no p= (public key)".into(),
                KEY,
            );
            return;
        };
        let p: String = p.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        if p.is_empty() {
            self.add(
                Level::Fail,
                "dkim.revoked",
                name,
                "p= is empty: the key is revoked and every signature with this selector fails"
                    .into(),
                KEY,
            );
            return;
        }
        // The tag values' literals are case-insensitive (RFC 5234 section 2.3).
        let kind = get("k").unwrap_or("rsa").to_ascii_lowercase();
        use base64::Engine;
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&p) else {
            self.add(
                Level::Fail,
                "dkim.syntax",
                name,
                "p= is not base64".into(),
                KEY,
            );
            return;
        };
        match kind.as_str() {
            "rsa" => match mailsim_mailbox::auth::rsa_key_bits(&der) {
                Some(bits) if bits < 1024 => self.add(
                    Level::Fail,
                    "dkim.key-size",
                    name,
                    format!("a {bits}-bit RSA key: verifiers must not accept keys under 1024 bits; publish a 2048-bit key"),
                    "RFC 8301 section 3.2",
                ),
                Some(bits) if bits < 2048 => self.add(
                    Level::Warn,
                    "dkim.key-size",
                    name,
                    format!("a {bits}-bit RSA key: signers should use 2048 bits or more"),
                    "RFC 8301 section 3.2",
                ),
                Some(_) => {}
                None => self.add(
                    Level::Fail,
                    "dkim.syntax",
                    name,
                    "p= does not hold an RSA public key (SubjectPublicKeyInfo or RSAPublicKey DER)".into(),
                    KEY,
                ),
            },
            "ed25519" => {
                if der.len() != 32 {
                    self.add(
                        Level::Fail,
                        "dkim.syntax",
                        name,
                        format!("an Ed25519 key is 32 bytes; p= holds {}", der.len()),
                        "RFC 8463 section 4.2",
                    );
                }
            }
            other => self.add(
                Level::Fail,
                "dkim.key-type",
                name,
                format!("k={other}: verifiers know rsa and ed25519 only"),
                "RFC 6376 section 3.6.1, RFC 8463",
            ),
        }
        if let Some(h) = get("h")
            && !h
                .split(':')
                .any(|a| a.trim().eq_ignore_ascii_case("sha256"))
        {
            self.add(
                Level::Fail,
                "dkim.hash",
                name,
                format!(
                    "h={h} leaves out sha256, the one hash verifiers accept (sha1 must not be used); list sha256 or drop h="
                ),
                "RFC 8301 section 3.1",
            );
        }
        if let Some(s) = get("s")
            && !s
                .split(':')
                .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("email"))
        {
            self.add(
                Level::Fail,
                "dkim.service",
                name,
                format!("s={s} does not include email: the key may not be used for mail"),
                KEY,
            );
        }
        if let Some(t) = get("t")
            && t.split(':').any(|f| f.trim() == "y")
        {
            self.add(
                Level::Warn,
                "dkim.testing",
                name,
                "t=y: the domain says it is testing DKIM; some receivers ignore such signatures. Remove the flag once signing works".into(),
                KEY,
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // DMARC

    async fn dmarc(&mut self) {
        self.checked.push("DMARC".into());
        const DMARC: &str = "RFC 7489 section 6.3";
        // Policy discovery (section 6.6.3): the domain's own record, else its organizational
        // domain's.
        let org = organizational_domain(&self.domain);
        let mut candidates = vec![self.domain.clone()];
        if org != self.domain {
            candidates.push(org.clone());
        }
        let mut found = None;
        for at in candidates {
            let name = format!("_dmarc.{at}");
            let Some(records) = self.txt_records(&name, |t| t.starts_with("v=DMARC1")).await else {
                return;
            };
            if !records.is_empty() {
                found = Some((at, records));
                break;
            }
        }
        let Some((found_at, records)) = found else {
            self.add(
                Level::Fail,
                "dmarc.none",
                &format!("_dmarc.{}", self.domain),
                format!("no DMARC record here{}: receivers apply no policy and send no reports; publish \"v=DMARC1; p=none; rua=mailto:...\" and tighten it (Google and Yahoo require DMARC of bulk senders)", if org != self.domain { format!(" or at the organizational domain {org}") } else { String::new() }),
                "RFC 7489 section 6.6.3",
            );
            return;
        };
        let name = format!("_dmarc.{found_at}");
        let inherited = found_at != self.domain;
        let record = match records.as_slice() {
            [one] => one.clone(),
            several => {
                self.add(
                    Level::Fail,
                    "dmarc.multiple",
                    &name,
                    format!(
                        "{} DMARC records: receivers apply none of them; keep one",
                        several.len()
                    ),
                    "RFC 7489 section 6.6.3",
                );
                return;
            }
        };
        let tags = match tag_list(&record) {
            Ok(t) => t,
            Err(e) => {
                self.add(
                    Level::Fail,
                    "dmarc.syntax",
                    &name,
                    format!("not a tag list: {e}"),
                    DMARC,
                );
                return;
            }
        };
        let get = |n: &str| {
            tags.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.to_string())
        };
        let bad = |c: &mut Checker, tag: &str, what: &str| {
            c.add(
                Level::Fail,
                "dmarc.syntax",
                &name,
                format!("{tag}: {what}"),
                DMARC,
            );
        };
        if let Some((_, v)) = tags.first().filter(|(k, _)| k == "v")
            && v != "DMARC1"
        {
            let why = if v.contains([',', '=', ' ']) {
                "v=DMARC1 runs into the next tags: DMARC tags are separated by ';', not ',' or spaces"
            } else {
                "the version must be exactly DMARC1"
            };
            bad(self, &format!("v={v}"), why);
            return;
        }
        let policy_word = |v: &str| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "none" | "quarantine" | "reject"
            )
        };
        let mut syntax_ok = true;
        for (tag, value) in &tags {
            let v = value.as_str();
            let ok = match tag.to_ascii_lowercase().as_str() {
                "v" => true,
                "p" | "sp" | "np" => policy_word(v),
                "adkim" | "aspf" => matches!(v.to_ascii_lowercase().as_str(), "r" | "s"),
                "pct" => v.parse::<u8>().is_ok_and(|n| n <= 100),
                "ri" => v.parse::<u32>().is_ok(),
                "fo" => v
                    .split(':')
                    .all(|o| matches!(o.trim(), "0" | "1" | "d" | "s")),
                "rf" => v.split(':').all(|o| o.trim().eq_ignore_ascii_case("afrf")),
                "psd" => matches!(v, "y" | "n" | "u"),
                "t" => matches!(v, "y" | "n"),
                "rua" | "ruf" => true,
                _ => {
                    self.add(
                        Level::Warn,
                        "dmarc.unknown-tag",
                        &name,
                        format!("tag {tag}= is not DMARC's and receivers ignore it (a misspelt rua, p or sp?)"),
                        "RFC 7489 section 6.3",
                    );
                    true
                }
            };
            if !ok {
                bad(self, &format!("{tag}={v}"), "not a value the tag takes");
                syntax_ok = false;
            }
        }
        if tags.first().map(|(k, _)| k.as_str()) != Some("v") {
            bad(self, "v", "must be the first tag");
            syntax_ok = false;
        }
        let Some(p) = get("p") else {
            bad(self, "p", "the policy is required");
            return;
        };
        if !syntax_ok {
            return;
        }
        // The policy that applies to this domain: sp= when inherited by a subdomain.
        let applies = if inherited {
            get("sp").unwrap_or(p.clone())
        } else {
            p.clone()
        };
        if applies.eq_ignore_ascii_case("none") {
            self.add(
                Level::Warn,
                "dmarc.policy-none",
                &name,
                format!("the policy{} is none: failing mail is delivered as if it passed, so forgers are not stopped; move to quarantine, then reject, once reports show your mail aligned", if inherited { " inherited by this subdomain" } else { "" }),
                "RFC 7489 section 6.3",
            );
        } else if !inherited && get("sp").is_some_and(|sp| sp.eq_ignore_ascii_case("none")) {
            self.add(
                Level::Warn,
                "dmarc.subdomain-none",
                &name,
                format!("p={p} but sp=none: every subdomain can be forged without consequence"),
                "RFC 7489 section 6.3",
            );
        }
        if let Some(pct) = get("pct")
            && pct != "100"
            && !applies.eq_ignore_ascii_case("none")
        {
            self.add(
                Level::Warn,
                "dmarc.pct",
                &name,
                format!("pct={pct}: the policy applies to {pct}% of failing mail only; raise it to 100 once reports show your mail aligned"),
                "RFC 7489 section 6.3",
            );
        }
        for tag in ["adkim", "aspf"] {
            if get(tag).is_some_and(|v| v.eq_ignore_ascii_case("s")) {
                self.add(
                    Level::Info,
                    "dmarc.strict-alignment",
                    &name,
                    format!("{tag}=s: only the exact domain aligns (a bounce subdomain or a service's own signing domain fails)"),
                    "RFC 7489 section 3.1",
                );
            }
        }
        match get("rua") {
            None => self.add(
                Level::Warn,
                "dmarc.rua-none",
                &name,
                "no rua=: no receiver will send aggregate reports, so failures stay unseen; add rua=mailto:...".into(),
                "RFC 7489 section 7.2",
            ),
            Some(rua) => self.dmarc_destinations(&name, &found_at, "rua", &rua).await,
        }
        if let Some(ruf) = get("ruf") {
            self.dmarc_destinations(&name, &found_at, "ruf", &ruf).await;
        }
    }

    /// Each report address is a mailto: URI; one outside the policy's domain must authorise
    /// the reports (`<domain>._report._dmarc.<destination>`, section 7.1).
    async fn dmarc_destinations(&mut self, name: &str, policy_domain: &str, tag: &str, list: &str) {
        for uri in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let Some(address) = uri
                .get(..7)
                .filter(|s| s.eq_ignore_ascii_case("mailto:"))
                .map(|_| &uri[7..])
            else {
                self.add(
                    Level::Fail,
                    "dmarc.rua-uri",
                    name,
                    format!(
                        "{tag}: {uri:?} is not a mailto: URI; receivers send reports by mail only"
                    ),
                    "RFC 7489 section 6.2",
                );
                continue;
            };
            // An optional size limit follows '!' (section 6.2).
            let address = address.split('!').next().unwrap_or_default();
            let Some((_, host)) = address
                .rsplit_once('@')
                .filter(|(l, h)| !l.is_empty() && h.contains('.'))
            else {
                self.add(
                    Level::Fail,
                    "dmarc.rua-uri",
                    name,
                    format!("{tag}: {uri:?} holds no mail address"),
                    "RFC 7489 section 6.2",
                );
                continue;
            };
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            // Reports to the policy's own organization need no authorisation (section 7.1).
            if organizational_domain(&host) == organizational_domain(policy_domain) {
                continue;
            }
            let auth = format!("{policy_domain}._report._dmarc.{host}");
            let Some(records) = self.txt_records(&auth, |t| t.starts_with("v=DMARC1")).await else {
                continue;
            };
            if records.is_empty() {
                self.add(
                    Level::Fail,
                    "dmarc.rua-external",
                    name,
                    format!("{tag} sends reports to {host}, outside {policy_domain}, which does not authorise them ({auth} TXT \"v=DMARC1\" is missing): receivers send it nothing"),
                    "RFC 7489 section 7.1",
                );
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // MX

    async fn mx(&mut self) {
        self.checked.push("MX".into());
        let domain = self.domain.clone();
        let Some(hosts) = self.lookup(&domain, Rr::Mx).await else {
            return;
        };
        if hosts.is_empty() {
            let v4 = self.lookup(&domain, Rr::A).await.unwrap_or_default();
            let v6 = self.lookup(&domain, Rr::Aaaa).await.unwrap_or_default();
            if v4.is_empty() && v6.is_empty() {
                self.add(
                    Level::Fail,
                    "mx.none",
                    &domain,
                    "neither MX nor address records: bounces and replies to this domain cannot be delivered, and receivers refuse mail from an envelope domain that cannot receive (publish an MX)".into(),
                    "RFC 5321 section 5.1",
                );
            } else {
                self.add(
                    Level::Warn,
                    "mx.implicit",
                    &domain,
                    "no MX record: mail to the domain (bounces, replies, reports) goes to its address record; publish an MX for the hosts that receive".into(),
                    "RFC 5321 section 5.1",
                );
            }
            return;
        }
        if hosts.len() > 1 && hosts.iter().any(|h| h.is_empty()) {
            self.add(
                Level::Fail,
                "mx.null",
                &domain,
                "a null MX (\"0 .\") beside other MX records: a domain that takes no mail must publish it alone, and senders may treat the domain as taking none; remove one or the other".into(),
                "RFC 7505 section 3",
            );
            return;
        }
        if hosts.len() == 1 && hosts[0].is_empty() {
            self.add(
                Level::Fail,
                "mx.null",
                &domain,
                "a null MX (\"0 .\") says the domain takes no mail: bounces cannot come back and receivers may refuse it as an envelope sender".into(),
                "RFC 7505 section 4.2",
            );
            return;
        }
        let mut reachable = 0;
        let mut unresolved = Vec::new();
        for host in &hosts {
            if host.parse::<IpAddr>().is_ok() {
                self.add(
                    Level::Fail,
                    "mx.ip",
                    &domain,
                    format!("the MX target {host} is an address; it must be a host name with A/AAAA records"),
                    "RFC 5321 section 5.1, RFC 1035 section 3.3.9",
                );
                continue;
            }
            if let Answer::Records(targets) = self.dns.cname(host).await {
                self.add(
                    Level::Warn,
                    "mx.cname",
                    &domain,
                    format!(
                        "the MX target {host} is an alias (CNAME to {}); name the host itself",
                        targets.join(", ")
                    ),
                    "RFC 2181 section 10.3",
                );
            }
            let v4 = self.lookup(host, Rr::A).await.unwrap_or_default();
            let v6 = self.lookup(host, Rr::Aaaa).await.unwrap_or_default();
            if v4.is_empty() && v6.is_empty() {
                unresolved.push(host.clone());
            } else {
                reachable += 1;
            }
        }
        if !unresolved.is_empty() {
            self.add(
                if reachable == 0 {
                    Level::Fail
                } else {
                    Level::Warn
                },
                "mx.unresolvable",
                &domain,
                format!(
                    "MX host{} {} without A/AAAA records{}; give each MX host an address, or drop it",
                    if unresolved.len() > 1 { "s" } else { "" },
                    unresolved.join(", "),
                    if reachable == 0 {
                        ": no mail reaches the domain"
                    } else {
                        ""
                    }
                ),
                "RFC 5321 section 5.1",
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // Reverse DNS of the sending addresses

    async fn ptr(&mut self, ips: &[IpAddr]) {
        if ips.is_empty() {
            self.checked.push("PTR not checked (no --ip)".into());
            return;
        }
        const FCRDNS: &str = "RFC 8601 section 3 (iprev), Google and Yahoo sender requirements";
        for &ip in ips {
            self.checked.push(format!("PTR {ip}"));
            let internal = match ip {
                IpAddr::V4(v4) => {
                    v4.is_loopback() || v4.is_private() || v4.is_unspecified() || v4.is_link_local()
                }
                IpAddr::V6(v6) => v6.is_loopback() || v6.is_unspecified() || v6.is_unique_local(),
            };
            if internal {
                self.add(
                    Level::Info,
                    "ip.internal",
                    &ip.to_string(),
                    "a loopback, private or unspecified address: right for a test bed, never seen by receivers on the Internet".into(),
                    "RFC 6890",
                );
            }
            let reverse = spf::reverse_name(ip);
            let Some(names) = self.lookup(&reverse, Rr::Ptr).await else {
                continue;
            };
            if names.is_empty() {
                self.add(
                    Level::Fail,
                    "ptr.none",
                    &reverse,
                    format!("{ip} has no reverse DNS: many receivers refuse or rate-limit mail from it; publish a PTR naming a host whose A/AAAA points back"),
                    FCRDNS,
                );
                continue;
            }
            let mut confirmed = false;
            for name in &names {
                let rr = if ip.is_ipv4() { Rr::A } else { Rr::Aaaa };
                let addrs = self.lookup(name, rr).await.unwrap_or_default();
                if addrs.iter().any(|a| a.parse::<IpAddr>().ok() == Some(ip)) {
                    confirmed = true;
                }
            }
            if !confirmed {
                self.add(
                    Level::Fail,
                    "ptr.mismatch",
                    &reverse,
                    format!("{ip}'s reverse name ({}) does not resolve back to {ip}: iprev fails (forward-confirmed reverse DNS)", names.join(", ")),
                    FCRDNS,
                );
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // MTA-STS and TLS-RPT (where published)

    async fn mta_sts(&mut self) {
        const STS: &str = "RFC 8461 section 3.1";
        let name = format!("_mta-sts.{}", self.domain);
        let Some(record) = self
            .the_record(&name, "v=STSv1", "mta-sts.multiple", "MTA-STS", STS)
            .await
        else {
            return;
        };
        self.checked
            .push("MTA-STS (the policy itself is not fetched)".into());
        match tag_list(&record) {
            Err(e) => self.add(
                Level::Fail,
                "mta-sts.syntax",
                &name,
                format!("not a tag list: {e}"),
                STS,
            ),
            Ok(tags) => {
                let id = tags
                    .iter()
                    .find(|(k, _)| k == "id")
                    .map(|(_, v)| v.as_str());
                let id_ok = id.is_some_and(|id| {
                    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
                });
                if tags.first().map(|(k, v)| (k.as_str(), v.as_str())) != Some(("v", "STSv1")) {
                    self.add(
                        Level::Fail,
                        "mta-sts.syntax",
                        &name,
                        "v=STSv1 must come first".into(),
                        STS,
                    );
                } else if !id_ok {
                    self.add(
                        Level::Fail,
                        "mta-sts.syntax",
                        &name,
                        format!(
                            "id={}: the policy id is 1 to 32 letters and digits",
                            id.unwrap_or("(missing)")
                        ),
                        STS,
                    );
                }
            }
        }
        let host = format!("mta-sts.{}", self.domain);
        let v4 = self.lookup(&host, Rr::A).await.unwrap_or_default();
        let v6 = self.lookup(&host, Rr::Aaaa).await.unwrap_or_default();
        if v4.is_empty() && v6.is_empty() {
            self.add(
                Level::Fail,
                "mta-sts.host",
                &host,
                format!("the policy host {host} has no address: senders cannot fetch https://{host}/.well-known/mta-sts.txt"),
                "RFC 8461 section 3.2",
            );
        }
    }

    async fn tls_rpt(&mut self) {
        const RPT: &str = "RFC 8460 section 3";
        let name = format!("_smtp._tls.{}", self.domain);
        let Some(record) = self
            .the_record(&name, "v=TLSRPTv1", "tlsrpt.multiple", "TLS-RPT", RPT)
            .await
        else {
            return;
        };
        self.checked.push("TLS-RPT".into());
        let problem = match tag_list(&record) {
            Err(e) => Some(format!("not a tag list: {e}")),
            Ok(tags) => match tags
                .iter()
                .find(|(k, _)| k == "rua")
                .map(|(_, v)| v.as_str())
            {
                None => Some("rua= (where to send reports) is required".into()),
                Some(rua) => rua
                    .split(',')
                    .map(str::trim)
                    .find(|u| {
                        let lower = u.to_ascii_lowercase();
                        !(lower.starts_with("mailto:") && u.contains('@')
                            || lower.starts_with("https://") && u.len() > 8)
                    })
                    .map(|u| format!("rua: {u:?} is neither a mailto: address nor an https: URL")),
            },
        };
        if let Some(p) = problem {
            self.add(Level::Fail, "tlsrpt.syntax", &name, p, RPT);
        }
    }
}
