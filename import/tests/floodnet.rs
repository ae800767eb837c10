//! The FloodNet importer against the real files in the shared data directory.

mod common;

use floodcmd_archive::{ArchiveHeader, ArchiveReader, ArchiveWriter};
use floodcmd_import::floodnet::{self, FloodnetFilter};
use floodcmd_import::ImportError;
use floodcmd_model::config::PointKind;
use floodcmd_model::{District, Reading};

const CARROLL: &str = "BK-carroll-st-4th-av-0ery00";

fn ida() -> Option<floodcmd_import::Imported> {
    let dir = common::data_dir("floodnet-nyc")?;
    Some(floodnet::import(&dir, FloodnetFilter::ida_2021(), &mut |_, _| {}).unwrap())
}

#[test]
fn ida_has_carroll_street_above_red() {
    let Some(imp) = ida() else { return };
    // Find the sensor the way a person would: by its streets.
    let point = imp
        .district
        .points
        .iter()
        .find(|p| p.name.contains("Carroll St/4th Av"))
        .expect("Carroll St / 4th Av is in the Ida import");
    assert_eq!(point.kind, PointKind::LowPoint);
    assert_eq!(point.sensors[0].id, CARROLL);
    assert!((point.lat - 40.676281).abs() < 1e-9 && (point.lon + 73.984089).abs() < 1e-9);
    let red = point.thresholds.red.raise;
    assert_eq!(red, 40.0);
    let peak = imp
        .readings
        .iter()
        .filter(|r| r.sensor == CARROLL)
        .map(|r| r.value)
        .fold(f64::MIN, f64::max);
    // 35.59 in, the Ida peak in the data.
    assert!((peak - 35.59 * 2.54).abs() < 1e-9, "peak {peak}");
    assert!(peak > red);
}

#[test]
fn ida_district_reparses_and_readings_are_sorted_and_in_range() {
    let Some(imp) = ida() else { return };
    let again = District::from_toml_str(&imp.district_toml).unwrap();
    assert_eq!(again.points.len(), imp.district.points.len());
    assert_eq!(imp.district.points.len(), 5, "{:?}", imp.notes);
    assert!(imp.district.points.iter().all(|p| p.sensors.len() == 1));
    assert_eq!(imp.district.defaults.cadence.depth_storm_s, 60);
    common::check_readings(&imp.district, &imp.readings);
    let f = FloodnetFilter::ida_2021();
    assert!(imp
        .readings
        .iter()
        .all(|r| r.ts_ms >= f.from_ms && r.ts_ms < f.to_ms));
    // Each sensor starts and ends dry, so levels clear.
    for p in &imp.district.points {
        let mine: Vec<&Reading> = imp
            .readings
            .iter()
            .filter(|r| r.sensor == p.sensors[0].id)
            .collect();
        assert!(mine.len() > 10, "{}", p.id);
        assert_eq!(mine[0].value, 0.0);
        assert_eq!(mine[mine.len() - 1].value, 0.0);
    }
    // Ida's events began 2021-09-02 00:11Z; the first (added) zero is a minute earlier.
    assert_eq!(imp.readings[0].ts_ms, 1_630_541_518_000 - 60_000);
    assert!(imp.source.contains("Hurricane Ida"));
    // The chain is complete for every point (the validator guarantees it; spot-check).
    let c = &imp.district.point(&format!("LP-{CARROLL}")).unwrap().chain;
    assert!(c.owner_a.phone.starts_with("1380000") && c.owner_a.id != c.owner_b.id);
    assert_eq!(
        imp.district
            .sub_district_name(&imp.district.points[0].sub_district),
        "Brooklyn"
    );
}

#[test]
fn the_ida_trace_matches_the_derived_long_file() {
    // The derived CSV was flattened independently (PROVENANCE.md); the importer's timestamp
    // arithmetic must agree with it sample for sample.
    let Some(dir) = common::data_dir("floodnet-nyc") else {
        return;
    };
    let imp = ida().unwrap();
    let text =
        std::fs::read_to_string(dir.join("derived_floodnet_ida2021_and_2023-09-29_depth_long.csv"))
            .unwrap();
    let mut n = 0;
    for line in text.lines().skip(1).filter(|l| l.starts_with("ida_2021")) {
        let f: Vec<&str> = line.split(',').collect();
        let (sensor, ts, inches) = (f[1], f[f.len() - 2], f[f.len() - 1]);
        let ts = chrono::DateTime::parse_from_rfc3339(ts)
            .unwrap()
            .timestamp_millis();
        let cm = inches.parse::<f64>().unwrap() * 2.54;
        assert!(
            imp.readings
                .iter()
                .any(|r| r.sensor == sensor && r.ts_ms == ts && (r.value - cm).abs() < 1e-9),
            "{line}"
        );
        n += 1;
    }
    assert!(n > 100);
    let real = imp.readings.len() - imp.readings.iter().filter(|r| r.value == 0.0).count();
    assert!(real <= n);
}

