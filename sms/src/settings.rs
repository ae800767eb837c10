//! The `[sms]` settings: the ordered gateway list the dispatcher tries, first to last.
//!
//! ```toml
//! [[sms.gateways]]
//! kind = "smpp"
//! host = "127.0.0.1"
//! port = 12775
//! system_id = "floodcmd"
//! password = "secret"
//! source_addr = "10690001"
//! rate_per_s = 100
//! window = 10
//!
//! [[sms.gateways]]
//! kind = "http_sendsms"
//! url = "https://dysmsapi.aliyuncs.com/"
//! access_key_id = "LTAI..."
//! access_key_secret = "..."
//! sign_name = "新城区防汛"
//! template_code = "SMS_000000"
//! rate_per_s = 50
//! ```
//!
//! Plain serde: the settings loader owns the settings file and `FLOODCMD_*` overrides;
//! [`SmsSettings::validate`] checks what serde cannot and names each problem by its path.
//!
//! Secrets need not be written in the file. [`SmsSettings::resolve_secrets`] fills each
//! gateway's `password` / `access_key_secret` from the environment
//! (`FLOODCMD_SMS_<NAME>_PASSWORD`, `FLOODCMD_SMS_<NAME>_ACCESS_KEY_SECRET`, where `<NAME>` is
//! the gateway's name upper-cased with other characters as `_`) or from `password_file` /
//! `access_key_secret_file` (a mounted secret; the trailing newline is ignored). Debug never
//! shows them, and no error quotes them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// All SMS settings. No gateways means SMS is off.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct SmsSettings {
    /// Gateways in the order they are tried; later ones are fallbacks.
    #[serde(default)]
    pub gateways: Vec<GatewaySettings>,
}

/// One gateway, by protocol.
#[derive(Clone, PartialEq, Serialize, Deserialize, Debug)]
#[serde(tag = "kind")]
pub enum GatewaySettings {
    /// An SMSC over SMPP 3.4.
    #[serde(rename = "smpp")]
    Smpp(SmppSettings),
    /// An Alibaba Cloud style `SendSms` HTTP API.
    #[serde(rename = "http_sendsms")]
    HttpSendSms(HttpSendSmsSettings),
}

/// An SMSC.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmppSettings {
    /// Name in logs and metrics; defaults to `smpp`, or `smpp<i>` if that is taken.
    #[serde(default)]
    pub name: Option<String>,
    /// SMSC host.
    pub host: String,
    /// SMSC port (often 2775).
    pub port: u32,
    /// Bind account, at most 15 characters.
    pub system_id: String,
    /// Bind password, at most 8 characters; or give `password_file`, or
    /// `FLOODCMD_SMS_<NAME>_PASSWORD`.
    #[serde(default)]
    pub password: String,
    /// File holding the bind password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Sender address (the short code recipients see), at most 20 characters.
    pub source_addr: String,
    /// Submits per second the contract allows (each part of a long text is one submit);
    /// 0 means no limit.
    pub rate_per_s: f64,
    /// Outstanding submits without a response, at most.
    #[serde(default = "default_window")]
    pub window: u32,
}

/// A `SendSms` HTTP API account.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSendSmsSettings {
    /// Name in logs and metrics; defaults to `http_sendsms`, or `http_sendsms<i>` if taken.
    #[serde(default)]
    pub name: Option<String>,
    /// Endpoint URL.
    pub url: String,
    /// AccessKey id.
    pub access_key_id: String,
    /// AccessKey secret; or give `access_key_secret_file`, or
    /// `FLOODCMD_SMS_<NAME>_ACCESS_KEY_SECRET`.
    #[serde(default)]
    pub access_key_secret: String,
    /// File holding the AccessKey secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_secret_file: Option<String>,
    /// Approved signature (签名).
    pub sign_name: String,
    /// Approved template with a `${content}` parameter.
    pub template_code: String,
    /// Requests per second allowed; 0 means no limit.
    pub rate_per_s: f64,
}

fn default_window() -> u32 {
    10
}

