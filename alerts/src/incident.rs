//! The incident book: what is open, at what level, who has been told.
//!
//! One open incident per point and problem. A water incident opens on `raised`, follows
//! `upgraded`/`downgraded`, and closes on `cleared`. A silent sensor opens a separate
//! maintenance incident and never touches the water incident's level: silence is not "all
//! clear". Each notification carries an idempotency key `<incident>/<step>/<person>`, and the
//! book never emits the same key twice.
//!
//! A flapping point (the stream marks its transitions `flapping`) still has every move on the
//! record, but its people are not told again and again: while it flaps, a raise reopens the
//! point's last closed water incident instead of opening a new one, and people are notified
//! only when the incident reaches a level above its peak so far.

use crate::message;
use floodcmd_model::config::ResponsibilityLevel;
use floodcmd_model::event::{
    Action, ActionKind, AlertTransition, Incident, IncidentState, Notification, Post, Problem,
    Recipient, TimelineEntry, TransitionKind,
};
use floodcmd_model::time::Millis;
use floodcmd_model::{District, Level};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// What the book wants done.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Publish the incident's new state.
    Incident(Incident),
    /// Put a notification in the outbox.
    Notify(Notification),
}

/// Open incidents and the keys already notified.
pub struct IncidentBook {
    district: Arc<District>,
    drill: bool,
    /// Open incidents by (point, problem).
    open: BTreeMap<(String, ProblemKey), Incident>,
    /// Idempotency keys already notified.
    notified: HashSet<String>,
    /// The last closed water incident of each point: a flapping point's next raise reopens it.
    last_closed_water: BTreeMap<String, Incident>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ProblemKey {
    Water,
    Silent,
}

impl IncidentBook {
    /// A book for `district`. In a drill, notifications are marked drill (captured, never sent).
    pub fn new(district: Arc<District>, drill: bool) -> Self {
        IncidentBook {
            district,
            drill,
            open: BTreeMap::new(),
            notified: HashSet::new(),
            last_closed_water: BTreeMap::new(),
        }
    }

    /// Open incidents, most severe first.
    pub fn open(&self) -> Vec<&Incident> {
        let mut v: Vec<&Incident> = self.open.values().collect();
        v.sort_by(|a, b| b.level.cmp(&a.level).then(a.opened_at.cmp(&b.opened_at)));
        v
    }

    fn notify(
        &mut self,
        incident: &mut Incident,
        step: &str,
        levels: &[ResponsibilityLevel],
        text: &str,
        event_ms: Millis,
        out: &mut Vec<Effect>,
    ) {
        let Some(point) = self.district.point(&incident.point_id) else {
            return;
        };
        for &rl in levels {
            for (i, person) in point.chain.at(rl).into_iter().enumerate() {
                let key = format!("{}/{step}/{}", incident.id, person.id);
                if !self.notified.insert(key.clone()) {
                    continue;
                }
                let post = (rl == ResponsibilityLevel::PointOwner).then_some(if i == 0 {
                    Post::A
                } else {
                    Post::B
                });
                incident.timeline.push(TimelineEntry {
                    at_ms: event_ms,
                    what: "notified".into(),
                    detail: format!(
                        "{} {}{} {}",
                        rl.zh(),
                        person.name,
                        post.map_or("", |p| if p == Post::A { "(A岗)" } else { "(B岗)" }),
                        mask(&person.phone)
                    ),
                    by: None,
                });
                out.push(Effect::Notify(Notification {
                    key,
                    incident: incident.id.clone(),
                    point: incident.point_id.clone(),
                    level: incident.level,
                    recipient: Recipient {
                        person: person.id.clone(),
                        name: person.name.clone(),
                        phone: person.phone.clone(),
                        responsibility: rl,
                        post,
                    },
                    text: text.to_string(),
                    event_ms,
                    drill: self.drill,
                }));
            }
        }
    }

