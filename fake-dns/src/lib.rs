//! Synthetic DNS for mailsim.
//!
//! * [`ZoneSet`] is the zone model a scenario is compiled into: zones (origins) holding A, AAAA,
//!   MX, TXT (SPF, DKIM keys, DMARC), CNAME, NS, PTR and SOA records, generated or read from
//!   RFC 1035 zone files ([`zonefile`]). It answers in-process with
//!   [`ZoneSet::lookup`] (for virtual time) and builds a hickory [`Catalog`].
//! * [`DnsServer`] serves that catalog with hickory-server over UDP and TCP on one loopback
//!   port, and shuts down cleanly.
//! * [`FaultyZones`] adds a fault timeline (SERVFAIL, timeouts, NXDOMAIN, changed records).
//! * [`InProcess`] answers the same zones and timeline without a socket at scenario time
//!   (virtual mode: the MTA's routing and mail-auth's SPF/DKIM/DMARC lookups), and
//!   [`resolver_for`] is the one hickory set-up for asking a server over the wire (live mode).

pub use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, SOA, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};

pub mod faults;
pub mod in_process;
pub mod serve_faults;
pub mod zonefile;
pub use faults::{Fault, FaultKind, FaultyZones, Resolution};
pub use in_process::{InProcess, resolver_for};
pub use serve_faults::{Elapsed, FaultyCatalog};

/// Default TTL of synthetic records, in seconds.
pub const TTL_S_DEFAULT: u32 = 300;
/// How many CNAME links an in-process lookup follows.
const CNAME_CHAIN_MAX: usize = 8;
/// A DNS TXT character-string holds at most 255 octets; longer texts are split.
const TXT_STRING_BYTES_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid DNS name {name:?}: {message}")]
    BadName { name: String, message: String },
    #[error("zone {origin}: {message}")]
    Zone { origin: String, message: String },
    #[error("{place}: {message}")]
    ZoneFile { place: String, message: String },
    #[error("binding DNS server on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The texts of the TXT records among `records` (an answer to a TXT query), in order.
pub fn txt_texts(records: Vec<RecordData>) -> Vec<String> {
    records
        .into_iter()
        .filter_map(|r| match r {
            RecordData::Txt(t) => Some(t),
            _ => None,
        })
        .collect()
}

/// The data of one synthetic record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx {
        preference: u16,
        exchange: String,
    },
    /// The record's character-strings joined (RFC 7208 section 3.3, RFC 6376 section 3.6.2.2
    /// read them so); served again in strings of at most 255 octets.
    Txt(String),
    Ptr(String),
    Ns(String),
    Cname(String),
    /// A zone's own SOA, from a zone file (generated zones get one of fake-dns's).
    Soa(Soa),
}

/// The fields of an SOA record (RFC 1035 section 3.3.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soa {
    pub mname: String,
    pub rname: String,
    pub serial: u32,
    pub refresh: i32,
    pub retry: i32,
    pub expire: i32,
    pub minimum: u32,
}

impl RecordData {
    pub fn record_type(&self) -> RecordType {
        match self {
            RecordData::A(_) => RecordType::A,
            RecordData::Aaaa(_) => RecordType::AAAA,
            RecordData::Mx { .. } => RecordType::MX,
            RecordData::Txt(_) => RecordType::TXT,
            RecordData::Ptr(_) => RecordType::PTR,
            RecordData::Ns(_) => RecordType::NS,
            RecordData::Cname(_) => RecordType::CNAME,
            RecordData::Soa(_) => RecordType::SOA,
        }
    }
}

/// One record: owner name (absolute, without the trailing dot is fine), TTL, data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneRecord {
    pub name: String,
    pub ttl_s: u32,
    pub data: RecordData,
}

/// The answer of an in-process lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Answer(Vec<RecordData>),
    /// The name exists but has no record of that type.
    NoData,
    NxDomain,
    /// No zone here is authoritative for the name.
    NotAuthoritative,
}

/// The zone model: a set of zone origins and the records under them.
///
/// Declaring a zone also declares every parent suffix (`news.example.test` brings `example.test`
/// and `test`), so that fake-dns is authoritative for the whole tree it serves and answers
/// NXDOMAIN, not REFUSED, for names nobody published (DMARC's tree walk asks those).
#[derive(Debug, Clone, Default)]
pub struct ZoneSet {
    origins: BTreeSet<String>,
    records: BTreeMap<String, Vec<ZoneRecord>>,
}

