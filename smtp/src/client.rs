//! The outbound SMTP client.
//!
//! The protocol pieces are sans-IO: [`ClientTransaction`] is one mail transaction as a state
//! machine (replies in, commands and the outcome out), [`ReplyReader`] turns bytes into replies
//! with smtp-proto's response parser, [`dot_stuff`] frames a message body for DATA,
//! [`Capabilities`] reads an EHLO reply. [`SmtpClient`] is the thin async shell around them,
//! generic over the stream, so TCP, TLS and in-memory pipes all work.

use crate::reply::{Reply, ReplyReader};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Per-phase timeouts of a client session.
#[derive(Debug, Clone, Copy)]
pub struct SmtpTimeouts {
    pub connect: Duration,
    pub greeting: Duration,
    pub command: Duration,
    pub data: Duration,
}

impl Default for SmtpTimeouts {
    fn default() -> Self {
        // RFC 5321 section 4.5.3.2 suggests minutes; a testbed on loopback wants less.
        SmtpTimeouts {
            connect: Duration::from_secs(10),
            greeting: Duration::from_secs(60),
            command: Duration::from_secs(60),
            data: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{phase}: {source}")]
    Io {
        phase: &'static str,
        source: std::io::Error,
    },
    #[error("{phase}: timed out")]
    Timeout { phase: &'static str },
    #[error("{phase}: connection closed by server")]
    Closed { phase: &'static str },
    #[error("{phase}: malformed reply: {message}")]
    Protocol {
        phase: &'static str,
        message: String,
    },
    /// The TLS handshake after STARTTLS failed (the connection is unusable).
    #[error("STARTTLS: handshake failed: {0}")]
    Tls(String),
    /// The message could not be read when the server asked for it (after its 354): the
    /// connection is in the middle of DATA and unusable.
    #[error("DATA: the message could not be read: {0}")]
    Message(std::io::Error),
    /// The RSET that went first in this transaction's commands (the one before it ended short
    /// of its data) was refused (`reply`) or the connection failed before its reply: the
    /// server never began this transaction, and the connection is not fit for it (its other
    /// replies are unread). Try it on another connection. (A 421 there is not this error: it
    /// decides the transaction as a 421 to MAIL would.)
    #[error("RSET: {cause}")]
    Reset { reply: Option<Reply>, cause: String },
}

/// What the server said it supports in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    pub size_bytes_max: Option<u64>,
    pub eight_bit_mime: bool,
    pub starttls: bool,
}

impl Capabilities {
    pub fn from_ehlo_text(text: &str) -> Self {
        let mut caps = Capabilities::default();
        for line in text.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "8BITMIME" => caps.eight_bit_mime = true,
                "STARTTLS" => caps.starttls = true,
                "SIZE" => {
                    caps.size_bytes_max =
                        words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0)
                }
                _ => {}
            }
        }
        caps
    }
}

/// Frame a message for DATA: normalise bare LF and bare CR to CRLF, double leading dots, end with
/// `CRLF.CRLF`. Appends to `out`.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 5);
    // Line by line (memchr finds the line ends), copying whole lines: a 100 KB body is a few
    // thousand copies, not a hundred thousand pushes.
    let mut rest = body;
    while let Some(&first) = rest.first() {
        if first == b'.' {
            out.push(b'.');
        }
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        push_line(line.strip_suffix(b"\r").unwrap_or(line), out);
        out.extend_from_slice(b"\r\n");
        rest = next;
    }
    out.extend_from_slice(b".\r\n");
}

/// One line's content (without its line end): a CR in it, not followed by LF, ends a line as
/// CRLF, and a dot after it is doubled. RFC 5321 section 2.3.8: a client sends CR only in
/// CRLF. Sent on as it was, "text<CR>.<CR><LF>" ends the message early at a receiver that takes
/// a bare CR for a line end, and what follows is read as commands (SMTP smuggling).
fn push_line(content: &[u8], out: &mut Vec<u8>) {
    if memchr::memchr(b'\r', content).is_none() {
        out.extend_from_slice(content);
        return;
    }
    for (n, piece) in content.split(|&b| b == b'\r').enumerate() {
        if n > 0 {
            out.extend_from_slice(b"\r\n");
            if piece.first() == Some(&b'.') {
                out.push(b'.');
            }
        }
        out.extend_from_slice(piece);
    }
}

/// One envelope to send in a transaction.
pub struct Envelope<'a> {
    pub from: &'a str,
    pub rcpt: &'a str,
    pub body: &'a [u8],
}

/// An envelope whose message is asked for only once the server takes it (354 with the
/// recipient accepted): [`SmtpClient::transaction_reading`].
pub struct EnvelopeHead<'a> {
    pub from: &'a str,
    pub rcpt: &'a str,
    /// The message's size in bytes (the SIZE parameter of MAIL, RFC 1870).
    pub size: usize,
}

/// How one transaction ended for its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionOutcome {
    /// The reply that decides the recipient's fate (MAIL, RCPT, or the end of DATA).
    pub decisive: Reply,
    pub decisive_command: &'static str,
    /// The server closed (or will close) the connection: no further transaction on it.
    pub connection_closed: bool,
    /// Every reply received, with its command, in order.
    pub replies: Vec<(&'static str, Reply)>,
}

/// Which timeout an I/O step runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Command,
    /// Sending a message and waiting for the reply to its end.
    Data,
}

