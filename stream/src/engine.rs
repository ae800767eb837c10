//! The per-point rules, free of timely: apply readings in event-time order, emit status and
//! alert transitions.
//!
//! The dataflow hands each worker's [`Engine`] one complete epoch at a time (all readings with
//! that event-time second, once the frontier has passed it). Within an epoch readings are
//! applied in a canonical order, so the result does not depend on arrival order, worker count
//! or replay speed. Silence is judged against event time too: a point becomes silent at
//! `last reading + expected interval × allowed misses`, and that moment is emitted once the
//! frontier passes it.
//!
//! For each reading, in order: quality control ([`crate::qc`]) decides whether it may move the
//! level; an accepted one updates the depth or the rain windows, the rate of rise
//! ([`crate::rise`]) and the levels ([`crate::level`], plus [`crate::intensity`] for rain
//! gauges); every evaluation feeds flap detection ([`crate::flap`]). Nothing here reads the
//! wall clock except to stamp `processed_ms`.

use crate::flap::FlapDetector;
use crate::intensity::IntensityLatch;
use crate::level::{LevelChange, LevelTracker};
use crate::point_index::PointIndex;
use crate::prefetch::{prefetch, prefetch_first, prefetch_whole};
use crate::qc::{DepthQc, RainQc, Verdict};
use crate::rain::RainWindows;
use crate::rise::{predict, Prediction, RiseWindow};
use crate::rule_text;
use floodcmd_model::config::{
    Cadence, Flapping, LevelThresholds, Point, PointKind, QualityControl, RainIntensityRule, Rise,
};
use floodcmd_model::event::{AlertTransition, PointStatus, QcFlag, TransitionKind};
use floodcmd_model::time::{Clock, Millis};
use floodcmd_model::{DataState, District, Id, Level, Reading, SensorKind};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the engine emits.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum StreamOutput {
    /// A point's status after an epoch that changed it.
    Status(PointStatus),
    /// A level or data-state transition.
    Transition(AlertTransition),
}

/// Where the engine puts its outputs as it makes them, in its order.
///
/// The stream stage encodes each output here, for the bus, while it is still in the cache: an
/// epoch's statuses gathered into a vector first, each cloned from the point's state, were
/// written out (a few hundred bytes each, more than the cache holds for a minute's epoch) only
/// to be read back, encoded and dropped. A vector of [`StreamOutput`] keeps them as they are
/// (replays, tests).
pub trait Outputs {
    /// A point's status after an epoch that changed it (the engine keeps it as the point's
    /// last).
    fn status(&mut self, status: &PointStatus);
    /// A level or data-state transition.
    fn transition(&mut self, transition: AlertTransition);
}

impl Outputs for Vec<StreamOutput> {
    fn status(&mut self, status: &PointStatus) {
        self.push(StreamOutput::Status(status.clone()));
    }

    fn transition(&mut self, transition: AlertTransition) {
        self.push(StreamOutput::Transition(transition));
    }
}

/// Outputs not wanted: those of history replayed to rebuild the state, which are on the bus
/// already.
struct Dropped;

impl Outputs for Dropped {
    fn status(&mut self, _: &PointStatus) {}
    fn transition(&mut self, _: AlertTransition) {}
}

/// How a reading crosses between processes of a timely cluster. Timely encodes exchanged data
/// with bincode, which cannot skip a field, and the JSON form of [`Reading`] skips an absent
/// `seq`: on the exchange every field is present, in a fixed order.
mod exchange_form {
    use floodcmd_model::time::Millis;
    use floodcmd_model::{Id, Reading, SensorKind};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Fields = (Id, Id, SensorKind, Millis, f64, Option<u64>, Millis);

    pub fn serialize<S: Serializer>(r: &Reading, s: S) -> Result<S::Ok, S::Error> {
        (
            &r.sensor,
            &r.point,
            r.kind,
            r.ts_ms,
            r.value,
            r.seq,
            r.received_ms,
        )
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Reading, D::Error> {
        let (sensor, point, kind, ts_ms, value, seq, received_ms) = Fields::deserialize(d)?;
        Ok(Reading {
            sensor,
            point,
            kind,
            ts_ms,
            value,
            seq,
            received_ms,
        })
    }
}

/// A reading as the engine sees it: validated, plus whether it arrived past the lateness budget.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimedReading {
    /// The reading.
    #[serde(with = "exchange_form")]
    pub reading: Reading,
    /// Arrived after its epoch was closed; applied at a later epoch and flagged.
    pub late: bool,
    /// Re-read on start to rebuild state: its outputs were emitted before the restart, so it
    /// changes state and emits nothing.
    #[serde(default)]
    pub replay: bool,
}

/// The district-wide settings the rules read.
struct Rules {
    cadence: Cadence,
    qc: QualityControl,
    intensity: RainIntensityRule,
    flapping: Flapping,
    rise: Rise,
}

/// What a transition says happened, and the rule behind it.
struct Cause {
    kind: TransitionKind,
    from: Level,
    to: Level,
    at: Millis,
    rule: String,
    value: f64,
}

/// What the rules read of a point's config. A district `Point` also carries names, places,
/// people and plans; copying all that for every owned point made starting (and dropping) an
/// engine cost as much as a few hundred thousand readings.
struct PointSpec {
    id: Id,
    kind: PointKind,
    thresholds: Arc<LevelThresholds>,
    sensors: Vec<SensorSpec>,
}

struct SensorSpec {
    id: Id,
    calibration_offset_cm: f64,
}

impl PointSpec {
    fn of(p: &Point) -> Self {
        PointSpec {
            id: p.id.as_str().into(),
            kind: p.kind,
            thresholds: p.thresholds.clone(),
            sensors: p
                .sensors
                .iter()
                .map(|s| SensorSpec {
                    id: s.id.as_str().into(),
                    calibration_offset_cm: s.calibration_offset_cm,
                })
                .collect(),
        }
    }
}

struct PointState {
    point: PointSpec,
    /// The threshold rules: depth, or the rainstorm signals of a rain gauge.
    tracker: LevelTracker,
    /// Rain gauges only: the short-duration heavy rain rule beside the signal rules.
    intensity: Option<IntensityLatch>,
    rain: Option<RainWindows>,
    /// The point's sensors heard from, in the order they were first heard.
    sensors: Vec<SensorState>,
    rise: RiseWindow,
    flap: FlapDetector,
    /// What quality control found wrong with the latest reading.
    qc_flags: Vec<QcFlag>,
    last_ms: Option<Millis>,
    /// When the point will count as silent if nothing arrives.
    silent_at: Option<Millis>,
    silent_reported: bool,
    data_state: DataState,
    last_status: Option<PointStatus>,
    /// Already in this epoch's list of points to report on.
    touched: bool,
}

