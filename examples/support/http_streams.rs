//! The two long HTTP/1.1 exchanges of the demo: a Server-Sent Events stream (`GET /sse`) and slow uploads
//! (`POST /upload`). Every event and every upload is derived from its number alone, so that an event lost,
//! repeated, reordered or changed, and an upload body cut or changed, are told apart from the rest.
//!
//! Shared by `examples/upstream.rs` (which serves them) and `examples/loadgen.rs` (which checks them); each
//! includes it with `#[path]`.

/// The path of the SSE stream.
pub const SSE_PATH: &str = "/sse";
/// The path of the upload check.
pub const UPLOAD_PATH: &str = "/upload";
/// The FNV-1a (64 bits) offset basis: the checksum of nothing, where [`fnv`] starts.
pub const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a (64 bits) of `bytes`, continuing from `h` (start with [`FNV_START`]).
pub fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Event number `id` of the SSE stream (ids start at 1), as it is on the wire:
/// `id: ID\ndata: ID SUM PAYLOAD\n\n`, the payload 0 to 255 printable ASCII characters derived from the id and
/// SUM its checksum (16 hex digits).
pub fn sse_event(id: u64) -> String {
    let len = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize;
    let payload: String = (0..len)
        .map(|i| (b'!' + ((id as usize).wrapping_add(i.wrapping_mul(7)) % 94) as u8) as char)
        .collect();
    format!(
        "id: {id}\ndata: {id} {:016x} {payload}\n\n",
        fnv(FNV_START, payload.as_bytes())
    )
}

/// The id an SSE event (as [`sse_event`] writes it) says it has, if it says one.
pub fn sse_event_id(event: &str) -> Option<u64> {
    event
        .lines()
        .find_map(|line| line.strip_prefix("id:"))
        .and_then(|id| id.trim().parse().ok())
}

/// `len` bytes of the body of upload number `n`, from offset `at`.
pub fn upload_bytes(n: u64, at: usize, len: usize) -> Vec<u8> {
    (at..at + len)
        .map(|i| {
            let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
            (x >> 29) as u8
        })
        .collect()
}

/// How a request body was delimited, as the upstream names it in its answer.
pub fn framing_name(chunked: bool) -> &'static str {
    if chunked {
        "chunked"
    } else {
        "content-length"
    }
}

/// The upstream's answer to an upload: its length, its checksum and how it was delimited.
pub fn upload_answer(len: u64, sum: u64, chunked: bool) -> String {
    format!("{len} {sum:016x} {}\n", framing_name(chunked))
}
