//! The stream stage as a two-process timely cluster on localhost, against real Kafka: two
//! `floodcmd stream` processes with one worker each split the readings' partitions and the
//! points between them, exchange readings by point over timely's own TCP connections, and
//! produce exactly the alert transitions one process produces from the same readings.

use floodcmd::stages;
use floodcmd_bus::EmbeddedBus;
use floodcmd_model::bus::{Assignment, Bus};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::{AlertTransition, TransitionKind};
use floodcmd_model::settings::{BusKind, BusSettings};
use floodcmd_model::time::{Clock, ManualClock, Millis, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Level, Reading};
use floodcmd_stream::dataflow::owner;
use floodcmd_stream::{run_stream, StreamConfig, Watermark};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POINTS: [&str; 6] = ["UP-01", "UP-02", "UP-03", "UP-04", "LP-01", "LP-02"];

fn kafka() -> String {
    std::env::var("FLOODCMD_KAFKA")
        .expect("FLOODCMD_KAFKA is not set: run the README's test command, scripts/test.sh")
}

/// Water rises to red at every point, then falls away.
fn storm(d: &District, start: Millis) -> Vec<Reading> {
    let mut out = Vec::new();
    for p in POINTS {
        let sensor = &d.point(p).unwrap().sensors[0];
        let r = |ts: Millis, cm: f64| Reading {
            sensor: sensor.id.clone(),
            point: p.to_string(),
            kind: sensor.kind,
            ts_ms: ts,
            value: cm - sensor.calibration_offset_cm,
            seq: None,
            received_ms: ts,
        };
        for i in 0..30i64 {
            out.push(r(start + i * 3_000, i as f64 * 1.4));
        }
        for i in 0..20i64 {
            out.push(r(start + 90_000 + i * 3_000, 40.0 - i as f64 * 2.2));
        }
    }
    out
}

type Seen = (String, TransitionKind, Level, Level, Millis);

fn seen(t: &AlertTransition) -> Seen {
    (t.point.clone(), t.transition, t.from, t.to, t.event_ms)
}

fn per_point(v: &[Seen]) -> BTreeMap<String, Vec<Seen>> {
    let mut m: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    for s in v {
        m.entry(s.0.clone()).or_default().push(s.clone());
    }
    m
}

/// The same readings through one process (bounded mode, embedded bus): the reference.
async fn one_process(district: Arc<District>, readings: &[Reading], origin: Millis) -> Vec<Seen> {
    let bus = EmbeddedBus::new(1 << 16);
    let topics = Topics::new("ref");
    for t in topics.all() {
        bus.ensure_topic(&t, 4).await.unwrap();
    }
    let p = bus.producer();
    for r in readings {
        p.send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await
            .unwrap();
    }
    let config = StreamConfig {
        workers: 1,
        lateness_ms: 5_000,
        topics: topics.clone(),
        group: "stream".into(),
        watermark: Watermark::Bounded { origin_ms: origin },
        rebuild_ms: None,
    };
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(origin));
    let h = run_stream(Arc::new(bus.clone()), district, clock, config)
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || h.join())
        .await
        .unwrap()
        .unwrap();
    let mut c = bus
        .consumer("check", &topics.alerts(), Assignment::All)
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let b = c.poll(10_000, Duration::from_millis(100)).await.unwrap();
        if b.is_empty() {
            break;
        }
        out.extend(
            b.iter()
                .map(|r| seen(&decode::<AlertTransition>(&r.payload).unwrap())),
        );
    }
    out
}

/// A stage process that is killed when the test ends, however it ends.
struct Stage(Child);

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("the stage says it runs").unwrap();
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
    Stage(child)
}

/// A port nobody listens on now, for one process's timely endpoint.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_process_cluster_raises_what_one_process_raises() {
    let district = Arc::new(District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    let start = SystemClock.now_ms() - 150_000;
    let readings = storm(&district, start);
    let expected: Vec<Seen> = one_process(district.clone(), &readings, start)
        .await
        .into_iter()
        .filter(|s| POINTS.contains(&s.0.as_str()))
        .collect();
    assert!(
        expected.iter().any(|s| s.3 == Level::Red)
            && expected.iter().any(|s| s.1 == TransitionKind::Cleared),
        "the storm raises red and passes: {expected:#?}"
    );

    let owners: HashSet<usize> = POINTS.iter().map(|p| owner(p, 2)).collect();
    assert_eq!(owners.len(), 2, "each process owns some of the points");

    let prefix = format!("cluster{}", std::process::id());
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
    let _first = spawn_stream(&settings, 0);
    let _second = spawn_stream(&settings, 1);

    let producer = bus.producer();
    for r in &readings {
        producer
            .send(&topics.readings(), r.sensor.as_bytes(), encode(r), r.ts_ms)
            .await
            .unwrap();
    }
    let mut c = bus
        .consumer("watch", &topics.alerts(), Assignment::All)
        .await
        .unwrap();
    let mut got: Vec<Seen> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    // Until everything is there, then a little longer, so a transition produced twice shows.
    let mut settle: Option<Instant> = None;
    while settle.is_none_or(|s| Instant::now() < s) {
        assert!(
            Instant::now() < deadline,
            "the cluster did not produce the expected {} transitions in 90 s: {got:#?}",
            expected.len()
        );
        got.extend(
            c.poll(1000, Duration::from_millis(300))
                .await
                .unwrap()
                .iter()
                .map(|r| seen(&decode::<AlertTransition>(&r.payload).unwrap()))
                .filter(|s| POINTS.contains(&s.0.as_str())),
        );
        if settle.is_none() && got.len() >= expected.len() {
            settle = Some(Instant::now() + Duration::from_secs(3));
        }
    }
    let unique: HashSet<&Seen> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no transition twice: {got:#?}");
    assert_eq!(
        per_point(&got),
        per_point(&expected),
        "two processes raise what one raises"
    );
}
