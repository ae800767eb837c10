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
//! - [`OutputDelivery::oldest`] is the least time of the batches not yet all acknowledged
//!   (an epoch's own time, or for silence the operator's held time then); the rules operator
//!   holds its capability there, so the probe (which every worker's commits follow) does not
//!   pass it;
//! - a record the bus fails is produced again until it lands (or the stage is told to stop:
//!   then no worker of this process commits anything it had not found safe before,
//!   [`StopAt::give_up`]; so too when a worker fails). Records after it in the same
//!   partition, of its epoch or later ones, or of the same retry, may have landed meanwhile; they are produced again
//!   after it, so each key's last record is the engine's last. What a consumer of the key
//!   then sees is a suffix of its records produced again, as after a restart of the stage
//!   (which produces again whatever follows the committed offsets): outputs are at least once
//!   already.

use crate::dataflow::StopAt;
use bytes::Bytes;
use floodcmd_model::bus::{
    murmur2, partition_of_hash, Acknowledgements, BusError, Delivery, Outgoing, Producer,
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
    /// Per record, in the engine's order.
    places: Vec<Place>,
}

/// Where one record of an [`EncodedBatch`] is.
struct Place {
    partition: u32,
    /// Its key's hash, taken while the key is in the cache, for the bus (`Outgoing::key_hash`).
    key_hash: u32,
    /// Its key's and its payload's places in its partition's buffer.
    key: Range<usize>,
    payload: Range<usize>,
    timestamp_ms: Millis,
}

impl EncodedBatch<BatchEncoder> {
    pub(crate) fn new(partitions: u32, records: usize, bytes_each: usize) -> Self {
        // A partition's share of the records, and room for the unevenness of hashing (about
        // two standard deviations more, and a sixteenth: the points are a fixed set, so a
        // partition's share of a big epoch is off by its share of the points, not by chance
        // alone): sized to the mean alone, about half the buffers grew every epoch, each a
        // reallocation and a copy of all written so far. Nothing for a topic with nothing.
        let mean = records.div_ceil(partitions.max(1) as usize);
        let uneven = if partitions > 1 && mean > 0 {
            2 * mean.isqrt() + mean / 16 + 4
        } else {
            0
        };
        let share = (mean + uneven) * bytes_each;
        EncodedBatch {
            buffers: (0..partitions.max(1))
                .map(|_| BatchEncoder::with_capacity(share))
                .collect(),
            places: Vec::with_capacity(records),
        }
    }

    /// A batch for about `records` records whose partitions' buffers start with room for
    /// `bytes` each, in partition order.
    pub(crate) fn with_room(bytes: impl IntoIterator<Item = usize>, records: usize) -> Self {
        EncodedBatch {
            buffers: bytes.into_iter().map(BatchEncoder::with_capacity).collect(),
            places: Vec::with_capacity(records),
        }
    }

