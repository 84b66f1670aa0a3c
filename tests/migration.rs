//! Connection migration at a hot upgrade ("zero client-visible errors"): besides its listening sockets, the old
//! instance hands its client connections to the new one. Idle HTTP/1.1 keep-alive connections move (fd passing)
//! with any bytes already read but not yet parsed; a connection with a request in flight finishes that response on
//! the old and moves at the response boundary; TCP relay streams move at a quiescent point with every byte intact;
//! h2c connections get a GOAWAY at commit. A connection belongs to the listener at its local address: a listener
//! renamed at the same address keeps its connections, one switched to another protocol refuses them (and says
//! why). The new instance's counters continue the old one's,
//! `handoff.inherit_config: true` makes the new serve the old's effective config, and the old exits as soon as
//! everything is handed over or drained. If the new instance dies while receiving connections (failpoint `conns-before-ack`),
//! the old resumes them.
//!
//! The HTTP/1.1 clients here are written by hand on raw TCP, so that nothing retries or reconnects silently: a
//! request is written once, and it either gets a complete response or counts as failed. A connection the server
//! closed while it was idle (seen by a non-blocking peek before the next request is written) is reopened and
//! counted as a reconnect, not as a failure.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt;
use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A request that has no complete response by then is a failure.
const IO_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between two requests of one load client.
const PACE: Duration = Duration::from_millis(2);

// ---------------------------------------------------------------------------------------------------------------
// upgrades
// ---------------------------------------------------------------------------------------------------------------

/// Attempts to start generation 1 (fresh role) with `config` and waits until it serves. `None` if it could not
/// bind: [`free_addr`] releases a port before baton binds it, and the many client connections of these tests take
/// their ephemeral local ports from the same range, so one may take a listener's port in between.
async fn try_first(dir: &TestDir, config: &Path, uds: &Path, admin: SocketAddr) -> Option<Baton> {
    let (c, u) = (config.display().to_string(), uds.display().to_string());
    let mut b = Baton::spawn(dir, "gen-1", &["run", "--config", &c, "--uds-dir", &u], &Env::fresh());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = b.try_status() {
            let stderr = b.stderr();
            if stderr.contains("Address already in use") {
                eprintln!(
                    "gen-1 lost a port race, starting over with other ports: {}",
                    stderr.trim()
                );
                return None;
            }
            panic!("gen-1 exited with {st} before serving; stderr:\n{stderr}");
        }
        if let Ok(200) = ready_code(admin).await {
            return Some(b);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gen-1 not ready on {admin} within 10 s; stderr:\n{}",
            b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A [`Setup`] (upstreams, ports, `baton.yaml`) and its generation 1, serving; set up again with new ports if
/// generation 1 lost a port race (see [`try_first`]).
async fn setup_serving(handoff_timeout: &str, drain_timeout: &str) -> (Setup, Baton) {
    for _ in 0..5 {
        let s = Setup::new(handoff_timeout, drain_timeout).await;
        if let Some(b) = try_first(&s.dir, &s.config, &s.uds_dir, s.admin).await {
            return (s, b);
        }
    }
    panic!("gen-1 could not bind its ports in 5 attempts");
}

/// Sends one request on each connection, which must still be open and answer 200 without `Connection: close`.
/// Returns what failed, one line per connection (`label i: why`).
async fn one_keepalive_request_each(conns: &mut [H1], label: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, c) in conns.iter_mut().enumerate() {
        let res = async {
            ensure!(!c.closed_while_idle()?, "closed by the server while idle");
            let r = c.get("/").await?;
            r.expect_ok()?;
            ensure!(!r.close, "answered with Connection: close");
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = res {
            failures.push(format!("{label} {i}: {e:#}"));
        }
    }
    failures
}

// ---------------------------------------------------------------------------------------------------------------
// a hand-written HTTP/1.1 client connection
// ---------------------------------------------------------------------------------------------------------------

/// One complete HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// `Connection: close` (or an HTTP/1.0 response without keep-alive, or a body delimited by the close).
    close: bool,
    body: Vec<u8>,
}

impl Reply {
    /// Ok if 200 `ok` (what [`HttpUpstream`] answers).
    fn expect_ok(&self) -> anyhow::Result<()> {
        ensure!(
            self.status == 200 && self.body == b"ok",
            "answered {} {:?}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        Ok(())
    }
}

/// An HTTP/1.1 client connection on raw TCP: each request is written exactly once; nothing is retried.
struct H1 {
    stream: TcpStream,
    /// Bytes read and not yet consumed by a response.
    buf: Vec<u8>,
    host: String,
    /// Bytes written to / read from the server on this connection.
    sent: u64,
    received: u64,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn request_bytes(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

impl H1 {
    async fn connect(addr: SocketAddr) -> anyhow::Result<H1> {
        let stream = tokio::time::timeout(IO_DEADLINE, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect {addr}: timed out"))?
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        Ok(H1 {
            stream,
            buf: Vec::new(),
            host: addr.to_string(),
            sent: 0,
            received: 0,
        })
    }

    /// Whether the server closed (FIN) or reset this connection while it was idle: a non-blocking peek, before
    /// the next request is written. Bytes the server sent unasked are an error.
    fn closed_while_idle(&self) -> anyhow::Result<bool> {
        ensure!(
            self.buf.is_empty(),
            "{} bytes left over after the last response: {:?}",
            self.buf.len(),
            String::from_utf8_lossy(&self.buf)
        );
        let mut peek = [MaybeUninit::<u8>::uninit(); 512];
        match socket2::SockRef::from(&self.stream).peek(&mut peek) {
            Ok(0) => Ok(true),
            Ok(n) => {
                let mut unasked = vec![0u8; n];
                let got = self.stream.try_read(&mut unasked).unwrap_or(0);
                bail!(
                    "the server sent {n} bytes on an idle connection: {:?}",
                    String::from_utf8_lossy(&unasked[..got])
                )
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
            Err(_) => Ok(true),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await.context("write request")?;
        self.sent += bytes.len() as u64;
        Ok(())
    }

    /// `GET path`, written once; the complete response within [`IO_DEADLINE`], or an error.
    async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        let req = request_bytes(&self.host, path);
        tokio::time::timeout(IO_DEADLINE, async {
            self.write(&req).await?;
            self.read_reply().await
        })
        .await
        .map_err(|_| anyhow!("GET {path}: no complete response within {IO_DEADLINE:?}"))?
    }

    /// Reads more bytes into `buf`; an error at EOF (the response is incomplete).
    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut tmp = [0u8; 8192];
        let n = self.stream.read(&mut tmp).await.context("read response")?;
        if n == 0 {
            bail!(
                "connection closed by the server before a complete response ({} bytes of it read: {:?})",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            );
        }
        self.buf.extend_from_slice(&tmp[..n]);
        self.received += n as u64;
        Ok(())
    }

    /// Reads up to the next CRLF; returns the line without it, consumed.
    async fn line(&mut self) -> anyhow::Result<String> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 2);
        Ok(line)
    }

    /// Reads one complete response (skipping 1xx), its body delimited by Content-Length, chunked coding or EOF.
    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        loop {
            let status_line = self.line().await?;
            let mut parts = status_line.splitn(3, ' ');
            let version = parts.next().unwrap_or("");
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
            ensure!(version.starts_with("HTTP/1."), "bad status line {status_line:?}");
            let mut close = version == "HTTP/1.0";
            let mut content_length: Option<usize> = None;
            let mut chunked = false;
            loop {
                let l = self.line().await?;
                if l.is_empty() {
                    break;
                }
                let Some((k, v)) = l.split_once(':') else {
                    bail!("bad header line {l:?}");
                };
                let v = v.trim();
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => content_length = Some(v.parse().context("bad Content-Length")?),
                    "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                    "connection" => {
                        for t in v.split(',').map(str::trim) {
                            if t.eq_ignore_ascii_case("close") {
                                close = true;
                            } else if t.eq_ignore_ascii_case("keep-alive") {
                                close = false;
                            }
                        }
                    }
                    _ => {}
                }
            }
            if (100..200).contains(&status) {
                continue;
            }
            let body = if chunked {
                self.read_chunked().await?
            } else if let Some(n) = content_length {
                while self.buf.len() < n {
                    self.fill().await?;
                }
                self.buf.drain(..n).collect()
            } else {
                // Delimited by the end of the connection.
                close = true;
                let mut tmp = [0u8; 8192];
                loop {
                    let n = self.stream.read(&mut tmp).await.context("read body to EOF")?;
                    if n == 0 {
                        break;
                    }
                    self.buf.extend_from_slice(&tmp[..n]);
                    self.received += n as u64;
                }
                std::mem::take(&mut self.buf)
            };
            return Ok(Reply { status, close, body });
        }
    }

    async fn read_chunked(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let l = self.line().await?;
            let size = usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size line {l:?}"))?;
            if size == 0 {
                // Trailer fields, up to an empty line.
                while !self.line().await?.is_empty() {}
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                self.fill().await?;
            }
            ensure!(&self.buf[size..size + 2] == b"\r\n", "chunk data not followed by CRLF");
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }
}

