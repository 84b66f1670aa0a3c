//! The handoff protocol, both sides, step by step.
//!
//! ```text
//!   old instance (serving)                          new instance (taking over)
//!   ----------------------                          --------------------------
//!                                                   binds <uds>/reconfig.sock (0600, owned via reconfig.lock)
//!   sees reconfig.sock appear (inotify),
//!   connects; both check SO_PEERCRED uid
//!   HELLO {sender, protocols, generation}  ───────▶
//!                                          ◀───────  HELLO {receiver, chosen protocol, generation+1}
//!   LISTENERS {tags} + SCM_RIGHTS fds ...  ───────▶  (batches of at most 64)
//!   LISTENERS_END {total}                  ───────▶  validates every fd: socket, listening, address;
//!                                                    adopts what its config claims, binds the rest,
//!                                                    accepts on all of them
//!                                          ◀───────  READY {adopted, bound, unclaimed}
//!   COMMIT                                 ───────▶
//!                                          ◀───────  DONE
//!   stops accepting (keeps the queue: no shutdown()),
//!   releases serving.lock, drains, exits 0           handoff complete: tells `migrate`, closes unclaimed fds
//! ```
//!
//! Until the old instance receives DONE it has changed nothing: any error, timeout or crash of the new instance
//! before that leaves it serving exactly as before (Envoy #14295 drained before the new one listened; Pingora shut
//! down even when the send failed). Every read and write runs under the handoff deadline.
//!
//! `migrate` hooks connect to the same socket as [`PeerRole::Watcher`] and receive [`Progress`] until the final
//! report; the new instance keeps the socket open after the handoff until a watcher has read that report (or the
//! linger time passes), since kubelet may start the hook a little after the process.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conn::Conn;
use crate::dir::{ReconfigSocket, UdsDir};
use crate::error::{HandoffError, StepError};
use crate::sys;
use crate::wire::{
    Hello, ListenerTag, Message, PeerRole, Progress, Ready, MAX_FDS_PER_FRAME, PROTOCOL_MAX, PROTOCOL_MIN,
};

/// Who this process is, as told to the peer.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Upgrade generation: 1 on a fresh start, the predecessor's + 1 after a takeover.
    pub generation: u64,
    /// Software version, for the peer's logs.
    pub version: String,
}

/// A listening socket offered to the successor.
#[derive(Debug)]
pub struct Offered<'a> {
    /// What it is.
    pub tag: ListenerTag,
    /// The socket. It stays ours: the successor gets a duplicate, and the shared accept queue lives on.
    pub fd: BorrowedFd<'a>,
}

/// A completed handoff, seen from the old instance.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The successor's READY report.
    pub ready: Ready,
    /// The successor's generation.
    pub generation: u64,
    /// The successor's software version.
    pub version: String,
}

