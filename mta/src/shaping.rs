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
    #[serde(default)]
    pub on_reply: Vec<ReplyAction>,
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
            let at = |field: &str| format!("{file}: destination[{i}].{field}");
            if rule.domains.is_empty() && rule.mx_suffixes.is_empty() {
                return Err(format!("{}: give domains or mx_suffixes", at("domains")));
            }
            if rule.connection_limit == Some(0) || rule.messages_per_connection == Some(0) {
                return Err(format!(
                    "{}: limits must be positive",
                    at("connection_limit")
                ));
            }
            if let Some(r) = rule.messages_per_s
                && !(r.is_finite() && r > 0.0)
            {
                return Err(format!(
                    "{}: must be a positive number",
                    at("messages_per_s")
                ));
            }
            for (j, a) in rule.on_reply.iter().enumerate() {
                let at = |field: &str| format!("{file}: destination[{i}].on_reply[{j}].{field}");
                if a.pattern.trim().is_empty() {
                    return Err(format!("{}: must not be empty", at("match")));
                }
                if a.suspend_s.is_none() && a.connection_limit.is_none() {
                    return Err(format!(
                        "{}: give suspend_s or connection_limit",
                        at("match")
                    ));
                }
                if a.connection_limit == Some(0) {
                    return Err(format!("{}: must be positive", at("connection_limit")));
                }
            }
        }
        Ok(shaping)
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
                let s = s.to_ascii_lowercase();
                mx.iter()
                    .any(|m| m.to_ascii_lowercase().trim_end_matches('.').ends_with(&s))
            })
        })
    }
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
        assert!(e.contains("messages_per_s"), "{e}");
    }
}
