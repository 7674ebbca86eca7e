//! The zones answered in-process, at scenario time, with the same fault timeline the wire
//! server applies: virtual mode routes mail and verifies SPF, DKIM and DMARC from here without
//! a socket. Also the one resolver set-up for asking a server over the wire.

use crate::{Elapsed, FaultyZones, RecordData, RecordType, Resolution};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::spf::Spf;
use mail_auth::{DnsError, DnssecStatus, Error, MX, RecordSet, Txt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long a query to a server that never answers takes to fail (scenario seconds).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A hickory resolver configuration that asks `server` alone, over UDP and TCP, and never
/// reads `/etc/hosts`: what the MTA's router and the mailbox's verifier use in live mode.
pub fn resolver_for(server: SocketAddr) -> (ResolverConfig, ResolverOpts) {
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = server.port();
    let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
    let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    opts.cache_size = 4096;
    opts.ndots = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    (config, opts)
}

/// The zones, their fault timeline and the scenario clock, answering in-process.
pub struct InProcess {
    zones: Arc<FaultyZones>,
    elapsed_ms: Elapsed,
    /// Every name the zones or faults hold, as mail-auth asks for it (lower case, trailing dot).
    names: HashSet<Box<str>>,
    /// Addresses with a PTR name in the zones.
    reverse: HashMap<IpAddr, String>,
}

impl InProcess {
    /// `elapsed_ms` reads scenario time (milliseconds since the scenario's start).
    pub fn new(zones: Arc<FaultyZones>, elapsed_ms: Elapsed) -> Self {
        let mut names: HashSet<Box<str>> = zones
            .zones
            .names()
            .map(|n| format!("{n}.").into_boxed_str())
            .collect();
        names.extend(
            zones
                .faults
                .iter()
                .map(|f| format!("{}.", f.name).into_boxed_str()),
        );
        let reverse = zones
            .zones
            .names()
            .filter_map(|n| reverse_ip(n).map(|ip| (ip, n.to_string())))
            .collect();
        InProcess {
            zones,
            elapsed_ms,
            names,
            reverse,
        }
    }

    /// The resolution of one query now.
    pub fn resolve(&self, name: &str, rtype: RecordType) -> Resolution {
        self.zones.resolve(name, rtype, (self.elapsed_ms)())
    }

    /// [`Self::resolve`] as a resolver sees it: a server that never answers costs [`TIMEOUT`]
    /// of (scenario) time before the timeout is reported.
    pub async fn query(&self, name: &str, rtype: RecordType) -> Resolution {
        let r = self.resolve(name, rtype);
        if r == Resolution::Timeout {
            tokio::time::sleep(TIMEOUT).await;
        }
        r
    }

    /// The names mail-auth may ask for; any other name does not exist.
    pub fn names(&self) -> &HashSet<Box<str>> {
        &self.names
    }

    /// The PTR owner name of an address, if the zones hold one.
    pub fn reverse(&self) -> &HashMap<IpAddr, String> {
        &self.reverse
    }

    fn records(&self, name: Option<&str>, rtype: RecordType) -> Vec<RecordData> {
        match name.map(|n| self.resolve(n, rtype)) {
            Some(Resolution::Answer(r)) => r,
            _ => Vec::new(),
        }
    }

    /// The TXT answer mail-auth expects at `name` (`None`: a name the zones do not hold),
    /// parsed as the record the name implies: DMARC at `_dmarc.`, a DKIM key under
    /// `._domainkey.`, SPF otherwise.
    pub fn txt(&self, name: Option<&str>) -> Txt {
        let Some(name) = name else {
            return Txt::Error(not_found(ResponseCode::NXDomain));
        };
        let texts: Vec<String> = match self.resolve(name, RecordType::TXT) {
            Resolution::Answer(records) => crate::txt_texts(records),
            Resolution::NoData => return Txt::Error(not_found(ResponseCode::NoError)),
            Resolution::NxDomain | Resolution::Refused => {
                return Txt::Error(not_found(ResponseCode::NXDomain));
            }
            Resolution::ServFail => {
                return Txt::Error(Error::Dns(DnsError::Resolver("SERVFAIL".into())));
            }
            Resolution::Timeout => {
                return Txt::Error(Error::Dns(DnsError::Resolver("query timed out".into())));
            }
        };
        let parse = |t: &String| -> Result<Txt, Error> {
            if name.starts_with("_dmarc.") {
                Dmarc::parse(t.as_bytes()).map(Txt::from)
            } else if name.contains("._domainkey.") {
                DomainKey::parse(t.as_bytes()).map(Txt::from)
            } else {
                Spf::parse(t.as_bytes()).map(Txt::from)
            }
        };
        let mut result = Err(Error::Dns(DnsError::InvalidRecordType));
        for t in &texts {
            result = parse(t);
            if result.is_ok() {
                break;
            }
        }
        result.unwrap_or_else(Txt::Error)
    }

    /// MX records grouped by preference; failures and absence are an empty set (mail-auth's
    /// caches hold no error for these types).
    pub fn mx(&self, name: Option<&str>) -> RecordSet<MX> {
        let mut by_pref: BTreeMap<u16, Vec<Box<str>>> = BTreeMap::new();
        for r in self.records(name, RecordType::MX) {
            if let RecordData::Mx {
                preference,
                exchange,
            } = r
            {
                by_pref
                    .entry(preference)
                    .or_default()
                    .push(exchange.into_boxed_str());
            }
        }
        record_set(
            by_pref
                .into_iter()
                .map(|(preference, exchanges)| MX {
                    exchanges: exchanges.into_boxed_slice(),
                    preference,
                })
                .collect(),
        )
    }

    pub fn ipv4(&self, name: Option<&str>) -> RecordSet<Ipv4Addr> {
        record_set(
            self.records(name, RecordType::A)
                .into_iter()
                .filter_map(|r| match r {
                    RecordData::A(a) => Some(a),
                    _ => None,
                })
                .collect(),
        )
    }

    pub fn ipv6(&self, name: Option<&str>) -> RecordSet<Ipv6Addr> {
        record_set(
            self.records(name, RecordType::AAAA)
                .into_iter()
                .filter_map(|r| match r {
                    RecordData::Aaaa(a) => Some(a),
                    _ => None,
                })
                .collect(),
        )
    }

    pub fn ptr(&self, name: Option<&str>) -> RecordSet<Box<str>> {
        record_set(
            self.records(name, RecordType::PTR)
                .into_iter()
                .filter_map(|r| match r {
                    RecordData::Ptr(p) => Some(p.into_boxed_str()),
                    _ => None,
                })
                .collect(),
        )
    }
}

/// `4.3.2.1.in-addr.arpa` -> 1.2.3.4
fn reverse_ip(name: &str) -> Option<IpAddr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut o: Vec<u8> = rest
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if o.len() != 4 {
        return None;
    }
    o.reverse();
    Some(IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3])))
}

