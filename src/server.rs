//! Accept loops and the drain. `Server::start` takes ready listeners (bound or inherited, it does not know
//! which) and serves them until told to stop accepting; `Server::drain` then waits for in-flight work.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_migrate::{ListenerTag, Offered};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Protocol;
use crate::http::HttpProxy;
use crate::listeners::{Kind, Listener};
use crate::metrics::ListenerMetrics;
use crate::state::{ConnectionGuard, State};
use crate::upstream::Cluster;
use crate::{admin, http, tcp};

/// A running set of listeners.
pub struct Server {
    listeners: Vec<(ListenerTag, Arc<TcpListener>)>,
    stop_accepting: CancellationToken,
    drain: CancellationToken,
    hard_stop: CancellationToken,
    tracker: TaskTracker,
    accept_tasks: Vec<JoinHandle<()>>,
    state: Arc<State>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy)]
pub struct DrainReport {
    /// Time from the start of the drain to its end.
    pub elapsed: Duration,
    /// Proxy connections still open at the deadline, closed by force (0 when the drain finished in time).
    pub closed_at_deadline: i64,
}

impl Server {
    /// Starts accepting on every listener.
    pub fn start(listeners: Vec<Listener>, clusters: &[Arc<Cluster>], state: Arc<State>) -> io::Result<Server> {
        let mut server = Server {
            listeners: Vec::new(),
            stop_accepting: CancellationToken::new(),
            drain: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            accept_tasks: Vec::new(),
            state,
        };
        let infos = listeners.iter().map(Listener::info).collect();
        for l in listeners {
            let tag = l.tag();
            let socket = Arc::new(TcpListener::from_std(l.socket)?);
            let task = tokio::spawn(accept_loop(
                socket.clone(),
                l.name.clone(),
                l.kind,
                clusters.to_vec(),
                server.state.clone(),
                server.stop_accepting.clone(),
                server.drain.clone(),
                server.hard_stop.clone(),
                server.tracker.clone(),
            ));
            server.accept_tasks.push(task);
            server.listeners.push((tag, socket));
        }
        server.state.set_listeners(infos);
        Ok(server)
    }

    /// The listening sockets, for a handoff to a successor.
    pub fn offered(&self) -> Vec<Offered<'_>> {
        self.listeners
            .iter()
            .map(|(tag, socket)| Offered {
                tag: tag.clone(),
                fd: socket.as_fd(),
            })
            .collect()
    }

    /// Stops accepting and closes this process's copies of the listening sockets. Never `shutdown()`: after a
    /// handoff the successor holds the same sockets, so their accept queues live on.
    pub async fn stop_accepting(&mut self) {
        self.stop_accepting.cancel();
        for task in self.accept_tasks.drain(..) {
            let _ = task.await;
        }
        self.listeners.clear();
    }

    /// Finishes in-flight work: HTTP/2 connections get GOAWAY, HTTP/1 connections close after their next
    /// response (`Connection: close`), TCP streams run to their end. At `timeout` what is left is closed.
    pub async fn drain(mut self, timeout: Duration) -> DrainReport {
        let start = Instant::now();
        self.stop_accepting().await;
        self.drain.cancel();
        self.tracker.close();
        let closed_at_deadline = match tokio::time::timeout(timeout, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.state.active_connections();
                self.hard_stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
                left
            }
        };
        DrainReport {
            elapsed: start.elapsed(),
            closed_at_deadline,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    socket: Arc<TcpListener>,
    name: String,
    kind: Kind,
    clusters: Vec<Arc<Cluster>>,
    state: Arc<State>,
    stop: CancellationToken,
    drain: CancellationToken,
    hard_stop: CancellationToken,
    tracker: TaskTracker,
) {
    let metrics = match kind {
        Kind::Proxy(protocol, _) => {
            let m = Arc::new(ListenerMetrics::new(&name, protocol.as_str()));
            state.register(m.clone());
            Some(m)
        }
        Kind::Admin => None,
    };
    let http_proxy = match (kind, &metrics) {
        (Kind::Proxy(Protocol::Http, cluster), Some(metrics)) => Some(Arc::new(HttpProxy {
            cluster: clusters[cluster].clone(),
            metrics: metrics.clone(),
        })),
        _ => None,
    };
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
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
        match (kind, &metrics, &http_proxy) {
            (Kind::Proxy(Protocol::Http, _), Some(metrics), Some(proxy)) => {
                let guard = ConnectionGuard::new(metrics);
                let (proxy, drain, hard_stop) = (proxy.clone(), drain.clone(), hard_stop.clone());
                tracker.spawn(async move {
                    http::serve(stream, peer, proxy, drain, hard_stop).await;
                    drop(guard);
                });
            }
            (Kind::Proxy(_, cluster), Some(metrics), _) => {
                let guard = ConnectionGuard::new(metrics);
                let (cluster, metrics, hard_stop) = (clusters[cluster].clone(), metrics.clone(), hard_stop.clone());
                tracker.spawn(async move {
                    tcp::serve(stream, peer, cluster, metrics, hard_stop).await;
                    drop(guard);
                });
            }
            _ => {
                tokio::spawn(admin::serve(stream, state.clone(), drain.clone()));
            }
        }
    }
}
