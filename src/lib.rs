//! baton: a sidecar proxy that upgrades itself without dropping a request.
//!
//! This crate is the proxy shell: configuration, listeners, proxying, drain, admin and the CLI. The handoff of
//! listening sockets between two instances lives in the `baton-migrate` crate; the shell receives ready
//! listeners from it (or binds them) and never asks which.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod fields;
pub mod h1;
pub mod http;
pub mod io;
pub mod listeners;
pub mod metrics;
pub mod migration;
pub mod pool;
pub mod relay;
pub mod run;
pub mod server;
pub mod signal;
pub mod state;
pub mod tcp;
pub mod upstream;
