//! SMTP conformance: command/reply scripts run against the server over an in-memory pipe, as a
//! client would see it (the replies are read with the client's own reader).
//!
//! The scripts are in OpenSMTPD's smtpscript language (`tests/data/opensmtpd/`, from
//! OpenSMTPD's regression suite, ISC licence: see ORIGIN.md there) plus mailsim's own cases in
//! the same language (`tests/data/mailsim.smtpscript`: pipelining, dot-stuffing, limits, AUTH).
//! mailsim's cases may also name an exact code (`expect smtp 552`) and a text the reply must
//! contain (`expect smtp ok "received 5 bytes"`), and `write` sends bytes without a CRLF.
//!
//! Where mailsim answers differently from OpenSMTPD on purpose, the case is listed in
//! `tests/data/opensmtpd/DEVIATIONS` with the reason; such a case must still fail (a listed
//! case that passes is reported, so the list stays true).

use mailsim_smtp::sasl::LoginOutcome;
use mailsim_smtp::server::{Backend, Server, ServerConfig, SessionInfo, Transaction};
use mailsim_smtp::tls::Tls;
use mailsim_smtp::{Reply, ReplyReader};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

// ---- the language ----

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Open,
    Close,
}

fn lex(src: &str, file: &str) -> Result<Vec<(Token, usize)>, String> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '{' => out.push((Token::Open, line)),
            '}' => out.push((Token::Close, line)),
            '"' => {
                let start = line;
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("{file}:{start}: string never closed")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('r') => s.push('\r'),
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(c) => s.push(c),
                            None => return Err(format!("{file}:{start}: string never closed")),
                        },
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            s.push(c)
                        }
                    }
                }
                out.push((Token::Str(s), start));
            }
            c => {
                let mut w = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || n == '{' || n == '}' || n == '"' {
                        break;
                    }
                    w.push(n);
                    chars.next();
                }
                out.push((Token::Word(w), line));
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Class {
    /// Any reply.
    Any,
    /// 2xx or 3xx.
    Ok,
    /// 2xx (an EHLO or HELO answer).
    Helo,
    TempFail,
    PermFail,
    Code(u16),
}

#[derive(Debug, Clone)]
enum Stmt {
    Block(Vec<Stmt>),
    Repeat(u32, Box<Stmt>),
    Random(Vec<Stmt>),
    Call(String),
    Write(String),
    Expect(Class, Option<String>),
    ExpectDisconnect,
    Sleep(u64),
    Fail(String),
    Noop,
    StartTls,
}

#[derive(Debug)]
struct Case {
    /// `file:line`.
    place: String,
    name: String,
    connect: bool,
    expect_fail: bool,
    skip: bool,
    body: Vec<Stmt>,
}

struct Parser<'a> {
    toks: &'a [(Token, usize)],
    pos: usize,
    file: &'a str,
}

impl Parser<'_> {
    fn line(&self) -> usize {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map_or(0, |t| t.1)
    }
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{}:{}: {what}", self.file, self.line()))
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.pos).map(|t| t.0.clone());
        self.pos += 1;
        t
    }
    fn peek_word(&self) -> Option<&str> {
        match self.toks.get(self.pos) {
            Some((Token::Word(w), _)) => Some(w),
            _ => None,
        }
    }
    fn word(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Word(w)) => Ok(w),
            _ => self.err("a word expected"),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Str(s)) => Ok(s),
            _ => self.err("a string expected"),
        }
    }
    fn number(&mut self) -> Result<u64, String> {
        let w = self.word()?;
        w.parse()
            .or_else(|_| self.err(&format!("a number expected, not {w:?}")))
    }
    fn block(&mut self) -> Result<Vec<Stmt>, String> {
        if self.next() != Some(Token::Open) {
            return self.err("`{` expected");
        }
        let mut body = Vec::new();
        loop {
            if self.toks.get(self.pos).map(|t| &t.0) == Some(&Token::Close) {
                self.pos += 1;
                return Ok(body);
            }
            if self.pos >= self.toks.len() {
                return self.err("`}` expected");
            }
            body.push(self.stmt()?);
        }
    }
    fn stmt(&mut self) -> Result<Stmt, String> {
        if self.toks.get(self.pos).map(|t| &t.0) == Some(&Token::Open) {
            return Ok(Stmt::Block(self.block()?));
        }
        let w = self.word()?;
        Ok(match w.as_str() {
            "repeat" => {
                let n = self.number()? as u32;
                Stmt::Repeat(n, Box::new(self.stmt()?))
            }
            "random" => Stmt::Random(self.block()?),
            "call" => {
                let name = self.word()?;
                // Arguments (unused by the scripts here) are strings or words up to the line end.
                Stmt::Call(name)
            }
            "writeln" => Stmt::Write(self.string()? + "\r\n"),
            "write" => Stmt::Write(self.string()?),
            "expect" => match self.word()?.as_str() {
                "disconnect" => Stmt::ExpectDisconnect,
                "smtp" => {
                    let class = match self.peek_word() {
                        Some("ok") => Class::Ok,
                        Some("helo") => Class::Helo,
                        Some("tempfail") => Class::TempFail,
                        Some("permfail") => Class::PermFail,
                        Some(c) if c.len() == 3 && c.parse::<u16>().is_ok() => {
                            Class::Code(c.parse().unwrap_or(0))
                        }
                        _ => Class::Any,
                    };
                    if class != Class::Any {
                        self.pos += 1;
                    }
                    let text = match self.toks.get(self.pos) {
                        Some((Token::Str(_), _)) => Some(self.string()?),
                        _ => None,
                    };
                    Stmt::Expect(class, text)
                }
                other => return self.err(&format!("expect {other}?")),
            },
            "sleep" => Stmt::Sleep(self.number()?),
            "fail" => Stmt::Fail(self.string()?),
            "noop" => Stmt::Noop,
            "starttls" => Stmt::StartTls,
            other => return self.err(&format!("unknown statement {other:?}")),
        })
    }
}

