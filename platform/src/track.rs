//! Open and click tracking and one-click unsubscribe for the API's mail (sans-IO).
//!
//! * [`Signer`]: HMAC-SHA256-signed tokens (`base64url(payload).base64url(tag)`): a forged,
//!   altered or cut token is refused, and without the key no token can be made or guessed.
//! * [`Tracker`]: what the MTA puts in a bulk message it builds: its HTML links rewritten to
//!   `/t/c/<token>` (a 302 to the link), an open pixel `/t/o/<token>`, and RFC 8058's
//!   `List-Unsubscribe` (the one-click URL `/u/<token>`) with `List-Unsubscribe-Post`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Signs and checks token payloads with one key.
#[derive(Clone)]
pub struct Signer {
    key: ring::hmac::Key,
}

impl Signer {
    pub fn new(secret: &[u8; 32]) -> Signer {
        Signer {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        }
    }

    /// `base64url(payload).base64url(HMAC-SHA256(payload))`.
    pub fn sign(&self, payload: &str) -> String {
        let tag = ring::hmac::sign(&self.key, payload.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// The payload of a token this key signed; None for anything else.
    pub fn check(&self, token: &str) -> Option<String> {
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        ring::hmac::verify(&self.key, &payload, &tag).ok()?;
        String::from_utf8(payload).ok()
    }
}

/// What a tracking token stands for: always the message and the recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    Open {
        message_id: String,
        rcpt: String,
    },
    Click {
        message_id: String,
        rcpt: String,
        url: String,
    },
    Unsubscribe {
        message_id: String,
        rcpt: String,
    },
}

impl Mark {
    /// The message and the recipient the token stands for (every mark has both).
    pub fn message_and_rcpt(&self) -> (&str, &str) {
        match self {
            Mark::Open { message_id, rcpt }
            | Mark::Click {
                message_id, rcpt, ..
            }
            | Mark::Unsubscribe { message_id, rcpt } => (message_id, rcpt),
        }
    }

    fn payload(&self) -> String {
        match self {
            Mark::Open { message_id, rcpt } => format!("O\n{message_id}\n{rcpt}"),
            Mark::Click {
                message_id,
                rcpt,
                url,
            } => format!("C\n{message_id}\n{rcpt}\n{url}"),
            Mark::Unsubscribe { message_id, rcpt } => format!("U\n{message_id}\n{rcpt}"),
        }
    }

    fn from_payload(text: &str) -> Option<Mark> {
        let mut parts = text.splitn(4, '\n');
        let kind = parts.next()?;
        let message_id = parts.next()?.to_string();
        let rcpt = parts.next()?.to_string();
        match (kind, parts.next()) {
            ("O", None) => Some(Mark::Open { message_id, rcpt }),
            ("C", Some(url)) => Some(Mark::Click {
                message_id,
                rcpt,
                url: url.to_string(),
            }),
            ("U", None) => Some(Mark::Unsubscribe { message_id, rcpt }),
            _ => None,
        }
    }
}

/// The MTA's tracking: where its URLs point and the key its tokens are signed with.
#[derive(Clone)]
pub struct Tracker {
    signer: Signer,
    /// `http://127.0.0.1:P`: the API listener as recipients reach it (no trailing slash).
    base: String,
    /// Does the MTA take mail to `unsubscribe@<sender domain>` (`mailsim mta --mx`)?
    mailto: bool,
}

/// The local part of the sender's address that takes RFC 2369 mailto unsubscribes.
pub const MAILTO_LOCAL: &str = "unsubscribe";

impl Tracker {
    pub fn new(secret: &[u8; 32], base: &str) -> Tracker {
        Tracker {
            signer: Signer::new(secret),
            base: base.trim_end_matches('/').to_string(),
            mailto: false,
        }
    }

    /// Also offer unsubscription by mail (RFC 2369): `unsubscribe@<envelope sender's domain>`,
    /// the token in the subject.
    pub fn with_mailto(self) -> Tracker {
        Tracker {
            mailto: true,
            ..self
        }
    }

