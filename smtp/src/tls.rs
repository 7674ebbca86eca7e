//! TLS for STARTTLS (SMTP, IMAP, POP3): rustls with the ring provider.
//!
//! * Servers: [`Tls`], from PEM files, a self-signed certificate made at start-up, or one issued
//!   by a run's own certificate authority ([`Ca`]), with the faults a test bed needs (expired,
//!   wrong name, self-signed, a handshake that fails).
//! * Clients: [`ClientTls`] makes the configuration of one outbound STARTTLS: the handshake
//!   completes with any certificate (opportunistic TLS, RFC 7435) and the certificate's check
//!   against the trusted roots and the host name is kept for whoever needs it (MTA-STS, TLS-RPT);
//!   [`MaybeTls`] is a stream before and after STARTTLS.

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
    /// A fault: STARTTLS is offered and accepted, and the connection is then cut instead of
    /// the handshake (a server whose TLS is broken).
    pub handshake_fails: bool,
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
            handshake_fails: false,
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
            handshake_fails: false,
        })
    }
}

/// What is wrong with a certificate a server presents (a test bed's TLS faults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertFault {
    /// Issued by the run's authority for the host's name, valid now.
    #[default]
    None,
    /// Its validity ended (in 2021).
    Expired,
    /// Issued for another name than the host's.
    WrongName,
    /// Signed by its own key, not by the authority.
    SelfSigned,
}

/// A run's own certificate authority: every server certificate of the run is issued by it, and
/// clients that check certificates trust it (and nothing else).
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn rcgen_error(names: &[String]) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::SelfSigned {
        host: names.join(","),
        why: e.to_string(),
    }
}

impl Ca {
    /// A new authority named `name` (a fresh key).
    pub fn new(name: &str) -> Result<Ca, TlsError> {
        let names = [name.to_string()];
        let err = rcgen_error(&names);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(&err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().map_err(&err)?;
        let cert = params.self_signed(&key).map_err(&err)?;
        Ok(Ca { cert, key })
    }

    /// The authority's certificate (DER): what a client trusts.
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// The authority's certificate as PEM (for tools outside the run).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names`, with `fault`.
    pub fn issue(&self, names: &[String], fault: CertFault) -> Result<Tls, TlsError> {
        let err = rcgen_error(names);
        let subject: Vec<String> = match fault {
            CertFault::WrongName => names
                .iter()
                .map(|n| format!("not-{}", n.replace('*', "any")))
                .collect(),
            _ => names.to_vec(),
        };
        let mut params = rcgen::CertificateParams::new(subject.clone()).map_err(&err)?;
        if let Some(first) = subject.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, first.as_str());
        }
        if fault == CertFault::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().map_err(&err)?;
        let cert = match fault {
            CertFault::SelfSigned => params.self_signed(&key),
            _ => params.signed_by(&key, &self.cert, &self.key),
        }
        .map_err(&err)?;
        let cert_der = cert.der().to_vec();
        let mut chain = vec![CertificateDer::from(cert_der.clone())];
        if fault != CertFault::SelfSigned {
            chain.push(CertificateDer::from(self.cert_der()));
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(Tls {
            acceptor: acceptor(chain, key)?,
            cert_der,
            handshake_fails: false,
        })
    }
}

/// Why a server's certificate did not check out, in the words of TLS-RPT (RFC 8460 section
/// 4.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertProblem {
    HostMismatch,
    Expired,
    NotTrusted,
    /// Any other failure of validation (the error's text).
    Invalid(String),
}

impl CertProblem {
    fn of(e: &rustls::Error) -> CertProblem {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::NotValidForName | C::NotValidForNameContext { .. } => CertProblem::HostMismatch,
                C::Expired | C::ExpiredContext { .. } => CertProblem::Expired,
                C::UnknownIssuer => CertProblem::NotTrusted,
                other => CertProblem::Invalid(format!("{other:?}")),
            },
            other => CertProblem::Invalid(other.to_string()),
        }
    }

    /// The RFC 8460 result type.
    pub fn result_type(&self) -> &'static str {
        match self {
            CertProblem::HostMismatch => "certificate-host-mismatch",
            CertProblem::Expired => "certificate-expired",
            CertProblem::NotTrusted => "certificate-not-trusted",
            CertProblem::Invalid(_) => "validation-failure",
        }
    }
}

