//! `loadgen`: an HTTP/1.1 load generator that counts every failed request precisely, with an optional WebSocket
//! client, an optional gRPC client, an optional SSE client and an optional slow-upload client beside it.
//!
//! Two kinds of HTTP clients run concurrently against `--target ADDR`:
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
//! With `--websocket ADDR`, one WebSocket client opens ONE connection to `ws://ADDR/ws` (the example upstream's
//! echo, through baton's `http` listener) and keeps it for the whole run: it sends text and binary frames of 0 to
//! 64 KiB, each carrying its sequence number and the checksum of its payload (`support/ws_frames.rs`), one every
//! 10 ms with at most 8 not echoed yet, and checks every echo, in order. At the stop it waits for the echoes of
//! what it sent and completes the close handshake. A frame echoed wrong or not at all (5 s), a connection
//! refused, cut or closed by the server, a failed handshake: each is an error (`ws_errors`, kinds in
//! `ws_error_kinds`); the client then opens a new connection, and every connection after the first counts in
//! `ws_reconnects`. Through baton's upgrades the tunnel is handed over: both stay 0.
//!
//! With `--grpc ADDR`, one gRPC client (tonic) on one channel calls the unary `/baton.demo.Echo/Echo` (raw bytes,
//! `support/grpc_raw.rs`) in a loop, each call with a distinct payload that must come back (5 s deadline). tonic
//! reconnects the channel by itself when its HTTP/2 connection goes (baton sends GOAWAY at each upgrade: HTTP/2
//! connections are not handed over); `grpc_connections` counts the TCP connections it opened. A call that tonic
//! refused unsent at a GOAWAY (`Cancelled` "connection closed" or `Internal` GoAway NO_ERROR: hyperium/hyper#2500)
//! never reached the server: it is sent again once and counted in `grpc_resent` (reasons in
//! `grpc_resent_reasons`), not as failed. Any other error, or the resent call failing, counts in `grpc_failed`
//! (kinds in `grpc_errors`); `grpc_ok` counts the calls answered with their own payload.
//!
//! With `--sse ADDR`, one SSE client (hyper's HTTP/1 client) opens ONE connection to `http://ADDR/sse` (the
//! example upstream's event stream, one event every 50 ms, through baton's `http` listener) and reads it for the
//! whole run, checking that every event is the one expected next (`support/http_streams.rs`): ids 1, 2, 3… in
//! order, none missing or repeated, each `data:` line intact. `sse_events` counts the events checked. A wrong
//! event, no event for 5 s, a stream that ends or breaks, a connection refused, a non-200 answer or one that is
//! not `text/event-stream`: each is an error (`sse_errors`, kinds in `sse_error_kinds`); the client then opens a
//! new connection with `Last-Event-ID` (the stream goes on after the last event checked), and every connection
//! after the first counts in `sse_reconnects`. Through baton's upgrades the exchange is handed over: both stay 0.
//!
//! With `--upload ADDR`, one upload client sends, on ONE keep-alive connection to ADDR, `POST /upload` requests
//! (origin form, with a Host header) of 1 MiB each, paced (16 KiB every 40 ms: about 2.6 s each) and alternately
//! chunked and with a `Content-Length`, and checks each answer of the example upstream: the length, the FNV-1a
//! checksum and the framing of what it sent (`support/http_streams.rs`). `uploads_ok` counts the uploads answered
//! right; any other outcome (a wrong answer, a non-2xx status, a connection error, no answer 15 s after the start)
//! counts in `uploads_failed` (kinds in `upload_errors`), and the next upload opens a new connection.
//! `upload_reconnects` counts the connections opened after the first (after a failure, or when the server
//! closed the idle one). Through baton's upgrades the upload in flight is handed over: both stay 0.
//!
//! Runs for `--duration` (e.g. `30s`; forever if omitted) or until SIGTERM/SIGINT. Stdout, one JSON object
//! per line, flushed after each:
//! * every `--report-interval`:
//!   `{"t":1.0,"requests":1234,"failed":0,"rps":1200.0,"keepalive_opened":8,"keepalive_reopened":0}`
//!   (`requests`, `failed` and the connection counts are cumulative; `requests` counts finished requests,
//!   successful or not; `rps` is over the last interval), then with `--websocket`
//!   `"ws_frames":F,"ws_errors":0,"ws_reconnects":0`, with `--grpc` `"grpc_ok":N,"grpc_failed":0,"grpc_resent":R`,
//!   with `--sse` `"sse_events":E,"sse_errors":0,"sse_reconnects":0` and with `--upload`
//!   `"uploads_ok":U,"uploads_failed":0` (cumulative);
//! * at the end: `{"summary":true,"requests":N,"failed":F,"errors":{"<kind>":count,...},"keepalive_opened":O,
//!   "keepalive_reopened":R,"keepalive_reopen_reasons":{"<reason>":count,...}}`, the reasons being
//!   `server_closed` (closed while idle, seen before the next request was written), `connection_close` (the
//!   response said so) and `error:<kind>` (the request failed, `<kind>` as in `errors`); then with `--websocket`
//!   `"ws_frames":F,"ws_bytes":B,"ws_errors":E,"ws_reconnects":R,"ws_error_kinds":{...}` (`ws_bytes`: the
//!   payload bytes echoed) and with `--grpc` `"grpc_ok":N,"grpc_failed":F,"grpc_resent":R,"grpc_connections":C,
//!   "grpc_errors":{...},"grpc_resent_reasons":{...}`, with `--sse` `"sse_events":E,"sse_errors":0,
//!   "sse_reconnects":0,"sse_error_kinds":{...}` and with `--upload` `"uploads_ok":U,"uploads_failed":0,
//!   "upload_bytes":B,"upload_reconnects":0,"upload_errors":{...}` (`upload_bytes`: the bytes of the uploads
//!   answered right).
//!
//! Exit code 0 if no request failed (and no WebSocket error or reconnect, no gRPC call failed, no SSE error or
//! reconnect, no upload failed or reconnected), 1 otherwise, 2 on a usage error.
//!
//! ```text
//! cargo run --release --example loadgen -- --target 127.0.0.1:15006 --keepalive 8 --newconn 4 --duration 10s
//! cargo run --release --example loadgen -- --target 127.0.0.1:15006 --websocket 127.0.0.1:15006 \
//!     --grpc 127.0.0.1:15007 --sse 127.0.0.1:15006 --upload 127.0.0.1:15006 --duration 10s
//! ```

