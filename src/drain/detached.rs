//! A live connection taken out of the runtime at a quiescent point, with what it had read and not processed:
//! what a migration hands to the successor, and what comes back when the successor does not take it.

use std::os::fd::OwnedFd;
use std::sync::Arc;

/// What a migrated connection is, as tagged on the wire (`ConnTag::kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// An HTTP/1 client connection between two exchanges: one fd, one buffer (bytes read but not parsed).
    Http1,
    /// A TCP relay: fds client then upstream; buffers to-upstream then to-client.
    Tcp,
    /// An HTTP connection upgraded by a `101` (WebSocket, ...): a byte relay like [`ConnKind::Tcp`], adopted by an
    /// HTTP listener.
    Tunnel,
    /// An HTTP/1 connection in the middle of an exchange (a request or response body, or waiting for the response
    /// head): fds client then upstream; buffers: the exchange's state, then its unprocessed bytes (the HTTP engine
    /// gives them their meaning).
    Exchange,
    /// An idle upstream connection of the HTTP/1 engine's pool, so that the successor starts with a warm pool: one
    /// fd; [`Detached::listener`] holds the cluster's name (it comes from no listener); buffers: the endpoint's
    /// address (`ip:port`), then how long it has been idle, in milliseconds (decimal). A successor that does not
    /// know this kind refuses it, and the old instance closes it.
    Upstream,
}

impl ConnKind {
    /// The wire tag.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnKind::Http1 => "http1",
            ConnKind::Tcp => "tcp",
            ConnKind::Tunnel => "tunnel",
            ConnKind::Exchange => "http1-exchange",
            ConnKind::Upstream => "upstream",
        }
    }

    /// The kind of a wire tag.
    pub fn parse(tag: &str) -> Option<ConnKind> {
        match tag {
            "http1" => Some(ConnKind::Http1),
            "tcp" => Some(ConnKind::Tcp),
            "tunnel" => Some(ConnKind::Tunnel),
            "http1-exchange" => Some(ConnKind::Exchange),
            "upstream" => Some(ConnKind::Upstream),
            _ => None,
        }
    }
}

/// A connection detached from the runtime: its sockets and its unprocessed bytes.
#[derive(Debug)]
pub struct Detached {
    /// What it is.
    pub kind: ConnKind,
    /// The name of the listener that accepted it ([`ConnKind::Upstream`]: the name of its cluster).
    pub listener: Arc<str>,
    /// Its sockets (see [`ConnKind`] for their order).
    pub fds: Vec<OwnedFd>,
    /// Its unprocessed bytes (see [`ConnKind`] for their order).
    pub buffers: Vec<Vec<u8>>,
}

/// A tokio TCP stream as an fd for a migration (deregistered from the runtime).
pub fn stream_fd(stream: tokio::net::TcpStream) -> std::io::Result<OwnedFd> {
    Ok(OwnedFd::from(stream.into_std()?))
}

/// A received (or returned) fd as a tokio TCP stream, in non-blocking mode.
pub fn fd_stream(fd: OwnedFd) -> std::io::Result<tokio::net::TcpStream> {
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std)
}

/// Whether a received fd is what a handed-over connection must be: a connected TCP socket (not a listener, a
/// pipe, a Unix or UDP socket). Anything else is refused, never served. Two system calls (a migration runs it on
/// every connection): the socket type, and the peer address, which only a connected socket has and whose family
/// says IPv4 or IPv6.
pub fn is_connected_tcp(fd: &OwnedFd) -> bool {
    let sock = socket2::SockRef::from(fd);
    matches!(sock.r#type(), Ok(t) if t == socket2::Type::STREAM)
        && matches!(sock.peer_addr(), Ok(a) if a.is_ipv4() || a.is_ipv6())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connected_tcp_sockets_are_adopted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (served, _) = listener.accept().expect("accept");
        assert!(is_connected_tcp(&OwnedFd::from(client)));
        assert!(is_connected_tcp(&OwnedFd::from(served)));
        assert!(!is_connected_tcp(&OwnedFd::from(listener)), "a listener");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        assert!(!is_connected_tcp(&OwnedFd::from(udp)), "a UDP socket");
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(!is_connected_tcp(&OwnedFd::from(a)), "a Unix socket");
        let (r, _w) = nix::unistd::pipe().expect("pipe");
        assert!(!is_connected_tcp(&r), "a pipe");
        let unconnected = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        assert!(
            !is_connected_tcp(&OwnedFd::from(unconnected)),
            "a TCP socket never connected"
        );
    }

    #[test]
    fn kinds_round_trip_their_wire_tags() {
        for k in [
            ConnKind::Http1,
            ConnKind::Tcp,
            ConnKind::Tunnel,
            ConnKind::Exchange,
            ConnKind::Upstream,
        ] {
            assert_eq!(ConnKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ConnKind::parse("h2"), None);
    }
}