    /// Bytes written to each partition, in partition order.
    pub(crate) fn partition_bytes(&self) -> impl Iterator<Item = usize> + '_ {
        self.buffers.iter().map(BatchEncoder::len)
    }

    /// Add a record keyed `key`, whose payload `write` puts in the buffer it is handed.
    pub(crate) fn push(
        &mut self,
        key: &str,
        timestamp_ms: Millis,
        write: impl FnOnce(&mut BatchEncoder) -> Range<usize>,
    ) {
        let key_hash = murmur2(key.as_bytes());
        let partition = partition_of_hash(key_hash, self.buffers.len() as u32);
        let buffer = &mut self.buffers[partition as usize];
        let key = buffer.bytes(key.as_bytes());
        let payload = write(buffer);
        self.places.push(Place {
            partition,
            key_hash,
            key,
            payload,
            timestamp_ms,
        });
    }

    /// Room each partition's buffer has, written or not, in partition order.
    #[cfg(test)]
    pub(crate) fn partition_room(&self) -> Vec<usize> {
        self.buffers.iter().map(BatchEncoder::capacity).collect()
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
        self.places[i].partition as usize
    }

    /// The records at `which`, in that order; each a slice of its partition's buffer.
    fn records(&self, which: &[usize]) -> Vec<Outgoing> {
        which
            .iter()
            .map(|&i| {
                let place = &self.places[i];
                let buffer = &self.buffers[place.partition as usize];
                Outgoing {
                    key: buffer.slice(place.key.clone()),
                    payload: buffer.slice(place.payload.clone()),
                    timestamp_ms: place.timestamp_ms,
                    key_hash: Some(place.key_hash),
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

/// Of the records at `sent` (places in `b`, in the order sent) with their `results`, those to
/// produce again: each that failed, and each after it in the same partition, which landed
/// ahead of a record that must come first. `dirty` holds partitions where a record failed
/// before these, and gains those where one fails here.
fn send_again(
    b: &EncodedBatch<Bytes>,
    sent: &[usize],
    results: &[Result<Delivery, BusError>],
    dirty: &mut BTreeSet<usize>,
) -> Vec<usize> {
    let mut again = Vec::new();
    for (&i, r) in sent.iter().zip(results) {
        let partition = b.partition_of(i);
        if r.is_err() || dirty.contains(&partition) {
            dirty.insert(partition);
            again.push(i);
        }
    }
    again
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
    /// Told when an output is given up, so that no other worker commits either.
    stop_at: Arc<StopAt>,
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
        stop_at: Arc<StopAt>,
    ) -> Self {
        OutputDelivery {
            rt,
            producer,
            status_topic,
            alerts_topic,
            stop,
            lost,
            stop_at,
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

    /// The worker failed: what is held is given up, no worker commits anything more (see
    /// [`StopAt::give_up`]), and
    /// no more is taken, so the rules operator can let go of its time once its input ends
    /// (its acknowledgements were taken by the worker's loop, which is gone).
    pub(crate) fn abandon(&mut self) {
        self.give_up();
        self.held.clear();
    }

    /// Outputs given up: nothing more is committed, by this worker or any other.
    fn give_up(&self) {
        self.stop_at.give_up();
        self.lost.set(true);
    }

    /// The least time of the batches whose outputs are not all acknowledged. (Not always the
    /// first's: silence is handed over as of the operator's held time, which can be below an
    /// epoch handed over before it.)
    pub(crate) fn oldest(&self) -> Option<u64> {
        self.held.iter().map(|h| h.time).min()
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
        let all = |b: &EncodedBatch<Bytes>| (0..b.len()).collect::<Vec<_>>();
        let first = std::iter::once((held, (status, alerts)));
        for (h, (status, alerts)) in first.chain(later) {
            if self.lost.get() {
                return;
            }
            let s = send_again(&h.status, &all(&h.status), &status, &mut dirty_status);
            let a = send_again(&h.alerts, &all(&h.alerts), &alerts, &mut dirty_alerts);
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
            let failed = |b: &EncodedBatch<Bytes>,
                          left: &mut Vec<usize>,
                          results: Vec<Result<_, BusError>>,
                          topic: &str| {
                if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                    tracing::error!(error = %e, topic, retry_in = ?wait, "stream could not produce an output");
                }
                *left = send_again(b, left, &results, &mut BTreeSet::new());
            };
            failed(&h.status, &mut status_left, rs, st);
            failed(&h.alerts, &mut alerts_left, ra, at);
            if status_left.is_empty() && alerts_left.is_empty() {
                break;
            }
            if self.stop.load(Ordering::SeqCst) {
                self.give_up();
                break;
            }
            // Blocking on purpose, as the timely worker waits for the bus either way; a
            // runtime timer may not be driven from here.
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records keyed `keys[i]` with payload `i`, in a topic of `partitions`.
    fn batch(partitions: u32, keys: &[&str]) -> EncodedBatch<Bytes> {
        let mut b = EncodedBatch::new(partitions, keys.len(), 16);
        for (i, key) in keys.iter().enumerate() {
            b.push(key, 0, |buffer| buffer.bytes(i.to_string().as_bytes()));
        }
        b.finish()
    }

    #[test]
    fn what_follows_a_failure_in_its_partition_is_sent_again_and_nothing_before_it() {
        let b = batch(1, &["a", "b", "c", "d"]);
        let ok = || {
            Ok(Delivery {
                partition: 0,
                offset: 0,
            })
        };
        let failed = || Err(BusError::Client("lost".into()));
        let results = vec![ok(), failed(), ok(), ok()];
        assert_eq!(
            send_again(&b, &[0, 1, 2, 3], &results, &mut BTreeSet::new()),
            vec![1, 2, 3]
        );
        // A partition dirty from before: all of it again, failed or not.
        let results = vec![ok(), ok()];
        let mut dirty = BTreeSet::from([0]);
        assert_eq!(send_again(&b, &[2, 3], &results, &mut dirty), vec![2, 3]);
        assert!(send_again(&b, &[2, 3], &results, &mut BTreeSet::new()).is_empty());
    }

    /// Lands what its plan does not fail, in order; keeps every payload that landed.
    struct PlannedProducer {
        /// Per call to the status topic, the places that fail (later calls: none).
        plan: Mutex<VecDeque<Vec<usize>>>,
        landed: Mutex<Vec<Vec<u8>>>,
    }

    #[async_trait::async_trait]
    impl Producer for PlannedProducer {
        async fn send(
            &self,
            _topic: &str,
            _key: &[u8],
            _payload: Bytes,
            _timestamp_ms: i64,
        ) -> Result<Delivery, BusError> {
            unreachable!("the stage sends batches")
        }

        async fn send_batch(
            &self,
            topic: &str,
            records: Vec<Outgoing>,
        ) -> Vec<Result<Delivery, BusError>> {
            let fail = if topic == "status" {
                self.plan.lock().unwrap().pop_front().unwrap_or_default()
            } else {
                Vec::new()
            };
            records
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    if fail.contains(&i) {
                        return Err(BusError::Client("lost".into()));
                    }
                    self.landed.lock().unwrap().push(r.payload.to_vec());
                    Ok(Delivery {
                        partition: 0,
                        offset: 0,
                    })
                })
                .collect()
        }
    }

    #[test]
    fn a_retry_that_fails_a_record_and_lands_the_next_of_its_key_sends_that_one_again() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Two records of one key: the first handed over fails and the second lands; so again
        // when both are produced again; the third time both land.
        let producer = Arc::new(PlannedProducer {
            plan: Mutex::new(VecDeque::from([vec![0], vec![0]])),
            landed: Mutex::new(Vec::new()),
        });
        let lost = Rc::new(Cell::new(false));
        let mut delivery = OutputDelivery::new(
            rt.handle().clone(),
            producer.clone(),
            "status".into(),
            "alerts".into(),
            Arc::new(AtomicBool::new(false)),
            lost.clone(),
            Arc::new(StopAt::new()),
        );
        delivery.hand_over(7, batch(1, &["a", "a"]), batch(1, &[]));
        assert_eq!(delivery.oldest(), None, "settled: every record landed");
        assert!(!lost.get());
        let landed = producer.landed.lock().unwrap().clone();
        let text: Vec<String> = landed
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        // The key's last record is the engine's last.
        assert_eq!(text, ["1", "1", "0", "1"]);
    }
}