impl PointState {
    fn new(point: PointSpec, rules: &Rules) -> Self {
        let gauge = point.kind == PointKind::RainGauge;
        let rain = gauge.then(|| {
            RainWindows::new(
                Level::ALERTS
                    .iter()
                    .filter_map(|l| point.thresholds.get(*l).and_then(|t| t.window_min))
                    .chain([rules.intensity.window_min]),
            )
        });
        PointState {
            point,
            tracker: LevelTracker::default(),
            intensity: gauge.then(IntensityLatch::default),
            rain,
            sensors: Vec::new(),
            rise: RiseWindow::new(rules.rise.window_min),
            flap: FlapDetector::new(rules.flapping.history),
            qc_flags: Vec::new(),
            last_ms: None,
            silent_at: None,
            silent_reported: false,
            data_state: DataState::Silent,
            last_status: None,
            touched: false,
        }
    }

    /// The point's level: the higher of its threshold rules and, for a gauge, the intensity rule.
    fn level(&self, rules: &Rules) -> Level {
        let burst = self
            .intensity
            .map_or(Level::Normal, |latch| latch.level(&rules.intensity));
        self.tracker.level().max(burst)
    }

    fn depth(&self) -> Option<f64> {
        self.sensors
            .iter()
            .filter_map(|s| s.depth.map(|(_, d)| d))
            .reduce(f64::max)
    }

    /// Where `sensor`'s state is in `sensors`, created on its first reading.
    fn sensor_slot(&mut self, sensor: &str) -> usize {
        // A point has a sensor or two: a look down a short list, one comparison as a rule,
        // where maps keyed by id took several per reading.
        if let Some(i) = self.sensors.iter().position(|s| s.id == sensor) {
            return i;
        }
        // A sensor the config does not list for the point is judged uncalibrated.
        let calibration_offset_cm = self
            .point
            .sensors
            .iter()
            .find(|s| s.id == sensor)
            .map_or(0.0, |s| s.calibration_offset_cm);
        self.sensors.push(SensorState {
            id: sensor.into(),
            calibration_offset_cm,
            depth_qc: DepthQc::default(),
            rain_qc: RainQc::default(),
            depth: None,
        });
        self.sensors.len() - 1
    }

    fn rise_cm_per_min(&self) -> Option<f64> {
        if self.rain.is_some() {
            return None;
        }
        self.rise.cm_per_min()
    }

    fn prediction(&self, rules: &Rules) -> Option<Prediction> {
        predict(
            self.level(rules),
            self.depth()?,
            self.rise_cm_per_min()?,
            &self.point.thresholds,
            &rules.rise,
        )
    }

    fn wet(&self) -> bool {
        match &self.rain {
            Some(r) => r.total(60).unwrap_or(0.0) > 0.0,
            None => self.depth().unwrap_or(0.0) >= 1.0,
        }
    }

    fn silent_after_ms(&self, rules: &Rules) -> Millis {
        let cadence = &rules.cadence;
        let storm = self.level(rules) > Level::Normal || self.wet();
        let interval = match (self.point.kind.judged_by(), storm) {
            (SensorKind::Depth, false) => cadence.depth_normal_s,
            (SensorKind::Depth, true) => cadence.depth_storm_s,
            (SensorKind::Rain, false) => cadence.rain_normal_s,
            (SensorKind::Rain, true) => cadence.rain_storm_s,
        };
        interval as Millis * 1000 * cadence.silent_after_missed as Millis
    }

    fn status(&self, as_of_ms: Millis, rules: &Rules) -> PointStatus {
        self.status_reusing(as_of_ms, rules, None)
    }

