//! The uds dir: the one directory both sidecar slots share (an `emptyDir` volume in a pod).
//!
//! Files in it, each with one owner at a time:
//!
//! | file            | owner                                  | how ownership is proven                         |
//! |-----------------|----------------------------------------|--------------------------------------------------|
//! | `serving.lock`  | every instance that accepts and can hand over | shared `flock`; a new instance probes it with a non-blocking exclusive lock to learn whether a live predecessor exists |
//! | `reconfig.lock` | the one new instance taking over       | exclusive `flock`, held while `reconfig.sock` exists |
//! | `reconfig.sock` | the holder of `reconfig.lock`          | only that holder binds or unlinks it             |
//! | `instance-<nonce>.json` | one running instance (status for `baton status`) | shared `flock` on the file itself; a unique name per process |
//!
//! `flock` locks live on the inode, so they work across containers with separate mount and PID namespaces
//! that share this directory, and the kernel drops them when the holder dies: a stale `reconfig.sock` left by a
//! killed process is recognised because its lock is free, and only then unlinked (MOSN #1817 / #2205 lost
//! upgrades to the wrong process unlinking the socket).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;

use crate::error::HandoffError;

/// Name of the socket the new instance listens on. Public so that tools (and a `SuccessorWatch`) can recognise it
/// among the other files of the uds dir.
pub const RECONFIG_SOCK: &str = "reconfig.sock";
const RECONFIG_TMP: &str = "reconfig.sock.tmp";
const RECONFIG_LOCK: &str = "reconfig.lock";
const SERVING_LOCK: &str = "serving.lock";
const INSTANCE_PREFIX: &str = "instance-";

/// The shared directory of the handoff.
///
/// Under Kruise the two sidecar slots share nothing but the network namespace and the volumes they both mount:
/// no PIDs, no signals, no `/dev/shm`. This directory (an `emptyDir` mounted by both slots) is therefore the
/// only meeting point, and every fact the handoff needs lives in it as a file with a `flock`: who serves
/// (`serving.lock`), who is taking over (`reconfig.lock`), where to connect (`reconfig.sock`). A `UdsDir` is
/// only a path; cloning it is cheap, and nothing is created until a method needs it.
///
/// Unix socket paths are limited to about 108 bytes, so keep the directory's path short.
///
/// ```
/// use baton_migrate::UdsDir;
///
/// let dir = UdsDir::new(std::env::temp_dir().join(format!("baton-doc-{}", std::process::id())));
/// dir.ensure()?; // created with mode 0700 if missing
///
/// // Nobody serves yet: a new instance would bind fresh instead of waiting for a predecessor.
/// assert!(!dir.peer_serving()?);
/// let serving = dir.hold_serving()?;
/// // Now a new instance (here: the same check, from another open file) sees a live predecessor.
/// assert!(dir.peer_serving()?);
/// drop(serving); // after a committed handoff, or when exiting
/// assert!(!dir.peer_serving()?);
/// # std::fs::remove_dir_all(dir.path()).ok();
/// # Ok::<(), baton_migrate::HandoffError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdsDir {
    path: PathBuf,
}

/// Proof that this process accepts connections and can hand its listeners over. Dropping it releases it.
///
/// It is what lets a new instance tell "the predecessor is alive but has not connected yet" (wait for it) from
/// "there is no predecessor" (bind fresh at once), without PIDs. The kernel releases it when the process dies,
/// so a crashed instance never makes its successor wait. Hold it for as long as you accept and watch for a
/// successor; drop it after a committed handoff, before draining, so a further successor does not wait for an
/// instance that no longer has anything to give.
#[derive(Debug)]
pub struct ServingLock {
    _lock: Flock<File>,
}

/// This process's entry in the uds dir, `instance-<nonce>.json`: a status document rewritten in place, with a
/// shared `flock` held for the life of the process so readers can tell live entries from those of dead processes.
/// Dropping it removes the file.
///
/// Optional: the handoff does not use it. It exists so an operator tool (`baton status`) can list both slots of
/// a pod from inside either container, where the other slot's process is invisible.
#[derive(Debug)]
pub struct InstanceFile {
    lock: Flock<File>,
    path: PathBuf,
}

/// The reconfig socket, bound and listening, and the lock that makes this process its owner.
/// Dropping it unlinks the socket, then releases the lock.
///
/// Tying the socket file to the lock is what keeps a process from ever unlinking another's socket: only the
/// lock holder removes the path. [`crate::Takeover`] owns one for the length of a takeover; use it directly only
/// to build another protocol on the same directory.
#[derive(Debug)]
pub struct ReconfigSocket {
    listener: UnixListener,
    path: PathBuf,
    _lock: Flock<File>,
}

