//! The bus: named, partitioned, append-only topics with independent consumer positions.
//!
//! **API Boundary.** Stages talk to each other only through this trait. Two implementations:
//! the embedded bus (in-process, zero setup, `floodcmd demo` and tests) and Kafka. Both place a
//! keyed record in the partition [`partition_for`] picks (Kafka's murmur2, so a Java producer
//! agrees), both give per-partition offsets, both let a consumer group commit "next offset to
//! read" per partition after the effects of a record are safely downstream.

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// A record read from a topic.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// Key (decides the partition).
    pub key: Bytes,
    /// Payload.
    pub payload: Bytes,
    /// Timestamp given by the producer, ms.
    pub timestamp_ms: i64,
}

/// Where a produced record landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

/// Which partitions a consumer reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assignment {
    /// Every partition of the topic.
    All,
    /// Exactly these (static assignment, e.g. one set per timely worker).
    Partitions(Vec<u32>),
    /// These partitions, each from an explicit offset (`None`: the group's committed offset).
    /// Starting there directly, rather than seeking after the fact, means nothing fetched
    /// from the old position can slip in first.
    Positions(Vec<(u32, Option<u64>)>),
    /// These partitions, each from where the caller starts its group (the group's commit, or
    /// before it to rebuild, else the first offset the bus holds), resolved by a caller that
    /// has looked the commits up already, so the bus need not look again. Unlike an explicit
    /// position, it stands for the group: a bus that keeps history for its groups holds it
    /// from there for a group it does not know yet, as it does for `None` positions.
    GroupPositions(Vec<(u32, u64)>),
}

impl Assignment {
    /// Each partition to read and where to start (`None`: the group's committed offset), for
    /// a topic of `partitions` partitions.
    pub fn resolve(
        self,
        topic: &str,
        partitions: u32,
    ) -> Result<Vec<(u32, Option<u64>)>, BusError> {
        let wanted: Vec<(u32, Option<u64>)> = match self {
            Assignment::All => (0..partitions).map(|p| (p, None)).collect(),
            Assignment::Partitions(ps) => ps.into_iter().map(|p| (p, None)).collect(),
            Assignment::Positions(ps) => ps,
            Assignment::GroupPositions(ps) => ps.into_iter().map(|(p, at)| (p, Some(at))).collect(),
        };
        match wanted.iter().find(|(p, _)| *p >= partitions) {
            Some(&(bad, _)) => Err(BusError::UnknownPartition {
                topic: topic.to_string(),
                partition: bad,
            }),
            None => Ok(wanted),
        }
    }
}

/// Errors from any bus implementation.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The topic was never created.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// A partition outside the topic's range.
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Partition asked for.
        partition: u32,
    },
    /// The bus is shutting down.
    #[error("bus closed")]
    Closed,
    /// The producer could not deliver within its timeout (the bus is full or unreachable).
    #[error("timed out producing to {topic} after {after:?}")]
    Timeout {
        /// Topic.
        topic: String,
        /// How long it waited.
        after: Duration,
    },
    /// Anything the underlying client reports.
    #[error("{0}")]
    Client(String),
}

/// The bus.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Create a topic if it does not exist. Creating an existing topic is not an error.
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError>;
    /// How many partitions a topic has.
    async fn partitions(&self, topic: &str) -> Result<u32, BusError>;
    /// The next offset to be written in each partition (Kafka's high watermark). A bounded
    /// reader (replay, tests) reads up to these and stops.
    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, BusError>;
    /// The first offset each partition still holds (Kafka's low watermark). Records below it
    /// are gone: deleted by retention, or never kept. A reader that expected one of them has
    /// lost it, and must say so rather than wait for it.
    async fn start_offsets(&self, topic: &str) -> Result<Vec<u64>, BusError>;
    /// Per partition, the first offset whose record timestamp is at or after `timestamp_ms`
    /// (the end offset where there is none). Replays and archives start there.
    async fn offsets_for_time(&self, topic: &str, timestamp_ms: i64) -> Result<Vec<u64>, BusError>;
    /// The group's committed next offset per partition of `topic` (`None` where it never
    /// committed).
    async fn committed(&self, group: &str, topic: &str) -> Result<Vec<Option<u64>>, BusError>;
    /// A producer. Cheap to clone through the `Arc`.
    fn producer(&self) -> Arc<dyn Producer>;
    /// A consumer in `group` reading `topic`. It starts at the group's committed position, or
    /// at the earliest retained record for a new group.
    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        assignment: Assignment,
    ) -> Result<Box<dyn Consumer>, BusError>;
}

/// One record of a batch for [`Producer::send_batch`].
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Key (decides the partition).
    pub key: Bytes,
    /// Payload.
    pub payload: Bytes,
    /// Record timestamp.
    pub timestamp_ms: i64,
    /// `murmur2(&key)`, when the caller has it already: the bus takes it instead of hashing
    /// the key again. The stream stage hashes each key as it encodes the record (it groups an
    /// epoch's outputs by partition); hashed again when handed over, after the whole epoch
    /// was written, the keys had left the cache (5 % of a worker's time from Kafka).
    pub key_hash: Option<u32>,
}

