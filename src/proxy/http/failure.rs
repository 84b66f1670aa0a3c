//! What the client gets when no upstream response head arrives: the same status and one-line body on every
//! HTTP path, or a gRPC status for a gRPC request; counted and logged in one place.
//!
//! A failing upstream is logged at `warn` once per cause and listener every few seconds ([`crate::proxy::warn`]),
//! with the cause and how many more failed since, never once per request.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::proxy::warn::Cause;
use crate::proxy::ListenerCtx;
use crate::upstream::SPOKE_FIRST;

/// Why no upstream response head arrived.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be opened.
    Connect(std::io::Error),
    /// The exchange failed after the request started: reset, closed early, or a malformed response.
    Exchange(std::borrow::Cow<'static, str>),
    /// No response head within the cluster's `request_timeout`.
    Timeout,
}

/// What baton answers instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status (502 or 504); a gRPC client gets HTTP 200 and [`Answer::grpc_status`] instead, but the
    /// listener's metrics count this one.
    pub status: u16,
    /// The one-line body of the HTTP answer, also the `grpc-message` of the gRPC one.
    pub message: &'static str,
    /// The gRPC status code: 14 (UNAVAILABLE) or 4 (DEADLINE_EXCEEDED).
    pub grpc_status: u8,
}

impl Failure {
    /// The answer the client gets (the same on every HTTP path); counted in the listener's metrics and logged.
    pub fn answer(self, ctx: &ListenerCtx, endpoint: SocketAddr) -> Answer {
        let cluster = &ctx.cluster.name;
        let metrics = &ctx.metrics;
        match self {
            Failure::Connect(e) => {
                metrics.upstream_connect_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(more) = ctx.warnings.due(Cause::Connect) {
                    tracing::warn!(listener = %ctx.listener, cluster, %endpoint, error = %e, failed_since = more, "upstream connect failed: answering 502");
                } else {
                    tracing::debug!(cluster, %endpoint, error = %e, "upstream connect failed");
                }
                Answer {
                    status: 502,
                    message: "baton: upstream connect failed",
                    grpc_status: 14,
                }
            }
            Failure::Exchange(why) if not_http1(&why) => {
                // A misconfiguration rather than a failure: its own rate limit, so that other failures of the
                // same upstream never hide it.
                if let Some(more) = ctx.warnings.due(Cause::NotHttp1) {
                    tracing::warn!(listener = %ctx.listener, cluster, %endpoint, error = %why, failed_since = more, "{NOT_HTTP1_WARNING}: answering 502");
                } else {
                    tracing::debug!(cluster, %endpoint, error = %why, "{NOT_HTTP1_WARNING}");
                }
                Answer {
                    status: 502,
                    message: "baton: upstream request failed",
                    grpc_status: 14,
                }
            }
            Failure::Exchange(why) => {
                if let Some(more) = ctx.warnings.due(Cause::Exchange) {
                    tracing::warn!(listener = %ctx.listener, cluster, %endpoint, error = %why, failed_since = more, "upstream request failed: answering 502");
                } else {
                    tracing::debug!(cluster, %endpoint, error = %why, "upstream request failed");
                }
                Answer {
                    status: 502,
                    message: "baton: upstream request failed",
                    grpc_status: 14,
                }
            }
            Failure::Timeout => {
                metrics.upstream_timeouts.fetch_add(1, Ordering::Relaxed);
                if let Some(more) = ctx.warnings.due(Cause::Timeout) {
                    let timeout = crate::config::format_duration(ctx.cluster.request_timeout);
                    tracing::warn!(listener = %ctx.listener, cluster, %endpoint, request_timeout = %timeout, failed_since = more, "no upstream response head within request_timeout: answering 504");
                }
                Answer {
                    status: 504,
                    message: "baton: upstream timed out",
                    grpc_status: 4,
                }
            }
        }
    }
}

/// Whether an HTTP/1 client's reason says the upstream answered in another protocol than HTTP/1.x: HTTP/2 frames,
/// or no status line at all (the engine's parser), hyper's parser refusing the first bytes as a version, or an
/// upstream that spoke before it was asked (hyper's client, when the bytes came before the request went out).
fn not_http1(why: &str) -> bool {
    why == HTTP2_FRAMES || why == NOT_HTTP1 || why == SPOKE_FIRST || why.contains("invalid HTTP version")
}

/// The warning logged when an upstream of an `http1` cluster answers in another protocol.
pub const NOT_HTTP1_WARNING: &str =
    "upstream answered with something that is not HTTP/1.x (an HTTP/2-only server? set the cluster's protocol: h2c)";

/// The engine's reason for a response that does not start with an HTTP/1 status line.
pub const NOT_HTTP1: &str = "the upstream's answer does not start with an HTTP/1.x status line";

/// The reason given for a `101` the request did not ask for (both HTTP paths answer it 502).
pub const UNASKED_101: &str = "101 Switching Protocols to a request that asked for no upgrade";

/// The engine's reason for a response that starts with HTTP/2 frames.
pub const HTTP2_FRAMES: &str = "the upstream sent HTTP/2 frames";

/// Whether a request is gRPC (`application/grpc`, `application/grpc+proto`, ...; not gRPC-Web).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .is_some_and(|ct| {
            ct.strip_prefix(b"application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"+") || rest.starts_with(b";"))
        })
}

/// A `grpc-message` value: bytes outside printable ASCII, and `%`, percent-encoded (gRPC over HTTP/2 spec).
pub fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_are_told_by_their_content_type() {
        let mut h = http::HeaderMap::new();
        assert!(!is_grpc(&h));
        for (ct, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/grpc-web+proto", false),
            ("application/json", false),
        ] {
            h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), grpc, "{ct}");
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message("baton: upstream timed out"), "baton: upstream timed out");
        assert_eq!(grpc_message("100% \n é"), "100%25 %0A %C3%A9");
    }

    #[test]
    fn an_answer_in_another_protocol_is_recognised() {
        assert!(not_http1("exchange: invalid HTTP version parsed"));
        assert!(not_http1(HTTP2_FRAMES));
        assert!(not_http1(NOT_HTTP1));
        assert!(not_http1(&crate::upstream::PoolError::SpokeFirst.to_string()));
        assert!(!not_http1("connection reset by peer"));
        assert!(!not_http1("malformed response head"));
    }
}
