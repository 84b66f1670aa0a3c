//! `loadgen`: an HTTP/1.1 load generator that counts every failed request precisely.
//!
//! Two kinds of clients run concurrently against `--target ADDR`:
//! * `--keepalive N` clients each reuse one keep-alive connection. After a complete response that carries
//!   `Connection: close`, or when the connection turns out to be closed before the next request was written,
//!   the client opens a new connection: that is normal connection management, not a failure.
//! * `--newconn M` clients each open a new TCP connection per request and send `Connection: close`.
//!
//! A request counts as failed unless a complete 2xx response (headers and whole body) arrives within 5 s:
//! refused or reset connections, a connection closed before or during the response, a truncated body, a
//! non-2xx status and timeouts are all failures. Failed requests are never retried.
//!
//! The keep-alive clients also count their connections: `keepalive_opened` is every connection they opened
//! (TCP connect and HTTP handshake done, the first one of each client included), `keepalive_reopened` every
//! connection they had to give up while the load ran, so that the next request needed a new one: the server
//! closed it while it was idle, a response carried `Connection: close` (or was HTTP/1.0), or a request on it
//! failed or timed out. Against a server that never closes a keep-alive connection under a busy client,
//! `keepalive_reopened` is 0 and `keepalive_opened` equals `--keepalive`. Nothing is counted after the stop.
//!
//! Runs for `--duration` (e.g. `30s`; forever if omitted) or until SIGTERM/SIGINT. Stdout, one JSON object
//! per line, flushed after each:
//! * every `--report-interval`:
//!   `{"t":1.0,"requests":1234,"failed":0,"rps":1200.0,"keepalive_opened":8,"keepalive_reopened":0}`
//!   (`requests`, `failed` and the connection counts are cumulative; `requests` counts finished requests,
//!   successful or not; `rps` is over the last interval);
//! * at the end: `{"summary":true,"requests":N,"failed":F,"errors":{"<kind>":count,...},"keepalive_opened":O,
//!   "keepalive_reopened":R,"keepalive_reopen_reasons":{"<reason>":count,...}}`, the reasons being
//!   `server_closed` (closed while idle, seen before the next request was written), `connection_close` (the
//!   response said so) and `error:<kind>` (the request failed, `<kind>` as in `errors`).
//!
//! Exit code 0 if no request failed, 1 otherwise, 2 on a usage error.
//!
//! ```text
//! cargo run --release --example loadgen -- --target 127.0.0.1:15006 --keepalive 8 --newconn 4 --duration 10s
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use http::{header, Request, Response};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Deadline for one request: connect (if needed), send, response headers and the whole body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for --keepalive and --newconn.
const MAX_CLIENTS: usize = 10_000;
/// Pause after a failed request, so an unreachable target does not turn into a busy loop.
const FAILURE_BACKOFF: Duration = Duration::from_millis(20);

#[derive(Parser, Debug)]
#[command(about = "HTTP/1.1 load generator with precise failure accounting")]
struct Args {
    /// Address of the HTTP listener under test.
    #[arg(long)]
    target: SocketAddr,
    /// Clients that each reuse one keep-alive connection [default: 8 if --newconn is not given, else 0].
    #[arg(long, value_name = "N")]
    keepalive: Option<usize>,
    /// Clients that open a new connection for every request [default: 0].
    #[arg(long, value_name = "M")]
    newconn: Option<usize>,
    /// How long to run (e.g. `30s`, `500ms`, `2m`); until SIGTERM/SIGINT if omitted.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Interval between progress lines.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    report_interval: Duration,
    /// Request path (origin form).
    #[arg(long, default_value = "/")]
    path: String,
}

/// Parses `30s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("invalid duration {s:?} (examples: 30s, 500ms, 2m)"))?;
    if !value.is_finite() || value <= 0.0 {
        bail!("duration must be positive: {s:?}");
    }
    Duration::try_from_secs_f64(value * scale)
        .ok()
        .filter(|d| *d >= Duration::from_millis(1))
        .with_context(|| format!("duration out of range (1ms or more): {s:?}"))
}

/// Counters shared by all clients.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Keep-alive connections opened (handshake done), first ones included.
    keepalive_opened: AtomicU64,
    /// Keep-alive connections given up, each of which the client then had to reopen.
    keepalive_reopened: AtomicU64,
    keepalive_reopen_reasons: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn success(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn failure(&self, kind: String) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.failed.fetch_add(1, Ordering::Relaxed);
        // A poisoned lock only means another client panicked mid-insert; the map is still usable.
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(kind).or_insert(0) += 1;
    }

    fn keepalive_opened(&self) {
        self.keepalive_opened.fetch_add(1, Ordering::Relaxed);
    }

    fn keepalive_reopened(&self, reason: String) {
        self.keepalive_reopened.fetch_add(1, Ordering::Relaxed);
        let mut reasons = self.keepalive_reopen_reasons.lock().unwrap_or_else(|e| e.into_inner());
        *reasons.entry(reason).or_insert(0) += 1;
    }
}

