//! `grpcload`: a gRPC unary load client that checks every answer. One thread, one poll(2) loop over all its
//! connections (like `h2load -t1`), plain HTTP/2 with prior knowledge (h2c).
//!
//! ```text
//! grpcload --target 127.0.0.1:PORT [--conns 16] [--streams 16] [--seconds 5] [--warmup 1] [--timeout-ms 5000]
//! grpcload --target 127.0.0.1:PORT --calls N [--conns 2] [--streams 8] [--timeout-ms 5000]
//! ```
//!
//! Keeps `--streams` calls in flight on each of `--conns` connections (fewer if the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS says so): `POST /helloworld.Greeter/SayHello`, `content-type:
//! application/grpc`, `te: trailers`, one `HelloRequest { name: "baton" }`. A call succeeds when its answer is
//! `:status 200`, a gRPC content-type, exactly the message `HelloReply { message: "Hello baton" }`, and trailers
//! with `grpc-status: 0`. Anything else is a failed call, counted by kind: `http_status` (not 200),
//! `bad_response` (not a gRPC content-type, or no message or another one), `grpc_status` (a non-zero status, also
//! counted per code), `no_status` (the stream ended without a grpc-status), `reset` (RST_STREAM), `refused`
//! (REFUSED_STREAM, or above the last stream of a GOAWAY), `connection` (the connection failed or closed with
//! the call in flight), `timeout` (no complete answer within `--timeout-ms`; the stream is cancelled), `connect`
//! (a connection could not be opened: one failed call per attempt). A connection that failed or was told to go
//! away is reopened; nothing is retried.
//!
//! Duration mode: `--warmup` seconds first, then `--seconds` measured: calls that end in the measured window
//! count; calls in flight at its end are dropped. Count mode (`--calls N`): exactly N calls, all counted; exit 1
//! unless all N succeed (the harness's sanity check).
//!
//! Prints one JSON object: `{"calls":…,"ok":…,"failed":…,"calls_per_s":…,"mean_ms":…,"p50_ms":…,"p90_ms":…,
//! "p99_ms":…,"p999_ms":…,"max_ms":…,"failures":{kind:count,…},"grpc_status":{code:count,…},"first_failure":…,
//! "connects":…,"conns":…,"streams":…,"seconds":…}`, `calls_per_s` counting the successful calls only, the
//! latencies (issue to trailers) those of the successful calls. Exit 2 for bad arguments; in duration mode, 1
//! when not a single call succeeded.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use baton_bench_tools::args::Flags;
use baton_bench_tools::grpc;
use baton_bench_tools::h2::{self, poll, Head, Io};
use baton_bench_tools::hpack::{Decoder, Encoder};

const KINDS: [&str; 9] = [
    "http_status",
    "bad_response",
    "grpc_status",
    "no_status",
    "reset",
    "refused",
    "connection",
    "timeout",
    "connect",
];
const HTTP_STATUS: usize = 0;
const BAD_RESPONSE: usize = 1;
const GRPC_STATUS: usize = 2;
const NO_STATUS: usize = 3;
const RESET: usize = 4;
const REFUSED: usize = 5;
const CONNECTION: usize = 6;
const TIMEOUT: usize = 7;
const CONNECT: usize = 8;

const NAME: &[u8] = b"baton";
/// Receive window given back once this much has been consumed.
const CREDIT: u32 = 16 * 1024;
/// A response body larger than this is not the reply: kept no further.
const MAX_BODY: usize = 64 * 1024;
/// Between attempts to reopen a connection that could not be opened.
const RECONNECT: Duration = Duration::from_millis(100);

struct Args {
    target: SocketAddr,
    conns: usize,
    streams: usize,
    seconds: f64,
    warmup: f64,
    calls: Option<u64>,
    timeout: Duration,
}

