//! One worker's outputs of an epoch, encoded for the bus as the engine makes them and handed
//! over in one go when the epoch is applied (or, in a fed run, passed on as they are).
//!
//! Encoding a status as the engine makes it reads the status while it is in the cache. The
//! stage gathered an epoch's outputs into a vector first: each status cloned from the point's
//! state and written out, a few hundred bytes apiece (more than the cache holds for an epoch
//! of devices that all report on the minute), then read back, encoded and dropped.

use crate::delivery::{EncodedBatch, OutputDelivery};
use crate::engine::{Outputs, StreamOutput};
use floodcmd_model::codec::BatchEncoder;
use floodcmd_model::event::{AlertTransition, PointStatus};
use prometheus::IntCounter;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Where a fed run's outputs go.
pub(crate) type FeedOutput = std::sync::mpsc::SyncSender<Vec<StreamOutput>>;

/// Where an epoch's outputs go once it is applied.
enum Destination {
    /// Encoded, one batch per topic, and handed to the bus.
    Bus(Rc<RefCell<OutputDelivery>>),
    /// As they are, to whoever fed the run. `lost` is set if it has gone.
    Fed {
        tx: FeedOutput,
        outputs: Vec<StreamOutput>,
        lost: Rc<Cell<bool>>,
    },
}

/// The outputs of the epoch being applied: [`EpochOutputs::begin`] it, give it to the engine,
/// then [`EpochOutputs::finish`] it.
pub(crate) struct EpochOutputs {
    to: Destination,
    status: EncodedBatch<BatchEncoder>,
    alerts: EncodedBatch<BatchEncoder>,
    /// How each topic's next batch is sized.
    status_room: Room,
    alerts_room: Room,
    /// Outputs of each topic so far this epoch.
    statuses: usize,
    transitions: usize,
    /// Readings of the epoch being applied.
    readings: usize,
    /// Counters resolved once: per output they were a labelled-metric lookup.
    status_count: IntCounter,
    transition_counts: Vec<(&'static str, IntCounter)>,
}

impl EpochOutputs {
    /// Outputs bound for the bus through `delivery`, whose topics have these partitions.
    pub(crate) fn to_bus(
        delivery: Rc<RefCell<OutputDelivery>>,
        status_partitions: u32,
        alerts_partitions: u32,
        status_count: IntCounter,
    ) -> Self {
        Self::new(
            Destination::Bus(delivery),
            status_partitions,
            alerts_partitions,
            status_count,
        )
    }

    /// Outputs passed on as they are, through `tx`; `lost` is set if its receiver has gone.
    pub(crate) fn to_feed(tx: FeedOutput, lost: Rc<Cell<bool>>, status_count: IntCounter) -> Self {
        let to = Destination::Fed {
            tx,
            outputs: Vec::new(),
            lost,
        };
        Self::new(to, 1, 1, status_count)
    }

    fn new(
        to: Destination,
        status_partitions: u32,
        alerts_partitions: u32,
        status_count: IntCounter,
    ) -> Self {
        EpochOutputs {
            to,
            status: EncodedBatch::new(status_partitions, 0, 0),
            alerts: EncodedBatch::new(alerts_partitions, 0, 0),
            // A status per reading at first, transitions only as they come.
            status_room: Room::new(status_partitions, (1, 256)),
            alerts_room: Room::new(alerts_partitions, (0, 320)),
            statuses: 0,
            transitions: 0,
            readings: 0,
            status_count,
            transition_counts: Vec::new(),
        }
    }

    /// Start the outputs of an epoch of `readings` readings (none: silence alone).
    pub(crate) fn begin(&mut self, readings: usize) {
        debug_assert!(
            self.is_empty(),
            "an epoch's outputs finished before the next"
        );
        // Outputs not handed over yet stay where they are, to go with the next `finish`.
        if !self.is_empty() || !matches!(self.to, Destination::Bus(_)) {
            return;
        }
        self.status = self.status_room.batch(readings);
        self.alerts = self.alerts_room.batch(readings);
        self.readings = readings;
    }

    fn is_empty(&self) -> bool {
        self.statuses == 0 && self.transitions == 0
    }

