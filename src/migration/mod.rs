//! Live connection migration, baton's side: after a committed handoff the old instance hands every client
//! connection to the new one at a point where nothing is in flight on it, instead of closing it.
//!
//! - HTTP/1: between two requests. A connection with a request in flight finishes its response here first; the
//!   bytes read but not parsed yet travel with the fd.
//! - TCP relay: when neither direction has bytes inside this process (see [`crate::proxy::tcp::splice`]); bytes
//!   read but not yet written travel with both fds.
//! - HTTP/2: not migrated; it gets GOAWAY at the commit and finishes its streams here.
//! - Idle upstream connections of the HTTP/1 engine's pools (not client connections, but they go the same way):
//!   each ahead of the client connections that gave it back, so that the successor starts with a warm pool.
//!
//! The connection tasks know only the [`crate::drain::Drain`]: they wait for its migration to start, reach their
//! quiescent point and depart. This module is the other end of that queue on each side:
//! [`send`] (old instance) batches the departures over the handoff session and returns every connection the
//! successor did not take, which its task then serves on gracefully; [`receive`] (new instance) adopts what
//! arrives.

pub mod receive;
pub mod send;
