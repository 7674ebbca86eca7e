//! POP3 (RFC 1939) with CAPA and RESP-CODES (RFC 2449), STLS (RFC 2595) and AUTH PLAIN
//! (RFC 5034), sans-IO like the IMAP session and run by the same [`crate::shell`].
//!
//! The maildrop is the user's INBOX as it was at login; DELE marks, QUIT (the UPDATE state)
//! removes the marked messages. UIDL values are the folder's UIDVALIDITY and UID, so they stay
//! the same across sessions and restarts.

use crate::folders::{self, FolderRef, Mailstore};
use crate::shell::{LoginOutcome, OUTPUT_PENDING_MAX, Protocol, Step, Timeout};
use mailsim_smtp::sasl::{PlainRefused, sasl_plain_b64};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Pop3Config {
    pub hostname: String,
    /// RFC 2449: commands are at most 255 octets; a little slack for long user names.
    pub line_bytes_max: usize,
    /// Logged in: RFC 1939 section 3, at least 10 minutes (before login: the shell's).
    pub idle_timeout: Duration,
    pub auth_failures_max: u32,
}

impl Default for Pop3Config {
    fn default() -> Self {
        Pop3Config {
            hostname: "pop3.mailsim.test".into(),
            line_bytes_max: 1024,
            idle_timeout: Duration::from_secs(10 * 60),
            auth_failures_max: 3,
        }
    }
}

struct Listed {
    uid: u32,
    size: u64,
    deleted: bool,
}

enum State {
    Authorization {
        user: Option<String>,
    },
    Transaction {
        folder: FolderRef,
        uidvalidity: u32,
        msgs: Vec<Listed>,
    },
}

pub struct Session {
    cfg: Arc<Pop3Config>,
    store: Arc<Mailstore>,
    state: State,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    tls_active: bool,
    tls_available: bool,
    plaintext_ok: bool,
    /// AUTH PLAIN sent without an initial response: the next line is it.
    awaiting_sasl: bool,
    checking: bool,
    closing: bool,
    auth_failures: u32,
    /// Command lines read so far.
    commands: u64,
}

impl Session {
    pub fn new(
        cfg: Arc<Pop3Config>,
        store: Arc<Mailstore>,
        tls_available: bool,
        plaintext_ok: bool,
    ) -> Self {
        let mut s = Session {
            cfg,
            store,
            state: State::Authorization { user: None },
            inbuf: Vec::new(),
            out: Vec::new(),
            tls_active: false,
            tls_available,
            plaintext_ok,
            awaiting_sasl: false,
            checking: false,
            closing: false,
            auth_failures: 0,
            commands: 0,
        };
        let greeting = format!("+OK {} mailsim POP3 ready.", s.cfg.hostname);
        s.line(&greeting);
        s
    }

    fn line(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn login_allowed(&self) -> bool {
        self.tls_active || self.plaintext_ok
    }

    fn capa(&mut self) {
        self.line("+OK Capability list follows");
        for c in ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"] {
            self.line(c);
        }
        if self.login_allowed() {
            self.line("USER");
            self.line("SASL PLAIN");
        }
        // STLS is a command of the AUTHORIZATION state only (RFC 2595 section 4): not offered
        // once logged in.
        if self.tls_available
            && !self.tls_active
            && matches!(self.state, State::Authorization { .. })
        {
            self.line("STLS");
        }
        self.line("IMPLEMENTATION mailsim");
        self.line(".");
    }

    /// Open the maildrop for `user` (after a successful login).
    fn open(&mut self, user: &str) -> Result<(), String> {
        let folder = self
            .store
            .folder(user, "INBOX")
            .map_err(|e| format!("-ERR [SYS/TEMP] {e}"))?;
        let (uidvalidity, msgs) = {
            let mut f = folders::lock(&folder);
            f.refresh().map_err(|e| format!("-ERR [SYS/TEMP] {e}"))?;
            let msgs = f
                .messages
                .iter()
                .map(|m| Listed {
                    uid: m.uid,
                    size: m.size,
                    deleted: false,
                })
                .collect();
            (f.uidvalidity, msgs)
        };
        self.state = State::Transaction {
            folder,
            uidvalidity,
            msgs,
        };
        Ok(())
    }

