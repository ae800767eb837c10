//! Runtime settings: which bus, which ports, how late is late.
//!
//! Read from a TOML file (`config/floodcmd.toml`), then overridden by `FLOODCMD_<SECTION>_<FIELD>`
//! environment variables (e.g. `FLOODCMD_STREAM_WORKERS=4`, `FLOODCMD_BUS_PREFIX=drill`), then
//! validated. Every error names the field, and for an override, the variable.

use crate::config::{ConfigErrors, ConfigProblem};
use serde::{Deserialize, Serialize};

/// Where the district file is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistrictSettings {
    /// Path of the district TOML file, relative to the working directory.
    pub file: String,
}

impl Default for DistrictSettings {
    fn default() -> Self {
        DistrictSettings {
            file: "config/xincheng.toml".into(),
        }
    }
}

/// Which bus implementation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    /// In-process; only for one process (demo, tests, single-machine trials).
    Embedded,
    /// Apache Kafka.
    Kafka,
}

/// The bus. Debug hides secret-looking Kafka properties.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BusSettings {
    /// Embedded or Kafka.
    pub kind: BusKind,
    /// Topic prefix.
    pub prefix: String,
    /// Partitions per topic.
    pub partitions: u32,
    /// Embedded bus: records held per partition before producers wait.
    pub capacity: usize,
    /// Kafka bootstrap servers, `host:port,...`.
    pub bootstrap: String,
    /// Kafka: replication factor of the topics floodcmd creates.
    pub replication: u32,
    /// Kafka: more librdkafka properties for every client (`[bus.kafka]`), e.g.
    /// `"security.protocol" = "SASL_SSL"`, `"ssl.ca.location"`, `"sasl.mechanism"`,
    /// `"sasl.username"`, `"sasl.password"` (docs/SECURITY.md), or tuning. They override the
    /// bus's tunable defaults, not idempotent `acks=all` producing or the bus's own offset
    /// commits.
    pub kafka: std::collections::BTreeMap<String, String>,
    /// Kafka: `min.insync.replicas` of the topics floodcmd creates (capped at `replication`):
    /// with replication 3 and 2, an acknowledged record survives the loss of any one broker.
    pub min_insync_replicas: u32,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            kind: BusKind::Embedded,
            prefix: "floodcmd".into(),
            partitions: 4,
            capacity: 65_536,
            bootstrap: "127.0.0.1:19092".into(),
            replication: 1,
            kafka: std::collections::BTreeMap::new(),
            min_insync_replicas: 2,
        }
    }
}

/// The ingest gateway. Debug hides the MQTT password.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Listen address of the HTTP gateway.
    pub listen: String,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: u64,
    /// Readings stamped further than this into the future are rejected, seconds.
    pub max_future_s: u64,
    /// Readings older than this are rejected (retention horizon), hours.
    pub retention_h: u64,
    /// Devices file (tokens as SHA-256, sensors each device may write). Empty: open access,
    /// for trials only.
    pub devices_file: String,
    /// MQTT broker `host:port` to subscribe to; empty: no MQTT.
    pub mqtt: String,
    /// MQTT topic prefix; the adapter subscribes to `<prefix>/#`.
    pub mqtt_prefix: String,
    /// The adapter's own MQTT user name at the broker; empty: connect anonymously (trials
    /// only: then any client can publish as any device, see docs/SECURITY.md).
    pub mqtt_username: String,
    /// The adapter's MQTT password; better given as `FLOODCMD_INGEST_MQTT_PASSWORD` or in
    /// `mqtt_password_file` than written here.
    pub mqtt_password: String,
    /// File holding the adapter's MQTT password (trailing newline ignored).
    pub mqtt_password_file: String,
    /// HTTP requests per minute one device may make; past it, 429 with `Retry-After`.
    /// 0: no limit.
    pub device_requests_per_min: u32,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            listen: "127.0.0.1:8081".into(),
            max_body_bytes: 8 * 1024 * 1024,
            max_future_s: 300,
            retention_h: 72,
            devices_file: String::new(),
            mqtt: String::new(),
            mqtt_prefix: "floodcmd/readings".into(),
            mqtt_username: String::new(),
            mqtt_password: String::new(),
            mqtt_password_file: String::new(),
            device_requests_per_min: 600,
        }
    }
}