impl Outgoing {
    /// The partition of `partitions` the key goes to, as [`partition_for`] gives.
    pub fn partition(&self, partitions: u32) -> u32 {
        let hash = match self.key_hash {
            Some(h) => {
                debug_assert_eq!(h, murmur2(&self.key), "a key hash that is not the key's");
                h
            }
            None => murmur2(&self.key),
        };
        partition_of_hash(hash, partitions)
    }
}

/// Appends records to topics.
#[async_trait]
pub trait Producer: Send + Sync {
    /// Append a record to the partition its key hashes to. Waits while the topic is full
    /// (backpressure); never drops.
    async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: Bytes,
        timestamp_ms: i64,
    ) -> Result<Delivery, BusError>;

    /// Append many records to one topic, in order per key; one result per record, in order.
    /// Waits until every record is on the bus or has failed. Buses that can acknowledge a
    /// whole batch at once (Kafka) override this: one wakeup per batch instead of per record.
    async fn send_batch(
        &self,
        topic: &str,
        records: Vec<Outgoing>,
    ) -> Vec<Result<Delivery, BusError>> {
        futures::future::join_all(
            records
                .iter()
                .map(|r| self.send(topic, &r.key, r.payload.clone(), r.timestamp_ms)),
        )
        .await
    }

    /// Hand `records` over to the bus, after everything handed over before them, and return
    /// what waits for their acknowledgements: one result per record, in order, as
    /// [`send_batch`](Producer::send_batch) gives. Returns once the records are on their way
    /// (queued in order); the caller may go on working, and hand over more, while the bus
    /// acknowledges. Buses whose acknowledgement takes a round trip (Kafka) override this;
    /// the default sends the whole batch and hands back the results it already has.
    async fn hand_over(&self, topic: &str, records: Vec<Outgoing>) -> Acknowledgements {
        let results = self.send_batch(topic, records).await;
        Box::pin(futures::future::ready(results))
    }
}

/// What [`Producer::hand_over`] returns: the records' results once the bus has acknowledged
/// (or failed) every one of them.
pub type Acknowledgements = std::pin::Pin<
    Box<dyn std::future::Future<Output = Vec<Result<Delivery, BusError>>> + Send + 'static>,
>;

/// Reads records of one topic for one consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// Up to `max` records, waiting at most `timeout` for the first. Empty on timeout.
    ///
    /// Several records can share an offset (the Kafka bus's packs, `floodcmd_bus::pack`):
    /// they come in the same poll, one after another, so a poll can hold up to one pack more
    /// than `max`. A position committed after handling a whole poll never falls among them.
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>, BusError>;
    /// Commit the group's position: `next` is the next offset to read in `partition`.
    async fn commit(&mut self, partition: u32, next: u64) -> Result<(), BusError>;
    /// Commit several partitions' positions (`(partition, next offset)`) at once, without
    /// waiting for the bus to answer. Kafka's sends them in one request: the group
    /// coordinator's work is per request, and a reader of many partitions committed each
    /// in a request of its own.
    async fn commit_all(&mut self, positions: &[(u32, u64)]) -> Result<(), BusError> {
        for (partition, next) in positions {
            self.commit(*partition, *next).await?;
        }
        Ok(())
    }
    /// Read `partition` from `offset` on (replays and archives start at a time's offsets).
    async fn seek(&mut self, partition: u32, offset: u64) -> Result<(), BusError>;

    /// The partitions this consumer reads.
    fn assigned(&self) -> Vec<u32>;

    /// Commit the group's last positions (`(partition, next offset)`) and return once the bus
    /// has them: a reader that ends calls it last, then lets the consumer go. It may block its
    /// thread until the bus answers (Kafka's does), so call it where a thread may block.
    async fn commit_last(&mut self, last: &[(u32, u64)]) -> Result<(), BusError> {
        for (partition, next) in last {
            self.commit(*partition, *next).await?;
        }
        Ok(())
    }

    /// Done with this consumer. A bus whose clients take time to close closes it off the
    /// caller's path (nothing is left to wait for after [`Consumer::commit_last`] but, on Kafka,
    /// an earlier commit librdkafka retries, which can only set the group back).
    fn let_go(self: Box<Self>) {}
}

/// The partition for `key` among `partitions`: Kafka's default (murmur2, positive, modulo).
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    partition_of_hash(murmur2(key), partitions)
}

/// The partition among `partitions` of a key whose murmur2 is `hash` (see [`partition_for`]).
pub fn partition_of_hash(hash: u32, partitions: u32) -> u32 {
    (hash & 0x7fff_ffff) % partitions.max(1)
}

/// Kafka's murmur2 hash (as in `org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= (tail[2] as u32) << 16;
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_test_vectors() {
        // Vectors from Kafka's UtilsTest.testMurmur2 (values there are signed ints).
        let cases: [(&[u8], i32); 4] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
        ];
        for (input, want) in cases {
            assert_eq!(
                murmur2(input) as i32,
                want,
                "{:?}",
                std::str::from_utf8(input)
            );
        }
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        for n in 1..10 {
            let p = partition_for(b"WL-UP-01", n);
            assert!(p < n);
            assert_eq!(p, partition_for(b"WL-UP-01", n));
        }
    }
}
