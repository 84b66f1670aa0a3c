//! The old instance's side: offers departing connections to the successor in batches, and with them the idle
//! upstream connections of the HTTP/1 engine's pools, so that the successor starts with a warm pool instead of
//! opening one upstream connection per client at the same instant.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use baton_migrate::{ConnSender, ConnVerdict, OutgoingConn, SendError};
use tokio::task::JoinHandle;

use crate::drain::detached::stream_fd;
use crate::drain::{ConnKind, Departure, Departures, Drain};
use crate::server::Upstreams;
use crate::telemetry::state::State;
use crate::upstream::Cluster;

/// Most connections offered in one batch.
const BATCH: usize = 1024;

/// Starts the migration on `drain`: every connection task heads for its quiescent point and departs, and a hub
/// task sends them over `session`, with the idle upstream connections of `upstreams`. The hub ends, sending this
/// instance's final counters, once every connection task has ended; it logs how long after `committed_at` (the
/// commit) the successor acknowledged the last connection it took. `None` if a migration had already started.
pub fn start(
    session: ConnSender,
    drain: &Arc<Drain>,
    upstreams: Upstreams,
    state: Arc<State>,
    committed_at: Instant,
) -> Option<JoinHandle<()>> {
    let departures = drain.begin_migration()?;
    Some(tokio::spawn(run_hub(
        session,
        departures,
        drain.clone(),
        upstreams,
        state,
        committed_at,
    )))
}

/// Sends departures in batches as they come; answers each one. Before each batch it hands over idle upstream
/// connections of the HTTP/1 engine's pools, one per HTTP/1 client connection of the batch (per cluster), and
/// once every connection task has ended, those still owed: a client connection gives its upstream connection back to the pool
/// before it departs, so the successor has one for each client before that client's next request, while the
/// requests the old instance still serves meanwhile find the others in its pool.
async fn run_hub(
    mut session: ConnSender,
    mut departures: Departures,
    drain: Arc<Drain>,
    upstreams: Upstreams,
    state: Arc<State>,
    committed_at: Instant,
) {
    // When the successor last acknowledged a connection it took (client or upstream).
    let mut last_taken: Option<Instant> = None;
    let mut batches = 0usize;
    // Per cluster: how many idle upstream connections the successor should get for the clients sent so far.
    let mut owed = vec![0usize; upstreams.clusters.len()];
    let mut broken = false;
    let (mut sent, mut taken) = (0usize, 0usize);
    let (mut upstream_sent, mut upstream_taken) = (0usize, 0usize);
    loop {
        let first = tokio::select! {
            biased;
            d = departures.recv() => d,
            _ = drain.idle() => None,
        };
        let last = first.is_none();
        let mut batch: Vec<Departure> = first.into_iter().collect();
        while !last && batch.len() < BATCH {
            match departures.try_recv() {
                Some(d) => batch.push(d),
                None => break,
            }
        }
        // The next connections leave while this batch travels.
        departures.next_wave();
        // Each client connection of the batch gave its upstream connection back before departing: it goes first,
        // so that the successor has it before the client's next request.
        for d in &batch {
            let c = d.conn();
            if c.kind == ConnKind::Http1 {
                if let Some(&i) = upstreams.by_listener.get(&*c.listener) {
                    owed[i] += 1;
                }
            }
        }
        // At the end, only what is still owed (clients whose upstream connection was busy when they left): the
        // rest of the pool is surplus for the successor, which already has one per client, and closes with this
        // instance. Sending it too would grow the successor's pool by what it opened meanwhile, at every upgrade.
        if !broken {
            match send_idle_upstreams(&mut session, &upstreams.clusters, &mut owed).await {
                Ok((offered, took)) => {
                    upstream_sent += offered;
                    upstream_taken += took;
                    if took > 0 {
                        last_taken = Some(Instant::now());
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "connection migration failed: serving the remaining connections here, closing them gracefully");
                    broken = true;
                }
            }
        }
        if last {
            break;
        }
        if broken {
            batch.into_iter().for_each(|d| d.returned(false));
            continue;
        }
        let result = send_batch(&mut session, &batch).await;
        sent += batch.len();
        batches += 1;
        // On a failure, what the successor acknowledged before it is its own all the same: only the rest is served
        // here.
        let verdicts = match result {
            Ok(verdicts) => verdicts,
            Err(SendError { error, verdicts }) => {
                tracing::warn!(error = %error, "connection migration failed: serving the remaining connections here, closing them gracefully");
                broken = true;
                verdicts
            }
        };
        if verdicts.iter().any(|v| v.taken()) {
            last_taken = Some(Instant::now());
        }
        for (d, verdict) in batch.into_iter().zip(verdicts) {
            if verdict.taken() {
                taken += 1;
                d.taken(); // our copies close; the successor has its own
                continue;
            }
            if broken {
                d.returned(false);
                continue;
            }
            // Too large to travel now: it holds less once it has written some out, so it is offered again.
            // Refused (the successor's config has no place for it) or unsendable fds: it would be the same next
            // time, so it is served here to its end.
            let again = verdict == ConnVerdict::TooLarge;
            let c = d.conn();
            tracing::warn!(
                listener = %c.listener,
                kind = c.kind.as_str(),
                buffered = c.buffers.iter().map(Vec::len).sum::<usize>(),
                reason = %verdict,
                offered_again = again,
                "a connection was not handed over; serving it here"
            );
            d.returned(again);
        }
    }
    let ms = |t: Instant| t.duration_since(committed_at).as_secs_f64() * 1e3;
    tracing::info!(
        offered = sent,
        taken,
        upstream_offered = upstream_sent,
        upstream_taken,
        batches,
        last_ack_ms = %last_taken
            .map(|t| format!("{:.1}", ms(t)))
            .unwrap_or_else(|| "none".into()),
        elapsed_ms = %format!("{:.1}", ms(Instant::now())),
        "connection migration over: nothing left to hand over"
    );
    if !broken {
        let last = serde_json::json!({ "counters": state.counters_snapshot() });
        if let Err(e) = session.end(last).await {
            tracing::debug!(error = %e, "could not tell the successor the migration ended");
        }
    }
}

