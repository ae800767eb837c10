//! Escalation and closures with a controllable clock: the book's timers are deadlines, and
//! `now` is passed in, so hours of a night pass in microseconds here.

use floodcmd_alerts::{Effect, IncidentBook};
use floodcmd_model::config::{PointKind, Rung};
use floodcmd_model::event::{
    Action, ActionKind, AlertTransition, ClosureStage, Incident, IncidentState, Notification,
    StepState, TransitionKind,
};
use floodcmd_model::{District, Level};
use std::sync::Arc;

const XINCHENG: &str = include_str!("../../config/xincheng.toml");
const S: i64 = 1000;
const T0: i64 = 1_800_000_000_000;

fn district() -> Arc<District> {
    Arc::new(District::from_toml_str(XINCHENG).unwrap())
}

fn tr(point: &str, kind: TransitionKind, from: Level, to: Level, at: i64) -> AlertTransition {
    AlertTransition {
        point: point.into(),
        point_kind: PointKind::Underpass,
        transition: kind,
        from,
        to,
        event_ms: at,
        processed_ms: at,
        rule: format!("depth >= {to}"),
        value: 30.0,
        rise_cm_per_min: Some(1.0),
        late: false,
        next_level: None,
        minutes_to_next: None,
        flapping: false,
    }
}

