//! Levels with hysteresis and hold times.
//!
//! Raising to a level needs the value at or above that level's `raise` for its `hold_s`
//! (Prometheus' `for`); leaving a level needs the value below that level's `reset`
//! (Kapacitor's reset levels). The two together stop a point flapping around a threshold.

use floodcmd_model::config::LevelThresholds;
use floodcmd_model::time::Millis;
use floodcmd_model::Level;

/// A level change and the rule behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct LevelChange {
    /// Before.
    pub from: Level,
    /// After.
    pub to: Level,
    /// The threshold level whose rule decided it.
    pub by: Level,
    /// True when going up.
    pub up: bool,
}

/// The level state machine of one point.
#[derive(Clone, Debug, Default)]
pub struct LevelTracker {
    level: Level,
    /// Per alert level: since when the value has been at or above `raise` without a break.
    above_since: [Option<Millis>; 4],
}

impl LevelTracker {
    /// Current level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Judge new values at event time `at`. `values[i]` is what the rule of alert level `i`
    /// looks at (the same depth for all four; a different window total for rain).
    pub fn evaluate(
        &mut self,
        values: [f64; 4],
        at: Millis,
        th: &LevelThresholds,
    ) -> Option<LevelChange> {
        for (i, level) in Level::ALERTS.iter().enumerate() {
            let t = th.get(*level).expect("alert level");
            if values[i] >= t.raise {
                self.above_since[i].get_or_insert(at);
            } else {
                self.above_since[i] = None;
            }
        }
        let held = |i: usize, level: Level| {
            let t = th.get(level).expect("alert level");
            self.above_since[i].is_some_and(|s| at - s >= t.hold_s as Millis * 1000)
        };
        let up = Level::ALERTS
            .iter()
            .enumerate()
            .rev()
            .find(|(i, l)| **l > self.level && held(*i, **l))
            .map(|(_, l)| *l);
        if let Some(to) = up {
            let from = self.level;
            self.level = to;
            return Some(LevelChange {
                from,
                to,
                by: to,
                up: true,
            });
        }
        let mut down = self.level;
        let mut by = down;
        while let Some(i) = down.alert_index() {
            let t = th.get(down).expect("alert level");
            if values[i] < t.reset {
                by = down;
                down = down.below();
            } else {
                break;
            }
        }
        if down < self.level {
            let from = self.level;
            self.level = down;
            return Some(LevelChange {
                from,
                to: down,
                by,
                up: false,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn th() -> LevelThresholds {
        let mut t = LevelThresholds::underpass_default();
        for l in Level::ALERTS {
            let x = match l {
                Level::Blue => &mut t.blue,
                Level::Yellow => &mut t.yellow,
                Level::Orange => &mut t.orange,
                _ => &mut t.red,
            };
            x.hold_s = 0;
        }
        t
    }

    fn run(tr: &mut LevelTracker, series: &[f64], th: &LevelThresholds) -> Vec<Level> {
        series
            .iter()
            .enumerate()
            .map(|(i, v)| {
                tr.evaluate([*v; 4], i as Millis * 60_000, th);
                tr.level()
            })
            .collect()
    }

    #[test]
    fn hysteresis_holds_the_level_until_reset() {
        let t = th(); // red raise 25, reset 22
        let mut tr = LevelTracker::default();
        let levels = run(&mut tr, &[5.0, 26.0, 24.0, 23.0, 25.5, 21.0, 9.0, 7.0], &t);
        use Level::*;
        assert_eq!(
            levels,
            vec![Normal, Red, Red, Red, Red, Orange, Blue, Normal]
        );
    }

    #[test]
    fn a_jump_goes_straight_to_the_highest_level() {
        let t = th();
        let mut tr = LevelTracker::default();
        let c = tr.evaluate([40.0; 4], 0, &t).unwrap();
        assert_eq!((c.from, c.to, c.up), (Level::Normal, Level::Red, true));
        let c = tr.evaluate([0.0; 4], 60_000, &t).unwrap();
        assert_eq!(c.to, Level::Normal, "falls through every reset at once");
    }

    #[test]
    fn hold_time_ignores_a_single_spike() {
        let t = LevelThresholds::underpass_default(); // hold 30 s
        let mut tr = LevelTracker::default();
        assert_eq!(tr.evaluate([30.0; 4], 0, &t), None, "not held yet");
        assert_eq!(tr.evaluate([5.0; 4], 20_000, &t), None, "spike gone");
        assert_eq!(tr.evaluate([30.0; 4], 40_000, &t), None);
        let c = tr.evaluate([31.0; 4], 75_000, &t).unwrap();
        assert_eq!(c.to, Level::Red, "held 35 s above red");
    }
}
