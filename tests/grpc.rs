//! gRPC through baton with real implementations at both ends: a tonic client and a tonic server, through an `http`
//! listener whose cluster says `protocol: h2c`. The four kinds of RPC, trailers (`grpc-status`, `grpc-message`, a
//! custom one), `te: trailers` at the server, 4 MiB messages, a stream outliving `request_timeout`; the gRPC
//! statuses baton answers when it cannot forward (connect failure, timeout, reset), logged once, not per call; and
//! a server stream spanning a hot upgrade.
//!
//! No protoc here: the service is written by hand on tonic's generic API (`tonic::server::Grpc` with the
//! `*Service` traits, `tonic::client::Grpc`), with a codec whose messages are raw bytes. Framing, status codes,
//! trailers and HTTP/2 are tonic's and hyper's own. The codec and the routing by path are shared with the demo's
//! upstream and load generator: `examples/support/grpc_raw.rs`.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../examples/support/grpc_raw.rs"]
mod grpc_raw;

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use common::*;
use futures_util::{stream, Stream};
use grpc_raw::{method_path, refused_unsent, BoxFuture, Methods, RawCodec, Routed};
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::{ClientStreamingService, ServerStreamingService, StreamingService, UnaryService};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// The service's name, as a `.proto` file would give it.
const SERVICE: &str = "baton.test.Probe";
/// Both ends accept and send messages up to this size (tonic's default limit for decoding is 4 MiB).
const MAX_MESSAGE: usize = 16 << 20;
/// A "4 MiB message": 4 MiB of payload and the few bytes that frame it, so over tonic's default limit.
const BIG: usize = 4 << 20;
/// The message of every non-OK status the server answers: `%`, a line break and non-ASCII text, which travel
/// percent-encoded in `grpc-message` (gRPC over HTTP/2) and come out decoded at the client.
const STATUS_MESSAGE: &str = "not here: 100% gone \u{2014} \u{e9}t\u{e9}\nsecond line";
/// Longest wait for one call in the tests that expect it to succeed.
const CALL_DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------------------------
// payloads
// ---------------------------------------------------------------------------------------------------------------

/// FNV-1a (64 bits) of `bytes`, continuing from `h` (start with [`FNV_START`]).
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// `n` bytes of a pattern that does not repeat at short periods, different for each seed.
fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A message of the streams: its sequence number, then [`pattern`]`(size, seq)`.
fn numbered(seq: u32, size: usize) -> Bytes {
    let mut m = Vec::with_capacity(4 + size);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&pattern(size, u64::from(seq)));
    Bytes::from(m)
}

/// Reads `N` big-endian u64 fields from the front of a message.
fn fields<const N: usize>(mut m: Bytes) -> [u64; N] {
    let mut out = [0u64; N];
    for v in out.iter_mut() {
        *v = m.get_u64();
    }
    out
}

fn encode_fields(values: &[u64]) -> Bytes {
    let mut m = Vec::with_capacity(8 * values.len());
    for v in values {
        m.extend_from_slice(&v.to_be_bytes());
    }
    Bytes::from(m)
}

fn checksum_metadata(sum: u64) -> MetadataMap {
    let mut md = MetadataMap::new();
    md.insert("x-checksum", MetadataValue::try_from(format!("{sum:016x}")).unwrap());
    md
}

fn checksum_of(md: &MetadataMap) -> Option<String> {
    md.get("x-checksum").and_then(|v| v.to_str().ok()).map(str::to_string)
}

// ---------------------------------------------------------------------------------------------------------------
// the server: baton.test.Probe, routed by path
// ---------------------------------------------------------------------------------------------------------------

type MessageStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send + 'static>>;

/// What the server saw.
#[derive(Default)]
struct Seen {
    /// The `te` field of every request, in order (empty if it had none).
    te: Mutex<Vec<String>>,
}

/// The service, routed by path to tonic's `Grpc` handlers (as a tower `Service`: [`Routed`]), as tonic's generated
/// code does.
#[derive(Clone)]
struct Probe {
    seen: Arc<Seen>,
}

