//! Starting one stage: what `floodcmd run`, the single-stage commands (`ingest`, `stream`,
//! `alerts`, `dashboard`) and the demo's pipeline share. Each function starts a stage against
//! a bus and returns its handles; none of them knows about the others.

use floodcmd_alerts::sender::{run_sender, SendFailed, SenderConfig, Sent, SmsSink};
use floodcmd_alerts::{run_alerts, AlertsConfig};
use floodcmd_bus::{EmbeddedBus, KafkaBus, KafkaConfig};
use floodcmd_dashboard::auth::AuthConfig;
use floodcmd_dashboard::{serve, DashboardConfig};
use floodcmd_ingest::auth::DeviceRegistry;
use floodcmd_ingest::mqtt::{run_mqtt, MqttConfig};
use floodcmd_ingest::validate::TimeLimits;
use floodcmd_ingest::{Access, Gateway, GatewayConfig};
use floodcmd_model::bus::{Bus, BusError};
use floodcmd_model::settings::{
    AlertsSettings, BusKind, BusSettings, DashboardSettings, IngestSettings,
};
use floodcmd_model::time::{Clock, Millis};
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use floodcmd_stream::{
    run_stream, run_stream_in_cluster, Cluster, StreamConfig, StreamHandle, Watermark,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Errors starting a stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The stream stage failed to start.
    #[error("stream: {0}")]
    Stream(#[from] floodcmd_stream::dataflow::StreamError),
    /// The dashboard failed to start.
    #[error("dashboard: {0}")]
    Dashboard(#[from] floodcmd_dashboard::server::DashboardError),
    /// A listener could not bind.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A settings value is wrong (names the field).
    #[error("{0}")]
    Settings(String),
}

/// What every stage needs.
#[derive(Clone)]
pub struct StageContext {
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// The district.
    pub district: Arc<District>,
    /// The clock ("now").
    pub clock: Arc<dyn Clock>,
    /// Topic names.
    pub topics: Topics,
    /// Turns true when the process shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// A connected bus; the embedded one is kept typed so tests can inspect it.
pub struct ConnectedBus {
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// Set when the bus is embedded.
    pub embedded: Option<EmbeddedBus>,
}

/// Connect to the bus the settings name (`kafka` overrides the bootstrap list and forces
/// Kafka) and make sure every topic exists.
pub async fn connect_bus(
    settings: &BusSettings,
    kafka: Option<&str>,
    topics: &Topics,
) -> Result<ConnectedBus, StageError> {
    let (bus, embedded): (Arc<dyn Bus>, Option<EmbeddedBus>) = match (settings.kind, kafka) {
        (BusKind::Embedded, None) => {
            let b = EmbeddedBus::new(settings.capacity);
            (Arc::new(b.clone()), Some(b))
        }
        (_, over) => {
            let mut cfg = KafkaConfig::new(over.unwrap_or(&settings.bootstrap));
            cfg.replication = settings.replication as i32;
            // TLS and SASL to the brokers (docs/SECURITY.md): passed to librdkafka as given.
            cfg.extra = settings
                .kafka
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            cfg.min_insync_replicas = settings.min_insync_replicas as i32;
            // About one status per reading, and a transition per five: one Kafka record each,
            // librdkafka and the broker spent more on them than on the readings
            // (`floodcmd_bus::pack`). The alerts stage tells a pack's transitions apart by
            // their place at the pack's offset (`InputOffset::index`).
            cfg.packed_topics = vec![topics.status(), topics.alerts()];
            (Arc::new(KafkaBus::new(cfg)?), None)
        }
    };
    for t in topics.all() {
        bus.ensure_topic(&t, settings.partitions).await?;
    }
    Ok(ConnectedBus { bus, embedded })
}

/// The command wall, with the users, anonymous viewing, session length and camera directory
/// of `settings` (its `listen` is taken from `listen`).
pub async fn start_dashboard(
    ctx: &StageContext,
    listen: SocketAddr,
    settings: &DashboardSettings,
) -> Result<(SocketAddr, JoinHandle<()>), StageError> {
    let mut config = DashboardConfig::new(listen, ctx.topics.clone(), settings.group.clone());
    config.auth = AuthConfig {
        users: settings.users.clone(),
        anonymous: settings.anonymous,
        session_ms: settings.session_h as Millis * 3_600_000,
        login_per_min: settings.login_per_min,
        actions_per_min: settings.actions_per_min,
    };
    config.allowed_origins = settings.allowed_origins.clone();
    config.stalled_after = std::time::Duration::from_secs(settings.stalled_after_s);
    config.client_queue = settings.client_queue;
    config.cameras_dir =
        (!settings.cameras_dir.is_empty()).then(|| PathBuf::from(&settings.cameras_dir));
    Ok(serve(
        ctx.bus.clone(),
        ctx.district.clone(),
        ctx.clock.clone(),
        config,
        ctx.shutdown.clone(),
    )
    .await?)
}

/// The alerts stage. With `district_file`, roster changes in it reach open incidents.
pub fn start_alerts(
    ctx: &StageContext,
    settings: &AlertsSettings,
    district_file: Option<PathBuf>,
) -> JoinHandle<()> {
    let fut = run_alerts(
        ctx.bus.clone(),
        ctx.district.clone(),
        ctx.clock.clone(),
        AlertsConfig {
            topics: ctx.topics.clone(),
            group: "alerts".into(),
            drill: settings.drill,
            district_file,
            reload_every: Duration::from_secs(settings.reload_s),
        },
        ctx.shutdown.clone(),
    );
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            tracing::error!(error = %e, "alerts stage stopped");
        }
    })
}

