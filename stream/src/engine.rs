//! The per-point rules, free of timely: apply readings in event-time order, emit status and
//! alert transitions.
//!
//! The dataflow hands each worker's [`Engine`] one complete epoch at a time (all readings with
//! that event-time second, once the frontier has passed it). Within an epoch readings are
//! applied in a canonical order, so the result does not depend on arrival order, worker count
//! or replay speed. Silence is judged against event time too: a point becomes silent at
//! `last reading + expected interval × allowed misses`, and that moment is emitted once the
//! frontier passes it.

use crate::level::{LevelChange, LevelTracker};
use crate::rain::RainWindows;
use floodcmd_model::config::{Cadence, Point, PointKind};
use floodcmd_model::event::{AlertTransition, PointStatus, TransitionKind};
use floodcmd_model::time::{Clock, Millis};
use floodcmd_model::{DataState, District, Level, Reading, SensorKind};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// What the engine emits.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum StreamOutput {
    /// A point's status after an epoch that changed it.
    Status(PointStatus),
    /// A level or data-state transition.
    Transition(AlertTransition),
}

/// A reading as the engine sees it: validated, plus whether it arrived past the lateness budget.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimedReading {
    /// The reading.
    pub reading: Reading,
    /// Arrived after its epoch was closed; applied at a later epoch and flagged.
    pub late: bool,
}

/// How far back the rate of rise looks.
const RISE_WINDOW_MS: Millis = 10 * 60_000;

struct PointState {
    point: Arc<Point>,
    tracker: LevelTracker,
    rain: Option<RainWindows>,
    /// Latest calibrated depth per depth sensor: (event time, cm).
    depth_by_sensor: BTreeMap<String, (Millis, f64)>,
    /// Recent (event time, point depth) for the rate of rise.
    recent: VecDeque<(Millis, f64)>,
    last_ms: Option<Millis>,
    /// When the point will count as silent if nothing arrives.
    silent_at: Option<Millis>,
    silent_reported: bool,
    data_state: DataState,
    last_status: Option<PointStatus>,
}

impl PointState {
    fn new(point: Arc<Point>) -> Self {
        let rain = (point.kind == PointKind::RainGauge).then(|| {
            RainWindows::new(
                floodcmd_model::Level::ALERTS
                    .iter()
                    .filter_map(|l| point.thresholds.get(*l).and_then(|t| t.window_min)),
            )
        });
        PointState {
            point,
            tracker: LevelTracker::default(),
            rain,
            depth_by_sensor: BTreeMap::new(),
            recent: VecDeque::new(),
            last_ms: None,
            silent_at: None,
            silent_reported: false,
            data_state: DataState::Silent,
            last_status: None,
        }
    }

    fn depth(&self) -> Option<f64> {
        self.depth_by_sensor
            .values()
            .map(|(_, d)| *d)
            .reduce(f64::max)
    }

    /// Least-squares slope of depth over the recent window, cm per minute.
    fn rise_cm_per_min(&self) -> Option<f64> {
        if self.recent.len() < 2 {
            return None;
        }
        let t0 = self.recent[0].0;
        let n = self.recent.len() as f64;
        let xs = self.recent.iter().map(|(t, _)| (t - t0) as f64 / 60_000.0);
        let mean_x = xs.clone().sum::<f64>() / n;
        let mean_y = self.recent.iter().map(|(_, d)| d).sum::<f64>() / n;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for (x, (_, y)) in xs.zip(self.recent.iter()) {
            sxy += (x - mean_x) * (y - mean_y);
            sxx += (x - mean_x) * (x - mean_x);
        }
        (sxx > 0.0).then(|| sxy / sxx)
    }

    fn wet(&self) -> bool {
        match &self.rain {
            Some(r) => r.total(60).unwrap_or(0.0) > 0.0,
            None => self.depth().unwrap_or(0.0) >= 1.0,
        }
    }

    fn silent_after_ms(&self, cadence: &Cadence) -> Millis {
        let storm = self.tracker.level() > Level::Normal || self.wet();
        let interval = match (self.point.kind.judged_by(), storm) {
            (SensorKind::Depth, false) => cadence.depth_normal_s,
            (SensorKind::Depth, true) => cadence.depth_storm_s,
            (SensorKind::Rain, false) => cadence.rain_normal_s,
            (SensorKind::Rain, true) => cadence.rain_storm_s,
        };
        interval as Millis * 1000 * cadence.silent_after_missed as Millis
    }

    fn status(&self, as_of_ms: Millis) -> PointStatus {
        let rain = |w| self.rain.as_ref().and_then(|r| r.total(w));
        PointStatus {
            point: self.point.id.clone(),
            kind: self.point.kind,
            level: self.tracker.level(),
            data_state: self.data_state,
            depth_cm: self.depth(),
            rise_cm_per_min: self.rise_cm_per_min(),
            rain_10m_mm: rain(10),
            rain_1h_mm: rain(60),
            rain_3h_mm: rain(180),
            rain_24h_mm: rain(1440),
            last_reading_ms: self.last_ms,
            as_of_ms,
        }
    }

