//! The general HTTP path, through hyper: h2c connections, and HTTP/1 requests the engine ([`super::engine`])
//! leaves to it (malformed, streamed bodies, `Expect`, `Upgrade`, absolute-form targets, HTTP/1.0, ...). Each
//! request goes to the cluster through the pooled hyper client ([`crate::upstream::h1`], [`crate::upstream::h2`]), bodies streamed both
//! ways, under the cluster's `stream_idle_timeout` once the response head is in ([`super::stream_idle`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::UpstreamProtocol;
use crate::proxy::http::failure::{grpc_message, is_grpc, Answer, Failure, UNASKED_101};
use crate::proxy::http::fields::{tokens, Field};
use crate::proxy::http::quiescence::{ConnCtl, Tracked};
use crate::proxy::http::stream_idle::{is_idle_cut, IdleCut};
use crate::proxy::http::{depart, MAX_REQUEST_HEAD};
use crate::proxy::io::ClientIo;
use crate::proxy::ListenerCtx;
use crate::upstream::body::{Activity, RequestBody};
use crate::upstream::{PoolError, ResponseBody};

/// Response body: the upstream's, streamed under the stream idle timeout, or a short one of ours.
pub type ProxyBody = Either<IdleCut<ResponseBody>, Full<Bytes>>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// When an HTTP/1 response says `Connection: close`.
#[derive(Debug, Clone, Copy)]
enum Closing {
    /// Never (HTTP/2: the drain sends GOAWAY instead).
    Never,
    /// Once a plain drain started.
    WhenDraining,
    /// Always: the successor did not take this connection, so it takes the graceful path of a plain drain.
    Always,
}

/// Serves an h2c connection (its preface still in `io`) until it ends, or the drain ends it: GOAWAY at a plain
/// drain and at a migration's start alike (HTTP/2 state is not migrated; hyper's graceful shutdown sends the
/// final GOAWAY once the client acknowledged the first), and a drop at the deadline.
pub async fn serve_h2(io: ClientIo<TcpStream>, peer: SocketAddr, ctx: Arc<ListenerCtx>) {
    let drain = ctx.drain.clone();
    let svc = service_fn(move |req| handle(req, peer, ctx.clone(), Closing::Never, None));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = drain.graceful() => conn.as_mut().graceful_shutdown(),
        _ = drain.migration() => conn.as_mut().graceful_shutdown(),
        _ = drain.deadline() => return,
    }
    tokio::select! {
        _ = conn => {},
        _ = drain.deadline() => {},
    }
}

