//! The windows around a handoff where traffic used to be at risk:
//! - a stop signal while the old instance is inside a handoff aborts it at once (the successor is refused with
//!   the signal's name, `baton migrate` exits 1 saying so), and the drain starts;
//! - a successor killed right after the commit: the old instance, on probation, still holds the listening sockets
//!   and serves again, so no connection is refused;
//! - the new instance's receiving side of the connection handover is part of its drain: once stopping it refuses
//!   what arrives (the predecessor keeps it) and waits for the predecessor's end instead of exiting under it;
//! - a superseded instance under the Kruise env holds nothing and idles until SIGTERM; without the env it exits;
//! - a successor accepts nothing before the commit: until then the old instance serves every new connection, so
//!   a successor that dies or is refused before it takes no client with it.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_migrate::{ConnVerdict, OutgoingConn};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start_old(s: &Setup, env: &Env) -> Baton {
    let mut old = s.spawn_run("old", env);
    old.wait_ready(s.admin, Duration::from_secs(10)).await;
    old
}

/// A serving old instance, and a successor slowed by failpoint `delay-ready` (2 s before READY) with its postStart
/// hook (`baton migrate --timeout hook_timeout`): the old, the successor and the hook.
async fn slow_successor(s: &Setup, hook_timeout: &str) -> (Baton, Baton, Baton) {
    let old = start_old(s, &Env::versions("1", "0")).await;
    let env = Env::versions(R2, "1").with("BATON_FAILPOINT", "delay-ready");
    let new = s.spawn_run("new", &env);
    let hook = s.spawn_migrate("migrate", &env, hook_timeout);
    (old, new, hook)
}

/// SIGTERM reaches the old instance while its successor is slow to say READY (failpoint `delay-ready`: 2 s), with
/// the shipped 30 s handoff timeout: the old instance refuses the successor at once naming the signal, and drains
/// and exits well before the successor would have been ready; the successor exits 1 and so does its postStart
/// hook, saying why. Before, the signal waited for the handoff to end (up to the handoff timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_during_a_handoff_aborts_it_at_once() {
    let s = Setup::new("30s", "10s").await;
    let (mut old, mut new, mut hook) = slow_successor(&s, "20s").await;
    let inside = wait_until(Duration::from_secs(10), || async {
        old.stderr().contains("successor found on the uds dir")
    })
    .await;
    assert!(
        inside,
        "the old instance never started the handoff; stderr:\n{}",
        old.stderr()
    );
    old.sigterm();
    let signalled = Instant::now();
    let (code, _) = old.expect_exit(Duration::from_secs(10)).await;
    let exited_after = signalled.elapsed();
    assert_eq!(code, Some(0), "old: {}", old.stderr());
    eprintln!("the old instance exited {exited_after:?} after SIGTERM (the successor would have been ready after 2 s)");
    assert!(
        exited_after < Duration::from_millis(1500),
        "the old instance took {exited_after:?} to drain and exit after SIGTERM in a handoff; stderr:\n{}",
        old.stderr()
    );
    let log = old.stderr();
    assert!(log.contains("handoff aborted by a stop signal"), "{log}");
    assert_eq!(
        log.matches("successor found on the uds dir").count(),
        1,
        "no second attempt: {log}"
    );

    let (new_code, _) = new.expect_exit(Duration::from_secs(10)).await;
    assert_eq!(new_code, Some(1), "the refused successor exits 1: {}", new.stderr());
    let (hook_code, _) = hook.expect_exit(Duration::from_secs(25)).await;
    let said = format!("{}{}", hook.stdout(), hook.stderr());
    assert_eq!(hook_code, Some(1), "baton migrate: {said}");
    assert!(
        said.contains("SIGTERM") && said.contains("aborted"),
        "baton migrate names the abort: {said}"
    );
}

