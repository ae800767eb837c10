//! The stream stage as the tests drive it: readings onto an embedded bus, the real dataflow in
//! bounded mode, and what it wrote to `alerts` and `status` read back.

// Each test file uses its own share of these helpers.
#![allow(dead_code)]

use floodcmd_bus::EmbeddedBus;
use floodcmd_model::bus::{Assignment, Bus, BusError, Consumer, Producer};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{AlertTransition, PointStatus, TransitionKind};
use floodcmd_model::time::{Clock, ManualClock, Millis};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Level, Reading};
use floodcmd_stream::{run_stream, StreamConfig, Watermark};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Run the stage, group `stream`, in bounded mode over what `topics`' readings topic holds
/// on `bus`, until it has read it all and finished cleanly.
pub async fn run_bounded(
    bus: Arc<dyn Bus>,
    district: Arc<District>,
    topics: &Topics,
    workers: usize,
    lateness_ms: Millis,
) {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let handle = run_stream(
        bus,
        district,
        clock,
        StreamConfig {
            workers,
            lateness_ms,
            topics: topics.clone(),
            group: "stream".into(),
            watermark: Watermark::Bounded { origin_ms: T0 },
            rebuild_ms: None,
        },
    )
    .await
    .expect("the stage starts");
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .expect("join")
        .expect("the stage finishes cleanly");
}

/// What [`HookedBus`] is told of each consumer asked for, before it is made: group, topic,
/// assignment.
pub type BeforeConsumer = dyn Fn(&str, &str, &Assignment) -> Result<(), BusError> + Send + Sync;
/// What [`HookedBus`] makes of each consumer it hands out, given its group.
pub type WrapConsumer = dyn Fn(&str, Box<dyn Consumer>) -> Box<dyn Consumer> + Send + Sync;

/// The embedded bus as the stage sees it, with a say in its start: told of each lookup of a
/// group's commits and of each consumer asked for (before it is made, to disturb the bus
/// then), and free to wrap the consumer. Everything else goes to the embedded bus as it is.
#[derive(Clone)]
pub struct HookedBus {
    pub inner: EmbeddedBus,
    on_committed: Arc<dyn Fn(&str) + Send + Sync>,
    before_consumer: Arc<BeforeConsumer>,
    wrap_consumer: Arc<WrapConsumer>,
}

impl HookedBus {
    /// `inner`, with no hooks yet.
    pub fn new(inner: EmbeddedBus) -> Self {
        HookedBus {
            inner,
            on_committed: Arc::new(|_| {}),
            before_consumer: Arc::new(|_, _, _| Ok(())),
            wrap_consumer: Arc::new(|_, c| c),
        }
    }

    /// Told the group of each lookup of its commits.
    pub fn on_committed(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_committed = Arc::new(hook);
        self
    }

    /// Told of each consumer asked for, before it is made.
    pub fn before_consumer(
        mut self,
        hook: impl Fn(&str, &str, &Assignment) -> Result<(), BusError> + Send + Sync + 'static,
    ) -> Self {
        self.before_consumer = Arc::new(hook);
        self
    }

    /// Makes each consumer handed out from the embedded bus's own.
    pub fn wrap_consumer(
        mut self,
        wrap: impl Fn(&str, Box<dyn Consumer>) -> Box<dyn Consumer> + Send + Sync + 'static,
    ) -> Self {
        self.wrap_consumer = Arc::new(wrap);
        self
    }
}

#[async_trait::async_trait]
impl Bus for HookedBus {
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
    async fn offsets_for_time(&self, topic: &str, t: i64) -> Result<Vec<u64>, BusError> {
        self.inner.offsets_for_time(topic, t).await
    }
    async fn committed(&self, group: &str, topic: &str) -> Result<Vec<Option<u64>>, BusError> {
        (self.on_committed)(group);
        self.inner.committed(group, topic).await
    }
    fn producer(&self) -> Arc<dyn Producer> {
        self.inner.producer()
    }
    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        assignment: Assignment,
    ) -> Result<Box<dyn Consumer>, BusError> {
        (self.before_consumer)(group, topic, &assignment)?;
        let consumer = self.inner.consumer(group, topic, assignment).await?;
        Ok((self.wrap_consumer)(group, consumer))
    }
}

