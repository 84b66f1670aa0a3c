//! Support code for the integration tests: they drive the real `baton` binary as separate processes.
//!
//! Every test gets its own temp dir ([`TestDir`]) and its own loopback ports ([`free_port`]), so the tests run in
//! parallel safely. Every spawned process is killed on drop ([`Baton`]), and its stderr is kept in a file in the temp
//! dir and printed when the test panics.
#![allow(dead_code)]

use std::fmt;
use std::fs;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONNECTION, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Versions used by the tests, shaped like the Kruise SidecarSet resourceVersions (see the Kruise env table).
pub const R2: &str = "7340032";
pub const R3: &str = "7340571";

// ---------------------------------------------------------------------------------------------------------------
// temp dir, ports
// ---------------------------------------------------------------------------------------------------------------

/// A temp dir owned by one test; removed on drop.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        // Short prefix in /tmp: the uds dir lives in here and unix socket paths are limited to ~108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("baton-")
            .tempdir()
            .expect("create temp dir");
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A (created, empty) directory inside the temp dir.
    pub fn subdir(&self, p: &str) -> PathBuf {
        let d = self.join(p);
        fs::create_dir_all(&d).expect("create subdir");
        d
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.join(name);
        fs::write(&p, contents).expect("write file");
        p
    }
}

/// A free ephemeral loopback port: bind 127.0.0.1:0, read the port, drop the socket. Never the same port twice
/// in one test process (the kernel may hand a just-released port out again, and two calls in a row would then
/// collide).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A free loopback address (see [`free_port`]).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

// ---------------------------------------------------------------------------------------------------------------
// config writer
// ---------------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct ListenerCfg {
    pub name: String,
    pub address: String,
    pub protocol: String,
    pub cluster: String,
}

#[derive(Clone, Debug)]
pub struct ClusterCfg {
    pub name: String,
    pub endpoints: Vec<String>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
}

/// The baton config (docs/CONTRACT.md), written as YAML.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub listeners: Vec<ListenerCfg>,
    pub clusters: Vec<ClusterCfg>,
    pub admin: Option<String>,
    pub uds_dir: Option<PathBuf>,
    pub handoff_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    /// `handoff.inherit_config`; omitted from the file when `None`.
    pub inherit_config: Option<bool>,
}

impl Config {
    pub fn listener(mut self, name: &str, address: impl ToString, protocol: &str, cluster: &str) -> Self {
        self.listeners.push(ListenerCfg {
            name: name.into(),
            address: address.to_string(),
            protocol: protocol.into(),
            cluster: cluster.into(),
        });
        self
    }

    pub fn cluster(mut self, name: &str, endpoints: &[SocketAddr]) -> Self {
        self.clusters.push(ClusterCfg {
            name: name.into(),
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            connect_timeout: Some("1s".into()),
            request_timeout: Some("5s".into()),
        });
        self
    }

    pub fn admin(mut self, address: SocketAddr) -> Self {
        self.admin = Some(address.to_string());
        self
    }

    pub fn uds_dir(mut self, dir: &Path) -> Self {
        self.uds_dir = Some(dir.to_path_buf());
        self
    }

    pub fn handoff(mut self, timeout: &str, drain_timeout: &str) -> Self {
        self.handoff_timeout = Some(timeout.into());
        self.drain_timeout = Some(drain_timeout.into());
        self
    }

