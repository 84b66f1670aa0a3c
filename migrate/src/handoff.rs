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
//!   STATE {application state}              ───────▶  (protocol 2)
//!   LISTENERS {tags} + SCM_RIGHTS fds ...  ───────▶  (batches of at most 64)
//!   LISTENERS_END {total}                  ───────▶  validates every fd: socket, listening, address;
//!                                                    adopts what its config claims, binds the rest,
//!                                                    is ready to accept on all of them (does not yet)
//!                                          ◀───────  READY {adopted, bound, unclaimed}
//!   COMMIT                                 ───────▶  starts accepting on all of them
//!                                          ◀───────  DONE
//!   stops accepting (keeps the queue: no shutdown()),
//!   releases serving.lock                            handoff complete: tells `migrate`, closes unclaimed fds
//!   ---- protocol 2 only: migration of live connections, ConnSender ───▶ ConnReceiver ----
//!   CONNS {id, kind, listener, buffers} + fds ────▶  (each connection at a quiescent point of the caller's)
//!                                          ◀───────  CONNS_ACK {accepted, refused}
//!   ... as connections become quiescent ...
//!   CONNS_END {state}                      ───────▶
//!   closes what was accepted, resumes what was refused, drains the rest, exits 0
//! ```
//!
//! Two words, two things: the *handoff* moves the listening sockets (HELLO to DONE); the *migration* that may
//! follow moves live client connections, from the old side's [`ConnSender`] (returned by [`hand_over_live`]) to
//! the new side's [`ConnReceiver`] (returned by [`Session::commit_live`]).
//!
//! In protocol 2 the old instance also sends `STATE` (opaque application state: baton's configuration and
//! counters) right after HELLO; it reaches the new side as [`Session::peer_state`]. A connection is the new
//! instance's only once acknowledged: an unacknowledged one (the successor died, hung or refused it) stays with
//! the old instance, whose copy of the socket was never closed.
//!
//! Until the old instance receives DONE it has changed nothing: any error, timeout or crash of the new instance
//! before that leaves it serving exactly as before (Envoy #14295 drained before the new one listened; Pingora shut
//! down even when the send failed). The new instance accepts only from COMMIT on, so a new instance that dies
//! before it takes no accepted connection down with it: until then every connection stays in the shared queue,
//! for the old one. Every read and write runs under the handoff deadline.
//!
//! `migrate` hooks connect to the same socket as [`PeerRole::Watcher`] and receive [`Progress`] until the final
//! report; the new instance keeps the socket open after the handoff until a watcher has read that report (or the
//! linger time passes), since kubelet may start the hook a little after the process.
//!
//! What each side calls:
//!
//! | side | calls | then |
//! |------|-------|------|
//! | new | [`Takeover::start`], [`Takeover::receive`] | adopt [`Session::listeners`], [`Session::commit`] (which starts your accepting on COMMIT), hold a [`crate::ServingLock`], [`Takeover::finish`] |
//! | old | [`crate::SuccessorWatch::next`], [`hand_over`] | on `Ok`: stop accepting (no `shutdown()`), drop the [`crate::ServingLock`], drain, exit |
//! | old, protocol 2 | [`hand_over_live`]; on `Ok` as after [`hand_over`], and [`ConnSender::send`] each connection once quiescent | close what was taken, resume the rest; [`ConnSender::end`], drain, exit |
//! | new, protocol 2 | [`Session::commit_live`], then [`ConnReceiver::next`] | adopt each [`ReceivedConn`], [`ConnReceiver::ack`], serve |
//! | postStart hook | [`watch_takeover`] | exit 0 if the final report is `ok`, else 1 |

use std::collections::VecDeque;
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
    ConnTag, Hello, ListenerTag, Message, PeerRole, Progress, Ready, MAX_FDS_PER_CONN, MAX_FDS_PER_FRAME,
    PROTOCOL_CONNS, PROTOCOL_MAX, PROTOCOL_MIN,
};

/// Who this process is, as told to the peer.
///
/// Two builds meet in a handoff and each logs the other; the generation counts handoffs since the pod started,
/// so that "which instance is serving" has an answer that survives any number of upgrades.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Upgrade generation: 1 on a fresh start, the predecessor's + 1 after a takeover. Sent by the old side
    /// ([`hand_over`]); the new side's generation is always derived from it (see [`Session::peer`]), so for
    /// [`Takeover::start`] only `version` matters.
    pub generation: u64,
    /// Software version, for the peer's logs.
    pub version: String,
}

/// A listening socket offered to the successor.
///
/// Borrowed, not given: the old instance must keep accepting on the very same socket until the commit, and the
/// successor receives a duplicate of it, not a new socket, so connections queued in the kernel are never lost.
#[derive(Debug)]
pub struct Offered<'a> {
    /// What it is: the name and kind are yours; put the socket's actual local address in `address`.
    pub tag: ListenerTag,
    /// The socket (e.g. `tokio::net::TcpListener::as_fd()`). It stays ours: the successor gets a duplicate, and
    /// the shared accept queue lives on.
    pub fd: BorrowedFd<'a>,
}

/// A completed handoff, seen from the old instance: what it logs before it stops accepting and drains.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The successor's READY report: which listeners it adopted, bound fresh, or will close.
    pub ready: Ready,
    /// The successor's generation (ours + 1).
    pub generation: u64,
    /// The successor's software version.
    pub version: String,
}

