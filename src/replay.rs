//! Replaying a past storm (`floodcmd replay`): an archive's readings through the same stream
//! dataflow and the same incident book as a live run, in isolation, with notifications
//! captured in drill mode and never sent, then a storm report. At max speed the readings are
//! fed straight into the dataflow ([`replay`]); paced, they go through an embedded bus that a
//! command wall can watch ([`replay_paced`]).
//!
//! **Deterministic by construction.** The stream stage runs in bounded mode: its watermark
//! follows the newest event time read per partition, never a clock, and every worker run of
//! the same input gives the same transitions (the stream's own tests check 1, 2 and 4
//! workers). The transitions are then folded through [`IncidentBook`] in event-time order
//! with event time as the book's clock: escalation timers fire at the event time they fall
//! due, as if nobody acknowledged anything, so the notifications in the report are the ones
//! the storm would have sent to an unresponsive chain. No SMS sender runs, and the book is in
//! drill mode, so every notification is marked drill as well.

use crate::storm_report::{max_opt, StormReport};
use floodcmd_alerts::incident::{Effect, IncidentBook};
use floodcmd_bus::EmbeddedBus;
use floodcmd_model::bus::{Assignment, Bus, BusError, Outgoing};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{AlertTransition, Incident, Notification, PointStatus, Reject};
use floodcmd_model::time::Millis;
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Reading};
use floodcmd_stream::{
    run_stream, run_stream_fed, DirectFeed, StreamConfig, StreamOutput, Watermark,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Point statuses published.
    pub status_count: u64,
    /// What the report needs of each point's statuses, folded as they came.
    pub status_peaks: BTreeMap<String, StatusPeaks>,
    /// The statuses that carried a quality-control flag, in the order each point's were
    /// published: what was found wrong, and when.
    pub flagged_statuses: Vec<PointStatus>,
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

/// A point's statuses over a replay, folded: a day of a district's statuses is millions, and
/// the report needs only their peaks and flags.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusPeaks {
    /// Highest depth, cm.
    pub depth_cm: Option<f64>,
    /// Highest rolling 1 h rain, mm.
    pub rain_1h_mm: Option<f64>,
    /// Highest rolling 3 h rain, mm.
    pub rain_3h_mm: Option<f64>,
    /// Highest rolling 24 h rain, mm.
    pub rain_24h_mm: Option<f64>,
    /// Quality-control flag → statuses carrying it.
    pub qc: BTreeMap<String, u64>,
}

impl StatusPeaks {
    fn add(&mut self, s: &PointStatus) {
        self.depth_cm = max_opt(self.depth_cm, s.depth_cm);
        self.rain_1h_mm = max_opt(self.rain_1h_mm, s.rain_1h_mm);
        self.rain_3h_mm = max_opt(self.rain_3h_mm, s.rain_3h_mm);
        self.rain_24h_mm = max_opt(self.rain_24h_mm, s.rain_24h_mm);
        for f in &s.qc_flags {
            *self.qc.entry(f.as_str().to_string()).or_default() += 1;
        }
    }
}

/// Statuses folded as they arrive.
#[derive(Default)]
struct StatusFold {
    count: u64,
    peaks: BTreeMap<String, StatusPeaks>,
    flagged: Vec<PointStatus>,
}

impl StatusFold {
    fn add(&mut self, s: PointStatus) {
        self.count += 1;
        match self.peaks.get_mut(s.point.as_str()) {
            Some(p) => p.add(&s),
            None => self.peaks.entry(s.point.to_string()).or_default().add(&s),
        }
        if !s.qc_flags.is_empty() {
            self.flagged.push(s);
        }
    }
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
        let positions: Vec<(u32, u64)> = next.into_iter().collect();
        consumer.commit_all(&positions).await?;
    }
}

