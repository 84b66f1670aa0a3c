//! Support code for the integration tests: they drive the real `baton` binary as separate processes.
//!
//! Every test gets its own temp dir ([`TestDir`]) and its own loopback ports ([`free_port`]), so the tests run in
//! parallel safely. Every spawned process is killed on drop ([`Baton`]), and its stderr is kept in a file in the temp
//! dir and printed when the test panics.
//!
//! A test file declares `mod common;` and imports `use common::*;`: everything below is re-exported here.
//!
//! | module | what |
//! |---|---|
//! | `dir` | [`TestDir`], the test's temp dir |
//! | `ports` | [`free_port`], [`free_addr`] |
//! | `config` | [`Config`], the baton config written as YAML or JSON |
//! | `upstream` | [`HttpUpstream`], [`EchoUpstream`]: in-process upstreams |
//! | `process` | [`Env`], [`Baton`], [`run_baton`]: baton as a separate process |
//! | `wait` | [`wait_until`] and friends: polling with a deadline |
//! | `requests` | [`http_get`], [`proxy_ok`], [`tcp_echo_once`], [`header_values`]: single requests |
//! | `inspect` | [`status`], [`metrics`], [`listening_tcp_sockets`]: observing a running baton |
//! | `load` | [`Load`]: concurrent clients that count every failure |
//! | `setup` | [`Setup`]: upstreams, ports, uds dir and config of the standard scene |
//! | `upgrade` | [`start_first`], [`take_over`], [`expect_old_exits`], [`assert_serving`]: Kruise-style hot upgrades; [`played_handover`]: a predecessor played by the test |
#![allow(dead_code)]

mod config;
mod dir;
mod inspect;
mod load;
mod ports;
mod process;
mod requests;
mod setup;
mod upgrade;
mod upstream;
mod wait;

// Each test binary uses its own part of the kit: the rest of it is unused there, by design.
#[allow(unused_imports)]
pub use {
    config::*, dir::*, inspect::*, load::*, ports::*, process::*, requests::*, setup::*, upgrade::*, upstream::*,
    wait::*,
};

/// Versions used by the tests, shaped like the Kruise SidecarSet resourceVersions (see the Kruise env table).
pub const R2: &str = "7340032";
pub const R3: &str = "7340571";
