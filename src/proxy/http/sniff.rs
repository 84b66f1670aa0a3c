//! Telling HTTP/2 with prior knowledge from HTTP/1 by a connection's first bytes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::drain::Latch;
use crate::proxy::io::ClientIo;
use crate::telemetry::metrics::ListenerMetrics;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Room for the first read of a connection.
const SNIFF_READ: usize = 8 * 1024;

/// What the first bytes of a connection said.
pub enum Sniffed {
    /// HTTP/1, with the bytes read so far.
    H1(TcpStream, Vec<u8>),
    /// HTTP/2 with prior knowledge, the preface still to be read.
    H2(ClientIo<TcpStream>),
    /// A migration started before the client said which protocol it speaks: the connection, with what it sent.
    Silent(TcpStream, Vec<u8>),
    /// Closed or failed before a protocol was known.
    Gone,
}

/// Reads just enough to tell an HTTP/2 prior-knowledge preface from HTTP/1, and gives the bytes back. `read`:
/// bytes of the connection already read (by a predecessor). With `migration`, a migration that starts before the
/// protocol is known returns the connection as it is.
pub async fn sniff(
    mut stream: TcpStream,
    mut read: Vec<u8>,
    metrics: &Arc<ListenerMetrics>,
    migration: Option<&Latch>,
) -> Sniffed {
    loop {
        let n = read.len().min(H2_PREFACE.len());
        let is_h2 = read[..n] == H2_PREFACE[..n];
        if !is_h2 || n == H2_PREFACE.len() {
            return if is_h2 {
                Sniffed::H2(ClientIo::new(Bytes::from(read), stream, metrics.clone()))
            } else {
                Sniffed::H1(stream, read)
            };
        }
        // Read as much as is there: the HTTP/1 engine parses from this same buffer.
        read.reserve(SNIFF_READ);
        let got = tokio::select! {
            biased;
            r = stream.read_buf(&mut read) => r,
            _ = async {
                match migration {
                    Some(m) => m.wait().await,
                    None => std::future::pending().await,
                }
            } => return Sniffed::Silent(stream, read),
        };
        match got {
            Ok(0) | Err(_) => return Sniffed::Gone,
            Ok(m) => {
                metrics.bytes_in.fetch_add(m as u64, Ordering::Relaxed);
            }
        }
    }
}
