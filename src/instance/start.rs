//! How an instance starts serving: bind fresh, or take over from the live predecessor on the uds dir.
//!
//! A takeover, step by step ([`Start::take_over`]):
//! 1. wait for the predecessor's listeners (a stop signal ends the wait, and the process);
//! 2. no live predecessor: bind fresh ([`Start::fresh`]);
//! 3. a predecessor: choose the config to serve, adopt its listeners (bind what it did not hand over) and set up
//!    their accept loops, held ([`Start::adopt`]);
//! 4. commit: start accepting; the predecessor stops accepting and starts handing over its live connections
//!    ([`Start::commit`]);
//! 5. hold `serving.lock` and report the handoff complete to the postStart hook ([`Start::complete`]).
//!
//! Until the commit a failure leaves the predecessor serving, and this instance has accepted nothing it could take
//! down with it (its accept loops start only once committed: meanwhile new connections wait in the accept queue
//! both share, and the predecessor serves them); after the commit this instance serves whatever happens.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_migrate::{
    HandoffError, Identity, Inheritance, Ready, ServingLock, Session, StepError, Takeover, TakeoverOptions, UdsDir,
};
use tokio::task::JoinHandle;

use super::crash_if_failpoint;
use super::error::StartError;
use super::signals::StopSignals;
use crate::config::Config;
use crate::migration;
use crate::server::listeners;
use crate::server::Server;
use crate::telemetry::state::{Phase, State};
use crate::upstream::Cluster;
use crate::VERSION;

/// An instance accepting on every listener.
pub(super) struct Running {
    pub(super) server: Server,
    pub(super) serving: Option<ServingLock>,
    /// The configuration served: the file's, or the predecessor's with `handoff.inherit_config`.
    pub(super) config: Config,
}

/// How a start ended without serving.
pub(super) enum Stop {
    /// A stop signal came first: exit 0.
    Signaled,
    /// Exit 1 with this error.
    Failed(StartError),
}

impl From<StartError> for Stop {
    fn from(e: StartError) -> Stop {
        Stop::Failed(e)
    }
}

/// A started instance, and the task that tells the postStart hook how the takeover ended (if it was one).
pub(super) type Started = (Running, Option<JoinHandle<()>>);

/// What starting needs.
pub(super) struct Start<'a> {
    pub(super) dir: &'a UdsDir,
    pub(super) state: &'a Arc<State>,
    /// The configuration file's.
    pub(super) config: &'a Config,
}

