//! Issue 19: zone files in scenarios and in `mailsim dns` (read back with dig), and
//! `mailsim auth verify` on a message others signed (RFC 8463's example, signed by dkimpy).

mod common;

use common::serve_dns as serve;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/auth")
        .join(name)
}

fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+time=2",
            "+tries=2",
            "+short",
        ])
        .args(args)
        .output()
        .expect("dig (Debian dnsutils); the README's test command installs it");
    assert!(out.status.success(), "dig {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn zone_files_are_served_beside_and_over_a_scenarios_records() {
    let dir = tempfile::tempdir().unwrap();
    // The quickstart with a zone file that overrides news.example.test's SPF record and adds
    // names and types the generator never makes.
    let quickstart = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/quickstart.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("scenario.toml"),
        format!("zones = [\"news.zone\"]\n{quickstart}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("news.zone"),
        "$ORIGIN news.example.test.\n\
         @ IN TXT \"v=spf1 ip4:192.0.2.0/24 ~all\"\n\
         ipv6 IN AAAA 2001:db8::1\n\
         alias IN CNAME ipv6\n",
    )
    .unwrap();
    let scenario = dir.path().join("scenario.toml");
    let football = data("football.zone");
    let (mut child, port) = serve(&[
        scenario.to_str().unwrap(),
        "--zone",
        football.to_str().unwrap(),
    ]);

    // The file's TXT replaced the generated SPF record; the DMARC record beside it stays.
    assert_eq!(
        dig(port, &["TXT", "news.example.test"]).trim(),
        "\"v=spf1 ip4:192.0.2.0/24 ~all\""
    );
    assert!(dig(port, &["TXT", "_dmarc.news.example.test"]).contains("v=DMARC1"));
    assert_eq!(
        dig(port, &["AAAA", "ipv6.news.example.test"]).trim(),
        "2001:db8::1"
    );
    let alias = dig(port, &["AAAA", "alias.news.example.test"]);
    assert!(
        alias.contains("ipv6.news.example.test.") && alias.contains("2001:db8::1"),
        "{alias}"
    );
    // The generated zones are still there.
    assert!(dig(port, &["MX", "deadmx.test"]).contains("mx1.deadmx.test."));
    // --zone: the file's own SOA, and a TXT written in two strings, served joined (as SPF and
    // DKIM read them; re-split only past 255 octets).
    assert_eq!(
        dig(port, &["SOA", "football.example.com"]).trim(),
        "ns1.football.example.com. hostmaster.football.example.com. 2018021201 3600 600 86400 300"
    );
    let key = dig(port, &["TXT", "test._domainkey.football.example.com"]);
    assert!(key.starts_with("\"v=DKIM1; g=*; k=rsa; p=MIGf"), "{key}");
    child.kill().unwrap();
    child.wait().unwrap();

    // A broken zone file: the run stops before it starts, naming the scenario's field and the
    // file's line.
    std::fs::write(
        dir.path().join("news.zone"),
        "$ORIGIN news.example.test.\n@ IN A 192.0.2.1\nmail IN A 300.0.0.1\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(["run", scenario.to_str().unwrap(), "--out"])
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("zones[0] = news.zone") && err.contains("news.zone:3: "),
        "{err}"
    );
}

