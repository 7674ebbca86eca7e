//! Simulated recipients: which segment of the list each address belongs to, what its owner
//! does with a message (open, click, unsubscribe, complain; less of everything in the spam
//! folder), and the URLs in the message those actions use.
//!
//! Rates of the presets are mailsim's assumptions, not measurements: `engaged` opens half of
//! what reaches the inbox, `occasional` 15 %, `dormant` almost nothing and complains the most
//! (people who forgot they subscribed press "spam"). A scenario sets its own rates per segment.

use crate::scenario::{Scenario, Segment, SegmentKind};
use crate::world::{chance, mix};

/// What one segment's recipients do, in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    pub name: String,
    pub kind: SegmentKind,
    /// Of the messages in the inbox (a tenth of it in the spam folder).
    pub open: f64,
    /// Of the opened messages.
    pub click: f64,
    /// Of the opened messages.
    pub unsubscribe: f64,
    /// Of the messages in the inbox.
    pub complaint: f64,
}

/// (open, click, unsubscribe, complaint) of a named preset.
pub fn preset(name: &str) -> Option<(f64, f64, f64, f64)> {
    match name {
        "engaged" => Some((50.0, 20.0, 0.1, 0.01)),
        "occasional" => Some((15.0, 5.0, 0.3, 0.05)),
        "dormant" => Some((0.5, 0.0, 0.5, 0.3)),
        _ => None,
    }
}

impl Rates {
    fn of(s: &Segment) -> Rates {
        let p = preset(&s.name).unwrap_or((0.0, 0.0, 0.0, 0.0));
        let trap = s.kind != SegmentKind::Recipient;
        let pick = |v: Option<f64>, d: f64| if trap { 0.0 } else { v.unwrap_or(d) };
        Rates {
            name: s.name.clone(),
            kind: s.kind,
            open: pick(s.open_percent, p.0),
            click: pick(s.click_percent, p.1),
            unsubscribe: pick(s.unsubscribe_percent, p.2),
            complaint: pick(s.complaint_percent, p.3),
        }
    }

    fn occasional() -> Rates {
        let (open, click, unsubscribe, complaint) = preset("occasional").unwrap_or_default();
        Rates {
            name: "occasional".into(),
            kind: SegmentKind::Recipient,
            open,
            click,
            unsubscribe,
            complaint,
        }
    }
}

/// Something a recipient does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Open,
    Click,
    Unsubscribe,
    Complaint,
}

/// The list's recipients by segment.
#[derive(Debug, Clone)]
pub struct Recipients {
    seed: u64,
    /// Upper bound of each segment's share (cumulative percent).
    segments: Vec<(f64, Rates)>,
    rest: Rates,
    /// Recipients act within this many seconds of delivery.
    within_s: u64,
}

impl Recipients {
    pub fn from_scenario(scenario: &Scenario) -> Recipients {
        let mut upper = 0.0;
        let segments = scenario
            .segments
            .iter()
            .map(|s| {
                upper += s.get_ref().percent;
                (upper, Rates::of(s.get_ref()))
            })
            .collect();
        Recipients {
            seed: scenario.seed,
            segments,
            rest: Rates::occasional(),
            within_s: scenario
                .reputation
                .as_ref()
                .and_then(|r| r.act_within_s)
                .unwrap_or(ACT_WITHIN_S)
                .max(1),
        }
    }

    /// The segment of an address (stable for a seed).
    pub fn of(&self, rcpt: &str) -> &Rates {
        let x = (mix(self.seed, &format!("segment:{}", rcpt.to_ascii_lowercase())) % 1_000_000)
            as f64
            / 10_000.0;
        self.segments
            .iter()
            .find(|(upper, _)| x < *upper)
            .map_or(&self.rest, |(_, r)| r)
    }

