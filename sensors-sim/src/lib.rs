//! Simulated storms and the sensors that see them.
//!
//! - [`storm`]: rain cells crossing the district, in mm/h at any place and time;
//! - [`drainage`]: how depth at a point answers rain (runoff in, drains out);
//! - [`device`]: the sensors: cadence, noise, faults on demand, and posting NDJSON to the
//!   ingest gateway like a field device would.
//!
//! Everything is seeded: the same seed and district give the same storm.

pub mod device;
pub mod drainage;
pub mod storm;

pub use device::{run_sim, FaultConfig, SimConfig, SimReport};
