//! The stream stage alone, in process: readings already encoded on the embedded bus, the real
//! dataflow in bounded mode (decoding, exchange, QC, windows, levels, outputs to the bus),
//! timed from start to finish, for 1 and 2 workers, with peak resident memory.
//!
//! The embedded bus keeps every output it is given, so those runs also pay for the first
//! touch of a few hundred megabytes of fresh memory. A stage producing to Kafka does not: its
//! output buffers are freed once librdkafka has copied them, and the allocator hands the same
//! memory out again for the next epoch's. The same runs are made again
//! with a producer that takes the outputs (encoded as ever) and lets them go, as a broker that
//! acknowledged at once would, to show the stage's own cost apart from the bus's. Those runs
//! read a synthetic storm that changes every point's status with every reading
//! ([`synthetic_reading`]); two more, outputs dropped, read `sensors-sim`'s storm
//! ([`simulated_storm`]), shaped like a real one. Each run also reports this process's CPU per
//! reading, and the outputs and transitions of each storm per reading are reported.
//!
//! `stream-kafka` ([`kafka_throughput`]) runs the same stage reading from a real Kafka topic,
//! beside the raw consume ceiling and a raw pipe, with what the machine's cores spent per
//! reading in each part and the bound that sets on the stage's ratio to the ceiling
//! ([`crate::machine_cpu`]); `stream-memory` ([`memory`]) measures the state of a large
//! district.

use crate::kafka::BenchError;
use crate::machine_cpu::{CpuMark, CpuSpent};
use crate::report::{Machine, Report};
use floodcmd_bus::{EmbeddedBus, WithProducer};
use floodcmd_model::bus::{partition_for, Bus, BusError, Delivery, Outgoing, Producer};
use floodcmd_model::codec::encode;
use floodcmd_model::time::{Clock, ManualClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Reading};
use floodcmd_stream::{run_stream, StreamConfig, Watermark};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Event time of the first synthetic reading (July 2026).
pub const T0: i64 = 1_783_000_000_000;

/// A sensor of the synthetic district as the generators need it: sensor id, point id, kind.
pub type SyntheticSensor = (String, String, floodcmd_model::SensorKind);

/// The sensors of `district`, in the order the generators cycle through them.
pub fn synthetic_sensors(district: &District) -> Vec<SyntheticSensor> {
    district
        .sensors()
        .map(|s| (s.sensor.id.clone(), s.point.id.clone(), s.sensor.kind))
        .collect()
}

/// The `i`th reading of the benchmarks' synthetic storm: one reading per sensor per minute of
/// event time, the sensors in turn, each minute's spread over its first seconds (the `i`th
/// sensor `i` ms in) so an epoch holds about a thousand of them; depth wanders 0..20 cm (rain
/// the same in mm). The engine bench, `stream-core` and `stream-kafka` all read this storm.
pub fn synthetic_reading(i: u64, sensors: &[SyntheticSensor]) -> Reading {
    let n = sensors.len() as u64;
    let (sensor, point, kind) = &sensors[(i % n) as usize];
    let minute = i / n;
    Reading {
        sensor: sensor.as_str().into(),
        point: point.as_str().into(),
        kind: *kind,
        ts_ms: T0 + minute as i64 * 60_000 + (i % n) as i64 % 60_000,
        value: ((i * 7 + minute * 3) % 40) as f64 * 0.5,
        seq: Some(minute),
        received_ms: T0,
    }
}

/// Which storm a run reads.
#[derive(Clone, Copy)]
enum Storm {
    /// [`synthetic_reading`]'s: every depth wanders 0..20 cm from one reading to the next, so
    /// every reading changes its point's status.
    Synthetic,
    /// `sensors-sim`'s ([`simulated_storm`]): two storm cells crossing the district, each
    /// point's depth filling and draining with them, as a real storm's readings go.
    Simulated,
}

/// Seed of the simulated storm's noise.
const SIMULATED_SEED: u64 = 7;

/// The readings of `sensors-sim`'s storm over `district` (two cells crossing it from the
/// west over 90 minutes, each point's drains filling and emptying, every sensor reporting
/// once a minute, no faults; the storm comes again every 3 hours), from its start, in the
/// order the devices deliver them. Simulated a minute at a time as they are taken, so a
/// million of them are never held at once.
pub fn simulated_storm(district: &District) -> impl Iterator<Item = Reading> + Send + '_ {
    let mut sim = floodcmd_sim::device::Simulator::new(
        district,
        T0,
        SIMULATED_SEED,
        60_000,
        floodcmd_sim::FaultConfig::default(),
    );
    let mut to_ms = T0;
    let mut minute = Vec::new().into_iter();
    // A district without sensors: no minute would ever give a reading.
    let silent = sim.sensor_count() == 0;
    std::iter::from_fn(move || loop {
        if silent {
            return None;
        }
        if let Some(r) = minute.next() {
            return Some(r);
        }
        to_ms += 60_000;
        let readings: Vec<Reading> = sim
            .advance(to_ms)
            .into_iter()
            .filter_map(|g| g.reading)
            .collect();
        minute = readings.into_iter();
    })
}

/// Peak resident memory of this process so far, MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> f64 {
    crate::pipeline::peak_rss_mib_of("self")
}

/// Where a run's outputs go.
#[derive(Clone, Copy)]
enum Outputs {
    /// Onto the embedded bus, which keeps them.
    Kept,
    /// To a producer that counts them and lets them go.
    Dropped,
}

