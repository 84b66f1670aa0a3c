//! `demo`: two zero-downtime hot upgrades of baton under load, driven exactly as OpenKruise does it.
//!
//! Everything runs on loopback with ephemeral ports, in a fresh temporary directory that is removed at the
//! end (keep it with `--keep`). The demo plays kubelet and the SidecarSet controller for a pod with the two
//! sidecar slots `proxy-1` and `proxy-2` (see `../shared/kruise/README.md` for the env table):
//!
//! * T0, pod created: `proxy-1` runs v1 (`SIDECARSET_VERSION=1`, `ALT=0`), `proxy-2` the empty image (`0`, `1`);
//!   each container's postStart hook `baton migrate` runs right after it starts and must exit 0.
//! * Load starts: `loadgen` (keep-alive and new-connection HTTP clients) against baton's http listener, with
//!   one WebSocket client on one connection through that same listener (its `101` tunnel to the upstream's
//!   WebSocket echo: checksummed text and binary frames, every 10 ms) and one gRPC client (tonic, one channel,
//!   unary calls in a loop) through baton's second http listener, whose cluster is `protocol: h2c`; through the
//!   http listener also one SSE client reading the upstream's event stream (`GET /sse`, one checked event every
//!   50 ms, ids in order, on one connection for the whole run) and one upload client sending slow 1 MiB
//!   `POST /upload` requests (about 2.6 s each, chunked and with a `Content-Length` in turn, each answered with
//!   its length and checksum) on one keep-alive connection, so that an upgrade always finds both in the middle
//!   of an exchange; and through baton's tcp listener one TCP echo round trip every 100 ms on a new connection
//!   each, plus one every 100 ms on a single long-lived TCP stream.
//! * T1, upgrade v1→v2: kubelet stops the empty `proxy-2` (SIGTERM, must exit 0 promptly) and starts v2 in it
//!   (`R2`, `1`); its postStart (`baton migrate`) is the handoff and is timed.
//! * T2, reset: the controller gives `proxy-1` the empty image; kubelet SIGTERMs the old v1 process (it must
//!   drain and exit 0; timed) and starts the empty image (`0`, `R2`). baton's old instance usually exits 0 by
//!   itself right after draining; kubelet then first restarts it with the same image, now with the env
//!   (`1`, `R2`): that process must idle, and the reset SIGTERMs it instead.
//! * T3, upgrade v2→v3 the other way round: empty `proxy-1` stopped, v3 started there (`R3`, `R2`), postStart.
//! * T4, reset: `proxy-2` gets SIGTERM and restarts empty (`0`, `R3`).
//! * After each upgrade the demo waits for the SSE stream and the uploads to go on: a new event and a completed
//!   upload seen after it (within the pause, or 10 s more).
//! * Then the load stops and a summary is printed: requests, failures, keep-alive connections and the TCP
//!   stream reopened, WebSocket frames echoed, errors and reconnects, gRPC calls ok, failed and resent, SSE
//!   events, errors and reconnects, uploads ok and failed, handoff and drain times, exit codes.
//!
//! While running it prints one progress line per second and one line per Kubernetes step. Exit code 0 only
//! if no HTTP request, TCP round trip, gRPC call or upload failed, no keep-alive connection, not the long-lived
//! TCP stream, not the WebSocket, not the SSE stream and not the uploads' connection had to be reopened while the
//! load ran, the WebSocket and the SSE stream saw no error, SSE events and completed uploads were seen after each
//! upgrade (the upgrades hand them over, mid-exchange for the SSE stream and the upload in flight; the load is
//! stopped before the pod is deleted, so its end cannot close any), every
//! baton process exited 0 when told to, `/status` showed generations 1 → 2 → 3 from the expected processes, and
//! nothing else unexpected happened. gRPC calls that tonic refused unsent at an old instance's GOAWAY (HTTP/2
//! connections are not handed over, and hyper does not send such a call on the new connection by itself) are
//! sent again by the client, once, and shown as resent: they are not failures. Every child process is killed on
//! any exit path.
//!
//! ```text
//! make demo        # or: cargo build --release --bins --examples && target/release/examples/demo
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use clap::Parser;
use http::{header, Request};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use nix::errno::Errno;
use nix::sys::signal::Signal;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// SidecarSet resourceVersion written by the v1→v2 upgrade.
const R2: u64 = 7_340_032;
/// SidecarSet resourceVersion written by the v2→v3 upgrade.
const R3: u64 = 7_340_571;
/// `handoff.drain_timeout` in the generated config.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an old slot may take to exit after SIGTERM (drain timeout plus slack; kubelet would allow 30 s).
const DRAIN_DEADLINE: Duration = Duration::from_secs(15);
/// How long an idle (empty) slot may take to exit after SIGTERM.
const IDLE_STOP_DEADLINE: Duration = Duration::from_secs(3);
/// Time between kubelet restarting an exited old slot and the controller's reset stopping it again.
const RESTART_GAP: Duration = Duration::from_millis(500);
/// How long the demo waits, before a reset, for the old slot to be superseded (its probation is 2 s).
const SUPERSEDED_DEADLINE: Duration = Duration::from_secs(8);
/// Our own deadline for a postStart hook (kubelet has none; baton's default is 60 s).
const POST_START_DEADLINE: Duration = Duration::from_secs(30);
/// loadgen clients that reuse one keep-alive connection each.
const KEEPALIVE_CLIENTS: usize = 8;
/// loadgen clients that open a new connection per request.
const NEWCONN_CLIENTS: usize = 4;
/// Interval between TCP echo round trips.
const TCP_INTERVAL: Duration = Duration::from_millis(100);
/// Deadline for one TCP echo round trip.
const TCP_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for loadgen's next progress line (it prints one a second).
const MARK_DEADLINE: Duration = Duration::from_secs(3);
/// After the pause that follows an upgrade, how much longer the SSE stream and the uploads get to show they went
/// on (an upload takes about 2.6 s).
const GO_ON_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline for one admin HTTP request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The error `run` ends with on SIGINT/SIGTERM.
const INTERRUPTED: &str = "interrupted by a signal";
/// Environment variables that must not leak from the caller into the children.
const SCRUBBED_ENV: &[&str] = &[
    "SIDECARSET_VERSION",
    "SIDECARSET_VERSION_ALT",
    "BATON_CONFIG",
    "BATON_UDS_DIR",
    "BATON_FAILPOINT",
];

#[derive(Parser, Debug)]
#[command(about = "Two baton hot upgrades under load, driven the way OpenKruise SidecarSet does it")]
struct Args {
    /// The baton binary [default: `baton` next to the examples directory, i.e. target/release/baton].
    #[arg(long)]
    baton: Option<PathBuf>,
    /// The upstream example [default: next to this executable, i.e. target/release/examples/upstream].
    #[arg(long)]
    upstream: Option<PathBuf>,
    /// The loadgen example [default: next to this executable, i.e. target/release/examples/loadgen].
    #[arg(long)]
    loadgen: Option<PathBuf>,
    /// Seconds of load before each upgrade and before the end.
    #[arg(long, default_value_t = 3.0, value_parser = parse_pause)]
    pause: f64,
    /// Keep the temporary directory (config, uds dir, logs) instead of removing it.
    #[arg(long)]
    keep: bool,
}

