//! The new instance's side: adopts the connections the predecessor hands over, until it says it is done.
//!
//! The receiving task is one of the drain's tasks: an instance that stops (a signal, or its own handoff) waits
//! for it, so that a connection acknowledged is always served. Once this instance's drain began it refuses what
//! arrives (the predecessor keeps serving it), and at the drain deadline it ends the migration, which leaves
//! everything unacknowledged with the predecessor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_migrate::{ConnReceiver, HandoffError, Received};

use crate::drain::Drain;
use crate::server::adopt::Adopter;
use crate::telemetry::state::State;

/// Receives the predecessor's live connections until it says it is done, serving each one here; then takes its
/// final counters, as one of `drain`'s tasks (see the module doc). `on_error` sees every protocol error first (the
/// failpoint hook of the instance).
pub fn spawn(
    mut receiver: ConnReceiver,
    adopter: Adopter,
    drain: &Arc<Drain>,
    state: Arc<State>,
    on_error: fn(&HandoffError),
) {
    let drain_ = drain.clone();
    // Spawned at the commit: the times logged at the end count from here.
    let committed_at = Instant::now();
    drain.spawn(async move {
        let drain = drain_;
        let (mut adopted, mut refused) = (0usize, 0usize);
        let mut last_ack: Option<Instant> = None;
        loop {
            // The predecessor sends as its connections reach a quiescent point, for up to its drain timeout.
            let patience = Instant::now() + Duration::from_secs(24 * 3600);
            let next = tokio::select! {
                biased;
                _ = drain.deadline() => {
                    tracing::info!("drain deadline: ending the connection migration from the predecessor (it keeps what was not acknowledged)");
                    break;
                }
                next = receiver.next(patience.into()) => next,
            };
            match next {
                Ok(Received::Conns(batch)) => {
                    let (mut accepted, mut refusing) = (Vec::new(), Vec::new());
                    // Stopping already: the predecessor serves them on.
                    let stopping = drain.is_graceful() || drain.is_migrating();
                    for conn in batch {
                        let id = conn.tag.id;
                        if !stopping && adopter.adopt(conn) {
                            accepted.push(id);
                        } else {
                            refusing.push(id);
                        }
                    }
                    adopted += accepted.len();
                    refused += refusing.len();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let any = !accepted.is_empty();
                    if let Err(e) = receiver.ack(accepted, refusing, deadline.into()).await {
                        tracing::warn!(error = %e, "cannot acknowledge handed-over connections; serving them anyway");
                        break;
                    }
                    if any {
                        last_ack = Some(Instant::now());
                    }
                }
                Ok(Received::End(last)) => {
                    if let Some(counters) = last.get("counters") {
                        state.inherit_counters(counters);
                    }
                    break;
                }
                Err(e) => {
                    on_error(&e);
                    tracing::info!(error = %e, "the predecessor ended the connection migration without its final report");
                    break;
                }
            }
        }
        let ms = |t: Instant| format!("{:.1}", t.duration_since(committed_at).as_secs_f64() * 1e3);
        tracing::info!(
            adopted,
            refused,
            last_ack_ms = %last_ack.map(ms).unwrap_or_else(|| "none".into()),
            elapsed_ms = %ms(Instant::now()),
            "connection migration from the predecessor over"
        );
    });
}
