//! The wire format of the handoff protocol: length-prefixed, versioned, typed frames.
//!
//! ```text
//! +----------------+---------------+------------+----------------------+
//! | length: u32 BE | frame version | type: u8   | payload: JSON object |
//! | (bytes after   | u8 (= 1)      |            |                      |
//! |  this field)   |               |            |                      |
//! +----------------+---------------+------------+----------------------+
//! ```
//!
//! The decoder is pure (bytes in, messages out) so it can be property-tested and fuzzed without sockets.
//! Listening sockets travel as SCM_RIGHTS ancillary data attached to the first byte of a [`Message::Listeners`]
//! frame, one fd per [`ListenerTag`], in order; see [`crate::conn`].
//!
//! A server using the crate meets only [`ListenerTag`], [`Ready`] and [`Progress`] (re-exported at the crate
//! root); the rest is public for tests, fuzzing and tools that want to speak the protocol themselves.
//!
//! ```
//! use baton_migrate::wire::{decode, Message};
//!
//! let bytes = Message::ListenersEnd { total: 2 }.encode()?;
//! assert_eq!(&bytes[..6], &[0, 0, 0, 13, 1, 3]); // length 13, frame version 1, type 3
//! assert_eq!(decode(&bytes)?, Some((Message::ListenersEnd { total: 2 }, bytes.len())));
//! assert_eq!(decode(&bytes[..5])?, None); // incomplete: read more
//! # Ok::<(), baton_migrate::wire::WireError>(())
//! ```

use serde::{Deserialize, Serialize};

/// Version of the frame layout above. A peer with another frame version is refused before anything else: the
/// layout must be understood before any message, including HELLO's protocol negotiation, can be read.
pub const FRAME_VERSION: u8 = 1;
/// Oldest handoff protocol version this build speaks (negotiated in [`Hello`]). Old and new are different
/// builds by definition, so each side announces a range and the receiver picks the newest version both speak.
pub const PROTOCOL_MIN: u16 = 1;
/// Newest handoff protocol version this build speaks.
pub const PROTOCOL_MAX: u16 = 2;
/// First protocol version with [`Message::State`] and live connection migration ([`Message::Conns`]).
pub const PROTOCOL_CONNS: u16 = 2;
/// Most fds one handed-over connection may carry (a TCP relay: client and upstream).
pub const MAX_FDS_PER_CONN: u8 = 2;
/// Largest frame accepted, header included. Anything longer is a protocol error, not an allocation.
pub const MAX_FRAME: usize = 1 << 20;
/// Most fds carried by one frame. Kept well below the kernel's SCM_MAX_FD (253) that HAProxy ran into; more
/// listeners than this travel in several [`Message::Listeners`] batches.
pub const MAX_FDS_PER_FRAME: usize = 64;
/// Bytes before the payload: length (4), frame version (1), type (1). Exposed for fuzzers and tests that build
/// frames by hand.
pub const HEADER_LEN: usize = 6;

/// What a peer is to the instance that accepted its connection on the reconfig socket. One socket serves two
/// kinds of client (the old instance and the postStart hook), so each says which it is in its [`Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerRole {
    /// The running (old) instance, offering its listening sockets.
    Sender,
    /// The new instance that listens on the reconfig socket.
    Receiver,
    /// A `migrate` hook that only wants to know how the handoff ends.
    Watcher,
}

/// First message of each side: negotiates the protocol version and tells the peer who it is, for its logs and so
/// the new instance can compute its own generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// What the sender of this message is.
    pub role: PeerRole,
    /// Oldest protocol version the sender speaks.
    pub min_protocol: u16,
    /// Newest protocol version the sender speaks. In the receiver's reply, min = max = the chosen version.
    pub max_protocol: u16,
    /// Upgrade generation of the sender: 1 for a fresh start, +1 at each handoff.
    pub generation: u64,
    /// The sender's software version, for logs.
    pub version: String,
}

/// What a listening socket is, as the old instance knows it.
///
/// The tag travels next to the fd because an fd alone says little: the new instance matches on the socket's
/// *actual* address (see [`crate::Inherited::check`]), and uses the name and kind to log what it adopted and to
/// report what it did not want. The crate gives no meaning to `name` or `kind`; pick what your config calls
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerTag {
    /// Listener name from the configuration (unique per kind).
    pub name: String,
    /// Local address the socket is bound to, as `ip:port`.
    pub address: String,
    /// Application-defined kind, e.g. `http`, `tcp`, `admin`.
    pub kind: String,
}