    /// The status, built in the allocations of `reuse` (a status no longer needed). Its
    /// figures are rounded as [`shown`] says; the rules judge the state's own.
    fn status_reusing(
        &self,
        as_of_ms: Millis,
        rules: &Rules,
        reuse: Option<PointStatus>,
    ) -> PointStatus {
        let rain = |w| {
            self.rain
                .as_ref()
                .and_then(|r| r.total(w))
                .map(|mm| shown(mm, HUNDREDTHS))
        };
        let prediction = self.prediction(rules);
        let (mut point, mut qc_flags) =
            reuse.map_or_else(Default::default, |s| (s.point, s.qc_flags));
        point.clone_from(&self.point.id);
        qc_flags.clone_from(&self.qc_flags);
        PointStatus {
            point,
            kind: self.point.kind,
            level: self.level(rules),
            data_state: self.data_state,
            depth_cm: self.depth().map(|cm| shown(cm, HUNDREDTHS)),
            rise_cm_per_min: self.rise_cm_per_min().map(|r| shown(r, THOUSANDTHS)),
            rain_10m_mm: rain(10),
            rain_1h_mm: rain(60),
            rain_3h_mm: rain(180),
            rain_24h_mm: rain(1440),
            last_reading_ms: self.last_ms,
            qc_flags,
            next_level: prediction.map(|p| p.next_level),
            minutes_to_next: prediction.map(|p| shown(p.minutes, TENTHS)),
            flapping: self.flap.is_flapping(),
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
        let (Some(th), Some(i)) = (
            self.point.thresholds.get(change.by),
            change.by.alert_index(),
        ) else {
            return (format!("{} → {}", change.from, change.to), 0.0);
        };
        let v = values[i];
        let unit = self.point.kind.unit();
        // "{what} {v:.1} {unit} >= {by} {raise} {unit}", or "< {by} reset {reset}" going down.
        let mut rule = rule_text::text();
        match th.window_min {
            Some(w) => {
                rule.push_str("rain ");
                rule_text::push_window(&mut rule, w);
            }
            None => rule.push_str("depth"),
        }
        rule.push(' ');
        rule_text::push_one_decimal(&mut rule, v);
        rule.push(' ');
        rule.push_str(unit);
        rule.push_str(if change.up { " >= " } else { " < " });
        rule.push_str(change.by.as_str());
        if change.up {
            rule.push(' ');
            rule_text::push_number(&mut rule, th.raise);
        } else {
            rule.push_str(" reset ");
            rule_text::push_number(&mut rule, th.reset);
        }
        rule.push(' ');
        rule.push_str(unit);
        (rule, v)
    }

    fn describe_intensity(rule: &RainIntensityRule, raised: bool, total: f64) -> (String, f64) {
        // "rain {window} {total:.1} mm >= 短时强降水 {mm} mm ({level})", or
        // "< 短时强降水 reset {reset} mm" when it resets.
        let mut text = rule_text::text();
        text.push_str("rain ");
        rule_text::push_window(&mut text, rule.window_min);
        text.push(' ');
        rule_text::push_one_decimal(&mut text, total);
        if raised {
            text.push_str(" mm >= 短时强降水 ");
            rule_text::push_number(&mut text, rule.mm);
            text.push_str(" mm (");
            text.push_str(rule.level.as_str());
            text.push(')');
        } else {
            text.push_str(" mm < 短时强降水 reset ");
            rule_text::push_number(&mut text, rule.reset);
            text.push_str(" mm");
        }
        (text, total)
    }

    /// Judge the point's rules at event time `at`; remember the outcome for flap detection.
    fn evaluate(&mut self, at: Millis, rules: &Rules) -> Option<Cause> {
        let before = self.level(rules);
        let values = self.rule_values();
        let signal = self.tracker.evaluate(values, at, &self.point.thresholds);
        let burst = match (&mut self.intensity, &self.rain) {
            (Some(latch), Some(rain)) => {
                let total = rain.total(rules.intensity.window_min).unwrap_or(0.0);
                latch
                    .evaluate(total, &rules.intensity)
                    .map(|raised| (raised, total))
            }
            _ => None,
        };
        let after = self.level(rules);
        self.flap.record(after, &rules.flapping);
        if after == before {
            return None;
        }
        // Name the rule that moved the point: going up, the one that now holds it there;
        // going down, the one that held it before.
        let signal_moved_it = signal.as_ref().is_some_and(|c| {
            if after > before {
                c.to == after
            } else {
                c.from == before
            }
        });
        let (rule, value) = match (signal, burst) {
            (Some(change), _) if signal_moved_it => self.describe(&change, &values),
            (_, Some((raised, total))) => Self::describe_intensity(&rules.intensity, raised, total),
            (Some(change), None) => self.describe(&change, &values),
            (None, None) => (format!("{before} → {after}"), 0.0),
        };
        let kind = match (before, after) {
            (Level::Normal, _) => TransitionKind::Raised,
            (_, Level::Normal) => TransitionKind::Cleared,
            (f, t) if t > f => TransitionKind::Upgraded,
            _ => TransitionKind::Downgraded,
        };
        Some(Cause {
            kind,
            from: before,
            to: after,
            at,
            rule,
            value,
        })
    }

    /// Ask for the separate allocations applying a reading to this point reads, but for its
    /// sensors' own (see [`prefetch_sensors`](Self::prefetch_sensors)). The state itself should
    /// be in cache already: its pointers are read here.
    fn prefetch_for_reading(&self) {
        prefetch(&*self.point.thresholds);
        // A sensor's state spans several cache lines, and its quality control is not in the
        // first; a point has a sensor or two.
        prefetch_first(&self.sensors, 2);
        self.rise.prefetch();
        self.flap.prefetch();
        if let Some(rain) = &self.rain {
            rain.prefetch();
        }
    }

    /// Ask for the separate allocations building this point's status reads (the thresholds the
    /// prediction reads, the sensors' depths, the rain totals, an id too long to be kept
    /// inline); the rise is a slope kept in the state. The state itself should be in cache
    /// already.
    fn prefetch_for_status(&self) {
        if self.point.id.is_heap_allocated() {
            prefetch(self.point.id.as_str());
        }
        prefetch(&*self.point.thresholds);
        prefetch_first(&self.sensors, 2);
        if let Some(rain) = &self.rain {
            rain.prefetch();
        }
    }

    /// Ask for the allocations of the point's sensors (the history their quality control
    /// reads, an id too long to be kept inline) and a gauge's rain buckets the next minute
    /// reads. The list of sensors and the rain windows should be in cache already.
    fn prefetch_sensors(&self) {
        for s in &self.sensors {
            if s.id.is_heap_allocated() {
                prefetch(s.id.as_str());
            }
            match self.point.kind.judged_by() {
                SensorKind::Depth => s.depth_qc.prefetch(),
                SensorKind::Rain => s.rain_qc.prefetch(),
            }
        }
        if let Some(rain) = &self.rain {
            rain.prefetch_next_minute();
        }
    }

    /// Take an accepted depth of the sensor at `slot` measured at `ts_ms`.
    fn accept_depth(&mut self, slot: usize, ts_ms: Millis, depth: f64) {
        // The newest measurement of each sensor is its depth; an older one that arrives late
        // only adds to the history behind the rate of rise.
        let latest = &mut self.sensors[slot].depth;
        let newest = latest.is_none_or(|(t, _)| t <= ts_ms);
        if newest {
            *latest = Some((ts_ms, depth));
        }
        let point_depth = if newest {
            self.depth().unwrap_or(depth)
        } else {
            depth
        };
        self.rise.record(ts_ms, point_depth);
    }
}

/// The rules for the points one worker owns.
pub struct Engine {
    /// Owned points in id order: silence is reported in that order on ties.
    points: Vec<PointState>,
    index: PointIndex,
    rules: Rules,
    clock: Arc<dyn Clock>,
    /// When the stage started, in event time; never-heard points count as silent from here.
    origin_ms: Millis,
    /// Readings that could not be applied (unknown point: config changed under the topic).
    pub unknown_points: u64,
    /// Newest event time among replayed readings: silence up to it was reported before.
    replay_horizon_ms: Millis,
    /// No point still to be reported can become silent before this. `advance_to` runs on
    /// every frontier move and otherwise scans every owned point each time.
    quiet_until_ms: Millis,
}

/// How far ahead of the reading being applied (or the point whose status is being built) the
/// memory of those to come is asked for, per step: a point's state `3 × AHEAD` ahead, what it
/// points to `2 × AHEAD` ahead (by then the state is in, so its pointers can be read without
/// waiting), its sensors' allocations `AHEAD` ahead. A reading's work is about a microsecond
/// and a miss a tenth of one, so a few places of lead are enough: a lead of 8 measured no
/// better than 4.
const AHEAD: usize = 4;

/// A reading of an epoch as [`Engine::apply_epoch`] orders them: its event time, its point's
/// place (`None`: a point not owned here) and its index in the epoch as given.
type Placed = (Millis, Option<u32>, u32);

/// One sensor's state at its point.
struct SensorState {
    id: Id,
    calibration_offset_cm: f64,
    /// Quality control of a depth sensor (left empty for a rain gauge).
    depth_qc: DepthQc,
    /// Quality control of a rain gauge (left empty for a depth sensor).
    rain_qc: RainQc,
    /// Latest accepted calibrated depth: (event time, cm).
    depth: Option<(Millis, f64)>,
}

/// Equal but for `as_of_ms` and `last_reading_ms`, two statuses of the same point (so their
/// ids are not compared: they are known equal). Field by field,
/// without building a copy of `prev` per point per epoch; the destructuring stops compiling
/// when a field is added, so a new field cannot silently be left out of the comparison.
fn same_but_timestamps(prev: &PointStatus, next: &PointStatus) -> bool {
    debug_assert_eq!(prev.point, next.point);
    let PointStatus {
        point: _,
        kind,
        level,
        data_state,
        depth_cm,
        rise_cm_per_min,
        rain_10m_mm,
        rain_1h_mm,
        rain_3h_mm,
        rain_24h_mm,
        last_reading_ms: _,
        qc_flags,
        next_level,
        minutes_to_next,
        flapping,
        as_of_ms: _,
    } = prev;
    *kind == next.kind
        && *level == next.level
        && *data_state == next.data_state
        && *depth_cm == next.depth_cm
        && *rise_cm_per_min == next.rise_cm_per_min
        && *rain_10m_mm == next.rain_10m_mm
        && *rain_1h_mm == next.rain_1h_mm
        && *rain_3h_mm == next.rain_3h_mm
        && *rain_24h_mm == next.rain_24h_mm
        && *qc_flags == next.qc_flags
        && *next_level == next.next_level
        && *minutes_to_next == next.minutes_to_next
        && *flapping == next.flapping
}

/// Steps a status's figures are rounded to: depth and rain to a hundredth of a centimetre or
/// millimetre, the rate of rise to a thousandth of a centimetre a minute, the minutes to the
/// next level to a tenth.
const HUNDREDTHS: f64 = 100.0;
const THOUSANDTHS: f64 = 1_000.0;
const TENTHS: f64 = 10.0;

/// `value` rounded to the nearest 1 / `per_unit` for a status: finer than any gauge reads or
/// anyone acts on, where the sums and fits behind them carry float noise in their last digits
/// (`0.30000000000000004` mm of rain, a rise of `0.12345678901234568` cm/min). A status is
/// news only when what it shows changes ([`same_but_timestamps`]), so noise no one can see no
/// longer sends one; and a rounded figure is written as the short decimal it is, without the
/// general float formatting (4–7 % of a worker's samples in `sensors-sim`'s storm, in profiles
/// of `bench stream-core`; 0.3 % after).
fn shown(value: f64, per_unit: f64) -> f64 {
    // Adding zero turns a negative zero (a fall of less than half a step) into zero.
    (value * per_unit).round() / per_unit + 0.0
}

/// Build a transition from a point's state as it is now.
fn transition(
    st: &PointState,
    rules: &Rules,
    clock: &dyn Clock,
    cause: Cause,
    late: bool,
) -> AlertTransition {
    let prediction = st.prediction(rules);
    AlertTransition {
        point: st.point.id.to_string(),
        point_kind: st.point.kind,
        transition: cause.kind,
        from: cause.from,
        to: cause.to,
        event_ms: cause.at,
        processed_ms: clock.now_ms(),
        rule: cause.rule,
        value: cause.value,
        rise_cm_per_min: st.rise_cm_per_min(),
        late,
        next_level: prediction.map(|p| p.next_level),
        minutes_to_next: prediction.map(|p| p.minutes),
        flapping: st.flap.is_flapping(),
    }
}

impl Engine {
    /// An engine for the points `owns` accepts, started at event time `origin_ms`.
    pub fn new(
        district: &District,
        owns: impl Fn(&str) -> bool,
        clock: Arc<dyn Clock>,
        origin_ms: Millis,
    ) -> Self {
        let d = &district.defaults;
        let rules = Rules {
            cadence: d.cadence.clone(),
            qc: d.qc.clone(),
            intensity: d.rain_intensity.clone(),
            flapping: d.flapping.clone(),
            rise: d.rise.clone(),
        };
        let owned: BTreeMap<&str, &Point> = district
            .points
            .iter()
            .filter(|p| owns(&p.id))
            .map(|p| (p.id.as_str(), p))
            .collect();
        let points: Vec<PointState> = owned
            .values()
            .map(|p| PointState::new(PointSpec::of(p), &rules))
            .collect();
        let index = PointIndex::new(points.iter().map(|st| st.point.id.as_str()));
        Engine {
            points,
            index,
            rules,
            clock,
            origin_ms,
            unknown_points: 0,
            replay_horizon_ms: Millis::MIN,
            quiet_until_ms: Millis::MIN,
        }
    }

