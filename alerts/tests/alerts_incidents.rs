//! The incident book from the duty room's side: who is told, when, and what they read.

use floodcmd_alerts::{Effect, IncidentBook};
use floodcmd_model::config::{PointKind, ResponsibilityLevel};
use floodcmd_model::event::{
    Action, ActionKind, AlertTransition, IncidentState, Notification, Problem, TransitionKind,
};
use floodcmd_model::{District, Level};
use std::collections::HashSet;
use std::sync::Arc;

fn district() -> Arc<District> {
    Arc::new(District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap())
}

fn t(
    point: &str,
    kind: TransitionKind,
    from: Level,
    to: Level,
    at: i64,
    value: f64,
) -> AlertTransition {
    AlertTransition {
        point: point.into(),
        point_kind: PointKind::Underpass,
        transition: kind,
        from,
        to,
        event_ms: at,
        processed_ms: at,
        rule: format!("depth {value} cm >= {to}"),
        value,
        rise_cm_per_min: Some(2.1),
        late: false,
        next_level: None,
        minutes_to_next: None,
        flapping: false,
    }
}

/// The same transition, from a point the stream finds flapping.
fn flapping(mut t: AlertTransition) -> AlertTransition {
    t.flapping = true;
    t
}

/// Apply a transition at its own time (processing time = event time in these tests).
fn apply(book: &mut IncidentBook, tr: &AlertTransition) -> Vec<Effect> {
    book.on_transition(tr, tr.event_ms)
}

