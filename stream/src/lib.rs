//! The stream stage: readings in, point status and alert transitions out, in event time.
//!
//! - [`qc`]: quality control per sensor (range, spike, stuck, rate; rain intensity);
//! - [`rain`]: rolling rain totals in fixed memory;
//! - [`level`]: levels with hysteresis and hold times;
//! - [`intensity`]: the short-duration heavy rain rule (短时强降水) of rain gauges;
//! - [`rise`]: rate of rise by least squares and the predicted time to the next level;
//! - [`flap`]: flap detection (Kapacitor's weighted change ratio);
//! - [`engine`]: the per-point rules, with no timely in sight (unit-testable, and the
//!   reference the dataflow is checked against);
//! - `point_index`: point id → point state, looked up in stages so cache misses overlap
//!   (with `prefetch`, the hint that asks for memory ahead, which the engine also uses to ask
//!   for the states of the next few readings' points);
//! - [`dataflow`]: the timely dataflow that feeds the engine from the bus, one complete
//!   event-time epoch at a time, and writes its outputs back to the bus;
//! - `delivery`: those outputs encoded and handed to the bus in order, a few epochs awaiting
//!   acknowledgement at once, produced again until they land;
//! - `read_positions`: the next offset expected per partition, so records the bus deleted
//!   before they were read (Kafka's retention) are counted and named, not passed over;
//! - `rule_text`: the text a transition gives for the rule that moved it, written by hand
//!   into one buffer.

mod backlog;
pub mod dataflow;
mod delivery;
pub mod engine;
mod epoch_outputs;
pub mod flap;
pub mod intensity;
pub mod level;
mod point_index;
mod prefetch;
pub mod qc;
pub mod rain;
mod read_positions;
pub mod rise;
mod rule_text;

pub use dataflow::{
    outputs_total, readings_lost_total, readings_total, run_stream, run_stream_fed,
    run_stream_in_cluster, Cluster, DirectFeed, StreamConfig, StreamHandle, Watermark,
};
pub use engine::{Engine, Outputs, StreamOutput, TimedReading};
