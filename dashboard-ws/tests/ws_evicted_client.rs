//! A websocket client that takes nothing from its socket for `stalled_after` is disconnected:
//! a dashboard left open on a frozen laptop must not keep a task and a socket full of
//! kernel buffers on the wall for ever. A client that reads goes on untouched beside it.
//!
//! A file of its own: the eviction counter on `/metrics` is this process's.

use floodcmd_bus::EmbeddedBus;
use floodcmd_dashboard::{serve, DashboardConfig};
use floodcmd_model::bus::Bus;
use floodcmd_model::codec::encode;
use floodcmd_model::event::{Reject, RejectReason};
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// A counter or gauge as the server's `/metrics` shows it.
async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_nothing_is_disconnected_and_a_reader_is_not() {
    let district =
        Arc::new(District::from_toml_str(include_str!("../../config/xincheng.toml")).unwrap());
    let bus = EmbeddedBus::new(64);
    let topics = Topics::new("evict");
    for t in topics.all() {
        bus.ensure_topic(&t, 2).await.unwrap();
    }
    let mut config = DashboardConfig::new(([127, 0, 0, 1], 0).into(), topics.clone(), "wall-evict");
    config.stalled_after = Duration::from_secs(1);
    let (_stop, rx) = watch::channel(false);
    let (addr, _) = serve(
        Arc::new(bus.clone()),
        district,
        Arc::new(SystemClock),
        config,
        rx,
    )
    .await
    .unwrap();
    let base = format!("http://{addr}");
    let url = format!("ws://{addr}/ws");

    // A reader, counting what it gets.
    let (reader, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let reader_task = tokio::spawn(async move {
        let mut rx = reader.split().1;
        while let Some(Ok(m)) = rx.next().await {
            if matches!(m, Message::Text(_)) {
                g.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // The stalled client: a 4 KiB receive buffer, and nothing reads it.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(addr).await.unwrap();
    let (stalled, _) = tokio_tungstenite::client_async(&url, stream).await.unwrap();
    // The handshake's answer can reach the client before the server's task for it has
    // counted it: wait for the count rather than race it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&base, "floodcmd_dashboard_ws_clients").await != 2.0 {
        assert!(std::time::Instant::now() < deadline, "both clients counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Dead letters of 16 KiB, which the wall shows: enough to fill the stalled socket's
    // buffers and block the server's writes to it.
    let producer = bus.producer();
    let garbage = "\u{fffd}".repeat(16 * 1024 / 3);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while metric(&base, "floodcmd_dashboard_ws_evicted_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stalled client was not disconnected in 60 s"
        );
        for _ in 0..10 {
            let now = SystemClock.now_ms();
            let r = Reject {
                reason: RejectReason::Malformed,
                detail: format!("garbage {n}"),
                source: "http".into(),
                index: Some(n),
                sensor: None,
                raw: garbage.clone(),
                received_ms: now,
            };
            producer
                .send(&topics.rejects(), b"http", encode(&r), now)
                .await
                .unwrap();
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(&base, "floodcmd_dashboard_ws_evicted_total").await,
        1.0,
        "only the stalled client is let go"
    );
    assert_eq!(
        metric(&base, "floodcmd_dashboard_ws_clients").await,
        1.0,
        "the reader stays connected"
    );
    // The reader keeps getting deltas after the eviction.
    let before = got.load(Ordering::SeqCst);
    let now = SystemClock.now_ms();
    let r = Reject {
        reason: RejectReason::Malformed,
        detail: "after".into(),
        source: "http".into(),
        index: None,
        sensor: None,
        raw: "x".into(),
        received_ms: now,
    };
    producer
        .send(&topics.rejects(), b"http", encode(&r), now)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.load(Ordering::SeqCst) == before {
        assert!(Instant::now() < deadline, "the reader got nothing more");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The stalled client, reading at last, finds what the kernel held and then the end.
    let mut rx = stalled.split().1;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(m)) = rx.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the evicted client's connection never ended");
    reader_task.abort();
}
