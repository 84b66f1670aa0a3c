//! A hostile or broken peer on the reconfig socket, against the real [`Takeover`] (new side) and [`hand_over`] (old
//! side), in temp dirs, with real loopback listeners where fds travel.
//!
//! Every test runs through [`hostile`]: one at a time (they count the process's open fds), on a fresh
//! current-thread runtime, with the library's log captured. It fails if any fd the test did not have before is
//! still open once everything is dropped, first while the runtime still runs (so no task may sit on a received
//! fd), then again after the runtime is gone.
//!
//! The fake peers are written by hand on blocking std sockets (in `spawn_blocking`), so they can send what the real
//! implementation never would: torn frames, fds on the wrong message, more fds than the limit.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// A hostile peer is built by hand: raw SCM_RIGHTS messages, a forked child under another uid (libc, unsafe).
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_migrate::error::HandoffError;
use baton_migrate::wire::{self, Hello, Message, PeerRole, WireError, MAX_FDS_PER_FRAME, MAX_FRAME};
use baton_migrate::{
    hand_over, Identity, Inheritance, ListenerTag, Offered, Ready, ServingLock, Session, StepError, SuccessorWatch,
    Takeover, TakeoverOptions, UdsDir,
};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

// ---------------------------------------------------------------------------------------------------------------
// harness: serial execution, fd accounting, log capture
// ---------------------------------------------------------------------------------------------------------------

/// The most fds the kernel passes with one message (SCM_MAX_FD).
const SCM_MAX_FD: usize = 253;

/// The tests count the fds of the whole process, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Open fds of this process and what each one is (`socket:[inode]`, `pipe:[inode]`, a path...).
fn fd_table() -> BTreeMap<i32, String> {
    // Collect the numbers first: the directory's own fd is closed by the time we readlink, and drops out.
    let numbers: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    numbers
        .into_iter()
        .filter_map(|fd| {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            Some((fd, target.display().to_string()))
        })
        .collect()
}

/// Fds open now that were not open (as the same object) in `before`.
fn new_fds(before: &BTreeMap<i32, String>) -> Vec<String> {
    fd_table()
        .into_iter()
        .filter(|(fd, target)| before.get(fd) != Some(target))
        .map(|(fd, target)| format!("{fd} -> {target}"))
        .collect()
}

/// Log lines of the library, captured for the length of one test.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.0.clone())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits (letting the runtime run) until a captured line contains every one of `needles`; returns that line.
    async fn line_with(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Some(line.to_string());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Like [`Logs::line_with`], panicking with the whole log when no line matches.
    async fn expect_line(&self, needles: &[&str]) -> String {
        match self.line_with(needles, Duration::from_secs(2)).await {
            Some(line) => line,
            None => panic!("no log line contains all of {needles:?}; log:\n{}", self.text()),
        }
    }
}

/// Prints the captured log when the test fails.
struct DumpOnPanic(&'static str, Logs);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}----- end -----", self.0, self.1.text());
        }
    }
}