/// Opens `n` connections to `addr` and sends one request on each (200 `ok`, keep-alive); they are left idle.
async fn idle_pool(addr: SocketAddr, n: usize) -> Vec<H1> {
    let mut pool = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = H1::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        let r = c
            .get("/")
            .await
            .unwrap_or_else(|e| panic!("connection {i}, first request: {e:#}"));
        r.expect_ok()
            .unwrap_or_else(|e| panic!("connection {i}, first request: {e:#}"));
        assert!(
            !r.close,
            "connection {i}: the first response asks to close the connection"
        );
        pool.push(c);
    }
    pool
}

// ---------------------------------------------------------------------------------------------------------------
// keep-alive load clients that never retry
// ---------------------------------------------------------------------------------------------------------------

/// Counters of one keep-alive client.
#[derive(Default)]
struct ClientStats {
    ok: AtomicU64,
    /// Requests written (or attempted) that got no complete 200 `ok`, plus connects that failed.
    failures: AtomicU64,
    /// Connections opened after the first one.
    reconnects: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Why connections had to be reopened (first few).
    reopen_reasons: Mutex<Vec<String>>,
}

impl ClientStats {
    fn fail(&self, msg: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().unwrap();
        if e.len() < 10 {
            e.push(msg);
        }
    }

    fn reopen_reason(&self, msg: String) {
        let mut r = self.reopen_reasons.lock().unwrap();
        if r.len() < 5 {
            r.push(msg);
        }
    }
}

