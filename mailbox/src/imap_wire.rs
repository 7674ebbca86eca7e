//! IMAP string forms for responses (RFC 3501 section 4.3): quoted strings where they can carry
//! the bytes, literals where they cannot, NIL for absent values.

/// A quoted string when every byte is 7-bit, printable and not CR/LF; otherwise a literal.
pub fn quoted_or_literal(bytes: &[u8]) -> String {
    let quotable = bytes.iter().all(|&b| (0x20..0x7f).contains(&b));
    if quotable {
        let mut s = String::with_capacity(bytes.len() + 2);
        s.push('"');
        for &b in bytes {
            if b == b'"' || b == b'\\' {
                s.push('\\');
            }
            s.push(b as char);
        }
        s.push('"');
        s
    } else {
        // Responses are built as text: bytes that are not UTF-8 are replaced, and the literal
        // counts what is actually sent.
        let text = String::from_utf8_lossy(bytes);
        format!("{{{}}}\r\n{}", text.len(), text)
    }
}

/// NIL or a string.
pub fn nstring(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "NIL".into(),
        Some(b) => quoted_or_literal(b),
    }
}

/// Append a literal carrying exactly `bytes` (for message data, which need not be UTF-8).
pub fn push_literal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings() {
        assert_eq!(quoted_or_literal(b"a \"b\" \\c"), "\"a \\\"b\\\" \\\\c\"");
        assert_eq!(quoted_or_literal(b"x\r\ny"), "{4}\r\nx\r\ny");
        assert_eq!(nstring(None), "NIL");
    }
}