/// Runs one hostile scenario: serialized, on its own current-thread runtime, with logs captured, and with the fd
/// table checked afterwards (inside the runtime, with up to 2 s for aborted tasks to go; then again without it).
fn hostile<F, Fut>(name: &'static str, body: F)
where
    F: FnOnce(Logs) -> Fut,
    Fut: Future<Output = ()>,
{
    let _serial = serial();
    let logs = Logs::default();
    let _dump = DumpOnPanic(name, logs.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);

    // The first tokio runtime with a signal driver opens a process-wide socketpair that stays open for good: let
    // that happen before anything is counted.
    static WARM_UP: std::sync::Once = std::sync::Once::new();
    WARM_UP.call_once(|| {
        drop(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        )
    });
    let before_runtime = fd_table();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let before = fd_table();
        body(logs.clone()).await;
        assert_closed_since(&before, name).await;
    });
    drop(rt);
    let leaked = new_fds(&before_runtime);
    assert!(
        leaked.is_empty(),
        "{name}: fd(s) still open after the runtime was dropped: {leaked:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// a hand-written peer on a blocking std socket
// ---------------------------------------------------------------------------------------------------------------

/// What a fake peer heard next.
#[derive(Debug)]
enum Heard {
    /// A whole frame, with the fds that arrived while reading it.
    Msg(Message, Vec<OwnedFd>),
    /// Orderly close.
    Eof,
    /// ECONNRESET.
    Reset,
    /// Nothing within the read timeout.
    Silent,
    /// Bytes that do not decode (the reason is read through `Debug`, in failure messages).
    Garbage(#[allow(dead_code)] String),
}

/// The other side closed the connection without another word: EOF, or a reset when it closed with our bytes
/// still unread (the receiver reads no further than the frame it is decoding, so garbage can be left unread).
fn hung_up(heard: &[Heard]) -> bool {
    matches!(heard, [Heard::Eof] | [Heard::Reset])
}

impl Heard {
    fn message(&self) -> Option<&Message> {
        match self {
            Heard::Msg(m, _) => Some(m),
            _ => None,
        }
    }
}

/// One end of the reconfig socket, driven by hand.
struct Fake {
    s: StdUnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Fake {
    fn new(s: StdUnixStream, read_timeout: Duration) -> Fake {
        s.set_read_timeout(Some(read_timeout)).expect("read timeout");
        Fake {
            s,
            buf: Vec::new(),
            fds: Vec::new(),
        }
    }

    fn connect(path: &Path) -> Fake {
        Fake::new(
            StdUnixStream::connect(path).expect("connect to reconfig.sock"),
            Duration::from_secs(3),
        )
    }

    /// Writes `bytes` with `fds` attached to the first byte (SCM_RIGHTS), the rest without. Errors are returned:
    /// the other side may already have hung up on us.
    fn send_raw(&mut self, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        let iov = [IoSlice::new(bytes)];
        let cmsgs = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        let n = sendmsg::<()>(self.s.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
        (&self.s).write_all(&bytes[n..])
    }

    fn send(&mut self, m: &Message, fds: &[RawFd]) {
        self.send_raw(&m.encode().expect("encode"), fds)
            .unwrap_or_else(|e| panic!("fake peer cannot send {}: {e}", m.name()));
    }

    fn next(&mut self) -> Heard {
        loop {
            match wire::decode(&self.buf) {
                Ok(Some((m, used))) => {
                    self.buf.drain(..used);
                    return Heard::Msg(m, std::mem::take(&mut self.fds));
                }
                Ok(None) => {}
                Err(e) => return Heard::Garbage(e.to_string()),
            }
            let mut chunk = [0u8; 8192];
            let mut cmsg = nix::cmsg_space!([RawFd; 253]);
            let got = {
                let mut iov = [IoSliceMut::new(&mut chunk)];
                match recvmsg::<()>(
                    self.s.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(msg) => {
                        let mut fds = Vec::new();
                        for c in msg.cmsgs().expect("fake peer: control message truncated") {
                            if let ControlMessageOwned::ScmRights(raw) = c {
                                // SAFETY: the kernel just installed these fds for us; nobody else owns them.
                                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                            }
                        }
                        Ok((msg.bytes, fds))
                    }
                    Err(e) => Err(e),
                }
            };
            match got {
                Ok((0, fds)) => {
                    self.fds.extend(fds);
                    return Heard::Eof;
                }
                Ok((n, fds)) => {
                    self.fds.extend(fds);
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(nix::errno::Errno::ECONNRESET) => return Heard::Reset,
                Err(nix::errno::Errno::EAGAIN) => return Heard::Silent,
                Err(e) => panic!("fake peer: recvmsg: {e}"),
            }
        }
    }

    /// Everything heard until the connection ends (EOF, reset, silence or garbage, which is the last item).
    fn rest(&mut self) -> Vec<Heard> {
        let mut all = Vec::new();
        loop {
            let h = self.next();
            let last = !matches!(h, Heard::Msg(..));
            all.push(h);
            if last {
                return all;
            }
        }
    }

    fn expect_hello(&mut self, role: PeerRole) -> Hello {
        match self.next() {
            Heard::Msg(Message::Hello(h), fds) if h.role == role && fds.is_empty() => h,
            other => panic!("fake peer expected a {role:?} HELLO, heard {other:?}"),
        }
    }
}

fn hello(role: PeerRole, generation: u64) -> Message {
    Message::Hello(Hello {
        role,
        min_protocol: 1,
        max_protocol: 1,
        generation,
        version: "fake".into(),
    })
}

fn me(generation: u64, version: &str) -> Identity {
    Identity {
        generation,
        version: version.into(),
    }
}

fn tag(name: &str, address: impl ToString) -> ListenerTag {
    ListenerTag {
        name: name.into(),
        address: address.to_string(),
        kind: "tcp".into(),
    }
}

fn loopback_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

/// Starts a fake peer's script on a blocking thread at once; the future resolves with its result.
fn fake<T: Send + 'static>(script: impl FnOnce() -> T + Send + 'static) -> impl Future<Output = T> {
    let handle = tokio::task::spawn_blocking(script);
    async move { handle.await.expect("fake peer panicked") }
}

fn short_tempdir() -> tempfile::TempDir {
    // In /tmp: unix socket paths are limited to ~108 bytes.
    tempfile::Builder::new().prefix("hostile-").tempdir().expect("tempdir")
}

// ---------------------------------------------------------------------------------------------------------------
// new side: a fake "old" against the real Takeover
// ---------------------------------------------------------------------------------------------------------------

/// A real `Takeover` on a temp uds dir, with a live "predecessor" (we hold `serving.lock`) so that `receive()`
/// waits for a sender.
struct NewSide {
    dir: UdsDir,
    takeover: Takeover,
    _serving: ServingLock,
    _tmp: tempfile::TempDir,
}

impl NewSide {
    fn start(timeout: Duration) -> NewSide {
        let tmp = short_tempdir();
        let dir = UdsDir::new(tmp.path());
        dir.ensure().expect("dir");
        let serving = dir.hold_serving().expect("serving lock");
        let mut opts = TakeoverOptions::new(timeout);
        opts.linger = Duration::from_millis(50);
        let takeover = Takeover::start(&dir, me(1, "v-new"), opts).expect("takeover");
        NewSide {
            dir,
            takeover,
            _serving: serving,
            _tmp: tmp,
        }
    }

    fn sock(&self) -> std::path::PathBuf {
        self.dir.reconfig_path()
    }

    /// `receive()`, which must fail; returns the error.
    async fn receive_err(&mut self) -> StepError {
        match self.takeover.receive().await {
            Err(e) => e,
            Ok(Inheritance::NoPeer) => panic!("receive: NoPeer, but serving.lock is held"),
            Ok(Inheritance::Peer(s)) => panic!("receive accepted a hostile sender (peer {:?})", s.peer),
        }
    }

    /// `receive()`, which must succeed with a peer.
    async fn receive_peer(&mut self) -> Box<Session> {
        match self.takeover.receive().await {
            Ok(Inheritance::Peer(s)) => s,
            Ok(Inheritance::NoPeer) => panic!("receive: NoPeer, but serving.lock is held"),
            Err(e) => panic!("receive failed: {e}"),
        }
    }

    /// A real old instance (`hand_over` with one real listener) connects now: the takeover must still be waiting
    /// for it, receive its listener, and commit.
    async fn real_sender_gets_through(&mut self) {
        self.real_sender_gets_through_after(async {}).await;
    }

    /// `receive()` starts waiting first; `before` runs meanwhile (a hostile peer comes and goes), and `receive()`
    /// must not return during it. Then a real old instance (`hand_over` with one real listener) connects: the
    /// takeover receives its listener and commits.
    async fn real_sender_gets_through_after(&mut self, before: impl Future<Output = ()>) {
        let (l, addr) = loopback_listener();
        let path = self.sock();
        let returned = std::cell::Cell::new(false);
        let old = async {
            before.await;
            assert!(!returned.get(), "receive() returned before the real sender connected");
            let stream = tokio::net::UnixStream::connect(&path).await.expect("connect");
            let offered = [Offered {
                tag: tag("real", addr),
                fd: l.as_fd(),
            }];
            hand_over(stream, &me(5, "v-real-old"), &offered, Duration::from_secs(3)).await
        };
        let new = async {
            let session = self.receive_peer().await;
            returned.set(true);
            assert_eq!(session.peer.version, "v-real-old", "the takeover took the wrong sender");
            assert_eq!(session.listeners.len(), 1);
            assert_eq!(session.listeners[0].tag.name, "real");
            assert_eq!(session.listeners[0].check, Ok(addr));
            session
                .commit(
                    Ready {
                        adopted: vec!["real".into()],
                        ..Ready::default()
                    },
                    || {},
                )
                .await
                .expect("commit");
        };
        let (committed, ()) = tokio::join!(old, new);
        let committed = committed.expect("the real sender committed after the hostile one was turned away");
        assert_eq!(committed.generation, 6);
    }
}

/// A hostile first contact (before or instead of a sender HELLO): the connection is dropped without a reply, the
/// reason is logged, `receive()` never sees it, and a real sender that comes next is served.
async fn rejected_before_hello(logs: &Logs, script: impl FnOnce(&mut Fake) + Send + 'static, reason: &str) {
    let mut side = NewSide::start(Duration::from_secs(5));
    let path = side.sock();
    let hostile_peer = async {
        let heard = fake(move || {
            let mut f = Fake::connect(&path);
            script(&mut f);
            f.rest()
        })
        .await;
        assert!(
            hung_up(&heard),
            "expected the takeover to hang up without a word, heard {heard:?}"
        );
        logs.expect_line(&["reconfig socket peer rejected", reason]).await;
    };
    side.real_sender_gets_through_after(hostile_peer).await;
}

/// Waits (up to 2 s, for aborted tasks to go) until every fd opened since `before` is closed again.
async fn assert_closed_since(before: &BTreeMap<i32, String>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let leaked = new_fds(before);
        if leaked.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} fd(s) leaked: {leaked:?}",
            leaked.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn send_bytes(bytes: &'static [u8]) -> impl FnOnce(&mut Fake) + Send {
    move |f: &mut Fake| f.send_raw(bytes, &[]).expect("send")
}

#[test]
fn garbage_bytes_before_hello() {
    hostile("garbage_bytes_before_hello", |logs| async move {
        // An HTTP client that found the socket: "GET " read as a length prefix is ~1.1 GB.
        let expected = HandoffError::Wire(WireError::TooLong(0x4745_5420 + 4)).to_string();
        rejected_before_hello(&logs, send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), &expected).await;
    });
}

#[test]
fn wrong_frame_version_and_unknown_type_and_bad_payload() {
    hostile(
        "wrong_frame_version_and_unknown_type_and_bad_payload",
        |logs| async move {
            let expected = HandoffError::Wire(WireError::FrameVersion(7)).to_string();
            rejected_before_hello(&logs, send_bytes(&[0, 0, 0, 4, 7, 1, b'{', b'}']), &expected).await;
            let expected = HandoffError::Wire(WireError::UnknownType(42)).to_string();
            rejected_before_hello(&logs, send_bytes(&[0, 0, 0, 4, 1, 42, b'{', b'}']), &expected).await;
            rejected_before_hello(
                &logs,
                send_bytes(&[0, 0, 0, 6, 1, 1, b'n', b'u', b'l', b'l']),
                "bad frame: malformed HELLO payload",
            )
            .await;
            let expected = HandoffError::Wire(WireError::TooShort(1)).to_string();
            rejected_before_hello(&logs, send_bytes(&[0, 0, 0, 1, 1]), &expected).await;
        },
    );
}

#[test]
fn truncated_frame_then_close() {
    hostile("truncated_frame_then_close", |logs| async move {
        let frame = hello(PeerRole::Sender, 1).encode().expect("encode");
        for cut in [2, wire::HEADER_LEN, frame.len() / 2, frame.len() - 1] {
            let part = frame[..cut].to_vec();
            rejected_before_hello(
                &logs,
                move |f: &mut Fake| {
                    f.send_raw(&part, &[]).expect("send");
                    f.s.shutdown(Shutdown::Write).expect("shutdown");
                },
                "peer closed the connection",
            )
            .await;
        }
    });
}

#[test]
fn oversized_length_prefix_is_refused_at_once() {
    hostile("oversized_length_prefix_is_refused_at_once", |logs| async move {
        for len in [(MAX_FRAME - 4 + 1) as u32, u32::MAX] {
            let expected = HandoffError::Wire(WireError::TooLong(len as usize + 4)).to_string();
            let t0 = Instant::now();
            // Only the 6-byte header, and the connection is kept open: the takeover must not wait for the payload.
            rejected_before_hello(
                &logs,
                move |f: &mut Fake| {
                    let mut header = len.to_be_bytes().to_vec();
                    header.extend([wire::FRAME_VERSION, 1]);
                    f.send_raw(&header, &[]).expect("send");
                },
                &expected,
            )
            .await;
            assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
        }
    });
}

#[test]
fn ready_or_listeners_end_or_listeners_before_hello() {
    hostile("ready_or_listeners_end_or_listeners_before_hello", |logs| async move {
        let ready = Message::Ready(Ready::default()).encode().expect("encode");
        rejected_before_hello(
            &logs,
            move |f: &mut Fake| f.send_raw(&ready, &[]).expect("send"),
            "protocol violation: expected HELLO, got READY",
        )
        .await;
        rejected_before_hello(
            &logs,
            |f: &mut Fake| f.send(&Message::ListenersEnd { total: 0 }, &[]),
            "protocol violation: expected HELLO, got LISTENERS_END",
        )
        .await;
        rejected_before_hello(
            &logs,
            |f: &mut Fake| f.send(&Message::Commit, &[]),
            "protocol violation: expected HELLO, got COMMIT",
        )
        .await;
        // A LISTENERS batch, with its fd, before any HELLO: dropped, and the fd with it.
        rejected_before_hello(
            &logs,
            |f: &mut Fake| {
                let (l, addr) = loopback_listener();
                f.send(&Message::Listeners(vec![tag("early", addr)]), &[l.as_raw_fd()]);
            },
            "protocol violation: expected HELLO, got LISTENERS",
        )
        .await;
    });
}

#[test]
fn a_receiver_hello_does_not_become_a_sender() {
    hostile("a_receiver_hello_does_not_become_a_sender", |logs| async move {
        rejected_before_hello(
            &logs,
            |f: &mut Fake| f.send(&hello(PeerRole::Receiver, 1), &[]),
            "protocol violation: a receiver connected to a receiver",
        )
        .await;
    });
}

#[test]
fn fds_attached_to_hello() {
    hostile("fds_attached_to_hello", |logs| async move {
        rejected_before_hello(
            &logs,
            |f: &mut Fake| {
                let (l, _) = loopback_listener();
                let (r, w) = nix::unistd::pipe().expect("pipe");
                f.send(
                    &hello(PeerRole::Sender, 1),
                    &[l.as_raw_fd(), r.as_raw_fd(), w.as_raw_fd()],
                );
            },
            "protocol violation: HELLO arrived with 3 fds attached, expected 0",
        )
        .await;
    });
}

/// More fds on HELLO than a frame may ever carry: 65, and 253 (SCM_MAX_FD, the most the kernel passes in one
/// message). The receiver refuses the message, and every fd the kernel installed for it is closed.
#[test]
fn more_than_64_fds_on_one_message_before_hello() {
    hostile("more_than_64_fds_on_one_message_before_hello", |logs| async move {
        for count in [MAX_FDS_PER_FRAME + 1, SCM_MAX_FD] {
            let before = fd_table();
            let mut side = NewSide::start(Duration::from_secs(5));
            let path = side.sock();
            let heard = fake(move || {
                let mut f = Fake::connect(&path);
                let (l, _) = loopback_listener();
                let fds = vec![l.as_raw_fd(); count];
                f.send(&hello(PeerRole::Sender, 1), &fds);
                f.rest()
            })
            .await;
            assert!(hung_up(&heard), "{count} fds: heard {heard:?}");
            let line = logs.expect_line(&["reconfig socket peer rejected"]).await;
            side.real_sender_gets_through().await;
            drop(side);
            // Leaks first: they are the worse failure.
            assert_closed_since(&before, &format!("{count} fds on HELLO")).await;
            let reason = format!("protocol violation: HELLO arrived with {count} fds attached, expected 0");
            assert!(line.contains(&reason), "expected {reason:?} in {line:?}");
            logs.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    });
}

/// A peer that sends half a frame and then sits there (slowloris) does not block the real sender.
#[test]
fn a_silent_half_frame_squatter_does_not_block_the_real_sender() {
    hostile(
        "a_silent_half_frame_squatter_does_not_block_the_real_sender",
        |_logs| async move {
            let mut side = NewSide::start(Duration::from_secs(5));
            let mut squatter = Fake::connect(&side.sock());
            let frame = hello(PeerRole::Sender, 1).encode().expect("encode");
            squatter.send_raw(&frame[..frame.len() - 1], &[]).expect("send");
            let t0 = Instant::now();
            side.real_sender_gets_through().await;
            assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());
            drop(squatter);
        },
    );
}

/// After the takeover has its session, a second sender is refused with a reason.
#[test]
fn a_second_sender_is_refused_while_a_session_runs() {
    hostile("a_second_sender_is_refused_while_a_session_runs", |logs| async move {
        let mut side = NewSide::start(Duration::from_secs(5));
        let path = side.sock();
        let first = fake({
            let path = path.clone();
            move || {
                let mut f = Fake::connect(&path);
                f.send(&hello(PeerRole::Sender, 3), &[]);
                f.expect_hello(PeerRole::Receiver);
                f.send(&Message::ListenersEnd { total: 0 }, &[]);
                f
            }
        });
        let (session, mut first) = tokio::join!(side.receive_peer(), first);
        assert!(session.listeners.is_empty());
        let heard = fake(move || {
            let mut f = Fake::connect(&path);
            f.send(&hello(PeerRole::Sender, 9), &[]);
            f.rest()
        })
        .await;
        match heard.as_slice() {
            [Heard::Msg(Message::Refuse { reason }, fds), Heard::Eof | Heard::Reset] if fds.is_empty() => {
                assert_eq!(reason, "this instance already has (or had) a handoff session")
            }
            other => panic!("the second sender should be refused with a reason, heard {other:?}"),
        }
        logs.expect_line(&["reconfig socket peer rejected", "already has"])
            .await;
        session.refuse("test over").await;
        let rest = fake(move || first.rest()).await;
        assert!(
            matches!(rest.first().and_then(Heard::message), Some(Message::Refuse { reason }) if reason == "test over"),
            "{rest:?}"
        );
    });
}

/// After HELLO: `receive()` fails at step `listeners` with `error`; the fake hears `refuse` (a REFUSE with that
/// reason) or nothing, then EOF.
async fn violation_after_hello(
    script: impl FnOnce(&mut Fake) + Send + 'static,
    error: &str,
    refuse: Option<&str>,
) -> Vec<Heard> {
    let mut side = NewSide::start(Duration::from_secs(5));
    let path = side.sock();
    let peer = fake(move || {
        let mut f = Fake::connect(&path);
        f.send(&hello(PeerRole::Sender, 4), &[]);
        let h = f.expect_hello(PeerRole::Receiver);
        assert_eq!((h.min_protocol, h.max_protocol, h.generation), (1, 1, 5));
        script(&mut f);
        f.rest()
    });
    let (err, heard) = tokio::join!(side.receive_err(), peer);
    assert_eq!(err.step, "listeners", "{err}");
    assert_eq!(err.error.to_string(), error);
    match (refuse, heard.as_slice()) {
        (Some(reason), [Heard::Msg(Message::Refuse { reason: got }, fds), Heard::Eof | Heard::Reset]) => {
            assert_eq!(got, reason);
            assert!(fds.is_empty());
        }
        (None, [Heard::Eof | Heard::Reset]) => {}
        (_, other) => panic!("expected {refuse:?} then EOF, heard {other:?}"),
    }
    heard
}

#[test]
fn listeners_end_count_mismatch() {
    hostile("listeners_end_count_mismatch", |_logs| async move {
        let reason = "LISTENERS_END says 2 listeners, 1 arrived";
        violation_after_hello(
            |f: &mut Fake| {
                let (l, addr) = loopback_listener();
                f.send(&Message::Listeners(vec![tag("a", addr)]), &[l.as_raw_fd()]);
                f.send(&Message::ListenersEnd { total: 2 }, &[]);
            },
            &format!("protocol violation: {reason}"),
            Some(reason),
        )
        .await;
        let reason = "LISTENERS_END says 0 listeners, 1 arrived";
        violation_after_hello(
            |f: &mut Fake| {
                let (l, addr) = loopback_listener();
                f.send(&Message::Listeners(vec![tag("a", addr)]), &[l.as_raw_fd()]);
                f.send(&Message::ListenersEnd { total: 0 }, &[]);
            },
            &format!("protocol violation: {reason}"),
            Some(reason),
        )
        .await;
    });
}

#[test]
fn wrong_message_order_after_hello() {
    hostile("wrong_message_order_after_hello", |_logs| async move {
        for (m, name) in [
            (Message::Ready(Ready::default()), "READY"),
            (hello(PeerRole::Sender, 4), "HELLO"),
            (Message::Commit, "COMMIT"),
            (Message::Done, "DONE"),
        ] {
            let reason = format!("protocol violation: expected LISTENERS, got {name}");
            violation_after_hello(move |f: &mut Fake| f.send(&m, &[]), &reason, Some(&reason)).await;
        }
    });
}

#[test]
fn peer_closes_after_hello() {
    hostile("peer_closes_after_hello", |_logs| async move {
        violation_after_hello(
            |f: &mut Fake| f.s.shutdown(Shutdown::Write).expect("shutdown"),
            "peer closed the connection",
            None,
        )
        .await;
    });
}

#[test]
fn batch_fd_count_differs_from_its_tags() {
    hostile("batch_fd_count_differs_from_its_tags", |_logs| async move {
        // Two tags, one fd.
        violation_after_hello(
            |f: &mut Fake| {
                let (l, a) = loopback_listener();
                f.send(&Message::Listeners(vec![tag("a", a), tag("b", a)]), &[l.as_raw_fd()]);
            },
            "protocol violation: LISTENERS arrived with 1 fds attached, expected 2",
            None,
        )
        .await;
        // One tag, two fds.
        violation_after_hello(
            |f: &mut Fake| {
                let (l, a) = loopback_listener();
                let (m, _) = loopback_listener();
                let frame = Message::Listeners(vec![tag("a", a)]).encode().expect("encode");
                f.send_raw(&frame, &[l.as_raw_fd(), m.as_raw_fd()]).expect("send");
            },
            "protocol violation: LISTENERS arrived with 2 fds attached, expected 1",
            None,
        )
        .await;
        // No tags, one fd.
        violation_after_hello(
            |f: &mut Fake| {
                let (l, _) = loopback_listener();
                let frame = Message::Listeners(vec![]).encode().expect("encode");
                f.send_raw(&frame, &[l.as_raw_fd()]).expect("send");
            },
            "protocol violation: LISTENERS arrived with 1 fds attached, expected 0",
            None,
        )
        .await;
    });
}

#[test]
fn fds_attached_to_listeners_end() {
    hostile("fds_attached_to_listeners_end", |_logs| async move {
        violation_after_hello(
            |f: &mut Fake| {
                let (l, _) = loopback_listener();
                let frame = Message::ListenersEnd { total: 0 }.encode().expect("encode");
                f.send_raw(&frame, &[l.as_raw_fd()]).expect("send");
            },
            "protocol violation: LISTENERS_END arrived with 1 fds attached, expected 0",
            None,
        )
        .await;
    });
}

#[test]
fn a_batch_of_more_than_64_tags() {
    hostile("a_batch_of_more_than_64_tags", |_logs| async move {
        violation_after_hello(
            |f: &mut Fake| {
                // Message::encode refuses to build this; write the JSON by hand.
                let tags: Vec<String> = (0..MAX_FDS_PER_FRAME + 1)
                    .map(|i| format!(r#"{{"name":"l{i}","address":"127.0.0.1:1","kind":"tcp"}}"#))
                    .collect();
                let payload = format!(r#"{{"listeners":[{}]}}"#, tags.join(","));
                let mut frame = ((payload.len() + 2) as u32).to_be_bytes().to_vec();
                frame.extend([wire::FRAME_VERSION, 2]);
                frame.extend(payload.as_bytes());
                f.send_raw(&frame, &[]).expect("send");
            },
            &HandoffError::Wire(WireError::TooManyFds(MAX_FDS_PER_FRAME + 1)).to_string(),
            None,
        )
        .await;
    });
}

/// A batch of 64 tags with 65 fds, or 253 (SCM_MAX_FD): refused, and every fd that arrived is closed.
#[test]
fn more_than_64_fds_on_a_batch() {
    hostile("more_than_64_fds_on_a_batch", |_logs| async move {
        for count in [MAX_FDS_PER_FRAME + 1, SCM_MAX_FD] {
            let before = fd_table();
            let mut side = NewSide::start(Duration::from_secs(5));
            let path = side.sock();
            let peer = fake(move || {
                let mut f = Fake::connect(&path);
                f.send(&hello(PeerRole::Sender, 4), &[]);
                f.expect_hello(PeerRole::Receiver);
                let (l, a) = loopback_listener();
                let tags = (0..MAX_FDS_PER_FRAME).map(|i| tag(&format!("l{i}"), a)).collect();
                let frame = Message::Listeners(tags).encode().expect("encode");
                f.send_raw(&frame, &vec![l.as_raw_fd(); count]).expect("send");
                f.rest()
            });
            let (err, heard) = tokio::join!(side.receive_err(), peer);
            assert!(hung_up(&heard), "{count} fds: heard {heard:?}");
            drop(side);
            assert_closed_since(&before, &format!("{count} fds on a batch of 64")).await;
            assert_eq!(err.step, "listeners");
            assert_eq!(
                err.error.to_string(),
                format!(
                    "protocol violation: LISTENERS arrived with {count} fds attached, expected {MAX_FDS_PER_FRAME}"
                )
            );
        }
    });
}

/// LISTENERS after LISTENERS_END: `receive()` has returned by then; the stray batch meets `commit()`, which fails
/// at step `commit`, and the stray fd is closed.
#[test]
fn listeners_after_listeners_end() {
    hostile("listeners_after_listeners_end", |_logs| async move {
        let mut side = NewSide::start(Duration::from_secs(5));
        let path = side.sock();
        let peer = fake(move || {
            let mut f = Fake::connect(&path);
            f.send(&hello(PeerRole::Sender, 4), &[]);
            f.expect_hello(PeerRole::Receiver);
            let (l, a) = loopback_listener();
            f.send(&Message::Listeners(vec![tag("a", a)]), &[l.as_raw_fd()]);
            f.send(&Message::ListenersEnd { total: 1 }, &[]);
            // Once READY is here (receive() has returned), another batch in place of COMMIT.
            let ready = f.next();
            let (extra, b) = loopback_listener();
            f.send(&Message::Listeners(vec![tag("late", b)]), &[extra.as_raw_fd()]);
            let mut heard = vec![ready];
            heard.extend(f.rest());
            (heard, a)
        });
        let session = side.receive_peer().await;
        let mut accepted = false;
        let committed = session
            .commit(
                Ready {
                    adopted: vec!["a".into()],
                    ..Ready::default()
                },
                || accepted = true,
            )
            .await;
        let err = committed.expect_err("a LISTENERS in place of COMMIT must fail the commit");
        assert!(!accepted, "no COMMIT came: the new side must not be told to accept");
        assert_eq!(err.step, "commit");
        assert_eq!(
            err.error.to_string(),
            "protocol violation: expected COMMIT, got LISTENERS"
        );
        let (heard, _) = peer.await;
        match heard.as_slice() {
            [Heard::Msg(Message::Ready(r), fds), Heard::Eof | Heard::Reset] if fds.is_empty() => {
                assert_eq!(r.adopted, ["a"])
            }
            other => panic!("expected READY then EOF, heard {other:?}"),
        }
    });
}

/// Fds that are not listening TCP sockets arrive as `Inherited` with `check = Err(why)`, so the shell rejects
/// them; the address in the tag is never trusted.
#[test]
fn fds_that_are_not_listening_sockets() {
    hostile("fds_that_are_not_listening_sockets", |_logs| async move {
        let mut side = NewSide::start(Duration::from_secs(5));
        let path = side.sock();
        let unix_path = side.dir.path().join("other.sock");
        let (listening, listening_addr) = loopback_listener();
        let v6 = TcpListener::bind("[::1]:0").ok();
        let v6_addr = v6.as_ref().map(|l| l.local_addr().expect("addr"));
        let peer = fake(move || {
            let (_server, server_addr) = loopback_listener();
            let connected = TcpStream::connect(server_addr).expect("connect");
            let (pipe_r, _pipe_w) = nix::unistd::pipe().expect("pipe");
            let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
            let unix = StdUnixListener::bind(&unix_path).expect("unix listener");
            let bound = {
                use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
                let s = socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).expect("socket");
                bind(s.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind");
                s
            };
            let devnull = File::open("/dev/null").expect("/dev/null");
            let mut tags = vec![
                tag("connected-tcp", server_addr),
                tag("pipe", "127.0.0.1:1"),
                tag("udp", udp.local_addr().expect("addr")),
                tag("unix-listener", "127.0.0.1:2"),
                tag("bound-not-listening", "127.0.0.1:3"),
                tag("regular-file", "127.0.0.1:4"),
                tag("lying-tag", "10.9.9.9:80"),
            ];
            let mut fds = vec![
                connected.as_raw_fd(),
                pipe_r.as_raw_fd(),
                udp.as_raw_fd(),
                unix.as_raw_fd(),
                bound.as_raw_fd(),
                devnull.as_raw_fd(),
                listening.as_raw_fd(),
            ];
            if let Some(v6) = &v6 {
                tags.push(tag("v6", v6.local_addr().expect("addr")));
                fds.push(v6.as_raw_fd());
            }
            let total = tags.len() as u32;
            let mut f = Fake::connect(&path);
            f.send(&hello(PeerRole::Sender, 4), &[]);
            f.expect_hello(PeerRole::Receiver);
            f.send(&Message::Listeners(tags), &fds);
            f.send(&Message::ListenersEnd { total }, &[]);
            f.rest()
        });
        let (checks, heard) = tokio::join!(
            async {
                let session = side.receive_peer().await;
                let checks: Vec<(String, Result<SocketAddr, String>)> = session
                    .listeners
                    .iter()
                    .map(|i| (i.tag.name.clone(), i.check.clone()))
                    .collect();
                session.refuse("these are not listeners").await;
                checks
            },
            peer
        );
        let enotsock = format!("not a socket ({})", nix::errno::Errno::ENOTSOCK);
        let mut expected: Vec<(String, Result<SocketAddr, String>)> = vec![
            ("connected-tcp".into(), Err("socket is not listening".into())),
            ("pipe".into(), Err(enotsock.clone())),
            ("udp".into(), Err("socket type is Datagram, not a stream socket".into())),
            (
                "unix-listener".into(),
                Err("socket is not an IPv4 or IPv6 socket".into()),
            ),
            ("bound-not-listening".into(), Err("socket is not listening".into())),
            ("regular-file".into(), Err(enotsock)),
            ("lying-tag".into(), Ok(listening_addr)),
        ];
        if let Some(a) = v6_addr {
            expected.push(("v6".into(), Ok(a)));
        } else {
            eprintln!("note: no IPv6 loopback here; the [::1] listener case was left out");
        }
        assert_eq!(checks, expected);
        match heard.as_slice() {
            [Heard::Msg(Message::Refuse { reason }, _), Heard::Eof | Heard::Reset] => {
                assert_eq!(reason, "these are not listeners")
            }
            other => panic!("expected REFUSE then EOF, heard {other:?}"),
        }
    });
}

// ---------------------------------------------------------------------------------------------------------------
// old side: the real hand_over against a fake "new"
// ---------------------------------------------------------------------------------------------------------------

const HAND_OVER_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs `hand_over` (one real listener, 500 ms timeout) against a fake new instance listening on the uds dir's
/// reconfig.sock, found through `SuccessorWatch`. Returns the outcome, how long `hand_over` took, and the fake's
/// result. Afterwards the old listener must still accept: the old keeps serving.
async fn against_fake_new<T: Send + 'static>(
    script: impl FnOnce(Fake, SocketAddr) -> T + Send + 'static,
) -> (Result<baton_migrate::Committed, StepError>, Duration, T) {
    let tmp = short_tempdir();
    let dir = UdsDir::new(tmp.path());
    let (l, addr) = loopback_listener();
    let fake_new = StdUnixListener::bind(dir.reconfig_path()).expect("bind fake reconfig.sock");
    let peer = tokio::task::spawn_blocking(move || {
        let (s, _) = fake_new.accept().expect("accept");
        script(Fake::new(s, Duration::from_secs(3)), addr)
    });
    let mut watch = SuccessorWatch::new(&dir);
    let stream = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .expect("successor seen");
    let offered = [Offered {
        tag: tag("a", addr),
        fd: l.as_fd(),
    }];
    let t0 = Instant::now();
    let outcome = hand_over(stream, &me(3, "v-old"), &offered, HAND_OVER_TIMEOUT).await;
    let took = t0.elapsed();
    let heard = peer.await.expect("fake new panicked");
    // The old still serves on its listener.
    l.set_nonblocking(false).expect("blocking");
    let mut client = TcpStream::connect(addr).expect("the old listener still takes connections");
    let (mut served, _) = l.accept().expect("and the old instance accepts them");
    client.write_all(b"x").expect("write");
    let mut b = [0u8; 1];
    served.read_exact(&mut b).expect("read");
    (outcome, took, heard)
}

fn expect_failure(outcome: Result<baton_migrate::Committed, StepError>, step: &str) -> HandoffError {
    match outcome {
        Ok(c) => panic!("hand_over committed to a broken successor: {c:?}"),
        Err(e) => {
            assert_eq!(e.step, step, "{e}");
            e.error
        }
    }
}

/// The fake new's side up to LISTENERS_END: HELLO exchange, then the batch with its fd, checked.
fn fake_new_until_listeners_end(f: &mut Fake, addr: SocketAddr) {
    let h = f.expect_hello(PeerRole::Sender);
    assert_eq!(
        (h.min_protocol, h.max_protocol, h.generation),
        (1, baton_migrate::wire::PROTOCOL_MAX, 3)
    );
    f.send(&hello(PeerRole::Receiver, 4), &[]);
    match f.next() {
        Heard::Msg(Message::Listeners(tags), fds) => {
            assert_eq!(tags, [tag("a", addr)]);
            assert_eq!(fds.len(), 1);
            let got = TcpListener::from(fds.into_iter().next().expect("fd"));
            assert_eq!(got.local_addr().expect("addr"), addr, "the fd sent is the listener");
        }
        other => panic!("expected LISTENERS, heard {other:?}"),
    }
    match f.next() {
        Heard::Msg(Message::ListenersEnd { total: 1 }, fds) if fds.is_empty() => {}
        other => panic!("expected LISTENERS_END {{1}}, heard {other:?}"),
    }
}

#[test]
fn successor_refuses() {
    hostile("successor_refuses", |_logs| async move {
        let (outcome, _, heard) = against_fake_new(|mut f, _| {
            f.expect_hello(PeerRole::Sender);
            f.send(
                &Message::Refuse {
                    reason: "not today".into(),
                },
                &[],
            );
            f.rest()
        })
        .await;
        let e = expect_failure(outcome, "hello");
        assert!(matches!(&e, HandoffError::Refused(r) if r == "not today"), "{e}");
        assert!(hung_up(&heard), "{heard:?}");
    });
}

#[test]
fn successor_sends_garbage() {
    hostile("successor_sends_garbage", |_logs| async move {
        let (outcome, _, _) = against_fake_new(|mut f, _| {
            f.expect_hello(PeerRole::Sender);
            f.send_raw(b"HTTP/1.1 400 Bad Request\r\n\r\n", &[]).expect("send");
            f.rest()
        })
        .await;
        let e = expect_failure(outcome, "hello");
        assert!(
            matches!(e, HandoffError::Wire(WireError::TooLong(n)) if n == 0x4854_5450 + 4),
            "{e}"
        );
        // Garbage later on, in place of READY.
        let (outcome, _, _) = against_fake_new(|mut f, addr| {
            fake_new_until_listeners_end(&mut f, addr);
            f.send_raw(&[0, 0, 0, 4, 1, 200, b'{', b'}'], &[]).expect("send");
            f.rest()
        })
        .await;
        let e = expect_failure(outcome, "ready");
        assert!(matches!(e, HandoffError::Wire(WireError::UnknownType(200))), "{e}");
    });
}

#[test]
fn successor_answers_with_the_wrong_messages() {
    hostile("successor_answers_with_the_wrong_messages", |_logs| async move {
        // A HELLO that claims to be a sender.
        let (outcome, _, _) = against_fake_new(|mut f, _| {
            f.expect_hello(PeerRole::Sender);
            f.send(&hello(PeerRole::Sender, 4), &[]);
            f.rest()
        })
        .await;
        let e = expect_failure(outcome, "hello");
        assert_eq!(e.to_string(), "protocol violation: expected HELLO, got HELLO");
        // A protocol range instead of a choice: refused, with the reason sent back.
        let (outcome, _, heard) = against_fake_new(|mut f, _| {
            f.expect_hello(PeerRole::Sender);
            let mut h = match hello(PeerRole::Receiver, 4) {
                Message::Hello(h) => h,
                _ => unreachable!(),
            };
            h.max_protocol = 2;
            f.send(&Message::Hello(h), &[]);
            f.rest()
        })
        .await;
        let e = expect_failure(outcome, "hello");
        assert_eq!(e.to_string(), "protocol violation: successor chose protocol 1..=2");
        assert!(
            matches!(heard.first().and_then(Heard::message), Some(Message::Refuse { reason }) if reason == "successor chose protocol 1..=2"),
            "{heard:?}"
        );
        // DONE in place of READY.
        let (outcome, _, _) = against_fake_new(|mut f, addr| {
            fake_new_until_listeners_end(&mut f, addr);
            f.send(&Message::Done, &[]);
            f.rest()
        })
        .await;
        let e = expect_failure(outcome, "ready");
        assert_eq!(e.to_string(), "protocol violation: expected READY, got DONE");
    });
}

#[test]
fn successor_sends_fds_with_its_hello() {
    hostile("successor_sends_fds_with_its_hello", |_logs| async move {
        let (outcome, _, _) = against_fake_new(|mut f, _| {
            f.expect_hello(PeerRole::Sender);
            let (r, w) = nix::unistd::pipe().expect("pipe");
            f.send(&hello(PeerRole::Receiver, 4), &[r.as_raw_fd(), w.as_raw_fd()]);
            f.rest()
        })
        .await;
        let e = expect_failure(outcome, "hello");
        assert_eq!(
            e.to_string(),
            "protocol violation: HELLO arrived with 2 fds attached, expected 0"
        );
    });
}

/// The successor sends 65, or 253, fds with its HELLO: refused on the old side, every fd closed.
#[test]
fn successor_sends_more_than_64_fds() {
    hostile("successor_sends_more_than_64_fds", |_logs| async move {
        for count in [MAX_FDS_PER_FRAME + 1, SCM_MAX_FD] {
            let before = fd_table();
            let (outcome, _, _) = against_fake_new(move |mut f, _| {
                f.expect_hello(PeerRole::Sender);
                let (r, _w) = nix::unistd::pipe().expect("pipe");
                f.send(&hello(PeerRole::Receiver, 4), &vec![r.as_raw_fd(); count]);
                f.rest()
            })
            .await;
            assert_closed_since(&before, &format!("{count} fds with the successor's HELLO")).await;
            let e = expect_failure(outcome, "hello");
            assert_eq!(
                e.to_string(),
                format!("protocol violation: HELLO arrived with {count} fds attached, expected 0")
            );
        }
    });
}

#[test]
fn successor_closes_before_ready() {
    hostile("successor_closes_before_ready", |_logs| async move {
        let (outcome, _, ()) = against_fake_new(|mut f, addr| {
            fake_new_until_listeners_end(&mut f, addr);
            drop(f);
        })
        .await;
        let e = expect_failure(outcome, "ready");
        assert!(matches!(e, HandoffError::PeerClosed), "{e}");
        // Closed right after HELLO, too.
        let (outcome, _, ()) = against_fake_new(|mut f, _| {
            f.expect_hello(PeerRole::Sender);
            drop(f);
        })
        .await;
        let e = expect_failure(outcome, "hello");
        assert!(matches!(e, HandoffError::PeerClosed), "{e}");
    });
}

#[test]
fn successor_never_answers() {
    hostile("successor_never_answers", |_logs| async move {
        // Silent after our HELLO.
        let (outcome, took, heard) = against_fake_new(|mut f, _| {
            f.expect_hello(PeerRole::Sender);
            f.rest()
        })
        .await;
        let e = expect_failure(outcome, "hello");
        assert!(matches!(e, HandoffError::Timeout(_)), "{e}");
        assert!(
            took >= HAND_OVER_TIMEOUT - Duration::from_millis(20)
                && took < HAND_OVER_TIMEOUT + Duration::from_millis(300),
            "hand_over gave up after {took:?}, its timeout is {HAND_OVER_TIMEOUT:?}"
        );
        assert!(hung_up(&heard), "the old hung up: {heard:?}");
        // Silent where READY is due.
        let (outcome, took, _) = against_fake_new(|mut f, addr| {
            fake_new_until_listeners_end(&mut f, addr);
            f.rest()
        })
        .await;
        let e = expect_failure(outcome, "ready");
        assert!(matches!(e, HandoffError::Timeout(_)), "{e}");
        assert!(took < HAND_OVER_TIMEOUT + Duration::from_millis(300), "{took:?}");
        // Silent where DONE is due.
        let (outcome, took, _) = against_fake_new(|mut f, addr| {
            fake_new_until_listeners_end(&mut f, addr);
            f.send(&Message::Ready(Ready::default()), &[]);
            f.rest()
        })
        .await;
        let e = expect_failure(outcome, "commit");
        assert!(matches!(e, HandoffError::Timeout(_)), "{e}");
        assert!(took < HAND_OVER_TIMEOUT + Duration::from_millis(300), "{took:?}");
    });
}

#[test]
fn successor_answers_ready_then_closes_before_done() {
    hostile("successor_answers_ready_then_closes_before_done", |_logs| async move {
        // READY, then gone without reading COMMIT.
        let (outcome, _, ()) = against_fake_new(|mut f, addr| {
            fake_new_until_listeners_end(&mut f, addr);
            f.send(&Message::Ready(Ready::default()), &[]);
            drop(f);
        })
        .await;
        let e = expect_failure(outcome, "commit");
        assert!(
            matches!(&e, HandoffError::PeerClosed)
                || matches!(&e, HandoffError::Io(_, io) if matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)),
            "{e}"
        );
        // READY, COMMIT read, then gone.
        let (outcome, _, ()) = against_fake_new(|mut f, addr| {
            fake_new_until_listeners_end(&mut f, addr);
            f.send(&Message::Ready(Ready::default()), &[]);
            assert!(matches!(f.next(), Heard::Msg(Message::Commit, _)));
            drop(f);
        })
        .await;
        let e = expect_failure(outcome, "commit");
        assert!(matches!(e, HandoffError::PeerClosed), "{e}");
        // READY, COMMIT read, then REFUSE in place of DONE.
        let (outcome, _, _) = against_fake_new(|mut f, addr| {
            fake_new_until_listeners_end(&mut f, addr);
            f.send(&Message::Ready(Ready::default()), &[]);
            assert!(matches!(f.next(), Heard::Msg(Message::Commit, _)));
            f.send(
                &Message::Refuse {
                    reason: "changed my mind".into(),
                },
                &[],
            );
            f.rest()
        })
        .await;
        let e = expect_failure(outcome, "commit");
        assert!(matches!(&e, HandoffError::Refused(r) if r == "changed my mind"), "{e}");
    });
}

// ---------------------------------------------------------------------------------------------------------------
// fds split across reads: a legitimate sender with more than one batch
// ---------------------------------------------------------------------------------------------------------------

/// 65 listeners whose names make the first LISTENERS frame (64 tags) longer than the receiver's 8 KiB read buffer.
fn long_named_listeners() -> Vec<(TcpListener, SocketAddr, String)> {
    (0..MAX_FDS_PER_FRAME + 1)
        .map(|i| {
            let (l, a) = loopback_listener();
            (l, a, format!("listener-{i:03}-{}", "n".repeat(120)))
        })
        .collect()
}

fn expected_checks(listeners: &[(TcpListener, SocketAddr, String)]) -> Vec<(String, Result<SocketAddr, String>)> {
    listeners.iter().map(|(_, a, n)| (n.clone(), Ok(*a))).collect()
}

fn checks_of(session: &Session) -> Vec<(String, Result<SocketAddr, String>)> {
    session
        .listeners
        .iter()
        .map(|i| (i.tag.name.clone(), i.check.clone()))
        .collect()
}

/// A sender that does exactly what `hand_over` does (HELLO, wait for HELLO, LISTENERS of 64 then of 1, each with
/// its fds on its first byte, LISTENERS_END), while the receiver's thread is busy, so both batches are queued
/// before it reads. The kernel then delivers batch 1's first 8 KiB with batch 1's 64 fds, and in the next read
/// the rest of batch 1 glued to batch 2 with batch 2's fd. The receiver must give each batch its own fds; it
/// counts all 65 against batch 1 instead and refuses a legitimate handoff.
#[test]
fn two_batches_whose_first_is_longer_than_one_read() {
    hostile("two_batches_whose_first_is_longer_than_one_read", |_logs| async move {
        let mut side = NewSide::start(Duration::from_secs(5));
        let listeners = long_named_listeners();
        let tags: Vec<ListenerTag> = listeners.iter().map(|(_, a, n)| tag(n, a)).collect();
        let fds: Vec<RawFd> = listeners.iter().map(|(l, _, _)| l.as_raw_fd()).collect();
        let (go, stalled) = tokio::sync::oneshot::channel::<()>();
        let path = side.sock();
        let peer = fake(move || {
            let mut f = Fake::connect(&path);
            f.send(&hello(PeerRole::Sender, 4), &[]);
            f.expect_hello(PeerRole::Receiver);
            let _ = go.send(());
            std::thread::sleep(Duration::from_millis(50)); // the receiver's thread is blocked by now
            for (batch, fds) in tags.chunks(MAX_FDS_PER_FRAME).zip(fds.chunks(MAX_FDS_PER_FRAME)) {
                f.send(&Message::Listeners(batch.to_vec()), fds);
            }
            f.send(
                &Message::ListenersEnd {
                    total: tags.len() as u32,
                },
                &[],
            );
            f.rest()
        });
        let stall = async {
            let _ = stalled.await;
            std::thread::sleep(Duration::from_millis(300));
        };
        let (received, ()) = tokio::join!(side.takeover.receive(), stall);
        let session = match received {
            Ok(Inheritance::Peer(s)) => s,
            Ok(Inheritance::NoPeer) => panic!("NoPeer"),
            Err(e) => {
                let heard = peer.await;
                panic!("a legitimate two-batch handoff failed on the new side: {e} (the sender heard {heard:?})");
            }
        };
        assert_eq!(checks_of(&session), expected_checks(&listeners));
        session.refuse("test over").await;
        let heard = peer.await;
        assert!(
            matches!(heard.first().and_then(Heard::message), Some(Message::Refuse { .. })),
            "{heard:?}"
        );
    });
}

/// The same with the real `hand_over` on its own thread and runtime, as from another process, ten times: whether
/// batch 2 is queued before the receiver's second read is a race, which a correct receiver never loses.
#[test]
fn two_batches_from_the_real_hand_over() {
    hostile("two_batches_from_the_real_hand_over", |_logs| async move {
        let listeners = long_named_listeners();
        for attempt in 1..=10 {
            let mut side = NewSide::start(Duration::from_secs(5));
            let path = side.sock();
            let fds: Vec<OwnedFd> = listeners
                .iter()
                .map(|(l, _, _)| l.as_fd().try_clone_to_owned().expect("dup"))
                .collect();
            let tags: Vec<ListenerTag> = listeners.iter().map(|(_, a, n)| tag(n, a)).collect();
            let old = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let stream = tokio::net::UnixStream::connect(&path).await.expect("connect");
                    let offered: Vec<Offered<'_>> = fds
                        .iter()
                        .zip(tags)
                        .map(|(fd, tag)| Offered { tag, fd: fd.as_fd() })
                        .collect();
                    hand_over(stream, &me(5, "v-old"), &offered, Duration::from_secs(3))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            });
            let received = side.takeover.receive().await;
            let outcome = match received {
                Ok(Inheritance::Peer(session)) => {
                    assert_eq!(checks_of(&session), expected_checks(&listeners));
                    session
                        .commit(
                            Ready {
                                adopted: listeners.iter().map(|(_, _, n)| n.clone()).collect(),
                                ..Ready::default()
                            },
                            || {},
                        )
                        .await
                        .map_err(|e| e.to_string())
                }
                Ok(Inheritance::NoPeer) => panic!("NoPeer"),
                Err(e) => Err(e.to_string()),
            };
            let sent = tokio::task::spawn_blocking(move || old.join())
                .await
                .expect("join")
                .expect("sender thread");
            if let Err(e) = outcome {
                panic!("attempt {attempt}: a legitimate two-batch handoff failed on the new side: {e} (old side: {sent:?})");
            }
            sent.unwrap_or_else(|e| panic!("attempt {attempt}: the old side did not commit: {e}"));
        }
    });
}

// ---------------------------------------------------------------------------------------------------------------
// a peer running as another uid
// ---------------------------------------------------------------------------------------------------------------

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn sockaddr_un(path: &Path) -> libc::sockaddr_un {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    addr
}

/// Forks; the child runs `child` (which may only make async-signal-safe calls: no allocation, no locks) and exits
/// with its result. Returns the child's pid.
fn fork_child(child: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only runs `child`, made of raw syscalls on data prepared before the fork, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = child();
        // SAFETY: leaving the child without running any of the parent's destructors or atexit handlers.
        unsafe { libc::_exit(code) }
    }
    pid
}

/// Waits (without blocking the runtime) for the child to exit; its exit code.
async fn child_exit(pid: libc::pid_t) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut status = 0;
        // SAFETY: plain syscall on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            assert!(libc::WIFEXITED(status), "child killed: status {status}");
            return libc::WEXITSTATUS(status);
        }
        assert!(r == 0, "waitpid failed");
        assert!(Instant::now() < deadline, "child {pid} did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// In a forked child: becomes `uid`, sets a 3 s receive timeout on `fd`, and reads. 0: the other side closed without
/// a byte; 10: it sent something; 23: it neither closed nor spoke.
///
/// SAFETY (for callers): async-signal-safe calls only.
unsafe fn child_read_until_closed(fd: libc::c_int) -> i32 {
    let tv = libc::timeval { tv_sec: 3, tv_usec: 0 };
    libc::setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        (&tv as *const libc::timeval).cast(),
        std::mem::size_of::<libc::timeval>() as libc::socklen_t,
    );
    let mut buf = [0u8; 64];
    let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
    if n == 0 || (n < 0 && *libc::__errno_location() == libc::ECONNRESET) {
        0
    } else if n > 0 {
        10
    } else {
        23
    }
}

