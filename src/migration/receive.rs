//! The new instance's side: adopts the connections the predecessor hands over, until it says it is done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_migrate::{ConnReceiver, HandoffError, Received};
use tokio::task::JoinHandle;

use crate::server::adopt::Adopter;
use crate::telemetry::state::State;

/// Receives the predecessor's live connections until it says it is done, serving each one here; then takes its
/// final counters. `on_error` sees every protocol error first (the failpoint hook of the instance).
pub fn spawn(
    mut receiver: ConnReceiver,
    adopter: Adopter,
    state: Arc<State>,
    on_error: fn(&HandoffError),
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (mut adopted, mut refused) = (0usize, 0usize);
        loop {
            // The predecessor sends as its connections reach a quiescent point, for up to its drain timeout.
            let patience = Instant::now() + Duration::from_secs(24 * 3600);
            match receiver.next(patience.into()).await {
                Ok(Received::Conns(batch)) => {
                    let (mut accepted, mut refusing) = (Vec::new(), Vec::new());
                    for conn in batch {
                        let id = conn.tag.id;
                        if adopter.adopt(conn) {
                            accepted.push(id);
                        } else {
                            refusing.push(id);
                        }
                    }
                    adopted += accepted.len();
                    refused += refusing.len();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    if let Err(e) = receiver.ack(accepted, refusing, deadline.into()).await {
                        tracing::warn!(error = %e, "cannot acknowledge handed-over connections; serving them anyway");
                        break;
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
        tracing::info!(adopted, refused, "connection migration from the predecessor over");
    })
}
