//! The gateway from a device's side: formats, rejects with reasons, size limits, and what
//! lands on the bus.

use floodcmd_bus::EmbeddedBus;
use floodcmd_ingest::auth::{token_sha256, DeviceRegistry};
use floodcmd_ingest::validate::TimeLimits;
use floodcmd_ingest::{Access, Gateway, GatewayConfig};
use floodcmd_model::bus::{Assignment, Bus};
use floodcmd_model::codec::decode;
use floodcmd_model::event::{Reject, RejectReason};
use floodcmd_model::time::{Clock, ManualClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{District, Reading};
use std::sync::Arc;
use std::time::Duration;

const NOW: i64 = 1_783_000_000_000;

struct Rig {
    url: String,
    bus: EmbeddedBus,
    topics: Topics,
    clock: Arc<ManualClock>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn rig(max_body_bytes: u64) -> Rig {
    rig_with(max_body_bytes, Access::Open).await
}

async fn rig_with(max_body_bytes: u64, access: Access) -> Rig {
    rig_limited(max_body_bytes, access, 0).await
}

async fn rig_limited(max_body_bytes: u64, access: Access, device_requests_per_min: u32) -> Rig {
    let district =
        Arc::new(District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap());
    let bus = EmbeddedBus::new(1024);
    let topics = Topics::new("t");
    for t in topics.all() {
        bus.ensure_topic(&t, 2).await.unwrap();
    }
    let manual = Arc::new(ManualClock::new(NOW));
    let clock: Arc<dyn Clock> = manual.clone();
    let gw = Arc::new(Gateway::new(
        district,
        bus.producer(),
        topics.clone(),
        clock,
        GatewayConfig {
            max_body_bytes,
            limits: TimeLimits {
                max_future_ms: 300_000,
                retention_ms: 72 * 3_600_000,
            },
            access,
            device_requests_per_min,
        },
    ));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, _h) = gw
        .serve(([127, 0, 0, 1], 0).into(), async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    Rig {
        url: format!("http://{addr}/v1/readings"),
        bus,
        topics,
        clock: manual,
        _stop: tx,
    }
}

async fn drain<T: serde::de::DeserializeOwned>(bus: &EmbeddedBus, topic: &str) -> Vec<T> {
    let mut c = bus.consumer("test", topic, Assignment::All).await.unwrap();
    let mut out = Vec::new();
    loop {
        let batch = c.poll(1000, Duration::from_millis(100)).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch.iter().map(|r| decode::<T>(&r.payload).unwrap()));
    }
}

async fn post(url: &str, ct: &str, body: String) -> (u16, serde_json::Value) {
    post_as(url, ct, None, body).await
}

async fn post_as(
    url: &str,
    ct: &str,
    token: Option<&str>,
    body: String,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", ct)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

#[tokio::test]
async fn one_object_an_array_and_ndjson_all_land_on_the_readings_topic() {
    let r = rig(1 << 20).await;
    let (s, v) = post(
        &r.url,
        "application/json",
        format!(r#"{{"sensor":"WL-UP-01","ts":{NOW},"value":12.5,"seq":1}}"#),
    )
    .await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(1)));
    let (s, v) = post(
        &r.url,
        "application/json",
        format!(r#"[{{"sensor":"WL-UP-02","ts":"2026-07-02T08:00:00+08:00","value":3}}, {{"sensor":"RN-RG-01","ts":{NOW},"value":0.5}}]"#),
    )
    .await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(2)), "{v}");
    let nd = format!("{{\"sensor\":\"WL-UP-01\",\"ts\":{},\"value\":13.0,\"seq\":2}}\n{{\"sensor\":\"WL-UP-01\",\"ts\":{},\"value\":14.0,\"seq\":3}}\n", NOW + 1000, NOW + 2000);
    let (s, v) = post(&r.url, "application/x-ndjson", nd).await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(2)));

    let readings: Vec<Reading> = drain(&r.bus, &r.topics.readings()).await;
    assert_eq!(readings.len(), 5);
    let up01: Vec<f64> = readings
        .iter()
        .filter(|x| x.sensor == "WL-UP-01")
        .map(|x| x.value)
        .collect();
    assert_eq!(
        up01,
        vec![12.5, 13.0, 14.0],
        "one sensor's readings keep their order"
    );
    let rfc = readings.iter().find(|x| x.sensor == "WL-UP-02").unwrap();
    assert_eq!(
        rfc.ts_ms, 1_782_950_400_000,
        "RFC 3339 with an offset is converted to UTC ms"
    );
    assert_eq!(rfc.point, "UP-02");
}

