//! `grpcserver`: the gRPC upstream of the bench. One thread, one poll(2) loop (like a one-worker server), plain
//! HTTP/2 with prior knowledge (h2c), one method.
//!
//! ```text
//! grpcserver --listen 127.0.0.1:PORT [--max-streams 1000]
//! ```
//!
//! `POST /helloworld.Greeter/SayHello` with one `HelloRequest { name }` answers `:status 200`,
//! `content-type: application/grpc`, one `HelloReply { message: "Hello " + name }`, and the trailers
//! `grpc-status: 0`. It is strict where a real server is, so that a proxy that mangles a call shows up as a failed
//! call at the client: a content-type other than `application/grpc[+…]` gets HTTP 415; a method other than POST, a
//! path other than that one, a request without `te: trailers` (gRPC servers in C++ and Java refuse those too), a
//! body that is not exactly one uncompressed `HelloRequest` get a trailers-only answer with a non-zero
//! `grpc-status` and a `grpc-message` saying why. The first few of those are logged on stderr.
//!
//! HTTP/2 as a server needs it: SETTINGS (MAX_CONCURRENT_STREAMS), PING answered, flow control both ways (the
//! receive windows given back as data arrives, DATA sent only within the client's windows), HEADERS with
//! CONTINUATION, padding, RST_STREAM, HPACK with Huffman-coded strings. A protocol error ends the connection
//! with GOAWAY. Runs until killed.
use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

use baton_bench_tools::grpc;
use baton_bench_tools::h2::{self, poll, Head, Io};
use baton_bench_tools::hpack::{Decoder, Encoder};

fn usage(msg: &str) -> ! {
    eprintln!("grpcserver: {msg}");
    eprintln!("usage: grpcserver --listen 127.0.0.1:PORT [--max-streams 1000]");
    std::process::exit(2);
}

/// A request being received.
#[derive(Default)]
struct Req {
    post: bool,
    path: Vec<u8>,
    content_type: Option<Vec<u8>>,
    te_trailers: bool,
    body: Vec<u8>,
    /// Received on this stream and not yet given back.
    unacked: u32,
    /// What we may send on it (its initial window plus the client's WINDOW_UPDATEs).
    window: i64,
}

/// A response whose message waits for flow-control window; its trailers follow it.
struct Out {
    data: Vec<u8>,
    sent: usize,
    window: i64,
}

/// Calls refused so far (the first [`LOGGED`] are logged).
#[derive(Default)]
struct Counts {
    rejected: u64,
}

struct State {
    preface: bool,
    dec: Decoder,
    enc: Encoder,
    streams: HashMap<u32, Req>,
    sending: HashMap<u32, Out>,
    blocked: VecDeque<u32>,
    /// The highest stream the client opened.
    last_stream: u32,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE and our connection send window.
    peer_initial: i64,
    window: i64,
    peer_max_frame: usize,
    recv_unacked: u32,
    /// A header block still expecting CONTINUATION frames: stream, END_STREAM, the block so far.
    blocks: h2::HeaderBlocks,
    block: Vec<u8>,
}

/// Rejections logged on stderr at most.
const LOGGED: u64 = 5;
/// Receive window given back once this much has been consumed.
const CREDIT: u32 = 16 * 1024;

impl State {
    fn new() -> State {
        State {
            preface: false,
            dec: Decoder::default(),
            enc: Encoder::default(),
            streams: HashMap::new(),
            sending: HashMap::new(),
            blocked: VecDeque::new(),
            last_stream: 0,
            peer_initial: h2::DEFAULT_WINDOW,
            window: h2::DEFAULT_WINDOW,
            peer_max_frame: h2::MAX_FRAME,
            recv_unacked: 0,
            blocks: h2::HeaderBlocks::default(),
            block: Vec::with_capacity(256),
        }
    }

