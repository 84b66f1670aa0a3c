//! Upstream connections: idle pooled connections expire after `clusters[].pool_idle_timeout`.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

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

