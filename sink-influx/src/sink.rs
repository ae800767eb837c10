//! The sink stage: `readings`, `status` and `alerts` in; batches of lines to the time-series
//! server out; offsets committed only behind the server's acknowledgement.
//!
//! The stage's loop only reads records into a batch. Decoding, line protocol and gzip happen in
//! the batch's own delivery task, off the async workers, and up to `in_flight` batches are
//! encoded and written at once while the next fills (the server parses one request while the
//! sink encodes the next). When the next is full (`batch_lines` records) or old enough
//! (`flush`) and `in_flight` batches are still being written, consuming stops until the oldest
//! is answered: memory holds at most `in_flight + 1` batches however long the server is away
//! (each over `batch_lines` by at most one pack less one record: a poll takes a pack whole,
//! `floodcmd_bus::pack`).
//!
//! A batch is written until the server stores it: with exponential backoff while it is down or
//! slow; split in halves while it refuses data, until the one line it refuses is left, which
//! goes to `rejects` alone, as does every record that cannot be a line at all. Then the batch's
//! offsets are committed, batch by batch in the order read.

use crate::line::{Measurement, Schema, Unwritable};
use crate::writer::{WriteError, WriteLines};
use bytes::Bytes;
use floodcmd_model::bus::{Assignment, Bus, BusError, Producer, Record};
use floodcmd_model::codec::{decode, encode, DecodeError};
use floodcmd_model::event::{AlertTransition, PointStatus, Reject, RejectReason};
use floodcmd_model::time::Clock;
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Reading};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Settings of the sink stage.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Topics.
    pub topics: Topics,
    /// Consumer group.
    pub group: String,
    /// A batch is written when it holds this many records...
    pub batch_lines: usize,
    /// ... or when its first record is this old, whichever comes first.
    pub flush: Duration,
    /// Batches being written at once.
    pub in_flight: usize,
    /// First wait after a failed write; doubled after each failure...
    pub retry_min: Duration,
    /// ... up to this.
    pub retry_max: Duration,
}

impl SinkConfig {
    /// Defaults: 5,000 lines or 1 s, two batches written at once, retries from 100 ms up to
    /// 5 s.
    pub fn new(topics: Topics) -> SinkConfig {
        SinkConfig {
            topics,
            group: "sink-influx".into(),
            batch_lines: 5_000,
            flush: Duration::from_secs(1),
            in_flight: 2,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// Errors that stop the stage.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The writer could not be built.
    #[error("{0}")]
    Write(#[from] WriteError),
    /// The task writing a batch died.
    #[error("writer task: {0}")]
    Task(String),
}

struct SinkMetrics {
    lines: IntCounterVec,
    rejects: IntCounterVec,
    batches: IntCounter,
    write_errors: IntCounterVec,
    pending: IntGauge,
}

fn metrics() -> &'static SinkMetrics {
    static M: OnceLock<SinkMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = SinkMetrics {
            lines: IntCounterVec::new(
                Opts::new(
                    "floodcmd_sink_influx_lines_total",
                    "Lines the time-series server acknowledged, per measurement",
                ),
                &["measurement"],
            )
            .expect("metric"),
            rejects: IntCounterVec::new(
                Opts::new(
                    "floodcmd_sink_influx_rejects_total",
                    "Records the sink sent to the rejects topic instead of the server, per reason",
                ),
                &["reason"],
            )
            .expect("metric"),
            batches: IntCounter::new(
                "floodcmd_sink_influx_batches_total",
                "Batches the time-series server acknowledged",
            )
            .expect("metric"),
            write_errors: IntCounterVec::new(
                Opts::new(
                    "floodcmd_sink_influx_write_errors_total",
                    "Failed writes: refused (the data) or unavailable (the server; retried)",
                ),
                &["kind"],
            )
            .expect("metric"),
            pending: IntGauge::new(
                "floodcmd_sink_influx_pending_records",
                "Records read and not yet acknowledged by the server",
            )
            .expect("metric"),
        };
        let r = prometheus::default_registry();
        let _ = r.register(Box::new(m.lines.clone()));
        let _ = r.register(Box::new(m.rejects.clone()));
        let _ = r.register(Box::new(m.batches.clone()));
        let _ = r.register(Box::new(m.write_errors.clone()));
        let _ = r.register(Box::new(m.pending.clone()));
        m
    })
}

