//! HTTP and websocket routes, and the bus followers that keep [`WallState`] current.
//!
//! Websocket protocol (see `docs/WEBSOCKET.md`): a client starts at the next cut of the
//! [`crate::feed`] (every 100 ms) with a `snapshot` built for its session, then gets the
//! shared `delta` of every cut through a bounded queue of deltas; a client that falls more
//! than the queue behind gets a fresh snapshot at the next cut instead of the backlog, and
//! never slows the others (publishing never waits for a client). A client that reconnects
//! with `?resume=<epoch>.<seq>` is sent what it missed from the feed's ring as one delta
//! (`"resumed": true`) when the ring still holds it, else a snapshot.
//!
//! The followers fold each topic into the view as it arrives, `readings` too (each depth
//! point's live depth, ahead of its status); `status` is paced once caught up, so that the
//! stream stage's bursts (a whole epoch's statuses at once) spread over the epoch's cuts,
//! except a status that changes a level, a data state or flapping, folded at once.

use crate::auth::{error, unauthorized, Auth, AuthConfig, Session};
use crate::feed::{DeltaEncoder, Joined, Wall, Want};
use crate::guard::{self, Origins};
use crate::socket::{check_upgrade, upgrade};
use crate::state::{Change, WallState};
use floodcmd_model::bus::{Assignment, Bus, BusError, Producer};
use floodcmd_model::codec::{decode, decode_reading, encode, DecodeError};
use floodcmd_model::event::Reject;
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use floodcmd_ws_frames::handshake::deflate_answer;
use floodcmd_ws_frames::{Incoming, OutFrame, WireError};
use futures::{Sink, SinkExt, Stream, StreamExt};
use prometheus::{Encoder, IntCounter, IntGauge};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use warp::http::StatusCode;
use warp::{Filter, Reply};

/// How much of each topic a starting wall folds to rebuild its view.
const REBUILD_MS: i64 = 25 * 3_600_000;
/// How much of the readings topic it folds: a live depth matters only until the stage's
/// status catches up (its epoch and lateness budget, seconds), and a day of readings would
/// be millions to fold.
const LIVE_REBUILD_MS: i64 = 2 * 60_000;
/// Records a follower takes from the bus at once.
const FOLLOW_BATCH: usize = 1024;
/// The least number of statuses folded between two ticks once caught up (see `serve`).
const STATUS_PER_TICK_MIN: usize = 1000;
/// Only records stamped this recently are paced: a status is stamped with its epoch's event
/// time, about the lateness budget plus a second behind the clock when live.
const PACED_WITHIN_MS: i64 = 30_000;
/// The tick: a delta is cut and sent this often, and a client that connects waits for the
/// next one (at most this long) to join.
const DELTA_EVERY: Duration = Duration::from_millis(100);

/// Settings of the dashboard.
#[derive(Clone, Debug)]
pub struct DashboardConfig {
    /// Listen address (port 0 picks one).
    pub listen: SocketAddr,
    /// Topics.
    pub topics: Topics,
    /// Consumer group (one per dashboard instance: each instance sees everything).
    pub group: String,
    /// Users, anonymous viewing, session length.
    pub auth: AuthConfig,
    /// Directory served at `/cameras/`; `None`: no cameras.
    pub cameras_dir: Option<PathBuf>,
    /// How many deltas (one per 100 ms at most) a client may fall behind before it is
    /// re-synchronised with a snapshot; rounded up to a power of two.
    pub client_queue: usize,
    /// How many recent changes are kept for clients that reconnect.
    pub resume_ring: usize,
    /// Browser origins that may open the websocket; empty: the wall's own host only.
    pub allowed_origins: Vec<String>,
    /// A client that takes nothing from its socket for this long is disconnected. Until
    /// then a stalled client costs only its bounded place in the feed and the kernel's
    /// socket buffers; past it, not even its task and socket are kept. A browser that was
    /// merely asleep reconnects and resumes.
    pub stalled_after: Duration,
}

impl DashboardConfig {
    /// Defaults: no users (anonymous viewers only), no cameras, a queue of 32 deltas (3.2 s;
    /// shared by every client, so its memory does not grow with them), a ring of 32,768
    /// changes (every reading is one, for its live depth: in a storm of 10,000 sensors
    /// reporting each minute, with their statuses and counters, about a minute; at
    /// 10,000 readings a second, about a second).
    pub fn new(listen: SocketAddr, topics: Topics, group: impl Into<String>) -> Self {
        DashboardConfig {
            listen,
            topics,
            group: group.into(),
            auth: AuthConfig::default(),
            cameras_dir: None,
            client_queue: 32,
            resume_ring: 32_768,
            allowed_origins: Vec::new(),
            stalled_after: Duration::from_secs(30),
        }
    }
}

/// Errors starting the dashboard.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

struct WallMetrics {
    clients: IntGauge,
    deltas: IntCounter,
    resyncs: IntCounter,
    resumes: IntCounter,
    evicted: IntCounter,
    undecodable_readings: IntCounter,
    compressed: IntCounter,
}