/// Where event time starts in every test.
pub const T0: Millis = 1_783_000_000_000;
/// The lateness budget the tests run with.
pub const LATENESS_MS: Millis = 20_000;
/// The sample district file.
pub const SAMPLE: &str = include_str!("../../../config/xincheng.toml");

/// The sample district.
pub fn district() -> Arc<District> {
    Arc::new(District::from_toml_str(SAMPLE).expect("the sample district is valid"))
}

/// The sample district with `edits` (find, replace) applied to its text.
pub fn district_with(edits: &[(&str, &str)]) -> Arc<District> {
    let mut src = SAMPLE.to_string();
    for (from, to) in edits {
        assert!(src.contains(from), "the sample has no {from:?}");
        src = src.replace(from, to);
    }
    Arc::new(District::from_toml_str(&src).expect("the edited district is valid"))
}

/// A reading of `sensor` with its raw value as the device sends it.
pub fn reading(d: &District, sensor: &str, ts: Millis, value: f64) -> Reading {
    let s = d.sensor(sensor).expect("a sensor of the district");
    Reading {
        sensor: sensor.into(),
        point: s.point.id.as_str().into(),
        kind: s.sensor.kind,
        ts_ms: ts,
        value,
        seq: None,
        received_ms: ts,
    }
}

/// A depth reading that means `depth_cm` after calibration.
pub fn depth(d: &District, sensor: &str, ts: Millis, depth_cm: f64) -> Reading {
    let offset = d
        .sensor(sensor)
        .expect("a sensor of the district")
        .sensor
        .calibration_offset_cm;
    reading(d, sensor, ts, depth_cm - offset)
}

/// A series of calibrated depths of `sensor`, one every `every_ms` from `from`.
pub fn depth_series(
    d: &District,
    sensor: &str,
    from: Millis,
    every_ms: Millis,
    depths: &[f64],
) -> Vec<Reading> {
    depths
        .iter()
        .enumerate()
        .map(|(i, cm)| depth(d, sensor, from + i as Millis * every_ms, *cm))
        .collect()
}

/// `2 × steps` depths in cm: 0, 3, 6, … up to 3 × `steps`, then down 3 cm a step.
pub fn up_and_down(steps: usize) -> Vec<f64> {
    (0..2 * steps)
        .map(|i| {
            if i < steps {
                i as f64 * 3.0
            } else {
                (6.0 * steps as f64 - i as f64 * 3.0).max(0.0)
            }
        })
        .collect()
}

/// Put `readings` on a fresh bus in this order, run the stage to the end, and read back
/// every alert transition and status it wrote.
pub async fn run_with(
    district: Arc<District>,
    readings: &[Reading],
    workers: usize,
    lateness_ms: Millis,
) -> (Vec<AlertTransition>, Vec<PointStatus>) {
    let bus = EmbeddedBus::new(1 << 16);
    let topics = Topics::new("s");
    for t in topics.all() {
        bus.ensure_topic(&t, 4).await.expect("topic");
    }
    let producer = bus.producer();
    for r in readings {
        producer
            .send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await
            .expect("send");
    }
    run_bounded(
        Arc::new(bus.clone()),
        district,
        &topics,
        workers,
        lateness_ms,
    )
    .await;
    let read_all = |topic: String| {
        let bus = bus.clone();
        async move {
            let mut c = bus
                .consumer("check", &topic, Assignment::All)
                .await
                .expect("consumer");
            let mut out = Vec::new();
            loop {
                let b = c
                    .poll(10_000, Duration::from_millis(50))
                    .await
                    .expect("poll");
                if b.is_empty() {
                    return out;
                }
                out.extend(b);
            }
        }
    };
    let alerts = read_all(topics.alerts())
        .await
        .iter()
        .map(|r| decode::<AlertTransition>(&r.payload).expect("an alert transition"))
        .collect();
    let status = read_all(topics.status())
        .await
        .iter()
        .map(|r| decode::<PointStatus>(&r.payload).expect("a point status"))
        .collect();
    (alerts, status)
}

