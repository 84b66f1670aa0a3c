//! The HTTP/1.1 proxy engine for the common case, in one task per client connection.
//!
//! A request head is parsed and rewritten in one buffer ([`super::parse`]), with its body if it is small (at most
//! 64 KiB, read whole); a larger or chunked body is streamed after it. The request goes to a pooled upstream
//! connection owned by this task for the exchange. The response head is parsed and rewritten, and its body is
//! passed through with its own framing ([`super::framing`]: `Content-Length`, chunked or until close), so a small
//! response costs one read and one write on each side and no other task. The exchange itself is a state machine
//! ([`super::exchange`]).
//!
//! Anything else leaves this path before a byte of it is forwarded: the connection goes on under hyper
//! ([`super::hyper_path`]) with the bytes read so far. That covers requests that are malformed (hyper answers 400
//! or 431), expectations other than `100-continue`, `CONNECT` and absolute-form requests, HTTP/1.0 clients, fields
//! named in `Connection`, and transfer codings other than `chunked`.
//!
//! A connection idle between two requests holds no buffer and no exchange state, only its socket and a small task
//! (see `bursts`); its buffers go to a per-thread spare list, for the next connection that wakes up.
//!
//! A migration takes the connection where it is: between two exchanges, with the bytes read and not forwarded
//! (even a whole pipelined request), or in the middle of one, at its next read or blocked write, with the
//! exchange's state ([`ConnKind::Exchange`](crate::drain::ConnKind::Exchange)).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proxy::http::exchange::{Buffers, Exchange, Step, READ_ROOM};
use crate::proxy::http::parse::{canonical_reason, parse_request, Parsed};
use crate::proxy::http::{depart, hyper_path};
use crate::proxy::io::ClientIo;
use crate::proxy::tcp;
use crate::proxy::{IdleAt, ListenerCtx};
use crate::telemetry::metrics::ListenerMetrics;

/// Serves HTTP/1 on an accepted connection whose first bytes (`read`) are not an HTTP/2 preface.
/// `may_migrate: false` means the successor refused it once already: serve on, closing after the next response.
pub async fn serve(client: TcpStream, read: Vec<u8>, peer: SocketAddr, ctx: Arc<ListenerCtx>, may_migrate: bool) {
    tokio::select! {
        biased;
        _ = bursts(client, read, peer, &ctx, may_migrate, None) => {}
        _ = ctx.drain.deadline() => {}
    }
}

/// Serves a connection handed over in the middle of an exchange ([`ConnKind::Exchange`](crate::drain::ConnKind)):
/// carries the exchange on, then the connection. `Err` (the fds closed) if its state is malformed.
pub fn resume(
    fds: Vec<std::os::fd::OwnedFd>,
    buffers: Vec<Vec<u8>>,
    ctx: Arc<ListenerCtx>,
) -> Result<impl std::future::Future<Output = ()>, &'static str> {
    let (client, cbuf, exchange) = Exchange::restore(fds, buffers)?;
    Ok(async move {
        let Ok(peer) = client.peer_addr() else { return };
        tokio::select! {
            biased;
            _ = bursts(client, cbuf, peer, &ctx, true, Some(Box::new(exchange))) => {}
            _ = ctx.drain.deadline() => {}
        }
    })
}

/// A connection idle between two requests, nothing read of the next one: [`run`] leaves it to [`bursts`], which waits
/// for the next request without the burst's state.
struct Idle {
    client: TcpStream,
    may_migrate: bool,
}

/// Serves a connection as a series of bursts: each runs its exchanges in a boxed [`run`], which returns as soon as
/// the connection is idle between two requests. An idle connection (a keep-alive client that may stay silent for
/// minutes, by the thousands) then holds only its socket and this small future: no buffer, no exchange state.
async fn bursts(
    mut client: TcpStream,
    mut cbuf: Vec<u8>,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
    mut may_migrate: bool,
    mut resumed: Option<Box<Exchange>>,
) {
    let forwarded_for = peer.ip().to_string();
    loop {
        let mut idle = None;
        // Built apart from its await: a temporary of the awaiting statement would take room in this future.
        let burst = Box::pin(run(
            client,
            cbuf,
            &forwarded_for,
            peer,
            ctx,
            may_migrate,
            resumed.take().map(|ex| *ex),
            &mut idle,
        ));
        burst.await;
        let Some(Idle {
            client: quiet,
            may_migrate: m,
        }) = idle
        else {
            return; // the connection is done with
        };
        if !woken(&quiet, ctx, m).await {
            return;
        }
        (client, cbuf, may_migrate) = (quiet, Vec::new(), m);
    }
}

