//! Device authentication: each device holds its own bearer token and may write only the
//! sensors it is registered for.
//!
//! The devices file stores the SHA-256 of each token, never the token, so the file can be
//! read by operators without handing out write access to the readings topic:
//!
//! ```toml
//! [[devices]]
//! id = "gw-jiefangmen"
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! sensors = ["WL-UP-09", "WL-UP-09-B"]   # or ["*"] for a vendor gateway that relays every sensor
//! ```

use floodcmd_model::config::{ConfigErrors, ConfigProblem};
use floodcmd_model::District;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};

/// A registered device.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    /// Device id (appears in rejects and logs, never the token).
    pub id: String,
    sensors: Option<HashSet<String>>,
}

impl Device {
    /// A device that may write every sensor (the in-process simulator, tests).
    pub fn any(id: impl Into<String>) -> Self {
        Device {
            id: id.into(),
            sensors: None,
        }
    }

    /// May this device write `sensor`?
    pub fn may_write(&self, sensor: &str) -> bool {
        self.sensors.as_ref().is_none_or(|s| s.contains(sensor))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceEntry {
    id: String,
    token_sha256: String,
    sensors: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesFile {
    devices: Vec<DeviceEntry>,
}

/// Who may write: every device by the hash of its token.
#[derive(Clone, Debug, Default)]
pub struct DeviceRegistry {
    by_token: HashMap<[u8; 32], Device>,
}

/// The SHA-256 of a token, hex: what the devices file stores.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    // Hex digits only: `from_str_radix` alone would also take a sign ("+f").
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

impl DeviceRegistry {
    /// Parse and check a devices file against the district.
    pub fn from_toml_str(source: &str, district: &District) -> Result<Self, ConfigErrors> {
        let file: DevicesFile =
            toml::from_str(source).map_err(|e| ConfigErrors::from_toml(&e, source))?;
        let mut problems = Vec::new();
        let mut reg = DeviceRegistry::default();
        let mut ids = HashSet::new();
        for (i, d) in file.devices.into_iter().enumerate() {
            let at = |f: &str| format!("devices[{i}].{f}");
            // The id is the last level of the device's MQTT topic: no empty level, no level
            // separator, no wildcard.
            if d.id.is_empty()
                || d.id.contains(['/', '+', '#'])
                || d.id.chars().any(char::is_control)
            {
                problems.push(ConfigProblem {
                    path: at("id"),
                    message: format!(
                        "\"{}\" must be non-empty, without '/', '+', '#' or control characters",
                        d.id.escape_debug()
                    ),
                });
            } else if !ids.insert(d.id.clone()) {
                problems.push(ConfigProblem {
                    path: at("id"),
                    message: format!("duplicate device id \"{}\"", d.id),
                });
            }
            let Some(hash) = parse_hex32(&d.token_sha256.to_ascii_lowercase()) else {
                problems.push(ConfigProblem {
                    path: at("token_sha256"),
                    message: "must be 64 hex digits (the SHA-256 of the token)".into(),
                });
                continue;
            };
            let sensors = if d.sensors.iter().any(|s| s == "*") {
                None
            } else {
                for (j, s) in d.sensors.iter().enumerate() {
                    if district.sensor(s).is_none() {
                        problems.push(ConfigProblem {
                            path: at(&format!("sensors[{j}]")),
                            message: format!("unknown sensor \"{s}\""),
                        });
                    }
                }
                Some(d.sensors.into_iter().collect())
            };
            if reg
                .by_token
                .insert(hash, Device { id: d.id, sensors })
                .is_some()
            {
                problems.push(ConfigProblem {
                    path: at("token_sha256"),
                    message: "two devices share one token".into(),
                });
            }
        }
        if problems.is_empty() {
            Ok(reg)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// Register a device under a token (tests, the demo's simulator).
    pub fn insert(&mut self, token: &str, device: Device) {
        self.by_token
            .insert(Sha256::digest(token.as_bytes()).into(), device);
    }

    /// A device by id (MQTT names the device in the topic; the broker authenticated it).
    pub fn by_id(&self, id: &str) -> Option<&Device> {
        self.by_token.values().find(|d| d.id == id)
    }

    /// The device a bearer token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<&Device> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_token.get(&hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_writes_only_its_sensors() {
        let district = District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap();
        let file = format!(
            "[[devices]]\nid = \"d1\"\ntoken_sha256 = \"{}\"\nsensors = [\"WL-UP-01\"]\n",
            token_sha256("secret-1")
        );
        let reg = DeviceRegistry::from_toml_str(&file, &district).unwrap();
        let d = reg.authenticate("secret-1").unwrap();
        assert!(d.may_write("WL-UP-01"));
        assert!(!d.may_write("WL-UP-02"));
        assert!(reg.authenticate("secret-2").is_none());
        let bad = "[[devices]]\nid = \"d1\"\ntoken_sha256 = \"xyz\"\nsensors = [\"NOPE\"]\n";
        let err = DeviceRegistry::from_toml_str(bad, &district)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("devices[0].token_sha256: must be 64 hex digits"),
            "{err}"
        );
        // A sign is not a hex digit, though `u8::from_str_radix` takes "+f".
        let signed = format!(
            "[[devices]]\nid = \"d1\"\ntoken_sha256 = \"{}\"\nsensors = [\"*\"]\n",
            "+f".repeat(32)
        );
        let err = DeviceRegistry::from_toml_str(&signed, &district)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be 64 hex digits"), "{err}");
    }

    #[test]
    fn a_device_id_is_one_mqtt_topic_level() {
        let district = District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap();
        for id in ["", "a/b", "gw+", "#", "gw\\n1"] {
            let file = format!(
                "[[devices]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\nsensors = [\"*\"]\n",
                token_sha256("t")
            );
            let err = DeviceRegistry::from_toml_str(&file, &district)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("devices[0].id: "), "{id:?}: {err}");
        }
    }
}
