//! A warm start: the old instance hands its idle upstream connections (the HTTP/1 engine's pool) to the new one
//! with the client connections, so an upgrade does not open one upstream connection per client at the same
//! instant; a connect that fails is tried once more (on the next endpoint when there are several); idle pooled
//! connections expire after `clusters[].pool_idle_timeout`.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 200;
const UPGRADES: u64 = 20;
/// The upstream's accept queue: far below the number of clients, as for a busy upstream.
const BACKLOG: i32 = 16;

fn one_listener(upstream: SocketAddr) -> impl Fn(&[SocketAddr], SocketAddr, &Path) -> String {
    move |listeners, admin, uds| {
        format!(
            "listeners:\n  - {{name: web, address: \"{}\", cluster: app}}\n\
             clusters:\n  - {{name: app, endpoints: [\"{upstream}\"]}}\n\
             admin: {{address: \"{admin}\"}}\n\
             handoff: {{uds_dir: \"{}\", timeout: 10s, drain_timeout: 20s}}\n",
            listeners[0],
            uds.display()
        )
    }
}

/// 200 keep-alive clients in a loop through 20 upgrades, against an upstream whose accept queue holds 16: no request
/// fails, and the upstream does not see a new connection per client at each upgrade (without the warm start, each
/// new instance opened about one per client; with it, the connections move along with the clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_start_through_20_upgrades() {
    let dir = TestDir::new();
    let upstream = CountingUpstream::start(BACKLOG).await;
    let first = start_first(&dir, 1, one_listener(upstream.addr)).await;
    let mut serving = first.baton;
    let load = Load::start(first.listeners[0], CLIENTS, 0, None, 0);
    assert!(
        load.wait_progress(3, Duration::from_secs(30)).await,
        "no progress before the first upgrade; upstream accepted {}",
        upstream.accepted()
    );
    // The cold start before: 200 clients at once against a listen backlog of 16, with nothing to warm it.
    let (warm, cold_failures) = (upstream.accepted(), load.failures());
    let mut per_upgrade = Vec::new();
    for g in 2..=UPGRADES + 1 {
        let before = upstream.accepted();
        let mut next = take_over(&dir, &first.config, &first.uds, &format!("gen-{g}"), &takeover_env(g)).await;
        expect_old_exits(
            &mut serving,
            OLD_EXIT,
            "its connections should have moved to the new instance",
        )
        .await;
        assert!(
            load.wait_progress(2, Duration::from_secs(20)).await,
            "clients stalled after the upgrade to generation {g}; failures so far {}",
            load.failures()
        );
        per_upgrade.push(upstream.accepted() - before);
        std::mem::swap(&mut serving, &mut next);
    }
    assert_serving(first.admin, serving.pid(), UPGRADES + 1).await;
    let report = load.stop().await;
    let total = upstream.accepted();
    eprintln!(
        "upstream connections: {warm} before the first upgrade, {total} in all; per upgrade: {per_upgrade:?}; \
         {} requests ok, {cold_failures} failed before the first upgrade",
        report.ok()
    );
    assert_eq!(
        report.failures() - cold_failures,
        0,
        "failed requests across {UPGRADES} upgrades:\n{report}"
    );
    // Without the warm start every upgrade opens about one connection per client (some 3,000 over the 20 upgrades);
    // with it, the connections of the first instance serve throughout, and a new one opens only when more clients
    // are busy at once than ever before (which the first instance's pool had not reached yet). Allow a quarter of
    // the clients over it all.
    assert!(
        total <= CLIENTS as u64 + CLIENTS as u64 / 4,
        "the upstream accepted {total} connections for {CLIENTS} clients ({warm} before the first upgrade, \
         {per_upgrade:?} at each upgrade); the idle upstream connections should have moved with the clients"
    );
}

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
    // One client connection each, one request after another: baton gives the upstream connection back to its pool
    // before it reads the client's next request.
    let mut client = KeepAlive::connect(short).await;
    for _ in 0..3 {
        client.get_ok().await;
    }
    assert_eq!(
        upstream.accepted(),
        1,
        "three requests in a row share one upstream connection"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.get_ok().await;
    assert_eq!(
        upstream.accepted(),
        2,
        "the connection idle for longer than pool_idle_timeout (1s) should have been dropped, a new one opened"
    );
    let mut client = KeepAlive::connect(none).await;
    for _ in 0..3 {
        client.get_ok().await;
    }
    assert_eq!(upstream.accepted(), 5, "pool_idle_timeout: 0s keeps no idle connection");
}

