//! HTTP and websocket routes, and the bus followers that keep [`WallState`] current.
//!
//! Websocket protocol (see `docs/WEBSOCKET.md`): on connect a `snapshot`, then `delta`
//! messages, coalesced to at most one per 100 ms per client. Each client has its own bounded
//! queue (a broadcast receiver); a client that falls behind by more than the queue gets a
//! fresh snapshot instead of the backlog, and never slows the others.

use crate::state::{Change, PendingDelta, WallState};
use floodcmd_model::bus::{Assignment, Bus, BusError, Producer};
use floodcmd_model::codec::{decode, encode};
use floodcmd_model::event::Reject;
use floodcmd_model::time::Clock;
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use futures::{SinkExt, StreamExt};
use prometheus::{Encoder, IntCounter, IntGauge};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use warp::http::StatusCode;
use warp::ws::{Message, WebSocket};
use warp::{Filter, Reply};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// How many changes a client may fall behind before it is re-synchronised with a snapshot.
const CLIENT_QUEUE: usize = 4096;
/// How much of each topic a starting wall folds to rebuild its view.
const REBUILD_MS: i64 = 25 * 3_600_000;
/// Deltas per client are sent at most this often.
const DELTA_EVERY: Duration = Duration::from_millis(100);

/// Settings of the dashboard.
#[derive(Clone, Debug)]
pub struct DashboardConfig {
    /// Listen address (port 0 picks one).
    pub listen: SocketAddr,
    /// Topics.
    pub topics: Topics,
    /// Consumer group (one per dashboard instance: each instance sees everything).
    pub group: String,
}

/// Errors starting the dashboard.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

struct WallMetrics {
    clients: IntGauge,
    deltas: IntCounter,
    resyncs: IntCounter,
}

fn metrics() -> &'static WallMetrics {
    static M: OnceLock<WallMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = WallMetrics {
            clients: IntGauge::new(
                "floodcmd_dashboard_ws_clients",
                "Connected websocket clients",
            )
            .expect("metric"),
            deltas: IntCounter::new(
                "floodcmd_dashboard_ws_deltas_total",
                "Delta messages sent to websocket clients",
            )
            .expect("metric"),
            resyncs: IntCounter::new(
                "floodcmd_dashboard_ws_resyncs_total",
                "Snapshots sent to clients that fell behind",
            )
            .expect("metric"),
        };
        let r = prometheus::default_registry();
        let _ = r.register(Box::new(m.clients.clone()));
        let _ = r.register(Box::new(m.deltas.clone()));
        let _ = r.register(Box::new(m.resyncs.clone()));
        m
    })
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<WallState>>,
    changes: broadcast::Sender<Change>,
    seq: Arc<AtomicU64>,
}

impl Shared {
    fn apply(&self, f: impl FnOnce(&mut WallState) -> Vec<Change>) {
        // Broadcast under the lock: a snapshot taken under the same lock is then exactly the
        // state before the changes its subscriber receives next, never after some of them.
        let mut state = self.state.lock().expect("wall state lock");
        for c in f(&mut state) {
            // No receivers is fine: nobody is watching.
            let _ = self.changes.send(c);
        }
    }

    /// A snapshot and a receiver that starts right after it.
    fn snapshot(&self) -> (String, broadcast::Receiver<Change>) {
        let state = self.state.lock().expect("wall state lock");
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        (state.snapshot(seq).to_string(), self.changes.subscribe())
    }
}

/// What every bus follower of one dashboard shares.
#[derive(Clone)]
struct Follower {
    bus: Arc<dyn Bus>,
    producer: Arc<dyn Producer>,
    clock: Arc<dyn Clock>,
    topics: Topics,
    group: String,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
}

impl Follower {
    /// Follow `topic` into the wall state with `fold`, on its own task.
    fn spawn<T: DeserializeOwned + Send + 'static>(
        &self,
        topic: String,
        fold: fn(&mut WallState, T) -> Vec<Change>,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.follow(&topic, fold).await {
                tracing::error!(error = %e, topic, "dashboard follower stopped");
            }
        });
    }

    async fn follow<T: DeserializeOwned>(
        mut self,
        topic: &str,
        fold: fn(&mut WallState, T) -> Vec<Change>,
    ) -> Result<(), BusError> {
        // The wall's view lives in memory: on every start, fold the last day of each topic
        // again rather than resume at the group's commit, or a restarted wall would show
        // every point that has not changed since as silent.
        let since = self.clock.now_ms() - REBUILD_MS;
        let starts = self.bus.offsets_for_time(topic, since).await?;
        let positions = starts
            .into_iter()
            .enumerate()
            .map(|(p, o)| (p as u32, Some(o)))
            .collect();
        let mut consumer = self
            .bus
            .consumer(&self.group, topic, Assignment::Positions(positions))
            .await?;
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => return Ok(()),
                batch = consumer.poll(1024, Duration::from_millis(500)) => {
                    let batch = batch?;
                    let mut last = std::collections::BTreeMap::new();
                    for rec in &batch {
                        match decode::<T>(&rec.payload) {
                            Ok(v) => self.shared.apply(|s| fold(s, v)),
                            Err(e) if topic == self.topics.rejects() => {
                                // Dead-lettering a dead letter would loop; log it and go on.
                                tracing::error!(error = %e, offset = rec.offset, "undecodable record on the rejects topic");
                            }
                            Err(e) => {
                                let reject = Reject::undecodable(rec, &e, self.clock.now_ms());
                                self.producer.send(&self.topics.rejects(), &rec.key, encode(&reject), reject.received_ms).await?;
                            }
                        }
                        last.insert(rec.partition, rec.offset + 1);
                    }
                    for (p, next) in last {
                        consumer.commit(p, next).await?;
                    }
                }
            }
        }
    }
}

