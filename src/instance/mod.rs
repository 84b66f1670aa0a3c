//! `baton run`: the life of an instance — start in the role the Kruise env gives (`start`: bind fresh or take
//! over), serve, hand over to a successor or stop on a signal, drain, exit (`serve`). Stop signals are caught
//! from the first instant ([`signals`]).

mod error;
mod serve;
pub mod signals;
mod start;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use baton_migrate::{HandoffError, Role, UdsDir};

pub use error::StartError;
pub use signals::catch_early_signals;

use crate::config::Config;
use crate::telemetry::state::{Phase, State};
use crate::VERSION;
use signals::StopSignals;
use start::{Start, Stop};

/// Exit code of a takeover instance stopped by a test failpoint (`BATON_FAILPOINT`).
pub const FAILPOINT_EXIT: i32 = 86;

/// What `baton run` needs.
pub struct RunOptions {
    /// Validated configuration.
    pub config: Config,
    /// Shared directory of the handoff.
    pub uds_dir: PathBuf,
    /// Role from the Kruise env.
    pub role: Role,
    /// Test hook: crash the takeover at this step (see `TakeoverOptions::crash_at`).
    pub failpoint: Option<String>,
    /// Set by a SIGTERM/SIGINT that arrived before the runtime was up (see [`catch_early_signals`]).
    pub early_stop: Arc<AtomicBool>,
}

/// Runs an instance to its end and returns the process exit code: 0 after a drain (signal or handoff), 1 when it
/// could not start serving.
pub async fn run(opts: RunOptions) -> i32 {
    let state = State::new(opts.role);
    let mut signals = match StopSignals::new(opts.early_stop.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return 1;
        }
    };
    tracing::info!(version = VERSION, role = %opts.role, uds_dir = %opts.uds_dir.display(), "baton starting");
    let dir = UdsDir::new(&opts.uds_dir);
    state.publish_in(&dir);
    if opts.role == Role::Idle {
        state.set_phase(Phase::Idle);
        tracing::info!("idle slot (empty or superseded): no listeners; waiting for SIGTERM");
        let sig = signals.next().await;
        tracing::info!(signal = sig, "idle slot stopping");
        return 0;
    }

    let start = Start {
        dir: &dir,
        state: &state,
        config: &opts.config,
    };
    // Failpoints named `old-...` apply when this instance hands over; the others when it takes over.
    let (old_failpoint, new_failpoint) = match opts.failpoint {
        Some(f) => match f.strip_prefix("old-") {
            Some(old) => (Some(old.to_string()), None),
            None => (None, Some(f)),
        },
        None => (None, None),
    };
    let begun = match opts.role {
        Role::Takeover => start.take_over(&mut signals, new_failpoint).await,
        _ => start.fresh().map(|s| (s, None)).map_err(Stop::from),
    };
    let (running, finishing) = match begun {
        Ok(r) => r,
        Err(Stop::Signaled) => return 0,
        Err(Stop::Failed(e)) => {
            tracing::error!("{e}");
            eprintln!("baton: {e}");
            return 1;
        }
    };
    let life = serve::Life {
        dir: &dir,
        state: &state,
        signals: &mut signals,
        failpoint: old_failpoint,
        idle_when_superseded: under_kruise(),
    };
    life.serve(running, finishing).await
}

/// Whether the Kruise hot-upgrade env is set: then kubelet restarts a container that exits, so a superseded
/// instance idles until its slot is reset instead of exiting.
fn under_kruise() -> bool {
    std::env::var_os(baton_migrate::role::VERSION_ENV).is_some_and(|v| !v.is_empty())
}

/// Test hook: a failpoint reached (`BATON_FAILPOINT`) ends the process at once, as a crash would.
fn crash_if_failpoint(e: &HandoffError) {
    if let HandoffError::Failpoint(step) = e {
        tracing::warn!(step, "failpoint reached: exiting abruptly");
        std::process::exit(FAILPOINT_EXIT);
    }
}