fn parse_args() -> Args {
    let mut a = Args {
        target: SocketAddr::from(([127, 0, 0, 1], 0)),
        conns: 16,
        streams: 16,
        seconds: 5.0,
        warmup: 1.0,
        calls: None,
        timeout: Duration::from_secs(5),
    };
    let mut f = Flags::from_env(
        "grpcload",
        "grpcload --target 127.0.0.1:PORT [--conns 16] [--streams 16] [--seconds 5] [--warmup 1] \
         [--calls N] [--timeout-ms 5000]",
    );
    while let Some((flag, val)) = f.next_pair() {
        match flag.as_str() {
            "--target" => a.target = f.parse(&flag, &val),
            "--conns" => a.conns = f.parse(&flag, &val),
            "--streams" => a.streams = f.parse(&flag, &val),
            "--seconds" => a.seconds = f.parse(&flag, &val),
            "--warmup" => a.warmup = f.parse(&flag, &val),
            "--calls" => a.calls = Some(f.parse(&flag, &val)),
            "--timeout-ms" => a.timeout = Duration::from_millis(f.parse(&flag, &val)),
            _ => f.fail(&format!("unknown argument {flag}")),
        }
    }
    if !a.target.ip().is_loopback() || a.target.port() == 0 {
        f.fail("--target must be a loopback ip:port");
    }
    if a.conns == 0 || a.streams == 0 || a.timeout.is_zero() || a.calls == Some(0) {
        f.fail("--conns, --streams, --timeout-ms and --calls must be positive");
    }
    if !(a.seconds > 0.0 && a.seconds.is_finite() && a.warmup >= 0.0 && a.warmup.is_finite()) {
        f.fail("--seconds must be positive and --warmup not negative");
    }
    a
}

/// One call in flight.
struct Call {
    start: Instant,
    status: u16,
    grpc_content_type: bool,
    grpc_status: Option<u32>,
    grpc_message: String,
    /// Response HEADERS blocks seen: 1 after the headers, 2 after the trailers.
    blocks: u8,
    body: Vec<u8>,
    unacked: u32,
    /// What we may still send on it, and how much of the request message went.
    window: i64,
    sent: usize,
}

#[derive(Default)]
struct Stats {
    ok: u64,
    failed: [u64; KINDS.len()],
    grpc_codes: BTreeMap<u32, u64>,
    first_failure: Option<String>,
    latency_us: Vec<u32>,
    connects: u64,
}

/// What gets counted: calls that end within the measured window.
struct Recorder {
    from: Instant,
    until: Option<Instant>,
    stats: Stats,
    /// Calls that ended (counted or not), for count mode.
    ended: u64,
}

impl Recorder {
    fn counts(&self, now: Instant) -> bool {
        now >= self.from && self.until.is_none_or(|u| now < u)
    }

    fn ok(&mut self, start: Instant, now: Instant) {
        self.ended += 1;
        if self.counts(now) {
            self.stats.ok += 1;
            let us = now.duration_since(start).as_micros();
            self.stats.latency_us.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }

    fn fail(&mut self, kind: usize, now: Instant, why: impl FnOnce() -> String) {
        self.ended += 1;
        if self.counts(now) {
            self.stats.failed[kind] += 1;
            if self.stats.first_failure.is_none() {
                self.stats.first_failure = Some(format!("{}: {}", KINDS[kind], why()));
            }
        }
    }
}

/// One connection and its calls.
struct Conn {
    io: Option<Io>,
    /// The server's SETTINGS arrived (calls start only then, with its limits known).
    ready: bool,
    dec: Decoder,
    enc: Encoder,
    next_id: u32,
    calls: HashMap<u32, Call>,
    peer_initial: i64,
    window: i64,
    peer_max_streams: usize,
    peer_max_frame: usize,
    going_away: bool,
    blocked: VecDeque<u32>,
    recv_unacked: u32,
    blocks: h2::HeaderBlocks,
    retry_at: Instant,
    block: Vec<u8>,
}

impl Conn {
    fn new(now: Instant) -> Conn {
        Conn {
            io: None,
            ready: false,
            dec: Decoder::default(),
            enc: Encoder::default(),
            next_id: 1,
            calls: HashMap::new(),
            peer_initial: h2::DEFAULT_WINDOW,
            window: h2::DEFAULT_WINDOW,
            peer_max_streams: usize::MAX,
            peer_max_frame: h2::MAX_FRAME,
            going_away: false,
            blocked: VecDeque::new(),
            recv_unacked: 0,
            blocks: h2::HeaderBlocks::default(),
            retry_at: now,
            block: Vec::with_capacity(256),
        }
    }