fn grpc_server() -> tonic::server::Grpc<RawCodec> {
    tonic::server::Grpc::new(RawCodec)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

impl Methods for Probe {
    const NAME: &'static str = SERVICE;

    fn call(
        &mut self,
        method: &str,
        req: http::Request<tonic::body::Body>,
    ) -> BoxFuture<http::Response<tonic::body::Body>> {
        let te = req
            .headers()
            .get(http::header::TE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        self.seen.te.lock().unwrap().push(te);
        let path = req.uri().path().to_string();
        let method = method.to_string();
        Box::pin(async move {
            match method.as_str() {
                "Echo" => grpc_server().unary(Echo, req).await,
                "Sleep" => grpc_server().unary(Sleep, req).await,
                "Count" => grpc_server().server_streaming(Count, req).await,
                "Sum" => grpc_server().client_streaming(Sum, req).await,
                "Chat" => grpc_server().streaming(Chat, req).await,
                _ => Status::unimplemented(format!("no method {path}")).into_http(),
            }
        })
    }
}

/// Unary: answers the request's bytes. With the metadata `x-status: N`, fails instead with that status and
/// [`STATUS_MESSAGE`], carrying the request's checksum as `x-checksum`.
struct Echo;

impl UnaryService<Bytes> for Echo {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let code = req
                .metadata()
                .get("x-status")
                .and_then(|v| v.to_str().ok()?.parse::<i32>().ok());
            let body = req.into_inner();
            match code {
                Some(code) => Err(Status::with_metadata(
                    Code::from_i32(code),
                    STATUS_MESSAGE,
                    checksum_metadata(fnv(FNV_START, &body)),
                )),
                None => Ok(tonic::Response::new(body)),
            }
        })
    }
}

/// Unary: waits the request's number of milliseconds before it answers (no response head until then).
struct Sleep;

impl UnaryService<Bytes> for Sleep {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let [ms] = fields::<1>(req.into_inner());
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(tonic::Response::new(Bytes::from_static(b"slept")))
        })
    }
}

/// Server streaming. The request: `[count, interval_ms, size, code]`; the response: `count` [`numbered`] messages of
/// `size` bytes, `interval_ms` apart, then trailers with status `code` ([`STATUS_MESSAGE`] unless it is OK) and
/// `x-checksum`, the checksum of every message sent.
struct Count;

impl ServerStreamingService<Bytes> for Count {
    type Response = Bytes;
    type ResponseStream = MessageStream;
    type Future = BoxFuture<Result<tonic::Response<MessageStream>, Status>>;

    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let [count, interval_ms, size, code] = fields::<4>(req.into_inner());
            let state = (0u32, FNV_START, false);
            let out = stream::unfold(state, move |(seq, sum, done)| async move {
                if done {
                    return None;
                }
                if u64::from(seq) == count {
                    let code = Code::from_i32(code as i32);
                    let message = if code == Code::Ok { "" } else { STATUS_MESSAGE };
                    let end = Status::with_metadata(code, message, checksum_metadata(sum));
                    return Some((Err(end), (seq, sum, true)));
                }
                if seq > 0 && interval_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(interval_ms)).await;
                }
                let m = numbered(seq, size as usize);
                let sum = fnv(sum, &m);
                Some((Ok(m), (seq + 1, sum, false)))
            });
            Ok(tonic::Response::new(Box::pin(out) as MessageStream))
        })
    }
}

/// Client streaming: reads every message and answers `[messages, bytes, checksum]`.
struct Sum;

impl ClientStreamingService<Bytes> for Sum {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, req: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let mut incoming = req.into_inner();
            let (mut n, mut bytes, mut sum) = (0u64, 0u64, FNV_START);
            while let Some(m) = incoming.message().await? {
                n += 1;
                bytes += m.len() as u64;
                sum = fnv(sum, &m);
            }
            Ok(tonic::Response::new(encode_fields(&[n, bytes, sum])))
        })
    }
}

/// Bidirectional: echoes each message as it arrives; at the end of the client's stream, OK trailers with the
/// checksum of everything echoed.
struct Chat;

impl StreamingService<Bytes> for Chat {
    type Response = Bytes;
    type ResponseStream = MessageStream;
    type Future = BoxFuture<Result<tonic::Response<MessageStream>, Status>>;

    fn call(&mut self, req: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let incoming = req.into_inner();
            let out = stream::unfold((incoming, FNV_START, false), |(mut incoming, sum, done)| async move {
                if done {
                    return None;
                }
                match incoming.message().await {
                    Ok(Some(m)) => {
                        let sum = fnv(sum, &m);
                        Some((Ok(m), (incoming, sum, false)))
                    }
                    Ok(None) => {
                        let end = Status::with_metadata(Code::Ok, "", checksum_metadata(sum));
                        Some((Err(end), (incoming, sum, true)))
                    }
                    Err(status) => Some((Err(status), (incoming, sum, true))),
                }
            });
            Ok(tonic::Response::new(Box::pin(out) as MessageStream))
        })
    }
}

/// A tonic server of [`Probe`] on 127.0.0.1:0.
struct GrpcUpstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl GrpcUpstream {
    async fn start() -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the gRPC upstream");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let svc = Routed(Probe { seen: seen.clone() });
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .serve_with_incoming(svc, incoming)
                .await
                .expect("the gRPC upstream failed");
        });
        GrpcUpstream { addr, seen, task }
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// the client
// ---------------------------------------------------------------------------------------------------------------

/// A tonic client of baton.test.Probe on one `Channel` (one HTTP/2 connection, reconnected by tonic when it closes).
#[derive(Clone)]
struct ProbeClient {
    grpc: tonic::client::Grpc<Channel>,
}

