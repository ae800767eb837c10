//! The outbox sender: takes notifications from `notifications`, hands each to an SMS gateway
//! exactly once, and records what happened on `deliveries`.
//!
//! Several senders may run at once (two alerts processes, or one restarted while the old one
//! is still dying). Before sending, a sender appends a `claimed` record for the message's
//! idempotency key to `deliveries` (keyed by the idempotency key, so every record of a key is
//! in one partition, in order) and reads the log back up to its own claim. Every sender folds
//! the same log the same way ([`Ledger`]): the first claim of a key owns it, and a later claim
//! takes over only if it was written after the owner's lease ran out. Only the owner sends;
//! everyone else waits for the owner's `sent` or `failed`. So two live senders never both send
//! a message.
//!
//! A sender killed between handing a message to the gateway and writing `sent` leaves a claim
//! without a result. SMPP and the cloud SMS APIs have no idempotency key, so nobody can know
//! whether that one message left; after the lease, another sender (or the restarted one) sends
//! it again, recorded as `resent after an unfinished claim`. A flood warning that may arrive
//! twice is preferred to one that may never arrive. The window is the time of one gateway call.
//!
//! Drill notifications are never sent: the alerts stage writes them to the drill topic, and a
//! drill notification that somehow reaches the outbox is refused here as well.

use crate::stage::send_waiting;
use async_trait::async_trait;
use floodcmd_model::bus::{Assignment, Bus, BusError, Producer};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{Delivery, DeliveryState, Notification};
use floodcmd_model::time::{Clock, Millis};
use floodcmd_model::topic::Topics;
use futures::stream::{self, StreamExt};
use prometheus::{IntCounterVec, Opts};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A message accepted by a gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    /// Gateway name.
    pub gateway: String,
    /// The gateway's message ids, one per segment.
    pub message_ids: Vec<String>,
}

/// A delivery receipt from a gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct Receipt {
    /// The gateway's message id.
    pub message_id: String,
    /// Delivered to the phone.
    pub delivered: bool,
    /// The gateway's status text.
    pub detail: String,
}

/// A text from a phone to us (an SMS reply).
#[derive(Clone, Debug, PartialEq)]
pub struct PhoneReply {
    /// The phone number it came from.
    pub from: String,
    /// What it says.
    pub text: String,
}

/// Why a message could not be sent, after the gateways' own retries and fallbacks.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct SendFailed {
    /// What the gateways said.
    pub reason: String,
    /// Every gateway is down or throttling: the sender keeps the message and tries again
    /// later. Otherwise (a refused number, a refused text) it is recorded `failed` for good.
    pub retryable: bool,
}

/// Whatever hands SMS to gateways (the `floodcmd-sms` dispatcher in production, a recorder in
/// tests).
#[async_trait]
pub trait SmsSink: Send + Sync {
    /// Send one message; retries, rate limits and fallbacks happen inside.
    async fn send(&self, key: &str, phone: &str, text: &str) -> Result<Sent, SendFailed>;
    /// Delivery receipts, where the gateways have them. Called once.
    fn receipts(&self) -> Option<mpsc::UnboundedReceiver<Receipt>> {
        None
    }
    /// Replies from phones ("回复1确认"), where the gateways carry them. Called once.
    fn replies(&self) -> Option<mpsc::UnboundedReceiver<PhoneReply>> {
        None
    }
}

/// Settings of the sender.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Topics.
    pub topics: Topics,
    /// Consumer group for the outbox.
    pub group: String,
    /// This sender's name in claims (unique per process).
    pub instance: String,
    /// How long a claim without a result keeps others away.
    pub lease: Duration,
    /// Messages handed to the gateways at once.
    pub concurrency: usize,
}

/// Errors that stop the sender.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

fn counter() -> &'static IntCounterVec {
    static M: OnceLock<IntCounterVec> = OnceLock::new();
    M.get_or_init(|| {
        let c = IntCounterVec::new(
            Opts::new(
                "floodcmd_sender_messages_total",
                "Outbox messages by what the sender did with them",
            ),
            &["outcome"],
        )
        .expect("metric");
        let _ = prometheus::default_registry().register(Box::new(c.clone()));
        c
    })
}

#[derive(Clone, Debug)]
struct Claim {
    instance: String,
    at_ms: Millis,
}

