//! Outputs the bus refuses are produced again until they land: a broker that drops the
//! connection halfway through a batch (every record after some point refused) loses nothing
//! and reorders nothing. (Records refused out of order within a batch would be produced again
//! after the later ones that landed; Kafka's idempotent producer refuses a partition's records
//! from the first failure on, which is the case here.)

mod common;

use async_trait::async_trait;
use common::{depth_series, district, run_bounded, up_and_down, T0};
use floodcmd_bus::{EmbeddedBus, WithProducer};
use floodcmd_model::bus::{
    partition_for, Acknowledgements, Assignment, Bus, BusError, Delivery, Outgoing, Producer,
    Record,
};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{AlertTransition, PointStatus};
use floodcmd_model::topic::Topics;
use floodcmd_model::{DataState, Reading};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    run_bounded(bus.clone(), district(), &topics, 2, 5_000).await;
    (
        records(inner, &topics.status()).await,
        records(inner, &topics.alerts()).await,
        inner.committed("stream", &topics.readings()).await.unwrap(),
    )
}

/// Two underpasses and a low point rise through every level and fall back, a reading every
/// 15 s: statuses every epoch, transitions up and down.
fn rise_and_fall() -> Vec<Reading> {
    let d = district();
    let depths = up_and_down(20);
    let mut readings = Vec::new();
    for sensor in ["WL-UP-01", "WL-LP-01", "WL-LP-02"] {
        readings.extend(depth_series(&d, sensor, T0, 15_000, &depths));
    }
    readings.sort_by_key(|r| r.ts_ms);
    readings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_refused_midway_are_produced_again_in_order_and_every_reading_is_committed() {
    let readings = rise_and_fall();

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

/// Acknowledges each output batch only once the next batch to its topic has been handed over
/// (or 300 ms later, for the last), as a broker does while more is on the way. Every third
/// batch to a topic lands only its first half; the rest fails when the acknowledgement comes,
/// after the next batch has landed. Before acknowledging anything it checks that no reading
/// whose status is in the batch has been committed yet.
struct LateProducer {
    inner: Arc<dyn Producer>,
    bus: EmbeddedBus,
    readings_topic: String,
    /// Per (point, event time) of a reading: its partition and offset in the readings topic.
    offsets: Arc<HashMap<(String, i64), (u32, u64)>>,
    handed: Arc<Mutex<HashMap<String, usize>>>,
    failed: Arc<AtomicUsize>,
    /// Statuses checked against the commits while unacknowledged, and those found committed.
    checked: Arc<AtomicUsize>,
    violations: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Producer for LateProducer {
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
        records: Vec<Outgoing>,
    ) -> Vec<Result<Delivery, BusError>> {
        self.inner.send_batch(topic, records).await
    }

    async fn hand_over(&self, topic: &str, mut records: Vec<Outgoing>) -> Acknowledgements {
        let output = topic.ends_with("status") || topic.ends_with("alerts");
        if !output || records.is_empty() {
            let results = self.inner.send_batch(topic, records).await;
            return Box::pin(futures::future::ready(results));
        }
        let mine = {
            let mut handed = self.handed.lock().unwrap();
            let n = handed.entry(topic.to_string()).or_default();
            *n += 1;
            *n
        };
        // The readings behind this batch's statuses (silence is caused by no reading).
        let behind: Vec<(u32, u64)> = if topic.ends_with("status") {
            records
                .iter()
                .filter_map(|r| {
                    let s: PointStatus = decode(&r.payload).unwrap();
                    let at = s
                        .last_reading_ms
                        .filter(|_| s.data_state != DataState::Silent)?;
                    self.offsets.get(&(s.point.to_string(), at)).copied()
                })
                .collect()
        } else {
            Vec::new()
        };
        let lost = if mine % 3 == 0 && records.len() >= 2 {
            records.split_off(records.len() / 2)
        } else {
            Vec::new()
        };
        self.failed.fetch_add(lost.len(), Ordering::SeqCst);
        let mut results = self.inner.send_batch(topic, records).await;
        let (handed, topic) = (self.handed.clone(), topic.to_string());
        let (bus, readings) = (self.bus.clone(), self.readings_topic.clone());
        let (checked, violations) = (self.checked.clone(), self.violations.clone());
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
            while handed.lock().unwrap()[&topic] == mine && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let committed = bus.committed("stream", &readings).await.unwrap();
            for (p, offset) in behind {
                checked.fetch_add(1, Ordering::SeqCst);
                if committed[p as usize].is_some_and(|c| c > offset) {
                    violations.lock().unwrap().push(format!(
                        "partition {p} offset {offset} committed ({committed:?}) before its status was acknowledged"
                    ));
                }
            }
            results.extend(
                lost.iter()
                    .map(|_| Err(BusError::Client("connection lost".into()))),
            );
            results
        })
    }
}

