//! SPF, DKIM and DMARC verification with mail-auth, against whatever DNS the resolver points at
//! (fake-dns in mailsim).

use crate::auth_dns::{AuthDns, ZoneCache, ZoneCaches};
use crate::spf::{Answer, Rr, SpfDns, SpfResult as Spf};
use hickory_resolver::TokioResolver;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use mail_auth::common::crypto::{Algorithm, CryptoError};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::common::verify::{DomainKey, VerifySignature};
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    SpfResult,
};
use mail_auth::{DkimOutput, MX, Parameters, RecordSet, Txt};
use mailsim_events::{Clock, SystemClock};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The verdicts for one message, as short lowercase words, plus the header to prepend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdicts {
    /// Each mechanism's result with the reason for it (`mailsim auth verify`'s JSON).
    pub detail: Detail,
    pub spf: String,
    pub dkim: String,
    pub dmarc: String,
    /// The RFC5322.From domain.
    pub header_from: String,
    /// The DMARC policy the From domain publishes (`none`, `quarantine`, `reject`), if any.
    pub dmarc_policy: Option<String>,
    /// `Authentication-Results: ...\r\n`.
    pub header: String,
}

/// Why each mechanism gave its result: what a postmaster reads to fix a failure.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Detail {
    pub spf: SpfDetail,
    /// One per DKIM-Signature, in the message's order.
    pub dkim: Vec<DkimDetail>,
    pub dmarc: DmarcDetail,
    /// Present when the message carries an ARC set (RFC 8617).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arc: Option<ArcDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct SpfDetail {
    pub result: String,
    /// The domain whose policy was checked (the envelope sender's, or the HELO name's).
    pub domain: String,
    pub reason: String,
    /// The domain's own explanation of a fail (its `exp=` text, RFC 7208 section 6.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct DkimDetail {
    pub result: String,
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct DmarcDetail {
    pub result: String,
    /// The RFC5322.From domain.
    pub domain: String,
    /// The published policy (`none`, `quarantine`, `reject`), if a record was found.
    pub policy: Option<String>,
    /// Whether SPF passed for a domain aligned with From (`pass`, `fail`, `none`, ...).
    pub spf_aligned: String,
    /// Whether a DKIM signature of a domain aligned with From passed.
    pub dkim_aligned: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ArcDetail {
    pub result: String,
    /// How many ARC sets (instances) the message carries.
    pub sets: usize,
    pub reason: String,
}

pub struct Verifier {
    auth: MessageAuthenticator,
    hostname: String,
    /// In-process answers (virtual mode); empty caches in live mode.
    caches: ZoneCaches,
    /// Where SPF's evaluation (crate::spf) looks things up.
    spf_dns: SpfSource,
    /// The receiver's clock (`%{t}` in SPF explanations).
    clock: Arc<dyn Clock>,
}

/// SPF's lookups: over the wire with hickory, or in-process from the zones.
enum SpfSource {
    Wire(Box<TokioResolver>),
    InProcess(Arc<dyn AuthDns>),
}

impl SpfDns for SpfSource {
    async fn query(&self, name: &str, rr: Rr) -> Answer {
        match self {
            SpfSource::InProcess(answers) => answers.spf_query(name, rr),
            SpfSource::Wire(resolver) => wire_query(resolver, name, rr).await,
        }
    }
}

/// Lookups over the wire in SPF's text forms, for callers outside the verifier (`mailsim auth
/// check` lints a domain's records with them and evaluates SPF over them).
pub struct WireDns {
    resolver: TokioResolver,
}

impl WireDns {
    /// Ask the resolvers `config` names (in mailsim, fake-dns's `resolver_for(server)`).
    pub fn new((config, opts): (ResolverConfig, ResolverOpts)) -> Result<Self, VerifierError> {
        Ok(WireDns {
            resolver: resolver_from(config, opts)?,
        })
    }

    /// The CNAME `name` is an alias for, if it is one.
    pub async fn cname(&self, name: &str) -> Answer {
        use hickory_resolver::proto::rr::{Name, RData, RecordType};
        let Ok(qname) = Name::from_ascii(format!("{}.", name.trim_end_matches('.'))) else {
            return Answer::Temp(format!("{name:?} cannot be asked"));
        };
        let found = self
            .resolver
            .lookup(qname, RecordType::CNAME)
            .await
            .map(|lookup| {
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::CNAME(c) => {
                            Some(c.0.to_ascii().trim_end_matches('.').to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect()
            });
        answer_of(found, |e| e.is_nx_domain() || e.is_no_records_found())
    }
}

impl SpfDns for WireDns {
    async fn query(&self, name: &str, rr: Rr) -> Answer {
        wire_query(&self.resolver, name, rr).await
    }
}

/// A hickory resolver asking the servers `config` names.
fn resolver_from(
    config: ResolverConfig,
    opts: ResolverOpts,
) -> Result<TokioResolver, VerifierError> {
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| VerifierError(e.to_string()))
}

/// One query over hickory, answered in the text forms SPF compares.
async fn wire_query(resolver: &TokioResolver, name: &str, rr: Rr) -> Answer {
    use hickory_resolver::proto::rr::{Name, RData};
    let rtype = rr.record_type();
    let bare = name.trim_end_matches('.');
    // Any octet may be in a label (RFC 2181 section 11); hickory's text form refuses some.
    let Ok(mut qname) = Name::from_ascii(format!("{bare}."))
        .or_else(|_| Name::from_labels(bare.split('.').map(str::as_bytes)))
    else {
        return Answer::Temp(format!("{name:?} cannot be asked"));
    };
    qname.set_fqdn(true);
    // Labels as they are (to_ascii would escape a ':' or '/' inside one).
    let text = |n: &Name| {
        n.iter()
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(".")
    };
    let found = resolver.lookup(qname, rtype).await.map(|lookup| {
        let mut mx: Vec<(u16, String)> = Vec::new();
        let mut out = Vec::new();
        for r in lookup.answers() {
            match (&r.data, rr) {
                (RData::A(a), Rr::A) => out.push(a.0.to_string()),
                (RData::AAAA(a), Rr::Aaaa) => out.push(a.0.to_string()),
                (RData::MX(m), Rr::Mx) => mx.push((m.preference, text(&m.exchange))),
                (RData::TXT(t), Rr::Txt) => out.push(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s))
                        .collect(),
                ),
                (RData::PTR(p), Rr::Ptr) => out.push(text(&p.0)),
                _ => {}
            }
        }
        mx.sort();
        out.extend(mx.into_iter().map(|(_, n)| n));
        out
    });
    answer_of(found, |e| e.is_nx_domain() || e.is_no_records_found())
}

