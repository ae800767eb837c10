//! The timely dataflow of the stream stage.
//!
//! ```text
//! bus [readings] ─► per-worker consumer (static partitions) ─► UnorderedInput (epoch = event second)
//!        ─► exchange by point ─► PointRules (Engine, one complete epoch at a time)
//!        ─► produce [status] / [alerts] ─► probe ─► commit consumed offsets
//! ```
//!
//! Each worker holds its input capability at its watermark: `now − lateness` on a live clock,
//! or `newest event time seen − lateness` in bounded mode (replay, tests). A reading older than
//! the watermark is late: it is still applied, at the watermark's epoch, and flagged. A live
//! worker that starts with readings waiting on its partitions (a restart after an outage, a
//! first start on a topic with history) reads that backlog in event time first, as a bounded
//! run would, and follows the clock once it has caught up ([`crate::backlog`]): readings that
//! reached the bus on time are not late because the stage was down, and points are not judged
//! silent while their readings wait to be read. Offsets
//! are committed only once the probe shows every output the reading could cause is on the bus:
//! the rules operator holds its capability at the oldest epoch whose outputs the bus has not
//! yet acknowledged.

use crate::backlog::Backlog;
use crate::delivery::OutputDelivery;
use crate::engine::{Engine, TimedReading};
use crate::epoch_outputs::{EpochOutputs, FeedOutput};
use crate::prefetch::prefetch_first;
use crate::read_positions::{Gap, Place, ReadPositions};
use floodcmd_model::bus::{murmur2, partition_for, Assignment, Bus, BusError, Consumer, Record};
use floodcmd_model::codec::{decode_reading, encode};
use floodcmd_model::event::Reject;
use floodcmd_model::time::{Clock, Millis};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Reading};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::{Probe, UnorderedInput};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{ActivateCapability, Capability};

/// How the stage decides that time has passed.
#[derive(Clone)]
pub enum Watermark {
    /// Live: the watermark follows this clock (the demo passes its simulated clock).
    Clock(Arc<dyn Clock>),
    /// Bounded: read what is on the topic at start-up, then finish (replay, tests). The
    /// watermark follows the newest event time seen per partition; `origin_ms` is the event
    /// time the run starts at (points never heard from count as silent from there).
    Bounded {
        /// Start of the run in event time.
        origin_ms: Millis,
    },
}

/// Settings of the stream stage.
#[derive(Clone)]
pub struct StreamConfig {
    /// Timely workers in this process.
    pub workers: usize,
    /// Lateness budget.
    pub lateness_ms: Millis,
    /// Topics.
    pub topics: Topics,
    /// Consumer group on the readings topic.
    pub group: String,
    /// Live or bounded.
    pub watermark: Watermark,
    /// On start, re-read this much history before the committed offsets to rebuild windows
    /// and levels, without emitting what was already emitted. `None`: start cold.
    pub rebuild_ms: Option<Millis>,
}

/// Errors starting the stage.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// Timely could not start its workers.
    #[error("timely: {0}")]
    Timely(String),
    /// The cluster settings cannot work.
    #[error("stream cluster: {0}")]
    Cluster(String),
    /// A direct feed that cannot run as asked.
    #[error("stream feed: {0}")]
    Feed(String),
}

/// Where this process sits in a timely cluster of stream processes. Every process runs the
/// same number of workers; worker indices, and so the partitions and points each owns, run
/// across the whole cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// This process's index in `addresses`.
    pub process: usize,
    /// `host:port` of every process's timely endpoint, the same list in the same order in
    /// every process.
    pub addresses: Vec<String>,
}

pub(crate) struct StreamMetrics {
    readings: IntCounter,
    late: IntCounter,
    undecodable: IntCounter,
    lost: IntCounter,
    pub(crate) outputs: IntCounterVec,
    watermark: IntGauge,
    catching_up: IntGauge,
}

pub(crate) fn metrics() -> &'static StreamMetrics {
    static M: OnceLock<StreamMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = StreamMetrics {
            readings: IntCounter::new(
                "floodcmd_stream_readings_total",
                "Readings fed into the dataflow",
            )
            .expect("metric"),
            late: IntCounter::new(
                "floodcmd_stream_late_readings_total",
                "Readings that arrived past the lateness budget (applied and flagged)",
            )
            .expect("metric"),
            undecodable: IntCounter::new(
                "floodcmd_stream_undecodable_total",
                "Records on the readings topic that could not be decoded (dead-lettered)",
            )
            .expect("metric"),
            lost: IntCounter::new(
                "floodcmd_stream_readings_lost_total",
                "Records of the readings topic the bus deleted before the stage read them (retention)",
            )
            .expect("metric"),
            outputs: IntCounterVec::new(
                Opts::new(
                    "floodcmd_stream_outputs_total",
                    "Status deltas and alert transitions produced",
                ),
                &["kind"],
            )
            .expect("metric"),
            watermark: IntGauge::new(
                "floodcmd_stream_watermark_seconds",
                "Event-time watermark of worker 0, Unix seconds",
            )
            .expect("metric"),
            catching_up: IntGauge::new(
                "floodcmd_stream_catching_up_partitions",
                "Readings partitions whose backlog from before the start this process is still reading (its watermark follows their event time, not the clock)",
            )
            .expect("metric"),
        };
        let r = prometheus::default_registry();
        let _ = r.register(Box::new(m.readings.clone()));
        let _ = r.register(Box::new(m.late.clone()));
        let _ = r.register(Box::new(m.undecodable.clone()));
        let _ = r.register(Box::new(m.lost.clone()));
        let _ = r.register(Box::new(m.outputs.clone()));
        let _ = r.register(Box::new(m.watermark.clone()));
        let _ = r.register(Box::new(m.catching_up.clone()));
        m
    })
}

/// A running stream stage.
pub struct StreamHandle {
    stop: Arc<AtomicBool>,
    stop_at: Arc<StopAt>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl StreamHandle {
    /// Ask the workers to finish: they apply every epoch before the time the slowest of them
    /// had reached, put its outputs on the bus, and commit what they caused; the readings of
    /// later epochs are left uncommitted, for a restart to read again (see `StopAt`). A
    /// process of a cluster exits at once instead, as a crash would.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Ask the workers to finish after applying everything they have read, as far on as any
    /// of them read: for a run no restart follows (a paced replay), where nothing would read
    /// again what [`stop`](Self::stop) leaves. A point whose readings another worker had yet
    /// to read may then be judged silent.
    pub fn stop_applying_all_read(&self) {
        self.stop_at.apply_all_read();
        self.stop();
    }

    /// Wait for the workers to finish (bounded mode finishes by itself).
    pub fn join(mut self) -> Result<(), String> {
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| "stream worker panicked".to_string())?,
            None => Ok(()),
        }
    }

    /// True once every worker has finished.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which worker owns a point: the same function timely's exchange uses.
pub fn owner(point: &str, peers: usize) -> usize {
    (murmur2(point.as_bytes()) as u64 % peers as u64) as usize
}

/// Start the stage in this process alone. Returns once the workers are started; they run on
/// their own threads (they call into the current tokio runtime for bus I/O).
pub async fn run_stream(
    bus: Arc<dyn Bus>,
    district: Arc<District>,
    clock: Arc<dyn Clock>,
    config: StreamConfig,
) -> Result<StreamHandle, StreamError> {
    start(bus, district, clock, config, None, None).await
}

