//! HTTP/1.1 upgrades through baton's `http` listener with a default (`http1`) cluster, with real WebSocket
//! implementations at both ends (tokio-tungstenite client, tokio-tungstenite echo server): the handshake passes
//! through untouched, and one WebSocket connection keeps echoing checksummed frames through 10 hot upgrades,
//! its tunnel handed over each time. Then what is not a tunnel: an upstream's `101` to a request that asked for no
//! upgrade is a `502`, and an upgrade the upstream declines is a normal exchange on a keep-alive connection.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../examples/support/ws_frames.rs"]
mod ws_frames;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::server::ErrorResponse;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request, Response};
use tokio_tungstenite::tungstenite::Message;
use ws_frames::{check_echo, frame};

/// Longest wait for anything baton should pass on.
const WAIT: Duration = Duration::from_secs(10);

/// The subprotocols the client offers, and the one the echo server picks.
const OFFERED: &str = "echo.v1, echo.v2";
const CHOSEN: &str = "echo.v2";
/// An extension offer the server does not take: it must reach the server as the client wrote it.
const EXTENSIONS: &str = "x-baton-test; mode=1, x-other";

// ---------------------------------------------------------------------------------------------------------------
// the WebSocket echo upstream
// ---------------------------------------------------------------------------------------------------------------

/// A tokio-tungstenite server on 127.0.0.1:0 that echoes every text and binary message, picks [`CHOSEN`] if the
/// client offers it, and records each handshake request it accepted.
struct WsEcho {
    addr: SocketAddr,
    /// Connections accepted.
    accepted: Arc<AtomicU64>,
    /// The handshake requests, as the server read them.
    requests: Arc<Mutex<Vec<Request<()>>>>,
    task: JoinHandle<()>,
}

impl WsEcho {
    async fn start() -> WsEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the echo upstream");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (acc, reqs) = (accepted.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::Relaxed);
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    // The error type is tungstenite's (its `Callback`), large or not.
                    #[allow(clippy::result_large_err)]
                    let callback = move |req: &Request<()>, resp: Response<()>| answer_handshake(&reqs, req, resp);
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                        return;
                    };
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_close() {
                            // tungstenite queued the answering close frame: send it, then read to the end.
                            let _ = ws.flush().await;
                        }
                        let echo = m.is_text() || m.is_binary();
                        if echo && ws.send(m).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        WsEcho {
            addr,
            accepted,
            requests,
            task,
        }
    }
}

/// The echo server's side of the handshake (tungstenite's `Callback`, whose error type is its own): picks
/// [`CHOSEN`] if the client offers it, adds `X-Upstream`, and records the request.
#[allow(clippy::result_large_err)]
fn answer_handshake(
    seen: &Mutex<Vec<Request<()>>>,
    req: &Request<()>,
    mut resp: Response<()>,
) -> Result<Response<()>, ErrorResponse> {
    let offered = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if offered.split(',').any(|p| p.trim() == CHOSEN) {
        resp.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(CHOSEN));
    }
    resp.headers_mut()
        .insert("x-upstream", HeaderValue::from_static("ws-echo"));
    let mut copy = Request::new(());
    *copy.uri_mut() = req.uri().clone();
    *copy.headers_mut() = req.headers().clone();
    seen.lock().unwrap().push(copy);
    Ok(resp)
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// baton in front
// ---------------------------------------------------------------------------------------------------------------

/// One `http` listener in front of one cluster with the default protocol (`http1`: no `protocol` field).
fn yaml(listeners: &[SocketAddr], admin: SocketAddr, uds: &Path, upstream: SocketAddr, drain: &str) -> String {
    format!(
        "listeners:\n  - name: web\n    address: \"{}\"\n    protocol: http\n    cluster: app\n\
         clusters:\n  - name: app\n    endpoints: [\"{upstream}\"]\n    connect_timeout: 1s\n    request_timeout: 5s\n\
         admin:\n  address: \"{admin}\"\n\
         handoff:\n  uds_dir: \"{}\"\n  timeout: 10s\n  drain_timeout: {drain}\n",
        listeners[0],
        uds.display()
    )
}

