//! Every stage in one process on the embedded bus: sensors-sim → ingest → stream → alerts →
//! dashboard (`floodcmd demo`). Each stage talks only to the bus; this module only starts and
//! stops them, through [`crate::stages`].

use crate::stages::{self, StageContext, StageError};
use floodcmd_bus::EmbeddedBus;
use floodcmd_ingest::auth::{Device, DeviceRegistry};
use floodcmd_ingest::Access;
use floodcmd_model::settings::{BusSettings, DashboardSettings, IngestSettings};
use floodcmd_model::time::{Clock, Millis, ScaledClock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use floodcmd_sim::{run_sim, FaultConfig, SimConfig, SimReport, Target};
use floodcmd_stream::StreamHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What to start.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// The district.
    pub district: Arc<District>,
    /// Dashboard address (port 0 picks one).
    pub dashboard: SocketAddr,
    /// Ingest gateway address (port 0 picks one).
    pub ingest: SocketAddr,
    /// Simulated seconds per real second; 1 is real time.
    pub speed: f64,
    /// Run the storm simulator.
    pub simulate: bool,
    /// Simulator seed.
    pub seed: u64,
    /// Simulator faults.
    pub faults: FaultConfig,
    /// Timely workers.
    pub workers: usize,
    /// Partitions per topic.
    pub partitions: u32,
    /// Embedded bus capacity per partition.
    pub capacity: usize,
    /// The stream stage's lateness budget, ms; `None`: half a real second of delivery delay
    /// at the clock's speed, at least 10 s (the demo's).
    pub lateness_ms: Option<Millis>,
    /// The command wall's users, anonymous viewing and camera directory (its `listen` is
    /// `dashboard` above).
    pub wall: DashboardSettings,
}

impl PipelineOptions {
    /// Defaults for a district: ports picked by the OS, real time, no simulator.
    pub fn new(district: Arc<District>) -> Self {
        PipelineOptions {
            district,
            dashboard: ([127, 0, 0, 1], 0).into(),
            ingest: ([127, 0, 0, 1], 0).into(),
            speed: 1.0,
            simulate: false,
            seed: 2026,
            faults: FaultConfig::default(),
            workers: 2,
            partitions: 4,
            capacity: 65_536,
            lateness_ms: None,
            wall: DashboardSettings::default(),
        }
    }
}

/// A running pipeline.
pub struct Pipeline {
    /// Where the command wall is.
    pub dashboard_addr: SocketAddr,
    /// Where devices post readings.
    pub ingest_addr: SocketAddr,
    /// The bus, for tests that want to look at topics.
    pub bus: EmbeddedBus,
    /// Topic names.
    pub topics: Topics,
    /// The clock every stage shares.
    pub clock: Arc<dyn Clock>,
    /// What the simulator did.
    pub sim_report: Arc<SimReport>,
    /// The bearer token the gateway accepts from the simulated devices.
    pub device_token: String,
    shutdown: watch::Sender<bool>,
    stream: Option<StreamHandle>,
    tasks: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Start every stage.
    pub async fn start(opts: PipelineOptions) -> Result<Pipeline, StageError> {
        let topics = Topics::default();
        let bus_settings = BusSettings {
            partitions: opts.partitions,
            capacity: opts.capacity,
            ..BusSettings::default()
        };
        let connected = stages::connect_bus(&bus_settings, None, &topics).await?;
        let bus = connected
            .embedded
            .expect("the default bus settings name the embedded bus");
        let clock: Arc<dyn Clock> = if (opts.speed - 1.0).abs() < f64::EPSILON {
            Arc::new(SystemClock)
        } else {
            Arc::new(ScaledClock::new(SystemClock.now_ms(), opts.speed))
        };
        let (shutdown, rx) = watch::channel(false);
        let ctx = StageContext {
            bus: connected.bus,
            district: opts.district.clone(),
            clock: clock.clone(),
            topics: topics.clone(),
            shutdown: rx.clone(),
        };
        let mut tasks = Vec::new();

        // Dashboard first, so the wall sees everything from the first reading on.
        let (dashboard_addr, h) = stages::start_dashboard(&ctx, opts.dashboard, &opts.wall).await?;
        tasks.push(h);
        let alerts = floodcmd_model::settings::AlertsSettings::default();
        tasks.push(stages::start_alerts(&ctx, &alerts, None));
        tasks.push(stages::start_sender(
            &ctx,
            &alerts,
            Arc::new(stages::ConsoleSink),
        ));
        // Half a real second of delivery delay is on time, whatever the speed.
        let lateness_ms: Millis = opts
            .lateness_ms
            .unwrap_or_else(|| ((opts.speed * 500.0) as Millis).max(10_000));
        let stream = stages::start_stream(&ctx, opts.workers, lateness_ms, None, None).await?;

        // The simulator is one vendor gateway relaying every sensor, with its own token.
        let sim_token = format!("sim-{}", opts.seed);
        let mut devices = DeviceRegistry::default();
        devices.insert(&sim_token, Device::any("simulated-vendor-gateway"));
        // Its only device is that gateway, whose request rate grows with the district and
        // the speed: a per-device allowance meant for one sensor's box would refuse the storm.
        let ingest = IngestSettings {
            device_requests_per_min: 0,
            ..IngestSettings::default()
        };
        let (ingest_addr, hs) =
            stages::start_ingest(&ctx, &ingest, opts.ingest, Access::Devices(devices)).await?;
        tasks.extend(hs);

        let sim_report = Arc::new(SimReport::default());
        if opts.simulate {
            let fut = run_sim(
                opts.district.clone(),
                clock.clone(),
                SimConfig {
                    target: Target::Http {
                        url: format!("http://{ingest_addr}"),
                        token: Some(sim_token.clone()),
                    },
                    seed: opts.seed,
                    faults: opts.faults.clone(),
                    interval_ms: 60_000,
                    tick: Duration::from_millis(100),
                },
                sim_report.clone(),
                rx.clone(),
            );
            tasks.push(tokio::spawn(fut));
        }
        Ok(Pipeline {
            dashboard_addr,
            ingest_addr,
            bus,
            topics,
            clock,
            sim_report,
            device_token: sim_token,
            shutdown,
            stream: Some(stream),
            tasks,
        })
    }

    /// Stop every stage and wait for them.
    pub async fn stop(mut self) {
        // The stream stage first, while the stages reading its outputs still commit: its last
        // flush must not wait for room on a topic nobody reads any more.
        if let Some(stream) = self.stream.take() {
            stream.stop();
            let _ = tokio::task::spawn_blocking(move || stream.join()).await;
        }
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}