/// A producer that acknowledges records of the output topics at once and keeps none of them;
/// records of `inputs` go to the bus as ever. Counts what it drops, and apart the records of
/// the alerts topic (transitions).
struct DroppingProducer {
    inner: Arc<dyn Producer>,
    inputs: Vec<String>,
    alerts: String,
    dropped: Arc<AtomicU64>,
    transitions: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Producer for DroppingProducer {
    async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: bytes::Bytes,
        timestamp_ms: i64,
    ) -> Result<Delivery, BusError> {
        if self.inputs.iter().any(|t| t == topic) {
            return self.inner.send(topic, key, payload, timestamp_ms).await;
        }
        let offset = self.dropped.fetch_add(1, Ordering::Relaxed);
        if topic == self.alerts {
            self.transitions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Delivery {
            partition: partition_for(key, 4),
            offset,
        })
    }

    async fn send_batch(
        &self,
        topic: &str,
        records: Vec<Outgoing>,
    ) -> Vec<Result<Delivery, BusError>> {
        if self.inputs.iter().any(|t| t == topic) {
            return self.inner.send_batch(topic, records).await;
        }
        let first = self
            .dropped
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        if topic == self.alerts {
            self.transitions
                .fetch_add(records.len() as u64, Ordering::Relaxed);
        }
        records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Ok(Delivery {
                    partition: partition_for(&r.key, 4),
                    offset: first + i as u64,
                })
            })
            .collect()
    }
}

/// One timed run.
struct Run {
    /// Readings per second.
    rate: f64,
    /// Outputs per reading when they were dropped (0 when kept).
    outputs_per_reading: f64,
    /// Of those, transitions per reading.
    transitions_per_reading: f64,
    /// This process's CPU per reading over the run, core-µs: the stage's workers and
    /// whatever else of the process ran beside them.
    cpu_us_per_reading: f64,
}

/// One timed run of `readings` of `storm` through the stage with `workers`.
async fn one_run(
    district: Arc<District>,
    storm: Storm,
    readings: u64,
    workers: usize,
    outputs: Outputs,
) -> Result<Run, BenchError> {
    let bus = EmbeddedBus::new((readings as usize / 4) * 2 + 1024);
    let topics = Topics::new("bench");
    for t in topics.all() {
        bus.ensure_topic(&t, 4)
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
    }
    let p = bus.producer();
    let sensors;
    // Made as they are put on the bus, as they always were: a million readings held at once
    // would add their hundred-odd MiB to the peak resident memory reported.
    let input: Box<dyn Iterator<Item = Reading> + Send + '_> = match storm {
        Storm::Synthetic => {
            sensors = synthetic_sensors(&district);
            Box::new((0..readings).map(|i| synthetic_reading(i, &sensors)))
        }
        Storm::Simulated => Box::new(simulated_storm(&district).take(readings as usize)),
    };
    for r in input {
        p.send(&topics.readings(), r.sensor.as_bytes(), encode(&r), r.ts_ms)
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
    }
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let dropped = Arc::new(AtomicU64::new(0));
    let transitions = Arc::new(AtomicU64::new(0));
    let stage_bus: Arc<dyn Bus> = match outputs {
        Outputs::Kept => Arc::new(bus.clone()),
        Outputs::Dropped => {
            let inputs = vec![topics.readings(), topics.rejects()];
            let (alerts, dropped, transitions) =
                (topics.alerts(), dropped.clone(), transitions.clone());
            Arc::new(WithProducer::new(bus.clone(), move |inner| {
                Arc::new(DroppingProducer {
                    inner,
                    inputs: inputs.clone(),
                    alerts: alerts.clone(),
                    dropped: dropped.clone(),
                    transitions: transitions.clone(),
                })
            }))
        }
    };
    let config = StreamConfig {
        workers,
        lateness_ms: 10_000,
        topics,
        group: "bench".into(),
        watermark: Watermark::Bounded { origin_ms: T0 },
        rebuild_ms: None,
    };
    let mark = CpuMark::now();
    let start = Instant::now();
    let h = run_stream(stage_bus, district, clock, config)
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
    tokio::task::spawn_blocking(move || h.join())
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?
        .map_err(BenchError::Other)?;
    let rate = readings as f64 / start.elapsed().as_secs_f64();
    Ok(Run {
        rate,
        outputs_per_reading: dropped.load(Ordering::Relaxed) as f64 / readings as f64,
        transitions_per_reading: transitions.load(Ordering::Relaxed) as f64 / readings as f64,
        cpu_us_per_reading: mark.spent().own_us_per(readings),
    })
}

