//! The empty-slot placeholder of a baton SidecarSet (`hotUpgradeEmptyImage`).
//!
//! Kruise runs the idle slot with the sidecar's exact command, args, hooks and probes; only the image differs.
//! So this binary sits at the same path as `baton` and answers all of it while doing nothing:
//!
//! - `run` (any arguments): binds nothing, waits for SIGTERM or SIGINT, exits 0 at once;
//! - `--version`: says what it is;
//! - anything else (`migrate`, `check`, `status`, probes): exits 0 at once.
//!
//! `no_std` on libc alone, so that the static binary, and the image, stay far below 1 MiB and the process
//! far below 1 MiB of RSS. As PID 1 the signals are blocked and taken with sigwait(3), so SIGTERM is never
//! ignored (the kernel drops only unblocked default-action signals sent to a namespace's init).
#![no_std]
#![no_main]

use core::ffi::{c_char, c_int, CStr};

const VERSION: &[u8] = concat!(
    "baton-empty ",
    env!("CARGO_PKG_VERSION"),
    " (hot-upgrade placeholder)\n"
)
.as_bytes();

/// The C entry point.
///
/// # Safety
/// Called by the C runtime only, with `argv` holding `argc` valid NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    // SAFETY: argv holds argc valid NUL-terminated strings, as the C runtime guarantees.
    let first = if argc > 1 {
        unsafe { CStr::from_ptr(*argv.add(1)) }.to_bytes()
    } else {
        b""
    };
    match first {
        b"run" => wait_for_stop(),
        b"--version" | b"-V" | b"version" => {
            // SAFETY: writing a static buffer to stdout.
            unsafe { libc::write(1, VERSION.as_ptr().cast(), VERSION.len()) };
        }
        _ => {}
    }
    0
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_stop() {
    // SAFETY: plain libc calls on a zeroed, locally owned sigset_t; no handlers are installed.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, core::ptr::null_mut());
        let mut sig: c_int = 0;
        while libc::sigwait(&set, &mut sig) != 0 {}
    }
}

/// Never called (panic = "abort" everywhere), but an unoptimised build of the prebuilt core library still
/// references the unwinder's personality routine.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: ending the process is always sound.
    unsafe { libc::abort() }
}
