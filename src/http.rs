//! The HTTP listener: HTTP/1.1 and h2c (prior knowledge) on one port, each request proxied to the cluster's
//! pooled keep-alive client with bodies streamed both ways.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::io::ClientIo;
use crate::metrics::ListenerMetrics;
use crate::pool::{self, PoolError, PooledBody};
use crate::upstream::Cluster;

/// Response body: the upstream's, streamed, or a short one of ours.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Largest HTTP/1 request head accepted (request line and headers).
const MAX_REQUEST_HEAD: usize = 64 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Everything a connection needs to proxy.
pub struct HttpProxy {
    /// Where requests go.
    pub cluster: Arc<Cluster>,
    /// This listener's metrics.
    pub metrics: Arc<ListenerMetrics>,
}

/// Serves one accepted connection until it ends, the drain asks it to end (HTTP/2 GOAWAY; HTTP/1 closes after
/// its next response, which carries `Connection: close`), or the hard stop drops it.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<HttpProxy>,
    drain: CancellationToken,
    hard_stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let sniffed = tokio::select! {
        s = sniff(stream, &proxy.metrics) => s,
        _ = hard_stop.cancelled() => return,
    };
    let Ok((io, is_h2)) = sniffed else { return };
    let io = TokioIo::new(io);
    if is_h2 {
        let svc_drain = drain.clone();
        let svc = service_fn(move |req| handle(req, peer, proxy.clone(), svc_drain.clone(), true));
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = drain.cancelled() => conn.as_mut().graceful_shutdown(),
            _ = hard_stop.cancelled() => return,
        }
        tokio::select! {
            _ = conn => {},
            _ = hard_stop.cancelled() => {},
        }
    } else {
        let svc_drain = drain.clone();
        let svc = service_fn(move |req| handle(req, peer, proxy.clone(), svc_drain.clone(), false));
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            // A request head larger than this is answered 431 and never forwarded.
            .max_buf_size(MAX_REQUEST_HEAD)
            .serve_connection(io, svc);
        // No graceful_shutdown() on drain: closing an idle keep-alive connection races with a client that is
        // sending its next request on it. The next response says `Connection: close` instead.
        tokio::select! {
            _ = conn => {},
            _ = hard_stop.cancelled() => {},
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    proxy: Arc<HttpProxy>,
    drain: CancellationToken,
    is_h2: bool,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let mut resp = forward(req, peer, &proxy.cluster, &proxy.metrics).await;
    proxy.metrics.response(resp.status().as_u16(), start.elapsed());
    if !is_h2 && drain.is_cancelled() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

async fn forward(
    req: Request<Incoming>,
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
        Ok(Err(e @ PoolError::Connect(_))) => {
            metrics.upstream_connect_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(cluster = %cluster.name, endpoint = %addr, error = %e, "upstream connect failed");
            plain(StatusCode::BAD_GATEWAY, "baton: upstream connect failed\n")
        }
        Ok(Err(e)) if e.client_body_failed() => {
            // The client's own body was malformed (bad chunked framing) or cut short: its fault, not the
            // upstream's. The upstream never saw a complete request.
            tracing::debug!(cluster = %cluster.name, endpoint = %addr, error = %e, "bad request body from the client");
            plain(StatusCode::BAD_REQUEST, "baton: bad request body\n")
        }
        Ok(Err(e)) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %addr, error = %e, "upstream request failed");
            plain(StatusCode::BAD_GATEWAY, "baton: upstream request failed\n")
        }
        Err(_) => {
            metrics.upstream_timeouts.fetch_add(1, Ordering::Relaxed);
            plain(StatusCode::GATEWAY_TIMEOUT, "baton: upstream timed out\n")
        }
    }
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
/// hop-by-hop by definition. Framing (`Transfer-Encoding`) is redone by hyper on each side.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Fast path: most messages carry none of them, and one pass over the names is cheaper than ten lookups.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRAILER,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Hop-by-hop by definition (fields named in `Connection` are found through it).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == header::TRAILER
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
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

/// Reads just enough to tell an HTTP/2 prior-knowledge preface from HTTP/1, and gives the bytes back.
async fn sniff(mut stream: TcpStream, metrics: &Arc<ListenerMetrics>) -> std::io::Result<(ClientIo<TcpStream>, bool)> {
    let mut buf = [0u8; 24];
    let mut n = 0;
    loop {
        let read = stream.read(&mut buf[n..]).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        n += read;
        let is_h2 = buf[..n] == H2_PREFACE[..n];
        if !is_h2 || n == H2_PREFACE.len() {
            metrics.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            let prefix = Bytes::copy_from_slice(&buf[..n]);
            return Ok((ClientIo::new(prefix, stream, metrics.clone()), is_h2));
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
