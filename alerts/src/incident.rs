//! The incident book: what is open, at what level, who has been told, whose timer runs.
//!
//! One open incident per point and problem. A water incident opens on `raised`, follows
//! `upgraded`/`downgraded`, and closes on `cleared` (an underpass that was physically closed
//! stays open until it is reopened on site). A silent sensor opens a separate maintenance
//! incident and never touches the water incident's level: silence is not "all clear". Who is
//! told is decided by the [`escalation`](crate::escalation) ladder; each notification carries
//! an idempotency key `<incident>/<level>.<loop>.<rung>/<person>`, and the book never emits the
//! same key twice.
//!
//! A flapping point (the stream marks its transitions `flapping`) still has every move on the
//! record, but its people are not told again and again: while it flaps, a raise reopens the
//! point's last closed water incident instead of opening a new one, and people are notified
//! only when the incident reaches a level above its peak so far.
//!
//! The book is restartable: every incident version it publishes names the input record that
//! produced it ([`InputOffset`]); [`IncidentBook::restore`] rebuilds the book from the
//! incidents topic and [`IncidentBook::already_applied`] tells the stage which inputs to skip.

use crate::closure::{self, ClosureOutcome};
use crate::escalation::{self, Tell};
use crate::message;
use floodcmd_model::config::{LevelPolicy, PointKind, ResponsibilityLevel, Rung};
use floodcmd_model::event::{
    Action, ActionKind, AlertTransition, Incident, IncidentState, InputOffset, Notification, Post,
    Problem, Recipient, TimelineEntry, TransitionKind,
};
use floodcmd_model::time::Millis;
use floodcmd_model::{District, Level};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

/// What the book wants done. Within one call's effects, notifications come before the
/// incident versions that record them, so an incident on the bus implies its notifications are.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Publish the incident's new state.
    Incident(Incident),
    /// Put a notification in the outbox.
    Notify(Notification),
}

/// Open incidents, their timers, and the keys already notified.
pub struct IncidentBook {
    district: Arc<District>,
    drill: bool,
    /// Open incidents by (point, problem).
    open: OpenIncidents,
    /// Idempotency keys already notified.
    notified: HashSet<String>,
    /// The last closed water incident of each point: a flapping point's next raise reopens it.
    last_closed_water: BTreeMap<String, Incident>,
    /// The last moves applied to each point (see [`Move`]).
    moves: BTreeMap<String, VecDeque<Move>>,
    /// Furthest input applied, per (topic leaf, partition): offset, then place among the
    /// records at that offset (a pack's members).
    applied: BTreeMap<(String, u32), (u64, u32)>,
}

type Key = (String, ProblemKey);

/// A transition as the book knows it again: when, what, and (a water move) between which
/// levels.
///
/// The stream stage's outputs are at least once: a restarted stage reads again what it read
/// past its last commit, and emits those transitions again. Applied again, a raise would start
/// its incident's climb over, stopping the timers of those not yet acknowledged, or, its
/// incident closed since, open a new one and tell everyone again; a silence whose sensor
/// recovered since would too, and a Recovered would close a later silence. So the book keeps
/// each point's last moves and leaves a transition it has applied alone. A new transition
/// between the same levels at the same event time as one before is taken for the same one
/// (two sensors of one point moving it there and back and there again within a millisecond
/// would lose the third move). Restored, the book knows the moves its incidents record: one
/// that changed nothing (a Recovered with no silence open) is not among them, and repeated
/// after a restart of the alerts stage it is applied again, as before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Move {
    at_ms: Millis,
    kind: TransitionKind,
    /// From and to, for a water move; a silence and a recovery keep the level.
    levels: Option<(Level, Level)>,
}

/// How many moves of each point the book keeps: a restarted stage emits again what followed
/// its last commit, seconds of readings live, rarely more than a few moves of one point even
/// from a backlog.
const MOVES_KEPT: usize = 16;

