//! Fault test 3 (issue #10), dependencies down, against the real services:
//!
//! - **SMS gateways down.** The alerts stage as a process across real Kafka, with two
//!   gateways: the SMSC simulator over SMPP (`scripts/smsc.sh`, primary) and the HTTP
//!   `SendSms` gateway (its signature-checking receiver in this test, fallback). The primary
//!   goes down mid-storm (binds refused, sessions cut): the rest goes through the fallback.
//!   Then both are down during a second storm step: its messages wait in the outbox (nothing
//!   sent, nothing recorded failed), and once the primary is back they all go. What the two
//!   gateways received, by message, against the outbox: none missing, none twice.
//! - **MQTT broker restart.** A field device publishes readings over MQTT (QoS 1, persistent
//!   session) to a Mosquitto of this test's own (`scripts/mosquitto.sh` on a free port, so
//!   the suite's shared broker is left alone); the ingest stage's MQTT adapter feeds them to
//!   real Kafka. The broker is stopped mid-stream and started again on the same port. With
//!   broker persistence the adapter's session survives: every reading, those published before,
//!   during (the device keeps them and retries) and after the outage, lands on `readings`
//!   exactly once. Without persistence the restarted broker has forgotten the adapter's
//!   session: everything it had acknowledged to the device and not yet handed to the adapter
//!   (the adapter acknowledges one message at a time, after Kafka has it, so there is a
//!   queue at the broker in a burst) and everything published before the adapter has
//!   subscribed again is lost. Readings published after that land exactly once; the loss is
//!   counted and reported, not asserted away: the broker must run with persistence.
//!
//! The TSDB-down case is `sink-influx/tests/victoria_outage.rs`; the slow consumers (fault
//! test 4) are `tests/fault_slow_tsdb.rs` and `dashboard-ws/tests/ws_stalled_client.rs`.

use floodcmd::stages::{self, StageContext};
use floodcmd_alerts::stage::read_to_end;
use floodcmd_bus::{KafkaBus, KafkaConfig};
use floodcmd_ingest::Access;
use floodcmd_model::bus::{Assignment, Bus};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{
    AlertTransition, Delivery, DeliveryState, Notification, TransitionKind,
};
use floodcmd_model::settings::{BusKind, BusSettings, IngestSettings};
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Level, Reading};
use floodcmd_sms::receiver::HttpSmsReceiver;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the README's test command, scripts/test.sh")
    })
}

fn unique(tag: &str) -> String {
    format!(
        "{tag}{}",
        SystemClock.now_ms() % 100_000_000 + std::process::id() as i64
    )
}

// ---------------------------------------------------------------------------------------
// SMS gateways down
// ---------------------------------------------------------------------------------------

