//! The log's binary record encoding (log format 2).
//!
//! A record is `MARKER | seq | ts | kind | fields`: `seq` and `ts` as LEB128 varints, `kind` one
//! byte (the kind's position in [`Event::KINDS`](crate::Event::KINDS)), then the kind's fields
//! in their order in the schema, each as its type encodes ([`Bin`]): integers as varints, a
//! string as its byte length (varint) and its UTF-8 bytes, a bool as one byte (0 or 1), an
//! `Option` as a byte (0 absent, 1 present) and the value, a list or a map as its length and
//! its items. No field names and no JSON: on a real log (scale-million) a record is about
//! half its JSON's size and a replay reads the log about twice as fast.
//!
//! Every record is whole in itself (no string table shared between records): a frame can be
//! decoded alone, which salvaging a damaged log, publishing frames one by one to a cluster
//! stream and decoding parts of a log on several cores all need. The encoding follows the
//! schema's field order, so a change to the schema is a new log format version.

use crate::schema::{Reply, SmtpReply};
use std::collections::BTreeMap;

/// The first byte of every binary record: a JSON record starts with `{`, so one byte tells the
/// two encodings apart (and a log's frames can be read without its header). A byte that never
/// occurs in UTF-8, so that text from outside (a remote server's reply, a message id) cannot
/// hold what looks like the start of a record to a reader resynchronising after damage.
pub const MARKER: u8 = 0xF5;

/// A record's `seq` read from its payload alone, binary or JSON (serde writes `seq` first),
/// without decoding the rest; None when the payload does not start as a record does.
pub fn seq_of_payload(payload: &[u8]) -> Option<u64> {
    match payload.split_first()? {
        (&MARKER, rest) => Input::new(rest).varint().ok(),
        _ => {
            let digits = payload.strip_prefix(br#"{"seq":"#)?;
            let end = digits
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(digits.len());
            std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
        }
    }
}

/// Why a binary record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("binary record, {context}: {what}")]
pub struct DecodeError {
    /// Which part of the record: `seq`, `kind`, or `<kind>.<field>`.
    pub context: String,
    pub what: String,
}

/// The bytes of one record being read.
pub struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Why a value could not be read (the caller adds where).
pub type Fault = &'static str;

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Input { bytes, pos: 0 }
    }

    pub fn at_end(&self) -> bool {
        self.pos == self.bytes.len()
    }

    pub fn byte(&mut self) -> Result<u8, Fault> {
        let b = *self.bytes.get(self.pos).ok_or("the record ends early")?;
        self.pos += 1;
        Ok(b)
    }

    pub fn varint(&mut self) -> Result<u64, Fault> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7F);
            if shift == 63 && bits > 1 {
                return Err("an integer over 64 bits");
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("an integer over 64 bits")
    }

    fn len(&mut self) -> Result<usize, Fault> {
        let n = self.varint()?;
        if n > (self.bytes.len() - self.pos) as u64 {
            return Err("a length past the end of the record");
        }
        Ok(n as usize)
    }

    pub fn str(&mut self) -> Result<&'a str, Fault> {
        let n = self.len()?;
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        std::str::from_utf8(s).map_err(|_| "a string that is not UTF-8")
    }
}

pub fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(s: &str, out: &mut Vec<u8>) {
    put_varint(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

/// A field type's binary encoding, and its view: the value as it lies in a record's bytes,
/// borrowing its strings from them ([`crate::EventView`]), so that a reader which only looks
/// at a record (a replay's fold) allocates nothing for it.
pub trait Bin: Sized {
    /// The value borrowed from a record's bytes (`&str` for a `String`).
    type View<'a>;
    fn put(&self, out: &mut Vec<u8>);
    /// The view of the value at the input's position: every check of [`Bin::get`] made.
    fn get_view<'a>(input: &mut Input<'a>) -> Result<Self::View<'a>, Fault>;
    /// The owned value of a view.
    fn from_view(view: Self::View<'_>) -> Self;
    /// The view of an owned value.
    fn view(&self) -> Self::View<'_>;
    fn get(input: &mut Input<'_>) -> Result<Self, Fault> {
        Self::get_view(input).map(Self::from_view)
    }
}

impl Bin for String {
    type View<'a> = &'a str;
    fn put(&self, out: &mut Vec<u8>) {
        put_str(self, out);
    }
    fn get_view<'a>(input: &mut Input<'a>) -> Result<&'a str, Fault> {
        input.str()
    }
    fn from_view(view: &str) -> Self {
        view.to_string()
    }
    fn view(&self) -> &str {
        self
    }
}