/// Replay `readings` (in event-time order, as an archive holds them) of `district`, as fast
/// as it goes. `progress` is told (readings read, total) as the replay goes.
///
/// The readings go straight into the stream dataflow ([`DirectFeed`]) from a thread of their
/// own, while the workers run, and the outputs come straight back: no bus in between. The
/// dataflow, its engine and what each worker sees in which order are those of a run from the
/// bus (the paced replay, which runs on a bus, gives the same report; `tests/replay.rs`).
pub async fn replay(
    district: Arc<District>,
    readings: impl Iterator<Item = Result<Reading, floodcmd_archive::ArchiveError>> + Send + 'static,
    expected: u64,
    opts: &ReplayOptions,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<ReplayOutcome, ReplayError> {
    let started = Instant::now();
    let partitions = opts.partitions.max(1);
    let workers = opts.workers.max(1);
    let mut readings = readings;
    // The stage's origin (never-heard points are silent from here) is the first reading.
    let first = match readings.next() {
        Some(r) => r?,
        None => return Err(ReplayError::Empty),
    };
    let origin_ms = first.ts_ms;
    let readings = std::iter::once(Ok(first)).chain(readings);

    // Only what the stage dead-letters goes to a bus.
    let bus = EmbeddedBus::new(65_536);
    let topics = Topics::new("replay");
    for t in topics.all() {
        bus.ensure_topic(&t, partitions).await?;
    }
    // A few batches in flight per worker: enough to keep them busy, while the archive is
    // never held in memory whole.
    let (senders, inputs): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| std::sync::mpsc::sync_channel::<Vec<(u32, Reading)>>(8))
        .unzip();
    let (outputs, outputs_rx) = std::sync::mpsc::sync_channel::<Vec<StreamOutput>>(1024);
    let loaded = Arc::new(AtomicU64::new(0));
    let feeder = {
        let loaded = loaded.clone();
        std::thread::Builder::new()
            .name("replay-feed".into())
            .spawn(move || feed(readings, senders, partitions, &loaded))
            .map_err(|e| ReplayError::Stream(format!("starting the feeder: {e}")))?
    };
    let collector = std::thread::Builder::new()
        .name("replay-collect".into())
        .spawn(move || {
            let (mut transitions, mut statuses) = (Vec::new(), StatusFold::default());
            for batch in outputs_rx {
                for o in batch {
                    match o {
                        StreamOutput::Transition(t) => transitions.push(t),
                        StreamOutput::Status(s) => statuses.add(s),
                    }
                }
            }
            (transitions, statuses)
        })
        .map_err(|e| ReplayError::Stream(format!("starting the collector: {e}")))?;

    let stream_started = Instant::now();
    // The replay's clock is never read in bounded mode; the book below runs on event time.
    let clock: Arc<dyn floodcmd_model::time::Clock> =
        Arc::new(floodcmd_model::time::ManualClock::new(origin_ms));
    let handle = run_stream_fed(
        Arc::new(bus.clone()),
        district.clone(),
        clock,
        StreamConfig {
            workers,
            lateness_ms: opts.lateness_ms,
            topics: topics.clone(),
            group: "replay-stream".into(),
            watermark: Watermark::Bounded { origin_ms },
            rebuild_ms: None,
        },
        DirectFeed {
            inputs,
            partitions,
            outputs,
        },
    )
    .await
    .map_err(|e| ReplayError::Stream(e.to_string()))?;
    while !handle.is_finished() {
        progress(loaded.load(Ordering::Relaxed), Some(expected));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    join_stream(handle).await?;
    let stream_s = stream_started.elapsed().as_secs_f64();
    // The stage is done, so the feeder is too (its input ended, or the stage stopped taking).
    let (n, from_ms, to_ms) = feeder
        .join()
        .map_err(|_| ReplayError::Stream("the feeder panicked".into()))??;
    progress(n, Some(expected));
    let (mut transitions, statuses) = collector
        .join()
        .map_err(|_| ReplayError::Stream("the collector panicked".into()))?;
    // The stage is done: one pass over what it dead-lettered.
    let rejects = collect::<Reject>(
        bus.clone(),
        topics.rejects(),
        Arc::new(AtomicBool::new(true)),
    )
    .await?;
    sort_transitions(&mut transitions);
    let (notifications, incidents) = fold_incidents(&district, &transitions, to_ms);
    Ok(ReplayOutcome {
        readings: n,
        from_ms,
        to_ms,
        transitions,
        status_count: statuses.count,
        status_peaks: statuses.peaks,
        flagged_statuses: statuses.flagged,
        rejects,
        notifications,
        incidents,
        stream_s,
        total_s: started.elapsed().as_secs_f64(),
    })
}

/// Readings fed per batch: one channel message per this many.
const FEED_BATCH: usize = 4096;

/// Split `readings` into partitions and hand each worker its own, in read order. Returns
/// (readings, first and last event time). Stops at the first unreadable one (the stage then
/// ends with what came before it, and the replay reports the error), or when the stage stops
/// taking readings.
fn feed(
    readings: impl Iterator<Item = Result<Reading, floodcmd_archive::ArchiveError>>,
    senders: Vec<std::sync::mpsc::SyncSender<Vec<(u32, Reading)>>>,
    partitions: u32,
    loaded: &AtomicU64,
) -> Result<(u64, Millis, Millis), ReplayError> {
    let workers = senders.len();
    let mut batches: Vec<Vec<(u32, Reading)>> = (0..workers)
        .map(|_| Vec::with_capacity(FEED_BATCH))
        .collect();
    let (mut n, mut from_ms, mut to_ms) = (0u64, Millis::MAX, Millis::MIN);
    for r in readings {
        let r = r?;
        from_ms = from_ms.min(r.ts_ms);
        to_ms = to_ms.max(r.ts_ms);
        let p = DirectFeed::partition(&r.sensor, partitions);
        let w = DirectFeed::worker(p, workers);
        batches[w].push((p, r));
        n += 1;
        if batches[w].len() == FEED_BATCH {
            let batch = std::mem::replace(&mut batches[w], Vec::with_capacity(FEED_BATCH));
            if senders[w].send(batch).is_err() {
                return Err(ReplayError::Stream(
                    "the stream stage stopped taking readings".into(),
                ));
            }
            loaded.store(n, Ordering::Relaxed);
        }
    }
    for (w, batch) in batches.into_iter().enumerate() {
        if !batch.is_empty() && senders[w].send(batch).is_err() {
            return Err(ReplayError::Stream(
                "the stream stage stopped taking readings".into(),
            ));
        }
    }
    loaded.store(n, Ordering::Relaxed);
    Ok((n, from_ms, to_ms))
}

/// Workers publish in their own interleaving; event time, then the point, then what happened
/// gives one order whatever the worker count or speed.
fn sort_transitions(transitions: &mut [AlertTransition]) {
    transitions.sort_by(|a, b| {
        (a.event_ms, &a.point, a.transition.as_str(), a.to as u8).cmp(&(
            b.event_ms,
            &b.point,
            b.transition.as_str(),
            b.to as u8,
        ))
    });
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
        let mut statuses = StatusFold::default();
        for s in self.status.await.map_err(join)?? {
            statuses.add(s);
        }
        let rejects = self.rejects.await.map_err(join)??;
        sort_transitions(&mut transitions);
        let (notifications, incidents) = fold_incidents(district, &transitions, to_ms);
        Ok(ReplayOutcome {
            readings,
            from_ms,
            to_ms,
            transitions,
            status_count: statuses.count,
            status_peaks: statuses.peaks,
            flagged_statuses: statuses.flagged,
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
                key_hash: None,
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
    // The watermark is at the final epoch. Nothing reads this bus again, so the stop applies
    // everything read, a reading the stage took late after the clock's end too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    handle.stop_applying_all_read();
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

/// Notifications with the (event) time the book made them.
type Made = Vec<(Millis, Notification)>;

fn absorb(
    at: Millis,
    effects: Vec<Effect>,
    notifications: &mut Made,
    incidents: &mut BTreeMap<String, Incident>,
) {
    for e in effects {
        match e {
            Effect::Notify(n) => notifications.push((at, n)),
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
    notifications: &mut Made,
    incidents: &mut BTreeMap<String, Incident>,
) {
    // A deadline that does not move after its tick would loop forever; stop there.
    let mut last = None;
    while let Some(d) = book.next_deadline() {
        if d > until || last == Some(d) {
            break;
        }
        last = Some(d);
        absorb(d, book.tick(d), notifications, incidents);
    }
}

/// Books folded side by side, each on a thread of its own. Fixed, not the machine's core
/// count, so the result never depends on where the replay runs.
const FOLD_BOOKS: usize = 2;

/// The incident book over the transitions in event-time order, its timers running on event
/// time up to `end_ms`: nobody acknowledges, so every rung the policy climbs is told.
///
/// Points never share an incident, a timer or a notification key, so the points are split
/// over [`FOLD_BOOKS`] books by a hash of their id, folded at once (the fold was a fifth of a
/// day-long replay), and their notifications merged in the order they were made (by event
/// time; at the same moment, book by book), as one book would have made them.
fn fold_incidents(
    district: &Arc<District>,
    transitions: &[AlertTransition],
    end_ms: Millis,
) -> (Vec<Notification>, Vec<Incident>) {
    let mut groups: Vec<Vec<&AlertTransition>> = vec![Vec::new(); FOLD_BOOKS];
    for t in transitions {
        groups[floodcmd_model::bus::murmur2(t.point.as_bytes()) as usize % FOLD_BOOKS].push(t);
    }
    let folded: Vec<(Made, BTreeMap<String, Incident>)> = std::thread::scope(|s| {
        let books: Vec<_> = groups
            .iter()
            .map(|group| s.spawn(move || fold_book(district, group, end_ms)))
            .collect();
        books
            .into_iter()
            .map(|b| b.join().expect("a fold thread panicked"))
            .collect()
    });
    let (mut notifications, mut incidents) = (Vec::new(), BTreeMap::new());
    for (n, i) in folded {
        notifications.extend(n);
        incidents.extend(i);
    }
    // Stable: each book's own order stays within a moment.
    notifications.sort_by_key(|(at, _)| *at);
    (
        notifications.into_iter().map(|(_, n)| n).collect(),
        incidents.into_values().collect(),
    )
}

/// One book over its points' transitions.
fn fold_book(
    district: &Arc<District>,
    transitions: &[&AlertTransition],
    end_ms: Millis,
) -> (Made, BTreeMap<String, Incident>) {
    let mut book = IncidentBook::new(district.clone(), true);
    let (mut notifications, mut incidents) = (Vec::new(), BTreeMap::new());
    for t in transitions {
        run_timers_to(&mut book, t.event_ms, &mut notifications, &mut incidents);
        absorb(
            t.event_ms,
            book.on_transition(t, t.event_ms),
            &mut notifications,
            &mut incidents,
        );
    }
    run_timers_to(&mut book, end_ms, &mut notifications, &mut incidents);
    (notifications, incidents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodcmd_model::config::PointKind;
    use floodcmd_model::event::TransitionKind;
    use floodcmd_model::Level;

    fn tr(
        point: &str,
        kind: TransitionKind,
        from: Level,
        to: Level,
        at: Millis,
    ) -> AlertTransition {
        AlertTransition {
            point: point.into(),
            point_kind: PointKind::Underpass,
            transition: kind,
            from,
            to,
            event_ms: at,
            processed_ms: at,
            rule: format!("depth >= {to}"),
            value: 30.0,
            rise_cm_per_min: Some(1.0),
            late: false,
            next_level: None,
            minutes_to_next: None,
            flapping: false,
        }
    }

    /// Split over books, the fold makes what one book over every point makes.
    #[test]
    fn the_books_folded_side_by_side_make_what_one_book_makes() {
        let district = Arc::new(District::from_toml_str(crate::XINCHENG_TOML).unwrap());
        let t0: Millis = 1_783_000_000_000;
        let mut transitions = Vec::new();
        let underpasses: Vec<&str> = district
            .points
            .iter()
            .filter(|p| p.kind == PointKind::Underpass)
            .map(|p| p.id.as_str())
            .collect();
        for (i, p) in underpasses.iter().enumerate() {
            let at = t0 + i as Millis * 97_000;
            transitions.push(tr(
                p,
                TransitionKind::Raised,
                Level::Normal,
                Level::Blue,
                at,
            ));
            if i % 2 == 0 {
                transitions.push(tr(
                    p,
                    TransitionKind::Upgraded,
                    Level::Blue,
                    Level::Red,
                    at + 1_300_000,
                ));
            }
            if i % 3 == 0 {
                transitions.push(tr(
                    p,
                    TransitionKind::Cleared,
                    Level::Blue,
                    Level::Normal,
                    at + 4_000_000,
                ));
            }
        }
        sort_transitions(&mut transitions);
        let end = t0 + 6 * 3_600_000;
        let (notifications, incidents) = fold_incidents(&district, &transitions, end);
        let all: Vec<&AlertTransition> = transitions.iter().collect();
        let (one_made, one_incidents) = fold_book(&district, &all, end);
        let one: Vec<Notification> = one_made.into_iter().map(|(_, n)| n).collect();
        assert!(notifications.len() > underpasses.len(), "escalation ran");
        let keys = |n: &[Notification]| {
            let mut k: Vec<String> = n.iter().map(|n| n.key.clone()).collect();
            k.sort();
            k
        };
        assert_eq!(keys(&notifications), keys(&one), "the same notifications");
        assert_eq!(incidents, one_incidents.into_values().collect::<Vec<_>>());
        let (mut a, mut b) = (notifications.clone(), one.clone());
        a.sort_by(|x, y| x.key.cmp(&y.key));
        b.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(a, b, "each notification the same");
    }
}