fn notes(effects: &[Effect]) -> Vec<Notification> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Notify(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

fn last_incident(effects: &[Effect]) -> Incident {
    effects
        .iter()
        .rev()
        .find_map(|e| match e {
            Effect::Incident(i) => Some(i.clone()),
            _ => None,
        })
        .expect("an incident version")
}

/// The rung of each notification, from the idempotency key `<incident>/<level>.<loop>.<rung>/<person>`.
fn steps_of(n: &[Notification]) -> Vec<String> {
    n.iter()
        .map(|n| n.key.split('/').nth(1).unwrap().to_string())
        .collect()
}

fn action(incident: &str, kind: ActionKind, by: &str, at: i64) -> Action {
    Action {
        id: format!("{by}-{at}"),
        incident: incident.into(),
        kind,
        by: by.into(),
        at_ms: at,
    }
}

#[test]
fn nobody_answers_so_each_rung_is_told_in_turn_then_the_ladder_repeats() {
    let mut book = IncidentBook::new(district(), false);
    // Yellow: A post and grid at once, up to the community, 600 s to acknowledge, one repeat.
    let e = book.on_transition(
        &tr(
            "UP-09",
            TransitionKind::Raised,
            Level::Normal,
            Level::Yellow,
            T0,
        ),
        T0,
    );
    assert_eq!(steps_of(&notes(&e)), ["yellow.0.owner_a", "yellow.0.grid"]);
    assert_eq!(book.next_deadline(), Some(T0 + 600 * S));
    assert!(notes(&book.tick(T0 + 599 * S)).is_empty(), "not yet");

    let e = book.tick(T0 + 600 * S);
    assert_eq!(
        steps_of(&notes(&e)),
        ["yellow.0.owner_b", "yellow.0.community"],
        "A post silent → B post; grid silent → community"
    );
    let text = &notes(&e)[0].text;
    assert!(
        text.contains("逐级上报") && text.contains("未确认"),
        "{text}"
    );

    let e = book.tick(T0 + 1200 * S);
    assert_eq!(
        steps_of(&notes(&e)),
        ["yellow.1.owner_a", "yellow.1.grid"],
        "the top rung ran out: the ladder starts again"
    );
    let e = book.tick(T0 + 1800 * S);
    assert_eq!(
        steps_of(&notes(&e)),
        ["yellow.1.owner_b", "yellow.1.community"]
    );
    let e = book.tick(T0 + 2400 * S);
    assert!(notes(&e).is_empty(), "one repeat loop only");
    assert_eq!(book.next_deadline(), None, "no timer left");
    let inc = last_incident(&e);
    assert_eq!(inc.steps.len(), 8);
    assert!(inc.steps.iter().all(|s| s.state == StepState::Escalated));
    assert_eq!(
        inc.timeline.iter().filter(|l| l.what == "notified").count(),
        8
    );
}

#[test]
fn an_acknowledgement_without_a_check_in_escalates_again() {
    let d = district();
    let owner_a = d.point("UP-09").unwrap().chain.owner_a.id.clone();
    let mut book = IncidentBook::new(d, false);
    // Blue: A post only, up to the grid, 900 s to acknowledge, 3600 s more to be on site.
    let e = book.on_transition(
        &tr(
            "UP-09",
            TransitionKind::Raised,
            Level::Normal,
            Level::Blue,
            T0,
        ),
        T0,
    );
    let id = last_incident(&e).id;
    let e = book.on_action(
        &action(
            &id,
            ActionKind::Acknowledge {
                person: Some(owner_a.clone()),
            },
            "commander-1",
            T0 + 100 * S,
        ),
        T0 + 100 * S,
    );
    let inc = last_incident(&e);
    assert_eq!(inc.steps[0].state, StepState::Acknowledged);
    assert!(inc.timeline.last().unwrap().detail.contains("代"));
    assert!(
        notes(&book.tick(T0 + 900 * S)).is_empty(),
        "acknowledged: the acknowledgement timer stopped for that step"
    );
    let e = book.tick(T0 + 3700 * S);
    let n = notes(&e);
    assert_eq!(
        steps_of(&n),
        ["blue.0.owner_b"],
        "the next rung up: the B post"
    );
    assert!(n[0].text.contains("确认后未到岗"), "{}", n[0].text);

    // A check-in ends the climb for the level.
    let e = book.on_action(
        &action(
            &id,
            ActionKind::CheckIn {
                person: None,
                lat: 34.27,
                lon: 108.95,
            },
            &d_grid(&book),
            T0 + 3800 * S,
        ),
        T0 + 3800 * S,
    );
    let inc = last_incident(&e);
    assert_eq!(inc.on_site_ms, Some(T0 + 3800 * S));
    assert_eq!(book.next_deadline(), None);
    assert!(notes(&book.tick(T0 + 99_999 * S)).is_empty());
}

fn d_grid(book: &IncidentBook) -> String {
    book.district()
        .point("UP-09")
        .unwrap()
        .chain
        .grid_worker
        .id
        .clone()
}

#[test]
fn red_tells_several_levels_together_and_suggests_closing_the_underpass() {
    let mut book = IncidentBook::new(district(), false);
    let e = book.on_transition(
        &tr(
            "UP-09",
            TransitionKind::Raised,
            Level::Normal,
            Level::Red,
            T0,
        ),
        T0,
    );
    assert_eq!(
        steps_of(&notes(&e)),
        [
            "red.0.owner_a",
            "red.0.owner_b",
            "red.0.grid",
            "red.0.community",
            "red.0.sub_district"
        ]
    );
    let inc = last_incident(&e);
    assert_eq!(inc.closure.unwrap().stage, ClosureStage::Suggested);
    // Nobody answers in 180 s: the district duty leader.
    let e = book.tick(T0 + 180 * S);
    assert_eq!(steps_of(&notes(&e)), ["red.0.district"]);
}

#[test]
fn a_roster_change_moves_running_steps_to_the_new_person() {
    let mut book = IncidentBook::new(district(), false);
    let e = book.on_transition(
        &tr(
            "UP-09",
            TransitionKind::Raised,
            Level::Normal,
            Level::Orange,
            T0,
        ),
        T0,
    );
    assert!(notes(&e).iter().any(|n| n.recipient.person == "P090"));
    // UP-09's B post hands over to P002.
    let changed = XINCHENG.replacen(
        "owner_a = \"P089\"\nowner_b = \"P090\"",
        "owner_a = \"P089\"\nowner_b = \"P002\"",
        1,
    );
    assert_ne!(changed, XINCHENG);
    let e = book.set_district(
        Arc::new(District::from_toml_str(&changed).unwrap()),
        T0 + 60 * S,
    );
    let n = notes(&e);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].recipient.person, "P002");
    assert_eq!(n[0].key.split('/').nth(1), Some("orange.0.owner_b"));
    let inc = last_incident(&e);
    assert!(inc.timeline.iter().any(|l| l.what == "roster_changed"));
    let old = inc.steps.iter().find(|s| s.person == "P090").unwrap();
    assert_eq!(old.state, StepState::Superseded);
    let new = inc.steps.iter().find(|s| s.person == "P002").unwrap();
    assert_eq!(
        (new.rung, new.state, new.deadline_ms),
        (Rung::OwnerB, StepState::Pending, Some(T0 + 360 * S))
    );
}