/// One hickory record from the zone model's data.
pub fn record_of(owner: &Name, ttl_s: u32, data: &RecordData) -> Result<Record, DnsError> {
    let rdata = match data {
        RecordData::A(ip) => RData::A(A(*ip)),
        RecordData::Mx {
            preference,
            exchange,
        } => RData::MX(MX::new(*preference, parse_name(exchange)?)),
        RecordData::Txt(text) => RData::TXT(TXT::new(split_txt(text))),
        RecordData::Ptr(target) => RData::PTR(PTR(parse_name(target)?)),
        RecordData::Ns(target) => RData::NS(NS(parse_name(target)?)),
        RecordData::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        RecordData::Cname(target) => RData::CNAME(CNAME(parse_name(target)?)),
        RecordData::Soa(soa) => RData::SOA(SOA::new(
            parse_name(&soa.mname)?,
            parse_name(&soa.rname)?,
            soa.serial,
            soa.refresh,
            soa.retry,
            soa.expire,
            soa.minimum,
        )),
    };
    Ok(Record::from_rdata(owner.clone(), ttl_s, rdata))
}

/// Lower-case a name and drop a trailing dot, the form used as map keys.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

pub(crate) fn parse_name(name: &str) -> Result<Name, DnsError> {
    if name.is_empty() || name == "." {
        // The root, as in a null MX (RFC 7505): `MX 0 .`
        return Ok(Name::root());
    }
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    Name::from_str(&fqdn)
        .or_else(|e| {
            // A label may hold any octet (RFC 2181 section 11); hickory's text form refuses
            // some (`foo:bar/baz`, as the SPF suite publishes).
            let labels: Vec<&[u8]> = name
                .trim_end_matches('.')
                .split('.')
                .map(str::as_bytes)
                .collect();
            Name::from_labels(labels)
                .map(|mut n| {
                    n.set_fqdn(true);
                    n
                })
                .map_err(|_| e)
        })
        .map_err(|e| DnsError::BadName {
            name: name.to_string(),
            message: e.to_string(),
        })
}

