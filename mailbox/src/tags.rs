//! Tag lists (RFC 6376 section 3.2): the `name=value; ...` form of DKIM signatures and keys,
//! ARC header fields, DMARC, MTA-STS and TLS-RPT records.

/// A tag list (RFC 6376 section 3.2; DMARC, MTA-STS and TLS-RPT records use the same form):
/// `name=value` separated by ';', white space around each allowed, names unique.
pub fn tag_list(text: &str) -> Result<Vec<(String, String)>, String> {
    let ws = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n');
    let mut out: Vec<(String, String)> = Vec::new();
    let specs: Vec<&str> = text.split(';').collect();
    for (i, spec) in specs.iter().enumerate() {
        let spec = spec.trim_matches(ws);
        if spec.is_empty() {
            if i + 1 == specs.len() || i == 0 && specs.len() == 1 {
                continue;
            }
            return Err("an empty tag between two ';'".into());
        }
        let Some((name, value)) = spec.split_once('=') else {
            return Err(format!("{spec:?} is not tag=value"));
        };
        let (name, value) = (name.trim_matches(ws), value.trim_matches(ws));
        let mut chars = name.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!("{name:?} is not a tag name"));
        }
        if let Some(c) = value
            .chars()
            .find(|&c| !(('\x21'..='\x7e').contains(&c) || ws(c)))
        {
            return Err(format!("{name}={value:?}: character {c:?} is not allowed"));
        }
        if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(format!(
                "tag {name} appears twice (the whole record is then invalid)"
            ));
        }
        out.push((name.to_string(), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists_as_rfc_6376_writes_them() {
        assert_eq!(
            tag_list("v=DKIM1; k=rsa;\r\n p=AB CD;").unwrap(),
            vec![
                ("v".into(), "DKIM1".into()),
                ("k".into(), "rsa".into()),
                ("p".into(), "AB CD".into())
            ]
        );
        assert!(
            tag_list("v=DMARC1; p=none; p=reject")
                .unwrap_err()
                .contains("twice")
        );
        assert!(tag_list("v=DMARC1;; p=none").unwrap_err().contains("empty"));
        assert!(
            tag_list("v=DMARC1; 1p=none")
                .unwrap_err()
                .contains("tag name")
        );
        assert!(tag_list("v=DMARC1; p").unwrap_err().contains("tag=value"));
    }
}