/// One keep-alive client: a single connection, one GET after another. A failed request is counted, never retried;
/// after a failure, or a `Connection: close`, or when the server closed the idle connection, the connection is
/// reopened and that is counted as a reconnect.
async fn keepalive_client(addr: SocketAddr, st: Arc<ClientStats>, stop: Arc<AtomicBool>) {
    let mut conn: Option<H1> = None;
    let mut opened = 0u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some(c) = &conn {
            match c.closed_while_idle() {
                Ok(false) => {}
                Ok(true) => {
                    st.reopen_reason(format!("closed by the server while idle, after request {n}"));
                    conn = None;
                }
                Err(e) => {
                    st.fail(format!("after request {n}: {e:#}"));
                    conn = None;
                }
            }
        }
        if conn.is_none() {
            match H1::connect(addr).await {
                Ok(c) => {
                    if opened > 0 {
                        st.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    opened += 1;
                    conn = Some(c);
                }
                Err(e) => {
                    st.fail(format!("{e:#}"));
                    tokio::time::sleep(PACE).await;
                    continue;
                }
            }
        }
        n += 1;
        let c = conn.as_mut().expect("connected");
        match c.get("/").await.and_then(|r| r.expect_ok().map(|()| r)) {
            Ok(r) => {
                st.ok.fetch_add(1, Ordering::Relaxed);
                if r.close {
                    st.reopen_reason(format!("request {n} answered with Connection: close"));
                    conn = None;
                }
            }
            Err(e) => {
                st.fail(format!("request {n}: {e:#}"));
                st.reopen_reason(format!("request {n} failed"));
                conn = None;
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

struct Clients {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    stats: Vec<Arc<ClientStats>>,
}

impl Clients {
    fn start(addr: SocketAddr, n: usize) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let stats: Vec<Arc<ClientStats>> = (0..n).map(|_| Arc::new(ClientStats::default())).collect();
        let handles = stats
            .iter()
            .map(|st| tokio::spawn(keepalive_client(addr, st.clone(), stop.clone())))
            .collect();
        Clients { stop, handles, stats }
    }

    /// Waits until every client has at least `n` more successful requests than now; false on timeout.
    async fn wait_progress(&self, n: u64, timeout: Duration) -> bool {
        wait_each_grows(
            || self.stats.iter().map(|s| s.ok.load(Ordering::Relaxed)).collect(),
            n,
            timeout,
        )
        .await
    }

    fn report(&self) -> ClientReport {
        ClientReport {
            stats: self.stats.clone(),
        }
    }

    /// Stops every client (each finishes its request in flight) and reports.
    async fn stop(mut self) -> ClientReport {
        self.stop.store(true, Ordering::Relaxed);
        for h in std::mem::take(&mut self.handles) {
            let _ = h.await;
        }
        self.report()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in &self.handles {
            h.abort();
        }
    }
}

struct ClientReport {
    stats: Vec<Arc<ClientStats>>,
}

impl ClientReport {
    fn sum(&self, f: impl Fn(&ClientStats) -> &AtomicU64) -> u64 {
        self.stats.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
    }
    fn ok(&self) -> u64 {
        self.sum(|s| &s.ok)
    }
    fn failures(&self) -> u64 {
        self.sum(|s| &s.failures)
    }
    fn reconnects(&self) -> u64 {
        self.sum(|s| &s.reconnects)
    }
    fn never_reopened(&self) -> usize {
        self.stats
            .iter()
            .filter(|s| s.reconnects.load(Ordering::Relaxed) == 0)
            .count()
    }
}

impl fmt::Display for ClientReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} keep-alive clients: {} ok, {} failed, {} reconnects, {} clients never reopened their connection",
            self.stats.len(),
            self.ok(),
            self.failures(),
            self.reconnects(),
            self.never_reopened()
        )?;
        for (i, s) in self.stats.iter().enumerate() {
            writeln!(
                f,
                "  client {i}: ok {} failed {} reconnects {}",
                s.ok.load(Ordering::Relaxed),
                s.failures.load(Ordering::Relaxed),
                s.reconnects.load(Ordering::Relaxed)
            )?;
            for e in s.errors.lock().unwrap().iter() {
                writeln!(f, "    error: {e}")?;
            }
            for r in s.reopen_reasons.lock().unwrap().iter() {
                writeln!(f, "    reopened: {r}")?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// a. keep-alive load through 20 upgrades
// ---------------------------------------------------------------------------------------------------------------

const UPGRADES: u64 = 20;
const CLIENTS: usize = 16;

/// Keep-alive clients that never retry run through 20 back-to-back upgrades: no request fails, every client keeps
/// making progress after each upgrade, and no client ever has to reopen its connection (the connections move to
/// each new instance; the old one is never the one that closes them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_load_through_20_upgrades() {
    let (s, mut serving) = setup_serving("10s", "20s").await;

    let clients = Clients::start(s.http, CLIENTS);
    assert!(
        clients.wait_progress(10, Duration::from_secs(10)).await,
        "no progress before the first upgrade:\n{}",
        clients.report()
    );

    for g in 2..=UPGRADES + 1 {
        let mut next = take_over(&s.dir, &s.config, &s.uds_dir, &format!("gen-{g}"), &takeover_env(g)).await;
        expect_old_exits(
            &mut serving,
            OLD_EXIT,
            "its connections are busy keep-alive ones that should have moved to the new instance at a response \
             boundary",
        )
        .await;
        assert!(
            clients.wait_progress(5, Duration::from_secs(10)).await,
            "clients stalled after the upgrade to generation {g}:\n{}",
            clients.report()
        );
        std::mem::swap(&mut serving, &mut next);
    }
    assert_serving(s.admin, serving.pid(), UPGRADES + 1).await;

    let report = clients.stop().await;
    eprintln!("{report}");
    assert!(report.ok() > 0, "{report}");
    assert_eq!(
        report.failures(),
        0,
        "failed requests across {UPGRADES} upgrades:\n{report}"
    );
    assert_eq!(
        report.reconnects(),
        0,
        "keep-alive connections had to be reopened across {UPGRADES} upgrades (they should have been handed over, \
         never closed):\n{report}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// b. an idle pool survives an upgrade
// ---------------------------------------------------------------------------------------------------------------

/// 100 idle keep-alive connections across an upgrade: the old instance exits long before its drain deadline (it
/// handed them all over), and then every one of the same 100 connections gets its next request answered, by the
/// new instance (the only baton left), without being asked to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pool_survives_upgrade() {
    let (s, mut old) = setup_serving("10s", "30s").await;
    let mut pool = idle_pool(s.http, 100).await;

    let old_pid = old.pid();
    let new = take_over(&s.dir, &s.config, &s.uds_dir, "gen-2", &takeover_env(2)).await;
    expect_old_exits(
        &mut old,
        OLD_EXIT,
        "its 100 connections were all idle and should have been handed over (its drain timeout is 30 s)",
    )
    .await;

    let failures = one_keepalive_request_each(&mut pool, "connection").await;
    assert!(
        failures.is_empty(),
        "{} of the 100 idle connections failed their request after the upgrade (old pid {old_pid} exited, new pid \
         {}):\n{}",
        failures.len(),
        new.pid(),
        failures.join("\n")
    );
    assert_serving(s.admin, new.pid(), 2).await;
}

/// Idle connections whose next request head is half written: the old instance has read those bytes but could not
/// parse a request yet, so they must move with the connection. After the upgrade, with the old instance gone, the
/// rest of each head is sent and the request is answered, on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsed_request_bytes_survive_upgrade() {
    let (s, mut old) = setup_serving("10s", "30s").await;

    let mut partial = idle_pool(s.http, 10).await;
    let host = s.http.to_string();
    for (i, c) in partial.iter_mut().enumerate() {
        c.write(format!("GET /?half={i} HTTP/1.1\r\nHost: {host}\r\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("partial connection {i}: {e:#}"));
    }
    // Let the old instance read the half requests.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let new = take_over(&s.dir, &s.config, &s.uds_dir, "gen-2", &takeover_env(2)).await;
    expect_old_exits(
        &mut old,
        OLD_EXIT,
        "its 10 connections had no request in flight, only unparsed bytes, and should have been handed over (its \
         drain timeout is 30 s)",
    )
    .await;

    let mut failures = Vec::new();
    for (i, c) in partial.iter_mut().enumerate() {
        let res = tokio::time::timeout(IO_DEADLINE, async {
            c.write(b"\r\n").await?;
            let r = c.read_reply().await?;
            r.expect_ok()?;
            ensure!(!r.close, "answered with Connection: close");
            anyhow::Ok(())
        })
        .await
        .unwrap_or_else(|_| Err(anyhow!("no complete response within {IO_DEADLINE:?}")));
        if let Err(e) = res {
            failures.push(format!("half-written request {i}: {e:#}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 10 half-written requests failed after the upgrade (new pid {}):\n{}",
        failures.len(),
        new.pid(),
        failures.join("\n")
    );
    assert_serving(s.admin, new.pid(), 2).await;
}

/// Connections accepted but never used (a client's pre-opened pool): nothing was read on them, so they are idle
/// and must move too. Once the upgrade is done the old instance exits, long before its drain deadline, and each
/// connection serves its first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_connections_survive_upgrade() {
    let (s, mut old) = setup_serving("10s", "30s").await;

    let mut unused = Vec::new();
    for i in 0..10 {
        unused.push(
            H1::connect(s.http)
                .await
                .unwrap_or_else(|e| panic!("unused connection {i}: {e:#}")),
        );
    }
    // Let the old instance accept them.
    wait_until(Duration::from_secs(5), || async {
        sample(
            &metrics(s.admin).await,
            "baton_connections_active{listener=\"ingress\"}",
        ) == 10.0
    })
    .await;

    let new = take_over(&s.dir, &s.config, &s.uds_dir, "gen-2", &takeover_env(2)).await;
    expect_old_exits(
        &mut old,
        OLD_EXIT,
        "its 10 connections had never been used and should have been handed over (its drain timeout is 30 s)",
    )
    .await;

    let failures = one_keepalive_request_each(&mut unused, "unused connection").await;
    assert!(
        failures.is_empty(),
        "{} of 10 unused connections failed after the upgrade (new pid {}):\n{}",
        failures.len(),
        new.pid(),
        failures.join("\n")
    );
    assert_serving(s.admin, new.pid(), 2).await;
}

/// An http listener renamed in the new config but kept at its address: the new instance adopts its socket (by
/// address) and also its 16 idle keep-alive connections, which belong to the listener it serves at their local
/// address whatever its name. Each connection's next request succeeds on that same connection (no close, no
/// reconnect), served by the new instance's renamed listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_listener_keeps_its_connections() {
    const CLIENTS: usize = 16;
    let (s, mut old) = setup_serving("10s", "30s").await;
    let mut pool = idle_pool(s.http, CLIENTS).await;
    let before: Vec<SocketAddr> = pool.iter().map(|c| c.stream.local_addr().unwrap()).collect();

    let mut renamed = s.cfg.clone();
    for l in renamed.listeners.iter_mut().filter(|l| l.name == "ingress") {
        l.name = "edge".into();
    }
    let config = renamed.write_yaml(&s.dir, "renamed.yaml");
    let new = take_over(&s.dir, &config, &s.uds_dir, "gen-2", &takeover_env(2)).await;
    expect_old_exits(
        &mut old,
        OLD_EXIT,
        "its 16 idle connections belong to a listener the new instance serves at the same address (renamed), and \
         should have been handed over (its drain timeout is 30 s)",
    )
    .await;

    let failures = one_keepalive_request_each(&mut pool, "keep-alive client").await;
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} idle connections of the renamed listener failed their request after the upgrade (new pid \
         {}):\n{}\nnew instance stderr:\n{}",
        failures.len(),
        new.pid(),
        failures.join("\n"),
        new.stderr()
    );
    let after: Vec<SocketAddr> = pool.iter().map(|c| c.stream.local_addr().unwrap()).collect();
    assert_eq!(
        before, after,
        "the clients' connections (local addresses) before and after the upgrade"
    );
    let served = sample(
        &metrics(s.admin).await,
        "baton_requests_total{listener=\"edge\",protocol=\"http\",class=\"2xx\"}",
    );
    assert!(
        served >= CLIENTS as f64,
        "the new instance's renamed listener `edge` counts {served} requests, not the {CLIENTS} sent after the upgrade"
    );
    assert_serving(s.admin, new.pid(), 2).await;
}

/// A listener kept at its address but switched from http to tcp: the new instance must not relay an HTTP
/// keep-alive connection as a byte stream. It refuses it and says why in its log (the listener, both protocols);
/// the old instance logs each connection it kept and why, serves it on, and then exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_change_at_same_address_refuses_connections() {
    let (s, mut old) = setup_serving("10s", "30s").await;
    let mut pool = idle_pool(s.http, 2).await;

    let mut switched = s.cfg.clone();
    for l in switched.listeners.iter_mut().filter(|l| l.name == "ingress") {
        l.protocol = "tcp".into();
        l.cluster = "echo".into();
    }
    let config = switched.write_yaml(&s.dir, "switched.yaml");
    let new = take_over(&s.dir, &config, &s.uds_dir, "gen-2", &takeover_env(2)).await;

    let said_why = |log: &str| {
        log.lines().any(|l| {
            (l.contains("INFO") || l.contains("WARN"))
                && l.contains("refused")
                && l.contains("ingress")
                && l.contains("http")
                && l.contains("tcp")
                && l.contains("protocol")
        })
    };
    let logged = wait_until(Duration::from_secs(10), || {
        let log = new.stderr();
        async move { said_why(&log) }
    })
    .await;
    assert!(
        logged,
        "the new instance did not log why it refused the connections of `ingress` (http before, tcp now); its \
         stderr:\n{}",
        new.stderr()
    );
    // The old instance still serves them: the next request is answered by it (asking to close), then it exits.
    for (i, c) in pool.iter_mut().enumerate() {
        if c.closed_while_idle().unwrap_or(true) {
            continue;
        }
        let r = c.get("/").await.unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        r.expect_ok().unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
    }
    drop(pool);
    expect_old_exits(&mut old, OLD_EXIT, "its refused connections were closed").await;
    // The old instance said, for each, why it kept it.
    let kept = warn_lines(&old.stderr(), "not handed over");
    assert!(
        kept.len() == 2
            && kept
                .iter()
                .all(|l| l.contains("refused by the successor") && l.contains("ingress")),
        "the old instance should log a WARN for each of the 2 connections it kept, with why; it logged:\n{}",
        kept.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------------------------
// c. a TCP relay stream survives 10 upgrades
// ---------------------------------------------------------------------------------------------------------------

/// The byte at `offset` of the stream the test sends: splitmix64 of `offset / 8`, so that a lost, duplicated or
/// reordered byte anywhere is detected.
fn pattern_byte(offset: u64) -> u8 {
    let mut z = (offset / 8).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z.to_le_bytes()[(offset % 8) as usize]
}

#[derive(Default)]
struct StreamState {
    sent: AtomicU64,
    echoed: AtomicU64,
    /// Set once the writer has half-closed: an EOF is expected from then on.
    finished: AtomicBool,
    error: Mutex<Option<String>>,
}

impl StreamState {
    fn set_error(&self, e: String) {
        let mut slot = self.error.lock().unwrap();
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    fn error(&self) -> Option<String> {
        self.error.lock().unwrap().clone()
    }

    fn assert_intact(&self, when: &str) {
        if let Some(e) = self.error() {
            panic!(
                "{when}: the TCP stream broke: {e} ({} bytes sent, {} echoed intact)",
                self.sent.load(Ordering::Relaxed),
                self.echoed.load(Ordering::Relaxed)
            );
        }
    }
}

/// One TCP connection through the `tcp` listener to the echo upstream stays open across 10 upgrades while the
/// client keeps sending a deterministic byte pattern: every byte comes back, in order, and the stream is never
/// closed or reset under the client; at the end it half-closes and gets a clean EOF after exactly what it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_stream_survives_10_upgrades() {
    const STREAM_UPGRADES: u64 = 10;
    const PROGRESS: u64 = 64 * 1024;
    let (s, mut serving) = setup_serving("10s", "5s").await;

    let stream = TcpStream::connect(s.tcp).await.expect("connect the tcp listener");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let (mut rd, mut wr) = stream.into_split();
    let st = Arc::new(StreamState::default());
    let stop = Arc::new(AtomicBool::new(false));

    let writer = {
        let (st, stop) = (st.clone(), stop.clone());
        tokio::spawn(async move {
            let mut offset = 0u64;
            let mut rng = 0x2545_F491_4F6C_DD1Du64;
            while !stop.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let len = 1 + rng % 2048;
                let chunk: Vec<u8> = (offset..offset + len).map(pattern_byte).collect();
                if let Err(e) = wr.write_all(&chunk).await {
                    st.set_error(format!("write failed after {offset} bytes sent: {e}"));
                    return;
                }
                offset += len;
                st.sent.store(offset, Ordering::Relaxed);
                tokio::time::sleep(PACE).await;
            }
            st.finished.store(true, Ordering::Relaxed);
            if let Err(e) = wr.shutdown().await {
                st.set_error(format!("half-close failed after {offset} bytes sent: {e}"));
            }
        })
    };
    let reader = {
        let st = st.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut offset = 0u64;
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => {
                        if !st.finished.load(Ordering::Relaxed) {
                            st.set_error(format!("the proxy closed the stream (EOF) after {offset} bytes echoed"));
                        }
                        return offset;
                    }
                    Ok(n) => {
                        for (k, &b) in buf[..n].iter().enumerate() {
                            let at = offset + k as u64;
                            let want = pattern_byte(at);
                            if b != want {
                                st.set_error(format!("byte {at} echoed as {b:#04x}, but {want:#04x} was sent there"));
                                return at;
                            }
                        }
                        offset += n as u64;
                        st.echoed.store(offset, Ordering::Relaxed);
                    }
                    Err(e) => {
                        st.set_error(format!("read failed after {offset} bytes echoed: {e}"));
                        return offset;
                    }
                }
            }
        })
    };

    let flowing = |min: u64| {
        let st = st.clone();
        async move {
            wait_until(Duration::from_secs(10), || {
                let ok = st.error().is_some() || st.echoed.load(Ordering::Relaxed) >= min;
                async move { ok }
            })
            .await
        }
    };
    assert!(flowing(PROGRESS).await, "no echo before the first upgrade");
    st.assert_intact("before the first upgrade");

    for g in 2..=STREAM_UPGRADES + 1 {
        let mut next = take_over(&s.dir, &s.config, &s.uds_dir, &format!("gen-{g}"), &takeover_env(g)).await;
        expect_old_exits(
            &mut serving,
            Duration::from_secs(5) + OLD_EXIT,
            "its only connection is a TCP stream that should have moved (or its 5 s drain should have ended)",
        )
        .await;
        st.assert_intact(&format!("upgrade to generation {g}"));
        let base = st.echoed.load(Ordering::Relaxed);
        assert!(
            flowing(base + PROGRESS).await,
            "the echo stalled after the upgrade to generation {g} ({base} bytes echoed)"
        );
        st.assert_intact(&format!("after the upgrade to generation {g}"));
        std::mem::swap(&mut serving, &mut next);
    }
    assert_serving(s.admin, serving.pid(), STREAM_UPGRADES + 1).await;

    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the writer did not stop")
        .expect("join the writer");
    let echoed = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no EOF within 10 s of the half-close ({} bytes sent, {} echoed)",
                st.sent.load(Ordering::Relaxed),
                st.echoed.load(Ordering::Relaxed)
            )
        })
        .expect("join the reader");
    st.assert_intact("at the end");
    let sent = st.sent.load(Ordering::Relaxed);
    eprintln!("{sent} bytes sent and echoed intact across {STREAM_UPGRADES} upgrades");
    assert_eq!(echoed, sent, "bytes echoed before EOF vs bytes sent");
}