/// This process's name in outbox claims.
pub fn sender_instance(settings: &AlertsSettings) -> String {
    if !settings.instance.is_empty() {
        return settings.instance.clone();
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

/// The outbox sender, handing messages to `sink`.
pub fn start_sender(
    ctx: &StageContext,
    settings: &AlertsSettings,
    sink: Arc<dyn SmsSink>,
) -> JoinHandle<()> {
    let fut = run_sender(
        ctx.bus.clone(),
        sink,
        ctx.clock.clone(),
        SenderConfig {
            topics: ctx.topics.clone(),
            group: "sender".into(),
            instance: sender_instance(settings),
            lease: Duration::from_secs(settings.lease_s),
            concurrency: settings.send_concurrency,
        },
        ctx.shutdown.clone(),
    );
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            tracing::error!(error = %e, "outbox sender stopped");
        }
    })
}

/// The demo's gateway: prints each SMS instead of sending it, so a laptop demo never texts a
/// real phone. Recorded as sent through gateway `console` on the deliveries topic.
pub struct ConsoleSink;

#[async_trait::async_trait]
impl SmsSink for ConsoleSink {
    async fn send(&self, key: &str, phone: &str, text: &str) -> Result<Sent, SendFailed> {
        tracing::info!(%key, to = %floodcmd_alerts::incident::mask(phone), %text, "SMS (demo console, not sent)");
        Ok(Sent {
            gateway: "console".into(),
            message_ids: vec![format!("console-{key}")],
        })
    }
}

/// The stream stage, live on `ctx.clock`: this process alone, or its share of `cluster`.
pub async fn start_stream(
    ctx: &StageContext,
    workers: usize,
    lateness_ms: Millis,
    rebuild_ms: Option<Millis>,
    cluster: Option<Cluster>,
) -> Result<StreamHandle, StageError> {
    let config = StreamConfig {
        workers,
        lateness_ms,
        topics: ctx.topics.clone(),
        group: "stream".into(),
        watermark: Watermark::Clock(ctx.clock.clone()),
        rebuild_ms,
    };
    let (bus, district, clock) = (ctx.bus.clone(), ctx.district.clone(), ctx.clock.clone());
    Ok(match cluster {
        None => run_stream(bus, district, clock, config).await?,
        Some(cluster) => run_stream_in_cluster(bus, district, clock, config, cluster).await?,
    })
}

/// Who may write, from the settings: a devices file, or open access when none is named.
pub fn access_from(settings: &IngestSettings, district: &District) -> Result<Access, StageError> {
    if settings.devices_file.is_empty() {
        tracing::warn!("ingest.devices_file is empty: any client may write readings (trials only)");
        return Ok(Access::Open);
    }
    let text = std::fs::read_to_string(&settings.devices_file).map_err(|e| {
        StageError::Settings(format!(
            "ingest.devices_file: cannot read {}: {e}",
            settings.devices_file
        ))
    })?;
    DeviceRegistry::from_toml_str(&text, district)
        .map(Access::Devices)
        .map_err(|e| {
            StageError::Settings(format!(
                "ingest.devices_file {}:\n{e}",
                settings.devices_file
            ))
        })
}

