//! mailsim: the scenario model, the fleet of simulated recipient servers, the runner and the
//! `mailsim` command line.
//!
//! Flow of a run: [`scenario::Scenario`] (TOML) -> [`world::World`] (DNS zones, DKIM keys, fleet
//! plan) -> fake-dns + [`fleet::Fleet`] + the MTA on loopback -> the event log -> the summary
//! (folded by `mailsim-summary`).

pub mod assemble;
pub mod auth;
pub mod auth_check;
pub mod behaviour;
pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod engage;
pub mod env;
pub mod feedback;
pub mod fleet;
pub mod foresight;
pub mod keys;
pub mod policy;
pub mod reputation;
pub mod runner;
pub mod scenario;
pub mod send;
pub mod tlsrpt;
pub mod virt;
pub mod web;
pub mod world;
