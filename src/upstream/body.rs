//! The body of a client's request on its way upstream.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A client's request body, forwarded upstream, that can tell its client connection whether it was read to its
/// end: a connection whose last request body was left unread cannot carry another request (hyper closes it).
pub struct RequestBody {
    /// `None`: no body (a request sent again after the upstream refused it unprocessed).
    inner: Option<Incoming>,
    /// Set by the caller while the body may be unread; cleared here once it was read to its end.
    unread: Option<Arc<AtomicBool>>,
    done: bool,
}

impl RequestBody {
    /// Wraps a client's request body; `unread`, if any, is cleared once the body has been read to its end.
    pub fn new(inner: Incoming, unread: Option<Arc<AtomicBool>>) -> RequestBody {
        let done = inner.is_end_stream();
        RequestBody {
            inner: Some(inner),
            unread,
            done,
        }
    }

    /// No body.
    pub fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            unread: None,
            done: true,
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