    fn frame(&mut self, head: Head, payload: &[u8], out: &mut Vec<u8>, counts: &mut Counts) -> Result<(), String> {
        self.blocks.check(&head)?;
        match head.kind {
            h2::DATA => self.data(head, payload, out, counts),
            h2::HEADERS if head.stream == 0 || head.stream.is_multiple_of(2) => {
                Err(format!("HEADERS on stream {}", head.stream))
            }
            h2::HEADERS | h2::CONTINUATION => match self.blocks.feed(&head, payload)? {
                Some((stream, end_stream, block)) => self.headers(stream, end_stream, &block, out, counts),
                None => Ok(()),
            },
            h2::SETTINGS => {
                if head.flags & h2::ACK != 0 {
                    return Ok(());
                }
                for (id, v) in h2::settings(payload)? {
                    match id {
                        h2::SETTINGS_HEADER_TABLE_SIZE => self.enc.set_limit(v as usize),
                        h2::SETTINGS_INITIAL_WINDOW_SIZE => {
                            if i64::from(v) > h2::MAX_WINDOW {
                                return Err("initial window above 2^31-1".into());
                            }
                            let delta = i64::from(v) - self.peer_initial;
                            self.peer_initial = i64::from(v);
                            for r in self.streams.values_mut() {
                                r.window += delta;
                            }
                            for o in self.sending.values_mut() {
                                o.window += delta;
                            }
                        }
                        h2::SETTINGS_MAX_FRAME_SIZE => self.peer_max_frame = (v as usize).clamp(h2::MAX_FRAME, 1 << 24),
                        _ => {}
                    }
                }
                h2::put_frame(out, h2::SETTINGS, h2::ACK, 0, &[]);
                self.unblock(out);
                Ok(())
            }
            h2::PING => h2::answer_ping(&head, payload, out),
            h2::WINDOW_UPDATE => {
                let inc = i64::from(h2::u32_at(payload, 0)? & 0x7fff_ffff);
                if head.stream == 0 {
                    self.window += inc;
                    self.unblock(out);
                } else if let Some(o) = self.sending.get_mut(&head.stream) {
                    o.window += inc;
                    self.unblock(out);
                } else if let Some(r) = self.streams.get_mut(&head.stream) {
                    r.window += inc;
                }
                Ok(())
            }
            h2::RST_STREAM => {
                self.streams.remove(&head.stream);
                self.sending.remove(&head.stream);
                Ok(())
            }
            h2::PUSH_PROMISE => Err("PUSH_PROMISE from a client".into()),
            // GOAWAY: the client closes when it is done; PRIORITY and unknown frames: nothing to do.
            _ => Ok(()),
        }
    }

    fn data(&mut self, head: Head, payload: &[u8], out: &mut Vec<u8>, counts: &mut Counts) -> Result<(), String> {
        let data = h2::strip(&head, payload)?;
        // Flow control counts the whole payload, padding included.
        self.recv_unacked += head.len as u32;
        if self.recv_unacked >= CREDIT {
            h2::put_window_update(out, 0, self.recv_unacked);
            self.recv_unacked = 0;
        }
        let end_stream = head.flags & h2::END_STREAM != 0;
        let Some(r) = self.streams.get_mut(&head.stream) else {
            return Ok(()); // a stream we reset or answered already
        };
        r.body.extend_from_slice(data);
        r.unacked += head.len as u32;
        if end_stream {
            self.respond(head.stream, out, counts);
        } else if r.unacked >= CREDIT {
            h2::put_window_update(out, head.stream, r.unacked);
            r.unacked = 0;
        }
        Ok(())
    }

    fn headers(
        &mut self,
        stream: u32,
        end_stream: bool,
        block: &[u8],
        out: &mut Vec<u8>,
        counts: &mut Counts,
    ) -> Result<(), String> {
        let known = self.streams.contains_key(&stream);
        if !known && stream <= self.last_stream {
            // Trailers of a stream already answered or reset: decoded all the same, for the table.
            return self.dec.decode(block, |_, _| {});
        }
        if !known {
            self.last_stream = stream;
            self.streams.insert(
                stream,
                Req {
                    window: self.peer_initial,
                    ..Req::default()
                },
            );
        }
        let r = self.streams.get_mut(&stream).ok_or("stream vanished")?;
        let trailers = known;
        self.dec.decode(block, |n, v| {
            if trailers {
                return;
            }
            match n {
                b":method" => r.post = v == b"POST",
                b":path" => r.path = v.to_vec(),
                b"content-type" => r.content_type = Some(v.to_vec()),
                b"te" => r.te_trailers = v == b"trailers",
                _ => {}
            }
        })?;
        if end_stream {
            self.respond(stream, out, counts);
        }
        Ok(())
    }

