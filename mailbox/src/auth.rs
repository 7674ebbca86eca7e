//! SPF, DKIM and DMARC verification with mail-auth, against whatever DNS the resolver points at
//! (fake-dns in mailsim).

use crate::auth_dns::{AuthDns, ZoneCache, ZoneCaches};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    SpfResult,
};
use mail_auth::{MX, Parameters, RecordSet, Txt};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The verdicts for one message, as short lowercase words, plus the header to prepend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdicts {
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

pub struct Verifier {
    auth: MessageAuthenticator,
    hostname: String,
    /// In-process answers (virtual mode); empty caches in live mode.
    caches: ZoneCaches,
}

#[derive(Debug, thiserror::Error)]
#[error("building the DNS resolver for verification: {0}")]
pub struct VerifierError(String);

impl Verifier {
    /// A verifier asking the resolvers `config` names (in mailsim, fake-dns's
    /// `resolver_for(server)`).
    pub fn new(
        (config, opts): (ResolverConfig, ResolverOpts),
        hostname: &str,
    ) -> Result<Self, VerifierError> {
        let auth =
            MessageAuthenticator::new(config, opts).map_err(|e| VerifierError(e.to_string()))?;
        Ok(Verifier {
            auth,
            hostname: hostname.to_string(),
            caches: ZoneCaches::new(None),
        })
    }

    /// A verifier asking the system's resolvers (`/etc/resolv.conf`): a mailbox server on the
    /// real Internet.
    pub fn system(hostname: &str) -> Result<Self, VerifierError> {
        let auth =
            MessageAuthenticator::new_system_conf().map_err(|e| VerifierError(e.to_string()))?;
        Ok(Verifier {
            auth,
            hostname: hostname.to_string(),
            caches: ZoneCaches::new(None),
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
        v.caches = ZoneCaches::new(Some(answers));
        Ok(v)
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
        let spf = self
            .auth
            .verify_spf(self.with_caches(SpfParameters::verify_mail_from(
                ip,
                helo,
                &self.hostname,
                mail_from,
            )))
            .await;
        let spf_word = spf_word(spf.result());
        let Some(parsed) = AuthenticatedMessage::parse(message) else {
            let header = format!(
                "Authentication-Results: {}; spf={spf_word} smtp.mailfrom={mail_from}; dkim=permerror (unparsable message); dmarc=permerror\r\n",
                self.hostname
            );
            return Verdicts {
                spf: spf_word.into(),
                dkim: "permerror".into(),
                dmarc: "permerror".into(),
                header_from: String::new(),
                dmarc_policy: None,
                header,
            };
        };
        let dkim = self.auth.verify_dkim(self.with_caches(&parsed)).await;
        let dmarc = self
            .auth
            .verify_dmarc(self.with_caches(DmarcParameters::new(
                &parsed,
                &dkim,
                &mail_from_domain,
                &spf,
            )))
            .await;
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
        let rest = AuthenticationResults::new(&self.hostname)
            .with_dkim_results(&dkim, &header_from)
            .with_dmarc_result(&dmarc)
            .to_header();
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
        Verdicts {
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

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
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
