//! The whole pipeline under open-loop load (`floodcmd bench pipeline-embedded` and
//! `pipeline-kafka`): readings through the HTTP gateway at a fixed rate, and the time from a
//! reading's creation to (a) the alert transition it causes on the bus, (b) the point status on
//! the bus and (c) the websocket delta a command-wall client receives; CPU time per reading and
//! peak resident memory per stage.
//!
//! The caller starts the pipeline (in process on the embedded bus, or as separate stage
//! processes across real Kafka) and hands over where it listens and the stages' pids; this
//! crate cannot depend on the `floodcmd` binary crate, which depends on it.
//!
//! **Marker.** As in [`crate::fanout`], a reading's event time is its scheduled creation time
//! (Unix ms), so every latency is a wall-clock difference against the reading's own stamp.
//! Every `alert_every`-th depth sensor follows a slow wave across the blue threshold (the
//! caller gives the district a zero hold time), so alert transitions are raised and cleared
//! all through the run; an [`AlertTransition`] names the event time of the reading that caused
//! it.
//!
//! **Open loop.** Readings are due on a schedule whether or not the gateway has answered, and
//! latency counts from the schedule: queueing anywhere, the load generator included, shows up
//! as latency rather than as a lower rate.
//!
//! **Highest sustained rate.** With `search`, steps of increasing rate run one after another;
//! a step is sustained when the gateway took at least 95 % of the readings asked for and the
//! stream stage's lag (creation → status on the bus) at the end of the step is not growing
//! past its start by more than a second and a half. The report names the highest step passed.

use crate::fanout::{
    client, feed, histogram, load_1m, ms, unix_us, ClientRuntime, FanoutError, PointIndex, Role,
    Schedule, WARMUP_S,
};
use crate::machine_cpu::process_cpu_s;
use crate::report::{Machine, Report};
use floodcmd_model::bus::{Assignment, Bus};
use floodcmd_model::codec::decode;
use floodcmd_model::event::{AlertTransition, PointStatus};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, SensorKind};
use hdrhistogram::Histogram;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One stage process to account CPU and memory to.
#[derive(Clone, Debug)]
pub struct StageProcess {
    /// Stage name (`ingest`, `stream`, ...; `all` when every stage shares this process).
    pub name: String,
    /// Its pid, or `self`.
    pub pid: String,
}

/// The running pipeline the benchmark drives.
pub struct PipelineTarget {
    /// Scenario name for the report.
    pub scenario: String,
    /// The command wall.
    pub dashboard: SocketAddr,
    /// The ingest gateway.
    pub ingest: SocketAddr,
    /// A bearer token the gateway accepts for every sensor (ignored on open access).
    pub device_token: String,
    /// The pipeline's bus, to watch `alerts` and `status`.
    pub bus: Arc<dyn Bus>,
    /// Its topics.
    pub topics: Topics,
    /// The district it runs (depth points with zero hold time).
    pub district: Arc<District>,
    /// The stream stage's lateness budget, ms.
    pub lateness_ms: i64,
    /// Where the stages run.
    pub stages: Vec<StageProcess>,
    /// The raw Kafka consume ceiling measured in the same run, records/s, when there is one.
    pub consume_ceiling: Option<f64>,
}

/// The load.
#[derive(Clone, Copy, Debug)]
pub struct PipelineOptions {
    /// Readings per second (the first step's, with `search`).
    pub rate: f64,
    /// Seconds of feeding per step.
    pub duration_s: u64,
    /// Websocket clients on the wall.
    pub clients: usize,
    /// One depth sensor in this many crosses the blue threshold back and forth.
    pub alert_every: usize,
    /// Step the rate up by this factor until a step is not sustained (`None`: one step).
    pub search: Option<Search>,
}

/// The highest-sustained-rate search.
#[derive(Clone, Copy, Debug)]
pub struct Search {
    /// Each step's rate is the previous one's times this.
    pub factor: f64,
    /// Stop here even when still sustained.
    pub max_rate: f64,
}

/// What one step measured.
struct Step {
    rate: f64,
    sent: u64,
    accepted: u64,
    failed: u64,
    feed_s: f64,
    alert: Histogram<u64>,
    status: Histogram<u64>,
    delta: Histogram<u64>,
    transitions: u64,
    lag_start_ms: f64,
    lag_end_ms: f64,
    cpu_s: Vec<f64>,
    resyncs: u64,
    /// Wall clients whose connection ended before the step did, or whose task failed.
    lost_clients: usize,
    load: f64,
}

