//! Byte relay between two TCP streams with splice(2): the bytes move socket → pipe → socket inside the kernel,
//! never through user space. One pipe per direction; half-closes are passed on.
//!
//! A relay can stop at a quiescent point for a migration: each direction stops before its next read, after
//! writing out what it already read (for at most [`RELAY_FLUSH_GRACE`] if the receiver is slow; what is still in
//! the pipe then is taken out into memory and travels with the sockets). Bytes still in the sockets' kernel
//! buffers need nothing: the successor reads and writes the very same sockets.
//!
//! So that a relay can always travel, a direction never holds more than [`MAX_HELD`] bytes: each read from the
//! source moves at most that much into the pipe, and the pipe is filled again only once empty. Both directions'
//! worth fits one connection frame of the handoff protocol (checked at compile time). The rest of what a stalled
//! receiver has not read stays in the kernel's socket buffers, which move with the fds.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};

use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::drain::Latch;

/// Longest a relay direction keeps writing bytes it already read once a migration started, before it hands
/// them over in memory instead.
pub const RELAY_FLUSH_GRACE: Duration = Duration::from_millis(200);

/// Pipe size asked for (the kernel may cap it at /proc/sys/fs/pipe-max-size; the default then stays 64 KiB). More
/// than [`MAX_HELD`]: a pipe has one slot per 4 KiB page, and a socket's data often comes in smaller fragments (one
/// slot each), so 256 slots let one splice move up to [`MAX_HELD`] of them.
const PIPE_SIZE: i32 = 1 << 20;

/// Most bytes one direction of a relay holds (reads into its pipe at once): at a migration, what is in the pipe
/// travels in memory with the connection, in one frame.
pub const MAX_HELD: usize = 256 * 1024;

// Both directions' MAX_HELD (to-upstream, to-client) fit one connection of a CONNS frame, so a relay is never too
// large to hand over (base64: 2 × 256 KiB × 4/3 + overhead ≈ 683 KiB of the 768 KiB budget).
const _: () = assert!(baton_migrate::conn_fits(&[MAX_HELD, MAX_HELD]));

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions ended (EOF passed on): bytes moved client → upstream and upstream → client.
    Done(u64, u64),
    /// Stopped for a migration with both directions open; the bytes read but not yet written, per direction.
    Paused {
        /// Read from the client, still to be written to the upstream.
        to_upstream: Vec<u8>,
        /// Read from the upstream, still to be written to the client.
        to_client: Vec<u8>,
    },
}

/// Relays both directions until both have ended, or until `stop` fires while both are open. First writes
/// `pending` (to-upstream, to-client): bytes an earlier instance read but did not write. `sent_up` and
/// `sent_down` are told every chunk moved client → upstream and upstream → client.
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    sent_up: impl Fn(u64),
    sent_down: impl Fn(u64),
    pending: (Vec<u8>, Vec<u8>),
    stop: &Latch,
) -> io::Result<RelayEnd> {
    let (up, down) = tokio::try_join!(
        pump(client, upstream, &sent_up, pending.0, stop),
        pump(upstream, client, &sent_down, pending.1, stop)
    )?;
    // A direction that already ended cannot be handed over half-closed: finish the other one here.
    match (up, down) {
        (Pumped::Eof(a), Pumped::Eof(b)) => Ok(RelayEnd::Done(a, b)),
        (Pumped::Stopped(to_upstream), Pumped::Stopped(to_client)) => Ok(RelayEnd::Paused { to_upstream, to_client }),
        (Pumped::Eof(a), Pumped::Stopped(rest)) => {
            Ok(RelayEnd::Done(a, to_end(upstream, client, &sent_down, rest).await?))
        }
        (Pumped::Stopped(rest), Pumped::Eof(b)) => {
            Ok(RelayEnd::Done(to_end(client, upstream, &sent_up, rest).await?, b))
        }
    }
}

/// [`pump`] with no stop: runs until `src` ends.
async fn to_end(src: &TcpStream, dst: &TcpStream, moved: &impl Fn(u64), pending: Vec<u8>) -> io::Result<u64> {
    match pump(src, dst, moved, pending, &Latch::default()).await? {
        Pumped::Eof(n) => Ok(n),
        Pumped::Stopped(_) => Err(io::Error::other("relay stopped without a stop request")),
    }
}

enum Pumped {
    Eof(u64),
    Stopped(Vec<u8>),
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Most bytes moved into it at once: its size, at most [`MAX_HELD`].
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let capacity = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE))
            .or_else(|_| fcntl(write.as_raw_fd(), FcntlArg::F_GETPIPE_SZ))
            .map(|n| n as usize)
            .unwrap_or(64 * 1024);
        Ok(Pipe {
            read,
            write,
            capacity: capacity.min(MAX_HELD),
        })
    }

    /// Takes `n` bytes (all there are) out of the pipe.
    fn take(&self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match nix::unistd::read(self.read.as_raw_fd(), &mut out[got..]) {
                Ok(0) => break,
                Ok(m) => got += m,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        out.truncate(got);
        Ok(out)
    }
}

/// Resolves [`RELAY_FLUSH_GRACE`] after `stop` fires.
async fn flush_grace_over(stop: &Latch) {
    stop.wait().await;
    tokio::time::sleep(RELAY_FLUSH_GRACE).await;
}

/// Moves `src` → `dst` until `src` ends (then half-closes `dst`) or `stop` fires at a read boundary.
///
/// The pipe is filled only when it is empty: then an EAGAIN from splice can only mean that `src` has nothing to
/// read, so clearing its readiness is right (a full pipe would also say EAGAIN and leave tokio waiting for a
/// readiness edge that may never come).
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    moved: &impl Fn(u64),
    pending: Vec<u8>,
    stop: &Latch,
) -> io::Result<Pumped> {
    let mut total = 0u64;
    let mut off = 0;
    while off < pending.len() {
        let n = tokio::select! {
            biased;
            w = dst.async_io(Interest::WRITABLE, || socket2::SockRef::from(dst).send(&pending[off..])) => w?,
            _ = flush_grace_over(stop) => return Ok(Pumped::Stopped(pending[off..].to_vec())),
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        off += n;
        total += n as u64;
        moved(n as u64);
    }
    let pipe = Pipe::new()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let n = tokio::select! {
            biased;
            _ = stop.wait() => return Ok(Pumped::Stopped(Vec::new())),
            r = src.async_io(Interest::READABLE, || {
                splice(src, None, &pipe.write, None, pipe.capacity, flags).map_err(errno)
            }) => r?,
        };
        if n == 0 {
            // EOF from src: pass the half-close on (the peer may still be sending the other way).
            let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
            return Ok(Pumped::Eof(total));
        }
        let mut left = n;
        while left > 0 {
            let m = tokio::select! {
                biased;
                w = dst.async_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, dst, None, left, flags).map_err(errno)
                }) => w?,
                _ = flush_grace_over(stop) => return Ok(Pumped::Stopped(pipe.take(left)?)),
            };
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
            total += m as u64;
            moved(m as u64);
        }
    }
}

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}
