//! The console over a real admin API (SQLite store in a temp dir), driven in process: one
//! module per console section. The browser-level flows are in `tests/e2e/tests/console.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod data_planes;
mod endpoints;
mod gateways;
mod harness;
mod import;
mod key_usage;
mod playground;
mod session;
mod sso;
mod stats;
mod traces;
