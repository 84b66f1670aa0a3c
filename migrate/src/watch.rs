//! Old side: notice that a successor has published its reconfig socket.
//!
//! The old instance learns of the new one through the shared directory alone: inotify on the uds dir (inotify
//! watches the inode, so it sees files created from another container's mount of the same volume), with a slow
//! poll as a backstop when inotify is unavailable or its queue overflows. No PIDs, no signals, no public port.

use std::io;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;

use crate::dir::{UdsDir, RECONFIG_SOCK};
use crate::sys::{self, InotifyFd};

/// How often the directory is checked when no inotify event arrives.
const BACKSTOP_POLL: Duration = Duration::from_millis(500);

/// Watches a uds dir for a successor's reconfig socket.
///
/// The old side of a handoff: a serving instance keeps one of these alive next to its accept loops, so that it
/// notices a new slot within milliseconds of its start and hands its listeners over (see [`crate::hand_over`]).
/// The successor never has to find the old instance; it only publishes `reconfig.sock`.
///
/// An instance that itself took over must create its watch only after its own [`crate::Takeover::finish`]
/// returned: until then `reconfig.sock` is its own, and the watch would connect to itself.
pub struct SuccessorWatch {
    dir: UdsDir,
    inotify: Option<AsyncFd<InotifyFd>>,
}

impl SuccessorWatch {
    /// Starts watching `dir`. Falls back to polling (logged) if inotify cannot be set up.
    ///
    /// Never fails: a server that cannot watch still serves, it only hands over up to 500 ms later. Must be called
    /// inside a tokio runtime (the inotify fd registers with its reactor).
    pub fn new(dir: &UdsDir) -> SuccessorWatch {
        let inotify = match Self::inotify(dir) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.path().display(), "inotify unavailable; polling the uds dir every 500ms");
                None
            }
        };
        SuccessorWatch {
            dir: dir.clone(),
            inotify,
        }
    }

    fn inotify(dir: &UdsDir) -> io::Result<AsyncFd<InotifyFd>> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        ino.add_watch(
            dir.path(),
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ATTRIB,
        )?;
        sys::register_inotify(ino)
    }

    /// Resolves with a connection to a live successor's reconfig socket.
    ///
    /// Pending for as long as nobody listens on `reconfig.sock`; a stale socket file left by a dead process is
    /// ignored, since connecting to it fails. Cancel-safe: use it as a `select!` branch next to your shutdown
    /// signal. Pass the stream to [`crate::hand_over`].
    ///
    /// If a handoff fails, the successor's socket usually stays up for a while (it lingers for its postStart
    /// hook), so the next call resolves again at once with a connection the successor will refuse: back off (a
    /// second or so) before calling it again.
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// use std::time::Duration;
    /// use baton_migrate::{hand_over, Identity, ListenerTag, Offered, SuccessorWatch, UdsDir};
    ///
    /// # async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    /// let dir = UdsDir::new("/var/run/myserver");
    /// dir.ensure().expect("uds dir");
    /// let serving = dir.hold_serving().expect("serving.lock");
    /// let me = Identity { generation: 1, version: "v1".into() };
    /// let mut watch = SuccessorWatch::new(&dir);
    /// loop {
    ///     tokio::select! {
    ///         stream = watch.next() => {
    ///             let offered = [Offered {
    ///                 tag: ListenerTag {
    ///                     name: "http".into(),
    ///                     address: listener.local_addr()?.to_string(),
    ///                     kind: "http".into(),
    ///                 },
    ///                 fd: listener.as_fd(),
    ///             }];
    ///             match hand_over(stream, &me, &offered, Duration::from_secs(30)).await {
    ///                 Ok(_) => break, // the successor accepts now: stop accepting, drain, exit
    ///                 Err(e) => {
    ///                     eprintln!("handoff failed at {e}; still serving");
    ///                     tokio::time::sleep(Duration::from_secs(1)).await;
    ///                 }
    ///             }
    ///         }
    ///         // _ = sigterm.recv() => break,
    ///     }
    /// }
    /// drop(listener); // close our copy: never shutdown(), the successor accepts on the same socket
    /// drop(serving);
    /// # Ok(()) }
    /// ```
    pub async fn next(&mut self) -> UnixStream {
        let path = self.dir.reconfig_path();
        loop {
            if let Ok(stream) = UnixStream::connect(&path).await {
                return stream;
            }
            self.wait_for_change().await;
        }
    }

    async fn wait_for_change(&mut self) {
        let Some(fd) = self.inotify.as_ref() else {
            tokio::time::sleep(BACKSTOP_POLL).await;
            return;
        };
        let wait = async {
            loop {
                let mut guard = match fd.readable().await {
                    Ok(g) => g,
                    Err(_) => return,
                };
                match guard.try_io(|inner| inner.get_ref().0.read_events().map_err(io::Error::from)) {
                    Ok(Ok(events)) => {
                        if events
                            .iter()
                            .any(|e| e.name.as_deref().is_some_and(|n| n == RECONFIG_SOCK))
                        {
                            return;
                        }
                    }
                    Ok(Err(_)) => return,
                    Err(_would_block) => continue,
                }
            }
        };
        let _ = tokio::time::timeout(BACKSTOP_POLL, wait).await;
    }
}
