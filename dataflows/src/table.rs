//! The features operator's table of series: entries stored densely, found through an
//! open-addressing index whose slots carry a tag of the key's hash.
//!
//! A series' state lies somewhere in a table far larger than the caches, so every lookup
//! misses. A general hash map finds an entry only by reading it, which stalls. Here a lookup
//! can be split into stages that the operator spreads over the updates ahead of the one it
//! processes: fetch the index slot ([`SeriesTable::prefetch_slot`]), then, from the slot's tag
//! alone, fetch the entry it points to ([`SeriesTable::candidate`]), then read the entry.
//! The index is small (8 bytes a slot) and the entries are contiguous, so a pass over every
//! series reads memory in order.

use crate::features::prefetch;
use crate::model::Key;

/// An empty index slot.
const EMPTY: u64 = u64::MAX;

/// A key's 64-bit hash: its upper half is the tag stored in the index and picks the slot.
pub fn hash(key: &Key) -> u64 {
    let h = (key.store.rotate_left(29) ^ key.sku).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

/// Values of type `V` by [`Key`].
#[derive(Debug)]
pub struct SeriesTable<V> {
    /// Slots: the tag (upper 32 bits of the hash) and the entry's position; [`EMPTY`] when
    /// free. A power of two long, at most half full.
    index: Vec<u64>,
    /// The entries, in no particular order.
    entries: Vec<(Key, V)>,
}

impl<V> Default for SeriesTable<V> {
    fn default() -> Self {
        SeriesTable {
            index: vec![EMPTY; 16],
            entries: Vec::new(),
        }
    }
}

impl<V: Default> SeriesTable<V> {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn mask(&self) -> usize {
        self.index.len() - 1
    }

    /// The home slot of a hash.
    fn home(&self, h: u64) -> usize {
        (h >> 32) as usize & self.mask()
    }

    /// Asks the processor to fetch the index slot a lookup of hash `h` starts at.
    pub fn prefetch_slot(&self, h: u64) {
        prefetch(&self.index[self.home(h)]);
    }

    /// The position of the first entry whose tag matches `h`, reading only the index: the
    /// entry to prefetch for a lookup. It may be another key's entry.
    pub fn candidate(&self, h: u64) -> Option<usize> {
        let tag = h >> 32;
        let mut slot = self.home(h);
        loop {
            let s = self.index[slot];
            if s == EMPTY {
                return None;
            }
            if s >> 32 == tag {
                return Some((s & 0xffff_ffff) as usize);
            }
            slot = (slot + 1) & self.mask();
        }
    }

    /// The index slot of `key` (hash `h`), or the empty slot where it would go.
    fn slot_of(&self, key: &Key, h: u64) -> (usize, Option<usize>) {
        let tag = h >> 32;
        let mut slot = self.home(h);
        loop {
            let s = self.index[slot];
            if s == EMPTY {
                return (slot, None);
            }
            let pos = (s & 0xffff_ffff) as usize;
            if s >> 32 == tag && self.entries[pos].0 == *key {
                return (slot, Some(pos));
            }
            slot = (slot + 1) & self.mask();
        }
    }

    /// The position of `key`'s entry (hash `h`).
    pub fn find(&self, key: &Key, h: u64) -> Option<usize> {
        self.slot_of(key, h).1
    }

    /// The position of `key`'s entry (hash `h`), inserting a default value first if absent.
    pub fn find_or_insert(&mut self, key: Key, h: u64) -> usize {
        let (slot, found) = self.slot_of(&key, h);
        if let Some(pos) = found {
            return pos;
        }
        let pos = self.entries.len();
        self.entries.push((key, V::default()));
        self.index[slot] = (h >> 32) << 32 | pos as u64;
        if 2 * self.entries.len() > self.index.len() {
            self.grow();
        }
        pos
    }

    /// Doubles the index and places every entry again.
    fn grow(&mut self) {
        self.index = vec![EMPTY; 2 * self.index.len()];
        for pos in 0..self.entries.len() {
            let h = hash(&self.entries[pos].0);
            let mut slot = self.home(h);
            while self.index[slot] != EMPTY {
                slot = (slot + 1) & self.mask();
            }
            self.index[slot] = (h >> 32) << 32 | pos as u64;
        }
    }

    /// The index slot pointing at position `pos`.
    fn slot_pointing_at(&self, pos: usize) -> usize {
        let mut slot = self.home(hash(&self.entries[pos].0));
        while self.index[slot] & 0xffff_ffff != pos as u64 {
            slot = (slot + 1) & self.mask();
        }
        slot
    }

    /// Removes the entry at `pos`; the last entry takes its position.
    pub fn remove(&mut self, pos: usize) {
        // Empty the slot, then move back every slot of the run after it that may not stay
        // behind the gap (linear probing's deletion, without tombstones).
        let mut gap = self.slot_pointing_at(pos);
        let mut slot = (gap + 1) & self.mask();
        while self.index[slot] != EMPTY {
            let home = ((self.index[slot] >> 32) as usize) & self.mask();
            // The entry may fill the gap unless its home lies cyclically in (gap, slot].
            let stays = if gap <= slot {
                gap < home && home <= slot
            } else {
                gap < home || home <= slot
            };
            if !stays {
                self.index[gap] = self.index[slot];
                gap = slot;
            }
            slot = (slot + 1) & self.mask();
        }
        self.index[gap] = EMPTY;
        let last = self.entries.len() - 1;
        if pos != last {
            let moved = self.slot_pointing_at(last);
            self.index[moved] = (self.index[moved] & !0xffff_ffff) | pos as u64;
        }
        self.entries.swap_remove(pos);
    }

    /// The entry at `pos`.
    pub fn entry(&self, pos: usize) -> &(Key, V) {
        &self.entries[pos]
    }

    /// The value at `pos`.
    pub fn value_mut(&mut self, pos: usize) -> &mut V {
        &mut self.entries[pos].1
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> &[(Key, V)] {
        &self.entries
    }

    /// Every entry, in position order.
    pub fn entries_mut(&mut self) -> &mut [(Key, V)] {
        &mut self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_map_through_inserts_and_removals() {
        let mut table: SeriesTable<u64> = SeriesTable::default();
        let mut model: HashMap<Key, u64> = HashMap::new();
        let mut x: u64 = 7;
        for step in 0..20_000u64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // Few distinct keys, so removals hit present keys often.
            let key = Key {
                store: (x >> 40) % 50,
                sku: (x >> 20) % 60,
            };
            let h = hash(&key);
            if (x >> 10).is_multiple_of(3) {
                if let Some(pos) = table.find(&key, h) {
                    table.remove(pos);
                }
                model.remove(&key);
            } else {
                let pos = table.find_or_insert(key, h);
                *table.value_mut(pos) += step;
                *model.entry(key).or_default() += step;
            }
            assert_eq!(table.len(), model.len());
            if step % 1000 == 0 {
                for (k, v) in &model {
                    let pos = table.find(k, hash(k)).expect("present");
                    assert_eq!(table.entry(pos), &(*k, *v));
                    assert!(table.candidate(hash(k)).is_some());
                }
            }
        }
        for (k, v) in table.entries_mut() {
            assert_eq!(model.get(k), Some(&*v));
        }
    }
}
