//! `baton-bench-chart`: turns the raw numbers of `scripts/bench.sh` (results.json) into the report.
//!
//! ```text
//! baton-bench-chart --json bench/results.json [--md bench/results.md] [--png bench/results.png]
//!                   [--font /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf]
//! ```
//!
//! - `--md`: machine info, ONE markdown table (every scenario, baton against direct, nginx and HAProxy, a
//!   ratio against the best peer, each target "met" or "MISSED"), and the list of missed targets;
//! - `--png`: a chart (HTTP/1.1 throughput and latency, HTTP/2 throughput and p99 latency (h2c, h2c to an h2c
//!   upstream, gRPC unary), TCP relay, failed requests per 100 upgrades under each client, handoff times,
//!   memory), text drawn with `ab_glyph` from a TrueType file read at run time;
//! - stdout: the table, then one `MISSED: …` line per missed target.
//!
//! Exit 0 whatever the numbers say; 1 only when results.json is missing a field the report needs (the
//! harness broke), 2 for bad arguments.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::Value;

const PROXIES: [&str; 4] = ["direct", "baton", "nginx", "haproxy"];

// ------------------------------------------------------------------------------------------------
// Reading results.json

struct Results {
    v: Value,
    problems: Vec<String>,
}

impl Results {
    /// The value at a `/`-separated path; a problem is recorded when it is absent or not a number.
    fn num(&mut self, path: &str) -> Option<f64> {
        let ptr = format!("/{path}");
        match self.v.pointer(&ptr) {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::Null) => None,
            Some(other) => {
                self.problems.push(format!("{path}: not a number: {other}"));
                None
            }
            None => {
                self.problems.push(format!("{path}: missing"));
                None
            }
        }
    }

    /// Like `num`, but absence is allowed (optional measurements).
    fn opt(&self, path: &str) -> Option<f64> {
        self.v.pointer(&format!("/{path}")).and_then(Value::as_f64)
    }

    fn text(&self, path: &str) -> String {
        match self.v.pointer(&format!("/{path}")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    }

    fn exists(&self, path: &str) -> bool {
        self.v.pointer(&format!("/{path}")).is_some_and(|v| !v.is_null())
    }
}

/// Nearest-rank percentile of unsorted values.
fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// Handoff statistics from the upgrader's JSON at `path`.
#[derive(Default, Clone)]
struct Handoffs {
    count: usize,
    ok: usize,
    serve: Vec<f64>,
    internal: Vec<f64>,
    migrate_after_serve: Vec<f64>,
    old_exit_nonzero: usize,
}

fn handoffs(r: &Results, path: &str) -> Option<Handoffs> {
    let v = r.v.pointer(&format!("/{path}"))?;
    let ups = v.get("upgrades")?.as_array()?;
    let mut h = Handoffs {
        count: ups.len(),
        ..Handoffs::default()
    };
    for u in ups {
        if u.get("ok").and_then(Value::as_bool) == Some(true) {
            h.ok += 1;
        }
        let serve = u.get("serve_ms").and_then(Value::as_f64);
        let mig = u.get("migrate_ms").and_then(Value::as_f64);
        if let Some(s) = serve {
            h.serve.push(s);
        }
        if let Some(i) = u.get("internal_ms").and_then(Value::as_f64) {
            h.internal.push(i);
        }
        if let (Some(s), Some(m)) = (serve, mig) {
            h.migrate_after_serve.push(m - s);
        }
    }
    for e in v.get("old_exits").and_then(Value::as_array).into_iter().flatten() {
        if e.get("exit").and_then(Value::as_i64) != Some(0) {
            h.old_exit_nonzero += 1;
        }
    }
    Some(h)
}

// ------------------------------------------------------------------------------------------------
// The table

#[derive(Clone, Copy, PartialEq)]
enum Better {
    Higher,
    Lower,
}

struct Row {
    metric: String,
    cells: [String; 4],
    ratio: String,
    target: String,
    status: Option<bool>,
}

fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if decimals == 0 && x.abs() >= 1000.0 => {
            // thousands separators for req/s
            let s = format!("{:.0}", x);
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 && c != '-' {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        Some(x) => format!("{x:.decimals$}"),
        None => "n/a".into(),
    }
}

/// baton logs whole milliseconds: 0 means under one.
fn whole_ms(v: Option<f64>) -> String {
    match v {
        Some(x) if x < 1.0 => "<1".into(),
        other => fmt_num(other, 0),
    }
}

fn ratio_against_peers(vals: &[Option<f64>; 4], better: Better) -> Option<f64> {
    let baton = vals[1]?;
    let peers: Vec<f64> = [vals[2], vals[3]].into_iter().flatten().collect();
    if peers.is_empty() {
        return None;
    }
    let best = match better {
        Better::Higher => peers.iter().copied().fold(f64::MIN, f64::max),
        Better::Lower => peers.iter().copied().fold(f64::MAX, f64::min),
    };
    (best > 0.0).then(|| baton / best)
}

struct Report {
    rows: Vec<Row>,
    missed: Vec<String>,
    notes: Vec<String>,
}

impl Report {
    /// Whether `results.json` lacks scenario `key` (a run from before it), noted as "no `what` numbers".
    fn absent(&mut self, r: &Results, key: &str, what: &str) -> bool {
        let absent = !r.exists(key);
        if absent {
            self.notes.push(format!(
                "no {what} numbers in this results.json (a run from before that scenario)"
            ));
        }
        absent
    }