// ---------------------------------------------------------------------------------------------------------------
// d. the new instance dies while receiving connections
// ---------------------------------------------------------------------------------------------------------------

/// The new instance exits (86, failpoint `conns-before-ack`) right after receiving the first batch of connections,
/// without acknowledging them: the old instance resumes them, and every one of the 20 idle connections gets its
/// next request answered 200 (by the old instance, which may ask to close). The successor died during the old
/// instance's probation, so the old one serves again: `/status` is its own, in phase `serving`, and new
/// connections are answered; it exits 0 at SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_dies_mid_transfer_old_keeps_serving() {
    let (s, mut old) = setup_serving("10s", "10s").await;
    let mut pool = idle_pool(s.http, 20).await;

    let env = takeover_env(2).with("BATON_FAILPOINT", "conns-before-ack");
    let mut new = s.spawn_run("gen-2-dies", &env);
    let (code, _) = new.expect_exit(Duration::from_secs(15)).await;
    assert_eq!(
        code,
        Some(86),
        "BATON_FAILPOINT=conns-before-ack should make the new instance exit 86 once it has received connections; \
         stderr:\n{}",
        new.stderr()
    );
    old.assert_running();

    let mut failures = Vec::new();
    let mut closes = 0;
    for (i, c) in pool.iter_mut().enumerate() {
        let res = async {
            ensure!(!c.closed_while_idle()?, "closed by the server while idle");
            let r = c.get("/").await?;
            r.expect_ok()?;
            anyhow::Ok(r.close)
        }
        .await;
        match res {
            Ok(close) => closes += usize::from(close),
            Err(e) => failures.push(format!("connection {i}: {e:#}")),
        }
    }
    eprintln!("{closes} of 20 resumed connections were answered with Connection: close");
    assert!(
        failures.is_empty(),
        "{} of the 20 connections failed after the new instance died mid-transfer (the old should have resumed \
         them):\n{}",
        failures.len(),
        failures.join("\n")
    );

    drop(pool);
    let serving_again = wait_until(Duration::from_secs(10), || async {
        status(s.admin)
            .await
            .is_ok_and(|st| st["pid"].as_u64() == Some(u64::from(old.pid())) && st["phase"] == "serving")
    })
    .await;
    assert!(
        serving_again,
        "the old instance should serve again; stderr:\n{}",
        old.stderr()
    );
    assert!(
        old.stderr().contains("the successor died during the probation"),
        "the old instance says why it serves again; stderr:\n{}",
        old.stderr()
    );
    for _ in 0..10 {
        proxy_ok(s.http)
            .await
            .expect("new connections are served by the old instance again");
    }
    old.sigterm();
    assert_eq!(old.expect_exit(Duration::from_secs(15)).await.0, Some(0));
}