fn path(method: &str) -> PathAndQuery {
    method_path(SERVICE, method).unwrap()
}

fn not_ready(e: tonic::transport::Error) -> Status {
    Status::unavailable(format!("channel not ready: {e}"))
}

impl ProbeClient {
    async fn connect(addr: SocketAddr) -> ProbeClient {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect a tonic channel to {addr}: {e}"));
        ProbeClient {
            grpc: tonic::client::Grpc::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        }
    }

    async fn unary(&mut self, method: &str, req: tonic::Request<Bytes>) -> Result<tonic::Response<Bytes>, Status> {
        self.grpc.ready().await.map_err(not_ready)?;
        self.grpc.unary(req, path(method), RawCodec).await
    }

    async fn server_streaming(
        &mut self,
        method: &str,
        req: tonic::Request<Bytes>,
    ) -> Result<tonic::Response<Streaming<Bytes>>, Status> {
        self.grpc.ready().await.map_err(not_ready)?;
        self.grpc.server_streaming(req, path(method), RawCodec).await
    }

    async fn client_streaming(
        &mut self,
        method: &str,
        messages: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Result<tonic::Response<Bytes>, Status> {
        self.grpc.ready().await.map_err(not_ready)?;
        self.grpc
            .client_streaming(tonic::Request::new(messages), path(method), RawCodec)
            .await
    }

    async fn streaming(
        &mut self,
        method: &str,
        messages: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Result<tonic::Response<Streaming<Bytes>>, Status> {
        self.grpc.ready().await.map_err(not_ready)?;
        self.grpc
            .streaming(tonic::Request::new(messages), path(method), RawCodec)
            .await
    }

    /// `Count`: `count` messages of `size` bytes, `interval` apart, ending with status `code`.
    async fn count(
        &mut self,
        count: u64,
        interval: Duration,
        size: u64,
        code: Code,
    ) -> Result<tonic::Response<Streaming<Bytes>>, Status> {
        let req = tonic::Request::new(encode_fields(&[
            count,
            interval.as_millis() as u64,
            size,
            code as i32 as u64,
        ]));
        self.server_streaming("Count", req).await
    }
}

/// What a `Count` stream delivered: its messages checked in order as they came; then the status it ended with
/// (`Ok` for a clean end) and its trailers.
struct Counted {
    messages: u64,
    checksum: u64,
    end: Result<MetadataMap, Status>,
}

/// Reads a `Count` stream to its end, checking each message (sequence number and pattern of `size` bytes).
async fn read_count(mut s: Streaming<Bytes>, size: usize) -> Counted {
    let (mut messages, mut checksum) = (0u64, FNV_START);
    loop {
        match s.message().await {
            Ok(Some(m)) => {
                assert_eq!(
                    m,
                    numbered(messages as u32, size),
                    "message {messages} of the stream is not the one the server sent"
                );
                checksum = fnv(checksum, &m);
                messages += 1;
            }
            Ok(None) => {
                let end = match s.trailers().await {
                    Ok(t) => Ok(t.expect("trailers after the last message")),
                    Err(status) => Err(status),
                };
                return Counted {
                    messages,
                    checksum,
                    end,
                };
            }
            Err(status) => {
                return Counted {
                    messages,
                    checksum,
                    end: Err(status),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// baton in front
// ---------------------------------------------------------------------------------------------------------------

/// One `http` listener per cluster, each cluster `protocol: h2c` with the given endpoints and `request_timeout`,
/// an admin port, and the handoff's `drain_timeout`.
fn yaml(
    listeners: &[SocketAddr],
    admin: SocketAddr,
    uds: &Path,
    clusters: &[(&[SocketAddr], &str)],
    drain: &str,
) -> String {
    let mut y = String::from("listeners:\n");
    for (i, addr) in listeners.iter().enumerate() {
        y += &format!("  - name: grpc-{i}\n    address: \"{addr}\"\n    protocol: http\n    cluster: c{i}\n");
    }
    y += "clusters:\n";
    for (i, (endpoints, request_timeout)) in clusters.iter().enumerate() {
        let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        y += &format!(
            "  - name: c{i}\n    endpoints: [{}]\n    protocol: h2c\n    connect_timeout: 1s\n    request_timeout: {request_timeout}\n",
            eps.join(", ")
        );
    }
    y += &format!(
        "admin:\n  address: \"{admin}\"\nhandoff:\n  uds_dir: \"{}\"\n  timeout: 10s\n  drain_timeout: {drain}\n",
        uds.display()
    );
    y
}

/// A baton whose listener `grpc-0` proxies to `upstream` (`request_timeout`), its only cluster.
async fn baton_in_front(dir: &TestDir, upstream: SocketAddr, request_timeout: &str, drain: &str) -> First {
    start_first(dir, 1, |l, admin, uds| {
        yaml(l, admin, uds, &[(&[upstream], request_timeout)], drain)
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// 1. the four kinds of RPC, trailers, te, big messages, a long stream
// ---------------------------------------------------------------------------------------------------------------

/// Unary, server-streaming, client-streaming and bidirectional RPCs from a tonic client to a tonic server through
/// baton (`protocol: h2c`, `request_timeout: 1s`): every message arrives intact and in order; trailers pass
/// through (`grpc-status` and a custom `x-checksum` after a stream, a non-OK `grpc-status` with a percent-encoded
/// `grpc-message`, both as trailers after messages and as a trailers-only answer); the server sees `te: trailers`
/// on every request; 4 MiB messages go both ways; the bidirectional stream is full duplex (each message is echoed
/// before the next is sent); and a server stream lasting 3 s, three times `request_timeout`, is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_of_every_kind_pass_through_an_h2c_cluster() {
    let dir = TestDir::new();
    let up = GrpcUpstream::start().await;
    let b = baton_in_front(&dir, up.addr, "1s", "5s").await;
    let mut client = ProbeClient::connect(b.listeners[0]).await;
    let mut calls = 0;

    // Unary, small and 4 MiB each way.
    for (size, seed) in [(100, 1), (BIG + 64, 2)] {
        let body = Bytes::from(pattern(size, seed));
        let resp = tokio::time::timeout(CALL_DEADLINE, client.unary("Echo", tonic::Request::new(body.clone())))
            .await
            .expect("unary call timed out")
            .unwrap_or_else(|s| panic!("unary Echo of {size} bytes: {s:?}"));
        calls += 1;
        let got = resp.into_inner();
        assert!(got == body, "Echo of {size} bytes answered {} other bytes", got.len());
    }

    // Unary failing with a status: a trailers-only answer.
    let mut req = tonic::Request::new(Bytes::from_static(b"unlucky"));
    req.metadata_mut().insert("x-status", MetadataValue::from_static("5"));
    let status = client
        .unary("Echo", req)
        .await
        .expect_err("Echo with x-status must fail");
    calls += 1;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), STATUS_MESSAGE, "{status:?}");
    assert_eq!(
        checksum_of(status.metadata()),
        Some(format!("{:016x}", fnv(FNV_START, b"unlucky"))),
        "x-checksum of the trailers-only answer: {status:?}"
    );

    // Server streaming: OK trailers with x-checksum after 50 messages.
    let s = client
        .count(50, Duration::ZERO, 1000, Code::Ok)
        .await
        .expect("Count")
        .into_inner();
    calls += 1;
    let c = read_count(s, 1000).await;
    assert_eq!(c.messages, 50);
    let trailers = c.end.unwrap_or_else(|s| panic!("the stream ended with {s:?}"));
    assert_eq!(
        checksum_of(&trailers),
        Some(format!("{:016x}", c.checksum)),
        "{trailers:?}"
    );

    // Server streaming ending with a non-OK status: its grpc-message percent-encoded and decoded on the way.
    let s = client
        .count(3, Duration::ZERO, 10, Code::ResourceExhausted)
        .await
        .expect("Count")
        .into_inner();
    calls += 1;
    let c = read_count(s, 10).await;
    assert_eq!(c.messages, 3);
    let status = c.end.expect_err("the stream should end with RESOURCE_EXHAUSTED");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), STATUS_MESSAGE, "{status:?}");
    assert_eq!(
        checksum_of(status.metadata()),
        Some(format!("{:016x}", c.checksum)),
        "{status:?}"
    );

    // Server streaming: one 4 MiB message.
    let s = client
        .count(1, Duration::ZERO, BIG as u64, Code::Ok)
        .await
        .expect("Count")
        .into_inner();
    calls += 1;
    let c = read_count(s, BIG).await;
    assert_eq!(c.messages, 1);
    assert_eq!(checksum_of(&c.end.expect("OK")), Some(format!("{:016x}", c.checksum)));

    // Client streaming: 200 messages of random sizes and a 4 MiB one.
    let mut sent = Vec::new();
    let mut x = 7u64;
    for i in 0..200u32 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        sent.push(numbered(i, (x >> 33) as usize % 20_000));
    }
    sent.push(numbered(200, BIG));
    let (n, bytes, sum) = (
        sent.len() as u64,
        sent.iter().map(|m| m.len() as u64).sum::<u64>(),
        sent.iter().fold(FNV_START, |h, m| fnv(h, m)),
    );
    let resp = tokio::time::timeout(CALL_DEADLINE, client.client_streaming("Sum", stream::iter(sent)))
        .await
        .expect("client streaming timed out")
        .expect("Sum");
    calls += 1;
    assert_eq!(
        fields::<3>(resp.into_inner()),
        [n, bytes, sum],
        "[messages, bytes, checksum]"
    );

    // Bidirectional, full duplex: each message is sent only once the previous one came back.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let outgoing = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut echoed = client.streaming("Chat", outgoing).await.expect("Chat").into_inner();
    calls += 1;
    let mut sum = FNV_START;
    for i in 0..100u32 {
        let m = numbered(i, (i as usize * 37) % 3000);
        tx.send(m.clone()).await.expect("send on the Chat stream");
        let back = tokio::time::timeout(CALL_DEADLINE, echoed.message())
            .await
            .unwrap_or_else(|_| panic!("message {i} was not echoed before the next was sent: not full duplex"))
            .expect("Chat stream")
            .expect("Chat stream ended early");
        assert_eq!(back, m, "echo of message {i}");
        sum = fnv(sum, &m);
    }
    drop(tx);
    assert_eq!(echoed.message().await.expect("end of Chat"), None);
    let trailers = echoed.trailers().await.expect("Chat trailers").expect("trailers");
    assert_eq!(checksum_of(&trailers), Some(format!("{sum:016x}")));

    // A stream lasting 3 s, three times request_timeout (which counts only until the response head).
    let started = Instant::now();
    let s = client
        .count(30, Duration::from_millis(100), 100, Code::Ok)
        .await
        .expect("Count")
        .into_inner();
    calls += 1;
    let c = read_count(s, 100).await;
    let lasted = started.elapsed();
    assert_eq!(c.messages, 30, "the 3 s stream was cut: {:?}", c.end.err());
    assert_eq!(checksum_of(&c.end.expect("OK")), Some(format!("{:016x}", c.checksum)));
    assert!(
        lasted > Duration::from_secs(2),
        "the long stream took {lasted:?}: it should have outlived request_timeout (1s)"
    );

    let te = up.seen.te.lock().unwrap().clone();
    assert_eq!(te.len(), calls, "requests the server saw: {te:?}");
    assert!(
        te.iter().all(|t| t == "trailers"),
        "te at the server, per request: {te:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// 2. what a gRPC client gets when baton cannot forward
// ---------------------------------------------------------------------------------------------------------------

/// An upstream that accepts HTTP/2 connections and resets every stream (RST_STREAM), leaving the connection up.
async fn resetting_upstream() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                    // An error from the service: hyper resets the stream.
                    Err::<http::Response<http_body_util::Empty<Bytes>>, _>(std::io::Error::other("reset it"))
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// An upstream that accepts connections and closes each one as soon as the first bytes arrive.
async fn dropping_upstream() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
                drop(stream);
            });
        }
    });
    (addr, task)
}

