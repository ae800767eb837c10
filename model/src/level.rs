//! Warning levels and data states.
//!
//! A point carries three independent dimensions: its warning [`Level`], its [`DataState`]
//! (is the data behind that level fresh?), and an action state (e.g. underpass closure, owned
//! by the alerts stage). They are never folded into one: a silent sensor is not "normal".

use serde::{Deserialize, Serialize};
use std::fmt;

/// Warning level of a point (正常/蓝/黄/橙/红). Ordered: `Normal < Blue < ... < Red`.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Below every threshold.
    #[default]
    Normal,
    /// 蓝色.
    Blue,
    /// 黄色.
    Yellow,
    /// 橙色.
    Orange,
    /// 红色; for an underpass this means close it.
    Red,
}

impl Level {
    /// The four alert levels, lowest first.
    pub const ALERTS: [Level; 4] = [Level::Blue, Level::Yellow, Level::Orange, Level::Red];
    /// Every level, lowest first.
    pub const ALL: [Level; 5] = [
        Level::Normal,
        Level::Blue,
        Level::Yellow,
        Level::Orange,
        Level::Red,
    ];

    /// The name used in config, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Blue => "blue",
            Level::Yellow => "yellow",
            Level::Orange => "orange",
            Level::Red => "red",
        }
    }

    /// The Chinese name shown on the wall and in SMS.
    pub fn zh(self) -> &'static str {
        match self {
            Level::Normal => "正常",
            Level::Blue => "蓝色",
            Level::Yellow => "黄色",
            Level::Orange => "橙色",
            Level::Red => "红色",
        }
    }

    /// The next lower level (`Normal` stays `Normal`).
    pub fn below(self) -> Level {
        match self {
            Level::Normal | Level::Blue => Level::Normal,
            Level::Yellow => Level::Blue,
            Level::Orange => Level::Yellow,
            Level::Red => Level::Orange,
        }
    }

    /// Index into per-level arrays: `Blue = 0 .. Red = 3`; `None` for `Normal`.
    pub fn alert_index(self) -> Option<usize> {
        match self {
            Level::Normal => None,
            Level::Blue => Some(0),
            Level::Yellow => Some(1),
            Level::Orange => Some(2),
            Level::Red => Some(3),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much the data behind a point's level can be trusted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum DataState {
    /// Readings arrive on time.
    Fresh,
    /// The latest change was caused by a reading that arrived after the lateness budget.
    Late,
    /// Quality control flagged the latest readings (spike, stuck, out of range).
    Suspect,
    /// 失联: nothing heard within the expected interval, or never heard at all. Never "all clear".
    #[default]
    Silent,
}

impl DataState {
    /// The name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DataState::Fresh => "fresh",
            DataState::Late => "late",
            DataState::Suspect => "suspect",
            DataState::Silent => "silent",
        }
    }

    /// The Chinese name shown on the wall.
    pub fn zh(self) -> &'static str {
        match self {
            DataState::Fresh => "正常",
            DataState::Late => "迟到",
            DataState::Suspect => "可疑",
            DataState::Silent => "失联",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_by_severity() {
        assert!(Level::Normal < Level::Blue);
        assert!(Level::Orange < Level::Red);
        assert_eq!(Level::Red.below(), Level::Orange);
        assert_eq!(serde_json::to_string(&Level::Yellow).unwrap(), "\"yellow\"");
    }
}
