//! Warnings that a failing upstream would otherwise repeat for every request: logged at `warn` at most once per
//! [`EVERY`] per listener and cause, each with the number of the same that were not logged since.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Least time between two warnings of one cause on one listener.
pub const EVERY: Duration = Duration::from_secs(10);

/// What went wrong, one rate limit each.
#[derive(Debug, Clone, Copy)]
pub enum Cause {
    /// No upstream connection could be opened.
    Connect = 0,
    /// The upstream exchange failed after it started.
    Exchange = 1,
    /// No response head within `request_timeout`.
    Timeout = 2,
    /// No byte moved either way within `stream_idle_timeout`.
    StreamIdle = 3,
    /// The upstream of an `http1` cluster answered in another protocol (HTTP/2, ...).
    NotHttp1 = 4,
}

/// The rate limits of one listener.
#[derive(Debug, Default)]
pub struct Warnings {
    /// Per cause: milliseconds since [`epoch`] when the last warning was logged, plus one (0: never).
    last: [AtomicU64; 5],
    /// Per cause: occurrences not logged since the last warning.
    suppressed: [AtomicU64; 5],
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Warnings {
    /// Whether to log this occurrence of `cause` now: `Some(n)` with the number not logged since the last one, or
    /// `None` (counted, to be reported with the next one).
    pub fn due(&self, cause: Cause) -> Option<u64> {
        let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        self.due_at(cause, now.saturating_add(1))
    }

    /// [`Warnings::due`] at `now` milliseconds (at least 1) since [`epoch`].
    fn due_at(&self, cause: Cause, now: u64) -> Option<u64> {
        let i = cause as usize;
        let last = self.last[i].load(Ordering::Relaxed);
        let every = EVERY.as_millis() as u64;
        if last != 0 && now.saturating_sub(last) < every {
            self.suppressed[i].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // One logger per window, even when many requests fail at the same instant.
        if self.last[i]
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed[i].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed[i].swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_window_and_cause_with_the_count_of_the_rest() {
        let w = Warnings::default();
        let every = EVERY.as_millis() as u64;
        assert_eq!(w.due_at(Cause::Connect, 1), Some(0));
        for t in 0..5 {
            assert_eq!(w.due_at(Cause::Connect, 2 + t), None);
        }
        assert_eq!(w.due_at(Cause::Timeout, 3), Some(0), "another cause has its own window");
        assert_eq!(w.due_at(Cause::Connect, every), None, "still inside the window");
        // The window passed: the next one is logged with the six that were not.
        assert_eq!(w.due_at(Cause::Connect, 1 + every), Some(6));
        assert_eq!(w.due_at(Cause::Connect, 2 + every), None);
        // And through the real clock: the first one of a cause is logged at once.
        assert_eq!(w.due(Cause::Exchange), Some(0));
        assert_eq!(w.due(Cause::Exchange), None);
    }
}
