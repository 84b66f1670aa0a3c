//! The HTTP/1.1 proxy engine for the common case, in one task per client connection.
//!
//! A request is read whole (head and a body of at most 64 KiB), rewritten in one buffer ([`super::parse`]), and
//! written to a pooled upstream connection owned by this task for the exchange. The response head is parsed and
//! rewritten, and its body is passed through with its own framing ([`super::framing`]: `Content-Length`, chunked
//! or until close), so a small response costs one read and one write on each side and no other task.
//!
//! Anything else leaves this path before a byte of it is forwarded: the connection goes on under hyper
//! ([`super::hyper_path`]) with the bytes read so far. That covers requests that are malformed (hyper answers 400
//! or 431), chunked or large request bodies (streamed by hyper), `Expect`, `Upgrade`, `CONNECT`, absolute-form
//! targets, HTTP/1.0 clients and fields named in `Connection`.
//!
//! Between two exchanges nothing of the connection is anywhere but in the client buffer, so a migration hands the
//! connection over there, with the bytes read and not forwarded (even a whole pipelined request).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proxy::http::failure::Failure;
use crate::proxy::http::framing::{BodyEnd, BODY_CHUNK};
use crate::proxy::http::parse::{
    canonical_reason, parse_request, parse_response, Framing, Parsed, Request, ResponseHead,
};
use crate::proxy::http::{depart, hyper_path};
use crate::proxy::io::ClientIo;
use crate::proxy::tcp;
use crate::proxy::ListenerCtx;
use crate::telemetry::metrics::ListenerMetrics;
use crate::upstream::{Cluster, Endpoint};

/// Room kept free in a buffer before each read.
const READ_ROOM: usize = 8 * 1024;

/// Serves HTTP/1 on an accepted connection whose first bytes (`read`) are not an HTTP/2 preface.
/// `may_migrate: false` means the successor refused it once already: serve on, closing after the next response.
pub async fn serve(client: TcpStream, read: Vec<u8>, peer: SocketAddr, ctx: Arc<ListenerCtx>, may_migrate: bool) {
    tokio::select! {
        biased;
        _ = run(client, read, peer, &ctx, may_migrate) => {}
        _ = ctx.drain.deadline() => {}
    }
}

async fn run(
    mut client: TcpStream,
    mut cbuf: Vec<u8>,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
    mut may_migrate: bool,
) {
    let metrics = &ctx.metrics;
    let cluster = &ctx.cluster;
    let forwarded_for = peer.ip().to_string();
    let mut out = Vec::with_capacity(1024);
    let mut ubuf = Vec::new();
    let mut head = Vec::with_capacity(1024);
    let migration = ctx.drain.migration();
    tokio::pin!(migration);
    let timer = tokio::time::sleep(cluster.request_timeout);
    tokio::pin!(timer);
    'conn: loop {
        if may_migrate && ctx.drain.is_migrating() {
            // Between two exchanges: everything not forwarded is in `cbuf`, and travels with the socket.
            match depart(ctx, client, std::mem::take(&mut cbuf)).await {
                None => return,
                Some((back, bytes)) => {
                    (client, cbuf) = (back, bytes);
                    may_migrate = false;
                }
            }
        }
        let req = loop {
            out.clear();
            match parse_request(&cbuf, &forwarded_for, &mut out) {
                Parsed::Ready(r) => break r,
                Parsed::Elsewhere => {
                    let io = ClientIo::new(Bytes::from(cbuf), client, metrics.clone());
                    return hyper_path::serve_h1(io, peer, ctx.clone(), may_migrate).await;
                }
                Parsed::Partial => {}
            }
            cbuf.reserve(READ_ROOM);
            let got = tokio::select! {
                biased;
                r = client.read_buf(&mut cbuf) => r,
                _ = &mut migration, if may_migrate => continue 'conn,
            };
            match got {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    metrics.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        };
        out.extend_from_slice(&cbuf[req.head_len..req.len]);
        cbuf.drain(..req.len);
        let start = Instant::now();
        let closing = req.close || !may_migrate || ctx.drain.is_graceful();
        let mut endpoint = cluster.pick();
        timer
            .as_mut()
            .reset(tokio::time::Instant::from_std(start) + cluster.request_timeout);
        let exchanged = tokio::select! {
            biased;
            r = exchange(cluster, &mut endpoint, &out, &req, closing, &mut ubuf, &mut head) => r,
            _ = &mut timer => Err(Failure::Timeout),
        };
        let answer = match exchanged {
            Ok(ok) => ok,
            Err(failure) => {
                let answer = failure.answer(ctx, endpoint.addr);
                metrics.response(answer.status, start.elapsed());
                out.clear();
                our_response(&mut out, answer.status, answer.message, closing);
                if write(&mut client, &out, metrics).await.is_err() || closing {
                    return shutdown(client).await;
                }
                continue;
            }
        };
        metrics.response(answer.head.status, start.elapsed());
        if answer.head.framing == Framing::Tunnel {
            return tunnel(client, answer, &ubuf, &head, cbuf, ctx, may_migrate).await;
        }
        let close_client = answer.head.close;
        match relay_body(answer, &mut ubuf, &mut head, &mut client, metrics).await {
            Ok(Some(up)) => endpoint.raw.put(up),
            Ok(None) => {}
            Err(e) => {
                // Nothing else can be said on this connection.
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.addr, error = %e, "response body cut short");
                return;
            }
        }
        if close_client {
            return shutdown(client).await;
        }
    }
}

