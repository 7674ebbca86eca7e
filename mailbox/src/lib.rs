//! mailsim's mailbox server.
//!
//! * [`smtp`] is the inbound SMTP server: a sans-IO line/DATA framer ([`smtp::Framer`]) and a
//!   session loop generic over the stream that asks a [`smtp::Backend`] what to answer to each
//!   recipient and message. [`smtp::serve`] runs it on a bound listener with a connection cap and
//!   a shutdown signal.
//! * [`auth`] verifies SPF, DKIM and DMARC with mail-auth and writes Authentication-Results.
//! * [`auth_dns`] is where an injected in-process DNS (fake-dns's zones, virtual mode) answers
//!   mail-auth's lookups.
//! * [`store`] keeps accepted mail per user in Maildir folders.
//!
//! The fleet of simulated recipient servers (in `mailsim`) is a [`smtp::Backend`] built from these.

pub mod auth;
pub mod auth_dns;
pub mod folders;
pub mod imap;
pub mod imap_wire;
pub mod login;
pub mod mime;
pub mod pop3;
pub mod server;
pub mod shell;
pub mod smtp;
pub mod store;
pub mod tls;
pub mod users;
