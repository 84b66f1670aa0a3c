//! Upstream clusters: round-robin endpoint choice, a pooled keep-alive HTTP client, and TCP connects, each
//! under the cluster's timeouts.

use std::net::SocketAddr;

use http::uri::Authority;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;

use crate::config::ClusterConfig;

/// A cluster at run time.
pub struct Cluster {
    /// Config name.
    pub name: String,
    endpoints: Vec<SocketAddr>,
    /// `ip:port` of each endpoint, ready for request URIs (built once, cloned cheaply per request).
    authorities: Vec<Authority>,
    next: AtomicUsize,
    /// Time to connect to an endpoint.
    pub connect_timeout: Duration,
    /// HTTP: time to the upstream's response headers.
    pub request_timeout: Duration,
    /// Pooled HTTP/1.1 client (keep-alive to every endpoint).
    pub http: Client<HttpConnector, Incoming>,
}

impl Cluster {
    /// Builds the cluster's client and state.
    pub fn new(config: &ClusterConfig) -> Cluster {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.enforce_http(true);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Cluster {
            name: config.name.clone(),
            endpoints: config.endpoints.clone(),
            authorities: config
                .endpoints
                .iter()
                .filter_map(|e| Authority::try_from(e.to_string()).ok())
                .collect(),
            next: AtomicUsize::new(0),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            http,
        }
    }

    /// The next endpoint, round robin.
    pub fn pick(&self) -> SocketAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        // Validation guarantees at least one endpoint.
        self.endpoints[i % self.endpoints.len()]
    }

    /// The next endpoint, round robin, as an URI authority.
    pub fn pick_authority(&self) -> Authority {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        // Every `SocketAddr` formats as a valid authority, so there is one per endpoint.
        self.authorities[i % self.authorities.len()].clone()
    }

    /// Opens a TCP connection to the next endpoint under the connect timeout.
    pub async fn connect(&self) -> std::io::Result<(SocketAddr, TcpStream)> {
        let addr = self.pick();
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok((addr, s))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {:?}", self.connect_timeout),
            )),
        }
    }
}
