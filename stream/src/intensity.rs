//! The short-duration heavy rain rule (短时强降水) of a rain gauge.
//!
//! The rainstorm signals look at 3 to 12 hours; a cloudburst that fills an underpass in one
//! hour needs its own rule. It raises one configured level at `mm` over its window and lets
//! go below `reset` (hysteresis). The gauge's level is the higher of this rule and the signal
//! rules, so the two never fight over it.

use floodcmd_model::config::RainIntensityRule;
use floodcmd_model::Level;

/// Whether the rule holds its level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntensityLatch {
    active: bool,
}

impl IntensityLatch {
    /// The level the rule holds the gauge at (`Normal` when it holds none).
    pub fn level(&self, rule: &RainIntensityRule) -> Level {
        if self.active {
            rule.level
        } else {
            Level::Normal
        }
    }

    /// Judge the total over the rule's window; returns `Some(raised)` when the rule changed.
    pub fn evaluate(&mut self, total_mm: f64, rule: &RainIntensityRule) -> Option<bool> {
        let next = if self.active {
            total_mm >= rule.reset
        } else {
            total_mm >= rule.mm
        };
        (next != self.active).then(|| {
            self.active = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_at_twenty_mm_and_lets_go_below_the_reset() {
        let rule = RainIntensityRule::default();
        let mut latch = IntensityLatch::default();
        assert_eq!(latch.evaluate(19.9, &rule), None);
        assert_eq!(latch.evaluate(20.0, &rule), Some(true));
        assert_eq!(latch.level(&rule), Level::Blue);
        assert_eq!(latch.evaluate(17.0, &rule), None, "above the reset");
        assert_eq!(latch.evaluate(15.9, &rule), Some(false));
        assert_eq!(latch.level(&rule), Level::Normal);
    }
}
