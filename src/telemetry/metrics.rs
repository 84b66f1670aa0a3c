//! Prometheus metrics, hand-rolled: a few atomics per listener, rendered in the text exposition format on the
//! admin port's `/metrics`. Nothing here allocates or locks on the request path.
//!
//! Counters continue across an upgrade: [`ListenerCounters`] and [`HandoffCounters`] are plain copies of an
//! instance's counters, written to and read from JSON (see `State::counters_snapshot`), and added into a
//! successor's atomics. Gauges are never copied.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// Upper bounds (seconds) of the request and handoff duration histograms.
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A copy of the current values.
    pub fn counts(&self) -> HistogramCounts {
        HistogramCounts {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            count: self.count.load(Ordering::Relaxed),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }

    /// Adds `c` to the current values (saturating).
    pub fn add(&self, c: &HistogramCounts) {
        for (b, v) in self.buckets.iter().zip(c.buckets) {
            add_saturating(b, v);
        }
        add_saturating(&self.count, c.count);
        add_saturating(&self.sum_nanos, c.sum_nanos);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative: u64 = 0;
        for (bound, bucket) in BOUNDS.iter().zip(&self.buckets) {
            cumulative = cumulative.saturating_add(bucket.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Traffic of one proxy listener.
#[derive(Debug)]
pub struct ListenerMetrics {
    /// Listener name (label `listener`).
    pub name: String,
    /// `http` or `tcp`.
    pub protocol: &'static str,
    /// HTTP responses by status class 1xx..5xx; TCP streams relayed count as 2xx.
    pub requests: [AtomicU64; 5],
    /// HTTP: time from request head to response head.
    pub duration: Histogram,
    /// Client connections open now.
    pub connections_active: AtomicI64,
    /// Client connections accepted.
    pub connections_total: AtomicU64,
    /// Bytes read from clients.
    pub bytes_in: AtomicU64,
    /// Bytes written to clients.
    pub bytes_out: AtomicU64,
    /// Upstream connections that could not be opened.
    pub upstream_connect_errors: AtomicU64,
    /// Upstream responses that did not arrive in time.
    pub upstream_timeouts: AtomicU64,
    /// HTTP exchanges and upgraded connections ended because no byte moved either way for the cluster's
    /// `stream_idle_timeout`.
    pub stream_idle_timeouts: AtomicU64,
}

impl ListenerMetrics {
    /// Zeroed metrics for a listener.
    pub fn new(name: &str, protocol: &'static str) -> ListenerMetrics {
        ListenerMetrics {
            name: name.to_string(),
            protocol,
            requests: Default::default(),
            duration: Histogram::default(),
            connections_active: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            upstream_connect_errors: AtomicU64::new(0),
            upstream_timeouts: AtomicU64::new(0),
            stream_idle_timeouts: AtomicU64::new(0),
        }
    }

    /// Counts a response with this HTTP status.
    pub fn response(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        self.duration.observe(took);
    }

    /// All requests, any class.
    pub fn requests_total(&self) -> u64 {
        self.requests
            .iter()
            .fold(0, |sum, c| sum.saturating_add(c.load(Ordering::Relaxed)))
    }

    /// A copy of the counters (not the gauges).
    pub fn counters(&self) -> ListenerCounters {
        ListenerCounters {
            requests: std::array::from_fn(|i| self.requests[i].load(Ordering::Relaxed)),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            upstream_connect_errors: self.upstream_connect_errors.load(Ordering::Relaxed),
            upstream_timeouts: self.upstream_timeouts.load(Ordering::Relaxed),
            stream_idle_timeouts: self.stream_idle_timeouts.load(Ordering::Relaxed),
            duration: self.duration.counts(),
        }
    }

    /// Adds `c` to the counters (saturating); the gauges are untouched.
    pub fn add_counters(&self, c: &ListenerCounters) {
        for (a, v) in self.requests.iter().zip(c.requests) {
            add_saturating(a, v);
        }
        add_saturating(&self.bytes_in, c.bytes_in);
        add_saturating(&self.bytes_out, c.bytes_out);
        add_saturating(&self.connections_total, c.connections_total);
        add_saturating(&self.upstream_connect_errors, c.upstream_connect_errors);
        add_saturating(&self.upstream_timeouts, c.upstream_timeouts);
        add_saturating(&self.stream_idle_timeouts, c.stream_idle_timeouts);
        self.duration.add(&c.duration);
    }
}

/// Handoffs seen by this instance.
#[derive(Debug, Default)]
pub struct HandoffMetrics {
    /// Old side: committed handoffs to a successor.
    pub sent_committed: AtomicU64,
    /// Old side: failed attempts (this instance kept serving).
    pub sent_failed: AtomicU64,
    /// Old side: committed handoffs whose successor died during the probation (this instance serves again).
    pub sent_resumed: AtomicU64,
    /// New side: took over from a predecessor.
    pub received_committed: AtomicU64,
    /// New side: found no live predecessor and bound fresh.
    pub received_fresh: AtomicU64,
    /// New side: the takeover failed.
    pub received_failed: AtomicU64,
    /// Duration of handoffs, either side, from first contact to DONE.
    pub duration: Histogram,
}

impl HandoffMetrics {
    /// A copy of the counters.
    pub fn counters(&self) -> HandoffCounters {
        HandoffCounters {
            sent_committed: self.sent_committed.load(Ordering::Relaxed),
            sent_failed: self.sent_failed.load(Ordering::Relaxed),
            sent_resumed: self.sent_resumed.load(Ordering::Relaxed),
            received_committed: self.received_committed.load(Ordering::Relaxed),
            received_fresh: self.received_fresh.load(Ordering::Relaxed),
            received_failed: self.received_failed.load(Ordering::Relaxed),
            duration: self.duration.counts(),
        }
    }

    /// Adds `c` to the counters (saturating).
    pub fn add_counters(&self, c: &HandoffCounters) {
        add_saturating(&self.sent_committed, c.sent_committed);
        add_saturating(&self.sent_failed, c.sent_failed);
        add_saturating(&self.sent_resumed, c.sent_resumed);
        add_saturating(&self.received_committed, c.received_committed);
        add_saturating(&self.received_fresh, c.received_fresh);
        add_saturating(&self.received_failed, c.received_failed);
        self.duration.add(&c.duration);
    }
}

/// Adds without wrapping: an inherited value never turns a counter back towards zero.
fn add_saturating(a: &AtomicU64, v: u64) {
    if v != 0 {
        let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(x.saturating_add(v)));
    }
}

/// Problems found while reading a counters snapshot; the caller logs them once.
#[derive(Debug, Default)]
pub struct Problems {
    /// The first few, for the log.
    pub first: Vec<String>,
    /// How many in all.
    pub count: usize,
}

impl Problems {
    /// Problems kept for the log; the rest are only counted.
    const KEPT: usize = 8;

    /// Records one problem.
    pub fn push(&mut self, p: impl FnOnce() -> String) {
        if self.first.len() < Self::KEPT {
            self.first.push(p());
        }
        self.count += 1;
    }

    /// True when there was none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Reads a counter: a JSON unsigned integer that fits in 64 bits. Anything else, or no such field, counts as 0 and
/// is reported.
fn read_u64(obj: &Map<String, Value>, key: &str, at: &str, problems: &mut Problems) -> u64 {
    match obj.get(key) {
        Some(v) => v.as_u64().unwrap_or_else(|| {
            problems.push(|| format!("{at}.{key}: {} is not a counter", brief(v)));
            0
        }),
        None => {
            problems.push(|| format!("{at}.{key}: missing"));
            0
        }
    }
}

/// A JSON value, cut short, for the log.
fn brief(v: &Value) -> String {
    let text = match v {
        Value::Array(a) => format!("an array of {}", a.len()),
        Value::Object(o) => format!("an object of {} fields", o.len()),
        other => other.to_string(),
    };
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

/// Reads a fixed-length array of counters: a wrong length is reported and the elements present are used.
fn read_array<const N: usize>(
    obj: &Map<String, Value>,
    key: &str,
    at: &str,
    problems: &mut Problems,
) -> Option<[u64; N]> {
    let Some(v) = obj.get(key) else {
        problems.push(|| format!("{at}.{key}: missing"));
        return None;
    };
    let Some(items) = v.as_array() else {
        problems.push(|| format!("{at}.{key}: {} is not an array of {N} counters", brief(v)));
        return None;
    };
    if items.len() != N {
        problems.push(|| format!("{at}.{key}: {} elements, not {N}", items.len()));
    }
    let mut out = [0; N];
    for (i, (slot, item)) in out.iter_mut().zip(items).enumerate() {
        *slot = item.as_u64().unwrap_or_else(|| {
            problems.push(|| format!("{at}.{key}[{i}]: {} is not a counter", brief(item)));
            0
        });
    }
    Some(out)
}

/// Reads the `duration` histogram of a listener's or the handoff's counters.
fn read_duration(obj: &Map<String, Value>, at: &str, problems: &mut Problems) -> HistogramCounts {
    match obj.get("duration") {
        Some(d) => HistogramCounts::from_json(d, &format!("{at}.duration"), problems),
        None => {
            problems.push(|| format!("{at}.duration: missing"));
            HistogramCounts::default()
        }
    }
}

/// The values of a [`Histogram`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramCounts {
    /// Observations per bucket (not cumulative), one per bound.
    pub buckets: [u64; BOUNDS.len()],
    /// All observations, those above the last bound included.
    pub count: u64,
    /// Sum of the observations, in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramCounts {
    /// Each value `f` of the two.
    fn zip(&self, o: &HistogramCounts, f: impl Fn(u64, u64) -> u64) -> HistogramCounts {
        HistogramCounts {
            buckets: std::array::from_fn(|i| f(self.buckets[i], o.buckets[i])),
            count: f(self.count, o.count),
            sum_nanos: f(self.sum_nanos, o.sum_nanos),
        }
    }

    /// Each value the greater of the two.
    pub fn max(&self, o: &HistogramCounts) -> HistogramCounts {
        self.zip(o, u64::max)
    }

    /// Each value `self - o`, at least 0.
    pub fn minus(&self, o: &HistogramCounts) -> HistogramCounts {
        self.zip(o, u64::saturating_sub)
    }

    /// Each value the saturating sum of the two.
    pub fn plus(&self, o: &HistogramCounts) -> HistogramCounts {
        self.zip(o, u64::saturating_add)
    }

    /// `{"bounds": [...], "buckets": [...], "count": n, "sum_nanos": n}`.
    pub fn to_json(&self) -> Value {
        json!({
            "bounds": BOUNDS,
            "buckets": self.buckets,
            "count": self.count,
            "sum_nanos": self.sum_nanos,
        })
    }

    /// Reads [`HistogramCounts::to_json`]'s format. A histogram with other bounds, or that does not parse, is
    /// ignored as a whole (all zero), so that its buckets, count and sum stay consistent.
    pub fn from_json(v: &Value, at: &str, problems: &mut Problems) -> HistogramCounts {
        let Some(obj) = v.as_object() else {
            problems.push(|| format!("{at}: {} is not a histogram", brief(v)));
            return HistogramCounts::default();
        };
        let same_bounds = obj
            .get("bounds")
            .and_then(Value::as_array)
            .is_some_and(|b| b.len() == BOUNDS.len() && b.iter().zip(BOUNDS).all(|(x, y)| x.as_f64() == Some(y)));
        if !same_bounds {
            problems.push(|| format!("{at}.bounds: missing or not this version's buckets; histogram ignored"));
            return HistogramCounts::default();
        }
        let mut own = Problems::default();
        let counts = HistogramCounts {
            buckets: read_array(obj, "buckets", at, &mut own).unwrap_or_default(),
            count: read_u64(obj, "count", at, &mut own),
            sum_nanos: read_u64(obj, "sum_nanos", at, &mut own),
        };
        if own.is_empty() {
            counts
        } else {
            for p in own.first {
                problems.push(|| format!("{p}; histogram ignored"));
            }
            HistogramCounts::default()
        }
    }
}

/// The counters of a [`ListenerMetrics`] (its gauges are left out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerCounters {
    /// Responses by status class 1xx..5xx.
    pub requests: [u64; 5],
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Client connections accepted.
    pub connections_total: u64,
    /// Upstream connections that could not be opened.
    pub upstream_connect_errors: u64,
    /// Upstream responses that did not arrive in time.
    pub upstream_timeouts: u64,
    /// Exchanges ended by the stream idle timeout.
    pub stream_idle_timeouts: u64,
    /// The request duration histogram.
    pub duration: HistogramCounts,
}

impl ListenerCounters {
    /// Each value `f` of the two (histogram buckets included).
    fn zip(&self, o: &ListenerCounters, f: impl Fn(u64, u64) -> u64) -> ListenerCounters {
        ListenerCounters {
            requests: std::array::from_fn(|i| f(self.requests[i], o.requests[i])),
            bytes_in: f(self.bytes_in, o.bytes_in),
            bytes_out: f(self.bytes_out, o.bytes_out),
            connections_total: f(self.connections_total, o.connections_total),
            upstream_connect_errors: f(self.upstream_connect_errors, o.upstream_connect_errors),
            upstream_timeouts: f(self.upstream_timeouts, o.upstream_timeouts),
            stream_idle_timeouts: f(self.stream_idle_timeouts, o.stream_idle_timeouts),
            duration: self.duration.zip(&o.duration, f),
        }
    }

    /// Each value the greater of the two.
    pub fn max(&self, o: &ListenerCounters) -> ListenerCounters {
        self.zip(o, u64::max)
    }

    /// Each value `self - o`, at least 0.
    pub fn minus(&self, o: &ListenerCounters) -> ListenerCounters {
        self.zip(o, u64::saturating_sub)
    }

    /// Each value the saturating sum of the two.
    pub fn plus(&self, o: &ListenerCounters) -> ListenerCounters {
        self.zip(o, u64::saturating_add)
    }

    /// The JSON form, with the listener's protocol.
    pub fn to_json(&self, protocol: &str) -> Value {
        json!({
            "protocol": protocol,
            "requests": self.requests,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "connections_total": self.connections_total,
            "upstream_connect_errors": self.upstream_connect_errors,
            "upstream_timeouts": self.upstream_timeouts,
            "stream_idle_timeouts": self.stream_idle_timeouts,
            "duration": self.duration.to_json(),
        })
    }

    /// Reads [`ListenerCounters::to_json`]'s format, with the protocol when given. What does not parse counts as 0
    /// and is reported in `problems`.
    pub fn from_json(v: &Value, at: &str, problems: &mut Problems) -> Option<(ListenerCounters, Option<String>)> {
        let Some(obj) = v.as_object() else {
            problems.push(|| format!("{at}: {} is not an object", brief(v)));
            return None;
        };
        let protocol = match obj.get("protocol") {
            None => None,
            Some(Value::String(p)) if p == "http" || p == "tcp" => Some(p.clone()),
            Some(other) => {
                problems.push(|| format!("{at}.protocol: {} is not http or tcp; listener ignored", brief(other)));
                return None;
            }
        };
        let counters = ListenerCounters {
            requests: read_array(obj, "requests", at, problems).unwrap_or_default(),
            bytes_in: read_u64(obj, "bytes_in", at, problems),
            bytes_out: read_u64(obj, "bytes_out", at, problems),
            connections_total: read_u64(obj, "connections_total", at, problems),
            upstream_connect_errors: read_u64(obj, "upstream_connect_errors", at, problems),
            upstream_timeouts: read_u64(obj, "upstream_timeouts", at, problems),
            // Newer than the others: a predecessor of an older build sends none.
            stream_idle_timeouts: match obj.get("stream_idle_timeouts") {
                None => 0,
                Some(_) => read_u64(obj, "stream_idle_timeouts", at, problems),
            },
            duration: read_duration(obj, at, problems),
        };
        Some((counters, protocol))
    }
}

/// The counters of [`HandoffMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoffCounters {
    /// Old side: committed handoffs to a successor.
    pub sent_committed: u64,
    /// Old side: failed attempts.
    pub sent_failed: u64,
    /// Old side: successor died during the probation, serving again.
    pub sent_resumed: u64,
    /// New side: took over from a predecessor.
    pub received_committed: u64,
    /// New side: bound fresh.
    pub received_fresh: u64,
    /// New side: the takeover failed.
    pub received_failed: u64,
    /// The handoff duration histogram.
    pub duration: HistogramCounts,
}

impl HandoffCounters {
    /// Each value `f` of the two (histogram buckets included).
    fn zip(&self, o: &HandoffCounters, f: impl Fn(u64, u64) -> u64) -> HandoffCounters {
        HandoffCounters {
            sent_committed: f(self.sent_committed, o.sent_committed),
            sent_failed: f(self.sent_failed, o.sent_failed),
            sent_resumed: f(self.sent_resumed, o.sent_resumed),
            received_committed: f(self.received_committed, o.received_committed),
            received_fresh: f(self.received_fresh, o.received_fresh),
            received_failed: f(self.received_failed, o.received_failed),
            duration: self.duration.zip(&o.duration, f),
        }
    }

    /// Each value the greater of the two.
    pub fn max(&self, o: &HandoffCounters) -> HandoffCounters {
        self.zip(o, u64::max)
    }

    /// Each value `self - o`, at least 0.
    pub fn minus(&self, o: &HandoffCounters) -> HandoffCounters {
        self.zip(o, u64::saturating_sub)
    }

    /// The JSON form.
    pub fn to_json(&self) -> Value {
        json!({
            "sent_committed": self.sent_committed,
            "sent_failed": self.sent_failed,
            "sent_resumed": self.sent_resumed,
            "received_committed": self.received_committed,
            "received_fresh": self.received_fresh,
            "received_failed": self.received_failed,
            "duration": self.duration.to_json(),
        })
    }

    /// Reads [`HandoffCounters::to_json`]'s format. What does not parse counts as 0 and is reported.
    pub fn from_json(v: &Value, at: &str, problems: &mut Problems) -> HandoffCounters {
        let Some(obj) = v.as_object() else {
            problems.push(|| format!("{at}: {} is not an object", brief(v)));
            return HandoffCounters::default();
        };
        HandoffCounters {
            sent_committed: read_u64(obj, "sent_committed", at, problems),
            sent_failed: read_u64(obj, "sent_failed", at, problems),
            // Newer than the others: a predecessor that predates it sends none.
            sent_resumed: match obj.get("sent_resumed") {
                None => 0,
                Some(_) => read_u64(obj, "sent_resumed", at, problems),
            },
            received_committed: read_u64(obj, "received_committed", at, problems),
            received_fresh: read_u64(obj, "received_fresh", at, problems),
            received_failed: read_u64(obj, "received_failed", at, problems),
            duration: read_duration(obj, at, problems),
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Everything `/metrics` shows, gathered by the caller.
pub struct Snapshot<'a> {
    /// Software version.
    pub version: &'a str,
    /// Role at start.
    pub role: &'a str,
    /// Current phase name.
    pub phase: &'a str,
    /// Every phase name, for the state-set gauge.
    pub phases: &'a [&'a str],
    /// Upgrade generation.
    pub generation: u64,
    /// Per-listener traffic.
    pub listeners: &'a [Arc<ListenerMetrics>],
    /// Handoffs.
    pub handoff: &'a HandoffMetrics,
}

/// Renders the Prometheus text exposition format (version 0.0.4).
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(4096 + s.listeners.len() * 2048);
    instance(&mut out, s);
    requests(&mut out, s.listeners);
    traffic(&mut out, s.listeners);
    render_handoffs(&mut out, s.handoff);
    drain(&mut out, s);
    out
}

/// The `# HELP` and `# TYPE` lines of a metric.
fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Gauges of the instance: build and role, generation, phase.
fn instance(o: &mut String, s: &Snapshot<'_>) {
    header(o, "baton_info", "gauge", "Build and role of this instance (always 1).");
    let _ = writeln!(
        o,
        "baton_info{{version=\"{}\",role=\"{}\"}} 1",
        escape(s.version),
        s.role
    );
    header(
        o,
        "baton_generation",
        "gauge",
        "Upgrade generation: 1 on a fresh start, +1 at each handoff.",
    );
    let _ = writeln!(o, "baton_generation {}", s.generation);
    header(
        o,
        "baton_phase",
        "gauge",
        "Lifecycle phase of this instance (1 for the current phase).",
    );
    for p in s.phases {
        let _ = writeln!(o, "baton_phase{{phase=\"{p}\"}} {}", u8::from(*p == s.phase));
    }
}

/// Per listener: requests by status class, and the HTTP request duration histogram.
fn requests(o: &mut String, listeners: &[Arc<ListenerMetrics>]) {
    header(
        o,
        "baton_requests_total",
        "counter",
        "Proxied HTTP requests by status class; TCP streams count as 2xx.",
    );
    for l in listeners {
        for (i, c) in l.requests.iter().enumerate() {
            let _ = writeln!(
                o,
                "baton_requests_total{{listener=\"{}\",protocol=\"{}\",class=\"{}xx\"}} {}",
                escape(&l.name),
                l.protocol,
                i + 1,
                c.load(Ordering::Relaxed)
            );
        }
    }
    header(
        o,
        "baton_request_duration_seconds",
        "histogram",
        "HTTP request duration, request head to response head.",
    );
    for l in listeners.iter().filter(|l| l.protocol == "http") {
        l.duration.render(
            o,
            "baton_request_duration_seconds",
            &format!("listener=\"{}\"", escape(&l.name)),
        );
    }
}

/// Reads one per-listener value (i128: an i64 gauge or a u64 counter, never wrapped).
type Reader = fn(&ListenerMetrics) -> i128;

/// Per listener: connections, bytes and upstream failures, one labelled value each.
fn traffic(o: &mut String, listeners: &[Arc<ListenerMetrics>]) {
    let per_listener: [(&str, &str, &str, Reader); 7] = [
        (
            "baton_connections_active",
            "gauge",
            "Client connections open now.",
            |l| i128::from(l.connections_active.load(Ordering::Relaxed)),
        ),
        (
            "baton_connections_total",
            "counter",
            "Client connections accepted.",
            |l| i128::from(l.connections_total.load(Ordering::Relaxed)),
        ),
        (
            "baton_received_bytes_total",
            "counter",
            "Bytes read from clients.",
            |l| i128::from(l.bytes_in.load(Ordering::Relaxed)),
        ),
        ("baton_sent_bytes_total", "counter", "Bytes written to clients.", |l| {
            i128::from(l.bytes_out.load(Ordering::Relaxed))
        }),
        (
            "baton_upstream_connect_errors_total",
            "counter",
            "Upstream connections that could not be opened.",
            |l| i128::from(l.upstream_connect_errors.load(Ordering::Relaxed)),
        ),
        (
            "baton_upstream_timeouts_total",
            "counter",
            "Upstream responses that did not arrive within request_timeout.",
            |l| i128::from(l.upstream_timeouts.load(Ordering::Relaxed)),
        ),
        (
            "baton_stream_idle_timeouts_total",
            "counter",
            "HTTP exchanges and upgraded connections ended because no byte moved either way within stream_idle_timeout.",
            |l| i128::from(l.stream_idle_timeouts.load(Ordering::Relaxed)),
        ),
    ];
    for (name, kind, help, get) in per_listener {
        header(o, name, kind, help);
        for l in listeners {
            let _ = writeln!(o, "{name}{{listener=\"{}\"}} {}", escape(&l.name), get(l));
        }
    }
}

/// Handoffs by side and outcome, and the handoff duration histogram.
pub(crate) fn render_handoffs(o: &mut String, h: &HandoffMetrics) {
    header(
        o,
        "baton_handoffs_total",
        "counter",
        "Handoffs by side (old: sent, new: received) and outcome (old, resumed: the successor died during the probation and this instance serves again).",
    );
    for (side, outcome, c) in [
        ("old", "committed", &h.sent_committed),
        ("old", "failed", &h.sent_failed),
        ("old", "resumed", &h.sent_resumed),
        ("new", "committed", &h.received_committed),
        ("new", "fresh", &h.received_fresh),
        ("new", "failed", &h.received_failed),
    ] {
        let _ = writeln!(
            o,
            "baton_handoffs_total{{side=\"{side}\",outcome=\"{outcome}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    header(
        o,
        "baton_handoff_duration_seconds",
        "histogram",
        "Handoff duration, first contact to DONE.",
    );
    h.duration.render(o, "baton_handoff_duration_seconds", "");
}

/// While draining, the client connections still open; 0 in any other phase.
fn drain(o: &mut String, s: &Snapshot<'_>) {
    header(
        o,
        "baton_drain_connections_remaining",
        "gauge",
        "Client connections left to finish while draining (0 otherwise).",
    );
    let remaining: i64 = if s.phase == "draining" {
        s.listeners.iter().fold(0, |sum, l| {
            sum.saturating_add(l.connections_active.load(Ordering::Relaxed))
        })
    } else {
        0
    };
    let _ = writeln!(o, "baton_drain_connections_remaining {remaining}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn counters_round_trip_through_json_and_add() {
        let l = ListenerMetrics::new("a", "http");
        l.response(200, Duration::from_millis(2));
        l.response(503, Duration::from_secs(30));
        l.bytes_in.fetch_add(5, Ordering::Relaxed);
        l.stream_idle_timeouts.fetch_add(2, Ordering::Relaxed);
        l.connections_active.fetch_add(4, Ordering::Relaxed);
        let c = l.counters();
        let mut problems = Problems::default();
        let (back, protocol) = ListenerCounters::from_json(&c.to_json("http"), "x", &mut problems).expect("object");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((back, protocol.as_deref()), (c, Some("http")));

        // A predecessor of a build before `stream_idle_timeouts` sends none: 0, and no problem.
        let mut older = c.to_json("http");
        older.as_object_mut().expect("object").remove("stream_idle_timeouts");
        let (old, _) = ListenerCounters::from_json(&older, "x", &mut problems).expect("object");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(old.stream_idle_timeouts, 0);
        assert_eq!(old.bytes_in, 5);

        let other = ListenerMetrics::new("a", "http");
        other.add_counters(&back);
        other.add_counters(&back);
        assert_eq!(other.counters(), c.plus(&c));
        assert_eq!(
            other.connections_active.load(Ordering::Relaxed),
            0,
            "a gauge is no counter"
        );
        assert_eq!(c.plus(&c).minus(&c), c);
        assert_eq!(c.minus(&c.plus(&c)), ListenerCounters::default(), "never below 0");
        assert_eq!(c.max(&ListenerCounters::default()), c);

        let h = HandoffMetrics::default();
        h.received_fresh.fetch_add(2, Ordering::Relaxed);
        h.duration.observe(Duration::from_millis(1));
        let hc = h.counters();
        assert_eq!(HandoffCounters::from_json(&hc.to_json(), "h", &mut problems), hc);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_histogram_is_taken_whole_or_not_at_all() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(1));
        let good = h.counts().to_json();
        let mut problems = Problems::default();
        assert_eq!(HistogramCounts::from_json(&good, "d", &mut problems), h.counts());
        assert!(problems.is_empty());
        for (field, bad) in [
            ("bounds", json!([0.5, 1.0])),
            ("bounds", json!("x")),
            ("buckets", json!([1, 2])),
            ("buckets", json!([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1])),
            ("count", json!(1.5)),
            ("sum_nanos", json!(null)),
        ] {
            let mut v = good.clone();
            v[field] = bad;
            let mut problems = Problems::default();
            assert_eq!(
                HistogramCounts::from_json(&v, "d", &mut problems),
                HistogramCounts::default(),
                "{v}"
            );
            assert!(
                !problems.is_empty() && problems.first[0].starts_with("d."),
                "{problems:?}"
            );
        }
        let mut problems = Problems::default();
        for _ in 0..100 {
            problems.push(|| "p".into());
        }
        assert_eq!((problems.count, problems.first.len()), (100, Problems::KEPT));
    }

    #[test]
    fn render_counts_by_class() {
        let l = Arc::new(ListenerMetrics::new("in\"gress", "http"));
        l.response(200, Duration::from_millis(1));
        l.response(204, Duration::from_millis(1));
        l.response(502, Duration::from_millis(1));
        l.response(999, Duration::from_millis(1));
        let h = HandoffMetrics::default();
        h.sent_committed.fetch_add(1, Ordering::Relaxed);
        let text = render(&Snapshot {
            version: "v2",
            role: "takeover",
            phase: "serving",
            phases: &["serving", "draining"],
            generation: 3,
            listeners: &[l],
            handoff: &h,
        });
        assert!(text.contains("baton_requests_total{listener=\"in\\\"gress\",protocol=\"http\",class=\"2xx\"} 2\n"));
        assert!(text.contains("class=\"5xx\"} 2\n"), "{text}");
        assert!(text.contains("baton_phase{phase=\"serving\"} 1\n"));
        assert!(text.contains("baton_phase{phase=\"draining\"} 0\n"));
        assert!(text.contains("baton_generation 3\n"));
        assert!(text.contains("baton_handoffs_total{side=\"old\",outcome=\"committed\"} 1\n"));
    }
}