/// The successor holds the listening sockets for 2 s before READY (failpoint `delay-ready`): every connection
/// opened meanwhile goes to the old instance (`/status` on the shared admin port names its pid), never to the
/// successor, which could still die or be refused with it; after the commit the successor serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_accepts_nothing_before_the_commit() {
    let s = Setup::new("10s", "5s").await;
    let (mut old, mut new, mut hook) = slow_successor(&s, "10s").await;
    let holding = wait_until(Duration::from_secs(10), || async {
        new.stderr().contains("received listeners")
    })
    .await;
    assert!(
        holding,
        "the successor never received the listeners; stderr:\n{}",
        new.stderr()
    );
    // Well inside the 2 s before READY.
    let (mut to_old, mut to_new) = (0, 0);
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        match status_pid(s.admin).await {
            Some(pid) if pid == u64::from(old.pid()) => to_old += 1,
            Some(pid) if pid == u64::from(new.pid()) => to_new += 1,
            other => panic!("GET /status before the commit: {other:?}"),
        }
    }
    eprintln!("before the commit: {to_old} connections served by the old instance, {to_new} by the successor");
    assert!(to_old > 20, "too few requests to tell: {to_old}");
    assert_eq!(to_new, 0, "the successor accepted connections before the commit");
    assert!(
        !new.stderr().contains("handoff complete"),
        "the delay was over before the checks ended: {}",
        new.stderr()
    );

    let (hook_code, _) = hook.expect_exit(Duration::from_secs(15)).await;
    assert_eq!(hook_code, Some(0), "baton migrate: {}{}", hook.stdout(), hook.stderr());
    assert_eq!(old.expect_handed_over(Duration::from_secs(10)).await.0, Some(0));
    assert_eq!(status_pid(s.admin).await, Some(u64::from(new.pid())));
    proxy_ok(s.http).await.expect("the successor serves after the commit");
    new.sigterm();
    assert_eq!(new.expect_exit(Duration::from_secs(10)).await.0, Some(0));
}

/// Clients opening new connections at a high rate; the new instance is SIGKILLed the moment its postStart hook
/// reports the handoff complete. The old instance, on probation, kept its copies of the listening sockets: not
/// one connection is refused, it serves again (`/status` is its own, in phase `serving`), and a later upgrade
/// takes over from it normally. Before, it closed them at the commit and the port was closed until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_killed_after_the_commit_refuses_no_connection() {
    let s = Setup::new("10s", "5s").await;
    let config = s.cfg.clone().probation("5s").write_yaml(&s.dir, "baton.yaml");
    assert_eq!(config, s.config);
    let mut old = start_old(&s, &Env::versions("1", "0")).await;
    let churn = Churn::start(s.http, 4);
    assert!(
        churn.wait_ok(50, Duration::from_secs(10)).await,
        "no traffic before the upgrade"
    );

    let env = Env::versions(R2, "1");
    let mut new = s.spawn_run("new", &env);
    let out = s.migrate("migrate", &env, "10s", Duration::from_secs(15)).await;
    new.kill();
    let killed = Instant::now();
    assert_eq!(out.code, Some(0), "migrate: {}", out.stderr);
    assert!(new.expect_exit(Duration::from_secs(5)).await.0.is_none(), "killed");
    let before = churn.ok();
    assert!(
        churn.wait_ok(before + 200, Duration::from_secs(15)).await,
        "traffic did not go on after the successor died; {}",
        churn.report()
    );
    let after_kill = killed.elapsed();
    let report = churn.stop().await;
    eprintln!("{report} (through the successor's death and {after_kill:?} after it)");
    assert_eq!(
        report.refused, 0,
        "connections refused after the successor died: {report}"
    );
    assert!(
        old.stderr().contains("the successor died during the probation"),
        "the old instance logs why it serves again; stderr:\n{}",
        old.stderr()
    );
    let st = status(s.admin).await.expect("status");
    assert_eq!(st["pid"].as_u64(), Some(u64::from(old.pid())), "{st}");
    assert_eq!(st["phase"], "serving", "{st}");
    let counted = metrics(s.admin).await;
    assert!(
        counted.contains("baton_handoffs_total{side=\"old\",outcome=\"resumed\"} 1\n"),
        "the resumption is counted:\n{counted}"
    );

    // The restarted successor takes over as usual.
    let mut again = s.spawn_run("new-again", &env);
    let out = s.migrate("migrate-again", &env, "10s", Duration::from_secs(15)).await;
    assert_eq!(out.code, Some(0), "migrate: {}", out.stderr);
    assert_eq!(old.expect_handed_over(Duration::from_secs(20)).await.0, Some(0));
    proxy_ok(s.http).await.expect("the new instance serves");
    again.sigterm();
    assert_eq!(again.expect_exit(Duration::from_secs(10)).await.0, Some(0));
}

