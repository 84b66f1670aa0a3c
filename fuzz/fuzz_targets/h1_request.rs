//! `parse_request`, the HTTP/1 engine's request parser, on arbitrary bytes. Two properties besides no panic:
//!
//! - Against httparse on the same bytes: where httparse finds a complete head, the engine serves the request
//!   (`Ready`, with httparse's head length and the body length its fields give) or hands it to hyper
//!   (`Elsewhere`) for one of the reasons `expected` lists, and for no other; where httparse finds the head
//!   incomplete, the engine waits for more (`Partial`); where httparse rejects it, the engine hands it to hyper
//!   (which answers 400). Any other verdict is a divergence and aborts.
//! - The head the engine forwards, parsed again by httparse, is the same request (method, target, HTTP/1.1, the
//!   one `Host`), frames the body as the engine does (what the upstream reads as the body is what the engine
//!   sends as the body: no smuggling between the two), and carries the client's end-to-end fields unchanged and
//!   in order, with only the hop-by-hop ones removed and `X-Forwarded-For` extended.
#![no_main]

use baton::proxy::http::parse::{parse_request, Framing, Parsed, Request};
use baton::proxy::http::MAX_REQUEST_HEAD;
use libfuzzer_sys::fuzz_target;

const FORWARDED_FOR: &str = "10.0.0.9";
/// The engine parses at most this many fields; hyper (which allows 100) serves a request with more.
const ENGINE_FIELDS: usize = 64;
/// A larger body (with `Content-Length`) is streamed after the head instead of read whole.
const MAX_BUFFERED_BODY: u64 = 64 * 1024;
/// Fields the engine removes (hop-by-hop, RFC 9110 §7.6.1) or rewrites (`X-Forwarded-For`).
const REWRITTEN: [&str; 10] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
];

/// What the engine must make of the bytes.
#[derive(Debug, PartialEq)]
enum Want {
    Partial,
    /// Hyper's, for the reason given.
    Elsewhere(&'static str),
    Ready {
        head_len: usize,
        len: usize,
        streamed: Option<Framing>,
        close: bool,
        upgrade: bool,
    },
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let got = parse_request(data, FORWARDED_FOR, &mut out);
    let mut fields = vec![httparse::EMPTY_HEADER; data.len() / 3 + 1];
    let mut req = httparse::Request::new(&mut fields);
    let status = req.parse(data);
    let want = expected(data, status, &req);
    match (&got, &want) {
        (Parsed::Partial, Want::Partial) | (Parsed::Elsewhere, Want::Elsewhere(_)) => {}
        (
            Parsed::Ready(r),
            &Want::Ready {
                head_len,
                len,
                streamed,
                close,
                upgrade,
            },
        ) => {
            assert_eq!(
                (r.head_len, r.len, r.streamed, r.close, r.upgrade),
                (head_len, len, streamed, close, upgrade),
                "request flags"
            );
            let method = req.method.unwrap_or_default();
            assert_eq!(r.is_head, method == "HEAD");
            assert_eq!(
                r.idempotent,
                matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
            );
            check_forwarded(&req, r, &out);
        }
        _ => panic!(
            "engine: {got:?}, expected: {want:?}, input: {:?}",
            String::from_utf8_lossy(data)
        ),
    }
});

