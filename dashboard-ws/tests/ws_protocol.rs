//! The command wall's websocket protocol and REST against a real server on the embedded bus:
//! a snapshot built for the session (phones masked for viewers), deltas that hold each point
//! at most once with its newest state, a reconnect that resumes with only what was missed,
//! a resume from another run that gets a snapshot, a refused token, the history endpoint,
//! a reading shown live ahead of its status, a wall that allows no anonymous viewers, and the
//! wall's own framing: compression agreed with a client that offers it, pings, closes and
//! the close codes of protocol errors.

use bytes::Bytes;
use floodcmd_bus::EmbeddedBus;
use floodcmd_dashboard::auth::{password_sha256, AuthConfig};
use floodcmd_dashboard::{serve, DashboardConfig};
use floodcmd_model::bus::{partition_for, Bus, Outgoing};
use floodcmd_model::codec::encode;
use floodcmd_model::event::PointStatus;
use floodcmd_model::settings::{DashboardUser, UserRole};
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::{DataState, District, Level, Reading, SensorKind};
use floodcmd_ws_frames::deflate::inflate;
use floodcmd_ws_frames::frame::client_frame;
use floodcmd_ws_frames::handshake::{connect, ClientConnection};
use floodcmd_ws_frames::Incoming;
use futures::StreamExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

type Ws = futures::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a message within 30 s")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

struct Wall {
    addr: SocketAddr,
    bus: EmbeddedBus,
    topics: Topics,
    district: Arc<District>,
    _stop: watch::Sender<bool>,
}

async fn start(anonymous: bool) -> Wall {
    let district =
        Arc::new(District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap());
    let bus = EmbeddedBus::new(65_536);
    let topics = Topics::default();
    for t in topics.all() {
        bus.ensure_topic(&t, 2).await.unwrap();
    }
    let mut config = DashboardConfig::new(([127, 0, 0, 1], 0).into(), topics.clone(), "wall-test");
    let user = |name: &str, role| DashboardUser {
        name: name.into(),
        role,
        password_sha256: password_sha256(&format!("pw-{name}")),
    };
    config.auth = AuthConfig {
        users: vec![
            user("commander", UserRole::Commander),
            user("viewer", UserRole::Viewer),
        ],
        anonymous,
        session_ms: 3_600_000,
        ..AuthConfig::default()
    };
    let (stop, rx) = watch::channel(false);
    let (addr, _) = serve(
        Arc::new(bus.clone()),
        district.clone(),
        Arc::new(SystemClock),
        config,
        rx,
    )
    .await
    .unwrap();
    Wall {
        addr,
        bus,
        topics,
        district,
        _stop: stop,
    }
}

impl Wall {
    async fn status(&self, point: &str, depth: f64) {
        let s = PointStatus {
            rise_cm_per_min: Some(0.5),
            ..status_at(self, point, depth, Level::Blue)
        };
        let now = s.as_of_ms;
        self.bus
            .producer()
            .send(&self.topics.status(), point.as_bytes(), encode(&s), now)
            .await
            .unwrap();
    }

    /// Records on the rejects topic so far.
    async fn rejects(&self) -> u64 {
        let ends = self.bus.end_offsets(&self.topics.rejects()).await.unwrap();
        ends.iter().sum()
    }