/// The `stream-core` scenario: `readings` over a synthetic district of `sensors` depth sensors.
pub async fn throughput(
    sensors: usize,
    readings: u64,
    command: &str,
) -> Result<Report, BenchError> {
    let district = Arc::new(
        District::from_file(floodcmd_sim::synthetic_district(sensors))
            .map_err(|e| BenchError::Other(e.to_string()))?,
    );
    // The first run in a process also pays for the first touch of the memory the bus and
    // the state grow into (page faults), which later runs find mapped already: 1 worker runs
    // again after 2, and the scaling is taken against that warm run.
    let run =
        |storm, workers, outputs| one_run(district.clone(), storm, readings, workers, outputs);
    let cold = run(Storm::Synthetic, 1, Outputs::Kept).await?;
    let two = run(Storm::Synthetic, 2, Outputs::Kept).await?;
    let one = run(Storm::Synthetic, 1, Outputs::Kept).await?;
    let one_dropped = run(Storm::Synthetic, 1, Outputs::Dropped).await?;
    let two_dropped = run(Storm::Synthetic, 2, Outputs::Dropped).await?;
    // The same with the simulated storm, outputs dropped: a storm shaped like a real one,
    // where a dry point's status stands still and flooded ones rise through the levels and
    // drain back.
    let sim_one = run(Storm::Simulated, 1, Outputs::Dropped).await?;
    let sim_two = run(Storm::Simulated, 2, Outputs::Dropped).await?;
    let per_reading = one_dropped.outputs_per_reading;
    let mut r = Report {
        scenario: "stream-core".into(),
        command: command.into(),
        machine: Machine::here(),
        params: serde_json::json!({ "sensors": district.sensors().count(), "readings": readings, "input": "encoded on the embedded bus, decoded by the stage" }),
        figures: Vec::new(),
    };
    r.figure(
        "1 worker, first run in the process",
        cold.rate,
        "readings/s",
    );
    r.figure("1 worker, after the others", one.rate, "readings/s");
    r.figure_vs(
        "2 workers",
        two.rate,
        "readings/s",
        one.rate,
        "1 worker, after the others",
    );
    r.figure(
        "1 worker, outputs dropped once produced (not kept by the bus)",
        one_dropped.rate,
        "readings/s",
    );
    r.figure_vs(
        "2 workers, outputs dropped once produced",
        two_dropped.rate,
        "readings/s",
        one_dropped.rate,
        "1 worker, outputs dropped once produced (not kept by the bus)",
    );
    r.figure(
        "simulated storm, 1 worker, outputs dropped once produced",
        sim_one.rate,
        "readings/s",
    );
    r.figure_vs(
        "simulated storm, 2 workers, outputs dropped once produced",
        sim_two.rate,
        "readings/s",
        sim_one.rate,
        "simulated storm, 1 worker, outputs dropped once produced",
    );
    // What each run cost this process per reading: the rules with decoding, encoding, the
    // dataflow and the embedded bus around them (CPU, where the rates above are time).
    for (run, name) in [
        (&one, "1 worker, after the others"),
        (&two, "2 workers"),
        (&one_dropped, "1 worker, outputs dropped once produced"),
        (&two_dropped, "2 workers, outputs dropped once produced"),
        (
            &sim_one,
            "simulated storm, 1 worker, outputs dropped once produced",
        ),
        (
            &sim_two,
            "simulated storm, 2 workers, outputs dropped once produced",
        ),
    ] {
        r.figure(
            &format!("CPU of this process per reading, {name}"),
            run.cpu_us_per_reading,
            "core-µs",
        );
    }
    r.figure(
        "outputs produced per reading (statuses and transitions)",
        per_reading,
        "outputs",
    );
    r.figure(
        "transitions produced per reading",
        one_dropped.transitions_per_reading,
        "transitions",
    );
    r.figure(
        "simulated storm, outputs produced per reading",
        sim_one.outputs_per_reading,
        "outputs",
    );
    r.figure(
        "simulated storm, transitions produced per reading",
        sim_one.transitions_per_reading,
        "transitions",
    );
    r.figure("peak resident memory of the process", peak_rss_mib(), "MiB");
    Ok(r)
}

/// Resident memory of this process now, MiB (`VmRSS`; the peak is `VmHWM`), after the
/// allocator has handed back what it holds free: the binary has it keep freed memory up to ten
/// seconds (`hold_freed_memory` in `src/main.rs`), which would count here as in use.
/// `mi_collect` frees the calling thread's empty pages and purges what every arena holds
/// pending, so the figure is exact for memory freed on this thread (the engine's, below) and
/// an upper bound otherwise.
fn rss_mib() -> f64 {
    // SAFETY: asks mimalloc to collect; callable at any time, from any thread (one that never
    // allocated through it has nothing of its own to collect). In the binary mimalloc serves
    // the C code's allocations too (its `override` feature), which this collects alike.
    unsafe { libmimalloc_sys::mi_collect(true) };
    crate::pipeline::proc_status_mib("self", "VmRSS:")
}

/// The state alone: one engine owning every point of `district`, fed a day of readings (one
/// per sensor per `every_min` minutes, so every rain window spans its full length), with no
/// bus and no dataflow around it. Returns the growth of resident memory, MiB, and the
/// readings fed. Measured as current RSS before and after, on the same thread, so what the
/// district and the allocator held before does not count.
fn engine_state_mib(district: &District, every_min: i64) -> (f64, u64) {
    use floodcmd_stream::{Engine, TimedReading};
    let sensors: Vec<(String, String, floodcmd_model::SensorKind)> = district
        .sensors()
        .map(|s| (s.sensor.id.clone(), s.point.id.clone(), s.sensor.kind))
        .collect();
    let before = rss_mib();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let mut engine = Engine::new(district, |_| true, clock, T0);
    let mut out = Vec::new();
    let mut fed = 0u64;
    for minute in (0..24 * 60).step_by(every_min as usize) {
        let epoch_ms = T0 + minute * 60_000;
        let batch: Vec<TimedReading> = sensors
            .iter()
            .enumerate()
            .map(|(i, (sensor, point, kind))| TimedReading {
                reading: Reading {
                    sensor: sensor.as_str().into(),
                    point: point.as_str().into(),
                    kind: *kind,
                    ts_ms: epoch_ms,
                    value: ((i as i64 * 7 + minute * 3) % 40) as f64 * 0.5,
                    seq: Some(minute as u64),
                    received_ms: epoch_ms,
                },
                late: false,
                replay: false,
            })
            .collect();
        fed += batch.len() as u64;
        engine.apply_epoch(epoch_ms, &batch, &mut out);
        // What the engine emits goes to the bus in the stage; here it is dropped at once.
        out.clear();
    }
    let grown = rss_mib() - before;
    drop(engine);
    (grown, fed)
}

