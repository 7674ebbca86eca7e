//! Address literals (RFC 5321 sections 4.1.3 and 5.1): a recipient `user@[127.0.0.1]`
//! submitted to the MTA daemon is delivered to that address without an MX lookup (the DNS it is
//! given holds no record of any recipient domain), and a quoted local part keeps its quotes on
//! the way. Observed at the receiving side: a plain SMTP sink written in Python here, not
//! mailsim's server, records the envelope it was given.

mod common;

use common::{Reaper, field};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An SMTP sink on 127.0.0.1:`port`: answers 250 to everything, and appends each
/// transaction's envelope (`MAIL` and `RCPT` arguments as sent) and Subject to `log`.
const SINK: &str = r#"
import socketserver, sys
port, log = int(sys.argv[1]), sys.argv[2]
class H(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"220 sink.test ESMTP\r\n")
        env = []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250 sink.test\r\n")
            elif verb in (b"MAIL", b"RCPT"):
                env.append(line.strip().decode())
                self.wfile.write(b"250 ok\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go\r\n")
                subject = ""
                while True:
                    l = self.rfile.readline()
                    if l in (b".\r\n", b""):
                        break
                    if l.lower().startswith(b"subject:"):
                        subject = l.decode().strip()
                with open(log, "a") as f:
                    f.write("\n".join(env + [subject]) + "\n\n")
                env = []
                self.wfile.write(b"250 stored\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")
socketserver.TCPServer.allow_reuse_address = True
with socketserver.ThreadingTCPServer(("127.0.0.1", port), H) as s:
    print("ready", flush=True)
    s.serve_forever()
"#;

#[test]
fn a_recipient_at_an_address_literal_is_delivered_there_without_dns() {
    let dir = tempfile::tempdir().unwrap();
    let zone = dir.path().join("empty.zone");
    std::fs::write(
        &zone,
        "$ORIGIN news.example.test.\n$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 300\n",
    )
    .unwrap();
    let (dns, dns_port) = common::serve_dns(&["--zone", zone.to_str().unwrap()]);
    let _dns = Reaper(dns);
    let sink_port = common::free_port();
    let log = dir.path().join("sink.log");
    let (sink, _) = common::start_daemon(
        Command::new("python3")
            .args(["-c", SINK, &sink_port.to_string()])
            .arg(&log),
    );
    let _sink = Reaper(sink);
    let (mta, ready) = common::start_daemon(
        Command::new(env!("CARGO_BIN_EXE_mailsim"))
            .arg("mta")
            .arg("--spool")
            .arg(dir.path().join("spool"))
            .args(["--dns", &format!("127.0.0.1:{dns_port}")])
            .args(["--submission", "127.0.0.1:0", "--tls", "off"])
            .args(["--remote-port", &sink_port.to_string()]),
    );
    let _mta = Reaper(mta);
    let submission = field(&ready, "submission");
    let (host, port) = submission.rsplit_once(':').unwrap();
    // Python's smtplib quotes nothing itself: the paths are written as given.
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('{host}', {port})\n\
         s.ehlo('client.test')\n\
         s.mail('<app@[127.0.0.1]>')\n\
         for r in ['<ann@[127.0.0.1]>', '<\"bob smith\"@[127.0.0.1]>']:\n\
         \x20   code, text = s.rcpt(r)\n\
         \x20   assert code == 250, (r, code, text)\n\
         code, text = s.data(b'From: app@news.example.test\\r\\nSubject: literal\\r\\n\\r\\nHello\\r\\n')\n\
         assert code == 250, (code, text)\n\
         code, text = s.docmd('RCPT TO:<carol@[300.0.0.1]>')\n\
         print(code, text.decode())\n\
         s.quit()\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An address literal that is no address is bad syntax (out of a transaction: the 503 for
    // a missing MAIL would come after the syntax).
    let refused = String::from_utf8_lossy(&out.stdout);
    assert!(refused.starts_with("501 5.1.3"), "{refused}");
    let started = Instant::now();
    let seen = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let rcpts = text.lines().filter(|l| l.starts_with("RCPT")).count();
        if rcpts >= 2 {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not delivered to the literal after 60 s: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(seen.contains("Subject: literal"), "{seen}");
    let rcpts: Vec<&str> = seen.lines().filter(|l| l.starts_with("RCPT")).collect();
    for want in ["<ann@[127.0.0.1]>", "<\"bob smith\"@[127.0.0.1]>"] {
        assert!(
            rcpts
                .iter()
                .any(|r| r.starts_with(&format!("RCPT TO:{want}"))),
            "{want} in {rcpts:?}"
        );
    }
}