/// `seq` with each record's later copies dropped: what a consumer that ignores a record it has
/// already seen, identical, takes from it.
fn firsts(seq: &[(u32, Vec<u8>, Vec<u8>)]) -> Vec<(u32, Vec<u8>, Vec<u8>)> {
    let mut seen = std::collections::HashSet::new();
    seq.iter().filter(|r| seen.insert(*r)).cloned().collect()
}

/// Per key, its records in order.
fn by_key(seq: &[(u32, Vec<u8>, Vec<u8>)]) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let mut out: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for (_, k, v) in seq {
        out.entry(k.clone()).or_default().push(v.clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_failing_after_later_ones_landed_end_in_order_and_nothing_is_committed_ahead_of_them(
) {
    let readings = rise_and_fall();
    // Where `run` will put each reading: its key's partition, in the order sent.
    let mut next = [0u64; 4];
    let offsets: HashMap<(String, i64), (u32, u64)> = readings
        .iter()
        .map(|r| {
            let p = partition_for(r.sensor.as_bytes(), 4);
            next[p as usize] += 1;
            ((r.point.to_string(), r.ts_ms), (p, next[p as usize] - 1))
        })
        .collect();

    let plain = EmbeddedBus::new(1 << 16);
    let (status, alerts, committed) = run(Arc::new(plain.clone()), &plain, &readings).await;

    let inner = EmbeddedBus::new(1 << 16);
    let failed = Arc::new(AtomicUsize::new(0));
    let checked = Arc::new(AtomicUsize::new(0));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let (bus, offsets) = (inner.clone(), Arc::new(offsets));
    let (f, c, v) = (failed.clone(), checked.clone(), violations.clone());
    let late = WithProducer::new(inner.clone(), move |producer| {
        Arc::new(LateProducer {
            inner: producer,
            bus: bus.clone(),
            readings_topic: Topics::new("retry").readings(),
            offsets: offsets.clone(),
            handed: Default::default(),
            failed: f.clone(),
            checked: c.clone(),
            violations: v.clone(),
        })
    });
    let (l_status, l_alerts, l_committed) = run(Arc::new(late), &inner, &readings).await;
    assert!(
        failed.load(Ordering::SeqCst) > 10,
        "too few failures to show anything"
    );
    assert!(
        checked.load(Ordering::SeqCst) > 60,
        "too few statuses checked against the commits: {}",
        checked.load(Ordering::SeqCst)
    );
    assert_eq!(*violations.lock().unwrap(), Vec::<String>::new());
    // Records that had landed ahead of a failed one were produced again after it...
    assert!(
        l_status.len() > status.len(),
        "nothing was produced again: {} statuses against {}",
        l_status.len(),
        status.len()
    );
    for (late, plain, what) in [
        (&l_status, &status, "status"),
        (&l_alerts, &alerts, "alerts"),
    ] {
        let (late_keys, plain_keys) = (by_key(late), by_key(plain));
        assert_eq!(
            late_keys.keys().collect::<Vec<_>>(),
            plain_keys.keys().collect::<Vec<_>>()
        );
        for (key, records) in &plain_keys {
            let got = &late_keys[key];
            // ...so every key's last record is the engine's last,
            assert_eq!(got.last(), records.last(), "{what}: last record of a key");
            // and the engine's records are all there, in its order.
            let mut rest = got.iter();
            for r in records {
                assert!(
                    rest.any(|g| g == r),
                    "{what}: a record missing or out of order for key {}",
                    String::from_utf8_lossy(key)
                );
            }
        }
    }
    // Each record's first copy: exactly what the plain bus got, when no status repeats.
    assert_eq!(firsts(&l_alerts).len(), firsts(&alerts).len());
    assert_eq!(l_committed, committed);
}

/// Takes every output and lands and acknowledges it 300 ms later, as a slow broker does;
/// notes the threads (stage workers) that handed outputs over.
struct SlowProducer {
    inner: Arc<dyn Producer>,
    handing_over: Arc<Mutex<HashSet<std::thread::ThreadId>>>,
}

#[async_trait]
impl Producer for SlowProducer {
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
        records: Vec<Outgoing>,
    ) -> Vec<Result<Delivery, BusError>> {
        self.inner.send_batch(topic, records).await
    }

    async fn hand_over(&self, topic: &str, records: Vec<Outgoing>) -> Acknowledgements {
        if !records.is_empty() {
            self.handing_over
                .lock()
                .unwrap()
                .insert(std::thread::current().id());
        }
        // Landing only with the acknowledgement: a batch nobody waits for any more may never
        // land, as a producer's queue lost with its process.
        let (inner, topic) = (self.inner.clone(), topic.to_string());
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            inner.send_batch(&topic, records).await
        })
    }
}