    /// Judge silence for every owned point up to (not including) `t_ms`.
    pub fn advance_to(&mut self, t_ms: Millis, out: &mut impl Outputs) {
        if t_ms <= self.quiet_until_ms {
            return;
        }
        let started = self.origin_ms;
        let rules = &self.rules;
        let mut fired = Vec::new();
        // A point's moment of silence only changes when a reading is applied to it, which
        // lowers this bound if need be.
        let mut quiet_until = Millis::MAX;
        for (i, st) in self.points.iter().enumerate() {
            if st.silent_reported {
                continue;
            }
            let at = st
                .silent_at
                .unwrap_or_else(|| started + st.silent_after_ms(rules));
            if at < t_ms {
                fired.push((at, i));
            } else {
                quiet_until = quiet_until.min(at);
            }
        }
        self.quiet_until_ms = quiet_until;
        // Emit in event-time order, ties by point id (the order of `points`).
        fired.sort_unstable();
        for (at, i) in fired {
            let st = &mut self.points[i];
            st.silent_reported = true;
            st.data_state = DataState::Silent;
            let level = st.level(rules);
            let status = st.status(at, rules);
            let rule = match st.last_ms {
                Some(_) => format!("no reading for {} s", st.silent_after_ms(rules) / 1000),
                None => "never heard from".to_string(),
            };
            let cause = Cause {
                kind: TransitionKind::Silent,
                from: level,
                to: level,
                at,
                rule,
                value: 0.0,
            };
            // Silence inside the rebuilt history was reported before the restart.
            if at > self.replay_horizon_ms {
                out.transition(transition(st, rules, &*self.clock, cause, false));
                out.status(&status);
            }
            st.last_status = Some(status);
        }
    }

    /// Apply one complete epoch. `epoch_ms` is the epoch's start; readings are applied in
    /// event-time order (a point's ties by sensor, sequence, value, lateness, replayed first),
    /// whatever order they come in.
    pub fn apply_epoch(
        &mut self,
        epoch_ms: Millis,
        readings: &[TimedReading],
        out: &mut impl Outputs,
    ) {
        let readings: Vec<&TimedReading> = readings.iter().collect();
        self.apply_gathered(epoch_ms, &readings, out);
    }

    /// [`Engine::apply_epoch`] for an epoch that came in pieces (containers of a poll, or of
    /// the exchange between workers), applied as one, without gathering the readings into
    /// one vector first: a reading is over a hundred bytes, and a minute's epoch of devices
    /// that all report on the minute came in several pieces, each copied (and the vector
    /// grown, all it held copied again) to gather them.
    pub fn apply_epoch_in_pieces(
        &mut self,
        epoch_ms: Millis,
        pieces: &[Vec<TimedReading>],
        out: &mut impl Outputs,
    ) {
        let readings: Vec<&TimedReading> = pieces.iter().flatten().collect();
        self.apply_gathered(epoch_ms, &readings, out);
    }

