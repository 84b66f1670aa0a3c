//! The TCP listener: a bidirectional byte relay to the cluster (splice(2), see [`splice`]).
//!
//! At a migration a stream leaves when neither direction has bytes inside this process; bytes read but not yet
//! written travel with both fds. The same relay carries an HTTP listener's upgraded connections (WebSocket and
//! other `101` tunnels, [`serve_tunnel`]), which migrate the same way, and which end when no byte moved either way
//! for the cluster's `stream_idle_timeout` (a TCP listener's streams have no such limit).

pub mod splice;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::drain::detached::{fd_stream, stream_fd};
use crate::drain::{ConnKind, Detached, Latch};
use crate::proxy::warn::Cause;
use crate::proxy::{IdleAt, ListenerCtx};
use crate::upstream::body::Activity;
use splice::RelayEnd;

/// Relays one accepted connection until either side closes, a migration takes it, or the drain deadline drops it. A
/// plain drain does not interrupt a stream: it runs until it ends or the drain deadline passes.
pub async fn serve(client: TcpStream, peer: SocketAddr, ctx: Arc<ListenerCtx>) {
    let _ = client.set_nodelay(true);
    let connected = tokio::select! {
        c = ctx.cluster.connect() => c,
        _ = ctx.drain.deadline() => return,
    };
    let upstream = match connected {
        Ok((_, upstream)) => upstream,
        Err(e) => {
            ctx.metrics.upstream_connect_errors.fetch_add(1, Ordering::Relaxed);
            if let Some(more) = ctx.warnings.due(Cause::Connect) {
                tracing::warn!(listener = %ctx.listener, cluster = %ctx.cluster.name, %peer, error = %e, failed_since = more, "tcp upstream connect failed; closing the client");
            } else {
                tracing::debug!(cluster = %ctx.cluster.name, %peer, error = %e, "tcp upstream connect failed; closing client");
            }
            return;
        }
    };
    // A relayed stream counts as one "2xx request".
    ctx.metrics.requests[1].fetch_add(1, Ordering::Relaxed);
    run(client, upstream, (Vec::new(), Vec::new()), ctx, ConnKind::Tcp, true).await
}

/// Relays an HTTP connection upgraded by a `101` (a WebSocket, ...) until either side closes, a migration takes it
/// or the drain deadline drops it. `pending`: bytes read past the heads (to-upstream, to-client).
/// `may_migrate: false`: the successor refused this connection once already.
pub async fn serve_tunnel(
    client: TcpStream,
    upstream: TcpStream,
    pending: (Vec<u8>, Vec<u8>),
    ctx: Arc<ListenerCtx>,
    may_migrate: bool,
) {
    run(client, upstream, pending, ctx, ConnKind::Tunnel, may_migrate).await
}

/// Relays a stream (`ConnKind::Tcp`) or tunnel (`ConnKind::Tunnel`) handed over by the predecessor, first writing
/// the bytes it had read but not written.
pub async fn serve_adopted(
    client: TcpStream,
    upstream: TcpStream,
    pending: (Vec<u8>, Vec<u8>),
    ctx: Arc<ListenerCtx>,
    kind: ConnKind,
) {
    run(client, upstream, pending, ctx, kind, true).await
}

/// First wait before a relay that held too much to travel is offered again; doubled each time, up to
/// [`OFFER_AGAIN_MAX`].
const OFFER_AGAIN_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two offers of a relay that held too much to travel.
const OFFER_AGAIN_MAX: Duration = Duration::from_secs(16);

/// When a relay stops to depart.
#[derive(Clone, Copy)]
enum Stop {
    /// When the migration starts.
    Migration,
    /// Never: the successor refused it, or is gone.
    Never,
    /// After this long: it came back because it held too much to travel, and will hold less once the receivers
    /// read (each direction holds at most [`splice::MAX_HELD`] once it has written what it brought along).
    After(Duration),
}

