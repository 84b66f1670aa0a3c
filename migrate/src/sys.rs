//! The only module that touches raw file descriptors: SCM_RIGHTS send/receive, SO_PEERCRED, and the checks a
//! received fd must pass before anyone treats it as a listener. Everything it returns is an `OwnedFd` or a plain
//! value; callers never see a `RawFd`.
#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::inotify::Inotify;
use nix::sys::socket::{
    getsockname, getsockopt, sendmsg, sockopt, ControlMessage, MsgFlags, SockType, SockaddrStorage,
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
///
/// The control buffer is walked by hand rather than through nix, because nix hides every fd once the kernel
/// flags the message as truncated (MSG_CTRUNC): the fds it did install would leak. A truncated message (more fds
/// than we make room for, or our fd table full) is an error, and every fd that arrived is closed.
pub(crate) fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    use nix::libc;
    // u64 elements keep the buffer aligned for cmsghdr.
    let space = unsafe { libc::CMSG_SPACE((SCM_MAX_FD * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() * 8;
    // SAFETY: `msg` describes buffers we own and that live across the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR walk the control data the kernel wrote into `control`, bounded by
    // msg_controllen; each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / sizeof(int) fds that the kernel
    // just installed for us, which nobody else owns.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control message truncated (more fds than the protocol allows, or no room in our fd table); the fds that arrived were closed",
        ));
    }
    Ok((n as usize, fds))
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
