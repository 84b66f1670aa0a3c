//! Hot-upgrade handoff between two real `baton` processes, as Kruise drives it (see the Kruise env table):
//! the new slot is started with VERSION > ALT and its postStart hook runs `baton migrate`; later kubelet SIGTERMs the
//! old slot.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One echo round trip on an open stream.
async fn echo_on(stream: &mut TcpStream, payload: &[u8]) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(3), async {
        stream.write_all(payload).await?;
        let mut buf = vec![0u8; payload.len()];
        stream.read_exact(&mut buf).await?;
        anyhow::ensure!(buf == payload, "echo mismatch: {:?}", String::from_utf8_lossy(&buf));
        Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("echo timed out"))?
}

const DRAIN: Duration = Duration::from_secs(3);
/// How long after SIGTERM (beyond the drain timeout) an old instance may take to exit.
const EXIT_MARGIN: Duration = Duration::from_secs(3);

/// Asserts the `/status` of the process serving the admin port is `pid` with the given generation and role,
/// serving, and that every listener has the given origin.
async fn assert_status(s: &Setup, pid: u32, generation: u64, role: &str, origin: &str) {
    let st = status(s.admin).await.expect("GET /status");
    assert_eq!(st["pid"].as_u64(), Some(pid as u64), "/status pid: {st}");
    assert_eq!(st["generation"].as_u64(), Some(generation), "/status generation: {st}");
    assert_eq!(st["role"].as_str(), Some(role), "/status role: {st}");
    assert_eq!(st["phase"].as_str(), Some("serving"), "/status phase: {st}");
    assert_listeners(&st, s, origin);
}

