//! Idle upstream connections of the HTTP/1 engine: plain TCP streams, each owned by one exchange at a time.
//!
//! Being plain sockets, they can leave the process: at a migration the old instance hands them to its successor
//! ([`IdleStreams::take_newest`], [`IdleStreams::adopt`]), which then starts with a warm pool instead of opening one
//! connection per client at once. (hyper's pool, [`super::h1::IdleClients`], cannot give its sockets back: its
//! connections close with the old instance.)

use std::time::Duration;

use tokio::net::TcpStream;

use crate::upstream::idle::IdleList;

/// Idle upstream connections of one endpoint, ready for an exchange.
pub struct IdleStreams {
    streams: IdleList<TcpStream>,
}

impl IdleStreams {
    /// An empty pool whose connections are kept at most `idle_timeout` (`0`: none is kept).
    pub fn new(idle_timeout: Duration) -> IdleStreams {
        IdleStreams {
            streams: IdleList::new(idle_timeout),
        }
    }

    /// An idle connection the upstream has not closed (as far as the reactor knows, without a syscall in the
    /// usual case).
    pub fn take(&self) -> Option<TcpStream> {
        loop {
            let stream = self.streams.pop()?;
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(stream),
                // Closed by the upstream, an error, or bytes nobody asked for: not usable.
                _ => continue,
            }
        }
    }

    /// Keeps a connection that can carry another exchange (up to [`super::idle::MAX_IDLE`]).
    pub fn put(&self, stream: TcpStream) {
        self.streams.push(stream);
    }

    /// Up to `most` idle connections, the most recently idle first, each with how long it has been idle, for a
    /// migration.
    pub fn take_newest(&self, most: usize) -> Vec<(TcpStream, Duration)> {
        self.streams.take_newest(most)
    }

    /// Keeps a connection the predecessor handed over, idle for `idle_for` already. False (it is dropped) when it
    /// is past the pool's idle timeout or the pool is full.
    pub fn adopt(&self, stream: TcpStream, idle_for: Duration) -> bool {
        self.streams.push_idle_for(stream, idle_for)
    }

    /// How many connections are idle.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether none is idle.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}