/// Serves HTTP/1 requests; hands the connection over between two requests once a migration started. If the
/// successor does not take it, serves on here in drain mode (`Connection: close` on the next response).
pub async fn serve_h1(mut io: ClientIo<TcpStream>, peer: SocketAddr, ctx: Arc<ListenerCtx>, mut may_migrate: bool) {
    loop {
        let closing = if may_migrate {
            Closing::WhenDraining
        } else {
            Closing::Always
        };
        let Paused { stream, buffered } = match run_h1(io, peer, &ctx, closing, may_migrate).await {
            Some(p) => p,
            None => return,
        };
        let (stream, buffered) = match depart(&ctx, stream, buffered).await {
            None => return, // the successor serves it now
            Some(back) => back,
        };
        io = ClientIo::new(Bytes::from(buffered), stream, ctx.metrics.clone());
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
    ctx: &Arc<ListenerCtx>,
    closing: Closing,
    may_migrate: bool,
) -> Option<Paused> {
    let ctl = Arc::new(ConnCtl::default());
    let (svc_ctx, svc_ctl) = (ctx.clone(), ctl.clone());
    // Boxed: hyper hands the connection back (into_parts) only with an Unpin service future.
    let svc = service_fn(move |req| Box::pin(handle(req, peer, svc_ctx.clone(), closing, Some(svc_ctl.clone()))));
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
            _ = ctx.drain.deadline() => return None,
            ended = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => {
                if ended.is_err() || !pausing || !ctl.migratable() {
                    // Ended by the client, an error, or hyper's own keep-alive rules: close as hyper would.
                    let mut io = conn.into_parts().io.into_inner();
                    if ended.as_ref().is_err_and(|e| is_idle_cut(e)) {
                        // A response cut part-way by the stream idle timeout: a reset, so that no client takes
                        // it for whole (an HTTP/1.0 client's body ends with the connection).
                        let (_, stream) = io.into_parts();
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
                        return None;
                    }
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
            _ = async { ctx.drain.migration().await; ctl.quiet().await }, if may_migrate && !pausing => {
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
    ctx: Arc<ListenerCtx>,
    closing: Closing,
    ctl: Option<Arc<ConnCtl>>,
) -> Result<Response<Tracked<ProxyBody>>, Infallible> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match &ctl {
        Some(ctl) => {
            ctl.begin(!body.is_end_stream(), wants_close(&parts));
            ctl.request_body(body)
        }
        None => RequestBody::new(body, None),
    };
    let req = Request::from_parts(parts, body);
    let (mut resp, status) = forward(req, peer, &ctx).await;
    ctx.metrics.response(status, start.elapsed());
    let close = match closing {
        Closing::Never => false,
        Closing::WhenDraining => ctx.drain.is_graceful(),
        Closing::Always => true,
    };
    if close {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Tracked::new(body, ctl)))
}

/// Whether an HTTP/1 request asks to close the connection after its response (RFC 9112 §9.3).
fn wants_close(req: &http::request::Parts) -> bool {
    match req.version {
        Version::HTTP_10 => !connection_has(&req.headers, "keep-alive"),
        _ => connection_has(&req.headers, "close"),
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

/// Forwards a request to the cluster: the response, and the status the listener's metrics count for it (the
/// upstream's, or that of baton's own answer to a failure, which a gRPC client gets as a gRPC status).
async fn forward(
    mut req: Request<RequestBody>,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
) -> (Response<ProxyBody>, u16) {
    if req.method() == http::Method::CONNECT {
        // baton is a reverse proxy: it opens no tunnel to where a client asks, and forwards nothing.
        return (
            plain(StatusCode::NOT_IMPLEMENTED, "baton: CONNECT is not supported"),
            501,
        );
    }
    let cluster = &ctx.cluster;
    let endpoint = cluster.pick();
    let grpc = is_grpc(req.headers());
    // A request body still streaming when the response starts keeps the exchange alive as the response does.
    let activity = (!cluster.stream_idle_timeout.is_zero() && !req.body().is_end_stream()).then(|| {
        let activity = Arc::new(Activity::default());
        req.body_mut().watched_by(activity.clone());
        activity
    });
    let (mut parts, body) = req.into_parts();
    shape(&mut parts, cluster.protocol, &endpoint.authority, peer);
    let upstream = cluster.send(endpoint, Request::from_parts(parts, body));
    let failure = match tokio::time::timeout(cluster.request_timeout, upstream).await {
        // No request on this path asks for an upgrade (`Upgrade` is hop-by-hop and removed above): a 101 is an
        // upstream error, as on the engine's path. Passed on, it would switch an HTTP/1.1 client's connection to
        // nothing (and hyper's HTTP/2 server resets the stream of an h2c client).
        Ok(Ok(resp)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => Failure::Exchange(UNASKED_101.into()),
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            match one_content_length(&mut parts.headers) {
                Ok(()) => {
                    let body = IdleCut::new(body, ctx, endpoint.addr, activity);
                    return (Response::from_parts(parts, Either::Left(body)), status);
                }
                Err(why) => Failure::Exchange(why.into()),
            }
        }
        Ok(Err(e)) if e.client_body_failed() => {
            // The client's own body was malformed (bad chunked framing) or cut short: its fault, not the
            // upstream's. The upstream never saw a complete request.
            tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, error = %e, "bad request body from the client");
            return (plain(StatusCode::BAD_REQUEST, "baton: bad request body"), 400);
        }
        Ok(Err(PoolError::Connect(e))) => Failure::Connect(e),
        Ok(Err(e)) => Failure::Exchange(e.to_string().into()),
        Err(_) => Failure::Timeout,
    };
    let answer = failure.answer(ctx, endpoint.addr);
    let resp = if grpc {
        grpc_failure(&answer)
    } else {
        plain(
            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY),
            answer.message,
        )
    };
    (resp, answer.status)
}

/// Leaves at most one `Content-Length` value in a response: a list of equal values, or equal repeated fields,
/// become one (RFC 9110 §8.6); different ones are an error (the response is not passed on).
fn one_content_length(headers: &mut HeaderMap) -> Result<(), &'static str> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(());
    };
    if values.next().is_none() && first.as_bytes().iter().all(u8::is_ascii_digit) {
        return Ok(()); // the usual case: one plain value
    }
    let mut length: Option<&[u8]> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for n in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if n.is_empty() || !n.iter().all(u8::is_ascii_digit) || length.is_some_and(|m| m != n) {
                return Err("conflicting or invalid Content-Length from the upstream");
            }
            length = Some(n);
        }
    }
    let Some(one) = length.map(HeaderValue::from_bytes).and_then(Result::ok) else {
        return Err("invalid Content-Length from the upstream");
    };
    headers.insert(header::CONTENT_LENGTH, one);
    Ok(())
}