/// The stream stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    /// Timely workers in this process.
    pub workers: usize,
    /// Lateness budget: how far behind the newest event time a reading may arrive and still be
    /// judged in order, seconds.
    pub lateness_s: u64,
    /// How far back the stage re-reads readings on start to rebuild its windows, hours
    /// (covers the longest rain window, 24 h).
    pub rebuild_h: u64,
    /// A stage that spans several processes (a timely cluster): `host:port` of every
    /// process, comma-separated, the same list in every process. Empty: this process alone.
    pub cluster: String,
    /// This process's index in `cluster` (`FLOODCMD_STREAM_PROCESS` sets it per process).
    pub process: usize,
}

impl StreamSettings {
    /// The cluster's addresses; empty when the stage runs in one process.
    pub fn cluster_addresses(&self) -> Vec<String> {
        self.cluster
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect()
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            workers: 2,
            lateness_s: 10,
            rebuild_h: 25,
            cluster: String::new(),
            process: 0,
        }
    }
}

/// The alerts stage and its outbox sender.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSettings {
    /// Drill: notifications are captured on the drill topic, never sent.
    pub drill: bool,
    /// This process's name in outbox claims; empty means `<host>-<pid>`.
    pub instance: String,
    /// Seconds a sender's claim on a message keeps other senders away.
    pub lease_s: u64,
    /// Messages handed to the SMS gateways at once.
    pub send_concurrency: usize,
    /// Seconds between looks at the district file for roster changes.
    pub reload_s: u64,
}

impl Default for AlertsSettings {
    fn default() -> Self {
        AlertsSettings {
            drill: false,
            instance: String::new(),
            lease_s: 30,
            send_concurrency: 32,
            reload_s: 5,
        }
    }
}

/// What a command-wall user may do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum UserRole {
    /// Watches the wall; sees phone numbers masked; cannot act.
    Viewer,
    /// Acts on incidents (acknowledge, check in on behalf, notes, closure steps).
    Commander,
    /// A commander who also administers the wall.
    Admin,
}

impl UserRole {
    /// Every role, for messages.
    pub const ALL: [UserRole; 3] = [UserRole::Viewer, UserRole::Commander, UserRole::Admin];

    /// Name in settings and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::Viewer => "viewer",
            UserRole::Commander => "commander",
            UserRole::Admin => "admin",
        }
    }
}

/// One user of the command wall (`[[dashboard.users]]`). Debug hides the password hash: an
/// unsalted SHA-256 of a weak password is a password.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DashboardUser {
    /// Login name; it is also the name every action of this user is attributed to.
    pub name: String,
    /// `viewer`, `commander` or `admin`.
    pub role: UserRole,
    /// SHA-256 of the password, 64 hex digits (`printf %s PASSWORD | sha256sum`): the file
    /// never holds a password.
    pub password_sha256: String,
}

/// The command wall.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardSettings {
    /// Listen address.
    pub listen: String,
    /// Consumer group; each dashboard instance needs its own to see everything.
    pub group: String,
    /// Whether the wall may be watched without logging in (as a viewer: read only, phone
    /// numbers masked). With `false`, every read needs a login too.
    pub anonymous: bool,
    /// Hours a login lasts.
    pub session_h: u64,
    /// Directory served at `/cameras/` (HLS streams, e.g. from `scripts/cameras.sh`); empty:
    /// no cameras are served.
    pub cameras_dir: String,
    /// Who may log in.
    pub users: Vec<DashboardUser>,
    /// Browser origins allowed to open the websocket (`https://wall.example.org`); empty:
    /// only the wall's own host. From the environment: comma-separated.
    pub allowed_origins: Vec<String>,
    /// Login attempts per minute from one client address, and failed ones per user name;
    /// past it, 429. 0: no limit.
    pub login_per_min: u32,
    /// Actions per minute by one user; past it, 429. 0: no limit.
    pub actions_per_min: u32,
    /// A websocket client that takes nothing from its socket for this many seconds is
    /// disconnected (a browser that was asleep reconnects and resumes).
    pub stalled_after_s: u64,
    /// Deltas (one per 100 ms at most) a websocket client may fall behind before it is sent
    /// a fresh snapshot instead.
    pub client_queue: usize,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        DashboardSettings {
            listen: "127.0.0.1:8080".into(),
            group: "dashboard".into(),
            anonymous: true,
            session_h: 12,
            cameras_dir: ".cache/cameras".into(),
            users: Vec::new(),
            allowed_origins: Vec::new(),
            login_per_min: 10,
            actions_per_min: 120,
            stalled_after_s: 30,
            client_queue: 32,
        }
    }
}

