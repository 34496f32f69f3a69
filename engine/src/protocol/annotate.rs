//! A frame as hex annotated field by field: the format of the test vectors
//! in docs/PROTOCOL.md, and a debugging aid for anyone writing a client. It
//! reuses the real decoder (which notes what each byte meant), so an
//! annotation can never describe a layout the decoder does not accept.

use std::fmt::Write;

use super::error::DecodeError;
use super::frame::Frame;
use super::reader::Reader;

/// Bytes of one field shown on one line; longer fields continue on the
/// lines below.
const LINE_BYTES_MAX: usize = 16;
/// Hex digits before the comment column.
const HEX_COLUMN_WIDTH: usize = 2 * LINE_BYTES_MAX;

/// Decodes one whole frame (as [`Frame::decode`]) and writes it as lines of
/// hex, each field on its own line followed by `# field = value`. Every byte
/// of the frame appears exactly once, in order, so stripping the comments
/// and the whitespace gives the frame back.
pub fn annotate(frame: &[u8]) -> Result<String, DecodeError> {
    let mut reader = Reader::with_notes(frame);
    Frame::decode_from(&mut reader, frame.len())?;
    let mut text = String::new();
    let mut covered = 0;
    for note in reader.into_notes() {
        if note.start > covered {
            // Every read takes a note, so this would be a bug in the reader;
            // show the bytes rather than lose them.
            line(&mut text, &frame[covered..note.start], "(not annotated)");
        }
        line(&mut text, &frame[note.start..note.end], &note.text);
        covered = note.end;
    }
    if covered < frame.len() {
        line(&mut text, &frame[covered..], "(not annotated)");
    }
    Ok(text)
}

fn line(text: &mut String, bytes: &[u8], comment: &str) {
    for (index, chunk) in bytes.chunks(LINE_BYTES_MAX).enumerate() {
        let hex: String = chunk.iter().map(|byte| format!("{byte:02x}")).collect();
        if index == 0 {
            // Writing to a String cannot fail.
            let _ = writeln!(text, "{hex:<HEX_COLUMN_WIDTH$}  # {comment}");
        } else {
            let _ = writeln!(text, "{hex}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobId;
    use crate::protocol::request::CancelJob;

    #[test]
    fn every_field_is_on_its_own_line() {
        let mut bytes = Vec::new();
        Frame::new(5, CancelJob { job: JobId(3) })
            .encode(&mut bytes, 1024)
            .expect("a small frame encodes");
        let expected = "\
14000000                          # frame.length = 20
0501                              # frame.message_type = 0x0105 (CancelJob)
0000                              # frame.flags = 0
0500000000000000                  # frame.request_id = 5
0300000000000000                  # CancelJob.job = 3
";
        assert_eq!(annotate(&bytes), Ok(expected.to_string()));
    }

    #[test]
    fn a_frame_that_does_not_decode_is_not_annotated() {
        assert!(annotate(&[0, 0, 0]).is_err());
    }
}