/// Old side: hands `listeners` to the successor at the other end of `stream`.
///
/// On `Ok` the successor accepts on every listener and has acknowledged the commit: the caller must now stop
/// accepting (without `shutdown()`), release its [`crate::ServingLock`], and drain. On `Err` nothing changed and
/// the caller keeps serving.
///
/// `stream` comes from [`crate::SuccessorWatch::next`]; `timeout` bounds the whole exchange (HELLO to DONE), so a
/// successor that hangs costs at most that long. Keep accepting while this runs: the successor starts accepting
/// as it reads COMMIT, and both processes take connections from the same queue until DONE arrives here.
///
/// Both sides, in one process (in real life they are two containers sharing the uds dir):
///
/// ```
/// use std::net::TcpListener;
/// use std::os::fd::AsFd;
/// use std::time::Duration;
/// use baton_migrate::{
///     hand_over, Identity, Inheritance, ListenerTag, Offered, Ready, SuccessorWatch, Takeover, TakeoverOptions,
///     UdsDir,
/// };
///
/// type Error = Box<dyn std::error::Error + Send + Sync>;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Error> {
/// let dir = UdsDir::new(std::env::temp_dir().join(format!("baton-doc-handover-{}", std::process::id())));
/// dir.ensure()?;
///
/// // The old instance serves on a listener, holds serving.lock, and watches for a successor.
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let serving = dir.hold_serving()?;
/// let mut watch = SuccessorWatch::new(&dir);
///
/// // The new instance takes over.
/// let new = tokio::spawn({
///     let dir = dir.clone();
///     async move {
///         let me = Identity { generation: 1, version: "v2".into() };
///         let mut takeover = Takeover::start(&dir, me, TakeoverOptions::new(Duration::from_secs(5)))?;
///         let Inheritance::Peer(mut session) = takeover.receive().await? else {
///             unreachable!("a live instance holds serving.lock");
///         };
///         let inherited = session.listeners.pop().ok_or("nothing handed over")?;
///         assert_eq!(inherited.check, Ok(addr));
///         let adopted = TcpListener::from(inherited.fd); // set_nonblocking(true) before giving it to tokio
///         let ready = Ready { adopted: vec![inherited.tag.name], ..Ready::default() };
///         session.commit(ready, || { /* start the accept loop on `adopted` */ }).await?;
///         drop(takeover); // a real server would `finish()`, which waits for the postStart hook
///         Ok::<_, Error>(adopted)
///     }
/// });
///
/// // The old instance sees the successor and hands its listener over.
/// let stream = watch.next().await;
/// let me = Identity { generation: 1, version: "v1".into() };
/// let tag = ListenerTag { name: "http".into(), address: addr.to_string(), kind: "http".into() };
/// let offered = [Offered { tag, fd: listener.as_fd() }];
/// let committed = hand_over(stream, &me, &offered, Duration::from_secs(5)).await?;
/// assert_eq!(committed.generation, 2);
/// assert_eq!(committed.ready.adopted, ["http"]);
/// // Committed: stop accepting and close our copy (never shutdown()), release serving.lock, drain, exit.
/// drop(listener);
/// drop(serving);
///
/// let adopted = new.await??;
/// assert_eq!(adopted.local_addr()?, addr); // the same socket, with the same accept queue
/// # std::fs::remove_dir_all(dir.path()).ok();
/// # Ok(())
/// # }
/// ```
pub async fn hand_over(
    stream: UnixStream,
    me: &Identity,
    listeners: &[Offered<'_>],
    timeout: Duration,
) -> Result<Committed, StepError> {
    hand_over_with(stream, me, listeners, timeout, None).await
}

/// [`hand_over`] with a test hook: `crash_at` = `after-hello`, `after-fds` or `after-ready` returns
/// [`HandoffError::Failpoint`] at that step without telling the peer (the caller exits, as if crashed there);
/// `hang-after-fds` stops responding after sending the listeners, as a hung process would.
///
/// For fault-injection tests only: with `crash_at: None` it is exactly [`hand_over`], which servers call.
pub async fn hand_over_with(
    stream: UnixStream,
    me: &Identity,
    listeners: &[Offered<'_>],
    timeout: Duration,
    crash_at: Option<&str>,
) -> Result<Committed, StepError> {
    let offer = Offer {
        listeners,
        state: serde_json::Value::Null,
        timeout,
        crash_at,
    };
    hand_over_live(stream, me, offer).await.map(|(committed, _)| committed)
}

/// What the old side offers in [`hand_over_live`].
#[derive(Debug)]
pub struct Offer<'a, 'b> {
    /// Every listening socket, as for [`hand_over`].
    pub listeners: &'a [Offered<'b>],
    /// Application state for the successor ([`Session::peer_state`]), sent only to a successor that speaks
    /// protocol 2; `Null` for none.
    pub state: serde_json::Value,
    /// Bounds the whole exchange, HELLO to DONE, and later each [`ConnSender::send`].
    pub timeout: Duration,
    /// Test hook, as in [`hand_over_with`].
    pub crash_at: Option<&'a str>,
}

/// Old side: [`hand_over`], then keeps the session open to hand over live connections.
///
/// Returns, with the commit, a [`ConnSender`] when the successor speaks protocol 2: send it the connections at
/// points where they are idle ([`ConnSender::send`]), then [`ConnSender::end`]. `None` means a successor of an older
/// protocol: drain as after [`hand_over`].
pub async fn hand_over_live(
    stream: UnixStream,
    me: &Identity,
    offer: Offer<'_, '_>,
) -> Result<(Committed, Option<ConnSender>), StepError> {
    hand_over_live_until(stream, me, offer, std::future::pending()).await
}

/// [`hand_over_live`] that gives up as soon as `abort` resolves (typically: a stop signal), with the reason it
/// resolves to.
///
/// Before COMMIT is sent the attempt ends at once: the successor gets a REFUSE with the reason (it exits, and its
/// postStart hook fails naming it) and the caller gets [`HandoffError::Aborted`], having changed nothing. Once
/// COMMIT is sent the successor is serving, whether or not its DONE arrives: the caller gets `Ok` without a
/// [`ConnSender`] (stop accepting and drain, as after [`hand_over`]).
pub async fn hand_over_live_until(
    stream: UnixStream,
    me: &Identity,
    offer: Offer<'_, '_>,
    abort: impl std::future::Future<Output = String>,
) -> Result<(Committed, Option<ConnSender>), StepError> {
    let t0 = Instant::now();
    let deadline = t0 + offer.timeout;
    let mut conn = Conn::new(stream).map_err(|e| e.at("connect"))?;
    step_event("old", "connect", me.generation, "", t0);
    let mut reached = Reached::default();
    let outcome = tokio::select! {
        biased;
        reason = abort => Err(reason),
        r = offer_steps(&mut conn, me, offer, &mut reached, t0, deadline) => Ok(r),
    };
    match outcome {
        Ok(Ok((committed, protocol))) => {
            let sender = (protocol >= PROTOCOL_CONNS).then_some(ConnSender {
                conn,
                timeout: deadline - t0,
                next_id: 1,
            });
            Ok((committed, sender))
        }
        Ok(Err(e)) => Err(e),
        Err(reason) => match reached.commit_sent {
            Some(committed) => {
                tracing::info!(reason = %reason, "handoff aborted after COMMIT: the successor serves");
                Ok((committed, None))
            }
            None => {
                // A peer that reads on finds the reason; one that is writing finds it after its write fails.
                let step = reached.step;
                refuse(&mut conn, &reason, Instant::now() + ABORT_PATIENCE).await;
                Err(HandoffError::Aborted(reason).at(step))
            }
        },
    }
}

/// How long an aborted handoff spends telling the successor why.
const ABORT_PATIENCE: Duration = Duration::from_millis(100);

/// How far the old side of a handoff got: what an abort must know.
#[derive(Default)]
struct Reached {
    /// The step under way.
    step: &'static str,
    /// Set once COMMIT is sent: from then on the successor serves.
    commit_sent: Option<Committed>,
}

/// The old side's steps, HELLO to DONE; the committed handoff and the protocol spoken.
async fn offer_steps(
    conn: &mut Conn,
    me: &Identity,
    offer: Offer<'_, '_>,
    reached: &mut Reached,
    t0: Instant,
    deadline: Instant,
) -> Result<(Committed, u16), StepError> {
    let Offer {
        listeners,
        state,
        timeout: _,
        crash_at,
    } = offer;
    let crash_at = crash_at.map(str::to_string);

    // 1. HELLO: negotiate the protocol version; then, in protocol 2, STATE.
    reached.step = "hello";
    let peer = offer_hello(conn, me, deadline).await?;
    step_event("old", "hello", me.generation, &peer.version, t0);
    failpoint(&crash_at, "after-hello")?;
    let protocol = peer.max_protocol;
    if protocol >= PROTOCOL_CONNS {
        conn.send(&Message::State(state), &[], deadline)
            .await
            .map_err(|e| e.at("hello"))?;
    }

    // 2. LISTENERS: every listening socket, in batches, each fd tagged with its name and address.
    reached.step = "listeners";
    send_listeners(conn, listeners, deadline).await?;
    step_event("old", "listeners", me.generation, &peer.version, t0);
    failpoint(&crash_at, "after-fds")?;
    if crash_at.as_deref() == Some("hang-after-fds") {
        tracing::warn!("failpoint hang-after-fds: this handoff session stops responding");
        std::future::pending::<()>().await;
    }

    // 3. READY: the successor can accept on everything.
    reached.step = "ready";
    let ready = await_ready(conn, deadline).await?;
    step_event("old", "ready", me.generation, &peer.version, t0);
    failpoint(&crash_at, "after-ready")?;

    // 4. COMMIT / DONE: only an acknowledged commit lets the caller stop accepting.
    reached.step = "commit";
    let committed = Committed {
        ready,
        generation: peer.generation,
        version: peer.version,
    };
    conn.send(&Message::Commit, &[], deadline)
        .await
        .map_err(|e| e.at("commit"))?;
    reached.commit_sent = Some(committed.clone());
    await_done(conn, deadline).await?;
    step_event("old", "commit", me.generation, &committed.version, t0);
    Ok((committed, protocol))
}

/// Old side, step 1: says HELLO with the range of protocol versions we speak, and returns the successor's answer,
/// which must name one of them.
async fn offer_hello(conn: &mut Conn, me: &Identity, deadline: Instant) -> Result<Hello, StepError> {
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
        refuse(conn, &reason, deadline).await;
        return Err(HandoffError::Protocol(reason).at("hello"));
    }
    Ok(peer)
}