/// What the driver of a [`ClientTransaction`] does next.
#[derive(Debug)]
pub enum Step {
    /// Send what the transaction appended to the output (`phase` names the command in errors),
    /// then tell [`ClientTransaction::sent`].
    Send { phase: &'static str, wait: Wait },
    /// Read one reply for `phase`, then give it to [`ClientTransaction::reply`].
    Read { phase: &'static str, wait: Wait },
    /// The server takes the message: give it to [`ClientTransaction::message`].
    Message,
    /// The transaction is over.
    Done(TransactionOutcome),
    /// The transaction cannot go on, and its recipient is not decided ([`ClientError::Reset`]).
    Failed(ClientError),
}

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SendMail,
    /// The reply to the RSET that went first (see [`ClientTransaction::following`]).
    ReadReset,
    ReadMail,
    SendRcpt,
    ReadRcpt,
    SendData,
    ReadData,
    /// "." for a message nobody can receive (the server said 354 anyway), and its reply.
    SendEmpty,
    ReadEmpty,
    /// Waiting for the message from the driver.
    Message,
    SendBody,
    ReadEnd,
    /// RSET after a failure; then the outcome kept in `after_rset`.
    SendRset,
    ReadRset,
    Done,
}

/// One mail transaction for one recipient, sans-IO: replies in, commands and the outcome out.
/// With PIPELINING, MAIL, RCPT and DATA go in one write (RFC 2920); without, one at a time.
/// [`SmtpClient::transaction`] drives it over a stream.
pub struct ClientTransaction {
    /// The RCPT command still to send (empty with PIPELINING: sent with MAIL).
    rcpt_cmd: Vec<u8>,
    pipelining: bool,
    state: State,
    mail: Option<Reply>,
    rcpt: Option<Reply>,
    data: Option<Reply>,
    replies: Vec<(&'static str, Reply)>,
    after_rset: Option<TransactionOutcome>,
    /// RSET went first in this transaction's commands.
    reset_first: bool,
    /// It ended short of its data with PIPELINING: the next one on the connection resets first.
    owes_reset: bool,
}

/// `RCPT TO:<rcpt>` and its line end.
fn push_rcpt(out: &mut Vec<u8>, rcpt: &str) {
    out.extend_from_slice(b"RCPT TO:<");
    out.extend_from_slice(rcpt.as_bytes());
    out.extend_from_slice(b">\r\n");
}

fn ok(r: &Option<Reply>) -> bool {
    r.as_ref().is_some_and(|r| r.code / 100 == 2)
}

impl ClientTransaction {
    /// A transaction for `env` to a server with `caps`; its first commands are appended to
    /// `out` and the first step returned. The message itself is asked for with
    /// [`Step::Message`] when the server takes it.
    pub fn new(env: &EnvelopeHead<'_>, caps: &Capabilities, out: &mut Vec<u8>) -> (Self, Step) {
        Self::following(env, caps, false, out)
    }

