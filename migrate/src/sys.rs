//! The only module that touches raw file descriptors: SCM_RIGHTS send/receive, SO_PEERCRED, and the checks a
//! received fd must pass before anyone treats it as a listener. Everything it returns is an `OwnedFd` or a plain
//! value; callers never see a `RawFd`. Its one `unsafe` is the registration of the inotify fd with tokio.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::inotify::Inotify;
use nix::sys::socket::{getsockname, getsockopt, sockopt, SockType, SockaddrStorage};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use tokio::io::unix::AsyncFd;

/// Sends `data` with `fds` attached as SCM_RIGHTS. Returns the number of bytes written, which may be short;
/// the fds travel with the first byte, so the caller writes the rest without them.
pub(crate) fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let iov = [IoSlice::new(data)];
    let rights = SendAncillaryMessage::ScmRights(fds);
    let mut space = vec![MaybeUninit::<u8>::uninit(); if fds.is_empty() { 0 } else { rights.size() }];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(rights) {
        return Err(io::Error::other("no room for the SCM_RIGHTS control message"));
    }
    Ok(sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL)?)
}

/// Most fds the kernel passes in one message (SCM_MAX_FD). Room is made for all of them, so a peer that sends
/// more than the protocol allows cannot make the control message truncate; the caller rejects the surplus and
/// closes it.
const SCM_MAX_FD: usize = 253;

/// Reads into `buf`, collecting any fds that arrive (close-on-exec set atomically by MSG_CMSG_CLOEXEC).
///
/// A truncated message (MSG_CTRUNC: more fds than we make room for, or our fd table full) is an error, and every
/// fd that arrived is closed: the kernel installs the fds that fit before it flags the truncation (see
/// `scm_detach_fds` in net/core/scm.c), so they must be drained and dropped, not ignored.
pub(crate) fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_with_room(sock, buf, SCM_MAX_FD)
}

/// [`recv_with_fds`] with room for `room` fds: the tests use a small room to make the kernel truncate.
fn recv_with_room(sock: BorrowedFd<'_>, buf: &mut [u8], room: usize) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(room))];
    // Dropping the buffer closes any fd left in it; every fd is drained below anyway.
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg(
        sock,
        &mut iov,
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "control message truncated (more fds than the protocol allows, or no room in our fd table); the fds that arrived were closed",
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
#[allow(unsafe_code)]
pub(crate) fn register_inotify(ino: Inotify) -> io::Result<AsyncFd<InotifyFd>> {
    // SAFETY: the fd is owned by the `Inotify` inside the `AsyncFd`, so it stays open exactly as long as it is
    // registered and is closed only after deregistration, when the `AsyncFd` drops; `InotifyFd::as_raw_fd`
    // returns that same fd throughout, since nothing replaces the `Inotify` (the watch only uses `get_ref`).
    unsafe { AsyncFd::register(InotifyFd(ino)) }.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use nix::fcntl::{fcntl, FcntlArg, FdFlag};

    use super::*;

    /// A connected pair whose first end reads end-of-file only once every copy of the second end is closed: a
    /// leak detector for the copies sent as SCM_RIGHTS.
    fn probe() -> (UnixStream, UnixStream) {
        let (probe, peer) = UnixStream::pair().expect("socketpair");
        probe
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        (probe, peer)
    }

    fn assert_all_copies_closed(mut probe: UnixStream) {
        let mut byte = [0u8; 1];
        let n = probe
            .read(&mut byte)
            .expect("a copy of the probed socket is still open");
        assert_eq!(n, 0);
    }

    #[test]
    fn fds_arrive_owned_and_close_on_exec() {
        let (tx, rx) = UnixStream::pair().expect("socketpair");
        let (probe, peer) = probe();
        assert_eq!(send_with_fds(tx.as_fd(), b"xy", &[peer.as_fd(); 3]).expect("send"), 2);
        let mut buf = [0u8; 8];
        let (n, fds) = recv_with_fds(rx.as_fd(), &mut buf).expect("recv");
        assert_eq!((&buf[..n], fds.len()), (&b"xy"[..], 3));
        for fd in &fds {
            let flags = FdFlag::from_bits_retain(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).expect("F_GETFD"));
            assert!(flags.contains(FdFlag::FD_CLOEXEC));
        }
        drop((peer, fds));
        assert_all_copies_closed(probe);
    }

    #[test]
    fn a_truncated_control_message_is_an_error_and_closes_what_arrived() {
        let (tx, rx) = UnixStream::pair().expect("socketpair");
        let (probe, peer) = probe();
        // Room for one fd is rounded up to the control message's alignment: 16 fds overflow it whatever the
        // padding.
        send_with_fds(tx.as_fd(), b"x", &[peer.as_fd(); 16]).expect("send");
        let mut buf = [0u8; 8];
        let err = recv_with_room(rx.as_fd(), &mut buf, 1).expect_err("16 fds in the room of one");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("control message truncated"), "{err}");
        drop(peer);
        assert_all_copies_closed(probe);
    }
}