#[derive(Debug, thiserror::Error)]
#[error("building the DNS resolver for verification: {0}")]
pub struct VerifierError(pub(crate) String);

impl Verifier {
    /// A verifier asking the resolvers `config` names (in mailsim, fake-dns's
    /// `resolver_for(server)`).
    pub fn new(
        (config, opts): (ResolverConfig, ResolverOpts),
        hostname: &str,
    ) -> Result<Self, VerifierError> {
        let resolver = resolver_from(config.clone(), opts.clone())?;
        let auth =
            MessageAuthenticator::new(config, opts).map_err(|e| VerifierError(e.to_string()))?;
        Ok(Verifier {
            auth,
            hostname: hostname.to_string(),
            caches: ZoneCaches::new(None),
            spf_dns: SpfSource::Wire(Box::new(resolver)),
            clock: Arc::new(SystemClock),
        })
    }

    /// A verifier asking the system's resolvers (`/etc/resolv.conf`): a mailbox server on the
    /// real Internet.
    pub fn system(hostname: &str) -> Result<Self, VerifierError> {
        let auth =
            MessageAuthenticator::new_system_conf().map_err(|e| VerifierError(e.to_string()))?;
        let resolver = TokioResolver::builder_tokio()
            .map_err(|e| VerifierError(e.to_string()))?
            .build()
            .map_err(|e| VerifierError(e.to_string()))?;
        Ok(Verifier {
            auth,
            hostname: hostname.to_string(),
            caches: ZoneCaches::new(None),
            spf_dns: SpfSource::Wire(Box::new(resolver)),
            clock: Arc::new(SystemClock),
        })
    }

    /// A verifier answered in-process by `answers` (the scenario's zones at scenario time);
    /// it never opens a socket (virtual mode).
    pub fn in_process(answers: Arc<dyn AuthDns>, hostname: &str) -> Result<Self, VerifierError> {
        // The resolver is never asked: every name gets an answer from the caches.
        let mut v = Verifier::new(
            (
                ResolverConfig::from_parts(None, vec![], vec![]),
                ResolverOpts::default(),
            ),
            hostname,
        )?;
        v.caches = ZoneCaches::new(Some(answers.clone()));
        v.spf_dns = SpfSource::InProcess(answers);
        Ok(v)
    }

