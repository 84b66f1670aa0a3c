//! The new instance's side of a migration: serving the connections the predecessor hands over.

use std::collections::HashMap;
use std::sync::Arc;

use baton_migrate::ReceivedConn;

use crate::drain::detached::is_connected_tcp;
use crate::drain::ConnKind;
use crate::proxy::ListenerProxy;

/// Serves connections handed over by the predecessor (see [`super::Server::adopter`]).
pub struct Adopter {
    proxies: Arc<HashMap<String, ListenerProxy>>,
}

impl Adopter {
    pub(super) fn new(proxies: Arc<HashMap<String, ListenerProxy>>) -> Adopter {
        Adopter { proxies }
    }

    /// Serves a connection the predecessor handed over. False (the fds closed) when this instance cannot: no
    /// proxy listener of that name and protocol here, or a malformed connection; the predecessor then serves it
    /// on.
    pub fn adopt(&self, conn: ReceivedConn) -> bool {
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
}
