//! Accounts: addresses with argon2id password hashes, from the command line or a file.
//!
//! A users file has one account per line, `address:password` or `address:$argon2id$...`;
//! blank lines and `#` comments are skipped. A bare local part takes the first domain.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{place}: expected ADDRESS:PASSWORD")]
    Syntax { place: String },
    #[error("{place}: {address:?} is not in a served domain ({domains})")]
    ForeignDomain {
        place: String,
        address: String,
        domains: String,
    },
    #[error(
        "{place}: {address:?} cannot name a mailbox on disk: its local part and domain take letters, digits and . _ + - = only (not . or .. alone)"
    )]
    BadAddress { place: String, address: String },
    #[error("{place}: bad password hash: {why}")]
    BadHash { place: String, why: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// The accounts of a mailbox server.
#[derive(Debug, Default)]
pub struct Users {
    domains: Vec<String>,
    /// address (lowercase) -> PHC string of its argon2id hash.
    hashes: BTreeMap<String, String>,
}

/// The cost used for new hashes: argon2id defaults (19 MiB, 2 passes), OWASP's minimum.
fn hasher() -> Argon2<'static> {
    Argon2::default()
}

impl Users {
    pub fn new(domains: &[String]) -> Self {
        Users {
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            hashes: BTreeMap::new(),
        }
    }

    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// The canonical address for a login name (a bare local part takes the first domain).
    pub fn canonical(&self, login: &str) -> String {
        let login = login.to_ascii_lowercase();
        if login.contains('@') {
            login
        } else {
            format!(
                "{login}@{}",
                self.domains.first().map_or("", String::as_str)
            )
        }
    }

    pub fn exists(&self, address: &str) -> bool {
        self.hashes.contains_key(&self.canonical(address))
    }

    pub fn addresses(&self) -> Vec<String> {
        self.hashes.keys().cloned().collect()
    }

    /// Add `ADDRESS:PASSWORD` (or `ADDRESS:$argon2id$...`); `place` names where it came from.
    pub fn add_spec(&mut self, spec: &str, place: &str) -> Result<(), UsersError> {
        let (login, secret) = spec.split_once(':').ok_or_else(|| UsersError::Syntax {
            place: place.to_string(),
        })?;
        if login.trim().is_empty() || secret.is_empty() {
            return Err(UsersError::Syntax {
                place: place.to_string(),
            });
        }
        let address = self.canonical(login.trim());
        // The address names the mailbox's directory: a users-file line could otherwise store
        // mail outside the data directory ("x/../../escaped", an independent review).
        if crate::store::path_parts(&address).is_none() {
            return Err(UsersError::BadAddress {
                place: place.to_string(),
                address,
            });
        }
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        if !self.is_local_domain(domain) {
            return Err(UsersError::ForeignDomain {
                place: place.to_string(),
                address,
                domains: self.domains.join(", "),
            });
        }
        let hash = if secret.starts_with("$argon2") {
            PasswordHash::new(secret).map_err(|e| UsersError::BadHash {
                place: place.to_string(),
                why: e.to_string(),
            })?;
            secret.to_string()
        } else {
            hash(secret).map_err(|e| UsersError::BadHash {
                place: place.to_string(),
                why: e.to_string(),
            })?
        };
        self.hashes.insert(address, hash);
        Ok(())
    }

    pub fn load_file(&mut self, path: &Path) -> Result<(), UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.display().to_string(),
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            self.add_spec(line, &format!("{} line {}", path.display(), i + 1))?;
        }
        Ok(())
    }

    /// Check a password (argon2: CPU-heavy, call from a blocking thread). Returns the canonical
    /// address when it matches.
    pub fn verify(&self, login: &str, password: &[u8]) -> Option<String> {
        self.verify_with_memory(login, password, &mut Vec::new())
    }

    /// [`Users::verify`] with argon2's working memory supplied by the caller (grown to the
    /// hash's cost once, then reused), so that memory is one buffer per concurrent check
    /// however many checks run over time.
    pub fn verify_with_memory(
        &self,
        login: &str,
        password: &[u8],
        memory: &mut Vec<argon2::Block>,
    ) -> Option<String> {
        let address = self.canonical(login);
        // An unknown login costs the same argon2 run as a known one, against a hash of the
        // default cost, so that the time of an answer does not tell which logins exist (an
        // independent review measured the difference: no hash at all for unknown users).
        let (hash, known) = match self.hashes.get(&address) {
            Some(hash) => (hash.as_str(), true),
            None => (unknown_user_hash(), false),
        };
        let parsed = PasswordHash::new(hash).ok()?;
        let algorithm = argon2::Algorithm::try_from(parsed.algorithm).ok()?;
        let version = match parsed.version {
            Some(v) => argon2::Version::try_from(v).ok()?,
            None => argon2::Version::default(),
        };
        let params = argon2::Params::try_from(&parsed).ok()?;
        let expected = parsed.hash?;
        let mut salt = [0u8; 64];
        let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
        if memory.len() < params.block_count() {
            memory.resize(params.block_count(), argon2::Block::default());
        }
        let mut out = vec![0u8; expected.len()];
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..])
            .ok()?;
        // password_hash's Output compares in constant time.
        let got = argon2::password_hash::Output::new(&out).ok()?;
        (got == expected && known).then_some(address)
    }
}

