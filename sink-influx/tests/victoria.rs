//! The sink against a real time-series server (victoria-metrics behind the InfluxDB v2 write
//! API, started by `scripts/test.sh`): what goes in comes back, sample for sample, with the
//! district's tags; a malformed record is dead-lettered alone and its batch still lands.

mod common;

use common::*;
use floodcmd_model::bus::{Assignment, Bus};
use floodcmd_model::codec::decode;
use floodcmd_model::event::{Reject, RejectReason};
use floodcmd_model::time::SystemClock;
use floodcmd_model::topic::Topics;
use floodcmd_sink_influx::{run_sink, SinkConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_sent_reads_back_with_the_district_tags() {
    let run = run_id("rb");
    let district = district(&run);
    let topics = Topics::new(format!("rb{run}"));
    let bus = bus(&topics).await;
    let readings = readings(&district, 40, 0);
    let statuses = statuses(&district, 10);
    let alerts = alerts(&district);
    send_all(&*bus.producer(), &topics, &readings, &statuses, &alerts).await;
    let expected = expect(&readings, &statuses, &alerts);

    let (tx, rx) = watch::channel(false);
    let mut config = SinkConfig::new(topics.clone());
    // Small batches: many writes, each committed on its own.
    config.batch_lines = 700;
    let sink = tokio::spawn(run_sink(
        Arc::new(bus.clone()),
        district.clone(),
        Arc::new(SystemClock),
        writer(),
        config,
        rx,
    ));
    wait_committed(
        &bus,
        "sink-influx",
        &[topics.readings(), topics.status(), topics.alerts()],
        Duration::from_secs(60),
    )
    .await;
    let got = read_back(&run, &expected, Duration::from_secs(30)).await;
    assert_same(&expected, &got);

    // The tags come from the district: a depth sensor's series names its point's community,
    // sub-district and kind.
    let series = export(&run).await.unwrap();
    let s = district
        .sensors()
        .find(|s| s.sensor.kind == floodcmd_model::SensorKind::Depth)
        .unwrap();
    let one = series
        .iter()
        .find(|x| {
            x.metric.get("__name__").map(String::as_str) == Some("depth_value")
                && x.metric.get("sensor") == Some(&s.sensor.id)
        })
        .expect("the sensor's depth series");
    assert_eq!(one.metric["point"], s.point.id);
    assert_eq!(one.metric["kind"], s.point.kind.as_str());
    assert_eq!(one.metric["community"], s.point.community);
    assert_eq!(one.metric["sub_district"], s.point.sub_district);
    let _ = tx.send(true);
    sink.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_record_is_rejected_alone_and_its_batch_still_lands() {
    let run = run_id("bad");
    let district = district(&run);
    let topics = Topics::new(format!("bad{run}"));
    let bus = bus(&topics).await;
    let readings = readings(&district, 10, 0);
    let (first, rest) = readings.split_at(readings.len() / 2);
    let p = bus.producer();
    send_all(&*p, &topics, first, &[], &[]).await;
    // In the middle of the batch: NaN and a number too big for f64 (not JSON a decoder takes),
    // a timestamp past what InfluxDB stores, a sensor id line protocol cannot carry.
    let s = district.sensors().next().unwrap();
    let (sensor, point) = (s.sensor.id.clone(), s.point.id.clone());
    let ts = first[0].ts_ms;
    let bad: Vec<(String, String)> = vec![
        (sensor.clone(), format!("{{\"sensor\":\"{sensor}\",\"point\":\"{point}\",\"kind\":\"depth\",\"ts_ms\":{ts},\"value\":NaN,\"received_ms\":{ts}}}")),
        (sensor.clone(), format!("{{\"sensor\":\"{sensor}\",\"point\":\"{point}\",\"kind\":\"depth\",\"ts_ms\":{ts},\"value\":1e999,\"received_ms\":{ts}}}")),
        (sensor.clone(), format!("{{\"sensor\":\"{sensor}\",\"point\":\"{point}\",\"kind\":\"depth\",\"ts_ms\":10000000000000000,\"value\":1.5,\"received_ms\":{ts}}}")),
        ("odd".into(), format!("{{\"sensor\":\"odd\\nsensor\",\"point\":\"{point}\",\"kind\":\"depth\",\"ts_ms\":{ts},\"value\":1.5,\"received_ms\":{ts}}}")),
    ];
    for (key, payload) in &bad {
        p.send(
            &topics.readings(),
            key.as_bytes(),
            bytes::Bytes::from(payload.clone()),
            ts,
        )
        .await
        .unwrap();
    }
    send_all(&*p, &topics, rest, &[], &[]).await;
    let expected = expect(&readings, &[], &[]);

    let before_nan = counter(
        "floodcmd_sink_influx_rejects_total",
        "reason",
        "undecodable",
    );
    let before_unwritable = counter("floodcmd_sink_influx_rejects_total", "reason", "unwritable");
    let (tx, rx) = watch::channel(false);
    let mut config = SinkConfig::new(topics.clone());
    // One batch for everything: the bad records sit among good ones.
    config.batch_lines = 100_000;
    config.flush = Duration::from_millis(500);
    let sink = tokio::spawn(run_sink(
        Arc::new(bus.clone()),
        district.clone(),
        Arc::new(SystemClock),
        writer(),
        config,
        rx,
    ));
    wait_committed(
        &bus,
        "sink-influx",
        &[topics.readings()],
        Duration::from_secs(60),
    )
    .await;
    let got = read_back(&run, &expected, Duration::from_secs(30)).await;
    assert_same(&expected, &got);

    let mut c = bus
        .consumer("check", &topics.rejects(), Assignment::All)
        .await
        .unwrap();
    let mut rejects: Vec<Reject> = Vec::new();
    while rejects.len() < bad.len() {
        let recs = c.poll(100, Duration::from_secs(5)).await.unwrap();
        assert!(
            !recs.is_empty(),
            "only {} rejects: {rejects:?}",
            rejects.len()
        );
        rejects.extend(recs.iter().map(|r| decode::<Reject>(&r.payload).unwrap()));
    }
    assert_eq!(
        rejects.len(),
        bad.len(),
        "one dead letter per bad record: {rejects:?}"
    );
    let reasons: Vec<RejectReason> = rejects.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == RejectReason::Undecodable)
            .count(),
        2,
        "{rejects:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == RejectReason::Unwritable)
            .count(),
        2,
        "{rejects:?}"
    );
    let ts_reject = rejects
        .iter()
        .find(|r| r.detail.contains("ts_ms"))
        .expect("the timestamp's reject names the field");
    assert!(ts_reject.raw.contains("10000000000000000"), "{ts_reject:?}");
    assert_eq!(ts_reject.source, format!("bus:{}", topics.readings()));
    assert!(rejects.iter().any(|r| r.detail.contains("tag sensor")));
    // Counted, too (other tests in this binary may add to the same counters).
    assert!(
        counter(
            "floodcmd_sink_influx_rejects_total",
            "reason",
            "undecodable"
        ) >= before_nan + 2.0
    );
    assert!(
        counter("floodcmd_sink_influx_rejects_total", "reason", "unwritable")
            >= before_unwritable + 2.0
    );
    let _ = tx.send(true);
    sink.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sink_goes_on_from_its_commits_and_loses_nothing() {
    let run = run_id("rs");
    let district = district(&run);
    let topics = Topics::new(format!("rs{run}"));
    let bus = bus(&topics).await;
    let all = readings(&district, 60, 0);
    let (a, b) = all.split_at(all.len() / 2);
    let p = bus.producer();
    send_all(&*p, &topics, a, &[], &[]).await;
    let expected = expect(&all, &[], &[]);
    let start = |rx| {
        let mut config = SinkConfig::new(topics.clone());
        config.batch_lines = 500;
        tokio::spawn(run_sink(
            Arc::new(bus.clone()),
            district.clone(),
            Arc::new(SystemClock),
            writer(),
            config,
            rx,
        ))
    };
    let (tx, rx) = watch::channel(false);
    let sink = start(rx);
    wait_committed(
        &bus,
        "sink-influx",
        &[topics.readings()],
        Duration::from_secs(60),
    )
    .await;
    let _ = tx.send(true);
    sink.await.unwrap().unwrap();
    let committed = bus
        .committed("sink-influx", &topics.readings())
        .await
        .unwrap();

    // The second half arrives while no sink runs; a new one takes over from the commits.
    send_all(&*p, &topics, b, &[], &[]).await;
    let (tx, rx) = watch::channel(false);
    let sink = start(rx);
    wait_committed(
        &bus,
        "sink-influx",
        &[topics.readings()],
        Duration::from_secs(60),
    )
    .await;
    let after = bus
        .committed("sink-influx", &topics.readings())
        .await
        .unwrap();
    assert!(after.iter().zip(&committed).all(|(n, o)| n >= o));
    let got = read_back(&run, &expected, Duration::from_secs(30)).await;
    assert_same(&expected, &got);
    let _ = tx.send(true);
    sink.await.unwrap().unwrap();
}