impl Move {
    fn of(t: &AlertTransition) -> Move {
        let levels = match t.transition {
            TransitionKind::Silent | TransitionKind::Recovered => None,
            _ => Some((t.from, t.to)),
        };
        Move {
            at_ms: t.event_ms,
            kind: t.transition,
            levels,
        }
    }

    /// The move a timeline entry records, if it records one (as `apply_transition` writes
    /// them: a water move's detail starts `<from> → <to>: `), to restore the book's moves.
    fn on_record(e: &TimelineEntry) -> Option<Move> {
        use TransitionKind::*;
        let kind = [Raised, Upgraded, Downgraded, Cleared, Silent, Recovered]
            .into_iter()
            .find(|k| k.as_str() == e.what)?;
        let levels = match kind {
            Silent | Recovered => None,
            _ => {
                let (from, rest) = e.detail.split_once(" → ")?;
                let (to, _) = rest.split_once(": ")?;
                Some((level_named(from)?, level_named(to)?))
            }
        };
        Some(Move {
            at_ms: e.at_ms,
            kind,
            levels,
        })
    }
}

/// The level whose Chinese name is `zh`.
fn level_named(zh: &str) -> Option<Level> {
    [
        Level::Normal,
        Level::Blue,
        Level::Yellow,
        Level::Orange,
        Level::Red,
    ]
    .into_iter()
    .find(|l| l.zh() == zh)
}

/// The open incidents, with each one's next escalation deadline indexed: finding the earliest
/// timer, and the incidents due, does not scan every open incident. (A storm replay asks
/// before each of its ~100k transitions, with thousands open; the scan was most of its time.)
/// Every change to an open incident goes through `insert`, which indexes it afresh.
#[derive(Default)]
struct OpenIncidents {
    by_key: BTreeMap<Key, Incident>,
    deadline_of: BTreeMap<Key, Millis>,
    deadlines: std::collections::BTreeSet<(Millis, Key)>,
}

impl OpenIncidents {
    fn insert(&mut self, key: Key, inc: Incident) {
        self.unindex(&key);
        if let Some(d) = escalation::next_deadline(&inc) {
            self.deadline_of.insert(key.clone(), d);
            self.deadlines.insert((d, key.clone()));
        }
        self.by_key.insert(key, inc);
    }

    fn remove(&mut self, key: &Key) -> Option<Incident> {
        self.unindex(key);
        self.by_key.remove(key)
    }

    fn unindex(&mut self, key: &Key) {
        if let Some(d) = self.deadline_of.remove(key) {
            self.deadlines.remove(&(d, key.clone()));
        }
    }

    fn contains_key(&self, key: &Key) -> bool {
        self.by_key.contains_key(key)
    }

    fn values(&self) -> impl Iterator<Item = &Incident> {
        self.by_key.values()
    }

    fn iter(&self) -> impl Iterator<Item = (&Key, &Incident)> {
        self.by_key.iter()
    }

    fn keys(&self) -> impl Iterator<Item = &Key> {
        self.by_key.keys()
    }

    /// The earliest deadline of any open incident.
    fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Incidents with a deadline at or before `now`, in key order.
    fn due(&self, now: Millis) -> Vec<Key> {
        let mut due: Vec<Key> = self
            .deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, k)| k.clone())
            .collect();
        due.sort();
        due
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ProblemKey {
    Water,
    Silent,
}

fn key_of(problem: Problem) -> ProblemKey {
    match problem {
        Problem::Water => ProblemKey::Water,
        Problem::Silent => ProblemKey::Silent,
    }
}

fn entry(at_ms: Millis, what: &str, detail: String, by: Option<&str>) -> TimelineEntry {
    TimelineEntry {
        at_ms,
        what: what.into(),
        detail,
        by: by.map(str::to_string),
    }
}

impl IncidentBook {
    /// A book for `district`. In a drill, notifications are marked drill (captured, never sent).
    pub fn new(district: Arc<District>, drill: bool) -> Self {
        IncidentBook {
            district,
            drill,
            open: OpenIncidents::default(),
            notified: HashSet::new(),
            last_closed_water: BTreeMap::new(),
            moves: BTreeMap::new(),
            applied: BTreeMap::new(),
        }
    }

