//! The proxy listeners' connections: HTTP (HTTP/1.1 and h2c, [`http`]) and TCP relay ([`tcp`]).
//!
//! The server hands each accepted connection, and each connection the predecessor handed over, to the
//! [`ListenerProxy`] of its listener; everything protocol-specific happens below that, with the listener's
//! [`ListenerCtx`].

pub mod http;
pub mod io;
pub mod tcp;
pub mod warn;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::config::Protocol;
use crate::drain::detached::fd_stream;
use crate::drain::{ConnKind, Drain};
use crate::telemetry::metrics::ListenerMetrics;
use crate::telemetry::state::ConnectionGuard;
use crate::upstream::Cluster;

/// What every connection of one proxy listener shares.
pub struct ListenerCtx {
    /// Listener name (tags a migrated connection).
    pub listener: Arc<str>,
    /// Where its connections go.
    pub cluster: Arc<Cluster>,
    /// This listener's metrics.
    pub metrics: Arc<ListenerMetrics>,
    /// This instance's shutdown state.
    pub drain: Arc<Drain>,
    /// Rate limits of this listener's warnings about its upstream.
    pub warnings: warn::Warnings,
}

/// A proxy listener: what it speaks, and what its connections share.
#[derive(Clone)]
pub struct ListenerProxy {
    protocol: Protocol,
    ctx: Arc<ListenerCtx>,
}

impl ListenerProxy {
    /// The proxy of listener `name`, speaking `protocol` to `cluster`.
    pub fn new(
        name: &str,
        protocol: Protocol,
        cluster: Arc<Cluster>,
        metrics: Arc<ListenerMetrics>,
        drain: Arc<Drain>,
    ) -> ListenerProxy {
        let ctx = Arc::new(ListenerCtx {
            listener: Arc::from(name),
            cluster,
            metrics,
            drain,
            warnings: warn::Warnings::default(),
        });
        ListenerProxy { protocol, ctx }
    }

    /// What this listener serves.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// This listener's metrics.
    pub fn metrics(&self) -> &Arc<ListenerMetrics> {
        &self.ctx.metrics
    }

    /// Serves a connection this instance accepted, as a task the drain waits for.
    pub fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        let guard = ConnectionGuard::new(&self.ctx.metrics);
        let ctx = self.ctx.clone();
        match self.protocol {
            Protocol::Http => self.ctx.drain.spawn(async move {
                http::serve(stream, peer, ctx).await;
                drop(guard);
            }),
            Protocol::Tcp => self.ctx.drain.spawn(async move {
                tcp::serve(stream, peer, ctx).await;
                drop(guard);
            }),
        }
    }

    /// Serves a connection the predecessor handed over (fds already checked to be connected TCP sockets), as a
    /// task the drain waits for. `Err` (the fds closed) when it is not a connection of this listener's protocol;
    /// the predecessor then serves it on.
    pub fn adopt(&self, kind: ConnKind, fds: Vec<OwnedFd>, buffers: Vec<Vec<u8>>) -> Result<(), &'static str> {
        let mut fds = fds.into_iter();
        let mut buffers = buffers.into_iter();
        let ctx = self.ctx.clone();
        match (self.protocol, kind) {
            (Protocol::Http, ConnKind::Http1) if fds.len() == 1 => {
                let Some(Ok(stream)) = fds.next().map(fd_stream) else {
                    return Err("unusable socket");
                };
                let buffered = buffers.next().unwrap_or_default();
                let guard = ConnectionGuard::adopted(&ctx.metrics);
                self.ctx.drain.spawn(async move {
                    http::serve_adopted(stream, buffered, ctx).await;
                    drop(guard);
                });
                Ok(())
            }
            (Protocol::Tcp, ConnKind::Tcp) | (Protocol::Http, ConnKind::Tunnel) if fds.len() == 2 => {
                let (Some(c), Some(u)) = (fds.next(), fds.next()) else {
                    return Err("unusable sockets");
                };
                let (Ok(client), Ok(upstream)) = (fd_stream(c), fd_stream(u)) else {
                    return Err("unusable sockets");
                };
                let pending = (buffers.next().unwrap_or_default(), buffers.next().unwrap_or_default());
                let guard = ConnectionGuard::adopted(&ctx.metrics);
                self.ctx.drain.spawn(async move {
                    tcp::serve_adopted(client, upstream, pending, ctx, kind).await;
                    drop(guard);
                });
                Ok(())
            }
            (Protocol::Http, ConnKind::Exchange) => {
                let resumed = http::engine::resume(fds.collect(), buffers.collect(), ctx.clone())?;
                let guard = ConnectionGuard::adopted(&ctx.metrics);
                self.ctx.drain.spawn(async move {
                    resumed.await;
                    drop(guard);
                });
                Ok(())
            }
            _ => Err("another kind of connection than this listener serves"),
        }
    }
}
