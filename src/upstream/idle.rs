//! The idle list behind each HTTP/1 pool of an endpoint ([`super::raw::IdleStreams`], [`super::h1::IdleClients`]):
//! most recently idle first, each connection kept at most `pool_idle_timeout`, at most [`MAX_IDLE`] of them.
//!
//! Expiry is checked whenever the list is used (a connection taken or given back), from the oldest end, so it
//! costs nothing per request beyond a clock read and needs no timer task. An endpoint nobody sends to keeps its
//! idle connections until its next request, which drops them.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most idle connections kept per endpoint, in each HTTP/1 pool. Far above any steady concurrency a sidecar sees,
/// so that a steady load never closes a connection only to open another one for the next request; memory stays
/// bounded by it and by `pool_idle_timeout`, which drops what a burst left behind.
pub const MAX_IDLE: usize = 4096;

/// Idle connections of one endpoint, oldest first, each with the time it became idle.
pub struct IdleList<T> {
    items: Mutex<VecDeque<(T, Instant)>>,
    timeout: Duration,
}

impl<T> IdleList<T> {
    /// An empty list whose connections are kept at most `timeout` (`0`: none is kept).
    pub fn new(timeout: Duration) -> IdleList<T> {
        IdleList {
            items: Mutex::new(VecDeque::new()),
            timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<(T, Instant)>> {
        self.items.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes the connections idle for `timeout` or longer (the front of the list), to be dropped by the caller
    /// outside the lock.
    fn expire(&self, items: &mut VecDeque<(T, Instant)>, now: Instant) -> Vec<T> {
        let mut expired = Vec::new();
        while items
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= self.timeout)
        {
            if let Some((item, _)) = items.pop_front() {
                expired.push(item);
            }
        }
        expired
    }

    /// The most recently idle connection, if one has been idle less than the timeout.
    pub fn pop(&self) -> Option<T> {
        let now = Instant::now();
        let mut items = self.lock();
        let expired = self.expire(&mut items, now);
        let item = items.pop_back().map(|(item, _)| item);
        drop(items);
        drop(expired);
        item
    }

    /// Keeps a connection that just became idle. When [`MAX_IDLE`] are idle already, the oldest one goes.
    pub fn push(&self, item: T) {
        self.push_idle_for(item, Duration::ZERO);
    }

    /// Keeps a connection idle for `idle_for` already (one handed over by the predecessor). False (it is dropped)
    /// if it is past the timeout, or the list is full of more recent ones.
    pub fn push_idle_for(&self, item: T, idle_for: Duration) -> bool {
        if idle_for >= self.timeout {
            return false;
        }
        let now = Instant::now();
        let since = now.checked_sub(idle_for).unwrap_or(now);
        let mut items = self.lock();
        let mut dropped = self.expire(&mut items, now);
        // Oldest first: an item idle for a while goes before the more recent ones.
        let at = items.partition_point(|(_, s)| *s <= since);
        if items.len() >= MAX_IDLE {
            if at == 0 {
                return false;
            }
            if let Some((oldest, _)) = items.pop_front() {
                dropped.push(oldest);
            }
            items.insert(at - 1, (item, since));
        } else {
            items.insert(at, (item, since));
        }
        drop(items);
        drop(dropped);
        true
    }

    /// Up to `most` connections, the most recently idle first, each with how long it has been idle.
    pub fn take_newest(&self, most: usize) -> Vec<(T, Duration)> {
        let now = Instant::now();
        let mut items = self.lock();
        let expired = self.expire(&mut items, now);
        let keep = items.len().saturating_sub(most);
        let newest = items
            .drain(keep..)
            .rev()
            .map(|(item, since)| (item, now.saturating_duration_since(since)))
            .collect();
        drop(items);
        drop(expired);
        newest
    }

    /// How many connections are idle (expired ones included until the list is next used).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_recent_first_and_expired_ones_dropped() {
        let list = IdleList::new(Duration::from_millis(200));
        list.push(1);
        assert!(list.push_idle_for(0, Duration::from_millis(150)), "the oldest");
        list.push(2);
        assert_eq!(list.len(), 3);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(list.pop(), Some(2), "most recent first; 0 expired meanwhile");
        assert_eq!(list.len(), 1, "0 dropped, 1 left");
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(list.pop(), None, "1 expired too");
        assert!(list.is_empty());
        assert!(!list.push_idle_for(3, Duration::from_millis(200)), "too old to keep");
    }

    #[test]
    fn zero_keeps_nothing() {
        let list = IdleList::new(Duration::ZERO);
        list.push(1);
        assert_eq!(list.pop(), None);
        assert!(!list.push_idle_for(1, Duration::ZERO));
    }

    #[test]
    fn full_list_drops_its_oldest() {
        let list = IdleList::new(Duration::from_secs(60));
        assert!(list.push_idle_for(0, Duration::from_secs(10)));
        for i in 1..MAX_IDLE {
            list.push(i);
        }
        assert!(
            !list.push_idle_for(usize::MAX, Duration::from_secs(20)),
            "older than every one kept"
        );
        list.push(MAX_IDLE);
        assert_eq!(list.len(), MAX_IDLE);
        let newest: Vec<usize> = list.take_newest(2).into_iter().map(|(i, _)| i).collect();
        assert_eq!(newest, [MAX_IDLE, MAX_IDLE - 1]);
        let all: Vec<usize> = list.take_newest(usize::MAX).into_iter().map(|(i, _)| i).collect();
        assert_eq!(all.len(), MAX_IDLE - 2);
        assert_eq!(all.last(), Some(&1), "0, the oldest, went");
        assert!(list.is_empty());
    }
}
