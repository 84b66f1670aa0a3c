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
pub struct SuccessorWatch {
    dir: UdsDir,
    inotify: Option<AsyncFd<InotifyFd>>,
}

impl SuccessorWatch {
    /// Starts watching `dir`. Falls back to polling (logged) if inotify cannot be set up.
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
