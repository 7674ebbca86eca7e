//! DKIM signing with mail-auth: RSA-SHA256 (default, 2048-bit keys) or Ed25519-SHA256.

use mail_auth::AuthenticatedMessage;
use mail_auth::common::crypto::{
    DkimKey, Ed25519Key, HashContext, HashImpl, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::{HeaderStream, HeaderWriter, Writable, Writer};
use mail_auth::dkim::Canonicalization;
use mail_auth::dkim::Signature;
use mail_auth::dkim::canonicalize::CanonicalHeaders;

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
///
/// The signing time (`t=`) is given by the caller, read from the run's clock: mail-auth 0.13's
/// `DkimSigner::sign` reads the wall clock, which in a virtual run disagrees with the message's
/// `Date`. So the signature is put together from mail-auth's public parts (the template
/// `Signature`, its canonicalization, the key's hash and sign) with the time the caller says.
pub struct Signer {
    key: DkimKey,
    template: Signature,
}

#[derive(Debug, thiserror::Error)]
#[error("DKIM {domain}/{selector}: {message}")]
pub struct DkimError {
    pub domain: String,
    pub selector: String,
    pub message: String,
}

/// What the key signs: the canonical signed headers, then the DKIM-Signature header itself
/// with an empty `b=` (RFC 6376 section 3.7).
struct Signable<'a> {
    headers: CanonicalHeaders<'a>,
    signature: &'a Signature,
}

impl Writable for Signable<'_> {
    fn write(self, writer: &mut impl Writer) {
        self.headers.write(writer);
        self.signature.write(writer, false);
    }
}

/// A [`Writer`] that passes what it is given to two.
struct Tee<'a, A: Writer, B: Writer> {
    first: &'a mut A,
    second: &'a mut B,
}

impl<A: Writer, B: Writer> Writer for Tee<'_, A, B> {
    fn write(&mut self, buf: &[u8]) {
        self.first.write(buf);
        self.second.write(buf);
    }
}

/// What is signed, also hashed with SHA-256 into `digest` as the key reads it.
struct Hashed<'a, 'd> {
    signable: Signable<'a>,
    digest: &'d mut <Sha256 as HashImpl>::Context,
}

impl Writable for Hashed<'_, '_> {
    fn write(self, writer: &mut impl Writer) {
        self.signable.write(&mut Tee {
            first: writer,
            second: self.digest,
        });
    }
}

/// An Ed25519-SHA256 signature as made (RFC 8463 section 3: the key signs the SHA-256 hash
/// of the canonical signed header fields and the DKIM-Signature field without its `b=`
/// value), for a [`SignatureWitness`].
/// Only [`Signer`] makes one (the fields are private), so a witness is told only of signatures
/// the key really made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    header_hash: [u8; 32],
    signature: Vec<u8>,
}

impl Made {
    /// The SHA-256 hash the key signed.
    pub fn header_hash(&self) -> &[u8; 32] {
        &self.header_hash
    }

    /// The signature (the `b=` value decoded).
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }
}

/// Told of the Ed25519 signatures the MTA makes, a batch at a time. A virtual run's fleet
/// remembers them there for its receivers (see `mailsim_mailbox::auth_memo`).
pub trait SignatureWitness: Send + Sync {
    /// Signatures made for `domain` with `selector` by the private key whose public half is
    /// `public`, for the second `at_s` (the signer's clock: a witness may be told on any
    /// thread, where no run's clock can be read).
    fn signed(&self, domain: &str, selector: &str, public: &[u8; 32], made: &[Made], at_s: u64);
}

/// The message's header fields (as mail-auth's parser splits them, value with its line end)
/// and body, for the signature's canonicalization.
struct Fields<'x> {
    headers: std::vec::IntoIter<(&'x [u8], &'x [u8])>,
    body: &'x [u8],
}

