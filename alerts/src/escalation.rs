//! The escalation ladder of one incident: who is told at once, whose deadline ran out, who
//! is next.
//!
//! The ladder is derived from the point's five-level chain ([`Rung::LADDER`]: owner A, owner
//! B, grid, community, sub-district, district), never written per point. Each notified person
//! is an [`EscalationStep`] with its own timer: first to acknowledge, then (once
//! acknowledged) to check in on site. A timer that runs out tells the next rung up that has
//! not been told in this loop; when every rung up to the level's `up_to` has run out, the
//! whole ladder is repeated (`repeat_loops`). An acknowledgement stops only that person's
//! acknowledgement timer; a check-in (到岗) by anyone ends the climb for the level, because
//! someone is on site.
//!
//! Everything here is a pure function of the incident, the policy and `now`: the timers are
//! deadlines stored in the incident, so a restarted stage that restores its incidents picks
//! the timers up where they were.

use floodcmd_model::config::{LevelPolicy, Point, Rung};
use floodcmd_model::event::{EscalationStep, Incident, StepState};
use floodcmd_model::time::Millis;
use floodcmd_model::Level;

/// Someone to tell, decided by the ladder; the book turns it into a notification.
#[derive(Clone, Debug, PartialEq)]
pub struct Tell {
    /// Index of the new step in `incident.steps`.
    pub step: usize,
    /// Why (for the SMS and the audit line), e.g. `点位责任人(A岗)张三 3分钟未确认`.
    pub reason: Option<String>,
}

/// A step's idempotency part: `<level>.<loop>.<rung>`.
pub fn step_id(level: Level, loop_no: u32, rung: Rung) -> String {
    format!("{}.{loop_no}.{}", level.as_str(), rung.as_str())
}

/// The level the current climb is for (the latest step's level).
pub fn climbing_level(inc: &Incident) -> Option<Level> {
    inc.steps.last().map(|s| s.level)
}

fn live(s: &EscalationStep) -> bool {
    matches!(s.state, StepState::Pending | StepState::Acknowledged)
}

/// Stop every running timer (a new level starts, the incident closes, someone is on site).
pub fn supersede_all(inc: &mut Incident) {
    for s in inc.steps.iter_mut().filter(|s| live(s)) {
        s.state = StepState::Superseded;
        s.deadline_ms = None;
    }
}

/// Add a step for `rung` unless the same step (level, loop, rung, person) exists already.
fn add_step(
    inc: &mut Incident,
    point: &Point,
    policy: &LevelPolicy,
    level: Level,
    loop_no: u32,
    rung: Rung,
    now: Millis,
) -> Option<usize> {
    let person = rung.person(&point.chain);
    let id = step_id(level, loop_no, rung);
    if inc
        .steps
        .iter()
        .any(|s| s.id == id && s.person == person.id)
    {
        return None;
    }
    inc.steps.push(EscalationStep {
        id,
        level,
        loop_no,
        rung,
        person: person.id.clone(),
        name: person.name.clone(),
        notified_ms: now,
        deadline_ms: Some(now + policy.ack_timeout_s as i64 * 1000),
        acked_ms: None,
        checked_in_ms: None,
        state: StepState::Pending,
    });
    Some(inc.steps.len() - 1)
}

/// The rungs a policy tells at once, bottom up, each once.
fn at_once(policy: &LevelPolicy) -> Vec<Rung> {
    let mut rungs = policy.at_once.clone();
    rungs.sort();
    rungs.dedup();
    rungs
}

/// Start the climb for `level`: stop older timers, tell the rungs the policy tells at once.
pub fn start(
    inc: &mut Incident,
    point: &Point,
    policy: &LevelPolicy,
    level: Level,
    now: Millis,
) -> Vec<Tell> {
    supersede_all(inc);
    inc.on_site_ms = None;
    at_once(policy)
        .into_iter()
        .filter_map(|r| add_step(inc, point, policy, level, 0, r, now))
        .map(|step| Tell { step, reason: None })
        .collect()
}