fn parse_pause(s: &str) -> Result<f64> {
    let v: f64 = s.parse().with_context(|| format!("not a number of seconds: {s:?}"))?;
    if !(0.0..=60.0).contains(&v) {
        bail!("--pause must be between 0 and 60 seconds");
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------------------
// Output

/// `println!` without the panic on a closed stdout (e.g. `demo | head`): with `panic = "abort"` a panic would
/// skip the guards that kill the children.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` without the panic on a closed stderr.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

static START: OnceLock<Instant> = OnceLock::new();

fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Prints one timestamped line (stdout is line-locked, so lines from tasks never interleave).
fn log(msg: impl AsRef<str>) {
    say!("[{:5.1}s] {}", elapsed(), msg.as_ref());
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

// ---------------------------------------------------------------------------------------------------------
// Child processes

/// Process control: `kill(2)` through nix, and the death signal that ties every child's life to the demo's.
mod sys {
    use std::ffi::OsStr;
    use std::sync::OnceLock;

    use nix::errno::Errno;
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    /// Sends `sig` to the single process `pid` (never to a group: `pid` must be positive).
    pub fn send_signal(pid: i32, sig: Signal) -> nix::Result<()> {
        if pid <= 0 {
            return Err(Errno::EINVAL);
        }
        nix::sys::signal::kill(Pid::from_raw(pid), sig)
    }

    /// The launcher that makes a child get SIGKILL when the demo dies, however it dies (even SIGKILL or an abort,
    /// which skip every drop guard): `PR_SET_PDEATHSIG` (prctl(2)). Setting it on a child takes code between fork
    /// and exec (`pre_exec`, which is unsafe); util-linux `setpriv --pdeathsig KILL -- PROGRAM` sets it on itself
    /// and then execs PROGRAM, which keeps it and keeps the pid, so signals sent to the child reach PROGRAM.
    /// Not covered: the demo dying between a fork and setpriv's prctl. The death signal follows the *thread*
    /// that spawned the child, hence the single-threaded runtime in `main`.
    const LAUNCHER: [&str; 4] = ["setpriv", "--pdeathsig", "KILL", "--"];

    static LAUNCHER_WORKS: OnceLock<bool> = OnceLock::new();

    /// Whether setpriv is there and can set the death signal (a util-linux with `--pdeathsig`, Linux only).
    /// Checked once, by running `setpriv --pdeathsig KILL -- true`; without it the drop guards are all there is.
    pub fn launcher_works() -> bool {
        *LAUNCHER_WORKS.get_or_init(|| {
            std::process::Command::new(LAUNCHER[0])
                .args(&LAUNCHER[1..])
                .arg("true")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
    }

    /// A command that runs `program`, through the launcher when it works.
    pub fn dying_with_parent(program: impl AsRef<OsStr>) -> tokio::process::Command {
        if launcher_works() {
            let mut cmd = tokio::process::Command::new(LAUNCHER[0]);
            cmd.args(&LAUNCHER[1..]).arg(program);
            cmd
        } else {
            tokio::process::Command::new(program)
        }
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug)]
struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
    at: Instant,
}

impl Exit {
    fn from_status(status: std::io::Result<ExitStatus>) -> Exit {
        use std::os::unix::process::ExitStatusExt as _;
        let (code, signal) = match status {
            Ok(status) => (status.code(), status.signal()),
            Err(_) => (None, None),
        };
        Exit {
            code,
            signal,
            at: Instant::now(),
        }
    }

    fn success(&self) -> bool {
        self.code == Some(0)
    }

    fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "unknown exit".into(),
        }
    }
}

/// A `Command` for `program` without the caller's baton/Kruise env, and without colours in log files.
fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = sys::dying_with_parent(program);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// A running child. A background task owns the `tokio::process::Child` and publishes its exit; dropping the
/// `Proc` SIGKILLs the process if it is still running (and the `Child` itself is `kill_on_drop`), so no
/// child outlives the demo whatever path it exits by.
struct Proc {
    name: String,
    pid: i32,
    exit: watch::Receiver<Option<Exit>>,
    waiter: JoinHandle<()>,
}

impl Proc {
    /// Spawns `cmd` in its own process group (a Ctrl-C on the terminal reaches only the demo, which then
    /// stops everything itself). Returns the child's stdout if it was piped.
    fn spawn(name: impl Into<String>, cmd: &mut Command) -> Result<(Proc, Option<ChildStdout>)> {
        let name = name.into();
        cmd.stdin(Stdio::null()).kill_on_drop(true).process_group(0);
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .with_context(|| format!("{name} has no pid"))?;
        let stdout = child.stdout.take();
        let (tx, exit) = watch::channel(None);
        let waiter = tokio::spawn(async move {
            let status = child.wait().await;
            let _ = tx.send(Some(Exit::from_status(status)));
        });
        Ok((
            Proc {
                name,
                pid,
                exit,
                waiter,
            },
            stdout,
        ))
    }

    fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Signals the process unless it has already exited.
    fn signal(&self, sig: Signal) -> Result<()> {
        if self.exited().is_some() {
            return Ok(());
        }
        match sys::send_signal(self.pid, sig) {
            // Exited (and was reaped by the waiter) since the check above.
            Err(Errno::ESRCH) => Ok(()),
            other => other.with_context(|| format!("sending {} to {}", sig.as_str(), self.name)),
        }
    }

    /// Waits for the exit; `None` on timeout.
    async fn wait(&mut self, timeout: Duration) -> Option<Exit> {
        let mut exit = self.exit.clone();
        let result = tokio::time::timeout(timeout, exit.wait_for(|e| e.is_some())).await;
        match result {
            Ok(Ok(e)) => *e,
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = sys::send_signal(self.pid, Signal::SIGKILL);
        }
        self.waiter.abort();
    }
}

// ---------------------------------------------------------------------------------------------------------
// Admin API

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
struct Status {
    pid: i64,
    generation: u64,
    role: String,
    phase: String,
    listeners: Vec<StatusListener>,
    /// The other live instances on the uds dir (the superseded one, the idle slot).
    others: Vec<OtherInstance>,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
struct OtherInstance {
    pid: i64,
    phase: String,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(default)]
struct StatusListener {
    name: String,
    origin: String,
}

/// `GET path` on a new connection; returns the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.context("connecting")?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::get(path)
            .header(header::HOST, addr.to_string())
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .context("building the request")?;
        let resp = sender.send_request(req).await.context("sending the request")?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.context("reading the body")?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(ADMIN_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(anyhow!("timed out after {}", ms(ADMIN_TIMEOUT))))
        .with_context(|| format!("GET http://{addr}{path}"))
}

async fn get_status(admin: SocketAddr) -> Result<Status> {
    let (code, body) = http_get(admin, "/status").await?;
    if code != 200 {
        bail!("GET /status returned {code}: {}", body.trim());
    }
    serde_json::from_str(&body).with_context(|| format!("parsing /status: {body}"))
}

// ---------------------------------------------------------------------------------------------------------
// Live view shared with the progress printer

/// What the demo knows about one slot (container) of the pod.
#[derive(Clone, Default)]
struct SlotView {
    /// Image label: `v1`, `v2`, `v3` or `empty`.
    label: String,
    pid: Option<i32>,
    idle: bool,
    stopping: bool,
    exit: Option<watch::Receiver<Option<Exit>>>,
}

#[derive(Default)]
struct Board {
    slots: [SlotView; 2],
    /// Latest loadgen progress line.
    load: Option<LoadReport>,
    /// loadgen progress lines read so far.
    reports: u64,
}

#[derive(Deserialize, Debug, Clone, Copy)]
struct LoadReport {
    requests: u64,
    failed: u64,
    rps: f64,
    /// Keep-alive connections given up so far (`None` from a loadgen that does not count them).
    keepalive_reopened: Option<u64>,
    /// The WebSocket client's counts so far (`None` without `--websocket`).
    ws_frames: Option<u64>,
    ws_errors: Option<u64>,
    ws_reconnects: Option<u64>,
    /// The gRPC client's counts so far (`None` without `--grpc`).
    grpc_ok: Option<u64>,
    grpc_failed: Option<u64>,
    grpc_resent: Option<u64>,
    /// The SSE client's counts so far (`None` without `--sse`).
    sse_events: Option<u64>,
    sse_errors: Option<u64>,
    sse_reconnects: Option<u64>,
    /// The upload client's counts so far (`None` without `--upload`).
    uploads_ok: Option<u64>,
    uploads_failed: Option<u64>,
}

#[derive(Deserialize, Debug, Clone, Default)]
struct LoadSummary {
    requests: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    /// Keep-alive connections opened, first ones included.
    keepalive_opened: Option<u64>,
    /// Keep-alive connections the clients had to give up (and reopen) while the load ran.
    keepalive_reopened: Option<u64>,
    #[serde(default)]
    keepalive_reopen_reasons: BTreeMap<String, u64>,
    /// WebSocket frames echoed intact, their payload bytes, errors and connections opened after the first.
    ws_frames: Option<u64>,
    ws_bytes: Option<u64>,
    ws_errors: Option<u64>,
    ws_reconnects: Option<u64>,
    #[serde(default)]
    ws_error_kinds: BTreeMap<String, u64>,
    /// gRPC calls answered, failed, and refused unsent by tonic at a GOAWAY then sent again; the channel's TCP
    /// connections.
    grpc_ok: Option<u64>,
    grpc_failed: Option<u64>,
    grpc_resent: Option<u64>,
    grpc_connections: Option<u64>,
    #[serde(default)]
    grpc_errors: BTreeMap<String, u64>,
    #[serde(default)]
    grpc_resent_reasons: BTreeMap<String, u64>,
    /// SSE events checked, errors and connections opened after the first.
    sse_events: Option<u64>,
    sse_errors: Option<u64>,
    sse_reconnects: Option<u64>,
    #[serde(default)]
    sse_error_kinds: BTreeMap<String, u64>,
    /// Uploads answered right (and their bytes), failed, and connections opened after the first.
    uploads_ok: Option<u64>,
    uploads_failed: Option<u64>,
    upload_bytes: Option<u64>,
    upload_reconnects: Option<u64>,
    #[serde(default)]
    upload_errors: BTreeMap<String, u64>,
}

impl LoadSummary {
    /// Whether loadgen should have exited 0: nothing failed, the WebSocket, the SSE stream and the uploads had
    /// no error and no reconnect.
    fn clean(&self) -> bool {
        self.failed == 0
            && self.ws_errors.unwrap_or(0) == 0
            && self.ws_reconnects.unwrap_or(0) == 0
            && self.grpc_failed.unwrap_or(0) == 0
            && self.sse_errors.unwrap_or(0) == 0
            && self.sse_reconnects.unwrap_or(0) == 0
            && self.uploads_failed.unwrap_or(0) == 0
            && self.upload_reconnects.unwrap_or(0) == 0
    }
}

#[derive(Default)]
struct TcpStats {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Connections opened (long-lived stream only).
    opened: AtomicU64,
    /// Connections given up after a failed round trip (long-lived stream only).
    reopened: AtomicU64,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a task panicked while holding it; the data is still fine for display.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prints one progress line per second until aborted. Started with loadgen; ticking half a second out of
/// phase with loadgen's own reports, each line shows the latest report: `tcp=` and `stream=` are round trips
/// ok/failed, `ws=` WebSocket frames echoed/errors and reconnects, `grpc=` calls ok/failed, `resent=` gRPC calls
/// sent again after tonic refused them unsent at a GOAWAY, `sse=` SSE events/errors and reconnects, `up=` uploads
/// ok/failed.
async fn progress(board: Shared<Board>, tcp: Arc<TcpStats>, stream: Arc<TcpStats>, admin: SocketAddr) {
    let period = Duration::from_secs(1);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period / 2, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let status = get_status(admin).await.ok();
        let board = lock(&board);
        let load = match board.load {
            Some(l) => format!(
                "rps={:>7.0} requests={:>8} failed={} reopened={}",
                l.rps,
                l.requests,
                l.failed,
                l.keepalive_reopened.map_or_else(|| "-".into(), |r| r.to_string())
            ),
            None => format!("rps={:>7} requests={:>8} failed=- reopened=-", "-", "-"),
        };
        let streams = match board.load {
            Some(l) => format!(
                " ws={}/{} grpc={}/{} resent={} sse={}/{} up={}/{}",
                opt(l.ws_frames),
                opt(l.ws_errors.zip(l.ws_reconnects).map(|(e, r)| e + r)),
                opt(l.grpc_ok),
                opt(l.grpc_failed),
                opt(l.grpc_resent),
                opt(l.sse_events),
                opt(l.sse_errors.zip(l.sse_reconnects).map(|(e, r)| e + r)),
                opt(l.uploads_ok),
                opt(l.uploads_failed)
            ),
            None => " ws=-/- grpc=-/- resent=- sse=-/- up=-/-".into(),
        };
        let tcp_line = format!(
            "tcp={}/{} stream={}/{}{streams}",
            tcp.ok.load(Ordering::Relaxed),
            tcp.failed.load(Ordering::Relaxed),
            stream.ok.load(Ordering::Relaxed),
            stream.failed.load(Ordering::Relaxed)
        );
        let mut phase = String::new();
        for (i, slot) in board.slots.iter().enumerate() {
            let _ = write!(phase, " proxy-{}={}", i + 1, slot_phase(slot, status.as_ref()));
        }
        let admin_line = match &status {
            Some(s) => format!("admin: pid {} gen {}", s.pid, s.generation),
            None => "admin: no answer".into(),
        };
        log(format!("{load} {tcp_line}  phase:{phase}  ({admin_line})"));
    }
}

/// A count, or `-` when loadgen does not report it.
fn opt(n: Option<u64>) -> String {
    n.map_or_else(|| "-".into(), |n| n.to_string())
}

fn slot_phase(slot: &SlotView, status: Option<&Status>) -> String {
    let Some(pid) = slot.pid else { return "-".into() };
    let exited = slot.exit.as_ref().and_then(|e| *e.borrow());
    let state = if let Some(exit) = exited {
        format!("exited({})", exit.describe())
    } else if let Some(s) = status.filter(|s| s.pid == i64::from(pid)) {
        s.phase.clone()
    } else if let Some(o) = status.and_then(|s| s.others.iter().find(|o| o.pid == i64::from(pid))) {
        // The serving instance's view of the uds dir: e.g. `superseded` for the slot that handed over.
        o.phase.clone()
    } else if slot.stopping {
        "stopping".into()
    } else if slot.idle {
        "idle".into()
    } else if status.is_some() {
        "handed-off".into()
    } else {
        "starting".into()
    };
    format!("{}:{state}", slot.label)
}

// ---------------------------------------------------------------------------------------------------------
// TCP round trips

async fn tcp_checker(addr: SocketAddr, stats: Arc<TcpStats>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TCP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let result = tokio::time::timeout(TCP_TIMEOUT, tcp_round_trip(addr, n))
            .await
            .unwrap_or_else(|_| Err("timeout".into()));
        match result {
            Ok(()) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(kind) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                log(format!("TCP round trip #{n} FAILED: {kind}"));
                *lock(&stats.errors).entry(kind).or_insert(0) += 1;
            }
        }
    }
}

