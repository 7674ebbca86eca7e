//! MTA-STS (RFC 8461): the policy a destination publishes over HTTPS, announced by a
//! `_mta-sts` TXT record, saying which MX hosts may receive its mail and that they must be
//! reached over TLS with a certificate valid for their name.
//!
//! [`Policy::parse`] reads a policy (section 3.2), [`Policy::allows`] matches an MX host against
//! it (section 4.1), [`fetch`] gets it from `https://mta-sts.<domain>/.well-known/mta-sts.txt`
//! over the injected connector, checking the web server's certificate against the trusted roots
//! (section 3.3). The engine caches what it fetched for the policy's `max_age`.

use crate::engine::Connector;
use http_body_util::BodyExt;
use mailsim_smtp::tls::ClientTls;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// RFC 8461 section 3.2: `max_age` is at most 31557600 seconds (about a year).
pub const MAX_AGE_S_MAX: u64 = 31_557_600;
/// The most of a policy body read (section 3.3 suggests a limit; Postfix's mta-sts helpers
/// and Stalwart use 64 KiB).
pub const POLICY_BYTES_MAX: usize = 64 * 1024;
/// How long a fetch may take, connection to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// MX hosts that do not match, or whose TLS fails, get no mail.
    Enforce,
    /// Failures are reported (TLS-RPT) and the mail goes anyway.
    Testing,
    /// The domain has withdrawn its policy.
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A destination's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The `id` of the TXT record it was fetched under.
    pub id: String,
    pub mode: Mode,
    /// MX patterns: a host name, or `*.` and a domain (one label in place of the star).
    pub mx: Vec<String>,
    pub max_age_s: u64,
    /// The policy's text as served.
    pub text: String,
}

impl Policy {
    /// Parse a policy body (RFC 8461 section 3.2): `key: value` lines ending in LF or CRLF;
    /// unknown keys are ignored. Errors name the line.
    pub fn parse(id: &str, text: &str) -> Result<Policy, String> {
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for (n, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(format!("line {}: {line:?} is not \"key: value\"", n + 1));
            };
            let value = value.trim_matches([' ', '\t']);
            match key {
                "version" => version = Some(value.to_string()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        other => {
                            return Err(format!(
                                "line {}: mode {other:?} is not enforce, testing or none",
                                n + 1
                            ));
                        }
                    })
                }
                "max_age" => {
                    // 1*10DIGIT: no sign, no space.
                    let age = value
                        .parse::<u64>()
                        .ok()
                        .filter(|_| {
                            !value.is_empty()
                                && value.len() <= 10
                                && value.bytes().all(|b| b.is_ascii_digit())
                        })
                        .ok_or_else(|| {
                            format!("line {}: max_age {value:?} is not a number", n + 1)
                        })?;
                    max_age = Some(age.min(MAX_AGE_S_MAX));
                }
                "mx" => {
                    let pattern = value.trim_end_matches('.').to_ascii_lowercase();
                    let host = pattern.strip_prefix("*.").unwrap_or(&pattern);
                    if host.is_empty()
                        || host.contains('*')
                        || !host.split('.').all(|l| {
                            !l.is_empty()
                                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        })
                    {
                        return Err(format!(
                            "line {}: mx {value:?} is not a host pattern",
                            n + 1
                        ));
                    }
                    mx.push(pattern);
                }
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("no \"version: STSv1\"".into());
        }
        let mode = mode.ok_or("no mode")?;
        let max_age_s = max_age.ok_or("no max_age")?;
        if mx.is_empty() && mode != Mode::None {
            return Err("no mx".into());
        }
        Ok(Policy {
            id: id.to_string(),
            mode,
            mx,
            max_age_s,
            text: text.to_string(),
        })
    }

    /// May `host` receive this domain's mail (RFC 8461 section 4.1: the name matches a pattern;
    /// a wildcard stands for exactly one leftmost label)?
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
}

