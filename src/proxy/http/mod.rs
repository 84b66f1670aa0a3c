//! The HTTP listener: HTTP/1.1 and h2c (prior knowledge) on one port, each request proxied to the cluster's
//! pooled keep-alive client with bodies streamed both ways.

pub mod engine;
pub mod fields;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::drain::latch::Signal;
use crate::migration::{ConnCtl, Handover, Parcel, RequestBody, Tracked, KIND_HTTP1};
use crate::proxy::http::fields::{tokens, Field};
use crate::proxy::io::ClientIo;
use crate::telemetry::metrics::ListenerMetrics;
use crate::upstream::pool::{self, PoolError, PooledBody};
use crate::upstream::{Cluster, Failure};

/// Response body: the upstream's, streamed, or a short one of ours.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Largest HTTP/1 request head accepted (request line and headers).
pub(crate) const MAX_REQUEST_HEAD: usize = 64 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Room for the first read of a connection.
const SNIFF_READ: usize = 8 * 1024;

/// Everything a connection needs to proxy.
pub struct HttpProxy {
    /// Where requests go.
    pub cluster: Arc<Cluster>,
    /// This listener's metrics.
    pub metrics: Arc<ListenerMetrics>,
}

/// What a connection task needs besides its stream.
#[derive(Clone)]
pub struct ConnEnv {
    /// Listener name (for migration).
    pub listener: Arc<str>,
    /// The proxy of the listener.
    pub proxy: Arc<HttpProxy>,
    /// Cancelled when a plain drain starts: HTTP/2 gets GOAWAY.
    pub drain: CancellationToken,
    /// Set when a plain drain starts: HTTP/1 responses say `Connection: close`. A flag, not the token: it is
    /// read on every request.
    pub closing: Arc<AtomicBool>,
    /// Fired at the drain deadline: connections are dropped.
    pub hard_stop: Arc<Signal>,
    /// The connection migration of this instance, started at a committed handoff to a successor.
    pub handover: Arc<Handover>,
}

/// Serves one accepted connection until it ends, the drain asks it to end (HTTP/2 GOAWAY; HTTP/1 closes after
/// its next response, which carries `Connection: close`), a migration takes it (HTTP/1, or a connection that has
/// not said which protocol it speaks yet), or the hard stop drops it.
pub async fn serve(stream: TcpStream, peer: SocketAddr, env: ConnEnv) {
    let _ = stream.set_nodelay(true);
    serve_from(stream, Vec::new(), peer, env).await
}

/// Serves a connection handed over by the predecessor, starting with the bytes it had read.
pub async fn serve_adopted(stream: TcpStream, buffered: Vec<u8>, env: ConnEnv) {
    let Ok(peer) = stream.peer_addr() else { return };
    serve_from(stream, buffered, peer, env).await
}

async fn serve_from(mut stream: TcpStream, mut read: Vec<u8>, peer: SocketAddr, env: ConnEnv) {
    let mut may_migrate = true;
    loop {
        let handover = may_migrate.then_some(&*env.handover);
        let sniffed = tokio::select! {
            s = sniff(stream, read, &env.proxy.metrics, handover) => s,
            _ = env.hard_stop.wait() => return,
        };
        match sniffed {
            Sniffed::Gone => return,
            Sniffed::H2(io) => return serve_h2(io, peer, env).await,
            Sniffed::H1(stream, read) => {
                return crate::proxy::http::engine::serve(stream, read, peer, env, may_migrate).await
            }
            Sniffed::Silent(quiet, bytes) => match depart(&env, quiet, bytes).await {
                None => return,
                Some((s, b)) => {
                    (stream, read) = (s, b);
                    may_migrate = false;
                }
            },
        }
    }
}

/// Offers a quiescent connection to the successor: `None` if it took it, else the connection back.
pub(crate) async fn depart(env: &ConnEnv, stream: TcpStream, buffered: Vec<u8>) -> Option<(TcpStream, Vec<u8>)> {
    let fd = match crate::migration::stream_fd(stream) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(error = %e, "cannot detach a connection for migration; closing it");
            return None;
        }
    };
    let parcel = Parcel {
        fds: vec![fd],
        buffers: vec![buffered],
    };
    let mut back = env.handover.depart(KIND_HTTP1, &env.listener, parcel).await?;
    let (Some(fd), Some(buffered)) = (back.fds.pop(), back.buffers.pop()) else {
        return None;
    };
    let stream = crate::migration::fd_stream(fd).ok()?;
    Some((stream, buffered))
}

