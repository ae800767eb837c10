//! What the fault tests (`fault_broker_loss.rs`, `fault_stage_kills.rs`) share: stages as
//! processes that die with the test, a settings file per run, a storm of depth readings with
//! one sequence number per reading, a feeder that posts it over HTTP the way a device does
//! (its backlog kept and sent again when refused or unanswered), and the reference: the same
//! readings through the stream stage on the embedded bus, undisturbed.

#![allow(dead_code)]

use floodcmd_bus::EmbeddedBus;
use floodcmd_model::bus::{Assignment, Bus, Record};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::config::PointKind;
use floodcmd_model::event::{AlertTransition, TransitionKind};
use floodcmd_model::time::{Clock, ManualClock, Millis};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Level, Reading};
use floodcmd_stream::{run_stream, StreamConfig, Watermark};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An env var the test needs, or a panic naming the command that sets it.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the README's test command, scripts/test.sh")
    })
}

/// A stage process (`floodcmd <stage> --config ...`), killed with SIGKILL when the test ends
/// however it ends.
pub struct Stage {
    child: Child,
    /// What the stage printed before it said it runs (addresses).
    pub said: Vec<String>,
}

impl Stage {
    /// SIGKILL, as a power cut would: no shutdown path runs.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address in the line starting with `label` (e.g. `ingest gateway:`).
    pub fn addr(&self, label: &str) -> String {
        let line = self
            .said
            .iter()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("the stage did not print {label:?}: {:?}", self.said));
        let url = line[label.len()..].trim();
        url.trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_string()
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start `floodcmd <stage>` and wait until it prints a line starting with `ready`.
pub fn spawn_stage(stage_name: &str, settings: &Path, ready: &str) -> Stage {
    let mut child = Command::new(env!("CARGO_BIN_EXE_floodcmd"))
        .arg(stage_name)
        .arg("--config")
        .arg(settings)
        .env("FLOODCMD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stage = Stage {
        child,
        said: Vec::new(),
    };
    for line in lines.take(8) {
        let line = line.unwrap();
        let done = line.starts_with(ready);
        stage.said.push(line);
        if done {
            return stage;
        }
    }
    panic!(
        "floodcmd {name} did not say {ready:?}: {:?}",
        stage.said,
        name = stage_name
    );
}

/// A free TCP port on 127.0.0.1 (bound, then released for the stage to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A settings file `<tmp>/<prefix>/<name>.toml`: the district file `district` (the sample
/// one when `None`), the Kafka bus at `bootstrap` with topics `<prefix>.*`, the stream stage
/// as `tests/kafka_restart.rs` runs it, and `extra` TOML sections.
pub fn settings_file(
    prefix: &str,
    name: &str,
    district: Option<&Path>,
    bootstrap: &str,
    replication: u32,
    extra: &str,
) -> PathBuf {
    let dir = std::env::temp_dir().join(prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    let district = district.map_or_else(
        || format!("{}/config/xincheng.toml", env!("CARGO_MANIFEST_DIR")),
        |p| p.display().to_string(),
    );
    std::fs::write(
        &path,
        format!(
            "[district]\nfile = \"{district}\"\n\
             [bus]\nkind = \"kafka\"\nprefix = \"{prefix}\"\nbootstrap = \"{bootstrap}\"\n\
             partitions = 4\nreplication = {replication}\nmin_insync_replicas = 2\n\
             [stream]\nworkers = 2\nlateness_s = 5\nrebuild_h = 1\n{extra}",
        ),
    )
    .unwrap();
    path
}

/// A name no other run uses.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}{}x{:x}", std::process::id(), nanos % 0xffff_ffff)
}

/// How far behind the clock a storm's first reading is stamped. Steps are posted every 250 ms
/// but stamped [`STORM_STEP_MS`] apart, so the lag shrinks by 1.05 s a step: 150 s at the
/// first step, 25 s at the 120th. Event time runs faster than the clock so that hold times
/// (30 s, 60 s) pass in a test of half a minute; the lag stays under the 180 s after which a
/// live stream stage calls a depth sensor silent (three missed 60 s storm reports), even with
/// a broker's failover (~10-20 s) in between, or the live run would report silences and
/// recoveries that the bounded reference never sees.
pub const STORM_LAG_MS: Millis = 150_000;

/// Event time between two steps of a storm.
pub const STORM_STEP_MS: Millis = 1_300;

/// The storm: for each of `points` depth points (underpasses and low points of the sample
/// district, first sensor), one reading per step, `step_ms` apart in event time from
/// `origin`. Each point rises at 0.45 cm a step to its own peak (12 to 32 cm: some stop at blue, some reach red), stays there,
/// then falls at the same rate: raises, lowers and clears. Returned step by step, each
/// reading with a sequence number of its own.
pub fn storm(
    district: &District,
    points: usize,
    steps: usize,
    origin: Millis,
    step_ms: Millis,
) -> Vec<Vec<Reading>> {
    let chosen: Vec<_> = district
        .points
        .iter()
        .filter(|p| matches!(p.kind, PointKind::Underpass | PointKind::LowPoint))
        .take(points)
        .collect();
    assert_eq!(
        chosen.len(),
        points,
        "the district has {points} depth points"
    );
    let rise_until = steps * 7 / 12;
    let fall_from = steps * 2 / 3;
    (0..steps)
        .map(|i| {
            chosen
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let sensor = &p.sensors[0];
                    let peak = 12.0 + (k % 5) as f64 * 5.0;
                    let cm = if i < rise_until {
                        (0.45 * i as f64).min(peak)
                    } else if i < fall_from {
                        (0.45 * rise_until as f64).min(peak)
                    } else {
                        ((0.45 * rise_until as f64).min(peak) - 0.45 * (i - fall_from) as f64)
                            .max(1.0)
                    };
                    let ts = origin + i as Millis * step_ms;
                    Reading {
                        sensor: sensor.id.as_str().into(),
                        point: p.id.as_str().into(),
                        kind: sensor.kind,
                        ts_ms: ts,
                        value: cm - sensor.calibration_offset_cm,
                        seq: Some(i as u64 + 1),
                        received_ms: ts,
                    }
                })
                .collect()
        })
        .collect()
}

