//! Where an HTTP/1 body ends (a response's, or a streamed request's), found while it is passed through with its own
//! framing.

use crate::proxy::http::parse::Framing;

/// Read size while relaying a body.
pub(super) const BODY_CHUNK: usize = 64 * 1024;

/// Where a message body ends, fed its bytes as they arrive. Serializable: an exchange handed over in the middle of
/// a body carries it (see [`super::exchange`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) enum BodyEnd {
    Empty,
    /// Bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

impl BodyEnd {
    pub(super) fn new(framing: Framing) -> BodyEnd {
        match framing {
            // A tunnel has no body: what follows its head belongs to the upgraded protocol.
            Framing::Empty | Framing::Tunnel => BodyEnd::Empty,
            Framing::Length(n) => BodyEnd::Length(n),
            Framing::Chunked => BodyEnd::Chunked(ChunkedDecoder::default()),
            Framing::Close => BodyEnd::Close,
        }
    }

    /// Consumes `bytes` up to the end of the body: how many belong to it, and whether it ended.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
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

    /// Whether a state received from another instance is one this decoder can reach.
    pub(super) fn is_valid(&self) -> bool {
        match self {
            BodyEnd::Chunked(d) => d.digits <= 15 && d.line <= MAX_CHUNK_LINE,
            _ => true,
        }
    }

    /// The most bytes worth reading next (never past a known length).
    pub(super) fn want(&self) -> usize {
        match self {
            BodyEnd::Length(left) => usize::try_from(*left).unwrap_or(usize::MAX).min(BODY_CHUNK),
            _ => BODY_CHUNK,
        }
    }
}

/// Finds the end of a chunked body passed through as it is (RFC 9112 §7.1), trailers included.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Chunk size read so far, or bytes of chunk data left.
    size: u64,
    /// Significant hex digits of the chunk size read so far (leading zeros do not count).
    digits: u8,
    /// A digit of the chunk size was read (a zero included).
    #[serde(default)]
    sized: bool,
    /// Bytes of the current size-line extension or trailer line, or leading zeros of the size.
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
enum ChunkState {
    #[default]
    Size,
    /// Whitespace after the size: only more of it, an extension (`;`) or the end of the line may follow.
    SizeWs,
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
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), &'static str> {
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
                (Size, b'0') if self.digits == 0 => {
                    // A leading zero: valid (RFC 9112 §7.1), bounded like a line.
                    self.sized = true;
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err("chunk size line too long");
                    }
                    Size
                }
                (Size, b) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err("chunk size too large");
                    }
                    self.sized = true;
                    self.digits += 1;
                    self.size = self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                    Size
                }
                // `chunk-size [ chunk-ext ] CRLF`, `chunk-ext = *( BWS ";" ... )` (RFC 9112 §7.1): after the
                // size's whitespace, nothing but more of it, a `;` or the CR (a `5 x` size is no size).
                (Size | SizeWs, b' ' | b'\t') if self.sized => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err("chunk size line too long");
                    }
                    SizeWs
                }
                (Size | SizeWs, b';') if self.sized => {
                    self.line = 0;
                    Extension
                }
                (Size | SizeWs, b'\r') if self.sized => SizeLf,
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
                    self.sized = false;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // Leading zeros do not count toward the 15-digit limit.
        let padded = b"00000000000000000000000000005\r\nhello\r\n0000000000000000000\r\n\r\n";
        assert_eq!(ChunkedDecoder::default().feed(padded), Ok((padded.len(), true)));
        assert_eq!(
            ChunkedDecoder::default().feed(b"0000fffffffffffffff\r\n"),
            Ok((21, false))
        );
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

    /// Found by the `h1_chunked` fuzz target (against httparse): a size followed by whitespace was taken with
    /// anything after it, `5 x` as 5.
    #[test]
    fn only_an_extension_follows_the_whitespace_after_a_chunk_size() {
        for good in [
            &b"5 \r\n"[..],
            b"5\t \r\n",
            b"5 ;a=b\r\n",
            b"5\t; a = \"b\"\r\n",
            b"0 \r\n",
        ] {
            assert_eq!(
                ChunkedDecoder::default().feed(good),
                Ok((good.len(), false)),
                "{:?}",
                String::from_utf8_lossy(good)
            );
        }
        for bad in [&b"5 x\r\n"[..], b"5 5\r\n", b"000 0\r\n", b"5\t=\r\n", b" 5\r\n"] {
            assert!(
                ChunkedDecoder::default().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut whitespace = b"5".to_vec();
        whitespace.resize(MAX_CHUNK_LINE + 2, b' ');
        assert!(ChunkedDecoder::default().feed(&whitespace).is_err());
    }
}
