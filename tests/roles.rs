//! The role a `baton` process takes at start from SIDECARSET_VERSION / SIDECARSET_VERSION_ALT.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

/// Starts `baton run` with `env` and checks it serves fresh: ready, /status role fresh, generation 1, listeners
/// bound, traffic flows; then SIGTERM → exit 0.
async fn assert_fresh(env: Env) {
    let s = Setup::new("10s", "2s").await;
    let mut b = s.spawn_run("fresh", &env);
    b.wait_ready(s.admin, Duration::from_secs(10)).await;
    let st = status(s.admin).await.expect("GET /status");
    assert_eq!(st["pid"].as_u64(), Some(b.pid() as u64), "{st}");
    assert_eq!(st["role"].as_str(), Some("fresh"), "{st}");
    assert_eq!(st["phase"].as_str(), Some("serving"), "{st}");
    assert_eq!(st["generation"].as_u64(), Some(1), "{st}");
    assert_listeners(&st, &s, "bound");
    proxy_ok(s.http).await.expect("http through the proxy");
    tcp_echo_once(s.tcp, b"ping\n").await.expect("tcp through the proxy");

    b.sigterm();
    let (code, _) = b.expect_exit(Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "exit code after SIGTERM");
}

/// Starts `baton run` with `env` and checks it idles: binds nothing, exits 0 promptly on SIGTERM; and that
/// `baton migrate` with the same env exits 0 at once.
async fn assert_idle(env: Env) {
    let s = Setup::new("10s", "2s").await;
    let mut b = s.spawn_run("idle", &env);

    // An idle instance shows itself only in the uds dir (for `baton status`); then give it time to (wrongly) bind.
    assert!(
        wait_phase_published(&s.uds_dir, "idle", Duration::from_secs(10)).await,
        "the idle instance never published its phase"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.assert_running();
    // Asked of the process itself, not of the ports: a port check could meet another test's socket.
    assert_eq!(
        listening_tcp_sockets(b.pid()),
        0,
        "an idle instance must not listen on any TCP port"
    );

    let out = s.migrate("idle-migrate", &env, "15s", Duration::from_secs(10)).await;
    assert_eq!(
        out.code,
        Some(0),
        "migrate in an idle slot should exit 0; stderr:\n{}",
        out.stderr
    );
    assert!(
        out.elapsed < Duration::from_secs(2),
        "migrate in an idle slot should exit at once, took {:?}",
        out.elapsed
    );

    b.assert_running();
    b.sigterm();
    let t = std::time::Instant::now();
    let (code, _) = b.expect_exit(Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "idle exit code after SIGTERM");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "idle should exit promptly on SIGTERM, took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_with_version_1_alt_0() {
    assert_fresh(Env::versions("1", "0")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_with_both_unset() {
    assert_fresh(Env::unset()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_with_alt_unset() {
    assert_fresh(Env {
        version: Some(R2.into()),
        alt: None,
        extra: vec![],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_with_version_0() {
    assert_idle(Env::versions("0", "1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_when_version_below_alt() {
    assert_idle(Env::versions("1", R2)).await;
}

/// T1 in the Kruise table: slot 1 restarted while slot 2 (newer) serves sees (1, R2) and must idle, leaving the
/// newer peer alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_next_to_a_newer_live_peer_leaves_it_alone() {
    let s = Setup::new("10s", "2s").await;
    let mut peer = s.spawn_run("peer", &Env::fresh());
    peer.wait_ready(s.admin, Duration::from_secs(10)).await;

    let env = Env::versions("1", R2);
    let mut idle = s.spawn_run("idle", &env);
    let out = s.migrate("idle-migrate", &env, "15s", Duration::from_secs(10)).await;
    assert_eq!(
        out.code,
        Some(0),
        "migrate in an idle slot should exit 0; stderr:\n{}",
        out.stderr
    );
    assert!(
        out.elapsed < Duration::from_secs(2),
        "migrate in an idle slot should exit at once, took {:?}",
        out.elapsed
    );

    idle.assert_running();
    assert!(
        wait_phase_published(&s.uds_dir, "idle", Duration::from_secs(10)).await,
        "the idle instance never published its phase"
    );
    let st = status(s.admin).await.expect("GET /status");
    assert_eq!(
        st["pid"].as_u64(),
        Some(peer.pid() as u64),
        "the peer must keep serving: {st}"
    );
    assert_eq!(st["phase"].as_str(), Some("serving"), "{st}");
    assert_eq!(st["generation"].as_u64(), Some(1), "{st}");
    proxy_ok(s.http).await.expect("http through the peer");

    idle.sigterm();
    let (code, _) = idle.expect_exit(Duration::from_secs(2)).await;
    assert_eq!(code, Some(0));
    peer.assert_running();
    assert_eq!(status_pid(s.admin).await, Some(peer.pid() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_numeric_version_is_exit_2() {
    let s = Setup::new("10s", "2s").await;
    for (sub, env) in [
        ("run", Env::versions("abc", "0")),
        ("migrate", Env::versions("v2", "1")),
    ] {
        let out = if sub == "run" {
            let mut b = s.spawn_run("bad-version-run", &env);
            let (code, elapsed) = b.expect_exit(Duration::from_secs(5)).await;
            Outcome {
                code,
                stdout: b.stdout(),
                stderr: b.stderr(),
                elapsed,
            }
        } else {
            s.migrate("bad-version-migrate", &env, "5s", Duration::from_secs(5))
                .await
        };
        assert_eq!(
            out.code,
            Some(2),
            "baton {sub} with SIDECARSET_VERSION={:?}; stderr:\n{}",
            env.version,
            out.stderr
        );
        assert!(
            out.stderr.contains("SIDECARSET_VERSION"),
            "baton {sub}: the error should name SIDECARSET_VERSION; stderr:\n{}",
            out.stderr
        );
    }
    assert!(
        connect_refused(s.http).await,
        "nothing may be bound after a bad VERSION"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_numeric_version_alt_is_exit_2() {
    let s = Setup::new("10s", "2s").await;
    let mut b = s.spawn_run("bad-alt", &Env::versions("1", "-3"));
    let (code, _) = b.expect_exit(Duration::from_secs(5)).await;
    assert_eq!(code, Some(2), "stderr:\n{}", b.stderr());
    assert!(
        b.stderr().contains("SIDECARSET_VERSION_ALT"),
        "the error should name SIDECARSET_VERSION_ALT:\n{}",
        b.stderr()
    );
}