// Secrets stay out of logs: Debug is written by hand for the two account types.
impl fmt::Debug for SmppSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmppSettings")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("system_id", &self.system_id)
            .field("password", &"***")
            .field("password_file", &self.password_file)
            .field("source_addr", &self.source_addr)
            .field("rate_per_s", &self.rate_per_s)
            .field("window", &self.window)
            .finish()
    }
}

impl fmt::Debug for HttpSendSmsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSendSmsSettings")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"***")
            .field("access_key_secret_file", &self.access_key_secret_file)
            .field("sign_name", &self.sign_name)
            .field("template_code", &self.template_code)
            .field("rate_per_s", &self.rate_per_s)
            .finish()
    }
}

/// One problem, with the path of the field it is about (`sms.gateways[1].port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsProblem {
    /// Where.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SettingsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl GatewaySettings {
    /// `smpp` or `http_sendsms`.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewaySettings::Smpp(_) => "smpp",
            GatewaySettings::HttpSendSms(_) => "http_sendsms",
        }
    }

    /// The configured name, if any.
    pub fn configured_name(&self) -> Option<&str> {
        match self {
            GatewaySettings::Smpp(s) => s.name.as_deref(),
            GatewaySettings::HttpSendSms(s) => s.name.as_deref(),
        }
    }

    /// Submits (SMPP) or requests (HTTP) per second; 0 is no limit.
    pub fn rate_per_s(&self) -> f64 {
        match self {
            GatewaySettings::Smpp(s) => s.rate_per_s,
            GatewaySettings::HttpSendSms(s) => s.rate_per_s,
        }
    }
}

impl SmsSettings {
    /// Each gateway's name: the configured one, else its kind, numbered when a kind repeats.
    pub fn names(&self) -> Vec<String> {
        let unnamed = |kind: &str| {
            self.gateways
                .iter()
                .filter(|g| g.configured_name().is_none() && g.kind() == kind)
                .count()
        };
        self.gateways
            .iter()
            .enumerate()
            .map(|(i, g)| match g.configured_name() {
                Some(n) => n.to_string(),
                None if unnamed(g.kind()) > 1 => format!("{}{i}", g.kind()),
                None => g.kind().to_string(),
            })
            .collect()
    }