    fn command(&mut self, line: &str) -> Option<Step> {
        let mut words = line.split_ascii_whitespace();
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let args: Vec<&str> = words.collect();
        let in_transaction = matches!(self.state, State::Transaction { .. });
        let login_ok = self.login_allowed();
        let tls_offered = self.tls_available && !self.tls_active;
        match (&mut self.state, verb.as_str()) {
            (_, "CAPA") => self.capa(),
            (_, "QUIT") => {
                if let State::Transaction { folder, msgs, .. } = &self.state {
                    let doomed: Vec<u32> =
                        msgs.iter().filter(|m| m.deleted).map(|m| m.uid).collect();
                    let mut f = folders::lock(folder);
                    if let Err(e) = f.expunge_where(|m| doomed.contains(&m.uid)) {
                        drop(f);
                        self.line(&format!(
                            "-ERR [SYS/TEMP] some deleted messages not removed: {e}"
                        ));
                        self.closing = true;
                        return Some(Step::Close);
                    }
                }
                let bye = format!("+OK {} closing.", self.cfg.hostname);
                self.line(&bye);
                self.closing = true;
                return Some(Step::Close);
            }
            (_, "NOOP") if in_transaction => self.line("+OK"),
            (State::Authorization { .. }, "STLS") => {
                if !tls_offered {
                    self.line("-ERR STLS not available.");
                } else {
                    self.line("+OK Begin TLS negotiation.");
                    self.inbuf.clear();
                    return Some(Step::StartTls);
                }
            }
            (State::Authorization { .. }, "USER" | "PASS" | "AUTH") if !login_ok => self
                .line("-ERR [AUTH] Plaintext authentication disallowed on non-secure connections."),
            (State::Authorization { user }, "USER") => match args.first() {
                Some(u) => {
                    *user = Some((*u).to_string());
                    self.line("+OK");
                }
                None => self.line("-ERR USER needs a name."),
            },
            (State::Authorization { user }, "PASS") => match user.take() {
                Some(u) => {
                    // The password is the rest of the line: it may contain spaces.
                    let pass = line.get(5..).unwrap_or("").as_bytes().to_vec();
                    self.checking = true;
                    return Some(Step::Authenticate {
                        login: u,
                        password: pass,
                    });
                }
                None => self.line("-ERR USER first."),
            },
            (State::Authorization { .. }, "AUTH") => match args.as_slice() {
                [] => {
                    self.line("+OK");
                    self.line("PLAIN");
                    self.line(".");
                }
                [mech, rest @ ..] if mech.eq_ignore_ascii_case("PLAIN") => match rest.first() {
                    Some(ir) => return self.sasl(ir),
                    None => {
                        self.awaiting_sasl = true;
                        self.line("+ ");
                    }
                },
                _ => self.line("-ERR Unsupported mechanism."),
            },
            (State::Authorization { .. }, _) => self.line("-ERR Unknown command or not logged in."),
            (State::Transaction { msgs, .. }, "STAT") => {
                let live: Vec<&Listed> = msgs.iter().filter(|m| !m.deleted).collect();
                let bytes: u64 = live.iter().map(|m| m.size).sum();
                let l = format!("+OK {} {bytes}", live.len());
                self.line(&l);
            }
            (
                State::Transaction {
                    msgs, uidvalidity, ..
                },
                "LIST" | "UIDL",
            ) => {
                let uidl = verb == "UIDL";
                let v = *uidvalidity;
                let show = |i: usize, m: &Listed| -> String {
                    if uidl {
                        format!("{} {v:08x}{:08x}", i + 1, m.uid)
                    } else {
                        format!("{} {}", i + 1, m.size)
                    }
                };
                match args.first() {
                    Some(a) => match pick(msgs, a) {
                        Ok(i) => {
                            let l = format!("+OK {}", show(i, &msgs[i]));
                            self.line(&l);
                        }
                        Err(e) => self.line(e),
                    },
                    None => {
                        let lines: Vec<String> = msgs
                            .iter()
                            .enumerate()
                            .filter(|(_, m)| !m.deleted)
                            .map(|(i, m)| show(i, m))
                            .collect();
                        self.line("+OK");
                        for l in lines {
                            self.line(&l);
                        }
                        self.line(".");
                    }
                }
            }
            (State::Transaction { msgs, folder, .. }, "RETR" | "TOP") => {
                let top = verb == "TOP";
                let lines_max = if top {
                    match args.get(1).and_then(|n| n.parse::<usize>().ok()) {
                        Some(n) => Some(n),
                        None => {
                            self.line("-ERR TOP needs a message and a line count.");
                            return None;
                        }
                    }
                } else {
                    None
                };
                let i = match args.first().map(|a| pick(msgs, a)) {
                    Some(Ok(i)) => i,
                    Some(Err(e)) => {
                        self.line(e);
                        return None;
                    }
                    None => {
                        self.line("-ERR Which message?");
                        return None;
                    }
                };
                let uid = msgs[i].uid;
                let content = {
                    let f = folders::lock(folder);
                    f.find(uid).and_then(|m| f.read(m).ok())
                };
                let Some(content) = content else {
                    self.line("-ERR [SYS/TEMP] Message was removed.");
                    return None;
                };
                let shown = match lines_max {
                    None => content.clone(),
                    Some(n) => top_of(&content, n),
                };
                let l = format!("+OK {} octets", content.len());
                self.line(&l);
                // The same framing as SMTP DATA (RFC 1939 section 3): leading dots doubled,
                // CRLF line ends, the terminating "." line.
                mailsim_smtp::client::dot_stuff(&shown, &mut self.out);
            }
            (State::Transaction { msgs, .. }, "DELE") => {
                match args.first().map(|a| pick(msgs, a)) {
                    Some(Ok(i)) => {
                        msgs[i].deleted = true;
                        let l = format!("+OK Message {} deleted.", i + 1);
                        self.line(&l);
                    }
                    Some(Err(e)) => self.line(e),
                    None => self.line("-ERR Which message?"),
                }
            }
            (State::Transaction { msgs, .. }, "RSET") => {
                msgs.iter_mut().for_each(|m| m.deleted = false);
                self.line("+OK");
            }
            (State::Transaction { .. }, _) => self.line("-ERR Unknown command."),
        }
        None
    }

