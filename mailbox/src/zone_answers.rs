//! In-process DNS answers for mail-auth, from the scenario's zones and fault timeline.
//!
//! mail-auth consults a cache before it asks the network; in virtual mode every lookup is
//! answered here (a name outside the zones is NXDOMAIN), so verification never touches a socket
//! and follows scenario time. In live mode the caches are empty and mail-auth asks fake-dns.

use fake_dns::{FaultyZones, RecordData, RecordType, Resolution};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::spf::Spf;
use mail_auth::{DnsError, DnssecStatus, Error, MX, RecordSet, ResolverCache, Txt};
use mailsim_events::Clock;
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The zones, the clock and the set of names they hold (keys as mail-auth asks: lower case,
/// trailing dot).
pub struct ZoneAnswers {
    zones: Arc<FaultyZones>,
    clock: Arc<dyn Clock>,
    start_ms: u64,
    names: HashSet<Box<str>>,
    reverse: HashMap<IpAddr, String>,
}

impl ZoneAnswers {
    /// `start_ms` is the clock reading at scenario time zero.
    pub fn new(zones: Arc<FaultyZones>, clock: Arc<dyn Clock>, start_ms: u64) -> Self {
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
        ZoneAnswers {
            zones,
            clock,
            start_ms,
            names,
            reverse,
        }
    }

    fn resolve(&self, fqdn: &str, rtype: RecordType) -> Resolution {
        let elapsed = self.clock.now_ms().saturating_sub(self.start_ms);
        self.zones.resolve(fqdn, rtype, elapsed)
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

/// One of mail-auth's five caches, answering from [`ZoneAnswers`] (or nothing, in live mode).
pub struct ZoneCache<V> {
    answers: Option<Arc<ZoneAnswers>>,
    _value: std::marker::PhantomData<fn() -> V>,
}

impl<V> ZoneCache<V> {
    pub fn new(answers: Option<Arc<ZoneAnswers>>) -> Self {
        ZoneCache {
            answers,
            _value: std::marker::PhantomData,
        }
    }

    /// The zone name for a key, if the key is one of the zones' names.
    fn name<Q>(&self, key: &Q) -> Option<(&ZoneAnswers, Option<&str>)>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let answers = self.answers.as_deref()?;
        Some((answers, answers.names.get(key).map(|n| n.as_ref())))
    }
}

fn not_found(code: ResponseCode) -> Error {
    Error::Dns(DnsError::RecordNotFound(code))
}

fn record_set<T>(items: Vec<T>) -> RecordSet<T> {
    RecordSet {
        rrset: Arc::from(items.into_boxed_slice()),
        dnssec_status: DnssecStatus::Indeterminate,
    }
}

impl ResolverCache<Box<str>, Txt> for ZoneCache<Txt> {
    fn get<Q>(&self, key: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (answers, name) = self.name(key)?;
        let Some(name) = name else {
            return Some(Txt::Error(not_found(ResponseCode::NXDomain)));
        };
        let texts: Vec<String> = match answers.resolve(name, RecordType::TXT) {
            Resolution::Answer(records) => records
                .into_iter()
                .filter_map(|r| match r {
                    RecordData::Txt(t) => Some(t),
                    _ => None,
                })
                .collect(),
            Resolution::NoData => return Some(Txt::Error(not_found(ResponseCode::NoError))),
            Resolution::NxDomain | Resolution::Refused => {
                return Some(Txt::Error(not_found(ResponseCode::NXDomain)));
            }
            Resolution::ServFail => {
                return Some(Txt::Error(Error::Dns(DnsError::Resolver(
                    "SERVFAIL".into(),
                ))));
            }
            Resolution::Timeout => {
                return Some(Txt::Error(Error::Dns(DnsError::Resolver(
                    "query timed out".into(),
                ))));
            }
        };
        // What the record is, mail-auth tells by the name it asks for.
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
        Some(result.unwrap_or_else(Txt::Error))
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

/// Records of one type at a name; failures and absence are an empty set (mail-auth's caches
/// hold no error for these types).
fn records(answers: &ZoneAnswers, name: Option<&str>, rtype: RecordType) -> Vec<RecordData> {
    match name.map(|n| answers.resolve(n, rtype)) {
        Some(Resolution::Answer(r)) => r,
        _ => Vec::new(),
    }
}

impl ResolverCache<Box<str>, RecordSet<MX>> for ZoneCache<RecordSet<MX>> {
    fn get<Q>(&self, key: &Q) -> Option<RecordSet<MX>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (answers, name) = self.name(key)?;
        let mut by_pref: std::collections::BTreeMap<u16, Vec<Box<str>>> = Default::default();
        for r in records(answers, name, RecordType::MX) {
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
        Some(record_set(
            by_pref
                .into_iter()
                .map(|(preference, exchanges)| MX {
                    exchanges: exchanges.into_boxed_slice(),
                    preference,
                })
                .collect(),
        ))
    }

    fn remove<Q>(&self, _: &Q) -> Option<RecordSet<MX>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: RecordSet<MX>, _: std::time::Instant) {}
}

impl ResolverCache<Box<str>, RecordSet<Ipv4Addr>> for ZoneCache<RecordSet<Ipv4Addr>> {
    fn get<Q>(&self, key: &Q) -> Option<RecordSet<Ipv4Addr>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (answers, name) = self.name(key)?;
        Some(record_set(
            records(answers, name, RecordType::A)
                .into_iter()
                .filter_map(|r| match r {
                    RecordData::A(a) => Some(a),
                    _ => None,
                })
                .collect(),
        ))
    }

    fn remove<Q>(&self, _: &Q) -> Option<RecordSet<Ipv4Addr>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: RecordSet<Ipv4Addr>, _: std::time::Instant) {}
}

impl ResolverCache<Box<str>, RecordSet<Ipv6Addr>> for ZoneCache<RecordSet<Ipv6Addr>> {
    fn get<Q>(&self, key: &Q) -> Option<RecordSet<Ipv6Addr>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // The zones hold no AAAA records.
        self.name(key).map(|_| record_set(Vec::new()))
    }

    fn remove<Q>(&self, _: &Q) -> Option<RecordSet<Ipv6Addr>>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: RecordSet<Ipv6Addr>, _: std::time::Instant) {}
}