fn notes(effects: &[Effect]) -> Vec<&Notification> {
    effects
        .iter()
        .filter_map(|e| {
            if let Effect::Notify(n) = e {
                Some(n)
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn blue_tells_the_a_post_and_red_tells_several_levels_at_once() {
    let d = district();
    let mut book = IncidentBook::new(d.clone(), false);
    let e = apply(
        &mut book,
        &t(
            "UP-09",
            TransitionKind::Raised,
            Level::Normal,
            Level::Blue,
            1_000,
            11.0,
        ),
    );
    let n = notes(&e);
    assert_eq!(
        n.len(),
        1,
        "the A post first; the B post only if A does not answer"
    );
    assert!(n
        .iter()
        .all(|x| x.recipient.responsibility == ResponsibilityLevel::PointOwner));
    let p = d.point("UP-09").unwrap();
    assert_eq!(n[0].recipient.phone, p.chain.owner_a.phone);

    let e = apply(
        &mut book,
        &t(
            "UP-09",
            TransitionKind::Upgraded,
            Level::Blue,
            Level::Red,
            2_000,
            32.0,
        ),
    );
    let n = notes(&e);
    let levels: HashSet<ResponsibilityLevel> =
        n.iter().map(|x| x.recipient.responsibility).collect();
    assert_eq!(
        levels.len(),
        4,
        "red notifies owner, grid, community and sub-district together: {levels:?}"
    );
    assert_eq!(n.len(), 5, "both posts, grid, community, sub-district");
    let text = &n[0].text;
    assert!(
        text.starts_with("【新城区防汛】红色预警 解放门下穿 积水32cm ↑2.1cm/分"),
        "{text}"
    );
    assert!(text.ends_with("回复1确认"), "{text}");
    let keys: HashSet<&str> = n.iter().map(|x| x.key.as_str()).collect();
    assert_eq!(keys.len(), n.len(), "idempotency keys are unique");
    assert!(
        n[0].key.starts_with("UP-09:water:1000/red.0.owner_a/"),
        "{}",
        n[0].key
    );

    let open = book.open();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].level, open[0].peak_level),
        (Level::Red, Level::Red)
    );
    assert!(
        open[0]
            .timeline
            .iter()
            .filter(|x| x.what == "notified")
            .count()
            == 6
    );
}

#[test]
fn the_same_transition_twice_notifies_nobody_twice() {
    let mut book = IncidentBook::new(district(), false);
    let raise = t(
        "UP-01",
        TransitionKind::Raised,
        Level::Normal,
        Level::Red,
        1_000,
        30.0,
    );
    let first = notes(&apply(&mut book, &raise)).len();
    let again = notes(&apply(
        &mut book,
        &t(
            "UP-01",
            TransitionKind::Upgraded,
            Level::Red,
            Level::Red,
            1_500,
            31.0,
        ),
    ))
    .len();
    assert_eq!(first, 5);
    assert_eq!(again, 0, "everyone at red was already told");
}

#[test]
fn clearing_closes_the_incident_and_silence_opens_maintenance_without_touching_water() {
    let mut book = IncidentBook::new(district(), false);
    apply(
        &mut book,
        &t(
            "UP-02",
            TransitionKind::Raised,
            Level::Normal,
            Level::Orange,
            1_000,
            21.0,
        ),
    );
    let e = apply(
        &mut book,
        &t(
            "UP-02",
            TransitionKind::Silent,
            Level::Orange,
            Level::Orange,
            5_000,
            0.0,
        ),
    );
    let n = notes(&e);
    assert_eq!(n.len(), 2, "the grid worker and the maintenance contact");
    assert_eq!(n[1].recipient.person, "P160", "设备运维值班员");
    assert_eq!(
        n[0].recipient.responsibility,
        ResponsibilityLevel::Grid,
        "maintenance goes to the grid worker"
    );
    assert!(n[0].text.contains("设备失联"), "{}", n[0].text);
    let open = book.open();
    assert_eq!(open.len(), 2);
    let water = open.iter().find(|i| i.problem == Problem::Water).unwrap();
    assert_eq!(
        water.level,
        Level::Orange,
        "silence does not resolve the water incident"
    );
    assert_eq!(water.state, IncidentState::Open);

    apply(
        &mut book,
        &t(
            "UP-02",
            TransitionKind::Recovered,
            Level::Orange,
            Level::Orange,
            6_000,
            19.0,
        ),
    );
    let e = apply(
        &mut book,
        &t(
            "UP-02",
            TransitionKind::Cleared,
            Level::Orange,
            Level::Normal,
            9_000,
            5.0,
        ),
    );
    assert!(book.open().is_empty());
    let closed = e
        .iter()
        .find_map(|x| {
            if let Effect::Incident(i) = x {
                Some(i)
            } else {
                None
            }
        })
        .unwrap();
    assert_eq!(
        (closed.state, closed.closed_at),
        (IncidentState::Closed, Some(9_000))
    );
}

#[test]
fn actions_are_attributed_in_the_timeline_and_drills_are_marked() {
    let mut book = IncidentBook::new(district(), true);
    let e = apply(
        &mut book,
        &t(
            "UP-03",
            TransitionKind::Raised,
            Level::Normal,
            Level::Yellow,
            1_000,
            16.0,
        ),
    );
    assert!(
        notes(&e).iter().all(|n| n.drill),
        "a drill's notifications are marked, never to be sent"
    );
    let id = book.open()[0].id.clone();
    let e = book.on_action(
        &Action {
            id: "a1".into(),
            incident: id,
            kind: ActionKind::Acknowledge { person: None },
            by: "commander-1".into(),
            at_ms: 2_000,
        },
        2_000,
    );
    let Effect::Incident(inc) = &e[0] else {
        panic!("incident update expected")
    };
    let last = inc.timeline.last().unwrap();
    assert_eq!(
        (last.what.as_str(), last.by.as_deref()),
        ("acknowledged", Some("commander-1"))
    );
}

#[test]
fn a_flapping_point_is_told_once_and_again_only_above_its_peak() {
    use Level::*;
    use TransitionKind::*;
    let mut book = IncidentBook::new(district(), false);
    let told = |book: &mut IncidentBook, tr: AlertTransition| notes(&apply(book, &tr)).len();

    assert_eq!(
        told(&mut book, t("UP-06", Raised, Normal, Blue, 1_000, 11.0)),
        1
    );
    let first_id = book.open()[0].id.clone();
    assert_eq!(
        told(&mut book, t("UP-06", Cleared, Blue, Normal, 2_000, 7.0)),
        0
    );
    // The water goes up and down around the blue line: the record grows, the phones stay quiet.
    for i in 0..5 {
        let at = 3_000 + i * 2_000;
        let n = told(
            &mut book,
            flapping(t("UP-06", Raised, Normal, Blue, at, 11.0)),
        );
        assert_eq!(n, 0, "raise {i} while flapping");
        let open = book.open();
        assert_eq!(open[0].id, first_id, "the same incident is reopened");
        assert_eq!(
            told(
                &mut book,
                flapping(t("UP-06", Cleared, Blue, Normal, at + 1_000, 7.0))
            ),
            0
        );
    }
    // Still flapping, but higher than ever: that is news.
    let n = told(
        &mut book,
        flapping(t("UP-06", Raised, Normal, Yellow, 20_000, 16.0)),
    );
    assert_eq!(n, 2, "yellow goes to the A post and the grid worker");
    assert_eq!(
        told(
            &mut book,
            flapping(t("UP-06", Downgraded, Yellow, Blue, 21_000, 12.0))
        ),
        0
    );
    assert_eq!(
        told(
            &mut book,
            flapping(t("UP-06", Upgraded, Blue, Yellow, 22_000, 16.0))
        ),
        0
    );
    let inc = book.open()[0].clone();
    assert_eq!(
        (inc.id.as_str(), inc.peak_level),
        (first_id.as_str(), Yellow)
    );
    assert!(inc.timeline.iter().any(|e| e.what == "reopened"));
    assert!(inc.timeline.iter().any(|e| e.what == "not_notified"));
    assert_eq!(
        inc.timeline.iter().filter(|e| e.what == "notified").count(),
        3,
        "one at blue, two at yellow, over the whole flapping episode"
    );

    // Settled: the next storm is a new incident, and people are told again.
    assert_eq!(
        told(&mut book, t("UP-06", Cleared, Yellow, Normal, 30_000, 5.0)),
        0
    );
    assert_eq!(
        told(&mut book, t("UP-06", Raised, Normal, Blue, 90_000, 11.0)),
        1
    );
    assert_ne!(book.open()[0].id, first_id);
}

/// The stream stage's outputs are at least once: a restarted stage emits again the transitions
/// of what it read again. Applied again, a raise would start its climb over (stopping the
/// timers of those not yet acknowledged) or, its incident closed since, open a new one and tell
/// everyone again. The book knows each move from its incident's timeline and leaves it be;
/// a new move, even between the same levels, is applied as ever.
#[test]
fn a_transition_emitted_again_by_a_restarted_stage_changes_nothing() {
    let mut book = IncidentBook::new(district(), false);
    let raise = t(
        "UP-01",
        TransitionKind::Raised,
        Level::Normal,
        Level::Blue,
        1_000,
        11.0,
    );
    let told = notes(&apply(&mut book, &raise)).len();
    assert!(told > 0, "the raise tells someone");
    let timer = book.next_deadline();
    assert!(timer.is_some(), "and waits for their acknowledgement");

    let again = book.on_transition(&raise, 1_200);
    assert!(
        again.is_empty(),
        "nothing told or recorded again: {again:?}"
    );
    assert_eq!(book.next_deadline(), timer, "the timers run on");
    let raises = |book: &IncidentBook| {
        book.open()[0]
            .timeline
            .iter()
            .filter(|e| e.what == "raised")
            .count()
    };
    assert_eq!(raises(&book), 1, "one raise on the record");

    let clear = t(
        "UP-01",
        TransitionKind::Cleared,
        Level::Blue,
        Level::Normal,
        5_000,
        2.0,
    );
    apply(&mut book, &clear);
    assert!(book.open().is_empty(), "cleared and closed");
    for (tr, now) in [(&raise, 5_100), (&clear, 5_200)] {
        let e = book.on_transition(tr, now);
        assert!(e.is_empty(), "{:?} again: {e:?}", tr.transition);
    }
    assert!(book.open().is_empty(), "no incident opened again");

    // The water rises again later: a new incident, and people are told.
    let later = t(
        "UP-01",
        TransitionKind::Raised,
        Level::Normal,
        Level::Blue,
        9_000,
        11.0,
    );
    assert_eq!(notes(&apply(&mut book, &later)).len(), told);
    assert_eq!(book.open().len(), 1);
}

/// A silence emitted again (by a restarted stage judging again a moment it had judged) neither
/// notes the water incident's quiet twice nor, the sensor recovered since, opens a maintenance
/// incident again; a new silence later does.
#[test]
fn a_silence_emitted_again_changes_nothing_and_a_new_one_opens_maintenance() {
    let mut book = IncidentBook::new(district(), false);
    apply(
        &mut book,
        &t(
            "UP-01",
            TransitionKind::Raised,
            Level::Normal,
            Level::Blue,
            1_000,
            11.0,
        ),
    );
    let silent = t(
        "UP-01",
        TransitionKind::Silent,
        Level::Blue,
        Level::Blue,
        200_000,
        0.0,
    );
    assert!(
        !notes(&apply(&mut book, &silent)).is_empty(),
        "maintenance told"
    );
    assert_eq!(book.open().len(), 2, "water and maintenance");
    let again = book.on_transition(&silent, 200_500);
    assert!(
        again.is_empty(),
        "nothing again while it is open: {again:?}"
    );

    let recovered = t(
        "UP-01",
        TransitionKind::Recovered,
        Level::Blue,
        Level::Blue,
        260_000,
        11.0,
    );
    apply(&mut book, &recovered);
    assert_eq!(book.open().len(), 1, "maintenance closed");
    for (tr, now) in [(&silent, 260_100), (&recovered, 260_200)] {
        let e = book.on_transition(tr, now);
        assert!(e.is_empty(), "{:?} again: {e:?}", tr.transition);
    }
    assert_eq!(book.open().len(), 1, "no maintenance incident opened again");

    let later = t(
        "UP-01",
        TransitionKind::Silent,
        Level::Blue,
        Level::Blue,
        600_000,
        0.0,
    );
    assert!(!notes(&apply(&mut book, &later)).is_empty());
    assert_eq!(book.open().len(), 2);
}

/// What the book knows of past moves comes back with it from the incidents it published: a
/// restarted alerts stage still knows a raise, a clearing and a silence emitted again.
#[test]
fn a_restored_book_still_knows_the_moves_it_applied() {
    let mut book = IncidentBook::new(district(), false);
    let raise = t(
        "UP-01",
        TransitionKind::Raised,
        Level::Normal,
        Level::Blue,
        1_000,
        11.0,
    );
    // Flagged late: its timeline entry says so after the rule.
    let raise = AlertTransition {
        late: true,
        ..raise
    };
    let silent = t(
        "UP-02",
        TransitionKind::Silent,
        Level::Normal,
        Level::Normal,
        2_000,
        0.0,
    );
    let recovered = t(
        "UP-02",
        TransitionKind::Recovered,
        Level::Normal,
        Level::Normal,
        3_000,
        4.0,
    );
    let clear = t(
        "UP-01",
        TransitionKind::Cleared,
        Level::Blue,
        Level::Normal,
        5_000,
        2.0,
    );
    let mut published = Vec::new();
    for tr in [&raise, &silent, &recovered, &clear] {
        published.extend(apply(&mut book, tr).into_iter().filter_map(|e| match e {
            Effect::Incident(i) => Some(i),
            _ => None,
        }));
    }
    let mut restored = IncidentBook::new(district(), false);
    restored.restore(published);
    assert!(restored.open().is_empty());
    for tr in [&raise, &silent, &recovered, &clear] {
        let e = restored.on_transition(tr, 6_000);
        assert!(e.is_empty(), "{:?} again: {e:?}", tr.transition);
    }
    assert!(restored.open().is_empty(), "nothing opened again");
}

/// A stage that emits again the transitions of minutes of a backlog can repeat moves of two
/// incidents of one point: the raise and clearing of a closed one, then the raise of the one
/// open now (and a silence, its recovery, and the silence open now). Each is known as the move
/// it was: the open incidents keep their levels and timers, nothing opens again.
#[test]
fn moves_emitted_again_across_two_incidents_of_a_point_change_nothing() {
    let mut book = IncidentBook::new(district(), false);
    let moves = [
        t(
            "UP-01",
            TransitionKind::Raised,
            Level::Normal,
            Level::Blue,
            1_000,
            11.0,
        ),
        t(
            "UP-01",
            TransitionKind::Cleared,
            Level::Blue,
            Level::Normal,
            60_000,
            2.0,
        ),
        t(
            "UP-01",
            TransitionKind::Raised,
            Level::Normal,
            Level::Yellow,
            120_000,
            16.0,
        ),
        t(
            "UP-01",
            TransitionKind::Silent,
            Level::Yellow,
            Level::Yellow,
            400_000,
            0.0,
        ),
        t(
            "UP-01",
            TransitionKind::Recovered,
            Level::Yellow,
            Level::Yellow,
            500_000,
            16.0,
        ),
        t(
            "UP-01",
            TransitionKind::Silent,
            Level::Yellow,
            Level::Yellow,
            800_000,
            0.0,
        ),
    ];
    for m in &moves {
        apply(&mut book, m);
    }
    let state = |book: &IncidentBook| {
        let mut open: Vec<(Problem, Level, usize)> = book
            .open()
            .iter()
            .map(|i| (i.problem, i.level, i.timeline.len()))
            .collect();
        open.sort_by_key(|o| o.2);
        open
    };
    let before = state(&book);
    let timer = book.next_deadline();
    assert_eq!(before.len(), 2, "water at yellow and a silence: {before:?}");
    for m in &moves {
        let e = book.on_transition(m, 900_000);
        assert!(
            e.is_empty(),
            "{:?} at {} again: {e:?}",
            m.transition,
            m.event_ms
        );
    }
    assert_eq!(state(&book), before, "the open incidents as they were");
    assert_eq!(book.next_deadline(), timer, "their timers run on");
}
