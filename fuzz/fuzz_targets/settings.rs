//! The runtime settings file and its `FLOODCMD_*` overrides (`Settings::load`), then what is
//! built from them: the wall's users (`Auth::new`, which parses their password hashes) and the
//! `[sms]` gateways (`SmsSettings`, decoded and validated as `floodcmd run` does). The input
//! is the TOML text, then, after a NUL byte, `KEY=value` lines for the environment. Either the
//! settings load, or every problem names where and what.
#![no_main]

use floodcmd_dashboard::auth::{Auth, AuthConfig};
use floodcmd_model::settings::Settings;
use floodcmd_model::time::ManualClock;
use floodcmd_sms::SmsSettings;
// The allocation limits (`LimitedAlloc`) are in the shared crate.
use floodcmd_fuzz as _;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (source, env) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match Settings::load(source, env) {
        Err(errors) => {
            assert!(!errors.0.is_empty());
            for p in &errors.0 {
                assert!(!p.path.is_empty() && !p.message.is_empty(), "{p:?}");
            }
        }
        Ok(settings) => {
            let users = settings.dashboard.users.clone();
            let auth = Auth::new(
                AuthConfig {
                    users: users.clone(),
                    anonymous: settings.dashboard.anonymous,
                    session_ms: settings.dashboard.session_h as i64 * 3_600_000,
                    login_per_min: settings.dashboard.login_per_min,
                    actions_per_min: settings.dashboard.actions_per_min,
                },
                Arc::new(ManualClock::new(0)),
            );
            for u in users.iter().take(4) {
                // The hash is valid (the settings checked it): a wrong password is refused.
                assert!(auth.login(&u.name, "not the password").is_err());
            }
            match toml::Value::Table(settings.sms.clone()).try_into::<SmsSettings>() {
                Ok(sms) => {
                    let _ = sms.names();
                    if let Err(problems) = sms.validate() {
                        assert!(!problems.is_empty());
                        for p in &problems {
                            assert!(!p.path.is_empty() && !p.message.is_empty(), "{p:?}");
                        }
                    }
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
});