    /// Hand the epoch's outputs over, as of input time `time`; nothing if it has none.
    pub(crate) fn finish(&mut self, time: u64) {
        if self.is_empty() {
            return;
        }
        // Counted once per batch: the counter is shared by every worker, and an atomic add
        // per status made them contend for it.
        self.status_count.inc_by(self.statuses as u64);
        let (statuses, transitions) = (self.statuses, self.transitions);
        (self.statuses, self.transitions) = (0, 0);
        match &mut self.to {
            Destination::Fed { tx, outputs, lost } => {
                // If whoever fed the run has gone, nothing more can be delivered: as with a
                // lost output on the bus, say so rather than pretend.
                if tx.send(std::mem::take(outputs)).is_err() {
                    lost.set(true);
                }
            }
            Destination::Bus(delivery) => {
                self.status_room
                    .learn(&self.status, statuses, self.readings);
                self.alerts_room
                    .learn(&self.alerts, transitions, self.readings);
                let status = std::mem::replace(&mut self.status, self.status_room.batch(0));
                let alerts = std::mem::replace(&mut self.alerts, self.alerts_room.batch(0));
                delivery
                    .borrow_mut()
                    .hand_over(time, status.finish(), alerts.finish());
            }
        }
    }
}

/// How much room a topic's next batch starts with, partition by partition: what the last
/// epoch with readings wrote to each partition, per reading, times the readings of this one,
/// and a sixteenth more. A buffer that runs out of room is reallocated and all it holds
/// copied (unless the allocator can grow it where it is); one left much of it empty is shrunk
/// when handed over (a record pins its whole buffer while a bus keeps it).
///
/// Only an epoch with at most [`RECORDS_PER_READING`] records a reading is learned from: an
/// epoch of a few readings can carry the silence of thousands of points (the engine judges
/// silence up to each epoch before applying it), and scaled up to the next minute's readings
/// its bytes per reading would reserve gigabytes.
///
/// Per reading, because an epoch's outputs are not known until it is applied: a status per
/// point whose status changed, a transition per so many readings. Partition by partition,
/// because a worker writes to only some of a topic's partitions: it owns the points whose key
/// hash is its index modulo the workers, and a key's partition is the same hash modulo the
/// partitions, so with 2 workers and 4 partitions each worker writes to 2. Sized as if it
/// wrote to all 4, each of its buffers ran out of room every epoch.
/// Records a reading may make that an epoch learned from holds at most (a status, and a
/// transition or three).
const RECORDS_PER_READING: usize = 4;

struct Room {
    partitions: u32,
    /// Before any epoch with records of this topic: records guessed per reading, and the
    /// bytes each.
    guess: (usize, usize),
    /// The last epoch with readings and records of this topic: bytes written per partition,
    /// its records, and its readings.
    last: Option<(Vec<usize>, usize, usize)>,
}

impl Room {
    fn new(partitions: u32, guess: (usize, usize)) -> Self {
        Room {
            partitions,
            guess,
            last: None,
        }
    }

    /// An empty batch for an epoch of `readings` readings.
    fn batch(&self, readings: usize) -> EncodedBatch<BatchEncoder> {
        match &self.last {
            Some((bytes, records, per)) if readings > 0 => EncodedBatch::with_room(
                bytes.iter().map(|&b| {
                    let room = (b * readings).div_ceil(*per);
                    room + room / 16
                }),
                (records * readings).div_ceil(*per),
            ),
            // Nothing known: the guess, spread over every partition.
            _ => EncodedBatch::new(self.partitions, readings * self.guess.0, self.guess.1),
        }
    }

    /// Learn from `batch`, which holds `records` records from an epoch of `readings`.
    fn learn(&mut self, batch: &EncodedBatch<BatchEncoder>, records: usize, readings: usize) {
        if records > 0 && readings > 0 && records <= RECORDS_PER_READING * readings {
            self.last = Some((batch.partition_bytes().collect(), records, readings));
        }
    }
}

impl Outputs for EpochOutputs {
    fn status(&mut self, status: &PointStatus) {
        self.statuses += 1;
        match &mut self.to {
            Destination::Bus(_) => self.status.push(&status.point, status.as_of_ms, |buffer| {
                buffer.status(status)
            }),
            Destination::Fed { outputs, .. } => outputs.status(status),
        }
    }

