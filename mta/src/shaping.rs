//! Traffic shaping rules, like KumoMTA's shaping file: per destination (a domain, a domain
//! suffix, or the suffix of its MX host names, so one rule covers all of a provider's domains)
//! a connection limit, messages per connection, a message rate, and actions driven by the
//! replies the destination gives (a pattern that suspends it for a while, or lowers its
//! connection limit).
//!
//! ```toml
//! [[destination]]
//! domains = ["gmail.test", "*.googlemail.test"]   # exact, or "*." + suffix
//! mx_suffixes = [".google.test"]                   # or by the MX hosts' names
//! connection_limit = 10
//! messages_per_connection = 100
//! messages_per_s = 50.0
//! tls = "required"        # "opportunistic" (the default), "required" or "off"
//! [[destination.on_reply]]
//! match = "4.7.28"        # a substring of "CODE ENHANCED TEXT", case-insensitive
//! suspend_s = 600         # hold the destination this long
//! # connection_limit = 1  # or (also) lower its connection limit to this
//! ```

use serde::Deserialize;

/// A shaping file: the rules, first match wins.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shaping {
    #[serde(default, rename = "destination")]
    pub destinations: Vec<Rule>,
}

/// One destination's shaping.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub mx_suffixes: Vec<String>,
    pub connection_limit: Option<usize>,
    pub messages_per_connection: Option<usize>,
    pub messages_per_s: Option<f64>,
    /// STARTTLS to this destination (the MTA's `tls` when not given).
    pub tls: Option<TlsMode>,
    #[serde(default)]
    pub on_reply: Vec<ReplyAction>,
}

/// Whether outbound sessions use STARTTLS (RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Never.
    Off,
    /// When the server offers it, with any certificate (RFC 7435); in clear when it does not,
    /// and again in clear on a new connection when the handshake fails (as Postfix's `may`).
    #[default]
    Opportunistic,
    /// Always: a server that does not offer it, or whose handshake fails, gets no mail (the
    /// certificate is not checked: Postfix's `encrypt`).
    Required,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::Opportunistic => "opportunistic",
            TlsMode::Required => "required",
        }
    }
}

/// What a reply matching `pattern` does to its destination.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyAction {
    #[serde(rename = "match")]
    pub pattern: String,
    pub suspend_s: Option<u64>,
    pub connection_limit: Option<usize>,
}

