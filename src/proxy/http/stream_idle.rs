//! The stream idle timeout on the hyper path: an upstream response body that ends its exchange when no byte moved
//! either way for the cluster's `stream_idle_timeout` (the engine keeps its own count, in [`super::exchange`]).
//!
//! What counts as moving: a frame of the response body taken from the upstream, hyper coming back for the next
//! one (it took the last one on towards the client), and a frame of the request body forwarded upstream
//! ([`Activity`], told by [`RequestBody`](crate::upstream::body::RequestBody)). The timer runs only while hyper
//! waits for the upstream's next frame: a client that stops reading holds hyper back, not this body. The timeout
//! ends the body with an error: hyper then closes an HTTP/1 client connection (reset, see [`is_idle_cut`]) and
//! resets an HTTP/2 stream, and the upstream connection (HTTP/1) or stream (HTTP/2) is dropped with the body.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::proxy::{IdleAt, ListenerCtx};
use crate::upstream::body::Activity;

/// A body error of any kind (what hyper takes).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error an idle response body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no byte moved either way within the stream idle timeout ({})", crate::config::format_duration(*.0))]
pub struct StreamIdle(pub Duration);

/// Whether an error (a connection's, which carries its body's) came from a body this module ended.
pub fn is_idle_cut(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is::<StreamIdle>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// An upstream response body under the stream idle timeout (or not: `timeout` zero).
pub struct IdleCut<B> {
    inner: B,
    /// `None` when off, and once the body ended.
    watch: Option<Watch>,
}

struct Watch {
    ctx: Arc<ListenerCtx>,
    endpoint: SocketAddr,
    timeout: Duration,
    /// The request body's activity, while it may still be streaming.
    request: Option<Arc<Activity>>,
    /// When a frame of the response last moved.
    last: Instant,
    /// The last poll gave hyper a frame: its coming back moves `last`.
    delivered: bool,
    /// Made the first time the body waits for the upstream.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Watch {
    /// The body waits for the upstream: whether it has been idle for the whole timeout (else the timer is set to
    /// wake this task when it may have been).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let last = match &self.request {
                Some(request) => self.last.max(request.last()),
                None => self.last,
            };
            let deadline = last + self.timeout;
            if Instant::now() >= deadline {
                return true;
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            // Set once, and moved on only when it fires early: a frame costs a clock read, not a timer update.
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

impl<B> IdleCut<B> {
    /// Watches `inner`, the response body of an exchange with `endpoint` whose request body tells `request` (if it
    /// may still be streaming), under the listener's cluster's `stream_idle_timeout`.
    pub fn new(inner: B, ctx: &Arc<ListenerCtx>, endpoint: SocketAddr, request: Option<Arc<Activity>>) -> IdleCut<B> {
        let timeout = ctx.cluster.stream_idle_timeout;
        let watch = (!timeout.is_zero()).then(|| Watch {
            ctx: ctx.clone(),
            endpoint,
            timeout,
            request,
            last: Instant::now(),
            delivered: false,
            sleep: None,
        });
        IdleCut { inner, watch }
    }
}

impl<B> Body for IdleCut<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = &mut *self;
        if let Some(w) = this.watch.as_mut().filter(|w| w.delivered) {
            (w.last, w.delivered) = (Instant::now(), false);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(w) = &mut this.watch {
                    (w.last, w.delivered) = (Instant::now(), true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => {
                this.watch = None;
                Poll::Ready(other.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let Some(w) = &mut this.watch else {
                    return Poll::Pending;
                };
                if !w.expired(cx) {
                    return Poll::Pending;
                }
                w.ctx.stream_idled(Some(w.endpoint), IdleAt::ResponseBody);
                let timeout = w.timeout;
                this.watch = None;
                Poll::Ready(Some(Err(Box::new(StreamIdle(timeout)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
