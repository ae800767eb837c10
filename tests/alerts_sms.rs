//! The alerts stage as processes against real Kafka and the real SMPP simulator
//! (`scripts/smsc.sh`): a red storm step over many points, the alerts process killed with
//! SIGKILL mid-sending and started again, and two alerts processes at once. What the
//! simulator received is compared with the outbox: nothing missing, nothing twice (a message
//! the killed process had handed to the SMSC but not yet recorded may be sent again; such a
//! resend is declared on the deliveries topic, and the test checks that every duplicate is one
//! of those).

use floodcmd_alerts::stage::read_to_end;
use floodcmd_bus::{KafkaBus, KafkaConfig};
use floodcmd_model::bus::Bus;
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{AlertTransition, Delivery, Incident, Notification, TransitionKind};
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Level};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the README's test command, scripts/test.sh")
    })
}

/// An alerts process, killed (SIGKILL) when the test ends however it ends.
struct Stage(Child);

impl Stage {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_alerts(settings: &std::path::Path, instance: &str) -> Stage {
    let mut child = Command::new(env!("CARGO_BIN_EXE_floodcmd"))
        .arg("alerts")
        .arg("--config")
        .arg(settings)
        .env("FLOODCMD_LOG", "warn")
        .env("FLOODCMD_ALERTS_INSTANCE", instance)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Owned by the guard at once, so it is killed and reaped however this ends.
    let stage = Stage(child);
    let mut said = Vec::new();
    for line in lines.take(3) {
        let line = line.unwrap();
        let done = line.starts_with("alerts stage running");
        said.push(line);
        if done {
            return stage;
        }
    }
    panic!("the alerts stage did not say it runs: {said:?}");
}

fn settings(dir: &std::path::Path, prefix: &str, system_id: &str) -> std::path::PathBuf {
    let (host, port) = env("FLOODCMD_SMSC")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    let path = dir.join(format!("{prefix}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[district]
file = "{root}/config/xincheng.toml"

[bus]
kind = "kafka"
bootstrap = "{kafka}"
prefix = "{prefix}"
partitions = 3

[alerts]
lease_s = 3
send_concurrency = 16

[[sms.gateways]]
kind = "smpp"
host = "{host}"
port = {port}
system_id = "{system_id}"
password = "pw"
source_addr = "10690000"
rate_per_s = 150.0
window = 8
"#,
            root = env!("CARGO_MANIFEST_DIR"),
            kafka = env("FLOODCMD_KAFKA"),
        ),
    )
    .unwrap();
    path
}

fn control() -> String {
    let (host, port) = env("FLOODCMD_SMSC")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap()))
        .unwrap();
    format!("http://{host}:{}", port + 1)
}