    /// [`ClientTransaction::new`] for a transaction that follows, on the same connection, one
    /// that [owes a reset](ClientTransaction::owes_reset) (`reset`, with PIPELINING): RSET
    /// goes first, in the same write as MAIL, RCPT and DATA (RFC 2920 section 3.1 lets RSET
    /// stand anywhere in a group), so the reset costs no round trip of its own.
    pub fn following(
        env: &EnvelopeHead<'_>,
        caps: &Capabilities,
        reset: bool,
        out: &mut Vec<u8>,
    ) -> (Self, Step) {
        let reset_first = reset && caps.pipelining;
        if reset_first {
            out.extend_from_slice(b"RSET\r\n");
        }
        out.extend_from_slice(b"MAIL FROM:<");
        out.extend_from_slice(env.from.as_bytes());
        out.push(b'>');
        if caps.size_bytes_max.is_some() {
            out.extend_from_slice(b" SIZE=");
            out.extend_from_slice(itoa::Buffer::new().format(env.size).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        // RCPT goes now with PIPELINING, else after MAIL's reply (kept until then).
        let rcpt_cmd = if caps.pipelining {
            push_rcpt(out, env.rcpt);
            out.extend_from_slice(b"DATA\r\n");
            Vec::new()
        } else {
            let mut cmd = Vec::new();
            push_rcpt(&mut cmd, env.rcpt);
            cmd
        };
        let t = ClientTransaction {
            rcpt_cmd,
            pipelining: caps.pipelining,
            state: State::SendMail,
            mail: None,
            rcpt: None,
            data: None,
            replies: Vec::with_capacity(4),
            after_rset: None,
            reset_first,
            owes_reset: false,
        };
        (
            t,
            send(if reset_first { "RSET" } else { "MAIL" }, Wait::Command),
        )
    }

    /// The transaction ended, with PIPELINING, before the server took its data (a refused
    /// sender or recipient, DATA refused): the server may still hold its sender (Postfix
    /// answers the next MAIL "503 5.5.1 Error: nested MAIL command"), so the next transaction
    /// on the connection goes with RSET first ([`ClientTransaction::following`]). Without
    /// PIPELINING the transaction sent its RSET itself.
    pub fn owes_reset(&self) -> bool {
        self.owes_reset
    }

    /// The output was sent.
    pub fn sent(&mut self) -> Step {
        let (state, phase, wait) = match self.state {
            State::SendMail if self.reset_first => (State::ReadReset, "RSET", Wait::Command),
            State::SendMail => (State::ReadMail, "MAIL", Wait::Command),
            State::SendRcpt => (State::ReadRcpt, "RCPT", Wait::Command),
            State::SendData => (State::ReadData, "DATA", Wait::Command),
            State::SendEmpty => (State::ReadEmpty, "DATA", Wait::Data),
            State::SendBody => (State::ReadEnd, "DATA", Wait::Data),
            State::SendRset => (State::ReadRset, "RSET", Wait::Command),
            other => unreachable!("sent() in state {other:?}"),
        };
        self.state = state;
        Step::Read { phase, wait }
    }

    /// A reply came; what is sent next is appended to `out`.
    pub fn reply(&mut self, r: Reply, out: &mut Vec<u8>) -> Step {
        match self.state {
            State::ReadReset => {
                self.replies.push(("RSET", r.clone()));
                if r.code == 421 {
                    // The server is closing: as a 421 to MAIL, it decides.
                    return self.done(r, "RSET", true);
                }
                if r.code / 100 != 2 {
                    self.state = State::Done;
                    let cause = format!("{} {}", r.code, r.text);
                    return Step::Failed(ClientError::Reset {
                        reply: Some(r),
                        cause,
                    });
                }
                self.state = State::ReadMail;
                Step::Read {
                    phase: "MAIL",
                    wait: Wait::Command,
                }
            }
            State::ReadMail if self.pipelining => {
                if r.code == 421 {
                    // The server is closing: its reply decides, nothing more will come.
                    self.replies.push(("MAIL", r.clone()));
                    return self.done(r, "MAIL", true);
                }
                self.mail = Some(r);
                self.state = State::ReadRcpt;
                Step::Read {
                    phase: "RCPT",
                    wait: Wait::Command,
                }
            }
            State::ReadMail => {
                if r.code / 100 != 2 {
                    self.replies.push(("MAIL", r.clone()));
                    return self.reset_unless_closing(r, "MAIL", out);
                }
                self.mail = Some(r);
                out.extend_from_slice(&self.rcpt_cmd);
                self.state = State::SendRcpt;
                send("RCPT", Wait::Command)
            }
            State::ReadRcpt if self.pipelining => {
                if r.code == 421 {
                    let mail = self.mail.take().unwrap_or_else(|| r.clone());
                    self.replies.push(("MAIL", mail.clone()));
                    self.replies.push(("RCPT", r.clone()));
                    // A refused sender still decides (as after DATA); the server closes.
                    if mail.code / 100 != 2 && mail.code != 421 {
                        return self.done(mail, "MAIL", true);
                    }
                    return self.done(r, "RCPT", true);
                }
                self.rcpt = Some(r);
                self.state = State::ReadData;
                Step::Read {
                    phase: "DATA",
                    wait: Wait::Command,
                }
            }
            State::ReadRcpt => {
                let accepted = r.code / 100 == 2;
                self.rcpt = Some(r);
                if accepted {
                    out.extend_from_slice(b"DATA\r\n");
                    self.state = State::SendData;
                    send("DATA", Wait::Command)
                } else {
                    self.envelope_answered(None, out)
                }
            }
            State::ReadData => self.envelope_answered(Some(r), out),
            State::ReadEmpty => {
                let closing = r.code == 421;
                self.replies.push(("DATA", r));
                self.after_data(closing, out)
            }
            State::ReadEnd => {
                self.replies.push(("DATA", r.clone()));
                let closing = r.code == 421;
                self.done(r, "DATA", closing)
            }
            State::ReadRset => match self.after_rset.take() {
                Some(mut outcome) => {
                    // A server that refuses RSET may still hold the transaction: the
                    // connection is not used again.
                    outcome.connection_closed |= r.code / 100 != 2;
                    self.replies.push(("RSET", r));
                    outcome.replies.append(&mut self.replies);
                    self.state = State::Done;
                    Step::Done(outcome)
                }
                None => unreachable!("RSET without an outcome"),
            },
            other => unreachable!("reply() in state {other:?}"),
        }
    }

    /// The connection failed in the current step: some failures still decide the recipient
    /// (a refused envelope and then a closed connection; a failed RSET only closes).
    pub fn failed(&mut self, e: ClientError) -> Result<TransactionOutcome, ClientError> {
        match self.state {
            // Nothing of this transaction was begun: the connection failed before the server
            // answered the RSET that went first.
            State::SendMail | State::ReadReset if self.reset_first => Err(ClientError::Reset {
                reply: None,
                cause: e.to_string(),
            }),
            State::SendRset | State::ReadRset => {
                let mut outcome = self.after_rset.take().ok_or(e)?;
                outcome.connection_closed = true;
                Ok(outcome)
            }
            State::ReadData if self.pipelining && !(ok(&self.mail) && ok(&self.rcpt)) => {
                let (mail, rcpt) = match (self.mail.take(), self.rcpt.take()) {
                    (Some(m), Some(r)) => (m, r),
                    _ => return Err(e),
                };
                let (decisive, command) = if mail.code / 100 != 2 {
                    (mail.clone(), "MAIL")
                } else {
                    (rcpt.clone(), "RCPT")
                };
                self.replies.push(("MAIL", mail));
                self.replies.push(("RCPT", rcpt));
                Ok(self.outcome(decisive, command, true))
            }
            // The empty message for a refused recipient: the refusal decides (its replies are
            // recorded already).
            State::SendEmpty | State::ReadEmpty => match self.refused() {
                Some((decisive, command)) => Ok(self.outcome(decisive, command, true)),
                None => Err(e),
            },
            _ => Err(e),
        }
    }

    /// MAIL and RCPT answered, and DATA (`None`: not sent, the recipient was refused).
    fn envelope_answered(&mut self, data: Option<Reply>, out: &mut Vec<u8>) -> Step {
        let (Some(mail), Some(rcpt)) = (self.mail.clone(), self.rcpt.clone()) else {
            unreachable!("envelope without MAIL and RCPT replies")
        };
        self.replies.push(("MAIL", mail.clone()));
        self.replies.push(("RCPT", rcpt.clone()));
        let Some(data) = data else {
            return self.reset_unless_closing(rcpt, "RCPT", out);
        };
        self.replies.push(("DATA", data.clone()));
        let data_ok = data.code == 354;
        let closing = data.code == 421;
        self.data = Some(data);
        if data_ok && !(mail.code / 100 == 2 && rcpt.code / 100 == 2) {
            // The server wants data although nobody can receive it: send an empty message.
            out.extend_from_slice(b".\r\n");
            self.state = State::SendEmpty;
            return send("DATA", Wait::Data);
        }
        self.after_data(closing, out)
    }

    /// Which reply decides, or the message itself; `closing`: the last reply was 421 (the
    /// server closes whatever decides).
    fn after_data(&mut self, closing: bool, out: &mut Vec<u8>) -> Step {
        if let Some((reply, command)) = self.refused() {
            // Unless the server took an empty message (its end completes the transaction) or
            // is closing.
            let data_sent = self.data.as_ref().is_some_and(|d| d.code == 354);
            self.owes_reset = self.pipelining && !data_sent && !closing;
            return self.done(reply, command, closing);
        }
        let Some(data) = self.data.clone() else {
            unreachable!("after_data without a DATA reply")
        };
        if data.code != 354 {
            return self.reset_unless_closing(data, "DATA", out);
        }
        self.state = State::Message;
        Step::Message
    }

    /// The message the server asked for ([`Step::Message`]), appended to `out` dot-stuffed and
    /// ended with "." (RFC 5321 section 4.5.2).
    pub fn message(&mut self, body: &[u8], out: &mut Vec<u8>) -> Step {
        assert_eq!(
            self.state,
            State::Message,
            "message() when none was asked for"
        );
        dot_stuff(body, out);
        self.state = State::SendBody;
        send("DATA", Wait::Data)
    }

    /// A refusal by `reply` to `command`: the server closes after a 421; otherwise RSET, so
    /// the next transaction starts clean (with PIPELINING, in the next transaction's write).
    fn reset_unless_closing(
        &mut self,
        reply: Reply,
        command: &'static str,
        out: &mut Vec<u8>,
    ) -> Step {
        if reply.code == 421 {
            return self.done(reply, command, true);
        }
        if self.pipelining {
            self.owes_reset = true;
            return self.done(reply, command, false);
        }
        self.after_rset = Some(self.outcome(reply, command, false));
        out.extend_from_slice(b"RSET\r\n");
        self.state = State::SendRset;
        send("RSET", Wait::Command)
    }

    /// The first refusal of the envelope, with its command: MAIL's, else RCPT's.
    fn refused(&self) -> Option<(Reply, &'static str)> {
        [(&self.mail, "MAIL"), (&self.rcpt, "RCPT")]
            .into_iter()
            .find_map(|(reply, command)| {
                reply
                    .as_ref()
                    .filter(|r| r.code / 100 != 2)
                    .map(|r| (r.clone(), command))
            })
    }

    fn outcome(
        &mut self,
        decisive: Reply,
        command: &'static str,
        closed: bool,
    ) -> TransactionOutcome {
        TransactionOutcome {
            decisive,
            decisive_command: command,
            connection_closed: closed,
            replies: std::mem::take(&mut self.replies),
        }
    }

    fn done(&mut self, decisive: Reply, command: &'static str, closed: bool) -> Step {
        self.state = State::Done;
        Step::Done(self.outcome(decisive, command, closed))
    }
}

fn send(phase: &'static str, wait: Wait) -> Step {
    Step::Send { phase, wait }
}

/// The async shell: one SMTP client session over any stream.
pub struct SmtpClient<S> {
    stream: S,
    reader: ReplyReader,
    inbuf: Vec<u8>,
    inpos: usize,
    outbuf: Vec<u8>,
    timeouts: SmtpTimeouts,
    pub caps: Capabilities,
    /// The last transaction [owes a reset](ClientTransaction::owes_reset).
    reset_owed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpClient<S> {
    pub fn new(stream: S, timeouts: SmtpTimeouts) -> Self {
        SmtpClient {
            stream,
            reader: ReplyReader::default(),
            inbuf: Vec::with_capacity(4096),
            inpos: 0,
            outbuf: Vec::with_capacity(16 * 1024),
            timeouts,
            caps: Capabilities::default(),
            reset_owed: false,
        }
    }

    /// Read the next complete reply.
    pub async fn read_reply(
        &mut self,
        phase: &'static str,
        limit: Duration,
    ) -> Result<Reply, ClientError> {
        loop {
            if self.inpos < self.inbuf.len() {
                let mut it = self.inbuf[self.inpos..].iter();
                let parsed = self.reader.parse(&mut it);
                self.inpos = self.inbuf.len() - it.len();
                match parsed {
                    Ok(Some(reply)) => return Ok(reply),
                    Ok(None) => {}
                    Err(message) => return Err(ClientError::Protocol { phase, message }),
                }
            }
            self.inbuf.clear();
            self.inpos = 0;
            self.inbuf.resize(4096, 0);
            let read = tokio::time::timeout(limit, self.stream.read(&mut self.inbuf)).await;
            let n = match read {
                Err(_) => return Err(ClientError::Timeout { phase }),
                Ok(Err(source)) => return Err(ClientError::Io { phase, source }),
                Ok(Ok(0)) => {
                    self.inbuf.clear();
                    return Err(ClientError::Closed { phase });
                }
                Ok(Ok(n)) => n,
            };
            self.inbuf.truncate(n);
        }
    }

    async fn flush_out(&mut self, phase: &'static str, limit: Duration) -> Result<(), ClientError> {
        let write = async {
            self.stream.write_all(&self.outbuf).await?;
            self.stream.flush().await
        };
        let result = tokio::time::timeout(limit, write).await;
        self.outbuf.clear();
        match result {
            Err(_) => Err(ClientError::Timeout { phase }),
            Ok(Err(source)) => Err(ClientError::Io { phase, source }),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Read the greeting and say EHLO (falling back to HELO). Returns the greeting and EHLO
    /// replies; a non-2xx greeting is returned for the caller to act on.
    pub async fn handshake(
        &mut self,
        helo_name: &str,
    ) -> Result<Vec<(&'static str, Reply)>, ClientError> {
        let mut replies = Vec::with_capacity(2);
        let greeting = self.read_reply("greeting", self.timeouts.greeting).await?;
        let ok = greeting.code / 100 == 2;
        replies.push(("CONNECT", greeting));
        if !ok {
            return Ok(replies);
        }
        self.ehlo(helo_name, &mut replies).await?;
        Ok(replies)
    }

    /// EHLO (HELO when EHLO is refused); the capabilities are what the EHLO reply says.
    async fn ehlo(
        &mut self,
        helo_name: &str,
        replies: &mut Vec<(&'static str, Reply)>,
    ) -> Result<(), ClientError> {
        self.caps = Capabilities::default();
        // EHLO clears any transaction (RFC 5321 section 4.1.4).
        self.reset_owed = false;
        self.outbuf
            .extend_from_slice(format!("EHLO {helo_name}\r\n").as_bytes());
        self.flush_out("EHLO", self.timeouts.command).await?;
        let ehlo = self.read_reply("EHLO", self.timeouts.command).await?;
        if ehlo.code == 250 {
            self.caps = Capabilities::from_ehlo_text(&ehlo.text);
            replies.push(("EHLO", ehlo));
        } else {
            replies.push(("EHLO", ehlo));
            self.outbuf
                .extend_from_slice(format!("HELO {helo_name}\r\n").as_bytes());
            self.flush_out("HELO", self.timeouts.command).await?;
            let helo = self.read_reply("HELO", self.timeouts.command).await?;
            replies.push(("HELO", helo));
        }
        Ok(())
    }

    /// Run one mail transaction for one recipient: the tokio driver of [`ClientTransaction`].
    pub async fn transaction(
        &mut self,
        env: &Envelope<'_>,
    ) -> Result<TransactionOutcome, ClientError> {
        let head = EnvelopeHead {
            from: env.from,
            rcpt: env.rcpt,
            size: env.body.len(),
        };
        self.transaction_reading(&head, || Ok(env.body)).await
    }

    /// [`SmtpClient::transaction`] with the message read by `message` only if the server takes
    /// it (most refused recipients never cost a read). A failed read ends the transaction with
    /// [`ClientError::Message`] in the middle of DATA: the connection is then unusable.
    pub async fn transaction_reading<B: AsRef<[u8]>>(
        &mut self,
        env: &EnvelopeHead<'_>,
        message: impl FnOnce() -> std::io::Result<B>,
    ) -> Result<TransactionOutcome, ClientError> {
        let mut message = Some(message);
        let t = self.timeouts;
        let limit = |wait| match wait {
            Wait::Command => t.command,
            Wait::Data => t.data,
        };
        let reset = std::mem::take(&mut self.reset_owed);
        let (mut tx, mut step) =
            ClientTransaction::following(env, &self.caps, reset, &mut self.outbuf);
        loop {
            let next = match step {
                Step::Done(outcome) => {
                    self.reset_owed = tx.owes_reset();
                    return Ok(outcome);
                }
                Step::Failed(e) => return Err(e),
                Step::Send { phase, wait } => {
                    self.flush_out(phase, limit(wait)).await.map(|()| tx.sent())
                }
                Step::Read { phase, wait } => match self.read_reply(phase, limit(wait)).await {
                    Ok(reply) => Ok(tx.reply(reply, &mut self.outbuf)),
                    Err(e) => Err(e),
                },
                Step::Message => match message.take().map(|read| read()) {
                    Some(Ok(body)) => Ok(tx.message(body.as_ref(), &mut self.outbuf)),
                    Some(Err(e)) => Err(ClientError::Message(e)),
                    None => Err(ClientError::Message(std::io::Error::other(
                        "the message was asked for twice",
                    ))),
                },
            };
            step = match next {
                Ok(step) => step,
                Err(e) => return tx.failed(e),
            };
        }
    }

    /// QUIT and close; errors are ignored (the work is done).
    pub async fn quit(mut self) {
        self.outbuf.extend_from_slice(b"QUIT\r\n");
        if self.flush_out("QUIT", self.timeouts.command).await.is_ok() {
            let _ = self.read_reply("QUIT", Duration::from_secs(5)).await;
        }
        let _ = self.stream.shutdown().await;
    }
}

/// How a STARTTLS went.
#[derive(Debug)]
pub enum StartTls {
    /// The session is encrypted and the server greeted again (EHLO inside TLS).
    Done {
        params: crate::tls::TlsParams,
        /// The certificate's check against the trusted roots and the host name.
        certificate: Result<(), crate::tls::CertProblem>,
        /// The EHLO (and HELO) replies inside TLS.
        replies: Vec<(&'static str, Reply)>,
    },
    /// The server answered STARTTLS with something else than 220: the session goes on in clear.
    Refused(Reply),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> SmtpClient<crate::tls::MaybeTls<S>> {
    /// STARTTLS (RFC 3207) to the server named `server_name`, then EHLO again as `helo_name`.
    /// A failed handshake is an error and leaves the connection unusable.
    pub async fn starttls(
        &mut self,
        tls: &crate::tls::ClientTls,
        server_name: &str,
        helo_name: &str,
    ) -> Result<StartTls, ClientError> {
        use crate::tls::MaybeTls;
        self.outbuf.extend_from_slice(b"STARTTLS\r\n");
        self.flush_out("STARTTLS", self.timeouts.command).await?;
        let reply = self.read_reply("STARTTLS", self.timeouts.command).await?;
        if reply.code != 220 {
            return Ok(StartTls::Refused(reply));
        }
        // Anything the server sent after its 220 came in clear: it is not part of the new
        // session (RFC 3207 section 6).
        self.inbuf.clear();
        self.inpos = 0;
        let handshake = tls
            .handshake()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| ClientError::Tls(format!("server name {server_name:?}: {e}")))?;
        let plain = match std::mem::replace(&mut self.stream, MaybeTls::Gone) {
            MaybeTls::Plain(s) => s,
            other => {
                self.stream = other;
                return Err(ClientError::Tls("the session is already encrypted".into()));
            }
        };
        let connect = handshake.connector.connect(name, plain);
        let secured = match tokio::time::timeout(self.timeouts.command, connect).await {
            Err(_) => return Err(ClientError::Timeout { phase: "STARTTLS" }),
            Ok(Err(e)) => return Err(ClientError::Tls(e.to_string())),
            Ok(Ok(s)) => s,
        };
        let params = crate::tls::TlsParams::of(secured.get_ref().1);
        let certificate = handshake
            .verdict()
            .unwrap_or(Err(crate::tls::CertProblem::Invalid(
                "no certificate".into(),
            )));
        self.stream = MaybeTls::Tls(Box::new(secured));
        let mut replies = Vec::with_capacity(1);
        self.ehlo(helo_name, &mut replies).await?;
        Ok(StartTls::Done {
            params,
            certificate,
            replies,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16) -> Reply {
        Reply::plain(code, "x")
    }

    fn caps(pipelining: bool) -> Capabilities {
        Capabilities {
            pipelining,
            ..Capabilities::default()
        }
    }

    const BODY: &[u8] = b".dot\r\n";
    const ENV: EnvelopeHead<'static> = EnvelopeHead {
        from: "a@s.test",
        rcpt: "b@r.test",
        size: BODY.len(),
    };

    /// With PIPELINING: the envelope in one write, the replies in order, the message stuffed.
    #[test]
    fn a_pipelined_transaction_sends_the_envelope_at_once() {
        let mut out = Vec::new();
        let (mut t, step) = ClientTransaction::new(&ENV, &caps(true), &mut out);
        assert!(matches!(step, Step::Send { phase: "MAIL", .. }));
        assert_eq!(
            out,
            b"MAIL FROM:<a@s.test>\r\nRCPT TO:<b@r.test>\r\nDATA\r\n"
        );
        out.clear();
        assert!(matches!(t.sent(), Step::Read { phase: "MAIL", .. }));
        assert!(matches!(
            t.reply(r(250), &mut out),
            Step::Read { phase: "RCPT", .. }
        ));
        assert!(matches!(
            t.reply(r(250), &mut out),
            Step::Read { phase: "DATA", .. }
        ));
        // The message is asked for only now that the server takes it.
        assert!(matches!(t.reply(r(354), &mut out), Step::Message));
        assert!(out.is_empty());
        assert!(matches!(
            t.message(BODY, &mut out),
            Step::Send {
                phase: "DATA",
                wait: Wait::Data
            }
        ));
        assert_eq!(out, b"..dot\r\n.\r\n");
        assert!(matches!(
            t.sent(),
            Step::Read {
                wait: Wait::Data,
                ..
            }
        ));
        match t.reply(r(250), &mut out) {
            Step::Done(o) => {
                assert_eq!((o.decisive.code, o.decisive_command), (250, "DATA"));
                assert!(!o.connection_closed);
                let commands: Vec<&str> = o.replies.iter().map(|(c, _)| *c).collect();
                assert_eq!(commands, ["MAIL", "RCPT", "DATA", "DATA"]);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Without PIPELINING: one command at a time; a refused recipient is followed by RSET, and
    /// a connection lost during the RSET only closes.
    #[test]
    fn a_refused_recipient_is_reset_and_a_failed_reset_closes() {
        let mut out = Vec::new();
        // A server that announces SIZE is told the message's (RFC 1870).
        let sized = Capabilities {
            size_bytes_max: Some(10_000_000),
            ..caps(false)
        };
        ClientTransaction::new(&ENV, &sized, &mut out);
        assert_eq!(out, b"MAIL FROM:<a@s.test> SIZE=6\r\n");
        out.clear();
        let (mut t, _) = ClientTransaction::new(&ENV, &caps(false), &mut out);
        assert_eq!(out, b"MAIL FROM:<a@s.test>\r\n");
        out.clear();
        t.sent();
        assert!(matches!(
            t.reply(r(250), &mut out),
            Step::Send { phase: "RCPT", .. }
        ));
        assert_eq!(out, b"RCPT TO:<b@r.test>\r\n");
        out.clear();
        t.sent();
        assert!(matches!(
            t.reply(r(550), &mut out),
            Step::Send { phase: "RSET", .. }
        ));
        assert_eq!(out, b"RSET\r\n");
        t.sent();
        let o = t.failed(ClientError::Closed { phase: "RSET" }).unwrap();
        assert_eq!((o.decisive.code, o.decisive_command), (550, "RCPT"));
        assert!(o.connection_closed);
    }

    /// With PIPELINING, a refused envelope and then a closed connection: the refusal decides;
    /// a connection lost with the envelope accepted is an error.
    #[test]
    fn a_connection_lost_after_a_pipelined_refusal_is_decided_by_the_refusal() {
        let mut out = Vec::new();
        let (mut t, _) = ClientTransaction::new(&ENV, &caps(true), &mut out);
        t.sent();
        t.reply(r(250), &mut out);
        t.reply(r(450), &mut out);
        let o = t.failed(ClientError::Closed { phase: "DATA" }).unwrap();
        assert_eq!((o.decisive.code, o.decisive_command), (450, "RCPT"));
        assert!(o.connection_closed);
        let (mut t, _) = ClientTransaction::new(&ENV, &caps(true), &mut out);
        t.sent();
        t.reply(r(250), &mut out);
        t.reply(r(250), &mut out);
        assert!(t.failed(ClientError::Closed { phase: "DATA" }).is_err());
    }

    /// A pipelined transaction whose recipient was refused but whose DATA the server took
    /// (354): the empty message sent, the reply to its end next.
    fn empty_message_sent(out: &mut Vec<u8>) -> ClientTransaction {
        let (mut t, _) = ClientTransaction::new(&ENV, &caps(true), out);
        t.sent();
        t.reply(r(250), out);
        t.reply(r(550), out);
        assert!(matches!(t.reply(r(354), out), Step::Send { .. }));
        t.sent();
        t
    }

    /// With PIPELINING, a transaction that ends before its data leaves the server's
    /// transaction open (Postfix keeps the sender after "554 no valid recipients"): the next
    /// one sends RSET first, in the same write, and reads its reply first. One whose empty
    /// message the server took owes nothing; without PIPELINING nothing is owed or sent first.
    #[test]
    fn a_pipelined_refusal_is_reset_in_the_next_transactions_write() {
        let mut out = Vec::new();
        let (mut t, _) = ClientTransaction::new(&ENV, &caps(true), &mut out);
        out.clear();
        t.sent();
        t.reply(r(250), &mut out);
        t.reply(r(550), &mut out);
        match t.reply(r(554), &mut out) {
            Step::Done(o) => assert_eq!((o.decisive.code, o.decisive_command), (550, "RCPT")),
            other => panic!("{other:?}"),
        }
        assert!(out.is_empty(), "no RSET of its own");
        assert!(t.owes_reset());
        let (mut t, step) = ClientTransaction::following(&ENV, &caps(true), true, &mut out);
        assert!(matches!(step, Step::Send { phase: "RSET", .. }));
        assert_eq!(
            out,
            b"RSET\r\nMAIL FROM:<a@s.test>\r\nRCPT TO:<b@r.test>\r\nDATA\r\n"
        );
        out.clear();
        assert!(matches!(t.sent(), Step::Read { phase: "RSET", .. }));
        assert!(matches!(
            t.reply(r(250), &mut out),
            Step::Read { phase: "MAIL", .. }
        ));
        t.reply(r(250), &mut out);
        t.reply(r(250), &mut out);
        assert!(matches!(t.reply(r(354), &mut out), Step::Message));
        t.message(BODY, &mut out);
        t.sent();
        match t.reply(r(250), &mut out) {
            Step::Done(o) => {
                let commands: Vec<&str> = o.replies.iter().map(|(c, _)| *c).collect();
                assert_eq!(commands, ["RSET", "MAIL", "RCPT", "DATA", "DATA"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(!t.owes_reset());
        // The server took an empty message for a refused recipient: its end closed the
        // transaction.
        let mut t = empty_message_sent(&mut out);
        assert!(matches!(t.reply(r(250), &mut out), Step::Done(_)));
        assert!(!t.owes_reset());
        // Without PIPELINING the RSET went on its own, and none goes first.
        out.clear();
        let (t, step) = ClientTransaction::following(&ENV, &caps(false), true, &mut out);
        assert!(matches!(step, Step::Send { phase: "MAIL", .. }));
        assert_eq!(out, b"MAIL FROM:<a@s.test>\r\n");
        assert!(!t.owes_reset());
    }

    /// A refused or lost RSET ahead of a transaction leaves its recipient undecided: the
    /// server never began it. A 421 there decides, as a 421 to MAIL does; a connection lost
    /// after the RSET was taken is an ordinary failure.
    #[test]
    fn a_failed_reset_ahead_of_a_transaction_decides_nothing() {
        let mut out = Vec::new();
        let (mut t, _) = ClientTransaction::following(&ENV, &caps(true), true, &mut out);
        t.sent();
        match t.reply(r(500), &mut out) {
            Step::Failed(ClientError::Reset {
                reply: Some(reply),
                cause,
            }) => assert_eq!((reply.code, cause.starts_with("500")), (500, true)),
            other => panic!("{other:?}"),
        }
        let (mut t, _) = ClientTransaction::following(&ENV, &caps(true), true, &mut out);
        t.sent();
        match t.reply(r(421), &mut out) {
            Step::Done(o) => {
                assert_eq!((o.decisive.code, o.decisive_command), (421, "RSET"));
                assert!(o.connection_closed);
            }
            other => panic!("{other:?}"),
        }
        assert!(!t.owes_reset());
        let (mut t, _) = ClientTransaction::following(&ENV, &caps(true), true, &mut out);
        assert!(matches!(
            t.failed(ClientError::Closed { phase: "RSET" }),
            Err(ClientError::Reset { reply: None, .. })
        ));
        let (mut t, _) = ClientTransaction::following(&ENV, &caps(true), true, &mut out);
        t.sent();
        assert!(matches!(
            t.failed(ClientError::Closed { phase: "RSET" }),
            Err(ClientError::Reset { reply: None, .. })
        ));
        let (mut t, _) = ClientTransaction::following(&ENV, &caps(true), true, &mut out);
        t.sent();
        t.reply(r(250), &mut out);
        assert!(matches!(
            t.failed(ClientError::Closed { phase: "MAIL" }),
            Err(ClientError::Closed { .. })
        ));
    }

    /// A connection lost around the empty message sent for a refused recipient: the refusal
    /// decides. A 421 to RCPT after a refused sender: the sender's refusal decides.
    #[test]
    fn a_refusal_decides_whatever_comes_after_it() {
        let mut out = Vec::new();
        let mut t = empty_message_sent(&mut out);
        let o = t.failed(ClientError::Closed { phase: "DATA" }).unwrap();
        assert_eq!((o.decisive.code, o.decisive_command), (550, "RCPT"));
        assert!(o.connection_closed);
        let (mut t, _) = ClientTransaction::new(&ENV, &caps(true), &mut out);
        t.sent();
        t.reply(r(553), &mut out);
        match t.reply(r(421), &mut out) {
            Step::Done(o) => {
                assert_eq!((o.decisive.code, o.decisive_command), (553, "MAIL"));
                assert!(o.connection_closed);
            }
            other => panic!("{other:?}"),
        }
    }

    /// A 421 to a pipelined DATA (a server closing after too many refused recipients, as
    /// Postfix and mailsim's mailbox server do) closes the connection whatever decides the
    /// recipient, and no RSET is owed; so does a 421 to the end of an empty message. A
    /// refused RSET on its own closes too: the server may still hold the transaction.
    #[test]
    fn a_server_closing_after_a_refusal_is_not_used_again() {
        let mut out = Vec::new();
        let (mut t, _) = ClientTransaction::new(&ENV, &caps(true), &mut out);
        t.sent();
        t.reply(r(250), &mut out);
        t.reply(r(550), &mut out);
        match t.reply(r(421), &mut out) {
            Step::Done(o) => {
                assert_eq!((o.decisive.code, o.decisive_command), (550, "RCPT"));
                assert!(o.connection_closed);
            }
            other => panic!("{other:?}"),
        }
        assert!(!t.owes_reset());
        let mut t = empty_message_sent(&mut out);
        match t.reply(r(421), &mut out) {
            Step::Done(o) => {
                assert_eq!((o.decisive.code, o.decisive_command), (550, "RCPT"));
                assert!(o.connection_closed);
            }
            other => panic!("{other:?}"),
        }
        let (mut t, _) = ClientTransaction::new(&ENV, &caps(false), &mut out);
        t.sent();
        t.reply(r(250), &mut out);
        t.sent();
        assert!(matches!(
            t.reply(r(550), &mut out),
            Step::Send { phase: "RSET", .. }
        ));
        t.sent();
        match t.reply(r(502), &mut out) {
            Step::Done(o) => {
                assert_eq!((o.decisive.code, o.decisive_command), (550, "RCPT"));
                assert!(o.connection_closed);
                assert_eq!(
                    o.replies.last().map(|(c, r)| (*c, r.code)),
                    Some(("RSET", 502))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// The driver reads the message only for a recipient the server took, and a message that
    /// cannot be read then is an error of its own.
    #[tokio::test]
    async fn the_message_is_read_only_when_the_server_takes_it() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        // A pipelining server refusing the first recipient, taking the second and third. Like
        // Postfix, it keeps the sender after refusing DATA for want of recipients, and answers
        // another MAIL before an RSET with 503.
        let (client_end, server_end) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(server_end);
            let mut lines = BufReader::new(r).lines();
            let (mut rcpts, mut in_data, mut in_mail) = (0, false, false);
            while let Ok(Some(line)) = lines.next_line().await {
                let reply: &[u8] = if in_data {
                    if line != "." {
                        continue;
                    }
                    in_data = false;
                    in_mail = false;
                    b"250 2.0.0 queued\r\n"
                } else if line.starts_with("MAIL") {
                    if in_mail {
                        b"503 5.5.1 Error: nested MAIL command\r\n"
                    } else {
                        in_mail = true;
                        b"250 2.1.0 ok\r\n"
                    }
                } else if line == "RSET" {
                    in_mail = false;
                    b"250 2.0.0 ok\r\n"
                } else if line.starts_with("RCPT") {
                    rcpts += 1;
                    if rcpts == 1 {
                        b"550 5.1.1 no such user\r\n"
                    } else {
                        b"250 2.1.5 ok\r\n"
                    }
                } else if line == "DATA" {
                    if rcpts == 1 {
                        b"554 5.5.1 no valid recipients\r\n"
                    } else {
                        in_data = true;
                        b"354 go ahead\r\n"
                    }
                } else {
                    b"250 2.0.0 ok\r\n"
                };
                if w.write_all(reply).await.is_err() {
                    break;
                }
            }
        });
        let mut client = SmtpClient::new(client_end, SmtpTimeouts::default());
        client.caps = caps(true);
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            Ok(BODY)
        };
        let o = client.transaction_reading(&ENV, read).await.unwrap();
        assert_eq!((o.decisive.code, reads.get()), (550, 0));
        let o = client.transaction_reading(&ENV, read).await.unwrap();
        assert_eq!((o.decisive.code, reads.get()), (250, 1), "{o:?}");
        assert_eq!(o.replies[0].0, "RSET");
        let failed = client
            .transaction_reading(&ENV, || -> std::io::Result<&[u8]> {
                Err(std::io::Error::other("spool segment gone"))
            })
            .await;
        match failed {
            Err(ClientError::Message(e)) => assert!(e.to_string().contains("segment gone")),
            other => panic!("{other:?}"),
        }
        drop(client);
        server.await.unwrap();
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        let mut out = Vec::new();
        dot_stuff(b"a\r\n.b\n..c\r\nend", &mut out);
        assert_eq!(out, b"a\r\n..b\r\n...c\r\nend\r\n.\r\n");
        // An independent review: a bare CR went out as it was, so "<CR>.<CR><LF>" could end
        // the message early at a receiver that reads a bare CR as a line end.
        out.clear();
        dot_stuff(b"line1\r.\r\nMAIL FROM:<evil@x.test>\r\n", &mut out);
        assert_eq!(out, b"line1\r\n..\r\nMAIL FROM:<evil@x.test>\r\n.\r\n");
    }

    /// The rule byte by byte, as RFC 5321 section 4.5.2 states it, with bare LF and bare CR
    /// sent as CRLF (section 2.3.8).
    fn dot_stuff_reference(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut at_line_start, mut prev) = (true, 0u8);
        for (i, &b) in body.iter().enumerate() {
            if at_line_start && b == b'.' {
                out.push(b'.');
            }
            if b == b'\n' && prev != b'\r' {
                out.push(b'\r');
            }
            out.push(b);
            at_line_start = b == b'\n';
            if b == b'\r' && body.get(i + 1) != Some(&b'\n') {
                out.push(b'\n');
                at_line_start = true;
            }
            prev = b;
        }
        if !body.is_empty() && !at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn dot_stuffing_matches_the_byte_by_byte_rule_on_random_bodies() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let alphabet = b".\r\nab";
        for _ in 0..5000 {
            let len = rng.gen_range(0..40);
            let body: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let mut out = Vec::new();
            dot_stuff(&body, &mut out);
            assert_eq!(
                out,
                dot_stuff_reference(&body),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}