/// A sender HELLO from a process running as another uid: the takeover drops it (logging the uid) and keeps waiting
/// for the real predecessor.
#[test]
fn a_sender_with_another_uid_is_refused() {
    if !is_root() {
        eprintln!(
            "note: a_sender_with_another_uid_is_refused needs root to setuid({NOBODY}); not run as uid {}",
            nix::unistd::geteuid()
        );
        return;
    }
    hostile("a_sender_with_another_uid_is_refused", |logs| async move {
        let mut side = NewSide::start(Duration::from_secs(5));
        // Make the socket reachable for uid 65534: only SO_PEERCRED stands in the way then.
        std::fs::set_permissions(side.dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod dir");
        std::fs::set_permissions(side.sock(), std::fs::Permissions::from_mode(0o666)).expect("chmod sock");
        let addr = sockaddr_un(&side.sock());
        let frame = hello(PeerRole::Sender, 4).encode().expect("encode");
        let pid = fork_child(|| unsafe {
            if libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                return 21;
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                return 20;
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                return 20;
            }
            libc::send(fd, frame.as_ptr().cast(), frame.len(), libc::MSG_NOSIGNAL);
            child_read_until_closed(fd)
        });
        // `receive()` waits meanwhile and must not return: the foreign sender is no sender. Then the real
        // predecessor still gets through.
        let foreign = async {
            let code = child_exit(pid).await;
            assert_eq!(
                code, 0,
                "the foreign peer should be hung up on without a reply \
                 (21: setuid failed, 20: connect failed, 10: got a reply, 23: left hanging)"
            );
            logs.expect_line(&[
                "reconfig socket peer rejected",
                &format!("peer runs as uid {NOBODY}, this process as uid 0: refused"),
            ])
            .await;
        };
        side.real_sender_gets_through_after(foreign).await;
    });
}