    fn transition(&mut self, transition: AlertTransition) {
        self.transitions += 1;
        match &mut self.to {
            Destination::Bus(_) => {
                let kind = transition.transition.as_str();
                let at = match self.transition_counts.iter().position(|(k, _)| *k == kind) {
                    Some(at) => at,
                    None => {
                        let counter = crate::dataflow::metrics()
                            .outputs
                            .with_label_values(&[kind]);
                        self.transition_counts.push((kind, counter));
                        self.transition_counts.len() - 1
                    }
                };
                self.transition_counts[at].1.inc();
                self.alerts
                    .push(&transition.point, transition.event_ms, |buffer| {
                        buffer.transition(&transition)
                    });
            }
            Destination::Fed { outputs, .. } => outputs.transition(transition),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, TimedReading};
    use bytes::Bytes;
    use floodcmd_model::bus::{BusError, Delivery, Outgoing, Producer};
    use floodcmd_model::codec::encode;
    use floodcmd_model::time::{ManualClock, Millis};
    use floodcmd_model::{District, Reading, SensorKind};
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    /// A record landed: its topic, key, payload and timestamp.
    type Landed = (String, Vec<u8>, Vec<u8>, i64);

    /// Lands every record, keeping each in the order it came.
    #[derive(Default)]
    struct Landing {
        landed: Mutex<Vec<Landed>>,
    }

    #[async_trait::async_trait]
    impl Producer for Landing {
        async fn send(&self, _: &str, _: &[u8], _: Bytes, _: i64) -> Result<Delivery, BusError> {
            unreachable!("the stage sends batches")
        }

        async fn send_batch(
            &self,
            topic: &str,
            records: Vec<Outgoing>,
        ) -> Vec<Result<Delivery, BusError>> {
            let mut landed = self.landed.lock().unwrap();
            records
                .into_iter()
                .map(|r| {
                    landed.push((
                        topic.to_string(),
                        r.key.to_vec(),
                        r.payload.to_vec(),
                        r.timestamp_ms,
                    ));
                    Ok(Delivery {
                        partition: 0,
                        offset: 0,
                    })
                })
                .collect()
        }
    }

    /// Every sensor of the sample district read each minute for `minutes`, the depth rising
    /// through every level and the rain heavy, so statuses, raises and upgrades all happen.
    fn epochs(district: &District, t0: Millis, minutes: i64) -> Vec<(Millis, Vec<TimedReading>)> {
        (0..minutes)
            .map(|m| {
                let ts_ms = t0 + m * 60_000;
                let readings = district
                    .points
                    .iter()
                    .flat_map(|p| p.sensors.iter().map(move |s| (p, s)))
                    .map(|(p, s)| TimedReading {
                        reading: Reading {
                            sensor: s.id.as_str().into(),
                            point: p.id.as_str().into(),
                            kind: s.kind,
                            ts_ms,
                            value: match s.kind {
                                SensorKind::Depth => 2.0 * m as f64,
                                SensorKind::Rain => 4.0,
                            },
                            seq: None,
                            received_ms: ts_ms,
                        },
                        late: false,
                        replay: false,
                    })
                    .collect();
                (ts_ms, readings)
            })
            .collect()
    }

    /// What the engine gives the bus through [`EpochOutputs`] is, topic by topic, record for
    /// record, what it gives a vector: each status and transition keyed by its point, encoded
    /// as `encode` encodes it, stamped with its event time, in the engine's order; and
    /// epochs with nothing to say hand nothing over.
    #[test]
    fn outputs_encoded_as_made_are_the_engines_outputs_in_its_order() {
        let district = District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap();
        let t0: Millis = 1_783_000_000_000;
        let clock = Arc::new(ManualClock::new(t0));
        let mut by_vec = Engine::new(&district, |_| true, clock.clone(), t0);
        let mut by_sink = Engine::new(&district, |_| true, clock.clone(), t0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let landing = Arc::new(Landing::default());
        let delivery = Rc::new(RefCell::new(OutputDelivery::new(
            rt.handle().clone(),
            landing.clone(),
            "status".into(),
            "alerts".into(),
            Arc::new(AtomicBool::new(false)),
            Rc::new(Cell::new(false)),
            Arc::new(crate::dataflow::StopAt::new()),
        )));
        let count = IntCounter::new("statuses", "statuses").unwrap();
        let mut sink = EpochOutputs::to_bus(delivery.clone(), 3, 2, count.clone());
        let mut expected = Vec::new();
        for (ts_ms, readings) in epochs(&district, t0, 40) {
            let mut out = Vec::new();
            by_vec.apply_epoch(ts_ms, &readings, &mut out);
            expected.extend(out);
            sink.begin(readings.len());
            by_sink.apply_epoch(ts_ms, &readings, &mut sink);
            sink.finish((ts_ms / 1000) as u64);
        }
        // Then silence: every sensor stops, and an epoch with no readings says so.
        let quiet = t0 + 60 * 60_000;
        let mut out = Vec::new();
        by_vec.advance_to(quiet, &mut out);
        expected.extend(out);
        sink.begin(0);
        by_sink.advance_to(quiet, &mut sink);
        sink.finish((quiet / 1000) as u64);
        delivery.borrow_mut().settle();
        assert_eq!(delivery.borrow().oldest(), None, "every batch acknowledged");

        let landed = landing.landed.lock().unwrap().clone();
        let topic = |name: &str| -> Vec<_> {
            landed
                .iter()
                .filter(|r| r.0 == name)
                .map(|r| (r.1.clone(), r.2.clone(), r.3))
                .collect()
        };
        let want_status: Vec<_> = expected
            .iter()
            .filter_map(|o| match o {
                StreamOutput::Status(s) => {
                    Some((s.point.as_bytes().to_vec(), encode(s).to_vec(), s.as_of_ms))
                }
                StreamOutput::Transition(_) => None,
            })
            .collect();
        let want_alerts: Vec<_> = expected
            .iter()
            .filter_map(|o| match o {
                StreamOutput::Transition(t) => {
                    Some((t.point.as_bytes().to_vec(), encode(t).to_vec(), t.event_ms))
                }
                StreamOutput::Status(_) => None,
            })
            .collect();
        let transitions = |kind: &str| {
            expected
                .iter()
                .filter(
                    |o| matches!(o, StreamOutput::Transition(t) if t.transition.as_str() == kind),
                )
                .count()
        };
        assert!(
            transitions("raised") > 0 && transitions("upgraded") > 0 && transitions("silent") > 0,
            "the series raises, upgrades and goes silent"
        );
        assert!(want_status.len() > 1_000, "{} statuses", want_status.len());
        assert_eq!(topic("status"), want_status);
        assert_eq!(topic("alerts"), want_alerts);
        assert_eq!(count.get(), want_status.len() as u64);
    }

    /// A batch's room follows where the last one wrote: a worker whose points' keys all fall
    /// in 2 of 4 partitions gets room in those 2 for as many records again (none grows), and
    /// none in the others.
    #[test]
    fn the_next_batch_has_room_where_the_last_one_wrote() {
        use floodcmd_model::bus::{murmur2, partition_of_hash};
        let keys: Vec<String> = (0..)
            .map(|i| format!("DP-{i:05}"))
            .filter(|k| partition_of_hash(murmur2(k.as_bytes()), 4).is_multiple_of(2))
            .take(500)
            .collect();
        let write = |batch: &mut EncodedBatch<BatchEncoder>| {
            for k in &keys {
                batch.push(k, 0, |buffer| buffer.bytes(&[b'x'; 100]));
            }
        };
        let mut room = Room::new(4, (1, 64));
        // The first batch, knowing nothing, spreads its room over all 4: both of the 2
        // partitions written outgrow it.
        let mut first = room.batch(keys.len());
        let initial = first.partition_room();
        write(&mut first);
        let written: Vec<usize> = first.partition_bytes().collect();
        assert_eq!((written[1], written[3]), (0, 0));
        assert!(
            initial[0] < written[0] && initial[2] < written[2],
            "room {initial:?} for {written:?}"
        );
        room.learn(&first, keys.len(), keys.len());
        let next = room.batch(keys.len());
        let given = next.partition_room();
        assert_eq!((given[1], given[3]), (0, 0), "{given:?}");
        for p in [0, 2] {
            assert!(
                given[p] >= written[p],
                "partition {p}: {given:?} for {written:?}"
            );
            assert!(
                given[p] <= written[p] + written[p] / 8,
                "partition {p}: {given:?} for {written:?}"
            );
        }
        // Half the records: about half the room.
        let half = room.batch(keys.len() / 2);
        assert!(half.partition_room()[0] <= given[0] / 2 + 1);
        // Nothing expected (silence alone): nothing reserved.
        assert_eq!(room.batch(0).partition_room(), [0, 0, 0, 0]);
        // An epoch of 2 readings that carried the silence of the 500 points is not learned
        // from: scaled up to 500 readings again, it would reserve 250 times the room.
        room.learn(&first, keys.len(), 2);
        assert_eq!(room.batch(keys.len()).partition_room(), given);
    }
}
