//! The HTTP/1.1 proxy engine for the common case, in one task per client connection.
//!
//! A request is read whole (head and a body of at most [`MAX_BUFFERED_BODY`]), rewritten in one buffer, and
//! written to a pooled upstream connection owned by this task for the exchange. The response head is parsed and
//! rewritten, and its body is passed through with its own framing (`Content-Length`, chunked or until close), so
//! a small response costs one read and one write on each side and no other task.
//!
//! Anything else leaves this path before a byte of it is forwarded: the connection goes on under hyper
//! ([`crate::proxy::http`]) with the bytes read so far. That covers requests that are malformed (hyper answers 400 or
//! 431), chunked or large request bodies (streamed by hyper), `Expect`, `Upgrade`, `CONNECT`, absolute-form
//! targets, HTTP/1.0 clients and fields named in `Connection`.
//!
//! Between two exchanges nothing of the connection is anywhere but in the client buffer, so a migration hands the
//! connection over there, with the bytes read and not forwarded (even a whole pipelined request).

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proxy::http::fields::{tokens, Field};
use crate::proxy::http::ConnEnv;
use crate::proxy::io::ClientIo;
use crate::telemetry::metrics::ListenerMetrics;
use crate::upstream::pool::MAX_IDLE;
use crate::upstream::{Endpoint, Failure};

/// Largest request or response head handled here: hyper's limit, which answers a larger request head 431.
const MAX_HEAD: usize = crate::proxy::http::MAX_REQUEST_HEAD;
/// Largest request body read whole before it is forwarded; a larger one is streamed by hyper.
const MAX_BUFFERED_BODY: usize = 64 * 1024;
/// Request fields parsed here; a request with more goes to hyper (which allows 100).
const REQUEST_FIELDS: usize = 64;
/// Response fields accepted from an upstream.
const RESPONSE_FIELDS: usize = 100;
/// Room kept free in a buffer before each read.
const READ_ROOM: usize = 8 * 1024;
/// Read size while relaying a response body.
const BODY_CHUNK: usize = 64 * 1024;

/// Idle upstream connections of one endpoint, ready for an exchange.
#[derive(Default)]
pub struct RawIdle {
    streams: Mutex<Vec<TcpStream>>,
}

impl RawIdle {
    /// An idle connection the upstream has not closed (as far as the reactor knows, without a syscall in the
    /// usual case).
    fn take(&self) -> Option<TcpStream> {
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

    fn put(&self, stream: TcpStream) {
        if let Ok(mut idle) = self.streams.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(stream);
            }
        }
    }
}

/// Serves HTTP/1 on an accepted connection whose first bytes (`read`) are not an HTTP/2 preface.
/// `may_migrate: false` means the successor refused it once already: serve on, closing after the next response.
pub async fn serve(client: TcpStream, read: Vec<u8>, peer: SocketAddr, env: ConnEnv, may_migrate: bool) {
    tokio::select! {
        biased;
        _ = run(client, read, peer, &env, may_migrate) => {}
        _ = env.hard_stop.wait() => {}
    }
}

/// A request ready to forward: its rewritten head is in the output buffer.
#[derive(Debug, PartialEq)]
struct Request {
    /// Bytes of the client buffer its head takes.
    head_len: usize,
    /// Bytes of the client buffer it takes, head and body.
    len: usize,
    /// `HEAD`: the response has no body whatever its fields say.
    is_head: bool,
    /// Safe to send again if a reused upstream connection closed before answering (RFC 9110 §9.2.2).
    idempotent: bool,
    /// The client asked to close after the response.
    close: bool,
}

#[derive(Debug, PartialEq)]
enum Parsed {
    Ready(Request),
    /// More bytes needed.
    Partial,
    /// Not for this path: hyper serves the connection from here on.
    Elsewhere,
}

