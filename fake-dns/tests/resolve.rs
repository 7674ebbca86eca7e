//! fake-dns answers a real resolver (hickory-resolver) over UDP and TCP.

use fake_dns::{DnsServer, RecordData, ZoneSet};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use std::net::{Ipv4Addr, SocketAddr};

fn zones() -> ZoneSet {
    let mut z = ZoneSet::new();
    z.add_zone("example.test");
    z.add(
        "example.test",
        RecordData::Mx {
            preference: 20,
            exchange: "mx2.example.test".into(),
        },
    );
    z.add(
        "example.test",
        RecordData::Mx {
            preference: 10,
            exchange: "mx1.example.test".into(),
        },
    );
    z.add(
        "mx1.example.test",
        RecordData::A(Ipv4Addr::new(127, 1, 0, 1)),
    );
    z.add(
        "example.test",
        RecordData::Txt("v=spf1 ip4:127.0.0.1 -all".into()),
    );
    z.add(
        "s1._domainkey.example.test",
        RecordData::Txt(format!("v=DKIM1; k=rsa; p={}", "A".repeat(400))),
    );
    z.add(
        "5.2.0.192.in-addr.arpa",
        RecordData::Ptr("mta.example.test".into()),
    );
    z
}

fn resolver(addr: SocketAddr, tcp_only: bool) -> TokioResolver {
    let mut conns = Vec::new();
    if !tcp_only {
        let mut udp = ConnectionConfig::udp();
        udp.port = addr.port();
        conns.push(udp);
    }
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    conns.push(tcp);
    let config = ResolverConfig::from_parts(
        None,
        vec![],
        vec![NameServerConfig::new(addr.ip(), true, conns)],
    );
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options({
            let mut o = ResolverOpts::default();
            o.use_hosts_file = ResolveHosts::Never;
            o
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn answers_mx_a_txt_ptr_over_udp_and_tcp() {
    let server = DnsServer::start(&zones(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    for tcp_only in [false, true] {
        let r = resolver(server.addr(), tcp_only);
        let mx = r.lookup("example.test.", RecordType::MX).await.unwrap();
        let mut prefs: Vec<(u16, String)> = mx
            .answers()
            .iter()
            .filter_map(|rec| match &rec.data {
                RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
                _ => None,
            })
            .collect();
        prefs.sort();
        assert_eq!(
            prefs,
            vec![
                (10, "mx1.example.test.".into()),
                (20, "mx2.example.test.".into())
            ]
        );

        let a = r.lookup("mx1.example.test.", RecordType::A).await.unwrap();
        assert!(
            matches!(&a.answers()[0].data, RData::A(ip) if ip.0 == Ipv4Addr::new(127, 1, 0, 1))
        );

        let txt = r
            .lookup("s1._domainkey.example.test.", RecordType::TXT)
            .await
            .unwrap();
        let RData::TXT(t) = &txt.answers()[0].data else {
            panic!("not TXT")
        };
        let joined: Vec<u8> = t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(
            joined.len(),
            "v=DKIM1; k=rsa; p=".len() + 400,
            "long TXT reassembles"
        );

        let ptr = r
            .lookup("5.2.0.192.in-addr.arpa.", RecordType::PTR)
            .await
            .unwrap();
        assert!(
            matches!(&ptr.answers()[0].data, RData::PTR(p) if p.0.to_ascii() == "mta.example.test.")
        );

        let nx = r
            .lookup("nope.example.test.", RecordType::A)
            .await
            .unwrap_err();
        assert!(nx.is_nx_domain(), "{nx}");
        // The parent zone `test.` is served too, so a DMARC tree walk gets NXDOMAIN, not REFUSED.
        let parent = r.lookup("_dmarc.test.", RecordType::TXT).await.unwrap_err();
        assert!(parent.is_nx_domain(), "{parent}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn faults_on_the_timeline_are_served_over_the_wire() {
    use fake_dns::{Fault, FaultKind, FaultyZones};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let faults = vec![
        Fault {
            name: "example.test".into(),
            kind: FaultKind::ServFail,
            from_ms: 1000,
            until_ms: Some(2000),
        },
        Fault {
            name: "example.test".into(),
            kind: FaultKind::NxDomain,
            from_ms: 2000,
            until_ms: Some(3000),
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
            from_ms: 3000,
            until_ms: Some(4000),
        },
        Fault {
            name: "example.test".into(),
            kind: FaultKind::Timeout,
            from_ms: 4000,
            until_ms: None,
        },
    ];
    let now = Arc::new(AtomicU64::new(0));
    let clock = now.clone();
    let server = DnsServer::start_with_faults(
        Arc::new(FaultyZones::new(zones(), faults)),
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(move || clock.load(Ordering::SeqCst)),
    )
    .await
    .unwrap();
    // A new resolver each time: hickory caches answers (and negative answers).
    let fresh = || resolver(server.addr(), false);
    let mx = |r: TokioResolver| async move { r.lookup("example.test.", RecordType::MX).await };

    // Before any fault: the zone's answer.
    assert_eq!(mx(fresh()).await.unwrap().answers().len(), 2);
    now.store(1500, Ordering::SeqCst);
    let e = mx(fresh()).await.unwrap_err();
    assert!(
        !e.is_nx_domain() && !e.is_no_records_found(),
        "SERVFAIL, got {e}"
    );
    now.store(2500, Ordering::SeqCst);
    assert!(mx(fresh()).await.unwrap_err().is_nx_domain());
    now.store(3500, Ordering::SeqCst);
    let null = mx(fresh()).await.unwrap();
    assert!(matches!(&null.answers()[0].data,
        RData::MX(m) if m.preference == 0 && m.exchange.is_root()));
    // The A record of the MX host is not covered by a record change.
    assert!(
        fresh()
            .lookup("mx1.example.test.", RecordType::A)
            .await
            .is_ok()
    );
    now.store(4500, Ordering::SeqCst);
    let mut opts = ResolverOpts::default();
    opts.timeout = std::time::Duration::from_millis(300);
    opts.attempts = 1;
    opts.use_hosts_file = ResolveHosts::Never;
    let mut udp = ConnectionConfig::udp();
    udp.port = server.addr().port();
    let quick = TokioResolver::builder_with_config(
        ResolverConfig::from_parts(
            None,
            vec![],
            vec![NameServerConfig::new(server.addr().ip(), true, vec![udp])],
        ),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .unwrap();
    let started = std::time::Instant::now();
    assert!(mx(quick).await.is_err(), "no answer while timing out");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    server.shutdown().await;
}