/// One long-lived TCP connection through the tcp listener, one echo round trip on it every `TCP_INTERVAL`: the
/// upgrades hand it over, so it never breaks. After a failed round trip the stream is given up (counted in
/// `reopened`) and the next round trip opens a new one.
async fn tcp_stream_checker(addr: SocketAddr, stats: Arc<TcpStats>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TCP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stream: Option<TcpStream> = None;
    for n in 0u64.. {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let attempt = async {
            let conn = match &mut stream {
                Some(conn) => conn,
                None => {
                    let conn = tcp_connect(addr).await?;
                    stats.opened.fetch_add(1, Ordering::Relaxed);
                    stream.insert(conn)
                }
            };
            tcp_echo(conn, &format!("baton demo tcp stream round trip {n}\n")).await
        };
        let result = tokio::time::timeout(TCP_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err("timeout".into()));
        match result {
            Ok(()) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(kind) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let reopen = if stream.take().is_some() {
                    stats.reopened.fetch_add(1, Ordering::Relaxed);
                    "; the stream is given up and reopened"
                } else {
                    ""
                };
                log(format!("TCP stream round trip #{n} FAILED: {kind}{reopen}"));
                *lock(&stats.errors).entry(kind).or_insert(0) += 1;
            }
        }
    }
    // Returning drops (closes) the stream: the pod deletion must not wait for it.
}

fn io_error(stage: &str, e: std::io::Error) -> String {
    format!("{stage}:{:?}", e.kind())
}

