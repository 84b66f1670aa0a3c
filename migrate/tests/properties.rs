//! Property tests of the frame codec (`wire`): round trips of arbitrary messages, arbitrary bytes, and arbitrary
//! chunkings of a valid frame stream. Default case counts (256 per property), a few seconds in all.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use baton_migrate::wire::{
    decode, Hello, ListenerTag, Message, PeerRole, Progress, Ready, WireError, FRAME_VERSION, HEADER_LEN,
    MAX_FDS_PER_FRAME, MAX_FRAME,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    // Any unicode, control characters, quotes and backslashes included, usually short.
    prop_oneof![
        4 => ".{0,24}",
        1 => r#"["\\\x00-\x1f\x7f-\u{10FFFF}]{0,8}"#,
        1 => ".{0,300}",
    ]
}

fn role() -> impl Strategy<Value = PeerRole> {
    prop_oneof![
        Just(PeerRole::Sender),
        Just(PeerRole::Receiver),
        Just(PeerRole::Watcher)
    ]
}

fn listener_tag() -> impl Strategy<Value = ListenerTag> {
    (text(), text(), text()).prop_map(|(name, address, kind)| ListenerTag { name, address, kind })
}

fn names() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..6)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (role(), any::<u16>(), any::<u16>(), any::<u64>(), text()).prop_map(
            |(role, min_protocol, max_protocol, generation, version)| Message::Hello(Hello {
                role,
                min_protocol,
                max_protocol,
                generation,
                version,
            })
        ),
        prop_oneof![
            4 => vec(listener_tag(), 0..6),
            1 => vec(listener_tag(), MAX_FDS_PER_FRAME..=MAX_FDS_PER_FRAME),
        ]
        .prop_map(Message::Listeners),
        any::<u32>().prop_map(|total| Message::ListenersEnd { total }),
        (names(), names(), names()).prop_map(|(adopted, bound, unclaimed)| Message::Ready(Ready {
            adopted,
            bound,
            unclaimed,
        })),
        Just(Message::Commit),
        Just(Message::Done),
        text().prop_map(|reason| Message::Refuse { reason }),
        (text(), any::<bool>(), any::<bool>(), text()).prop_map(|(phase, done, ok, detail)| {
            Message::Progress(Progress {
                phase,
                done,
                ok,
                detail,
            })
        }),
    ]
}

/// Frames with a consistent header around arbitrary payloads, to get past the length and version checks.
fn framed_payload() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![
        vec(any::<u8>(), 0..64),
        // JSON-ish text, so the payload parsers get real work.
        "[{}\\[\\]\":,a-z0-9 \\\\-]{0,64}".prop_map(String::into_bytes),
        message().prop_map(|m| m.encode().expect("encode")[HEADER_LEN..].to_vec()),
    ];
    (0u8..12, payload).prop_map(|(ty, payload)| {
        let mut frame = ((payload.len() + 2) as u32).to_be_bytes().to_vec();
        frame.push(FRAME_VERSION);
        frame.push(ty);
        frame.extend(payload);
        frame
    })
}

/// Decodes `buf` as a stream of frames until it is used up, incomplete, or bad.
fn decode_all(buf: &[u8]) -> (Vec<Message>, usize, Option<WireError>) {
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        match decode(&buf[at..]) {
            Ok(Some((m, used))) => {
                out.push(m);
                at += used;
            }
            Ok(None) => return (out, at, None),
            Err(e) => return (out, at, Some(e)),
        }
    }
}

proptest! {
    /// encode → decode is the identity, and the decoder uses exactly the frame, whatever follows it.
    #[test]
    fn round_trip(m in message(), trailing in vec(any::<u8>(), 0..16)) {
        let frame = m.encode().expect("every generated message fits a frame");
        prop_assert!(frame.len() <= MAX_FRAME);
        prop_assert_eq!(u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize, frame.len() - 4);
        prop_assert_eq!(frame[4], FRAME_VERSION);
        prop_assert_eq!(frame[5], m.type_byte());
        prop_assert_eq!(decode(&frame), Ok(Some((m.clone(), frame.len()))));
        let mut longer = frame.clone();
        longer.extend(&trailing);
        prop_assert_eq!(decode(&longer), Ok(Some((m.clone(), frame.len()))));
        // Every strict prefix is "incomplete": never an error, never a message.
        for cut in 0..frame.len() {
            prop_assert_eq!(decode(&frame[..cut]), Ok(None), "cut at {}", cut);
        }
    }

    /// Arbitrary bytes never panic the decoder, and it never claims more bytes than it was given (nor fewer than a
    /// header). Whatever it does decode re-encodes to a frame that decodes to the same message.
    #[test]
    fn arbitrary_bytes(bytes in vec(any::<u8>(), 0..512)) {
        check_decoder_on(&bytes)?;
    }

    /// The same, on frames whose header is right, so the payload parsers are reached.
    #[test]
    fn arbitrary_payloads(frames in vec(framed_payload(), 1..4), cut in any::<prop::sample::Index>()) {
        let bytes: Vec<u8> = frames.concat();
        check_decoder_on(&bytes)?;
        check_decoder_on(&bytes[..cut.index(bytes.len() + 1)])?;
    }

    /// A valid stream of frames, delivered in arbitrary chunks (fed as a growing buffer, the way `Conn` reads),
    /// decodes to the same messages, with nothing left over and no error on the way.
    #[test]
    fn arbitrary_chunkings(
        msgs in vec(message(), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|m| m.encode().expect("encode")).collect();
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        let mut fed = 0;
        for cut in cuts {
            buf.extend_from_slice(&stream[fed..cut]);
            fed = cut;
            loop {
                match decode(&buf) {
                    Ok(Some((m, used))) => {
                        prop_assert!(used <= buf.len());
                        buf.drain(..used);
                        seen.push(m);
                    }
                    Ok(None) => break,
                    Err(e) => return Err(TestCaseError::fail(format!("error on a valid stream: {e}"))),
                }
            }
        }
        prop_assert_eq!(seen, msgs);
        prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
    }

    /// A length prefix beyond the limit is refused as soon as the 4 bytes are there, without waiting for the
    /// payload; one within the limit with too little data is merely incomplete.
    #[test]
    fn length_prefix_limits(len in any::<u32>(), ty in any::<u8>()) {
        let header = [&len.to_be_bytes()[..], &[FRAME_VERSION, ty]].concat();
        let got = decode(&header);
        let len = len as usize;
        if len < 2 {
            prop_assert_eq!(got, Err(WireError::TooShort(len)));
        } else if len > MAX_FRAME - 4 {
            prop_assert_eq!(got, Err(WireError::TooLong(len + 4)));
        } else if len == 2 {
            // A header-only frame: complete, so decoded (or refused) now.
            prop_assert!(!matches!(got, Ok(None)));
        } else {
            prop_assert_eq!(got, Ok(None));
        }
    }
}

fn check_decoder_on(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode(bytes) {
        Ok(Some((m, used))) => {
            prop_assert!(
                used >= HEADER_LEN && used <= bytes.len(),
                "used {} of {}",
                used,
                bytes.len()
            );
            let again = m.encode().expect("a decoded message re-encodes");
            prop_assert_eq!(decode(&again), Ok(Some((m.clone(), again.len()))));
        }
        Ok(None) => prop_assert!(bytes.len() < MAX_FRAME),
        Err(_) => {}
    }
    // As a stream: never more than given.
    let (_, used, _) = decode_all(bytes);
    prop_assert!(used <= bytes.len());
    Ok(())
}
