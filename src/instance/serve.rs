//! Serving until a stop signal or a completed handoff to a successor, then draining.
//!
//! After a committed handoff the old instance is on probation ([`probation`]): it keeps copies of the listening
//! sockets (not accepting) while it hands over its connections and for at least `handoff.probation`, and serves
//! again if the successor dies meanwhile. Under the Kruise env a drained instance then idles until SIGTERM
//! ([`Phase::Superseded`]) instead of exiting into a kubelet restart.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_migrate::{hand_over_live_until, Committed, ConnSender, Identity, Offer, SuccessorWatch, UdsDir};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use super::crash_if_failpoint;
use super::signals::StopSignals;
use super::start::{clusters, Running};
use crate::config::Config;
use crate::migration;
use crate::server::listeners::{self, Listener, Origin};
use crate::server::{DrainReport, Server};
use crate::telemetry::state::{Phase, State};
use crate::VERSION;

/// How often a probation checks that the successor still holds `serving.lock`.
const PROBATION_POLL: Duration = Duration::from_millis(20);
/// How long `serving.lock` must stay free before the successor counts as dead: a successor takes it a moment
/// after the commit.
const SUCCESSOR_GONE_AFTER: Duration = Duration::from_millis(60);
/// Pause between two handoff attempts to a successor that failed.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Where an instance is in its life, and what it does once drained.
pub(super) struct Life<'a> {
    pub(super) dir: &'a UdsDir,
    pub(super) state: &'a Arc<State>,
    pub(super) signals: &'a mut StopSignals,
    /// Test hook for the old side of a handoff.
    pub(super) failpoint: Option<String>,
    /// Under the Kruise env: once superseded and drained, idle until SIGTERM instead of exiting.
    pub(super) idle_when_superseded: bool,
}

/// How serving ended.
enum Ended {
    /// A stop signal, with its name.
    Signal(String),
    /// A committed handoff, with the session for the live connections if the successor takes them.
    HandedOver(Box<(Committed, Option<ConnSender>)>),
}

/// How a probation ended.
enum Probation {
    /// The successor lived through it.
    Passed,
    /// A stop signal came.
    Signal(&'static str),
    /// The successor died (released `serving.lock`) this long after the commit.
    SuccessorDied(Duration),
}

impl Life<'_> {
    /// Serves until a signal or a completed handoff, then drains. Returns the exit code.
    pub(super) async fn serve(mut self, running: Running, mut finishing: Option<JoinHandle<()>>) -> i32 {
        let Running {
            mut server,
            mut serving,
            config,
        } = running;
        let config = &config;
        // Drains of servers left behind when the instance served again after its successor died.
        let mut leftovers: Vec<JoinHandle<()>> = Vec::new();
        loop {
            let ended = self
                .serve_until_handoff(&server, &mut finishing, serving.is_some(), config)
                .await;
            let (committed, session) = match ended {
                Ended::Signal(reason) => {
                    self.begin_drain(&reason);
                    server.stop_accepting().await;
                    drop(serving);
                    server.drain().begin_graceful();
                    let report = server.finish(config.handoff.drain_timeout).await;
                    log_drained(self.state, &report, false);
                    wait_all(leftovers).await;
                    return 0;
                }
                Ended::HandedOver(handed) => *handed,
            };
            let committed_at = Instant::now();
            self.begin_drain("handed over to a successor");
            let kept = server.keep(&committed.ready.adopted);
            server.stop_accepting().await;
            drop(serving);
            let drain = server.drain().clone();
            let migrating = session.is_some();
            // Live connections go to the successor if it takes them; otherwise they finish here, gracefully.
            let mut hub = session.and_then(|s| {
                migration::send::start(s, &drain, server.upstreams().clone(), self.state.clone(), committed_at)
            });
            if hub.is_none() {
                drain.begin_graceful();
            }
            let draining = tokio::spawn(server.finish(config.handoff.drain_timeout));
            let on_probation = probation(self.dir, config.handoff.probation, &mut hub, self.signals).await;
            let mut stopping = false;
            match on_probation {
                Probation::Passed => drop(kept),
                Probation::Signal(sig) => {
                    tracing::info!(signal = sig, "stop signal during the probation: draining, then exiting");
                    drop(kept);
                    drain.begin_graceful();
                    stopping = true;
                }
                Probation::SuccessorDied(after) => {
                    tracing::error!(
                        after_commit_ms = after.as_millis() as u64,
                        "the successor died during the probation (it released serving.lock): serving again"
                    );
                    // What has not been handed over yet finishes here, gracefully.
                    drain.begin_graceful();
                    match serve_again(kept, config, self.state) {
                        Ok(again) => {
                            self.state.handoff.sent_resumed.fetch_add(1, Ordering::Relaxed);
                            server = again;
                            serving = hold_serving(self.dir);
                            finishing = None;
                            leftovers.push(tokio::spawn(finish_behind(draining, hub)));
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot serve again: draining, then exiting");
                            stopping = true;
                        }
                    }
                }
            }
            let report = draining.await.unwrap_or(DrainReport {
                elapsed: Duration::ZERO,
                closed_at_deadline: 0,
            });
            if let Some(hub) = hub {
                // Tells the successor the migration is over, with the final counters.
                let _ = tokio::time::timeout(Duration::from_secs(2), hub).await;
            }
            log_drained(self.state, &report, migrating);
            wait_all(leftovers).await;
            if self.idle_when_superseded && !stopping {
                self.state.set_phase(Phase::Superseded);
                tracing::info!("superseded: holding nothing, waiting for SIGTERM (the Kruise env is set: exiting now would only make kubelet restart this container)");
                let sig = self.signals.next().await;
                tracing::info!(signal = sig, "superseded instance stopping");
            }
            return 0;
        }
    }

