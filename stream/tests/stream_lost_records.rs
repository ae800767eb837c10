//! Records the bus deleted before the stage read them (Kafka's retention, or `DeleteRecords`):
//! they are counted and named as lost, the stage goes on with what is left exactly as a run over
//! only those readings would, and a bounded run whose every remaining record was deleted still
//! finishes instead of waiting for ever for records that no longer exist. On the embedded bus
//! and on a real broker (`FLOODCMD_KAFKA`, started by `scripts/test.sh`).

mod common;

use common::{by_point, depth_series, district, run_with, up_and_down, HookedBus, T0};
use floodcmd_bus::{EmbeddedBus, KafkaBus, KafkaConfig};
use floodcmd_model::bus::{partition_for, Assignment, Bus, Record};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::AlertTransition;
use floodcmd_model::time::{Clock, ManualClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::Reading;
use floodcmd_stream::{run_stream, StreamConfig, Watermark};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PARTITIONS: u32 = 4;

/// The lost-records counter is the process's: one scenario at a time (no other test in this
/// file runs a stage, so the counter moves only for the scenario holding this).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Up to 90 cm and back down, one reading every 15 s.
fn rise_and_fall(sensor: &str) -> Vec<Reading> {
    depth_series(&district(), sensor, T0, 15_000, &up_and_down(30))
}

/// The counter as Prometheus reads it at `/metrics`.
fn lost_total() -> u64 {
    let from_registry = prometheus::default_registry()
        .gather()
        .iter()
        .find(|f| f.name() == "floodcmd_stream_readings_lost_total")
        .map_or(0, |f| f.get_metric()[0].get_counter().get_value() as u64);
    assert_eq!(from_registry, floodcmd_stream::readings_lost_total());
    from_registry
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Create the topics, put `readings` on the readings topic (stamped now on the bus: the stage
/// reads event time from the reading itself, and a broker's own retention would delete records
/// stamped with the tests' July 2026), and commit `commits` (partition, next offset) for the
/// stage's group, as a run that read that far and stopped.
async fn readings_read_up_to(
    bus: &dyn Bus,
    topics: &Topics,
    readings: &[Reading],
    commits: &[(u32, u64)],
) {
    for t in topics.all() {
        bus.ensure_topic(&t, PARTITIONS).await.unwrap();
    }
    let producer = bus.producer();
    for r in readings {
        producer
            .send(&topics.readings(), r.sensor.as_bytes(), encode(r), now_ms())
            .await
            .unwrap();
    }
    let mut c = bus
        .consumer("stream", &topics.readings(), Assignment::All)
        .await
        .unwrap();
    for &(p, next) in commits {
        c.commit(p, next).await.unwrap();
    }
    drop(c);
    // A Kafka commit lands asynchronously.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let committed = bus.committed("stream", &topics.readings()).await.unwrap();
        if commits
            .iter()
            .all(|&(p, next)| committed[p as usize] == Some(next))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "commits not seen: {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of `topic` up to its end offsets as they are now.
async fn read_to_end(bus: &dyn Bus, topic: &str) -> Vec<Record> {
    let ends = bus.end_offsets(topic).await.unwrap();
    let mut c = bus
        .consumer(&format!("check-{}", now_ms()), topic, Assignment::All)
        .await
        .unwrap();
    let mut next: Vec<u64> = bus.start_offsets(topic).await.unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while next.iter().zip(&ends).any(|(n, e)| n < e) {
        assert!(
            std::time::Instant::now() < deadline,
            "{topic} not read to its end"
        );
        for r in c.poll(10_000, Duration::from_millis(200)).await.unwrap() {
            next[r.partition as usize] = r.offset + 1;
            out.push(r);
        }
    }
    out
}

/// Two sensors in partitions of their own. The group had read the first 10 readings of the one
/// and 5 of the other, then fell behind the retention: `delete` takes 10..25 of the first away
/// and all 60 of the second. The stage, run bounded, must end, count 70 lost, commit past them,
/// and judge what is left as a run over only those readings does.
async fn fell_behind_the_retention<B, D, F>(bus: B, topics: Topics, delete: D)
where
    B: Bus + Clone,
    D: Fn(String, u32, u64) -> F,
    F: Future<Output = ()>,
{
    let d = district();
    let candidates = ["WL-UP-01", "WL-LP-01", "WL-LP-02", "WL-UP-02", "WL-UP-03"];
    let gap_sensor = candidates[0];
    let partition = |s: &str| partition_for(s.as_bytes(), PARTITIONS);
    let gone_sensor = *candidates
        .iter()
        .find(|s| partition(s) != partition(gap_sensor))
        .expect("two of the sample's sensors in different partitions");
    let (gap_p, gone_p) = (partition(gap_sensor), partition(gone_sensor));
    let (gap_readings, gone_readings) = (rise_and_fall(gap_sensor), rise_and_fall(gone_sensor));

    let all: Vec<Reading> = gap_readings.iter().chain(&gone_readings).cloned().collect();
    readings_read_up_to(&bus, &topics, &all, &[(gap_p, 10), (gone_p, 5)]).await;
    delete(topics.readings(), gap_p, 25).await;
    delete(topics.readings(), gone_p, 60).await;
    let starts = bus.start_offsets(&topics.readings()).await.unwrap();
    assert_eq!((starts[gap_p as usize], starts[gone_p as usize]), (25, 60));

    let lost_before = lost_total();
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(T0));
    let handle = run_stream(
        Arc::new(bus.clone()),
        d.clone(),
        clock,
        StreamConfig {
            workers: 2,
            lateness_ms: 20_000,
            topics: topics.clone(),
            group: "stream".into(),
            watermark: Watermark::Bounded { origin_ms: T0 },
            rebuild_ms: None,
        },
    )
    .await
    .unwrap();
    // Joined on a thread of its own, so a stage that never ends fails the test rather than
    // holding the runtime's shutdown.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(handle.join());
    });
    tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the bounded run ends although the records it was to read up to are gone")
        .unwrap();

    assert_eq!(
        lost_total() - lost_before,
        15 + 55,
        "records 10..25 of one partition and 5..60 of the other are lost"
    );
    let committed = bus.committed("stream", &topics.readings()).await.unwrap();
    assert_eq!(committed[gap_p as usize], Some(60));
    assert_eq!(
        committed[gone_p as usize],
        Some(60),
        "committed past what is gone, as the consumer moved past it"
    );

    let alerts: Vec<AlertTransition> = read_to_end(&bus, &topics.alerts())
        .await
        .iter()
        .map(|r| decode(&r.payload).unwrap())
        .collect();
    let (expected, _) = run_with(d.clone(), &gap_readings[25..], 2, 20_000).await;
    let point = &d.sensor(gap_sensor).unwrap().point.id;
    assert!(
        expected.iter().any(|a| &a.point == point),
        "the surviving readings raise something to compare"
    );
    assert_eq!(by_point(&alerts), by_point(&expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_embedded_bus() {
    let _one = ONE_AT_A_TIME.lock().await;
    let bus = EmbeddedBus::new(1 << 16);
    let deleting = bus.clone();
    fell_behind_the_retention(bus, Topics::new("lost"), |topic, p, before| {
        deleting.delete_records(&topic, p, before).unwrap();
        std::future::ready(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_real_broker() {
    let _one = ONE_AT_A_TIME.lock().await;
    let bootstrap = std::env::var("FLOODCMD_KAFKA").expect(
        "FLOODCMD_KAFKA is not set: this test needs a real broker. Run the README's test command \
         (scripts/test.sh), or start one with scripts/kafka.sh start and export FLOODCMD_KAFKA=127.0.0.1:19092",
    );
    let bus = KafkaBus::new(KafkaConfig::new(bootstrap)).unwrap();
    let deleting = bus.clone();
    fell_behind_the_retention(
        bus,
        Topics::new(format!("test.lost.{}", now_ms())),
        move |topic, p, before| {
            let bus = deleting.clone();
            async move { bus.delete_records(&topic, p, before).await.unwrap() }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_the_gap_is_counted_at_the_first_record_after_it_and_reading_goes_on() {
    let _one = ONE_AT_A_TIME.lock().await;
    let d = district();
    let sensor = "WL-UP-01";
    let p = partition_for(sensor.as_bytes(), PARTITIONS);
    let bus = EmbeddedBus::new(1 << 16);
    let topics = Topics::new("lost-live");
    readings_read_up_to(&bus, &topics, &rise_and_fall(sensor), &[(p, 10)]).await;
    bus.delete_records(&topics.readings(), p, 25).unwrap();

    let lost_before = lost_total();
    // Every reading is older than the clock's watermark: read as the backlog it is, judged
    // and committed as the watermark passes it, and all of it once it is read.
    let clock = ManualClock::new(T0 + 3_600_000);
    let c: Arc<dyn Clock> = Arc::new(clock);
    let handle = run_stream(
        Arc::new(bus.clone()),
        d,
        c.clone(),
        StreamConfig {
            workers: 2,
            lateness_ms: 20_000,
            topics: topics.clone(),
            group: "stream".into(),
            watermark: Watermark::Clock(c),
            rebuild_ms: None,
        },
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let committed = bus.committed("stream", &topics.readings()).await.unwrap();
        if committed[p as usize] == Some(60) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the live stage did not read past the gap: {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lost_total() - lost_before, 15, "records 10..25 are lost");
    assert!(!handle.is_finished(), "a live stage goes on after a gap");
    handle.stop();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
}

/// The embedded bus, but the readings' oldest records of `partition` before `before` are
/// deleted at the moment the stage asks for the consumer that reads it: after it looked up
/// where its rebuild starts, before it read a record (the race a restart near Kafka's
/// retention runs).
fn deleted_while_rebuilding(
    inner: &EmbeddedBus,
    topic: String,
    partition: u32,
    before: u64,
) -> HookedBus {
    let deleting = inner.clone();
    HookedBus::new(inner.clone()).before_consumer(move |group, t, assignment| {
        // Only under the worker that reads the partition, after its own rebuild lookup: under
        // the other, the lookup could come after the deletion and find no history to rebuild.
        let reads_it = match assignment {
            Assignment::Positions(v) => v.iter().any(|(q, _)| *q == partition),
            Assignment::GroupPositions(v) => v.iter().any(|(q, _)| *q == partition),
            _ => false,
        };
        if t == topic && group == "stream" && reads_it {
            deleting.delete_records(t, partition, before)?;
        }
        Ok(())
    })
}

/// A restarted stage re-reads history before its committed offset (30) to rebuild its
/// windows; the bus deletes offsets 0..35 between the rebuild's lookup and its first read.
/// The 30 it had processed before the restart are not lost; the 5 past the commit are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_history_deleted_under_a_restart_is_not_counted_lost_only_what_follows_the_commit()
{
    let _one = ONE_AT_A_TIME.lock().await;
    let d = district();
    let sensor = "WL-UP-01";
    let p = partition_for(sensor.as_bytes(), PARTITIONS);
    let inner = EmbeddedBus::new(1 << 16);
    let topics = Topics::new("lost-rebuild");
    let readings = rise_and_fall(sensor);
    readings_read_up_to(&inner, &topics, &readings, &[(p, 30)]).await;
    let bus = deleted_while_rebuilding(&inner, topics.readings(), p, 35);

    let lost_before = lost_total();
    let clock = ManualClock::new(T0 + 3_600_000);
    let c: Arc<dyn Clock> = Arc::new(clock);
    let handle = run_stream(
        Arc::new(bus),
        d,
        c.clone(),
        StreamConfig {
            workers: 2,
            lateness_ms: 20_000,
            topics: topics.clone(),
            group: "stream".into(),
            watermark: Watermark::Clock(c),
            // Reaches back before every record on the bus (stamped now, the clock is July).
            rebuild_ms: Some(3_600_000),
        },
    )
    .await
    .unwrap();
    let end = readings.len() as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let committed = inner.committed("stream", &topics.readings()).await.unwrap();
        if committed[p as usize] == Some(end) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted stage did not read to the end: {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        inner.start_offsets(&topics.readings()).await.unwrap()[p as usize],
        35,
        "the deletion happened under the stage"
    );
    assert_eq!(
        lost_total() - lost_before,
        5,
        "only offsets 30..35, past the commit, are lost"
    );
    handle.stop();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .unwrap()
        .unwrap();
}