#[test]
fn an_underpass_closes_with_two_confirmations_and_reopens_only_when_dry_long_enough_on_site() {
    let d = district();
    let p = d.point("UP-09").unwrap().clone();
    let mut book = IncidentBook::new(d, false);
    let e = book.on_transition(
        &tr(
            "UP-09",
            TransitionKind::Raised,
            Level::Normal,
            Level::Red,
            T0,
        ),
        T0,
    );
    let id = last_incident(&e).id;
    let act = |book: &mut IncidentBook, kind: ActionKind, by: &str, at: i64| {
        last_incident(&book.on_action(&action(&id, kind, by, at), at))
    };
    // The grid worker alone cannot close it; the point owner makes two.
    let inc = act(
        &mut book,
        ActionKind::ConfirmClosure {
            person: Some(p.chain.grid_worker.id.clone()),
        },
        "commander-1",
        T0 + 60 * S,
    );
    assert_eq!(inc.closure.as_ref().unwrap().stage, ClosureStage::Suggested);
    assert!(inc.timeline.last().unwrap().detail.contains("1/2"));
    let inc = act(
        &mut book,
        ActionKind::ConfirmClosure { person: None },
        &p.chain.owner_a.id,
        T0 + 120 * S,
    );
    let closure = inc.closure.clone().unwrap();
    assert_eq!(closure.stage, ClosureStage::Closed);
    assert_eq!(closure.confirmed_by.len(), 2);

    // Reopening out of order is refused, with the reason on the record.
    let inc = act(
        &mut book,
        ActionKind::Reopen {
            lat: 34.27,
            lon: 108.95,
        },
        "commander-1",
        T0 + 130 * S,
    );
    assert_eq!(inc.timeline.last().unwrap().what, "closure_refused");

    // The water goes: the incident stays open while the underpass is closed.
    let e = book.on_transition(
        &tr(
            "UP-09",
            TransitionKind::Cleared,
            Level::Red,
            Level::Normal,
            T0 + 600 * S,
        ),
        T0 + 600 * S,
    );
    let inc = last_incident(&e);
    assert_eq!(inc.state, IncidentState::Open);
    assert!(inc.timeline.iter().any(|l| l.what == "awaiting_reopen"));
    act(
        &mut book,
        ActionKind::ClosureStep {
            stage: ClosureStage::Receding,
        },
        "commander-1",
        T0 + 700 * S,
    );
    act(
        &mut book,
        ActionKind::ClosureStep {
            stage: ClosureStage::Inspected,
        },
        "commander-1",
        T0 + 800 * S,
    );
    // Below yellow for 20 of the 30 minutes: too early.
    let inc = act(
        &mut book,
        ActionKind::Reopen {
            lat: 34.27,
            lon: 108.95,
        },
        "commander-1",
        T0 + 1800 * S,
    );
    let last = inc.timeline.last().unwrap();
    assert_eq!(last.what, "closure_refused");
    assert!(last.detail.contains("未满30分钟"), "{}", last.detail);
    // Long enough, on site: open again, incident closed, every step with who and when.
    let inc = act(
        &mut book,
        ActionKind::Reopen {
            lat: 34.27,
            lon: 108.95,
        },
        "commander-2",
        T0 + 2400 * S,
    );
    assert_eq!(inc.state, IncidentState::Closed);
    let closure = inc.closure.unwrap();
    let stages: Vec<ClosureStage> = closure.history.iter().map(|h| h.stage).collect();
    assert_eq!(
        stages,
        [
            ClosureStage::Suggested,
            ClosureStage::Closed,
            ClosureStage::Receding,
            ClosureStage::Inspected,
            ClosureStage::Reopened
        ]
    );
    assert_eq!(
        closure.history.last().unwrap().by.as_deref(),
        Some("commander-2")
    );
    assert!(book.open().is_empty());
}

