//! Restarting the stream stage: it rebuilds its windows and levels from the readings before
//! its committed offsets, emits nothing twice, and goes on as if it had never stopped. The
//! readings that reached the bus while it was down are a backlog it reads in event time: not
//! late, and no point silent for want of its waiting readings.

mod common;

use common::{
    by_point, depth_series, district, run_bounded, run_with, up_and_down, HookedBus, Seen, T0,
};
use floodcmd_bus::EmbeddedBus;
use floodcmd_model::bus::{partition_for, Assignment, Bus, BusError, Consumer, Record};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{AlertTransition, TransitionKind};
use floodcmd_model::time::{Clock, ManualClock, Millis};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Level, Reading};
use floodcmd_stream::{run_stream, StreamConfig, Watermark};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A consumer handing out a few records a poll, as a broker's fetches do (a backlog takes the
/// stage many polls to read), none at all of one partition from an offset on if asked (a bus
/// that stopped serving it), and, at the first poll of any of the stage's consumers, putting
/// `arrivals` on the readings topic (readings that reach the bus after the stage looked where
/// its partitions end, while it reads its backlog). Counts the records it hands out.
struct Trickle {
    inner: Box<dyn Consumer>,
    /// A partition, and the offset from which none of its records is handed out.
    withheld: Option<(u32, u64)>,
    handed_out: Arc<AtomicUsize>,
    /// Held while the arrivals are sent, so no consumer polls before they are on the bus.
    arrivals: Arc<tokio::sync::Mutex<Option<Arrivals>>>,
}

/// Readings to put on `topic` of `bus` once the stage reads.
struct Arrivals {
    bus: EmbeddedBus,
    topics: Topics,
    readings: Vec<Reading>,
}

#[async_trait::async_trait]
impl Consumer for Trickle {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>, BusError> {
        let mut arrivals = self.arrivals.lock().await;
        if let Some(a) = arrivals.take() {
            put(&a.bus, &a.topics, &a.readings).await?;
        }
        drop(arrivals);
        let mut got = self.inner.poll(max.min(3), timeout).await?;
        got.retain(|r| {
            !self
                .withheld
                .is_some_and(|(p, from)| r.partition == p && r.offset >= from)
        });
        self.handed_out.fetch_add(got.len(), Ordering::SeqCst);
        Ok(got)
    }
    async fn commit(&mut self, partition: u32, next: u64) -> Result<(), BusError> {
        self.inner.commit(partition, next).await
    }
    async fn commit_all(&mut self, positions: &[(u32, u64)]) -> Result<(), BusError> {
        self.inner.commit_all(positions).await
    }
    async fn seek(&mut self, partition: u32, offset: u64) -> Result<(), BusError> {
        self.inner.seek(partition, offset).await
    }
    fn assigned(&self) -> Vec<u32> {
        self.inner.assigned()
    }
    async fn commit_last(&mut self, last: &[(u32, u64)]) -> Result<(), BusError> {
        self.inner.commit_last(last).await
    }
    fn let_go(self: Box<Self>) {
        self.inner.let_go()
    }
}

/// The stage live on `bus`, its clock `clock`, reading through [`Trickle`].
async fn live(
    bus: &EmbeddedBus,
    topics: &Topics,
    clock: &ManualClock,
    rebuild: bool,
) -> floodcmd_stream::StreamHandle {
    live_with(bus, topics, clock, rebuild, None, Vec::new())
        .await
        .0
}

