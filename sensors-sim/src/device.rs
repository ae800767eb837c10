//! Simulated field devices: they measure the simulated storm on their own cadence and post
//! NDJSON to the ingest gateway, as real 4G sensors post to a vendor gateway.

use crate::drainage::Drainage;
use crate::storm::Storm;
use floodcmd_model::bus::murmur2;
use floodcmd_model::time::{Clock, Millis};
use floodcmd_model::{District, SensorKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Faults on demand, as fractions of readings.
#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    /// Readings sent with the value `"NaN"` (a failed probe).
    pub nan_rate: f64,
    /// Readings stamped an hour in the future (a device with a wrong clock).
    pub future_rate: f64,
}

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Base URL of the ingest gateway, e.g. `http://127.0.0.1:8081`.
    pub target: String,
    /// RNG seed.
    pub seed: u64,
    /// Faults.
    pub faults: FaultConfig,
    /// Seconds of simulated time between two reports of one sensor.
    pub interval_s: u32,
    /// Real time between two posts.
    pub tick: Duration,
}

/// What the simulator did, readable while it runs.
#[derive(Debug, Default)]
pub struct SimReport {
    /// Readings generated.
    pub generated: AtomicU64,
    /// Readings the gateway accepted.
    pub accepted: AtomicU64,
    /// Readings the gateway rejected.
    pub rejected: AtomicU64,
    /// Posts that failed (retried later).
    pub failed_posts: AtomicU64,
}

struct SimSensor {
    id: String,
    point: usize,
    kind: SensorKind,
    offset_cm: f64,
    next_due: Millis,
    seq: u64,
    rain_since_report: f64,
}

struct SimPoint {
    lat: f64,
    lon: f64,
    drainage: Drainage,
}

/// The simulated district: storm, hydraulics, sensors.
pub struct Simulator {
    storm: Storm,
    start_ms: Millis,
    now_ms: Millis,
    points: Vec<SimPoint>,
    sensors: Vec<SimSensor>,
    interval_ms: Millis,
    faults: FaultConfig,
    rng: StdRng,
}

/// Largest simulated step between two hydraulic updates.
const SUBSTEP_MS: Millis = 10_000;

