//! Restarting the stream stage: it rebuilds its windows and levels from the readings before
//! its committed offsets, emits nothing twice, and goes on as if it had never stopped.

mod common;

use common::{depth_series, district, run_bounded, HookedBus, T0};
use floodcmd_bus::EmbeddedBus;
use floodcmd_model::bus::{Assignment, Bus, BusError, Consumer, Record};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{AlertTransition, TransitionKind};
use floodcmd_model::time::{Clock, ManualClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{Level, Reading};
use floodcmd_stream::{run_stream, StreamConfig, Watermark};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// A consumer of the embedded bus whose `commit_last` is kept (the embedded bus commits at
/// once, so only what the stage asks for tells a last request that carries nothing).
struct WatchedConsumer {
    inner: Box<dyn Consumer>,
    last_commits: Arc<Mutex<Vec<(u32, u64)>>>,
}

#[async_trait::async_trait]
impl Consumer for WatchedConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>, BusError> {
        self.inner.poll(max, timeout).await
    }
    async fn commit(&mut self, partition: u32, next: u64) -> Result<(), BusError> {
        self.inner.commit(partition, next).await
    }
    async fn seek(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        self.inner.seek(partition, offset).await
    }
    fn assigned(&self) -> Vec<u32> {
        self.inner.assigned()
    }
    async fn commit_last(&mut self, last: &[(u32, u64)]) -> Result<(), BusError> {
        self.last_commits.lock().unwrap().extend_from_slice(last);
        self.inner.commit_last(last).await
    }
    fn let_go(self: Box<Self>) {
        self.inner.let_go()
    }
}

/// On a real broker each lookup of a group's commits is a client of its own and a round trip
/// to the coordinator, and a worker made up to three (two in this configuration, and its
/// consumer two lookups more) before it read a record. Now each worker reads its group's
/// commits once and hands its consumer every position as its group's: the commit where there
/// is one, else the first offset the bus still holds (above 0 here: the partition's oldest
/// records were deleted). The run ends with the group's commits at every partition's end,
/// and the last request each worker waits for carries every partition it read, at its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_stage_reads_its_commits_once_per_worker_and_tells_its_consumer_where_to_start()
{
    let d = district();
    let inner = EmbeddedBus::new(1 << 16);
    let topics = Topics::new("lookups");
    for t in topics.all() {
        inner.ensure_topic(&t, 4).await.unwrap();
    }
    let producer = inner.producer();
    let mut readings = Vec::new();
    for sensor in [
        "WL-UP-01", "WL-UP-02", "WL-LP-01", "WL-LP-02", "WL-LP-03", "WL-LP-04",
    ] {
        let values: Vec<f64> = (0..20).map(|i| i as f64).collect();
        readings.extend(depth_series(&d, sensor, T0, 60_000, &values));
    }
    for r in &readings {
        producer
            .send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await
            .unwrap();
    }
    let ends = inner.end_offsets(&topics.readings()).await.unwrap();
    // The group has read some partitions part way before this start, and one not at all.
    let busy: Vec<u32> = (0..4).filter(|p| ends[*p as usize] > 0).collect();
    assert!(
        busy.len() >= 2,
        "readings in at least two partitions: {ends:?}"
    );
    let (half, none) = (busy[0], busy[1]);
    let mut earlier = inner
        .consumer(
            "stream",
            &topics.readings(),
            Assignment::Partitions(vec![half]),
        )
        .await
        .unwrap();
    earlier.commit(half, ends[half as usize] / 2).await.unwrap();
    drop(earlier);
    let first_left = ends[none as usize] / 2;
    inner
        .delete_records(&topics.readings(), none, first_left)
        .unwrap();

    // The stage's lookups of its group's commits counted, the assignment of each of its
    // consumers and what each committed last kept.
    let committed_lookups = Arc::new(AtomicUsize::new(0));
    let assignments: Arc<Mutex<Vec<Assignment>>> = Arc::default();
    let last_commits: Arc<Mutex<Vec<(u32, u64)>>> = Arc::default();
    let bus = {
        let (lookups, seen, last) = (
            committed_lookups.clone(),
            assignments.clone(),
            last_commits.clone(),
        );
        HookedBus::new(inner.clone())
            .on_committed(move |group| {
                if group == "stream" {
                    lookups.fetch_add(1, Ordering::SeqCst);
                }
            })
            .before_consumer(move |group, _, assignment| {
                if group == "stream" {
                    seen.lock().unwrap().push(assignment.clone());
                }
                Ok(())
            })
            .wrap_consumer(move |group, consumer| match group {
                "stream" => Box::new(WatchedConsumer {
                    inner: consumer,
                    last_commits: last.clone(),
                }),
                _ => consumer,
            })
    };
    run_bounded(Arc::new(bus), d, &topics, 2, 5_000).await;
    assert_eq!(
        committed_lookups.load(Ordering::SeqCst),
        2,
        "one lookup of the group's commits per worker"
    );
    let mut told: Vec<(u32, Option<u64>)> = assignments
        .lock()
        .unwrap()
        .iter()
        .flat_map(|a| match a {
            Assignment::GroupPositions(ps) => {
                ps.iter().map(|(p, at)| (*p, Some(*at))).collect::<Vec<_>>()
            }
            other => panic!("a worker's consumer is told its group's positions, not {other:?}"),
        })
        .collect();
    told.sort();
    let expected: Vec<(u32, Option<u64>)> = (0..4)
        .map(|p| {
            let at = match p {
                _ if p == half => ends[p as usize] / 2,
                _ if p == none => first_left,
                _ => 0,
            };
            (p, Some(at))
        })
        .collect();
    assert_eq!(
        told, expected,
        "partition {none} from its first offset, {half} from its commit"
    );
    let after = inner.committed("stream", &topics.readings()).await.unwrap();
    let mut last = last_commits.lock().unwrap().clone();
    last.sort();
    assert_eq!(
        last,
        busy.iter()
            .map(|p| (*p, ends[*p as usize]))
            .collect::<Vec<_>>(),
        "the last requests carry every partition read, at its end"
    );
    for p in busy {
        assert_eq!(
            after[p as usize],
            Some(ends[p as usize]),
            "partition {p} read to its end"
        );
    }
}