#[test]
fn a_restored_book_carries_on_where_the_old_one_stopped() {
    let mut book = IncidentBook::new(district(), false);
    let mut log: Vec<Incident> = Vec::new();
    let mut keep = |e: &[Effect]| {
        for x in e {
            if let Effect::Incident(i) = x {
                log.push(i.clone());
            }
        }
    };
    let src = |o: u64| {
        Some(floodcmd_model::event::InputOffset {
            topic: "alerts".into(),
            partition: 0,
            offset: o,
            index: 0,
        })
    };
    keep(&book.apply_transition(
        &tr(
            "UP-09",
            TransitionKind::Raised,
            Level::Normal,
            Level::Yellow,
            T0,
        ),
        T0,
        src(7),
    ));
    keep(&book.apply_transition(
        &tr(
            "LP-01",
            TransitionKind::Raised,
            Level::Normal,
            Level::Blue,
            T0,
        ),
        T0,
        src(8),
    ));
    keep(&book.tick(T0 + 600 * S));

    let mut restored = IncidentBook::new(district(), false);
    restored.restore(log);
    assert_eq!(restored.open().len(), 2);
    assert_eq!(restored.next_deadline(), book.next_deadline());
    assert!(restored.already_applied(&src(8).unwrap()));
    assert!(!restored.already_applied(&src(9).unwrap()));
    // The same timers fire the same way in both.
    let a = notes(&book.tick(T0 + 1200 * S));
    let b = notes(&restored.tick(T0 + 1200 * S));
    assert!(!a.is_empty());
    assert_eq!(
        a.iter().map(|n| &n.key).collect::<Vec<_>>(),
        b.iter().map(|n| &n.key).collect::<Vec<_>>()
    );
    // Re-applying an old transition after restore tells nobody again.
    let again = restored.on_transition(
        &tr(
            "UP-09",
            TransitionKind::Upgraded,
            Level::Yellow,
            Level::Yellow,
            T0,
        ),
        T0 + 1300 * S,
    );
    assert!(notes(&again).is_empty());
}