async fn run(mut client: TcpStream, mut cbuf: Vec<u8>, peer: SocketAddr, env: &ConnEnv, mut may_migrate: bool) {
    let metrics = &env.proxy.metrics;
    let cluster = &env.proxy.cluster;
    let forwarded_for = peer.ip().to_string();
    let mut out = Vec::with_capacity(1024);
    let mut ubuf = Vec::new();
    let mut head = Vec::with_capacity(1024);
    let migration = env.handover.requested();
    tokio::pin!(migration);
    let timer = tokio::time::sleep(cluster.request_timeout);
    tokio::pin!(timer);
    'conn: loop {
        if may_migrate && env.handover.is_requested() {
            // Between two exchanges: everything not forwarded is in `cbuf`, and travels with the socket.
            match crate::proxy::http::depart(env, client, std::mem::take(&mut cbuf)).await {
                None => return,
                Some((back, bytes)) => {
                    (client, cbuf) = (back, bytes);
                    may_migrate = false;
                }
            }
        }
        let req = loop {
            out.clear();
            match parse_request(&cbuf, &forwarded_for, &mut out) {
                Parsed::Ready(r) => break r,
                Parsed::Elsewhere => {
                    let io = ClientIo::new(Bytes::from(cbuf), client, metrics.clone());
                    return crate::proxy::http::serve_h1(io, peer, env.clone(), may_migrate).await;
                }
                Parsed::Partial => {}
            }
            cbuf.reserve(READ_ROOM);
            let got = tokio::select! {
                biased;
                r = client.read_buf(&mut cbuf) => r,
                _ = &mut migration, if may_migrate => continue 'conn,
            };
            match got {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    metrics.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        };
        out.extend_from_slice(&cbuf[req.head_len..req.len]);
        cbuf.drain(..req.len);
        let start = Instant::now();
        let closing = req.close || !may_migrate || env.closing.load(Ordering::Relaxed);
        let endpoint = cluster.pick();
        timer
            .as_mut()
            .reset(tokio::time::Instant::from_std(start) + cluster.request_timeout);
        let exchanged = tokio::select! {
            biased;
            r = exchange(endpoint, cluster.connect_timeout, &out, &req, closing, &mut ubuf, &mut head) => r,
            _ = &mut timer => Err(Failure::Timeout),
        };
        let answer = match exchanged {
            Ok(ok) => ok,
            Err(failure) => {
                let (status, body) = failure.answer(cluster, endpoint.addr, metrics);
                metrics.response(status, start.elapsed());
                out.clear();
                our_response(&mut out, status, body, closing);
                if write(&mut client, &out, metrics).await.is_err() || closing {
                    return shutdown(client).await;
                }
                continue;
            }
        };
        metrics.response(answer.head.status, start.elapsed());
        let close_client = answer.head.close;
        match relay_body(answer, &mut ubuf, &mut head, &mut client, metrics).await {
            Ok(Some(up)) => endpoint.raw.put(up),
            Ok(None) => {}
            Err(()) => return, // one side failed mid-body: nothing else can be said on this connection
        }
        if close_client {
            return shutdown(client).await;
        }
    }
}

async fn shutdown(mut client: TcpStream) {
    let _ = client.shutdown().await;
}

async fn write(client: &mut TcpStream, bytes: &[u8], metrics: &ListenerMetrics) -> std::io::Result<()> {
    client.write_all(bytes).await?;
    metrics.bytes_out.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// A short plain-text response of ours.
fn our_response(out: &mut Vec<u8>, status: u16, body: &str, close: bool) {
    let reason = canonical_reason(status);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" },
        )
        .as_bytes(),
    );
}

/// Sends the request and reads the response head into `ubuf`, writing the client's head to `head`. A reused
/// connection that turns out closed before answering is replaced by a new one once, if nothing can have been
/// processed twice: the write failed, or the request is idempotent and not a byte of response came.
async fn exchange(
    endpoint: &Endpoint,
    connect_timeout: Duration,
    request: &[u8],
    req: &Request,
    closing: bool,
    ubuf: &mut Vec<u8>,
    head: &mut Vec<u8>,
) -> Result<Answer, Failure> {
    let mut pooled = endpoint.raw.take();
    loop {
        let reused = pooled.is_some();
        let mut up = match pooled.take() {
            Some(s) => s,
            None => crate::upstream::connect(endpoint.addr, connect_timeout)
                .await
                .map_err(Failure::Connect)?,
        };
        if let Err(e) = up.write_all(request).await {
            if reused {
                continue;
            }
            return Err(Failure::Exchange(format!("writing the request: {e}").into()));
        }
        ubuf.clear();
        // Any byte of response, an informational one included, rules out sending the request again.
        let mut answered = false;
        loop {
            ubuf.reserve(READ_ROOM);
            let n = match up.read_buf(ubuf).await {
                Ok(n) => n,
                Err(e) if !answered && reused && req.idempotent => {
                    tracing::trace!(error = %e, "reused upstream connection failed; retrying on a new one");
                    break;
                }
                Err(e) => return Err(Failure::Exchange(format!("reading the response: {e}").into())),
            };
            if n == 0 {
                if !answered && reused && req.idempotent {
                    break;
                }
                return Err(Failure::Exchange(
                    "the upstream closed before a complete response head".into(),
                ));
            }
            answered = true;
            head.clear();
            match parse_response(ubuf, req.is_head, closing, head) {
                Ok(Some(parsed)) => {
                    // Framing errors in what came with the head are still the upstream's to answer for:
                    // nothing was sent to the client yet.
                    let mut body = BodyEnd::new(parsed.framing);
                    let first = body
                        .feed(&ubuf[parsed.head_len..])
                        .map_err(|why| Failure::Exchange(why.into()))?;
                    return Ok(Answer {
                        up,
                        head: parsed,
                        body,
                        first,
                    });
                }
                Ok(None) => {}
                Err(why) => return Err(Failure::Exchange(why.into())),
            }
        }
    }
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// No body (a `HEAD` request, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes: the client connection closes too.
    Close,
}

