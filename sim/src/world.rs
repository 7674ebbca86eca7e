//! Compiles a scenario into the world a run needs: DNS zones, DKIM keys, and the plan of the
//! fleet (which MX host of which domain listens on which loopback address, with what behaviour).

use crate::keys::{self, DkimKeyPair};
use crate::scenario::DnsFaultKind;
use crate::scenario::{DkimAlgorithm, Scenario, Sender};
use fake_dns::{Fault, FaultKind, Lookup, RecordData, RecordType, ZoneSet};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// What a scenario published that a report needs (recorded in `run_started`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    pub dmarc: BTreeMap<String, String>,
    pub spf: BTreeMap<String, String>,
    pub profiles: BTreeMap<String, String>,
}

pub use crate::behaviour::Behaviour;

/// One MX host of the fleet.
#[derive(Debug, Clone)]
pub struct HostPlan {
    pub name: String,
    pub domain: String,
    pub ip: Ipv4Addr,
    /// Nothing listens: connections to it are refused.
    pub down: bool,
    pub behaviour: Behaviour,
    /// The MX of a sender domain: receives DSNs and complaints for the bounce processor.
    pub sender_mx: bool,
    /// Its STARTTLS, or the fault it has.
    pub tls: crate::scenario::TlsFault,
}

/// A domain's MTA-STS policy, as its web server `mta-sts.<domain>` serves it.
#[derive(Debug, Clone)]
pub struct StsSite {
    pub domain: String,
    pub policy: String,
}

/// The address every `mta-sts.<domain>` web server of a run answers on (one server, one
/// certificate naming them all).
pub const STS_IP: Ipv4Addr = Ipv4Addr::new(127, 2, 0, 1);

pub struct SenderKeys {
    pub sender: Sender,
    pub key: DkimKeyPair,
}

pub struct World {
    pub zones: ZoneSet,
    pub faults: Vec<Fault>,
    pub hosts: Vec<HostPlan>,
    pub senders: Vec<SenderKeys>,
    /// The MTA-STS policies the recipient domains publish.
    pub sts: Vec<StsSite>,
}

/// The DMARC record a sender publishes: its own, or `p=reject` with aggregate reports to the
/// sender's own domain.
pub fn dmarc_record(s: &crate::scenario::Sender) -> String {
    s.dmarc
        .clone()
        .unwrap_or_else(|| format!("v=DMARC1; p=reject; rua=mailto:dmarc-reports@{}", s.domain))
}

/// SplitMix64-style mixing of a seed and a string: a stable, seed-driven hash.
pub fn mix(seed: u64, text: &str) -> u64 {
    mix_parts(seed, &[text.as_bytes()])
}

/// [`mix`] of the concatenation of `parts`, without making it (the receivers draw millions of
/// times on a large run).
pub fn mix_parts(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    for b in parts.iter().flat_map(|p| p.iter()) {
        h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01B3);
        h ^= h >> 29;
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// True with probability `percent`/100, decided by the seed and the key.
pub fn chance(seed: u64, key: &str, percent: f64) -> bool {
    chance_parts(seed, &[key.as_bytes()], percent)
}

/// [`chance`] with the key given as the concatenation of `parts`.
pub fn chance_parts(seed: u64, parts: &[&[u8]], percent: f64) -> bool {
    percent > 0.0 && (mix_parts(seed, parts) % 1_000_000) as f64 / 10_000.0 < percent
}

fn host_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250) as u8 + 1)
}

/// Where a domain's MX hosts listen: the first two octets of their addresses, by domain
/// (`None`: the scenario's own 127.1.x.y). A multi-node run places each fleet node's domains in
/// a /16 of its own, which can be routed to the node's machine.
pub type Placement<'a> = &'a dyn Fn(&str) -> Option<[u8; 2]>;

/// Host `i`'s address, in its domain's placement if it has one.
fn placed_ip(place: Placement, domain: &str, i: usize) -> Ipv4Addr {
    match place(&domain.to_ascii_lowercase()) {
        Some([a, b]) => Ipv4Addr::new(a, b, (i / 250) as u8, (i % 250) as u8 + 1),
        None => host_ip(i),
    }
}