// ---------------------------------------------------------------------------------------------------------------
// e. handoff.inherit_config
// ---------------------------------------------------------------------------------------------------------------

/// Three upstreams told apart by their request counters, a listener `ingress` on one fixed address, and configs
/// that route it to one upstream or another.
struct Routing {
    dir: TestDir,
    ups: [HttpUpstream; 3],
    http: SocketAddr,
    admin: SocketAddr,
    uds: std::path::PathBuf,
}

impl Routing {
    async fn new() -> Routing {
        let dir = TestDir::new();
        let ups = [
            HttpUpstream::start().await,
            HttpUpstream::start().await,
            HttpUpstream::start().await,
        ];
        let uds = dir.subdir("uds");
        Routing {
            dir,
            ups,
            http: free_addr(),
            admin: free_addr(),
            uds,
        }
    }

    /// A `Routing` and its generation 1, serving with the config routing to upstream 0 (`gen-1.yaml`); set up again
    /// with new ports if generation 1 lost a port race (see [`try_first`]).
    async fn serving() -> (Routing, Baton) {
        for _ in 0..5 {
            let r = Routing::new().await;
            let c1 = r.config(0).write_yaml(&r.dir, "gen-1.yaml");
            if let Some(b) = try_first(&r.dir, &c1, &r.uds, r.admin).await {
                return (r, b);
            }
        }
        panic!("gen-1 could not bind its ports in 5 attempts");
    }

