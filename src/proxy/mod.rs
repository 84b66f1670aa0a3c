//! The proxy listeners' connections: HTTP (HTTP/1.1 and h2c, [`http`]) and TCP relay ([`tcp`]).
//!
//! The server hands each accepted connection, and each connection the predecessor handed over, to the
//! [`ListenerProxy`] of its listener; everything protocol-specific happens below that.

pub mod http;
pub mod io;
pub mod tcp;

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

/// What the connections of one proxy listener share, by protocol.
#[derive(Clone)]
pub enum ListenerProxy {
    /// An `http` listener.
    Http(Arc<http::HttpProxy>),
    /// A `tcp` listener.
    Tcp(Arc<tcp::TcpProxy>),
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
        let listener: Arc<str> = Arc::from(name);
        match protocol {
            Protocol::Http => ListenerProxy::Http(Arc::new(http::HttpProxy {
                listener,
                cluster,
                metrics,
                drain,
            })),
            Protocol::Tcp => ListenerProxy::Tcp(Arc::new(tcp::TcpProxy {
                listener,
                cluster,
                metrics,
                drain,
            })),
        }
    }

    /// This listener's metrics.
    pub fn metrics(&self) -> &Arc<ListenerMetrics> {
        match self {
            ListenerProxy::Http(p) => &p.metrics,
            ListenerProxy::Tcp(p) => &p.metrics,
        }
    }

    fn drain(&self) -> &Arc<Drain> {
        match self {
            ListenerProxy::Http(p) => &p.drain,
            ListenerProxy::Tcp(p) => &p.drain,
        }
    }

    /// Serves a connection this instance accepted, as a task the drain waits for.
    pub fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        let guard = ConnectionGuard::new(self.metrics());
        match self {
            ListenerProxy::Http(p) => {
                let p = p.clone();
                self.drain().spawn(async move {
                    http::serve(stream, peer, p).await;
                    drop(guard);
                });
            }
            ListenerProxy::Tcp(p) => {
                let p = p.clone();
                self.drain().spawn(async move {
                    tcp::serve(stream, peer, p).await;
                    drop(guard);
                });
            }
        }
    }

    /// Serves a connection the predecessor handed over (fds already checked to be connected TCP sockets), as a
    /// task the drain waits for. `Err` (the fds closed) when it is not a connection of this listener's protocol;
    /// the predecessor then serves it on.
    pub fn adopt(&self, kind: ConnKind, fds: Vec<OwnedFd>, buffers: Vec<Vec<u8>>) -> Result<(), &'static str> {
        let mut fds = fds.into_iter();
        let mut buffers = buffers.into_iter();
        match (self, kind) {
            (ListenerProxy::Http(p), ConnKind::Http1) if fds.len() == 1 => {
                let Some(Ok(stream)) = fds.next().map(fd_stream) else {
                    return Err("unusable socket");
                };
                let buffered = buffers.next().unwrap_or_default();
                let guard = ConnectionGuard::adopted(&p.metrics);
                let p = p.clone();
                self.drain().spawn(async move {
                    http::serve_adopted(stream, buffered, p).await;
                    drop(guard);
                });
                Ok(())
            }
            (ListenerProxy::Tcp(p), ConnKind::Tcp) if fds.len() == 2 => {
                let (Some(c), Some(u)) = (fds.next(), fds.next()) else {
                    return Err("unusable sockets");
                };
                let (Ok(client), Ok(upstream)) = (fd_stream(c), fd_stream(u)) else {
                    return Err("unusable sockets");
                };
                let pending = (buffers.next().unwrap_or_default(), buffers.next().unwrap_or_default());
                let guard = ConnectionGuard::adopted(&p.metrics);
                let p = p.clone();
                self.drain().spawn(async move {
                    tcp::serve_adopted(client, upstream, pending, p).await;
                    drop(guard);
                });
                Ok(())
            }
            _ => Err("another kind of connection than this listener serves"),
        }
    }
}
