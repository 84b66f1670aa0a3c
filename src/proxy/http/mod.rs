//! The HTTP listener: HTTP/1.1 and h2c (prior knowledge) on one port, each request proxied to the cluster.
//!
//! A connection's first bytes say which protocol it speaks ([`mod@sniff`]). HTTP/1 goes to the HTTP/1 engine
//! ([`engine`], with its parsers in [`parse`] and body framing in [`framing`]), which serves the common request
//! itself and hands anything else to hyper ([`hyper_path`]) with the bytes read so far; h2c goes to hyper at once.
//! Both paths share the hop-by-hop field rules ([`fields`]) and the answers to upstream failures ([`failure`]);
//! each ends an exchange that moves no byte for the cluster's `stream_idle_timeout` (the engine in [`exchange`],
//! hyper's in [`stream_idle`]).
//!
//! At a migration an HTTP/1 connection leaves between two exchanges (the engine: with the bytes read and not
//! forwarded; hyper: at a response boundary, see [`quiescence`]); HTTP/2 gets GOAWAY and finishes here.

pub mod engine;
pub mod exchange;
pub mod failure;
pub mod fields;
pub mod framing;
pub mod hyper_path;
pub mod parse;
pub mod quiescence;
pub mod sniff;
pub mod stream_idle;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::config::UpstreamProtocol;
use crate::drain::{detached, ConnKind, Detached};
use crate::proxy::io::ClientIo;
use crate::proxy::ListenerCtx;
use sniff::{sniff, Sniffed};

/// Largest HTTP/1 request head accepted (request line and headers); hyper answers a larger one 431.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Serves one accepted connection until it ends, the drain asks it to end (HTTP/2 GOAWAY; HTTP/1 closes after
/// its next response, which carries `Connection: close`), a migration takes it (HTTP/1, or a connection that has
/// not said which protocol it speaks yet), or the drain deadline drops it.
pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Arc<ListenerCtx>) {
    let _ = stream.set_nodelay(true);
    serve_from(stream, Vec::new(), peer, ctx).await
}

/// Serves a connection handed over by the predecessor, starting with the bytes it had read.
pub async fn serve_adopted(stream: TcpStream, buffered: Vec<u8>, ctx: Arc<ListenerCtx>) {
    let Ok(peer) = stream.peer_addr() else { return };
    serve_from(stream, buffered, peer, ctx).await
}

async fn serve_from(mut stream: TcpStream, mut read: Vec<u8>, peer: SocketAddr, ctx: Arc<ListenerCtx>) {
    let mut may_migrate = true;
    loop {
        let migration = may_migrate.then(|| ctx.drain.migration_latch());
        let sniffed = tokio::select! {
            s = sniff(stream, read, &ctx.metrics, migration) => s,
            _ = ctx.drain.deadline() => return,
        };
        match sniffed {
            Sniffed::Gone => return,
            // hyper's paths are boxed: a connection task is as large as the largest state it can be in, for its
            // whole life, and the engine's idle state is small.
            Sniffed::H2(io) => return Box::pin(hyper_path::serve_h2(io, peer, ctx)).await,
            // The engine speaks HTTP/1.1 to the upstream: an h2c cluster's requests all go through hyper.
            Sniffed::H1(stream, read) if ctx.cluster.protocol == UpstreamProtocol::H2c => {
                let io = ClientIo::new(Bytes::from(read), stream, ctx.metrics.clone());
                return Box::pin(hyper_path::serve_h1(io, peer, ctx, may_migrate)).await;
            }
            Sniffed::H1(stream, read) => return engine::serve(stream, read, peer, ctx, may_migrate).await,
            Sniffed::Silent(quiet, bytes) => match depart(&ctx, quiet, bytes).await {
                None => return,
                Some((s, b)) => {
                    (stream, read) = (s, b);
                    may_migrate = false;
                }
            },
        }
    }
}

/// Offers a quiescent HTTP/1 connection to the successor: `None` if it took it, else the connection back.
pub(crate) async fn depart(ctx: &ListenerCtx, stream: TcpStream, buffered: Vec<u8>) -> Option<(TcpStream, Vec<u8>)> {
    let fd = match detached::stream_fd(stream) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(error = %e, "cannot detach a connection for migration; closing it");
            return None;
        }
    };
    let conn = Detached {
        kind: ConnKind::Http1,
        listener: ctx.listener.clone(),
        fds: vec![fd],
        buffers: vec![buffered],
    };
    // An HTTP/1 connection's buffer (at most a request head of MAX_REQUEST_HEAD and one read) always fits a frame:
    // `offer_again` never comes, and a connection that comes back is served on here to its end.
    let mut back = ctx.drain.depart(conn).await?.conn;
    let (Some(fd), Some(buffered)) = (back.fds.pop(), back.buffers.pop()) else {
        return None;
    };
    let stream = detached::fd_stream(fd).ok()?;
    Some((stream, buffered))
}