    fn apply_gathered(
        &mut self,
        epoch_ms: Millis,
        readings: &[&TimedReading],
        out: &mut impl Outputs,
    ) {
        self.advance_to(epoch_ms, out);
        // Every point looked up first, in arrival order, in passes of their own (see
        // `PointIndex::find_all`): the lookups do not depend on each other, so their cache
        // misses overlap (the index and the point states of a large district do not fit in
        // cache).
        let mut places = Vec::with_capacity(readings.len());
        self.index.find_all(
            readings.iter().map(|tr| tr.reading.point.as_str()),
            &self.points,
            &mut places,
        );
        // Then the readings' places in the epoch sorted rather than the readings: a reading
        // is over a hundred bytes, and a sort moves each several times. By event time, then
        // by point: readings of different points never meet, so their order between them
        // only has to be fixed, and the point's place (its rank in id order) fixes it with
        // an integer where the sensor id took a string comparison (an
        // epoch of devices that all report on the minute is all ties on time). It also walks
        // the point states in memory order. Within a point, the order that makes its result
        // the same whatever the arrival order: sensor, sequence, value, late, replayed
        // first. A stable sort: full ties (the same reading twice) keep their arrival order.
        // Readings of points not owned here (`None`) go first among their time and are only
        // counted.
        let mut keyed: Vec<Placed> = readings
            .iter()
            .zip(&places)
            .enumerate()
            .map(|(at, (tr, place))| (tr.reading.ts_ms, place.map(|i| i as u32), at as u32))
            .collect();
        keyed.sort_by(|&(ta, pa, a), &(tb, pb, b)| {
            ta.cmp(&tb).then(pa.cmp(&pb)).then_with(|| {
                let (a, b) = (readings[a as usize], readings[b as usize]);
                let (x, y) = (&a.reading, &b.reading);
                x.sensor
                    .cmp(&y.sensor)
                    .then_with(|| x.seq.cmp(&y.seq))
                    .then_with(|| x.value.total_cmp(&y.value))
                    .then_with(|| a.late.cmp(&b.late))
                    // History replayed to rebuild state before what is new: a live copy of
                    // a replayed reading (a record read again around the committed offset)
                    // would otherwise go by arrival.
                    .then_with(|| b.replay.cmp(&a.replay))
            })
        });
        // Points in the order of their first reading this epoch (at most one per reading:
        // grown from empty, a minute's epoch reallocated it a dozen times).
        let mut touched: Vec<usize> = Vec::with_capacity(readings.len());
        for (k, &(_, place, at)) in keyed.iter().enumerate() {
            // Each point's state and its allocations are scattered over a heap larger than
            // the cache, and what a reading does with them is short: waited for one after
            // another, the misses would be most of its time.
            self.prefetch_for_readings(&keyed, k);
            let tr = readings[at as usize];
            let Some(i) = place.map(|i| i as usize) else {
                self.unknown_points += 1;
                continue;
            };
            let st = &mut self.points[i];
            if !tr.replay && !st.touched {
                st.touched = true;
                touched.push(i);
            }
            if tr.replay {
                // Rebuild the state, drop the outputs: they are on the bus already.
                self.replay_horizon_ms = self.replay_horizon_ms.max(tr.reading.ts_ms);
                self.apply_reading(i, tr, &mut Dropped);
                let st = &mut self.points[i];
                st.last_status = Some(st.status(epoch_ms, &self.rules));
                continue;
            }
            self.apply_reading(i, tr, out);
        }
        let rules = &self.rules;
        // The status a point no longer needs, whose allocations the next one is built in.
        let mut spare = None;
        for k in 0..touched.len() {
            self.prefetch_for_statuses(&touched, k);
            let i = touched[k];
            let st = &mut self.points[i];
            st.touched = false;
            let status = st.status_reusing(epoch_ms, rules, spare.take());
            let changed = st
                .last_status
                .as_ref()
                .is_none_or(|prev| !same_but_timestamps(prev, &status));
            // Coalesce: one status per point per epoch, and only when something a user sees
            // changed (a new timestamp alone is not news unless the point was silent).
            if changed {
                out.status(&status);
                spare = st.last_status.replace(status);
            } else {
                spare = Some(status);
            }
        }
    }

    /// Ask for what applying the readings `AHEAD`, `2 × AHEAD` and `3 × AHEAD` places after
    /// the `k`-th of `keyed` (an epoch in the order it is applied) will read.
    fn prefetch_for_readings(&self, keyed: &[Placed], k: usize) {
        let point = |d: usize| {
            let &(_, place, _) = keyed.get(k + d)?;
            place.map(|i| &self.points[i as usize])
        };
        if let Some(st) = point(3 * AHEAD) {
            prefetch_whole(st);
        }
        if let Some(st) = point(2 * AHEAD) {
            st.prefetch_for_reading();
        }
        if let Some(st) = point(AHEAD) {
            st.prefetch_sensors();
        }
    }

    /// Ask for what building the statuses of the points `AHEAD` and `2 × AHEAD` places after
    /// the `k`-th of `touched` will read.
    fn prefetch_for_statuses(&self, touched: &[usize], k: usize) {
        let point = |d: usize| touched.get(k + d).map(|&i| &self.points[i]);
        if let Some(st) = point(2 * AHEAD) {
            prefetch_whole(st);
        }
        if let Some(st) = point(AHEAD) {
            st.prefetch_for_status();
        }
    }

    fn apply_reading(&mut self, i: usize, tr: &TimedReading, out: &mut impl Outputs) {
        let Engine {
            points,
            rules,
            clock,
            ..
        } = self;
        let clock: &dyn Clock = &**clock;
        let r = &tr.reading;
        let st = &mut points[i];
        // A rain sensor on a depth point (or the reverse) does not judge the point.
        if r.kind != st.point.kind.judged_by() {
            return;
        }
        // Rules judge event time, late or not: a late reading that shows water held above
        // red for a minute raises red (flagged late), as it would have on time.
        let at = r.ts_ms;
        let slot = st.sensor_slot(&r.sensor);
        let offset = st.sensors[slot].calibration_offset_cm;
        let value = match r.kind {
            SensorKind::Depth => r.value + offset,
            SensorKind::Rain => r.value,
        };
        if st.silent_reported {
            // The sensor talks again, whatever quality control makes of what it says.
            let level = st.level(rules);
            let cause = Cause {
                kind: TransitionKind::Recovered,
                from: level,
                to: level,
                at,
                rule: "reading received".to_string(),
                value,
            };
            out.transition(transition(st, rules, clock, cause, tr.late));
        }
        st.last_ms = Some(st.last_ms.map_or(at, |l| l.max(at)));
        st.silent_reported = false;
        let verdict = match r.kind {
            SensorKind::Depth => st.sensors[slot]
                .depth_qc
                .judge(at, r.value, value, &rules.qc),
            SensorKind::Rain => {
                st.sensors[slot]
                    .rain_qc
                    .judge(at, value, &rules.qc, rules.cadence.rain_normal_s)
            }
        };
        // The held reading first, at its own event time, then this one.
        let (buf, n) = match verdict {
            Verdict::Accept => ([(at, value), (0, 0.0)], 1),
            Verdict::Confirm(held) => ([(held.ts_ms, held.value), (at, value)], 2),
            Verdict::Reject(flags) => {
                if let Some(rain) = &mut st.rain {
                    rain.advance_to(at);
                }
                st.qc_flags = flags;
                ([(0, 0.0); 2], 0)
            }
        };
        let to_apply = &buf[..n];
        if !to_apply.is_empty() {
            st.qc_flags.clear();
        }
        st.data_state = if !st.qc_flags.is_empty() {
            DataState::Suspect
        } else if tr.late {
            DataState::Late
        } else {
            DataState::Fresh
        };
        for &(ts_ms, v) in to_apply {
            match &mut st.rain {
                Some(rain) => {
                    // Older than a day: no window can hold it, and none needs to.
                    let _ = rain.add(ts_ms, v);
                    rain.advance_to(ts_ms);
                }
                None => st.accept_depth(slot, ts_ms, v),
            }
            if let Some(m) = st.evaluate(ts_ms, rules) {
                out.transition(transition(st, rules, clock, m, tr.late));
            }
        }
        let last = st.last_ms.unwrap_or(at);
        let silent_at = last + st.silent_after_ms(rules);
        st.silent_at = Some(silent_at);
        self.quiet_until_ms = self.quiet_until_ms.min(silent_at);
    }

