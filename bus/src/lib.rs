//! Bus implementations.
//!
//! - [`embedded::EmbeddedBus`]: in-process topics with the same semantics as Kafka where the
//!   stages can notice (keyed partitioning, offsets, per-group committed positions, earliest
//!   reset for new groups) plus bounded memory: a partition holds at most `capacity` records
//!   not yet committed by every group reading it, and a producer waits for space. It never
//!   drops.
//! - [`kafka::KafkaBus`]: Apache Kafka through librdkafka, same trait, same partitioner.
//! - [`pack`]: how the Kafka bus carries many records of a partition in one Kafka record, and
//!   gives them back one by one.
//! - [`with_producer::WithProducer`]: another bus with its producer wrapped (fault injection in
//!   tests, outputs let go in the stream bench).

pub mod embedded;
pub mod kafka;
pub mod pack;
pub mod with_producer;

pub use embedded::EmbeddedBus;
pub use kafka::{KafkaBus, KafkaConfig, PartitionLayout, TopicLayout};
pub use with_producer::WithProducer;
