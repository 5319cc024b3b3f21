//! HTTP-level tests of the admin API on a real SQLite store, one binary (faster to link).

mod auth;
mod azure;
mod bad_input;
mod crud;
mod harness;
mod health;
mod openapi;
mod routing;
