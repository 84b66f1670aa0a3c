//! baton: a sidecar proxy that upgrades itself without dropping a request.
//!
//! This crate is the proxy shell: configuration, listeners, proxying, drain, admin and the CLI. The handoff of
//! listening sockets between two instances lives in the `baton-migrate` crate; the shell receives ready
//! listeners from it (or binds them) and never asks which.
//!
//! Two words keep apart two mechanisms: a **handoff** passes the *listening* sockets to a successor (the
//! `baton-migrate` crate, driven by [`instance`]); a **migration** then moves the *live* client connections
//! ([`migration`], fed by the connection tasks through [`drain`]).
//!
//! # Layout
//!
//! | folder | what it holds |
//! |---|---|
//! | [`instance`] | `baton run`: start (bind fresh or take over), serve, hand off, drain, exit; Unix signals |
//! | [`migration`] | live connections: the old side's hub that offers them (and idle upstream connections) to the successor, the new side's adoption |
//! | [`server`] | listening sockets (bind or adopt), accept loops, serving adopted connections, waiting for the drain |
//! | [`proxy`] | a listener's connections: [`proxy::http`] (sniff, the HTTP/1 engine, the hyper path) and [`proxy::tcp`] (splice relay) |
//! | [`upstream`] | clusters, endpoints, connects, and the keep-alive pools; knows nothing of client protocols |
//! | [`telemetry`] | the instance's state (phase, listeners), metrics, and the admin endpoint |
//! | [`drain`] | the shutdown state every connection task watches, and the queue through which connections depart |
//! | [`config`] | the configuration file, validated all at once |
//!
//! Dependencies point one way, down this list: `instance` → `migration` → `server` → `proxy` → `upstream` →
//! `config`, with `telemetry`, `drain` and `config` usable from any layer (`telemetry` uses only `drain`).
//! Nothing below `instance` imports `migration`: connections leave through [`drain::Drain::depart`], a type of the
//! lower layer. `scripts/check-layout.py` (part of `make lint`) fails on any import cycle between sibling modules.
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
