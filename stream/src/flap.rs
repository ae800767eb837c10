//! Flap detection, as Kapacitor does it.
//!
//! Every evaluation of a point's level is remembered (the last `history` of them, starting all
//! normal). The change ratio is the share of consecutive evaluations whose level differs,
//! weighted from 0.8 for the oldest pair to 1.2 for the newest, so fresh changes count more.
//! A point starts flapping when the ratio rises above `high` and stops when it falls below
//! `low`; in between it keeps its state, so the flag itself does not flap.

use crate::prefetch::prefetch_deque;
use floodcmd_model::config::Flapping;
use floodcmd_model::Level;
use std::collections::VecDeque;

/// Weight of the oldest pair; the newest weighs 1.5 times as much.
const OLDEST_WEIGHT: f64 = 0.8;
const NEWEST_WEIGHT: f64 = 1.2;

/// The flap state of one point.
#[derive(Clone, Debug)]
pub struct FlapDetector {
    history: VecDeque<Level>,
    flapping: bool,
}

impl FlapDetector {
    /// A detector remembering `history` evaluations (at least two).
    pub fn new(history: u32) -> Self {
        FlapDetector {
            history: std::iter::repeat_n(Level::Normal, history.max(2) as usize).collect(),
            flapping: false,
        }
    }

    /// Remember the level one evaluation ended at; returns whether the point now flaps.
    pub fn record(&mut self, level: Level, settings: &Flapping) -> bool {
        self.history.pop_front();
        self.history.push_back(level);
        let ratio = self.change_ratio();
        if self.flapping && ratio < settings.low {
            self.flapping = false;
        } else if !self.flapping && ratio > settings.high {
            self.flapping = true;
        }
        self.flapping
    }

    /// Ask for the history [`record`](Self::record) reads and writes (a hint; the first few
    /// lines of a long one).
    pub(crate) fn prefetch(&self) {
        prefetch_deque(&self.history);
    }

    /// The weighted share of consecutive evaluations that changed level, 0 to about 1.
    pub fn change_ratio(&self) -> f64 {
        let pairs = self.history.len() - 1;
        let step = if pairs > 1 {
            (NEWEST_WEIGHT - OLDEST_WEIGHT) / (pairs - 1) as f64
        } else {
            0.0
        };
        let changes: f64 = self
            .history
            .iter()
            .zip(self.history.iter().skip(1))
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, _)| OLDEST_WEIGHT + step * i as f64)
            .sum();
        changes / pairs as f64
    }

    /// Whether the point flaps.
    pub fn is_flapping(&self) -> bool {
        self.flapping
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Level::*;

    #[test]
    fn up_and_down_every_few_evaluations_flaps_and_a_steady_level_settles() {
        let s = Flapping::default();
        let mut f = FlapDetector::new(s.history);
        let mut states = Vec::new();
        for _ in 0..8 {
            for l in [Normal, Blue, Normal] {
                states.push(f.record(l, &s));
            }
        }
        assert!(!states[1], "one change is not flapping");
        assert!(f.is_flapping(), "ratio {}", f.change_ratio());
        let mut settled_after = None;
        for i in 0..30 {
            if !f.record(Normal, &s) {
                settled_after = Some(i + 1);
                break;
            }
        }
        let n = settled_after.expect("settles");
        assert!(n > 1, "the flag has hysteresis too: settled after {n}");
    }

    #[test]
    fn a_single_rise_and_fall_is_not_flapping() {
        let s = Flapping::default();
        let mut f = FlapDetector::new(s.history);
        for l in [Blue, Yellow, Orange, Red, Red, Orange, Yellow, Blue, Normal] {
            assert!(!f.record(l, &s), "ratio {}", f.change_ratio());
        }
    }
}
