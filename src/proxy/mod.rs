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

/// Where an exchange stood when its stream idle timeout ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleAt {
    /// Waiting for the client's request body.
    RequestBody,
    /// Waiting for the upstream to take the request body.
    UpstreamRead,
    /// The response body was being passed on (its head was sent): waiting for the upstream's next bytes.
    ResponseBody,
    /// The response body was being passed on: waiting for the client to read.
    ClientRead,
    /// An upgraded connection (after a `101`).
    Tunnel,
}

impl IdleAt {
    /// For the log.
    pub fn as_str(self) -> &'static str {
        match self {
            IdleAt::RequestBody => "waiting for the client's request body",
            IdleAt::UpstreamRead => "waiting for the upstream to read the request body",
            IdleAt::ResponseBody => "waiting for the upstream's response body",
            IdleAt::ClientRead => "waiting for the client to read the response body",
            IdleAt::Tunnel => "in an upgraded connection",
        }
    }
}

impl ListenerCtx {
    /// Counts an exchange (or upgraded connection) to `endpoint` that moved no byte either way for the cluster's
    /// `stream_idle_timeout` and is ended, and logs it at `warn` at most once per [`warn::EVERY`].
    pub fn stream_idled(&self, endpoint: Option<SocketAddr>, at: IdleAt) {
        self.metrics
            .stream_idle_timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cluster = &self.cluster.name;
        let timeout = crate::config::format_duration(self.cluster.stream_idle_timeout);
        let endpoint = endpoint.map(tracing::field::display);
        if let Some(more) = self.warnings.due(warn::Cause::StreamIdle) {
            tracing::warn!(listener = %self.listener, cluster, endpoint, stream_idle_timeout = %timeout, at = at.as_str(), failed_since = more, "no byte moved either way within stream_idle_timeout: exchange ended");
        } else {
            tracing::debug!(cluster, endpoint, at = at.as_str(), "stream idle timeout");
        }
    }
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