async fn run(
    mut client: TcpStream,
    mut upstream: TcpStream,
    mut pending: (Vec<u8>, Vec<u8>),
    ctx: Arc<ListenerCtx>,
    kind: ConnKind,
    may_migrate: bool,
) {
    let never = Latch::default();
    let mut when = if may_migrate { Stop::Migration } else { Stop::Never };
    // Upgraded HTTP connections only: a TCP listener's streams (a database connection, ...) may be silent for long.
    let idle = match kind {
        ConnKind::Tunnel => ctx.cluster.stream_idle_timeout,
        _ => Duration::ZERO,
    };
    let moved = Activity::default();
    loop {
        let metrics = &ctx.metrics;
        let up = |n| {
            moved.touch();
            metrics.bytes_in.fetch_add(n, Ordering::Relaxed);
        };
        let down = |n| {
            moved.touch();
            metrics.bytes_out.fetch_add(n, Ordering::Relaxed);
        };
        let later = Latch::default();
        let stop = match when {
            Stop::Migration => ctx.drain.migration_latch(),
            Stop::Never => &never,
            Stop::After(_) => &later,
        };
        let timer = async {
            if let Stop::After(wait) = when {
                tokio::time::sleep(wait).await;
                later.fire();
            }
            std::future::pending::<()>().await
        };
        let ended = tokio::select! {
            r = splice::relay(&client, &upstream, up, down, pending, stop) => r,
            _ = timer => return,
            _ = ctx.drain.deadline() => return,
            _ = moved.idle_for(idle) => {
                ctx.stream_idled(upstream.peer_addr().ok(), IdleAt::Tunnel);
                return;
            }
        };
        let (to_upstream, to_client) = match ended {
            Ok(RelayEnd::Done(..)) => return,
            Ok(RelayEnd::Paused { to_upstream, to_client }) => (to_upstream, to_client),
            Err(e) => {
                tracing::debug!(cluster = %ctx.cluster.name, error = %e, "tcp relay ended with an error");
                return;
            }
        };
        let (Ok(c), Ok(u)) = (stream_fd(client), stream_fd(upstream)) else {
            tracing::debug!("cannot detach a relayed stream for migration; closing it");
            return;
        };
        let conn = Detached {
            kind,
            listener: ctx.listener.clone(),
            fds: vec![c, u],
            buffers: vec![to_upstream, to_client],
        };
        let Some(back) = ctx.drain.depart(conn).await else {
            return; // the successor relays it now
        };
        // Not taken: relay on here, until the stream ends or the drain deadline, or until it is offered again.
        when = match (back.offer_again, when) {
            (false, _) => Stop::Never,
            (true, Stop::After(wait)) => Stop::After((wait * 2).min(OFFER_AGAIN_MAX)),
            (true, _) => Stop::After(OFFER_AGAIN_FIRST),
        };
        let mut fds = back.conn.fds.into_iter();
        let mut buffers = back.conn.buffers.into_iter();
        let (Some(c), Some(u)) = (fds.next(), fds.next()) else {
            return;
        };
        let (Ok(c), Ok(u)) = (fd_stream(c), fd_stream(u)) else {
            return;
        };
        (client, upstream) = (c, u);
        pending = (buffers.next().unwrap_or_default(), buffers.next().unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpSocket};

    use super::*;
    use crate::config::{ClusterConfig, Protocol, UpstreamProtocol};
    use crate::drain::Drain;
    use crate::proxy::ListenerProxy;
    use crate::telemetry::metrics::ListenerMetrics;
    use crate::upstream::Cluster;

    /// A connected pair: (the far end, with a small receive buffer; the relay's end, with a small send buffer), so
    /// that what the relay writes without the far end reading stays with the relay.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let far = TcpSocket::new_v4().expect("socket");
        far.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        let far = far
            .connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (near, _) = listener.accept().await.expect("accept");
        socket2::SockRef::from(&near)
            .set_send_buffer_size(16 * 1024)
            .expect("SO_SNDBUF");
        (far, near)
    }

    /// Reads `far` to its end; the byte count.
    async fn read_all(mut far: TcpStream) -> usize {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        while let Ok(n @ 1..) = far.read(&mut buf).await {
            total += n;
        }
        total
    }

    /// A relay that comes back because it held too much for one frame is offered again later, and then, its
    /// receivers having read what it held, it fits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_too_large_to_travel_is_offered_again() {
        let drain = Arc::new(Drain::default());
        let cluster = Arc::new(Cluster::new(&ClusterConfig {
            name: "nowhere".into(),
            endpoints: vec![],
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            protocol: UpstreamProtocol::Http1,
            pool_idle_timeout: Duration::from_secs(50),
            stream_idle_timeout: Duration::from_secs(300),
        }));
        let metrics = Arc::new(ListenerMetrics::new("raw", "tcp"));
        let proxy = ListenerProxy::new("raw", Protocol::Tcp, cluster, metrics, drain.clone());
        let (client_far, client) = pair().await;
        let (upstream_far, upstream) = pair().await;
        // More than one frame carries, brought along from an earlier instance (as an older build could).
        let brought = vec![7u8; 700 * 1024];
        let mut departures = drain.begin_migration().expect("a first migration");
        let relay = tokio::spawn(serve_adopted(
            client,
            upstream,
            (brought.clone(), brought.clone()),
            proxy.ctx.clone(),
            ConnKind::Tcp,
        ));

        let first = tokio::time::timeout(Duration::from_secs(5), departures.recv())
            .await
            .expect("the relay departs once the flush grace is over")
            .expect("a departure");
        let held: Vec<usize> = first.conn().buffers.iter().map(Vec::len).collect();
        assert!(
            !baton_migrate::conn_fits(&held),
            "the relay should hold too much to travel: {held:?}"
        );
        first.returned(true); // what the hub does with ConnVerdict::TooLarge

        // Its receivers read again: what it held drains, and at the next offer it holds nothing.
        let readers = tokio::spawn(async { tokio::join!(read_all(client_far), read_all(upstream_far)) });
        let again = tokio::time::timeout(Duration::from_secs(10), departures.recv())
            .await
            .expect("the relay is offered again")
            .expect("a departure");
        let held: Vec<usize> = again.conn().buffers.iter().map(Vec::len).collect();
        assert!(baton_migrate::conn_fits(&held), "held at the second offer: {held:?}");
        again.returned(false); // refused: relayed here to its end, never offered again

        drop(departures);
        let (to_client, to_upstream) = tokio::time::timeout(Duration::from_secs(10), async {
            // Both far ends have read everything: close them, and the relay ends.
            tokio::time::sleep(Duration::from_millis(200)).await;
            relay.abort();
            readers.await.expect("readers")
        })
        .await
        .expect("the relay ends");
        assert_eq!((to_client, to_upstream), (brought.len(), brought.len()));
    }
}