/// The engine's verdict, from httparse's parse and the cases the engine leaves to hyper on purpose.
fn expected(data: &[u8], status: httparse::Result<usize>, req: &httparse::Request) -> Want {
    use Want::Elsewhere;
    let head_len = match status {
        Err(_) => return Elsewhere("malformed: hyper answers 400"),
        Ok(httparse::Status::Partial) if data.len() >= MAX_REQUEST_HEAD => return Elsewhere("head too large: 431"),
        Ok(httparse::Status::Partial) if too_many_fields(data) => return Elsewhere("more than 64 fields"),
        Ok(httparse::Status::Partial) => return Want::Partial,
        Ok(httparse::Status::Complete(n)) if n > MAX_REQUEST_HEAD => return Elsewhere("head too large: 431"),
        Ok(httparse::Status::Complete(n)) => n,
    };
    if req.headers.len() > ENGINE_FIELDS {
        return Elsewhere("more than 64 fields");
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        panic!("a complete head without a request line")
    };
    // HTTP/1.0 (no Host, keep-alive by option): hyper speaks it.
    if version != 1 {
        return Elsewhere("HTTP/1.0");
    }
    if method == "CONNECT" {
        return Elsewhere("CONNECT: a tunnel, hyper's");
    }
    // Absolute-form, authority-form, asterisk-form: hyper reads the authority and normalizes the target.
    if !target.starts_with('/') {
        return Elsewhere("not origin-form");
    }
    // The engine forwards the target as it is only when every byte is unreserved, a sub-delim or one of
    // `:@/?%`; hyper (strict) judges a `#`, a quote, a non-ASCII byte.
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b);
    if !target.bytes().all(plain) {
        return Elsewhere("target byte outside the plain set");
    }
    let values = |name: &str| -> Vec<&[u8]> {
        req.headers
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
            .collect()
    };
    if values("host").len() != 1 {
        return Elsewhere("not exactly one Host: hyper answers 400");
    }
    // One field of digits only; a list, repeated fields, a sign or a space are hyper's to judge.
    let length = match values("content-length")[..] {
        [] => None,
        [v] => match digits(v) {
            Some(n) => Some(n),
            None => return Elsewhere("Content-Length not 1 to 18 digits"),
        },
        _ => return Elsewhere("repeated Content-Length"),
    };
    // Exactly `chunked`, once; any other coding, or a list of them, is hyper's (RFC 9112 §6.3).
    let chunked = match values("transfer-encoding")[..] {
        [] => false,
        [v] if v.eq_ignore_ascii_case(b"chunked") => true,
        _ => return Elsewhere("Transfer-Encoding other than one `chunked`"),
    };
    // Both framings: a smuggling attempt or a broken client, hyper answers 400.
    if chunked && length.is_some() {
        return Elsewhere("Transfer-Encoding with Content-Length");
    }
    let expect = match values("expect")[..] {
        [] => false,
        [v] if v.eq_ignore_ascii_case(b"100-continue") => true,
        _ => return Elsewhere("Expect other than one `100-continue`"),
    };
    let options: Vec<&[u8]> = values("connection").into_iter().flat_map(tokens).collect();
    let has = |o: &str| options.iter().any(|t| t.eq_ignore_ascii_case(o.as_bytes()));
    // A Connection naming fields to remove: the general path.
    if !options.iter().all(|t| {
        [&b"close"[..], b"keep-alive", b"upgrade"]
            .iter()
            .any(|o| t.eq_ignore_ascii_case(o))
    }) {
        return Elsewhere("Connection names other fields");
    }
    if values("x-forwarded-for").len() > 1 {
        return Elsewhere("repeated X-Forwarded-For");
    }
    let upgrade = match values("upgrade")[..] {
        [] => false,
        // Asked for (named in Connection, RFC 9110 §7.8) and without a body: a tunnel after a 101.
        [_] if has("upgrade") && length.unwrap_or(0) == 0 && !chunked && !expect => true,
        _ => return Elsewhere("Upgrade not asked for, with a body, or repeated"),
    };
    let (body, streamed) = match length {
        _ if chunked => (0, Some(Framing::Chunked)),
        Some(n) if n > MAX_BUFFERED_BODY || (expect && n > 0) => (0, Some(Framing::Length(n))),
        Some(n) => (n as usize, None),
        None => (0, None),
    };
    if data.len() < head_len + body {
        return Want::Partial;
    }
    Want::Ready {
        head_len,
        len: head_len + body,
        streamed,
        close: has("close"),
        upgrade,
    }
}

