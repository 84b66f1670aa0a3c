//! `protocol: h2c` clusters against upstreams built on the `h2` and hyper crates: a request the upstream refused
//! unprocessed (its GOAWAY crossed the request) is sent again, so a client sees no failure; and a slow client does
//! not make baton buffer a fast upstream's response without limit (HTTP/2 flow control end to end).

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts baton with one `http` listener whose cluster speaks h2c to `upstream`; returns it, serving, and the
/// listener's address.
async fn baton_to_h2c(dir: &TestDir, upstream: SocketAddr, request_timeout: &str) -> (Baton, SocketAddr) {
    let first = start_first(dir, 1, |listeners, admin, uds| {
        Config::default()
            .listener("ingress", listeners[0], "http", "grpc")
            .cluster("grpc", &[upstream])
            .upstream("h2c", request_timeout)
            .admin(admin)
            .uds_dir(uds)
            .to_yaml()
    })
    .await;
    (first.baton, first.listeners[0])
}

/// An h2 server (the `h2` crate) that answers `200 ok` and, after `per_conn` requests on a connection, sends an
/// immediate GOAWAY (last-stream-id: the last one it processed): the streams already on their way are refused, as
/// an nginx with `keepalive_requests` or a server with a maximum connection age does.
async fn goaway_upstream(per_conn: u64) -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conns, served) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (c, s) = (conns.clone(), served.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::Relaxed);
            let s = s.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                let mut here = 0;
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let resp = http::Response::builder().status(200).body(()).unwrap();
                    if let Ok(mut body) = respond.send_response(resp, false) {
                        let _ = body.send_data(Bytes::from_static(b"ok\n"), true);
                    }
                    s.fetch_add(1, Ordering::Relaxed);
                    here += 1;
                    if here == per_conn {
                        conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    }
                }
            });
        }
    });
    (addr, conns, served)
}

/// 2,000 GETs from an h2c client, 64 at a time, through an upstream that sends GOAWAY every 100 requests on each of
/// its connections: every one succeeds, because the requests its GOAWAY refused are sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_an_upstream_goaway_refused_are_sent_again() {
    const REQUESTS: u64 = 2_000;
    let (upstream, conns, served) = goaway_upstream(100).await;
    let dir = TestDir::new();
    let (_baton, listen) = baton_to_h2c(&dir, upstream, "5s").await;

    let stream = TcpStream::connect(listen).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2c handshake with baton");
    tokio::spawn(conn);
    let failed = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (mut sender, failed, next) = (sender.clone(), failed.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < REQUESTS {
                    let req = http::Request::get(format!("http://{listen}/x"))
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let ok = match sender.send_request(req).await {
                        Ok(resp) if resp.status() == 200 => resp.into_body().collect().await.is_ok(),
                        _ => false,
                    };
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let (conns, served) = (conns.load(Ordering::Relaxed), served.load(Ordering::Relaxed));
    eprintln!("{REQUESTS} requests: {served} served by the upstream on {conns} connections");
    assert!(
        conns >= REQUESTS / 100,
        "the upstream should have closed a connection every 100 requests ({conns} connections)"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests out of {REQUESTS}");
}

/// An h2c upstream that answers every request with [`SIZE`] bytes of `x`, as fast as flow control lets it.
async fn firehose_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Firehose { left: SIZE }))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

const SIZE: usize = 64 << 20;
const CHUNK: usize = 64 << 10;

/// A body of `left` bytes of `x`, every chunk ready at once.
struct Firehose {
    left: usize,
}

impl http_body::Body for Firehose {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(CHUNK);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
    }
}

/// baton's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// An HTTP/1.1 client that reads a 64 MiB response slowly (64 KiB every 20 ms) from an h2c upstream that sends as
/// fast as it may: baton's memory grows by a few windows at most, not by the response; then the client reads the
/// rest at full speed and gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_does_not_make_baton_buffer_a_fast_upstream() {
    let upstream = firehose_upstream().await;
    let dir = TestDir::new();
    let (baton, listen) = baton_to_h2c(&dir, upstream, "5s").await;
    let before = rss_kib(baton.pid());

    let mut client = TcpStream::connect(listen).await.unwrap();
    client
        .write_all(format!("GET /big HTTP/1.1\r\nHost: {listen}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; CHUNK];
    let (mut got, mut body) = (0usize, 0usize);
    let mut peak = before;
    for _ in 0..100 {
        let n = client.read(&mut buf).await.unwrap();
        got += n;
        body += count_x(&buf[..n]);
        peak = peak.max(rss_kib(baton.pid()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("after 2 s of slow reading: {got} bytes read; baton RSS {before} KiB before, {peak} KiB at most since");
    assert!(
        peak - before < 24 * 1024,
        "baton's RSS grew by {} KiB while the client read {got} bytes of a {SIZE}-byte response: it buffers the \
         upstream's response beyond HTTP/2 flow control",
        peak - before
    );
    // The rest, at full speed: chunked framing around exactly SIZE bytes of `x`.
    let mut tail = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let n = client.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "baton closed after {body} body bytes, before the end of the response"
            );
            body += count_x(&buf[..n]);
            tail.extend_from_slice(&buf[..n]);
            tail.drain(..tail.len().saturating_sub(8));
            if tail.ends_with(b"\r\n0\r\n\r\n") {
                break;
            }
        }
    })
    .await
    .expect("the rest of the response within 60 s");
    assert_eq!(body, SIZE, "body bytes received");
}

/// The `x` bytes of a chunked body (the framing is hex digits, CR and LF: no `x`).
fn count_x(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'x').count()
}

/// An HTTP/2-only upstream behind a cluster that says (by default) `http1`: the client gets a 502 on the HTTP/1
/// engine's path and on hyper's, and each listener logs a warning that names the cause and the fix (`protocol:
/// h2c`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_only_upstream_of_an_http1_cluster_is_named_in_the_warning() {
    let (upstream, _, _) = goaway_upstream(u64::MAX).await;
    let dir = TestDir::new();
    let first = start_first(&dir, 2, |listeners, admin, uds| {
        Config::default()
            .listener("engine", listeners[0], "http", "app")
            .listener("hyper", listeners[1], "http", "app")
            .cluster("app", &[upstream])
            .admin(admin)
            .uds_dir(uds)
            .to_yaml()
    })
    .await;
    let (baton, listen, hyper_listen) = (first.baton, first.listeners[0], first.listeners[1]);
    // The engine's path (a plain GET) on one listener, hyper's (a field named in `Connection` sends it there) on
    // the other: each listener has its own warnings.
    let plain = http_get(listen, "/x").await.expect("an answer");
    assert_eq!(plain.status, 502, "{plain:?}");
    let mut s = TcpStream::connect(hyper_listen).await.unwrap();
    s.write_all(format!("GET /y HTTP/1.1\r\nHost: {hyper_listen}\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = vec![0u8; 256];
    let n = s.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    for listener in ["engine", "hyper"] {
        let warned = wait_until(Duration::from_secs(5), || {
            let log = baton.stderr();
            async move {
                log.lines().any(|l| {
                    l.contains("not HTTP/1.x")
                        && l.contains("set the cluster's protocol: h2c")
                        && l.contains(&format!("listener={listener}"))
                })
            }
        })
        .await;
        assert!(warned, "no warning of listener {listener}:\n{}", baton.stderr());
    }
}