    /// The value each alert level's rule looks at.
    fn rule_values(&self) -> [f64; 4] {
        match &self.rain {
            Some(r) => {
                let mut v = [0.0; 4];
                for (i, l) in Level::ALERTS.iter().enumerate() {
                    let w = self
                        .point
                        .thresholds
                        .get(*l)
                        .and_then(|t| t.window_min)
                        .unwrap_or(60);
                    v[i] = r.total(w).unwrap_or(0.0);
                }
                v
            }
            None => [self.depth().unwrap_or(0.0); 4],
        }
    }

    fn describe(&self, change: &LevelChange, values: &[f64; 4]) -> (String, f64) {
        let th = self.point.thresholds.get(change.by).expect("alert level");
        let i = change.by.alert_index().expect("alert level");
        let v = values[i];
        let what = match th.window_min {
            Some(w) if w % 60 == 0 => format!("rain {}h", w / 60),
            Some(w) => format!("rain {w}min"),
            None => "depth".to_string(),
        };
        let unit = self.point.kind.unit();
        let rule = if change.up {
            format!("{what} {v:.1} {unit} >= {} {} {unit}", change.by, th.raise)
        } else {
            format!(
                "{what} {v:.1} {unit} < {} reset {} {unit}",
                change.by, th.reset
            )
        };
        (rule, v)
    }
}

/// What caused a transition.
struct Cause {
    kind: TransitionKind,
    from: Level,
    to: Level,
    at: Millis,
    rule: String,
    value: f64,
    late: bool,
}

/// The rules for the points one worker owns.
pub struct Engine {
    points: BTreeMap<String, PointState>,
    cadence: Cadence,
    clock: Arc<dyn Clock>,
    /// When the stage started, in event time; never-heard points count as silent from here.
    origin_ms: Millis,
    /// Readings that could not be applied (unknown point: config changed under the topic).
    pub unknown_points: u64,
}

impl Engine {
    /// An engine for the points `owns` accepts, started at event time `origin_ms`.
    pub fn new(
        district: &District,
        owns: impl Fn(&str) -> bool,
        clock: Arc<dyn Clock>,
        origin_ms: Millis,
    ) -> Self {
        let points = district
            .points
            .iter()
            .filter(|p| owns(&p.id))
            .map(|p| (p.id.clone(), PointState::new(Arc::new(p.clone()))))
            .collect();
        Engine {
            points,
            cadence: district.defaults.cadence.clone(),
            clock,
            origin_ms,
            unknown_points: 0,
        }
    }

    fn transition(&self, st: &PointState, c: Cause) -> StreamOutput {
        StreamOutput::Transition(AlertTransition {
            point: st.point.id.clone(),
            point_kind: st.point.kind,
            transition: c.kind,
            from: c.from,
            to: c.to,
            event_ms: c.at,
            processed_ms: self.clock.now_ms(),
            rule: c.rule,
            value: c.value,
            rise_cm_per_min: st.rise_cm_per_min(),
            late: c.late,
        })
    }

    /// Judge silence for every owned point up to (not including) `t_ms`.
    pub fn advance_to(&mut self, t_ms: Millis, out: &mut Vec<StreamOutput>) {
        let started = self.origin_ms;
        let mut fired = Vec::new();
        for (id, st) in &self.points {
            if st.silent_reported {
                continue;
            }
            let at = st
                .silent_at
                .unwrap_or_else(|| started + st.silent_after_ms(&self.cadence));
            if at < t_ms {
                fired.push((id.clone(), at));
            }
        }
        // Emit in event-time order, ties by point id, whatever the map order.
        fired.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        for (id, at) in fired {
            let st = self.points.get_mut(&id).expect("fired point exists");
            st.silent_reported = true;
            st.data_state = DataState::Silent;
            let level = st.tracker.level();
            let status = st.status(at);
            st.last_status = Some(status.clone());
            let st = &self.points[&id];
            let rule = match st.last_ms {
                Some(_) => format!("no reading for {} s", self.cadence_gap(st) / 1000),
                None => "never heard from".to_string(),
            };
            let cause = Cause {
                kind: TransitionKind::Silent,
                from: level,
                to: level,
                at,
                rule,
                value: 0.0,
                late: false,
            };
            out.push(self.transition(st, cause));
            out.push(StreamOutput::Status(status));
        }
    }

    fn cadence_gap(&self, st: &PointState) -> Millis {
        st.silent_after_ms(&self.cadence)
    }

