//! Getting the stage's outputs onto the bus: in the engine's order, without losing one, and
//! without waiting for one epoch's acknowledgement before working on the next.
//!
//! An epoch's outputs are encoded into [`EncodedBatch`]es (one per topic) and handed over to
//! the bus at once; the worker goes on with the next epoch while the bus acknowledges. Waiting
//! for each epoch's acknowledgement instead (linger plus a round trip to the broker) kept a
//! worker reading from Kafka idle for about two fifths of its time. A few epochs are held at
//! once ([`MAX_HELD`]); beyond that the worker waits for the oldest.
//!
//! Invariants:
//! - records are handed over in the engine's order, so each key's records reach the bus in
//!   that order (the bus keeps a partition's order, Kafka's idempotent producer included);
//! - [`OutputDelivery::oldest`] is the time of the oldest epoch whose outputs are not all
//!   acknowledged; the rules operator holds its capability there, so the probe (which every
//!   worker's commits follow) does not pass it;
//! - a record the bus fails is produced again until it lands (or the stage is told to stop,
//!   which then commits nothing more). Records of later epochs in the same partition may have
//!   landed meanwhile; they are produced again after it, so each key's last record is the
//!   engine's last. Outputs are at least once already (a restart produces again what follows
//!   the committed offsets); consumers take the newest status and dedupe transitions.

use bytes::Bytes;
use floodcmd_model::bus::{
    partition_for, Acknowledgements, BusError, Delivery, Outgoing, Producer,
};
use floodcmd_model::codec::BatchEncoder;
use floodcmd_model::time::Millis;
use futures::FutureExt;
use std::cell::Cell;
use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Epochs whose outputs may wait for acknowledgement at once, per worker.
pub(crate) const MAX_HELD: usize = 8;

/// One topic's share of an epoch's outputs, each record's key and payload in one buffer per
/// partition of the topic.
///
/// Per partition, because a record is a slice of its buffer and keeps all of it alive: a bus
/// that keeps records (the embedded one trims each partition on its own) would otherwise keep
/// a whole epoch's outputs for the sake of one record in a slow partition.
pub(crate) struct EncodedBatch<B> {
    /// One per partition.
    buffers: Vec<B>,
    /// Per record, in the engine's order: its partition, its key's and its payload's places in
    /// that partition's buffer, and its timestamp.
    places: Vec<(usize, Range<usize>, Range<usize>, Millis)>,
}

impl EncodedBatch<BatchEncoder> {
    pub(crate) fn new(partitions: u32, records: usize, bytes_each: usize) -> Self {
        let share = records.div_ceil(partitions.max(1) as usize) * bytes_each;
        EncodedBatch {
            buffers: (0..partitions.max(1))
                .map(|_| BatchEncoder::with_capacity(share))
                .collect(),
            places: Vec::with_capacity(records),
        }
    }

    /// Add a record keyed `key`, whose payload `write` puts in the buffer it is handed.
    pub(crate) fn push(
        &mut self,
        key: &str,
        timestamp_ms: Millis,
        write: impl FnOnce(&mut BatchEncoder) -> Range<usize>,
    ) {
        let partition = partition_for(key.as_bytes(), self.buffers.len() as u32) as usize;
        let buffer = &mut self.buffers[partition];
        let key = buffer.bytes(key.as_bytes());
        let payload = write(buffer);
        self.places.push((partition, key, payload, timestamp_ms));
    }

    /// Bytes written, over every partition.
    pub(crate) fn bytes(&self) -> usize {
        self.buffers.iter().map(BatchEncoder::len).sum()
    }

    pub(crate) fn finish(self) -> EncodedBatch<Bytes> {
        EncodedBatch {
            buffers: self.buffers.into_iter().map(BatchEncoder::finish).collect(),
            places: self.places,
        }
    }
}

impl EncodedBatch<Bytes> {
    fn len(&self) -> usize {
        self.places.len()
    }

