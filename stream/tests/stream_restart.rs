//! Restarting the stream stage: it rebuilds its windows and levels from the readings before
//! its committed offsets, emits nothing twice, and goes on as if it had never stopped.

mod common;

use common::{depth_series, district, T0};
use floodcmd_bus::EmbeddedBus;
use floodcmd_model::bus::{Assignment, Bus, Consumer};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{AlertTransition, TransitionKind};
use floodcmd_model::time::{Clock, ManualClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{Level, Reading};
use floodcmd_stream::{run_stream, StreamConfig, Watermark};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn live(
    bus: &EmbeddedBus,
    topics: &Topics,
    clock: &ManualClock,
    rebuild: bool,
) -> floodcmd_stream::StreamHandle {
    let c: Arc<dyn Clock> = Arc::new(clock.clone());
    run_stream(
        Arc::new(bus.clone()),
        district(),
        c.clone(),
        StreamConfig {
            workers: 2,
            lateness_ms: 5_000,
            topics: topics.clone(),
            group: "stream".into(),
            watermark: Watermark::Clock(c),
            rebuild_ms: rebuild.then_some(3_600_000),
        },
    )
    .await
    .unwrap()
}

async fn collect_until(
    c: &mut Box<dyn Consumer>,
    out: &mut Vec<AlertTransition>,
    done: impl Fn(&[AlertTransition]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(out) {
        assert!(Instant::now() < deadline, "timed out: {out:#?}");
        out.extend(
            c.poll(1000, Duration::from_millis(100))
                .await
                .unwrap()
                .iter()
                .map(|r| decode::<AlertTransition>(&r.payload).unwrap()),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_stage_rebuilds_its_levels_and_repeats_nothing() {
    let d = district();
    let bus = EmbeddedBus::new(1 << 16);
    let topics = Topics::new("r");
    for t in topics.all() {
        bus.ensure_topic(&t, 4).await.unwrap();
    }
    let rise: Vec<f64> = (0..30).map(|i| i as f64 * 1.5).collect();
    let fall: Vec<f64> = (0..30).map(|i| (44.0 - i as f64 * 2.0).max(0.0)).collect();
    let r1 = depth_series(&d, "WL-UP-01", T0, 30_000, &rise);
    let r2 = depth_series(&d, "WL-UP-01", T0 + 900_000, 30_000, &fall);
    let send = |rs: Vec<Reading>| {
        let p = bus.producer();
        let t = topics.readings();
        async move {
            for r in rs {
                p.send(&t, r.sensor.as_bytes(), encode(&r), r.ts_ms)
                    .await
                    .unwrap();
            }
        }
    };
    let mut watch = bus
        .consumer("watch", &topics.alerts(), Assignment::All)
        .await
        .unwrap();
    let mut seen = Vec::new();

    let clock = ManualClock::new(T0 + 900_000);
    let first = live(&bus, &topics, &clock, true).await;
    send(r1).await;
    collect_until(&mut watch, &mut seen, |s| {
        s.iter().any(|t| t.point == "UP-01" && t.to == Level::Red)
    })
    .await;
    first.stop();
    tokio::task::spawn_blocking(move || first.join())
        .await
        .unwrap()
        .unwrap();
    let before = seen.len();

    clock.set(T0 + 1_800_000);
    send(r2).await;
    let second = live(&bus, &topics, &clock, true).await;
    collect_until(&mut watch, &mut seen, |s| {
        s.iter()
            .any(|t| t.point == "UP-01" && t.transition == TransitionKind::Cleared)
    })
    .await;
    second.stop();
    tokio::task::spawn_blocking(move || second.join())
        .await
        .unwrap()
        .unwrap();

    let after: Vec<(TransitionKind, Level, Level)> = seen[before..]
        .iter()
        .filter(|t| t.point == "UP-01")
        .map(|t| (t.transition, t.from, t.to))
        .collect();
    assert_eq!(
        after.first(),
        Some(&(TransitionKind::Downgraded, Level::Red, Level::Orange)),
        "the level was rebuilt to red: {after:?}"
    );
    assert!(
        after.iter().all(|t| t.0 != TransitionKind::Raised),
        "nothing raised twice: {after:?}"
    );
}
