//! Idle upstream connections of the HTTP/1 engine: plain TCP streams, each owned by one exchange at a time.

use std::sync::Mutex;

use tokio::net::TcpStream;

use crate::upstream::MAX_IDLE;

/// Idle upstream connections of one endpoint, ready for an exchange.
#[derive(Default)]
pub struct IdleStreams {
    streams: Mutex<Vec<TcpStream>>,
}

impl IdleStreams {
    /// An idle connection the upstream has not closed (as far as the reactor knows, without a syscall in the
    /// usual case).
    pub fn take(&self) -> Option<TcpStream> {
        loop {
            let stream = self.streams.lock().ok()?.pop()?;
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(stream),
                // Closed by the upstream, an error, or bytes nobody asked for: not usable.
                _ => continue,
            }
        }
    }

    /// Keeps a connection that can carry another exchange (up to [`MAX_IDLE`]).
    pub fn put(&self, stream: TcpStream) {
        if let Ok(mut idle) = self.streams.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(stream);
            }
        }
    }
}