/// The `stream-memory` scenario: one day of state for `sensors` sensors (24 h of rain windows,
/// a reading per sensor per hour), then the process's peak resident memory.
pub async fn memory(sensors: usize, command: &str) -> Result<Report, BenchError> {
    let district = Arc::new(
        District::from_file(floodcmd_sim::synthetic_district(sensors))
            .map_err(|e| BenchError::Other(e.to_string()))?,
    );
    let district_rss = rss_mib();
    let (state_mib, state_readings) = engine_state_mib(&district, 60);
    let before = peak_rss_mib();
    let n = district.sensors().count() as u64;
    let rate = one_run(district.clone(), Storm::Synthetic, n * 3, 2, Outputs::Kept)
        .await?
        .rate;
    let mut r = Report {
        scenario: "stream-memory".into(),
        command: command.into(),
        machine: Machine::here(),
        params: serde_json::json!({ "sensors": n, "readings": n * 3 }),
        figures: Vec::new(),
    };
    r.figure(
        "resident memory with the district loaded (current)",
        district_rss,
        "MiB",
    );
    r.figure(
        &format!(
            "engine state of every sensor after a day of readings ({state_readings} fed, one per sensor an hour; growth of current resident memory)"
        ),
        state_mib,
        "MiB",
    );
    r.figure(
        "peak resident memory before the dataflow run",
        before,
        "MiB",
    );
    r.figure(
        "peak resident memory with every sensor's state (bus copy of the input included)",
        peak_rss_mib(),
        "MiB",
    );
    r.figure("throughput of that run, 2 workers", rate, "readings/s");
    Ok(r)
}

/// The raw librdkafka consume rate of the first `records` records of `topic`, taken off the
/// async runtime.
async fn consume_ceiling(
    bootstrap: &str,
    topic: &str,
    records: u64,
    settings: crate::kafka::KafkaSettings<'_>,
) -> Result<crate::kafka::Timed, BenchError> {
    let (b, t, s) = (bootstrap.to_string(), topic.to_string(), settings.to_vec());
    tokio::task::spawn_blocking(move || crate::kafka::consume_topic(&b, &t, records, 4, &s))
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?
}

/// How many outputs `stream-kafka`'s packed pipe puts in one record: about 50 KB of statuses,
/// well under a broker's default 1 MB record limit.
const PACKED: usize = 256;

