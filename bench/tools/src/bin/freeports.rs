//! `freeports N`: prints N distinct free TCP ports on 127.0.0.1, space separated.
//!
//! All N are bound at once (so they are distinct) and released on exit; the caller binds them right after.
use std::net::TcpListener;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        let l = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => {
                eprintln!("freeports: bind 127.0.0.1:0: {e}");
                std::process::exit(1);
            }
        };
        ports.push(l.local_addr().map(|a| a.port().to_string()).unwrap_or_default());
        held.push(l);
    }
    println!("{}", ports.join(" "));
}
