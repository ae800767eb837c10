//! The influx sink as `floodcmd run` and `floodcmd sink-influx` start it
//! (`stages::start_sink_influx`), across real Kafka into the real victoria-metrics (both
//! started by `scripts/test.sh`): readings, point states and alerts read back through the
//! server's export API equal what was produced, and a sink stopped and started again goes on
//! from its commits without losing or adding a point.

use floodcmd::stages::{self, StageContext};
use floodcmd_model::bus::Bus;
use floodcmd_model::codec::encode;
use floodcmd_model::config::DistrictFile;
use floodcmd_model::event::{AlertTransition, PointStatus, TransitionKind};
use floodcmd_model::settings::{BusKind, BusSettings, SinkInfluxSettings};
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{DataState, District, Level, Reading, SensorKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the README's test command, scripts/test.sh, which starts Kafka and victoria-metrics")
    })
}

/// (metric, series id, ms) → value.
type Samples = BTreeMap<(String, String, i64), f64>;

/// The sample district with ids of this run only: the server keeps earlier runs' series.
fn district(run: &str) -> Arc<District> {
    let mut file: DistrictFile = toml::from_str(floodcmd::XINCHENG_TOML).unwrap();
    for p in &mut file.points {
        p.id = format!("{}-{run}", p.id);
        p.rain_gauge = p.rain_gauge.take().map(|g| format!("{g}-{run}"));
        for s in &mut p.sensors {
            s.id = format!("{}-{run}", s.id);
        }
    }
    Arc::new(District::from_file(file).unwrap())
}

async fn export(url: &str, run: &str) -> Samples {
    let text = match reqwest::Client::new()
        .get(format!("{url}/api/v1/export"))
        .query(&[("match[]", format!("{{point=~\".*-{run}\"}}"))])
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let mut out = Samples::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let m = &v["metric"];
        let name = m["__name__"].as_str().unwrap_or_default().to_string();
        let id = match (m["sensor"].as_str(), m["transition"].as_str()) {
            (Some(s), _) => s.to_string(),
            (None, Some(t)) => format!("{}/{t}", m["point"].as_str().unwrap_or_default()),
            (None, None) => m["point"].as_str().unwrap_or_default().to_string(),
        };
        let ts = v["timestamps"].as_array().unwrap();
        let vs = v["values"].as_array().unwrap();
        for (t, x) in ts.iter().zip(vs) {
            out.insert(
                (name.clone(), id.clone(), t.as_i64().unwrap()),
                x.as_f64().unwrap(),
            );
        }
    }
    out
}