    /// The same verifier taking DKIM passes from `memo` where it holds them (signatures
    /// verified ahead of time, see [`crate::auth_memo`]); it verifies every other signature.
    pub fn with_memo(mut self, memo: Arc<crate::auth_memo::SignatureMemo>) -> Self {
        let caches = std::mem::replace(&mut self.caches, ZoneCaches::new(None));
        self.caches = caches.with_memo(memo);
        self
    }

    /// The same verifier reading `clock` (the run's, in a scenario) instead of the wall clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Verify a message received from `ip` after `helo`, with envelope sender `mail_from`.
    pub async fn verify(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        message: &[u8],
    ) -> Verdicts {
        let mail_from_domain = mail_from
            .rsplit_once('@')
            .map_or(helo, |(_, d)| d)
            .to_string();
        let checked = crate::spf::check_host(
            &self.spf_dns,
            &crate::spf::Request {
                ip,
                mail_from,
                helo,
                receiver: &self.hostname,
                now_s: self.clock.now_ms() / 1000,
            },
        )
        .await;
        // DMARC (mail-auth) reads SPF's result for the envelope domain.
        let spf =
            mail_auth::SpfOutput::new(checked.domain.clone()).with_result(match checked.result {
                Spf::None => SpfResult::None,
                Spf::Neutral => SpfResult::Neutral,
                Spf::Pass => SpfResult::Pass,
                Spf::Fail => SpfResult::Fail,
                Spf::SoftFail => SpfResult::SoftFail,
                Spf::TempError => SpfResult::TempError,
                Spf::PermError => SpfResult::PermError,
            });
        let spf_word = checked.result.word();
        let Some(parsed) = AuthenticatedMessage::parse(message) else {
            let header = format!(
                "Authentication-Results: {}; spf={spf_word} smtp.mailfrom={mail_from}; dkim=permerror (unparsable message); dmarc=permerror\r\n",
                self.hostname
            );
            let detail = Detail {
                spf: spf_detail(&checked),
                dkim: Vec::new(),
                dmarc: DmarcDetail {
                    result: "permerror".into(),
                    reason: "the message has no header section mail-auth can read".into(),
                    ..DmarcDetail::default()
                },
                arc: None,
            };
            return Verdicts {
                detail,
                spf: spf_word.into(),
                dkim: "permerror".into(),
                dmarc: "permerror".into(),
                header_from: String::new(),
                dmarc_policy: None,
                header,
            };
        };
        // RFC 6376 section 6.1: verifiers may limit the signatures they try; each costs a key
        // lookup, and a message can carry thousands (an independent review: 3,000 took 6 s).
        // The first (the newest) are kept.
        let mut parsed = parsed;
        parsed.dkim_headers.truncate(DKIM_SIGNATURES_MAX);
        let dkim = self.auth.verify_dkim(self.with_caches(&parsed)).await;
        // A body hash that does not match is a failed verification (RFC 6376 section 6.1.3:
        // PERMFAIL, "body hash did not verify"; RFC 8601 section 2.7.1: dkim=fail), which
        // mail-auth 0.13 reports as neutral, and before it fetches the key. Section 6.1 fetches
        // the key first (6.1.2): a key that cannot be had is the result, as other verifiers say.
        let mut checked_dkim = Vec::with_capacity(dkim.len());
        for d in dkim {
            let body_hash = matches!(
                d.result(),
                DkimResult::Neutral(mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch))
            );
            let signed = d.signature().and_then(|sig| own_signature(&parsed, sig));
            checked_dkim.push(match signed {
                Some(sig) if body_hash => match self
                    .auth
                    .txt_lookup::<DomainKey>(sig.domain_key(), Some(&self.caches.txt))
                    .await
                {
                    Ok(_) => {
                        DkimOutput::fail(mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch))
                            .with_signature(sig)
                    }
                    Err(e) => DkimOutput::dns_error(e).with_signature(sig),
                },
                _ => d,
            });
        }
        // A key verifiers must refuse is a permanent error, not a signature that "fails"
        // (mail-auth 0.13 takes it and the verification then fails): an Ed25519 key that is not
        // the bare 32-byte point (RFC 8463 section 4.2), an RSA key under 1024 bits (RFC 8301
        // section 3.2).
        for d in checked_dkim.iter_mut() {
            let Some(sig) = d.signature() else { continue };
            if !matches!(d.result(), DkimResult::Fail(_)) {
                continue;
            }
            let name = format!("{}._domainkey.{}", sig.selector(), sig.domain());
            let Answer::Records(txt) = self.spf_dns.query(&name, Rr::Txt).await else {
                continue;
            };
            let [record] = txt.as_slice() else { continue };
            let Some(key) = key_bytes(record) else {
                continue;
            };
            let problem = match sig.algorithm() {
                Algorithm::Ed25519Sha256 if key.len() != 32 => format!(
                    "{UNUSABLE_KEY} an Ed25519 key of {} bytes, not 32 (RFC 8463 section 4.2)",
                    key.len()
                ),
                Algorithm::RsaSha1 | Algorithm::RsaSha256 => match rsa_key_bits(&key) {
                    Some(bits) if bits < 1024 => format!(
                        "{UNUSABLE_KEY} a {bits}-bit RSA key; verifiers must not accept keys under 1024 bits (RFC 8301 section 3.2)"
                    ),
                    _ => continue,
                },
                _ => continue,
            };
            if let Some(sig) = own_signature(&parsed, sig) {
                *d = DkimOutput::perm_err(mail_auth::Error::Crypto(CryptoError::Library(problem)))
                    .with_signature(sig);
            }
        }
        // A signature whose tag list names a tag twice is invalid (RFC 6376 section 3.2: a
        // verifier reading the first d= would credit another domain than one reading the last),
        // and one whose h= leaves out From must be ignored (section 5.4 and 6.1.1: PERMFAIL);
        // mail-auth 0.13 takes both.
        for d in checked_dkim.iter_mut() {
            let Some(header) = d.signature().and_then(|sig| {
                parsed
                    .dkim_headers
                    .iter()
                    .find(|h| std::ptr::eq(&h.header, sig))
            }) else {
                continue;
            };
            let problem = match crate::tags::tag_list(&String::from_utf8_lossy(header.value)) {
                Err(e) => format!(
                    "{REFUSED_SIGNATURE} its tag list is invalid: {e} (RFC 6376 section 3.2)"
                ),
                Ok(_)
                    if !header
                        .header
                        .h
                        .iter()
                        .any(|h| h.trim().eq_ignore_ascii_case("from")) =>
                {
                    format!(
                        "{REFUSED_SIGNATURE} it does not sign From (h=), which RFC 6376 section 5.4 requires (section 6.1.1: PERMFAIL)"
                    )
                }
                Ok(_) => continue,
            };
            *d = DkimOutput::perm_err(mail_auth::Error::Crypto(CryptoError::Library(problem)))
                .with_signature(&header.header);
        }
        let dkim = checked_dkim;
        // ARC (RFC 8617) only where the message carries it: no clause otherwise.
        let arc = if parsed.as_headers.is_empty()
            && parsed.ams_headers.is_empty()
            && parsed.aar_headers.is_empty()
        {
            None
        } else {
            Some(arc_chain(
                self.auth.verify_arc(self.with_caches(&parsed)).await,
                &parsed,
            ))
        };
        // A message without exactly one From field, or whose From names several domains, has
        // no one author domain: mail-auth exempts it from DMARC, which let a second From (or a
        // second address) carry a p=reject domain's name past it (an independent review).
        // RFC 7489 section 6.6.1: such messages are rejected; here a permerror, which fails.
        let author_problem = author_problem(&parsed);
        let dmarc = match &author_problem {
            Some(_) => {
                let refused = || DmarcResult::PermError(mail_auth::Error::ParseError);
                mail_auth::DmarcOutput::default()
                    .with_spf_result(refused())
                    .with_dkim_result(refused())
            }
            None => {
                self.auth
                    .verify_dmarc(self.with_caches(DmarcParameters::new(
                        &parsed,
                        &dkim,
                        &mail_from_domain,
                        &spf,
                    )))
                    .await
            }
        };
        let header_from = Some(parsed.from())
            .and_then(|f| f.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let dkim_word = if dkim.is_empty() {
            "none"
        } else if dkim.iter().any(|d| d.result() == &DkimResult::Pass) {
            "pass"
        } else {
            dkim_word(dkim[0].result())
        };
        // The combined result: mail-auth (RFC 9989) leaves both mechanisms at "none" when
        // nothing aligns, and reports fail when a record was found.
        let dmarc_word = match dmarc.result() {
            DmarcResult::Pass => "pass",
            DmarcResult::None => "none",
            DmarcResult::TempError(_) => "temperror",
            DmarcResult::PermError(_) => "permerror",
            DmarcResult::Fail(_) => "fail",
        };
        let dmarc_policy = (dmarc_word != "none" || !dmarc.domain().is_empty())
            .then(|| format!("{:?}", dmarc.policy()).to_ascii_lowercase())
            .filter(|p| p != "unspecified");
        // mail-auth writes the DKIM and DMARC clauses; the SPF clause is written here (its
        // comment would lose the `=` of a VERP address), and a message without a signature gets
        // `dkim=none` (RFC 8601 section 2.7.1) rather than no DKIM clause at all.
        let mut results =
            AuthenticationResults::new(&self.hostname).with_dkim_results(&dkim, &header_from);
        if let Some((arc, _)) = &arc {
            results = results.with_arc_result(arc, ip);
        }
        let rest = results.with_dmarc_result(&dmarc).to_header();
        let rest = rest
            .strip_prefix("Authentication-Results: ")
            .and_then(|r| r.strip_prefix(self.hostname.as_str()))
            .unwrap_or_default();
        let header = format!(
            "Authentication-Results: {};\r\n\t{}{}{rest}",
            self.hostname,
            spf_clause(spf_word, &self.hostname, mail_from, helo, ip),
            if dkim.is_empty() {
                ";\r\n\tdkim=none"
            } else {
                ""
            },
        );
        let detail = Detail {
            spf: spf_detail(&checked),
            dkim: dkim.iter().map(dkim_detail).collect(),
            dmarc: {
                let mut d = dmarc_detail(&dmarc, dmarc_word, &header_from, dmarc_policy.as_deref());
                if let Some(problem) = author_problem {
                    d.reason = problem;
                }
                d
            },
            arc: arc.as_ref().map(|(a, problem)| ArcDetail {
                result: self::dkim_word(a.result()).into(),
                sets: a.sets().len(),
                reason: match a.result() {
                    _ if problem.is_some() => problem.clone().unwrap_or_default(),
                    DkimResult::Pass => {
                        "every ARC set's seal and message signature verify, and the chain is intact"
                            .into()
                    }
                    DkimResult::None => "no ARC set".into(),
                    other => reason_of(other),
                },
            }),
        };
        Verdicts {
            detail,
            spf: spf_word.into(),
            dkim: dkim_word.into(),
            dmarc: dmarc_word.into(),
            header_from,
            dmarc_policy,
            header,
        }
    }
}