/// Hands out what its consumer reads; the consumer of worker `failing` (the one reading
/// partitions `failing` mod 2) fails (a broker gone) once its worker has handed outputs over,
/// while they wait for their acknowledgement.
struct FailingConsumer {
    inner: Box<dyn floodcmd_model::bus::Consumer>,
    handing_over: Arc<Mutex<HashSet<std::thread::ThreadId>>>,
    failing: u32,
}

#[async_trait]
impl floodcmd_model::bus::Consumer for FailingConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>, BusError> {
        let me = std::thread::current().id();
        let worker = self.inner.assigned().first().map(|p| p % 2);
        if worker == Some(self.failing) && self.handing_over.lock().unwrap().contains(&me) {
            return Err(BusError::Client("the broker is gone".into()));
        }
        self.inner.poll(max, timeout).await
    }
    async fn commit(&mut self, partition: u32, next: u64) -> Result<(), BusError> {
        self.inner.commit(partition, next).await
    }
    async fn commit_all(&mut self, positions: &[(u32, u64)]) -> Result<(), BusError> {
        self.inner.commit_all(positions).await
    }
    async fn seek(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        self.inner.seek(partition, offset).await
    }
    fn assigned(&self) -> Vec<u32> {
        self.inner.assigned()
    }
}

/// The stage live on `bus` (readings in `topics`), its clock a budget past `end_ms`.
async fn live_stage(
    bus: Arc<dyn Bus>,
    topics: &Topics,
    end_ms: i64,
    rebuild: bool,
) -> floodcmd_stream::StreamHandle {
    let clock: Arc<dyn floodcmd_model::time::Clock> =
        Arc::new(floodcmd_model::time::ManualClock::new(end_ms + 10_000));
    floodcmd_stream::run_stream(
        bus,
        district(),
        clock.clone(),
        floodcmd_stream::StreamConfig {
            workers: 2,
            lateness_ms: 5_000,
            topics: topics.clone(),
            group: "stream".into(),
            watermark: floodcmd_stream::Watermark::Clock(clock),
            rebuild_ms: rebuild.then_some(3_600_000),
        },
    )
    .await
    .unwrap()
}