    /// Opens the connection: preface and SETTINGS (no push). Counts a failed attempt as a failed call.
    fn open(&mut self, a: &Args, rec: &mut Recorder, now: Instant) {
        let result = TcpStream::connect_timeout(&a.target, a.timeout).and_then(Io::new);
        match result {
            Ok(mut io) => {
                io.wbuf.extend_from_slice(h2::PREFACE);
                h2::put_settings(&mut io.wbuf, &[(h2::SETTINGS_ENABLE_PUSH, 0)]);
                *self = Conn::new(now);
                self.io = Some(io);
                rec.stats.connects += 1;
            }
            Err(e) => {
                self.retry_at = now + RECONNECT;
                rec.fail(CONNECT, now, || format!("connecting to {}: {e}", a.target));
            }
        }
    }

    /// Ends the connection: every call in flight failed with `kind`.
    fn close(&mut self, kind: usize, why: &str, rec: &mut Recorder, now: Instant) {
        self.io = None;
        self.ready = false;
        self.retry_at = now;
        for (id, _) in self.calls.drain() {
            rec.fail(kind, now, || format!("stream {id}: {why}"));
        }
    }

    /// Room for one more call (the connection being open).
    fn room(&self, a: &Args) -> bool {
        self.ready
            && !self.going_away
            && self.next_id < (1 << 31)
            && self.calls.len() < a.streams.min(self.peer_max_streams)
    }

    /// Starts one call: HEADERS, then the message as far as the windows allow.
    fn start(&mut self, out: &mut Vec<u8>, authority: &[u8], request: &[u8], now: Instant) {
        let id = self.next_id;
        self.next_id += 2;
        self.block.clear();
        self.enc.begin(&mut self.block);
        for (n, v) in [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", grpc::PATH.as_bytes()),
            (b":authority", authority),
            (b"content-type", grpc::CONTENT_TYPE.as_bytes()),
            (b"te", b"trailers"),
            (b"user-agent", b"grpcload (baton bench)"),
        ] {
            self.enc.field(&mut self.block, n, v, true);
        }
        h2::put_headers(out, id, false, &self.block, self.peer_max_frame);
        self.calls.insert(
            id,
            Call {
                start: now,
                status: 0,
                grpc_content_type: false,
                grpc_status: None,
                grpc_message: String::new(),
                blocks: 0,
                body: Vec::new(),
                unacked: 0,
                window: self.peer_initial,
                sent: 0,
            },
        );
        if !self.send(out, id, request) {
            self.blocked.push_back(id);
        }
    }

    /// Sends what the windows allow of call `id`'s message, END_STREAM with its last byte. True when done.
    fn send(&mut self, out: &mut Vec<u8>, id: u32, request: &[u8]) -> bool {
        let Some(call) = self.calls.get_mut(&id) else {
            return true;
        };
        while call.sent < request.len() {
            let n = (request.len() - call.sent)
                .min(self.window.max(0) as usize)
                .min(call.window.max(0) as usize)
                .min(self.peer_max_frame);
            if n == 0 {
                return false;
            }
            let last = call.sent + n == request.len();
            let flags = if last { h2::END_STREAM } else { 0 };
            h2::put_frame(out, h2::DATA, flags, id, &request[call.sent..call.sent + n]);
            call.sent += n;
            self.window -= n as i64;
            call.window -= n as i64;
        }
        true
    }

    fn unblock(&mut self, out: &mut Vec<u8>, request: &[u8]) {
        for _ in 0..self.blocked.len() {
            let Some(id) = self.blocked.pop_front() else { break };
            if !self.send(out, id, request) {
                self.blocked.push_back(id);
            }
        }
    }