/// mail-auth's parameters with the five zone caches attached.
type CachedParameters<'x, P> = Parameters<
    'x,
    P,
    ZoneCache<Txt>,
    ZoneCache<RecordSet<MX>>,
    ZoneCache<RecordSet<Ipv4Addr>>,
    ZoneCache<RecordSet<Ipv6Addr>>,
    ZoneCache<RecordSet<Box<str>>>,
>;

impl Verifier {
    fn with_caches<'x, P>(&'x self, params: P) -> CachedParameters<'x, P> {
        let c = &self.caches;
        Parameters::new(params)
            .with_txt_cache(&c.txt)
            .with_mx_cache(&c.mx)
            .with_ipv4_cache(&c.ipv4)
            .with_ipv6_cache(&c.ipv6)
            .with_ptr_cache(&c.ptr)
    }
}

/// The SPF clause of Authentication-Results (RFC 8601 section 2.7.2): the result, a comment
/// in mail-auth's words, and `smtp.mailfrom` (the envelope sender, or postmaster@HELO for a
/// null sender).
fn spf_clause(word: &str, hostname: &str, mail_from: &str, helo: &str, ip: IpAddr) -> String {
    let checked = if mail_from.is_empty() {
        format!("postmaster@{helo}")
    } else {
        mail_from.to_string()
    };
    let comment = match word {
        "pass" => format!("domain of {checked} designates {ip} as permitted sender"),
        "fail" => format!("domain of {checked} does not designate {ip} as permitted sender"),
        "softfail" => format!("domain of {checked} reports soft fail for {ip}"),
        "neutral" => format!("domain of {checked} reports neutral for {ip}"),
        "temperror" => format!("temporary dns error validating {checked}"),
        "permerror" => format!("unable to verify SPF record for {checked}"),
        _ => format!("no SPF records found for {checked}"),
    };
    // A comment may hold anything but unescaped parentheses and backslashes (RFC 5322 3.2.2).
    let mut escaped = String::with_capacity(comment.len());
    for c in comment.chars() {
        if matches!(c, '(' | ')' | '\\') {
            escaped.push('\\');
        }
        if !c.is_control() {
            escaped.push(c);
        }
    }
    let pvalue = if mail_from.is_empty() {
        "<>".to_string()
    } else if mail_from
        .chars()
        .all(|c| c.is_ascii_graphic() && !"()<>,;:\\\"/[]?=".contains(c) || c == '@')
    {
        mail_from.to_string()
    } else {
        // A quoted string: a value that is not an RFC 2045 token (a VERP `=`, say).
        let mut q = String::from("\"");
        for c in mail_from.chars().filter(|c| !c.is_control()) {
            if matches!(c, '"' | '\\') {
                q.push('\\');
            }
            q.push(c);
        }
        q.push('"');
        q
    };
    format!("spf={word} ({hostname}: {escaped}) smtp.mailfrom={pvalue}")
}