    /// Scenario `key`'s own note in `results.json`, if it has one.
    fn note_from(&mut self, r: &Results, key: &str) {
        let note = r.text(&format!("{key}/note"));
        if !note.is_empty() {
            self.notes.push(note);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn metric(
        &mut self,
        metric: &str,
        vals: [Option<f64>; 4],
        decimals: usize,
        better: Better,
        target: &str,
        status: Option<bool>,
    ) {
        // Rows judged against a target get one more decimal, so a ratio just short of it does not print as met.
        let ratio = ratio_against_peers(&vals, better)
            .map(|x| {
                if status.is_some() {
                    format!("{x:.3}×")
                } else {
                    format!("{x:.2}×")
                }
            })
            .unwrap_or_else(|| "—".into());
        self.push(Row {
            metric: metric.into(),
            cells: vals.map(|v| fmt_num(v, decimals)),
            ratio,
            target: target.into(),
            status,
        });
    }

    /// An HTTP/2 throughput row held to the HTTP/2 target: at least 1.10× the best peer.
    fn throughput_target(&mut self, metric: &str, vals: [Option<f64>; 4]) {
        let ratio = ratio_against_peers(&vals, Better::Higher);
        self.metric(
            metric,
            vals,
            0,
            Better::Higher,
            "≥ 1.10× best peer",
            ratio.map(|x| x >= 1.1),
        );
    }

    /// An HTTP/2 p99 row held to the HTTP/2 target: no worse than the best peer.
    fn p99_target(&mut self, metric: &str, vals: [Option<f64>; 4]) {
        let ratio = ratio_against_peers(&vals, Better::Lower);
        self.metric(metric, vals, 3, Better::Lower, "≤ best peer", ratio.map(|x| x <= 1.0));
    }

    fn push(&mut self, row: Row) {
        if row.status == Some(false) {
            self.missed.push(format!("{}: {}", row.metric, row.target));
        }
        self.rows.push(row);
    }
}

fn wrk_vals(r: &mut Results, scenario: &str, field: &str, scale: f64) -> [Option<f64>; 4] {
    PROXIES.map(|p| {
        if r.exists(&format!("{scenario}/{p}")) {
            r.num(&format!("{scenario}/{p}/{field}")).map(|x| x * scale)
        } else {
            None
        }
    })
}

/// Like [`wrk_vals`], for a field only some targets have (the proxy's CPU: none for direct).
fn wrk_opt_vals(r: &Results, scenario: &str, field: &str) -> [Option<f64>; 4] {
    PROXIES.map(|p| r.opt(&format!("{scenario}/{p}/{field}")))
}

/// The client modes of scenario 5: the results.json key and a label (the idle pool's with its parameters).
fn upgrade_modes(r: &Results) -> [(&'static str, String); 3] {
    let pool = match (r.opt("params/idle_conns"), r.opt("params/idle_round_ms")) {
        (Some(c), Some(ms)) => format!("idle keep-alive pool ({c:.0} connections, each used every {ms:.0} ms)"),
        _ => "idle keep-alive pool".into(),
    };
    [
        ("upgrades_keepalive", "keep-alive".into()),
        ("upgrades_close", "new connection".into()),
        ("upgrades_idle", pool),
    ]
}

/// Scenario 5, one proxy under one client.
struct UpgradeLoad {
    failed: Option<f64>,
    requests: Option<f64>,
    /// upgrades (baton) or reloads (nginx, HAProxy) actually performed
    reloads: Option<f64>,
    per100: Option<f64>,
}

/// None when the proxy has no numbers for the scenario. The summary scripts/bench.sh writes (`failed`,
/// `requests`, `failed_per_100_upgrades`), or else the same derived from the client's raw numbers (the
/// results.json of older runs).
fn upgrade_load(r: &Results, scenario: &str, p: &str) -> Option<UpgradeLoad> {
    let base = format!("{scenario}/{p}");
    if !r.exists(&base) {
        return None;
    }
    let raw_failed = || -> Option<f64> {
        if r.exists(&format!("{base}/idlepool")) {
            return r.opt(&format!("{base}/idlepool/failures"));
        }
        let mut sum = 0.0;
        for k in ["connect", "read", "write", "timeout", "status"] {
            sum += r.opt(&format!("{base}/wrk/errors/{k}"))?;
        }
        Some(sum)
    };
    let failed = r.opt(&format!("{base}/failed")).or_else(raw_failed);
    let requests = r
        .opt(&format!("{base}/requests"))
        .or_else(|| r.opt(&format!("{base}/wrk/requests")))
        .or_else(|| r.opt(&format!("{base}/idlepool/requests")));
    let reloads = r.opt(&format!("{base}/reloads"));
    let per100 = r
        .opt(&format!("{base}/failed_per_100_upgrades"))
        .or(match (failed, reloads) {
            (Some(f), Some(n)) if n > 0.0 => Some(f * 100.0 / n),
            _ => None,
        });
    Some(UpgradeLoad {
        failed,
        requests,
        reloads,
        per100,
    })
}

/// Upstream connections each proxy held mid-run (none for direct).
fn upstream_conns_row(r: &Results, scenario: &str, metric: &str) -> Row {
    let mut cells: [String; 4] = ["—".into(), "n/a".into(), "n/a".into(), "n/a".into()];
    for (i, p) in PROXIES.iter().enumerate().skip(1) {
        cells[i] = fmt_num(r.opt(&format!("{scenario}/{p}/upstream_conns")), 0);
    }
    Row {
        metric: metric.into(),
        cells,
        ratio: "—".into(),
        target: String::new(),
        status: None,
    }
}

/// Scenario 3b: h2load against fronts that speak HTTP/2 to the upstream. `h2c_baton`: baton's req/s in scenario 3.
fn h2c_upstream(r: &mut Results, rep: &mut Report, h2c_baton: Option<f64>) {
    if rep.absent(r, "h2c_upstream", "h2c → h2c upstream") {
        return;
    }
    let rps = PROXIES.map(|p| r.opt(&format!("h2c_upstream/{p}/rps")));
    if rps[1].is_none() {
        r.problems.push("h2c_upstream/baton/rps: missing".into());
    }
    rep.throughput_target("3b h2c → h2c upstream (h2load): req/s", rps);
    rep.metric(
        "3b h2c → h2c upstream: mean request time (ms)",
        PROXIES.map(|p| r.opt(&format!("h2c_upstream/{p}/mean_ms"))),
        3,
        Better::Lower,
        "",
        None,
    );
    rep.p99_target(
        "3b h2c → h2c upstream: latency p99 (ms)",
        PROXIES.map(|p| r.opt(&format!("h2c_upstream/{p}/p99_ms"))),
    );
    rep.push(upstream_conns_row(
        r,
        "h2c_upstream",
        "3b h2c → h2c upstream: the proxy's connections to the upstream, mid-run",
    ));
    let failed: f64 = PROXIES
        .iter()
        .filter_map(|p| r.opt(&format!("h2c_upstream/{p}/failed")))
        .sum();
    if failed > 0.0 {
        rep.notes.push(format!(
            "h2load reported {failed} failed or errored requests in scenario 3b"
        ));
    }
    if let (Some(up), Some(h2c)) = (rps[1], h2c_baton) {
        rep.notes.push(format!(
            "baton h2c → h2c upstream / baton h2c → HTTP/1.1 upstream throughput: {:.2}×",
            up / h2c
        ));
    }
    rep.note_from(r, "h2c_upstream");
}

/// Scenario 3c: gRPC unary calls (grpcload against grpcserver).
fn grpc_unary(r: &mut Results, rep: &mut Report) {
    if rep.absent(r, "grpc_unary", "gRPC unary") {
        return;
    }
    let calls = PROXIES.map(|p| r.opt(&format!("grpc_unary/{p}/calls_per_s")));
    if calls[1].is_none() {
        r.problems.push("grpc_unary/baton/calls_per_s: missing".into());
    }
    rep.throughput_target("3c gRPC unary calls (grpcload): successful calls/s", calls);
    rep.metric(
        "3c gRPC unary: latency mean (ms)",
        PROXIES.map(|p| r.opt(&format!("grpc_unary/{p}/mean_ms"))),
        3,
        Better::Lower,
        "",
        None,
    );
    rep.p99_target(
        "3c gRPC unary: latency p99 (ms)",
        PROXIES.map(|p| r.opt(&format!("grpc_unary/{p}/p99_ms"))),
    );
    let mut cells: [String; 4] = Default::default();
    for (i, p) in PROXIES.iter().enumerate() {
        let failed = r.opt(&format!("grpc_unary/{p}/failed"));
        let total = r.opt(&format!("grpc_unary/{p}/calls"));
        cells[i] = match (failed, total) {
            (Some(f), Some(t)) => format!("{} / {}", fmt_num(Some(f), 0), fmt_num(Some(t), 0)),
            _ => "n/a".into(),
        };
        if failed.is_some_and(|f| f > 0.0) {
            let first = r.text(&format!("grpc_unary/{p}/first_failure"));
            rep.notes.push(format!(
                "gRPC unary through {p}: {} failed calls; the first: {first}",
                fmt_num(failed, 0)
            ));
        }
    }
    rep.push(Row {
        metric: "3c gRPC unary: failed / total calls (not status 200 + the reply + grpc-status 0)".into(),
        cells,
        ratio: "—".into(),
        target: String::new(),
        status: None,
    });
    rep.push(upstream_conns_row(
        r,
        "grpc_unary",
        "3c gRPC unary: the proxy's connections to the upstream, mid-run",
    ));
    rep.note_from(r, "grpc_unary");
}

/// A rate with thousands separators (2,000).
fn rate_label(rate: f64) -> String {
    fmt_num(Some(rate), 0)
}

/// The rates of a fixed-rate scenario (`fixed_rate` or `two_workers`), as results.json lists them.
fn rates(r: &Results, key: &str) -> Vec<f64> {
    r.v.pointer(&format!("/{key}/rates"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// Whether the target of a fixed-rate run carried the rate: its achieved rate at least 95% of the asked one.
fn sustained(r: &Results, key: &str, rate: f64, p: &str) -> Option<bool> {
    let achieved = r.opt(&format!("{key}/r{rate:.0}/{p}/achieved_rps"))?;
    Some(achieved >= 0.95 * rate)
}

/// Latency a proxy adds at a fixed rate: its percentile `field` (µs) minus direct's. `direct_key`: the scenario
/// whose direct runs are the reference (scenario 10 has none of its own).
fn added(r: &Results, key: &str, direct_key: &str, rate: f64, p: &str, field: &str) -> Option<f64> {
    let through = r.opt(&format!("{key}/r{rate:.0}/{p}/{field}"))?;
    let direct = r.opt(&format!("{direct_key}/r{rate:.0}/direct/{field}"))?;
    Some(through - direct)
}

/// Cells of a fixed-rate row: `value(p)` for each proxy, "(not sustained)" after a proxy that did not carry the
/// rate; direct's own figure in the direct column when `direct` is given.
fn rate_cells(
    r: &Results,
    key: &str,
    rate: f64,
    direct: Option<f64>,
    decimals: usize,
    value: impl Fn(&str) -> Option<f64>,
) -> [String; 4] {
    let mut cells: [String; 4] = ["—".into(), "n/a".into(), "n/a".into(), "n/a".into()];
    if direct.is_some() {
        cells[0] = fmt_num(direct, decimals);
    }
    for (i, p) in PROXIES.iter().enumerate().skip(1) {
        let v = value(p);
        cells[i] = match (v, sustained(r, key, rate, p)) {
            (None, _) => "n/a".into(),
            (Some(_), Some(false)) => format!("{} (not sustained)", fmt_num(v, decimals)),
            (Some(_), _) => fmt_num(v, decimals),
        };
    }
    cells
}

/// Scenario 8: latency added at a fixed rate (and the CPU per request at one of them).
fn fixed_rate(r: &mut Results, rep: &mut Report) {
    if rep.absent(r, "fixed_rate", "fixed-rate") {
        return;
    }
    let conns = r.opt("params/fixed_rate_conns").unwrap_or(64.0);
    for rate in rates(r, "fixed_rate") {
        let key = "fixed_rate";
        let base = format!("{key}/r{rate:.0}");
        if r.num(&format!("{base}/baton/p99_us")).is_none() {
            continue;
        }
        let label = rate_label(rate);
        // Achieved rate: direct's too.
        let mut cells = rate_cells(r, key, rate, None, 0, |p| r.opt(&format!("{base}/{p}/achieved_rps")));
        cells[0] = fmt_num(r.opt(&format!("{base}/direct/achieved_rps")), 0);
        rep.push(Row {
            metric: format!("8 fixed {label} req/s over {conns:.0} keep-alive connections: achieved req/s"),
            cells,
            ratio: "—".into(),
            target: String::new(),
            status: None,
        });
        let baton_sustains = sustained(r, key, rate, "baton") == Some(true);
        for (name, field, target) in [
            ("p50", "p50_us", false),
            ("p99", "p99_us", true),
            ("p99.9", "p999_us", true),
        ] {
            let vals = PROXIES.map(|p| {
                if p == "direct" {
                    None
                } else {
                    added(r, key, key, rate, p, field)
                }
            });
            let best = [vals[2], vals[3]].into_iter().flatten().reduce(f64::min);
            let ratio = match (vals[1], best) {
                (Some(b), Some(best)) if best > 0.0 && target => format!("{:.3}×", b / best),
                (Some(b), Some(best)) if best > 0.0 => format!("{:.2}×", b / best),
                _ => "—".into(),
            };
            let unresolved = best.is_some_and(|b| b <= 0.0);
            let (target_text, status) = if !target {
                (String::new(), None)
            } else if !baton_sustains {
                ("≤ 0.8× best peer (baton does not sustain this rate)".to_string(), None)
            } else if unresolved {
                // Direct's own percentile is above a proxy's: the machine's noise at this percentile is larger
                // than what the proxies add, so no ratio of added latencies means anything.
                rep.notes.push(format!(
                    "fixed {label} req/s, {name}: not resolved on this machine: direct's own {name} ({} µs, the median of its rounds) is above the best peer's through-the-proxy {name}, so the noise of the machine is larger than the latency the proxies add (each round's figures in results.json)",
                    fmt_num(r.opt(&format!("{base}/direct/{field}")), 1)
                ));
                ("≤ 0.8× best peer (not resolved: see the notes)".to_string(), None)
            } else {
                (
                    "≤ 0.8× best peer".to_string(),
                    match (vals[1], best) {
                        (Some(b), Some(best)) => Some(b <= 0.8 * best),
                        _ => None,
                    },
                )
            };
            let direct = r.opt(&format!("{base}/direct/{field}"));
            rep.push(Row {
                metric: format!("8 fixed {label} req/s: latency added, {name} (µs)"),
                cells: rate_cells(r, key, rate, direct, 1, |p| added(r, key, key, rate, p, field)),
                ratio,
                target: target_text,
                status,
            });
        }
        let lag = r.opt(&format!("{base}/direct/send_lag_p99_us"));
        let errors: f64 = PROXIES
            .iter()
            .filter_map(|p| r.opt(&format!("{base}/{p}/errors")))
            .sum();
        if errors > 0.0 {
            rep.notes.push(format!(
                "fixed {label} req/s: {errors} failed requests in all (by target and kind in results.json)"
            ));
        }
        if let Some(lag) = lag {
            rep.notes.push(format!(
                "fixed {label} req/s: the client itself wrote 99% of the requests that found their connection free within {lag:.0} µs of their due time (direct runs; its own timing error, the same for every target)"
            ));
        }
    }
    let cpu_rate = r.opt("fixed_rate/cpu_rate").unwrap_or(10_000.0);
    let cpu = PROXIES.map(|p| r.opt(&format!("fixed_rate/r{cpu_rate:.0}/{p}/cpu_us_per_req")));
    let ratio = ratio_against_peers(&cpu, Better::Lower);
    rep.metric(
        &format!(
            "8 the proxy's CPU per request at a fixed {} req/s, user + kernel (µs)",
            rate_label(cpu_rate)
        ),
        cpu,
        2,
        Better::Lower,
        "≤ 0.75× best peer",
        ratio.map(|x| x <= 0.75),
    );
    if let Some(row) = rep.rows.last_mut() {
        row.cells[0] = "—".into();
    }
    rep.notes.push(
        "fixed-rate rows: \"latency added\" is the proxy's percentile minus direct's at the same rate (the direct column holds direct's own); a proxy that achieves less than 95% of the asked rate does not sustain it, and its latencies then include the queue that builds up".into(),
    );
    rep.note_from(r, "fixed_rate");
}

/// Scenario 4b: TCP relay at a fixed rate, the proxy's CPU per GB.
fn tcp_rate(r: &mut Results, rep: &mut Report) {
    if rep.absent(r, "tcp_rate", "fixed-rate TCP") {
        return;
    }
    let gbit = r.opt("tcp_rate/rate_gbit").unwrap_or(1.0);
    let cpu = PROXIES.map(|p| {
        if p == "direct" {
            None
        } else {
            r.opt(&format!("tcp_rate/{p}/cpu_ms_per_gb"))
        }
    });
    if cpu[1].is_none() {
        r.problems.push("tcp_rate/baton/cpu_ms_per_gb: missing".into());
    }
    let ratio = ratio_against_peers(&cpu, Better::Lower);
    rep.metric(
        &format!("4b TCP relay at a fixed {gbit} Gbit/s: the proxy's CPU per GB relayed, user + kernel (ms)"),
        cpu,
        1,
        Better::Lower,
        "≤ 0.80× best peer",
        ratio.map(|x| x <= 0.8),
    );
    if let Some(row) = rep.rows.last_mut() {
        row.cells[0] = "—".into();
    }
    for p in PROXIES.iter().skip(1) {
        if let Some(g) = r.opt(&format!("tcp_rate/{p}/gbit_s")) {
            if g < 0.95 * gbit {
                rep.notes.push(format!(
                    "TCP relay at {gbit} Gbit/s through {p}: only {g:.3} Gbit/s achieved"
                ));
            }
        }
        if r.v.pointer(&format!("/tcp_rate/{p}/verified")) == Some(&Value::Bool(false)) {
            rep.notes.push(format!(
                "TCP relay at {gbit} Gbit/s through {p}: the sink's byte count did not match"
            ));
        }
    }
    rep.note_from(r, "tcp_rate");
}

/// Scenario 9: many idle keep-alive connections; RSS, and baton's handoff of all of them.
fn many_conns(r: &mut Results, rep: &mut Report) {
    if rep.absent(r, "many_conns", "many-connection") {
        return;
    }
    let n = r.num("many_conns/conns").unwrap_or(0.0);
    let label = fmt_num(Some(n), 0);
    let mib = |v: Option<f64>| v.map(|k| k / 1024.0);
    let holding = PROXIES.map(|p| mib(r.opt(&format!("many_conns/{p}/rss_holding_kib"))));
    if holding[1].is_none() {
        r.problems.push("many_conns/baton/rss_holding_kib: missing".into());
    }
    let ratio = ratio_against_peers(&holding, Better::Lower);
    rep.metric(
        &format!("9 RSS holding {label} idle keep-alive connections (MiB)"),
        holding,
        1,
        Better::Lower,
        "≤ 0.80× best peer",
        ratio.map(|x| x <= 0.8),
    );
    if let Some(row) = rep.rows.last_mut() {
        row.cells[0] = "—".into();
    }
    let per_conn = PROXIES.map(|p| {
        let before = r.opt(&format!("many_conns/{p}/rss_before_kib"))?;
        let hold = r.opt(&format!("many_conns/{p}/rss_holding_kib"))?;
        (n > 0.0).then(|| (hold - before) / n)
    });
    rep.metric(
        "9 RSS per idle connection: (holding − before) / connections (KiB)",
        per_conn,
        2,
        Better::Lower,
        "",
        None,
    );
    if let Some(row) = rep.rows.last_mut() {
        row.cells[0] = "—".into();
    }
    rep.metric(
        "9 RSS before the connections, with the same config (MiB)",
        PROXIES.map(|p| mib(r.opt(&format!("many_conns/{p}/rss_before_kib")))),
        1,
        Better::Lower,
        "",
        None,
    );
    if let Some(row) = rep.rows.last_mut() {
        row.cells[0] = "—".into();
    }
    let last_ack = r.opt("many_conns/baton/migration/last_ack_ms");
    rep.push(Row {
        metric: format!("9 baton upgrade holding {label} idle connections: commit → last connection acknowledged (ms)"),
        cells: ["—".into(), fmt_num(last_ack, 1), "—".into(), "—".into()],
        ratio: "—".into(),
        target: "≤ 100 ms".into(),
        status: last_ack.map(|x| x <= 100.0),
    });
    let taken = r.opt("many_conns/baton/migration/taken");
    let ok = |p: &str| r.opt(&format!("many_conns/{p}/holdconns/second_ok"));
    let mut cells: [String; 4] = ["—".into(), "n/a".into(), "n/a".into(), "n/a".into()];
    cells[1] = format!(
        "{} taken, {} lost; next request {} / {} ok",
        fmt_num(taken, 0),
        fmt_num(taken.map(|t| n - t), 0),
        fmt_num(ok("baton"), 0),
        label
    );
    for (i, p) in PROXIES.iter().enumerate().skip(2) {
        cells[i] = format!("no upgrade; next request {} / {label} ok", fmt_num(ok(p), 0));
    }
    rep.push(Row {
        metric: format!("9 {label} connections through the upgrade: handed over, lost, next request on each"),
        cells,
        ratio: "—".into(),
        target: "0 lost, every next request ok".into(),
        status: match (taken, ok("baton")) {
            (Some(t), Some(o)) => Some(t == n && o == n && n > 0.0),
            _ => None,
        },
    });
    let after = mib(r.opt("many_conns/baton/rss_after_handoff_kib"));
    if let Some(after) = after {
        rep.notes.push(format!(
            "{label} connections: the new baton instance holds them, adopted, in {after:.1} MiB; the old one logged the last acknowledgement {} ms and its migration's end {} ms after the commit",
            fmt_num(last_ack, 1),
            fmt_num(r.opt("many_conns/baton/migration/elapsed_ms"), 1)
        ));
    }
    for p in PROXIES.iter().skip(1) {
        if let Some(f) = r.opt(&format!("many_conns/{p}/holdconns/second_failed")) {
            if f > 0.0 {
                let errors =
                    r.v.pointer(&format!("/many_conns/{p}/holdconns/errors"))
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                rep.notes.push(format!(
                    "{label} connections through {p}: {f} next requests failed ({errors})"
                ));
            }
        }
    }
    rep.note_from(r, "many_conns");
}

/// Scenario 10: two workers.
fn two_workers(r: &mut Results, rep: &mut Report) {
    if rep.absent(r, "two_workers", "two-worker") {
        return;
    }
    let conns = r.opt("two_workers/connections").unwrap_or(128.0);
    let mut rps = PROXIES.map(|p| r.opt(&format!("two_workers/keepalive/{p}/rps")));
    rps[0] = r.opt("http1_keepalive_wide/direct/rps");
    rep.metric(
        &format!("10 two workers: HTTP/1.1 keep-alive req/s (wrk -c{conns:.0})"),
        rps,
        0,
        Better::Higher,
        "",
        None,
    );
    let mut p99 = PROXIES.map(|p| r.opt(&format!("two_workers/keepalive/{p}/p99_us")).map(|x| x / 1e3));
    p99[0] = r.opt("http1_keepalive_wide/direct/p99_us").map(|x| x / 1e3);
    rep.metric(
        "10 two workers: keep-alive latency p99 (ms)",
        p99,
        3,
        Better::Lower,
        "",
        None,
    );
    for rate in rates(r, "two_workers") {
        let label = rate_label(rate);
        for (name, field) in [("p99", "p99_us"), ("p99.9", "p999_us")] {
            let vals = PROXIES.map(|p| {
                if p == "direct" {
                    None
                } else {
                    added(r, "two_workers", "fixed_rate", rate, p, field)
                }
            });
            let ratio = ratio_against_peers(&vals, Better::Lower)
                .filter(|_| [vals[2], vals[3]].into_iter().flatten().all(|x| x > 0.0))
                .map(|x| format!("{x:.2}×"))
                .unwrap_or_else(|| "—".into());
            let direct = r.opt(&format!("fixed_rate/r{rate:.0}/direct/{field}"));
            rep.push(Row {
                metric: format!("10 two workers, fixed {label} req/s: latency added, {name} (µs)"),
                cells: rate_cells(r, "two_workers", rate, direct, 1, |p| {
                    added(r, "two_workers", "fixed_rate", rate, p, field)
                }),
                ratio,
                target: String::new(),
                status: None,
            });
        }
    }
    rep.note_from(r, "two_workers");
}

fn build_report(r: &mut Results) -> Report {
    let mut rep = Report {
        rows: Vec::new(),
        missed: Vec::new(),
        notes: Vec::new(),
    };
    let ms = 1e-3;

    // 1. keep-alive
    let ka = wrk_vals(r, "http1_keepalive", "rps", 1.0);
    let ratio = ratio_against_peers(&ka, Better::Higher);
    rep.metric(
        "1 HTTP/1.1 keep-alive: req/s",
        ka,
        0,
        Better::Higher,
        "≥ 1.10× best peer",
        ratio.map(|x| x >= 1.1),
    );
    rep.metric(
        "1 keep-alive latency p50 (ms)",
        wrk_vals(r, "http1_keepalive", "p50_us", ms),
        3,
        Better::Lower,
        "",
        None,
    );
    let p99 = wrk_vals(r, "http1_keepalive", "p99_us", ms);
    let ratio = ratio_against_peers(&p99, Better::Lower);
    rep.metric(
        "1 keep-alive latency p99 (ms)",
        p99,
        3,
        Better::Lower,
        "≤ both peers",
        ratio.map(|x| x <= 1.0),
    );
    rep.metric(
        "1 keep-alive latency p99.9 (ms)",
        wrk_vals(r, "http1_keepalive", "p999_us", ms),
        3,
        Better::Lower,
        "",
        None,
    );
    rep.metric(
        "1 keep-alive: the proxy's CPU per request, user + kernel (µs)",
        wrk_opt_vals(r, "http1_keepalive", "cpu_us_per_req"),
        2,
        Better::Lower,
        "",
        None,
    );
    let wide = r.opt("params/wide_conns").map_or("more".into(), |c| format!("{c:.0}"));
    rep.metric(
        &format!("1 keep-alive with {wide} connections (every proxy busy): req/s"),
        wrk_vals(r, "http1_keepalive_wide", "rps", 1.0),
        0,
        Better::Higher,
        "",
        None,
    );
    rep.metric(
        &format!("1 keep-alive with {wide} connections: latency p99 (ms)"),
        wrk_vals(r, "http1_keepalive_wide", "p99_us", ms),
        3,
        Better::Lower,
        "",
        None,
    );
    rep.metric(
        &format!("1 keep-alive with {wide} connections: the proxy's CPU per request (µs)"),
        wrk_opt_vals(r, "http1_keepalive_wide", "cpu_us_per_req"),
        2,
        Better::Lower,
        "",
        None,
    );

    // 2. new connection per request
    rep.metric(
        "2 HTTP/1.1 new connection per request: req/s",
        wrk_vals(r, "http1_close", "rps", 1.0),
        0,
        Better::Higher,
        "",
        None,
    );
    for (label, field) in [("p50", "p50_us"), ("p99", "p99_us"), ("p99.9", "p999_us")] {
        rep.metric(
            &format!("2 new-connection latency {label} (ms)"),
            wrk_vals(r, "http1_close", field, ms),
            3,
            Better::Lower,
            "",
            None,
        );
    }

    // 3. h2c
    let h2 = PROXIES.map(|p| r.opt(&format!("h2c/{p}/rps")));
    if h2[1].is_none() {
        r.problems.push("h2c/baton/rps: missing".into());
    }
    rep.throughput_target("3 h2c (h2load): req/s", h2);
    rep.metric(
        "3 h2c mean request time (ms)",
        PROXIES.map(|p| r.opt(&format!("h2c/{p}/mean_ms"))),
        3,
        Better::Lower,
        "",
        None,
    );
    // From h2load's per-request log (results.json of older runs have no p99).
    let h2_p99 = PROXIES.map(|p| r.opt(&format!("h2c/{p}/p99_ms")));
    if h2_p99.iter().any(Option::is_some) {
        rep.p99_target("3 h2c latency p99 (ms)", h2_p99);
    }
    let h2_failed: f64 = PROXIES.iter().filter_map(|p| r.opt(&format!("h2c/{p}/failed"))).sum();
    if h2_failed > 0.0 {
        rep.notes.push(format!(
            "h2load reported {h2_failed} failed or errored requests in scenario 3"
        ));
    }
    if let (Some(h2b), Some(h1b)) = (h2[1], ka[1]) {
        rep.notes.push(format!(
            "baton h2c / baton HTTP/1.1 keep-alive throughput: {:.2}×",
            h2b / h1b
        ));
    }
    rep.note_from(r, "h2c");

    // 3b. h2c to an h2c upstream, 3c. gRPC unary calls
    h2c_upstream(r, &mut rep, h2[1]);
    grpc_unary(r, &mut rep);

    // 4. TCP relay: throughput (no target: on two cores the sender, the proxy and the sink share them, so a relay
    // cannot come near direct whatever its code; scenario 4b measures what the machine does not cap).
    let tcp = PROXIES.map(|p| r.opt(&format!("tcp_bulk/{p}/gbit_s")));
    if tcp[0].is_none() || tcp[1].is_none() {
        r.problems.push("tcp_bulk/{direct,baton}/gbit_s: missing".into());
    }
    rep.metric("4 TCP relay bulk (Gbit/s)", tcp, 2, Better::Higher, "", None);
    if let (Some(b), Some(d)) = (tcp[1], tcp[0]) {
        rep.notes.push(format!(
            "TCP relay bulk: baton relays {:.2}× direct; the sender, the proxy and the sink share two cores",
            b / d
        ));
    }
    for p in PROXIES {
        if r.v.pointer(&format!("/tcp_bulk/{p}/verified")) == Some(&Value::Bool(false)) {
            rep.notes
                .push(format!("TCP relay through {p}: the sink's byte count did not match"));
        }
    }

    tcp_rate(r, &mut rep);

    // 5. upgrades under load, under each client: failed / total requests, then failed per 100 upgrades
    let count = r.opt("params/upgrades").unwrap_or(0.0);
    let span = r.opt("params/upgrade_span_s").unwrap_or(0.0);
    for (scenario, label) in upgrade_modes(r) {
        if scenario == "upgrades_idle" && !r.exists(scenario) {
            rep.notes
                .push("no idle-pool upgrade numbers in this results.json (a run from before that mode)".into());
            continue;
        }
        let mut failed = [None; 4];
        let mut cells: [String; 4] = ["—".into(), "n/a".into(), "n/a".into(), "n/a".into()];
        let mut per100: [String; 4] = cells.clone();
        for (i, p) in PROXIES.iter().enumerate().skip(1) {
            let Some(u) = upgrade_load(r, scenario, p) else {
                if *p == "baton" {
                    r.problems.push(format!("{scenario}/baton: missing"));
                }
                continue;
            };
            if *p == "baton" && (u.failed.is_none() || u.requests.is_none()) {
                r.problems
                    .push(format!("{scenario}/baton: no count of failed or total requests"));
            }
            failed[i] = u.failed;
            cells[i] = format!(
                "{} / {}{}",
                fmt_num(u.failed, 0),
                fmt_num(u.requests, 0),
                match u.reloads {
                    Some(n) if (n - count).abs() > 0.5 => format!(" ({n:.0} reloads)"),
                    _ => String::new(),
                }
            );
            per100[i] = match u.per100 {
                Some(x) if x.fract() == 0.0 => fmt_num(Some(x), 0),
                other => fmt_num(other, 1),
            };
        }
        let h = handoffs(r, &format!("{scenario}/baton/upgrader"));
        let all_ok = h.as_ref().is_some_and(|h| h.ok == h.count && h.count > 0);
        let status = failed[1].map(|f| f == 0.0 && all_ok);
        if let Some(h) = &h {
            if h.ok != h.count {
                rep.notes.push(format!(
                    "{label} upgrades: only {} of {} baton upgrades completed",
                    h.ok, h.count
                ));
            }
            if h.old_exit_nonzero > 0 {
                rep.notes.push(format!(
                    "{label} upgrades: {} old baton instances did not exit 0",
                    h.old_exit_nonzero
                ));
            }
        }
        rep.push(Row {
            metric: format!("5 {count:.0} upgrades in {span:.0} s, {label}: failed / total requests"),
            cells,
            ratio: "—".into(),
            target: "baton: 0 failed".into(),
            status,
        });
        rep.push(Row {
            metric: format!("5 {label}: failed requests per 100 upgrades"),
            cells: per100,
            ratio: "—".into(),
            target: String::new(),
            status: None,
        });
    }

    // 6. handoff latency
    let h = handoffs(r, "handoff");
    if h.is_none() {
        r.problems.push("handoff/upgrades: missing".into());
    }
    let h = h.unwrap_or_default();
    let n = h.count;
    let (p50, p99) = (percentile(&h.serve, 50.0), percentile(&h.serve, 99.0));
    rep.push(Row {
        metric: format!("6 handoff over {n} upgrades: start → serving inherited sockets, p50 / p99 (ms)"),
        cells: [
            "—".into(),
            format!("{} / {}", fmt_num(p50, 1), fmt_num(p99, 1)),
            "—".into(),
            "—".into(),
        ],
        ratio: "—".into(),
        target: "p50 < 10 ms".into(),
        status: p50.map(|x| x < 10.0 && h.serve.len() == n && n > 0),
    });
    rep.push(Row {
        metric: "6 handoff as logged by baton (`handoff complete` elapsed_ms), p50 / p99 (ms)".into(),
        cells: [
            "—".into(),
            format!(
                "{} / {}",
                whole_ms(percentile(&h.internal, 50.0)),
                whole_ms(percentile(&h.internal, 99.0))
            ),
            "—".into(),
            "—".into(),
        ],
        ratio: "—".into(),
        target: String::new(),
        status: None,
    });
    let max_after = h
        .migrate_after_serve
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    rep.push(Row {
        metric: "6 `baton migrate` returns after serving, p50 / p99 / max (ms)".into(),
        cells: [
            "—".into(),
            format!(
                "{} / {} / {}",
                fmt_num(percentile(&h.migrate_after_serve, 50.0), 1),
                fmt_num(percentile(&h.migrate_after_serve, 99.0), 1),
                fmt_num(max_after, 1)
            ),
            "—".into(),
            "—".into(),
        ],
        ratio: "—".into(),
        target: "≤ 100 ms (max)".into(),
        status: max_after.map(|x| x <= 100.0 && h.migrate_after_serve.len() == n),
    });
    if h.ok != h.count {
        rep.notes.push(format!(
            "handoff latency: only {} of {} upgrades completed",
            h.ok, h.count
        ));
    }
    if let Some(hl) = handoffs(r, "upgrades_keepalive/baton/upgrader") {
        rep.notes.push(format!(
            "handoff under keep-alive load (scenario 5): start → serving p50 {} ms, p99 {} ms; migrate after serving p50 {} ms, max {} ms",
            fmt_num(percentile(&hl.serve, 50.0), 1),
            fmt_num(percentile(&hl.serve, 99.0), 1),
            fmt_num(percentile(&hl.migrate_after_serve, 50.0), 1),
            fmt_num(hl.migrate_after_serve.iter().copied().reduce(f64::max), 1),
        ));
    }

    // 7. memory
    let mib = |v: Option<f64>| v.map(|k| k / 1024.0);
    let idle = mib(r.num("memory_kib/baton_idle"));
    rep.push(Row {
        metric: "7 RSS idle (MiB)".into(),
        cells: [
            "—".into(),
            fmt_num(idle, 2),
            fmt_num(mib(r.opt("memory_kib/nginx_idle")), 2),
            fmt_num(mib(r.opt("memory_kib/haproxy_idle")), 2),
        ],
        ratio: "—".into(),
        target: "baton ≤ 8 MiB".into(),
        status: idle.map(|x| x <= 8.0),
    });
    let load = [
        None,
        mib(r.num("memory_kib/baton_load")),
        mib(r.opt("memory_kib/nginx_load")),
        mib(r.opt("memory_kib/haproxy_load")),
    ];
    rep.metric(
        "7 RSS under keep-alive load, peak (MiB)",
        load,
        2,
        Better::Lower,
        "",
        None,
    );
    if let Some(row) = rep.rows.last_mut() {
        row.cells[0] = "—".into();
    }
    for (key, what) in [
        (
            "empty",
            "7 RSS of the empty placeholder `baton-empty run`, dynamic glibc build (not shipped; for reference) (MiB)",
        ),
        (
            "empty_static",
            "7 RSS of the empty placeholder `baton-empty run`, static build as in the image (MiB)",
        ),
    ] {
        let empty = mib(r.num(&format!("memory_kib/{key}")));
        rep.push(Row {
            metric: what.into(),
            cells: ["—".into(), fmt_num(empty, 2), "—".into(), "—".into()],
            ratio: "—".into(),
            // The image ships the static build; only that one is held to the target.
            target: if key == "empty_static" {
                "≤ 1 MiB".into()
            } else {
                String::new()
            },
            status: if key == "empty_static" {
                empty.map(|x| x <= 1.0)
            } else {
                None
            },
        });
    }
    fixed_rate(r, &mut rep);
    many_conns(r, &mut rep);
    two_workers(r, &mut rep);
    rep
}

fn render_markdown(r: &Results, rep: &Report) -> String {
    let mut md = String::new();
    let mode = r.text("mode");
    let _ = writeln!(
        md,
        "# baton benchmark results{}\n",
        if mode == "smoke" {
            " (SMOKE RUN: 1 s per scenario, numbers meaningless)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "Produced by `scripts/bench.sh` (`make bench`); raw numbers in `results.json`, chart in `results.png`.\n"
    );
    let _ = writeln!(md, "| machine | |\n|---|---|");
    for (k, path) in [
        ("date", "machine/date"),
        ("cpus (nproc)", "machine/nproc"),
        ("CPU", "machine/cpu"),
        ("kernel", "machine/kernel"),
        ("load average at start", "machine/loadavg_start"),
        ("load average at the end", "machine/loadavg_end"),
        ("baton", "machine/baton_version"),
        ("commit", "machine/git"),
        ("baton worker threads", "machine/baton_workers"),
        ("nginx", "machine/tools/nginx"),
        ("HAProxy", "machine/tools/haproxy"),
        ("wrk", "machine/tools/wrk"),
        ("h2load", "machine/tools/h2load"),
        ("duration", "machine/duration_s"),
    ] {
        let v = r.text(path);
        if !v.is_empty() {
            let v = if k == "duration" {
                format!("{v} s (whole run, builds included)")
            } else {
                v
            };
            let _ = writeln!(md, "| {k} | {} |", v.replace('|', "\\|"));
        }
    }
    let _ = writeln!(md);
    let params = r.text("params/description");
    if !params.is_empty() {
        let _ = writeln!(md, "{params}\n");
    }
    let _ = writeln!(
        md,
        "| scenario / metric | direct | baton | nginx | HAProxy | baton / best peer | target | status |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|---|");
    for row in &rep.rows {
        let status = match row.status {
            Some(true) => "met",
            Some(false) => "**MISSED**",
            None => "",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.metric, row.cells[0], row.cells[1], row.cells[2], row.cells[3], row.ratio, row.target, status
        );
    }
    let _ = writeln!(
        md,
        "\nbaton / best peer: throughput against max(nginx, HAProxy) (higher is better), latency and memory against \
         min(nginx, HAProxy) (lower is better)."
    );
    if !rep.notes.is_empty() {
        let _ = writeln!(md, "\nNotes:\n");
        for n in &rep.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    if rep.missed.is_empty() {
        let _ = writeln!(md, "\nEvery target met.");
    } else {
        let _ = writeln!(md, "\nTargets missed ({}):\n", rep.missed.len());
        for m in &rep.missed {
            let _ = writeln!(md, "- {m}");
        }
    }
    md
}

// ------------------------------------------------------------------------------------------------
// The chart

mod chart {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    const COLORS: [RGBColor; 7] = [
        RGBColor(150, 150, 150), // direct
        RGBColor(230, 97, 1),    // baton
        RGBColor(0, 150, 80),    // nginx
        RGBColor(40, 100, 200),  // haproxy
        RGBColor(150, 55, 0),    // baton, second series
        RGBColor(120, 70, 170),  // baton under load
        RGBColor(190, 150, 225), // baton under load, second series
    ];

    pub struct Panel {
        pub title: String,
        pub y_label: String,
        pub groups: Vec<String>,
        /// series name, colour index, value per group
        pub series: Vec<(String, usize, Vec<Option<f64>>)>,
        pub decimals: usize,
        /// The top of the y axis when the first series (direct) would dwarf the others: its taller bars are cut
        /// there, their labels marked with an arrow.
        pub clip: Option<f64>,
    }

    /// One line of a [`LinePanel`]: a value per x position, each marked as carried (filled dot) or not (hollow).
    pub struct Line {
        pub name: String,
        pub color: usize,
        pub dashed: bool,
        pub points: Vec<Option<(f64, bool)>>,
    }

    /// Lines over a few named x positions (the rates), on a log y axis: values below `floor` are drawn at it.
    pub struct LinePanel {
        pub title: String,
        pub y_label: String,
        pub x: Vec<String>,
        pub lines: Vec<Line>,
        pub floor: f64,
    }

    pub enum Figure {
        Bars(Panel),
        Lines(LinePanel),
    }

    /// A clip for a panel whose first series (direct) is over twice the tallest bar of the others.
    pub fn clip_direct(series: &[(String, usize, Vec<Option<f64>>)]) -> Option<f64> {
        let max = |s: &[(String, usize, Vec<Option<f64>>)]| {
            s.iter()
                .flat_map(|x| x.2.iter().flatten())
                .copied()
                .fold(0.0f64, f64::max)
        };
        let others = max(series.get(1..).unwrap_or(&[]));
        let direct = max(series.get(..1).unwrap_or(&[]));
        (others > 0.0 && direct > 2.0 * others).then_some(others * 1.25)
    }

    fn short(v: f64, decimals: usize) -> String {
        if decimals == 0 && v >= 10_000.0 {
            format!("{:.1}k", v / 1000.0)
        } else if decimals == 0 {
            format!("{v:.0}")
        } else {
            format!("{v:.decimals$}")
        }
    }

    pub fn draw(path: &std::path::Path, title: &str, figures: &[Figure]) -> Result<(), String> {
        let root = BitMapBackend::new(path, (2600, 1500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(title, ("sans-serif", 26).into_font())
            .map_err(|e| e.to_string())?;
        let areas = root.split_evenly((3, 5));
        for (figure, area) in figures.iter().zip(areas.iter()) {
            match figure {
                Figure::Bars(panel) => draw_panel(&root, area, panel)?,
                Figure::Lines(panel) => draw_lines(area, panel)?,
            }
        }
        root.present().map_err(|e| e.to_string())
    }

    fn draw_lines<DB: DrawingBackend>(
        area: &DrawingArea<DB, plotters::coord::Shift>,
        p: &LinePanel,
    ) -> Result<(), String> {
        let values = p
            .lines
            .iter()
            .flat_map(|l| l.points.iter().flatten().map(|(v, _)| v.max(p.floor)));
        let max = values.fold(p.floor, f64::max);
        let n = p.x.len().max(1) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 19).into_font())
            .margin(12)
            .margin_bottom(10)
            .x_label_area_size(30)
            .y_label_area_size(62)
            .build_cartesian_2d(-0.3f64..(n - 0.7), (p.floor..max * 4.0).log_scale())
            .map_err(|e| e.to_string())?;
        let labels = p.x.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(p.x.len())
            .x_label_formatter(&|v| {
                let i = v.round();
                if (v - i).abs() < 0.01 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_labels(8)
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(215, 215, 215))
            .y_desc(p.y_label.as_str())
            .y_label_style(("sans-serif", 13).into_font())
            .x_label_style(("sans-serif", 14).into_font())
            .axis_desc_style(("sans-serif", 14).into_font())
            .y_label_formatter(&|v| {
                if *v >= 1000.0 {
                    format!("{:.0}k", v / 1000.0)
                } else {
                    format!("{v:.0}")
                }
            })
            .draw()
            .map_err(|e| e.to_string())?;
        for line in &p.lines {
            let c = COLORS[line.color % COLORS.len()];
            let style = ShapeStyle {
                color: c.to_rgba(),
                filled: false,
                stroke_width: 2,
            };
            let pts: Vec<(f64, f64)> = line
                .points
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|(y, _)| (i as f64, y.max(p.floor))))
                .collect();
            let legend = move |(x, y): (i32, i32)| PathElement::new(vec![(x, y), (x + 18, y)], style);
            if line.dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
                    .map_err(|e| e.to_string())?
                    .label(line.name.as_str())
                    .legend(legend);
            } else {
                chart
                    .draw_series(LineSeries::new(pts.clone(), style))
                    .map_err(|e| e.to_string())?
                    .label(line.name.as_str())
                    .legend(legend);
            }
            let dots = line
                .points
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|(y, ok)| (i as f64, y.max(p.floor), ok)))
                .map(|(x, y, ok)| Circle::new((x, y), 5, if ok { c.filled() } else { c.stroke_width(2) }));
            chart.draw_series(dots).map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 13).into_font())
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn draw_panel<DB: DrawingBackend>(
        root: &DrawingArea<DB, plotters::coord::Shift>,
        area: &DrawingArea<DB, plotters::coord::Shift>,
        p: &Panel,
    ) -> Result<(), String> {
        let max = p.clip.unwrap_or_else(|| {
            p.series
                .iter()
                .flat_map(|s| s.2.iter().flatten())
                .copied()
                .fold(0.0f64, f64::max)
        });
        // Headroom above the tallest bar for its value label and the legend.
        let ymax = if max > 0.0 { max * 1.45 } else { 1.0 };
        let n = p.groups.len().max(1) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(&p.title, ("sans-serif", 19).into_font())
            .margin(12)
            .margin_bottom(34)
            .x_label_area_size(8)
            .y_label_area_size(62)
            .build_cartesian_2d(0f64..n, 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_labels(8)
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(215, 215, 215))
            .y_desc(p.y_label.as_str())
            .y_label_style(("sans-serif", 13).into_font())
            .axis_desc_style(("sans-serif", 14).into_font())
            .y_label_formatter(&|v| {
                if *v >= 10_000.0 {
                    format!("{:.0}k", v / 1000.0)
                } else if *v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            })
            .draw()
            .map_err(|e| e.to_string())?;
        let k = p.series.len().max(1) as f64;
        let slot = 0.8 / k;
        let label_style = TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        for (si, (name, color, values)) in p.series.iter().enumerate() {
            let c = COLORS[*color % COLORS.len()];
            let bars = values.iter().enumerate().filter_map(|(g, v)| {
                let v = (*v)?.min(max);
                let x0 = g as f64 + 0.1 + si as f64 * slot;
                Some(Rectangle::new(
                    [(x0 + slot * 0.06, 0.0), (x0 + slot * 0.94, v)],
                    c.filled(),
                ))
            });
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
            let labels = values.iter().enumerate().filter_map(|(g, v)| {
                let v = (*v)?;
                let x = g as f64 + 0.1 + (si as f64 + 0.5) * slot;
                let text = if v > max {
                    format!("{} ↑", short(v, p.decimals))
                } else {
                    short(v, p.decimals)
                };
                Some(Text::new(text, (x, v.min(max) + ymax * 0.01), label_style.clone()))
            });
            chart.draw_series(labels).map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 13).into_font())
            .draw()
            .map_err(|e| e.to_string())?;
        // Group names under the axis, centred under each group (absolute pixels on the root area).
        let group_style = TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        let base = root.get_base_pixel();
        for (g, name) in p.groups.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                name.clone(),
                (px - base.0, py - base.1 + 6),
                group_style.clone(),
            ))
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn bar_panels(r: &Results) -> Vec<chart::Panel> {
    use chart::Panel;
    let names = ["direct", "baton", "nginx", "HAProxy"];
    let per_proxy = |paths: &[&str], scale: f64| -> Vec<(String, usize, Vec<Option<f64>>)> {
        PROXIES
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    names[i].to_string(),
                    i,
                    paths
                        .iter()
                        .map(|path| r.opt(&path.replace("{p}", p)).map(|x| x * scale))
                        .collect(),
                )
            })
            .collect()
    };
    let count = r.opt("params/upgrades").unwrap_or(0.0);
    let modes = upgrade_modes(r);
    let mut upgrade_series = Vec::new();
    for (i, p) in PROXIES.iter().enumerate().skip(1) {
        upgrade_series.push((
            names[i].to_string(),
            i,
            modes
                .iter()
                .map(|(scenario, _)| upgrade_load(r, scenario, p).and_then(|u| u.per100))
                .collect(),
        ));
    }
    let h = handoffs(r, "handoff").unwrap_or_default();
    let hl = handoffs(r, "upgrades_keepalive/baton/upgrader").unwrap_or_default();
    let mib = |path: &str| r.opt(path).map(|k| k / 1024.0);
    let wide = r.opt("params/wide_conns").map_or("more".into(), |c| format!("{c:.0}"));
    let h2_throughput = per_proxy(
        &["h2c/{p}/rps", "h2c_upstream/{p}/rps", "grpc_unary/{p}/calls_per_s"],
        1.0,
    );
    let h2_groups = vec!["h2c".to_string(), "h2c → h2c upstream".into(), "gRPC unary".into()];
    vec![
        Panel {
            title: "HTTP/1.1 throughput (1 worker each)".into(),
            y_label: "requests / s".into(),
            groups: vec!["keep-alive".into(), format!("keep-alive ×{wide}"), "new conn".into()],
            series: per_proxy(
                &[
                    "http1_keepalive/{p}/rps",
                    "http1_keepalive_wide/{p}/rps",
                    "http1_close/{p}/rps",
                ],
                1.0,
            ),
            decimals: 0,
            clip: None,
        },
        Panel {
            title: "HTTP/1.1 keep-alive latency".into(),
            y_label: "ms".into(),
            groups: vec!["p50".into(), "p99".into(), "p99.9".into()],
            series: per_proxy(
                &[
                    "http1_keepalive/{p}/p50_us",
                    "http1_keepalive/{p}/p99_us",
                    "http1_keepalive/{p}/p999_us",
                ],
                1e-3,
            ),
            decimals: 2,
            clip: None,
        },
        Panel {
            title: "HTTP/2 throughput (h2load; gRPC: grpcload)".into(),
            y_label: "requests or calls / s".into(),
            groups: h2_groups.clone(),
            clip: chart::clip_direct(&h2_throughput),
            series: h2_throughput,
            decimals: 0,
        },
        Panel {
            title: "HTTP/2 latency p99".into(),
            y_label: "ms".into(),
            groups: h2_groups,
            series: per_proxy(
                &["h2c/{p}/p99_ms", "h2c_upstream/{p}/p99_ms", "grpc_unary/{p}/p99_ms"],
                1.0,
            ),
            decimals: 2,
            clip: None,
        },
        Panel {
            title: "TCP relay, one bulk stream".into(),
            y_label: "Gbit/s".into(),
            groups: vec!["bulk send".into()],
            series: per_proxy(&["tcp_bulk/{p}/gbit_s"], 1.0),
            decimals: 1,
            clip: None,
        },
        Panel {
            title: format!("Failed requests per 100 upgrades/reloads ({count:.0} in a run)"),
            y_label: "failed requests / 100 upgrades".into(),
            groups: vec!["wrk keep-alive".into(), "wrk new conn".into(), "idle pool".into()],
            series: upgrade_series,
            decimals: 0,
            clip: None,
        },
        Panel {
            title: "baton handoff (start → serving; migrate return)".into(),
            y_label: "ms".into(),
            groups: vec!["serving".into(), "migrate − serving".into()],
            series: vec![
                (
                    "p50 idle".into(),
                    1,
                    vec![percentile(&h.serve, 50.0), percentile(&h.migrate_after_serve, 50.0)],
                ),
                (
                    "p99 idle".into(),
                    4,
                    vec![percentile(&h.serve, 99.0), percentile(&h.migrate_after_serve, 99.0)],
                ),
                (
                    "p50 under load".into(),
                    5,
                    vec![percentile(&hl.serve, 50.0), percentile(&hl.migrate_after_serve, 50.0)],
                ),
                (
                    "p99 under load".into(),
                    6,
                    vec![percentile(&hl.serve, 99.0), percentile(&hl.migrate_after_serve, 99.0)],
                ),
            ],
            decimals: 1,
            clip: None,
        },
        Panel {
            title: "Memory (RSS)".into(),
            y_label: "MiB".into(),
            groups: vec![
                "idle".into(),
                "under load".into(),
                "empty (dynamic)".into(),
                "empty (static)".into(),
            ],
            series: vec![
                (
                    "baton".into(),
                    1,
                    vec![
                        mib("memory_kib/baton_idle"),
                        mib("memory_kib/baton_load"),
                        mib("memory_kib/empty"),
                        mib("memory_kib/empty_static"),
                    ],
                ),
                (
                    "nginx worker".into(),
                    2,
                    vec![mib("memory_kib/nginx_idle"), mib("memory_kib/nginx_load"), None, None],
                ),
                (
                    "HAProxy worker".into(),
                    3,
                    vec![
                        mib("memory_kib/haproxy_idle"),
                        mib("memory_kib/haproxy_load"),
                        None,
                        None,
                    ],
                ),
            ],
            decimals: 2,
            clip: None,
        },
    ]
}

