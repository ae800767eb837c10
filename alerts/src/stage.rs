//! The alerts stage runner: bus in, bus out.

use crate::incident::{Effect, IncidentBook};
use floodcmd_model::bus::{Assignment, Bus, BusError, Consumer, Producer, Record};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{Action, AlertTransition, Incident, InputOffset, Reject};
use floodcmd_model::time::Clock;
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use prometheus::{IntCounterVec, Opts};
use std::collections::BTreeMap;
use std::path::PathBuf;
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
    /// Drill: notifications go to the drill topic, never to the outbox a sender reads.
    pub drill: bool,
    /// The district file, re-read while running so roster changes reach open incidents.
    pub district_file: Option<PathBuf>,
    /// How often to look at the district file.
    pub reload_every: Duration,
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

/// Send, waiting out a full bus (`Timeout`) with backoff: an effect is never skipped, and the
/// input that caused it is committed only after it lands. Other errors are returned.
pub(crate) async fn send_waiting(
    producer: &dyn Producer,
    topic: &str,
    key: &[u8],
    payload: bytes::Bytes,
    ts: i64,
) -> Result<floodcmd_model::bus::Delivery, BusError> {
    let mut wait = Duration::from_millis(200);
    loop {
        match producer.send(topic, key, payload.clone(), ts).await {
            Err(BusError::Timeout { .. }) => {
                tracing::warn!(topic, retry_in = ?wait, "bus full; the alerts stage waits");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

struct Outputs<'a> {
    producer: &'a dyn Producer,
    topics: &'a Topics,
    clock: &'a dyn Clock,
}

impl Outputs<'_> {
    async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: bytes::Bytes,
        ts: i64,
    ) -> Result<(), BusError> {
        send_waiting(self.producer, topic, key, payload, ts)
            .await
            .map(|_| ())
    }

    async fn effects(&self, effects: Vec<Effect>, drill: bool) -> Result<(), BusError> {
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
                    // A drill's messages go where no sender reads: captured, never sent.
                    let (topic, kind) = if drill || n.drill {
                        (self.topics.drill(), "drill_notification")
                    } else {
                        (self.topics.notifications(), "notification")
                    };
                    effects_counter().with_label_values(&[kind]).inc();
                    self.send(&topic, n.key.as_bytes(), encode(&n), n.event_ms)
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
    let positions: Vec<(u32, u64)> = last.into_iter().collect();
    consumer.commit_all(&positions).await
}

/// Read a whole topic from its first retained record to its current end.
pub async fn read_to_end(bus: &dyn Bus, group: &str, topic: &str) -> Result<Vec<Record>, BusError> {
    let ends = bus.end_offsets(topic).await?;
    let positions = (0..ends.len() as u32).map(|p| (p, Some(0))).collect();
    let mut consumer = bus
        .consumer(group, topic, Assignment::Positions(positions))
        .await?;
    let mut at = vec![0u64; ends.len()];
    let mut out = Vec::new();
    let mut quiet = 0;
    while at.iter().zip(&ends).any(|(a, e)| a < e) {
        let batch = consumer.poll(4096, Duration::from_millis(500)).await?;
        if batch.is_empty() {
            // Retention may have removed what the end offsets promise; do not wait forever.
            quiet += 1;
            if quiet >= 10 {
                tracing::warn!(
                    topic,
                    ?at,
                    ?ends,
                    "stopped reading before the end offsets: nothing more came"
                );
                break;
            }
            continue;
        }
        quiet = 0;
        for rec in batch {
            let p = rec.partition as usize;
            at[p] = at[p].max(rec.offset + 1);
            if rec.offset < ends[p] {
                out.push(rec);
            }
        }
    }
    Ok(out)
}

/// Each record of a poll with its position: its offset, and its place among the records at
/// that offset. A packed topic's records share their pack's offset (`floodcmd_bus::pack`) and
/// a pack comes whole in one poll, its members one after another, so counting them within the
/// poll gives each the same place every time it is read.
fn sources<'a>(
    leaf: &'a str,
    batch: &'a [Record],
) -> impl Iterator<Item = (&'a Record, InputOffset)> + 'a {
    let mut previous: Option<(u32, u64)> = None;
    let mut index = 0u32;
    batch.iter().map(move |rec| {
        let at = (rec.partition, rec.offset);
        index = if previous == Some(at) { index + 1 } else { 0 };
        previous = Some(at);
        let src = InputOffset {
            topic: leaf.into(),
            partition: rec.partition,
            offset: rec.offset,
            index,
        };
        (rec, src)
    })
}

/// Effects on the bus in the book's order: notifications before the incident that records them.
fn ordered(mut effects: Vec<Effect>) -> Vec<Effect> {
    effects.sort_by_key(|e| matches!(e, Effect::Incident(_)));
    effects
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
    // The book is the fold of its own output: rebuild it, and skip inputs already applied.
    let restore_group = format!("{}-restore", config.group);
    let mut versions = Vec::new();
    for rec in read_to_end(&*bus, &restore_group, &config.topics.incidents()).await? {
        match decode::<Incident>(&rec.payload) {
            Ok(i) => versions.push(i),
            Err(e) => {
                tracing::warn!(offset = rec.offset, error = %e, "undecodable incident skipped in restore")
            }
        }
    }
    let restored = versions.len();
    book.restore(versions);
    tracing::info!(
        versions = restored,
        open = book.open().len(),
        "alerts stage restored its incidents"
    );
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
    let drill = config.drill;
    let mut roster = config
        .district_file
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let mut next_reload = clock.now_ms() + config.reload_every.as_millis() as i64;
    let wait = Duration::from_millis(200);
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            batch = alerts.poll(512, wait) => {
                let batch = batch?;
                for (rec, src) in sources("alerts", &batch) {
                    if book.already_applied(&src) {
                        continue;
                    }
                    match decode::<AlertTransition>(&rec.payload) {
                        Ok(t) => {
                            let e = book.apply_transition(&t, clock.now_ms(), Some(src));
                            out.effects(ordered(e), drill).await?
                        }
                        Err(e) => out.dead_letter(rec, &e).await?,
                    }
                }
                // Effects are on the bus: now the inputs may be forgotten.
                commit_batch(&mut alerts, &batch).await?;
            }
            batch = actions.poll(512, wait) => {
                let batch = batch?;
                for (rec, src) in sources("actions", &batch) {
                    if book.already_applied(&src) {
                        continue;
                    }
                    match decode::<Action>(&rec.payload) {
                        Ok(a) => {
                            let e = book.apply_action(&a, clock.now_ms(), Some(src));
                            out.effects(ordered(e), drill).await?
                        }
                        Err(e) => out.dead_letter(rec, &e).await?,
                    }
                }
                commit_batch(&mut actions, &batch).await?;
            }
        }
        let now = clock.now_ms();
        if book.next_deadline().is_some_and(|d| d <= now) {
            out.effects(ordered(book.tick(now)), drill).await?;
        }
        if now >= next_reload {
            next_reload = now + config.reload_every.as_millis() as i64;
            if let Some(path) = &config.district_file {
                let text = std::fs::read_to_string(path).ok();
                if text.is_some() && text != roster {
                    match District::from_toml_str(text.as_deref().unwrap_or_default()) {
                        Ok(d) => {
                            tracing::info!(file = %path.display(), "district file changed; open incidents follow the new roster");
                            out.effects(ordered(book.set_district(Arc::new(d), now)), drill)
                                .await?;
                        }
                        Err(e) => {
                            tracing::error!(file = %path.display(), error = %e, "district file changed but is invalid; keeping the previous roster")
                        }
                    }
                    roster = text;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sources;
    use floodcmd_model::bus::Record;

    fn at(partition: u32, offset: u64) -> Record {
        Record {
            topic: "t".into(),
            partition,
            offset,
            key: bytes::Bytes::new(),
            payload: bytes::Bytes::new(),
            timestamp_ms: 0,
        }
    }

    /// A pack's members (one offset, one after another) are numbered in order; a record
    /// alone, or the first of the next pack, is 0, and partitions never mix.
    #[test]
    fn the_records_at_one_offset_are_numbered_in_order() {
        let batch = [
            at(0, 5),
            at(0, 5),
            at(0, 5),
            at(1, 5),
            at(1, 5),
            at(0, 6),
            at(0, 7),
            at(0, 7),
        ];
        let got: Vec<(u32, u64, u32)> = sources("alerts", &batch)
            .map(|(rec, src)| {
                assert_eq!((src.partition, src.offset), (rec.partition, rec.offset));
                assert_eq!(src.topic, "alerts");
                (src.partition, src.offset, src.index)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 5, 0),
                (0, 5, 1),
                (0, 5, 2),
                (1, 5, 0),
                (1, 5, 1),
                (0, 6, 0),
                (0, 7, 0),
                (0, 7, 1),
            ]
        );
    }
}
