//! Issue 15, items 3 and 4: outbound STARTTLS, the fleet's STARTTLS and its faults, MTA-STS
//! and TLS-RPT. Checked from outside the MTA: what the receivers stored (their Received headers
//! and which mailboxes hold anything), the TLS-RPT files read by mail-auth's parser, and what
//! each scenario's hosts imply.

mod common;

use mail_auth::report::tlsrpt::{PolicyType, ResultType, TlsReport};
use mailsim::scenario::{Mode, Scenario};
use mailsim_events::{Event, read_log};
use std::collections::BTreeMap;
use std::path::Path;

fn scenario_file(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).unwrap()
}

/// The receivers' copies (not the sender's own MX), by host.
fn stored_by_host(out: &Path) -> BTreeMap<String, Vec<String>> {
    let root = out.join("mailboxes");
    let mut by_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in common::maildir_files(&root) {
        let host = common::host_of(&root, &f);
        if host.starts_with("mx.") {
            continue;
        }
        by_host
            .entry(host)
            .or_default()
            .push(std::fs::read_to_string(&f).unwrap());
    }
    by_host
}

/// The Received header the receiving server wrote (the first one, unfolded).
fn receivers_received(message: &str) -> String {
    let start = message.find("\r\nReceived: ").expect("a Received header") + 2;
    let mut out = String::new();
    for line in message[start..].split("\r\n") {
        if !out.is_empty() && !line.starts_with([' ', '\t']) {
            break;
        }
        out.push_str(line);
    }
    out
}

