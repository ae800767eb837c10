//! Outputs the bus refuses are produced again until they land: a broker that drops the
//! connection halfway through a batch (every record after some point refused) loses nothing
//! and reorders nothing. (Records refused out of order within a batch would be produced again
//! after the later ones that landed; Kafka's idempotent producer refuses a partition's records
//! from the first failure on, which is the case here.)

mod common;

use async_trait::async_trait;
use common::{depth_series, district, T0};
use floodcmd_bus::{EmbeddedBus, WithProducer};
use floodcmd_model::bus::{Assignment, Bus, BusError, Delivery, Outgoing, Producer, Record};
use floodcmd_model::codec::encode;
use floodcmd_model::time::{Clock, ManualClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::Reading;
use floodcmd_stream::{run_stream, StreamConfig, Watermark};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// On every other batch to an output topic, appends the first half of the batch and fails the
/// rest, as a broker connection lost midway would.
struct FlakyProducer {
    inner: Arc<dyn Producer>,
    calls: Arc<AtomicUsize>,
    /// Records refused: statuses, transitions.
    refused: Arc<(AtomicUsize, AtomicUsize)>,
}

#[async_trait]
impl Producer for FlakyProducer {
    async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: bytes::Bytes,
        timestamp_ms: i64,
    ) -> Result<Delivery, BusError> {
        self.inner.send(topic, key, payload, timestamp_ms).await
    }

    async fn send_batch(
        &self,
        topic: &str,
        mut records: Vec<Outgoing>,
    ) -> Vec<Result<Delivery, BusError>> {
        let output = topic.ends_with("status") || topic.ends_with("alerts");
        if !output || records.len() < 2 || self.calls.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            return self.inner.send_batch(topic, records).await;
        }
        let lost = records.split_off(records.len() / 2);
        let counter = if topic.ends_with("status") {
            &self.refused.0
        } else {
            &self.refused.1
        };
        counter.fetch_add(lost.len(), Ordering::SeqCst);
        let mut results = self.inner.send_batch(topic, records).await;
        results.extend(
            lost.iter()
                .map(|_| Err(BusError::Client("connection lost".into()))),
        );
        results
    }
}

/// Every record of `topic`, partition by partition, in offset order.
async fn records(bus: &EmbeddedBus, topic: &str) -> Vec<(u32, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for p in 0..bus.partitions(topic).await.unwrap() {
        let mut c = bus
            .consumer("check", topic, Assignment::Positions(vec![(p, Some(0))]))
            .await
            .unwrap();
        loop {
            let batch: Vec<Record> = c.poll(10_000, Duration::from_millis(50)).await.unwrap();
            if batch.is_empty() {
                break;
            }
            out.extend(
                batch
                    .into_iter()
                    .map(|r| (r.partition, r.key.to_vec(), r.payload.to_vec())),
            );
        }
    }
    out
}

/// Run the stage over `readings` on `bus` (the embedded bus behind it is `inner`); return
/// what it wrote to status and alerts, and the group's commits on the readings topic.
async fn run(
    bus: Arc<dyn Bus>,
    inner: &EmbeddedBus,
    readings: &[Reading],
) -> (
    Vec<(u32, Vec<u8>, Vec<u8>)>,
    Vec<(u32, Vec<u8>, Vec<u8>)>,
    Vec<Option<u64>>,
) {
    let topics = Topics::new("retry");
    for t in topics.all() {
        bus.ensure_topic(&t, 4).await.unwrap();
    }
    let p = inner.producer();
    for r in readings {
        p.send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await
            .unwrap();
    }
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let handle = run_stream(
        bus.clone(),
        district(),
        clock,
        StreamConfig {
            workers: 2,
            lateness_ms: 5_000,
            topics: topics.clone(),
            group: "stream".into(),
            watermark: Watermark::Bounded { origin_ms: T0 },
            rebuild_ms: None,
        },
    )
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
    (
        records(inner, &topics.status()).await,
        records(inner, &topics.alerts()).await,
        inner.committed("stream", &topics.readings()).await.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_refused_midway_are_produced_again_in_order_and_every_reading_is_committed() {
    let d = district();
    // Two underpasses and a low point rise through every level and fall back: statuses
    // every epoch, transitions up and down.
    let depths: Vec<f64> = (0..40)
        .map(|i| {
            if i < 20 {
                i as f64 * 3.0
            } else {
                (120.0 - i as f64 * 3.0).max(0.0)
            }
        })
        .collect();
    let mut readings = Vec::new();
    for sensor in ["WL-UP-01", "WL-LP-01", "WL-LP-02"] {
        readings.extend(depth_series(&d, sensor, T0, 15_000, &depths));
    }
    readings.sort_by_key(|r| r.ts_ms);

    let plain = EmbeddedBus::new(1 << 16);
    let (status, alerts, committed) = run(Arc::new(plain.clone()), &plain, &readings).await;
    assert!(
        status.len() > 60 && alerts.len() >= 6,
        "the series must produce enough to refuse: {} statuses, {} transitions",
        status.len(),
        alerts.len()
    );

    let inner = EmbeddedBus::new(1 << 16);
    let refused = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let (calls, counted) = (Arc::new(AtomicUsize::new(0)), refused.clone());
    let flaky = WithProducer::new(inner.clone(), move |inner| {
        Arc::new(FlakyProducer {
            inner,
            calls: calls.clone(),
            refused: counted.clone(),
        })
    });
    let (f_status, f_alerts, f_committed) = run(Arc::new(flaky), &inner, &readings).await;
    let (statuses_refused, transitions_refused) = (
        refused.0.load(Ordering::SeqCst),
        refused.1.load(Ordering::SeqCst),
    );
    assert!(
        statuses_refused > 10 && transitions_refused > 0,
        "the flaky bus refused too little to show anything: {statuses_refused} statuses, {transitions_refused} transitions"
    );
    // The same records, byte for byte, in the same order in every partition.
    assert_eq!(f_status, status);
    assert_eq!(f_alerts, alerts);
    assert_eq!(f_committed, committed);
    assert!(
        committed.iter().flatten().sum::<u64>() == readings.len() as u64,
        "every reading committed: {committed:?}"
    );
}