/// Integers and bools are their own views.
macro_rules! plain {
    ($($t:ty),*) => {$(
        impl Bin for $t {
            type View<'a> = $t;
            fn put(&self, out: &mut Vec<u8>) {
                self.put_plain(out);
            }
            fn get_view<'a>(input: &mut Input<'a>) -> Result<$t, Fault> {
                <$t as Plain>::get_plain(input)
            }
            fn from_view(view: $t) -> Self {
                view
            }
            fn view(&self) -> $t {
                *self
            }
        }
    )*};
}
plain!(u64, u32, u16, bool);

/// How a plain value is written and read.
trait Plain: Sized {
    fn put_plain(self, out: &mut Vec<u8>);
    fn get_plain(input: &mut Input<'_>) -> Result<Self, Fault>;
}

impl Plain for u64 {
    fn put_plain(self, out: &mut Vec<u8>) {
        put_varint(self, out);
    }
    fn get_plain(input: &mut Input<'_>) -> Result<Self, Fault> {
        input.varint()
    }
}

impl Plain for u32 {
    fn put_plain(self, out: &mut Vec<u8>) {
        put_varint(u64::from(self), out);
    }
    fn get_plain(input: &mut Input<'_>) -> Result<Self, Fault> {
        u32::try_from(input.varint()?).map_err(|_| "a number over 32 bits")
    }
}

impl Plain for u16 {
    fn put_plain(self, out: &mut Vec<u8>) {
        put_varint(u64::from(self), out);
    }
    fn get_plain(input: &mut Input<'_>) -> Result<Self, Fault> {
        u16::try_from(input.varint()?).map_err(|_| "a number over 16 bits")
    }
}

impl Plain for bool {
    fn put_plain(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
    fn get_plain(input: &mut Input<'_>) -> Result<Self, Fault> {
        match input.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("a bool that is neither 0 nor 1"),
        }
    }
}

impl<T: Bin> Bin for Option<T> {
    type View<'a> = Option<T::View<'a>>;
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.put(out);
            }
        }
    }
    fn get_view<'a>(input: &mut Input<'a>) -> Result<Self::View<'a>, Fault> {
        match input.byte()? {
            0 => Ok(None),
            1 => T::get_view(input).map(Some),
            _ => Err("an option flag that is neither 0 nor 1"),
        }
    }
    fn from_view(view: Self::View<'_>) -> Self {
        view.map(T::from_view)
    }
    fn view(&self) -> Self::View<'_> {
        self.as_ref().map(T::view)
    }
}

/// Lists are in rare kinds only (DNS answers, MTA-STS policies): their views are lists of
/// views.
impl Bin for Vec<String> {
    type View<'a> = Vec<&'a str>;
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(self.len() as u64, out);
        for s in self {
            put_str(s, out);
        }
    }
    fn get_view<'a>(input: &mut Input<'a>) -> Result<Vec<&'a str>, Fault> {
        // Each item takes at least one byte: the count cannot pass the record's end. The list
        // grows as items are read, not from the count, which a damaged record may inflate.
        let n = input.len()?;
        let mut items = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            items.push(input.str()?);
        }
        Ok(items)
    }
    fn from_view(view: Vec<&str>) -> Self {
        view.into_iter().map(str::to_string).collect()
    }
    fn view(&self) -> Vec<&str> {
        self.iter().map(String::as_str).collect()
    }
}

