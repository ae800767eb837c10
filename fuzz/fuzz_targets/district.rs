//! A district file (`District::from_toml_str`): either a district whose every reference
//! resolves, or every problem with the field it is about.
#![no_main]

use floodcmd_model::District;
// The allocation limits (`LimitedAlloc`) are in the shared crate.
use floodcmd_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match District::from_toml_str(text) {
        Err(errors) => {
            assert!(!errors.0.is_empty());
            for p in &errors.0 {
                assert!(!p.path.is_empty() && !p.message.is_empty(), "{p:?}");
            }
        }
        Ok(d) => {
            for s in d.sensors() {
                let found = d.sensor(&s.sensor.id).expect("every sensor is indexed");
                assert_eq!(found.point.id, s.point.id);
            }
            for p in &d.points {
                assert!(d.point(&p.id).is_some());
                let _ = d.sub_district_name(&p.id);
            }
            let _ = d.summary();
        }
    }
});
