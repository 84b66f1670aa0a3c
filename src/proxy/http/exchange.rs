//! One exchange of the HTTP/1 engine, from the request to the end of the response body, as a state machine that
//! can stop between any two reads and go on in another instance.
//!
//! Three stages: the request (its head and what of its body was read with it, then a streamed body as it
//! arrives), the response head, the response body. At every await the exchange holds only its two sockets, the
//! bytes read and not yet written in each direction, the upstream bytes of an incomplete response head, and where
//! each body ends (`BodyEnd`). At a migration that is what travels (`Exchange::detach`), and the successor
//! continues the same exchange (`Exchange::restore`), then the keep-alive connection.
//!
//! Past the request head, an exchange that moves no byte either way (request body in, response body out) for the
//! cluster's `stream_idle_timeout` ends (`Step::Idle`), except while it waits for the response head, which
//! `request_timeout` bounds. The time of the last byte moved does not travel: a successor starts its own count.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::drain::detached::{fd_stream, stream_fd};
use crate::drain::latch::Wait;
use crate::drain::{ConnKind, Detached};
use crate::proxy::http::failure::Failure;
use crate::proxy::http::framing::{BodyEnd, BODY_CHUNK};
use crate::proxy::http::parse::{interim, parse_response, Framing, Request};
use crate::proxy::{IdleAt, ListenerCtx};

/// Room kept free in a buffer before each read.
pub(super) const READ_ROOM: usize = 8 * 1024;

/// Where an exchange is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum Stage {
    /// Sending the request: the pending bytes, then (`body`: `Some`) the rest of a streamed body as the client
    /// sends it.
    Request {
        /// Where the streamed body ends; `None` once all of it was read.
        body: Option<BodyEnd>,
    },
    /// Waiting for the response head.
    Head {
        /// The upstream answered before the request body was all read: the client connection closes after the
        /// response, and the upstream connection is not reused.
        body_unread: bool,
    },
    /// Passing the response body on.
    Body {
        /// Where it ends.
        end: BodyEnd,
        /// Its last byte was read.
        done: bool,
        /// It ends when the upstream closes.
        until_close: bool,
        /// The upstream connection can carry another exchange afterwards.
        reuse: bool,
        /// The client connection closes afterwards.
        close_client: bool,
        /// The request body was not read to its end (the upstream answered early).
        #[serde(default)]
        unread: bool,
    },
}

/// What [`Exchange::parse_head`] found.
enum Head {
    /// More bytes needed.
    Incomplete,
    /// The head, and the stage is now [`Stage::Body`].
    Body,
    /// A `101`: see [`Step::Tunnel`].
    Tunnel,
}

/// What the successor needs of an exchange besides its sockets and bytes (the first buffer of a
/// [`ConnKind::Exchange`], as JSON).
#[derive(Debug, Serialize, Deserialize)]
struct Resume {
    endpoint: SocketAddr,
    is_head: bool,
    upgrade: bool,
    closing: bool,
    /// Time spent waiting for the response head so far, in milliseconds (`request_timeout` counts it).
    waited_ms: u64,
    stage: Stage,
}

