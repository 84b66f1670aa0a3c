//! The Unix signals that stop an instance: SIGTERM (kubelet, podman stop) and SIGINT (a terminal). The only
//! place that deals with OS signals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Catches SIGTERM and SIGINT from the first instant of `baton run`, before config loading and runtime start:
/// without it, an early SIGTERM would kill the process (or, as PID 1, be dropped and cost the whole grace
/// period). The instance's stop-signal stream honours the flag as soon as it exists.
pub fn catch_early_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
            eprintln!("baton: cannot install a handler for signal {sig}: {e}");
        }
    }
    flag
}

/// The stop signals, with any that arrived before the runtime's handlers existed.
pub(super) struct StopSignals {
    term: Signal,
    int: Signal,
    early: Arc<AtomicBool>,
}

impl StopSignals {
    /// Installs the runtime's handlers (inside the runtime); `early` is the flag of [`catch_early_signals`].
    pub(super) fn new(early: Arc<AtomicBool>) -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            early,
        })
    }

    /// Resolves at the next SIGTERM or SIGINT, with its name.
    pub(super) async fn next(&mut self) -> &'static str {
        if self.early.swap(false, Ordering::AcqRel) {
            return "SIGTERM/SIGINT (early)";
        }
        tokio::select! {
            Some(()) = self.term.recv() => "SIGTERM",
            Some(()) = self.int.recv() => "SIGINT",
            else => std::future::pending().await,
        }
    }
}