// The codec and the test for the calls tonic refuses unsent, shared with upstream and tests/grpc.rs (the server
// half is not used here).
#[allow(dead_code)]
#[path = "support/grpc_raw.rs"]
mod grpc_raw;
#[path = "support/ws_frames.rs"]
mod ws_frames;
// The SSE events and the upload answers, shared with upstream (which serves them).
#[path = "support/http_streams.rs"]
mod http_streams;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use grpc_raw::{method_path, refused_unsent, BoxFuture, RawCodec};
use http::uri::PathAndQuery;
use http::{header, Request, Response};
use http_body_util::{BodyExt as _, Empty};
use http_streams::{fnv, sse_event, sse_event_id, upload_answer, upload_bytes, FNV_START, SSE_PATH, UPLOAD_PATH};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::{self, Message};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;
use ws_frames::{check_echo, frame};

/// Deadline for one request: connect (if needed), send, response headers and the whole body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for --keepalive and --newconn.
const MAX_CLIENTS: usize = 10_000;
/// Pause after a failed request, so an unreachable target does not turn into a busy loop.
const FAILURE_BACKOFF: Duration = Duration::from_millis(20);
/// The path of the WebSocket echo (the example upstream's).
const WS_PATH: &str = "/ws";
/// Interval between two WebSocket frames.
const WS_INTERVAL: Duration = Duration::from_millis(10);
/// WebSocket frames sent and not echoed yet, at most.
const WS_WINDOW: usize = 8;
/// Longest wait for the WebSocket handshake, for the next echo, and for the answer to the close frame.
const WS_TIMEOUT: Duration = Duration::from_secs(5);
/// The gRPC service and method called (the example upstream's).
const GRPC_SERVICE: &str = "baton.demo.Echo";
const GRPC_METHOD: &str = "Echo";
/// Deadline for one gRPC call (and for the call sent again).
const GRPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two gRPC calls.
const GRPC_INTERVAL: Duration = Duration::from_millis(2);
/// Longest wait for the SSE response head, and for the next event (the upstream sends one every 50 ms).
const SSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The size of one upload.
const UPLOAD_SIZE: usize = 1024 * 1024;
/// An upload is sent in pieces of this size, one every `UPLOAD_PACE`: 64 pieces, about 2.6 s.
const UPLOAD_PIECE: usize = 16 * 1024;
const UPLOAD_PACE: Duration = Duration::from_millis(40);
/// Deadline for one upload: connect (if needed), the paced body, the answer.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// Also run one WebSocket client, on one connection to ws://ADDR/ws (the example upstream's echo).
    #[arg(long, value_name = "ADDR")]
    websocket: Option<SocketAddr>,
    /// Also run one gRPC client (tonic, one channel) calling /baton.demo.Echo/Echo on ADDR (h2c).
    #[arg(long, value_name = "ADDR")]
    grpc: Option<SocketAddr>,
    /// Also run one SSE client, reading http://ADDR/sse (the example upstream's event stream) on one connection.
    #[arg(long, value_name = "ADDR")]
    sse: Option<SocketAddr>,
    /// Also run one upload client, sending slow 1 MiB POST /upload requests on one keep-alive connection to ADDR.
    #[arg(long, value_name = "ADDR")]
    upload: Option<SocketAddr>,
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
    /// WebSocket frames echoed intact, and their payload bytes.
    ws_frames: AtomicU64,
    ws_bytes: AtomicU64,
    /// WebSocket errors (each ends a connection), by kind.
    ws_errors: AtomicU64,
    ws_error_kinds: Mutex<BTreeMap<String, u64>>,
    /// WebSocket connections opened after the first.
    ws_reconnects: AtomicU64,
    /// gRPC calls answered with their own payload.
    grpc_ok: AtomicU64,
    /// gRPC calls failed, by kind.
    grpc_failed: AtomicU64,
    grpc_errors: Mutex<BTreeMap<String, u64>>,
    /// gRPC calls refused unsent by tonic at a GOAWAY and sent again, by the refusal's code.
    grpc_resent: AtomicU64,
    grpc_resent_reasons: Mutex<BTreeMap<String, u64>>,
    /// TCP connections the gRPC channel opened.
    grpc_connections: AtomicU64,
    /// SSE events received in order and intact.
    sse_events: AtomicU64,
    /// SSE errors (each ends a connection), by kind.
    sse_errors: AtomicU64,
    sse_error_kinds: Mutex<BTreeMap<String, u64>>,
    /// SSE connections opened after the first.
    sse_reconnects: AtomicU64,
    /// Uploads answered with their own length, checksum and framing, and their bytes.
    uploads_ok: AtomicU64,
    upload_bytes: AtomicU64,
    /// Uploads failed, by kind.
    uploads_failed: AtomicU64,
    upload_errors: Mutex<BTreeMap<String, u64>>,
    /// Upload connections opened after the first.
    upload_reconnects: AtomicU64,
}