    /// Writes `inherit_config: <on>` under `handoff:` (a new instance serving its predecessor's config).
    pub fn inherit_config(mut self, on: bool) -> Self {
        self.inherit_config = Some(on);
        self
    }

    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        y.push_str("listeners:\n");
        for l in &self.listeners {
            y.push_str(&format!("  - name: {}\n", l.name));
            y.push_str(&format!("    address: \"{}\"\n", l.address));
            y.push_str(&format!("    protocol: {}\n", l.protocol));
            y.push_str(&format!("    cluster: {}\n", l.cluster));
        }
        y.push_str("clusters:\n");
        for c in &self.clusters {
            y.push_str(&format!("  - name: {}\n", c.name));
            let eps: Vec<String> = c.endpoints.iter().map(|e| format!("\"{e}\"")).collect();
            y.push_str(&format!("    endpoints: [{}]\n", eps.join(", ")));
            if let Some(t) = &c.connect_timeout {
                y.push_str(&format!("    connect_timeout: {t}\n"));
            }
            if let Some(t) = &c.request_timeout {
                y.push_str(&format!("    request_timeout: {t}\n"));
            }
        }
        if let Some(a) = &self.admin {
            y.push_str(&format!("admin:\n  address: \"{a}\"\n"));
        }
        if self.uds_dir.is_some()
            || self.handoff_timeout.is_some()
            || self.drain_timeout.is_some()
            || self.inherit_config.is_some()
        {
            y.push_str("handoff:\n");
            if let Some(d) = &self.uds_dir {
                y.push_str(&format!("  uds_dir: \"{}\"\n", d.display()));
            }
            if let Some(t) = &self.handoff_timeout {
                y.push_str(&format!("  timeout: {t}\n"));
            }
            if let Some(t) = &self.drain_timeout {
                y.push_str(&format!("  drain_timeout: {t}\n"));
            }
            if let Some(on) = self.inherit_config {
                y.push_str(&format!("  inherit_config: {on}\n"));
            }
        }
        y
    }

    pub fn to_json(&self) -> String {
        let listeners: Vec<serde_json::Value> = self
            .listeners
            .iter()
            .map(|l| {
                serde_json::json!({"name": l.name, "address": l.address, "protocol": l.protocol, "cluster": l.cluster})
            })
            .collect();
        let clusters: Vec<serde_json::Value> = self
            .clusters
            .iter()
            .map(|c| {
                let mut v = serde_json::json!({"name": c.name, "endpoints": c.endpoints});
                if let Some(t) = &c.connect_timeout {
                    v["connect_timeout"] = t.clone().into();
                }
                if let Some(t) = &c.request_timeout {
                    v["request_timeout"] = t.clone().into();
                }
                v
            })
            .collect();
        let mut v = serde_json::json!({"listeners": listeners, "clusters": clusters});
        if let Some(a) = &self.admin {
            v["admin"] = serde_json::json!({ "address": a });
        }
        let mut h = serde_json::Map::new();
        if let Some(d) = &self.uds_dir {
            h.insert("uds_dir".into(), d.display().to_string().into());
        }
        if let Some(t) = &self.handoff_timeout {
            h.insert("timeout".into(), t.clone().into());
        }
        if let Some(t) = &self.drain_timeout {
            h.insert("drain_timeout".into(), t.clone().into());
        }
        if let Some(on) = self.inherit_config {
            h.insert("inherit_config".into(), on.into());
        }
        if !h.is_empty() {
            v["handoff"] = serde_json::Value::Object(h);
        }
        serde_json::to_string_pretty(&v).expect("serialize json config")
    }

    pub fn write_yaml(&self, dir: &TestDir, name: &str) -> PathBuf {
        dir.write(name, &self.to_yaml())
    }

    pub fn write_json(&self, dir: &TestDir, name: &str) -> PathBuf {
        dir.write(name, &self.to_json())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// upstreams
// ---------------------------------------------------------------------------------------------------------------

/// An in-process upstream HTTP server on 127.0.0.1:0 (HTTP/1.1 and h2c): every request gets 200 `ok`.
pub struct HttpUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl HttpUpstream {
    pub async fn start() -> HttpUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        upstream_reply(req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        HttpUpstream { addr, requests, task }
    }
}

impl Drop for HttpUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// 200 `ok`, after `sleep_ms` milliseconds if the query says `sleep_ms=N` (for in-flight requests).
async fn upstream_reply(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let sleep_ms = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("sleep_ms="))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = sleep_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// An in-process TCP echo server on 127.0.0.1:0: writes back whatever it reads; half-closes on EOF.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EchoUpstream {
    pub async fn start() -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        EchoUpstream { addr, task }
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------------------------
// baton processes
// ---------------------------------------------------------------------------------------------------------------

/// The environment a baton process sees. SIDECARSET_VERSION / SIDECARSET_VERSION_ALT are always set explicitly
/// (or explicitly absent); inherited ones, and inherited BATON_* variables, are removed.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub version: Option<String>,
    pub alt: Option<String>,
    pub extra: Vec<(String, String)>,
}

