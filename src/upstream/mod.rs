//! Upstream clusters: round-robin endpoint choice, keep-alive HTTP/1.1 connection pools per endpoint (idle
//! connections kept up to `pool_idle_timeout`, see [`idle`]), and TCP connects, each under the cluster's timeouts
//! and tried once more when it fails ([`Cluster::connect_from`]).
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
    /// A new connection's upstream sent bytes before it was sent a request, and the request was dropped unsent:
    /// an HTTP/1 server never does that; an HTTP/2 server opens with its SETTINGS frame.
    #[error("{}", SPOKE_FIRST)]
    SpokeFirst,
}

/// What [`PoolError::SpokeFirst`] says.
pub const SPOKE_FIRST: &str =
    "the upstream spoke before it was sent a request (HTTP/1 servers never do; HTTP/2 servers send SETTINGS first)";

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
    /// HTTP: how long an exchange or an upgraded connection may move no byte before it is ended (`0`: never).
    pub stream_idle_timeout: Duration,
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
            stream_idle_timeout: config.stream_idle_timeout,
            protocol: config.protocol,
        }
    }

    /// The next endpoint, round robin.
    pub fn pick(&self) -> &Endpoint {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        // Validation guarantees at least one endpoint.
        &self.endpoints[i % self.endpoints.len()]
    }

    /// Its endpoints, in config order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The endpoint whose address is `addr`.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }

    /// Where a connect that failed to `failed` is tried again: the next endpoint of the list if the cluster has
    /// several, else `failed` itself.
    pub fn retry_endpoint(&self, failed: &Endpoint) -> &Endpoint {
        let i = self.endpoints.iter().position(|e| std::ptr::eq(e, failed)).unwrap_or(0);
        &self.endpoints[(i + 1) % self.endpoints.len()]
    }

    /// Opens a TCP connection to `first`, each attempt under the connect timeout; if that fails (nothing was sent
    /// upstream), once more, to [`Cluster::retry_endpoint`]. Returns the endpoint it reached: the connection
    /// belongs to that endpoint's pools. Every upstream connect of the cluster goes through here.
    pub async fn connect_from<'a>(&'a self, first: &'a Endpoint) -> std::io::Result<(&'a Endpoint, TcpStream)> {
        match connect(first.addr, self.connect_timeout).await {
            Ok(s) => Ok((first, s)),
            Err(e) => {
                let again = self.retry_endpoint(first);
                tracing::debug!(cluster = %self.name, endpoint = %first.addr, retry = %again.addr, error = %e, "upstream connect failed; trying once more");
                let s = connect(again.addr, self.connect_timeout).await?;
                Ok((again, s))
            }
        }
    }

    /// Sends a request (already shaped for the cluster's protocol) to `endpoint`, on a pooled connection or a new
    /// one, and returns the response head; its body gives the connection or stream back when it ends. A failed
    /// connect is tried once more, possibly on another endpoint ([`Cluster::connect_from`]).
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        req: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, PoolError> {
        match self.protocol {
            UpstreamProtocol::Http1 => h1::send(self, endpoint, req).await,
            UpstreamProtocol::H2c => h2::send(self, endpoint, req).await,
        }
    }

    /// Opens a TCP connection to the next endpoint under the connect timeout, tried once more if it fails
    /// ([`Cluster::connect_from`]).
    pub async fn connect(&self) -> std::io::Result<(SocketAddr, TcpStream)> {
        let (endpoint, stream) = self.connect_from(self.pick()).await?;
        Ok((endpoint.addr, stream))
    }

    /// Up to `most` idle connections of the HTTP/1 engine's pools ([`raw::IdleStreams`]), endpoint after endpoint,
    /// each with its endpoint and how long it has been idle, for a migration.
    pub fn take_idle_streams(&self, most: usize) -> Vec<(SocketAddr, TcpStream, Duration)> {
        let mut taken = Vec::new();
        for e in &self.endpoints {
            let room = most.saturating_sub(taken.len());
            if room == 0 {
                break;
            }
            taken.extend(e.raw.take_newest(room).into_iter().map(|(s, idle)| (e.addr, s, idle)));
        }
        taken
    }

    /// Keeps an idle upstream connection to `addr` that the predecessor handed over (idle for `idle_for`) in that
    /// endpoint's pool of the HTTP/1 engine. `Err` (it is dropped) says why not: not an HTTP/1 cluster, no such
    /// endpoint here, a socket connected elsewhere, or no room or time left in the pool.
    pub fn adopt_idle_stream(
        &self,
        addr: SocketAddr,
        stream: TcpStream,
        idle_for: Duration,
    ) -> Result<(), &'static str> {
        if self.protocol != UpstreamProtocol::Http1 {
            return Err("the cluster speaks h2c here");
        }
        let Some(endpoint) = self.endpoint(addr) else {
            return Err("no such endpoint in this cluster here");
        };
        if stream.peer_addr().ok() != Some(addr) {
            return Err("the socket is not connected to that endpoint");
        }
        if !endpoint.raw.adopt(stream, idle_for) {
            return Err("idle for longer than pool_idle_timeout, or the pool is full");
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterConfig;

    fn cluster(endpoints: Vec<SocketAddr>, connect_timeout: Duration) -> Cluster {
        Cluster::new(&ClusterConfig {
            name: "app".into(),
            endpoints,
            connect_timeout,
            request_timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(50),
            stream_idle_timeout: Duration::from_secs(300),
            protocol: UpstreamProtocol::Http1,
        })
    }

    /// An address nothing listens on: connects to it are refused.
    fn refusing() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }

    #[tokio::test]
    async fn a_refused_connect_goes_to_the_next_endpoint() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let live_addr = live.local_addr().expect("addr");
        let c = cluster(vec![refusing(), live_addr], Duration::from_secs(1));
        let (endpoint, _stream) = c.connect_from(&c.endpoints()[0]).await.expect("the second endpoint");
        assert_eq!(endpoint.addr, live_addr);
        // The TCP relay's connect, from either endpoint in turn.
        for _ in 0..2 {
            let (addr, _stream) = c.connect().await.expect("connect");
            assert_eq!(addr, live_addr);
        }
    }

    /// One endpoint whose accept queue is full drops the SYN of the first attempt, which times out; the queue has
    /// room again when the second attempt is made, on a new connection to the same endpoint.
    #[tokio::test]
    async fn a_failed_connect_to_the_only_endpoint_is_tried_once_more() {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        // backlog 0: the queue holds one connection; a SYN beyond it is dropped (and sent again after 1 s).
        socket.listen(0).expect("listen");
        let addr = socket.local_addr().expect("addr").as_socket().expect("inet");
        let filler = std::net::TcpStream::connect(addr).expect("the connection that fills the queue");
        // Below the SYN retransmit (1 s), so that the first attempt times out rather than connects late.
        let c = cluster(vec![addr], Duration::from_millis(900));
        let accept = tokio::task::spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(300));
            let accepted = socket.accept().expect("accept the filler");
            (socket, accepted)
        });
        let started = std::time::Instant::now();
        let (endpoint, _stream) = c
            .connect_from(&c.endpoints()[0])
            .await
            .expect("the second attempt connects");
        assert_eq!(endpoint.addr, addr);
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "the first attempt should have timed out (took {:?})",
            started.elapsed()
        );
        let (_listener, _accepted) = accept.await.expect("accept task");
        drop(filler);
    }
}
