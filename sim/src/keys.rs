//! DKIM keys: read from PEM, or generated deterministically from the scenario seed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};

/// A DKIM key pair: the private key for the MTA (PKCS#8 DER) and the DNS record text.
#[derive(Clone)]
pub struct DkimKeyPair {
    pub pkcs8_der: Vec<u8>,
    pub ed25519: bool,
    /// `v=DKIM1; k=...; p=...`
    pub dns_txt: String,
}

/// RSA-2048 from a seed (the same seed gives the same key).
pub fn rsa_from_seed(seed: u64) -> Result<DkimKeyPair, String> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let key = rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| e.to_string())?;
    rsa_pair(&key)
}

fn rsa_pair(key: &rsa::RsaPrivateKey) -> Result<DkimKeyPair, String> {
    let der = key
        .to_pkcs8_der()
        .map_err(|e| e.to_string())?
        .as_bytes()
        .to_vec();
    let public = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| e.to_string())?;
    Ok(DkimKeyPair {
        pkcs8_der: der,
        ed25519: false,
        dns_txt: format!("v=DKIM1; k=rsa; p={}", B64.encode(public.as_bytes())),
    })
}

/// Ed25519 (RFC 8463) from a seed.
pub fn ed25519_from_seed(seed: u64) -> Result<DkimKeyPair, String> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rng, &mut secret);
    let pair =
        ring::signature::Ed25519KeyPair::from_seed_unchecked(&secret).map_err(|e| e.to_string())?;
    let public = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec();
    // PKCS#8 v1 wrapping of the 32-byte seed (RFC 8410).
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&secret);
    Ok(DkimKeyPair {
        pkcs8_der: der,
        ed25519: true,
        dns_txt: format!("v=DKIM1; k=ed25519; p={}", B64.encode(public)),
    })
}

/// Object identifiers of the private key algorithms a DKIM key file may hold.
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";

/// An RSA key from a PEM file's text: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA
/// PRIVATE KEY`). Anything else is refused with what it is.
pub fn rsa_from_pem(pem: &str) -> Result<DkimKeyPair, String> {
    let label = pem.lines().find_map(|l| {
        l.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
    });
    let key = match label {
        None => {
            return Err(
                "not a PEM private key: no \"-----BEGIN PRIVATE KEY-----\" line (an RSA key in \
                 PKCS#8 or PKCS#1 PEM is expected)"
                    .into(),
            );
        }
        Some("RSA PRIVATE KEY") => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            rsa::RsaPrivateKey::from_pkcs1_pem(pem)
                .map_err(|e| format!("a PKCS#1 RSA key that cannot be read: {e}"))?
        }
        Some("PRIVATE KEY") => {
            let (_, doc) = rsa::pkcs8::SecretDocument::from_pem(pem)
                .map_err(|e| format!("a PKCS#8 PEM block that cannot be decoded: {e}"))?;
            let info = rsa::pkcs8::PrivateKeyInfo::try_from(doc.as_bytes())
                .map_err(|e| format!("not a PKCS#8 private key: {e}"))?;
            let oid = info.algorithm.oid.to_string();
            match oid.as_str() {
                OID_RSA => rsa::RsaPrivateKey::from_pkcs8_der(doc.as_bytes())
                    .map_err(|e| format!("an RSA key that cannot be read: {e}"))?,
                OID_EC => {
                    return Err(format!(
                        "an elliptic-curve (ECDSA) key (OID {oid}): DKIM signs with RSA, or \
                         Ed25519 (RFC 8463), not ECDSA"
                    ));
                }
                OID_ED25519 => {
                    return Err(format!(
                        "an Ed25519 key (OID {oid}): only RSA keys are read from a file; leave \
                         dkim_private_key out and set dkim_algorithm = \"ed25519\" for a \
                         generated one"
                    ));
                }
                _ => return Err(format!("a private key of algorithm OID {oid}, not RSA")),
            }
        }
        Some("EC PRIVATE KEY") => {
            return Err(
                "an elliptic-curve (SEC1) key: DKIM signs with RSA, or Ed25519 (RFC 8463), not \
                 ECDSA"
                    .into(),
            );
        }
        Some("ENCRYPTED PRIVATE KEY") => {
            return Err("an encrypted private key: give the key without a passphrase".into());
        }
        Some(other) => {
            return Err(format!(
                "a PEM \"{other}\" block, not a private key (\"PRIVATE KEY\" or \"RSA PRIVATE \
                 KEY\" is expected)"
            ));
        }
    };
    rsa_pair(&key)
}

impl std::fmt::Debug for DkimKeyPair {
    /// The public half only: a private key never reaches a log or a panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKeyPair")
            .field("dns_txt", &self.dns_txt)
            .finish_non_exhaustive()
    }
}

/// PEM text of a PKCS#8 DER private key (for tools such as dkimpy).
pub fn pkcs8_pem(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_keys_are_deterministic_and_sign() {
        let a = ed25519_from_seed(7).unwrap();
        let b = ed25519_from_seed(7).unwrap();
        assert_eq!(a.dns_txt, b.dns_txt);
        assert_ne!(a.dns_txt, ed25519_from_seed(8).unwrap().dns_txt);
        let signer =
            mailsim_mta::dkim::Signer::from_pkcs8("s.test", "s1", &a.pkcs8_der, true).unwrap();
        let signed = signer
            .sign(b"From: a@s.test\r\nSubject: x\r\n\r\nhi\r\n", 1_767_225_600)
            .unwrap();
        assert!(signed.starts_with(b"DKIM-Signature:"));
    }

    /// Issue 13, item 8: a key file that is not an RSA key says what it is.
    #[test]
    fn key_files_that_are_not_rsa_keys_say_what_they_are() {
        let rng = ring::rand::SystemRandom::new();
        let ec = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .unwrap();
        let e = rsa_from_pem(&pkcs8_pem(ec.as_ref())).unwrap_err();
        assert!(
            e.contains("elliptic-curve") && e.contains("1.2.840.10045.2.1"),
            "{e}"
        );
        let ed = ed25519_from_seed(1).unwrap();
        let e = rsa_from_pem(&pkcs8_pem(&ed.pkcs8_der)).unwrap_err();
        assert!(e.contains("Ed25519"), "{e}");
        let e = rsa_from_pem("just some text\nin a file\n").unwrap_err();
        assert!(e.starts_with("not a PEM private key"), "{e}");
        assert!(!e.contains("NUL"), "{e}");
        let e = rsa_from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(e.contains("\"CERTIFICATE\" block"), "{e}");
        // PKCS#1 and PKCS#8 RSA keys are both read, to the same key.
        let pair = rsa_from_seed(3).unwrap();
        let key = rsa::RsaPrivateKey::from_pkcs8_der(&pair.pkcs8_der).unwrap();
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let pkcs1 = key.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
        assert_eq!(rsa_from_pem(&pkcs1).unwrap().dns_txt, pair.dns_txt);
        assert_eq!(
            rsa_from_pem(&pkcs8_pem(&pair.pkcs8_der)).unwrap().dns_txt,
            pair.dns_txt
        );
    }
}
