//! The alerts stage: alert transitions in, incidents and notifications out.
//!
//! - [`incident`]: the incident book: one open incident per point and problem (water, or a
//!   silent sensor), upgraded and downgraded with the level, with an audit timeline;
//! - [`message`]: the Chinese SMS texts;
//! - [`stage`]: the runner that consumes `alerts` and `actions`, and writes `incidents` and the
//!   `notifications` outbox, committing offsets only after its effects are on the bus.

pub mod incident;
pub mod message;
pub mod stage;

pub use incident::{Effect, IncidentBook};
pub use stage::{run_alerts, AlertsConfig};
