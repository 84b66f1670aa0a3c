//! The empty-slot placeholder of a baton SidecarSet (`hotUpgradeEmptyImage`).
//!
//! Kruise runs the idle slot with the sidecar's exact command, args, hooks and probes, only the image differs.
//! So this binary sits at the same path as `baton` and answers all of it while doing nothing:
//!
//! - `run` (any arguments): binds nothing, waits for SIGTERM or SIGINT, exits 0 at once;
//! - anything else (`migrate`, `check`, `status`, probes): exits 0 at once;
//! - `--version`: says what it is.
//!
//! No async runtime, no allocation worth mentioning: the image stays well under 1 MiB and the process under
//! 1 MiB of RSS. As PID 1 the signals are blocked and taken with sigwait(2), so SIGTERM is never ignored.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("run") => {
            wait_for_stop();
            ExitCode::SUCCESS
        }
        Some("--version") | Some("-V") | Some("version") => {
            println!("baton-empty {} (hot-upgrade placeholder)", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => ExitCode::SUCCESS,
    }
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_stop() {
    // SAFETY: plain libc calls on a zeroed, locally owned sigset_t; no handlers are installed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        // Blocked signals are queued even for PID 1 (the kernel drops only unblocked default-action ones).
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig: libc::c_int = 0;
        while libc::sigwait(&set, &mut sig) != 0 {}
    }
}