fn metrics() -> &'static WallMetrics {
    static M: OnceLock<WallMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = WallMetrics {
            clients: IntGauge::new(
                "floodcmd_dashboard_ws_clients",
                "Connected websocket clients",
            )
            .expect("metric"),
            deltas: IntCounter::new(
                "floodcmd_dashboard_ws_deltas_total",
                "Delta messages sent to websocket clients",
            )
            .expect("metric"),
            resyncs: IntCounter::new(
                "floodcmd_dashboard_ws_resyncs_total",
                "Snapshots sent to clients that fell behind",
            )
            .expect("metric"),
            resumes: IntCounter::new(
                "floodcmd_dashboard_ws_resumes_total",
                "Reconnecting clients sent only what they missed",
            )
            .expect("metric"),
            evicted: IntCounter::new(
                "floodcmd_dashboard_ws_evicted_total",
                "Clients disconnected for taking nothing from their socket for stalled_after (30 s)",
            )
            .expect("metric"),
            compressed: IntCounter::new(
                "floodcmd_dashboard_ws_compressed_connections_total",
                "Websocket connections that agreed to permessage-deflate (browsers offer it)",
            )
            .expect("metric"),
            undecodable_readings: IntCounter::new(
                "floodcmd_dashboard_undecodable_readings_total",
                "Records on the readings topic the wall could not decode for its live depth (the stream stage dead-letters them)",
            )
            .expect("metric"),
        };
        let r = prometheus::default_registry();
        let _ = r.register(Box::new(m.clients.clone()));
        let _ = r.register(Box::new(m.deltas.clone()));
        let _ = r.register(Box::new(m.resyncs.clone()));
        let _ = r.register(Box::new(m.resumes.clone()));
        let _ = r.register(Box::new(m.evicted.clone()));
        let _ = r.register(Box::new(m.undecodable_readings.clone()));
        let _ = r.register(Box::new(m.compressed.clone()));
        m
    })
}

/// What the one ticker owns: the encoder, and the count of ticks it sends.
type TickerParts = (DeltaEncoder, watch::Sender<u64>);

/// The wall's view with its feed, shared by the followers, the routes and the clients.
#[derive(Clone)]
pub struct Shared {
    wall: Arc<Mutex<Wall>>,
    /// Taken by the one ticker ([`Shared::start_ticks`]), with the sender of `ticks`: when
    /// the ticker is gone, however it went, nothing waits for its next tick.
    encoder: Arc<Mutex<Option<TickerParts>>>,
    /// Stamps every message with the server's `now_ms`, so browsers can run countdowns on
    /// the server's clock (the demo's runs faster than real time).
    clock: Arc<dyn Clock>,
    /// See [`DashboardConfig::stalled_after`].
    stalled_after: Duration,
    /// Counts the ticks, for followers that pace their folding by them.
    ticks: watch::Receiver<u64>,
}

impl Shared {
    /// A wall for `district` with an empty view, whose clients may fall `client_queue` deltas
    /// behind and can resume from the last `resume_ring` changes.
    pub fn new(
        district: Arc<District>,
        clock: Arc<dyn Clock>,
        client_queue: usize,
        resume_ring: usize,
    ) -> Shared {
        let (wall, encoder) = Wall::new(WallState::new(district), client_queue, resume_ring);
        let (tick_count, ticks) = watch::channel(0);
        Shared {
            wall: Arc::new(Mutex::new(wall)),
            encoder: Arc::new(Mutex::new(Some((encoder, tick_count)))),
            clock,
            stalled_after: Duration::from_secs(30),
            ticks,
        }
    }