/// The head is incomplete but already has more fields than the engine parses.
fn too_many_fields(data: &[u8]) -> bool {
    let mut fields = [httparse::EMPTY_HEADER; ENGINE_FIELDS];
    httparse::Request::new(&mut fields).parse(data) == Err(httparse::Error::TooManyHeaders)
}

/// Checks the head the engine wrote for the upstream.
fn check_forwarded(req: &httparse::Request, r: &Request, out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    let mut fields = vec![httparse::EMPTY_HEADER; out.len() / 3 + 1];
    let mut fwd = httparse::Request::new(&mut fields);
    assert_eq!(
        fwd.parse(out),
        Ok(httparse::Status::Complete(out.len())),
        "forwarded: {text:?}"
    );
    assert_eq!(
        (fwd.method, fwd.path, fwd.version),
        (req.method, req.path, Some(1)),
        "{text:?}"
    );
    let named = |h: &[httparse::Header], name: &str| -> Vec<Vec<u8>> {
        h.iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value.to_vec())
            .collect()
    };
    assert_eq!(named(fwd.headers, "host"), named(req.headers, "host"), "{text:?}");
    // The body as the upstream reads it (RFC 9112 §6.3) is the body the engine sends.
    let (codings, lengths) = (
        named(fwd.headers, "transfer-encoding"),
        named(fwd.headers, "content-length"),
    );
    let upstream_reads = match (&codings[..], &lengths[..]) {
        ([], []) => Framing::Length(0),
        ([], [v]) => Framing::Length(digits(v).expect("a forwarded Content-Length is digits")),
        ([v], []) if v.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        _ => panic!("forwarded framing fields are ambiguous: {text:?}"),
    };
    let engine_sends = match r.streamed {
        Some(framing) => framing,
        None => Framing::Length((r.len - r.head_len) as u64),
    };
    assert_eq!(upstream_reads, engine_sends, "{text:?}");
    // End-to-end fields: all of them, as they were, in order.
    let end_to_end = |h: &[httparse::Header]| -> Vec<(String, Vec<u8>)> {
        h.iter()
            .filter(|f| !REWRITTEN.iter().any(|n| f.name.eq_ignore_ascii_case(n)))
            .map(|f| (f.name.to_owned(), f.value.to_vec()))
            .collect()
    };
    assert_eq!(end_to_end(fwd.headers), end_to_end(req.headers), "{text:?}");
    // The rest: what the engine adds, in its order.
    let mut added: Vec<(String, Vec<u8>)> = Vec::new();
    if r.upgrade {
        let protocols = named(req.headers, "upgrade").remove(0);
        added.push(("upgrade".into(), protocols));
        added.push(("connection".into(), b"upgrade".to_vec()));
    }
    let mut xff = match named(req.headers, "x-forwarded-for").first() {
        Some(prior) if !prior.is_empty() => [&prior[..], b", "].concat(),
        _ => Vec::new(),
    };
    xff.extend_from_slice(FORWARDED_FOR.as_bytes());
    added.push(("x-forwarded-for".into(), xff));
    if r.streamed == Some(Framing::Chunked) {
        added.push(("transfer-encoding".into(), b"chunked".to_vec()));
    }
    let rewritten: Vec<(String, Vec<u8>)> = fwd
        .headers
        .iter()
        .filter(|f| REWRITTEN.iter().any(|n| f.name.eq_ignore_ascii_case(n)))
        .map(|f| (f.name.to_owned(), f.value.to_vec()))
        .collect();
    assert_eq!(rewritten, added, "{text:?}");
}

/// A `Content-Length` the engine takes: 1 to 18 digits (no sign, no space, no list).
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The elements of a comma-separated list, without optional whitespace, empty ones dropped (RFC 9110 §5.6.1).
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(|t| {
            let start = t.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(t.len());
            let end = t
                .iter()
                .rposition(|&b| b != b' ' && b != b'\t')
                .map_or(start, |e| e + 1);
            &t[start..end.max(start)]
        })
        .filter(|t| !t.is_empty())
}
