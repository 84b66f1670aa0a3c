//! Where an HTTP/1 connection served by hyper can stop for a migration: between two requests, once every
//! request begun on it has its response written and its body read to the end.
//!
//! hyper owns the connection and gives it back ([`hyper::server::conn::http1::Connection::into_parts`]) only after
//! a graceful shutdown at a response boundary. [`ConnCtl`] counts the requests in flight and remembers whether the
//! last one left its body unread or asked to close; [`Tracked`] ends a request when hyper drops its response body.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;

use crate::upstream::body::RequestBody;

/// How far an HTTP/1 connection is from a quiescent point.
#[derive(Debug, Default)]
pub struct ConnCtl {
    in_flight: AtomicU32,
    idle: Notify,
    /// A request body was not read to its end: hyper will close the connection, it must not be migrated. Shared
    /// with the request body ([`RequestBody`]), which clears it once read to its end.
    dirty: Arc<AtomicBool>,
    /// The last request asked for the connection to close after its response.
    client_close: AtomicBool,
}

impl ConnCtl {
    /// A request starts. `has_body`: its body may still be unread.
    pub fn begin(&self, has_body: bool, client_close: bool) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if has_body {
            self.dirty.store(true, Ordering::Release);
        }
        if client_close {
            self.client_close.store(true, Ordering::Release);
        }
    }

    fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.idle.notify_one();
    }

    /// Resolves when no request is in flight.
    pub async fn quiet(&self) {
        loop {
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            self.idle.notified().await;
        }
    }

    /// Wraps the body of the request just begun, so that reading it to its end marks the connection clean.
    pub fn request_body(&self, body: Incoming) -> RequestBody {
        RequestBody::new(body, Some(self.dirty.clone()))
    }

    /// Whether the connection can be handed over once hyper has stopped at the response boundary.
    pub fn migratable(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && !self.dirty.load(Ordering::Acquire)
            && !self.client_close.load(Ordering::Acquire)
    }
}

/// A response body that ends its request on its connection when hyper is done with it.
pub struct Tracked<B> {
    inner: B,
    ctl: Option<Arc<ConnCtl>>,
}

impl<B> Tracked<B> {
    /// Wraps the response body of a request begun on `ctl`.
    pub fn new(inner: B, ctl: Option<Arc<ConnCtl>>) -> Tracked<B> {
        Tracked { inner, ctl }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if let Some(ctl) = self.ctl.take() {
            ctl.end();
        }
    }
}
