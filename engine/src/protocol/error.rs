//! What can be wrong with bytes from a peer, and with a frame we are asked
//! to encode. Each error names the field or limit at fault; none of them
//! carries the offending bytes, so an error is cheap to build and safe to log.

/// Bytes that are not a valid frame. Each variant says what was wrong and,
/// for fields, which one (as `Message.field`, the names docs/PROTOCOL.md
/// uses).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "frame declares {length} bytes after its length field, fewer than the \
         {header}-byte header"
    )]
    FrameTooShort { length: u32, header: usize },
    #[error("frame of {frame_length} bytes exceeds the limit of {frame_length_max} bytes")]
    FrameTooLarge {
        frame_length: u64,
        frame_length_max: usize,
    },
    #[error("frame declares {declared} bytes in all but the buffer holds {actual}")]
    FrameLengthMismatch { declared: u64, actual: usize },
    #[error("frame flags are {flags:#06x}: protocol version 1 defines none, they must be 0")]
    FlagsNotZero { flags: u16 },
    #[error("unknown message type {message_type:#06x}")]
    UnknownMessageType { message_type: u16 },
    #[error("{field}: needs {needed} bytes but only {remaining} remain in the frame")]
    Truncated {
        field: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error(
        "{field}: declares a length of {declared} bytes but only {remaining} remain in the frame"
    )]
    LengthBeyondFrame {
        field: &'static str,
        declared: u32,
        remaining: usize,
    },
    #[error(
        "{field}: declares {count} elements of at least {element_length_min} bytes each \
         but only {remaining} bytes remain in the frame"
    )]
    CountBeyondFrame {
        field: &'static str,
        count: u32,
        element_length_min: usize,
        remaining: usize,
    },
    #[error("{field}: not valid UTF-8")]
    BadUtf8 { field: &'static str },
    #[error("{field}: unknown tag {tag}")]
    BadTag { field: &'static str, tag: u8 },
    #[error("{field}: {code} is not an error code of this protocol version")]
    BadErrorCode { field: &'static str, code: u16 },
    #[error("{message}: {count} bytes left over after the last field")]
    TrailingBytes { message: &'static str, count: usize },
}

/// A frame we were asked to encode that must not be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Larger than the limit the caller gave (the peer's), or than the
    /// 32-bit length field can say. Nothing was written.
    #[error(
        "{message} frame of {frame_length} bytes exceeds the limit of {frame_length_max} bytes"
    )]
    FrameTooLarge {
        message: &'static str,
        frame_length: usize,
        frame_length_max: usize,
    },
}
