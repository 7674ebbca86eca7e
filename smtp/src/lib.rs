//! SMTP for mailsim, in one place.
//!
//! * [`reply`]: the one reply type ([`Reply`]) the server sends, the client reads, the event log
//!   records and reports read, and the sans-IO reply reader.
//! * [`server`]: the inbound session (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
//!   ENHANCEDSTATUSCODES, STARTTLS, AUTH): the sans-IO framer and session, the [`server::Backend`]
//!   that decides, and the tokio driver ([`server::Server`]: TCP or any stream).
//! * [`client`]: the outbound side: capabilities, dot-stuffing, the transaction, and its tokio
//!   driver ([`client::SmtpClient`]).
//! * [`net`], [`tls`], [`sasl`]: what every protocol server shares (connection caps and the
//!   accept loop, STARTTLS certificates, SASL PLAIN/LOGIN).

pub mod client;
pub mod net;
pub mod reply;
pub mod sasl;
pub mod server;
pub mod tls;

pub use reply::{Reply, ReplyReader};
