//! Stage crashes (issue #10, fault test 2): a stage process killed with SIGKILL mid-storm and
//! started again, against real Kafka (and the real victoria-metrics for the sink), all started
//! by `scripts/test.sh`. After recovery the outcome equals an undisturbed run: no gap, no
//! duplicate; each stage rebuilds its state from Kafka, and the time to recover is printed.
//!
//! - ingest: the gateway answers only after its records are on the bus (acks=all), so every
//!   reading acknowledged before the kill is on the readings topic; the feeder sends again
//!   whatever got no answer. A request whose answer the kill swallowed may have landed: only
//!   such readings may be on the topic twice, and the alert transitions still equal the
//!   undisturbed run's, each once.
//! - dashboard: a second wall that is never killed is the undisturbed one; once the storm has
//!   passed, the killed-and-restarted wall shows the same points (levels, depths, states) and
//!   the same incidents.
//! - sink-influx: every reading reaches victoria-metrics with its value, once per series and
//!   timestamp (a batch written twice after the kill counts once there, by design).
//!
//! The stream and alerts stages' kill tests are `tests/kafka_restart.rs` and
//! `tests/alerts_sms.rs`.

mod faults;

use faults::*;
use floodcmd::stages;
use floodcmd_model::bus::Bus;
use floodcmd_model::config::DistrictFile;
use floodcmd_model::event::TransitionKind;
use floodcmd_model::settings::{BusKind, BusSettings};
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Level, Reading, SensorKind};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn kafka_bus(prefix: &str) -> (Arc<dyn Bus>, Topics) {
    let topics = Topics::new(prefix.to_string());
    let settings = BusSettings {
        kind: BusKind::Kafka,
        bootstrap: env("FLOODCMD_KAFKA"),
        prefix: prefix.to_string(),
        partitions: 4,
        ..BusSettings::default()
    };
    let bus = stages::connect_bus(&settings, None, &topics)
        .await
        .unwrap()
        .bus;
    (bus, topics)
}

