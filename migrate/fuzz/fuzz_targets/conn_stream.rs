//! Arbitrary bytes, and fds, through a real Unix socketpair into `Conn::recv`, on a tokio current-thread runtime.
//! `Conn::recv` must never panic, must hand each message exactly `fd_count()` fds, and every fd it received must be
//! closed once the connection is dropped (the process's fd count is checked after each input).
//!
//! Input: byte 0 picks the write size (the stream is written in chunks, each its own `sendmsg`), byte 1 the fds:
//! `b1 % (cap + 1)` fds on the first chunk, and one on every third chunk when bit 7 is set. The cap is 64
//! (`MAX_FDS_PER_FRAME`) unless `BATON_FUZZ_MAX_FDS` says otherwise. The rest is the byte stream.
#![no_main]

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use baton_migrate::conn::Conn;
use baton_migrate::wire::MAX_FDS_PER_FRAME;
use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

struct Fixture {
    rt: tokio::runtime::Runtime,
    /// An fd to attach: the read end of a pipe that lives as long as the process.
    pipe: (OwnedFd, OwnedFd),
    /// What `/proc/self/fd` says that pipe is (`pipe:[inode]`): every fd received is a copy of it.
    pipe_target: String,
    max_fds: usize,
    /// Sockets open between inputs, once everything has been set up.
    sockets: OnceLock<usize>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let pipe = nix::unistd::pipe().expect("pipe");
        let pipe_target = target(pipe.0.as_raw_fd()).expect("readlink pipe");
        Fixture {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            pipe,
            pipe_target,
            max_fds: std::env::var("BATON_FUZZ_MAX_FDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(MAX_FDS_PER_FRAME),
            sockets: OnceLock::new(),
        }
    })
}

fn target(fd: RawFd) -> Option<String> {
    Some(
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .ok()?
            .display()
            .to_string(),
    )
}

/// What each open fd is. (libFuzzer opens files and symbolizer pipes of its own as it goes, so the check below
/// looks only at sockets and at copies of our pipe.)
fn open_fds() -> Vec<String> {
    let numbers: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    numbers.into_iter().filter_map(target).collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let f = fixture();
    let chunk = 1 + (data[0] as usize * data[0] as usize) / 16;
    let first_fds = data[1] as usize % (f.max_fds + 1);
    let every_third = data[1] & 0x80 != 0;
    let stream = &data[2..];

    let (writer, reader) = StdUnixStream::pair().expect("socketpair");
    writer.set_nonblocking(true).expect("nonblocking");
    let attach: Vec<RawFd> = vec![f.pipe.0.as_raw_fd(); first_fds.max(1)];
    for (i, part) in stream.chunks(chunk).enumerate() {
        let fds: &[RawFd] = match i {
            0 => &attach[..first_fds],
            _ if every_third && i % 3 == 1 => &attach[..1],
            _ => &[],
        };
        let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        // A full socket buffer (many tiny writes) ends the stream early: the reader gets what fit, then EOF.
        match sendmsg::<()>(
            writer.as_raw_fd(),
            &[IoSlice::new(part)],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) if n == part.len() => {}
            _ => break,
        }
    }
    drop(writer);

    reader.set_nonblocking(true).expect("nonblocking");
    f.rt.block_on(async {
        let stream = tokio::net::UnixStream::from_std(reader).expect("register");
        let mut conn = Conn::new(stream).expect("a socketpair peer has our uid");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok((msg, fds)) = conn.recv(deadline).await {
            assert_eq!(fds.len(), msg.fd_count(), "{} handed {} fds", msg.name(), fds.len());
        }
    });

    let open = open_fds();
    let copies = open.iter().filter(|t| **t == f.pipe_target).count();
    assert_eq!(copies, 2, "received fds left open: {open:?}");
    let sockets = open.iter().filter(|t| t.starts_with("socket:")).count();
    let baseline = *f.sockets.get_or_init(|| sockets);
    assert_eq!(sockets, baseline, "sockets left open: {open:?}");
});
