//! Polling with a deadline: wait for a condition instead of sleeping a fixed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// Poll `cond` every 20ms until it yields true or `timeout` passes; returns whether it became true.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every count `counts()` returns has grown by at least `n` from its value now; false on timeout.
pub async fn wait_each_grows(counts: impl Fn() -> Vec<u64>, n: u64, timeout: Duration) -> bool {
    let base = counts();
    wait_until(timeout, || {
        let grown = counts().iter().zip(&base).all(|(now, then)| *now >= then + n);
        async move { grown }
    })
    .await
}

/// Blocking variant of [`wait_until`].
pub fn wait_until_blocking(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
