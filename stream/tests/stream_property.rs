//! Property: for random short depth series at a few points, with spikes, flat runs and jumps,
//! arriving shuffled within the lateness budget, the real dataflow (1, 2 or 4 workers) emits
//! the same transitions per point as a plain model of the same rules written here from
//! scratch: readings sorted per point, quality control recomputed from the whole history,
//! levels by a straightforward loop.
//!
//! The model is deliberately naive and shares no code with the engine; when the two disagree,
//! one of them misreads the rules.

mod common;

use common::{district_with, run_with, LATENESS_MS, T0};
use floodcmd_model::config::{Cadence, LevelThresholds, PointKind, QualityControl};
use floodcmd_model::event::TransitionKind;
use floodcmd_model::time::Millis;
use floodcmd_model::{District, Level, Reading, SensorKind};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// The sample district with a short stuck rule, so short random series can be stuck.
fn test_district() -> Arc<District> {
    static D: OnceLock<Arc<District>> = OnceLock::new();
    D.get_or_init(|| {
        district_with(&[
            ("stuck_after_s = 1800\n", "stuck_after_s = 240\n"),
            ("stuck_after_readings = 10\n", "stuck_after_readings = 5\n"),
        ])
    })
    .clone()
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Depth points with a single sensor (the model keeps one depth per point).
fn candidates() -> Vec<(String, String)> {
    test_district()
        .points
        .iter()
        .filter(|p| p.kind != PointKind::RainGauge && p.sensors.len() == 1)
        .map(|p| (p.id.clone(), p.sensors[0].id.clone()))
        .take(12)
        .collect()
}

/// One move of a random depth series, in half centimetres.
#[derive(Clone, Debug)]
enum Step {
    /// Drift by a little.
    Walk(i8),
    /// The same value this many more times (a stuck sensor, or still water).
    Flat(u8),
    /// A new level of water.
    Jump(u8),
    /// One reading off by this much, then back.
    Spike(i8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (-8i8..=8).prop_map(Step::Walk),
        2 => (3u8..=9).prop_map(Step::Flat),
        1 => (0u8..=120).prop_map(Step::Jump),
        1 => (40i8..=80, any::<bool>()).prop_map(|(m, up)| Step::Spike(if up { m } else { -m })),
    ]
}

#[derive(Clone, Debug)]
struct Series {
    start_ms: Millis,
    first_half_cm: u8,
    /// Each step with the seconds to the next reading (30 to 60).
    steps: Vec<(Step, u8)>,
}

fn series() -> impl Strategy<Value = Series> {
    (
        0..30_000i64,
        0u8..=120,
        prop::collection::vec((step(), 30u8..=60), 6..24),
    )
        .prop_map(|(start_ms, first_half_cm, steps)| Series {
            start_ms,
            first_half_cm,
            steps,
        })
}

/// The readings of one series: (event time, raw cm), 0 to 60 cm.
fn expand(s: &Series) -> Vec<(Millis, f64)> {
    let mut out = Vec::new();
    let mut t = T0 + s.start_ms;
    let mut level = s.first_half_cm as i32;
    out.push((t, level as f64 / 2.0));
    for (step, gap_s) in &s.steps {
        let gap = *gap_s as Millis * 1000;
        match step {
            Step::Walk(d) => {
                level = (level + *d as i32).clamp(0, 120);
                t += gap;
                out.push((t, level as f64 / 2.0));
            }
            Step::Flat(n) => {
                for _ in 0..*n {
                    t += gap;
                    out.push((t, level as f64 / 2.0));
                }
            }
            Step::Jump(to) => {
                level = *to as i32;
                t += gap;
                out.push((t, level as f64 / 2.0));
            }
            Step::Spike(d) => {
                t += gap;
                out.push((t, (level + *d as i32).clamp(0, 120) as f64 / 2.0));
            }
        }
    }
    out
}

#[derive(Clone, Debug)]
struct Case {
    points: Vec<(String, String)>,
    series: Vec<Series>,
    /// Arrival delay of each reading, less than half the lateness budget.
    jitter_ms: Vec<i64>,
    workers: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::subsequence(candidates(), 2..=4),
        prop::collection::vec(series(), 4),
        prop::collection::vec(0..LATENESS_MS / 2, 4 * 240),
        prop_oneof![Just(1usize), Just(2), Just(4)],
    )
        .prop_map(|(points, series, jitter_ms, workers)| Case {
            points,
            series,
            jitter_ms,
            workers,
        })
}