/// Offers one batch: what became of each connection.
async fn send_batch(session: &mut ConnSender, batch: &[Departure]) -> Result<Vec<ConnVerdict>, SendError> {
    let outgoing: Vec<OutgoingConn<'_>> = batch
        .iter()
        .map(|d| {
            let c = d.conn();
            OutgoingConn {
                kind: c.kind.as_str().to_string(),
                listener: c.listener.to_string(),
                fds: c.fds.iter().map(|f| f.as_fd()).collect(),
                buffers: c.buffers.clone(),
            }
        })
        .collect();
    session.send(&outgoing).await
}

/// Offers idle upstream connections of the HTTP/1 engine's pools ([`ConnKind::Upstream`]), up to `owed[i]` of
/// `clusters[i]` (less what it offers): how many were offered and how many the successor took. Ours close either
/// way: taken, the successor has its own copy; refused (an older successor, or a cluster or endpoint it does not
/// have), nobody uses it.
async fn send_idle_upstreams(
    session: &mut ConnSender,
    clusters: &[Arc<Cluster>],
    owed: &mut [usize],
) -> Result<(usize, usize), baton_migrate::HandoffError> {
    let mut idle: Vec<(Arc<str>, OwnedFd, Vec<Vec<u8>>)> = Vec::new();
    for (cluster, owed) in clusters.iter().zip(owed.iter_mut()) {
        let name: Arc<str> = cluster.name.as_str().into();
        let streams = cluster.take_idle_streams(*owed);
        *owed -= streams.len();
        for (addr, stream, idle_for) in streams {
            // A stream tokio cannot deregister is closed here.
            if let Ok(fd) = stream_fd(stream) {
                let buffers = vec![
                    addr.to_string().into_bytes(),
                    idle_for.as_millis().to_string().into_bytes(),
                ];
                idle.push((name.clone(), fd, buffers));
            }
        }
    }
    if idle.is_empty() {
        return Ok((0, 0));
    }
    let outgoing: Vec<OutgoingConn<'_>> = idle
        .iter()
        .map(|(cluster, fd, buffers)| OutgoingConn {
            kind: ConnKind::Upstream.as_str().to_string(),
            listener: cluster.to_string(),
            fds: vec![fd.as_fd()],
            buffers: buffers.clone(),
        })
        .collect();
    let verdicts = session.send(&outgoing).await?;
    Ok((
        idle.len(),
        verdicts.iter().filter(|v| **v == ConnVerdict::Taken).count(),
    ))
}