/// What the simulator accepted for `system_id`, reassembled: (destination, text) → count.
async fn received(system_id: &str) -> BTreeMap<(String, String), usize> {
    let all: Vec<Value> = reqwest::get(format!("{}/messages", control()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut parts: BTreeMap<(String, i64), Vec<(i64, String)>> = BTreeMap::new();
    let mut out: BTreeMap<(String, String), usize> = BTreeMap::new();
    for m in all
        .iter()
        .filter(|m| m["system_id"] == system_id && m["command_status"] == 0)
    {
        let dest = m["destination"].as_str().unwrap().to_string();
        let text = m["text"].as_str().unwrap().to_string();
        match m["udh_ref"].as_i64() {
            Some(r) if m["udh_total"].as_i64().unwrap_or(1) > 1 => parts
                .entry((dest, r))
                .or_default()
                .push((m["udh_part"].as_i64().unwrap(), text)),
            _ => *out.entry((dest, text)).or_default() += 1,
        }
    }
    for ((dest, _), mut p) in parts {
        p.sort();
        let text: String = p.into_iter().map(|(_, t)| t).collect();
        *out.entry((dest, text)).or_default() += 1;
    }
    out
}

/// A red step at `points` underpasses and low points: five people each.
async fn red_storm(bus: &dyn Bus, topics: &Topics, district: &District, points: usize) {
    let now = SystemClock.now_ms();
    let producer = bus.producer();
    for p in district
        .points
        .iter()
        .filter(|p| p.kind != floodcmd_model::config::PointKind::RainGauge)
        .take(points)
    {
        let t = AlertTransition {
            point: p.id.clone(),
            point_kind: p.kind,
            transition: TransitionKind::Raised,
            from: Level::Normal,
            to: Level::Red,
            event_ms: now,
            processed_ms: now,
            rule: "depth 31.0 cm >= red 30 cm".into(),
            value: 31.0,
            rise_cm_per_min: Some(1.5),
            late: false,
            next_level: None,
            minutes_to_next: None,
            flapping: false,
        };
        producer
            .send(&topics.alerts(), p.id.as_bytes(), encode(&t), now)
            .await
            .unwrap();
    }
}

async fn outbox(bus: &dyn Bus, topics: &Topics) -> BTreeMap<(String, String), usize> {
    let mut want: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut keys = std::collections::HashSet::new();
    for r in read_to_end(bus, "test-outbox", &topics.notifications())
        .await
        .unwrap()
    {
        let n: Notification = decode(&r.payload).unwrap();
        if keys.insert(n.key.clone()) {
            *want.entry((n.recipient.phone, n.text)).or_default() += 1;
        }
    }
    want
}

/// Outbox messages by idempotency key.
async fn outbox_by_key(bus: &dyn Bus, topics: &Topics) -> HashMap<String, (String, String)> {
    read_to_end(bus, "test-outbox-keys", &topics.notifications())
        .await
        .unwrap()
        .iter()
        .map(|r| decode::<Notification>(&r.payload).unwrap())
        .map(|n| (n.key, (n.recipient.phone, n.text)))
        .collect()
}

/// The outbox once it holds `total` distinct messages.
async fn outbox_of(
    bus: &dyn Bus,
    topics: &Topics,
    total: usize,
) -> BTreeMap<(String, String), usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let want = outbox(bus, topics).await;
        let n: usize = want.values().sum();
        if n >= total {
            assert_eq!(n, total, "more notifications than the storm step causes");
            return want;
        }
        assert!(Instant::now() < deadline, "the outbox has {n} of {total}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the simulator received once every message of `want` is there, and when that was.
async fn wait_until_received(
    system_id: &str,
    want: &BTreeMap<(String, String), usize>,
) -> (BTreeMap<(String, String), usize>, Instant) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = received(system_id).await;
        // Every distinct message, not a count: a duplicate must not stand in for a gap.
        let missing = want.keys().filter(|k| !got.contains_key(*k)).count();
        if missing == 0 {
            let complete = Instant::now();
            // Anything still in flight lands now, before we compare.
            tokio::time::sleep(Duration::from_secs(4)).await;
            return (received(system_id).await, complete);
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} messages never reached the simulator",
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn setup(prefix: &str) -> (Arc<dyn Bus>, Topics, Arc<District>) {
    let bus: Arc<dyn Bus> =
        Arc::new(KafkaBus::new(KafkaConfig::new(env("FLOODCMD_KAFKA"))).unwrap());
    let topics = Topics::new(prefix);
    for t in topics.all() {
        bus.ensure_topic(&t, 3).await.unwrap();
    }
    let district = Arc::new(District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    (bus, topics, district)
}

fn unique(tag: &str) -> String {
    format!(
        "{tag}{}",
        SystemClock.now_ms() % 100_000_000 + std::process::id() as i64
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_alerts_process_resumes_without_a_gap_and_declares_any_resend() {
    let prefix = unique("smskill");
    let system_id = unique("k");
    let (bus, topics, district) = setup(&prefix).await;
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = settings(&dir, &prefix, &system_id);

    let mut first = spawn_alerts(&cfg, "first");
    red_storm(&*bus, &topics, &district, 40).await;
    // Let it get some way through, then pull the plug.
    let deadline = Instant::now() + Duration::from_secs(60);
    while received(&system_id).await.values().sum::<usize>() < 40 {
        assert!(Instant::now() < deadline, "nothing reached the simulator");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let at_kill: usize = received(&system_id).await.values().sum();
    let restarted = Instant::now();
    let _second = spawn_alerts(&cfg, "second");

    // 40 red points, five people each.
    let want = outbox_of(&*bus, &topics, 200).await;
    let total: usize = want.values().sum();
    assert!(
        at_kill < total,
        "the kill came mid-sending ({at_kill} of {total})"
    );
    let (got, complete) = wait_until_received(&system_id, &want).await;
    let recovered = complete.duration_since(restarted).as_secs_f64();

    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    assert!(missing.is_empty(), "never sent: {missing:?}");
    let unexpected: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        unexpected.is_empty(),
        "sent but not in the outbox: {unexpected:?}"
    );
    let doubled: usize = got.values().map(|c| c.saturating_sub(1)).sum();
    let declared: std::collections::HashSet<String> =
        read_to_end(&*bus, "test-deliveries", &topics.deliveries())
            .await
            .unwrap()
            .iter()
            .map(|r| decode::<Delivery>(&r.payload).unwrap())
            .filter(|d| d.detail.contains("resent after an unfinished claim"))
            .map(|d| d.key)
            .collect();
    let by_key = outbox_by_key(&*bus, &topics).await;
    let declared_msgs: std::collections::HashSet<&(String, String)> =
        declared.iter().filter_map(|k| by_key.get(k)).collect();
    for (msg, c) in got.iter().filter(|(_, c)| **c > 1) {
        assert!(
            declared_msgs.contains(msg),
            "{msg:?} arrived {c} times without being declared in doubt"
        );
    }
    let declared = declared.len();
    let received_total: usize = got.values().sum();
    eprintln!(
        "alerts_sms: killed after {at_kill} of {total}; every message at the simulator {recovered:.1} s after the restart began; {received_total} received for {total} expected, {doubled} duplicate(s), {declared} declared in-doubt resend(s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_alerts_processes_at_once_never_send_the_same_message_twice() {
    let prefix = unique("smstwo");
    let system_id = unique("t");
    let (bus, topics, district) = setup(&prefix).await;
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = settings(&dir, &prefix, &system_id);
    let _a = spawn_alerts(&cfg, "a");
    let _b = spawn_alerts(&cfg, "b");
    red_storm(&*bus, &topics, &district, 30).await;

    let want = outbox_of(&*bus, &topics, 150).await;
    let (got, _) = wait_until_received(&system_id, &want).await;
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let twice: Vec<_> = got
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(missing.is_empty(), "never sent: {missing:?}");
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(got, want);
    // One `sent` record per message across both processes.
    let mut by_instance: HashMap<String, usize> = HashMap::new();
    for r in read_to_end(&*bus, "test-deliveries", &topics.deliveries())
        .await
        .unwrap()
    {
        let d: Delivery = decode(&r.payload).unwrap();
        if d.state == floodcmd_model::event::DeliveryState::Sent {
            *by_instance.entry(d.instance).or_default() += 1;
        }
    }
    assert_eq!(by_instance.values().sum::<usize>(), 150, "{by_instance:?}");
    // A point owner answers "1" by SMS: their step at that incident is acknowledged.
    let replied = district
        .points
        .iter()
        .find(|p| p.kind != floodcmd_model::config::PointKind::RainGauge)
        .unwrap();
    let owner = replied.chain.owner_a.clone();
    let r = reqwest::Client::new()
        .post(format!(
            "{}/mo?system_id={system_id}&from={}&text=1",
            control(),
            owner.phone
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let acked = read_to_end(&*bus, "test-acked", &topics.incidents())
            .await
            .unwrap()
            .iter()
            .map(|r| decode::<Incident>(&r.payload).unwrap())
            .any(|i| {
                i.point_id == replied.id
                    && i.steps.iter().any(|s| {
                        s.person == owner.id
                            && s.state == floodcmd_model::event::StepState::Acknowledged
                    })
                    && i.timeline.iter().any(|l| l.what == "acknowledged")
            });
        if acked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the SMS reply did not acknowledge {}'s step at {}",
            owner.id,
            replied.id
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The SMSC's delivery receipts come back and are recorded per message.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered: std::collections::HashSet<String> =
            read_to_end(&*bus, "test-delivered", &topics.deliveries())
                .await
                .unwrap()
                .iter()
                .map(|r| decode::<Delivery>(&r.payload).unwrap())
                .filter(|d| d.state == floodcmd_model::event::DeliveryState::Delivered)
                .map(|d| d.key)
                .collect();
        if delivered.len() == 150 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 150 delivery receipts recorded",
            delivered.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
