//! SMS delivery for the alerts stage: the gateways that put a notification on a phone, and the
//! dispatcher that chooses between them.
//!
//! - [`SmsGateway`] is the seam: one message in, a [`SendReceipt`] or an [`SmsError`] out. The
//!   error says what the caller may do next: wait and retry ([`SmsError::Throttled`]), try
//!   another gateway ([`SmsError::Unavailable`]) or give up ([`SmsError::Rejected`]).
//! - [`smpp`]: an SMPP 3.4 client (transceiver bind, windowed `submit_sm`, delivery receipts,
//!   replies from phones as [`Reply`], reconnects) with UCS-2 segmentation of Chinese texts.
//! - [`http_sendsms`]: a client for an Alibaba Cloud style `SendSms` RPC API with HMAC-SHA1
//!   request signing; [`receiver`] is a local endpoint that verifies those signatures, for tests
//!   and drills (no simulator of the cloud API exists).
//! - [`dispatch`]: an ordered list of gateways with per-gateway token buckets, exponential
//!   backoff on throttling, fallback with a circuit breaker, and one send per key at a time.
//! - [`settings`]: the serde settings (`[sms]`) and their validation.
//!
//! **API Boundary:** the alerts stage uses [`dispatch::Dispatcher`] (built from
//! [`settings::SmsSettings`]) and the types in this file, nothing else.
//!
//! Durable deduplication is not here: the alerts outbox decides what is sent at most once; the
//! dispatcher only guarantees that one key is never in flight twice in one process.

pub mod dispatch;
pub mod http_sendsms;
mod metrics;
pub mod receiver;
pub mod settings;
pub mod smpp;

pub use dispatch::{DispatchConfig, DispatchError, Dispatcher};
pub use settings::{GatewaySettings, SettingsProblem, SmsSettings};

use std::time::Duration;

/// One text to one phone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmsMessage {
    /// Idempotency key (the outbox's `<incident>/<level>/<person>`): the dispatcher never has
    /// two sends of one key in flight, and gateways that can carry it pass it on (e.g. `OutId`).
    pub key: String,
    /// The recipient, digits with an optional leading `+` and country code.
    pub phone: String,
    /// The text, any Unicode; long texts are split by the gateway.
    pub text: String,
}

/// What a gateway accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendReceipt {
    /// The gateway's name (from the settings).
    pub gateway: String,
    /// The gateway's id of each part, in part order; delivery receipts carry these.
    pub message_ids: Vec<String>,
    /// How many SMS the text took (one per 70 UCS-2 characters, 67 when concatenated).
    pub parts: usize,
}

/// A handset's (or the operator's final) verdict on one part, where the protocol reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryReceipt {
    /// The gateway that reported it.
    pub gateway: String,
    /// The id from [`SendReceipt::message_ids`].
    pub message_id: String,
    /// True when the final state is delivered (`stat:DELIVRD`).
    pub delivered: bool,
    /// The reported state as the gateway spelled it (`DELIVRD`, `UNDELIV`, `EXPIRED`, ...).
    pub stat: String,
}

/// Why a send did not go through, grouped by what the caller should do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmsError {
    /// The gateway is busy or over its rate: retry the same gateway later.
    #[error("throttled by the gateway{}", retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    Throttled {
        /// How long the gateway asked us to wait, when it said.
        retry_after: Option<Duration>,
    },
    /// The gateway cannot be reached or did not answer (down, connect failed, timeout, bind
    /// refused): another gateway may succeed. The message may or may not have been accepted
    /// when the connection broke after the request left.
    #[error("gateway unavailable: {reason}")]
    Unavailable {
        /// What failed.
        reason: String,
    },
    /// The gateway refused this message for good (bad number, bad text, bad credentials):
    /// retrying it anywhere would be refused again.
    #[error("rejected: {reason}")]
    Rejected {
        /// The gateway's reason.
        reason: String,
    },
}

impl SmsError {
    /// True when no retry can help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SmsError::Rejected { .. })
    }
}

/// A way to put a text on a phone.
/// A message from a phone to us (mobile-originated), e.g. `1` in answer to "回复1确认".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Gateway it came through.
    pub gateway: String,
    /// The phone number it came from.
    pub from: String,
    /// The text.
    pub text: String,
}

#[async_trait::async_trait]
pub trait SmsGateway: Send + Sync {
    /// The name used in receipts, logs and metrics.
    fn name(&self) -> &str;

    /// Send one message; returns when the gateway has accepted (or refused) every part.
    async fn send(&self, msg: &SmsMessage) -> Result<SendReceipt, SmsError>;

    /// How many units of the gateway's rate limit this message uses: SMSCs count every
    /// `submit_sm`, so a long text costs one per part.
    fn cost(&self, msg: &SmsMessage) -> u32 {
        let _ = msg;
        1
    }

    /// Delivery receipts, for protocols that report them (SMPP); `None` otherwise. Every call
    /// returns a new subscriber that sees receipts from then on.
    fn receipts(&self) -> Option<tokio::sync::broadcast::Receiver<DeliveryReceipt>> {
        None
    }

    /// Replies from phones, where the protocol carries them.
    fn replies(&self) -> Option<tokio::sync::broadcast::Receiver<Reply>> {
        None
    }

    /// Leave politely (SMPP unbinds) and stop reconnecting.
    async fn close(&self) {}
}
