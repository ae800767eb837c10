//! The gateway: bytes in from a device channel, readings and rejects out onto the bus.
//!
//! [`Gateway::ingest`] is the one path every channel (HTTP here, MQTT in [`crate::mqtt`]) goes
//! through, so authorisation, validation and dead-lettering cannot drift between channels.
//! A request is answered only after everything it carried is on the bus; when the bus cannot
//! take more, the answer says exactly which records were not accepted (429 over HTTP), so a
//! device sends those again and nothing is accepted and then dropped.

use crate::auth::{Device, DeviceRegistry};
use crate::decode::{split, Framing};
use crate::metrics::metrics;
use crate::validate::{TimeLimits, Validator};
use bytes::Buf;
use floodcmd_model::bus::{BusError, Outgoing, Producer};
use floodcmd_model::codec::encode;
use floodcmd_model::event::{Reject, RejectReason};
use floodcmd_model::limit::RateLimiter;
use floodcmd_model::time::Clock;
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use futures::StreamExt;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use warp::http::{HeaderValue, StatusCode};
use warp::{Filter, Reply};

/// The longest slice of original bytes kept in one dead letter.
const MAX_RAW_KEPT: usize = 64 * 1024;

/// Who may write.
#[derive(Clone, Debug)]
pub enum Access {
    /// Anyone (the in-process demo, tests of validation alone).
    Open,
    /// Devices with bearer tokens, each limited to its own sensors.
    Devices(DeviceRegistry),
}

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Largest body accepted, bytes.
    pub max_body_bytes: u64,
    /// Time limits for readings.
    pub limits: TimeLimits,
    /// Who may write.
    pub access: Access,
    /// HTTP requests per minute one device may make (past it: 429 with `Retry-After`,
    /// counted, nothing read); 0: no limit. Open access is not limited per device.
    pub device_requests_per_min: u32,
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
    /// The bus refused or failed for some records: the device must send those again.
    #[error("bus: {cause}; {accepted} accepted, {} not accepted", not_accepted.len())]
    Incomplete {
        /// Readings that are on the bus.
        accepted: usize,
        /// Indexes of records that are not (the device sends them again).
        not_accepted: Vec<usize>,
        /// True when the bus is full (back off and retry) rather than failing.
        busy: bool,
        /// What the bus said.
        cause: BusError,
    },
}

/// The gateway, shared by every channel.
pub struct Gateway {
    district: Arc<District>,
    validator: Mutex<Validator>,
    producer: Arc<dyn Producer>,
    topics: Topics,
    clock: Arc<dyn Clock>,
    config: GatewayConfig,
    /// Requests per device.
    per_device: RateLimiter,
}

fn lossy_prefix(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_RAW_KEPT)]).into_owned()
}

fn reply(status: StatusCode, json: serde_json::Value) -> warp::reply::Response {
    metrics()
        .requests
        .with_label_values(&[status.as_str()])
        .inc();
    warp::reply::with_status(warp::reply::json(&json), status).into_response()
}

