//! The HTTP/1 engine's parsers: a client request head (and whether the engine serves it at all) and an upstream
//! response head, each rewritten for the other side in the same pass (RFC 9112).

use std::mem::MaybeUninit;

use crate::proxy::http::failure::{HTTP2_FRAMES, NOT_HTTP1, UNASKED_101};
use crate::proxy::http::fields::{tokens, Field};

/// Largest request or response head handled here: hyper's limit, which answers a larger request head 431.
const MAX_HEAD: usize = crate::proxy::http::MAX_REQUEST_HEAD;
/// Largest request body read whole before it is forwarded; a larger one, or a chunked one, is streamed.
const MAX_BUFFERED_BODY: usize = 64 * 1024;
/// Request fields parsed here; a request with more goes to hyper (which allows 100).
const REQUEST_FIELDS: usize = 64;
/// Response fields accepted from an upstream.
const RESPONSE_FIELDS: usize = 100;

/// A request ready to forward: its rewritten head is in the output buffer.
#[derive(Debug, PartialEq)]
pub struct Request {
    /// Bytes of the client buffer its head takes.
    pub head_len: usize,
    /// Bytes of the client buffer it takes: head, and body if read whole.
    pub len: usize,
    /// A body streamed after the head (`Framing::Length` over 64 KiB, or `Framing::Chunked`): its bytes follow
    /// `len` in the client buffer as they arrive. `None`: the body, if any, is within `len`.
    pub streamed: Option<Framing>,
    /// `HEAD`: the response has no body whatever its fields say.
    pub is_head: bool,
    /// Safe to send again if a reused upstream connection closed before answering (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// The client asked to close after the response.
    pub close: bool,
    /// The client asked to switch protocols (`Upgrade`, named in `Connection`): on `101` the connection becomes a
    /// byte tunnel.
    pub upgrade: bool,
}

/// What [`parse_request`] found at the start of the client buffer.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A request this engine serves.
    Ready(Request),
    /// More bytes needed.
    Partial,
    /// Not for this path: hyper serves the connection from here on.
    Elsewhere,
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// No body (a `HEAD` request, 204, 304).
    Empty,
    /// `Content-Length`: this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`: up to the last chunk and the trailers.
    Chunked,
    /// Until the upstream closes: the client connection closes too.
    Close,
    /// `101 Switching Protocols` to an upgrade request: no body, the connection is a byte tunnel from here on.
    Tunnel,
}

/// A parsed upstream response head (the informational responses before it dropped from `ubuf`).
#[derive(Debug, PartialEq)]
pub struct ResponseHead {
    /// Bytes of `ubuf` it takes.
    pub head_len: usize,
    /// Its status code.
    pub status: u16,
    /// How its body ends.
    pub framing: Framing,
    /// The upstream keeps the connection open after it.
    pub keep_alive: bool,
    /// The client connection closes after it.
    pub close: bool,
}

