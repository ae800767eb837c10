//! The whole pipeline in one process, as `floodcmd demo` runs it: the simulated storm drives
//! an underpass to red, the wall shows it over REST and the websocket, and a NaN reading is
//! dead-lettered with a reason while everything keeps running.

use floodcmd::pipeline::{Pipeline, PipelineOptions};
use floodcmd_model::bus::{Assignment, Bus};
use floodcmd_model::codec::decode;
use floodcmd_model::event::{Reject, RejectReason};
use floodcmd_model::District;
use futures::StreamExt;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a message within 30 s")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storm_raises_a_red_underpass_on_the_wall_and_bad_readings_are_dead_lettered() {
    let district = Arc::new(District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    let mut opts = PipelineOptions::new(district.clone());
    opts.simulate = true;
    opts.speed = 60.0; // the demo's default
    let p = Pipeline::start(opts).await.unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", p.dashboard_addr);

    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", p.dashboard_addr))
        .await
        .unwrap();
    let (_tx, mut ws) = ws.split();
    let snapshot = next_json(&mut ws).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(
        snapshot["points"].as_array().unwrap().len(),
        district.points.len()
    );

    // Wait for a delta that carries a red incident at an underpass.
    let deadline = Instant::now() + Duration::from_secs(120);
    let red_point = loop {
        assert!(
            Instant::now() < deadline,
            "no underpass went red within 120 s"
        );
        let m = next_json(&mut ws).await;
        if m["type"] != "delta" {
            continue;
        }
        let red = m["incidents"].as_array().unwrap().iter().find(|i| {
            i["level"] == "red"
                && i["state"] == "open"
                && district
                    .point(i["point_id"].as_str().unwrap())
                    .unwrap()
                    .kind
                    == floodcmd_model::config::PointKind::Underpass
        });
        if let Some(i) = red {
            break i["point_id"].as_str().unwrap().to_string();
        }
    };

    let incidents: Vec<Value> = http
        .get(format!("{base}/api/incidents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let inc = incidents
        .iter()
        .find(|i| i["point_id"] == red_point.as_str())
        .expect("the red incident is on /api/incidents");
    assert_eq!(inc["level"], "red");
    assert!(inc["id"].is_string() && inc["opened_at"].is_i64());
    assert_eq!(incidents[0]["level"], "red", "most severe first");
    let points: Vec<Value> = http
        .get(format!("{base}/api/points"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pv = points
        .iter()
        .find(|x| x["id"] == red_point.as_str())
        .unwrap();
    assert_eq!(
        (pv["kind"].as_str(), pv["level"].as_str()),
        (Some("underpass"), Some("red"))
    );
    assert!(pv["depth_cm"].as_f64().unwrap() >= 22.0, "{pv}");
    for x in &points {
        for field in ["id", "name", "kind", "level", "data_state"] {
            assert!(x[field].is_string(), "{field} in {x}");
        }
    }

    // A device sends NaN: it is refused with a reason and kept as a dead letter.
    // Subscribe first: the embedded bus keeps a record only until every group has read it.
    let mut rejects = p
        .bus
        .consumer("test-rejects", &p.topics.rejects(), Assignment::All)
        .await
        .unwrap();
    let accepted_before = p.sim_report.accepted.load(Ordering::Relaxed);
    let now = p.clock.now_ms();
    let resp = http
        .post(format!("http://{}/v1/readings", p.ingest_addr))
        .bearer_auth(&p.device_token)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"sensor":"WL-UP-01","ts":{now},"value":"NaN","seq":999999}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["rejects"][0]["reason"], "not_a_number");
    let mut found = None;
    while found.is_none() {
        let batch = rejects.poll(100, Duration::from_secs(5)).await.unwrap();
        assert!(!batch.is_empty(), "the reject reached the rejects topic");
        found = batch
            .iter()
            .map(|r| decode::<Reject>(&r.payload).unwrap())
            .find(|r| r.raw.contains("999999"));
    }
    let dead = found.unwrap();
    assert_eq!(dead.reason, RejectReason::NotANumber);
    assert!(dead.detail.contains("NaN"), "{}", dead.detail);

    // ... and the pipeline keeps running: more readings accepted, more deltas on the wall.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.sim_report.accepted.load(Ordering::Relaxed) <= accepted_before {
        assert!(
            Instant::now() < deadline,
            "ingest stopped after the bad reading"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let later = next_json(&mut ws).await;
    assert!(later["type"] == "delta" || later["type"] == "snapshot");
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("floodcmd_ingest_rejects_total{reason=\"not_a_number\"}"),
        "rejects are counted"
    );
    assert!(
        metrics.contains("floodcmd_stream_outputs_total"),
        "{metrics}"
    );
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let page = http
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<html") && page.contains("/assets/app.js"));
    p.stop().await;
}
