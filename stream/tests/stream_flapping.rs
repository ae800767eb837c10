//! Flapping from the duty room's side: water going up and down around a threshold is on the
//! record move by move, but the phones do not ring for every move, and once the water settles
//! the point is judged normally again.

mod common;

use common::{depth_series, district, level_moves, run, statuses, LATENESS_MS, T0};
use floodcmd_alerts::{Effect, IncidentBook};
use floodcmd_model::event::{AlertTransition, TransitionKind};
use floodcmd_model::time::Millis;
use floodcmd_model::Level;
use std::collections::BTreeSet;

const EVERY: Millis = 30_000;
const CYCLES: usize = 12;

/// UP-08 (blue at 10 cm held 30 s, reset below 8 cm): 11, 11, 7 over and over, so blue is
/// raised and cleared every 90 s; then 7 cm for a while; then a real rise to yellow.
fn oscillating_then_settled_then_rising() -> Vec<f64> {
    let mut depths = Vec::new();
    for _ in 0..CYCLES {
        depths.extend([11.0, 11.0, 7.0]);
    }
    depths.extend([7.0; 25]);
    depths.extend([11.0, 15.0, 16.0, 16.0]);
    depths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn water_flapping_around_blue_is_recorded_but_not_notified_again_and_settles() {
    let d = district();
    let v = depth_series(
        &d,
        "WL-UP-08",
        T0,
        EVERY,
        &oscillating_then_settled_then_rising(),
    );
    let (alerts, status) = run(&v, 2, LATENESS_MS).await;

    // The record is honest: every raise and clear is there.
    let moves = level_moves(&alerts, "UP-08");
    let raised = moves
        .iter()
        .filter(|m| m.0 == TransitionKind::Raised)
        .count();
    assert_eq!(raised, CYCLES + 1, "{moves:?}");
    let up08: Vec<&AlertTransition> = alerts
        .iter()
        .filter(|a| {
            a.point == "UP-08"
                && !matches!(
                    a.transition,
                    TransitionKind::Silent | TransitionKind::Recovered
                )
        })
        .collect();
    assert!(!up08[0].flapping, "one raise is not flapping");
    let first_flapping = up08
        .iter()
        .position(|a| a.flapping)
        .expect("flapping is detected");
    assert!(
        first_flapping < 2 * CYCLES,
        "detected while oscillating: at move {first_flapping}"
    );
    let (yellow_raise, yellow_up) = (&up08[up08.len() - 2], &up08[up08.len() - 1]);
    assert_eq!(
        (yellow_raise.to, yellow_up.to),
        (Level::Blue, Level::Yellow)
    );
    assert!(
        !yellow_raise.flapping && !yellow_up.flapping,
        "settled before the real rise"
    );

    // The wall shows it flapping, then not.
    let up08_status = statuses(&status, "UP-08");
    assert!(up08_status.iter().any(|s| s.flapping));
    assert!(!up08_status.last().expect("statuses").flapping);

    // The phones: told at the first raise, quiet while it flaps, told again for the real rise.
    let mut book = IncidentBook::new(d.clone(), false);
    let mut per_transition = Vec::new();
    let mut incidents = BTreeSet::new();
    for t in &up08 {
        let effects = book.on_transition(t, t.processed_ms);
        let notified = effects
            .iter()
            .filter(|e| matches!(e, Effect::Notify(_)))
            .count();
        for e in &effects {
            if let Effect::Incident(i) = e {
                incidents.insert(i.id.clone());
            }
        }
        per_transition.push((t.transition, t.to, t.flapping, notified));
    }
    let told_while_flapping: usize = per_transition
        .iter()
        .filter(|(_, _, flapping, _)| *flapping)
        .map(|(.., n)| n)
        .sum();
    assert_eq!(told_while_flapping, 0, "{per_transition:?}");
    let told_in_all: usize = per_transition.iter().map(|(.., n)| n).sum();
    let raises_before_detection = up08[..first_flapping]
        .iter()
        .filter(|a| a.transition == TransitionKind::Raised)
        .count();
    assert_eq!(
        told_in_all,
        raises_before_detection + 1 + 2,
        "blue to the A post for each raise before flapping was detected, then blue (A post) and \
         yellow (A post and grid) for the real rise: {per_transition:?}"
    );
    assert!(
        told_in_all < raised,
        "fewer than one blue SMS per raise: {told_in_all}"
    );
    assert!(
        incidents.len() < raised,
        "flapping raises reopen the same incident: {incidents:?}"
    );
}
