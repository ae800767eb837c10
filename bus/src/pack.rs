//! Packs: many records of one partition carried in one Kafka record.
//!
//! The stream stage writes about one status per reading, and a transition per five. One Kafka
//! record each, librdkafka and the broker spent more on them than on reading the readings (the `stream-kafka`
//! bench's raw pipe: 2.8 core-µs per reading written one to a record, 1.5 packed). So the Kafka
//! bus packs the records of a topic named in [`crate::KafkaConfig::packed_topics`]: one batch
//! handed over, per partition, in order, up to [`MAX_ITEMS`] records or [`MAX_BYTES`] a pack.
//!
//! Readers see none of it: the Kafka consumer unpacks every pack it reads into the records it
//! was made of (each its own key, payload and timestamp), all at the pack's offset, all in the
//! same poll (which then holds up to one pack more than it asked for). Committing a position
//! after handling a whole poll, as every reader here does, therefore never lands inside a pack. A reader of the topic that is not this bus (another
//! client, a console consumer) sees the packs as they are.
//!
//! Layout: [`MAGIC`], then per record its key's length and its payload's (u32, little
//! endian), its timestamp (i64, little endian, ms), its key, its payload. No JSON record starts
//! with the magic's NUL byte, so a record of the topic is a pack or one record, never both; a
//! record that starts with the magic but does not parse as a pack is handed on whole, for its
//! reader to refuse (and dead-letter) as it would any undecodable record.

use bytes::{BufMut, Bytes};
use floodcmd_model::bus::Outgoing;
use std::collections::HashMap;

/// What a pack starts with: a NUL, `fp` (floodcmd pack) and the layout's version.
pub const MAGIC: &[u8; 4] = b"\0fp\x01";

/// Records a pack holds at most.
pub const MAX_ITEMS: usize = 256;

/// Bytes a pack holds at most (unless its first record alone is larger): well under the
/// broker's and librdkafka's one-megabyte limit on a record.
pub const MAX_BYTES: usize = 256 * 1024;

/// Bytes a pack spends on each record besides its key and payload.
const HEAD: usize = 4 + 4 + 8;

/// One record to produce: its partition, and the places in the batch of the records it
/// carries (one, or a pack's, in order). A record sent alone allocates nothing: every record
/// of a topic not packed is one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unit {
    pub(crate) partition: u32,
    /// The first record's place.
    pub(crate) lead: usize,
    /// The places of a pack's records after the first; empty for a record sent alone.
    pub(crate) rest: Vec<usize>,
}

impl Unit {
    /// The unit carrying `members` (the first is its lead).
    #[cfg(test)]
    pub(crate) fn of(partition: u32, members: &[usize]) -> Unit {
        Unit {
            partition,
            lead: members[0],
            rest: members[1..].to_vec(),
        }
    }

    /// The places of the records it carries, in order.
    pub(crate) fn members(&self) -> impl Iterator<Item = usize> + Clone + '_ {
        std::iter::once(self.lead).chain(self.rest.iter().copied())
    }

    /// How many records it carries.
    pub(crate) fn len(&self) -> usize {
        1 + self.rest.len()
    }
}

/// How a batch goes out: packed per partition (with `pack`, the bytes a pack may hold), in
/// the batch's order within each partition; units come in the order of their first record. A
/// batch of one is one record as it is.
pub(crate) fn plan(records: &[Outgoing], partitions: u32, pack: Option<usize>) -> Vec<Unit> {
    let Some(max_bytes) = pack.filter(|_| records.len() > 1) else {
        return records
            .iter()
            .enumerate()
            .map(|(i, r)| Unit {
                partition: r.partition(partitions),
                lead: i,
                rest: Vec::new(),
            })
            .collect();
    };
    let mut units: Vec<Unit> = Vec::new();
    // Per partition: the unit still filling, and its bytes so far.
    let mut open: HashMap<u32, (usize, usize)> = HashMap::new();
    let max_bytes = max_bytes.saturating_sub(MAGIC.len());
    for (i, r) in records.iter().enumerate() {
        let partition = r.partition(partitions);
        let size = HEAD + r.key.len() + r.payload.len();
        match open.get_mut(&partition) {
            Some((u, bytes)) if units[*u].len() < MAX_ITEMS && *bytes + size <= max_bytes => {
                units[*u].rest.push(i);
                *bytes += size;
            }
            _ => {
                open.insert(partition, (units.len(), size));
                // Room for as many records as a pack holds, or as are left: grown from
                // empty, each unit reallocated its places seven times on the way to a full
                // pack.
                let rest = (MAX_ITEMS - 1).min(records.len() - i - 1);
                units.push(Unit {
                    partition,
                    lead: i,
                    rest: Vec::with_capacity(rest),
                });
            }
        }
    }
    units
}

