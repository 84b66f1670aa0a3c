//! HTTP/2 framing (RFC 9113) for the gRPC bench tools: frame headers, the frames they write, the padding and
//! priority fields they strip, and a non-blocking socket with its buffers. Flow control and stream state live
//! in the tools, which know what they send.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;

/// The initial flow-control window of a stream and of a connection, and the default (and our) largest frame.
pub const DEFAULT_WINDOW: i64 = 65_535;
pub const MAX_FRAME: usize = 16_384;
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

/// The 9-byte frame header.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

pub fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
}

pub fn put_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    put_head(out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
}

pub fn put_settings(out: &mut Vec<u8>, settings: &[(u16, u32)]) {
    put_head(out, settings.len() * 6, SETTINGS, 0, 0);
    for (id, v) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub fn put_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    put_frame(out, WINDOW_UPDATE, 0, stream, &increment.to_be_bytes());
}

pub fn put_rst(out: &mut Vec<u8>, stream: u32, code: u32) {
    put_frame(out, RST_STREAM, 0, stream, &code.to_be_bytes());
}

pub fn put_goaway(out: &mut Vec<u8>, last_stream: u32, code: u32) {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&last_stream.to_be_bytes());
    p[4..].copy_from_slice(&code.to_be_bytes());
    put_frame(out, GOAWAY, 0, 0, &p);
}

/// A header block (already HPACK-encoded) as HEADERS plus CONTINUATION frames of at most `max_frame` bytes.
pub fn put_headers(out: &mut Vec<u8>, stream: u32, end_stream: bool, block: &[u8], max_frame: usize) {
    let mut chunks = block.chunks(max_frame.max(1)).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        flags |= END_HEADERS;
    }
    put_frame(out, HEADERS, flags, stream, first);
    while let Some(c) = chunks.next() {
        let last = chunks.peek().is_none();
        put_frame(out, CONTINUATION, if last { END_HEADERS } else { 0 }, stream, c);
    }
}

/// The payload of a DATA or HEADERS frame without its padding (and, for HEADERS, its priority fields).
pub fn strip<'a>(head: &Head, payload: &'a [u8]) -> Result<&'a [u8], String> {
    let mut p = payload;
    let mut pad = 0;
    if head.flags & PADDED != 0 {
        pad = usize::from(*p.first().ok_or("PADDED frame without a pad length")?);
        p = &p[1..];
    }
    if head.kind == HEADERS && head.flags & PRIORITY != 0 {
        p = p.get(5..).ok_or("HEADERS too short for its priority fields")?;
    }
    if pad > p.len() {
        return Err("padding longer than the frame".into());
    }
    Ok(&p[..p.len() - pad])
}

/// Answers a PING (RFC 9113 §6.7): the same 8 bytes back with ACK; a PING's own ACK needs nothing.
pub fn answer_ping(head: &Head, payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    if payload.len() != 8 {
        return Err("PING of a length other than 8".into());
    }
    if head.flags & ACK == 0 {
        put_frame(out, PING, ACK, 0, payload);
    }
    Ok(())
}

/// A header block, which a HEADERS frame may leave to CONTINUATION frames to finish (RFC 9113 §6.10).
#[derive(Debug, Default)]
pub struct HeaderBlocks {
    /// The block begun and not finished: its stream, whether it ends the stream, the bytes so far.
    open: Option<(u32, bool, Vec<u8>)>,
}

/// A complete header block: its stream, whether it ends the stream, its bytes.
pub type Block<'a> = (u32, bool, std::borrow::Cow<'a, [u8]>);

impl HeaderBlocks {
    /// Refuses any frame but a CONTINUATION of the same stream while a block is open.
    pub fn check(&self, head: &Head) -> Result<(), String> {
        match &self.open {
            Some((stream, _, _)) if head.kind != CONTINUATION || head.stream != *stream => {
                Err("a frame other than CONTINUATION inside a header block".into())
            }
            _ => Ok(()),
        }
    }

    /// Takes a HEADERS or CONTINUATION frame: the block once complete (borrowed when one frame carried it all).
    pub fn feed<'a>(&mut self, head: &Head, payload: &'a [u8]) -> Result<Option<Block<'a>>, String> {
        let complete = head.flags & END_HEADERS != 0;
        if head.kind == HEADERS {
            let block = strip(head, payload)?;
            let end = head.flags & END_STREAM != 0;
            if complete {
                return Ok(Some((head.stream, end, std::borrow::Cow::Borrowed(block))));
            }
            self.open = Some((head.stream, end, block.to_vec()));
            return Ok(None);
        }
        let Some((stream, end, mut block)) = self.open.take() else {
            return Err("CONTINUATION without HEADERS".into());
        };
        block.extend_from_slice(payload);
        if complete {
            Ok(Some((stream, end, std::borrow::Cow::Owned(block))))
        } else {
            self.open = Some((stream, end, block));
            Ok(None)
        }
    }
}

