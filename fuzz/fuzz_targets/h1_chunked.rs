//! `ChunkedDecoder`, which finds where a chunked body ends while the engine passes it through as it is (the
//! requests' streamed bodies and the responses'). Its "decoded body" is that end and the chunk boundaries on the
//! way; they are read from its state as it travels at a migration (serde). The first byte chooses the mode, the
//! next ones where the input is split; then:
//!
//! - raw mode, arbitrary bytes: fed whole, and split at the chosen points with the decoder sent through serde at
//!   each (a migration between two reads), the verdict is the same (bytes of the body, ended or not, or the same
//!   error); no feed reports more bytes than it was given, nor fewer before the end; after the end nothing more
//!   is taken. The first chunk-size line is compared with httparse's `parse_chunk_size`: same size, or one of the
//!   intended differences listed in `size_line`.
//! - encoded mode: chunks built from the input (sizes with leading zeros in either case, chunk extensions with
//!   optional whitespace and quoted strings, a last chunk with extensions, trailers, bytes after the body)
//!   decode back: each chunk's data starts and ends where it was written, the body ends right after the
//!   trailers, and split feeding agrees.
#![no_main]

use baton::proxy::http::framing::ChunkedDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut src = Src(data);
    let mode = src.byte();
    let splits: Vec<u16> = (0..src.byte() % 8)
        .map(|_| u16::from_le_bytes([src.byte(), src.byte()]))
        .collect();
    if mode & 1 == 0 {
        let body = src.0;
        let _ = split_feeding(body, &splits);
        size_line(body);
    } else {
        round_trip(&mut src, &splits);
    }
});

/// The rest of the fuzz input, read as it is needed (zeros once it runs out).
struct Src<'a>(&'a [u8]);

impl Src<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

/// The decoder after a migration: serialized, and read back as the successor does.
fn migrate(d: &ChunkedDecoder) -> ChunkedDecoder {
    let json = serde_json::to_vec(d).expect("the decoder serializes");
    let back: ChunkedDecoder = serde_json::from_slice(&json).expect("and deserializes");
    assert_eq!(&back, d, "a migration changes the decoder");
    back
}

/// Where the decoder is: its state and its `size` (size read so far, or data left), as serialized.
fn state(d: &ChunkedDecoder) -> (String, u64) {
    let v = serde_json::to_value(d).expect("the decoder serializes");
    let state = v["state"].as_str().expect("a state").to_owned();
    (state, v["size"].as_u64().expect("a size"))
}

/// Feeds `body` whole and split at `splits` (through a migration at each split): the same verdict, and the
/// verdict, whole.
fn split_feeding(body: &[u8], splits: &[u16]) -> Result<(usize, bool), &'static str> {
    let whole = ChunkedDecoder::default().feed(body);
    if let Ok((k, done)) = whole {
        assert!(k <= body.len(), "took {k} of {} bytes", body.len());
        assert!(
            done || k == body.len(),
            "stopped at {k} of {} before the end",
            body.len()
        );
    }
    let mut cuts: Vec<usize> = splits.iter().map(|&s| usize::from(s) % (body.len() + 1)).collect();
    cuts.push(body.len());
    cuts.sort_unstable();
    let mut d = ChunkedDecoder::default();
    let (mut at, mut taken) = (0, 0);
    let mut split = Ok((0, false));
    for cut in cuts {
        let piece = &body[at..cut];
        at = cut;
        match d.feed(piece) {
            Ok((k, ended)) => {
                assert!(k <= piece.len(), "took {k} of {} bytes", piece.len());
                assert!(
                    ended || k == piece.len(),
                    "stopped at {k} of {} before the end",
                    piece.len()
                );
                taken += k;
                split = Ok((taken, ended));
                if ended {
                    assert_eq!(d.feed(&body[taken..]), Ok((0, true)), "took more after the end");
                    break;
                }
            }
            Err(why) => {
                split = Err(why);
                break;
            }
        }
        d = migrate(&d);
    }
    assert_eq!(split, whole, "split at {splits:?}: {:?}", String::from_utf8_lossy(body));
    whole
}

/// The first chunk-size line of `body` (up to its first LF), against httparse's `parse_chunk_size`.
fn size_line(body: &[u8]) {
    let Some(lf) = body.iter().position(|&b| b == b'\n') else {
        return;
    };
    let line = &body[..=lf];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    let significant = digits - zeros;
    // Leading zeros are valid in any number (`chunk-size = 1*HEXDIG`, RFC 9112 §7.1): the decoder takes them
    // (up to a line's 16 KiB), httparse counts them toward its 16-digit limit. Compared with one zero kept.
    let strip = zeros - usize::from(significant == 0 && zeros > 0);
    let reference = httparse::parse_chunk_size(&line[strip..]);
    let mut d = ChunkedDecoder::default();
    let got = d.feed(line);
    let text = String::from_utf8_lossy(line);
    match reference {
        // No digit (httparse reads an empty size as 0): the decoder refuses, `1*HEXDIG`.
        Ok(httparse::Status::Complete(_)) if digits == 0 => assert!(got.is_err(), "{text:?}"),
        // 16 significant digits (httparse's limit): the decoder refuses sizes from 2^60 on.
        Ok(httparse::Status::Complete(_)) if significant >= 16 => assert!(got.is_err(), "{text:?}"),
        // Past 16 KiB the decoder may refuse the line (leading zeros and whitespace are bounded like a line).
        Ok(httparse::Status::Complete(_)) if line.len() > 16 * 1024 => {}
        Ok(httparse::Status::Complete((_, size))) => {
            assert_eq!(got, Ok((line.len(), false)), "{text:?}");
            let want = if size == 0 { "TrailerStart" } else { "Data" };
            let (s, left) = state(&d);
            assert_eq!(s, want, "{text:?}");
            if size > 0 {
                assert_eq!(left, size, "{text:?}");
            }
        }
        // httparse takes a bare LF inside an extension as one of its bytes and reads on; the decoder refuses a
        // bare LF anywhere (a recipient that ends the line there would read another body).
        Ok(httparse::Status::Partial) => assert!(got.is_err(), "{text:?}"),
        Err(_) => assert!(got.is_err(), "httparse refuses {text:?}, the decoder takes it"),
    }
}

