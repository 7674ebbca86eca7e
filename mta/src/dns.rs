//! MX resolution behind a trait, so live mode asks fake-dns over the wire and tests or virtual
//! mode can answer from memory.

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use std::future::Future;
use std::net::IpAddr;

/// One MX host with its addresses, in the order to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
}

/// Why a destination has no usable route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Try again later (SERVFAIL, timeout, no address for any MX yet).
    #[error("temporary DNS failure: {0}")]
    Temp(String),
    /// Never deliverable (NXDOMAIN, null MX).
    #[error("permanent DNS failure: {0}")]
    Perm(String),
}

/// The hosts in the order one connection tries them: by preference and, within a preference,
/// in an order drawn for this connection. RFC 5321 section 5.1: the sender MUST randomise hosts
/// of equal preference to spread the load. The draw is a SplitMix64 stream seeded by `draw`
/// (the connection's number), so a virtual run stays the same for the same seed.
pub fn connection_order(hosts: &[MxHost], draw: u64) -> Vec<&MxHost> {
    let mut state = draw;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut out: Vec<&MxHost> = hosts.iter().collect();
    out.sort_by_key(|h| h.preference);
    let mut start = 0;
    while start < out.len() {
        let end = start
            + out[start..]
                .iter()
                .take_while(|h| h.preference == out[start].preference)
                .count();
        // Fisher-Yates over the group.
        for i in (start + 1..end).rev() {
            let j = start + (next() % (i - start + 1) as u64) as usize;
            out.swap(i, j);
        }
        start = end;
    }
    out
}

/// Resolves a recipient domain to its MX hosts, sorted by preference (and answers the other
/// lookups delivery makes: MTA-STS's TXT and its web server's address).
pub trait Resolver: Lookups {
    fn route(&self, domain: &str) -> impl Future<Output = Result<Vec<MxHost>, RouteError>> + Send;
}

/// A resolver speaking DNS to one name server (fake-dns in mailsim) through hickory-resolver,
/// with hickory's cache in front.
#[derive(Clone)]
pub struct HickoryResolver {
    inner: TokioResolver,
}

impl HickoryResolver {
    /// A resolver asking the servers `config` names (in mailsim, fake-dns's
    /// `resolver_for(server)`).
    pub fn new((config, opts): (ResolverConfig, ResolverOpts)) -> Result<Self, RouteError> {
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| RouteError::Temp(format!("building resolver: {e}")))?;
        Ok(HickoryResolver { inner })
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// The answer to one query, as routing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Records(Vec<T>),
    /// The name exists without records of that type.
    NoRecords,
    NxDomain,
    /// SERVFAIL, timeout, refused: try again later.
    Failed(String),
}

/// The queries delivery makes (MX and A for routing, TXT for MTA-STS); implemented over the
/// wire ([`HickoryResolver`]) and in-process (virtual mode). Every implementor is a
/// [`Resolver`] with the same rules.
pub trait Lookups: Send + Sync + 'static {
    fn mx(&self, name: &str) -> impl Future<Output = Answer<(u16, String)>> + Send;
    fn a(&self, name: &str) -> impl Future<Output = Answer<IpAddr>> + Send;
    /// TXT records, each one's strings joined.
    fn txt(&self, name: &str) -> impl Future<Output = Answer<String>> + Send;
}

impl HickoryResolver {
    /// One query: the records `pick` takes from the answer, or why there are none.
    async fn query<T>(
        &self,
        name: &str,
        rtype: RecordType,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> Answer<T> {
        match self.inner.lookup(fqdn(name), rtype).await {
            Ok(lookup) => Answer::Records(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| pick(&r.data))
                    .collect(),
            ),
            Err(e) if e.is_nx_domain() => Answer::NxDomain,
            Err(e) if e.is_no_records_found() => Answer::NoRecords,
            Err(e) => Answer::Failed(e.to_string()),
        }
    }
}

impl Lookups for HickoryResolver {
    async fn mx(&self, name: &str) -> Answer<(u16, String)> {
        self.query(name, RecordType::MX, |d| match d {
            RData::MX(mx) => Some((
                mx.preference,
                mx.exchange
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            )),
            _ => None,
        })
        .await
    }

    async fn a(&self, name: &str) -> Answer<IpAddr> {
        self.query(name, RecordType::A, |d| match d {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .await
    }

    async fn txt(&self, name: &str) -> Answer<String> {
        self.query(name, RecordType::TXT, |d| match d {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .await
    }
}

impl<L: Lookups> Resolver for L {
    async fn route(&self, domain: &str) -> Result<Vec<MxHost>, RouteError> {
        // RFC 5321 section 5.1: an address literal is the address to deliver to, without DNS.
        if let Some(ip) = mailsim_smtp::server::address_literal(domain) {
            return Ok(vec![MxHost {
                name: domain.to_string(),
                preference: 0,
                addrs: vec![ip],
            }]);
        }
        let mx = match self.mx(domain).await {
            Answer::Records(mut hosts) => {
                hosts.sort();
                hosts
            }
            Answer::NxDomain => return Err(RouteError::Perm(format!("{domain}: NXDOMAIN"))),
            // No MX: RFC 5321 section 5.1, the domain itself is the implicit MX.
            Answer::NoRecords => vec![(0, domain.to_ascii_lowercase())],
            Answer::Failed(e) => return Err(RouteError::Temp(format!("{domain} MX: {e}"))),
        };
        // Null MX (RFC 7505): a single MX with an empty exchange.
        if mx.len() == 1 && (mx[0].1.is_empty() || mx[0].1 == ".") {
            return Err(RouteError::Perm(format!("{domain} publishes a null MX")));
        }
        let mut out = Vec::with_capacity(mx.len());
        let mut last_err = None;
        for (preference, name) in mx {
            let addrs = match self.a(&name).await {
                Answer::Records(addrs) => addrs,
                Answer::NoRecords => vec![],
                Answer::NxDomain => {
                    last_err = Some(RouteError::Perm(format!("{name}: NXDOMAIN")));
                    continue;
                }
                Answer::Failed(e) => {
                    last_err = Some(RouteError::Temp(format!("{name} A: {e}")));
                    continue;
                }
            };
            out.push(MxHost {
                name,
                preference,
                addrs,
            });
        }
        if out.iter().all(|h| h.addrs.is_empty()) {
            return Err(match last_err {
                Some(RouteError::Perm(m)) if out.is_empty() => RouteError::Perm(m),
                Some(e) => RouteError::Temp(e.to_string()),
                None => RouteError::Temp(format!("{domain}: no MX host has an address")),
            });
        }
        Ok(out)
    }
}
