//! Frames: the fixed header, the check that a whole frame is buffered, and
//! the encoding and decoding of a whole frame. It owns framing and the frame
//! size limit as a parameter; it does not choose the limit (the server uses
//! a small one before the handshake and a larger one after) and reads no
//! socket.
//!
//! A frame is a u32 LE length of everything after the length field, then a
//! 12-byte header (u16 message type, u16 flags, u64 request id), then the
//! message body.

use super::error::{DecodeError, EncodeError};
use super::message::{Message, MessageType};
use super::reader::Reader;
use super::writer::Writer;

/// Bytes of the length field that starts every frame.
pub const LENGTH_FIELD_LENGTH: usize = 4;
/// Bytes of the header after the length field: message type, flags and
/// request id. The least a frame's length field may declare.
pub const HEADER_LENGTH: usize = 2 + 2 + 8;

/// What a buffer holds, as far as framing can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Not a whole frame yet: read more bytes and check again. A normal
    /// outcome, not an error.
    Incomplete,
    /// A whole frame, this many bytes long (length field included), starts
    /// the buffer.
    Complete { frame_length: usize },
}

/// The header of a frame, as it was on the wire. A server reads it to learn
/// the request id of a frame whose body does not decode, so it can answer
/// that request with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Bytes after the length field.
    pub length: u32,
    /// The message type as sent, known or not.
    pub message_type: u16,
    pub flags: u16,
    pub request_id: u64,
}

impl Header {
    /// Reads the header at the start of `bytes`, without checking the type,
    /// the flags or the body.
    pub fn parse(bytes: &[u8]) -> Result<Header, DecodeError> {
        Header::read(&mut Reader::new(bytes))
    }

    fn read(reader: &mut Reader<'_>) -> Result<Header, DecodeError> {
        let length = reader.u32("frame.length")?;
        if (length as usize) < HEADER_LENGTH {
            return Err(DecodeError::FrameTooShort {
                length,
                header: HEADER_LENGTH,
            });
        }
        let message_type = reader.u16("frame.message_type")?;
        reader.renote(|| match MessageType::from_u16(message_type) {
            Some(known) => format!(
                "frame.message_type = {message_type:#06x} ({})",
                known.name()
            ),
            None => format!("frame.message_type = {message_type:#06x}"),
        });
        Ok(Header {
            length,
            message_type,
            flags: reader.u16("frame.flags")?,
            request_id: reader.u64("frame.request_id")?,
        })
    }
}

/// One message with the request id it answers or asks under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub request_id: u64,
    pub message: Message,
}

impl Frame {
    pub fn new(request_id: u64, message: impl Into<Message>) -> Frame {
        Frame {
            request_id,
            message: message.into(),
        }
    }

    /// Tells whether `buffer` starts with a whole frame, without allocating
    /// and without looking past the length field. A length that declares a
    /// frame over `frame_length_max` bytes (length field included) is
    /// refused as soon as the length field is in, before its bytes arrive.
    pub fn check(buffer: &[u8], frame_length_max: usize) -> Result<Check, DecodeError> {
        let Some(length_field) = buffer.first_chunk::<LENGTH_FIELD_LENGTH>() else {
            return Ok(Check::Incomplete);
        };
        let length = u32::from_le_bytes(*length_field);
        if (length as usize) < HEADER_LENGTH {
            return Err(DecodeError::FrameTooShort {
                length,
                header: HEADER_LENGTH,
            });
        }
        // In u64: on a 32-bit target, 4 + u32::MAX does not fit a usize.
        let frame_length = LENGTH_FIELD_LENGTH as u64 + u64::from(length);
        if frame_length > frame_length_max as u64 {
            return Err(DecodeError::FrameTooLarge {
                frame_length,
                frame_length_max,
            });
        }
        // Fits a usize: it is at most frame_length_max.
        let frame_length = frame_length as usize;
        if buffer.len() < frame_length {
            return Ok(Check::Incomplete);
        }
        Ok(Check::Complete { frame_length })
    }