/// One worker's consumer fails while outputs its rules handed over wait for their
/// acknowledgement. The stage stops and says why (before, nothing took those acknowledgements
/// any more and it waited for ever), and no worker commits a reading whose outputs were given
/// up: a restart produces every transition a run that never failed produces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_fails_while_its_outputs_wait_for_acknowledgement_stops_the_stage() {
    let readings = rise_and_fall();
    let inner = EmbeddedBus::new(1 << 16);
    let topics = Topics::new("failing");
    for t in topics.all() {
        inner.ensure_topic(&t, 4).await.unwrap();
    }
    let p = inner.producer();
    for r in &readings {
        p.send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await
            .unwrap();
    }
    // The worker that fails runs the rules of a point whose readings the other worker reads,
    // and commits: those readings' outputs wait on the failing worker.
    let d = district();
    let failing = readings
        .iter()
        .map(|r| {
            (
                partition_for(r.sensor.as_bytes(), 4) % 2,
                floodcmd_stream::dataflow::owner(&d.sensor(&r.sensor).unwrap().point.id, 2) as u32,
            )
        })
        .find(|(reads, rules)| reads != rules)
        .map(|(_, rules)| rules)
        .expect("a point whose rules run on the worker that does not read its sensor");
    let handing_over: Arc<Mutex<HashSet<std::thread::ThreadId>>> = Arc::default();
    let watched = handing_over.clone();
    let hooked = common::HookedBus::new(inner.clone()).wrap_consumer(move |_, consumer| {
        Box::new(FailingConsumer {
            inner: consumer,
            handing_over: watched.clone(),
            failing,
        })
    });
    let noted = handing_over.clone();
    let bus = WithProducer::new(hooked, move |inner| {
        Arc::new(SlowProducer {
            inner,
            handing_over: noted.clone(),
        })
    });
    let end_ms = readings.last().unwrap().ts_ms;
    let stage = live_stage(Arc::new(bus), &topics, end_ms, false).await;
    // Joined on a thread of its own: a stage that never ends fails the test, not hangs it.
    let (joined, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || joined.send(stage.join()));
    let ended = tokio::task::spawn_blocking(move || ended.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the stage ends once a worker fails");
    let e = ended.expect_err("a worker failed");
    assert!(e.contains("the broker is gone"), "{e}");

    // Started again on the bus, it reads what was not committed and goes on to the end.
    let again = live_stage(Arc::new(inner.clone()), &topics, end_ms, true).await;
    let ends = inner.end_offsets(&topics.readings()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let committed = inner.committed("stream", &topics.readings()).await.unwrap();
        let done = ends
            .iter()
            .zip(&committed)
            .all(|(end, c)| *end == 0 || *c == Some(*end));
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: ends {ends:?}, committed {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    again.stop();
    tokio::task::spawn_blocking(move || again.join())
        .await
        .unwrap()
        .unwrap();
    let seen: HashSet<(String, String, i64)> = records(&inner, &topics.alerts())
        .await
        .iter()
        .map(|(_, _, payload)| {
            let t: AlertTransition = decode(payload).unwrap();
            (t.point, t.transition.as_str().to_string(), t.event_ms)
        })
        .collect();
    let (reference, reference_statuses) = common::run_with(district(), &readings, 2, 5_000).await;
    // Every status too: a reading committed whose outputs were given up would leave a hole.
    let statuses: HashSet<(String, i64)> = records(&inner, &topics.status())
        .await
        .iter()
        .map(|(_, _, payload)| {
            let s: PointStatus = decode(payload).unwrap();
            (s.point.to_string(), s.as_of_ms)
        })
        .collect();
    let holes: Vec<(String, i64)> = reference_statuses
        .iter()
        .map(|s| (s.point.to_string(), s.as_of_ms))
        .filter(|k| !statuses.contains(k))
        .collect();
    assert!(
        holes.is_empty(),
        "statuses lost to the failure (point, as of): {holes:?}"
    );
    let missing: Vec<&AlertTransition> = reference
        .iter()
        .filter(|t| {
            !seen.contains(&(
                t.point.clone(),
                t.transition.as_str().to_string(),
                t.event_ms,
            ))
        })
        .collect();
    assert!(
        !reference.is_empty() && missing.is_empty(),
        "transitions lost to the failure: {missing:#?}"
    );
}