/// [`live`], its consumers withholding the records of partition `withheld.0` from offset
/// `withheld.1` on, and `arrivals` reaching the readings topic at their first poll; with the
/// count of records its consumers have handed out.
async fn live_with(
    bus: &EmbeddedBus,
    topics: &Topics,
    clock: &ManualClock,
    rebuild: bool,
    withheld: Option<(u32, u64)>,
    arrivals: Vec<Reading>,
) -> (floodcmd_stream::StreamHandle, Arc<AtomicUsize>) {
    let c: Arc<dyn Clock> = Arc::new(clock.clone());
    let arrivals = Arc::new(tokio::sync::Mutex::new(Some(Arrivals {
        bus: bus.clone(),
        topics: topics.clone(),
        readings: arrivals,
    })));
    let handed_out = Arc::new(AtomicUsize::new(0));
    let counted = handed_out.clone();
    let trickling = HookedBus::new(bus.clone()).wrap_consumer(move |_, inner| {
        Box::new(Trickle {
            inner,
            withheld,
            handed_out: counted.clone(),
            arrivals: arrivals.clone(),
        })
    });
    let stage = run_stream(
        Arc::new(trickling),
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
    .unwrap();
    (stage, handed_out)
}

/// A fresh embedded bus with `prefix`'s topics, four partitions each, and a consumer of every
/// alert transition written to it.
async fn watched_bus(prefix: &str) -> (EmbeddedBus, Topics, Box<dyn Consumer>) {
    let bus = EmbeddedBus::new(1 << 16);
    let topics = Topics::new(prefix);
    for t in topics.all() {
        bus.ensure_topic(&t, 4).await.unwrap();
    }
    let watch = bus
        .consumer("watch", &topics.alerts(), Assignment::All)
        .await
        .unwrap();
    (bus, topics, watch)
}

/// Put `readings` on the readings topic, in this order, each under its sensor.
async fn put(bus: &EmbeddedBus, topics: &Topics, readings: &[Reading]) -> Result<(), BusError> {
    let p = bus.producer();
    for r in readings {
        p.send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await?;
    }
    Ok(())
}

/// Wait until group `stream` has committed every readings partition to its end: the stage has
/// read its whole backlog, and what it caused is on the bus. (A stage stopped part way through
/// its backlog finishes at the time its slowest worker had reached, and leaves the rest to its
/// restart.)
async fn read_to_the_end(bus: &EmbeddedBus, topics: &Topics) {
    let ends = bus.end_offsets(&topics.readings()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let committed = bus.committed("stream", &topics.readings()).await.unwrap();
        let behind: Vec<(usize, u64, Option<u64>)> = ends
            .iter()
            .enumerate()
            .filter(|(p, end)| **end > 0 && committed[*p] != Some(**end))
            .map(|(p, end)| (p, *end, committed[p]))
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: (partition, end, committed) {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stop `stage` and wait for its workers to finish, which they must without error.
async fn stop_and_join(stage: floodcmd_stream::StreamHandle) {
    stage.stop();
    tokio::task::spawn_blocking(move || stage.join())
        .await
        .unwrap()
        .unwrap();
}

/// Every transition `c` has left to read, onto `out` (until a poll comes back empty).
async fn read_the_rest(c: &mut Box<dyn Consumer>, out: &mut Vec<AlertTransition>) {
    loop {
        let more = c.poll(1000, Duration::from_millis(200)).await.unwrap();
        if more.is_empty() {
            return;
        }
        out.extend(
            more.iter()
                .map(|r| decode::<AlertTransition>(&r.payload).unwrap()),
        );
    }
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
    let (bus, topics, mut watch) = watched_bus("r").await;
    let rise: Vec<f64> = (0..30).map(|i| i as f64 * 1.5).collect();
    let fall: Vec<f64> = (0..30).map(|i| (44.0 - i as f64 * 2.0).max(0.0)).collect();
    let r1 = depth_series(&d, "WL-UP-01", T0, 30_000, &rise);
    let r2 = depth_series(&d, "WL-UP-01", T0 + 900_000, 30_000, &fall);
    let mut seen = Vec::new();

    // The clock stands still, so each phase's readings are on the bus before its stage
    // starts, a backlog read in event time: read live after the first poll, they would be
    // late, applied at a watermark epoch that a still clock never passes.
    let clock = ManualClock::new(T0 + 900_000);
    put(&bus, &topics, &r1).await.unwrap();
    let first = live(&bus, &topics, &clock, true).await;
    collect_until(&mut watch, &mut seen, |s| {
        s.iter().any(|t| t.point == "UP-01" && t.to == Level::Red)
    })
    .await;
    read_to_the_end(&bus, &topics).await;
    stop_and_join(first).await;
    let before = seen.len();

    clock.set(T0 + 1_800_000);
    put(&bus, &topics, &r2).await.unwrap();
    let second = live(&bus, &topics, &clock, true).await;
    collect_until(&mut watch, &mut seen, |s| {
        s.iter()
            .any(|t| t.point == "UP-01" && t.transition == TransitionKind::Cleared)
    })
    .await;
    stop_and_join(second).await;

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
    // Down for 15 minutes of a 3-minute silence: its readings were waiting, not missing.
    assert!(
        after
            .iter()
            .all(|t| !matches!(t.0, TransitionKind::Silent | TransitionKind::Recovered)),
        "not silent for readings that waited for the restart: {after:?}"
    );
    assert!(
        seen.iter().all(|t| !t.late),
        "readings that reached the bus on time are not late: {seen:#?}"
    );
}

/// The transitions of `points`, per point, in the order the alerts topic holds them, without
/// when the stage got round to them.
fn of_points(ts: &[AlertTransition], points: &BTreeSet<String>) -> BTreeMap<String, Vec<Seen>> {
    let mut m = by_point(ts);
    m.retain(|p, _| points.contains(p));
    m
}

/// `readings` put in event time; the newest one's time, their points, and what a 2-worker run
/// over them that never stopped raises for those points (lateness 5 s).
async fn in_event_time_with_reference(
    d: &Arc<District>,
    readings: &mut [Reading],
) -> (Millis, BTreeSet<String>, BTreeMap<String, Vec<Seen>>) {
    readings.sort_by_key(|r| r.ts_ms);
    let end_ms = readings.last().expect("readings").ts_ms;
    let points: BTreeSet<String> = readings.iter().map(|r| r.point.to_string()).collect();
    let (reference, _) = run_with(d.clone(), readings, 2, 5_000).await;
    let expected = of_points(&reference, &points);
    (end_ms, points, expected)
}

/// A stage down through the middle of a storm on three points, restarted 15 minutes later
/// while the last two minutes of readings are still reaching the bus: what it raises before
/// and after the gap, together, is exactly what one run over the whole storm raises (same
/// transitions, same event times, same rules, none late), and no point is silent on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_down_through_part_of_a_storm_raises_what_a_run_that_never_stopped_raises() {
    let d = district();
    // The sensor whose last readings arrive as the stage reads is the only one its worker
    // reads (of two workers, partition p goes to worker p mod 2), so nothing else of that
    // worker's holds its watermark back while they arrive.
    let arriving_sensor = "WL-UP-01";
    let worker_of = |sensor: &str| partition_for(sensor.as_bytes(), 4) % 2;
    let others: Vec<&str> = ["WL-LP-01", "WL-UP-02", "WL-LP-02", "WL-LP-03", "WL-LP-04"]
        .into_iter()
        .filter(|s| worker_of(s) != worker_of(arriving_sensor))
        .take(2)
        .collect();
    assert_eq!(others.len(), 2, "two sensors read by the other worker");
    let mut readings = Vec::new();
    for (sensor, steps, every_ms) in [
        (arriving_sensor, 30, 30_000),
        (others[0], 20, 45_000),
        (others[1], 40, 20_000),
    ] {
        readings.extend(depth_series(&d, sensor, T0, every_ms, &up_and_down(steps)));
    }
    let (end_ms, points, expected) = in_event_time_with_reference(&d, &mut readings).await;
    assert!(
        expected.values().all(|ts| ts.len() >= 8),
        "each point rises through every level and falls back: {expected:#?}"
    );

    let (bus, topics, mut watch) = watched_bus("gap").await;
    let cut_ms = T0 + 900_000;
    let mut seen = Vec::new();
    let upto = |seen: &[AlertTransition], until_ms: i64| {
        let want: usize = expected
            .values()
            .map(|ts| ts.iter().filter(|t| t.3 < until_ms).count())
            .sum();
        seen.iter()
            .filter(|t| points.contains(&t.point) && t.event_ms < until_ms)
            .count()
            >= want
    };

    // The first half reaches the bus, and the stage reads it: its clock a budget past the
    // cut, so the watermark passes every reading before it.
    let clock = ManualClock::new(cut_ms + 5_000);
    let first_half: Vec<Reading> = readings
        .iter()
        .filter(|r| r.ts_ms < cut_ms)
        .cloned()
        .collect();
    put(&bus, &topics, &first_half).await.unwrap();
    let first = live(&bus, &topics, &clock, true).await;
    collect_until(&mut watch, &mut seen, |s| upto(s, cut_ms)).await;
    read_to_the_end(&bus, &topics).await;
    stop_and_join(first).await;

    // Most of the second half reaches the bus while the stage is down; it starts again 15
    // minutes on, and the rest arrives as it reads (after it looked where the partitions end).
    let arrive_ms = end_ms - 120_000;
    let while_down: Vec<Reading> = readings
        .iter()
        .filter(|r| r.ts_ms >= cut_ms && r.ts_ms < arrive_ms)
        .cloned()
        .collect();
    put(&bus, &topics, &while_down).await.unwrap();
    let arriving: Vec<Reading> = readings
        .iter()
        .filter(|r| r.ts_ms >= arrive_ms)
        .cloned()
        .collect();
    assert!(
        arriving
            .iter()
            .filter(|r| &*r.sensor == arriving_sensor)
            .count()
            >= 4,
        "readings of {arriving_sensor} arrive as the stage reads: {arriving:?}"
    );
    clock.set(end_ms + 30_000);
    let (second, _) = live_with(&bus, &topics, &clock, true, None, arriving).await;
    collect_until(&mut watch, &mut seen, |s| upto(s, end_ms + 1)).await;
    stop_and_join(second).await;
    // Anything more it wrote (a repeat would be) is read too.
    read_the_rest(&mut watch, &mut seen).await;
    assert_eq!(of_points(&seen, &points), expected);
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

/// A backlog partition that gives the stage nothing (a bus that stopped serving it) is given up
/// after `BACKLOG_STALL` (10 s), rather than hold back the whole stage for ever: the watermark
/// follows the clock again, the other partitions' readings are judged (in event time, as the
/// backlog they were), and the point whose readings never came goes silent as the clock
/// moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_partition_that_gives_nothing_is_given_up_and_the_clock_judges_silence() {
    let d = district();
    let (bus, topics, mut watch) = watched_bus("stall").await;
    let stuck_sensor = "WL-LP-02";
    let stuck = partition_for(stuck_sensor.as_bytes(), 4);
    let moving_sensor = ["WL-UP-02", "WL-LP-01", "WL-LP-03", "WL-LP-04"]
        .into_iter()
        .find(|s| partition_for(s.as_bytes(), 4) != stuck)
        .expect("a sensor in another partition");
    let point_of = |sensor: &str| d.sensor(sensor).unwrap().point.id.to_string();
    let (stuck_point, moving_point) = (point_of(stuck_sensor), point_of(moving_sensor));
    let rise: Vec<f64> = (0..20).map(|i| i as f64 * 2.0).collect();
    let mut readings = depth_series(&d, stuck_sensor, T0, 30_000, &rise);
    readings.extend(depth_series(&d, moving_sensor, T0, 30_000, &rise));
    put(&bus, &topics, &readings).await.unwrap();
    let mut seen = Vec::new();

    let clock = ManualClock::new(T0 + 900_000);
    let (stage, _) = live_with(&bus, &topics, &clock, false, Some((stuck, 0)), Vec::new()).await;
    collect_until(&mut watch, &mut seen, |s| {
        s.iter()
            .any(|t| t.point == moving_point && t.to == Level::Red)
    })
    .await;
    clock.set(T0 + 900_000 + 3_600_000);
    collect_until(&mut watch, &mut seen, |s| {
        s.iter()
            .any(|t| t.point == stuck_point && t.transition == TransitionKind::Silent)
    })
    .await;
    stop_and_join(stage).await;
    let moving: Vec<&AlertTransition> = seen.iter().filter(|t| t.point == moving_point).collect();
    assert!(
        moving.iter().all(|t| !t.late),
        "the partition that gave its backlog was read in event time: {moving:#?}"
    );
}

/// A stage stopped part way through its backlog, one worker's partition read further on than
/// another's (the bus withholds the rest of the slow one's): it finishes at the time the
/// slowest worker had reached. What lies before it is applied and committed; the point whose
/// readings wait unread in the slow worker's partition is not judged silent at the stop (the
/// readings read further on carried it past its moment of silence: a Silent at the stop, and
/// Recovered after the restart); nothing past that time is committed, and the restart,
/// reading what was left, raises exactly what a run that never stopped raises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_stopped_part_way_through_its_backlog_judges_no_point_silent_for_readings_it_had_not_read(
) {
    let d = district();
    // Partition p is read by worker p mod 2; a point's rules run on `owner`'s worker. The slow
    // sensor's point must share its rules with the fast one's, whose readings move them on.
    let worker_of = |sensor: &str| partition_for(sensor.as_bytes(), 4) % 2;
    let point_of = |sensor: &str| d.sensor(sensor).unwrap().point.id.to_string();
    let rules_of = |sensor: &str| floodcmd_stream::dataflow::owner(&point_of(sensor), 2);
    let slow_sensor = "WL-LP-02";
    let fast_sensor = [
        "WL-UP-01", "WL-UP-02", "WL-UP-03", "WL-UP-04", "WL-LP-01", "WL-LP-03", "WL-LP-04",
    ]
    .into_iter()
    .find(|s| worker_of(s) != worker_of(slow_sensor) && rules_of(s) == rules_of(slow_sensor))
    .expect("a sensor the other worker reads, of a point whose rules run beside the slow one's");
    let slow_point = point_of(slow_sensor);
    // Both points fill for 20 minutes, a reading every 30 s: wet, so a sensor is silent after
    // three missed minutes (storm cadence), far less than the backlog's span.
    let rise: Vec<f64> = (0..40).map(|i| i as f64).collect();
    let mut readings = depth_series(&d, slow_sensor, T0, 30_000, &rise);
    readings.extend(depth_series(&d, fast_sensor, T0, 30_000, &rise));
    let (end_ms, points, expected) = in_event_time_with_reference(&d, &mut readings).await;
    assert!(
        expected
            .values()
            .all(|ts| ts.iter().any(|t| t.0 == TransitionKind::Raised)),
        "both points raise: {expected:#?}"
    );

    // The first five minutes, read to the end by a first stage.
    let (bus, topics, mut watch) = watched_bus("stopped").await;
    let cut_ms = T0 + 300_000;
    let clock = ManualClock::new(cut_ms + 5_000);
    let (first_part, rest): (Vec<Reading>, Vec<Reading>) =
        readings.iter().cloned().partition(|r| r.ts_ms < cut_ms);
    put(&bus, &topics, &first_part).await.unwrap();
    let first = live(&bus, &topics, &clock, true).await;
    read_to_the_end(&bus, &topics).await;
    stop_and_join(first).await;

    // The other fifteen reach the bus while it is down. The second stage rebuilds from the
    // first five and reads the fast sensor's whole backlog, and five minutes of the slow one's:
    // the bus withholds the rest.
    let (slow_partition, fast_partition) = (
        partition_for(slow_sensor.as_bytes(), 4) as usize,
        partition_for(fast_sensor.as_bytes(), 4) as usize,
    );
    let first_commits = bus.committed("stream", &topics.readings()).await.unwrap();
    let slow_committed =
        first_commits[slow_partition].expect("the first stage committed the slow partition");
    let slow_read = 10;
    put(&bus, &topics, &rest).await.unwrap();
    let fast_backlog = rest.iter().filter(|r| &*r.sensor == fast_sensor).count();
    clock.set(end_ms + 30_000);
    let (second, handed_out) = live_with(
        &bus,
        &topics,
        &clock,
        true,
        Some((slow_partition as u32, slow_committed + slow_read)),
        Vec::new(),
    )
    .await;
    // Every replayed record and all that is not withheld handed out, and fed on (well before
    // `BACKLOG_STALL` would give the slow partition up).
    let deadline = Instant::now() + Duration::from_secs(5);
    while handed_out.load(Ordering::SeqCst) < first_part.len() + fast_backlog + slow_read as usize {
        assert!(
            Instant::now() < deadline,
            "timed out: {} records handed out",
            handed_out.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And both workers' readings applied and committed up to where the slow one reached.
    loop {
        let c = bus.committed("stream", &topics.readings()).await.unwrap();
        if c[slow_partition] > Some(slow_committed)
            && c[fast_partition] > first_commits[fast_partition]
        {
            break;
        }
        assert!(Instant::now() < deadline, "timed out: commits {c:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_and_join(second).await;
    let mut seen = Vec::new();
    read_the_rest(&mut watch, &mut seen).await;
    assert!(
        seen.iter().all(|t| t.transition != TransitionKind::Silent),
        "{slow_point}'s readings waited unread: not silent at the stop: {seen:#?}"
    );
    // Up to where the slow worker had reached: on in both partitions, short of the fast one's
    // end, and never past what the slow one read.
    let ends = bus.end_offsets(&topics.readings()).await.unwrap();
    let committed = bus.committed("stream", &topics.readings()).await.unwrap();
    let (slow_now, fast_now) = (
        committed[slow_partition].unwrap(),
        committed[fast_partition].unwrap(),
    );
    assert!(
        slow_now > slow_committed && slow_now <= slow_committed + slow_read,
        "the slow partition: {slow_committed} → {slow_now}"
    );
    assert!(
        fast_now > first_commits[fast_partition].unwrap() && fast_now < ends[fast_partition],
        "the fast partition: {:?} → {fast_now}, of {}",
        first_commits[fast_partition],
        ends[fast_partition]
    );
    assert!(
        seen.iter().any(|t| t.event_ms >= cut_ms),
        "what lay before the slowest worker's time was applied: {seen:#?}"
    );

    // The restart reads everything that was left.
    let third = live(&bus, &topics, &clock, true).await;
    read_to_the_end(&bus, &topics).await;
    collect_until(&mut watch, &mut seen, |s| {
        of_points(s, &points).values().map(Vec::len).sum::<usize>()
            >= expected.values().map(Vec::len).sum::<usize>()
    })
    .await;
    stop_and_join(third).await;
    // Anything more it wrote (a repeat would be) is read too.
    read_the_rest(&mut watch, &mut seen).await;
    assert_eq!(of_points(&seen, &points), expected);
    assert!(
        seen.iter().all(|t| !t.late),
        "a backlog is read in event time: {seen:#?}"
    );
}
