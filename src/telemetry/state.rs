//! What an instance knows about itself, shared by the proxy, the admin endpoint and the handoff: identity,
//! phase, listeners and metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use baton_migrate::{InstanceFile, Role, UdsDir};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::telemetry::metrics::{HandoffCounters, HandoffMetrics, ListenerCounters, ListenerMetrics, Problems};
use crate::VERSION;

/// Listeners of a predecessor's counters snapshot kept while no listener of that name is registered here.
const MAX_PENDING_LISTENERS: usize = 1024;

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
    /// Empty slot, or one restarted after it was superseded: no listeners.
    Idle = 5,
    /// Handed everything over and drained, under the Kruise env: holds nothing and waits for the SIGTERM of the
    /// slot's reset, instead of exiting into a kubelet restart.
    Superseded = 6,
}

impl Phase {
    /// Every phase.
    pub const ALL: [Phase; 7] = [
        Phase::Starting,
        Phase::Waiting,
        Phase::Serving,
        Phase::HandingOff,
        Phase::Draining,
        Phase::Idle,
        Phase::Superseded,
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
            Phase::Superseded => "superseded",
        }
    }

    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Waiting,
            2 => Phase::Serving,
            3 => Phase::HandingOff,
            4 => Phase::Draining,
            5 => Phase::Idle,
            6 => Phase::Superseded,
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

    /// Counts a connection handed over by the predecessor: open here now, but accepted (and counted in
    /// `connections_total`, which carries over) by the predecessor.
    pub fn adopted(metrics: &Arc<ListenerMetrics>) -> ConnectionGuard {
        metrics.connections_active.fetch_add(1, Ordering::Relaxed);
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
    traffic: Mutex<Traffic>,
    instance: Mutex<Option<InstanceFile>>,
    /// The uds dir this instance published itself in.
    dir: Mutex<Option<UdsDir>>,
    /// Handoff counters.
    pub handoff: HandoffMetrics,
}

/// The proxy listeners' metrics, and the counters inherited from the predecessor: one lock, so that a listener
/// registered while a snapshot is applied gets the inherited values exactly once.
#[derive(Debug, Default)]
struct Traffic {
    listeners: Vec<Arc<ListenerMetrics>>,
    /// Per listener name: the greatest values applied from the predecessor's snapshots so far, i.e. what its
    /// metrics hold on top of their own (or will, once registered).
    inherited: HashMap<String, InheritedListener>,
    /// The same for the handoff counters.
    inherited_handoff: HandoffCounters,
}

#[derive(Debug, Default)]
struct InheritedListener {
    /// The predecessor's protocol for this listener, when its snapshot said.
    protocol: Option<String>,
    counters: ListenerCounters,
}

