//! `wire::decode` on arbitrary bytes, read as a stream of frames. It must never panic nor claim more bytes than it
//! was given; every message it decodes must re-encode to a frame that decodes to the same message, and that frame
//! must be incomplete until its last byte.
#![no_main]

use baton_migrate::wire::{decode, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        let rest = &data[at..];
        let Ok(Some((msg, used))) = decode(rest) else { break };
        assert!(
            used >= HEADER_LEN && used <= rest.len(),
            "decode used {used} of {} bytes",
            rest.len()
        );
        let frame = msg.encode().expect("a decoded message re-encodes");
        match decode(&frame) {
            Ok(Some((again, n))) => {
                assert_eq!(again, msg, "re-encoded {} decodes differently", msg.name());
                assert_eq!(n, frame.len());
            }
            other => panic!("re-encoded {} does not decode: {other:?}", msg.name()),
        }
        assert_eq!(decode(&frame[..frame.len() - 1]), Ok(None));
        at += used;
    }
});
