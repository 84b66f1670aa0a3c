//! baton: a sidecar proxy that upgrades itself without dropping a request.
//!
//! This crate is the proxy shell: configuration, listeners, proxying, drain, admin and the CLI. The handoff of
//! listening sockets between two instances lives in the `baton-migrate` crate; the shell receives ready
//! listeners from it (or binds them) and never asks which.
#![forbid(unsafe_code)]

pub mod config;
pub mod drain;
pub mod instance;
pub mod migration;
pub mod proxy;
pub mod server;
pub mod telemetry;
pub mod upstream;

/// The software version shown in `/status` and logs: `BATON_VERSION` at build time (images set it to their
/// tag, e.g. `v2`), else the crate version.
pub const VERSION: &str = match option_env!("BATON_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
