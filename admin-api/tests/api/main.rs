//! HTTP-level tests of the admin API on a real SQLite store, one binary (faster to link).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod api_tokens;
mod audit;
mod auth;
mod azure;
mod azure_replicas;
mod bad_input;
mod contract;
mod crud;
mod data_plane_tokens;
mod harness;
mod health;
mod keys;
mod oidc;
mod openapi;
mod roles;
mod routing;
mod stats;
mod traces;
