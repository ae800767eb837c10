//! Ingest counters, registered once in the process's Prometheus registry.

use prometheus::{IntCounter, IntCounterVec, Opts};
use std::sync::OnceLock;

/// The counters.
pub struct IngestMetrics {
    /// Readings accepted onto the bus.
    pub accepted: IntCounter,
    /// Records refused, by reason.
    pub rejected: IntCounterVec,
    /// Requests by HTTP status.
    pub requests: IntCounterVec,
    /// Requests refused because their device was over its rate.
    pub rate_limited: IntCounter,
}

/// The process-wide ingest counters.
pub fn metrics() -> &'static IngestMetrics {
    static M: OnceLock<IngestMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = IngestMetrics {
            accepted: IntCounter::new(
                "floodcmd_ingest_readings_accepted_total",
                "Readings accepted onto the readings topic",
            )
            .expect("metric"),
            rejected: IntCounterVec::new(
                Opts::new(
                    "floodcmd_ingest_rejects_total",
                    "Records refused and sent to the rejects topic",
                ),
                &["reason"],
            )
            .expect("metric"),
            requests: IntCounterVec::new(
                Opts::new(
                    "floodcmd_ingest_requests_total",
                    "Gateway requests by status",
                ),
                &["status"],
            )
            .expect("metric"),
            rate_limited: IntCounter::new(
                "floodcmd_ingest_rate_limited_total",
                "Device requests refused with 429 for exceeding ingest.device_requests_per_min",
            )
            .expect("metric"),
        };
        let r = prometheus::default_registry();
        // Registering twice (two gateways in one test process) is harmless: keep the first.
        let _ = r.register(Box::new(m.accepted.clone()));
        let _ = r.register(Box::new(m.rejected.clone()));
        let _ = r.register(Box::new(m.requests.clone()));
        let _ = r.register(Box::new(m.rate_limited.clone()));
        m
    })
}
