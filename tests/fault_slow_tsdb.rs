//! Fault test 4 (issue #10), the slow time-series server: the influx sink writes to
//! victoria-metrics through a relay in this test that first holds every byte the sink sends
//! (a server that takes nothing) and then lets each chunk through only after a delay (a slow
//! one). Across real Kafka, with readings and point states produced faster than that:
//!
//! - while the server takes nothing, the sink holds at most `in_flight + 1` batches (its
//!   `floodcmd_sink_influx_pending_records` gauge), commits nothing, and the backlog waits in
//!   Kafka: consumption simply lags;
//! - the other consumers of the same topics are unaffected: the command wall (the real
//!   dashboard stage, its own group on `status`) shows every point's newest state, and a
//!   consumer group standing in for the stream stage reads every reading, both while the sink
//!   is stalled;
//! - once the server takes writes again, slowly, the sink catches up and the server holds
//!   every point sent, with its value: nothing lost (a batch written twice would count once,
//!   as each line keeps its series and timestamp).
//!
//! A file of its own: the memory figure is this process's resident set.

use floodcmd::stages::{self, StageContext};
use floodcmd_model::bus::{Assignment, Bus, Outgoing};
use floodcmd_model::codec::encode;
use floodcmd_model::config::DistrictFile;
use floodcmd_model::event::PointStatus;
use floodcmd_model::settings::{BusKind, BusSettings, DashboardSettings, SinkInfluxSettings};
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{DataState, District, Level, Reading, SensorKind};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// What the server holds for this run's series (`/api/v1/export`).
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
        let id = m["sensor"]
            .as_str()
            .or(m["point"].as_str())
            .unwrap_or_default()
            .to_string();
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

/// A TCP relay to the server that holds each chunk the sink sends for `delay_ms` before
/// passing it on; `i64::MAX` holds everything until the delay is lowered. The server's
/// answers pass at once. Protocol-blind, so the sink's own HTTP client is what is slowed.
async fn relay(upstream: String, delay_ms: Arc<AtomicI64>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, delay_ms) = (upstream.clone(), delay_ms.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let back = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    loop {
                        let d = delay_ms.load(Ordering::Relaxed);
                        if d == i64::MAX {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        tokio::time::sleep(Duration::from_millis(d as u64)).await;
                        break;
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                back.abort();
            });
        }
    });
    addr
}