/// The points a storm feeds.
pub fn storm_points(storm: &[Vec<Reading>]) -> HashSet<String> {
    storm[0].iter().map(|r| r.point.to_string()).collect()
}

/// A transition as compared between runs (without processing time and the `late` flag,
/// which depend on when the stage ran, not on what it decided).
pub type Seen = (String, TransitionKind, Level, Level, Millis);

/// The comparable part of a transition.
pub fn seen(t: &AlertTransition) -> Seen {
    (t.point.clone(), t.transition, t.from, t.to, t.event_ms)
}

/// Transitions per point, in the order emitted (the order across points is not defined).
pub fn per_point(v: &[Seen]) -> BTreeMap<String, Vec<Seen>> {
    let mut m: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    for s in v {
        m.entry(s.0.clone()).or_default().push(s.clone());
    }
    m
}

/// The same readings through the stream stage in bounded mode on the embedded bus, nothing
/// disturbed: the transitions of the storm's points.
pub async fn undisturbed(
    district: Arc<District>,
    readings: &[Reading],
    origin: Millis,
    points: &HashSet<String>,
) -> Vec<Seen> {
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
        workers: 2,
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
                .map(|r| seen(&decode::<AlertTransition>(&r.payload).unwrap()))
                .filter(|s| points.contains(&s.0)),
        );
    }
    out
}

/// Read `topic` from the start with a fresh group (never committed) until `done` holds for
/// what was read, then `settle` longer so that anything extra (a duplicate) shows too.
pub async fn read_until(
    bus: &dyn Bus,
    topic: &str,
    within: Duration,
    settle: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let n = bus.partitions(topic).await.unwrap();
    let positions = (0..n).map(|p| (p, Some(0))).collect();
    let mut c = bus
        .consumer(&unique("check"), topic, Assignment::Positions(positions))
        .await
        .unwrap();
    let mut out: Vec<Record> = Vec::new();
    let deadline = Instant::now() + within;
    while !done(&out) {
        assert!(
            Instant::now() < deadline,
            "{topic}: {} records after {within:?}, not what the test waits for",
            out.len()
        );
        out.extend(c.poll(4096, Duration::from_millis(300)).await.unwrap());
    }
    let until = Instant::now() + settle;
    while Instant::now() < until {
        out.extend(c.poll(4096, Duration::from_millis(300)).await.unwrap());
    }
    out
}

/// The transitions on `topic` for `points`, once there are at least `want` of them.
pub async fn transitions(
    bus: &dyn Bus,
    topic: &str,
    points: &HashSet<String>,
    want: usize,
    within: Duration,
) -> Vec<Seen> {
    let of_points = |recs: &[Record]| -> Vec<Seen> {
        recs.iter()
            .map(|r| seen(&decode::<AlertTransition>(&r.payload).unwrap()))
            .filter(|s| points.contains(&s.0))
            .collect()
    };
    let recs = read_until(bus, topic, within, Duration::from_secs(3), |r| {
        of_points(r).len() >= want
    })
    .await;
    of_points(&recs)
}