    /// Serves `server` until a stop signal or a committed handoff. A signal during a handoff aborts it at once:
    /// the successor is refused with the signal's name, and no new attempt starts.
    async fn serve_until_handoff(
        &mut self,
        server: &Server,
        finishing: &mut Option<JoinHandle<()>>,
        can_hand_over: bool,
        config: &Config,
    ) -> Ended {
        self.state.set_phase(Phase::Serving);
        // Watch for a successor only once our own reconfig socket (if any) is gone, so we never dial ourselves.
        let mut watch = (finishing.is_none() && can_hand_over).then(|| SuccessorWatch::new(self.dir));
        loop {
            tokio::select! {
                sig = self.signals.next() => return Ended::Signal(format!("signal {sig}")),
                _ = wait_finish(finishing) => {
                    *finishing = None;
                    if can_hand_over {
                        watch = Some(SuccessorWatch::new(self.dir));
                    }
                }
                stream = next_successor(&mut watch) => {
                    match self.hand_off(stream, server, config).await {
                        Ok(handed) => return Ended::HandedOver(Box::new(handed)),
                        Err(Some(sig)) => return Ended::Signal(format!("signal {sig} during a handoff (aborted)")),
                        Err(None) => {}
                    }
                    self.state.set_phase(Phase::Serving);
                    tokio::select! {
                        sig = self.signals.next() => return Ended::Signal(format!("signal {sig}")),
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    }
                }
            }
        }
    }

