//! floodcmd: wiring the stages together.
//!
//! The binary (`src/main.rs`) parses the command line; this library holds what the commands
//! start, so integration tests start exactly what a user starts. [`stages`] starts one stage
//! against a bus; [`pipeline`] runs every stage in one process on the embedded bus
//! (`floodcmd demo`); [`replay`] runs a past storm's archive through the stream dataflow and
//! the incident book in isolation, and [`storm_report`] turns the result into a report;
//! [`progress`] shows how far a long import or replay has got; [`archive_export`] takes a time
//! range of the live readings topic into an archive (or into memory, for a replay).

pub mod archive_export;
pub mod pipeline;
pub mod progress;
pub mod replay;
pub mod sms_sink;
pub mod stages;
pub mod storm_report;

/// The sample district compiled into the binary: `floodcmd demo` needs no files.
pub const XINCHENG_TOML: &str = include_str!("../config/xincheng.toml");