    fn sasl(&mut self, b64: &str) -> Option<Step> {
        if b64 == "*" {
            self.line("-ERR Authentication aborted.");
            return None;
        }
        match sasl_plain_b64(b64) {
            Ok((login, password)) => {
                self.checking = true;
                Some(Step::Authenticate { login, password })
            }
            Err(PlainRefused::Malformed) => {
                self.line("-ERR [AUTH] Invalid PLAIN response.");
                None
            }
            Err(PlainRefused::ActingAsAnother) => {
                self.line("-ERR [AUTH] Acting as another user is not permitted.");
                None
            }
        }
    }
}

/// A message number argument: 1-based, existing, not deleted.
fn pick(msgs: &[Listed], arg: &str) -> Result<usize, &'static str> {
    let n: usize = arg.parse().map_err(|_| "-ERR Invalid message number.")?;
    match n.checked_sub(1).and_then(|i| msgs.get(i).map(|m| (i, m))) {
        Some((_, m)) if m.deleted => Err("-ERR Message is deleted."),
        Some((i, _)) => Ok(i),
        None => Err("-ERR No such message."),
    }
}

/// The header, the empty line and the first `n` lines of the body.
fn top_of(content: &[u8], n: usize) -> Vec<u8> {
    let mime = crate::mime::Mime::new(content);
    let mut out = mime.header_bytes().to_vec();
    let body = mime.text_bytes();
    let mut taken = 0;
    let mut end = 0;
    while taken < n && end < body.len() {
        end = body[end..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |p| end + p + 1);
        taken += 1;
    }
    out.extend_from_slice(&body[..end]);
    out
}

impl Protocol for Session {
    fn feed(&mut self, bytes: &[u8]) {
        self.inbuf.extend_from_slice(bytes);
    }