impl ZoneSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declare a zone and its parent suffixes (idempotent). `"."` declares the root: the set
    /// is then authoritative for every name, and one it does not hold does not exist.
    pub fn add_zone(&mut self, origin: &str) {
        if origin == "." {
            self.origins.insert(String::new());
            return;
        }
        let origin = normalize(origin);
        let mut candidate = origin.as_str();
        loop {
            if !candidate.is_empty() {
                self.origins.insert(candidate.to_string());
            }
            match candidate.split_once('.') {
                Some((_, rest)) => candidate = rest,
                None => break,
            }
        }
    }

    /// Add a record; declares a zone for `name` itself when no declared zone covers it.
    pub fn add(&mut self, name: &str, data: RecordData) {
        let name = normalize(name);
        if self.zone_for(&name).is_none() {
            self.add_zone(&name);
        }
        self.records
            .entry(name.clone())
            .or_default()
            .push(ZoneRecord {
                name,
                ttl_s: TTL_S_DEFAULT,
                data,
            });
    }

    /// Put `records` (from a zone file) in place of what the model holds at their names and
    /// types: a zone file adds names and types and overrides the generated ones it also has.
    pub fn overlay(&mut self, origin: &str, records: Vec<ZoneRecord>) {
        self.add_zone(origin);
        let replaced: BTreeSet<(String, RecordType)> = records
            .iter()
            .map(|r| (normalize(&r.name), r.data.record_type()))
            .collect();
        for (name, rtype) in &replaced {
            if let Some(held) = self.records.get_mut(name) {
                held.retain(|r| r.data.record_type() != *rtype);
            }
        }
        for mut r in records {
            r.name = normalize(&r.name);
            if self.zone_for(&r.name).is_none() {
                self.add_zone(&r.name);
            }
            self.records.entry(r.name.clone()).or_default().push(r);
        }
    }

    /// The most specific declared zone that is authoritative for `name`.
    pub fn zone_for(&self, name: &str) -> Option<String> {
        let name = normalize(name);
        let mut candidate = name.as_str();
        loop {
            if self.origins.contains(candidate) {
                return Some(candidate.to_string());
            }
            match candidate.split_once('.') {
                Some((_, rest)) => candidate = rest,
                // The root, when declared, holds every name.
                None => return self.origins.contains("").then(String::new),
            }
        }
    }

    /// The records owned by `name` (any type; empty when none).
    pub fn records_at(&self, name: &str) -> &[ZoneRecord] {
        self.records
            .get(&normalize(name))
            .map_or(&[][..], Vec::as_slice)
    }

    /// Every name that exists: zone origins and record owners (lower case, no trailing dot).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let mut all: BTreeSet<&str> = self.origins.iter().map(String::as_str).collect();
        all.extend(self.records.keys().map(String::as_str));
        all.into_iter()
    }

    /// Zones with the records each is authoritative for.
    pub fn zones(&self) -> impl Iterator<Item = (&str, Vec<&ZoneRecord>)> {
        self.origins.iter().map(|origin| {
            let records = self
                .records
                .values()
                .flatten()
                .filter(|r| self.zone_for(&r.name).as_deref() == Some(origin.as_str()))
                .collect();
            (origin.as_str(), records)
        })
    }

    /// The records of `rtype` at exactly `name`, if any.
    fn lookup_exact(&self, name: &str, rtype: RecordType) -> Option<Vec<RecordData>> {
        let found: Vec<RecordData> = self
            .records
            .get(name)?
            .iter()
            .filter(|r| r.data.record_type() == rtype)
            .map(|r| r.data.clone())
            .collect();
        (!found.is_empty()).then_some(found)
    }

    /// Answer a query from the model itself, without a socket.
    pub fn lookup(&self, name: &str, rtype: RecordType) -> Lookup {
        let name = normalize(name);
        if self.zone_for(&name).is_none() {
            return Lookup::NotAuthoritative;
        }
        let answer: Vec<RecordData> = self
            .records
            .get(&name)
            .into_iter()
            .flatten()
            .filter(|r| r.data.record_type() == rtype)
            .map(|r| r.data.clone())
            .collect();
        if !answer.is_empty() {
            return Lookup::Answer(answer);
        }
        // An alias answers for every type at its name (RFC 1034 section 3.6.2); a resolver
        // follows it, as here, a few links at most.
        if rtype != RecordType::CNAME {
            let mut target = name.clone();
            for _ in 0..CNAME_CHAIN_MAX {
                let Some(next) = self
                    .records
                    .get(&target)
                    .into_iter()
                    .flatten()
                    .find_map(|r| match &r.data {
                        RecordData::Cname(t) => Some(normalize(t)),
                        _ => None,
                    })
                else {
                    break;
                };
                match self.lookup_exact(&next, rtype) {
                    Some(found) => return Lookup::Answer(found),
                    None => target = next,
                }
            }
        }
        let suffix = format!(".{name}");
        let exists = self.origins.contains(&name)
            || self.records.get(&name).is_some_and(|r| !r.is_empty())
            || self
                .records
                .iter()
                .any(|(k, v)| !v.is_empty() && k.ends_with(&suffix));
        if exists {
            Lookup::NoData
        } else {
            Lookup::NxDomain
        }
    }

    /// Build a hickory catalog with one authoritative in-memory zone per origin, each with its
    /// SOA, its NS `ns.<origin>` and that name's address `ns_ip` (the server's own), unless the
    /// scenario gives that name records of its own.
    pub fn to_catalog(&self, ns_ip: std::net::IpAddr) -> Result<Catalog, DnsError> {
        let mut catalog = Catalog::new();
        for (origin, records) in self.zones() {
            let records: Vec<&ZoneRecord> = records;
            let origin_name = parse_name(origin)?;
            let mut zone: InMemoryZoneHandler = InMemoryZoneHandler::empty(
                origin_name.clone(),
                ZoneType::Primary,
                AxfrPolicy::Deny,
                // Unsigned zones: no NSEC or NSEC3 proofs of non-existence.
                None,
            );
            let serial = 1;
            let ns_name = parse_name(&format!("ns.{origin}"))?;
            let soa = SOA::new(
                ns_name.clone(),
                parse_name(&format!("hostmaster.{origin}"))?,
                serial,
                3600,
                600,
                86_400,
                60,
            );
            let zone_err = |message: String| DnsError::Zone {
                origin: origin.to_string(),
                message,
            };
            // The SOA's own TTL is its MINIMUM: a negative answer carries the SOA with
            // min(TTL, MINIMUM) (RFC 2308 section 3), however the server copies it.
            // A zone file's own SOA and NS at the origin stand in for fake-dns's.
            let own = |rtype: RecordType| {
                records
                    .iter()
                    .any(|r| normalize(&r.name) == *origin && r.data.record_type() == rtype)
            };
            if !own(RecordType::SOA)
                && !zone.upsert_mut(
                    Record::from_rdata(origin_name.clone(), 60, RData::SOA(soa)),
                    serial,
                )
            {
                return Err(zone_err("SOA rejected".into()));
            }
            if !own(RecordType::NS) {
                zone.upsert_mut(
                    Record::from_rdata(origin_name.clone(), 3600, RData::NS(NS(ns_name.clone()))),
                    serial,
                );
            }
            // The NS name resolves (RFC 1034 section 4.2.1: a zone's name servers are named and
            // found); to this server.
            let ns_owner = format!("ns.{origin}");
            if !records.iter().any(|r| normalize(&r.name) == ns_owner)
                && let std::net::IpAddr::V4(v4) = ns_ip
            {
                zone.upsert_mut(Record::from_rdata(ns_name, 3600, RData::A(A(v4))), serial);
            }
            for (i, r) in records.iter().enumerate() {
                // An RRset holds no two equal records (RFC 2181 section 5): a repeat is one.
                if records[..i]
                    .iter()
                    .any(|e| normalize(&e.name) == normalize(&r.name) && e.data == r.data)
                {
                    continue;
                }
                let owner = parse_name(&r.name)?;
                if !zone.upsert_mut(record_of(&owner, r.ttl_s, &r.data)?, serial) {
                    return Err(zone_err(format!("record {} {:?} rejected", r.name, r.data)));
                }
            }
            let handler: Arc<dyn ZoneHandler> = Arc::new(zone);
            catalog.upsert(LowerName::new(&origin_name), vec![handler]);
        }
        Ok(catalog)
    }
}

