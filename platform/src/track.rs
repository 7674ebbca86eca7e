//! Open and click tracking and one-click unsubscribe for the API's mail (sans-IO).
//!
//! * [`Signer`]: HMAC-SHA256-signed tokens (`base64url(payload).base64url(tag)`): a forged,
//!   altered or cut token is refused, and without the key no token can be made or guessed.
//! * [`Tracker`]: what the MTA puts in a bulk message it builds: its HTML links rewritten to
//!   `/t/c/<token>` (a 302 to the link), an open pixel `/t/o/<token>`, and RFC 8058's
//!   `List-Unsubscribe` (the one-click URL `/u/<token>` and a mailto) with
//!   `List-Unsubscribe-Post`.

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
}

impl Tracker {
    pub fn new(secret: &[u8; 32], base: &str) -> Tracker {
        Tracker {
            signer: Signer::new(secret),
            base: base.trim_end_matches('/').to_string(),
        }
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

    /// `html` with every `href` to an http(s) URL pointing at the click tracker instead, and
    /// the open pixel at the end of the body (before `</body>` when there is one).
    pub fn rewrite_html(&self, html: &str, message_id: &str, rcpt: &str) -> String {
        let mut out = String::with_capacity(html.len() + 512);
        let lower = html.to_ascii_lowercase();
        let mut at = 0;
        while let Some(found) = lower[at..].find("href=") {
            let start = at + found + "href=".len();
            let Some(quote) = html[start..]
                .chars()
                .next()
                .filter(|c| *c == '"' || *c == '\'')
            else {
                out.push_str(&html[at..start]);
                at = start;
                continue;
            };
            let value_start = start + 1;
            let Some(len) = html[value_start..].find(quote) else {
                break;
            };
            let value = &html[value_start..value_start + len];
            out.push_str(&html[at..value_start]);
            let url = value.replace("&amp;", "&");
            let scheme = url.split(':').next().unwrap_or("").to_ascii_lowercase();
            if scheme == "http" || scheme == "https" {
                let token = self.token(&Mark::Click {
                    message_id: message_id.into(),
                    rcpt: rcpt.into(),
                    url,
                });
                out.push_str(&format!("{}/t/c/{token}", self.base));
            } else {
                out.push_str(value);
            }
            at = value_start + len;
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
    fn links_are_rewritten_and_the_pixel_added() {
        let t = Tracker::new(&[7; 32], "http://127.0.0.1:8025");
        let html = "<html><body><a HREF=\"https://shop.test/x?a=1&amp;b=2\">x</a> \
                    <a href='mailto:help@shop.test'>help</a> <a href=#top>top</a></body></html>";
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
        assert!(out.contains("href=#top"), "{out}");
        assert!(out.contains("alt=\"\"></body></html>"), "{out}");
    }
}