/// Old side, step 2: every listener in batches of at most [`MAX_FDS_PER_FRAME`], then LISTENERS_END with the
/// total so the successor can tell a complete set from a truncated one.
async fn send_listeners(conn: &mut Conn, listeners: &[Offered<'_>], deadline: Instant) -> Result<(), StepError> {
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
        .map_err(|e| e.at("listeners"))
}

/// Old side, step 3: waits for READY, the successor's word that it can accept on every listener.
async fn await_ready(conn: &mut Conn, deadline: Instant) -> Result<Ready, StepError> {
    match conn.recv(deadline).await.map_err(|e| e.at("ready"))?.0 {
        Message::Ready(r) => Ok(r),
        Message::Refuse { reason } => Err(HandoffError::Refused(reason).at("ready")),
        other => Err(unexpected(&other, "READY").at("ready")),
    }
}

/// Old side, step 4: waits for DONE, the answer to COMMIT.
async fn await_done(conn: &mut Conn, deadline: Instant) -> Result<(), StepError> {
    match conn.recv(deadline).await.map_err(|e| e.at("commit"))?.0 {
        Message::Done => Ok(()),
        Message::Refuse { reason } => Err(HandoffError::Refused(reason).at("commit")),
        other => Err(unexpected(&other, "DONE").at("commit")),
    }
}

/// A live client connection for [`ConnSender::send`]: borrowed fds (the old instance keeps its copies until the
/// successor has acknowledged), and what the successor needs to resume it.
#[derive(Debug)]
pub struct OutgoingConn<'a> {
    /// Application-defined kind ([`ConnTag::kind`]).
    pub kind: String,
    /// Listener that accepted it.
    pub listener: String,
    /// Its sockets (1..=[`MAX_FDS_PER_CONN`]).
    pub fds: Vec<BorrowedFd<'a>>,
    /// Unprocessed bytes, in the application's order ([`ConnTag::buffers`]).
    pub buffers: Vec<Vec<u8>>,
}

/// Old side of the migration, after a committed [`hand_over_live`]: sends live client connections to the
/// successor.
///
/// Each batch is acknowledged connection by connection. A connection is the successor's only once acknowledged
/// as accepted: until then, and for every connection it refused, the old instance still owns it and must resume
/// serving it. Any error (the successor died, hung, or broke the protocol) leaves every connection of the failed
/// batch with the old instance; the session is then over, and the old instance should drain the rest.
pub struct ConnSender {
    conn: Conn,
    timeout: Duration,
    next_id: u64,
}

impl std::fmt::Debug for ConnSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnSender").field("next_id", &self.next_id).finish()
    }
}