    /// Points this engine owns.
    pub fn point_count(&self) -> usize {
        self.points.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floodcmd_model::time::ManualClock;

    const T0: Millis = 1_783_000_000_000;
    const MIN: Millis = 60_000;

    fn district() -> District {
        District::from_toml_str(include_str!("../../config/xincheng.toml")).expect("sample")
    }

    fn rain(point: &str, sensor: &str, ts_ms: Millis, mm: f64) -> TimedReading {
        TimedReading {
            reading: Reading {
                sensor: sensor.into(),
                point: point.into(),
                kind: SensorKind::Rain,
                ts_ms,
                value: mm,
                seq: None,
                received_ms: ts_ms,
            },
            late: false,
            replay: false,
        }
    }

    /// Feed readings one epoch each, as the dataflow would.
    fn feed(engine: &mut Engine, readings: Vec<TimedReading>) -> Vec<StreamOutput> {
        let mut out = Vec::new();
        for r in readings {
            let epoch = r.reading.ts_ms / 1000 * 1000;
            engine.apply_epoch(epoch, &[r], &mut out);
        }
        out
    }

    /// Level transitions only: at a 5-minute cadence a wet gauge also goes silent (storm
    /// cadence is 60 s) and recovers, which is not what these tests are about.
    fn transitions(out: &[StreamOutput]) -> Vec<&AlertTransition> {
        out.iter()
            .filter_map(|o| match o {
                StreamOutput::Transition(t)
                    if !matches!(
                        t.transition,
                        TransitionKind::Silent | TransitionKind::Recovered
                    ) =>
                {
                    Some(t)
                }
                _ => None,
            })
            .collect()
    }

    fn last_status<'a>(out: &'a [StreamOutput], point: &str) -> &'a PointStatus {
        out.iter()
            .rev()
            .find_map(|o| match o {
                StreamOutput::Status(s) if s.point == point => Some(s),
                _ => None,
            })
            .expect("a status")
    }