impl World {
    /// Where receivers send complaints, by sender domain.
    /// What the scenario published that a report needs: DMARC and SPF records as the zones
    /// hold them, and the recipient domains' provider profiles.
    pub fn published(&self, scenario: &Scenario) -> Published {
        let txt = |name: &str, prefix: &str| match self.zones.lookup(name, RecordType::TXT) {
            Lookup::Answer(records) => records.into_iter().find_map(|r| match r {
                RecordData::Txt(t) if t.starts_with(prefix) => Some(t),
                _ => None,
            }),
            _ => None,
        };
        let domains: std::collections::BTreeSet<String> = scenario
            .senders()
            .map(|s| s.domain.to_ascii_lowercase())
            .chain(scenario.domains().map(|d| d.name.to_ascii_lowercase()))
            .collect();
        let mut p = Published::default();
        for d in domains {
            if let Some(r) = txt(&format!("_dmarc.{d}"), "v=DMARC1") {
                p.dmarc.insert(d.clone(), r);
            }
            if let Some(r) = txt(&d, "v=spf1") {
                p.spf.insert(d, r);
            }
        }
        for d in scenario.domains() {
            if let Some(profile) = d.profile {
                p.profiles
                    .insert(d.name.to_ascii_lowercase(), profile.name().into());
            }
        }
        p
    }

    /// Where each recipient domain's and each sender domain's first live MX listens, for an
    /// MTA routed without DNS (transport maps), in the scenario's order.
    pub fn routes(&self) -> Vec<(String, std::net::Ipv4Addr)> {
        let mut out: Vec<(String, std::net::Ipv4Addr)> = Vec::new();
        // The senders' own MX too: an MTA routed by these lines returns its DSNs there.
        for h in self.hosts.iter().filter(|h| !h.down) {
            if !out.iter().any(|(d, _)| *d == h.domain) {
                out.push((h.domain.clone(), h.ip));
            }
        }
        out
    }

    pub fn feedback_addresses(&self) -> Vec<(String, String)> {
        self.senders
            .iter()
            .map(|s| {
                (
                    s.sender.domain.to_ascii_lowercase(),
                    s.sender.feedback_address(),
                )
            })
            .collect()
    }

    pub fn build(scenario: &Scenario) -> Result<World, String> {
        World::build_placed(scenario, &|_| None)
    }