/// A parsed upstream response head (the informational responses before it dropped from `ubuf`).
#[derive(Debug, PartialEq)]
struct ResponseHead {
    /// Bytes of `ubuf` it takes.
    head_len: usize,
    status: u16,
    framing: Framing,
    /// The upstream keeps the connection open after it.
    keep_alive: bool,
    /// The client connection closes after it.
    close: bool,
}

/// Parses the response head at the start of `buf` (`Ok(None)`: incomplete) and writes the head the client gets
/// to `out`: the upstream's, as HTTP/1.1, with hop-by-hop fields removed (those named in `Connection` too),
/// `Transfer-Encoding` kept when the body is passed through with it, and `Connection: close` if `closing` or the
/// body ends with the connection. Informational (1xx) responses are removed from `buf`, as hyper's client does.
fn parse_response(
    buf: &mut Vec<u8>,
    head_request: bool,
    closing: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, &'static str> {
    loop {
        let mut fields = [MaybeUninit::<httparse::Header>::uninit(); RESPONSE_FIELDS];
        let mut resp = httparse::Response::new(&mut []);
        let head_len =
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut fields) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
                Ok(httparse::Status::Partial) => return Err("response head too large"),
                Err(_) => return Err("malformed response head"),
            };
        let status = resp.code.unwrap_or(0);
        if status == 101 {
            return Err("101 Switching Protocols to a request that asked for no upgrade");
        }
        if (100..200).contains(&status) {
            buf.drain(..head_len);
            continue;
        }
        let mut keep_alive = resp.version == Some(1);
        let (mut length, mut chunked, mut named) = (None, None, false);
        for f in resp.headers.iter() {
            match Field::of(f.name) {
                Field::Connection => {
                    for token in tokens(f.value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            keep_alive = false;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            keep_alive |= resp.version == Some(0);
                        } else {
                            named = true;
                        }
                    }
                }
                Field::ContentLength => {
                    let n = content_length(f.value).ok_or("invalid Content-Length")?;
                    if length.is_some_and(|m| m != n) {
                        return Err("conflicting Content-Length");
                    }
                    length = Some(n);
                }
                Field::TransferEncoding => {
                    chunked = Some(
                        tokens(f.value)
                            .last()
                            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
                    );
                }
                _ => {}
            }
        }
        let framing = if head_request || status == 204 || status == 304 {
            Framing::Empty
        } else {
            match (chunked, length) {
                (Some(true), _) => Framing::Chunked,
                (Some(false), _) | (None, None) => Framing::Close,
                (None, Some(n)) => Framing::Length(n),
            }
        };
        let close = closing || framing == Framing::Close;
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(&three_digits(status));
        out.push(b' ');
        match resp.reason {
            Some(r) if !r.is_empty() => out.extend_from_slice(r.as_bytes()),
            _ => out.extend_from_slice(canonical_reason(status).as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
        let passed_through = matches!(framing, Framing::Chunked | Framing::Close);
        for f in resp.headers.iter() {
            let keep = match Field::of(f.name) {
                Field::ContentLength => !passed_through,
                // With a body passed through as it is, or none (HEAD, 304: the fields a GET would get).
                Field::TransferEncoding => true,
                Field::Connection | Field::HopByHop | Field::Upgrade => false,
                _ if named => !connection_names(resp.headers, f.name),
                _ => true,
            };
            if keep {
                push_field(out, f.name.as_bytes(), f.value);
            }
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        return Ok(Some(ResponseHead {
            head_len,
            status,
            framing,
            keep_alive: keep_alive && framing != Framing::Close,
            close,
        }));
    }
}

/// Whether a `Connection` field of `fields` names `name`.
fn connection_names(fields: &[httparse::Header], name: &str) -> bool {
    fields
        .iter()
        .filter(|f| Field::of(f.name) == Field::Connection)
        .flat_map(|f| tokens(f.value))
        .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// A status code (100..=999) as three ASCII digits.
fn three_digits(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

fn canonical_reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// An upstream response whose head arrived: the connection, the parsed head, and how its body ends.
struct Answer {
    up: TcpStream,
    head: ResponseHead,
    body: BodyEnd,
    /// Of the bytes read past the head: how many are body, and whether the body ends there.
    first: (usize, bool),
}

/// Where a response body ends, fed its bytes as they arrive.
#[derive(Debug)]
enum BodyEnd {
    Empty,
    /// Bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

impl BodyEnd {
    fn new(framing: Framing) -> BodyEnd {
        match framing {
            Framing::Empty => BodyEnd::Empty,
            Framing::Length(n) => BodyEnd::Length(n),
            Framing::Chunked => BodyEnd::Chunked(ChunkedDecoder::default()),
            Framing::Close => BodyEnd::Close,
        }
    }

    /// Consumes `bytes` up to the end of the body: how many belong to it, and whether it ended.
    fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
        match self {
            BodyEnd::Empty => Ok((0, true)),
            BodyEnd::Length(left) => {
                let k = usize::try_from(*left).unwrap_or(usize::MAX).min(bytes.len());
                *left -= k as u64;
                Ok((k, *left == 0))
            }
            BodyEnd::Chunked(decoder) => decoder.feed(bytes),
            BodyEnd::Close => Ok((bytes.len(), false)),
        }
    }

    /// The most bytes worth reading next (never past a known length).
    fn want(&self) -> usize {
        match self {
            BodyEnd::Length(left) => usize::try_from(*left).unwrap_or(usize::MAX).min(BODY_CHUNK),
            _ => BODY_CHUNK,
        }
    }
}

/// Writes the client head (`out`) and the response body: `Ok(Some)` gives back the upstream connection if it
/// can carry another exchange; `Err` if either side failed part-way (the client connection must close).
async fn relay_body(
    answer: Answer,
    ubuf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    client: &mut TcpStream,
    metrics: &ListenerMetrics,
) -> Result<Option<TcpStream>, ()> {
    let Answer {
        mut up,
        head,
        mut body,
        first: (taken, mut done),
    } = answer;
    let after = &ubuf[head.head_len..];
    let extra = after.len() - taken;
    out.extend_from_slice(&after[..taken]);
    write(client, out, metrics).await.map_err(drop)?;
    if !done {
        ubuf.clear();
        ubuf.resize(BODY_CHUNK, 0);
        while !done {
            let n = up.read(&mut ubuf[..body.want()]).await.map_err(drop)?;
            if n == 0 {
                return if head.framing == Framing::Close {
                    Ok(None)
                } else {
                    Err(())
                };
            }
            let (k, end) = body.feed(&ubuf[..n]).map_err(drop)?;
            write(client, &ubuf[..k], metrics).await.map_err(drop)?;
            if k < n {
                // Bytes after the chunked body's end: the upstream is not speaking HTTP/1.1 properly.
                return Ok(None);
            }
            done = end;
        }
        ubuf.truncate(0);
    }
    Ok((head.keep_alive && extra == 0).then_some(up))
}

/// Finds the end of a chunked body passed through as it is (RFC 9112 §7.1), trailers included.
#[derive(Debug, Default)]
struct ChunkedDecoder {
    state: ChunkState,
    /// Chunk size read so far, or bytes of chunk data left.
    size: u64,
    digits: u8,
    /// Bytes of the current size-line extension or trailer line.
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Longest chunk extension or trailer line accepted.
const MAX_CHUNK_LINE: usize = 16 * 1024;

impl ChunkedDecoder {
    /// Consumes `bytes` up to the end of the body: how many belong to it, and whether it ended.
    fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() && self.state != Done {
            if self.state == Data {
                let k = usize::try_from(self.size).unwrap_or(usize::MAX).min(bytes.len() - i);
                i += k;
                self.size -= k as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err("chunk size too large");
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err("bare LF in a chunk extension"),
                (Extension, _) => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err("chunk extension too long");
                    }
                    Extension
                }
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    self.line = 0;
                    if self.size == 0 {
                        TrailerStart
                    } else {
                        Data
                    }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart | Trailer, b'\n') => return Err("bare LF in a trailer"),
                (Trailer, b'\r') => TrailerLf,
                (TrailerStart | Trailer, _) => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err("trailer line too long");
                    }
                    Trailer
                }
                (TrailerLf, b'\n') => {
                    self.line = 0;
                    TrailerStart
                }
                (EndLf, b'\n') => Done,
                _ => return Err("malformed chunked body"),
            };
        }
        Ok((i, self.state == Done))
    }
}

