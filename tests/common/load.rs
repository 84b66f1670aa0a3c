//! [`Load`]: concurrent clients that run against baton while a test upgrades it, and count every failure: HTTP/1.1
//! keep-alive and new-connection clients, and TCP echo clients. [`LoadReport`] is what they saw.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::CONNECTION;
use hyper::StatusCode;
use tokio::task::JoinHandle;

use super::requests::{get_request, http1_connect, tcp_echo_once};
use super::wait::wait_each_grows;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadKind {
    /// HTTP/1.1 keep-alive: reuses one connection; reconnects after a response with `Connection: close`.
    KeepAlive,
    /// HTTP/1.1, one new connection per request.
    NewConnection,
    /// TCP: connect, echo a payload, half-close, read EOF, close.
    TcpEcho,
}

/// Counters of one load client.
pub struct LoadStats {
    pub kind: LoadKind,
    pub id: usize,
    pub requests: AtomicU64,
    pub ok: AtomicU64,
    pub failures: AtomicU64,
    /// Connections closed by the server with `Connection: close` (keep-alive clients).
    pub reconnects: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl LoadStats {
    fn new(kind: LoadKind, id: usize) -> LoadStats {
        LoadStats {
            kind,
            id,
            requests: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
        }
    }

    fn fail(&self, msg: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().unwrap();
        if e.len() < 10 {
            e.push(msg);
        }
    }
}

/// A set of load clients running against an HTTP listener and a TCP listener.
pub struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    pub stats: Vec<Arc<LoadStats>>,
}

/// Per-request deadline; a request that has no complete response by then is a failure.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between requests of one client, to keep the load moderate when tests run in parallel.
const PACE: Duration = Duration::from_millis(2);

impl Load {
    /// Start `keepalive` keep-alive clients and `newconn` new-connection clients against `http`, and `tcp_clients`
    /// echo clients against `tcp` (if given).
    pub fn start(
        http: SocketAddr,
        keepalive: usize,
        newconn: usize,
        tcp: Option<SocketAddr>,
        tcp_clients: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let mut stats = Vec::new();
        let mut spawn = |kind: LoadKind, id: usize, addr: SocketAddr| {
            let st = Arc::new(LoadStats::new(kind, id));
            stats.push(st.clone());
            let stop = stop.clone();
            handles.push(tokio::spawn(async move {
                match kind {
                    LoadKind::KeepAlive => keepalive_client(addr, st, stop).await,
                    LoadKind::NewConnection => newconn_client(addr, st, stop).await,
                    LoadKind::TcpEcho => tcp_client(addr, st, stop).await,
                }
            }));
        };
        for i in 0..keepalive {
            spawn(LoadKind::KeepAlive, i, http);
        }
        for i in 0..newconn {
            spawn(LoadKind::NewConnection, i, http);
        }
        if let Some(tcp) = tcp {
            for i in 0..tcp_clients {
                spawn(LoadKind::TcpEcho, i, tcp);
            }
        }
        Load { stop, handles, stats }
    }

    pub fn ok(&self) -> u64 {
        self.stats.iter().map(|s| s.ok.load(Ordering::Relaxed)).sum()
    }

    pub fn failures(&self) -> u64 {
        self.stats.iter().map(|s| s.failures.load(Ordering::Relaxed)).sum()
    }

