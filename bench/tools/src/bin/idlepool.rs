//! `idlepool`: a pool of idle HTTP/1.1 keep-alive connections, as an application's HTTP client keeps to its
//! sidecar, used now and then, without retries.
//!
//! ```text
//! idlepool --target 127.0.0.1:PORT [--conns 100] [--round-ms 300] [--seconds 10] [--timeout-ms 2000]
//! ```
//!
//! Opens `--conns` keep-alive connections, then for `--seconds` uses each once per round (one `GET /`, the whole
//! response read), a round every `--round-ms`. The turns of the connections are spread evenly over the round,
//! so at any moment almost every connection sits idle. One thread per connection.
//!
//! No retry and no silent reconnect: a request that fails (write error, reset, EOF or timeout before the whole
//! response, a malformed response, a status other than 2xx) counts as one failure; its connection is closed and
//! reopened at once for its next turn (one reconnect). A 2xx response that says `Connection: close` (or an
//! HTTP/1.0 one without keep-alive) is a success, and the connection is reopened likewise (a reconnect and a
//! server close). When a reopen fails, the next turn connects first, and counts as a failed request (connect)
//! if it cannot.
//!
//! Prints one JSON object: `{"requests":…,"failures":…,"reconnects":…,"server_closes":…,"errors":{"connect":…,
//! "write":…,"reset":…,"eof":…,"truncated":…,"timeout":…,"status":…,"bad_response":…},"p50_us":…,"p99_us":…,
//! "max_us":…,"conns":…,"round_ms":…,"seconds":…}` (latency of the successful requests). `eof` is a connection
//! found closed by the server (EOF before any byte of the response), `truncated` an EOF within the response.
//! Exit 1 when the initial connections cannot be opened, 2 for bad arguments. Only loopback targets.
use baton_bench_tools::args::Flags;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const KINDS: [&str; 8] = [
    "connect",
    "write",
    "reset",
    "eof",
    "truncated",
    "timeout",
    "status",
    "bad_response",
];
const CONNECT: usize = 0;
const WRITE: usize = 1;
const RESET: usize = 2;
const EOF: usize = 3;
const TRUNCATED: usize = 4;
const TIMEOUT: usize = 5;
const STATUS: usize = 6;
const BAD: usize = 7;

struct Args {
    target: SocketAddr,
    conns: usize,
    round: Duration,
    seconds: f64,
    timeout: Duration,
}

fn parse_args() -> Args {
    let mut a = Args {
        target: SocketAddr::from(([127, 0, 0, 1], 0)),
        conns: 100,
        round: Duration::from_millis(300),
        seconds: 10.0,
        timeout: Duration::from_secs(2),
    };
    let mut f = Flags::from_env(
        "idlepool",
        "idlepool --target 127.0.0.1:PORT [--conns 100] [--round-ms 300] [--seconds 10] [--timeout-ms 2000]",
    );
    while let Some((flag, val)) = f.next_pair() {
        match flag.as_str() {
            "--target" => a.target = f.parse(&flag, &val),
            "--conns" => a.conns = f.parse(&flag, &val),
            "--round-ms" => a.round = Duration::from_millis(f.parse(&flag, &val)),
            "--seconds" => a.seconds = f.parse(&flag, &val),
            "--timeout-ms" => a.timeout = Duration::from_millis(f.parse(&flag, &val)),
            _ => f.fail(&format!("unknown argument {flag}")),
        }
    }
    if !a.target.ip().is_loopback() || a.target.port() == 0 {
        f.fail("--target must be a loopback ip:port");
    }
    if a.conns == 0 || a.round.is_zero() || a.timeout.is_zero() || !(a.seconds > 0.0 && a.seconds.is_finite()) {
        f.fail("--conns, --round-ms, --timeout-ms and --seconds must be positive");
    }
    a
}

fn connect(a: &Args) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect_timeout(&a.target, a.timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(a.timeout))?;
    s.set_write_timeout(Some(a.timeout))?;
    Ok(BufReader::new(s))
}

/// The failure a read error stands for.
fn read_error(e: &std::io::Error) -> usize {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => TIMEOUT,
        ErrorKind::UnexpectedEof => TRUNCATED,
        _ => RESET,
    }
}

/// One line (CRLF or LF), without its terminator. `Err(EOF)` when the connection ends before it.
fn line(r: &mut BufReader<TcpStream>, buf: &mut Vec<u8>, first: bool) -> Result<(), usize> {
    buf.clear();
    match r.read_until(b'\n', buf) {
        Ok(0) => Err(if first { EOF } else { TRUNCATED }),
        Ok(_) if buf.last() != Some(&b'\n') => Err(TRUNCATED),
        Ok(_) => {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            Ok(())
        }
        Err(e) => Err(read_error(&e)),
    }
}

fn skip(r: &mut BufReader<TcpStream>, n: u64) -> Result<(), usize> {
    let copied = std::io::copy(&mut r.by_ref().take(n), &mut std::io::sink()).map_err(|e| read_error(&e))?;
    if copied < n {
        return Err(TRUNCATED);
    }
    Ok(())
}

