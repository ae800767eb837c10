//! The stream stage: readings in, point status and alert transitions out, in event time.
//!
//! - [`rain`]: rolling rain totals in fixed memory;
//! - [`level`]: levels with hysteresis and hold times;
//! - [`engine`]: the per-point rules, with no timely in sight (unit-testable, and the
//!   reference the dataflow is checked against);
//! - [`dataflow`]: the timely dataflow that feeds the engine from the bus, one complete
//!   event-time epoch at a time, and writes its outputs back to the bus.

pub mod dataflow;
pub mod engine;
pub mod level;
pub mod rain;

pub use dataflow::{run_stream, StreamConfig, StreamHandle, Watermark};
pub use engine::{Engine, StreamOutput, TimedReading};