    async fn connect(&self, query: &str) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws{query}", self.addr))
            .await
            .unwrap();
        ws.split().1
    }

    /// Connect as the page does: the token offered as the subprotocol `bearer.<token>` beside
    /// `floodcmd`, which the wall must name in its answer.
    async fn connect_with_token(&self, token: &str) -> Ws {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            format!("floodcmd, bearer.{token}").parse().unwrap(),
        );
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(
            resp.headers()["sec-websocket-protocol"],
            "floodcmd",
            "the wall names its protocol, never echoes the token"
        );
        ws.split().1
    }

    async fn login(&self, name: &str) -> String {
        let v: Value = reqwest::Client::new()
            .post(format!("http://{}/api/login", self.addr))
            .json(&json!({"name": name, "password": format!("pw-{name}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["token"].as_str().unwrap().to_string()
    }
}

/// Read deltas until one shows `point` at `depth`; every delta holds a point at most once.
async fn until_depth(ws: &mut Ws, point: &str, depth: f64) -> Value {
    loop {
        let m = next_json(ws).await;
        assert_eq!(m["type"], "delta", "{m}");
        let points: Vec<&Value> = m["points"]
            .as_array()
            .unwrap()
            .iter()
            .chain(m["patches"].as_array().unwrap())
            .collect();
        let mut ids: Vec<&str> = points.iter().map(|p| p["id"].as_str().unwrap()).collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "a point twice in one delta: {m}");
        if points
            .iter()
            .any(|p| p["id"] == point && p["depth_cm"] == depth)
        {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_deltas_and_a_reconnect_that_resumes_with_only_what_was_missed() {
    let wall = start(true).await;
    let phone = wall
        .district
        .point("UP-01")
        .unwrap()
        .chain
        .owner_a
        .phone
        .clone();
    let owner = wall
        .district
        .point("UP-01")
        .unwrap()
        .chain
        .owner_a
        .id
        .clone();

    // An anonymous viewer: a snapshot of every point, phones masked.
    let mut ws = wall.connect("").await;
    let snap = next_json(&mut ws).await;
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["points"].as_array().unwrap().len(), 74);
    assert_eq!(snap["can_act"], false);
    let masked = snap["people"][&owner]["phone"].as_str().unwrap();
    assert_eq!(masked, format!("{}****{}", &phone[..3], &phone[7..]));
    assert!(snap["now_ms"].is_i64());
    let epoch = snap["epoch"].as_str().unwrap().to_string();

    // A burst of statuses: deltas carry each point once, with its newest depth.
    for i in 0..50 {
        wall.status("UP-01", i as f64).await;
    }
    let d = until_depth(&mut ws, "UP-01", 49.0).await;
    let seq = d["seq"].as_u64().unwrap();
    assert!(seq > snap["seq"].as_u64().unwrap());

    // Gone; the district moves on meanwhile; back with resume: only what was missed.
    drop(ws);
    wall.status("UP-02", 12.5).await;
    wall.status("UP-01", 50.0).await;
    // Wait until the server has folded both.
    let http = reqwest::Client::new();
    loop {
        let points: Vec<Value> = http
            .get(format!("http://{}/api/points", wall.addr))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let depth = |id: &str| points.iter().find(|p| p["id"] == id).unwrap()["depth_cm"].clone();
        if depth("UP-01") == 50.0 && depth("UP-02") == 12.5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ws = wall.connect(&format!("?resume={epoch}.{seq}")).await;
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "delta", "{first}");
    assert_eq!(first["resumed"], true);
    let depths: Vec<(String, f64)> = first["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["depth_cm"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(depths.contains(&("UP-01".into(), 50.0)), "{depths:?}");
    assert!(depths.contains(&("UP-02".into(), 12.5)), "{depths:?}");
    assert!(first["seq"].as_u64().unwrap() > seq);

    // A resume from another run of the server: a snapshot.
    let mut ws = wall.connect("?resume=0000000000000000.3").await;
    assert_eq!(next_json(&mut ws).await["type"], "snapshot");

    // A commander's snapshot has phones in full; a bad token is refused before the upgrade.
    let token = wall.login("commander").await;
    let mut ws = wall.connect_with_token(&token).await;
    let snap = next_json(&mut ws).await;
    assert_eq!(snap["people"][&owner]["phone"], phone.as_str());
    assert_eq!(snap["can_act"], true);
    assert_eq!(snap["session"]["name"], "commander");
    let mut bad = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        format!("ws://{}/ws", wall.addr)
            .into_client_request()
            .unwrap()
    };
    bad.headers_mut().insert(
        "sec-websocket-protocol",
        "floodcmd, bearer.nope".parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }

    // The point panel's history: the depths, newest minute's last value.
    let h: Value = http
        .get(format!(
            "http://{}/api/points/UP-01/history?hours=6",
            wall.addr
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let depth = h["depth"].as_array().unwrap();
    assert_eq!(depth.last().unwrap()[1], 50.0, "{h}");
    assert!(h["rain_gauge"].is_string());
    for (q, code) in [("UP-01/history?hours=9", 400), ("NOPE/history", 404)] {
        let r = http
            .get(format!("http://{}/api/points/{q}", wall.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), code, "{q}");
    }
}

/// A reading on the readings topic reaches the wall as the point's live depth with no status
/// for it (the stream stage's comes seconds later); a record there the wall cannot decode is
/// counted and skipped, not dead-lettered a second time (the stream stage does that), and
/// the wall goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_reaches_clients_as_the_live_depth_without_its_status() {
    let wall = start(true).await;
    let mut ws = wall.connect("").await;
    assert_eq!(next_json(&mut ws).await["type"], "snapshot");
    let sensor = wall.district.sensor("WL-UP-01-B").unwrap();
    let offset = sensor.sensor.calibration_offset_cm;
    let now = SystemClock.now_ms();
    let p = wall.bus.producer();
    p.send(
        &wall.topics.readings(),
        b"WL-UP-01-B",
        b"{not json".to_vec().into(),
        now,
    )
    .await
    .unwrap();
    let reading = Reading {
        sensor: "WL-UP-01-B".into(),
        point: "UP-01".into(),
        kind: SensorKind::Depth,
        ts_ms: now,
        value: 33.5,
        seq: None,
        received_ms: now,
    };
    p.send(
        &wall.topics.readings(),
        b"WL-UP-01-B",
        encode(&reading),
        now,
    )
    .await
    .unwrap();
    let live = loop {
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "delta", "{m}");
        // Live rows, `[id, live_depth_cm, live_ms]`, apart from the patches.
        let found = m["live"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row[0] == "UP-01")
            .cloned();
        if let Some(row) = found {
            // Only the live depth moved: no patch for the point (level and data state are
            // the stage's).
            let patched = m["patches"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == "UP-01");
            assert!(!patched, "{m}");
            break row;
        }
    };
    assert_eq!(live, json!(["UP-01", 33.5 + offset, now]));
    // The undecodable record: counted, and nothing on rejects from the wall.
    let metrics = reqwest::get(format!("http://{}/metrics", wall.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let undecodable = metrics
        .lines()
        .find_map(|l| l.strip_prefix("floodcmd_dashboard_undecodable_readings_total "))
        .expect("the counter is exported");
    assert!(
        undecodable.trim().parse::<f64>().unwrap() >= 1.0,
        "{undecodable}"
    );
    let rejects = wall.bus.end_offsets(&wall.topics.rejects()).await.unwrap();
    assert!(rejects.iter().all(|&o| o == 0), "{rejects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_anonymous_viewing_every_read_needs_a_login() {
    let wall = start(false).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", wall.addr);
    for path in [
        "/api/points",
        "/api/incidents",
        "/api/people",
        "/api/points/UP-01",
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", wall.addr)).await;
    assert!(
        matches!(refused, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 401),
        "{refused:?}"
    );
    let token = wall.login("viewer").await;
    let r = http
        .get(format!("{base}/api/points"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let me: Value = http
        .get(format!("{base}/api/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        me,
        json!({"name": "viewer", "role": "viewer", "can_act": false})
    );
    // The page itself loads without a login (it shows the login form).
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/assets/app.js"));
    let logout = http
        .post(format!("{base}/api/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let r = http
        .get(format!("{base}/api/points"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// The next message off a connection of the wall's own client, inflated when compressed;
/// control frames as they came.
async fn next_incoming(c: &mut ClientConnection) -> Option<Incoming> {
    tokio::time::timeout(Duration::from_secs(30), c.reader.next())
        .await
        .expect("a frame within 30 s")
        .expect("a well-formed frame")
}

fn json_of(m: &Incoming) -> Option<(bool, Value)> {
    let Incoming::Data {
        text: true,
        compressed,
        payload,
    } = m
    else {
        return None;
    };
    let text = if *compressed {
        inflate(payload, 64 << 20).unwrap()
    } else {
        payload.to_vec()
    };
    Some((*compressed, serde_json::from_slice(&text).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_pings_closes_and_protocol_errors_on_the_wall_s_own_framing() {
    use tokio::io::AsyncWriteExt;
    let wall = start(true).await;
    let url = format!("ws://{}/ws", wall.addr);
    const MASK: [u8; 4] = [1, 2, 3, 4];

    // A client that offers permessage-deflate, as browsers do, gets compressed frames.
    let mut c = connect(&url, None, true, 64 << 20).await.unwrap();
    assert!(c.deflate, "the wall agreed to compress");
    assert_eq!(
        c.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let first = next_incoming(&mut c).await.unwrap();
    let (compressed, snapshot) = json_of(&first).unwrap();
    assert!(compressed, "a snapshot is worth compressing");
    assert_eq!(snapshot["type"], "snapshot");
    // Inflated as RFC 7692 says, with zlib alone (not this crate's inflater): raw deflate,
    // the sync flush's four bytes put back.
    let Incoming::Data { payload, .. } = &first else {
        unreachable!()
    };
    let mut raw = flate2::Decompress::new(false);
    let mut text = Vec::with_capacity(16 << 20);
    raw.decompress_vec(
        &[&payload[..], &[0, 0, 0xff, 0xff]].concat(),
        &mut text,
        flate2::FlushDecompress::Sync,
    )
    .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&text).unwrap(), snapshot);
    wall.status("UP-01", 42.0).await;
    loop {
        let (_, m) = json_of(&next_incoming(&mut c).await.unwrap()).unwrap();
        assert_eq!(m["type"], "delta", "{m}");
        let mut changed = m["points"].as_array().unwrap().iter();
        if changed.any(|p| p["id"] == "UP-01" && p["depth_cm"] == 42.0)
            || m["patches"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["id"] == "UP-01" && p["depth_cm"] == 42.0)
        {
            break;
        }
    }
    // A ping is answered with its payload; a close is answered with a close.
    c.writer
        .write_all(&client_frame(0x9, true, false, b"are you there", MASK))
        .await
        .unwrap();
    loop {
        match next_incoming(&mut c).await.unwrap() {
            Incoming::Pong(p) => break assert_eq!(&p[..], b"are you there"),
            m => assert!(json_of(&m).is_some(), "{m:?}"),
        }
    }
    c.writer
        .write_all(&client_frame(
            0x8,
            true,
            false,
            &1000u16.to_be_bytes(),
            MASK,
        ))
        .await
        .unwrap();
    loop {
        match next_incoming(&mut c).await {
            Some(Incoming::Close(code)) => break assert_eq!(code, Some(1000)),
            Some(m) => assert!(json_of(&m).is_some(), "{m:?}"),
            None => panic!("closed without a close frame"),
        }
    }

    // A client that does not offer it gets plain frames.
    let mut plain = connect(&url, None, false, 64 << 20).await.unwrap();
    assert!(!plain.deflate);
    let (compressed, m) = json_of(&next_incoming(&mut plain).await.unwrap()).unwrap();
    assert!(!compressed);
    assert_eq!(m["type"], "snapshot");

    // A client that breaks the protocol is told why, by close code, and let go: an unmasked
    // frame (1002), a compressed one without having agreed to compression (1002), a message
    // over 64 KiB (1009).
    for (frame, code) in [
        (vec![0x81, 0x01, b'x'], 1002),
        (client_frame(0x1, true, true, b"x", MASK), 1002),
        (
            client_frame(0x1, true, false, &vec![b'a'; 70_000], MASK),
            1009,
        ),
    ] {
        let mut c = connect(&url, None, false, 64 << 20).await.unwrap();
        c.writer.write_all(&frame).await.unwrap();
        loop {
            match next_incoming(&mut c).await {
                Some(Incoming::Close(got)) => break assert_eq!(got, Some(code)),
                Some(m) => assert!(json_of(&m).is_some(), "{m:?}"),
                None => panic!("closed without a close frame, expected {code}"),
            }
        }
    }
}

/// A status of `point` at `depth` and `level`, fresh, stamped now.
fn status_at(wall: &Wall, point: &str, depth: f64, level: Level) -> PointStatus {
    let p = wall.district.point(point).unwrap();
    let now = SystemClock.now_ms();
    PointStatus {
        point: point.into(),
        kind: p.kind,
        level,
        data_state: DataState::Fresh,
        depth_cm: Some(depth),
        rise_cm_per_min: None,
        rain_10m_mm: None,
        rain_1h_mm: None,
        rain_3h_mm: None,
        rain_24h_mm: None,
        last_reading_ms: Some(now),
        qc_flags: Vec::new(),
        next_level: None,
        minutes_to_next: None,
        flapping: false,
        as_of_ms: now,
    }
}

fn outgoing(s: &PointStatus) -> Outgoing {
    Outgoing {
        key: Bytes::copy_from_slice(s.point.as_bytes()),
        payload: encode(s),
        timestamp_ms: s.as_of_ms,
        key_hash: None,
    }
}

/// In a burst of depth-only statuses larger than a tick's share, a level change goes ahead of
/// them, taking the same point's earlier statuses along in order (none is dropped, none lands
/// after it and takes the level back); a record of that point that does not decode is still
/// dead-lettered; a later depth-only status of the point is paced, and the level stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_change_is_folded_ahead_of_a_burst_of_depth_only_statuses() {
    let wall = start(true).await;
    let mut ws = wall.connect("").await;
    assert_eq!(next_json(&mut ws).await["type"], "snapshot");
    let topic = wall.topics.status();
    let producer = wall.bus.producer();
    // Every point heard from first (its first status is urgent: silent → fresh).
    let all: Vec<PointStatus> = wall
        .district
        .points
        .iter()
        .map(|p| status_at(&wall, &p.id, 5.0, Level::Normal))
        .collect();
    for r in producer
        .send_batch(&topic, all.iter().map(outgoing).collect())
        .await
    {
        r.unwrap();
    }
    until_depth(&mut ws, &all.last().unwrap().point, 5.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One partition's points, so the burst is one append the follower reads in one batch.
    let partitions = wall.bus.partitions(&topic).await.unwrap();
    let home = partition_for(b"UP-01", partitions);
    let others: Vec<&str> = wall
        .district
        .points
        .iter()
        .map(|p| p.id.as_str())
        .filter(|id| *id != "UP-01" && partition_for(id.as_bytes(), partitions) == home)
        .collect();
    // 1,022 depth-only statuses (more than the 1,000 a tick lets through), one of them
    // UP-01's and one an undecodable record keyed UP-01, then UP-01 turning red, then a
    // depth-only status of UP-01 at the new level.
    let mut burst: Vec<PointStatus> = (0..1_022)
        .map(|k| {
            status_at(
                &wall,
                others[k % others.len()],
                20.0 + k as f64 / 100.0,
                Level::Normal,
            )
        })
        .collect();
    burst[500] = status_at(&wall, "UP-01", 1.0, Level::Normal);
    burst.push(status_at(&wall, "UP-01", 99.0, Level::Red));
    burst.push(status_at(&wall, "UP-01", 100.0, Level::Red));
    let last_paced = burst[1_021].clone();
    let mut records: Vec<Outgoing> = burst.iter().map(outgoing).collect();
    records[300] = Outgoing {
        key: Bytes::from_static(b"UP-01"),
        payload: Bytes::from_static(b"{not a status"),
        timestamp_ms: SystemClock.now_ms(),
        key_hash: None,
    };
    let rejects_before = wall.rejects().await;
    for r in producer.send_batch(&topic, records).await {
        r.unwrap();
    }
    let (mut red_at, mut last_at) = (None, None);
    let mut n = 0;
    while last_at.is_none() {
        let m = next_json(&mut ws).await;
        n += 1;
        for p in m["points"]
            .as_array()
            .unwrap()
            .iter()
            .chain(m["patches"].as_array().unwrap())
        {
            if p["id"] == "UP-01" && p["level"] == "red" {
                red_at.get_or_insert(n);
            }
            if p["id"] == "UP-01" && red_at.is_some() && !p["level"].is_null() {
                assert_eq!(
                    p["level"], "red",
                    "an older status landed after the red one"
                );
            }
            if p["id"] == last_paced.point.as_str() && p["depth_cm"] == last_paced.depth_cm.unwrap()
            {
                last_at = Some(n);
            }
        }
    }
    let red_at = red_at.expect("UP-01 turned red before the burst was through");
    assert!(
        red_at < last_at.unwrap(),
        "red in delta {red_at}, the burst's last in {last_at:?}"
    );
    // UP-01 stays red, at the later status's 100 cm.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let view: Value = reqwest::get(format!("http://{}/api/points", wall.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let up = view
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "UP-01")
        .unwrap();
    assert_eq!(
        (&up["level"], &up["depth_cm"]),
        (&json!("red"), &json!(100.0)),
        "{up}"
    );
    // The undecodable record went to rejects, though a record of its key jumped ahead.
    let rejects_after = wall.rejects().await;
    assert_eq!(rejects_after, rejects_before + 1);
}
