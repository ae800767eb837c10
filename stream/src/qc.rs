//! Quality control of readings, per sensor, in event time.
//!
//! A sensor that lies must not raise a level, and a sensor that reports a real jump must not
//! be ignored for long. So a reading that looks wrong is held back, not thrown away: if the
//! next reading agrees with it, the jump was real and both are applied (the held one at its
//! own event time); if not, it stays flagged and never touches a level.
//!
//! Depth checks, in order: the physical range (defensive: ingest judges it too, but any
//! producer can write the topic), a stuck sensor (the same non-zero value for a long time),
//! then the jump checks: distance from the median of the sensor's recent accepted readings
//! (spike) and speed of change since its last accepted reading (rate).
//!
//! Rain checks: the physical range, and the intensity an increment implies over its reporting
//! interval (a gauge that reports 100.6 mm in 5 minutes is broken, not in a storm).

use crate::prefetch::prefetch_deque;
use floodcmd_model::config::QualityControl;
use floodcmd_model::event::QcFlag;
use floodcmd_model::time::Millis;
use floodcmd_model::SensorKind;
use std::collections::VecDeque;

const MINUTE_MS: f64 = 60_000.0;

/// A reading held back until the next one says whether it was real.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Held {
    /// Its event time.
    pub ts_ms: Millis,
    /// Its value: calibrated depth (cm) or rain increment (mm).
    pub value: f64,
}

/// What to do with a reading.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Apply it.
    Accept,
    /// It agrees with the reading held back: apply that one first, at its own event time,
    /// then this one.
    Confirm(Held),
    /// Do not let it move a level; the point is suspect.
    Reject(Vec<QcFlag>),
}

/// The median of `values`; the mean of the middle two for an even count.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    // Sorted on the stack when there are few (a spike check takes the median of the last
    // handful of readings, for every depth reading): a vector per reading was an allocation.
    const ON_STACK: usize = 16;
    let mut few = [0.0f64; ON_STACK];
    let mut count = 0;
    let mut many: Vec<f64> = Vec::new();
    for value in values {
        if count < ON_STACK {
            few[count] = value;
        } else {
            if many.is_empty() {
                many.extend_from_slice(&few);
            }
            many.push(value);
        }
        count += 1;
    }
    let v: &mut [f64] = if count <= ON_STACK {
        &mut few[..count]
    } else {
        &mut many
    };
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// cm (or mm) per minute between two readings; `None` when they share a timestamp.
fn per_minute(from: Held, to_ms: Millis, to_value: f64) -> Option<f64> {
    let dt = to_ms - from.ts_ms;
    (dt > 0).then(|| (to_value - from.value).abs() / (dt as f64 / MINUTE_MS))
}

/// The current run of identical raw values.
#[derive(Clone, Copy, Debug)]
struct FlatRun {
    raw: f64,
    since_ms: Millis,
    readings: u32,
}

/// Quality control of one depth sensor.
#[derive(Clone, Debug, Default)]
pub struct DepthQc {
    /// The latest accepted depths, oldest first. A confirmed jump starts a new regime: the
    /// values from before it no longer say what is normal.
    accepted: VecDeque<f64>,
    last_accepted: Option<Held>,
    held: Option<Held>,
    run: Option<FlatRun>,
    /// The newest event time judged, accepted or not.
    newest_ms: Option<Millis>,
}

impl DepthQc {
    /// Judge a reading: `raw` as the device sent it, `depth` after calibration.
    pub fn judge(&mut self, ts_ms: Millis, raw: f64, depth: f64, qc: &QualityControl) -> Verdict {
        let (lo, hi) = SensorKind::Depth.physical_range();
        let in_range = (lo..=hi).contains(&raw);
        if self.newest_ms.is_some_and(|n| ts_ms < n) {
            // A late reading older than what this sensor already said: the run, the rate and
            // the held spike are about consecutive readings and cannot judge it; the median can.
            return if !in_range {
                Verdict::Reject(vec![QcFlag::Range])
            } else if self.is_spike(depth, qc) {
                Verdict::Reject(vec![QcFlag::Spike])
            } else {
                Verdict::Accept
            };
        }
        self.newest_ms = Some(ts_ms);
        let run = match &mut self.run {
            Some(run) if run.raw == raw => {
                run.readings += 1;
                *run
            }
            _ => *self.run.insert(FlatRun {
                raw,
                since_ms: ts_ms,
                readings: 1,
            }),
        };
        if !in_range {
            self.held = None;
            return Verdict::Reject(vec![QcFlag::Range]);
        }
        // A sensor flat at its own zero or at the road's is dry, not stuck.
        let stuck = raw > 0.0
            && depth > 0.0
            && run.readings >= qc.stuck_after_readings
            && ts_ms - run.since_ms >= qc.stuck_after_s as Millis * 1000;
        if stuck {
            self.held = None;
            return Verdict::Reject(vec![QcFlag::Stuck]);
        }
        let mut flags = Vec::new();
        if self.is_spike(depth, qc) {
            flags.push(QcFlag::Spike);
        }
        let too_fast = self
            .last_accepted
            .and_then(|last| per_minute(last, ts_ms, depth))
            .is_some_and(|rate| rate > qc.max_rate_cm_per_min);
        if too_fast {
            flags.push(QcFlag::Rate);
        }
        let here = Held {
            ts_ms,
            value: depth,
        };
        if flags.is_empty() {
            self.held = None;
            self.accept(here, qc);
            return Verdict::Accept;
        }
        match self.held.take() {
            Some(held) if Self::agree(held, here, qc) => {
                self.accepted.clear();
                self.accepted.push_back(held.value);
                self.accept(here, qc);
                Verdict::Confirm(held)
            }
            _ => {
                self.held = Some(here);
                Verdict::Reject(flags)
            }
        }
    }