/// The bytes of the pack of `members`.
pub(crate) fn size<'a>(members: impl Iterator<Item = &'a Outgoing>) -> usize {
    MAGIC.len()
        + members
            .map(|r| HEAD + r.key.len() + r.payload.len())
            .sum::<usize>()
}

/// The pack of `members` (more than one record).
#[cfg(test)]
pub(crate) fn write<'a>(members: impl Iterator<Item = &'a Outgoing> + Clone) -> Vec<u8> {
    let mut out = vec![0; size(members.clone())];
    write_into(members, &mut out[..]);
    out
}

/// Write the pack of `members` into `out`, which holds exactly [`size`] bytes (the Kafka bus
/// writes it into memory librdkafka then owns, see `kafka::NativePack`).
///
/// # Panics
/// If `out` does not hold exactly the pack: room left over would go to the broker as it was.
pub(crate) fn write_into<'a>(members: impl Iterator<Item = &'a Outgoing>, mut out: impl BufMut) {
    out.put_slice(MAGIC);
    for r in members {
        out.put_u32_le(r.key.len() as u32);
        out.put_u32_le(r.payload.len() as u32);
        out.put_i64_le(r.timestamp_ms);
        out.put_slice(&r.key);
        out.put_slice(&r.payload);
    }
    assert_eq!(
        out.remaining_mut(),
        0,
        "a pack's buffer is its size exactly"
    );
}

/// Whether `payload` is laid out as a pack (its magic; [`unpack`] says whether it parses).
pub(crate) fn is_pack(payload: &[u8]) -> bool {
    payload.starts_with(MAGIC)
}

