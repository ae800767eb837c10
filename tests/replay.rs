//! Replays of real recorded storms (the copies in `data/`): import → archive → replay through
//! the stream dataflow and the incident book → storm report. Checks what the storms must show
//! (Ida's red at Carroll St / 4th Ave; Harvey's rain levels at the wettest gauges; site 520's
//! faulty spike flagged, raising nothing), that worker counts do not change the report, and
//! that a replay captures its notifications as drill and sends nothing.

use floodcmd::replay::{replay, ReplayOptions, ReplayOutcome};
use floodcmd::storm_report::StormReport;
use floodcmd_archive::{ArchiveHeader, ArchiveReader, ArchiveWriter};
use floodcmd_import::Imported;
use floodcmd_model::event::TransitionKind;
use floodcmd_model::Level;
use std::path::PathBuf;
use std::sync::Arc;

fn data(folder: &str) -> PathBuf {
    let base = std::env::var_os("FLOODCMD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data"));
    base.join(folder)
}

/// Import, write the archive, read it back and replay it with `workers`.
async fn replay_imported(
    imported: &Imported,
    workers: usize,
    dir: &std::path::Path,
) -> (ReplayOutcome, StormReport) {
    let path = dir.join(format!("storm-{workers}.ndjson.gz"));
    let header = ArchiveHeader::new(
        imported.source.clone(),
        imported.district.info.name.clone(),
        imported.district_toml.clone(),
        0,
    );
    let mut w = ArchiveWriter::create(&path, header).unwrap();
    for r in &imported.readings {
        w.write(r).unwrap();
    }
    w.finish().unwrap();
    let (header, reader) = ArchiveReader::open(&path).unwrap();
    let district = Arc::new(header.district().unwrap());
    let opts = ReplayOptions {
        workers,
        ..ReplayOptions::default()
    };
    let outcome = replay(
        district.clone(),
        reader,
        header.readings,
        &opts,
        &mut |_, _| {},
    )
    .await
    .unwrap();
    let report = outcome.report(&district, &header.source, workers);
    (outcome, report)
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "floodcmd-replay-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ida_replay_raises_red_at_carroll_st_and_is_the_same_at_any_worker_count() {
    let imported = floodcmd_import::floodnet::import(
        &data("floodnet-nyc"),
        floodcmd_import::floodnet::FloodnetFilter::ida_2021(),
        &mut |_, _| {},
    )
    .unwrap();
    let dir = tempdir();
    let (one, r1) = replay_imported(&imported, 1, &dir).await;
    let (_, r2) = replay_imported(&imported, 2, &dir).await;
    let (_, r4) = replay_imported(&imported, 4, &dir).await;
    assert_eq!(r1.storm, r2.storm, "1 vs 2 workers");
    assert_eq!(r1.storm, r4.storm, "1 vs 4 workers");

    let carroll = "LP-BK-carroll-st-4th-av-0ery00";
    let red = one
        .transitions
        .iter()
        .find(|t| t.point == carroll && t.to == Level::Red)
        .expect("Carroll St / 4th Ave reaches red in the Ida replay");
    assert!(matches!(
        red.transition,
        TransitionKind::Raised | TransitionKind::Upgraded
    ));
    let p = r1.storm.points.iter().find(|p| p.id == carroll).unwrap();
    assert_eq!(p.peak_level, "red");
    assert!(p.first_reached.contains_key("red"));
    assert!(p.peak_depth_cm.unwrap() > 40.0, "{p:?}");
    // A red water incident for the point, and its notifications captured as drill.
    assert!(one
        .incidents
        .iter()
        .any(|i| i.point_id == carroll && i.peak_level == Level::Red));
    let about: Vec<_> = one
        .notifications
        .iter()
        .filter(|n| n.point == carroll && n.level == Level::Red)
        .collect();
    assert!(!about.is_empty(), "red notifications for Carroll St");
    assert!(
        one.notifications.iter().all(|n| n.drill),
        "a replay only captures"
    );
    let md = r1.markdown();
    assert!(md.contains(carroll) && md.contains("红色"), "{md}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harvey_replay_raises_rain_levels_at_the_wettest_gauges_and_site_520s_spike_raises_nothing()
{
    let imported = floodcmd_import::hcfcd::import(
        &data("harvey-hcfcd-5min"),
        floodcmd_import::hcfcd::HcfcdFilter::harvey_2017(),
        &mut |_, _| {},
    )
    .unwrap();
    let dir = tempdir();
    let (out, report) = replay_imported(&imported, 2, &dir).await;
    let (_, report1) = replay_imported(&imported, 1, &dir).await;
    assert_eq!(report.storm, report1.storm, "1 vs 2 workers");

    // The three wettest gauges over the five days (51.9, 50.0, 48.1 in) reach red.
    for gauge in ["RG-1730", "RG-105", "RG-110"] {
        let p = report
            .storm
            .points
            .iter()
            .find(|p| p.id == gauge)
            .unwrap_or_else(|| panic!("{gauge} in the report"));
        assert_eq!(p.peak_level, "red", "{p:?}");
        assert!(p.peak_rain_24h_mm.unwrap() > 300.0, "{p:?}");
        for level in ["blue", "yellow", "orange", "red"] {
            assert!(p.first_reached.contains_key(level), "{gauge} {level}");
        }
    }

    // Site 520's 100.6 mm in the 5 minutes to 12:25 UTC on 27 Aug is a fault: flagged, kept
    // out of the totals, and it causes no transition.
    let spike_ms = 1_503_836_700_000; // 2017-08-27T12:25:00Z
    let p520 = report
        .storm
        .points
        .iter()
        .find(|p| p.id == "RG-520")
        .unwrap();
    assert!(
        p520.qc_flags.contains_key("rain_intensity"),
        "the spike is flagged: {p520:?}"
    );
    assert!(
        p520.peak_rain_1h_mm.unwrap() < 100.0,
        "the spike stays out of the totals: {p520:?}"
    );
    assert!(
        out.flagged_statuses.iter().any(|s| s.point == "RG-520"
            && s.last_reading_ms == Some(spike_ms)
            && !s.qc_flags.is_empty()),
        "the status at the spike carries its flag"
    );
    assert!(
        !out.transitions
            .iter()
            .any(|t| t.point == "RG-520" && t.event_ms == spike_ms),
        "the spike raises nothing on its own"
    );
    assert!(out.notifications.iter().all(|n| n.drill));
    std::fs::remove_dir_all(dir).ok();
}

fn paced_bus(from_ms: i64) -> floodcmd::replay::PacedBus {
    floodcmd::replay::PacedBus {
        bus: floodcmd_bus::EmbeddedBus::new(65_536),
        topics: floodcmd_model::topic::Topics::new("replay"),
        clock: floodcmd_model::time::ManualClock::new(from_ms),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_replay_equals_the_max_speed_one_at_60x() {
    // Ida at Carroll St and its neighbours, 01:30–02:10 UTC: the rise to red.
    let mut filter = floodcmd_import::floodnet::FloodnetFilter::ida_2021();
    filter.from_ms = 1_630_546_200_000; // 2021-09-02T01:30:00Z
    filter.to_ms = 1_630_548_600_000; // 2021-09-02T02:10:00Z
    let imported =
        floodcmd_import::floodnet::import(&data("floodnet-nyc"), filter, &mut |_, _| {}).unwrap();
    let district = Arc::new(imported.district.clone());
    let from = imported.readings[0].ts_ms;
    let max = replay(
        district.clone(),
        imported.readings.clone().into_iter().map(Ok),
        imported.readings.len() as u64,
        &ReplayOptions::default(),
        &mut |_, _| {},
    )
    .await
    .unwrap();
    let paced = floodcmd::replay::replay_paced(
        district.clone(),
        imported.readings.clone(),
        60.0,
        &ReplayOptions {
            workers: 1,
            ..ReplayOptions::default()
        },
        paced_bus(from),
        &mut |_, _| {},
    )
    .await
    .unwrap();
    assert!(
        max.transitions.iter().any(|t| t.to == Level::Red),
        "the slice reaches red"
    );
    let strip = |o: &ReplayOutcome| -> Vec<_> {
        o.transitions
            .iter()
            .map(|t| {
                let mut t = t.clone();
                t.processed_ms = 0;
                t
            })
            .collect()
    };
    assert_eq!(strip(&max), strip(&paced), "transitions at max and at 60×");
    assert_eq!(max.notifications, paced.notifications);
    assert_eq!(
        max.report(&district, "ida", 2).storm,
        paced.report(&district, "ida", 1).storm
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_replay_equals_the_max_speed_one_at_1x() {
    // Ten seconds of one underpass rising through blue at 9 cm/min (inside QC's rate limit),
    // with no hold time, so something happens within a test's patience at real time.
    let mut file = floodcmd_sim::synthetic_district(3);
    file.defaults.underpass.blue.hold_s = 0;
    let district = Arc::new(floodcmd_model::District::from_file(file).unwrap());
    let sensor = district
        .sensors()
        .find(|s| s.point.kind == floodcmd_model::config::PointKind::Underpass)
        .unwrap();
    let t0 = 1_783_000_000_000i64;
    let readings: Vec<floodcmd_model::Reading> = (0..11)
        .map(|i| floodcmd_model::Reading {
            sensor: sensor.sensor.id.as_str().into(),
            point: sensor.point.id.as_str().into(),
            kind: floodcmd_model::SensorKind::Depth,
            ts_ms: t0 + i * 1000,
            value: 9.0 + 0.15 * i as f64,
            seq: Some(i as u64),
            received_ms: t0 + i * 1000,
        })
        .collect();
    let max = replay(
        district.clone(),
        readings.clone().into_iter().map(Ok),
        readings.len() as u64,
        &ReplayOptions::default(),
        &mut |_, _| {},
    )
    .await
    .unwrap();
    let paced = floodcmd::replay::replay_paced(
        district.clone(),
        readings.clone(),
        1.0,
        &ReplayOptions::default(),
        paced_bus(t0),
        &mut |_, _| {},
    )
    .await
    .unwrap();
    assert!(
        max.transitions
            .iter()
            .any(|t| t.point == sensor.point.id && t.to == Level::Blue),
        "{:?}",
        max.transitions
    );
    assert_eq!(
        max.report(&district, "s", 2).storm,
        paced.report(&district, "s", 2).storm
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_gives_the_lead_time_from_a_linked_gauge_to_its_depth_point() {
    // UP-01 (尚德门下穿) is linked to rain gauge RG-02. Heavy rain from minute 0 trips the
    // gauge's short-duration rule (20 mm/h) within minutes; the underpass fills from minute 20
    // at 5 cm/min and crosses blue (10 cm) two minutes later, held 30 s.
    let district =
        Arc::new(floodcmd_model::District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    let gauge = district.point("RG-02").unwrap();
    let up = district.point("UP-01").unwrap();
    assert_eq!(up.rain_gauge.as_deref(), Some("RG-02"));
    let t0 = 1_783_000_000_000i64;
    let mut readings = Vec::new();
    for m in 0..40i64 {
        let ts = t0 + m * 60_000;
        readings.push(floodcmd_model::Reading {
            sensor: gauge.sensors[0].id.as_str().into(),
            point: gauge.id.as_str().into(),
            kind: floodcmd_model::SensorKind::Rain,
            ts_ms: ts,
            value: 2.0,
            seq: Some(m as u64),
            received_ms: ts,
        });
        readings.push(floodcmd_model::Reading {
            sensor: up.sensors[0].id.as_str().into(),
            point: up.id.as_str().into(),
            kind: floodcmd_model::SensorKind::Depth,
            ts_ms: ts,
            value: ((m - 20).max(0) * 5) as f64,
            seq: Some(m as u64),
            received_ms: ts,
        });
    }
    readings.sort_by(|a, b| (a.ts_ms, &a.sensor).cmp(&(b.ts_ms, &b.sensor)));
    let out = replay(
        district.clone(),
        readings.clone().into_iter().map(Ok),
        readings.len() as u64,
        &ReplayOptions::default(),
        &mut |_, _| {},
    )
    .await
    .unwrap();
    let report = out.report(&district, "test", 2);
    let lead = report
        .storm
        .lead_times
        .iter()
        .find(|l| l.gauge == "RG-02" && l.point == "UP-01")
        .expect("a lead time for UP-01");
    let first = |p: &str| {
        out.transitions
            .iter()
            .find(|t| t.point == p && t.transition == TransitionKind::Raised)
            .map(|t| t.event_ms)
            .unwrap()
    };
    let expected = (first("UP-01") - first("RG-02")) as f64 / 60_000.0;
    assert!(
        expected > 10.0,
        "the rain rule fires well before the depth rule: {expected}"
    );
    assert!(
        (lead.lead_min.unwrap() - expected).abs() < 0.06,
        "{lead:?} vs {expected}"
    );
    assert!(report.markdown().contains("RG-02"));
}
