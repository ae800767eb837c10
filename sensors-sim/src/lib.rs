//! Simulated storms and the sensors that see them.
//!
//! - [`storm`]: rain cells crossing the district, in mm/h at any place and time;
//! - [`drainage`]: how depth at a point answers rain (runoff in, drains out);
//! - [`device`]: the sensors: cadence, noise, faults on demand (dropouts, spikes, stuck values,
//!   clock skew, duplicates, reordering, NaN, future stamps), delivered over HTTP, MQTT or
//!   straight onto the bus;
//! - [`synthetic`]: districts of any size for load tests.
//!
//! Everything is seeded: the same seed and district give the same storm.

pub mod device;
pub mod drainage;
pub mod storm;
pub mod synthetic;

pub use device::{run_sim, FaultConfig, SimConfig, SimReport, Target};
pub use synthetic::synthetic_district;