    /// Handles one frame. Err: a connection error (the caller closes the connection).
    fn frame(
        &mut self,
        head: Head,
        payload: &[u8],
        out: &mut Vec<u8>,
        ctx: &mut Ctx,
        now: Instant,
    ) -> Result<(), String> {
        self.blocks.check(&head)?;
        match head.kind {
            h2::DATA => {
                let data = h2::strip(&head, payload)?;
                self.recv_unacked += head.len as u32;
                if self.recv_unacked >= CREDIT {
                    h2::put_window_update(out, 0, self.recv_unacked);
                    self.recv_unacked = 0;
                }
                let end = head.flags & h2::END_STREAM != 0;
                if let Some(call) = self.calls.get_mut(&head.stream) {
                    if call.body.len() < MAX_BODY {
                        call.body.extend_from_slice(data);
                    }
                    call.unacked += head.len as u32;
                    if end {
                        self.finish(head.stream, ctx, now);
                    } else if call.unacked >= CREDIT {
                        h2::put_window_update(out, head.stream, call.unacked);
                        call.unacked = 0;
                    }
                }
                Ok(())
            }
            h2::HEADERS | h2::CONTINUATION => match self.blocks.feed(&head, payload)? {
                Some((stream, end, block)) => self.headers(stream, end, &block, ctx, now),
                None => Ok(()),
            },
            h2::SETTINGS => {
                if head.flags & h2::ACK != 0 {
                    return Ok(());
                }
                for (id, v) in h2::settings(payload)? {
                    match id {
                        h2::SETTINGS_HEADER_TABLE_SIZE => self.enc.set_limit(v as usize),
                        h2::SETTINGS_MAX_CONCURRENT_STREAMS => self.peer_max_streams = v as usize,
                        h2::SETTINGS_INITIAL_WINDOW_SIZE => {
                            if i64::from(v) > h2::MAX_WINDOW {
                                return Err("initial window above 2^31-1".into());
                            }
                            let delta = i64::from(v) - self.peer_initial;
                            self.peer_initial = i64::from(v);
                            for c in self.calls.values_mut() {
                                c.window += delta;
                            }
                        }
                        h2::SETTINGS_MAX_FRAME_SIZE => self.peer_max_frame = (v as usize).clamp(h2::MAX_FRAME, 1 << 24),
                        _ => {}
                    }
                }
                h2::put_frame(out, h2::SETTINGS, h2::ACK, 0, &[]);
                self.ready = true;
                self.unblock(out, &ctx.request);
                Ok(())
            }
            h2::PING => h2::answer_ping(&head, payload, out),
            h2::WINDOW_UPDATE => {
                let inc = i64::from(h2::u32_at(payload, 0)? & 0x7fff_ffff);
                if head.stream == 0 {
                    self.window += inc;
                } else if let Some(c) = self.calls.get_mut(&head.stream) {
                    c.window += inc;
                }
                self.unblock(out, &ctx.request);
                Ok(())
            }
            h2::RST_STREAM => {
                let code = h2::u32_at(payload, 0)?;
                if self.calls.remove(&head.stream).is_some() {
                    let kind = if code == h2::REFUSED_STREAM { REFUSED } else { RESET };
                    ctx.rec
                        .fail(kind, now, || format!("stream {} reset, code {code}", head.stream));
                }
                Ok(())
            }
            h2::GOAWAY => {
                let last = h2::u32_at(payload, 0)? & 0x7fff_ffff;
                let code = h2::u32_at(payload, 4)?;
                self.going_away = true;
                let refused: Vec<u32> = self.calls.keys().copied().filter(|&id| id > last).collect();
                for id in refused {
                    self.calls.remove(&id);
                    ctx.rec.fail(REFUSED, now, || {
                        format!("stream {id} above the last stream {last} of a GOAWAY (code {code})")
                    });
                }
                Ok(())
            }
            h2::PUSH_PROMISE => Err("PUSH_PROMISE although push is disabled".into()),
            _ => Ok(()),
        }
    }

    fn headers(&mut self, stream: u32, end: bool, block: &[u8], ctx: &mut Ctx, now: Instant) -> Result<(), String> {
        let Some(call) = self.calls.get_mut(&stream) else {
            // A call that timed out or failed: decoded all the same, for the table.
            return self.dec.decode(block, |_, _| {});
        };
        let first = call.blocks == 0;
        call.blocks += 1;
        self.dec.decode(block, |n, v| match n {
            b":status" if first => {
                call.status = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            }
            b"content-type" if first => call.grpc_content_type = grpc::is_grpc_content_type(v),
            b"grpc-status" => call.grpc_status = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()),
            b"grpc-message" => call.grpc_message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        })?;
        if (100..200).contains(&call.status) && first && !end {
            call.blocks = 0; // an interim response; the real one follows
            call.status = 0;
        } else if end {
            self.finish(stream, ctx, now);
        }
        Ok(())
    }