/// The cases and procedures of one script.
/// Procedures by name.
type Procs = BTreeMap<String, Vec<Stmt>>;

fn parse(src: &str, file: &str) -> Result<(Vec<Case>, Procs), String> {
    let toks = lex(src, file)?;
    let mut p = Parser {
        toks: &toks,
        pos: 0,
        file,
    };
    let mut cases = Vec::new();
    let mut procs = BTreeMap::new();
    while p.pos < toks.len() {
        let line = p.line();
        match p.word()?.as_str() {
            "proc" => {
                let name = p.word()?;
                while p.peek_word().is_some_and(|w| w.starts_with('%')) {
                    p.pos += 1;
                }
                procs.insert(name, p.block()?);
            }
            "test-case" => {
                let mut case = Case {
                    place: format!("{file}:{line}"),
                    name: String::new(),
                    connect: true,
                    expect_fail: false,
                    skip: false,
                    body: Vec::new(),
                };
                while let Some(w) = p.peek_word().map(str::to_string) {
                    p.pos += 1;
                    match w.as_str() {
                        "name" => case.name = p.string()?,
                        "no-autoconnect" => case.connect = false,
                        "skip" => case.skip = true,
                        "expect" => {
                            if p.word()? != "fail" {
                                return p.err("`expect fail` expected");
                            }
                            case.expect_fail = true;
                        }
                        other => return p.err(&format!("unknown test-case option {other:?}")),
                    }
                }
                case.body = p.block()?;
                cases.push(case);
            }
            other => return p.err(&format!("`test-case` or `proc` expected, not {other:?}")),
        }
    }
    Ok((cases, procs))
}

// ---- the server under test ----

const HOST: &str = "mx.conformance.test";

/// Accepts every sender and recipient except `unknown@...` (550 5.1.1) and `busy@...`
/// (450 4.2.1); a message is answered with its size and line count after unstuffing, so that
/// scripts can check what the server received; `bob`/`secret` logs in.
struct Acceptor;

impl Backend for Acceptor {
    fn on_connect(&self, _: &SessionInfo) -> Option<Reply> {
        None
    }
    fn on_mail(&self, _: &SessionInfo, _: &str) -> Reply {
        Reply::new(250, (2, 1, 0), "sender ok")
    }
    async fn on_rcpt(&self, _: &SessionInfo, _: &Transaction, rcpt: &str) -> Reply {
        if rcpt.starts_with("unknown@") {
            Reply::new(550, (5, 1, 1), "no such user")
        } else if rcpt.starts_with("busy@") {
            Reply::new(450, (4, 2, 1), "try again later")
        } else {
            Reply::new(250, (2, 1, 5), "recipient ok")
        }
    }
    async fn on_data(&self, _: &SessionInfo, tx: &Transaction, message: Vec<u8>) -> Reply {
        let lines = message.split(|&b| b == b'\n').count() - 1;
        let dots = message
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b"."))
            .count();
        Reply::new(
            250,
            (2, 0, 0),
            format!(
                "received {} bytes, {lines} lines, {dots} starting with a dot, for {} recipients",
                message.len(),
                tx.rcpts.len()
            ),
        )
    }
    async fn authenticate(&self, _: &SessionInfo, login: &str, password: &[u8]) -> LoginOutcome {
        if login == "bob" && password == b"secret" {
            LoginOutcome::Accepted("bob".into())
        } else {
            LoginOutcome::Rejected
        }
    }
}

