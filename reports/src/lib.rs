//! Projections of the event log. Every figure mailsim reports is folded from [`Record`]s here,
//! never from counters kept on the side.
//!
//! * [`summary::Summary`] is the run summary (`summary.json`): outcomes overall and per domain,
//!   and the receivers' SPF/DKIM/DMARC verdicts.
//! * [`queue::QueueState`] is what is still queued at the end of a log, message by message.
//! * [`diff`] compares two runs' summaries per domain.
//! * [`report`] is `mailsim report`: [`table`] turns the log into `events.parquet`, [`figures`]
//!   computes every figure from it with polars, [`charts`] draws them with plotters (SVG),
//!   [`html`] writes the page, [`dmarc`] the RFC 7489 aggregate reports.

pub mod charts;
pub mod diff;
pub mod dmarc;
pub mod figures;
pub mod html;
pub mod queue;
pub mod report;
pub mod summary;
pub mod table;

pub use summary::{AuthSummary, DomainSummary, Drain, Summary};