/// The `stream-kafka` scenario: `readings` of a synthetic district put on a fresh Kafka
/// readings topic first, then the stream stage (bounded, 1 then 2 workers) reads them back
/// from the broker and runs every rule, timed from start to finish; beside the raw librdkafka
/// consume ceiling of the same readings topic, taken before, between and after the stage's
/// runs.
///
/// Each stage run is set against the mean of the ceilings taken just before and just after
/// it. One ceiling taken first was the whole denominator before, and it came out anywhere
/// between 229k and 413k records/s from one run to the next (most of that was librdkafka's
/// fetch back-off, see `crate::kafka::ceiling_consumer`).
///
/// Then a second peer: the raw pipe ([`crate::kafka::pipe_topic`]), which consumes the same
/// readings topic and produces the stage's own outputs, as many per reading, with nothing
/// between. The stage writes more outputs than it reads readings, and bigger ones; the pipe
/// says what the broker and librdkafka leave for the rules on this machine. The pipe runs
/// twice with the outputs one to a record and twice packed [`PACKED`] to a record, which is
/// near what the stage does now: its bus packs statuses and transitions up to
/// `floodcmd_bus::pack::MAX_ITEMS` a record. (The stage's outputs are counted from its own
/// counter, `floodcmd_stream::outputs_total`, since the topics' records count packs; they are
/// sampled through the bus, which unpacks them.) Between the stage's runs and the pipes, the same stage runs once in process (1
/// worker, outputs let go) for what its rules cost without Kafka; the pipe's CPU plus that is
/// the least any stage spends, which bounds what any could reach on this machine, with its
/// outputs one to a record or packed (see `cpu_figures`).
///
/// `settings` go to every Kafka client of the run, the stage's bus and the raw peers alike
/// ([`crate::kafka::KafkaSettings`]); the report's parameters name them.
pub async fn kafka_throughput(
    bootstrap: &str,
    sensors: usize,
    readings: u64,
    settings: crate::kafka::KafkaSettings<'_>,
    command: &str,
) -> Result<Report, BenchError> {
    use floodcmd_bus::{KafkaBus, KafkaConfig};
    use floodcmd_model::bus::Outgoing;
    let district = Arc::new(
        District::from_file(floodcmd_sim::synthetic_district(sensors))
            .map_err(|e| BenchError::Other(e.to_string()))?,
    );
    let other = |e: floodcmd_model::bus::BusError| BenchError::Other(e.to_string());
    let run_id = crate::kafka::run_name();
    let topics = Topics::new(format!("benchstream{run_id}"));
    // Statuses and transitions packed, as the stage's bus packs them (`floodcmd_bus::pack`).
    let bus = KafkaBus::new(KafkaConfig {
        packed_topics: vec![topics.status(), topics.alerts()],
        extra: settings.to_vec(),
        ..KafkaConfig::new(bootstrap)
    })
    .map_err(other)?;
    for t in topics.all() {
        bus.ensure_topic(&t, 4).await.map_err(other)?;
    }
    let ids = synthetic_sensors(&district);
    let n = ids.len() as u64;
    let producer = bus.producer();
    let mut batch = Vec::with_capacity(10_000);
    // Records stamped now on the topic (the stage takes event time from the reading): stamped
    // with the readings' July 2026, they are past the broker's 7-day retention, and its check
    // (every 5 minutes) deleted the topic under a run, which then waited for them for ever.
    let stamped_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // And the storm itself ends about now, on whole minutes: the stage stamps its outputs with
    // their event time, and outputs stamped in July 2026 were past that retention too, so the
    // check could delete them before the pipe sampled them.
    let minutes = readings.div_ceil(n.max(1)) as i64;
    let t0 = (stamped_ms / 60_000 - minutes - 1) * 60_000;
    for i in 0..readings {
        // Each minute's readings all in its first second here.
        let r = Reading {
            ts_ms: t0 + (i / n) as i64 * 60_000,
            received_ms: t0 + (i / n) as i64 * 60_000,
            ..synthetic_reading(i, &ids)
        };
        batch.push(Outgoing {
            key: bytes::Bytes::copy_from_slice(r.sensor.as_bytes()),
            payload: encode(&r),
            timestamp_ms: stamped_ms,
            key_hash: None,
        });
        if batch.len() == 10_000 || i + 1 == readings {
            for res in producer
                .send_batch(&topics.readings(), std::mem::take(&mut batch))
                .await
            {
                res.map_err(other)?;
            }
        }
    }
    let readings_topic = topics.readings();
    // A broker on this machine: what its JIT compilers took in each stage run and over the
    // whole bench (see `broker_jit`).
    let broker_jit = crate::broker_jit::BrokerJit::find(bootstrap);
    let jit_now = || broker_jit.as_ref().map(|b| b.mark());
    let jit_at_start = jit_now();
    let mut stage_jit = Vec::new();
    // What the machine's cores did in each part: whether it left any idle, and what each
    // spent per reading (see `machine_cpu`).
    let first = consume_ceiling(bootstrap, &readings_topic, readings, settings).await?;
    let mut ceilings = vec![first.per_s];
    let mut ceiling_cpu = vec![first.cpu];
    let mut stage_cpu = Vec::new();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(t0));
    let mut rates = Vec::new();
    // Per run: from its start to its first readings taken, and from its last to its end.
    let mut spans: Vec<ReadingSpan> = Vec::new();
    // Outputs on the bus after each run (every run writes all of its own).
    let mut outputs_after = vec![floodcmd_stream::outputs_total().iter().sum()];
    // Statuses and transitions the runs wrote, together (the topics' records would count
    // packs, not statuses).
    let mut outputs_by_topic = [0u64; 2];
    for workers in [1usize, 2] {
        let config = StreamConfig {
            workers,
            lateness_ms: 10_000,
            topics: topics.clone(),
            group: format!("bench-{run_id}-{workers}"),
            watermark: Watermark::Bounded { origin_ms: t0 },
            rebuild_ms: None,
        };
        let lost_before = floodcmd_stream::readings_lost_total();
        let jit_before = jit_now();
        let mark = CpuMark::now();
        let start = Instant::now();
        let watch = ReadingWatch::start(start);
        let h = run_stream(
            Arc::new(bus.clone()),
            district.clone(),
            clock.clone(),
            config,
        )
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
        tokio::task::spawn_blocking(move || h.join())
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?
            .map_err(BenchError::Other)?;
        let elapsed = start.elapsed();
        spans.push(watch.stop(elapsed));
        stage_cpu.push(mark.spent());
        stage_jit.push(
            jit_now()
                .zip(jit_before)
                .map(|(after, before)| after.since(&before)),
        );
        // A rate over readings the broker deleted before the stage read them would be a lie.
        let lost = floodcmd_stream::readings_lost_total() - lost_before;
        if lost > 0 {
            return Err(BenchError::Other(format!(
                "{lost} readings were deleted by the broker before the stage ({workers} workers) read them; no rate to report"
            )));
        }
        rates.push(readings as f64 / elapsed.as_secs_f64());
        let [statuses, transitions] = floodcmd_stream::outputs_total();
        outputs_after.push(statuses + transitions);
        outputs_by_topic = [statuses, transitions];
        let ceiling = consume_ceiling(bootstrap, &readings_topic, readings, settings).await?;
        ceilings.push(ceiling.per_s);
        ceiling_cpu.push(ceiling.cpu);
    }
    // The stage's own work without Kafka, in the same run: the same district's synthetic
    // storm through the stage in process, 1 worker, outputs encoded and let go. Its readings
    // are spread over each minute's first seconds where the Kafka runs' are all on the minute,
    // which costs the rules more: the bound made with it below errs high, never low.
    let in_process = one_run(
        district.clone(),
        Storm::Synthetic,
        readings,
        1,
        Outputs::Dropped,
    )
    .await?;
    // The pipe: the same readings consumed and the stage's own outputs (the same records, as
    // many per reading as the 2-worker run wrote) produced, raw.
    let per_run: Vec<f64> = outputs_after
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / readings as f64)
        .collect();
    let per_reading = per_run[1];
    let outputs = sample_outputs(&bus, &topics, outputs_by_topic, 2000).await?;
    // Twice one output to a record, as the stage wrote them before its statuses were packed,
    // and twice packed: the rate and CPU the same outputs cost `PACKED` to a record.
    let (mut pipes, mut pipe_cpu) = (Vec::new(), Vec::new());
    let (mut packed_pipes, mut packed_cpu) = (Vec::new(), Vec::new());
    // Interleaved, so neither kind has all the later runs (a broker warming up favours them).
    for pack in [1, PACKED, PACKED, 1] {
        let (b, t, o, s) = (
            bootstrap.to_string(),
            readings_topic.clone(),
            outputs.clone(),
            settings.to_vec(),
        );
        let piped = tokio::task::spawn_blocking(move || {
            crate::kafka::pipe_topic(&b, &t, readings, 4, &o, per_reading, pack, &s)
        })
        .await
        .map_err(|e| BenchError::Other(e.to_string()))??;
        let (rates, cpu) = if pack == 1 {
            (&mut pipes, &mut pipe_cpu)
        } else {
            (&mut packed_pipes, &mut packed_cpu)
        };
        rates.push(piped.per_s);
        cpu.push(piped.cpu);
    }
    let pipe = (pipes[0] + pipes[1]) / 2.0;
    let mut r = Report {
        scenario: "stream-kafka".into(),
        command: command.into(),
        machine: Machine::here(),
        params: serde_json::json!({ "sensors": n, "readings": readings, "partitions": 4, "input": "a Kafka readings topic filled first; the stage reads it back in bounded mode and writes status and alerts back to Kafka", "ceiling": "raw librdkafka consume of the same readings topic, taken before, between and after the stage's runs; each run is set against the mean of the two around it", "pipe": "raw librdkafka: the same readings topic consumed and, for each reading, the stage's own outputs (sampled from its topics, as many per reading as the 2-worker run wrote) produced with its producer settings; one thread and librdkafka's", "packed_pipe_outputs_per_record": PACKED, "kafka_settings": crate::kafka::shown_settings(settings) }),
        figures: Vec::new(),
    };
    for (i, when) in [
        "before the stage",
        "between 1 and 2 workers",
        "after the stage",
    ]
    .iter()
    .enumerate()
    {
        r.figure(
            &format!("raw Kafka consume ceiling, {when}"),
            ceilings[i],
            "records/s",
        );
    }
    for (i, per) in per_run.iter().enumerate() {
        r.figure(
            &format!(
                "outputs the stage wrote per reading, {} (statuses and transitions)",
                ["1 worker", "2 workers"][i]
            ),
            *per,
            "outputs",
        );
    }
    for (i, p) in pipes.iter().enumerate() {
        r.figure(
            &format!(
                "raw Kafka pipe, run {}: readings consumed, the stage's outputs produced",
                i + 1
            ),
            *p,
            "readings/s",
        );
    }
    for (i, p) in packed_pipes.iter().enumerate() {
        r.figure(
            &format!(
                "raw Kafka pipe, outputs packed {PACKED} to a record, run {}",
                i + 1
            ),
            *p,
            "readings/s",
        );
    }
    cpu_figures(
        &mut r,
        readings,
        &ceiling_cpu,
        &stage_cpu,
        [&pipe_cpu, &packed_cpu],
        in_process.cpu_us_per_reading,
    );
    // Only where the broker is on this machine (and a JVM): elsewhere there is nothing to say.
    for (i, workers) in ["1 worker", "2 workers"].iter().enumerate() {
        if let Some(s) = stage_jit[i] {
            r.figure(
                &format!("CPU the broker's JIT compilers took during the stage run, {workers} (a broker on this machine, compiling, takes it from the stage)"),
                s * 1000.0,
                "ms",
            );
        }
    }
    if let Some(whole) = jit_now()
        .zip(jit_at_start)
        .map(|(after, before)| after.since(&before))
    {
        r.figure(
            "CPU the broker's JIT compilers took over this bench (from the first ceiling on)",
            whole * 1000.0,
            "ms",
        );
    }
    for (i, workers) in ["1 worker", "2 workers"].iter().enumerate() {
        let span = &spans[i];
        r.figure(
            &format!("stream stage from Kafka, {workers}, time from its start to its first readings taken (a poll's worth, counted once decoded)"),
            span.to_first.as_secs_f64() * 1000.0,
            "ms",
        );
        r.figure(
            &format!("stream stage from Kafka, {workers}, time from its last readings taken to its end (its last epochs applied, their outputs acknowledged, its offsets committed, its workers joined)"),
            span.after_last.as_secs_f64() * 1000.0,
            "ms",
        );
        if let Some(rate) = span.rate(readings) {
            r.figure_vs(
                &format!("stream stage from Kafka, {workers}, between its first and last readings taken (not the target's measure, which is the whole run)"),
                rate,
                "readings/s",
                (ceilings[i] + ceilings[i + 1]) / 2.0,
                "raw Kafka consume ceiling (mean of the two around the run)",
            );
        }
        r.figure_vs(
            &format!("stream stage from Kafka, {workers}"),
            rates[i],
            "readings/s",
            (ceilings[i] + ceilings[i + 1]) / 2.0,
            "raw Kafka consume ceiling (mean of the two around the run)",
        );
        r.figure_vs(
            &format!("stream stage from Kafka, {workers}, against the pipe"),
            rates[i],
            "readings/s",
            pipe,
            "raw Kafka pipe (mean of its two runs)",
        );
    }
    Ok(r)
}