/// An alerts process, killed when the test ends however it ends.
struct Stage(Child);

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_alerts(settings: &Path) -> Stage {
    let mut child = Command::new(env!("CARGO_BIN_EXE_floodcmd"))
        .arg("alerts")
        .arg("--config")
        .arg(settings)
        .env("FLOODCMD_LOG", "warn")
        .env("FLOODCMD_ALERTS_INSTANCE", "only")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
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

/// The SMSC simulator's SMPP host and port, and its control URL (port + 1).
fn smsc() -> (String, u16, String) {
    let addr = env("FLOODCMD_SMSC");
    let (host, port) = addr.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    (
        host.to_string(),
        port,
        format!("http://{host}:{}", port + 1),
    )
}

async fn smsc_control(path: &str, system_id: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/{path}?system_id={system_id}", smsc().2))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "POST /{path}: {}", r.status());
}

/// (phone, text) → how many times a phone got it, over both gateways; SMPP parts reassembled.
async fn received(system_id: &str, http: &HttpSmsReceiver) -> BTreeMap<(String, String), usize> {
    let all: Vec<Value> = reqwest::get(format!("{}/messages", smsc().2))
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
    for m in http.received() {
        *out.entry((m.phone, m.text)).or_default() += 1;
    }
    out
}

/// How many messages each gateway took.
async fn per_gateway(system_id: &str, http: &HttpSmsReceiver) -> (usize, usize) {
    let all = received(system_id, http).await.values().sum::<usize>();
    let via_http = http.received().len();
    (all - via_http, via_http)
}

/// A red step at `points` underpasses and low points from the `skip`th on: five people each.
async fn red_step(bus: &dyn Bus, topics: &Topics, district: &District, skip: usize, points: usize) {
    let now = SystemClock.now_ms();
    let producer = bus.producer();
    for p in district
        .points
        .iter()
        .filter(|p| p.kind != floodcmd_model::config::PointKind::RainGauge)
        .skip(skip)
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

/// The outbox by idempotency key, once it holds `total` distinct keys.
async fn outbox_of(
    bus: &dyn Bus,
    topics: &Topics,
    total: usize,
) -> BTreeMap<String, (String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let keys: BTreeMap<String, (String, String)> =
            read_to_end(bus, "test-outbox", &topics.notifications())
                .await
                .unwrap()
                .iter()
                .map(|r| decode::<Notification>(&r.payload).unwrap())
                .map(|n| (n.key, (n.recipient.phone, n.text)))
                .collect();
        if keys.len() >= total {
            assert_eq!(
                keys.len(),
                total,
                "more notifications than the storm causes"
            );
            return keys;
        }
        assert!(
            Instant::now() < deadline,
            "the outbox has {} of {total}",
            keys.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until every message of `want` was received at least once.
async fn wait_received(
    system_id: &str,
    http: &HttpSmsReceiver,
    want: &BTreeMap<String, (String, String)>,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let got = received(system_id, http).await;
        let missing = want.values().filter(|m| !got.contains_key(*m)).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} messages never reached a gateway",
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_falls_back_when_the_smsc_goes_down_and_waits_out_both_without_loss_or_duplicates() {
    let prefix = unique("smsdown");
    let system_id = unique("d");
    let bus: Arc<dyn Bus> =
        Arc::new(KafkaBus::new(KafkaConfig::new(env("FLOODCMD_KAFKA"))).unwrap());
    let topics = Topics::new(&prefix);
    for t in topics.all() {
        bus.ensure_topic(&t, 3).await.unwrap();
    }
    let district = District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap();
    let http = HttpSmsReceiver::start("fd-key", "fd-secret").await.unwrap();
    let (host, port, _) = smsc();
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("settings.toml");
    std::fs::write(
        &cfg,
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
name = "smsc"
host = "{host}"
port = {port}
system_id = "{system_id}"
password = "pw"
source_addr = "10690000"
rate_per_s = 40.0
window = 8

[[sms.gateways]]
kind = "http_sendsms"
name = "cloud"
url = "{url}"
access_key_id = "fd-key"
access_key_secret = "fd-secret"
sign_name = "新城区防汛"
template_code = "SMS_0001"
rate_per_s = 100.0
"#,
            root = env!("CARGO_MANIFEST_DIR"),
            kafka = env("FLOODCMD_KAFKA"),
            url = http.url(),
        ),
    )
    .unwrap();
    let _alerts = spawn_alerts(&cfg);

    // Step 1: 30 red points (150 messages); the SMSC goes down once 30 have reached it.
    red_step(&*bus, &topics, &district, 0, 30).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while per_gateway(&system_id, &http).await.0 < 30 {
        assert!(Instant::now() < deadline, "nothing reached the SMSC");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    smsc_control("down", &system_id).await;
    let down_at = per_gateway(&system_id, &http).await;
    let step1 = outbox_of(&*bus, &topics, 150).await;
    wait_received(&system_id, &http, &step1, Duration::from_secs(90)).await;
    let after_step1 = per_gateway(&system_id, &http).await;
    assert!(
        after_step1.1 > 0,
        "the HTTP fallback took nothing while the SMSC was down"
    );

    // Step 2: both gateways down. 10 more red points (50 messages) wait in the outbox.
    http.set_down(true);
    red_step(&*bus, &topics, &district, 30, 10).await;
    let both = outbox_of(&*bus, &topics, 200).await;
    let step2: BTreeMap<String, (String, String)> = both
        .iter()
        .filter(|(k, _)| !step1.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(step2.len(), 50);
    // Long enough for every retry the dispatcher makes on its own (8 attempts) and a few of
    // the sender's: the messages must still be waiting, not given up.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = received(&system_id, &http).await;
    let leaked = step2.values().filter(|m| during.contains_key(*m)).count();
    assert_eq!(leaked, 0, "messages went out while every gateway was down");
    let ledger: Vec<Delivery> = read_to_end(&*bus, "test-ledger", &topics.deliveries())
        .await
        .unwrap()
        .iter()
        .map(|r| decode::<Delivery>(&r.payload).unwrap())
        .collect();
    let failed: Vec<&Delivery> = ledger
        .iter()
        .filter(|d| d.state == DeliveryState::Failed && step2.contains_key(&d.key))
        .collect();
    assert!(
        failed.is_empty(),
        "an outage recorded as failure: {failed:?}"
    );

    // The primary comes back: everything waiting goes, once.
    smsc_control("up", &system_id).await;
    let up = Instant::now();
    wait_received(&system_id, &http, &step2, Duration::from_secs(120)).await;
    let catch_up = up.elapsed();
    // Anything still in flight lands now, before the comparison.
    tokio::time::sleep(Duration::from_secs(4)).await;
    http.set_down(false);

    let got = received(&system_id, &http).await;
    let want: BTreeSet<&(String, String)> = both.values().collect();
    let missing: Vec<_> = want.iter().filter(|m| !got.contains_key(**m)).collect();
    let twice: Vec<_> = got.iter().filter(|(_, c)| **c > 1).collect();
    let unexpected: Vec<_> = got.keys().filter(|m| !want.contains(m)).collect();
    let (via_smsc, via_http) = per_gateway(&system_id, &http).await;
    eprintln!(
        "fault_dependencies sms: {} messages in the outbox (150 + 50); SMSC down after {} \
         (SMSC {}, HTTP {}); after step 1: SMSC {}, HTTP {}; step 2 with both down: 0 sent, \
         0 failed in 8 s; all 50 delivered {:.1} s after the SMSC came back; total SMSC \
         {via_smsc} + HTTP {via_http} = {}; missing {}, duplicates {}, unexpected {}",
        both.len(),
        down_at.0 + down_at.1,
        down_at.0,
        down_at.1,
        after_step1.0,
        after_step1.1,
        catch_up.as_secs_f64(),
        via_smsc + via_http,
        missing.len(),
        twice.len(),
        unexpected.len(),
    );
    assert!(missing.is_empty(), "never sent: {missing:?}");
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert!(
        unexpected.is_empty(),
        "sent but not in the outbox: {unexpected:?}"
    );
    assert_eq!(via_smsc + via_http, 200);
    assert_eq!(http.refused(), 0, "every HTTP request was signed correctly");
    // Every message is recorded sent once, through the gateway that took it.
    let sent: HashMap<String, usize> = read_to_end(&*bus, "test-sent", &topics.deliveries())
        .await
        .unwrap()
        .iter()
        .map(|r| decode::<Delivery>(&r.payload).unwrap())
        .filter(|d| d.state == DeliveryState::Sent)
        .fold(HashMap::new(), |mut m, d| {
            *m.entry(d.key).or_default() += 1;
            m
        });
    assert_eq!(sent.len(), 200);
    assert!(sent.values().all(|c| *c == 1), "a key recorded sent twice");
}

// ---------------------------------------------------------------------------------------
// MQTT broker restart
// ---------------------------------------------------------------------------------------

/// A Mosquitto of this test's own through `scripts/mosquitto.sh`, stopped however the test
/// ends.
struct Broker {
    port: u16,
    run: PathBuf,
    persist: Option<PathBuf>,
}

impl Broker {
    fn new(tag: &str, persistent: bool) -> Broker {
        // A free port: bind, read it, let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = std::env::temp_dir().join(unique(tag));
        Broker {
            port,
            run: base.join("run"),
            persist: persistent.then(|| base.join("persist")),
        }
    }

    fn script(&self, cmd: &str) {
        let mut c =
            Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/mosquitto.sh"));
        c.arg(cmd)
            .env("FLOODCMD_MQTT_PORT", self.port.to_string())
            .env("FLOODCMD_MQTT_RUN", &self.run)
            .env_remove("FLOODCMD_MQTT_PERSIST");
        if let Some(p) = &self.persist {
            c.env("FLOODCMD_MQTT_PERSIST", p);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "scripts/mosquitto.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.script("stop");
        if let Some(base) = self.run.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

/// Publishes one reading per message, seq 1, 2, ... every 50 ms while `run` is true, and
/// records the seq of each publish it handed to its client, with when.
async fn device(
    port: u16,
    topic: String,
    sensor: String,
    client_id: String,
    published: Arc<Mutex<Vec<(u64, Instant)>>>,
    mut run: watch::Receiver<bool>,
) {
    let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    // A persistent session: what the broker has not acknowledged is sent again on reconnect.
    opts.set_clean_session(false);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 1024);
    let driver = tokio::spawn(async move {
        loop {
            if events.poll().await.is_err() {
                // Reconnects on the next poll; a field device retries every half second.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let mut seq = 0u64;
    while *run.borrow() {
        seq += 1;
        let now = SystemClock.now_ms();
        let body = format!(
            "{{\"sensor\":\"{sensor}\",\"ts\":{now},\"value\":{}.5,\"seq\":{seq}}}",
            seq % 50
        );
        // Queued in the client while the broker is away (its request queue holds 1024).
        client
            .publish(&topic, rumqttc::QoS::AtLeastOnce, false, body.into_bytes())
            .await
            .unwrap();
        published.lock().unwrap().push((seq, Instant::now()));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = run.changed() => {}
        }
    }
    // Let what is queued leave before the driver stops.
    tokio::time::sleep(Duration::from_secs(3)).await;
    driver.abort();
}

async fn mqtt_broker_restart(persistent: bool) {
    let tag = if persistent { "mqp" } else { "mqn" };
    let broker = Broker::new(tag, persistent);
    broker.script("start");
    let topics = Topics::new(unique(&format!("t{tag}")));
    let bus_settings = BusSettings {
        kind: BusKind::Kafka,
        bootstrap: env("FLOODCMD_KAFKA"),
        partitions: 2,
        ..BusSettings::default()
    };
    let bus = stages::connect_bus(&bus_settings, None, &topics)
        .await
        .unwrap()
        .bus;
    let (stop, shutdown) = watch::channel(false);
    let district = Arc::new(District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    let ctx = StageContext {
        bus: bus.clone(),
        district: district.clone(),
        clock: Arc::new(SystemClock),
        topics: topics.clone(),
        shutdown,
    };
    let settings = IngestSettings {
        mqtt: format!("127.0.0.1:{}", broker.port),
        mqtt_prefix: format!("{}/readings", topics.prefix()),
        ..IngestSettings::default()
    };
    let _ingest = stages::start_ingest(&ctx, &settings, ([127, 0, 0, 1], 0).into(), Access::Open)
        .await
        .unwrap();
    let sensor = district.sensors().next().unwrap().sensor.id.clone();

    // What lands on `readings`: seq → how many times, and when each first arrived.
    let landed: Arc<Mutex<BTreeMap<u64, (usize, Instant)>>> = Arc::default();
    let mut consumer = bus
        .consumer(&format!("check-{tag}"), &topics.readings(), Assignment::All)
        .await
        .unwrap();
    let reader = {
        let landed = landed.clone();
        tokio::spawn(async move {
            loop {
                for r in consumer
                    .poll(500, Duration::from_millis(100))
                    .await
                    .unwrap()
                {
                    let reading: Reading = decode(&r.payload).unwrap();
                    let mut l = landed.lock().unwrap();
                    let e = l.entry(reading.seq.unwrap()).or_insert((0, Instant::now()));
                    e.0 += 1;
                }
            }
        })
    };
    // The adapter subscribes once connected; publish once it has had the chance.
    let wait_landed = |n: usize, what: &'static str| {
        let landed = landed.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while landed.lock().unwrap().len() < n {
                assert!(
                    Instant::now() < deadline,
                    "{what}: {} of {n} landed",
                    landed.lock().unwrap().len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let published: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let (run, run_rx) = watch::channel(true);
    let dev = tokio::spawn(device(
        broker.port,
        format!("{}/readings/gw-1", topics.prefix()),
        sensor,
        format!("dev-{tag}-{}", std::process::id()),
        published.clone(),
        run_rx,
    ));
    wait_landed(20, "before the restart").await;

    // The broker goes away for about two seconds, then comes back on the same port.
    broker.script("stop");
    let stopped = Instant::now();
    let last_before = published.lock().unwrap().last().map_or(0, |p| p.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last_during = published.lock().unwrap().last().map_or(0, |p| p.0);
    broker.script("start");
    let started = Instant::now();
    let outage = started - stopped;
    // Readings keep coming for a while after the restart.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let _ = run.send(false);
    dev.await.unwrap();
    let published: Vec<(u64, Instant)> = published.lock().unwrap().clone();
    let total = published.last().unwrap().0;
    // Let the last ones through the adapter and Kafka.
    let settle = Instant::now() + Duration::from_secs(20);
    while landed.lock().unwrap().len() < total as usize && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    reader.abort();
    let landed = landed.lock().unwrap().clone();
    let twice: Vec<_> = landed
        .iter()
        .filter(|(_, (c, _))| *c > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(twice.is_empty(), "readings on the topic twice: {twice:?}");
    // The first reading the device published after the broker was back, and when it landed.
    let first_after = published
        .iter()
        .find(|(_, at)| *at >= started)
        .map(|(s, _)| *s)
        .unwrap();
    let reconnect = landed
        .iter()
        .filter(|(s, _)| **s >= first_after)
        .map(|(_, (_, at))| *at)
        .min()
        .expect("nothing published after the restart landed")
        .saturating_duration_since(started);
    let missing: Vec<u64> = (1..=total).filter(|s| !landed.contains_key(s)).collect();
    eprintln!(
        "fault_dependencies mqtt (broker persistence {persistent}): {total} readings published, \
         {} landed once, 0 twice, {} missing {:?}; seq 1..={last_before} before the stop, \
         ..={last_during} while down ({:.1} s), the rest after; first reading after the \
         restart landed {:.2} s after the broker was back",
        landed.len(),
        missing.len(),
        &missing[..missing.len().min(20)],
        outage.as_secs_f64(),
        reconnect.as_secs_f64(),
    );
    if persistent {
        assert!(
            missing.is_empty(),
            "lost across the broker restart: {missing:?}"
        );
    } else {
        // The subscription is gone until the adapter is back; anything after that arrives.
        let lost_late: Vec<u64> = missing
            .iter()
            .copied()
            .filter(|s| {
                published
                    .iter()
                    .find(|(p, _)| p == s)
                    .is_some_and(|(_, at)| *at >= started + reconnect + Duration::from_secs(1))
            })
            .collect();
        assert!(
            lost_late.is_empty(),
            "published well after the adapter was back and still lost: {lost_late:?}"
        );
    }
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_broker_restart_with_persistence_loses_nothing_and_doubles_nothing() {
    mqtt_broker_restart(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_broker_restart_without_persistence_resumes_once_the_adapter_is_back() {
    mqtt_broker_restart(false).await;
}