    /// Disconnect clients that take nothing from their socket for `d`.
    pub fn with_stalled_after(mut self, d: Duration) -> Shared {
        self.stalled_after = d;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wall> {
        self.wall.lock().expect("wall state lock")
    }

    /// Fold into the view and publish the changes.
    pub fn apply(&self, f: impl FnOnce(&mut WallState) -> Vec<Change>) {
        self.lock().apply(f);
    }

    /// Cut and send a delta every [`DELTA_EVERY`], and start the clients waiting to join,
    /// until `shutdown` (or its sender is gone). Clients join only at a cut, so without this
    /// ticker none starts; when it ends, however it ends, the wall is closed and joining
    /// fails at once rather than waiting for a cut that will not come.
    ///
    /// The ticker is its own thread, not a task: with a thousand clients' tasks on the
    /// runtime, each writing the last frame to its socket, a task woken by its timer waited
    /// in the run queue behind them. In a storm with 1,000 clients, ticks meant to be 100 ms
    /// apart were p99 273 ms and up to 373 ms apart as a task, p99 105 ms and at most 180 ms
    /// as a thread. Nothing in a tick waits on I/O (a lock, a diff, an encode, a broadcast),
    /// so a thread costs nothing the runtime would have saved.
    pub fn start_ticks(&self, shutdown: watch::Receiver<bool>) -> std::thread::JoinHandle<()> {
        struct CloseOnExit(Arc<Mutex<Wall>>);
        impl Drop for CloseOnExit {
            fn drop(&mut self) {
                // Also after a panic under the lock: closing is still right.
                self.0.lock().unwrap_or_else(|e| e.into_inner()).close();
            }
        }
        let me = self.clone();
        let (mut encoder, tick_count) = self
            .encoder
            .lock()
            .expect("encoder lock")
            .take()
            .expect("one ticker per wall");
        let close = CloseOnExit(me.wall.clone());
        std::thread::Builder::new()
            .name("wall-ticker".into())
            .spawn(move || {
                let _close = close;
                let mut next = std::time::Instant::now() + DELTA_EVERY;
                loop {
                    let now = std::time::Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    // After a late tick the next is a whole period on, as
                    // `MissedTickBehavior::Delay` would have it: no burst of catch-up cuts.
                    next = std::time::Instant::now().max(next) + DELTA_EVERY;
                    if shutdown.has_changed().is_err() || *shutdown.borrow() {
                        return;
                    }
                    let now = me.clock.now_ms();
                    let (cut, resumed, _) = me.lock().tick(now);
                    metrics().resumes.inc_by(resumed as u64);
                    encoder.send(cut, now);
                    tick_count.send_modify(|n| *n += 1);
                }
            })
            .expect("spawn the wall's ticker thread")
    }

    /// Wait for the next cut and start there; `None` when the wall is shutting down.
    async fn join(&self, want: Want) -> Option<Joined> {
        let rx = self.lock().join(want);
        rx.await.ok()
    }

    fn read<T>(&self, f: impl FnOnce(&WallState) -> T) -> T {
        f(self.lock().state())
    }

    /// Fold a batch's urgent records now, ahead of the rest, under one lock. An urgent record
    /// takes the not yet folded records of its key (its point) before it along, in order, so
    /// nothing of a point is folded out of order or dropped (each status is also a point of
    /// the 6 h history). Urgency is judged in order against the view as it is at that record,
    /// so a point's level changing and changing back are both urgent. What is folded here is
    /// taken out of `decoded`; records that did not decode stay, for the caller to reject.
    fn fold_urgent_first<T>(
        &self,
        batch: &[floodcmd_model::bus::Record],
        decoded: &mut [Option<Result<T, DecodeError>>],
        urgent: fn(&WallState, &T) -> bool,
        fold: fn(&mut WallState, T) -> Vec<Change>,
    ) {
        let mut wall = self.lock();
        // Per key, its records' places in the batch and how many of them are folded: made
        // at the first urgent record, so a batch with none costs nothing more.
        let mut by_key: Option<HashMap<&[u8], KeyPlaces>> = None;
        for j in 0..decoded.len() {
            if !matches!(&decoded[j], Some(Ok(v)) if urgent(wall.state(), v)) {
                continue;
            }
            let places = by_key.get_or_insert_with(|| {
                let mut m: HashMap<&[u8], KeyPlaces> = HashMap::new();
                for (i, r) in batch.iter().enumerate() {
                    m.entry(&r.key[..]).or_default().0.push(i);
                }
                m
            });
            let (of_key, folded) = places.get_mut(&batch[j].key[..]).expect("every key is in");
            while *folded < of_key.len() && of_key[*folded] <= j {
                let i = of_key[*folded];
                *folded += 1;
                if matches!(decoded[i], Some(Ok(_))) {
                    if let Some(Ok(v)) = decoded[i].take() {
                        wall.apply(|s| fold(s, v));
                    }
                }
            }
        }
    }
}

/// What every bus follower of one dashboard shares.
#[derive(Clone)]
struct Follower {
    bus: Arc<dyn Bus>,
    producer: Arc<dyn Producer>,
    clock: Arc<dyn Clock>,
    topics: Topics,
    group: String,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
}

impl Follower {
    /// Follow `topic` into the wall state with `fold`, on its own task, from `rebuild_ms`
    /// ago; with `pace`, folding at most its limit of records between two ticks once it has
    /// caught up with the topic, except those its test finds urgent.
    fn spawn<T: Send + 'static>(
        &self,
        topic: String,
        rebuild_ms: i64,
        pace: Option<Pace<T>>,
        decode: fn(&[u8]) -> Result<T, DecodeError>,
        fold: fn(&mut WallState, T) -> Vec<Change>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.follow(&topic, rebuild_ms, pace, decode, fold).await {
                tracing::error!(error = %e, topic, "dashboard follower stopped");
            }
        });
    }

    async fn follow<T>(
        mut self,
        topic: &str,
        rebuild_ms: i64,
        pace: Option<Pace<T>>,
        decode: fn(&[u8]) -> Result<T, DecodeError>,
        fold: fn(&mut WallState, T) -> Vec<Change>,
    ) -> Result<(), BusError> {
        let urgent = pace.as_ref().map(|p| p.urgent);
        let batch_size = pace.as_ref().map_or(FOLLOW_BATCH, |p| p.batch);
        let mut pacer = pace.map(|p| Pacer::new(p.per_tick, self.shared.ticks.clone()));
        // The rebuild at start folds at full speed; pacing is for the live flow after it:
        // once a poll comes back short of a full batch, and only for records stamped within
        // the last PACED_WITHIN_MS (a catch-up after a stall is not held back either).
        let mut caught_up = false;
        // The wall's view lives in memory: on every start, fold the topic's last
        // `rebuild_ms` again rather than resume at the group's commit, or a restarted wall
        // would show every point that has not changed since as silent.
        let since = self.clock.now_ms() - rebuild_ms;
        let starts = self.bus.offsets_for_time(topic, since).await?;
        let positions = starts
            .into_iter()
            .enumerate()
            .map(|(p, o)| (p as u32, Some(o)))
            .collect();
        let mut consumer = self
            .bus
            .consumer(&self.group, topic, Assignment::Positions(positions))
            .await?;
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => return Ok(()),
                batch = consumer.poll(batch_size, Duration::from_millis(500)) => {
                    let batch = batch?;
                    let mut last = std::collections::BTreeMap::new();
                    let mut decoded: Vec<_> = batch.iter().map(|r| Some(decode(&r.payload))).collect();
                    if let (Some(u), true) = (urgent, caught_up) {
                        self.shared.fold_urgent_first(&batch, &mut decoded, u, fold);
                    }
                    for (rec, slot) in batch.iter().zip(decoded) {
                        last.insert(rec.partition, rec.offset + 1);
                        // Folded already, ahead of the paced ones.
                        let Some(slot) = slot else { continue };
                        let recent = self.clock.now_ms() - rec.timestamp_ms < PACED_WITHIN_MS;
                        match slot {
                            Ok(v) => {
                                if let (Some(pacer), true) = (pacer.as_mut(), caught_up && recent) {
                                    tokio::select! {
                                        _ = self.shutdown.changed() => return Ok(()),
                                        _ = pacer.admit() => {}
                                    }
                                }
                                self.shared.apply(|s| fold(s, v))
                            }
                            Err(e) if topic == self.topics.rejects() => {
                                // Dead-lettering a dead letter would loop; log it and go on.
                                tracing::error!(error = %e, offset = rec.offset, "undecodable record on the rejects topic");
                            }
                            Err(e) if topic == self.topics.readings() => {
                                // The stream stage dead-letters it; a second reject would
                                // count it twice.
                                metrics().undecodable_readings.inc();
                                tracing::debug!(error = %e, offset = rec.offset, "undecodable reading, no live depth");
                            }
                            Err(e) => {
                                let reject = Reject::undecodable(rec, &e, self.clock.now_ms());
                                self.producer.send(&self.topics.rejects(), &rec.key, encode(&reject), reject.received_ms).await?;
                            }
                        }
                    }
                    let positions: Vec<(u32, u64)> = last.into_iter().collect();
                    consumer.commit_all(&positions).await?;
                    if batch.len() < batch_size {
                        caught_up = true;
                        if let Some(pacer) = pacer.as_mut() {
                            pacer.caught_up();
                        }
                    }
                }
            }
        }
    }
}

