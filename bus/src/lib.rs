//! Bus implementations.
//!
//! - [`embedded::EmbeddedBus`]: in-process topics with the same semantics as Kafka where the
//!   stages can notice (keyed partitioning, offsets, per-group committed positions, earliest
//!   reset for new groups) plus bounded memory: a partition holds at most `capacity` records
//!   not yet committed by every group reading it, and a producer waits for space. It never
//!   drops.
//! - [`kafka::KafkaBus`]: Apache Kafka through librdkafka, same trait, same partitioner.

pub mod embedded;
pub mod kafka;

pub use embedded::EmbeddedBus;
pub use kafka::{KafkaBus, KafkaConfig, PartitionLayout, TopicLayout};
