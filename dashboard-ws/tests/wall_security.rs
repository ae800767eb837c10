//! The wall's defences against a real server on the embedded bus: the websocket's Origin
//! check and token check (refused ones counted at /metrics), login rate limits per client
//! address and per user name (password guessing), action rate limits per user, and that
//! every accepted action is attributed to the logged-in user on the `actions` topic.

use floodcmd_bus::EmbeddedBus;
use floodcmd_dashboard::auth::{password_sha256, AuthConfig};
use floodcmd_dashboard::{serve, DashboardConfig};
use floodcmd_model::bus::{Assignment, Bus};
use floodcmd_model::codec::decode;
use floodcmd_model::event::Action;
use floodcmd_model::settings::{DashboardUser, UserRole};
use floodcmd_model::time::SystemClock;
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

struct Wall {
    addr: SocketAddr,
    bus: EmbeddedBus,
    topics: Topics,
    _stop: watch::Sender<bool>,
}

async fn start(edit: impl FnOnce(&mut DashboardConfig)) -> Wall {
    let district =
        Arc::new(District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap());
    let bus = EmbeddedBus::new(65_536);
    let topics = Topics::default();
    for t in topics.all() {
        bus.ensure_topic(&t, 2).await.unwrap();
    }
    let mut config = DashboardConfig::new(([127, 0, 0, 1], 0).into(), topics.clone(), "sec-test");
    let user = |name: &str, role| DashboardUser {
        name: name.into(),
        role,
        password_sha256: password_sha256(&format!("pw-{name}")),
    };
    config.auth = AuthConfig {
        users: vec![
            user("commander", UserRole::Commander),
            user("admin", UserRole::Admin),
            user("viewer", UserRole::Viewer),
        ],
        anonymous: false,
        ..AuthConfig::default()
    };
    edit(&mut config);
    let (stop, rx) = watch::channel(false);
    let (addr, _) = serve(
        Arc::new(bus.clone()),
        district,
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
        _stop: stop,
    }
}

impl Wall {
    /// Open `/ws<query>` with an optional Origin header; the HTTP status of a refusal, or 101.
    /// The status of a websocket request offering `token` as the page does (subprotocol).
    async fn ws_status(&self, token: Option<&str>, origin: Option<&str>) -> u16 {
        self.ws_status_at("", token, origin).await
    }