/// SPF's result with the evaluation's reason and the domain's explanation of a fail.
fn spf_detail(o: &crate::spf::Outcome) -> SpfDetail {
    SpfDetail {
        result: o.result.word().into(),
        domain: o.domain.clone(),
        reason: o.reason.clone(),
        explanation: o.explanation.clone(),
    }
}

fn dkim_detail(d: &mail_auth::DkimOutput<'_>) -> DkimDetail {
    let (domain, selector, algorithm) = d.signature().map_or_else(Default::default, |s| {
        (
            s.d.clone(),
            s.s.clone(),
            match s.a {
                mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
                mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
                mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
            }
            .to_string(),
        )
    });
    DkimDetail {
        result: dkim_word(d.result()).into(),
        reason: match d.result() {
            DkimResult::Pass => {
                format!("the signature verifies with the key at {selector}._domainkey.{domain}")
            }
            DkimResult::Neutral(e)
            | DkimResult::Fail(e)
            | DkimResult::PermError(e)
            | DkimResult::TempError(e) => dkim_reason(e, &selector, &domain),
            DkimResult::None => "no signature".into(),
        },
        domain,
        selector,
        algorithm,
    }
}

fn dmarc_detail(
    dmarc: &mail_auth::DmarcOutput,
    word: &str,
    header_from: &str,
    policy: Option<&str>,
) -> DmarcDetail {
    let aligned = |r: &DmarcResult| match r {
        DmarcResult::Pass => "pass",
        DmarcResult::None => "none",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::Fail(_) => "fail",
    };
    let reason = match dmarc.result() {
        DmarcResult::Pass => match (dmarc.spf_result(), dmarc.dkim_result()) {
            (DmarcResult::Pass, DmarcResult::Pass) => {
                "SPF and DKIM both pass for domains aligned with From".to_string()
            }
            (DmarcResult::Pass, _) => "SPF passes for a domain aligned with From".to_string(),
            _ => "a DKIM signature of a domain aligned with From passes".to_string(),
        },
        DmarcResult::None => {
            format!("{header_from} publishes no DMARC record (nor does its organizational domain)")
        }
        DmarcResult::Fail(_) => format!(
            "neither SPF nor DKIM passes for a domain aligned with From ({header_from}): SPF {}, DKIM {}",
            aligned(dmarc.spf_result()),
            aligned(dmarc.dkim_result())
        ),
        DmarcResult::TempError(e) => format!("DMARC policy discovery failed temporarily: {e}"),
        DmarcResult::PermError(e) => format!("the DMARC record cannot be used: {e}"),
    };
    DmarcDetail {
        result: word.into(),
        domain: header_from.into(),
        policy: policy.map(str::to_string),
        spf_aligned: aligned(dmarc.spf_result()).into(),
        dkim_aligned: aligned(dmarc.dkim_result()).into(),
        reason,
    }
}