    /// What the recipient does with a message placed at `now_ms`, and when (clock ms).
    /// `key` identifies the copy (recipient and Message-ID) for the draws.
    pub fn actions(&self, rcpt: &str, key: &str, spam: bool, now_ms: u64) -> Vec<(Act, u64)> {
        let r = self.of(rcpt);
        let seed = self.seed;
        let mut out = Vec::new();
        let open = if spam { r.open / 10.0 } else { r.open };
        // Delays stable per copy, scaled to the window recipients act in (by default an open
        // 5 minutes to 12 hours after delivery, a click seconds after the open).
        let w = self.within_s;
        let delay = |tag: &str, min_s: u64, spread_s: u64| {
            let scale =
                |s: u64| (u128::from(s) * 1000 * u128::from(w) / u128::from(ACT_WITHIN_S)) as u64;
            scale(min_s) + mix(seed, &format!("{tag}-delay:{key}")) % scale(spread_s).max(1)
        };
        if chance(seed, &format!("open:{key}"), open) {
            let opened = now_ms + delay("open", 300, 12 * 3600 - 300);
            out.push((Act::Open, opened));
            if chance(seed, &format!("click:{key}"), r.click) {
                out.push((Act::Click, opened + delay("click", 5, 120)));
            }
            if chance(seed, &format!("unsubscribe:{key}"), r.unsubscribe) {
                out.push((Act::Unsubscribe, opened + delay("unsubscribe", 10, 300)));
                return out;
            }
        }
        if !spam && chance(seed, &format!("complaint:{key}"), r.complaint) {
            out.push((
                Act::Complaint,
                now_ms + delay("complaint", 600, 12 * 3600 - 600),
            ));
        }
        out
    }
}

/// Images an open loads at most.
pub const IMAGES_MAX: usize = 10;

/// The default window recipients act in after delivery (12 hours).
pub const ACT_WITHIN_S: u64 = 43_200;

