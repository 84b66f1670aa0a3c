//! A one-shot latch, broadcast to every waiter, that is cheap to wait on from a hot loop.
//!
//! A connection task waits on "the drain deadline passed" and "a migration started" around every read. With a
//! `CancellationToken` each poll of the wait takes two locks; here a poll is an atomic load and a waker
//! comparison, and the lock is taken once per waiting task (to register), and once at the firing. (Not to be
//! confused with Unix signals, which only `instance::signals` handles.)

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// Fired once, seen by every waiter.
#[derive(Debug, Default)]
pub struct Latch {
    fired: AtomicBool,
    next: AtomicU64,
    waiters: Mutex<HashMap<u64, Waker>>,
    /// Waiters of a [`Latch::fire_held`] not woken yet.
    held: Mutex<Vec<Waker>>,
}

impl Latch {
    /// Fires: every pending and future [`Latch::wait`] resolves.
    pub fn fire(&self) {
        self.fire_held(usize::MAX);
    }

    /// Fires, but wakes only `first` of the tasks waiting now; the others are held until [`Latch::wake_held`]
    /// wakes them, a few at a time (a migration's waves: see [`crate::drain::Departures`]). A held task that wakes
    /// for another reason sees the latch fired; a wait that starts after the firing resolves at once.
    pub fn fire_held(&self, first: usize) {
        self.fired.store(true, Ordering::Release);
        let waiters = match self.waiters.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        match self.held.lock() {
            Ok(mut held) => held.extend(waiters.into_values()),
            Err(poisoned) => poisoned.into_inner().extend(waiters.into_values()),
        }
        self.wake_held(first);
    }

    /// Wakes up to `n` of the tasks a [`Latch::fire_held`] held; returns how many are still held.
    pub fn wake_held(&self, n: usize) -> usize {
        let (wake, left) = {
            let mut held = match self.held.lock() {
                Ok(h) => h,
                Err(poisoned) => poisoned.into_inner(),
            };
            let from = held.len().saturating_sub(n);
            let wake: Vec<Waker> = held.drain(from..).collect();
            (wake, held.len())
        };
        for waker in wake {
            waker.wake();
        }
        left
    }

    /// Whether it fired.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Resolves once it fired.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            latch: self,
            key: None,
            waker: None,
        }
    }
}

/// The future of [`Latch::wait`].
#[derive(Debug)]
pub struct Wait<'a> {
    latch: &'a Latch,
    key: Option<u64>,
    /// The waker registered last: while the task's waker is the same, polling takes no lock.
    waker: Option<Waker>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.latch.fired() {
            return Poll::Ready(());
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let Ok(mut waiters) = this.latch.waiters.lock() else {
            return Poll::Ready(()); // poisoned: only by a panic while firing; treat as fired
        };
        // Checked again under the lock: `fire` sets the flag before it takes the lock.
        if this.latch.fired() {
            return Poll::Ready(());
        }
        let key = *this
            .key
            .get_or_insert_with(|| this.latch.next.fetch_add(1, Ordering::Relaxed));
        waiters.insert(key, cx.waker().clone());
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            if let Ok(mut waiters) = self.latch.waiters.lock() {
                waiters.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn every_waiter_wakes_and_late_ones_do_not_wait() {
        let latch = Arc::new(Latch::default());
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let s = latch.clone();
                tokio::spawn(async move { s.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        assert_eq!(latch.waiters.lock().expect("lock").len(), 8);
        latch.fire();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .expect("joined");
        }
        tokio::time::timeout(Duration::from_secs(5), latch.wait())
            .await
            .expect("a wait after the firing resolves at once");
    }

    #[tokio::test]
    async fn held_waiters_wake_a_few_at_a_time() {
        let latch = Arc::new(Latch::default());
        let woken = Arc::new(AtomicU64::new(0));
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let (s, w) = (latch.clone(), woken.clone());
                tokio::spawn(async move {
                    s.wait().await;
                    w.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        latch.fire_held(3);
        assert!(latch.fired());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(woken.load(Ordering::Relaxed), 3, "only the first wave");
        assert_eq!(latch.wake_held(4), 3);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(woken.load(Ordering::Relaxed), 7);
        tokio::time::timeout(Duration::from_secs(5), latch.wait())
            .await
            .expect("a wait after the firing resolves at once, held or not");
        assert_eq!(latch.wake_held(usize::MAX), 0);
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .expect("joined");
        }
        assert_eq!(latch.wake_held(1), 0, "nothing left to wake");
    }

    #[tokio::test]
    async fn a_dropped_wait_unregisters() {
        let latch = Latch::default();
        {
            let mut wait = std::pin::pin!(latch.wait());
            assert!(futures_poll_once(wait.as_mut()).await.is_pending());
            assert_eq!(latch.waiters.lock().expect("lock").len(), 1);
        }
        assert!(latch.waiters.lock().expect("lock").is_empty());
    }

    async fn futures_poll_once(mut f: Pin<&mut Wait<'_>>) -> Poll<()> {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
    }
}