/// One key's records in a batch: their places, in order, and how many are folded.
type KeyPlaces = (Vec<usize>, usize);

/// How a follower paces its records: at most `per_tick` between two ticks, except those
/// `urgent` finds urgent against the wall's state, which are folded at once, ahead of the
/// paced records read in the same poll (up to `batch` at once).
struct Pace<T> {
    per_tick: usize,
    urgent: fn(&WallState, &T) -> bool,
    batch: usize,
}

/// Lets at most `limit` records through between two ticks of the wall: it spreads a burst.
/// A backlog is not a burst: after [`PACED_TICKS_AT_MOST`] ticks in a row with the share used
/// up, it lets everything through until [`Pacer::caught_up`], so a follower behind (a clock
/// running faster than real time, a district larger than the limit assumes) is never held
/// further behind.
struct Pacer {
    limit: usize,
    admitted: usize,
    ticks: watch::Receiver<u64>,
    /// Ticks in a row whose share was used up.
    full_ticks: usize,
    behind: bool,
}

/// A stream stage's burst is one epoch's statuses: about eight ticks' shares at the status
/// follower's rate (1.2 times the points a second), so twice that many in a row is a backlog.
const PACED_TICKS_AT_MOST: usize = 20;

impl Pacer {
    fn new(limit: usize, ticks: watch::Receiver<u64>) -> Pacer {
        Pacer {
            limit,
            admitted: 0,
            ticks,
            full_ticks: 0,
            behind: false,
        }
    }

    /// Count one record in, first waiting for the next tick if this tick's are used up.
    /// Without a ticker (its sender gone) nothing waits.
    async fn admit(&mut self) {
        if self.ticks.has_changed().unwrap_or(false) {
            // A tick passed before the share was used up.
            self.ticks.borrow_and_update();
            self.admitted = 0;
            self.full_ticks = 0;
        }
        if self.behind {
            return;
        }
        if self.admitted >= self.limit {
            self.full_ticks += 1;
            if self.full_ticks > PACED_TICKS_AT_MOST {
                tracing::debug!(
                    limit = self.limit,
                    "status follower behind; not paced until caught up"
                );
                self.behind = true;
                return;
            }
            let _ = self.ticks.changed().await;
            self.admitted = 0;
        }
        self.admitted += 1;
    }

    /// The follower has read all there was: pace again.
    fn caught_up(&mut self) {
        self.behind = false;
        self.full_ticks = 0;
    }
}

/// `<epoch>.<seq>` from a reconnecting client (`/ws?resume=`); `None` when it is not that.
pub fn parse_resume(v: &str) -> Option<(String, u64)> {
    let (epoch, seq) = v.rsplit_once('.')?;
    Some((epoch.to_string(), seq.parse().ok()?))
}

/// Serve one websocket client until it goes away: its first message at the next cut, then
/// the shared deltas, and a fresh snapshot whenever it falls too far behind. Generic over the
/// socket's halves so a test can hold the sending side still.
pub async fn client<S, R>(
    mut tx: S,
    mut rx_ws: R,
    shared: Shared,
    session: Session,
    resume: Option<(String, u64)>,
) where
    S: Sink<OutFrame> + Unpin,
    R: Stream<Item = Result<Incoming, WireError>> + Unpin,
{
    metrics().clients.inc();
    let want = match resume {
        Some((epoch, since)) => Want::Resume {
            session: session.clone(),
            epoch,
            since,
        },
        None => Want::Snapshot(session.clone()),
    };
    let limit = shared.stalled_after;
    let Some(joined) = join_unless_gone(&shared, want, &mut tx, &mut rx_ws).await else {
        metrics().clients.dec();
        close(tx, rx_ws).await;
        return;
    };
    let mut start = joined.seq;
    let mut frames = joined.frames;
    // The parts go out of scope once sent: a snapshot is shared by the clients that joined
    // at its cut, and one still held would outlive the cut for as long as they stay.
    if !send_start(&mut tx, joined.first, joined.rest, limit).await {
        metrics().clients.dec();
        close(tx, rx_ws).await;
        return;
    }
    loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                // The delta of the cut it joined at is in its first message already.
                Ok(f) if f.seq <= start => {}
                Ok(f) => {
                    metrics().deltas.inc();
                    if !send_or_evict(&mut tx, f.message.clone(), limit).await { break; }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "websocket client fell behind; re-synchronising");
                    metrics().resyncs.inc();
                    // A fresh snapshot at the next cut: the old backlog is stale.
                    let want = Want::Snapshot(session.clone());
                    let Some(j) = join_unless_gone(&shared, want, &mut tx, &mut rx_ws).await else { break };
                    start = j.seq;
                    frames = j.frames;
                    if !send_start(&mut tx, j.first, j.rest, limit).await { break; }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            incoming = rx_ws.next() => if !answer(&mut tx, incoming, limit).await { break },
        }
    }
    // No longer served from here: the count drops before the close's grace period.
    metrics().clients.dec();
    close(tx, rx_ws).await;
}

/// How long a closing connection may take to finish writing and to be read out.
const CLOSING_GRACE: Duration = Duration::from_secs(1);