/// Start a stage off the async workers (it blocks reading the process's first lines).
async fn spawn(stage: &'static str, settings: std::path::PathBuf, ready: &'static str) -> Stage {
    tokio::task::spawn_blocking(move || spawn_stage(stage, &settings, ready))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ingest_gateway_loses_no_acknowledged_reading_and_doubles_no_alert() {
    let district = Arc::new(District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    let prefix = unique("ingestkill");
    let (bus, topics) = kafka_bus(&prefix).await;
    // The same port after the restart: the devices keep their URL.
    let port = free_port();
    let settings = settings_file(
        &prefix,
        "stages",
        None,
        &env("FLOODCMD_KAFKA"),
        1,
        &format!("[ingest]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let _stream = spawn("stream", settings.clone(), "stream stage running").await;
    let mut ingest = spawn("ingest", settings.clone(), "ingest gateway:").await;
    let url = format!("http://127.0.0.1:{port}/v1/readings");

    const STEPS: usize = 120;
    let origin = SystemClock.now_ms() - STORM_LAG_MS;
    let storm = Arc::new(storm(&district, 24, STEPS, origin, STORM_STEP_MS));
    let points = storm_points(&storm);
    let stats = Arc::new(Mutex::new(FeedStats::default()));
    let feeding = tokio::spawn(feed(
        url,
        storm.clone(),
        4,
        Duration::from_millis(250),
        stats.clone(),
    ));

    tokio::time::sleep(Duration::from_secs(10)).await;
    ingest.kill();
    let acked_before_kill = stats.lock().unwrap().accepted;
    let restarted = Instant::now();
    let _ingest = spawn("ingest", settings.clone(), "ingest gateway:").await;
    let listening = restarted.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.lock().unwrap().accepted == acked_before_kill {
        assert!(
            Instant::now() < deadline,
            "nothing accepted after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_accept = restarted.elapsed();
    feeding.await.unwrap();
    let fed = stats.lock().unwrap().clone();

    let want = storm_keys(&storm);
    assert_eq!(fed.accepted, want.len(), "the feeder got every reading in");
    let on_topic = by_sensor_seq(
        &read_until(
            &*bus,
            &topics.readings(),
            Duration::from_secs(60),
            Duration::from_secs(3),
            |r| by_sensor_seq(r).len() >= want.len(),
        )
        .await,
    );
    let missing: Vec<_> = want.iter().filter(|k| !on_topic.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not on the topic: {missing:?}"
    );
    let stray: Vec<_> = on_topic.keys().filter(|k| !want.contains(*k)).collect();
    assert!(stray.is_empty(), "on the topic but never sent: {stray:?}");
    let doubled: Vec<_> = on_topic.iter().filter(|(_, n)| **n > 1).collect();
    for (k, n) in &doubled {
        assert!(
            fed.in_doubt.contains(*k),
            "{k:?} is on the topic {n} times, but every request carrying it was answered"
        );
        assert_eq!(**n, 2, "{k:?} on the topic {n} times");
    }
    let on_topic_total: usize = on_topic.values().sum();
    let consumed =
        wait_committed(&*bus, "stream", &topics.readings(), Duration::from_secs(60)).await;
    assert_eq!(
        consumed, on_topic_total as u64,
        "the stream stage read them all"
    );

    let readings: Vec<Reading> = storm.iter().flatten().cloned().collect();
    let expected = undisturbed(district.clone(), &readings, origin, &points).await;
    assert!(expected.len() >= points.len(), "{expected:?}");
    let got = transitions(
        &*bus,
        &topics.alerts(),
        &points,
        expected.len(),
        Duration::from_secs(90),
    )
    .await;
    assert_same_transitions(&got, &expected, "ingest killed");
    eprintln!(
        "fault_stage_kills/ingest: killed 10.0 s into the storm with {acked_before_kill} readings \
         acknowledged; restarted gateway listening {:.2} s after the restart began, first \
         reading accepted {:.2} s after it. Readings: {} sent, {} accepted, {on_topic_total} on the \
         topic ({consumed} read and committed by the stream stage; {} distinct, 0 missing, {} twice, each from a request the kill left unanswered; \
         {} readings in doubt: in requests a gateway took and never answered); {} posts, {} unanswered ({} of them found no gateway listening), {} refused; the longest time nothing was accepted: {:.1} s. \
         Transitions: {} expected, {} emitted, 0 twice.",
        listening.as_secs_f64(),
        first_accept.as_secs_f64(),
        fed.sent,
        fed.accepted,
        on_topic.len(),
        doubled.len(),
        fed.in_doubt.len(),
        fed.posts,
        fed.unanswered,
        fed.refused_connections,
        fed.refused,
        fed.longest_gap.as_secs_f64(),
        expected.len(),
        got.len(),
    );
}

/// `GET http://<addr><path>` as JSON, or `None` while the wall is not answering.
async fn get_json(addr: &str, path: &str) -> Option<serde_json::Value> {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// A wall's view: every point and every open incident.
async fn wall(addr: &str) -> Option<(serde_json::Value, serde_json::Value)> {
    Some((
        get_json(addr, "/api/points").await?,
        get_json(addr, "/api/incidents").await?,
    ))
}

/// Each point's `last_reading_ms` on a wall.
fn last_readings(points: &serde_json::Value) -> HashMap<String, i64> {
    points
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            Some((
                p["id"].as_str()?.to_string(),
                p["last_reading_ms"].as_i64()?,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dashboard_rebuilds_the_same_wall_from_kafka() {
    let district = Arc::new(District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    let prefix = unique("wallkill");
    let (bus, topics) = kafka_bus(&prefix).await;
    let kafka = env("FLOODCMD_KAFKA");
    let stages_cfg = settings_file(&prefix, "stages", None, &kafka, 1, "");
    let (port_a, port_b) = (free_port(), free_port());
    let wall_cfg = |name: &str, port: u16| {
        settings_file(
            &prefix,
            name,
            None,
            &kafka,
            1,
            &format!("[dashboard]\nlisten = \"127.0.0.1:{port}\"\ngroup = \"{name}\"\n"),
        )
    };
    let (cfg_a, cfg_b) = (wall_cfg("wall-a", port_a), wall_cfg("wall-b", port_b));
    let _stream = spawn("stream", stages_cfg.clone(), "stream stage running").await;
    let _alerts = spawn("alerts", stages_cfg.clone(), "alerts stage running").await;
    let _wall_a = spawn("dashboard", cfg_a, "command wall:").await;
    let mut wall_b = spawn("dashboard", cfg_b.clone(), "command wall:").await;
    let (a, b) = (format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}"));

    const STEPS: usize = 120;
    let origin = SystemClock.now_ms() - STORM_LAG_MS;
    let storm = Arc::new(storm(&district, 24, STEPS, origin, STORM_STEP_MS));
    let points = storm_points(&storm);
    let produced = Arc::new(Mutex::new(0usize));
    let producing = tokio::spawn(produce_paced(
        bus.clone(),
        topics.readings(),
        storm.clone(),
        Duration::from_millis(250),
        produced.clone(),
    ));

    tokio::time::sleep(Duration::from_secs(10)).await;
    wall_b.kill();
    let steps_at_kill = *produced.lock().unwrap();
    assert!(
        steps_at_kill > 0 && steps_at_kill < STEPS,
        "the kill comes mid-storm"
    );
    // What the wall had been told by the kill: each storm point's reading of that step.
    let told_ms = storm[steps_at_kill - 1][0].ts_ms;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = Instant::now();
    let _wall_b = spawn("dashboard", cfg_b, "command wall:").await;
    let listening = restarted.elapsed();
    // Rebuilt: every storm point shows at least what it showed at the kill.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(p) = get_json(&b, "/api/points").await {
            let last = last_readings(&p);
            if points
                .iter()
                .all(|id| last.get(id).is_some_and(|ms| *ms >= told_ms))
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the restarted wall did not rebuild the state it had at the kill within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rebuilt = restarted.elapsed();
    producing.await.unwrap();

    // The storm is over once its transitions are all out.
    let readings: Vec<Reading> = storm.iter().flatten().cloned().collect();
    let expected = undisturbed(district.clone(), &readings, origin, &points).await;
    let got = transitions(
        &*bus,
        &topics.alerts(),
        &points,
        expected.len(),
        Duration::from_secs(90),
    )
    .await;
    assert_same_transitions(&got, &expected, "dashboard killed (stream output)");
    let final_level: BTreeMap<String, Level> = per_point(&expected)
        .into_iter()
        .map(|(p, v)| (p, v.last().unwrap().3))
        .collect();

    // Both walls agree, twice in a row a second apart (the alerts stage may still be writing
    // incidents for the last transitions).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (points_a, incidents_a) = loop {
        let (wa, wb) = (wall(&a).await, wall(&b).await);
        if let Some(view) = wa.as_ref().filter(|_| wa == wb) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (wa2, wb2) = (wall(&a).await, wall(&b).await);
            if wa2 == wa && wb2 == wb {
                break view.clone();
            }
        }
        if Instant::now() >= deadline {
            let (wa, wb) = (wa.unwrap_or_default(), wb.unwrap_or_default());
            let diff: Vec<_> =
                wa.0.as_array()
                    .into_iter()
                    .flatten()
                    .zip(wb.0.as_array().into_iter().flatten())
                    .filter(|(x, y)| x != y)
                    .take(3)
                    .collect();
            panic!(
                "the restarted wall differs from the undisturbed one: points {diff:#?}; \
                 incidents equal: {}",
                wa.1 == wb.1
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // And what they agree on is the storm's outcome.
    let levels: BTreeMap<String, Level> = points_a
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| points.contains(p["id"].as_str().unwrap()))
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                serde_json::from_value(p["level"].clone()).unwrap(),
            )
        })
        .collect();
    let with_level: BTreeMap<String, Level> = points
        .iter()
        .map(|p| {
            (
                p.clone(),
                final_level.get(p).copied().unwrap_or(Level::Normal),
            )
        })
        .collect();
    assert_eq!(levels, with_level, "each storm point at its final level");
    let open = incidents_a.as_array().unwrap().len();
    assert!(open > 0, "the storm opened incidents");
    let raised = expected
        .iter()
        .filter(|s| s.1 == TransitionKind::Raised)
        .count();
    eprintln!(
        "fault_stage_kills/dashboard: killed at step {steps_at_kill} of {STEPS}; restarted wall \
         listening {:.2} s and rebuilt from Kafka (every storm point at or past its reading at \
         the kill) {:.2} s after the restart began. After the storm both walls equal: {} points \
         ({} storm points, levels as the undisturbed run ends), {open} open incidents; {} \
         transitions ({raised} raises) expected and emitted.",
        listening.as_secs_f64(),
        rebuilt.as_secs_f64(),
        points_a.as_array().unwrap().len(),
        points.len(),
        expected.len(),
    );
}

/// The sample district with every point and sensor id suffixed by `run` (victoria keeps
/// earlier runs' series), written where a stage process can read it.
fn renamed_district(run: &str, dir: &std::path::Path) -> (Arc<District>, std::path::PathBuf) {
    let mut file: DistrictFile = toml::from_str(floodcmd::XINCHENG_TOML).unwrap();
    for p in &mut file.points {
        p.id = format!("{}-{run}", p.id);
        p.rain_gauge = p.rain_gauge.take().map(|g| format!("{g}-{run}"));
        for s in &mut p.sensors {
            s.id = format!("{}-{run}", s.id);
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("district.toml");
    std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
    let district = District::from_toml_str(&std::fs::read_to_string(&path).unwrap())
        .expect("the renamed district is valid");
    (Arc::new(district), path)
}

/// (metric, sensor, ms) → value, and the number of samples before collapsing.
async fn export(url: &str, run: &str) -> (BTreeMap<(String, String, i64), f64>, usize) {
    let text = match reqwest::Client::new()
        .get(format!("{url}/api/v1/export"))
        .query(&[("match[]", format!("{{point=~\".*-{run}\"}}"))])
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let mut out = BTreeMap::new();
    let mut raw = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = v["metric"]["__name__"].as_str().unwrap_or_default();
        let Some(sensor) = v["metric"]["sensor"].as_str() else {
            continue;
        };
        for (t, x) in v["timestamps"]
            .as_array()
            .unwrap()
            .iter()
            .zip(v["values"].as_array().unwrap())
        {
            raw += 1;
            out.insert(
                (name.to_string(), sensor.to_string(), t.as_i64().unwrap()),
                x.as_f64().unwrap(),
            );
        }
    }
    (out, raw)
}

/// Whether `group` has committed every partition of `topic` up to `ends`.
async fn committed_to(bus: &dyn Bus, group: &str, topic: &str, ends: &[u64]) -> bool {
    let done = bus.committed(group, topic).await.unwrap();
    ends.iter()
        .zip(&done)
        .all(|(end, c)| *end == 0 || c.unwrap_or(0) >= *end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_influx_sink_writes_every_point_once() {
    let influx = env("FLOODCMD_INFLUX");
    let run = unique("sk");
    let prefix = format!("{run}.sinkkill");
    let (bus, topics) = kafka_bus(&prefix).await;
    let (district, district_file) = renamed_district(&run, &std::env::temp_dir().join(&prefix));
    let cfg = settings_file(
        &prefix,
        "sink",
        Some(&district_file),
        &env("FLOODCMD_KAFKA"),
        1,
        &format!(
            "[sink_influx]\nurl = \"{influx}\"\norg = \"floodcmd\"\nbucket = \"tests\"\n\
             token = \"unused-by-victoria\"\nbatch_lines = 500\nflush_ms = 200\n"
        ),
    );
    let mut sink = spawn("sink-influx", cfg.clone(), "influx sink:").await;

    // Every sensor of the district, 120 readings each, one second apart an hour ago; posted
    // as 120 steps, one every 150 ms.
    let base = SystemClock.now_ms() - 3_600_000;
    let sensors: Vec<_> = district.sensors().collect();
    let steps: Vec<Vec<Reading>> = (0..120)
        .map(|k| {
            sensors
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    let ts = base + k as i64 * 1000 + j as i64;
                    Reading {
                        sensor: s.sensor.id.as_str().into(),
                        point: s.point.id.as_str().into(),
                        kind: s.sensor.kind,
                        ts_ms: ts,
                        // Quarters: exact in binary and in the server's decimal.
                        value: ((k * 7 + j) % 400) as f64 * 0.25,
                        seq: Some(k as u64),
                        received_ms: ts + 150,
                    }
                })
                .collect()
        })
        .collect();
    let expected: BTreeMap<(String, String, i64), f64> = steps
        .iter()
        .flatten()
        .map(|r| {
            let m = match r.kind {
                SensorKind::Depth => "depth_value",
                SensorKind::Rain => "rain_value",
            };
            ((m.to_string(), r.sensor.to_string(), r.ts_ms), r.value)
        })
        .collect();
    let produced = Arc::new(Mutex::new(0usize));
    let producing = tokio::spawn(produce_paced(
        bus.clone(),
        topics.readings(),
        Arc::new(steps),
        Duration::from_millis(150),
        produced.clone(),
    ));

    tokio::time::sleep(Duration::from_secs(7)).await;
    let committed_at_kill = bus
        .committed("sink-influx", &topics.readings())
        .await
        .unwrap();
    sink.kill();
    let at_kill = *produced.lock().unwrap();
    assert!(at_kill < 120, "the kill comes mid-stream");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ends_at_restart = bus.end_offsets(&topics.readings()).await.unwrap();
    let restarted = Instant::now();
    let _sink = spawn("sink-influx", cfg, "influx sink:").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !committed_to(&*bus, "sink-influx", &topics.readings(), &ends_at_restart).await {
        assert!(
            Instant::now() < deadline,
            "the restarted sink did not catch up within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = restarted.elapsed();
    producing.await.unwrap();
    let ends = bus.end_offsets(&topics.readings()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !committed_to(&*bus, "sink-influx", &topics.readings(), &ends).await {
        assert!(
            Instant::now() < deadline,
            "the sink never committed the end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let (got, raw) = loop {
        let (got, raw) = export(&influx, &run).await;
        if got.len() >= expected.len() || Instant::now() >= deadline {
            break (got, raw);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter_map(|(k, v)| got.get(k).filter(|g| *g != v).map(|g| (k, v, g)))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && wrong.is_empty(),
        "{} points sent, {} stored; missing {missing:?}; unexpected {extra:?}; wrong {wrong:?}",
        expected.len(),
        got.len()
    );
    assert_eq!(
        raw,
        got.len(),
        "the server holds one sample per series and timestamp"
    );
    let committed: u64 = committed_at_kill.iter().flatten().sum();
    eprintln!(
        "fault_stage_kills/sink-influx: killed at step {at_kill} of 120 with {committed} \
         readings committed; the restarted sink caught up with the {} readings on the topic at \
         its restart {:.2} s after the restart began. Points: {} sent, {} stored, 0 missing, \
         {raw} samples exported (one per series and timestamp).",
        ends_at_restart.iter().sum::<u64>(),
        caught_up.as_secs_f64(),
        expected.len(),
        got.len(),
    );
}
