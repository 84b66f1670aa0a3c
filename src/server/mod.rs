//! Accept loops and the drain. `Server::start` takes ready listeners (bound or inherited, it does not know
//! which) and serves them until told to stop accepting; `Server::drain` then waits for in-flight work.

pub mod listeners;

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use baton_migrate::{ArrivedConn, ListenerTag, Migration, Offered};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Protocol;
use crate::drain::latch::Signal;
use crate::migration::{fd_stream, is_connected_tcp, Handover, KIND_HTTP1, KIND_TCP};
use crate::proxy::http::HttpProxy;
use crate::proxy::{http, tcp};
use crate::server::listeners::{Kind, Listener};
use crate::telemetry::admin;
use crate::telemetry::metrics::ListenerMetrics;
use crate::telemetry::state::{ConnectionGuard, State};
use crate::upstream::Cluster;

/// A running set of listeners.
pub struct Server {
    listeners: Vec<(ListenerTag, Arc<TcpListener>)>,
    /// What each proxy listener's connections need, by listener name: for connections handed over by the
    /// predecessor.
    conn_envs: Arc<HashMap<String, ConnEnv>>,
    stop_accepting: CancellationToken,
    drain: CancellationToken,
    closing: Arc<AtomicBool>,
    hard_stop: Arc<Signal>,
    handover: Arc<Handover>,
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

/// A proxy listener's connection environment.
#[derive(Clone)]
enum ConnEnv {
    Http(http::ConnEnv),
    Tcp(tcp::RelayEnv),
}

impl ConnEnv {
    fn metrics(&self) -> &Arc<ListenerMetrics> {
        match self {
            ConnEnv::Http(e) => &e.proxy.metrics,
            ConnEnv::Tcp(e) => &e.metrics,
        }
    }
}

impl Server {
    /// Starts accepting on every listener.
    pub fn start(listeners: Vec<Listener>, clusters: &[Arc<Cluster>], state: Arc<State>) -> io::Result<Server> {
        let mut server = Server {
            listeners: Vec::new(),
            conn_envs: Arc::new(HashMap::new()),
            stop_accepting: CancellationToken::new(),
            drain: CancellationToken::new(),
            closing: Arc::new(AtomicBool::new(false)),
            hard_stop: Arc::default(),
            handover: Arc::new(Handover::default()),
            tracker: TaskTracker::new(),
            accept_tasks: Vec::new(),
            state,
        };
        let infos = listeners.iter().map(Listener::info).collect();
        let mut conn_envs = HashMap::new();
        for l in listeners {
            let tag = l.tag();
            let socket = Arc::new(TcpListener::from_std(l.socket)?);
            let env = match l.kind {
                Kind::Proxy(protocol, cluster) => {
                    let metrics = Arc::new(ListenerMetrics::new(&l.name, protocol.as_str()));
                    server.state.register(metrics.clone());
                    let listener: Arc<str> = Arc::from(l.name.as_str());
                    let env = match protocol {
                        Protocol::Http => ConnEnv::Http(http::ConnEnv {
                            listener,
                            proxy: Arc::new(HttpProxy {
                                cluster: clusters[cluster].clone(),
                                metrics,
                            }),
                            drain: server.drain.clone(),
                            closing: server.closing.clone(),
                            hard_stop: server.hard_stop.clone(),
                            handover: server.handover.clone(),
                        }),
                        Protocol::Tcp => ConnEnv::Tcp(tcp::RelayEnv {
                            listener,
                            cluster: clusters[cluster].clone(),
                            metrics,
                            hard_stop: server.hard_stop.clone(),
                            handover: server.handover.clone(),
                        }),
                    };
                    conn_envs.insert(l.name.clone(), env.clone());
                    Some(env)
                }
                Kind::Admin => None,
            };
            let task = tokio::spawn(accept_loop(
                socket.clone(),
                env,
                server.state.clone(),
                server.stop_accepting.clone(),
                server.drain.clone(),
                server.tracker.clone(),
            ));
            server.accept_tasks.push(task);
            server.listeners.push((tag, socket));
        }
        server.conn_envs = Arc::new(conn_envs);
        server.state.set_listeners(infos);
        Ok(server)
    }

