//! Starting the pipeline for `floodcmd bench pipeline-embedded` and `pipeline-kafka`: every
//! stage in this process on the embedded bus, or each stage as its own `floodcmd <stage>`
//! process across real Kafka; then [`floodcmd_benches::pipeline::run`] drives it.

use anyhow::{Context, Result};
use floodcmd::pipeline::{Pipeline, PipelineOptions};
use floodcmd::stages;
use floodcmd_benches::pipeline::{self as bench, PipelineTarget, StageProcess};
use floodcmd_benches::report::Report;
use floodcmd_model::config::DistrictFile;
use floodcmd_model::settings::Settings;
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use floodcmd_sim::synthetic_district;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A synthetic district whose depth points raise at once: the bench measures the pipeline,
/// not the hold time a real district waits before raising.
fn bench_district(sensors: usize) -> DistrictFile {
    let mut file = synthetic_district(sensors);
    for t in [&mut file.defaults.low_point, &mut file.defaults.underpass] {
        for level in [&mut t.blue, &mut t.yellow, &mut t.orange, &mut t.red] {
            level.hold_s = 0;
        }
    }
    file
}

/// Every stage in this process on the embedded bus.
pub async fn embedded(
    sensors: usize,
    lateness_ms: i64,
    opts: bench::PipelineOptions,
    command: &str,
) -> Result<Report> {
    let district = Arc::new(
        District::from_file(bench_district(sensors))
            .map_err(|e| anyhow::anyhow!("synthetic:{sensors}: {e}"))?,
    );
    let mut popts = PipelineOptions::new(district.clone());
    popts.lateness_ms = Some(lateness_ms);
    let pipeline = Pipeline::start(popts).await?;
    let target = PipelineTarget {
        scenario: "pipeline-embedded".into(),
        dashboard: pipeline.dashboard_addr,
        ingest: pipeline.ingest_addr,
        device_token: pipeline.device_token.clone(),
        bus: Arc::new(pipeline.bus.clone()),
        topics: pipeline.topics.clone(),
        district,
        lateness_ms,
        stages: vec![StageProcess {
            name: "all stages and the load generator (one process)".into(),
            pid: "self".into(),
        }],
        consume_ceiling: None,
    };
    let result = bench::run(target, opts, command).await;
    pipeline.stop().await;
    Ok(result?)
}

/// The stage processes; killed when dropped, so that a failed bench leaves nothing behind.
struct Stages(Vec<(String, Child)>);

impl Drop for Stages {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("picking a free port")?;
    Ok(l.local_addr()?)
}

