//! Faults on a timeline: the same zones, answered differently while a fault is active.
//!
//! [`FaultyZones::resolve`] is the one place that decides what a query gets at a given scenario
//! time; the in-process resolvers of virtual mode and the DNS server of live mode both ask it.

use crate::{Lookup, RecordData, ZoneSet, normalize};
use hickory_proto::rr::RecordType;

/// What an active fault does to queries for its name (and names under it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer SERVFAIL.
    ServFail,
    /// Never answer (the client times out).
    Timeout,
    /// Never answer queries of these types at exactly this name (others are answered).
    TimeoutOf(Vec<RecordType>),
    /// Answer NXDOMAIN.
    NxDomain,
    /// Replace the records of one type at exactly this name (a change at time T; a null MX is
    /// `Records(MX, [MX 0 .])`). Names under it are not affected.
    Records(RecordType, Vec<RecordData>),
}

/// One fault with its window in scenario time (milliseconds since the run started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub name: String,
    pub kind: FaultKind,
    pub from_ms: u64,
    /// `None`: until the end of the run.
    pub until_ms: Option<u64>,
}

impl Fault {
    fn active(&self, elapsed_ms: u64) -> bool {
        elapsed_ms >= self.from_ms && self.until_ms.is_none_or(|u| elapsed_ms < u)
    }

    fn covers(&self, name: &str) -> bool {
        match self.kind {
            FaultKind::Records(..) | FaultKind::TimeoutOf(_) => name == self.name,
            _ => {
                name == self.name
                    || (name.len() > self.name.len()
                        && name.ends_with(&self.name)
                        && name.as_bytes()[name.len() - self.name.len() - 1] == b'.')
            }
        }
    }
}

/// The outcome of one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Answer(Vec<RecordData>),
    NoData,
    NxDomain,
    ServFail,
    Timeout,
    /// Not a name this server is authoritative for.
    Refused,
}

/// Zones plus their fault timeline.
#[derive(Debug, Clone, Default)]
pub struct FaultyZones {
    pub zones: ZoneSet,
    pub faults: Vec<Fault>,
}

impl FaultyZones {
    pub fn new(zones: ZoneSet, faults: Vec<Fault>) -> Self {
        let faults = faults
            .into_iter()
            .map(|f| Fault {
                name: normalize(&f.name),
                ..f
            })
            .collect();
        FaultyZones { zones, faults }
    }

    /// The fault that decides a query `elapsed_ms` into the run, if any (the last matching
    /// active fault wins).
    pub fn fault(&self, name: &str, rtype: RecordType, elapsed_ms: u64) -> Option<&FaultKind> {
        let name = normalize(name);
        self.faults
            .iter()
            .rev()
            .find(|f| f.active(elapsed_ms) && f.covers(&name) && kind_applies(&f.kind, rtype))
            .map(|f| &f.kind)
    }

    /// Answer `name`/`rtype` as the server would `elapsed_ms` into the run.
    pub fn resolve(&self, name: &str, rtype: RecordType, elapsed_ms: u64) -> Resolution {
        let name = normalize(name);
        match self.fault(&name, rtype, elapsed_ms) {
            Some(FaultKind::ServFail) => return Resolution::ServFail,
            Some(FaultKind::Timeout | FaultKind::TimeoutOf(_)) => return Resolution::Timeout,
            Some(FaultKind::NxDomain) => return Resolution::NxDomain,
            Some(FaultKind::Records(_, records)) => {
                return if records.is_empty() {
                    Resolution::NoData
                } else {
                    Resolution::Answer(records.clone())
                };
            }
            None => {}
        }
        match self.zones.lookup(&name, rtype) {
            Lookup::Answer(a) => Resolution::Answer(a),
            Lookup::NoData => Resolution::NoData,
            Lookup::NxDomain => Resolution::NxDomain,
            Lookup::NotAuthoritative => Resolution::Refused,
        }
    }

    /// True when some fault is on the timeline (live mode must serve through `resolve`).
    pub fn has_faults(&self) -> bool {
        !self.faults.is_empty()
    }
}

fn kind_applies(kind: &FaultKind, rtype: RecordType) -> bool {
    match kind {
        FaultKind::Records(t, _) => *t == rtype,
        FaultKind::TimeoutOf(types) => types.contains(&rtype),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn zones() -> ZoneSet {
        let mut z = ZoneSet::new();
        z.add_zone("example.test");
        z.add(
            "example.test",
            RecordData::Mx {
                preference: 10,
                exchange: "mx.example.test".into(),
            },
        );
        z.add(
            "mx.example.test",
            RecordData::A(Ipv4Addr::new(127, 1, 0, 1)),
        );
        z
    }

    #[test]
    fn faults_apply_inside_their_window_only() {
        let f = FaultyZones::new(
            zones(),
            vec![
                Fault {
                    name: "Example.Test.".into(),
                    kind: FaultKind::ServFail,
                    from_ms: 1000,
                    until_ms: Some(2000),
                },
                Fault {
                    name: "example.test".into(),
                    kind: FaultKind::Records(
                        RecordType::MX,
                        vec![RecordData::Mx {
                            preference: 0,
                            exchange: ".".into(),
                        }],
                    ),
                    from_ms: 5000,
                    until_ms: None,
                },
            ],
        );
        assert!(matches!(
            f.resolve("example.test", RecordType::MX, 999),
            Resolution::Answer(_)
        ));
        assert_eq!(
            f.resolve("example.test", RecordType::MX, 1000),
            Resolution::ServFail
        );
        // Names under a SERVFAIL name fail too; other names do not.
        assert_eq!(
            f.resolve("mx.example.test", RecordType::A, 1500),
            Resolution::ServFail
        );
        assert_eq!(
            f.resolve("other.invalid", RecordType::A, 1500),
            Resolution::Refused
        );
        assert!(matches!(
            f.resolve("example.test", RecordType::MX, 2000),
            Resolution::Answer(_)
        ));
        assert_eq!(
            f.resolve("example.test", RecordType::MX, 6000),
            Resolution::Answer(vec![RecordData::Mx {
                preference: 0,
                exchange: ".".into()
            }])
        );
        // A record change touches its type and name only.
        assert!(matches!(
            f.resolve("mx.example.test", RecordType::A, 6000),
            Resolution::Answer(_)
        ));
    }
}
