//! The stream stage as a two-process timely cluster on localhost, against real Kafka: two
//! `floodcmd stream` processes with one worker each split the readings' partitions and the
//! points between them, exchange readings by point over timely's own TCP connections, and
//! produce exactly the alert transitions one process produces from the same readings.

mod faults;

use faults::{assert_same_transitions, env, free_port, seen, undisturbed, Seen};
use floodcmd::stages;
use floodcmd_model::bus::{Assignment, Bus};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{AlertTransition, TransitionKind};
use floodcmd_model::settings::{BusKind, BusSettings};
use floodcmd_model::time::{Clock, Millis, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Level, Reading};
use floodcmd_stream::dataflow::owner;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POINTS: [&str; 6] = ["UP-01", "UP-02", "UP-03", "UP-04", "LP-01", "LP-02"];

fn kafka() -> String {
    env("FLOODCMD_KAFKA")
}

/// Water rises to red at every point, then falls away: (rise, fall).
fn storm(d: &District, start: Millis) -> (Vec<Reading>, Vec<Reading>) {
    let (mut rise, mut fall) = (Vec::new(), Vec::new());
    for p in POINTS {
        let sensor = &d.point(p).unwrap().sensors[0];
        let r = |ts: Millis, cm: f64| Reading {
            sensor: sensor.id.as_str().into(),
            point: (*p).into(),
            kind: sensor.kind,
            ts_ms: ts,
            value: cm - sensor.calibration_offset_cm,
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

fn spawn_stream(settings: &std::path::Path, process: usize) -> Stage {
    let mut child = Command::new(env!("CARGO_BIN_EXE_floodcmd"))
        .arg("stream")
        .arg("--config")
        .arg(settings)
        .env("FLOODCMD_STREAM_PROCESS", process.to_string())
        .env("FLOODCMD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Owned from here, so a failed check below still ends the process.
    let stage = Stage(child);
    let mut lines = BufReader::new(stdout).lines();
    // Timely's own "awaiting connections" can come before the stage's line: the processes
    // start looking for each other as the stage starts.
    let line = lines
        .by_ref()
        .take(10)
        .map(|l| l.expect("the stage's stdout"))
        .inspect(|l| eprintln!("stream process {process}: {l}"))
        .find(|l| l.starts_with("stream stage running"))
        .expect("the stage says it runs");
    assert!(
        line.contains(&format!("process {process} of a cluster of 2")),
        "{line}"
    );
    // Timely reports on stdout while the processes find each other ("awaiting connections"):
    // keep reading, or its next line hits a closed pipe and takes the process down.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("stream process {process}: {line}");
        }
    });
    stage
}

/// A cluster of two stream processes on Kafka under a fresh topic prefix.
struct Rig {
    bus: Arc<dyn Bus>,
    topics: Topics,
    settings: std::path::PathBuf,
}

impl Rig {
    async fn new(tag: &str) -> Rig {
        let prefix = format!("{tag}{}", std::process::id());
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
        std::fs::write(
            &settings,
            format!(
                "[district]\nfile = \"{}/config/xincheng.toml\"\n[bus]\nkind = \"kafka\"\nprefix = \"{prefix}\"\nbootstrap = \"{}\"\npartitions = 4\n[stream]\nworkers = 1\nlateness_s = 5\nrebuild_h = 1\ncluster = \"127.0.0.1:{},127.0.0.1:{}\"\n",
                env!("CARGO_MANIFEST_DIR"),
                kafka(),
                free_port(),
                free_port(),
            ),
        )
        .unwrap();
        Rig {
            bus,
            topics,
            settings,
        }
    }

    fn start(&self) -> (Stage, Stage) {
        (
            spawn_stream(&self.settings, 0),
            spawn_stream(&self.settings, 1),
        )
    }

    async fn send(&self, readings: &[Reading]) {
        let producer = self.bus.producer();
        for r in readings {
            producer
                .send(
                    &self.topics.readings(),
                    r.sensor.as_bytes(),
                    encode(r),
                    r.ts_ms,
                )
                .await
                .unwrap();
        }
    }

    /// Transitions of the test's points on the alerts topic (read by a fresh group) once there
    /// are at least `n`, and then for 3 s more, so a transition produced twice shows.
    async fn transitions(&self, group: &str, n: usize) -> Vec<Seen> {
        let mut c = self
            .bus
            .consumer(group, &self.topics.alerts(), Assignment::All)
            .await
            .unwrap();
        let mut got: Vec<Seen> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut settle: Option<Instant> = None;
        while settle.is_none_or(|s| Instant::now() < s) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not produce the expected {n} transitions in 90 s: {got:#?}"
            );
            got.extend(
                c.poll(1000, Duration::from_millis(300))
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| seen(&decode::<AlertTransition>(&r.payload).unwrap()))
                    .filter(|s| POINTS.contains(&s.0.as_str())),
            );
            if settle.is_none() && got.len() >= n {
                settle = Some(Instant::now() + Duration::from_secs(3));
            }
        }
        got
    }
}

/// The same readings through one process, undisturbed: the transitions of the test's points.
async fn reference(district: &Arc<District>, readings: &[Reading], start: Millis) -> Vec<Seen> {
    let points: HashSet<String> = POINTS.iter().map(|p| p.to_string()).collect();
    undisturbed(district.clone(), readings, start, &points).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_process_cluster_raises_what_one_process_raises() {
    let district = Arc::new(District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    let start = SystemClock.now_ms() - 150_000;
    let (mut readings, fall) = storm(&district, start);
    readings.extend(fall);
    let expected = reference(&district, &readings, start).await;
    assert!(
        expected.iter().any(|s| s.3 == Level::Red)
            && expected.iter().any(|s| s.1 == TransitionKind::Cleared),
        "the storm raises red and passes: {expected:#?}"
    );
    let owners: HashSet<usize> = POINTS.iter().map(|p| owner(p, 2)).collect();
    assert_eq!(owners.len(), 2, "each process owns some of the points");

    let rig = Rig::new("cluster").await;
    let _cluster = rig.start();
    rig.send(&readings).await;
    let got = rig.transitions("watch", expected.len()).await;
    assert_same_transitions(&got, &expected, "two processes");
}

/// The cluster is restarted as a whole (timely cannot lose a peer): both processes killed
/// with SIGKILL mid-storm, the water falls while they are down, both start again, rebuild
/// their windows and levels from the readings before their committed offsets, and the
/// alerts topic ends up exactly as one undisturbed process leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_restarts_without_losing_or_repeating_an_alert() {
    let district = Arc::new(District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    let start = SystemClock.now_ms() - 150_000;
    let (rise, fall) = storm(&district, start);
    let rig = Rig::new("clusterkill").await;

    let (mut a, mut b) = rig.start();
    rig.send(&rise).await;
    let first_part = reference(&district, &rise, start).await.len();
    assert!(first_part >= POINTS.len(), "the rise raises every point");
    rig.transitions("watch-1", first_part).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // let the offset commits reach the broker
    a.kill();
    b.kill();

    rig.send(&fall).await;
    let mut readings = rise.clone();
    readings.extend(fall.iter().cloned());
    let expected = reference(&district, &readings, start).await;
    let started = Instant::now();
    let _cluster = rig.start();
    let got = rig.transitions("watch-2", expected.len()).await;
    eprintln!(
        "the cluster recovered and caught up within {:.1} s of its restart",
        started.elapsed().as_secs_f64()
    );
    assert_same_transitions(&got, &expected, "two processes");
}
