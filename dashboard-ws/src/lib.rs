//! The command wall's server: warp HTTP, and a websocket on its own framing.
//!
//! **Architecture Invariant:** only this crate knows about HTTP and JSON for browsers. It is a
//! plain consumer of the bus (`status`, `incidents`, `notifications`, `deliveries`, `rejects`,
//! `alerts`): [`state`] folds those topics into the wall's view, [`feed`] numbers its changes
//! for the clients, [`server`] serves it as REST, as a websocket (a snapshot, then coalesced
//! deltas, with resume after a reconnect; [`socket`] runs each websocket connection on the
//! shared frames of `floodcmd-ws-frames`), as Prometheus text, and [`assets`] serves the page
//! bundle compiled into the binary and the camera streams. [`auth`] holds users, logins and
//! roles; [`guard`] the rate limits, the websocket's Origin check and the count of what is
//! refused; [`history`] the last hours of each point for the charts. Its one write is
//! [`actions`]: what commanders do goes onto the `actions` topic for the alerts stage,
//! attributed to the logged-in user.

pub mod actions;
pub mod assets;
pub mod auth;
pub mod feed;
pub mod guard;
pub mod history;
pub mod server;
pub mod socket;
pub mod state;
#[cfg(test)]
mod wall_fixtures;

pub use server::{serve, DashboardConfig};
pub use state::WallState;
