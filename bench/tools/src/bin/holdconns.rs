//! `holdconns`: opens many HTTP/1.1 keep-alive connections, makes one request on each, holds them all idle, and
//! on a signal file makes the next request on every one of them.
//!
//! ```text
//! holdconns --target 127.0.0.1:PORT --conns 10000 [--batch 256] [--timeout-ms 5000] [--go FILE] [--wait-s 120]
//! ```
//!
//! 1. Opens `--conns` connections `--batch` at a time: connects the batch, writes one `GET /` on each, then
//!    reads each whole response (so that the listen queue never holds more than one batch). A connection that
//!    cannot be opened or whose first request fails is counted (`first_failed`) and dropped.
//! 2. Prints `open N MS` (connections held, milliseconds it took) and waits, every connection idle, until
//!    `--go` exists (without `--go` it goes on at once).
//! 3. Makes the next request on every connection held, a batch at a time in the same way; no retry, no reconnect.
//!    A request fails when its connection turns out closed (`eof`: EOF before any byte of the response),
//!    is reset or cut short (`reset`), gets no whole response within `--timeout-ms` (`timeout`), a malformed
//!    one (`bad_response`) or a status other than 2xx (`status`); or when it cannot be written (`write`).
//! 4. Prints one JSON object: `{"conns":…,"opened":…,"first_failed":…,"open_ms":…,"second_ok":…,
//!    "second_failed":…,"errors":{kind:count,…},"second_ms":…}` and exits (closing them all).
//!
//! Exit 1 when not one connection could be held or `--go` never appeared, 2 for bad arguments. Only loopback
//! targets. Mind the open-file limit: one fd per connection.
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_bench_tools::args::Flags;
use baton_bench_tools::http1::{self, Response};

const KINDS: [&str; 6] = ["write", "eof", "reset", "timeout", "status", "bad_response"];
const WRITE: usize = 0;
const EOF: usize = 1;
const RESET: usize = 2;
const TIMEOUT: usize = 3;
const STATUS: usize = 4;
const BAD: usize = 5;

struct Args {
    target: SocketAddr,
    conns: usize,
    batch: usize,
    timeout: Duration,
    go: Option<PathBuf>,
    wait: Duration,
}

fn parse_args() -> Args {
    let mut a = Args {
        target: SocketAddr::from(([127, 0, 0, 1], 0)),
        conns: 0,
        batch: 256,
        timeout: Duration::from_secs(5),
        go: None,
        wait: Duration::from_secs(120),
    };
    let mut f = Flags::from_env(
        "holdconns",
        "holdconns --target 127.0.0.1:PORT --conns N [--batch 256] [--timeout-ms 5000] [--go FILE] [--wait-s 120]",
    );
    while let Some((flag, val)) = f.next_pair() {
        match flag.as_str() {
            "--target" => a.target = f.parse(&flag, &val),
            "--conns" => a.conns = f.parse(&flag, &val),
            "--batch" => a.batch = f.parse(&flag, &val),
            "--timeout-ms" => a.timeout = Duration::from_millis(f.parse(&flag, &val)),
            "--go" => a.go = Some(val.into()),
            "--wait-s" => a.wait = Duration::from_secs(f.parse(&flag, &val)),
            _ => f.fail(&format!("unknown argument {flag}")),
        }
    }
    if !a.target.ip().is_loopback() || a.target.port() == 0 {
        f.fail("--target must be a loopback ip:port");
    }
    if a.conns == 0 || a.batch == 0 || a.timeout.is_zero() {
        f.fail("--conns, --batch and --timeout-ms must be positive");
    }
    a
}

/// Reads one whole response. Err(kind) when it fails.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), usize> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        match http1::response(buf) {
            Response::Done { status, .. } if (200..300).contains(&status) => return Ok(()),
            Response::Done { .. } => return Err(STATUS),
            Response::Bad(_) => return Err(BAD),
            Response::Partial => {}
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(if buf.is_empty() { EOF } else { RESET }),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Err(TIMEOUT),
            Err(_) => return Err(RESET),
        }
    }
}

/// One request on each of `conns`, written all first, then each response read: what became of each.
fn round(conns: &mut [TcpStream], req: &[u8]) -> Vec<Result<(), usize>> {
    let mut out: Vec<Result<(), usize>> = conns.iter_mut().map(|s| s.write_all(req).map_err(|_| WRITE)).collect();
    let mut buf = Vec::with_capacity(1024);
    for (s, r) in conns.iter_mut().zip(out.iter_mut()) {
        if r.is_ok() {
            *r = read_response(s, &mut buf);
        }
    }
    out
}

fn main() {
    let a = parse_args();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: baton-bench-holdconns\r\nAccept: */*\r\n\r\n",
        a.target
    )
    .into_bytes();

    // 1. Open and use each once.
    let t0 = Instant::now();
    let mut held: Vec<TcpStream> = Vec::with_capacity(a.conns);
    let mut first_failed = 0usize;
    let mut first_error: Option<String> = None;
    let mut left = a.conns;
    while left > 0 {
        let n = left.min(a.batch);
        left -= n;
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            let opened = TcpStream::connect_timeout(&a.target, a.timeout).and_then(|s| {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(a.timeout))?;
                s.set_write_timeout(Some(a.timeout))?;
                Ok(s)
            });
            match opened {
                Ok(s) => batch.push(s),
                Err(e) => {
                    first_failed += 1;
                    first_error.get_or_insert_with(|| format!("connect: {e}"));
                }
            }
        }
        let results = round(&mut batch, &req);
        for (s, r) in batch.into_iter().zip(results) {
            match r {
                Ok(()) => held.push(s),
                Err(kind) => {
                    first_failed += 1;
                    first_error.get_or_insert_with(|| format!("first request: {}", KINDS[kind]));
                }
            }
        }
    }
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(e) = &first_error {
        eprintln!("holdconns: {first_failed} connections not held; the first: {e}");
    }
    println!("open {} {open_ms:.0}", held.len());
    let _ = std::io::stdout().flush();
    if held.is_empty() {
        std::process::exit(1);
    }

    // 2. Idle until told.
    if let Some(go) = &a.go {
        let end = Instant::now() + a.wait;
        while !go.exists() {
            if Instant::now() >= end {
                eprintln!("holdconns: {} never appeared", go.display());
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    // 3. The next request on every one.
    let t1 = Instant::now();
    let mut errors = [0u64; KINDS.len()];
    let mut ok = 0u64;
    for chunk in held.chunks_mut(a.batch) {
        for r in round(chunk, &req) {
            match r {
                Ok(()) => ok += 1,
                Err(kind) => errors[kind] += 1,
            }
        }
    }
    let second_ms = t1.elapsed().as_secs_f64() * 1e3;
    let mut e = String::new();
    for (i, (kind, v)) in KINDS.iter().zip(errors).enumerate() {
        let _ = write!(e, "{}\"{kind}\":{v}", if i > 0 { "," } else { "" });
    }
    println!(
        "{{\"conns\":{},\"opened\":{},\"first_failed\":{first_failed},\"open_ms\":{open_ms:.1},\"second_ok\":{ok},\
         \"second_failed\":{},\"errors\":{{{e}}},\"second_ms\":{second_ms:.1}}}",
        a.conns,
        held.len(),
        errors.iter().sum::<u64>(),
    );
}