/// Assert the run's transitions equal the reference's, each once.
pub fn assert_same_transitions(got: &[Seen], expected: &[Seen], what: &str) {
    let unique: HashSet<&Seen> = got.iter().collect();
    let twice: Vec<&Seen> = {
        let mut seen_once = HashSet::new();
        got.iter().filter(|s| !seen_once.insert(*s)).collect()
    };
    assert_eq!(
        unique.len(),
        got.len(),
        "{what}: a transition emitted twice: {twice:#?}"
    );
    assert_eq!(
        per_point(got),
        per_point(expected),
        "{what}: the transitions differ from the undisturbed run's"
    );
}

/// What the feeder saw.
#[derive(Default, Debug, Clone)]
pub struct FeedStats {
    /// Readings in the storm.
    pub sent: usize,
    /// Readings the gateway said it took (2xx, or outside `not_accepted` of a 429/503), or
    /// said it already had (a resend answered `duplicate_sequence`).
    pub accepted: usize,
    /// Requests posted, including resends.
    pub posts: usize,
    /// Answers 429 or 503 (the bus could not take everything).
    pub refused: usize,
    /// Requests with no answer (connection refused or reset, timeout): sent again whole.
    pub unanswered: usize,
    /// Of those, attempts that found no gateway listening (connection refused): nothing was
    /// sent, so nothing is in doubt.
    pub refused_connections: usize,
    /// Readings sent again after a request got no answer.
    pub resent_unanswered: usize,
    /// Resent readings the gateway said it already had.
    pub already_had: usize,
    /// Readings in requests that reached a gateway and got no answer (reset, timeout): each
    /// may be on the readings topic twice (the first try may have landed before its answer
    /// was lost), keyed (sensor, seq).
    pub in_doubt: HashSet<(String, u64)>,
    /// When a reading was last accepted.
    pub last_accept: Option<Instant>,
    /// The longest time between two acceptances: how long the gateway took nothing.
    pub longest_gap: Duration,
}

impl FeedStats {
    fn took(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        if let Some(last) = self.last_accept {
            self.longest_gap = self.longest_gap.max(now - last);
        }
        self.last_accept = Some(now);
        self.accepted += n;
    }
}

/// One reading as a device posts it.
fn wire(r: &Reading) -> String {
    format!(
        "{{\"sensor\":\"{}\",\"ts\":{},\"value\":{},\"seq\":{}}}\n",
        r.sensor,
        r.ts_ms,
        r.value,
        r.seq.unwrap()
    )
}