impl UdsDir {
    /// The directory at `path`; nothing is touched until used, so this cannot fail (call [`UdsDir::ensure`] to
    /// check it early and fail with a clear message).
    pub fn new(path: impl Into<PathBuf>) -> UdsDir {
        UdsDir { path: path.into() }
    }

    /// The directory's path, for messages and for tools that look at its files.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of the reconfig socket (`<dir>/reconfig.sock`): where the old instance and the postStart hook connect.
    pub fn reconfig_path(&self) -> PathBuf {
        self.path.join(RECONFIG_SOCK)
    }

    /// Creates the directory if it is missing (mode 0700) and checks it is a directory.
    ///
    /// Call it before [`UdsDir::hold_serving`] on a fresh start ([`crate::Takeover::start`] calls it itself): the
    /// volume is normally there already, but outside Kubernetes (tests, a laptop) it may not be, and a clear
    /// "not a directory" beats an `ENOENT` from a lock file.
    pub fn ensure(&self) -> Result<(), HandoffError> {
        let ctx = |what: &str, e: io::Error| HandoffError::Dir(format!("uds dir {}: {what}: {e}", self.path.display()));
        match fs::metadata(&self.path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(ctx("not a directory", io::Error::from(io::ErrorKind::InvalidInput))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.path).map_err(|e| ctx("cannot create", e))?;
                let _ = fs::set_permissions(&self.path, fs::Permissions::from_mode(0o700));
            }
            Err(e) => return Err(ctx("cannot stat", e)),
        }
        Ok(())
    }

    fn open_lock(&self, name: &str) -> Result<File, HandoffError> {
        let path = self.path.join(name);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| HandoffError::Dir(format!("cannot open {}: {e}", path.display())))
    }

    /// Whether a live instance holds `serving.lock` (and so can hand its listeners over).
    ///
    /// [`crate::Takeover::receive`] asks this before waiting, to bind fresh at once when nobody is there. Ask it
    /// again after a failed receive: `false` then means the predecessor died mid-handoff (its ports are free, bind
    /// fresh), `true` that it is alive and still serving (binding would fail; give up). A lock held by this very
    /// process counts too, which is why a new instance takes its own [`ServingLock`] only once its handoff
    /// session is over.
    pub fn peer_serving(&self) -> Result<bool, HandoffError> {
        self.lock_held(SERVING_LOCK)
    }

    /// Whether a live process owns `reconfig.sock` (holds `reconfig.lock`): lets `migrate` tell a new instance
    /// that has not bound the socket yet from one that has exited. Used by [`crate::watch_takeover`]; a socket
    /// file alone proves nothing, since a killed process leaves it behind.
    pub fn reconfig_owner_alive(&self) -> Result<bool, HandoffError> {
        self.lock_held(RECONFIG_LOCK)
    }

    /// Whether a live process holds the lock file `name`: probed with a non-blocking exclusive lock that is
    /// released at once.
    fn lock_held(&self, name: &str) -> Result<bool, HandoffError> {
        let file = self.open_lock(name)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(_probe) => Ok(false), // nobody holds it; released when `_probe` drops
            Err((_, Errno::EWOULDBLOCK)) => Ok(true),
            Err((_, e)) => Err(HandoffError::Dir(format!("flock {name}: {e}"))),
        }
    }

    /// Takes a shared hold on `serving.lock`: from now on, a new instance on this dir will wait for us.
    ///
    /// Take it once accepting and before watching for a successor: on a fresh start right after binding, on a
    /// takeover right after [`crate::Session::commit`] returned (not before: during the session, probes of the
    /// predecessor with [`UdsDir::peer_serving`] would find our own lock). The hold is shared, so old and new may
    /// hold it together for a moment. Blocks only for the microseconds of a peer's probe.
    pub fn hold_serving(&self) -> Result<ServingLock, HandoffError> {
        let file = self.open_lock(SERVING_LOCK)?;
        // Blocking: the only exclusive holder is a peer's probe, which lasts microseconds.
        let lock = Flock::lock(file, FlockArg::LockShared)
            .map_err(|(_, e)| HandoffError::Dir(format!("flock {SERVING_LOCK}: {e}")))?;
        Ok(ServingLock { _lock: lock })
    }

    /// Becomes the owner of `reconfig.sock` and listens on it (mode 0600).
    ///
    /// [`crate::Takeover::start`] does this; call it yourself only to speak another protocol on the directory.
    /// Must run inside a tokio runtime (the listener registers with its reactor).
    ///
    /// Fails at once if another live process owns it (two new instances racing). A socket file left by a dead
    /// owner is unlinked. The socket is bound under a temporary name and renamed into place once listening, so
    /// a watcher that sees `reconfig.sock` appear can connect immediately.
    pub fn bind_reconfig(&self) -> Result<ReconfigSocket, HandoffError> {
        let mut file = self.open_lock(RECONFIG_LOCK)?;
        // A `migrate` probe (see `reconfig_owner_alive`) may hold the lock for a few microseconds: retry briefly
        // before calling it a race.
        let give_up = std::time::Instant::now() + std::time::Duration::from_millis(250);
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => break lock,
                Err((f, Errno::EWOULDBLOCK)) if std::time::Instant::now() < give_up => {
                    file = f;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err((_, Errno::EWOULDBLOCK)) => return Err(self.race()),
                Err((_, e)) => return Err(HandoffError::Dir(format!("flock {RECONFIG_LOCK}: {e}"))),
            }
        };
        let path = self.reconfig_path();
        let tmp = self.path.join(RECONFIG_TMP);
        for stale in [&path, &tmp] {
            match fs::remove_file(stale) {
                Ok(()) => tracing::debug!(path = %stale.display(), "removed stale socket left by a dead owner"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(HandoffError::Dir(format!(
                        "cannot remove stale {}: {e}",
                        stale.display()
                    )))
                }
            }
        }
        let listener =
            UnixListener::bind(&tmp).map_err(|e| HandoffError::Dir(format!("bind {}: {e}", tmp.display())))?;
        let ready = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = ready {
            let _ = fs::remove_file(&tmp);
            return Err(HandoffError::Dir(format!("cannot publish {}: {e}", path.display())));
        }
        Ok(ReconfigSocket {
            listener,
            path,
            _lock: lock,
        })
    }
}