/// The hash an unknown login is checked against: the default cost, a fixed salt, a password
/// nobody has (no user has this hash, and `known` is false besides).
fn unknown_user_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        SaltString::encode_b64(b"mailsim unknown user")
            .and_then(|salt| {
                hasher()
                    .hash_password(b"no such user", &salt)
                    .map(|h| h.to_string())
            })
            .unwrap_or_default()
    })
}

/// An argon2id PHC string for `password`, with a fresh salt.
fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Ok(hasher()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Hash a password for a users file.
pub fn hash_password(password: &str) -> String {
    hash(password).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address that cannot name a directory under the data directory is refused where it
    /// is written (an independent review stored mail outside it through a users-file line).
    #[test]
    fn an_address_that_is_no_directory_name_is_refused_with_its_place() {
        let mut u = Users::new(&["example.test".into()]);
        for bad in [
            "\"x/../../../../escaped\"@example.test:pw",
            "../../escape@example.test:pw",
            "a b@example.test:pw",
            "..@example.test:pw",
            "a%2Fb@example.test:pw",
        ] {
            let e = u.add_spec(bad, "users.txt line 3").unwrap_err().to_string();
            assert!(
                e.starts_with("users.txt line 3: ") && e.contains("cannot name a mailbox"),
                "{bad}: {e}"
            );
        }
        u.add_spec("ann.o-b+c=d@example.test:pw", "users.txt line 4")
            .unwrap();
    }

    #[test]
    fn add_verify_and_errors_name_the_place() {
        let mut u = Users::new(&["example.test".into()]);
        u.add_spec("bob:secret", "--user").unwrap();
        let hashed = hash_password("pw2");
        u.add_spec(&format!("alice@example.test:{hashed}"), "users.txt line 2")
            .unwrap();
        assert_eq!(
            u.verify("bob", b"secret").as_deref(),
            Some("bob@example.test")
        );
        assert_eq!(
            u.verify("Bob@Example.Test", b"secret").as_deref(),
            Some("bob@example.test")
        );
        assert!(u.verify("bob", b"wrong").is_none());
        assert!(u.verify("alice", b"pw2").is_some());
        // A hash made elsewhere with other costs (argon2's own verifier agrees).
        let other = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(8 * 1024, 3, 1, Some(24)).unwrap(),
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let phc = other.hash_password(b"pw3", &salt).unwrap().to_string();
        u.add_spec(&format!("carol@example.test:{phc}"), "users.txt line 4")
            .unwrap();
        let mut memory = Vec::new();
        assert!(u.verify_with_memory("carol", b"pw3", &mut memory).is_some());
        assert!(u.verify_with_memory("carol", b"pw4", &mut memory).is_none());
        assert!(
            u.verify_with_memory("bob", b"secret", &mut memory)
                .is_some()
        );
        use argon2::password_hash::PasswordVerifier;
        let parsed = PasswordHash::new(&phc).unwrap();
        assert!(
            argon2::Argon2::default()
                .verify_password(b"pw3", &parsed)
                .is_ok()
        );
        let e = u
            .add_spec("eve@other.test:x", "users.txt line 3")
            .unwrap_err();
        assert!(e.to_string().starts_with("users.txt line 3:"), "{e}");
        assert!(u.add_spec("nopassword", "--user").is_err());
        // An unknown login is checked against a hash of the default cost (the same work as a
        // known one), and never accepted, even with the password that hash was made from.
        let dummy = PasswordHash::new(unknown_user_hash()).unwrap();
        let (params, default) = (
            argon2::Params::try_from(&dummy).unwrap(),
            argon2::Params::default(),
        );
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (default.m_cost(), default.t_cost(), default.p_cost())
        );
        assert!(u.verify("nobody", b"no such user").is_none());
        assert!(u.verify("nobody@example.test", b"").is_none());
    }
}