fn verify(message: &Path, ip: &str, mail_from: &str) -> (Output, String, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(["auth", "verify"])
        .arg(message)
        .args([
            "--ip",
            ip,
            "--helo",
            "mail.football.example.com",
            "--mail-from",
            mail_from,
        ])
        .arg("--zone")
        .arg(data("football.zone"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let json = stdout.lines().last().unwrap_or_default();
    let verdict = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out, stdout, verdict)
}

#[test]
fn auth_verify_reads_rfc_8463s_example_signed_by_dkimpy() {
    // From the sending domain's MX address: SPF (mx) passes, both signatures verify, DMARC
    // passes in strict alignment.
    let (out, text, v) = verify(
        &data("rfc8463.eml"),
        "192.0.2.25",
        "joe@football.example.com",
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("Authentication-Results: mx.mailsim.test;"),
        "{text}"
    );
    assert_eq!(text.matches("dkim=pass").count(), 2, "{text}");
    assert!(
        text.contains("spf=pass") && text.contains("dmarc=pass"),
        "{text}"
    );
    assert_eq!(v["spf"]["result"], "pass");
    assert_eq!(v["spf"]["reason"], "football.example.com: +mx matched");
    assert_eq!(v["dkim"][0]["algorithm"], "ed25519-sha256");
    assert_eq!(v["dkim"][0]["selector"], "brisbane");
    assert_eq!(v["dkim"][1]["algorithm"], "rsa-sha256");
    assert!(
        v["dkim"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["result"] == "pass")
    );
    assert_eq!(v["dmarc"]["policy"], "reject");

    // The body changed after signing, sent from elsewhere: neither signature verifies (dkim=fail,
    // the body hash named: RFC 6376 section 6.1.3, RFC 8601 section 2.7.1), SPF fails, DMARC
    // fails and the exit status says so.
    let dir = tempfile::tempdir().unwrap();
    let tampered = dir.path().join("tampered.eml");
    let original = std::fs::read_to_string(data("rfc8463.eml")).unwrap();
    std::fs::write(
        &tampered,
        original.replace("We lost the game.", "We won the game."),
    )
    .unwrap();
    let (out, text, v) = verify(&tampered, "198.51.100.7", "joe@football.example.com");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(v["spf"]["result"], "fail", "{text}");
    assert_eq!(v["spf"]["reason"], "football.example.com: -all matched");
    for d in v["dkim"].as_array().unwrap() {
        assert_eq!(d["result"], "fail", "{text}");
        assert!(
            d["reason"].as_str().unwrap().contains("body hash"),
            "{text}"
        );
    }
    assert_eq!(v["dmarc"]["result"], "fail");
    assert!(text.contains("dkim=fail"), "{text}");
    assert!(!text.contains("dkim=neutral"), "{text}");

    // An IPv6 client inside the record's ip6 range.
    let (out, text, v) = verify(
        &data("rfc8463.eml"),
        "2001:db8::77",
        "joe@football.example.com",
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(v["spf"]["result"], "pass", "{text}");

    // No DNS given: a clear error, not a look-up on the Internet.
    let out = Command::new(env!("CARGO_BIN_EXE_mailsim"))
        .args(["auth", "verify"])
        .arg(data("rfc8463.eml"))
        .args(["--ip", "192.0.2.25", "--helo", "x", "--mail-from", ""])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--zone"));
}

/// Found by an independent review. A message must have one author domain for DMARC: a second
/// From field, or a second domain in the one From field, made mail-auth exempt the message, and
/// SPF's pass then let it through as from a p=reject domain (RFC 7489 section 6.6.1: rejected).
/// A DKIM signature whose tag list names a tag twice, or whose h= leaves out From, is refused
/// (RFC 6376 sections 3.2 and 6.1.1), whatever its cryptography says.
#[test]
fn no_one_author_domain_fails_dmarc_and_bad_signatures_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(data("rfc8463.eml")).unwrap();
    let from = "From: Joe SixPack <joe@football.example.com>\n";
    let cases = [
        (
            "two-from",
            original.replace(from, &format!("{from}From: ceo@victim.example\n")),
            "2 From fields",
        ),
        (
            "two-domains",
            original.replace(
                from,
                "From: Joe SixPack <joe@football.example.com>, ceo@victim.example\n",
            ),
            "2 domains (football.example.com, victim.example)",
        ),
        ("no-from", original.replace(from, ""), "0 From fields"),
    ];
    for (name, text, says) in cases {
        let file = dir.path().join(format!("{name}.eml"));
        std::fs::write(&file, text).unwrap();
        // From the domain's own MX: SPF passes, and used to carry the message through.
        let (out, text, v) = verify(&file, "192.0.2.25", "joe@football.example.com");
        assert_eq!(v["spf"]["result"], "pass", "{name}: {text}");
        assert_eq!(out.status.code(), Some(1), "{name}: {text}");
        assert_eq!(v["dmarc"]["result"], "permerror", "{name}: {text}");
        assert!(text.contains("dmarc=permerror"), "{name}: {text}");
        let reason = v["dmarc"]["reason"].as_str().unwrap();
        assert!(
            reason.contains(says) && reason.contains("6.6.1"),
            "{name}: {reason}"
        );
    }
    let signature = "d=football.example.com; i=@football.example.com; \n q=dns/txt; s=brisbane;";
    let cases = [
        (
            "twice",
            original.replacen(signature, &format!("d=evil.example; {signature}"), 1),
            "tag d appears twice",
        ),
        (
            "from-unsigned",
            original.replacen(
                "h=from : to : \n subject : date : message-id : from : subject : date;",
                "h=to : \n subject : date : message-id : subject : date;",
                1,
            ),
            "does not sign From",
        ),
    ];
    for (name, text, says) in cases {
        assert_ne!(text, original, "{name}: the case changes the message");
        let file = dir.path().join(format!("{name}.eml"));
        std::fs::write(&file, text).unwrap();
        let (_, text, v) = verify(&file, "192.0.2.25", "joe@football.example.com");
        let ed25519 = &v["dkim"][0];
        assert_eq!(ed25519["selector"], "brisbane", "{name}: {text}");
        assert_eq!(ed25519["result"], "permerror", "{name}: {text}");
        let reason = ed25519["reason"].as_str().unwrap();
        assert!(reason.contains(says), "{name}: {reason}");
        // The other signature is untouched and still verifies.
        assert_eq!(v["dkim"][1]["result"], "pass", "{name}: {text}");
    }
    // Thousands of signatures cost a key lookup each: the first 10 are verified.
    let many: String = (0..3000)
        .map(|i| format!("DKIM-Signature: v=1; a=ed25519-sha256; d=football.example.com; s=s{i}; h=from; bh=AAAA; b=AAAA\n"))
        .collect();
    let file = dir.path().join("many.eml");
    std::fs::write(&file, format!("{many}{original}")).unwrap();
    let started = std::time::Instant::now();
    let (_, text, v) = verify(&file, "192.0.2.25", "joe@football.example.com");
    assert_eq!(v["dkim"].as_array().unwrap().len(), 10, "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
