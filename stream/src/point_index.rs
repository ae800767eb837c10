//! Point id → the place of its state in an engine: the lookup every reading starts with.
//!
//! A district larger than the cache makes each lookup a cache miss or two (the table's slot,
//! then the point's state), and the work around them is short, so the misses are most of the
//! cost. The index is its own open-addressing table so that an epoch's lookups can be made in
//! stages ([`PointIndex::find_all`]): every slot asked for first, then every point's state,
//! then each answer checked, so the misses of one stage overlap rather than follow one another.

use crate::prefetch::prefetch;
use std::collections::HashMap;

/// An id of at most [`InlineId::MAX`] bytes, zero-padded, with its length in the last byte (so
/// ids that differ only by trailing zero bytes stay apart). Every id a district config holds in
/// practice fits; a longer one is kept apart, in an ordinary map.
#[derive(PartialEq, Eq, Clone, Copy)]
pub(crate) struct InlineId([u8; 32]);

impl InlineId {
    const MAX: usize = 31;

    #[inline]
    fn of(id: &str) -> Option<Self> {
        let bytes = id.as_bytes();
        if bytes.len() > Self::MAX {
            return None;
        }
        let mut key = [0u8; 32];
        key[..bytes.len()].copy_from_slice(bytes);
        key[Self::MAX] = bytes.len() as u8;
        Some(InlineId(key))
    }

    /// FxHash of the four words. Ids come from the district config and a lookup of an unknown
    /// id inserts nothing, so nobody can flood the table with collisions.
    #[inline]
    fn hash(&self) -> u64 {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        self.0.chunks_exact(8).fold(0u64, |h, word| {
            (h.rotate_left(5) ^ u64::from_le_bytes(word.try_into().expect("8 bytes")))
                .wrapping_mul(K)
        })
    }
}

/// One slot of the table: an id's hash, and its place + 1 (0: empty).
#[derive(Clone, Copy, Default)]
struct Slot {
    hash: u64,
    place_1: u32,
}

/// Point id → place.
pub(crate) struct PointIndex {
    /// A power of two, at least twice as many as the ids; linear probing.
    slots: Vec<Slot>,
    /// Bits of the hash that pick a slot: the high ones (FxHash's low bits depend on the low
    /// bits of its input alone, and ids often differ only further on).
    shift: u32,
    /// Per place, its id, to check a slot's answer against.
    ids: Vec<Option<InlineId>>,
    /// Ids too long to keep inline.
    longer: HashMap<String, usize>,
    /// Tests only: every id hashes alike, so only the ids tell slots apart.
    #[cfg(test)]
    colliding: bool,
}

impl PointIndex {
    /// `ids` in order: the n-th is at place n.
    pub(crate) fn new<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> Self {
        Self::build(ids, false)
    }

