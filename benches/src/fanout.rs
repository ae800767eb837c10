//! The command wall under a storm (`floodcmd bench fanout`): N websocket clients on the wall
//! while readings arrive at a fixed open-loop rate through the HTTP gateway, and for every
//! client the time from a reading's ingest to the first wall message that carries its effect.
//!
//! The caller starts the whole pipeline (ingest → stream → alerts → dashboard on the embedded
//! bus, no storm simulator) and hands over where it listens; this crate cannot depend on the
//! `floodcmd` binary crate, which depends on it.
//!
//! **Marker.** Each depth sensor gets one reading every `sensors / rate` seconds on a fixed
//! schedule, and the reading's event time *is* its scheduled ingest time (Unix ms). The stream
//! stage's status carries the point's newest event time (`last_reading_ms`), and the wall's
//! `PointView` passes it on, so a client that sees `last_reading_ms = t` for a point has
//! received the effect of every reading of that point stamped up to `t`: the latency of each
//! such reading not seen before is the receive time minus its stamp. Readings of one point a
//! coalesced delta (or a resync snapshot) skipped over are counted too, at their own stamps.
//! Depths follow a 0.1 cm triangle wave, so every reading changes what a user sees (the stream
//! stage publishes a status only then) and never trips the spike or rate-of-rise checks.
//!
//! The wall also shows each depth reading as it arrives, before the stream stage has judged
//! it (`live_depth_cm` at `live_ms`, off the readings topic), so each reading has two
//! deliveries, measured alike: **ingest→delta (live depth)**, the reading on the wall, and
//! **ingest→delta (status)**, its quality-controlled status and level.
//!
//! **Open loop.** Batches are due every 10 ms whether or not the gateway answered the last
//! ones, and the latency origin is the scheduled time, not the send: queueing anywhere, the
//! load generator included, shows up as latency.
//!
//! **The clients.** Each offers permessage-deflate, as browsers do (`--no-compression`: they
//! do not, and get plain frames), and reads with `floodcmd-ws-frames`' reader. They run on a
//! tokio runtime of their own ([`ClientRuntime`]), not the wall's, on the same cores. Only
//! `--measured-clients` of them inflate and parse every message; the rest take every byte off
//! their sockets and inflate only a message's opening, to tell a snapshot from a delta. On a
//! machine with two cores the measuring clients' own parsing competes with the wall for the
//! CPU, which no browser elsewhere would; the report says how many measured.
//!
//! **The stream's share and the wall's share.** Ingest→delta alone cannot say whether the wall
//! is slow. The stream stage publishes a point's status only once the event-time watermark
//! has passed the end of the reading's 1-second epoch plus the lateness budget, so
//! ingest→status, and every figure downstream of it, has a floor the wall cannot lower: the
//! budget plus what was left of the reading's epoch (up to a second). A regression in the
//! wall of a few hundred milliseconds hides under it. So each reading's latency is also
//! split where the two stages meet, on the `status` topic: ingest→status is the stream's
//! share, and **status→delta**, from the moment `watch_status` sees the status carrying a
//! point's `last_reading_ms = t` to the moment a client receives a wall message carrying the
//! same `t` for that point, is the wall's own fan-out latency (its consume, its 100 ms delta
//! tick, serialising, and the writes to every socket). The split is a join per (point,
//! stamp), not a difference of percentiles, which do not subtract.
//!
//! The watcher logs every status it sees in a `StatusLog`: per point, a ring of the last
//! few (stamp, seen time) pairs, each packed into one atomic word, so that a thousand
//! clients look a status up with a handful of loads from one cache line, and no lock. The
//! watcher and the wall consume the same topic independently, so the wall can be ahead: a
//! delta whose status the watcher has not logged yet is counted as "delta before watcher"
//! and not recorded, since its wall share is unknown and a zero would flatter the wall.
//! Those are the wall's quickest deliveries, so the status→delta percentiles lean slightly
//! high; their count is reported beside them to say by how much that can matter.

use crate::report::{Machine, Report};
use crate::stream_core::peak_rss_mib;
use floodcmd_model::bus::{Assignment, Bus, BusError};
use floodcmd_model::codec::decode;
use floodcmd_model::event::PointStatus;
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, SensorKind};
use floodcmd_ws_frames::deflate::Inflater;
use floodcmd_ws_frames::Incoming;
use hdrhistogram::Histogram;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// What can stop the fan-out benchmark.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// A websocket client could not connect.
    #[error("websocket client {client}: {source}")]
    Connect {
        /// Which client.
        client: usize,
        /// Why.
        #[source]
        source: floodcmd_ws_frames::WireError,
    },
    /// The bus refused the status consumer.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    /// A histogram could not be created or merged.
    #[error("histogram: {0}")]
    Histogram(String),
    /// The district has no depth sensors to feed.
    #[error("the district has no depth sensors")]
    NoSensors,
    /// A client's connection ended before the run did.
    #[error("websocket client {client} dropped: {why}")]
    Dropped {
        /// Which client.
        client: usize,
        /// Why.
        why: String,
    },
    /// The clients' runtime could not be started, or a client's task failed.
    #[error("websocket clients' runtime: {0}")]
    ClientRuntime(String),
    /// Not every client had its first snapshot within the time allowed.
    #[error("only {got} of {clients} websocket clients had their snapshot after 300 s")]
    Snapshots {
        /// Clients with a snapshot.
        got: usize,
        /// Clients connected.
        clients: usize,
    },
}

