//! One SMTP reply type for the whole project: what the server sends, what the client reads,
//! what the event log records (with the command that got it) and what reports read back.

use serde::{Deserialize, Serialize};
use smtp_proto::response::parser::ResponseReceiver;

/// A reply: code, RFC 3463 enhanced status code (as sent, `5.7.509`), and the text
/// (continuation lines joined by `\n`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code (RFC 3463) such as `5.1.1`, when the server sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced: Option<String>,
    pub text: String,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(
        code: u16,
        (class, subject, detail): (u8, u16, u16),
        text: impl Into<String>,
    ) -> Self {
        Reply {
            code,
            enhanced: Some(enhanced_code(class.into(), subject, detail)),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code (greetings, EHLO, 334, 354).
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: None,
            text: text.into(),
        }
    }

    /// Not a reply: close the connection without answering (a server that drops the client).
    pub fn disconnect() -> Self {
        Reply::plain(0, "")
    }

    pub fn is_disconnect(&self) -> bool {
        self.code == 0
    }

    /// The enhanced status code, or the empty string.
    pub fn enhanced_str(&self) -> String {
        self.enhanced.clone().unwrap_or_default()
    }

    pub fn is_positive(&self) -> bool {
        self.code != 0 && self.code < 400
    }

    /// Append the wire form (multi-line when the text has newlines).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut code = itoa::Buffer::new();
        let code = code.format(self.code).as_bytes();
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            out.extend_from_slice(code);
            out.push(if lines.peek().is_none() { b' ' } else { b'-' });
            if let Some(e) = &self.enhanced {
                out.extend_from_slice(e.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Sans-IO reply reader: feed bytes, get complete replies.
#[derive(Default)]
pub struct ReplyReader {
    receiver: ResponseReceiver,
}

impl ReplyReader {
    /// Parse one reply from `bytes`, advancing past what was consumed. `Ok(None)` means every
    /// byte was consumed and more are needed.
    pub fn parse(&mut self, bytes: &mut std::slice::Iter<'_, u8>) -> Result<Option<Reply>, String> {
        let before = bytes.as_slice();
        match self.receiver.parse(bytes) {
            Ok(r) => {
                let consumed = &before[..before.len() - bytes.as_slice().len()];
                self.receiver.reset();
                // smtp-proto accepts short or odd codes ("30"); RFC 5321 replies are 2xx-5xx.
                if !(200..=599).contains(&r.code) {
                    return Err(format!(
                        "reply code {} is not a three-digit 2xx-5xx code",
                        r.code
                    ));
                }
                let enhanced = if r.esc.contains(&u8::MAX) {
                    // smtp-proto keeps each part in a byte; RFC 3463 allows three digits
                    // (Microsoft's 5.7.509): read it from the reply's last line instead.
                    last_line_enhanced(consumed)
                } else {
                    (r.esc[0] != 0)
                        .then(|| enhanced_code(r.esc[0].into(), r.esc[1].into(), r.esc[2].into()))
                };
                Ok(Some(Reply {
                    code: r.code,
                    enhanced,
                    text: r.message,
                }))
            }
            Err(smtp_proto::Error::NeedsMoreData { .. }) => Ok(None),
            Err(e) => {
                self.receiver.reset();
                Err(format!("{e:?}"))
            }
        }
    }
}

/// `class.subject.detail`, RFC 3463's form (every reply sent or read with one makes it).
fn enhanced_code(class: u16, subject: u16, detail: u16) -> String {
    let mut s = String::with_capacity(11);
    let mut digits = itoa::Buffer::new();
    s.push_str(digits.format(class));
    s.push('.');
    s.push_str(digits.format(subject));
    s.push('.');
    s.push_str(digits.format(detail));
    s
}

/// The enhanced status code (`D.DDD.DDD`) right after the code on a reply's last line.
fn last_line_enhanced(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let line = text.trim_end().lines().last()?;
    let token = line.get(4..)?.split_whitespace().next()?;
    let parts: Vec<&str> = token.split('.').collect();
    let ok = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then(|| token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Capabilities;

    #[test]
    fn reply_reader_handles_multiline_split_input_and_enhanced_codes() {
        let mut r = ReplyReader::default();
        let part1 = b"250-mx.example.test hello\r\n250-PIPE";
        let part2 = b"LINING\r\n250 SIZE 1000\r\n550 5.1.1 no such user\r\n";
        let mut it = part1.iter();
        assert_eq!(r.parse(&mut it).unwrap(), None);
        assert_eq!(it.len(), 0);
        let mut it = part2.iter();
        let ehlo = r.parse(&mut it).unwrap().unwrap();
        assert_eq!(ehlo.code, 250);
        let caps = Capabilities::from_ehlo_text(&ehlo.text);
        assert!(caps.pipelining);
        assert_eq!(caps.size_bytes_max, Some(1000));
        let rcpt = r.parse(&mut it).unwrap().unwrap();
        assert_eq!(rcpt.code, 550);
        assert_eq!(rcpt.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(rcpt.text, "no such user");
        // Three-digit parts (RFC 3463 allows up to 999), as Microsoft sends them.
        let mut it =
            b"550-5.7.509 Access denied, sending domain\r\n550 5.7.509 does not pass DMARC\r\n"
                .iter();
        let r = r.parse(&mut it).unwrap().unwrap();
        assert_eq!(r.enhanced.as_deref(), Some("5.7.509"));
    }

    #[test]
    fn reply_reader_rejects_garbage() {
        let mut r = ReplyReader::default();
        let mut it = b"hello there\r\n".iter();
        assert!(r.parse(&mut it).is_err());
    }

    #[test]
    fn reply_reader_survives_random_input() {
        // A tiny deterministic generator keeps this crate free of a rand dependency.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"0123455- \r\n.x";
        for _ in 0..2000 {
            let mut r = ReplyReader::default();
            let len = (next() % 300) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let mut it = input.iter();
            let mut guard = 0;
            while it.len() > 0 && guard < 1000 {
                let before = it.len();
                match r.parse(&mut it) {
                    Ok(Some(reply)) => assert!(
                        (200..=599).contains(&reply.code),
                        "{reply:?} from {:?}",
                        String::from_utf8_lossy(&input)
                    ),
                    Ok(None) => break,
                    Err(_) if it.len() == before => break,
                    Err(_) => {}
                }
                guard += 1;
            }
        }
    }

    #[test]
    fn multiline_reply_wire_form() {
        let mut out = Vec::new();
        Reply {
            code: 250,
            enhanced: None,
            text: "mx hello\nPIPELINING".into(),
        }
        .write_to(&mut out);
        assert_eq!(out, b"250-mx hello\r\n250 PIPELINING\r\n");
        out.clear();
        Reply::new(550, (5, 1, 1), "no such user").write_to(&mut out);
        assert_eq!(out, b"550 5.1.1 no such user\r\n");
        // Every line carries the enhanced code, up to three digits a part (RFC 3463).
        out.clear();
        Reply::new(550, (5, 7, 509), "Access denied\nsee the policy").write_to(&mut out);
        assert_eq!(
            out,
            b"550-5.7.509 Access denied\r\n550 5.7.509 see the policy\r\n"
        );
        out.clear();
        Reply::new(421, (4, 4, 2), "").write_to(&mut out);
        assert_eq!(out, b"421 4.4.2 \r\n");
        // Read back, the same reply.
        let mut reader = ReplyReader::default();
        let wire = b"451 4.3.0 try later\r\n";
        let read = reader.parse(&mut wire.iter()).unwrap().unwrap();
        assert_eq!(read, Reply::new(451, (4, 3, 0), "try later"));
    }
}