/// A keep-alive HTTP/1.1 client connection written by hand: nothing pools or reconnects behind the test's back.
struct KeepAlive(TcpStream);

impl KeepAlive {
    async fn connect(addr: SocketAddr) -> KeepAlive {
        KeepAlive(TcpStream::connect(addr).await.expect("connect"))
    }

    /// One GET, answered 200 `ok` (`HttpUpstream`'s answer, with a Content-Length) on this same connection.
    async fn get_ok(&mut self) {
        self.0
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"ok")) {
            let n = tokio::time::timeout(Duration::from_secs(5), self.0.read(&mut buf))
                .await
                .expect("a response within 5 s")
                .expect("read");
            assert!(n > 0, "closed before the response: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
}

/// A predecessor played by the test hands over idle upstream connections: only a TCP socket connected to an endpoint
/// of a cluster of that name is adopted (and then used: the upstream sees no new connection); one connected
/// elsewhere, one for an unknown cluster or endpoint, one that is not a socket, one with a malformed tag are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_from_a_predecessor_are_checked() {
    use baton_migrate::OutgoingConn;
    use std::os::fd::AsFd;

    let dir = TestDir::new();
    let upstream = CountingUpstream::start(128).await;
    let other = HttpUpstream::start().await;
    let PlayedHandover {
        mut new,
        sender: mut migration,
        addr,
        ..
    } = played_handover(&dir, upstream.addr, serde_json::json!({})).await;

    let to_upstream = std::net::TcpStream::connect(upstream.addr).expect("connect upstream");
    assert!(
        wait_until(Duration::from_secs(5), || async { upstream.accepted() == 1 }).await,
        "the upstream accepts our connection"
    );
    let to_other = std::net::TcpStream::connect(other.addr).expect("connect other");
    let (pipe_r, _pipe_w) = nix::unistd::pipe().expect("pipe");
    let endpoint = upstream.addr.to_string().into_bytes();
    let idle = |cluster: &str, fd, buffers: Vec<Vec<u8>>| OutgoingConn {
        kind: "upstream".into(),
        listener: cluster.into(),
        fds: vec![fd],
        buffers,
    };
    let batch = [
        idle("up", to_other.as_fd(), vec![endpoint.clone(), b"0".to_vec()]),
        idle("nope", to_upstream.as_fd(), vec![endpoint.clone(), b"0".to_vec()]),
        idle(
            "up",
            to_upstream.as_fd(),
            vec![other.addr.to_string().into_bytes(), b"0".to_vec()],
        ),
        idle("up", pipe_r.as_fd(), vec![endpoint.clone(), b"0".to_vec()]),
        idle("up", to_upstream.as_fd(), vec![b"nonsense".to_vec(), b"0".to_vec()]),
        idle("up", to_upstream.as_fd(), vec![endpoint.clone()]),
        idle("up", to_upstream.as_fd(), vec![endpoint.clone(), b"3600000".to_vec()]),
        idle("up", to_upstream.as_fd(), vec![endpoint, b"10".to_vec()]),
    ];
    let taken: Vec<bool> = migration
        .send(&batch)
        .await
        .expect("acknowledged")
        .into_iter()
        .map(|v| v == baton_migrate::ConnVerdict::Taken)
        .collect();
    assert_eq!(
        taken,
        [false, false, false, false, false, false, false, true],
        "only a TCP socket connected to the named endpoint of a known cluster, idle for less than \
         pool_idle_timeout, may be adopted"
    );
    migration.end(serde_json::json!({})).await.expect("end");
    drop(to_upstream); // ours; the new instance holds its own copy

    for _ in 0..3 {
        proxy_ok(addr).await.expect("the new instance serves the listener");
    }
    assert_eq!(
        upstream.accepted(),
        1,
        "the requests should have gone over the adopted idle connection"
    );
    new.assert_running();
}
