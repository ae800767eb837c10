//! The embedded bus: Kafka's semantics in one process, for `floodcmd demo`, tests of one stage
//! and single-machine trials.
//!
//! Retention follows consumers, not time: a partition keeps up to `capacity` records; when it
//! is full, records every group reading it has committed past are let go, and if none are, the
//! producer waits (backpressure), because dropping an unread reading is the one thing a flood
//! system must not do. Until room is needed, history stays, so a restarted stage can re-read
//! it to rebuild its state, as it would from Kafka's time-based retention.

use async_trait::async_trait;
use bytes::Bytes;
use floodcmd_model::bus::{
    partition_for, Assignment, Bus, BusError, Consumer, Delivery, Outgoing, Producer, Record,
};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// How long a producer waits for room in a full partition before giving up with `Timeout`.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

struct Entry {
    key: Bytes,
    payload: Bytes,
    timestamp_ms: i64,
}

#[derive(Default)]
struct PartitionLog {
    /// Offset of `log[0]`.
    base: u64,
    log: VecDeque<Entry>,
    /// Next offset per group reading this partition (its start until it commits).
    groups: HashMap<String, u64>,
    /// Groups that have committed here at least once.
    committed: std::collections::HashSet<String>,
}

impl PartitionLog {
    fn end(&self) -> u64 {
        self.base + self.log.len() as u64
    }

    fn trim(&mut self) -> bool {
        let Some(&low) = self.groups.values().min() else {
            return false;
        };
        let mut trimmed = false;
        while self.base < low && !self.log.is_empty() {
            self.log.pop_front();
            self.base += 1;
            trimmed = true;
        }
        trimmed
    }
}

struct Partition {
    log: Mutex<PartitionLog>,
    space: Notify,
}

struct Topic {
    name: Arc<str>,
    partitions: Vec<Partition>,
    /// Woken on every append to any partition: consumers wait on it.
    data: Notify,
}

struct Inner {
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    capacity: usize,
}

/// The in-process bus. Clones share the same topics.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

impl EmbeddedBus {
    /// A bus whose partitions hold at most `capacity` unconsumed records each.
    pub fn new(capacity: usize) -> Self {
        EmbeddedBus {
            inner: Arc::new(Inner {
                topics: Mutex::new(HashMap::new()),
                capacity: capacity.max(1),
            }),
        }
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>, BusError> {
        self.inner
            .topics
            .lock()
            .expect("bus lock")
            .get(name)
            .cloned()
            .ok_or_else(|| BusError::UnknownTopic(name.to_string()))
    }

    /// Let go of every record of `partition` below `before`, read or not, as Kafka's
    /// `DeleteRecords` (or its retention) does: a consumer behind it goes on at the first
    /// record left. Only tests and drills do this; the bus itself never drops an unread record.
    pub fn delete_records(&self, topic: &str, partition: u32, before: u64) -> Result<(), BusError> {
        let t = self.topic(topic)?;
        let part =
            t.partitions
                .get(partition as usize)
                .ok_or_else(|| BusError::UnknownPartition {
                    topic: topic.to_string(),
                    partition,
                })?;
        let mut log = part.log.lock().expect("partition lock");
        while log.base < before && !log.log.is_empty() {
            log.log.pop_front();
            log.base += 1;
        }
        drop(log);
        part.space.notify_waiters();
        Ok(())
    }

    /// Records held in memory across a topic's partitions.
    pub fn retained(&self, topic: &str) -> Result<usize, BusError> {
        let t = self.topic(topic)?;
        Ok(t.partitions
            .iter()
            .map(|p| p.log.lock().expect("partition lock").log.len())
            .sum())
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), BusError> {
        let mut topics = self.inner.topics.lock().expect("bus lock");
        topics.entry(topic.to_string()).or_insert_with(|| {
            Arc::new(Topic {
                name: Arc::from(topic),
                partitions: (0..partitions.max(1))
                    .map(|_| Partition {
                        log: Mutex::new(PartitionLog::default()),
                        space: Notify::new(),
                    })
                    .collect(),
                data: Notify::new(),
            })
        });
        Ok(())
    }

    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        Ok(self.topic(topic)?.partitions.len() as u32)
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, BusError> {
        let t = self.topic(topic)?;
        Ok(t.partitions
            .iter()
            .map(|p| p.log.lock().expect("partition lock").end())
            .collect())
    }

    async fn start_offsets(&self, topic: &str) -> Result<Vec<u64>, BusError> {
        let t = self.topic(topic)?;
        Ok(t.partitions
            .iter()
            .map(|p| p.log.lock().expect("partition lock").base)
            .collect())
    }

    async fn offsets_for_time(&self, topic: &str, timestamp_ms: i64) -> Result<Vec<u64>, BusError> {
        let t = self.topic(topic)?;
        Ok(t.partitions
            .iter()
            .map(|p| {
                let log = p.log.lock().expect("partition lock");
                let hit = log.log.iter().position(|e| e.timestamp_ms >= timestamp_ms);
                hit.map_or(log.end(), |i| log.base + i as u64)
            })
            .collect())
    }

    async fn committed(&self, group: &str, topic: &str) -> Result<Vec<Option<u64>>, BusError> {
        let t = self.topic(topic)?;
        Ok(t.partitions
            .iter()
            .map(|p| {
                let log = p.log.lock().expect("partition lock");
                log.committed
                    .contains(group)
                    .then(|| log.groups.get(group).copied().unwrap_or(0))
            })
            .collect())
    }

    fn producer(&self) -> Arc<dyn Producer> {
        Arc::new(EmbeddedProducer {
            bus: self.clone(),
            last: Mutex::new(None),
        })
    }

    async fn consumer(
        &self,
        group: &str,
        topic: &str,
        assignment: Assignment,
    ) -> Result<Box<dyn Consumer>, BusError> {
        let t = self.topic(topic)?;
        let n = t.partitions.len() as u32;
        let for_group = matches!(assignment, Assignment::GroupPositions(_));
        let wanted = assignment.resolve(topic, n)?;
        let assigned: Vec<u32> = wanted.iter().map(|(p, _)| *p).collect();
        let mut positions = HashMap::new();
        for &(p, from) in &wanted {
            let mut log = t.partitions[p as usize].log.lock().expect("partition lock");
            let base = log.base;
            // A reader at an explicit position (a rebuild, a replay, a ledger read from the
            // start) does not hold history back until it commits; one that resumes at its
            // group's position does, from the moment it exists.
            let at = match from {
                // Resolved by the caller for the group: held from there if the group is new
                // here (a group this partition knows is held at its commit already).
                Some(at) if for_group => {
                    log.groups.entry(group.to_string()).or_insert(at.max(base));
                    at
                }
                Some(at) => at,
                None => *log.groups.entry(group.to_string()).or_insert(base),
            };
            positions.insert(p, at.max(base));
        }
        Ok(Box::new(EmbeddedConsumer {
            topic: t,
            group: group.to_string(),
            assigned,
            positions,
            next_partition: 0,
        }))
    }
}

struct EmbeddedProducer {
    bus: EmbeddedBus,
    /// The topic sent to last. Topics are never removed or replaced, so it stays valid; it
    /// spares each send the bus-wide topic map lock, which every producer contends for.
    last: Mutex<Option<Arc<Topic>>>,
}

impl EmbeddedProducer {
    fn topic(&self, name: &str) -> Result<Arc<Topic>, BusError> {
        let mut last = self.last.lock().expect("producer lock");
        match last.as_ref() {
            Some(t) if &*t.name == name => Ok(t.clone()),
            _ => {
                let t = self.bus.topic(name)?;
                *last = Some(t.clone());
                Ok(t)
            }
        }
    }