    /// Ask for the memory [`judge`](Self::judge) reads beyond the struct itself (a hint; see
    /// `Engine::apply_epoch`).
    pub(crate) fn prefetch(&self) {
        prefetch_deque(&self.accepted);
    }

    fn is_spike(&self, depth: f64, qc: &QualityControl) -> bool {
        median(self.accepted.iter().copied()).is_some_and(|m| (depth - m).abs() > qc.spike_cm)
    }

    /// Two consecutive readings, both off the old normal, within a spike of each other. Not
    /// judged by rate: water that keeps rising faster than the rate limit must still get
    /// through, a reading late, rather than be locked out for as long as it rises.
    fn agree(held: Held, next: Held, qc: &QualityControl) -> bool {
        (next.value - held.value).abs() <= qc.spike_cm
    }

    fn accept(&mut self, reading: Held, qc: &QualityControl) {
        self.accepted.push_back(reading.value);
        while self.accepted.len() > qc.median_of.max(1) as usize {
            self.accepted.pop_front();
        }
        self.last_accepted = Some(reading);
    }
}

/// How many recent report times a rain gauge remembers to find a report's predecessor.
const RAIN_TIMES_KEPT: usize = 16;

/// Quality control of one rain gauge.
#[derive(Clone, Debug, Default)]
pub struct RainQc {
    /// Event times of its latest reports, sorted.
    recent_ms: VecDeque<Millis>,
    held: Option<Held>,
}

impl RainQc {
    /// Ask for the memory [`judge`](Self::judge) reads beyond the struct itself (a hint).
    pub(crate) fn prefetch(&self) {
        prefetch_deque(&self.recent_ms);
    }

