//! Mass alerting: one red storm step notifies `recipients` distinct phones through the SMPP
//! simulator (scripts/smsc.sh) with the real client and dispatcher, first with no rate limit,
//! then with a token bucket, to show what the SMSC link carries and how a contracted rate
//! shapes it. Each run binds with its own system_id and checks with the simulator that every
//! recipient got exactly one message.

use crate::kafka::BenchError;
use crate::report::{Machine, Report};
use floodcmd_sms::dispatch::Route;
use floodcmd_sms::smpp::{SmppConfig, SmppGateway};
use floodcmd_sms::{DispatchConfig, Dispatcher, SmsGateway, SmsMessage};
use futures::stream::{self, StreamExt};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The text every recipient gets: one UCS-2 SMS.
const TEXT: &str =
    "【新城区防汛】红色预警 解放门下穿 积水32cm ↑2.1cm/分 请立即封闭并到岗 回复1确认";

/// One measured run.
struct Run {
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Completions per wall-clock second, in order: the shape of the send.
    per_second: Vec<u64>,
    receipts: usize,
}

async fn run(
    smsc: &str,
    control: &str,
    recipients: usize,
    rate_per_s: f64,
    window: usize,
    concurrency: usize,
) -> Result<Run, BenchError> {
    let system_id = format!("bench{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut cfg = SmppConfig::new("smpp-bench", smsc, &system_id, "pw", "10690001");
    cfg.window = window;
    let gateway = Arc::new(SmppGateway::new(cfg));
    if !gateway.wait_bound(Duration::from_secs(10)).await {
        return Err(BenchError::Other(format!(
            "cannot bind to the SMSC simulator at {smsc} (start it: scripts/smsc.sh start)"
        )));
    }
    let dispatcher = Arc::new(Dispatcher::new(
        vec![Route {
            gateway: gateway.clone(),
            rate_per_s,
        }],
        DispatchConfig::default(),
    ));
    let mut receipts = dispatcher.receipts();
    let counting = tokio::spawn(async move {
        let mut n = 0usize;
        while receipts.recv().await.is_ok() {
            n += 1;
        }
        n
    });
    // Messages are built before the clock starts: formatting them is not the send's cost.
    let messages: Vec<SmsMessage> = (0..recipients)
        .map(|i| SmsMessage {
            key: format!("bench-storm/red/{i}"),
            phone: format!("+86139{i:08}"),
            text: TEXT.into(),
        })
        .collect();
    let start = Instant::now();
    let done: Vec<(f64, f64)> = stream::iter(messages)
        .map(|m| {
            let d = dispatcher.clone();
            async move {
                let t = Instant::now();
                let r = d.send(&m).await;
                if let Err(e) = &r {
                    eprintln!("sms bench: {e}");
                }
                (
                    t.elapsed().as_secs_f64() * 1000.0,
                    start.elapsed().as_secs_f64(),
                )
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let secs = start.elapsed().as_secs_f64();

    let mut lat: Vec<f64> = done.iter().map(|d| d.0).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    let mut per_second = vec![0u64; secs.ceil().max(1.0) as usize];
    for (_, at) in &done {
        let i = (*at as usize).min(per_second.len() - 1);
        per_second[i] += 1;
    }

    let accepted = check_simulator(control, &system_id, recipients).await?;
    // Receipts trail the submits by the simulator's receipt delay; give them a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    gateway.close().await;
    drop(dispatcher);
    drop(gateway);
    let receipts = tokio::time::timeout(Duration::from_secs(5), counting)
        .await
        .map_err(|_| BenchError::Other("receipt counter did not stop".into()))?
        .map_err(|e| BenchError::Other(e.to_string()))?;
    eprintln!(
        "sms bench: rate {rate_per_s}/s window {window}: {accepted} accepted in {secs:.2} s, {receipts} receipts"
    );
    Ok(Run {
        secs,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        per_second,
        receipts,
    })
}

/// Every recipient exactly once in the simulator's record; then forget them there.
async fn check_simulator(
    control: &str,
    system_id: &str,
    recipients: usize,
) -> Result<usize, BenchError> {
    let http = reqwest::Client::new();
    let got: Vec<serde_json::Value> = http
        .get(format!("{control}/messages?system_id={system_id}"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| BenchError::Other(format!("simulator control: {e}")))?
        .json()
        .await
        .map_err(|e| BenchError::Other(format!("simulator control: {e}")))?;
    let accepted: Vec<&str> = got
        .iter()
        .filter(|m| m["command_status"] == 0)
        .filter_map(|m| m["destination"].as_str())
        .collect();
    let distinct: HashSet<&str> = accepted.iter().copied().collect();
    if accepted.len() != recipients || distinct.len() != recipients {
        return Err(BenchError::Other(format!(
            "the simulator accepted {} messages for {} distinct recipients; expected {recipients} each",
            accepted.len(),
            distinct.len()
        )));
    }
    let _ = http
        .post(format!("{control}/reset?system_id={system_id}"))
        .send()
        .await;
    Ok(accepted.len())
}

/// The `sms` scenario: `recipients` messages with no limit (window 10 and 50), then limited
/// to `rate_per_s` (window 10).
pub async fn mass_alert(
    smsc: &str,
    recipients: usize,
    rate_per_s: f64,
    concurrency: usize,
    command: &str,
) -> Result<Report, BenchError> {
    let (host, port) = smsc
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| BenchError::Other(format!("--smsc {smsc} is not host:port")))?;
    let control = format!("http://{host}:{}", port + 1);
    let free10 = run(smsc, &control, recipients, 0.0, 10, concurrency).await?;
    let free50 = run(smsc, &control, recipients, 0.0, 50, concurrency).await?;
    let limited = run(smsc, &control, recipients, rate_per_s, 10, concurrency).await?;

    let mut r = Report {
        scenario: "sms".into(),
        command: command.into(),
        machine: Machine::here(),
        params: serde_json::json!({
            "recipients": recipients,
            "text_parts": floodcmd_sms::smpp::segment::count(TEXT),
            "concurrent_sends": concurrency,
            "rate_limit_per_s": rate_per_s,
            "smsc": "scripts/smsc.sh (node smpp 0.5.1), one transceiver bind, delivery receipts on",
            "per_second_unlimited_window_10": free10.per_second,
            "per_second_unlimited_window_50": free50.per_second,
            "per_second_rate_limited": limited.per_second,
            "receipts": [free10.receipts, free50.receipts, limited.receipts],
        }),
        figures: Vec::new(),
    };
    let n = recipients as f64;
    let best = (n / free10.secs).max(n / free50.secs);
    r.figure("no limit, window 10", n / free10.secs, "msg/s");
    r.figure("no limit, window 50", n / free50.secs, "msg/s");
    r.figure_vs(
        &format!("limited to {rate_per_s}/s, window 10"),
        n / limited.secs,
        "msg/s",
        rate_per_s,
        "the configured rate",
    );
    r.figure(
        &format!("all {recipients} sent, no limit (window 50)"),
        free50.secs * 1000.0,
        "ms",
    );
    r.figure(
        &format!("all {recipients} sent at {rate_per_s}/s"),
        limited.secs * 1000.0,
        "ms",
    );
    r.figure("latency p50, no limit (window 10)", free10.p50_ms, "ms");
    r.figure("latency p99, no limit (window 10)", free10.p99_ms, "ms");
    r.figure(
        &format!("latency p50, limited to {rate_per_s}/s"),
        limited.p50_ms,
        "ms",
    );
    r.figure(
        &format!("latency p99, limited to {rate_per_s}/s"),
        limited.p99_ms,
        "ms",
    );
    let steady: Vec<u64> = limited
        .per_second
        .iter()
        .copied()
        .skip(1)
        .take(limited.per_second.len().saturating_sub(2))
        .collect();
    if !steady.is_empty() {
        r.figure(
            "limited: slowest full second",
            *steady.iter().min().expect("non-empty") as f64,
            "msg/s",
        );
        r.figure(
            "limited: fastest full second",
            *steady.iter().max().expect("non-empty") as f64,
            "msg/s",
        );
    }
    r.figure_vs(
        "limited vs unlimited throughput",
        n / limited.secs,
        "msg/s",
        best,
        "unlimited",
    );
    Ok(r)
}
