//! TLS for STARTTLS (SMTP, IMAP, POP3): rustls with the ring provider, from PEM files or a
//! self-signed certificate made at start-up (rcgen).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("making a self-signed certificate for {host}: {why}")]
    SelfSigned { host: String, why: String },
    #[error("reading {path}: {why}")]
    Pem { path: String, why: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A server TLS acceptor, shareable by every listener.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    /// The certificate (DER), for clients in tests that pin it.
    pub cert_der: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

fn acceptor(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Tls {
    /// A certificate for `hosts`, signed by its own key.
    pub fn self_signed(hosts: &[String]) -> Result<Tls, TlsError> {
        let ck = rcgen::generate_simple_self_signed(hosts.to_vec()).map_err(|e| {
            TlsError::SelfSigned {
                host: hosts.join(","),
                why: e.to_string(),
            }
        })?;
        let cert_der = ck.cert.der().to_vec();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        Ok(Tls {
            acceptor: acceptor(vec![CertificateDer::from(cert_der.clone())], key)?,
            cert_der,
        })
    }

    /// A certificate chain and key from PEM files.
    pub fn from_pem(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let pem = |p: &Path, e: String| TlsError::Pem {
            path: p.display().to_string(),
            why: e,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem(cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem(cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(pem(cert, "no CERTIFICATE block".into()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
        let cert_der = certs[0].to_vec();
        Ok(Tls {
            acceptor: acceptor(certs, key_der)?,
            cert_der,
        })
    }
}
