//! The new instance's side of a migration: serving the connections the predecessor hands over.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use baton_migrate::{ConnTag, ReceivedConn};

use crate::drain::detached::{fd_stream, is_connected_tcp};
use crate::drain::ConnKind;
use crate::proxy::ListenerProxy;
use crate::upstream::Cluster;

/// Serves connections handed over by the predecessor (see [`super::Server::adopter`]).
pub struct Adopter {
    proxies: Arc<HashMap<String, ListenerProxy>>,
    clusters: Arc<[Arc<Cluster>]>,
}

impl Adopter {
    pub(super) fn new(proxies: Arc<HashMap<String, ListenerProxy>>, clusters: Arc<[Arc<Cluster>]>) -> Adopter {
        Adopter { proxies, clusters }
    }

    /// Serves a connection the predecessor handed over. False (the fds closed) when this instance cannot: no
    /// proxy listener of that name and protocol here, or a malformed connection; the predecessor then serves it
    /// on.
    pub fn adopt(&self, conn: ReceivedConn) -> bool {
        if conn.tag.kind == ConnKind::Upstream.as_str() {
            return self.adopt_upstream(conn);
        }
        let ReceivedConn { tag, fds } = conn;
        let Some(proxy) = self.proxies.get(&tag.listener) else {
            tracing::debug!(listener = %tag.listener, "handed-over connection for a listener this config lacks; refused");
            return false;
        };
        if let Some(bad) = fds.iter().position(|fd| !is_connected_tcp(fd)) {
            tracing::warn!(listener = %tag.listener, kind = %tag.kind, fd = bad, "handed-over fd is not a connected TCP socket; refused");
            return false;
        }
        let Some(kind) = ConnKind::parse(&tag.kind) else {
            tracing::debug!(listener = %tag.listener, kind = %tag.kind, "handed-over connection of an unknown kind; refused");
            return false;
        };
        match proxy.adopt(kind, fds, tag.buffers) {
            Ok(()) => true,
            Err(why) => {
                tracing::debug!(listener = %tag.listener, kind = %tag.kind, protocol = proxy.metrics().protocol, reason = why, "handed-over connection refused");
                false
            }
        }
    }

    /// Keeps an idle upstream connection the predecessor handed over ([`ConnKind::Upstream`]) in its endpoint's
    /// pool, if this instance has a cluster of that name with that endpoint and the fd is a TCP socket connected to
    /// it. False (the fd closed; the predecessor closes its copy too) otherwise.
    fn adopt_upstream(&self, conn: ReceivedConn) -> bool {
        let ReceivedConn { tag, fds } = conn;
        match self.try_adopt_upstream(&tag, fds) {
            Ok(()) => true,
            Err(why) => {
                tracing::debug!(cluster = %tag.listener, reason = why, "handed-over idle upstream connection refused");
                false
            }
        }
    }

    fn try_adopt_upstream(&self, tag: &ConnTag, fds: Vec<OwnedFd>) -> Result<(), &'static str> {
        let Some(cluster) = self.clusters.iter().find(|c| c.name == tag.listener) else {
            return Err("no cluster of that name here");
        };
        let [fd]: [OwnedFd; 1] = fds.try_into().map_err(|_| "not one fd")?;
        if !is_connected_tcp(&fd) {
            return Err("not a connected TCP socket");
        }
        let text = |i: usize| tag.buffers.get(i).and_then(|b| std::str::from_utf8(b).ok());
        let addr: SocketAddr = text(0).and_then(|t| t.parse().ok()).ok_or("no endpoint address")?;
        let idle_for = text(1)
            .and_then(|t| t.parse().ok())
            .map(Duration::from_millis)
            .ok_or("no idle time")?;
        let stream = fd_stream(fd).map_err(|_| "unusable socket")?;
        cluster.adopt_idle_stream(addr, stream, idle_for)
    }
}