/// The input topics, in the order of [`Batch::next`].
const READINGS: usize = 0;
const STATUS: usize = 1;
const ALERTS: usize = 2;

/// Why a record did not become a line.
enum Refusal {
    Undecodable(DecodeError),
    Unwritable(Unwritable),
}

/// Records read and not yet stored, with what to commit once they are.
struct Batch {
    /// Each record with the index of its input topic.
    records: Vec<(usize, Record)>,
    /// Per input topic and partition, the next offset to read once this batch is stored.
    next: [BTreeMap<u32, u64>; 3],
    opened: Option<Instant>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            records: Vec::new(),
            next: Default::default(),
            opened: None,
        }
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn push(&mut self, topic: usize, rec: Record) {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
        }
        self.next[topic].insert(rec.partition, rec.offset + 1);
        self.records.push((topic, rec));
    }
}

/// A batch as lines: where each came from, and the records that could not become one.
struct Lines {
    body: Vec<u8>,
    /// End of each line in `body`.
    ends: Vec<usize>,
    /// The record each line came from (for a dead letter if the server refuses the line).
    origins: Vec<Record>,
    measurements: Vec<Measurement>,
    refused: Vec<(Record, Refusal)>,
}

impl Lines {
    /// Decode and encode every record; one that cannot be a line is left out alone.
    fn encode(schema: &Schema, records: Vec<(usize, Record)>) -> Lines {
        let mut l = Lines {
            body: Vec::with_capacity(records.len() * 128),
            ends: Vec::with_capacity(records.len()),
            origins: Vec::with_capacity(records.len()),
            measurements: Vec::with_capacity(records.len()),
            refused: Vec::new(),
        };
        for (topic, rec) in records {
            let out = &mut l.body;
            let written = match topic {
                READINGS => decode::<Reading>(&rec.payload)
                    .map_err(Refusal::Undecodable)
                    .and_then(|r| schema.reading(&r, out).map_err(Refusal::Unwritable)),
                STATUS => decode::<PointStatus>(&rec.payload)
                    .map_err(Refusal::Undecodable)
                    .and_then(|s| schema.status(&s, out).map_err(Refusal::Unwritable)),
                _ => decode::<AlertTransition>(&rec.payload)
                    .map_err(Refusal::Undecodable)
                    .and_then(|a| schema.alert(&a, out).map_err(Refusal::Unwritable)),
            };
            match written {
                Ok(m) => {
                    l.ends.push(l.body.len());
                    l.origins.push(rec);
                    l.measurements.push(m);
                }
                Err(refusal) => l.refused.push((rec, refusal)),
            }
        }
        l
    }

    fn start(&self, line: usize) -> usize {
        if line == 0 {
            0
        } else {
            self.ends[line - 1]
        }
    }
}

/// A batch the server stored: what to commit and what to count.
struct Delivered {
    next: [BTreeMap<u32, u64>; 3],
    records: usize,
}

/// Why a batch was not stored: nothing of it is committed, so the next start reads it again.
enum Undelivered {
    /// The sink was told to stop while the server was not taking it.
    Stopped,
    /// A dead letter could not be put on the bus.
    Bus(BusError),
    /// Encoding it panicked.
    Task(String),
}

/// Sends dead letters, waiting out a full bus like every stage: a reject is never skipped.
struct Rejects {
    producer: Arc<dyn Producer>,
    topics: Topics,
    clock: Arc<dyn Clock>,
}

