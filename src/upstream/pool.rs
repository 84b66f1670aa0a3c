//! A lean keep-alive pool of HTTP/1.1 upstream connections, one list of idle connections per endpoint.
//!
//! A connection is checked out for one exchange and comes back to the pool when the response body has been read
//! to its end (HTTP/1 carries one exchange at a time). A request that a pooled connection could not even start
//! (the upstream had closed it while idle) is retried once on a new connection; nothing that reached the upstream
//! is ever sent twice.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::upstream::body::RequestBody;
use crate::upstream::MAX_IDLE;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened (refused, unreachable, or over `connect_timeout`).
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The exchange failed after the request started (upstream reset, malformed response, or the client's own
    /// body failed: see [`PoolError::client_body_failed`]).
    #[error("exchange: {0}")]
    Exchange(#[source] hyper::Error),
}

impl PoolError {
    /// Whether the client's request body caused it (hyper reports that as a user error).
    pub fn client_body_failed(&self) -> bool {
        matches!(self, PoolError::Exchange(e) if e.is_user())
    }
}

/// Idle connections of one endpoint.
#[derive(Default)]
pub struct IdleClients {
    senders: Mutex<Vec<SendRequest<RequestBody>>>,
}

impl IdleClients {
    fn take(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.senders.lock().ok()?;
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.senders.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
    }
}

/// Sends `req` to `endpoint` on a pooled connection (or a new one) and returns the response, whose body hands the
/// connection back to `idle` when it ends.
pub async fn send(
    idle: &Arc<IdleClients>,
    endpoint: std::net::SocketAddr,
    connect_timeout: Duration,
    mut req: Request<RequestBody>,
) -> Result<Response<PooledBody>, PoolError> {
    if let Some(mut sender) = idle.take() {
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok(wrap(resp, sender, idle)),
            Err(mut e) => match e.take_message() {
                // Never started: the connection had been closed while idle. Retry on a new one.
                Some(back) => req = back,
                None => return Err(PoolError::Exchange(e.into_error())),
            },
        }
    }
    let mut sender = connect(endpoint, connect_timeout).await?;
    match sender.send_request(req).await {
        Ok(resp) => Ok(wrap(resp, sender, idle)),
        Err(e) => Err(PoolError::Exchange(e)),
    }
}

async fn connect(endpoint: std::net::SocketAddr, timeout: Duration) -> Result<SendRequest<RequestBody>, PoolError> {
    let stream = crate::upstream::connect(endpoint, timeout)
        .await
        .map_err(PoolError::Connect)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(PoolError::Exchange)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%endpoint, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

fn wrap(resp: Response<Incoming>, sender: SendRequest<RequestBody>, idle: &Arc<IdleClients>) -> Response<PooledBody> {
    let (parts, body) = resp.into_parts();
    let mut pooled = PooledBody {
        body,
        sender: Some(sender),
        idle: idle.clone(),
    };
    if pooled.body.is_end_stream() {
        pooled.release();
    }
    Response::from_parts(parts, pooled)
}

/// An upstream response body that returns its connection to the pool once read to the end.
pub struct PooledBody {
    body: Incoming,
    sender: Option<SendRequest<RequestBody>>,
    idle: Arc<IdleClients>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(s) = self.sender.take() {
            self.idle.put(s);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
