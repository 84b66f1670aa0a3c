//! `upstream`: a small, fast upstream server for exercising baton on loopback.
//!
//! * HTTP on `--listen ADDR` (default `127.0.0.1:0`), HTTP/1.1 and h2c (prior knowledge) on the same port:
//!   - `POST` (any path but `/upload`): 200, echoes the request body back;
//!   - anything else: 200 with the body `hello from upstream\n`;
//!   - optional query parameter `sleep_ms=N` (capped at 60000): waits N ms before answering, handy for
//!     in-flight requests across a handoff;
//!   - a WebSocket handshake (HTTP/1.1 `GET /ws` with `Upgrade: websocket`): `101`, then the connection is a
//!     WebSocket echo: every text and binary message is sent back as it came;
//!   - `GET /sse`: a Server-Sent Events stream (`text/event-stream`, chunked) for as long as the client stays:
//!     one event every 50 ms, ids 1, 2, 3… (after `Last-Event-ID: N`, from N+1 on), each with a `data:` line the
//!     client can check (`support/http_streams.rs`);
//!   - `POST /upload`: reads the whole body and answers `LEN SUM FRAMING\n`: its length, its FNV-1a checksum (16
//!     hex digits) and how it was delimited (`chunked` or `content-length`), for slow-upload checks.
//! * TCP echo on `--tcp-echo ADDR` (optional): every byte read is written back.
//! * gRPC on `--grpc ADDR` (optional), h2c: the unary method `/baton.demo.Echo/Echo` answers the request's
//!   message, raw bytes as they came (no protobuf: `support/grpc_raw.rs`).
//!
//! Stdout protocol (each line flushed): the first line is `listening on ADDR` with the actual HTTP address;
//! with `--tcp-echo` the next line is `tcp echo listening on ADDR`; with `--grpc` the next one is
//! `grpc listening on ADDR`. Nothing else is written to stdout. Exits 0 on SIGTERM or SIGINT.
//!
//! ```text
//! cargo run --release --example upstream -- --listen 127.0.0.1:8080 --tcp-echo 127.0.0.1:9090 --grpc 127.0.0.1:9091
//! ```

// The codec and the routing of the gRPC service, shared with loadgen and tests/grpc.rs (the client half is
// not used here).
#[allow(dead_code)]
#[path = "support/grpc_raw.rs"]
mod grpc_raw;
// The SSE events and the upload answers, shared with loadgen (which checks them).
#[allow(dead_code)]
#[path = "support/http_streams.rs"]
mod http_streams;

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use grpc_raw::{BoxFuture, Methods, RawCodec, Routed};
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use http_streams::{fnv, sse_event, upload_answer, FNV_START, SSE_PATH, UPLOAD_PATH};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

const HELLO: &str = "hello from upstream\n";
/// The path of the WebSocket echo.
const WS_PATH: &str = "/ws";
/// Interval between two SSE events.
const SSE_INTERVAL: Duration = Duration::from_millis(50);
/// Longest `sleep_ms` honoured.
const MAX_SLEEP_MS: u64 = 60_000;
/// How long open HTTP connections get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(
    about = "Small HTTP/1.1 + h2c upstream with a WebSocket echo, an SSE stream and an upload check (and optional TCP \
             echo and gRPC echo) for baton tests and the demo"
)]
struct Args {
    /// Address of the HTTP listener.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Also run a TCP echo server on this address.
    #[arg(long, value_name = "ADDR")]
    tcp_echo: Option<SocketAddr>,
    /// Also run a gRPC server (h2c) of `baton.demo.Echo` on this address.
    #[arg(long, value_name = "ADDR")]
    grpc: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();

    // Install the handlers before announcing anything, so a signal sent right after the first line is honoured.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let http = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", args.listen))?;
    let echo = match args.tcp_echo {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the TCP echo listener on {addr}"))?,
        ),
        None => None,
    };
    let grpc = match args.grpc {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the gRPC listener on {addr}"))?,
        ),
        None => None,
    };

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", http.local_addr()?)?;
        if let Some(echo) = &echo {
            writeln!(out, "tcp echo listening on {}", echo.local_addr()?)?;
        }
        if let Some(grpc) = &grpc {
            writeln!(out, "grpc listening on {}", grpc.local_addr()?)?;
        }
        out.flush()?;
    }

    let echo_task = echo.map(|listener| tokio::spawn(echo_accept_loop(listener)));
    let builder = auto::Builder::new(TokioExecutor::new());
    // `stop` tells connections to finish gracefully; every connection task holds a clone of `alive`, so
    // `alive_rx.recv()` returns `None` once all of them are gone.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive, mut alive_rx) = mpsc::channel::<()>(1);
    let mut grpc_task = grpc.map(|listener| tokio::spawn(grpc_server(listener, stop_rx.clone())));

    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            accepted = http.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(err) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        let _ = writeln!(std::io::stderr(), "upstream: accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(builder.clone(), stream, stop_rx.clone(), alive.clone()));
            }
        }
    }

    drop(http);
    if let Some(task) = echo_task {
        task.abort();
    }
    // Let in-flight requests finish, but do not wait for slow clients forever.
    let _ = stop_tx.send(true);
    drop(alive);
    let finished = async {
        alive_rx.recv().await;
        if let Some(task) = &mut grpc_task {
            let _ = task.await;
        }
    };
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, finished).await;
    if let Some(task) = grpc_task {
        task.abort();
    }
    Ok(())
}