/// How a stage loop ended.
pub(super) enum Step {
    /// The response was passed on to its end.
    Done,
    /// No response head: the client gets baton's answer.
    Failed(Failure),
    /// A `101` to an upgrade request: the client's head is [`Exchange::client_head`], and the bytes the upstream
    /// sent past it are [`Exchange::upstream_rest`].
    Tunnel,
    /// A migration started: the exchange stopped between two reads, ready for [`Exchange::detach`].
    Depart,
    /// The client's streamed body is malformed, before any response: it gets a 400.
    BadRequest(&'static str),
    /// A side failed part-way: the client connection must close.
    Cut(Cut),
    /// No byte moved either way for the cluster's `stream_idle_timeout`, at this point of the exchange (never
    /// while waiting for the response head).
    Idle(IdleAt),
}

/// Why an exchange could not be carried to its end (the client connection must close).
#[derive(Debug, thiserror::Error)]
pub(super) enum Cut {
    #[error("writing to the client: {0}")]
    Client(#[source] std::io::Error),
    #[error("the client closed in the middle of its request body")]
    ClientGone,
    #[error("reading from the upstream: {0}")]
    Upstream(#[source] std::io::Error),
    #[error("writing the request body to the upstream: {0}")]
    UpstreamWrite(#[source] std::io::Error),
    #[error("the upstream closed before the end of the body")]
    Truncated,
    #[error("malformed body from the upstream: {0}")]
    Framing(&'static str),
}

/// One exchange in flight, owning its upstream connection.
pub(super) struct Exchange {
    pub(super) up: TcpStream,
    pub(super) endpoint: SocketAddr,
    is_head: bool,
    upgrade: bool,
    /// The client connection closes after this exchange.
    closing: bool,
    /// The upstream connection came from the pool and nothing was written to it since: a write that fails may be
    /// the upstream having closed it while idle, and the request goes again on a new one.
    reused: bool,
    /// If the upstream closes before a byte of response, the whole request (still in `to_up`) can be sent again
    /// on a new connection: a reused connection, an idempotent request, no streamed body.
    resend: bool,
    pub(super) stage: Stage,
    /// For the upstream, from `sent` on.
    to_up: Vec<u8>,
    sent: usize,
    /// For the client, `written..filled`.
    to_client: Vec<u8>,
    written: usize,
    filled: usize,
    /// From the upstream, not processed yet: an incomplete response head (or, after a `101`, the tunnel's first
    /// bytes).
    ubuf: Vec<u8>,
    /// When the request started (latency metrics).
    started: Instant,
    /// Since when the response head is awaited (set on entering [`Stage::Head`]).
    head_since: Option<Instant>,
    /// When a byte last moved in the request or response body stage (the stream idle timeout counts from it).
    moved: Instant,
}

/// Reusable buffers of a connection's exchanges.
#[derive(Default)]
pub(super) struct Buffers {
    to_up: Vec<u8>,
    to_client: Vec<u8>,
    ubuf: Vec<u8>,
}

impl Buffers {
    /// Where the next request is written (its rewritten head, and its body if read whole): the exchange sends it
    /// from there, without a copy.
    pub(super) fn request(&mut self) -> &mut Vec<u8> {
        &mut self.to_up
    }

    /// Exchange buffers, from this thread's spares if it has any (see [`Buffers::spare`]).
    pub(super) fn take() -> Buffers {
        SPARE_SETS.with(|s| s.borrow_mut().pop()).unwrap_or_default()
    }

    /// A connection's read buffer, from this thread's spares if it has any: for a connection that holds none (one
    /// that comes with bytes already read keeps its own buffer, and the spare stays for another).
    pub(super) fn take_read() -> Vec<u8> {
        SPARE_READS.with(|s| s.borrow_mut().pop()).unwrap_or_default()
    }

    /// Keeps the buffers of a connection that went idle for the next connection of this thread that wakes up: an
    /// idle connection holds none, and a busy one does not allocate them again for each request. At most
    /// [`SPARES_KEPT`] of each are kept, and none that grew past [`SPARE_MOST`].
    pub(super) fn spare(mut self, mut cbuf: Vec<u8>) {
        if cbuf.capacity() <= SPARE_MOST {
            cbuf.clear();
            keep(&SPARE_READS, cbuf);
        }
        let sizes = [self.to_up.capacity(), self.to_client.capacity(), self.ubuf.capacity()];
        if sizes.iter().all(|&c| c <= SPARE_MOST) {
            self.to_up.clear();
            self.to_client.clear();
            self.ubuf.clear();
            keep(&SPARE_SETS, self);
        }
    }
}

/// Adds `spare` to this thread's list `spares`, unless it holds [`SPARES_KEPT`] already.
fn keep<T: 'static>(spares: &'static std::thread::LocalKey<std::cell::RefCell<Vec<T>>>, spare: T) {
    spares.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARES_KEPT {
            s.push(spare);
        }
    });
}

/// Spare read buffers and spare exchange buffer sets kept per thread: enough for the connections of a busy thread
/// that are between two requests at once, few enough to weigh nothing (at most 4 × [`SPARE_MOST`] a connection).
const SPARES_KEPT: usize = 64;
/// The largest buffer kept as a spare.
const SPARE_MOST: usize = 32 * 1024;

thread_local! {
    static SPARE_READS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
    static SPARE_SETS: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Exchange {
    /// Starts an exchange of `req` (its rewritten head and read body in `bufs`' [`Buffers::request`]) on a pooled connection to
    /// `endpoint` or a new one.
    pub(super) async fn start(
        ctx: &ListenerCtx,
        endpoint: &crate::upstream::Endpoint,
        req: &Request,
        closing: bool,
        mut bufs: Buffers,
    ) -> Result<Exchange, (Failure, Buffers)> {
        let pooled = endpoint.raw.take();
        let reused = pooled.is_some();
        // A failed connect is tried once more, maybe on another endpoint, which the exchange then belongs to.
        let (endpoint, up) = match pooled {
            Some(s) => (endpoint, s),
            None => match ctx.cluster.connect_from(endpoint).await {
                Ok(reached) => reached,
                Err(e) => return Err((Failure::Connect(e), bufs)),
            },
        };
        bufs.to_client.clear();
        bufs.ubuf.clear();
        Ok(Exchange {
            up,
            endpoint: endpoint.addr,
            is_head: req.is_head,
            upgrade: req.upgrade,
            closing,
            reused,
            resend: reused && req.idempotent && req.streamed.is_none(),
            stage: Stage::Request {
                body: req.streamed.map(BodyEnd::new),
            },
            to_up: bufs.to_up,
            sent: 0,
            to_client: bufs.to_client,
            written: 0,
            filled: 0,
            ubuf: bufs.ubuf,
            started: Instant::now(),
            head_since: None,
            moved: Instant::now(),
        })
    }

    /// The buffers, for the connection's next exchange.
    pub(super) fn into_parts(self) -> (TcpStream, Buffers) {
        let bufs = Buffers {
            to_up: self.to_up,
            to_client: self.to_client,
            ubuf: self.ubuf,
        };
        (self.up, bufs)
    }

    /// When the request started.
    pub(super) fn started(&self) -> Instant {
        self.started
    }

    /// The client connection closes after this exchange.
    pub(super) fn closes_client(&self) -> bool {
        match &self.stage {
            Stage::Body { close_client, .. } => *close_client,
            // A failure: the connection goes on if the whole request was read.
            Stage::Request { body } => self.closing || body.is_some(),
            Stage::Head { body_unread } => self.closing || *body_unread,
        }
    }

    /// The client may still be sending a request body nobody reads: its connection needs a lingering close.
    pub(super) fn left_body_unread(&self) -> bool {
        match &self.stage {
            Stage::Request { body } => body.is_some(),
            Stage::Head { body_unread } => *body_unread,
            Stage::Body { unread, .. } => *unread,
        }
    }

    /// The upstream connection can carry another exchange.
    pub(super) fn reusable(&self) -> bool {
        matches!(
            self.stage,
            Stage::Body {
                reuse: true,
                done: true,
                ..
            }
        )
    }

    /// After [`Step::Tunnel`]: the head the client gets.
    pub(super) fn client_head(&self) -> &[u8] {
        &self.to_client[self.written..self.filled]
    }

    /// After [`Step::Tunnel`]: what the upstream sent past its head.
    pub(super) fn upstream_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.ubuf)
    }