async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| io_error("connect", e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Writes `msg` and reads the same bytes back.
async fn tcp_echo(stream: &mut TcpStream, msg: &str) -> Result<(), String> {
    stream
        .write_all(msg.as_bytes())
        .await
        .map_err(|e| io_error("write", e))?;
    let mut buf = vec![0u8; msg.len()];
    stream.read_exact(&mut buf).await.map_err(|e| io_error("read", e))?;
    if buf != msg.as_bytes() {
        return Err("echo mismatch".into());
    }
    Ok(())
}

/// Connect, write a line, read the same line back, close.
async fn tcp_round_trip(addr: SocketAddr, n: u64) -> Result<(), String> {
    let mut stream = tcp_connect(addr).await?;
    tcp_echo(&mut stream, &format!("baton demo tcp round trip {n}\n")).await
}

// ---------------------------------------------------------------------------------------------------------
// The scenario

struct Paths {
    baton: PathBuf,
    upstream: PathBuf,
    loadgen: PathBuf,
}

impl Paths {
    fn resolve(args: &Args) -> Result<Paths> {
        // This executable lives in <target>/release/examples/; its siblings are the other examples.
        let examples_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf));
        let default = |rel: &str, fallback: &str| -> PathBuf {
            examples_dir
                .as_ref()
                .and_then(|dir| std::fs::canonicalize(dir.join(rel)).ok())
                .filter(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from(fallback))
        };
        let paths = Paths {
            baton: args
                .baton
                .clone()
                .unwrap_or_else(|| default("../baton", "target/release/baton")),
            upstream: args
                .upstream
                .clone()
                .unwrap_or_else(|| default("upstream", "target/release/examples/upstream")),
            loadgen: args
                .loadgen
                .clone()
                .unwrap_or_else(|| default("loadgen", "target/release/examples/loadgen")),
        };
        for (what, path) in [
            ("baton", &paths.baton),
            ("upstream", &paths.upstream),
            ("loadgen", &paths.loadgen),
        ] {
            if !path.is_file() {
                bail!(
                    "{what} binary not found at {} (build with `make build`, or pass --{what} PATH)",
                    path.display()
                );
            }
        }
        Ok(paths)
    }
}

/// A container of the pod and the process running in it.
struct Slot {
    /// 1 or 2 (`proxy-1`, `proxy-2`).
    index: usize,
    /// Image label: `v1`, `v2`, `v3` or `empty`.
    label: String,
    /// The SIDECARSET_VERSION it was started with.
    version: u64,
    proc: Proc,
}

/// One hot upgrade's measurements.
struct Upgrade {
    name: String,
    /// Duration of the new slot's postStart (`baton migrate`).
    handoff: Duration,
    generation: u64,
    /// When the old serving process exited (on its own after the handoff, or after SIGTERM at the reset).
    drain: String,
    old_exit: Option<Exit>,
}

/// One line of the exit-code table.
struct ExitRecord {
    what: String,
    exit: Option<Exit>,
    note: String,
}

struct Demo {
    paths: Paths,
    dir: PathBuf,
    config: PathBuf,
    admin: SocketAddr,
    board: Shared<Board>,
    problems: Vec<String>,
    upgrades: Vec<Upgrade>,
    exits: Vec<ExitRecord>,
    /// Number of baton processes started so far (names the log files).
    started: usize,
}

impl Demo {
    fn problem(&mut self, msg: impl Into<String>) {
        let msg = msg.into();
        log(format!("UNEXPECTED: {msg}"));
        self.problems.push(msg);
    }

