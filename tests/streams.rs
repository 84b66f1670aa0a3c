//! Long HTTP/1.1 exchanges through hot upgrades: each one is handed over in the middle, with both of its sockets,
//! and the new instance carries it on. Real clients (curl, hyper's client) against a hyper upstream and a raw
//! close-delimited one, through 3 upgrades with `drain_timeout: 1s`, streams lasting about 6 s each:
//! - Server-Sent Events (a chunked response, one event every 40 ms), read by `curl -N`;
//! - a 2 MiB `Content-Length` download and a close-delimited one, sent slowly;
//! - a response whose head comes only after 2.5 s (a long poll);
//! - slow chunked uploads (`curl -T -` from a pipe, one of them with `Expect: 100-continue`) and a slow 1.5 MiB
//!   `Content-Length` upload (hyper's client).
//!
//! Each must arrive byte-exact on the connection it started on (curl's `num_connects` is 1; the upstream accepted
//! one connection per exchange), and each old instance must exit before its drain deadline.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long each stream lasts, about.
const STREAM: Duration = Duration::from_secs(6);
/// Server-Sent Events: one every 40 ms.
const EVENTS: u64 = 150;
const EVENT_EVERY: Duration = Duration::from_millis(40);
/// Downloads: 16 KiB every 45 ms, 2 MiB.
const CHUNK: usize = 16 * 1024;
const CHUNK_EVERY: Duration = Duration::from_millis(45);
const DOWNLOAD: usize = 128 * CHUNK;
/// Uploads: 1.5 MiB, 12 KiB every 45 ms.
const UP_CHUNK: usize = 12 * 1024;
const UPLOAD: usize = 128 * UP_CHUNK;
/// The long poll's head comes after this.
const LATE: Duration = Duration::from_millis(2500);
const UPGRADES: u64 = 3;

/// Byte `i` of every generated body.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 12)) as u8
}

fn pattern_range(from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(pattern).collect()
}

fn event(i: u64) -> String {
    format!("id: {i}\ndata: event {i} {}\n\n", "x".repeat((i % 50) as usize))
}

/// FNV-1a: what the upstream answers for an upload, checked against the bytes sent.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------------------------
// upstreams
// ---------------------------------------------------------------------------------------------------------------

/// A body fed through a channel: streams as the sender sends.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    len: Option<u64>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        self.len.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// A body that sends `total` bytes of [`pattern`] in pieces of `piece`, one every `every`.
fn paced(total: usize, piece: usize, every: Duration, exact: bool) -> ChannelBody {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut at = 0;
        while at < total {
            let n = piece.min(total - at);
            if tx.send(Bytes::from(pattern_range(at, n))).await.is_err() {
                return;
            }
            at += n;
            tokio::time::sleep(every).await;
        }
    });
    ChannelBody {
        rx,
        len: exact.then_some(total as u64),
    }
}

/// hyper's HTTP/1.1 server on 127.0.0.1:0: `/sse`, `/download`, `/late` and `/upload` (answers `<length> <fnv>`);
/// counts the connections it accepted.
struct HyperUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<ChannelBody>, Infallible> {
    let (tx, rx) = mpsc::channel(4);
    let reply = |body: ChannelBody| Ok(Response::builder().body(body).unwrap());
    match req.uri().path() {
        "/sse" => {
            tokio::spawn(async move {
                for i in 0..EVENTS {
                    if tx.send(Bytes::from(event(i))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(EVENT_EVERY).await;
                }
            });
            Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .body(ChannelBody { rx, len: None })
                .unwrap())
        }
        "/download" => reply(paced(DOWNLOAD, CHUNK, CHUNK_EVERY, true)),
        "/late" => {
            tokio::time::sleep(LATE).await;
            tx.send(Bytes::from_static(b"late")).await.unwrap();
            reply(ChannelBody { rx, len: Some(4) })
        }
        "/upload" => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let answer = match body {
                Ok(b) => format!("{} {:016x}", b.len(), fnv(&b)),
                Err(e) => format!("error {e}"),
            };
            let len = answer.len() as u64;
            tx.send(Bytes::from(answer)).await.unwrap();
            reply(ChannelBody { rx, len: Some(len) })
        }
        _ => {
            tx.send(Bytes::from_static(b"ok")).await.unwrap();
            reply(ChannelBody { rx, len: Some(2) })
        }
    }
}

impl HyperUpstream {
    async fn start() -> HyperUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(handle))
                        .await;
                });
            }
        });
        HyperUpstream { addr, accepted, task }
    }
}