    /// Carries the exchange on until the response has been passed on, something fails, or (`stop` given) a
    /// migration starts. `timer` is reset to the response-head deadline while the head is awaited, and to the
    /// stream idle deadline in the body stages; nobody else may poll it.
    pub(super) async fn drive(
        &mut self,
        client: &mut TcpStream,
        cbuf: &mut Vec<u8>,
        ctx: &ListenerCtx,
        mut stop: Option<&mut Wait<'_>>,
        mut timer: Pin<&mut Sleep>,
    ) -> Step {
        loop {
            let step = match self.stage {
                Stage::Request { .. } => self.request(client, cbuf, ctx, &mut stop, timer.as_mut()).await,
                Stage::Head { body_unread } => self.head(body_unread, ctx, &mut stop, timer.as_mut()).await,
                Stage::Body { .. } => self.body(client, ctx, &mut stop, timer.as_mut()).await,
            };
            if let Some(step) = step {
                return step;
            }
        }
    }

    /// The request stage: `None` once it is over (the stage is then [`Stage::Head`]).
    async fn request(
        &mut self,
        client: &mut TcpStream,
        cbuf: &mut Vec<u8>,
        ctx: &ListenerCtx,
        stop: &mut Option<&mut Wait<'_>>,
        mut timer: Pin<&mut Sleep>,
    ) -> Option<Step> {
        let Stage::Request { body } = &mut self.stage else {
            return None;
        };
        let mut idle = IdleWatch::new(ctx.cluster.stream_idle_timeout);
        loop {
            if self.sent < self.to_up.len() {
                match self.up.try_write(&self.to_up[self.sent..]) {
                    Ok(n) => {
                        self.sent += n;
                        self.moved = Instant::now();
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        let mut probe = [0u8; 1];
                        idle.arm(timer.as_mut(), self.moved);
                        tokio::select! {
                            biased;
                            _ = stopped(stop) => return Some(Step::Depart),
                            r = self.up.writable() => {
                                if let Err(e) = r {
                                    return Some(Step::Cut(Cut::UpstreamWrite(e)));
                                }
                            }
                            // The upstream says something (or closes) before taking the whole request.
                            _ = self.up.peek(&mut probe) => {
                                let unread = body.is_some();
                                self.moved = Instant::now();
                                if upstream_spoke(&self.up, &mut self.ubuf, client, ctx).await {
                                    self.enter_head(unread);
                                    return None;
                                }
                            }
                            _ = timer.as_mut(), if idle.on() => {
                                if idle.expired(timer.as_mut(), self.moved) {
                                    return Some(Step::Idle(IdleAt::UpstreamRead));
                                }
                            }
                        }
                    }
                    Err(e) if self.reused => {
                        // Closed while idle in the pool: the same request on a new connection.
                        tracing::trace!(error = %e, "pooled upstream connection closed; sending on a new one");
                        match crate::upstream::connect(self.endpoint, ctx.cluster.connect_timeout).await {
                            Ok(up) => self.up = up,
                            Err(e) => return Some(Step::Failed(Failure::Connect(e))),
                        }
                        (self.reused, self.resend, self.sent) = (false, false, 0);
                    }
                    Err(e) if body.is_none() && self.sent == 0 => {
                        return Some(Step::Failed(Failure::Exchange(
                            format!("writing the request: {e}").into(),
                        )));
                    }
                    Err(e) => {
                        // Part of the request went: whatever the upstream says next is the answer.
                        tracing::debug!(error = %e, "upstream stopped taking the request; reading its answer");
                        let unread = body.is_some();
                        self.enter_head(unread);
                        return None;
                    }
                }
                continue;
            }
            let Some(end) = body else {
                self.enter_head(false);
                return None;
            };
            if !cbuf.is_empty() {
                let (k, ended) = match end.feed(cbuf) {
                    Ok(fed) => fed,
                    Err(why) => return Some(Step::BadRequest(why)),
                };
                self.to_up.clear();
                self.to_up.extend(cbuf.drain(..k));
                (self.sent, self.reused) = (0, false);
                if ended {
                    *body = None;
                }
                continue;
            }
            cbuf.reserve(BODY_CHUNK);
            let mut probe = [0u8; 1];
            idle.arm(timer.as_mut(), self.moved);
            let got = tokio::select! {
                biased;
                _ = stopped(stop) => return Some(Step::Depart),
                r = client.read_buf(cbuf) => r,
                _ = self.up.peek(&mut probe) => {
                    self.moved = Instant::now();
                    if upstream_spoke(&self.up, &mut self.ubuf, client, ctx).await {
                        self.enter_head(true);
                        return None;
                    }
                    continue;
                }
                _ = timer.as_mut(), if idle.on() => {
                    if idle.expired(timer.as_mut(), self.moved) {
                        return Some(Step::Idle(IdleAt::RequestBody));
                    }
                    continue;
                }
            };
            match got {
                Ok(0) | Err(_) => return Some(Step::Cut(Cut::ClientGone)),
                Ok(n) => {
                    self.moved = Instant::now();
                    ctx.metrics.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    }

    fn enter_head(&mut self, body_unread: bool) {
        self.stage = Stage::Head { body_unread };
        self.head_since.get_or_insert_with(Instant::now);
    }

    /// The response-head stage: `None` once it is over (the stage is then [`Stage::Body`], or back to
    /// [`Stage::Request`] to send the request again on a new connection).
    async fn head(
        &mut self,
        body_unread: bool,
        ctx: &ListenerCtx,
        stop: &mut Option<&mut Wait<'_>>,
        mut timer: Pin<&mut Sleep>,
    ) -> Option<Step> {
        let since = *self.head_since.get_or_insert_with(Instant::now);
        timer
            .as_mut()
            .reset(tokio::time::Instant::from_std(since + ctx.cluster.request_timeout));
        loop {
            // Bytes may be here already: what came while the request was still going, or from the predecessor.
            if !self.ubuf.is_empty() {
                // Any byte of response, an informational one included, rules out sending the request again.
                self.resend = false;
                match self.parse_head(body_unread, ctx) {
                    Ok(Head::Incomplete) => {}
                    Ok(Head::Body) => return None,
                    Ok(Head::Tunnel) => return Some(Step::Tunnel),
                    Err(why) => return Some(Step::Failed(Failure::Exchange(why.into()))),
                }
            }
            self.ubuf.reserve(READ_ROOM);
            let got = tokio::select! {
                biased;
                _ = stopped(stop) => return Some(Step::Depart),
                _ = timer.as_mut() => return Some(Step::Failed(Failure::Timeout)),
                r = self.up.read_buf(&mut self.ubuf) => r,
            };
            let why = match got {
                Ok(0) => "the upstream closed before a complete response head".into(),
                Ok(_) => continue,
                Err(e) => format!("reading the response: {e}"),
            };
            if self.resend {
                tracing::trace!(error = %why, "reused upstream connection failed; retrying on a new one");
                match crate::upstream::connect(self.endpoint, ctx.cluster.connect_timeout).await {
                    Ok(up) => self.up = up,
                    Err(e) => return Some(Step::Failed(Failure::Connect(e))),
                }
                (self.reused, self.resend, self.sent) = (false, false, 0);
                self.stage = Stage::Request { body: None };
                return None;
            }
            return Some(Step::Failed(Failure::Exchange(why.into())));
        }
    }

    /// Parses the response head in `ubuf` if it is complete, and writes the client's head.
    fn parse_head(&mut self, body_unread: bool, ctx: &ListenerCtx) -> Result<Head, &'static str> {
        self.to_client.clear();
        let closing = self.closing || body_unread;
        let Some(parsed) = parse_response(&mut self.ubuf, self.is_head, self.upgrade, closing, &mut self.to_client)?
        else {
            return Ok(Head::Incomplete);
        };
        (self.written, self.filled) = (0, self.to_client.len());
        if parsed.framing == Framing::Tunnel {
            ctx.metrics.response(parsed.status, self.started.elapsed());
            self.ubuf.drain(..parsed.head_len);
            return Ok(Head::Tunnel);
        }
        // Framing errors in what came with the head are still the upstream's to answer for: nothing was sent
        // to the client yet.
        let mut end = BodyEnd::new(parsed.framing);
        let after = &self.ubuf[parsed.head_len..];
        let (k, done) = end.feed(after)?;
        ctx.metrics.response(parsed.status, self.started.elapsed());
        let extra = after.len() - k;
        self.to_client.extend_from_slice(&after[..k]);
        self.filled = self.to_client.len();
        self.ubuf.clear();
        self.stage = Stage::Body {
            end,
            done,
            until_close: parsed.framing == Framing::Close,
            reuse: parsed.keep_alive && extra == 0 && !body_unread,
            close_client: parsed.close || body_unread,
            unread: body_unread,
        };
        Ok(Head::Body)
    }

    /// The response-body stage, to its end.
    async fn body(
        &mut self,
        client: &mut TcpStream,
        ctx: &ListenerCtx,
        stop: &mut Option<&mut Wait<'_>>,
        mut timer: Pin<&mut Sleep>,
    ) -> Option<Step> {
        let Stage::Body {
            end,
            done,
            until_close,
            reuse,
            ..
        } = &mut self.stage
        else {
            return None;
        };
        let mut idle = IdleWatch::new(ctx.cluster.stream_idle_timeout);
        loop {
            if self.written < self.filled {
                match client.try_write(&self.to_client[self.written..self.filled]) {
                    Ok(n) => {
                        self.written += n;
                        self.moved = Instant::now();
                        ctx.metrics.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        idle.arm(timer.as_mut(), self.moved);
                        tokio::select! {
                            biased;
                            _ = stopped(stop) => return Some(Step::Depart),
                            r = client.writable() => {
                                if let Err(e) = r {
                                    return Some(Step::Cut(Cut::Client(e)));
                                }
                            }
                            _ = timer.as_mut(), if idle.on() => {
                                if idle.expired(timer.as_mut(), self.moved) {
                                    return Some(Step::Idle(IdleAt::ClientRead));
                                }
                            }
                        }
                    }
                    Err(e) => return Some(Step::Cut(Cut::Client(e))),
                }
                continue;
            }
            if *done {
                return Some(Step::Done);
            }
            let want = end.want();
            if self.to_client.len() < want {
                self.to_client.resize(want, 0);
            }
            idle.arm(timer.as_mut(), self.moved);
            let got = tokio::select! {
                biased;
                _ = stopped(stop) => return Some(Step::Depart),
                r = self.up.read(&mut self.to_client[..want]) => r,
                _ = timer.as_mut(), if idle.on() => {
                    if idle.expired(timer.as_mut(), self.moved) {
                        return Some(Step::Idle(IdleAt::ResponseBody));
                    }
                    continue;
                }
            };
            self.moved = Instant::now();
            let n = match got {
                Ok(0) if *until_close => {
                    (*done, *reuse) = (true, false);
                    continue;
                }
                Ok(0) => return Some(Step::Cut(Cut::Truncated)),
                Ok(n) => n,
                Err(e) => return Some(Step::Cut(Cut::Upstream(e))),
            };
            let (k, ended) = match end.feed(&self.to_client[..n]) {
                Ok(fed) => fed,
                Err(why) => return Some(Step::Cut(Cut::Framing(why))),
            };
            if k < n {
                // Bytes after the chunked body's end: the upstream is not speaking HTTP/1.1 properly.
                *reuse = false;
            }
            (self.written, self.filled, *done) = (0, k, ended);
        }
    }

    /// Takes the exchange out of the runtime for a migration, with the client connection and `cbuf` (client bytes
    /// read and not forwarded).
    pub(super) fn detach(
        self,
        client: TcpStream,
        cbuf: Vec<u8>,
        listener: std::sync::Arc<str>,
    ) -> std::io::Result<Detached> {
        let resume = Resume {
            endpoint: self.endpoint,
            is_head: self.is_head,
            upgrade: self.upgrade,
            closing: self.closing,
            waited_ms: self
                .head_since
                .map_or(0, |t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
            stage: self.stage,
        };
        let state = serde_json::to_vec(&resume).map_err(std::io::Error::other)?;
        let to_up = self.to_up[self.sent.min(self.to_up.len())..].to_vec();
        let to_client = self.to_client[self.written..self.filled].to_vec();
        Ok(Detached {
            kind: ConnKind::Exchange,
            listener,
            fds: vec![stream_fd(client)?, stream_fd(self.up)?],
            buffers: vec![state, cbuf, to_up, to_client, self.ubuf],
        })
    }

    /// The exchange of a [`ConnKind::Exchange`] connection (handed over by the predecessor, or given back by the
    /// successor): the client connection, its unforwarded bytes, and the exchange to carry on.
    pub(super) fn restore(
        fds: Vec<std::os::fd::OwnedFd>,
        buffers: Vec<Vec<u8>>,
    ) -> Result<(TcpStream, Vec<u8>, Exchange), &'static str> {
        let [client, up]: [std::os::fd::OwnedFd; 2] = fds.try_into().map_err(|_| "an exchange has two sockets")?;
        let [state, cbuf, to_up, to_client, ubuf]: [Vec<u8>; 5] =
            buffers.try_into().map_err(|_| "an exchange has five buffers")?;
        let resume: Resume = serde_json::from_slice(&state).map_err(|_| "malformed exchange state")?;
        let valid = match &resume.stage {
            Stage::Request { body } => body.as_ref().is_none_or(BodyEnd::is_valid),
            Stage::Head { .. } => true,
            Stage::Body { end, .. } => end.is_valid(),
        };
        if !valid {
            return Err("impossible body state");
        }
        let (Ok(client), Ok(up)) = (fd_stream(client), fd_stream(up)) else {
            return Err("unusable sockets");
        };
        let waited = Duration::from_millis(resume.waited_ms);
        let now = Instant::now();
        let since = now.checked_sub(waited).unwrap_or(now);
        let filled = to_client.len();
        let exchange = Exchange {
            up,
            endpoint: resume.endpoint,
            is_head: resume.is_head,
            upgrade: resume.upgrade,
            closing: resume.closing,
            reused: false,
            resend: false,
            head_since: matches!(resume.stage, Stage::Head { .. }).then_some(since),
            stage: resume.stage,
            to_up,
            sent: 0,
            to_client,
            written: 0,
            filled,
            ubuf,
            started: since,
            moved: now,
        };
        Ok((client, cbuf, exchange))
    }
}

/// The upstream sent bytes (or closed) while the request is still going: reads them. A `100 Continue` (the
/// answer to `Expect: 100-continue`) is passed on to the client and the request goes on (`false`); other
/// informational responses are dropped. Anything else is the response, early (`true`: on to its head).
async fn upstream_spoke(up: &TcpStream, ubuf: &mut Vec<u8>, client: &mut TcpStream, ctx: &ListenerCtx) -> bool {
    ubuf.reserve(READ_ROOM);
    match up.try_read_buf(ubuf) {
        Ok(0) => return true,
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
        Err(_) => return true,
    }
    loop {
        match interim(ubuf) {
            Ok(Some((n, is_continue))) => {
                ubuf.drain(..n);
                if is_continue {
                    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
                    if client.write_all(CONTINUE).await.is_err() {
                        return true;
                    }
                    ctx.metrics
                        .bytes_out
                        .fetch_add(CONTINUE.len() as u64, Ordering::Relaxed);
                }
            }
            // Part of a head: wait for the rest while the request goes on.
            Ok(None) if !ubuf.windows(4).any(|w| w == b"\r\n\r\n") && ubuf.len() < READ_ROOM => {
                return false;
            }
            Ok(None) | Err(_) => return true,
        }
    }
}

/// The stream idle timeout of one body stage, on the exchange's timer: armed (set to the last byte moved plus the
/// timeout) before the stage first waits, and moved on lazily when it fires after bytes moved meanwhile, so that a
/// byte moved costs a clock read, not a timer update.
struct IdleWatch {
    /// `None`: off (`stream_idle_timeout: 0s`).
    timeout: Option<Duration>,
    armed: bool,
}

impl IdleWatch {
    fn new(timeout: Duration) -> IdleWatch {
        IdleWatch {
            timeout: (!timeout.is_zero()).then_some(timeout),
            armed: false,
        }
    }

    fn on(&self) -> bool {
        self.timeout.is_some()
    }

    /// Before a wait: sets `timer` to the idle deadline, once per stage (it may hold another deadline until then).
    fn arm(&mut self, timer: Pin<&mut Sleep>, moved: Instant) {
        if let (Some(timeout), false) = (self.timeout, self.armed) {
            timer.reset(tokio::time::Instant::from_std(moved + timeout));
            self.armed = true;
        }
    }

    /// `timer` fired: whether the stream was idle for the whole timeout; if not, `timer` is moved on to the new
    /// deadline.
    fn expired(&self, timer: Pin<&mut Sleep>, moved: Instant) -> bool {
        let Some(timeout) = self.timeout else { return false };
        let deadline = moved + timeout;
        if Instant::now() >= deadline {
            return true;
        }
        timer.reset(tokio::time::Instant::from_std(deadline));
        false
    }
}

/// Resolves when `stop` fires; never without one.
async fn stopped(stop: &mut Option<&mut Wait<'_>>) {
    match stop {
        Some(wait) => (&mut **wait).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    /// Two connected TCP sockets: what a handed-over exchange carries (client, upstream).
    fn sockets() -> Vec<OwnedFd> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (up, _) = listener.accept().expect("accept");
        vec![OwnedFd::from(client), OwnedFd::from(up)]
    }

    fn state(stage: Stage, waited_ms: u64) -> Vec<u8> {
        let resume = Resume {
            endpoint: "127.0.0.1:9".parse().expect("addr"),
            is_head: false,
            upgrade: false,
            closing: true,
            waited_ms,
            stage,
        };
        serde_json::to_vec(&resume).expect("json")
    }

    #[tokio::test]
    async fn an_exchange_survives_detach_and_restore() {
        let mut end = BodyEnd::new(Framing::Chunked);
        end.feed(b"10\r\n0123").expect("valid");
        let stage = Stage::Body {
            end,
            done: false,
            until_close: false,
            reuse: true,
            close_client: false,
            unread: false,
        };
        let buffers = vec![
            state(stage.clone(), 0),
            b"GET /next HTTP/1.1\r\n".to_vec(),
            Vec::new(),
            b"456789abcdef\r\n".to_vec(),
            Vec::new(),
        ];
        let (client, cbuf, exchange) = Exchange::restore(sockets(), buffers.clone()).expect("restore");
        assert!(exchange.closing && !exchange.resend && !exchange.reused);
        let detached = exchange.detach(client, cbuf, "web".into()).expect("detach");
        assert_eq!(detached.kind, ConnKind::Exchange);
        assert_eq!(detached.fds.len(), 2);
        assert_eq!(detached.buffers[1..], buffers[1..]);
        let resumed: Resume = serde_json::from_slice(&detached.buffers[0]).expect("state");
        assert_eq!(resumed.stage, stage);

        // The time already spent waiting for the response head travels too.
        let waiting = vec![
            state(Stage::Head { body_unread: false }, 1500),
            vec![],
            vec![],
            vec![],
            b"HTTP/1.1 2".to_vec(),
        ];
        let (client, cbuf, exchange) = Exchange::restore(sockets(), waiting).expect("restore");
        let detached = exchange.detach(client, cbuf, "web".into()).expect("detach");
        let resumed: Resume = serde_json::from_slice(&detached.buffers[0]).expect("state");
        assert!(resumed.waited_ms >= 1500, "{}", resumed.waited_ms);
        assert_eq!(detached.buffers[4], b"HTTP/1.1 2");
    }

    #[tokio::test]
    async fn malformed_exchanges_are_refused() {
        let good = || state(Stage::Request { body: None }, 0);
        let five = |first: Vec<u8>| vec![first, vec![], vec![], vec![], vec![]];
        assert!(Exchange::restore(sockets(), five(good())).is_ok());
        let mut one = sockets();
        one.pop();
        assert_eq!(
            Exchange::restore(one, five(good())).err(),
            Some("an exchange has two sockets")
        );
        assert_eq!(
            Exchange::restore(sockets(), vec![good()]).err(),
            Some("an exchange has five buffers")
        );
        assert_eq!(
            Exchange::restore(sockets(), five(b"{\"stage\":".to_vec())).err(),
            Some("malformed exchange state")
        );
        let impossible = br#"{"endpoint":"127.0.0.1:9","is_head":false,"upgrade":false,"closing":false,"waited_ms":0,
            "stage":{"Body":{"end":{"Chunked":{"state":"Size","size":0,"digits":16,"line":0}},"done":false,
            "until_close":false,"reuse":true,"close_client":false}}}"#;
        assert_eq!(
            Exchange::restore(sockets(), five(impossible.to_vec())).err(),
            Some("impossible body state")
        );
    }

    #[test]
    fn spare_buffers_are_reused_bounded_and_never_kept_when_large() {
        // A thread of its own: the spares are per thread.
        std::thread::spawn(|| {
            let (cbuf, bufs) = (Buffers::take_read(), Buffers::take());
            assert_eq!(cbuf.capacity(), 0, "no spare yet");
            let mut cbuf = cbuf;
            cbuf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let cap = cbuf.capacity();
            bufs.spare(cbuf);
            let again = Buffers::take_read();
            assert_eq!(again.capacity(), cap, "the spare comes back");
            assert!(again.is_empty(), "cleared");

            Buffers::default().spare(vec![0; SPARE_MOST + 1]);
            assert_eq!(Buffers::take_read().capacity(), 0, "a grown buffer is not kept");

            for _ in 0..SPARES_KEPT + 10 {
                Buffers::default().spare(Vec::with_capacity(16));
            }
            let kept = std::iter::from_fn(|| Some(Buffers::take_read().capacity()))
                .take_while(|&c| c > 0)
                .count();
            assert_eq!(kept, SPARES_KEPT);
        })
        .join()
        .expect("test thread");
    }
}
