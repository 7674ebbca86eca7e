//! The deliverability report, `mailsim report`: [`table`] turns the event log into
//! `events.parquet`, [`figures`] computes every figure from it with polars, [`charts`] draws them
//! with plotters (SVG), [`html`] writes the page, [`dmarc`] the RFC 7489 aggregate reports, and
//! [`check`] compares the report's totals with the run summary folded by `mailsim-summary`.
//!
//! This crate is the only one that builds polars; the `mailsim` binary that runs scenarios does
//! not link it (the `mailsim-report` binary, built with the `report` feature, does).

pub mod charts;
pub mod check;
pub mod deliverability;
pub mod dmarc;
pub mod engagement;
pub mod figures;
pub mod html;
pub mod report;
pub mod table;