    /// The config routing `ingress` to upstream `up` (0, 1, 2).
    fn config(&self, up: usize) -> Config {
        Config::default()
            .listener("ingress", self.http, "http", "app")
            .cluster("app", &[self.ups[up].addr])
            .admin(self.admin)
            .uds_dir(&self.uds)
            .handoff("10s", "5s")
    }

    fn counts(&self) -> [u64; 3] {
        self.ups.each_ref().map(|u| u.requests.load(Ordering::Relaxed))
    }

    /// Sends `n` requests (each on a new connection) and returns how many each upstream received.
    async fn send(&self, n: u64) -> [u64; 3] {
        let before = self.counts();
        for i in 0..n {
            proxy_ok(self.http)
                .await
                .unwrap_or_else(|e| panic!("request {i} through the proxy: {e:#}"));
        }
        let after = self.counts();
        [0, 1, 2].map(|k| after[k] - before[k])
    }

    /// Upgrades `old` to a new instance (generation `g`) started with config file `config`; waits for the old to
    /// exit.
    async fn upgrade(&self, old: &mut Baton, config: &Path, g: u64) -> Baton {
        let new = take_over(&self.dir, config, &self.uds, &format!("gen-{g}"), &takeover_env(g)).await;
        expect_old_exits(old, OLD_EXIT, "it had no connection left (drain timeout 5 s)").await;
        assert_serving(self.admin, new.pid(), g).await;
        new
    }
}

