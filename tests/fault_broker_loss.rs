//! Broker loss (issue #10, fault test 1): a three-broker Kafka (`scripts/kafka.sh start 3`,
//! topics at replication 3 with `min.insync.replicas=2`) under a steady storm posted over
//! HTTP to `floodcmd ingest`, with `floodcmd stream` reading it. Mid-storm one broker is
//! killed with SIGKILL (`scripts/kafka.sh kill N`), kept down ten seconds and started again
//! (`scripts/kafka.sh start-node N`). The broker killed is the leader of the readings topic's
//! partition 0: its partitions must elect new leaders while the gateway is writing to them and
//! the stream stage is reading and committing, which is the case that can lose or double
//! records (killing a follower only shrinks the ISR).
//!
//! Asserted: every reading the gateway accepted is on the readings topic exactly once
//! (compared by sensor and sequence number; the feeder sends refused readings again, as a
//! device does), and the alert transitions on the alerts topic equal those of an undisturbed
//! run of the same readings, each once. Reported: time the broker was down, readings
//! sent / accepted / on the topic, transitions expected / emitted, time until the restarted
//! broker was back in every ISR.
//!
//! Needs `FLOODCMD_KAFKA_CLUSTER` (three brokers); `scripts/test.sh` runs it in its
//! three-broker phase.

mod faults;

