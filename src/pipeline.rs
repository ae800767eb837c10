//! Every stage in one process on the embedded bus: sensors-sim → ingest → stream → alerts →
//! dashboard. Each stage talks only to the bus; this module only starts and stops them.

use floodcmd_alerts::{run_alerts, AlertsConfig};
use floodcmd_bus::EmbeddedBus;
use floodcmd_dashboard::{serve, DashboardConfig};
use floodcmd_ingest::validate::TimeLimits;
use floodcmd_ingest::{Gateway, GatewayConfig};
use floodcmd_model::bus::Bus;
use floodcmd_model::time::{Clock, Millis, ScaledClock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use floodcmd_sim::{run_sim, FaultConfig, SimConfig, SimReport};
use floodcmd_stream::{run_stream, StreamConfig, StreamHandle, Watermark};
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
        }
    }
}

/// Errors starting the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] floodcmd_model::bus::BusError),
    /// The stream stage failed to start.
    #[error("stream: {0}")]
    Stream(#[from] floodcmd_stream::dataflow::StreamError),
    /// The dashboard failed to start.
    #[error("dashboard: {0}")]
    Dashboard(#[from] floodcmd_dashboard::server::DashboardError),
    /// The gateway could not listen.
    #[error("ingest gateway: {0}")]
    Ingest(#[from] std::io::Error),
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
    shutdown: watch::Sender<bool>,
    stream: Option<StreamHandle>,
    tasks: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Start every stage.
    pub async fn start(opts: PipelineOptions) -> Result<Pipeline, PipelineError> {
        let topics = Topics::default();
        let bus = EmbeddedBus::new(opts.capacity);
        for t in topics.all() {
            bus.ensure_topic(&t, opts.partitions).await?;
        }
        let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
        let clock: Arc<dyn Clock> = if (opts.speed - 1.0).abs() < f64::EPSILON {
            Arc::new(SystemClock)
        } else {
            Arc::new(ScaledClock::new(SystemClock.now_ms(), opts.speed))
        };
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = Vec::new();

        // Dashboard first, so the wall sees everything from the first reading on.
        let (dashboard_addr, h) = serve(
            dyn_bus.clone(),
            opts.district.clone(),
            clock.clone(),
            DashboardConfig {
                listen: opts.dashboard,
                topics: topics.clone(),
                group: "dashboard".into(),
            },
            rx.clone(),
        )
        .await?;
        tasks.push(h);

        let alerts_fut = run_alerts(
            dyn_bus.clone(),
            opts.district.clone(),
            clock.clone(),
            AlertsConfig {
                topics: topics.clone(),
                group: "alerts".into(),
                drill: false,
            },
            rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = alerts_fut.await {
                tracing::error!(error = %e, "alerts stage stopped");
            }
        }));

        // Half a real second of delivery delay is on time, whatever the speed.
        let lateness_ms: Millis = ((opts.speed * 500.0) as Millis).max(10_000);
        let stream = run_stream(
            dyn_bus.clone(),
            opts.district.clone(),
            clock.clone(),
            StreamConfig {
                workers: opts.workers,
                lateness_ms,
                topics: topics.clone(),
                group: "stream".into(),
                watermark: Watermark::Clock(clock.clone()),
            },
        )
        .await?;

        let gateway = Arc::new(Gateway::new(
            opts.district.clone(),
            dyn_bus.producer(),
            topics.clone(),
            clock.clone(),
            GatewayConfig {
                max_body_bytes: 8 * 1024 * 1024,
                limits: TimeLimits {
                    max_future_ms: 300_000,
                    retention_ms: 72 * 3_600_000,
                },
            },
        ));
        let mut stop = rx.clone();
        let (ingest_addr, h) = gateway
            .serve(opts.ingest, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await?;
        tasks.push(h);

        let sim_report = Arc::new(SimReport::default());
        if opts.simulate {
            let fut = run_sim(
                opts.district.clone(),
                clock.clone(),
                SimConfig {
                    target: format!("http://{ingest_addr}"),
                    seed: opts.seed,
                    faults: opts.faults.clone(),
                    interval_s: 60,
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
            shutdown,
            stream: Some(stream),
            tasks,
        })
    }

    /// Stop every stage and wait for them.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(stream) = self.stream.take() {
            stream.stop();
            let _ = tokio::task::spawn_blocking(move || stream.join()).await;
        }
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}
