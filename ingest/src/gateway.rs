//! The gateway: bytes in from a device channel, readings and rejects out onto the bus.
//!
//! [`Gateway::ingest`] is the one path every channel (HTTP here, MQTT beside it) goes
//! through, so validation and dead-lettering cannot drift between channels.

use crate::decode::{split, Framing};
use crate::metrics::metrics;
use crate::validate::{TimeLimits, Validator};
use bytes::{Buf, Bytes};
use floodcmd_model::bus::{BusError, Producer};
use floodcmd_model::codec::encode;
use floodcmd_model::event::{Reject, RejectReason};
use floodcmd_model::time::Clock;
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use futures_util::StreamExt;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use warp::http::StatusCode;
use warp::Filter;

/// The longest slice of original bytes kept in one dead letter.
const MAX_RAW_KEPT: usize = 64 * 1024;

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Largest body accepted, bytes.
    pub max_body_bytes: u64,
    /// Time limits for readings.
    pub limits: TimeLimits,
}

/// What became of one request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IngestOutcome {
    /// Readings put on the readings topic.
    pub accepted: usize,
    /// Records put on the rejects topic.
    pub rejected: usize,
    /// Each refused record: index and reason.
    pub rejects: Vec<RejectSummary>,
}

/// One refused record in a response.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RejectSummary {
    /// Index in the request.
    pub index: usize,
    /// Reason code.
    pub reason: RejectReason,
    /// What is wrong.
    pub detail: String,
}

/// Errors of the gateway itself (not of the input).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The bus refused or failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

/// The gateway, shared by every channel.
pub struct Gateway {
    district: Arc<District>,
    validator: Mutex<Validator>,
    producer: Arc<dyn Producer>,
    topics: Topics,
    clock: Arc<dyn Clock>,
    config: GatewayConfig,
}

fn lossy_prefix(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_RAW_KEPT)]).into_owned()
}

impl Gateway {
    /// A gateway writing to `topics` through `producer`.
    pub fn new(
        district: Arc<District>,
        producer: Arc<dyn Producer>,
        topics: Topics,
        clock: Arc<dyn Clock>,
        config: GatewayConfig,
    ) -> Self {
        Gateway {
            district,
            validator: Mutex::new(Validator::new(config.limits)),
            producer,
            topics,
            clock,
            config,
        }
    }

    /// Validate a body and put every record on the bus: readings or rejects. Returns only
    /// when all of them are on the bus.
    pub async fn ingest(
        &self,
        body: &[u8],
        framing: Framing,
        source: &str,
    ) -> Result<IngestOutcome, GatewayError> {
        let now = self.clock.now_ms();
        let records = split(body, framing);
        let mut readings = Vec::with_capacity(records.len());
        let mut rejects = Vec::new();
        {
            let mut validator = self.validator.lock().expect("validator lock");
            for rec in &records {
                let verdict = match &rec.parsed {
                    Ok(device) => validator
                        .validate(&self.district, device, now)
                        .map_err(|r| (r.reason, r.detail, r.sensor)),
                    Err((reason, detail)) => Err((*reason, detail.clone(), None)),
                };
                match verdict {
                    Ok(reading) => readings.push(reading),
                    Err((reason, detail, sensor)) => rejects.push(Reject {
                        reason,
                        detail,
                        source: source.to_string(),
                        index: Some(rec.index),
                        sensor,
                        raw: lossy_prefix(rec.bytes),
                        received_ms: now,
                    }),
                }
            }
        }
        let readings_topic = self.topics.readings();
        for r in &readings {
            self.producer
                .send(&readings_topic, r.sensor.as_bytes(), encode(r), r.ts_ms)
                .await?;
        }
        metrics().accepted.inc_by(readings.len() as u64);
        let outcome = IngestOutcome {
            accepted: readings.len(),
            rejected: rejects.len(),
            rejects: rejects
                .iter()
                .map(|r| RejectSummary {
                    index: r.index.unwrap_or(0),
                    reason: r.reason,
                    detail: r.detail.clone(),
                })
                .collect(),
        };
        for r in rejects {
            self.dead_letter(r).await?;
        }
        Ok(outcome)
    }

