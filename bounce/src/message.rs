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

/// `raw` parsed whole (see [`Parsed`]).
pub fn parse(raw: &[u8]) -> Parsed<'_> {
    Parsed(
        std::panic::catch_unwind(|| MessageParser::default().parse(raw))
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