fn report(out: &Path, domain: &str) -> TlsReport {
    let path = out.join("tlsrpt").join(format!("{domain}.json"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    TlsReport::parse_json(&bytes).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
}

fn tls_events(out: &Path) -> Vec<Event> {
    read_log(&out.join("events.log"))
        .unwrap()
        .0
        .into_iter()
        .map(|r| r.event)
        .filter(|e| matches!(e, Event::Tls { .. } | Event::StsPolicy { .. }))
        .collect()
}

/// `tls-everywhere`: every receiver refuses mail in clear, three hosts have certificates no
/// verifying client accepts; opportunistic TLS encrypts to all of them. In both modes: live
/// over loopback sockets, virtual over in-memory pipes.
fn tls_everywhere(mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut scenario = scenario_file("tls-everywhere");
    scenario.mode = mode;
    let messages = scenario.campaign().messages as usize;
    common::run(&scenario, &out);
    let stored = stored_by_host(&out);
    let hosts: Vec<&str> = stored.keys().map(String::as_str).collect();
    assert_eq!(
        hosts,
        [
            "mx1.expired.test",
            "mx1.secure1.test",
            "mx1.secure2.test",
            "mx1.selfsigned.test",
            "mx1.wrongname.test"
        ]
    );
    assert_eq!(stored.values().map(Vec::len).sum::<usize>(), messages);
    for (host, messages) in &stored {
        for m in messages {
            let received = receivers_received(m);
            assert!(
                received.contains(&format!("by {host} with ESMTPS id"))
                    && received.contains("(using TLSv1."),
                "{host}: {received}"
            );
        }
    }
    // What the MTA thought of each certificate is what the scenario gave each host.
    let mut verdicts = BTreeMap::new();
    for e in tls_events(&out) {
        if let Event::Tls {
            mx,
            certificate,
            outcome,
            ..
        } = e
        {
            assert_eq!(outcome, "encrypted", "{mx}");
            verdicts.insert(mx, certificate);
        }
    }
    assert_eq!(verdicts["mx1.expired.test"], "certificate-expired");
    assert_eq!(verdicts["mx1.wrongname.test"], "certificate-host-mismatch");
    assert_eq!(verdicts["mx1.selfsigned.test"], "certificate-not-trusted");
    assert_eq!(verdicts["mx1.secure1.test"], "ok");
    // No domain publishes a policy: every report counts successes only.
    for domain in ["secure1.test", "expired.test", "wrongname.test"] {
        let r = report(&out, domain);
        let p = &r.policies[0];
        assert_eq!(p.policy.policy_type, PolicyType::NoPolicyFound);
        assert!(p.summary.total_success > 0, "{domain}");
        assert_eq!(p.summary.total_failure, 0, "{domain}");
    }
}

#[test]
fn tls_everywhere_delivers_everything_encrypted_in_virtual_mode() {
    tls_everywhere(Mode::Virtual);
}

#[test]
fn tls_everywhere_delivers_everything_encrypted_over_sockets() {
    tls_everywhere(Mode::Live);
}

/// `mta-sts-enforce`: strict.test's policy is enforce and its MX's certificate names another
/// host: its mail waits and is never sent in clear; a testing policy reports and delivers; a
/// good certificate under enforce delivers; TLS-RPT says which.
#[test]
fn an_enforced_policy_keeps_mail_from_a_host_with_a_wrong_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let scenario = scenario_file("mta-sts-enforce");
    let summary = common::run(&scenario, &out);
    let stored = stored_by_host(&out);
    assert!(
        !stored.contains_key("mx1.strict.test"),
        "nothing may reach strict.test's MX"
    );
    assert_eq!(summary.domains["strict.test"].delivered, 0);
    assert!(summary.domains["strict.test"].deferred > 0);
    for (host, tls) in [
        ("mx1.good.test", true),
        ("mx1.trial.test", true),
        ("mx1.plain.test", false),
    ] {
        let messages = &stored[host];
        assert!(!messages.is_empty(), "{host}");
        for m in messages {
            let received = receivers_received(m);
            assert_eq!(received.contains("with ESMTPS"), tls, "{host}: {received}");
        }
    }
    let total: usize = stored.values().map(Vec::len).sum();
    assert_eq!(
        total + summary.domains["strict.test"].injected as usize,
        scenario.campaign().messages as usize,
        "everything not for strict.test was delivered"
    );
    // Each policy was fetched once, from the cache after that.
    let fetched: Vec<String> = tls_events(&out)
        .into_iter()
        .filter_map(|e| match e {
            Event::StsPolicy { domain, error, .. } => {
                assert_eq!(error, None);
                Some(domain)
            }
            _ => None,
        })
        .collect();
    assert_eq!(fetched.len(), 3, "{fetched:?}");

    let strict = report(&out, "strict.test");
    let p = &strict.policies[0];
    assert_eq!(p.policy.policy_type, PolicyType::Sts);
    assert!(p.policy.policy_string.iter().any(|l| l == "mode: enforce"));
    assert_eq!(p.policy.mx_host, ["mx1.strict.test"]);
    assert_eq!(p.summary.total_success, 0);
    assert!(p.summary.total_failure > 1, "retried: {:?}", p.summary);
    let f = &p.failure_details[0];
    assert_eq!(f.result_type, ResultType::CertificateHostMismatch);
    assert_eq!(f.receiving_mx_hostname.as_deref(), Some("mx1.strict.test"));
    assert_eq!(f.failed_session_count, p.summary.total_failure);

    let trial = report(&out, "trial.test");
    assert!(trial.policies[0].summary.total_failure > 0);
    assert_eq!(
        trial.policies[0].failure_details[0].result_type,
        ResultType::CertificateHostMismatch
    );
    let good = report(&out, "good.test");
    assert_eq!(good.policies[0].summary.total_failure, 0);
    assert!(good.policies[0].summary.total_success > 0);
    let plain = report(&out, "plain.test");
    assert_eq!(
        plain.policies[0].policy.policy_type,
        PolicyType::NoPolicyFound
    );
    assert_eq!(
        plain.policies[0].failure_details[0].result_type,
        ResultType::StartTlsNotSupported
    );
}

/// A handshake that fails: opportunistic TLS delivers in clear on a new connection;
/// `tls = "required"` (a shaping rule) delivers nothing to it, nor to a host without STARTTLS.
#[test]
fn required_tls_holds_mail_and_opportunistic_tls_falls_back_to_clear() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shaping.toml"),
        r#"
[[destination]]
domains = ["must.test", "mustbroken.test"]
tls = "required"
"#,
    )
    .unwrap();
    let path = dir.path().join("scenario.toml");
    std::fs::write(
        &path,
        r#"
name = "tls-faults"
seed = 5
mode = "virtual"
[mta]
shaping = "shaping.toml"
run_time_s_max = 1200
[[sender]]
domain = "s.test"
[[domain]]
name = "broken.test"
mx = [{ host = "mx1.broken.test", tls = "handshake-failure" }]
[[domain]]
name = "mustbroken.test"
mx = [{ host = "mx1.mustbroken.test", tls = "handshake-failure" }]
[[domain]]
name = "must.test"
mx = [{ host = "mx1.must.test", tls = "none" }]
[campaign]
messages = 300
size_bytes = 900
"#,
    )
    .unwrap();
    let scenario = Scenario::load(&path).unwrap();
    let out = dir.path().join("run");
    let summary = common::run(&scenario, &out);
    let stored = stored_by_host(&out);
    let hosts: Vec<&str> = stored.keys().map(String::as_str).collect();
    assert_eq!(hosts, ["mx1.broken.test"]);
    for m in &stored["mx1.broken.test"] {
        assert!(receivers_received(m).contains("with ESMTP id"));
    }
    assert_eq!(
        stored["mx1.broken.test"].len() as u64,
        summary.domains["broken.test"].injected
    );
    let mut seen = BTreeMap::new();
    for e in tls_events(&out) {
        if let Event::Tls {
            domain,
            result,
            outcome,
            policy,
            ..
        } = e
        {
            seen.insert(domain, (result, outcome, policy));
        }
    }
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        seen["broken.test"],
        s("validation-failure", "retry-clear", "opportunistic")
    );
    assert_eq!(
        seen["mustbroken.test"],
        s("validation-failure", "skipped", "required")
    );
    assert_eq!(
        seen["must.test"],
        s("starttls-not-supported", "skipped", "required")
    );
    let log = read_log(&out.join("events.log")).unwrap().0;
    let reasons: std::collections::BTreeSet<String> = log
        .iter()
        .filter_map(|r| match &r.event {
            Event::Deferred { domain, reason, .. } if domain.starts_with("must") => {
                Some(reason.split(' ').take(3).collect::<Vec<_>>().join(" "))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons.into_iter().collect::<Vec<_>>(),
        [
            "failedstarttls: required: starttls-not-supported",
            "failedstarttls: required: validation-failure"
        ]
    );
}

/// A day and more of an enforced policy: it expires after its max_age (86,400 s) and is looked
/// up again before the next session, never a session without it; under testing, a host the
/// policy does not name (an MX change) gets one `tls` event per session, saying so.
#[test]
fn a_policy_holds_past_its_max_age_and_testing_reports_an_unlisted_mx_once_per_session() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scenario.toml");
    std::fs::write(
        &path,
        r#"
name = "sts-day"
seed = 3
mode = "virtual"
[mta]
retry_interval_s_min = 600
retry_interval_s_max = 600
lifetime_s = 200000
run_time_s_max = 90000
[[sender]]
domain = "s.test"
[[domain]]
name = "strict.test"
mta_sts = "enforce"
mx = [{ host = "mx1.strict.test", tls = "none" }]
[[domain]]
name = "trial.test"
mta_sts = "testing"
[[dns_fault]]
name = "trial.test"
kind = "change_mx"
mx = [{ host = "mx9.trial.test" }]
[campaign]
messages = 40
size_bytes = 900
"#,
    )
    .unwrap();
    let scenario = Scenario::load(&path).unwrap();
    let out = dir.path().join("run");
    common::run(&scenario, &out);
    let stored = stored_by_host(&out);
    assert!(
        !stored.contains_key("mx1.strict.test"),
        "{:?}",
        stored.keys()
    );
    let log = read_log(&out.join("events.log")).unwrap().0;
    let (mut strict, mut fetched, mut trial_tls, mut trial_conns) = (0, 0, 0, 0);
    let start = log[0].ts;
    let mut last_strict_ms = 0;
    for r in &log {
        match &r.event {
            Event::Tls {
                domain,
                policy,
                outcome,
                result,
                ..
            } if domain == "strict.test" => {
                assert_eq!(
                    (policy.as_str(), outcome.as_str(), result.as_str()),
                    ("sts-enforce", "skipped", "starttls-not-supported"),
                    "at {} s",
                    (r.ts - start) / 1000
                );
                strict += 1;
                last_strict_ms = r.ts - start;
            }
            Event::StsPolicy { domain, .. } if domain == "strict.test" => fetched += 1,
            Event::Tls {
                domain, mx, result, ..
            } if domain == "trial.test" => {
                assert_eq!(mx, "mx9.trial.test");
                assert_eq!(result, "validation-failure");
                trial_tls += 1;
            }
            Event::ConnOpened { domain, .. } if domain == "trial.test" => trial_conns += 1,
            _ => {}
        }
    }
    assert!(last_strict_ms > 86_400_000, "sessions past the max_age");
    assert!(strict > 100, "{strict}");
    assert_eq!(
        fetched, 2,
        "fetched at the start and again after it expired"
    );
    assert!(trial_conns > 0);
    assert_eq!(trial_tls, trial_conns, "one tls event per session");
    assert!(stored.contains_key("mx9.trial.test"));
}