impl UdsDir {
    /// Publishes this process's instance file (see [`InstanceFile`]) with `contents`, typically a JSON status
    /// document. Keep the returned [`InstanceFile`] for the life of the process and [`InstanceFile::write`] to it
    /// as the status changes; the file is named uniquely, so both slots publish side by side.
    pub fn publish_instance(&self, contents: &str) -> Result<InstanceFile, HandoffError> {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let nonce = format!("{:016x}", h.finish());
        let tmp = self.path.join(format!(".instance-{nonce}.tmp"));
        let path = self.path.join(format!("{INSTANCE_PREFIX}{nonce}.json"));
        let err = |what: &str, e: &dyn std::fmt::Display| HandoffError::Dir(format!("{what} {}: {e}", tmp.display()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err("cannot create", &e))?;
        // Locked before it gets its public name, so no reader ever sees it unlocked and takes it for dead.
        let lock = Flock::lock(file, FlockArg::LockShared).map_err(|(_, e)| err("flock", &e))?;
        let mut entry = InstanceFile {
            lock,
            path: tmp.clone(),
        };
        entry.write(contents).map_err(|e| err("cannot write", &e))?;
        fs::rename(&tmp, &path).map_err(|e| err("cannot publish", &e))?;
        entry.path = path;
        Ok(entry)
    }

    /// The status documents of every live instance on this dir. Entries left by dead processes are removed:
    /// their names are unique to that process, so nobody else will ever write them.
    ///
    /// What a status tool calls: the only way to see the other slot's process from inside a container.
    pub fn live_instances(&self) -> Result<Vec<String>, HandoffError> {
        let entries = fs::read_dir(&self.path)
            .map_err(|e| HandoffError::Dir(format!("cannot list {}: {e}", self.path.display())))?;
        let mut live = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with(INSTANCE_PREFIX) || !name.ends_with(".json") {
                continue;
            }
            let Ok(file) = File::open(entry.path()) else { continue };
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(_dead) => {
                    let _ = fs::remove_file(entry.path());
                }
                Err((_, Errno::EWOULDBLOCK)) => {
                    if let Ok(text) = fs::read_to_string(entry.path()) {
                        live.push(text);
                    }
                }
                Err(_) => {}
            }
        }
        Ok(live)
    }

    fn race(&self) -> HandoffError {
        HandoffError::Dir(format!(
            "another instance owns {} (it holds {RECONFIG_LOCK}): two new instances are racing for one uds dir",
            self.reconfig_path().display()
        ))
    }
}

impl ReconfigSocket {
    /// The listening socket, to accept peers on.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }
}

impl InstanceFile {
    /// Replaces the status document (in place: same inode, same lock, so readers never see the file unlocked and
    /// take this process for dead). A reader may catch it half written; keep documents small.
    pub fn write(&self, contents: &str) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let file: &File = &self.lock;
        file.set_len(0)?;
        file.write_all_at(contents.as_bytes(), 0)
    }
}

impl Drop for InstanceFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Drop for ReconfigSocket {
    fn drop(&mut self) {
        // We hold the lock, so the path is ours to remove; the socket and then the lock close after this, as the
        // fields drop.
        let _ = fs::remove_file(&self.path);
    }
}
