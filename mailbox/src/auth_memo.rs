//! Signatures verified ahead of time, so a receiver does not verify them again.
//!
//! A signature check is a pure function of the public key, the signed data and the signature.
//! A virtual run verifies every message once per copy on its one runtime thread; here another
//! thread can verify a message as it leaves the sender (the real verification, with mail-auth,
//! against the key the zones publish) and remember which (key record, signed-header hash,
//! signature) triples held. A receiver's verifier consults the memo in the key's place: a
//! triple it holds is a pass, anything else is verified as before. Either way the answer is the
//! same, so what the memo holds changes how fast a run is, never what it records.
//!
//! A virtual run's own Ed25519 signatures are remembered as they are made
//! ([`SignatureMemo::vouch_ed25519`]: a signature made with the published key's private half
//! verifies under it, which the first of each batch checks), so that neither the thread ahead
//! nor a receiver verifies them one at a time.

use mail_auth::common::crypto::{Algorithm, HashContext, HashImpl, Sha256, VerifyingKey};
use mail_auth::common::headers::Writer;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::Canonicalization;
use mail_auth::{AuthenticatedMessage, MessageAuthenticator, ResolverCache, Txt};
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where a memo keeps the verified triples: a table of 2^21 names of 16 bytes (32 MB, its
/// pages taken as they are first written: names land anywhere, so some ten thousand of them
/// touch most pages), in sets of four by a name's low bits. A name goes to
/// a free place of its set, else in place of the set's oldest. A million-message campaign
/// (scale-million's) fills about half of it, so its names stay until sent again after a
/// temporary failure: the few sets it fills lose their oldest first.
const SLOTS: usize = 1 << 21;
const WAYS: usize = 4;
const SETS: usize = SLOTS / WAYS;

/// The (key record, signed-header hash, signature) triples verified so far.
#[derive(Default)]
pub struct SignatureMemo {
    held: Mutex<Held>,
    /// Verifications a receiver asked for, and how many of them were held.
    asked: AtomicU64,
    taken: AtomicU64,
}

/// Triples by the first 128 bits of their SHA-256 name ([`memo_key`]): a triple never
/// verified is taken for one held with a chance of about 2^-107 per lookup (2^21 names of
/// 128 bits). 0 is a free place (a name of 0 is kept as 1).
#[derive(Default)]
struct Held {
    /// [`SLOTS`] names once the first is kept (empty until then).
    slots: Vec<u128>,
    /// Per set, the place the next name goes to when the set is full (its oldest).
    next: Vec<u8>,
}

impl Held {
    /// The places of `name`'s set.
    fn set(name: u128) -> std::ops::Range<usize> {
        let first = (name as usize % SETS) * WAYS;
        first..first + WAYS
    }

    fn contains(&self, name: u128) -> bool {
        debug_assert_ne!(name, 0, "0 is a free place, not a name");
        !self.slots.is_empty() && self.slots[Self::set(name)].contains(&name)
    }

    fn insert(&mut self, name: u128) {
        debug_assert_ne!(name, 0, "0 is a free place, not a name");
        if self.slots.is_empty() {
            self.slots = vec![0; SLOTS];
            self.next = vec![0; SETS];
        }
        let places = Self::set(name);
        let set = &mut self.slots[places.clone()];
        if set.contains(&name) {
            return;
        }
        if let Some(free) = set.iter_mut().find(|n| **n == 0) {
            *free = name;
            return;
        }
        let oldest = &mut self.next[places.start / WAYS];
        set[usize::from(*oldest)] = name;
        *oldest = (*oldest + 1) % WAYS as u8;
    }
}

/// A triple's name as the memo holds it.
fn short(key: &[u8; 32]) -> u128 {
    let mut first = [0u8; 16];
    first.copy_from_slice(&key[..16]);
    u128::from_be_bytes(first).max(1)
}

impl SignatureMemo {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&self, key: [u8; 32]) {
        self.insert_all([key]);
    }

    /// Remember `keys` (under one lock).
    fn insert_all(&self, keys: impl IntoIterator<Item = [u8; 32]>) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            held.insert(short(&key));
        }
    }

    /// Whether the triple was verified. It stays remembered (a signature that holds always
    /// holds): a message sent again after a temporary failure is taken from the memo again.
    fn take(&self, key: &[u8; 32]) -> bool {
        let taken = self.holds(key);
        self.asked.fetch_add(1, Ordering::Relaxed);
        if taken {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Whether the triple was verified (not counted as a receiver's question).
    fn holds(&self, key: &[u8; 32]) -> bool {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.contains(short(key))
    }

    /// How many verifications receivers asked the memo for, and how many it held.
    pub fn asked_and_taken(&self) -> (u64, u64) {
        (
            self.asked.load(Ordering::Relaxed),
            self.taken.load(Ordering::Relaxed),
        )
    }
}

/// What a [`Remembering`] key does with the memo.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Verify with the key and remember a pass.
    Fill,
    /// Take a remembered pass, else verify with the key.
    Consult,
}

/// A DKIM public key whose verifications go through a [`SignatureMemo`].
struct Remembering {
    inner: Box<dyn VerifyingKey + Send + Sync>,
    /// The key's TXT record as published: it names the key in the memo.
    record: String,
    memo: Arc<SignatureMemo>,
    role: Role,
}

/// SHA-256 as mail-auth's canonicalization writes into it.
struct Digest(<Sha256 as HashImpl>::Context);

impl Writer for Digest {
    fn write(&mut self, buf: &[u8]) {
        self.0.write(buf);
    }
}

/// A triple's name in the memo: SHA-256 over the key record, the algorithm, the hash of the
/// canonical signed headers and the signature, each with its length.
fn memo_key(record: &str, canonical: &[u8], signature: &[u8], algorithm: Algorithm) -> [u8; 32] {
    let mut d = Digest(Sha256::hasher());
    for part in [
        record.as_bytes(),
        &[0, algorithm as u8],
        canonical,
        &[0],
        signature,
    ] {
        d.write(&(part.len() as u64).to_be_bytes());
        d.write(part);
    }
    let out = d.0.complete();
    let mut key = [0u8; 32];
    key.copy_from_slice(&out.as_ref()[..32]);
    key
}

impl Remembering {
    fn key(&self, canonical: &[u8], signature: &[u8], algorithm: Algorithm) -> [u8; 32] {
        memo_key(&self.record, canonical, signature, algorithm)
    }
}

/// The Ed25519 public key of a DKIM key record in the one plain form a run publishes (RFC
/// 6376 section 3.6.1, RFC 8463): the tags `v=DKIM1` (optional), `k=ed25519` and `p=` (32
/// bytes in base64), each once, in lower case, separated by `;` and ASCII spaces. None for
/// anything else, where a reader could differ from mail-auth's (which reads tag names in any
/// case and takes a repeated tag's last value): a receiver then verifies as usual.
fn ed25519_public(record: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let (mut k, mut p, mut v) = (None, None, None);
    for tag in record.split(';') {
        let tag = tag.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'));
        if tag.is_empty() {
            continue;
        }
        let (name, value) = tag.split_once('=')?;
        let slot = match name {
            "k" => &mut k,
            "p" => &mut p,
            "v" => &mut v,
            _ => return None,
        };
        if slot.replace(value).is_some() {
            return None;
        }
    }
    if k != Some("ed25519") || v.is_some_and(|v| v != "DKIM1") {
        return None;
    }
    let p = p?;
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(p)
        .ok()?
        .try_into()
        .ok()
}

impl SignatureMemo {
    /// Ed25519-SHA256 signatures (RFC 8463) this process has just made with the private key
    /// whose public half is `public`, remembered as a receiver would verify them against the
    /// key the zones publish. `answered` is what the zones answer for the key's name: the key
    /// is the first record that reads as a DKIM key (as [`consulting_key`] takes it). Each
    /// `made` is (the SHA-256 hash of the canonical signed headers, the signature). Returns how
    /// many were remembered: all of them, or none when the published key is not `public` (or
    /// not in the plain form a run publishes) or the first signature does not verify.
    ///
    /// Not verified one by one: a signature Ed25519 makes with a private key verifies under its
    /// public half (the scheme's correctness, RFC 8032 section 5.1.7; the memo bought
    /// that fact with a batch verification of every signature before, 12 % of scale-million's
    /// CPU). What could still make them fail at a receiver is checked: the published key is
    /// compared with the signer's, and the first signature of each call is verified in full
    /// (a broken signing library or digest fails it; a key whose halves disagree is refused
    /// when the signer loads it). A receiver still hashes the body and the signed headers of what it received
    /// itself, so an altered message, a wrong selector or a key the zones no longer answer
    /// misses the memo and is verified as usual. The MTA's `Made` values can only come from its
    /// signer (their fields are private), which is what makes them honest.
    pub fn vouch_ed25519(
        &self,
        answered: &[String],
        public: &[u8; 32],
        made: &[([u8; 32], &[u8])],
    ) -> usize {
        use ed25519_dalek::{Signature, VerifyingKey};
        let Some((record, _)) = key_record(answered) else {
            return 0;
        };
        if ed25519_public(record) != Some(*public) {
            return 0;
        }
        let Ok(key) = VerifyingKey::from_bytes(public) else {
            return 0;
        };
        if key.is_weak() {
            return 0;
        }
        let Some((hash, first)) = made.first() else {
            return 0;
        };
        let holds = Signature::from_slice(first).is_ok_and(|s| key.verify_strict(hash, &s).is_ok());
        if !holds {
            tracing::warn!(
                "an Ed25519 signature the MTA just made does not verify under the key the zones publish; its receivers verify each"
            );
            return 0;
        }
        self.insert_all(
            made.iter().map(|(hash, signature)| {
                memo_key(record, hash, signature, Algorithm::Ed25519Sha256)
            }),
        );
        made.len()
    }
}

impl VerifyingKey for Remembering {
    fn verify<'a>(
        &self,
        headers: &mut dyn Iterator<Item = (&'a [u8], &'a [u8])>,
        signature: &[u8],
        canonicalization: Canonicalization,
        algorithm: Algorithm,
    ) -> mail_auth::Result<()> {
        let headers: Vec<(&'a [u8], &'a [u8])> = headers.collect();
        let mut canonical = Digest(Sha256::hasher());
        canonicalization.canonicalize_headers(headers.iter().copied(), &mut canonical);
        let key = self.key(canonical.0.complete().as_ref(), signature, algorithm);
        let held = match self.role {
            Role::Consult => self.memo.take(&key),
            // Remembered as made already.
            Role::Fill => self.memo.holds(&key),
        };
        if held {
            return Ok(());
        }
        let result = self.inner.verify(
            &mut headers.into_iter(),
            signature,
            canonicalization,
            algorithm,
        );
        if self.role == Role::Fill && result.is_ok() {
            self.memo.insert(key);
        }
        result
    }

    fn verify_bytes(
        &self,
        input: &[u8],
        signature: &[u8],
        algorithm: Algorithm,
    ) -> mail_auth::Result<()> {
        self.inner.verify_bytes(input, signature, algorithm)
    }

    fn public_key_bits(&self) -> usize {
        self.inner.public_key_bits()
    }
}