/// End a connection cleanly: finish writing what was sent (a close frame among it), send FIN,
/// and read off what the client still sends, for at most [`CLOSING_GRACE`]. A socket dropped
/// with bytes unread is reset, and a reset discards what was not yet sent: the client would
/// see its connection fail (1006) instead of the close frame and its code.
async fn close<S, R>(mut tx: S, mut rx_ws: R)
where
    S: Sink<OutFrame> + Unpin,
    R: Stream<Item = Result<Incoming, WireError>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSING_GRACE, async {
        let _ = tx.close().await;
        while rx_ws.next().await.is_some() {}
    })
    .await;
}

/// Answer what the client's socket gave: a ping with a pong, a close with a close, a broken
/// frame with the close code that says why. False when the client has gone or is let go.
/// Anything else a client sends is read only to notice that.
async fn answer<S: Sink<OutFrame> + Unpin>(
    tx: &mut S,
    incoming: Option<Result<Incoming, WireError>>,
    limit: Duration,
) -> bool {
    match incoming {
        Some(Ok(Incoming::Ping(p))) => send_or_evict(tx, OutFrame::pong(&p), limit).await,
        Some(Ok(Incoming::Data { .. } | Incoming::Pong(_))) => true,
        Some(Ok(Incoming::Close(_))) => {
            let _ = send_or_evict(tx, OutFrame::close(1000), limit).await;
            false
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "websocket client broke the protocol; closing");
            if let Some(code) = e.close_code() {
                let _ = send_or_evict(tx, OutFrame::close(code), limit).await;
            }
            false
        }
        None => false,
    }
}

/// Wait for the next cut to start there; `None` when the wall is closed or the client goes
/// away meanwhile (its socket is watched, so a client that leaves is not kept waiting).
async fn join_unless_gone<S, R>(
    shared: &Shared,
    want: Want,
    tx: &mut S,
    rx_ws: &mut R,
) -> Option<Joined>
where
    S: Sink<OutFrame> + Unpin,
    R: Stream<Item = Result<Incoming, WireError>> + Unpin,
{
    let joined = shared.join(want);
    let limit = shared.stalled_after;
    let gone = async { while answer(tx, rx_ws.next().await, limit).await {} };
    tokio::select! {
        j = joined => j,
        _ = gone => None,
    }
}

/// Send a client's first message and the snapshot's further parts (shared with the clients
/// that joined at the same cut); false when the client is gone or let go.
async fn send_start<S: Sink<OutFrame> + Unpin>(
    tx: &mut S,
    first: OutFrame,
    rest: Arc<[OutFrame]>,
    limit: Duration,
) -> bool {
    if !send_or_evict(tx, first, limit).await {
        return false;
    }
    for part in rest.iter() {
        if !send_or_evict(tx, part.clone(), limit).await {
            return false;
        }
    }
    true
}

