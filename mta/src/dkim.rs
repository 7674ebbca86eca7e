//! DKIM signing with mail-auth: RSA-SHA256 (default, 2048-bit keys) or Ed25519-SHA256.

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

/// Headers covered by the signature.
pub const SIGNED_HEADERS: [&str; 7] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
];

/// A DKIM signer for one domain and selector.
pub struct Signer {
    domain: String,
    selector: String,
    inner: DkimSigner<DkimKey, Done>,
}

#[derive(Debug, thiserror::Error)]
#[error("DKIM {domain}/{selector}: {message}")]
pub struct DkimError {
    pub domain: String,
    pub selector: String,
    pub message: String,
}

impl Signer {
    /// `pkcs8_der` is the private key in PKCS#8 DER, RSA or Ed25519 as `ed25519` says.
    pub fn from_pkcs8(
        domain: &str,
        selector: &str,
        pkcs8_der: &[u8],
        ed25519: bool,
    ) -> Result<Self, DkimError> {
        let err = |e: mail_auth::Error| DkimError {
            domain: domain.into(),
            selector: selector.into(),
            message: e.to_string(),
        };
        #[allow(deprecated)]
        let key = if ed25519 {
            DkimKey::Ed25519(Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8_der).map_err(err)?)
        } else {
            DkimKey::Rsa(RsaKey::<Sha256>::from_pkcs8_der(pkcs8_der).map_err(err)?)
        };
        let inner = DkimSigner::from_key(key)
            .domain(domain)
            .selector(selector)
            .headers(SIGNED_HEADERS)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(Signer {
            domain: domain.into(),
            selector: selector.into(),
            inner,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The DKIM-Signature header (with CRLF) for `message`.
    pub fn signature_header(&self, message: &[u8]) -> Result<String, DkimError> {
        let sig = self.inner.sign(message).map_err(|e| DkimError {
            domain: self.domain.clone(),
            selector: self.selector.clone(),
            message: e.to_string(),
        })?;
        Ok(sig.to_header())
    }

    /// `message` with its DKIM-Signature prepended.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        let header = self.signature_header(message)?;
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }
}