fn with_header(
    mut r: warp::reply::Response,
    name: &'static str,
    value: &'static str,
) -> warp::reply::Response {
    r.headers_mut()
        .insert(name, HeaderValue::from_static(value));
    r
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
            per_device: RateLimiter::per_minute(config.device_requests_per_min, clock.clone()),
            producer,
            topics,
            clock,
            config,
        }
    }

    /// Who may write through this gateway.
    pub fn access(&self) -> &Access {
        &self.config.access
    }

    /// The gateway's "now" (processing time for dead letters).
    pub fn now_ms(&self) -> floodcmd_model::time::Millis {
        self.clock.now_ms()
    }

    /// Validate a body and put every record on the bus: readings or rejects. `device` is the
    /// authenticated sender (`None` when access is open). Returns only when all of them are on
    /// the bus, or says which are not.
    pub async fn ingest(
        &self,
        body: &[u8],
        framing: Framing,
        source: &str,
        device: Option<&Device>,
    ) -> Result<IngestOutcome, GatewayError> {
        let now = self.clock.now_ms();
        let records = split(body, framing);
        let mut readings = Vec::with_capacity(records.len());
        let mut rejects = Vec::new();
        {
            let mut validator = self.validator.lock().expect("validator lock");
            for rec in &records {
                let verdict = match &rec.parsed {
                    Ok(r) if device.is_some_and(|d| !d.may_write(&r.sensor)) => Err((
                        RejectReason::Forbidden,
                        format!(
                            "device \"{}\" may not write sensor \"{}\"",
                            device.map_or("", |d| d.id.as_str()),
                            r.sensor
                        ),
                        Some(r.sensor.clone()),
                    )),
                    Ok(r) => validator
                        .validate(&self.district, r, now)
                        .map_err(|r| (r.reason, r.detail, r.sensor)),
                    Err((reason, detail)) => Err((*reason, detail.clone(), None)),
                };
                match verdict {
                    Ok(reading) => readings.push((rec.index, reading)),
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
        // One batch for the whole body, enqueued in body order, so one sensor's readings keep
        // their order; the bus acknowledges it with one wakeup.
        let batch = readings
            .iter()
            .map(|(_, r)| Outgoing {
                key: bytes::Bytes::copy_from_slice(r.sensor.as_bytes()),
                payload: encode(r),
                timestamp_ms: r.ts_ms,
                key_hash: None,
            })
            .collect();
        let results = self.producer.send_batch(&readings_topic, batch).await;
        let mut accepted = 0;
        let mut not_accepted = Vec::new();
        let mut failure: Option<BusError> = None;
        for ((index, reading), result) in readings.iter().zip(results) {
            match result {
                Ok(_) => accepted += 1,
                Err(e) => {
                    not_accepted.push(*index);
                    failure.get_or_insert(e);
                    // The device sends it again: that must not count as a duplicate.
                    if let Some(seq) = reading.seq {
                        self.validator
                            .lock()
                            .expect("validator lock")
                            .forget(&reading.sensor, seq);
                    }
                }
            }
        }
        metrics().accepted.inc_by(accepted as u64);
        let outcome = IngestOutcome {
            accepted,
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
        let indexes: Vec<usize> = rejects.iter().map(|r| r.index.unwrap_or(0)).collect();
        let dead =
            futures::future::join_all(rejects.into_iter().map(|r| self.dead_letter(r))).await;
        for (index, result) in indexes.into_iter().zip(dead) {
            if let Err(e) = result {
                not_accepted.push(index);
                failure.get_or_insert(e);
            }
        }
        match failure {
            None => Ok(outcome),
            Some(cause) => Err(GatewayError::Incomplete {
                accepted,
                busy: matches!(cause, BusError::Timeout { .. }),
                not_accepted,
                cause,
            }),
        }
    }

    /// Put one reject on the rejects topic and count it.
    pub async fn dead_letter(&self, reject: Reject) -> Result<(), BusError> {
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
    ) -> Result<(), BusError> {
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
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::stream())
            .then(
                move |ct: Option<String>, len: Option<u64>, auth: Option<String>, body| {
                    let gw = gw.clone();
                    async move { gw.handle_http(ct, len, auth, body).await }
                },
            );
        let health = warp::path!("healthz")
            .and(warp::get())
            .map(|| warp::reply::with_status("ok", StatusCode::OK).into_response());
        let metrics_route = warp::path!("metrics").and(warp::get()).map(|| {
            let mut buf = Vec::new();
            let enc = prometheus::TextEncoder::new();
            match prometheus::Encoder::encode(
                &enc,
                &prometheus::default_registry().gather(),
                &mut buf,
            ) {
                Ok(()) => warp::reply::with_header(buf, "content-type", prometheus::TEXT_FORMAT)
                    .into_response(),
                Err(e) => warp::reply::with_status(
                    format!("metrics: {e}"),
                    StatusCode::INTERNAL_SERVER_ERROR,
                )
                .into_response(),
            }
        });
        readings.or(health).unify().or(metrics_route).unify()
    }

    /// The device behind an `Authorization` header; `Err` says why there is none.
    fn authenticate(&self, auth: Option<&str>) -> Result<Option<&Device>, &'static str> {
        match &self.config.access {
            Access::Open => Ok(None),
            Access::Devices(registry) => {
                // The scheme is case-insensitive (RFC 7235).
                let token = auth.and_then(|a| {
                    a.get(..7)
                        .filter(|p| p.eq_ignore_ascii_case("bearer "))
                        .map(|_| a[7..].trim())
                });
                match token.and_then(|t| registry.authenticate(t)) {
                    Some(d) => Ok(Some(d)),
                    None => {
                        if token.is_some() {
                            Err("unknown device token")
                        } else {
                            Err("missing bearer token")
                        }
                    }
                }
            }
        }
    }

    fn bus_down(e: &BusError) -> warp::reply::Response {
        tracing::error!(error = %e, "gateway could not write to the bus");
        let r = reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": e.to_string() }),
        );
        with_header(r, "retry-after", "5")
    }

    async fn handle_http<S, B>(
        &self,
        ct: Option<String>,
        len: Option<u64>,
        auth: Option<String>,
        mut body: S,
    ) -> warp::reply::Response
    where
        S: futures::Stream<Item = Result<B, warp::Error>> + Unpin + Send,
        B: Buf,
    {
        let device = match self.authenticate(auth.as_deref()) {
            Ok(d) => d,
            Err(why) => {
                let r = reply(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({ "error": why }),
                );
                return with_header(r, "www-authenticate", "Bearer");
            }
        };
        // A device past its allowance is told to wait before anything is read: the body is
        // not bad input, so no dead letter; the device keeps its backlog and sends it later.
        if let Some(d) = device {
            if let Err(wait) = self.per_device.hit(&d.id) {
                metrics().rate_limited.inc();
                tracing::warn!(device = %d.id, "device over its request rate; 429");
                let mut r = reply(
                    StatusCode::TOO_MANY_REQUESTS,
                    serde_json::json!({ "error": format!("device \"{}\" is over {} requests a minute; retry in {wait} s", d.id, self.config.device_requests_per_min) }),
                );
                r.headers_mut().insert(
                    "retry-after",
                    HeaderValue::from_str(&wait.to_string()).expect("digits"),
                );
                return r;
            }
        }
        let limit = self.config.max_body_bytes;
        if let Some(n) = len.filter(|&n| n > limit) {
            if let Err(e) = self.too_large(&[], Some(n), "http").await {
                return Self::bus_down(&e);
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
                    );
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
                    return Self::bus_down(&e);
                }
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    serde_json::json!({ "error": format!("body exceeds the limit of {limit} bytes") }),
                );
            }
        }
        let framing = Framing::from_content_type(ct.as_deref());
        match self.ingest(&buf, framing, "http", device).await {
            Ok(outcome) => {
                let all_forbidden = outcome
                    .rejects
                    .iter()
                    .all(|r| r.reason == RejectReason::Forbidden);
                let status = match (outcome.accepted, outcome.rejected) {
                    (0, n) if n > 0 && all_forbidden => StatusCode::FORBIDDEN,
                    (0, n) if n > 0 => StatusCode::BAD_REQUEST,
                    _ => StatusCode::OK,
                };
                reply(
                    status,
                    serde_json::to_value(&outcome).expect("outcome serializes"),
                )
            }
            Err(GatewayError::Incomplete {
                accepted,
                not_accepted,
                busy,
                cause,
            }) => {
                tracing::warn!(error = %cause, accepted, not_accepted = not_accepted.len(), "the bus could not take a whole request");
                let (status, retry) = if busy {
                    (StatusCode::TOO_MANY_REQUESTS, "1")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "5")
                };
                let r = reply(
                    status,
                    serde_json::json!({ "error": cause.to_string(), "accepted": accepted, "not_accepted": not_accepted }),
                );
                with_header(r, "retry-after", retry)
            }
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