impl InheritedListener {
    fn fits(&self, m: &ListenerMetrics) -> bool {
        match &self.protocol {
            Some(p) => p == m.protocol,
            None => true,
        }
    }
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
    /// The other live instances on the uds dir (the pod's other slot: an empty slot, a superseded instance still
    /// draining or idle, a successor): each one's `version`, `pid` (in its own PID namespace), `generation`,
    /// `role` and `phase`.
    pub others: Vec<serde_json::Value>,
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
            traffic: Mutex::new(Traffic::default()),
            instance: Mutex::new(None),
            dir: Mutex::new(None),
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
                if let Ok(mut d) = self.dir.lock() {
                    *d = Some(dir.clone());
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

    /// Registers the traffic metrics of a proxy listener. Counters already inherited from the predecessor for a
    /// listener of that name (and protocol) are added to them now.
    pub fn register(&self, metrics: Arc<ListenerMetrics>) {
        let mut t = self.lock_traffic();
        // Registered again (an instance serving again after its successor died): the counters carry on, the
        // inherited ones included.
        if let Some(earlier) = t.listeners.iter().position(|m| m.name == metrics.name) {
            let earlier = t.listeners.swap_remove(earlier);
            if earlier.protocol == metrics.protocol {
                metrics.add_counters(&earlier.counters());
            }
        } else if let Some(inherited) = t.inherited.get(&metrics.name) {
            if inherited.fits(&metrics) {
                metrics.add_counters(&inherited.counters);
            } else {
                tracing::warn!(
                    listener = %metrics.name,
                    protocol = metrics.protocol,
                    predecessor_protocol = inherited.protocol.as_deref().unwrap_or(""),
                    "the predecessor's listener of this name spoke another protocol: its counters are not inherited"
                );
            }
        }
        t.listeners.push(metrics);
    }

    fn lock_traffic(&self) -> MutexGuard<'_, Traffic> {
        self.traffic.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn traffic(&self) -> Vec<Arc<ListenerMetrics>> {
        self.lock_traffic().listeners.clone()
    }

    /// Every counter this instance exports on `/metrics` (inherited values included, gauges left out), for a
    /// successor's [`State::inherit_counters`]:
    ///
    /// ```json
    /// {"listeners": {"ingress": {"protocol": "http", "requests": [0, 12, 0, 1, 2], "bytes_in": 1, "bytes_out": 2,
    ///                            "connections_total": 3, "upstream_connect_errors": 0, "upstream_timeouts": 0,
    ///                            "stream_idle_timeouts": 0,
    ///                            "duration": {"bounds": [...], "buckets": [...], "count": 15, "sum_nanos": 9}}},
    ///  "handoff": {"sent_committed": 1, "sent_failed": 0, "received_committed": 1, "received_fresh": 0,
    ///              "received_failed": 0, "duration": {...}}}
    /// ```
    pub fn counters_snapshot(&self) -> Value {
        let mut by_name: BTreeMap<String, (&'static str, ListenerCounters)> = BTreeMap::new();
        for m in self.traffic() {
            let (_, sum) = by_name
                .entry(m.name.clone())
                .or_insert((m.protocol, ListenerCounters::default()));
            *sum = sum.plus(&m.counters());
        }
        let listeners: Map<String, Value> = by_name
            .into_iter()
            .map(|(name, (protocol, c))| (name, c.to_json(protocol)))
            .collect();
        serde_json::json!({
            "listeners": listeners,
            "handoff": self.handoff.counters().to_json(),
        })
    }

    /// Continues the predecessor's counters: applies its [`State::counters_snapshot`] so that each counter this
    /// instance exports is its own count plus the predecessor's.
    ///
    /// May be called again with later snapshots of the same predecessor (e.g. at the start of the handoff, then
    /// once it has drained): each call adds only what grew since the values already applied, per counter; a
    /// counter never decreases. A listener registered later ([`State::register`]) gets the values applied so far
    /// at registration. Listeners of the snapshot that this instance never registers are ignored, as is a
    /// listener whose protocol differs from this instance's listener of the same name. Gauges are not inherited.
    /// Whatever does not parse is ignored, with one warning.
    pub fn inherit_counters(&self, snapshot: &Value) {
        let mut problems = Problems::default();
        let mut handoff = None;
        let mut listeners = Vec::new();
        match snapshot.as_object() {
            None => problems.push(|| "the snapshot is not a JSON object".to_string()),
            Some(obj) => {
                match obj.get("handoff") {
                    Some(h) => handoff = Some(HandoffCounters::from_json(h, "handoff", &mut problems)),
                    None => problems.push(|| "handoff: missing".to_string()),
                }
                match obj.get("listeners") {
                    Some(Value::Object(m)) => {
                        for (name, v) in m {
                            let at = format!("listeners[{}]", short(name));
                            if let Some((counters, protocol)) = ListenerCounters::from_json(v, &at, &mut problems) {
                                listeners.push((name, counters, protocol));
                            }
                        }
                    }
                    Some(_) => problems.push(|| "listeners: not an object".to_string()),
                    None => problems.push(|| "listeners: missing".to_string()),
                }
            }
        }

        let mut guard = self.lock_traffic();
        let t = &mut *guard;
        if let Some(h) = handoff {
            self.handoff.add_counters(&h.minus(&t.inherited_handoff));
            t.inherited_handoff = t.inherited_handoff.max(&h);
        }
        for (name, counters, protocol) in listeners {
            let registered = t.listeners.iter().any(|m| m.name == *name);
            if !registered && !t.inherited.contains_key(name) && t.inherited.len() >= MAX_PENDING_LISTENERS {
                problems.push(|| format!("listeners[{}]: too many listeners; ignored", short(name)));
                continue;
            }
            let entry = t.inherited.entry(name.clone()).or_default();
            match (&entry.protocol, protocol) {
                (Some(had), Some(now)) if *had != now => {
                    problems.push(|| format!("listeners[{}].protocol: {now}, was {had}; ignored", short(name)));
                    continue;
                }
                (None, Some(now)) => entry.protocol = Some(now),
                _ => {}
            }
            let grown = counters.minus(&entry.counters);
            entry.counters = entry.counters.max(&counters);
            for m in t.listeners.iter().filter(|m| m.name == *name) {
                if entry.fits(m) {
                    m.add_counters(&grown);
                } else {
                    problems.push(|| {
                        format!(
                            "listeners[{}]: the predecessor's is {}, this instance's {}; not inherited",
                            short(name),
                            entry.protocol.as_deref().unwrap_or(""),
                            m.protocol
                        )
                    });
                }
            }
        }
        drop(guard);
        if !problems.is_empty() {
            tracing::warn!(
                problems = problems.count,
                first = ?problems.first,
                "the predecessor's counters snapshot is partly unreadable: what did not parse is ignored"
            );
        }
    }

    /// Proxy connections open now.
    pub fn active_connections(&self) -> i64 {
        self.traffic().iter().fold(0, |sum, m| {
            sum.saturating_add(m.connections_active.load(Ordering::Relaxed))
        })
    }

    /// The `/metrics` document.
    pub fn metrics(&self) -> String {
        let phases: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        crate::telemetry::metrics::render(&crate::telemetry::metrics::Snapshot {
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
            active_connections: traffic.iter().fold(0, |sum, m| {
                sum.saturating_add(m.connections_active.load(Ordering::Relaxed))
            }),
            connections_total: traffic.iter().fold(0, |sum, m| {
                sum.saturating_add(m.connections_total.load(Ordering::Relaxed))
            }),
            requests_served: traffic.iter().fold(0, |sum, m| sum.saturating_add(m.requests_total())),
            others: self.others(),
        }
    }

    /// The status documents of the other live instances on the uds dir, oldest generation first.
    fn others(&self) -> Vec<serde_json::Value> {
        let Some(dir) = self.dir.lock().ok().and_then(|d| d.clone()) else {
            return Vec::new();
        };
        // Our own file holds our current document (pids alone may repeat across the slots' PID namespaces).
        let mine = self.instance_doc();
        let mut others: Vec<serde_json::Value> = dir
            .live_instances()
            .unwrap_or_default()
            .iter()
            .filter(|text| **text != mine)
            .filter_map(|text| serde_json::from_str::<serde_json::Value>(text).ok())
            .collect();
        others.sort_by_key(|d| d["generation"].as_u64().unwrap_or(0));
        others
    }
}

/// A listener name for the log, cut short.
fn short(name: &str) -> String {
    match name.char_indices().nth(40) {
        Some((i, _)) => format!("{:?}...", &name[..i]),
        None => format!("{name:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn listener(state: &State, name: &str, protocol: &'static str) -> Arc<ListenerMetrics> {
        let m = Arc::new(ListenerMetrics::new(name, protocol));
        state.register(m.clone());
        m
    }

    /// Some traffic: `n` 200s and one 502 of 3 ms, `n` bytes each way, `n` connections, one connect error.
    fn traffic(m: &ListenerMetrics, n: u64) {
        for _ in 0..n {
            m.response(200, Duration::from_millis(3));
            m.connections_total.fetch_add(1, Ordering::Relaxed);
        }
        m.response(502, Duration::from_millis(3));
        m.bytes_in.fetch_add(n, Ordering::Relaxed);
        m.bytes_out.fetch_add(n * 10, Ordering::Relaxed);
        m.upstream_connect_errors.fetch_add(1, Ordering::Relaxed);
    }

    fn expect(m: &ListenerMetrics, ok: u64, failed: u64, connections: u64, bytes_in: u64) {
        let c = m.counters();
        assert_eq!(c.requests, [0, ok, 0, 0, failed], "{c:?}");
        assert_eq!(c.connections_total, connections, "{c:?}");
        assert_eq!(c.bytes_in, bytes_in, "{c:?}");
        assert_eq!(c.bytes_out, bytes_in * 10, "{c:?}");
        assert_eq!(c.upstream_connect_errors, failed, "{c:?}");
        assert_eq!(c.duration.count, ok + failed, "{c:?}");
        assert_eq!(
            c.duration.buckets[3],
            ok + failed,
            "3 ms lands in the 5 ms bucket: {c:?}"
        );
        assert_eq!(c.duration.sum_nanos, (ok + failed) * 3_000_000, "{c:?}");
    }

    #[test]
    fn snapshot_has_every_counter_and_no_gauge() {
        let a = State::new(Role::Fresh);
        let m = listener(&a, "ingress", "http");
        traffic(&m, 4);
        m.upstream_timeouts.fetch_add(2, Ordering::Relaxed);
        m.stream_idle_timeouts.fetch_add(3, Ordering::Relaxed);
        let _open = crate::telemetry::state::ConnectionGuard::new(&m);
        a.handoff.sent_failed.fetch_add(1, Ordering::Relaxed);
        a.handoff.duration.observe(Duration::from_millis(2));
        let s = a.counters_snapshot();
        let l = &s["listeners"]["ingress"];
        assert_eq!(l["protocol"], "http");
        assert_eq!(l["requests"], json!([0, 4, 0, 0, 1]));
        assert_eq!(l["bytes_in"], 4);
        assert_eq!(l["bytes_out"], 40);
        assert_eq!(l["connections_total"], 5, "4 counted by hand, 1 by the guard");
        assert_eq!(l["upstream_connect_errors"], 1);
        assert_eq!(l["upstream_timeouts"], 2);
        assert_eq!(l["stream_idle_timeouts"], 3);
        assert_eq!(l["duration"]["count"], 5);
        assert_eq!(l["duration"]["sum_nanos"], 15_000_000);
        assert_eq!(l["duration"]["buckets"].as_array().map(Vec::len), Some(14));
        assert!(l.get("connections_active").is_none(), "{l}");
        assert_eq!(s["handoff"]["sent_failed"], 1);
        assert_eq!(s["handoff"]["sent_committed"], 0);
        assert_eq!(s["handoff"]["duration"]["count"], 1);
        // It survives the wire.
        let back: Value = serde_json::from_str(&s.to_string()).expect("json");
        assert_eq!(back, s);
    }

    #[test]
    fn applied_before_or_after_register_alike() {
        let a = State::new(Role::Fresh);
        traffic(&listener(&a, "ingress", "http"), 5);
        a.handoff.sent_committed.fetch_add(1, Ordering::Relaxed);
        let snap = a.counters_snapshot();

        // Before: kept pending, added at register.
        let before = State::new(Role::Takeover);
        before.inherit_counters(&snap);
        assert_eq!(before.handoff.sent_committed.load(Ordering::Relaxed), 1);
        let m = listener(&before, "ingress", "http");
        expect(&m, 5, 1, 5, 5);
        traffic(&m, 2);
        expect(&m, 7, 2, 7, 7);

        // After: added at once.
        let after = State::new(Role::Takeover);
        let m = listener(&after, "ingress", "http");
        traffic(&m, 2);
        after.inherit_counters(&snap);
        expect(&m, 7, 2, 7, 7);
        assert_eq!(after.counters_snapshot(), before.counters_snapshot());
    }

    #[test]
    fn growing_snapshots_add_only_the_growth() {
        let a = State::new(Role::Fresh);
        let old = listener(&a, "ingress", "http");
        traffic(&old, 3);
        let first = a.counters_snapshot();

        let b = State::new(Role::Takeover);
        let new = listener(&b, "ingress", "http");
        b.inherit_counters(&first);
        expect(&new, 3, 1, 3, 3);
        traffic(&new, 10);
        expect(&new, 13, 2, 13, 13);

        // The old instance keeps serving and draining; its final snapshot adds only what it did since.
        traffic(&old, 4);
        a.handoff.sent_committed.fetch_add(1, Ordering::Relaxed);
        let last = a.counters_snapshot();
        b.inherit_counters(&last);
        expect(&new, 17, 3, 17, 17);
        assert_eq!(b.handoff.sent_committed.load(Ordering::Relaxed), 1);

        // The same snapshot again, or an older one, changes nothing: no counter ever decreases.
        b.inherit_counters(&last);
        b.inherit_counters(&first);
        expect(&new, 17, 3, 17, 17);
        assert_eq!(b.handoff.sent_committed.load(Ordering::Relaxed), 1);

        // A snapshot where one counter went down and another up: only the one that grew is added.
        let mut odd = last.clone();
        odd["listeners"]["ingress"]["bytes_in"] = json!(0);
        odd["listeners"]["ingress"]["upstream_timeouts"] = json!(5);
        b.inherit_counters(&odd);
        expect(&new, 17, 3, 17, 17);
        assert_eq!(new.upstream_timeouts.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_chain_of_upgrades_accumulates() {
        let a = State::new(Role::Fresh);
        traffic(&listener(&a, "ingress", "http"), 1);
        a.handoff.sent_committed.fetch_add(1, Ordering::Relaxed);

        let b = State::new(Role::Takeover);
        b.inherit_counters(&a.counters_snapshot());
        let mb = listener(&b, "ingress", "http");
        b.handoff.received_committed.fetch_add(1, Ordering::Relaxed);
        traffic(&mb, 10);
        b.handoff.sent_committed.fetch_add(1, Ordering::Relaxed);

        let c = State::new(Role::Takeover);
        let mc = listener(&c, "ingress", "http");
        c.inherit_counters(&b.counters_snapshot());
        c.handoff.received_committed.fetch_add(1, Ordering::Relaxed);
        traffic(&mc, 100);
        expect(&mc, 111, 3, 111, 111);
        assert_eq!(c.handoff.sent_committed.load(Ordering::Relaxed), 2);
        assert_eq!(c.handoff.received_committed.load(Ordering::Relaxed), 2);
        assert_eq!(c.status().requests_served, 114);
        assert_eq!(c.status().connections_total, 111);
    }

    #[test]
    fn unknown_listeners_and_other_protocols_are_ignored() {
        let a = State::new(Role::Fresh);
        traffic(&listener(&a, "gone", "http"), 3);
        traffic(&listener(&a, "switched", "http"), 3);
        traffic(&listener(&a, "kept", "tcp"), 3);
        let b = State::new(Role::Takeover);
        b.inherit_counters(&a.counters_snapshot());
        let switched = listener(&b, "switched", "tcp");
        let kept = listener(&b, "kept", "tcp");
        assert_eq!(switched.counters(), ListenerCounters::default());
        expect(&kept, 3, 1, 3, 3);
        let s = b.counters_snapshot();
        assert!(s["listeners"].get("gone").is_none(), "{s}");
        assert!(!b.metrics().contains("listener=\"gone\""));

        // Registered first, then a snapshot with another protocol: not applied either.
        let c = State::new(Role::Takeover);
        let switched = listener(&c, "switched", "tcp");
        c.inherit_counters(&a.counters_snapshot());
        assert_eq!(switched.counters(), ListenerCounters::default());
    }

    #[test]
    fn gauges_are_not_inherited() {
        let a = State::new(Role::Fresh);
        let m = listener(&a, "ingress", "http");
        let _guards: Vec<ConnectionGuard> = (0..3).map(|_| ConnectionGuard::new(&m)).collect();
        a.set_phase(Phase::Draining);
        assert!(a.metrics().contains("baton_drain_connections_remaining 3\n"));
        a.set_generation(7);

        let b = State::new(Role::Takeover);
        let n = listener(&b, "ingress", "http");
        b.inherit_counters(&a.counters_snapshot());
        b.set_phase(Phase::Draining);
        assert_eq!(n.connections_active.load(Ordering::Relaxed), 0);
        assert_eq!(n.connections_total.load(Ordering::Relaxed), 3);
        assert_eq!(b.active_connections(), 0);
        assert_eq!(b.generation(), 1);
        let text = b.metrics();
        assert!(
            text.contains("baton_connections_active{listener=\"ingress\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("baton_connections_total{listener=\"ingress\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("baton_drain_connections_remaining 0\n"), "{text}");
    }

    #[test]
    fn metrics_text_shows_the_sums() {
        let a = State::new(Role::Fresh);
        let old = listener(&a, "ingress", "http");
        traffic(&old, 4);
        old.upstream_timeouts.fetch_add(1, Ordering::Relaxed);
        old.stream_idle_timeouts.fetch_add(2, Ordering::Relaxed);
        a.handoff.sent_committed.fetch_add(1, Ordering::Relaxed);
        a.handoff.duration.observe(Duration::from_millis(4));

        let b = State::new(Role::Takeover);
        let new = listener(&b, "ingress", "http");
        traffic(&new, 6);
        new.response(404, Duration::from_secs(60));
        b.handoff.received_committed.fetch_add(1, Ordering::Relaxed);
        b.handoff.duration.observe(Duration::from_millis(1));
        b.inherit_counters(&a.counters_snapshot());

        let text = b.metrics();
        for line in [
            "baton_requests_total{listener=\"ingress\",protocol=\"http\",class=\"2xx\"} 10\n",
            "baton_requests_total{listener=\"ingress\",protocol=\"http\",class=\"4xx\"} 1\n",
            "baton_requests_total{listener=\"ingress\",protocol=\"http\",class=\"5xx\"} 2\n",
            "baton_request_duration_seconds_bucket{listener=\"ingress\",le=\"0.005\"} 12\n",
            "baton_request_duration_seconds_bucket{listener=\"ingress\",le=\"10\"} 12\n",
            "baton_request_duration_seconds_bucket{listener=\"ingress\",le=\"+Inf\"} 13\n",
            "baton_request_duration_seconds_count{listener=\"ingress\"} 13\n",
            "baton_request_duration_seconds_sum{listener=\"ingress\"} 60.036\n",
            "baton_connections_total{listener=\"ingress\"} 10\n",
            "baton_received_bytes_total{listener=\"ingress\"} 10\n",
            "baton_sent_bytes_total{listener=\"ingress\"} 100\n",
            "baton_upstream_connect_errors_total{listener=\"ingress\"} 2\n",
            "baton_upstream_timeouts_total{listener=\"ingress\"} 1\n",
            "baton_stream_idle_timeouts_total{listener=\"ingress\"} 2\n",
            "baton_handoffs_total{side=\"old\",outcome=\"committed\"} 1\n",
            "baton_handoffs_total{side=\"new\",outcome=\"committed\"} 1\n",
            "baton_handoff_duration_seconds_bucket{le=\"0.001\"} 1\n",
            "baton_handoff_duration_seconds_bucket{le=\"0.005\"} 2\n",
            "baton_handoff_duration_seconds_count 2\n",
            "baton_handoff_duration_seconds_sum 0.005\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn garbage_never_panics_and_what_parses_is_kept() {
        let b = State::new(Role::Takeover);
        let m = listener(&b, "ingress", "http");
        let deep = format!("{}1{}", "[".repeat(120), "]".repeat(120));
        let deep: Value = serde_json::from_str(&deep).expect("within serde_json's depth limit");
        let huge: Value = serde_json::from_str("1e400").unwrap_or(Value::Null);
        let beyond_u64: Value = serde_json::from_str("18446744073709551616").expect("parses as a float");
        for garbage in [
            Value::Null,
            json!(5),
            json!("listeners"),
            json!([]),
            json!({}),
            json!({"listeners": 5, "handoff": []}),
            json!({"listeners": [{"ingress": {}}], "handoff": {"sent_committed": "1"}}),
            json!({"listeners": {"ingress": null}}),
            json!({"listeners": {"ingress": {"protocol": 7}}}),
            json!({"listeners": {"ingress": {"protocol": "udp", "bytes_in": 5}}}),
            json!({"listeners": {"ingress": deep.clone()}, "handoff": deep.clone()}),
            json!({"listeners": {"ingress": {"requests": deep.clone(), "bytes_in": deep, "duration": "x"}}}),
            json!({"listeners": {"ingress": {"requests": [-1, 1.5, "2", null, huge], "bytes_in": beyond_u64}}}),
            json!({"listeners": {"ingress": {"requests": [], "duration": {"bounds": [1], "buckets": [1], "count": 1}}}}),
            json!({"listeners": {"ingress": {"duration": {"bounds": null, "count": 9}}}}),
            json!({"handoff": {"sent_committed": -3, "duration": {"count": 2}}}),
        ] {
            b.inherit_counters(&garbage);
            assert_eq!(m.counters(), ListenerCounters::default(), "{garbage}");
            assert_eq!(b.handoff.counters(), HandoffCounters::default(), "{garbage}");
        }

        // Partly valid: the good fields count, the bad ones are ignored.
        let mut partial = State::new(Role::Fresh).counters_snapshot();
        partial["listeners"] = json!({"ingress": {
            "requests": [1, 2, "x", 4, 5, 6],
            "bytes_in": 7,
            "bytes_out": -1,
            "connections_total": 3,
            "duration": {"bounds": [1, 2], "buckets": [1, 1], "count": 2, "sum_nanos": 0},
        }});
        partial["handoff"]["received_fresh"] = json!(2);
        partial["handoff"]["sent_failed"] = json!({"deep": [1]});
        b.inherit_counters(&partial);
        let c = m.counters();
        assert_eq!(c.requests, [1, 2, 0, 4, 5], "{c:?}");
        assert_eq!((c.bytes_in, c.bytes_out, c.connections_total), (7, 0, 3), "{c:?}");
        assert_eq!(c.duration, Default::default(), "another version's buckets: ignored");
        assert_eq!(b.handoff.received_fresh.load(Ordering::Relaxed), 2);
        assert_eq!(b.handoff.sent_failed.load(Ordering::Relaxed), 0);
    }

    /// The count of probations that ended with the successor dead carries over an upgrade and shows in
    /// `/metrics`; a predecessor too old to send it is not a problem (it counts 0).
    #[test]
    fn resumed_handoffs_carry_over_and_an_older_predecessor_without_them_is_no_problem() {
        let a = State::new(Role::Fresh);
        a.handoff.sent_committed.fetch_add(3, Ordering::Relaxed);
        a.handoff.sent_resumed.fetch_add(2, Ordering::Relaxed);
        let mut snapshot = a.counters_snapshot();
        let b = State::new(Role::Takeover);
        b.inherit_counters(&snapshot);
        assert_eq!(b.handoff.sent_resumed.load(Ordering::Relaxed), 2);
        let mut text = String::new();
        crate::telemetry::metrics::render_handoffs(&mut text, &b.handoff);
        assert!(
            text.contains("baton_handoffs_total{side=\"old\",outcome=\"resumed\"} 2\n"),
            "{text}"
        );

        if let Some(h) = snapshot["handoff"].as_object_mut() {
            h.remove("sent_resumed");
        }
        let mut problems = Problems::default();
        let older = HandoffCounters::from_json(&snapshot["handoff"], "handoff", &mut problems);
        assert!(problems.is_empty(), "{:?}", problems.first);
        assert_eq!((older.sent_committed, older.sent_resumed), (3, 0));
    }

    #[test]
    fn huge_values_saturate_and_render() {
        let b = State::new(Role::Takeover);
        let m = listener(&b, "ingress", "http");
        traffic(&m, 2);
        let max = u64::MAX;
        let mut s = b.counters_snapshot();
        s["listeners"]["ingress"]["requests"] = json!([max, max, max, max, max]);
        s["listeners"]["ingress"]["bytes_in"] = json!(max);
        s["listeners"]["ingress"]["duration"]["buckets"] = json!([max; 14].to_vec());
        s["listeners"]["ingress"]["duration"]["count"] = json!(max);
        s["handoff"]["sent_committed"] = json!(max);
        b.inherit_counters(&s);
        b.inherit_counters(&s);
        let c = m.counters();
        assert_eq!(c.requests, [max; 5]);
        assert_eq!(c.bytes_in, max);
        assert_eq!(c.duration.count, max);
        assert_eq!(b.status().requests_served, max);
        let text = b.metrics();
        assert!(
            text.contains(&format!("baton_received_bytes_total{{listener=\"ingress\"}} {max}\n")),
            "{text}"
        );
        assert!(text.contains(&format!("le=\"+Inf\"}} {max}\n")), "{text}");
        assert!(text.contains(&format!(
            "baton_handoffs_total{{side=\"old\",outcome=\"committed\"}} {max}\n"
        )));
    }

    #[test]
    fn pending_listeners_are_bounded() {
        let b = State::new(Role::Takeover);
        let mut listeners = Map::new();
        let one = State::new(Role::Fresh);
        traffic(&listener(&one, "x", "tcp"), 1);
        let counters = one.counters_snapshot()["listeners"]["x"].clone();
        for i in 0..MAX_PENDING_LISTENERS + 10 {
            listeners.insert(format!("l{i:05}"), counters.clone());
        }
        b.inherit_counters(&json!({"listeners": listeners, "handoff": {}}));
        assert_eq!(b.lock_traffic().inherited.len(), MAX_PENDING_LISTENERS);
    }
}
