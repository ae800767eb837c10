//! Point id → the place of its state in an engine: the lookup every reading starts with.
//!
//! A district larger than the cache makes each lookup a few cache misses (the id's own bytes,
//! the table's slot, then the point's state), and the work around them is short, so the misses
//! are most of the cost. The index is its own open-addressing table so that an epoch's lookups
//! can be made in stages ([`PointIndex::find_all`]): each id's bytes asked for a few ahead as
//! keys are made, every slot asked for, then every point's state, then each answer checked, so
//! the misses of one stage overlap rather than follow one another.

use crate::prefetch::prefetch;
use std::collections::HashMap;

/// An id of at most [`InlineId::MAX`] bytes as four little-endian words, zero-padded, with its
/// length in the last byte (so ids that differ only by trailing zero bytes stay apart). Every
/// id a district config holds in practice fits; a longer one is kept apart, in an ordinary map.
#[derive(PartialEq, Eq, Clone, Copy)]
pub(crate) struct InlineId([u64; 4]);

impl InlineId {
    const MAX: usize = 31;

    /// The words are loaded from the id itself, not copied into a zeroed buffer (a call to
    /// `memcpy`) and read back: a key is made for every reading of an epoch.
    #[inline]
    fn of(id: &str) -> Option<Self> {
        let bytes = id.as_bytes();
        let len = bytes.len();
        if len > Self::MAX {
            return None;
        }
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        }
        let rest = len % 8;
        if rest > 0 {
            words[len / 8] = if len >= 8 {
                // The eight bytes that end the id, shifted down to the `rest` not yet taken.
                u64::from_le_bytes(bytes[len - 8..].try_into().expect("8 bytes"))
                    >> (8 * (8 - rest))
            } else {
                bytes
                    .iter()
                    .rev()
                    .fold(0, |word, &b| (word << 8) | u64::from(b))
            };
        }
        words[3] |= (len as u64) << 56;
        Some(InlineId(words))
    }

    /// FxHash of the four words. Ids come from the district config and a lookup of an unknown
    /// id inserts nothing, so nobody can flood the table with collisions.
    #[inline]
    fn hash(&self) -> u64 {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        self.0
            .iter()
            .fold(0u64, |h, &word| (h.rotate_left(5) ^ word).wrapping_mul(K))
    }
}

/// How many ids ahead of the one made a key its bytes are asked for.
const IDS_AHEAD: usize = 8;

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
        // Stage 1: each id made a key, its home slot asked for. The ids' own bytes are asked
        // for a few ahead: a reading's id lies in the reading (`Id` keeps up to 24 bytes
        // inline), or in an allocation of its own when longer, made when the reading was
        // decoded; either is likely out of cache by the time the reading's epoch is complete.
        let ids: Vec<&str> = ids.collect();
        let keys: Vec<Result<(InlineId, u64), &str>> = ids
            .iter()
            .enumerate()
            .map(|(k, &id)| {
                if let Some(ahead) = ids.get(k + IDS_AHEAD) {
                    prefetch(ahead.as_bytes());
                }
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

    /// The layout the type's doc gives, built the plain way: the bytes zero-padded to 32,
    /// the length in the last, read as four little-endian words.
    fn laid_out(id: &str) -> InlineId {
        let mut bytes = [0u8; 32];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        bytes[InlineId::MAX] = id.len() as u8;
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = u64::from_le_bytes(chunk.try_into().unwrap());
        }
        InlineId(words)
    }

    #[test]
    fn an_inline_id_is_laid_out_as_documented_at_every_length() {
        // Ids of every length from ASCII, zero bytes and two- and three-byte characters, each
        // length begun at every letter of that alphabet.
        let alphabet = ["a", "Z", "0", "\0", "\u{7f}", "é", "水"];
        for len in 0..=InlineId::MAX {
            for start in 0..alphabet.len() {
                let mut id = String::new();
                let mut k = start;
                while id.len() < len {
                    let next = alphabet[k % alphabet.len()];
                    let next = if id.len() + next.len() > len {
                        "x"
                    } else {
                        next
                    };
                    id.push_str(next);
                    k += 1;
                }
                assert_eq!(id.len(), len);
                let key = InlineId::of(&id).expect("fits");
                assert!(key == laid_out(&id), "{id:?}");
            }
        }
        assert!(InlineId::of(&"x".repeat(InlineId::MAX + 1)).is_none());
    }

    proptest::proptest! {
        /// An id's key is its layout, and ids that differ a little (one byte changed, a zero
        /// byte added or a character removed at the end) have different keys.
        #[test]
        fn inline_keys_are_the_layout_and_tell_near_ids_apart(
            a in "[a-c\\x00é-]{0,29}",
            at in 0usize..32,
        ) {
            proptest::prop_assume!(a.len() < InlineId::MAX);
            let key = InlineId::of(&a).unwrap();
            proptest::prop_assert!(key == laid_out(&a));
            let mut changed = a.clone().into_bytes();
            if !changed.is_empty() {
                let at = at % changed.len();
                changed[at] ^= 0x01;
            }
            let changed = String::from_utf8_lossy(&changed).into_owned();
            let shorter = &a[..a.len() - a.chars().last().map_or(0, char::len_utf8)];
            let near = [changed, format!("{a}\0"), shorter.to_string()];
            for b in near.iter().filter(|b| b.len() <= InlineId::MAX) {
                let other = InlineId::of(b).unwrap();
                proptest::prop_assert_eq!(other == key, *b == a, "{:?} against {:?}", b, a);
            }
        }
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
