//! floodcmd: wiring the stages together.
//!
//! The binary (`src/main.rs`) parses the command line; this library holds what the commands
//! start, so integration tests start exactly what a user starts. [`stages`] starts one stage
//! against a bus; [`pipeline`] runs every stage in one process on the embedded bus
//! (`floodcmd demo`).

pub mod pipeline;
pub mod sms_sink;
pub mod stages;

/// The sample district compiled into the binary: `floodcmd demo` needs no files.
pub const XINCHENG_TOML: &str = include_str!("../config/xincheng.toml");
