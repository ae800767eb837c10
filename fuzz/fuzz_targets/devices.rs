//! The ingest devices file (`DeviceRegistry::from_toml_str`) against the sample district:
//! either a registry, or every problem with the field it is about.
#![no_main]

use floodcmd_fuzz::district;
use floodcmd_ingest::auth::DeviceRegistry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match DeviceRegistry::from_toml_str(text, district()) {
        Err(errors) => {
            assert!(!errors.0.is_empty());
            for p in &errors.0 {
                assert!(!p.path.is_empty() && !p.message.is_empty(), "{p:?}");
            }
        }
        Ok(reg) => {
            // An empty id would be the device of an MQTT topic outside the prefix.
            assert!(reg.by_id("").is_none());
        }
    }
});
