//! The alerts stage: alert transitions in, incidents and notifications out, and the sender
//! that hands the outbox to SMS gateways.
//!
//! - [`incident`]: the incident book: one open incident per point and problem (water, or a
//!   silent sensor), upgraded and downgraded with the level, with an audit timeline;
//! - [`escalation`]: the ladder derived from the five-level chain, with per-step timers;
//! - [`closure`]: the underpass closure lifecycle (建议封闭 → 已封闭 → 退水 → 复查 → 解封);
//! - [`message`]: the Chinese SMS texts;
//! - [`stage`]: the runner that consumes `alerts` and `actions`, and writes `incidents` and the
//!   `notifications` outbox (or the `drill` topic), committing offsets only after its effects
//!   are on the bus, and rebuilding its book from `incidents` on start;
//! - [`sender`]: the outbox sender: claims each message on `deliveries` (first claim wins), sends
//!   it through an [`sender::SmsSink`], records sent, delivered or failed.

pub mod closure;
pub mod escalation;
pub mod incident;
pub mod message;
pub mod sender;
pub mod stage;

pub use incident::{Effect, IncidentBook};
pub use stage::{run_alerts, AlertsConfig};