/// Every figure of the chart: the bar panels, then the fixed-rate curves and the efficiency panels.
fn panels(r: &Results) -> Vec<chart::Figure> {
    use chart::{Figure, Line, LinePanel, Panel};
    let mut figures: Vec<Figure> = bar_panels(r).into_iter().map(Figure::Bars).collect();
    let names = ["direct", "baton", "nginx", "HAProxy"];
    let one = rates(r, "fixed_rate");
    let two = rates(r, "two_workers");
    let x: Vec<String> = one.iter().map(|&v| format!("{} req/s", rate_label(v))).collect();
    // One line per proxy (1 worker, solid; 2 workers, dashed): its added latency, or its own (direct too).
    let curves = |field: &str, added_only: bool| -> Vec<Line> {
        let mut lines = Vec::new();
        for (i, p) in PROXIES.iter().enumerate() {
            if added_only && *p == "direct" {
                continue;
            }
            for (key, dashed) in [("fixed_rate", false), ("two_workers", true)] {
                if dashed && (*p == "direct" || two.is_empty()) {
                    continue;
                }
                let points: Vec<Option<(f64, bool)>> = one
                    .iter()
                    .map(|&rate| {
                        let v = if added_only {
                            added(r, key, "fixed_rate", rate, p, field)
                        } else {
                            r.opt(&format!("{key}/r{rate:.0}/{p}/{field}"))
                        }?;
                        Some((v, sustained(r, key, rate, p).unwrap_or(true)))
                    })
                    .collect();
                if points.iter().all(Option::is_none) {
                    continue;
                }
                lines.push(Line {
                    name: format!("{}{}", names[i], if dashed { ", 2 workers" } else { "" }),
                    color: i,
                    dashed,
                    points,
                });
            }
        }
        lines
    };
    let conns = r.opt("params/fixed_rate_conns").unwrap_or(64.0);
    for (title, field, added_only) in [
        ("Latency added at a fixed rate: p99", "p99_us", true),
        ("Latency added at a fixed rate: p99.9", "p999_us", true),
        ("Latency at a fixed rate, direct included: p99", "p99_us", false),
    ] {
        figures.push(Figure::Lines(LinePanel {
            title: title.into(),
            y_label: format!("µs (log; {conns:.0} conns; hollow: rate not sustained)"),
            x: x.clone(),
            lines: curves(field, added_only),
            floor: 1.0,
        }));
    }
    let proxies_only = |paths: &[&str], scale: f64| -> Vec<(String, usize, Vec<Option<f64>>)> {
        PROXIES
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, p)| {
                (
                    names[i].to_string(),
                    i,
                    paths
                        .iter()
                        .map(|path| r.opt(&path.replace("{p}", p)).map(|x| x * scale))
                        .collect(),
                )
            })
            .collect()
    };
    let cpu_rate = r.opt("fixed_rate/cpu_rate").unwrap_or(10_000.0);
    let cpu_path = format!("fixed_rate/r{cpu_rate:.0}/{{p}}/cpu_us_per_req");
    figures.push(Figure::Bars(Panel {
        title: "The proxy's CPU per request (user + kernel)".into(),
        y_label: "µs per request".into(),
        groups: vec![
            format!("fixed {} req/s", rate_label(cpu_rate)),
            "wrk keep-alive (flat out)".into(),
        ],
        series: proxies_only(&[cpu_path.as_str(), "http1_keepalive/{p}/cpu_us_per_req"], 1.0),
        decimals: 1,
        clip: None,
    }));
    let gbit = r.opt("tcp_rate/rate_gbit").unwrap_or(1.0);
    figures.push(Figure::Bars(Panel {
        title: format!("TCP relay at a fixed {gbit} Gbit/s: CPU per GB"),
        y_label: "ms of CPU per GB relayed".into(),
        groups: vec![format!("{gbit} Gbit/s")],
        series: proxies_only(&["tcp_rate/{p}/cpu_ms_per_gb"], 1.0),
        decimals: 0,
        clip: None,
    }));
    let n = r.opt("many_conns/conns").unwrap_or(0.0);
    let mut rss = proxies_only(
        &["many_conns/{p}/rss_before_kib", "many_conns/{p}/rss_holding_kib"],
        1.0 / 1024.0,
    );
    if let Some(b) = rss.first_mut() {
        b.2.push(r.opt("many_conns/baton/rss_after_handoff_kib").map(|k| k / 1024.0));
    }
    figures.push(Figure::Bars(Panel {
        title: format!("{} idle keep-alive connections: RSS", fmt_num(Some(n), 0)),
        y_label: "MiB".into(),
        groups: vec!["before".into(), "holding them".into(), "baton, after upgrade".into()],
        series: rss,
        decimals: 1,
        clip: None,
    }));
    let mut two_rps = per_proxy_two(r, &names);
    if let Some(d) = two_rps.first_mut() {
        d.2 = vec![r.opt("http1_keepalive_wide/direct/rps")];
    }
    figures.push(Figure::Bars(Panel {
        title: "Two workers each: HTTP/1.1 keep-alive throughput".into(),
        y_label: "requests / s".into(),
        groups: vec![format!(
            "wrk -c{:.0}",
            r.opt("two_workers/connections").unwrap_or(128.0)
        )],
        series: two_rps,
        decimals: 0,
        clip: None,
    }));
    figures
}