/// How a message offers unsubscription (RFC 2369, RFC 8058).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsubscribe {
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` with this URI: a POST.
    OneClick(String),
    /// A web page (GET).
    Web(String),
    /// A mail to this address.
    Mailto(String),
}

/// The URLs of a message a recipient acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// The images of the HTML part (loaded when the message is opened).
    pub images: Vec<String>,
    /// The first link of the HTML part that is not an unsubscribe link.
    pub link: Option<String>,
    pub unsubscribe: Option<Unsubscribe>,
}

impl Links {
    pub fn of(message: &[u8]) -> Links {
        Links::of_parsed(mailsim_bounce::message::parse(message).get())
    }

    /// The links of a message already parsed (None: one that could not be parsed has none).
    pub fn of_parsed(m: Option<&mail_parser::Message<'_>>) -> Links {
        let Some(m) = m else {
            return Links::default();
        };
        let mut links = Links::default();
        for part in &m.parts {
            if let mail_parser::PartType::Html(html) = &part.body {
                links.images.extend(attribute_values(html, "img", "src"));
                // A mail client loads a message's first images, not an unbounded number.
                links.images.truncate(IMAGES_MAX);
                if links.link.is_none() {
                    links.link = attribute_values(html, "a", "href")
                        .into_iter()
                        .find(|u| u.starts_with("http") && !u.contains("unsubscribe"));
                }
            }
        }
        let header = |name: &str| {
            m.header_raw(name)
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        let one_click = header("List-Unsubscribe-Post")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("List-Unsubscribe=One-Click"));
        if let Some(value) = header("List-Unsubscribe") {
            let uris: Vec<String> = value
                .split('<')
                .skip(1)
                .filter_map(|s| s.split_once('>').map(|(u, _)| u.trim().to_string()))
                .collect();
            let web = uris.iter().find(|u| {
                let l = u.to_ascii_lowercase();
                l.starts_with("https://") || l.starts_with("http://")
            });
            let mailto = uris
                .iter()
                .find(|u| u.to_ascii_lowercase().starts_with("mailto:"));
            links.unsubscribe = match (web, mailto) {
                (Some(u), _) if one_click => Some(Unsubscribe::OneClick(u.clone())),
                (_, Some(m)) => Some(Unsubscribe::Mailto(m[7..].to_string())),
                (Some(u), None) => Some(Unsubscribe::Web(u.clone())),
                (None, None) => None,
            };
        }
        links
    }

    /// RFC 8058: an HTTPS URI in List-Unsubscribe and the one-click POST header.
    pub fn one_click(&self) -> bool {
        matches!(&self.unsubscribe, Some(Unsubscribe::OneClick(u)) if u.to_ascii_lowercase().starts_with("https://"))
    }
}

/// The values of `attr` on every `tag` element of an HTML text (a scan, enough for the
/// attributes of mail HTML: quoted with " or ', or bare).
fn attribute_values(html: &str, tag: &str, attr: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let open = format!("<{tag}");
    let mut from = 0;
    while let Some(at) = lower[from..].find(&open) {
        let start = from + at + open.len();
        let end = lower[start..].find('>').map_or(lower.len(), |e| start + e);
        from = end;
        if !lower[start..].starts_with(|c: char| c.is_ascii_whitespace()) {
            continue;
        }
        let element = &lower[start..end];
        let needle = format!("{attr}=");
        let Some(a) = element.find(&needle) else {
            continue;
        };
        let v = start + a + needle.len();
        let raw = &html[v..end];
        let value = match raw.chars().next() {
            Some(q @ ('"' | '\'')) => raw[1..].split(q).next().unwrap_or(""),
            _ => raw
                .split(|c: char| c.is_ascii_whitespace())
                .next()
                .unwrap_or(""),
        };
        out.push(value.replace("&amp;", "&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_read_from_the_html_part_and_the_list_headers() {
        let msg = b"From: n@s.test\r\nList-Unsubscribe: <https://127.0.0.1:8443/u/T>,\r\n <mailto:unsub@s.test?subject=unsubscribe>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>hi <IMG alt='' SRC='http://127.0.0.1:8080/t/o/A'> <a href=\"http://127.0.0.1:8080/t/c/B?x=1&amp;y=2\">read</a> <a href=\"http://127.0.0.1:8080/unsubscribe\">stop</a></p>\r\n--b--\r\n";
        let l = Links::of(msg);
        assert_eq!(l.images, ["http://127.0.0.1:8080/t/o/A"]);
        assert_eq!(
            l.link.as_deref(),
            Some("http://127.0.0.1:8080/t/c/B?x=1&y=2")
        );
        assert_eq!(
            l.unsubscribe,
            Some(Unsubscribe::OneClick("https://127.0.0.1:8443/u/T".into()))
        );
        assert!(l.one_click());
        let mailto = b"From: n@s.test\r\nList-Unsubscribe: <mailto:unsub@s.test>\r\n\r\nhi\r\n";
        assert_eq!(
            Links::of(mailto).unsubscribe,
            Some(Unsubscribe::Mailto("unsub@s.test".into()))
        );
        assert!(!Links::of(mailto).one_click());
    }

    #[test]
    fn segments_split_the_list_and_set_what_recipients_do() {
        let text = "name = \"e\"\nseed = 3\n[[sender]]\ndomain = \"s.test\"\n[[domain]]\nname = \"r.test\"\n[campaign]\nmessages = 1\n[reputation]\n[[segment]]\nname = \"engaged\"\npercent = 30\n[[segment]]\nname = \"traps\"\nkind = \"pristine-trap\"\npercent = 10\n";
        let sc = Scenario::parse(text, std::path::Path::new("e.toml")).unwrap();
        let r = Recipients::from_scenario(&sc);
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..10_000 {
            *counts
                .entry(r.of(&format!("user{i}@r.test")).name.clone())
                .or_insert(0) += 1;
        }
        assert!((2_800..3_200).contains(&counts["engaged"]), "{counts:?}");
        assert!((800..1_200).contains(&counts["traps"]), "{counts:?}");
        assert!((5_700..6_300).contains(&counts["occasional"]), "{counts:?}");
        // Traps never act; the engaged open about half of their inbox mail, a tenth of that
        // in the spam folder.
        let opens = |name: &str, spam: bool| {
            (0..10_000)
                .map(|i| format!("user{i}@r.test"))
                .filter(|a| r.of(a).name == name)
                .flat_map(|a| r.actions(&a, &format!("{a}|m"), spam, 0))
                .filter(|(act, _)| *act == Act::Open)
                .count()
        };
        assert_eq!(opens("traps", false), 0);
        let (inbox, spam) = (opens("engaged", false), opens("engaged", true));
        assert!((1_300..1_700).contains(&inbox), "{inbox}");
        assert!(spam < inbox / 5, "{spam} {inbox}");
    }
}