impl Rejects {
    async fn send(&self, reject: Reject) -> Result<(), BusError> {
        metrics()
            .rejects
            .with_label_values(&[reject.reason.as_str()])
            .inc();
        tracing::warn!(reason = reject.reason.as_str(), detail = %reject.detail, source = %reject.source, "record not written to the time-series store; dead-lettered");
        let payload = encode(&reject);
        let key = reject
            .sensor
            .clone()
            .unwrap_or_else(|| reject.source.clone());
        let mut wait = Duration::from_millis(200);
        loop {
            match self
                .producer
                .send(
                    &self.topics.rejects(),
                    key.as_bytes(),
                    payload.clone(),
                    reject.received_ms,
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(BusError::Timeout { .. }) => {
                    tracing::warn!(retry_in = ?wait, "bus full; the influx sink waits to dead-letter");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn reject(&self, rec: &Record, reason: RejectReason, detail: String) -> Reject {
        Reject {
            reason,
            detail,
            source: format!("bus:{}", rec.topic),
            index: None,
            sensor: (*rec.topic == *self.topics.readings())
                .then(|| String::from_utf8_lossy(&rec.key).into_owned()),
            raw: String::from_utf8_lossy(&rec.payload[..rec.payload.len().min(64 * 1024)])
                .into_owned(),
            received_ms: self.clock.now_ms(),
        }
    }

    fn refusal(&self, rec: &Record, refusal: Refusal) -> Reject {
        match refusal {
            Refusal::Undecodable(e) => Reject::undecodable(rec, &e, self.clock.now_ms()),
            Refusal::Unwritable(u) => self.reject(
                rec,
                u.reason,
                format!(
                    "{} (partition {}, offset {}; not written to the time-series store)",
                    u.detail, rec.partition, rec.offset
                ),
            ),
        }
    }
}

/// Writes batches until the server has them.
struct Deliverer {
    schema: Arc<Schema>,
    writer: Arc<dyn WriteLines>,
    rejects: Rejects,
    retry_min: Duration,
    retry_max: Duration,
    shutdown: watch::Receiver<bool>,
}

impl Deliverer {
    async fn deliver(&self, batch: Batch) -> Result<Delivered, Undelivered> {
        let records = batch.len();
        // Decoding and line protocol are CPU work: on the blocking pool, so a batch is encoded
        // while the one before is on the wire and the stage's loop keeps reading.
        let schema = self.schema.clone();
        let mut lines = tokio::task::spawn_blocking(move || Lines::encode(&schema, batch.records))
            .await
            .map_err(|e| Undelivered::Task(e.to_string()))?;
        for (rec, refusal) in std::mem::take(&mut lines.refused) {
            let reject = self.rejects.refusal(&rec, refusal);
            self.rejects.send(reject).await.map_err(Undelivered::Bus)?;
        }
        let batch_next = batch.next;
        let body = Bytes::from(std::mem::take(&mut lines.body));
        let mut stored = [0u64; 4];
        // Line ranges still to write, the next one last.
        let mut todo = vec![(0, lines.ends.len())];
        while let Some((a, b)) = todo.pop() {
            if a == b {
                continue;
            }
            match self
                .write_until_answered(body.slice(lines.start(a)..lines.ends[b - 1]))
                .await?
            {
                Ok(()) => {
                    for m in &lines.measurements[a..b] {
                        stored[*m as usize] += 1;
                    }
                }
                Err((status, text)) if b - a > 1 => {
                    // Find the line the server will not take: each half on its own, in order.
                    tracing::warn!(status, lines = b - a, %text, "the server refused a batch; splitting it to find the line");
                    let mid = a + (b - a) / 2;
                    todo.push((mid, b));
                    todo.push((a, mid));
                }
                Err((status, text)) => {
                    let rec = &lines.origins[a];
                    let line = String::from_utf8_lossy(&body[lines.start(a)..lines.ends[a]]);
                    let reject = self.rejects.reject(
                        rec,
                        RejectReason::Unwritable,
                        format!(
                            "the time-series server refused the line (HTTP {status}: {}): {} (partition {}, offset {})",
                            text.trim(),
                            line.trim_end(),
                            rec.partition,
                            rec.offset
                        ),
                    );
                    self.rejects.send(reject).await.map_err(Undelivered::Bus)?;
                }
            }
        }
        for m in Measurement::ALL {
            metrics()
                .lines
                .with_label_values(&[m.as_str()])
                .inc_by(stored[m as usize]);
        }
        metrics().batches.inc();
        Ok(Delivered {
            next: batch_next,
            records,
        })
    }

    /// Write one body until the server answers: Ok(Ok) stored, Ok(Err) refused.
    async fn write_until_answered(
        &self,
        body: Bytes,
    ) -> Result<Result<(), (u16, String)>, Undelivered> {
        let mut wait = self.retry_min;
        let mut shutdown = self.shutdown.clone();
        loop {
            match self.writer.write(body.clone()).await {
                Ok(()) => return Ok(Ok(())),
                Err(WriteError::Refused { status, text }) => {
                    metrics().write_errors.with_label_values(&["refused"]).inc();
                    return Ok(Err((status, text)));
                }
                Err(e) => {
                    metrics()
                        .write_errors
                        .with_label_values(&["unavailable"])
                        .inc();
                    if *shutdown.borrow() {
                        tracing::warn!(error = %e, "stopping with a batch the server did not take; it is not committed and will be read again");
                        return Err(Undelivered::Stopped);
                    }
                    tracing::warn!(error = %e, retry_in = ?wait, "time-series write failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        r = shutdown.changed() => if r.is_err() { return Err(Undelivered::Stopped) },
                    }
                    wait = (wait * 2).min(self.retry_max);
                }
            }
        }
    }
}

enum Event {
    Stop,
    Records(usize, Result<Vec<Record>, BusError>),
    Delivered(Result<Result<Delivered, Undelivered>, tokio::task::JoinError>),
}

/// Run the sink until `shutdown` turns true. At shutdown the batch being written and the one
/// filling get one more try each; what the server does not take then is not committed, so the
/// next start reads it again.
pub async fn run_sink(
    bus: Arc<dyn Bus>,
    district: Arc<District>,
    clock: Arc<dyn Clock>,
    writer: Arc<dyn WriteLines>,
    config: SinkConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SinkError> {
    let t = &config.topics;
    let mut readings = bus
        .consumer(&config.group, &t.readings(), Assignment::All)
        .await?;
    let mut status = bus
        .consumer(&config.group, &t.status(), Assignment::All)
        .await?;
    let mut alerts = bus
        .consumer(&config.group, &t.alerts(), Assignment::All)
        .await?;
    let deliverer = Arc::new(Deliverer {
        schema: Arc::new(Schema::new(&district)),
        writer,
        rejects: Rejects {
            producer: bus.producer(),
            topics: config.topics.clone(),
            clock: clock.clone(),
        },
        retry_min: config.retry_min,
        retry_max: config.retry_max.max(config.retry_min),
        shutdown: shutdown.clone(),
    });
    let batch_lines = config.batch_lines.max(1);
    let idle = Duration::from_millis(200);
    let mut filling = Batch::new();
    let max_in_flight = config.in_flight.max(1);
    let mut in_flight: VecDeque<JoinHandle<Result<Delivered, Undelivered>>> = VecDeque::new();
    let mut stopping = false;
    loop {
        stopping |= *shutdown.borrow();
        let due = filling.opened.is_some_and(|t| t.elapsed() >= config.flush);
        let full = filling.len() >= batch_lines;
        if in_flight.len() < max_in_flight && !filling.is_empty() && (full || due || stopping) {
            let batch = std::mem::replace(&mut filling, Batch::new());
            let d = deliverer.clone();
            in_flight.push_back(tokio::spawn(async move { d.deliver(batch).await }));
            continue;
        }
        if stopping && in_flight.is_empty() {
            return Ok(());
        }
        metrics()
            .pending
            .set((filling.len() + in_flight.len() * batch_lines) as i64);
        let room = batch_lines.saturating_sub(filling.len());
        let may_poll = room > 0 && !stopping;
        // Wake up for the flush deadline even when no records come; once it has passed and
        // the batch still waits for a writer, keep filling it at the idle pace, not in a spin.
        let wait = match filling.opened {
            Some(t) if !due => (t + config.flush)
                .saturating_duration_since(Instant::now())
                .min(idle),
            _ => idle,
        };
        let event = tokio::select! {
            r = shutdown.changed(), if !stopping => {
                // A dropped sender means the process is going down too.
                let _ = r;
                Event::Stop
            }
            // The oldest first: commits follow the order the records were read in.
            d = async { in_flight.front_mut().expect("checked by the precondition").await }, if !in_flight.is_empty() => Event::Delivered(d),
            r = readings.poll(room, wait), if may_poll => Event::Records(READINGS, r),
            r = status.poll(room, wait), if may_poll => Event::Records(STATUS, r),
            r = alerts.poll(room, wait), if may_poll => Event::Records(ALERTS, r),
        };
        match event {
            Event::Stop => stopping = true,
            Event::Records(topic, recs) => {
                for rec in recs? {
                    filling.push(topic, rec);
                }
            }
            Event::Delivered(done) => {
                in_flight.pop_front();
                let delivered = match done {
                    Ok(Ok(d)) => d,
                    // Told to stop before the server took it: commit nothing more.
                    Ok(Err(Undelivered::Stopped)) => return Ok(()),
                    Ok(Err(Undelivered::Bus(e))) => return Err(SinkError::Bus(e)),
                    Ok(Err(Undelivered::Task(e))) => return Err(SinkError::Task(e)),
                    Err(e) => return Err(SinkError::Task(e.to_string())),
                };
                // The server has every line of the batch: its records may be forgotten.
                for (topic, consumer) in [
                    (READINGS, &mut readings),
                    (STATUS, &mut status),
                    (ALERTS, &mut alerts),
                ] {
                    let positions: Vec<(u32, u64)> = delivered.next[topic]
                        .iter()
                        .map(|(p, n)| (*p, *n))
                        .collect();
                    consumer.commit_all(&positions).await?;
                }
                tracing::debug!(records = delivered.records, "batch stored and committed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use floodcmd_bus::EmbeddedBus;
    use floodcmd_model::time::ManualClock;
    use std::sync::Mutex;

    /// A server that refuses any body holding `refuse`, and keeps what it stored.
    struct Picky {
        refuse: &'static str,
        stored: Mutex<Vec<String>>,
        calls: Mutex<usize>,
    }

    #[async_trait]
    impl WriteLines for Picky {
        async fn write(&self, lines: Bytes) -> Result<(), WriteError> {
            *self.calls.lock().unwrap() += 1;
            let text = String::from_utf8(lines.to_vec()).unwrap();
            if text.contains(self.refuse) {
                return Err(WriteError::Refused {
                    status: 400,
                    text: "partial write: field type conflict".into(),
                });
            }
            self.stored
                .lock()
                .unwrap()
                .extend(text.lines().map(String::from));
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_line_the_server_refuses_is_found_and_dead_lettered_alone() {
        let district =
            Arc::new(District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap());
        let bus = EmbeddedBus::new(4096);
        let topics = Topics::new("picky");
        for t in topics.all() {
            bus.ensure_topic(&t, 2).await.unwrap();
        }
        let sensors: Vec<_> = district
            .sensors()
            .map(|s| (s.sensor.id.clone(), s.point.id.clone(), s.sensor.kind))
            .collect();
        let p = bus.producer();
        let n = 100;
        for i in 0..n {
            let (sensor, point, kind) = &sensors[i % sensors.len()];
            let r = Reading {
                sensor: sensor.as_str().into(),
                point: point.as_str().into(),
                kind: *kind,
                ts_ms: 1_783_000_000_000 + i as i64 * 1000,
                // One value the server (not our checks) objects to.
                value: if i == 37 { 4242.4242 } else { i as f64 },
                seq: None,
                received_ms: 1_783_000_000_000,
            };
            p.send(&topics.readings(), sensor.as_bytes(), encode(&r), r.ts_ms)
                .await
                .unwrap();
        }
        let picky = Arc::new(Picky {
            refuse: "value=4242.4242",
            stored: Mutex::default(),
            calls: Mutex::default(),
        });
        let (tx, rx) = watch::channel(false);
        let mut config = SinkConfig::new(topics.clone());
        config.batch_lines = 1000;
        config.flush = Duration::from_millis(50);
        let sink = tokio::spawn(run_sink(
            Arc::new(bus.clone()),
            district,
            Arc::new(ManualClock::new(0)),
            picky.clone(),
            config,
            rx,
        ));
        let ends = bus.end_offsets(&topics.readings()).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let committed = bus
                .committed("sink-influx", &topics.readings())
                .await
                .unwrap();
            if committed
                .iter()
                .zip(&ends)
                .all(|(c, e)| c.unwrap_or(0) == *e)
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never committed: {committed:?} of {ends:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tx.send(true);
        sink.await.unwrap().unwrap();
        let stored = picky.stored.lock().unwrap().clone();
        assert_eq!(stored.len(), n - 1, "every other line is stored");
        assert!(stored.iter().all(|l| !l.contains("4242.4242")));
        // The halving took a handful of writes, not one per line.
        assert!(*picky.calls.lock().unwrap() < 40);
        let mut c = bus
            .consumer("check", &topics.rejects(), Assignment::All)
            .await
            .unwrap();
        let recs = c.poll(100, Duration::from_secs(1)).await.unwrap();
        assert_eq!(recs.len(), 1);
        let reject: Reject = decode(&recs[0].payload).unwrap();
        assert_eq!(reject.reason, RejectReason::Unwritable);
        assert!(reject.detail.contains("HTTP 400"), "{}", reject.detail);
        assert!(reject.raw.contains("4242.4242"), "{}", reject.raw);
    }
}
