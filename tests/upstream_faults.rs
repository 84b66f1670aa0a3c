//! An upstream that is down, slow, or resets: clear 502/504 answers, the right counters, and the proxy keeps
//! serving.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that accepts, reads the request head, and resets the connection (SO_LINGER 0).
async fn resetting_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            // SO_LINGER 0: close sends RST (zero linger does not block, unlike a positive one).
            if let Ok(std) = s.into_std() {
                let _ = socket2::SockRef::from(&std).set_linger(Some(Duration::ZERO));
            }
        }
    });
    addr
}

/// An upstream that accepts and never answers.
async fn silent_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

async fn raw_get(addr: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to baton");
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("baton answers in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_slow_and_resetting_upstreams_get_clear_answers() {
    let dir = TestDir::new();
    let good = HttpUpstream::start().await;
    let down = free_addr(); // nothing listens there
    let (slow, _slow_task) = silent_upstream().await;
    let reset = resetting_upstream().await;
    let (l_good, l_down, l_slow, l_reset, admin) = (free_addr(), free_addr(), free_addr(), free_addr(), free_addr());
    let mut cfg = Config::default()
        .listener("good", l_good, "http", "good")
        .listener("down", l_down, "http", "down")
        .listener("slow", l_slow, "http", "slow")
        .listener("reset", l_reset, "http", "reset")
        .cluster("good", &[good.addr])
        .cluster("down", &[down])
        .cluster("slow", &[slow])
        .cluster("reset", &[reset])
        .admin(admin)
        .uds_dir(&dir.subdir("uds"));
    for c in &mut cfg.clusters {
        c.request_timeout = Some("500ms".into());
    }
    let path = cfg.write_yaml(&dir, "baton.yaml");
    let p = path.display().to_string();
    let mut b = Baton::spawn(&dir, "baton", &["run", "--config", &p], &Env::fresh());
    b.wait_ready(admin, Duration::from_secs(10)).await;

    let (code, body) = raw_get(l_down).await;
    assert_eq!((code, body.as_str()), (502, "baton: upstream connect failed\n"));
    let (code, body) = raw_get(l_slow).await;
    assert_eq!((code, body.as_str()), (504, "baton: upstream timed out\n"));
    let (code, body) = raw_get(l_reset).await;
    assert_eq!((code, body.as_str()), (502, "baton: upstream request failed\n"));
    // The proxy is unharmed.
    for _ in 0..5 {
        proxy_ok(l_good).await.expect("the good listener still serves");
    }

    let settled = wait_until(Duration::from_secs(5), || async {
        let m = metrics(admin).await;
        ["good", "down", "slow", "reset"]
            .iter()
            .all(|l| sample(&m, &format!("baton_connections_active{{listener=\"{l}\"}}")) == 0.0)
    })
    .await;
    assert!(settled, "connections are counted as closed");
    let m = metrics(admin).await;
    assert_eq!(
        sample(&m, "baton_upstream_connect_errors_total{listener=\"down\"}"),
        1.0
    );
    assert_eq!(sample(&m, "baton_upstream_timeouts_total{listener=\"slow\"}"), 1.0);
    for l in ["down", "slow", "reset"] {
        assert_eq!(
            sample(
                &m,
                &format!("baton_requests_total{{listener=\"{l}\",protocol=\"http\",class=\"5xx\"}}")
            ),
            1.0,
            "{l}"
        );
        assert_eq!(
            sample(&m, &format!("baton_connections_total{{listener=\"{l}\"}}")),
            1.0,
            "{l}"
        );
    }
    assert_eq!(
        sample(
            &m,
            "baton_requests_total{listener=\"good\",protocol=\"http\",class=\"2xx\"}"
        ),
        5.0
    );
    b.sigterm();
    assert_eq!(b.expect_exit(Duration::from_secs(5)).await.0, Some(0));
}

/// An upstream that answers every request with `answer` (as soon as it read some of it), then nothing more.
async fn answering_upstream(answer: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                if !matches!(s.read(&mut buf).await, Ok(1..)) {
                    return;
                }
                let _ = s.write_all(answer).await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

/// An HTTP/2-only upstream as a raw server writes it, once it has read the request: its server preface (a SETTINGS
/// frame, MAX_CONCURRENT_STREAMS 100) and a GOAWAY (last stream 0, PROTOCOL_ERROR).
const HTTP2_PREFACE: &[u8] = &[
    0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100, //
    0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];

/// Upstreams that answer in another protocol to a cluster that says (by default) `http1`: an HTTP/2-only server
/// (on the engine's path, a plain GET, and on hyper's, an HTTP/1.0 GET) and an SSH server's banner (the engine's
/// path). Each request gets a 502, and each listener logs, at the default log level, one warning (rate-limited like
/// the other upstream failures) that says so and names the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_speaks_another_protocol_is_named_in_a_warning() {
    let dir = TestDir::new();
    let h2only = answering_upstream(HTTP2_PREFACE).await;
    let ssh = answering_upstream(b"SSH-2.0-OpenSSH_9.2p1\r\n").await;
    let (engine, hyper_path, banner, admin) = (free_addr(), free_addr(), free_addr(), free_addr());
    let path = Config::default()
        .listener("engine", engine, "http", "h2only")
        .listener("hyper", hyper_path, "http", "h2only")
        .listener("banner", banner, "http", "ssh")
        .cluster("h2only", &[h2only])
        .cluster("ssh", &[ssh])
        .admin(admin)
        .uds_dir(&dir.subdir("uds"))
        .write_yaml(&dir, "baton.yaml");
    let p = path.display().to_string();
    // The default log level: no --log-level, no RUST_LOG or BATON_LOG_LEVEL.
    let mut b = Baton::spawn(&dir, "baton", &["run", "--config", &p], &Env::fresh());
    b.wait_ready(admin, Duration::from_secs(10)).await;

    for _ in 0..3 {
        let (code, body) = raw_get(engine).await;
        assert_eq!((code, body.as_str()), (502, "baton: upstream request failed\n"));
        let (code, body) = raw_get(banner).await;
        assert_eq!((code, body.as_str()), (502, "baton: upstream request failed\n"));
        let mut s = TcpStream::connect(hyper_path).await.expect("connect to baton");
        s.write_all(b"GET /x HTTP/1.0\r\nHost: t\r\n\r\n").await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("baton answers in time")
            .expect("read");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.0 502"), "{text}");
    }
    const SAYS: &str = "upstream answered with something that is not HTTP/1.x (an HTTP/2-only server? set the \
                        cluster's protocol: h2c)";
    for listener in ["engine", "hyper", "banner"] {
        let warned = wait_until(Duration::from_secs(5), || {
            let log = b.stderr();
            async move {
                warn_lines(&log, SAYS)
                    .iter()
                    .any(|l| l.contains(&format!("listener={listener}")))
            }
        })
        .await;
        assert!(warned, "no such warning of listener {listener}:\n{}", b.stderr());
        let lines = warn_lines(&b.stderr(), &format!("listener={listener}"));
        assert_eq!(lines.len(), 1, "one warning per listener and cause: {lines:#?}");
    }
    b.sigterm();
    assert_eq!(b.expect_exit(Duration::from_secs(5)).await.0, Some(0));
}
