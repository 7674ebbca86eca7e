//! Starting Debian's nats-server for a test: two at once get ports of their own, and one that
//! cannot start says why, in the server's own words.

use mailsim_cluster::nats_server::NatsServer;

#[test]
fn servers_started_at_once_listen_on_ports_of_their_own_and_a_taken_port_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| NatsServer::start(&dir.path().join("a"), 0));
        let b = s.spawn(|| NatsServer::start(&dir.path().join("b"), 0));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert_ne!(a.addr, b.addr);
    for server in [&a, &b] {
        assert!(
            std::net::TcpStream::connect(server.addr).is_ok(),
            "{}",
            server.addr
        );
    }
    // A third on a's port cannot listen: its error names the port and quotes its log.
    let e = NatsServer::start(&dir.path().join("c"), a.addr.port())
        .err()
        .expect("a taken port")
        .to_string();
    assert!(e.contains(&a.addr.port().to_string()), "{e}");
    assert!(e.contains("exited at start"), "{e}");
    assert!(
        e.contains("nats-server.log") && e.contains("address already in use"),
        "{e}"
    );
}