/// A secret kept in a file (a mounted secret, a systemd credential): its text without the
/// trailing newline. The error names the settings field, never the content.
pub fn read_secret_file(field: &str, path: &str) -> Result<String, StageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StageError::Settings(format!("{field}: cannot read {path}: {e}")))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        return Err(StageError::Settings(format!("{field}: {path} is empty")));
    }
    Ok(secret)
}

/// The MQTT adapter's user name and password at the broker, if it has them.
fn mqtt_credentials(settings: &IngestSettings) -> Result<Option<(String, String)>, StageError> {
    if settings.mqtt_username.is_empty() {
        return Ok(None);
    }
    let password = if settings.mqtt_password_file.is_empty() {
        settings.mqtt_password.clone()
    } else {
        read_secret_file("ingest.mqtt_password_file", &settings.mqtt_password_file)?
    };
    Ok(Some((settings.mqtt_username.clone(), password)))
}

/// The ingest gateway (HTTP, and MQTT when `settings.mqtt` names a broker).
pub async fn start_ingest(
    ctx: &StageContext,
    settings: &IngestSettings,
    listen: SocketAddr,
    access: Access,
) -> Result<(SocketAddr, Vec<JoinHandle<()>>), StageError> {
    let gateway = Arc::new(Gateway::new(
        ctx.district.clone(),
        ctx.bus.producer(),
        ctx.topics.clone(),
        ctx.clock.clone(),
        GatewayConfig {
            max_body_bytes: settings.max_body_bytes,
            limits: TimeLimits {
                max_future_ms: settings.max_future_s as Millis * 1000,
                retention_ms: settings.retention_h as Millis * 3_600_000,
            },
            access,
            device_requests_per_min: settings.device_requests_per_min,
        },
    ));
    let mut stop = ctx.shutdown.clone();
    let (addr, http) = gateway
        .clone()
        .serve(listen, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .map_err(|source| StageError::Io {
            what: format!("ingest.listen {listen}"),
            source,
        })?;
    let mut tasks = vec![http];
    if let Some((host, port)) = settings.mqtt.rsplit_once(':') {
        let port = port.parse().map_err(|_| {
            StageError::Settings(format!("ingest.mqtt: bad port in \"{}\"", settings.mqtt))
        })?;
        let cfg = MqttConfig {
            host: host.to_string(),
            port,
            client_id: format!("floodcmd-ingest-{}", ctx.topics.prefix()),
            prefix: settings.mqtt_prefix.clone(),
            credentials: mqtt_credentials(settings)?,
        };
        tasks.push(tokio::spawn(run_mqtt(gateway, cfg, ctx.shutdown.clone())));
    }
    Ok((addr, tasks))
}

/// The time-series sink, writing to the server `settings.url` names.
pub fn start_sink_influx(
    ctx: &StageContext,
    settings: &floodcmd_model::settings::SinkInfluxSettings,
) -> Result<JoinHandle<()>, StageError> {
    use floodcmd_sink_influx::{run_sink, InfluxTarget, InfluxWriter, SinkConfig};
    let writer = InfluxWriter::new(&InfluxTarget {
        url: settings.url.clone(),
        org: settings.org.clone(),
        bucket: settings.bucket.clone(),
        token: if settings.token_file.is_empty() {
            settings.token.clone()
        } else {
            read_secret_file("sink_influx.token_file", &settings.token_file)?
        },
        gzip: settings.gzip,
        timeout: std::time::Duration::from_secs(30),
    })
    .map_err(|e| StageError::Settings(e.to_string()))?;
    let mut config = SinkConfig::new(ctx.topics.clone());
    config.group = settings.group.clone();
    config.batch_lines = settings.batch_lines;
    config.flush = std::time::Duration::from_millis(settings.flush_ms);
    let fut = run_sink(
        ctx.bus.clone(),
        ctx.district.clone(),
        ctx.clock.clone(),
        Arc::new(writer),
        config,
        ctx.shutdown.clone(),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = fut.await {
            tracing::error!(error = %e, "influx sink stopped");
        }
    }))
}
