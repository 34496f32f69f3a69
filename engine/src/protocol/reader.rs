//! The bounded cursor every decoder reads through: fixed-width integers,
//! booleans, enum tags, length-prefixed strings and byte strings, options
//! and lists. It owns the rule that no declared length or count is trusted
//! before it is checked against the bytes left; it knows nothing of
//! messages.
//!
//! A reader can also take notes (which bytes held which field, and what
//! they said) for [`annotate`](super::annotate()); decoding that takes no
//! notes pays one branch per field for it.

use std::fmt;

use super::error::DecodeError;
use super::wire::Wire;

// Lengths and counts are u32 on the wire and become usize here.
const _: () = assert!(usize::BITS >= 32, "a u32 length must fit a usize");

/// One field as decoded: the bytes it took and what they meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Note {
    pub start: usize,
    pub end: usize,
    pub text: String,
}

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
    notes: Option<Vec<Note>>,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            bytes,
            position: 0,
            notes: None,
        }
    }

    /// A reader that records a [`Note`] for every field it reads.
    pub fn with_notes(bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            bytes,
            position: 0,
            notes: Some(Vec::new()),
        }
    }

    pub fn into_notes(self) -> Vec<Note> {
        self.notes.unwrap_or_default()
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.position)
    }

    /// Ends decoding: every byte of the frame must have been read.
    pub fn finish(&self, message: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { message, count }),
        }
    }

    fn take(&mut self, field: &'static str, length: usize) -> Result<&'a [u8], DecodeError> {
        let truncated = DecodeError::Truncated {
            field,
            needed: length,
            remaining: self.remaining(),
        };
        let end = self.position.checked_add(length).ok_or(truncated.clone())?;
        let slice = self.bytes.get(self.position..end).ok_or(truncated)?;
        self.position = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        // Not noted here: the caller knows what the bytes mean.
        let slice = self.take(field, N)?;
        let mut array = [0; N];
        array.copy_from_slice(slice);
        Ok(array)
    }

    /// Records that the bytes from `start` to here held `text`, if notes are
    /// being taken. `text` is only built then.
    pub fn note(&mut self, start: usize, text: impl FnOnce() -> String) {
        if let Some(notes) = &mut self.notes {
            notes.push(Note {
                start,
                end: self.position,
                text: text(),
            });
        }
    }

    /// Appends ` (name)` to the last note, to name an enum variant once its
    /// tag is known. Builds nothing unless notes are being taken: it runs on
    /// every enum decoded.
    pub fn note_name(&mut self, name: &str) {
        if let Some(note) = self.notes.as_mut().and_then(|notes| notes.last_mut()) {
            note.text.push_str(" (");
            note.text.push_str(name);
            note.text.push(')');
        }
    }

    /// Replaces the text of the last note (to show a value another way).
    pub fn renote(&mut self, text: impl FnOnce() -> String) {
        if let Some(note) = self.notes.as_mut().and_then(|notes| notes.last_mut()) {
            note.text = text();
        }
    }

    fn noted<T: fmt::Display>(&mut self, start: usize, field: &'static str, value: T) -> T {
        self.note(start, || format!("{field} = {value}"));
        value
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let start = self.position;
        let value = u8::from_le_bytes(self.array(field)?);
        Ok(self.noted(start, field, value))
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let start = self.position;
        let value = u16::from_le_bytes(self.array(field)?);
        Ok(self.noted(start, field, value))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let start = self.position;
        let value = u32::from_le_bytes(self.array(field)?);
        Ok(self.noted(start, field, value))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let start = self.position;
        let value = u64::from_le_bytes(self.array(field)?);
        Ok(self.noted(start, field, value))
    }

    pub fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        let start = self.position;
        let value = i32::from_le_bytes(self.array(field)?);
        Ok(self.noted(start, field, value))
    }

    /// A u8 that must be 0 (false) or 1 (true): any other value would make
    /// two encodings of one message.
    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        let value = match self.u8(field)? {
            0 => false,
            1 => true,
            tag => return Err(DecodeError::BadTag { field, tag }),
        };
        self.renote(|| format!("{field} = {value}"));
        Ok(value)
    }

    /// An enum tag: a u8 from 1 to `names.len()`, noted with its variant's
    /// name. 0 is never a valid tag, so zeroed bytes do not decode.
    pub fn tag(&mut self, field: &'static str, names: &[&str]) -> Result<u8, DecodeError> {
        let tag = self.u8(field)?;
        match names.get(usize::from(tag).wrapping_sub(1)) {
            Some(name) if tag >= 1 => {
                self.note_name(name);
                Ok(tag)
            }
            _ => Err(DecodeError::BadTag { field, tag }),
        }
    }

    /// A u32 length followed by that many bytes, returned borrowed. The
    /// length is checked against the bytes left before anything is taken.
    fn length_prefixed(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let start = self.position;
        let declared = u32::from_le_bytes(self.array(field)?);
        self.note(start, || format!("{field}: length {declared}"));
        let remaining = self.remaining();
        let length = declared as usize;
        if length > remaining {
            return Err(DecodeError::LengthBeyondFrame {
                field,
                declared,
                remaining,
            });
        }
        self.take(field, length)
    }

    pub fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let bytes = self.length_prefixed(field)?;
        let start = self.position - bytes.len();
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8 { field })?;
        if !text.is_empty() {
            self.note(start, || format!("{text:?}"));
        }
        Ok(text.to_owned())
    }

    pub fn bytes(&mut self, field: &'static str) -> Result<Vec<u8>, DecodeError> {
        let bytes = self.length_prefixed(field)?;
        let start = self.position - bytes.len();
        if !bytes.is_empty() {
            self.note(start, || match std::str::from_utf8(bytes) {
                // Opaque bytes, but often text: show it when it is.
                Ok(text) if !text.chars().any(char::is_control) => {
                    format!("{field}: {} bytes, {text:?}", bytes.len())
                }
                _ => format!("{field}: {} bytes", bytes.len()),
            });
        }
        Ok(bytes.to_vec())
    }

    /// A u8 presence tag (0 absent, 1 present) and, if present, the value.
    pub fn option<T: Wire>(&mut self, field: &'static str) -> Result<Option<T>, DecodeError> {
        let start = self.position;
        let tag = u8::from_le_bytes(self.array(field)?);
        match tag {
            0 => {
                self.note(start, || format!("{field}: absent"));
                Ok(None)
            }
            1 => {
                self.note(start, || format!("{field}: present"));
                T::decode(self, field).map(Some)
            }
            tag => Err(DecodeError::BadTag { field, tag }),
        }
    }

    /// A u32 count followed by that many elements. The count is checked
    /// against the bytes left (each element takes at least
    /// `T::ENCODED_LENGTH_MIN`), and the vector is never pre-allocated
    /// beyond the bytes left, so a peer cannot make us allocate more than
    /// it sent.
    pub fn list<T: Wire>(&mut self, field: &'static str) -> Result<Vec<T>, DecodeError> {
        const { assert!(T::ENCODED_LENGTH_MIN > 0, "a list element must take bytes") };
        let start = self.position;
        let count = u32::from_le_bytes(self.array(field)?);
        self.note(start, || format!("{field}: count {count}"));
        let remaining = self.remaining();
        let fits = (count as usize)
            .checked_mul(T::ENCODED_LENGTH_MIN)
            .is_some_and(|length| length <= remaining);
        if !fits {
            return Err(DecodeError::CountBeyondFrame {
                field,
                count,
                element_length_min: T::ENCODED_LENGTH_MIN,
                remaining,
            });
        }
        let capacity = (count as usize).min(remaining / std::mem::size_of::<T>().max(1));
        let mut items = Vec::with_capacity(capacity);
        for _ in 0..count {
            items.push(T::decode(self, field)?);
        }
        Ok(items)
    }

    /// Decodes any [`Wire`] value.
    pub fn read<T: Wire>(&mut self, field: &'static str) -> Result<T, DecodeError> {
        T::decode(self, field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_integers_are_little_endian() {
        let bytes = [1, 2, 0, 3, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff];
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.u8("a"), Ok(1));
        assert_eq!(reader.u16("b"), Ok(2));
        assert_eq!(reader.u32("c"), Ok(3));
        assert_eq!(reader.i32("d"), Ok(-2));
        assert_eq!(reader.finish("T"), Ok(()));
    }

    #[test]
    fn a_fixed_width_field_past_the_end_is_truncated() {
        let mut reader = Reader::new(&[1, 2, 3]);
        assert_eq!(
            reader.u64("Job.id"),
            Err(DecodeError::Truncated {
                field: "Job.id",
                needed: 8,
                remaining: 3
            })
        );
    }

    #[test]
    fn a_length_beyond_the_bytes_left_is_rejected_before_reading() {
        let mut reader = Reader::new(&[0xff, 0xff, 0xff, 0xff, b'a']);
        assert_eq!(
            reader.string("Hello.client_name"),
            Err(DecodeError::LengthBeyondFrame {
                field: "Hello.client_name",
                declared: u32::MAX,
                remaining: 1
            })
        );
    }

    #[test]
    fn strings_must_be_utf8() {
        let mut reader = Reader::new(&[2, 0, 0, 0, 0xc3, 0x28]);
        assert_eq!(
            reader.string("PauseQueue.queue"),
            Err(DecodeError::BadUtf8 {
                field: "PauseQueue.queue"
            })
        );
    }

    #[test]
    fn booleans_and_options_accept_only_0_and_1() {
        assert_eq!(
            Reader::new(&[2]).bool("b"),
            Err(DecodeError::BadTag { field: "b", tag: 2 })
        );
        assert_eq!(
            Reader::new(&[7]).option::<u32>("o"),
            Err(DecodeError::BadTag { field: "o", tag: 7 })
        );
        assert_eq!(Reader::new(&[0]).option::<u32>("o"), Ok(None));
        assert_eq!(
            Reader::new(&[1, 5, 0, 0, 0]).option::<u32>("o"),
            Ok(Some(5))
        );
    }

    #[test]
    fn enum_tags_start_at_1() {
        let names = ["A", "B"];
        assert_eq!(Reader::new(&[1]).tag("t", &names), Ok(1));
        assert_eq!(Reader::new(&[2]).tag("t", &names), Ok(2));
        for tag in [0, 3, 255] {
            assert_eq!(
                Reader::new(&[tag]).tag("t", &names),
                Err(DecodeError::BadTag { field: "t", tag })
            );
        }
    }

    #[test]
    fn a_count_that_cannot_fit_the_bytes_left_is_rejected_before_allocating() {
        // 2^32-1 u64s declared, 8 bytes present.
        let mut bytes = vec![0xff, 0xff, 0xff, 0xff];
        bytes.extend([0; 8]);
        assert_eq!(
            Reader::new(&bytes).list::<u64>("RunInfo.jobs"),
            Err(DecodeError::CountBeyondFrame {
                field: "RunInfo.jobs",
                count: u32::MAX,
                element_length_min: 8,
                remaining: 8
            })
        );
    }

    #[test]
    fn leftover_bytes_are_trailing() {
        let mut reader = Reader::new(&[0, 0]);
        assert_eq!(reader.u8("a"), Ok(0));
        assert_eq!(
            reader.finish("Heartbeat"),
            Err(DecodeError::TrailingBytes {
                message: "Heartbeat",
                count: 1
            })
        );
    }

    #[test]
    fn notes_name_each_field_and_its_bytes() {
        let bytes = [1, 0, 0, 0, b'q', 1, 4, 0, 0, 0];
        let mut reader = Reader::with_notes(&bytes);
        assert_eq!(reader.string("PauseQueue.queue"), Ok("q".to_string()));
        assert_eq!(reader.option::<u32>("X.limit"), Ok(Some(4)));
        let notes = reader.into_notes();
        let texts: Vec<(usize, usize, &str)> = notes
            .iter()
            .map(|n| (n.start, n.end, n.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            [
                (0, 4, "PauseQueue.queue: length 1"),
                (4, 5, "\"q\""),
                (5, 6, "X.limit: present"),
                (6, 10, "X.limit = 4"),
            ]
        );
    }
}