async fn serve_h2(io: ClientIo<TcpStream>, peer: SocketAddr, env: ConnEnv) {
    let ConnEnv {
        proxy,
        drain,
        hard_stop,
        handover,
        ..
    } = env;
    let never = Arc::new(AtomicBool::new(false)); // HTTP/2 says GOAWAY, never `Connection: close`
    let svc = service_fn(move |req| handle(req, peer, proxy.clone(), never.clone(), None));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // GOAWAY at a plain drain and at a migration's start alike: HTTP/2 state is not migrated, and hyper's
    // graceful shutdown sends the final GOAWAY once the client acknowledged the first.
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = drain.cancelled() => conn.as_mut().graceful_shutdown(),
        _ = handover.requested() => conn.as_mut().graceful_shutdown(),
        _ = hard_stop.wait() => return,
    }
    tokio::select! {
        _ = conn => {},
        _ = hard_stop.wait() => {},
    }
}

/// Serves HTTP/1 requests; hands the connection over between two requests once a migration started. If the
/// successor does not take it, serves on here in drain mode (`Connection: close` on the next response).
pub(crate) async fn serve_h1(mut io: ClientIo<TcpStream>, peer: SocketAddr, env: ConnEnv, mut may_migrate: bool) {
    loop {
        let closing = if may_migrate {
            env.closing.clone()
        } else {
            // Not taken by the successor: the graceful path of a plain drain.
            Arc::new(AtomicBool::new(true))
        };
        let Paused { stream, buffered } = match run_h1(io, peer, &env, closing, may_migrate).await {
            Some(p) => p,
            None => return,
        };
        let (stream, buffered) = match depart(&env, stream, buffered).await {
            None => return, // the successor serves it now
            Some(back) => back,
        };
        io = ClientIo::new(Bytes::from(buffered), stream, env.proxy.metrics.clone());
        may_migrate = false;
    }
}

/// An HTTP/1 connection stopped at a response boundary, with what hyper had read past it.
struct Paused {
    stream: TcpStream,
    buffered: Vec<u8>,
}

/// Runs hyper on the connection until it ends (`None`) or, if `may_migrate`, until it stops at a response
/// boundary after a migration started.
async fn run_h1(
    io: ClientIo<TcpStream>,
    peer: SocketAddr,
    env: &ConnEnv,
    closing: Arc<AtomicBool>,
    may_migrate: bool,
) -> Option<Paused> {
    let ctl = Arc::new(ConnCtl::default());
    let (proxy, svc_ctl) = (env.proxy.clone(), ctl.clone());
    // Boxed: hyper hands the connection back (into_parts) only with an Unpin service future.
    let svc = service_fn(move |req| Box::pin(handle(req, peer, proxy.clone(), closing.clone(), Some(svc_ctl.clone()))));
    let mut conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // A request head larger than this is answered 431 and never forwarded.
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(io), svc);
    // No graceful_shutdown() on a plain drain: closing an idle keep-alive connection races with a client that is
    // sending its next request on it. The next response says `Connection: close` instead. A migration does call
    // it, but only at a response boundary, and takes the connection over instead of closing it.
    let mut pausing = false;
    loop {
        tokio::select! {
            biased;
            _ = env.hard_stop.wait() => return None,
            ended = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                if ended.is_err() || !pausing || !ctl.migratable() {
                    // Ended by the client, an error, or hyper's own keep-alive rules: close as hyper would.
                    let mut io = conn.into_parts().io.into_inner();
                    let _ = io.shutdown().await;
                    return None;
                }
                let parts = conn.into_parts();
                let (prefix, stream) = parts.io.into_inner().into_parts();
                let mut buffered = Vec::with_capacity(parts.read_buf.len() + prefix.len());
                buffered.extend_from_slice(&parts.read_buf);
                buffered.extend_from_slice(&prefix);
                return Some(Paused { stream, buffered });
            }
            _ = async { env.handover.requested().await; ctl.quiet().await }, if may_migrate && !pausing => {
                // Between two requests: hyper stops before reading the next one (or right after the response
                // being written), keeping whatever it read in its buffer.
                std::pin::Pin::new(&mut conn).graceful_shutdown();
                pausing = true;
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    proxy: Arc<HttpProxy>,
    closing: Arc<AtomicBool>,
    ctl: Option<Arc<ConnCtl>>,
) -> Result<Response<Tracked<ProxyBody>>, Infallible> {
    let start = Instant::now();
    if let Some(ctl) = &ctl {
        ctl.begin(!req.body().is_end_stream(), wants_close(&req));
    }
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, RequestBody::new(body, ctl.clone()));
    let mut resp = forward(req, peer, &proxy.cluster, &proxy.metrics).await;
    proxy.metrics.response(resp.status().as_u16(), start.elapsed());
    if closing.load(Ordering::Relaxed) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Tracked::new(body, ctl)))
}

/// Whether an HTTP/1 request asks to close the connection after its response (RFC 9112 §9.3).
fn wants_close(req: &Request<Incoming>) -> bool {
    match req.version() {
        Version::HTTP_10 => !connection_has(req.headers(), "keep-alive"),
        _ => connection_has(req.headers(), "close"),
    }
}

