//! `fixedrate`: an open-loop HTTP/1.1 load client: requests on a fixed schedule, latency measured from the time
//! each request was due, so that a stall of the server counts in full (no coordinated omission).
//!
//! ```text
//! fixedrate --target 127.0.0.1:PORT --rate REQ_PER_S [--conns 64] [--seconds 2] [--warmup 0.5]
//!           [--timeout-ms 2000] [--path /]
//! ```
//!
//! Opens `--conns` keep-alive connections, then for `--warmup` + `--seconds` schedules request k at
//! `start + k / rate` on connection `k mod conns` (each connection one request every `conns / rate` seconds,
//! the connections staggered evenly). A connection carries one request at a time (no pipelining): a request whose
//! time comes while the one before it on its connection is still out waits for it and is sent right after; its
//! latency still counts from its due time, as do the latencies of every request queued behind a slow one. One
//! thread, one ppoll(2) loop, timer slack 1 ns (wake-ups on time to a few microseconds).
//!
//! Counted: the requests due in the measured window (after the warm-up). Latency = the end of the whole response
//! minus the due time. `achieved_rps` = responses completed within the measured window / its length: below the
//! asked rate when the server cannot keep up (then latencies grow with the queue). After the schedule ends the
//! client waits up to `--timeout-ms` for what is still queued or out; a request of the window still unanswered
//! then is `unfinished`, and counts in the percentiles with the time it had waited (a lower bound).
//!
//! No retry: a request that fails (write error, reset, EOF, a malformed response, a status other than 2xx, no
//! answer within `--timeout-ms`) counts as an error by kind, and its connection is reopened; so is a connection
//! the server closes (`server_closes`).
//!
//! Prints one JSON object: `{"asked_rps":…,"achieved_rps":…,"requests":…,"ok":…,"unfinished":…,"errors":{…},
//! "p50_us":…,"p90_us":…,"p99_us":…,"p999_us":…,"max_us":…,"mean_us":…,"send_lag_p99_us":…,
//! "responses_total":…,"server_closes":…,"conns":…,"seconds":…}`; `send_lag_p99_us` is how late the client
//! itself wrote the requests that found their connection free (its own timing error), `responses_total` counts
//! every response of the run, warm-up included (for CPU per request). Exit 1 when the connections cannot be
//! opened or not one request succeeded, 2 for bad arguments. Only loopback targets.
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use baton_bench_tools::args::Flags;
use baton_bench_tools::h2::poll::{self, PollFd, POLLOUT};
use baton_bench_tools::http1::{self, Response};

const KINDS: [&str; 7] = ["connect", "write", "reset", "eof", "timeout", "status", "bad_response"];
const CONNECT: usize = 0;
const WRITE: usize = 1;
const RESET: usize = 2;
const EOF: usize = 3;
const TIMEOUT: usize = 4;
const STATUS: usize = 5;
const BAD: usize = 6;

struct Args {
    target: SocketAddr,
    rate: f64,
    conns: usize,
    seconds: f64,
    warmup: f64,
    timeout: Duration,
    path: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        target: SocketAddr::from(([127, 0, 0, 1], 0)),
        rate: 0.0,
        conns: 64,
        seconds: 2.0,
        warmup: 0.5,
        timeout: Duration::from_secs(2),
        path: "/".into(),
    };
    let mut f = Flags::from_env(
        "fixedrate",
        "fixedrate --target 127.0.0.1:PORT --rate REQ_PER_S [--conns 64] [--seconds 2] [--warmup 0.5] \
         [--timeout-ms 2000] [--path /]",
    );
    while let Some((flag, val)) = f.next_pair() {
        match flag.as_str() {
            "--target" => a.target = f.parse(&flag, &val),
            "--rate" => a.rate = f.parse(&flag, &val),
            "--conns" => a.conns = f.parse(&flag, &val),
            "--seconds" => a.seconds = f.parse(&flag, &val),
            "--warmup" => a.warmup = f.parse(&flag, &val),
            "--timeout-ms" => a.timeout = Duration::from_millis(f.parse(&flag, &val)),
            "--path" => a.path = val,
            _ => f.fail(&format!("unknown argument {flag}")),
        }
    }
    if !a.target.ip().is_loopback() || a.target.port() == 0 {
        f.fail("--target must be a loopback ip:port");
    }
    if !(a.rate > 0.0 && a.rate.is_finite()) || a.conns == 0 || a.timeout.is_zero() {
        f.fail("--rate, --conns and --timeout-ms must be positive");
    }
    if !(a.seconds > 0.0 && a.seconds.is_finite() && a.warmup >= 0.0 && a.warmup.is_finite()) {
        f.fail("--seconds must be positive and --warmup not negative");
    }
    if !a.path.starts_with('/') || a.path.contains(char::is_whitespace) {
        f.fail("--path must start with / and hold no whitespace");
    }
    a
}

/// A request on its way: when it was due and when it went out.
#[derive(Clone, Copy)]
struct Out {
    due: Instant,
    sent: Instant,
}