/// `handoff.inherit_config: true` in the new instance's file: it serves the old instance's effective config, not
/// its own file. Generation 1 routes to upstream 0; generation 2's file (YAML) routes to upstream 1, generation 3's
/// (JSON) to upstream 2, both with inherit_config: true; requests keep reaching upstream 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inherit_config_serves_the_old_config() {
    let (r, mut gen1) = Routing::serving().await;
    let c2 = r.config(1).inherit_config(true).write_yaml(&r.dir, "gen-2.yaml");
    let c3 = r.config(2).inherit_config(true).write_json(&r.dir, "gen-3.json");
    assert_eq!(r.send(5).await, [5, 0, 0], "generation 1 routes to upstream 0");

    let mut gen2 = r.upgrade(&mut gen1, &c2, 2).await;
    assert_eq!(
        r.send(10).await,
        [10, 0, 0],
        "generation 2 has inherit_config: true: it should serve generation 1's config (upstream 0), not its own file \
         (upstream 1)"
    );
    let _gen3 = r.upgrade(&mut gen2, &c3, 3).await;
    assert_eq!(
        r.send(10).await,
        [10, 0, 0],
        "generation 3 has inherit_config: true: it should serve generation 2's effective config (upstream 0), not its \
         own file (upstream 2)"
    );
}

/// Without `handoff.inherit_config` (the default), or with it false, the new instance serves its own file.
/// Generation 2's file (YAML, key omitted) routes to upstream 1, generation 3's (JSON, inherit_config: false) to
/// upstream 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_inherit_config_the_new_file_applies() {
    let (r, mut gen1) = Routing::serving().await;
    let c2 = r.config(1).write_yaml(&r.dir, "gen-2.yaml");
    let c3 = r.config(2).inherit_config(false).write_json(&r.dir, "gen-3.json");
    assert_eq!(r.send(5).await, [5, 0, 0], "generation 1 routes to upstream 0");

    let mut gen2 = r.upgrade(&mut gen1, &c2, 2).await;
    assert_eq!(
        r.send(10).await,
        [0, 10, 0],
        "generation 2 (no inherit_config) should serve its own file (upstream 1)"
    );
    let _gen3 = r.upgrade(&mut gen2, &c3, 3).await;
    assert_eq!(
        r.send(10).await,
        [0, 0, 10],
        "generation 3 (inherit_config: false) should serve its own file (upstream 2)"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// f. counters continue across the upgrade
// ---------------------------------------------------------------------------------------------------------------

const KEEPALIVE_CONNS: usize = 5;

/// Requests through the old (N), an upgrade, requests through the new (M): the new instance's
/// `baton_requests_total` for the listener is exactly N + M, its connection and byte counters include the old
/// one's, and `baton_connections_active` equals the connections actually open (not double counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_continue() {
    let (s, mut old) = setup_serving("10s", "2s").await;

    // Through the old: 5 keep-alive connections × 10 requests, and 10 requests on connections of their own.
    let mut ka = idle_pool(s.http, KEEPALIVE_CONNS).await;
    for (i, c) in ka.iter_mut().enumerate() {
        for k in 1..10 {
            let r = c
                .get("/")
                .await
                .unwrap_or_else(|e| panic!("conn {i} request {k}: {e:#}"));
            r.expect_ok().unwrap_or_else(|e| panic!("conn {i} request {k}: {e:#}"));
        }
    }
    let http = s.http;
    let one_shot = move |n: u64| async move {
        let (mut sent, mut received) = (0, 0);
        for i in 0..n {
            let mut c = H1::connect(http).await.expect("connect");
            let r = c
                .get("/")
                .await
                .unwrap_or_else(|e| panic!("one-shot request {i}: {e:#}"));
            r.expect_ok().unwrap_or_else(|e| panic!("one-shot request {i}: {e:#}"));
            sent += c.sent;
            received += c.received;
        }
        (sent, received)
    };
    one_shot(10).await;
    let n = (KEEPALIVE_CONNS * 10 + 10) as f64;
    let conns_old = (KEEPALIVE_CONNS + 10) as f64;

    let req_series = "baton_requests_total{listener=\"ingress\",protocol=\"http\",class=\"2xx\"}";
    let m_old = metrics(s.admin).await;
    assert_eq!(sample(&m_old, req_series), n, "requests counted by the old instance");
    assert_eq!(
        sample(&m_old, "baton_connections_total{listener=\"ingress\"}"),
        conns_old,
        "connections counted by the old instance"
    );
    let received_old = sample(&m_old, "baton_received_bytes_total{listener=\"ingress\"}");
    let sent_old = sample(&m_old, "baton_sent_bytes_total{listener=\"ingress\"}");

    let new = take_over(&s.dir, &s.config, &s.uds_dir, "gen-2", &takeover_env(2)).await;
    // Its drain timeout is short: even an old instance that does not hand its connections over is gone soon.
    expect_old_exits(&mut old, OLD_EXIT, "its drain timeout is 2 s").await;

    // Through the new: 6 requests on each keep-alive connection (reopened if the server closed it: not what this
    // test is about), and 10 on connections of their own.
    let (mut sent_new, mut received_new) = (0u64, 0u64);
    let mut reopened = 0;
    for (i, c) in ka.iter_mut().enumerate() {
        if c.closed_while_idle().unwrap_or(true) {
            reopened += 1;
            *c = H1::connect(s.http).await.expect("reconnect");
        }
        let (s0, r0) = (c.sent, c.received);
        for k in 0..6 {
            let r = c
                .get("/")
                .await
                .unwrap_or_else(|e| panic!("conn {i} request {k}: {e:#}"));
            r.expect_ok().unwrap_or_else(|e| panic!("conn {i} request {k}: {e:#}"));
        }
        sent_new += c.sent - s0;
        received_new += c.received - r0;
    }
    let (s1, r1) = one_shot(10).await;
    sent_new += s1;
    received_new += r1;
    let m = (KEEPALIVE_CONNS * 6 + 10) as f64;
    eprintln!("{reopened} keep-alive connections had to be reopened after the upgrade");

    let open_now = KEEPALIVE_CONNS as f64;
    let active = "baton_connections_active{listener=\"ingress\"}";
    // The one-shot connections are closed by the client: let the new instance see it.
    wait_until(Duration::from_secs(5), || async {
        sample(&metrics(s.admin).await, active) == open_now
    })
    .await;
    let text = metrics(s.admin).await;
    eprintln!("{text}");
    assert_eq!(
        sample(&text, "baton_generation"),
        2.0,
        "/metrics should be the new instance's"
    );
    assert_eq!(
        sample(&text, req_series),
        n + m,
        "baton_requests_total after the upgrade: {n} through the old + {m} through the new"
    );
    assert!(
        sample(&text, "baton_connections_total{listener=\"ingress\"}") >= conns_old + 10.0 + f64::from(reopened),
        "baton_connections_total should include the old instance's {conns_old}"
    );
    assert!(
        sample(&text, "baton_received_bytes_total{listener=\"ingress\"}") >= received_old + sent_new as f64,
        "baton_received_bytes_total should include the old instance's {received_old} (+ {sent_new} since)"
    );
    assert!(
        sample(&text, "baton_sent_bytes_total{listener=\"ingress\"}") >= sent_old + received_new as f64,
        "baton_sent_bytes_total should include the old instance's {sent_old} (+ {received_new} since)"
    );
    assert_eq!(
        sample(&text, active),
        open_now,
        "baton_connections_active: {KEEPALIVE_CONNS} client connections are open"
    );
    drop(new);
}