/// Adds one to `key` in a map of counts.
fn count(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    // A poisoned lock only means another client panicked mid-insert; the map is still usable.
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    *map.entry(key).or_insert(0) += 1;
}

/// A copy of a map of counts.
fn counts(map: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    map.lock().unwrap_or_else(|e| e.into_inner()).clone()
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

    fn ws_progress(&self) -> WsProgress {
        WsProgress {
            ws_frames: self.ws_frames.load(Ordering::Relaxed),
            ws_errors: self.ws_errors.load(Ordering::Relaxed),
            ws_reconnects: self.ws_reconnects.load(Ordering::Relaxed),
        }
    }

    fn grpc_progress(&self) -> GrpcProgress {
        GrpcProgress {
            grpc_ok: self.grpc_ok.load(Ordering::Relaxed),
            grpc_failed: self.grpc_failed.load(Ordering::Relaxed),
            grpc_resent: self.grpc_resent.load(Ordering::Relaxed),
        }
    }

    fn sse_progress(&self) -> SseProgress {
        SseProgress {
            sse_events: self.sse_events.load(Ordering::Relaxed),
            sse_errors: self.sse_errors.load(Ordering::Relaxed),
            sse_reconnects: self.sse_reconnects.load(Ordering::Relaxed),
        }
    }

    fn upload_progress(&self) -> UploadProgress {
        UploadProgress {
            uploads_ok: self.uploads_ok.load(Ordering::Relaxed),
            uploads_failed: self.uploads_failed.load(Ordering::Relaxed),
        }
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

/// Runs the load and prints the reports; returns the number of failed requests, WebSocket errors and reconnects,
/// failed gRPC calls, SSE errors and reconnects, and failed uploads and upload reconnects.
async fn run(args: Args) -> Result<u64> {
    let newconn = args.newconn.unwrap_or(0);
    let keepalive = args.keepalive.unwrap_or(if args.newconn.is_none() { 8 } else { 0 });
    if keepalive > MAX_CLIENTS || newconn > MAX_CLIENTS {
        bail!("at most {MAX_CLIENTS} clients of each kind");
    }
    if keepalive + newconn == 0
        && args.websocket.is_none()
        && args.grpc.is_none()
        && args.sse.is_none()
        && args.upload.is_none()
    {
        bail!(
            "nothing to do: --keepalive and --newconn are both 0, and none of --websocket, --grpc, --sse, --upload \
             is given"
        );
    }
    let grpc = match args.grpc {
        Some(addr) => Some(GrpcTarget {
            endpoint: Endpoint::from_shared(format!("http://{addr}")).context("the gRPC endpoint")?,
            addr,
            path: method_path(GRPC_SERVICE, GRPC_METHOD).context("the gRPC method's path")?,
        }),
        None => None,
    };
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
    if let Some(addr) = args.websocket {
        clients.spawn(websocket_client(addr, stats.clone(), stop_rx.clone()));
    }
    let with_grpc = grpc.is_some();
    if let Some(grpc) = grpc {
        clients.spawn(grpc_client(grpc, stats.clone(), stop_rx.clone()));
    }
    let with_ws = args.websocket.is_some();
    if let Some(addr) = args.sse {
        clients.spawn(sse_client(addr, stats.clone(), stop_rx.clone()));
    }
    let with_sse = args.sse.is_some();
    if let Some(addr) = args.upload {
        clients.spawn(upload_client(addr, stats.clone(), stop_rx.clone()));
    }
    let with_upload = args.upload.is_some();

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
                    ws: with_ws.then(|| stats.ws_progress()),
                    grpc: with_grpc.then(|| stats.grpc_progress()),
                    sse: with_sse.then(|| stats.sse_progress()),
                    upload: with_upload.then(|| stats.upload_progress()),
                })?;
                last_requests = requests;
                last_t = t;
            }
            _ = sleep_until(deadline) => break,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }

    // Requests (and uploads) still in flight are abandoned and not counted either way, the SSE stream is
    // dropped (the WebSocket client waits for the echoes of the frames it sent and closes).
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
        ws: with_ws.then(|| WsSummary {
            ws_frames: stats.ws_frames.load(Ordering::Relaxed),
            ws_bytes: stats.ws_bytes.load(Ordering::Relaxed),
            ws_errors: stats.ws_errors.load(Ordering::Relaxed),
            ws_reconnects: stats.ws_reconnects.load(Ordering::Relaxed),
            ws_error_kinds: counts(&stats.ws_error_kinds),
        }),
        grpc: with_grpc.then(|| GrpcSummary {
            grpc_ok: stats.grpc_ok.load(Ordering::Relaxed),
            grpc_failed: stats.grpc_failed.load(Ordering::Relaxed),
            grpc_resent: stats.grpc_resent.load(Ordering::Relaxed),
            grpc_connections: stats.grpc_connections.load(Ordering::Relaxed),
            grpc_errors: counts(&stats.grpc_errors),
            grpc_resent_reasons: counts(&stats.grpc_resent_reasons),
        }),
        sse: with_sse.then(|| SseSummary {
            sse_events: stats.sse_events.load(Ordering::Relaxed),
            sse_errors: stats.sse_errors.load(Ordering::Relaxed),
            sse_reconnects: stats.sse_reconnects.load(Ordering::Relaxed),
            sse_error_kinds: counts(&stats.sse_error_kinds),
        }),
        upload: with_upload.then(|| UploadSummary {
            uploads_ok: stats.uploads_ok.load(Ordering::Relaxed),
            uploads_failed: stats.uploads_failed.load(Ordering::Relaxed),
            upload_bytes: stats.upload_bytes.load(Ordering::Relaxed),
            upload_reconnects: stats.upload_reconnects.load(Ordering::Relaxed),
            upload_errors: counts(&stats.upload_errors),
        }),
    })?;
    Ok(failed
        + stats.ws_errors.load(Ordering::Relaxed)
        + stats.ws_reconnects.load(Ordering::Relaxed)
        + stats.grpc_failed.load(Ordering::Relaxed)
        + stats.sse_errors.load(Ordering::Relaxed)
        + stats.sse_reconnects.load(Ordering::Relaxed)
        + stats.uploads_failed.load(Ordering::Relaxed)
        + stats.upload_reconnects.load(Ordering::Relaxed))
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
    #[serde(flatten)]
    ws: Option<WsProgress>,
    #[serde(flatten)]
    grpc: Option<GrpcProgress>,
    #[serde(flatten)]
    sse: Option<SseProgress>,
    #[serde(flatten)]
    upload: Option<UploadProgress>,
}