/// A metric of this process as its `/metrics` page (served by the wall) shows it, summed
/// over labels.
async fn metric(http: &reqwest::Client, wall: std::net::SocketAddr, name: &str) -> f64 {
    let text = http
        .get(format!("http://{wall}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Records of `topics` a group has committed, and records on them.
async fn committed_and_end(bus: &Arc<dyn Bus>, group: &str, topics: &[String]) -> (u64, u64) {
    let (mut done, mut end) = (0, 0);
    for t in topics {
        end += bus.end_offsets(t).await.unwrap().iter().sum::<u64>();
        done += bus
            .committed(group, t)
            .await
            .unwrap()
            .iter()
            .map(|c| c.unwrap_or(0))
            .sum::<u64>();
    }
    (done, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_time_series_server_lags_the_sink_only_in_bounded_memory_and_loses_nothing() {
    let influx = env("FLOODCMD_INFLUX");
    let run = format!(
        "slow{}x{:x}",
        std::process::id(),
        SystemClock.now_ms() % 0xffff_ffff
    );
    let district = district(&run);
    let topics = Topics::new(format!("t{run}"));
    let bus_settings = BusSettings {
        kind: BusKind::Kafka,
        bootstrap: env("FLOODCMD_KAFKA"),
        partitions: 4,
        ..BusSettings::default()
    };
    let bus = stages::connect_bus(&bus_settings, None, &topics)
        .await
        .unwrap()
        .bus;
    let (stop, shutdown) = watch::channel(false);
    let ctx = StageContext {
        bus: bus.clone(),
        district: district.clone(),
        clock: Arc::new(SystemClock),
        topics: topics.clone(),
        shutdown,
    };

    // The server takes nothing until told otherwise.
    let delay = Arc::new(AtomicI64::new(i64::MAX));
    let upstream = influx
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let relay_addr = relay(upstream, delay.clone()).await;
    let batch_lines = 500;
    let sink_settings = SinkInfluxSettings {
        url: format!("http://{relay_addr}"),
        bucket: "tests".into(),
        batch_lines,
        flush_ms: 200,
        group: format!("sink-{run}"),
        ..SinkInfluxSettings::default()
    };
    let _sink = stages::start_sink_influx(&ctx, &sink_settings).unwrap();
    let dashboard = DashboardSettings {
        group: format!("wall-{run}"),
        ..DashboardSettings::default()
    };
    let (wall, _) = stages::start_dashboard(&ctx, ([127, 0, 0, 1], 0).into(), &dashboard)
        .await
        .unwrap();
    // The stream stage's place: its own group on `readings`, reading as fast as it can.
    let mut other = bus
        .consumer(
            &format!("stream-{run}"),
            &topics.readings(),
            Assignment::All,
        )
        .await
        .unwrap();

    // Readings and point states, far more than three batches.
    let base = SystemClock.now_ms() - 1_800_000;
    let mut expected = Samples::new();
    let mut readings = Vec::new();
    for k in 0..60 {
        for (j, s) in district.sensors().enumerate() {
            let ts = base + k * 1000 + j as i64;
            let value = ((k as usize * 3 + j) % 300) as f64 * 0.5;
            readings.push(Reading {
                sensor: s.sensor.id.as_str().into(),
                point: s.point.id.as_str().into(),
                kind: s.sensor.kind,
                ts_ms: ts,
                value,
                seq: Some(k as u64),
                received_ms: ts + 100,
            });
            let m = match s.sensor.kind {
                SensorKind::Depth => "depth_value",
                SensorKind::Rain => "rain_value",
            };
            expected.insert((m.into(), s.sensor.id.clone(), ts), value);
        }
    }
    let mut statuses = Vec::new();
    let mut newest_depth = BTreeMap::new();
    for k in 0..10 {
        for (j, p) in district.points.iter().enumerate() {
            let depth = (k * 100 + j) as f64 * 0.25;
            let s = PointStatus {
                point: p.id.as_str().into(),
                kind: p.kind,
                level: Level::Blue,
                data_state: DataState::Fresh,
                depth_cm: Some(depth),
                rise_cm_per_min: None,
                rain_10m_mm: None,
                rain_1h_mm: None,
                rain_3h_mm: None,
                rain_24h_mm: None,
                last_reading_ms: Some(base + k as i64 * 1000),
                qc_flags: Vec::new(),
                next_level: None,
                minutes_to_next: None,
                flapping: false,
                as_of_ms: base + 100_000 + k as i64 * 1000 + j as i64,
            };
            expected.insert(("status_level".into(), p.id.clone(), s.as_of_ms), 1.0);
            newest_depth.insert(p.id.clone(), depth);
            statuses.push(s);
        }
    }
    let total = (readings.len() + statuses.len()) as u64;

    let rss_before = rss_kib("VmRSS:");
    let peak_rss = Arc::new(AtomicU64::new(rss_before));
    let peak_pending = Arc::new(AtomicI64::new(0));
    let http = reqwest::Client::new();
    let sampler = {
        let (peak_rss, peak_pending, http) = (peak_rss.clone(), peak_pending.clone(), http.clone());
        tokio::spawn(async move {
            loop {
                peak_rss.fetch_max(rss_kib("VmRSS:"), Ordering::Relaxed);
                let pending = metric(&http, wall, "floodcmd_sink_influx_pending_records").await;
                peak_pending.fetch_max(pending as i64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let producer = bus.producer();
    let out = |key: &str, payload: bytes::Bytes, ts: i64| Outgoing {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        payload,
        timestamp_ms: ts,
        key_hash: None,
    };
    let sent = producer
        .send_batch(
            &topics.readings(),
            readings
                .iter()
                .map(|r| out(&r.sensor, encode(r), r.ts_ms))
                .collect(),
        )
        .await;
    assert!(sent.iter().all(Result::is_ok));
    let sent = producer
        .send_batch(
            &topics.status(),
            statuses
                .iter()
                .map(|s| out(&s.point, encode(s), s.as_of_ms))
                .collect(),
        )
        .await;
    assert!(sent.iter().all(Result::is_ok));
    // The bus packs statuses (`floodcmd_bus::pack`): the records on the topics are the
    // readings and the packs, each pack at an offset of its own.
    let packs: std::collections::HashSet<(u32, u64)> = sent
        .iter()
        .flatten()
        .map(|d| (d.partition, d.offset))
        .collect();
    assert!(packs.len() < statuses.len(), "statuses not packed");
    let kafka_records = (readings.len() + packs.len()) as u64;

    // Stalled: the others get everything meanwhile.
    let t0 = Instant::now();
    let mut other_got = 0usize;
    while other_got < readings.len() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the other consumer of readings read {other_got} of {}",
            readings.len()
        );
        other_got += other
            .poll(1000, Duration::from_millis(200))
            .await
            .unwrap()
            .len();
    }
    loop {
        let points: serde_json::Value = http
            .get(format!("http://{wall}/api/points"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let shown = points
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["id"]
                    .as_str()
                    .and_then(|id| newest_depth.get(id))
                    .is_some_and(|d| p["depth_cm"].as_f64() == Some(*d))
            })
            .count();
        if shown == newest_depth.len() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the wall shows the newest state of {shown} of {} points",
            newest_depth.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let others_s = t0.elapsed().as_secs_f64();
    // Give the sink the time to fill everything it may hold, then look.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let inputs = [topics.readings(), topics.status()];
    let sink_group = format!("sink-{run}");
    let (done, end) = committed_and_end(&bus, &sink_group, &inputs).await;
    assert_eq!(end, kafka_records);
    assert_eq!(done, 0, "the sink committed records the server never took");
    let stalled_pending = metric(&http, wall, "floodcmd_sink_influx_pending_records").await as u64;
    assert!(
        stalled_pending > 0,
        "the sink read nothing while stalled: the test did not stall it"
    );
    let stalled_rss = rss_kib("VmRSS:");

    // Slow, not stalled: each chunk the sink sends waits a second.
    delay.store(1000, Ordering::Relaxed);
    let t1 = Instant::now();
    let mut lag_samples = Vec::new();
    loop {
        let (done, end) = committed_and_end(&bus, &sink_group, &inputs).await;
        lag_samples.push(end - done);
        if done == end {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(180),
            "the sink committed {done} of {end} records after the server came back slowly"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let catch_up_s = t1.elapsed().as_secs_f64();
    sampler.abort();
    // The server acknowledged every batch; what it stored becomes searchable within a second
    // or so, so read back until it is all there (or the limit says something is lost).
    let read_from = Instant::now();
    let got = loop {
        let got = export(&influx, &run).await;
        if expected.keys().all(|k| got.contains_key(k))
            || read_from.elapsed() > Duration::from_secs(30)
        {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| k.0 == "depth_value" || k.0 == "rain_value" || k.0 == "status_level")
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} points missing, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        wrong.is_empty(),
        "values differ: {:?}",
        &wrong[..wrong.len().min(5)]
    );
    assert!(
        extra.is_empty(),
        "points nobody sent: {:?}",
        &extra[..extra.len().min(5)]
    );

    let peak_pending = peak_pending.load(Ordering::Relaxed);
    // A poll holds more than the room asked for only when its first pack alone does.
    let bound = (3 * batch_lines + floodcmd_bus::pack::MAX_ITEMS - 1) as i64;
    assert!(
        peak_pending <= bound,
        "the sink's pending gauge read {peak_pending} records, more than in_flight + 1 = 3 batches of {batch_lines} and a pack"
    );
    let peak_rss = peak_rss.load(Ordering::Relaxed);
    eprintln!(
        "fault_slow_tsdb: {total} records ({} readings, {} states); stalled: sink committed 0, \
         held {stalled_pending} (peak {peak_pending}, bound {bound}), Kafka lag {end}; the wall \
         and the other group had everything after {others_s:.1} s; slow (1 s a chunk): \
         caught up in {catch_up_s:.1} s, max lag sampled {}; server holds {} of {} points, \
         0 missing, 0 wrong; RSS {rss_before} KiB before, {stalled_rss} KiB stalled, peak \
         {peak_rss} KiB (+{} KiB), VmHWM {} KiB",
        readings.len(),
        statuses.len(),
        lag_samples.iter().max().unwrap(),
        expected.keys().filter(|k| got.contains_key(*k)).count(),
        expected.len(),
        peak_rss.saturating_sub(rss_before),
        rss_kib("VmHWM:"),
    );
    let _ = stop.send(true);
}