fn not_found(code: ResponseCode) -> Error {
    Error::Dns(DnsError::RecordNotFound(code))
}

/// An answer set without DNSSEC status (the zones are not signed).
fn record_set<T>(items: Vec<T>) -> RecordSet<T> {
    RecordSet {
        rrset: Arc::from(items.into_boxed_slice()),
        dnssec_status: DnssecStatus::Indeterminate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fault, FaultKind, ZoneSet};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn zones(now: Arc<AtomicU64>) -> InProcess {
        let mut z = ZoneSet::new();
        z.add_zone("example.test");
        z.add("example.test", RecordData::Txt("v=spf1 -all".into()));
        z.add(
            "_dmarc.example.test",
            RecordData::Txt("v=DMARC1; p=reject".into()),
        );
        z.add(
            "4.3.2.1.in-addr.arpa",
            RecordData::Ptr("mx.example.test.".into()),
        );
        let faults = vec![Fault {
            name: "example.test".into(),
            kind: FaultKind::ServFail,
            from_ms: 1_000,
            until_ms: Some(2_000),
        }];
        InProcess::new(
            Arc::new(FaultyZones::new(z, faults)),
            Arc::new(move || now.load(Ordering::Relaxed)),
        )
    }

    #[test]
    fn txt_records_are_parsed_as_the_name_implies_and_follow_the_fault_timeline() {
        let now = Arc::new(AtomicU64::new(0));
        let p = zones(now.clone());
        assert!(matches!(p.txt(Some("example.test.")), Txt::Spf(_)));
        assert!(matches!(p.txt(Some("_dmarc.example.test.")), Txt::Dmarc(_)));
        assert!(matches!(
            p.txt(None),
            Txt::Error(Error::Dns(DnsError::RecordNotFound(ResponseCode::NXDomain)))
        ));
        now.store(1_500, Ordering::Relaxed);
        assert!(matches!(
            p.txt(Some("example.test.")),
            Txt::Error(Error::Dns(DnsError::Resolver(_)))
        ));
        now.store(2_000, Ordering::Relaxed);
        assert!(matches!(p.txt(Some("example.test.")), Txt::Spf(_)));
        assert_eq!(
            p.reverse()
                .get(&IpAddr::from([1, 2, 3, 4]))
                .map(String::as_str),
            Some("4.3.2.1.in-addr.arpa")
        );
        assert!(p.names().contains("_dmarc.example.test."));
    }
}
