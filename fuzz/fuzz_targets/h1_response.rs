//! `parse_response`, the HTTP/1 engine's response parser, on arbitrary bytes; the first byte chooses the request
//! it answers (`HEAD`, an upgrade) and whether the client connection closes after it. Two properties besides no
//! panic:
//!
//! - Against httparse on the same bytes: informational responses (1xx but 101) are dropped from the buffer;
//!   where httparse then finds a complete head, the engine has it too, with httparse's status and length, and
//!   the body framing of RFC 9112 §6.3, unless it refuses it (a 502) for one of the reasons `expected` lists;
//!   where httparse finds it incomplete, the engine waits; where httparse rejects it, the engine does too.
//! - The head the engine writes for the client, parsed again by httparse, is HTTP/1.1 with the same status,
//!   frames the body as the engine reads it (the client and the engine agree where the response ends), keeps the
//!   end-to-end fields unchanged and in order, and says `Connection: close` exactly when the engine closes.
#![no_main]

use baton::proxy::http::parse::{parse_response, Framing, ResponseHead};
use baton::proxy::http::MAX_REQUEST_HEAD;
use libfuzzer_sys::fuzz_target;

/// Response fields the engine accepts (as hyper's client does); more is a 502.
const ENGINE_FIELDS: usize = 100;
/// Fields the engine removes or rewrites (hop-by-hop, RFC 9110 §7.6.1, and the framing fields).
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
    "content-length",
];

#[derive(Debug, PartialEq)]
enum Want {
    /// More bytes needed; the first `at` (informational responses) are dropped.
    Partial { at: usize },
    /// Refused, for the reason given.
    Refused(&'static str),
    Head {
        at: usize,
        head_len: usize,
        status: u16,
        framing: Framing,
        keep_alive: bool,
        close: bool,
    },
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    let (head_request, upgrade, closing) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let mut buf = raw.to_vec();
    let mut out = Vec::new();
    let got = parse_response(&mut buf, head_request, upgrade, closing, &mut out);
    let want = expected(raw, head_request, upgrade, closing);
    let text = String::from_utf8_lossy(raw);
    match (&got, &want) {
        (Err(_), Want::Refused(_)) => {}
        (Ok(None), &Want::Partial { at }) => assert_eq!(buf, raw[at..], "{text:?}"),
        (
            Ok(Some(h)),
            &Want::Head {
                at,
                head_len,
                status,
                framing,
                keep_alive,
                close,
            },
        ) => {
            assert_eq!(
                (h.head_len, h.status, h.framing, h.keep_alive, h.close),
                (head_len, status, framing, keep_alive, close),
                "{text:?}"
            );
            assert_eq!(buf, raw[at..], "{text:?}");
            check_forwarded(&raw[at..at + head_len], h, head_request, &out);
        }
        _ => panic!("engine: {got:?}, expected: {want:?}, input: {text:?} (flags {flags:#x})"),
    }
});

fn expected(raw: &[u8], head_request: bool, upgrade: bool, closing: bool) -> Want {
    use Want::Refused;
    let mut at = 0;
    loop {
        let rest = &raw[at..];
        let mut fields = vec![httparse::EMPTY_HEADER; rest.len() / 3 + 1];
        let mut resp = httparse::Response::new(&mut fields);
        let head_len = match resp.parse(rest) {
            Err(_) => return Refused("malformed head"),
            Ok(httparse::Status::Partial) if rest.len() >= MAX_REQUEST_HEAD => return Refused("head too large"),
            Ok(httparse::Status::Partial) if too_many_fields(rest) => return Refused("more than 100 fields"),
            Ok(httparse::Status::Partial) => return Want::Partial { at },
            Ok(httparse::Status::Complete(n)) => n,
        };
        if resp.headers.len() > ENGINE_FIELDS {
            return Refused("more than 100 fields");
        }
        let (Some(version), Some(status)) = (resp.version, resp.code) else {
            panic!("a complete head without a status line")
        };
        // A tunnel nobody asked for.
        if status == 101 && !upgrade {
            return Refused("101 to a request without Upgrade");
        }
        if (100..200).contains(&status) && status != 101 {
            at += head_len;
            continue;
        }
        let values = |name: &str| -> Vec<&[u8]> {
            resp.headers
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case(name))
                .map(|f| f.value)
                .collect()
        };
        // Content-Length: every element of every field 1 to 18 digits, all equal (RFC 9110 §8.6). Stricter than
        // the list rule on purpose: an empty element, a sign or a space in a length is refused, and so is an
        // invalid length beside Transfer-Encoding (which would win), as one sign of a confused upstream.
        let mut length = None;
        for v in values("content-length") {
            for element in v.split(|&b| b == b',') {
                let Some(n) = digits(trim(element)) else {
                    return Refused("invalid Content-Length");
                };
                if length.is_some_and(|m| m != n) {
                    return Refused("conflicting Content-Length");
                }
                length = Some(n);
            }
        }
        let codings: Vec<&[u8]> = values("transfer-encoding").into_iter().flat_map(tokens).collect();
        let framing = if status == 101 {
            Framing::Tunnel
        } else if head_request || status == 204 || status == 304 {
            Framing::Empty
        } else if !values("transfer-encoding").is_empty() {
            // RFC 9112 §6.3: chunked last, or the body runs to the close.
            match codings.last() {
                Some(c) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
                _ => Framing::Close,
            }
        } else {
            length.map_or(Framing::Close, Framing::Length)
        };
        // Persistence (RFC 9112 §9.3): `close` ends it; HTTP/1.0 keeps it only with `keep-alive`.
        let options: Vec<&[u8]> = values("connection").into_iter().flat_map(tokens).collect();
        let has = |o: &str| options.iter().any(|t| t.eq_ignore_ascii_case(o.as_bytes()));
        let persistent = !has("close") && (version == 1 || has("keep-alive"));
        let tunnel = framing == Framing::Tunnel;
        return Want::Head {
            at,
            head_len,
            status,
            framing,
            keep_alive: persistent && framing != Framing::Close && !tunnel,
            close: (closing || framing == Framing::Close) && !tunnel,
        };
    }
}