    /// The first loadgen progress line printed from now on (waited for, at most [`MARK_DEADLINE`]): where the
    /// load stands after a step, nothing that came before it counted as after it. `None` if none came.
    async fn mark(&self) -> Option<LoadReport> {
        let seen = lock(&self.board).reports;
        let deadline = Instant::now() + MARK_DEADLINE;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let board = lock(&self.board);
            if board.reports > seen {
                return board.load;
            }
        }
        None
    }

    /// Checks that the SSE stream and the uploads went on after an upgrade: a loadgen progress line with more
    /// SSE events and more completed uploads than `mark` (taken right after it), waiting for one at most
    /// [`GO_ON_DEADLINE`].
    async fn check_streams_go_on(&mut self, upgrade: &str, mark: Option<LoadReport>) {
        let Some(mark) = mark else {
            self.problem(format!("loadgen printed no progress line after the {upgrade} upgrade"));
            return;
        };
        let deadline = Instant::now() + GO_ON_DEADLINE;
        loop {
            let now = lock(&self.board).load;
            let (sse, uploads) = now.map_or((false, false), |l| {
                (l.sse_events > mark.sse_events, l.uploads_ok > mark.uploads_ok)
            });
            if sse && uploads {
                return;
            }
            if Instant::now() >= deadline {
                if !sse {
                    self.problem(format!(
                        "no SSE event arrived after the {upgrade} upgrade (events: {} then, {} now)",
                        opt(mark.sse_events),
                        opt(now.and_then(|l| l.sse_events))
                    ));
                }
                if !uploads {
                    self.problem(format!(
                        "no upload completed after the {upgrade} upgrade (uploads: {} then, {} now)",
                        opt(mark.uploads_ok),
                        opt(now.and_then(|l| l.uploads_ok))
                    ));
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_file(&self, name: &str) -> Result<(std::fs::File, std::fs::File)> {
        let path = self.dir.join("logs").join(name);
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let clone = file.try_clone().context("duplicating a log file handle")?;
        Ok((file, clone))
    }

    fn baton_cmd(&self, sub: &str, version: u64, alt: u64, log_name: &str) -> Result<Command> {
        let (out, err) = self.log_file(log_name)?;
        let mut cmd = command(&self.paths.baton);
        cmd.arg(sub)
            .arg("--config")
            .arg(&self.config)
            .env("SIDECARSET_VERSION", version.to_string())
            .env("SIDECARSET_VERSION_ALT", alt.to_string())
            .stdout(out)
            .stderr(err);
        Ok(cmd)
    }

    /// kubelet starts container `proxy-<slot>` running `baton run`, then runs its postStart hook
    /// (`baton migrate`, same env) to completion. Returns the process and the hook's duration.
    async fn start_slot(&mut self, slot: usize, label: &str, version: u64, alt: u64) -> Result<(Slot, Duration)> {
        self.started += 1;
        let name = format!("proxy-{slot} {label} ({version}/{alt})");
        let log_base = format!("{:02}-proxy-{slot}-{label}", self.started);
        let mut cmd = self.baton_cmd("run", version, alt, &format!("{log_base}.run.log"))?;
        let (proc, _) = Proc::spawn(name.clone(), &mut cmd)?;
        log(format!(
            "kubelet: start proxy-{slot} image {label}: `baton run` SIDECARSET_VERSION={version} \
             SIDECARSET_VERSION_ALT={alt} -> pid {}",
            proc.pid
        ));
        let idle = version == 0 || version < alt;
        lock(&self.board).slots[slot - 1] = SlotView {
            label: label.into(),
            pid: Some(proc.pid),
            idle,
            stopping: false,
            exit: Some(proc.exit.clone()),
        };

        let mut hook = self.baton_cmd("migrate", version, alt, &format!("{log_base}.poststart.log"))?;
        let started = Instant::now();
        let (mut hook, _) = Proc::spawn(format!("postStart of proxy-{slot}"), &mut hook)?;
        let exit = hook.wait(POST_START_DEADLINE).await;
        let took = started.elapsed();
        match exit {
            Some(e) if e.success() => log(format!(
                "kubelet: postStart proxy-{slot}: `baton migrate` exit 0 after {}",
                ms(took)
            )),
            Some(e) => {
                let why = last_line(&self.dir.join("logs").join(format!("{log_base}.poststart.log")));
                bail!(
                    "postStart of proxy-{slot} (`baton migrate`, {version}/{alt}) failed: {}: {why}",
                    e.describe()
                );
            }
            None => bail!(
                "postStart of proxy-{slot} (`baton migrate`, {version}/{alt}) still running after {}",
                ms(POST_START_DEADLINE)
            ),
        }
        if let Some(e) = proc.exited() {
            bail!("{name} exited right after its postStart: {}", e.describe());
        }
        Ok((
            Slot {
                index: slot,
                label: label.into(),
                version,
                proc,
            },
            took,
        ))
    }

    /// kubelet stops a container: SIGTERM, then waits up to `deadline` (SIGKILL after that). Returns the exit
    /// (None if it had to be killed) and the time from SIGTERM to exit.
    async fn stop_slot(&mut self, slot: Slot, deadline: Duration, why: &str) -> (Option<Exit>, Duration) {
        let Slot {
            index: slot, mut proc, ..
        } = slot;
        lock(&self.board).slots[slot - 1].stopping = true;
        let name = proc.name.clone();
        let sent = Instant::now();
        if let Err(err) = proc.signal(Signal::SIGTERM) {
            self.problem(format!("{err:#}"));
        }
        log(format!("kubelet: {why}: SIGTERM proxy-{slot} (pid {})", proc.pid));
        let exit = proc.wait(deadline).await;
        let took = sent.elapsed();
        match exit {
            Some(e) => {
                log(format!(
                    "kubelet: proxy-{slot} (pid {}) {} after {}",
                    proc.pid,
                    e.describe(),
                    ms(took)
                ));
                if !e.success() {
                    self.problem(format!("{name} ended with {} after SIGTERM", e.describe()));
                }
            }
            None => {
                let _ = proc.signal(Signal::SIGKILL);
                self.problem(format!(
                    "{name} did not exit within {} of SIGTERM; killed",
                    ms(deadline)
                ));
            }
        }
        self.exits.push(ExitRecord {
            what: name,
            exit,
            note: format!("{why}: SIGTERM -> exit {}", ms(took)),
        });
        (exit, took)
    }

    /// Polls `/ready` until it answers 200 (while `slot` keeps running).
    async fn wait_ready(&mut self, slot: &Slot, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = slot.proc.exited() {
                bail!("{} exited ({}) before it was ready", slot.proc.name, e.describe());
            }
            match http_get(self.admin, "/ready").await {
                Ok((200, _)) => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok((code, body)) => bail!("admin /ready still {code} ({}) after {}", body.trim(), ms(timeout)),
                Err(err) => bail!("admin /ready not answering after {}: {err:#}", ms(timeout)),
            }
        }
    }

    /// Checks that `/status` is answered by `proc` with the expected generation and role.
    /// Waits up to [`SUPERSEDED_DEADLINE`] for the serving instance's `/status` to list `old` as superseded.
    async fn await_superseded(&self, old: &Slot, new_started: Instant) {
        let pid = i64::from(old.proc.pid);
        let deadline = Instant::now() + SUPERSEDED_DEADLINE;
        while Instant::now() < deadline && old.proc.exited().is_none() {
            let listed = get_status(self.admin)
                .await
                .ok()
                .and_then(|s| s.others.iter().find(|o| o.pid == pid).map(|o| o.phase.clone()));
            if listed.as_deref() == Some("superseded") {
                log(format!(
                    "proxy-{} ({}) handed everything over: superseded, holding nothing until the reset ({} after \
                     the new slot started)",
                    old.index,
                    old.label,
                    ms(new_started.elapsed())
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        log(format!(
            "proxy-{} ({}) not superseded yet after {}: resetting it anyway",
            old.index,
            old.label,
            ms(new_started.elapsed())
        ));
    }

    async fn check_status(&mut self, slot: &Slot, generation: u64, role: &str) -> Result<Status> {
        let proc = &slot.proc;
        // The admin socket may still be served by the old process for a moment after the handoff.
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            let status = get_status(self.admin).await;
            match status {
                Ok(s) if s.pid == i64::from(proc.pid) => break s,
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Ok(s) => bail!(
                    "/status is answered by pid {} instead of {} ({})",
                    s.pid,
                    proc.pid,
                    proc.name
                ),
                Err(err) => return Err(err),
            }
        };
        let origins: Vec<String> = status
            .listeners
            .iter()
            .map(|l| format!("{}={}", l.name, l.origin))
            .collect();
        log(format!(
            "admin /status: pid {} generation {} role {} phase {} listeners [{}]",
            status.pid,
            status.generation,
            status.role,
            status.phase,
            origins.join(" ")
        ));
        if status.generation != generation {
            self.problem(format!(
                "{}: generation {} (expected {generation})",
                proc.name, status.generation
            ));
        }
        if status.role != role {
            self.problem(format!("{}: role {} (expected {role})", proc.name, status.role));
        }
        if status.phase != "serving" {
            self.problem(format!("{}: phase {} (expected serving)", proc.name, status.phase));
        }
        // Every configured listener must be there with the right origin (an admin entry may be listed too).
        let want_origin = if role == "takeover" { "inherited" } else { "bound" };
        let listed = |name: &str| status.listeners.iter().any(|l| l.name == name);
        if !listed("ingress")
            || !listed("echo")
            || !listed("grpc")
            || status.listeners.iter().any(|l| l.origin != want_origin)
        {
            self.problem(format!(
                "{}: listeners [{}] (expected ingress, echo and grpc, all {want_origin})",
                proc.name,
                origins.join(" ")
            ));
        }
        Ok(status)
    }

    /// Verifies an idle slot stays out of the way: still running, and `/status` still from `serving`.
    async fn check_idle(&mut self, idle: &Slot, serving: &Slot) {
        let (idle, serving) = (&idle.proc, &serving.proc);
        if let Some(e) = idle.exited() {
            self.problem(format!("idle {} exited: {}", idle.name, e.describe()));
        }
        match get_status(self.admin).await {
            Ok(s) if s.pid == i64::from(serving.pid) => {}
            Ok(s) => self.problem(format!("/status answered by pid {} instead of {}", s.pid, serving.name)),
            Err(err) => self.problem(format!("{err:#}")),
        }
    }

    /// One SidecarSet hot upgrade: the idle slot `empty` is restarted with the new image (SIDECARSET_VERSION
    /// `version`, ALT `alt`) and its postStart hands over; then the controller resets `old` to the empty
    /// image. Returns (new serving slot, new idle slot).
    async fn upgrade(
        &mut self,
        name: &str,
        old: Slot,
        empty: Slot,
        new_label: &str,
        (version, alt): (u64, u64),
        generation: u64,
    ) -> Result<(Slot, Slot)> {
        let (old_slot, new_slot) = (old.index, empty.index);
        log(format!(
            "=== upgrade {name}: SidecarSet updated, proxy-{new_slot} gets image {new_label}"
        ));
        // Changing the image of the empty container restarts it: kubelet stops the idle process first.
        let (exit, took) = self.stop_slot(empty, IDLE_STOP_DEADLINE, "image change").await;
        if exit.is_some_and(|e| e.success()) && took > Duration::from_secs(1) {
            self.problem(format!("idle proxy-{new_slot} took {} to exit after SIGTERM", ms(took)));
        }

        let new_started = Instant::now();
        let (new, handoff) = self.start_slot(new_slot, new_label, version, alt).await?;
        self.check_status(&new, generation, "takeover").await?;
        // Meanwhile the old slot hands over its connections, ends its probation, and (the Kruise env is set) idles
        // as superseded instead of exiting into a kubelet restart.
        self.await_superseded(&old, new_started).await;

        // The controller resets the old slot to the empty image once the new one is running and ready.
        log(format!("=== reset: proxy-{old_slot} gets the empty image"));
        let old_name = old.proc.name.clone();
        let (drain, old_exit) = match old.proc.exited() {
            None => {
                let reset_at = Instant::now();
                let (exit, took) = self.stop_slot(old, DRAIN_DEADLINE, "reset").await;
                let drain = match exit {
                    // It exited by itself in the instant between the check above and the SIGTERM.
                    Some(e) if e.at <= reset_at => format!(
                        "on its own, {} after the new slot started",
                        ms(e.at.saturating_duration_since(new_started))
                    ),
                    Some(e) => format!(
                        "{} after SIGTERM at the reset ({} after the new slot started)",
                        ms(took),
                        ms(e.at.saturating_duration_since(new_started))
                    ),
                    None => format!("still running {} after SIGTERM", ms(took)),
                };
                (drain, exit)
            }
            Some(e) => {
                // baton exits by itself once drained. kubelet then restarts the container with the same image;
                // the downward-API env now reads (old version, new version), so the restarted process must idle
                // until the reset stops it.
                let drain = format!(
                    "on its own, {} after the new slot started",
                    ms(e.at.saturating_duration_since(new_started))
                );
                log(format!("{old_name} had already exited ({}), {drain}", e.describe()));
                self.exits.push(ExitRecord {
                    what: old_name.clone(),
                    exit: Some(e),
                    note: format!("handed off, exited {drain}"),
                });
                if !e.success() {
                    self.problem(format!("{old_name} ended with {}", e.describe()));
                }
                log(format!(
                    "kubelet: proxy-{old_slot} exited, restart it with the same image"
                ));
                let (restarted, _) = self.start_slot(old_slot, &old.label, old.version, version).await?;
                // Neither a kubelet restart nor the controller's reaction is instantaneous.
                tokio::time::sleep(RESTART_GAP).await;
                self.check_idle(&restarted, &new).await;
                self.stop_slot(restarted, IDLE_STOP_DEADLINE, "reset").await;
                (drain, Some(e))
            }
        };
        let (empty, _) = self.start_slot(old_slot, "empty", 0, version).await?;
        self.check_idle(&empty, &new).await;

        self.upgrades.push(Upgrade {
            name: name.into(),
            handoff,
            generation,
            drain,
            old_exit,
        });
        Ok((new, empty))
    }
}

/// The last non-empty line of a file (for error messages).
fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_owned))
        .unwrap_or_else(|| "(no output)".into())
}

/// Binds 127.0.0.1:0 `n` times at once and returns the ports (released again when this returns).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<Result<Vec<_>>>()
}

/// Reads one stdout line of the upstream, expecting `<prefix> ADDR`.
async fn read_addr(lines: &mut tokio::io::Lines<BufReader<ChildStdout>>, prefix: &str) -> Result<SocketAddr> {
    let line = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .context("upstream did not announce its address within 5 s")?
        .context("reading upstream's stdout")?
        .context("upstream exited before announcing its address")?;
    line.strip_prefix(prefix)
        .and_then(|rest| rest.trim().parse().ok())
        .with_context(|| format!("unexpected upstream output {line:?} (expected `{prefix}ADDR`)"))
}

/// The addresses in baton's config: its listeners and admin, and the upstream's.
struct Addrs {
    http: SocketAddr,
    tcp: SocketAddr,
    grpc: SocketAddr,
    admin: SocketAddr,
    upstream_http: SocketAddr,
    upstream_echo: SocketAddr,
    upstream_grpc: SocketAddr,
}

fn write_config(dir: &Path, a: &Addrs) -> Result<PathBuf> {
    let uds = dir.join("uds");
    std::fs::create_dir_all(&uds).with_context(|| format!("creating {}", uds.display()))?;
    let uds = uds.to_str().context("temporary directory path is not UTF-8")?;
    // A JSON string is a valid YAML double-quoted scalar.
    let uds = serde_json::to_string(uds)?;
    let config = format!(
        "# generated by examples/demo.rs\n\
         listeners:\n\
         \x20 - name: ingress\n\
         \x20   address: {http}\n\
         \x20   protocol: http\n\
         \x20   cluster: app\n\
         \x20 - name: echo\n\
         \x20   address: {tcp}\n\
         \x20   protocol: tcp\n\
         \x20   cluster: echo\n\
         \x20 - name: grpc\n\
         \x20   address: {grpc}\n\
         \x20   protocol: http\n\
         \x20   cluster: grpc\n\
         clusters:\n\
         \x20 - name: app\n\
         \x20   endpoints: [\"{upstream}\"]\n\
         \x20   connect_timeout: 3s\n\
         \x20   request_timeout: 5s\n\
         \x20 - name: echo\n\
         \x20   endpoints: [\"{echo}\"]\n\
         \x20 - name: grpc\n\
         \x20   endpoints: [\"{upstream_grpc}\"]\n\
         \x20   protocol: h2c\n\
         \x20   connect_timeout: 3s\n\
         \x20   request_timeout: 5s\n\
         admin:\n\
         \x20 address: {admin}\n\
         handoff:\n\
         \x20 uds_dir: {uds}\n\
         \x20 drain_timeout: {}s\n",
        DRAIN_TIMEOUT.as_secs(),
        http = a.http,
        tcp = a.tcp,
        grpc = a.grpc,
        upstream = a.upstream_http,
        echo = a.upstream_echo,
        upstream_grpc = a.upstream_grpc,
        admin = a.admin,
    );
    let path = dir.join("baton.yaml");
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Everything the final report needs.
struct Outcome {
    load: Option<LoadSummary>,
    tcp_ok: u64,
    tcp_failed: u64,
    tcp_errors: BTreeMap<String, u64>,
    stream_ok: u64,
    stream_failed: u64,
    stream_errors: BTreeMap<String, u64>,
    stream_opened: u64,
    stream_reopened: u64,
    upgrades: Vec<Upgrade>,
    exits: Vec<ExitRecord>,
    problems: Vec<String>,
}

async fn run(args: &Args, dir: &Path) -> Result<Outcome> {
    let paths = Paths::resolve(args)?;
    let pause = Duration::from_secs_f64(args.pause);
    std::fs::create_dir_all(dir.join("logs")).context("creating the logs directory")?;
    log(format!("work dir {}", dir.display()));
    log(format!("baton {}", paths.baton.display()));
    if sys::launcher_works() {
        log("children start through `setpriv --pdeathsig KILL`: they die with the demo, however it ends");
    } else {
        log(
            "WARNING: `setpriv --pdeathsig KILL -- true` failed (util-linux setpriv missing or too old): children \
             are stopped by the demo's own guards only and would outlive a SIGKILL of the demo",
        );
    }

    // Upstream: HTTP (and the WebSocket echo on /ws), TCP echo and gRPC, on ephemeral ports it reports on stdout.
    let upstream_log = std::fs::File::create(dir.join("logs").join("upstream.log")).context("creating upstream.log")?;
    let mut cmd = command(&paths.upstream);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--tcp-echo",
        "127.0.0.1:0",
        "--grpc",
        "127.0.0.1:0",
    ])
    .stdout(Stdio::piped())
    .stderr(upstream_log);
    let (mut upstream, stdout) = Proc::spawn("upstream", &mut cmd)?;
    let mut lines = BufReader::new(stdout.context("upstream stdout not captured")?).lines();
    let upstream_http = read_addr(&mut lines, "listening on ").await?;
    let upstream_echo = read_addr(&mut lines, "tcp echo listening on ").await?;
    let upstream_grpc = read_addr(&mut lines, "grpc listening on ").await?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    log(format!(
        "upstream (pid {}): http {upstream_http} (WebSocket echo on /ws), tcp echo {upstream_echo}, grpc (h2c) \
         {upstream_grpc}",
        upstream.pid
    ));

    // baton config on free ephemeral ports.
    let ports = free_ports(4)?;
    let [http, tcp, grpc, admin] =
        [ports[0], ports[1], ports[2], ports[3]].map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
    let config = write_config(
        dir,
        &Addrs {
            http,
            tcp,
            grpc,
            admin,
            upstream_http,
            upstream_echo,
            upstream_grpc,
        },
    )?;
    log(format!(
        "config {}: http {http} -> {upstream_http}, tcp {tcp} -> {upstream_echo}, http {grpc} -> h2c \
         {upstream_grpc}, admin {admin}, drain_timeout {}s",
        config.display(),
        DRAIN_TIMEOUT.as_secs()
    ));
    let check = command(&paths.baton)
        .args(["check", "--config"])
        .arg(&config)
        .kill_on_drop(true)
        .output();
    let check = tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .context("`baton check` hung")?
        .context("running `baton check`")?;
    if !check.status.success() {
        bail!(
            "`baton check` rejected the generated config ({}): {}",
            check.status,
            String::from_utf8_lossy(&check.stderr).trim()
        );
    }
    log("`baton check --config` accepted the config");

    let board: Shared<Board> = Arc::default();
    let mut demo = Demo {
        paths,
        dir: dir.to_path_buf(),
        config,
        admin,
        board: board.clone(),
        problems: Vec::new(),
        upgrades: Vec::new(),
        exits: Vec::new(),
        started: 0,
    };

    // T0: the pod is created. proxy-1 runs v1, proxy-2 the empty image; -1 starts (and its postStart
    // returns) before -2 starts.
    log("=== T0 pod created: proxy-1 image v1, proxy-2 image empty");
    let (slot1, _) = demo.start_slot(1, "v1", 1, 0).await?;
    demo.wait_ready(&slot1, Duration::from_secs(10)).await?;
    demo.check_status(&slot1, 1, "fresh").await?;
    let (slot2, _) = demo.start_slot(2, "empty", 0, 1).await?;
    demo.check_idle(&slot2, &slot1).await;

    // Load: HTTP, a WebSocket, an SSE stream and slow uploads through the http listener, gRPC through the h2c
    // one, TCP round trips through the tcp listener, live progress.
    let mut cmd = command(&demo.paths.loadgen);
    let loadgen_args = format!(
        "--target {http} --keepalive {KEEPALIVE_CLIENTS} --newconn {NEWCONN_CLIENTS} --websocket {http} \
         --grpc {grpc} --sse {http} --upload {http} --duration 120s --report-interval 1s"
    );
    cmd.args(loadgen_args.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("logs").join("loadgen.log")).context("creating loadgen.log")?);
    let (mut loadgen, stdout) = Proc::spawn("loadgen", &mut cmd)?;
    let reader = tokio::spawn(read_loadgen(
        stdout.context("loadgen stdout not captured")?,
        board.clone(),
    ));
    log(format!("loadgen (pid {}): {loadgen_args}", loadgen.pid));
    let tcp_stats = Arc::new(TcpStats::default());
    let stream_stats = Arc::new(TcpStats::default());
    let (stop_tcp, stop_rx) = watch::channel(false);
    let tcp_task = tokio::spawn(tcp_checker(tcp, tcp_stats.clone(), stop_rx.clone()));
    let stream_task = tokio::spawn(tcp_stream_checker(tcp, stream_stats.clone(), stop_rx));
    log(format!(
        "tcp checker: one echo round trip every {} on a new connection, and one every {} on a long-lived \
         stream -> {tcp}",
        ms(TCP_INTERVAL),
        ms(TCP_INTERVAL)
    ));
    let printer = AbortOnDrop(tokio::spawn(progress(
        board.clone(),
        tcp_stats.clone(),
        stream_stats.clone(),
        admin,
    )));
    tokio::time::sleep(pause).await;

    // T1 + T2: v1 -> v2 (proxy-2 takes over), then proxy-1 reset to empty.
    let (slot2, slot1) = demo.upgrade("v1 -> v2", slot1, slot2, "v2", (R2, 1), 2).await?;
    let mark = demo.mark().await;
    tokio::time::sleep(pause).await;
    demo.check_streams_go_on("v1 -> v2", mark).await;
    // T3 + T4: v2 -> v3 (proxy-1 takes over), then proxy-2 reset to empty.
    let (slot1, slot2) = demo.upgrade("v2 -> v3", slot2, slot1, "v3", (R3, R2), 3).await?;
    let mark = demo.mark().await;
    tokio::time::sleep(pause).await;
    demo.check_streams_go_on("v2 -> v3", mark).await;

    // Stop the load and collect the results. Everything counted so far happened under load, before the pod
    // deletion below: none of it is caused by the end of the demo.
    log("=== stopping the load");
    let _ = stop_tcp.send(true);
    let _ = tcp_task.await;
    let _ = stream_task.await;
    loadgen.signal(Signal::SIGINT)?;
    let loadgen_exit = loadgen.wait(Duration::from_secs(10)).await;
    drop(printer);
    let load = match tokio::time::timeout(Duration::from_secs(5), reader).await {
        Ok(Ok(summary)) => summary,
        _ => None,
    };
    match (&load, loadgen_exit) {
        (None, _) => demo.problem("loadgen printed no summary"),
        (Some(s), _) if s.requests == 0 => demo.problem("loadgen completed no request"),
        (Some(s), Some(e)) if s.clean() != e.success() => demo.problem(format!(
            "loadgen {} does not match {} failed requests, {} WebSocket errors and {} reconnects, {} failed gRPC \
             calls, {} SSE errors and {} reconnects, {} failed uploads and {} upload reconnects",
            e.describe(),
            s.failed,
            opt(s.ws_errors),
            opt(s.ws_reconnects),
            opt(s.grpc_failed),
            opt(s.sse_errors),
            opt(s.sse_reconnects),
            opt(s.uploads_failed),
            opt(s.upload_reconnects)
        )),
        _ => {}
    }
    if loadgen_exit.is_none() {
        demo.problem("loadgen did not exit within 10 s of SIGINT");
    }
    demo.exits.push(ExitRecord {
        what: "loadgen".into(),
        exit: loadgen_exit,
        note: "SIGINT at the end".into(),
    });
    if let Some(s) = &load {
        if s.failed > 0 {
            demo.problem(format!(
                "{} of {} HTTP requests failed: {:?}",
                s.failed, s.requests, s.errors
            ));
        }
        match (s.keepalive_opened, s.keepalive_reopened) {
            (Some(opened), Some(reopened)) => {
                if reopened > 0 {
                    demo.problem(format!(
                        "{reopened} HTTP keep-alive connections had to be reopened under load ({opened} opened by \
                         {KEEPALIVE_CLIENTS} clients; the upgrades should have handed them over): {:?}",
                        s.keepalive_reopen_reasons
                    ));
                }
                if opened < KEEPALIVE_CLIENTS as u64 {
                    demo.problem(format!(
                        "only {opened} keep-alive connections opened by {KEEPALIVE_CLIENTS} clients"
                    ));
                }
            }
            _ => demo.problem("loadgen did not report its keep-alive connections (keepalive_opened/_reopened)"),
        }
        match (s.ws_frames, s.ws_errors, s.ws_reconnects) {
            (Some(frames), Some(errors), Some(reconnects)) => {
                if errors > 0 || reconnects > 0 {
                    demo.problem(format!(
                        "the WebSocket saw {errors} errors and was reopened {reconnects} times (the upgrades should \
                         have handed its tunnel over): {:?}",
                        s.ws_error_kinds
                    ));
                } else if frames == 0 {
                    demo.problem("no WebSocket frame was echoed");
                }
            }
            _ => demo.problem("loadgen did not report its WebSocket client (ws_frames/_errors/_reconnects)"),
        }
        match (s.grpc_ok, s.grpc_failed) {
            (Some(ok), Some(failed)) => {
                if failed > 0 {
                    demo.problem(format!(
                        "{failed} of {} gRPC calls failed: {:?}",
                        ok + failed,
                        s.grpc_errors
                    ));
                } else if ok == 0 {
                    demo.problem("no gRPC call completed");
                }
            }
            _ => demo.problem("loadgen did not report its gRPC client (grpc_ok/_failed)"),
        }
        match (s.sse_events, s.sse_errors, s.sse_reconnects) {
            (Some(events), Some(errors), Some(reconnects)) => {
                if errors > 0 || reconnects > 0 {
                    demo.problem(format!(
                        "the SSE stream saw {errors} errors and was reopened {reconnects} times (the upgrades should \
                         have handed its exchange over): {:?}",
                        s.sse_error_kinds
                    ));
                } else if events == 0 {
                    demo.problem("no SSE event was received");
                }
            }
            _ => demo.problem("loadgen did not report its SSE client (sse_events/_errors/_reconnects)"),
        }
        match (s.uploads_ok, s.uploads_failed, s.upload_reconnects) {
            (Some(ok), Some(failed), Some(reconnects)) => {
                if failed > 0 || reconnects > 0 {
                    demo.problem(format!(
                        "{failed} of {} uploads failed and their connection was reopened {reconnects} times (the \
                         upgrades should have handed the upload in flight over): {:?}",
                        ok + failed,
                        s.upload_errors
                    ));
                } else if ok == 0 {
                    demo.problem("no upload completed");
                }
            }
            _ => demo.problem("loadgen did not report its upload client (uploads_ok/_failed, upload_reconnects)"),
        }
    }
    let tcp_ok = tcp_stats.ok.load(Ordering::Relaxed);
    let tcp_failed = tcp_stats.failed.load(Ordering::Relaxed);
    if tcp_failed > 0 {
        demo.problem(format!(
            "{tcp_failed} of {} TCP round trips failed",
            tcp_ok + tcp_failed
        ));
    } else if tcp_ok == 0 {
        demo.problem("no TCP round trip completed");
    }
    let stream_ok = stream_stats.ok.load(Ordering::Relaxed);
    let stream_failed = stream_stats.failed.load(Ordering::Relaxed);
    let stream_opened = stream_stats.opened.load(Ordering::Relaxed);
    let stream_reopened = stream_stats.reopened.load(Ordering::Relaxed);
    if stream_failed > 0 || stream_reopened > 0 {
        demo.problem(format!(
            "{stream_failed} of {} round trips on the long-lived TCP stream failed; it was reopened {stream_reopened} \
             times",
            stream_ok + stream_failed
        ));
    } else if stream_ok == 0 {
        demo.problem("no round trip on the long-lived TCP stream completed");
    }

    // Pod deletion: every container gets SIGTERM and must exit 0.
    log("=== pod deleted");
    demo.stop_slot(slot1, DRAIN_DEADLINE, "pod deletion").await;
    demo.stop_slot(slot2, IDLE_STOP_DEADLINE, "pod deletion").await;
    upstream.signal(Signal::SIGTERM)?;
    let upstream_exit = upstream.wait(Duration::from_secs(5)).await;
    demo.exits.push(ExitRecord {
        what: "upstream".into(),
        exit: upstream_exit,
        note: "SIGTERM at the end".into(),
    });

    let tcp_errors = lock(&tcp_stats.errors).clone();
    let stream_errors = lock(&stream_stats.errors).clone();
    Ok(Outcome {
        load,
        tcp_ok,
        tcp_failed,
        tcp_errors,
        stream_ok,
        stream_failed,
        stream_errors,
        stream_opened,
        stream_reopened,
        upgrades: std::mem::take(&mut demo.upgrades),
        exits: std::mem::take(&mut demo.exits),
        problems: std::mem::take(&mut demo.problems),
    })
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Feeds loadgen's progress lines to the board; returns its summary line.
async fn read_loadgen(stdout: ChildStdout, board: Shared<Board>) -> Option<LoadSummary> {
    let mut lines = BufReader::new(stdout).lines();
    let mut summary = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let value: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => {
                log(format!("loadgen: {line}"));
                continue;
            }
        };
        if value.get("summary").is_some() {
            summary = serde_json::from_value(value).ok();
        } else if let Ok(report) = serde_json::from_value::<LoadReport>(value) {
            let mut board = lock(&board);
            board.load = Some(report);
            board.reports += 1;
        }
    }
    summary
}

