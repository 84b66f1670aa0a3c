//! `clusters[].stream_idle_timeout`: an exchange that moves no byte either way for that long, once past the
//! request head, is ended: on baton's HTTP/1 engine and on the hyper path (an HTTP/1.0 client, an h2c client), for
//! a response body from an upstream gone silent, a request body the client stopped sending, and an upgraded
//! connection; each counted in `baton_stream_idle_timeouts_total` and logged at `warn`. A slow but active stream
//! (an event every 200 ms, an upload trickling in) is never cut, and `0s` turns the timeout off.
//!
//! The upstreams are raw TCP servers scripted per path, which also say when baton closed their connection.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest wait for anything that should happen (generous for CI; the timeouts under test are 500 ms).
const WAIT: Duration = Duration::from_secs(10);

/// What the upstream sends before going silent on `/silent`: the head of a 100-byte body, and 10 of its bytes.
const PARTIAL: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";

/// SSE events `/sse` sends, 200 ms apart (2 s in all: four times the timeout).
const EVENTS: usize = 10;
const EVENT_GAP: Duration = Duration::from_millis(200);

fn event(i: usize) -> String {
    format!("id: {i}\ndata: event {i}\n\n")
}

/// A raw HTTP/1.1 upstream. By path: `/silent` answers [`PARTIAL`] and then says nothing; `/sse` streams
/// [`EVENTS`] chunked events [`EVENT_GAP`] apart, then ends the body; `/upload` reads its `Content-Length` body and
/// answers its length; `/upgrade` answers `101` and then says nothing. After that each connection waits for baton
/// to close it, and counts it in `closed`.
struct Upstream {
    addr: SocketAddr,
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closed = Arc::new(AtomicUsize::new(0));
        let c = closed.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, c.clone()));
            }
        });
        Upstream { addr, closed, task }
    }

    /// Waits until baton closed `n` upstream connections in all.
    async fn closed(&self, n: usize) -> bool {
        wait_until(WAIT, || {
            let closed = self.closed.clone();
            async move { closed.load(Ordering::Relaxed) >= n }
        })
        .await
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut s: TcpStream, closed: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    // Keep-alive: `/sse` and `/upload` leave the connection ready for the next request (baton may pool it).
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let wrote = match path.as_str() {
            "/silent" => s.write_all(PARTIAL).await.map(|()| false),
            "/upgrade" => s
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x-test\r\nconnection: upgrade\r\n\r\n")
                .await
                .map(|()| false),
            "/sse" => {
                buf.drain(..head_end);
                let mut r = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                    )
                    .await;
                for i in 0..EVENTS {
                    tokio::time::sleep(EVENT_GAP).await;
                    let e = event(i);
                    r = r.and(s.write_all(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes()).await);
                }
                r.and(s.write_all(b"0\r\n\r\n").await).map(|()| true)
            }
            "/upload" => {
                let len: usize = header_values(&head, "content-length")
                    .first()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            // Closed by baton in the middle of the body.
                            closed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.drain(..head_end + len);
                let body = len.to_string();
                s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes())
                    .await
                    .map(|()| true)
            }
            _ => s
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await
                .map(|()| false),
        };
        match wrote {
            Ok(true) => continue,
            Ok(false) => break,
            Err(_) => return,
        }
    }
    // Silent from here on: wait for baton to close.
    let mut sink = [0u8; 4096];
    while let Ok(1..) = s.read(&mut sink).await {}
    closed.fetch_add(1, Ordering::Relaxed);
}

/// baton with one `ingress` http listener to `upstream`, whose cluster has `stream_idle_timeout: idle`.
async fn baton(dir: &TestDir, upstream: SocketAddr, idle: &str) -> First {
    start_first(dir, 1, |listeners, admin, uds| {
        Config::default()
            .listener("ingress", listeners[0], "http", "app")
            .cluster("app", &[upstream])
            .stream_idle_timeout(idle)
            .admin(admin)
            .uds_dir(uds)
            .to_yaml()
    })
    .await
}

