//! Live connection migration, baton's side: after a committed handoff the old instance hands every client
//! connection to the new one at a point where nothing is in flight on it, instead of closing it.
//!
//! - HTTP/1: between two requests. A connection with a request in flight finishes its response here first; the
//!   bytes hyper read but did not parse yet travel with the fd.
//! - TCP relay: when neither direction has bytes inside this process (see [`crate::proxy::tcp::splice`]); bytes read but not yet
//!   written travel with both fds.
//! - HTTP/2: not migrated; it gets GOAWAY at the commit and finishes its streams here.
//!
//! Each connection task waits for [`Handover::requested`], reaches its quiescent point, and calls
//! [`Handover::depart`]; one hub task ([`run_hub`]) batches the departures over the handoff session and returns
//! every connection the successor did not take, which the task then serves on (with `Connection: close`, the
//! graceful path of a plain drain).

use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use baton_migrate::{Departing, Migration};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::drain::latch::{Signal, Wait};
use tokio_util::task::TaskTracker;

use crate::telemetry::state::State;

/// Kind tag of a migrated HTTP/1 connection: one fd, one buffer (bytes read but not parsed).
pub const KIND_HTTP1: &str = "http1";
/// Kind tag of a migrated TCP relay: fds client then upstream; buffers to-upstream then to-client.
pub const KIND_TCP: &str = "tcp";

/// A connection leaving, or coming back because the successor did not take it.
pub struct Parcel {
    /// Its sockets.
    pub fds: Vec<OwnedFd>,
    /// Its unprocessed bytes.
    pub buffers: Vec<Vec<u8>>,
}

struct Departure {
    kind: &'static str,
    listener: String,
    parcel: Parcel,
    reply: oneshot::Sender<Option<Parcel>>,
}

/// The old instance's side of a connection migration, shared by every connection task.
pub struct Handover {
    /// Fired when the migration starts.
    started: Arc<Signal>,
    tx: mpsc::UnboundedSender<Departure>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Departure>>>,
}

impl Default for Handover {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Handover {
            started: Arc::default(),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Handover {
    /// Resolves once a migration has started: time to reach a quiescent point and [`Handover::depart`].
    pub fn requested(&self) -> Wait<'_> {
        self.started.wait()
    }

    /// Whether a migration has started.
    pub fn is_requested(&self) -> bool {
        self.started.fired()
    }

    /// The signal fired when the migration starts.
    pub fn signal(&self) -> Arc<Signal> {
        self.started.clone()
    }

    /// Offers a quiescent connection to the successor. `None`: it is the successor's now (our copies are
    /// closed). `Some`: it came back; serve it on.
    pub async fn depart(&self, kind: &'static str, listener: &str, parcel: Parcel) -> Option<Parcel> {
        let (reply, answer) = oneshot::channel();
        let departure = Departure {
            kind,
            listener: listener.to_string(),
            parcel,
            reply,
        };
        if let Err(mpsc::error::SendError(d)) = self.tx.send(departure) {
            return Some(d.parcel);
        }
        // The hub answers every departure it received; a dropped answer means the process is going down.
        answer.await.unwrap_or(None)
    }

