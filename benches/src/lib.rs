//! The benchmark harness behind `floodcmd bench <scenario>`: every performance figure the
//! project reports comes from here, with the machine it ran on, as JSON and a Markdown table.
//!
//! - [`kafka::ceiling`]: raw librdkafka produce and consume of our record size and format
//!   against the same broker: the yardstick the other scenarios are divided by;
//! - [`gateway::throughput`]: the HTTP ingest gateway writing to Kafka, batched NDJSON from
//!   several clients;
//! - [`influx_sink::throughput`]: the time-series sink's sustained write rate into a real
//!   server, beside that server's own ceiling;
//! - [`stream_core`]: the stream stage alone, in process, 1 and 2 workers, and its memory;
//!   and reading its input from a real Kafka topic beside the raw consume ceiling taken around
//!   each run, with what the machine's cores spent per reading in each part
//!   ([`machine_cpu`]) and the bound that sets on the stage's ratio to the ceiling, and what a
//!   broker on the same machine gave its JIT compilers meanwhile ([`broker_jit`]);
//! - [`fanout::run`]: websocket clients on the command wall while readings stream in at a
//!   fixed rate through the whole pipeline: ingest → delta latency per client;
//! - [`pipeline::run`]: the whole pipeline (in process on the embedded bus, or stage processes
//!   across real Kafka) under open-loop load: reading → alert, → status, → websocket delta
//!   percentiles, CPU per reading and peak memory per stage, and the highest sustained rate;
//! - [`sms::mass_alert`]: 10,000 recipients through the SMPP simulator with and without a rate
//!   limit.
//!
//! `benches/micro.rs` holds the criterion micro-benchmarks (record codec, rain window update,
//! threshold evaluation): `cargo bench -p floodcmd-benches`.

pub mod broker_jit;
pub mod fanout;
pub mod gateway;
pub mod influx_sink;
pub mod kafka;
pub mod machine_cpu;
pub mod pipeline;
pub mod report;
pub mod sms;
pub mod stream_core;

use floodcmd_model::{Reading, SensorKind};

/// A typical depth reading, as the benches encode and decode it.
pub fn sample_reading(i: u64) -> Reading {
    Reading {
        sensor: format!("WL-UP-{:02}", i % 18 + 1).into(),
        point: format!("UP-{:02}", i % 18 + 1).into(),
        kind: SensorKind::Depth,
        ts_ms: 1_783_000_000_000 + i as i64 * 1000,
        value: 12.5 + (i % 100) as f64 * 0.1,
        seq: Some(i),
        received_ms: 1_783_000_000_100 + i as i64 * 1000,
    }
}
