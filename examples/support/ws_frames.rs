//! The frames of a WebSocket echo check: text and binary frames of 0 to 64 KiB, each derived from its sequence
//! number alone and carrying that number and the checksum of its payload, so that a frame lost, repeated,
//! reordered or changed is told apart from the rest.
//!
//! Shared by `examples/loadgen.rs` and `tests/websocket.rs` (each includes it with `#[path]`).

use tokio_tungstenite::tungstenite::Message;

/// FNV-1a (64 bits).
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The frame number `seq`: text or binary, 0 to 64 KiB of payload. A text frame is `SEQ SUM PAYLOAD` (both
/// numbers 16 hex digits, the payload printable ASCII); a binary frame is the sequence number and the checksum
/// (big-endian u64 each), then the payload.
pub fn frame(seq: u64) -> Message {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let size = (next() % (64 * 1024 - 40)) as usize;
    if next() % 2 == 0 {
        let payload: String = (0..size).map(|_| (b' ' + (next() % 95) as u8) as char).collect();
        Message::text(format!("{seq:016x} {:016x} {payload}", fnv(payload.as_bytes())))
    } else {
        let payload: Vec<u8> = (0..size).map(|_| (next() >> 32) as u8).collect();
        let mut m = Vec::with_capacity(16 + size);
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&fnv(&payload).to_be_bytes());
        m.extend_from_slice(&payload);
        Message::binary(m)
    }
}

/// The big-endian u64 at `at` in `b`.
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
}

/// Checks an echoed frame on its own (sequence number and checksum), then against the one sent as `seq`.
pub fn check_echo(seq: u64, got: &Message) -> Result<(), String> {
    let carried = match got {
        Message::Text(t) => {
            let t = t.as_str();
            let (s, rest) = t.split_at_checked(16).ok_or("short text frame")?;
            let (sum, payload) = rest
                .get(1..17)
                .zip(rest.get(18..))
                .ok_or_else(|| format!("frame {seq}: malformed text frame"))?;
            let ok = u64::from_str_radix(sum, 16).ok() == Some(fnv(payload.as_bytes()));
            (u64::from_str_radix(s, 16).ok(), ok)
        }
        Message::Binary(b) if b.len() >= 16 => {
            let (s, sum) = (u64_at(b, 0), u64_at(b, 8));
            (s, sum.is_some() && sum == b.get(16..).map(fnv))
        }
        other => return Err(format!("frame {seq}: got {other:?}")),
    };
    match carried {
        (Some(s), _) if s != seq => Err(format!("frame {seq} expected, frame {s} came")),
        (_, false) => Err(format!("frame {seq}: checksum mismatch")),
        (None, _) => Err(format!("frame {seq}: no sequence number")),
        _ if *got != frame(seq) => Err(format!("frame {seq}: not the frame sent")),
        _ => Ok(()),
    }
}