    /// Put one reject on the rejects topic and count it.
    pub async fn dead_letter(&self, reject: Reject) -> Result<(), GatewayError> {
        metrics()
            .rejected
            .with_label_values(&[reject.reason.as_str()])
            .inc();
        tracing::debug!(reason = reject.reason.as_str(), detail = %reject.detail, source = %reject.source, "rejected");
        let key = reject
            .sensor
            .clone()
            .unwrap_or_else(|| reject.source.clone());
        self.producer
            .send(
                &self.topics.rejects(),
                key.as_bytes(),
                encode(&reject),
                reject.received_ms,
            )
            .await?;
        Ok(())
    }

    /// Refuse a body that exceeded the limit; `head` is what was read of it.
    async fn too_large(
        &self,
        head: &[u8],
        size: Option<u64>,
        source: &str,
    ) -> Result<(), GatewayError> {
        let size = size.map_or_else(|| "more than that".to_string(), |s| format!("{s} bytes"));
        self.dead_letter(Reject {
            reason: RejectReason::TooLarge,
            detail: format!(
                "body of {size} exceeds the limit of {} bytes",
                self.config.max_body_bytes
            ),
            source: source.to_string(),
            index: None,
            sensor: None,
            raw: lossy_prefix(&head[..head.len().min(1024)]),
            received_ms: self.clock.now_ms(),
        })
        .await
    }

    /// The HTTP routes: `POST /v1/readings`, `GET /healthz`.
    pub fn routes(
        self: Arc<Self>,
    ) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
        let gw = self.clone();
        let readings = warp::path!("v1" / "readings")
            .and(warp::post())
            .and(warp::header::optional::<String>("content-type"))
            .and(warp::header::optional::<u64>("content-length"))
            .and(warp::body::stream())
            .then(move |ct: Option<String>, len: Option<u64>, body| {
                let gw = gw.clone();
                async move { gw.handle_http(ct, len, body).await }
            });
        let health = warp::path!("healthz")
            .and(warp::get())
            .map(|| warp::reply::with_status("ok", StatusCode::OK).into_response());
        readings.or(health).unify()
    }

    async fn handle_http<S, B>(
        &self,
        ct: Option<String>,
        len: Option<u64>,
        mut body: S,
    ) -> warp::reply::Response
    where
        S: futures_util::Stream<Item = Result<B, warp::Error>> + Unpin + Send,
        B: Buf,
    {
        let limit = self.config.max_body_bytes;
        let reply = |status: StatusCode, json: serde_json::Value| {
            metrics()
                .requests
                .with_label_values(&[status.as_str()])
                .inc();
            warp::reply::with_status(warp::reply::json(&json), status).into_response()
        };
        let bus_down = |e: GatewayError| {
            tracing::error!(error = %e, "gateway could not write to the bus");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": e.to_string() }),
            )
        };
        if let Some(n) = len.filter(|&n| n > limit) {
            if let Err(e) = self.too_large(&[], Some(n), "http").await {
                return bus_down(e);
            }
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({ "error": format!("body of {n} bytes exceeds the limit of {limit} bytes") }),
            );
        }
        let mut buf: Vec<u8> = Vec::with_capacity(len.unwrap_or(4096).min(limit) as usize);
        while let Some(chunk) = body.next().await {
            let mut chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({ "error": format!("reading body: {e}") }),
                    )
                }
            };
            while chunk.has_remaining() {
                let part = chunk.chunk();
                buf.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
            if buf.len() as u64 > limit {
                if let Err(e) = self.too_large(&buf, None, "http").await {
                    return bus_down(e);
                }
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    serde_json::json!({ "error": format!("body exceeds the limit of {limit} bytes") }),
                );
            }
        }
        let framing = Framing::from_content_type(ct.as_deref());
        match self.ingest(&buf, framing, "http").await {
            Ok(outcome) => {
                let status = if outcome.accepted == 0 && outcome.rejected > 0 {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::OK
                };
                reply(
                    status,
                    serde_json::to_value(&outcome).expect("outcome serializes"),
                )
            }
            Err(e) => bus_down(e),
        }
    }

    /// Serve the routes on `addr` until `shutdown` resolves; returns the bound address.
    pub async fn serve(
        self: Arc<Self>,
        addr: SocketAddr,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let routes = self.routes();
        let handle = tokio::spawn(async move {
            warp::serve(routes)
                .incoming(listener)
                .graceful(shutdown)
                .run()
                .await;
        });
        Ok((bound, handle))
    }
}

/// A body as bytes, for callers that already hold it (MQTT, tests).
pub fn body(bytes: &'static [u8]) -> Bytes {
    Bytes::from_static(bytes)
}

use warp::Reply;