/// Sends `request` on a new connection and reads until the response head and `want` more bytes are in.
async fn request(addr: SocketAddr, request: &[u8], want: usize) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if buf.len() >= i + 4 + want {
                let head = String::from_utf8_lossy(&buf[..i + 4]).to_string();
                return (s, head, buf[i + 4..].to_vec());
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, s.read(&mut chunk)).await {
            Ok(Ok(n @ 1..)) => buf.extend_from_slice(&chunk[..n]),
            other => panic!(
                "no complete response head and {want} body bytes ({other:?}); got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

/// Reads `s` until baton closes it (EOF or reset), within [`WAIT`]: the bytes that came, and how long it took.
async fn until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut chunk)).await {
            Err(_) => panic!(
                "baton did not close the connection within {WAIT:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Asserts `s` stays open, with nothing more to read, for `long`.
async fn still_open(s: &mut TcpStream, long: Duration) {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(long, s.read(&mut chunk)).await {
        Err(_) => {}
        Ok(r) => panic!("the connection should still be open and quiet after {long:?}: {r:?}"),
    }
}

async fn idle_timeouts(admin: SocketAddr) -> f64 {
    sample(
        &metrics(admin).await,
        "baton_stream_idle_timeouts_total{listener=\"ingress\"}",
    )
}

/// Waits for the `warn` line of the stream idle timeout in baton's log.
async fn warned(baton: &Baton, at: &str) -> bool {
    wait_until(WAIT, || {
        let log = baton.stderr();
        let at = at.to_string();
        async move {
            warn_lines(&log, "no byte moved either way within stream_idle_timeout")
                .iter()
                .any(|l| l.contains("stream_idle_timeout=500ms") && l.contains(&at))
        }
    })
    .await
}

/// On the engine's path (a plain HTTP/1.1 GET): the upstream sends a head and 10 bytes of a 100-byte body and goes
/// silent. The client gets those bytes, then its connection is closed (reset) about 500 ms later; the upstream
/// connection is closed too (not pooled); it is counted and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_response_body_is_cut_on_the_engine_path() {
    let up = Upstream::start().await;
    let dir = TestDir::new();
    let first = baton(&dir, up.addr, "500ms").await;
    let (mut s, head, body) = request(first.listeners[0], b"GET /silent HTTP/1.1\r\nHost: t\r\n\r\n", 10).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"0123456789");
    let (more, took) = until_closed(&mut s).await;
    assert!(more.is_empty(), "{more:?}");
    assert!(took >= Duration::from_millis(300), "cut before the timeout: {took:?}");
    assert!(
        up.closed(1).await,
        "the upstream connection should be closed, not pooled"
    );
    assert_eq!(idle_timeouts(first.admin).await, 1.0);
    assert!(
        warned(&first.baton, "waiting for the upstream's response body").await,
        "{}",
        first.baton.stderr()
    );
}

/// The same on the hyper path, for an HTTP/1.0 client (whose response ends with the connection: the reset tells
/// it that it was cut) and for an h2c client (its stream is reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_response_body_is_cut_on_the_hyper_path() {
    let up = Upstream::start().await;
    let dir = TestDir::new();
    let first = baton(&dir, up.addr, "500ms").await;
    let (mut s, head, body) = request(first.listeners[0], b"GET /silent HTTP/1.0\r\nHost: t\r\n\r\n", 10).await;
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert_eq!(body, b"0123456789");
    let (more, _) = until_closed(&mut s).await;
    assert!(more.is_empty(), "{more:?}");
    assert!(
        up.closed(1).await,
        "the upstream connection should be closed, not pooled"
    );
    assert_eq!(idle_timeouts(first.admin).await, 1.0);

    let stream = TcpStream::connect(first.listeners[0]).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2c handshake with baton");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/silent", first.listeners[0]))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("a response head")
        .expect("a response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match body.frame().await {
                Some(Ok(f)) => got.extend_from_slice(f.data_ref().map_or(&[][..], |d| &d[..])),
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("the stream should be reset within the wait");
    assert!(ended.is_err(), "the stream should end with a reset, not complete");
    assert_eq!(got, b"0123456789");
    assert!(
        up.closed(2).await,
        "the second upstream connection should be closed too"
    );
    assert_eq!(idle_timeouts(first.admin).await, 2.0);
    assert!(warned(&first.baton, "waiting for the upstream's response body").await);
}

/// A client that stops sending its request body (the engine streams it): `408` once the timeout passed, and the
/// connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_the_client_stopped_sending_is_408() {
    let up = Upstream::start().await;
    let dir = TestDir::new();
    let first = baton(&dir, up.addr, "500ms").await;
    let mut req = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 200000\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'x'; 100_000]);
    let mut s = TcpStream::connect(first.listeners[0]).await.unwrap();
    s.write_all(&req).await.unwrap();
    let (got, _) = until_closed(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("baton: request body stalled"), "{text}");
    assert!(up.closed(1).await, "the upstream connection should be closed");
    assert_eq!(idle_timeouts(first.admin).await, 1.0);
    assert!(warned(&first.baton, "waiting for the client's request body").await);
}