type Move = (TransitionKind, Level, Level, Millis);

// ---------------------------------------------------------------------------------------
// The plain model.
// ---------------------------------------------------------------------------------------

fn plain_median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN here"));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn cm_per_min(from: (Millis, f64), to: (Millis, f64)) -> Option<f64> {
    let dt = to.0 - from.0;
    if dt > 0 {
        Some((to.1 - from.1).abs() / (dt as f64 / 60_000.0))
    } else {
        None
    }
}

const ALERTS: [Level; 4] = [Level::Blue, Level::Yellow, Level::Orange, Level::Red];

fn one_below(l: Level) -> Level {
    match l {
        Level::Red => Level::Orange,
        Level::Orange => Level::Yellow,
        Level::Yellow => Level::Blue,
        _ => Level::Normal,
    }
}

/// Levels with hold times (going up) and reset values (going down).
struct PlainLevels {
    level: Level,
    above_since: [Option<Millis>; 4],
}

impl PlainLevels {
    fn judge(&mut self, th: &LevelThresholds, depth: f64, at: Millis) -> Option<Move> {
        for (i, l) in ALERTS.iter().enumerate() {
            let t = th.get(*l).expect("alert level");
            if depth >= t.raise {
                if self.above_since[i].is_none() {
                    self.above_since[i] = Some(at);
                }
            } else {
                self.above_since[i] = None;
            }
        }
        let mut up = None;
        for (i, l) in ALERTS.iter().enumerate() {
            let hold_ms = th.get(*l).expect("alert level").hold_s as Millis * 1000;
            if *l > self.level && self.above_since[i].is_some_and(|s| at - s >= hold_ms) {
                up = Some(*l);
            }
        }
        let from = self.level;
        if let Some(to) = up {
            self.level = to;
            let kind = if from == Level::Normal {
                TransitionKind::Raised
            } else {
                TransitionKind::Upgraded
            };
            return Some((kind, from, to, at));
        }
        let mut to = self.level;
        while to != Level::Normal && depth < th.get(to).expect("alert level").reset {
            to = one_below(to);
        }
        if to == from {
            return None;
        }
        self.level = to;
        let kind = if to == Level::Normal {
            TransitionKind::Cleared
        } else {
            TransitionKind::Downgraded
        };
        Some((kind, from, to, at))
    }
}

/// The transitions one point should see, given all its readings (any order) and the event
/// time the run ends at.
fn plain_model(
    readings: &[(Millis, f64)],
    offset: f64,
    th: &LevelThresholds,
    qc: &QualityControl,
    cadence: &Cadence,
    end_ms: Millis,
) -> Vec<Move> {
    let mut sorted = readings.to_vec();
    sorted.sort_by_key(|(t, _)| *t);
    let mut moves = Vec::new();
    let mut levels = PlainLevels {
        level: Level::Normal,
        above_since: [None; 4],
    };
    let mut seen: Vec<(Millis, f64)> = Vec::new();
    // Accepted depths since the last confirmed jump; the median looks at the last few.
    let mut regime: Vec<f64> = Vec::new();
    let mut last_accepted: Option<(Millis, f64)> = None;
    let mut held: Option<(Millis, f64)> = None;
    let mut depth: Option<f64> = None;
    let mut silent_at = 0;
    for &(ts, raw) in &sorted {
        let d = raw + offset;
        seen.push((ts, raw));
        let same: Vec<&(Millis, f64)> = seen.iter().rev().take_while(|(_, r)| *r == raw).collect();
        let run_since = same.last().map_or(ts, |(t, _)| *t);
        let mut apply = Vec::new();
        let out_of_range = !(-50.0..=1000.0).contains(&raw);
        let stuck = raw > 0.0
            && d > 0.0
            && same.len() as u32 >= qc.stuck_after_readings
            && ts - run_since >= qc.stuck_after_s as Millis * 1000;
        if out_of_range || stuck {
            held = None;
        } else {
            let window = &regime[regime.len().saturating_sub(qc.median_of as usize)..];
            let spike = !window.is_empty() && (d - plain_median(window)).abs() > qc.spike_cm;
            let too_fast = last_accepted
                .and_then(|la| cm_per_min(la, (ts, d)))
                .is_some_and(|r| r > qc.max_rate_cm_per_min);
            if !spike && !too_fast {
                held = None;
                regime.push(d);
                last_accepted = Some((ts, d));
                apply.push((ts, d));
            } else {
                let agrees = held.is_some_and(|h: (Millis, f64)| (d - h.1).abs() <= qc.spike_cm);
                match held.take() {
                    Some(h) if agrees => {
                        regime = vec![h.1, d];
                        last_accepted = Some((ts, d));
                        apply.push(h);
                        apply.push((ts, d));
                    }
                    _ => held = Some((ts, d)),
                }
            }
        }
        for (at, v) in apply {
            depth = Some(v);
            moves.extend(levels.judge(th, v, at));
        }
        let storm = levels.level > Level::Normal || depth.unwrap_or(0.0) >= 1.0;
        let interval_s = if storm {
            cadence.depth_storm_s
        } else {
            cadence.depth_normal_s
        };
        silent_at = ts + interval_s as Millis * 1000 * cadence.silent_after_missed as Millis;
    }
    if !sorted.is_empty() && silent_at < end_ms {
        moves.push((
            TransitionKind::Silent,
            levels.level,
            levels.level,
            silent_at,
        ));
    }
    moves
}