#[tokio::test]
async fn each_bad_record_is_rejected_alone_with_its_reason() {
    let r = rig(1 << 20).await;
    let lines = [
        format!(r#"{{"sensor":"WL-UP-01","ts":{NOW},"value":10.0,"seq":7}}"#),
        format!(r#"{{"sensor":"WL-UP-01","ts":{NOW},"value":"NaN","seq":8}}"#),
        format!(r#"{{"sensor":"NO-SUCH","ts":{NOW},"value":1.0}}"#),
        format!(r#"{{"sensor":"WL-UP-01","ts":{NOW},"value":99999.0}}"#),
        format!(
            r#"{{"sensor":"WL-UP-01","ts":{},"value":1.0}}"#,
            NOW + 3_600_000
        ),
        format!(
            r#"{{"sensor":"WL-UP-01","ts":{},"value":1.0}}"#,
            NOW - 100 * 3_600_000
        ),
        format!(r#"{{"sensor":"WL-UP-01","ts":{NOW},"value":11.0,"seq":7}}"#),
        r#"{"sensor":"WL-UP-01","ts":1,"value":NaN}"#.to_string(),
        r#"{"sensor":"WL-UP-01","value":1}"#.to_string(),
        format!(r#"{{"sensor":"RN-RG-01","ts":{NOW},"value":-3}}"#),
    ];
    let (s, v) = post(&r.url, "application/x-ndjson", lines.join("\n")).await;
    assert_eq!(s, 200);
    assert_eq!(v["accepted"], 1);
    assert_eq!(v["rejected"], 9);
    let reasons: Vec<(u64, String)> = v["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["index"].as_u64().unwrap(),
                x["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        (1, "not_a_number"),
        (2, "unknown_sensor"),
        (3, "out_of_range"),
        (4, "future_timestamp"),
        (5, "too_old"),
        (6, "duplicate_sequence"),
        (7, "malformed"),
        (8, "missing_field"),
        (9, "out_of_range"),
    ];
    assert_eq!(
        reasons,
        want.iter()
            .map(|(i, r)| (*i, r.to_string()))
            .collect::<Vec<_>>()
    );

    let rejects: Vec<Reject> = drain(&r.bus, &r.topics.rejects()).await;
    assert_eq!(rejects.len(), 9, "every reject is kept as a dead letter");
    let nan = rejects
        .iter()
        .find(|x| x.reason == RejectReason::NotANumber)
        .unwrap();
    assert!(
        nan.raw.contains("\"NaN\""),
        "the dead letter keeps the original bytes: {}",
        nan.raw
    );
    assert_eq!(nan.index, Some(1));
    assert_eq!(nan.sensor.as_deref(), Some("WL-UP-01"));
    let unknown = rejects
        .iter()
        .find(|x| x.reason == RejectReason::UnknownSensor)
        .unwrap();
    assert!(unknown.detail.contains("NO-SUCH"), "{}", unknown.detail);
    let readings: Vec<Reading> = drain(&r.bus, &r.topics.readings()).await;
    assert_eq!(readings.len(), 1, "the good neighbour still went through");
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_a_dead_letter() {
    let r = rig(2048).await;
    let one = format!(r#"{{"sensor":"WL-UP-01","ts":{NOW},"value":1.0}}"#);
    let body = vec![one; 100].join("\n");
    let (s, v) = post(&r.url, "application/x-ndjson", body).await;
    assert_eq!(s, 413);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit of 2048 bytes"),
        "{v}"
    );
    let rejects: Vec<Reject> = drain(&r.bus, &r.topics.rejects()).await;
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].reason, RejectReason::TooLarge);
    let readings: Vec<Reading> = drain(&r.bus, &r.topics.readings()).await;
    assert!(
        readings.is_empty(),
        "nothing of a refused body is half-accepted"
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_one_malformed_reject_and_a_400() {
    let r = rig(1 << 20).await;
    let (s, v) = post(&r.url, "application/json", "[{\"sensor\": ".to_string()).await;
    assert_eq!(s, 400);
    assert_eq!(v["rejects"][0]["reason"], "malformed");
    assert!(
        v["rejects"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("not a JSON array"),
        "{v}"
    );
}

#[tokio::test]
async fn devices_need_their_token_and_write_only_their_own_sensors() {
    let district = District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap();
    let devices = format!(
        "[[devices]]\nid = \"up01-station\"\ntoken_sha256 = \"{}\"\nsensors = [\"WL-UP-01\", \"WL-UP-01-B\"]\n",
        token_sha256("tok-up01")
    );
    let registry = DeviceRegistry::from_toml_str(&devices, &district).unwrap();
    let r = rig_with(1 << 20, Access::Devices(registry)).await;
    let mine = format!(r#"{{"sensor":"WL-UP-01","ts":{NOW},"value":5.0}}"#);
    let other = format!(r#"{{"sensor":"WL-UP-02","ts":{NOW},"value":5.0}}"#);

    let (s, v) = post_as(&r.url, "application/json", None, mine.clone()).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("missing bearer token"))
    );
    let (s, _) = post_as(&r.url, "application/json", Some("wrong"), mine.clone()).await;
    assert_eq!(s, 401);
    let (s, v) = post_as(&r.url, "application/json", Some("tok-up01"), other.clone()).await;
    assert_eq!(s, 403);
    assert_eq!(v["rejects"][0]["reason"], "forbidden");
    let (s, v) = post_as(
        &r.url,
        "application/x-ndjson",
        Some("tok-up01"),
        format!("{mine}\n{other}"),
    )
    .await;
    assert_eq!(
        (s, v["accepted"].as_u64(), v["rejected"].as_u64()),
        (200, Some(1), Some(1))
    );

    let readings: Vec<Reading> = drain(&r.bus, &r.topics.readings()).await;
    assert_eq!(
        readings
            .iter()
            .map(|x| x.sensor.as_str())
            .collect::<Vec<_>>(),
        vec!["WL-UP-01"]
    );
    let rejects: Vec<Reject> = drain(&r.bus, &r.topics.rejects()).await;
    assert_eq!(
        rejects.len(),
        2,
        "both forbidden records are dead letters; unauthenticated requests are only counted"
    );
    assert!(rejects
        .iter()
        .all(|x| x.reason == RejectReason::Forbidden && x.detail.contains("up01-station")));
}

/// One counter's value from the gateway's `/metrics`.
async fn counter(url: &str, line_prefix: &str) -> f64 {
    let text = reqwest::get(url.replace("/v1/readings", "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_device_over_its_request_rate_gets_429_and_others_are_not_held_back() {
    let district = District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap();
    let devices = format!(
        "[[devices]]\nid = \"d1\"\ntoken_sha256 = \"{}\"\nsensors = [\"WL-UP-01\"]\n\
         [[devices]]\nid = \"d2\"\ntoken_sha256 = \"{}\"\nsensors = [\"WL-UP-02\"]\n",
        token_sha256("tok-d1"),
        token_sha256("tok-d2")
    );
    let registry = DeviceRegistry::from_toml_str(&devices, &district).unwrap();
    let r = rig_limited(1 << 20, Access::Devices(registry), 3).await;
    let body = |sensor: &str, seq: u64| {
        format!(r#"{{"sensor":"{sensor}","ts":{NOW},"value":5.0,"seq":{seq}}}"#)
    };
    let before = counter(&r.url, "floodcmd_ingest_rate_limited_total ").await;
    for seq in 0..3 {
        let (s, _) = post_as(
            &r.url,
            "application/json",
            Some("tok-d1"),
            body("WL-UP-01", seq),
        )
        .await;
        assert_eq!(s, 200, "request {seq} is inside the allowance");
    }
    let resp = reqwest::Client::new()
        .post(&r.url)
        .bearer_auth("tok-d1")
        .header("content-type", "application/json")
        .body(body("WL-UP-01", 3))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let (s, _) = post_as(
        &r.url,
        "application/json",
        Some("tok-d2"),
        body("WL-UP-02", 0),
    )
    .await;
    assert_eq!(s, 200, "another device has its own allowance");
    assert!(counter(&r.url, "floodcmd_ingest_rate_limited_total ").await >= before + 1.0);

    // The refused request was not read: its reading is not on the bus and not a dead letter,
    // so the device sends it again once the window has passed, and it is taken.
    r.clock.advance(60_000);
    let (s, v) = post_as(
        &r.url,
        "application/json",
        Some("tok-d1"),
        body("WL-UP-01", 3),
    )
    .await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(1)));
    let readings: Vec<Reading> = drain(&r.bus, &r.topics.readings()).await;
    let seqs: Vec<_> = readings
        .iter()
        .filter(|x| x.sensor == "WL-UP-01")
        .map(|x| x.seq)
        .collect();
    assert_eq!(seqs, [Some(0), Some(1), Some(2), Some(3)]);
    let rejects: Vec<Reject> = drain(&r.bus, &r.topics.rejects()).await;
    assert!(rejects.is_empty(), "{rejects:?}");
}

#[tokio::test]
async fn a_replayed_sequence_number_is_refused_with_a_reason_and_counted() {
    let r = rig(1 << 20).await;
    let reading = format!(r#"{{"sensor":"WL-UP-03","ts":{NOW},"value":5.0,"seq":41}}"#);
    let before = counter(
        &r.url,
        "floodcmd_ingest_rejects_total{reason=\"duplicate_sequence\"} ",
    )
    .await;
    let (s, _) = post(&r.url, "application/json", reading.clone()).await;
    assert_eq!(s, 200);
    // The same bytes again, as an attacker replaying a captured request would send them.
    let (s, v) = post(&r.url, "application/json", reading).await;
    assert_eq!(s, 400);
    assert_eq!(v["rejects"][0]["reason"], "duplicate_sequence");
    assert!(v["rejects"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("seq 41"));
    assert!(
        counter(
            &r.url,
            "floodcmd_ingest_rejects_total{reason=\"duplicate_sequence\"} "
        )
        .await
            >= before + 1.0
    );
    let rejects: Vec<Reject> = drain(&r.bus, &r.topics.rejects()).await;
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].reason, RejectReason::DuplicateSequence);
}
