//! SASL for SMTP AUTH (RFC 4954), IMAP AUTHENTICATE and POP3 AUTH: PLAIN (RFC 4616) and the
//! base64 responses, and what a credential check comes to.

/// What a login attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The credentials are right: the canonical user.
    Accepted(String),
    /// Wrong credentials (answered after the address's delay).
    Rejected,
    /// Too many failures from this address: refused without a check.
    Throttled,
}

/// A SASL response line in base64 (RFC 4954: `=` is the empty response).
pub fn decode_sasl_b64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let t = text.trim();
    if t == "=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(t).ok()
}

/// Why a SASL PLAIN response was refused before any credential check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlainRefused {
    /// Not base64, not `authzid NUL authcid NUL password`, or an empty or non-UTF-8 user.
    Malformed,
    /// A well-formed response asking to act as another user (the authorization identity
    /// differs from the user authenticating): not offered.
    ActingAsAnother,
}

/// A SASL PLAIN response as sent on the wire (base64), decoded.
pub fn sasl_plain_b64(text: &str) -> Result<(String, Vec<u8>), PlainRefused> {
    decode_sasl_b64(text)
        .ok_or(PlainRefused::Malformed)
        .and_then(|d| sasl_plain(&d))
}

/// Decode SASL PLAIN (RFC 4616): `authzid NUL authcid NUL password`.
pub fn sasl_plain(decoded: &[u8]) -> Result<(String, Vec<u8>), PlainRefused> {
    let mut parts = decoded.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainRefused::Malformed);
    };
    let authc = std::str::from_utf8(authc)
        .ok()
        .filter(|a| !a.is_empty())
        .ok_or(PlainRefused::Malformed)?;
    // Acting as another user is not offered.
    if !authz.is_empty() && !authz.eq_ignore_ascii_case(authc.as_bytes()) {
        return Err(PlainRefused::ActingAsAnother);
    }
    Ok((authc.to_string(), pass.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_the_user_and_refuses_acting_as_another() {
        assert_eq!(
            sasl_plain(b"\0bob\0secret"),
            Ok(("bob".into(), b"secret".to_vec()))
        );
        assert_eq!(
            sasl_plain(b"BOB\0bob\0secret"),
            Ok(("bob".into(), b"secret".to_vec()))
        );
        assert_eq!(
            sasl_plain(b"eve\0bob\0secret"),
            Err(PlainRefused::ActingAsAnother)
        );
        for malformed in [
            &b"bob\0secret"[..],
            b"\0\0secret",
            b"\0bob\0secret\0more",
            b"\0\xff\0x",
        ] {
            assert_eq!(
                sasl_plain(malformed),
                Err(PlainRefused::Malformed),
                "{malformed:?}"
            );
        }
        assert_eq!(decode_sasl_b64("="), Some(Vec::new()));
        assert_eq!(
            sasl_plain_b64("AGJvYgBzZWNyZXQ="),
            Ok(("bob".into(), b"secret".to_vec()))
        );
        assert_eq!(sasl_plain_b64("not base64!"), Err(PlainRefused::Malformed));
    }
}
