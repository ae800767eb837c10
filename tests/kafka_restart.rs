//! Kill the stream stage mid-storm (SIGKILL, as a power cut would) and start it again against
//! real Kafka: it rebuilds its state from the readings before its committed offsets, resumes
//! at those offsets, and the alert transitions on the bus equal those of an undisturbed run
//! of the same readings: nothing missing, nothing twice.

mod faults;

use faults::{assert_same_transitions, seen, undisturbed, Seen};
use floodcmd::stages;
use floodcmd_model::bus::{Assignment, Bus};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{AlertTransition, PointStatus, TransitionKind};
use floodcmd_model::settings::{BusKind, BusSettings};
use floodcmd_model::time::{Clock, Millis, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Reading};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POINTS: [&str; 6] = ["UP-01", "UP-02", "UP-03", "UP-04", "LP-01", "LP-02"];

fn kafka() -> String {
    std::env::var("FLOODCMD_KAFKA")
        .expect("FLOODCMD_KAFKA is not set: run the README's test command, scripts/test.sh")
}

fn storm(d: &District, start: Millis) -> (Vec<Reading>, Vec<Reading>) {
    let mut rise = Vec::new();
    let mut fall = Vec::new();
    for p in POINTS {
        let sensor = &d.point(p).unwrap().sensors[0];
        let raw = |cm: f64| cm - sensor.calibration_offset_cm;
        let r = |ts: Millis, cm: f64| Reading {
            sensor: sensor.id.as_str().into(),
            point: (*p).into(),
            kind: sensor.kind,
            ts_ms: ts,
            value: raw(cm),
            seq: None,
            received_ms: ts,
        };
        for i in 0..30i64 {
            rise.push(r(start + i * 3_000, i as f64 * 1.4));
        }
        for i in 0..20i64 {
            fall.push(r(start + 90_000 + i * 3_000, 40.0 - i as f64 * 2.2));
        }
    }
    (rise, fall)
}

/// A stage process that is killed when the test ends, however it ends.
struct Stage(Child);

