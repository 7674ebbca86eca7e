//! What the bounce tests share.

/// The reasons of Sisimai's vocabulary a `std_reason` stands for (None: no mapping).
pub fn reasons_of(std_reason: &str) -> Option<&'static [&'static str]> {
    Some(match std_reason {
        // BounceParser calls every recipient address that no longer takes mail user_unknown:
        // Sisimai tells apart the same words after DATA (filtered), a closed account (suspend)
        // and a moved one (hasmoved).
        "user_unknown" => &["userunknown", "filtered", "suspend", "hasmoved"],
        "over_quota" => &["mailboxfull"],
        "domain_error" => &["hostunknown", "notaccept"],
        "message_too_large" => &["emailtoolarge"],
        "spam" => &[
            "spamdetected",
            "blocked",
            "policyviolation",
            "badreputation",
        ],
        _ => return None,
    })
}
