//! The HTTP listener: HTTP/1.1 and h2c (prior knowledge) on one port, each request proxied to the cluster.
//!
//! A connection's first bytes say which protocol it speaks ([`mod@sniff`]). HTTP/1 goes to the HTTP/1 engine
//! ([`engine`], with its parsers in [`parse`] and body framing in [`framing`]), which serves the common request
//! itself and hands anything else to hyper ([`hyper_path`]) with the bytes read so far; h2c goes to hyper at once.
//! Both paths share the hop-by-hop field rules ([`fields`]) and the answers to upstream failures ([`failure`]).
//!
//! At a migration an HTTP/1 connection leaves between two exchanges (the engine: with the bytes read and not
//! forwarded; hyper: at a response boundary, see [`quiescence`]); HTTP/2 gets GOAWAY and finishes here.

pub mod engine;
pub mod failure;
pub mod fields;
pub mod framing;
pub mod hyper_path;
pub mod parse;
pub mod quiescence;
pub mod sniff;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::drain::{detached, ConnKind, Detached, Drain};
use crate::telemetry::metrics::ListenerMetrics;
use crate::upstream::Cluster;
use sniff::{sniff, Sniffed};

/// Largest HTTP/1 request head accepted (request line and headers); hyper answers a larger one 431.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// What every connection of one HTTP listener shares.
pub struct HttpProxy {
    /// Listener name (tags a migrated connection).
    pub listener: Arc<str>,
    /// Where requests go.
    pub cluster: Arc<Cluster>,
    /// This listener's metrics.
    pub metrics: Arc<ListenerMetrics>,
    /// This instance's shutdown state.
    pub drain: Arc<Drain>,
}

/// Serves one accepted connection until it ends, the drain asks it to end (HTTP/2 GOAWAY; HTTP/1 closes after
/// its next response, which carries `Connection: close`), a migration takes it (HTTP/1, or a connection that has
/// not said which protocol it speaks yet), or the drain deadline drops it.
pub async fn serve(stream: TcpStream, peer: SocketAddr, proxy: Arc<HttpProxy>) {
    let _ = stream.set_nodelay(true);
    serve_from(stream, Vec::new(), peer, proxy).await
}

/// Serves a connection handed over by the predecessor, starting with the bytes it had read.
pub async fn serve_adopted(stream: TcpStream, buffered: Vec<u8>, proxy: Arc<HttpProxy>) {
    let Ok(peer) = stream.peer_addr() else { return };
    serve_from(stream, buffered, peer, proxy).await
}

async fn serve_from(mut stream: TcpStream, mut read: Vec<u8>, peer: SocketAddr, proxy: Arc<HttpProxy>) {
    let mut may_migrate = true;
    loop {
        let migration = may_migrate.then(|| proxy.drain.migration_latch());
        let sniffed = tokio::select! {
            s = sniff(stream, read, &proxy.metrics, migration) => s,
            _ = proxy.drain.deadline() => return,
        };
        match sniffed {
            Sniffed::Gone => return,
            Sniffed::H2(io) => return hyper_path::serve_h2(io, peer, proxy).await,
            Sniffed::H1(stream, read) => return engine::serve(stream, read, peer, proxy, may_migrate).await,
            Sniffed::Silent(quiet, bytes) => match depart(&proxy, quiet, bytes).await {
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
pub(crate) async fn depart(proxy: &HttpProxy, stream: TcpStream, buffered: Vec<u8>) -> Option<(TcpStream, Vec<u8>)> {
    let fd = match detached::stream_fd(stream) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(error = %e, "cannot detach a connection for migration; closing it");
            return None;
        }
    };
    let conn = Detached {
        kind: ConnKind::Http1,
        listener: proxy.listener.clone(),
        fds: vec![fd],
        buffers: vec![buffered],
    };
    let mut back = proxy.drain.depart(conn).await?;
    let (Some(fd), Some(buffered)) = (back.fds.pop(), back.buffers.pop()) else {
        return None;
    };
    let stream = detached::fd_stream(fd).ok()?;
    Some((stream, buffered))
}