async fn shutdown(mut client: TcpStream) {
    let _ = client.shutdown().await;
}

async fn write(client: &mut TcpStream, bytes: &[u8], metrics: &ListenerMetrics) -> std::io::Result<()> {
    client.write_all(bytes).await?;
    metrics.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// A short plain-text response of ours: one line, `message`.
fn our_response(out: &mut Vec<u8>, status: u16, message: &str, close: bool) {
    let reason = canonical_reason(status);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{message}\n",
            message.len() + 1,
            if close { "connection: close\r\n" } else { "" },
        )
        .as_bytes(),
    );
}

/// Sends the request and reads the response head into `ubuf`, writing the client's head to `head`. A reused
/// connection that turns out closed before answering is replaced by a new one once, if nothing can have been
/// processed twice: the write failed, or the request is idempotent and not a byte of response came. A new
/// connection comes from [`Cluster::connect_from`] (a failed connect is tried once more, maybe on another
/// endpoint, which `endpoint` then names).
async fn exchange<'a>(
    cluster: &'a Cluster,
    endpoint: &mut &'a Endpoint,
    request: &[u8],
    req: &Request,
    closing: bool,
    ubuf: &mut Vec<u8>,
    head: &mut Vec<u8>,
) -> Result<Answer, Failure> {
    let mut pooled = endpoint.raw.take();
    loop {
        let reused = pooled.is_some();
        let mut up = match pooled.take() {
            Some(s) => s,
            None => {
                let (at, s) = cluster.connect_from(endpoint).await.map_err(Failure::Connect)?;
                *endpoint = at;
                s
            }
        };
        if let Err(e) = up.write_all(request).await {
            if reused {
                continue;
            }
            return Err(Failure::Exchange(format!("writing the request: {e}").into()));
        }
        ubuf.clear();
        // Any byte of response, an informational one included, rules out sending the request again.
        let mut answered = false;
        loop {
            ubuf.reserve(READ_ROOM);
            let n = match up.read_buf(ubuf).await {
                Ok(n) => n,
                Err(e) if !answered && reused && req.idempotent => {
                    tracing::trace!(error = %e, "reused upstream connection failed; retrying on a new one");
                    break;
                }
                Err(e) => return Err(Failure::Exchange(format!("reading the response: {e}").into())),
            };
            if n == 0 {
                if !answered && reused && req.idempotent {
                    break;
                }
                return Err(Failure::Exchange(
                    "the upstream closed before a complete response head".into(),
                ));
            }
            answered = true;
            head.clear();
            match parse_response(ubuf, req.is_head, req.upgrade, closing, head) {
                Ok(Some(parsed)) => {
                    // Framing errors in what came with the head are still the upstream's to answer for:
                    // nothing was sent to the client yet.
                    let mut body = BodyEnd::new(parsed.framing);
                    let first = body
                        .feed(&ubuf[parsed.head_len..])
                        .map_err(|why| Failure::Exchange(why.into()))?;
                    return Ok(Answer {
                        up,
                        head: parsed,
                        body,
                        first,
                    });
                }
                Ok(None) => {}
                Err(why) => return Err(Failure::Exchange(why.into())),
            }
        }
    }
}