struct Conn {
    sock: Option<TcpStream>,
    rbuf: Vec<u8>,
    /// Due times of the requests waiting for this connection, oldest first.
    queue: VecDeque<Instant>,
    out: Option<Out>,
    /// Bytes of the current request not written yet.
    unwritten: usize,
    /// Since when nothing is out on it.
    free_since: Instant,
}

struct Stats {
    window: (Instant, Instant),
    requests: u64,
    ok: u64,
    errors: [u64; KINDS.len()],
    latency_ns: Vec<u64>,
    send_lag_ns: Vec<u64>,
    completed_in_window: u64,
    responses_total: u64,
    server_closes: u64,
    unfinished: u64,
}

impl Stats {
    fn counts(&self, due: Instant) -> bool {
        due >= self.window.0 && due < self.window.1
    }

    fn fail(&mut self, due: Instant, kind: usize) {
        if self.counts(due) {
            self.requests += 1;
            self.errors[kind] += 1;
        }
    }
}

fn connect(a: &Args) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&a.target, a.timeout)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Drops the connection's socket and what it read (the request out, if any, was counted by the caller), and
/// opens a new one. A failed connect leaves it closed; the next request due on it tries again.
fn reopen(a: &Args, c: &mut Conn) {
    c.sock = None;
    c.rbuf.clear();
    c.out = None;
    c.unwritten = 0;
    c.free_since = Instant::now();
    c.sock = connect(a).ok();
}

