//! Serving until a stop signal or a completed handoff to a successor, then draining.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_migrate::{hand_over_live, ConnSender, Identity, Offer, SuccessorWatch, UdsDir};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use super::crash_if_failpoint;
use super::signals::StopSignals;
use super::start::Running;
use crate::config::Config;
use crate::migration;
use crate::server::Server;
use crate::telemetry::state::{Phase, State};
use crate::VERSION;

/// Serves until a signal or a completed handoff, then drains. Returns the exit code.
pub(super) async fn serve(
    running: Running,
    mut finishing: Option<JoinHandle<()>>,
    dir: &UdsDir,
    state: &Arc<State>,
    signals: &mut StopSignals,
    failpoint: Option<String>,
) -> i32 {
    let Running {
        mut server,
        serving,
        config,
    } = running;
    let config = &config;
    state.set_phase(Phase::Serving);
    // Watch for a successor only once our own reconfig socket (if any) is gone, so we never dial ourselves.
    let mut watch: Option<SuccessorWatch> = if finishing.is_none() && serving.is_some() {
        Some(SuccessorWatch::new(dir))
    } else {
        None
    };
    let mut session = None;
    let reason = loop {
        tokio::select! {
            sig = signals.next() => break format!("signal {sig}"),
            _ = wait_finish(&mut finishing) => {
                finishing = None;
                if serving.is_some() {
                    watch = Some(SuccessorWatch::new(dir));
                }
            }
            stream = next_successor(&mut watch) => {
                if let Some(live) = hand_off(stream, &server, state, config, failpoint.as_deref()).await {
                    session = live;
                    break "handed over to a successor".to_string();
                }
                state.set_phase(Phase::Serving);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    state.set_phase(Phase::Draining);
    tracing::info!(reason = %reason, "draining");
    server.stop_accepting().await;
    drop(serving);
    let migrating = session.is_some();
    // Live connections go to the successor if it takes them; otherwise they finish here, gracefully.
    let hub =
        session.and_then(|s| migration::send::start(s, server.drain(), server.upstreams().clone(), state.clone()));
    if hub.is_none() {
        server.drain().begin_graceful();
    }
    let report = server.finish(config.handoff.drain_timeout).await;
    if let Some(hub) = hub {
        // Tells the successor the migration is over, with the final counters.
        let _ = tokio::time::timeout(Duration::from_secs(2), hub).await;
    }
    tracing::info!(
        elapsed_ms = report.elapsed.as_millis() as u64,
        closed_at_deadline = report.closed_at_deadline,
        migrating,
        requests_served = state.status().requests_served,
        "drained; exiting"
    );
    0
}

/// Runs one handoff as the old side. `Some` when the successor committed, with the session to hand it the live
/// connections if it speaks a protocol that takes them.
async fn hand_off(
    stream: UnixStream,
    server: &Server,
    state: &Arc<State>,
    config: &Config,
    failpoint: Option<&str>,
) -> Option<Option<ConnSender>> {
    state.set_phase(Phase::HandingOff);
    let t0 = Instant::now();
    let me = Identity {
        generation: state.generation(),
        version: VERSION.to_string(),
    };
    let offered = server.offered();
    tracing::info!(
        listeners = offered.len(),
        "successor found on the uds dir: handing over"
    );
    let offer = Offer {
        listeners: &offered,
        state: serde_json::json!({
            "config": { "source": config.source() },
            "counters": state.counters_snapshot(),
        }),
        timeout: config.handoff.timeout,
        crash_at: failpoint,
    };
    match hand_over_live(stream, &me, offer).await {
        Ok((c, session)) => {
            state.handoff.sent_committed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                successor_version = %c.version, successor_generation = c.generation,
                adopted = ?c.ready.adopted, elapsed_ms = t0.elapsed().as_millis() as u64,
                live_connections = session.is_some(),
                "handoff committed"
            );
            Some(session)
        }
        Err(e) => {
            crash_if_failpoint(&e.error);
            state.handoff.sent_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "handoff failed; still serving");
            None
        }
    }
}

async fn wait_finish(finishing: &mut Option<JoinHandle<()>>) {
    match finishing {
        Some(h) => {
            let _ = h.await;
        }
        None => std::future::pending().await,
    }
}

async fn next_successor(watch: &mut Option<SuccessorWatch>) -> UnixStream {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