/// The new instance's report when it is accepting on every listener: sent as READY, returned to the old side in
/// [`crate::Committed`], so its logs can say what became of each listener after the upgrade. All names are the
/// caller's; the crate does not check them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Listener names adopted from the fds received.
    pub adopted: Vec<String>,
    /// Listener names bound fresh (in the new configuration, not handed over).
    pub bound: Vec<String>,
    /// Listener names handed over but not in the new configuration; closed by the new instance after DONE.
    pub unclaimed: Vec<String>,
}

/// Where a takeover stands, as reported to `migrate` watchers: what [`crate::watch_takeover`] returns, and what
/// the postStart hook prints. Only the final report (`done`) is guaranteed to be seen; intermediate phases may be
/// skipped by a slow watcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Short phase name: `waiting`, `receiving`, `adopting`, `ready`, `complete`, `fresh`, `failed`.
    pub phase: String,
    /// Final report: no further progress follows.
    pub done: bool,
    /// For a final report: whether the new instance is serving every listener.
    pub ok: bool,
    /// Human-readable detail (the reason on failure).
    pub detail: String,
}

/// One frame of the handoff protocol. [`crate::hand_over`], [`crate::Takeover`] and [`crate::watch_takeover`]
/// exchange these for you; the type is public for tests and fuzzing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Protocol negotiation and identity. Both sides send it first.
    Hello(Hello),
    /// A batch of listening sockets; carries exactly `len()` fds.
    Listeners(Vec<ListenerTag>),
    /// All batches sent; `total` fds in all.
    ListenersEnd {
        /// Number of listeners sent in all batches.
        total: u32,
    },
    /// New → old: accepting on every listener.
    Ready(Ready),
    /// Old → new: about to stop accepting and drain.
    Commit,
    /// New → old: commit acknowledged, the handoff is complete.
    Done,
    /// Either side: this handoff is abandoned, with why.
    Refuse {
        /// Why, in one line.
        reason: String,
    },
    /// New → watcher: progress of the takeover.
    Progress(Progress),
    /// Old → new, right after HELLO (protocol 2): the application's state, opaque to the crate (baton sends its
    /// effective configuration and its counters).
    State(serde_json::Value),
    /// Old → new, after DONE (protocol 2): a batch of live client connections; carries the sum of their
    /// [`ConnTag::fds`] fds, in order.
    Conns(Vec<ConnTag>),
    /// New → old: which connections of the last [`Message::Conns`] it serves from now on, and which it refused
    /// (the old instance keeps serving those).
    ConnsAck {
        /// Ids now served by the new instance: the old one closes its copies without touching them.
        accepted: Vec<u64>,
        /// Ids the new instance closed its copies of: the old one resumes them.
        refused: Vec<u64>,
    },
    /// Old → new: no more connections follow; the application's final state (e.g. counters at exit).
    ConnsEnd(serde_json::Value),
}

/// A live client connection handed over after the commit (protocol 2), at a point where the application
/// stopped touching it (an HTTP/1 connection between two requests, a relay with nothing in flight).
///
/// The crate gives no meaning to `kind`, `listener` or `buffers`: they are the application's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnTag {
    /// Unique within the session, assigned by the sender; acknowledged by id.
    pub id: u64,
    /// Application-defined kind, e.g. `http1`, `tcp`.
    pub kind: String,
    /// Name of the listener that accepted it.
    pub listener: String,
    /// How many fds of the frame belong to it (1..=[`MAX_FDS_PER_CONN`]).
    pub fds: u8,
    /// Bytes the old instance read but did not process, or must still write, in the application's order.
    /// Base64 on the wire.
    #[serde(with = "base64_buffers", default)]
    pub buffers: Vec<Vec<u8>>,
}

mod base64_buffers {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(buffers: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let encoded: Vec<String> = buffers.iter().map(|b| STANDARD.encode(b)).collect();
        encoded.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let encoded = Vec::<String>::deserialize(d)?;
        encoded
            .iter()
            .map(|e| STANDARD.decode(e).map_err(serde::de::Error::custom))
            .collect()
    }
}

impl Message {
    /// The type byte on the wire (stable across protocol versions: new messages get new bytes).
    pub fn type_byte(&self) -> u8 {
        match self {
            Message::Hello(_) => 1,
            Message::Listeners(_) => 2,
            Message::ListenersEnd { .. } => 3,
            Message::Ready(_) => 4,
            Message::Commit => 5,
            Message::Done => 6,
            Message::Refuse { .. } => 7,
            Message::Progress(_) => 8,
            Message::State(_) => 9,
            Message::Conns(_) => 10,
            Message::ConnsAck { .. } => 11,
            Message::ConnsEnd(_) => 12,
        }
    }