    fn build<'a>(ids: impl ExactSizeIterator<Item = &'a str>, colliding: bool) -> Self {
        let size = (ids.len() * 2).next_power_of_two().max(16);
        // Read by the tests alone.
        let _ = colliding;
        let mut index = PointIndex {
            slots: vec![Slot::default(); size],
            shift: 64 - size.trailing_zeros(),
            ids: Vec::with_capacity(ids.len()),
            longer: HashMap::new(),
            #[cfg(test)]
            colliding,
        };
        for (place, id) in ids.enumerate() {
            let key = InlineId::of(id);
            index.ids.push(key);
            match key {
                Some(key) => {
                    let hash = index.hash(&key);
                    let mut at = index.home(hash);
                    while index.slots[at].place_1 != 0 {
                        at = (at + 1) & (size - 1);
                    }
                    index.slots[at] = Slot {
                        hash,
                        place_1: place as u32 + 1,
                    };
                }
                None => {
                    index.longer.insert(id.to_string(), place);
                }
            }
        }
        index
    }

    #[inline]
    fn hash(&self, key: &InlineId) -> u64 {
        #[cfg(test)]
        if self.colliding {
            return 0x5555_5555_5555_5555;
        }
        key.hash()
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        (hash >> self.shift) as usize
    }

    /// The place of `key`, probing from its home slot.
    #[inline]
    fn probe(&self, key: &InlineId, hash: u64) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut at = self.home(hash);
        loop {
            let slot = self.slots[at];
            if slot.place_1 == 0 {
                return None;
            }
            let place = (slot.place_1 - 1) as usize;
            if slot.hash == hash && self.ids[place].as_ref() == Some(key) {
                return Some(place);
            }
            at = (at + 1) & mask;
        }
    }

    /// The place of `id`, one lookup alone (what [`find_all`](Self::find_all) must agree with).
    #[cfg(test)]
    fn get(&self, id: &str) -> Option<usize> {
        match InlineId::of(id) {
            Some(key) => self.probe(&key, self.hash(&key)),
            None => self.longer.get(id).copied(),
        }
    }

    /// The place of each of `ids`, in order, into `found` (cleared first). `then`, a state per
    /// place, is asked for as soon as a place is known, for the caller's pass that follows.
    pub(crate) fn find_all<'a, S>(
        &self,
        ids: impl Iterator<Item = &'a str>,
        then: &[S],
        found: &mut Vec<Option<usize>>,
    ) {
        // Stage 1: each id made a key, its home slot asked for.
        let keys: Vec<Result<(InlineId, u64), &str>> = ids
            .map(|id| {
                let key = InlineId::of(id).ok_or(id)?;
                let hash = self.hash(&key);
                prefetch(&self.slots[self.home(hash)]);
                Ok((key, hash))
            })
            .collect();
        // Stage 2: the first slot whose hash matches; its place's id and state asked for.
        let candidates: Vec<Option<usize>> = keys
            .iter()
            .map(|key| {
                let (_, hash) = key.as_ref().ok()?;
                let mask = self.slots.len() - 1;
                let mut at = self.home(*hash);
                loop {
                    let slot = self.slots[at];
                    if slot.place_1 == 0 {
                        return None;
                    }
                    if slot.hash == *hash {
                        let place = (slot.place_1 - 1) as usize;
                        prefetch(&self.ids[place]);
                        if let Some(state) = then.get(place) {
                            prefetch(state);
                        }
                        return Some(place);
                    }
                    at = (at + 1) & mask;
                }
            })
            .collect();
        // Stage 3: each answer checked against the id itself; a hash shared by two ids (or an
        // id too long to keep inline) is looked up the slow way.
        found.clear();
        found.extend(keys.iter().zip(&candidates).map(|(key, candidate)| {
            let (key, hash) = match key {
                Ok(key) => key,
                Err(long) => return self.longer.get(*long).copied(),
            };
            match candidate {
                Some(place) if self.ids[*place].as_ref() == Some(key) => Some(*place),
                Some(_) => self.probe(key, *hash),
                None => None,
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("P{i:05}")).collect()
    }

    #[test]
    fn every_id_is_found_at_its_place_and_no_other_is() {
        let mut all = ids(3000);
        all.push("x".repeat(40));
        all.push(String::new());
        all.push("P00001\0".into());
        let index = PointIndex::new(all.iter().map(String::as_str));
        for (place, id) in all.iter().enumerate() {
            assert_eq!(index.get(id), Some(place), "{id:?}");
        }
        let unknown = ["P03000", "P0000", "x", &"y".repeat(40), "P00001\0\0"];
        for id in unknown {
            assert_eq!(index.get(id), None, "{id:?}");
        }
        // The same in stages, the known and the unknown mixed.
        let asked: Vec<&str> = all.iter().map(String::as_str).chain(unknown).collect();
        let mut found = Vec::new();
        index.find_all(asked.iter().copied(), &all, &mut found);
        let expected: Vec<Option<usize>> = (0..all.len())
            .map(Some)
            .chain(unknown.iter().map(|_| None))
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn looking_up_in_stages_finds_what_one_at_a_time_finds() {
        let all = ids(5000);
        let index = PointIndex::new(all.iter().map(String::as_str));
        let states = vec![0u64; all.len()];
        let asked: Vec<String> = (0..7000)
            .map(|i| format!("P{:05}", (i * 7919) % 6000))
            .collect();
        let mut found = vec![Some(99)];
        index.find_all(asked.iter().map(String::as_str), &states, &mut found);
        let one_at_a_time: Vec<Option<usize>> = asked.iter().map(|id| index.get(id)).collect();
        assert_eq!(found, one_at_a_time);
        assert!(found.iter().flatten().count() > 5000 && found.contains(&None));
    }

    #[test]
    fn a_hash_shared_by_every_id_does_not_confuse_them() {
        let mut all = ids(100);
        all.push("z".repeat(33));
        let index = PointIndex::build(all.iter().map(String::as_str), true);
        let mut asked = all.clone();
        asked.push("P99999".into());
        let mut found = Vec::new();
        index.find_all(asked.iter().map(String::as_str), &all, &mut found);
        let expected: Vec<Option<usize>> = (0..all.len()).map(Some).chain([None]).collect();
        assert_eq!(found, expected);
        for (place, id) in all.iter().enumerate() {
            assert_eq!(index.get(id), Some(place));
        }
    }
}