    /// Append `entry` if the partition has room (after letting go of what every group has
    /// committed); its offset, or `None` with `entry` left in place.
    fn append(&self, t: &Topic, partition: u32, entry: &mut Option<Entry>) -> Option<u64> {
        let mut log = t.partitions[partition as usize]
            .log
            .lock()
            .expect("partition lock");
        // History is kept until room is needed (a restarted stage re-reads it to rebuild
        // its state); then only what every group has committed is let go.
        if log.log.len() >= self.bus.inner.capacity {
            log.trim();
        }
        if log.log.len() >= self.bus.inner.capacity {
            return None;
        }
        let offset = log.end();
        log.log.push_back(entry.take().expect("appended once"));
        drop(log);
        t.data.notify_waiters();
        Some(offset)
    }
}

#[async_trait]
impl Producer for EmbeddedProducer {
    /// Each partition locked once for all of its records that fit, one wakeup per batch. The
    /// default (a future per record, joined) was a sixth of the stream stage's profile, as
    /// the stage hands the bus every epoch's outputs in one batch. A partition that fills up
    /// midway takes the rest of its records one by one, in order, waiting for room as `send`
    /// does.
    async fn send_batch(
        &self,
        topic: &str,
        records: Vec<Outgoing>,
    ) -> Vec<Result<Delivery, BusError>> {
        let t = match self.topic(topic) {
            Ok(t) => t,
            Err(_) => {
                return records
                    .iter()
                    .map(|_| Err(BusError::UnknownTopic(topic.to_string())))
                    .collect()
            }
        };
        let n = t.partitions.len() as u32;
        let mut results: Vec<Option<Result<Delivery, BusError>>> =
            (0..records.len()).map(|_| None).collect();
        // Per partition, its records' places in the batch, in order.
        // Sized for an even spread and a quarter more, so that building them seldom grows one.
        let even = records.len() / n as usize;
        let share = even + even / 4 + 8;
        let mut by_partition: Vec<Vec<(usize, Outgoing)>> =
            (0..n).map(|_| Vec::with_capacity(share)).collect();
        for (i, r) in records.into_iter().enumerate() {
            by_partition[r.partition(n) as usize].push((i, r));
        }
        let mut overflow = Vec::new();
        for (partition, items) in by_partition.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            let mut items = items.into_iter();
            {
                let mut log = t.partitions[partition].log.lock().expect("partition lock");
                let capacity = self.bus.inner.capacity;
                for (i, r) in items.by_ref() {
                    if log.log.len() >= capacity {
                        log.trim();
                    }
                    if log.log.len() >= capacity {
                        overflow.push((i, r));
                        break;
                    }
                    let offset = log.end();
                    log.log.push_back(Entry {
                        key: r.key,
                        payload: r.payload,
                        timestamp_ms: r.timestamp_ms,
                    });
                    results[i] = Some(Ok(Delivery {
                        partition: partition as u32,
                        offset,
                    }));
                }
            }
            overflow.extend(items);
        }
        t.data.notify_waiters();
        // In batch order, which keeps each partition's order.
        overflow.sort_by_key(|(i, _)| *i);
        for (i, r) in overflow {
            results[i] = Some(self.send(topic, &r.key, r.payload, r.timestamp_ms).await);
        }
        results
            .into_iter()
            .map(|r| r.expect("every record has a result"))
            .collect()
    }

