//! The ingest gateway against real Kafka and a real Mosquitto (started by `scripts/test.sh`):
//! readings posted over HTTP and published over MQTT land on the readings topic exactly once,
//! invalid ones on the rejects topic with their reasons, and one sensor's readings keep their
//! order across partitions and gateway restarts.

use floodcmd::stages::{self, StageContext};
use floodcmd_ingest::auth::{Device, DeviceRegistry};
use floodcmd_ingest::Access;
use floodcmd_model::bus::{Assignment, Bus};
use floodcmd_model::codec::decode;
use floodcmd_model::event::{Reject, RejectReason};
use floodcmd_model::settings::{BusKind, BusSettings, IngestSettings};
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Reading};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the README's test command, scripts/test.sh, which starts Kafka and Mosquitto"))
}

struct Rig {
    ctx: StageContext,
    shutdown: watch::Sender<bool>,
    settings: IngestSettings,
}

async fn rig(name: &str, with_mqtt: bool) -> Rig {
    let topics = Topics::new(format!("t{}.{name}", std::process::id()));
    let bus_settings = BusSettings {
        kind: BusKind::Kafka,
        bootstrap: env("FLOODCMD_KAFKA"),
        partitions: 4,
        ..BusSettings::default()
    };
    let connected = stages::connect_bus(&bus_settings, None, &topics)
        .await
        .unwrap();
    let (shutdown, rx) = watch::channel(false);
    let district = Arc::new(District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    let ctx = StageContext {
        bus: connected.bus,
        district,
        clock: Arc::new(SystemClock),
        topics: topics.clone(),
        shutdown: rx,
    };
    let mut settings = IngestSettings::default();
    if with_mqtt {
        settings.mqtt = env("FLOODCMD_MQTT");
        settings.mqtt_prefix = format!("{}/readings", topics.prefix());
    }
    Rig {
        ctx,
        shutdown,
        settings,
    }
}

fn access() -> Access {
    let mut reg = DeviceRegistry::default();
    reg.insert("tok-station", Device::any("station-7"));
    Access::Devices(reg)
}

async fn read_until<T: serde::de::DeserializeOwned>(
    bus: &Arc<dyn Bus>,
    topic: &str,
    want: usize,
) -> Vec<T> {
    let mut c = bus
        .consumer(
            &format!("check-{}", std::process::id()),
            topic,
            Assignment::All,
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < want && Instant::now() < deadline {
        out.extend(
            c.poll(1000, Duration::from_millis(300))
                .await
                .unwrap()
                .iter()
                .map(|r| decode::<T>(&r.payload).unwrap()),
        );
    }
    // Anything beyond `want` would be a duplicate: give it a moment to show up.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        out.extend(
            c.poll(1000, Duration::from_millis(300))
                .await
                .unwrap()
                .iter()
                .map(|r| decode::<T>(&r.payload).unwrap()),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_mqtt_readings_land_exactly_once_and_bad_ones_as_rejects() {
    let r = rig("once", true).await;
    let (addr, _tasks) =
        stages::start_ingest(&r.ctx, &r.settings, ([127, 0, 0, 1], 0).into(), access())
            .await
            .unwrap();
    let now = SystemClock.now_ms();
    let http_body: String = (0..50)
        .map(|i| {
            format!(
                "{{\"sensor\":\"WL-UP-0{}\",\"ts\":{},\"value\":{}.5,\"seq\":{}}}\n",
                1 + i % 3,
                now + i,
                i % 30,
                1000 + i
            )
        })
        .chain([
            "{\"sensor\":\"WL-UP-01\",\"ts\":1,\"value\":\"NaN\"}\n".to_string(),
            "{not json\n".to_string(),
        ])
        .collect();
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/readings"))
        .bearer_auth("tok-station")
        .header("content-type", "application/x-ndjson")
        .body(http_body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(50), Some(2)),
        "{v}"
    );

    // MQTT: a field gateway publishes NDJSON under its device id.
    let mut opts = rumqttc::MqttOptions::new(
        format!("test-pub-{}", std::process::id()),
        "127.0.0.1",
        env("FLOODCMD_MQTT")
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap(),
    );
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
    let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    // The adapter subscribes after connecting; publish once it has had the chance.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mqtt_body: String = (0..30)
        .map(|i| {
            format!(
                "{{\"sensor\":\"RN-RG-0{}\",\"ts\":{},\"value\":0.{},\"seq\":{}}}\n",
                1 + i % 2,
                now + i,
                i % 9,
                5000 + i
            )
        })
        .chain(["{\"sensor\":\"NO-SUCH\",\"ts\":1,\"value\":1}\n".to_string()])
        .collect();
    client
        .publish(
            format!("{}/readings/station-7", r.ctx.topics.prefix()),
            rumqttc::QoS::AtLeastOnce,
            false,
            mqtt_body.into_bytes(),
        )
        .await
        .unwrap();

    let readings: Vec<Reading> = read_until(&r.ctx.bus, &r.ctx.topics.readings(), 80).await;
    assert_eq!(
        readings.len(),
        80,
        "50 over HTTP and 30 over MQTT, each exactly once"
    );
    let mut seqs: Vec<u64> = readings.iter().map(|x| x.seq.unwrap()).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 80, "no reading twice");
    let rejects: Vec<Reject> = read_until(&r.ctx.bus, &r.ctx.topics.rejects(), 3).await;
    let mut reasons: Vec<(String, RejectReason)> = rejects
        .iter()
        .map(|x| (x.source.clone(), x.reason))
        .collect();
    reasons.sort_by_key(|(s, r)| (s.clone(), r.as_str()));
    assert_eq!(
        reasons,
        vec![
            ("http".to_string(), RejectReason::Malformed),
            ("http".to_string(), RejectReason::NotANumber),
            ("mqtt".to_string(), RejectReason::UnknownSensor),
        ]
    );
    let _ = r.shutdown.send(true);
    driver.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sensors_readings_keep_their_order_across_partitions_and_gateway_restarts() {
    let r = rig("order", false).await;
    let now = SystemClock.now_ms();
    let sensors = [
        "WL-UP-01", "WL-UP-02", "WL-LP-03", "RN-RG-04", "WL-UP-05", "WL-LP-06",
    ];
    let mut next_seq: HashMap<&str, u64> = HashMap::new();
    for round in 0..3 {
        // A fresh gateway each round, as after a restart.
        let (tx, rx) = watch::channel(false);
        let ctx = StageContext {
            shutdown: rx,
            ..r.ctx.clone()
        };
        let (addr, tasks) =
            stages::start_ingest(&ctx, &r.settings, ([127, 0, 0, 1], 0).into(), access())
                .await
                .unwrap();
        for _batch in 0..4 {
            let mut body = String::new();
            for i in 0..60 {
                let s = sensors[i % sensors.len()];
                let seq = next_seq.entry(s).or_insert(round * 10_000);
                *seq += 1;
                body.push_str(&format!(
                    "{{\"sensor\":\"{s}\",\"ts\":{},\"value\":1.0,\"seq\":{}}}\n",
                    now + *seq as i64,
                    *seq
                ));
            }
            let resp = reqwest::Client::new()
                .post(format!("http://{addr}/v1/readings"))
                .bearer_auth("tok-station")
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
        }
        let _ = tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
    }
    let readings: Vec<Reading> = read_until(&r.ctx.bus, &r.ctx.topics.readings(), 720).await;
    assert_eq!(readings.len(), 720);
    let partitions: std::collections::HashSet<u32> = sensors
        .iter()
        .map(|s| floodcmd_model::bus::partition_for(s.as_bytes(), 4))
        .collect();
    assert!(
        partitions.len() > 1,
        "the sensors spread over several partitions"
    );
    for s in sensors {
        let seqs: Vec<u64> = readings
            .iter()
            .filter(|x| x.sensor == s)
            .map(|x| x.seq.unwrap())
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "{s} keeps its order");
        assert_eq!(seqs.len(), 120);
    }
    let _ = r.shutdown.send(true);
}