    /// The district the book works with.
    pub fn district(&self) -> &Arc<District> {
        &self.district
    }

    /// Open incidents, most severe first.
    pub fn open(&self) -> Vec<&Incident> {
        let mut v: Vec<&Incident> = self.open.values().collect();
        v.sort_by(|a, b| b.level.cmp(&a.level).then(a.opened_at.cmp(&b.opened_at)));
        v
    }

    /// Rebuild from published incident versions, oldest first (the incidents topic in order):
    /// the latest version of each incident wins.
    pub fn restore(&mut self, versions: impl IntoIterator<Item = Incident>) {
        let mut latest: BTreeMap<String, Incident> = BTreeMap::new();
        let mut moves: BTreeMap<String, Vec<Move>> = BTreeMap::new();
        for inc in versions {
            if let Some(src) = &inc.source {
                let slot = self
                    .applied
                    .entry((src.topic.clone(), src.partition))
                    .or_insert(src.position());
                *slot = (*slot).max(src.position());
            }
            latest.insert(inc.id.clone(), inc);
        }
        for inc in latest.values() {
            moves
                .entry(inc.point_id.clone())
                .or_default()
                .extend(inc.timeline.iter().filter_map(Move::on_record));
        }
        for (point, mut of_point) in moves {
            of_point.sort_by_key(|m| m.at_ms);
            of_point.dedup();
            let kept = of_point.len().saturating_sub(MOVES_KEPT);
            self.moves
                .insert(point, of_point.into_iter().skip(kept).collect());
        }
        for inc in latest.into_values() {
            for s in &inc.steps {
                self.notified
                    .insert(format!("{}/{}/{}", inc.id, s.id, s.person));
            }
            match inc.state {
                IncidentState::Open => {
                    self.open
                        .insert((inc.point_id.clone(), key_of(inc.problem)), inc);
                }
                IncidentState::Closed if inc.problem == Problem::Water => {
                    let newer = self
                        .last_closed_water
                        .get(&inc.point_id)
                        .is_none_or(|c| c.updated_at <= inc.updated_at);
                    if newer {
                        self.last_closed_water.insert(inc.point_id.clone(), inc);
                    }
                }
                IncidentState::Closed => {}
            }
        }
    }

    /// Whether an input record's effects are already in the restored incidents.
    pub fn already_applied(&self, at: &InputOffset) -> bool {
        self.applied
            .get(&(at.topic.clone(), at.partition))
            .is_some_and(|&o| at.position() <= o)
    }

    /// A move of the point's the book applied already (one of its last [`MOVES_KEPT`]).
    fn repeats_a_move(&self, t: &AlertTransition) -> bool {
        let m = Move::of(t);
        self.moves
            .get(t.point.as_str())
            .is_some_and(|moves| moves.iter().rev().any(|x| *x == m))
    }

    /// Remember a move applied to `point`.
    fn remember(&mut self, point: &str, m: Move) {
        let moves = match self.moves.get_mut(point) {
            Some(moves) => moves,
            None => self.moves.entry(point.to_string()).or_default(),
        };
        moves.push_back(m);
        if moves.len() > MOVES_KEPT {
            moves.pop_front();
        }
    }

    fn mark_applied(&mut self, source: &Option<InputOffset>, out: &mut [Effect]) {
        let Some(src) = source else { return };
        let slot = self
            .applied
            .entry((src.topic.clone(), src.partition))
            .or_insert(src.position());
        *slot = (*slot).max(src.position());
        for e in out.iter_mut() {
            if let Effect::Incident(i) = e {
                i.source = Some(src.clone());
            }
        }
    }

    fn policy(&self, inc: &Incident) -> Option<LevelPolicy> {
        match inc.problem {
            Problem::Silent => Some(self.district.escalation.silent.clone()),
            Problem::Water => {
                let level = escalation::climbing_level(inc).unwrap_or(inc.level);
                self.district.escalation.policy(level).cloned()
            }
        }
    }