/// The running pipeline the benchmark drives.
pub struct FanoutTarget {
    /// The command wall.
    pub dashboard: SocketAddr,
    /// The ingest gateway.
    pub ingest: SocketAddr,
    /// A bearer token the gateway accepts for every sensor.
    pub device_token: String,
    /// The pipeline's bus (to watch `status` beside the wall).
    pub bus: Arc<dyn Bus>,
    /// Its topics.
    pub topics: Topics,
    /// The district it runs.
    pub district: Arc<District>,
    /// The stream stage's lateness budget, ms (reported: it is a floor under the latency).
    pub lateness_ms: i64,
}

/// The load.
#[derive(Clone, Copy, Debug)]
pub struct FanoutOptions {
    /// Websocket clients.
    pub clients: usize,
    /// Of those, the clients that parse every message and measure, spread evenly over the
    /// connection order; the rest only read their sockets. Parsing is the browser's work,
    /// on the browser's machine: a thousand clients parsing every delta in the wall's own
    /// process took two thirds of this 2-core machine's CPU, leaving the wall to measure
    /// its instrument. Every client is served the same frames either way, and a reader
    /// that fell behind is re-synchronised and counted like any other.
    pub measured: usize,
    /// Readings per second, over all depth sensors.
    pub rate: f64,
    /// Seconds of feeding.
    pub duration_s: u64,
    /// Whether the clients offer permessage-deflate, as browsers do (Chromium and Firefox
    /// always offer it). Off, the wall sends them plain frames, for a run side by side.
    pub deflate: bool,
}

/// Batches per second of the feeder (one every 10 ms).
pub(crate) const TICKS_PER_S: u64 = 100;
/// Readings stamped in the first seconds are not measured: the clients' first snapshots and
/// the gateway's connection pool are still settling.
pub(crate) const WARMUP_S: u64 = 3;

pub(crate) fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) fn histogram() -> Result<Histogram<u64>, FanoutError> {
    // Microseconds, up to an hour, 2 significant digits (1 %): with 3 a histogram is some
    // 0.5 MB, and a thousand clients keep two each in this process beside the wall whose
    // memory the report shows.
    Histogram::new_with_bounds(1, 3_600_000_000, 2)
        .map_err(|e| FanoutError::Histogram(e.to_string()))
}

/// CPU time of this process so far, seconds.
pub(crate) fn cpu_s() -> f64 {
    crate::machine_cpu::process_cpu_s("self")
}

/// One-minute load average of the machine.
pub(crate) fn load_1m() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// What a client needs of a wall message; serde skips the rest without building it. Strings
/// borrow from the message text (a `Cow` only allocates for an escaped string, which ids and
/// types never are): at a thousand clients in the server's process the instrument must stay
/// cheaper than what it measures.
#[derive(Deserialize)]
struct WallMessage<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    /// Full point views (snapshots and deltas).
    #[serde(default, borrow)]
    points: Vec<PointMark<'a>>,
    /// Changed fields only (deltas); the marker is there when the stamp moved.
    #[serde(default, borrow)]
    patches: Vec<PointMark<'a>>,
    /// Live rows (deltas): `[id, live_depth_cm, live_ms]`.
    #[serde(default, borrow)]
    live: Vec<(&'a str, IgnoredAny, Option<i64>)>,
}

#[derive(Deserialize)]
struct PointMark<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    /// Absent from a patch when unchanged, `null` when removed: no marker either way.
    #[serde(default)]
    last_reading_ms: Option<i64>,
    /// The live depth's reading (the wall's own consume of the readings topic), in whole
    /// views; deltas carry it in their live rows.
    #[serde(default)]
    live_ms: Option<i64>,
}

/// Point ids to their feeding index. Looked up for every row of every message by every
/// measuring client: FNV-1a, not the default SipHash (no untrusted keys here), which took
/// most of a lookup's time.
pub(crate) type PointIndex = HashMap<String, usize, std::hash::BuildHasherDefault<Fnv1a>>;

/// FNV-1a, 64-bit.
#[derive(Clone, Copy)]
pub(crate) struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Per point, the newest stamp a client has received of one marker, and the ingest→delta
/// latency of every reading that stamp brought (those a message skipped over included).
pub(crate) struct Arrivals {
    newest: Vec<i64>,
    pub(crate) latency: Histogram<u64>,
}

impl Arrivals {
    pub(crate) fn new(points: usize) -> Result<Arrivals, FanoutError> {
        Ok(Arrivals {
            newest: vec![i64::MIN; points],
            latency: histogram()?,
        })
    }

    /// `ts` of `point` received at `now_us`; true when it is new.
    fn observe(&mut self, schedule: &Schedule, point: usize, ts: i64, now_us: u64) -> bool {
        let prev = self.newest[point];
        if ts <= prev {
            return false;
        }
        self.newest[point] = ts;
        // This reading and any earlier ones of the point this message skipped over.
        let mut t = ts as f64;
        while t as i64 > prev && t as i64 >= schedule.measure_from_ms {
            let lat = now_us.saturating_sub((t * 1000.0) as u64).max(1);
            let _ = self.latency.record(lat.min(3_600_000_000));
            t -= schedule.period_ms;
        }
        true
    }
}

