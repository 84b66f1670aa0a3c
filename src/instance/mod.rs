//! `baton run`: the life of an instance — start in the role the Kruise env gives, serve, hand over to a
//! successor or stop on a signal, drain, exit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_migrate::{
    hand_over_live, Arrival, Arrivals, HandoffError, Identity, Inheritance, Migration, Offer, Role, ServingLock,
    Session, SuccessorWatch, Takeover, TakeoverOptions, UdsDir,
};
use futures_util::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::server::listeners::{self, Listener};
use crate::server::{Adopter, Server};
use crate::telemetry::state::{Phase, State};
use crate::upstream::Cluster;
use crate::VERSION;

/// Exit code of a takeover instance stopped by a test failpoint (`BATON_FAILPOINT`).
pub const FAILPOINT_EXIT: i32 = 86;

/// What `baton run` needs.
pub struct RunOptions {
    /// Validated configuration.
    pub config: Config,
    /// Shared directory of the handoff.
    pub uds_dir: PathBuf,
    /// Role from the Kruise env.
    pub role: Role,
    /// Test hook: crash the takeover at this step (see `TakeoverOptions::crash_at`).
    pub failpoint: Option<String>,
    /// Set by a SIGTERM/SIGINT that arrived before the runtime was up (see [`catch_early_signals`]).
    pub early_stop: Arc<AtomicBool>,
}

/// Catches SIGTERM and SIGINT from the first instant of `baton run`, before config loading and runtime start:
/// without it, an early SIGTERM would kill the process (or, as PID 1, be dropped and cost the whole grace
/// period). [`run`] honours the flag as soon as it can.
pub fn catch_early_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
            eprintln!("baton: cannot install a handler for signal {sig}: {e}");
        }
    }
    flag
}

/// The stop signals, with any that arrived before the stream existed.
struct StopSignals {
    stream: Signals,
    early: Arc<AtomicBool>,
}

impl StopSignals {
    /// Resolves at the next SIGTERM or SIGINT, with its name.
    async fn next(&mut self) -> &'static str {
        if self.early.swap(false, Ordering::AcqRel) {
            return "SIGTERM/SIGINT (early)";
        }
        match self.stream.next().await {
            Some(sig) => signal_name(sig),
            None => std::future::pending().await,
        }
    }
}

/// Runs an instance to its end and returns the process exit code: 0 after a drain (signal or handoff), 1 when it
/// could not start serving.
pub async fn run(opts: RunOptions) -> i32 {
    let state = State::new(opts.role);
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(stream) => StopSignals {
            stream,
            early: opts.early_stop.clone(),
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return 1;
        }
    };
    tracing::info!(version = VERSION, role = %opts.role, uds_dir = %opts.uds_dir.display(), "baton starting");
    let dir = UdsDir::new(&opts.uds_dir);
    state.publish_in(&dir);
    if opts.role == Role::Idle {
        state.set_phase(Phase::Idle);
        tracing::info!("idle slot (empty or superseded): no listeners; waiting for SIGTERM");
        let sig = signals.next().await;
        tracing::info!(signal = sig, "idle slot stopping");
        return 0;
    }

    let wanted = listeners::wanted(&opts.config);
    let clusters: Vec<Arc<Cluster>> = opts.config.clusters.iter().map(|c| Arc::new(Cluster::new(c))).collect();
    let started = Start {
        dir: &dir,
        wanted: &wanted,
        clusters: &clusters,
        state: &state,
        config: &opts.config,
    };
    // Failpoints named `old-...` apply when this instance hands over; the others when it takes over.
    let (old_failpoint, new_failpoint) = match opts.failpoint {
        Some(f) => match f.strip_prefix("old-") {
            Some(old) => (Some(old.to_string()), None),
            None => (None, Some(f)),
        },
        None => (None, None),
    };
    let begun = match opts.role {
        Role::Takeover => started.take_over(&mut signals, new_failpoint).await,
        _ => started.fresh().map(|s| (s, None)),
    };
    let (running, finishing) = match begun {
        Ok(r) => r,
        Err(Stop::Exit(code)) => return code,
        Err(Stop::Failed(e)) => {
            tracing::error!("{e}");
            eprintln!("baton: {e}");
            return 1;
        }
    };
    serve(running, finishing, &dir, &state, &mut signals, old_failpoint).await
}