/// The two-worker keep-alive req/s of each target (direct filled in by the caller).
fn per_proxy_two(r: &Results, names: &[&str; 4]) -> Vec<(String, usize, Vec<Option<f64>>)> {
    PROXIES
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                names[i].to_string(),
                i,
                vec![r.opt(&format!("two_workers/keepalive/{p}/rps"))],
            )
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let Some(json) = opt("--json") else {
        eprintln!("usage: baton-bench-chart --json FILE [--md FILE] [--png FILE] [--font TTF]");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        eprintln!("baton-bench-chart: reading {}: {e}", json.display());
        std::process::exit(1);
    });
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        eprintln!("baton-bench-chart: parsing {}: {e}", json.display());
        std::process::exit(1);
    });
    let mut r = Results {
        v,
        problems: Vec::new(),
    };
    let rep = build_report(&mut r);
    let md = render_markdown(&r, &rep);
    if let Some(path) = opt("--md") {
        if let Err(e) = std::fs::write(&path, &md) {
            eprintln!("baton-bench-chart: writing {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    print!("{md}");
    for m in &rep.missed {
        println!("MISSED: {m}");
    }
    let mut broken = !r.problems.is_empty();
    for p in &r.problems {
        eprintln!("baton-bench-chart: results.json: {p}");
    }
    if let Some(png) = opt("--png") {
        let font = opt("--font").unwrap_or_else(|| PathBuf::from("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"));
        match std::fs::read(&font) {
            Ok(bytes) => {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes).is_err() {
                    eprintln!("baton-bench-chart: {} is not a usable font", font.display());
                    broken = true;
                } else {
                    let mode = r.text("mode");
                    let title = format!(
                        "baton vs nginx vs HAProxy on loopback, {} CPUs, {}{}",
                        r.text("machine/nproc"),
                        r.text("machine/date"),
                        if mode == "smoke" { " (smoke run)" } else { "" }
                    );
                    if let Err(e) = chart::draw(&png, &title, &panels(&r)) {
                        eprintln!("baton-bench-chart: drawing {}: {e}", png.display());
                        broken = true;
                    }
                }
            }
            Err(e) => {
                eprintln!("baton-bench-chart: reading the font {}: {e}", font.display());
                broken = true;
            }
        }
    }
    std::process::exit(i32::from(broken));
}