impl ResolverCache<IpAddr, RecordSet<Box<str>>> for ZoneCache<RecordSet<Box<str>>> {
    fn get<Q>(&self, key: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let answers = self.answers.as_deref()?;
        let name = answers.reverse.get(key).map(String::as_str);
        Some(record_set(
            records(answers, name, RecordType::PTR)
                .into_iter()
                .filter_map(|r| match r {
                    RecordData::Ptr(p) => Some(p.into_boxed_str()),
                    _ => None,
                })
                .collect(),
        ))
    }

    fn remove<Q>(&self, _: &Q) -> Option<RecordSet<Box<str>>>
    where
        IpAddr: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: IpAddr, _: RecordSet<Box<str>>, _: std::time::Instant) {}
}

/// The five caches mail-auth takes.
pub struct ZoneCaches {
    pub txt: ZoneCache<Txt>,
    pub mx: ZoneCache<RecordSet<MX>>,
    pub ipv4: ZoneCache<RecordSet<Ipv4Addr>>,
    pub ipv6: ZoneCache<RecordSet<Ipv6Addr>>,
    pub ptr: ZoneCache<RecordSet<Box<str>>>,
}

impl ZoneCaches {
    pub fn new(answers: Option<Arc<ZoneAnswers>>) -> Self {
        ZoneCaches {
            txt: ZoneCache::new(answers.clone()),
            mx: ZoneCache::new(answers.clone()),
            ipv4: ZoneCache::new(answers.clone()),
            ipv6: ZoneCache::new(answers.clone()),
            ptr: ZoneCache::new(answers),
        }
    }
}
