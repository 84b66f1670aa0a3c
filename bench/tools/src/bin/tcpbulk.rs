//! `tcpbulk`: bulk TCP throughput, for comparing a direct connection with one relayed by a proxy.
//!
//! ```text
//! tcpbulk sink --listen 127.0.0.1:PORT
//!     accepts connections; reads each to EOF, then answers the byte count (u64, big endian) and closes.
//! tcpbulk send --target 127.0.0.1:PORT [--seconds 3] [--warmup 0.5] [--chunk 262144] [--rate-gbit G]
//!     one connection: writes for warmup + seconds, half-closes, waits for the sink's count, and prints
//!     {"gbit_s":…,"bytes":…,"seconds":…,"verified":true|false,"bytes_total":…,"rate_gbit":…|null}
//! ```
//!
//! With `--rate-gbit`, the writes are paced to that rate (each chunk, 65536 bytes unless `--chunk` says otherwise,
//! written when the bytes before it are due), so that a proxy in between relays a fixed rate rather than all it
//! can; `bytes_total` counts the warm-up too (for the proxy's CPU per byte over the whole run).
//!
//! The clock stops only when the sink has confirmed every byte, so bytes still buffered in a proxy are not
//! counted as delivered. Only loopback addresses are accepted.
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!(
        "usage: tcpbulk sink --listen ADDR | tcpbulk send --target ADDR [--seconds S] [--warmup S] [--chunk BYTES] \
         [--rate-gbit G]"
    );
    std::process::exit(2);
}

fn loopback(s: &str) -> SocketAddr {
    let addr: SocketAddr = s.parse().unwrap_or_else(|_| usage());
    if !addr.ip().is_loopback() {
        eprintln!("tcpbulk: {addr} is not a loopback address");
        std::process::exit(2);
    }
    addr
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.first().map(String::as_str) {
        Some("sink") => sink(loopback(&opt("--listen").unwrap_or_else(|| usage()))),
        Some("send") => {
            let target = loopback(&opt("--target").unwrap_or_else(|| usage()));
            let num = |name: &str, default: f64| -> f64 {
                opt(name)
                    .map(|v| v.parse().unwrap_or_else(|_| usage()))
                    .unwrap_or(default)
            };
            let seconds = num("--seconds", 3.0);
            let warmup = num("--warmup", 0.5);
            let rate = opt("--rate-gbit").map(|_| num("--rate-gbit", 0.0));
            if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                usage();
            }
            let chunk = num("--chunk", if rate.is_some() { 65_536.0 } else { 262_144.0 }) as usize;
            send(target, seconds, warmup, chunk.max(1), rate);
        }
        _ => usage(),
    }
}

fn sink(listen: SocketAddr) {
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("tcpbulk: bind {listen}: {e}");
        std::process::exit(1);
    });
    println!(
        "listening {}",
        listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut total: u64 = 0;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
            let _ = stream.write_all(&total.to_be_bytes());
        });
    }
}

fn send(target: SocketAddr, seconds: f64, warmup: f64, chunk: usize, rate_gbit: Option<f64>) {
    let fail = |what: &str, e: std::io::Error| -> ! {
        eprintln!("tcpbulk: {what} {target}: {e}");
        std::process::exit(1);
    };
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2)).unwrap_or_else(|e| fail("connect", e));
    let buf = vec![0x5au8; chunk];
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(warmup);
    let end = warm_end + Duration::from_secs_f64(seconds);
    let mut total: u64 = 0;
    let mut at_warm: Option<(u64, Instant)> = if warmup <= 0.0 { Some((0, start)) } else { None };
    loop {
        if let Some(rate) = rate_gbit {
            // This chunk is due once the bytes before it have had their time at the rate.
            let due = start + Duration::from_secs_f64(total as f64 * 8.0 / (rate * 1e9));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        stream.write_all(&buf).unwrap_or_else(|e| fail("write to", e));
        total += chunk as u64;
        let now = Instant::now();
        if at_warm.is_none() && now >= warm_end {
            at_warm = Some((total, now));
        }
        if now >= end {
            break;
        }
    }
    stream.shutdown(Shutdown::Write).unwrap_or_else(|e| fail("shutdown", e));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut ack = [0u8; 8];
    let verified = match stream.read_exact(&mut ack) {
        Ok(()) => u64::from_be_bytes(ack) == total,
        Err(e) => fail("reading the byte count from", e),
    };
    let done = Instant::now();
    let (from_bytes, from_t) = at_warm.unwrap_or((0, start));
    let bytes = total - from_bytes;
    let secs = done.duration_since(from_t).as_secs_f64();
    println!(
        "{{\"gbit_s\":{:.3},\"bytes\":{bytes},\"seconds\":{secs:.3},\"verified\":{verified},\"bytes_total\":{total},\
         \"rate_gbit\":{}}}",
        bytes as f64 * 8.0 / secs / 1e9,
        rate_gbit.map_or("null".to_string(), |r| r.to_string())
    );
}
