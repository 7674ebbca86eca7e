//! mailsim's sending platform: what a bulk sender's systems talk to besides SMTP.
//!
//! * [`inject`]: `POST /api/inject/v1`'s request (KumoMTA's shape), its checks and the
//!   messages it makes (sans-IO: no socket, no clock of its own).
//! * [`http`]: the axum routes, bearer tokens, the body limit, JSON errors; messages go to a
//!   [`http::Spool`] (the MTA's, in `mailsim mta --http`).
//! * [`lists`] and [`campaigns`]: subscriber lists and campaigns (send time, rate, warm-up) in
//!   SQLite; [`track`]: signed tracking and unsubscribe tokens, link rewriting.

pub mod campaigns;
pub mod http;
pub mod inject;
pub mod lists;
pub mod track;