/// A chain's validation status has three values, none, pass and fail (RFC 8617 section 4.4);
/// ARC header fields that do not make a valid chain are a fail (section 5.2), where mail-auth
/// 0.13 also says neutral, permerror or temperror, or none when a set is incomplete. A chain
/// mail-auth passes is checked against what it lets through: each ARC-Seal and
/// ARC-Message-Signature a valid tag list with its required tags, signed with rsa-sha256, the
/// message signature not covering ARC-Seal. Called only when the message carries ARC fields.
fn arc_chain<'x>(
    arc: mail_auth::ArcOutput<'x>,
    parsed: &AuthenticatedMessage<'_>,
) -> (mail_auth::ArcOutput<'x>, Option<String>) {
    let broken = || mail_auth::Error::Arc(mail_auth::arc::ArcError::BrokenChain);
    let error = match arc.result() {
        DkimResult::Pass => match arc_header_problem(parsed) {
            None => return (arc, None),
            Some(problem) => return (arc.with_result(DkimResult::Fail(broken())), Some(problem)),
        },
        DkimResult::Fail(_) => return (arc, None),
        DkimResult::Neutral(e) | DkimResult::PermError(e) | DkimResult::TempError(e) => e.clone(),
        DkimResult::None => broken(),
    };
    (arc.with_result(DkimResult::Fail(error)), None)
}

