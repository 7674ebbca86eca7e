//! A fourth corpus of real bounces the classifier was not written from: the fixtures of Crisp's
//! email-bounce-parser (tests/data/crisp, see its ORIGIN.md): 109 Postfix bounce texts from
//! 2023, quoting the remote servers' replies (Gmail, Outlook, OVH, Zoho, ...). Each file's
//! name carries its authors' reason label (`550_5_1_1_no_such_recipient_variant_3`); each
//! expected JSON file is their parser's recorded output (recipient, reply code, enhanced
//! status code, temporary or permanent).
//!
//! Scored: the recipient and the two codes against the JSON; the reason where the authors'
//! label names one of Sisimai's reasons (below; a label that names none, such as
//! `permanent_failure` or `unknown_temporary`, is not scored); hard or soft where it follows
//! from the label and the report (a temporary failure is soft; a permanent one labelled as an
//! unknown host, or an unknown recipient refused before DATA, is hard: Sisimai's definition).

use mailsim_bounce::classify_message;
use serde_json::Value;
use std::path::Path;

/// The reasons of Sisimai's vocabulary an author's label stands for (None: it names none, or
/// more than one reading of it is defensible).
fn reasons_of(label: &str) -> Option<&'static [&'static str]> {
    Some(match label {
        // Sisimai calls an unknown recipient refused after DATA "filtered".
        "no_such_recipient" | "recipient_unknown" | "does_not_exist" | "address_rejected" => {
            &["userunknown", "filtered"]
        }
        "account_disabled" => &["suspend"],
        "mailbox_full" | "mailbox_over_quota" => &["mailboxfull"],
        // Sisimai 5 names a rate limit and too many connections alike.
        "rate_limited" | "too_many_connections" => &["ratelimited"],
        "spam_content" | "spam" => &["spamdetected"],
        "reputation" => &["badreputation", "blocked"],
        "blocked" => &["blocked"],
        "sender_blocked" => &["blocked", "rejected"],
        "authentication_failure" => &["authfailure"],
        "server_unknown" | "unkown_server" => &["hostunknown"],
        // A conversation that timed out or a connection that failed, in a final bounce.
        "timeout" | "unknown_server_timeout" | "unknown_server_connection" => {
            &["networkerror", "expired"]
        }
        "hops" => &["networkerror"],
        "policy_violation" => &["policyviolation"],
        "action_aborted_local_error" => &["systemerror"],
        _ => return None,
    })
}

/// The label of a fixture's name: `550_5_1_1_no_such_recipient_variant_3` ->
/// `no_such_recipient`.
fn label_of(name: &str) -> String {
    let words: Vec<&str> = name.split('_').collect();
    let mut words: Vec<&str> = words
        .iter()
        .skip_while(|w| w.chars().all(|c| c.is_ascii_digit()))
        .copied()
        .collect();
    if words.len() >= 2 && words[words.len() - 2] == "variant" {
        words.truncate(words.len() - 2);
    }
    words.join("_")
}

/// The fixture (a Postfix bounce's text) as the bounce mail it came in.
fn as_mail(text: &str) -> Vec<u8> {
    let mut mail = String::from(
        "From: MAILER-DAEMON@mailer.acme.email (Mail Delivery System)\r\n\
         To: sender@acme.email\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    for line in text.lines() {
        mail.push_str(line);
        mail.push_str("\r\n");
    }
    mail.into_bytes()
}

#[derive(Default)]
struct Score {
    agree: usize,
    total: usize,
}

impl Score {
    fn add(&mut self, agrees: bool) {
        self.total += 1;
        self.agree += usize::from(agrees);
    }

    fn share(&self) -> f64 {
        self.agree as f64 / self.total.max(1) as f64 * 100.0
    }
}

impl std::fmt::Display for Score {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({:.1}%)", self.agree, self.total, self.share())
    }
}