    /// Turn the ladder's decisions into notifications and audit lines.
    fn tell(
        &mut self,
        inc: &mut Incident,
        tells: Vec<Tell>,
        text: impl Fn(&Tell) -> String,
        now: Millis,
        out: &mut Vec<Effect>,
    ) {
        for tell in tells {
            let s = inc.steps[tell.step].clone();
            let Some(person) = self.district.people.get(&s.person) else {
                continue;
            };
            let key = format!("{}/{}/{}", inc.id, s.id, s.person);
            if !self.notified.insert(key.clone()) {
                continue;
            }
            let post = match s.rung {
                Rung::OwnerA => Some(Post::A),
                Rung::OwnerB => Some(Post::B),
                _ => None,
            };
            let why = tell
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            inc.timeline.push(entry(
                now,
                "notified",
                format!(
                    "{}{} {}{why}",
                    s.rung.zh(),
                    person.name,
                    mask(&person.phone)
                ),
                None,
            ));
            out.push(Effect::Notify(Notification {
                key,
                incident: inc.id.clone(),
                point: inc.point_id.clone(),
                level: inc.level,
                recipient: Recipient {
                    person: person.id.clone(),
                    name: person.name.clone(),
                    phone: person.phone.clone(),
                    responsibility: s.rung.responsibility(),
                    post,
                },
                text: text(&tell),
                event_ms: now,
                drill: self.drill,
            }));
        }
    }

    /// Tell the maintenance contact about a silent point (outside the chain: no ladder).
    fn tell_maintenance(
        &mut self,
        inc: &mut Incident,
        text: &str,
        now: Millis,
        out: &mut Vec<Effect>,
    ) {
        let Some(person) = self
            .district
            .info
            .maintenance
            .as_ref()
            .and_then(|id| self.district.people.get(id))
            .cloned()
        else {
            return;
        };
        let key = format!("{}/maintenance/{}", inc.id, person.id);
        if !self.notified.insert(key.clone()) {
            return;
        }
        inc.timeline.push(entry(
            now,
            "notified",
            format!("设备运维 {} {}", person.name, mask(&person.phone)),
            None,
        ));
        out.push(Effect::Notify(Notification {
            key,
            incident: inc.id.clone(),
            point: inc.point_id.clone(),
            level: inc.level,
            recipient: Recipient {
                person: person.id.clone(),
                name: person.name.clone(),
                phone: person.phone.clone(),
                responsibility: ResponsibilityLevel::Grid,
                post: None,
            },
            text: text.to_string(),
            event_ms: now,
            drill: self.drill,
        }));
    }

    /// Apply one alert transition (`now` is processing time, for the timers).
    pub fn on_transition(&mut self, t: &AlertTransition, now: Millis) -> Vec<Effect> {
        self.apply_transition(t, now, None)
    }

