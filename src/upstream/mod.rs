//! Upstream clusters: round-robin endpoint choice, a keep-alive HTTP/1.1 connection pool per endpoint, and TCP
//! connects, each under the cluster's timeouts.

pub mod pool;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::telemetry::metrics::ListenerMetrics;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use tokio::net::TcpStream;

use crate::config::ClusterConfig;
use crate::proxy::http::engine::RawIdle;
use crate::upstream::pool::Idle;

/// One upstream endpoint.
pub struct Endpoint {
    /// Its address.
    pub addr: SocketAddr,
    /// `ip:port`, ready to be a `Host` value (built once).
    pub authority: Authority,
    /// Its idle keep-alive HTTP connections of hyper's client (requests hyper serves).
    pub idle: Arc<Idle>,
    /// Its idle keep-alive HTTP connections of the HTTP/1 engine.
    pub raw: RawIdle,
}

/// A cluster at run time.
pub struct Cluster {
    /// Config name.
    pub name: String,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    /// Time to connect to an endpoint.
    pub connect_timeout: Duration,
    /// HTTP: time to the upstream's response headers.
    pub request_timeout: Duration,
}

impl Cluster {
    /// Builds the cluster's state.
    pub fn new(config: &ClusterConfig) -> Cluster {
        Cluster {
            name: config.name.clone(),
            endpoints: config
                .endpoints
                .iter()
                .filter_map(|&addr| {
                    // Every `SocketAddr` formats as a valid authority.
                    let authority = Authority::try_from(addr.to_string()).ok()?;
                    Some(Endpoint {
                        addr,
                        authority,
                        idle: Arc::default(),
                        raw: RawIdle::default(),
                    })
                })
                .collect(),
            next: AtomicUsize::new(0),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
        }
    }

    /// The next endpoint, round robin.
    pub fn pick(&self) -> &Endpoint {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        // Validation guarantees at least one endpoint.
        &self.endpoints[i % self.endpoints.len()]
    }

    /// Opens a TCP connection to the next endpoint under the connect timeout.
    pub async fn connect(&self) -> std::io::Result<(SocketAddr, TcpStream)> {
        let addr = self.pick().addr;
        Ok((addr, connect(addr, self.connect_timeout).await?))
    }
}

/// Why no upstream response head arrived.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be opened.
    Connect(std::io::Error),
    /// The exchange failed after the request started: reset, closed early, or a malformed response.
    Exchange(std::borrow::Cow<'static, str>),
    /// No response head within the cluster's `request_timeout`.
    Timeout,
}

impl Failure {
    /// The status and the one-line body the client gets (the same on every HTTP path); counted in the
    /// listener's metrics and logged.
    pub fn answer(self, cluster: &Cluster, endpoint: SocketAddr, metrics: &ListenerMetrics) -> (u16, &'static str) {
        match self {
            Failure::Connect(e) => {
                metrics.upstream_connect_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint, error = %e, "upstream connect failed");
                (502, "baton: upstream connect failed\n")
            }
            Failure::Exchange(why) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint, error = %why, "upstream request failed");
                (502, "baton: upstream request failed\n")
            }
            Failure::Timeout => {
                metrics.upstream_timeouts.fetch_add(1, Ordering::Relaxed);
                (504, "baton: upstream timed out\n")
            }
        }
    }
}

/// Opens a TCP connection to `addr` within `timeout`, with TCP_NODELAY (proxied traffic is latency-bound).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out after {timeout:?}"),
        )),
    }
}