/// Unary calls of `method` with `body` on `n` clients at once (each its own connection); every one must fail.
async fn failing_calls(addr: SocketAddr, n: usize, method: &'static str, body: Bytes) -> Vec<Status> {
    let mut calls = Vec::new();
    for _ in 0..n {
        let body = body.clone();
        calls.push(tokio::spawn(async move {
            let mut c = ProbeClient::connect(addr).await;
            let r = tokio::time::timeout(CALL_DEADLINE, c.unary(method, tonic::Request::new(body))).await;
            match r.expect("a call baton should answer at once timed out") {
                Ok(_) => panic!("a call through a failing upstream succeeded"),
                Err(status) => status,
            }
        }));
    }
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.expect("join"));
    }
    out
}

/// With a tonic client, each upstream failure is a gRPC status, never a transport error: connect failure
/// (nothing listening) → UNAVAILABLE "baton: upstream connect failed"; no response head within `request_timeout`
/// (the server sleeps 3 s, the timeout is 1 s) → DEADLINE_EXCEEDED "baton: upstream timed out"; a stream reset by
/// the upstream, and a connection it closes → UNAVAILABLE "baton: upstream request failed". 20 failed calls of each
/// kind (on one listener each) log one `warn` line per cause and listener, not one per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_grpc_statuses_and_logged_once_per_cause() {
    const CALLS: usize = 20;
    let dir = TestDir::new();
    let nothing = free_addr();
    let sleeper = GrpcUpstream::start().await;
    let (resetting, _reset_task) = resetting_upstream().await;
    let (dropping, _drop_task) = dropping_upstream().await;
    let b = start_first(&dir, 4, |l, admin, uds| {
        yaml(
            l,
            admin,
            uds,
            &[
                (&[nothing], "5s"),
                (&[sleeper.addr], "1s"),
                (&[resetting], "5s"),
                (&[dropping], "5s"),
            ],
            "5s",
        )
    })
    .await;
    let cases: [(usize, &'static str, Bytes, Code, &str, &str); 4] = [
        (
            0,
            "Echo",
            Bytes::from_static(b"x"),
            Code::Unavailable,
            "baton: upstream connect failed",
            "upstream connect failed",
        ),
        (
            1,
            "Sleep",
            encode_fields(&[3000]),
            Code::DeadlineExceeded,
            "baton: upstream timed out",
            "no upstream response head within request_timeout",
        ),
        (
            2,
            "Echo",
            Bytes::from_static(b"x"),
            Code::Unavailable,
            "baton: upstream request failed",
            "upstream request failed",
        ),
        (
            3,
            "Echo",
            Bytes::from_static(b"x"),
            Code::Unavailable,
            "baton: upstream request failed",
            "upstream request failed",
        ),
    ];
    for (listener, method, body, code, message, logged) in cases {
        let started = Instant::now();
        let statuses = failing_calls(b.listeners[listener], CALLS, method, body).await;
        let took = started.elapsed();
        for s in &statuses {
            assert_eq!(
                (s.code(), s.message()),
                (code, message),
                "listener grpc-{listener}: {s:?}"
            );
        }
        // The warning is rate-limited per 10 s window: one line as long as the calls took less than that.
        let windows = 1 + (took.as_secs() / 10) as usize;
        let tag = format!("listener=grpc-{listener}");
        let stderr_has_one = wait_until(Duration::from_secs(5), || {
            let n = warn_lines(&b.baton.stderr(), logged)
                .iter()
                .filter(|l| l.contains(&tag))
                .count();
            async move { n >= 1 }
        })
        .await;
        assert!(
            stderr_has_one,
            "no warn line `{logged}` for {tag}; stderr:\n{}",
            b.baton.stderr()
        );
        let lines: Vec<String> = warn_lines(&b.baton.stderr(), logged)
            .into_iter()
            .filter(|l| l.contains(&tag))
            .collect();
        assert!(
            lines.len() <= windows,
            "{CALLS} failed calls in {took:?} logged {} warn lines for {tag} (at most {windows}):\n{}",
            lines.len(),
            lines.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 3. a stream across an upgrade
// ---------------------------------------------------------------------------------------------------------------

/// A server stream of 60 messages, 50 ms apart (3 s), is in flight when baton is upgraded as Kruise does (new
/// instance with the takeover env, `baton migrate`). HTTP/2 connections are not migrated: the old instance sends
/// GOAWAY at the commit and finishes the stream, which completes whole with its trailers; the old instance runs
/// until then and exits right after, well within its drain timeout (20 s). The next call, on the same channel, is
/// served by the new instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_in_flight_completes_across_an_upgrade() {
    let dir = TestDir::new();
    let up = GrpcUpstream::start().await;
    let First {
        baton: mut old,
        config,
        uds,
        listeners,
        admin,
    } = baton_in_front(&dir, up.addr, "1s", "20s").await;
    let mut client = ProbeClient::connect(listeners[0]).await;
    let s = client
        .count(60, Duration::from_millis(50), 500, Code::Ok)
        .await
        .expect("Count")
        .into_inner();
    let spanning = tokio::spawn(read_count(s, 500));
    // The stream is under way: its first messages went through the old instance.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let seen = up.seen.te.lock().unwrap().len();
            async move { seen == 1 }
        })
        .await
    );

    let new = take_over(&dir, &config, &uds, "gen-2", &takeover_env(2)).await;
    assert!(
        spanning.is_finished() || old.is_running(),
        "the old instance exited with its stream still in flight; stderr:\n{}",
        old.stderr()
    );
    let c = tokio::time::timeout(Duration::from_secs(20), spanning)
        .await
        .expect("the stream across the upgrade did not end")
        .expect("join");
    assert_eq!(
        c.messages,
        60,
        "the stream across the upgrade was cut: {:?}",
        c.end.err()
    );
    let trailers = c.end.expect("the stream across the upgrade should end OK");
    assert_eq!(checksum_of(&trailers), Some(format!("{:016x}", c.checksum)));
    expect_old_exits(
        &mut old,
        OLD_EXIT,
        "its only HTTP/2 connection got GOAWAY and its last stream ended",
    )
    .await;

    let body = Bytes::from_static(b"after the upgrade");
    let resp = client
        .unary("Echo", tonic::Request::new(body.clone()))
        .await
        .expect("a call after the upgrade, on the same channel");
    assert_eq!(resp.into_inner(), body);
    assert_serving(admin, new.pid(), 2).await;
}

