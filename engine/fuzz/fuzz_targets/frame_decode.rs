//! Fuzzes the wire protocol's decoder: arbitrary bytes go to the frame
//! checker and the message decoder, and whatever decodes must re-encode to
//! the same bytes and annotate to them. It tests the codec only; no server.
//!
//! Each input is used twice: as a stream of frames (the way a server reads
//! a socket), and as a message type and a body wrapped in a well-formed
//! header, so the body decoders are reached without the fuzzer having to
//! learn the length field first.

#![no_main]

use lanes::protocol::{annotate, Check, Frame, MessageType, HEADER_LENGTH};
use libfuzzer_sys::fuzz_target;

/// The frame limit for the stream: small, so "too large" is reached often.
const FRAME_LENGTH_MAX: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Check::Complete { frame_length }) = Frame::check(rest, FRAME_LENGTH_MAX) {
        assert!(frame_length <= rest.len() && frame_length <= FRAME_LENGTH_MAX);
        let (frame, tail) = rest.split_at(frame_length);
        round_trip(frame);
        rest = tail;
    }

    if let Some((selector, body)) = data.split_first_chunk::<2>() {
        let types = MessageType::ALL;
        let message_type = types[usize::from(u16::from_le_bytes(*selector)) % types.len()];
        let mut frame = Vec::with_capacity(4 + HEADER_LENGTH + body.len());
        frame.extend(((HEADER_LENGTH + body.len()) as u32).to_le_bytes());
        frame.extend((message_type as u16).to_le_bytes());
        frame.extend(0u16.to_le_bytes());
        frame.extend(1u64.to_le_bytes());
        frame.extend_from_slice(body);
        round_trip(&frame);
    }
});

/// One whole frame: if it decodes, it re-encodes to the same bytes, decodes
/// again to the same frame, and its annotation holds exactly its bytes; if
/// it does not, it does not annotate either.
fn round_trip(bytes: &[u8]) {
    let Ok(frame) = Frame::decode(bytes) else {
        assert!(
            annotate(bytes).is_err(),
            "annotate accepted what decode refused"
        );
        return;
    };
    let mut again = Vec::new();
    let length = frame
        .encode(&mut again, usize::MAX)
        .expect("a decoded frame re-encodes");
    assert_eq!(length, bytes.len());
    assert_eq!(again, bytes, "decode then encode changed the bytes");
    assert_eq!(Frame::decode(&again).as_ref(), Ok(&frame));
    let annotated = annotate(bytes).expect("a frame that decodes annotates");
    assert_eq!(
        hex_of(&annotated),
        bytes,
        "the annotation lost or added bytes"
    );
}

/// The bytes of annotated hex: comments and whitespace dropped.
fn hex_of(annotated: &str) -> Vec<u8> {
    let digits: Vec<u8> = annotated
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.bytes().filter(|b| !b.is_ascii_whitespace()))
        .collect();
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).expect("hex digits are ASCII");
            u8::from_str_radix(text, 16).expect("annotate writes hex digits")
        })
        .collect()
}
