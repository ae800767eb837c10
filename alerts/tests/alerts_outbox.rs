//! The outbox on the embedded bus: two senders at once, a sender killed and replaced, and a
//! drill that sends nothing. (The same code against real Kafka and the SMPP simulator is in
//! the workspace's `tests/alerts_sms.rs`.)

use async_trait::async_trait;
use floodcmd_alerts::sender::{run_sender, SendFailed, SenderConfig, Sent, SmsSink};
use floodcmd_alerts::stage::read_to_end;
use floodcmd_alerts::{run_alerts, AlertsConfig};
use floodcmd_bus::EmbeddedBus;
use floodcmd_model::bus::Bus;
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::config::{PointKind, ResponsibilityLevel};
use floodcmd_model::event::{
    AlertTransition, Delivery, DeliveryState, Notification, Recipient, TransitionKind,
};
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Level};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A gateway that remembers what it was given.
struct Recorder {
    name: String,
    sent: Arc<Mutex<Vec<String>>>,
    delay: Duration,
}

#[async_trait]
impl SmsSink for Recorder {
    async fn send(&self, key: &str, _phone: &str, _text: &str) -> Result<Sent, SendFailed> {
        tokio::time::sleep(self.delay).await;
        self.sent.lock().unwrap().push(key.to_string());
        Ok(Sent {
            gateway: self.name.clone(),
            message_ids: vec![format!("{}-{key}", self.name)],
        })
    }
}

fn notification(i: usize) -> Notification {
    Notification {
        key: format!("UP-09:water:1/red.0.grid/P{i:05}"),
        incident: "UP-09:water:1".into(),
        point: "UP-09".into(),
        level: Level::Red,
        recipient: Recipient {
            person: format!("P{i:05}"),
            name: "测试".into(),
            phone: format!("138{i:08}"),
            responsibility: ResponsibilityLevel::Grid,
            post: None,
        },
        text: "【新城区防汛】红色预警 测试".into(),
        event_ms: 1,
        drill: false,
    }
}

async fn bus_with_topics(topics: &Topics) -> Arc<dyn Bus> {
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(1 << 20));
    for t in topics.all() {
        bus.ensure_topic(&t, 3).await.unwrap();
    }
    bus
}

fn sender_config(topics: &Topics, instance: &str) -> SenderConfig {
    SenderConfig {
        topics: topics.clone(),
        group: "sender".into(),
        instance: instance.into(),
        lease: Duration::from_secs(1),
        concurrency: 8,
    }
}

/// Results per key on the deliveries topic.
async fn ledger(bus: &dyn Bus, topics: &Topics) -> HashMap<String, Vec<Delivery>> {
    let mut out: HashMap<String, Vec<Delivery>> = HashMap::new();
    for rec in read_to_end(bus, "test-reader", &topics.deliveries())
        .await
        .unwrap()
    {
        let d: Delivery = decode(&rec.payload).unwrap();
        out.entry(d.key.clone()).or_default().push(d);
    }
    out
}