// ---------------------------------------------------------------------------------------------------------------
// 4. a unary load of a gRPC C-core client through 10 hot upgrades
// ---------------------------------------------------------------------------------------------------------------

/// The Python interpreter that has grpcio (Debian's python3-grpcio, installed by `scripts/deps.sh unit`).
const PYTHON: &str = "/usr/bin/python3";

/// The last report of `tests/data/grpc_unary_loop.py`: calls answered and failed per client, the first errors.
#[derive(Debug, Default, Clone, serde::Deserialize)]
struct LoopReport {
    ok: Vec<u64>,
    failed: Vec<u64>,
    errors: Vec<String>,
}

/// `grpc_unary_loop.py` (grpcio: gRPC's C-core, as Python, Ruby, C++ and PHP clients use it) with `clients`
/// threads, each on its own channel, calling `Echo` through `addr` until stdin closes.
struct CoreClients {
    child: std::process::Child,
    last: Arc<Mutex<LoopReport>>,
}

impl CoreClients {
    fn start(addr: SocketAddr, clients: usize) -> CoreClients {
        use std::io::BufRead;
        let probe = std::process::Command::new(PYTHON).args(["-c", "import grpc"]).output();
        assert!(
            probe.as_ref().is_ok_and(|o| o.status.success()),
            "{PYTHON} cannot import grpc ({probe:?}): run `bash scripts/deps.sh unit` (as root) to install python3-grpcio"
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/grpc_unary_loop.py");
        let mut child = std::process::Command::new(PYTHON)
            .args([script, &addr.to_string(), &clients.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the grpcio client");
        let stdout = child.stdout.take().unwrap();
        let last = Arc::new(Mutex::new(LoopReport::default()));
        let l = last.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(r) = serde_json::from_str::<LoopReport>(&line) {
                    *l.lock().unwrap() = r;
                }
            }
        });
        CoreClients { child, last }
    }

