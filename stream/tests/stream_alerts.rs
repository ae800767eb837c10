//! The stream stage from the bus's side: readings in, alert transitions out, the same whatever
//! the worker count or arrival order; late readings flagged; silence never reads as normal.

mod common;

use common::{by_point, depth_series, district, level_moves, reading, run, LATENESS_MS, T0};
use floodcmd_model::event::{AlertTransition, TransitionKind};
use floodcmd_model::time::Millis;
use floodcmd_model::{DataState, District, Level, Reading, SensorKind};

/// A storm: UP-01 rises to about 40 cm and drains; UP-04 rises to about 18 cm; RG-01 gets a
/// downpour; LP-01 reports dry; UP-03 reports a little water, then goes silent.
fn storm(d: &District) -> Vec<Reading> {
    let mut v = Vec::new();
    for i in 0..120i64 {
        let ts = T0 + i * 30_000;
        let x = i as f64;
        let up01 = if i < 60 {
            x * 0.7
        } else {
            (42.0 - (x - 60.0) * 1.0).max(0.0)
        } - d.sensor("WL-UP-01").unwrap().sensor.calibration_offset_cm;
        v.push(reading(d, "WL-UP-01", ts, up01.max(0.0)));
        let up04 = 18.0 * (-(x - 50.0).powi(2) / 400.0).exp()
            - d.sensor("WL-UP-04").unwrap().sensor.calibration_offset_cm;
        v.push(reading(d, "WL-UP-04", ts + 7_000, up04.max(0.0)));
        let rain = if (20..50).contains(&i) { 1.8 } else { 0.1 };
        v.push(reading(d, "RN-RG-01", ts + 3_000, rain));
        v.push(reading(d, "WL-LP-01", ts + 11_000, 0.0));
        if i < 20 {
            v.push(reading(d, "WL-UP-03", ts + 13_000, 2.0));
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rising_underpass_goes_red_and_back_with_hysteresis() {
    let d = district();
    let (alerts, status) = run(&storm(&d), 1, LATENESS_MS).await;
    let m = by_point(&alerts);
    let up01: Vec<(TransitionKind, Level)> = m["UP-01"].iter().map(|x| (x.0, x.2)).collect();
    use Level::*;
    use TransitionKind::*;
    assert_eq!(
        up01,
        vec![
            (Raised, Blue),
            (Upgraded, Yellow),
            (Upgraded, Orange),
            (Upgraded, Red),
            (Downgraded, Orange),
            (Downgraded, Yellow),
            (Downgraded, Blue),
            (Cleared, Normal)
        ],
        "{:#?}",
        m["UP-01"]
    );
    let red = m["UP-01"].iter().find(|x| x.2 == Red).unwrap();
    assert!(
        red.4.contains("depth") && red.4.contains(">= red 25 cm"),
        "the rule is named: {}",
        red.4
    );
    assert!(
        m["UP-04"].iter().all(|x| x.2 <= Yellow),
        "UP-04 peaks at 18 cm: {:?}",
        m["UP-04"]
    );
    let rg: Vec<Level> = m["RG-01"].iter().map(|x| x.2).collect();
    assert!(
        rg.contains(&Orange),
        "54 mm in 15 minutes is ≥ 50 mm in 3 h: {rg:?}"
    );
    assert!(
        !m.contains_key("LP-01") || m["LP-01"].iter().all(|x| x.0 != Raised),
        "a dry point raises nothing"
    );
    let last_up01 = status.iter().rev().find(|s| s.point == "UP-01").unwrap();
    assert_eq!(last_up01.level, Normal);
    assert!(
        status
            .iter()
            .any(|s| s.point == "UP-01" && s.rise_cm_per_min.is_some_and(|r| r > 0.5)),
        "rate of rise is reported"
    );
}

/// `ordered` in another arrival order, seeded: no reading arrives more than half the
/// lateness budget after a newer one, so every outcome must stay as it was.
fn shuffled_within_half_the_budget(ordered: &[Reading], mut seed: u64) -> Vec<Reading> {
    let mut keyed: Vec<(Millis, Reading)> = ordered
        .iter()
        .map(|r| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (
                r.ts_ms + ((seed >> 33) % (LATENESS_MS as u64 / 2)) as Millis,
                r.clone(),
            )
        })
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, r)| r).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_readings_give_the_same_alerts_for_1_2_and_4_workers_and_any_order_within_the_budget(
) {
    let d = district();
    let ordered = storm(&d);
    let shuffled = shuffled_within_half_the_budget(&ordered, 42);
    assert_ne!(shuffled, ordered, "the shuffle changed the order");

    let (base, _) = run(&ordered, 1, LATENESS_MS).await;
    let base = by_point(&base);
    assert!(base.len() >= 4, "{base:?}");
    for workers in [2, 4] {
        let (a, _) = run(&ordered, workers, LATENESS_MS).await;
        assert_eq!(by_point(&a), base, "{workers} workers");
    }
    let (a, _) = run(&shuffled, 2, LATENESS_MS).await;
    assert_eq!(by_point(&a), base, "shuffled within the lateness budget");
    assert!(a.iter().all(|t| !t.late), "nothing was late");
}

/// A replay feeds the dataflow directly instead of through the bus: for readings in event-time
/// order, or shuffled within the lateness budget, it must judge exactly as a run from the bus
/// does, for any worker count. Every partition has readings throughout, so the watermark
/// moves during the run on both paths (an empty partition would hold it at the start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_fed_directly_give_what_the_same_readings_from_the_bus_give() {
    let d = district();
    let partition = |s: &str| floodcmd_model::bus::partition_for(s.as_bytes(), 4);
    let mut ordered = storm(&d);
    // A dry low point in each partition, reporting with the storm.
    for p in 0..4 {
        let sensor = d
            .sensors()
            .filter(|s| s.sensor.kind == SensorKind::Depth && s.point.id.starts_with("LP-"))
            .map(|s| s.sensor.id.clone())
            .find(|s| partition(s) == p && ordered.iter().all(|r| r.sensor != s))
            .expect("a low point in every partition");
        for i in 0..120i64 {
            ordered.push(reading(&d, &sensor, T0 + i * 30_000 + 5_000, 0.0));
        }
    }
    ordered.sort_by_key(|r| r.ts_ms);
    let covered: std::collections::BTreeSet<u32> =
        ordered.iter().map(|r| partition(&r.sensor)).collect();
    assert_eq!(covered.len(), 4, "every partition has readings");
    let shuffled = shuffled_within_half_the_budget(&ordered, 7);
    let per_point_status = |status: &[floodcmd_model::event::PointStatus]| {
        let mut m: std::collections::BTreeMap<String, Vec<_>> = Default::default();
        for s in status {
            m.entry(s.point.to_string()).or_default().push(s.clone());
        }
        m
    };
    for readings in [&ordered, &shuffled] {
        for workers in [1, 2] {
            let (bus_alerts, bus_status) = run(readings, workers, LATENESS_MS).await;
            let (fed_alerts, fed_status) =
                common::run_fed(d.clone(), readings, workers, LATENESS_MS).await;
            assert!(!bus_alerts.is_empty());
            assert_eq!(
                by_point(&fed_alerts),
                by_point(&bus_alerts),
                "{workers} workers"
            );
            assert_eq!(
                per_point_status(&fed_status),
                per_point_status(&bus_status),
                "{workers} workers"
            );
        }
    }
    // Readings held back past the budget are applied and flagged late on the fed path too.
    let mut held_back = ordered.clone();
    for i in (0..held_back.len()).step_by(37) {
        let r = held_back.remove(i);
        let at = (i + 200).min(held_back.len());
        held_back.insert(at, r);
    }
    let (_, status) = common::run_fed(d.clone(), &held_back, 2, LATENESS_MS).await;
    assert!(
        status.iter().any(|s| s.data_state == DataState::Late),
        "the held-back readings were late"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reading_that_crosses_a_threshold_raises_a_flagged_alert() {
    let d = district();
    // A sensor that shares WL-LP-05's partition keeps that partition's event time moving.
    let partition = |s: &str| floodcmd_model::bus::partition_for(s.as_bytes(), 4);
    let neighbour = d
        .sensors()
        .map(|s| s.sensor.id.clone())
        .find(|s| {
            s != "WL-LP-05"
                && d.sensor(s).unwrap().sensor.kind == SensorKind::Depth
                && partition(s) == partition("WL-LP-05")
        })
        .unwrap();
    let off = d.sensor("WL-LP-05").unwrap().sensor.calibration_offset_cm;
    let mut v = vec![reading(&d, "WL-LP-05", T0 + 600_000, 0.0)];
    for i in 0..80i64 {
        v.push(reading(&d, &neighbour, T0 + i * 30_000, 0.0));
    }
    // Two readings from ten minutes ago arrive after all of that: water held above red.
    v.push(reading(&d, "WL-LP-05", T0 + 610_000, 30.0 - off));
    v.push(reading(&d, "WL-LP-05", T0 + 700_000, 31.0 - off));
    let (alerts, status) = run(&v, 1, LATENESS_MS).await;
    let lp05: Vec<&AlertTransition> = alerts
        .iter()
        .filter(|a| a.point == "LP-05" && a.transition == TransitionKind::Raised)
        .collect();
    assert_eq!(lp05.len(), 1, "{alerts:#?}");
    assert_eq!(lp05[0].to, Level::Red);
    assert!(lp05[0].late, "the alert says it came from late data");
    assert_eq!(
        lp05[0].event_ms,
        T0 + 700_000,
        "it carries the reading's event time"
    );
    assert!(
        status.iter().any(|s| s.point == "LP-05"
            && s.level == Level::Red
            && s.data_state == DataState::Late),
        "the wall shows the point red with late data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sensor_keeps_its_level_and_never_reads_as_normal() {
    let d = district();
    let mut v = Vec::new();
    let off = d.sensor("WL-UP-02").unwrap().sensor.calibration_offset_cm;
    for i in 0..10i64 {
        v.push(reading(&d, "WL-UP-02", T0 + i * 30_000, 30.0 - off));
    }
    // Another sensor keeps event time moving for an hour; UP-02 says nothing more.
    for i in 0..120i64 {
        v.push(reading(&d, "WL-LP-01", T0 + i * 30_000, 0.0));
    }
    let (alerts, status) = run(&v, 2, LATENESS_MS).await;
    let up02: Vec<&AlertTransition> = alerts.iter().filter(|a| a.point == "UP-02").collect();
    assert_eq!(up02[0].to, Level::Red);
    let silent = up02
        .iter()
        .find(|a| a.transition == TransitionKind::Silent)
        .expect("UP-02 goes silent");
    assert_eq!(
        (silent.from, silent.to),
        (Level::Red, Level::Red),
        "silence keeps the level"
    );
    assert_eq!(
        silent.event_ms,
        T0 + 9 * 30_000 + 180_000,
        "silent after three missed storm-mode reports"
    );
    assert!(
        up02.iter().all(|a| a.transition != TransitionKind::Cleared),
        "silence never clears"
    );
    let last = status.iter().rev().find(|s| s.point == "UP-02").unwrap();
    assert_eq!(
        (last.level, last.data_state),
        (Level::Red, DataState::Silent)
    );
    // A point never heard from at all is silent too, once its normal interval has passed.
    let never = alerts
        .iter()
        .find(|a| a.point == "UP-05")
        .expect("UP-05 was never heard from");
    assert_eq!(never.transition, TransitionKind::Silent);
    assert_eq!(never.rule, "never heard from");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hold_time_restarts_after_a_dip_and_hysteresis_keeps_the_level_until_reset() {
    let d = district();
    // LP-03: blue raises at 10 cm held 60 s, resets below 8 cm. One reading every 30 s.
    let series = [
        2.0, 6.0, 10.0, 11.0, // above blue for 30 s only...
        7.0,  // ...a dip: the hold starts again
        11.0, 12.0, 12.0, // 60 s above: blue
        9.0, 8.5, 9.5, 8.0, // under the raise but not under the reset: still blue
        7.5, // under the reset: cleared
    ];
    let v = depth_series(&d, "WL-LP-03", T0, 30_000, &series);
    let (alerts, _) = run(&v, 2, LATENESS_MS).await;
    let at = |i: i64| T0 + i * 30_000;
    use Level::*;
    use TransitionKind::*;
    assert_eq!(
        level_moves(&alerts, "LP-03"),
        vec![
            (Raised, Normal, Blue, at(7)),
            (Cleared, Blue, Normal, at(12))
        ]
    );
}
