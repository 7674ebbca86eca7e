//! Issue 19, item 4: DKIM both ways with dkimpy (Debian's python3-dkim, python3-nacl for
//! Ed25519), an implementation nobody here wrote. The same messages, chosen for what
//! canonicalization has to get right (folded and tab-indented headers, trailing white space,
//! empty and blank-line bodies, long lines, 8-bit text, MIME, dot-leading lines), are signed
//! by mailsim's signer (the MTA's, mta/src/dkim.rs) and verified by dkimpy, and signed by dkimpy
//! in all four canonicalization pairs and verified by mailsim (`auth verify`'s path, the key
//! records served by fake-dns). RSA-2048 and Ed25519 (RFC 8463) each.

use fake_dns::{FaultyZones, RecordData, ZoneSet};
use mailsim::auth::{Dns, Received, verify};
use mailsim::keys::{DkimKeyPair, ed25519_from_seed, rsa_from_seed};
use std::path::{Path, PathBuf};
use std::process::Command;

const DOMAIN: &str = "signer.example";

/// The messages, with CRLF line ends as on the wire.
fn messages() -> Vec<(&'static str, String)> {
    let head = |extra: &str| {
        format!(
            "From: Alice <alice@{DOMAIN}>\nTo: bob@receiver.example\nSubject: two-way\n\
             Date: Tue, 1 Dec 2026 10:00:00 +0000\nMessage-ID: <{}@{DOMAIN}>\n{extra}",
            extra.len()
        )
    };
    let long_line = "x".repeat(990);
    let list = vec![
        ("plain", format!("{}\nHello Bob.\n", head(""))),
        (
            "folded-headers",
            format!(
                "From: Alice <alice@{DOMAIN}>\nTo: bob@receiver.example,\n\tcarol@receiver.example\n\
                 Subject: a subject folded\n   over two lines   \nDate: Tue, 1 Dec 2026 10:00:00 +0000\n\
                 Message-ID: <folded@{DOMAIN}>\n\nbody\n"
            ),
        ),
        (
            "trailing-space",
            format!(
                "{}\nline with trailing spaces   \nand\ttabs\t\t\n  inner   spaces  \n",
                head("X-A: 1\n")
            ),
        ),
        ("empty-body", format!("{}\n", head("X-B: 2\n"))),
        (
            "blank-lines-at-end",
            format!("{}\nbody\n\n\n\n", head("X-C: 3\n")),
        ),
        ("long-line", format!("{}\n{long_line}\n", head("X-D: 4\n"))),
        (
            "eight-bit",
            format!(
                "{}Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
                 Grüße aus Köln, こんにちは\n",
                head("MIME-Version: 1.0\n")
            ),
        ),
        (
            "mime",
            format!(
                "{}Content-Type: multipart/alternative; boundary=\"b1\"\n\n--b1\n\
                 Content-Type: text/plain\n\nplain part\n--b1\nContent-Type: text/html\n\n\
                 <p>html part</p>\n--b1--\n",
                head("MIME-Version: 1.0\n")
            ),
        ),
        (
            "dot-leading",
            format!("{}\n.\n..two dots\n. space\n", head("X-E: 5\n")),
        ),
        (
            "header-case-and-space",
            format!(
                "FROM:   Alice <alice@{DOMAIN}>\nto: bob@receiver.example\nSUBJECT:spaced  words\n\
                 Date: Tue, 1 Dec 2026 10:00:00 +0000\nMessage-ID: <case@{DOMAIN}>\n\nbody\n"
            ),
        ),
    ];
    list.into_iter()
        .map(|(n, m)| (n, m.replace('\n', "\r\n")))
        .collect()
}