/// The old side checks the successor's uid too: a "successor" listening as another uid gets nothing.
#[test]
fn a_successor_with_another_uid_is_refused() {
    if !is_root() {
        eprintln!(
            "note: a_successor_with_another_uid_is_refused needs root to setuid({NOBODY}); not run as uid {}",
            nix::unistd::geteuid()
        );
        return;
    }
    hostile("a_successor_with_another_uid_is_refused", |_logs| async move {
        let tmp = short_tempdir();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod dir");
        let dir = UdsDir::new(tmp.path());
        let addr = sockaddr_un(&dir.reconfig_path());
        let (ready_r, ready_w) = nix::unistd::pipe().expect("pipe");
        let ready_w_raw = ready_w.as_raw_fd();
        let pid = fork_child(|| unsafe {
            if libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                return 21;
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if fd < 0 || libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                return 30;
            }
            libc::chmod((&addr.sun_path as *const libc::c_char).cast(), 0o666);
            if libc::listen(fd, 1) != 0 {
                return 31;
            }
            libc::write(ready_w_raw, b"r".as_ptr().cast(), 1);
            let tv = libc::timeval { tv_sec: 3, tv_usec: 0 };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let c = libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut());
            if c < 0 {
                return 32;
            }
            child_read_until_closed(c)
        });
        drop(ready_w);
        let mut ready = [0u8; 1];
        let got_ready = File::from(ready_r).read(&mut ready).expect("read readiness");
        if got_ready == 0 {
            panic!("the foreign successor did not start: exit {}", child_exit(pid).await);
        }
        let (l, a) = loopback_listener();
        let stream = tokio::net::UnixStream::connect(dir.reconfig_path())
            .await
            .expect("connect");
        let offered = [Offered {
            tag: tag("a", a),
            fd: l.as_fd(),
        }];
        let outcome = hand_over(stream, &me(3, "v-old"), &offered, Duration::from_secs(1)).await;
        let e = expect_failure(outcome, "connect");
        assert!(matches!(e, HandoffError::ForeignPeer { uid: NOBODY, ours: 0 }), "{e}");
        assert_eq!(
            child_exit(pid).await,
            0,
            "the foreign successor should have received nothing before the old hung up"
        );
    });
}

#[test]
fn more_listeners_than_a_handoff_may_carry() {
    hostile("more_listeners_than_a_handoff_may_carry", |_logs| async move {
        let reason = format!("more than {} listeners offered", baton_migrate::handoff::MAX_LISTENERS);
        violation_after_hello(
            |f: &mut Fake| {
                // The same listening socket, offered over and over: full batches until the cap is passed.
                let (l, addr) = loopback_listener();
                let batch: Vec<ListenerTag> = (0..64).map(|i| tag(&format!("l{i}"), addr)).collect();
                let fds = vec![l.as_raw_fd(); 64];
                for _ in 0..=baton_migrate::handoff::MAX_LISTENERS / 64 {
                    if f.send_raw(&Message::Listeners(batch.clone()).encode().expect("encode"), &fds)
                        .is_err()
                    {
                        break;
                    }
                }
            },
            &format!("protocol violation: {reason}"),
            Some(&reason),
        )
        .await;
    });
}
