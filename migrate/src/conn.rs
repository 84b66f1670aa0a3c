//! A framed connection on the reconfig socket: whole [`Message`]s in and out, fds attached where the protocol
//! says, every read and write under a deadline.
//!
//! [`crate::hand_over`], [`crate::Takeover`] and [`crate::watch_takeover`] use it for you. It is public for tests
//! and tools that drive the protocol by hand (to play a misbehaving peer, say).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::time::Instant;

use crate::error::HandoffError;
use crate::sys;
use crate::wire::{self, Message};

/// One end of a handoff session.
///
/// Owns the buffering that SCM_RIGHTS makes necessary: fds arrive with whatever `recvmsg` call read the first
/// byte of their frame, so they are queued here until the frame is complete and can be checked against it.
pub struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    peer_uid: u32,
}

impl Conn {
    /// Wraps a connected stream after checking with SO_PEERCRED that the peer runs as our own uid: the socket
    /// file's mode 0600 already keeps other users out, and this also covers a directory with looser permissions.
    pub fn new(stream: UnixStream) -> Result<Conn, HandoffError> {
        let peer_uid = sys::peer_uid(stream.as_fd()).map_err(|e| HandoffError::Io("SO_PEERCRED".into(), e))?;
        let ours = sys::euid();
        if peer_uid != ours {
            return Err(HandoffError::ForeignPeer { uid: peer_uid, ours });
        }
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
            fds: VecDeque::new(),
            peer_uid,
        })
    }

    /// Uid of the peer, as checked at construction (always ours; kept for logs).
    pub fn peer_uid(&self) -> u32 {
        self.peer_uid
    }

    /// Sends one message with `fds` attached (exactly `msg.fd_count()` of them), before `deadline`.
    ///
    /// The fds are borrowed: the kernel installs duplicates in the peer, and ours stay open, which is what lets
    /// the old instance keep serving until the commit.
    pub async fn send(&mut self, msg: &Message, fds: &[BorrowedFd<'_>], deadline: Instant) -> Result<(), HandoffError> {
        if fds.len() != msg.fd_count() {
            return Err(HandoffError::Protocol(format!(
                "{} must carry {} fds, {} given",
                msg.name(),
                msg.fd_count(),
                fds.len()
            )));
        }
        let frame = msg.encode().map_err(HandoffError::Wire)?;
        let mut sent = 0;
        let write = async {
            while sent < frame.len() {
                let attach = if sent == 0 { fds } else { &[][..] };
                let n = self
                    .stream
                    .async_io(Interest::WRITABLE, || {
                        sys::send_with_fds(self.stream.as_fd(), &frame[sent..], attach)
                    })
                    .await?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "peer closed"));
                }
                sent += n;
            }
            Ok(())
        };
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HandoffError::Io(format!("sending {}", msg.name()), e)),
            Err(_) => Err(HandoffError::Timeout(format!("sending {}", msg.name()))),
        }
    }

    /// Receives the next message and the fds that came with it, before `deadline`.
    ///
    /// Fds that arrive with a message that must not carry any, or a batch whose fd count does not match its
    /// tags, end the session with a protocol error; the stray fds are closed (dropped) on the way out.
    pub async fn recv(&mut self, deadline: Instant) -> Result<(Message, Vec<OwnedFd>), HandoffError> {
        loop {
            if let Some((msg, used)) = wire::decode(&self.buf).map_err(HandoffError::Wire)? {
                self.buf.drain(..used);
                let fds: Vec<OwnedFd> = self.fds.drain(..).collect();
                if fds.len() != msg.fd_count() {
                    return Err(HandoffError::Protocol(format!(
                        "{} arrived with {} fds attached, expected {}",
                        msg.name(),
                        fds.len(),
                        msg.fd_count()
                    )));
                }
                return Ok((msg, fds));
            }
            // Never read past the end of the current frame: fds travel with the first byte of the frame they
            // belong to, so a read that stayed inside one frame can only have brought that frame's fds.
            let want = match self.buf.len() {
                n if n < 4 => 4 - n,
                n => {
                    let declared = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                    (4 + declared).saturating_sub(n).max(1)
                }
            };
            let read = async {
                let mut chunk = [0u8; 8192];
                let limit = want.min(chunk.len());
                let (n, fds) = self
                    .stream
                    .async_io(Interest::READABLE, || {
                        sys::recv_with_fds(self.stream.as_fd(), &mut chunk[..limit])
                    })
                    .await?;
                Ok::<_, io::Error>((chunk[..n].to_vec(), fds))
            };
            match tokio::time::timeout_at(deadline, read).await {
                Err(_) => return Err(HandoffError::Timeout("waiting for the peer's next message".into())),
                Ok(Err(e)) => return Err(HandoffError::Io("receiving".into(), e)),
                Ok(Ok((bytes, fds))) => {
                    self.fds.extend(fds);
                    if bytes.is_empty() {
                        return Err(HandoffError::PeerClosed);
                    }
                    self.buf.extend_from_slice(&bytes);
                }
            }
        }
    }
}