/// Send one message; false when the client is gone, or has taken nothing for `limit` (its
/// socket's buffers are full) and is let go.
async fn send_or_evict<S: Sink<OutFrame> + Unpin>(
    tx: &mut S,
    msg: OutFrame,
    limit: Duration,
) -> bool {
    match tokio::time::timeout(limit, tx.send(msg)).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            tracing::info!(after = ?limit, "websocket client took nothing from its socket; disconnecting it");
            metrics().evicted.inc();
            false
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> warp::reply::Response {
    warp::reply::json(v).into_response()
}

/// Start following the bus and serving; returns the bound address.
pub async fn serve(
    bus: Arc<dyn Bus>,
    district: Arc<District>,
    clock: Arc<dyn Clock>,
    config: DashboardConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), DashboardError> {
    let points = district.points.len();
    let shared = Shared::new(
        district,
        clock.clone(),
        config.client_queue,
        config.resume_ring,
    )
    .with_stalled_after(config.stalled_after);
    shared.start_ticks(shutdown.clone());
    let t = config.topics.clone();
    let follower = Follower {
        bus: bus.clone(),
        producer: bus.producer(),
        clock: clock.clone(),
        topics: t.clone(),
        group: config.group.clone(),
        shared: shared.clone(),
        shutdown: shutdown.clone(),
    };
    // Statuses come in bursts: the stream stage publishes a whole epoch's when its watermark
    // passes, a status for most points at once in a storm. Folded as they come, one tick's
    // delta carries them all, and every client takes that one big frame (and parses it)
    // before the live depths of the next ticks. Paced, the burst spreads over most of the
    // epoch's ten ticks, at a capacity of 1.2 times the district's points a second, above
    // any sustained rate (a point has at most one status per 1-second epoch); a district
    // under 8,334 points has the floor of 1,000 a tick, and its whole burst goes in one.
    // Only depth-only updates wait, at most about a second: a status that changes a level,
    // a data state or flapping is folded at once, ahead of those read in the same poll (a
    // poll takes up to the district's points, a whole epoch's burst when it is there, and at
    // most one pack of statuses more on Kafka).
    //
    // Measured (fanout bench, 1,000 clients, 10,000 readings/s; see the README): with the
    // burst over about 2.5 ticks, live depth p99 221-348 ms in six runs; over the epoch,
    // 182-281 ms in twelve (median 225); status→delta p99 0.4 → 0.8 s for depth-only ones.
    let status_per_tick = (points * 12 / 100).max(STATUS_PER_TICK_MIN);
    follower.spawn(
        t.status(),
        REBUILD_MS,
        Some(Pace {
            per_tick: status_per_tick,
            urgent: WallState::status_is_urgent,
            // A whole epoch's burst in one poll when it is there, so that an urgent status
            // goes ahead of all of it.
            batch: points.max(FOLLOW_BATCH),
        }),
        decode,
        WallState::on_status,
    );
    follower.spawn(
        t.incidents(),
        REBUILD_MS,
        None,
        decode,
        WallState::on_incident,
    );
    follower.spawn(t.alerts(), REBUILD_MS, None, decode, WallState::on_alert);
    follower.spawn(
        t.notifications(),
        REBUILD_MS,
        None,
        decode,
        WallState::on_notification,
    );
    follower.spawn(t.rejects(), REBUILD_MS, None, decode, WallState::on_reject);
    follower.spawn(
        t.deliveries(),
        REBUILD_MS,
        None,
        decode,
        WallState::on_delivery,
    );
    follower.spawn(
        t.readings(),
        LIVE_REBUILD_MS,
        None,
        decode_reading,
        WallState::on_reading,
    );

    // Logins last real hours, whatever speed the demo's clock runs at.
    let auth = Auth::new(config.auth.clone(), Arc::new(SystemClock));
    let with_shared = {
        let shared = shared.clone();
        warp::any().map(move || shared.clone())
    };
    let reader = auth.with_session();
    let health = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok", StatusCode::OK).into_response());
    let points = warp::path!("api" / "points")
        .and(warp::get())
        .and(reader.clone())
        .and(with_shared.clone())
        .map(|s: Result<Session, _>, w: Shared| match s {
            Ok(_) => json(&w.read(|s| s.points())),
            Err(e) => unauthorized(&e),
        });
    let point = warp::path!("api" / "points" / String)
        .and(warp::get())
        .and(reader.clone())
        .and(with_shared.clone())
        .map(|id: String, s: Result<Session, _>, w: Shared| match s {
            Ok(session) => match w.read(|s| s.point_detail(&id, &session)) {
                Some(v) => json(&v),
                None => error(StatusCode::NOT_FOUND, format!("point: no point {id}")),
            },
            Err(e) => unauthorized(&e),
        });
    let history_clock = clock.clone();
    let history = warp::path!("api" / "points" / String / "history")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(reader.clone())
        .and(with_shared.clone())
        .map(
            move |id: String, q: HashMap<String, String>, s: Result<Session, _>, w: Shared| {
                if let Err(e) = s {
                    return unauthorized(&e);
                }
                let hours = match q.get("hours").map(|h| h.parse::<u32>()) {
                    None => 6,
                    Some(Ok(h)) => h,
                    Some(Err(_)) => {
                        return error(StatusCode::BAD_REQUEST, "hours: not a number".into())
                    }
                };
                let now = history_clock.now_ms();
                match w.read(|s| s.history.query(&s.district, &id, hours, now)) {
                    Ok(v) => json(&v),
                    Err(e @ crate::history::HistoryError::UnknownPoint(_)) => {
                        error(StatusCode::NOT_FOUND, e.to_string())
                    }
                    Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
                }
            },
        );
    let incidents = warp::path!("api" / "incidents")
        .and(warp::get())
        .and(reader.clone())
        .and(with_shared.clone())
        .map(|s: Result<Session, _>, w: Shared| match s {
            Ok(_) => json(&w.read(|s| s.incidents())),
            Err(e) => unauthorized(&e),
        });
    let people = warp::path!("api" / "people")
        .and(warp::get())
        .and(reader.clone())
        .and(with_shared.clone())
        .map(|s: Result<Session, _>, w: Shared| match s {
            Ok(session) => json(&w.read(|s| s.people(&session))),
            Err(e) => unauthorized(&e),
        });
    let geo = warp::path!("api" / "geo")
        .and(warp::get())
        .and(with_shared.clone())
        .map(|w: Shared| json(&w.read(|s| s.geo())));
    let metrics_route = warp::path!("metrics").and(warp::get()).map(|| {
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode(&prometheus::default_registry().gather(), &mut buf) {
            return warp::reply::with_status(
                format!("metrics: {e}"),
                StatusCode::INTERNAL_SERVER_ERROR,
            )
            .into_response();
        }
        warp::reply::with_header(buf, "content-type", enc.format_type().to_string()).into_response()
    });
    let ws_auth = auth.clone();
    let origins = Origins {
        allowed: config.allowed_origins.clone(),
    };
    let ws = warp::path!("ws")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<hyper::upgrade::OnUpgrade>())
        .and(warp::query::<HashMap<String, String>>())
        .and(with_shared)
        .map(
            move |headers: warp::http::HeaderMap,
                  on_upgrade: Option<hyper::upgrade::OnUpgrade>,
                  q: HashMap<String, String>,
                  w: Shared| {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
                let (origin, host) = (header("origin"), header("host"));
                let key = match check_upgrade(&headers) {
                    Ok(key) => key,
                    Err(why) => {
                        guard::count("ws", "upgrade");
                        return error(StatusCode::BAD_REQUEST, format!("not a websocket request: {why}"));
                    }
                };
                let Some(on_upgrade) = on_upgrade else {
                    return error(StatusCode::BAD_REQUEST, "this connection cannot be upgraded".into());
                };
                // A page on another site must not open the wall in an operator's browser
                // (cross-site websocket hijacking): checked before the token.
                if !origins.allows(origin, host) {
                    guard::count("ws", "origin");
                    tracing::warn!(origin = ?origin, host = ?host, "websocket refused: origin not allowed");
                    return error(
                        StatusCode::FORBIDDEN,
                        "origin not allowed (dashboard.allowed_origins)".into(),
                    );
                }
                // A token in the URL ends up in proxies' access logs and browser tooling: it
                // is refused, not quietly accepted, so no client keeps sending it there.
                if q.contains_key("token") {
                    guard::count("ws", "token");
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "token: send it as the websocket subprotocol `{WS_TOKEN_PREFIX}<token>` \
                             (Sec-WebSocket-Protocol), not in the URL"
                        ),
                    );
                }
                let offered = OfferedProtocols::parse(header("sec-websocket-protocol"));
                let session = match ws_auth.session(offered.token) {
                    Ok(s) => s,
                    Err(e) => {
                        guard::count("ws", "token");
                        return unauthorized(&e);
                    }
                };
                let resume = q.get("resume").and_then(|r| parse_resume(r));
                // Compression is agreed without context takeover, so that one compressed
                // delta serves every client that agreed (see crate::socket).
                let deflate = deflate_answer(header("sec-websocket-extensions"));
                if deflate.is_some() {
                    metrics().compressed.inc();
                }
                // A browser that offered subprotocols drops a connection whose answer names
                // none of them; the token itself is never echoed.
                let protocol = offered.wall.then_some(WS_PROTOCOL);
                upgrade(&key, on_upgrade, protocol, deflate, move |tx, rx| {
                    client(tx, rx, w, session, resume)
                })
            },
        );
    let actions = crate::actions::route(bus.producer(), t.clone(), clock.clone(), auth.clone());
    let routes = crate::assets::routes(config.cameras_dir.clone())
        .or(auth.routes())
        .unify()
        .or(actions)
        .unify()
        .or(health)
        .unify()
        .or(points)
        .unify()
        .or(history)
        .unify()
        .or(point)
        .unify()
        .or(incidents)
        .unify()
        .or(people)
        .unify()
        .or(geo)
        .unify()
        .or(metrics_route)
        .unify()
        .or(ws)
        .unify()
        // Erase the filter's type: the nested one is too deep for the compiler to prove the
        // server future `Send`.
        .boxed();

    let listener = listen(config.listen).map_err(|source| DashboardError::Bind {
        addr: config.listen,
        source,
    })?;
    let bound = listener
        .local_addr()
        .map_err(|source| DashboardError::Bind {
            addr: config.listen,
            source,
        })?;
    let mut stop = shutdown;
    let handle = tokio::spawn(async move {
        warp::serve(routes)
            .incoming(listener)
            .graceful(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .run()
            .await;
    });
    Ok((bound, handle))
}

