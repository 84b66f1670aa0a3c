//! HTTP/2 with prior knowledge (h2c) to the endpoints of a `protocol: h2c` cluster: requests from every client
//! connection multiplexed on at most [`H2_CONNS`] connections per endpoint.
//!
//! A request goes on the open connection with the fewest streams in flight; a new connection opens only when
//! every open one is busy and fewer than [`H2_CONNS`] are open or opening. A connection the upstream closed
//! (GOAWAY, reset) is forgotten at the next request. A request that a connection could not even start is sent
//! again on another, and so is a body-less request the upstream refused unprocessed (RST_STREAM REFUSED_STREAM, RFC
//! 9113 §8.7) or, if its method is idempotent (RFC 9110 §9.2.2), one whose connection went away under it before
//! its response head (a GOAWAY, a close, a reset); a request the upstream may have processed is never sent twice
//! unless its method allows it.
//!
//! Flow control is HTTP/2's own, both ways: hyper grants the upstream more window only as the client's side
//! consumes what came, so a slow client holds at most one stream window (2 MiB, hyper's default; 5 MiB per
//! connection) of a fast upstream's response in this process, and a slow upstream at most the client side's
//! window of a request body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

use crate::upstream::body::RequestBody;
use crate::upstream::{Cluster, Endpoint, PoolError, Release, ResponseBody};

/// Most times one request is sent again after the upstream refused it unprocessed (each time on the connection
/// [`H2Conns`] picks then: an upstream that closes connections every few requests may refuse it more than once).
const MAX_RETRIES: u32 = 5;

/// Most HTTP/2 connections open to one endpoint (each carries as many concurrent streams as the upstream allows).
pub const H2_CONNS: usize = 4;

/// The HTTP/2 connections to one endpoint.
#[derive(Default)]
pub struct H2Conns {
    state: Mutex<Conns>,
    /// Told when a connection finished opening (or failed to).
    opened: Notify,
}

#[derive(Default)]
struct Conns {
    open: Vec<H2Conn>,
    opening: usize,
}

#[derive(Clone)]
struct H2Conn {
    sender: SendRequest<RequestBody>,
    /// Streams in flight on it.
    streams: Arc<AtomicUsize>,
}

/// A stream in flight on an HTTP/2 connection: counted until dropped.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What [`H2Conns::pick`] decided.
enum Pick {
    Use(H2Conn),
    Open,
    Wait,
}

impl H2Conns {
    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn pick(&self) -> Pick {
        let mut st = self.lock();
        st.open.retain(|c| !c.sender.is_closed());
        let least = st
            .open
            .iter()
            .min_by_key(|c| c.streams.load(Ordering::Relaxed))
            .cloned();
        let room = st.open.len() + st.opening < H2_CONNS;
        match least {
            Some(c) if !room || c.streams.load(Ordering::Relaxed) == 0 => Pick::Use(c),
            _ if room => {
                st.opening += 1;
                Pick::Open
            }
            // None open yet, and every slot is being opened.
            _ => Pick::Wait,
        }
    }

    /// Stops using `conn`: it said it is going away (or went), though it may still finish its streams.
    fn forget(&self, conn: &H2Conn) {
        self.lock().open.retain(|c| !Arc::ptr_eq(&c.streams, &conn.streams));
    }

    /// A connection to send on: an open one, or a new one.
    async fn acquire(&self, endpoint: SocketAddr, connect_timeout: Duration) -> Result<H2Conn, PoolError> {
        loop {
            let opened = self.opened.notified();
            match self.pick() {
                Pick::Use(c) => return Ok(c),
                Pick::Wait => opened.await,
                Pick::Open => {
                    let result = connect(endpoint, connect_timeout).await;
                    let mut st = self.lock();
                    st.opening -= 1;
                    if let Ok(c) = &result {
                        st.open.push(c.clone());
                    }
                    drop(st);
                    self.opened.notify_waiters();
                    return result;
                }
            }
        }
    }
}

/// Sends `req` to `target` of `cluster` on one of its HTTP/2 connections and returns the response, whose body holds
/// the stream's slot until it ends. A failed connect is tried once more, on [`Cluster::retry_endpoint`].
pub async fn send(
    cluster: &Cluster,
    mut target: &Endpoint,
    mut req: Request<RequestBody>,
) -> Result<Response<ResponseBody>, PoolError> {
    let mut retries = 0;
    let mut connect_retried = false;
    loop {
        let (conns, endpoint) = (&target.h2, target.addr);
        let replay = Replay::of(&req);
        let mut conn = match conns.acquire(endpoint, cluster.connect_timeout).await {
            Ok(conn) => conn,
            // Nothing was sent: once more, on the endpoint a TCP connect would retry ([`Cluster::connect_from`]).
            Err(PoolError::Connect(e)) if !connect_retried => {
                connect_retried = true;
                target = cluster.retry_endpoint(target);
                tracing::debug!(cluster = %cluster.name, %endpoint, retry = %target.addr, error = %e, "upstream connect failed; trying once more");
                continue;
            }
            Err(e) => return Err(e),
        };
        conn.streams.fetch_add(1, Ordering::Relaxed);
        let slot = StreamSlot(conn.streams.clone());
        match conn.sender.try_send_request(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                return Ok(Response::from_parts(
                    parts,
                    ResponseBody::new(body, Release::Http2 { _slot: slot }),
                ));
            }
            Err(mut e) => {
                req = match (e.take_message(), replay) {
                    // Never started: the connection went away meanwhile.
                    (Some(back), _) if retries < MAX_RETRIES => back,
                    (None, Some(replay)) if retries < MAX_RETRIES && replay.may_send_again(e.error()) => {
                        tracing::debug!(%endpoint, error = %e.error(), "the upstream refused the stream unprocessed: sending it again");
                        conns.forget(&conn);
                        replay.request()
                    }
                    _ => return Err(PoolError::Exchange(e.into_error())),
                };
                retries += 1;
            }
        }
    }
}

/// What it takes to send a body-less request again: its head.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Replay {
    /// The head of `req`, if it has no body.
    fn of(req: &Request<RequestBody>) -> Option<Replay> {
        use http_body::Body as _;
        req.body().is_end_stream().then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    /// Whether the request may be sent again after `e` ended it before its response head: when the upstream
    /// refused it unprocessed (RST_STREAM REFUSED_STREAM, RFC 9113 §8.7), and, for an idempotent method (RFC 9110
    /// §9.2.2), when its connection went away under it: the upstream's GOAWAY, the connection closed or reset
    /// (an upstream that closes right after its GOAWAY may fail the streams it refused that way).
    fn may_send_again(&self, e: &hyper::Error) -> bool {
        let source = std::error::Error::source(e);
        let h2 = source.and_then(|s| s.downcast_ref::<h2::Error>());
        if h2.is_some_and(|h2| h2.is_remote() && h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)) {
            return true;
        }
        let connection_gone = e.is_canceled()
            || e.is_closed()
            || h2.is_some_and(h2::Error::is_go_away)
            || source
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::BrokenPipe
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::UnexpectedEof
                    )
                });
        self.method.is_idempotent() && connection_gone
    }

    fn request(self) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

async fn connect(endpoint: SocketAddr, timeout: Duration) -> Result<H2Conn, PoolError> {
    let stream = crate::upstream::connect(endpoint, timeout)
        .await
        .map_err(PoolError::Connect)?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .map_err(PoolError::Exchange)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%endpoint, error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(H2Conn {
        sender,
        streams: Arc::default(),
    })
}