async fn wait_all_sent(bus: &dyn Bus, topics: &Topics, n: usize) -> HashMap<String, Vec<Delivery>> {
    for _ in 0..300 {
        let l = ledger(bus, topics).await;
        let done = l
            .values()
            .filter(|v| v.iter().any(|d| d.state == DeliveryState::Sent))
            .count();
        if done == n {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not every message was sent within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_at_once_never_send_the_same_message_twice() {
    let topics = Topics::new("outbox-two");
    let bus = bus_with_topics(&topics).await;
    let producer = bus.producer();
    for i in 0..300 {
        let n = notification(i);
        producer
            .send(&topics.notifications(), n.key.as_bytes(), encode(&n), 1)
            .await
            .unwrap();
    }
    let (stop, rx) = watch::channel(false);
    let sent_a = Arc::new(Mutex::new(Vec::new()));
    let sent_b = Arc::new(Mutex::new(Vec::new()));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    for (name, sent) in [("a", sent_a.clone()), ("b", sent_b.clone())] {
        let sink = Arc::new(Recorder {
            name: name.into(),
            sent,
            delay: Duration::from_millis(1),
        });
        tokio::spawn(run_sender(
            bus.clone(),
            sink,
            clock.clone(),
            sender_config(&topics, name),
            rx.clone(),
        ));
    }
    let l = wait_all_sent(&*bus, &topics, 300).await;
    stop.send(true).unwrap();
    let a = sent_a.lock().unwrap().clone();
    let b = sent_b.lock().unwrap().clone();
    let all: Vec<&String> = a.iter().chain(&b).collect();
    let unique: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(unique.len(), 300, "every message sent");
    assert_eq!(
        all.len(),
        300,
        "none twice (a sent {}, b sent {})",
        a.len(),
        b.len()
    );
    assert!(l
        .values()
        .all(|v| v.iter().filter(|d| d.state == DeliveryState::Sent).count() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_batch_is_replaced_without_loss_and_doubts_are_declared() {
    let topics = Topics::new("outbox-kill");
    let bus = bus_with_topics(&topics).await;
    let producer = bus.producer();
    for i in 0..200 {
        let n = notification(i);
        producer
            .send(&topics.notifications(), n.key.as_bytes(), encode(&n), 1)
            .await
            .unwrap();
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sent = Arc::new(Mutex::new(Vec::new()));
    let (_stop, rx) = watch::channel(false);
    let first = tokio::spawn(run_sender(
        bus.clone(),
        Arc::new(Recorder {
            name: "first".into(),
            sent: sent.clone(),
            delay: Duration::from_millis(5),
        }),
        clock.clone(),
        sender_config(&topics, "first"),
        rx.clone(),
    ));
    while sent.lock().unwrap().len() < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Killed wherever it is: possibly between a gateway call and its `sent` record.
    first.abort();
    let _ = first.await;
    tokio::spawn(run_sender(
        bus.clone(),
        Arc::new(Recorder {
            name: "second".into(),
            sent: sent.clone(),
            delay: Duration::from_millis(1),
        }),
        clock,
        sender_config(&topics, "second"),
        rx,
    ));
    let l = wait_all_sent(&*bus, &topics, 200).await;
    let sent = sent.lock().unwrap().clone();
    let unique: HashSet<&String> = sent.iter().collect();
    assert_eq!(unique.len(), 200, "nothing lost");
    let mut count: HashMap<&String, usize> = HashMap::new();
    for k in &sent {
        *count.entry(k).or_default() += 1;
    }
    for (k, c) in count.iter().filter(|(_, c)| **c > 1) {
        let records = &l[*k];
        assert_eq!(*c, 2, "{k} sent {c} times");
        assert!(
            records
                .iter()
                .any(|d| d.detail.contains("resent after an unfinished claim")),
            "{k} was sent twice without being declared in doubt: {records:?}"
        );
    }
    // Only messages that were in the gateway's hands at the kill can be in doubt.
    assert!(
        sent.len() - unique.len() <= 8,
        "at most the sender's concurrency is in doubt"
    );
}

fn transition(to: Level, at: i64) -> AlertTransition {
    AlertTransition {
        point: "UP-09".into(),
        point_kind: PointKind::Underpass,
        transition: TransitionKind::Raised,
        from: Level::Normal,
        to,
        event_ms: at,
        processed_ms: at,
        rule: "depth >= red".into(),
        value: 31.0,
        rise_cm_per_min: Some(2.0),
        late: false,
        next_level: None,
        minutes_to_next: None,
        flapping: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_captures_every_notification_and_sends_none() {
    let topics = Topics::new("outbox-drill");
    let bus = bus_with_topics(&topics).await;
    let district =
        Arc::new(District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (stop, rx) = watch::channel(false);
    tokio::spawn(run_alerts(
        bus.clone(),
        district,
        clock.clone(),
        AlertsConfig {
            topics: topics.clone(),
            group: "alerts".into(),
            drill: true,
            district_file: None,
            reload_every: Duration::from_secs(5),
        },
        rx.clone(),
    ));
    let sent = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(run_sender(
        bus.clone(),
        Arc::new(Recorder {
            name: "must-not-send".into(),
            sent: sent.clone(),
            delay: Duration::ZERO,
        }),
        clock.clone(),
        sender_config(&topics, "s"),
        rx,
    ));
    let t = transition(Level::Red, clock.now_ms());
    bus.producer()
        .send(&topics.alerts(), b"UP-09", encode(&t), t.event_ms)
        .await
        .unwrap();
    let mut captured = Vec::new();
    for _ in 0..100 {
        captured = read_to_end(&*bus, "test-drill", &topics.drill())
            .await
            .unwrap();
        if captured.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(captured.len(), 5, "red tells five people, all captured");
    let n: Notification = decode(&captured[0].payload).unwrap();
    assert!(n.drill);
    // Give a sender every chance to misbehave.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let outbox = read_to_end(&*bus, "test-outbox", &topics.notifications())
        .await
        .unwrap();
    assert!(outbox.is_empty(), "nothing reached the outbox in a drill");
    assert!(sent.lock().unwrap().is_empty(), "no gateway was called");
    stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_change_in_the_district_file_reaches_a_running_stage() {
    let topics = Topics::new("outbox-roster");
    let bus = bus_with_topics(&topics).await;
    let text = include_str!("../../config/xincheng.toml");
    let file = std::env::temp_dir().join(format!("roster-{}.toml", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let district = Arc::new(District::from_toml_str(text).unwrap());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (stop, rx) = watch::channel(false);
    tokio::spawn(run_alerts(
        bus.clone(),
        district,
        clock.clone(),
        AlertsConfig {
            topics: topics.clone(),
            group: "alerts".into(),
            drill: false,
            district_file: Some(file.clone()),
            reload_every: Duration::from_millis(200),
        },
        rx,
    ));
    let t = transition(Level::Red, clock.now_ms());
    bus.producer()
        .send(&topics.alerts(), b"UP-09", encode(&t), t.event_ms)
        .await
        .unwrap();
    for _ in 0..100 {
        if roster_outbox(&*bus, &topics).await.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // UP-09's B post (P090) hands over to P002 while the red steps are running.
    let changed = text.replacen(
        "owner_a = \"P089\"\nowner_b = \"P090\"",
        "owner_a = \"P089\"\nowner_b = \"P002\"",
        1,
    );
    assert_ne!(changed, text);
    std::fs::write(&file, changed).unwrap();
    let mut got = Vec::new();
    for _ in 0..100 {
        got = roster_outbox(&*bus, &topics).await;
        if got.iter().any(|n| n.recipient.person == "P002") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new: Vec<&Notification> = got
        .iter()
        .filter(|n| n.recipient.person == "P002")
        .collect();
    assert_eq!(new.len(), 1, "the new B post is told once");
    assert!(new[0].key.contains("/red.0.owner_b/P002"), "{}", new[0].key);
    assert!(new[0].text.contains("人员调整"), "{}", new[0].text);
    stop.send(true).unwrap();
    let _ = std::fs::remove_file(&file);
}

async fn roster_outbox(bus: &dyn Bus, topics: &Topics) -> Vec<Notification> {
    read_to_end(bus, "test-roster", &topics.notifications())
        .await
        .unwrap()
        .iter()
        .map(|r| decode::<Notification>(&r.payload).unwrap())
        .collect()
}

/// Every gateway down for the first `down_for` calls, then back.
struct Flaky {
    calls: std::sync::atomic::AtomicUsize,
    down_for: usize,
    sent: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl SmsSink for Flaky {
    async fn send(&self, key: &str, _phone: &str, _text: &str) -> Result<Sent, SendFailed> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n < self.down_for {
            return Err(SendFailed {
                reason: "gateway unavailable: connection refused".into(),
                retryable: true,
            });
        }
        self.sent.lock().unwrap().push(key.to_string());
        Ok(Sent {
            gateway: "flaky".into(),
            message_ids: vec![key.to_string()],
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_every_gateway_is_down_messages_wait_and_then_go_once() {
    let topics = Topics::new("outbox-down");
    let bus = bus_with_topics(&topics).await;
    for i in 0..20 {
        let n = notification(i);
        bus.producer()
            .send(&topics.notifications(), n.key.as_bytes(), encode(&n), 1)
            .await
            .unwrap();
    }
    let sent = Arc::new(Mutex::new(Vec::new()));
    let (stop, rx) = watch::channel(false);
    tokio::spawn(run_sender(
        bus.clone(),
        Arc::new(Flaky {
            calls: Default::default(),
            down_for: 30,
            sent: sent.clone(),
        }),
        Arc::new(SystemClock),
        sender_config(&topics, "s"),
        rx,
    ));
    let l = wait_all_sent(&*bus, &topics, 20).await;
    stop.send(true).unwrap();
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 20, "each once, after the outage");
    assert!(
        l.values()
            .flatten()
            .all(|d| d.state != DeliveryState::Failed && d.detail.is_empty()),
        "an outage is neither a failure nor a doubt"
    );
}

/// A gateway whose delivery receipt arrives before its answer to the send, as an SMSC's can.
struct EagerReceipts {
    tx: tokio::sync::mpsc::UnboundedSender<floodcmd_alerts::sender::Receipt>,
    rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<floodcmd_alerts::sender::Receipt>>>,
}

#[async_trait]
impl SmsSink for EagerReceipts {
    async fn send(&self, key: &str, _phone: &str, _text: &str) -> Result<Sent, SendFailed> {
        let id = format!("id-{key}");
        let _ = self.tx.send(floodcmd_alerts::sender::Receipt {
            message_id: id.clone(),
            delivered: true,
            detail: "DELIVRD".into(),
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(Sent {
            gateway: "eager".into(),
            message_ids: vec![id],
        })
    }

    fn receipts(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<floodcmd_alerts::sender::Receipt>> {
        self.rx.lock().unwrap().take()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_receipts_are_recorded_even_when_they_overtake_the_send() {
    let topics = Topics::new("outbox-receipts");
    let bus = bus_with_topics(&topics).await;
    for i in 0..10 {
        let n = notification(i);
        bus.producer()
            .send(&topics.notifications(), n.key.as_bytes(), encode(&n), 1)
            .await
            .unwrap();
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(run_sender(
        bus.clone(),
        Arc::new(EagerReceipts {
            tx,
            rx: Mutex::new(Some(rx)),
        }),
        Arc::new(SystemClock),
        sender_config(&topics, "s"),
        shutdown,
    ));
    let mut delivered = 0;
    for _ in 0..100 {
        delivered = ledger(&*bus, &topics)
            .await
            .values()
            .filter(|v| v.iter().any(|d| d.state == DeliveryState::Delivered))
            .count();
        if delivered == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    assert_eq!(delivered, 10, "every receipt recorded against its message");
}
