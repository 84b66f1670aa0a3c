//! The old instance's side: offers departing connections to the successor in batches.

use std::os::fd::AsFd;
use std::sync::Arc;

use baton_migrate::{ConnSender, ConnVerdict, OutgoingConn};
use tokio::task::JoinHandle;

use crate::drain::{Departure, Departures, Drain};
use crate::telemetry::state::State;

/// Most connections offered in one batch.
const BATCH: usize = 256;

/// Starts the migration on `drain`: every connection task heads for its quiescent point and departs, and a hub
/// task sends them over `session`. The hub ends, sending this instance's final counters, once every connection
/// task has ended. `None` if a migration had already started.
pub fn start(session: ConnSender, drain: &Arc<Drain>, state: Arc<State>) -> Option<JoinHandle<()>> {
    let departures = drain.begin_migration()?;
    Some(tokio::spawn(run_hub(session, departures, drain.clone(), state)))
}

/// Sends departures in batches as they come; answers each one.
async fn run_hub(mut session: ConnSender, mut departures: Departures, drain: Arc<Drain>, state: Arc<State>) {
    let mut broken = false;
    let (mut sent, mut taken) = (0usize, 0usize);
    loop {
        let first = tokio::select! {
            biased;
            d = departures.recv() => d,
            _ = drain.idle() => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match departures.try_recv() {
                Some(d) => batch.push(d),
                None => break,
            }
        }
        if broken {
            batch.into_iter().for_each(|d| d.returned(false));
            continue;
        }
        let result = send_batch(&mut session, &batch).await;
        sent += batch.len();
        match result {
            Ok(verdicts) => {
                for (d, verdict) in batch.into_iter().zip(verdicts) {
                    if verdict.taken() {
                        taken += 1;
                        d.taken(); // our copies close; the successor has its own
                        continue;
                    }
                    // Too large to travel now: it holds less once it has written some out, so it is offered
                    // again. Refused (the successor's config has no place for it) or unsendable fds: it would be
                    // the same next time, so it is served here to its end.
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
            Err(e) => {
                tracing::warn!(error = %e, "connection migration failed: serving the remaining connections here, closing them gracefully");
                broken = true;
                batch.into_iter().for_each(|d| d.returned(false));
            }
        }
    }
    tracing::info!(
        offered = sent,
        taken,
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
async fn send_batch(
    session: &mut ConnSender,
    batch: &[Departure],
) -> Result<Vec<ConnVerdict>, baton_migrate::HandoffError> {
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