/// Parses the response head at the start of `buf` (`Ok(None)`: incomplete) and writes the head the client gets
/// to `out`: the upstream's, as HTTP/1.1, with hop-by-hop fields removed (those named in `Connection` too),
/// `Transfer-Encoding` kept when the body is passed through with it, and `Connection: close` if `closing` or the
/// body ends with the connection. Informational (1xx) responses are removed from `buf`, as hyper's client does.
/// A `101` is the answer to an `upgrade` request only (else an error): its head keeps `Upgrade` and says
/// `Connection: upgrade`.
pub fn parse_response(
    buf: &mut Vec<u8>,
    head_request: bool,
    upgrade: bool,
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
                // An HTTP/2-only upstream answers an HTTP/1.1 request with a SETTINGS or GOAWAY frame.
                Err(_) if buf.len() >= 4 && buf[0] == 0 && matches!(buf[3], 0x04 | 0x07) => return Err(HTTP2_FRAMES),
                // Not even the start of a status line: another protocol (TLS, a banner, ...).
                Err(_) if !buf.starts_with(&b"HTTP/1."[..buf.len().min(7)]) => return Err(NOT_HTTP1),
                Err(_) => return Err("malformed response head"),
            };
        let status = resp.code.unwrap_or(0);
        if status == 101 && !upgrade {
            return Err(UNASKED_101);
        }
        if (100..200).contains(&status) && status != 101 {
            buf.drain(..head_len);
            continue;
        }
        let (mut close_option, mut keep_alive_option) = (false, false);
        let (mut length, mut chunked, mut named) = (None, None, false);
        for f in resp.headers.iter() {
            match Field::of(f.name) {
                Field::Connection => {
                    for token in tokens(f.value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            close_option = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            keep_alive_option = true;
                        } else {
                            named = true;
                        }
                    }
                }
                Field::ContentLength => {
                    // A list of equal values, or equal repeated fields, is one length (RFC 9110 §8.6).
                    let n = content_length_list(f.value).ok_or("invalid Content-Length")?;
                    if length.is_some_and(|m| m != n) {
                        return Err("conflicting Content-Length");
                    }
                    length = Some(n);
                }
                // The last coding of all the fields, one list (RFC 9110 §5.3): an empty field adds none.
                Field::TransferEncoding => match tokens(f.value).last() {
                    Some(coding) => chunked = Some(coding.eq_ignore_ascii_case(b"chunked")),
                    None => chunked = chunked.or(Some(false)),
                },
                _ => {}
            }
        }
        // `close` ends the connection whatever else it says; HTTP/1.0 persists with `keep-alive` only (RFC 9112
        // §9.3).
        let keep_alive = !close_option && (resp.version == Some(1) || keep_alive_option);
        let framing = if status == 101 {
            Framing::Tunnel
        } else if head_request || status == 204 || status == 304 {
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
        let tunnel = framing == Framing::Tunnel;
        let mut length_written = false;
        for f in resp.headers.iter() {
            let keep = match Field::of(f.name) {
                // Once, where it first was, with one value (`5, 5` or two equal fields become `5`).
                Field::ContentLength if !passed_through && !tunnel && !length_written => {
                    length_written = true;
                    if let Some(n) = length {
                        push_field(out, f.name.as_bytes(), n.to_string().as_bytes());
                    }
                    false
                }
                Field::ContentLength => false,
                // With a body passed through as it is, or none (HEAD, 304: the fields a GET would get).
                Field::TransferEncoding => !tunnel,
                Field::Upgrade => tunnel,
                Field::Connection | Field::HopByHop => false,
                _ if named => !connection_names(resp.headers, f.name),
                _ => true,
            };
            if keep {
                push_field(out, f.name.as_bytes(), f.value);
            }
        }
        if tunnel {
            out.extend_from_slice(b"connection: upgrade\r\n");
        } else if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        return Ok(Some(ResponseHead {
            head_len,
            status,
            framing,
            keep_alive: keep_alive && framing != Framing::Close && !tunnel,
            close: close && !tunnel,
        }));
    }
}

