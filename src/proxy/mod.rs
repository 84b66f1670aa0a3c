//! The proxy listeners' connections: HTTP (HTTP/1.1 and h2c) and TCP relay.

pub mod http;
pub mod io;
pub mod tcp;
