//! What an instance knows about itself, shared by the proxy, the admin endpoint and the handoff: identity,
//! phase, listeners and metrics.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use baton_migrate::{InstanceFile, Role, UdsDir};
use serde::Serialize;

use crate::metrics::{HandoffMetrics, ListenerMetrics};

/// The software version shown in `/status` and logs: `BATON_VERSION` at build time (images set it to their
/// tag, e.g. `v2`), else the crate version.
pub const VERSION: &str = match option_env!("BATON_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Lifecycle of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Reading config, binding.
    Starting = 0,
    /// Takeover: waiting for the predecessor's listeners.
    Waiting = 1,
    /// Accepting on every listener.
    Serving = 2,
    /// Old side: a handoff session is open.
    HandingOff = 3,
    /// Not accepting; finishing what is in flight.
    Draining = 4,
    /// Empty or superseded slot: no listeners.
    Idle = 5,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 6] = [
        Phase::Starting,
        Phase::Waiting,
        Phase::Serving,
        Phase::HandingOff,
        Phase::Draining,
        Phase::Idle,
    ];

    /// Name in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Waiting => "waiting",
            Phase::Serving => "serving",
            Phase::HandingOff => "handing-off",
            Phase::Draining => "draining",
            Phase::Idle => "idle",
        }
    }

    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Waiting,
            2 => Phase::Serving,
            3 => Phase::HandingOff,
            4 => Phase::Draining,
            5 => Phase::Idle,
            _ => Phase::Starting,
        }
    }
}

/// A listener as shown in `/status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ListenerInfo {
    /// Config name (`admin` for the admin listener).
    pub name: String,
    /// Local address.
    pub address: String,
    /// `http`, `tcp` or `admin`.
    pub protocol: String,
    /// `bound` (by this process) or `inherited` (from the predecessor).
    pub origin: &'static str,
}

/// Counts a proxy connection as active for as long as it lives.
pub struct ConnectionGuard {
    metrics: Arc<ListenerMetrics>,
}

impl ConnectionGuard {
    /// Counts a newly accepted connection.
    pub fn new(metrics: &Arc<ListenerMetrics>) -> ConnectionGuard {
        metrics.connections_active.fetch_add(1, Ordering::Relaxed);
        metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            metrics: metrics.clone(),
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Shared instance state.
#[derive(Debug)]
pub struct State {
    /// Role at start, from the Kruise env.
    pub role: Role,
    /// This process's pid (meaningful only inside its own PID namespace).
    pub pid: u32,
    generation: AtomicU64,
    phase: AtomicU8,
    listeners: Mutex<Vec<ListenerInfo>>,
    traffic: Mutex<Vec<Arc<ListenerMetrics>>>,
    instance: Mutex<Option<InstanceFile>>,
    /// Handoff counters.
    pub handoff: HandoffMetrics,
}

/// The `/status` document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Software version.
    pub version: &'static str,
    /// Process id.
    pub pid: u32,
    /// Upgrade generation.
    pub generation: u64,
    /// Role at start.
    pub role: &'static str,
    /// Current phase.
    pub phase: &'static str,
    /// Listeners being served.
    pub listeners: Vec<ListenerInfo>,
    /// Proxy connections open now.
    pub active_connections: i64,
    /// Proxy connections accepted since start.
    pub connections_total: u64,
    /// HTTP requests proxied plus TCP streams relayed.
    pub requests_served: u64,
}

impl State {
    /// A new instance in phase `Starting`, generation 1.
    pub fn new(role: Role) -> Arc<State> {
        Arc::new(State {
            role,
            pid: std::process::id(),
            generation: AtomicU64::new(1),
            phase: AtomicU8::new(Phase::Starting as u8),
            listeners: Mutex::new(Vec::new()),
            traffic: Mutex::new(Vec::new()),
            instance: Mutex::new(None),
            handoff: HandoffMetrics::default(),
        })
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
        self.publish();
    }

    /// Publishes this instance's phase in the uds dir, for `baton status`, from now on.
    pub fn publish_in(&self, dir: &UdsDir) {
        match dir.ensure().and_then(|()| dir.publish_instance(&self.instance_doc())) {
            Ok(file) => {
                if let Ok(mut i) = self.instance.lock() {
                    *i = Some(file);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot publish this instance's status in the uds dir"),
        }
    }

    fn instance_doc(&self) -> String {
        serde_json::json!({
            "version": VERSION,
            "pid": self.pid,
            "generation": self.generation(),
            "role": self.role.as_str(),
            "phase": self.phase().as_str(),
        })
        .to_string()
    }

    fn publish(&self) {
        if let Ok(guard) = self.instance.lock() {
            if let Some(file) = guard.as_ref() {
                if let Err(e) = file.write(&self.instance_doc()) {
                    tracing::debug!(error = %e, "cannot update the instance file");
                }
            }
        }
    }

    /// Upgrade generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Sets the upgrade generation (after a takeover).
    pub fn set_generation(&self, g: u64) {
        self.generation.store(g, Ordering::Relaxed);
        self.publish();
    }

    /// Records the listeners being served.
    pub fn set_listeners(&self, listeners: Vec<ListenerInfo>) {
        if let Ok(mut l) = self.listeners.lock() {
            *l = listeners;
        }
    }

    /// Registers the traffic metrics of a proxy listener.
    pub fn register(&self, metrics: Arc<ListenerMetrics>) {
        if let Ok(mut t) = self.traffic.lock() {
            t.push(metrics);
        }
    }

    fn traffic(&self) -> Vec<Arc<ListenerMetrics>> {
        self.traffic.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Proxy connections open now.
    pub fn active_connections(&self) -> i64 {
        self.traffic()
            .iter()
            .map(|m| m.connections_active.load(Ordering::Relaxed))
            .sum()
    }

    /// The `/metrics` document.
    pub fn metrics(&self) -> String {
        let phases: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        crate::metrics::render(&crate::metrics::Snapshot {
            version: VERSION,
            role: self.role.as_str(),
            phase: self.phase().as_str(),
            phases: &phases,
            generation: self.generation(),
            listeners: &self.traffic(),
            handoff: &self.handoff,
        })
    }

    /// Snapshot for `/status`.
    pub fn status(&self) -> Status {
        let traffic = self.traffic();
        Status {
            version: VERSION,
            pid: self.pid,
            generation: self.generation(),
            role: self.role.as_str(),
            phase: self.phase().as_str(),
            listeners: self.listeners.lock().map(|l| l.clone()).unwrap_or_default(),
            active_connections: traffic
                .iter()
                .map(|m| m.connections_active.load(Ordering::Relaxed))
                .sum(),
            connections_total: traffic
                .iter()
                .map(|m| m.connections_total.load(Ordering::Relaxed))
                .sum(),
            requests_served: traffic.iter().map(|m| m.requests_total()).sum(),
        }
    }
}
