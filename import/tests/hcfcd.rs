//! The HCFCD importer against the real Hurricane Harvey files in the shared data directory.

mod common;

use floodcmd_import::hcfcd::{self, HcfcdFilter};
use floodcmd_import::ImportError;
use floodcmd_model::config::{LevelThresholds, PointKind};
use floodcmd_model::District;
use std::collections::HashMap;

fn utc(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_millis()
}

fn harvey() -> Option<floodcmd_import::Imported> {
    let dir = common::data_dir("harvey-hcfcd-5min")?;
    Some(hcfcd::import(&dir, HcfcdFilter::harvey_2017(), &mut |_, _| {}).unwrap())
}

#[test]
fn harvey_totals_match_the_data() {
    let Some(imp) = harvey() else { return };
    assert_eq!(imp.district.points.len(), 150);
    assert_eq!(imp.readings.len(), 150 * 1440);
    let mut totals: HashMap<&str, f64> = HashMap::new();
    for r in &imp.readings {
        *totals.entry(&r.sensor).or_default() += r.value;
    }
    let mut top: Vec<(&str, f64)> = totals.into_iter().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    // PROVENANCE.md: 1730 Cedar Bayou @ FM1942 51.88 in; 105 Mary's Creek 50.04; 110 Clear
    // Creek @ I-45 48.12.
    let expect = [("RN-1730", 51.88), ("RN-105", 50.04), ("RN-110", 48.12)];
    for ((sensor, mm), (want, inches)) in top.iter().zip(expect) {
        assert_eq!(*sensor, want);
        assert!((mm - inches * 25.4).abs() < 1e-6, "{sensor}: {mm} mm");
    }
    assert!(imp
        .district
        .point("RG-1730")
        .unwrap()
        .name
        .contains("Cedar Bayou"));
}

#[test]
fn site_520_spike_passes_through_at_the_right_utc_time() {
    let Some(imp) = harvey() else { return };
    // 07:20–07:25 CDT (UTC−5) on 2017-08-27 is 12:20–12:25 UTC; the reading is stamped at
    // the interval's end.
    let spike = imp
        .readings
        .iter()
        .find(|r| r.sensor == "RN-520" && r.ts_ms == utc("2017-08-27T12:25:00Z"))
        .unwrap();
    assert!((spike.value - 3.96 * 25.4).abs() < 1e-9, "{}", spike.value);
    assert!((spike.value - 100.58).abs() < 0.01);
    let biggest = imp
        .readings
        .iter()
        .filter(|r| r.sensor == "RN-520")
        .map(|r| r.value)
        .fold(0.0, f64::max);
    assert_eq!(
        biggest, spike.value,
        "the spike is the site's largest value"
    );
}

#[test]
fn harvey_district_and_time_range() {
    let Some(imp) = harvey() else { return };
    let again = District::from_toml_str(&imp.district_toml).unwrap();
    assert_eq!(again.points.len(), 150);
    assert!(imp
        .district
        .points
        .iter()
        .all(|p| p.kind == PointKind::RainGauge
            && *p.thresholds == LevelThresholds::rain_gauge_default()));
    assert_eq!(imp.district.defaults.cadence.rain_normal_s, 300);
    common::check_readings(&imp.district, &imp.readings);
    // 2017-08-25 00:00 CDT .. 2017-08-30 00:00 CDT; the first interval ends at 00:05 CDT.
    assert_eq!(imp.readings[0].ts_ms, utc("2017-08-25T05:05:00Z"));
    assert_eq!(
        imp.readings.last().unwrap().ts_ms,
        utc("2017-08-30T05:00:00Z")
    );
    let f = HcfcdFilter::harvey_2017();
    assert!(imp
        .readings
        .iter()
        .all(|r| r.ts_ms > f.from_ms && r.ts_ms <= f.to_ms));
    // Every 5 minutes, no gaps, per gauge.
    let mine: Vec<i64> = imp
        .readings
        .iter()
        .filter(|r| r.sensor == "RN-100")
        .map(|r| r.ts_ms)
        .collect();
    assert!(mine.windows(2).all(|w| w[1] - w[0] == 300_000));
}

#[test]
fn a_site_and_time_filter() {
    let Some(dir) = common::data_dir("harvey-hcfcd-5min") else {
        return;
    };
    let filter = HcfcdFilter {
        from_ms: utc("2017-08-27T12:00:00Z"),
        to_ms: utc("2017-08-27T13:00:00Z"),
        sites: Some(vec!["520".into(), "1730".into()]),
        label: "test".into(),
    };
    let mut last = (0, None);
    let imp = hcfcd::import(&dir, filter, &mut |d, t| last = (d, t)).unwrap();
    assert_eq!(imp.district.points.len(), 2);
    assert_eq!(imp.readings.len(), 2 * 12);
    assert_eq!(Some(last.0), last.1);
    assert!(imp
        .notes
        .iter()
        .any(|n| n.contains("520") && n.contains("fault")));

    let err = hcfcd::import(
        &dir,
        HcfcdFilter {
            sites: Some(vec!["9999".into()]),
            ..HcfcdFilter::harvey_2017()
        },
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(matches!(err, ImportError::UnknownInFilter { .. }), "{err}");
}