/// Waits until an idle connection is readable (true) or, if `may_migrate`, a migration starts (true: `run`'s first
/// step hands it over). False when the socket failed.
async fn woken(client: &TcpStream, ctx: &ListenerCtx, may_migrate: bool) -> bool {
    tokio::select! {
        biased;
        // poll_read_ready keeps the waker in the socket's registration: a smaller future than readable()'s.
        ready = std::future::poll_fn(|cx| client.poll_read_ready(cx)) => ready.is_ok(),
        _ = ctx.drain.migration(), if may_migrate => true,
    }
}

/// Runs exchanges on a connection until it ends, or until it is idle (then in `idle`; see [`bursts`]).
#[allow(clippy::too_many_arguments)]
async fn run(
    mut client: TcpStream,
    mut cbuf: Vec<u8>,
    forwarded_for: &str,
    peer: SocketAddr,
    ctx: &Arc<ListenerCtx>,
    mut may_migrate: bool,
    mut resumed: Option<Exchange>,
    idle: &mut Option<Idle>,
) {
    let metrics = &ctx.metrics;
    let cluster = &ctx.cluster;
    // A burst woken by a readable socket reads here once whatever comes (the client may have sent part of a
    // request, or nothing after all); any other wait with nothing of the next request read ends the burst.
    let mut may_park = !cbuf.is_empty() || resumed.is_some();
    let mut bufs = Buffers::take();
    if cbuf.capacity() == 0 {
        cbuf = Buffers::take_read();
    }
    let mut migration = ctx.drain.migration();
    let timer = tokio::time::sleep(cluster.request_timeout);
    tokio::pin!(timer);
    'conn: loop {
        let mut ex = match resumed.take() {
            Some(ex) => ex,
            None => {
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
                    let out = bufs.request();
                    out.clear();
                    match parse_request(&cbuf, forwarded_for, out) {
                        Parsed::Ready(r) => break r,
                        Parsed::Elsewhere => {
                            let io = ClientIo::new(Bytes::from(cbuf), client, metrics.clone());
                            // Boxed, as every rare path: a task is as large as its largest state, all its life.
                            return Box::pin(hyper_path::serve_h1(io, peer, ctx.clone(), may_migrate)).await;
                        }
                        Parsed::Partial => {}
                    }
                    if cbuf.is_empty() && may_park {
                        std::mem::take(&mut bufs).spare(cbuf);
                        *idle = Some(Idle { client, may_migrate });
                        return;
                    }
                    may_park = true;
                    cbuf.reserve(READ_ROOM);
                    let got = tokio::select! {
                        biased;
                        r = client.read_buf(&mut cbuf) => r,
                        _ = &mut migration, if may_migrate => continue 'conn,
                    };
                    match got {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            metrics
                                .bytes_in
                                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                };
                bufs.request().extend_from_slice(&cbuf[req.head_len..req.len]);
                cbuf.drain(..req.len);
                let closing = req.close || !may_migrate || ctx.drain.is_graceful();
                let endpoint = cluster.pick();
                let started = std::time::Instant::now();
                match Exchange::start(ctx, endpoint, &req, closing, std::mem::take(&mut bufs)).await {
                    Ok(ex) => ex,
                    Err((failure, back)) => {
                        bufs = back;
                        if answer_failure(&mut client, failure, endpoint.addr, closing, started, ctx).await {
                            continue;
                        }
                        return shutdown(client).await;
                    }
                }
            }
        };
        let stop = may_migrate.then_some(&mut migration);
        match ex.drive(&mut client, &mut cbuf, ctx, stop, timer.as_mut()).await {
            Step::Done => {
                let close = ex.closes_client();
                let linger = ex.left_body_unread();
                let reuse = ex.reusable().then(|| cluster.endpoint(ex.endpoint)).flatten();
                let (up, back) = ex.into_parts();
                bufs = back;
                if let Some(endpoint) = reuse {
                    endpoint.raw.put(up);
                }
                if linger {
                    return lingering_close(client).await;
                }
                if close {
                    return shutdown(client).await;
                }
            }
            Step::Failed(failure) => {
                let (closing, linger) = (ex.closes_client(), ex.left_body_unread());
                let (endpoint, started) = (ex.endpoint, ex.started());
                bufs = ex.into_parts().1;
                if !answer_failure(&mut client, failure, endpoint, closing, started, ctx).await {
                    return if linger {
                        lingering_close(client).await
                    } else {
                        shutdown(client).await
                    };
                }
            }
            Step::BadRequest(why) => {
                tracing::debug!(%peer, reason = why, "malformed request body; answering 400");
                let mut out = Vec::with_capacity(256);
                our_response(&mut out, 400, "baton: malformed request body", true);
                let _ = write(&mut client, &out, metrics).await;
                return shutdown(client).await;
            }
            Step::Cut(why) => {
                // Nothing else can be said on this connection.
                tracing::debug!(cluster = %cluster.name, endpoint = %ex.endpoint, error = %why, "exchange cut short");
                return;
            }
            Step::Idle(at) => {
                ctx.stream_idled(Some(ex.endpoint), at);
                let answer = match at {
                    IdleAt::RequestBody => Some((408, "baton: request body stalled")),
                    IdleAt::UpstreamRead => Some((504, "baton: upstream stalled")),
                    IdleAt::ResponseBody | IdleAt::ClientRead | IdleAt::Tunnel => None,
                };
                // The upstream connection is dropped with the exchange, never pooled.
                let started = ex.started();
                drop(ex);
                let Some((status, message)) = answer else {
                    // The response is part-way: the client must see that it was cut, even one whose body ends
                    // with the connection, so the connection is reset rather than closed.
                    return abort(client);
                };
                // No response head was sent yet: the client gets ours, and the connection closes (its request
                // body was not read to its end).
                ctx.metrics.response(status, started.elapsed());
                let mut out = Vec::with_capacity(256);
                our_response(&mut out, status, message, true);
                let _ = write(&mut client, &out, metrics).await;
                return lingering_close(client).await;
            }
            Step::Tunnel => return Box::pin(tunnel(client, ex, cbuf, ctx, may_migrate)).await,
            Step::Depart => {
                let detached = match ex.detach(client, std::mem::take(&mut cbuf), ctx.listener.clone()) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot detach an exchange for migration; closing it");
                        return;
                    }
                };
                let Some(back) = ctx.drain.depart(detached).await else {
                    return; // the successor carries it on
                };
                // Not taken: carry it on here, then close.
                match Exchange::restore(back.conn.fds, back.conn.buffers) {
                    Ok((c, b, e)) => {
                        (client, cbuf, resumed) = (c, b, Some(e));
                        may_migrate = false;
                    }
                    Err(why) => {
                        tracing::debug!(
                            reason = why,
                            "cannot resume an exchange the successor gave back; closing it"
                        );
                        return;
                    }
                }
            }
        }
    }
}

