//! The only module that touches raw file descriptors: SCM_RIGHTS send/receive, SO_PEERCRED, and the checks a
//! received fd must pass before anyone treats it as a listener. Everything it returns is an `OwnedFd` or a plain
//! value; callers never see a `RawFd`.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::inotify::Inotify;
use nix::sys::socket::{
    getsockname, getsockopt, recvmsg, sendmsg, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockType,
    SockaddrStorage,
};

use tokio::io::unix::AsyncFd;

/// Sends `data` with `fds` attached as SCM_RIGHTS. Returns the number of bytes written, which may be short;
/// the fds travel with the first byte, so the caller writes the rest without them.
pub(crate) fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let iov = [IoSlice::new(data)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None).map_err(io::Error::from)
}

/// Most fds the kernel passes in one message (SCM_MAX_FD). Room is made for all of them, so a peer that sends
/// more than the protocol allows cannot make the control message truncate (nix then hides the fds that did
/// arrive, and they would leak); the caller rejects the surplus and closes it.
const SCM_MAX_FD: usize = 253;

/// Reads into `buf`, collecting any fds that arrive (close-on-exec set atomically by MSG_CMSG_CLOEXEC).
/// A truncated control message (MSG_CTRUNC) is an error.
pub(crate) fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg_space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg_space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel just installed this fd in our table for us; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control message truncated: peer attached more than {SCM_MAX_FD} fds"),
        ));
    }
    Ok((msg.bytes, fds))
}

/// The uid of the process at the other end of a connected Unix socket, as the kernel recorded it at connect time.
pub(crate) fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
    let cred = getsockopt(&sock, sockopt::PeerCredentials).map_err(io::Error::from)?;
    Ok(cred.uid())
}

/// This process's effective uid.
pub(crate) fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Checks that `fd` is a listening TCP socket and returns its local address.
pub(crate) fn listening_tcp_addr(fd: BorrowedFd<'_>) -> Result<SocketAddr, String> {
    let ty = getsockopt(&fd, sockopt::SockType).map_err(|e| format!("not a socket ({e})"))?;
    if ty != SockType::Stream {
        return Err(format!("socket type is {ty:?}, not a stream socket"));
    }
    let listening = getsockopt(&fd, sockopt::AcceptConn).map_err(|e| format!("SO_ACCEPTCONN: {e}"))?;
    if !listening {
        return Err("socket is not listening".into());
    }
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(|e| format!("getsockname: {e}"))?;
    if let Some(v4) = addr.as_sockaddr_in() {
        Ok(SocketAddr::V4((*v4).into()))
    } else if let Some(v6) = addr.as_sockaddr_in6() {
        Ok(SocketAddr::V6((*v6).into()))
    } else {
        Err("socket is not an IPv4 or IPv6 socket".into())
    }
}

/// An inotify instance that tokio's reactor can poll.
pub(crate) struct InotifyFd(pub(crate) Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers an inotify instance with the reactor.
pub(crate) fn register_inotify(ino: Inotify) -> io::Result<AsyncFd<InotifyFd>> {
    // SAFETY: the fd is owned by the `Inotify` inside the `AsyncFd`, so it stays open exactly as long as it is
    // registered and is closed only after deregistration, when the `AsyncFd` drops.
    unsafe { AsyncFd::register(InotifyFd(ino)) }.map_err(io::Error::from)
}
