//! HPACK (RFC 7541), as much as the gRPC bench tools need: a complete decoder (static and dynamic tables, table
//! size updates, Huffman-coded strings) and an encoder that indexes (static table, dynamic table with eviction)
//! but writes its strings raw (Huffman coding is optional for an encoder).

use std::collections::VecDeque;
use std::sync::OnceLock;

/// The default and the largest dynamic table either side keeps (SETTINGS_HEADER_TABLE_SIZE default).
pub const TABLE_SIZE: usize = 4096;

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The length in bits of the Huffman code of each symbol 0..=255 and EOS (256), RFC 7541 Appendix B. The code is
/// canonical (codes of one length are consecutive, in symbol order, and shorter codes come first), so the lengths
/// define it.
const HUFFMAN_BITS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0-15
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16-31
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // ' ' - '/'
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // '0' - '?'
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // '@' - 'O'
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 'P' - '_'
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // '`' - 'o'
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 'p' - 127
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128-143
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144-159
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160-175
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176-191
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192-207
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208-223
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224-239
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240-255
    30, // EOS
];

const MAX_BITS: usize = 30;
const EOS: u16 = 256;

/// The canonical code laid out for decoding one bit at a time: for each length, the first code of that length,
/// how many codes have it, and where its symbols start in `symbols`.
struct Huffman {
    first: [u32; MAX_BITS + 1],
    count: [u32; MAX_BITS + 1],
    offset: [usize; MAX_BITS + 1],
    symbols: [u16; 257],
}

fn huffman() -> &'static Huffman {
    static TABLE: OnceLock<Huffman> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut h = Huffman {
            first: [0; MAX_BITS + 1],
            count: [0; MAX_BITS + 1],
            offset: [0; MAX_BITS + 1],
            symbols: [0; 257],
        };
        for &bits in &HUFFMAN_BITS {
            h.count[bits as usize] += 1;
        }
        let (mut code, mut at) = (0u32, 0usize);
        for bits in 1..=MAX_BITS {
            code = (code + h.count[bits - 1]) << 1;
            h.first[bits] = code;
            h.offset[bits] = at;
            at += h.count[bits] as usize;
        }
        let mut next = h.offset;
        for (sym, &bits) in HUFFMAN_BITS.iter().enumerate() {
            h.symbols[next[bits as usize]] = sym as u16;
            next[bits as usize] += 1;
        }
        h
    })
}

/// Appends the Huffman decoding of `src` to `out`.
pub fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let h = huffman();
    let (mut code, mut bits) = (0u32, 0usize);
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            bits += 1;
            if bits > MAX_BITS {
                return Err("Huffman code longer than 30 bits".into());
            }
            let n = code.wrapping_sub(h.first[bits]);
            if code >= h.first[bits] && n < h.count[bits] {
                let sym = h.symbols[h.offset[bits] + n as usize];
                if sym == EOS {
                    return Err("EOS in a Huffman-coded string".into());
                }
                out.push(sym as u8);
                code = 0;
                bits = 0;
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (the most significant bits of EOS).
    if bits >= 8 || code != (1u32 << bits) - 1 {
        return Err("bad Huffman padding".into());
    }
    Ok(())
}

/// Appends the Huffman coding of `src` to `out` (for tests of the decoder; the encoder writes raw strings).
pub fn huffman_encode(src: &[u8], out: &mut Vec<u8>) {
    let h = huffman();
    // The code of each symbol, from the canonical layout.
    let code_of = |sym: usize| -> (u64, usize) {
        let bits = HUFFMAN_BITS[sym] as usize;
        let rank = h.symbols[h.offset[bits]..h.offset[bits] + h.count[bits] as usize]
            .iter()
            .position(|&s| s as usize == sym)
            .unwrap_or(0);
        (u64::from(h.first[bits]) + rank as u64, bits)
    };
    let (mut acc, mut n) = (0u64, 0usize);
    for &b in src {
        let (code, bits) = code_of(b as usize);
        acc = (acc << bits) | code;
        n += bits;
        while n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
        }
        acc &= (1u64 << n) - 1;
    }
    if n > 0 {
        out.push(((acc << (8 - n)) | ((1u64 << (8 - n)) - 1)) as u8);
    }
}