#[derive(Clone, Debug, Default)]
struct KeyState {
    owner: Option<Claim>,
    /// Claims without a result that were taken over (the message may have left).
    taken_over: bool,
    result: Option<DeliveryState>,
}

/// The fold of the `deliveries` log, identical in every sender that reads it.
#[derive(Debug, Default)]
pub struct Ledger {
    keys: HashMap<String, KeyState>,
    /// Next offset to read per partition: how far this fold has seen.
    seen: BTreeMap<u32, u64>,
    lease_ms: Millis,
}

/// Who may send a key now.
#[derive(Clone, Debug, PartialEq)]
pub enum Turn {
    /// Sent, delivered or failed already.
    Done,
    /// Nobody owns it (or the owner's lease ran out): claim it.
    Free {
        /// A previous claim ended without a result.
        in_doubt: bool,
    },
    /// This instance owns it.
    Mine,
    /// Another live sender owns it.
    Theirs,
}

impl Ledger {
    /// An empty fold with `lease`.
    pub fn new(lease: Duration) -> Self {
        Ledger {
            lease_ms: lease.as_millis() as Millis,
            ..Default::default()
        }
    }

    /// Fold one record at `partition`/`offset`.
    pub fn apply(&mut self, partition: u32, offset: u64, d: &Delivery) {
        let next = self.seen.entry(partition).or_insert(0);
        *next = (*next).max(offset + 1);
        let k = self.keys.entry(d.key.clone()).or_default();
        match d.state {
            DeliveryState::Claimed => {
                let takes_over = match &k.owner {
                    None => true,
                    Some(o) => k.result.is_none() && d.at_ms >= o.at_ms + self.lease_ms,
                };
                if takes_over && k.result.is_none() {
                    k.taken_over |= k.owner.is_some();
                    k.owner = Some(Claim {
                        instance: d.instance.clone(),
                        at_ms: d.at_ms,
                    });
                }
            }
            DeliveryState::Sent | DeliveryState::Failed => {
                k.result.get_or_insert(d.state);
            }
            DeliveryState::Delivered => {
                k.result = Some(DeliveryState::Delivered);
            }
        }
    }

    /// Whose turn it is to send `key`.
    pub fn turn(&self, key: &str, me: &str, now: Millis) -> Turn {
        match self.keys.get(key) {
            None => Turn::Free { in_doubt: false },
            Some(k) if k.result.is_some() => Turn::Done,
            Some(KeyState { owner: Some(o), .. }) if o.instance == me => Turn::Mine,
            Some(KeyState { owner: Some(o), .. }) if now < o.at_ms + self.lease_ms => Turn::Theirs,
            Some(k) => Turn::Free {
                in_doubt: k.owner.is_some() || k.taken_over,
            },
        }
    }

    /// Record a result this sender has just written, before the log brings it back: the
    /// outbox may hold the same key twice (two deciders), and the second copy must find it done.
    pub fn note_result(&mut self, key: &str, state: DeliveryState) {
        self.keys
            .entry(key.to_string())
            .or_default()
            .result
            .get_or_insert(state);
    }

    /// Whether the fold has read `partition` past `offset`.
    pub fn has_seen(&self, partition: u32, offset: u64) -> bool {
        self.seen.get(&partition).is_some_and(|n| *n > offset)
    }
}

struct Shared {
    ledger: Mutex<Ledger>,
    /// Bumped on every fold, so waiters wake up.
    progress: watch::Sender<u64>,
    /// Gateway message id → idempotency key, for receipts.
    by_message_id: Mutex<HashMap<String, String>>,
    /// Phone → (incident, person) of the latest notification to it, whoever sent it: a reply
    /// "1" acknowledges that one.
    latest_by_phone: Mutex<HashMap<String, (String, String)>>,
}

/// The last 11 digits: `+8613800000001`, `8613800000001` and `13800000001` are one phone.
fn phone_key(p: &str) -> String {
    let digits: String = p.chars().filter(|c| c.is_ascii_digit()).collect();
    digits[digits.len().saturating_sub(11)..].to_string()
}

/// Whether a reply means "acknowledged" (the texts say 回复1确认).
fn is_acknowledgement(text: &str) -> bool {
    matches!(
        text.trim().trim_end_matches(['。', '.', '!', '！']),
        "1" | "１" | "确认" | "收到" | "1确认"
    )
}