/// An instance accepting on every listener.
struct Running {
    server: Server,
    serving: Option<ServingLock>,
    /// The configuration served: the file's, or the predecessor's with `handoff.inherit_config`.
    config: Config,
}

enum Stop {
    Exit(i32),
    Failed(String),
}

struct Start<'a> {
    dir: &'a UdsDir,
    wanted: &'a [listeners::Wanted],
    clusters: &'a [Arc<Cluster>],
    state: &'a Arc<State>,
    config: &'a Config,
}

impl Start<'_> {
    fn start_server(&self, listeners: Vec<Listener>, clusters: &[Arc<Cluster>]) -> Result<Server, Stop> {
        Server::start(listeners, clusters, self.state.clone())
            .map_err(|e| Stop::Failed(format!("cannot start accepting: {e}")))
    }

    /// Binds every listener and announces itself on the uds dir as a live instance.
    fn fresh(&self) -> Result<Running, Stop> {
        let listeners = listeners::bind_all(self.wanted).map_err(Stop::Failed)?;
        let server = self.start_server(listeners, self.clusters)?;
        let serving = self.hold_serving();
        tracing::info!(generation = self.state.generation(), "bound every listener; serving");
        Ok(Running {
            server,
            serving,
            config: self.config.clone(),
        })
    }

    fn hold_serving(&self) -> Option<ServingLock> {
        match self.dir.ensure().and_then(|()| self.dir.hold_serving()) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(error = %e, "the uds dir is unusable: serving, but this instance cannot hand over to a successor");
                None
            }
        }
    }

    /// Takes over from the live instance on the uds dir, or binds fresh if there is none.
    async fn take_over(
        &self,
        signals: &mut StopSignals,
        failpoint: Option<String>,
    ) -> Result<(Running, Option<JoinHandle<()>>), Stop> {
        self.state.set_phase(Phase::Waiting);
        let t0 = Instant::now();
        let me = Identity {
            generation: 1,
            version: VERSION.to_string(),
        };
        let mut opts = TakeoverOptions::new(self.config.handoff.timeout);
        opts.crash_at = failpoint;
        let mut takeover =
            Takeover::start(self.dir, me, opts).map_err(|e| Stop::Failed(format!("cannot take over: {e}")))?;
        let received = tokio::select! {
            r = takeover.receive() => r,
            _ = signals.next() => {
                tracing::info!("signal while waiting for the predecessor; exiting");
                drop(takeover); // releases reconfig.sock at once: no lingering on the way out
                return Err(Stop::Exit(0));
            }
        };
        match received {
            Ok(Inheritance::NoPeer) => {
                self.state.handoff.received_fresh.fetch_add(1, Ordering::Relaxed);
                tracing::info!("no live instance holds the uds dir (first start, pod restart or crashed predecessor): binding fresh");
                let running = self.fresh_or_report(&mut takeover).await?;
                let finishing = spawn_finish(
                    takeover,
                    true,
                    "fresh",
                    "no live instance on the uds dir; bound every listener fresh",
                );
                Ok((running, Some(finishing)))
            }
            Ok(Inheritance::Peer(mut session)) => {
                let peer_generation = session.peer.generation;
                tracing::info!(peer_version = %session.peer.version, peer_generation, listeners = session.listeners.len(), "received listeners");
                if let Some(counters) = session.peer_state.as_ref().and_then(|s| s.get("counters")) {
                    self.state.inherit_counters(counters);
                }
                let config = self.effective_config(&session);
                let wanted = listeners::wanted(&config);
                let clusters: Vec<Arc<Cluster>> = config.clusters.iter().map(|c| Arc::new(Cluster::new(c))).collect();
                let adoption = match listeners::adopt(&wanted, std::mem::take(&mut session.listeners)) {
                    Ok(a) => a,
                    Err(reason) => {
                        self.state.handoff.received_failed.fetch_add(1, Ordering::Relaxed);
                        session.refuse(&reason).await;
                        takeover.finish(false, "failed", &reason).await;
                        return Err(Stop::Failed(format!("takeover refused: {reason}")));
                    }
                };
                let ready = adoption.ready.clone();
                let server = self.start_server(adoption.listeners, &clusters)?;
                let adopter = server.adopter();
                let committed = session.commit_live(ready.clone()).await;
                let warning = match committed {
                    Ok(arrivals) => {
                        if let Some(arrivals) = arrivals {
                            spawn_arrivals(arrivals, adopter, self.state.clone());
                        }
                        None
                    }
                    Err(e) if matches!(e.error, HandoffError::Refused(_)) => {
                        // The predecessor said it keeps serving: step back.
                        self.state.handoff.received_failed.fetch_add(1, Ordering::Relaxed);
                        let reason = format!("handoff failed at {e}; the previous instance keeps serving");
                        tracing::error!("{reason}");
                        takeover.finish(false, "failed", &reason).await;
                        self.state.set_phase(Phase::Draining);
                        let report = server.drain(self.config.handoff.drain_timeout, None).await;
                        tracing::info!(
                            elapsed_ms = report.elapsed.as_millis() as u64,
                            "drained what this instance accepted"
                        );
                        return Err(Stop::Failed(reason));
                    }
                    Err(e) => {
                        crash_if_failpoint(&e.error);
                        // After READY, a silent or vanished predecessor crashed or hung mid-commit. We accept on
                        // the very sockets it held, so serving on is safe whether it is dead or stuck (a live one
                        // may accept too: one shared queue, nothing lost). Stepping back could leave nobody.
                        let alive = !self.predecessor_gone(Duration::from_millis(200)).await;
                        tracing::warn!(error = %e, predecessor_alive = alive, "the predecessor did not confirm the commit; serving anyway");
                        Some(format!(
                            "; the predecessor did not confirm the commit ({e}; {}), serving anyway",
                            if alive {
                                "it still holds serving.lock"
                            } else {
                                "it exited"
                            }
                        ))
                    }
                };
                // From now on a successor waits for us; taken after the commit so that probing a silent
                // predecessor above does not see our own lock.
                let serving = self.hold_serving();
                drop(adoption.unclaimed);
                self.state.handoff.received_committed.fetch_add(1, Ordering::Relaxed);
                self.state.handoff.duration.observe(t0.elapsed());
                self.state.set_generation(peer_generation.saturating_add(1));
                tracing::info!(
                    generation = self.state.generation(),
                    adopted = ?ready.adopted, bound = ?ready.bound, closed = ?ready.unclaimed,
                    elapsed_ms = t0.elapsed().as_millis() as u64,
                    "handoff complete: serving every listener"
                );
                let detail = format!(
                    "generation {}: adopted {:?}, bound {:?}, closed {:?} in {} ms{}",
                    self.state.generation(),
                    ready.adopted,
                    ready.bound,
                    ready.unclaimed,
                    t0.elapsed().as_millis(),
                    warning.unwrap_or_default()
                );
                Ok((
                    Running {
                        server,
                        serving,
                        config,
                    },
                    Some(spawn_finish(takeover, true, "complete", &detail)),
                ))
            }
            Err(e) => {
                crash_if_failpoint(&e.error);
                // A predecessor that died mid-handoff releases serving.lock as its process ends (a moment after
                // its socket closed): then binding fresh is safe.
                if self.predecessor_gone(Duration::from_secs(1)).await {
                    self.state.handoff.received_fresh.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "the predecessor went away during the handoff: binding fresh");
                    let running = self.fresh_or_report(&mut takeover).await?;
                    let detail = format!("the predecessor went away during the handoff ({e}); bound fresh");
                    return Ok((running, Some(spawn_finish(takeover, true, "fresh", &detail))));
                }
                self.state.handoff.received_failed.fetch_add(1, Ordering::Relaxed);
                let reason = format!("handoff failed at {e}");
                takeover.finish(false, "failed", &reason).await;
                Err(Stop::Failed(reason))
            }
        }
    }

    /// The configuration to serve: the predecessor's effective one with `handoff.inherit_config` (if it sent
    /// one that this build accepts), else our file's.
    fn effective_config(&self, session: &Session) -> Config {
        if !self.config.handoff.inherit_config {
            return self.config.clone();
        }
        let source = session
            .peer_state
            .as_ref()
            .and_then(|s| s.get("config"))
            .and_then(|c| c.get("source"))
            .and_then(|s| s.as_str());
        match source.map(|src| self.config.inherit(src)) {
            Some(Ok(config)) => {
                tracing::info!(
                    peer_version = %session.peer.version,
                    "handoff.inherit_config: serving the predecessor's configuration instead of this file's"
                );
                config
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "handoff.inherit_config: the predecessor's configuration is not valid for this build; serving this file's");
                self.config.clone()
            }
            None => {
                tracing::warn!("handoff.inherit_config: the predecessor sent no configuration (an older build); serving this file's");
                self.config.clone()
            }
        }
    }

    /// Whether the predecessor released serving.lock, waiting up to `patience` for it to finish exiting.
    async fn predecessor_gone(&self, patience: Duration) -> bool {
        let give_up = Instant::now() + patience;
        loop {
            match self.dir.peer_serving() {
                Ok(false) => return true,
                Ok(true) if Instant::now() < give_up => tokio::time::sleep(Duration::from_millis(10)).await,
                _ => return false,
            }
        }
    }

    async fn fresh_or_report(&self, takeover: &mut Takeover) -> Result<Running, Stop> {
        match self.fresh() {
            Ok(r) => Ok(r),
            Err(Stop::Failed(reason)) => {
                takeover.report("failed", &reason);
                Err(Stop::Failed(reason))
            }
            Err(other) => Err(other),
        }
    }
}

