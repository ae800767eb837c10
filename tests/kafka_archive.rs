//! `floodcmd archive` against the real Kafka (`scripts/kafka.sh`, bootstrap from
//! `FLOODCMD_KAFKA`, default 127.0.0.1:19092): a time range of the readings topic, with readings
//! out of order, late, duplicated and one undecodable record, comes out as exactly the readings
//! in the range, sorted, once each; the archive reads back identical and replays to the same
//! transitions as the readings given directly; and the command line's `archive` then `replay`
//! (of the file, and straight from the topic) write the same storm.

use bytes::Bytes;
use floodcmd::archive_export::{export, readings_from_bus, ExportStats};
use floodcmd::replay::{replay, ReplayOptions};
use floodcmd_archive::ArchiveReader;
use floodcmd_bus::{KafkaBus, KafkaConfig};
use floodcmd_model::bus::{Bus, Outgoing};
use floodcmd_model::codec::encode;
use floodcmd_model::event::AlertTransition;
use floodcmd_model::time::{rfc3339, Millis};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Reading, SensorKind};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

const MINUTE: Millis = 60_000;

fn bootstrap() -> String {
    std::env::var("FLOODCMD_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// A prefix no other run or test uses.
fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("arch{}-{nanos}.{name}", std::process::id())
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two hours of one reading a minute from three underpass sensors, depth rising to 60 cm at
/// the hour and falling again, from `base`.
fn storm(base: Millis) -> Vec<Reading> {
    let mut out = Vec::new();
    for m in 0..120i64 {
        let depth = (60 - 2 * (m - 60).abs()).max(0) as f64 + 0.25;
        for (i, sensor) in ["WL-UP-01", "WL-UP-01-B", "WL-UP-02"].iter().enumerate() {
            out.push(Reading {
                sensor: (*sensor).into(),
                point: sensor
                    .trim_start_matches("WL-")
                    .trim_end_matches("-B")
                    .into(),
                kind: SensorKind::Depth,
                ts_ms: base + m * MINUTE + i as Millis * 1_000,
                value: depth + i as f64 * 0.5,
                seq: Some(m as u64),
                received_ms: base + m * MINUTE + 2_000,
            });
        }
    }
    out
}

fn record(r: &Reading, timestamp_ms: Millis) -> Outgoing {
    Outgoing {
        key: Bytes::copy_from_slice(r.sensor.as_bytes()),
        payload: encode(r),
        timestamp_ms,
        key_hash: None,
    }
}

/// Put `storm` on the readings topic the way a live system can: every seventh reading arrives
/// late (after the rest), one reading's record timestamp is 20 minutes before its event time,
/// one reading is delivered twice, and one record is not a reading. Returns what an export of
/// `[from, to)` must give.
async fn produce(
    bus: &KafkaBus,
    topics: &Topics,
    readings: &[Reading],
    from: Millis,
    to: Millis,
) -> Vec<Reading> {
    bus.ensure_topic(&topics.readings(), 3).await.unwrap();
    let (late, on_time): (Vec<_>, Vec<_>) =
        readings.iter().enumerate().partition(|(i, _)| i % 7 == 3);
    let mut records: Vec<Outgoing> = on_time.iter().map(|(_, r)| record(r, r.ts_ms)).collect();
    records.extend(late.iter().rev().map(|(_, r)| record(r, r.ts_ms)));
    // A reading whose record timestamp is earlier than its event time (a producer stamping its
    // own clock): inside the lookup margin, so it is found.
    let early_stamped = Reading {
        sensor: "WL-UP-02".into(),
        point: "UP-02".into(),
        kind: SensorKind::Depth,
        ts_ms: from + 90_500,
        value: 7.5,
        seq: None,
        received_ms: from + 91_000,
    };
    // It goes on the topic before the range's first readings, so an offsets lookup at `from`
    // itself would start after it.
    let at = records.iter().position(|r| r.timestamp_ms >= from).unwrap();
    records.insert(at, record(&early_stamped, from - 20 * MINUTE));
    // At-least-once: the same reading twice.
    let dup = readings
        .iter()
        .find(|r| r.ts_ms >= from + 10 * MINUTE)
        .unwrap();
    records.push(record(dup, dup.ts_ms));
    records.push(Outgoing {
        key: Bytes::from_static(b"WL-UP-01"),
        payload: Bytes::from_static(b"{\"sensor\":\"WL-UP-01\",\"ts_ms\":"),
        timestamp_ms: from + MINUTE,
        key_hash: None,
    });
    for r in bus.producer().send_batch(&topics.readings(), records).await {
        r.unwrap();
    }
    let mut want: Vec<Reading> = readings
        .iter()
        .chain([&early_stamped])
        .filter(|r| (from..to).contains(&r.ts_ms))
        .cloned()
        .collect();
    want.sort_by(|a, b| (a.ts_ms, &a.sensor).cmp(&(b.ts_ms, &b.sensor)));
    want
}

/// Now minus three hours, on a minute: recent enough that the broker's retention keeps it.
fn base() -> Millis {
    let now = chrono::Utc::now().timestamp_millis();
    (now - 3 * 60 * MINUTE) / MINUTE * MINUTE
}

async fn transitions(readings: Vec<Reading>, district: &Arc<District>) -> Vec<AlertTransition> {
    let n = readings.len() as u64;
    replay(
        district.clone(),
        readings.into_iter().map(Ok),
        n,
        &ReplayOptions::default(),
        &mut |_, _| {},
    )
    .await
    .unwrap()
    .transitions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_gives_the_range_sorted_once_and_replays_like_the_readings() {
    let bus = KafkaBus::new(KafkaConfig::new(bootstrap())).unwrap();
    let topics = Topics::new(unique("export"));
    let base = base();
    let (from, to) = (base + 30 * MINUTE, base + 90 * MINUTE);
    let all = storm(base);
    let want = produce(&bus, &topics, &all, from, to).await;
    let outside = all.len() - (want.len() - 1); // the early-stamped reading is extra
    let dir = tempdir("export");
    let out = dir.join("range.ndjson.gz");

    let mut calls = 0;
    let exported = export(
        &bus,
        &topics,
        floodcmd::XINCHENG_TOML,
        "xincheng",
        from,
        to,
        &out,
        &mut |_, _| calls += 1,
    )
    .await
    .unwrap();
    assert!(calls >= 1, "progress is told");
    assert_eq!(
        exported.stats,
        ExportStats {
            records: all.len() as u64 + 3,
            undecodable: 1,
            outside: outside as u64,
            duplicates: 1,
            deleted: 0,
        }
    );
    let h = &exported.header;
    assert_eq!(h.readings, want.len() as u64);
    assert_eq!(h.from_ms, want[0].ts_ms);
    assert_eq!(h.to_ms, want.last().unwrap().ts_ms);
    assert_eq!(
        h.source,
        format!(
            "kafka bus topic {} {}..{}",
            topics.readings(),
            rfc3339(from),
            rfc3339(to)
        )
    );
    assert_eq!(h.district_toml, floodcmd::XINCHENG_TOML);
    assert_eq!(h.district_name, "xincheng");

    // The file reads back as exactly the readings in the range, in order, once each.
    let (read_header, reader) = ArchiveReader::open(&out).unwrap();
    assert_eq!(&read_header, h);
    let back: Vec<Reading> = reader.map(Result::unwrap).collect();
    assert_eq!(back, want);
    assert!(back
        .windows(2)
        .all(|w| (w[0].ts_ms, &w[0].sensor) < (w[1].ts_ms, &w[1].sensor)));

    // In memory (what `replay --kafka-from` uses): the same readings.
    let mem = readings_from_bus(&bus, &topics, from, to, &mut |_, _| {})
        .await
        .unwrap();
    assert_eq!(mem.readings, want);
    assert_eq!(mem.stats, exported.stats);

    // Replaying the archive gives the transitions the readings themselves give.
    let district = Arc::new(read_header.district().unwrap());
    let (_, reader) = ArchiveReader::open(&out).unwrap();
    let from_archive = replay(
        district.clone(),
        reader,
        h.readings,
        &ReplayOptions::default(),
        &mut |_, _| {},
    )
    .await
    .unwrap()
    .transitions;
    let direct = transitions(want.clone(), &district).await;
    assert!(!direct.is_empty(), "the storm raises levels at UP-01/UP-02");
    assert_eq!(from_archive, direct);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_of_a_topic_still_being_written_ends() {
    let bus = KafkaBus::new(KafkaConfig::new(bootstrap())).unwrap();
    let topics = Topics::new(unique("live"));
    let base = base();
    let (from, to) = (base + 30 * MINUTE, base + 90 * MINUTE);
    let want = produce(&bus, &topics, &storm(base), from, to).await;
    // Keep appending in-range readings while the export runs: it reads to the end offsets it
    // took at the start and stops.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (bus, topic, stop) = (bus.clone(), topics.readings(), stop.clone());
        let extra = storm(base)[150].clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut r = extra.clone();
                r.seq = Some(1_000_000 + n);
                r.value = 100.0 + n as f64; // not a duplicate
                bus.producer()
                    .send(&topic, r.sensor.as_bytes(), encode(&r), r.ts_ms)
                    .await
                    .unwrap();
                n += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        readings_from_bus(&bus, &topics, from, to, &mut |_, _| {}),
    )
    .await
    .expect("the export ends while the topic grows")
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    feeder.await.unwrap();
    assert!(got.readings.len() >= want.len());
}

fn floodcmd(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_floodcmd"))
        .args(args)
        .env("FLOODCMD_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "floodcmd {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn storm_of(report: &std::path::Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    v["storm"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_archive_then_replay_writes_a_storm_report() {
    let kafka = bootstrap();
    let bus = KafkaBus::new(KafkaConfig::new(kafka.clone())).unwrap();
    let topics = Topics::new(unique("cli"));
    let base = base();
    let (from, to) = (base + 30 * MINUTE, base + 90 * MINUTE);
    let want = produce(&bus, &topics, &storm(base), from, to).await;
    let dir = tempdir("cli");
    let district = dir.join("district.toml");
    std::fs::write(&district, floodcmd::XINCHENG_TOML).unwrap();
    let settings = dir.join("floodcmd.toml");
    std::fs::write(
        &settings,
        format!(
            "[district]\nfile = {:?}\n\n[bus]\nkind = \"kafka\"\nprefix = {:?}\npartitions = 3\nbootstrap = {:?}\n",
            district.display().to_string(),
            topics.prefix(),
            kafka
        ),
    )
    .unwrap();
    let (from_s, to_s) = (rfc3339(from), rfc3339(to));
    let archive = dir.join("storm.ndjson.gz");
    let settings_s = settings.display().to_string();
    let archive_s = archive.display().to_string();
    let out = floodcmd(&[
        "archive",
        "--kafka",
        &kafka,
        "--config",
        &settings_s,
        "--from",
        &from_s,
        "--to",
        &to_s,
        "--out",
        &archive_s,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{} readings", want.len())) && stdout.contains("1 undecodable"),
        "{stdout}"
    );
    let (header, _) = ArchiveReader::open(&archive).unwrap();
    assert_eq!(header.readings, want.len() as u64);
    assert!(
        header.source.starts_with(&format!("kafka {kafka} topic ")),
        "{}",
        header.source
    );

    let from_file = dir.join("replay-file");
    floodcmd(&[
        "replay",
        &archive_s,
        "--out",
        &from_file.display().to_string(),
    ]);
    let storm_file = storm_of(&from_file.join("storm-report.json"));
    assert!(storm_file.is_object(), "{storm_file}");
    assert!(from_file.join("storm-report.md").exists());

    // Straight from the topic, no file: the same storm.
    let from_topic = dir.join("replay-topic");
    floodcmd(&[
        "replay",
        "--kafka-from",
        &from_s,
        "--kafka-to",
        &to_s,
        "--config",
        &settings_s,
        "--kafka",
        &kafka,
        "--out",
        &from_topic.display().to_string(),
    ]);
    assert_eq!(storm_of(&from_topic.join("storm-report.json")), storm_file);
    std::fs::remove_dir_all(dir).ok();
}

fn floodcmd_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_floodcmd"))
        .args(args)
        .env("FLOODCMD_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!out.status.success(), "floodcmd {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cli_refuses_an_embedded_bus_and_a_replay_with_no_or_two_inputs() {
    let dir = tempdir("cli-refuses");
    let settings = dir.join("embedded.toml");
    std::fs::write(&settings, "[bus]\nkind = \"embedded\"\n").unwrap();
    let settings_s = settings.display().to_string();
    let range = [
        "--from",
        "2026-07-20T00:00:00Z",
        "--to",
        "2026-07-21T00:00:00Z",
    ];
    let mut args = vec!["archive", "--config", &settings_s, "--out", "x.gz"];
    args.extend(range);
    let err = floodcmd_fails(&args);
    assert!(err.contains("needs Kafka"), "{err}");

    let err = floodcmd_fails(&["replay"]);
    assert!(err.contains("<ARCHIVE|--kafka-from"), "{err}");
    let err = floodcmd_fails(&[
        "replay",
        "x.gz",
        "--kafka-from",
        "2026-07-20T00:00:00Z",
        "--kafka-to",
        "2026-07-21T00:00:00Z",
    ]);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = floodcmd_fails(&["replay", "--kafka-from", "2026-07-20T00:00:00Z"]);
    assert!(err.contains("--kafka-to"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}