impl Shaping {
    /// Read a shaping file's text; errors name the file, line and field.
    pub fn parse(text: &str, file: &str) -> Result<Shaping, String> {
        let shaping: Shaping = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(n) => format!("{file}:{n}: {}", e.message()),
                None => format!("{file}: {}", e.message()),
            }
        })?;
        for (i, rule) in shaping.destinations.iter().enumerate() {
            let at = |field: &str, why: &str| {
                format!(
                    "{file}:{}: destination[{i}].{field}: {why}",
                    field_line(text, i, None, field)
                )
            };
            if rule.domains.is_empty() && rule.mx_suffixes.is_empty() {
                return Err(at("domains", "give domains or mx_suffixes"));
            }
            for d in &rule.domains {
                let name = d.strip_prefix("*.").unwrap_or(d);
                if !is_name(name) {
                    return Err(at(
                        "domains",
                        &format!("{d:?} is not a domain or \"*.\" and a domain"),
                    ));
                }
            }
            for m in &rule.mx_suffixes {
                if !is_name(m.trim_start_matches('.')) {
                    return Err(at(
                        "mx_suffixes",
                        &format!("{m:?} is not the end of a host name (\".google.test\")"),
                    ));
                }
            }
            if rule.connection_limit == Some(0) {
                return Err(at("connection_limit", "must be positive"));
            }
            if rule.messages_per_connection == Some(0) {
                return Err(at("messages_per_connection", "must be positive"));
            }
            if let Some(r) = rule.messages_per_s
                && !(RATE_MIN..=RATE_MAX).contains(&r)
            {
                return Err(at(
                    "messages_per_s",
                    &format!("must be a number from {RATE_MIN} to {RATE_MAX}"),
                ));
            }
            for (j, a) in rule.on_reply.iter().enumerate() {
                let at = |field: &str, why: &str| {
                    format!(
                        "{file}:{}: destination[{i}].on_reply[{j}].{field}: {why}",
                        field_line(text, i, Some(j), field)
                    )
                };
                if a.pattern.trim().is_empty() {
                    return Err(at("match", "must not be empty"));
                }
                if a.suspend_s.is_none() && a.connection_limit.is_none() {
                    return Err(at("match", "give suspend_s or connection_limit"));
                }
                if a.connection_limit == Some(0) {
                    return Err(at("connection_limit", "must be positive"));
                }
                if a.suspend_s.is_some_and(|s| s > SUSPEND_S_MAX) {
                    return Err(at(
                        "suspend_s",
                        &format!("at most {SUSPEND_S_MAX} (30 days)"),
                    ));
                }
            }
        }
        Ok(shaping)
    }

    /// Whether any rule matches by MX host names.
    pub fn by_mx(&self) -> bool {
        self.destinations.iter().any(|r| !r.mx_suffixes.is_empty())
    }

    /// The rule for `domain`, whose MX hosts are `mx` (when known).
    pub fn rule_for(&self, domain: &str, mx: &[String]) -> Option<&Rule> {
        let domain = domain.to_ascii_lowercase();
        self.destinations.iter().find(|r| {
            r.domains.iter().any(|d| {
                let d = d.to_ascii_lowercase();
                match d.strip_prefix("*.") {
                    Some(suffix) => domain.ends_with(&format!(".{suffix}")),
                    None => d == domain,
                }
            }) || r.mx_suffixes.iter().any(|s| {
                // On label boundaries: "google.test" matches mx.google.test, not notgoogle.test.
                let s = s.trim_start_matches('.').to_ascii_lowercase();
                mx.iter().any(|m| {
                    let m = m.to_ascii_lowercase();
                    let m = m.trim_end_matches('.');
                    m == s || m.ends_with(&format!(".{s}"))
                })
            })
        })
    }
}

/// Messages a second a rule may ask for: from one in about 17 minutes to 100,000.
const RATE_MIN: f64 = 0.001;
const RATE_MAX: f64 = 100_000.0;
/// The longest hold a reply may cause.
const SUSPEND_S_MAX: u64 = 30 * 86_400;

/// A host name (or its end): labels of letters, digits, '-' and '_', dot-separated.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// The line of `field` in the `i`th [[destination]] (or its `j`th [[destination.on_reply]]);
/// the table's own line when the field is not written there.
fn field_line(text: &str, i: usize, j: Option<usize>, field: &str) -> usize {
    let mut destination = None;
    let mut reply = None;
    let mut table_line = 1;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with("[[destination]]") {
            destination = Some(destination.map_or(0, |d| d + 1));
            reply = None;
        } else if t.starts_with("[[destination.on_reply]]") {
            reply = Some(reply.map_or(0, |r| r + 1));
        } else if t.starts_with('[') {
            destination = None;
        }
        if destination != Some(i) || reply != j {
            continue;
        }
        if t.starts_with("[[") {
            table_line = n + 1;
        } else if let Some(rest) = t.strip_prefix(field)
            && rest.trim_start().starts_with('=')
        {
            return n + 1;
        }
    }
    table_line
}