/// Maps are in one rare kind (a run's start).
impl Bin for BTreeMap<String, String> {
    type View<'a> = BTreeMap<&'a str, &'a str>;
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(self.len() as u64, out);
        for (k, v) in self {
            put_str(k, out);
            put_str(v, out);
        }
    }
    fn get_view<'a>(input: &mut Input<'a>) -> Result<Self::View<'a>, Fault> {
        let n = input.len()?;
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let k = input.str()?;
            let v = input.str()?;
            if map.insert(k, v).is_some() {
                return Err("a map with a key twice");
            }
        }
        Ok(map)
    }
    fn from_view(view: Self::View<'_>) -> Self {
        view.into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
    fn view(&self) -> Self::View<'_> {
        self.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }
}

/// An [`SmtpReply`] as it lies in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmtpReplyView<'a> {
    pub command: &'a str,
    pub code: u16,
    pub enhanced: Option<&'a str>,
    pub text: &'a str,
}

impl Bin for SmtpReply {
    type View<'a> = SmtpReplyView<'a>;
    fn put(&self, out: &mut Vec<u8>) {
        self.command.put(out);
        self.reply.code.put(out);
        self.reply.enhanced.put(out);
        self.reply.text.put(out);
    }
    fn get_view<'a>(input: &mut Input<'a>) -> Result<SmtpReplyView<'a>, Fault> {
        Ok(SmtpReplyView {
            command: input.str()?,
            code: u16::get_plain(input)?,
            enhanced: Option::<String>::get_view(input)?,
            text: input.str()?,
        })
    }
    fn from_view(v: SmtpReplyView<'_>) -> Self {
        SmtpReply {
            command: v.command.to_string(),
            reply: Reply {
                code: v.code,
                enhanced: v.enhanced.map(str::to_string),
                text: v.text.to_string(),
            },
        }
    }
    fn view(&self) -> SmtpReplyView<'_> {
        SmtpReplyView {
            command: &self.command,
            code: self.reply.code,
            enhanced: self.reply.enhanced.as_deref(),
            text: &self.reply.text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seq_is_read_from_a_payload_of_either_format() {
        use crate::schema::{Event, Record};
        let record = Record {
            seq: 300,
            ts: 7,
            event: Event::DsnQueued {
                msg: 1,
                about: 2,
                to: "c@d.test".into(),
                reason: "userunknown".into(),
            },
        };
        let json = serde_json::to_vec(&record).unwrap();
        let mut binary = Vec::new();
        record.put_binary(&mut binary);
        assert_eq!(super::seq_of_payload(&json), Some(300));
        assert_eq!(super::seq_of_payload(&binary), Some(300));
        assert_eq!(super::seq_of_payload(b"{\"ts\":1}"), None);
        assert_eq!(super::seq_of_payload(&[MARKER]), None);
    }

    #[test]
    fn varints_round_trip_at_every_width_and_refuse_overflow() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(v, &mut out);
            let mut input = Input::new(&out);
            assert_eq!(input.varint(), Ok(v));
            assert!(input.at_end());
        }
        // Eleven bytes, or a tenth byte with more than the 64th bit.
        let too_long = [0xFFu8; 10];
        assert!(Input::new(&too_long).varint().is_err());
        let mut over = vec![0xFF; 9];
        over.push(0x02);
        assert!(Input::new(&over).varint().is_err());
        assert!(Input::new(&[0x80]).varint().is_err(), "cut short");
    }

    #[test]
    fn lengths_past_the_end_and_bad_utf8_are_refused() {
        assert!(Input::new(&[5, b'a']).str().is_err());
        assert!(Input::new(&[2, 0xC3, 0x28]).str().is_err());
        assert_eq!(Input::new(&[2, b'o', b'k']).str(), Ok("ok"));
        // A list claiming more items than bytes left.
        assert!(Vec::<String>::get(&mut Input::new(&[200, 1])).is_err());
        assert!(bool::get(&mut Input::new(&[2])).is_err());
        assert!(u16::get(&mut Input::new(&[0x80, 0x80, 0x04])).is_err());
    }
}
