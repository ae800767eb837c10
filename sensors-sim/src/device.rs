//! Simulated field devices: they measure the simulated storm on their own cadence and deliver
//! readings the way real ones do, over HTTP to the gateway, over MQTT to a broker, or (for
//! load tests of the stream stage) straight onto the readings topic. Faults come on demand.

use crate::drainage::Drainage;
use crate::storm::Storm;
use floodcmd_model::bus::{murmur2, Producer};
use floodcmd_model::codec::encode;
use floodcmd_model::time::{Clock, Millis};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Reading, SensorKind};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Faults on demand, as fractions of readings (or seconds, for skew).
#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    /// Readings sent with the value `"NaN"` (a failed probe).
    pub nan_rate: f64,
    /// Readings stamped an hour in the future (a device with a wrong clock).
    pub future_rate: f64,
    /// Readings never sent (radio dropouts).
    pub dropout_rate: f64,
    /// Depth readings with a 40 cm spike added (a leaf under an ultrasonic sensor).
    pub spike_rate: f64,
    /// Chance per report that a depth sensor freezes at its last value for 30 reports.
    pub stuck_rate: f64,
    /// Each sensor's clock is off by up to this many seconds, either way (fixed per sensor).
    pub skew_s: f64,
    /// Readings sent twice (same sequence number).
    pub duplicate_rate: f64,
    /// Shuffle the order of readings within each delivery.
    pub reorder: bool,
}

/// Where the devices deliver.
#[derive(Clone)]
pub enum Target {
    /// `POST <url>/v1/readings` with NDJSON and an optional bearer token.
    Http {
        /// Base URL of the gateway.
        url: String,
        /// Bearer token.
        token: Option<String>,
    },
    /// Publish NDJSON to `<prefix>/<device>` on an MQTT broker.
    Mqtt {
        /// Broker host.
        host: String,
        /// Broker port.
        port: u16,
        /// Topic prefix.
        prefix: String,
        /// Device id in the topic, and the user name at the broker.
        device: String,
        /// The device's token, its password at the broker (docs/SECURITY.md); `None`:
        /// anonymous.
        token: Option<String>,
    },
    /// Validated readings straight onto the readings topic (load tests of the stream stage).
    Bus {
        /// Producer.
        producer: Arc<dyn Producer>,
        /// Topics.
        topics: Topics,
    },
}

/// Simulator settings.
#[derive(Clone)]
pub struct SimConfig {
    /// Where readings go.
    pub target: Target,
    /// RNG seed.
    pub seed: u64,
    /// Faults.
    pub faults: FaultConfig,
    /// Milliseconds of simulated time between two reports of one sensor.
    pub interval_ms: Millis,
    /// Real time between two deliveries.
    pub tick: Duration,
}

/// What the simulator did, readable while it runs.
#[derive(Debug, Default)]
pub struct SimReport {
    /// Readings generated (including faulty ones, excluding dropouts).
    pub generated: AtomicU64,
    /// Readings the gateway accepted (HTTP), or delivered (MQTT, bus).
    pub accepted: AtomicU64,
    /// Readings the gateway rejected (HTTP).
    pub rejected: AtomicU64,
    /// Deliveries that failed (retried later).
    pub failed_posts: AtomicU64,
}

struct SimSensor {
    id: String,
    point: usize,
    point_id: String,
    kind: SensorKind,
    offset_cm: f64,
    next_due: Millis,
    seq: u64,
    rain_since_report: f64,
    skew_ms: Millis,
    stuck: Option<(f64, u32)>,
}

struct SimPoint {
    lat: f64,
    lon: f64,
    drainage: Drainage,
}