    /// The partition of the record at `i`.
    fn partition_of(&self, i: usize) -> usize {
        self.places[i].0
    }

    /// The records at `which`, in that order; each a slice of its partition's buffer.
    fn records(&self, which: &[usize]) -> Vec<Outgoing> {
        which
            .iter()
            .map(|&i| {
                let (partition, key, payload, timestamp_ms) = &self.places[i];
                let buffer = &self.buffers[*partition];
                Outgoing {
                    key: buffer.slice(key.clone()),
                    payload: buffer.slice(payload.clone()),
                    timestamp_ms: *timestamp_ms,
                }
            })
            .collect()
    }
}

/// Results of one batch per topic: statuses, transitions.
type BothResults = (
    Vec<Result<Delivery, BusError>>,
    Vec<Result<Delivery, BusError>>,
);

/// An epoch's outputs handed over and not yet all acknowledged.
struct Held {
    /// The input time whose offsets wait for these outputs.
    time: u64,
    status: EncodedBatch<Bytes>,
    alerts: EncodedBatch<Bytes>,
    acks: futures::future::BoxFuture<'static, BothResults>,
}

/// The places of `results` that failed.
fn failures(results: &[Result<Delivery, BusError>]) -> Vec<usize> {
    results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.is_err().then_some(i))
        .collect()
}

/// One worker's outputs on their way to the bus.
pub(crate) struct OutputDelivery {
    rt: tokio::runtime::Handle,
    producer: Arc<dyn Producer>,
    status_topic: String,
    alerts_topic: String,
    /// Told to stop: records still failing are given up (and nothing more is committed).
    stop: Arc<AtomicBool>,
    /// Set once an output is given up: no offset may be committed after that.
    lost: Rc<Cell<bool>>,
    held: VecDeque<Held>,
}

impl OutputDelivery {
    pub(crate) fn new(
        rt: tokio::runtime::Handle,
        producer: Arc<dyn Producer>,
        status_topic: String,
        alerts_topic: String,
        stop: Arc<AtomicBool>,
        lost: Rc<Cell<bool>>,
    ) -> Self {
        OutputDelivery {
            rt,
            producer,
            status_topic,
            alerts_topic,
            stop,
            lost,
            held: VecDeque::new(),
        }
    }

    /// Hand an epoch's outputs over, as those of input time `time`.
    pub(crate) fn hand_over(
        &mut self,
        time: u64,
        status: EncodedBatch<Bytes>,
        alerts: EncodedBatch<Bytes>,
    ) {
        if self.lost.get() {
            return;
        }
        let (p, st, at) = (&self.producer, &self.status_topic, &self.alerts_topic);
        let all = |b: &EncodedBatch<Bytes>| b.records(&(0..b.len()).collect::<Vec<_>>());
        // Both topics' batches queued before this returns: the next epoch's come after them.
        let (s, a): (Acknowledgements, Acknowledgements) = self.rt.block_on(async {
            futures::join!(p.hand_over(st, all(&status)), p.hand_over(at, all(&alerts)))
        });
        self.held.push_back(Held {
            time,
            status,
            alerts,
            acks: async move { futures::join!(s, a) }.boxed(),
        });
        self.settle();
        while self.held.len() > MAX_HELD && !self.lost.get() {
            self.settle_oldest();
        }
    }