fn print_report(outcome: &Outcome) {
    say!();
    say!("==================================== summary ====================================");
    match &outcome.load {
        Some(s) => {
            say!("HTTP requests                         {}", s.requests);
            say!("HTTP failed                           {}", s.failed);
            if !s.errors.is_empty() {
                say!("HTTP failure kinds                    {:?}", s.errors);
            }
            match (s.keepalive_reopened, s.keepalive_opened) {
                (Some(reopened), Some(opened)) => say!(
                    "HTTP keep-alive connections reopened  {reopened} (of {opened} opened by {KEEPALIVE_CLIENTS} \
                     keep-alive clients)"
                ),
                _ => say!("HTTP keep-alive connections reopened  (not reported by loadgen)"),
            }
            if !s.keepalive_reopen_reasons.is_empty() {
                say!("HTTP keep-alive reopen reasons        {:?}", s.keepalive_reopen_reasons);
            }
            say!(
                "WebSocket frames echoed               {} ({} bytes each way, text and binary, on one connection)",
                opt(s.ws_frames),
                opt(s.ws_bytes)
            );
            say!("WebSocket reconnects                  {}", opt(s.ws_reconnects));
            say!("WebSocket errors                      {}", opt(s.ws_errors));
            if !s.ws_error_kinds.is_empty() {
                say!("WebSocket error kinds                 {:?}", s.ws_error_kinds);
            }
            say!(
                "gRPC calls ok                         {} (one channel, {} HTTP/2 connections: GOAWAY at each upgrade)",
                opt(s.grpc_ok),
                opt(s.grpc_connections)
            );
            say!("gRPC calls failed                     {}", opt(s.grpc_failed));
            if !s.grpc_errors.is_empty() {
                say!("gRPC failure kinds                    {:?}", s.grpc_errors);
            }
            say!(
                "gRPC calls resent                     {} (refused unsent by tonic at a GOAWAY, sent again{})",
                opt(s.grpc_resent),
                if s.grpc_resent_reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {:?}", s.grpc_resent_reasons)
                }
            );
            say!(
                "SSE events                            {} (in order, checked, one every 50 ms on one connection)",
                opt(s.sse_events)
            );
            say!("SSE reconnects                        {}", opt(s.sse_reconnects));
            say!("SSE errors                            {}", opt(s.sse_errors));
            if !s.sse_error_kinds.is_empty() {
                say!("SSE error kinds                       {:?}", s.sse_error_kinds);
            }
            say!(
                "uploads ok                            {} ({} bytes; 1 MiB each over ~2.6 s, chunked and \
                 Content-Length in turn)",
                opt(s.uploads_ok),
                opt(s.upload_bytes)
            );
            say!("uploads failed                        {}", opt(s.uploads_failed));
            if !s.upload_errors.is_empty() {
                say!("upload failure kinds                  {:?}", s.upload_errors);
            }
            say!(
                "upload connection reopened            {} (one keep-alive connection for all uploads)",
                opt(s.upload_reconnects)
            );
        }
        None => say!("HTTP requests                         (no loadgen summary)"),
    }
    say!(
        "TCP round trips                       {} (a new connection each)",
        outcome.tcp_ok + outcome.tcp_failed
    );
    say!("TCP failed                            {}", outcome.tcp_failed);
    if !outcome.tcp_errors.is_empty() {
        say!("TCP failure kinds                     {:?}", outcome.tcp_errors);
    }
    say!(
        "TCP stream round trips                {} (on one long-lived connection)",
        outcome.stream_ok + outcome.stream_failed
    );
    say!("TCP stream failed                     {}", outcome.stream_failed);
    if !outcome.stream_errors.is_empty() {
        say!("TCP stream failure kinds              {:?}", outcome.stream_errors);
    }
    say!(
        "TCP stream reopened                   {} (of {} opened)",
        outcome.stream_reopened,
        outcome.stream_opened
    );
    say!();
    let head = [
        "upgrade",
        "handoff",
        "generation",
        "old exit",
        "old slot drained and exited",
    ];
    say!(
        "{:<10} {:>10} {:>11}  {:<12} {}",
        head[0],
        head[1],
        head[2],
        head[3],
        head[4]
    );
    for u in &outcome.upgrades {
        say!(
            "{:<10} {:>10} {:>11}  {:<12} {}",
            u.name,
            ms(u.handoff),
            format!("{} -> {}", u.generation - 1, u.generation),
            u.old_exit.map(|e| e.describe()).unwrap_or_else(|| "killed".into()),
            u.drain,
        );
    }
    say!("(handoff = duration of the new slot's postStart `baton migrate`)");
    say!();
    let head = ["process", "exit", "note"];
    say!("{:<36} {:<18} {}", head[0], head[1], head[2]);
    for e in &outcome.exits {
        say!(
            "{:<36} {:<18} {}",
            e.what,
            e.exit.map(|e| e.describe()).unwrap_or_else(|| "did not exit".into()),
            e.note
        );
    }
    say!();
}