fn keys() -> Vec<(&'static str, &'static str, DkimKeyPair)> {
    vec![
        ("rsa2048", "rsa-sha256", rsa_from_seed(19).unwrap()),
        ("ed25519", "ed25519-sha256", ed25519_from_seed(19).unwrap()),
    ]
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[test]
fn dkimpy_verifies_what_mailsim_signs() {
    let dir = tempfile::tempdir().unwrap();
    let mut verified = 0;
    let mut total = 0;
    for (selector, _, key) in keys() {
        let signer =
            mailsim_mta::dkim::Signer::from_pkcs8(DOMAIN, selector, &key.pkcs8_der, key.ed25519)
                .unwrap();
        let mut files = Vec::new();
        for (name, message) in messages() {
            let signed = signer.sign(message.as_bytes(), 1_796_119_200).unwrap();
            let path = dir.path().join(format!("{selector}-{name}.eml"));
            std::fs::write(&path, signed).unwrap();
            files.push(path);
        }
        let out = Command::new("/usr/bin/python3")
            .arg(script("dkim_verify.py"))
            .arg(&key.dns_txt)
            .args(&files)
            .output()
            .expect(
                "python3 with dkimpy (Debian python3-dkim); the README's test command installs it",
            );
        let stdout = String::from_utf8_lossy(&out.stdout);
        total += files.len();
        verified += stdout.lines().filter(|l| l.starts_with("PASS ")).count();
        assert!(
            out.status.success(),
            "{selector}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("dkim-twoway: dkimpy verified {verified} of {total} mailsim signatures");
    assert_eq!((verified, total), (20, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailsim_verifies_what_dkimpy_signs() {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    let dir = tempfile::tempdir().unwrap();
    let mut zones = ZoneSet::new();
    zones.add_zone(".");
    let mut jobs = Vec::new();
    for (selector, algorithm, key) in keys() {
        zones.add(
            &format!("{selector}._domainkey.{DOMAIN}"),
            RecordData::Txt(key.dns_txt.clone()),
        );
        let key_file = dir.path().join(format!("{selector}.key"));
        if key.ed25519 {
            use base64::Engine;
            // The PKCS#8 wrapping's last 32 bytes are the seed dkimpy takes (base64).
            let seed = &key.pkcs8_der[key.pkcs8_der.len() - 32..];
            std::fs::write(
                &key_file,
                base64::engine::general_purpose::STANDARD.encode(seed),
            )
            .unwrap();
        } else {
            let private = rsa::RsaPrivateKey::from_pkcs8_der(&key.pkcs8_der).unwrap();
            let pem = private.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap();
            std::fs::write(&key_file, pem.as_bytes()).unwrap();
        }
        for (name, message) in messages() {
            for canon in [
                "relaxed/relaxed",
                "relaxed/simple",
                "simple/relaxed",
                "simple/simple",
            ] {
                let input = dir.path().join(format!("{name}.eml"));
                std::fs::write(&input, &message).unwrap();
                let out = dir
                    .path()
                    .join(format!("{selector}-{name}-{}.eml", canon.replace('/', "-")));
                jobs.push(serde_json::json!({
                    "in": input, "out": out, "selector": selector, "domain": DOMAIN,
                    "algorithm": algorithm, "key": key_file, "canonicalize": canon,
                }));
            }
        }
    }
    let mut child = Command::new("/usr/bin/python3")
        .arg(script("dkim_sign.py"))
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with dkimpy (Debian python3-dkim); the README's test command installs it");
    serde_json::to_writer(child.stdin.take().unwrap(), &jobs).unwrap();
    assert!(child.wait().unwrap().success(), "dkimpy could not sign");
    let dns = Dns::serve(FaultyZones::new(zones, Vec::new()))
        .await
        .unwrap();
    let mut failed = Vec::new();
    for job in &jobs {
        let path = PathBuf::from(job["out"].as_str().unwrap());
        let raw = std::fs::read(&path).unwrap();
        let received = Received {
            ip: "192.0.2.1".parse().unwrap(),
            helo: "mta.signer.example",
            mail_from: "alice@signer.example",
            message: &raw,
        };
        let v = verify(&dns, "receiver.example", &received).await.unwrap();
        let results: Vec<&str> = v.detail.dkim.iter().map(|d| d.result.as_str()).collect();
        if results != ["pass"] {
            failed.push(format!("{}: {:?}", path.display(), v.detail.dkim));
        }
    }
    dns.shutdown().await;
    eprintln!(
        "dkim-twoway: mailsim verified {} of {} dkimpy signatures",
        jobs.len() - failed.len(),
        jobs.len()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(jobs.len(), 80);
}