    /// The `List-Unsubscribe` value for `rcpt`'s copy of `message_id`: the one-click URL, and
    /// with [`Tracker::with_mailto`] a mailto URL at `sender_domain`.
    pub fn list_unsubscribe(&self, message_id: &str, rcpt: &str, sender_domain: &str) -> String {
        let url = self.unsubscribe_url(message_id, rcpt);
        if !self.mailto || sender_domain.is_empty() {
            return format!("<{url}>");
        }
        let token = self.token(&Mark::Unsubscribe {
            message_id: message_id.into(),
            rcpt: rcpt.into(),
        });
        format!("<{url}>, <mailto:{MAILTO_LOCAL}@{sender_domain}?subject=unsubscribe%20{token}>")
    }

    /// The unsubscribe a mail's subject names (`unsubscribe <token>`, or the token alone), when
    /// the token is one of this MTA's unsubscribe tokens.
    pub fn mailto_subject(&self, subject: &str) -> Option<Mark> {
        // A client that did not decode the mailto URL's subject leaves %20 in it.
        let subject = subject.replace("%20", " ");
        subject
            .split_whitespace()
            .filter_map(|w| self.check(w))
            .find(|m| matches!(m, Mark::Unsubscribe { .. }))
    }

    pub fn token(&self, mark: &Mark) -> String {
        self.signer.sign(&mark.payload())
    }

    pub fn check(&self, token: &str) -> Option<Mark> {
        Mark::from_payload(&self.signer.check(token)?)
    }

    /// The one-click unsubscribe URL of `rcpt` for `message_id`.
    pub fn unsubscribe_url(&self, message_id: &str, rcpt: &str) -> String {
        let token = self.token(&Mark::Unsubscribe {
            message_id: message_id.into(),
            rcpt: rcpt.into(),
        });
        format!("{}/u/{token}", self.base)
    }

    /// `html` with the `href` of every `<a>` and `<area>` tag that names an http(s) URL
    /// pointing at the click tracker instead (the URL as a browser reads it: entities decoded),
    /// and the open pixel before the last `</body>` (or at the end). Other tags (`<link>`,
    /// `<base>`), text that only looks like an attribute, and URLs with white space or control
    /// characters inside are left alone.
    pub fn rewrite_html(&self, html: &str, message_id: &str, rcpt: &str) -> String {
        let lower = html.to_ascii_lowercase();
        let mut out = String::with_capacity(html.len() + 512);
        let mut at = 0;
        let mut search = 0;
        while let Some(lt) = lower[search..].find('<').map(|i| search + i) {
            let name_end = lower[lt + 1..]
                .find(|c: char| !c.is_ascii_alphanumeric())
                .map_or(lower.len(), |i| lt + 1 + i);
            let tag = &lower[lt + 1..name_end];
            let Some(gt) = tag_end(&lower, name_end) else {
                break;
            };
            search = gt + 1;
            if tag != "a" && tag != "area" {
                continue;
            }
            let Some((value_start, value_end)) = href_value(&lower, name_end, gt) else {
                continue;
            };
            let url = html_escape::decode_html_entities(&html[value_start..value_end]).into_owned();
            let url = url.trim();
            let scheme = url.split(':').next().unwrap_or("").to_ascii_lowercase();
            if !(scheme == "http" || scheme == "https")
                || url.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                continue;
            }
            let token = self.token(&Mark::Click {
                message_id: message_id.into(),
                rcpt: rcpt.into(),
                url: url.to_string(),
            });
            out.push_str(&html[at..value_start]);
            out.push_str(&format!("{}/t/c/{token}", self.base));
            at = value_end;
        }
        out.push_str(&html[at..]);
        let token = self.token(&Mark::Open {
            message_id: message_id.into(),
            rcpt: rcpt.into(),
        });
        let pixel = format!(
            "<img src=\"{}/t/o/{token}\" width=\"1\" height=\"1\" alt=\"\">",
            self.base
        );
        match out.to_ascii_lowercase().rfind("</body>") {
            Some(i) => out.insert_str(i, &pixel),
            None => out.push_str(&pixel),
        }
        out
    }
}

