//! Projections of the event log. Every figure mailsim reports is folded from [`Record`]s here,
//! never from counters kept on the side.
//!
//! * [`summary::Summary`] is the run summary (`summary.json`): outcomes overall and per domain,
//!   and the receivers' SPF/DKIM/DMARC verdicts.

pub mod summary;

pub use summary::{AuthSummary, DomainSummary, Summary};
