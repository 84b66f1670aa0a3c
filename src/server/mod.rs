//! Accept loops and the drain. [`Server::start`] takes ready listeners (bound or inherited, it does not know
//! which, see [`listeners`]) and serves them until told to stop accepting; [`Server::finish`] then waits for the
//! connections in flight, up to the drain deadline. How they end (gracefully, or by migrating) is the caller's
//! choice, made on the server's [`Drain`] before it waits.

mod accept;
pub mod adopt;
pub mod listeners;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_migrate::{ListenerTag, Offered};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::drain::{Drain, Latch};
use crate::proxy::ListenerProxy;
use crate::telemetry::metrics::ListenerMetrics;
use crate::telemetry::state::State;
use crate::upstream::Cluster;
use adopt::Adopter;
use listeners::{Kind, Listener};

/// A running set of listeners.
pub struct Server {
    listeners: Vec<Served>,
    /// Each proxy listener's proxy, by listener name: for connections handed over by the predecessor.
    proxies: Arc<HashMap<String, ListenerProxy>>,
    /// Each proxy listener's local address and name: a handed-over connection belongs to the listener at its
    /// address.
    addresses: Arc<Vec<(SocketAddr, String)>>,
    /// The clusters the listeners send to: their idle upstream connections move at a migration too.
    upstreams: Upstreams,
    drain: Arc<Drain>,
    /// Fired when the accept loops may start accepting (see [`Server::start_held`]).
    accepting: Arc<Latch>,
    accept_tasks: Vec<JoinHandle<()>>,
    state: Arc<State>,
}

/// A listening socket being served, and what it is.
struct Served {
    tag: ListenerTag,
    kind: Kind,
    address: SocketAddr,
    origin: listeners::Origin,
    socket: Arc<TcpListener>,
}

/// The clusters a server's listeners send to, and which one each proxy listener uses.
#[derive(Clone)]
pub struct Upstreams {
    /// Every cluster of the config.
    pub clusters: Arc<[Arc<Cluster>]>,
    /// The index in `clusters` of each proxy listener's cluster, by listener name.
    pub by_listener: HashMap<String, usize>,
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
        let server = Server::start_held(listeners, clusters, state)?;
        server.start_accepting();
        Ok(server)
    }

    /// Sets up every listener and its accept loop, but accepts nothing until [`Server::start_accepting`].
    ///
    /// For a takeover: until the predecessor has committed, a connection this instance accepted would die with
    /// it should the handoff fail here (a crash, a refusal), while the predecessor, still accepting on the same
    /// sockets, would have served it. Held, the connections wait in the shared accept queue for whichever
    /// instance ends up serving.
    pub fn start_held(listeners: Vec<Listener>, clusters: &[Arc<Cluster>], state: Arc<State>) -> io::Result<Server> {
        let drain = Arc::new(Drain::default());
        let infos = listeners.iter().map(Listener::info).collect();
        let mut proxies = HashMap::new();
        let mut addresses = Vec::new();
        let mut server = Server {
            listeners: Vec::new(),
            proxies: Arc::default(),
            addresses: Arc::default(),
            upstreams: Upstreams {
                clusters: clusters.into(),
                by_listener: HashMap::new(),
            },
            drain,
            accepting: Arc::default(),
            accept_tasks: Vec::new(),
            state,
        };
        for l in listeners {
            let tag = l.tag();
            let (kind, address, origin) = (l.kind, l.address, l.origin);
            let socket = Arc::new(TcpListener::from_std(l.socket)?);
            let serves = match l.kind {
                Kind::Proxy(protocol, cluster) => {
                    let metrics = Arc::new(ListenerMetrics::new(&l.name, protocol.as_str()));
                    server.state.register(metrics.clone());
                    let proxy = ListenerProxy::new(
                        &l.name,
                        protocol,
                        clusters[cluster].clone(),
                        metrics,
                        server.drain.clone(),
                    );
                    proxies.insert(l.name.clone(), proxy.clone());
                    addresses.push((socket.local_addr().unwrap_or(l.address), l.name.clone()));
                    server.upstreams.by_listener.insert(l.name.clone(), cluster);
                    accept::Serves::Proxy(proxy)
                }
                Kind::Admin => accept::Serves::Admin(server.state.clone()),
            };
            let task = tokio::spawn(accept::accept_loop(
                socket.clone(),
                serves,
                server.drain.clone(),
                server.accepting.clone(),
            ));
            server.accept_tasks.push(task);
            server.listeners.push(Served {
                tag,
                kind,
                address,
                origin,
                socket,
            });
        }
        server.proxies = Arc::new(proxies);
        server.addresses = Arc::new(addresses);
        server.state.set_listeners(infos);
        Ok(server)
    }

    /// Lets the accept loops of a [`Server::start_held`] server accept (once; later calls do nothing).
    pub fn start_accepting(&self) {
        self.accepting.fire();
    }

    /// This server's shutdown state: the caller starts a graceful drain or a migration on it.
    pub fn drain(&self) -> &Arc<Drain> {
        &self.drain
    }

    /// A handle that serves connections handed over by the predecessor, usable while this server runs.
    pub fn adopter(&self) -> Adopter {
        Adopter::new(
            self.proxies.clone(),
            self.addresses.clone(),
            self.upstreams.clusters.clone(),
        )
    }

    /// The clusters the listeners send to, for a migration of their idle upstream connections.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// The listening sockets, for a handoff to a successor.
    pub fn offered(&self) -> Vec<Offered<'_>> {
        self.listeners
            .iter()
            .map(|l| Offered {
                tag: l.tag.clone(),
                fd: l.socket.as_fd(),
            })
            .collect()
    }

    /// Copies of the listening sockets named in `names` (a successor's adopted ones), for serving them again
    /// should the successor die: holding them also keeps their accept queues alive meanwhile. A socket that
    /// cannot be duplicated is left out, with a warning.
    pub fn keep(&self, names: &[String]) -> Vec<Listener> {
        self.listeners
            .iter()
            .filter(|l| names.contains(&l.tag.name))
            .filter_map(|l| match l.socket.as_fd().try_clone_to_owned() {
                Ok(fd) => Some(Listener {
                    name: l.tag.name.clone(),
                    kind: l.kind,
                    address: l.address,
                    origin: l.origin,
                    socket: std::net::TcpListener::from(fd),
                }),
                Err(e) => {
                    tracing::warn!(listener = %l.tag.name, error = %e, "cannot keep a copy of a listening socket");
                    None
                }
            })
            .collect()
    }

    /// Stops accepting and closes this process's copies of the listening sockets. Never `shutdown()`: after a
    /// handoff the successor holds the same sockets, so their accept queues live on.
    pub async fn stop_accepting(&mut self) {
        self.drain.stop_accepting();
        for task in self.accept_tasks.drain(..) {
            let _ = task.await;
        }
        self.listeners.clear();
    }

    /// Stops accepting (if not done yet) and waits for every connection to end, however the caller asked them to
    /// (see [`Drain`]). At `timeout` what is left is dropped.
    pub async fn finish(mut self, timeout: Duration) -> DrainReport {
        let start = Instant::now();
        self.stop_accepting().await;
        let closed_at_deadline = match tokio::time::timeout(timeout, self.drain.idle()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.state.active_connections();
                self.drain.pass_deadline();
                let _ = tokio::time::timeout(Duration::from_secs(1), self.drain.idle()).await;
                left
            }
        };
        DrainReport {
            elapsed: start.elapsed(),
            closed_at_deadline,
        }
    }
}
