//! Upstream clusters: round-robin endpoint choice, keep-alive HTTP/1.1 connection pools per endpoint (idle
//! connections kept up to `pool_idle_timeout`, see [`idle`]), and TCP connects, each under the cluster's
//! timeouts.
//!
//! Nothing here knows which client protocol a request came in: the proxy hands this layer a request (or asks for
//! a stream) and gets an upstream answer or an error back.

pub mod body;
pub mod h1;
pub mod h2;
pub mod idle;
pub mod raw;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;

use crate::config::{ClusterConfig, UpstreamProtocol};
use body::RequestBody;

pub use idle::MAX_IDLE;

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

/// One upstream endpoint.
pub struct Endpoint {
    /// Its address.
    pub addr: SocketAddr,
    /// `ip:port`, ready to be a `Host` value (built once).
    pub authority: Authority,
    /// Its idle keep-alive HTTP/1 connections of hyper's client (requests hyper serves).
    pub idle: Arc<h1::IdleClients>,
    /// Its HTTP/2 connections (`protocol: h2c` clusters).
    pub h2: h2::H2Conns,
    /// Its idle keep-alive HTTP connections of the HTTP/1 engine.
    pub raw: raw::IdleStreams,
}

/// A cluster at run time.
pub struct Cluster {
    /// Config name.
    pub name: String,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    /// Time to connect to an endpoint.
    pub connect_timeout: Duration,
    /// HTTP: time to the upstream's response headers.
    pub request_timeout: Duration,
    /// HTTP/1: how long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// HTTP: what the endpoints speak.
    pub protocol: UpstreamProtocol,
}

impl Cluster {
    /// Builds the cluster's state.
    pub fn new(config: &ClusterConfig) -> Cluster {
        Cluster {
            name: config.name.clone(),
            endpoints: config
                .endpoints
                .iter()
                .filter_map(|&addr| {
                    // Every `SocketAddr` formats as a valid authority.
                    let authority = Authority::try_from(addr.to_string()).ok()?;
                    Some(Endpoint {
                        addr,
                        authority,
                        idle: Arc::new(h1::IdleClients::new(config.pool_idle_timeout)),
                        raw: raw::IdleStreams::new(config.pool_idle_timeout),
                        h2: h2::H2Conns::default(),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            pool_idle_timeout: config.pool_idle_timeout,
            protocol: config.protocol,
        }
    }

    /// The next endpoint, round robin.
    pub fn pick(&self) -> &Endpoint {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        // Validation guarantees at least one endpoint.
        &self.endpoints[i % self.endpoints.len()]
    }

    /// Sends a request (already shaped for the cluster's protocol) to `endpoint`, on a pooled connection or a new
    /// one, and returns the response head; its body gives the connection or stream back when it ends.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        req: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, PoolError> {
        match self.protocol {
            UpstreamProtocol::Http1 => h1::send(&endpoint.idle, endpoint.addr, self.connect_timeout, req).await,
            UpstreamProtocol::H2c => h2::send(&endpoint.h2, endpoint.addr, self.connect_timeout, req).await,
        }
    }

    /// Opens a TCP connection to the next endpoint under the connect timeout.
    pub async fn connect(&self) -> std::io::Result<(SocketAddr, TcpStream)> {
        let addr = self.pick().addr;
        Ok((addr, connect(addr, self.connect_timeout).await?))
    }

}

/// Opens a TCP connection to `addr` within `timeout`, with TCP_NODELAY (proxied traffic is latency-bound).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out after {timeout:?}"),
        )),
    }
}

/// What a response body gives back when it has been read to its end.
pub(crate) enum Release {
    /// An HTTP/1 connection: back to its pool, ready for the next exchange.
    Http1 {
        /// The connection.
        sender: SendRequest<RequestBody>,
        /// Its pool.
        idle: Arc<h1::IdleClients>,
    },
    /// An HTTP/2 stream: its slot on the connection (given back when dropped: at the end, or early).
    Http2 {
        /// Held for its `Drop`.
        _slot: h2::StreamSlot,
    },
    /// Nothing (given back already, or the exchange failed).
    Nothing,
}

/// An upstream response body that gives its HTTP/1 connection back to its pool once read to its end, or its HTTP/2
/// stream slot once dropped.
pub struct ResponseBody {
    inner: Incoming,
    release: Release,
}

impl ResponseBody {
    pub(crate) fn new(inner: Incoming, release: Release) -> ResponseBody {
        let mut body = ResponseBody { inner, release };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Release::Http1 { sender, idle } = std::mem::replace(&mut self.release, Release::Nothing) {
            idle.put(sender);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            // A broken HTTP/1 exchange leaves its connection unusable: dropped, not pooled.
            Poll::Ready(Some(Err(_))) => self.release = Release::Nothing,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