impl ConnSender {
    /// Sends `batch` and waits for the successor's acknowledgement. Returns, per connection and in order, its
    /// [`ConnVerdict`]: [`ConnVerdict::Taken`] means the successor now serves it (close your copies without
    /// touching the socket again); any other verdict means it is still yours (resume it), and says why.
    ///
    /// A connection the protocol cannot carry is not sent at all: [`ConnVerdict::BadFds`] (not
    /// 1..=[`MAX_FDS_PER_CONN`] fds) or [`ConnVerdict::TooLarge`] (its buffers do not fit one frame: see
    /// [`conn_fits`]). The others of the batch are sent all the same.
    ///
    /// On `Err` the successor is gone or misbehaving: do not call `send` again. A batch goes out in several
    /// frames, and the successor may have acknowledged some before the failure: [`SendError::verdicts`] says, as
    /// on `Ok`, which connections it took (close your copies: it serves them) and which are still yours (resume
    /// them), so that no connection is served by both.
    pub async fn send(&mut self, batch: &[OutgoingConn<'_>]) -> Result<Vec<ConnVerdict>, SendError> {
        let mut verdicts: Vec<ConnVerdict> = batch.iter().map(ConnVerdict::unsendable).collect();
        match self.send_frames(batch, &mut verdicts).await {
            Ok(()) => Ok(verdicts),
            Err(error) => Err(SendError { error, verdicts }),
        }
    }

    /// [`ConnSender::send`]'s work: records each acknowledged connection's verdict in `verdicts` as it comes.
    async fn send_frames(
        &mut self,
        batch: &[OutgoingConn<'_>],
        verdicts: &mut [ConnVerdict],
    ) -> Result<(), HandoffError> {
        // What the protocol can carry is sent; the rest keeps its verdict and stays with the caller.
        let sendable: Vec<(usize, usize)> = batch
            .iter()
            .enumerate()
            .filter(|&(i, _)| verdicts[i] == ConnVerdict::Refused)
            .map(|(i, c)| (i, payload_size(c)))
            .collect();
        // Frames of at most MAX_FDS_PER_FRAME fds and MAX_CONN_FRAME_BYTES of payload each.
        let mut frames: Vec<&[(usize, usize)]> = Vec::new();
        let mut rest = &sendable[..];
        while !rest.is_empty() {
            let (mut fds, mut bytes, mut n) = (0, 0, 0);
            for &(i, size) in rest {
                let more = batch[i].fds.len();
                if n > 0 && (fds + more > MAX_FDS_PER_FRAME || bytes + size > MAX_CONN_FRAME_BYTES) {
                    break;
                }
                (fds, bytes, n) = (fds + more, bytes + size, n + 1);
            }
            let (frame, later) = rest.split_at(n);
            frames.push(frame);
            rest = later;
        }
        // Up to FRAMES_IN_FLIGHT frames go out before the first acknowledgement is read: the successor reads one
        // frame, adopts it, acknowledges it and reads the next, so the acknowledgements come back in order while
        // it already has the next frame to work on (no change to the protocol: a successor of any version does
        // the same).
        let mut out: VecDeque<(Vec<(u64, usize)>, Instant)> = VecDeque::with_capacity(FRAMES_IN_FLIGHT);
        for frame in frames {
            if out.len() == FRAMES_IN_FLIGHT {
                if let Some((ids, deadline)) = out.pop_front() {
                    self.read_ack(ids, deadline, verdicts).await?;
                }
            }
            out.push_back(self.send_frame(batch, frame).await?);
        }
        while let Some((ids, deadline)) = out.pop_front() {
            self.read_ack(ids, deadline, verdicts).await?;
        }
        Ok(())
    }

    /// Sends one CONNS frame of `batch[i]` for each `(i, _)` of `frame`: the ids it gave them (with their index in
    /// `batch`), and the deadline of its acknowledgement.
    async fn send_frame(
        &mut self,
        batch: &[OutgoingConn<'_>],
        frame: &[(usize, usize)],
    ) -> Result<(Vec<(u64, usize)>, Instant), HandoffError> {
        let mut tags = Vec::with_capacity(frame.len());
        let mut attached: Vec<BorrowedFd<'_>> = Vec::new();
        let mut ids = Vec::with_capacity(frame.len());
        for &(i, _) in frame {
            let c = &batch[i];
            let id = self.next_id;
            self.next_id += 1;
            tags.push(ConnTag {
                id,
                kind: c.kind.clone(),
                listener: c.listener.clone(),
                fds: c.fds.len() as u8,
                buffers: c.buffers.clone(),
            });
            attached.extend(c.fds.iter().copied());
            ids.push((id, i));
        }
        let deadline = Instant::now() + self.timeout;
        self.conn.send(&Message::Conns(tags), &attached, deadline).await?;
        Ok((ids, deadline))
    }

    /// Reads the acknowledgement of the oldest frame out, whose connections are `ids`, and records it.
    async fn read_ack(
        &mut self,
        ids: Vec<(u64, usize)>,
        deadline: Instant,
        verdicts: &mut [ConnVerdict],
    ) -> Result<(), HandoffError> {
        let (accepted, refused) = match self.conn.recv(deadline).await? {
            (Message::ConnsAck { accepted, refused }, _) => (accepted, refused),
            (other, _) => return Err(unexpected(&other, "CONNS_ACK")),
        };
        for (id, i) in ids {
            let acc = accepted.contains(&id);
            if acc && refused.contains(&id) {
                return Err(HandoffError::Protocol(format!(
                    "CONNS_ACK both accepts and refuses connection {id}"
                )));
            }
            // Unmentioned means not taken: the successor closed what it did not acknowledge.
            verdicts[i] = if acc { ConnVerdict::Taken } else { ConnVerdict::Refused };
        }
        Ok(())
    }

    /// Tells the successor that no more connections follow, with the application's final state
    /// ([`Received::End`]).
    pub async fn end(mut self, state: serde_json::Value) -> Result<(), HandoffError> {
        let deadline = Instant::now() + self.timeout;
        self.conn.send(&Message::ConnsEnd(state), &[], deadline).await
    }
}

/// [`ConnSender::send`] failed: why, and what became of each connection of the batch all the same.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SendError {
    /// Why the session broke.
    #[source]
    pub error: HandoffError,
    /// Per connection of the batch, in order: [`ConnVerdict::Taken`] for those the successor acknowledged before
    /// the failure (it serves them: close your copies), anything else for those still yours (resume them).
    pub verdicts: Vec<ConnVerdict>,
}

impl From<SendError> for HandoffError {
    /// The cause alone, for callers that own nothing of the batch any more either way.
    fn from(e: SendError) -> HandoffError {
        e.error
    }
}

/// What became of one connection offered with [`ConnSender::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnVerdict {
    /// The successor acknowledged it: it serves it now. Close your copies without touching the socket again.
    Taken,
    /// Sent, and refused by the successor (or left out of its acknowledgement, which means the same: it closed
    /// its copies). Resume it; the successor would refuse it again.
    Refused,
    /// Not sent: its buffers do not fit one CONNS frame ([`conn_fits`]). Resume it; once it has written out some
    /// of what it holds it can be offered again.
    TooLarge,
    /// Not sent: it carries no fd, or more than [`MAX_FDS_PER_CONN`]. Resume it; it cannot be handed over.
    BadFds,
}

impl ConnVerdict {
    /// Why `c` cannot be sent at all, or `Refused` (the verdict of a sendable connection until the successor
    /// acknowledges it).
    fn unsendable(c: &OutgoingConn<'_>) -> ConnVerdict {
        if !(1..=usize::from(MAX_FDS_PER_CONN)).contains(&c.fds.len()) {
            ConnVerdict::BadFds
        } else if payload_size(c) > MAX_CONN_FRAME_BYTES {
            ConnVerdict::TooLarge
        } else {
            ConnVerdict::Refused
        }
    }

    /// Whether the successor took it.
    pub fn taken(self) -> bool {
        self == ConnVerdict::Taken
    }
}

impl std::fmt::Display for ConnVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnVerdict::Taken => "taken by the successor",
            ConnVerdict::Refused => "refused by the successor",
            ConnVerdict::TooLarge => "its buffers are too large for one frame",
            ConnVerdict::BadFds => "it carries no fd or too many",
        })
    }
}

/// Whether a connection whose buffers have these lengths fits one CONNS frame, whatever its kind and listener
/// name (up to 128 bytes each): [`ConnSender::send`] answers [`ConnVerdict::TooLarge`] for one that does not. A
/// `const fn`, so that an application can check at compile time that what its connections may hold always fits.
pub const fn conn_fits(buffer_lens: &[usize]) -> bool {
    buffers_size(buffer_lens) <= MAX_CONN_FRAME_BYTES
}

/// Bytes a connection's buffers take in a CONNS frame, over-estimated: in base64, plus room for its tag.
const fn buffers_size(buffer_lens: &[usize]) -> usize {
    let mut size = 256;
    let mut i = 0;
    while i < buffer_lens.len() {
        size += buffer_lens[i] * 4 / 3 + 8;
        i += 1;
    }
    size
}

