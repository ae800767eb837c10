//! The command wall's actions API through the whole in-process pipeline: an underpass goes
//! red, a commander logs in and acknowledges on behalf of the point owner, two commanders
//! confirm the closure; every step comes back to the wall attributed (to the logged-in user,
//! never to a name in the body) in the incident's timeline, and the outbox sender has
//! recorded each notification as sent exactly once. Without a login the API answers 401, for
//! a viewer 403, and a viewer's payloads carry phone numbers masked.

use floodcmd::pipeline::{Pipeline, PipelineOptions};
use floodcmd_alerts::stage::read_to_end;
use floodcmd_dashboard::auth::password_sha256;
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::config::PointKind;
use floodcmd_model::event::{AlertTransition, Delivery, DeliveryState, TransitionKind};
use floodcmd_model::settings::{DashboardUser, UserRole};
use floodcmd_model::{District, Level};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn incident(http: &reqwest::Client, base: &str, point: &str) -> Option<Value> {
    let v: Value = http
        .get(format!("{base}/api/incidents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|i| i["point_id"] == point)
        .cloned()
}

async fn wait_for(
    http: &reqwest::Client,
    base: &str,
    point: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(i) = incident(http, base, point).await {
            if ok(&i) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commanders_act_through_the_wall_and_every_step_is_attributed() {
    let district = Arc::new(District::from_toml_str(floodcmd::XINCHENG_TOML).unwrap());
    let p9 = district.point("UP-09").unwrap().clone();
    let mut opts = PipelineOptions::new(district.clone());
    opts.simulate = false;
    opts.speed = 1.0;
    let user = |name: &str, role, password: &str| DashboardUser {
        name: name.into(),
        role,
        password_sha256: password_sha256(password),
    };
    opts.wall.users = vec![
        user("commander-1", UserRole::Commander, "pw-c1"),
        user("commander-2", UserRole::Admin, "pw-c2"),
        user("viewer-1", UserRole::Viewer, "pw-v1"),
    ];
    let p = Pipeline::start(opts).await.unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", p.dashboard_addr);
    let login = |name: &'static str, password: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http
                .post(format!("{base}/api/login"))
                .json(&json!({"name": name, "password": password}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "login {name}");
            let v: Value = r.json().await.unwrap();
            v["token"].as_str().unwrap().to_string()
        }
    };
    let c1 = login("commander-1", "pw-c1").await;
    let c2 = login("commander-2", "pw-c2").await;
    let v1 = login("viewer-1", "pw-v1").await;
    let r = http
        .post(format!("{base}/api/login"))
        .json(&json!({"name": "commander-1", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let now = p.clock.now_ms();
    let t = AlertTransition {
        point: "UP-09".into(),
        point_kind: PointKind::Underpass,
        transition: TransitionKind::Raised,
        from: Level::Normal,
        to: Level::Red,
        event_ms: now,
        processed_ms: now,
        rule: "depth 31.0 cm >= red 30 cm".into(),
        value: 31.0,
        rise_cm_per_min: Some(2.1),
        late: false,
        next_level: None,
        minutes_to_next: None,
        flapping: false,
    };
    use floodcmd_model::bus::Bus;
    p.bus
        .producer()
        .send(&p.topics.alerts(), b"UP-09", encode(&t), now)
        .await
        .unwrap();
    let inc = wait_for(&http, &base, "UP-09", "the red incident", |i| {
        i["closure"]["stage"] == "suggested"
    })
    .await;
    let id = inc["id"].as_str().unwrap().to_string();
    assert_eq!(inc["steps"].as_array().unwrap().len(), 5);
    let url = format!("{base}/api/incidents/{}/actions", id.replace(':', "%3A"));

    // Without a login, as a viewer, or naming someone else: refused, nothing changes.
    let ack = json!({"kind": "acknowledge", "person": p9.chain.owner_a.id});
    let r = http.post(&url).json(&ack).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(&url)
        .bearer_auth("not-a-token")
        .json(&ack)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(&url)
        .bearer_auth(&v1)
        .json(&ack)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(&url)
        .bearer_auth(&c1)
        .json(&json!({"kind": "acknowledge", "by": "someone-else"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // A viewer sees the chain's phones masked, a commander in full.
    let phone = &p9.chain.owner_a.phone;
    let as_viewer = http
        .get(format!("{base}/api/points/UP-09"))
        .bearer_auth(&v1)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!as_viewer.contains(phone.as_str()), "{as_viewer}");
    assert!(as_viewer.contains(&format!("{}****{}", &phone[..3], &phone[7..])));
    let people = http
        .get(format!("{base}/api/people"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !people.contains(phone.as_str()),
        "anonymous viewers get masked phones"
    );
    let as_commander = http
        .get(format!("{base}/api/points/UP-09"))
        .bearer_auth(&c1)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(as_commander.contains(phone.as_str()));

    // Acknowledge on behalf of the A post.
    let r = http
        .post(&url)
        .bearer_auth(&c1)
        .json(&ack)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let inc = wait_for(&http, &base, "UP-09", "the acknowledgement", |i| {
        i["steps"][0]["state"] == "acknowledged"
    })
    .await;
    let line = inc["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["what"] == "acknowledged")
        .unwrap()
        .clone();
    assert_eq!(line["by"], "commander-1");
    assert!(line["detail"]
        .as_str()
        .unwrap()
        .contains(&p9.chain.owner_a.name));

    // Two confirmations, one of them the point owner: closed.
    for (person, token) in [
        (p9.chain.grid_worker.id.clone(), &c1),
        (p9.chain.owner_a.id.clone(), &c2),
    ] {
        let r = http
            .post(&url)
            .bearer_auth(token)
            .json(&json!({"kind": "confirm_closure", "person": person}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let inc = wait_for(&http, &base, "UP-09", "the closure", |i| {
        i["closure"]["stage"] == "closed"
    })
    .await;
    assert_eq!(inc["closure"]["confirmed_by"].as_array().unwrap().len(), 2);
    let by: Vec<&str> = inc["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["what"].as_str().is_some_and(|w| w.starts_with("closure")))
        .filter_map(|l| l["by"].as_str())
        .collect();
    assert_eq!(by, ["commander-1", "commander-2"], "{inc}");

    // Bad requests name the field and change nothing.
    let r = http
        .post(&url)
        .bearer_auth(&c1)
        .json(&json!({"kind": "check_in", "lat": f64::MAX, "lon": 108.9}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().starts_with("lat:"),
        "{body}"
    );
    let r = http
        .post(&url)
        .bearer_auth(&c1)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The sender recorded every notification as sent once (the demo's console gateway).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recs = read_to_end(&p.bus, "test-deliveries", &p.topics.deliveries())
            .await
            .unwrap();
        let mut sent: HashMap<String, usize> = HashMap::new();
        for r in &recs {
            let d: Delivery = decode(&r.payload).unwrap();
            if d.state == DeliveryState::Sent {
                *sent.entry(d.key).or_default() += 1;
            }
        }
        if sent.len() >= 5 {
            assert!(sent.values().all(|c| *c == 1), "{sent:?}");
            break;
        }
        assert!(Instant::now() < deadline, "only {} sent", sent.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.stop().await;
}