/// The first of `records` that parses as a DKIM key (as a TXT lookup answers), its key
/// verifying through `memo`.
fn remembering_key(records: &[String], memo: &Arc<SignatureMemo>, role: Role) -> Option<Txt> {
    let (record, key) = key_record(records)?;
    Some(Txt::from(DomainKey {
        p: Box::new(Remembering {
            inner: key.p,
            record: record.clone(),
            memo: memo.clone(),
            role,
        }),
        f: key.f,
    }))
}

/// The first of `records` (a key name's TXT texts) that reads as a DKIM key, as mail-auth
/// takes it, and the key.
fn key_record(records: &[String]) -> Option<(&String, DomainKey)> {
    records.iter().find_map(|record| {
        <DomainKey as mail_auth::common::parse::TxtRecordParser>::parse(record.as_bytes())
            .ok()
            .map(|key| (record, key))
    })
}

/// A DKIM key answered from `records` (its TXT texts), consulting `memo` (a receiver).
pub fn consulting_key(records: &[String], memo: &Arc<SignatureMemo>) -> Option<Txt> {
    remembering_key(records, memo, Role::Consult)
}

/// Verifies messages ahead of their receivers, remembering the signatures that hold.
pub struct Foreseer {
    auth: MessageAuthenticator,
    memo: Arc<SignatureMemo>,
}