    /// The world with each domain's MX hosts at the addresses `place` gives (the zones say
    /// so too); the same scenario and placement give the same world on every node.
    pub fn build_placed(scenario: &Scenario, place: Placement) -> Result<World, String> {
        let mut zones = ZoneSet::new();
        let mta = &scenario.mta;
        let mta_ip = mta.ip;

        // The MTA's own name, address and reverse record (for iprev and PTR checks).
        zones.add(&mta.hostname, RecordData::A(mta_ip));
        zones.add_zone("in-addr.arpa");
        let o = mta_ip.octets();
        zones.add(
            &format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]),
            RecordData::Ptr(mta.hostname.clone()),
        );

        let mut senders = Vec::new();
        for (i, s) in scenario.senders().enumerate() {
            zones.add_zone(&s.domain);
            let spf = s
                .spf
                .clone()
                .unwrap_or_else(|| format!("v=spf1 ip4:{mta_ip} -all"));
            zones.add(&s.domain, RecordData::Txt(spf));
            zones.add(
                &format!("_dmarc.{}", s.domain),
                RecordData::Txt(dmarc_record(s)),
            );
            let key_seed = mix(scenario.seed, &format!("dkim:{i}:{}", s.domain));
            let key = match (&s.dkim_private_key, s.dkim_algorithm) {
                (Some(path), _) => {
                    let resolved = crate::scenario::relative_to(&scenario.path, path);
                    let place = || {
                        let shown = if resolved == *path {
                            path.display().to_string()
                        } else {
                            format!("{} ({})", path.display(), resolved.display())
                        };
                        format!(
                            "{}: sender[{i}].dkim_private_key = {shown}",
                            scenario.path.display(),
                        )
                    };
                    let pem = std::fs::read(&resolved).map_err(|e| format!("{}: {e}", place()))?;
                    let pem = String::from_utf8(pem)
                        .map_err(|_| format!("{}: not a PEM text file (it is binary)", place()))?;
                    keys::rsa_from_pem(&pem).map_err(|e| format!("{}: {e}", place()))?
                }
                (None, DkimAlgorithm::Rsa) => keys::rsa_from_seed(key_seed)?,
                (None, DkimAlgorithm::Ed25519) => keys::ed25519_from_seed(key_seed)?,
            };
            if s.dkim_publish {
                zones.add(
                    &format!("{}._domainkey.{}", s.dkim_selector, s.domain),
                    RecordData::Txt(key.dns_txt.clone()),
                );
            }
            senders.push(SenderKeys {
                sender: s.clone(),
                key,
            });
        }

        let mut hosts: Vec<HostPlan> = Vec::new();
        // Each sender domain has its own MX in the fleet: its bounce and feedback mailboxes.
        for s in scenario.senders() {
            let name = format!("mx.{}", s.domain.to_ascii_lowercase());
            zones.add(
                &s.domain,
                RecordData::Mx {
                    preference: 10,
                    exchange: name.clone(),
                },
            );
            let ip = placed_ip(place, &s.domain, hosts.len());
            zones.add(&name, RecordData::A(ip));
            hosts.push(HostPlan {
                name,
                domain: s.domain.to_ascii_lowercase(),
                ip,
                down: false,
                behaviour: Behaviour::default(),
                sender_mx: true,
                tls: crate::scenario::TlsFault::Ok,
            });
        }
        let recipients = std::sync::Arc::new(crate::engage::Recipients::from_scenario(scenario));
        let mut sts = Vec::new();
        for d in scenario.domains() {
            zones.add_zone(&d.name);
            let seed = mix(scenario.seed, &format!("behaviour:{}", d.name));
            let mut behaviour = Behaviour::from_domain(d, seed);
            if let Some(section) = &scenario.reputation {
                behaviour.deliverability = Some(crate::behaviour::Deliverability::new(
                    d,
                    section,
                    recipients.clone(),
                    seed,
                ));
            }
            for mx in d.mx_hosts() {
                zones.add(
                    &d.name,
                    RecordData::Mx {
                        preference: mx.preference,
                        exchange: mx.host.clone(),
                    },
                );
                // An MX host shared by several domains is planned (and addressed) once.
                if !hosts
                    .iter()
                    .any(|h: &HostPlan| h.name.eq_ignore_ascii_case(&mx.host))
                {
                    let ip = placed_ip(place, &d.name, hosts.len());
                    zones.add(&mx.host, RecordData::A(ip));
                    hosts.push(HostPlan {
                        name: mx.host.to_ascii_lowercase(),
                        domain: d.name.to_ascii_lowercase(),
                        ip,
                        down: mx.down,
                        behaviour: match &mx.behaviour {
                            Some(o) => behaviour.for_host(o),
                            None => behaviour.clone(),
                        },
                        sender_mx: false,
                        tls: mx.tls,
                    });
                }
            }
            if let Some(spf) = &d.spf {
                zones.add(&d.name, RecordData::Txt(spf.clone()));
            }
            if let Some(dmarc) = &d.dmarc {
                zones.add(
                    &format!("_dmarc.{}", d.name),
                    RecordData::Txt(dmarc.clone()),
                );
            }
            if let Some(mode) = d.mta_sts {
                let name = d.name.to_ascii_lowercase();
                let mode = match mode {
                    crate::scenario::StsMode::Enforce => "enforce",
                    crate::scenario::StsMode::Testing => "testing",
                    crate::scenario::StsMode::None => "none",
                };
                let mut policy = format!("version: STSv1\nmode: {mode}\n");
                for mx in d.mx_hosts() {
                    policy.push_str(&format!("mx: {}\n", mx.host.to_ascii_lowercase()));
                }
                policy.push_str("max_age: 86400\n");
                let id = format!("{:016x}", mix(scenario.seed, &policy));
                zones.add(
                    &format!("_mta-sts.{name}"),
                    RecordData::Txt(format!("v=STSv1; id={id};")),
                );
                zones.add(&format!("mta-sts.{name}"), RecordData::A(STS_IP));
                zones.add(
                    &format!("_smtp._tls.{name}"),
                    RecordData::Txt(format!("v=TLSRPTv1; rua=mailto:tlsrpt@{name}")),
                );
                sts.push(StsSite {
                    domain: name,
                    policy,
                });
            }
        }
        // The scenario's zone files, over the generated records.
        for (i, z) in scenario.zones.iter().enumerate() {
            let path = z.file();
            let resolved = crate::scenario::relative_to(&scenario.path, path);
            let file = fake_dns::zonefile::load(&resolved, z.origin()).map_err(|e| {
                format!(
                    "{}: zones[{i}] = {}: {e}",
                    scenario.path.display(),
                    path.display()
                )
            })?;
            zones.overlay(&file.origin, file.records);
        }
        let mut faults = Vec::new();
        for f in scenario.dns_faults.iter().map(|f| f.get_ref()) {
            let kind = match f.kind {
                DnsFaultKind::Servfail => FaultKind::ServFail,
                DnsFaultKind::Timeout => FaultKind::Timeout,
                DnsFaultKind::Nxdomain => FaultKind::NxDomain,
                DnsFaultKind::NullMx => FaultKind::Records(
                    RecordType::MX,
                    vec![RecordData::Mx {
                        preference: 0,
                        exchange: ".".into(),
                    }],
                ),
                DnsFaultKind::ChangeMx => {
                    let owner = f.name.to_ascii_lowercase();
                    let behaviour = hosts
                        .iter()
                        .find(|h| h.domain == owner)
                        .map(|h| h.behaviour.clone())
                        .unwrap_or_default();
                    let mut records = Vec::new();
                    for mx in &f.mx {
                        // New hosts join the fleet with the domain's behaviour.
                        if !hosts.iter().any(|h| h.name.eq_ignore_ascii_case(&mx.host)) {
                            let ip = placed_ip(place, &owner, hosts.len());
                            zones.add(&mx.host, RecordData::A(ip));
                            hosts.push(HostPlan {
                                name: mx.host.to_ascii_lowercase(),
                                domain: owner.clone(),
                                ip,
                                down: mx.down,
                                behaviour: behaviour.clone(),
                                sender_mx: false,
                                tls: mx.tls,
                            });
                        }
                        records.push(RecordData::Mx {
                            preference: mx.preference,
                            exchange: mx.host.clone(),
                        });
                    }
                    FaultKind::Records(RecordType::MX, records)
                }
            };
            faults.push(Fault {
                name: f.name.clone(),
                kind,
                from_ms: f.from_s.unwrap_or(0) * 1000,
                until_ms: f.until_s.map(|u| u * 1000),
            });
        }
        Ok(World {
            zones,
            faults,
            hosts,
            senders,
            sts,
        })
    }
}