/// Old side: hands `listeners` to the successor at the other end of `stream`.
///
/// On `Ok` the successor is accepting on every listener and has acknowledged the commit: the caller must now stop
/// accepting (without `shutdown()`), release its [`crate::ServingLock`], and drain. On `Err` nothing changed and
/// the caller keeps serving.
pub async fn hand_over(
    stream: UnixStream,
    me: &Identity,
    listeners: &[Offered<'_>],
    timeout: Duration,
) -> Result<Committed, StepError> {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let mut conn = Conn::new(stream).map_err(|e| e.at("connect"))?;
    step_event("old", "connect", me.generation, "", t0);

    // 1. HELLO: negotiate the protocol version.
    let hello = Hello {
        role: PeerRole::Sender,
        min_protocol: PROTOCOL_MIN,
        max_protocol: PROTOCOL_MAX,
        generation: me.generation,
        version: me.version.clone(),
    };
    conn.send(&Message::Hello(hello), &[], deadline)
        .await
        .map_err(|e| e.at("hello"))?;
    let peer = match conn.recv(deadline).await.map_err(|e| e.at("hello"))?.0 {
        Message::Hello(h) if h.role == PeerRole::Receiver => h,
        Message::Refuse { reason } => return Err(HandoffError::Refused(reason).at("hello")),
        other => return Err(unexpected(&other, "HELLO").at("hello")),
    };
    if peer.min_protocol != peer.max_protocol || !(PROTOCOL_MIN..=PROTOCOL_MAX).contains(&peer.max_protocol) {
        let reason = format!("successor chose protocol {}..={}", peer.min_protocol, peer.max_protocol);
        refuse(&mut conn, &reason, deadline).await;
        return Err(HandoffError::Protocol(reason).at("hello"));
    }
    step_event("old", "hello", me.generation, &peer.version, t0);

    // 2. LISTENERS: every listening socket, in batches, each fd tagged with its name and address.
    for batch in listeners.chunks(MAX_FDS_PER_FRAME) {
        let tags = batch.iter().map(|l| l.tag.clone()).collect();
        let fds: Vec<BorrowedFd<'_>> = batch.iter().map(|l| l.fd).collect();
        conn.send(&Message::Listeners(tags), &fds, deadline)
            .await
            .map_err(|e| e.at("listeners"))?;
    }
    let total = listeners.len() as u32;
    conn.send(&Message::ListenersEnd { total }, &[], deadline)
        .await
        .map_err(|e| e.at("listeners"))?;
    step_event("old", "listeners", me.generation, &peer.version, t0);

    // 3. READY: the successor accepts on everything.
    let ready = match conn.recv(deadline).await.map_err(|e| e.at("ready"))?.0 {
        Message::Ready(r) => r,
        Message::Refuse { reason } => return Err(HandoffError::Refused(reason).at("ready")),
        other => return Err(unexpected(&other, "READY").at("ready")),
    };
    step_event("old", "ready", me.generation, &peer.version, t0);

    // 4. COMMIT / DONE: only an acknowledged commit lets the caller stop accepting.
    conn.send(&Message::Commit, &[], deadline)
        .await
        .map_err(|e| e.at("commit"))?;
    match conn.recv(deadline).await.map_err(|e| e.at("commit"))?.0 {
        Message::Done => {}
        Message::Refuse { reason } => return Err(HandoffError::Refused(reason).at("commit")),
        other => return Err(unexpected(&other, "DONE").at("commit")),
    }
    step_event("old", "commit", me.generation, &peer.version, t0);
    Ok(Committed {
        ready,
        generation: peer.generation,
        version: peer.version,
    })
}

/// Settings of the new side.
#[derive(Debug, Clone)]
pub struct TakeoverOptions {
    /// The whole handoff: waiting for the predecessor, receiving, READY, COMMIT.
    pub timeout: Duration,
    /// How long the reconfig socket stays open after the end, for a `migrate` watcher that has not connected yet.
    pub linger: Duration,
    /// Test hook: stop abruptly (return [`HandoffError::Failpoint`]) at `after-hello`, `after-fds` or
    /// `before-ready`, without telling the peer, as if the process had crashed there.
    pub crash_at: Option<String>,
}

impl TakeoverOptions {
    /// Defaults for a given handoff timeout.
    pub fn new(timeout: Duration) -> TakeoverOptions {
        TakeoverOptions {
            timeout,
            linger: timeout,
            crash_at: None,
        }
    }
}

/// New side: owns the reconfig socket for the length of a takeover.
pub struct Takeover {
    dir: UdsDir,
    me: Identity,
    opts: TakeoverOptions,
    deadline: Instant,
    progress: Arc<watch::Sender<Progress>>,
    informed: Arc<Notify>,
    senders: Option<mpsc::Receiver<(Conn, Hello)>>,
    accept: JoinHandle<()>,
}

/// What [`Takeover::receive`] found.
pub enum Inheritance {
    /// No live instance holds the uds dir: bind every listener fresh.
    NoPeer,
    /// A predecessor sent its listeners: adopt them, then [`Session::commit`].
    Peer(Box<Session>),
}

/// A listening socket received from the predecessor.
#[derive(Debug)]
pub struct Inherited {
    /// What the predecessor said it is.
    pub tag: ListenerTag,
    /// The socket (close-on-exec, still in blocking mode as sent).
    pub fd: OwnedFd,
    /// Its actual local address if it is a listening TCP socket, else why it is not.
    pub check: Result<SocketAddr, String>,
}

/// An open handoff session on the new side, after the listeners arrived.
pub struct Session {
    conn: Conn,
    deadline: Instant,
    progress: Arc<watch::Sender<Progress>>,
    crash_at: Option<String>,
    started: Instant,
    generation: u64,
    /// The predecessor's HELLO.
    pub peer: Hello,
    /// The listeners it sent.
    pub listeners: Vec<Inherited>,
}

impl Takeover {
    /// Binds the reconfig socket in `dir` and starts answering peers on it.
    pub fn start(dir: &UdsDir, me: Identity, opts: TakeoverOptions) -> Result<Takeover, HandoffError> {
        dir.ensure()?;
        let socket = dir.bind_reconfig()?;
        let deadline = Instant::now() + opts.timeout;
        let progress = Arc::new(watch::Sender::new(progress("waiting", false, false, "")));
        let informed = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(1);
        let accept = tokio::spawn(accept_loop(socket, tx, progress.clone(), informed.clone()));
        Ok(Takeover {
            dir: dir.clone(),
            me,
            opts,
            deadline,
            progress,
            informed,
            senders: Some(rx),
            accept,
        })
    }

    /// Reports a phase to `migrate` watchers.
    pub fn report(&self, phase: &str, detail: &str) {
        self.progress.send_replace(progress(phase, false, false, detail));
    }

    /// Waits for the predecessor and receives its listeners.
    ///
    /// Returns [`Inheritance::NoPeer`] at once when no live instance holds `serving.lock` (first start, pod
    /// restart, crashed predecessor). A live one that does not connect within the timeout is an error: it still
    /// holds the ports, so binding fresh would fail or steal its traffic.
    pub async fn receive(&mut self) -> Result<Inheritance, StepError> {
        if !self.dir.peer_serving().map_err(|e| e.at("discover"))? {
            return Ok(Inheritance::NoPeer);
        }
        let mut senders = self
            .senders
            .take()
            .ok_or_else(|| HandoffError::Protocol("receive called twice".into()).at("discover"))?;
        let (mut conn, peer) = match tokio::time::timeout_at(self.deadline, senders.recv()).await {
            Ok(Some(found)) => found,
            Ok(None) => return Err(HandoffError::PeerClosed.at("discover")),
            Err(_) => {
                return Err(HandoffError::Timeout(format!(
                    "waiting {:?} for the live instance on {} to connect",
                    self.opts.timeout,
                    self.dir.path().display()
                ))
                .at("discover"))
            }
        };
        drop(senders); // any later sender is refused by the accept loop
        let deadline = self.deadline;
        let t0 = Instant::now();
        let generation = peer.generation.saturating_add(1);
        step_event("new", "connect", generation, &peer.version, t0);

        // 1. HELLO: pick the newest protocol both speak, or refuse.
        let chosen = PROTOCOL_MAX.min(peer.max_protocol);
        if chosen < PROTOCOL_MIN.max(peer.min_protocol) {
            let err = HandoffError::Version {
                ours_min: PROTOCOL_MIN,
                ours_max: PROTOCOL_MAX,
                peer_min: peer.min_protocol,
                peer_max: peer.max_protocol,
            };
            refuse(&mut conn, &err.to_string(), deadline).await;
            return Err(err.at("hello"));
        }
        let hello = Hello {
            role: PeerRole::Receiver,
            min_protocol: chosen,
            max_protocol: chosen,
            generation: peer.generation.saturating_add(1),
            version: self.me.version.clone(),
        };
        conn.send(&Message::Hello(hello), &[], deadline)
            .await
            .map_err(|e| e.at("hello"))?;
        step_event("new", "hello", generation, &peer.version, t0);
        failpoint(&self.opts.crash_at, "after-hello")?;
        self.report("receiving", "");

        // 2. LISTENERS until LISTENERS_END.
        let mut listeners = Vec::new();
        loop {
            match conn.recv(deadline).await.map_err(|e| e.at("listeners"))? {
                (Message::Listeners(tags), fds) => {
                    for (tag, fd) in tags.into_iter().zip(fds) {
                        let check = sys::listening_tcp_addr(fd.as_fd());
                        listeners.push(Inherited { tag, fd, check });
                    }
                }
                (Message::ListenersEnd { total }, _) if total as usize == listeners.len() => break,
                (Message::ListenersEnd { total }, _) => {
                    let reason = format!("LISTENERS_END says {total} listeners, {} arrived", listeners.len());
                    refuse(&mut conn, &reason, deadline).await;
                    return Err(HandoffError::Protocol(reason).at("listeners"));
                }
                (other, _) => {
                    let err = unexpected(&other, "LISTENERS");
                    refuse(&mut conn, &err.to_string(), deadline).await;
                    return Err(err.at("listeners"));
                }
            }
        }
        step_event("new", "listeners", generation, &peer.version, t0);
        failpoint(&self.opts.crash_at, "after-fds")?;
        self.report("adopting", "");
        Ok(Inheritance::Peer(Box::new(Session {
            conn,
            deadline,
            progress: self.progress.clone(),
            crash_at: self.opts.crash_at.clone(),
            started: t0,
            generation,
            peer,
            listeners,
        })))
    }

    /// Ends the takeover: publishes the final report to `migrate` watchers, waits until one has read it (or the
    /// linger time passes), then closes and unlinks the reconfig socket and releases its lock.
    pub async fn finish(mut self, ok: bool, phase: &str, detail: &str) {
        self.progress.send_replace(progress(phase, true, ok, detail));
        let _ = tokio::time::timeout(self.opts.linger, self.informed.notified()).await;
        self.accept.abort();
        let _ = (&mut self.accept).await;
    }
}

impl Drop for Takeover {
    /// A takeover dropped without [`Takeover::finish`] still releases the reconfig socket.
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Session {
    /// Sends READY (the caller accepts on every listener now), waits for COMMIT, acknowledges with DONE.
    ///
    /// On `Err` the predecessor has not stopped accepting; the caller should stop accepting, drain what it
    /// accepted, and exit.
    pub async fn commit(mut self, ready: Ready) -> Result<(), StepError> {
        failpoint(&self.crash_at, "before-ready")?;
        self.conn
            .send(&Message::Ready(ready), &[], self.deadline)
            .await
            .map_err(|e| e.at("ready"))?;
        self.progress.send_replace(progress("ready", false, false, ""));
        step_event("new", "ready", self.generation, &self.peer.version, self.started);
        match self.conn.recv(self.deadline).await.map_err(|e| e.at("commit"))?.0 {
            Message::Commit => {}
            Message::Refuse { reason } => return Err(HandoffError::Refused(reason).at("commit")),
            other => return Err(unexpected(&other, "COMMIT").at("commit")),
        }
        self.conn
            .send(&Message::Done, &[], self.deadline)
            .await
            .map_err(|e| e.at("commit"))?;
        step_event("new", "commit", self.generation, &self.peer.version, self.started);
        Ok(())
    }

    /// Abandons the session, telling the predecessor why. It keeps serving.
    pub async fn refuse(mut self, reason: &str) {
        refuse(&mut self.conn, reason, self.deadline).await;
    }
}

/// Accepts on the reconfig socket: senders go to [`Takeover::receive`], watchers get progress reports.
async fn accept_loop(
    socket: ReconfigSocket,
    senders: mpsc::Sender<(Conn, Hello)>,
    progress: Arc<watch::Sender<Progress>>,
    informed: Arc<Notify>,
) {
    loop {
        let stream = match socket.listener().accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the reconfig socket failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let senders = senders.clone();
        let progress = progress.subscribe();
        let informed = informed.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_peer(stream, senders, progress, informed).await {
                tracing::warn!(error = %e, "reconfig socket peer rejected");
            }
        });
    }
}

