//! One accept loop per listening socket.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::drain::{Drain, Latch};
use crate::proxy::ListenerProxy;
use crate::telemetry::admin;
use crate::telemetry::state::State;

/// What a listening socket serves.
pub(super) enum Serves {
    /// Proxy connections, tracked by the drain.
    Proxy(ListenerProxy),
    /// The admin endpoint: not proxy traffic, not waited for by the drain.
    Admin(Arc<State>),
}

/// Accepts from when `accepting` fires until the drain says stop.
pub(super) async fn accept_loop(socket: Arc<TcpListener>, serves: Serves, drain: Arc<Drain>, accepting: Arc<Latch>) {
    tokio::select! {
        biased;
        _ = drain.accepting_stopped() => return,
        _ = accepting.wait() => {}
    }
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.accepting_stopped() => return,
            a = socket.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE/ENFILE and friends: the connection stays queued; back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        match &serves {
            Serves::Proxy(proxy) => proxy.serve(stream, peer),
            Serves::Admin(state) => {
                tokio::spawn(admin::serve(stream, state.clone(), drain.clone()));
            }
        }
    }
}