/// The time-series sink (`floodcmd sink-influx`): any server speaking the InfluxDB v2 write
/// API. An empty `url` means no sink (`floodcmd run` then leaves it out). Debug hides the
/// token.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinkInfluxSettings {
    /// Base URL, e.g. `http://127.0.0.1:8086`; empty: no sink.
    pub url: String,
    /// Organization.
    pub org: String,
    /// Bucket.
    pub bucket: String,
    /// API token; better given as `FLOODCMD_SINK_INFLUX_TOKEN` or in `token_file` than
    /// written in the file.
    pub token: String,
    /// File holding the API token (trailing newline ignored); read by the binary at start.
    pub token_file: String,
    /// A batch is written when it holds this many lines...
    pub batch_lines: usize,
    /// ... or when its first line is this old, ms, whichever comes first.
    pub flush_ms: u64,
    /// Gzip the request bodies.
    pub gzip: bool,
    /// Consumer group.
    pub group: String,
}

impl Default for SinkInfluxSettings {
    fn default() -> Self {
        SinkInfluxSettings {
            url: String::new(),
            org: "floodcmd".into(),
            bucket: "floodcmd".into(),
            token: String::new(),
            token_file: String::new(),
            batch_lines: 5_000,
            flush_ms: 1_000,
            gzip: true,
            group: "sink-influx".into(),
        }
    }
}

/// All runtime settings. Debug hides every secret (the `[sms]` table's too), so settings
/// can be logged.
#[derive(Serialize, Deserialize, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// District file.
    pub district: DistrictSettings,
    /// Bus.
    pub bus: BusSettings,
    /// Ingest.
    pub ingest: IngestSettings,
    /// Stream.
    pub stream: StreamSettings,
    /// Alerts.
    pub alerts: AlertsSettings,
    /// Dashboard.
    pub dashboard: DashboardSettings,
    /// Time-series sink.
    pub sink_influx: SinkInfluxSettings,
    /// SMS gateways (`[[sms.gateways]]`), kept as written: the binary decodes and validates
    /// them with `floodcmd-sms`, which this crate does not depend on.
    pub sms: toml::Table,
}

const SECTIONS: [&str; 7] = [
    "district",
    "bus",
    "ingest",
    "stream",
    "alerts",
    "dashboard",
    "sink_influx",
];

/// Fields whose environment override is a comma-separated list.
const LIST_FIELDS: [(&str, &str); 1] = [("dashboard", "allowed_origins")];

/// What Debug shows instead of a secret.
const HIDDEN: &str = "***";

fn hidden_if_set(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        HIDDEN
    }
}

/// A copy of a table with every value under a secret-looking key hidden.
fn redact(table: &toml::Table) -> toml::Table {
    const SECRET_KEYS: [&str; 4] = ["password", "secret", "token", "api_key"];
    table
        .iter()
        .map(|(k, v)| {
            let v = if SECRET_KEYS.iter().any(|s| k.contains(s)) && !k.ends_with("_file") {
                toml::Value::String(HIDDEN.into())
            } else {
                match v {
                    toml::Value::Table(t) => toml::Value::Table(redact(t)),
                    toml::Value::Array(a) => toml::Value::Array(
                        a.iter()
                            .map(|x| match x {
                                toml::Value::Table(t) => toml::Value::Table(redact(t)),
                                x => x.clone(),
                            })
                            .collect(),
                    ),
                    v => v.clone(),
                }
            };
            (k.clone(), v)
        })
        .collect()
}

impl std::fmt::Debug for DashboardUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardUser")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("password_sha256", &HIDDEN)
            .finish()
    }
}

