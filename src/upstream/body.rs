//! The body of a client's request on its way upstream, and the clock of an exchange's moving bytes.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// When a byte of an exchange last moved, for its stream idle timeout: told by whatever moves its bytes, possibly
/// in several tasks (a request body is read by the upstream connection's task, its response by the client's).
#[derive(Debug)]
pub struct Activity {
    since: Instant,
    /// Milliseconds after `since`.
    last: AtomicU64,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            since: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Bytes moved now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// When bytes last moved (to the millisecond; its creation if never).
    pub fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Resolves once no byte moved for `timeout`; never if it is zero.
    pub async fn idle_for(&self, timeout: Duration) {
        if timeout.is_zero() {
            return std::future::pending().await;
        }
        loop {
            let deadline = self.last() + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
        }
    }
}

/// A client's request body, forwarded upstream, that can tell its client connection whether it was read to its
/// end: a connection whose last request body was left unread cannot carry another request (hyper closes it).
pub struct RequestBody {
    /// `None`: no body (a request sent again after the upstream refused it unprocessed).
    inner: Option<Incoming>,
    /// Set by the caller while the body may be unread; cleared here once it was read to its end.
    unread: Option<Arc<AtomicBool>>,
    done: bool,
    /// Told of every frame forwarded, if anyone watches the exchange's activity.
    activity: Option<Arc<Activity>>,
}

impl RequestBody {
    /// Wraps a client's request body; `unread`, if any, is cleared once the body has been read to its end.
    pub fn new(inner: Incoming, unread: Option<Arc<AtomicBool>>) -> RequestBody {
        let done = inner.is_end_stream();
        RequestBody {
            inner: Some(inner),
            unread,
            done,
            activity: None,
        }
    }

    /// Tells `activity` of every frame of this body from now on.
    pub fn watched_by(&mut self, activity: Arc<Activity>) {
        self.activity = Some(activity);
    }

    /// No body.
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            unread: None,
            done: true,
            activity: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || inner.is_end_stream() {
            self.done = true;
        }
        if let (Poll::Ready(Some(Ok(_))), Some(activity)) = (&polled, &self.activity) {
            activity.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if self.done || self.is_end_stream() {
            if let Some(unread) = &self.unread {
                unread.store(false, Ordering::Release);
            }
        }
    }
}