    async fn ws_status_at(&self, query: &str, token: Option<&str>, origin: Option<&str>) -> u16 {
        let mut req = format!("ws://{}/ws{query}", self.addr)
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        if let Some(t) = token {
            req.headers_mut().insert(
                "sec-websocket-protocol",
                format!("floodcmd, bearer.{t}").parse().unwrap(),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((_ws, resp)) => resp.status().as_u16(),
            Err(WsError::Http(r)) => r.status().as_u16(),
            Err(e) => panic!("websocket: {e}"),
        }
    }

    /// `POST /api/login` from the local address `from` (127.0.0.x are all loopback).
    async fn login_from(&self, from: [u8; 4], name: &str, password: &str) -> (u16, Value) {
        let client = reqwest::Client::builder()
            .local_address(IpAddr::from(from))
            .build()
            .unwrap();
        let r = client
            .post(format!("http://{}/api/login", self.addr))
            .json(&json!({"name": name, "password": password}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
        (status, r.json().await.unwrap_or_default())
    }

    async fn login(&self, name: &str) -> String {
        let (s, v) = self
            .login_from([127, 0, 0, 1], name, &format!("pw-{name}"))
            .await;
        assert_eq!(s, 200, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    async fn act(&self, token: Option<&str>, body: Value) -> u16 {
        let mut req = reqwest::Client::new()
            .post(format!(
                "http://{}/api/incidents/UP-01%3Awater%3A1/actions",
                self.addr
            ))
            .json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap().status().as_u16()
    }

    /// One labelled counter from /metrics (0 when absent).
    async fn refused(&self, what: &str, reason: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let prefix =
            format!("floodcmd_dashboard_refused_total{{reason=\"{reason}\",what=\"{what}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_checks_origin_and_token_and_counts_refusals() {
    let wall = start(|_| {}).await;
    let token = wall.login("viewer").await;
    let q = Some(token.as_str());
    let own = format!("http://{}", wall.addr);
    let origin_before = wall.refused("ws", "origin").await;
    let token_before = wall.refused("ws", "token").await;

    // A page on another site, even with a valid token in hand: 403, before the upgrade.
    assert_eq!(wall.ws_status(q, Some("http://evil.example")).await, 403);
    assert_eq!(wall.ws_status(q, Some("null")).await, 403);
    // The wall's own page, and a client that is not a browser (no Origin): accepted.
    assert_eq!(wall.ws_status(q, Some(&own)).await, 101);
    assert_eq!(wall.ws_status(q, None).await, 101);
    // No token (this wall allows no anonymous viewers) or an unknown one: 401.
    assert_eq!(wall.ws_status(None, Some(&own)).await, 401);
    assert_eq!(wall.ws_status(Some("forged"), Some(&own)).await, 401);
    // A token in the URL would sit in proxies' logs: refused (400) even when it is valid.
    assert_eq!(
        wall.ws_status_at(&format!("?token={token}"), None, Some(&own))
            .await,
        400
    );
    // A logged-out token is dead.
    reqwest::Client::new()
        .post(format!("{own}/api/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(wall.ws_status(q, Some(&own)).await, 401);

    assert!(wall.refused("ws", "origin").await >= origin_before + 2.0);
    assert!(wall.refused("ws", "token").await >= token_before + 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_login_cannot_open_the_websocket() {
    let wall = start(|c| c.auth.session_ms = 1).await;
    let token = wall.login("commander").await;
    // The login lasted 1 ms; 50 ms later it is certainly over.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(wall.ws_status(Some(&token), None).await, 401);
    assert_eq!(
        wall.act(Some(&token), json!({"kind": "acknowledge"})).await,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_origins_replace_the_same_host_rule() {
    let wall = start(|c| {
        c.auth.anonymous = true;
        c.allowed_origins = vec!["https://wall.example.org".into()];
    })
    .await;
    let own = format!("http://{}", wall.addr);
    assert_eq!(
        wall.ws_status(None, Some("https://wall.example.org")).await,
        101
    );
    assert_eq!(wall.ws_status(None, Some(&own)).await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_stopped_per_address_and_per_name() {
    let wall = start(|c| c.auth.login_per_min = 3).await;
    let before = wall.refused("login", "rate_addr").await;

    // One address: three wrong guesses are answered 401, the fourth attempt 429, and then
    // even the right password from that address waits.
    for _ in 0..3 {
        let (s, _) = wall.login_from([127, 0, 0, 2], "admin", "guess").await;
        assert_eq!(s, 401);
    }
    assert_eq!(
        wall.login_from([127, 0, 0, 2], "admin", "guess").await.0,
        429
    );
    assert_eq!(
        wall.login_from([127, 0, 0, 2], "viewer", "pw-viewer")
            .await
            .0,
        429
    );
    assert!(wall.refused("login", "rate_addr").await >= before + 2.0);

    // The name "admin" has had 3 failures within the minute: guesses from a fresh address
    // are refused before the password is looked at, and so is the right password.
    let (s, v) = wall.login_from([127, 0, 0, 3], "admin", "pw-admin").await;
    assert_eq!(s, 429, "{v}");
    // Another name from a fresh address is untouched.
    let (s, v) = wall
        .login_from([127, 0, 0, 4], "commander", "pw-commander")
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["token"].as_str().is_some_and(|t| t.len() == 64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_a_commander_are_limited_per_user_and_attributed() {
    // Three requests a minute; a refused body counts too, or bad bodies would be a free flood.
    let wall = start(|c| c.auth.actions_per_min = 3).await;
    let commander = wall.login("commander").await;
    let viewer = wall.login("viewer").await;
    let ack = json!({"kind": "acknowledge"});

    assert_eq!(wall.act(None, ack.clone()).await, 401);
    assert_eq!(wall.act(Some("forged"), ack.clone()).await, 401);
    assert_eq!(wall.act(Some(&viewer), ack.clone()).await, 403);
    assert_eq!(
        wall.act(
            Some(&commander),
            json!({"kind": "acknowledge", "by": "admin"})
        )
        .await,
        400,
        "nobody acts in another's name"
    );
    assert_eq!(wall.act(Some(&commander), ack.clone()).await, 202);
    assert_eq!(
        wall.act(Some(&commander), json!({"kind": "note", "text": "去现场"}))
            .await,
        202
    );
    assert_eq!(wall.act(Some(&commander), ack.clone()).await, 429);
    // A second login of the same user shares the allowance; another user has their own.
    let again = wall.login("commander").await;
    assert_eq!(wall.act(Some(&again), ack.clone()).await, 429);
    let admin = wall.login("admin").await;
    assert_eq!(wall.act(Some(&admin), ack.clone()).await, 202);

    // Exactly the three accepted actions reached the bus, each attributed to its login.
    let mut c = wall
        .bus
        .consumer("check", &wall.topics.actions(), Assignment::All)
        .await
        .unwrap();
    let mut actions = Vec::new();
    loop {
        let batch = c.poll(100, Duration::from_millis(200)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        actions.extend(batch.iter().map(|r| decode::<Action>(&r.payload).unwrap()));
    }
    // One incident is one key, so one partition: the actions read back in order.
    let who: Vec<(&str, &str)> = actions
        .iter()
        .map(|a| (a.by.as_str(), a.kind.as_str()))
        .collect();
    assert_eq!(
        who,
        [
            ("commander", "acknowledged"),
            ("commander", "note"),
            ("admin", "acknowledged")
        ]
    );
    assert!(actions.iter().all(|a| a.incident == "UP-01:water:1"));
}