/// Rewrites a client's request for the upstream: hop-by-hop fields removed, `X-Forwarded-For` extended, and the
/// target in the form the upstream's protocol wants: origin form and a `Host` for HTTP/1.1; for HTTP/2 the
/// absolute form (`:scheme` and `:authority`) instead of `Host`, and `te: trailers` kept (gRPC needs it).
fn shape(parts: &mut http::request::Parts, protocol: UpstreamProtocol, endpoint: &Authority, peer: SocketAddr) {
    let te_trailers = parts
        .headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    strip_hop_by_hop(&mut parts.headers);
    append_forwarded_for(&mut parts.headers, peer);
    match protocol {
        UpstreamProtocol::Http1 => {
            // The target's authority (an absolute-form target, or HTTP/2's :authority) replaces any `Host` (RFC
            // 9112 §3.2.2, RFC 9113 §8.3.1); without either, the endpoint's.
            let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
            match authority {
                Some(host) => {
                    if let Ok(v) = HeaderValue::from_str(&host) {
                        parts.headers.insert(header::HOST, v);
                    }
                }
                None if !parts.headers.contains_key(header::HOST) => {
                    if let Ok(v) = HeaderValue::from_str(endpoint.as_str()) {
                        parts.headers.insert(header::HOST, v);
                    }
                }
                None => {}
            }
            parts.uri = Uri::from(path);
            parts.version = Version::HTTP_11;
        }
        UpstreamProtocol::H2c => {
            let host = parts.headers.remove(header::HOST);
            let authority = parts
                .uri
                .authority()
                .cloned()
                .or_else(|| host.and_then(|h| Authority::try_from(h.as_bytes()).ok()))
                .unwrap_or_else(|| endpoint.clone());
            let mut target = http::uri::Parts::default();
            target.scheme = Some(http::uri::Scheme::HTTP);
            target.authority = Some(authority);
            target.path_and_query = Some(path);
            if let Ok(uri) = Uri::from_parts(target) {
                parts.uri = uri;
            }
            parts.version = Version::HTTP_2;
            if te_trailers {
                parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
    }
}

/// Baton's answer to a gRPC request it could not forward: HTTP 200, trailers-only, with the gRPC status and a
/// `grpc-message` saying why (as Envoy answers).
fn grpc_failure(answer: &Answer) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(GRPC_STATUS, HeaderValue::from(u16::from(answer.grpc_status)));
    if let Ok(v) = HeaderValue::try_from(grpc_message(answer.message)) {
        h.insert(GRPC_MESSAGE, v);
    }
    resp
}

/// A short plain-text response of ours: one line, `message`.
pub fn plain(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!("{message}\n")))));
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