/// A `Content-Length` value: digits only.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Bytes of an origin-form target forwarded as they are: unreserved, sub-delims, `:@/?%`. Anything else (a
/// `#`, a quote, a non-ASCII byte) goes the strict way, through hyper.
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Parses the request at the start of `buf` and, if this engine serves it, writes its rewritten head to `out`:
/// origin-form target, HTTP/1.1, hop-by-hop fields removed, `X-Forwarded-For` extended with `forwarded_for`.
fn parse_request(buf: &[u8], forwarded_for: &str, out: &mut Vec<u8>) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; REQUEST_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        // Too large, malformed, too many fields: hyper answers.
        _ => return Parsed::Elsewhere,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Elsewhere;
    };
    if method == "CONNECT" || !target.starts_with('/') || !target.bytes().all(plain_target_byte) {
        return Parsed::Elsewhere;
    }
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut hosts, mut length, mut close, mut prior) = (0, None, false, None);
    for f in req.headers.iter() {
        match Field::of(f.name) {
            Field::Other => {}
            Field::Host => hosts += 1,
            Field::ContentLength => match (length, content_length(f.value)) {
                (None, Some(n)) => length = Some(n),
                _ => return Parsed::Elsewhere,
            },
            Field::TransferEncoding | Field::Upgrade | Field::Expect => return Parsed::Elsewhere,
            Field::Connection => {
                for token in tokens(f.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        return Parsed::Elsewhere; // names fields to remove: the general path
                    }
                }
                continue;
            }
            Field::ForwardedFor if prior.is_none() => {
                prior = Some(f.value);
                continue;
            }
            Field::ForwardedFor => return Parsed::Elsewhere,
            Field::HopByHop => continue,
        }
        push_field(out, f.name.as_bytes(), f.value);
    }
    if hosts != 1 {
        return Parsed::Elsewhere;
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = prior.filter(|p| !p.trim_ascii().is_empty()) {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(forwarded_for.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    let body = match length {
        Some(n) if n > MAX_BUFFERED_BODY as u64 => return Parsed::Elsewhere,
        Some(n) => n as usize,
        None => 0,
    };
    if buf.len() < head_len + body {
        return Parsed::Partial;
    }
    Parsed::Ready(Request {
        head_len,
        len: head_len + body,
        is_head: method == "HEAD",
        idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"),
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &str) -> (Parsed, String) {
        let mut out = Vec::new();
        let parsed = parse_request(raw.as_bytes(), "10.0.0.9", &mut out);
        (parsed, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn a_plain_request_is_rewritten_in_one_pass() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nTE: trailers\r\n\
                   X-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\n\r\nGET /next";
        let (parsed, out) = request(raw);
        let head_len = raw.find("GET /next").expect("next");
        assert_eq!(
            parsed,
            Parsed::Ready(Request {
                head_len,
                len: head_len,
                is_head: false,
                idempotent: true,
                close: false
            })
        );
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nx-forwarded-for: 1.2.3.4, 10.0.0.9\r\n\r\n"
        );
    }

    #[test]
    fn a_small_body_is_read_whole_before_forwarding() {
        let raw = "POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhel";
        assert_eq!(request(raw).0, Parsed::Partial);
        let raw = format!("{raw}lo");
        let Parsed::Ready(r) = request(&raw).0 else {
            panic!("not ready")
        };
        assert_eq!((r.len, r.idempotent, r.close), (raw.len(), false, true));
        assert_eq!(r.len - r.head_len, 5);
    }

    #[test]
    fn everything_unusual_goes_to_hyper() {
        for raw in [
            "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            "GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nab",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: x-private\r\nX-Private: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: a\r\nX-Forwarded-For: b\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(request(raw).0, Parsed::Elsewhere, "{raw:?}");
        }
        let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..REQUEST_FIELDS {
            many.push_str(&format!("X-{i}: {i}\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(request(&many).0, Parsed::Elsewhere);
        let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}", "a".repeat(MAX_HEAD));
        assert_eq!(request(&huge).0, Parsed::Elsewhere);
    }

    fn response(raw: &str, head_request: bool, closing: bool) -> (Result<Option<ResponseHead>, &'static str>, String) {
        let mut buf = raw.as_bytes().to_vec();
        let mut out = Vec::new();
        let parsed = parse_response(&mut buf, head_request, closing, &mut out);
        (parsed, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing = |raw: &str, head: bool| response(raw, head, false).0.ok().flatten().map(|h| h.framing);
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
            Some(Framing::Length(3))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            Some(Framing::Empty)
        );
        assert_eq!(framing("HTTP/1.1 204 No Content\r\n\r\n", false), Some(Framing::Empty));
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false),
            Some(Framing::Empty)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Some(Framing::Chunked)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Some(Framing::Close)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n", false), Some(Framing::Close));
        assert_eq!(framing("HTTP/1.1 200 OK\r\nContent-Len", false), None);
        assert!(response(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            false,
            false
        )
        .0
        .is_err());
        assert!(response("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false, false)
            .0
            .is_err());
        assert!(response("HTTP/1.1 101 Switching Protocols\r\n\r\n", false, false)
            .0
            .is_err());
        assert!(response("NOT HTTP\r\n\r\n", false, false).0.is_err());
    }

    #[test]
    fn response_head_is_rewritten() {
        let raw = "HTTP/1.1 200 Fine\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
                   Content-Length: 2\r\nX-App: a\r\n\r\nok";
        let (parsed, out) = response(raw, false, false);
        let head = parsed.expect("valid").expect("complete");
        assert_eq!(out, "HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nX-App: a\r\n\r\n");
        assert!(head.keep_alive && !head.close);
        assert_eq!(head.head_len, raw.len() - 2);

        let (parsed, out) = response("HTTP/1.0 200 \r\nContent-Length: 2\r\n\r\nok", false, true);
        let head = parsed.expect("valid").expect("complete");
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\n");
        assert!(!head.keep_alive && head.close);

        let (parsed, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            false,
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(parsed.expect("valid").expect("complete").keep_alive);

        // HEAD: no body, and the fields a GET would get, framing fields included.
        let (parsed, out) = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, false);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(parsed.expect("valid").expect("complete").framing, Framing::Empty);
    }

    #[test]
    fn informational_responses_are_dropped() {
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let mut buf = raw.as_bytes().to_vec();
        let mut out = Vec::new();
        let head = parse_response(&mut buf, false, false, &mut out)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.status, 200);
        assert_eq!(head.head_len, buf.len());
        assert!(buf.starts_with(b"HTTP/1.1 200 OK"));
    }

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let body = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: t\r\n\r\nNEXT";
        let end = body.len() - 4;
        // Whole, and one byte at a time.
        assert_eq!(ChunkedDecoder::default().feed(body), Ok((end, true)));
        let mut d = ChunkedDecoder::default();
        let mut fed = 0;
        for (i, b) in body.iter().enumerate() {
            let (k, done) = d.feed(std::slice::from_ref(b)).expect("valid");
            fed += k;
            if done {
                assert_eq!(i + 1, end);
                break;
            }
        }
        assert_eq!(fed, end);
        assert_eq!(ChunkedDecoder::default().feed(b"0\r\n\r\n"), Ok((5, true)));
        assert_eq!(ChunkedDecoder::default().feed(b"5\r\nhel"), Ok((6, false)));
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"5\nhello",
            b"fffffffffffffffff\r\n",
            b"0\r\nT: 1\n",
        ] {
            assert!(
                ChunkedDecoder::default().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn status_digits() {
        assert_eq!(&three_digits(200), b"200");
        assert_eq!(&three_digits(504), b"504");
        assert_eq!(&three_digits(101), b"101");
    }
}