/// The wall's listening socket, with TCP_NODELAY, which the connections it accepts inherit
/// (Linux copies it to each): a delta is one write, and with Nagle's algorithm its last
/// partial segment would wait for the client's (delayed) acknowledgement of the ones before,
/// tens of milliseconds on a real network. SO_REUSEADDR as `TcpListener::bind` sets it.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The websocket subprotocol the wall speaks, offered by its page and echoed in the answer.
pub const WS_PROTOCOL: &str = "floodcmd";
/// Browsers cannot give a websocket headers; the one they can set is `Sec-WebSocket-Protocol`,
/// so the login's token travels as a second offered subprotocol, `bearer.<token>` (a token is
/// hex, which the header allows), and never in the URL.
pub const WS_TOKEN_PREFIX: &str = "bearer.";

/// What a websocket request offered in `Sec-WebSocket-Protocol`.
struct OfferedProtocols<'a> {
    /// It offered [`WS_PROTOCOL`].
    wall: bool,
    /// The token it offered, if any.
    token: Option<&'a str>,
}

impl<'a> OfferedProtocols<'a> {
    fn parse(header: Option<&'a str>) -> Self {
        let mut offered = OfferedProtocols {
            wall: false,
            token: None,
        };
        for p in header.unwrap_or("").split(',').map(str::trim) {
            if p == WS_PROTOCOL {
                offered.wall = true;
            } else if let Some(t) = p.strip_prefix(WS_TOKEN_PREFIX).filter(|t| !t.is_empty()) {
                offered.token = Some(t);
            }
        }
        offered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodcmd_model::event::PointStatus;

    #[test]
    fn the_token_is_read_from_the_offered_subprotocols() {
        let o = OfferedProtocols::parse(Some("floodcmd, bearer.0a1b"));
        assert!(o.wall);
        assert_eq!(o.token, Some("0a1b"));
        let o = OfferedProtocols::parse(Some("bearer.ff,floodcmd"));
        assert_eq!(
            (o.wall, o.token),
            (true, Some("ff")),
            "any order, any spacing"
        );
        let o = OfferedProtocols::parse(Some("bearer."));
        assert_eq!(
            (o.wall, o.token),
            (false, None),
            "an empty token is no token"
        );
        let o = OfferedProtocols::parse(None);
        assert_eq!((o.wall, o.token), (false, None));
        let o = OfferedProtocols::parse(Some("chat, superchat"));
        assert_eq!(
            (o.wall, o.token),
            (false, None),
            "others' protocols are not ours"
        );
    }

    fn status(d: &District, i: usize, depth: f64) -> PointStatus {
        PointStatus {
            depth_cm: Some(depth),
            ..crate::wall_fixtures::fresh_status(&d.points[i])
        }
    }

    fn parse(m: &OutFrame) -> serde_json::Value {
        serde_json::from_str(m.as_text().expect("text frame")).expect("json")
    }

    /// The pacer lets `limit` records through per tick, then waits for the next tick.
    #[tokio::test]
    async fn the_pacer_lets_its_limit_through_per_tick() {
        use futures::FutureExt;
        let (ticks, rx) = watch::channel(0u64);
        let mut pacer = Pacer::new(3, rx);
        for round in 1..=3u64 {
            for _ in 0..3 {
                assert!(pacer.admit().now_or_never().is_some(), "within the limit");
            }
            let mut fourth = Box::pin(pacer.admit());
            assert!(
                (&mut fourth).now_or_never().is_none(),
                "the tick's share is used"
            );
            ticks.send_replace(round);
            assert!(
                fourth.now_or_never().is_some(),
                "the next tick lets it through"
            );
            // That one counted against the new tick: two more fit, not three.
            for _ in 0..2 {
                assert!(pacer.admit().now_or_never().is_some());
            }
            let mut next = Box::pin(pacer.admit());
            assert!((&mut next).now_or_never().is_none());
            ticks.send_replace(round * 10);
            assert!(next.now_or_never().is_some());
            // A tick that passes while records are let through starts a fresh share.
            ticks.send_replace(round * 100);
        }
        // Without a ticker nothing waits.
        drop(ticks);
        for _ in 0..10 {
            assert!(pacer.admit().now_or_never().is_some());
        }
    }

    /// A backlog is not a burst: after its share was used up PACED_TICKS_AT_MOST ticks in
    /// a row, the pacer lets everything through until the follower has caught up.
    #[tokio::test]
    async fn the_pacer_does_not_hold_a_backlog_back() {
        use futures::FutureExt;
        let (ticks, rx) = watch::channel(0u64);
        let mut pacer = Pacer::new(1, rx);
        assert!(pacer.admit().now_or_never().is_some());
        for n in 1..=PACED_TICKS_AT_MOST as u64 {
            let mut next = Box::pin(pacer.admit());
            assert!((&mut next).now_or_never().is_none(), "tick {n}: paced");
            ticks.send_replace(n);
            assert!(next.now_or_never().is_some());
        }
        for _ in 0..100 {
            assert!(pacer.admit().now_or_never().is_some(), "behind: not paced");
        }
        pacer.caught_up();
        let mut next = Box::pin(pacer.admit());
        assert!(
            next.as_mut().now_or_never().is_none(),
            "caught up: paced again"
        );
    }

    /// The ticker stops on shutdown, and when the shutdown's sender is gone; then joining
    /// the wall fails at once.
    #[tokio::test]
    async fn the_ticker_stops_on_shutdown_and_closes_the_wall() {
        let d =
            Arc::new(District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap());
        for by_drop in [false, true] {
            let shared = Shared::new(
                d.clone(),
                Arc::new(floodcmd_model::time::ManualClock::new(0)),
                2,
                64,
            );
            let (stop, stop_rx) = watch::channel(false);
            let ticker = shared.start_ticks(stop_rx);
            // It runs: a client joins at a cut.
            assert!(shared
                .join(Want::Snapshot(Session::anonymous()))
                .await
                .is_some());
            if by_drop {
                drop(stop);
            } else {
                stop.send_replace(true);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !ticker.is_finished() {
                assert!(std::time::Instant::now() < deadline, "the ticker stops");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ticker.join().unwrap();
            assert!(shared
                .join(Want::Snapshot(Session::anonymous()))
                .await
                .is_none());
        }
    }

    /// A client whose socket takes nothing falls behind and is re-synchronised with a
    /// snapshot; a client beside it gets every change meanwhile.
    #[tokio::test]
    async fn a_slow_client_is_resynchronised_and_never_holds_up_the_others() {
        let d =
            Arc::new(District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap());
        let shared = Shared::new(
            d.clone(),
            Arc::new(floodcmd_model::time::ManualClock::new(0)),
            2,
            64,
        );
        let (_stop, stop_rx) = watch::channel(false);
        shared.start_ticks(stop_rx);
        // The slow client's socket: a channel of one message that nobody reads for now.
        let (slow_tx, mut slow_rx) = futures::channel::mpsc::channel::<OutFrame>(0);
        let slow_tx = slow_tx.sink_map_err(|_| ());
        let slow = tokio::spawn(client(
            slow_tx,
            futures::stream::pending::<Result<Incoming, WireError>>(),
            shared.clone(),
            Session::anonymous(),
            None,
        ));
        let (fast_tx, mut fast_rx) = futures::channel::mpsc::unbounded::<OutFrame>();
        let fast_tx = fast_tx.sink_map_err(|_| ());
        let fast = tokio::spawn(client(
            fast_tx,
            futures::stream::pending::<Result<Incoming, WireError>>(),
            shared.clone(),
            Session::anonymous(),
            None,
        ));
        assert_eq!(parse(&fast_rx.next().await.unwrap())["type"], "snapshot");
        // The slow client's snapshot sits in its one-message channel; the first delta after
        // it blocks the client's task.
        shared.apply(|s| s.on_status(status(&d, 0, 1.0)));
        tokio::time::sleep(DELTA_EVERY * 3).await;
        // Rounds of changes, each its own delta: more deltas than the client's queue of 2,
        // at a pace the fast client keeps up with.
        let mut last_depth = 0.0;
        for round in 0..6 {
            for i in 0..25 {
                last_depth = (round * 25 + i) as f64;
                shared.apply(|s| s.on_status(status(&d, i % 10, last_depth)));
            }
            tokio::time::sleep(DELTA_EVERY).await;
        }
        // The fast client saw the newest depth without waiting for the slow one.
        let mut saw_last = false;
        while !saw_last {
            let next = tokio::time::timeout(Duration::from_secs(10), fast_rx.next());
            let m = parse(
                &next
                    .await
                    .expect("the fast client is never held up")
                    .unwrap(),
            );
            assert_eq!(m["type"], "delta");
            saw_last = m["patches"]
                .as_array()
                .unwrap()
                .iter()
                .chain(m["points"].as_array().unwrap())
                .any(|p| p["depth_cm"] == last_depth);
        }
        // Now the slow client reads: its first snapshot, at most the one delta it was stuck
        // on, then a fresh snapshot instead of the backlog it lost.
        assert_eq!(parse(&slow_rx.next().await.unwrap())["type"], "snapshot");
        let mut next = parse(&slow_rx.next().await.unwrap());
        if next["type"] == "delta" {
            next = parse(&slow_rx.next().await.unwrap());
        }
        assert_eq!(next["type"], "snapshot", "{next}");
        let i = (last_depth as usize % 25) % 10;
        assert_eq!(next["points"][i]["depth_cm"], last_depth);
        slow.abort();
        fast.abort();
    }
}
