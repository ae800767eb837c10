//! The raw Kafka ceiling: librdkafka producing and consuming records of our size and format as
//! fast as it can, with the same durability settings floodcmd uses (idempotent, acks=all).
//!
//! It runs in the bench's process, so librdkafka allocates through the binary's allocator
//! (mimalloc overrides `malloc`, `src/main.rs`), as the stages it is set beside do. Under
//! glibc's malloc the consume ceiling was a fifth to three tenths lower: each message freed on
//! the reading thread took the fetching thread's arena lock.

use crate::machine_cpu::{CpuMark, CpuSpent};
use crate::report::{Machine, Report};
use crate::sample_reading;
use floodcmd_model::bus::partition_for;
use floodcmd_model::codec::encode;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// Errors of the Kafka benches.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// librdkafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Something else went wrong.
    #[error("{0}")]
    Other(String),
}

/// Measured rates.
#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    /// Records produced per second (acknowledged).
    pub produce_per_s: f64,
    /// Records consumed per second.
    pub consume_per_s: f64,
}

/// A name for this run's topics and groups, unlike any other run's: the pid alone could name
/// an earlier process's on a broker kept between runs (the test suite's), whose records and
/// offsets a run would then count as its own.
pub(crate) fn run_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}x{nanos}", std::process::id())
}

fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    settings: KafkaSettings,
) -> Result<(), BenchError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in settings {
        config.set(key, value);
    }
    let admin: AdminClient<_> = config.create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Other(e.to_string()))?;
    rt.block_on(admin.create_topics(
        [&NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(1),
        )],
        &AdminOptions::new(),
    ))?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// Produce `records` readings to a fresh topic, then consume them all; blocking.
pub fn measure(bootstrap: &str, records: u64, partitions: i32) -> Result<Ceiling, BenchError> {
    let (topic, produce_per_s) = fill_topic(bootstrap, records, partitions)?;
    Ok(Ceiling {
        produce_per_s,
        consume_per_s: consume_topic(bootstrap, &topic, records, partitions, &[])?.per_s,
    })
}

