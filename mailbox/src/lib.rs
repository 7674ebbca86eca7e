//! mailsim's mailbox server.
//!
//! * Inbound SMTP is `mailsim-smtp`'s server session; [`server`] gives it a [`server::Backend`]
//!   that verifies, stores and relays.
//! * [`auth`] verifies SPF, DKIM and DMARC with mail-auth and writes Authentication-Results.
//! * [`auth_dns`] is where an injected in-process DNS (fake-dns's zones, virtual mode) answers
//!   mail-auth's lookups.
//! * [`store`] keeps accepted mail per user in Maildir folders.
//!
//! The fleet of simulated recipient servers (in `mailsim`) is another `mailsim_smtp::server::Backend`
//! built from these.

pub mod auth;
pub mod auth_dns;
pub mod auth_memo;
pub mod folders;
pub mod imap;
pub mod imap_wire;
pub mod login;
pub mod mime;
pub mod pop3;
pub mod server;
pub mod shell;
pub mod spf;
pub mod store;
pub mod tags;
pub mod users;