/// The WebSocket client's fields of a progress line (with `--websocket` only).
#[derive(Serialize)]
struct WsProgress {
    ws_frames: u64,
    ws_errors: u64,
    ws_reconnects: u64,
}

/// The gRPC client's fields of a progress line (with `--grpc` only).
#[derive(Serialize)]
struct GrpcProgress {
    grpc_ok: u64,
    grpc_failed: u64,
    grpc_resent: u64,
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
    #[serde(flatten)]
    ws: Option<WsSummary>,
    #[serde(flatten)]
    grpc: Option<GrpcSummary>,
    #[serde(flatten)]
    sse: Option<SseSummary>,
    #[serde(flatten)]
    upload: Option<UploadSummary>,
}

/// The WebSocket client's fields of the final line (with `--websocket` only).
#[derive(Serialize)]
struct WsSummary {
    ws_frames: u64,
    ws_bytes: u64,
    ws_errors: u64,
    ws_reconnects: u64,
    ws_error_kinds: BTreeMap<String, u64>,
}

/// The gRPC client's fields of the final line (with `--grpc` only).
#[derive(Serialize)]
struct GrpcSummary {
    grpc_ok: u64,
    grpc_failed: u64,
    grpc_resent: u64,
    grpc_connections: u64,
    grpc_errors: BTreeMap<String, u64>,
    grpc_resent_reasons: BTreeMap<String, u64>,
}

