//! The command wall's server: warp HTTP + websocket.
//!
//! **Architecture Invariant:** only this crate knows about HTTP and JSON for browsers. It is a
//! plain consumer of the bus (`status`, `incidents`, `notifications`, `rejects`, `alerts`):
//! [`state`] folds those topics into the wall's view, [`server`] serves it as REST, as a
//! websocket (a snapshot, then coalesced deltas), as Prometheus text, and the page itself
//! from `assets/` compiled into the binary.

pub mod server;
pub mod state;

pub use server::{serve, DashboardConfig};
pub use state::WallState;