impl Drop for HyperUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads up to the end of a request head (and whatever came with it): false if the connection ended first.
async fn read_head(s: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// An upstream whose every response is close-delimited (no length, no chunking): 2 MiB of [`pattern`] in paced
/// pieces, then it closes.
async fn close_delimited_upstream() -> (SocketAddr, Arc<AtomicU64>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if !read_head(&mut s).await {
                    return;
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n",
                    )
                    .await;
                let mut at = 0;
                while at < DOWNLOAD {
                    if s.write_all(&pattern_range(at, CHUNK)).await.is_err() {
                        return;
                    }
                    at += CHUNK;
                    tokio::time::sleep(CHUNK_EVERY).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, accepted, task)
}

// ---------------------------------------------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------------------------------------------

/// What curl printed: the body, then `-w`'s `<num_connects> <http_code>` line.
struct Curled {
    body: Vec<u8>,
    connects: String,
    code: String,
    status: std::process::ExitStatus,
    stderr: String,
}

fn curl(url: &str, extra: &[&str]) -> tokio::process::Child {
    Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--max-time",
            "60",
            "-o",
            "-",
            "-w",
            "\n%{num_connects} %{http_code}",
        ])
        .args(extra)
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run curl (scripts/deps.sh unit installs it)")
}

async fn curled(child: tokio::process::Child) -> Curled {
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("curl within 60 s")
        .unwrap();
    let mut body = out.stdout;
    let cut = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let tail = String::from_utf8_lossy(&body[cut..]).trim().to_string();
    body.truncate(cut);
    let (connects, code) = tail.split_once(' ').unwrap_or(("?", "?"));
    Curled {
        body,
        connects: connects.to_string(),
        code: code.to_string(),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn check(name: &str, got: &Curled, want: &[u8]) {
    assert!(
        got.status.success(),
        "{name}: curl failed ({}): {}",
        got.status,
        got.stderr
    );
    assert_eq!(got.code, "200", "{name}: status");
    assert_eq!(got.connects, "1", "{name}: curl opened more than one connection");
    if got.body != want {
        let at = got
            .body
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.body.len().min(want.len()));
        panic!(
            "{name}: {} bytes received, {} expected, first difference at byte {at}",
            got.body.len(),
            want.len()
        );
    }
}

/// A slow `Content-Length` upload with hyper's client on one connection: the upstream's answer.
async fn hyper_upload(addr: SocketAddr) -> Result<String, String> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", addr.to_string())
        .header("content-length", UPLOAD.to_string())
        .body(paced(UPLOAD, UP_CHUNK, CHUNK_EVERY, true))
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("the response: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("the response body: {e}"))?
        .to_bytes();
    Ok(format!("{status} {}", String::from_utf8_lossy(&body)))
}

/// Every baton log of the test, for a failure message.
fn logs(dir: &TestDir) -> String {
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "stderr"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            format!(
                "--- {}\n{}",
                p.display(),
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect()
}

fn yaml(listeners: &[SocketAddr], admin: SocketAddr, uds: &Path, app: SocketAddr, closer: SocketAddr) -> String {
    format!(
        "listeners:\n  - name: web\n    address: \"{}\"\n    protocol: http\n    cluster: app\n\
         \x20 - name: raw\n    address: \"{}\"\n    protocol: http\n    cluster: closer\n\
         clusters:\n  - name: app\n    endpoints: [\"{app}\"]\n    request_timeout: 10s\n\
         \x20 - name: closer\n    endpoints: [\"{closer}\"]\n\
         admin:\n  address: \"{admin}\"\n\
         handoff:\n  uds_dir: \"{}\"\n  timeout: 10s\n  drain_timeout: 1s\n  probation: 0s\n",
        listeners[0],
        listeners[1],
        uds.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_exchanges_move_through_3_upgrades() {
    let dir = TestDir::new();
    let app = HyperUpstream::start().await;
    let (closer, closer_accepted, closer_task) = close_delimited_upstream().await;
    let First {
        baton: mut serving,
        config,
        uds,
        listeners,
        admin,
    } = start_first(&dir, 2, |l, admin, uds| yaml(l, admin, uds, app.addr, closer)).await;
    let (web, raw) = (listeners[0], listeners[1]);

    let sse = curl(&format!("http://{web}/sse"), &[]);
    let download = curl(&format!("http://{web}/download"), &[]);
    let close_delimited = curl(&format!("http://{raw}/stream"), &[]);
    let late = curl(&format!("http://{web}/late"), &[]);
    let mut chunked_upload = curl(&format!("http://{web}/upload"), &["-T", "-", "-H", "Expect:"]);
    // The same with `Expect: 100-continue`: curl sends no byte of the body before the upstream's `100 Continue`
    // reaches it, or 30 s pass; it gives up after 20 s.
    let mut expecting_upload = curl(
        &format!("http://{web}/upload"),
        &[
            "-T",
            "-",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "30",
            "--max-time",
            "20",
        ],
    );
    let feeders: Vec<_> = [&mut chunked_upload, &mut expecting_upload]
        .into_iter()
        .map(|child| {
            let mut stdin = child.stdin.take().unwrap();
            tokio::spawn(async move {
                let mut at = 0;
                while at < UPLOAD {
                    stdin.write_all(&pattern_range(at, UP_CHUNK)).await.unwrap();
                    stdin.flush().await.unwrap();
                    at += UP_CHUNK;
                    tokio::time::sleep(CHUNK_EVERY).await;
                }
            })
        })
        .collect();
    let hyper_up = tokio::spawn(hyper_upload(web));

    // Three upgrades while everything is in flight.
    let begun = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut exits = Vec::new();
    for g in 2..=UPGRADES + 1 {
        let mut next = take_over(&dir, &config, &uds, &format!("gen-{g}"), &takeover_env(g)).await;
        let committed = Instant::now();
        let (code, _) = serving.expect_handed_over(Duration::from_secs(10)).await;
        exits.push(committed.elapsed());
        assert_eq!(
            code,
            Some(0),
            "generation {} should exit 0 once its exchanges are handed over; stderr:\n{}",
            g - 1,
            serving.stderr()
        );
        std::mem::swap(&mut serving, &mut next);
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    let upgrades_took = begun.elapsed();
    assert!(
        upgrades_took < STREAM,
        "the upgrades took {upgrades_took:?}: the streams ({STREAM:?}) no longer span them all"
    );
    assert_serving(admin, serving.pid(), UPGRADES + 1).await;

    let all_events: String = (0..EVENTS).map(event).collect();
    check("SSE", &curled(sse).await, all_events.as_bytes());
    check(
        "Content-Length download",
        &curled(download).await,
        &pattern_range(0, DOWNLOAD),
    );
    check(
        "close-delimited download",
        &curled(close_delimited).await,
        &pattern_range(0, DOWNLOAD),
    );
    check("long poll", &curled(late).await, b"late");
    for feeder in feeders {
        feeder.await.unwrap();
    }
    let uploaded = pattern_range(0, UPLOAD);
    let want = format!("{} {:016x}", UPLOAD, fnv(&uploaded));
    check(
        "chunked upload (curl -T -)",
        &curled(chunked_upload).await,
        want.as_bytes(),
    );
    let expecting = curled(expecting_upload).await;
    check("chunked upload with Expect: 100-continue", &expecting, want.as_bytes());
    let got = hyper_up.await.unwrap();
    if got.as_deref() != Ok(&format!("200 OK {want}")) {
        panic!(
            "Content-Length upload (hyper): {got:?}, expected 200 {want}\n{}",
            logs(&dir)
        );
    }
    assert_eq!(
        app.accepted.load(Ordering::Relaxed),
        6,
        "connections the upstream accepted: each exchange should have kept its one upstream connection"
    );
    assert_eq!(closer_accepted.load(Ordering::Relaxed), 1);
    eprintln!("old instances exited {exits:?} after their successors' postStart hooks returned");
    closer_task.abort();
}

/// An upstream that answers `413` as soon as it has a request head, and closes: the client gets that answer in the
/// middle of its upload (not a `502`), and its connection closes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_ends_an_upload() {
    let dir = TestDir::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let upstream = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !read_head(&mut s).await {
                    return;
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo long",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    let first = start_first(&dir, 2, |l, admin, uds| yaml(l, admin, uds, up, up)).await;
    let mut c = TcpStream::connect(first.listeners[0]).await.unwrap();
    c.write_all(b"PUT /big HTTP/1.1\r\nHost: test\r\nContent-Length: 4194304\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = c.split();
    let sender = async {
        // Keeps sending until baton stops taking the body; the error is expected then.
        for i in 0..64 {
            if wr.write_all(&pattern_range(i * 65536, 65536)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let reader = async {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut got)).await;
        got
    };
    let ((), got) = tokio::join!(sender, reader);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    assert!(text.ends_with("too long"), "{text}");
    upstream.abort();
}