async fn serve_peer(
    stream: UnixStream,
    senders: mpsc::Sender<(Conn, Hello)>,
    mut progress: watch::Receiver<Progress>,
    informed: Arc<Notify>,
) -> Result<(), HandoffError> {
    let mut conn = Conn::new(stream)?;
    let hello_deadline = Instant::now() + Duration::from_secs(5);
    let hello = match conn.recv(hello_deadline).await? {
        (Message::Hello(h), _) => h,
        (other, _) => return Err(unexpected(&other, "HELLO")),
    };
    match hello.role {
        PeerRole::Sender => {
            if let Err(
                mpsc::error::TrySendError::Full((mut conn, _)) | mpsc::error::TrySendError::Closed((mut conn, _)),
            ) = senders.try_send((conn, hello))
            {
                let reason = "this instance already has (or had) a handoff session";
                refuse(&mut conn, reason, hello_deadline).await;
                return Err(HandoffError::Refused(reason.into()));
            }
            Ok(())
        }
        PeerRole::Watcher => loop {
            let current = progress.borrow_and_update().clone();
            let done = current.done;
            // A watcher is given up to a minute per report; it is our own hook, but it may be slow to read.
            let deadline = Instant::now() + Duration::from_secs(60);
            conn.send(&Message::Progress(current), &[], deadline).await?;
            if done {
                informed.notify_one();
                return Ok(());
            }
            if progress.changed().await.is_err() {
                return Err(HandoffError::PeerClosed);
            }
        },
        PeerRole::Receiver => Err(HandoffError::Protocol("a receiver connected to a receiver".into())),
    }
}

