//! HTTP/1.x responses as the HTTP/1 load tools (`fixedrate`, `holdconns`) read them: where one ends in a buffer,
//! its status, and whether the connection stays open after it.

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// Not a whole response yet.
    Partial,
    /// One whole response of `len` bytes (interim 1xx responses before it included).
    Done { len: usize, status: u16, keep_alive: bool },
    /// Not an HTTP/1.x response we can delimit (a response whose body runs to EOF counts as one).
    Bad(&'static str),
}

/// Longest head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Parses the response at the start of `buf`.
pub fn response(buf: &[u8]) -> Response {
    let mut at = 0;
    loop {
        let Some(head_len) = find(&buf[at..], b"\r\n\r\n").map(|i| i + 4) else {
            return if buf.len() - at > MAX_HEAD {
                Response::Bad("head too long")
            } else {
                Response::Partial
            };
        };
        let head = &buf[at..at + head_len - 4];
        let Ok(head) = std::str::from_utf8(head) else {
            return Response::Bad("head not UTF-8");
        };
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").splitn(3, ' ');
        let version = first.next().unwrap_or("");
        let Some(status) = first.next().and_then(|s| s.parse::<u16>().ok()) else {
            return Response::Bad("no status");
        };
        if !version.starts_with("HTTP/1.") {
            return Response::Bad("not HTTP/1.x");
        }
        let mut keep_alive = version == "HTTP/1.1";
        let (mut length, mut chunked) = (None, false);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return Response::Bad("header without a colon");
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                match value.parse::<usize>() {
                    Ok(n) => length = Some(n),
                    Err(_) => return Response::Bad("bad content-length"),
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    keep_alive = false;
                } else if v.contains("keep-alive") {
                    keep_alive = true;
                }
            }
        }
        at += head_len;
        if (100..200).contains(&status) {
            continue; // an interim response: the real one follows
        }
        let body = if status == 204 || status == 304 {
            Some(0)
        } else if chunked {
            match chunked_len(&buf[at..]) {
                Ok(Some(n)) => Some(n),
                Ok(None) => return Response::Partial,
                Err(e) => return Response::Bad(e),
            }
        } else {
            length
        };
        let Some(body) = body else {
            return Response::Bad("no length (a body to EOF)");
        };
        if buf.len() - at < body {
            return Response::Partial;
        }
        return Response::Done {
            len: at + body,
            status,
            keep_alive,
        };
    }
}

/// The length of a whole chunked body (trailers included) at the start of `buf`; None while incomplete.
fn chunked_len(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let mut at = 0;
    loop {
        let Some(eol) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + eol]).map_err(|_| "chunk size not UTF-8")?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| "bad chunk size")?;
        at += eol + 2;
        if size == 0 {
            // trailers up to the empty line
            loop {
                let Some(eol) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF");
        }
        at += size + 2;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_and_partial() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\nHTTP/1.1";
        assert_eq!(
            response(r),
            Response::Done {
                len: r.len() - 8,
                status: 200,
                keep_alive: true
            }
        );
        for cut in 0..r.len() - 8 {
            assert_eq!(response(&r[..cut]), Response::Partial, "cut at {cut}");
        }
    }

    #[test]
    fn chunked_interim_and_close() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2;x=y\r\nok\r\n1\r\n\n\r\n0\r\nT: v\r\n\r\n";
        assert_eq!(
            response(r),
            Response::Done {
                len: r.len(),
                status: 200,
                keep_alive: false
            }
        );
        for cut in 0..r.len() {
            assert_eq!(response(&r[..cut]), Response::Partial, "cut at {cut}");
        }
    }

    #[test]
    fn http10_no_body_and_bad() {
        assert_eq!(
            response(b"HTTP/1.0 204 No Content\r\n\r\n"),
            Response::Done {
                len: 27,
                status: 204,
                keep_alive: false
            }
        );
        assert_eq!(
            response(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"),
            Response::Done {
                len: 62,
                status: 200,
                keep_alive: true
            }
        );
        assert!(matches!(response(b"HTTP/1.1 200 OK\r\n\r\n"), Response::Bad(_)));
        assert!(matches!(response(b"SSH-2.0-x\r\n\r\n"), Response::Bad(_)));
        assert!(matches!(
            response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Response::Bad(_)
        ));
    }
}
