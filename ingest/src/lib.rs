//! The sensor gateway: what field devices talk to.
//!
//! Bytes come in (HTTP today; MQTT beside it), are split into records ([`decode`]), each
//! record is judged on its own ([`validate`]), valid readings go to the `readings` topic keyed
//! by sensor id, and every refused record goes to the `rejects` topic with its original bytes
//! and a reason. One bad record never takes its neighbours down with it, and a request is
//! answered only after everything it carried is on the bus.

pub mod auth;
pub mod decode;
pub mod gateway;
pub mod metrics;
pub mod mqtt;
pub mod validate;

pub use gateway::{Access, Gateway, GatewayConfig, IngestOutcome};