impl Stage {
    fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL: no shutdown path runs
        let _ = self.0.wait();
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_stream(settings: &std::path::Path) -> Stage {
    let mut child = Command::new(env!("CARGO_BIN_EXE_floodcmd"))
        .arg("stream")
        .arg("--config")
        .arg(settings)
        .env("FLOODCMD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("the stage says it runs").unwrap();
    assert!(line.starts_with("stream stage running"), "{line}");
    Stage(child)
}

async fn transitions_until(
    bus: &Arc<dyn Bus>,
    topic: &str,
    group: &str,
    done: impl Fn(&[AlertTransition]) -> bool,
) -> Vec<AlertTransition> {
    let mut c = bus.consumer(group, topic, Assignment::All).await.unwrap();
    let mut out: Vec<AlertTransition> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&out) {
        assert!(
            Instant::now() < deadline,
            "the stage did not produce the expected transitions in 60 s: {out:#?}"
        );
        out.extend(
            c.poll(1000, Duration::from_millis(300))
                .await
                .unwrap()
                .iter()
                .map(|r| decode::<AlertTransition>(&r.payload).unwrap()),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_stream_stage_resumes_without_losing_or_repeating_an_alert() {
    let district = Arc::new(District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    let start = SystemClock.now_ms() - 150_000;
    let (rise, mut fall) = storm(&district, start);
    // The fall reaches the bus as a storm's readings do, in time order across the points.
    fall.sort_by_key(|r| r.ts_ms);

    let prefix = format!("restart{}", std::process::id());
    let topics = Topics::new(prefix.clone());
    let bus_settings = BusSettings {
        kind: BusKind::Kafka,
        bootstrap: kafka(),
        prefix: prefix.clone(),
        partitions: 4,
        ..BusSettings::default()
    };
    let bus = stages::connect_bus(&bus_settings, None, &topics)
        .await
        .unwrap()
        .bus;
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let settings = dir.join("floodcmd.toml");
    // One record batch a partition a fetch (each reading was sent on its own), and little
    // fetched ahead: the restarted stage reads its history and its backlog over several
    // polls, as it would a long outage's, rather than all in the poll that ends its rebuild.
    std::fs::write(
        &settings,
        format!(
            "[district]\nfile = \"{}/config/xincheng.toml\"\n[bus]\nkind = \"kafka\"\nprefix = \"{prefix}\"\nbootstrap = \"{}\"\npartitions = 4\n[bus.kafka]\n\"max.partition.fetch.bytes\" = \"1\"\n\"queued.min.messages\" = \"1\"\n[stream]\nworkers = 2\nlateness_s = 5\nrebuild_h = 1\n",
            env!("CARGO_MANIFEST_DIR"),
            kafka()
        ),
    )
    .unwrap();

    // First life: the water rises to red everywhere.
    let mut first = spawn_stream(&settings);
    let producer = bus.producer();
    for r in &rise {
        producer
            .send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await
            .unwrap();
    }
    // Wait until everything the rise causes (per the reference) is on the bus.
    let points: HashSet<String> = POINTS.iter().map(|p| p.to_string()).collect();
    let first_part = undisturbed(district.clone(), &rise, start, &points)
        .await
        .len();
    assert!(first_part >= POINTS.len(), "the rise raises every point");
    let caught_up = move |ts: &[AlertTransition]| {
        ts.iter()
            .filter(|t| POINTS.contains(&t.point.as_str()))
            .count()
            >= first_part
    };
    transitions_until(&bus, &topics.alerts(), "watch-1", caught_up).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // let the offset commits reach the broker
    first.kill();

    // While it is down the water falls; then it comes back.
    for r in &fall {
        producer
            .send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await
            .unwrap();
    }
    let mut readings = rise.clone();
    readings.extend(fall.iter().cloned());
    let expected: Vec<Seen> = undisturbed(district, &readings, start, &points).await;
    let started = Instant::now();
    let mut second = spawn_stream(&settings);
    let whole = expected.len();
    let caught_up = move |ts: &[AlertTransition]| {
        ts.iter()
            .filter(|t| POINTS.contains(&t.point.as_str()))
            .count()
            >= whole
    };
    let all = transitions_until(&bus, &topics.alerts(), "watch-2", caught_up).await;
    eprintln!(
        "recovered and caught up {:.1} s after the restart",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Kafka records the transitions came in: the stage's bus packs them too.
    let mut alert_records: HashSet<(u32, u64)> = HashSet::new();
    let all: Vec<AlertTransition> = {
        let mut c = bus
            .consumer("watch-3", &topics.alerts(), Assignment::All)
            .await
            .unwrap();
        let mut v = Vec::new();
        let settle = Instant::now() + Duration::from_secs(3);
        while Instant::now() < settle || v.len() < all.len() {
            for r in c.poll(1000, Duration::from_millis(300)).await.unwrap() {
                alert_records.insert((r.partition, r.offset));
                let t = decode::<AlertTransition>(&r.payload).expect("a transition, unpacked");
                assert_eq!(
                    r.key,
                    t.point.as_bytes(),
                    "each transition under its own point"
                );
                v.push(t);
            }
        }
        v
    };
    second.kill();
    // The district's sensors never heard from go silent together in the first epochs, some in
    // one partition: those at least share a pack.
    assert!(
        alert_records.len() < all.len(),
        "{} transitions in {} Kafka records: not packed",
        all.len(),
        alert_records.len()
    );

    // The fall reached the bus while the stage was down: the restarted stage reads it as the
    // backlog it is, in event time, so nothing it causes is late (to the clock's watermark it
    // is all older than the lateness budget).
    let late: Vec<&AlertTransition> = all
        .iter()
        .filter(|t| POINTS.contains(&t.point.as_str()) && t.event_ms >= start + 90_000 && t.late)
        .collect();
    assert!(
        late.is_empty(),
        "the backlog read as late after the restart: {late:#?}"
    );
    let got: Vec<Seen> = all
        .iter()
        .filter(|t| POINTS.contains(&t.point.as_str()))
        .map(seen)
        .collect();
    assert_same_transitions(&got, &expected, "the killed-and-restarted run");
    assert!(
        expected.iter().any(|s| s.1 == TransitionKind::Cleared),
        "the storm passes in the reference too"
    );

    // The stage's bus packs statuses (`floodcmd_bus::pack`): the topic holds fewer Kafka
    // records than the statuses a reader through the bus gets back, each one whole and under
    // its own point's key (their order per key is `bus_kafka`'s to test).
    let ends = bus.end_offsets(&topics.status()).await.unwrap();
    let records: u64 = ends.iter().sum();
    let mut c = bus
        .consumer("watch-status", &topics.status(), Assignment::All)
        .await
        .unwrap();
    let mut read_to = vec![0u64; ends.len()];
    let mut statuses: Vec<PointStatus> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read_to.iter().zip(&ends).any(|(at, end)| at < end) {
        assert!(
            Instant::now() < deadline,
            "status read to {read_to:?} of {ends:?}"
        );
        for r in c.poll(1000, Duration::from_millis(300)).await.unwrap() {
            read_to[r.partition as usize] = r.offset + 1;
            let s = decode::<PointStatus>(&r.payload).expect("a status, unpacked");
            assert_eq!(r.key, s.point.as_bytes(), "each status under its own point");
            statuses.push(s);
        }
    }
    assert!(
        (statuses.len() as u64) > records,
        "{} statuses in {records} Kafka records: not packed",
        statuses.len()
    );
    for p in POINTS {
        assert!(statuses.iter().any(|s| s.point == p), "{p} has statuses");
    }
}