/// The records of a pack, in order: each key and payload a slice of `pack`, and its timestamp.
/// `None` if `pack` is not a whole, well-formed pack of at least one record.
pub fn unpack(pack: &Bytes) -> Option<Vec<(Bytes, Bytes, i64)>> {
    let mut rest = pack.strip_prefix(MAGIC.as_slice())?;
    let mut at = MAGIC.len();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let head = rest.get(..HEAD)?;
        let key_len = u32::from_le_bytes(head[0..4].try_into().ok()?) as usize;
        let payload_len = u32::from_le_bytes(head[4..8].try_into().ok()?) as usize;
        let timestamp_ms = i64::from_le_bytes(head[8..16].try_into().ok()?);
        let body = key_len.checked_add(payload_len)?;
        if rest.len() - HEAD < body {
            return None;
        }
        let key_at = at + HEAD;
        let payload_at = key_at + key_len;
        out.push((
            pack.slice(key_at..payload_at),
            pack.slice(payload_at..payload_at + payload_len),
            timestamp_ms,
        ));
        rest = &rest[HEAD + body..];
        at = payload_at + payload_len;
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodcmd_model::bus::{murmur2, partition_for};
    use proptest::prelude::*;

    fn out(key: &str, payload: &[u8], ts: i64) -> Outgoing {
        Outgoing {
            key: Bytes::copy_from_slice(key.as_bytes()),
            payload: Bytes::copy_from_slice(payload),
            timestamp_ms: ts,
            key_hash: None,
        }
    }

    /// A key's hash handed in by the caller places its record where the key's own would, packed
    /// or not.
    #[test]
    fn a_key_hash_given_plans_as_the_key_itself_does() {
        let records: Vec<Outgoing> = (0..300)
            .map(|i| out(&format!("UP-{i:03}"), b"{}", i))
            .collect();
        let hashed: Vec<Outgoing> = records
            .iter()
            .map(|r| Outgoing {
                key_hash: Some(murmur2(&r.key)),
                ..r.clone()
            })
            .collect();
        for (partitions, pack) in [(4, Some(MAX_BYTES)), (7, None), (1, Some(MAX_BYTES))] {
            let a = plan(&records, partitions, pack);
            let b = plan(&hashed, partitions, pack);
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.partition, y.partition);
                assert_eq!(
                    x.members().collect::<Vec<_>>(),
                    y.members().collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn a_batch_is_packed_per_partition_in_its_order_and_a_lone_record_is_not() {
        let records: Vec<Outgoing> = (0..40).map(|i| out(&format!("P{i}"), b"{}", i)).collect();
        let units = plan(&records, 4, Some(MAX_BYTES));
        assert!(units.len() <= 4, "{units:?}");
        let mut seen: Vec<usize> = units.iter().flat_map(Unit::members).collect();
        for u in &units {
            let members: Vec<usize> = u.members().collect();
            assert!(members.windows(2).all(|w| w[0] < w[1]), "in order");
            for m in members {
                assert_eq!(partition_for(&records[m].key, 4), u.partition);
            }
        }
        assert!(units.windows(2).all(|w| w[0].lead < w[1].lead));
        seen.sort_unstable();
        assert_eq!(seen, (0..40).collect::<Vec<_>>(), "every record once");
        assert_eq!(plan(&records[..1], 4, Some(MAX_BYTES)).len(), 1);
        assert_eq!(plan(&records, 4, None).len(), 40, "a topic not packed");
    }

    #[test]
    fn a_pack_is_closed_at_its_count_or_its_size() {
        let many: Vec<Outgoing> = (0..MAX_ITEMS * 2 + 1)
            .map(|i| out("K", b"x", i as i64))
            .collect();
        let sizes = |records: &[Outgoing], max_bytes| -> Vec<usize> {
            plan(records, 4, Some(max_bytes))
                .iter()
                .map(Unit::len)
                .collect()
        };
        assert_eq!(sizes(&many, MAX_BYTES), vec![MAX_ITEMS, MAX_ITEMS, 1]);
        let big = vec![b'x'; MAX_BYTES / 2];
        let large: Vec<Outgoing> = (0..5).map(|i| out("K", &big, i)).collect();
        assert_eq!(
            sizes(&large, MAX_BYTES),
            vec![1, 1, 1, 1, 1],
            "over half the limit each"
        );
        let one_over = vec![b'x'; MAX_BYTES + 10];
        let units = plan(
            &[out("K", &one_over, 0), out("K", b"y", 1)],
            4,
            Some(MAX_BYTES),
        );
        assert_eq!(units.len(), 2, "a record over the limit goes alone");
        // Under a lower limit every pack fits it whole, its magic and heads included.
        let small: Vec<Outgoing> = (0..100).map(|i| out("K", &[b'x'; 40], i)).collect();
        let units = plan(&small, 4, Some(1_000));
        for u in &units {
            let bytes = write(u.members().map(|m| &small[m])).len();
            assert!(bytes <= 1_000, "{bytes} bytes");
        }
        assert_eq!(units.len(), 100usize.div_ceil((1_000 - 4) / (HEAD + 41)));
    }

    #[test]
    fn what_is_not_a_whole_pack_is_not_unpacked() {
        let records = [out("a", b"{\"x\":1}", 5), out("bb", b"", -1)];
        let pack = Bytes::from(write(records.iter()));
        assert!(is_pack(&pack));
        // Cut anywhere but between its records, it is no pack; cut there, a pack of the first.
        let first_ends = MAGIC.len() + HEAD + 1 + 7;
        for cut in MAGIC.len()..pack.len() {
            let got = unpack(&pack.slice(..cut)).map(|items| items.len());
            let expected = (cut == first_ends).then_some(1);
            assert_eq!(got, expected, "cut at {cut}");
        }
        assert_eq!(
            unpack(&Bytes::from_static(MAGIC)),
            None,
            "a pack of nothing"
        );
        assert_eq!(unpack(&Bytes::from_static(b"{\"point\":\"P1\"}")), None);
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&0i64.to_le_bytes());
        assert_eq!(unpack(&Bytes::from(huge)), None, "lengths past its end");
        assert!(!is_pack(b"{\"sensor\":\"S\"}"));
    }

    proptest! {
        /// Whatever goes into a pack comes out of it: every key, payload and timestamp, in
        /// order, however many and however large.
        #[test]
        fn a_pack_gives_back_its_records(
            items in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..20),
                 proptest::collection::vec(any::<u8>(), 0..300),
                 any::<i64>()),
                1..40,
            )
        ) {
            let records: Vec<Outgoing> = items
                .iter()
                .map(|(k, p, t)| Outgoing {
                    key: Bytes::copy_from_slice(k),
                    payload: Bytes::copy_from_slice(p),
                    timestamp_ms: *t,
                    key_hash: None,
                })
                .collect();
            let pack = Bytes::from(write(records.iter()));
            let back = unpack(&pack).expect("a pack");
            prop_assert_eq!(back.len(), records.len());
            for (r, (k, p, t)) in records.iter().zip(back) {
                prop_assert_eq!(&r.key, &k);
                prop_assert_eq!(&r.payload, &p);
                prop_assert_eq!(r.timestamp_ms, t);
            }
        }

        /// Any bytes after the magic either unpack or are refused; nothing panics.
        #[test]
        fn any_bytes_after_the_magic_are_unpacked_or_refused(
            tail in proptest::collection::vec(any::<u8>(), 0..200)
        ) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let bytes = Bytes::from(bytes);
            if let Some(items) = unpack(&bytes) {
                let total: usize = items.iter().map(|(k, p, _)| HEAD + k.len() + p.len()).sum();
                prop_assert_eq!(total + MAGIC.len(), bytes.len());
            }
        }
    }
}
