//! Projections of the event log that every run and every CLI command needs. Every figure mailsim
//! reports is folded from [`Record`](mailsim_events::Record)s here, never from counters kept on
//! the side.
//!
//! * [`summary::Summary`] is the run summary (`summary.json`): outcomes overall and per domain,
//!   and the receivers' SPF/DKIM/DMARC verdicts.
//! * [`queue::QueueState`] is what is still queued at the end of a log, message by message.
//! * [`diff`] compares two runs' summaries per domain.
//!
//! The deliverability report (polars, plotters, HTML, DMARC aggregate XML) is `mailsim-reports`,
//! built only for `mailsim report`.

pub mod diff;
pub mod queue;
pub mod summary;

pub use summary::{
    AuthSummary, DomainSummary, Drain, LaneSummary, Outcome, Summary, SummaryFold, external_outcome,
};