/// The head is incomplete but already has more fields than the engine accepts.
fn too_many_fields(data: &[u8]) -> bool {
    let mut fields = [httparse::EMPTY_HEADER; ENGINE_FIELDS];
    httparse::Response::new(&mut fields).parse(data) == Err(httparse::Error::TooManyHeaders)
}

/// Checks the head the engine wrote for the client, from the upstream's head `upstream`.
fn check_forwarded(upstream: &[u8], h: &ResponseHead, head_request: bool, out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    let mut up_fields = vec![httparse::EMPTY_HEADER; upstream.len() / 3 + 1];
    let mut up = httparse::Response::new(&mut up_fields);
    assert!(matches!(up.parse(upstream), Ok(httparse::Status::Complete(_))));
    let mut fields = vec![httparse::EMPTY_HEADER; out.len() / 3 + 1];
    let mut fwd = httparse::Response::new(&mut fields);
    assert_eq!(
        fwd.parse(out),
        Ok(httparse::Status::Complete(out.len())),
        "forwarded: {text:?}"
    );
    assert_eq!((fwd.version, fwd.code), (Some(1), Some(h.status)), "{text:?}");
    let named = |r: &httparse::Response, name: &str| -> Vec<Vec<u8>> {
        r.headers
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value.to_vec())
            .collect()
    };
    let (codings, lengths) = (named(&fwd, "transfer-encoding"), named(&fwd, "content-length"));
    let connection = named(&fwd, "connection");
    // Framing fields: Content-Length once, with the one length, for a body of known length (and on a HEAD,
    // 204 or 304 response that had one); Transfer-Encoding as the upstream sent it but on a tunnel.
    match h.framing {
        Framing::Length(n) => assert_eq!(lengths, [n.to_string().into_bytes()], "{text:?}"),
        Framing::Empty => {
            let want: Vec<Vec<u8>> = named(&up, "content-length")
                .first()
                .map(|v| {
                    let first = trim(v.split(|&b| b == b',').next().unwrap_or_default());
                    digits(first).expect("accepted").to_string().into_bytes()
                })
                .into_iter()
                .collect();
            assert_eq!(lengths, want, "{text:?}");
        }
        _ => assert!(lengths.is_empty(), "{text:?}"),
    }
    if h.framing == Framing::Tunnel {
        assert!(codings.is_empty(), "{text:?}");
        assert_eq!(named(&fwd, "upgrade"), named(&up, "upgrade"), "{text:?}");
        assert_eq!(connection, [b"upgrade".to_vec()], "{text:?}");
    } else {
        assert_eq!(codings, named(&up, "transfer-encoding"), "{text:?}");
        assert!(named(&fwd, "upgrade").is_empty(), "{text:?}");
        let want: &[&[u8]] = if h.close { &[b"close"] } else { &[] };
        assert_eq!(connection, want, "{text:?}");
    }
    // Where the client reads the body to (RFC 9112 §6.3) is where the engine does.
    let client_reads = if h.status == 101 {
        Framing::Tunnel
    } else if head_request || h.status == 204 || h.status == 304 {
        Framing::Empty
    } else if !codings.is_empty() {
        let all: Vec<&[u8]> = codings.iter().flat_map(|v| tokens(v)).collect();
        match all.last() {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::Close,
        }
    } else if let [n] = &lengths[..] {
        Framing::Length(digits(n).expect("digits"))
    } else {
        Framing::Close
    };
    assert_eq!(client_reads, h.framing, "{text:?}");
    assert!(
        h.framing != Framing::Close || h.close,
        "a body to the close closes the client connection"
    );
    // End-to-end fields: all of them but those the upstream's Connection names, unchanged, in order. A field named
    // `Close` is left out of the comparison: the name is reserved (RFC 9110 §16.3.2.2) so that it never is one, and
    // `Connection: close` alone does not remove it.
    let options: Vec<Vec<u8>> = named(&up, "connection")
        .iter()
        .flat_map(|v| tokens(v))
        .map(<[u8]>::to_vec)
        .collect();
    let end_to_end = |r: &httparse::Response| -> Vec<(String, Vec<u8>)> {
        r.headers
            .iter()
            .filter(|f| !REWRITTEN.iter().any(|n| f.name.eq_ignore_ascii_case(n)))
            .filter(|f| !f.name.eq_ignore_ascii_case("close"))
            .filter(|f| !options.iter().any(|o| o.eq_ignore_ascii_case(f.name.as_bytes())))
            .map(|f| (f.name.to_owned(), f.value.to_vec()))
            .collect()
    };
    assert_eq!(end_to_end(&fwd), end_to_end(&up), "{text:?}");
}

/// 1 to 18 digits.
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Without optional whitespace (RFC 9110 §5.6.3).
fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// The elements of a comma-separated list, empty ones dropped (RFC 9110 §5.6.1).
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty())
}