    /// Apply one complete epoch. `epoch_ms` is the epoch's start; readings are sorted here.
    pub fn apply_epoch(
        &mut self,
        epoch_ms: Millis,
        readings: &mut [TimedReading],
        out: &mut Vec<StreamOutput>,
    ) {
        self.advance_to(epoch_ms, out);
        readings.sort_by(|a, b| {
            let (x, y) = (&a.reading, &b.reading);
            x.ts_ms
                .cmp(&y.ts_ms)
                .then_with(|| x.sensor.cmp(&y.sensor))
                .then_with(|| x.seq.cmp(&y.seq))
                .then_with(|| x.value.total_cmp(&y.value))
                .then_with(|| a.late.cmp(&b.late))
        });
        let mut touched: Vec<String> = Vec::new();
        for tr in readings.iter() {
            let r = &tr.reading;
            let Some(st) = self.points.get_mut(&r.point) else {
                self.unknown_points += 1;
                continue;
            };
            if touched.last() != Some(&r.point) && !touched.contains(&r.point) {
                touched.push(r.point.clone());
            }
            // Rules judge event time, late or not: a late reading that shows water held above
            // red for a minute raises red (flagged late), as it would have on time.
            let at = r.ts_ms;
            match (&mut st.rain, r.kind) {
                (Some(rain), SensorKind::Rain) => {
                    let _ = rain.add(r.ts_ms, r.value);
                    rain.advance_to(at);
                }
                (None, SensorKind::Depth) => {
                    let offset = st
                        .point
                        .sensors
                        .iter()
                        .find(|s| s.id == r.sensor)
                        .map_or(0.0, |s| s.calibration_offset_cm);
                    // The newest measurement of each sensor is its depth; an older one that
                    // arrives late only adds to the history behind the rate of rise.
                    let newest = st
                        .depth_by_sensor
                        .get(&r.sensor)
                        .is_none_or(|(t, _)| *t <= r.ts_ms);
                    if newest {
                        st.depth_by_sensor
                            .insert(r.sensor.clone(), (r.ts_ms, r.value + offset));
                    }
                    let d = st.depth().unwrap_or(0.0);
                    let pos = st.recent.partition_point(|(t, _)| *t <= at);
                    st.recent.insert(pos, (at, d));
                    let newest = st.recent.back().map_or(at, |(t, _)| *t);
                    while st
                        .recent
                        .front()
                        .is_some_and(|(t, _)| *t < newest - RISE_WINDOW_MS)
                    {
                        st.recent.pop_front();
                    }
                }
                // A rain sensor on a depth point (or the reverse) does not judge the point.
                _ => continue,
            }
            let was_silent = st.silent_reported;
            st.last_ms = Some(st.last_ms.map_or(r.ts_ms, |l| l.max(r.ts_ms)));
            st.silent_reported = false;
            st.data_state = if tr.late {
                DataState::Late
            } else {
                DataState::Fresh
            };
            let values = st.rule_values();
            let change = st.tracker.evaluate(values, at, &st.point.thresholds);
            let after = st.silent_after_ms(&self.cadence);
            st.silent_at = Some(st.last_ms.expect("just set") + after);
            let st = &self.points[&r.point];
            if was_silent {
                let level = st.tracker.level();
                let rule = "reading received".to_string();
                let cause = Cause {
                    kind: TransitionKind::Recovered,
                    from: level,
                    to: level,
                    at,
                    rule,
                    value: values[0],
                    late: tr.late,
                };
                out.push(self.transition(st, cause));
            }
            if let Some(change) = change {
                let kind = match (change.from, change.to) {
                    (Level::Normal, _) => TransitionKind::Raised,
                    (_, Level::Normal) => TransitionKind::Cleared,
                    (f, t) if t > f => TransitionKind::Upgraded,
                    _ => TransitionKind::Downgraded,
                };
                let (rule, value) = st.describe(&change, &values);
                let cause = Cause {
                    kind,
                    from: change.from,
                    to: change.to,
                    at,
                    rule,
                    value,
                    late: tr.late,
                };
                out.push(self.transition(st, cause));
            }
        }
        for id in touched {
            let st = self.points.get_mut(&id).expect("touched point exists");
            let status = st.status(epoch_ms);
            let changed = st.last_status.as_ref().is_none_or(|prev| {
                let mut p = prev.clone();
                p.as_of_ms = status.as_of_ms;
                p.last_reading_ms = status.last_reading_ms;
                p != status
            });
            // Coalesce: one status per point per epoch, and only when something a user sees
            // changed (a new timestamp alone is not news unless the point was silent).
            if changed {
                st.last_status = Some(status.clone());
                out.push(StreamOutput::Status(status));
            }
        }
    }

    /// Points this engine owns.
    pub fn point_count(&self) -> usize {
        self.points.len()
    }
}
