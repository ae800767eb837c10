//! The time-series server goes away mid-stream and comes back (`scripts/victoria.sh stop`,
//! then `start` on the same storage): while it is away nothing is committed, and afterwards the
//! server holds every point sent, once per series and timestamp, with its value.
//!
//! A file of its own: cargo runs test files one after another, so no other test sees the
//! server go away.

mod common;

use common::*;
use floodcmd_model::bus::Bus;
use floodcmd_model::time::SystemClock;
use floodcmd_model::topic::Topics;
use floodcmd_sink_influx::{run_sink, SinkConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/victoria.sh")
}

fn victoria(cmd: &str) -> String {
    let out = std::process::Command::new(script())
        .arg(cmd)
        .output()
        .unwrap_or_else(|e| panic!("scripts/victoria.sh {cmd}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scripts/victoria.sh {cmd} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Brings the server back however the test ends, for the tests that run after this one.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script())
            .arg("start")
            .env("FLOODCMD_VICTORIA_REUSE", "1")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_stops_mid_stream_and_every_point_arrives_once_it_is_back() {
    let url = influx_url();
    let status = victoria("status");
    assert!(
        status.contains(url.trim_end_matches('/')),
        "this test stops and starts the server: FLOODCMD_INFLUX ({url}) must be the one \
         scripts/victoria.sh runs ({status})"
    );
    let run = run_id("out");
    let district = district(&run);
    let topics = Topics::new(format!("out{run}"));
    let bus = bus(&topics).await;
    let all = readings(&district, 90, 0);
    let statuses = statuses(&district, 6);
    let thirds: Vec<&[floodcmd_model::Reading]> = all.chunks(all.len().div_ceil(3)).collect();
    let expected = expect(&all, &statuses, &[]);
    let p = bus.producer();
    let unavailable = || {
        counter(
            "floodcmd_sink_influx_write_errors_total",
            "kind",
            "unavailable",
        )
    };
    let failures_before = unavailable();

    let (tx, rx) = watch::channel(false);
    let mut config = SinkConfig::new(topics.clone());
    config.batch_lines = 400;
    config.flush = Duration::from_millis(200);
    config.retry_max = Duration::from_secs(1);
    let sink = tokio::spawn(run_sink(
        Arc::new(bus.clone()),
        district.clone(),
        Arc::new(SystemClock),
        writer(),
        config,
        rx,
    ));
    let inputs = [topics.readings(), topics.status()];

    send_all(&*p, &topics, thirds[0], &statuses, &[]).await;
    wait_committed(&bus, "sink-influx", &inputs, Duration::from_secs(60)).await;

    let _restart = Restart;
    victoria("stop");
    let stopped_at = bus
        .committed("sink-influx", &topics.readings())
        .await
        .unwrap();
    // More readings while the server is away: the sink reads some, cannot write them, and
    // must not commit them.
    send_all(&*p, &topics, thirds[1], &[], &[]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while unavailable() < failures_before + 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sink never noticed the server was gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        bus.committed("sink-influx", &topics.readings())
            .await
            .unwrap(),
        stopped_at,
        "offsets were committed while the server was away"
    );

    victoria("start");
    send_all(&*p, &topics, thirds[2], &[], &[]).await;
    wait_committed(&bus, "sink-influx", &inputs, Duration::from_secs(120)).await;
    let got = read_back(&run, &expected, Duration::from_secs(30)).await;
    assert_same(&expected, &got);
    let _ = tx.send(true);
    sink.await.unwrap().unwrap();
}