/// Writes what is left of the request. Err: the write failed.
fn write_rest(c: &mut Conn, req: &[u8]) -> Result<(), ()> {
    let Some(sock) = c.sock.as_mut() else {
        return Err(());
    };
    while c.unwritten > 0 {
        match sock.write(&req[req.len() - c.unwritten..]) {
            Ok(0) => return Err(()),
            Ok(n) => c.unwritten -= n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

/// Sends the oldest queued request if the connection is free.
fn send_next(a: &Args, c: &mut Conn, req: &[u8], st: &mut Stats, now: Instant) {
    while c.out.is_none() {
        let Some(&due) = c.queue.front() else { return };
        if c.sock.is_none() {
            reopen(a, c);
            if c.sock.is_none() {
                c.queue.pop_front();
                st.fail(due, CONNECT);
                continue;
            }
        }
        c.queue.pop_front();
        let sent = Instant::now().max(now);
        // The client's own lag: only for a request that found its connection free when it was due.
        if st.counts(due) && c.free_since <= due {
            st.send_lag_ns
                .push(sent.saturating_duration_since(due).as_nanos() as u64);
        }
        c.out = Some(Out { due, sent });
        c.unwritten = req.len();
        if write_rest(c, req).is_err() {
            st.fail(due, WRITE);
            reopen(a, c);
        }
    }
}

/// Reads what arrived and completes the response out, if whole.
fn read_ready(a: &Args, c: &mut Conn, st: &mut Stats) {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let Some(sock) = c.sock.as_mut() else { return };
        match sock.read(&mut chunk) {
            Ok(0) => {
                match c.out {
                    Some(o) => st.fail(o.due, if c.rbuf.is_empty() { EOF } else { RESET }),
                    None => st.server_closes += 1,
                }
                reopen(a, c);
                return;
            }
            Ok(n) => c.rbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                if let Some(o) = c.out {
                    st.fail(o.due, RESET);
                }
                reopen(a, c);
                return;
            }
        }
    }
    let Some(o) = c.out else {
        if !c.rbuf.is_empty() {
            // bytes nobody asked for: the connection is out of step
            reopen(a, c);
        }
        return;
    };
    match http1::response(&c.rbuf) {
        Response::Partial => {}
        Response::Bad(_) => {
            st.fail(o.due, BAD);
            reopen(a, c);
        }
        Response::Done {
            len,
            status,
            keep_alive,
        } => {
            let now = Instant::now();
            st.responses_total += 1;
            if now >= st.window.0 && now < st.window.1 {
                st.completed_in_window += 1;
            }
            if !(200..300).contains(&status) {
                st.fail(o.due, STATUS);
            } else if st.counts(o.due) {
                st.requests += 1;
                st.ok += 1;
                st.latency_ns.push(now.duration_since(o.due).as_nanos() as u64);
            }
            c.rbuf.drain(..len);
            c.out = None;
            c.free_since = now;
            if !keep_alive {
                st.server_closes += 1;
                reopen(a, c);
            } else if !c.rbuf.is_empty() {
                // more than one response to one request
                reopen(a, c);
            }
        }
    }
}

fn percentile_us(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e3
}

fn main() {
    let a = parse_args();
    poll::tight_timers();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: baton-bench-fixedrate\r\nAccept: */*\r\n\r\n",
        a.path, a.target
    )
    .into_bytes();
    let mut conns: Vec<Conn> = Vec::with_capacity(a.conns);
    for i in 0..a.conns {
        match connect(&a) {
            Ok(s) => conns.push(Conn {
                sock: Some(s),
                rbuf: Vec::with_capacity(4096),
                queue: VecDeque::new(),
                out: None,
                unwritten: 0,
                free_since: Instant::now(),
            }),
            Err(e) => {
                eprintln!(
                    "fixedrate: opening connection {} of {} to {}: {e}",
                    i + 1,
                    a.conns,
                    a.target
                );
                std::process::exit(1);
            }
        }
    }
    let start = Instant::now() + Duration::from_millis(5);
    let warm_end = start + Duration::from_secs_f64(a.warmup);
    let end = warm_end + Duration::from_secs_f64(a.seconds);
    let mut st = Stats {
        window: (warm_end, end),
        requests: 0,
        ok: 0,
        errors: [0; KINDS.len()],
        latency_ns: Vec::with_capacity((a.rate * a.seconds * 1.05) as usize + 16),
        send_lag_ns: Vec::with_capacity((a.rate * a.seconds * 1.05) as usize + 16),
        completed_in_window: 0,
        responses_total: 0,
        server_closes: 0,
        unfinished: 0,
    };
    let due_of = |k: u64| start + Duration::from_secs_f64(k as f64 / a.rate);
    let mut k: u64 = 0;
    let mut next_due = due_of(0);
    let give_up = end + a.timeout;
    let mut fds: Vec<PollFd> = Vec::with_capacity(a.conns);
    let mut idx: Vec<usize> = Vec::with_capacity(a.conns);
    loop {
        let now = Instant::now();
        // Everything due by now joins its connection's queue.
        while next_due < end && next_due <= now {
            conns[(k % a.conns as u64) as usize].queue.push_back(next_due);
            k += 1;
            next_due = due_of(k);
        }
        for c in conns.iter_mut() {
            // No answer in time: a timeout, and the connection is reopened.
            if let Some(o) = c.out {
                if now.duration_since(o.sent) >= a.timeout {
                    st.fail(o.due, TIMEOUT);
                    reopen(&a, c);
                }
            }
            send_next(&a, c, &req, &mut st, now);
        }
        let scheduling = next_due < end;
        let busy = conns.iter().any(|c| c.out.is_some() || !c.queue.is_empty());
        if !scheduling && (!busy || now >= give_up) {
            break;
        }
        fds.clear();
        idx.clear();
        let mut wake = if scheduling { next_due } else { give_up };
        for (i, c) in conns.iter().enumerate() {
            if let (Some(sock), Some(o)) = (c.sock.as_ref(), c.out) {
                fds.push(PollFd::new(sock.as_raw_fd(), c.unwritten > 0));
                idx.push(i);
                wake = wake.min(o.sent + a.timeout);
            }
        }
        let timeout = wake.saturating_duration_since(Instant::now());
        if let Err(e) = poll::wait_for(&mut fds, timeout) {
            eprintln!("fixedrate: ppoll: {e}");
            std::process::exit(1);
        }
        for (f, &i) in fds.iter().zip(idx.iter()) {
            if !f.ready() {
                continue;
            }
            let c = &mut conns[i];
            if c.unwritten > 0 && f.revents & POLLOUT != 0 && write_rest(c, &req).is_err() {
                if let Some(o) = c.out {
                    st.fail(o.due, WRITE);
                }
                reopen(&a, c);
                continue;
            }
            if f.revents & !POLLOUT != 0 {
                read_ready(&a, c, &mut st);
            }
            let now = Instant::now();
            send_next(&a, c, &req, &mut st, now);
        }
    }
    // What is still queued or out: waited at least this long.
    let stop = Instant::now();
    for c in &conns {
        for due in c.out.iter().map(|o| o.due).chain(c.queue.iter().copied()) {
            if st.counts(due) {
                st.requests += 1;
                st.unfinished += 1;
                st.latency_ns.push(stop.duration_since(due).as_nanos() as u64);
            }
        }
    }
    let mut lat = std::mem::take(&mut st.latency_ns);
    lat.sort_unstable();
    let mut lag = std::mem::take(&mut st.send_lag_ns);
    lag.sort_unstable();
    let mean = if lat.is_empty() {
        0.0
    } else {
        lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len() as f64 / 1e3
    };
    let mut errors = String::new();
    for (i, (kind, v)) in KINDS.iter().zip(st.errors).enumerate() {
        let _ = write!(errors, "{}\"{kind}\":{v}", if i > 0 { "," } else { "" });
    }
    println!(
        "{{\"asked_rps\":{:.1},\"achieved_rps\":{:.1},\"requests\":{},\"ok\":{},\"unfinished\":{},\"errors\":{{{errors}}},\
         \"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1},\"mean_us\":{mean:.1},\
         \"send_lag_p99_us\":{:.1},\"responses_total\":{},\"server_closes\":{},\"conns\":{},\"seconds\":{:.3}}}",
        a.rate,
        st.completed_in_window as f64 / a.seconds,
        st.requests,
        st.ok,
        st.unfinished,
        percentile_us(&lat, 50.0),
        percentile_us(&lat, 90.0),
        percentile_us(&lat, 99.0),
        percentile_us(&lat, 99.9),
        lat.last().map_or(0.0, |&x| x as f64 / 1e3),
        percentile_us(&lag, 99.0),
        st.responses_total,
        st.server_closes,
        a.conns,
        a.seconds,
    );
    if st.ok == 0 {
        eprintln!("fixedrate: not one request succeeded");
        std::process::exit(1);
    }
}
