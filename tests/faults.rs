//! Faults during a handoff, each with real processes: a crash or hang of either side at a protocol step, a pod
//! restart with no live peer, two new instances racing for one uds dir, an unusable uds dir, and too few fds.
//! In every case the instance that serves keeps serving, and what happened is said clearly.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

const R2: &str = "7340032";
const R3: &str = "7340571";

/// Starts a fresh old instance with optional extra env (a failpoint) and waits until it serves.
async fn start_old(s: &Setup, extra: Option<(&str, &str)>) -> Baton {
    let mut env = Env::versions("1", "0");
    if let Some((k, v)) = extra {
        env = env.with(k, v);
    }
    let mut old = s.spawn_run("old", &env);
    old.wait_ready(s.admin, Duration::from_secs(10)).await;
    old
}

async fn served_by(s: &Setup, pid: u32) -> bool {
    status_pid(s.admin).await == Some(pid as u64)
}

/// The new instance dies right after READY, before the old commits: the old never stopped accepting, `migrate`
/// fails naming the phase, and the next attempt succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_crash_after_ready_leaves_old_serving() {
    let s = Setup::new("10s", "2s").await;
    let mut old = start_old(&s, None).await;
    let env = Env::versions(R2, "1");
    let crash_env = env.clone().with("BATON_FAILPOINT", "after-ready");
    let mut crashing = s.spawn_run("new-crashing", &crash_env);
    let out = s.migrate("migrate-1", &crash_env, "5s", Duration::from_secs(10)).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("went away") || out.stderr.contains("exited"),
        "migrate says what happened: {}",
        out.stderr
    );
    assert_eq!(crashing.expect_exit(Duration::from_secs(5)).await.0, Some(86));
    old.assert_running();
    assert!(served_by(&s, old.pid()).await, "the old instance serves the admin port");
    for _ in 0..20 {
        proxy_ok(s.http).await.expect("the old serves after the failed handoff");
    }

    let mut new = s.spawn_run("new", &env);
    let out = s.migrate("migrate-2", &env, "10s", Duration::from_secs(15)).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(old.expect_handed_over(Duration::from_secs(6)).await.0, Some(0));
    assert!(served_by(&s, new.pid()).await);
    proxy_ok(s.http).await.expect("the new serves");
    new.sigterm();
    assert_eq!(new.expect_exit(Duration::from_secs(5)).await.0, Some(0));
}

/// The old instance dies after HELLO, before sending anything: the new finds nobody holding the uds dir and
/// binds fresh; `migrate` reports that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_crash_after_hello_new_binds_fresh() {
    let s = Setup::new("10s", "2s").await;
    let mut old = start_old(&s, Some(("BATON_FAILPOINT", "old-after-hello"))).await;
    let env = Env::versions(R2, "1");
    let mut new = s.spawn_run("new", &env);
    let out = s.migrate("migrate", &env, "10s", Duration::from_secs(15)).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("fresh") && out.stdout.contains("went away"),
        "{}",
        out.stdout
    );
    assert_eq!(old.expect_exit(Duration::from_secs(5)).await.0, Some(86));
    assert!(served_by(&s, new.pid()).await);
    let st = status(s.admin).await.expect("status");
    assert_eq!(st["generation"].as_u64(), Some(1), "bound fresh: {st}");
    proxy_ok(s.http).await.expect("the new serves");
    tcp_echo_once(s.tcp, b"x\n").await.expect("tcp through the new");
    new.sigterm();
    assert_eq!(new.expect_exit(Duration::from_secs(5)).await.0, Some(0));
}

