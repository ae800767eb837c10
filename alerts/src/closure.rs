//! The underpass closure lifecycle (封闭): 建议封闭 → 已封闭 → 退水 → 复查 → 解封.
//!
//! The suggestion is raised automatically when an underpass reaches red. Closing needs two
//! confirmations, one of them by the point's owner (A or B post), because a closed underpass
//! on the word of one person from the command room is how the wrong road gets closed.
//! Reopening needs the level below yellow for the configured hold time *and* an on-site
//! confirmation with a location: a dry sensor is not a safe road (silt, a stalled car, a
//! damaged barrier). Every step keeps who and when.

use floodcmd_model::config::{ClosurePolicy, Point};
use floodcmd_model::event::{Closure, ClosureEntry, ClosureStage};
use floodcmd_model::time::Millis;
use floodcmd_model::Level;

/// Why a closure step was refused; shown in the incident's timeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClosureRefused {
    /// The step does not follow from the current stage.
    #[error("封闭状态为「{from}」时不能执行「{to}」")]
    OutOfOrder {
        /// Current stage.
        from: &'static str,
        /// Requested stage.
        to: &'static str,
    },
    /// Reopening too early.
    #[error("水位低于黄色未满{needed_min}分钟 (已{below_min}分钟), 不能解封")]
    NotLongEnoughBelowYellow {
        /// Minutes needed.
        needed_min: u64,
        /// Minutes so far.
        below_min: u64,
    },
    /// Reopening while the water is still at yellow or above.
    #[error("当前级别{level}, 水位未低于黄色, 不能解封")]
    StillHigh {
        /// Current level, in Chinese.
        level: &'static str,
    },
    /// Only underpasses are closed.
    #[error("该点位不是下穿通道, 无封闭流程")]
    NotAnUnderpass,
}

/// What a closure action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClosureOutcome {
    /// The stage moved.
    Moved(ClosureStage),
    /// A confirmation was recorded; more are needed.
    Confirmed {
        /// Confirmations so far.
        have: usize,
        /// Whether the point owner is among them.
        owner: bool,
    },
}

/// Suggest closing at red (no-op when a closure is already under way).
pub fn suggest(closure: &mut Option<Closure>, now: Millis) -> bool {
    let active = closure
        .as_ref()
        .is_some_and(|c| !matches!(c.stage, ClosureStage::Reopened | ClosureStage::Withdrawn));
    if active {
        return false;
    }
    *closure = Some(Closure {
        stage: ClosureStage::Suggested,
        confirmed_by: Vec::new(),
        below_yellow_since_ms: None,
        history: vec![ClosureEntry {
            stage: ClosureStage::Suggested,
            by: None,
            at_ms: now,
        }],
    });
    true
}

/// Whether the underpass is (or is being) physically closed: the incident must stay open.
pub fn holds_incident_open(closure: &Option<Closure>) -> bool {
    closure.as_ref().is_some_and(|c| {
        matches!(
            c.stage,
            ClosureStage::Closed | ClosureStage::Receding | ClosureStage::Inspected
        )
    })
}

/// Follow the level: remember since when it is below yellow; withdraw a suggestion nobody
/// acted on once the water is gone.
pub fn on_level(closure: &mut Option<Closure>, level: Level, at: Millis) -> bool {
    let Some(c) = closure.as_mut() else {
        return false;
    };
    if level >= Level::Yellow {
        c.below_yellow_since_ms = None;
    } else if c.below_yellow_since_ms.is_none() {
        c.below_yellow_since_ms = Some(at);
    }
    if level == Level::Normal && c.stage == ClosureStage::Suggested {
        c.stage = ClosureStage::Withdrawn;
        c.history.push(ClosureEntry {
            stage: ClosureStage::Withdrawn,
            by: None,
            at_ms: at,
        });
        return true;
    }
    false
}

/// `person` confirms the closing.
pub fn confirm(
    closure: &mut Option<Closure>,
    point: &Point,
    person: &str,
    now: Millis,
) -> Result<ClosureOutcome, ClosureRefused> {
    if closure.is_none() {
        // A commander may close before the red suggestion (a plan's own trigger).
        suggest(closure, now);
    }
    let c = closure.as_mut().expect("suggested above");
    if matches!(c.stage, ClosureStage::Reopened | ClosureStage::Withdrawn) {
        suggest(closure, now);
    }
    let c = closure.as_mut().expect("suggested above");
    if c.stage != ClosureStage::Suggested {
        return Err(ClosureRefused::OutOfOrder {
            from: c.stage.zh(),
            to: ClosureStage::Closed.zh(),
        });
    }
    if !c.confirmed_by.iter().any(|p| p == person) {
        c.confirmed_by.push(person.to_string());
    }
    let owners = [&point.chain.owner_a.id, &point.chain.owner_b.id];
    let owner = c.confirmed_by.iter().any(|p| owners.contains(&p));
    if c.confirmed_by.len() >= 2 && owner {
        c.stage = ClosureStage::Closed;
        c.history.push(ClosureEntry {
            stage: ClosureStage::Closed,
            by: Some(c.confirmed_by.join(",")),
            at_ms: now,
        });
        Ok(ClosureOutcome::Moved(ClosureStage::Closed))
    } else {
        Ok(ClosureOutcome::Confirmed {
            have: c.confirmed_by.len(),
            owner,
        })
    }
}

/// 退水 or 复查.
pub fn step(
    closure: &mut Option<Closure>,
    to: ClosureStage,
    by: &str,
    now: Millis,
) -> Result<ClosureOutcome, ClosureRefused> {
    let from = closure.as_ref().map(|c| c.stage);
    let allowed = matches!(
        (from, to),
        (Some(ClosureStage::Closed), ClosureStage::Receding)
            | (Some(ClosureStage::Receding), ClosureStage::Inspected)
    );
    if !allowed {
        return Err(ClosureRefused::OutOfOrder {
            from: from.map_or("无", |s| s.zh()),
            to: to.zh(),
        });
    }
    let c = closure.as_mut().expect("checked above");
    c.stage = to;
    c.history.push(ClosureEntry {
        stage: to,
        by: Some(by.to_string()),
        at_ms: now,
    });
    Ok(ClosureOutcome::Moved(to))
}

/// 解封, confirmed on site.
pub fn reopen(
    closure: &mut Option<Closure>,
    policy: &ClosurePolicy,
    level: Level,
    by: &str,
    now: Millis,
) -> Result<ClosureOutcome, ClosureRefused> {
    let from = closure.as_ref().map(|c| c.stage);
    if from != Some(ClosureStage::Inspected) {
        return Err(ClosureRefused::OutOfOrder {
            from: from.map_or("无", |s| s.zh()),
            to: ClosureStage::Reopened.zh(),
        });
    }
    if level >= Level::Yellow {
        return Err(ClosureRefused::StillHigh { level: level.zh() });
    }
    let c = closure.as_mut().expect("checked above");
    let below_ms = c.below_yellow_since_ms.map_or(0, |s| (now - s).max(0));
    let needed_ms = policy.reopen_hold_s as i64 * 1000;
    if below_ms < needed_ms {
        return Err(ClosureRefused::NotLongEnoughBelowYellow {
            needed_min: policy.reopen_hold_s.div_ceil(60),
            below_min: (below_ms / 60_000) as u64,
        });
    }
    c.stage = ClosureStage::Reopened;
    c.history.push(ClosureEntry {
        stage: ClosureStage::Reopened,
        by: Some(by.to_string()),
        at_ms: now,
    });
    Ok(ClosureOutcome::Moved(ClosureStage::Reopened))
}