/// A predecessor (played by the test) hands over one live connection, then the new instance gets SIGTERM: a
/// connection offered after that is refused (the predecessor keeps it, its socket untouched), and the new
/// instance waits for the predecessor's end of the migration before it exits, instead of exiting under it. The
/// connection taken before the signal is served to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_successor_refuses_connections_and_waits_for_the_migration_end() {
    let dir = TestDir::new();
    let upstream = HttpUpstream::start().await;
    let PlayedHandover {
        mut new,
        sender: mut migration,
        ..
    } = played_handover(&dir, upstream.addr, serde_json::Value::Null).await;

    let side = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut taken_client = std::net::TcpStream::connect(side.local_addr().unwrap()).unwrap();
    let (taken, _) = side.accept().unwrap();
    let request = b"GET /one HTTP/1.1\r\nHost: test\r\n\r\n".to_vec();
    let verdicts = migration
        .send(&[conn(&taken, vec![request])])
        .await
        .expect("acknowledged");
    assert_eq!(verdicts, [ConnVerdict::Taken]);
    drop(taken);

    new.sigterm();
    // The new instance is stopping; it must neither exit nor take what comes now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    new.assert_running();
    let mut kept_client = std::net::TcpStream::connect(side.local_addr().unwrap()).unwrap();
    let (kept, _) = side.accept().unwrap();
    let verdicts = migration
        .send(&[conn(&kept, vec![])])
        .await
        .expect("a stopping successor still answers");
    assert_eq!(
        verdicts,
        [ConnVerdict::Refused],
        "a stopping successor takes nothing new"
    );
    // Ours still: the socket works.
    std::io::Write::write_all(&mut kept_client, b"x").unwrap();
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut &kept, &mut b).unwrap();
    assert_eq!(&b, b"x");

    // The connection taken before the signal was answered. Draining, the instance keeps it (an idle keep-alive
    // connection is not closed under its client) until the client leaves.
    taken_client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = read_head(&mut taken_client);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(taken_client);

    // With no connection left, it still waits for the predecessor's end of the migration.
    tokio::time::sleep(Duration::from_millis(300)).await;
    new.assert_running();
    migration.end(serde_json::Value::Null).await.expect("end");
    let (code, _) = new.expect_exit(Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "{}", new.stderr());
}

/// Reads a response head (up to its blank line).
fn read_head(s: &mut std::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(s, &mut b).expect("a response head");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn conn(s: &std::net::TcpStream, buffers: Vec<Vec<u8>>) -> OutgoingConn<'_> {
    OutgoingConn {
        kind: "http1".into(),
        listener: "ingress".into(),
        fds: vec![s.as_fd()],
        buffers: if buffers.is_empty() { vec![vec![]] } else { buffers },
    }
}