async fn append(
    producer: &dyn Producer,
    topic: &str,
    d: &Delivery,
) -> Result<floodcmd_model::bus::Delivery, BusError> {
    send_waiting(producer, topic, d.key.as_bytes(), encode(d), d.at_ms).await
}

/// Read `deliveries` from the start into the ledger, forever.
async fn follow_ledger(
    bus: Arc<dyn Bus>,
    group: String,
    topic: String,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let parts = bus.partitions(&topic).await?;
    let positions = (0..parts).map(|p| (p, Some(0))).collect();
    let mut consumer = bus
        .consumer(&group, &topic, Assignment::Positions(positions))
        .await?;
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            batch = consumer.poll(4096, Duration::from_millis(200)) => {
                let batch = batch?;
                if batch.is_empty() {
                    continue;
                }
                {
                    let mut ledger = shared.ledger.lock().expect("ledger lock");
                    for rec in &batch {
                        match decode::<Delivery>(&rec.payload) {
                            Ok(d) => ledger.apply(rec.partition, rec.offset, &d),
                            Err(e) => {
                                tracing::warn!(offset = rec.offset, error = %e, "undecodable delivery record ignored");
                                let next = ledger.seen.entry(rec.partition).or_insert(0);
                                *next = (*next).max(rec.offset + 1);
                            }
                        }
                    }
                }
                n += 1;
                let _ = shared.progress.send(n);
            }
        }
    }
}

