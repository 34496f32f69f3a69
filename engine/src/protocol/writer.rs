//! The sink every encoder writes through: the primitive encodings that
//! [`Reader`](super::reader::Reader) decodes. It appends to a caller's
//! buffer and never fails: lengths and counts are written as u32, and the
//! frame encoder refuses any frame whose total does not fit its own u32
//! length, which bounds every length and count inside it.

use super::wire::Wire;

pub(crate) struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Writer<'a> {
        Writer { out }
    }

    pub fn u8(&mut self, value: u8) {
        self.out.push(value);
    }

    pub fn u16(&mut self, value: u16) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    pub fn u32(&mut self, value: u32) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    pub fn u64(&mut self, value: u64) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    pub fn i32(&mut self, value: i32) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    pub fn bool(&mut self, value: bool) {
        self.out.push(u8::from(value));
    }

    /// A length or count. One above u32::MAX is written truncated, but such
    /// a frame is longer than u32::MAX and the frame encoder discards it.
    fn length(&mut self, length: usize) {
        self.u32(length as u32);
    }

    pub fn string(&mut self, value: &str) {
        self.bytes(value.as_bytes());
    }

    pub fn bytes(&mut self, value: &[u8]) {
        self.length(value.len());
        self.out.extend_from_slice(value);
    }

    pub fn option<T: Wire>(&mut self, value: &Option<T>) {
        match value {
            None => self.u8(0),
            Some(value) => {
                self.u8(1);
                value.encode(self);
            }
        }
    }

    pub fn list<T: Wire>(&mut self, items: &[T]) {
        self.length(items.len());
        for item in items {
            item.encode(self);
        }
    }

    /// Encodes any [`Wire`] value.
    pub fn write<T: Wire>(&mut self, value: &T) {
        value.encode(self);
    }
}
