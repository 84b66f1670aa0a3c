//! Upstream connections: a connect that fails is tried once more (on the next endpoint when there are several);
//! idle pooled connections expire after `clusters[].pool_idle_timeout`.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw HTTP/1.1 request on a new connection (`Connection: close`): the status line of the answer.
async fn raw_status(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("answer within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or("").to_string()
}

/// Each cluster lists a refusing endpoint first: every request and TCP stream still succeeds, on the next endpoint
/// (round robin sends half of them to the refusing one first). Through the HTTP/1 engine (a GET), hyper's HTTP/1
/// client (a chunked POST), an h2c cluster, and the TCP relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_is_retried_on_the_next_endpoint() {
    let dir = TestDir::new();
    let http = HttpUpstream::start().await;
    let echo = EchoUpstream::start().await;
    let dead = free_addr();
    let first = start_first(&dir, 3, |l, admin, uds| {
        format!(
            "listeners:\n  - {{name: h1, address: \"{}\", cluster: h1}}\n  \
               - {{name: h2, address: \"{}\", cluster: h2}}\n  \
               - {{name: tcp, address: \"{}\", protocol: tcp, cluster: tcp}}\n\
             clusters:\n  - {{name: h1, endpoints: [\"{dead}\", \"{}\"]}}\n  \
               - {{name: h2, endpoints: [\"{dead}\", \"{}\"], protocol: h2c}}\n  \
               - {{name: tcp, endpoints: [\"{dead}\", \"{}\"]}}\n\
             admin: {{address: \"{admin}\"}}\n\
             handoff: {{uds_dir: \"{}\"}}\n",
            l[0],
            l[1],
            l[2],
            http.addr,
            http.addr,
            echo.addr,
            uds.display()
        )
    })
    .await;
    let (h1, h2, tcp) = (first.listeners[0], first.listeners[1], first.listeners[2]);
    let post = format!(
        "POST / HTTP/1.1\r\nHost: {h1}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    );
    let mut failed = Vec::new();
    // Four of each in a row (new client connections each time, so that no pool is what saves a request): round
    // robin sends every other one to the refusing endpoint first.
    for i in 0..4 {
        if let Err(e) = proxy_ok(h1).await {
            failed.push(format!("engine GET {i}: {e:#}"));
        }
    }
    for i in 0..4 {
        let status = raw_status(h1, &post).await;
        if !status.starts_with("HTTP/1.1 200") {
            failed.push(format!("hyper POST {i}: {status}"));
        }
    }
    for i in 0..4 {
        if let Err(e) = proxy_ok(h2).await {
            failed.push(format!("h2c GET {i}: {e:#}"));
        }
    }
    for i in 0..4 {
        if let Err(e) = tcp_echo_once(tcp, format!("round {i}\n").as_bytes()).await {
            failed.push(format!("tcp {i}: {e:#}"));
        }
    }
    assert!(
        failed.is_empty(),
        "failed with a refusing first endpoint: {failed:#?}\nbaton stderr:\n{}",
        first.baton.stderr()
    );
}

/// Requests one after another reuse one upstream connection; after `pool_idle_timeout` without a request it is
/// dropped and the next request opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_expire_after_pool_idle_timeout() {
    let dir = TestDir::new();
    let upstream = CountingUpstream::start(128).await;
    let first = start_first(&dir, 2, |l, admin, uds| {
        format!(
            "listeners:\n  - {{name: short, address: \"{}\", cluster: short}}\n  \
               - {{name: none, address: \"{}\", cluster: none}}\n\
             clusters:\n  - {{name: short, endpoints: [\"{}\"], pool_idle_timeout: 1s}}\n  \
               - {{name: none, endpoints: [\"{}\"], pool_idle_timeout: 0s}}\n\
             admin: {{address: \"{admin}\"}}\n\
             handoff: {{uds_dir: \"{}\"}}\n",
            l[0],
            l[1],
            upstream.addr,
            upstream.addr,
            uds.display()
        )
    })
    .await;
    let (short, none) = (first.listeners[0], first.listeners[1]);
    for _ in 0..3 {
        proxy_ok(short).await.expect("GET");
    }
    assert_eq!(
        upstream.accepted(),
        1,
        "three requests in a row share one upstream connection"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy_ok(short).await.expect("GET after the idle timeout");
    assert_eq!(
        upstream.accepted(),
        2,
        "the connection idle for longer than pool_idle_timeout (1s) should have been dropped, a new one opened"
    );
    for _ in 0..3 {
        proxy_ok(none).await.expect("GET");
    }
    assert_eq!(upstream.accepted(), 5, "pool_idle_timeout: 0s keeps no idle connection");
}