    /// Upper-case name (`HELLO`, `READY`, ...), used in errors and logs so they match the protocol diagram.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "HELLO",
            Message::Listeners(_) => "LISTENERS",
            Message::ListenersEnd { .. } => "LISTENERS_END",
            Message::Ready(_) => "READY",
            Message::Commit => "COMMIT",
            Message::Done => "DONE",
            Message::Refuse { .. } => "REFUSE",
            Message::Progress(_) => "PROGRESS",
            Message::State(_) => "STATE",
            Message::Conns(_) => "CONNS",
            Message::ConnsAck { .. } => "CONNS_ACK",
            Message::ConnsEnd(_) => "CONNS_END",
        }
    }

    /// How many fds must arrive with this frame: both ends check it, so a stray fd is closed rather than leaked
    /// and a missing one is a protocol error rather than a misnumbered listener.
    pub fn fd_count(&self) -> usize {
        match self {
            Message::Listeners(tags) => tags.len(),
            Message::Conns(conns) => conns.iter().map(|c| usize::from(c.fds)).sum(),
            _ => 0,
        }
    }

    /// Encodes the frame, header included. Fails only for a frame larger than [`MAX_FRAME`] or a batch of more
    /// than [`MAX_FDS_PER_FRAME`] listeners, the same limits the decoder enforces.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let payload = match self {
            Message::Hello(h) => serde_json::to_vec(h),
            Message::Listeners(tags) => serde_json::to_vec(&Batch { listeners: tags }),
            Message::ListenersEnd { total } => serde_json::to_vec(&End { total: *total }),
            Message::Ready(r) => serde_json::to_vec(r),
            Message::Commit | Message::Done => Ok(b"{}".to_vec()),
            Message::Refuse { reason } => serde_json::to_vec(&Reason { reason: reason.clone() }),
            Message::Progress(p) => serde_json::to_vec(p),
            Message::State(v) => serde_json::to_vec(&StatePayload { state: v }),
            Message::Conns(conns) => serde_json::to_vec(&ConnBatch { conns }),
            Message::ConnsAck { accepted, refused } => serde_json::to_vec(&Ack { accepted, refused }),
            Message::ConnsEnd(v) => serde_json::to_vec(&StatePayload { state: v }),
        }
        .map_err(|e| WireError::Payload(self.name(), e.to_string()))?;
        if self.fd_count() > MAX_FDS_PER_FRAME {
            return Err(WireError::TooManyFds(self.fd_count()));
        }
        if let Message::Conns(conns) = self {
            check_conns(conns)?;
        }
        let len = payload.len() + 2;
        if len + 4 > MAX_FRAME {
            return Err(WireError::TooLong(len + 4));
        }
        let mut out = Vec::with_capacity(len + 4);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(FRAME_VERSION);
        out.push(self.type_byte());
        out.extend_from_slice(&payload);
        Ok(out)
    }
}

#[derive(Serialize, Deserialize)]
struct Batch<T> {
    listeners: T,
}

#[derive(Serialize, Deserialize)]
struct StatePayload<T> {
    state: T,
}

#[derive(Serialize, Deserialize)]
struct ConnBatch<T> {
    conns: T,
}

#[derive(Serialize, Deserialize)]
struct Ack<T> {
    accepted: T,
    refused: T,
}