impl Env {
    /// VERSION / ALT both set.
    pub fn versions(version: &str, alt: &str) -> Env {
        Env {
            version: Some(version.into()),
            alt: Some(alt.into()),
            extra: vec![],
        }
    }

    /// Neither VERSION nor ALT set.
    pub fn unset() -> Env {
        Env::default()
    }

    /// Fresh slot at pod creation: (1, 0).
    pub fn fresh() -> Env {
        Env::versions("1", "0")
    }

    pub fn with(mut self, key: &str, value: &str) -> Env {
        self.extra.push((key.into(), value.into()));
        self
    }
}

/// A `std::process::Command` for the baton binary, with a scrubbed environment.
pub fn baton_command(args: &[&str], env: &Env) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
    cmd.args(args);
    for k in [
        "SIDECARSET_VERSION",
        "SIDECARSET_VERSION_ALT",
        "BATON_CONFIG",
        "BATON_UDS_DIR",
        "BATON_FAILPOINT",
    ] {
        cmd.env_remove(k);
    }
    if let Some(v) = &env.version {
        cmd.env("SIDECARSET_VERSION", v);
    }
    if let Some(v) = &env.alt {
        cmd.env("SIDECARSET_VERSION_ALT", v);
    }
    for (k, v) in &env.extra {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// A running `baton` process. Killed (SIGKILL) on drop; its stdout/stderr go to files in the test dir, and its
/// stderr is printed if the test is panicking when the handle is dropped.
pub struct Baton {
    pub name: String,
    child: std::process::Child,
    status: Option<ExitStatus>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    started: Instant,
}

impl Baton {
    /// Spawn `baton <args>` with `env`; `name` labels the process and its log files (`<name>.stderr`).
    pub fn spawn(dir: &TestDir, name: &str, args: &[&str], env: &Env) -> Baton {
        Baton::spawn_cmd(dir, name, baton_command(args, env))
    }

    /// Like [`Baton::spawn`], with RLIMIT_NOFILE set to `nofile` (through util-linux `prlimit`, exec'ing baton).
    pub fn spawn_with_nofile(dir: &TestDir, name: &str, args: &[&str], env: &Env, nofile: u32) -> Baton {
        let inner = baton_command(args, env);
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}")).arg("--").arg(inner.get_program());
        cmd.args(inner.get_args());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.stdin(Stdio::null());
        Baton::spawn_cmd(dir, name, cmd)
    }

    fn spawn_cmd(dir: &TestDir, name: &str, mut cmd: Command) -> Baton {
        let stdout_path = dir.join(&format!("{name}.stdout"));
        let stderr_path = dir.join(&format!("{name}.stderr"));
        cmd.stdout(fs::File::create(&stdout_path).expect("create stdout file"));
        cmd.stderr(fs::File::create(&stderr_path).expect("create stderr file"));
        let child = cmd.spawn().expect("spawn baton");
        Baton {
            name: name.into(),
            child,
            status: None,
            stdout_path,
            stderr_path,
            started: Instant::now(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Exit status if the process has exited (reaps it), without blocking.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Send SIGTERM (no-op if the process was already reaped).
    pub fn sigterm(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run kill -TERM");
        // kill may fail only if the process exited in between.
        assert!(
            st.success() || self.try_status().is_some(),
            "kill -TERM {} failed",
            self.pid()
        );
    }

    /// SIGKILL the process (a crash, as kubelet's grace-period kill) and reap it.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = Some(self.child.wait().expect("wait after kill"));
        }
    }

    /// Wait (async polling) up to `timeout` for the process to exit.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait (blocking polling) up to `timeout` for the process to exit.
    pub fn wait_timeout_blocking(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait up to `timeout` for the exit; panics (with stderr) if it does not exit in time. Returns the exit code
    /// (None if killed by a signal) and the time since spawn.
    pub async fn expect_exit(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        match self.wait_timeout(timeout).await {
            Some(s) => (s.code(), self.started.elapsed()),
            None => panic!(
                "{} (pid {}) did not exit within {:?}; stderr:\n{}",
                self.name,
                self.pid(),
                timeout,
                self.stderr()
            ),
        }
    }

    pub fn expect_exit_blocking(&mut self, timeout: Duration) -> Option<i32> {
        match self.wait_timeout_blocking(timeout) {
            Some(s) => s.code(),
            None => panic!(
                "{} (pid {}) did not exit within {:?}; stderr:\n{}",
                self.name,
                self.pid(),
                timeout,
                self.stderr()
            ),
        }
    }

    /// Panics (with stderr) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(s) = self.try_status() {
            panic!(
                "{} (pid {}) exited unexpectedly with {s}; stderr:\n{}",
                self.name,
                self.pid(),
                self.stderr()
            );
        }
    }

    /// Wait until `/ready` on `admin` answers 200; panics (with stderr) on timeout or if the process exits.
    pub async fn wait_ready(&mut self, admin: SocketAddr, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running();
            if let Ok(200) = ready_code(admin).await {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} (pid {}) not ready on {admin} within {:?}; stderr:\n{}",
                    self.name,
                    self.pid(),
                    timeout,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- {} (pid {}) exit {:?} stderr -----\n{}\n----- end {} -----",
                self.name,
                self.child.id(),
                self.status,
                self.stderr(),
                self.name
            );
        }
    }
}