impl<'x> HeaderStream<'x> for Fields<'x> {
    fn next_header(&mut self) -> Option<(&'x [u8], &'x [u8])> {
        self.headers.next()
    }

    fn body(&mut self) -> &'x [u8] {
        self.body
    }
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
        let template = Signature {
            v: 1,
            a: key.algorithm(),
            d: domain.into(),
            s: selector.into(),
            h: SIGNED_HEADERS.iter().map(|h| h.to_string()).collect(),
            ch: Canonicalization::Relaxed,
            cb: Canonicalization::Relaxed,
            ..Default::default()
        };
        Ok(Signer { key, template })
    }

    pub fn domain(&self) -> &str {
        &self.template.d
    }

    pub fn selector(&self) -> &str {
        &self.template.s
    }

    /// The public half of an Ed25519 key (as its key pair holds it); None for RSA.
    pub fn ed25519_public(&self) -> Option<[u8; 32]> {
        match &self.key {
            DkimKey::Ed25519(k) => k.public_key().try_into().ok(),
            _ => None,
        }
    }

    fn error(&self, e: mail_auth::Error) -> DkimError {
        DkimError {
            domain: self.template.d.clone(),
            selector: self.template.s.clone(),
            message: e.to_string(),
        }
    }

    /// The DKIM-Signature header (with CRLF) for `message`, signed at `now_s` (seconds since
    /// the Unix epoch, the run's clock).
    pub fn signature_header(&self, message: &[u8], now_s: u64) -> Result<String, DkimError> {
        Ok(self.make(message, now_s, false)?.0)
    }

    /// The DKIM-Signature header, and with `witnessed` (for an Ed25519 key) the signature as
    /// made.
    fn make(
        &self,
        message: &[u8],
        now_s: u64,
        witnessed: bool,
    ) -> Result<(String, Option<Made>), DkimError> {
        let parsed = AuthenticatedMessage::parse(message)
            .ok_or_else(|| self.error(mail_auth::Error::NoHeadersFound))?;
        let fields = Fields {
            body: message
                .get(parsed.body_offset as usize..)
                .unwrap_or_default(),
            headers: parsed.headers.into_iter(),
        };
        let (_, headers, signed, body) = self.template.canonicalize(fields);
        if signed.is_empty() {
            return Err(self.error(mail_auth::Error::NoHeadersFound));
        }
        let mut sig = self.template.clone();
        sig.bh = self.key.hash(body).as_ref().to_vec();
        sig.t = now_s;
        sig.h = signed;
        let signable = Signable {
            headers,
            signature: &sig,
        };
        let (b, made) = match &self.key {
            DkimKey::Ed25519(_) if witnessed => {
                let mut digest = Sha256::hasher();
                let b = self.key.sign(Hashed {
                    signable,
                    digest: &mut digest,
                });
                let mut header_hash = [0u8; 32];
                header_hash.copy_from_slice(&digest.complete().as_ref()[..32]);
                (b, Some(header_hash))
            }
            _ => (self.key.sign(signable), None),
        };
        sig.b = b.map_err(|e| self.error(e))?;
        let made = made.map(|header_hash| Made {
            header_hash,
            signature: sig.b.clone(),
        });
        Ok((sig.to_header(), made))
    }

    /// `message` with its DKIM-Signature prepended, signed at `now_s`.
    pub fn sign(&self, message: &[u8], now_s: u64) -> Result<Vec<u8>, DkimError> {
        Ok(self.sign_witnessed(message, now_s, false)?.0)
    }

    /// [`Signer::sign`], and with `witnessed` (for an Ed25519 key) the signature as made.
    pub fn sign_witnessed(
        &self,
        message: &[u8],
        now_s: u64,
        witnessed: bool,
    ) -> Result<(Vec<u8>, Option<Made>), DkimError> {
        let (header, made) = self.make(message, now_s, witnessed)?;
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(message);
        Ok((out, made))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::dkim::DkimSigner;

    const MESSAGE: &[u8] = b"From: a@news.example.test\r\nTo: b@x.test\r\nSubject: hi\r\n\
        Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <1@news.example.test>\r\n\r\n\
        Body line\r\n.. with a dot\r\n";

    /// Ed25519 signatures are deterministic, so the signature put together here must equal
    /// mail-auth's own `DkimSigner` byte for byte when both sign in the same second.
    #[test]
    fn signs_as_mail_auth_does_at_the_time_given() {
        let der = Ed25519Key::generate_pkcs8().unwrap();
        let ours = Signer::from_pkcs8("news.example.test", "s1", &der, true).unwrap();
        #[allow(deprecated)]
        let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(&der).unwrap();
        let theirs = DkimSigner::from_key(key)
            .domain("news.example.test")
            .selector("s1")
            .headers(SIGNED_HEADERS)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        let same_second = (0..5).any(|_| {
            let before = now();
            let expected = theirs.sign(MESSAGE).unwrap().to_header();
            before == now() && ours.signature_header(MESSAGE, before).unwrap() == expected
        });
        assert!(same_second);
        // The time given is the t= written, whatever the wall clock says.
        let virtual_time = ours.signature_header(MESSAGE, 1_767_225_600).unwrap();
        assert!(virtual_time.contains(" t=1767225600;"), "{virtual_time}");
        assert!(matches!(
            ours.sign(b"no header here", 1),
            Err(DkimError { .. })
        ));
    }
}