/// How long `migrate` waits for a new instance to own the reconfig socket before concluding it is not coming.
/// A starting instance takes it within milliseconds of reading its config.
const START_GRACE: Duration = Duration::from_secs(10);
/// Pause between connection attempts of `migrate`.
const RETRY: Duration = Duration::from_millis(5);

/// `migrate` side: waits until the takeover on `dir` ends, and returns its final report.
///
/// Retries the connection until `timeout` (the new instance may not have bound the socket yet, or a stale file
/// from a dead process may be there). Errors say what was last seen.
pub async fn watch_takeover(dir: &UdsDir, timeout: Duration) -> Result<Progress, String> {
    let started = Instant::now();
    let deadline = started + timeout;
    let path = dir.reconfig_path();
    let mut owner_seen = false;
    let stream = loop {
        let last_connect_error = match UnixStream::connect(&path).await {
            Ok(s) => break s,
            Err(e) => e,
        };
        // Nobody answers. Is anybody about to? The owner of reconfig.lock is a live new instance.
        match dir.reconfig_owner_alive() {
            Ok(true) => owner_seen = true,
            Ok(false) if owner_seen => {
                return Err(format!(
                    "the new instance exited before the handoff completed (it released {})",
                    path.with_file_name("reconfig.lock").display()
                ))
            }
            Ok(false) if started.elapsed() >= START_GRACE => {
                return Err(format!(
                    "no baton instance started a takeover on {} within {START_GRACE:?}: the new instance exited or never started",
                    dir.path().display()
                ))
            }
            _ => {}
        }
        if Instant::now() + RETRY >= deadline {
            return Err(format!(
                "timed out after {timeout:?}: no baton instance answered on {} ({last_connect_error})",
                path.display()
            ));
        }
        tokio::time::sleep(RETRY).await;
    };
    let mut conn = Conn::new(stream).map_err(|e| e.to_string())?;
    let hello = Hello {
        role: PeerRole::Watcher,
        min_protocol: PROTOCOL_MIN,
        max_protocol: PROTOCOL_MAX,
        generation: 0,
        version: String::new(),
    };
    conn.send(&Message::Hello(hello), &[], deadline)
        .await
        .map_err(|e| format!("cannot talk to the new instance: {e}"))?;
    let mut phase = String::from("connected");
    loop {
        match conn.recv(deadline).await {
            Ok((Message::Progress(p), _)) if p.done => return Ok(p),
            Ok((Message::Progress(p), _)) => phase = p.phase,
            Ok((other, _)) => return Err(format!("{} (last phase: {phase})", unexpected(&other, "PROGRESS"))),
            Err(HandoffError::PeerClosed) | Err(HandoffError::Io(..)) => {
                return Err(format!(
                    "the new instance went away during the handoff (last phase: {phase})"
                ))
            }
            Err(HandoffError::Timeout(_)) => {
                return Err(format!("timed out after {timeout:?} (last phase: {phase})"));
            }
            Err(e) => return Err(format!("{e} (last phase: {phase})")),
        }
    }
}

/// One structured event per completed protocol step, on either side.
fn step_event(side: &'static str, step: &'static str, generation: u64, peer_version: &str, started: Instant) {
    tracing::info!(
        target: "baton_migrate::handoff",
        side,
        step,
        generation,
        peer_version,
        elapsed_us = started.elapsed().as_micros() as u64,
        "handoff step done"
    );
}

fn progress(phase: &str, done: bool, ok: bool, detail: &str) -> Progress {
    Progress {
        phase: phase.into(),
        done,
        ok,
        detail: detail.into(),
    }
}

fn unexpected(got: &Message, expected: &str) -> HandoffError {
    HandoffError::Protocol(format!("expected {expected}, got {}", got.name()))
}

async fn refuse(conn: &mut Conn, reason: &str, deadline: Instant) {
    let deadline = deadline.min(Instant::now() + Duration::from_secs(1));
    let _ = conn
        .send(
            &Message::Refuse {
                reason: reason.to_string(),
            },
            &[],
            deadline,
        )
        .await;
}

fn failpoint(crash_at: &Option<String>, step: &'static str) -> Result<(), StepError> {
    if crash_at.as_deref() == Some(step) {
        return Err(HandoffError::Failpoint(step).at(step));
    }
    Ok(())
}