    /// Fill each gateway's secret from the environment (`env` looks a variable up) or from
    /// its `*_file`, in that order of precedence over the file's literal value. A secret
    /// given twice in the settings (the value and a file) is a problem; so is a file that
    /// cannot be read or is empty. Problems name the field and the file, never the secret.
    pub fn resolve_secrets(
        &mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), Vec<SettingsProblem>> {
        let names = self.names();
        let mut problems = Vec::new();
        for (i, g) in self.gateways.iter_mut().enumerate() {
            let (field, value, file) = match g {
                GatewaySettings::Smpp(s) => ("password", &mut s.password, &s.password_file),
                GatewaySettings::HttpSendSms(h) => (
                    "access_key_secret",
                    &mut h.access_key_secret,
                    &h.access_key_secret_file,
                ),
            };
            let var = format!(
                "FLOODCMD_SMS_{}_{}",
                env_name(&names[i]),
                field.to_ascii_uppercase()
            );
            let mut bad = |f: String, message: String| {
                problems.push(SettingsProblem {
                    path: format!("sms.gateways[{i}].{f}"),
                    message,
                })
            };
            if let Some(v) = env(&var).filter(|v| !v.is_empty()) {
                *value = v;
                continue;
            }
            let Some(path) = file else { continue };
            if !value.is_empty() {
                bad(
                    format!("{field}_file"),
                    format!("give {field} or {field}_file, not both"),
                );
                continue;
            }
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    let secret = text.trim_end_matches(['\n', '\r']);
                    if secret.is_empty() {
                        bad(format!("{field}_file"), format!("{path} is empty"));
                    } else {
                        *value = secret.to_string();
                    }
                }
                Err(e) => bad(format!("{field}_file"), format!("cannot read {path}: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Everything serde cannot check, each problem with its path.
    pub fn validate(&self) -> Result<(), Vec<SettingsProblem>> {
        let mut problems = Vec::new();
        let mut bad = |i: usize, field: &str, message: String| {
            problems.push(SettingsProblem {
                path: format!("sms.gateways[{i}].{field}"),
                message,
            })
        };
        let names = self.names();
        for (i, g) in self.gateways.iter().enumerate() {
            if let Some(j) = names[..i].iter().position(|n| *n == names[i]) {
                bad(
                    i,
                    "name",
                    format!("\"{}\" is also the name of gateways[{j}]", names[i]),
                );
            }
            if names[i].is_empty() {
                bad(i, "name", "must not be empty".into());
            }
            let rate = g.rate_per_s();
            if !rate.is_finite() || !(0.0..=100_000.0).contains(&rate) {
                bad(
                    i,
                    "rate_per_s",
                    format!("{rate} must be 0 (no limit) to 100000"),
                );
            }
            match g {
                GatewaySettings::Smpp(s) => {
                    if s.host.trim().is_empty() {
                        bad(i, "host", "must not be empty".into());
                    }
                    if !(1..=65535).contains(&s.port) {
                        bad(i, "port", format!("{} must be 1..65535", s.port));
                    }
                    // SMPP 3.4 §4.1: C-octet strings of 16, 9 and 21 octets with the NUL.
                    for (field, value, max) in [
                        ("system_id", &s.system_id, 15),
                        ("password", &s.password, 8),
                        ("source_addr", &s.source_addr, 20),
                    ] {
                        if value.is_empty() {
                            bad(i, field, "must not be empty".into());
                        } else if value.len() > max || !value.is_ascii() {
                            bad(i, field, format!("must be at most {max} ASCII characters"));
                        }
                    }
                    if !(1..=1000).contains(&s.window) {
                        bad(i, "window", format!("{} must be 1..1000", s.window));
                    }
                }
                GatewaySettings::HttpSendSms(h) => {
                    match reqwest::Url::parse(&h.url) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                        _ => bad(
                            i,
                            "url",
                            format!("\"{}\" must be an http(s) URL with a host", h.url),
                        ),
                    }
                    for (field, value) in [
                        ("access_key_id", &h.access_key_id),
                        ("access_key_secret", &h.access_key_secret),
                        ("sign_name", &h.sign_name),
                        ("template_code", &h.template_code),
                    ] {
                        if value.trim().is_empty() {
                            bad(i, field, "must not be empty".into());
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// A gateway name as it appears in an environment variable: `smpp-backup` → `SMPP_BACKUP`.
fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[gateways]]
        kind = "smpp"
        host = "127.0.0.1"
        port = 12775
        system_id = "floodcmd"
        password = "secret"
        source_addr = "10690001"
        rate_per_s = 100

        [[gateways]]
        kind = "http_sendsms"
        url = "http://127.0.0.1:8080/"
        access_key_id = "id"
        access_key_secret = "s"
        sign_name = "新城区防汛"
        template_code = "SMS_1"
        rate_per_s = 50
    "#;

    #[test]
    fn a_good_file_parses_and_validates() {
        let s: SmsSettings = toml::from_str(GOOD).unwrap();
        assert_eq!(s.gateways.len(), 2);
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.names(), vec!["smpp", "http_sendsms"]);
        match &s.gateways[0] {
            GatewaySettings::Smpp(g) => assert_eq!(g.window, 10),
            other => panic!("{other:?}"),
        }
        assert!(SmsSettings::default().validate().is_ok());
    }

    #[test]
    fn problems_name_their_fields() {
        let text = GOOD
            .replace("port = 12775", "port = 70000")
            .replace(
                "system_id = \"floodcmd\"",
                "system_id = \"a-name-much-too-long\"",
            )
            .replace("url = \"http://127.0.0.1:8080/\"", "url = \"ftp:nothing\"")
            .replace("rate_per_s = 50", "rate_per_s = -1");
        let s: SmsSettings = toml::from_str(&text).unwrap();
        let problems: Vec<String> = s
            .validate()
            .unwrap_err()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert!(
            problems.contains(&"sms.gateways[0].port: 70000 must be 1..65535".to_string()),
            "{problems:?}"
        );
        assert!(problems
            .iter()
            .any(|p| p.starts_with("sms.gateways[0].system_id:")));
        assert!(problems
            .iter()
            .any(|p| p.starts_with("sms.gateways[1].url:")));
        assert!(problems
            .iter()
            .any(|p| p.starts_with("sms.gateways[1].rate_per_s:")));
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused_by_serde() {
        assert!(toml::from_str::<SmsSettings>(&GOOD.replace("\"smpp\"", "\"cmpp\"")).is_err());
        assert!(
            toml::from_str::<SmsSettings>(&GOOD.replace("port = 12775", "port = 1\nprot = 2"))
                .is_err()
        );
    }

    #[test]
    fn repeated_kinds_get_numbered_names_and_duplicates_are_caught() {
        let g: SmsSettings = toml::from_str(GOOD).unwrap();
        let mut s = g.clone();
        s.gateways.push(g.gateways[0].clone());
        assert_eq!(s.names(), vec!["smpp0", "http_sendsms", "smpp2"]);
        assert!(s.validate().is_ok());
        if let GatewaySettings::Smpp(x) = &mut s.gateways[2] {
            x.name = Some("http_sendsms".into());
        }
        let p = s.validate().unwrap_err();
        assert_eq!(p[0].path, "sms.gateways[2].name");
    }

    #[test]
    fn debug_hides_secrets() {
        let s: SmsSettings = toml::from_str(GOOD).unwrap();
        let d = format!("{s:?}");
        assert!(!d.contains("secret\""), "{d}");
        assert!(d.contains("***"));
    }

    #[test]
    fn secrets_come_from_files_or_the_environment_and_never_show() {
        let dir = std::env::temp_dir().join(format!("floodcmd-sms-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("smpp.pw");
        std::fs::write(&pw, "pwfile1\n").unwrap();
        let text = GOOD
            .replace(
                "password = \"secret\"",
                &format!("password_file = \"{}\"", pw.display()),
            )
            .replace("access_key_secret = \"s\"\n", "");
        let mut s: SmsSettings = toml::from_str(&text).unwrap();
        s.resolve_secrets(|var| {
            (var == "FLOODCMD_SMS_HTTP_SENDSMS_ACCESS_KEY_SECRET").then(|| "ak-from-env".into())
        })
        .unwrap();
        assert_eq!(s.validate(), Ok(()));
        match (&s.gateways[0], &s.gateways[1]) {
            (GatewaySettings::Smpp(g), GatewaySettings::HttpSendSms(h)) => {
                assert_eq!(g.password, "pwfile1");
                assert_eq!(h.access_key_secret, "ak-from-env");
            }
            other => panic!("{other:?}"),
        }
        let shown = format!("{s:?} {s:#?}");
        assert!(
            !shown.contains("pwfile1") && !shown.contains("ak-from-env"),
            "{shown}"
        );
        // Both a value and a file, and a file that is not there: each named, no secret quoted.
        let twice = GOOD.replace(
            "password = \"secret\"",
            &format!(
                "password = \"secret\"\npassword_file = \"{}\"",
                pw.display()
            ),
        );
        let mut s: SmsSettings = toml::from_str(&twice).unwrap();
        let p = s.resolve_secrets(|_| None).unwrap_err();
        assert_eq!(p[0].path, "sms.gateways[0].password_file");
        let missing = GOOD.replace(
            "access_key_secret = \"s\"",
            "access_key_secret_file = \"/nonexistent/floodcmd-ak\"",
        );
        let mut s: SmsSettings = toml::from_str(&missing).unwrap();
        let p = s.resolve_secrets(|_| None).unwrap_err();
        assert_eq!(p[0].path, "sms.gateways[1].access_key_secret_file");
        assert!(p[0].message.contains("/nonexistent/floodcmd-ak"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