async fn wait_healthy(addr: SocketAddr, what: &str, stages: &mut Stages) -> Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = http.get(format!("http://{addr}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        for (name, c) in &mut stages.0 {
            if let Some(status) = c.try_wait()? {
                anyhow::bail!("stage {name} exited with {status} before {what} was up");
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("{what} at {addr} not healthy within 90 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each stage its own process across the Kafka at `kafka`, beside the raw consume ceiling of
/// the same broker measured first.
pub async fn kafka(
    kafka: &str,
    sensors: usize,
    lateness_ms: i64,
    ceiling_records: u64,
    opts: bench::PipelineOptions,
    command: &str,
) -> Result<Report> {
    let k = kafka.to_string();
    let cmd = command.to_string();
    let (_, ceiling) = tokio::task::spawn_blocking(move || {
        floodcmd_benches::kafka::ceiling(&k, ceiling_records, &cmd)
    })
    .await??;
    tracing::info!(
        consume_per_s = ceiling.consume_per_s,
        "raw Kafka consume ceiling"
    );

    let dir = std::env::temp_dir().join(format!("floodcmd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let district_file = bench_district(sensors);
    let district = Arc::new(
        District::from_file(district_file.clone())
            .map_err(|e| anyhow::anyhow!("synthetic:{sensors}: {e}"))?,
    );
    let district_path = dir.join("district.toml");
    std::fs::write(&district_path, toml::to_string(&district_file)?)?;
    let (ingest, dashboard) = (free_port()?, free_port()?);
    let prefix = format!("bench{}", std::process::id());
    let settings_text = format!(
        r#"[district]
file = "{district}"
[bus]
kind = "kafka"
prefix = "{prefix}"
partitions = 4
bootstrap = "{kafka}"
replication = 1
[ingest]
listen = "{ingest}"
devices_file = ""
[stream]
workers = 2
lateness_s = {lateness_s}
[alerts]
drill = true
[dashboard]
listen = "{dashboard}"
anonymous = true
cameras_dir = ""
"#,
        district = district_path.display(),
        lateness_s = (lateness_ms.max(0) as u64).div_ceil(1000),
    );
    let settings_path = dir.join("floodcmd.toml");
    std::fs::write(&settings_path, &settings_text)?;
    let settings = Settings::load(&settings_text, std::env::vars())
        .map_err(|e| anyhow::anyhow!("bench settings: {e}"))?;

    let exe = std::env::current_exe().context("locating the floodcmd binary")?;
    let mut stage_procs = Stages(Vec::new());
    for stage in ["ingest", "stream", "alerts", "dashboard"] {
        let log = std::fs::File::create(dir.join(format!("{stage}.log")))?;
        let child = Command::new(&exe)
            .arg(stage)
            .arg("--config")
            .arg(&settings_path)
            .env("FLOODCMD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting floodcmd {stage}"))?;
        stage_procs.0.push((stage.to_string(), child));
    }
    wait_healthy(ingest, "the ingest gateway", &mut stage_procs).await?;
    wait_healthy(dashboard, "the command wall", &mut stage_procs).await?;
    let topics = Topics::new(prefix);
    let connected = stages::connect_bus(&settings.bus, Some(kafka), &topics).await?;
    let target = PipelineTarget {
        scenario: "pipeline-kafka".into(),
        dashboard,
        ingest,
        device_token: String::new(),
        bus: connected.bus,
        topics,
        district,
        lateness_ms: (lateness_ms.max(0) as u64).div_ceil(1000) as i64 * 1000,
        stages: stage_procs
            .0
            .iter()
            .map(|(name, c)| StageProcess {
                name: name.clone(),
                pid: c.id().to_string(),
            })
            .chain(std::iter::once(StageProcess {
                name: "load generator and watchers (bench process)".into(),
                pid: "self".into(),
            }))
            .collect(),
        consume_ceiling: Some(ceiling.consume_per_s),
    };
    let result = bench::run(target, opts, command).await;
    drop(stage_procs);
    eprintln!("stage settings and logs: {}", dir.display());
    Ok(result?)
}

/// `floodcmd bench replay`: a synthetic archive of `sensors` sensors (a tenth of them rain
/// gauges) × `hours` h × one reading a minute, written once, then replayed at max speed with
/// `workers` workers; loading the archive onto the bus and the stream stage timed apart.
pub async fn replay(sensors: usize, hours: u64, workers: usize, command: &str) -> Result<Report> {
    use floodcmd_archive::{ArchiveHeader, ArchiveReader, ArchiveWriter};
    use floodcmd_model::{Reading, SensorKind};
    let depth_points = (sensors * 10 / 11).max(1);
    let file = synthetic_district(depth_points);
    let district_toml = toml::to_string(&file)?;
    let district = District::from_file(file).map_err(|e| anyhow::anyhow!("synthetic: {e}"))?;
    let mut ids: Vec<(String, String, SensorKind)> = district
        .sensors()
        .map(|s| (s.sensor.id.clone(), s.point.id.clone(), s.sensor.kind))
        .collect();
    // The archive's order within one minute.
    ids.sort_by(|a, b| a.0.cmp(&b.0));
    let dir = std::env::temp_dir().join(format!("floodcmd-bench-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("synthetic.ndjson.gz");
    let t0: i64 = 1_783_000_000_000;
    let write_started = Instant::now();
    let header = ArchiveHeader::new(
        format!("synthetic: {} sensors × {hours} h × 1/min", ids.len()),
        district.info.name.clone(),
        district_toml,
        t0,
    );
    let mut w = ArchiveWriter::create(&path, header)?;
    let mut progress = floodcmd::progress::Progress::new("writing the synthetic archive");
    let minutes = hours * 60;
    for m in 0..minutes {
        let ts = t0 + m as i64 * 60_000;
        for (i, (sensor, point, kind)) in ids.iter().enumerate() {
            let value = match kind {
                // A slow tide, each point at its own phase: some cross blue and back.
                SensorKind::Depth => {
                    let phase = ((m as usize + i * 7) % 240) as f64 / 240.0;
                    (phase * std::f64::consts::TAU).sin().max(0.0) * 12.0
                }
                // Rain in the middle of the day.
                SensorKind::Rain => {
                    if (600..900).contains(&(m % 1440)) {
                        0.5
                    } else {
                        0.0
                    }
                }
            };
            w.write(&Reading {
                sensor: sensor.as_str().into(),
                point: point.as_str().into(),
                kind: *kind,
                ts_ms: ts,
                value: (value * 10.0).round() / 10.0,
                seq: Some(m),
                received_ms: ts,
            })?;
        }
        progress.update(m + 1, Some(minutes));
    }
    progress.finish();
    w.finish()?;
    let write_s = write_started.elapsed().as_secs_f64();

    let (header, reader) = ArchiveReader::open(&path)?;
    let district = Arc::new(header.district()?);
    let mut progress = floodcmd::progress::Progress::new("replaying");
    let outcome = floodcmd::replay::replay(
        district.clone(),
        reader,
        header.readings,
        &floodcmd::replay::ReplayOptions {
            workers,
            ..Default::default()
        },
        &mut |d, t| progress.update(d, t),
    )
    .await?;
    progress.finish();
    let _ = std::fs::remove_dir_all(&dir);
    let mut r = Report {
        scenario: "replay".into(),
        command: command.into(),
        machine: floodcmd_benches::report::Machine::here(),
        params: serde_json::json!({
            "sensors": ids.len(), "hours": hours, "readings": outcome.readings,
            "workers": workers, "archive_bytes": std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
        }),
        figures: Vec::new(),
    };
    let rest_s = outcome.total_s - outcome.stream_s;
    r.figure("readings", outcome.readings as f64, "readings");
    r.figure("writing the archive", write_s, "s");
    r.figure("replay, archive to report", outcome.total_s, "s");
    r.figure(
        "of which the stream stage (the archive read and fed alongside)",
        outcome.stream_s,
        "s",
    );
    r.figure(
        "of which the rest (opening, the incident book over the transitions)",
        rest_s,
        "s",
    );
    r.figure("statuses published", outcome.status_count as f64, "");
    r.figure(
        "replay rate, archive to report",
        outcome.readings as f64 / outcome.total_s,
        "readings/s",
    );
    r.figure(
        "stream stage rate",
        outcome.readings as f64 / outcome.stream_s,
        "readings/s",
    );
    r.figure("alert transitions", outcome.transitions.len() as f64, "");
    r.figure("peak RSS", bench::peak_rss_mib_of("self"), "MiB");
    Ok(r)
}