/// The SSE client's fields of a progress line (with `--sse` only).
#[derive(Serialize)]
struct SseProgress {
    sse_events: u64,
    sse_errors: u64,
    sse_reconnects: u64,
}

/// The upload client's fields of a progress line (with `--upload` only).
#[derive(Serialize)]
struct UploadProgress {
    uploads_ok: u64,
    uploads_failed: u64,
}

/// The SSE client's fields of the final line (with `--sse` only).
#[derive(Serialize)]
struct SseSummary {
    sse_events: u64,
    sse_errors: u64,
    sse_reconnects: u64,
    sse_error_kinds: BTreeMap<String, u64>,
}

/// The upload client's fields of the final line (with `--upload` only).
#[derive(Serialize)]
struct UploadSummary {
    uploads_ok: u64,
    uploads_failed: u64,
    upload_bytes: u64,
    upload_reconnects: u64,
    upload_errors: BTreeMap<String, u64>,
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

/// Opens a TCP connection and starts an HTTP/1.1 client connection on it, for requests with bodies of type `B`.
async fn connect<B>(target: SocketAddr) -> Result<SendRequest<B>, Failure>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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

// ---------------------------------------------------------------------------------------------------------
// The WebSocket client

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// One WebSocket connection for the whole run; a new one only after an error (counted in `ws_reconnects`).
async fn websocket_client(addr: SocketAddr, stats: Arc<Stats>, stop: watch::Receiver<bool>) {
    let mut opened = 0u64;
    while !*stop.borrow() {
        let result = match ws_connect(addr).await {
            Ok(ws) => {
                opened += 1;
                if opened > 1 {
                    stats.ws_reconnects.fetch_add(1, Ordering::Relaxed);
                }
                ws_session(ws, &stats, stop.clone()).await
            }
            Err(kind) => Err(kind),
        };
        match result {
            // Stopped, and closed cleanly.
            Ok(()) => break,
            Err(kind) => {
                stats.ws_errors.fetch_add(1, Ordering::Relaxed);
                count(&stats.ws_error_kinds, kind);
                tokio::time::sleep(FAILURE_BACKOFF).await;
            }
        }
    }
}

/// Opens a TCP connection and does the WebSocket handshake on it.
async fn ws_connect(addr: SocketAddr) -> Result<Ws, String> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| format!("connect:{}", io_kind(&err)))?;
        let _ = stream.set_nodelay(true);
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{WS_PATH}"), stream)
            .await
            .map_err(|err| format!("handshake:{}", ws_kind(&err)))?;
        Ok(ws)
    };
    tokio::time::timeout(WS_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err("handshake:timeout".into()))
}