/// The first ARC header field that breaks RFC 8617 section 4.1's rules, said.
fn arc_header_problem(parsed: &AuthenticatedMessage<'_>) -> Option<String> {
    let seals = parsed.as_headers.iter().map(|h| h.value);
    let signatures = parsed.ams_headers.iter().map(|h| h.value);
    let fields = seals
        .map(|v| ("ARC-Seal", v, &["a", "b", "cv", "d", "i", "s"][..], "4.1.3"))
        .chain(signatures.map(|v| {
            (
                "ARC-Message-Signature",
                v,
                &["a", "b", "bh", "d", "h", "i", "s"][..],
                "4.1.2",
            )
        }));
    for (field, value, required, section) in fields {
        let tags = match crate::tags::tag_list(&String::from_utf8_lossy(value)) {
            Ok(tags) => tags,
            Err(e) => return Some(format!("{field}: {e} (RFC 6376 section 3.2)")),
        };
        let get = |n: &str| tags.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        if let Some(missing) = required.iter().find(|t| get(t).is_none()) {
            return Some(format!(
                "{field} has no {missing}= tag (RFC 8617 section {section})"
            ));
        }
        if let Some(a) = get("a").filter(|a| *a != "rsa-sha256") {
            return Some(format!(
                "{field} a={a}: ARC signs with rsa-sha256 (RFC 8617 section 4.1.3; rsa-sha1 is refused by RFC 8301 section 3.1)"
            ));
        }
        if field == "ARC-Message-Signature"
            && get("h").is_some_and(|h| {
                h.split(':')
                    .any(|f| f.trim().eq_ignore_ascii_case("arc-seal"))
            })
        {
            return Some(format!(
                "{field} signs ARC-Seal, which it must not (RFC 8617 section 4.1.2)"
            ));
        }
    }
    None
}

/// DKIM signatures verified per message at most (see the use).
const DKIM_SIGNATURES_MAX: usize = 10;

/// How a signature verifiers must refuse is described (and recognised in [`dkim_reason`]).
const REFUSED_SIGNATURE: &str = "the signature is refused:";

/// Why the message has no one author domain for DMARC: RFC 5322 section 3.6 allows exactly one
/// From field, and an author domain is one domain (RFC 7489 section 6.6.1).
fn author_problem(parsed: &AuthenticatedMessage<'_>) -> Option<String> {
    let fields = parsed
        .headers
        .iter()
        .filter(|(name, _)| name.trim_ascii().eq_ignore_ascii_case(b"from"))
        .count();
    if fields != 1 {
        return Some(format!(
            "the message has {fields} From fields, where RFC 5322 section 3.6 allows exactly one: no author domain to check (RFC 7489 section 6.6.1: rejected)"
        ));
    }
    let mut domains: Vec<String> = parsed
        .from
        .iter()
        .filter_map(|a| a.rsplit_once('@'))
        .map(|(_, d)| d.to_ascii_lowercase())
        .collect();
    domains.sort();
    domains.dedup();
    match domains.as_slice() {
        [_] => None,
        [] => Some("the From field holds no address with a domain: no author domain to check (RFC 7489 section 6.6.1)".into()),
        many => Some(format!(
            "the From field names addresses in {} domains ({}): no one author domain to check (RFC 7489 section 6.6.1: rejected)",
            many.len(),
            many.join(", ")
        )),
    }
}