    /// [`on_transition`](Self::on_transition) for an input read from the bus at `source`.
    pub fn apply_transition(
        &mut self,
        t: &AlertTransition,
        now: Millis,
        source: Option<InputOffset>,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        // The district by handle, so the point is borrowed, not copied, per transition.
        let district = self.district.clone();
        let Some(point) = district.point(&t.point) else {
            tracing::warn!(point = %t.point, "transition for a point not in the district config");
            return out;
        };
        let sig = self.district.info.sms_signature.clone();
        let at = t.event_ms;
        if self.repeats_a_move(t) {
            tracing::info!(
                point = %t.point,
                transition = t.transition.as_str(),
                event_ms = at,
                "transition already on its incident's timeline (emitted again by a restarted stream stage); not applied again"
            );
            self.mark_applied(&source, &mut out);
            return out;
        }
        let mut changed: Vec<Incident> = Vec::new();
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
                                at,
                                "reopened",
                                "级别反复波动, 重新打开原事件".to_string(),
                                None,
                            ));
                            (inc, peak)
                        }
                        None => (new_incident(t, Problem::Water), Level::Normal),
                    },
                };
                inc.level = t.to;
                inc.peak_level = inc.peak_level.max(t.to);
                inc.updated_at = at;
                inc.value = t.value;
                let late = if t.late { " (迟到数据)" } else { "" };
                inc.timeline.push(entry(
                    at,
                    t.transition.as_str(),
                    format!("{} → {}: {}{late}", t.from.zh(), t.to.zh(), t.rule),
                    None,
                ));
                closure::on_level(&mut inc.closure, t.to, at);
                if point.kind == PointKind::Underpass
                    && t.to == Level::Red
                    && closure::suggest(&mut inc.closure, at)
                {
                    inc.timeline.push(entry(
                        at,
                        "closure_suggested",
                        "达到红色, 建议封闭下穿通道".into(),
                        None,
                    ));
                }
                if t.flapping && t.to <= peak_before {
                    // People were told about this level (or a higher one) already.
                    inc.timeline.push(entry(
                        at,
                        "not_notified",
                        format!(
                            "级别反复波动, 未超过本事件最高级别{}, 不重复通知",
                            peak_before.zh()
                        ),
                        None,
                    ));
                } else if let Some(policy) = self.district.escalation.policy(t.to).cloned() {
                    let tells = escalation::start(&mut inc, point, &policy, t.to, now);
                    let text = message::water_alert(&sig, point, t.to, t);
                    self.tell(&mut inc, tells, |_| text.clone(), now, &mut out);
                }
                changed.push(inc.clone());
                self.open.insert(key, inc);
            }
            TransitionKind::Downgraded | TransitionKind::Cleared => {
                let key = (t.point.clone(), ProblemKey::Water);
                if let Some(mut inc) = self.open.remove(&key) {
                    inc.level = t.to;
                    inc.updated_at = at;
                    inc.value = t.value;
                    inc.timeline.push(entry(
                        at,
                        t.transition.as_str(),
                        format!("{} → {}: {}", t.from.zh(), t.to.zh(), t.rule),
                        None,
                    ));
                    if closure::on_level(&mut inc.closure, t.to, at) {
                        inc.timeline.push(entry(
                            at,
                            "closure_withdrawn",
                            "水位已退, 撤销封闭建议".into(),
                            None,
                        ));
                    }
                    if t.to == Level::Normal {
                        escalation::supersede_all(&mut inc);
                        if closure::holds_incident_open(&inc.closure) {
                            inc.timeline.push(entry(
                                at,
                                "awaiting_reopen",
                                "水位已退, 下穿通道仍封闭, 待复查解封".into(),
                                None,
                            ));
                            changed.push(inc.clone());
                            self.open.insert(key, inc);
                        } else {
                            inc.state = IncidentState::Closed;
                            inc.closed_at = Some(at);
                            changed.push(inc.clone());
                            self.last_closed_water.insert(t.point.clone(), inc);
                        }
                    } else {
                        changed.push(inc.clone());
                        self.open.insert(key, inc);
                    }
                }
            }
            TransitionKind::Silent => {
                let key = (t.point.clone(), ProblemKey::Silent);
                if !self.open.contains_key(&key) {
                    let mut inc = new_incident(t, Problem::Silent);
                    inc.value = 0.0;
                    inc.timeline
                        .push(entry(at, "silent", format!("设备失联: {}", t.rule), None));
                    let policy = self.district.escalation.silent.clone();
                    let tells = escalation::start(&mut inc, point, &policy, t.to, now);
                    let text = message::silent_sensor(&sig, point);
                    self.tell(&mut inc, tells, |_| text.clone(), now, &mut out);
                    self.tell_maintenance(&mut inc, &text, now, &mut out);
                    changed.push(inc.clone());
                    self.open.insert(key, inc);
                }
                // The water incident stays open at its level; record that its data went quiet.
                let water_key = (t.point.clone(), ProblemKey::Water);
                if let Some(mut water) = self.open.remove(&water_key) {
                    water.timeline.push(entry(
                        at,
                        "silent",
                        "监测设备失联, 级别保持不变".into(),
                        None,
                    ));
                    changed.push(water.clone());
                    self.open.insert(water_key, water);
                }
            }
            TransitionKind::Recovered => {
                if let Some(mut inc) = self.open.remove(&(t.point.clone(), ProblemKey::Silent)) {
                    escalation::supersede_all(&mut inc);
                    inc.state = IncidentState::Closed;
                    inc.closed_at = Some(at);
                    inc.updated_at = at;
                    inc.timeline
                        .push(entry(at, "recovered", "设备恢复上报".into(), None));
                    changed.push(inc);
                }
            }
        }
        out.extend(changed.into_iter().map(Effect::Incident));
        self.remember(&t.point, Move::of(t));
        self.mark_applied(&source, &mut out);
        out
    }

    /// Apply an operator action to an open incident.
    pub fn on_action(&mut self, a: &Action, now: Millis) -> Vec<Effect> {
        self.apply_action(a, now, None)
    }

    /// [`on_action`](Self::on_action) for an input read from the bus at `source`.
    pub fn apply_action(
        &mut self,
        a: &Action,
        now: Millis,
        source: Option<InputOffset>,
    ) -> Vec<Effect> {
        let Some(key) = self
            .open
            .iter()
            .find(|(_, i)| i.id == a.incident)
            .map(|(k, _)| k.clone())
        else {
            tracing::warn!(incident = %a.incident, action = %a.id, "action for an incident that is not open");
            return Vec::new();
        };
        let mut inc = self.open.remove(&key).expect("found above");
        let district = self.district.clone();
        let point = district.point(&inc.point_id);
        let policy = self.policy(&inc);
        let by = a.by.as_str();
        let on_behalf = |person: &Option<String>| -> String {
            match person.as_deref() {
                Some(p) if p != by => {
                    let name = self.district.people.get(p).map_or(p, |x| x.name.as_str());
                    format!(" (代{name})")
                }
                _ => String::new(),
            }
        };
        let mut close_now = false;
        let line = match &a.kind {
            ActionKind::Acknowledge { person } => {
                let who = person.as_deref().unwrap_or(by);
                let found = policy
                    .as_ref()
                    .is_some_and(|p| escalation::acknowledge(&mut inc, p, who, now));
                let extra = if found {
                    ""
                } else {
                    " (不在当前通知名单中)"
                };
                (
                    "acknowledged",
                    format!("已确认{}{extra}", on_behalf(person)),
                )
            }
            ActionKind::CheckIn { person, lat, lon } => {
                let who = person.as_deref().unwrap_or(by);
                escalation::check_in(&mut inc, who, now);
                (
                    "checked_in",
                    format!("已到岗{} ({lat:.5}, {lon:.5})", on_behalf(person)),
                )
            }
            ActionKind::Note { text } => ("note", text.clone()),
            ActionKind::ConfirmClosure { person } => {
                let who = person.as_deref().unwrap_or(by).to_string();
                let res = match &point {
                    Some(p) if p.kind == PointKind::Underpass => {
                        closure::confirm(&mut inc.closure, p, &who, now)
                    }
                    _ => Err(closure::ClosureRefused::NotAnUnderpass),
                };
                closure_line(res, on_behalf(person))
            }
            ActionKind::ClosureStep { stage } => closure_line(
                closure::step(&mut inc.closure, *stage, by, now),
                String::new(),
            ),
            ActionKind::Reopen { lat, lon } => {
                let res =
                    closure::reopen(&mut inc.closure, &self.district.closure, inc.level, by, now);
                close_now = res.is_ok() && inc.level == Level::Normal;
                let (what, detail) = closure_line(res, String::new());
                (what, format!("{detail} 现场确认 ({lat:.5}, {lon:.5})"))
            }
        };
        inc.timeline.push(entry(now, line.0, line.1, Some(by)));
        if close_now {
            inc.state = IncidentState::Closed;
            inc.closed_at = Some(now);
            inc.timeline
                .push(entry(now, "closed", "已解封, 事件关闭".into(), None));
        }
        let mut out = vec![Effect::Incident(inc.clone())];
        if inc.state == IncidentState::Open {
            self.open.insert(key, inc);
        } else if inc.problem == Problem::Water {
            self.last_closed_water.insert(inc.point_id.clone(), inc);
        }
        self.mark_applied(&source, &mut out);
        out
    }

    /// Run out the timers due at `now`: escalate to the next rung, repeat loops.
    pub fn tick(&mut self, now: Millis) -> Vec<Effect> {
        let due = self.open.due(now);
        let mut out = Vec::new();
        let district = self.district.clone();
        let sig = &district.info.sms_signature;
        for key in due {
            let mut inc = self.open.remove(&key).expect("listed above");
            let (Some(point), Some(policy)) = (district.point(&inc.point_id), self.policy(&inc))
            else {
                self.open.insert(key, inc);
                continue;
            };
            let tells = escalation::tick(&mut inc, point, &policy, now);
            let level = inc.level;
            let problem = inc.problem;
            let value = inc.value;
            self.tell(
                &mut inc,
                tells,
                |tell| {
                    message::escalated(sig, point, problem, level, value, tell.reason.as_deref())
                },
                now,
                &mut out,
            );
            out.push(Effect::Incident(inc.clone()));
            self.open.insert(key, inc);
        }
        out
    }

    /// The earliest running timer, so the stage knows when to tick.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.open.next_deadline()
    }

    /// The roster (district config) changed while running: running steps move to whoever now
    /// holds their rung, with an audit line.
    pub fn set_district(&mut self, district: Arc<District>, now: Millis) -> Vec<Effect> {
        self.district = district;
        let keys: Vec<(String, ProblemKey)> = self.open.keys().cloned().collect();
        let sig = self.district.info.sms_signature.clone();
        let mut out = Vec::new();
        for key in keys {
            let mut inc = self.open.remove(&key).expect("listed above");
            let (Some(point), Some(policy)) = (
                self.district.point(&inc.point_id).cloned(),
                self.policy(&inc),
            ) else {
                self.open.insert(key, inc);
                continue;
            };
            let moved = escalation::reassign(&mut inc, &point, &policy, now);
            if !moved.is_empty() {
                for (old, tell) in &moved {
                    let s = &inc.steps[tell.step];
                    inc.timeline.push(entry(
                        now,
                        "roster_changed",
                        format!("{}: {old} → {}", s.rung.zh(), s.name),
                        None,
                    ));
                }
                let (problem, level, value) = (inc.problem, inc.level, inc.value);
                let tells = moved.into_iter().map(|(_, t)| t).collect();
                self.tell(
                    &mut inc,
                    tells,
                    |tell| {
                        message::escalated(
                            &sig,
                            &point,
                            problem,
                            level,
                            value,
                            tell.reason.as_deref(),
                        )
                    },
                    now,
                    &mut out,
                );
                out.push(Effect::Incident(inc.clone()));
            }
            self.open.insert(key, inc);
        }
        out
    }
}

fn closure_line(
    res: Result<ClosureOutcome, closure::ClosureRefused>,
    suffix: String,
) -> (&'static str, String) {
    match res {
        Ok(ClosureOutcome::Moved(stage)) => ("closure", format!("{}{suffix}", stage.zh())),
        Ok(ClosureOutcome::Confirmed { have, owner }) => (
            "closure_confirmed",
            format!(
                "封闭确认 {have}/2{suffix}{}",
                if owner {
                    ""
                } else {
                    " (需点位责任人确认)"
                }
            ),
        ),
        Err(e) => ("closure_refused", format!("{e}{suffix}")),
    }
}

fn new_incident(t: &AlertTransition, problem: Problem) -> Incident {
    let tag = match problem {
        Problem::Water => "water",
        Problem::Silent => "silent",
    };
    Incident {
        id: format!("{}:{tag}:{}", t.point, t.event_ms),
        point_id: t.point.clone(),
        problem,
        level: t.to,
        peak_level: t.to,
        state: IncidentState::Open,
        opened_at: t.event_ms,
        updated_at: t.event_ms,
        closed_at: None,
        value: t.value,
        timeline: Vec::new(),
        steps: Vec::new(),
        on_site_ms: None,
        closure: None,
        source: None,
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