impl std::fmt::Debug for BusSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kafka: std::collections::BTreeMap<&str, &str> = self
            .kafka
            .iter()
            .map(|(k, v)| {
                let secret = k.contains("password") || k.contains("secret") || k.ends_with(".pem");
                (k.as_str(), if secret { HIDDEN } else { v.as_str() })
            })
            .collect();
        f.debug_struct("BusSettings")
            .field("kind", &self.kind)
            .field("prefix", &self.prefix)
            .field("partitions", &self.partitions)
            .field("capacity", &self.capacity)
            .field("bootstrap", &self.bootstrap)
            .field("replication", &self.replication)
            .field("min_insync_replicas", &self.min_insync_replicas)
            .field("kafka", &kafka)
            .finish()
    }
}

impl std::fmt::Debug for IngestSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestSettings")
            .field("listen", &self.listen)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_future_s", &self.max_future_s)
            .field("retention_h", &self.retention_h)
            .field("devices_file", &self.devices_file)
            .field("mqtt", &self.mqtt)
            .field("mqtt_prefix", &self.mqtt_prefix)
            .field("mqtt_username", &self.mqtt_username)
            .field("mqtt_password", &hidden_if_set(&self.mqtt_password))
            .field("mqtt_password_file", &self.mqtt_password_file)
            .field("device_requests_per_min", &self.device_requests_per_min)
            .finish()
    }
}

impl std::fmt::Debug for SinkInfluxSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkInfluxSettings")
            .field("url", &self.url)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("token", &hidden_if_set(&self.token))
            .field("token_file", &self.token_file)
            .field("batch_lines", &self.batch_lines)
            .field("flush_ms", &self.flush_ms)
            .field("gzip", &self.gzip)
            .field("group", &self.group)
            .finish()
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("district", &self.district)
            .field("bus", &self.bus)
            .field("ingest", &self.ingest)
            .field("stream", &self.stream)
            .field("alerts", &self.alerts)
            .field("dashboard", &self.dashboard)
            .field("sink_influx", &self.sink_influx)
            .field("sms", &redact(&self.sms))
            .finish()
    }
}