impl Step {
    fn achieved(&self) -> f64 {
        self.accepted as f64 / self.feed_s.max(1e-9)
    }
    fn sustained(&self) -> bool {
        // The feeder sends every reading of the schedule, late if it must: a step that took
        // longer than asked did not keep the rate.
        self.accepted as f64 >= 0.95 * self.sent as f64
            && self.achieved() >= 0.95 * self.rate
            && self.lag_end_ms <= self.lag_start_ms + 1500.0
    }
}

/// What a watcher of a bus topic measured.
struct Watched {
    latency: Histogram<u64>,
    count: u64,
    /// Records read, measured or not.
    read: u64,
    /// (receive Unix ms, lag ms) of measured records.
    lag: Vec<(f64, f64)>,
}

/// Read `topic` from its current end until `stop`; `mark` gives a record's reading stamp (Unix
/// ms) when the record is one to measure.
async fn watch<F>(
    bus: Arc<dyn Bus>,
    topic: String,
    group: String,
    stop: Arc<AtomicBool>,
    mark: F,
) -> Result<Watched, FanoutError>
where
    F: Fn(&[u8]) -> Option<i64> + Send + 'static,
{
    let mut w = Watched {
        latency: histogram()?,
        count: 0,
        read: 0,
        lag: Vec::new(),
    };
    // From the topic's end as the step starts, at explicit positions, committing nothing: a
    // group position would pin the embedded bus's history from then on, and the watchers of
    // finished steps would fill it until the stages waited on them.
    let ends = bus.end_offsets(&topic).await?;
    let positions = ends
        .into_iter()
        .enumerate()
        .map(|(p, o)| (p as u32, Some(o)))
        .collect();
    let mut consumer = bus
        .consumer(&group, &topic, Assignment::Positions(positions))
        .await?;
    while !stop.load(Ordering::Relaxed) {
        let records = consumer.poll(4096, Duration::from_millis(20)).await?;
        let now_us = unix_us();
        w.read += records.len() as u64;
        for rec in &records {
            if let Some(ts) = mark(&rec.payload) {
                let lat = now_us.saturating_sub(ts.max(0) as u64 * 1000).max(1);
                let _ = w.latency.record(lat.min(3_600_000_000));
                w.count += 1;
                w.lag.push((now_us as f64 / 1000.0, lat as f64 / 1000.0));
            }
        }
    }
    Ok(w)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn step(
    target: &PipelineTarget,
    opts: &PipelineOptions,
    rate: f64,
    index: usize,
) -> Result<Step, FanoutError> {
    let sensors: Vec<(String, String)> = target
        .district
        .sensors()
        .filter(|s| s.sensor.kind == SensorKind::Depth)
        .map(|s| (s.sensor.id.clone(), s.point.id.clone()))
        .collect();
    if sensors.is_empty() {
        return Err(FanoutError::NoSensors);
    }
    let n = sensors.len();
    let points: PointIndex = sensors
        .iter()
        .enumerate()
        .map(|(i, (_, p))| (p.clone(), i))
        .collect();
    let alerting: HashSet<String> = sensors
        .iter()
        .enumerate()
        .filter(|(i, _)| opts.alert_every > 0 && i.is_multiple_of(opts.alert_every))
        .map(|(_, (_, p))| p.clone())
        .collect();
    let start_ms = unix_us() as f64 / 1000.0 + 2000.0 + opts.clients as f64 * 5.0;
    let schedule = Arc::new(Schedule {
        start_ms,
        rate,
        sensors: sensors.iter().map(|(s, _)| s.clone()).collect(),
        points,
        period_ms: n as f64 * 1000.0 / rate,
        measure_from_ms: (start_ms + WARMUP_S as f64 * 1000.0) as i64,
        alert_every: opts.alert_every,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("ws://{}/ws", target.dashboard);
    let clients_rt = ClientRuntime::start()?;
    let mut clients = Vec::with_capacity(opts.clients);
    // Measured from the start: the schedule's estimate leaves time for a few clients'
    // snapshots.
    let (_keep, schedule_rx) = tokio::sync::watch::channel(Some(schedule.clone()));
    let snapshotted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..opts.clients {
        clients.push(
            client(
                clients_rt.handle(),
                url.clone(),
                true,
                schedule_rx.clone(),
                Role::Measure(None),
                snapshotted.clone(),
                stop.clone(),
                i,
            )
            .await?,
        );
    }
    let tag = format!("{}-{index}", std::process::id());
    let from = schedule.measure_from_ms;
    let status_points = schedule.points.clone();
    let status = tokio::spawn(watch(
        target.bus.clone(),
        target.topics.status(),
        format!("bench-status-{tag}"),
        stop.clone(),
        move |payload| {
            let s = decode::<PointStatus>(payload).ok()?;
            let ts = s.last_reading_ms?;
            (ts >= from && status_points.contains_key(s.point.as_str())).then_some(ts)
        },
    ));
    let alerts = tokio::spawn(watch(
        target.bus.clone(),
        target.topics.alerts(),
        format!("bench-alerts-{tag}"),
        stop.clone(),
        move |payload| {
            let a = decode::<AlertTransition>(payload).ok()?;
            (a.event_ms >= from && alerting.contains(&a.point)).then_some(a.event_ms)
        },
    ));
    let wait = (schedule.start_ms - unix_us() as f64 / 1000.0).max(0.0);
    tokio::time::sleep(Duration::from_millis(wait as u64)).await;

    let cpu0: Vec<f64> = target
        .stages
        .iter()
        .map(|s| process_cpu_s(&s.pid))
        .collect();
    let t0 = Instant::now();
    let (sent, accepted, failed) = feed(
        format!("http://{}/v1/readings", target.ingest),
        target.device_token.clone(),
        schedule.clone(),
        opts.duration_s,
    )
    .await?;
    let feed_s = t0.elapsed().as_secs_f64();
    let load = load_1m();
    // The last readings come out only once the stream stage's watermark passes them.
    tokio::time::sleep(Duration::from_millis(
        target.lateness_ms.max(0) as u64 + 4_000,
    ))
    .await;
    let cpu_s: Vec<f64> = target
        .stages
        .iter()
        .zip(&cpu0)
        .map(|(s, c0)| process_cpu_s(&s.pid) - c0)
        .collect();
    stop.store(true, Ordering::Relaxed);

    let mut delta = histogram()?;
    let (mut snapshots, mut lost_clients) = (0, 0);
    for h in clients {
        let Ok(Ok(r)) = h.await else {
            lost_clients += 1;
            continue;
        };
        // The delta carrying the reading's status: what this bench has always reported.
        if let Some(a) = &r.status {
            delta
                .add(&a.latency)
                .map_err(|e| FanoutError::Histogram(e.to_string()))?;
        }
        snapshots += r.snapshots;
    }
    let join = |e: tokio::task::JoinError| FanoutError::Histogram(format!("watcher: {e}"));
    let status = status.await.map_err(join)??;
    let alerts = alerts.await.map_err(join)??;
    tracing::info!(
        status_read = status.read,
        status_measured = status.count,
        alerts_read = alerts.read,
        alerts_measured = alerts.count,
        "pipeline bench watchers"
    );

    // Lag at the start and at the end of the measured feed, from the status watcher.
    let feed_end_ms = schedule.start_ms + opts.duration_s as f64 * 1000.0;
    let span = feed_end_ms - schedule.measure_from_ms as f64;
    let third = |lo: f64, hi: f64| {
        median(
            status
                .lag
                .iter()
                .filter(|(t, _)| *t >= lo && *t < hi)
                .map(|(_, l)| *l)
                .collect(),
        )
    };
    let m0 = schedule.measure_from_ms as f64;
    Ok(Step {
        rate,
        sent,
        accepted: accepted.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        feed_s,
        alert: alerts.latency,
        status: status.latency,
        delta,
        transitions: alerts.count,
        lag_start_ms: third(m0, m0 + span / 3.0),
        lag_end_ms: third(feed_end_ms - span / 3.0, feed_end_ms),
        cpu_s,
        resyncs: snapshots.saturating_sub(opts.clients as u64),
        lost_clients,
        load,
    })
}

/// Peak resident memory of process `pid` (or `self`), MiB (Linux `VmHWM`).
pub fn peak_rss_mib_of(pid: &str) -> f64 {
    proc_status_mib(pid, "VmHWM:")
}

/// A memory line of `/proc/<pid>/status` (`VmHWM:` the peak, `VmRSS:` now), MiB; 0 when
/// unreadable.
pub fn proc_status_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .map(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
        })
        .flatten()
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Run the scenario.
pub async fn run(
    target: PipelineTarget,
    opts: PipelineOptions,
    command: &str,
) -> Result<Report, FanoutError> {
    let load_before = load_1m();
    let mut steps = Vec::new();
    let mut rate = opts.rate;
    loop {
        let s = step(&target, &opts, rate, steps.len()).await?;
        let sustained = s.sustained();
        tracing::info!(
            rate,
            achieved = s.achieved(),
            lag_start_ms = s.lag_start_ms,
            lag_end_ms = s.lag_end_ms,
            sustained,
            "pipeline bench step"
        );
        steps.push(s);
        match opts.search {
            Some(search) if sustained && rate * search.factor <= search.max_rate => {
                rate *= search.factor;
            }
            _ => break,
        }
    }

    let mut report = Report {
        scenario: target.scenario.clone(),
        command: command.into(),
        machine: Machine::here(),
        params: serde_json::json!({
            "rate_per_s": opts.rate,
            "duration_s_per_step": opts.duration_s,
            "clients": opts.clients,
            "alert_every": opts.alert_every,
            "search": opts.search.map(|s| serde_json::json!({"factor": s.factor, "max_rate": s.max_rate})),
            "depth_sensors": target.district.sensors().filter(|s| s.sensor.kind == SensorKind::Depth).count(),
            "lateness_ms": target.lateness_ms,
            "stages": target.stages.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            "warmup_s": WARMUP_S,
            "ingest": "HTTP NDJSON to the gateway, 100 batches/s, open loop; latency origin = \
                       the reading's scheduled creation time (its event time), before the POST",
            "sustained": "gateway took ≥ 95 % of the readings asked for and the creation → \
                          status lag at the end of the step is within 1.5 s of its start",
            "load_1m_before": load_before,
        }),
        figures: Vec::new(),
    };
    let ceiling = target.consume_ceiling;
    let vs_ceiling = |report: &mut Report, name: &str, value: f64| match ceiling {
        Some(c) => report.figure_vs(name, value, "readings/s", c, "raw Kafka consume ceiling"),
        None => report.figure(name, value, "readings/s"),
    };
    if let Some(c) = ceiling {
        report.figure("raw Kafka consume ceiling (same run)", c, "records/s");
    }
    // The step reported in detail: the last sustained one, or the first when none was.
    let best = steps.iter().rposition(Step::sustained).unwrap_or(0);
    if opts.search.is_some() {
        for (i, s) in steps.iter().enumerate() {
            report.figure(
                &format!(
                    "step {}: asked {:.0}/s, lag {:.0} → {:.0} ms, {}",
                    i + 1,
                    s.rate,
                    s.lag_start_ms,
                    s.lag_end_ms,
                    if s.sustained() {
                        "sustained"
                    } else {
                        "NOT sustained"
                    }
                ),
                s.achieved(),
                "readings/s",
            );
        }
        let sustained = steps.iter().filter(|s| s.sustained()).map(|s| s.achieved());
        vs_ceiling(
            &mut report,
            "highest sustained rate",
            sustained.fold(0.0, f64::max),
        );
    }
    let s = &steps[best];
    report.figure("readings asked per s", s.rate, "readings/s");
    vs_ceiling(&mut report, "readings accepted per s", s.achieved());
    report.figure("readings sent", s.sent as f64, "readings");
    report.figure("readings accepted", s.accepted as f64, "readings");
    report.figure("failed posts", s.failed as f64, "posts");
    report.figure("alert transitions measured", s.transitions as f64, "");
    report.figure("reading→alert p50", ms(&s.alert, 0.5), "ms");
    report.figure("reading→alert p99", ms(&s.alert, 0.99), "ms");
    report.figure("reading→alert p99.9", ms(&s.alert, 0.999), "ms");
    report.figure("reading→alert max", s.alert.max() as f64 / 1000.0, "ms");
    report.figure("reading→status p50", ms(&s.status, 0.5), "ms");
    report.figure("reading→status p99", ms(&s.status, 0.99), "ms");
    report.figure("reading→status max", s.status.max() as f64 / 1000.0, "ms");
    report.figure("reading→delta p50", ms(&s.delta, 0.5), "ms");
    report.figure("reading→delta p99", ms(&s.delta, 0.99), "ms");
    report.figure("reading→delta p99.9", ms(&s.delta, 0.999), "ms");
    report.figure("reading→delta max", s.delta.max() as f64 / 1000.0, "ms");
    report.figure("lag at start of step (median)", s.lag_start_ms, "ms");
    report.figure("lag at end of step (median)", s.lag_end_ms, "ms");
    report.figure("wall resyncs", s.resyncs as f64, "snapshots");
    report.figure("wall clients lost", s.lost_clients as f64, "clients");
    let total_cpu: f64 = s.cpu_s.iter().sum();
    report.figure(
        "CPU per reading, all stages",
        total_cpu / s.accepted.max(1) as f64 * 1e6,
        "µs",
    );
    for (stage, cpu) in target.stages.iter().zip(&s.cpu_s) {
        report.figure(
            &format!("CPU per reading, {}", stage.name),
            cpu / s.accepted.max(1) as f64 * 1e6,
            "µs",
        );
    }
    for stage in &target.stages {
        report.figure(
            &format!("peak RSS, {}", stage.name),
            peak_rss_mib_of(&stage.pid),
            "MiB",
        );
    }
    report.figure("load average 1 min, end of feed", s.load, "");
    Ok(report)
}