impl Simulator {
    /// A simulator whose storm begins at `start_ms` (simulated time).
    pub fn new(
        district: &District,
        start_ms: Millis,
        seed: u64,
        interval_s: u32,
        faults: FaultConfig,
    ) -> Self {
        let lat = district.points.iter().map(|p| p.lat);
        let lon = district.points.iter().map(|p| p.lon);
        let bounds = (
            lat.clone().fold(f64::INFINITY, f64::min),
            lat.fold(f64::NEG_INFINITY, f64::max),
            lon.clone().fold(f64::INFINITY, f64::min),
            lon.fold(f64::NEG_INFINITY, f64::max),
        );
        let interval_ms = interval_s.max(1) as Millis * 1000;
        let points = district
            .points
            .iter()
            .map(|p| SimPoint {
                lat: p.lat,
                lon: p.lon,
                drainage: Drainage::for_point(&p.id, p.kind),
            })
            .collect();
        let sensors = district
            .points
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.sensors.iter().map(move |s| (i, p.kind, s)))
            .map(|(i, _kind, s)| SimSensor {
                id: s.id.clone(),
                point: i,
                kind: s.kind,
                offset_cm: s.calibration_offset_cm,
                // Spread first reports over one interval so the gateway sees a steady stream.
                next_due: start_ms + (murmur2(s.id.as_bytes()) as Millis % interval_ms),
                seq: 0,
                rain_since_report: 0.0,
            })
            .collect();
        Simulator {
            storm: Storm::crossing(bounds),
            start_ms,
            now_ms: start_ms,
            points,
            sensors,
            interval_ms,
            faults,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Run the simulation up to `to_ms`; returns the NDJSON lines of the readings due.
    pub fn advance(&mut self, to_ms: Millis) -> Vec<String> {
        let mut lines = Vec::new();
        while self.now_ms < to_ms {
            let next = (self.now_ms + SUBSTEP_MS).min(to_ms);
            let minutes = (next - self.now_ms) as f64 / 60_000.0;
            let t = next - self.start_ms;
            let rain: Vec<f64> = self
                .points
                .iter()
                .map(|p| self.storm.intensity(p.lat, p.lon, t))
                .collect();
            for (p, r) in self.points.iter_mut().zip(&rain) {
                p.drainage.step(*r, minutes);
            }
            for s in &mut self.sensors {
                if s.kind == SensorKind::Rain {
                    s.rain_since_report += rain[s.point] * minutes / 60.0;
                }
            }
            for i in 0..self.sensors.len() {
                while self.sensors[i].next_due <= next {
                    let line = self.report(i);
                    lines.push(line);
                }
            }
            self.now_ms = next;
        }
        lines
    }

    fn report(&mut self, i: usize) -> String {
        let s = &mut self.sensors[i];
        let ts = s.next_due;
        s.next_due += self.interval_ms;
        s.seq += 1;
        let value = match s.kind {
            SensorKind::Rain => {
                // A tipping bucket reports whole 0.1 mm tips; the remainder waits.
                let tips = (s.rain_since_report * 10.0).floor() / 10.0;
                s.rain_since_report -= tips;
                tips
            }
            SensorKind::Depth => {
                let d = self.points[s.point].drainage.depth_cm;
                let noise = if d > 0.0 {
                    self.rng.gen_range(-0.2..0.2)
                } else {
                    0.0
                };
                // The device reports raw depth: the gateway's calibration offset restores it.
                ((d + noise).max(0.0) - s.offset_cm).max(-s.offset_cm)
            }
        };
        let (id, seq) = (s.id.clone(), s.seq);
        if self.rng.gen_bool(self.faults.nan_rate.clamp(0.0, 1.0)) {
            return format!(r#"{{"sensor":"{id}","ts":{ts},"value":"NaN","seq":{seq}}}"#);
        }
        let ts = if self.rng.gen_bool(self.faults.future_rate.clamp(0.0, 1.0)) {
            ts + 3_600_000
        } else {
            ts
        };
        format!(r#"{{"sensor":"{id}","ts":{ts},"value":{value:.2},"seq":{seq}}}"#)
    }

    /// True depth at a point (for tests), cm.
    pub fn depth_cm(&self, point_index: usize) -> f64 {
        self.points[point_index].drainage.depth_cm
    }

    /// Number of simulated sensors.
    pub fn sensor_count(&self) -> usize {
        self.sensors.len()
    }
}

/// Run the simulator against a gateway until `shutdown` turns true.
pub async fn run_sim(
    district: Arc<District>,
    clock: Arc<dyn Clock>,
    config: SimConfig,
    report: Arc<SimReport>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sim = Simulator::new(
        &district,
        clock.now_ms(),
        config.seed,
        config.interval_s,
        config.faults.clone(),
    );
    let client = reqwest::Client::new();
    let url = format!("{}/v1/readings", config.target.trim_end_matches('/'));
    let mut backlog: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(config.tick) => {}
        }
        let lines = sim.advance(clock.now_ms());
        report
            .generated
            .fetch_add(lines.len() as u64, Ordering::Relaxed);
        backlog.extend(lines);
        if backlog.is_empty() {
            continue;
        }
        let body = backlog.join("\n");
        let sent = client
            .post(&url)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        match sent {
            Ok(resp)
                if resp.status().is_success()
                    || resp.status() == reqwest::StatusCode::BAD_REQUEST =>
            {
                let v: serde_json::Value = resp.json().await.unwrap_or_default();
                report
                    .accepted
                    .fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                report
                    .rejected
                    .fetch_add(v["rejected"].as_u64().unwrap_or(0), Ordering::Relaxed);
                backlog.clear();
            }
            Ok(resp) => {
                // 429/503: the device keeps its readings and tries again, like a real one.
                report.failed_posts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(status = %resp.status(), "gateway refused a batch; will retry");
            }
            Err(e) => {
                report.failed_posts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "gateway unreachable; will retry");
            }
        }
    }
}