/// Post `readings` (one device's records of one step) until every one is accepted: records a
/// 429/503 names in `not_accepted` go again after its Retry-After (capped at 2 s); a request
/// without an answer goes again whole after 200 ms. Returns when all are accepted.
pub async fn post_until_accepted(
    client: &reqwest::Client,
    url: &str,
    readings: &[Reading],
    stats: &Mutex<FeedStats>,
    give_up: Instant,
) {
    let mut backlog: Vec<&Reading> = readings.iter().collect();
    let mut unanswered_before = false;
    while !backlog.is_empty() {
        assert!(
            Instant::now() < give_up,
            "the gateway did not take {} readings in time ({:?})",
            backlog.len(),
            stats.lock().unwrap()
        );
        let body: String = backlog.iter().map(|r| wire(r)).collect();
        stats.lock().unwrap().posts += 1;
        let resp = client
            .post(url)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                {
                    let mut s = stats.lock().unwrap();
                    s.unanswered += 1;
                    s.resent_unanswered += backlog.len();
                    if e.is_connect() {
                        // No connection, so no request: the gateway never saw these.
                        s.refused_connections += 1;
                    } else {
                        for r in &backlog {
                            s.in_doubt.insert((r.sensor.to_string(), r.seq.unwrap()));
                        }
                        unanswered_before = true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let text = match resp.text().await {
            Ok(t) => t,
            Err(_) => {
                // The answer broke off: as good as none.
                {
                    let mut s = stats.lock().unwrap();
                    s.unanswered += 1;
                    for r in &backlog {
                        s.in_doubt.insert((r.sensor.to_string(), r.seq.unwrap()));
                    }
                }
                unanswered_before = true;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("gateway answered {status} with {text:?}: {e}"));
        match status {
            200 | 400 => {
                // 400 only when every record was refused: here that can only be a resend of
                // readings the gateway already has.
                let mut s = stats.lock().unwrap();
                for rej in v["rejects"].as_array().into_iter().flatten() {
                    assert_eq!(
                        rej["reason"], "duplicate_sequence",
                        "a storm reading was refused: {rej}"
                    );
                    assert!(
                        unanswered_before,
                        "a duplicate without an unanswered request before it: {rej}"
                    );
                    s.already_had += 1;
                }
                s.took(backlog.len());
                backlog.clear();
            }
            429 | 503 => {
                let not: HashSet<usize> = v["not_accepted"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{status} without not_accepted: {text}"))
                    .iter()
                    .map(|i| i.as_u64().unwrap() as usize)
                    .collect();
                {
                    let mut s = stats.lock().unwrap();
                    s.refused += 1;
                    s.took(backlog.len() - not.len());
                }
                backlog = backlog
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| not.contains(i))
                    .map(|(_, r)| r)
                    .collect();
                let wait = retry_after.unwrap_or(1).clamp(1, 2);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            other => panic!("gateway answered {other}: {text}"),
        }
    }
}

/// Feed a storm through the gateway at `url` as `devices` devices, each posting its share of
/// every step in order, step `i` due at `start + i * every` (a device that fell behind sends
/// at once). The test pulls its plugs from a task of its own meanwhile.
pub async fn feed(
    url: String,
    storm: Arc<Vec<Vec<Reading>>>,
    devices: usize,
    every: Duration,
    stats: Arc<Mutex<FeedStats>>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    stats.lock().unwrap().sent = storm.iter().map(Vec::len).sum();
    let start = tokio::time::Instant::now();
    let give_up = Instant::now() + Duration::from_secs(240);
    let mut tasks = Vec::new();
    for d in 0..devices {
        let (client, url, storm, stats) =
            (client.clone(), url.clone(), storm.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            for (i, step) in storm.iter().enumerate() {
                tokio::time::sleep_until(start + every * i as u32).await;
                let mine: Vec<Reading> = step
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| k % devices == d)
                    .map(|(_, r)| r.clone())
                    .collect();
                post_until_accepted(&client, &url, &mine, &stats, give_up).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Readings on a topic as (sensor, seq) → how many times.
pub fn by_sensor_seq(records: &[Record]) -> BTreeMap<(String, u64), usize> {
    let mut m = BTreeMap::new();
    for r in records {
        let x: Reading = decode(&r.payload).unwrap();
        *m.entry((
            x.sensor.to_string(),
            x.seq.expect("storm readings carry seq"),
        ))
        .or_default() += 1;
    }
    m
}

/// A storm's readings as (sensor, seq).
pub fn storm_keys(storm: &[Vec<Reading>]) -> HashSet<(String, u64)> {
    storm
        .iter()
        .flatten()
        .map(|r| (r.sensor.to_string(), r.seq.unwrap()))
        .collect()
}

/// Put a storm straight on the readings topic (as the gateway would), step `i` at
/// `start + i * every`. Returns when all is on the bus.
pub async fn produce_paced(
    bus: Arc<dyn Bus>,
    topic: String,
    storm: Arc<Vec<Vec<Reading>>>,
    every: Duration,
    produced: Arc<Mutex<usize>>,
) {
    let p = bus.producer();
    let start = tokio::time::Instant::now();
    for (i, step) in storm.iter().enumerate() {
        tokio::time::sleep_until(start + every * i as u32).await;
        let batch = step
            .iter()
            .map(|r| floodcmd_model::bus::Outgoing {
                key: bytes::Bytes::copy_from_slice(r.sensor.as_bytes()),
                payload: encode(r),
                timestamp_ms: r.ts_ms,
                key_hash: None,
            })
            .collect();
        for r in p.send_batch(&topic, batch).await {
            r.unwrap();
        }
        *produced.lock().unwrap() = i + 1;
    }
}

/// Wait until `group` has committed every partition of `topic` to its end: the stage has read
/// and finished every record. Returns the number of records committed.
pub async fn wait_committed(bus: &dyn Bus, group: &str, topic: &str, within: Duration) -> u64 {
    let ends = bus.end_offsets(topic).await.unwrap();
    let deadline = Instant::now() + within;
    loop {
        let done = bus.committed(group, topic).await.unwrap();
        if ends
            .iter()
            .zip(&done)
            .all(|(end, c)| *end == 0 || c.unwrap_or(0) >= *end)
        {
            return done.iter().flatten().sum();
        }
        assert!(
            Instant::now() < deadline,
            "{group} did not commit {topic} to its end {ends:?} in {within:?}: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
