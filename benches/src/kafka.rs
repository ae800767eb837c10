//! The raw Kafka ceiling: librdkafka producing and consuming records of our size and format as
//! fast as it can, with the same durability settings floodcmd uses (idempotent, acks=all).

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

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), BenchError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
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
    let topic = format!("bench.ceiling.{}", std::process::id());
    create_topic(bootstrap, &topic, partitions)?;
    let payloads: Vec<(String, bytes::Bytes)> = (0..1000)
        .map(|i| {
            let r = sample_reading(i);
            (r.sensor.clone(), encode(&r))
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
    let produce_s = start.elapsed().as_secs_f64();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-ceiling-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.min.bytes", "1048576")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
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
    let consume_s = start.elapsed().as_secs_f64();
    Ok(Ceiling {
        produce_per_s: records as f64 / produce_s,
        consume_per_s: records as f64 / consume_s,
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
