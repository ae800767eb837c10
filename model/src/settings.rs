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

/// The alerts stage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSettings {
    /// Drill: notifications are captured on the outbox marked `drill`, never sent.
    pub drill: bool,
}

/// The command wall.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardSettings {
    /// Listen address.
    pub listen: String,
    /// Consumer group; each dashboard instance needs its own to see everything.
    pub group: String,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        DashboardSettings {
            listen: "127.0.0.1:8080".into(),
            group: "dashboard".into(),
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
}

const SECTIONS: [&str; 6] = ["district", "bus", "ingest", "stream", "alerts", "dashboard"];

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
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        let settings: Settings =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    ConfigErrors(vec![ConfigProblem {
                        path: "settings".into(),
                        message: e.message().to_string(),
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
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(p))
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
}