/// One `GET /` on the connection, the whole response read. Ok(keep-alive) for a 2xx, Err(kind) otherwise.
fn request(r: &mut BufReader<TcpStream>, req: &[u8]) -> Result<bool, usize> {
    r.get_mut().write_all(req).map_err(|_| WRITE)?;
    let mut buf = Vec::with_capacity(256);
    let mut first = true;
    loop {
        line(r, &mut buf, first)?;
        first = false;
        let text = std::str::from_utf8(&buf).map_err(|_| BAD)?;
        let mut parts = text.split(' ');
        let version = parts.next().unwrap_or("");
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or(BAD)?;
        if !version.starts_with("HTTP/1.") {
            return Err(BAD);
        }
        let mut keep_alive = version == "HTTP/1.1";
        let (mut length, mut chunked) = (None, false);
        loop {
            line(r, &mut buf, false)?;
            if buf.is_empty() {
                break;
            }
            let text = std::str::from_utf8(&buf).map_err(|_| BAD)?;
            let (name, value) = text.split_once(':').ok_or(BAD)?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<u64>().map_err(|_| BAD)?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
        }
        if (100..200).contains(&status) {
            continue; // an interim response; the real one follows
        }
        if status == 204 || status == 304 {
            // no body
        } else if chunked {
            loop {
                line(r, &mut buf, false)?;
                let text = std::str::from_utf8(&buf).map_err(|_| BAD)?;
                let size = text.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size, 16).map_err(|_| BAD)?;
                if size == 0 {
                    // trailers, up to the empty line
                    loop {
                        line(r, &mut buf, false)?;
                        if buf.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                skip(r, size)?;
                line(r, &mut buf, false)?;
                if !buf.is_empty() {
                    return Err(BAD);
                }
            }
        } else if let Some(n) = length {
            skip(r, n)?;
        } else {
            // body up to EOF: the connection ends with it
            std::io::copy(r, &mut std::io::sink()).map_err(|e| read_error(&e))?;
            keep_alive = false;
        }
        return if (200..300).contains(&status) {
            Ok(keep_alive)
        } else {
            Err(STATUS)
        };
    }
}

#[derive(Default)]
struct Stats {
    requests: u64,
    reconnects: u64,
    server_closes: u64,
    errors: [u64; KINDS.len()],
    latency_us: Vec<u32>,
}

/// The turns of connection `i` from `start` to `end`: one request a round, reopening after a failure.
fn run(a: &Args, i: usize, conn: BufReader<TcpStream>, start: Instant, end: Instant) -> Stats {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: baton-bench-idlepool\r\nAccept: */*\r\n\r\n",
        a.target
    );
    let mut st = Stats::default();
    let mut conn = Some(conn);
    let offset = a.round.mul_f64(i as f64 / a.conns as f64);
    let mut turn = start + offset;
    while turn < end {
        if let Some(wait) = turn.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        st.requests += 1;
        let t0 = Instant::now();
        if conn.is_none() {
            match connect(a) {
                Ok(c) => {
                    st.reconnects += 1;
                    conn = Some(c);
                }
                Err(_) => st.errors[CONNECT] += 1,
            }
        }
        if let Some(c) = conn.as_mut() {
            let reopen = match request(c, req.as_bytes()) {
                Ok(keep_alive) => {
                    st.latency_us
                        .push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                    if !keep_alive {
                        st.server_closes += 1;
                    }
                    !keep_alive
                }
                Err(kind) => {
                    st.errors[kind] += 1;
                    true
                }
            };
            if reopen {
                conn = None; // closes it
                if let Ok(c) = connect(a) {
                    st.reconnects += 1;
                    conn = Some(c);
                }
            }
        }
        // The next turn of this connection still ahead (turns missed while a request was slow are skipped).
        let now = Instant::now();
        while turn <= now {
            turn += a.round;
        }
    }
    st
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let a = parse_args();
    let mut conns = Vec::with_capacity(a.conns);
    for i in 0..a.conns {
        match connect(&a) {
            Ok(c) => conns.push(c),
            Err(e) => {
                eprintln!(
                    "idlepool: opening connection {} of {} to {}: {e}",
                    i + 1,
                    a.conns,
                    a.target
                );
                std::process::exit(1);
            }
        }
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.seconds);
    let total = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let a = &a;
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || run(a, i, c, start, end))
                    .unwrap_or_else(|e| {
                        eprintln!("idlepool: spawning a thread: {e}");
                        std::process::exit(1);
                    })
            })
            .collect();
        let mut total = Stats::default();
        for h in handles {
            let st = h.join().unwrap_or_else(|_| {
                eprintln!("idlepool: a connection thread panicked");
                std::process::exit(1);
            });
            total.requests += st.requests;
            total.reconnects += st.reconnects;
            total.server_closes += st.server_closes;
            for (t, v) in total.errors.iter_mut().zip(st.errors) {
                *t += v;
            }
            total.latency_us.extend(st.latency_us);
        }
        total
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut lat = total.latency_us;
    lat.sort_unstable();
    let failures: u64 = total.errors.iter().sum();
    let mut errors = String::new();
    for (i, (k, v)) in KINDS.iter().zip(total.errors).enumerate() {
        let _ = write!(errors, "{}\"{k}\":{v}", if i > 0 { "," } else { "" });
    }
    println!(
        "{{\"requests\":{},\"failures\":{failures},\"reconnects\":{},\"server_closes\":{},\"errors\":{{{errors}}},\
         \"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"conns\":{},\"round_ms\":{},\"seconds\":{seconds:.3}}}",
        total.requests,
        total.reconnects,
        total.server_closes,
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(0),
        a.conns,
        a.round.as_millis(),
    );
}