/// Why a request failed; the string becomes a key of the summary's `errors` map.
#[derive(Debug)]
struct Failure(String);

impl Failure {
    fn new(stage: &str, what: impl std::fmt::Display) -> Self {
        Failure(format!("{stage}:{what}"))
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(failed) => std::process::exit(if failed == 0 { 0 } else { 1 }),
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "loadgen: {err:#}");
            std::process::exit(2);
        }
    }
}

/// Runs the load and prints the reports; returns the number of failed requests.
async fn run(args: Args) -> Result<u64> {
    let newconn = args.newconn.unwrap_or(0);
    let keepalive = args.keepalive.unwrap_or(if args.newconn.is_none() { 8 } else { 0 });
    if keepalive > MAX_CLIENTS || newconn > MAX_CLIENTS {
        bail!("at most {MAX_CLIENTS} clients of each kind");
    }
    if keepalive + newconn == 0 {
        bail!("nothing to do: --keepalive and --newconn are both 0");
    }
    args.path
        .parse::<http::uri::PathAndQuery>()
        .ok()
        .filter(|p| p.as_str().starts_with('/'))
        .with_context(|| format!("--path must be an origin-form path like /foo?x=1, got {:?}", args.path))?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let target = args.target;
    let path: Arc<str> = Arc::from(args.path.as_str());

    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..keepalive {
        clients.spawn(keepalive_client(target, path.clone(), stats.clone(), stop_rx.clone()));
    }
    for _ in 0..newconn {
        clients.spawn(newconn_client(target, path.clone(), stats.clone(), stop_rx.clone()));
    }

    let start = Instant::now();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut ticker = tokio::time::interval(args.report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    let mut last_requests = 0u64;
    let mut last_t = 0.0f64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let t = start.elapsed().as_secs_f64();
                let requests = stats.requests.load(Ordering::Relaxed);
                let failed = stats.failed.load(Ordering::Relaxed);
                let rps = (requests - last_requests) as f64 / (t - last_t).max(1e-9);
                emit(&Report {
                    t: round1(t),
                    requests,
                    failed,
                    rps: round1(rps),
                    keepalive_opened: stats.keepalive_opened.load(Ordering::Relaxed),
                    keepalive_reopened: stats.keepalive_reopened.load(Ordering::Relaxed),
                })?;
                last_requests = requests;
                last_t = t;
            }
            _ = sleep_until(deadline) => break,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    // Requests still in flight are abandoned and not counted either way.
    let _ = stop_tx.send(true);
    while clients.join_next().await.is_some() {}

    let requests = stats.requests.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    let errors = stats.errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let keepalive_reopen_reasons = stats
        .keepalive_reopen_reasons
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    emit(&Summary {
        summary: true,
        requests,
        failed,
        errors,
        keepalive_opened: stats.keepalive_opened.load(Ordering::Relaxed),
        keepalive_reopened: stats.keepalive_reopened.load(Ordering::Relaxed),
        keepalive_reopen_reasons,
    })?;
    Ok(failed)
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A progress line (field order as documented; scripts read the first fields by position, new ones go last).
#[derive(Serialize)]
struct Report {
    t: f64,
    requests: u64,
    failed: u64,
    rps: f64,
    keepalive_opened: u64,
    keepalive_reopened: u64,
}

/// The final line (new fields go last).
#[derive(Serialize)]
struct Summary {
    summary: bool,
    requests: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    keepalive_opened: u64,
    keepalive_reopened: u64,
    keepalive_reopen_reasons: BTreeMap<String, u64>,
}

/// Prints one JSON line and flushes.
fn emit(value: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(value).context("encoding a report")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing to stdout")?;
    out.flush().context("flushing stdout")
}

/// Runs `fut` unless `stop` fires first (then the result is dropped uncounted).
async fn unless_stopped<T>(stop: &mut watch::Receiver<bool>, fut: impl std::future::Future<Output = T>) -> Option<T> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        // Only `true` is ever sent, and a dropped sender also means "stop".
        _ = stop.changed() => None,
        out = fut => Some(out),
    }
}

type Conn = SendRequest<Empty<Bytes>>;

/// Gives up the client's keep-alive connection, if it has one: the next request must open a new one.
fn give_up(conn: &mut Option<Conn>, stats: &Stats, reason: impl Into<String>) {
    if conn.take().is_some() {
        stats.keepalive_reopened(reason.into());
    }
}

/// A client that reuses one keep-alive connection as long as the server lets it.
async fn keepalive_client(target: SocketAddr, path: Arc<str>, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    let mut conn: Option<Conn> = None;
    while let Some(result) = unless_stopped(&mut stop, keepalive_request(target, &path, &mut conn, &stats)).await {
        match result {
            Ok(()) => stats.success(),
            Err(failure) => {
                // Already given up (with its reason) on every path that had a connection.
                give_up(&mut conn, &stats, format!("error:{}", failure.0));
                stats.failure(failure.0);
                tokio::time::sleep(FAILURE_BACKOFF).await;
            }
        }
    }
}