/// Readings handed straight to a bounded run, and where its outputs go, instead of the bus.
///
/// A replay from an archive uses it: putting every reading on a bus first (and every output,
/// then reading them back) encoded and decoded each one twice and held the whole storm in
/// memory, for nothing a replay needs. The dataflow, the engine and the order in which each
/// worker sees its readings are the same as from the bus: the feeder splits readings into
/// `partitions` by sensor key exactly as a producer does ([`partition_for`]), each partition
/// in read order, and worker `w` takes the partitions `p` with `p % workers == w`, as it would
/// be assigned them on the bus. Late flags depend only on each partition's order, so they match
/// a bus run; for readings in event-time order (an archive refuses any other) or shuffled within
/// the budget, every output matches too. (A reading later than the budget is applied at the
/// worker's watermark when it is read, which on either path depends on how far the other
/// partitions have been read.) One difference: the bus path closes a partition at its end
/// offset, but a fed partition is open until the feed ends, so a partition that gets no
/// readings, or whose sensors all stop, holds the watermark back and the workers keep what
/// follows until the end (a replay of a handful of sensors, where that is little).
pub struct DirectFeed {
    /// One per worker, in worker order: batches of `(partition, reading)`. A worker's input
    /// ends when its sender is dropped.
    pub inputs: Vec<FeedInput>,
    /// How many partitions the feeder splits readings into.
    pub partitions: u32,
    /// Every output, in batches, each worker's in its engine's order.
    pub outputs: FeedOutput,
}

impl DirectFeed {
    /// The partition a reading of `sensor` goes to.
    pub fn partition(sensor: &str, partitions: u32) -> u32 {
        partition_for(sensor.as_bytes(), partitions)
    }

    /// The worker that reads `partition`.
    pub fn worker(partition: u32, workers: usize) -> usize {
        partition as usize % workers.max(1)
    }
}

/// One worker's end of a [`DirectFeed`]: batches of `(partition, reading)`.
type FeedInput = std::sync::mpsc::Receiver<Vec<(u32, Reading)>>;

/// Start a bounded run fed by `feed` instead of the bus's readings topic; outputs go to
/// `feed.outputs`, and `bus` takes only what the stage dead-letters. The watermark must be
/// [`Watermark::Bounded`], and `feed.inputs` must hold one receiver per worker.
pub async fn run_stream_fed(
    bus: Arc<dyn Bus>,
    district: Arc<District>,
    clock: Arc<dyn Clock>,
    config: StreamConfig,
    feed: DirectFeed,
) -> Result<StreamHandle, StreamError> {
    if !matches!(config.watermark, Watermark::Bounded { .. }) {
        return Err(StreamError::Feed(
            "a fed run is bounded: its input ends when the feeder stops".into(),
        ));
    }
    if feed.inputs.len() != config.workers.max(1) {
        return Err(StreamError::Feed(format!(
            "{} inputs for {} workers",
            feed.inputs.len(),
            config.workers.max(1)
        )));
    }
    start(bus, district, clock, config, None, Some(feed)).await
}

/// Start this process's share of a stage that spans the processes of `cluster`. Returns once
/// the workers are started; they connect to the other processes on their own threads, and
/// no epoch passes until every process has joined (timely's progress is cluster-wide).
///
/// The cluster lives and stops as one: a process asked to stop finishes once all are asked,
/// and a process that dies takes the others' workers down with it (timely cannot lose a
/// peer), so a supervisor restarts them together and each rebuilds from the bus as a single
/// process does.
pub async fn run_stream_in_cluster(
    bus: Arc<dyn Bus>,
    district: Arc<District>,
    clock: Arc<dyn Clock>,
    config: StreamConfig,
    cluster: Cluster,
) -> Result<StreamHandle, StreamError> {
    if matches!(config.watermark, Watermark::Bounded { .. }) {
        // Where a bounded run's input ends is agreed through memory the workers of one
        // process share.
        return Err(StreamError::Cluster(
            "bounded runs (replay, tests) run in one process".into(),
        ));
    }
    if cluster.process >= cluster.addresses.len() {
        return Err(StreamError::Cluster(format!(
            "process {} is not one of the {} addresses",
            cluster.process,
            cluster.addresses.len()
        )));
    }
    start(bus, district, clock, config, Some(cluster), None).await
}