impl Settings {
    /// Parse a settings file, apply `FLOODCMD_*` overrides from `env`, validate.
    pub fn load(
        source: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigErrors> {
        let mut table: toml::Table =
            toml::from_str(source).map_err(|e| ConfigErrors::from_toml(&e, source))?;
        let mut problems = Vec::new();
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("FLOODCMD_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, field)) = SECTIONS.iter().find_map(|s| {
                rest.strip_prefix(s)
                    .and_then(|f| f.strip_prefix('_'))
                    .map(|f| (*s, f))
            }) else {
                // FLOODCMD_LOG, FLOODCMD_KAFKA and friends belong to the binary or tests.
                continue;
            };
            // Numbers and booleans keep their type; lists are comma-separated; anything else
            // is a string.
            let parsed = if LIST_FIELDS.contains(&(section, field)) {
                toml::Value::Array(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| toml::Value::String(v.to_string()))
                        .collect(),
                )
            } else if ["password", "token", "username"]
                .iter()
                .any(|w| field.contains(w))
            {
                // A secret of digits only is still a string.
                toml::Value::String(value.clone())
            } else {
                value
                    .parse::<i64>()
                    .map(toml::Value::Integer)
                    .or_else(|_| value.parse::<bool>().map(toml::Value::Boolean))
                    .unwrap_or_else(|_| toml::Value::String(value.clone()))
            };
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry.as_table_mut() {
                Some(t) => {
                    t.insert(field.to_string(), parsed);
                }
                None => problems.push(ConfigProblem {
                    path: format!("{key} ({section})"),
                    message: "the file has this as a value, not a table".into(),
                }),
            }
        }
        check_user_roles(&table, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        let settings: Settings =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let message = match e.message().trim() {
                        "" => "invalid settings".to_string(),
                        m => m.to_string(),
                    };
                    ConfigErrors(vec![ConfigProblem {
                        path: "settings".into(),
                        message,
                    }])
                })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Check values serde cannot.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut p = Vec::new();
        let mut bad = |path: &str, message: String| {
            p.push(ConfigProblem {
                path: path.into(),
                message,
            })
        };
        let a = &self.alerts;
        if a.lease_s == 0 || a.lease_s > 3600 {
            bad("alerts.lease_s", format!("{} must be 1 to 3600", a.lease_s));
        }
        if a.send_concurrency == 0 || a.send_concurrency > 1024 {
            bad(
                "alerts.send_concurrency",
                format!("{} must be 1 to 1024", a.send_concurrency),
            );
        }
        if a.reload_s == 0 {
            bad("alerts.reload_s", "must be at least 1".into());
        }
        if self.bus.partitions == 0 || self.bus.partitions > 1024 {
            bad(
                "bus.partitions",
                format!("{} must be 1 to 1024", self.bus.partitions),
            );
        }
        if self.bus.capacity < 16 {
            bad(
                "bus.capacity",
                format!("{} is too small (at least 16)", self.bus.capacity),
            );
        }
        if self.bus.replication == 0 || self.bus.replication > 16 {
            bad(
                "bus.replication",
                format!("{} must be 1 to 16", self.bus.replication),
            );
        }
        if self.bus.min_insync_replicas == 0 || self.bus.min_insync_replicas > 16 {
            bad(
                "bus.min_insync_replicas",
                format!("{} must be 1 to 16", self.bus.min_insync_replicas),
            );
        }
        if self.bus.prefix.is_empty()
            || !self
                .bus
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            bad(
                "bus.prefix",
                format!(
                    "\"{}\" must be ASCII letters, digits, '-', '_' or '.'",
                    self.bus.prefix
                ),
            );
        }
        if self.bus.kind == BusKind::Kafka
            && self
                .bus
                .bootstrap
                .split(',')
                .any(|h| h.trim().rsplit_once(':').is_none())
        {
            bad(
                "bus.bootstrap",
                format!(
                    "\"{}\" must be host:port[,host:port...]",
                    self.bus.bootstrap
                ),
            );
        }
        if self.stream.workers == 0 || self.stream.workers > 256 {
            bad(
                "stream.workers",
                format!("{} must be 1 to 256", self.stream.workers),
            );
        }
        let addresses = self.stream.cluster_addresses();
        if addresses.iter().any(|a| {
            a.rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        }) {
            bad(
                "stream.cluster",
                format!(
                    "\"{}\" must be host:port[,host:port...]",
                    self.stream.cluster
                ),
            );
        } else if addresses.len()
            != addresses
                .iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
        {
            bad(
                "stream.cluster",
                format!("\"{}\" names one address twice", self.stream.cluster),
            );
        }
        if self.stream.process >= addresses.len().max(1) {
            bad(
                "stream.process",
                format!(
                    "{} is not an index into stream.cluster's {} address(es)",
                    self.stream.process,
                    addresses.len()
                ),
            );
        }
        if self.stream.lateness_s > 24 * 3600 {
            bad(
                "stream.lateness_s",
                format!("{} is over a day", self.stream.lateness_s),
            );
        }
        if self.ingest.max_body_bytes < 1024 {
            bad(
                "ingest.max_body_bytes",
                format!("{} is below 1 KiB", self.ingest.max_body_bytes),
            );
        }
        if !self.ingest.mqtt.is_empty()
            && self
                .ingest
                .mqtt
                .rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            bad(
                "ingest.mqtt",
                format!("\"{}\" must be host:port or empty", self.ingest.mqtt),
            );
        }
        for (path, addr) in [
            ("ingest.listen", &self.ingest.listen),
            ("dashboard.listen", &self.dashboard.listen),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                bad(
                    path,
                    format!("\"{addr}\" is not an address like 127.0.0.1:8080"),
                );
            }
        }
        let d = &self.dashboard;
        if d.session_h == 0 || d.session_h > 24 * 30 {
            bad(
                "dashboard.session_h",
                format!("{} must be 1 to 720 hours", d.session_h),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in d.users.iter().enumerate() {
            let name = u.name.trim();
            if name.is_empty() || name.chars().count() > 64 || name != u.name {
                bad(
                    &format!("dashboard.users[{i}].name"),
                    format!(
                        "\"{}\" must be 1 to 64 characters without surrounding spaces",
                        u.name
                    ),
                );
            } else if !names.insert(name) {
                bad(
                    &format!("dashboard.users[{i}].name"),
                    format!("\"{name}\" is listed twice"),
                );
            }
            let h = &u.password_sha256;
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                bad(
                    &format!("dashboard.users[{i}].password_sha256"),
                    "must be the password's SHA-256 as 64 hex digits (printf %s PASSWORD | sha256sum)"
                        .into(),
                );
            }
        }
        for (i, o) in d.allowed_origins.iter().enumerate() {
            let ok = o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                .is_some_and(|rest| {
                    let rest = rest.trim_end_matches('/');
                    !rest.is_empty() && !rest.contains('/')
                });
            if !ok {
                bad(
                    &format!("dashboard.allowed_origins[{i}]"),
                    format!("\"{o}\" must be an origin like https://wall.example.org (scheme, host, optional port; no path)"),
                );
            }
        }
        if d.login_per_min > 10_000 {
            bad(
                "dashboard.login_per_min",
                format!("{} must be 0 (no limit) to 10000", d.login_per_min),
            );
        }
        if d.actions_per_min > 100_000 {
            bad(
                "dashboard.actions_per_min",
                format!("{} must be 0 (no limit) to 100000", d.actions_per_min),
            );
        }
        if d.stalled_after_s == 0 || d.stalled_after_s > 3_600 {
            bad(
                "dashboard.stalled_after_s",
                format!("{} must be 1 to 3600 seconds", d.stalled_after_s),
            );
        }
        if d.client_queue == 0 || d.client_queue > 4_096 {
            bad(
                "dashboard.client_queue",
                format!(
                    "{} must be 1 to 4096 deltas (each up to one tick's changes; the queue is \
                     shared by every client)",
                    d.client_queue
                ),
            );
        }
        if self.ingest.device_requests_per_min > 1_000_000 {
            bad(
                "ingest.device_requests_per_min",
                format!(
                    "{} must be 0 (no limit) to 1000000",
                    self.ingest.device_requests_per_min
                ),
            );
        }
        if !self.ingest.mqtt_password.is_empty() && !self.ingest.mqtt_password_file.is_empty() {
            bad(
                "ingest.mqtt_password_file",
                "give the password or the file, not both".into(),
            );
        }
        if self.ingest.mqtt_username.is_empty()
            && !(self.ingest.mqtt_password.is_empty() && self.ingest.mqtt_password_file.is_empty())
        {
            bad(
                "ingest.mqtt_username",
                "must be set when a password is given".into(),
            );
        }
        let si = &self.sink_influx;
        if !si.token.is_empty() && !si.token_file.is_empty() {
            bad(
                "sink_influx.token_file",
                "give the token or the file, not both".into(),
            );
        }
        if !si.url.is_empty() {
            let rest = si
                .url
                .strip_prefix("http://")
                .or_else(|| si.url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                bad(
                    "sink_influx.url",
                    format!(
                        "\"{}\" must be an http:// or https:// URL, or empty for no sink",
                        si.url
                    ),
                );
            }
            if si.org.is_empty() {
                bad(
                    "sink_influx.org",
                    "must not be empty when url is set".into(),
                );
            }
            if si.bucket.is_empty() {
                bad(
                    "sink_influx.bucket",
                    "must not be empty when url is set".into(),
                );
            }
        }
        if si.batch_lines == 0 || si.batch_lines > 1_000_000 {
            bad(
                "sink_influx.batch_lines",
                format!("{} must be 1 to 1000000", si.batch_lines),
            );
        }
        if si.flush_ms < 10 || si.flush_ms > 60_000 {
            bad(
                "sink_influx.flush_ms",
                format!("{} must be 10 to 60000", si.flush_ms),
            );
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(p))
        }
    }
}

