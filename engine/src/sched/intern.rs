//! Interning: a value seen many times (a pool name, a tag set, a label set)
//! is stored once and referred to by a small dense id.
//!
//! Ids are handed out in order of first sight, so the same sequence of
//! events gives the same ids, and replay reproduces them.

use std::hash::Hash;

use rustc_hash::FxHashMap;

#[derive(Debug)]
pub(crate) struct Interner<T> {
    values: Vec<T>,
    ids: FxHashMap<T, u32>,
}

impl<T: Clone + Eq + Hash> Interner<T> {
    pub(crate) fn new() -> Interner<T> {
        Interner {
            values: Vec::new(),
            ids: FxHashMap::default(),
        }
    }

    pub(crate) fn intern(&mut self, value: &T) -> u32 {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = u32::try_from(self.values.len()).expect("more than 2^32 interned values");
        self.values.push(value.clone());
        self.ids.insert(value.clone(), id);
        id
    }

    pub(crate) fn get(&self, id: u32) -> &T {
        &self.values[id as usize]
    }

    /// Interns `values` in order into an empty interner, so value `i` gets
    /// id `i` (restoring a snapshot). Returns the index of a value that
    /// appears twice, which a sound snapshot never holds.
    pub(crate) fn restore(&mut self, values: impl IntoIterator<Item = T>) -> Result<(), usize> {
        for (i, value) in values.into_iter().enumerate() {
            if self.intern(&value) != i as u32 {
                return Err(i);
            }
        }
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}