/// An upgraded connection (`101`) on which nothing moves either way is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upgraded_connection_is_closed() {
    let up = Upstream::start().await;
    let dir = TestDir::new();
    let first = baton(&dir, up.addr, "500ms").await;
    let (mut s, head, _) = request(
        first.listeners[0],
        b"GET /upgrade HTTP/1.1\r\nHost: t\r\nUpgrade: x-test\r\nConnection: upgrade\r\n\r\n",
        0,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (more, _) = until_closed(&mut s).await;
    assert!(more.is_empty(), "{more:?}");
    assert!(up.closed(1).await, "the upstream side should be closed");
    assert_eq!(idle_timeouts(first.admin).await, 1.0);
    assert!(warned(&first.baton, "in an upgraded connection").await);
}

/// Streams that move a byte more often than the timeout run for four times as long and are not cut: an SSE
/// response (an event every 200 ms for 2 s) on the engine's path (byte-exact, chunked framing included) and on
/// hyper's (an HTTP/1.0 client: the events, in a body that ends with the connection), and an upload of 10 pieces of
/// 10,000 bytes, one every 200 ms (streamed by the engine: more than the 64 KiB it reads whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_streams_longer_than_the_timeout_are_not_cut() {
    let up = Upstream::start().await;
    let dir = TestDir::new();
    let first = baton(&dir, up.addr, "500ms").await;
    let listen = first.listeners[0];
    let sse_events: String = (0..EVENTS).map(event).collect();

    let engine = tokio::spawn(async move {
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(b"GET /sse HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        until_closed(&mut s).await.0
    });
    let hyper_path = tokio::spawn(async move {
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(b"GET /sse HTTP/1.0\r\nHost: t\r\n\r\n").await.unwrap();
        until_closed(&mut s).await.0
    });
    let upload = tokio::spawn(async move {
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..10 {
            tokio::time::sleep(EVENT_GAP).await;
            s.write_all(&[b'u'; 10_000]).await.unwrap();
        }
        until_closed(&mut s).await.0
    });

    let engine = engine.await.unwrap();
    let text = String::from_utf8_lossy(&engine);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    let chunked: String = (0..EVENTS)
        .map(|i| {
            let e = event(i);
            format!("{:x}\r\n{e}\r\n", e.len())
        })
        .collect();
    assert_eq!(
        body,
        format!("{chunked}0\r\n\r\n"),
        "the engine's SSE stream, byte-exact"
    );

    let hyper_path = hyper_path.await.unwrap();
    let text = String::from_utf8_lossy(&hyper_path);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.0 200"), "{text}");
    assert_eq!(body, sse_events, "the hyper path's SSE stream");

    let upload = upload.await.unwrap();
    let text = String::from_utf8_lossy(&upload);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\n100000"),
        "{text}"
    );
    assert_eq!(idle_timeouts(first.admin).await, 0.0);
}

/// `stream_idle_timeout: 0s` turns it off: the silent response of the first test is still open, and quiet, after
/// 1.5 s (three times the 500 ms it was cut after there), on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_turns_the_stream_idle_timeout_off() {
    let up = Upstream::start().await;
    let dir = TestDir::new();
    let first = baton(&dir, up.addr, "0s").await;
    let (mut engine, _, body) = request(first.listeners[0], b"GET /silent HTTP/1.1\r\nHost: t\r\n\r\n", 10).await;
    assert_eq!(body, b"0123456789");
    let (mut hyper_path, _, body) = request(first.listeners[0], b"GET /silent HTTP/1.0\r\nHost: t\r\n\r\n", 10).await;
    assert_eq!(body, b"0123456789");
    let (mut tunnel, head, _) = request(
        first.listeners[0],
        b"GET /upgrade HTTP/1.1\r\nHost: t\r\nUpgrade: x-test\r\nConnection: upgrade\r\n\r\n",
        0,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let long = Duration::from_millis(1500);
    tokio::join!(
        still_open(&mut engine, long),
        still_open(&mut hyper_path, long),
        still_open(&mut tunnel, long)
    );
    assert_eq!(up.closed.load(Ordering::Relaxed), 0);
    assert_eq!(idle_timeouts(first.admin).await, 0.0);
}