    /// Runs one handoff as the old side. `Ok` when the successor committed, with the session to hand it the live
    /// connections if it speaks a protocol that takes them; `Err` with the stop signal that aborted it, or `None`
    /// when it failed (this instance serves on).
    async fn hand_off(
        &mut self,
        stream: UnixStream,
        server: &Server,
        config: &Config,
    ) -> Result<(Committed, Option<ConnSender>), Option<&'static str>> {
        let state = self.state;
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
            crash_at: self.failpoint.as_deref(),
        };
        let mut signal = None;
        let abort = async {
            let sig = self.signals.next().await;
            signal = Some(sig);
            format!("the previous instance got {sig} and is stopping: handoff aborted")
        };
        let result = hand_over_live_until(stream, &me, offer, abort).await;
        match result {
            Ok((c, session)) => {
                state.handoff.sent_committed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    successor_version = %c.version, successor_generation = c.generation,
                    adopted = ?c.ready.adopted, elapsed_ms = t0.elapsed().as_millis() as u64,
                    live_connections = session.is_some(),
                    "handoff committed"
                );
                if let Some(sig) = signal {
                    // The signal came after COMMIT: the successor serves; this instance drains and stops.
                    tracing::info!(signal = sig, "stop signal at the commit: draining, then exiting");
                    return Err(Some(sig));
                }
                Ok((c, session))
            }
            Err(e) => {
                crash_if_failpoint(&e.error);
                state.handoff.sent_failed.fetch_add(1, Ordering::Relaxed);
                match signal {
                    Some(sig) => {
                        tracing::info!(error = %e, "handoff aborted by a stop signal; the successor was refused");
                        Err(Some(sig))
                    }
                    None => {
                        tracing::warn!(error = %e, "handoff failed; still serving");
                        Err(None)
                    }
                }
            }
        }
    }

    fn begin_drain(&self, reason: &str) {
        self.state.set_phase(Phase::Draining);
        tracing::info!(reason = %reason, "draining");
    }
}

/// After a commit: watches the successor until `min` has passed and the connection handover (`hub`) is over.
/// The successor counts as dead once `serving.lock` stays free (its process exited).
async fn probation(
    dir: &UdsDir,
    min: Duration,
    hub: &mut Option<JoinHandle<()>>,
    signals: &mut StopSignals,
) -> Probation {
    let t0 = Instant::now();
    let mut free_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(PROBATION_POLL);
    loop {
        tokio::select! {
            sig = signals.next() => return Probation::Signal(sig),
            _ = tick.tick() => {}
            _ = async { if let Some(h) = hub.as_mut() { let _ = h.await; } }, if hub.is_some() => *hub = None,
        }
        match dir.peer_serving() {
            Ok(true) => free_since = None,
            Ok(false) => {
                let since = *free_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= SUCCESSOR_GONE_AFTER {
                    return Probation::SuccessorDied(t0.elapsed());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the successor's serving.lock: probation over");
                return Probation::Passed;
            }
        }
        if hub.is_none() && t0.elapsed() >= min {
            return Probation::Passed;
        }
    }
}

/// A server on the kept listening sockets, and on fresh ones for the listeners of `config` the successor did
/// not adopt (it closed them).
fn serve_again(kept: Vec<Listener>, config: &Config, state: &Arc<State>) -> std::io::Result<Server> {
    let mut all = kept;
    for w in listeners::wanted(config) {
        if all.iter().any(|l| l.name == w.name) {
            continue;
        }
        match listeners::bind(w.address) {
            Ok(socket) => all.push(Listener {
                name: w.name,
                kind: w.kind,
                address: w.address,
                origin: Origin::Bound,
                socket,
            }),
            Err(e) => {
                tracing::error!(listener = %w.name, address = %w.address, error = %e, "cannot bind a listener again")
            }
        }
    }
    let names: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
    tracing::info!(listeners = ?names, "serving again");
    Server::start(all, &clusters(config), state.clone())
}

fn hold_serving(dir: &UdsDir) -> Option<baton_migrate::ServingLock> {
    match dir.hold_serving() {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(error = %e, "cannot hold serving.lock again: this instance cannot hand over to a successor");
            None
        }
    }
}

/// The drain of a server left behind, to its end.
async fn finish_behind(draining: JoinHandle<DrainReport>, hub: Option<JoinHandle<()>>) {
    if let Ok(report) = draining.await {
        tracing::info!(
            elapsed_ms = report.elapsed.as_millis() as u64,
            closed_at_deadline = report.closed_at_deadline,
            "the connections of before the successor's death are drained"
        );
    }
    if let Some(hub) = hub {
        let _ = tokio::time::timeout(Duration::from_secs(2), hub).await;
    }
}

async fn wait_all(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

fn log_drained(state: &State, report: &DrainReport, migrating: bool) {
    tracing::info!(
        elapsed_ms = report.elapsed.as_millis() as u64,
        closed_at_deadline = report.closed_at_deadline,
        migrating,
        requests_served = state.status().requests_served,
        "drained; exiting"
    );
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