// ---------------------------------------------------------------------------------------------------------------
// h2c: GOAWAY at commit
// ---------------------------------------------------------------------------------------------------------------

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// An h2c (prior knowledge) client connection; the task ends with the connection (Ok on a graceful close).
async fn h2_connect(addr: SocketAddr) -> (H2Sender, JoinHandle<Result<(), hyper::Error>>) {
    let stream = TcpStream::connect(addr).await.expect("connect for h2c");
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    (sender, tokio::spawn(conn))
}

async fn h2_get(sender: &mut H2Sender, addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    tokio::time::timeout(IO_DEADLINE, async {
        let req = Request::get(format!("http://{addr}{path}"))
            .body(Empty::<Bytes>::new())
            .expect("build request");
        let resp = sender.send_request(req).await.context("send h2 request")?;
        let status = resp.status();
        let body = resp.into_body().collect().await.context("read h2 body")?.to_bytes();
        ensure!(status == 200 && &body[..] == b"ok", "answered {status} {body:?}");
        Ok(())
    })
    .await
    .map_err(|_| anyhow!("h2 GET {path}: no complete response within {IO_DEADLINE:?}"))?
}

/// An h2c connection open across the upgrade, with a stream in flight: at the commit it gets a GOAWAY (the
/// connection ends gracefully, well before the old's drain deadline), the stream in flight completes, the old
/// exits, and a new h2c connection is served by the new instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_connection_gets_goaway_at_commit() {
    let (s, mut old) = setup_serving("10s", "30s").await;

    let (mut h2, conn) = h2_connect(s.http).await;
    h2_get(&mut h2, s.http, "/")
        .await
        .expect("h2 request before the upgrade");
    let in_flight = {
        let (mut h2, addr) = (h2.clone(), s.http);
        tokio::spawn(async move { h2_get(&mut h2, addr, "/slow?sleep_ms=1500").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let new = take_over(&s.dir, &s.config, &s.uds_dir, "gen-2", &takeover_env(2)).await;
    in_flight
        .await
        .expect("join")
        .expect("the h2 stream in flight at the commit should complete");
    let ended = tokio::time::timeout(OLD_EXIT, conn).await;
    match ended {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => panic!("the h2c connection ended with an error instead of a graceful GOAWAY: {e}"),
        Ok(Err(e)) => panic!("join the h2c connection task: {e}"),
        Err(_) => panic!("the h2c connection was still open {OLD_EXIT:?} after the commit: no GOAWAY"),
    }
    expect_old_exits(&mut old, OLD_EXIT, "its only h2c connection was closed with GOAWAY").await;

    let (mut h2b, _conn_b) = h2_connect(s.http).await;
    h2_get(&mut h2b, s.http, "/")
        .await
        .expect("h2 request after the upgrade");
    assert_serving(s.admin, new.pid(), 2).await;
}
