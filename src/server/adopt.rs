//! The new instance's side of a migration: serving the connections the predecessor hands over.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use baton_migrate::{ConnTag, ReceivedConn};

use crate::config::Protocol;
use crate::drain::detached::{fd_stream, is_connected_tcp};
use crate::drain::ConnKind;
use crate::proxy::ListenerProxy;
use crate::upstream::Cluster;

/// Serves connections handed over by the predecessor (see [`super::Server::adopter`]).
pub struct Adopter {
    proxies: Arc<HashMap<String, ListenerProxy>>,
    /// Each proxy listener's local address (as its socket says), with its name.
    addresses: Arc<Vec<(SocketAddr, String)>>,
    clusters: Arc<[Arc<Cluster>]>,
}

impl Adopter {
    pub(super) fn new(
        proxies: Arc<HashMap<String, ListenerProxy>>,
        addresses: Arc<Vec<(SocketAddr, String)>>,
        clusters: Arc<[Arc<Cluster>]>,
    ) -> Adopter {
        Adopter {
            proxies,
            addresses,
            clusters,
        }
    }

    /// Serves a connection the predecessor handed over. False (the fds closed) when this instance cannot: no
    /// proxy listener for it, a listener of another protocol there now, or a malformed connection; the
    /// predecessor then serves it on.
    ///
    /// A connection belongs to the listener this instance serves at the connection's local address, whatever its
    /// name: the listening socket was adopted by address too, so a listener renamed in the new config keeps its
    /// connections. Only when no listener here is at that address does the predecessor's listener name decide.
    pub fn adopt(&self, conn: ReceivedConn) -> bool {
        if conn.tag.kind == ConnKind::Upstream.as_str() {
            return self.adopt_upstream(conn);
        }
        let ReceivedConn { tag, fds } = conn;
        if let Some(bad) = fds.iter().position(|fd| !is_connected_tcp(fd)) {
            tracing::warn!(listener = %tag.listener, kind = %tag.kind, fd = bad, "handed-over fd is not a connected TCP socket; refused");
            return false;
        }
        let Some(kind) = ConnKind::parse(&tag.kind) else {
            tracing::debug!(listener = %tag.listener, kind = %tag.kind, "handed-over connection of an unknown kind; refused");
            return false;
        };
        let local = fds.first().and_then(local_addr);
        let name = match local.and_then(|a| listener_at(a, &self.addresses)) {
            Some(name) => name,
            // No listener here at the connection's address: the new config moved it (a new port or IP), or dropped
            // it. The name is then the only link left between the old listener and a new one; an established
            // connection does not care on which address its successor now accepts.
            None => tag.listener.as_str(),
        };
        let Some(proxy) = self.proxies.get(name) else {
            tracing::info!(listener = %tag.listener, address = ?local, "handed-over connection for a listener this config lacks (no listener at its address or of its name); refused");
            return false;
        };
        let was = came_from(kind);
        if was != proxy.protocol() {
            tracing::info!(
                listener = name,
                previous = %tag.listener,
                address = ?local,
                was = %was,
                now = %proxy.protocol(),
                "handed-over connection refused: the listener's protocol changed from {was} to {} at the same address; the predecessor serves it to its end",
                proxy.protocol()
            );
            return false;
        }
        match proxy.adopt(kind, fds, tag.buffers) {
            Ok(()) => true,
            Err(why) => {
                tracing::debug!(listener = name, kind = %tag.kind, protocol = proxy.metrics().protocol, reason = why, "handed-over connection refused");
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

/// The protocol of the listener a connection of this kind was accepted by.
fn came_from(kind: ConnKind) -> Protocol {
    match kind {
        ConnKind::Http1 | ConnKind::Tunnel | ConnKind::Exchange => Protocol::Http,
        ConnKind::Tcp => Protocol::Tcp,
        // Accepted by no listener: `adopt` gives it to `adopt_upstream` before asking.
        ConnKind::Upstream => Protocol::Http,
    }
}

/// The local address of a connected socket (its client side: the address the client connected to).
fn local_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    socket2::SockRef::from(fd).local_addr().ok()?.as_socket()
}

/// The name of the listener at `local` among `listeners`: one bound to that very address, else one bound to the
/// wildcard address of its family (0.0.0.0 or [::]) on the same port. An IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, a v4 client of a dual-stack socket) is the IPv4 address it maps, which a [::] listener
/// matches too.
fn listener_at(local: SocketAddr, listeners: &[(SocketAddr, String)]) -> Option<&str> {
    let ip = canonical(local.ip());
    let port = local.port();
    let exact = listeners
        .iter()
        .find(|(a, _)| a.port() == port && canonical(a.ip()) == ip);
    let wildcard = || {
        listeners.iter().find(|(a, _)| {
            a.port() == port
                && match a.ip() {
                    IpAddr::V4(w) => w.is_unspecified() && ip.is_ipv4(),
                    // A [::] socket takes IPv4 clients only as v4-mapped addresses (when not IPV6_V6ONLY).
                    IpAddr::V6(w) => w.is_unspecified() && local.is_ipv6(),
                }
        })
    };
    exact.or_else(wildcard).map(|(_, name)| name.as_str())
}

/// `ip`, with an IPv4-mapped IPv6 address as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &str)]) -> Vec<(SocketAddr, String)> {
        entries
            .iter()
            .map(|(a, n)| (a.parse().expect("address"), n.to_string()))
            .collect()
    }

    fn at<'a>(local: &str, listeners: &'a [(SocketAddr, String)]) -> Option<&'a str> {
        listener_at(local.parse().expect("address"), listeners)
    }

    #[test]
    fn a_connection_belongs_to_the_listener_at_its_local_address() {
        let l = table(&[("127.0.0.1:8080", "edge"), ("127.0.0.1:9090", "raw")]);
        assert_eq!(at("127.0.0.1:8080", &l), Some("edge"));
        assert_eq!(at("127.0.0.1:9090", &l), Some("raw"));
        assert_eq!(at("127.0.0.1:7070", &l), None, "no listener on that port");
        assert_eq!(at("127.0.0.2:8080", &l), None, "same port, another address");
    }

    #[test]
    fn wildcard_listeners_match_any_address_of_their_family() {
        let l = table(&[("0.0.0.0:8080", "v4"), ("[::]:9090", "v6")]);
        assert_eq!(at("10.1.2.3:8080", &l), Some("v4"));
        assert_eq!(
            at("[::1]:8080", &l),
            None,
            "an IPv6 connection is not one of a 0.0.0.0 listener"
        );
        assert_eq!(at("[fe80::1]:9090", &l), Some("v6"));
        assert_eq!(
            at("[::ffff:10.1.2.3]:9090", &l),
            Some("v6"),
            "a v4 client of a dual-stack [::] socket"
        );
        assert_eq!(
            at("10.1.2.3:9090", &l),
            None,
            "a plain IPv4 socket is not the [::] listener's"
        );
    }

    #[test]
    fn v4_mapped_addresses_are_their_ipv4_address() {
        let l = table(&[("127.0.0.1:8080", "edge")]);
        assert_eq!(at("[::ffff:127.0.0.1]:8080", &l), Some("edge"));
        let l = table(&[("0.0.0.0:8080", "any")]);
        assert_eq!(at("[::ffff:127.0.0.1]:8080", &l), Some("any"));
    }

    #[test]
    fn an_exact_address_wins_over_a_wildcard() {
        let l = table(&[("0.0.0.0:8080", "any"), ("127.0.0.1:8080", "local")]);
        assert_eq!(at("127.0.0.1:8080", &l), Some("local"));
        assert_eq!(at("10.0.0.1:8080", &l), Some("any"));
    }

    #[test]
    fn a_connection_of_another_protocol_is_known_by_its_kind() {
        assert_eq!(came_from(ConnKind::Http1), Protocol::Http);
        assert_eq!(came_from(ConnKind::Tunnel), Protocol::Http);
        assert_eq!(came_from(ConnKind::Tcp), Protocol::Tcp);
    }
}
