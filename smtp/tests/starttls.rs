//! STARTTLS between mailsim's SMTP client and server, with certificates from a run's authority
//! and each of its faults: the client encrypts whatever the certificate, says what it thought
//! of it, and a server whose handshake is broken leaves the client with an error. OpenSSL's
//! `verify` is the outside judge of the certificates the authority issues.

use mailsim_smtp::Reply;
use mailsim_smtp::client::{Envelope, SmtpClient, SmtpTimeouts, StartTls};
use mailsim_smtp::server::{Backend, Server, ServerConfig, SessionInfo, Transaction};
use mailsim_smtp::tls::{Ca, CertFault, CertProblem, ClientTls, MaybeTls, Tls};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

const HOST: &str = "mx1.example.test";

/// Accepts everything and keeps the TLS parameters of each message's session.
#[derive(Default)]
struct Keep(Mutex<Vec<Option<String>>>);

impl Backend for Keep {
    fn on_connect(&self, _info: &SessionInfo) -> Option<Reply> {
        None
    }
    fn on_mail(&self, _info: &SessionInfo, _from: &str) -> Reply {
        Reply::new(250, (2, 1, 0), "ok")
    }
    async fn on_rcpt(&self, _info: &SessionInfo, _tx: &Transaction, _rcpt: &str) -> Reply {
        Reply::new(250, (2, 1, 5), "ok")
    }
    async fn on_data(&self, info: &SessionInfo, _tx: &Transaction, _message: Vec<u8>) -> Reply {
        let params = info.tls_params.as_ref().map(|p| p.to_string());
        self.0.lock().unwrap().push(params);
        Reply::new(250, (2, 0, 0), "queued")
    }
}

/// One session: the client greets, does STARTTLS with `trust`, sends a message; what STARTTLS
/// said, and what the server kept.
async fn session(tls: Tls, trust: &ClientTls) -> (Result<StartTls, String>, Vec<Option<String>>) {
    let keep = Arc::new(Keep::default());
    let server = Server::new(
        keep.clone(),
        ServerConfig {
            hostname: HOST.into(),
            tls: Some(tls),
            ..ServerConfig::default()
        },
    );
    let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = "127.0.0.2:40000".parse().unwrap();
    let local: SocketAddr = "127.0.0.3:25".parse().unwrap();
    let serving = tokio::spawn(async move { server.accept(server_end, peer, local).await });
    let mut client = SmtpClient::new(MaybeTls::Plain(client_end), SmtpTimeouts::default());
    let greeted = client.handshake("client.example.test").await.unwrap();
    assert_eq!(greeted[1].1.code, 250);
    assert!(client.caps.starttls, "STARTTLS offered");
    let started = client
        .starttls(trust, HOST, "client.example.test")
        .await
        .map_err(|e| e.to_string());
    if started.is_ok() {
        let outcome = client
            .transaction(&Envelope {
                from: "a@s.test",
                rcpt: "b@example.test",
                body: b"Subject: x\r\n\r\nhello\r\n",
            })
            .await
            .unwrap();
        assert_eq!(outcome.decisive.code, 250);
        client.quit().await;
    } else {
        drop(client);
    }
    let _ = serving.await;
    let kept = keep.0.lock().unwrap().clone();
    (started, kept)
}

fn verdict(started: &Result<StartTls, String>) -> Result<(), CertProblem> {
    match started {
        Ok(StartTls::Done {
            certificate,
            params,
            replies,
        }) => {
            assert_eq!(params.version, "TLSv1.3");
            assert_eq!(replies[0].1.code, 250, "EHLO inside TLS");
            certificate.clone()
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_client_encrypts_with_any_certificate_and_says_what_it_thought_of_it() {
    let ca = Ca::new("test authority").unwrap();
    let trust = ClientTls::new(&[ca.cert_der()]).unwrap();
    let host = [HOST.to_string()];
    let cases = [
        (CertFault::None, Ok(())),
        (CertFault::WrongName, Err(CertProblem::HostMismatch)),
        (CertFault::Expired, Err(CertProblem::Expired)),
        (CertFault::SelfSigned, Err(CertProblem::NotTrusted)),
    ];
    for (fault, expected) in cases {
        let (started, kept) = session(ca.issue(&host, fault).unwrap(), &trust).await;
        assert_eq!(verdict(&started), expected, "{fault:?}");
        // The message went inside TLS, and the server knew it.
        assert_eq!(kept.len(), 1);
        assert!(
            kept[0]
                .as_deref()
                .is_some_and(|p| p.starts_with("TLSv1.3 TLS13_")),
            "{kept:?}"
        );
    }
    // A client that trusts nothing still encrypts; the certificate is untrusted.
    let (started, _) = session(
        ca.issue(&host, CertFault::None).unwrap(),
        &ClientTls::untrusting(),
    )
    .await;
    assert_eq!(verdict(&started), Err(CertProblem::NotTrusted));
}

#[tokio::test]
async fn a_broken_handshake_is_an_error_and_nothing_is_sent() {
    let ca = Ca::new("test authority").unwrap();
    let mut tls = ca.issue(&[HOST.to_string()], CertFault::None).unwrap();
    tls.handshake_fails = true;
    let (started, kept) = session(tls, &ClientTls::new(&[ca.cert_der()]).unwrap()).await;
    let e = started.unwrap_err();
    assert!(e.starts_with("STARTTLS: handshake failed"), "{e}");
    assert!(kept.is_empty());
}

fn pem(der: &[u8], dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let der_path = dir.join(format!("{name}.der"));
    std::fs::write(&der_path, der).unwrap();
    let pem_path = dir.join(format!("{name}.pem"));
    let ok = Command::new("openssl")
        .args(["x509", "-inform", "DER", "-in"])
        .arg(&der_path)
        .arg("-out")
        .arg(&pem_path)
        .status()
        .expect("openssl");
    assert!(ok.success());
    pem_path
}

/// OpenSSL verifies what the authority issues, and fails each fault for its own reason.
#[test]
fn openssl_judges_the_certificates_as_the_client_does() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test authority").unwrap();
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
    let host = [HOST.to_string()];
    for (fault, says) in [
        (CertFault::None, "OK"),
        (CertFault::WrongName, "hostname mismatch"),
        (CertFault::Expired, "certificate has expired"),
        (CertFault::SelfSigned, "self-signed certificate"),
    ] {
        let cert = pem(
            &ca.issue(&host, fault).unwrap().cert_der,
            dir.path(),
            &format!("{fault:?}"),
        );
        let out = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca_pem)
            .args(["-verify_hostname", HOST])
            .arg(&cert)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains(says), "{fault:?}: {said}");
        assert_eq!(out.status.success(), fault == CertFault::None, "{said}");
    }
}
