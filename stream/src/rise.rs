//! Rate of rise of a depth point, and when it will reach its next level at that rate.
//!
//! The rate is the slope of the least-squares line through the point's depths over the last
//! few minutes (event time), so one noisy reading bends it a little instead of doubling it.
//! The prediction is deliberately simple, a straight line to the next raise threshold: it is
//! there to tell people on duty "about 8 minutes", not to forecast a flood.

use crate::prefetch::prefetch_deque;
use floodcmd_model::config::{LevelThresholds, Rise};
use floodcmd_model::time::Millis;
use floodcmd_model::Level;
use std::collections::VecDeque;

const MINUTE_MS: f64 = 60_000.0;

/// Slope of the least-squares line through `(event time, value)` samples, value per minute.
/// `None` with fewer than two distinct times.
pub fn least_squares_slope(samples: &[(Millis, f64)]) -> Option<f64> {
    slope_of(samples.iter().copied())
}

/// The 2×2 normal equations solved in closed form: the fit runs once per accepted depth, and
/// a matrix library's allocations and dispatch cost more than the arithmetic itself.
fn slope_of(samples: impl Iterator<Item = (Millis, f64)> + Clone) -> Option<f64> {
    let mut it = samples.clone();
    let (t0, _) = it.next()?;
    let minutes = |t: Millis| (t - t0) as f64 / MINUTE_MS;
    let (mut n, mut sum_m) = (0usize, 0.0);
    for (t, _) in samples.clone() {
        n += 1;
        sum_m += minutes(t);
    }
    let mean = sum_m / n as f64;
    // Centred time keeps the normal equations well conditioned.
    let (mut sc, mut scc, mut sv, mut scv) = (0.0, 0.0, 0.0, 0.0);
    for (t, v) in samples {
        let c = minutes(t) - mean;
        sc += c;
        scc += c * c;
        sv += v;
        scv += c * v;
    }
    let count = n as f64;
    let det = count * scc - sc * sc;
    if det.abs() < 1e-12 {
        return None;
    }
    Some((count * scv - sc * sv) / det)
}

/// The recent depths of one point.
#[derive(Clone, Debug)]
pub struct RiseWindow {
    samples: VecDeque<(Millis, f64)>,
    window_ms: Millis,
    /// The fit of `samples`: every status and transition reads it, only `record` changes it.
    slope: Option<f64>,
}

impl RiseWindow {
    /// Keep `window_min` minutes behind the newest sample.
    pub fn new(window_min: u32) -> Self {
        RiseWindow {
            samples: VecDeque::new(),
            window_ms: window_min as Millis * 60_000,
            slope: None,
        }
    }

    /// Add a depth at event time `ts_ms` (late ones go in their place).
    pub fn record(&mut self, ts_ms: Millis, depth_cm: f64) {
        let pos = self.samples.partition_point(|(t, _)| *t <= ts_ms);
        self.samples.insert(pos, (ts_ms, depth_cm));
        let newest = self.samples.back().map_or(ts_ms, |(t, _)| *t);
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| *t < newest - self.window_ms)
        {
            self.samples.pop_front();
        }
        self.slope = slope_of(self.samples.iter().copied());
    }

    /// Ask for the samples [`record`](Self::record) searches and fits (a hint; the first few
    /// lines of a long window).
    pub(crate) fn prefetch(&self) {
        prefetch_deque(&self.samples);
    }

    /// The rate of rise, cm per minute.
    pub fn cm_per_min(&self) -> Option<f64> {
        self.slope
    }

    /// How many samples are in the window.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// No samples yet.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// When a rising point will reach its next level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    /// The next level above the current one.
    pub next_level: Level,
    /// Minutes until its raise threshold at the current rate (0 when already there and
    /// waiting out the hold time).
    pub minutes: f64,
}