/// The `id` of a `_mta-sts` TXT record (`v=STSv1; id=...`), read by mail-auth's parser; the
/// id must be 1 to 32 letters and digits (RFC 8461 section 3.1).
pub fn record_id(txt: &str) -> Option<String> {
    use mail_auth::common::parse::TxtRecordParser;
    mail_auth::mta_sts::MtaSts::parse(txt.as_bytes())
        .ok()
        .map(|r| r.id)
        .filter(|id| (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Is this an address mailsim may fetch a URL from (127.0.0.0/8)? A testbed's requests
/// (policies, opens, clicks) never leave the machine.
pub fn allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(_) => false,
    }
}

/// Fetch `domain`'s policy from `addr` (the address of `mta-sts.<domain>`): HTTPS with a
/// certificate valid for that name under the trusted roots, status 200, no redirects
/// (RFC 8461 section 3.3). The error says which step failed and is prefixed with the RFC 8460
/// result type (`sts-webpki-invalid`, `sts-policy-fetch-error`, `sts-policy-invalid`).
pub async fn fetch<C: Connector>(
    connector: &C,
    tls: &ClientTls,
    addr: SocketAddr,
    domain: &str,
    id: &str,
) -> Result<Policy, String> {
    let host = format!("mta-sts.{domain}");
    if !allowed(addr.ip()) {
        tracing::warn!(
            "refused to fetch the MTA-STS policy of {domain} from {addr}: outside 127.0.0.0/8"
        );
        return Err(format!(
            "sts-policy-fetch-error: refused {host} at {addr}: outside 127.0.0.0/8"
        ));
    }
    let fetching = async {
        let stream = connector
            .connect(addr)
            .await
            .map_err(|e| format!("sts-policy-fetch-error: connecting to {host} at {addr}: {e}"))?;
        let handshake = tls
            .handshake()
            .map_err(|e| format!("sts-policy-fetch-error: {e}"))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("sts-policy-fetch-error: {host:?}: {e}"))?;
        let secured = handshake
            .connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("sts-policy-fetch-error: TLS with {host}: {e}"))?;
        match handshake.verdict() {
            Some(Ok(())) => {}
            Some(Err(p)) => return Err(format!("sts-webpki-invalid: {host}: {p}")),
            None => return Err(format!("sts-webpki-invalid: {host}: no certificate")),
        }
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(secured))
                .await
                .map_err(|e| format!("sts-policy-fetch-error: HTTP with {host}: {e}"))?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::builder()
            .uri("/.well-known/mta-sts.txt")
            .header("host", host.as_str())
            .header("user-agent", "mailsim-mta")
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .map_err(|e| format!("sts-policy-fetch-error: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("sts-policy-fetch-error: GET from {host}: {e}"))?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), POLICY_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| format!("sts-policy-fetch-error: reading the policy from {host}: {e}"));
        drop(sender);
        driver.abort();
        if status != 200 {
            return Err(format!(
                "sts-policy-fetch-error: {host} answered HTTP {status} (RFC 8461 3.3: only 200, no redirects)"
            ));
        }
        let body = body?.to_bytes();
        let text = std::str::from_utf8(&body)
            .map_err(|_| format!("sts-policy-invalid: {host}: the policy is not UTF-8"))?;
        Policy::parse(id, text).map_err(|e| format!("sts-policy-invalid: {host}: {e}"))
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetching)
        .await
        .map_err(|_| format!("sts-policy-fetch-error: {host}: no answer in {FETCH_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy of RFC 8461 section 3.2's example.
    const EXAMPLE: &str = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmx: backupmx.example.com\nmax_age: 604800\n";

    /// A connector that fails the test if asked.
    struct NoNetwork;

    impl Connector for NoNetwork {
        type Stream = tokio::io::DuplexStream;
        async fn connect(&self, addr: SocketAddr) -> std::io::Result<Self::Stream> {
            panic!("connected to {addr}")
        }
    }

    #[tokio::test]
    async fn a_policy_outside_loopback_is_refused_unasked() {
        let tls = ClientTls::untrusting();
        let addr: SocketAddr = "192.0.2.10:443".parse().unwrap();
        let e = fetch(&NoNetwork, &tls, addr, "far.test", "1")
            .await
            .unwrap_err();
        assert!(
            e.starts_with("sts-policy-fetch-error: refused mta-sts.far.test at 192.0.2.10:443")
                && e.contains("127.0.0.0/8"),
            "{e}"
        );
        assert!(allowed("127.3.2.1".parse().unwrap()));
        assert!(!allowed("::1".parse().unwrap()));
    }

    #[test]
    fn the_rfc_example_parses() {
        let p = Policy::parse("20160831085700Z", EXAMPLE).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age_s, 604800);
        assert_eq!(
            p.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
        // CRLF line ends and unknown keys are fine.
        let crlf = EXAMPLE.replace('\n', "\r\n") + "extension: 1\r\n";
        assert_eq!(Policy::parse("x", &crlf).unwrap().mx.len(), 3);
    }

    /// Section 4.1: a wildcard is one leftmost label, names compare without case or final dot.
    #[test]
    fn mx_patterns_match_as_section_4_1_says() {
        let p = Policy::parse("x", EXAMPLE).unwrap();
        assert!(p.allows("mail.example.com"));
        assert!(p.allows("MAIL.Example.com."));
        assert!(p.allows("mx1.example.net"));
        assert!(!p.allows("example.net"));
        assert!(!p.allows("a.b.example.net"));
        assert!(!p.allows("mail.example.org"));
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        let cases = [
            ("mode: enforce\nmx: a.test\nmax_age: 1\n", "STSv1"),
            (
                "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
                "line 2",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            ("version: STSv1\nmode: enforce\nmx: a.test\n", "max_age"),
            (
                "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
                "line 4",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 1\n",
                "line 3",
            ),
            ("version: STSv1\njunk\n", "line 2"),
        ];
        for (text, says) in cases {
            let e = Policy::parse("x", text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        // mode none needs no mx; max_age is capped at a year.
        let p = Policy::parse("x", "version: STSv1\nmode: none\nmax_age: 99999999999\n");
        assert!(p.is_err(), "11 digits");
        let p = Policy::parse("x", "version: STSv1\nmode: none\nmax_age: 9999999999\n").unwrap();
        assert_eq!(p.max_age_s, MAX_AGE_S_MAX);
    }

    #[test]
    fn the_txt_record_is_read_by_mail_auth() {
        assert_eq!(
            record_id("v=STSv1; id=20160831085700Z;").as_deref(),
            Some("20160831085700Z")
        );
        assert_eq!(record_id("v=spf1 -all"), None);
        assert_eq!(record_id("v=STSv1; id=;"), None);
        assert_eq!(record_id("v=STSv1; id=a-b;"), None);
        assert_eq!(record_id(&format!("v=STSv1; id={};", "a".repeat(33))), None);
    }
}
