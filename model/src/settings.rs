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

/// The bus.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
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
        }
    }
}

/// The ingest gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
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
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            workers: 2,
            lateness_s: 10,
            rebuild_h: 25,
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

/// One user of the command wall (`[[dashboard.users]]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
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
        }
    }
}

/// The time-series sink (`floodcmd sink-influx`): any server speaking the InfluxDB v2 write
/// API. An empty `url` means no sink (`floodcmd run` then leaves it out).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SinkInfluxSettings {
    /// Base URL, e.g. `http://127.0.0.1:8086`; empty: no sink.
    pub url: String,
    /// Organization.
    pub org: String,
    /// Bucket.
    pub bucket: String,
    /// API token; better given as `FLOODCMD_SINK_INFLUX_TOKEN` than written in the file.
    pub token: String,
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
            batch_lines: 5_000,
            flush_ms: 1_000,
            gzip: true,
            group: "sink-influx".into(),
        }
    }
}

/// All runtime settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
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
            // Numbers and booleans keep their type; anything else is a string.
            let parsed = value
                .parse::<i64>()
                .map(toml::Value::Integer)
                .or_else(|_| value.parse::<bool>().map(toml::Value::Boolean))
                .unwrap_or_else(|_| toml::Value::String(value.clone()));
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
        let si = &self.sink_influx;
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
            env(&[("FLOODCMD_DASHBOARD_SESSION_H", "0")]),
        )
        .unwrap_err()
        .to_string();
        for field in [
            "dashboard.users[1].name",
            "dashboard.users[1].password_sha256",
            "dashboard.session_h",
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
}