/// One request on the client's keep-alive connection (opening one first if needed), within the deadline.
async fn keepalive_request(
    target: SocketAddr,
    path: &str,
    conn: &mut Option<Conn>,
    stats: &Stats,
) -> Result<(), Failure> {
    let attempt = async {
        // A connection the server closed after its last complete response is simply replaced. A connection
        // that closes after this check but before the request is written is detected by `try_send_request`
        // handing the request back; it was never sent, so sending it on a new connection is not a retry.
        let mut req = Some(build_request(path, false));
        for _ in 0..2 {
            if let Some(sender) = conn.as_mut() {
                if sender.ready().await.is_err() {
                    give_up(conn, stats, "server_closed");
                }
            }
            let sender = match conn {
                Some(sender) => sender,
                None => {
                    let sender = connect(target).await?;
                    stats.keepalive_opened();
                    conn.insert(sender)
                }
            };
            let Some(request) = req.take() else { break };
            match sender.try_send_request(request).await {
                Ok(resp) => {
                    let close = wants_close(&resp);
                    let result = finish_response(resp).await;
                    match &result {
                        Err(failure) => give_up(conn, stats, format!("error:{}", failure.0)),
                        Ok(()) if close => give_up(conn, stats, "connection_close"),
                        Ok(()) => {}
                    }
                    return result;
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) => {
                        give_up(conn, stats, "server_closed");
                        req = Some(unsent);
                    }
                    None => {
                        let failure = Failure::new("send", classify_hyper(err.error()));
                        give_up(conn, stats, format!("error:{}", failure.0));
                        return Err(failure);
                    }
                },
            }
        }
        Err(Failure::new(
            "send",
            "connection closed before the request was written, twice",
        ))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, attempt).await {
        Ok(result) => result,
        Err(_) => {
            give_up(conn, stats, "error:timeout");
            Err(Failure("timeout".into()))
        }
    }
}

/// A client that opens a new connection for every request and asks the server to close it.
async fn newconn_client(target: SocketAddr, path: Arc<str>, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    while let Some(result) = unless_stopped(&mut stop, newconn_request(target, &path)).await {
        match result {
            Ok(()) => stats.success(),
            Err(failure) => {
                stats.failure(failure.0);
                tokio::time::sleep(FAILURE_BACKOFF).await;
            }
        }
    }
}

/// One request on a new connection, within the deadline.
async fn newconn_request(target: SocketAddr, path: &str) -> Result<(), Failure> {
    let attempt = async {
        let mut sender = connect(target).await?;
        let resp = sender
            .send_request(build_request(path, true))
            .await
            .map_err(|err| Failure::new("send", classify_hyper(&err)))?;
        finish_response(resp).await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(Failure("timeout".into())))
}

/// Opens a TCP connection and starts an HTTP/1.1 client connection on it.
async fn connect(target: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, Failure> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|err| Failure::new("connect", io_kind(&err)))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| Failure::new("handshake", classify_hyper(&err)))?;
    // Errors of the connection itself surface through the request and body futures.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn build_request(path: &str, close: bool) -> Request<Empty<Bytes>> {
    let mut builder = Request::get(path).header(header::HOST, "loadgen");
    if close {
        builder = builder.header(header::CONNECTION, "close");
    }
    // The path comes from the command line and was validated at start; the fallback is unreachable.
    builder
        .body(Empty::new())
        .unwrap_or_else(|_| Request::new(Empty::new()))
}

/// Whether the server announced that it closes the connection after this response.
fn wants_close(resp: &Response<Incoming>) -> bool {
    resp.headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
        || resp.version() == http::Version::HTTP_10
}

/// Checks the status and reads the whole body.
async fn finish_response(resp: Response<Incoming>) -> Result<(), Failure> {
    let status = resp.status();
    // Read the body even for an error status, so the failure kind reflects the status, not a read error.
    let body = resp.into_body().collect().await;
    if !status.is_success() {
        return Err(Failure::new("status", status.as_u16()));
    }
    body.map(|_| ())
        .map_err(|err| Failure::new("body", classify_hyper(&err)))
}

/// A short, stable name for a hyper error: the underlying I/O error kind if any, else hyper's category.
fn classify_hyper(err: &hyper::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io_kind(io);
        }
        source = e.source();
    }
    if err.is_incomplete_message() {
        "closed_before_complete_response"
    } else if err.is_parse() {
        "parse"
    } else if err.is_canceled() {
        "canceled"
    } else if err.is_closed() {
        "closed"
    } else if err.is_timeout() {
        "timeout"
    } else {
        "other"
    }
}

fn io_kind(err: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused => "refused",
        ConnectionReset => "reset",
        ConnectionAborted => "aborted",
        BrokenPipe => "broken_pipe",
        UnexpectedEof => "eof",
        TimedOut => "timeout",
        AddrNotAvailable => "addr_not_available",
        _ => "io",
    }
}
