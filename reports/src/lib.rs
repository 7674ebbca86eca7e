//! Projections of the event log. Every figure mailsim reports is folded from [`Record`]s here,
//! never from counters kept on the side.
//!
//! * [`summary::Summary`] is the run summary (`summary.json`): outcomes overall and per domain,
//!   and the receivers' SPF/DKIM/DMARC verdicts.
//! * [`queue::QueueState`] is what is still queued at the end of a log, message by message.
//! * [`diff`] compares two runs' summaries per domain.

pub mod diff;
pub mod queue;
pub mod summary;

pub use summary::{AuthSummary, DomainSummary, Summary};