/// The TXT answers the foreseer's verification asks for: the signatures' keys. Every other
/// name (a key that cannot be had, `_report._domainkey`, ATPS) does not exist here, so the
/// verification never turns to a resolver.
struct KeyCache(Vec<(Box<str>, Txt)>);

impl ResolverCache<Box<str>, Txt> for KeyCache {
    fn get<Q>(&self, key: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        Some(
            self.0
                .iter()
                .find(|(name, _)| name.borrow() == key)
                .map_or_else(
                    || {
                        Txt::Error(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(
                            mail_auth::hickory_resolver::proto::op::ResponseCode::NXDomain,
                        )))
                    },
                    |(_, txt)| txt.clone(),
                ),
        )
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

impl Foreseer {
    pub fn new(memo: Arc<SignatureMemo>) -> Result<Self, crate::auth::VerifierError> {
        use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
        let auth = MessageAuthenticator::new(
            ResolverConfig::from_parts(None, vec![], vec![]),
            ResolverOpts::default(),
        )
        .map_err(|e| crate::auth::VerifierError(e.to_string()))?;
        Ok(Foreseer { auth, memo })
    }

    /// Verify the DKIM signatures of `message` with the keys `txt` answers (a DNS name as
    /// mail-auth asks it, lower case with the trailing dot, to its TXT texts), remembering
    /// each that holds. Returns how many did.
    pub async fn verify(&self, message: &[u8], txt: impl Fn(&str) -> Vec<String>) -> usize {
        use mail_auth::common::verify::VerifySignature;
        let Some(parsed) = AuthenticatedMessage::parse(message) else {
            return 0;
        };
        let keys = KeyCache(
            parsed
                .dkim_headers
                .iter()
                .filter_map(|h| {
                    let name = h.header.domain_key();
                    let key = remembering_key(&txt(&name), &self.memo, Role::Fill)?;
                    Some((name.into_boxed_str(), key))
                })
                .collect(),
        );
        if keys.0.is_empty() {
            return 0;
        }
        self.auth
            .verify_dkim(mail_auth::Parameters::new(&parsed).with_txt_cache(&keys))
            .await
            .iter()
            .filter(|o| matches!(o.result(), mail_auth::DkimResult::Pass))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::{Algorithm, Held, SETS, SignatureMemo, WAYS, ed25519_public, memo_key, short};

    /// Names of one set: a free place first, then the set's oldest name gives way, round and
    /// round (more evictions than the set has places); the sets beside it, full too, keep
    /// theirs and give up their own oldest; nothing unseen is held; a name of 0 is kept as 1.
    #[test]
    fn a_full_set_gives_up_its_oldest_name() {
        let mut held = Held::default();
        assert!(!held.contains(7));
        let in_set = |set: u128, i: u128| set + i * SETS as u128;
        for set in [7, 8] {
            for i in 0..WAYS as u128 {
                held.insert(in_set(set, i));
            }
        }
        held.insert(in_set(7, 0));
        assert!(
            (0..WAYS as u128).all(|i| held.contains(in_set(7, i)) && held.contains(in_set(8, i)))
        );
        // Eleven more names in set 7, interleaved with two in set 8.
        for i in WAYS as u128..WAYS as u128 + 11 {
            held.insert(in_set(7, i));
            if i == 6 || i == 9 {
                held.insert(in_set(8, i));
            }
        }
        let last = WAYS as u128 + 11;
        assert!((0..last - 4).all(|i| !held.contains(in_set(7, i))));
        assert!((last - 4..last).all(|i| held.contains(in_set(7, i))));
        assert!(!held.contains(in_set(8, 0)) && !held.contains(in_set(8, 1)));
        assert!([2, 3, 6, 9].iter().all(|&i| held.contains(in_set(8, i))));
        assert!(!held.contains(9) && !held.contains(in_set(7, last)));
        assert_eq!(short(&[0; 32]), 1);
    }

    /// A key record is vouched for only in the plain form a run publishes: each tag
    /// once, in lower case, `k=ed25519`, a 32-byte `p=`.
    #[test]
    fn a_key_record_is_read_strictly() {
        let p = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
        let key = ed25519_public(&format!("v=DKIM1; k=ed25519; p={p}")).unwrap();
        assert_eq!(key[0], 0xd7);
        assert_eq!(ed25519_public(&format!("k=ed25519;p={p};")), Some(key));
        for bad in [
            format!("v=DKIM1; k=ed25519; p={p}; p={p}"),
            format!("v=DKIM1; k=ed25519; p={p}; P=AAAA"),
            format!("v=DKIM1; k=ed25519; p={p}; K=rsa"),
            format!("v=DKIM1; k=ed25519; \u{a0}p={p}"),
            format!("v=DKIM1; k=ed25519; t=s; p={p}"),
            format!("v=DKIM1; k=ed25519; p={} {}", &p[..20], &p[20..]),
            format!("v=DKIM1; k=rsa; p={p}"),
            format!("v=DKIM1; p={p}"),
            format!("v=DKIM2; k=ed25519; p={p}"),
            "v=DKIM1; k=ed25519; p=".to_string(),
            "v=DKIM1; k=ed25519; p=AAAA".to_string(),
            format!("v=DKIM1; k=ed25519 p={p}"),
        ] {
            assert_eq!(ed25519_public(&bad), None, "{bad}");
        }
    }

    /// The MTA's own signatures are remembered only when the zones publish the key that made
    /// them and the first of them verifies under it; then all are.
    #[test]
    fn signatures_are_vouched_for_under_the_published_key_after_the_first_verifies() {
        use base64::Engine;
        use ed25519_dalek::{Signer, SigningKey};
        let key = SigningKey::from_bytes(&[9; 32]);
        let public = key.verifying_key().to_bytes();
        let record = format!(
            "v=DKIM1; k=ed25519; p={}",
            base64::engine::general_purpose::STANDARD.encode(public)
        );
        let hashes: Vec<[u8; 32]> = (0..5u8).map(|i| [i; 32]).collect();
        let signatures: Vec<[u8; 64]> = hashes.iter().map(|h| key.sign(h).to_bytes()).collect();
        let made: Vec<([u8; 32], &[u8])> = hashes
            .iter()
            .zip(&signatures)
            .map(|(h, s)| (*h, &s[..]))
            .collect();
        let held = |memo: &SignatureMemo, i: usize| {
            memo.holds(&memo_key(
                &record,
                &hashes[i],
                &signatures[i],
                Algorithm::Ed25519Sha256,
            ))
        };
        let memo = SignatureMemo::new();
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes();
        let answered = [record.clone()];
        // Made by another key than the one published; no key published.
        assert_eq!(memo.vouch_ed25519(&answered, &other, &made), 0);
        assert_eq!(memo.vouch_ed25519(&[], &public, &made), 0);
        // A first signature that does not verify: none remembered.
        let mut broken = signatures[0];
        broken[5] ^= 1;
        let mut bad = made.clone();
        bad[0].1 = &broken;
        assert_eq!(memo.vouch_ed25519(&answered, &public, &bad), 0);
        assert!((0..5).all(|i| !held(&memo, i)));
        // The key published, the first verifying: all remembered.
        assert_eq!(memo.vouch_ed25519(&answered, &public, &made), 5);
        assert!((0..5).all(|i| held(&memo, i)));
    }
}