/// The (identifier, value) pairs of a SETTINGS payload.
pub fn settings(payload: &[u8]) -> Result<Vec<(u16, u32)>, String> {
    if !payload.len().is_multiple_of(6) {
        return Err("SETTINGS length not a multiple of 6".into());
    }
    Ok(payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect())
}

pub fn u32_at(p: &[u8], at: usize) -> Result<u32, String> {
    let b = p.get(at..at + 4).ok_or("frame too short")?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A non-blocking socket with a read buffer (bytes `rpos..rend` not yet consumed) and a write buffer (bytes
/// `wpos..` not yet written).
pub struct Io {
    pub sock: TcpStream,
    pub rbuf: Vec<u8>,
    pub rpos: usize,
    pub rend: usize,
    pub wbuf: Vec<u8>,
    pub wpos: usize,
}

/// Room for a few frames of the largest size we accept ([`MAX_FRAME`]).
const RBUF: usize = 64 * 1024;

impl Io {
    pub fn new(sock: TcpStream) -> std::io::Result<Io> {
        sock.set_nonblocking(true)?;
        sock.set_nodelay(true)?;
        Ok(Io {
            sock,
            rbuf: vec![0; RBUF],
            rpos: 0,
            rend: 0,
            wbuf: Vec::with_capacity(64 * 1024),
            wpos: 0,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Reads what the socket has. Ok(false) at EOF.
    pub fn fill(&mut self) -> std::io::Result<bool> {
        loop {
            if self.rpos == self.rend {
                self.rpos = 0;
                self.rend = 0;
            } else if self.rbuf.len() - self.rend < MAX_FRAME + 9 && self.rpos > 0 {
                self.rbuf.copy_within(self.rpos..self.rend, 0);
                self.rend -= self.rpos;
                self.rpos = 0;
            }
            if self.rend == self.rbuf.len() {
                return Ok(true); // full: consume first
            }
            match self.sock.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => return Ok(false),
                Ok(n) => self.rend += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next whole frame in the read buffer: its header and where its payload is in `rbuf`; the frame counts
    /// as consumed. None when the buffer holds less than a frame.
    pub fn next_frame(&mut self, max_len: usize) -> Result<Option<(Head, std::ops::Range<usize>)>, String> {
        let avail = &self.rbuf[self.rpos..self.rend];
        if avail.len() < 9 {
            return Ok(None);
        }
        let head = Head {
            len: (usize::from(avail[0]) << 16) | (usize::from(avail[1]) << 8) | usize::from(avail[2]),
            kind: avail[3],
            flags: avail[4],
            stream: u32::from_be_bytes([avail[5], avail[6], avail[7], avail[8]]) & 0x7fff_ffff,
        };
        if head.len > max_len {
            return Err(format!("frame of {} bytes, above the {max_len} allowed", head.len));
        }
        if avail.len() < 9 + head.len {
            return Ok(None);
        }
        let start = self.rpos + 9;
        self.rpos = start + head.len;
        Ok(Some((head, start..start + head.len)))
    }

    /// Consumes `n` bytes that must be exactly `expect` (the client preface). None while fewer have arrived.
    pub fn expect(&mut self, expect: &[u8]) -> Option<bool> {
        let avail = &self.rbuf[self.rpos..self.rend];
        let n = avail.len().min(expect.len());
        if avail[..n] != expect[..n] {
            return Some(false);
        }
        if n < expect.len() {
            return None;
        }
        self.rpos += n;
        Some(true)
    }

    /// Writes what the socket takes.
    pub fn flush(&mut self) -> std::io::Result<()> {
        while self.wpos < self.wbuf.len() {
            match self.sock.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        } else if self.wpos > 64 * 1024 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(())
    }

    pub fn wants_write(&self) -> bool {
        self.wpos < self.wbuf.len()
    }
}

/// poll(2): the one system call std does not offer, declared here (std links the C library anyway).
pub mod poll {
    use std::os::fd::RawFd;

    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct PollFd {
        pub fd: RawFd,
        pub events: i16,
        pub revents: i16,
    }

    pub const POLLIN: i16 = 0x1;
    pub const POLLOUT: i16 = 0x4;
    pub const POLLERR: i16 = 0x8;
    pub const POLLHUP: i16 = 0x10;

    extern "C" {
        fn poll(fds: *mut PollFd, nfds: std::ffi::c_ulong, timeout: std::ffi::c_int) -> std::ffi::c_int;
    }

    impl PollFd {
        pub fn new(fd: RawFd, write: bool) -> PollFd {
            PollFd {
                fd,
                events: POLLIN | if write { POLLOUT } else { 0 },
                revents: 0,
            }
        }

        pub fn ready(&self) -> bool {
            self.revents != 0
        }
    }

    #[repr(C)]
    struct Timespec {
        tv_sec: std::ffi::c_long,
        tv_nsec: std::ffi::c_long,
    }

    extern "C" {
        fn ppoll(
            fds: *mut PollFd,
            nfds: std::ffi::c_ulong,
            timeout: *const Timespec,
            sigmask: *const std::ffi::c_void,
        ) -> std::ffi::c_int;
        fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
    }

    /// Like [`wait`] with a timeout to the nanosecond (ppoll(2)): for clients that send on a schedule.
    pub fn wait_for(fds: &mut [PollFd], timeout: std::time::Duration) -> std::io::Result<usize> {
        let ts = Timespec {
            tv_sec: timeout.as_secs().min(3600) as std::ffi::c_long,
            tv_nsec: timeout.subsec_nanos() as std::ffi::c_long,
        };
        loop {
            // SAFETY: as in `wait`; `ts` lives across the call and a null sigmask leaves the mask alone.
            let r = unsafe { ppoll(fds.as_mut_ptr(), fds.len() as std::ffi::c_ulong, &ts, std::ptr::null()) };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Asks the kernel to wake this thread's timed waits on time (PR_SET_TIMERSLACK to 1 ns instead of the
    /// default 50 µs), so that a client on a schedule does not send late by the slack.
    pub fn tight_timers() {
        const PR_SET_TIMERSLACK: std::ffi::c_int = 29;
        // SAFETY: prctl(2) with an integer argument; it only changes this thread's timer slack.
        unsafe { prctl(PR_SET_TIMERSLACK, 1 as std::ffi::c_ulong) };
    }

    /// Waits up to `timeout_ms` for any of `fds`; their `revents` say which.
    pub fn wait(fds: &mut [PollFd], timeout_ms: i32) -> std::io::Result<usize> {
        loop {
            // SAFETY: `fds` is a valid, exclusively borrowed array of `struct pollfd` (same layout) of that length.
            let r = unsafe { poll(fds.as_mut_ptr(), fds.len() as std::ffi::c_ulong, timeout_ms) };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_split_into_continuations() {
        let block: Vec<u8> = (0..40u8).collect();
        let mut out = Vec::new();
        put_headers(&mut out, 3, true, &block, 16);
        // HEADERS(16) + CONTINUATION(16) + CONTINUATION(8, END_HEADERS)
        assert_eq!(out.len(), 3 * 9 + 40);
        assert_eq!((out[3], out[4]), (HEADERS, END_STREAM));
        assert_eq!((out[9 + 16 + 3], out[9 + 16 + 4]), (CONTINUATION, 0));
        assert_eq!((out[2 * 25 + 3], out[2 * 25 + 4]), (CONTINUATION, END_HEADERS));
    }

    #[test]
    fn a_header_block_split_over_continuation_frames_is_assembled() {
        let head = |kind, flags, stream, len| Head {
            len,
            kind,
            flags,
            stream,
        };
        let mut blocks = HeaderBlocks::default();
        // Whole in one HEADERS frame: borrowed as it is.
        let one = blocks
            .feed(&head(HEADERS, END_HEADERS | END_STREAM, 1, 3), b"abc")
            .unwrap();
        assert_eq!(one, Some((1, true, std::borrow::Cow::Borrowed(&b"abc"[..]))));
        // Split: nothing until END_HEADERS, and no other frame in between.
        assert_eq!(blocks.feed(&head(HEADERS, 0, 3, 2), b"ab").unwrap(), None);
        assert!(blocks.check(&head(DATA, 0, 3, 0)).is_err());
        assert!(blocks.check(&head(CONTINUATION, 0, 5, 0)).is_err());
        assert!(blocks.check(&head(CONTINUATION, 0, 3, 0)).is_ok());
        assert_eq!(blocks.feed(&head(CONTINUATION, 0, 3, 1), b"c").unwrap(), None);
        let done = blocks.feed(&head(CONTINUATION, END_HEADERS, 3, 1), b"d").unwrap();
        assert_eq!(
            done.map(|(s, e, b)| (s, e, b.into_owned())),
            Some((3, false, b"abcd".to_vec()))
        );
        assert!(blocks.check(&head(DATA, 0, 3, 0)).is_ok());
        assert!(
            blocks.feed(&head(CONTINUATION, END_HEADERS, 3, 1), b"x").is_err(),
            "CONTINUATION without HEADERS"
        );
    }

    #[test]
    fn strip_padding_and_priority() {
        let head = Head {
            len: 0,
            kind: HEADERS,
            flags: PADDED | PRIORITY,
            stream: 1,
        };
        let payload = [2, 0, 0, 0, 0, 16, b'a', b'b', 0, 0];
        assert_eq!(strip(&head, &payload).unwrap(), b"ab");
        assert!(strip(&head, &[9, 0, 0, 0, 0, 16]).is_err());
    }
}