    /// The request on `stream` is complete: answer it.
    fn respond(&mut self, stream: u32, out: &mut Vec<u8>, counts: &mut Counts) {
        let Some(r) = self.streams.remove(&stream) else { return };
        let verdict = if !r.content_type.as_deref().is_some_and(grpc::is_grpc_content_type) {
            Err((
                0,
                format!(
                    "content-type {:?}",
                    r.content_type.as_deref().map(String::from_utf8_lossy)
                ),
            ))
        } else if !r.post {
            Err((12, "method other than POST".to_string()))
        } else if r.path != grpc::PATH.as_bytes() {
            Err((12, format!("unknown method {}", String::from_utf8_lossy(&r.path))))
        } else if !r.te_trailers {
            Err((3, "te: trailers missing".to_string()))
        } else {
            grpc::single_message(&r.body)
                .and_then(grpc::string_field1)
                .map_err(|e| (3, format!("request message: {e}")))
        };
        let name = match verdict {
            Ok(name) => name.to_vec(),
            Err((code, why)) => {
                counts.rejected += 1;
                if counts.rejected <= LOGGED {
                    eprintln!("grpcserver: stream {stream} rejected: {why}");
                }
                self.block.clear();
                self.enc.begin(&mut self.block);
                if code == 0 {
                    self.enc.field(&mut self.block, b":status", b"415", true);
                } else {
                    self.enc.field(&mut self.block, b":status", b"200", true);
                    self.enc
                        .field(&mut self.block, b"content-type", grpc::CONTENT_TYPE.as_bytes(), true);
                    self.enc
                        .field(&mut self.block, b"grpc-status", code.to_string().as_bytes(), true);
                    self.enc.field(&mut self.block, b"grpc-message", why.as_bytes(), false);
                }
                h2::put_headers(out, stream, true, &self.block, self.peer_max_frame);
                return;
            }
        };
        self.block.clear();
        self.enc.begin(&mut self.block);
        self.enc.field(&mut self.block, b":status", b"200", true);
        self.enc
            .field(&mut self.block, b"content-type", grpc::CONTENT_TYPE.as_bytes(), true);
        h2::put_headers(out, stream, false, &self.block, self.peer_max_frame);
        let o = Out {
            data: grpc::reply(&name),
            sent: 0,
            window: r.window,
        };
        self.sending.insert(stream, o);
        if !self.send(stream, out) {
            self.blocked.push_back(stream);
        }
    }

    /// Sends what the windows allow of `stream`'s message, and its trailers once it is all out. True when done.
    fn send(&mut self, stream: u32, out: &mut Vec<u8>) -> bool {
        let Some(o) = self.sending.get_mut(&stream) else {
            return true;
        };
        while o.sent < o.data.len() {
            let n = (o.data.len() - o.sent)
                .min(self.window.max(0) as usize)
                .min(o.window.max(0) as usize)
                .min(self.peer_max_frame);
            if n == 0 {
                return false;
            }
            h2::put_frame(out, h2::DATA, 0, stream, &o.data[o.sent..o.sent + n]);
            o.sent += n;
            self.window -= n as i64;
            o.window -= n as i64;
        }
        self.sending.remove(&stream);
        self.block.clear();
        self.enc.begin(&mut self.block);
        self.enc.field(&mut self.block, b"grpc-status", b"0", true);
        h2::put_headers(out, stream, true, &self.block, self.peer_max_frame);
        true
    }

    fn unblock(&mut self, out: &mut Vec<u8>) {
        for _ in 0..self.blocked.len() {
            let Some(s) = self.blocked.pop_front() else { break };
            if !self.sending.contains_key(&s) {
                continue;
            }
            if !self.send(s, out) {
                self.blocked.push_back(s);
            }
        }
    }
}

