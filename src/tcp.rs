//! The TCP listener: a bidirectional byte relay to the cluster (splice(2), see [`crate::relay`]).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::metrics::ListenerMetrics;
use crate::relay;
use crate::upstream::Cluster;

/// Relays one accepted connection until either side closes, or the hard stop drops it. The drain does not
/// interrupt a stream: it runs until it ends or the drain deadline passes.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    cluster: Arc<Cluster>,
    metrics: Arc<ListenerMetrics>,
    hard_stop: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let relay = async {
        let (endpoint, upstream) = match cluster.connect().await {
            Ok(c) => c,
            Err(e) => {
                metrics.upstream_connect_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cluster = %cluster.name, %peer, error = %e, "tcp upstream connect failed; closing client");
                return;
            }
        };
        // A relayed stream counts as one "2xx request".
        metrics.requests[1].fetch_add(1, Ordering::Relaxed);
        let up = |n| {
            metrics.bytes_in.fetch_add(n, Ordering::Relaxed);
        };
        let down = |n| {
            metrics.bytes_out.fetch_add(n, Ordering::Relaxed);
        };
        if let Err(e) = relay::relay(&client, &upstream, up, down).await {
            tracing::debug!(cluster = %cluster.name, %peer, %endpoint, error = %e, "tcp relay ended with an error");
        }
    };
    tokio::select! {
        _ = relay => {},
        _ = hard_stop.cancelled() => {},
    }
}