/// Answers a request that got no response head with baton's own response: whether the connection goes on.
async fn answer_failure(
    client: &mut TcpStream,
    failure: crate::proxy::http::failure::Failure,
    endpoint: SocketAddr,
    closing: bool,
    started: std::time::Instant,
    ctx: &ListenerCtx,
) -> bool {
    let answer = failure.answer(ctx, endpoint);
    ctx.metrics.response(answer.status, started.elapsed());
    let mut out = Vec::with_capacity(256);
    our_response(&mut out, answer.status, answer.message, closing);
    write(client, &out, &ctx.metrics).await.is_ok() && !closing
}

async fn shutdown(mut client: TcpStream) {
    let _ = client.shutdown().await;
}

/// Closes a connection with a reset (SO_LINGER 0): what is unsent is dropped, and the client cannot take a response
/// cut short for a whole one.
fn abort(client: TcpStream) {
    let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
    drop(client);
}

/// Longest a client connection is read and discarded after its response, when its request body was not read.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Closes a connection whose client may still be sending a request body nobody will read: after the response,
/// says EOF and discards what still comes for up to [`LINGER`], so that closing does not reset the connection
/// (a reset can destroy the response before the client has read it).
async fn lingering_close(mut client: TcpStream) {
    let _ = client.shutdown().await;
    let mut sink = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

async fn write(client: &mut TcpStream, bytes: &[u8], metrics: &ListenerMetrics) -> std::io::Result<()> {
    client.write_all(bytes).await?;
    metrics
        .bytes_out
        .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
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

/// After a `101` to an upgrade request: writes the head to the client and relays bytes both ways, like a TCP
/// listener's stream (and migrated like one), first passing on what each side sent past the heads.
async fn tunnel(
    mut client: TcpStream,
    mut ex: Exchange,
    from_client: Vec<u8>,
    ctx: &Arc<ListenerCtx>,
    may_migrate: bool,
) {
    if write(&mut client, ex.client_head(), &ctx.metrics).await.is_err() {
        return;
    }
    let from_upstream = ex.upstream_rest();
    let (up, _) = ex.into_parts();
    tcp::serve_tunnel(client, up, (from_client, from_upstream), ctx.clone(), may_migrate).await
}
