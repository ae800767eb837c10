//! Where the real data are, for the tests that read them.

use floodcmd_model::{District, Reading};
use std::path::PathBuf;

/// `$FLOODCMD_DATA_DIR`, else the copy vendored in `<repo>/data`. `None` (the test skips) only when
/// `FLOODCMD_SKIP_DATA_TESTS` is set; missing data otherwise fails the test, so a CI run
/// without the data cannot pass by testing nothing.
pub fn data_dir(folder: &str) -> Option<PathBuf> {
    let base = match std::env::var_os("FLOODCMD_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data"),
    };
    let dir = base.join(folder);
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var_os("FLOODCMD_SKIP_DATA_TESTS").is_some() {
        eprintln!(
            "skipping: {} not found and FLOODCMD_SKIP_DATA_TESTS is set",
            dir.display()
        );
        return None;
    }
    panic!(
        "real data folder {} not found: set FLOODCMD_DATA_DIR to the shared data directory \
         (the one holding floodnet-nyc/ and harvey-hcfcd-5min/), or set \
         FLOODCMD_SKIP_DATA_TESTS=1 to skip these tests",
        dir.display()
    );
}

/// Readings sorted by (ts_ms, sensor), every sensor and point known to the district, each
/// sensor's seq counting from 0.
pub fn check_readings(district: &District, readings: &[Reading]) {
    assert!(readings
        .windows(2)
        .all(|w| (w[0].ts_ms, &w[0].sensor) <= (w[1].ts_ms, &w[1].sensor)));
    let mut seq = std::collections::HashMap::new();
    for r in readings {
        let s = district
            .sensor(&r.sensor)
            .unwrap_or_else(|| panic!("unknown sensor {}", r.sensor));
        assert_eq!(s.point.id, r.point);
        assert_eq!(s.sensor.kind, r.kind);
        assert_eq!(r.received_ms, r.ts_ms);
        let next = seq.entry(r.sensor.clone()).or_insert(0u64);
        assert_eq!(r.seq, Some(*next), "{}", r.sensor);
        *next += 1;
        let (lo, hi) = r.kind.physical_range();
        assert!(r.value >= lo && r.value <= hi, "{r:?}");
    }
}