/// Statuses the watcher has seen per point, for clients to join their deltas against.
///
/// One writer (the watcher) and any number of readers (the clients), lock-free: each slot is
/// one atomic word holding a whole (stamp, seen time) pair, so a reader never sees half of
/// an update. Per point, the ring keeps the [`RING`] newest stamps in one cache line; a
/// client more than that many statuses of a point behind the watcher cannot be joined, and
/// is counted as such rather than guessed.
pub(crate) struct StatusLog {
    /// Stamps are kept as ms after this (the first measured stamp), to fit the packing.
    base_ms: i64,
    rings: Vec<Ring>,
}

const RING: usize = 8;

/// A point's ring, alone on its cache line so that the watcher writing one point does not
/// evict its neighbours from every client's cache.
#[repr(align(64))]
struct Ring([AtomicU64; RING]);

/// A slot: `(stamp - base_ms + 1) << 32 | (seen_us - stamp_us)`. The stamp part is never 0
/// for a logged status, so 0 is an empty slot, and the smallest word is the oldest stamp.
/// 32 bits give 49 days of stamps and 71 minutes of ingest→status lag, both far beyond a
/// run.
fn pack(stamp: u64, lag_us: u64) -> u64 {
    stamp << 32 | lag_us.min(u32::MAX as u64)
}

/// What the watcher knows of a (point, stamp) a client received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sighting {
    /// The status carrying it was seen on the bus at this Unix µs.
    Seen(u64),
    /// The watcher has not reached that status yet.
    NotYet,
    /// Older than the point's ring, or outside the measured stamps.
    NotLogged,
}