/// An old instance (under HTTP load: 2 keep-alive and `newconn` new-connection clients) that goes silent at
/// `failpoint` after sending its listeners; a new instance takes over and `migrate` reports success with the
/// warning that the commit was not confirmed.
async fn takeover_from_silent_old(
    handoff_timeout: &str,
    failpoint: &str,
    newconn: usize,
) -> (Setup, Baton, Load, Baton, Outcome) {
    let s = Setup::new(handoff_timeout, "2s").await;
    let old = start_old(&s, Some(("BATON_FAILPOINT", failpoint))).await;
    let load = Load::start(s.http, 2, newconn, None, 0);
    assert!(load.wait_progress(10, Duration::from_secs(5)).await);
    let env = Env::versions(R2, "1");
    let new = s.spawn_run("new", &env);
    let out = s.migrate("migrate", &env, "10s", Duration::from_secs(15)).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("did not confirm"), "{}", out.stdout);
    (s, old, load, new, out)
}

/// The old instance dies after sending its listeners: the new holds the very same sockets, so it serves on
/// (connections queued in them are not lost with the old process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_crash_after_fds_new_serves_the_same_sockets() {
    let (s, mut old, load, mut new, _) = takeover_from_silent_old("10s", "old-after-fds", 0).await;
    assert_eq!(old.expect_exit(Duration::from_secs(5)).await.0, Some(86));
    assert!(served_by(&s, new.pid()).await);
    let st = status(s.admin).await.expect("status");
    assert_eq!(st["generation"].as_u64(), Some(2), "took over: {st}");
    let before = load.stop().await;
    eprintln!("{before}");
    // Requests in flight on the crashed process die with it; that is the crash, not the handoff. New ones work.
    for _ in 0..20 {
        proxy_ok(s.http).await.expect("the new serves the inherited sockets");
    }
    new.sigterm();
    assert_eq!(new.expect_exit(Duration::from_secs(5)).await.0, Some(0));
}

/// The old instance hangs after sending its listeners: the new waits for COMMIT until the handoff timeout,
/// then serves anyway; traffic never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_hang_after_fds_new_serves_after_the_timeout() {
    let (s, mut old, load, mut new, out) = takeover_from_silent_old("2s", "old-hang-after-fds", 1).await;
    assert!(
        out.elapsed >= Duration::from_millis(1500),
        "waited for the timeout: {:?}",
        out.elapsed
    );
    old.assert_running();
    assert!(load.wait_progress(20, Duration::from_secs(5)).await);
    let report = load.stop().await;
    eprintln!("{report}");
    assert_eq!(
        report.failures(),
        0,
        "both processes shared the sockets; nothing may fail:\n{report}"
    );
    // kubelet kills the hung old at the end of the grace period (its own connections die with it); the new
    // serves alone.
    old.kill();
    for _ in 0..20 {
        proxy_ok(s.http).await.expect("the new serves after the old was killed");
    }
    assert!(served_by(&s, new.pid()).await);
    new.sigterm();
    assert_eq!(new.expect_exit(Duration::from_secs(5)).await.0, Some(0));
}

/// Pod restart: every slot starts with ALT != 0 and no live peer exists. The working slot binds fresh at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_restart_binds_fresh_within_a_second() {
    let s = Setup::new("30s", "2s").await;
    let t0 = Instant::now();
    let mut working = s.spawn_run("working", &Env::versions(R3, R2));
    let mut idle = s.spawn_run("idle", &Env::versions(R2, R3));
    let ready = wait_until(Duration::from_secs(5), || async {
        ready_code(s.admin).await.ok() == Some(200)
    })
    .await;
    let took = t0.elapsed();
    assert!(ready, "the working slot never became ready");
    assert!(
        took < Duration::from_secs(1),
        "bound fresh after {took:?}, not within 1 s"
    );
    assert!(served_by(&s, working.pid()).await);
    idle.assert_running();
    for b in [&mut working, &mut idle] {
        b.sigterm();
        assert_eq!(b.expect_exit(Duration::from_secs(5)).await.0, Some(0));
    }
}