async fn baton_in_front(dir: &TestDir, upstream: SocketAddr, drain: &str) -> First {
    start_first(dir, 1, |l, admin, uds| yaml(l, admin, uds, upstream, drain)).await
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket handshake through `addr` to `path`, offering [`OFFERED`] and [`EXTENSIONS`]: the client, its
/// request (with the key it sent) and the response it got.
async fn ws_connect(addr: SocketAddr, path: &str) -> (Ws, Request<()>, Response<Option<Vec<u8>>>) {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static(OFFERED));
    req.headers_mut()
        .insert("sec-websocket-extensions", HeaderValue::from_static(EXTENSIONS));
    let mut sent = Request::new(());
    *sent.uri_mut() = req.uri().clone();
    *sent.headers_mut() = req.headers().clone();
    let stream = TcpStream::connect(addr).await.expect("connect to baton");
    stream.set_nodelay(true).unwrap();
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .expect("the WebSocket handshake timed out")
        .unwrap_or_else(|e| panic!("WebSocket handshake through baton: {e}"));
    (ws, sent, resp)
}

fn header<'a, B>(r: &'a Response<B>, name: &str) -> &'a str {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

// ---------------------------------------------------------------------------------------------------------------
// 4a. the handshake
// ---------------------------------------------------------------------------------------------------------------