/// Serves one HTTP connection (upgrades included); on `stop` it finishes the request in flight and closes.
async fn serve(
    builder: auto::Builder<TokioExecutor>,
    stream: TcpStream,
    mut stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service_fn(handle));
    tokio::pin!(conn);
    // Client resets and the like are normal for a load-test upstream: connection errors are not reported.
    tokio::select! {
        _ = conn.as_mut() => {}
        // Only `true` is ever sent, and a dropped sender also means "stop".
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A response body: all at once, or streamed (SSE).
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A response with the whole body `body`.
fn full(body: impl Into<Bytes>) -> Response<Body> {
    Response::new(Full::new(body.into()).boxed_unsync())
}

/// Answers one HTTP request (see the module documentation).
async fn handle(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == WS_PATH && req.method() == Method::GET {
        if let Some(accept) = websocket_accept(req.headers()) {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                // A client that goes away before the upgrade completes is none of our business.
                if let Ok(upgraded) = upgrade.await {
                    ws_echo(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await).await;
                }
            });
            let mut resp = full(Bytes::new());
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = resp.headers_mut();
            headers.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
            headers.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            return Ok(resp);
        }
    }
    if req.uri().path() == SSE_PATH && req.method() == Method::GET {
        return Ok(sse(req.headers()));
    }
    if let Some(ms) = sleep_ms(req.uri().query()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if req.uri().path() == UPLOAD_PATH && req.method() == Method::POST {
        return Ok(upload(req).await);
    }
    let response = if req.method() == Method::POST {
        match req.into_body().collect().await {
            Ok(body) => full(body.to_bytes()),
            Err(err) => bad_request(format!("reading the request body: {err}\n")),
        }
    } else {
        full(Bytes::from_static(HELLO.as_bytes()))
    };
    Ok(response)
}

fn bad_request(text: String) -> Response<Body> {
    let mut resp = full(text);
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    resp
}

/// The SSE stream: an event every [`SSE_INTERVAL`], from the one after `Last-Event-ID` (or the first), until the
/// client goes.
fn sse(headers: &HeaderMap) -> Response<Body> {
    let first = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(1, |last| last.saturating_add(1));
    let mut tick = tokio::time::interval(SSE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events = futures_util::stream::unfold((first, tick), |(id, mut tick)| async move {
        tick.tick().await;
        let event = Frame::data(Bytes::from(sse_event(id)));
        Some((Ok(event), (id + 1, tick)))
    });
    let mut resp = Response::new(StreamBody::new(events).boxed_unsync());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    resp
}

/// Reads an upload to its end and answers its length, checksum and framing.
async fn upload(req: Request<Incoming>) -> Response<Body> {
    let chunked = req
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("chunked"));
    let mut body = req.into_body();
    let (mut len, mut sum) = (0u64, FNV_START);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    sum = fnv(sum, data);
                }
            }
            Err(err) => return bad_request(format!("reading the upload after {len} bytes: {err}\n")),
        }
    }
    full(upload_answer(len, sum, chunked))
}

/// The `Sec-WebSocket-Accept` answering a WebSocket handshake request (RFC 6455 §4.2.1), `None` if it is not one.
fn websocket_accept(headers: &HeaderMap) -> Option<header::HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return None;
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION)?.as_bytes() != b"13" {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    header::HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok()
}

/// Echoes every text and binary message until the client closes (tungstenite answers its close frame and pings).
async fn ws_echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(m)) = ws.next().await {
        if m.is_close() {
            // tungstenite queued the answering close frame: send it, then read to the end.
            let _ = ws.flush().await;
        }
        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
            return;
        }
    }
}

/// Serves `baton.demo.Echo` (h2c) until `stop`, then lets the calls in flight finish.
async fn grpc_server(listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stopped = async move {
        let _ = stop.changed().await;
    };
    if let Err(err) = tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(Routed(EchoService), incoming, stopped)
        .await
    {
        let _ = writeln!(std::io::stderr(), "upstream: gRPC server failed: {err}");
    }
}

/// The gRPC service `baton.demo.Echo`.
#[derive(Clone)]
struct EchoService;

impl Methods for EchoService {
    const NAME: &'static str = "baton.demo.Echo";

    fn call(
        &mut self,
        method: &str,
        req: http::Request<tonic::body::Body>,
    ) -> BoxFuture<http::Response<tonic::body::Body>> {
        let path = req.uri().path().to_owned();
        let echo = method == "Echo";
        Box::pin(async move {
            if echo {
                tonic::server::Grpc::new(RawCodec).unary(Echo, req).await
            } else {
                tonic::Status::unimplemented(format!("no method {path}")).into_http()
            }
        })
    }
}

/// Unary `Echo`: answers the request's message.
struct Echo;

impl tonic::server::UnaryService<Bytes> for Echo {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        Box::pin(async move { Ok(tonic::Response::new(req.into_inner())) })
    }
}

/// Extracts `sleep_ms=N` from a query string (ignored when malformed).
fn sleep_ms(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("sleep_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| ms.min(MAX_SLEEP_MS))
}

/// Accepts TCP echo connections until the task is aborted.
async fn echo_accept_loop(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(echo(stream));
            }
            Err(err) => {
                let _ = writeln!(std::io::stderr(), "upstream: tcp echo accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Writes back everything it reads until the peer closes its side, then closes ours.
async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}