async fn client(ws: WebSocket, shared: Shared) {
    let (mut tx, mut rx_ws) = ws.split();
    metrics().clients.inc();
    let (first, mut changes) = shared.snapshot();
    if tx.send(Message::text(first)).await.is_err() {
        metrics().clients.dec();
        return;
    }
    let mut pending = PendingDelta::default();
    let mut tick = tokio::time::interval(DELTA_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                Ok(c) => pending.add(c),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "websocket client fell behind; re-synchronising");
                    metrics().resyncs.inc();
                    pending = PendingDelta::default();
                    // A fresh receiver with the fresh snapshot: the old backlog is stale.
                    let (snap, fresh) = shared.snapshot();
                    changes = fresh;
                    if tx.send(Message::text(snap)).await.is_err() { break; }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                if !pending.is_empty() {
                    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
                    let msg = pending.take(seq).to_string();
                    metrics().deltas.inc();
                    if tx.send(Message::text(msg)).await.is_err() { break; }
                }
            }
            incoming = rx_ws.next() => match incoming {
                Some(Ok(m)) if m.is_close() => break,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    metrics().clients.dec();
}

fn json<T: serde::Serialize>(v: &T) -> warp::reply::Response {
    warp::reply::json(v).into_response()
}

/// Start following the bus and serving; returns the bound address.
pub async fn serve(
    bus: Arc<dyn Bus>,
    district: Arc<District>,
    clock: Arc<dyn Clock>,
    config: DashboardConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), DashboardError> {
    let (changes, _) = broadcast::channel(CLIENT_QUEUE);
    let shared = Shared {
        state: Arc::new(Mutex::new(WallState::new(district))),
        changes,
        seq: Arc::new(AtomicU64::new(1)),
    };
    let t = config.topics.clone();
    let follower = Follower {
        bus: bus.clone(),
        producer: bus.producer(),
        clock,
        topics: t.clone(),
        group: config.group.clone(),
        shared: shared.clone(),
        shutdown: shutdown.clone(),
    };
    follower.spawn(t.status(), WallState::on_status);
    follower.spawn(t.incidents(), WallState::on_incident);
    follower.spawn(t.alerts(), WallState::on_alert);
    follower.spawn(t.notifications(), WallState::on_notification);
    follower.spawn(t.rejects(), WallState::on_reject);

    let with_shared = {
        let shared = shared.clone();
        warp::any().map(move || shared.clone())
    };
    let index = warp::path::end()
        .and(warp::get())
        .map(|| warp::reply::html(INDEX_HTML).into_response());
    let app_js = warp::path!("assets" / "app.js").map(|| {
        warp::reply::with_header(
            APP_JS,
            "content-type",
            "application/javascript; charset=utf-8",
        )
        .into_response()
    });
    let style = warp::path!("assets" / "style.css").map(|| {
        warp::reply::with_header(STYLE_CSS, "content-type", "text/css; charset=utf-8")
            .into_response()
    });
    let health = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::with_status("ok", StatusCode::OK).into_response());
    let points = warp::path!("api" / "points")
        .and(warp::get())
        .and(with_shared.clone())
        .map(|s: Shared| json(&s.state.lock().expect("wall state lock").points()));
    let incidents = warp::path!("api" / "incidents")
        .and(warp::get())
        .and(with_shared.clone())
        .map(|s: Shared| json(&s.state.lock().expect("wall state lock").incidents()));
    let metrics_route = warp::path!("metrics").and(warp::get()).map(|| {
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode(&prometheus::default_registry().gather(), &mut buf) {
            return warp::reply::with_status(
                format!("metrics: {e}"),
                StatusCode::INTERNAL_SERVER_ERROR,
            )
            .into_response();
        }
        warp::reply::with_header(buf, "content-type", enc.format_type().to_string()).into_response()
    });
    let ws =
        warp::path!("ws")
            .and(warp::ws())
            .and(with_shared)
            .map(|ws: warp::ws::Ws, s: Shared| {
                ws.max_message_size(64 * 1024)
                    .on_upgrade(move |socket| client(socket, s))
                    .into_response()
            });
    let routes = index
        .or(app_js)
        .unify()
        .or(style)
        .unify()
        .or(health)
        .unify()
        .or(points)
        .unify()
        .or(incidents)
        .unify()
        .or(metrics_route)
        .unify()
        .or(ws)
        .unify();

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| DashboardError::Bind {
            addr: config.listen,
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| DashboardError::Bind {
            addr: config.listen,
            source,
        })?;
    let mut stop = shutdown;
    let handle = tokio::spawn(async move {
        warp::serve(routes)
            .incoming(listener)
            .graceful(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .run()
            .await;
    });
    Ok((bound, handle))
}
