//! The influx sink's sustained write rate into a real time-series server (victoria-metrics via
//! `scripts/victoria.sh`, or any InfluxDB v2 write API) with our schema: readings and point
//! states already encoded on the embedded bus, the real stage (decode, line protocol with the
//! district's tags, gzip, HTTP, commit behind the server's answer), timed from start until every
//! offset is committed. Beside it, in the same run, the server's own ceiling: the same lines,
//! encoded and gzipped beforehand, posted one request at a time as the sink does.

use crate::kafka::BenchError;
use crate::report::{Machine, Report};
use bytes::Bytes;
use floodcmd_bus::EmbeddedBus;
use floodcmd_model::bus::Bus;
use floodcmd_model::codec::encode;
use floodcmd_model::event::PointStatus;
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{DataState, District, Level, Reading, SensorKind};
use floodcmd_sink_influx::line::Schema;
use floodcmd_sink_influx::writer::gzip;
use floodcmd_sink_influx::{run_sink, InfluxTarget, InfluxWriter, SinkConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn other(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(e.to_string())
}

/// `readings` readings over the district's sensors, one per sensor per second of event time,
/// and a point state for every tenth, from `base` on.
fn records(district: &District, readings: u64, base: i64) -> (Vec<Reading>, Vec<PointStatus>) {
    let sensors: Vec<_> = district.sensors().collect();
    let n = sensors.len() as u64;
    let mut rs = Vec::with_capacity(readings as usize);
    let mut ss = Vec::with_capacity(readings as usize / 10);
    for i in 0..readings {
        let s = sensors[(i % n) as usize];
        let second = (i / n) as i64;
        let ts = base + second * 1000 + (i % n) as i64 % 1000;
        let value = ((i * 7 + i / n * 3) % 400) as f64 * 0.25;
        rs.push(Reading {
            sensor: s.sensor.id.as_str().into(),
            point: s.point.id.as_str().into(),
            kind: s.sensor.kind,
            ts_ms: ts,
            value,
            seq: Some(i / n),
            received_ms: ts + 200,
        });
        if i % 10 == 0 {
            let depth = s.sensor.kind == SensorKind::Depth;
            ss.push(PointStatus {
                point: s.point.id.as_str().into(),
                kind: s.point.kind,
                level: if value > 50.0 {
                    Level::Yellow
                } else {
                    Level::Normal
                },
                data_state: DataState::Fresh,
                depth_cm: depth.then_some(value),
                rise_cm_per_min: depth.then_some(0.25),
                rain_10m_mm: (!depth).then_some(value),
                rain_1h_mm: (!depth).then_some(value * 3.0),
                rain_3h_mm: None,
                rain_24h_mm: None,
                last_reading_ms: Some(ts),
                qc_flags: Vec::new(),
                next_level: None,
                minutes_to_next: None,
                flapping: false,
                as_of_ms: ts,
            });
        }
    }
    (rs, ss)
}

/// Samples the server keeps for these lines (one per field).
fn fields(body: &[u8]) -> u64 {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            // measurement,tags fields ts: the fields are the second space-separated part
            // (our tag values carry no spaces in the synthetic district).
            let f = l.split(|b| *b == b' ').nth(1).unwrap_or_default();
            f.iter().filter(|b| **b == b',').count() as u64 + 1
        })
        .sum()
}

/// The samples the server holds for one sensor's `depth_value` between two times.
async fn read_one(
    url: &str,
    sensor: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<std::collections::HashMap<i64, f64>, BenchError> {
    let text = reqwest::Client::new()
        .get(format!("{url}/api/v1/export"))
        .query(&[
            ("match[]", format!("depth_value{{sensor=\"{sensor}\"}}")),
            ("start", format!("{}", from_ms as f64 / 1000.0)),
            ("end", format!("{}", to_ms as f64 / 1000.0)),
        ])
        .send()
        .await
        .map_err(other)?
        .text()
        .await
        .map_err(other)?;
    let mut out = std::collections::HashMap::new();
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let (Some(ts), Some(vs)) = (v["timestamps"].as_array(), v["values"].as_array()) else {
            continue;
        };
        for (t, x) in ts.iter().zip(vs) {
            if let (Some(t), Some(x)) = (t.as_i64(), x.as_f64()) {
                out.insert(t, x);
            }
        }
    }
    Ok(out)
}