/// A role outside the list would otherwise fail deserialization without saying which user.
fn check_user_roles(table: &toml::Table, problems: &mut Vec<ConfigProblem>) {
    let Some(users) = table
        .get("dashboard")
        .and_then(|d| d.get("users"))
        .and_then(|u| u.as_array())
    else {
        return;
    };
    for (i, u) in users.iter().enumerate() {
        let role = u.get("role").and_then(|r| r.as_str());
        if !UserRole::ALL.iter().any(|r| Some(r.as_str()) == role) {
            problems.push(ConfigProblem {
                path: format!("dashboard.users[{i}].role"),
                message: format!(
                    "{} must be viewer, commander or admin",
                    u.get("role")
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "missing".into())
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_the_file() {
        let s = Settings::load(
            "[stream]\nworkers = 1\n",
            env(&[
                ("FLOODCMD_STREAM_WORKERS", "3"),
                ("FLOODCMD_BUS_PREFIX", "drill"),
                ("FLOODCMD_ALERTS_DRILL", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(s.stream.workers, 3);
        assert_eq!(s.bus.prefix, "drill");
        assert!(s.alerts.drill);
    }

    #[test]
    fn a_stream_cluster_names_every_process_and_this_one() {
        let s = Settings::load(
            "[stream]\ncluster = \"127.0.0.1:2101, 127.0.0.1:2102\"\n",
            env(&[("FLOODCMD_STREAM_PROCESS", "1")]),
        )
        .unwrap();
        assert_eq!(
            s.stream.cluster_addresses(),
            vec!["127.0.0.1:2101".to_string(), "127.0.0.1:2102".to_string()]
        );
        assert_eq!(s.stream.process, 1);
        let err = Settings::load(
            "[stream]\ncluster = \"127.0.0.1:2101,127.0.0.1:2102\"\nprocess = 2\n",
            env(&[]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("stream.process: 2 is not an index into stream.cluster's 2 address(es)"),
            "{err}"
        );
        let err = Settings::load("[stream]\ncluster = \"a:1,b\"\n", env(&[])).unwrap_err();
        assert!(err.to_string().contains("stream.cluster"), "{err}");
        let err = Settings::load("[stream]\nprocess = 1\n", env(&[])).unwrap_err();
        assert!(err.to_string().contains("stream.process"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let err =
            Settings::load("[stream]\nworkers = 0\n[bus]\npartitions = 0\n", env(&[])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("stream.workers: 0 must be 1 to 256"),
            "{text}"
        );
        assert!(text.contains("bus.partitions"), "{text}");
        let err = Settings::load("", env(&[("FLOODCMD_STREAM_WORKRS", "2")])).unwrap_err();
        assert!(err.to_string().contains("workrs"), "{err}");
        let err = Settings::load("[ingest]\nmqtt = \"nohost\"\n", env(&[])).unwrap_err();
        assert!(err.to_string().contains("ingest.mqtt"), "{err}");
    }

    #[test]
    fn wall_users_are_validated_by_field_and_scalar_overrides_still_apply() {
        let hash = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
        let s = Settings::load(
            &format!(
                "[dashboard]\n[[dashboard.users]]\nname = \"值班长\"\nrole = \"commander\"\npassword_sha256 = \"{hash}\"\n"
            ),
            env(&[
                ("FLOODCMD_DASHBOARD_ANONYMOUS", "false"),
                ("FLOODCMD_DASHBOARD_CAMERAS_DIR", "/srv/cameras"),
            ]),
        )
        .unwrap();
        assert_eq!(s.dashboard.users[0].role, UserRole::Commander);
        assert!(!s.dashboard.anonymous);
        assert_eq!(s.dashboard.cameras_dir, "/srv/cameras");
        let err = Settings::load(
            &format!(
                "[[dashboard.users]]\nname = \"a\"\nrole = \"boss\"\npassword_sha256 = \"{hash}\"\n"
            ),
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("dashboard.users[0].role"), "{err}");
        let err = Settings::load(
            &format!(
                "[[dashboard.users]]\nname = \"a\"\nrole = \"viewer\"\npassword_sha256 = \"{hash}\"\n\
                 [[dashboard.users]]\nname = \"a\"\nrole = \"admin\"\npassword_sha256 = \"secret\"\n"
            ),
            env(&[
                ("FLOODCMD_DASHBOARD_SESSION_H", "0"),
                ("FLOODCMD_DASHBOARD_STALLED_AFTER_S", "0"),
                ("FLOODCMD_DASHBOARD_CLIENT_QUEUE", "100000"),
            ]),
        )
        .unwrap_err()
        .to_string();
        for field in [
            "dashboard.users[1].name",
            "dashboard.users[1].password_sha256",
            "dashboard.session_h",
            "dashboard.stalled_after_s",
            "dashboard.client_queue",
        ] {
            assert!(err.contains(field), "{field} missing from: {err}");
        }
    }

    #[test]
    fn the_influx_sink_is_off_until_it_has_a_url_and_names_its_fields() {
        let s = Settings::load("", env(&[])).unwrap();
        assert!(s.sink_influx.url.is_empty());
        let s = Settings::load(
            "[sink_influx]\nbatch_lines = 100\n",
            env(&[
                ("FLOODCMD_SINK_INFLUX_URL", "http://127.0.0.1:18428"),
                ("FLOODCMD_SINK_INFLUX_FLUSH_MS", "250"),
                ("FLOODCMD_SINK_INFLUX_GZIP", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(s.sink_influx.url, "http://127.0.0.1:18428");
        assert_eq!(s.sink_influx.batch_lines, 100);
        assert_eq!(s.sink_influx.flush_ms, 250);
        assert!(!s.sink_influx.gzip);
        let err = Settings::load(
            "[sink_influx]\nurl = \"127.0.0.1:8086\"\nbucket = \"\"\nbatch_lines = 0\n",
            env(&[("FLOODCMD_SINK_INFLUX_FLUSH_MS", "1")]),
        )
        .unwrap_err()
        .to_string();
        for field in [
            "sink_influx.url",
            "sink_influx.bucket",
            "sink_influx.batch_lines",
            "sink_influx.flush_ms",
        ] {
            assert!(err.contains(field), "{field} missing from: {err}");
        }
    }

    #[test]
    fn debug_output_hides_every_secret() {
        let s = Settings::load(
            "[bus.kafka]\n\"sasl.password\" = \"kafka-pw-66\"\n\"security.protocol\" = \"SASL_SSL\"\n\
             [sink_influx]\nurl = \"http://127.0.0.1:8086\"\n\
             [[sms.gateways]]\nkind = \"smpp\"\npassword = \"smpp-pw-77\"\n\
             [[sms.gateways]]\nkind = \"http_sendsms\"\naccess_key_secret = \"ak-secret-88\"\n\
             [[dashboard.users]]\nname = \"duty\"\nrole = \"commander\"\n\
             password_sha256 = \"5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8\"\n",
            env(&[
                ("FLOODCMD_SINK_INFLUX_TOKEN", "influx-token-99"),
                ("FLOODCMD_INGEST_MQTT_USERNAME", "floodcmd-ingest"),
                ("FLOODCMD_INGEST_MQTT_PASSWORD", "123456"),
            ]),
        )
        .unwrap();
        assert_eq!(s.sink_influx.token, "influx-token-99");
        assert_eq!(s.ingest.mqtt_password, "123456", "digits stay a string");
        let shown = format!("{s:?} {s:#?}");
        assert_eq!(s.bus.kafka["sasl.password"], "kafka-pw-66");
        assert!(shown.contains("SASL_SSL"));
        for secret in [
            "influx-token-99",
            "123456",
            "smpp-pw-77",
            "ak-secret-88",
            "kafka-pw-66",
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("floodcmd-ingest") && shown.contains("***"));
    }

    #[test]
    fn security_settings_are_validated_by_field() {
        let s = Settings::load(
            "",
            env(&[(
                "FLOODCMD_DASHBOARD_ALLOWED_ORIGINS",
                "https://wall.example.org, http://10.0.0.5:8080",
            )]),
        )
        .unwrap();
        assert_eq!(
            s.dashboard.allowed_origins,
            ["https://wall.example.org", "http://10.0.0.5:8080"]
        );
        assert_eq!(s.dashboard.login_per_min, 10);
        let err = Settings::load(
            "[dashboard]\nallowed_origins = [\"wall.example.org\", \"https://a/b\"]\n\
             login_per_min = 20000\n\
             [ingest]\nmqtt_password = \"x\"\nmqtt_password_file = \"/run/x\"\n\
             device_requests_per_min = 2000000\n\
             [sink_influx]\ntoken = \"t\"\ntoken_file = \"/run/t\"\n",
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        for field in [
            "dashboard.allowed_origins[0]",
            "dashboard.allowed_origins[1]",
            "dashboard.login_per_min",
            "ingest.mqtt_password_file",
            "ingest.mqtt_username",
            "ingest.device_requests_per_min",
            "sink_influx.token_file",
        ] {
            assert!(err.contains(field), "{field} missing from: {err}");
        }
    }
}
