//! The fleet's reply texts against the bounce classifier, as text it was not written from
//! (issue 22, item 2). The profiles' wording is the providers' published replies (sources in
//! sim/src/behaviour.rs); the classifier must recognise each by a family of wordings (a status
//! code, a short phrase) and must not hold the fleet's sentences themselves.

use mailsim::behaviour::{Replies, fill};
use mailsim::scenario::Profile;
use mailsim_smtp::Reply;

/// Every situation of a profile: its name, the reply, the command it answers.
fn situations(r: &Replies) -> Vec<(&'static str, &Reply, &'static str)> {
    vec![
        ("unknown_user", &r.unknown_user, "RCPT"),
        ("mailbox_full", &r.mailbox_full, "RCPT"),
        ("mailbox_full_permanent", &r.mailbox_full_permanent, "RCPT"),
        ("greylisted", &r.greylisted, "RCPT"),
        ("rate_limited", &r.rate_limited, "RCPT"),
        ("rate_limited_close", &r.rate_limited_close, "RCPT"),
        ("too_many_connections", &r.too_many_connections, "CONNECT"),
        ("tempfail", &r.tempfail, "RCPT"),
        ("tls_required", &r.tls_required, "MAIL"),
        ("spam", &r.spam, "DATA"),
        ("dmarc_reject", &r.dmarc_reject, "DATA"),
    ]
}

fn filled(reply: &Reply) -> Reply {
    fill(
        reply,
        &[
            ("rcpt", "someone@example.test"),
            ("ip", "127.0.0.1"),
            ("domain", "news.example.test"),
            ("score", "7.5"),
        ],
    )
}

const PROFILES: [(Option<Profile>, &str); 4] = [
    (None, "generic"),
    (Some(Profile::GmailLike), "gmail-like"),
    (Some(Profile::YahooLike), "yahoo-like"),
    (Some(Profile::MicrosoftLike), "microsoft-like"),
];

/// What each reply says, read as Sisimai's reason definitions read it: the situation's reason
/// where the provider's text says it, else what the text does say (noted).
fn expected(profile: &str, situation: &str) -> &'static str {
    match (profile, situation) {
        (_, "unknown_user") => "userunknown",
        (_, "mailbox_full" | "mailbox_full_permanent") => "mailboxfull",
        ("generic", "greylisted") => "greylisted",
        // Google's "Mail server temporarily rejected message" (451 4.3.0) does not say why,
        // and neither code decides: Sisimai's "onhold" (its corpus labels the same reply so).
        ("gmail-like", "greylisted") => "onhold",
        // Yahoo's "Resources temporarily unavailable": a temporary system refusal.
        ("yahoo-like", "greylisted") => "systemerror",
        // Microsoft answers "Server busy ... from [ip]" (S77714): throttling.
        ("microsoft-like", "greylisted") => "ratelimited",
        (_, "rate_limited" | "rate_limited_close" | "too_many_connections") => "ratelimited",
        (_, "tempfail") => "systemerror",
        (_, "tls_required") => "failedstarttls",
        // Yahoo refuses spam and DMARC failures alike "for policy reasons" (5.7.9).
        ("yahoo-like", "spam" | "dmarc_reject") => "policyviolation",
        // Outlook.com's S3150 names its block list, not the content.
        ("microsoft-like", "spam") => "blocked",
        (_, "spam") => "spamdetected",
        (_, "dmarc_reject") => "authfailure",
        _ => unreachable!("{profile} {situation}"),
    }
}

/// Each profile's every reply gets the reason it states, and the classifier holds none of
/// them: no phrase of it that occurs in a reply is over four words or half of the reply. The
/// classifier's own lists of the providers' published replies (the pages the profiles'
/// replies were transcribed from) are left out here, so the reasons come from the families
/// written for replies in general.
#[test]
fn provider_replies_are_classified_by_families_not_by_their_own_sentences() {
    use mailsim_bounce::reason::{Unit, without_phrases};
    let providers: std::collections::HashSet<&'static str> =
        mailsim_bounce::published::provider_families().collect();
    let published: Vec<&'static str> = mailsim_bounce::published::PROVIDERS
        .iter()
        .flat_map(|p| p.replies.iter().map(|(f, _)| *f))
        .collect();
    let phrases: Vec<&'static str> = mailsim_bounce::reason::wordings()
        .into_iter()
        .filter(|w| !published.contains(w))
        .collect();
    let mut wrong = Vec::new();
    for (profile, name) in PROFILES {
        let replies = Replies::for_profile(profile);
        for (situation, reply, command) in situations(&replies) {
            let r = filled(reply);
            let text = r.text.to_ascii_lowercase();
            for phrase in &phrases {
                if text.contains(phrase) {
                    let words = phrase.split_whitespace().count();
                    assert!(
                        words <= 4 && words * 2 <= text.split_whitespace().count(),
                        "the classifier holds {name}'s {situation} reply: {phrase:?} in {:?}",
                        r.text
                    );
                }
            }
            let (reason, _) = without_phrases(Unit::Family, providers.clone(), || {
                mailsim_bounce::classify_reply(r.code, r.enhanced.as_deref(), &r.text, command)
            });
            if reason != expected(name, situation) {
                wrong.push(format!(
                    "{name} {situation}: {} {:?} {:?} -> {reason}, expected {}",
                    r.code,
                    r.enhanced,
                    r.text,
                    expected(name, situation)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