impl Rule {
    /// The first action whose pattern the reply contains.
    pub fn action_for(
        &self,
        code: u16,
        enhanced: Option<&str>,
        text: &str,
    ) -> Option<&ReplyAction> {
        let line = format!("{code} {} {text}", enhanced.unwrap_or("")).to_ascii_lowercase();
        self.on_reply
            .iter()
            .find(|a| line.contains(&a.pattern.to_ascii_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_domains_suffixes_and_mx_names_and_replies() {
        let s = Shaping::parse(
            r#"
[[destination]]
domains = ["gmail.test", "*.googlemail.test"]
connection_limit = 3
[[destination.on_reply]]
match = "4.7.28"
suspend_s = 600
[[destination]]
mx_suffixes = [".outlook.test"]
messages_per_s = 5.0
"#,
            "s.toml",
        )
        .unwrap();
        assert_eq!(
            s.rule_for("gmail.test", &[]).unwrap().connection_limit,
            Some(3)
        );
        assert!(s.rule_for("eu.googlemail.test", &[]).is_some());
        assert!(s.rule_for("googlemail.test", &[]).is_none());
        let hotmail = s.rule_for("hotmail.test", &["mx1.outlook.test".into()]);
        assert_eq!(hotmail.unwrap().messages_per_s, Some(5.0));
        let gmail = s.rule_for("GMAIL.test", &[]).unwrap();
        let a = gmail
            .action_for(
                421,
                Some("4.7.28"),
                "Our system has detected an unusual rate",
            )
            .unwrap();
        assert_eq!(a.suspend_s, Some(600));
        assert!(gmail.action_for(250, None, "ok").is_none());
    }

    #[test]
    fn mistakes_name_the_file_line_and_field() {
        let e = Shaping::parse(
            "[[destination]]\ndomains = [\"a.test\"]\nconection_limit = 2\n",
            "s.toml",
        )
        .unwrap_err();
        assert!(e.starts_with("s.toml:3:"), "{e}");
        let e = Shaping::parse("[[destination]]\nconnection_limit = 2\n", "s.toml").unwrap_err();
        assert!(e.contains("destination[0].domains"), "{e}");
        let e = Shaping::parse(
            "[[destination]]\ndomains = [\"a.test\"]\n[[destination.on_reply]]\nmatch = \"x\"\n",
            "s.toml",
        )
        .unwrap_err();
        assert!(e.contains("on_reply[0]"), "{e}");
        let e = Shaping::parse(
            "[[destination]]\ndomains = [\"a.test\"]\nmessages_per_s = -1.0\n",
            "s.toml",
        )
        .unwrap_err();
        assert!(
            e.starts_with("s.toml:3: destination[0].messages_per_s"),
            "{e}"
        );
        let second = "[[destination]]\ndomains = [\"a.test\"]\n\n[[destination]]\ndomains = [\"b.test\"]\nmessages_per_connection = 0\n";
        let e = Shaping::parse(second, "s.toml").unwrap_err();
        assert!(
            e.starts_with("s.toml:6: destination[1].messages_per_connection"),
            "{e}"
        );
        let e = Shaping::parse(
            "[[destination]]\ndomains = [\"a.test\"]\n[[destination.on_reply]]\nmatch = \"451\"\nsuspend_s = 9223372036854775807\n",
            "s.toml",
        )
        .unwrap_err();
        assert!(
            e.starts_with("s.toml:5: destination[0].on_reply[0].suspend_s"),
            "{e}"
        );
        for bad in [
            "domains = [\"*\"]",
            "mx_suffixes = [\"\"]",
            "messages_per_s = 1e-300\ndomains = [\"a.test\"]",
        ] {
            let e = Shaping::parse(&format!("[[destination]]\n{bad}\n"), "s.toml").unwrap_err();
            assert!(e.starts_with("s.toml:2: destination[0]."), "{bad}: {e}");
        }
    }

    #[test]
    fn mx_suffixes_match_on_label_boundaries() {
        let s = Shaping::parse(
            "[[destination]]\nmx_suffixes = [\"google.test\"]\n",
            "s.toml",
        )
        .unwrap();
        assert!(s.rule_for("a.test", &["mx.google.test".into()]).is_some());
        assert!(s.rule_for("a.test", &["google.test.".into()]).is_some());
        assert!(
            s.rule_for("a.test", &["mx.notgoogle.test".into()])
                .is_none()
        );
        assert!(s.by_mx());
    }
}