/// Two new instances race for one uds dir: the second is refused with a clear error and does not unlink the
/// first one's socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_new_instances_racing_for_one_uds_dir() {
    let s = Setup::new("10s", "2s").await;
    let env = Env::versions(R2, "1");
    // No old: the first binds fresh, then keeps reconfig.sock open for its postStart hook, which has not run.
    let mut first = s.spawn_run("first", &env);
    first.wait_ready(s.admin, Duration::from_secs(10)).await;
    let sock = s.uds_dir.join("reconfig.sock");
    assert!(sock.exists(), "the first instance owns reconfig.sock");
    let mut second = s.spawn_run("second", &env);
    let (code, _) = second.expect_exit(Duration::from_secs(5)).await;
    assert_eq!(code, Some(1));
    assert!(second.stderr().contains("racing"), "{}", second.stderr());
    assert!(sock.exists(), "the loser must not unlink the owner's socket");
    let out = s.migrate("migrate", &env, "5s", Duration::from_secs(10)).await;
    assert_eq!(
        out.code,
        Some(0),
        "the first instance still answers its hook: {}",
        out.stderr
    );
    first.sigterm();
    assert_eq!(first.expect_exit(Duration::from_secs(5)).await.0, Some(0));
}

/// A uds dir that cannot be used (here: the path is a regular file). A takeover fails clearly; a fresh instance
/// serves anyway and says it cannot hand over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_uds_dir_is_a_clear_error() {
    let s = Setup::new("5s", "2s").await;
    let file = s.dir.write("not-a-dir", "");
    let (c, f) = (s.config_str(), file.display().to_string());
    let args = ["run", "--config", &c, "--uds-dir", &f];
    let env = Env::versions(R2, "1");
    let mut takeover = Baton::spawn(&s.dir, "takeover", &args, &env);
    let (code, _) = takeover.expect_exit(Duration::from_secs(5)).await;
    assert_eq!(code, Some(1));
    assert!(
        takeover.stderr().contains("not a directory") && takeover.stderr().contains(&f),
        "{}",
        takeover.stderr()
    );
    let out = run_baton_async(
        &s.dir,
        "migrate",
        &["migrate", "--uds-dir", &f, "--timeout", "2s"],
        &env,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    let mut fresh = Baton::spawn(&s.dir, "fresh", &args, &Env::fresh());
    fresh.wait_ready(s.admin, Duration::from_secs(10)).await;
    proxy_ok(s.http)
        .await
        .expect("a fresh instance serves without a uds dir");
    assert!(fresh.stderr().contains("cannot hand over"), "{}", fresh.stderr());
    fresh.sigterm();
    assert_eq!(fresh.expect_exit(Duration::from_secs(5)).await.0, Some(0));
}

/// The new instance runs out of fds while receiving the listeners: the handoff fails cleanly before READY and
/// the old keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_limit_on_the_new_instance_leaves_old_serving() {
    let s = Setup::new("10s", "2s").await;
    let mut old = start_old(&s, None).await;
    let load = Load::start(s.http, 2, 1, None, 0);
    assert!(load.wait_progress(10, Duration::from_secs(5)).await);
    let env = Env::versions(R2, "1");
    let (c, u) = (s.config_str(), s.uds_str());
    // Enough to start and open the reconfig socket, too few to receive three listeners and run.
    let mut new = Baton::spawn_with_nofile(&s.dir, "new", &["run", "--config", &c, "--uds-dir", &u], &env, 14);
    let out = s.migrate("migrate", &env, "5s", Duration::from_secs(10)).await;
    assert_eq!(out.code, Some(1), "migrate: {}\nnew:\n{}", out.stdout, new.stderr());
    let (code, _) = new.expect_exit(Duration::from_secs(5)).await;
    assert_ne!(code, Some(0), "the starved instance must not claim success");
    old.assert_running();
    assert!(served_by(&s, old.pid()).await);
    assert!(load.wait_progress(20, Duration::from_secs(5)).await);
    let report = load.stop().await;
    assert_eq!(report.failures(), 0, "{report}");
}