#[cfg(test)]
mod tests {
    /// The draws made from parts are the draws of the whole key (the event logs depend on it).
    #[test]
    fn mix_of_parts_is_mix_of_the_whole() {
        for (n, key) in [0u64, 7, 10, 99, 4_294_967_295, u64::MAX].into_iter().zip([
            "",
            "a",
            "user1@grey1.test",
            "full:",
            "x#",
            "üñí",
        ]) {
            let mut digits = itoa::Buffer::new();
            let d = digits.format(n).as_bytes();
            let whole = format!("{key}#{n}");
            assert_eq!(mix_parts(9, &[key.as_bytes(), b"#", d]), mix(9, &whole));
            assert_eq!(
                chance_parts(9, &[key.as_bytes(), b"#", d], 50.0),
                chance(9, &whole, 50.0)
            );
        }
    }

    use super::*;

    /// An MTA routed by `mailsim fleet`'s route lines must reach the sender's MX too, or it
    /// cannot return its DSNs (issue 14: Postfix bounced them, "unable to look up host").
    #[test]
    fn routes_name_every_recipient_domain_and_the_senders_mx() {
        let text = r#"
name = "routes"
[[sender]]
domain = "news.example.test"
[[domain]]
name = "a.test"
[[domain]]
name = "b.test"
mx = [{ host = "mx1.b.test", down = true }, { host = "mx2.b.test", preference = 20 }]
[campaign]
messages = 1
"#;
        let scenario = Scenario::parse(text, std::path::Path::new("routes.toml")).unwrap();
        let world = World::build(&scenario).unwrap();
        let routes = world.routes();
        let domains: Vec<&str> = routes.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(
            domains,
            ["news.example.test", "a.test", "b.test"],
            "{routes:?}"
        );
        let live_b = world
            .hosts
            .iter()
            .find(|h| h.name == "mx2.b.test")
            .unwrap()
            .ip;
        assert_eq!(routes[2].1, live_b, "the first MX that is up");
    }
}