/// An informational response (1xx but `101`) complete at the start of `buf`: its length, and whether it is a
/// `100 Continue` (which a client that sent `Expect: 100-continue` waits for). `Ok(None)`: incomplete, or not an
/// informational response.
pub(super) fn interim(buf: &[u8]) -> Result<Option<(usize, bool)>, &'static str> {
    let mut fields = [MaybeUninit::<httparse::Header>::uninit(); RESPONSE_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => match resp.code {
            Some(code) if (100..200).contains(&code) && code != 101 => Ok(Some((n, code == 100))),
            _ => Ok(None),
        },
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err("malformed response head"),
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

pub(super) fn canonical_reason(status: u16) -> &'static str {
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

/// A `Content-Length` value: digits only.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A response's `Content-Length` value: one length, or a comma-separated list of equal ones.
fn content_length_list(value: &[u8]) -> Option<u64> {
    let mut lengths = value.split(|&b| b == b',').map(|v| content_length(v.trim_ascii()));
    let first = lengths.next()??;
    lengths.all(|n| n == Some(first)).then_some(first)
}

/// Bytes of an origin-form target forwarded as they are: unreserved, sub-delims, `:@/?%`. Anything else (a
/// `#`, a quote, a non-ASCII byte) goes the strict way, through hyper.
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// Parses the request at the start of `buf` and, if this engine serves it, writes its rewritten head to `out`:
/// origin-form target, HTTP/1.1, hop-by-hop fields removed, `X-Forwarded-For` extended with `forwarded_for`. An
/// upgrade request without a body (`Upgrade`, named in `Connection`: WebSocket or any other protocol) keeps its
/// `Upgrade` field and says `Connection: upgrade`.
pub fn parse_request(buf: &[u8], forwarded_for: &str, out: &mut Vec<u8>) -> Parsed {
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
    let (mut upgrade, mut upgrade_named, mut chunked, mut expect) = (None, false, false, false);
    for f in req.headers.iter() {
        match Field::of(f.name) {
            Field::Other => {}
            Field::Host => hosts += 1,
            Field::ContentLength => match (length, content_length(f.value)) {
                (None, Some(n)) => length = Some(n),
                _ => return Parsed::Elsewhere,
            },
            // Exactly `chunked`, once: any other coding, or a list, is hyper's to judge (RFC 9112 §6.3).
            Field::TransferEncoding if !chunked && f.value.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
                chunked = true;
                continue;
            }
            // The client waits for `100 Continue` before its body: the head goes at once, the body is streamed,
            // and the upstream's `100` is passed on (see `interim`).
            Field::Expect if !expect && f.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") => {
                expect = true;
            }
            Field::TransferEncoding | Field::Expect => return Parsed::Elsewhere,
            Field::Upgrade if upgrade.is_none() => {
                upgrade = Some(f.value);
                continue;
            }
            Field::Upgrade => return Parsed::Elsewhere,
            Field::Connection => {
                for token in tokens(f.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        upgrade_named = true;
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
    // Both framings at once is a smuggling attempt or a broken client: hyper answers 400.
    if hosts != 1 || (chunked && length.is_some()) {
        return Parsed::Elsewhere;
    }
    let upgrade = match upgrade {
        Some(protocols) if upgrade_named && length.unwrap_or(0) == 0 && !chunked && !expect => {
            push_field(out, b"upgrade", protocols);
            out.extend_from_slice(b"connection: upgrade\r\n");
            true
        }
        // Not named in `Connection` (so not asked for, RFC 9110 §7.8), or with a body: hyper drops it.
        Some(_) => return Parsed::Elsewhere,
        None => false,
    };
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prior) = prior.filter(|p| !p.trim_ascii().is_empty()) {
        out.extend_from_slice(prior);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(forwarded_for.as_bytes());
    out.extend_from_slice(b"\r\n");
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let (body, streamed) = match length {
        _ if chunked => (0, Some(Framing::Chunked)),
        Some(n) if n > MAX_BUFFERED_BODY as u64 || (expect && n > 0) => (0, Some(Framing::Length(n))),
        Some(n) => (n as usize, None),
        None => (0, None),
    };
    if buf.len() < head_len + body {
        return Parsed::Partial;
    }
    Parsed::Ready(Request {
        head_len,
        len: head_len + body,
        streamed,
        is_head: method == "HEAD",
        idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"),
        close,
        upgrade,
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
                close: false,
                upgrade: false,
                streamed: None,
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
    fn large_and_chunked_bodies_are_streamed_after_the_head() {
        let raw = "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\nabc";
        let (parsed, out) = request(raw);
        let Parsed::Ready(r) = parsed else {
            panic!("not ready: {parsed:?}")
        };
        assert_eq!((r.len, r.streamed), (raw.len() - 3, Some(Framing::Length(65537))));
        assert!(out.contains("Content-Length: 65537\r\n"), "{out}");
        let raw = "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked \r\n\r\n5\r\nhello";
        let (parsed, out) = request(raw);
        let Parsed::Ready(r) = parsed else {
            panic!("not ready: {parsed:?}")
        };
        assert_eq!((r.len, r.streamed), (raw.len() - 8, Some(Framing::Chunked)));
        assert!(out.ends_with("transfer-encoding: chunked\r\n\r\n"), "{out}");
        assert_eq!(out.matches("ransfer-").count(), 1, "{out}");
    }

    #[test]
    fn expect_continue_streams_the_body_and_interim_responses_are_found() {
        let raw = "PUT /up HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 10\r\n\r\n";
        let (parsed, out) = request(raw);
        let Parsed::Ready(r) = parsed else {
            panic!("not ready: {parsed:?}")
        };
        assert_eq!((r.len, r.streamed), (raw.len(), Some(Framing::Length(10))));
        assert!(out.contains("Expect: 100-Continue\r\n"), "{out}");
        assert_eq!(
            interim(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"),
            Ok(Some((25, true)))
        );
        assert_eq!(
            interim(b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"),
            Ok(Some((37, false)))
        );
        assert_eq!(interim(b"HTTP/1.1 200 OK\r\n\r\n"), Ok(None));
        assert_eq!(interim(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"), Ok(None));
        assert_eq!(interim(b"HTTP/1.1 100 Cont"), Ok(None));
        assert!(interim(b"\x00\x00\x12\x04").is_err());
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
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nab",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nab",
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue, x\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nConnection: upgrade\r\nContent-Length: 1\r\n\r\na",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: a\r\nUpgrade: b\r\nConnection: upgrade\r\n\r\n",
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

    #[test]
    fn an_upgrade_request_keeps_its_upgrade_fields() {
        let raw = "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let (parsed, out) = request(raw);
        let Parsed::Ready(r) = parsed else {
            panic!("not for the engine: {parsed:?}")
        };
        assert!(r.upgrade && !r.close && r.len == raw.len());
        assert_eq!(
            out,
            "GET /chat HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\
             upgrade: websocket\r\nconnection: upgrade\r\nx-forwarded-for: 10.0.0.9\r\n\r\n"
        );
        // `Connection: upgrade` with nothing to upgrade to: a plain request.
        let Parsed::Ready(r) = request("GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n").0 else {
            panic!("plain")
        };
        assert!(!r.upgrade);
    }

    #[test]
    fn a_101_answers_an_upgrade_request_only_and_opens_a_tunnel() {
        let raw = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Accept: a\r\n\r\n\x01\x02hi";
        let mut buf = raw.as_bytes().to_vec();
        let mut out = Vec::new();
        let head = parse_response(&mut buf, false, true, false, &mut out)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.framing, Framing::Tunnel);
        assert_eq!((head.status, head.keep_alive, head.close), (101, false, false));
        assert_eq!(head.head_len, raw.len() - 4, "the first frame stays in the buffer");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\n\
             connection: upgrade\r\n\r\n"
        );
        // Declined: a normal response, which the connection survives.
        let mut buf = b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: x\r\nContent-Length: 0\r\n\r\n".to_vec();
        let mut out = Vec::new();
        let head = parse_response(&mut buf, false, true, false, &mut out)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (head.status, head.framing, head.keep_alive),
            (426, Framing::Length(0), true)
        );
        // Unasked for: an error (502).
        let mut buf = raw.as_bytes().to_vec();
        assert!(parse_response(&mut buf, false, false, false, &mut Vec::new()).is_err());
    }

    fn response(raw: &str, head_request: bool, closing: bool) -> (Result<Option<ResponseHead>, &'static str>, String) {
        let mut buf = raw.as_bytes().to_vec();
        let mut out = Vec::new();
        let parsed = parse_response(&mut buf, head_request, false, closing, &mut out);
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
        assert_eq!(response("NOT HTTP\r\n\r\n", false, false).0, Err(NOT_HTTP1));
        assert_eq!(response("SSH-2.0-OpenSSH_9.2\r\n", false, false).0, Err(NOT_HTTP1));
        assert_eq!(
            response("HTTP/1.1 2xx OK\r\n\r\n", false, false).0,
            Err("malformed response head")
        );
        // An HTTP/2-only upstream: a SETTINGS frame, then GOAWAY.
        let frames = "\0\0\x06\x04\0\0\0\0\0\0\x03\0\0\0\x64\0\0\x08\x07\0\0\0\0\0";
        assert_eq!(response(frames, false, false).0, Err(HTTP2_FRAMES));
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

    /// Found with the `h1_response` fuzz target's properties: `close` lost to a later `keep-alive` on HTTP/1.0,
    /// and an empty `Transfer-Encoding` field after `chunked` made a chunked body one to the close.
    #[test]
    fn close_wins_and_the_last_coding_of_all_fields_frames_the_body() {
        for raw in [
            "HTTP/1.0 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nConnection: Close, keep-alive\r\nContent-Length: 2\r\n\r\nok",
        ] {
            let head = response(raw, false, false).0.expect("valid").expect("complete");
            assert!(!head.keep_alive, "{raw:?}");
        }
        let raw = "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok";
        assert!(
            response(raw, false, false)
                .0
                .expect("valid")
                .expect("complete")
                .keep_alive
        );
        let framing = |raw: &str| response(raw, false, false).0.ok().flatten().map(|h| h.framing);
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n"),
            Some(Framing::Chunked)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Some(Framing::Chunked)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Some(Framing::Close)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\nContent-Length: 2\r\n\r\n"),
            Some(Framing::Close)
        );
    }

    #[test]
    fn informational_responses_are_dropped() {
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let mut buf = raw.as_bytes().to_vec();
        let mut out = Vec::new();
        let head = parse_response(&mut buf, false, false, false, &mut out)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.status, 200);
        assert_eq!(head.head_len, buf.len());
        assert!(buf.starts_with(b"HTTP/1.1 200 OK"));
    }

    #[test]
    fn status_digits() {
        assert_eq!(&three_digits(200), b"200");
        assert_eq!(&three_digits(504), b"504");
        assert_eq!(&three_digits(101), b"101");
    }
}
