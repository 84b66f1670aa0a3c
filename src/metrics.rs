//! Prometheus metrics, hand-rolled: a few atomics per listener, rendered in the text exposition format on the
//! admin port's `/metrics`. Nothing here allocates or locks on the request path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

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

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
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
        self.requests.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Handoffs seen by this instance.
#[derive(Debug, Default)]
pub struct HandoffMetrics {
    /// Old side: committed handoffs to a successor.
    pub sent_committed: AtomicU64,
    /// Old side: failed attempts (this instance kept serving).
    pub sent_failed: AtomicU64,
    /// New side: took over from a predecessor.
    pub received_committed: AtomicU64,
    /// New side: found no live predecessor and bound fresh.
    pub received_fresh: AtomicU64,
    /// New side: the takeover failed.
    pub received_failed: AtomicU64,
    /// Duration of handoffs, either side, from first contact to DONE.
    pub duration: Histogram,
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
    pub listeners: &'a [std::sync::Arc<ListenerMetrics>],
    /// Handoffs.
    pub handoff: &'a HandoffMetrics,
}

/// Reads one per-listener value.
type Reader = fn(&ListenerMetrics) -> i64;

/// Renders the Prometheus text exposition format (version 0.0.4).
pub fn render(s: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(4096 + s.listeners.len() * 2048);
    let o = &mut out;
    let header = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };

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

    header(
        o,
        "baton_requests_total",
        "counter",
        "Proxied HTTP requests by status class; TCP streams count as 2xx.",
    );
    for l in s.listeners {
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
    for l in s.listeners.iter().filter(|l| l.protocol == "http") {
        l.duration.render(
            o,
            "baton_request_duration_seconds",
            &format!("listener=\"{}\"", escape(&l.name)),
        );
    }
    let per_listener: [(&str, &str, &str, Reader); 6] = [
        (
            "baton_connections_active",
            "gauge",
            "Client connections open now.",
            |l| l.connections_active.load(Ordering::Relaxed),
        ),
        (
            "baton_connections_total",
            "counter",
            "Client connections accepted.",
            |l| l.connections_total.load(Ordering::Relaxed) as i64,
        ),
        (
            "baton_received_bytes_total",
            "counter",
            "Bytes read from clients.",
            |l| l.bytes_in.load(Ordering::Relaxed) as i64,
        ),
        ("baton_sent_bytes_total", "counter", "Bytes written to clients.", |l| {
            l.bytes_out.load(Ordering::Relaxed) as i64
        }),
        (
            "baton_upstream_connect_errors_total",
            "counter",
            "Upstream connections that could not be opened.",
            |l| l.upstream_connect_errors.load(Ordering::Relaxed) as i64,
        ),
        (
            "baton_upstream_timeouts_total",
            "counter",
            "Upstream responses that did not arrive within request_timeout.",
            |l| l.upstream_timeouts.load(Ordering::Relaxed) as i64,
        ),
    ];
    for (name, kind, help, get) in per_listener {
        header(o, name, kind, help);
        for l in s.listeners {
            let _ = writeln!(o, "{name}{{listener=\"{}\"}} {}", escape(&l.name), get(l));
        }
    }

    let h = s.handoff;
    header(
        o,
        "baton_handoffs_total",
        "counter",
        "Handoffs by side (old: sent, new: received) and outcome.",
    );
    for (side, outcome, c) in [
        ("old", "committed", &h.sent_committed),
        ("old", "failed", &h.sent_failed),
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
    header(
        o,
        "baton_drain_connections_remaining",
        "gauge",
        "Client connections left to finish while draining (0 otherwise).",
    );
    let remaining: i64 = if s.phase == "draining" {
        s.listeners
            .iter()
            .map(|l| l.connections_active.load(Ordering::Relaxed))
            .sum()
    } else {
        0
    };
    let _ = writeln!(o, "baton_drain_connections_remaining {remaining}");
    out
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