    /// The answer to call `stream` is complete: judge it.
    fn finish(&mut self, stream: u32, ctx: &mut Ctx, now: Instant) {
        let Some(c) = self.calls.remove(&stream) else { return };
        let rec = &mut ctx.rec;
        if c.status != 200 {
            rec.fail(HTTP_STATUS, now, || format!("HTTP status {}", c.status));
        } else if let Some(code) = c.grpc_status.filter(|&s| s != 0) {
            if rec.counts(now) {
                *rec.stats.grpc_codes.entry(code).or_default() += 1;
            }
            rec.fail(GRPC_STATUS, now, || {
                format!("grpc-status {code}, grpc-message {:?}", c.grpc_message)
            });
        } else if c.grpc_status.is_none() {
            rec.fail(NO_STATUS, now, || {
                format!(
                    "no grpc-status ({} header blocks, {} body bytes)",
                    c.blocks,
                    c.body.len()
                )
            });
        } else if !c.grpc_content_type {
            rec.fail(BAD_RESPONSE, now, || "content-type is not application/grpc".into());
        } else if c.body != ctx.reply {
            rec.fail(BAD_RESPONSE, now, || {
                format!("reply {:?}", String::from_utf8_lossy(&c.body))
            });
        } else {
            rec.ok(c.start, now);
        }
    }

    /// Fails calls in flight for longer than `timeout`, cancelling their streams.
    fn expire(&mut self, out: &mut Vec<u8>, timeout: Duration, rec: &mut Recorder, now: Instant) {
        let late: Vec<u32> = self
            .calls
            .iter()
            .filter(|(_, c)| now.duration_since(c.start) >= timeout)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            self.calls.remove(&id);
            h2::put_rst(out, id, h2::CANCEL);
            rec.fail(TIMEOUT, now, || {
                format!("stream {id}: no complete answer within {timeout:?}")
            });
        }
    }
}

/// What every connection shares.
struct Ctx {
    request: Vec<u8>,
    reply: Vec<u8>,
    rec: Recorder,
}