/// Bytes a connection takes in a CONNS frame, over-estimated: its buffers in base64 plus room for its tag.
fn payload_size(c: &OutgoingConn<'_>) -> usize {
    let lens: Vec<usize> = c.buffers.iter().map(Vec::len).collect();
    buffers_size(&lens) + c.kind.len().saturating_sub(128) + c.listener.len().saturating_sub(128)
}

/// Largest payload budget of one CONNS frame (the frame limit is [`crate::wire::MAX_FRAME`]).
const MAX_CONN_FRAME_BYTES: usize = 768 * 1024;

/// CONNS frames [`ConnSender::send`] has out at once, unacknowledged: the successor works on one while the next
/// ones are already on their way (10,000 idle connections: 152 ms with one frame out at a time, 92-101 ms with
/// eight, on a 2-core machine). The kernel refuses to queue more fds in Unix sockets than the sender's soft
/// open-file limit (ETOOMANYREFS), so `FRAMES_IN_FLIGHT * MAX_FDS_PER_FRAME` (512) stays below the usual
/// default of 1024.
const FRAMES_IN_FLIGHT: usize = 8;

/// New side of the migration, after [`Session::commit_live`]: receives the predecessor's live client connections
/// as they arrive.
pub struct ConnReceiver {
    conn: Conn,
    crash_at: Option<String>,
}

/// What [`ConnReceiver::next`] received.
#[derive(Debug)]
pub enum Received {
    /// Connections to adopt; answer with [`ConnReceiver::ack`] before anything else.
    Conns(Vec<ReceivedConn>),
    /// The predecessor sent everything; its final application state.
    End(serde_json::Value),
}

/// A live client connection received from the predecessor.
#[derive(Debug)]
pub struct ReceivedConn {
    /// What the predecessor said it is, with its unprocessed bytes.
    pub tag: ConnTag,
    /// Its sockets, in the order the predecessor gave them (close-on-exec; mode as the predecessor had it: set
    /// non-blocking yourself).
    pub fds: Vec<OwnedFd>,
}

impl ConnReceiver {
    /// Waits for the next batch of connections or the end, until `deadline`.
    ///
    /// A connection is not yours until you [`ConnReceiver::ack`] it: do not read from or write to it before. Adopt
    /// (register with the runtime), acknowledge, then serve.
    pub async fn next(&mut self, deadline: Instant) -> Result<Received, HandoffError> {
        match self.conn.recv(deadline).await? {
            (Message::Conns(tags), fds) => {
                if self.crash_at.as_deref() == Some("conns-before-ack") {
                    return Err(HandoffError::Failpoint("conns-before-ack"));
                }
                let mut fds = fds.into_iter();
                let conns = tags
                    .into_iter()
                    .map(|tag| {
                        let mine = fds.by_ref().take(usize::from(tag.fds)).collect();
                        ReceivedConn { tag, fds: mine }
                    })
                    .collect();
                Ok(Received::Conns(conns))
            }
            (Message::ConnsEnd(state), _) => Ok(Received::End(state)),
            (other, _) => Err(unexpected(&other, "CONNS or CONNS_END")),
        }
    }

    /// Acknowledges the last batch: `accepted` ids are served here from now on; `refused` ones (closed here)
    /// go back to the predecessor.
    pub async fn ack(&mut self, accepted: Vec<u64>, refused: Vec<u64>, deadline: Instant) -> Result<(), HandoffError> {
        self.conn
            .send(&Message::ConnsAck { accepted, refused }, &[], deadline)
            .await
    }
}

/// Settings of the new side. Build with [`TakeoverOptions::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct TakeoverOptions {
    /// The whole handoff: waiting for the predecessor, receiving, READY, COMMIT. A live predecessor that does not
    /// connect within it makes [`Takeover::receive`] fail rather than wait forever.
    pub timeout: Duration,
    /// How long the reconfig socket stays open after the end, for a `migrate` watcher that has not connected yet:
    /// kubelet starts the postStart hook after the container, and the hook must still learn how the takeover
    /// ended. [`Takeover::finish`] returns early as soon as a watcher has read the final report.
    pub linger: Duration,
    /// Test hook: stop abruptly (return [`HandoffError::Failpoint`]) at `after-hello`, `after-fds`,
    /// `before-ready` or `after-ready`, without telling the peer, as if the process had crashed there; or, with
    /// `delay-ready`, take 2 s more before READY, as a successor adopting many listeners would.
    pub crash_at: Option<String>,
}

impl TakeoverOptions {
    /// Defaults for a given handoff timeout: `linger` equal to it, no failpoint. The same timeout should be used
    /// on the old side ([`hand_over`]); the postStart hook's ([`watch_takeover`]) should be longer.
    pub fn new(timeout: Duration) -> TakeoverOptions {
        TakeoverOptions {
            timeout,
            linger: timeout,
            crash_at: None,
        }
    }
}

/// New side: owns the reconfig socket for the length of a takeover.
///
/// From [`Takeover::start`] to [`Takeover::finish`] this process is the one new instance on the uds dir: it
/// owns `reconfig.sock` (so the old instance can find it and the postStart hook can follow it), answers the old
/// instance once, and reports progress to any number of watchers. Dropping it releases the socket at once,
/// without the final report (a watcher then sees the connection close and fails).
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
///
/// The env says "take over" also after a crash or a pod restart, when there is nobody to take over from, so
/// both outcomes are normal.
pub enum Inheritance {
    /// No live instance holds the uds dir: bind every listener fresh (the ports are free), then
    /// [`Takeover::finish`] so the postStart hook returns.
    NoPeer,
    /// A predecessor sent its listeners: adopt them, then [`Session::commit`] (which says when to accept).
    Peer(Box<Session>),
}

/// A listening socket received from the predecessor.
///
/// Its tag is the predecessor's word; `check` is the kernel's. Match on `check`, not on the tag: the old build
/// may name things differently, and an fd that is not what it claims must never be served on.
#[derive(Debug)]
pub struct Inherited {
    /// What the predecessor said it is.
    pub tag: ListenerTag,
    /// The socket (close-on-exec, still in blocking mode as sent): call `set_nonblocking(true)` on it before
    /// `tokio::net::TcpListener::from_std`, or accepts will block a runtime thread. Dropping it closes it, which
    /// is how to get rid of a listener the new configuration no longer wants (after the commit: before, the old
    /// instance still serves on it anyway).
    pub fd: OwnedFd,
    /// Its actual local address if it is a listening TCP socket, else why it is not (checked with `getsockopt`
    /// and `getsockname` on arrival).
    pub check: Result<SocketAddr, String>,
}