/// [`run_with`], but with the readings fed straight into the dataflow ([`DirectFeed`], as a
/// replay from an archive does) and the outputs taken straight back, in this order.
pub async fn run_fed(
    district: Arc<District>,
    readings: &[Reading],
    workers: usize,
    lateness_ms: Millis,
) -> (Vec<AlertTransition>, Vec<PointStatus>) {
    use floodcmd_stream::{run_stream_fed, DirectFeed, StreamOutput};
    let bus = EmbeddedBus::new(1 << 16);
    let topics = Topics::new("s");
    for t in topics.all() {
        bus.ensure_topic(&t, 4).await.expect("topic");
    }
    let (senders, inputs): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| std::sync::mpsc::sync_channel::<Vec<(u32, Reading)>>(2))
        .unzip();
    let (outputs, outputs_rx) = std::sync::mpsc::sync_channel::<Vec<StreamOutput>>(16);
    // Small batches, so the workers see their input arrive in many pieces.
    let feed: Vec<Reading> = readings.to_vec();
    let feeder = std::thread::spawn(move || {
        let mut batches: Vec<Vec<(u32, Reading)>> = vec![Vec::new(); senders.len()];
        for r in feed {
            let p = DirectFeed::partition(&r.sensor, 4);
            let w = DirectFeed::worker(p, senders.len());
            batches[w].push((p, r));
            if batches[w].len() == 7 {
                senders[w]
                    .send(std::mem::take(&mut batches[w]))
                    .expect("feed");
            }
        }
        for (w, b) in batches.into_iter().enumerate() {
            senders[w].send(b).expect("feed");
        }
    });
    let collector =
        std::thread::spawn(move || outputs_rx.into_iter().flatten().collect::<Vec<_>>());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let handle = run_stream_fed(
        Arc::new(bus),
        district,
        clock,
        StreamConfig {
            workers,
            lateness_ms,
            topics,
            group: "stream".into(),
            watermark: Watermark::Bounded { origin_ms: T0 },
            rebuild_ms: None,
        },
        DirectFeed {
            inputs,
            partitions: 4,
            outputs,
        },
    )
    .await
    .expect("the stage starts");
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .expect("join")
        .expect("the stage finishes cleanly");
    feeder.join().expect("the feeder");
    let (mut alerts, mut status) = (Vec::new(), Vec::new());
    for o in collector.join().expect("the collector") {
        match o {
            StreamOutput::Transition(t) => alerts.push(t),
            StreamOutput::Status(s) => status.push(s),
        }
    }
    (alerts, status)
}

/// [`run_with`] on the sample district.
pub async fn run(
    readings: &[Reading],
    workers: usize,
    lateness_ms: Millis,
) -> (Vec<AlertTransition>, Vec<PointStatus>) {
    run_with(district(), readings, workers, lateness_ms).await
}

/// A transition as compared across runs: kind, from, to, event time, rule, late.
pub type Seen = (TransitionKind, Level, Level, Millis, String, bool);

/// Per point, the transitions in order, without processing time (which is wall-clock).
pub fn by_point(alerts: &[AlertTransition]) -> BTreeMap<String, Vec<Seen>> {
    let mut m: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for a in alerts {
        m.entry(a.point.clone()).or_default().push((
            a.transition,
            a.from,
            a.to,
            a.event_ms,
            a.rule.clone(),
            a.late,
        ));
    }
    m
}

/// The level transitions of one point (silence and recovery left out).
pub fn level_moves(
    alerts: &[AlertTransition],
    point: &str,
) -> Vec<(TransitionKind, Level, Level, Millis)> {
    alerts
        .iter()
        .filter(|a| {
            a.point == point
                && !matches!(
                    a.transition,
                    TransitionKind::Silent | TransitionKind::Recovered
                )
        })
        .map(|a| (a.transition, a.from, a.to, a.event_ms))
        .collect()
}

/// The statuses of one point, in order.
pub fn statuses<'a>(status: &'a [PointStatus], point: &str) -> Vec<&'a PointStatus> {
    status.iter().filter(|s| s.point == point).collect()
}