struct Conn {
    io: Io,
    st: State,
    peer: SocketAddr,
}

/// Reads and handles what arrived. Err ends the connection (after a GOAWAY for a protocol error).
fn serve(c: &mut Conn, counts: &mut Counts) -> Result<bool, String> {
    let open = match c.io.fill() {
        Ok(open) => open,
        // A client that resets instead of closing (load generators at their end, proxies dropping idle
        // upstream connections): the same as a close, unless it left calls unanswered.
        Err(e) if e.kind() == ErrorKind::ConnectionReset && c.st.streams.is_empty() => false,
        Err(e) => return Err(format!("read: {e}")),
    };
    if !c.st.preface {
        match c.io.expect(h2::PREFACE) {
            None => return Ok(open),
            Some(false) => return Err("not an HTTP/2 connection preface".into()),
            Some(true) => c.st.preface = true,
        }
    }
    loop {
        let next = match c.io.next_frame(h2::MAX_FRAME) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                h2::put_goaway(&mut c.io.wbuf, c.st.last_stream, h2::PROTOCOL_ERROR);
                return Err(e);
            }
        };
        let (head, range) = next;
        if let Err(e) = c.st.frame(head, &c.io.rbuf[range], &mut c.io.wbuf, counts) {
            h2::put_goaway(&mut c.io.wbuf, c.st.last_stream, h2::PROTOCOL_ERROR);
            return Err(e);
        }
    }
    Ok(open)
}

fn main() {
    let mut listen: Option<SocketAddr> = None;
    let mut max_streams: u32 = 1000;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let val = it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--listen" => {
                listen = Some(
                    val.parse()
                        .unwrap_or_else(|_| usage(&format!("--listen: bad value {val}"))),
                )
            }
            "--max-streams" => {
                max_streams = val
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--max-streams: bad value {val}")))
            }
            _ => usage(&format!("unknown argument {flag}")),
        }
    }
    let Some(listen) = listen.filter(|a| a.ip().is_loopback()) else {
        usage("--listen must be a loopback ip:port");
    };
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("grpcserver: bind {listen}: {e}");
        std::process::exit(1);
    });
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("grpcserver: {e}");
        std::process::exit(1);
    }
    let mut conns: Vec<Conn> = Vec::new();
    let mut counts = Counts::default();
    let mut fds: Vec<poll::PollFd> = Vec::new();
    loop {
        fds.clear();
        fds.push(poll::PollFd::new(listener.as_raw_fd(), false));
        fds.extend(conns.iter().map(|c| poll::PollFd::new(c.io.fd(), c.io.wants_write())));
        if let Err(e) = poll::wait(&mut fds, -1) {
            eprintln!("grpcserver: poll: {e}");
            std::process::exit(1);
        }
        let mut i = conns.len();
        while i > 0 {
            i -= 1;
            if !fds[i + 1].ready() {
                continue;
            }
            let c = &mut conns[i];
            let result = serve(c, &mut counts);
            let flushed = c.io.flush();
            let end = match result {
                Err(e) => {
                    eprintln!("grpcserver: connection from {}: {e}", c.peer);
                    true
                }
                Ok(open) => !open || flushed.is_err(),
            };
            if end {
                conns.swap_remove(i);
            }
        }
        if fds[0].ready() {
            loop {
                match listener.accept() {
                    Ok((sock, peer)) => match Io::new(sock) {
                        Ok(mut io) => {
                            h2::put_settings(&mut io.wbuf, &[(h2::SETTINGS_MAX_CONCURRENT_STREAMS, max_streams)]);
                            let _ = io.flush();
                            conns.push(Conn {
                                io,
                                st: State::new(),
                                peer,
                            });
                        }
                        Err(e) => eprintln!("grpcserver: setting up a connection from {peer}: {e}"),
                    },
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        // EMFILE and the like: the connection stays queued; try again at the next wake-up.
                        eprintln!("grpcserver: accept: {e}");
                        break;
                    }
                }
            }
        }
    }
}
