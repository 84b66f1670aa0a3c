//! Byte relay between two TCP streams with splice(2): the bytes move socket → pipe → socket inside the kernel,
//! never through user space. One pipe per direction; half-closes are passed on.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Pipe size asked for (the kernel may cap it at /proc/sys/fs/pipe-max-size; the default then stays 64 KiB).
const PIPE_SIZE: i32 = 1 << 20;

/// Relays both directions until both have ended. `sent_up` and `sent_down` are told every chunk moved
/// client → upstream and upstream → client. Returns the byte counts.
pub async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    sent_up: impl Fn(u64),
    sent_down: impl Fn(u64),
) -> io::Result<(u64, u64)> {
    tokio::try_join!(pump(client, upstream, sent_up), pump(upstream, client, sent_down))
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let capacity = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE))
            .or_else(|_| fcntl(write.as_raw_fd(), FcntlArg::F_GETPIPE_SZ))
            .map(|n| n as usize)
            .unwrap_or(64 * 1024);
        Ok(Pipe { read, write, capacity })
    }
}

/// Moves `src` → `dst` until `src` ends, then half-closes `dst`.
///
/// The pipe is filled only when it is empty: then an EAGAIN from splice can only mean that `src` has nothing to
/// read, so clearing its readiness is right (a full pipe would also say EAGAIN and leave tokio waiting for a
/// readiness edge that may never come).
async fn pump(src: &TcpStream, dst: &TcpStream, moved: impl Fn(u64)) -> io::Result<u64> {
    let pipe = Pipe::new()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        let n = src
            .async_io(Interest::READABLE, || {
                splice(src, None, &pipe.write, None, pipe.capacity, flags).map_err(errno)
            })
            .await?;
        if n == 0 {
            // EOF from src: pass the half-close on (the peer may still be sending the other way).
            let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            let m = dst
                .async_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, dst, None, left, flags).map_err(errno)
                })
                .await?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
        }
        total += n as u64;
        moved(n as u64);
    }
}

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}