/// Under the Kruise env the old instance, once everything is handed over, holds no listening socket and idles as
/// `superseded` (in its instance file, in the new instance's `/status` and in `baton status`) until SIGTERM,
/// which it obeys at once with exit 0. Without the env (a plain two-process upgrade) it exits by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_instance_idles_under_kruise_and_exits_without() {
    let s = Setup::new("10s", "5s").await;
    let mut old = start_old(&s, &Env::versions("1", "0")).await;
    let env = Env::versions(R2, "1");
    let mut new = s.spawn_run("new", &env);
    let out = s.migrate("migrate", &env, "10s", Duration::from_secs(15)).await;
    assert_eq!(out.code, Some(0), "migrate: {}", out.stderr);
    assert!(
        wait_phase_published(&s.uds_dir, "superseded", Duration::from_secs(10)).await,
        "the old instance should publish phase superseded; stderr:\n{}",
        old.stderr()
    );
    old.assert_running();
    assert_eq!(
        listening_tcp_sockets(old.pid()),
        0,
        "a superseded instance holds no listening socket"
    );
    let st = status(s.admin).await.expect("status");
    assert_eq!(st["pid"].as_u64(), Some(u64::from(new.pid())), "{st}");
    let others = st["others"].as_array().cloned().unwrap_or_default();
    assert!(
        others
            .iter()
            .any(|o| o["phase"] == "superseded" && o["pid"].as_u64() == Some(u64::from(old.pid()))),
        "/status lists the superseded instance: {st}"
    );
    let listed = run_baton(
        &s.dir,
        "status",
        &["status", "--uds-dir", &s.uds_str()],
        &Env::unset(),
        Duration::from_secs(10),
    );
    assert!(listed.stdout.contains("superseded"), "baton status: {}", listed.stdout);
    old.sigterm();
    let t = Instant::now();
    assert_eq!(old.expect_exit(Duration::from_secs(5)).await.0, Some(0));
    eprintln!("the superseded instance exited {:?} after SIGTERM", t.elapsed());

    new.sigterm();
    assert_eq!(new.expect_exit(Duration::from_secs(10)).await.0, Some(0));

    // Plain two-process use: the old instance started without the Kruise env exits by itself.
    let s2 = Setup::new("10s", "5s").await;
    let mut unset = start_old(&s2, &Env::unset()).await;
    let mut next = s2.spawn_run("next", &Env::versions(R2, "1"));
    let out = s2
        .migrate("migrate", &Env::versions(R2, "1"), "10s", Duration::from_secs(15))
        .await;
    assert_eq!(out.code, Some(0), "migrate: {}", out.stderr);
    let (code, _) = unset.expect_exit(Duration::from_secs(10)).await;
    assert_eq!(
        code,
        Some(0),
        "without the Kruise env the old instance exits by itself: {}",
        unset.stderr()
    );
    assert!(!unset.stderr().contains(SUPERSEDED_LOG));
    next.sigterm();
    assert_eq!(next.expect_exit(Duration::from_secs(10)).await.0, Some(0));
}

/// Clients that each open a new connection per request (`Connection: close`), as fast as they can, counting what
/// happens to each.
struct Churn {
    stop: Arc<AtomicBool>,
    counts: Arc<ChurnCounts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct ChurnCounts {
    ok: AtomicU64,
    refused: AtomicU64,
    /// Connect errors other than a refusal, and connections that ended without a 200 (e.g. reset by the killed
    /// process that had accepted them).
    failed: AtomicU64,
}

/// What a [`Churn`] saw.
#[derive(Debug)]
struct ChurnReport {
    ok: u64,
    refused: u64,
    failed: u64,
}

impl std::fmt::Display for ChurnReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} new connections answered 200, {} refused, {} failed otherwise",
            self.ok, self.refused, self.failed
        )
    }
}

impl Churn {
    fn start(addr: SocketAddr, clients: usize) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(ChurnCounts::default());
        let tasks = (0..clients)
            .map(|_| {
                let (stop, counts) = (stop.clone(), counts.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = match tokio::net::TcpStream::connect(addr).await {
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => &counts.refused,
                            Err(_) => &counts.failed,
                            Ok(mut c) => match one_request(&mut c).await {
                                true => &counts.ok,
                                false => &counts.failed,
                            },
                        };
                        outcome.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Churn { stop, counts, tasks }
    }

    fn ok(&self) -> u64 {
        self.counts.ok.load(Ordering::Relaxed)
    }

    async fn wait_ok(&self, n: u64, within: Duration) -> bool {
        wait_until(within, || async { self.ok() >= n }).await
    }

    fn report(&self) -> ChurnReport {
        ChurnReport {
            ok: self.ok(),
            refused: self.counts.refused.load(Ordering::Relaxed),
            failed: self.counts.failed.load(Ordering::Relaxed),
        }
    }

    async fn stop(mut self) -> ChurnReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        self.report()
    }
}

async fn one_request(c: &mut tokio::net::TcpStream) -> bool {
    let exchange = async {
        c.write_all(b"GET / HTTP/1.1\r\nHost: churn\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).await?;
        std::io::Result::Ok(answer.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), exchange).await,
        Ok(Ok(true))
    )
}