/// An open handoff session on the new side, after the listeners arrived.
///
/// The predecessor is waiting for READY and still accepting. Take the listeners you want out of
/// [`Session::listeners`], make them ready to accept on, then [`Session::commit`], which tells you when to start;
/// or [`Session::refuse`] if you cannot use them, and the predecessor carries on as if nothing happened.
pub struct Session {
    conn: Conn,
    deadline: Instant,
    progress: Arc<watch::Sender<Progress>>,
    crash_at: Option<String>,
    started: Instant,
    generation: u64,
    protocol: u16,
    /// The predecessor's HELLO: its version (for logs) and its generation (ours is `peer.generation + 1`).
    pub peer: Hello,
    /// The predecessor's application state ([`Offer::state`]), if it speaks protocol 2.
    pub peer_state: Option<serde_json::Value>,
    /// The listeners it sent, in its order. Take ownership of what you adopt (`swap_remove`, `mem::take`); what
    /// is left is closed when the session is consumed.
    pub listeners: Vec<Inherited>,
}

impl Takeover {
    /// Binds the reconfig socket in `dir` and starts answering peers on it.
    ///
    /// Call it first, before binding anything: the moment `reconfig.sock` appears, the old instance starts the
    /// handoff, and the postStart hook can follow it. Creates `dir` if missing. Fails with
    /// [`HandoffError::Dir`] if the directory is unusable or another new instance already owns the socket.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns the task that accepts on the socket).
    ///
    /// ```
    /// use std::time::Duration;
    /// use baton_migrate::{Identity, Inheritance, Takeover, TakeoverOptions, UdsDir};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = UdsDir::new(std::env::temp_dir().join(format!("baton-doc-start-{}", std::process::id())));
    /// let me = Identity { generation: 1, version: "v2".into() };
    /// let mut opts = TakeoverOptions::new(Duration::from_secs(30));
    /// # opts.linger = Duration::from_millis(10); // no postStart hook in this example
    /// let mut takeover = Takeover::start(&dir, me, opts)?;
    /// match takeover.receive().await? {
    ///     Inheritance::NoPeer => {
    ///         // First start, pod restart or crashed predecessor: nobody holds serving.lock (as here).
    ///         // Bind every listener, start accepting, hold serving.lock, then tell the postStart hook:
    ///         takeover.finish(true, "fresh", "no live predecessor; bound every listener").await;
    ///     }
    ///     Inheritance::Peer(session) => {
    ///         // Adopt session.listeners, commit (accepting from COMMIT on), hold serving.lock: see
    ///         // `Session::commit`.
    /// #       unreachable!();
    ///     }
    /// }
    /// # std::fs::remove_dir_all(dir.path()).ok();
    /// # Ok(())
    /// # }
    /// ```
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

    /// Reports a phase to `migrate` watchers: the hook prints the last phase it saw when it fails or times out,
    /// which tells an operator where a takeover got stuck. The phase names are free-form.
    pub fn report(&self, phase: &str, detail: &str) {
        self.progress.send_replace(progress(phase, false, false, detail));
    }