/// An integer with an N-bit prefix (RFC 7541 5.1); `pos` moves past it.
fn int(buf: &[u8], pos: &mut usize, prefix: u32) -> Result<usize, String> {
    let max = (1usize << prefix) - 1;
    let first = *buf.get(*pos).ok_or("truncated integer")?;
    *pos += 1;
    let mut v = usize::from(first) & max;
    if v < max {
        return Ok(v);
    }
    let mut shift = 0;
    loop {
        let b = *buf.get(*pos).ok_or("truncated integer")?;
        *pos += 1;
        v += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(v);
        }
        if shift > 28 {
            return Err("integer too large".into());
        }
    }
}

/// Writes an integer with an N-bit prefix, `high` holding the bits above the prefix.
fn put_int(out: &mut Vec<u8>, high: u8, prefix: u32, mut v: usize) {
    let max = (1usize << prefix) - 1;
    if v < max {
        out.push(high | v as u8);
        return;
    }
    out.push(high | max as u8);
    v -= max;
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A string literal: the raw bytes in `block`, or decoded into `scratch`.
fn string<'a>(block: &'a [u8], pos: &mut usize, scratch: &'a mut Vec<u8>) -> Result<&'a [u8], String> {
    let huffman = block.get(*pos).ok_or("truncated string")? & 0x80 != 0;
    let len = int(block, pos, 7)?;
    let raw = block.get(*pos..*pos + len).ok_or("truncated string")?;
    *pos += len;
    if huffman {
        scratch.clear();
        huffman_decode(raw, scratch)?;
        Ok(scratch)
    } else {
        Ok(raw)
    }
}

fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// A field: name and value.
type Field = (Box<[u8]>, Box<[u8]>);

/// A dynamic table, newest entry first.
#[derive(Default)]
struct Table {
    entries: VecDeque<Field>,
    size: usize,
    max: usize,
}

impl Table {
    fn new(max: usize) -> Table {
        Table {
            max,
            ..Table::default()
        }
    }

    fn evict(&mut self) {
        while self.size > self.max {
            let Some((n, v)) = self.entries.pop_back() else { break };
            self.size -= entry_size(&n, &v);
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = entry_size(name, value);
        if size > self.max {
            // An entry larger than the table empties it (RFC 7541 4.4).
            self.entries.clear();
            self.size = 0;
            return;
        }
        // Counted first, so that eviction makes room for it among the older entries.
        self.size += size;
        self.evict();
        self.entries.push_front((name.into(), value.into()));
    }

    /// The entry at 1-based HPACK index `i` (static, then dynamic).
    fn get(&self, i: usize) -> Option<(&[u8], &[u8])> {
        if i == 0 {
            None
        } else if i <= STATIC.len() {
            let (n, v) = STATIC[i - 1];
            Some((n.as_bytes(), v.as_bytes()))
        } else {
            self.entries.get(i - STATIC.len() - 1).map(|(n, v)| (&n[..], &v[..]))
        }
    }
}

/// The decoding side of one connection.
pub struct Decoder {
    table: Table,
    /// Our SETTINGS_HEADER_TABLE_SIZE: the most a size update may ask for.
    limit: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: Table::new(TABLE_SIZE),
            limit: TABLE_SIZE,
            name: Vec::new(),
            value: Vec::new(),
        }
    }
}