/// When a stage run took its first and its last readings, from the stage's own counter
/// (`floodcmd_stream_readings_total`) sampled every millisecond on a thread of its own: the
/// run's rate counts its start (finding where to read, the consumer's first fetch) and its end
/// (the last outputs acknowledged, the last commit, the workers joined), which a 2-second run
/// feels.
struct ReadingWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    sampler: std::thread::JoinHandle<(Option<Duration>, Option<Duration>)>,
}

/// What a [`ReadingWatch`] saw of one run.
struct ReadingSpan {
    to_first: Duration,
    after_last: Duration,
    /// From the first readings counted to the last, if two samples apart.
    between: Option<Duration>,
}

impl ReadingWatch {
    fn start(start: Instant) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let before = floodcmd_stream::readings_total();
        let sampler = std::thread::spawn(move || {
            let (mut first, mut last, mut seen) = (None, None, before);
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                let now = floodcmd_stream::readings_total();
                if now != seen {
                    let at = start.elapsed();
                    first.get_or_insert(at);
                    last = Some(at);
                    seen = now;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (first, last)
        });
        ReadingWatch { stop, sampler }
    }

    /// Stop watching a run that ended `elapsed` after its start.
    fn stop(self, elapsed: Duration) -> ReadingSpan {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (first, last) = self.sampler.join().unwrap_or((None, None));
        let (first, last) = (first.unwrap_or(elapsed), last.unwrap_or(elapsed));
        ReadingSpan {
            to_first: first,
            after_last: elapsed.saturating_sub(last),
            between: (last > first).then(|| last - first),
        }
    }
}

