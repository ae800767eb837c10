//! HTTP gateway throughput: clients post batched NDJSON to the real gateway, which validates
//! every record and produces it to Kafka through the Kafka bus. Reported beside the raw
//! produce ceiling measured in the same run.

use crate::kafka::{measure, BenchError};
use crate::report::{Machine, Report};
use floodcmd_bus::{KafkaBus, KafkaConfig};
use floodcmd_ingest::validate::TimeLimits;
use floodcmd_ingest::{Access, Gateway, GatewayConfig};
use floodcmd_model::bus::Bus;
use floodcmd_model::time::{Clock, SystemClock};
use floodcmd_model::topic::Topics;
use floodcmd_model::District;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `gateway` scenario: `readings` in batches of `batch` from `clients` concurrent clients.
pub async fn throughput(
    bootstrap: &str,
    readings: u64,
    batch: usize,
    clients: usize,
    command: &str,
) -> Result<Report, BenchError> {
    let ceiling = {
        let b = bootstrap.to_string();
        let n = readings;
        tokio::task::spawn_blocking(move || measure(&b, n, 4))
            .await
            .map_err(|e| BenchError::Other(e.to_string()))??
    };
    let sensors = 10_000;
    let district = Arc::new(
        District::from_file(floodcmd_sim::synthetic_district(sensors))
            .map_err(|e| BenchError::Other(e.to_string()))?,
    );
    let topics = Topics::new(format!("bench{}", std::process::id()));
    let bus =
        KafkaBus::new(KafkaConfig::new(bootstrap)).map_err(|e| BenchError::Other(e.to_string()))?;
    for t in topics.all() {
        bus.ensure_topic(&t, 4)
            .await
            .map_err(|e| BenchError::Other(e.to_string()))?;
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let gateway = Arc::new(Gateway::new(
        district,
        bus.producer(),
        topics,
        clock.clone(),
        GatewayConfig {
            max_body_bytes: 64 * 1024 * 1024,
            limits: TimeLimits {
                max_future_ms: 300_000,
                retention_ms: 72 * 3_600_000,
            },
            access: Access::Open,
            device_requests_per_min: 0,
        },
    ));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, _h) = gateway
        .serve(([127, 0, 0, 1], 0).into(), async move {
            let _ = rx.await;
        })
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let url = format!("http://{addr}/v1/readings");
    let batches = readings.div_ceil(batch as u64);
    // Bodies are built before the clock starts: the load generator's own JSON formatting is
    // not the gateway's cost (both share this machine's two cores while sending).
    let now = clock.now_ms();
    let bodies: Arc<Vec<bytes::Bytes>> = Arc::new(
        (0..batches)
            .map(|b| {
                let mut body = String::with_capacity(batch * 80);
                for i in 0..batch as u64 {
                    let n = b * batch as u64 + i;
                    body.push_str(&format!(
                        "{{\"sensor\":\"SW-{}\",\"ts\":{},\"value\":{}.5,\"seq\":{}}}\n",
                        n % sensors as u64,
                        now - 1000 + (n % 1000) as i64,
                        n % 50,
                        n
                    ));
                }
                bytes::Bytes::from(body)
            })
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, next, accepted, bodies) =
            (url.clone(), next.clone(), accepted.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                if b >= batches {
                    return;
                }
                let body = bodies[b as usize].clone();
                match client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(resp) => {
                        let status = resp.status();
                        let v: serde_json::Value = resp.json().await.unwrap_or_default();
                        if !status.is_success() {
                            eprintln!("gateway bench: {status}: {}", v["error"]);
                        }
                        accepted.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    }
                    Err(e) => eprintln!("gateway bench: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = tx.send(());
    let got = accepted.load(Ordering::Relaxed);
    let mut r = Report {
        scenario: "gateway".into(),
        command: command.into(),
        machine: Machine::here(),
        params: serde_json::json!({ "readings": readings, "batch": batch, "clients": clients, "sensors": sensors, "bus": "kafka, 4 partitions, acks=all" }),
        figures: Vec::new(),
    };
    r.figure(
        "raw produce ceiling, same run",
        ceiling.produce_per_s,
        "records/s",
    );
    r.figure_vs(
        "HTTP gateway → Kafka (validated, acknowledged)",
        got as f64 / secs,
        "readings/s",
        ceiling.produce_per_s,
        "raw produce",
    );
    r.figure("readings accepted", got as f64, "readings");
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(r)
}