    /// Smallest successful-request count over all clients (to check that every client made progress).
    pub fn min_ok(&self) -> u64 {
        self.stats
            .iter()
            .map(|s| s.ok.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Wait until every client has at least `n` more successful requests than now; false on timeout.
    pub async fn wait_progress(&self, n: u64, timeout: Duration) -> bool {
        wait_each_grows(
            || self.stats.iter().map(|s| s.ok.load(Ordering::Relaxed)).collect(),
            n,
            timeout,
        )
        .await
    }

    /// Stop all clients (each finishes its in-flight request) and report.
    pub async fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for h in std::mem::take(&mut self.handles) {
            let _ = h.await;
        }
        LoadReport {
            stats: std::mem::take(&mut self.stats),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in &self.handles {
            h.abort();
        }
    }
}

pub struct LoadReport {
    pub stats: Vec<Arc<LoadStats>>,
}

impl LoadReport {
    pub fn requests(&self) -> u64 {
        self.stats.iter().map(|s| s.requests.load(Ordering::Relaxed)).sum()
    }
    pub fn ok(&self) -> u64 {
        self.stats.iter().map(|s| s.ok.load(Ordering::Relaxed)).sum()
    }
    pub fn failures(&self) -> u64 {
        self.stats.iter().map(|s| s.failures.load(Ordering::Relaxed)).sum()
    }
    pub fn ok_of(&self, kind: LoadKind) -> u64 {
        self.stats
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.ok.load(Ordering::Relaxed))
            .sum()
    }
    pub fn reconnects(&self) -> u64 {
        self.stats.iter().map(|s| s.reconnects.load(Ordering::Relaxed)).sum()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "load: {} requests, {} ok, {} failed",
            self.requests(),
            self.ok(),
            self.failures()
        )?;
        for s in &self.stats {
            writeln!(
                f,
                "  {:?}#{}: requests {} ok {} failed {} reconnects(Connection: close) {}",
                s.kind,
                s.id,
                s.requests.load(Ordering::Relaxed),
                s.ok.load(Ordering::Relaxed),
                s.failures.load(Ordering::Relaxed),
                s.reconnects.load(Ordering::Relaxed)
            )?;
            for e in s.errors.lock().unwrap().iter() {
                writeln!(f, "    error: {e}")?;
            }
        }
        Ok(())
    }
}

fn has_connection_close(headers: &http::HeaderMap) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
            .unwrap_or(false)
    })
}

/// Send one request on `sender`; Ok(connection_close) on a complete 200 `ok`.
async fn one_request(sender: &mut SendRequest<Empty<Bytes>>, addr: SocketAddr) -> anyhow::Result<bool> {
    sender.ready().await.context("connection not ready")?;
    let resp = sender
        .send_request(get_request(addr, "/"))
        .await
        .context("send request")?;
    let status = resp.status();
    let close = has_connection_close(resp.headers());
    let body = resp.into_body().collect().await.context("read body")?.to_bytes();
    if status != StatusCode::OK || &body[..] != b"ok" {
        bail!("answered {status} {:?}", String::from_utf8_lossy(&body));
    }
    Ok(close)
}

async fn keepalive_client(addr: SocketAddr, st: Arc<LoadStats>, stop: Arc<AtomicBool>) {
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) {
        st.requests.fetch_add(1, Ordering::Relaxed);
        let fut = async {
            if sender.is_none() {
                sender = Some(http1_connect(addr).await?);
            }
            one_request(sender.as_mut().unwrap(), addr).await
        };
        match tokio::time::timeout(REQUEST_DEADLINE, fut).await {
            Ok(Ok(close)) => {
                st.ok.fetch_add(1, Ordering::Relaxed);
                if close {
                    st.reconnects.fetch_add(1, Ordering::Relaxed);
                    sender = None;
                }
            }
            Ok(Err(e)) => {
                st.fail(format!("keep-alive request: {e:#}"));
                sender = None;
            }
            Err(_) => {
                st.fail("keep-alive request: timed out".into());
                sender = None;
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

async fn newconn_client(addr: SocketAddr, st: Arc<LoadStats>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        st.requests.fetch_add(1, Ordering::Relaxed);
        let fut = async {
            let mut sender = http1_connect(addr).await?;
            one_request(&mut sender, addr).await
        };
        match tokio::time::timeout(REQUEST_DEADLINE, fut).await {
            Ok(Ok(_)) => {
                st.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => st.fail(format!("new-connection request: {e:#}")),
            Err(_) => st.fail("new-connection request: timed out".into()),
        }
        tokio::time::sleep(PACE).await;
    }
}

async fn tcp_client(addr: SocketAddr, st: Arc<LoadStats>, stop: Arc<AtomicBool>) {
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        st.requests.fetch_add(1, Ordering::Relaxed);
        n += 1;
        let payload = format!(
            "baton-echo client {} round {n} {}\n",
            st.id,
            "x".repeat((n % 50) as usize)
        );
        match tcp_echo_once(addr, payload.as_bytes()).await {
            Ok(()) => {
                st.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => st.fail(format!("tcp round trip: {e:#}")),
        }
        tokio::time::sleep(PACE).await;
    }
}