/// Receives the predecessor's live connections until it says it is done, serving each one here; then takes its
/// final counters.
fn spawn_arrivals(mut arrivals: Arrivals, adopter: Adopter, state: Arc<State>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let (mut adopted, mut refused) = (0usize, 0usize);
        loop {
            // The predecessor sends as its connections reach a quiescent point, for up to its drain timeout.
            let patience = Instant::now() + Duration::from_secs(24 * 3600);
            match arrivals.next(patience.into()).await {
                Ok(Arrival::Conns(batch)) => {
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
                    if let Err(e) = arrivals.ack(accepted, refusing, deadline.into()).await {
                        tracing::warn!(error = %e, "cannot acknowledge handed-over connections; serving them anyway");
                        break;
                    }
                }
                Ok(Arrival::End(last)) => {
                    if let Some(counters) = last.get("counters") {
                        state.inherit_counters(counters);
                    }
                    break;
                }
                Err(e) => {
                    crash_if_failpoint(&e);
                    tracing::info!(error = %e, "the predecessor ended the connection migration without its final report");
                    break;
                }
            }
        }
        tracing::info!(adopted, refused, "connection migration from the predecessor over");
    })
}

fn spawn_finish(takeover: Takeover, ok: bool, phase: &'static str, detail: &str) -> JoinHandle<()> {
    let detail = detail.to_string();
    tokio::spawn(async move { takeover.finish(ok, phase, &detail).await })
}

fn crash_if_failpoint(e: &HandoffError) {
    if let HandoffError::Failpoint(step) = e {
        tracing::warn!(step, "failpoint reached: exiting abruptly");
        std::process::exit(FAILPOINT_EXIT);
    }
}

/// Serves until a signal or a completed handoff, then drains. Returns the exit code.
async fn serve(
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
    let mut migration = None;
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
                    migration = live;
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
    let migrating = migration.is_some();
    let report = server.drain(config.handoff.drain_timeout, migration).await;
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
) -> Option<Option<Migration>> {
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
        Ok((c, migration)) => {
            state.handoff.sent_committed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                successor_version = %c.version, successor_generation = c.generation,
                adopted = ?c.ready.adopted, elapsed_ms = t0.elapsed().as_millis() as u64,
                live_connections = migration.is_some(),
                "handoff committed"
            );
            Some(migration)
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

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "other",
    }
}