/// The WebSocket handshake through baton: the client gets `101` with a `Sec-WebSocket-Accept` that is right for the
/// key it sent, the subprotocol the server chose and the server's own fields; the server gets the client's
/// `Sec-WebSocket-Key`, `-Version`, `-Protocol` and `-Extensions` exactly as written, `Upgrade: websocket`, a
/// `Connection` that names `upgrade`, and the request target. Then a text and a binary message echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_handshake_passes_through() {
    let dir = TestDir::new();
    let up = WsEcho::start().await;
    let b = baton_in_front(&dir, up.addr, "5s").await;
    let (mut ws, sent, resp) = ws_connect(b.listeners[0], "/chat/room-1?user=ada").await;

    assert_eq!(resp.status(), 101);
    let key = sent.headers()["sec-websocket-key"].to_str().unwrap();
    assert_eq!(
        header(&resp, "sec-websocket-accept"),
        derive_accept_key(key.as_bytes()),
        "Sec-WebSocket-Accept for the key {key}: {resp:?}"
    );
    assert_eq!(header(&resp, "sec-websocket-protocol"), CHOSEN, "{resp:?}");
    assert_eq!(
        header(&resp, "sec-websocket-extensions"),
        "",
        "no extension was accepted: {resp:?}"
    );
    assert_eq!(header(&resp, "x-upstream"), "ws-echo", "{resp:?}");
    assert!(header(&resp, "upgrade").eq_ignore_ascii_case("websocket"), "{resp:?}");
    assert!(
        header(&resp, "connection").to_ascii_lowercase().contains("upgrade"),
        "{resp:?}"
    );

    let got = up.requests.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "handshakes at the upstream: {got:?}");
    let at_server = &got[0];
    assert_eq!(at_server.uri().path(), "/chat/room-1");
    assert_eq!(at_server.uri().query(), Some("user=ada"));
    for name in [
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
    ] {
        assert_eq!(
            at_server.headers().get_all(name).iter().collect::<Vec<_>>(),
            sent.headers().get_all(name).iter().collect::<Vec<_>>(),
            "{name} at the upstream"
        );
    }
    let at = |name: &str| {
        at_server
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    assert_eq!(at("upgrade"), "websocket");
    assert!(at("connection").contains("upgrade"), "{at_server:?}");

    ws.send(Message::text("hello through baton")).await.unwrap();
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    let a = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("echo")
        .unwrap()
        .unwrap();
    let b2 = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("echo")
        .unwrap()
        .unwrap();
    assert_eq!(a, Message::text("hello through baton"));
    assert_eq!(b2, Message::binary(vec![0u8, 1, 2, 255]));
    ws.close(None).await.unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// 4b. one WebSocket through 10 upgrades
// ---------------------------------------------------------------------------------------------------------------

// The frames (`frame`, `check_echo`) are those of the demo's WebSocket client: examples/support/ws_frames.rs.

#[derive(Default)]
struct EchoState {
    sent: AtomicU64,
    echoed: AtomicU64,
    /// Set once the writer sent its close frame.
    closing: AtomicBool,
    error: Mutex<Option<String>>,
}

impl EchoState {
    fn set_error(&self, e: String) {
        let mut slot = self.error.lock().unwrap();
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    fn assert_intact(&self, when: &str) {
        if let Some(e) = self.error.lock().unwrap().clone() {
            panic!(
                "{when}: the WebSocket broke: {e} ({} frames sent, {} echoed intact)",
                self.sent.load(Ordering::Relaxed),
                self.echoed.load(Ordering::Relaxed)
            );
        }
    }
}

/// One WebSocket connection through an `http` listener to a tokio-tungstenite echo server stays open across 10
/// hot upgrades (Kruise's sequence: new instance with the takeover env, `baton migrate`) while the client keeps
/// sending text and binary frames of random sizes up to 64 KiB: every frame comes back intact and in order,
/// frames keep flowing after each upgrade (through the new instance: the old one has exited), and the client and
/// the upstream each keep their one connection (0 reconnects). Each old instance exits within 10 s of the
/// handoff, long before its 60 s drain deadline: its tunnel moved. At the end the close handshake completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_survives_10_upgrades() {
    const UPGRADES: u64 = 10;
    const PROGRESS: u64 = 30;
    let dir = TestDir::new();
    let up = WsEcho::start().await;
    let First {
        baton: mut serving,
        config,
        uds,
        listeners,
        admin,
    } = baton_in_front(&dir, up.addr, "60s").await;
    let (ws, _, resp) = ws_connect(listeners[0], "/echo").await;
    assert_eq!(resp.status(), 101);
    let (mut sink, mut incoming) = ws.split();
    let st = Arc::new(EchoState::default());
    let stop = Arc::new(AtomicBool::new(false));

    let writer = {
        let (st, stop) = (st.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = sink.send(frame(seq)).await {
                    st.set_error(format!("sending frame {seq}: {e}"));
                    return;
                }
                seq += 1;
                st.sent.store(seq, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            st.closing.store(true, Ordering::Relaxed);
            if let Err(e) = sink.close().await {
                st.set_error(format!("sending the close frame: {e}"));
            }
        })
    };
    let reader = {
        let st = st.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                match incoming.next().await {
                    Some(Ok(Message::Close(_))) | None if st.closing.load(Ordering::Relaxed) => return seq,
                    Some(Ok(Message::Close(c))) => {
                        st.set_error(format!("the server closed the WebSocket ({c:?}) after {seq} frames"));
                        return seq;
                    }
                    None => {
                        st.set_error(format!("the connection ended after {seq} frames echoed"));
                        return seq;
                    }
                    Some(Err(e)) => {
                        st.set_error(format!("reading after {seq} frames echoed: {e}"));
                        return seq;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(m)) => {
                        if let Err(e) = check_echo(seq, &m) {
                            st.set_error(e);
                            return seq;
                        }
                        seq += 1;
                        st.echoed.store(seq, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    let flowing = |min: u64| {
        let st = st.clone();
        async move {
            wait_until(WAIT, || {
                let ok = st.error.lock().unwrap().is_some() || st.echoed.load(Ordering::Relaxed) >= min;
                async move { ok }
            })
            .await
        }
    };
    assert!(flowing(PROGRESS).await, "no echo before the first upgrade");
    st.assert_intact("before the first upgrade");

    for g in 2..=UPGRADES + 1 {
        let mut next = take_over(&dir, &config, &uds, &format!("gen-{g}"), &takeover_env(g)).await;
        expect_old_exits(
            &mut serving,
            OLD_EXIT,
            "its only connection is a WebSocket tunnel, which should have been handed over",
        )
        .await;
        st.assert_intact(&format!("upgrade to generation {g}"));
        let base = st.echoed.load(Ordering::Relaxed);
        assert!(
            flowing(base + PROGRESS).await,
            "the echo stalled after the upgrade to generation {g} ({base} frames echoed)"
        );
        st.assert_intact(&format!("after the upgrade to generation {g}"));
        std::mem::swap(&mut serving, &mut next);
    }
    assert_serving(admin, serving.pid(), UPGRADES + 1).await;

    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(WAIT, writer)
        .await
        .expect("the writer did not stop")
        .expect("join the writer");
    let echoed = tokio::time::timeout(WAIT, reader)
        .await
        .expect("no close frame back within 10 s")
        .expect("join the reader");
    st.assert_intact("at the end");
    let sent = st.sent.load(Ordering::Relaxed);
    eprintln!("{sent} frames sent and echoed intact across {UPGRADES} upgrades");
    assert_eq!(echoed, sent, "frames echoed vs sent");
    assert_eq!(
        up.accepted.load(Ordering::Relaxed),
        1,
        "connections the upstream accepted: the tunnel should have kept its one upstream connection"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// a scripted raw upstream and a raw client, for what is not a tunnel
// ---------------------------------------------------------------------------------------------------------------

/// An HTTP/1.1 upstream on 127.0.0.1:0 that reads request heads (no bodies but chunked or Content-Length ones it
/// skips), records them, and answers each with the bytes `answer(path)` gives, keeping the connection open.
struct RawUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    async fn start(answer: fn(&str) -> Vec<u8>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some((head, used)) = read_request(&mut s, &mut buf).await else {
                            return;
                        };
                        buf.drain(..used);
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        h.lock().unwrap().push(head);
                        if s.write_all(&answer(&path)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawUpstream { addr, heads, task }
    }

    fn head_of(&self, path: &str) -> String {
        let heads = self.heads.lock().unwrap();
        heads
            .iter()
            .find(|h| h.split(' ').nth(1) == Some(path))
            .cloned()
            .unwrap_or_else(|| panic!("no request for {path} at the upstream: {heads:?}"))
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request from `s` into `buf`: its head (without the empty line) and the bytes it took, its body
/// (Content-Length or chunked) skipped. `None` at EOF.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize)> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let body_start = end + 4;
            if header_values(&head, "transfer-encoding")
                .iter()
                .any(|v| v.eq_ignore_ascii_case("chunked"))
            {
                if let Some(last) = find(&buf[body_start..], b"0\r\n\r\n") {
                    return Some((head, body_start + last + 5));
                }
            } else {
                let len: usize = header_values(&head, "content-length")
                    .first()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= body_start + len {
                    return Some((head, body_start + len));
                }
            }
        }
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A response as a raw client reads it.
#[derive(Debug)]
struct Resp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name)
    }

    fn says_close(&self) -> bool {
        self.header("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }
}

/// An HTTP/1.1 client connection on raw TCP.
struct RawClient {
    s: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> RawClient {
        let s = TcpStream::connect(addr).await.expect("connect to baton");
        s.set_nodelay(true).unwrap();
        RawClient { s, buf: Vec::new() }
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(WAIT, self.s.read(&mut chunk)).await {
            Err(_) => panic!(
                "baton sent nothing more within {WAIT:?}; unread: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Sends `request` and reads one response: its body by Content-Length (or none), else until EOF.
    async fn roundtrip(&mut self, request: &str) -> Resp {
        self.s.write_all(request.as_bytes()).await.expect("write to baton");
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            assert!(
                self.fill().await,
                "EOF before a response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
        let body_start = end + 4;
        let len = header_values(&head, "content-length")
            .first()
            .map(|v| v.parse::<usize>().unwrap());
        let total = match len {
            Some(n) => {
                while self.buf.len() < body_start + n {
                    assert!(self.fill().await, "EOF inside the body");
                }
                body_start + n
            }
            None if status == 101 || status == 204 || status == 304 => body_start,
            None => {
                while self.fill().await {}
                self.buf.len()
            }
        };
        let raw: Vec<u8> = self.buf.drain(..total).collect();
        Resp {
            status,
            head,
            body: raw[body_start..].to_vec(),
        }
    }
}

/// A body-less WebSocket upgrade request for `path`, as a browser writes it.
fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

fn ok_response(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// A baton in front of `upstream` (default `http1` cluster).
async fn baton_raw(dir: &TestDir, upstream: SocketAddr) -> First {
    baton_in_front(dir, upstream, "5s").await
}

// ---------------------------------------------------------------------------------------------------------------
// 5. an unsolicited 101
// ---------------------------------------------------------------------------------------------------------------

/// An upstream that answers `101 Switching Protocols` to requests that asked for no upgrade: the client gets
/// `502 baton: upstream request failed`, never a 101 and never the upstream's bytes, whether the request took the
/// HTTP/1 engine (a plain GET) or hyper (a request whose `Connection` names another field, a chunked POST), and
/// its keep-alive connection serves the next request; an h2c client's request gets a `502` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsolicited_101_is_a_502() {
    let up = RawUpstream::start(|path| {
        if path.starts_with("/switch") {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello"
                .to_vec()
        } else {
            ok_response(path)
        }
    })
    .await;
    let dir = TestDir::new();
    let b = baton_raw(&dir, up.addr).await;
    let mut c = RawClient::connect(b.listeners[0]).await;
    let requests = [
        ("engine", get("/switch-engine")),
        (
            "hyper (Connection names a field)",
            "GET /switch-hyper HTTP/1.1\r\nHost: test\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\r\n".to_string(),
        ),
        (
            "hyper (chunked body)",
            "POST /switch-chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                .to_string(),
        ),
    ];
    for (i, (path_taken, request)) in requests.iter().enumerate() {
        let r = c.roundtrip(request).await;
        assert_eq!(
            (r.status, String::from_utf8_lossy(&r.body).as_ref()),
            (502, "baton: upstream request failed\n"),
            "{path_taken}: {r:?}"
        );
        assert!(!r.says_close(), "{path_taken}: {r:?}");
        let next = format!("/next-{i}");
        let r = c.roundtrip(&get(&next)).await;
        assert_eq!(
            (r.status, r.body),
            (200, next.into_bytes()),
            "after the {path_taken} case"
        );
    }
    // An h2c client's request (served by hyper, to the HTTP/1.1 upstream): 502 too.
    let stream = TcpStream::connect(b.listeners[0]).await.expect("connect for h2c");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{}/switch-h2", b.listeners[0]))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, h2.send_request(req))
        .await
        .expect("h2c request timed out")
        .unwrap_or_else(|e| panic!("h2c client: {e:?}"));
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("h2c body")
        .to_bytes();
    assert_eq!(
        (status.as_u16(), String::from_utf8_lossy(&body).as_ref()),
        (502, "baton: upstream request failed\n"),
        "h2c client"
    );

    for path in ["/switch-engine", "/switch-hyper", "/switch-chunked", "/switch-h2"] {
        let head = up.head_of(path);
        assert!(
            header_values(&head, "upgrade").is_empty(),
            "{path} asked for an upgrade: {head}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 6. a declined upgrade
// ---------------------------------------------------------------------------------------------------------------

/// A WebSocket upgrade request that the upstream declines, with `426 Upgrade Required` or a plain `200`, is a normal
/// exchange: the upstream got the upgrade request (`Upgrade: websocket`, `Connection: upgrade`, the key), the client
/// gets the response and its body as sent, without `Connection: close`, and its keep-alive connection serves the
/// next request. A real WebSocket client sees the refusal as such (HTTP 426).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_upgrade_is_a_normal_exchange() {
    let up = RawUpstream::start(|path| match path {
        "/ws-426" => {
            b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nContent-Length: 14\r\n\r\nupgrade needed".to_vec()
        }
        "/ws-200" => ok_response("not a websocket here"),
        p => ok_response(p),
    })
    .await;
    let dir = TestDir::new();
    let b = baton_raw(&dir, up.addr).await;
    let mut c = RawClient::connect(b.listeners[0]).await;

    let r = c.roundtrip(&upgrade_request("/ws-426")).await;
    assert_eq!((r.status, r.body.as_slice()), (426, &b"upgrade needed"[..]), "{r:?}");
    assert!(!r.says_close(), "{r:?}");
    let r = c.roundtrip(&get("/after-426")).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"/after-426"[..]), "{r:?}");

    let r = c.roundtrip(&upgrade_request("/ws-200")).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"not a websocket here"[..]),
        "{r:?}"
    );
    assert!(!r.says_close(), "{r:?}");
    assert!(r.header("upgrade").is_empty(), "{r:?}");
    let r = c.roundtrip(&get("/after-200")).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"/after-200"[..]), "{r:?}");

    for path in ["/ws-426", "/ws-200"] {
        let head = up.head_of(path);
        assert_eq!(header_values(&head, "upgrade"), ["websocket"], "{head}");
        assert!(
            header_values(&head, "connection")
                .iter()
                .any(|v| v.to_ascii_lowercase().contains("upgrade")),
            "{head}"
        );
        assert_eq!(
            header_values(&head, "sec-websocket-key"),
            ["dGhlIHNhbXBsZSBub25jZQ=="],
            "{head}"
        );
    }

    // A real client, refused.
    let req = format!("ws://{}/ws-426", b.listeners[0]).into_client_request().unwrap();
    let stream = TcpStream::connect(b.listeners[0]).await.unwrap();
    match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .expect("the refused handshake timed out")
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 426, "{resp:?}");
            assert_eq!(resp.body().as_deref(), Some(&b"upgrade needed"[..]), "{resp:?}");
        }
        Err(e) => panic!("the client should see an HTTP 426, not {e}"),
        Ok(_) => panic!("the handshake succeeded against an upstream that declines"),
    }
}
