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

/// A SASL PLAIN response as sent on the wire (base64), decoded.
pub fn sasl_plain_b64(text: &str) -> Option<(String, Vec<u8>)> {
    decode_sasl_b64(text).and_then(|d| sasl_plain(&d))
}

/// Decode SASL PLAIN (RFC 4616): `authzid NUL authcid NUL password`.
pub fn sasl_plain(decoded: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut parts = decoded.split(|&b| b == 0);
    let authz = parts.next()?;
    let authc = parts.next()?;
    let pass = parts.next()?;
    if parts.next().is_some() || authc.is_empty() {
        return None;
    }
    let authc = std::str::from_utf8(authc).ok()?;
    // Acting as another user is not offered.
    if !authz.is_empty() && !authz.eq_ignore_ascii_case(authc.as_bytes()) {
        return None;
    }
    Some((authc.to_string(), pass.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_the_user_and_refuses_acting_as_another() {
        assert_eq!(
            sasl_plain(b"\0bob\0secret"),
            Some(("bob".into(), b"secret".to_vec()))
        );
        assert_eq!(sasl_plain(b"eve\0bob\0secret"), None);
        assert_eq!(decode_sasl_b64("="), Some(Vec::new()));
        assert_eq!(
            sasl_plain_b64("AGJvYgBzZWNyZXQ="),
            Some(("bob".into(), b"secret".to_vec()))
        );
    }
}
