//! MX resolution against fake-dns over the wire: preference order, implicit MX, null MX,
//! NXDOMAIN and a domain whose MX hosts have no address.

use fake_dns::{DnsServer, RecordData, ZoneSet};
use mailsim_mta::dns::{HickoryResolver, Resolver, RouteError};
use std::net::{IpAddr, Ipv4Addr};

fn zones() -> ZoneSet {
    let mut z = ZoneSet::new();
    for d in ["multi.test", "implicit.test", "nullmx.test", "noaddr.test"] {
        z.add_zone(d);
    }
    z.add(
        "multi.test",
        RecordData::Mx {
            preference: 30,
            exchange: "mx3.multi.test".into(),
        },
    );
    z.add(
        "multi.test",
        RecordData::Mx {
            preference: 10,
            exchange: "mx1.multi.test".into(),
        },
    );
    z.add("mx1.multi.test", RecordData::A(Ipv4Addr::new(127, 1, 0, 1)));
    z.add("mx3.multi.test", RecordData::A(Ipv4Addr::new(127, 1, 0, 3)));
    z.add("implicit.test", RecordData::A(Ipv4Addr::new(127, 1, 0, 9)));
    z.add(
        "nullmx.test",
        RecordData::Mx {
            preference: 0,
            exchange: ".".into(),
        },
    );
    z.add(
        "noaddr.test",
        RecordData::Mx {
            preference: 10,
            exchange: "mx.noaddr.test".into(),
        },
    );
    z
}

#[tokio::test]
async fn routes_follow_dns() {
    let server = DnsServer::start(&zones(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let r = HickoryResolver::new(fake_dns::resolver_for(server.addr())).unwrap();

    let multi = r.route("multi.test").await.unwrap();
    let names: Vec<(&str, u16)> = multi
        .iter()
        .map(|h| (h.name.as_str(), h.preference))
        .collect();
    assert_eq!(names, vec![("mx1.multi.test", 10), ("mx3.multi.test", 30)]);
    assert_eq!(
        multi[0].addrs,
        vec![IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1))]
    );

    let implicit = r.route("implicit.test").await.unwrap();
    assert_eq!(implicit.len(), 1, "no MX: the domain itself is the MX");
    assert_eq!(implicit[0].name, "implicit.test");
    assert_eq!(
        implicit[0].addrs,
        vec![IpAddr::V4(Ipv4Addr::new(127, 1, 0, 9))]
    );

    assert!(
        matches!(r.route("nullmx.test").await, Err(RouteError::Perm(m)) if m.contains("null MX"))
    );
    assert!(
        matches!(r.route("missing.test").await, Err(RouteError::Perm(m)) if m.contains("NXDOMAIN"))
    );
    assert!(
        matches!(r.route("noaddr.test").await, Err(RouteError::Perm(_))),
        "the only MX host does not exist"
    );
    server.shutdown().await;
}

/// RFC 5321 section 5.1: an address literal is the route itself; the DNS (which holds no such
/// name) is not asked.
#[tokio::test]
async fn an_address_literal_routes_to_its_address() {
    let server = DnsServer::start(&ZoneSet::new(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let r = HickoryResolver::new(fake_dns::resolver_for(server.addr())).unwrap();
    for (domain, ip) in [
        ("[127.0.0.7]", IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7))),
        ("[IPv6:::1]", IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)),
    ] {
        let hosts = r.route(domain).await.unwrap();
        assert_eq!(hosts.len(), 1, "{domain}");
        assert_eq!(hosts[0].addrs, vec![ip], "{domain}");
    }
    assert!(r.route("[300.0.0.1]").await.is_err());
}