/// Prints the last lines of every log in `dir/logs`, to explain a failure.
fn print_log_tails(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("logs")) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            continue;
        }
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        say!("--- {name} (last {} of {} lines)", lines.len().min(15), lines.len());
        for line in &lines[lines.len().saturating_sub(15)..] {
            say!("    {line}");
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = START.set(Instant::now());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("baton-demo-{}-{nanos:x}", std::process::id()));

    // A single thread: it spawns every child and lives as long as the process, which PR_SET_PDEATHSIG needs
    // (the death signal follows the spawning *thread*).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            say_err!("demo: starting the tokio runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let interrupted = async {
            use tokio::signal::unix::{signal, SignalKind};
            match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            result = run(&args, &dir) => result,
            _ = interrupted => Err(anyhow!(INTERRUPTED)),
        }
    });
    // Dropping the runtime drops every task and every `Proc`: all children are killed here.
    drop(runtime);

    let ok = match &result {
        Ok(outcome) => {
            print_report(outcome);
            if outcome.problems.is_empty() {
                say!(
                    "RESULT: PASS - no failed request, gRPC call or upload, no connection, WebSocket or SSE stream \
                     reopened, SSE and uploads going on after each upgrade, every old slot exited 0, generations \
                     1 -> 2 -> 3"
                );
                true
            } else {
                say!("RESULT: FAIL");
                for p in &outcome.problems {
                    say!("  - {p}");
                }
                false
            }
        }
        Err(err) => {
            say!();
            say!("RESULT: FAIL - demo aborted: {err:#}");
            false
        }
    };
    let interrupted = result.as_ref().is_err_and(|e| e.to_string() == INTERRUPTED);
    if !ok && !interrupted {
        print_log_tails(&dir);
    }
    if args.keep {
        say!("work dir kept: {}", dir.display());
    } else if let Err(err) = std::fs::remove_dir_all(&dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            say_err!("demo: removing {}: {err}", dir.display());
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