/// Every connection carries 1..=[`MAX_FDS_PER_CONN`] fds, ids are unique, and the batch fits in one frame's fds.
fn check_conns(conns: &[ConnTag]) -> Result<(), WireError> {
    let total: usize = conns.iter().map(|c| usize::from(c.fds)).sum();
    if total > MAX_FDS_PER_FRAME {
        return Err(WireError::TooManyFds(total));
    }
    if let Some(c) = conns.iter().find(|c| c.fds == 0 || c.fds > MAX_FDS_PER_CONN) {
        return Err(WireError::Payload(
            "CONNS",
            format!(
                "connection {} carries {} fds (1..={MAX_FDS_PER_CONN} allowed)",
                c.id, c.fds
            ),
        ));
    }
    let mut ids: Vec<u64> = conns.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(WireError::Payload("CONNS", "duplicate connection id".into()));
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct End {
    total: u32,
}

#[derive(Serialize, Deserialize)]
struct Reason {
    reason: String,
}

/// A frame that cannot be decoded (or encoded). Every variant is a peer's fault and ends the session: after a
/// bad frame the byte stream cannot be trusted to be in sync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length prefix announces more than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLong(usize),
    /// The length prefix announces fewer bytes than the header needs.
    #[error("frame length {0} is shorter than its header")]
    TooShort(usize),
    /// Frame layout of another version.
    #[error("peer speaks frame version {0}, this build speaks {FRAME_VERSION}")]
    FrameVersion(u8),
    /// Unknown type byte.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The payload does not parse as the message its type byte names.
    #[error("malformed {0} payload: {1}")]
    Payload(&'static str, String),
    /// A batch of more fds than [`MAX_FDS_PER_FRAME`].
    #[error("a batch of {0} listeners exceeds the {MAX_FDS_PER_FRAME}-fd limit per frame")]
    TooManyFds(usize),
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame, and the message with the number of bytes it used
/// otherwise. Never panics, whatever the bytes.
///
/// Pure and incremental, so the caller can feed it whatever `recvmsg` returned so far, and tests can fuzz it
/// without sockets.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len < 2 {
        return Err(WireError::TooShort(len));
    }
    if len > MAX_FRAME - 4 {
        return Err(WireError::TooLong(len.saturating_add(4)));
    }
    // Check the version as soon as it arrives, before waiting for a possibly huge payload.
    if buf.len() >= 5 && buf[4] != FRAME_VERSION {
        return Err(WireError::FrameVersion(buf[4]));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let ty = buf[5];
    let payload = &buf[HEADER_LEN..4 + len];
    let message = match ty {
        1 => Message::Hello(parse(payload, "HELLO")?),
        2 => {
            let batch: Batch<Vec<ListenerTag>> = parse(payload, "LISTENERS")?;
            if batch.listeners.len() > MAX_FDS_PER_FRAME {
                return Err(WireError::TooManyFds(batch.listeners.len()));
            }
            Message::Listeners(batch.listeners)
        }
        3 => {
            let end: End = parse(payload, "LISTENERS_END")?;
            Message::ListenersEnd { total: end.total }
        }
        4 => Message::Ready(parse(payload, "READY")?),
        5 => {
            let _: serde_json::Map<String, serde_json::Value> = parse(payload, "COMMIT")?;
            Message::Commit
        }
        6 => {
            let _: serde_json::Map<String, serde_json::Value> = parse(payload, "DONE")?;
            Message::Done
        }
        7 => {
            let r: Reason = parse(payload, "REFUSE")?;
            Message::Refuse { reason: r.reason }
        }
        8 => Message::Progress(parse(payload, "PROGRESS")?),
        9 => Message::State(parse::<StatePayload<serde_json::Value>>(payload, "STATE")?.state),
        10 => {
            let batch: ConnBatch<Vec<ConnTag>> = parse(payload, "CONNS")?;
            check_conns(&batch.conns)?;
            Message::Conns(batch.conns)
        }
        11 => {
            let ack: Ack<Vec<u64>> = parse(payload, "CONNS_ACK")?;
            Message::ConnsAck {
                accepted: ack.accepted,
                refused: ack.refused,
            }
        }
        12 => Message::ConnsEnd(parse::<StatePayload<serde_json::Value>>(payload, "CONNS_END")?.state),
        other => return Err(WireError::UnknownType(other)),
    };
    Ok(Some((message, 4 + len)))
}

fn parse<'a, T: Deserialize<'a>>(payload: &'a [u8], what: &'static str) -> Result<T, WireError> {
    serde_json::from_slice(payload).map_err(|e| WireError::Payload(what, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                role: PeerRole::Sender,
                min_protocol: 1,
                max_protocol: 3,
                generation: 7,
                version: "v2".into(),
            }),
            Message::Listeners(vec![ListenerTag {
                name: "ingress".into(),
                address: "127.0.0.1:15006".into(),
                kind: "http".into(),
            }]),
            Message::ListenersEnd { total: 1 },
            Message::Ready(Ready {
                adopted: vec!["ingress".into()],
                bound: vec!["egress".into()],
                unclaimed: vec![],
            }),
            Message::Commit,
            Message::Done,
            Message::Refuse {
                reason: "no \"thanks\"\n".into(),
            },
            Message::Progress(Progress {
                phase: "complete".into(),
                done: true,
                ok: true,
                detail: String::new(),
            }),
            Message::State(serde_json::json!({"config": {"source": "listeners: []"}, "counters": {"a": 1}})),
            Message::Conns(vec![
                ConnTag {
                    id: 1,
                    kind: "http1".into(),
                    listener: "ingress".into(),
                    fds: 1,
                    buffers: vec![b"GET / HTTP/1.1\r\n".to_vec()],
                },
                ConnTag {
                    id: 2,
                    kind: "tcp".into(),
                    listener: "db".into(),
                    fds: 2,
                    buffers: vec![vec![0, 255, 7], vec![]],
                },
            ]),
            Message::ConnsAck {
                accepted: vec![1],
                refused: vec![2],
            },
            Message::ConnsEnd(serde_json::json!({"counters": {}})),
        ]
    }

    #[test]
    fn round_trip_every_message() {
        for m in samples() {
            let bytes = m.encode().expect("encode");
            assert_eq!(decode(&bytes).expect("decode"), Some((m.clone(), bytes.len())));
            // Every strict prefix is incomplete, never an error or a wrong message.
            for cut in 0..bytes.len() {
                assert_eq!(
                    decode(&bytes[..cut]).expect("prefix"),
                    None,
                    "{} cut at {cut}",
                    m.name()
                );
            }
        }
    }

    #[test]
    fn back_to_back_frames() {
        let mut buf = Vec::new();
        for m in samples() {
            buf.extend(m.encode().expect("encode"));
        }
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some((m, used)) = decode(&buf[at..]).expect("decode") {
            seen.push(m);
            at += used;
        }
        assert_eq!(seen, samples());
        assert_eq!(at, buf.len());
    }

    #[test]
    fn hostile_headers() {
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(WireError::TooLong(0xffff_ffff + 4))
        );
        assert_eq!(decode(&[0, 0, 0, 1, 1]), Err(WireError::TooShort(1)));
        assert_eq!(decode(&[0, 0, 0, 4, 9]), Err(WireError::FrameVersion(9)));
        assert_eq!(
            decode(&[0, 0, 0, 4, 1, 99, b'{', b'}']),
            Err(WireError::UnknownType(99))
        );
        assert!(matches!(
            decode(&[0, 0, 0, 4, 1, 1, b'{', b'}']),
            Err(WireError::Payload("HELLO", _))
        ));
        assert!(matches!(
            decode(&[0, 0, 0, 3, 1, 5, b'[']),
            Err(WireError::Payload("COMMIT", _))
        ));
    }

    #[test]
    fn oversized_batches_are_refused_both_ways() {
        let tag = ListenerTag {
            name: "l".into(),
            address: "127.0.0.1:1".into(),
            kind: "tcp".into(),
        };
        let m = Message::Listeners(vec![tag; MAX_FDS_PER_FRAME + 1]);
        assert_eq!(m.encode(), Err(WireError::TooManyFds(MAX_FDS_PER_FRAME + 1)));
    }

    #[test]
    fn conns_batches_are_checked_both_ways() {
        let tag = |id, fds| ConnTag {
            id,
            kind: "tcp".into(),
            listener: "l".into(),
            fds,
            buffers: vec![],
        };
        assert!(matches!(
            Message::Conns(vec![tag(1, 0)]).encode(),
            Err(WireError::Payload("CONNS", _))
        ));
        assert!(matches!(
            Message::Conns(vec![tag(1, 3)]).encode(),
            Err(WireError::Payload("CONNS", _))
        ));
        assert!(matches!(
            Message::Conns(vec![tag(1, 1), tag(1, 1)]).encode(),
            Err(WireError::Payload("CONNS", _))
        ));
        let many: Vec<ConnTag> = (0..33).map(|i| tag(i, 2)).collect();
        assert_eq!(Message::Conns(many).encode(), Err(WireError::TooManyFds(66)));
        // Hand-made frames get the same checks from the decoder.
        let frame = |json: &str| {
            let mut f = ((json.len() + 2) as u32).to_be_bytes().to_vec();
            f.extend([FRAME_VERSION, 10]);
            f.extend(json.as_bytes());
            f
        };
        assert!(decode(&frame(r#"{"conns":[{"id":1,"kind":"t","listener":"l","fds":9}]}"#)).is_err());
        assert!(decode(&frame(
            r#"{"conns":[{"id":1,"kind":"t","listener":"l","fds":1,"buffers":["!!"]}]}"#
        ))
        .is_err());
        assert!(decode(&frame(r#"{"conns":[{"id":1,"kind":"t","listener":"l","fds":1}]}"#)).is_ok());
    }

    /// Arbitrary bytes never panic the decoder (a small deterministic property test; `make fuzz` goes further).
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let valid: Vec<Vec<u8>> = samples().iter().map(|m| m.encode().expect("encode")).collect();
        for i in 0..20_000 {
            let mut buf = valid[i % valid.len()].clone();
            let flips = (next() % 4) as usize;
            for _ in 0..flips {
                let at = (next() as usize) % buf.len();
                buf[at] = next() as u8;
            }
            if next() % 3 == 0 {
                let keep = (next() as usize) % (buf.len() + 1);
                buf.truncate(keep);
            }
            if let Ok(Some((_, used))) = decode(&buf) {
                assert!(used <= buf.len());
            }
        }
    }
}
