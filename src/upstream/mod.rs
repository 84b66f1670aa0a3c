//! Upstream clusters: round-robin endpoint choice, keep-alive HTTP/1.1 connection pools per endpoint, and TCP
//! connects, each under the cluster's timeouts.
//!
//! Nothing here knows which client protocol a request came in: the proxy hands this layer a request (or asks for
//! a stream) and gets an upstream answer or an error back.

pub mod body;
pub mod pool;
pub mod raw;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use tokio::net::TcpStream;

use crate::config::ClusterConfig;

/// Most idle connections kept per endpoint, in each pool ([`pool::IdleClients`] and [`raw::IdleStreams`]).
pub const MAX_IDLE: usize = 256;

/// One upstream endpoint.
pub struct Endpoint {
    /// Its address.
    pub addr: SocketAddr,
    /// `ip:port`, ready to be a `Host` value (built once).
    pub authority: Authority,
    /// Its idle keep-alive HTTP connections of hyper's client (requests hyper serves).
    pub idle: Arc<pool::IdleClients>,
    /// Its idle keep-alive HTTP connections of the HTTP/1 engine.
    pub raw: raw::IdleStreams,
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
                        raw: raw::IdleStreams::default(),
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