    /// Judge an increment of `mm` reported at `ts_ms`. `usual_interval_s` stands in for the
    /// reporting interval of a gauge's first report.
    pub fn judge(
        &mut self,
        ts_ms: Millis,
        mm: f64,
        qc: &QualityControl,
        usual_interval_s: u32,
    ) -> Verdict {
        let (lo, hi) = SensorKind::Rain.physical_range();
        let pos = self.recent_ms.partition_point(|t| *t <= ts_ms);
        let previous = pos.checked_sub(1).map(|i| self.recent_ms[i]);
        self.recent_ms.insert(pos, ts_ms);
        if self.recent_ms.len() > RAIN_TIMES_KEPT {
            self.recent_ms.pop_front();
        }
        if !(lo..=hi).contains(&mm) {
            return Verdict::Reject(vec![QcFlag::Range]);
        }
        let interval_s = match previous {
            Some(p) => (ts_ms - p) as f64 / 1000.0,
            None => usual_interval_s as f64,
        }
        .max(qc.rain_min_interval_s as f64);
        let mm_per_h = mm * 3600.0 / interval_s;
        if mm_per_h <= qc.rain_max_mm_h {
            self.held = None;
            return Verdict::Accept;
        }
        let here = Held { ts_ms, value: mm };
        match self.held.take() {
            // Two consecutive reports over the cap: a real cloudburst, not one bad report.
            Some(held) if Some(held.ts_ms) == previous => Verdict::Confirm(held),
            _ => {
                self.held = Some(here);
                Verdict::Reject(vec![QcFlag::RainIntensity])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Millis = 60_000;

    fn qc() -> QualityControl {
        QualityControl::default()
    }

    fn depths(q: &mut DepthQc, series: &[(Millis, f64)]) -> Vec<Verdict> {
        series
            .iter()
            .map(|(t, d)| q.judge(*t, *d, *d, &qc()))
            .collect()
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(Vec::<f64>::new()), None);
    }

    #[test]
    fn the_median_is_the_same_past_what_fits_on_the_stack() {
        for n in [15usize, 16, 17, 33, 34] {
            let values: Vec<f64> = (0..n).map(|i| ((i * 7919) % 101) as f64 - 50.0).collect();
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let expected = if n % 2 == 1 {
                sorted[n / 2]
            } else {
                (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
            };
            assert_eq!(median(values), Some(expected), "{n} values");
        }
    }

    #[test]
    fn a_lone_spike_is_rejected_and_a_confirmed_jump_is_applied() {
        let mut q = DepthQc::default();
        let v = depths(
            &mut q,
            &[
                (0, 5.0),
                (M, 5.5),
                (2 * M, 40.0),
                (3 * M, 6.0),
                (4 * M, 6.5),
            ],
        );
        assert_eq!(v[2], Verdict::Reject(vec![QcFlag::Spike, QcFlag::Rate]));
        assert_eq!(v[3], Verdict::Accept, "back to normal: the spike stays out");
        assert_eq!(v[4], Verdict::Accept);

        let mut q = DepthQc::default();
        let v = depths(&mut q, &[(0, 5.0), (M, 5.0), (2 * M, 30.0), (3 * M, 31.0)]);
        assert!(matches!(v[2], Verdict::Reject(_)));
        assert_eq!(
            v[3],
            Verdict::Confirm(Held {
                ts_ms: 2 * M,
                value: 30.0
            })
        );
        let v = depths(&mut q, &[(4 * M, 32.0)]);
        assert_eq!(v[0], Verdict::Accept, "the new level is the new normal");
    }

    #[test]
    fn a_flat_non_zero_value_for_half_an_hour_is_stuck_but_a_dry_sensor_is_not() {
        let mut q = DepthQc::default();
        let v = depths(
            &mut q,
            &(0..12).map(|i| (i * 3 * M, 12.0)).collect::<Vec<_>>(),
        );
        assert!(v[..10].iter().all(|x| *x == Verdict::Accept), "{v:?}");
        assert_eq!(
            v[10],
            Verdict::Reject(vec![QcFlag::Stuck]),
            "30 min, 11 readings"
        );
        let mut dry = DepthQc::default();
        let v = depths(
            &mut dry,
            &(0..40).map(|i| (i * 3 * M, 0.0)).collect::<Vec<_>>(),
        );
        assert!(v.iter().all(|x| *x == Verdict::Accept));
    }

    #[test]
    fn water_rising_faster_than_the_rate_limit_still_gets_through_a_reading_late() {
        let mut q = DepthQc::default();
        // 12 cm a minute for six minutes.
        let v = depths(
            &mut q,
            &(0..7).map(|i| (i * M, i as f64 * 12.0)).collect::<Vec<_>>(),
        );
        assert_eq!(v[0], Verdict::Accept);
        for i in [1, 3, 5] {
            assert!(matches!(v[i], Verdict::Reject(_)), "{i}: {:?}", v[i]);
            assert_eq!(
                v[i + 1],
                Verdict::Confirm(Held {
                    ts_ms: i as Millis * M,
                    value: i as f64 * 12.0
                }),
                "{i}"
            );
        }
    }

    #[test]
    fn an_impossible_rate_is_flagged_even_within_the_spike_band() {
        let mut q = DepthQc::default();
        let v = depths(&mut q, &[(0, 10.0), (30_000, 10.0), (60_000, 22.0)]);
        assert_eq!(v[2], Verdict::Reject(vec![QcFlag::Rate]), "24 cm/min");
    }

    #[test]
    fn harvey_gauge_520_reporting_100_6_mm_in_5_minutes_is_rejected() {
        let mut q = RainQc::default();
        let five = 5 * M;
        for i in 0..6 {
            assert_eq!(q.judge(i * five, 1.2, &qc(), 300), Verdict::Accept);
        }
        assert_eq!(
            q.judge(6 * five, 100.6, &qc(), 300),
            Verdict::Reject(vec![QcFlag::RainIntensity]),
            "1207 mm/h over its 5-minute interval"
        );
        assert_eq!(
            q.judge(7 * five, 1.0, &qc(), 300),
            Verdict::Accept,
            "the next report is normal: the fault is not confirmed"
        );
    }

    #[test]
    fn two_consecutive_reports_over_the_cap_confirm_each_other() {
        let mut q = RainQc::default();
        assert_eq!(q.judge(0, 1.0, &qc(), 300), Verdict::Accept);
        assert!(matches!(q.judge(M, 4.0, &qc(), 300), Verdict::Reject(_)));
        assert_eq!(
            q.judge(2 * M, 4.5, &qc(), 300),
            Verdict::Confirm(Held {
                ts_ms: M,
                value: 4.0
            })
        );
    }
}