/// Produce `records` readings to a fresh topic as fast as librdkafka will; blocking. Returns
/// the topic and the rate, records/s (acknowledged).
fn fill_topic(bootstrap: &str, records: u64, partitions: i32) -> Result<(String, f64), BenchError> {
    let topic = format!("bench.ceiling.{}", std::process::id());
    create_topic(bootstrap, &topic, partitions, &[])?;
    let payloads: Vec<(String, bytes::Bytes)> = (0..1000)
        .map(|i| {
            let r = sample_reading(i);
            (r.sensor.to_string(), encode(&r))
        })
        .collect();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let start = Instant::now();
    for i in 0..records {
        let (key, payload) = &payloads[(i % 1000) as usize];
        let p = partition_for(key.as_bytes(), partitions as u32) as i32;
        let mut record = BaseRecord::to(&topic)
            .key(key.as_str())
            .payload(payload.as_ref())
            .partition(p);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok((topic, records as f64 / start.elapsed().as_secs_f64()))
}

/// A rate, and what the machine's cores did over the same timed span (not the setting up
/// and tearing down of clients and topics around it).
#[derive(Clone, Copy, Debug)]
pub struct Timed {
    /// Records (or readings) per second.
    pub per_s: f64,
    /// The cores over the timed span.
    pub cpu: CpuSpent,
}

/// Consume the first `records` records of `topic` from the beginning, as fast as librdkafka
/// will; blocking. Each call reads afresh (a group of its own), so a run can take the ceiling
/// more than once. `settings`: librdkafka settings over the consumer's own (see
/// [`KafkaSettings`]).
pub fn consume_topic(
    bootstrap: &str,
    topic: &str,
    records: u64,
    partitions: i32,
    settings: KafkaSettings,
) -> Result<Timed, BenchError> {
    let consumer = ceiling_consumer(bootstrap, topic, partitions, settings)?;
    let mark = CpuMark::now();
    let start = Instant::now();
    let mut seen = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < records {
        if Instant::now() > deadline {
            return Err(BenchError::Other(format!(
                "consumed only {seen} of {records}"
            )));
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m?;
            seen += 1;
        }
    }
    let per_s = records as f64 / start.elapsed().as_secs_f64();
    Ok(Timed {
        per_s,
        cpu: mark.spent(),
    })
}

/// librdkafka settings a run gives every Kafka client it makes, the stage's and its raw peers'
/// alike (`bench stream-kafka --kafka-setting KEY=VALUE`): a tuning is tried against peers
/// that have it too, and without a rebuild. As the bus does, each client takes them over its
/// tunable defaults, and then sets what it rests on itself (a consumer's group and commits;
/// the bus's producer, idempotence and `acks`), which they cannot change.
pub type KafkaSettings<'a> = &'a [(String, String)];

/// The ceiling's consumer settings: set for throughput, `settings` over those, then its own
/// group and no commits.
fn ceiling_consumer_config(bootstrap: &str, group: &str, settings: KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("fetch.min.bytes", "1048576")
        .set("fetch.wait.max.ms", "50")
        // At librdkafka's default (1 s), a partition whose local queue filled was not fetched
        // again for a second, and the whole read came out in whole-second steps (1M records in
        // 2.3, 3.3 or 4.3 s: ceilings of 430k, 300k or 230k records/s from one run to the next).
        .set("fetch.queue.backoff.ms", "10");
    for (key, value) in settings {
        config.set(key, value);
    }
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false");
    config
}

/// A consumer of every partition of `topic` from the beginning, in a group of its own (see
/// [`ceiling_consumer_config`]).
fn ceiling_consumer(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    settings: KafkaSettings,
) -> Result<BaseConsumer, BenchError> {
    static READS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let read = READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let group = format!("bench-ceiling-{}-{read}", std::process::id());
    let consumer: BaseConsumer = ceiling_consumer_config(bootstrap, &group, settings).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// The raw pipe: consume the first `records` records of `topic` and for each produce
/// `per_record` records on average (cycling through `outputs`, key and payload, as a stage's
/// real outputs) to a fresh topic, with the bus's producer settings (idempotent, acks=all,
/// linger 5 ms, LZ4; librdkafka's own queue, its delivery reports served on a thread of their
/// own as the bus's are), until every one is acknowledged; one thread, no rules, nothing
/// decoded. The rate is of records consumed.
///
/// What librdkafka and the broker allow a stage that reads a reading and writes what it
/// causes: the stream stage's outputs are more records than its input, and bigger ones.
///
/// With `pack` above 1, the outputs of each partition go `pack` to a record, their payloads
/// one to a line (the last record of a partition may hold fewer), with an empty key (a record
/// of many points has no one key; the partition is set): what the same outputs would cost if
/// a record carried many of them instead of one. `settings` go to its consumer and producer
/// alike (see [`KafkaSettings`]).
// Each argument is one knob of the one measurement; a struct of them would be read once, here.
#[allow(clippy::too_many_arguments)]
pub fn pipe_topic(
    bootstrap: &str,
    topic: &str,
    records: u64,
    partitions: i32,
    outputs: &[(bytes::Bytes, bytes::Bytes)],
    per_record: f64,
    pack: usize,
    settings: KafkaSettings,
) -> Result<Timed, BenchError> {
    use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
    if outputs.is_empty() {
        return Err(BenchError::Other("no outputs to pipe".into()));
    }
    static PIPES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let out_topic = format!(
        "bench.pipe.{}.{}",
        run_name(),
        PIPES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    create_topic(bootstrap, &out_topic, partitions, settings)?;
    let consumer = ceiling_consumer(bootstrap, topic, partitions, settings)?;
    let producer: ThreadedProducer<DefaultProducerContext> =
        floodcmd_bus::kafka::producer_config(&floodcmd_bus::KafkaConfig {
            extra: settings.to_vec(),
            ..floodcmd_bus::KafkaConfig::new(bootstrap)
        })
        .create()?;
    let mark = CpuMark::now();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(300);
    let (mut seen, mut owed, mut next) = (0u64, 0.0f64, 0usize);
    let pack = pack.max(1);
    // Per partition: the payloads gathered for its next record, and how many.
    let mut packing: Vec<(Vec<u8>, usize)> = (0..partitions).map(|_| (Vec::new(), 0)).collect();
    let send = |partition: i32, key: &[u8], payload: &[u8]| -> Result<(), BenchError> {
        let mut record = BaseRecord::to(&out_topic)
            .key(key)
            .payload(payload)
            .partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                // Room comes as the broker acknowledges, as the bus waits for it.
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    };
    while seen < records {
        if Instant::now() > deadline {
            return Err(BenchError::Other(format!("piped only {seen} of {records}")));
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        m?;
        seen += 1;
        owed += per_record;
        while owed >= 1.0 {
            owed -= 1.0;
            let (key, payload) = &outputs[next % outputs.len()];
            next += 1;
            let p = partition_for(key, partitions as u32) as i32;
            if pack == 1 {
                send(p, key, payload)?;
                continue;
            }
            let (lines, held) = &mut packing[p as usize];
            if *held > 0 {
                lines.push(b'\n');
            }
            lines.extend_from_slice(payload);
            *held += 1;
            if *held == pack {
                send(p, b"", lines)?;
                lines.clear();
                *held = 0;
            }
        }
    }
    for (p, (lines, held)) in packing.iter().enumerate() {
        if *held > 0 {
            send(p as i32, b"", lines)?;
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let per_s = records as f64 / start.elapsed().as_secs_f64();
    Ok(Timed {
        per_s,
        cpu: mark.spent(),
    })
}

/// The `kafka-ceiling` scenario.
pub fn ceiling(
    bootstrap: &str,
    records: u64,
    command: &str,
) -> Result<(Report, Ceiling), BenchError> {
    let c = measure(bootstrap, records, 4)?;
    let record_bytes = encode(&sample_reading(7)).len();
    let mut r = Report {
        scenario: "kafka-ceiling".into(),
        command: command.into(),
        machine: Machine::here(),
        params: serde_json::json!({ "records": records, "partitions": 4, "record_bytes": record_bytes, "acks": "all", "idempotent": true }),
        figures: Vec::new(),
    };
    r.figure(
        "raw produce (librdkafka, acks=all)",
        c.produce_per_s,
        "records/s",
    );
    r.figure("raw consume (librdkafka)", c.consume_per_s, "records/s");
    Ok((r, c))
}

/// `settings` as a report shows them, `KEY=VALUE`, with secrets hidden as the bus's own
/// `KafkaConfig` shows them (a password, a secret, key material).
pub fn shown_settings(settings: KafkaSettings) -> Vec<String> {
    settings
        .iter()
        .map(|(k, v)| {
            let secret = floodcmd_bus::kafka::is_secret_setting(k);
            format!("{k}={}", if secret { "***" } else { v.as_str() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn the_ceiling_takes_settings_over_its_tuning_but_keeps_its_own_group_and_no_commits() {
        let settings = [
            pair("fetch.queue.backoff.ms", "500"),
            pair("queued.min.messages", "10000"),
            pair("group.id", "someone-else"),
            pair("enable.auto.commit", "true"),
        ];
        let c = ceiling_consumer_config("127.0.0.1:1", "bench-ceiling-1", &settings);
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("500"));
        assert_eq!(c.get("queued.min.messages"), Some("10000"));
        assert_eq!(c.get("fetch.min.bytes"), Some("1048576"));
        assert_eq!(c.get("group.id"), Some("bench-ceiling-1"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        let plain = ceiling_consumer_config("127.0.0.1:1", "g", &[]);
        assert_eq!(plain.get("fetch.queue.backoff.ms"), Some("10"));
        assert_eq!(plain.get("queued.min.messages"), None);
    }

    #[test]
    fn a_report_shows_settings_but_not_secrets() {
        let shown = shown_settings(&[
            pair("queued.min.messages", "10000"),
            pair("sasl.password", "hunter2"),
            pair("ssl.key.pem", "-----BEGIN"),
        ]);
        assert_eq!(
            shown,
            [
                "queued.min.messages=10000",
                "sasl.password=***",
                "ssl.key.pem=***"
            ]
        );
    }
}