/// Where the tag whose attributes start at `from` ends (its `>`): a `>` inside a quoted
/// attribute value (`<a title=">" href=...>`) does not end it (HTML's tokenizer; an
/// independent review found such links left untracked).
fn tag_end(lower: &str, from: usize) -> Option<usize> {
    let bytes = lower.as_bytes();
    let mut i = from;
    let mut after_equals = false;
    while i < bytes.len() {
        match bytes[i] {
            b'>' => return Some(i),
            q @ (b'"' | b'\'') if after_equals => {
                i += 1 + lower[i + 1..].find(q as char)?;
                after_equals = false;
            }
            b'=' => after_equals = true,
            c if c.is_ascii_whitespace() => {}
            _ => after_equals = false,
        }
        i += 1;
    }
    None
}

/// Where the value of the `href` attribute is within a tag's attributes (`lower[from..to]`, the
/// tag lower-cased): quoted or not, with white space around the `=` (HTML's attribute syntax).
fn href_value(lower: &str, from: usize, to: usize) -> Option<(usize, usize)> {
    let attrs = &lower[from..to];
    let mut i = 0;
    let bytes = attrs.as_bytes();
    while i < bytes.len() {
        // An attribute name starts after white space or a `/` (`<a/href=...>`: HTML's
        // tokenizer reads a `/` not before `>` as a separator).
        let separator = |b: u8| b.is_ascii_whitespace() || b == b'/';
        if !separator(bytes[i]) {
            i += 1;
            continue;
        }
        while i < bytes.len() && separator(bytes[i]) {
            i += 1;
        }
        let name_start = i;
        while i < bytes.len() && !separator(bytes[i]) && bytes[i] != b'=' && bytes[i] != b'>' {
            i += 1;
        }
        let name = &attrs[name_start..i];
        let mut j = i;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'=' {
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        let (start, end) = match bytes.get(j) {
            Some(q @ (b'"' | b'\'')) => {
                let close = attrs[j + 1..].find(*q as char)? + j + 1;
                (j + 1, close)
            }
            Some(_) => {
                let end = attrs[j..]
                    .find(|c: char| c.is_ascii_whitespace())
                    .map_or(attrs.len(), |k| j + k);
                (j, end)
            }
            None => return None,
        };
        if name == "href" {
            return Some((from + start, from + end));
        }
        i = end;
    }
    None
}

/// How often tracking hits are recorded: per link, up to [`Repeats::BURST`] at once, then one
/// each [`Repeats::INTERVAL_MS`]; and per recipient, over all the links of the mail to them, up
/// to [`Repeats::RCPT_BURST`] at once, then one each [`Repeats::RCPT_INTERVAL_MS`] (the generic
/// cell rate algorithm: a token bucket kept as the time its next hit is due). A reload, a proxy
/// fetching an image again or a reader clicking twice is recorded; a client requesting valid
/// links in a loop is answered but grows the event log and the lists' counters by at most ten
/// hits a minute per recipient whose links it holds (an independent review grew the log by
/// about 185 bytes a request, unauthenticated). Only a token the MTA signed gets here.
pub struct Repeats {
    seen: std::sync::Mutex<Seen>,
}

/// The buckets by a 128-bit hash of their key (the link's token payload, or the recipient).
struct Seen {
    due: std::collections::HashMap<u128, Due>,
    /// The table is pruned of buckets full again when it reaches this many.
    prune_at: usize,
}

impl Default for Repeats {
    fn default() -> Self {
        Repeats {
            seen: std::sync::Mutex::new(Seen {
                due: std::collections::HashMap::new(),
                prune_at: Self::PRUNE_AT,
            }),
        }
    }
}

#[derive(Clone, Copy)]
struct Due {
    at_ms: u64,
    refusing: bool,
}

/// What [`Repeats::hit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// Record it.
    Recorded,
    /// Do not: the first refused since the link's last recorded hit (worth a log line).
    FirstRefused,
    /// Do not: refused again.
    Refused,
}