    /// Starts the migration: every connection task heads for its quiescent point, and the hub sends what
    /// arrives. The hub ends, sending this instance's final counters, once `tracker` is closed and empty.
    pub fn start(
        &self,
        migration: Migration,
        tracker: TaskTracker,
        state: Arc<State>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let rx = self.rx.lock().ok()?.take()?;
        self.started.fire();
        Some(tokio::spawn(run_hub(migration, rx, tracker, state)))
    }
}

/// Sends departures in batches as they come; answers each one.
async fn run_hub(
    mut migration: Migration,
    mut rx: mpsc::UnboundedReceiver<Departure>,
    tracker: TaskTracker,
    state: Arc<State>,
) {
    let mut broken = false;
    let (mut sent, mut taken) = (0usize, 0usize);
    loop {
        let first = tokio::select! {
            biased;
            d = rx.recv() => d,
            _ = tracker.wait() => None,
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        if broken {
            for d in batch {
                let _ = d.reply.send(Some(d.parcel));
            }
            continue;
        }
        let departing: Vec<Departing<'_>> = batch
            .iter()
            .map(|d| Departing {
                kind: d.kind.to_string(),
                listener: d.listener.clone(),
                fds: d.parcel.fds.iter().map(|f| f.as_fd()).collect(),
                buffers: d.parcel.buffers.clone(),
            })
            .collect();
        let result = migration.send(&departing).await;
        drop(departing);
        sent += batch.len();
        match result {
            Ok(verdicts) => {
                for (d, took) in batch.into_iter().zip(verdicts) {
                    if took {
                        taken += 1;
                        drop(d.parcel); // our copies; the successor has its own
                        let _ = d.reply.send(None);
                    } else {
                        let _ = d.reply.send(Some(d.parcel));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "connection migration failed: serving the remaining connections here, closing them gracefully");
                broken = true;
                for d in batch {
                    let _ = d.reply.send(Some(d.parcel));
                }
            }
        }
    }
    tracing::info!(
        offered = sent,
        taken,
        "connection migration over: nothing left to hand over"
    );
    if !broken {
        let last = serde_json::json!({ "counters": state.counters_snapshot() });
        if let Err(e) = migration.end(last).await {
            tracing::debug!(error = %e, "could not tell the successor the migration ended");
        }
    }
}

/// How far an HTTP/1 connection is from a quiescent point.
#[derive(Debug, Default)]
pub struct ConnCtl {
    in_flight: AtomicU32,
    idle: Notify,
    /// A request body was not read to its end: hyper will close the connection, it must not be migrated.
    dirty: AtomicBool,
    /// The last request asked for the connection to close after its response.
    client_close: AtomicBool,
}

impl ConnCtl {
    /// A request starts. `has_body`: its body may still be unread.
    pub fn begin(self: &Arc<Self>, has_body: bool, client_close: bool) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if has_body {
            self.dirty.store(true, Ordering::Release);
        }
        if client_close {
            self.client_close.store(true, Ordering::Release);
        }
    }

    fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.idle.notify_one();
    }

    /// Resolves when no request is in flight.
    pub async fn quiet(&self) {
        loop {
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            self.idle.notified().await;
        }
    }

    /// Whether the connection can be handed over once hyper has stopped at the response boundary.
    pub fn migratable(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && !self.dirty.load(Ordering::Acquire)
            && !self.client_close.load(Ordering::Acquire)
    }
}

/// A request body, forwarded upstream, that tells its connection whether it was read to the end.
pub struct RequestBody {
    inner: Incoming,
    ctl: Option<Arc<ConnCtl>>,
    done: bool,
}

impl RequestBody {
    /// Wraps a request body of a connection tracked by `ctl`.
    pub fn new(inner: Incoming, ctl: Option<Arc<ConnCtl>>) -> RequestBody {
        let done = inner.is_end_stream();
        RequestBody { inner, ctl, done }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if self.done || self.inner.is_end_stream() {
            if let Some(ctl) = &self.ctl {
                ctl.dirty.store(false, Ordering::Release);
            }
        }
    }
}

/// A response body that ends its request on its connection when hyper is done with it.
pub struct Tracked<B> {
    inner: B,
    ctl: Option<Arc<ConnCtl>>,
}

impl<B> Tracked<B> {
    /// Wraps the response body of a request begun on `ctl`.
    pub fn new(inner: B, ctl: Option<Arc<ConnCtl>>) -> Tracked<B> {
        Tracked { inner, ctl }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        if let Some(ctl) = self.ctl.take() {
            ctl.end();
        }
    }
}

/// Longest a relay direction keeps writing bytes it already read once a migration started, before it hands
/// them over in memory instead.
pub const RELAY_FLUSH_GRACE: Duration = Duration::from_millis(200);

/// A tokio TCP stream as an fd for the handoff (deregistered from the runtime).
pub fn stream_fd(stream: tokio::net::TcpStream) -> std::io::Result<OwnedFd> {
    Ok(OwnedFd::from(stream.into_std()?))
}

/// Whether a received fd is what a handed-over connection must be: a connected TCP socket (not a listener, a
/// pipe, a Unix or UDP socket). Anything else is refused, never served.
pub fn is_connected_tcp(fd: &OwnedFd) -> bool {
    let sock = socket2::SockRef::from(fd);
    matches!(sock.r#type(), Ok(t) if t == socket2::Type::STREAM)
        && matches!(sock.domain(), Ok(d) if d == socket2::Domain::IPV4 || d == socket2::Domain::IPV6)
        && sock.peer_addr().is_ok()
}

/// A received (or returned) fd as a tokio TCP stream, in non-blocking mode.
pub fn fd_stream(fd: OwnedFd) -> std::io::Result<tokio::net::TcpStream> {
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connected_tcp_sockets_are_adopted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (served, _) = listener.accept().expect("accept");
        assert!(is_connected_tcp(&OwnedFd::from(client)));
        assert!(is_connected_tcp(&OwnedFd::from(served)));
        assert!(!is_connected_tcp(&OwnedFd::from(listener)), "a listener");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        assert!(!is_connected_tcp(&OwnedFd::from(udp)), "a UDP socket");
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(!is_connected_tcp(&OwnedFd::from(a)), "a Unix socket");
        let (r, _w) = nix::unistd::pipe().expect("pipe");
        assert!(!is_connected_tcp(&r), "a pipe");
        let unconnected = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        assert!(
            !is_connected_tcp(&OwnedFd::from(unconnected)),
            "a TCP socket never connected"
        );
    }
}