/// Result of running baton to completion.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Run `baton <args>` to completion (blocking), killing it and panicking if it runs longer than `timeout`.
pub fn run_baton(dir: &TestDir, name: &str, args: &[&str], env: &Env, timeout: Duration) -> Outcome {
    let mut b = Baton::spawn(dir, name, args, env);
    let code = b.expect_exit_blocking(timeout);
    Outcome {
        code,
        stdout: b.stdout(),
        stderr: b.stderr(),
        elapsed: b.started.elapsed(),
    }
}

/// Async variant of [`run_baton`] (polls without blocking a runtime worker).
pub async fn run_baton_async(dir: &TestDir, name: &str, args: &[&str], env: &Env, timeout: Duration) -> Outcome {
    let mut b = Baton::spawn(dir, name, args, env);
    let (code, elapsed) = b.expect_exit(timeout).await;
    Outcome {
        code,
        stdout: b.stdout(),
        stderr: b.stderr(),
        elapsed,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// polling
// ---------------------------------------------------------------------------------------------------------------

/// Poll `cond` every 20ms until it yields true or `timeout` passes; returns whether it became true.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking variant of [`wait_until`].
/// Waits until every count `counts()` returns has grown by at least `n` from its value now; false on timeout.
pub async fn wait_each_grows(counts: impl Fn() -> Vec<u64>, n: u64, timeout: Duration) -> bool {
    let base = counts();
    wait_until(timeout, || {
        let grown = counts().iter().zip(&base).all(|(now, then)| *now >= then + n);
        async move { grown }
    })
    .await
}

pub fn wait_until_blocking(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// HTTP helpers (admin API, single requests)
// ---------------------------------------------------------------------------------------------------------------

/// A response fully read.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

async fn http1_connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn get_request(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(HOST, addr.to_string())
        .body(Empty::new())
        .expect("build request")
}

/// One GET over a new HTTP/1.1 connection, 3s timeout.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<Got> {
    let fut = async {
        let mut sender = http1_connect(addr).await?;
        let resp = sender
            .send_request(get_request(addr, path))
            .await
            .context("send request")?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.context("read body")?.to_bytes();
        Ok(Got { status, headers, body })
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .map_err(|_| anyhow!("GET http://{addr}{path}: timed out"))?
}

/// `GET /status` on the admin address, parsed as JSON.
pub async fn status(admin: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let got = http_get(admin, "/status").await?;
    if got.status != StatusCode::OK {
        bail!("/status answered {}", got.status);
    }
    serde_json::from_slice(&got.body).with_context(|| format!("/status body is not JSON: {:?}", got.body))
}

/// `GET /ready` status code.
pub async fn ready_code(admin: SocketAddr) -> anyhow::Result<u16> {
    Ok(http_get(admin, "/ready").await?.status.as_u16())
}

/// `/status` pid, if the admin answers.
pub async fn status_pid(admin: SocketAddr) -> Option<u64> {
    status(admin).await.ok().and_then(|s| s["pid"].as_u64())
}

/// One GET through the proxy: Ok if 200 `ok`.
pub async fn proxy_ok(addr: SocketAddr) -> anyhow::Result<()> {
    proxy_ok_path(addr, "/").await
}

/// One GET of `path` through the proxy: Ok if 200 `ok`.
pub async fn proxy_ok_path(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let got = http_get(addr, path).await?;
    if got.status != StatusCode::OK || &got.body[..] != b"ok" {
        bail!("proxy answered {} {:?}", got.status, got.body);
    }
    Ok(())
}

/// One TCP echo round trip through the proxy.
pub async fn tcp_echo_once(addr: SocketAddr, payload: &[u8]) -> anyhow::Result<()> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        s.write_all(payload).await.context("write")?;
        let mut buf = vec![0u8; payload.len()];
        s.read_exact(&mut buf).await.context("read echo")?;
        if buf != payload {
            bail!("echo mismatch");
        }
        s.shutdown().await.context("shutdown")?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.context("read to eof")?;
        if !rest.is_empty() {
            bail!("{} unexpected bytes after echo", rest.len());
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| anyhow!("tcp echo via {addr}: timed out"))?
}

/// Whether a TCP connect to `addr` is refused (nothing listening).
/// `GET /metrics` from the admin port, checking the Prometheus text content type.
pub async fn metrics(admin: SocketAddr) -> String {
    let got = http_get(admin, "/metrics").await.expect("GET /metrics");
    assert_eq!(got.status, 200);
    let ct = got
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "content-type {ct}");
    String::from_utf8(got.body.to_vec()).expect("utf-8")
}

/// The value of the sample line that starts with `series ` (exact series, labels included) in a /metrics text.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("sample {series}: {e}"))
}