fn bucket_key(kind: u8, text: &str) -> u128 {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        &[&[kind][..], text.as_bytes()].concat(),
    );
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_be_bytes(first)
}

impl Repeats {
    /// Hits of one link recorded at once.
    pub const BURST: u64 = 10;
    /// Then one hit of the link per minute.
    pub const INTERVAL_MS: u64 = 60_000;
    /// Hits of one recipient's links recorded at once.
    pub const RCPT_BURST: u64 = 100;
    /// Then ten a minute.
    pub const RCPT_INTERVAL_MS: u64 = 6_000;
    /// The table is pruned first at this many buckets, then at twice what a pruning leaves.
    const PRUNE_AT: usize = 65_536;

    /// A hit of `mark`'s link at `now_ms`: whether it is recorded.
    pub fn hit(&self, mark: &Mark, now_ms: u64) -> Hit {
        let rcpt = mark.message_and_rcpt().1.to_ascii_lowercase();
        let buckets = [
            (
                bucket_key(0, &mark.payload()),
                Self::BURST,
                Self::INTERVAL_MS,
            ),
            (
                bucket_key(1, &rcpt),
                Self::RCPT_BURST,
                Self::RCPT_INTERVAL_MS,
            ),
        ];
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.due.len() >= seen.prune_at {
            seen.due.retain(|_, d| d.at_ms > now_ms);
            seen.prune_at = Self::PRUNE_AT.max(2 * seen.due.len());
        }
        // Each bucket's due time: one beyond a full bucket's wait (a clock set back) is read as
        // that wait, so a link is held back at most one interval more.
        let fresh = Due {
            at_ms: now_ms,
            refusing: false,
        };
        let mut allowed = true;
        let mut due_at = [0u64; 2];
        for (i, (key, burst, interval)) in buckets.iter().enumerate() {
            let due = seen.due.get(key).copied().unwrap_or(fresh);
            due_at[i] = due.at_ms.clamp(now_ms, now_ms + burst * interval);
            allowed &= due_at[i] - now_ms <= (burst - 1) * interval;
        }
        for (i, (key, _, interval)) in buckets.iter().enumerate() {
            let taken = if allowed { *interval } else { 0 };
            seen.due.entry(*key).or_insert(fresh).at_ms = due_at[i] + taken;
        }
        let link = seen.due.entry(buckets[0].0).or_insert(fresh);
        if !allowed {
            let first = !std::mem::replace(&mut link.refusing, true);
            return if first {
                Hit::FirstRefused
            } else {
                Hit::Refused
            };
        }
        link.refusing = false;
        Hit::Recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_forgeries_are_refused() {
        let t = Tracker::new(&[7; 32], "http://127.0.0.1:8025/");
        for mark in [
            Mark::Open {
                message_id: "<m@s.test>".into(),
                rcpt: "a@b.test".into(),
            },
            Mark::Click {
                message_id: "<m@s.test>".into(),
                rcpt: "a@b.test".into(),
                url: "https://shop.test/a?b=1&c=2".into(),
            },
            Mark::Unsubscribe {
                message_id: "<m@s.test>".into(),
                rcpt: "a@b.test".into(),
            },
        ] {
            let token = t.token(&mark);
            assert_eq!(t.check(&token), Some(mark));
            assert_eq!(Tracker::new(&[8; 32], "x").check(&token), None);
            let (p, tag) = token.split_once('.').unwrap();
            let other = URL_SAFE_NO_PAD.encode("O\n<m@s.test>\nsomeone@else.test");
            assert_eq!(t.check(&format!("{other}.{tag}")), None);
            assert_eq!(t.check(&format!("{p}.{}", &tag[..8])), None);
        }
        assert_eq!(t.check("garbage"), None);
        assert!(
            t.unsubscribe_url("<m@s.test>", "a@b.test")
                .starts_with("http://127.0.0.1:8025/u/")
        );
    }

    #[test]
    fn the_mailto_unsubscribe_carries_a_token_only_this_key_accepts() {
        let t = Tracker::new(&[7; 32], "http://127.0.0.1:8025");
        let plain = t.list_unsubscribe("<m@s.test>", "a@b.test", "s.test");
        assert!(plain.starts_with("<http://127.0.0.1:8025/u/") && !plain.contains("mailto"));
        let t = t.with_mailto();
        let value = t.list_unsubscribe("<m@s.test>", "a@b.test", "s.test");
        let (https, mailto) = value.split_once(", ").unwrap();
        assert!(https.starts_with("<http://"), "{value}");
        let subject = mailto
            .strip_prefix("<mailto:unsubscribe@s.test?subject=")
            .and_then(|m| m.strip_suffix('>'))
            .unwrap();
        let want = Some(Mark::Unsubscribe {
            message_id: "<m@s.test>".into(),
            rcpt: "a@b.test".into(),
        });
        // As sent: decoded by the client, or left encoded; with Re: or anything around it.
        assert_eq!(t.mailto_subject(&subject.replace("%20", " ")), want);
        assert_eq!(t.mailto_subject(subject), want);
        assert_eq!(
            t.mailto_subject(&format!("Re: {}", subject.replace("%20", " "))),
            want
        );
        assert_eq!(t.mailto_subject("unsubscribe"), None);
        assert_eq!(Tracker::new(&[8; 32], "x").mailto_subject(subject), None);
        // An open or click token is not an unsubscribe.
        let open = t.token(&Mark::Open {
            message_id: "<m@s.test>".into(),
            rcpt: "a@b.test".into(),
        });
        assert_eq!(t.mailto_subject(&format!("unsubscribe {open}")), None);
    }

    #[test]
    fn links_are_rewritten_and_the_pixel_added() {
        let t = Tracker::new(&[7; 32], "http://127.0.0.1:8025");
        let html = "<html><head><link rel=stylesheet href=\"https://cdn.test/s.css\"><base href=\"https://shop.test/\"></head>\
                    <body><a HREF=\"https://shop.test/x?a=1&amp;b=2\">x</a> \
                    <a href='mailto:help@shop.test'>help</a> <a href=#top>top</a> \
                    <a class=b href = https://shop.test/p&#x2f;q>unquoted</a> <p data-href=\"https://no.test/\">href=\"https://no.test/\"</p></body></html>";
        let out = t.rewrite_html(html, "<m@s.test>", "a@b.test");
        let tracked = out
            .split("HREF=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let token = tracked.strip_prefix("http://127.0.0.1:8025/t/c/").unwrap();
        assert_eq!(
            t.check(token),
            Some(Mark::Click {
                message_id: "<m@s.test>".into(),
                rcpt: "a@b.test".into(),
                url: "https://shop.test/x?a=1&b=2".into()
            })
        );
        assert!(out.contains("href='mailto:help@shop.test'"), "{out}");
        assert!(
            out.contains("href=\"https://cdn.test/s.css\""),
            "a <link> is not a click: {out}"
        );
        assert!(out.contains("<base href=\"https://shop.test/\">"), "{out}");
        assert!(
            out.contains("data-href=\"https://no.test/\">href=\"https://no.test/\""),
            "{out}"
        );
        let unquoted = out
            .split("href = ")
            .nth(1)
            .unwrap()
            .split('>')
            .next()
            .unwrap();
        let token = unquoted.strip_prefix("http://127.0.0.1:8025/t/c/").unwrap();
        assert!(
            matches!(t.check(token), Some(Mark::Click { url, .. }) if url == "https://shop.test/p/q")
        );
        assert!(out.contains("href=#top"), "{out}");
        assert!(out.contains("alt=\"\"></body></html>"), "{out}");
        // A `>` in a quoted value before href, and `/` between the name and href: tracked as
        // a browser reads them (an independent review found both left alone).
        let out = t.rewrite_html(
            "<a title=\">\" href=\"https://shop.test/1\">1</a><a/href=\"https://shop.test/2\">2</a>",
            "<m@s.test>",
            "a@b.test",
        );
        assert!(!out.contains("shop.test"), "{out}");
        assert_eq!(out.matches("/t/c/").count(), 2, "{out}");
        assert!(
            out.starts_with("<a title=\">\" href=\"http://127.0.0.1:8025/t/c/"),
            "{out}"
        );
    }

    #[test]
    fn a_links_hits_are_recorded_ten_at_once_then_one_a_minute() {
        let repeats = Repeats::default();
        let open = Mark::Open {
            message_id: "<m@s.test>".into(),
            rcpt: "a@b.test".into(),
        };
        let other = Mark::Open {
            message_id: "<n@s.test>".into(),
            rcpt: "a@b.test".into(),
        };
        let t0 = 1_000_000_000_000;
        for _ in 0..Repeats::BURST {
            assert_eq!(repeats.hit(&open, t0), Hit::Recorded);
        }
        assert_eq!(repeats.hit(&open, t0), Hit::FirstRefused);
        assert_eq!(repeats.hit(&open, t0 + 1), Hit::Refused);
        // Another link has a bucket of its own.
        assert_eq!(repeats.hit(&other, t0), Hit::Recorded);
        // A minute on, one more; then refused again until the next minute.
        assert_eq!(repeats.hit(&open, t0 + Repeats::INTERVAL_MS), Hit::Recorded);
        assert_eq!(
            repeats.hit(&open, t0 + Repeats::INTERVAL_MS + 1),
            Hit::FirstRefused
        );
        // Ten minutes of quiet refill the whole burst.
        let later = t0 + 11 * Repeats::INTERVAL_MS;
        for _ in 0..Repeats::BURST {
            assert_eq!(repeats.hit(&open, later), Hit::Recorded);
        }
        assert_eq!(repeats.hit(&open, later), Hit::FirstRefused);
        // A clock set back by a day holds the link back one interval, not a day.
        let back = later - 86_400_000;
        assert_eq!(repeats.hit(&open, back), Hit::Refused);
        assert_eq!(
            repeats.hit(&open, back + Repeats::INTERVAL_MS),
            Hit::Recorded
        );
    }

    /// One recipient's links together: 100 hits at once over many links, then ten a minute.
    #[test]
    fn a_recipients_links_together_are_recorded_a_hundred_at_once_then_ten_a_minute() {
        let repeats = Repeats::default();
        let link = |i: u64, rcpt: &str| Mark::Click {
            message_id: format!("<{i}@s.test>"),
            rcpt: rcpt.into(),
            url: "https://shop.test/".into(),
        };
        let t0 = 5_000_000;
        for i in 0..Repeats::RCPT_BURST {
            assert_eq!(repeats.hit(&link(i, "a@b.test"), t0), Hit::Recorded, "{i}");
        }
        assert_eq!(repeats.hit(&link(500, "A@b.test"), t0), Hit::FirstRefused);
        // A refusal by the recipient's bucket takes nothing from the link's.
        assert_eq!(repeats.hit(&link(501, "c@b.test"), t0), Hit::Recorded);
        let later = t0 + Repeats::RCPT_INTERVAL_MS;
        assert_eq!(repeats.hit(&link(500, "a@b.test"), later), Hit::Recorded);
        assert_eq!(
            repeats.hit(&link(502, "a@b.test"), later),
            Hit::FirstRefused
        );
    }
}
