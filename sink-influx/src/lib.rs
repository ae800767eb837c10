//! The time-series sink: readings, point states and alert transitions kept for months, for
//! charts, analysis and audits, in any server that speaks the InfluxDB v2 write API
//! (InfluxDB 2.x, InfluxDB Cloud, VictoriaMetrics).
//!
//! - [`line`]: the measurement schema (documented in `docs/INFLUX.md`) as line protocol, and
//!   the checks that keep a record the server could not take out of a batch;
//! - [`writer`]: one HTTP write of a batch through the `influxdb2` crate, gzip-compressed, at
//!   millisecond precision, with the server's answer sorted into "refused" and "try again";
//! - [`sink`]: the stage. It consumes `readings`, `status` and `alerts`, batches lines (a few
//!   thousand, or one second, whichever comes first), and commits offsets only after the server
//!   acknowledged the batch holding them. While the server is down it backs off and retries,
//!   and stops consuming, so memory stays bounded.
//!
//! **Nothing lost.** Every record read ends as a line the server acknowledged, or as a dead
//! letter on `rejects` with a reason, before its offset is committed. After a crash or an
//! outage a batch may be written twice; every line has the same series and timestamp both
//! times, which the server's deduplication makes harmless.

pub mod line;
pub mod sink;
pub mod writer;

pub use sink::{run_sink, SinkConfig, SinkError};
pub use writer::{InfluxTarget, InfluxWriter, WriteError, WriteLines};