/// Sends frames on `ws` and checks their echoes until the stop, then waits for the last echoes and closes.
/// Returns the kind of the first error, which ends the connection.
async fn ws_session(ws: Ws, stats: &Stats, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    let (mut sink, mut incoming) = ws.split();
    let window = Semaphore::new(WS_WINDOW);
    let sent = AtomicU64::new(0);
    let closing = AtomicBool::new(false);
    let writer = async {
        let mut tick = tokio::time::interval(WS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tokio::select! {
                // Only `true` is ever sent, and a dropped sender also means "stop".
                _ = stop.changed() => break,
                _ = tick.tick() => {}
            }
            // The semaphore is never closed; `forget` keeps the permit taken until the echo gives it back.
            window
                .acquire()
                .await
                .map_err(|_| "window closed".to_string())?
                .forget();
            let seq = sent.load(Ordering::Relaxed);
            sink.send(frame(seq))
                .await
                .map_err(|err| format!("send:{}", ws_kind(&err)))?;
            sent.store(seq + 1, Ordering::Relaxed);
        }
        closing.store(true, Ordering::Relaxed);
        sink.close().await.map_err(|err| format!("close:{}", ws_kind(&err)))
    };
    let reader = async {
        let mut seq = 0u64;
        loop {
            let Ok(next) = tokio::time::timeout(WS_TIMEOUT, incoming.next()).await else {
                let closing = closing.load(Ordering::Relaxed);
                return Err(if closing { "close:timeout" } else { "echo:timeout" }.to_string());
            };
            let closing = closing.load(Ordering::Relaxed);
            match next {
                Some(Ok(Message::Close(_))) | None if closing => {
                    // Every frame sent before the close frame was echoed before the answer to it.
                    let sent = sent.load(Ordering::Relaxed);
                    if seq != sent {
                        let _ = writeln!(
                            std::io::stderr(),
                            "loadgen: websocket: {sent} frames sent, {seq} echoed"
                        );
                        return Err("close:echoes_missing".into());
                    }
                    return Ok(());
                }
                Some(Ok(Message::Close(_))) => return Err("closed_by_server".into()),
                None => return Err("connection_ended".into()),
                Some(Err(err)) => return Err(format!("read:{}", ws_kind(&err))),
                Some(Ok(m)) if m.is_text() || m.is_binary() => {
                    if let Err(what) = check_echo(seq, &m) {
                        let _ = writeln!(std::io::stderr(), "loadgen: websocket: {what}");
                        return Err("echo:mismatch".into());
                    }
                    seq += 1;
                    stats.ws_frames.fetch_add(1, Ordering::Relaxed);
                    stats.ws_bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
                    window.add_permits(1);
                }
                // Pings (answered by tungstenite), pongs.
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::try_join!(writer, reader).map(|_| ())
}

/// A short, stable name for a WebSocket error.
fn ws_kind(err: &tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Io(io) => io_kind(io).into(),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".into(),
        tungstenite::Error::Protocol(_) => "protocol".into(),
        tungstenite::Error::Http(resp) => format!("status_{}", resp.status().as_u16()),
        _ => "other".into(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The gRPC client

/// Where the gRPC client calls.
struct GrpcTarget {
    endpoint: Endpoint,
    addr: SocketAddr,
    path: PathAndQuery,
}

/// Calls Echo in a loop on one channel, sending a call again once when tonic refused it unsent at a GOAWAY.
async fn grpc_client(target: GrpcTarget, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    let connector = CountingConnector {
        addr: target.addr,
        stats: stats.clone(),
    };
    let mut grpc = tonic::client::Grpc::new(target.endpoint.connect_with_connector_lazy(connector));
    for n in 0u64.. {
        let body = grpc_payload(n);
        let Some(mut result) = unless_stopped(&mut stop, grpc_call(&mut grpc, &target.path, body.clone())).await else {
            break;
        };
        if let Err(CallError::Status(status)) = &result {
            if refused_unsent(status) {
                // It never left the client: sending it now is its first time at the server.
                stats.grpc_resent.fetch_add(1, Ordering::Relaxed);
                count(&stats.grpc_resent_reasons, format!("{:?}", status.code()));
                match unless_stopped(&mut stop, grpc_call(&mut grpc, &target.path, body.clone())).await {
                    Some(again) => result = again,
                    None => break,
                }
            }
        }
        let failure = match result {
            Ok(answer) if answer == body => None,
            Ok(_) => Some("wrong_answer".to_string()),
            Err(CallError::Timeout) => Some("timeout".to_string()),
            Err(CallError::Status(status)) => Some(status_kind(&status)),
        };
        match failure {
            None => {
                stats.grpc_ok.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(GRPC_INTERVAL).await;
            }
            Some(kind) => {
                stats.grpc_failed.fetch_add(1, Ordering::Relaxed);
                count(&stats.grpc_errors, kind);
                tokio::time::sleep(FAILURE_BACKOFF).await;
            }
        }
    }
}

/// Why a gRPC call did not answer.
enum CallError {
    Status(Status),
    Timeout,
}

/// One unary call, within the deadline.
async fn grpc_call(
    grpc: &mut tonic::client::Grpc<Channel>,
    path: &PathAndQuery,
    body: Bytes,
) -> Result<Bytes, CallError> {
    let call = async {
        grpc.ready()
            .await
            .map_err(|err| Status::unavailable(format!("channel not ready: {err}")))?;
        grpc.unary(tonic::Request::new(body), path.clone(), RawCodec)
            .await
            .map(tonic::Response::into_inner)
    };
    match tokio::time::timeout(GRPC_TIMEOUT, call).await {
        Ok(result) => result.map_err(CallError::Status),
        Err(_) => Err(CallError::Timeout),
    }
}

/// The payload of call `n`: its number, then 0 to 4 KiB of bytes derived from it.
fn grpc_payload(n: u64) -> Bytes {
    let size = (n.wrapping_mul(7919) % 4096) as usize;
    let mut payload = format!("loadgen grpc call {n} ").into_bytes();
    payload.extend((0..size).map(|i| (n as usize).wrapping_add(i.wrapping_mul(31)) as u8));
    Bytes::from(payload)
}

/// A short name for a failed call: its code and message (the message cut at 80 characters).
fn status_kind(status: &Status) -> String {
    let message: String = status.message().chars().take(80).collect();
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    }
}

/// The gRPC channel's connector: TCP to the target, counted in `grpc_connections`.
#[derive(Clone)]
struct CountingConnector {
    addr: SocketAddr,
    stats: Arc<Stats>,
}

impl tower_service::Service<http::Uri> for CountingConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = BoxFuture<std::io::Result<TokioIo<TcpStream>>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (addr, stats) = (self.addr, self.stats.clone());
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            stats.grpc_connections.fetch_add(1, Ordering::Relaxed);
            Ok(TokioIo::new(stream))
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// The SSE client

/// One SSE stream for the whole run; a new connection only after an error (counted in `sse_reconnects`), which
/// asks for the events after the last one checked.
async fn sse_client(addr: SocketAddr, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    let mut opened = 0u64;
    let mut last: Option<u64> = None;
    loop {
        let attempt = async {
            let sender = connect::<Empty<Bytes>>(addr).await.map_err(|failure| failure.0)?;
            opened += 1;
            if opened > 1 {
                stats.sse_reconnects.fetch_add(1, Ordering::Relaxed);
            }
            sse_session(sender, &mut last, &stats).await
        };
        // Stopped: the stream is dropped, nothing more is counted.
        let Some(Err(kind)) = unless_stopped(&mut stop, attempt).await else {
            break;
        };
        stats.sse_errors.fetch_add(1, Ordering::Relaxed);
        count(&stats.sse_error_kinds, kind);
        tokio::time::sleep(FAILURE_BACKOFF).await;
    }
}

/// Asks for the stream (after event `last`, if any) and checks its events as they come, updating `last`. Only
/// returns on an error, with its kind.
async fn sse_session(
    mut sender: SendRequest<Empty<Bytes>>,
    last: &mut Option<u64>,
    stats: &Stats,
) -> Result<(), String> {
    let mut builder = Request::get(SSE_PATH)
        .header(header::HOST, "loadgen")
        .header(header::ACCEPT, "text/event-stream");
    if let Some(id) = *last {
        builder = builder.header("last-event-id", id.to_string());
    }
    let req = builder.body(Empty::new()).map_err(|err| format!("request:{err}"))?;
    let resp = tokio::time::timeout(SSE_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| "head:timeout".to_string())?
        .map_err(|err| format!("send:{}", classify_hyper(&err)))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("status:{}", resp.status().as_u16()));
    }
    let event_stream = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !event_stream {
        return Err("content_type".into());
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = match tokio::time::timeout(SSE_TIMEOUT, body.frame()).await {
            Err(_) => return Err("event:timeout".into()),
            Ok(None) => return Err("stream_ended".into()),
            Ok(Some(Err(err))) => return Err(format!("read:{}", classify_hyper(&err))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Some(data) = frame.data_ref() else { continue };
        buf.extend_from_slice(data);
        // Every complete event (the upstream ends each with a blank line, "\n\n").
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let expected = last.map_or(1, |id| id + 1);
            check_sse_event(expected, &event)?;
            *last = Some(expected);
            stats.sse_events.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Checks that `event` is event `expected`, byte for byte; says how it is not otherwise.
fn check_sse_event(expected: u64, event: &[u8]) -> Result<(), String> {
    let want = sse_event(expected);
    if event == want.as_bytes() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(event);
    let kind = match sse_event_id(&text) {
        None => "event:malformed",
        Some(id) if id < expected => "event:duplicate",
        Some(id) if id > expected => "event:gap",
        Some(_) => "event:mismatch",
    };
    let shown: String = text.chars().take(120).collect();
    let _ = writeln!(
        std::io::stderr(),
        "loadgen: sse: event {expected} expected, got {shown:?}"
    );
    Err(kind.into())
}

// ---------------------------------------------------------------------------------------------------------
// The upload client

/// The body of one upload: `UPLOAD_SIZE` bytes of [`upload_bytes`], one `UPLOAD_PIECE` every `UPLOAD_PACE`
/// (the first one at once). With `exact` its size is known up front, and hyper sends it with a `Content-Length`;
/// otherwise chunked.
struct PacedUpload {
    n: u64,
    sent: usize,
    exact: bool,
    next: Pin<Box<tokio::time::Sleep>>,
}

impl PacedUpload {
    fn new(n: u64, exact: bool) -> Self {
        PacedUpload {
            n,
            sent: 0,
            exact,
            next: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl Body for PacedUpload {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent >= UPLOAD_SIZE {
            return Poll::Ready(None);
        }
        if std::future::Future::poll(self.next.as_mut(), cx).is_pending() {
            return Poll::Pending;
        }
        let len = UPLOAD_PIECE.min(UPLOAD_SIZE - self.sent);
        let piece = upload_bytes(self.n, self.sent, len);
        self.sent += len;
        let at = self.next.deadline() + UPLOAD_PACE;
        self.next.as_mut().reset(at);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(piece)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= UPLOAD_SIZE
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact((UPLOAD_SIZE - self.sent) as u64)
        } else {
            SizeHint::default()
        }
    }
}

/// The answer the upstream owes upload `n`.
fn upload_expected(n: u64, chunked: bool) -> String {
    let mut sum = FNV_START;
    let mut at = 0;
    while at < UPLOAD_SIZE {
        let len = UPLOAD_PIECE.min(UPLOAD_SIZE - at);
        sum = fnv(sum, &upload_bytes(n, at, len));
        at += len;
    }
    upload_answer(UPLOAD_SIZE as u64, sum, chunked)
}

/// Sends uploads one after the other on one keep-alive connection (a new one only after a failure, or when the
/// server closed it: counted in `upload_reconnects`), chunked and with a `Content-Length` in turn.
async fn upload_client(addr: SocketAddr, stats: Arc<Stats>, mut stop: watch::Receiver<bool>) {
    let mut conn: Option<SendRequest<PacedUpload>> = None;
    let mut opened = 0u64;
    for n in 0u64.. {
        let Some(result) = unless_stopped(&mut stop, upload(addr, n, &mut conn, &mut opened, &stats)).await else {
            break;
        };
        match result {
            Ok(()) => {
                stats.uploads_ok.fetch_add(1, Ordering::Relaxed);
                stats.upload_bytes.fetch_add(UPLOAD_SIZE as u64, Ordering::Relaxed);
            }
            Err(failure) => {
                conn = None;
                stats.uploads_failed.fetch_add(1, Ordering::Relaxed);
                count(&stats.upload_errors, failure.0);
                tokio::time::sleep(FAILURE_BACKOFF).await;
            }
        }
    }
}

/// Upload `n` on the client's connection (opening one first if needed), within the deadline.
async fn upload(
    addr: SocketAddr,
    n: u64,
    conn: &mut Option<SendRequest<PacedUpload>>,
    opened: &mut u64,
    stats: &Stats,
) -> Result<(), Failure> {
    let chunked = n.is_multiple_of(2);
    let attempt = async {
        if let Some(sender) = conn.as_mut() {
            if sender.ready().await.is_err() {
                // Closed by the server while idle: the next upload goes on a new connection.
                *conn = None;
            }
        }
        let sender = match conn {
            Some(sender) => sender,
            None => {
                let sender = connect(addr).await?;
                *opened += 1;
                if *opened > 1 {
                    stats.upload_reconnects.fetch_add(1, Ordering::Relaxed);
                }
                conn.insert(sender)
            }
        };
        let req = Request::post(UPLOAD_PATH)
            .header(header::HOST, "loadgen")
            .body(PacedUpload::new(n, !chunked))
            .map_err(|err| Failure::new("request", err))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|err| Failure::new("send", classify_hyper(&err)))?;
        let status = resp.status();
        let close = wants_close(&resp);
        let answer = resp
            .into_body()
            .collect()
            .await
            .map_err(|err| Failure::new("body", classify_hyper(&err)))?
            .to_bytes();
        if !status.is_success() {
            return Err(Failure::new("status", status.as_u16()));
        }
        let expected = upload_expected(n, chunked);
        if answer != expected.as_bytes() {
            let _ = writeln!(
                std::io::stderr(),
                "loadgen: upload {n}: expected {:?}, got {:?}",
                expected.trim_end(),
                String::from_utf8_lossy(&answer).trim_end()
            );
            return Err(Failure("answer:mismatch".into()));
        }
        if close {
            *conn = None;
        }
        Ok(())
    };
    tokio::time::timeout(UPLOAD_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(Failure("timeout".into())))
}