/// Waits until an instance in `phase` has published itself in the uds dir (see `baton status`).
pub async fn wait_phase_published(uds_dir: &Path, phase: &str, timeout: Duration) -> bool {
    let needle = format!("\"phase\":\"{phase}\"");
    wait_until(timeout, || async {
        fs::read_dir(uds_dir)
            .map(|entries| {
                entries.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with("instance-")
                        && fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&needle))
                })
            })
            .unwrap_or(false)
    })
    .await
}

/// How many listening TCP sockets (IPv4 or IPv6) process `pid` holds: its socket fds matched against the
/// LISTEN entries of /proc/net/tcp{,6}.
pub fn listening_tcp_sockets(pid: u32) -> usize {
    let mut listening = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // cols[3] is the state (0A = LISTEN), cols[9] the inode.
            if cols.len() > 9 && cols[3] == "0A" {
                listening.insert(cols[9].to_string());
            }
        }
    }
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).expect("read the process's fds");
    fds.flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().to_string();
            t.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_string)
        })
        .filter(|inode| listening.contains(inode))
        .count()
}

pub async fn connect_refused(addr: SocketAddr) -> bool {
    match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// load clients
// ---------------------------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------------------------
// a standard setup: upstreams + config with an http listener, a tcp listener and an admin port
// ---------------------------------------------------------------------------------------------------------------

pub struct Setup {
    pub dir: TestDir,
    pub http_upstream: HttpUpstream,
    pub echo_upstream: EchoUpstream,
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub admin: SocketAddr,
    pub uds_dir: PathBuf,
    pub config: PathBuf,
    pub cfg: Config,
}

impl Setup {
    /// Upstreams, fresh ports, uds dir `<tmp>/uds` (empty), and `<tmp>/baton.yaml` with the given handoff timeout
    /// and drain timeout.
    pub async fn new(handoff_timeout: &str, drain_timeout: &str) -> Setup {
        let dir = TestDir::new();
        let http_upstream = HttpUpstream::start().await;
        let echo_upstream = EchoUpstream::start().await;
        let (http, tcp, admin) = (free_addr(), free_addr(), free_addr());
        let uds_dir = dir.subdir("uds");
        let cfg = Config::default()
            .listener("ingress", http, "http", "app")
            .listener("raw", tcp, "tcp", "echo")
            .cluster("app", &[http_upstream.addr])
            .cluster("echo", &[echo_upstream.addr])
            .admin(admin)
            .uds_dir(&uds_dir)
            .handoff(handoff_timeout, drain_timeout);
        let config = cfg.write_yaml(&dir, "baton.yaml");
        Setup {
            dir,
            http_upstream,
            echo_upstream,
            http,
            tcp,
            admin,
            uds_dir,
            config,
            cfg,
        }
    }

    pub fn config_str(&self) -> String {
        self.config.display().to_string()
    }

    pub fn uds_str(&self) -> String {
        self.uds_dir.display().to_string()
    }

    /// Spawn `baton run --config <cfg> --uds-dir <uds>`.
    pub fn spawn_run(&self, name: &str, env: &Env) -> Baton {
        let (c, u) = (self.config_str(), self.uds_str());
        Baton::spawn(&self.dir, name, &["run", "--config", &c, "--uds-dir", &u], env)
    }

    /// Spawn `baton migrate --config <cfg> --uds-dir <uds> --timeout <timeout>`.
    pub fn spawn_migrate(&self, name: &str, env: &Env, timeout: &str) -> Baton {
        let (c, u) = (self.config_str(), self.uds_str());
        Baton::spawn(
            &self.dir,
            name,
            &["migrate", "--config", &c, "--uds-dir", &u, "--timeout", timeout],
            env,
        )
    }

    /// Run `baton migrate` to completion (async polling), panicking if it runs longer than `limit`.
    pub async fn migrate(&self, name: &str, env: &Env, timeout: &str, limit: Duration) -> Outcome {
        let mut m = self.spawn_migrate(name, env, timeout);
        let (code, elapsed) = m.expect_exit(limit).await;
        Outcome {
            code,
            stdout: m.stdout(),
            stderr: m.stderr(),
            elapsed,
        }
    }
}

/// Asserts that `/status` (`st`) lists the proxy listeners `ingress` (http, `s.http`) and `raw` (tcp, `s.tcp`),
/// and that every listener it lists (the admin listener too, if it is listed) has the given origin.
pub fn assert_listeners(st: &serde_json::Value, s: &Setup, origin: &str) {
    let listeners = st["listeners"]
        .as_array()
        .unwrap_or_else(|| panic!("/status has no listeners array: {st}"));
    for (name, addr, protocol) in [("ingress", s.http, "http"), ("raw", s.tcp, "tcp")] {
        let l = listeners
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("listener {name} missing in /status: {st}"));
        assert_eq!(
            l["address"].as_str(),
            Some(addr.to_string().as_str()),
            "listener {name} address: {st}"
        );
        assert_eq!(l["protocol"].as_str(), Some(protocol), "listener {name} protocol: {st}");
    }
    for l in listeners {
        assert_eq!(
            l["origin"].as_str(),
            Some(origin),
            "listener {} origin: {st}",
            l["name"]
        );
    }
}

/// Values of the field `name` (any case), in order, in an HTTP/1 message head (start line, then field lines).
pub fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}