#[test]
fn recipients_codes_reasons_and_hard_or_soft_agree_with_crisps_labels() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/crisp");
    let mut names: Vec<String> = std::fs::read_dir(root.join("fixtures"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".txt").map(str::to_string))
        .collect();
    names.sort();
    assert_eq!(names.len(), 109);
    let [mut rcpt, mut basic, mut enhanced, mut reason, mut hard] =
        std::array::from_fn(|_| Score::default());
    let mut misses = Vec::new();
    for name in &names {
        let text =
            std::fs::read_to_string(root.join("fixtures").join(format!("{name}.txt"))).unwrap();
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("expected").join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let found = classify_message(&as_mail(&text));
        let data = &expected["data"];
        let Some(want) = data["recipient"].as_str() else {
            continue;
        };
        let got = found
            .iter()
            .find(|c| c.recipient.eq_ignore_ascii_case(want));
        rcpt.add(found.len() == 1 && got.is_some());
        if found.len() > 1 {
            misses.push(format!(
                "{name}: recipient {want}, got {:?}",
                found.iter().map(|c| &c.recipient).collect::<Vec<_>>()
            ));
        }
        let Some(c) = got else {
            misses.push(format!(
                "{name}: recipient {want}, got {:?}",
                found.iter().map(|c| &c.recipient).collect::<Vec<_>>()
            ));
            continue;
        };
        let error = &data["error"];
        if let Some(code) = error["code"]["basic"].as_str() {
            let agrees = c.reply_code.map(|r| r.to_string()).as_deref() == Some(code);
            basic.add(agrees);
            if !agrees {
                misses.push(format!("{name}: reply code {code}, got {:?}", c.reply_code));
            }
        }
        if let Some(code) = error["code"]["enhanced"].as_str() {
            let agrees = c.status == code;
            enhanced.add(agrees);
            if !agrees {
                misses.push(format!("{name}: status {code}, got {:?}", c.status));
            }
        }
        let label = label_of(name);
        if let Some(allowed) = reasons_of(&label) {
            let agrees = allowed.contains(&c.reason.as_str());
            reason.add(agrees);
            if !agrees {
                misses.push(format!(
                    "{name}: {label}, got {} ({:?})",
                    c.reason,
                    c.diagnostic.chars().take(140).collect::<String>()
                ));
            }
        }
        let temporary = error["temporary"].as_bool() == Some(true);
        // Sisimai's hard bounces: an unknown recipient (refused before DATA: after it Sisimai
        // says "filtered", soft) or host. Read from the label and the report alone.
        let after_data = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains("in reply to end of DATA command");
        let want_hard = if temporary {
            Some(false)
        } else {
            reasons_of(&label).map(|allowed| match allowed[0] {
                "userunknown" => !after_data,
                "hostunknown" => true,
                _ => false,
            })
        };
        if let Some(want_hard) = want_hard {
            hard.add(c.hard == want_hard);
            if c.hard != want_hard {
                misses.push(format!(
                    "{name}: hard {want_hard} ({label}), got {} ({})",
                    c.hard, c.reason
                ));
            }
        }
    }
    eprintln!(
        "Crisp corpus ({} fixtures): recipients {rcpt}, reply codes {basic}, status codes {enhanced}, reason {reason}, hard/soft {hard}",
        names.len()
    );
    for m in &misses {
        eprintln!("  {m}");
    }
    // First measured 2026-12-04, before anything was changed for these files (the held-out
    // figures): recipients 102/109 (93.6%), reply codes 78/99 (78.8%), status codes 70/72
    // (97.2%), reason 78/93 (83.9%), hard/soft 90/97 (92.8%; 91/97, 93.8%, once hard/soft was
    // read from the label and the report alone, not partly from the classifier's own reason:
    // an independent review's finding). Then four rules that name a
    // family, none a file: a reply code ending a folded line (Postfix wraps its report at 76
    // columns: "said: 550\n    5.1.1 ..."); an address inside a reply Postfix quotes ("said:"
    // or "refused to talk to me:" to "(in reply to ... command)") is not another recipient;
    // Postfix's "(expanded from <x>)" and Exim's "(generated from x)" name the address the
    // sender gave, which stands for the recipient (as a delivery-status part's
    // Original-Recipient does: two rows disagree with the label here by that choice); Office
    // 365's "Sender Address:" names the original's sender. Then: recipients 106/109, reply
    // codes 92/98 (one alias's row no longer scored), status codes 69/71, reason 78/92,
    // hard/soft 91/96; the other corpora's figures unchanged. The floors of the reason and
    // hard/soft stay at the held-out figures. The reason misses left are
    // mostly labels the vocabularies weigh differently (a disabled mailbox labelled as unknown,
    // a DNS blocklist labelled as spam content): no rule was written from them. 2026-12-04,
    // later: RFC 5321's "mailbox unavailable" with the address written inside ("550 mailbox
    // carol@... unavailable") is an unknown recipient (a pair, nothing else between): reason
    // 79/92, hard/soft 92/96. Then a quoted status of RFC 3463's network class (X.4.x, not
    // X.4.0) outranks a wrapper that says only that the greeting was refused ("refused to talk
    // to me: 421 4.4.2 ... timeout exceeded" is a network error): reason 80/92. The other
    // corpora's figures unchanged by either. Then a reply code may follow an opening quote
    // (Exchange's reports quote the server's reply whole: "Remote Server returned '550 5.1.10
    // ...'"): reply codes 96/98; nothing else changed, here or in the other corpora.
    let floors = [
        ("recipients", &rcpt, 96.0),
        ("reply codes", &basic, 97.0),
        ("status codes", &enhanced, 97.0),
        ("reason", &reason, 83.0),
        ("hard/soft", &hard, 92.0),
    ];
    for (what, score, floor) in floors {
        assert!(score.share() >= floor, "{what} {score} below {floor}%");
    }
}
