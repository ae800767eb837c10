//! The MQTT adapter: field gateways publish readings to a broker (Mosquitto) on
//! `floodcmd/readings/<device-id>`; this subscribes and feeds every message through the same
//! [`Gateway::ingest`] as HTTP.
//!
//! Devices are authenticated by the broker, not here: an MQTT subscriber never learns who
//! published a message, only its topic. So the broker must hold each device's credentials
//! (user name = device id, password = its token) and an ACL that lets a device publish only
//! under its own id (`pattern write floodcmd/readings/%u`) and nobody but this adapter read
//! them; `allow_anonymous false`. The device id in the topic then decides which sensors the
//! message may carry, exactly as a bearer token does over HTTP. The adapter logs in with its
//! own user name and password ([`MqttConfig::credentials`]). docs/SECURITY.md has the broker
//! config; `tests/mqtt_auth.rs` runs it against a real Mosquitto. Messages are acknowledged (QoS 1, manual acks) only
//! after everything they carried is on the bus, so a crash or a full bus means the broker
//! delivers them again rather than losing them. The session is persistent: messages published
//! while the adapter is away wait at the broker.

use crate::decode::Framing;
use crate::gateway::{Access, Gateway, GatewayError};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where the broker is and what to subscribe to. Debug hides the password.
#[derive(Clone)]
pub struct MqttConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id (one per adapter instance; the broker keeps its session).
    pub client_id: String,
    /// Topic prefix; the adapter subscribes to `<prefix>/#`.
    pub prefix: String,
    /// The adapter's user name and password at the broker; `None`: anonymous (trials).
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("prefix", &self.prefix)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(user, _)| (user, "***")),
            )
            .finish()
    }
}

impl MqttConfig {
    /// The defaults used by `scripts/mosquitto.sh`: 127.0.0.1:18830, `floodcmd/readings`.
    pub fn local() -> Self {
        MqttConfig {
            host: "127.0.0.1".into(),
            port: 18830,
            client_id: "floodcmd-ingest".into(),
            prefix: "floodcmd/readings".into(),
            credentials: None,
        }
    }
}

/// How a message's payload is framed. Several readings in one message come as a JSON array
/// or as NDJSON lines; a single object may be pretty-printed over several lines, so only text
/// that is not one JSON value is taken as NDJSON.
pub fn framing_of(payload: &[u8]) -> Framing {
    let body = payload.trim_ascii();
    if body.contains(&b'\n') && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        Framing::NdJson
    } else {
        Framing::Json
    }
}

/// The device id a publish on `topic` names: what follows `<prefix>/`; empty when the topic
/// is not under the prefix (the devices file refuses an empty id, so such a message is
/// refused as from an unregistered device).
pub fn device_id<'a>(prefix: &str, topic: &'a str) -> &'a str {
    topic
        .strip_prefix(prefix)
        .unwrap_or("")
        .trim_start_matches('/')
}

/// Subscribe and ingest until `shutdown` turns true. Reconnects by itself.
pub async fn run_mqtt(
    gateway: Arc<Gateway>,
    config: MqttConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut opts = MqttOptions::new(&config.client_id, &config.host, config.port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
    if let Some((user, password)) = &config.credentials {
        opts.set_credentials(user, password);
    }
    let (client, mut events) = AsyncClient::new(opts, 256);
    let filter = format!("{}/#", config.prefix);
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => break,
            e = events.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(200);
                tracing::info!(broker = %format!("{}:{}", config.host, config.port), %filter, "MQTT connected");
                if let Err(e) = client.subscribe(&filter, QoS::AtLeastOnce).await {
                    tracing::error!(error = %e, "MQTT subscribe failed");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let device_id = device_id(&config.prefix, &p.topic);
                let device = match gateway.access() {
                    Access::Open => None,
                    Access::Devices(reg) => match reg.by_id(device_id) {
                        Some(d) => Some(d.clone()),
                        None => {
                            // Kept as a dead letter like any refused input, then acknowledged.
                            tracing::warn!(topic = %p.topic, "MQTT message from an unregistered device");
                            let reject = floodcmd_model::event::Reject {
                                reason: floodcmd_model::event::RejectReason::Forbidden,
                                detail: format!(
                                    "MQTT topic {} names no registered device",
                                    p.topic
                                ),
                                source: "mqtt".into(),
                                index: None,
                                sensor: None,
                                raw: String::from_utf8_lossy(
                                    &p.payload[..p.payload.len().min(64 * 1024)],
                                )
                                .into_owned(),
                                received_ms: gateway.now_ms(),
                            };
                            if gateway.dead_letter(reject).await.is_ok() {
                                let _ = client.ack(&p).await;
                            }
                            continue;
                        }
                    },
                };
                // MQTT 3.1.1 redelivers an unacknowledged message only after a reconnect, so
                // a message the bus cannot take yet is retried here until it can, then acked.
                let mut wait = Duration::from_millis(200);
                loop {
                    match gateway
                        .ingest(&p.payload, framing_of(&p.payload), "mqtt", device.as_ref())
                        .await
                    {
                        Ok(_) => {
                            if let Err(e) = client.ack(&p).await {
                                tracing::warn!(error = %e, "MQTT ack failed; the broker will deliver again");
                            }
                            break;
                        }
                        Err(GatewayError::Incomplete { cause, .. }) => {
                            tracing::warn!(error = %cause, retry_in = ?wait, "bus could not take an MQTT message; retrying");
                            tokio::select! {
                                _ = shutdown.changed() => return,
                                _ = tokio::time::sleep(wait) => {}
                            }
                            wait = (wait * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "MQTT connection lost");
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    let _ = client.disconnect().await;
}