/// The next level a point at `level` with `depth_cm`, rising at `cm_per_min`, will reach, and
/// when; `None` when not rising fast enough, already red, or too far ahead to say.
pub fn predict(
    level: Level,
    depth_cm: f64,
    cm_per_min: f64,
    thresholds: &LevelThresholds,
    settings: &Rise,
) -> Option<Prediction> {
    if cm_per_min.is_nan() || cm_per_min < settings.min_cm_per_min {
        return None;
    }
    let next_level = *Level::ALERTS.iter().find(|l| **l > level)?;
    let target = thresholds.get(next_level)?.raise;
    let minutes = ((target - depth_cm) / cm_per_min).max(0.0);
    (minutes <= settings.horizon_min as f64).then_some(Prediction {
        next_level,
        minutes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_straight_line_is_exact_and_noise_bends_it_only_a_little() {
        let line: Vec<(Millis, f64)> = (0..10).map(|i| (i * 30_000, 4.0 + i as f64)).collect();
        let s = least_squares_slope(&line).unwrap();
        assert!((s - 2.0).abs() < 1e-9, "1 cm per 30 s is 2 cm/min: {s}");
        let mut noisy = line.clone();
        noisy[5].1 += 3.0;
        let s = least_squares_slope(&noisy).unwrap();
        assert!((s - 2.0).abs() < 0.3, "{s}");
        assert_eq!(least_squares_slope(&line[..1]), None);
        assert_eq!(least_squares_slope(&[(5, 1.0), (5, 2.0)]), None);
    }

    /// The fit as a design matrix: columns of ones and of centred minutes, the normal
    /// equations `XᵀX β = Xᵀy` built with ndarray and solved (2×2) for the slope. The stage
    /// fits in closed form; this is the textbook form it must agree with.
    fn design_matrix_slope(samples: &[(Millis, f64)]) -> Option<f64> {
        use ndarray::{Array1, Array2};
        let (t0, _) = *samples.first()?;
        let minutes: Array1<f64> = samples
            .iter()
            .map(|(t, _)| (t - t0) as f64 / MINUTE_MS)
            .collect();
        let values: Array1<f64> = samples.iter().map(|(_, v)| *v).collect();
        let centred = &minutes - minutes.mean()?;
        let mut design = Array2::<f64>::ones((samples.len(), 2));
        design.column_mut(1).assign(&centred);
        let normal = design.t().dot(&design);
        let rhs = design.t().dot(&values);
        let det = normal[[0, 0]] * normal[[1, 1]] - normal[[0, 1]] * normal[[1, 0]];
        if det.abs() < 1e-12 {
            return None;
        }
        Some((normal[[0, 0]] * rhs[1] - normal[[1, 0]] * rhs[0]) / det)
    }

    proptest::proptest! {
        /// Windows as the stage keeps them (up to a few dozen depths, times in order at least a
        /// second apart or shared) give the same slope both ways, and neither where there is
        /// none.
        #[test]
        fn the_closed_form_fit_is_the_design_matrix_fit(
            start in 1_700_000_000_000i64..1_800_000_000_000,
            steps in proptest::collection::vec(
                (proptest::prop_oneof![proptest::strategy::Just(0i64), 1_000i64..90_000], 0.0f64..400.0),
                1..40,
            ),
        ) {
            let mut t = start;
            let samples: Vec<(Millis, f64)> = steps
                .iter()
                .map(|&(dt, depth)| {
                    t += dt;
                    (t, depth)
                })
                .collect();
            let (fast, reference) = (least_squares_slope(&samples), design_matrix_slope(&samples));
            proptest::prop_assert_eq!(fast.is_some(), reference.is_some(), "{:?}", samples);
            if let (Some(fast), Some(reference)) = (fast, reference) {
                let tolerance = 1e-9 * reference.abs().max(1.0);
                proptest::prop_assert!(
                    (fast - reference).abs() <= tolerance,
                    "closed form {} against {} for {:?}", fast, reference, samples
                );
            }
        }
    }

    #[test]
    fn the_window_keeps_the_last_minutes_only() {
        let mut w = RiseWindow::new(10);
        for i in 0..30 {
            w.record(i * 60_000, i as f64);
        }
        assert_eq!(w.len(), 11, "minutes 19 to 29");
        assert!((w.cm_per_min().unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_rising_orange_underpass_is_predicted_to_reach_red() {
        let th = LevelThresholds::underpass_default(); // red at 25 cm
        let s = Rise::default();
        let p = predict(Level::Orange, 21.0, 0.5, &th, &s).unwrap();
        assert_eq!(p.next_level, Level::Red);
        assert!((p.minutes - 8.0).abs() < 1e-9);
        assert_eq!(
            predict(Level::Red, 30.0, 2.0, &th, &s),
            None,
            "nothing above red"
        );
        assert_eq!(predict(Level::Blue, 11.0, 0.05, &th, &s), None, "noise");
        assert_eq!(
            predict(Level::Normal, 0.0, 0.1, &th, &s),
            None,
            "100 min ahead"
        );
    }
}
