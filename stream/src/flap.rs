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
    /// How many consecutive pairs of `history` differ. Most points go many evaluations
    /// without a change, and with none to weigh the ratio is 0 without walking the history,
    /// which every reading's evaluation otherwise did.
    changes: u32,
    flapping: bool,
}

impl FlapDetector {
    /// A detector remembering `history` evaluations (at least two).
    pub fn new(history: u32) -> Self {
        FlapDetector {
            history: std::iter::repeat_n(Level::Normal, history.max(2) as usize).collect(),
            changes: 0,
            flapping: false,
        }
    }

    /// Remember the level one evaluation ended at; returns whether the point now flaps.
    pub fn record(&mut self, level: Level, settings: &Flapping) -> bool {
        let gone = self.history.pop_front().expect("at least two");
        if self.history.front().is_some_and(|&first| first != gone) {
            self.changes -= 1;
        }
        if self.history.back().is_some_and(|&last| last != level) {
            self.changes += 1;
        }
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

    /// The weighted share of consecutive evaluations that changed level, 0 to about 1 (a
    /// positive 0 when none did, where an empty float sum gives a negative one; the two
    /// compare alike).
    pub fn change_ratio(&self) -> f64 {
        if self.changes == 0 {
            return 0.0;
        }
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

    /// The ratio as the module describes it, walked afresh.
    fn walked_ratio(history: &[Level]) -> f64 {
        let pairs = history.len() - 1;
        let step = if pairs > 1 {
            (NEWEST_WEIGHT - OLDEST_WEIGHT) / (pairs - 1) as f64
        } else {
            0.0
        };
        let changes: f64 = history
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] != w[1])
            .map(|(i, _)| OLDEST_WEIGHT + step * i as f64)
            .sum();
        changes / pairs as f64
    }

    proptest::proptest! {
        /// The kept count of changes never lets the ratio differ from walking the history:
        /// long steady runs (the shortcut) between bursts of changes, in histories of any
        /// length.
        #[test]
        fn the_ratio_is_the_walked_ratio_whatever_the_levels(
            history in 2u32..30,
            runs in proptest::collection::vec((0u8..5, 1usize..40), 1..40),
        ) {
            let s = Flapping { history, ..Flapping::default() };
            let mut f = FlapDetector::new(s.history);
            for (level, times) in runs {
                let level = [Normal, Blue, Yellow, Orange, Red][level as usize];
                for _ in 0..times {
                    f.record(level, &s);
                    let kept: Vec<Level> = f.history.iter().copied().collect();
                    let differing = kept.windows(2).filter(|w| w[0] != w[1]).count();
                    proptest::prop_assert_eq!(f.changes as usize, differing);
                    proptest::prop_assert_eq!(f.change_ratio(), walked_ratio(&kept));
                }
            }
        }
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