#[test]
fn a_sensor_filter_keeps_one_sensor_and_reports_progress() {
    let Some(dir) = common::data_dir("floodnet-nyc") else {
        return;
    };
    let mut calls = 0u64;
    let mut last = (0, None);
    let filter = FloodnetFilter {
        sensors: Some(vec![CARROLL.into()]),
        ..FloodnetFilter::ida_2021()
    };
    let imp = floodnet::import(&dir, filter, &mut |done, total| {
        calls += 1;
        last = (done, total);
    })
    .unwrap();
    assert_eq!(imp.district.points.len(), 1);
    assert!(imp.readings.iter().all(|r| r.sensor == CARROLL));
    assert!(calls > 1000, "one call per event row");
    assert_eq!(Some(last.0), last.1, "ends at the file size");

    let err = floodnet::import(
        &dir,
        FloodnetFilter {
            sensors: Some(vec!["BK-nowhere".into()]),
            ..FloodnetFilter::ida_2021()
        },
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(matches!(err, ImportError::UnknownInFilter { .. }), "{err}");
}

#[test]
fn the_2023_storm_and_accented_ids() {
    let Some(dir) = common::data_dir("floodnet-nyc") else {
        return;
    };
    // The whole record: every sensor with an event, ids folded to ASCII.
    let imp = floodnet::import(
        &dir,
        FloodnetFilter {
            from_ms: 0,
            to_ms: i64::MAX / 2,
            sensors: None,
            label: "all".into(),
        },
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(imp.district.points.len(), 232, "232 sensors have events");
    assert!(imp
        .district
        .sensors()
        .all(|s| s.sensor.id.is_ascii() && !s.sensor.id.contains(' ')));
    common::check_readings(&imp.district, &imp.readings);
    District::from_toml_str(&imp.district_toml).unwrap();
}

#[test]
fn a_broken_profile_names_file_line_and_column() {
    let Some(dir) = common::data_dir("floodnet-nyc") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("sensor-metadata.csv"),
        tmp.path().join("sensor-metadata.csv"),
    )
    .unwrap();
    let header = "\"sensor_name\",\"sensor_id\",\"flood_start_time\",\"flood_end_time\",\"max_depth_inches\",\"onset_time_mins\",\"drain_time_mins\",\"duration_mins\",\"duration_above_4_inches_mins\",\"duration_above_12_inches_mins\",\"duration_above_24_inches_mins\",\"flood_profile_depth_inches\",\"flood_profile_time_secs\"";
    let good = "\"BK - Carroll St/4th Av\",\"BK-carroll-st-4th-av-0ery00\",\"2021-09-02T01:27:16.000\",\"2021-09-02T03:11:26.000\",\"1\",\"1\",\"1\",\"1\",\"0\",\"0\",\"0\",\"[0.00, 1.0]\",\"[0, 300]\"";
    let bad = good.replace("[0.00, 1.0]", "[0.00, oops]");
    std::fs::write(
        tmp.path().join("flood-events.csv"),
        format!("{header}\n{good}\n{bad}\n"),
    )
    .unwrap();
    let err = floodnet::import(tmp.path(), FloodnetFilter::ida_2021(), &mut |_, _| {}).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, ImportError::Field { line: 3, column, .. } if column == "flood_profile_depth_inches"),
        "{msg}"
    );
    assert!(
        msg.contains("flood-events.csv") && msg.contains("line 3"),
        "{msg}"
    );
}

/// An imported storm written as an archive reads back whole: the header's district validates
/// and the readings come back equal, in order.
#[test]
fn ida_import_round_trips_through_an_archive() {
    let Some(dir) = common::data_dir("floodnet-nyc") else {
        return;
    };
    let imp = floodnet::import(&dir, FloodnetFilter::ida_2021(), &mut |_, _| {}).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ida-2021.ndjson.gz");
    let header = ArchiveHeader::new(
        imp.source.clone(),
        imp.district.info.name.clone(),
        imp.district_toml.clone(),
        0,
    );
    let mut w = ArchiveWriter::create(&path, header).unwrap();
    for r in &imp.readings {
        w.write(r).unwrap();
    }
    let written = w.finish().unwrap();
    assert_eq!(written.readings, imp.readings.len() as u64);

    let (h, rest) = ArchiveReader::open(&path).unwrap();
    let district = h.district().unwrap();
    assert_eq!(district.points.len(), imp.district.points.len());
    let back: Vec<Reading> = rest.map(Result::unwrap).collect();
    assert_eq!(back, imp.readings);
    assert_eq!(h.from_ms, imp.readings[0].ts_ms);
}