/// Whether the `Connection` field lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| tokens(v.as_bytes()))
        .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

async fn forward(
    req: Request<RequestBody>,
    peer: SocketAddr,
    cluster: &Cluster,
    metrics: &ListenerMetrics,
) -> Response<ProxyBody> {
    let endpoint = cluster.pick();
    let (mut parts, body) = req.into_parts();
    let client_authority = parts.uri.authority().cloned();
    // Origin form (`/path?query`) to the upstream, whatever form the client used.
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    parts.uri = Uri::from(path);
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST) {
        // HTTP/2 carries the host in :authority; HTTP/1.1 upstreams need it as Host.
        let host = client_authority.unwrap_or_else(|| endpoint.authority.clone());
        if let Ok(v) = HeaderValue::from_str(host.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    append_forwarded_for(&mut parts.headers, peer);
    let addr = endpoint.addr;
    let upstream = pool::send(
        &endpoint.idle,
        addr,
        cluster.connect_timeout,
        Request::from_parts(parts, body),
    );
    match tokio::time::timeout(cluster.request_timeout, upstream).await {
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Either::Left(body))
        }
        Ok(Err(e)) if e.client_body_failed() => {
            // The client's own body was malformed (bad chunked framing) or cut short: its fault, not the
            // upstream's. The upstream never saw a complete request.
            tracing::debug!(cluster = %cluster.name, endpoint = %addr, error = %e, "bad request body from the client");
            plain(StatusCode::BAD_REQUEST, "baton: bad request body\n")
        }
        Ok(Err(PoolError::Connect(e))) => failed(Failure::Connect(e), cluster, addr, metrics),
        Ok(Err(e)) => failed(Failure::Exchange(e.to_string().into()), cluster, addr, metrics),
        Err(_) => failed(Failure::Timeout, cluster, addr, metrics),
    }
}

/// The answer to an upstream failure ([`Failure::answer`]).
fn failed(failure: Failure, cluster: &Cluster, addr: SocketAddr, metrics: &ListenerMetrics) -> Response<ProxyBody> {
    let (status, body) = failure.answer(cluster, addr, metrics);
    plain(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), body)
}

/// A short plain-text response of ours.
pub fn plain(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and every field it names, plus the ones that are
/// hop-by-hop by definition ([`Field::is_hop_by_hop`]). Framing (`Transfer-Encoding`) is redone by hyper on each
/// side.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop = |name: &HeaderName| Field::of(name.as_str()).is_hop_by_hop();
    // Fast path: most messages carry none of them (and a field named in `Connection` needs a `Connection`).
    if !headers.keys().any(hop) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| hop(name) || connection_has(headers, name.as_str()))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// What the first bytes of a connection said.
enum Sniffed {
    /// HTTP/1, with the bytes read so far.
    H1(TcpStream, Vec<u8>),
    H2(ClientIo<TcpStream>),
    /// A migration started before the client said which protocol it speaks: the connection, with what it sent.
    Silent(TcpStream, Vec<u8>),
    /// Closed or failed before a protocol was known.
    Gone,
}

/// Reads just enough to tell an HTTP/2 prior-knowledge preface from HTTP/1, and gives the bytes back. `read`:
/// bytes of the connection already read (by a predecessor). With `handover`, a migration that starts before the
/// protocol is known returns the connection as it is.
async fn sniff(
    mut stream: TcpStream,
    mut read: Vec<u8>,
    metrics: &Arc<ListenerMetrics>,
    handover: Option<&Handover>,
) -> Sniffed {
    loop {
        let n = read.len().min(H2_PREFACE.len());
        let is_h2 = read[..n] == H2_PREFACE[..n];
        if !is_h2 || n == H2_PREFACE.len() {
            return if is_h2 {
                Sniffed::H2(ClientIo::new(Bytes::from(read), stream, metrics.clone()))
            } else {
                Sniffed::H1(stream, read)
            };
        }
        // Read as much as is there: the HTTP/1 engine parses from this same buffer.
        read.reserve(SNIFF_READ);
        let got = tokio::select! {
            biased;
            r = stream.read_buf(&mut read) => r,
            _ = async {
                match handover {
                    Some(h) => h.requested().await,
                    None => std::future::pending().await,
                }
            } => return Sniffed::Silent(stream, read),
        };
        match got {
            Ok(0) | Err(_) => return Sniffed::Gone,
            Ok(m) => {
                metrics.bytes_in.fetch_add(m as u64, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "content-type"]);
    }

    #[test]
    fn forwarded_for_appends() {
        let peer: SocketAddr = "10.1.2.3:5555".parse().expect("addr");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        append_forwarded_for(&mut h, "[::1]:1".parse().expect("addr"));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3, ::1");
    }
}