    /// Decodes exactly one frame: `bytes` must be the frame [`Frame::check`]
    /// delimited, no more and no less.
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        Frame::decode_from(&mut Reader::new(bytes), bytes.len())
    }

    pub(crate) fn decode_from(
        reader: &mut Reader<'_>,
        actual: usize,
    ) -> Result<Frame, DecodeError> {
        let header = Header::read(reader)?;
        let declared = LENGTH_FIELD_LENGTH as u64 + u64::from(header.length);
        if declared != actual as u64 {
            return Err(DecodeError::FrameLengthMismatch { declared, actual });
        }
        if header.flags != 0 {
            return Err(DecodeError::FlagsNotZero {
                flags: header.flags,
            });
        }
        let message_type =
            MessageType::from_u16(header.message_type).ok_or(DecodeError::UnknownMessageType {
                message_type: header.message_type,
            })?;
        let message = Message::decode_body(message_type, reader)?;
        reader.finish(message_type.name())?;
        Ok(Frame {
            request_id: header.request_id,
            message,
        })
    }

    /// Appends the frame to `out` and returns its length. A frame over
    /// `frame_length_max` bytes (the peer's limit), or too long for its
    /// length field, is refused and `out` is left as it was.
    pub fn encode(&self, out: &mut Vec<u8>, frame_length_max: usize) -> Result<usize, EncodeError> {
        let start = out.len();
        let message_type = self.message.message_type();
        {
            let mut writer = Writer::new(out);
            // The length is patched in below, once the body is written.
            writer.u32(0);
            writer.u16(message_type as u16);
            writer.u16(0);
            writer.u64(self.request_id);
            self.message.encode_body(&mut writer);
        }
        let frame_length = out.len() - start;
        let length = u32::try_from(frame_length - LENGTH_FIELD_LENGTH);
        match length {
            Ok(length) if frame_length <= frame_length_max => {
                out[start..start + LENGTH_FIELD_LENGTH].copy_from_slice(&length.to_le_bytes());
                Ok(frame_length)
            }
            _ => {
                out.truncate(start);
                Err(EncodeError::FrameTooLarge {
                    message: message_type.name(),
                    frame_length,
                    frame_length_max,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobId;
    use crate::protocol::request::{CancelJob, Heartbeat};

    const MAX: usize = 1 << 20;

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut bytes = Vec::new();
        frame
            .encode(&mut bytes, MAX)
            .expect("a small frame encodes");
        bytes
    }

    #[test]
    fn check_waits_for_the_length_field_then_the_whole_frame() {
        let bytes = encoded(&Frame::new(7, CancelJob { job: JobId(3) }));
        assert_eq!(bytes.len(), LENGTH_FIELD_LENGTH + HEADER_LENGTH + 8);
        for end in 0..bytes.len() {
            assert_eq!(Frame::check(&bytes[..end], MAX), Ok(Check::Incomplete));
        }
        assert_eq!(
            Frame::check(&bytes, MAX),
            Ok(Check::Complete {
                frame_length: bytes.len()
            })
        );
        // A second frame behind the first does not change the answer.
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        assert_eq!(
            Frame::check(&two, MAX),
            Ok(Check::Complete {
                frame_length: bytes.len()
            })
        );
    }

    #[test]
    fn check_refuses_a_frame_over_the_limit_from_its_length_field_alone() {
        let bytes = encoded(&Frame::new(1, Heartbeat));
        assert_eq!(bytes.len(), 16);
        assert_eq!(
            Frame::check(&bytes, 16),
            Ok(Check::Complete { frame_length: 16 })
        );
        assert_eq!(
            Frame::check(&bytes, 15),
            Err(DecodeError::FrameTooLarge {
                frame_length: 16,
                frame_length_max: 15
            })
        );
        let huge = u32::MAX.to_le_bytes();
        assert_eq!(
            Frame::check(&huge, MAX),
            Err(DecodeError::FrameTooLarge {
                frame_length: 4 + u64::from(u32::MAX),
                frame_length_max: MAX
            })
        );
    }

    #[test]
    fn check_refuses_a_length_shorter_than_the_header() {
        for length in [0u32, 11] {
            assert_eq!(
                Frame::check(&length.to_le_bytes(), MAX),
                Err(DecodeError::FrameTooShort {
                    length,
                    header: HEADER_LENGTH
                })
            );
        }
    }

    #[test]
    fn encode_refuses_a_frame_over_the_limit_and_writes_nothing() {
        let mut out = vec![9];
        assert_eq!(
            Frame::new(1, Heartbeat).encode(&mut out, 15),
            Err(EncodeError::FrameTooLarge {
                message: "Heartbeat",
                frame_length: 16,
                frame_length_max: 15
            })
        );
        assert_eq!(out, [9]);
    }

    #[test]
    fn decode_takes_exactly_one_frame() {
        let bytes = encoded(&Frame::new(1, Heartbeat));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Frame::decode(&longer),
            Err(DecodeError::FrameLengthMismatch {
                declared: 16,
                actual: 17
            })
        );
        assert_eq!(Frame::decode(&bytes), Ok(Frame::new(1, Heartbeat)));
    }

    #[test]
    fn decode_rejects_flags_unknown_types_and_trailing_bytes() {
        let mut bytes = encoded(&Frame::new(1, Heartbeat));
        bytes[6] = 1;
        assert_eq!(
            Frame::decode(&bytes),
            Err(DecodeError::FlagsNotZero { flags: 1 })
        );
        let mut bytes = encoded(&Frame::new(1, Heartbeat));
        bytes[4..6].copy_from_slice(&0x7777u16.to_le_bytes());
        assert_eq!(
            Frame::decode(&bytes),
            Err(DecodeError::UnknownMessageType {
                message_type: 0x7777
            })
        );
        let mut bytes = encoded(&Frame::new(1, Heartbeat));
        bytes[0] += 1;
        bytes.push(0);
        assert_eq!(
            Frame::decode(&bytes),
            Err(DecodeError::TrailingBytes {
                message: "Heartbeat",
                count: 1
            })
        );
    }

    #[test]
    fn the_header_of_a_bad_body_still_parses() {
        let mut bytes = encoded(&Frame::new(42, CancelJob { job: JobId(3) }));
        bytes.pop();
        bytes[0] -= 1;
        assert!(Frame::decode(&bytes).is_err());
        assert_eq!(
            Header::parse(&bytes),
            Ok(Header {
                length: 19,
                message_type: MessageType::CancelJob as u16,
                flags: 0,
                request_id: 42
            })
        );
    }
}
