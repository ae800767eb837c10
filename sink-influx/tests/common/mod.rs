//! What the sink's tests against a real victoria-metrics share: the server's address, a district
//! whose ids no other run uses (the server's storage outlives test runs), records to send, and
//! reading everything back through `/api/v1/export`.

#![allow(dead_code)]

use floodcmd_bus::EmbeddedBus;
use floodcmd_model::bus::{Bus, Producer};
use floodcmd_model::codec::encode;
use floodcmd_model::config::{DistrictFile, PointKind};
use floodcmd_model::event::{AlertTransition, PointStatus, TransitionKind};
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{DataState, District, Level, Reading, SensorKind};
use floodcmd_sink_influx::{InfluxTarget, InfluxWriter};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const XINCHENG: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../config/xincheng.toml"
));

/// The server the tests write to (`scripts/test.sh` starts it and sets this).
pub fn influx_url() -> String {
    std::env::var("FLOODCMD_INFLUX").unwrap_or_else(|_| {
        panic!(
            "FLOODCMD_INFLUX is not set: these tests need a real victoria-metrics. Run the README's \
             test command, scripts/test.sh, or `scripts/victoria.sh start` and \
             `export FLOODCMD_INFLUX=http://127.0.0.1:18428`"
        )
    })
}

/// An id no other run of any test uses.
pub fn run_id(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}{}x{:x}", std::process::id(), nanos % 0xffff_ffff)
}

/// The sample district with every point and sensor id suffixed by `run`: its series are this
/// run's alone, whatever the server already holds.
pub fn district(run: &str) -> Arc<District> {
    let mut file: DistrictFile = toml::from_str(XINCHENG).expect("xincheng.toml parses");
    for p in &mut file.points {
        p.id = format!("{}-{run}", p.id);
        p.rain_gauge = p.rain_gauge.take().map(|g| format!("{g}-{run}"));
        for s in &mut p.sensors {
            s.id = format!("{}-{run}", s.id);
        }
    }
    Arc::new(District::from_file(file).expect("the renamed district is valid"))
}

/// A writer for the test server.
pub fn writer() -> Arc<InfluxWriter> {
    Arc::new(
        InfluxWriter::new(&InfluxTarget {
            url: influx_url(),
            org: "floodcmd".into(),
            bucket: "tests".into(),
            token: "unused-by-victoria".into(),
            gzip: true,
            timeout: Duration::from_secs(10),
        })
        .expect("FLOODCMD_INFLUX is an http URL"),
    )
}

/// An embedded bus with every topic of `topics`.
pub async fn bus(topics: &Topics) -> EmbeddedBus {
    let bus = EmbeddedBus::new(1 << 20);
    for t in topics.all() {
        bus.ensure_topic(&t, 4).await.unwrap();
    }
    bus
}

/// What was sent: per (metric name, series id, ms) the value the server must give back.
/// The series id is `sensor` for readings and `point` (plus `transition`) otherwise.
pub type Expected = BTreeMap<(String, String, i64), f64>;

/// Readings for every sensor of `district`, `per_sensor` each, one second apart, ending a few
/// minutes ago (the server refuses data too far in the future).
pub fn readings(district: &District, per_sensor: usize, first: usize) -> Vec<Reading> {
    let base = SystemClock.now_ms() - 3_600_000;
    let mut out = Vec::new();
    for k in first..first + per_sensor {
        for (j, s) in district.sensors().enumerate() {
            let ts = base + k as i64 * 1000 + j as i64;
            out.push(Reading {
                sensor: s.sensor.id.as_str().into(),
                point: s.point.id.as_str().into(),
                kind: s.sensor.kind,
                ts_ms: ts,
                // Quarters are exact in binary and in any decimal the server may use.
                value: ((k * 7 + j) % 400) as f64 * 0.25,
                seq: (k % 2 == 0).then_some(k as u64),
                received_ms: ts + 150,
            });
        }
    }
    out
}

/// Point states, `per_point` for each point.
pub fn statuses(district: &District, per_point: usize) -> Vec<PointStatus> {
    let base = SystemClock.now_ms() - 3_000_000;
    let mut out = Vec::new();
    for k in 0..per_point {
        for (j, p) in district.points.iter().enumerate() {
            let rain = p.kind == PointKind::RainGauge;
            out.push(PointStatus {
                point: p.id.as_str().into(),
                kind: p.kind,
                level: [Level::Normal, Level::Blue, Level::Red][(k + j) % 3],
                data_state: [DataState::Fresh, DataState::Suspect][(k + j) % 2],
                depth_cm: (!rain).then_some((k + j) as f64 * 0.5),
                rise_cm_per_min: (!rain).then_some(0.25),
                rain_10m_mm: rain.then_some(k as f64),
                rain_1h_mm: rain.then_some(k as f64 * 2.0),
                rain_3h_mm: None,
                rain_24h_mm: None,
                last_reading_ms: Some(base + k as i64 * 1000),
                qc_flags: Vec::new(),
                next_level: None,
                minutes_to_next: None,
                flapping: false,
                as_of_ms: base + k as i64 * 1000 + j as i64,
            });
        }
    }
    out
}

/// Alert transitions, one per point.
pub fn alerts(district: &District) -> Vec<AlertTransition> {
    let base = SystemClock.now_ms() - 2_000_000;
    district
        .points
        .iter()
        .enumerate()
        .map(|(j, p)| AlertTransition {
            point: p.id.clone(),
            point_kind: p.kind,
            transition: TransitionKind::Raised,
            from: Level::Normal,
            to: Level::Yellow,
            event_ms: base + j as i64,
            processed_ms: base + j as i64 + 40,
            rule: format!("depth >= {j} cm (yellow)"),
            value: j as f64 + 0.5,
            rise_cm_per_min: None,
            late: false,
            next_level: None,
            minutes_to_next: None,
            flapping: false,
        })
        .collect()
}

