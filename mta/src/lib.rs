//! mailsim's MTA.
//!
//! Data flow: [`engine::Mta::inject`] DKIM-signs messages ([`dkim`]), writes their bodies to the
//! [`spool`] in one durable batch and queues one [`queue::QueueEntry`] per recipient. The
//! dispatcher ([`engine::Mta::run`]) opens connections per destination within a limit, after
//! resolving MX hosts through a [`dns::Resolver`]; each session speaks SMTP with the
//! [`mailsim_smtp::client::SmtpClient`] (PIPELINING, many messages per connection). Each reply becomes an event;
//! 2xx delivers, 4xx defers with backoff ([`queue::RetryPolicy`]), 5xx bounces.
//!
//! Seams: the clock and the event sink come from `mailsim-events`; the network is a
//! [`engine::Connector`]; DNS is a [`dns::Resolver`].

pub mod dkim;
pub mod dns;
pub mod engine;
pub mod queue;
pub mod shaping;
pub mod spool;
pub mod sts;
pub mod suppression;

pub use engine::{Connector, Mta, MtaConfig, MtaError, OutboundMessage, SignedBatch, TcpConnector};