    fn step(&mut self) -> Step {
        loop {
            if self.closing {
                return Step::Close;
            }
            if self.checking {
                return Step::NeedInput;
            }
            if self.out.len() >= OUTPUT_PENDING_MAX && !self.inbuf.is_empty() {
                return Step::Flush;
            }
            let Some(end) = self.inbuf.iter().position(|&b| b == b'\n') else {
                if self.inbuf.len() > self.cfg.line_bytes_max {
                    self.line("-ERR Line too long.");
                    return Step::Close;
                }
                return Step::NeedInput;
            };
            let raw: Vec<u8> = self.inbuf.drain(..=end).collect();
            self.commands += 1;
            if raw.len() > self.cfg.line_bytes_max {
                self.line("-ERR Line too long.");
                continue;
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            if self.awaiting_sasl {
                self.awaiting_sasl = false;
                if let Some(step) = self.sasl(&line) {
                    return step;
                }
                continue;
            }
            if let Some(step) = self.command(&line) {
                return step;
            }
        }
    }

    fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    fn auth_done(&mut self, outcome: LoginOutcome) {
        self.checking = false;
        match outcome {
            LoginOutcome::Accepted(u) => match self.open(&u) {
                Ok(()) => self.line("+OK Logged in."),
                Err(e) => self.line(&e),
            },
            LoginOutcome::Rejected => {
                self.auth_failures += 1;
                self.line("-ERR [AUTH] Authentication failed.");
                if self.auth_failures >= self.cfg.auth_failures_max {
                    self.closing = true;
                }
            }
            LoginOutcome::Throttled => {
                self.line(
                    "-ERR [SYS/TEMP] Too many failed logins from your address, try again later.",
                );
                self.closing = true;
            }
        }
    }

    fn authenticated(&self) -> bool {
        matches!(self.state, State::Transaction { .. })
    }

    fn partial_command(&self) -> Option<u64> {
        (!self.inbuf.is_empty() || self.awaiting_sasl).then_some(self.commands)
    }

    fn timed_out(&mut self, why: Timeout) {
        self.line(match why {
            Timeout::Idle => "-ERR Disconnected for inactivity.",
            Timeout::Command => "-ERR Disconnected: command not completed in time.",
            Timeout::Login => "-ERR Disconnected: not logged in in time.",
        });
        self.closing = true;
    }

    fn tls_started(&mut self) {
        self.tls_active = true;
    }

    fn idle_timeout(&self) -> Duration {
        self.cfg.idle_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &mut Session, input: &str) -> String {
        s.feed(input.as_bytes());
        loop {
            match s.step() {
                Step::Authenticate { login, password } => {
                    let ok = login == "bob" && password == b"pw";
                    s.auth_done(if ok {
                        LoginOutcome::Accepted("bob@example.test".into())
                    } else {
                        LoginOutcome::Rejected
                    });
                }
                Step::Flush => {}
                _ => break,
            }
        }
        String::from_utf8(s.take_output()).unwrap()
    }

    /// Commands pipelined by a client that does not read are answered a bounded amount at a
    /// time ([`Step::Flush`] once the unsent output passes [`OUTPUT_PENDING_MAX`]): 800
    /// RETRs of a 1 MB message held 380 MB before.
    #[test]
    fn pipelined_answers_wait_for_the_output_to_be_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Mailstore::new(dir.path(), 0));
        let message = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(100_000));
        store
            .deliver("bob@example.test", message.as_bytes())
            .unwrap();
        let mut s = Session::new(Arc::new(Pop3Config::default()), store, false, true);
        run(&mut s, "USER bob\r\nPASS pw\r\n");
        s.feed("RETR 1\r\n".repeat(40).as_bytes());
        let (mut answered, mut flushes) = (0, 0);
        loop {
            let step = s.step();
            let out = s.take_output();
            assert!(
                out.len() < OUTPUT_PENDING_MAX + message.len() + 100,
                "{}",
                out.len()
            );
            answered += out.windows(4).filter(|w| w == b"+OK ").count();
            match step {
                Step::Flush => flushes += 1,
                other => {
                    assert_eq!(other, Step::NeedInput);
                    break;
                }
            }
        }
        assert_eq!(answered, 40);
        assert!(flushes >= 10, "{flushes}");
    }

    #[test]
    fn login_list_retr_top_dele_quit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Mailstore::new(dir.path(), 0));
        store
            .deliver(
                "bob@example.test",
                b"Subject: a\r\n\r\n.dot line\r\nl2\r\nl3\r\n",
            )
            .unwrap();
        store
            .deliver("bob@example.test", b"Subject: b\r\n\r\nx\r\n")
            .unwrap();
        let mut s = Session::new(Arc::new(Pop3Config::default()), store.clone(), false, true);
        assert!(run(&mut s, "").starts_with("+OK"));
        assert!(run(&mut s, "USER bob\r\nPASS nope\r\n").contains("-ERR [AUTH]"));
        assert!(run(&mut s, "USER bob\r\nPASS pw\r\n").contains("+OK Logged in."));
        assert_eq!(run(&mut s, "STAT\r\n"), "+OK 2 50\r\n");
        let r = run(&mut s, "LIST\r\nUIDL 2\r\n");
        assert!(r.starts_with("+OK\r\n1 33\r\n2 17\r\n.\r\n+OK 2 "), "{r}");
        let r = run(&mut s, "RETR 1\r\n");
        assert_eq!(
            r,
            "+OK 33 octets\r\nSubject: a\r\n\r\n..dot line\r\nl2\r\nl3\r\n.\r\n"
        );
        let r = run(&mut s, "TOP 1 1\r\n");
        assert_eq!(r, "+OK 33 octets\r\nSubject: a\r\n\r\n..dot line\r\n.\r\n");
        assert!(run(&mut s, "DELE 1\r\nRETR 1\r\n").contains("-ERR Message is deleted."));
        assert!(run(&mut s, "QUIT\r\n").starts_with("+OK"));
        let inbox = store.folder("bob@example.test", "INBOX").unwrap();
        assert_eq!(folders::lock(&inbox).messages.len(), 1);
    }

    #[test]
    fn plaintext_refused_without_tls_off_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Mailstore::new(dir.path(), 0));
        let mut s = Session::new(Arc::new(Pop3Config::default()), store, true, false);
        run(&mut s, "");
        let r = run(&mut s, "CAPA\r\nUSER bob\r\n");
        assert!(r.contains("STLS") && !r.contains("USER\r\n"), "{r}");
        assert!(r.contains("-ERR [AUTH] Plaintext"), "{r}");
        assert_eq!(s.step(), Step::NeedInput);
        s.feed(b"STLS\r\n");
        assert_eq!(s.step(), Step::StartTls);
    }

    /// AUTH PLAIN (RFC 5034): a response asking to act as another user is refused as such,
    /// not as a response that does not decode (found by an independent review).
    #[test]
    fn auth_plain_refuses_acting_as_another_user() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Mailstore::new(dir.path(), 0));
        let mut s = Session::new(Arc::new(Pop3Config::default()), store, true, true);
        run(&mut s, "");
        // "eve NUL bob NUL pw", then garbage, then "NUL bob NUL pw".
        let r = run(&mut s, "AUTH PLAIN ZXZlAGJvYgBwdw==\r\n");
        assert_eq!(
            r,
            "-ERR [AUTH] Acting as another user is not permitted.\r\n"
        );
        let r = run(&mut s, "AUTH PLAIN !!\r\n");
        assert_eq!(r, "-ERR [AUTH] Invalid PLAIN response.\r\n");
        let r = run(&mut s, "AUTH PLAIN AGJvYgBwdw==\r\n");
        assert!(r.starts_with("+OK"), "{r}");
    }

    /// STLS is offered before login only (an independent review saw it listed after login,
    /// then refused).
    #[test]
    fn stls_is_not_offered_once_logged_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Mailstore::new(dir.path(), 0));
        let mut s = Session::new(Arc::new(Pop3Config::default()), store, true, true);
        run(&mut s, "");
        assert!(run(&mut s, "CAPA\r\n").contains("STLS\r\n"));
        assert!(run(&mut s, "USER bob\r\nPASS pw\r\n").contains("+OK"));
        let r = run(&mut s, "CAPA\r\n");
        assert!(r.starts_with("+OK") && !r.contains("STLS"), "{r}");
    }
}
