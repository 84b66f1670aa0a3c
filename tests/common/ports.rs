//! Free loopback ports, so that tests never share a port and can run in parallel.

use std::net::{SocketAddr, TcpListener as StdTcpListener};

/// A free ephemeral loopback port: bind 127.0.0.1:0, read the port, drop the socket. Never the same port twice
/// in one test process (the kernel may hand a just-released port out again, and two calls in a row would then
/// collide).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A free loopback address (see [`free_port`]).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
