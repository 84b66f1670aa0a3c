//! What the client gets when no upstream response head arrives: the same status and one-line body on every
//! HTTP path, counted and logged in one place.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::telemetry::metrics::ListenerMetrics;
use crate::upstream::Cluster;

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