impl ReadingSpan {
    /// `readings` over the span between the first and the last readings counted. The first
    /// poll's worth is counted at the span's start, so this errs high by at most one poll
    /// (4,096 readings) in the run's count.
    fn rate(&self, readings: u64) -> Option<f64> {
        self.between.map(|d| readings as f64 / d.as_secs_f64())
    }
}

/// The machine's CPU in each part of `stream-kafka`, over the span each part is timed: per
/// reading, the whole machine and this process (the rest is the broker and anything else the
/// machine runs), and the idle and stolen shares of the cores.
///
/// And the bound CPU sets on a ratio to the ceiling. A run can use at most the cores' time the
/// hypervisor leaves (busy plus idle), so the stage reads at most `available / stage CPU per
/// reading`; the ceiling read at `busy / ceiling CPU per reading`. The ratio can then be no
/// more than `(ceiling CPU per reading ÷ busy share of the available) ÷ stage CPU per
/// reading`. The first factor is the available core-time per reading at the ceiling's pace:
/// the ceiling is held to the cores it left idle as well, which only loosens the bound. Each
/// stage run is set against the two ceilings around it, as its ratio is; the pipe against the
/// two around the 2-worker run (the later one just before the pipes). The bound takes each
/// run's CPU per reading as fixed: CPU spent on something else meanwhile (other processes, the
/// broker's JIT warming up) lowers it.
///
/// Last, what the machine allows a stage at all: the pipe's CPU per reading (consuming and
/// writing the outputs, nothing else) plus `in_process_us`, what the stage's rules (decoding
/// and encoding included) cost this process per reading in process, is the least a stage
/// reading from Kafka can spend. Over it, the available core-time at the ceiling's pace bounds
/// any such stage's ratio, with its outputs one to a record or packed, however well its
/// adapters were written; a stage that spends more beside the broker than alone (it does)
/// stays under it. Turned around, the same figures give the budget: what rules, decoding and
/// encoding may cost per reading in process for a stage writing packed outputs to reach
/// [`TARGET_RATIO`] at all, and how many times over it this stage's in-process cost is. Over
/// 1, a stage whose consuming and writing cost no more than the packed pipe's still falls
/// short on that run's machine: the rules themselves must get cheaper (and the stage's Kafka
/// side no dearer than the pipe's, which the stage's own runs show it is not).
fn cpu_figures(
    r: &mut Report,
    readings: u64,
    ceiling: &[CpuSpent],
    stage: &[CpuSpent],
    [pipe, packed]: [&[CpuSpent]; 2],
    in_process_us: f64,
) {
    if !ceiling
        .iter()
        .chain(stage)
        .chain(pipe)
        .chain(packed)
        .all(CpuSpent::counted)
    {
        // No `/proc/stat` here: zeros would read as figures.
        return;
    }
    let mut part = |name: &str, spent: &CpuSpent, records: u64| {
        r.figure(
            &format!("CPU of the whole machine per reading, {name}"),
            spent.busy_us_per(records),
            "core-µs",
        );
        r.figure(
            &format!("CPU of this process per reading, {name}"),
            spent.own_us_per(records),
            "core-µs",
        );
        r.figure(
            &format!("idle share of the machine's cores, {name}"),
            spent.idle_share() * 100.0,
            "%",
        );
        r.figure(
            &format!("share taken by the hypervisor (steal), {name}"),
            spent.steal_share() * 100.0,
            "%",
        );
    };
    // Available core-µs per reading at the ceiling's pace, over two ceiling runs.
    let available_per =
        |runs: &[CpuSpent], name: &str, part: &mut dyn FnMut(&str, &CpuSpent, u64)| {
            let both = CpuSpent::total(runs);
            part(name, &both, readings * runs.len() as u64);
            both.busy_us_per(readings * runs.len() as u64)
                / both.busy_share_of_available().max(f64::MIN_POSITIVE)
        };
    let workers = ["1 worker", "2 workers"];
    let mut around = Vec::new();
    for (i, run) in ["1-worker", "2-worker"].iter().enumerate() {
        around.push(available_per(
            &ceiling[i..i + 2],
            &format!("raw consume ceiling, the two runs around the {run} run"),
            &mut part,
        ));
    }
    for (spent, w) in stage.iter().zip(workers) {
        part(&format!("stream stage, {w}"), spent, readings);
    }
    let pipe_all = CpuSpent::total(pipe);
    let piped = readings * pipe.len() as u64;
    part("raw pipe (its runs together)", &pipe_all, piped);
    let packed_all = CpuSpent::total(packed);
    let packed_n = readings * packed.len() as u64;
    part(
        &format!("raw pipe, outputs packed {PACKED} to a record (its runs together)"),
        &packed_all,
        packed_n,
    );
    for ((spent, w), per_ceiling) in stage.iter().zip(workers).zip(&around) {
        r.figure(
            &format!("bound set by CPU on the stage's ratio to the ceiling, {w}: the available core-time per reading at the ceiling's pace over the stage's CPU per reading"),
            per_ceiling / spent.busy_us_per(readings).max(f64::MIN_POSITIVE),
            "ratio",
        );
    }
    r.figure(
        "bound set by CPU on the ratio to the ceiling of a stage that writes its outputs and runs no rules: the available core-time per reading at the ceiling's pace (around the 2-worker run) over the raw pipe's CPU per reading",
        around[1] / pipe_all.busy_us_per(piped).max(f64::MIN_POSITIVE),
        "ratio",
    );
    let packed_us = packed_all.busy_us_per(packed_n);
    r.figure(
        &format!("bound set by CPU on the ratio to the ceiling of a stage that writes its outputs packed {PACKED} to a record and runs no rules: the available core-time per reading at the ceiling's pace (around the 2-worker run) over the packed pipe's CPU per reading"),
        around[1] / packed_us.max(f64::MIN_POSITIVE),
        "ratio",
    );
    let pipe_us = pipe_all.busy_us_per(piped);
    r.figure(
        "CPU of this process per reading, the same stage in process (1 worker, synthetic storm spread over each minute, outputs encoded and let go): its rules, decoding and encoding, no Kafka",
        in_process_us,
        "core-µs",
    );
    r.figure(
        "bound set by CPU on the ratio to the ceiling of any stage that writes its outputs one to a record and whose rules cost what they cost in process: the available core-time per reading at the ceiling's pace (around the 2-worker run) over the raw pipe's CPU per reading plus the in-process stage's",
        around[1] / (pipe_us + in_process_us).max(f64::MIN_POSITIVE),
        "ratio",
    );
    r.figure(
        &format!("bound set by CPU on the ratio to the ceiling of any stage that writes its outputs packed {PACKED} to a record and whose rules cost what they cost in process: the available core-time per reading at the ceiling's pace (around the 2-worker run) over the packed pipe's CPU per reading plus the in-process stage's"),
        around[1] / (packed_us + in_process_us).max(f64::MIN_POSITIVE),
        "ratio",
    );
    let budget_us = rules_budget_us(around[1], packed_us, TARGET_RATIO);
    r.figure(
        &format!("CPU per reading that rules, decoding and encoding may cost in process for a stage that writes its outputs packed {PACKED} to a record to read {TARGET_RATIO} of the ceiling: the available core-time per reading at that share of the ceiling's pace (around the 2-worker run) less the packed pipe's CPU per reading"),
        budget_us,
        "core-µs",
    );
    // No budget at all (the pipe alone costs more): no multiple of it to give.
    if budget_us > 0.0 {
        r.figure(
            &format!("how many times the in-process stage's CPU per reading is that budget (above 1: no stage whose consuming and writing cost what the packed pipe's do and whose rules cost what these do in process reads {TARGET_RATIO} of the ceiling on this run's figures)"),
            in_process_us / budget_us,
            "times",
        );
    }
}