/// One hot upgrade from `old` to a new `baton run` with `env`: migrate exits 0, the admin port moves to the new,
/// SIGTERM makes the old exit 0 within drain + margin, the load keeps flowing through the new.
async fn upgrade(s: &Setup, load: &Load, old: &mut Baton, name: &str, env: &Env, generation: u64) -> Baton {
    // In flight across the handoff: an HTTP request the upstream answers after 1.5s, and an open TCP stream.
    let http = s.http;
    let slow = tokio::spawn(async move { proxy_ok_path(http, "/slow?sleep_ms=1500").await });
    let mut stream = TcpStream::connect(s.tcp).await.expect("connect tcp listener");
    echo_on(&mut stream, b"before the handoff\n")
        .await
        .expect("echo on the open stream before the handoff");

    let mut new = s.spawn_run(name, env);
    let out = s
        .migrate(&format!("{name}-migrate"), env, "15s", Duration::from_secs(20))
        .await;
    assert_eq!(
        out.code,
        Some(0),
        "baton migrate for {name} should exit 0; stderr:\n{}",
        out.stderr
    );
    new.assert_running();

    // The new process now owns the admin port (and every listener).
    let new_pid = new.pid() as u64;
    let moved = wait_until(Duration::from_secs(5), || async {
        status_pid(s.admin).await == Some(new_pid)
    })
    .await;
    assert!(
        moved,
        "after migrate, /status should be answered by {name} (pid {new_pid}); got {:?}",
        status(s.admin).await
    );

    // The old, draining, still relays the stream it had, and finishes the in-flight request.
    echo_on(&mut stream, b"after the handoff\n")
        .await
        .expect("echo on the open stream after the handoff");
    stream.shutdown().await.expect("close the open stream");
    let mut rest = Vec::new();
    let eof = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(matches!(eof, Ok(Ok(0))), "the open stream should end cleanly: {eof:?}");
    let slow = slow.await.expect("join the in-flight request");
    assert!(
        slow.is_ok(),
        "the request in flight across the handoff failed: {slow:?}"
    );

    // Traffic keeps flowing (now through the new process).
    assert!(
        load.wait_progress(20, Duration::from_secs(5)).await,
        "load made no progress after migrate"
    );

    // kubelet resets the old slot: SIGTERM, it drains and exits 0 in time.
    old.sigterm();
    let t = std::time::Instant::now();
    let code = old.wait_timeout(DRAIN + EXIT_MARGIN).await;
    assert!(
        code.is_some(),
        "{} did not exit within {:?} of SIGTERM",
        old.name,
        DRAIN + EXIT_MARGIN
    );
    assert_eq!(
        code.unwrap().code(),
        Some(0),
        "{} exit code (after {:?})",
        old.name,
        t.elapsed()
    );

    // Still flowing with the old gone.
    assert!(
        load.wait_progress(20, Duration::from_secs(5)).await,
        "load made no progress after the old exited"
    );
    new.assert_running();
    assert_eq!(ready_code(s.admin).await.expect("GET /ready"), 200);
    assert_status(s, new.pid(), generation, "takeover", "inherited").await;
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_upgrade_under_load_then_upgrade_back() {
    let s = Setup::new("10s", "3s").await;

    // T0: slot 1 starts fresh.
    let mut slot1 = s.spawn_run("slot1", &Env::fresh());
    slot1.wait_ready(s.admin, Duration::from_secs(10)).await;
    assert_status(&s, slot1.pid(), 1, "fresh", "bound").await;

    let load = Load::start(s.http, 2, 2, Some(s.tcp), 2);
    assert!(
        load.wait_progress(20, Duration::from_secs(5)).await,
        "load made no progress before the upgrade"
    );

    // T1: slot 2 restarted with v2: (R2, 1) takes over.
    let mut slot2 = upgrade(&s, &load, &mut slot1, "slot2", &Env::versions(R2, "1"), 2).await;

    // T3: slot 1 restarted with v3: (R3, R2) takes over from slot 2.
    let slot3 = upgrade(&s, &load, &mut slot2, "slot1-v3", &Env::versions(R3, R2), 3).await;

    let report = load.stop().await;
    eprintln!("{report}");
    assert!(report.ok_of(LoadKind::KeepAlive) > 0, "{report}");
    assert!(report.ok_of(LoadKind::NewConnection) > 0, "{report}");
    assert!(report.ok_of(LoadKind::TcpEcho) > 0, "{report}");
    assert_eq!(report.failures(), 0, "failed requests during the upgrades:\n{report}");
    drop(slot3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_killed_before_ready_leaves_old_serving_then_retry_succeeds() {
    crash_then_retry("before-ready").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_killed_after_hello_leaves_old_serving_then_retry_succeeds() {
    crash_then_retry("after-hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_killed_after_fds_leaves_old_serving_then_retry_succeeds() {
    crash_then_retry("after-fds").await;
}

/// The new instance (takeover env) crashes at handoff step `failpoint`: migrate fails (exit 1, one line), the old
/// keeps serving untouched with no failed request; then kubelet's restart of the new succeeds.
async fn crash_then_retry(failpoint: &str) {
    let s = Setup::new("10s", "3s").await;

    let mut old = s.spawn_run("old", &Env::fresh());
    old.wait_ready(s.admin, Duration::from_secs(10)).await;
    let load = Load::start(s.http, 2, 1, Some(s.tcp), 1);
    assert!(
        load.wait_progress(10, Duration::from_secs(5)).await,
        "load made no progress before the upgrade"
    );

    // The postStart hook runs in the same container: it sees the same env, failpoint included.
    let env = Env::versions(R2, "1");
    let crash_env = env.clone().with("BATON_FAILPOINT", failpoint);
    let mut crashing = s.spawn_run("new-crashing", &crash_env);
    // A short --timeout: whether migrate notices the crash at once or only at its deadline, it must fail.
    let out = s
        .migrate("new-crashing-migrate", &crash_env, "5s", Duration::from_secs(10))
        .await;
    eprintln!(
        "{failpoint}: failed migrate: exit {:?} after {:?}: {}",
        out.code,
        out.elapsed,
        out.stderr.trim()
    );
    assert_eq!(
        out.code,
        Some(1),
        "baton migrate should fail (exit 1) when the new dies at {failpoint}; stderr:\n{}",
        out.stderr
    );
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "migrate should print a one-line reason on stderr, got:\n{}",
        out.stderr
    );

    let (code, _) = crashing.expect_exit(Duration::from_secs(5)).await;
    assert_eq!(
        code,
        Some(86),
        "failpoint {failpoint} should make the new exit abruptly with code 86"
    );

    // The old is untouched and serving.
    old.assert_running();
    let st = status(s.admin).await.expect("GET /status after failed handoff");
    assert_eq!(
        st["pid"].as_u64(),
        Some(old.pid() as u64),
        "/status pid after failed handoff: {st}"
    );
    assert_eq!(
        st["phase"].as_str(),
        Some("serving"),
        "/status phase after failed handoff: {st}"
    );
    assert_eq!(ready_code(s.admin).await.expect("GET /ready"), 200);
    proxy_ok(s.http)
        .await
        .expect("request through the old after the failed handoff");
    tcp_echo_once(s.tcp, b"still there\n")
        .await
        .expect("tcp through the old after the failed handoff");
    assert!(
        load.wait_progress(20, Duration::from_secs(5)).await,
        "load made no progress after the failed handoff"
    );
    assert_eq!(load.failures(), 0, "no request may fail because of the failed handoff");

    // kubelet restarts the new container; this time it works.
    let new = upgrade(&s, &load, &mut old, "new-retry", &env, 2).await;

    let report = load.stop().await;
    eprintln!("{report}");
    assert!(report.ok() > 0, "{report}");
    assert_eq!(report.failures(), 0, "failed requests:\n{report}");
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_without_live_old_binds_fresh() {
    let s = Setup::new("10s", "3s").await;
    let env = Env::versions(R2, "1");

    let mut new = s.spawn_run("lonely", &env);
    new.wait_ready(s.admin, Duration::from_secs(2)).await;
    let out = s.migrate("lonely-migrate", &env, "15s", Duration::from_secs(10)).await;
    assert_eq!(
        out.code,
        Some(0),
        "migrate with no old to migrate from should exit 0; stderr:\n{}",
        out.stderr
    );

    let st = status(s.admin).await.expect("GET /status");
    assert_eq!(st["pid"].as_u64(), Some(new.pid() as u64), "{st}");
    assert_eq!(
        st["generation"].as_u64(),
        Some(1),
        "no takeover happened: generation 1: {st}"
    );
    assert_eq!(st["phase"].as_str(), Some("serving"), "{st}");
    assert_listeners(&st, &s, "bound");
    proxy_ok(s.http).await.expect("http through the proxy");
    tcp_echo_once(s.tcp, b"hello\n").await.expect("tcp through the proxy");

    new.sigterm();
    let (code, _) = new.expect_exit(DRAIN + EXIT_MARGIN).await;
    assert_eq!(code, Some(0));
}

/// After a crash or a pod restart the "old" peer named by the env may be dead, its socket file left behind: the
/// takeover instance must not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_after_old_was_killed_binds_fresh() {
    let s = Setup::new("10s", "3s").await;
    let mut old = s.spawn_run("old", &Env::fresh());
    old.wait_ready(s.admin, Duration::from_secs(10)).await;
    old.kill();
    assert!(connect_refused(s.http).await, "the killed old still listens");

    let env = Env::versions(R2, "1");
    let mut new = s.spawn_run("new", &env);
    new.wait_ready(s.admin, Duration::from_secs(2)).await;
    let out = s.migrate("new-migrate", &env, "15s", Duration::from_secs(10)).await;
    assert_eq!(
        out.code,
        Some(0),
        "migrate with only a dead old should exit 0; stderr:\n{}",
        out.stderr
    );

    let st = status(s.admin).await.expect("GET /status");
    assert_eq!(st["pid"].as_u64(), Some(new.pid() as u64), "{st}");
    assert_eq!(st["phase"].as_str(), Some("serving"), "{st}");
    assert_listeners(&st, &s, "bound");
    proxy_ok(s.http).await.expect("http through the proxy");
    tcp_echo_once(s.tcp, b"hello\n").await.expect("tcp through the proxy");
}