    fn report(&self) -> LoopReport {
        self.last.lock().unwrap().clone()
    }

    /// Closes stdin and waits for the final report.
    fn stop(mut self) -> LoopReport {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100)); // the reader thread takes the last line
                return self.report();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the grpcio client did not stop within 30 s: {:?}", self.report());
    }
}

impl Drop for CoreClients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Four grpcio (C-core) clients, each on its own channel, call `Echo` in a loop while baton is upgraded 10 times
/// as Kruise does: not one call fails, and every call reaches the server exactly once. C-core treats the old
/// instance's GOAWAY as the HTTP/2 spec means it: calls it had not sent on that connection go on a new one (to
/// the new instance). Compare tonic (hyper's client), which fails the calls caught between a GOAWAY and its
/// reconnection: see the README, "HTTP/2 through an upgrade".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_core_unary_load_survives_10_upgrades() {
    const UPGRADES: u64 = 10;
    const CLIENTS: usize = 4;
    let dir = TestDir::new();
    let up = GrpcUpstream::start().await;
    let First {
        baton: mut serving,
        config,
        uds,
        listeners,
        admin,
    } = baton_in_front(&dir, up.addr, "5s", "20s").await;
    let clients = CoreClients::start(listeners[0], CLIENTS);
    let oks = || {
        let r = clients.report();
        if r.ok.len() == CLIENTS {
            r.ok
        } else {
            vec![0; CLIENTS]
        }
    };
    assert!(
        wait_each_grows(oks, 20, Duration::from_secs(30)).await,
        "the grpcio clients made no progress before the first upgrade: {:?}",
        clients.report()
    );
    for g in 2..=UPGRADES + 1 {
        let mut next = take_over(&dir, &config, &uds, &format!("gen-{g}"), &takeover_env(g)).await;
        expect_old_exits(&mut serving, OLD_EXIT, "its HTTP/2 connections got GOAWAY").await;
        std::mem::swap(&mut serving, &mut next);
        assert!(
            wait_each_grows(oks, 20, Duration::from_secs(20)).await,
            "the grpcio clients stalled after the upgrade to generation {g}: {:?}",
            clients.report()
        );
        let r = clients.report();
        assert_eq!(
            r.failed.iter().sum::<u64>(),
            0,
            "failed calls by the upgrade to generation {g}: {:?} (answered {:?})",
            r.errors,
            r.ok
        );
    }
    assert_serving(admin, serving.pid(), UPGRADES + 1).await;
    let r = tokio::task::spawn_blocking(move || clients.stop()).await.unwrap();
    let ok: u64 = r.ok.iter().sum();
    eprintln!(
        "grpcio: {ok} unary calls through {UPGRADES} upgrades, {} failed",
        r.failed.iter().sum::<u64>()
    );
    assert_eq!(r.failed.iter().sum::<u64>(), 0, "errors: {:?}", r.errors);
    let at_server = up.seen.te.lock().unwrap().len() as u64;
    assert_eq!(at_server, ok, "calls the server saw vs calls answered");
}