/// What the server must hold for these records.
pub fn expect(
    readings: &[Reading],
    statuses: &[PointStatus],
    alerts: &[AlertTransition],
) -> Expected {
    let mut e = Expected::new();
    for r in readings {
        let m = match r.kind {
            SensorKind::Depth => "depth",
            SensorKind::Rain => "rain",
        };
        e.insert(
            (format!("{m}_value"), r.sensor.to_string(), r.ts_ms),
            r.value,
        );
    }
    for s in statuses {
        let level = s.level.alert_index().map_or(0, |i| i + 1) as f64;
        e.insert(
            ("status_level".into(), s.point.to_string(), s.as_of_ms),
            level,
        );
        if let Some(d) = s.depth_cm {
            e.insert(
                ("status_depth_cm".into(), s.point.to_string(), s.as_of_ms),
                d,
            );
        }
    }
    for a in alerts {
        let id = format!("{}/{}", a.point, a.transition.as_str());
        e.insert(("alert_to".into(), id.clone(), a.event_ms), 2.0);
        e.insert(("alert_value".into(), id, a.event_ms), a.value);
    }
    e
}

/// Send records to their topics.
pub async fn send_all(
    producer: &dyn Producer,
    topics: &Topics,
    readings: &[Reading],
    statuses: &[PointStatus],
    alerts: &[AlertTransition],
) {
    for r in readings {
        producer
            .send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await
            .unwrap();
    }
    for s in statuses {
        producer
            .send(&topics.status(), s.point.as_bytes(), encode(s), s.as_of_ms)
            .await
            .unwrap();
    }
    for a in alerts {
        producer
            .send(&topics.alerts(), a.point.as_bytes(), encode(a), a.event_ms)
            .await
            .unwrap();
    }
}

/// Wait until `group` has committed every partition of `topics` up to its end.
pub async fn wait_committed(bus: &dyn Bus, group: &str, topics: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut behind = Vec::new();
        for t in topics {
            let ends = bus.end_offsets(t).await.unwrap();
            let done = bus.committed(group, t).await.unwrap();
            for (p, (end, c)) in ends.iter().zip(&done).enumerate() {
                if *end > 0 && c.unwrap_or(0) < *end {
                    behind.push(format!("{t}[{p}] at {c:?} of {end}"));
                }
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sink never committed everything: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One exported series.
#[derive(serde::Deserialize, Debug)]
pub struct Series {
    pub metric: BTreeMap<String, String>,
    pub values: Vec<f64>,
    pub timestamps: Vec<i64>,
}

/// Everything the server holds for the points of run `run`, through `/api/v1/export`.
pub async fn export(run: &str) -> Result<Vec<Series>, String> {
    let url = format!("{}/api/v1/export", influx_url());
    let selector = format!("{{point=~\".*-{run}\"}}");
    let resp = reqwest::Client::new()
        .get(&url)
        .query(&[("match[]", selector.as_str())])
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("export: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("export: HTTP {}", resp.status()));
    }
    let text = resp.text().await.map_err(|e| format!("export: {e}"))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("export line {l}: {e}")))
        .collect()
}

/// The exported samples as (metric, series id, ms) → value, and how many samples there were
/// before collapsing duplicates of one series and timestamp.
pub fn stored(series: &[Series]) -> (Expected, usize) {
    let mut out = Expected::new();
    let mut raw = 0;
    for s in series {
        let name = s.metric.get("__name__").cloned().unwrap_or_default();
        let id = match (s.metric.get("sensor"), s.metric.get("transition")) {
            (Some(sensor), _) => sensor.clone(),
            (None, Some(t)) => format!("{}/{t}", s.metric["point"]),
            (None, None) => s.metric.get("point").cloned().unwrap_or_default(),
        };
        for (v, t) in s.values.iter().zip(&s.timestamps) {
            raw += 1;
            out.insert((name.clone(), id.clone(), *t), *v);
        }
    }
    (out, raw)
}

/// Read back until every expected sample is there (new data becomes visible within a second
/// or two), then return what the server holds for the run's metrics that were expected.
pub async fn read_back(run: &str, expected: &Expected, within: Duration) -> Expected {
    let names: BTreeSet<&String> = expected.keys().map(|(n, _, _)| n).collect();
    let deadline = Instant::now() + within;
    loop {
        let got = match export(run).await {
            Ok(series) => {
                let (all, _) = stored(&series);
                all.into_iter()
                    .filter(|((n, _, _), _)| names.contains(n))
                    .collect::<Expected>()
            }
            Err(e) => {
                eprintln!("read back: {e}");
                Expected::new()
            }
        };
        if got.len() >= expected.len() || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Assert the server holds exactly what was sent, naming the first differences.
pub fn assert_same(expected: &Expected, got: &Expected) {
    let missing: Vec<_> = expected
        .iter()
        .filter(|(k, _)| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .iter()
        .filter(|(k, _)| !expected.contains_key(*k))
        .take(5)
        .collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter_map(|(k, v)| got.get(k).filter(|g| *g != v).map(|g| (k, v, g)))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && wrong.is_empty(),
        "{} samples sent, {} read back; missing {missing:?}; unexpected {extra:?}; wrong values (key, sent, read) {wrong:?}",
        expected.len(),
        got.len()
    );
    assert_eq!(expected.len(), got.len());
}

/// A counter of the default registry (summed over `label` values matching `value`).
pub fn counter(name: &str, label: &str, value: &str) -> f64 {
    prometheus::default_registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            label.is_empty()
                || m.get_label()
                    .iter()
                    .any(|l| l.name() == label && l.value() == value)
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}