/// An upstream response whose head arrived: the connection, the parsed head, and how its body ends.
struct Answer {
    up: TcpStream,
    head: ResponseHead,
    body: BodyEnd,
    /// Of the bytes read past the head: how many are body, and whether the body ends there.
    first: (usize, bool),
}

/// After a `101` to an upgrade request: writes the head (`out`) to the client and relays bytes both ways, like a
/// TCP listener's stream (and migrated like one), first passing on what each side sent past the heads.
async fn tunnel(
    mut client: TcpStream,
    answer: Answer,
    ubuf: &[u8],
    out: &[u8],
    from_client: Vec<u8>,
    ctx: &Arc<ListenerCtx>,
    may_migrate: bool,
) {
    if write(&mut client, out, &ctx.metrics).await.is_err() {
        return;
    }
    let from_upstream = ubuf[answer.head.head_len..].to_vec();
    tcp::serve_tunnel(
        client,
        answer.up,
        (from_client, from_upstream),
        ctx.clone(),
        may_migrate,
    )
    .await
}

/// Why a response body could not be passed on to its end (the client connection must close).
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("writing to the client: {0}")]
    Client(#[source] std::io::Error),
    #[error("reading from the upstream: {0}")]
    Upstream(#[source] std::io::Error),
    #[error("the upstream closed before the end of the body")]
    Truncated,
    #[error("malformed body from the upstream: {0}")]
    Framing(&'static str),
}

/// Writes the client head (`out`) and the response body: `Ok(Some)` gives back the upstream connection if it
/// can carry another exchange; `Err` if either side failed part-way (the client connection must close).
async fn relay_body(
    answer: Answer,
    ubuf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    client: &mut TcpStream,
    metrics: &ListenerMetrics,
) -> Result<Option<TcpStream>, BodyError> {
    let Answer {
        mut up,
        head,
        mut body,
        first: (taken, mut done),
    } = answer;
    let after = &ubuf[head.head_len..];
    let extra = after.len() - taken;
    out.extend_from_slice(&after[..taken]);
    write(client, out, metrics).await.map_err(BodyError::Client)?;
    if !done {
        ubuf.clear();
        ubuf.resize(BODY_CHUNK, 0);
        while !done {
            let n = up.read(&mut ubuf[..body.want()]).await.map_err(BodyError::Upstream)?;
            if n == 0 {
                return if head.framing == Framing::Close {
                    Ok(None)
                } else {
                    Err(BodyError::Truncated)
                };
            }
            let (k, end) = body.feed(&ubuf[..n]).map_err(BodyError::Framing)?;
            write(client, &ubuf[..k], metrics).await.map_err(BodyError::Client)?;
            if k < n {
                // Bytes after the chunked body's end: the upstream is not speaking HTTP/1.1 properly.
                return Ok(None);
            }
            done = end;
        }
        ubuf.truncate(0);
    }
    Ok((head.keep_alive && extra == 0).then_some(up))
}