    /// Apply one alert transition.
    pub fn on_transition(&mut self, t: &AlertTransition) -> Vec<Effect> {
        let mut out = Vec::new();
        let Some(point) = self.district.point(&t.point).cloned() else {
            tracing::warn!(point = %t.point, "transition for a point not in the district config");
            return out;
        };
        let sig = self.district.info.sms_signature.clone();
        let entry = |what: &str, detail: String| TimelineEntry {
            at_ms: t.event_ms,
            what: what.into(),
            detail,
            by: None,
        };
        match t.transition {
            TransitionKind::Raised | TransitionKind::Upgraded => {
                let key = (t.point.clone(), ProblemKey::Water);
                let last_closed = self.last_closed_water.remove(&t.point);
                let (mut inc, peak_before) = match self.open.remove(&key) {
                    Some(inc) => {
                        let peak = inc.peak_level;
                        (inc, peak)
                    }
                    // Flapping: the water went down and up again; it is the same episode.
                    None => match last_closed.filter(|_| t.flapping) {
                        Some(mut inc) => {
                            let peak = inc.peak_level;
                            inc.state = IncidentState::Open;
                            inc.closed_at = None;
                            inc.timeline.push(entry(
                                "reopened",
                                "级别反复波动, 重新打开原事件".to_string(),
                            ));
                            (inc, peak)
                        }
                        None => (
                            Incident {
                                id: format!("{}:water:{}", t.point, t.event_ms),
                                point_id: t.point.clone(),
                                problem: Problem::Water,
                                level: t.to,
                                peak_level: t.to,
                                state: IncidentState::Open,
                                opened_at: t.event_ms,
                                updated_at: t.event_ms,
                                closed_at: None,
                                value: t.value,
                                timeline: Vec::new(),
                            },
                            Level::Normal,
                        ),
                    },
                };
                inc.level = t.to;
                inc.peak_level = inc.peak_level.max(t.to);
                inc.updated_at = t.event_ms;
                inc.value = t.value;
                let late = if t.late { " (迟到数据)" } else { "" };
                inc.timeline.push(entry(
                    t.transition.as_str(),
                    format!("{} → {}: {}{late}", t.from.zh(), t.to.zh(), t.rule),
                ));
                if t.flapping && t.to <= peak_before {
                    // People were told about this level (or a higher one) already.
                    inc.timeline.push(entry(
                        "not_notified",
                        format!(
                            "级别反复波动, 未超过本事件最高级别{}, 不重复通知",
                            peak_before.zh()
                        ),
                    ));
                } else {
                    let text = message::water_alert(&sig, &point, t.to, t);
                    let levels = self.district.escalation.notify_at(t.to).to_vec();
                    self.notify(
                        &mut inc,
                        t.to.as_str(),
                        &levels,
                        &text,
                        t.event_ms,
                        &mut out,
                    );
                }
                out.insert(0, Effect::Incident(inc.clone()));
                self.open.insert(key, inc);
            }
            TransitionKind::Downgraded | TransitionKind::Cleared => {
                let key = (t.point.clone(), ProblemKey::Water);
                if let Some(mut inc) = self.open.remove(&key) {
                    inc.level = t.to;
                    inc.updated_at = t.event_ms;
                    inc.value = t.value;
                    inc.timeline.push(entry(
                        t.transition.as_str(),
                        format!("{} → {}: {}", t.from.zh(), t.to.zh(), t.rule),
                    ));
                    if t.to == Level::Normal {
                        inc.state = IncidentState::Closed;
                        inc.closed_at = Some(t.event_ms);
                        out.push(Effect::Incident(inc.clone()));
                        self.last_closed_water.insert(t.point.clone(), inc);
                    } else {
                        out.push(Effect::Incident(inc.clone()));
                        self.open.insert(key, inc);
                    }
                }
            }
            TransitionKind::Silent => {
                let key = (t.point.clone(), ProblemKey::Silent);
                if !self.open.contains_key(&key) {
                    let mut inc = Incident {
                        id: format!("{}:silent:{}", t.point, t.event_ms),
                        point_id: t.point.clone(),
                        problem: Problem::Silent,
                        level: t.to,
                        peak_level: t.to,
                        state: IncidentState::Open,
                        opened_at: t.event_ms,
                        updated_at: t.event_ms,
                        closed_at: None,
                        value: 0.0,
                        timeline: vec![entry("silent", format!("设备失联: {}", t.rule))],
                    };
                    let text = message::silent_sensor(&sig, &point);
                    self.notify(
                        &mut inc,
                        "silent",
                        &[ResponsibilityLevel::Grid],
                        &text,
                        t.event_ms,
                        &mut out,
                    );
                    out.insert(0, Effect::Incident(inc.clone()));
                    self.open.insert(key, inc);
                }
                // The water incident stays open at its level; record that its data went quiet.
                if let Some(water) = self.open.get_mut(&(t.point.clone(), ProblemKey::Water)) {
                    water
                        .timeline
                        .push(entry("silent", "监测设备失联, 级别保持不变".into()));
                    out.push(Effect::Incident(water.clone()));
                }
            }
            TransitionKind::Recovered => {
                if let Some(mut inc) = self.open.remove(&(t.point.clone(), ProblemKey::Silent)) {
                    inc.state = IncidentState::Closed;
                    inc.closed_at = Some(t.event_ms);
                    inc.updated_at = t.event_ms;
                    inc.timeline.push(entry("recovered", "设备恢复上报".into()));
                    out.push(Effect::Incident(inc));
                }
            }
        }
        out
    }

    /// Apply an operator action to an open incident.
    pub fn on_action(&mut self, a: &Action) -> Vec<Effect> {
        let Some(inc) = self.open.values_mut().find(|i| i.id == a.incident) else {
            tracing::warn!(incident = %a.incident, action = %a.id, "action for an incident that is not open");
            return Vec::new();
        };
        let (what, detail) = match &a.kind {
            ActionKind::Acknowledge => ("acknowledged", "已确认".to_string()),
            ActionKind::CheckIn { lat, lon } => {
                ("checked_in", format!("已到岗 ({lat:.5}, {lon:.5})"))
            }
            ActionKind::Note { text } => ("note", text.clone()),
        };
        inc.timeline.push(TimelineEntry {
            at_ms: a.at_ms,
            what: what.into(),
            detail,
            by: Some(a.by.clone()),
        });
        vec![Effect::Incident(inc.clone())]
    }
}

/// A phone number as shown in audit lines: 138****0001.
pub fn mask(phone: &str) -> String {
    if phone.len() == 11 && phone.is_ascii() {
        format!("{}****{}", &phone[..3], &phone[7..])
    } else {
        "***".into()
    }
}