    /// Waits for the predecessor and receives its listeners.
    ///
    /// Returns [`Inheritance::NoPeer`] at once when no live instance holds `serving.lock` (first start, pod
    /// restart, crashed predecessor). A live one that does not connect within the timeout is an error: it still
    /// holds the ports, so binding fresh would fail or steal its traffic.
    ///
    /// On `Err`, ask [`UdsDir::peer_serving`] again, for a second or so (a dying process releases the lock a
    /// moment after its socket closed): once it says `false` the predecessor is gone with its ports, and binding
    /// fresh is safe; if it stays `true` the predecessor is still serving, and this instance should report the
    /// failure with [`Takeover::finish`] and exit. Call it once. Take this process's own
    /// [`crate::ServingLock`] only after the session is over: the probe cannot tell our lock from a peer's.
    ///
    /// Dropping the future (say, on SIGTERM) and then the `Takeover` ends the session early; the predecessor,
    /// having changed nothing, keeps serving.
    pub async fn receive(&mut self) -> Result<Inheritance, StepError> {
        if !self.dir.peer_serving().map_err(|e| e.at("discover"))? {
            return Ok(Inheritance::NoPeer);
        }
        let Some((mut conn, peer)) = self.accept_predecessor().await? else {
            return Ok(Inheritance::NoPeer);
        };
        let deadline = self.deadline;
        let t0 = Instant::now();
        let generation = peer.generation.saturating_add(1);
        step_event("new", "connect", generation, &peer.version, t0);

        // 1. HELLO: pick the newest protocol both speak, or refuse.
        let protocol = self.answer_hello(&mut conn, &peer).await?;
        step_event("new", "hello", generation, &peer.version, t0);
        failpoint(&self.opts.crash_at, "after-hello")?;
        self.report("receiving", "");

        // 2. STATE (protocol 2), then LISTENERS until LISTENERS_END.
        let (peer_state, listeners) = self.receive_listeners(&mut conn, protocol).await?;
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
            protocol,
            peer,
            peer_state,
            listeners,
        })))
    }

    /// Waits for the predecessor to connect and say HELLO as a sender (the accept loop checked that much), or
    /// returns `None` if it died first.
    ///
    /// The wait re-checks that the predecessor is still alive: one that dies before connecting releases
    /// serving.lock, and then there is nothing to wait for.
    async fn accept_predecessor(&mut self) -> Result<Option<(Conn, Hello)>, StepError> {
        let mut senders = self
            .senders
            .take()
            .ok_or_else(|| HandoffError::Protocol("receive called twice".into()).at("discover"))?;
        let found = loop {
            let tick = Instant::now() + Duration::from_millis(250);
            match tokio::time::timeout_at(tick.min(self.deadline), senders.recv()).await {
                Ok(found) => break found,
                Err(_) if Instant::now() >= self.deadline => {
                    return Err(HandoffError::Timeout(format!(
                        "waiting {:?} for the live instance on {} to connect",
                        self.opts.timeout,
                        self.dir.path().display()
                    ))
                    .at("discover"))
                }
                Err(_) => {
                    if !self.dir.peer_serving().map_err(|e| e.at("discover"))? {
                        return Ok(None);
                    }
                }
            }
        };
        drop(senders); // any later sender is refused by the accept loop
        found.map(Some).ok_or_else(|| HandoffError::PeerClosed.at("discover"))
    }

    /// New side, step 1: answers the predecessor's HELLO with the newest protocol version both speak, and returns
    /// it; refuses the predecessor if there is none.
    async fn answer_hello(&self, conn: &mut Conn, peer: &Hello) -> Result<u16, StepError> {
        let chosen = PROTOCOL_MAX.min(peer.max_protocol);
        if chosen < PROTOCOL_MIN.max(peer.min_protocol) {
            let err = HandoffError::Version {
                ours_min: PROTOCOL_MIN,
                ours_max: PROTOCOL_MAX,
                peer_min: peer.min_protocol,
                peer_max: peer.max_protocol,
            };
            refuse(conn, &err.to_string(), self.deadline).await;
            return Err(err.at("hello"));
        }
        let hello = Hello {
            role: PeerRole::Receiver,
            min_protocol: chosen,
            max_protocol: chosen,
            generation: peer.generation.saturating_add(1),
            version: self.me.version.clone(),
        };
        if let Err(e) = conn.send(&Message::Hello(hello), &[], self.deadline).await {
            return Err(pending_refusal(conn).await.unwrap_or(e).at("hello"));
        }
        Ok(chosen)
    }

    /// New side, step 2: receives the predecessor's application state (protocol 2 only, first if at all), then
    /// its listeners in batches until LISTENERS_END, each fd checked on arrival. Anything else, or a count that
    /// does not add up, is refused.
    async fn receive_listeners(
        &self,
        conn: &mut Conn,
        protocol: u16,
    ) -> Result<(Option<serde_json::Value>, Vec<Inherited>), StepError> {
        let deadline = self.deadline;
        let mut listeners = Vec::new();
        let mut peer_state = None;
        loop {
            match conn.recv(deadline).await.map_err(|e| e.at("listeners"))? {
                (Message::State(state), _)
                    if protocol >= PROTOCOL_CONNS && peer_state.is_none() && listeners.is_empty() =>
                {
                    peer_state = Some(state);
                }
                (Message::Listeners(tags), _) if listeners.len() + tags.len() > MAX_LISTENERS => {
                    // The batch's fds are closed as they drop here.
                    let reason = format!("more than {MAX_LISTENERS} listeners offered");
                    refuse(conn, &reason, deadline).await;
                    return Err(HandoffError::Protocol(reason).at("listeners"));
                }
                (Message::Listeners(tags), fds) => {
                    for (tag, fd) in tags.into_iter().zip(fds) {
                        let check = sys::listening_tcp_addr(fd.as_fd());
                        listeners.push(Inherited { tag, fd, check });
                    }
                }
                (Message::ListenersEnd { total }, _) if total as usize == listeners.len() => break,
                // The predecessor gave up (a stop signal): it drains, and this instance must not serve.
                (Message::Refuse { reason }, _) => return Err(HandoffError::Refused(reason).at("listeners")),
                (Message::ListenersEnd { total }, _) => {
                    let reason = format!("LISTENERS_END says {total} listeners, {} arrived", listeners.len());
                    refuse(conn, &reason, deadline).await;
                    return Err(HandoffError::Protocol(reason).at("listeners"));
                }
                (other, _) => {
                    let err = unexpected(&other, "LISTENERS");
                    refuse(conn, &err.to_string(), deadline).await;
                    return Err(err.at("listeners"));
                }
            }
        }
        Ok((peer_state, listeners))
    }

    /// Ends the takeover: publishes the final report to `migrate` watchers, waits until one has read it (or the
    /// linger time passes), then closes and unlinks the reconfig socket and releases its lock.
    ///
    /// `ok` is what the postStart hook's exit code will say: `true` when this instance serves every listener
    /// (adopted or bound fresh), `false` when it is about to exit. `phase` and `detail` are printed by the hook.
    ///
    /// It can take up to [`TakeoverOptions::linger`] when no hook runs, so a server usually spawns it and keeps
    /// serving; but it must not start its own [`crate::SuccessorWatch`] before this returns, or it would find
    /// its own socket.
    ///
    /// ```no_run
    /// # async fn f(takeover: baton_migrate::Takeover) {
    /// let finishing = tokio::spawn(takeover.finish(true, "complete", "adopted 1 listener"));
    /// // ... serve; once `finishing` has completed, start watching for a successor.
    /// finishing.await.ok();
    /// # }
    /// ```
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
    /// Sends READY, waits for COMMIT, calls `accept` (start accepting on every listener you adopted or bound),
    /// acknowledges with DONE.
    ///
    /// READY says you can serve every listener; accept on none of them before COMMIT. Until then the predecessor
    /// serves everything from the shared queues, and a refusal or a crash here (of either process) leaves no
    /// connection in the hands of an instance that will not serve it. `accept` runs once COMMIT is in, before
    /// DONE goes out: from the predecessor's reading of DONE on, nobody else accepts on those sockets, and the
    /// two overlap instead of leaving a gap.
    ///
    /// On `Err(HandoffError::Refused)` the predecessor said it keeps serving: `accept` was not called; close the
    /// listeners and exit. Any other error after READY means the predecessor crashed or hung mid-commit; the
    /// sockets are shared, so serve anyway: start accepting yourself if `accept` was not called (make starting
    /// twice harmless). Take your [`crate::ServingLock`] after this returns (see [`Takeover::receive`] for why not
    /// before); on success, listeners left in [`Session::listeners`] are closed, and [`Takeover::finish`] tells
    /// the postStart hook.
    ///
    /// ```no_run
    /// use std::net::SocketAddr;
    /// use std::sync::Arc;
    /// use baton_migrate::{HandoffError, Ready, Session, UdsDir};
    ///
    /// # async fn adopt(mut session: Box<Session>, dir: &UdsDir, wanted: SocketAddr)
    /// #     -> Result<(), Box<dyn std::error::Error>> {
    /// // Adopt the socket whose actual address is the one we serve; whatever else arrived is closed afterwards.
    /// let Some(pos) = session.listeners.iter().position(|l| l.check == Ok(wanted)) else {
    ///     session.refuse(&format!("nothing was handed over on {wanted}")).await; // the old keeps serving
    ///     return Err("nothing to adopt".into());
    /// };
    /// let inherited = session.listeners.swap_remove(pos);
    /// let std_listener = std::net::TcpListener::from(inherited.fd);
    /// std_listener.set_nonblocking(true)?; // it arrives in blocking mode
    /// let listener = tokio::net::TcpListener::from_std(std_listener)?;
    /// // The accept loop, held until the commit (a Notify keeps one permit: starting twice is harmless).
    /// let go = Arc::new(tokio::sync::Notify::new());
    /// tokio::spawn({
    ///     let go = go.clone();
    ///     async move {
    ///         go.notified().await;
    ///         while let Ok((conn, _)) = listener.accept().await { /* serve conn */ }
    ///     }
    /// });
    /// let ready = Ready {
    ///     adopted: vec![inherited.tag.name],
    ///     bound: vec![],
    ///     unclaimed: session.listeners.iter().map(|l| l.tag.name.clone()).collect(),
    /// };
    /// match session.commit(ready, || go.notify_one()).await {
    ///     Ok(()) => {}
    ///     Err(e) if matches!(e.error, HandoffError::Refused(_)) => {
    ///         // The predecessor keeps serving; we accepted nothing. Exit non-zero.
    ///         return Err(e.into());
    ///     }
    ///     Err(e) => {
    ///         eprintln!("the predecessor did not confirm the commit ({e}); serving anyway");
    ///         go.notify_one();
    ///     }
    /// }
    /// let serving = dir.hold_serving()?; // a successor will wait for us from now on
    /// # drop(serving);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn commit(self, ready: Ready, accept: impl FnOnce() + Send) -> Result<(), StepError> {
        self.commit_live(ready, accept).await.map(drop)
    }

    /// [`Session::commit`], then keeps the session open to receive the predecessor's live connections
    /// ([`ConnReceiver`]); `None` when the predecessor speaks an older protocol that hands over none.
    pub async fn commit_live(
        mut self,
        ready: Ready,
        accept: impl FnOnce() + Send,
    ) -> Result<Option<ConnReceiver>, StepError> {
        failpoint(&self.crash_at, "before-ready")?;
        if self.crash_at.as_deref() == Some("delay-ready") {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if let Err(e) = self.conn.send(&Message::Ready(ready), &[], self.deadline).await {
            // A predecessor that gave up meanwhile closed the session after a REFUSE: its reason beats EPIPE.
            return Err(pending_refusal(&mut self.conn).await.unwrap_or(e).at("ready"));
        }
        self.progress.send_replace(progress("ready", false, false, ""));
        step_event("new", "ready", self.generation, &self.peer.version, self.started);
        failpoint(&self.crash_at, "after-ready")?;
        match self.conn.recv(self.deadline).await.map_err(|e| e.at("commit"))?.0 {
            Message::Commit => {}
            Message::Refuse { reason } => return Err(HandoffError::Refused(reason).at("commit")),
            other => return Err(unexpected(&other, "COMMIT").at("commit")),
        }
        accept();
        self.conn
            .send(&Message::Done, &[], self.deadline)
            .await
            .map_err(|e| e.at("commit"))?;
        step_event("new", "commit", self.generation, &self.peer.version, self.started);
        Ok((self.protocol >= PROTOCOL_CONNS).then_some(ConnReceiver {
            conn: self.conn,
            crash_at: self.crash_at,
        }))
    }

    /// Abandons the session, telling the predecessor why. It keeps serving.
    ///
    /// Better than dropping the session: the old instance logs the reason instead of a closed connection, and
    /// stops waiting at once instead of at its timeout. Still report the failure with [`Takeover::finish`].
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

/// Most listeners one handoff may carry (in all batches): a bound on what a peer can make us hold.
pub const MAX_LISTENERS: usize = 1024;

/// How long `migrate` waits for a new instance to own the reconfig socket before concluding it is not coming.
/// A starting instance takes it within milliseconds of reading its config.
const START_GRACE: Duration = Duration::from_secs(10);
/// Pause between connection attempts of `migrate`.
const RETRY: Duration = Duration::from_millis(5);

/// `migrate` side: waits until the takeover on `dir` ends, and returns its final report.
///
/// Retries the connection until `timeout` (the new instance may not have bound the socket yet, or a stale file
/// from a dead process may be there). Errors say what was last seen.
///
/// This is what a SidecarSet `postStart` exec hook runs: Kruise considers the new slot started, and resets the
/// old one, only once the hook returns, so the hook must not return before the takeover ended, and must fail
/// if it failed. Kubelet puts no deadline on exec hooks, hence the mandatory `timeout` (make it longer than the
/// handoff's). Gives up early, after 10 s, if no new instance ever owned the socket. Call it only in a slot whose
/// [`crate::Role`] is `Takeover`; in the others there is nothing to wait for.
///
/// ```
/// use std::time::Duration;
/// use baton_migrate::{watch_takeover, Role, UdsDir};
/// # use baton_migrate::{Identity, Inheritance, Takeover, TakeoverOptions};
///
/// /// The postStart hook: returns the exit code.
/// async fn post_start(dir: &UdsDir) -> i32 {
///     match Role::from_env() {
///         Ok(Role::Takeover) => {}
///         Ok(_) => return 0, // first start or idle slot: nothing to migrate
///         Err(e) => {
///             eprintln!("{e}");
///             return 2;
///         }
///     }
///     match watch_takeover(dir, Duration::from_secs(60)).await {
///         Ok(report) if report.ok => {
///             println!("{}: {}", report.phase, report.detail);
///             0
///         }
///         Ok(report) => {
///             eprintln!("handoff failed: {}", report.detail);
///             1
///         }
///         Err(why) => {
///             eprintln!("handoff failed: {why}");
///             1
///         }
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() {
/// # std::env::set_var("SIDECARSET_VERSION", "7340032");
/// # std::env::set_var("SIDECARSET_VERSION_ALT", "1");
/// # let dir = UdsDir::new(std::env::temp_dir().join(format!("baton-doc-watch-{}", std::process::id())));
/// # // The new instance, normally another process: no predecessor here, so it binds fresh.
/// # let me = Identity { generation: 1, version: "v2".into() };
/// # let mut takeover = Takeover::start(&dir, me, TakeoverOptions::new(Duration::from_secs(5))).unwrap();
/// # assert!(matches!(takeover.receive().await, Ok(Inheritance::NoPeer)));
/// # let finishing = tokio::spawn(takeover.finish(true, "fresh", "bound every listener"));
/// assert_eq!(post_start(&dir).await, 0);
/// # finishing.await.unwrap();
/// # std::fs::remove_dir_all(dir.path()).ok();
/// # }
/// ```
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
            let why = match last_connect_error.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "the socket is there but nothing listens on it: the instance that created it exited"
                }
                std::io::ErrorKind::NotFound => "no instance has started a takeover there",
                _ => "it cannot be reached",
            };
            return Err(format!(
                "timed out after {timeout:?}: no baton instance answered on {}: {why} ({last_connect_error})",
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

/// A REFUSE the peer sent before closing the session, if one is waiting to be read: after a failed write, the
/// reason the session ended.
async fn pending_refusal(conn: &mut Conn) -> Option<HandoffError> {
    match conn.recv(Instant::now() + Duration::from_millis(100)).await {
        Ok((Message::Refuse { reason }, _)) => Some(HandoffError::Refused(reason)),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MAX_FRAME;

    /// The largest buffers `conn_fits` accepts, with the longest names it allows, encode within one frame: the
    /// estimate over-estimates, so a connection `send` sends is never refused by the encoder.
    #[test]
    fn what_conn_fits_accepts_encodes_within_one_frame() {
        let mut half = MAX_CONN_FRAME_BYTES / 2;
        while !conn_fits(&[half, half]) {
            half -= 1;
        }
        assert!(!conn_fits(&[half + 1, half + 1]));
        let tag = ConnTag {
            id: u64::MAX,
            kind: "k".repeat(128),
            listener: "l".repeat(128),
            fds: 2,
            buffers: vec![vec![0xff; half], vec![0; half]],
        };
        let frame = Message::Conns(vec![tag]).encode().expect("encodes");
        assert!(frame.len() <= MAX_FRAME, "{} bytes", frame.len());
        assert!(conn_fits(&[256 * 1024, 256 * 1024]), "baton's relay: 256 KiB each way");
        assert!(!conn_fits(&[512 * 1024, 512 * 1024]));
    }
}