async fn start(
    bus: Arc<dyn Bus>,
    district: Arc<District>,
    clock: Arc<dyn Clock>,
    config: StreamConfig,
    cluster: Option<Cluster>,
    feed: Option<DirectFeed>,
) -> Result<StreamHandle, StreamError> {
    let rt = tokio::runtime::Handle::current();
    let readings_topic = config.topics.readings();
    let (partitions, end_offsets) = match (&feed, &config.watermark) {
        // Read until the feeder is done, whatever the count.
        (Some(f), _) => (
            f.partitions.max(1),
            Some(vec![u64::MAX; f.partitions.max(1) as usize]),
        ),
        (None, Watermark::Bounded { .. }) => (
            bus.partitions(&readings_topic).await?,
            Some(bus.end_offsets(&readings_topic).await?),
        ),
        (None, Watermark::Clock(_)) => (bus.partitions(&readings_topic).await?, None),
    };
    // Live, where each readings partition ends as the stage starts: what lies before is a
    // backlog to read in event time (see the module's docs). If the lookup fails, the stage
    // follows the clock from the start, and a backlog reads as late.
    let backlog_ends = match (&feed, &config.watermark) {
        (None, Watermark::Clock(_)) => match bus.end_offsets(&readings_topic).await {
            Ok(ends) => Some(ends),
            Err(e) => {
                tracing::warn!(error = %e, "could not look up where the readings partitions end; following the clock from the start, so a backlog reads as late");
                None
            }
        },
        _ => None,
    };
    // Each worker takes its own receiver out once.
    type Inputs = Vec<Option<FeedInput>>;
    let (feed_inputs, feed_outputs): (Arc<std::sync::Mutex<Inputs>>, _) = match feed {
        Some(f) => (
            Arc::new(std::sync::Mutex::new(
                f.inputs.into_iter().map(Some).collect(),
            )),
            Some(f.outputs),
        ),
        None => (Arc::default(), None),
    };
    let origin_ms = match &config.watermark {
        Watermark::Bounded { origin_ms } => *origin_ms,
        Watermark::Clock(c) => c.now_ms() - config.lateness_ms,
    };
    let bounded_end = Arc::new(BoundedEnd::default());
    let stop = Arc::new(AtomicBool::new(false));
    let stop_w = stop.clone();
    let stop_at = Arc::new(StopAt::new());
    let stop_at_w = stop_at.clone();
    let failure: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let failure_w = failure.clone();
    let workers = config.workers.max(1);
    let in_cluster = cluster.is_some();
    let communication = match cluster {
        None => timely::CommunicationConfig::Process(workers),
        Some(c) => timely::CommunicationConfig::Cluster {
            threads: workers,
            process: c.process,
            addresses: c.addresses,
            report: false,
            zerocopy: false,
        },
    };
    let timely_config = timely::Config {
        communication,
        worker: timely::WorkerConfig::default(),
    };
    let thread = std::thread::Builder::new()
        .name("stream".into())
        .spawn(move || {
            let guards = timely::execute(timely_config, move |worker| {
                let fed = feed_outputs.clone().map(|outputs| {
                    let input = feed_inputs.lock().expect("feed lock")[worker.index()]
                        .take()
                        .expect("one receiver per worker, taken once");
                    (input, outputs)
                });
                let ctx = WorkerContext {
                    fed,
                    in_cluster,
                    bus: bus.clone(),
                    district: district.clone(),
                    clock: clock.clone(),
                    config: config.clone(),
                    rt: rt.clone(),
                    stop: stop_w.clone(),
                    stop_at: stop_at_w.clone(),
                    partitions,
                    end_offsets: end_offsets.clone(),
                    backlog_ends: backlog_ends.clone(),
                    origin_ms,
                    bounded_end: bounded_end.clone(),
                    failure: failure_w.clone(),
                };
                let (stop, end, failure) = (
                    ctx.stop.clone(),
                    ctx.bounded_end.clone(),
                    ctx.failure.clone(),
                );
                if let Err(e) = ctx.run(worker) {
                    if in_cluster {
                        // Its partitions would go unread while the other processes' clocks
                        // move the frontier on, and their points would turn silent. Ending
                        // this process ends the cluster (timely's peers cannot lose one), to
                        // be restarted as a whole.
                        tracing::error!(error = %e, "stream worker failed; ending this process, and with it the cluster");
                        std::process::exit(1);
                    }
                    // One worker down means its partitions go unread: stop them all and say so,
                    // rather than run on half blind or wait forever for it.
                    tracing::error!(error = %e, "stream worker failed; stopping the stage");
                    failure
                        .lock()
                        .expect("failure lock")
                        .get_or_insert(e.to_string());
                    stop.store(true, Ordering::SeqCst);
                    end.finished.fetch_add(1, Ordering::SeqCst);
                }
            })?;
            for r in guards.join() {
                r?;
            }
            match failure.lock().expect("failure lock").take() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
        .map_err(|e| StreamError::Timely(e.to_string()))?;
    Ok(StreamHandle {
        stop,
        stop_at,
        thread: Some(thread),
    })
}

struct WorkerContext {
    /// Fed directly (see [`DirectFeed`]): this worker's input and where outputs go.
    fed: Option<(FeedInput, FeedOutput)>,
    /// One of several processes of a timely cluster.
    in_cluster: bool,
    bus: Arc<dyn Bus>,
    district: Arc<District>,
    clock: Arc<dyn Clock>,
    config: StreamConfig,
    rt: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    /// Where the workers finish once asked to stop.
    stop_at: Arc<StopAt>,
    partitions: u32,
    end_offsets: Option<Vec<u64>>,
    /// Live: where each readings partition ended as the stage started (see the module's docs).
    backlog_ends: Option<Vec<u64>>,
    origin_ms: Millis,
    bounded_end: Arc<BoundedEnd>,
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

/// How the workers of a bounded run agree on where event time ends, so every run of the same
/// input judges silence up to the same moment, whatever the scheduling.
#[derive(Default)]
struct BoundedEnd {
    finished: std::sync::atomic::AtomicUsize,
    max_event_s: std::sync::atomic::AtomicU64,
}

/// Where a stage asked to stop finishes: the least input time any of its workers held when it
/// let go (`u64::MAX` until one has). Each worker notes its time here before it lets go of its
/// input, so the frontier cannot pass a noted time before it is noted.
///
/// Epochs from this time on are neither applied nor committed: their readings are read again
/// when the stage restarts. A worker ahead of the others (reading a backlog, one worker's
/// partitions ahead of another's) would otherwise carry the points past their moment of
/// silence while their own readings waited unread in another worker's partition: a Silent at
/// the stop, and Recovered after the restart. Silence is judged up to this time, as a frontier
/// there judges it, so what the restart takes as judged before (up to its newest committed
/// reading, which lies before it) was.
#[derive(Debug)]
pub(crate) struct StopAt {
    time: std::sync::atomic::AtomicU64,
    /// Asked to apply everything read (`StreamHandle::stop_applying_all_read`): no time noted.
    all_read: AtomicBool,
}

impl StopAt {
    pub(crate) fn new() -> Self {
        StopAt {
            time: std::sync::atomic::AtomicU64::new(u64::MAX),
            all_read: AtomicBool::new(false),
        }
    }

    /// A worker letting go of its input at `t`.
    fn note(&self, t: u64) {
        if !self.all_read.load(Ordering::SeqCst) {
            self.time.fetch_min(t, Ordering::SeqCst);
        }
    }

    fn apply_all_read(&self) {
        self.all_read.store(true, Ordering::SeqCst);
    }

    /// Outputs were given up (a worker failed, or a stop came while one kept failing): no
    /// worker of this process applies anything more or commits a position it had not found
    /// safe before (what it had is still sent). Each worker's commits follow the probe, and
    /// the rules that gave the outputs up let go of their time, so the probe alone would let
    /// the others commit readings whose outputs never reached the bus. (Workers of other
    /// processes of a cluster are not told: a cluster's process exits at a stop, as a crash.)
    /// A run applying all it read (`StreamHandle::stop_applying_all_read`) goes on applying:
    /// nothing reads its bus again, so its commits do not matter.
    pub(crate) fn give_up(&self) {
        if !self.all_read.load(Ordering::SeqCst) {
            self.time.store(0, Ordering::SeqCst);
        }
    }

    /// The time the stage finishes at: `u64::MAX` while no worker has let go, 0 once outputs
    /// were given up.
    fn time(&self) -> u64 {
        self.time.load(Ordering::SeqCst)
    }
}

/// A worker's input capability. Let go on any path but a bounded run's end, its time is
/// noted in [`StopAt`] first: at a stop, and as the worker leaves on an error (a worker that
/// failed must not let the frontier pass it while its partitions go unread: the points they
/// feed would be judged silent).
struct HeldInput {
    cap: Option<ActivateCapability<u64>>,
    stop_at: Arc<StopAt>,
}

impl HeldInput {
    fn as_mut(&mut self) -> Option<&mut ActivateCapability<u64>> {
        self.cap.as_mut()
    }

    fn is_some(&self) -> bool {
        self.cap.is_some()
    }

    fn is_none(&self) -> bool {
        self.cap.is_none()
    }

    /// Let go at a stop (or on the way out), its time noted first.
    fn let_go(&mut self) {
        if let Some(c) = self.cap.take() {
            self.stop_at.note(*c.time());
        }
    }

    /// Let go at a bounded run's end, where every worker agreed the input ends.
    fn end(&mut self) {
        self.cap = None;
    }
}

impl Drop for HeldInput {
    fn drop(&mut self) {
        self.let_go();
    }
}

/// A worker's loop left on an error: its outputs are given up (`OutputDelivery::abandon`,
/// which stops every worker's commits, see `StopAt::give_up`) and its rules operator woken, so
/// that, once the other workers stop, it lets go of its time and they can finish (waiting for
/// acknowledgements nobody takes any more, it held them for ever).
struct AbandonOnError {
    delivery: std::rc::Rc<std::cell::RefCell<OutputDelivery>>,
    activator: std::rc::Rc<std::cell::RefCell<Option<timely::scheduling::Activator>>>,
    failed: bool,
}

impl Drop for AbandonOnError {
    fn drop(&mut self) {
        if self.failed {
            self.delivery.borrow_mut().abandon();
            if let Some(a) = self.activator.borrow().as_ref() {
                a.activate();
            }
        }
    }
}

/// How often a worker commits at most. Live, epochs close about once a second and so do
/// commits; reading a backlog (a restart after an outage, a bench), epochs close as fast as
/// they are read and a commit each was work for the group coordinator on the broker, which
/// shares the machine. A commit held back only makes a restart read a little more again.
const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// How long a partition of a live worker's backlog may give no record before the worker gives
/// it up (see [`Backlog`]): the backlog holds back the whole stage's frontier (every worker's,
/// every process's), and with it the judgement of silence.
const BACKLOG_STALL: Duration = Duration::from_secs(10);

/// Readings the spare epoch vectors of one pool may have room for, all together, at most (a
/// few MiB).
const SPARE_READINGS: usize = 65_536;

/// Vectors of one epoch's readings, kept for later epochs and handed out with room for as many
/// readings as recent epochs held. The worker's input loop fills one per epoch of each poll
/// (timely hands it back drained with several workers, and hands back none with one: the
/// vector itself goes on to the operator); the rules operator keeps every container as it
/// comes, a piece of its epoch, and gives each back to the pool once the epoch is applied
/// (the exchange's small ones are dropped there).
/// The input loop's grew from empty every time: a reallocation and a copy per doubling (6 % of
/// a worker's time in a storm whose epochs hold a few hundred readings, with the operator's
/// own vectors, which gathered each epoch then).
///
/// The room is reserved, not touched: a poll that spans many sparse epochs just after a dense
/// one reserves up to `ROOM_AT_MOST` readings for each (about 100 KiB), of which only the pages
/// written count, until the epochs are applied and `recent` has fallen.
#[derive(Default)]
struct EpochVecs {
    spare: Vec<Vec<TimedReading>>,
    /// Readings the spare vectors have room for.
    room: usize,
    /// Readings recent epochs held: the last epoch given back's count when that is larger,
    /// otherwise the figure before it less an eighth (falling by an eighth an epoch); no more
    /// than `ROOM_AT_MOST`.
    recent: usize,
}

/// Room a vector is handed out with, at most (about 100 KiB): a backlog stamped with one epoch
/// must not have every later epoch reserve its size.
const ROOM_AT_MOST: usize = 1_024;

impl EpochVecs {
    /// An empty vector with room for as many readings as recent epochs held.
    fn take(&mut self) -> Vec<TimedReading> {
        let v = self.spare.pop().unwrap_or_default();
        self.room -= v.capacity();
        if v.capacity() >= self.recent {
            v
        } else {
            // A fresh one, not the spare grown: the allocator's `realloc` copies the whole old
            // block, empty or not (2.4 % of the simulated storm's worker).
            Vec::with_capacity(self.recent)
        }
    }

    /// `v`, which held `held` readings, emptied and kept for a later epoch unless the spares
    /// already have room enough (a catching-up stage can stamp a whole backlog with one epoch)
    /// or it has less room than recent epochs held (timely's exchange makes containers of about
    /// 8 KiB: handed out again, each would be reallocated, copying its old block, to make room).
    fn give(&mut self, v: Vec<TimedReading>, held: usize) {
        self.give_all([v], held);
    }

    /// [`EpochVecs::give`] for the pieces of one epoch, which held `held` readings together:
    /// `recent` moves once for the epoch, not once a piece (an epoch from the exchange comes
    /// in dozens of pieces, and an eighth off for each would undo a large epoch's figure after
    /// one small one).
    fn give_all(&mut self, vs: impl IntoIterator<Item = Vec<TimedReading>>, held: usize) {
        self.recent = held.max(self.recent - self.recent / 8).min(ROOM_AT_MOST);
        for v in vs {
            self.keep(v);
        }
    }

    /// `v` emptied and kept, if the spares want it (see [`EpochVecs::give`]).
    fn keep(&mut self, mut v: Vec<TimedReading>) {
        v.clear();
        if v.capacity() > 0
            && v.capacity() >= self.recent
            && self.room + v.capacity() <= SPARE_READINGS
        {
            self.room += v.capacity();
            self.spare.push(v);
        }
    }
}

/// Say that records the bus deleted before this worker read them are lost, and count them.
fn report_lost(worker: usize, topic: &str, gap: Gap) {
    metrics().lost.inc_by(gap.records());
    tracing::error!(
        worker,
        topic,
        partition = gap.partition,
        from_offset = gap.from,
        to_offset = gap.to,
        records = gap.records(),
        "readings lost: the bus deleted them before this stage read them (its retention is shorter than the stage's lag, or the readings are stamped older than the retention); they are not processed"
    );
}

/// The readings this process's stage has counted lost so far (`floodcmd_stream_readings_lost_total`):
/// a bench reads it to refuse a rate over readings that were never processed.
pub fn readings_lost_total() -> u64 {
    metrics().lost.get()
}

/// The readings this process's stage has taken in so far (`floodcmd_stream_readings_total`,
/// counted a poll's worth at a time): a bench samples it to tell a run's reading from its
/// start and its end.
pub fn readings_total() -> u64 {
    metrics().readings.get()
}

/// The outputs this process's stage has produced so far (`floodcmd_stream_outputs_total`):
/// statuses, and transitions of every kind. A bench counts them per run, where the records on
/// the topics would not say (the Kafka bus packs statuses many to a record).
pub fn outputs_total() -> [u64; 2] {
    let mut totals = [0u64; 2];
    for family in prometheus::core::Collector::collect(&metrics().outputs) {
        for m in family.get_metric() {
            let status = m
                .get_label()
                .iter()
                .any(|l| l.name() == "kind" && l.value() == "status");
            totals[usize::from(!status)] += m.get_counter().get_value() as u64;
        }
    }
    totals
}

/// Record that offsets up to `next` wait for time `t`. Consecutive records fed at the same
/// time share one entry: they pass the probe together, and one entry per record was a queue
/// as long as the backlog.
fn note_pending(queue: &mut VecDeque<(u64, u64)>, t: u64, next: u64) {
    match queue.back_mut() {
        Some((last_t, last_next)) if *last_t == t => *last_next = next,
        _ => queue.push_back((t, next)),
    }
}

/// How many records ahead of the one being decoded a worker asks for the payload.
const PAYLOADS_AHEAD: usize = 8;

/// How much of a payload is asked for ahead: a reading as the gateway writes it is about 130
/// bytes, three lines at most wherever it starts; a longer one is read on from what this
/// brings in.
const PAYLOAD_BYTES_AHEAD: usize = 256;

/// A poll's records, each handed out once the payload of the record [`PAYLOADS_AHEAD`]
/// further on has been asked for.
///
/// Decoding a payload starts with the first read of bytes written long before, by another
/// thread or the network: a cache miss per reading, waited out one at a time, about a twelfth
/// of the stage's time. Asked for ahead, they arrive while earlier records are decoded.
struct PayloadsAhead(std::vec::IntoIter<Record>);

impl Iterator for PayloadsAhead {
    type Item = Record;

    #[inline]
    fn next(&mut self) -> Option<Record> {
        if let Some(ahead) = self.0.as_slice().get(PAYLOADS_AHEAD) {
            // Every line of a reading, not its first alone: its time and values lie past the
            // first, and in a profile of the stage a miss there was most of the time spent
            // reading integers.
            prefetch_first(&ahead.payload[..], PAYLOAD_BYTES_AHEAD);
        }
        self.0.next()
    }
}

/// What a worker takes in: a record from the bus, or a reading fed directly.
enum Intake {
    Record(Record),
    Fed(u32, Reading),
}

impl WorkerContext {
    fn run(self, worker: &mut timely::worker::Worker) -> Result<(), StreamError> {
        let index = worker.index();
        let peers = worker.peers();
        let topics = self.config.topics.clone();
        let mine: Vec<u32> = (0..self.partitions)
            .filter(|p| *p as usize % peers == index)
            .collect();
        // Rebuild after a restart: the engine's windows and levels live in memory, so re-read
        // `rebuild_ms` of history before the committed offsets. Those readings rebuild state
        // and emit nothing (what they caused is on the bus already); reading goes on live from
        // the committed offsets.
        let mut replay_until: BTreeMap<u32, u64> = BTreeMap::new();
        let mut positions: Vec<(u32, Option<u64>)> = mine.iter().map(|p| (*p, None)).collect();
        let reads_bus = !mine.is_empty() && self.fed.is_none();
        // The group's commits, looked up once for all that needs them below (the rebuild,
        // where reading starts, what a bounded run has left): each lookup is a client of its
        // own and a round trip to the group's coordinator. Three of them, and the consumer's
        // own lookups of where to start, were most of the third of a second a stage took to
        // read its first record.
        let committed = if reads_bus || (self.config.rebuild_ms.is_some() && !mine.is_empty()) {
            self.rt
                .block_on(self.bus.committed(&self.config.group, &topics.readings()))?
        } else {
            Vec::new()
        };
        let committed_at = |p: u32| committed.get(p as usize).copied().flatten();
        if let (Some(rebuild_ms), false) = (self.config.rebuild_ms, mine.is_empty()) {
            let since = self.clock.now_ms() - rebuild_ms;
            let starts = self
                .rt
                .block_on(self.bus.offsets_for_time(&topics.readings(), since))?;
            for (p, from) in positions.iter_mut() {
                let (Some(c), Some(&start)) = (committed_at(*p), starts.get(*p as usize)) else {
                    continue;
                };
                if start < c {
                    *from = Some(start);
                    replay_until.insert(*p, c);
                }
            }
            if !replay_until.is_empty() {
                let records: u64 = positions
                    .iter()
                    .filter_map(|(p, from)| Some(replay_until.get(p)? - (*from)?))
                    .sum();
                tracing::info!(
                    worker = index,
                    records,
                    "rebuilding state from history before the committed offsets"
                );
            }
        }
        let (feed_input, feed_output) = match self.fed {
            Some((input, output)) => (Some(input), Some(output)),
            None => (None, None),
        };
        // Where each partition's reading starts (the explicit position, else the group's
        // commit, else the first record the bus holds), looked up before the consumer starts:
        // a first record further on means the bus deleted what was between. The consumer is
        // then told these positions rather than look them up again. If the lookup of first
        // records fails, the consumer looks for itself, and a partition's position starts at
        // its first record read (the check is all that is lost).
        let mut read_at = ReadPositions::default();
        if reads_bus {
            let open = positions
                .iter()
                .any(|(p, from)| from.is_none() && committed_at(*p).is_none());
            let starts = if open {
                match self.rt.block_on(self.bus.start_offsets(&topics.readings())) {
                    Ok(starts) => Some(starts),
                    Err(e) => {
                        tracing::warn!(worker = index, error = %e, "could not look up where the readings partitions start; lost records are counted from the first record read");
                        None
                    }
                }
            } else {
                Some(Vec::new())
            };
            if let Some(starts) = starts {
                for (p, from) in positions.iter_mut() {
                    *from = from
                        .or_else(|| committed_at(*p))
                        .or_else(|| starts.get(*p as usize).copied());
                }
                read_at = ReadPositions::new(
                    positions
                        .iter()
                        .filter_map(|(p, from)| Some((*p, (*from)?))),
                );
            }
        }
        // Live: the partitions with readings waiting between where this worker starts reading
        // (history to rebuild from included) and where they ended as the stage started.
        let m = metrics();
        let mut backlog = match (&self.backlog_ends, reads_bus) {
            (Some(ends), true) => {
                Backlog::new(positions.iter().copied(), ends, Some(m.catching_up.clone()))
            }
            _ => Backlog::default(),
        };
        if !backlog.is_empty() {
            tracing::info!(
                worker = index,
                partitions = backlog.len(),
                records = backlog.records(),
                "reading the backlog in event time before following the clock"
            );
        }
        // When the bus's first offsets were last looked at (see below).
        let mut starts_checked = std::time::Instant::now();
        let mut consumer: Option<Box<dyn Consumer>> =
            if mine.is_empty() || feed_input.is_some() {
                None
            } else {
                // Every position resolved: the group's, with nothing left for the bus to look up.
                let resolved: Option<Vec<(u32, u64)>> =
                    positions.iter().map(|(p, at)| Some((*p, (*at)?))).collect();
                let assignment = match resolved {
                    Some(group_positions) => Assignment::GroupPositions(group_positions),
                    None => Assignment::Positions(positions),
                };
                Some(self.rt.block_on(self.bus.consumer(
                    &self.config.group,
                    &topics.readings(),
                    assignment,
                ))?)
            };
        // Bounded mode: the offsets to read up to, per partition of this worker; a partition
        // the group has already read to the end has nothing to wait for.
        let mut remaining: BTreeMap<u32, u64> = match &self.end_offsets {
            // Fed: every partition of this worker is open until the feeder is done.
            Some(ends) if feed_input.is_some() => {
                mine.iter().map(|p| (*p, ends[*p as usize])).collect()
            }
            Some(ends) => mine
                .iter()
                .map(|p| (*p, ends[*p as usize]))
                .filter(|(p, e)| *e > committed_at(*p).unwrap_or(0))
                .collect(),
            None => BTreeMap::new(),
        };
        // When the backlog was last looked at for partitions that stopped moving.
        let mut backlog_checked = Instant::now();
        backlog.start_stall_clock(backlog_checked);
        let producer = self.bus.producer();
        let probe = ProbeHandle::new();

        let district = self.district.clone();
        let clock = self.clock.clone();
        let origin_ms = self.origin_ms;
        let (sink_rt, sink_topics, sink_bus) = (self.rt.clone(), topics.clone(), self.bus.clone());
        let finish_at = self.stop_at.clone();
        let lost_output = std::rc::Rc::new(std::cell::Cell::new(false));
        let sink_lost = lost_output.clone();
        // Shared by the operator, which hands outputs over, and this loop, which takes their
        // acknowledgements and commits no offset ahead of them.
        let delivery = std::rc::Rc::new(std::cell::RefCell::new(OutputDelivery::new(
            self.rt.clone(),
            producer.clone(),
            topics.status(),
            topics.alerts(),
            self.stop.clone(),
            lost_output.clone(),
            self.stop_at.clone(),
        )));
        let sink_delivery = delivery.clone();
        // Wakes the operator when acknowledgements come in (see below).
        let activator: std::rc::Rc<std::cell::RefCell<Option<timely::scheduling::Activator>>> =
            Default::default();
        let operator_activator = activator.clone();
        // One pool for the input loop, which fills a vector per epoch, and the rules operator,
        // which gives each back once its epoch is applied (both run on this thread).
        let epoch_vecs = std::rc::Rc::new(std::cell::RefCell::new(EpochVecs::default()));
        let applied_vecs = epoch_vecs.clone();
        let (mut input, cap) = worker.dataflow::<u64, _, _>(|scope| {
            let activator_scope = scope;
            let ((input, cap), stream) = scope.new_unordered_input::<timely::container::CapacityContainerBuilder<Vec<TimedReading>>>();
            stream
                .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<()>>, _, _, _>(
                    Exchange::new(|r: &TimedReading| murmur2(r.reading.point.as_bytes()) as u64),
                    "PointRules",
                    move |default_cap, info| {
                        *operator_activator.borrow_mut() = Some(activator_scope.activator_for(info.address.clone()));
                        let mut engine = Engine::new(&district, |p| owner(p, peers) == index, clock, origin_ms);
                        // Held at the input frontier, or behind it at the oldest epoch whose
                        // outputs the bus has yet to acknowledge, so the probe downstream only
                        // passes a time once every output for it is on the bus.
                        let mut held: Option<Capability<u64>> = Some(default_cap);
                        let mut stash: BTreeMap<u64, Vec<Vec<TimedReading>>> = BTreeMap::new();
                        // Stopped, and finished where the stage finishes (see `StopAt`).
                        let mut finished = false;
                        // Outputs go to the bus from here, in the engine's order: timely may
                        // reorder containers of different times downstream, the bus must not.
                        // One batch per topic and epoch, handed over in one entry into the
                        // runtime, acknowledged while later epochs are worked on (see
                        // `delivery`): waiting for the broker's acknowledgement of each output
                        // in turn (linger plus a round trip, ~5 ms on Kafka) held the stage to
                        // a few hundred outputs a second. Each topic's batch keeps the engine's
                        // order.
                        let status_count = metrics().outputs.with_label_values(&["status"]);
                        let mut outputs = match feed_output {
                            Some(tx) => EpochOutputs::to_feed(tx, sink_lost.clone(), status_count),
                            None => {
                                // Partitions of the output topics, to keep each one's records
                                // in a buffer of its own.
                                let partitions_of = |topic: &str| sink_rt.block_on(sink_bus.partitions(topic)).unwrap_or(1);
                                let (status_partitions, alerts_partitions) = (partitions_of(&sink_topics.status()), partitions_of(&sink_topics.alerts()));
                                EpochOutputs::to_bus(sink_delivery.clone(), status_partitions, alerts_partitions, status_count)
                            }
                        };
                        move |(input, frontier), _output| {
                            input.for_each_stamp(|cap, data| {
                                let t = *cap.least().expect("u64 stamps have a least time");
                                // Each container kept as it comes, a piece of its epoch,
                                // not copied into one vector of the epoch (a reading is about
                                // a hundred bytes; see `Engine::apply_epoch_in_pieces`).
                                let pieces = stash.entry(t).or_default();
                                for d in data.into_slice() {
                                    if !d.is_empty() {
                                        pieces.push(std::mem::take(d));
                                    }
                                }
                            });
                            let Some(cap) = held.as_mut() else { return };
                            let f = frontier.frontier();
                            // Asked to stop: no epoch from where the stage finishes on (see
                            // `StopAt`), whatever the frontier allows.
                            let finish = finish_at.time();
                            while let Some((&t, _)) = stash.first_key_value() {
                                if f.less_equal(&t) || t >= finish {
                                    break;
                                }
                                let pieces = stash.remove(&t).expect("key just seen");
                                let held = pieces.iter().map(Vec::len).sum();
                                outputs.begin(held);
                                engine.apply_epoch_in_pieces(t as Millis * 1000, &pieces, &mut outputs);
                                outputs.finish(t);
                                // Given back with the epoch's count, which is what the input
                                // loop's vectors should have room for (up to its limit), not
                                // each piece's: the exchange's are small.
                                applied_vecs.borrow_mut().give_all(pieces, held);
                            }
                            match f.first() {
                                Some(&ft) => {
                                    // Silence up to the frontier: what the readings before
                                    // the held time caused, as it were.
                                    outputs.begin(0);
                                    engine.advance_to(ft.min(finish) as Millis * 1000, &mut outputs);
                                    outputs.finish(*cap.time());
                                }
                                None if finish != u64::MAX && !finished => {
                                    // Stopped: silence up to where the stage finishes, as a
                                    // frontier there would judge it, and the epochs after it
                                    // let go, their readings uncommitted (read again on restart).
                                    finished = true;
                                    outputs.begin(0);
                                    engine.advance_to(finish as Millis * 1000, &mut outputs);
                                    outputs.finish(*cap.time());
                                    for (_, pieces) in std::mem::take(&mut stash) {
                                        let held = pieces.iter().map(Vec::len).sum();
                                        applied_vecs.borrow_mut().give_all(pieces, held);
                                    }
                                }
                                None if sink_delivery.borrow().oldest().is_none() => {
                                    // End of input and every output acknowledged: nothing
                                    // can become silent any more.
                                    held = None;
                                    return;
                                }
                                None => {}
                            }
                            // Not past an epoch whose outputs the bus has yet to acknowledge:
                            // the probe, and so every worker's commits, wait for them. (The
                            // worker's loop takes acknowledgements and wakes this operator.)
                            sink_delivery.borrow_mut().settle();
                            let unacknowledged = sink_delivery.borrow().oldest();
                            let to = match (f.first(), unacknowledged) {
                                (Some(&ft), Some(o)) => ft.min(o),
                                (Some(&ft), None) => ft,
                                (None, Some(o)) => o,
                                (None, None) => {
                                    held = None;
                                    return;
                                }
                            };
                            if to > *cap.time() {
                                cap.downgrade(&to);
                            }
                        }
                    },
                )
                .probe_with(&probe);
            (input, cap)
        });

        let lateness_s = (self.config.lateness_ms.max(0) as u64).div_ceil(1000);
        let mut cap = HeldInput {
            cap: Some(cap),
            stop_at: self.stop_at.clone(),
        };
        // Newest event time seen per partition. In bounded mode the watermark is the oldest of
        // these over the partitions not yet read to the end, so the order in which partitions
        // happen to be polled cannot make a reading late.
        let mut partition_max: BTreeMap<u32, u64> = mine.iter().map(|p| (*p, 0)).collect();
        // Per partition, (epoch the record was fed at, next offset), in read order: a prefix
        // whose epochs the probe has passed is committed. One queue per partition, so a reading
        // stamped far ahead holds back only its own partition.
        let mut pending: BTreeMap<u32, VecDeque<(u64, u64)>> = BTreeMap::new();
        // The last position committed per partition, to commit again when the stage ends.
        let mut committed_next: BTreeMap<u32, u64> = BTreeMap::new();
        // Positions whose outputs are all on the bus, not committed yet, and when this worker
        // last committed: see `COMMIT_EVERY`.
        let mut due: BTreeMap<u32, u64> = BTreeMap::new();
        let mut last_commit: Option<Instant> = None;
        let mut published_end = false;
        // A worker re-reading its history after a restart holds its capability where it is
        // until it is done. The frontier is the least capability of every worker in every
        // process, so no live epoch is judged on a half-rebuilt state (a point's sensors can
        // sit in partitions of different workers) without any worker waiting on another.
        let mut rebuilt = replay_until.is_empty();
        let mut final_time: Option<u64> = None;
        // Readings of one poll grouped by the time they are fed at: one capability and one
        // container per time, not per reading (a session per reading sent a message each).
        let mut batches: BTreeMap<u64, Vec<TimedReading>> = BTreeMap::new();
        let mut leaving = AbandonOnError {
            delivery: delivery.clone(),
            activator: activator.clone(),
            failed: true,
        };
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            if stopping && self.in_cluster {
                // Dropping this process's capabilities would let the others' clocks move the
                // frontier past readings nobody reads any more, and this process could not
                // finish while they run. Leave as a crash does: outputs not yet on the bus
                // were never committed, so the restarted cluster produces them again.
                tracing::warn!(
                    worker = index,
                    "stream cluster: stopping this process ends the cluster; restart every process"
                );
                std::process::exit(0);
            }
            let bounded_done = self.end_offsets.is_some() && remaining.is_empty();
            if stopping {
                cap.let_go();
            }
            if bounded_done && cap.is_some() {
                let end = &self.bounded_end;
                if !published_end {
                    published_end = true;
                    end.max_event_s.fetch_max(
                        partition_max.values().copied().max().unwrap_or(0),
                        Ordering::SeqCst,
                    );
                    end.finished.fetch_add(1, Ordering::SeqCst);
                }
                if end.finished.load(Ordering::SeqCst) == peers {
                    // Every worker has read its share: move time just past the newest reading
                    // anywhere, let the dataflow see that frontier, then close the input.
                    let t = *final_time.get_or_insert(end.max_event_s.load(Ordering::SeqCst) + 1);
                    let c = cap.as_mut().expect("checked above");
                    if *c.time() < t {
                        c.downgrade(&t);
                    }
                    if !probe.less_than(&t) {
                        cap.end();
                    }
                }
            }
            let has_input = consumer.is_some() || feed_input.is_some();
            if let (Some(c), true, false) = (cap.as_mut(), has_input, bounded_done) {
                // From the bus, records to decode; fed, readings as they are. Taken as they
                // come, not gathered into a vector of their own first: that was a fresh
                // allocation of a whole poll (half a megabyte) each time.
                let (records, readings) = match (consumer.as_mut(), &feed_input) {
                    (Some(consumer), _) => (
                        self.rt
                            .block_on(consumer.poll(4096, Duration::from_millis(5)))?,
                        Vec::new(),
                    ),
                    (None, Some(input)) => match input.recv_timeout(Duration::from_millis(5)) {
                        Ok(batch) => (Vec::new(), batch),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Default::default(),
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                            remaining.clear();
                            Default::default()
                        }
                    },
                    (None, None) => Default::default(),
                };
                let polled = records.len();
                let items = PayloadsAhead(records.into_iter())
                    .map(Intake::Record)
                    .chain(
                        readings
                            .into_iter()
                            .map(|(partition, reading)| Intake::Fed(partition, reading)),
                    );
                let mut fed = 0;
                for item in items {
                    // A fed reading has no offset to commit; a record's next one is noted.
                    let (partition, next_offset, reading) = match item {
                        Intake::Fed(partition, reading) => (partition, None, reading),
                        Intake::Record(rec) => {
                            match read_at.read(rec.partition, rec.offset) {
                                Place::Next => {}
                                Place::After(mut gap) => {
                                    // History re-read after a restart was processed before
                                    // it: only what lay past the committed offset is lost.
                                    if let Some(&c) = replay_until.get(&rec.partition) {
                                        gap.from = gap.from.max(c);
                                    }
                                    // Bounded, what lies past the end is not this run's.
                                    if let Some(ends) = &self.end_offsets {
                                        let end = ends.get(rec.partition as usize).copied();
                                        gap.to = gap.to.min(end.unwrap_or(gap.to));
                                    }
                                    if gap.to > gap.from {
                                        report_lost(index, &topics.readings(), gap);
                                    }
                                }
                                // Already counted lost (its fetch was under way when the
                                // partition was given up), or read before: processed once at
                                // most, and never a commit behind one made already.
                                Place::Behind => continue,
                            }
                            if let Some(end) = remaining.get(&rec.partition) {
                                if rec.offset + 1 >= *end {
                                    remaining.remove(&rec.partition);
                                }
                            }
                            backlog.read(rec.partition, rec.offset);
                            let replay = replay_until
                                .get(&rec.partition)
                                .is_some_and(|c| rec.offset < *c);
                            if replay_until
                                .get(&rec.partition)
                                .is_some_and(|c| rec.offset + 1 >= *c)
                            {
                                replay_until.remove(&rec.partition);
                                tracing::info!(
                                    worker = index,
                                    partition = rec.partition,
                                    "rebuild of this partition read"
                                );
                            }
                            let reading: Reading = match decode_reading(&rec.payload) {
                                Ok(r) => r,
                                // Dead-lettered the first time round already.
                                Err(_) if replay => continue,
                                Err(e) => {
                                    m.undecodable.inc();
                                    let reject = Reject::undecodable(&rec, &e, self.clock.now_ms());
                                    self.rt.block_on(producer.send(
                                        &topics.rejects(),
                                        &rec.key,
                                        encode(&reject),
                                        reject.received_ms,
                                    ))?;
                                    note_pending(
                                        pending.entry(rec.partition).or_default(),
                                        *c.time(),
                                        rec.offset + 1,
                                    );
                                    continue;
                                }
                            };
                            if replay {
                                // Behind the clock by design: neither late nor new, and never committed
                                // again (that would move the group's offset backwards).
                                batches
                                    .entry(*c.time())
                                    .or_insert_with(|| epoch_vecs.borrow_mut().take())
                                    .push(TimedReading {
                                        reading,
                                        late: false,
                                        replay: true,
                                    });
                                continue;
                            }
                            (rec.partition, Some(rec.offset + 1), reading)
                        }
                    };
                    fed += 1;
                    let epoch = (reading.ts_ms.max(0) / 1000) as u64;
                    let pmax = partition_max.entry(partition).or_insert(0);
                    // Live, late means behind the clock's watermark. Bounded, it means behind
                    // the newest reading of the same partition by more than the budget, which
                    // depends only on that partition's order, so every run agrees; so it does
                    // in a live worker's backlog, read as a bounded run reads.
                    let late = match &self.config.watermark {
                        Watermark::Clock(_) if backlog.contains(partition) => {
                            epoch + lateness_s < *pmax || epoch < *c.time()
                        }
                        Watermark::Clock(_) => epoch < *c.time(),
                        Watermark::Bounded { .. } => {
                            epoch + lateness_s < *pmax || epoch < *c.time()
                        }
                    };
                    *pmax = (*pmax).max(epoch);
                    if late {
                        m.late.inc();
                    }
                    let t = epoch.max(*c.time());
                    if let Some(next) = next_offset {
                        note_pending(pending.entry(partition).or_default(), t, next);
                    }
                    batches
                        .entry(t)
                        .or_insert_with(|| epoch_vecs.borrow_mut().take())
                        .push(TimedReading {
                            reading,
                            late,
                            replay: false,
                        });
                }
                m.readings.inc_by(fed);
                if let (false, Watermark::Clock(clock)) =
                    (backlog.is_empty(), &self.config.watermark)
                {
                    settle_backlog(
                        &mut backlog,
                        &partition_max,
                        ((clock.now_ms().max(0) / 1000) as u64).saturating_sub(lateness_s),
                        || self.rt.block_on(self.bus.end_offsets(&topics.readings())),
                        index,
                    );
                    if !backlog.is_empty() && backlog_checked.elapsed() >= Duration::from_secs(1) {
                        backlog_checked = Instant::now();
                        let stalled = backlog.give_up_stalled(backlog_checked, BACKLOG_STALL);
                        if !stalled.is_empty() {
                            tracing::warn!(
                                worker = index,
                                partitions = ?stalled,
                                "no record of the backlog for {} s; following the clock, so what is left of it reads as late",
                                BACKLOG_STALL.as_secs()
                            );
                        }
                    }
                    if backlog.is_empty() {
                        tracing::info!(
                            worker = index,
                            "backlog read; the watermark follows the clock"
                        );
                    }
                }
                // Bounded and caught up (a poll came back empty): once a second, ask where the
                // bus now starts each partition still open. If it deleted everything up to the
                // end before it was read, no record is coming, and the run would wait for ever.
                // (A gap with records after it shows with the next record read.)
                if polled == 0
                    && consumer.is_some()
                    && !remaining.is_empty()
                    && starts_checked.elapsed() >= Duration::from_secs(1)
                {
                    starts_checked = std::time::Instant::now();
                    match self.rt.block_on(self.bus.start_offsets(&topics.readings())) {
                        Ok(starts) => {
                            let open: Vec<(u32, u64)> =
                                remaining.iter().map(|(p, e)| (*p, *e)).collect();
                            for (p, end) in open {
                                let Some(&start) = starts.get(p as usize) else {
                                    continue;
                                };
                                if start < end {
                                    continue;
                                }
                                // What lies past the end is not this run's to count.
                                if let Some(gap) = read_at.starts_at(p, end) {
                                    report_lost(index, &topics.readings(), gap);
                                }
                                // Done, and committed past what is gone, as the consumer
                                // itself moved past it.
                                remaining.remove(&p);
                                note_pending(pending.entry(p).or_default(), *c.time(), end);
                            }
                        }
                        // Only a check: the reading goes on, and it is tried again.
                        Err(e) => tracing::warn!(
                            worker = index,
                            error = %e,
                            "could not look up where the readings topic starts"
                        ),
                    }
                }
                if !batches.is_empty() {
                    let mut session = input.activate();
                    for (t, mut batch) in std::mem::take(&mut batches) {
                        let held = batch.len();
                        session.session(&c.delayed(&t)).give_container(&mut batch);
                        // What timely leaves in `batch`: with several workers the same vector,
                        // drained; with one, an empty one. Its contents are not defined, and
                        // `give` clears it.
                        epoch_vecs.borrow_mut().give(batch, held);
                    }
                }
                let now_s = match &self.config.watermark {
                    Watermark::Clock(clock) => {
                        let now = (clock.now_ms().max(0) / 1000) as u64;
                        // Reading a backlog: no further than the newest reading of the partition
                        // furthest behind, as a bounded run does.
                        backlog.limit(&partition_max).map_or(now, |b| b.min(now))
                    }
                    Watermark::Bounded { .. } => {
                        let open = partition_max
                            .iter()
                            .filter(|(p, _)| remaining.contains_key(p))
                            .map(|(_, m)| *m)
                            .min();
                        // Every partition read to the end: the cap is dropped at the loop's top.
                        open.unwrap_or_else(|| partition_max.values().copied().max().unwrap_or(0))
                    }
                };
                let wm = now_s.saturating_sub(lateness_s);
                rebuilt |= replay_until.is_empty();
                if rebuilt && wm > *c.time() {
                    c.downgrade(&wm);
                    // Each process's first worker (indices run across the cluster).
                    if index.is_multiple_of(self.config.workers.max(1)) {
                        m.watermark.set(wm as i64);
                    }
                }
            } else if let (Some(c), Watermark::Clock(clock)) =
                (cap.as_mut(), &self.config.watermark)
            {
                // No partitions here: follow the clock so the other workers are not held back.
                std::thread::sleep(Duration::from_millis(5));
                let wm = ((clock.now_ms().max(0) / 1000) as u64).saturating_sub(lateness_s);
                if wm > *c.time() {
                    c.downgrade(&wm);
                }
            }
            if bounded_done {
                // Waiting for the other workers to finish their share: don't spin.
                worker.step_or_park(Some(Duration::from_millis(1)));
            } else {
                worker.step();
            }
            // Acknowledgements taken here too, so the operator (which holds its capability at
            // the oldest epoch still waiting for one) is woken when they come, not only when
            // input does.
            if delivery.borrow_mut().settle() {
                if let Some(a) = activator.borrow().as_ref() {
                    a.activate();
                }
            }
            if !lost_output.get() {
                // Stopping, what lies past where the stage finishes was not applied.
                let finish = self.stop_at.time();
                for (p, queue) in pending.iter_mut() {
                    let mut last = None;
                    while queue
                        .front()
                        .is_some_and(|(t, _)| !probe.less_equal(t) && *t < finish)
                    {
                        last = queue.pop_front().map(|(_, next)| next);
                    }
                    if let (Some(next), true) = (last, consumer.is_some()) {
                        due.insert(*p, next);
                    }
                }
            }
            // Whatever `due` holds was safe to commit when it was noted, so it is sent even
            // once an output is given up, as it would have been at once.
            if let (Some(c), false) = (consumer.as_mut(), due.is_empty()) {
                let now = Instant::now();
                if last_commit.is_none_or(|at| now.duration_since(at) >= COMMIT_EVERY) {
                    let positions: Vec<(u32, u64)> = due.iter().map(|(p, n)| (*p, *n)).collect();
                    self.rt.block_on(c.commit_all(&positions))?;
                    committed_next.append(&mut due);
                    last_commit = Some(now);
                }
            }
            if cap.is_none() && probe.done() {
                break;
            }
        }
        leaving.failed = false;
        // Everything is processed and on the bus, and the loop's last pass (the probe done)
        // has noted every pending position, unless an output never made it; those not sent
        // yet (`COMMIT_EVERY`) join the rest here. Every position committed goes again in one
        // request the stage waits for, which the coordinator answers after those before it,
        // so the consumer can go without the stage waiting for its client to close. A last commit that fails, or an earlier one
        // that librdkafka retries and lands after it, is what a crash here would leave: the
        // records after the group's position are read again, never skipped.
        if let Some(mut c) = consumer {
            committed_next.append(&mut due);
            let last: Vec<(u32, u64)> = committed_next.into_iter().collect();
            if let Err(e) = self.rt.block_on(c.commit_last(&last)) {
                tracing::warn!(worker = index, error = %e, "the stage's last commit failed; a restart reads again what followed the group's position");
            }
            c.let_go();
        }
        Ok(())
    }
}

/// After a poll: each backlog partition read up to its end is caught up if its newest reading
/// (`newest`, event seconds) is at or past `live_from_s` (the clock less the budget), and
/// otherwise reads on to where it ends now (`ends_now`: readings reached the bus meanwhile;
/// with none, it is caught up).
fn settle_backlog(
    backlog: &mut Backlog,
    newest: &BTreeMap<u32, u64>,
    live_from_s: u64,
    ends_now: impl FnOnce() -> Result<Vec<u64>, BusError>,
    index: usize,
) {
    let at_end = backlog.at_end();
    if at_end.is_empty() {
        return;
    }
    let (live, behind): (Vec<u32>, Vec<u32>) = at_end
        .into_iter()
        .partition(|p| newest.get(p).is_some_and(|m| *m >= live_from_s));
    for p in live {
        backlog.caught_up(p);
    }
    if behind.is_empty() {
        return;
    }
    match ends_now() {
        Ok(ends) => {
            for p in behind {
                backlog.extend(p, ends.get(p as usize).copied().unwrap_or(0));
            }
        }
        Err(e) => {
            tracing::warn!(worker = index, error = %e, partitions = ?behind, "could not look up where the readings partitions end now; following the clock, so what reached them meanwhile may read as late");
            for p in behind {
                backlog.caught_up(p);
            }
        }
    }
}

#[cfg(test)]
mod epoch_vecs_tests {
    use super::{EpochVecs, ROOM_AT_MOST, SPARE_READINGS};
    use crate::engine::TimedReading;
    use floodcmd_model::{Reading, SensorKind};

    fn readings(n: usize) -> Vec<TimedReading> {
        let r = TimedReading {
            reading: Reading {
                sensor: "S".into(),
                point: "P".into(),
                kind: SensorKind::Depth,
                ts_ms: 0,
                value: 1.0,
                seq: None,
                received_ms: 0,
            },
            late: false,
            replay: false,
        };
        vec![r; n]
    }

    #[test]
    fn a_vector_comes_back_empty_with_room_for_what_recent_epochs_held() {
        let mut pool = EpochVecs::default();
        assert_eq!(
            pool.take().capacity(),
            0,
            "nothing held yet, nothing reserved"
        );
        pool.give(readings(300), 300);
        let v = pool.take();
        assert!(v.is_empty());
        assert!(v.capacity() >= 300, "{}", v.capacity());
        assert_eq!(pool.room, 0, "the one spare is out again");
        // A smaller epoch after it: the room decays by an eighth at a time, not at once.
        pool.give(v, 10);
        assert_eq!(pool.recent, 300 - 300 / 8);
        let fresh = EpochVecs {
            recent: pool.recent,
            ..Default::default()
        }
        .take();
        assert!(fresh.capacity() >= 263, "{}", fresh.capacity());
    }

    /// An epoch given back in pieces moves the figure once: the ten small pieces of a small
    /// epoch take an eighth off, not an eighth ten times, and are not kept.
    #[test]
    fn an_epoch_in_pieces_counts_once() {
        let mut pool = EpochVecs::default();
        pool.give(readings(800), 800);
        let _ = pool.take();
        pool.give_all((0..10).map(|_| Vec::with_capacity(7)), 70);
        assert_eq!(pool.recent, 800 - 800 / 8, "one eighth off, not ten");
        assert!(pool.spare.is_empty(), "small pieces are not kept");
        pool.give_all([readings(900), Vec::with_capacity(10)], 900);
        assert_eq!(pool.recent, 900);
        assert_eq!(pool.spare.len(), 1, "the piece with room is kept");
    }

    /// A vector with less room than recent epochs held (one of timely's exchange containers)
    /// is not kept: handed out, it would be reallocated to make room.
    #[test]
    fn a_vector_smaller_than_recent_epochs_is_not_kept() {
        let mut pool = EpochVecs::default();
        pool.give(readings(300), 300);
        let big = pool.take();
        pool.give(Vec::with_capacity(78), 78);
        assert_eq!(pool.room, 0, "not kept: {:?}", pool.spare.len());
        pool.give(big, 300);
        assert_eq!(pool.spare.len(), 1);
        assert!(pool.take().capacity() >= 300);
    }

    #[test]
    fn a_backlog_epoch_neither_is_kept_nor_makes_later_ones_reserve_its_size() {
        let mut pool = EpochVecs::default();
        pool.give(readings(SPARE_READINGS + 1), SPARE_READINGS + 1);
        assert!(pool.spare.is_empty(), "too big to keep");
        assert_eq!(pool.room, 0);
        assert_eq!(pool.recent, ROOM_AT_MOST);
        let v = pool.take();
        assert!(v.capacity() >= ROOM_AT_MOST && v.capacity() < 2 * ROOM_AT_MOST);
        // Spares are kept up to the room, no further.
        let mut pool = EpochVecs::default();
        for _ in 0..SPARE_READINGS / 1000 + 5 {
            pool.give(Vec::with_capacity(1000), 0);
        }
        assert!(pool.room <= SPARE_READINGS);
        assert_eq!(
            pool.room,
            pool.spare.iter().map(Vec::capacity).sum::<usize>()
        );
    }
}

#[cfg(test)]
mod stop_at_tests {
    use super::StopAt;

    #[test]
    fn the_stage_finishes_at_the_least_time_noted_or_at_0_once_outputs_are_given_up_and_nowhere_when_asked_to_apply_all_read(
    ) {
        let at = StopAt::new();
        assert_eq!(at.time(), u64::MAX, "not stopping");
        at.note(130);
        at.note(110);
        at.note(120);
        assert_eq!(at.time(), 110, "the slowest worker's time");

        at.give_up();
        assert_eq!(
            at.time(),
            0,
            "outputs given up: nothing more applied or committed"
        );

        let all = StopAt::new();
        all.apply_all_read();
        all.note(110);
        all.give_up();
        assert_eq!(all.time(), u64::MAX, "every epoch read is applied");
    }
}