impl Decoder {
    /// Decodes one header block, calling `f` with each field in order. Every block of a connection must go
    /// through here, in order (the dynamic table depends on all of them).
    pub fn decode(&mut self, block: &[u8], mut f: impl FnMut(&[u8], &[u8])) -> Result<(), String> {
        let mut pos = 0;
        let mut fields = 0;
        while pos < block.len() {
            let b = block[pos];
            if b & 0x80 != 0 {
                let i = int(block, &mut pos, 7)?;
                let (n, v) = self.table.get(i).ok_or_else(|| format!("no table entry {i}"))?;
                f(n, v);
            } else if b & 0xe0 == 0x20 {
                if fields > 0 {
                    return Err("table size update after a field".into());
                }
                let size = int(block, &mut pos, 5)?;
                if size > self.limit {
                    return Err(format!("table size update to {size} above {}", self.limit));
                }
                self.table.max = size;
                self.table.evict();
                continue;
            } else {
                // 01: incremental indexing (6-bit index); 0000 / 0001: without indexing / never indexed (4-bit).
                let indexing = b & 0xc0 == 0x40;
                let i = int(block, &mut pos, if indexing { 6 } else { 4 })?;
                let mut name = std::mem::take(&mut self.name);
                name.clear();
                if i == 0 {
                    let mut scratch = Vec::new();
                    name.extend_from_slice(string(block, &mut pos, &mut scratch)?);
                } else {
                    let (n, _) = self.table.get(i).ok_or_else(|| format!("no table entry {i}"))?;
                    name.extend_from_slice(n);
                }
                let mut scratch = std::mem::take(&mut self.value);
                let value = string(block, &mut pos, &mut scratch)?;
                f(&name, value);
                if indexing {
                    self.table.insert(&name, value);
                }
                self.name = name;
                self.value = scratch;
            }
            fields += 1;
        }
        Ok(())
    }
}

/// The encoding side of one connection.
pub struct Encoder {
    table: Table,
    /// A size update owed at the start of the next block.
    update: Option<usize>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            table: Table::new(TABLE_SIZE),
            update: None,
        }
    }
}

impl Encoder {
    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the table never grows beyond it (nor beyond [`TABLE_SIZE`]).
    pub fn set_limit(&mut self, peer: usize) {
        let max = peer.min(TABLE_SIZE);
        if max != self.table.max {
            self.table.max = max;
            self.table.evict();
            self.update = Some(max);
        }
    }

    /// To call before the first field of each block.
    pub fn begin(&mut self, out: &mut Vec<u8>) {
        if let Some(size) = self.update.take() {
            put_int(out, 0x20, 5, size);
        }
    }

