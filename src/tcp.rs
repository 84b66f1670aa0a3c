//! The TCP listener: a bidirectional byte relay to the cluster.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::state::State;
use crate::upstream::Cluster;

/// Relays one accepted connection until either side closes, or the hard stop drops it. The drain does not
/// interrupt a stream: it runs until it ends or the drain deadline passes.
pub async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    cluster: Arc<Cluster>,
    state: Arc<State>,
    hard_stop: CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let relay = async {
        let (endpoint, mut upstream) = match cluster.connect().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(cluster = %cluster.name, %peer, error = %e, "tcp upstream connect failed; closing client");
                return;
            }
        };
        state.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(cluster = %cluster.name, %peer, %endpoint, error = %e, "tcp relay ended with an error");
        }
    };
    tokio::select! {
        _ = relay => {},
        _ = hard_stop.cancelled() => {},
    }
}
