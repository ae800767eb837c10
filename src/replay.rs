//! Replaying a past storm (`floodcmd replay`): an archive's readings through the same stream
//! dataflow and the same incident book as a live run, in isolation on an embedded bus, with
//! notifications captured in drill mode and never sent, then a storm report.
//!
//! **Deterministic by construction.** The stream stage runs in bounded mode: its watermark
//! follows the newest event time read per partition, never a clock, and every worker run of
//! the same input gives the same transitions (the stream's own tests check 1, 2 and 4
//! workers). The transitions are then folded through [`IncidentBook`] in event-time order
//! with event time as the book's clock: escalation timers fire at the event time they fall
//! due, as if nobody acknowledged anything, so the notifications in the report are the ones
//! the storm would have sent to an unresponsive chain. No SMS sender runs, and the book is in
//! drill mode, so every notification is marked drill as well.

use crate::storm_report::StormReport;
use floodcmd_alerts::incident::{Effect, IncidentBook};
use floodcmd_bus::EmbeddedBus;
use floodcmd_model::bus::{Assignment, Bus, BusError, Outgoing};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{AlertTransition, Incident, Notification, PointStatus, Reject};
use floodcmd_model::time::Millis;
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Reading};
use floodcmd_stream::{run_stream, StreamConfig, Watermark};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What can stop a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The embedded bus refused something.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The stream stage failed.
    #[error("stream stage: {0}")]
    Stream(String),
    /// The archive could not be read.
    #[error("{0}")]
    Archive(#[from] floodcmd_archive::ArchiveError),
    /// The archive holds no readings.
    #[error("the archive holds no readings")]
    Empty,
}

/// How to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Timely workers.
    pub workers: usize,
    /// The stream stage's lateness budget, ms.
    pub lateness_ms: Millis,
    /// Partitions per topic of the embedded bus.
    pub partitions: u32,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            workers: 2,
            lateness_ms: 10_000,
            partitions: 4,
        }
    }
}

/// Everything a replay produced.
pub struct ReplayOutcome {
    /// Readings replayed.
    pub readings: u64,
    /// Event time of the first and last reading.
    pub from_ms: Millis,
    /// See `from_ms`.
    pub to_ms: Millis,
    /// Alert transitions, in event-time order.
    pub transitions: Vec<AlertTransition>,
    /// Point statuses, in the order each point's were published.
    pub statuses: Vec<PointStatus>,
    /// Readings the stream stage dead-lettered.
    pub rejects: Vec<Reject>,
    /// Captured (drill) notifications, in the order the book made them.
    pub notifications: Vec<Notification>,
    /// The last version of every incident.
    pub incidents: Vec<Incident>,
    /// Wall time of the stream stage's run (loading the bus excluded), s.
    pub stream_s: f64,
    /// Wall time of the whole replay, s.
    pub total_s: f64,
}

impl ReplayOutcome {
    /// The storm report.
    pub fn report(&self, district: &District, source: &str, workers: usize) -> StormReport {
        StormReport::build(district, source, workers, self)
    }
}

/// Read a topic until `stop` is set and a poll comes back empty, committing as it goes (the
/// embedded bus keeps what a group has not committed).
async fn collect<T: serde::de::DeserializeOwned + Send + 'static>(
    bus: EmbeddedBus,
    topic: String,
    stop: Arc<AtomicBool>,
) -> Result<Vec<T>, BusError> {
    let mut consumer = bus.consumer("replay", &topic, Assignment::All).await?;
    let mut out = Vec::new();
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let batch = consumer.poll(8192, Duration::from_millis(50)).await?;
        if batch.is_empty() && stopping {
            return Ok(out);
        }
        let mut next = BTreeMap::new();
        for rec in &batch {
            next.insert(rec.partition, rec.offset + 1);
            match decode::<T>(&rec.payload) {
                Ok(v) => out.push(v),
                Err(e) => tracing::error!(topic, error = %e, "replay: undecodable output"),
            }
        }
        for (p, n) in next {
            consumer.commit(p, n).await?;
        }
    }
}