/// Split a long TXT value into character-strings of at most 255 octets (on char boundaries).
fn split_txt(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if current.len() + ch.len_utf8() > TXT_STRING_BYTES_MAX {
            parts.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    parts.push(current);
    parts
}

/// A running hickory-server answering from a [`ZoneSet`] on UDP and TCP.
pub struct DnsServer {
    addr: SocketAddr,
    server: Server<FaultyCatalog>,
}

impl DnsServer {
    /// Bind UDP and TCP on `addr` (port 0 picks a port free for both) and start serving.
    pub async fn start(zones: &ZoneSet, addr: SocketAddr) -> Result<DnsServer, DnsError> {
        let faulty = Arc::new(FaultyZones::new(zones.clone(), Vec::new()));
        Self::start_with_faults(faulty, addr, Arc::new(|| 0)).await
    }

    /// Serve the zones through their fault timeline; `elapsed_ms` says how far into the
    /// scenario a query arrives.
    pub async fn start_with_faults(
        zones: Arc<FaultyZones>,
        addr: SocketAddr,
        elapsed_ms: Elapsed,
    ) -> Result<DnsServer, DnsError> {
        let (udp, tcp) = bind_pair(addr).await?;
        let addr = udp
            .local_addr()
            .map_err(|source| DnsError::Bind { addr, source })?;
        let catalog = zones.zones.to_catalog(addr.ip())?;
        let mut server = Server::new(FaultyCatalog::new(catalog, zones, elapsed_ms));
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        tracing::debug!(%addr, "fake-dns listening");
        Ok(DnsServer { addr, server })
    }

    /// The address serving both UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting queries and wait for the server tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }

    /// Serve until the server fails or is stopped from elsewhere.
    pub async fn wait(mut self) -> Result<(), String> {
        self.server
            .block_until_done()
            .await
            .map_err(|e| e.to_string())
    }
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let bind_err = |source| DnsError::Bind { addr, source };
    if addr.port() != 0 {
        let udp = UdpSocket::bind(addr).await.map_err(bind_err)?;
        let tcp = TcpListener::bind(addr).await.map_err(bind_err)?;
        return Ok((udp, tcp));
    }
    // Port 0: let UDP pick, then take the same port for TCP; retry if TCP's is taken.
    let mut last = None;
    for _ in 0..32 {
        let udp = UdpSocket::bind(addr).await.map_err(bind_err)?;
        let picked = udp.local_addr().map_err(bind_err)?;
        match TcpListener::bind(picked).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(bind_err(
        last.unwrap_or_else(|| std::io::Error::other("no free port")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ZoneSet {
        let mut z = ZoneSet::new();
        z.add_zone("example.test");
        z.add(
            "example.test",
            RecordData::Mx {
                preference: 10,
                exchange: "mx1.example.test".into(),
            },
        );
        z.add(
            "mx1.example.test",
            RecordData::A(Ipv4Addr::new(127, 0, 1, 1)),
        );
        z.add(
            "example.test",
            RecordData::Txt("v=spf1 ip4:127.0.0.1 -all".into()),
        );
        z
    }

    #[test]
    fn in_process_lookup_distinguishes_nodata_and_nxdomain() {
        let z = sample();
        assert_eq!(
            z.lookup("EXAMPLE.test.", RecordType::MX),
            Lookup::Answer(vec![RecordData::Mx {
                preference: 10,
                exchange: "mx1.example.test".into()
            }])
        );
        assert_eq!(z.lookup("example.test", RecordType::A), Lookup::NoData);
        assert_eq!(
            z.lookup("nope.example.test", RecordType::A),
            Lookup::NxDomain
        );
        assert_eq!(
            z.lookup("other.test", RecordType::A),
            Lookup::NxDomain,
            "parent zone test. is ours"
        );
        assert_eq!(
            z.lookup("other.example", RecordType::A),
            Lookup::NotAuthoritative
        );
    }

    #[test]
    fn long_txt_is_split_into_255_octet_strings() {
        let long = "p=".to_string() + &"A".repeat(600);
        let parts = split_txt(&long);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() <= 255));
        assert_eq!(parts.concat(), long);
    }
}