    /// One field: indexed when the table has it; else a literal, added to the dynamic table when `index`.
    pub fn field(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8], index: bool) {
        let mut name_at = 0;
        for (i, (n, v)) in STATIC.iter().enumerate() {
            if n.as_bytes() == name {
                if v.as_bytes() == value {
                    put_int(out, 0x80, 7, i + 1);
                    return;
                }
                if name_at == 0 {
                    name_at = i + 1;
                }
            }
        }
        for (i, (n, v)) in self.table.entries.iter().enumerate() {
            if &n[..] == name {
                if &v[..] == value {
                    put_int(out, 0x80, 7, STATIC.len() + 1 + i);
                    return;
                }
                if name_at == 0 {
                    name_at = STATIC.len() + 1 + i;
                }
            }
        }
        let index = index && entry_size(name, value) <= self.table.max;
        if index {
            put_int(out, 0x40, 6, name_at);
        } else {
            put_int(out, 0x00, 4, name_at);
        }
        if name_at == 0 {
            put_int(out, 0, 7, name.len());
            out.extend_from_slice(name);
        }
        put_int(out, 0, 7, value.len());
        out.extend_from_slice(value);
        if index {
            self.table.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn fields(d: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((String::from_utf8_lossy(n).into(), String::from_utf8_lossy(v).into()))
        })
        .unwrap();
        out
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn huffman_known_codes() {
        // RFC 7541 C.4.1: "www.example.com"
        let mut out = Vec::new();
        huffman_encode(b"www.example.com", &mut out);
        assert_eq!(out, hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff"));
        let mut back = Vec::new();
        huffman_decode(&out, &mut back).unwrap();
        assert_eq!(back, b"www.example.com");
        // RFC 7541 C.4.2: "no-cache"
        out.clear();
        huffman_encode(b"no-cache", &mut out);
        assert_eq!(out, hex("a8eb 1064 9cbf"));
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for len in [0, 1, 2, 3, 7, 100, all.len()] {
            let mut enc = Vec::new();
            huffman_encode(&all[..len], &mut enc);
            let mut dec = Vec::new();
            huffman_decode(&enc, &mut dec).unwrap();
            assert_eq!(dec, &all[..len]);
        }
        // Padding longer than 7 bits, or not all ones, is an error.
        assert!(huffman_decode(&[0xff], &mut Vec::new()).is_err());
        assert!(huffman_decode(&[0x00], &mut Vec::new()).is_err());
    }

    #[test]
    fn rfc_requests_with_huffman() {
        // RFC 7541 C.4: three requests on one connection, the dynamic table carried over.
        let mut d = Decoder::default();
        assert_eq!(
            fields(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(
            fields(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf")),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(
            fields(
                &mut d,
                &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")
            ),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.table.size, 164);
    }

    #[test]
    fn rfc_responses_with_eviction() {
        // RFC 7541 C.6: a 256-byte table, entries evicted.
        let mut d = Decoder::default();
        d.table.max = 256;
        assert_eq!(
            fields(
                &mut d,
                &hex(
                    "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d \
                     29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3"
                )
            ),
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ])
        );
        assert_eq!(d.table.size, 222);
        assert_eq!(
            fields(&mut d, &hex("4883 640e ffc1 c0bf")),
            pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ])
        );
        assert_eq!(d.table.size, 222);
    }

    #[test]
    fn encoder_and_decoder_agree() {
        let (mut e, mut d) = (Encoder::default(), Decoder::default());
        let req: &[(&str, &str, bool)] = &[
            (":method", "POST", true),
            (":scheme", "http", true),
            (":path", "/helloworld.Greeter/SayHello", true),
            (":authority", "127.0.0.1:8080", true),
            ("content-type", "application/grpc", true),
            ("te", "trailers", true),
            (
                "grpc-message",
                "something long enough to need a multi-byte length prefix",
                false,
            ),
        ];
        let mut sizes = Vec::new();
        for round in 0..3 {
            if round == 2 {
                e.set_limit(64);
                d.limit = 64;
            }
            let mut block = Vec::new();
            e.begin(&mut block);
            for (n, v, i) in req {
                e.field(&mut block, n.as_bytes(), v.as_bytes(), *i);
            }
            sizes.push(block.len());
            let got = fields(&mut d, &block);
            let want: Vec<(String, String)> = req.iter().map(|(n, v, _)| (n.to_string(), v.to_string())).collect();
            assert_eq!(got, want, "round {round}");
            assert_eq!(e.table.size, d.table.size, "round {round}");
        }
        // The second block refers to the table: one byte a field, but the unindexed one spelled out again.
        let unindexed = 1 + 1 + "grpc-message".len() + 1 + req[6].1.len();
        assert_eq!(sizes[1], 6 + unindexed, "{sizes:?}");
    }

    #[test]
    fn bad_blocks_are_errors() {
        let mut d = Decoder::default();
        assert!(d.decode(&hex("80"), |_, _| {}).is_err()); // index 0
        assert!(d.decode(&hex("be"), |_, _| {}).is_err()); // index 62, empty table
        assert!(d.decode(&hex("3fe2 1f"), |_, _| {}).is_err()); // size update to 4097
        assert!(d.decode(&hex("4005 6162"), |_, _| {}).is_err()); // truncated name
        assert!(d.decode(&hex("ff ff ff ff ff 0f"), |_, _| {}).is_err()); // integer overflow
    }
}