/// Transitions packed in one Kafka record share its offset, told apart by their place at it.
/// A book restored from what was published after the first two of a pack of three skips
/// those two, applies the third, and ends as the book that applied all three did.
#[test]
fn a_restored_book_skips_a_packs_applied_members_and_applies_the_rest() {
    let at = |index: u32| {
        Some(floodcmd_model::event::InputOffset {
            topic: "alerts".into(),
            partition: 2,
            offset: 40,
            index,
        })
    };
    let pack = [
        tr(
            "UP-09",
            TransitionKind::Raised,
            Level::Normal,
            Level::Yellow,
            T0,
        ),
        tr(
            "LP-01",
            TransitionKind::Raised,
            Level::Normal,
            Level::Blue,
            T0,
        ),
        tr(
            "UP-09",
            TransitionKind::Upgraded,
            Level::Yellow,
            Level::Red,
            T0,
        ),
    ];
    let incidents = |e: &[Effect]| -> Vec<Incident> {
        e.iter()
            .filter_map(|x| match x {
                Effect::Incident(i) => Some(i.clone()),
                _ => None,
            })
            .collect()
    };
    let mut whole = IncidentBook::new(district(), false);
    let mut published = Vec::new();
    for (i, t) in pack.iter().enumerate().take(2) {
        published.extend(incidents(&whole.apply_transition(t, T0, at(i as u32))));
    }
    let last = incidents(&whole.apply_transition(&pack[2], T0, at(2)));
    assert!(!last.is_empty(), "the upgrade changes an incident");
    assert_eq!(
        last[0].source,
        at(2),
        "a version names its input's place in the pack"
    );

    // The stage stopped after the second member's effects were on the bus; a restart reads
    // them back from the incidents topic, as JSON.
    let published: Vec<Incident> = published
        .iter()
        .map(|i| {
            floodcmd_model::codec::decode(&floodcmd_model::codec::encode(i)).expect("round trip")
        })
        .collect();
    assert!(
        published.iter().any(|i| i.source == at(1)),
        "the place in the pack survives the incidents topic"
    );
    let mut restored = IncidentBook::new(district(), false);
    restored.restore(published);
    let mut replayed = Vec::new();
    for (i, t) in pack.iter().enumerate() {
        let src = at(i as u32);
        if restored.already_applied(src.as_ref().unwrap()) {
            continue;
        }
        replayed.push(i);
        restored.apply_transition(t, T0, src);
    }
    assert_eq!(
        replayed,
        vec![2],
        "only the member not yet applied is applied"
    );
    let state = |b: &IncidentBook| {
        let mut v: Vec<(String, Level, usize)> = b
            .open()
            .into_iter()
            .map(|i| (i.point_id.clone(), i.level, i.steps.len()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(state(&restored), state(&whole));
    assert!(state(&whole)
        .iter()
        .any(|(p, l, _)| p == "UP-09" && *l == Level::Red));
    // A record alone at the next offset is not taken for applied.
    assert!(
        !restored.already_applied(&floodcmd_model::event::InputOffset {
            topic: "alerts".into(),
            partition: 2,
            offset: 41,
            index: 0,
        })
    );
}

/// The book keeps its open incidents' deadlines indexed; after every kind of change (raise,
/// upgrade, acknowledge, check-in, silence, recovery, clear, timers firing) the earliest one
/// it gives must be what a scan of every open incident finds.
#[test]
fn the_next_deadline_is_always_the_earliest_of_every_open_incident() {
    let d = district();
    let mut book = IncidentBook::new(d.clone(), false);
    let scanned = |book: &IncidentBook| {
        book.open()
            .into_iter()
            .filter_map(floodcmd_alerts::escalation::next_deadline)
            .min()
    };
    let points: Vec<String> = d
        .points
        .iter()
        .filter(|p| p.kind == PointKind::Underpass)
        .take(6)
        .map(|p| p.id.clone())
        .collect();
    assert!(
        points.len() >= 4,
        "the district has underpasses to work with"
    );
    let mut checked = 0;
    let mut check = |book: &IncidentBook, what: &str| {
        assert_eq!(book.next_deadline(), scanned(book), "after {what}");
        checked += 1;
    };
    let mut at = T0;
    for (i, p) in points.iter().enumerate() {
        book.on_transition(
            &tr(p, TransitionKind::Raised, Level::Normal, Level::Blue, at),
            at,
        );
        check(&book, "a raise");
        at += (i as i64 + 1) * 37 * S;
    }
    book.on_transition(
        &tr(
            &points[1],
            TransitionKind::Upgraded,
            Level::Blue,
            Level::Red,
            at,
        ),
        at,
    );
    check(&book, "an upgrade");
    book.on_transition(
        &tr(
            &points[2],
            TransitionKind::Silent,
            Level::Blue,
            Level::Blue,
            at,
        ),
        at,
    );
    check(&book, "silence");
    let id = book
        .open()
        .into_iter()
        .find(|i| i.point_id == points[0] && i.problem == floodcmd_model::event::Problem::Water)
        .unwrap()
        .id
        .clone();
    book.on_action(
        &action(
            &id,
            ActionKind::Acknowledge { person: None },
            "commander-1",
            at,
        ),
        at,
    );
    check(&book, "an acknowledgement");
    book.on_action(
        &action(
            &id,
            ActionKind::CheckIn {
                person: None,
                lat: 34.27,
                lon: 108.95,
            },
            "commander-1",
            at + S,
        ),
        at + S,
    );
    check(&book, "a check-in");
    book.on_transition(
        &tr(
            &points[2],
            TransitionKind::Recovered,
            Level::Blue,
            Level::Blue,
            at + 2 * S,
        ),
        at + 2 * S,
    );
    check(&book, "a recovery");
    book.on_transition(
        &tr(
            &points[3],
            TransitionKind::Cleared,
            Level::Blue,
            Level::Normal,
            at + 3 * S,
        ),
        at + 3 * S,
    );
    check(&book, "a clear");
    // Let the timers run for hours, each at its deadline.
    let mut fired = 0;
    while let Some(next) = book.next_deadline() {
        if next > at + 6 * 3600 * S {
            break;
        }
        fired += notes(&book.tick(next)).len();
        check(&book, "timers firing");
    }
    assert!(fired > 0, "escalation ran");
    assert!(checked > 10);
}