/// One reading as generated: the line a device sends, and the reading it means.
pub struct Generated {
    /// The device's JSON line.
    pub line: String,
    /// The reading (for the bus target); `None` when the line is deliberately invalid.
    pub reading: Option<Reading>,
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
        interval_ms: Millis,
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
        let interval_ms = interval_ms.max(1);
        let mut rng = StdRng::seed_from_u64(seed);
        let points = district
            .points
            .iter()
            .map(|p| SimPoint {
                lat: p.lat,
                lon: p.lon,
                drainage: Drainage::for_point(&p.id, p.kind),
            })
            .collect();
        let mut sensors = Vec::new();
        for (i, p) in district.points.iter().enumerate() {
            for s in &p.sensors {
                let skew_ms = if faults.skew_s > 0.0 {
                    (rng.gen_range(-faults.skew_s..faults.skew_s) * 1000.0) as Millis
                } else {
                    0
                };
                sensors.push(SimSensor {
                    id: s.id.clone(),
                    point: i,
                    point_id: p.id.clone(),
                    kind: s.kind,
                    offset_cm: s.calibration_offset_cm,
                    // Spread first reports over one interval so the gateway sees a steady stream.
                    next_due: start_ms + (murmur2(s.id.as_bytes()) as Millis % interval_ms),
                    seq: 0,
                    rain_since_report: 0.0,
                    skew_ms,
                    stuck: None,
                });
            }
        }
        Simulator {
            storm: Storm::crossing(bounds),
            start_ms,
            now_ms: start_ms,
            points,
            sensors,
            interval_ms,
            faults,
            rng,
        }
    }

    /// Run the simulation up to `to_ms`; returns the readings due, in delivery order.
    pub fn advance(&mut self, to_ms: Millis) -> Vec<Generated> {
        let mut out = Vec::new();
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
                    self.report(i, &mut out);
                }
            }
            self.now_ms = next;
        }
        if self.faults.reorder {
            out.shuffle(&mut self.rng);
        }
        out
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen_bool(p.clamp(0.0, 1.0))
    }

    fn report(&mut self, i: usize, out: &mut Vec<Generated>) {
        let f = self.faults.clone();
        let dropout = self.chance(f.dropout_rate);
        let nan = self.chance(f.nan_rate);
        let future = self.chance(f.future_rate);
        let spike = self.chance(f.spike_rate);
        let freeze = self.chance(f.stuck_rate);
        let duplicate = self.chance(f.duplicate_rate);
        let noise = self.rng.gen_range(-0.2..0.2);
        let s = &mut self.sensors[i];
        let due = s.next_due;
        s.next_due += self.interval_ms;
        s.seq += 1;
        let mut value = match s.kind {
            SensorKind::Rain => {
                // A tipping bucket reports whole 0.1 mm tips; the remainder waits.
                let tips = (s.rain_since_report * 10.0).floor() / 10.0;
                s.rain_since_report -= tips;
                tips
            }
            SensorKind::Depth => {
                let d = self.points[s.point].drainage.depth_cm;
                let noisy = if d > 0.0 { d + noise } else { 0.0 };
                // The device reports raw depth: the calibration offset restores it.
                (noisy.max(0.0) - s.offset_cm).max(-s.offset_cm)
            }
        };
        if s.kind == SensorKind::Depth {
            if let Some((v, left)) = s.stuck.as_mut() {
                value = *v;
                *left -= 1;
                if *left == 0 {
                    s.stuck = None;
                }
            } else if freeze {
                s.stuck = Some((value, 30));
            }
            if spike {
                value += 40.0;
            }
        }
        if dropout {
            return;
        }
        let ts = due + s.skew_ms + if future { 3_600_000 } else { 0 };
        let (id, seq) = (s.id.clone(), s.seq);
        let generated = if nan {
            Generated {
                line: format!(r#"{{"sensor":"{id}","ts":{ts},"value":"NaN","seq":{seq}}}"#),
                reading: None,
            }
        } else {
            Generated {
                line: format!(r#"{{"sensor":"{id}","ts":{ts},"value":{value:.2},"seq":{seq}}}"#),
                reading: Some(Reading {
                    sensor: id.as_str().into(),
                    point: s.point_id.as_str().into(),
                    kind: s.kind,
                    ts_ms: ts,
                    value: (value * 100.0).round() / 100.0,
                    seq: Some(seq),
                    received_ms: due,
                }),
            }
        };
        if duplicate {
            out.push(Generated {
                line: generated.line.clone(),
                reading: generated.reading.clone(),
            });
        }
        out.push(generated);
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

enum Sender {
    Http {
        client: reqwest::Client,
        url: String,
        token: Option<String>,
    },
    Mqtt {
        client: rumqttc::AsyncClient,
        topic: String,
    },
    Bus {
        producer: Arc<dyn Producer>,
        topic: String,
    },
}

impl Sender {
    /// Deliver a batch; `Ok` means the batch may be forgotten.
    async fn deliver(&self, batch: &[Generated], report: &SimReport) -> Result<(), String> {
        match self {
            Sender::Http { client, url, token } => {
                let body = batch
                    .iter()
                    .map(|g| g.line.as_str())
                    .collect::<Vec<_>>()
                    .join("\n");
                let mut req = client
                    .post(url)
                    .header("content-type", "application/x-ndjson")
                    .body(body);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.map_err(|e| e.to_string())?;
                let status = resp.status();
                if status.is_success()
                    || status == reqwest::StatusCode::BAD_REQUEST
                    || status == reqwest::StatusCode::FORBIDDEN
                {
                    let v: serde_json::Value = resp.json().await.unwrap_or_default();
                    report
                        .accepted
                        .fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    report
                        .rejected
                        .fetch_add(v["rejected"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    Ok(())
                } else {
                    // 429/503: a device keeps its readings and tries again, like a real one.
                    Err(format!("gateway answered {status}"))
                }
            }
            Sender::Mqtt { client, topic } => {
                let body = batch
                    .iter()
                    .map(|g| g.line.as_str())
                    .collect::<Vec<_>>()
                    .join("\n");
                client
                    .publish(
                        topic.as_str(),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        body.into_bytes(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                report
                    .accepted
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Sender::Bus { producer, topic } => {
                let sends = batch
                    .iter()
                    .filter_map(|g| g.reading.as_ref())
                    .map(|r| producer.send(topic, r.sensor.as_bytes(), encode(r), r.ts_ms));
                for r in futures::future::join_all(sends).await {
                    r.map_err(|e| e.to_string())?;
                }
                report.accepted.fetch_add(
                    batch.iter().filter(|g| g.reading.is_some()).count() as u64,
                    Ordering::Relaxed,
                );
                Ok(())
            }
        }
    }
}

/// Run the simulator until `shutdown` turns true.
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
        config.interval_ms,
        config.faults.clone(),
    );
    let (sender, mqtt_loop) = match &config.target {
        Target::Http { url, token } => (
            Sender::Http {
                client: reqwest::Client::new(),
                url: format!("{}/v1/readings", url.trim_end_matches('/')),
                token: token.clone(),
            },
            None,
        ),
        Target::Mqtt {
            host,
            port,
            prefix,
            device,
            token,
        } => {
            let mut opts = rumqttc::MqttOptions::new(format!("floodcmd-sim-{device}"), host, *port);
            if let Some(t) = token {
                opts.set_credentials(device, t);
            }
            opts.set_keep_alive(Duration::from_secs(10));
            opts.set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
            let (client, mut events) = rumqttc::AsyncClient::new(opts, 1024);
            // The event loop must be polled for publishes to leave.
            let driver = tokio::spawn(async move {
                loop {
                    if let Err(e) = events.poll().await {
                        tracing::warn!(error = %e, "simulator MQTT connection lost; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            });
            (
                Sender::Mqtt {
                    client,
                    topic: format!("{prefix}/{device}"),
                },
                Some(driver),
            )
        }
        Target::Bus { producer, topics } => (
            Sender::Bus {
                producer: producer.clone(),
                topic: topics.readings(),
            },
            None,
        ),
    };
    let mut backlog: Vec<Generated> = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(config.tick) => {}
        }
        let generated = sim.advance(clock.now_ms());
        report
            .generated
            .fetch_add(generated.len() as u64, Ordering::Relaxed);
        backlog.extend(generated);
        if backlog.is_empty() {
            continue;
        }
        match sender.deliver(&backlog, &report).await {
            Ok(()) => backlog.clear(),
            Err(e) => {
                report.failed_posts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, kept = backlog.len(), "delivery failed; the devices keep their readings");
            }
        }
    }
    if let Sender::Mqtt { client, .. } = &sender {
        // Let queued publishes leave before disconnecting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = client.disconnect().await;
    }
    if let Some(d) = mqtt_loop {
        d.abort();
    }
}