/// Wait until the ledger has read past every `(partition, offset)`.
async fn wait_seen(shared: &Shared, at: &[(u32, u64)]) {
    let mut rx = shared.progress.subscribe();
    loop {
        {
            let ledger = shared.ledger.lock().expect("ledger lock");
            if at.iter().all(|(p, o)| ledger.has_seen(*p, *o)) {
                return;
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
}

/// Run the sender until `shutdown` turns true.
pub async fn run_sender(
    bus: Arc<dyn Bus>,
    sink: Arc<dyn SmsSink>,
    clock: Arc<dyn Clock>,
    config: SenderConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SenderError> {
    let topic = config.topics.deliveries();
    let (progress, _) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        ledger: Mutex::new(Ledger::new(config.lease)),
        progress,
        by_message_id: Mutex::new(HashMap::new()),
        latest_by_phone: Mutex::new(HashMap::new()),
    });
    // Catch up with the log before deciding anything.
    let ends = bus.end_offsets(&topic).await?;
    let follower = tokio::spawn(follow_ledger(
        bus.clone(),
        format!("{}-ledger", config.group),
        topic.clone(),
        shared.clone(),
        shutdown.clone(),
    ));
    let caught_up: Vec<(u32, u64)> = ends
        .iter()
        .enumerate()
        .filter(|(_, e)| **e > 0)
        .map(|(p, e)| (p as u32, e - 1))
        .collect();
    wait_seen(&shared, &caught_up).await;

    let producer = bus.producer();
    if let Some(mut receipts) = sink.receipts() {
        let (shared, producer, clock, topic, me) = (
            shared.clone(),
            producer.clone(),
            clock.clone(),
            topic.clone(),
            config.instance.clone(),
        );
        tokio::spawn(async move {
            // A receipt can overtake the send's own bookkeeping (the SMSC answers the submit
            // and sends the receipt right after): unmatched ones wait a little and try again.
            let mut unmatched: Vec<(Receipt, u32)> = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                let fresh = tokio::select! {
                    r = receipts.recv() => match r {
                        Some(r) => vec![(r, 0)],
                        None => return,
                    },
                    _ = tick.tick() => std::mem::take(&mut unmatched),
                };
                for (r, tries) in fresh {
                    let key = shared
                        .by_message_id
                        .lock()
                        .expect("id lock")
                        .get(&r.message_id)
                        .cloned();
                    let Some(key) = key else {
                        if tries < 25 {
                            unmatched.push((r, tries + 1));
                        } else {
                            tracing::debug!(id = %r.message_id, "receipt for a message this sender did not send");
                        }
                        continue;
                    };
                    let d = Delivery {
                        key,
                        state: if r.delivered {
                            DeliveryState::Delivered
                        } else {
                            DeliveryState::Failed
                        },
                        instance: me.clone(),
                        gateway: None,
                        message_ids: vec![r.message_id],
                        detail: r.detail,
                        at_ms: clock.now_ms(),
                    };
                    if let Err(e) = append(&*producer, &topic, &d).await {
                        tracing::warn!(error = %e, "could not record a delivery receipt");
                    }
                }
            }
        });
    }

    if let Some(mut replies) = sink.replies() {
        let (shared, producer, clock, actions) = (
            shared.clone(),
            producer.clone(),
            clock.clone(),
            config.topics.actions(),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(r) = replies.recv().await {
                let latest = shared
                    .latest_by_phone
                    .lock()
                    .expect("phone lock")
                    .get(&phone_key(&r.from))
                    .cloned();
                let Some((incident, person)) = latest.filter(|_| is_acknowledgement(&r.text))
                else {
                    counter().with_label_values(&["reply_not_understood"]).inc();
                    tracing::info!(text = %r.text, "an SMS reply that acknowledges nothing known here");
                    continue;
                };
                n += 1;
                let at_ms = clock.now_ms();
                let action = floodcmd_model::event::Action {
                    id: format!("sms-{}-{at_ms}-{n}", phone_key(&r.from)),
                    incident: incident.clone(),
                    kind: floodcmd_model::event::ActionKind::Acknowledge {
                        person: Some(person.clone()),
                    },
                    by: person,
                    at_ms,
                };
                counter().with_label_values(&["reply_acknowledged"]).inc();
                if let Err(e) = producer
                    .send(&actions, incident.as_bytes(), encode(&action), at_ms)
                    .await
                {
                    tracing::warn!(error = %e, "could not record an SMS acknowledgement");
                }
            }
        });
    }

    let mut outbox = bus
        .consumer(
            &config.group,
            &config.topics.notifications(),
            Assignment::All,
        )
        .await?;
    let mut retrying: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut retry_wait = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let batch = tokio::select! {
            _ = shutdown.changed() => continue,
            b = outbox.poll(256, Duration::from_millis(200)) => b?,
        };
        if batch.is_empty() {
            continue;
        }
        let mut todo: Vec<Notification> = Vec::new();
        let mut in_batch = std::collections::HashSet::new();
        for rec in &batch {
            match decode::<Notification>(&rec.payload) {
                // Two deciders (or a re-applied input) may put the same key in the outbox twice.
                Ok(n) if !in_batch.insert(n.key.clone()) => {
                    counter().with_label_values(&["duplicate_in_outbox"]).inc();
                }
                Ok(n) if n.drill => {
                    counter().with_label_values(&["refused_drill"]).inc();
                    tracing::error!(key = %n.key, "a drill notification reached the outbox; not sent");
                }
                Ok(n) => {
                    shared.latest_by_phone.lock().expect("phone lock").insert(
                        phone_key(&n.recipient.phone),
                        (n.incident.clone(), n.recipient.person.clone()),
                    );
                    todo.push(n)
                }
                Err(e) => {
                    counter().with_label_values(&["undecodable"]).inc();
                    tracing::warn!(offset = rec.offset, error = %e, "undecodable outbox record skipped");
                }
            }
        }
        // Settle every message of the batch before committing it.
        while !todo.is_empty() {
            let now = clock.now_ms();
            let mut claims = Vec::new();
            let mut waiting = Vec::new();
            for n in todo.drain(..) {
                let turn =
                    shared
                        .ledger
                        .lock()
                        .expect("ledger lock")
                        .turn(&n.key, &config.instance, now);
                match turn {
                    Turn::Done => counter().with_label_values(&["already_done"]).inc(),
                    Turn::Free { in_doubt } => claims.push((n, in_doubt)),
                    // Ours: a retry after the gateways were down, or a claim of an earlier life
                    // of this instance that did not finish (in doubt).
                    Turn::Mine => {
                        let in_doubt = !retrying.contains(&n.key);
                        claims.push((n, in_doubt))
                    }
                    Turn::Theirs => waiting.push(n),
                }
            }
            let mut written = Vec::new();
            for (n, _) in &claims {
                let d = Delivery {
                    key: n.key.clone(),
                    state: DeliveryState::Claimed,
                    instance: config.instance.clone(),
                    gateway: None,
                    message_ids: Vec::new(),
                    detail: String::new(),
                    at_ms: now,
                };
                let at = append(&*producer, &topic, &d).await?;
                written.push((at.partition, at.offset));
            }
            wait_seen(&shared, &written).await;
            let mine: Vec<(Notification, bool)> = claims
                .into_iter()
                .filter_map(|(n, in_doubt)| {
                    let turn = shared.ledger.lock().expect("ledger lock").turn(
                        &n.key,
                        &config.instance,
                        clock.now_ms(),
                    );
                    match turn {
                        Turn::Mine => Some((n, in_doubt)),
                        Turn::Done => None,
                        _ => {
                            waiting.push(n);
                            None
                        }
                    }
                })
                .collect();
            let results: Vec<Result<Option<Notification>, BusError>> = stream::iter(mine)
                .map(|(n, in_doubt)| {
                    let (sink, producer, shared, clock, topic, me) = (
                        sink.clone(),
                        producer.clone(),
                        shared.clone(),
                        clock.clone(),
                        topic.clone(),
                        config.instance.clone(),
                    );
                    async move {
                        let res = sink.send(&n.key, &n.recipient.phone, &n.text).await;
                        let note = if in_doubt {
                            "resent after an unfinished claim".to_string()
                        } else {
                            String::new()
                        };
                        let d = match res {
                            Ok(sent) => {
                                counter().with_label_values(&["sent"]).inc();
                                if in_doubt {
                                    counter().with_label_values(&["resent_in_doubt"]).inc();
                                }
                                let mut ids = shared.by_message_id.lock().expect("id lock");
                                for id in &sent.message_ids {
                                    ids.insert(id.clone(), n.key.clone());
                                }
                                Delivery {
                                    key: n.key.clone(),
                                    state: DeliveryState::Sent,
                                    instance: me,
                                    gateway: Some(sent.gateway),
                                    message_ids: sent.message_ids,
                                    detail: note,
                                    at_ms: clock.now_ms(),
                                }
                            }
                            Err(e) if e.retryable => {
                                // Keep the claim and the message: the gateways are down or
                                // busy, and a flood warning is not given up on for that.
                                counter().with_label_values(&["retry_later"]).inc();
                                tracing::warn!(key = %n.key, error = %e, "no gateway took the SMS; trying again later");
                                return Ok(Some(n));
                            }
                            Err(e) => {
                                counter().with_label_values(&["failed"]).inc();
                                tracing::error!(key = %n.key, error = %e, "SMS refused for good");
                                Delivery {
                                    key: n.key.clone(),
                                    state: DeliveryState::Failed,
                                    instance: me,
                                    gateway: None,
                                    message_ids: Vec::new(),
                                    detail: e.reason,
                                    at_ms: clock.now_ms(),
                                }
                            }
                        };
                        let state = d.state;
                        append(&*producer, &topic, &d).await?;
                        shared
                            .ledger
                            .lock()
                            .expect("ledger lock")
                            .note_result(&d.key, state);
                        Ok(None)
                    }
                })
                .buffer_unordered(config.concurrency.max(1))
                .collect()
                .await;
            let mut again = Vec::new();
            for r in results {
                if let Some(n) = r? {
                    again.push(n);
                }
            }
            if !again.is_empty() {
                // Still claimed by us, so nobody else sends them meanwhile; not in doubt either.
                retrying.extend(again.iter().map(|n| n.key.clone()));
                tokio::select! {
                    _ = shutdown.changed() => return Ok(()),
                    _ = tokio::time::sleep(retry_wait) => {}
                }
                retry_wait = (retry_wait * 2).min(Duration::from_secs(30));
                waiting.extend(again);
            } else {
                retry_wait = Duration::from_secs(1);
            }
            if !waiting.is_empty() {
                // Another sender owns these: wait for its result or for its lease to run out.
                tokio::select! {
                    _ = shutdown.changed() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            todo = waiting;
        }
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for r in &batch {
            last.insert(r.partition, r.offset + 1);
        }
        let positions: Vec<(u32, u64)> = last.into_iter().collect();
        outbox.commit_all(&positions).await?;
        retrying.clear();
    }
    follower.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_matched_by_the_last_eleven_digits_and_read_as_acknowledgements() {
        assert_eq!(phone_key("+8613800000001"), "13800000001");
        assert_eq!(phone_key("8613800000001"), phone_key("138 0000 0001"));
        for yes in ["1", " 1 ", "确认", "收到。", "１"] {
            assert!(is_acknowledgement(yes), "{yes}");
        }
        for no in ["2", "不确认", "", "11"] {
            assert!(!is_acknowledgement(no), "{no}");
        }
    }
}