use faults::*;
use floodcmd::stages;
use floodcmd_bus::{KafkaBus, KafkaConfig};
use floodcmd_model::settings::{BusKind, BusSettings};
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn kafka_sh(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
    let out = Command::new(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("scripts/kafka.sh {args:?}: {e}"));
    assert!(
        out.status.success(),
        "scripts/kafka.sh {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts the killed broker again however the test ends, so the cluster is whole for what
/// runs after.
struct Revive(Option<String>);

impl Drop for Revive {
    fn drop(&mut self) {
        if let Some(node) = self.0.take() {
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
            let _ = Command::new(script).args(["start-node", &node]).output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_broker_cluster_loses_a_broker_mid_storm_and_loses_nothing() {
    let bootstrap = env("FLOODCMD_KAFKA_CLUSTER");
    assert_eq!(bootstrap.split(',').count(), 3, "{bootstrap}");
    let district = Arc::new(District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    let prefix = unique("brokerloss");
    let topics = Topics::new(prefix.clone());
    let bus_settings = BusSettings {
        kind: BusKind::Kafka,
        bootstrap: bootstrap.clone(),
        prefix: prefix.clone(),
        partitions: 4,
        replication: 3,
        min_insync_replicas: 2,
        ..BusSettings::default()
    };
    let bus = stages::connect_bus(&bus_settings, None, &topics)
        .await
        .unwrap()
        .bus;
    let mut cfg = KafkaConfig::new(bootstrap.clone());
    cfg.replication = 3;
    let admin = KafkaBus::new(cfg).unwrap();

    // The topics as the stages create them: three replicas, two must hold a write.
    let layout = admin.describe_topic(&topics.readings()).await.unwrap();
    assert_eq!(layout.min_insync_replicas, Some(2), "{layout:?}");
    assert_eq!(layout.partitions.len(), 4, "{layout:?}");
    for p in &layout.partitions {
        assert_eq!(p.replicas.len(), 3, "{layout:?}");
        assert_eq!(p.isr.len(), 3, "{layout:?}");
    }
    let victim = layout.partitions[0].leader;
    assert!(victim > 0, "partition 0 has a leader: {layout:?}");
    let led = layout
        .partitions
        .iter()
        .filter(|p| p.leader == victim)
        .count();

    let port = free_port();
    let settings = settings_file(
        &prefix,
        "stages",
        None,
        &bootstrap,
        3,
        &format!("[ingest]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let _stream = spawn_stage("stream", &settings, "stream stage running");
    let ingest = spawn_stage("ingest", &settings, "ingest gateway:");
    let url = format!("http://{}/v1/readings", ingest.addr("ingest gateway:"));

    // 24 points, 200 steps: 4,800 readings posted over 50 s by 4 devices, long enough for
    // the broker to come back while the storm still blows (start-node takes 5-30 s here).
    // Event time runs 1 s a step from 150 s ago: the lag shrinks by 0.75 s a step, to under
    // a second at the end, so no reading is stamped in the future (see `STORM_LAG_MS`).
    const STEPS: usize = 200;
    let origin = SystemClock.now_ms() - STORM_LAG_MS;
    let storm = Arc::new(storm(&district, 24, STEPS, origin, 1_000));
    let points = storm_points(&storm);
    let stats = Arc::new(Mutex::new(FeedStats::default()));
    let feeding = tokio::spawn(feed(
        url,
        storm.clone(),
        4,
        Duration::from_millis(250),
        stats.clone(),
    ));

    // 7.5 s in, the broker goes; ten seconds later it is started again.
    tokio::time::sleep(Duration::from_millis(7_500)).await;
    let node = victim.to_string();
    let mut revive = Revive(Some(node.clone()));
    let at_kill = stats.lock().unwrap().accepted;
    let killed = Instant::now();
    tokio::task::spawn_blocking({
        let node = node.clone();
        move || kafka_sh(&["kill", &node])
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restarting = Instant::now();
    let during_outage = stats.lock().unwrap().accepted - at_kill;
    tokio::task::spawn_blocking({
        let node = node.clone();
        move || kafka_sh(&["start-node", &node])
    })
    .await
    .unwrap();
    revive.0 = None;
    let down = killed.elapsed();
    let start_node = restarting.elapsed();
    let back_mid_storm = !feeding.is_finished();
    let at_back = stats.lock().unwrap().accepted;

    feeding.await.unwrap();
    let fed = stats.lock().unwrap().clone();

    // The restarted broker catches up and is back in every ISR.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let l = admin.describe_topic(&topics.readings()).await.unwrap();
        if l.partitions.iter().all(|p| p.isr.contains(&victim)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "broker {victim} not back in the ISR 90 s after the storm: {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let isr_back = restarting.elapsed();

    // Every accepted reading on the readings topic, once.
    let want = storm_keys(&storm);
    assert_eq!(fed.accepted, want.len(), "the feeder got every reading in");
    let on_topic = by_sensor_seq(
        &read_until(
            &*bus,
            &topics.readings(),
            Duration::from_secs(60),
            Duration::from_secs(3),
            |r| r.len() >= want.len(),
        )
        .await,
    );
    let missing: Vec<_> = want.iter().filter(|k| !on_topic.contains_key(*k)).collect();
    let doubled: Vec<_> = on_topic.iter().filter(|(_, n)| **n > 1).collect();
    let stray: Vec<_> = on_topic.keys().filter(|k| !want.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "accepted but not on the topic: {missing:?}"
    );
    assert!(
        doubled.is_empty(),
        "on the topic more than once: {doubled:?}"
    );
    assert!(stray.is_empty(), "on the topic but never sent: {stray:?}");
    let on_topic_total: usize = on_topic.values().sum();
    // The stream stage read and finished every one (it commits only after their effects).
    let consumed =
        wait_committed(&*bus, "stream", &topics.readings(), Duration::from_secs(60)).await;
    assert_eq!(
        consumed, on_topic_total as u64,
        "the stream stage read them all"
    );

    // The transitions the storm causes, each once, as in an undisturbed run.
    let readings: Vec<_> = storm.iter().flatten().cloned().collect();
    let expected = undisturbed(district.clone(), &readings, origin, &points).await;
    assert!(
        expected.len() >= points.len(),
        "the storm raises every point: {expected:?}"
    );
    assert!(
        expected
            .iter()
            .any(|s| s.1 == floodcmd_model::event::TransitionKind::Cleared),
        "and clears some"
    );
    let got = transitions(
        &*bus,
        &topics.alerts(),
        &points,
        expected.len(),
        Duration::from_secs(90),
    )
    .await;
    assert_same_transitions(&got, &expected, "broker loss");

    let after_back = fed.accepted - at_back;
    eprintln!(
        "fault_broker_loss: killed broker {victim} (leader of {led} of 4 readings partitions) \
         7.5 s into a {STEPS}-step storm; down {:.1} s (kill until start-node returned, which \
         took {:.1} s); back {} ({after_back} readings accepted after it returned); in every readings \
         ISR {:.1} s after start-node began. Readings: {} sent, {} accepted ({during_outage} \
         in the 10 s before start-node; the longest time the gateway accepted nothing: {:.1} s), \
         {on_topic_total} on the topic (0 missing, 0 twice), {consumed} read and committed by \
         the stream stage; {} posts, {} refused (429/503), {} unanswered. Transitions: {} \
         expected, {} emitted, 0 twice.",
        down.as_secs_f64(),
        start_node.as_secs_f64(),
        if back_mid_storm {
            "mid-storm"
        } else {
            "after the storm"
        },
        isr_back.as_secs_f64(),
        fed.sent,
        fed.accepted,
        fed.longest_gap.as_secs_f64(),
        fed.posts,
        fed.refused,
        fed.unanswered,
        expected.len(),
        got.len(),
    );
}