    /// The status pass reports each point with a live reading once, in the order of its first
    /// reading in the epoch's canonical order (not the order given); a point read only to
    /// rebuild reports nothing; a reading of a point not owned is counted. The epoch is longer
    /// than the prefetch lead, so the places asked for ahead include readings of no point.
    #[test]
    fn an_epoch_reports_its_live_points_in_order_and_counts_unknown_ones() {
        let d = district();
        let clock = Arc::new(ManualClock::new(T0));
        let gauges = ["RG-01", "RG-02", "RG-03"];
        let mut engine = Engine::new(&d, |p| gauges.contains(&p), clock, T0);
        let at = T0 + 5_000;
        let replayed = TimedReading {
            replay: true,
            ..rain("RG-01", "RN-RG-01", at + 1, 0.2)
        };
        let mut epoch = vec![
            rain("RG-02", "RN-RG-02", at + 300, 0.2),
            replayed,
            rain("LP-01", "WL-LP-01", at + 50, 3.0),
            rain("RG-03", "RN-RG-03", at + 200, 0.2),
        ];
        for i in 0..3 * AHEAD as i64 {
            epoch.push(rain("NOPE", "NOPE-1", at + 400 + i, 0.1));
            epoch.push(rain("RG-02", "RN-RG-02", at + 400 + i, 0.1));
        }
        let mut out = Vec::new();
        engine.apply_epoch(T0 + 5_000, &epoch, &mut out);
        let reported: Vec<&str> = out
            .iter()
            .filter_map(|o| match o {
                StreamOutput::Status(s) => Some(s.point.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(reported, ["RG-03", "RG-02"]);
        // LP-01 is not this engine's, and neither is NOPE.
        assert_eq!(engine.unknown_points, 1 + 3 * AHEAD as u64);
    }

    /// Readings of several points at the same event time (devices that all report on the
    /// minute) are applied in the same order whatever order they come in, so the outputs are
    /// the same records in the same order: ties between points go by the point's place (its
    /// rank in id order), ties within a point by sensor and sequence, and a reading replayed
    /// to rebuild state goes before a live copy of itself.
    #[test]
    fn ties_on_time_give_the_same_outputs_in_the_same_order_whatever_the_arrival_order() {
        let d = district();
        // In id order; by sensor id (RN-RG-…, WL-LP-01) LP-01 would come last.
        let points = ["LP-01", "RG-01", "RG-02", "RG-03"];
        let numbered = |mut r: TimedReading, seq: u64| {
            r.reading.seq = Some(seq);
            r
        };
        let minute = |m: i64| {
            let at = T0 + m * MIN;
            let mut depth = rain("LP-01", "WL-LP-01", at, 2.0 + m as f64);
            depth.reading.kind = SensorKind::Depth;
            let replayed = TimedReading {
                replay: true,
                ..rain("RG-03", "RN-RG-03", at, 0.5)
            };
            vec![
                rain("RG-01", "RN-RG-01", at, 4.0 + m as f64),
                rain("RG-02", "RN-RG-02", at, 9.0),
                replayed,
                rain("RG-03", "RN-RG-03", at, 0.5),
                depth,
                numbered(rain("RG-02", "RN-RG-02", at, 12.0), 2),
                numbered(rain("RG-02", "RN-RG-02", at, 3.0), 1),
            ]
        };
        let run = |arrange: &dyn Fn(&mut Vec<TimedReading>)| {
            let clock = Arc::new(ManualClock::new(T0));
            let mut engine = Engine::new(&d, |p| points.contains(&p), clock, T0);
            let mut out = Vec::new();
            for m in 0..8 {
                let mut epoch = minute(m);
                arrange(&mut epoch);
                engine.apply_epoch(T0 + m * MIN, &epoch, &mut out);
            }
            out
        };
        let given = run(&|_| {});
        assert_eq!(given, run(&|e| e.reverse()));
        assert_eq!(given, run(&|e| e.rotate_left(2)));
        // An epoch that comes in pieces (a poll's containers, the exchange's) is one epoch.
        for cuts in [vec![1], vec![3, 4], vec![1, 2, 5, 6], vec![7]] {
            let clock = Arc::new(ManualClock::new(T0));
            let mut engine = Engine::new(&d, |p| points.contains(&p), clock, T0);
            let mut out = Vec::new();
            for m in 0..8 {
                let mut epoch = minute(m);
                epoch.reverse();
                let mut pieces = Vec::new();
                for &at in cuts.iter().rev() {
                    pieces.push(epoch.split_off(at.min(epoch.len())));
                }
                pieces.push(epoch);
                pieces.reverse();
                engine.apply_epoch_in_pieces(T0 + m * MIN, &pieces, &mut out);
            }
            assert_eq!(given, out, "cut at {cuts:?}");
        }
        assert!(
            !transitions(&given).is_empty(),
            "the storm raises something, so transitions are compared too"
        );
        // The first epoch's statuses in id order of the points.
        let first: Vec<&str> = given
            .iter()
            .filter_map(|o| match o {
                StreamOutput::Status(s) if s.as_of_ms == T0 => Some(s.point.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(first, points);
    }

    /// A point may carry a sensor of the other kind (a rain gauge beside a depth sensor):
    /// its readings neither judge the point nor count as the point being heard from. Heavy
    /// rain on a depth point whose depth sensor has gone quiet raises nothing, and the point
    /// goes silent (and stays so) on time, keeping its level and its last depth.
    #[test]
    fn a_rain_gauge_on_a_depth_point_neither_judges_it_nor_keeps_it_from_going_silent() {
        let toml = include_str!("../../config/xincheng.toml").replace(
            "id = \"WL-LP-01\"\nkind = \"depth\"\ncalibration_offset_cm = 1.5\n",
            "id = \"WL-LP-01\"\nkind = \"depth\"\ncalibration_offset_cm = 1.5\n\
             [[points.sensors]]\nid = \"RN-LP-01\"\nkind = \"rain\"\n",
        );
        let d = District::from_toml_str(&toml).expect("sample with a gauge on LP-01");
        assert!(
            d.sensor("RN-LP-01").is_some(),
            "the gauge was added to the district"
        );
        let clock = Arc::new(ManualClock::new(T0));
        let mut engine = Engine::new(&d, |p| p == "LP-01", clock, T0);
        let depth = |ts_ms| TimedReading {
            reading: Reading {
                kind: SensorKind::Depth,
                value: 12.0,
                ..rain("LP-01", "WL-LP-01", ts_ms, 0.0).reading
            },
            late: false,
            replay: false,
        };
        // 13.5 cm calibrated, over blue (10 cm) for its hold of a minute: blue is raised.
        let last_depth_ms = T0 + 1_000 + MIN;
        let mut out = feed(&mut engine, vec![depth(T0 + 1_000), depth(last_depth_ms)]);
        let heard = last_status(&out, "LP-01").clone();
        assert_eq!(heard.depth_cm, Some(13.5), "calibrated depth");
        assert_eq!(heard.data_state, DataState::Fresh);
        assert_eq!(heard.level, Level::Blue);
        // 30 mm every 30 s for 10 minutes: red many times over, were it a rain gauge's point.
        let rain_on_it: Vec<TimedReading> = (1..=20)
            .map(|k| rain("LP-01", "RN-LP-01", last_depth_ms + k * 30_000, 30.0))
            .collect();
        out.extend(feed(&mut engine, rain_on_it));
        let changes: Vec<(TransitionKind, Millis)> = out
            .iter()
            .filter_map(|o| match o {
                StreamOutput::Transition(t) => Some((t.transition, t.event_ms)),
                _ => None,
            })
            .collect();
        // Wet, so the storm cadence: silent 3 missed minutes after the last depth reading.
        assert_eq!(
            changes,
            [
                (TransitionKind::Raised, last_depth_ms),
                (TransitionKind::Silent, last_depth_ms + 3 * MIN)
            ],
            "the gauge's readings raise nothing more and recover nothing"
        );
        let last = last_status(&out, "LP-01");
        assert_eq!(last.data_state, DataState::Silent);
        assert_eq!(last.level, Level::Blue, "silence keeps the level");
        assert_eq!(last.depth_cm, Some(13.5), "and the last depth");
        assert_eq!(last.last_reading_ms, Some(last_depth_ms));
    }

    /// Rounded for a status, a change too small to show is no change at all, not a negative
    /// zero.
    #[test]
    fn a_figure_too_small_to_show_is_zero_without_a_sign() {
        assert_eq!(shown(-0.0004, THOUSANDTHS).to_bits(), 0.0f64.to_bits());
        assert_eq!(shown(-0.0006, THOUSANDTHS), -0.001);
        assert_eq!(shown(0.1 + 0.2, HUNDREDTHS), 0.3);
    }

    /// A status shows its figures rounded (depth and rain to hundredths, rise to thousandths,
    /// minutes to the next level to tenths), whatever noise the sums and the fit carry, and a
    /// change below what it shows sends no status.
    #[test]
    fn a_status_shows_its_figures_rounded_and_noise_below_them_is_not_news() {
        let d = district();
        let clock = Arc::new(ManualClock::new(T0));
        let mut engine = Engine::new(&d, |p| p == "LP-01" || p == "RG-01", clock, T0);
        let depth = |ts_ms, cm: f64| TimedReading {
            reading: Reading {
                kind: SensorKind::Depth,
                value: cm,
                ..rain("LP-01", "WL-LP-01", ts_ms, 0.0).reading
            },
            late: false,
            replay: false,
        };
        // Rising by thirds of a centimetre a minute toward blue (10 cm, calibrated +1.5 cm),
        // and tips of 0.1 mm whose sums are not tenths as doubles (0.1 + 0.2 ≠ 0.3).
        let mut readings = Vec::new();
        for m in 0..6 {
            readings.push(depth(T0 + m * MIN, 2.0 + m as f64 / 3.0));
            readings.push(rain("RG-01", "RN-RG-01", T0 + m * MIN + 500, 0.1));
        }
        let out = feed(&mut engine, readings);
        let rounded = |v: f64, per_unit: f64| (v * per_unit).round() / per_unit == v;
        let statuses: Vec<&PointStatus> = out
            .iter()
            .filter_map(|o| match o {
                StreamOutput::Status(s) => Some(s),
                _ => None,
            })
            .collect();
        let lp = last_status(&out, "LP-01");
        let rise = lp.rise_cm_per_min.expect("a rise after six minutes");
        assert!((rise - 1.0 / 3.0).abs() < 0.001, "{rise}");
        assert!(lp.minutes_to_next.is_some(), "rising toward blue: {lp:?}");
        let rg = last_status(&out, "RG-01");
        assert_eq!(rg.rain_10m_mm, Some(0.6), "six tips");
        for s in &statuses {
            for (v, per_unit) in [
                (s.depth_cm, 100.0),
                (s.rain_10m_mm, 100.0),
                (s.rain_1h_mm, 100.0),
                (s.rain_3h_mm, 100.0),
                (s.rain_24h_mm, 100.0),
                (s.rise_cm_per_min, 1000.0),
                (s.minutes_to_next, 10.0),
            ] {
                if let Some(v) = v {
                    assert!(rounded(v, per_unit), "{v} in {s:?}");
                }
            }
        }
        // A thousandth of a centimetre more, a second later: nothing shown changes.
        let last = T0 + 5 * MIN;
        let again = feed(
            &mut engine,
            vec![depth(last + 1_000, 2.0 + 5.0 / 3.0 + 0.001)],
        );
        assert!(
            !again.iter().any(|o| matches!(o, StreamOutput::Status(_))),
            "{again:?}"
        );
        // A tenth of a centimetre more is news.
        let news = feed(
            &mut engine,
            vec![depth(last + 2_000, 2.0 + 5.0 / 3.0 + 0.1)],
        );
        assert!(news.iter().any(|o| matches!(o, StreamOutput::Status(_))));
    }

    #[test]
    fn harvey_gauge_520_100_6_mm_in_5_minutes_raises_nothing_and_is_suspect() {
        let d = district();
        let clock = Arc::new(ManualClock::new(T0));
        let mut engine = Engine::new(&d, |p| p == "RG-01", clock, T0);
        // Normal 5-minute reports, then 3.96 in = 100.6 mm in one 5-minute report.
        let mut readings: Vec<TimedReading> = (0..6)
            .map(|i| rain("RG-01", "RN-RG-01", T0 + i * 5 * MIN, 0.8))
            .collect();
        readings.push(rain("RG-01", "RN-RG-01", T0 + 30 * MIN, 100.6));
        let out = feed(&mut engine, readings);
        assert!(transitions(&out).is_empty(), "{:#?}", transitions(&out));
        let s = last_status(&out, "RG-01");
        assert_eq!(s.data_state, DataState::Suspect);
        assert_eq!(s.qc_flags, vec![QcFlag::RainIntensity]);
        assert_eq!(s.level, Level::Normal);
        assert!(
            s.rain_3h_mm.is_some_and(|mm| (mm - 4.8).abs() < 1e-9),
            "the suspect increment is not in the windows: {:?}",
            s.rain_3h_mm
        );
        // The next report is normal again: the point is trusted again, still nothing raised.
        let out = feed(
            &mut engine,
            vec![rain("RG-01", "RN-RG-01", T0 + 35 * MIN, 0.9)],
        );
        assert!(transitions(&out).is_empty());
        assert_eq!(last_status(&out, "RG-01").data_state, DataState::Fresh);
    }

    #[test]
    fn twenty_mm_in_an_hour_raises_blue_by_the_intensity_rule_and_names_it() {
        let d = district();
        let clock = Arc::new(ManualClock::new(T0));
        let mut engine = Engine::new(&d, |p| p == "RG-02", clock, T0);
        let readings = (0..12)
            .map(|i| rain("RG-02", "RN-RG-02", T0 + i * 5 * MIN, 2.0))
            .collect();
        let out = feed(&mut engine, readings);
        let t = transitions(&out);
        assert_eq!(t.len(), 1, "{t:#?}");
        assert_eq!(
            (t[0].transition, t[0].to),
            (TransitionKind::Raised, Level::Blue)
        );
        assert_eq!(t[0].event_ms, T0 + 45 * MIN, "the tenth report makes 20 mm");
        assert!(
            t[0].rule.starts_with("rain 1h 20.0 mm >= 短时强降水"),
            "{}",
            t[0].rule
        );
        // Dry for an hour: the 1-hour total falls under the reset, the rule lets go.
        let out = feed(
            &mut engine,
            vec![rain("RG-02", "RN-RG-02", T0 + 120 * MIN, 0.0)],
        );
        let t = transitions(&out);
        assert_eq!(
            (t[0].transition, t[0].to),
            (TransitionKind::Cleared, Level::Normal)
        );
        assert!(t[0].rule.contains("短时强降水 reset"), "{}", t[0].rule);
    }

    /// The rule texts as they were written with `format!` before `rule_text` wrote them by
    /// hand: every point of the sample district, every level's rule up and down, at values
    /// whole, in tenths, and neither.
    #[test]
    fn rule_texts_are_what_format_wrote() {
        let d = district();
        let clock = Arc::new(ManualClock::new(T0));
        let engine = Engine::new(&d, |_| true, clock, T0);
        let window = |w: u32| match (w / 60, w % 60) {
            (hours, 0) => format!("{hours}h"),
            _ => format!("{w}min"),
        };
        let mut checked = 0;
        for st in &engine.points {
            for by in [Level::Blue, Level::Yellow, Level::Orange, Level::Red] {
                let th = st.point.thresholds.get(by).expect("every level has a rule");
                for v in [0.0, 15.0, 25.3, 49.95, 123.456, -0.04, 1e17] {
                    let mut values = [0.0; 4];
                    values[by.alert_index().unwrap()] = v;
                    for up in [true, false] {
                        let change = LevelChange {
                            from: Level::Normal,
                            to: by,
                            by,
                            up,
                        };
                        let what = match th.window_min {
                            Some(w) => format!("rain {}", window(w)),
                            None => "depth".to_string(),
                        };
                        let unit = st.point.kind.unit();
                        let expected = if up {
                            format!("{what} {v:.1} {unit} >= {by} {} {unit}", th.raise)
                        } else {
                            format!("{what} {v:.1} {unit} < {by} reset {} {unit}", th.reset)
                        };
                        assert_eq!(st.describe(&change, &values), (expected, v));
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 100, "{checked}");
        let mut rule = RainIntensityRule::default();
        for (mm, reset, total) in [(20.0, 16.0, 20.0), (12.5, 10.0, 7.25), (30.0, 24.5, 0.0)] {
            (rule.mm, rule.reset) = (mm, reset);
            rule.window_min = if mm > 25.0 { 10 } else { 60 };
            let what = format!("rain {} {total:.1} mm", window(rule.window_min));
            assert_eq!(
                PointState::describe_intensity(&rule, true, total).0,
                format!("{what} >= 短时强降水 {mm} mm ({})", rule.level)
            );
            assert_eq!(
                PointState::describe_intensity(&rule, false, total).0,
                format!("{what} < 短时强降水 reset {reset} mm")
            );
        }
    }
}

#[cfg(test)]
mod exchange_tests {
    use super::TimedReading;
    use floodcmd_model::{Reading, SensorKind};

    /// Between processes timely encodes with bincode: a reading without a sequence number
    /// (its JSON form skips `seq`) must come back whole, as one with a number does.
    #[test]
    fn a_timed_reading_crosses_processes_whole() {
        for seq in [None, Some(7)] {
            let r = TimedReading {
                reading: Reading {
                    sensor: "WL-UP-01".into(),
                    point: "UP-01".into(),
                    kind: SensorKind::Depth,
                    ts_ms: 1_700_000_000_000,
                    value: 12.5,
                    seq,
                    received_ms: 1_700_000_000_400,
                },
                late: true,
                replay: false,
            };
            let bytes = bincode::serialize(&r).unwrap();
            let back: TimedReading = bincode::deserialize(&bytes).unwrap();
            assert_eq!(back, r);
        }
    }
}
