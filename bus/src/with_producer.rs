//! A bus that is another in every way but its producer.
//!
//! Tests put a producer that fails in front of a real bus (what the stream stage does when the
//! broker refuses its outputs), and the stream bench one that lets outputs go once produced
//! (what the stage costs apart from the embedded bus keeping them). Both need the rest of the
//! bus untouched: topics, offsets, consumers and commits.

use async_trait::async_trait;
use floodcmd_model::bus::{Assignment, Bus, BusError, Consumer, Producer};
use std::sync::Arc;

/// Makes the producer a [`WithProducer`] hands out from the inner bus's own.
pub type WrapProducer = dyn Fn(Arc<dyn Producer>) -> Arc<dyn Producer> + Send + Sync;

/// `inner`, whose producers are made by `wrap` from its own.
pub struct WithProducer<B> {
    inner: B,
    wrap: Box<WrapProducer>,
}

impl<B: Bus> WithProducer<B> {
    /// `inner` with its producers wrapped by `wrap`.
    pub fn new(
        inner: B,
        wrap: impl Fn(Arc<dyn Producer>) -> Arc<dyn Producer> + Send + Sync + 'static,
    ) -> Self {
        WithProducer {
            inner,
            wrap: Box::new(wrap),
        }
    }
}

#[async_trait]
impl<B: Bus> Bus for WithProducer<B> {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        self.inner.ensure_topic(topic, partitions).await
    }

    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        self.inner.partitions(topic).await
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, BusError> {
        self.inner.end_offsets(topic).await
    }

    async fn start_offsets(&self, topic: &str) -> Result<Vec<u64>, BusError> {
        self.inner.start_offsets(topic).await
    }

    async fn offsets_for_time(&self, topic: &str, timestamp_ms: i64) -> Result<Vec<u64>, BusError> {
        self.inner.offsets_for_time(topic, timestamp_ms).await
    }

    async fn committed(&self, group: &str, topic: &str) -> Result<Vec<Option<u64>>, BusError> {
        self.inner.committed(group, topic).await
    }

    fn producer(&self) -> Arc<dyn Producer> {
        (self.wrap)(self.inner.producer())
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        assignment: Assignment,
    ) -> Result<Box<dyn Consumer>, BusError> {
        self.inner.consumer(group, topic, assignment).await
    }
}