impl std::fmt::Display for CertProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertProblem::Invalid(why) => write!(f, "validation-failure ({why})"),
            other => f.write_str(other.result_type()),
        }
    }
}

/// A server verifier that checks like a browser (webpki: the roots, the name, the dates) and
/// keeps the verdict instead of failing the handshake on it; the handshake's own signatures are
/// always checked.
#[derive(Debug)]
struct Recording {
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    schemes: Vec<rustls::SignatureScheme>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    verdict: std::sync::Mutex<Option<Result<(), CertProblem>>>,
}

impl rustls::client::danger::ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verdict = match &self.webpki {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ())
                .map_err(|e| CertProblem::of(&e)),
            None => Err(CertProblem::NotTrusted),
        };
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone()
    }
}

/// The client side of STARTTLS: the roots a certificate is checked against (a run's authority;
/// none: every certificate is untrusted, and opportunistic TLS still encrypts).
#[derive(Clone)]
pub struct ClientTls {
    provider: Arc<rustls::crypto::CryptoProvider>,
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientTls(roots: {})", self.webpki.is_some())
    }
}

/// One outbound handshake's configuration and, after it, the certificate's verdict.
pub struct Handshake {
    pub connector: tokio_rustls::TlsConnector,
    recording: Arc<Recording>,
}

impl Handshake {
    /// The certificate's check (None: no certificate was seen, the handshake failed first).
    pub fn verdict(&self) -> Option<Result<(), CertProblem>> {
        self.recording
            .verdict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ClientTls {
    /// A client that trusts no certificate: every check says `certificate-not-trusted`, and
    /// opportunistic TLS still encrypts.
    pub fn untrusting() -> ClientTls {
        ClientTls {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            webpki: None,
        }
    }

    /// A client trusting the certificates `roots_der` (DER).
    pub fn new(roots_der: &[Vec<u8>]) -> Result<ClientTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = if roots_der.is_empty() {
            None
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for der in roots_der {
                roots
                    .add(CertificateDer::from(der.clone()))
                    .map_err(|e| TlsError::Config(format!("a trusted root: {e}")))?;
            }
            Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?,
            )
        };
        Ok(ClientTls { provider, webpki })
    }

    /// The configuration for one handshake.
    pub fn handshake(&self) -> Result<Handshake, TlsError> {
        let recording = Arc::new(Recording {
            webpki: self.webpki.clone(),
            schemes: self
                .provider
                .signature_verification_algorithms
                .supported_schemes(),
            provider: self.provider.clone(),
            verdict: std::sync::Mutex::new(None),
        });
        let config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(recording.clone())
            .with_no_client_auth();
        Ok(Handshake {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            recording,
        })
    }
}

/// The protocol and cipher suite of a TLS session, as Received headers and events name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsParams {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: String,
    /// `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

impl TlsParams {
    /// The parameters of an established connection.
    pub fn of(conn: &rustls::CommonState) -> TlsParams {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_string(),
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
            .unwrap_or_else(|| "unknown".into());
        TlsParams { version, cipher }
    }
}

impl std::fmt::Display for TlsParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.version, self.cipher)
    }
}

/// A client's stream before and after STARTTLS.
pub enum MaybeTls<S> {
    Plain(S),
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
    /// Between the two (a failed handshake leaves it so: nothing more can be sent).
    Gone,
}

fn gone() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the connection was lost in the TLS handshake",
    )
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            MaybeTls::Gone => std::task::Poll::Ready(Err(gone())),
        }
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for MaybeTls<S>
{
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            MaybeTls::Gone => std::task::Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
            MaybeTls::Gone => std::task::Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            MaybeTls::Gone => std::task::Poll::Ready(Ok(())),
        }
    }
}
