//! The listening sockets an instance serves: bound here, or adopted from the predecessor. After this module the
//! proxy never asks which.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;

use baton_migrate::{Inherited, ListenerTag, Ready};
use socket2::{Domain, Socket, Type};

use crate::config::{Config, Protocol};
use crate::telemetry::state::ListenerInfo;

/// Accept queue length requested at listen(2); the kernel caps it at net.core.somaxconn.
const BACKLOG: i32 = 4096;
/// Tag kind and name of the admin listener in a handoff.
pub const ADMIN: &str = "admin";

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A proxy listener for the cluster at this index.
    Proxy(Protocol, usize),
    /// The admin endpoint.
    Admin,
}

impl Kind {
    /// The kind tag sent in a handoff and shown in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Proxy(p, _) => p.as_str(),
            Kind::Admin => ADMIN,
        }
    }
}

/// Whether this process bound the socket or received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Bound by this process.
    Bound,
    /// Received from the predecessor.
    Inherited,
}

/// A listening socket ready to accept (non-blocking, close-on-exec).
#[derive(Debug)]
pub struct Listener {
    /// Config name (`admin` for the admin listener).
    pub name: String,
    /// What it serves.
    pub kind: Kind,
    /// Local address.
    pub address: SocketAddr,
    /// Bound or inherited.
    pub origin: Origin,
    /// The socket.
    pub socket: TcpListener,
}

impl Listener {
    /// Its tag in a handoff.
    pub fn tag(&self) -> ListenerTag {
        ListenerTag {
            name: self.name.clone(),
            address: self.address.to_string(),
            kind: self.kind.as_str().to_string(),
        }
    }

    /// Its entry in `/status`.
    pub fn info(&self) -> ListenerInfo {
        ListenerInfo {
            name: self.name.clone(),
            address: self.address.to_string(),
            protocol: self.kind.as_str().to_string(),
            origin: match self.origin {
                Origin::Bound => "bound",
                Origin::Inherited => "inherited",
            },
        }
    }
}

/// A listener the configuration asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// Config name.
    pub name: String,
    /// What it serves.
    pub kind: Kind,
    /// Where.
    pub address: SocketAddr,
}

/// Every listener of `config`, the admin one last.
pub fn wanted(config: &Config) -> Vec<Wanted> {
    let mut out: Vec<Wanted> = config
        .listeners
        .iter()
        .map(|l| Wanted {
            name: l.name.clone(),
            kind: Kind::Proxy(l.protocol, l.cluster),
            address: l.address,
        })
        .collect();
    if let Some(admin) = &config.admin {
        out.push(Wanted {
            name: ADMIN.into(),
            kind: Kind::Admin,
            address: admin.address,
        });
    }
    out
}

/// Binds a fresh listening socket (SO_REUSEADDR, so TIME_WAIT leftovers of a predecessor do not block it).
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Why a listener cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Binding a fresh socket failed.
    #[error("listener {name} cannot bind {address}: {source}")]
    Bind {
        /// The listener's name.
        name: String,
        /// Its address.
        address: SocketAddr,
        /// What bind(2) or listen(2) said.
        #[source]
        source: io::Error,
    },
    /// A listener the predecessor did not hand over could not be bound (the predecessor may still hold it).
    #[error("listener {name} ({address}) was not handed over and cannot be bound: {source}")]
    NotHandedOver {
        /// The listener's name.
        name: String,
        /// Its address.
        address: SocketAddr,
        /// What bind(2) or listen(2) said.
        #[source]
        source: io::Error,
    },
    /// A received socket could not be put in non-blocking mode.
    #[error("listener {name}: cannot set O_NONBLOCK on the received socket: {source}")]
    Nonblocking {
        /// The listener's name.
        name: String,
        /// What fcntl(2) said.
        #[source]
        source: io::Error,
    },
}

/// Binds every wanted listener; the first failure names the listener.
pub fn bind_all(wanted: &[Wanted]) -> Result<Vec<Listener>, ListenerError> {
    wanted
        .iter()
        .map(|w| {
            let socket = bind(w.address).map_err(|source| ListenerError::Bind {
                name: w.name.clone(),
                address: w.address,
                source,
            })?;
            Ok(Listener {
                name: w.name.clone(),
                kind: w.kind,
                address: w.address,
                origin: Origin::Bound,
                socket,
            })
        })
        .collect()
}

/// The result of matching received sockets against the configuration.
#[derive(Debug)]
pub struct Adoption {
    /// Every wanted listener, adopted or bound.
    pub listeners: Vec<Listener>,
    /// The READY report for the predecessor.
    pub ready: Ready,
    /// Valid listening sockets the configuration does not want: closed once the handoff is committed.
    pub unclaimed: Vec<OwnedFd>,
}

/// Adopts each received socket whose actual local address is one the configuration wants (the name may have
/// changed), binds wanted listeners nobody handed over, and keeps valid sockets nobody wants for closing after
/// the commit. Sockets that fail validation are logged and closed at once. Never binds an address it was handed.
pub fn adopt(wanted: &[Wanted], inherited: Vec<Inherited>) -> Result<Adoption, ListenerError> {
    let mut pool: Vec<(ListenerTag, OwnedFd, SocketAddr)> = Vec::new();
    for i in inherited {
        match i.check {
            Ok(addr) => pool.push((i.tag, i.fd, addr)),
            Err(why) => tracing::warn!(
                listener = %i.tag.name, address = %i.tag.address, reason = %why,
                "rejected a received fd that is not a usable listening socket; closed"
            ),
        }
    }
    let mut listeners = Vec::new();
    let mut ready = Ready::default();
    for w in wanted {
        if let Some(pos) = pool.iter().position(|(_, _, addr)| *addr == w.address) {
            let (tag, fd, _) = pool.swap_remove(pos);
            if tag.name != w.name {
                tracing::info!(from = %tag.name, to = %w.name, address = %w.address, "adopted a renamed listener");
            }
            let socket = TcpListener::from(fd);
            socket
                .set_nonblocking(true)
                .map_err(|source| ListenerError::Nonblocking {
                    name: w.name.clone(),
                    source,
                })?;
            ready.adopted.push(w.name.clone());
            listeners.push(Listener {
                name: w.name.clone(),
                kind: w.kind,
                address: w.address,
                origin: Origin::Inherited,
                socket,
            });
        } else {
            let socket = bind(w.address).map_err(|source| ListenerError::NotHandedOver {
                name: w.name.clone(),
                address: w.address,
                source,
            })?;
            ready.bound.push(w.name.clone());
            listeners.push(Listener {
                name: w.name.clone(),
                kind: w.kind,
                address: w.address,
                origin: Origin::Bound,
                socket,
            });
        }
    }
    let unclaimed = pool
        .into_iter()
        .map(|(tag, fd, _)| {
            ready.unclaimed.push(tag.name);
            fd
        })
        .collect();
    Ok(Adoption {
        listeners,
        ready,
        unclaimed,
    })
}
