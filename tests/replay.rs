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
        out.statuses.iter().any(|s| s.point == "RG-520"
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