impl Start<'_> {
    /// Binds every listener and announces itself on the uds dir as a live instance.
    pub(super) fn fresh(&self) -> Result<Running, StartError> {
        let listeners = listeners::bind_all(&listeners::wanted(self.config))?;
        let server =
            Server::start(listeners, &clusters(self.config), self.state.clone()).map_err(StartError::Accept)?;
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

    /// Takes over from the live instance on the uds dir, or binds fresh if there is none (see the module doc).
    pub(super) async fn take_over(
        &self,
        signals: &mut StopSignals,
        failpoint: Option<String>,
    ) -> Result<Started, Stop> {
        self.state.set_phase(Phase::Waiting);
        let t0 = Instant::now();
        let me = Identity {
            generation: 1,
            version: VERSION.to_string(),
        };
        let mut opts = TakeoverOptions::new(self.config.handoff.timeout);
        opts.crash_at = failpoint;
        let mut takeover = Takeover::start(self.dir, me, opts).map_err(StartError::Takeover)?;
        let received = tokio::select! {
            r = takeover.receive() => r,
            _ = signals.next() => {
                tracing::info!("signal while waiting for the predecessor; exiting");
                drop(takeover); // releases reconfig.sock at once: no lingering on the way out
                return Err(Stop::Signaled);
            }
        };
        match received {
            Ok(Inheritance::NoPeer) => {
                self.state.handoff.received_fresh.fetch_add(1, Ordering::Relaxed);
                tracing::info!("no live instance holds the uds dir (first start, pod restart or crashed predecessor): binding fresh");
                let running = self.fresh_or_report(&mut takeover)?;
                let detail = "no live instance on the uds dir; bound every listener fresh";
                Ok((running, Some(spawn_finish(takeover, "fresh", detail))))
            }
            Ok(Inheritance::Peer(mut session)) => {
                let adopted = match self.adopt(&mut session) {
                    Ok(a) => a,
                    Err(StartError::Refused(error)) => {
                        self.state.handoff.received_failed.fetch_add(1, Ordering::Relaxed);
                        let reason = error.to_string();
                        session.refuse(&reason).await;
                        takeover.finish(false, "failed", &reason).await;
                        return Err(StartError::Refused(error).into());
                    }
                    Err(other) => return Err(other.into()),
                };
                match self.commit(*session, adopted).await {
                    Ok((adopted, warning)) => Ok(self.complete(adopted, warning, takeover, t0)),
                    Err((adopted, e)) => Err(self.step_back(adopted, e, takeover).await.into()),
                }
            }
            Err(e) => self.predecessor_failed(e, takeover).await,
        }
    }

    /// Step 3: adopts the predecessor's listeners under the effective config, with their accept loops held until
    /// the commit.
    /// [`StartError::Refused`]: they do not fit (the caller refuses the handoff).
    fn adopt(&self, session: &mut Session) -> Result<Adopted, StartError> {
        let peer_generation = session.peer.generation;
        tracing::info!(peer_version = %session.peer.version, peer_generation, listeners = session.listeners.len(), "received listeners");
        if let Some(counters) = session.peer_state.as_ref().and_then(|s| s.get("counters")) {
            self.state.inherit_counters(counters);
        }
        let config = self.effective_config(session);
        let wanted = listeners::wanted(&config);
        let adoption =
            listeners::adopt(&wanted, std::mem::take(&mut session.listeners)).map_err(StartError::Refused)?;
        let server = Server::start_held(adoption.listeners, &clusters(&config), self.state.clone())
            .map_err(StartError::Accept)?;
        Ok(Adopted {
            server,
            config,
            ready: adoption.ready,
            unclaimed: adoption.unclaimed,
            peer_generation,
        })
    }

    /// Step 4: commits, starts accepting, and starts adopting the live connections the predecessor hands over.
    /// `Ok` with a warning for the report when serving anyway after a predecessor that did not confirm; `Err` when
    /// the predecessor refused the commit and serves on (this instance accepted nothing).
    async fn commit(
        &self,
        session: Session,
        adopted: Adopted,
    ) -> Result<(Adopted, Option<String>), (Adopted, StepError)> {
        let committed = session
            .commit_live(adopted.ready.clone(), || adopted.server.start_accepting())
            .await;
        match committed {
            Ok(receiver) => {
                if let Some(receiver) = receiver {
                    migration::receive::spawn(
                        receiver,
                        adopted.server.adopter(),
                        adopted.server.drain(),
                        self.state.clone(),
                        crash_if_failpoint,
                    );
                }
                Ok((adopted, None))
            }
            Err(e) if matches!(e.error, HandoffError::Refused(_)) => Err((adopted, e)),
            Err(e) => {
                crash_if_failpoint(&e.error);
                // After READY, a silent or vanished predecessor crashed or hung mid-commit. We accept on the very
                // sockets it held, so serving on is safe whether it is dead or stuck (a live one may accept too:
                // one shared queue, nothing lost). Stepping back could leave nobody.
                adopted.server.start_accepting();
                let alive = !self.predecessor_gone(Duration::from_millis(200)).await;
                tracing::warn!(error = %e, predecessor_alive = alive, "the predecessor did not confirm the commit; serving anyway");
                let warning = format!(
                    "; the predecessor did not confirm the commit ({e}; {}), serving anyway",
                    if alive {
                        "it still holds serving.lock"
                    } else {
                        "it exited"
                    }
                );
                Ok((adopted, Some(warning)))
            }
        }
    }

    /// The predecessor refused the commit and serves on: this instance steps back. It accepted nothing (its
    /// accept loops were held), so the drain ends at once.
    async fn step_back(&self, adopted: Adopted, refused: StepError, takeover: Takeover) -> StartError {
        self.state.handoff.received_failed.fetch_add(1, Ordering::Relaxed);
        let error = StartError::PredecessorServes(refused);
        tracing::error!("{error}");
        takeover.finish(false, "failed", &error.to_string()).await;
        self.state.set_phase(Phase::Draining);
        adopted.server.drain().begin_graceful();
        let report = adopted.server.finish(self.config.handoff.drain_timeout).await;
        tracing::info!(
            elapsed_ms = report.elapsed.as_millis() as u64,
            "stepped back: the predecessor serves on"
        );
        error
    }

    /// Step 5: serving from now on; reports the handoff complete.
    fn complete(&self, adopted: Adopted, warning: Option<String>, takeover: Takeover, t0: Instant) -> Started {
        let Adopted {
            server,
            config,
            ready,
            unclaimed,
            peer_generation,
        } = adopted;
        // From now on a successor waits for us; taken after the commit so that probing a silent predecessor above
        // does not see our own lock.
        let serving = self.hold_serving();
        drop(unclaimed);
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
        let running = Running {
            server,
            serving,
            config,
        };
        (running, Some(spawn_finish(takeover, "complete", &detail)))
    }

    /// The handoff failed before the commit: bind fresh if the predecessor is gone, else give up (it serves on).
    async fn predecessor_failed(&self, e: StepError, mut takeover: Takeover) -> Result<Started, Stop> {
        crash_if_failpoint(&e.error);
        // A predecessor that refused (it got a stop signal) is draining: binding fresh would serve the ports the
        // pod is giving up. This instance gives up too, naming the reason.
        if matches!(e.error, HandoffError::Refused(_)) {
            self.state.handoff.received_failed.fetch_add(1, Ordering::Relaxed);
            let error = StartError::Handoff(e);
            takeover.finish(false, "failed", &error.to_string()).await;
            return Err(Stop::Failed(error));
        }
        // A predecessor that died mid-handoff releases serving.lock as its process ends (a moment after its socket
        // closed): then binding fresh is safe.
        if self.predecessor_gone(Duration::from_secs(1)).await {
            self.state.handoff.received_fresh.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "the predecessor went away during the handoff: binding fresh");
            let running = self.fresh_or_report(&mut takeover)?;
            let detail = format!("the predecessor went away during the handoff ({e}); bound fresh");
            return Ok((running, Some(spawn_finish(takeover, "fresh", &detail))));
        }
        self.state.handoff.received_failed.fetch_add(1, Ordering::Relaxed);
        let error = StartError::Handoff(e);
        takeover.finish(false, "failed", &error.to_string()).await;
        Err(Stop::Failed(error))
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

    fn fresh_or_report(&self, takeover: &mut Takeover) -> Result<Running, StartError> {
        self.fresh().inspect_err(|e| takeover.report("failed", &e.to_string()))
    }
}

/// Listeners adopted and accepting, not committed yet.
struct Adopted {
    server: Server,
    config: Config,
    ready: Ready,
    /// Valid sockets nobody wants: closed once the handoff is committed.
    unclaimed: Vec<std::os::fd::OwnedFd>,
    peer_generation: u64,
}

/// The clusters of a configuration, at run time.
pub(super) fn clusters(config: &Config) -> Vec<Arc<Cluster>> {
    config.clusters.iter().map(|c| Arc::new(Cluster::new(c))).collect()
}

fn spawn_finish(takeover: Takeover, phase: &'static str, detail: &str) -> JoinHandle<()> {
    let detail = detail.to_string();
    tokio::spawn(async move { takeover.finish(true, phase, &detail).await })
}
