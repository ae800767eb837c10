//! The alerts stage runner: bus in, bus out.

use crate::incident::{Effect, IncidentBook};
use floodcmd_model::bus::{Assignment, Bus, BusError, Consumer, Producer, Record};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{Action, AlertTransition, Reject};
use floodcmd_model::time::Clock;
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use prometheus::{IntCounterVec, Opts};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// Settings of the alerts stage.
#[derive(Clone, Debug)]
pub struct AlertsConfig {
    /// Topics.
    pub topics: Topics,
    /// Consumer group.
    pub group: String,
    /// Drill: notifications are captured, never sent.
    pub drill: bool,
}

/// Errors that stop the stage.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

fn effects_counter() -> &'static IntCounterVec {
    static M: OnceLock<IntCounterVec> = OnceLock::new();
    M.get_or_init(|| {
        let c = IntCounterVec::new(
            Opts::new(
                "floodcmd_alerts_effects_total",
                "Incident updates and notifications written by the alerts stage",
            ),
            &["kind"],
        )
        .expect("metric");
        let _ = prometheus::default_registry().register(Box::new(c.clone()));
        c
    })
}

struct Outputs<'a> {
    producer: &'a dyn Producer,
    topics: &'a Topics,
    clock: &'a dyn Clock,
}

impl Outputs<'_> {
    /// Send, waiting out a full bus (`Timeout`) with backoff: an effect is never skipped, and
    /// the input that caused it is committed only after it lands.
    async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: bytes::Bytes,
        ts: i64,
    ) -> Result<(), BusError> {
        let mut wait = std::time::Duration::from_millis(200);
        loop {
            match self.producer.send(topic, key, payload.clone(), ts).await {
                Ok(_) => return Ok(()),
                Err(BusError::Timeout { .. }) => {
                    tracing::warn!(topic, retry_in = ?wait, "bus full; the alerts stage waits");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn effects(&self, effects: Vec<Effect>) -> Result<(), BusError> {
        for e in effects {
            match e {
                Effect::Incident(i) => {
                    effects_counter().with_label_values(&["incident"]).inc();
                    self.send(
                        &self.topics.incidents(),
                        i.id.as_bytes(),
                        encode(&i),
                        i.updated_at,
                    )
                    .await?;
                }
                Effect::Notify(n) => {
                    effects_counter().with_label_values(&["notification"]).inc();
                    self.send(
                        &self.topics.notifications(),
                        n.key.as_bytes(),
                        encode(&n),
                        n.event_ms,
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        rec: &Record,
        err: &floodcmd_model::codec::DecodeError,
    ) -> Result<(), BusError> {
        tracing::warn!(topic = %rec.topic, offset = rec.offset, error = %err, "undecodable record dead-lettered");
        let reject = Reject::undecodable(rec, err, self.clock.now_ms());
        self.producer
            .send(
                &self.topics.rejects(),
                &rec.key,
                encode(&reject),
                reject.received_ms,
            )
            .await?;
        Ok(())
    }
}

async fn commit_batch(consumer: &mut Box<dyn Consumer>, batch: &[Record]) -> Result<(), BusError> {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for r in batch {
        last.insert(r.partition, r.offset + 1);
    }
    for (p, next) in last {
        consumer.commit(p, next).await?;
    }
    Ok(())
}

/// Run the stage until `shutdown` turns true.
pub async fn run_alerts(
    bus: Arc<dyn Bus>,
    district: Arc<District>,
    clock: Arc<dyn Clock>,
    config: AlertsConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AlertsError> {
    let mut book = IncidentBook::new(district, config.drill);
    let mut alerts = bus
        .consumer(&config.group, &config.topics.alerts(), Assignment::All)
        .await?;
    let mut actions = bus
        .consumer(&config.group, &config.topics.actions(), Assignment::All)
        .await?;
    let producer = bus.producer();
    let out = Outputs {
        producer: &*producer,
        topics: &config.topics,
        clock: &*clock,
    };
    let wait = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            batch = alerts.poll(512, wait) => {
                let batch = batch?;
                for rec in &batch {
                    match decode::<AlertTransition>(&rec.payload) {
                        Ok(t) => out.effects(book.on_transition(&t)).await?,
                        Err(e) => out.dead_letter(rec, &e).await?,
                    }
                }
                // Effects are on the bus: now the inputs may be forgotten.
                commit_batch(&mut alerts, &batch).await?;
            }
            batch = actions.poll(512, wait) => {
                let batch = batch?;
                for rec in &batch {
                    match decode::<Action>(&rec.payload) {
                        Ok(a) => out.effects(book.on_action(&a)).await?,
                        Err(e) => out.dead_letter(rec, &e).await?,
                    }
                }
                commit_batch(&mut actions, &batch).await?;
            }
        }
    }
    Ok(())
}
