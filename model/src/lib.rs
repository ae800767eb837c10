//! The shared vocabulary of floodcmd.
//!
//! Every stage (ingest, stream, alerts, dashboard, simulator) speaks in the types defined
//! here and talks to the others only through a [`bus::Bus`]. This crate does no I/O beyond
//! parsing: it holds
//!
//! - [`config`]: the district (sub-districts → communities → grids → points), thresholds,
//!   cameras and the five-level responsibility chain (五级包保), parsed from TOML and validated
//!   with errors that name the field;
//! - [`reading`]: a validated sensor reading, the unit of the `readings` topic;
//! - [`event`]: what the stages publish (point status, alert transitions, incidents,
//!   notifications, operator actions, rejects);
//! - [`level`]: warning levels and data states, kept as separate dimensions;
//! - [`bus`]: the bus trait both the embedded bus and Kafka implement, and [`topic`] names;
//! - [`codec`]: how records are encoded on the bus;
//! - [`limit`]: a per-key rate limit on a clock (devices, logins, actions).

pub mod bus;
pub mod codec;
pub mod config;
pub mod event;
pub mod level;
pub mod limit;
pub mod reading;
pub mod settings;
pub mod time;
pub mod topic;

pub use config::District;
pub use level::{DataState, Level};
pub use reading::{Id, Reading, SensorKind};
