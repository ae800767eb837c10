//! SMS counters per gateway, registered once in the process's Prometheus registry. One type
//! owns the names so the dispatcher's logs and counters cannot drift apart.

use prometheus::{IntCounterVec, Opts};
use std::sync::OnceLock;

/// The counters, each labelled by gateway name.
pub(crate) struct SmsMetrics {
    /// Messages a gateway accepted.
    pub sent: IntCounterVec,
    /// Attempts that failed (unavailable or rejected).
    pub failed: IntCounterVec,
    /// Attempts a gateway throttled.
    pub throttled: IntCounterVec,
    /// Times a message moved on from this gateway to the next one.
    pub fallback: IntCounterVec,
}

fn counter(name: &str, help: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &["gateway"]).expect("valid metric")
}

/// The process-wide SMS counters.
pub(crate) fn metrics() -> &'static SmsMetrics {
    static M: OnceLock<SmsMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = SmsMetrics {
            sent: counter("floodcmd_sms_sent_total", "SMS accepted by a gateway"),
            failed: counter(
                "floodcmd_sms_failed_total",
                "SMS attempts that failed (gateway unavailable or message rejected)",
            ),
            throttled: counter(
                "floodcmd_sms_throttled_total",
                "SMS attempts the gateway throttled",
            ),
            fallback: counter(
                "floodcmd_sms_fallback_total",
                "SMS moved on from this gateway to the next because it was unavailable",
            ),
        };
        let r = prometheus::default_registry();
        // Another registration of the same names (a second crate version in one process) keeps
        // the first; counting still works on ours.
        for c in [&m.sent, &m.failed, &m.throttled, &m.fallback] {
            let _ = r.register(Box::new(c.clone()));
        }
        m
    })
}
