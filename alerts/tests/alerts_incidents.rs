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