/// OpenSMTPD's scripts run against the default limits with STARTTLS; mailsim's own against
/// small limits (to reach them) and AUTH.
fn config(tls: &Tls, small: bool) -> ServerConfig {
    let base = ServerConfig {
        hostname: HOST.into(),
        tls: Some(tls.clone()),
        ..ServerConfig::default()
    };
    if !small {
        return base;
    }
    ServerConfig {
        message_bytes_max: 2_000,
        rcpts_per_message_max: 3,
        rcpt_rejects_max: Some(5),
        auth: true,
        ..base
    }
}

// ---- running a case ----

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Client {
    stream: Option<Box<dyn Io>>,
    reader: ReplyReader,
    buf: Vec<u8>,
    pos: usize,
    cert: Vec<u8>,
}

/// How long the client waits for a reply (the server's own timers fire well before).
const WAIT: Duration = Duration::from_secs(3600);

impl Client {
    fn io(&mut self) -> Result<&mut Box<dyn Io>, String> {
        self.stream
            .as_mut()
            .ok_or_else(|| "not connected".to_string())
    }

    async fn reply(&mut self) -> Result<Reply, String> {
        loop {
            if self.pos < self.buf.len() {
                let mut it = self.buf[self.pos..].iter();
                let parsed = self.reader.parse(&mut it);
                self.pos = self.buf.len() - it.len();
                match parsed {
                    Ok(Some(r)) => return Ok(r),
                    Ok(None) => {}
                    Err(e) => return Err(format!("malformed reply: {e}")),
                }
            }
            let mut chunk = [0u8; 4096];
            let io = self.io()?;
            match tokio::time::timeout(WAIT, io.read(&mut chunk)).await {
                Err(_) => return Err("no reply".into()),
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Ok(Ok(0)) => return Err("connection closed instead of a reply".into()),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn disconnect(&mut self) -> Result<(), String> {
        if self.pos < self.buf.len() {
            return Err(format!(
                "more data instead of a disconnect: {:?}",
                String::from_utf8_lossy(&self.buf[self.pos..])
            ));
        }
        let mut chunk = [0u8; 512];
        let io = self.io()?;
        match tokio::time::timeout(WAIT, io.read(&mut chunk)).await {
            Err(_) => Err("still connected".into()),
            Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
            Ok(Ok(n)) => Err(format!(
                "data instead of a disconnect: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            )),
        }
    }

    async fn starttls(&mut self) -> Result<(), String> {
        let stream = self.stream.take().ok_or("not connected")?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.cert.clone()))
            .map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(HOST).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        self.stream = Some(Box::new(tls));
        self.buf.clear();
        self.pos = 0;
        Ok(())
    }
}

fn matches(class: Class, text: &Option<String>, r: &Reply) -> bool {
    let code_ok = match class {
        Class::Any => true,
        Class::Ok => (200..400).contains(&r.code),
        Class::Helo => (200..300).contains(&r.code),
        Class::TempFail => (400..500).contains(&r.code),
        Class::PermFail => (500..600).contains(&r.code),
        Class::Code(c) => r.code == c,
    };
    code_ok && text.as_ref().is_none_or(|t| r.text.contains(t.as_str()))
}

/// Run statements; `Err` is the first failure.
fn run<'a>(
    stmts: &'a [Stmt],
    client: &'a mut Client,
    procs: &'a Procs,
    rng: &'a mut u64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
    Box::pin(async move {
        for s in stmts {
            match s {
                Stmt::Block(b) => run(b, client, procs, rng).await?,
                Stmt::Repeat(n, s) => {
                    for _ in 0..*n {
                        run(std::slice::from_ref(s), client, procs, rng).await?;
                    }
                }
                Stmt::Random(b) => {
                    // A fixed shuffle (xorshift), so a failure replays.
                    let mut order: Vec<&Stmt> = b.iter().collect();
                    for i in (1..order.len()).rev() {
                        *rng ^= *rng << 13;
                        *rng ^= *rng >> 7;
                        *rng ^= *rng << 17;
                        order.swap(i, (*rng % (i as u64 + 1)) as usize);
                    }
                    for s in order {
                        run(std::slice::from_ref(s), client, procs, rng).await?;
                    }
                }
                Stmt::Call(name) => {
                    let body = procs.get(name).ok_or(format!("no proc {name}"))?;
                    run(body, client, procs, rng).await?;
                }
                Stmt::Write(bytes) => {
                    let io = client.io()?;
                    io.write_all(bytes.as_bytes())
                        .await
                        .map_err(|e| format!("write {bytes:?}: {e}"))?;
                }
                Stmt::Expect(class, text) => {
                    let r = client.reply().await?;
                    if !matches(*class, text, &r) {
                        return Err(format!(
                            "expected {class:?}{}, got {} {} {:?}",
                            text.as_ref().map(|t| format!(" {t:?}")).unwrap_or_default(),
                            r.code,
                            r.enhanced.as_deref().unwrap_or(""),
                            r.text
                        ));
                    }
                }
                Stmt::ExpectDisconnect => client.disconnect().await?,
                Stmt::Sleep(ms) => tokio::time::sleep(Duration::from_millis(*ms)).await,
                Stmt::Fail(why) => return Err(format!("fail: {why}")),
                Stmt::Noop => {}
                Stmt::StartTls => client.starttls().await?,
            }
        }
        Ok(())
    })
}

async fn run_case(
    case: &Case,
    procs: &Procs,
    server: &Arc<Server<Acceptor>>,
    cert: &[u8],
) -> Result<(), String> {
    let mut client = Client {
        stream: None,
        reader: ReplyReader::default(),
        buf: Vec::new(),
        pos: 0,
        cert: cert.to_vec(),
    };
    let mut session = None;
    if case.connect {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let server = server.clone();
        let peer: SocketAddr = "127.0.0.1:40000".parse().map_err(|_| "addr")?;
        let local: SocketAddr = "127.0.0.1:25".parse().map_err(|_| "addr")?;
        session = Some(tokio::spawn(async move {
            server.accept(theirs, peer, local).await
        }));
        client.stream = Some(Box::new(ours));
    }
    let mut rng = 0x2545_F491_4F6C_DD1D;
    let result = run(&case.body, &mut client, procs, &mut rng).await;
    drop(client);
    if let Some(s) = session {
        // The server ends its session once the client is gone.
        tokio::time::timeout(WAIT, s)
            .await
            .map_err(|_| "the server session did not end after the client left")?
            .map_err(|e| format!("the server session panicked: {e}"))?;
    }
    result
}

/// `file:line reason` lines; `#` comments.
fn deviations(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .map(|(place, why)| (place.to_string(), why.trim().to_string()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn smtp_scripts_run_against_the_server() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let tls = Tls::self_signed(&[HOST.to_string()]).expect("certificate");
    let servers =
        [false, true].map(|small| Arc::new(Server::new(Arc::new(Acceptor), config(&tls, small))));
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(data.join("opensmtpd"))
        .expect("opensmtpd scripts")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("test."))
        })
        .collect();
    files.sort();
    files.push(data.join("mailsim.smtpscript"));
    let deviations = deviations(&data.join("opensmtpd/DEVIATIONS"));
    let mut seen = BTreeSet::new();
    let (mut passed, mut deviating, mut failures) = (0, 0, Vec::new());
    for file in &files {
        let name = file
            .strip_prefix(&data)
            .unwrap_or(file)
            .display()
            .to_string();
        let src = std::fs::read_to_string(file).expect("script");
        let (cases, procs) = parse(&src, &name).unwrap_or_else(|e| panic!("{e}"));
        let server = &servers[usize::from(name.starts_with("mailsim"))];
        assert!(!cases.is_empty(), "{name}: no test-case");
        for case in cases.iter().filter(|c| !c.skip) {
            let outcome = run_case(case, &procs, server, &tls.cert_der).await;
            let deviation = deviations.get(&case.place);
            if deviation.is_some() {
                seen.insert(case.place.clone());
            }
            match (outcome, case.expect_fail, deviation) {
                (Ok(()), false, None) | (Err(_), true, None) => passed += 1,
                (Err(_), false, Some(_)) => deviating += 1,
                (Ok(()), _, Some(why)) => failures.push(format!(
                    "{} {}: passes, but is listed as a deviation ({why})",
                    case.place, case.name
                )),
                (Err(e), false, None) => {
                    failures.push(format!("{} {}: {e}", case.place, case.name))
                }
                (Ok(()), true, None) => failures.push(format!(
                    "{} {}: should fail but passed",
                    case.place, case.name
                )),
                (Err(_), true, Some(_)) => deviating += 1,
            }
        }
    }
    for place in deviations.keys().filter(|p| !seen.contains(*p)) {
        failures.push(format!("DEVIATIONS names {place}, which is no case"));
    }
    println!("{passed} cases pass, {deviating} listed deviations");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(passed >= 80, "only {passed} cases ran");
}