/// Builds a chunked body from the input and checks that the decoder finds its chunks and its end.
fn round_trip(src: &mut Src, splits: &[u16]) {
    let mut body = Vec::new();
    let mut chunks = Vec::new(); // (where its data starts, its length)
    for _ in 0..src.byte() % 8 {
        let len = 1 + usize::from(src.byte());
        write_size_line(&mut body, len as u64, src);
        chunks.push((body.len(), len));
        let fill = src.byte();
        body.extend((0..len).map(|i| fill.wrapping_add(i as u8)));
        body.extend_from_slice(b"\r\n");
    }
    write_size_line(&mut body, 0, src);
    let last = body.len();
    for i in 0..src.byte() % 4 {
        body.extend_from_slice(format!("X-T{i}:").as_bytes());
        for _ in 0..src.byte() % 16 {
            // Field value bytes: visible, space, tab, obs-text.
            let b = src.byte();
            body.push(if b == b'\r' || b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                b'.'
            } else {
                b
            });
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"\r\n");
    let end = body.len();
    body.extend_from_slice(src.0);

    let text = String::from_utf8_lossy(&body);
    assert_eq!(split_feeding(&body, splits), Ok((end, true)), "{text:?}");
    // Chunk by chunk: each size line leaves the decoder at its data, with its length left; its data, at the CRLF.
    let mut d = ChunkedDecoder::default();
    let mut at = 0;
    for (start, len) in chunks {
        assert_eq!(d.feed(&body[at..start]), Ok((start - at, false)), "{text:?}");
        assert_eq!(state(&d), ("Data".to_owned(), len as u64), "{text:?}");
        d = migrate(&d);
        assert_eq!(d.feed(&body[start..start + len]), Ok((len, false)), "{text:?}");
        assert_eq!(state(&d).0, "DataCr", "{text:?}");
        at = start + len;
    }
    assert_eq!(d.feed(&body[at..last]), Ok((last - at, false)), "{text:?}");
    assert_eq!(state(&d).0, "TrailerStart", "{text:?}");
    assert_eq!(d.feed(&body[last..]), Ok((end - last, true)), "{text:?}");
}

/// Writes the size line of a chunk of `size` bytes: leading zeros, either case, extensions.
fn write_size_line(body: &mut Vec<u8>, size: u64, src: &mut Src) {
    let how = src.byte();
    let zeros = match how & 3 {
        0 => 0,
        1 => 1,
        2 => usize::from(src.byte() % 16),
        _ => 16 + usize::from(src.byte()),
    };
    body.extend(std::iter::repeat_n(b'0', zeros));
    let hex = if how & 4 == 0 {
        format!("{size:x}")
    } else {
        format!("{size:X}")
    };
    body.extend_from_slice(hex.as_bytes());
    // chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
    for _ in 0..(how >> 3) % 4 {
        let ws = src.byte();
        bws(body, ws);
        body.push(b';');
        bws(body, ws >> 2);
        token(body, src);
        match src.byte() % 3 {
            0 => {}
            1 => {
                bws(body, ws >> 4);
                body.push(b'=');
                bws(body, ws >> 6);
                token(body, src);
            }
            _ => {
                body.extend_from_slice(b"=\"");
                for _ in 0..src.byte() % 8 {
                    match src.byte() {
                        b'"' | b'\\' => body.extend_from_slice(b"\\\""),
                        b'\r' | b'\n' | 0x7f => body.push(b' '),
                        b if b < 0x20 && b != b'\t' => body.push(b'-'),
                        b => body.push(b),
                    }
                }
                body.push(b'"');
            }
        }
    }
    body.extend_from_slice(b"\r\n");
}

/// Optional whitespace: none, a space, a tab, or both.
fn bws(body: &mut Vec<u8>, how: u8) {
    body.extend_from_slice([&b""[..], b" ", b"\t", b" \t"][usize::from(how % 4)]);
}

/// A token of 1 to 8 characters.
fn token(body: &mut Vec<u8>, src: &mut Src) {
    const TCHAR: &[u8] = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    for _ in 0..1 + src.byte() % 8 {
        body.push(TCHAR[usize::from(src.byte()) % TCHAR.len()]);
    }
}