/// The share of the raw consume ceiling the stage is to read from Kafka (issue #4).
const TARGET_RATIO: f64 = 0.8;

/// What a stage's own work (its rules, decoding and encoding: what it spends beyond consuming
/// and writing its outputs) may cost per reading for its ratio to the ceiling to reach
/// `target`: at `target` of the ceiling's pace a reading has `available_us / target` of
/// core-time, of which the pipe (consuming and writing, `pipe_us`) takes its share first.
/// Zero when the pipe alone already costs more.
fn rules_budget_us(available_us: f64, pipe_us: f64, target: f64) -> f64 {
    (available_us / target - pipe_us).max(0.0)
}

/// Up to `n` of the stage's outputs, key and payload: the first of each topic (the run's
/// first minutes), statuses and transitions in the proportion it wrote them (`counts`),
/// interleaved.
async fn sample_outputs(
    bus: &floodcmd_bus::KafkaBus,
    topics: &Topics,
    counts: [u64; 2],
    n: usize,
) -> Result<Vec<(bytes::Bytes, bytes::Bytes)>, BenchError> {
    use floodcmd_model::bus::Assignment;
    let other = |e: floodcmd_model::bus::BusError| BenchError::Other(e.to_string());
    let total = (counts[0] + counts[1]).max(1);
    let mut taken = Vec::new();
    for (t, count) in [topics.status(), topics.alerts()].iter().zip(&counts) {
        let want = ((n as u64 * count).div_ceil(total) as usize).min(*count as usize);
        let mut c = bus
            .consumer("bench-sample", t, Assignment::All)
            .await
            .map_err(other)?;
        let mut got: Vec<(bytes::Bytes, bytes::Bytes)> = Vec::with_capacity(want);
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while got.len() < want && Instant::now() < deadline {
            for r in c
                .poll(want - got.len(), std::time::Duration::from_millis(200))
                .await
                .map_err(other)?
            {
                got.push((r.key, r.payload));
            }
        }
        got.truncate(want);
        taken.push(got);
    }
    // Interleaved: transitions spread among the statuses, as the stage writes them.
    let (statuses, transitions) = (&taken[0], &taken[1]);
    let every = (statuses.len() / transitions.len().max(1)).max(1);
    let mut out = Vec::with_capacity(statuses.len() + transitions.len());
    let mut t = transitions.iter();
    for (i, s) in statuses.iter().enumerate() {
        out.push(s.clone());
        if (i + 1) % every == 0 {
            out.extend(t.next().cloned());
        }
    }
    out.extend(t.cloned());
    Ok(out)
}

#[cfg(test)]
mod budget_tests {
    use super::rules_budget_us;

    #[test]
    fn the_budget_is_what_the_pipe_leaves_at_the_targets_pace_and_never_negative() {
        // 2 core-µs available a reading at the ceiling's pace: 2.5 at 0.8 of it.
        assert!((rules_budget_us(2.0, 1.5, 0.8) - 1.0).abs() < 1e-12);
        // A stage spending exactly pipe + budget reaches the target ratio: 2.0 / 2.5 = 0.8.
        let budget = rules_budget_us(2.0, 1.5, 0.8);
        assert!((2.0 / (1.5 + budget) - 0.8).abs() < 1e-12);
        assert_eq!(rules_budget_us(1.0, 3.0, 0.8), 0.0);
    }
}