// ---------------------------------------------------------------------------------------

fn check(case: &Case) -> Result<(), TestCaseError> {
    let d = test_district();
    let mut arrivals: Vec<(Millis, Reading)> = Vec::new();
    let mut per_point: BTreeMap<String, Vec<(Millis, f64)>> = BTreeMap::new();
    for ((point, sensor), s) in case.points.iter().zip(&case.series) {
        let readings = expand(s);
        for (ts, raw) in &readings {
            let jitter = case.jitter_ms[arrivals.len() % case.jitter_ms.len()];
            arrivals.push((
                ts + jitter,
                Reading {
                    sensor: sensor.as_str().into(),
                    point: point.as_str().into(),
                    kind: SensorKind::Depth,
                    ts_ms: *ts,
                    value: *raw,
                    seq: None,
                    received_ms: *ts,
                },
            ));
        }
        per_point.insert(point.clone(), readings);
    }
    arrivals.sort_by_key(|(arrives, _)| *arrives);
    let arrivals: Vec<Reading> = arrivals.into_iter().map(|(_, r)| r).collect();
    // The bounded run ends just past the newest reading anywhere, in whole seconds.
    let end_ms = (arrivals.iter().map(|r| r.ts_ms).max().unwrap_or(T0) / 1000 + 1) * 1000;

    let (alerts, _) = runtime().block_on(run_with(d.clone(), &arrivals, case.workers, LATENESS_MS));
    prop_assert!(
        alerts.iter().all(|a| !a.late),
        "the shuffle stayed within the budget"
    );
    let mut got: BTreeMap<String, Vec<Move>> =
        per_point.keys().map(|p| (p.clone(), Vec::new())).collect();
    for a in &alerts {
        if let Some(moves) = got.get_mut(&a.point) {
            moves.push((a.transition, a.from, a.to, a.event_ms));
        }
    }
    let want: BTreeMap<String, Vec<Move>> = per_point
        .iter()
        .map(|(point, readings)| {
            let p = d.point(point).expect("a point of the district");
            let offset = p.sensors[0].calibration_offset_cm;
            let moves = plain_model(
                readings,
                offset,
                &p.thresholds,
                &d.defaults.qc,
                &d.defaults.cadence,
                end_ms,
            );
            (point.clone(), moves)
        })
        .collect();
    prop_assert_eq!(got, want, "readings: {:?}", per_point);
    Ok(())
}

/// 24 cases keep the suite quick; `PROPTEST_CASES=500` looks harder.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Relative to the crate (cargo runs tests there): stream/proptest-regressions/.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/stream_property.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_dataflow_agrees_with_a_plain_model_of_the_rules(case in case()) {
        check(&case)?;
    }
}