impl StatusLog {
    pub(crate) fn new(points: usize, base_ms: i64) -> StatusLog {
        StatusLog {
            base_ms,
            rings: (0..points)
                .map(|_| Ring(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    fn stamp(&self, ts_ms: i64) -> Option<u64> {
        let s = ts_ms.checked_sub(self.base_ms)?.checked_add(1)?;
        (s > 0 && s <= u32::MAX as i64).then_some(s as u64)
    }

    /// The watcher saw the status of `point` carrying `ts_ms` at `seen_us`. Only the watcher
    /// writes: two writers could both pick the same oldest slot.
    pub(crate) fn record(&self, point: usize, ts_ms: i64, seen_us: u64) {
        let (Some(ring), Some(stamp)) = (self.rings.get(point), self.stamp(ts_ms)) else {
            return;
        };
        let mut oldest = &ring.0[0];
        let mut oldest_word = u64::MAX;
        for slot in &ring.0 {
            // Relaxed throughout: the word is the whole message, nothing else is published
            // with it.
            let word = slot.load(Ordering::Relaxed);
            if word >> 32 == stamp {
                // The wall derives its view from the first status with this stamp; a later
                // one (another field changed) is not what a client's delta reflects.
                return;
            }
            if word < oldest_word {
                oldest_word = word;
                oldest = slot;
            }
        }
        let lag_us = seen_us.saturating_sub(ts_ms.max(0) as u64 * 1000);
        oldest.store(pack(stamp, lag_us), Ordering::Relaxed);
    }

    /// When the watcher saw the status of `point` carrying `ts_ms`.
    pub(crate) fn sighting(&self, point: usize, ts_ms: i64) -> Sighting {
        let (Some(ring), Some(stamp)) = (self.rings.get(point), self.stamp(ts_ms)) else {
            return Sighting::NotLogged;
        };
        let mut newest = 0;
        for slot in &ring.0 {
            let word = slot.load(Ordering::Relaxed);
            if word >> 32 == stamp {
                return Sighting::Seen(ts_ms as u64 * 1000 + (word & u32::MAX as u64));
            }
            newest = newest.max(word >> 32);
        }
        // A point's statuses are in stamp order on the topic: nothing at or past this stamp
        // yet means the watcher is behind the wall, not that it missed the status.
        if newest < stamp {
            Sighting::NotYet
        } else {
            Sighting::NotLogged
        }
    }
}

/// A client's status→delta figures.
pub(crate) struct WallShare {
    pub(crate) latency: Histogram<u64>,
    /// Received before the watcher saw the status: no wall share to record.
    pub(crate) before_watcher: u64,
    /// The watcher's ring for the point had moved past the stamp.
    pub(crate) not_logged: u64,
}

impl WallShare {
    pub(crate) fn new() -> Result<WallShare, FanoutError> {
        Ok(WallShare {
            latency: histogram()?,
            before_watcher: 0,
            not_logged: 0,
        })
    }

    /// A client received `ts_ms` for `point` (newly) at `received_us`.
    pub(crate) fn observe(&mut self, log: &StatusLog, point: usize, ts_ms: i64, received_us: u64) {
        match log.sighting(point, ts_ms) {
            Sighting::Seen(seen_us) if seen_us < received_us => {
                let _ = self
                    .latency
                    .record((received_us - seen_us).min(3_600_000_000));
            }
            // Seen at or after the client's receive time: the watcher read it after the
            // client took its timestamp, which is "before watcher" too.
            Sighting::Seen(_) | Sighting::NotYet => self.before_watcher += 1,
            Sighting::NotLogged => self.not_logged += 1,
        }
    }
}

/// The feed's schedule, shared by the feeder and every client.
pub(crate) struct Schedule {
    /// Unix ms of reading 0.
    pub(crate) start_ms: f64,
    /// Readings per second.
    pub(crate) rate: f64,
    /// Depth sensors, in feeding order (sensor id, point index).
    pub(crate) sensors: Vec<String>,
    /// Point id → index into the clients' per-point tables.
    pub(crate) points: PointIndex,
    /// Time between two readings of one sensor, ms.
    pub(crate) period_ms: f64,
    /// Readings stamped before this are not measured.
    pub(crate) measure_from_ms: i64,
    /// Every this many sensors (by feeding index) one follows a slow wave across the blue
    /// threshold instead of the flat triangle, so that alerts are raised and cleared
    /// throughout; 0: none.
    pub(crate) alert_every: usize,
}

impl Schedule {
    /// The depth sensor `s` (feeding index) reports for its `j`-th reading at `ts`.
    pub(crate) fn value(&self, s: usize, j: u64, ts: i64) -> f64 {
        if self.alert_every > 0 && s.is_multiple_of(self.alert_every) {
            // 6 → 12 → 6 cm over 90 s of event time (8 cm/min, inside QC's rate limit and
            // spike check), each sensor at its own phase: crosses blue's raise (10 cm) going
            // up and its reset (8 cm) going down once per cycle.
            let phase = (ts / 100 + s as i64 * 37) % 900;
            let tri = if phase < 450 { phase } else { 900 - phase };
            6.0 + 6.0 * tri as f64 / 450.0
        } else {
            // A triangle wave of 0.1 cm steps around 2 cm: always a visible change, never a
            // spike or an impossible rise.
            let step = (j % 20) as i64;
            let tri = if step < 10 { step } else { 20 - step };
            2.0 + 0.1 * tri as f64
        }
    }
}

/// What one client measured.
pub(crate) struct ClientResult {
    /// Ingest→delta carrying the reading's status (`last_reading_ms`); `None` until the
    /// storm's schedule is known.
    pub(crate) status: Option<Arrivals>,
    /// Ingest→delta carrying the reading as the live depth (`live_ms`).
    pub(crate) live: Option<Arrivals>,
    /// Status→delta, one sample per stamp received, when the client had a [`StatusLog`].
    pub(crate) wall_share: WallShare,
    pub(crate) deltas: u64,
    pub(crate) snapshots: u64,
    pub(crate) bytes: u64,
}

/// What a client does with what it receives.
pub(crate) enum Role {
    /// Parse every message and time each reading's arrival; with the log, also split off
    /// the wall's share of each.
    Measure(Option<Arc<StatusLog>>),
    /// Take every message off the socket as promptly, counting bytes, deltas and snapshots,
    /// without parsing (see [`FanoutOptions::measured`]).
    Read,
}

/// The clients' own runtime, apart from the wall's. Browsers do not share the wall's task
/// scheduler: on one runtime, a measuring client parsing a delta holds a worker thread the
/// wall's own tasks then wait for (tokio does not preempt a task), and the wall's fan-out
/// queued behind its own clients' JSON parsing. On a runtime of their own the clients still
/// share the machine's cores, but the operating system shares them out, as it would between
/// a browser and a server on one machine. Shut down in the background when dropped (a
/// runtime cannot be dropped inside another's task).
pub(crate) struct ClientRuntime(Option<tokio::runtime::Runtime>);

impl ClientRuntime {
    pub(crate) fn start() -> Result<ClientRuntime, FanoutError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bench-client")
            .enable_all()
            .build()
            .map(|rt| ClientRuntime(Some(rt)))
            .map_err(|e| FanoutError::ClientRuntime(e.to_string()))
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for ClientRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The most a client takes in one message: a snapshot's first part with a large district.
const MAX_MESSAGE: usize = 64 << 20;

/// A websocket client on the wall until `stop`, in its `role`, offering compression when
/// `deflate`. It reads from the start but measures only
/// once `schedule` holds the schedule, and counts its first snapshot in `snapshotted`, so
/// the caller can start the storm once every client has its snapshot, however long a
/// thousand snapshots take.
/// It runs on `rt` (see [`ClientRuntime`]).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn client(
    rt: &tokio::runtime::Handle,
    url: String,
    deflate: bool,
    schedule: watch::Receiver<Option<Arc<Schedule>>>,
    role: Role,
    snapshotted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    index: usize,
) -> Result<tokio::task::JoinHandle<Result<ClientResult, FanoutError>>, FanoutError> {
    let connect = async move {
        floodcmd_ws_frames::handshake::connect(&url, None, deflate, MAX_MESSAGE).await
    };
    let conn = rt
        .spawn(connect)
        .await
        .map_err(|e| FanoutError::ClientRuntime(e.to_string()))?
        .map_err(|source| FanoutError::Connect {
            client: index,
            source,
        })?;
    let handle = rt.spawn(async move {
        let (_writer, mut read) = (conn.writer, conn.reader);
        // One inflater and one buffer for all of this client's messages.
        let (mut inflater, mut text) = (Inflater::default(), Vec::new());
        let mut r = ClientResult {
            status: None,
            live: None,
            wall_share: WallShare::new()?,
            deltas: 0,
            snapshots: 0,
            bytes: 0,
        };
        while !stop.load(Ordering::Relaxed) {
            let msg = match tokio::time::timeout(Duration::from_millis(200), read.next()).await {
                Ok(Ok(Some(m))) => m,
                // Let go by the wall (evicted, closed) or broken: a client lost, not one that
                // saw everything it was sent.
                Ok(Ok(None)) if !stop.load(Ordering::Relaxed) => {
                    return Err(FanoutError::Dropped {
                        client: index,
                        why: "the wall closed the connection".into(),
                    })
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    return Err(FanoutError::Dropped {
                        client: index,
                        why: e.to_string(),
                    })
                }
                Err(_) => continue,
            };
            let now_us = unix_us();
            let Incoming::Data {
                text: true,
                compressed,
                payload,
            } = msg
            else {
                continue;
            };
            // What came over the wire, compressed or not.
            r.bytes += payload.len() as u64;
            let Role::Measure(status_log) = &role else {
                // A reader only: what kind of message, from its opening, inflating no
                // further. A snapshot's first message begins with its type, as `Wall::tick`
                // in dashboard-ws's feed.rs writes it (if that changes, readers never count
                // a snapshot and the storm never starts: `FanoutError::Snapshots`); its
                // further parts begin with `snapshot_part`; anything else is a delta.
                let opening = if compressed {
                    inflater.prefix(&payload, 24).unwrap_or_default()
                } else {
                    &payload[..payload.len().min(24)]
                };
                if opening.starts_with(br#"{"type":"snapshot","#) {
                    if r.snapshots == 0 {
                        snapshotted.fetch_add(1, Ordering::Relaxed);
                    }
                    r.snapshots += 1;
                } else if !opening.starts_with(br#"{"type":"snapshot_part""#) {
                    r.deltas += 1;
                }
                continue;
            };
            let json = if compressed {
                if inflater
                    .inflate_into(&payload, MAX_MESSAGE, &mut text)
                    .is_err()
                {
                    continue;
                }
                &text[..]
            } else {
                &payload[..]
            };
            let Ok(m) = serde_json::from_slice::<WallMessage>(json) else {
                continue;
            };
            match &*m.kind {
                "delta" => r.deltas += 1,
                "snapshot" => {
                    if r.snapshots == 0 {
                        snapshotted.fetch_add(1, Ordering::Relaxed);
                    }
                    r.snapshots += 1
                }
                _ => {}
            }
            let Some(schedule) = schedule.borrow().clone() else {
                continue;
            };
            let n = schedule.points.len();
            if r.status.is_none() {
                r.status = Some(Arrivals::new(n)?);
                r.live = Some(Arrivals::new(n)?);
            }
            let (Some(status), Some(live)) = (&mut r.status, &mut r.live) else {
                continue;
            };
            for &(id, _, ts) in &m.live {
                if let (Some(&i), Some(ts)) = (schedule.points.get(id), ts) {
                    live.observe(&schedule, i, ts, now_us);
                }
            }
            for p in m.points.iter().chain(&m.patches) {
                let Some(&i) = schedule.points.get(&*p.id) else {
                    continue;
                };
                if let Some(ts) = p.live_ms {
                    live.observe(&schedule, i, ts, now_us);
                }
                let Some(ts) = p.last_reading_ms else {
                    continue;
                };
                if !status.observe(&schedule, i, ts, now_us) {
                    continue;
                }
                if let (Some(log), true) = (status_log, ts >= schedule.measure_from_ms) {
                    r.wall_share.observe(log, i, ts, now_us);
                }
            }
        }
        Ok(r)
    });
    Ok(handle)
}

/// Feed readings on the open-loop schedule until `duration_s` has passed; returns (sent,
/// accepted, failed posts).
pub(crate) async fn feed(
    target_url: String,
    token: String,
    schedule: Arc<Schedule>,
    duration_s: u64,
) -> Result<(u64, Arc<AtomicU64>, Arc<AtomicU64>), FanoutError> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let total = (schedule.rate * duration_s as f64) as u64;
    let n = schedule.sensors.len() as u64;
    let mut interval = tokio::time::interval(Duration::from_millis(1000 / TICKS_PER_S));
    // Open loop: a late tick is sent at once, never skipped.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next = 0u64;
    let mut inflight = Vec::new();
    while next < total {
        interval.tick().await;
        // Every reading whose scheduled time has passed, and none ahead of it: the gateway
        // refuses readings from the future.
        let elapsed_ms = unix_us() as f64 / 1000.0 - schedule.start_ms;
        let due = (elapsed_ms.max(0.0) * schedule.rate / 1000.0) as u64;
        let due = due.min(total).max(next);
        if due == next {
            continue;
        }
        let mut body = String::with_capacity((due - next) as usize * 80);
        for i in next..due {
            let s = (i % n) as usize;
            let sensor = &schedule.sensors[s];
            let j = i / n;
            let ts = (schedule.start_ms + i as f64 * 1000.0 / schedule.rate) as i64;
            let value = schedule.value(s, j, ts);
            // The device sequence is the stamp: it keeps rising across the steps of a search
            // (a count from 0 again would read as replayed messages and be rejected).
            body.push_str(&format!(
                "{{\"sensor\":\"{sensor}\",\"ts\":{ts},\"value\":{value:.2},\"seq\":{ts}}}\n"
            ));
        }
        let count = due - next;
        next = due;
        let req = http
            .post(&target_url)
            .bearer_auth(&token)
            .header("content-type", "application/x-ndjson")
            .body(body);
        let (a, f) = (accepted.clone(), failed.clone());
        inflight.push(tokio::spawn(async move {
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    a.fetch_add(count, Ordering::Relaxed);
                }
                _ => {
                    f.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        inflight.retain(|h| !h.is_finished());
    }
    for h in inflight {
        let _ = h.await;
    }
    Ok((next, accepted, failed))
}

/// Watch `status` beside the wall: ingest → status on the bus, the part of the latency that
/// is the stream stage's (its lateness budget included); and log when each status was seen,
/// for the clients to measure the wall's part from.
pub(crate) async fn watch_status(
    bus: Arc<dyn Bus>,
    topic: String,
    schedule: Arc<Schedule>,
    status_log: Arc<StatusLog>,
    stop: Arc<AtomicBool>,
) -> Result<Histogram<u64>, FanoutError> {
    let mut h = histogram()?;
    let group = format!("bench-fanout-{}", std::process::id());
    let mut consumer = bus.consumer(&group, &topic, Assignment::All).await?;
    while !stop.load(Ordering::Relaxed) {
        let records = consumer.poll(4096, Duration::from_millis(20)).await?;
        let now_us = unix_us();
        let mut next: HashMap<u32, u64> = HashMap::new();
        for rec in &records {
            next.insert(rec.partition, rec.offset + 1);
            let Ok(s) = decode::<PointStatus>(&rec.payload) else {
                continue;
            };
            if let (Some(&i), Some(ts)) = (schedule.points.get(s.point.as_str()), s.last_reading_ms)
            {
                if ts >= schedule.measure_from_ms {
                    let _ = h.record(now_us.saturating_sub(ts as u64 * 1000).max(1));
                    status_log.record(i, ts, now_us);
                }
            }
        }
        // The embedded bus keeps what a group has not committed: commit, or the stream stage
        // would eventually wait on this watcher.
        for (p, n) in next {
            consumer.commit(p, n).await?;
        }
    }
    Ok(h)
}

pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The `fanout` scenario.
pub async fn run(
    target: FanoutTarget,
    opts: FanoutOptions,
    command: &str,
) -> Result<Report, FanoutError> {
    let sensors: Vec<(String, String)> = target
        .district
        .sensors()
        .filter(|s| s.sensor.kind == SensorKind::Depth)
        .map(|s| (s.sensor.id.clone(), s.point.id.clone()))
        .collect();
    if sensors.is_empty() {
        return Err(FanoutError::NoSensors);
    }
    let points: PointIndex = sensors
        .iter()
        .enumerate()
        .map(|(i, (_, p))| (p.clone(), i))
        .collect();
    let n = sensors.len();

    // Clients first: each gets its snapshot before the storm starts.
    let stop = Arc::new(AtomicBool::new(false));
    let load_before = load_1m();
    let connect_at_ms = unix_us() as f64 / 1000.0;
    // Any base before the first reading's stamp will do.
    let status_log = Arc::new(StatusLog::new(n, connect_at_ms as i64));
    let (publish_schedule, schedule_rx) = watch::channel(None);
    let snapshotted = Arc::new(AtomicUsize::new(0));
    let url = format!("ws://{}/ws", target.dashboard);
    let clients_rt = ClientRuntime::start()?;
    let mut handles = Vec::with_capacity(opts.clients);
    let measured = opts.measured.clamp(1, opts.clients.max(1));
    let measures = |i: usize| i * measured / opts.clients != (i + 1) * measured / opts.clients;
    for chunk_start in (0..opts.clients).step_by(50) {
        let chunk_end = (chunk_start + 50).min(opts.clients);
        let connects = (chunk_start..chunk_end).map(|i| {
            client(
                clients_rt.handle(),
                url.clone(),
                opts.deflate,
                schedule_rx.clone(),
                if measures(i) {
                    Role::Measure(Some(status_log.clone()))
                } else {
                    Role::Read
                },
                snapshotted.clone(),
                stop.clone(),
                i,
            )
        });
        for c in futures::future::join_all(connects).await {
            handles.push(c?);
        }
    }
    // The storm starts a second after the last client has its snapshot, so the measured
    // readings all find every client connected and past its snapshot.
    let deadline = Instant::now() + Duration::from_secs(300);
    while snapshotted.load(Ordering::Relaxed) < opts.clients {
        if Instant::now() > deadline {
            return Err(FanoutError::Snapshots {
                got: snapshotted.load(Ordering::Relaxed),
                clients: opts.clients,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_s = (unix_us() as f64 / 1000.0 - connect_at_ms) / 1000.0;
    let start_ms = unix_us() as f64 / 1000.0 + 1000.0;
    let schedule = Arc::new(Schedule {
        start_ms,
        rate: opts.rate,
        sensors: sensors.iter().map(|(s, _)| s.clone()).collect(),
        points,
        period_ms: n as f64 * 1000.0 / opts.rate,
        measure_from_ms: (start_ms + WARMUP_S as f64 * 1000.0) as i64,
        alert_every: 0,
    });
    publish_schedule.send_replace(Some(schedule.clone()));
    let status_stop = Arc::new(AtomicBool::new(false));
    let status = tokio::spawn(watch_status(
        target.bus.clone(),
        target.topics.status(),
        schedule.clone(),
        status_log.clone(),
        status_stop.clone(),
    ));
    let wait = (schedule.start_ms - unix_us() as f64 / 1000.0).max(0.0);
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;

    let cpu0 = cpu_s();
    let t0 = Instant::now();
    let (sent, accepted, failed) = feed(
        format!("http://{}/v1/readings", target.ingest),
        target.device_token.clone(),
        schedule.clone(),
        opts.duration_s,
    )
    .await?;
    let feed_s = t0.elapsed().as_secs_f64();
    let load_during = load_1m();
    // The last readings reach the wall only after the stream stage's watermark passes them.
    let drain = Duration::from_millis(target.lateness_ms.max(0) as u64 + 5_000);
    tokio::time::sleep(drain).await;
    let window_s = t0.elapsed().as_secs_f64();
    let cpu = cpu_s() - cpu0;
    stop.store(true, Ordering::Relaxed);
    status_stop.store(true, Ordering::Relaxed);

    let mut latency = histogram()?;
    let mut live_latency = histogram()?;
    let mut wall_share = WallShare::new()?;
    let (mut deltas, mut snapshots, mut bytes, mut lost_clients) = (0u64, 0u64, 0u64, 0usize);
    for h in handles {
        match h.await {
            Ok(Ok(r)) => {
                for (sum, arrivals) in [(&mut latency, &r.status), (&mut live_latency, &r.live)] {
                    if let Some(a) = arrivals {
                        sum.add(&a.latency)
                            .map_err(|e| FanoutError::Histogram(e.to_string()))?;
                    }
                }
                wall_share
                    .latency
                    .add(&r.wall_share.latency)
                    .map_err(|e| FanoutError::Histogram(e.to_string()))?;
                wall_share.before_watcher += r.wall_share.before_watcher;
                wall_share.not_logged += r.wall_share.not_logged;
                deltas += r.deltas;
                snapshots += r.snapshots;
                bytes += r.bytes;
            }
            _ => lost_clients += 1,
        }
    }
    let status_h = match status.await {
        Ok(r) => r?,
        Err(e) => return Err(FanoutError::Histogram(format!("status watcher: {e}"))),
    };
    let measured_readings = (sent as f64 - opts.rate * WARMUP_S as f64).max(0.0) as u64;
    let expected = measured_readings * measured as u64;
    let resyncs = snapshots.saturating_sub(opts.clients as u64);

    let mut report = Report {
        scenario: "fanout".into(),
        command: command.into(),
        machine: Machine::here(),
        params: serde_json::json!({
            "clients": opts.clients,
            "measured_clients": measured,
            "compression": if opts.deflate { "permessage-deflate, offered by every client" } else { "none (plain frames)" },
            "rate_per_s": opts.rate,
            "duration_s": opts.duration_s,
            "depth_sensors": n,
            "lateness_ms": target.lateness_ms,
            "warmup_s": WARMUP_S,
            "ingest": "HTTP NDJSON to the gateway, 100 batches/s, open loop; latency origin = \
                       the reading's scheduled send time (its event time), before the POST",
            "status→delta": "per (point, last_reading_ms) a client receives: receive time minus \
                             when the bench's own consumer of `status` saw the status carrying \
                             it; not recorded when that consumer had not seen it yet",
            "load_1m_before": load_before,
            "load_1m_end_of_feed": load_during,
        }),
        figures: Vec::new(),
    };
    report.figure(
        "all clients connected with a snapshot after",
        connect_s,
        "s",
    );
    report.figure("measured clients", measured as f64, "clients");
    report.figure("readings sent", sent as f64, "readings");
    report.figure("readings sent per s", sent as f64 / feed_s, "readings/s");
    report.figure(
        "readings accepted",
        accepted.load(Ordering::Relaxed) as f64,
        "readings",
    );
    report.figure(
        "failed posts",
        failed.load(Ordering::Relaxed) as f64,
        "posts",
    );
    // Each latency as p50, p99, p99.9 and max; each delivery also as readings seen and
    // never seen, over the measured clients.
    let percentiles = |report: &mut Report, name: &str, h: &Histogram<u64>| {
        for (q, label) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
            report.figure(&format!("{name} {label}"), ms(h, q), "ms");
        }
        report.figure(&format!("{name} max"), h.max() as f64 / 1000.0, "ms");
    };
    let seen = |report: &mut Report, how: &str, h: &Histogram<u64>| {
        report.figure(
            &format!("readings seen{how} by the measured clients"),
            h.len() as f64,
            "reading×client",
        );
        report.figure(
            &format!("readings never seen{how} by a measured client"),
            expected.saturating_sub(h.len()) as f64,
            "reading×client",
        );
    };
    percentiles(&mut report, "ingest→delta (live depth)", &live_latency);
    seen(&mut report, " live", &live_latency);
    percentiles(&mut report, "ingest→delta (status)", &latency);
    report.figure("ingest→status p50", ms(&status_h, 0.5), "ms");
    report.figure("ingest→status p99", ms(&status_h, 0.99), "ms");
    report.figure("ingest→status max", status_h.max() as f64 / 1000.0, "ms");
    let wall = &wall_share.latency;
    percentiles(&mut report, "status→delta", wall);
    report.figure("status→delta joined", wall.len() as f64, "stamp×client");
    report.figure(
        "status→delta unmatched: delta before watcher",
        wall_share.before_watcher as f64,
        "stamp×client",
    );
    report.figure(
        "status→delta unmatched: status not in the watcher's ring",
        wall_share.not_logged as f64,
        "stamp×client",
    );
    seen(&mut report, "", &latency);
    report.figure(
        "deltas delivered per s",
        deltas as f64 / window_s,
        "deltas/s",
    );
    // Over the wire: compressed bytes when the clients agreed to compression.
    report.figure("MB received per s", bytes as f64 / window_s / 1e6, "MB/s");
    report.figure(
        "resyncs (slow-client snapshots)",
        resyncs as f64,
        "snapshots",
    );
    report.figure("clients lost", lost_clients as f64, "clients");
    report.figure("CPU time (whole process)", cpu, "s");
    report.figure("CPU per wall second", cpu / window_s, "cores");
    report.figure("peak RSS", peak_rss_mib(), "MiB");
    report.figure("load average 1 min, before", load_before, "");
    report.figure("load average 1 min, end of feed", load_during, "");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE_MS: i64 = 1_764_387_000_000;

    fn us(ms: i64) -> u64 {
        ms as u64 * 1000
    }

    #[test]
    fn a_delta_after_its_status_gives_one_wall_share_sample() {
        let log = StatusLog::new(2, BASE_MS);
        let mut share = WallShare::new().unwrap();
        let ts = BASE_MS + 1000;
        log.record(0, ts, us(ts) + 800_000);
        share.observe(&log, 0, ts, us(ts) + 850_000);
        assert_eq!(share.latency.len(), 1);
        assert!(share.latency.equivalent(share.latency.max(), 50_000));
        assert_eq!((share.before_watcher, share.not_logged), (0, 0));
    }

    #[test]
    fn a_delta_before_the_watcher_is_counted_not_recorded() {
        let log = StatusLog::new(2, BASE_MS);
        let mut share = WallShare::new().unwrap();
        let ts = BASE_MS + 1000;
        // Nothing logged for the point yet.
        share.observe(&log, 1, ts, us(ts) + 850_000);
        // Logged, but only after the client took its receive time.
        log.record(0, ts, us(ts) + 900_000);
        share.observe(&log, 0, ts, us(ts) + 850_000);
        // The watcher has the previous stamp only.
        log.record(1, ts - 1000, us(ts));
        share.observe(&log, 1, ts, us(ts) + 850_000);
        assert_eq!(share.latency.len(), 0);
        assert_eq!(share.before_watcher, 3);
        assert_eq!(share.not_logged, 0);
    }

    #[test]
    fn the_ring_keeps_the_newest_stamps_and_the_first_sighting() {
        let log = StatusLog::new(1, BASE_MS);
        for k in 0..=RING as i64 {
            let ts = BASE_MS + k * 1000;
            log.record(0, ts, us(ts) + 700_000);
        }
        let newest = BASE_MS + RING as i64 * 1000;
        log.record(0, newest, us(newest) + 900_000);
        assert_eq!(log.sighting(0, BASE_MS), Sighting::NotLogged);
        assert_eq!(
            log.sighting(0, BASE_MS + 1000),
            Sighting::Seen(us(BASE_MS + 1000) + 700_000)
        );
        assert_eq!(
            log.sighting(0, newest),
            Sighting::Seen(us(newest) + 700_000)
        );
        assert_eq!(log.sighting(0, newest + 1000), Sighting::NotYet);
    }

    #[test]
    fn clients_read_markers_from_points_patches_and_live_rows_without_copying_ids() {
        let text = r#"{"type":"delta","seq":7,"points":[{"id":"P-00001","name":"x","lat":1.0,
            "last_reading_ms":5}],"patches":[{"id":"P-00012","depth_cm":2.1,
            "last_reading_ms":6},{"id":"P-00013","rain_1h_mm":null},
            {"id":"P-00014","last_reading_ms":null}],"live":[["P-00012",2.2,9],
            ["P-00015",null,null]],"incidents":[]}"#;
        let m: WallMessage = serde_json::from_str(text).unwrap();
        assert_eq!(m.kind, "delta");
        // The depth is skipped, not parsed: only the id and the stamp are measured.
        let live: Vec<(&str, Option<i64>)> = m.live.iter().map(|&(id, _, t)| (id, t)).collect();
        assert_eq!(live, [("P-00012", Some(9)), ("P-00015", None)]);
        let marks: Vec<(&str, Option<i64>)> = m
            .points
            .iter()
            .chain(&m.patches)
            .map(|p| (&*p.id, p.last_reading_ms))
            .collect();
        assert_eq!(
            marks,
            [
                ("P-00001", Some(5)),
                ("P-00012", Some(6)),
                ("P-00013", None),
                ("P-00014", None)
            ]
        );
        assert!(matches!(m.patches[0].id, Cow::Borrowed(_)));
        let old: WallMessage = serde_json::from_str(r#"{"type":"snapshot","points":[]}"#).unwrap();
        assert!(old.patches.is_empty() && old.live.is_empty());
    }
}
