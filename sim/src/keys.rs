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

/// An RSA key from a PKCS#8 PEM file's text.
pub fn rsa_from_pem(pem: &str) -> Result<DkimKeyPair, String> {
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
    rsa_pair(&key)
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
            .sign(b"From: a@s.test\r\nSubject: x\r\n\r\nhi\r\n")
            .unwrap();
        assert!(signed.starts_with(b"DKIM-Signature:"));
    }
}