/// The message's own copy of a signature a DKIM output points at (an output is rebuilt with
/// it, which needs the message's lifetime).
fn own_signature<'x>(
    parsed: &'x AuthenticatedMessage<'_>,
    sig: &mail_auth::dkim::Signature,
) -> Option<&'x mail_auth::dkim::Signature> {
    parsed
        .dkim_headers
        .iter()
        .map(|h| &h.header)
        .find(|s| std::ptr::eq(*s, sig))
}

/// A lookup's records as SPF's answer: none, NXDOMAIN and no data are a void lookup.
fn answer_of<E: std::fmt::Display>(
    result: Result<Vec<String>, E>,
    empty: impl Fn(&E) -> bool,
) -> Answer {
    match result {
        Ok(out) if out.is_empty() => Answer::Void,
        Ok(out) => Answer::Records(out),
        Err(e) if empty(&e) => Answer::Void,
        Err(e) => Answer::Temp(e.to_string()),
    }
}

/// How a key verifiers must refuse is described (and recognised in [`dkim_reason`]).
const UNUSABLE_KEY: &str = "the key is";

/// The key in a DKIM key record's p= (base64, white space allowed).
fn key_bytes(record: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let p = record.split(';').find_map(|spec| {
        let (name, value) = spec.split_once('=')?;
        (name.trim() == "p").then_some(value)
    })?;
    let p: String = p.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(p).ok()
}

/// The bit length of an RSA public key given as SubjectPublicKeyInfo DER (RFC 6376's p=) or
/// as a bare RSAPublicKey (which some signers publish); None when it is neither.
pub fn rsa_key_bits(der: &[u8]) -> Option<usize> {
    use rsa::pkcs1::der::Decode;
    let modulus = match rsa::pkcs8::SubjectPublicKeyInfoRef::from_der(der) {
        Ok(spki) => {
            // rsaEncryption (RFC 8017 appendix C).
            if spki.algorithm.oid.to_string() != "1.2.840.113549.1.1.1" {
                return None;
            }
            let bytes = spki.subject_public_key.as_bytes()?;
            rsa::pkcs1::RsaPublicKey::from_der(bytes)
                .ok()?
                .modulus
                .as_bytes()
                .to_vec()
        }
        Err(_) => rsa::pkcs1::RsaPublicKey::from_der(der)
            .ok()?
            .modulus
            .as_bytes()
            .to_vec(),
    };
    let first = *modulus.first()?;
    Some(modulus.len() * 8 - first.leading_zeros() as usize)
}

/// A failed signature's reason in RFC 6376's terms where mail-auth's words are a library's.
fn dkim_reason(e: &mail_auth::Error, selector: &str, domain: &str) -> String {
    use mail_auth::common::crypto::CryptoError;
    use mail_auth::dkim::DkimError;
    match e {
        mail_auth::Error::Crypto(CryptoError::Library(msg)) if msg.starts_with(REFUSED_SIGNATURE) => {
            format!("the signature is refused:{}", &msg[REFUSED_SIGNATURE.len()..])
        }
        mail_auth::Error::Crypto(CryptoError::Library(msg)) if msg.starts_with(UNUSABLE_KEY) => {
            let what = &msg[UNUSABLE_KEY.len()..];
            format!("the key at {selector}._domainkey.{domain} is{what}")
        }
        mail_auth::Error::Crypto(CryptoError::FailedVerification | CryptoError::Library(_)) => format!(
            "the signature (b=) does not verify with the key at {selector}._domainkey.{domain}: a signed header field changed, or the key is not the signer's (RFC 6376 section 6.1.3)"
        ),
        mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch) => {
            "the body hash (bh=) does not match the body: it changed after signing (RFC 6376 section 3.7)".into()
        }
        mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_)) => {
            format!("no key record at {selector}._domainkey.{domain} (RFC 6376 section 6.1.2)")
        }
        mail_auth::Error::Dns(mail_auth::DnsError::Resolver(r)) => {
            format!("the key lookup at {selector}._domainkey.{domain} failed: {r}")
        }
        other => other.to_string(),
    }
}

/// mail-auth's words for a failed check.
fn reason_of(r: &DkimResult) -> String {
    match r {
        DkimResult::Pass => "pass".into(),
        DkimResult::None => "no signature".into(),
        DkimResult::Neutral(e)
        | DkimResult::Fail(e)
        | DkimResult::PermError(e)
        | DkimResult::TempError(e) => e.to_string(),
    }
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}