/// Run out every timer due at `now` and decide who is told next.
pub fn tick(inc: &mut Incident, point: &Point, policy: &LevelPolicy, now: Millis) -> Vec<Tell> {
    let mut tells = Vec::new();
    if inc.on_site_ms.is_some() {
        return tells;
    }
    let Some(level) = climbing_level(inc) else {
        return tells;
    };
    // Steps are visited in the order they were told; a step added below is not due yet.
    let mut i = 0;
    while i < inc.steps.len() {
        let s = &inc.steps[i];
        let due = live(s) && s.level == level && s.deadline_ms.is_some_and(|d| d <= now);
        if !due {
            i += 1;
            continue;
        }
        let (rung, loop_no, was) = (s.rung, s.loop_no, s.state);
        let reason = match was {
            StepState::Acknowledged => format!("{}{} 确认后未到岗", rung.zh(), s.name),
            _ => format!("{}{} 未确认", rung.zh(), s.name),
        };
        let step = &mut inc.steps[i];
        step.state = StepState::Escalated;
        step.deadline_ms = None;
        // The next rung up in this loop that has not been told yet.
        let told: Vec<Rung> = inc
            .steps
            .iter()
            .filter(|s| s.level == level && s.loop_no == loop_no)
            .map(|s| s.rung)
            .collect();
        let mut next = rung.above();
        while let Some(r) = next {
            if r > policy.up_to {
                next = None;
                break;
            }
            if !told.contains(&r) {
                break;
            }
            next = r.above();
        }
        match next {
            Some(r) => {
                if let Some(step) = add_step(inc, point, policy, level, loop_no, r, now) {
                    tells.push(Tell {
                        step,
                        reason: Some(reason),
                    });
                }
            }
            None => {
                // The ladder is exhausted for this loop; once nobody in it is still within
                // their time, climb again from the start.
                let loop_live = inc
                    .steps
                    .iter()
                    .any(|s| s.level == level && s.loop_no == loop_no && live(s));
                if !loop_live && loop_no < policy.repeat_loops {
                    for r in at_once(policy) {
                        if let Some(step) = add_step(inc, point, policy, level, loop_no + 1, r, now)
                        {
                            tells.push(Tell {
                                step,
                                reason: Some(format!("第{}轮无人到岗, 重新通知", loop_no + 1)),
                            });
                        }
                    }
                }
            }
        }
        i += 1;
    }
    tells
}

/// The next deadline of the incident's running timers, if any.
pub fn next_deadline(inc: &Incident) -> Option<Millis> {
    if inc.on_site_ms.is_some() {
        return None;
    }
    inc.steps
        .iter()
        .filter(|s| live(s))
        .filter_map(|s| s.deadline_ms)
        .min()
}

/// `person` acknowledged: their acknowledgement timer stops and the check-in timer starts.
/// Returns whether a running step of theirs was found.
pub fn acknowledge(inc: &mut Incident, policy: &LevelPolicy, person: &str, now: Millis) -> bool {
    let mut found = false;
    for s in inc
        .steps
        .iter_mut()
        .filter(|s| s.person == person && s.state == StepState::Pending)
    {
        s.state = StepState::Acknowledged;
        s.acked_ms = Some(now);
        s.deadline_ms = Some(now + policy.checkin_timeout_s as i64 * 1000);
        found = true;
    }
    found
}

/// `person` is on site: the climb for this level ends.
pub fn check_in(inc: &mut Incident, person: &str, now: Millis) {
    for s in inc
        .steps
        .iter_mut()
        .filter(|s| s.person == person && live(s))
    {
        s.state = StepState::CheckedIn;
        s.checked_in_ms = Some(now);
        s.deadline_ms = None;
    }
    supersede_all(inc);
    inc.on_site_ms = Some(now);
}

/// The roster changed: running steps whose rung is now held by someone else move to the new
/// person (told afresh, with a fresh timer). Returns `(old name, new step)` pairs.
pub fn reassign(
    inc: &mut Incident,
    point: &Point,
    policy: &LevelPolicy,
    now: Millis,
) -> Vec<(String, Tell)> {
    let mut moved = Vec::new();
    let n = inc.steps.len();
    for i in 0..n {
        let s = &inc.steps[i];
        if !live(s) {
            continue;
        }
        let holder = s.rung.person(&point.chain);
        if holder.id == s.person {
            continue;
        }
        let (level, loop_no, rung, old) = (s.level, s.loop_no, s.rung, s.name.clone());
        inc.steps[i].state = StepState::Superseded;
        inc.steps[i].deadline_ms = None;
        if let Some(step) = add_step(inc, point, policy, level, loop_no, rung, now) {
            moved.push((
                old.clone(),
                Tell {
                    step,
                    reason: Some(format!("人员调整: {old} → {}", holder.name)),
                },
            ));
        }
    }
    moved
}