    /// A handle that serves connections handed over by the predecessor, usable while this server runs.
    pub fn adopter(&self) -> Adopter {
        Adopter {
            conn_envs: self.conn_envs.clone(),
            tracker: self.tracker.clone(),
        }
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
}

/// Serves connections handed over by the predecessor (see [`Server::adopter`]).
pub struct Adopter {
    conn_envs: Arc<HashMap<String, ConnEnv>>,
    tracker: TaskTracker,
}

impl Adopter {
    /// Serves a connection the predecessor handed over. False (the fds closed) when this instance cannot: no
    /// proxy listener of that name and protocol here, or a malformed parcel; the predecessor then serves it on.
    pub fn adopt(&self, conn: ArrivedConn) -> bool {
        let ArrivedConn { tag, fds } = conn;
        let Some(env) = self.conn_envs.get(&tag.listener) else {
            tracing::debug!(listener = %tag.listener, "handed-over connection for a listener this config lacks; refused");
            return false;
        };
        if let Some(bad) = fds.iter().position(|fd| !is_connected_tcp(fd)) {
            tracing::warn!(listener = %tag.listener, kind = %tag.kind, fd = bad, "handed-over fd is not a connected TCP socket; refused");
            return false;
        }
        let mut fds = fds.into_iter();
        let mut buffers = tag.buffers.into_iter();
        match (env, tag.kind.as_str()) {
            (ConnEnv::Http(env), KIND_HTTP1) if fds.len() == 1 => {
                let Some(Ok(stream)) = fds.next().map(fd_stream) else {
                    return false;
                };
                let buffered = buffers.next().unwrap_or_default();
                let guard = ConnectionGuard::adopted(&env.proxy.metrics);
                let env = env.clone();
                self.tracker.spawn(async move {
                    http::serve_adopted(stream, buffered, env).await;
                    drop(guard);
                });
                true
            }
            (ConnEnv::Tcp(env), KIND_TCP) if fds.len() == 2 => {
                let (Some(c), Some(u)) = (fds.next(), fds.next()) else {
                    return false;
                };
                let (Ok(client), Ok(upstream)) = (fd_stream(c), fd_stream(u)) else {
                    return false;
                };
                let pending = (buffers.next().unwrap_or_default(), buffers.next().unwrap_or_default());
                let guard = ConnectionGuard::adopted(&env.metrics);
                let env = env.clone();
                self.tracker.spawn(async move {
                    tcp::serve_adopted(client, upstream, pending, env).await;
                    drop(guard);
                });
                true
            }
            (env, kind) => {
                tracing::debug!(listener = %tag.listener, kind, protocol = env.metrics().protocol, "handed-over connection of another kind than the listener here; refused");
                false
            }
        }
    }
}

impl Server {
    /// Stops accepting and closes this process's copies of the listening sockets. Never `shutdown()`: after a
    /// handoff the successor holds the same sockets, so their accept queues live on.
    pub async fn stop_accepting(&mut self) {
        self.stop_accepting.cancel();
        for task in self.accept_tasks.drain(..) {
            let _ = task.await;
        }
        self.listeners.clear();
    }

    /// Finishes in-flight work. Without a migration: HTTP/2 connections get GOAWAY, HTTP/1 connections close
    /// after their next response (`Connection: close`), TCP streams run to their end. With one: HTTP/1
    /// connections and TCP streams are handed to the successor at their next quiescent point (what it refuses
    /// takes the path above), HTTP/2 connections get GOAWAY. At `timeout` what is left is closed.
    pub async fn drain(mut self, timeout: Duration, migration: Option<Migration>) -> DrainReport {
        let start = Instant::now();
        self.stop_accepting().await;
        let hub = match migration {
            Some(migration) => self.handover.start(migration, self.tracker.clone(), self.state.clone()),
            None => {
                self.closing.store(true, Ordering::Relaxed);
                self.drain.cancel();
                None
            }
        };
        self.tracker.close();
        let closed_at_deadline = match tokio::time::timeout(timeout, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.state.active_connections();
                self.hard_stop.fire();
                let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
                left
            }
        };
        if let Some(hub) = hub {
            // Tells the successor the migration is over, with the final counters.
            let _ = tokio::time::timeout(Duration::from_secs(2), hub).await;
        }
        DrainReport {
            elapsed: start.elapsed(),
            closed_at_deadline,
        }
    }
}

async fn accept_loop(
    socket: Arc<TcpListener>,
    env: Option<ConnEnv>,
    state: Arc<State>,
    stop: CancellationToken,
    drain: CancellationToken,
    tracker: TaskTracker,
) {
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
        match &env {
            Some(ConnEnv::Http(env)) => {
                let guard = ConnectionGuard::new(&env.proxy.metrics);
                let env = env.clone();
                tracker.spawn(async move {
                    http::serve(stream, peer, env).await;
                    drop(guard);
                });
            }
            Some(ConnEnv::Tcp(env)) => {
                let guard = ConnectionGuard::new(&env.metrics);
                let env = env.clone();
                tracker.spawn(async move {
                    tcp::serve(stream, peer, env).await;
                    drop(guard);
                });
            }
            None => {
                tokio::spawn(admin::serve(stream, state.clone(), drain.clone()));
            }
        }
    }
}
