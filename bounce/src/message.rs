//! A message from outside, parsed safely: mail-parser's debug assertions (which fire on some
//! malformed MIME in unoptimised builds) become "could not parse", and a message whose
//! `message/rfc822` parts nest thousands deep is taken apart one level at a time when it is
//! dropped. mail-parser parses such a message without recursion, but its tree's own `Drop`
//! recurses once per level: 50,000 levels (3 MB, under every size limit) overflowed a 2 MiB
//! thread stack; an independent review took down `mailsim mta --mx` and the fleet with one
//! mail, again at every retry.

use mail_parser::{Message, MessageParser, PartType};

/// A parsed message (None inside: it could not be parsed), dropped without recursion.
pub struct Parsed<'x>(Option<Message<'x>>);

impl<'x> Parsed<'x> {
    pub fn get(&self) -> Option<&Message<'x>> {
        self.0.as_ref()
    }
}

impl Drop for Parsed<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            drop_flat(m);
        }
    }
}

/// Lines that may open a MIME part (`--` at the start of a line) past which a message's body is
/// not parsed into parts: a 24 MB message of 2.4 million empty parts took 800 MB to parse (an
/// independent review: two at once took `mailsim mta --mx` to 1.8 GB); 50,000 take about
/// 17 MB. Content filters cap the parts they look at the same way; a real message has a few
/// dozen (IMAP's test of 8,000 nested multiparts has 16,000 such lines).
pub const PART_LINES_MAX: usize = 50_000;

/// `raw` parsed whole (see [`Parsed`]); with more than [`PART_LINES_MAX`] lines that may open
/// a part, its header section only.
pub fn parse(raw: &[u8]) -> Parsed<'_> {
    // Counted with memchr's searcher, and only as far as the cap: every message received
    // (a receiver's content read, foresight) passes here.
    let part_lines = memchr::memmem::find_iter(raw, b"\n--")
        .take(PART_LINES_MAX + 1)
        .count();
    Parsed(
        std::panic::catch_unwind(|| {
            let parser = MessageParser::default();
            if part_lines > PART_LINES_MAX {
                parser.parse_headers(raw)
            } else {
                parser.parse(raw)
            }
        })
        .ok()
        .flatten(),
    )
}

/// Drop `m` one nesting level at a time: each nested message is taken out of its part before
/// the part is dropped.
fn drop_flat(m: Message<'_>) {
    // Most messages nest none: they are dropped as they are, without the stack.
    if !m
        .parts
        .iter()
        .any(|p| matches!(p.body, PartType::Message(_)))
    {
        return;
    }
    let mut stack = vec![m];
    while let Some(mut message) = stack.pop() {
        for part in &mut message.parts {
            if let PartType::Message(inner) = std::mem::take(&mut part.body) {
                stack.push(inner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// A message of 200,000 empty parts: its header section is read, its body not split.
    #[test]
    fn a_message_of_too_many_parts_is_read_to_its_header_section() {
        let head = "From: a@b.test\r\nSubject: many\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n";
        let raw = format!("{head}{}--b--\r\n", "--b\r\n\r\nx\r\n".repeat(200_000));
        let parsed = super::parse(raw.as_bytes());
        let m = parsed.get().expect("headers");
        assert_eq!(m.subject(), Some("many"));
        assert!(m.parts.len() <= 1, "{}", m.parts.len());
        // A few dozen parts are parsed as parts.
        let raw = format!("{head}{}--b--\r\n", "--b\r\n\r\nx\r\n".repeat(30));
        assert_eq!(super::parse(raw.as_bytes()).get().unwrap().parts.len(), 31);
    }

    /// 50,000 nested messages parsed and dropped on a 256 KiB stack.
    #[test]
    fn a_deeply_nested_message_is_dropped_without_recursion() {
        let unit = "From: a@b.test\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n";
        let raw = format!("{}x", unit.repeat(50_000));
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let parsed = super::parse(raw.as_bytes());
                assert!(parsed.get().is_some());
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