async fn wait_committed(bus: &Arc<dyn Bus>, group: &str, topics: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut behind = Vec::new();
        for t in topics {
            let ends = bus.end_offsets(t).await.unwrap();
            let done = bus.committed(group, t).await.unwrap();
            for (end, c) in ends.iter().zip(&done) {
                if *end > 0 && c.unwrap_or(0) < *end {
                    behind.push(format!("{t}: {c:?} of {end}"));
                }
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sink never committed: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_states_and_alerts_cross_kafka_into_the_time_series_store() {
    let influx = env("FLOODCMD_INFLUX");
    let nanos = SystemClock.now_ms();
    let run = format!("k{}x{:x}", std::process::id(), nanos % 0xffff_ffff);
    let district = district(&run);
    let topics = Topics::new(format!("t{run}.influx"));
    let bus_settings = BusSettings {
        kind: BusKind::Kafka,
        bootstrap: env("FLOODCMD_KAFKA"),
        partitions: 4,
        ..BusSettings::default()
    };
    let connected = stages::connect_bus(&bus_settings, None, &topics)
        .await
        .unwrap();
    let bus = connected.bus;
    let producer = bus.producer();
    let base = SystemClock.now_ms() - 1_800_000;
    let mut expected = Samples::new();
    let mut readings = Vec::new();
    for k in 0..20 {
        for (j, s) in district.sensors().enumerate() {
            let ts = base + k * 1000 + j as i64;
            readings.push(Reading {
                sensor: s.sensor.id.as_str().into(),
                point: s.point.id.as_str().into(),
                kind: s.sensor.kind,
                ts_ms: ts,
                value: ((k as usize * 3 + j) % 300) as f64 * 0.5,
                seq: Some(k as u64),
                received_ms: ts + 100,
            });
        }
    }
    for r in &readings {
        let m = match r.kind {
            SensorKind::Depth => "depth_value",
            SensorKind::Rain => "rain_value",
        };
        expected.insert((m.into(), r.sensor.to_string(), r.ts_ms), r.value);
    }
    let statuses: Vec<PointStatus> = district
        .points
        .iter()
        .enumerate()
        .map(|(j, p)| PointStatus {
            point: p.id.as_str().into(),
            kind: p.kind,
            level: Level::Orange,
            data_state: DataState::Fresh,
            depth_cm: Some(j as f64),
            rise_cm_per_min: None,
            rain_10m_mm: None,
            rain_1h_mm: None,
            rain_3h_mm: None,
            rain_24h_mm: None,
            last_reading_ms: None,
            qc_flags: Vec::new(),
            next_level: None,
            minutes_to_next: None,
            flapping: false,
            as_of_ms: base + 100_000 + j as i64,
        })
        .collect();
    for s in &statuses {
        expected.insert(
            ("status_level".into(), s.point.to_string(), s.as_of_ms),
            3.0,
        );
    }
    let alerts: Vec<AlertTransition> = district
        .points
        .iter()
        .enumerate()
        .map(|(j, p)| AlertTransition {
            point: p.id.clone(),
            point_kind: p.kind,
            transition: TransitionKind::Upgraded,
            from: Level::Yellow,
            to: Level::Orange,
            event_ms: base + 200_000 + j as i64,
            processed_ms: base + 200_100 + j as i64,
            rule: "depth >= 20 cm (orange)".into(),
            value: 20.5,
            rise_cm_per_min: Some(0.5),
            late: false,
            next_level: None,
            minutes_to_next: None,
            flapping: false,
        })
        .collect();
    for a in &alerts {
        expected.insert(
            (
                "alert_to".into(),
                format!("{}/upgraded", a.point),
                a.event_ms,
            ),
            3.0,
        );
    }
    let (first, second) = readings.split_at(readings.len() / 2);
    for r in first {
        producer
            .send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await
            .unwrap();
    }
    for s in &statuses {
        producer
            .send(&topics.status(), s.point.as_bytes(), encode(s), s.as_of_ms)
            .await
            .unwrap();
    }
    for a in &alerts {
        producer
            .send(&topics.alerts(), a.point.as_bytes(), encode(a), a.event_ms)
            .await
            .unwrap();
    }

    let settings = SinkInfluxSettings {
        url: influx.clone(),
        batch_lines: 300,
        flush_ms: 200,
        group: format!("sink-{run}"),
        ..SinkInfluxSettings::default()
    };
    let inputs = [topics.readings(), topics.status(), topics.alerts()];
    let start = || {
        let (tx, rx) = watch::channel(false);
        let ctx = StageContext {
            bus: bus.clone(),
            district: district.clone(),
            clock: Arc::new(SystemClock),
            topics: topics.clone(),
            shutdown: rx,
        };
        (tx, stages::start_sink_influx(&ctx, &settings).unwrap())
    };
    let (tx, sink) = start();
    wait_committed(&bus, &settings.group, &inputs).await;
    let _ = tx.send(true);
    sink.await.unwrap();

    // The rest arrives while no sink runs; the next one starts from the group's commits.
    for r in second {
        producer
            .send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await
            .unwrap();
    }
    let (tx, sink) = start();
    wait_committed(&bus, &settings.group, &inputs).await;
    let _ = tx.send(true);
    sink.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let all = export(&influx, &run).await;
        let got: Samples = all
            .into_iter()
            .filter(|((n, _, _), _)| {
                matches!(
                    n.as_str(),
                    "depth_value" | "rain_value" | "status_level" | "alert_to"
                )
            })
            .collect();
        if got.len() >= expected.len() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} samples read back; missing e.g. {missing:?}",
        got.len(),
        expected.len()
    );
    assert_eq!(
        got, expected,
        "the server holds other values than were sent"
    );
}