/// The `influx-sink` scenario: `readings` readings (and a state for every tenth) over a synthetic
/// district of `sensors` depth sensors, batches of `batch` lines, `in_flight` written at once.
pub async fn throughput(
    url: &str,
    readings: u64,
    sensors: usize,
    batch: usize,
    in_flight: usize,
    command: &str,
) -> Result<Report, BenchError> {
    let district =
        Arc::new(District::from_file(floodcmd_sim::synthetic_district(sensors)).map_err(other)?);
    let n_sensors = district.sensors().count() as u64;
    let target = InfluxTarget {
        url: url.to_string(),
        org: "floodcmd".into(),
        bucket: "bench".into(),
        token: String::new(),
        gzip: true,
        timeout: Duration::from_secs(60),
    };
    let writer = Arc::new(InfluxWriter::new(&target).map_err(other)?);
    // Recent event time (the server drops points too far ahead), a fresh range each run.
    let span_ms = (readings / n_sensors + 1) as i64 * 1000;
    let now = SystemClock.now_ms();
    let ceiling_base = now - 2 * span_ms - 600_000;
    let sink_base = now - span_ms - 300_000;

    // The ceiling: the same lines, encoded and compressed before the clock starts.
    let schema = Schema::new(&district);
    let (rs, ss) = records(&district, readings, ceiling_base);
    let mut bodies = Vec::new();
    let mut body = Vec::new();
    let mut lines = 0usize;
    let mut samples = 0u64;
    let mut push = |body: &mut Vec<u8>, lines: &mut usize, force: bool| {
        if *lines >= batch || (force && *lines > 0) {
            samples += fields(body);
            bodies.push(gzip(body));
            body.clear();
            *lines = 0;
        }
    };
    for (i, r) in rs.iter().enumerate() {
        schema.reading(r, &mut body).map_err(other)?;
        lines += 1;
        push(&mut body, &mut lines, false);
        if i % 10 == 0 {
            if let Some(s) = ss.get(i / 10) {
                schema.status(s, &mut body).map_err(other)?;
                lines += 1;
                push(&mut body, &mut lines, false);
            }
        }
    }
    push(&mut body, &mut lines, true);
    let total_lines = (rs.len() + ss.len()) as f64;
    let raw = Arc::new(
        InfluxWriter::new(&InfluxTarget {
            // Already compressed: the header stays, the body is sent as it is.
            gzip: true,
            ..target.clone()
        })
        .map_err(other)?,
    );
    let start = Instant::now();
    for b in &bodies {
        raw_write(&raw, b.clone()).await?;
    }
    let ceiling = total_lines / start.elapsed().as_secs_f64();
    drop((rs, ss, bodies));

    // The sink: the records on the bus, the stage from start to the last commit.
    let (rs, ss) = records(&district, readings, sink_base);
    let bus = EmbeddedBus::new((rs.len() / 4) * 2 + 1024);
    let topics = Topics::new(format!("bench{}", std::process::id()));
    for t in topics.all() {
        bus.ensure_topic(&t, 4).await.map_err(other)?;
    }
    let p = bus.producer();
    for r in &rs {
        p.send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await
            .map_err(other)?;
    }
    for s in &ss {
        p.send(&topics.status(), s.point.as_bytes(), encode(s), s.as_of_ms)
            .await
            .map_err(other)?;
    }
    let probe = rs[0].sensor.clone();
    let probe_points: Vec<(i64, f64)> = rs
        .iter()
        .filter(|r| r.sensor == probe)
        .map(|r| (r.ts_ms, r.value))
        .collect();
    drop((rs, ss));
    let inputs = [topics.readings(), topics.status()];
    let mut ends = Vec::new();
    for t in &inputs {
        ends.push(bus.end_offsets(t).await.map_err(other)?);
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut config = SinkConfig::new(topics.clone());
    config.batch_lines = batch;
    config.in_flight = in_flight;
    config.group = "bench".into();
    let start = Instant::now();
    let sink = tokio::spawn(run_sink(
        Arc::new(bus.clone()),
        district.clone(),
        Arc::new(SystemClock),
        writer,
        config,
        rx,
    ));
    'wait: loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        for (t, end) in inputs.iter().zip(&ends) {
            let done = bus.committed("bench", t).await.map_err(other)?;
            if done.iter().zip(end).any(|(c, e)| c.unwrap_or(0) < *e) {
                if sink.is_finished() {
                    return Err(BenchError::Other("the sink stopped early".into()));
                }
                continue 'wait;
            }
        }
        break;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = tx.send(true);
    sink.await.map_err(other)?.map_err(other)?;
    let rate = total_lines / elapsed;

    // Read one sensor back: every one of its points is there with its value (earlier runs
    // may have left points of their own in the same range).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = read_one(url, &probe, sink_base - 1000, sink_base + span_ms + 1000).await?;
    let back = probe_points
        .iter()
        .filter(|(t, v)| held.get(t) == Some(v))
        .count();
    let per_sensor = probe_points.len();

    let mut r = Report {
        scenario: "influx-sink".into(),
        command: command.into(),
        machine: Machine::here(),
        params: serde_json::json!({
            "server": url,
            "sensors": n_sensors,
            "readings": readings,
            "point_states": readings.div_ceil(10),
            "lines": total_lines,
            "samples (fields)": samples,
            "batch_lines": batch,
            "batches_in_flight": in_flight,
            "gzip": true,
            "precision": "ms",
            "input": "encoded on the embedded bus, decoded by the stage",
            "read back": format!("{probe}: {back} of {per_sensor} depth_value samples"),
        }),
        figures: Vec::new(),
    };
    r.figure(
        "server ceiling: pre-encoded gzipped batches, one request at a time",
        ceiling,
        "points/s",
    );
    r.figure_vs(
        "influx sink: bus → line protocol → gzip → server → commit",
        rate,
        "points/s",
        ceiling,
        "server ceiling",
    );
    r.figure(
        "influx sink, samples (one per field)",
        rate * samples as f64 / total_lines,
        "samples/s",
    );
    if back != per_sensor {
        return Err(BenchError::Other(format!(
            "read back {back} of {per_sensor} points of {probe}: the server does not hold what the sink wrote"
        )));
    }
    Ok(r)
}

/// A pre-compressed body through the same client path as the sink's (the writer would
/// compress it again, so the request is made here with the same URL and headers).
async fn raw_write(writer: &InfluxWriter, body: Bytes) -> Result<(), BenchError> {
    writer.write_compressed(body).await.map_err(other)
}
