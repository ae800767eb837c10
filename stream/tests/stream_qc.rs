//! Quality control from the duty room's side: a sensor that lies does not raise a level, a
//! stuck sensor is shown as suspect, and a real fast rise still raises, one reading later.

mod common;

use common::{
    depth, depth_series, district, district_with, level_moves, run_with, statuses, LATENESS_MS, T0,
};
use floodcmd_model::event::{QcFlag, TransitionKind};
use floodcmd_model::time::Millis;
use floodcmd_model::{DataState, District, Level};
use std::sync::Arc;

const EVERY: Millis = 30_000;

/// The sample district, but underpasses raise the moment the water crosses a threshold
/// (hold 0): there a lying reading would raise a level at once if quality control let it.
fn raises_at_once() -> Arc<District> {
    district_with(&[("hold_s = 30\n", "hold_s = 0\n")])
}

fn at(i: i64) -> Millis {
    T0 + i * EVERY
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_spike_raises_nothing_even_where_levels_raise_at_once() {
    let d = raises_at_once();
    let mut depths = vec![5.0; 10];
    depths.push(40.0);
    depths.extend([5.0; 5]);
    let v = depth_series(&d, "WL-UP-02", T0, EVERY, &depths);
    let (alerts, status) = run_with(d, &v, 2, LATENESS_MS).await;
    assert_eq!(level_moves(&alerts, "UP-02"), vec![], "{alerts:#?}");
    let up02 = statuses(&status, "UP-02");
    let spike = up02
        .iter()
        .find(|s| s.last_reading_ms == Some(at(10)))
        .expect("a status for the spike's epoch");
    assert_eq!(spike.data_state, DataState::Suspect);
    assert!(spike.qc_flags.contains(&QcFlag::Spike), "{spike:?}");
    assert_eq!(
        spike.depth_cm,
        Some(5.0),
        "the spike is not the point's depth"
    );
    let last = up02.last().expect("statuses");
    assert_eq!(
        (last.data_state, last.qc_flags.as_slice(), last.level),
        (DataState::Fresh, &[][..], Level::Normal),
        "trusted again once readings are normal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_sensor_becomes_suspect_and_keeps_its_level() {
    let d = district();
    // The same 12 cm every minute for 40 minutes, then a different value.
    let mut v = depth_series(&d, "WL-LP-02", T0, 60_000, &[12.0; 41]);
    v.push(depth(&d, "WL-LP-02", T0 + 41 * 60_000, 11.0));
    let (alerts, status) = run_with(d, &v, 1, LATENESS_MS).await;
    use Level::*;
    use TransitionKind::*;
    assert_eq!(
        level_moves(&alerts, "LP-02"),
        vec![(Raised, Normal, Blue, T0 + 60_000)],
        "blue once held for a minute, never cleared by the stuck readings"
    );
    let lp02 = statuses(&status, "LP-02");
    let first_stuck = lp02
        .iter()
        .find(|s| s.qc_flags.contains(&QcFlag::Stuck))
        .expect("the stuck sensor is flagged");
    assert_eq!(
        first_stuck.last_reading_ms,
        Some(T0 + 30 * 60_000),
        "after 30 minutes and at least 10 readings"
    );
    assert_eq!(
        (first_stuck.data_state, first_stuck.level),
        (DataState::Suspect, Blue)
    );
    let last = lp02.last().expect("statuses");
    assert_eq!(
        (last.data_state, last.depth_cm),
        (DataState::Fresh, Some(11.0)),
        "a changing value is trusted again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_jump_is_flagged_and_raises_nothing() {
    let d = raises_at_once();
    // 6 → 18 cm in 30 s is 24 cm/min: not a spike by the median (12 cm), but no street
    // floods that fast.
    let v = depth_series(&d, "WL-UP-04", T0, EVERY, &[6.0, 6.0, 6.0, 18.0, 6.5, 6.0]);
    let (alerts, status) = run_with(d, &v, 2, LATENESS_MS).await;
    assert_eq!(level_moves(&alerts, "UP-04"), vec![], "{alerts:#?}");
    let jump = statuses(&status, "UP-04")
        .into_iter()
        .find(|s| s.last_reading_ms == Some(at(3)))
        .expect("a status for the jump's epoch");
    assert_eq!(jump.qc_flags, vec![QcFlag::Rate]);
    assert_eq!(jump.data_state, DataState::Suspect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rise_confirmed_by_the_next_reading_still_raises() {
    let depths = [5.0, 5.0, 5.0, 5.0, 30.0, 31.0, 32.0];
    use Level::*;
    use TransitionKind::*;

    // Underpass hold 30 s: the held reading counts from its own time, so the confirming
    // reading 30 s later completes the hold.
    let d = district();
    let v = depth_series(&d, "WL-UP-06", T0, EVERY, &depths);
    let (alerts, status) = run_with(d, &v, 2, LATENESS_MS).await;
    assert_eq!(
        level_moves(&alerts, "UP-06"),
        vec![(Raised, Normal, Red, at(5))]
    );
    let up06 = statuses(&status, "UP-06");
    let held = up06
        .iter()
        .find(|s| s.last_reading_ms == Some(at(4)))
        .expect("a status for the first high reading");
    assert_eq!(
        (held.data_state, held.level),
        (DataState::Suspect, Normal),
        "one high reading alone is suspect"
    );
    let confirmed = up06
        .iter()
        .find(|s| s.last_reading_ms == Some(at(5)))
        .expect("a status for the confirming reading");
    assert_eq!(
        (confirmed.data_state, confirmed.level, confirmed.depth_cm),
        (DataState::Fresh, Red, Some(31.0))
    );

    // Where levels raise at once, the transition carries the first high reading's time.
    let d = raises_at_once();
    let v = depth_series(&d, "WL-UP-06", T0, EVERY, &depths);
    let (alerts, _) = run_with(d, &v, 1, LATENESS_MS).await;
    assert_eq!(
        level_moves(&alerts, "UP-06"),
        vec![(Raised, Normal, Red, at(4))]
    );
}

/// A point with two depth sensors: each reading calibrated by its own sensor's offset, the
/// point's depth the higher of the two sensors' latest. A reading that names the point but comes
/// from a sensor the config does not list for it is taken as it is, uncalibrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sensor_of_a_point_is_calibrated_on_its_own_and_the_point_shows_the_higher() {
    let d = district();
    let mut stranger = common::reading(&d, "WL-UP-02", at(3), 15.0);
    stranger.point = "UP-01".into();
    let readings = vec![
        common::reading(&d, "WL-UP-01", at(0), 10.0), // offset 0: 10 cm
        common::reading(&d, "WL-UP-01-B", at(1), 12.0), // offset 1: 13 cm
        common::reading(&d, "WL-UP-01", at(2), 11.0), // 11 cm; the other still says 13
        stranger,                                     // WL-UP-02 is not UP-01's: 15 cm as sent
    ];
    for workers in [1, 2] {
        let (_, status) = run_with(d.clone(), &readings, workers, LATENESS_MS).await;
        let depths: Vec<(Option<Millis>, Option<f64>)> = statuses(&status, "UP-01")
            .iter()
            .filter(|s| s.last_reading_ms.is_some())
            .map(|s| (s.last_reading_ms, s.depth_cm))
            .collect();
        assert_eq!(
            depths,
            vec![
                (Some(at(0)), Some(10.0)),
                (Some(at(1)), Some(13.0)),
                (Some(at(2)), Some(13.0)),
                (Some(at(3)), Some(15.0)),
            ],
            "{workers} workers"
        );
    }
}