/// Replay `readings` (in event-time order, as an archive holds them) of `district`.
/// `progress` is told (readings loaded, total) while the bus is loaded.
pub async fn replay(
    district: Arc<District>,
    readings: impl Iterator<Item = Result<Reading, floodcmd_archive::ArchiveError>>,
    expected: u64,
    opts: &ReplayOptions,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<ReplayOutcome, ReplayError> {
    let started = Instant::now();
    let partitions = opts.partitions.max(1);
    // Bounded mode reads what is on the topic when it starts: the whole archive must fit.
    let capacity = (expected as usize / partitions as usize) * 2 + 65_536;
    let bus = EmbeddedBus::new(capacity);
    let topics = Topics::new("replay");
    for t in topics.all() {
        bus.ensure_topic(&t, partitions).await?;
    }
    let producer = bus.producer();
    let (mut n, mut from_ms, mut to_ms) = (0u64, Millis::MAX, Millis::MIN);
    let mut batch = Vec::with_capacity(10_000);
    for r in readings {
        let r = r?;
        from_ms = from_ms.min(r.ts_ms);
        to_ms = to_ms.max(r.ts_ms);
        batch.push(Outgoing {
            key: bytes::Bytes::copy_from_slice(r.sensor.as_bytes()),
            payload: encode(&r),
            timestamp_ms: r.ts_ms,
        });
        n += 1;
        if batch.len() == batch.capacity() {
            send_all(&*producer, &topics.readings(), std::mem::take(&mut batch)).await?;
            batch.reserve(10_000);
            progress(n, Some(expected));
        }
    }
    send_all(&*producer, &topics.readings(), batch).await?;
    progress(n, Some(expected));
    if n == 0 {
        return Err(ReplayError::Empty);
    }

    let collectors = Collectors::start(&bus, &topics);
    let stream_started = Instant::now();
    // The replay's clock is never read in bounded mode; the book below runs on event time.
    let clock: Arc<dyn floodcmd_model::time::Clock> =
        Arc::new(floodcmd_model::time::ManualClock::new(from_ms));
    let handle = run_stream(
        Arc::new(bus.clone()),
        district.clone(),
        clock,
        StreamConfig {
            workers: opts.workers.max(1),
            lateness_ms: opts.lateness_ms,
            topics: topics.clone(),
            group: "replay-stream".into(),
            watermark: Watermark::Bounded { origin_ms: from_ms },
            rebuild_ms: None,
        },
    )
    .await
    .map_err(|e| ReplayError::Stream(e.to_string()))?;
    join_stream(handle).await?;
    let stream_s = stream_started.elapsed().as_secs_f64();
    collectors
        .finish(&district, n, from_ms, to_ms, stream_s, started)
        .await
}

async fn join_stream(handle: floodcmd_stream::StreamHandle) -> Result<(), ReplayError> {
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .map_err(|e| ReplayError::Stream(e.to_string()))?
        .map_err(ReplayError::Stream)
}

/// The readers of the stream stage's outputs.
struct Collectors {
    stop: Arc<AtomicBool>,
    alerts: tokio::task::JoinHandle<Result<Vec<AlertTransition>, BusError>>,
    status: tokio::task::JoinHandle<Result<Vec<PointStatus>, BusError>>,
    rejects: tokio::task::JoinHandle<Result<Vec<Reject>, BusError>>,
}

impl Collectors {
    fn start(bus: &EmbeddedBus, topics: &Topics) -> Collectors {
        let stop = Arc::new(AtomicBool::new(false));
        Collectors {
            alerts: tokio::spawn(collect(bus.clone(), topics.alerts(), stop.clone())),
            status: tokio::spawn(collect(bus.clone(), topics.status(), stop.clone())),
            rejects: tokio::spawn(collect(bus.clone(), topics.rejects(), stop.clone())),
            stop,
        }
    }

    /// The stream stage is done: read what is left, then fold the transitions.
    async fn finish(
        self,
        district: &Arc<District>,
        readings: u64,
        from_ms: Millis,
        to_ms: Millis,
        stream_s: f64,
        started: Instant,
    ) -> Result<ReplayOutcome, ReplayError> {
        self.stop.store(true, Ordering::SeqCst);
        let join = |e: tokio::task::JoinError| ReplayError::Stream(format!("collector: {e}"));
        let mut transitions = self.alerts.await.map_err(join)??;
        let statuses = self.status.await.map_err(join)??;
        let rejects = self.rejects.await.map_err(join)??;
        // Workers publish in their own interleaving; event time, then the point, then what
        // happened gives one order whatever the worker count or speed.
        transitions.sort_by(|a, b| {
            (a.event_ms, &a.point, a.transition.as_str(), a.to as u8).cmp(&(
                b.event_ms,
                &b.point,
                b.transition.as_str(),
                b.to as u8,
            ))
        });
        let (notifications, incidents) = fold_incidents(district, &transitions, to_ms);
        Ok(ReplayOutcome {
            readings,
            from_ms,
            to_ms,
            transitions,
            statuses,
            rejects,
            notifications,
            incidents,
            stream_s,
            total_s: started.elapsed().as_secs_f64(),
        })
    }
}

/// Where a paced replay runs: a bus and a clock the caller may share with a command wall.
pub struct PacedBus {
    /// The replay's own embedded bus.
    pub bus: EmbeddedBus,
    /// Its topics.
    pub topics: Topics,
    /// The replay clock (event time), set by the replay as it goes.
    pub clock: floodcmd_model::time::ManualClock,
}

/// Replay `readings` (in event-time order) at `speed` × real time: the stream stage runs live
/// on a clock that follows the replay (event) time, and each reading is put on the bus when
/// the replay time reaches it, so a command wall watching `bus` sees the storm unfold. The
/// clock starts a lateness budget ahead of the first reading (the stage's origin is then the
/// first reading, as in [`replay`]) and stops one second past the last, where the bounded run
/// ends; with no reading late, the transitions equal those of [`replay`]. A reading is late
/// when the stage falls `lateness / speed` of wall time behind: keep the speed modest (60× with
/// the default 10 s budget leaves ~170 ms), or use [`replay`] for as fast as possible.
pub async fn replay_paced(
    district: Arc<District>,
    readings: Vec<Reading>,
    speed: f64,
    opts: &ReplayOptions,
    on: PacedBus,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<ReplayOutcome, ReplayError> {
    let PacedBus { bus, topics, clock } = on;
    let started = Instant::now();
    let (Some(first), Some(last)) = (readings.first(), readings.last()) else {
        return Err(ReplayError::Empty);
    };
    let (from_ms, to_ms) = (first.ts_ms, last.ts_ms);
    let lateness_s = (opts.lateness_ms.max(0) as u64).div_ceil(1000) as Millis;
    let clock_start = from_ms + lateness_s * 1000;
    // Where the bounded run's final epoch is: one second past the last reading's.
    let clock_end = ((to_ms / 1000) + 1 + lateness_s) * 1000;
    clock.set(clock_start);
    for t in topics.all() {
        bus.ensure_topic(&t, opts.partitions.max(1)).await?;
    }
    let collectors = Collectors::start(&bus, &topics);
    let handle = run_stream(
        Arc::new(bus.clone()),
        district.clone(),
        Arc::new(clock.clone()),
        StreamConfig {
            workers: opts.workers.max(1),
            lateness_ms: lateness_s * 1000,
            topics: topics.clone(),
            group: "replay-stream".into(),
            watermark: Watermark::Clock(Arc::new(clock.clone())),
            rebuild_ms: None,
        },
    )
    .await
    .map_err(|e| ReplayError::Stream(e.to_string()))?;
    let stream_started = Instant::now();
    let producer = bus.producer();
    let speed = speed.max(1e-3);
    let replay_time =
        |since: Instant| from_ms + (since.elapsed().as_secs_f64() * 1000.0 * speed) as Millis;
    let total = readings.len() as u64;
    let mut next = 0usize;
    loop {
        let now = replay_time(stream_started);
        // Everything due, on the bus before the clock moves past it.
        let mut batch = Vec::new();
        while next < readings.len() && readings[next].ts_ms <= now {
            let r = &readings[next];
            batch.push(Outgoing {
                key: bytes::Bytes::copy_from_slice(r.sensor.as_bytes()),
                payload: encode(r),
                timestamp_ms: r.ts_ms,
            });
            next += 1;
        }
        if !batch.is_empty() {
            send_all(&*producer, &topics.readings(), batch).await?;
            progress(next as u64, Some(total));
        }
        clock.set(now.clamp(clock_start, clock_end));
        if next == readings.len() && now >= clock_end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The watermark is at the final epoch; the stop flushes it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle.stop();
    join_stream(handle).await?;
    let stream_s = stream_started.elapsed().as_secs_f64();
    collectors
        .finish(&district, total, from_ms, to_ms, stream_s, started)
        .await
}

async fn send_all(
    producer: &dyn floodcmd_model::bus::Producer,
    topic: &str,
    batch: Vec<Outgoing>,
) -> Result<(), BusError> {
    for r in producer.send_batch(topic, batch).await {
        r?;
    }
    Ok(())
}

fn absorb(
    effects: Vec<Effect>,
    notifications: &mut Vec<Notification>,
    incidents: &mut BTreeMap<String, Incident>,
) {
    for e in effects {
        match e {
            Effect::Notify(n) => notifications.push(n),
            Effect::Incident(i) => {
                incidents.insert(i.id.clone(), i);
            }
        }
    }
}

/// Fire the book's timers due up to `until`, each at its own deadline.
fn run_timers_to(
    book: &mut IncidentBook,
    until: Millis,
    notifications: &mut Vec<Notification>,
    incidents: &mut BTreeMap<String, Incident>,
) {
    // A deadline that does not move after its tick would loop forever; stop there.
    let mut last = None;
    while let Some(d) = book.next_deadline() {
        if d > until || last == Some(d) {
            break;
        }
        last = Some(d);
        absorb(book.tick(d), notifications, incidents);
    }
}

/// The incident book over the transitions in event-time order, its timers running on event
/// time up to `end_ms`: nobody acknowledges, so every rung the policy climbs is told.
fn fold_incidents(
    district: &Arc<District>,
    transitions: &[AlertTransition],
    end_ms: Millis,
) -> (Vec<Notification>, Vec<Incident>) {
    let mut book = IncidentBook::new(district.clone(), true);
    let (mut notifications, mut incidents) = (Vec::new(), BTreeMap::new());
    for t in transitions {
        run_timers_to(&mut book, t.event_ms, &mut notifications, &mut incidents);
        absorb(
            book.on_transition(t, t.event_ms),
            &mut notifications,
            &mut incidents,
        );
    }
    run_timers_to(&mut book, end_ms, &mut notifications, &mut incidents);
    (notifications, incidents.into_values().collect())
}