    /// Time of the oldest epoch whose outputs are not all acknowledged.
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.held.front().map(|h| h.time)
    }

    /// Take the acknowledgements that have come, oldest epoch first; whether any epoch's
    /// outputs are now all on the bus (or given up).
    pub(crate) fn settle(&mut self) -> bool {
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        // A bus's acknowledgement may use the runtime's timers.
        let rt = self.rt.clone();
        let _runtime = rt.enter();
        let before = self.held.len();
        while let Some(front) = self.held.front_mut() {
            match front.acks.poll_unpin(&mut cx) {
                std::task::Poll::Pending => break,
                std::task::Poll::Ready(results) => {
                    let held = self.held.pop_front().expect("front just seen");
                    self.after(held, results);
                }
            }
        }
        self.held.len() < before
    }

    /// Wait for the oldest epoch's acknowledgements and act on them.
    fn settle_oldest(&mut self) {
        if let Some(mut held) = self.held.pop_front() {
            let results = self.rt.block_on(&mut held.acks);
            self.after(held, results);
        }
    }

    /// `held`'s results are in (it is no longer in `self.held`): done if all landed; else
    /// produce again what failed and, after it, whatever later epochs put in the partitions
    /// where it failed.
    fn after(&mut self, held: Held, (status, alerts): BothResults) {
        let (failed_status, failed_alerts) = (failures(&status), failures(&alerts));
        if failed_status.is_empty() && failed_alerts.is_empty() {
            return;
        }
        if let Some(e) = status.iter().chain(&alerts).find_map(|r| r.as_ref().err()) {
            tracing::error!(error = %e, status = failed_status.len(), alerts = failed_alerts.len(), "stream could not produce outputs; producing them again");
        }
        // Later epochs' results first, so each is known before anything is sent again.
        let later: Vec<(Held, BothResults)> = self
            .held
            .drain(..)
            .map(|mut h| {
                let results = self.rt.block_on(&mut h.acks);
                (h, results)
            })
            .collect();
        let mut dirty_status: BTreeSet<usize> = BTreeSet::new();
        let mut dirty_alerts: BTreeSet<usize> = BTreeSet::new();
        let first = std::iter::once((held, (status, alerts)));
        for (h, (status, alerts)) in first.chain(later) {
            if self.lost.get() {
                return;
            }
            // What failed here, and what landed in a partition where an earlier record failed
            // (it is now ahead of that record and must come after it again).
            let again = |b: &EncodedBatch<Bytes>,
                         results: &[Result<Delivery, BusError>],
                         dirty: &mut BTreeSet<usize>| {
                let mut again = Vec::new();
                for (i, r) in results.iter().enumerate() {
                    let partition = b.partition_of(i);
                    if r.is_err() || dirty.contains(&partition) {
                        dirty.insert(partition);
                        again.push(i);
                    }
                }
                again
            };
            let s = again(&h.status, &status, &mut dirty_status);
            let a = again(&h.alerts, &alerts, &mut dirty_alerts);
            self.until_landed(&h, s, a);
        }
    }

    /// Produce `h`'s records at `status_left` and `alerts_left` until they land or the stage
    /// is told to stop (then the outputs are lost to this run: nothing more is committed, so
    /// a restart produces them again).
    fn until_landed(&self, h: &Held, mut status_left: Vec<usize>, mut alerts_left: Vec<usize>) {
        let mut wait = Duration::from_millis(100);
        let (p, st, at) = (&self.producer, &self.status_topic, &self.alerts_topic);
        while !status_left.is_empty() || !alerts_left.is_empty() {
            let (rs, ra) = self.rt.block_on(async {
                futures::join!(
                    p.send_batch(st, h.status.records(&status_left)),
                    p.send_batch(at, h.alerts.records(&alerts_left))
                )
            });
            let failed = |left: &mut Vec<usize>, results: Vec<Result<_, BusError>>, topic: &str| {
                let mut keep = results.iter().map(|r| r.is_err());
                if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                    tracing::error!(error = %e, topic, retry_in = ?wait, "stream could not produce an output");
                }
                left.retain(|_| keep.next().unwrap_or(false));
            };
            failed(&mut status_left, rs, st);
            failed(&mut alerts_left, ra, at);
            if status_left.is_empty() && alerts_left.is_empty() {
                break;
            }
            if self.stop.load(Ordering::SeqCst) {
                self.lost.set(true);
                break;
            }
            // Blocking on purpose, as the timely worker waits for the bus either way; a
            // runtime timer may not be driven from here.
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}
