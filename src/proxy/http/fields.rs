//! The HTTP/1 fields a proxy treats specially, and the hop-by-hop rules (RFC 9110 §7.6.1), for both the HTTP/1
//! engine ([`crate::proxy::http::engine`]) and the hyper path ([`crate::proxy::http`]).

/// Request and response fields with a meaning for the proxy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field {
    /// `Host`.
    Host,
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Connection`.
    Connection,
    /// `Upgrade`.
    Upgrade,
    /// `Expect`.
    Expect,
    /// `X-Forwarded-For`.
    ForwardedFor,
    /// Hop-by-hop by definition, dropped: `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
    /// `Proxy-Authenticate`, `Proxy-Authorization`.
    HopByHop,
    /// Any other field: passed on as it is.
    Other,
}

impl Field {
    /// The field called `name` (any case).
    pub fn of(name: &str) -> Field {
        let is = |s: &str| name.eq_ignore_ascii_case(s);
        match name.len() {
            2 if is("te") => Field::HopByHop,
            4 if is("host") => Field::Host,
            6 if is("expect") => Field::Expect,
            7 if is("upgrade") => Field::Upgrade,
            7 if is("trailer") => Field::HopByHop,
            10 if is("connection") => Field::Connection,
            10 if is("keep-alive") => Field::HopByHop,
            14 if is("content-length") => Field::ContentLength,
            15 if is("x-forwarded-for") => Field::ForwardedFor,
            16 if is("proxy-connection") => Field::HopByHop,
            17 if is("transfer-encoding") => Field::TransferEncoding,
            18 if is("proxy-authenticate") => Field::HopByHop,
            19 if is("proxy-authorization") => Field::HopByHop,
            _ => Field::Other,
        }
    }

    /// Hop-by-hop by definition (fields named in `Connection` are too, found through it).
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Field::Connection | Field::TransferEncoding | Field::Upgrade | Field::HopByHop
        )
    }
}

/// The comma-separated tokens of a field value, trimmed.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}
