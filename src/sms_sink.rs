//! The seam between the alerts outbox sender and the SMS gateways: the `floodcmd-sms`
//! dispatcher (SMPP, HTTP `SendSms`, fallbacks, rate limits) as an [`SmsSink`].

use floodcmd_alerts::sender::{PhoneReply, Receipt, SendFailed, Sent, SmsSink};
use floodcmd_sms::{Dispatcher, SmsMessage, SmsSettings};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

/// The dispatcher behind the outbox sender.
pub struct DispatcherSink(pub Arc<Dispatcher>);

#[async_trait::async_trait]
impl SmsSink for DispatcherSink {
    async fn send(&self, key: &str, phone: &str, text: &str) -> Result<Sent, SendFailed> {
        let msg = SmsMessage {
            key: key.to_string(),
            phone: phone.to_string(),
            text: text.to_string(),
        };
        match self.0.send(&msg).await {
            Ok(r) => Ok(Sent {
                gateway: r.gateway,
                message_ids: r.message_ids,
            }),
            Err(e) => Err(SendFailed {
                reason: e.to_string(),
                retryable: !e.is_permanent(),
            }),
        }
    }

    fn replies(&self) -> Option<mpsc::UnboundedReceiver<PhoneReply>> {
        let mut from = self.0.replies();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match from.recv().await {
                    Ok(r) => {
                        if tx
                            .send(PhoneReply {
                                from: r.from,
                                text: r.text,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "SMS replies came faster than handled");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Some(rx)
    }

    fn receipts(&self) -> Option<mpsc::UnboundedReceiver<Receipt>> {
        let mut from = self.0.receipts();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match from.recv().await {
                    Ok(r) => {
                        let receipt = Receipt {
                            message_id: r.message_id,
                            delivered: r.delivered,
                            detail: format!("{} {}", r.gateway, r.stat),
                        };
                        if tx.send(receipt).is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "delivery receipts came faster than recorded");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Some(rx)
    }
}

/// Errors in `[sms]`, each naming its field.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct SmsConfigError(pub Vec<String>);

/// The `[sms]` section decoded and validated; `None` when no gateway is configured.
pub fn dispatcher_from(table: &toml::Table) -> Result<Option<Arc<Dispatcher>>, SmsConfigError> {
    let mut settings: SmsSettings = toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| SmsConfigError(vec![format!("sms: {e}")]))?;
    if settings.gateways.is_empty() {
        return Ok(None);
    }
    settings
        .resolve_secrets(|var| std::env::var(var).ok())
        .map_err(|problems| {
            SmsConfigError(
                problems
                    .into_iter()
                    .map(|p| format!("{}: {}", p.path, p.message))
                    .collect(),
            )
        })?;
    Dispatcher::from_settings(&settings, Default::default())
        .map(|d| Some(Arc::new(d)))
        .map_err(|problems| {
            SmsConfigError(
                problems
                    .into_iter()
                    .map(|p| format!("{}: {}", p.path, p.message))
                    .collect(),
            )
        })
}