/// Reads and handles what arrived on `c` (open: its socket taken out of it meanwhile); Err(why) when the
/// connection is over.
fn serve(c: &mut Conn, io: &mut Io, ctx: &mut Ctx, now: Instant) -> Result<(), String> {
    let open = io.fill().map_err(|e| format!("read: {e}"))?;
    while let Some((head, range)) = io.next_frame(h2::MAX_FRAME)? {
        c.frame(head, &io.rbuf[range], &mut io.wbuf, ctx, now)?;
    }
    if !open {
        return Err("closed by the server".into());
    }
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

fn main() {
    let a = parse_args();
    let start = Instant::now();
    let count_mode = a.calls.is_some();
    let (from, until) = if count_mode {
        (start, None)
    } else {
        let from = start + Duration::from_secs_f64(a.warmup);
        (from, Some(from + Duration::from_secs_f64(a.seconds)))
    };
    let mut ctx = Ctx {
        request: grpc::request(NAME),
        reply: grpc::reply(NAME),
        rec: Recorder {
            from,
            until,
            stats: Stats::default(),
            ended: 0,
        },
    };
    let authority = a.target.to_string().into_bytes();
    let mut conns: Vec<Conn> = (0..a.conns).map(|_| Conn::new(start)).collect();
    let mut issued: u64 = 0;
    let mut fds: Vec<poll::PollFd> = Vec::with_capacity(a.conns);
    let mut last_progress = (start, 0u64);
    let mut next_expiry = start;
    loop {
        let now = Instant::now();
        if until.is_some_and(|u| now >= u) {
            break;
        }
        if let Some(n) = a.calls {
            if ctx.rec.ended >= n {
                break;
            }
            // Nothing ended for a whole timeout (no connection, say): the calls not made failed.
            if ctx.rec.ended != last_progress.1 {
                last_progress = (now, ctx.rec.ended);
            } else if now.duration_since(last_progress.0) > a.timeout + RECONNECT {
                for _ in ctx.rec.ended..n {
                    ctx.rec
                        .fail(TIMEOUT, now, || "no call could be made or completed".into());
                }
                break;
            }
        }
        for c in conns.iter_mut() {
            if c.io.is_none() && now >= c.retry_at && a.calls.is_none_or(|n| issued < n) {
                c.open(&a, &mut ctx.rec, now);
            }
            if let Some(mut io) = c.io.take() {
                while c.room(&a) && a.calls.is_none_or(|n| issued < n) {
                    c.start(&mut io.wbuf, &authority, &ctx.request, now);
                    issued += 1;
                }
                match io.flush() {
                    Ok(()) => c.io = Some(io),
                    Err(e) => c.close(CONNECTION, &format!("write: {e}"), &mut ctx.rec, now),
                }
            }
            // A connection told to go away is reopened once its last call is done.
            if c.going_away && c.calls.is_empty() && c.io.is_some() {
                c.io = None;
                c.retry_at = now;
            }
        }
        if now >= next_expiry {
            for c in conns.iter_mut() {
                if let Some(mut io) = c.io.take() {
                    c.expire(&mut io.wbuf, a.timeout, &mut ctx.rec, now);
                    c.io = Some(io);
                }
            }
            next_expiry = now + Duration::from_millis(50);
        }
        fds.clear();
        let mut which = Vec::with_capacity(conns.len());
        for (i, c) in conns.iter().enumerate() {
            if let Some(io) = &c.io {
                fds.push(poll::PollFd::new(io.fd(), io.wants_write()));
                which.push(i);
            }
        }
        let mut wait = next_expiry.saturating_duration_since(now);
        if let Some(u) = until {
            wait = wait.min(u.saturating_duration_since(now));
        }
        let wait_ms = (wait.as_micros().div_ceil(1000) as i32).max(1);
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if let Err(e) = poll::wait(&mut fds, wait_ms) {
            eprintln!("grpcload: poll: {e}");
            std::process::exit(1);
        }
        let now = Instant::now();
        for (fd, &i) in fds.iter().zip(&which) {
            if !fd.ready() {
                continue;
            }
            let c = &mut conns[i];
            let Some(mut io) = c.io.take() else { continue };
            match serve(c, &mut io, &mut ctx, now) {
                Ok(()) => c.io = Some(io),
                Err(why) => c.close(CONNECTION, &why, &mut ctx.rec, now),
            }
        }
    }
    let end = Instant::now();
    let seconds = match until {
        Some(u) => u.min(end).duration_since(from).as_secs_f64(),
        None => end.duration_since(start).as_secs_f64(),
    };
    let st = &mut ctx.rec.stats;
    st.latency_us.sort_unstable();
    let lat = &st.latency_us;
    let failed: u64 = st.failed.iter().sum();
    let mean_ms = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&x| u64::from(x)).sum::<u64>() as f64 / lat.len() as f64 / 1000.0
    };
    let mut failures = String::new();
    for (i, (k, v)) in KINDS.iter().zip(st.failed).enumerate() {
        let _ = write!(failures, "{}\"{k}\":{v}", if i > 0 { "," } else { "" });
    }
    let mut codes = String::new();
    for (i, (k, v)) in st.grpc_codes.iter().enumerate() {
        let _ = write!(codes, "{}\"{k}\":{v}", if i > 0 { "," } else { "" });
    }
    let first = match &st.first_failure {
        Some(f) => format!("\"{}\"", f.replace('\\', "\\\\").replace('"', "\\\"")),
        None => "null".into(),
    };
    println!(
        "{{\"calls\":{},\"ok\":{},\"failed\":{failed},\"calls_per_s\":{:.1},\"mean_ms\":{mean_ms:.4},\
         \"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\
         \"failures\":{{{failures}}},\"grpc_status\":{{{codes}}},\"first_failure\":{first},\"connects\":{},\
         \"conns\":{},\"streams\":{},\"seconds\":{seconds:.3}}}",
        st.ok + failed,
        st.ok,
        st.ok as f64 / seconds,
        percentile(lat, 50.0),
        percentile(lat, 90.0),
        percentile(lat, 99.0),
        percentile(lat, 99.9),
        lat.last().map_or(0.0, |&x| f64::from(x) / 1000.0),
        st.connects,
        a.conns,
        a.streams,
    );
    let broken = match a.calls {
        Some(n) => st.ok != n,
        None => st.ok == 0,
    };
    if broken {
        if let Some(f) = &st.first_failure {
            eprintln!(
                "grpcload: {} of {} calls failed; the first: {f}",
                failed,
                st.ok + failed
            );
        } else {
            eprintln!("grpcload: no call succeeded");
        }
        std::process::exit(1);
    }
}
