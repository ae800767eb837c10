//! Time as the stages see it: milliseconds since the Unix epoch, UTC.
//!
//! Event time (when a sensor measured) is carried in records; processing time (now) is read
//! through a [`Clock`] so that a simulated storm running at 60× and a test with a hand-driven
//! clock see the same code paths as production.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type Millis = i64;

/// A source of "now" in milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now_ms(&self) -> Millis;
}

/// The machine's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that runs `speed` times faster than the wall clock from a chosen start.
/// The demo's storm and every stage of the demo share one, so "now" means simulated now.
#[derive(Clone, Debug)]
pub struct ScaledClock {
    start_sim: Millis,
    start_real: std::time::Instant,
    speed: f64,
}

impl ScaledClock {
    /// Simulated time `start_sim` now, advancing `speed` simulated ms per real ms.
    pub fn new(start_sim: Millis, speed: f64) -> Self {
        ScaledClock {
            start_sim,
            start_real: std::time::Instant::now(),
            speed,
        }
    }
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> Millis {
        let real = self.start_real.elapsed().as_secs_f64() * 1000.0;
        self.start_sim + (real * self.speed) as Millis
    }
}

/// A clock moved by hand, for tests.
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: Millis) -> Self {
        ManualClock(Arc::new(AtomicI64::new(at)))
    }
    /// Set the time.
    pub fn set(&self, at: Millis) {
        self.0.store(at, Ordering::SeqCst);
    }
    /// Move the time forward.
    pub fn advance(&self, by: Millis) {
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 text of a time, for logs and messages.
pub fn rfc3339(ms: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms}ms"))
}
