//! The outbound SMTP client.
//!
//! The protocol pieces are sans-IO: [`ReplyReader`] turns bytes into replies with smtp-proto's
//! response parser, [`dot_stuff`] frames a message body for DATA, [`Capabilities`] reads an EHLO
//! reply. [`SmtpClient`] is the thin async shell around them, generic over the stream, so TCP,
//! TLS and in-memory pipes all work.

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

/// Frame a message for DATA: normalise bare LF to CRLF, double leading dots, end with
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
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                let line = &rest[..i];
                out.extend_from_slice(line);
                if !line.ends_with(b"\r") {
                    out.push(b'\r');
                }
                out.push(b'\n');
                rest = &rest[i + 1..];
            }
            None => {
                out.extend_from_slice(rest);
                out.extend_from_slice(b"\r\n");
                rest = &[];
            }
        }
    }
    out.extend_from_slice(b".\r\n");
}

/// One envelope to send in a transaction.
pub struct Envelope<'a> {
    pub from: &'a str,
    pub rcpt: &'a str,
    pub body: &'a [u8],
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

impl TransactionOutcome {
    fn closing(
        decisive: Reply,
        decisive_command: &'static str,
        replies: Vec<(&'static str, Reply)>,
    ) -> Self {
        TransactionOutcome {
            decisive,
            decisive_command,
            connection_closed: true,
            replies,
        }
    }
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
        Ok(replies)
    }

    /// Run one mail transaction for one recipient; with PIPELINING, MAIL, RCPT and DATA go in
    /// one write (RFC 2920).
    pub async fn transaction(
        &mut self,
        env: &Envelope<'_>,
    ) -> Result<TransactionOutcome, ClientError> {
        let t = self.timeouts;
        let size = match self.caps.size_bytes_max {
            Some(_) => format!(" SIZE={}", env.body.len()),
            None => String::new(),
        };
        let mut replies = Vec::with_capacity(4);
        let mail_cmd = format!("MAIL FROM:<{}>{size}\r\n", env.from);
        let rcpt_cmd = format!("RCPT TO:<{}>\r\n", env.rcpt);
        let (mail, rcpt, data);
        if self.caps.pipelining {
            self.outbuf.extend_from_slice(mail_cmd.as_bytes());
            self.outbuf.extend_from_slice(rcpt_cmd.as_bytes());
            self.outbuf.extend_from_slice(b"DATA\r\n");
            self.flush_out("MAIL", t.command).await?;
            mail = self.read_reply("MAIL", t.command).await?;
            if mail.code == 421 {
                // The server is closing: its reply decides, nothing more will come.
                replies.push(("MAIL", mail.clone()));
                return Ok(TransactionOutcome::closing(mail, "MAIL", replies));
            }
            rcpt = self.read_reply("RCPT", t.command).await?;
            if rcpt.code == 421 {
                replies.push(("MAIL", mail));
                replies.push(("RCPT", rcpt.clone()));
                return Ok(TransactionOutcome::closing(rcpt, "RCPT", replies));
            }
            data = match self.read_reply("DATA", t.command).await {
                Ok(r) => Some(r),
                // A refused envelope and then a closed connection: the refusal decides.
                Err(_) if mail.code / 100 != 2 || rcpt.code / 100 != 2 => {
                    let (decisive, command) = if mail.code / 100 != 2 {
                        (mail.clone(), "MAIL")
                    } else {
                        (rcpt.clone(), "RCPT")
                    };
                    replies.push(("MAIL", mail));
                    replies.push(("RCPT", rcpt));
                    return Ok(TransactionOutcome::closing(decisive, command, replies));
                }
                Err(e) => return Err(e),
            };
        } else {
            self.outbuf.extend_from_slice(mail_cmd.as_bytes());
            self.flush_out("MAIL", t.command).await?;
            mail = self.read_reply("MAIL", t.command).await?;
            if mail.code / 100 != 2 {
                replies.push(("MAIL", mail.clone()));
                let closed = mail.code == 421 || self.reset().await.is_err();
                return Ok(TransactionOutcome {
                    decisive: mail,
                    decisive_command: "MAIL",
                    replies,
                    connection_closed: closed,
                });
            }
            self.outbuf.extend_from_slice(rcpt_cmd.as_bytes());
            self.flush_out("RCPT", t.command).await?;
            rcpt = self.read_reply("RCPT", t.command).await?;
            if rcpt.code / 100 == 2 {
                self.outbuf.extend_from_slice(b"DATA\r\n");
                self.flush_out("DATA", t.command).await?;
                data = Some(self.read_reply("DATA", t.command).await?);
            } else {
                data = None;
            }
        }
        let mail_ok = mail.code / 100 == 2;
        let rcpt_ok = rcpt.code / 100 == 2;
        replies.push(("MAIL", mail.clone()));
        replies.push(("RCPT", rcpt.clone()));
        let Some(data) = data else {
            let closed = rcpt.code == 421 || self.reset().await.is_err();
            return Ok(TransactionOutcome {
                decisive: rcpt,
                decisive_command: "RCPT",
                replies,
                connection_closed: closed,
            });
        };
        let data_ok = data.code == 354;
        replies.push(("DATA", data.clone()));
        if data_ok && !(mail_ok && rcpt_ok) {
            // The server wants data although nobody can receive it: send an empty message.
            self.outbuf.extend_from_slice(b".\r\n");
            self.flush_out("DATA", t.data).await?;
            let end = self.read_reply("DATA", t.data).await?;
            replies.push(("DATA", end));
        }
        if !mail_ok {
            return Ok(TransactionOutcome {
                decisive: mail,
                decisive_command: "MAIL",
                replies,
                connection_closed: false,
            });
        }
        if !rcpt_ok {
            return Ok(TransactionOutcome {
                decisive: rcpt,
                decisive_command: "RCPT",
                replies,
                connection_closed: false,
            });
        }
        if !data_ok {
            let closed = data.code == 421 || self.reset().await.is_err();
            return Ok(TransactionOutcome {
                decisive: data,
                decisive_command: "DATA",
                replies,
                connection_closed: closed,
            });
        }
        dot_stuff(env.body, &mut self.outbuf);
        self.flush_out("DATA", t.data).await?;
        let end = self.read_reply("DATA", t.data).await?;
        replies.push(("DATA", end.clone()));
        Ok(TransactionOutcome {
            connection_closed: end.code == 421,
            decisive: end,
            decisive_command: "DATA",
            replies,
        })
    }

    /// RSET after a failed transaction, so the next one starts clean.
    async fn reset(&mut self) -> Result<(), ClientError> {
        self.outbuf.extend_from_slice(b"RSET\r\n");
        self.flush_out("RSET", self.timeouts.command).await?;
        self.read_reply("RSET", self.timeouts.command)
            .await
            .map(|_| ())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        let mut out = Vec::new();
        dot_stuff(b"a\r\n.b\n..c\r\nend", &mut out);
        assert_eq!(out, b"a\r\n..b\r\n...c\r\nend\r\n.\r\n");
    }

    /// The rule byte by byte, as RFC 5321 section 4.5.2 states it.
    fn dot_stuff_reference(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut at_line_start, mut prev) = (true, 0u8);
        for &b in body {
            if at_line_start && b == b'.' {
                out.push(b'.');
            }
            if b == b'\n' && prev != b'\r' {
                out.push(b'\r');
            }
            out.push(b);
            at_line_start = b == b'\n';
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