    async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: Bytes,
        timestamp_ms: i64,
    ) -> Result<Delivery, BusError> {
        let t = self.topic(topic)?;
        let partition = partition_for(key, t.partitions.len() as u32);
        let part = &t.partitions[partition as usize];
        let mut entry = Some(Entry {
            key: Bytes::copy_from_slice(key),
            payload,
            timestamp_ms,
        });
        // Room at once is the usual case: registering for a wakeup first (two more locks of
        // the waiter list) is only needed when there may be a wait.
        if let Some(offset) = self.append(&t, partition, &mut entry) {
            return Ok(Delivery { partition, offset });
        }
        loop {
            // Register interest before looking, so a trim between the look and the wait
            // cannot be missed.
            let space = part.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if let Some(offset) = self.append(&t, partition, &mut entry) {
                return Ok(Delivery { partition, offset });
            }
            // Wait for room, but not for ever: a caller that gets `Timeout` can tell its
            // client to come back (429) instead of holding the request open.
            if tokio::time::timeout(SEND_TIMEOUT, space).await.is_err() {
                return Err(BusError::Timeout {
                    topic: topic.to_string(),
                    after: SEND_TIMEOUT,
                });
            }
        }
    }
}

struct EmbeddedConsumer {
    topic: Arc<Topic>,
    group: String,
    assigned: Vec<u32>,
    positions: HashMap<u32, u64>,
    next_partition: usize,
}

impl EmbeddedConsumer {
    fn take(&mut self, max: usize) -> Vec<Record> {
        if self.assigned.is_empty() {
            return Vec::new();
        }
        // Sized to what there is first: grown a record at a time, a full poll was a dozen
        // reallocations and copies of everything taken so far.
        let available: usize = self
            .assigned
            .iter()
            .map(|p| {
                let log = self.topic.partitions[*p as usize]
                    .log
                    .lock()
                    .expect("partition lock");
                let pos = self.positions.get(p).copied().unwrap_or(0).max(log.base);
                (log.end().saturating_sub(pos)) as usize
            })
            .sum();
        let mut out = Vec::with_capacity(available.min(max));
        // Round-robin over partitions so one busy partition cannot starve the others.
        for i in 0..self.assigned.len() {
            if out.len() >= max {
                break;
            }
            let idx = (self.next_partition + i) % self.assigned.len();
            let p = self.assigned[idx];
            let log = self.topic.partitions[p as usize]
                .log
                .lock()
                .expect("partition lock");
            let pos = self
                .positions
                .get_mut(&p)
                .expect("assigned partitions have positions");
            if *pos < log.base {
                *pos = log.base;
            }
            let start = (*pos - log.base) as usize;
            for e in log.log.iter().skip(start).take(max - out.len()) {
                out.push(Record {
                    topic: self.topic.name.clone(),
                    partition: p,
                    offset: *pos,
                    key: e.key.clone(),
                    payload: e.payload.clone(),
                    timestamp_ms: e.timestamp_ms,
                });
                *pos += 1;
            }
        }
        self.next_partition = (self.next_partition + 1) % self.assigned.len();
        out
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>, BusError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let topic = self.topic.clone();
            let data = topic.data.notified();
            tokio::pin!(data);
            data.as_mut().enable();
            let got = self.take(max.max(1));
            if !got.is_empty() {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, data).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn commit(&mut self, partition: u32, next: u64) -> Result<(), BusError> {
        let part = self
            .topic
            .partitions
            .get(partition as usize)
            .ok_or_else(|| BusError::UnknownPartition {
                topic: self.topic.name.to_string(),
                partition,
            })?;
        {
            let mut log = part.log.lock().expect("partition lock");
            let slot = log.groups.entry(self.group.clone()).or_insert(0);
            *slot = (*slot).max(next);
            log.committed.insert(self.group.clone());
        }
        // A producer waiting on a full partition may need exactly this commit.
        part.space.notify_waiters();
        Ok(())
    }

    async fn seek(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        match self.positions.get_mut(&partition) {
            Some(pos) => {
                *pos = offset;
                Ok(())
            }
            None => Err(BusError::UnknownPartition {
                topic: self.topic.name.to_string(),
                partition,
            }),
        }
    }

    fn assigned(&self) -> Vec<u32> {
        self.assigned.clone()
    }
}