// ---------------------------------------------------------------------------------------------------------------
// 5. a unary load of tonic clients through 10 hot upgrades
// ---------------------------------------------------------------------------------------------------------------

/// Counters of one unary client.
#[derive(Default)]
struct LoadStats {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Failures other than hyper's refusal of a call it never sent at a GOAWAY.
    other: Mutex<Vec<String>>,
}

/// Asserts that every failed call so far was a refusal of an unsent call ([`refused_unsent`]).
fn assert_only_refused(stats: &[Arc<LoadStats>], g: u64) {
    for (i, s) in stats.iter().enumerate() {
        let other = s.other.lock().unwrap();
        assert!(
            other.is_empty(),
            "client {i}: calls failed otherwise than refused unsent by generation {g}: {other:?}"
        );
    }
}

/// A unary client in a loop on its own channel: each call carries a distinct payload, which must come back.
fn unary_client(addr: SocketAddr, id: u64, stats: Arc<LoadStats>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = ProbeClient::connect(addr).await;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let body = Bytes::from(format!("client {id} call {n} {}", "x".repeat((n % 300) as usize)));
            let r = tokio::time::timeout(CALL_DEADLINE, client.unary("Echo", tonic::Request::new(body.clone()))).await;
            let failure = match r {
                Ok(Ok(resp)) if resp.get_ref() == &body => None,
                Ok(Ok(resp)) => {
                    let e = format!("call {n}: answered {:?}", resp.get_ref());
                    stats.other.lock().unwrap().push(e.clone());
                    Some(e)
                }
                Ok(Err(status)) => {
                    if !refused_unsent(&status) {
                        stats.other.lock().unwrap().push(format!("call {n}: {status:?}"));
                    }
                    Some(format!("call {n}: {status:?}"))
                }
                Err(_) => {
                    let e = format!("call {n}: no answer within {CALL_DEADLINE:?}");
                    stats.other.lock().unwrap().push(e.clone());
                    Some(e)
                }
            };
            match failure {
                None => {
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                }
                Some(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    let mut errors = stats.errors.lock().unwrap();
                    if errors.len() < 10 {
                        errors.push(e);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// Four tonic clients, each on its own channel, call `Echo` in a loop while baton is upgraded 10 times as Kruise
/// does: every client keeps making progress through every new instance, and no call that reached baton is lost:
/// the server saw exactly the calls answered. tonic (hyper's HTTP/2 client) does fail the few calls it hands to a
/// connection between the old instance's GOAWAY and its own reconnection, without sending them (hyperium/hyper
/// #2500: no transparent retry); those, and only those, may fail, and only with the errors of that refusal. The
/// count is printed; the README reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_tonic_unary_load_through_10_upgrades_loses_no_call() {
    const UPGRADES: u64 = 10;
    const CLIENTS: u64 = 4;
    let dir = TestDir::new();
    let up = GrpcUpstream::start().await;
    let First {
        baton: mut serving,
        config,
        uds,
        listeners,
        admin,
    } = baton_in_front(&dir, up.addr, "5s", "20s").await;
    let addr = listeners[0];

    let stop = Arc::new(AtomicBool::new(false));
    let stats: Vec<Arc<LoadStats>> = (0..CLIENTS).map(|_| Arc::new(LoadStats::default())).collect();
    let tasks: Vec<JoinHandle<()>> = stats
        .iter()
        .enumerate()
        .map(|(i, st)| unary_client(addr, i as u64, st.clone(), stop.clone()))
        .collect();
    let oks = || stats.iter().map(|s| s.ok.load(Ordering::Relaxed)).collect::<Vec<u64>>();
    let failed = || stats.iter().map(|s| s.failed.load(Ordering::Relaxed)).sum::<u64>();
    let report = || {
        stats
            .iter()
            .enumerate()
            .map(|(i, s)| {
                format!(
                    "client {i}: {} ok, {} failed {:?}",
                    s.ok.load(Ordering::Relaxed),
                    s.failed.load(Ordering::Relaxed),
                    s.errors.lock().unwrap()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        wait_each_grows(oks, 20, Duration::from_secs(20)).await,
        "the clients made no progress before the first upgrade:\n{}",
        report()
    );

    for g in 2..=UPGRADES + 1 {
        let mut next = take_over(&dir, &config, &uds, &format!("gen-{g}"), &takeover_env(g)).await;
        expect_old_exits(&mut serving, OLD_EXIT, "its HTTP/2 connections got GOAWAY").await;
        std::mem::swap(&mut serving, &mut next);
        assert!(
            wait_each_grows(oks, 20, Duration::from_secs(20)).await,
            "the clients stalled after the upgrade to generation {g}:\n{}",
            report()
        );
        assert_only_refused(&stats, g);
    }
    assert_serving(admin, serving.pid(), UPGRADES + 1).await;

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(CALL_DEADLINE, t)
            .await
            .expect("a client did not stop")
            .expect("join a client");
    }
    let ok: u64 = oks().iter().sum();
    eprintln!(
        "tonic: {ok} unary calls through {UPGRADES} upgrades, {} failed, never sent (refused at a GOAWAY)",
        failed()
    );
    assert_only_refused(&stats, UPGRADES + 1);
    let at_server = up.seen.te.lock().unwrap().len() as u64;
    assert_eq!(at_server, ok, "calls the server saw vs calls answered");
}
